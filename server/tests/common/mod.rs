//! A real relay on 127.0.0.1:0 with a generated certificate, and real TLS
//! clients speaking sotto-proto, for the relay's end-to-end tests.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sotto_crypto::{Identity, PrekeyKey};
use sotto_proto::{ClientCodec, ClientFrame, RelayAddress, RelayFrame, RoomName, UserName};
use sotto_relay::{CertSource, CertStore, Config, Metrics};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

/// How long a test waits for a frame that should come.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// A fixture identity from testdata/identities (alice, bob, carol, dave,
/// erin, mallory), loaded once.
pub fn identity(name: &str) -> &'static Identity {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(String, &'static Identity)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    if let Some((_, id)) = cache.iter().find(|(n, _)| n == name) {
        return id;
    }
    let path = testdata().join(format!("identities/{name}.sotto-id"));
    let id: &'static Identity = Box::leak(Box::new(
        Identity::load(&path, b"sotto test vectors").unwrap(),
    ));
    cache.push((name.to_string(), id));
    id
}

/// Key `i` of the pre-generated RSA-3072 test pool
/// (`testdata/prekey-keys.txt`): tests sign prekeys with these instead of
/// generating keys.
pub fn prekey_key(i: usize) -> PrekeyKey {
    let text = std::fs::read_to_string(testdata().join("prekey-keys.txt")).unwrap();
    let line = text.lines().filter(|l| !l.starts_with('#')).nth(i).unwrap();
    let der: Vec<u8> = (0..line.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&line[at..at + 2], 16).unwrap())
        .collect();
    PrekeyKey::from_pkcs8_der(&der).unwrap()
}

/// A signed prekey of `signer` made at `created_at` from pool key `key`.
pub fn prekey(signer: &Identity, key: usize, created_at: u64) -> Bytes {
    let (signed, _) = signer
        .make_prekey_with(&mut rand::rng(), prekey_key(key), created_at)
        .unwrap();
    Bytes::from(signed.into_bytes())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The relay's answer to a registration as `name`, with the default
/// storage age.
pub fn welcome(name: &str) -> RelayFrame {
    RelayFrame::Registered {
        name: user(name),
        offline_max_age: Config::default().offline_max_age.as_secs(),
        blob_max_bytes: Config::default().blob_max_bytes,
        blob_max_age: Config::default().blob_max_age.as_secs(),
    }
}

pub fn user(name: &str) -> UserName {
    UserName::try_from(name).unwrap()
}

/// A direct `Send` of `body` to `to`, with a slot for `to` if given.
pub fn send_to_user(
    id: u64,
    to: &str,
    body: &'static [u8],
    slot: Option<&'static [u8]>,
) -> ClientFrame {
    ClientFrame::Send {
        route: sotto_proto::Route {
            id,
            to: sotto_proto::Destination::User(user(to)),
        },
        body: Bytes::from_static(body),
        slots: slot
            .map(|data| sotto_proto::Slot {
                to: user(to),
                data: Bytes::from_static(data),
            })
            .into_iter()
            .collect(),
    }
}

/// A body of its own for send `id`, to give bytes that must not be taken
/// for a resend (the relay stores identical bytes from one sender to the
/// same recipients once). Leaked: tests only.
pub fn numbered(id: u64) -> &'static [u8] {
    Box::leak(format!("x{id}").into_bytes().into_boxed_slice())
}

/// A `Send` to room `name` with the given slots.
pub fn send_to_room(
    id: u64,
    name: &str,
    body: &'static [u8],
    slots: &[(&str, &'static [u8])],
) -> ClientFrame {
    ClientFrame::Send {
        route: sotto_proto::Route {
            id,
            to: sotto_proto::Destination::Room(room(name)),
        },
        body: Bytes::from_static(body),
        slots: slots
            .iter()
            .map(|(to, data)| sotto_proto::Slot {
                to: user(to),
                data: Bytes::from_static(data),
            })
            .collect(),
    }
}

pub fn room(name: &str) -> RoomName {
    RoomName::try_from(name).unwrap()
}

/// A port free on 127.0.0.1 a moment ago (for a metrics endpoint).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The whole HTTP response to `GET path` from 127.0.0.1:`port`.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).await.unwrap();
    response
}

/// A relay running in this process.
pub struct Relay {
    pub address: RelayAddress,
    pub metrics: Arc<Metrics>,
    pub certs: Arc<CertStore>,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), sotto_relay::RelayError>>>,
    _temp: Option<tempfile::TempDir>,
}

impl Relay {
    pub async fn start() -> Relay {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Relay {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let mut relay = Self::start_in(&dir, adjust).await;
        relay._temp = Some(temp);
        relay
    }

    /// Starts a relay keeping its data in `dir` (which the caller owns).
    pub async fn start_in(dir: &Path, adjust: impl FnOnce(&mut Config)) -> Relay {
        let mut config = Config {
            data_dir: dir.to_path_buf(),
            ..Config::default()
        };
        adjust(&mut config);
        let certs = CertStore::load(CertSource::Generated {
            dir: dir.to_path_buf(),
            hosts: vec!["localhost".into()],
        })
        .unwrap();
        Self::start_with_certs(dir, config, certs).await
    }

    pub async fn start_with_certs(dir: &Path, config: Config, certs: Arc<CertStore>) -> Relay {
        Self::start_with_store(dir, config, certs, None).await
    }

    /// A relay whose database is on `disk`, which the test can fill and
    /// free (see `sotto_relay::store::fault`), recovering as `recovery`
    /// says.
    pub async fn start_on_disk(
        disk: &sotto_relay::store::fault::Disk,
        recovery: sotto_relay::store::Recovery,
    ) -> Relay {
        Self::start_on_disk_with(disk, recovery, |_| {}).await
    }

    /// [`Relay::start_on_disk`], with the configuration changed by
    /// `adjust` first.
    pub async fn start_on_disk_with(
        disk: &sotto_relay::store::fault::Disk,
        recovery: sotto_relay::store::Recovery,
        adjust: impl FnOnce(&mut Config),
    ) -> Relay {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let mut config = Config {
            data_dir: dir.clone(),
            ..Config::default()
        };
        adjust(&mut config);
        let certs = CertStore::load(CertSource::Generated {
            dir: dir.clone(),
            hosts: vec!["localhost".into()],
        })
        .unwrap();
        let mut relay =
            Self::start_with_store(&dir, config, certs, Some((disk.clone(), recovery))).await;
        relay._temp = Some(temp);
        relay
    }

    async fn start_with_store(
        dir: &Path,
        config: Config,
        certs: Arc<CertStore>,
        disk: Option<(
            sotto_relay::store::fault::Disk,
            sotto_relay::store::Recovery,
        )>,
    ) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let address = RelayAddress {
            host: "127.0.0.1".into(),
            port,
            fingerprint: certs.fingerprint(),
            alternates: Vec::new(),
        };
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = match disk {
            None => tokio::spawn(sotto_relay::run_with_metrics(
                listener,
                Arc::clone(&certs),
                config,
                Arc::clone(&metrics),
                shutdown,
            )),
            Some((disk, recovery)) => tokio::spawn(sotto_relay::run_on_disk(
                listener,
                Arc::clone(&certs),
                config,
                Arc::clone(&metrics),
                disk,
                recovery,
                shutdown,
            )),
        };
        Relay {
            address,
            metrics,
            certs,
            dir: dir.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
            _temp: None,
        }
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("relay stops in time")
                .unwrap()
                .unwrap();
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.address).await
    }

    /// A connected client registered as `name` with the fixture identity
    /// of the same name.
    pub async fn registered(&self, name: &str) -> Client {
        let mut client = self.client().await;
        let mut reply = client.register(name, identity(name)).await;
        // A relay whose frames are too short for a chunk takes no files.
        if let RelayFrame::Registered { blob_max_bytes, .. } = &mut reply
            && *blob_max_bytes == 0
        {
            *blob_max_bytes = Config::default().blob_max_bytes;
        }
        assert_eq!(reply, welcome(name));
        client
    }
}

/// The relay's tests connect with a verifier of their own, so that the
/// relay's crate needs no client code: it accepts exactly the certificate
/// whose key has the address's fingerprint (as the relay computes it) and
/// checks the handshake's TLS 1.3 signature with it.
/// It also records what it was presented, accepted or not.
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Arc<std::sync::Mutex<Option<Presented>>>,
}

/// What a relay presented in a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Presented {
    /// SHA-256 of the certificate's DER.
    pub certificate: [u8; 32],
    /// The key's fingerprint (SHA-256 of its SubjectPublicKeyInfo).
    pub key: [u8; 32],
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let key = sotto_relay::tls::key_fingerprint(end_entity);
        if let Some(key) = key {
            *self.seen.lock().unwrap() = Some(Presented {
                certificate: sha2::Sha256::digest(end_entity).into(),
                key,
            });
        }
        match key {
            Some(key) if key == self.pin => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::General("not the pinned key".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS 1.3 connector that accepts only the key `address` pins.
pub fn connector(address: &RelayAddress) -> tokio_rustls::TlsConnector {
    recording(address, Arc::default())
}

/// [`connector`], recording what the relay presents in `seen`.
fn recording(
    address: &RelayAddress,
    seen: Arc<std::sync::Mutex<Option<Presented>>>,
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin: address.fingerprint,
            provider,
            seen,
        }))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects to `address` over TLS, pinned to its key.
pub async fn tls_connect(address: &RelayAddress) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect((address.host.as_str(), address.port)).await?;
    let name = rustls::pki_types::ServerName::try_from(address.host.clone())
        .map_err(std::io::Error::other)?;
    connector(address).connect(name, tcp).await
}

/// What the relay at `address` presents now, whether or not it is the key
/// `address` pins.
pub async fn presented(address: &RelayAddress) -> Presented {
    let seen = Arc::default();
    let tcp = TcpStream::connect((address.host.as_str(), address.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(address.host.clone()).unwrap();
    let _ = recording(address, Arc::clone(&seen))
        .connect(name, tcp)
        .await;
    let presented = *seen.lock().unwrap();
    presented.expect("the relay presented a certificate")
}

/// Whether the old key signed `handover` over to `new_key`, checked here
/// independently of sotto's client (protocol.md §9.2.1).
pub fn handover_verifies(
    old_key: &[u8],
    new_key: &[u8; 32],
    not_after: u64,
    scheme: u16,
    signature: &[u8],
) -> bool {
    use sha2::Digest;
    if !sotto_proto::KEY_HANDOVER_SCHEMES.contains(&scheme) {
        return false;
    }
    let old: [u8; 32] = sha2::Sha256::digest(old_key).into();
    let transcript = sotto_proto::key_handover_transcript(&old, new_key, not_after);
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    let scheme = rustls::SignatureScheme::from(scheme);
    let Some((_, candidates)) = algorithms.mapping.iter().find(|(s, _)| *s == scheme) else {
        return false;
    };
    let spki = rustls::pki_types::SubjectPublicKeyInfoDer::from(old_key);
    let Ok(key) = webpki::RawPublicKeyEntity::try_from(&spki) else {
        return false;
    };
    candidates.iter().any(|algorithm| {
        key.verify_signature(*algorithm, &transcript, signature)
            .is_ok()
    })
}

/// A TLS client speaking frames.
pub struct Client {
    pub framed: Framed<TlsStream<TcpStream>, ClientCodec>,
    pub challenge: [u8; 32],
    pub relay: [u8; 32],
}

impl Client {
    /// A connection that got its challenge, or `None` if the relay closed
    /// it before (during the TLS handshake or right after it).
    pub async fn try_connect(address: &RelayAddress) -> Option<Client> {
        let tls = tls_connect(address).await.ok()?;
        let mut framed = Framed::new(tls, ClientCodec::new());
        let first = tokio::time::timeout(PATIENCE, framed.next())
            .await
            .expect("the relay answers or closes in time");
        match first {
            Some(Ok(RelayFrame::Challenge { nonce })) => Some(Client {
                framed,
                challenge: nonce,
                relay: address.fingerprint,
            }),
            Some(Ok(other)) => panic!("expected a challenge, got {other:?}"),
            Some(Err(_)) | None => None,
        }
    }

    /// [`Client::try_connect`] from the local address `from` (any of
    /// 127.0.0.0/8 on Linux), so that the relay sees another source.
    pub async fn try_connect_from(address: &RelayAddress, from: &str) -> Option<Client> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let server: std::net::SocketAddr = format!("{}:{}", address.host, address.port)
            .parse()
            .unwrap();
        let tcp = socket.connect(server).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(address.host.clone()).unwrap();
        let tls = connector(address).connect(name, tcp).await.ok()?;
        let mut framed = Framed::new(tls, ClientCodec::new());
        match tokio::time::timeout(PATIENCE, framed.next()).await.unwrap() {
            Some(Ok(RelayFrame::Challenge { nonce })) => Some(Client {
                framed,
                challenge: nonce,
                relay: address.fingerprint,
            }),
            Some(Ok(other)) => panic!("expected a challenge, got {other:?}"),
            Some(Err(_)) | None => None,
        }
    }

    pub async fn connect(address: &RelayAddress) -> Client {
        let tls = tls_connect(address).await.unwrap();
        let mut framed = Framed::new(tls, ClientCodec::new());
        let first = tokio::time::timeout(PATIENCE, framed.next())
            .await
            .expect("challenge in time")
            .expect("a frame")
            .expect("a valid frame");
        let RelayFrame::Challenge { nonce } = first else {
            panic!("expected a challenge, got {first:?}")
        };
        Client {
            framed,
            challenge: nonce,
            relay: address.fingerprint,
        }
    }

    pub async fn register(&mut self, name: &str, identity: &Identity) -> RelayFrame {
        let proof = identity
            .sign_registration(&mut rand::rng(), &self.relay, &self.challenge, name)
            .unwrap();
        self.send(ClientFrame::Register {
            name: user(name),
            identity: Bytes::from(identity.public().to_bytes()),
            proof: Bytes::from(proof),
        })
        .await;
        self.recv().await
    }

    pub async fn send(&mut self, frame: ClientFrame) {
        self.framed.send(frame).await.unwrap();
    }

    /// The next frame other than a keepalive ping (which is answered).
    pub async fn recv(&mut self) -> RelayFrame {
        self.try_recv(PATIENCE).await.expect("a frame in time")
    }

    /// The next non-ping frame within `wait`, or `None` if nothing came or
    /// the connection ended.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<RelayFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.framed.next()).await;
            match next {
                Ok(Some(Ok(RelayFrame::Ping { nonce }))) => {
                    let _ = self.framed.send(ClientFrame::Pong { nonce }).await;
                }
                Ok(Some(Ok(frame))) => return Some(frame),
                _ => return None,
            }
        }
    }

    /// The barrier before "the relay sent this client nothing (more)": a
    /// ping answered. The relay handles a connection's frames in order and
    /// queues deliveries before it answers their sender (`Sent`), so once
    /// the pong is in, everything it had queued for this client before is
    /// too. Returns the frames that came before the pong (keepalive pings
    /// answered and left out).
    pub async fn barrier(&mut self) -> Vec<RelayFrame> {
        const NONCE: u64 = 0xba_5217e5;
        self.send(ClientFrame::Ping { nonce: NONCE }).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                RelayFrame::Pong { nonce: NONCE } => return before,
                frame => before.push(frame),
            }
        }
    }

    /// Waits until the relay closes the connection; panics on any frame
    /// other than `allowed` ones before that.
    pub async fn closed(&mut self) -> Vec<RelayFrame> {
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout(PATIENCE, self.framed.next()).await {
                Ok(Some(Ok(frame))) => seen.push(frame),
                Ok(Some(Err(_)) | None) => return seen,
                Err(_) => panic!("the relay did not close the connection; saw {seen:?}"),
            }
        }
    }

    pub async fn join(&mut self, name: &str) -> RelayFrame {
        self.send(ClientFrame::Join { room: room(name) }).await;
        self.recv().await
    }
}
