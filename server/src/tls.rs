//! TLS 1.3 for the relay: the certificate (generated on first start, or a
//! PEM chain from a CA), its fingerprint, and reloading it without
//! dropping anyone.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
    /// The fingerprint before the last reload: a client whose handshake
    /// got the old certificate just before a reload still registers.
    previous: RwLock<Option<[u8; 32]>>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    fingerprint: [u8; 32],
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("source", &self.source)
            .field("fingerprint", &hex(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the certificate from `source`, generating it first if needed.
    pub fn load(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = load_from(&source, &provider)?;
        Ok(Arc::new(Self {
            source,
            provider,
            current: RwLock::new(Arc::new(loaded)),
            previous: RwLock::new(None),
        }))
    }

    /// Reads the certificate and key again (after a renewal). Connections
    /// already open keep theirs; new ones get the new certificate. On error
    /// the old certificate stays in use.
    pub fn reload(&self) -> Result<[u8; 32], TlsError> {
        let loaded = load_from(&self.source, &self.provider)?;
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

    /// SHA-256 of the current leaf certificate's DER: what clients pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.current().fingerprint
    }

    /// The current fingerprint and the one before the last reload, if any:
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

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn load_from(source: &CertSource, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let (cert, key) = match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone()),
        CertSource::Generated { dir, hosts } => {
            let cert = dir.join(GENERATED_CERT);
            let key = dir.join(GENERATED_KEY);
            if !cert.exists() || !key.exists() {
                generate(dir, &cert, &key, hosts)?;
            }
            (cert, key)
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| TlsError::Pem {
            path: cert.clone(),
            what: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.clone(),
            what: e.to_string(),
        })?;
    let leaf = chain.first().ok_or_else(|| TlsError::Pem {
        path: cert.clone(),
        what: "no certificate in the file".into(),
    })?;
    let fingerprint: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
    let private = PrivateKeyDer::from_pem_file(&key).map_err(|e| TlsError::Pem {
        path: key.clone(),
        what: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Setup(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Setup(format!("certificate and key do not match: {e}")))?;
    Ok(Loaded {
        key: Arc::new(certified),
        fingerprint,
    })
}

/// A self-signed ECDSA P-256 certificate (fast handshakes), key file 0600.
fn generate(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    hosts: &[String],
) -> Result<(), TlsError> {
    sotto_crypto::create_private_dir(dir).map_err(io_error(dir))?;
    let hosts = if hosts.is_empty() {
        vec!["localhost".to_string()]
    } else {
        hosts.to_vec()
    };
    let generated =
        rcgen::generate_simple_self_signed(hosts).map_err(|e| TlsError::Setup(e.to_string()))?;
    write_file(
        key_path,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_file(cert_path, generated.cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
