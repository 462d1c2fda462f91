//! TLS 1.3 for the relay: the certificate (generated on first start, or a
//! PEM chain from a CA), its key fingerprint, reloading it without
//! dropping anyone, and key rotation with a signed hand-over.
//!
//! Clients pin the SHA-256 of the certificate's SubjectPublicKeyInfo (the
//! key), so a certificate renewed with the same key ([`renew_certificate`],
//! certbot `--reuse-key`) changes nothing for them. A new key is handed
//! over by the old one ([`rotate_key`]): the hand-over file
//! ([`HANDOVER_FILE`]) is sent to every client as its first frame while it
//! is valid, and pinned clients follow it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// File name of the generated certificate in the data directory.
pub const GENERATED_CERT: &str = "relay-cert.pem";
/// File name of the generated private key in the data directory (mode 0600).
pub const GENERATED_KEY: &str = "relay-key.pem";
/// File name of the key hand-over in the data directory, written by
/// [`rotate_key`].
pub const HANDOVER_FILE: &str = "relay-key-handover.txt";
/// File name of the next key [`rotate_key`] generates for a CA
/// certificate (mode 0600).
pub const NEXT_KEY: &str = "relay-key-next.pem";
/// File name the previous generated key is kept under after a rotation
/// (mode 0600).
pub const PREVIOUS_KEY: &str = "relay-key-previous.pem";
/// How long a key hand-over stays valid by default: clients that connect
/// within this period follow the new key without a prompt.
pub const HANDOVER_PERIOD: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// Why the certificate could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a certificate or key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// rustls or rcgen refused the material.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Where the certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Generate a self-signed certificate into the data directory on first
    /// start and reuse it afterwards.
    Generated {
        /// The data directory.
        dir: PathBuf,
        /// Names the certificate is issued for.
        hosts: Vec<String>,
    },
    /// A PEM certificate chain (leaf first) and its PEM private key.
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
}

/// The relay's certificate, swappable at run time (SIGHUP).
pub struct CertStore {
    source: CertSource,
    handover: Option<PathBuf>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    /// The fingerprint before the last reload: a client whose handshake
    /// got the old certificate just before a reload still registers.
    previous: RwLock<Option<[u8; 32]>>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    fingerprint: [u8; 32],
    /// The leaf's end of validity (Unix seconds), if it could be read.
    not_after: Option<u64>,
    handover: Option<Handover>,
}

/// A key hand-over: the old key's signed statement that the new key
/// succeeds it (protocol.md §9.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    /// The old key's SubjectPublicKeyInfo DER.
    pub old_key: Vec<u8>,
    /// SHA-256 of the new key's SubjectPublicKeyInfo DER.
    pub new_key: [u8; 32],
    /// Void after this (Unix seconds).
    pub not_after: u64,
    /// The TLS 1.3 signature scheme code.
    pub scheme: u16,
    /// The old key's signature over the transcript.
    pub signature: Vec<u8>,
}

impl Handover {
    /// SHA-256 of the old key.
    pub fn old_fingerprint(&self) -> [u8; 32] {
        Sha256::digest(&self.old_key).into()
    }

    /// The frame clients get before the challenge.
    pub fn frame(&self) -> sotto_proto::RelayFrame {
        sotto_proto::RelayFrame::KeyHandover {
            old_key: Bytes::from(self.old_key.clone()),
            new_key: self.new_key,
            not_after: self.not_after,
            scheme: self.scheme,
            signature: Bytes::from(self.signature.clone()),
        }
    }

    /// The hand-over file's text.
    pub fn to_text(&self) -> String {
        format!(
            "# sotto relay key hand-over, written by `relay rotate-key`: sent to every client\n\
             # before the challenge until not-after, so that clients pinned to old-key follow new-key.\n\
             old-key: {}\nnew-key: {}\nnot-after: {}\nscheme: {:#06x}\nsignature: {}\n",
            URL_SAFE_NO_PAD.encode(&self.old_key),
            sotto_proto::fingerprint_text(&self.new_key),
            self.not_after,
            self.scheme,
            URL_SAFE_NO_PAD.encode(&self.signature),
        )
    }

    /// Parses [`Handover::to_text`].
    pub fn from_text(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(key, _)| key.trim() == name)
                .map(|(_, value)| value.trim())
        };
        let bytes = |name| URL_SAFE_NO_PAD.decode(field(name)?).ok();
        Some(Self {
            old_key: bytes("old-key")?,
            new_key: bytes("new-key")?.try_into().ok()?,
            not_after: field("not-after")?.parse().ok()?,
            scheme: u16::from_str_radix(field("scheme")?.strip_prefix("0x")?, 16).ok()?,
            signature: bytes("signature")?,
        })
    }
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .field(
                "fingerprint",
                &sotto_proto::fingerprint_text(&self.fingerprint()),
            )
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the certificate from `source`, generating it first if needed.
    /// A generated certificate's hand-over is [`HANDOVER_FILE`] in its
    /// directory; a CA certificate has none (see
    /// [`CertStore::load_with_handover`]).
    pub fn load(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let handover = match &source {
            CertSource::Generated { dir, .. } => Some(dir.join(HANDOVER_FILE)),
            CertSource::Files { .. } => None,
        };
        Self::load_with_handover(source, handover)
    }

    /// Loads the certificate from `source`, and the key hand-over from
    /// `handover` if that file exists (read again at every reload).
    pub fn load_with_handover(
        source: CertSource,
        handover: Option<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load_from(&source, handover.as_deref(), &provider)?;
        Ok(Arc::new(Self {
            source,
            handover,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            previous: RwLock::new(None),
        }))
    }

    /// Reads the certificate and key again (after a renewal). Connections
    /// already open keep theirs; new ones get the new certificate. On error
    /// the old certificate stays in use.
    pub fn reload(&self) -> Result<[u8; 32], TlsError> {
        let loaded = load_from(&self.source, self.handover.as_deref(), &self.provider)?;
        let fingerprint = loaded.fingerprint;
        let old = self.fingerprint();
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(loaded),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(loaded),
        }
        match self.previous.write() {
            Ok(mut previous) => *previous = Some(old),
            Err(poisoned) => *poisoned.into_inner() = Some(old),
        }
        Ok(fingerprint)
    }

    fn current(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// SHA-256 of the current leaf certificate's SubjectPublicKeyInfo
    /// DER: the key fingerprint clients pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.current().fingerprint
    }

    /// When the current leaf certificate expires (its `notAfter`, Unix
    /// seconds), if it could be read: the expiry metric.
    pub fn not_after(&self) -> Option<u64> {
        self.current().not_after
    }

    /// The hand-over to the current key, if it is valid now.
    pub fn current_handover(&self) -> Option<Handover> {
        self.handover(crate::store::now_secs())
    }

    /// The hand-over to the current key, while it is valid at `now` (Unix
    /// seconds): sent to every client as its first frame.
    pub fn handover(&self, now: u64) -> Option<Handover> {
        self.current()
            .handover
            .clone()
            .filter(|handover| now <= handover.not_after)
    }

    /// The current key fingerprint and the one before the last reload, if any:
    /// a connection accepted around a reload may have seen either.
    pub fn recent_fingerprints(&self) -> ([u8; 32], Option<[u8; 32]>) {
        let previous = match self.previous.read() {
            Ok(previous) => *previous,
            Err(poisoned) => *poisoned.into_inner(),
        };
        (self.fingerprint(), previous)
    }

    /// The rustls server configuration: TLS 1.3 only, no client
    /// certificates, this store as the certificate resolver.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        // Resumption would let a client skip the certificate; keep it simple
        // and stateless: full handshakes only, tickets off.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().key))
    }
}

/// A certificate and key as `relay check-config` finds them.
#[derive(Clone, Debug)]
pub struct Checked {
    /// The key fingerprint clients pin.
    pub fingerprint: [u8; 32],
    /// When the leaf certificate expires (Unix seconds), if readable.
    pub not_after: Option<u64>,
    /// The hand-over to this key being sent to clients, if any.
    pub handover: Option<Handover>,
}

/// Loads the certificate and key of `source` as the relay would, without
/// writing anything: `None` for a generated certificate not made yet
/// (the relay makes it on its first start).
pub fn check(source: &CertSource, handover: Option<&Path>) -> Result<Option<Checked>, TlsError> {
    if let CertSource::Generated { dir, .. } = source
        && !(dir.join(GENERATED_KEY).exists() && dir.join(GENERATED_CERT).exists())
    {
        return Ok(None);
    }
    let provider = rustls::crypto::ring::default_provider();
    let loaded = load_from(source, handover, &provider)?;
    Ok(Some(Checked {
        fingerprint: loaded.fingerprint,
        not_after: loaded.not_after,
        handover: loaded.handover,
    }))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn load_from(
    source: &CertSource,
    handover: Option<&Path>,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let (cert, key) = match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
        CertSource::Generated { dir, hosts } => {
            let cert = dir.join(GENERATED_CERT);
            let key = dir.join(GENERATED_KEY);
            if !key.exists() {
                generate(dir, &cert, &key, hosts)?;
            } else if !cert.exists() {
                // The key is what clients pin: never replace it here.
                renew_certificate(dir, hosts)?;
            }
            (cert, key)
        }
    };
    let chain = read_chain(&cert)?;
    let leaf = chain.first().ok_or_else(|| TlsError::Pem {
        path: cert.clone(),
        what: "no certificate in the file".into(),
    })?;
    let fingerprint = key_fingerprint(leaf).ok_or_else(|| TlsError::Pem {
        path: cert.clone(),
        what: "the first certificate cannot be parsed".into(),
    })?;
    let not_after = certificate_not_after(leaf);
    let private = read_key(&key)?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Setup(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))?;
    let handover = match handover {
        Some(path) => read_handover(path)?.filter(|h| h.new_key == fingerprint),
        None => None,
    };
    Ok(Loaded {
        key: Arc::new(certified),
        fingerprint,
        not_after,
        handover,
    })
}

fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: cert.to_path_buf(),
        what: e.to_string(),
    };
    CertificateDer::pem_file_iter(cert)
        .map_err(pem)?
        .collect::<Result<_, _>>()
        .map_err(pem)
}

fn read_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        path: key.to_path_buf(),
        what: e.to_string(),
    })
}

/// The hand-over in `path`, if the file exists.
fn read_handover(path: &Path) -> Result<Option<Handover>, TlsError> {
    match fs::read_to_string(path) {
        Ok(text) => Handover::from_text(&text)
            .map(Some)
            .ok_or_else(|| TlsError::Pem {
                path: path.to_path_buf(),
                what: "not a key hand-over (see `relay rotate-key`)".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo DER: the relay's key
/// fingerprint, what clients pin and what the relay prints.
pub fn key_fingerprint(certificate: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    Some(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
}

/// When `certificate` expires (its `notAfter`), in Unix seconds, if it can
/// be read.
pub fn certificate_not_after(certificate: &CertificateDer<'_>) -> Option<u64> {
    crate::der::not_after(certificate.as_ref())
}

/// The key fingerprint of the first certificate in the PEM file `cert`
/// (`relay fingerprint`).
pub fn certificate_file_fingerprint(cert: &Path) -> Result<[u8; 32], TlsError> {
    let chain = read_chain(cert)?;
    chain
        .first()
        .and_then(key_fingerprint)
        .ok_or_else(|| TlsError::Pem {
            path: cert.to_path_buf(),
            what: "no parseable certificate in the file".into(),
        })
}

/// Issues a new self-signed certificate in `dir` for the existing key
/// [`GENERATED_KEY`] (`relay renew-cert`): the key fingerprint, and so
/// every address, stays the same. Returns it.
pub fn renew_certificate(dir: &Path, hosts: &[String]) -> Result<[u8; 32], TlsError> {
    let key_path = dir.join(GENERATED_KEY);
    let pem = fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
    let key = rcgen::KeyPair::from_pem(&pem)
        .map_err(|e| TlsError::Setup(format!("{}: {e}", key_path.display())))?;
    let cert = self_signed(&key, hosts)?;
    let cert_path = dir.join(GENERATED_CERT);
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    key_fingerprint(cert.der()).ok_or_else(|| TlsError::Setup("bad certificate".into()))
}

fn self_signed(key: &rcgen::KeyPair, hosts: &[String]) -> Result<rcgen::Certificate, TlsError> {
    let hosts = if hosts.is_empty() {
        vec!["localhost".to_string()]
    } else {
        hosts.to_vec()
    };
    rcgen::CertificateParams::new(hosts)
        .and_then(|params| params.self_signed(key))
        .map_err(|e| TlsError::Setup(e.to_string()))
}

/// Signs a hand-over from `current` (the key clients pin now) to the key
/// whose SubjectPublicKeyInfo DER is `next_spki`, valid until `not_after`
/// (Unix seconds).
pub fn sign_handover(
    current: &PrivateKeyDer<'_>,
    next_spki: &[u8],
    not_after: u64,
) -> Result<Handover, TlsError> {
    let signing = rustls::crypto::ring::sign::any_supported_type(current)
        .map_err(|e| TlsError::Setup(format!("the current key: {e}")))?;
    let old_key = signing
        .public_key()
        .ok_or_else(|| TlsError::Setup("the current key has no public key".into()))?
        .as_ref()
        .to_vec();
    let signer = signing
        .choose_scheme(&sotto_proto::KEY_HANDOVER_SCHEMES.map(rustls::SignatureScheme::from))
        .ok_or_else(|| TlsError::Setup("the current key cannot sign for TLS 1.3".into()))?;
    let old: [u8; 32] = Sha256::digest(&old_key).into();
    let new_key: [u8; 32] = Sha256::digest(next_spki).into();
    let transcript = sotto_proto::key_handover_transcript(&old, &new_key, not_after);
    let signature = signer
        .sign(&transcript)
        .map_err(|e| TlsError::Setup(format!("signing the hand-over: {e}")))?;
    Ok(Handover {
        old_key,
        new_key,
        not_after,
        scheme: u16::from(signer.scheme()),
        signature,
    })
}

/// What [`rotate_key`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The hand-over written.
    pub handover: Handover,
    /// Where the next key is: [`GENERATED_KEY`] (already in use, with a new
    /// certificate) for a generated certificate, else the key to get a CA
    /// certificate for.
    pub next_key: PathBuf,
    /// Whether the relay's own certificate and key were already replaced
    /// (a generated certificate): a restart or SIGHUP serves them.
    pub installed: bool,
}

/// Rotates the relay's key: takes `next_key` (a PEM private key) or
/// generates one (ECDSA P-256), signs a hand-over to it with the current
/// key, valid for `period`, into `data_dir/`[`HANDOVER_FILE`]. For a
/// generated certificate it also installs the new key with a new
/// certificate (the old key is kept as [`PREVIOUS_KEY`]); for a CA
/// certificate the operator gets a certificate for the next key (written
/// to [`NEXT_KEY`] if generated) and points `--cert`/`--key` at it.
pub fn rotate_key(
    source: &CertSource,
    data_dir: &Path,
    next_key: Option<&Path>,
    period: std::time::Duration,
) -> Result<Rotation, TlsError> {
    let current_path = match source {
        CertSource::Generated { dir, .. } => dir.join(GENERATED_KEY),
        CertSource::Files { key, .. } => key.clone(),
    };
    let current = read_key(&current_path)?;
    let (next_pem, next_path) = match next_key {
        Some(path) => (
            fs::read_to_string(path).map_err(io_error(path))?,
            path.to_path_buf(),
        ),
        None => {
            let generated =
                rcgen::KeyPair::generate().map_err(|e| TlsError::Setup(e.to_string()))?;
            (generated.serialize_pem(), data_dir.join(NEXT_KEY))
        }
    };
    let not_after = crate::store::now_secs().saturating_add(period.as_secs());
    let next_spki = PrivateKeyDer::from_pem_slice(next_pem.as_bytes())
        .ok()
        .and_then(|der| rustls::crypto::ring::sign::any_supported_type(&der).ok())
        .and_then(|key| key.public_key().map(|spki| spki.as_ref().to_vec()))
        .ok_or_else(|| TlsError::Pem {
            path: next_path.clone(),
            what: "not a private key rustls can use".into(),
        })?;
    let handover = sign_handover(&current, &next_spki, not_after)?;
    if handover.old_fingerprint() == handover.new_key {
        return Err(TlsError::Setup("the next key is the current key".into()));
    }
    sotto_fsutil::create_private_dir(data_dir).map_err(io_error(data_dir))?;
    write_file(
        &data_dir.join(HANDOVER_FILE),
        handover.to_text().as_bytes(),
        0o644,
    )?;
    match source {
        CertSource::Generated { dir, hosts } => {
            write_file(
                &dir.join(PREVIOUS_KEY),
                &fs::read(&current_path).map_err(io_error(&current_path))?,
                0o600,
            )?;
            write_file(&current_path, next_pem.as_bytes(), 0o600)?;
            renew_certificate(dir, hosts)?;
            Ok(Rotation {
                handover,
                next_key: current_path,
                installed: true,
            })
        }
        CertSource::Files { .. } => {
            if next_key.is_none() {
                write_file(&next_path, next_pem.as_bytes(), 0o600)?;
            }
            Ok(Rotation {
                handover,
                next_key: next_path,
                installed: false,
            })
        }
    }
}

/// A new ECDSA P-256 key (fast handshakes), file 0600, and its
/// self-signed certificate.
fn generate(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    hosts: &[String],
) -> Result<(), TlsError> {
    sotto_fsutil::create_private_dir(dir).map_err(io_error(dir))?;
    let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Setup(e.to_string()))?;
    let cert = self_signed(&key, hosts)?;
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Replaces `path` with `bytes` atomically, as a file created with `mode`
/// before its first byte (a key is never readable by others, and a crash
/// never leaves half of one).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    sotto_fsutil::write_atomic(path, bytes, mode).map_err(io_error(path))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file is replaced whole, never edited in place: one that was
    /// readable by others before (copied in by hand, say) is private once
    /// sotto rewrites it, and no temporary file is left beside it.
    #[cfg(unix)]
    #[test]
    fn key_files_are_replaced_whole_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(PREVIOUS_KEY);
        fs::write(&key, b"an older, longer key that must not survive in part").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&key, b"new key", 0o600).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"new key");
        let mode = fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
