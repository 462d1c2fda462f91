//! Connecting to a relay over TLS 1.3 with its certificate pinned.
//!
//! The only certificate accepted is the one whose SHA-256 the relay
//! address carries. There is deliberately no way to accept another: a
//! different certificate fails the handshake with
//! [`ConnectError::CertificateMismatch`], naming both fingerprints.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use sotto_proto::{RelayAddress, fingerprint_text};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why connecting to a relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The relay presented a certificate other than the pinned one: a
    /// different relay, a renewed certificate, or someone in between.
    #[error(
        "the relay's certificate does not match the address: the address pins {}, the relay presented {}",
        fingerprint_text(expected),
        fingerprint_text(presented)
    )]
    CertificateMismatch {
        /// SHA-256 the address pins.
        expected: [u8; 32],
        /// SHA-256 of what the relay presented.
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
    /// The host is not a valid TLS server name.
    #[error("invalid host name {0}")]
    InvalidHost(String),
}

/// The pinned certificate did not match; carried through rustls as the
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
            "certificate {} is not the pinned {}",
            fingerprint_text(&self.presented),
            fingerprint_text(&self.expected)
        )
    }
}

impl std::error::Error for Mismatch {}

/// Accepts exactly one certificate, by SHA-256 of its DER, and checks the
/// handshake signature made with it.
#[derive(Debug)]
struct PinnedCertificate {
    expected: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if presented == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(Mismatch {
                    expected: self.expected,
                    presented,
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

/// A TLS connector that accepts only the certificate `address` pins, over
/// TLS 1.3.
pub fn connector(address: &RelayAddress) -> Result<TlsConnector, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCertificate {
        expected: address.fingerprint,
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

/// Connects to the relay at `address` and completes the TLS handshake
/// against its pinned certificate.
pub async fn connect(address: &RelayAddress) -> Result<TlsStream<TcpStream>, ConnectError> {
    let io = |source| ConnectError::Io {
        authority: address.authority(),
        source,
    };
    let server_name = ServerName::try_from(address.host.clone())
        .map_err(|_| ConnectError::InvalidHost(address.host.clone()))?;
    let socket = TcpStream::connect((address.host.as_str(), address.port))
        .await
        .map_err(io)?;
    let _ = socket.set_nodelay(true);
    connector(address)?
        .connect(server_name, socket)
        .await
        .map_err(|error| match mismatch_in(&error) {
            Some((expected, presented)) => ConnectError::CertificateMismatch {
                expected,
                presented,
            },
            None => io(error),
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
