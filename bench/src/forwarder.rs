//! The baseline: a bare tokio-rustls TLS 1.3 forwarder with sotto's framing.
//!
//! It does what the relay does minus everything that makes it a relay: no
//! registration proof, no names, no postcard, no store. Each connection is
//! a reader that splits frames off the stream (`u32` length prefix) and a
//! writer task that drains a bounded queue exactly like the relay's writer
//! (up to 512 frames, one TLS write and one flush per batch). A frame's
//! routing header ([`fwd`]) names a connection or a group; the frame's
//! bytes are forwarded unchanged (one shared buffer for every recipient)
//! and the sender gets a 3-byte ack, as the relay answers `Sent`. The
//! certificate is a fresh self-signed ECDSA P-256 one, as the relay's, and
//! session tickets are off, as in the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sotto_proto::codec::PREFIX_LEN;
use sotto_proto::{MAX_FRAME_LEN, RelayAddress};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use sotto_relay::writer::{CLOSE_FLUSH, write_loop};

use crate::BoxError;
use crate::wire::{fwd, fwd_ack, fwd_frame};

/// Options of `relay-bench forwarder`.
#[derive(Debug, clap::Args)]
pub(crate) struct ForwarderArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Frames queued per connection before further ones are dropped.
    #[arg(long, default_value_t = 65536)]
    outbound_queue: usize,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<u32, mpsc::Sender<Bytes>>,
    groups: HashMap<u32, Vec<u32>>,
}

struct Shared {
    registry: Mutex<Registry>,
    outbound_queue: usize,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves until stdin closes (the bench went away) or SIGINT.
pub(crate) async fn serve(args: ForwarderArgs) -> Result<(), BoxError> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    // The key fingerprint, as the relay prints it (protocol.md 9.1).
    let fingerprint = sotto_relay::tls::key_fingerprint(&cert).ok_or("unparseable certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let address = RelayAddress {
        host: local.ip().to_string(),
        port: local.port(),
        fingerprint,
        alternates: Vec::new(),
    };
    println!("address: {address}");

    let shared = Arc::new(Shared {
        registry: Mutex::new(Registry::default()),
        outbound_queue: args.outbound_queue,
    });
    let stdin_closed = async {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    tokio::pin!(stdin_closed);
    loop {
        tokio::select! {
            () = &mut stdin_closed => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(connection(Arc::clone(&shared), acceptor.clone(), socket));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            },
        }
    }
    Ok(())
}

/// Splits whole frames (prefix included) off the stream, without copying.
struct RawFrames;

impl Decoder for RawFrames {
    type Item = Bytes;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        let Some(prefix) = src.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
        if !(fwd::HEADER..=MAX_FRAME_LEN).contains(&len) {
            return Err(std::io::Error::other("bad frame length"));
        }
        let total = PREFIX_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some(src.split_to(total).freeze()))
    }
}

async fn connection(shared: Arc<Shared>, acceptor: TlsAcceptor, socket: TcpStream) {
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(600), acceptor.accept(socket)).await
    else {
        return;
    };
    let (reader, writer) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel(shared.outbound_queue);
    let kill = CancellationToken::new();
    let writer = tokio::spawn(write_loop(writer, rx, kill.clone()));
    let _ = tx.try_send(Bytes::from(fwd_frame(fwd::HELLO, 0, &[0; 28])));
    let ack = fwd_ack();
    let mut me = None;
    let mut frames = FramedRead::new(reader, RawFrames);
    while let Some(Ok(frame)) = frames.next().await {
        let header = frame
            .get(PREFIX_LEN..PREFIX_LEN + fwd::HEADER)
            .and_then(|h| {
                let target = u32::from_be_bytes(*h.get(2..)?.first_chunk::<4>()?);
                Some((*h.get(1)?, target))
            });
        let Some((op, target)) = header else { break };
        match op {
            fwd::DIRECT => {
                if let Some(peer) = shared.registry().conns.get(&target) {
                    let _ = peer.try_send(frame);
                }
            }
            fwd::GROUP => {
                let registry = shared.registry();
                for member in registry.groups.get(&target).into_iter().flatten() {
                    if Some(*member) != me
                        && let Some(peer) = registry.conns.get(member)
                    {
                        let _ = peer.try_send(frame.clone());
                    }
                }
            }
            fwd::REGISTER => {
                shared.registry().conns.insert(target, tx.clone());
                me = Some(target);
            }
            fwd::JOIN => {
                if let Some(me) = me {
                    shared.registry().groups.entry(target).or_default().push(me);
                }
            }
            _ => break,
        }
        if tx.try_send(ack.clone()).is_err() {
            break;
        }
    }
    if let Some(me) = me {
        let mut registry = shared.registry();
        registry.conns.remove(&me);
        for members in registry.groups.values_mut() {
            members.retain(|m| *m != me);
        }
    }
    drop(tx);
    if tokio::time::timeout(CLOSE_FLUSH, writer).await.is_err() {
        kill.cancel();
    }
}
