//! One client connection: TLS handshake, the registration challenge, then
//! one `select!` over inbound frames, keepalive, and the two ways a
//! connection is ended from outside (relay shutdown, or disconnection as a
//! slow reader or replaced login). A separate writer task drains the
//! outbound queue, writing everything queued as one TLS write and one
//! flush.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sotto_crypto::PublicIdentity;
use sotto_proto::{
    ClientFrame, Destination, ErrorCode, ProtoError, RelayCodec, RelayFrame, Route, Slot, UserName,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::metrics::Metrics;
use crate::state::{Direct, Peer, Shared, encode};
use crate::store::{Claim, Enqueue, NameRecord, Queued};

/// Room the relay leaves for a Deliver frame's own fields when checking a
/// Send against the maximum frame length.
const DELIVER_OVERHEAD: usize = 256;
/// How many queued frames the writer takes per TLS write.
const WRITE_BATCH: usize = 512;
/// How long a closing connection may take to flush what it was sending.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Serves one accepted TCP connection until it ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    socket: TcpStream,
    addr: SocketAddr,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let conn = shared.next_conn_id();
    let span = tracing::info_span!("conn", id = conn, peer = %addr);
    async move {
        Metrics::inc(&shared.metrics.connections);
        serve_tls(&shared, acceptor, socket, conn, shutdown).await;
        Metrics::dec(&shared.metrics.connections);
    }
    .instrument(span)
    .await;
}

async fn serve_tls(
    shared: &Arc<Shared>,
    acceptor: TlsAcceptor,
    socket: TcpStream,
    conn: u64,
    shutdown: CancellationToken,
) {
    let handshake = timeout(shared.config.handshake_timeout, acceptor.accept(socket));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            Metrics::inc(&shared.metrics.handshake_failures);
            debug!(%error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            Metrics::inc(&shared.metrics.handshake_failures);
            debug!("TLS handshake timed out");
            return;
        }
    };
    Metrics::inc(&shared.metrics.handshakes);
    // What this client pinned: the certificate this handshake presented.
    let relay_fingerprint = shared.certs.fingerprint();
    let (reader, writer) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel(shared.config.outbound_queue);
    let kill = CancellationToken::new();
    let writer = tokio::spawn(write_loop(writer, rx, kill.clone()));

    let mut connection = Connection {
        shared: Arc::clone(shared),
        conn,
        peer: Peer { tx, kill },
        name: None,
        relay_fingerprint,
        challenge: rand::random(),
        rate: RateLimit::new(shared.config.rate_per_sec, shared.config.rate_burst),
    };
    let frames = FramedRead::new(
        reader,
        RelayCodec::with_max_len(shared.config.max_frame_len),
    );
    let end = connection.run(frames, shutdown).await;
    debug!(?end, "connection ends");
    if let Some(name) = connection.name.take() {
        shared.unregister(conn, &name);
    }
    // Let the writer send what is queued (a goodbye, an error), then close.
    let kill = connection.peer.kill.clone();
    drop(connection);
    if timeout(CLOSE_FLUSH, writer).await.is_err() {
        kill.cancel();
    }
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    Eof,
    Bye,
    Killed,
    Shutdown,
    Idle,
    RegistrationTimeout,
    BadFrame,
}

/// Token bucket that makes a client wait (TCP backpressure) rather than
/// dropping what it sends.
struct RateLimit {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token; returns how long to wait if the bucket ran dry.
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst) - 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.per_sec))
    }
}

struct Connection {
    shared: Arc<Shared>,
    conn: u64,
    peer: Peer,
    name: Option<UserName>,
    relay_fingerprint: [u8; 32],
    challenge: [u8; 32],
    rate: RateLimit,
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut frames: FramedRead<R, RelayCodec>,
        shutdown: CancellationToken,
    ) -> End {
        self.reply(RelayFrame::Challenge {
            nonce: self.challenge,
        });
        let config = &self.shared.config;
        let registration_deadline = sleep_until(Instant::now() + config.handshake_timeout);
        tokio::pin!(registration_deadline);
        let mut keepalive = tokio::time::interval(config.keepalive_interval);
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        keepalive.tick().await;
        let mut last_heard = Instant::now();
        let kill = self.peer.kill.clone();
        loop {
            tokio::select! {
                biased;
                () = kill.cancelled() => return End::Killed,
                () = shutdown.cancelled() => {
                    self.reply(RelayFrame::ShuttingDown);
                    return End::Shutdown;
                }
                () = &mut registration_deadline, if self.name.is_none() => {
                    return End::RegistrationTimeout;
                }
                _ = keepalive.tick() => {
                    let quiet = last_heard.elapsed();
                    if quiet >= self.shared.config.idle_timeout {
                        return End::Idle;
                    }
                    if quiet >= self.shared.config.keepalive_interval {
                        self.reply(RelayFrame::Ping { nonce: rand::random() });
                    }
                }
                frame = frames.next() => {
                    let frame = match frame {
                        None => return End::Eof,
                        Some(Ok(frame)) => frame,
                        Some(Err(error)) => {
                            self.refuse(&error);
                            return End::BadFrame;
                        }
                    };
                    last_heard = Instant::now();
                    Metrics::inc(&self.shared.metrics.frames_in);
                    if let Some(wait) = self.rate.take() {
                        tokio::time::sleep(wait).await;
                    }
                    if let Some(end) = self.handle(frame).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Tells the client why its frame was refused; the connection then
    /// closes. Other connections are unaffected.
    fn refuse(&mut self, error: &ProtoError) {
        Metrics::inc(&self.shared.metrics.bad_frames);
        let (code, message) = match error {
            ProtoError::FrameTooLarge { len, max } => (
                ErrorCode::TooLarge,
                format!("frame of {len} bytes exceeds {max}"),
            ),
            ProtoError::UnsupportedVersion(v) => (
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {v} is not supported; this relay speaks {}",
                    sotto_proto::PROTOCOL_VERSION
                ),
            ),
            ProtoError::Io(_) => return,
            _ => (ErrorCode::BadFrame, "malformed frame".to_string()),
        };
        info!(?code, "closing a connection that sent a bad frame");
        self.reply(RelayFrame::Error {
            id: None,
            code,
            message,
        });
    }

    fn reply(&self, frame: RelayFrame) {
        if let Some(bytes) = encode(&frame) {
            self.peer.push(bytes, &self.shared.metrics);
        }
    }

    fn error(&self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) {
        self.reply(RelayFrame::Error {
            id,
            code,
            message: message.into(),
        });
    }

    /// Handles one frame; `Some` ends the connection.
    async fn handle(&mut self, frame: ClientFrame) -> Option<End> {
        match frame {
            ClientFrame::Ping { nonce } => self.reply(RelayFrame::Pong { nonce }),
            ClientFrame::Pong { .. } => {}
            ClientFrame::Bye => return Some(End::Bye),
            ClientFrame::Register {
                name,
                identity,
                proof,
            } => self.register(name, identity, proof).await,
            other => {
                let Some(name) = self.name.clone() else {
                    self.error(None, ErrorCode::NotRegistered, "register first");
                    return None;
                };
                self.handle_registered(name, other).await;
            }
        }
        None
    }

    async fn handle_registered(&mut self, name: UserName, frame: ClientFrame) {
        match frame {
            ClientFrame::Join { room } => match self.shared.join(&name, &room) {
                Ok(members) => self.reply(RelayFrame::Joined { room, members }),
                Err(code) => self.error(None, code, format!("cannot join {room}")),
            },
            ClientFrame::Leave { room } => match self.shared.leave(&name, &room) {
                Ok(()) => self.reply(RelayFrame::Left { room }),
                Err(code) => self.error(None, code, format!("not in {room}")),
            },
            ClientFrame::ListRooms => self.reply(RelayFrame::Rooms {
                rooms: self.shared.rooms(),
            }),
            ClientFrame::ListUsers => self.reply(RelayFrame::Users {
                users: self.shared.users(),
            }),
            ClientFrame::LookupKey { name: wanted } => {
                let store = Arc::clone(&self.shared.store);
                let lookup = wanted.clone();
                let found = blocking(move || store.lookup(&lookup)).await;
                match found {
                    Some(Ok(record)) => self.reply(RelayFrame::Key {
                        name: record.as_ref().map_or(wanted, |r| r.name.clone()),
                        identity: record.map(|r| r.identity),
                    }),
                    _ => self.error(None, ErrorCode::Internal, "directory unavailable"),
                }
            }
            ClientFrame::Send { route, body, slots } => self.send(name, route, body, slots).await,
            ClientFrame::Ack { delivery } => {
                if delivery != 0 {
                    let store = Arc::clone(&self.shared.store);
                    if blocking(move || store.acknowledge(&name, delivery))
                        .await
                        .is_none()
                    {
                        warn!("could not record an acknowledgement");
                    }
                }
            }
            // Answered before registration is checked.
            ClientFrame::Register { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Pong { .. }
            | ClientFrame::Bye => {}
        }
    }

    async fn register(&mut self, name: UserName, identity: Bytes, proof: Bytes) {
        if self.name.is_some() {
            self.error(None, ErrorCode::BadFrame, "already registered");
            return;
        }
        let refuse = |this: &Self, code, message: &str| {
            Metrics::inc(&this.shared.metrics.registrations_refused);
            this.error(None, code, message);
        };
        let Ok(public) = PublicIdentity::from_bytes(&identity) else {
            refuse(self, ErrorCode::BadProof, "not a sotto public identity");
            return;
        };
        if public
            .verify_registration(
                &self.relay_fingerprint,
                &self.challenge,
                name.as_str(),
                &proof,
            )
            .is_err()
        {
            refuse(
                self,
                ErrorCode::BadProof,
                "the proof does not verify for this relay's challenge",
            );
            return;
        }
        let record = NameRecord {
            name: name.clone(),
            fingerprint: *public.fingerprint().as_bytes(),
            identity: identity.clone(),
        };
        let store = Arc::clone(&self.shared.store);
        let claim = blocking(move || store.claim(&record)).await;
        match claim {
            Some(Ok(Claim::New | Claim::Existing)) => {}
            Some(Ok(Claim::Taken)) => {
                refuse(
                    self,
                    ErrorCode::NameTaken,
                    "that name belongs to another key",
                );
                return;
            }
            _ => {
                self.error(None, ErrorCode::Internal, "directory unavailable");
                return;
            }
        }
        self.shared
            .register(self.conn, name.clone(), identity, self.peer.clone());
        self.name = Some(name.clone());
        info!(user = %name, "registered");
        self.reply(RelayFrame::Registered { name: name.clone() });
        self.deliver_pending(&name).await;
    }

    /// Sends what waited in the offline queue, oldest first. What does not
    /// fit in the outbound queue stays stored for the next connection.
    async fn deliver_pending(&self, name: &UserName) {
        let store = Arc::clone(&self.shared.store);
        let user = name.clone();
        let Some(Ok(pending)) = blocking(move || store.pending(&user)).await else {
            warn!("could not read the offline queue");
            return;
        };
        for (id, queued) in pending {
            let frame = deliver_frame(id, queued);
            let Some(bytes) = encode(&frame) else {
                continue;
            };
            if !self.peer.push(bytes, &self.shared.metrics) {
                break;
            }
            Metrics::inc(&self.shared.metrics.deliveries);
        }
    }

    async fn send(&self, from: UserName, route: Route, body: Bytes, slots: Vec<Slot>) {
        let id = route.id;
        let largest_slot = slots.iter().map(|s| s.data.len()).max().unwrap_or(0);
        if slots.len() > self.shared.config.max_slots
            || body.len() + largest_slot + DELIVER_OVERHEAD > sotto_proto::MAX_FRAME_LEN
        {
            self.error(
                Some(id),
                ErrorCode::TooLarge,
                "too many slots or too large to deliver",
            );
            return;
        }
        Metrics::inc(&self.shared.metrics.frames_routed);
        match route.to {
            Destination::Room(room) => match self.shared.route_room(&from, &room, &body, &slots) {
                Ok(_) => self.reply(RelayFrame::Sent { id }),
                Err(code) => self.error(Some(id), code, format!("not a member of {room}")),
            },
            Destination::User(to) => {
                let slot = slots
                    .into_iter()
                    .find(|s| s.to.as_str().eq_ignore_ascii_case(to.as_str()))
                    .map(|s| s.data);
                let queued = Queued {
                    queued_at: now_secs(),
                    from,
                    to: Destination::User(to.clone()),
                    body,
                    slot,
                };
                self.send_direct(id, to, queued).await;
            }
        }
    }

    async fn send_direct(&self, id: u64, to: UserName, queued: Queued) {
        if let Some(bytes) = encode(&deliver_frame(0, queued.clone()))
            && let Direct::Delivered = self.shared.route_direct(&to, bytes)
        {
            self.reply(RelayFrame::Sent { id });
            return;
        }
        // Not connected (or too slow to take it): queue it, if `to` exists.
        let store = Arc::clone(&self.shared.store);
        let recipient = to.clone();
        let message = queued.clone();
        let stored = blocking(
            move || -> Result<Option<Enqueue>, crate::store::StoreError> {
                if store.lookup(&recipient)?.is_none() {
                    return Ok(None);
                }
                store.enqueue(&recipient, &message).map(Some)
            },
        )
        .await;
        match stored {
            Some(Ok(Some(Enqueue::Stored(delivery)))) => {
                Metrics::inc(&self.shared.metrics.queued);
                self.reply(RelayFrame::Sent { id });
                // The recipient may have connected while this was stored,
                // after reading its queue: hand it over now (a duplicate
                // at worst, which clients drop).
                if let Some(peer) = self.shared.peer(&to)
                    && let Some(bytes) = encode(&deliver_frame(delivery, queued))
                {
                    peer.push(bytes, &self.shared.metrics);
                }
            }
            Some(Ok(Some(Enqueue::Full))) => {
                Metrics::inc(&self.shared.metrics.queue_full);
                self.error(
                    Some(id),
                    ErrorCode::QueueFull,
                    format!("{to}'s offline queue is full"),
                );
            }
            Some(Ok(None)) => self.error(Some(id), ErrorCode::NoSuchUser, format!("no user {to}")),
            _ => self.error(Some(id), ErrorCode::Internal, "offline queue unavailable"),
        }
    }
}

fn deliver_frame(delivery: u64, queued: Queued) -> RelayFrame {
    RelayFrame::Deliver {
        delivery,
        from: queued.from,
        to: queued.to,
        body: queued.body,
        slot: queued.slot,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs a store operation on the blocking pool (redb commits fsync).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// Writes queued frames: everything waiting (up to a batch) goes out as one
/// TLS write and one flush, so many small frames share TLS records and
/// system calls.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Bytes>,
    kill: CancellationToken,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    loop {
        let received = tokio::select! {
            biased;
            () = kill.cancelled() => break,
            n = rx.recv_many(&mut batch, WRITE_BATCH) => n,
        };
        if received == 0 {
            break;
        }
        buffer.clear();
        for frame in batch.drain(..) {
            buffer.extend_from_slice(&frame);
        }
        let write = async {
            writer.write_all(&buffer).await?;
            writer.flush().await
        };
        tokio::select! {
            biased;
            () = kill.cancelled() => break,
            result = write => if result.is_err() {
                kill.cancel();
                break;
            }
        }
    }
    let _ = timeout(CLOSE_FLUSH, writer.shutdown()).await;
}
