//! Connecting to a relay over TLS 1.3 with its public key pinned.
//!
//! The address carries the SHA-256 of the relay's SubjectPublicKeyInfo
//! (DER): a certificate renewed with the same key changes nothing. Older
//! addresses carry the SHA-256 of the whole certificate; a certificate
//! whose hash equals such a pin is accepted too (it is a stronger check
//! than the key's), and [`Presented::matched`] says so, so the caller can
//! convert the pin once.
//!
//! A key other than the pinned one fails the handshake with
//! [`ConnectError::CertificateMismatch`], naming both fingerprints. The
//! one exception is [`Unpinned::AwaitHandover`]: the handshake completes
//! (the relay still proves it holds the presented key) but the caller
//! must send nothing until the relay's first frame is a
//! [`RelayFrame::KeyHandover`](sotto_proto::RelayFrame::KeyHandover) that
//! [`verify_handover`] accepts: the pinned key's signed statement that
//! the presented key succeeds it. Otherwise the connection is refused as
//! a mismatch. There is no way to accept an unknown key silently.
//!
//! Every network step has a time limit ([`Timeouts`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use sotto_proto::{RelayAddress, fingerprint_text, key_handover_transcript};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest wait for the TCP connection to a relay.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the TLS handshake once connected.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the relay's challenge, and for the answer to
/// `Register`.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a write to the relay may block (a relay that stops reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A session pings a relay it has not heard from for this long...
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// ...and gives the connection up (and reconnects) after this long without
/// a frame from the relay, or when a write has been blocked this long
/// after the last frame heard: the dead-connection bound.
pub const DEAD_AFTER: Duration = Duration::from_secs(90);

/// Time limits on every network step of a session (defaults: the
/// constants of this module). Tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// [`CONNECT_TIMEOUT`].
    pub connect: Duration,
    /// [`HANDSHAKE_TIMEOUT`].
    pub handshake: Duration,
    /// [`ANSWER_TIMEOUT`].
    pub answer: Duration,
    /// [`WRITE_TIMEOUT`].
    pub write: Duration,
    /// [`KEEPALIVE`].
    pub keepalive: Duration,
    /// [`DEAD_AFTER`].
    pub dead_after: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            handshake: HANDSHAKE_TIMEOUT,
            answer: ANSWER_TIMEOUT,
            write: WRITE_TIMEOUT,
            keepalive: KEEPALIVE,
            dead_after: DEAD_AFTER,
        }
    }
}

/// Which network step took too long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// The TCP connection.
    Connect,
    /// The TLS handshake.
    Handshake,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "the connection",
            Step::Handshake => "the TLS handshake",
        })
    }
}

/// Why connecting to a relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The relay presented a key other than the pinned one, with no valid
    /// hand-over from the pinned key: a different relay, a new key the
    /// operator did not hand over, or someone in between.
    #[error(
        "the relay's key does not match the address: the address pins {}, the relay presented {} (this may be an attack; if the operator announced a new key, replace the pin explicitly: sotto-cli relay replace-pin ADDRESS)",
        fingerprint_text(expected),
        fingerprint_text(presented)
    )]
    CertificateMismatch {
        /// The fingerprint the address (or the known relays) pins.
        expected: [u8; 32],
        /// SHA-256 of the SubjectPublicKeyInfo the relay presented.
        presented: [u8; 32],
    },
    /// The TCP connection or the TLS handshake failed.
    #[error("cannot connect to {authority}: {source}")]
    Io {
        /// `host:port`.
        authority: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A network step did not finish in time.
    #[error("cannot connect to {authority}: {step} took longer than {limit:?}")]
    TimedOut {
        /// `host:port`.
        authority: String,
        /// The step.
        step: Step,
        /// Its limit.
        limit: Duration,
    },
    /// The host is not a valid TLS server name.
    #[error("invalid host name {0}")]
    InvalidHost(String),
}

/// The pinned key did not match; carried through rustls as the
/// handshake's error so [`connect`] can report both fingerprints.
#[derive(Debug)]
struct Mismatch {
    expected: [u8; 32],
    presented: [u8; 32],
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} is not the pinned {}",
            fingerprint_text(&self.presented),
            fingerprint_text(&self.expected)
        )
    }
}

impl std::error::Error for Mismatch {}

/// SHA-256 of a certificate's SubjectPublicKeyInfo DER: the relay's key
/// fingerprint, what addresses pin. `None` if it is not a certificate.
pub fn key_fingerprint(certificate: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    Some(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
}

/// SHA-256 of a whole certificate's DER: what old addresses pinned.
pub fn certificate_fingerprint(certificate: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(certificate.as_ref()).into()
}

/// How the presented certificate relates to the pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMatch {
    /// Its key is the pinned key.
    Key,
    /// The pin is an old-style certificate hash, and this is that very
    /// certificate: the pin should be converted to [`Presented::key`].
    Certificate,
    /// Neither (only with [`Unpinned::AwaitHandover`]): nothing may be
    /// sent before a hand-over is verified.
    Neither,
}

/// What the relay presented in the handshake, as verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presented {
    /// SHA-256 of its SubjectPublicKeyInfo: what registration proofs are
    /// bound to and what pins should hold.
    pub key: [u8; 32],
    /// SHA-256 of the whole certificate.
    pub certificate: [u8; 32],
    /// How it relates to the pin.
    pub matched: PinMatch,
}

/// What to do when the presented key is not the pinned one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpinned {
    /// Fail the handshake with [`ConnectError::CertificateMismatch`].
    Refuse,
    /// Complete the handshake provisionally: the caller reads the first
    /// frame, sends nothing, and accepts only a hand-over that
    /// [`verify_handover`] accepts.
    AwaitHandover,
}

/// A TLS connection to a relay and what it presented.
#[derive(Debug)]
pub struct Opened {
    /// The connection.
    pub stream: TlsStream<TcpStream>,
    /// The presented certificate, verified against the pin.
    pub presented: Presented,
}

/// Accepts the pinned key (or old-style certificate pin), and checks the
/// handshake signature made with it.
#[derive(Debug)]
struct PinnedKey {
    expected: [u8; 32],
    unpinned: Unpinned,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(key) = key_fingerprint(end_entity) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        };
        let pinned = key == self.expected || certificate_fingerprint(end_entity) == self.expected;
        if pinned || self.unpinned == Unpinned::AwaitHandover {
            // The handshake signature (below) still proves the relay holds
            // the presented key.
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(Mismatch {
                    expected: self.expected,
                    presented: key,
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client offers TLS 1.3 only; a TLS 1.2 handshake is an error.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn connector_for(address: &RelayAddress, unpinned: Unpinned) -> Result<TlsConnector, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedKey {
        expected: address.fingerprint,
        unpinned,
        provider: Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Io {
            authority: address.authority(),
            source: std::io::Error::other(e),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TLS connector that accepts only the key `address` pins (or the
/// certificate an old-style address pins), over TLS 1.3.
pub fn connector(address: &RelayAddress) -> Result<TlsConnector, ConnectError> {
    connector_for(address, Unpinned::Refuse)
}

/// Connects to the relay at `address` and completes the TLS handshake
/// against its pinned key, within the default [`Timeouts`].
pub async fn connect(address: &RelayAddress) -> Result<TlsStream<TcpStream>, ConnectError> {
    Ok(open(address, Unpinned::Refuse, &Timeouts::default())
        .await?
        .stream)
}

/// Connects to the relay at `address`, completes the TLS handshake within
/// `timeouts`, and returns what the relay presented. With
/// [`Unpinned::AwaitHandover`] a key other than the pinned one completes
/// the handshake ([`PinMatch::Neither`]): the caller must then send
/// nothing before a verified hand-over.
pub async fn open(
    address: &RelayAddress,
    unpinned: Unpinned,
    timeouts: &Timeouts,
) -> Result<Opened, ConnectError> {
    let io = |source| ConnectError::Io {
        authority: address.authority(),
        source,
    };
    let timed_out = |step, limit| ConnectError::TimedOut {
        authority: address.authority(),
        step,
        limit,
    };
    let server_name = ServerName::try_from(address.host.clone())
        .map_err(|_| ConnectError::InvalidHost(address.host.clone()))?;
    let socket = tokio::time::timeout(
        timeouts.connect,
        TcpStream::connect((address.host.as_str(), address.port)),
    )
    .await
    .map_err(|_| timed_out(Step::Connect, timeouts.connect))?
    .map_err(io)?;
    let _ = socket.set_nodelay(true);
    let handshake = connector_for(address, unpinned)?.connect(server_name, socket);
    let stream = tokio::time::timeout(timeouts.handshake, handshake)
        .await
        .map_err(|_| timed_out(Step::Handshake, timeouts.handshake))?
        .map_err(|error| match mismatch_in(&error) {
            Some((expected, presented)) => ConnectError::CertificateMismatch {
                expected,
                presented,
            },
            None => io(error),
        })?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let Some((key, certificate)) =
        leaf.and_then(|leaf| Some((key_fingerprint(leaf)?, certificate_fingerprint(leaf))))
    else {
        return Err(io(std::io::Error::other(
            "the relay presented no certificate",
        )));
    };
    let matched = if key == address.fingerprint {
        PinMatch::Key
    } else if certificate == address.fingerprint {
        PinMatch::Certificate
    } else {
        PinMatch::Neither
    };
    Ok(Opened {
        stream,
        presented: Presented {
            key,
            certificate,
            matched,
        },
    })
}

/// Finds our pinning error inside the I/O error tokio-rustls returns.
fn mismatch_in(error: &std::io::Error) -> Option<([u8; 32], [u8; 32])> {
    let rustls_error = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = rustls_error else {
        return None;
    };
    let mismatch = other.0.downcast_ref::<Mismatch>()?;
    Some((mismatch.expected, mismatch.presented))
}

/// A relay key hand-over, as carried by
/// [`RelayFrame::KeyHandover`](sotto_proto::RelayFrame::KeyHandover).
#[derive(Clone, Copy, Debug)]
pub struct Handover<'a> {
    /// The old key's SubjectPublicKeyInfo DER.
    pub old_key: &'a [u8],
    /// SHA-256 of the new key's SubjectPublicKeyInfo DER.
    pub new_key: [u8; 32],
    /// Void after this (Unix seconds).
    pub not_after: u64,
    /// The TLS 1.3 signature scheme code.
    pub scheme: u16,
    /// The old key's signature over [`key_handover_transcript`].
    pub signature: &'a [u8],
}

/// Why a hand-over was not accepted (each one means: refuse the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// The hand-over is from a key other than the pinned one.
    #[error("the hand-over is not from the pinned key")]
    NotFromPin,
    /// The hand-over is to a key other than the presented one.
    #[error("the hand-over is not for the key the relay presented")]
    NotForPresentedKey,
    /// The hand-over's transition period is over.
    #[error("the hand-over has expired")]
    Expired,
    /// The signature does not verify (or uses a scheme TLS 1.3 does not
    /// allow).
    #[error("the hand-over's signature does not verify")]
    BadSignature,
}

/// Checks that `handover` moves the key `pin` to the key `presented`, at
/// `now` (Unix seconds): the old key hashes to `pin`, the new fingerprint
/// is `presented`, `now` is not after `not_after`, and the old key's
/// signature over the transcript verifies (protocol.md §9.2.1).
pub fn verify_handover(
    handover: &Handover<'_>,
    pin: &[u8; 32],
    presented: &[u8; 32],
    now: u64,
) -> Result<(), HandoverError> {
    let old: [u8; 32] = Sha256::digest(handover.old_key).into();
    if old != *pin {
        return Err(HandoverError::NotFromPin);
    }
    if handover.new_key != *presented {
        return Err(HandoverError::NotForPresentedKey);
    }
    if now > handover.not_after {
        return Err(HandoverError::Expired);
    }
    if !sotto_proto::KEY_HANDOVER_SCHEMES.contains(&handover.scheme) {
        return Err(HandoverError::BadSignature);
    }
    let scheme = SignatureScheme::from(handover.scheme);
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let Some((_, candidates)) = algorithms.mapping.iter().find(|(s, _)| *s == scheme) else {
        return Err(HandoverError::BadSignature);
    };
    let spki = SubjectPublicKeyInfoDer::from(handover.old_key);
    let key =
        webpki::RawPublicKeyEntity::try_from(&spki).map_err(|_| HandoverError::BadSignature)?;
    let transcript = key_handover_transcript(&old, &handover.new_key, handover.not_after);
    // A scheme may stand for more than one algorithm (ECDSA with SHA-256
    // on P-256 or P-384, as rustls maps it): the one matching the old
    // key's type is the one that can verify.
    let verified = candidates.iter().any(|algorithm| {
        key.verify_signature(*algorithm, &transcript, handover.signature)
            .is_ok()
    });
    if verified {
        Ok(())
    } else {
        Err(HandoverError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;

    /// The fixed vector: `openssl x509 -in cert.pem -pubkey -noout |
    /// openssl pkey -pubin -outform der | openssl dgst -sha256 -binary |
    /// basenc --base64url | tr -d '='` on this certificate printed
    /// `FINGERPRINT` (computed once with OpenSSL 3).
    const CERT: &str = include_str!("../../testdata/relay-cert.pem");
    const FINGERPRINT: &str = include_str!("../../testdata/relay-cert.fingerprint");

    #[test]
    fn the_hand_over_schemes_are_tls_1_3_s() {
        assert_eq!(
            sotto_proto::KEY_HANDOVER_SCHEMES.map(SignatureScheme::from),
            [
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::ED25519,
                SignatureScheme::RSA_PSS_SHA256,
                SignatureScheme::RSA_PSS_SHA384,
                SignatureScheme::RSA_PSS_SHA512,
            ]
        );
    }

    #[test]
    fn the_key_fingerprint_is_what_openssl_prints() {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(CERT.as_bytes()).unwrap();
        assert_eq!(
            fingerprint_text(&key_fingerprint(&cert).unwrap()),
            FINGERPRINT.trim()
        );
    }

    fn keypair() -> (PrivateKeyDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (der, rcgen::PublicKeyData::subject_public_key_info(&key))
    }

    #[test]
    fn a_handover_verifies_only_for_its_keys_its_time_and_its_signature() {
        let (old_private, old_spki) = keypair();
        let (_, new_spki) = keypair();
        let pin: [u8; 32] = Sha256::digest(&old_spki).into();
        let new: [u8; 32] = Sha256::digest(&new_spki).into();
        let signer = rustls::crypto::ring::sign::any_supported_type(&old_private)
            .unwrap()
            .choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256])
            .unwrap();
        let not_after = 1_000;
        let signature = signer
            .sign(&key_handover_transcript(&pin, &new, not_after))
            .unwrap();
        let handover = Handover {
            old_key: &old_spki,
            new_key: new,
            not_after,
            scheme: u16::from(signer.scheme()),
            signature: &signature,
        };
        assert_eq!(verify_handover(&handover, &pin, &new, 999), Ok(()));
        assert_eq!(verify_handover(&handover, &pin, &new, 1_000), Ok(()));
        assert_eq!(
            verify_handover(&handover, &pin, &new, 1_001),
            Err(HandoverError::Expired)
        );
        assert_eq!(
            verify_handover(&handover, &new, &new, 999),
            Err(HandoverError::NotFromPin)
        );
        assert_eq!(
            verify_handover(&handover, &pin, &pin, 999),
            Err(HandoverError::NotForPresentedKey)
        );
        let later = Handover {
            not_after: 2_000,
            ..handover
        };
        assert_eq!(
            verify_handover(&later, &pin, &new, 999),
            Err(HandoverError::BadSignature)
        );
        let mut flipped = signature.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        let forged = Handover {
            signature: &flipped,
            ..handover
        };
        assert_eq!(
            verify_handover(&forged, &pin, &new, 999),
            Err(HandoverError::BadSignature)
        );
        let tls12_only = Handover {
            scheme: u16::from(SignatureScheme::RSA_PKCS1_SHA256),
            ..handover
        };
        assert_eq!(
            verify_handover(&tls12_only, &pin, &new, 999),
            Err(HandoverError::BadSignature)
        );
    }
}
