//! One client connection: TLS handshake, the registration challenge, then
//! one `select!` over inbound frames, keepalive, and the two ways a
//! connection is ended from outside (relay shutdown, or disconnection as a
//! slow reader or replaced login). A separate writer task drains the
//! outbound queue, writing everything queued as one TLS write and one
//! flush.
//!
//! Registration is in `register`, routing what a client sends in `send`,
//! the stream of its stored deliveries in `pump`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use sotto_proto::{ClientFrame, ErrorCode, ProtoError, RelayCodec, RelayFrame, UserName};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, MissedTickBehavior, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use self::send::Routing;
use crate::metrics::Metrics;
use crate::state::{Arrival, Peer, Registered, Shared, encode};
use crate::store::{Write, now_secs};
use crate::writer::{Backlog, CLOSE_FLUSH, write_counted};

mod blobs;
mod prekeys;
mod pump;
mod pump_cluster;
mod register;
mod send;

/// Initial size of a connection's read buffer (it grows for larger
/// frames). Enough for a registration; an idle connection holds no more.
const READ_BUFFER: usize = 2 * 1024;
/// Most inbound frames handled per pass through a connection's `select!`.
const DRAIN_BATCH: usize = 256;

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
    let span = tracing::info_span!("conn", id = conn, peer = tracing::field::Empty);
    if shared.config.log_peer_addresses {
        span.record("peer", tracing::field::display(addr));
    }
    async move {
        // Refused before the handshake, so that one address cannot hold
        // many slots (or make the relay do many handshakes) unregistered,
        // nor the last slots of a nearly full relay.
        let arrival = match shared.arrive(addr.ip()) {
            Ok(arrival) => arrival,
            Err(limit) => {
                Metrics::inc(&shared.metrics.connections_refused);
                debug!(?limit, "too many connections from this address; closed");
                return;
            }
        };
        Metrics::inc(&shared.metrics.connections);
        serve_tls(&shared, acceptor, socket, conn, shutdown, arrival).await;
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
    arrival: Arrival,
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
    let relay_fingerprints = shared.certs.recent_fingerprints();
    let (reader, writer) = tokio::io::split(tls);
    let (tx, rx) = mpsc::channel(shared.config.outbound_queue);
    let kill = CancellationToken::new();
    let backlog = Arc::new(Backlog::new(
        shared.config.outbound_queue_bytes,
        Arc::clone(&shared.metrics),
    ));
    let writer = tokio::spawn(write_counted(
        writer,
        rx,
        kill.clone(),
        Some(Arc::clone(&backlog)),
    ));

    let mut connection = Connection {
        shared: Arc::clone(shared),
        conn,
        peer: Peer { tx, kill, backlog },
        me: None,
        arrival,
        relay_fingerprints,
        challenge: rand::random(),
        rate: RateLimit::new(shared.config.rate_per_sec, shared.config.rate_burst),
        pump: None,
        unanswered: Arc::default(),
        publisher: None,
    };
    let frames = FramedRead::with_capacity(
        reader,
        RelayCodec::with_max_len(shared.config.max_frame_len),
        READ_BUFFER,
    );
    let end = connection.run(frames, shutdown).await;
    info!(why = %end, "disconnected");
    if let Some((done, pump)) = connection.pump.take() {
        done.cancel();
        let _ = pump.await;
    }
    if let Some(me) = connection.me.as_ref()
        && let crate::backend::Backend::Cluster(cluster) = &shared.backend
    {
        cluster.gone(&me.key, conn).await;
    }
    if let Some(me) = connection.me.take()
        && let Some(rooms) = shared.unregister(conn, &me.name)
        && !rooms.is_empty()
    {
        connection
            .record(Write::Seen {
                user: me.key,
                rooms,
                at: now_secs(),
            })
            .await;
    }
    // Let the writer send what is queued (a goodbye, an error), then close.
    let kill = connection.peer.kill.clone();
    drop(connection);
    if timeout(CLOSE_FLUSH, writer).await.is_err() {
        kill.cancel();
    }
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug)]
enum End {
    Eof,
    Bye,
    Killed,
    Shutdown,
    Idle,
    RegistrationTimeout,
    BadFrame,
    KeyLimit,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            End::Eof => "the client closed the connection",
            End::Bye => "the client said goodbye",
            End::Killed => "replaced by a new login of its name, or reading too slowly",
            End::Shutdown => "the relay shuts down",
            End::Idle => "silent past the idle timeout",
            End::RegistrationTimeout => "not registered in time",
            End::BadFrame => "a bad frame",
            End::KeyLimit => "a limit on its key",
        })
    }
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

    /// Takes a token at `now`; returns how long to wait if the bucket ran
    /// dry.
    fn take(&mut self, now: Instant) -> Option<Duration> {
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
    /// Who registered on this connection, once someone has.
    me: Option<Registered>,
    /// Counts this connection against the relay's slots and its source
    /// address (as unregistered until it registers).
    arrival: Arrival,
    /// The certificate fingerprints this client may have pinned: the current
    /// one and, just after a reload, the previous one.
    relay_fingerprints: ([u8; 32], Option<[u8; 32]>),
    challenge: [u8; 32],
    rate: RateLimit,
    /// The delivery pump, once registered: cancelled and awaited when the
    /// connection ends.
    pump: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// Jobs handed to the committer and not answered yet: while there are
    /// any, answers to other requests wait for them (so that the relay
    /// answers a connection's requests in order).
    unanswered: Arc<std::sync::atomic::AtomicUsize>,
    /// The registered identity, for the prekeys it publishes, and their
    /// rate limit; once registered.
    publisher: Option<prekeys::Publisher>,
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut frames: FramedRead<R, RelayCodec>,
        shutdown: CancellationToken,
    ) -> End {
        // While the key is being rotated: the old key's signed hand-over to
        // the one this handshake presented, first (protocol.md §9.2.1).
        if let Some(handover) = self.shared.certs.handover(now_secs()) {
            self.reply(handover.frame());
        }
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
        let mut routing = Routing::default();
        let kill = self.peer.kill.clone();
        loop {
            tokio::select! {
                biased;
                () = kill.cancelled() => return End::Killed,
                () = shutdown.cancelled() => {
                    self.reply(RelayFrame::ShuttingDown);
                    return End::Shutdown;
                }
                () = &mut registration_deadline, if self.me.is_none() => {
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
                next = frames.next() => {
                    last_heard = Instant::now();
                    let end = self.drain(next, &mut frames, &mut routing, last_heard).await;
                    self.flush(&mut routing).await;
                    if let Some(end) = end {
                        return end;
                    }
                }
            }
        }
    }

    /// Handles `next` and then every frame already read, or readable
    /// without waiting, before going back to the `select!`: a busy
    /// connection pays for the select once per read rather than once per
    /// frame. At most [`DRAIN_BATCH`] frames, so that a kill or a shutdown
    /// is noticed soon. `now` is when the frames were read. `Some` ends the
    /// connection.
    async fn drain<R: AsyncRead + Unpin>(
        &mut self,
        mut next: Option<Result<ClientFrame, ProtoError>>,
        frames: &mut FramedRead<R, RelayCodec>,
        routing: &mut Routing,
        mut now: Instant,
    ) -> Option<End> {
        for drained in 1.. {
            let frame = match next {
                None => return Some(End::Eof),
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    self.refuse(&error);
                    return Some(End::BadFrame);
                }
            };
            Metrics::inc(&self.shared.metrics.frames_in);
            if let Some(wait) = self.rate.take(now) {
                // What is routed so far is not held while waiting.
                self.flush(routing).await;
                tokio::time::sleep(wait).await;
                now = Instant::now();
            }
            if let Some(end) = self.handle(frame, routing).await {
                return Some(end);
            }
            if drained >= DRAIN_BATCH {
                break;
            }
            match frames.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        None
    }

    /// Tells the client why its frame was refused; the connection then
    /// closes. Other connections are unaffected.
    fn refuse(&mut self, error: &ProtoError) {
        if matches!(error, ProtoError::Io(_)) {
            // The connection broke: nothing to tell, nothing to count.
            return;
        }
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
    async fn handle(&mut self, frame: ClientFrame, routing: &mut Routing) -> Option<End> {
        match frame {
            // Once registered, after the answers to the sends before it.
            ClientFrame::Ping { nonce } if self.me.is_some() => self.pong(nonce, routing),
            ClientFrame::Ping { nonce } => self.reply(RelayFrame::Pong { nonce }),
            ClientFrame::Pong { .. } => {}
            ClientFrame::Bye => return Some(End::Bye),
            ClientFrame::Register {
                name,
                identity,
                proof,
            } => return Box::pin(self.register(name, identity, proof)).await,
            ClientFrame::PublishPrekey { prekey } if self.me.is_some() => {
                Box::pin(self.publish_prekey(prekey, routing)).await;
            }
            ClientFrame::PutChunk {
                blob,
                index,
                chunks,
                data,
            } if self.me.is_some() => {
                Box::pin(self.put_chunk(blob, index, chunks, data, routing)).await;
            }
            ClientFrame::GetChunk { blob, index } if self.me.is_some() => {
                Box::pin(self.get_chunk(blob, index, routing)).await;
            }
            ClientFrame::BlobStatus { blob } if self.me.is_some() => {
                Box::pin(self.blob_status(blob, routing)).await;
            }
            other => {
                let Some(me) = &self.me else {
                    self.error(None, ErrorCode::NotRegistered, "register first");
                    return None;
                };
                self.handle_registered(me, other, routing).await;
            }
        }
        None
    }

    async fn handle_registered(&self, me: &Registered, frame: ClientFrame, routing: &mut Routing) {
        let name = &me.name;
        match frame {
            ClientFrame::Join { room } => match self.shared.join(name, &room) {
                Ok((members, fresh)) => {
                    let joined = RelayFrame::Joined {
                        room: room.clone(),
                        members,
                    };
                    self.answer(&joined, routing);
                    if fresh {
                        let name = name.clone();
                        self.record(Write::Join { room, name }).await;
                    }
                }
                Err(code) => self.answer(&error(code, format!("cannot join {room}")), routing),
            },
            ClientFrame::Leave { room } => match self.shared.leave(name, &room) {
                Ok(()) => {
                    self.answer(&RelayFrame::Left { room: room.clone() }, routing);
                    let user = me.key.clone();
                    self.record(Write::Leave { room, user }).await;
                }
                Err(code) => self.answer(&error(code, format!("not in {room}")), routing),
            },
            ClientFrame::ListRooms => {
                let rooms = self.shared.rooms();
                self.answer(&RelayFrame::Rooms { rooms }, routing);
            }
            ClientFrame::ListUsers => {
                let users = self.shared.users();
                self.answer(&RelayFrame::Users { users }, routing);
            }
            ClientFrame::LookupKey { name: wanted } => {
                let answer = Box::pin(self.lookup_key(wanted)).await;
                self.answer(&answer, routing);
            }
            ClientFrame::Send { route, body, slots } => {
                self.send(me, route, body, slots, routing);
            }
            ClientFrame::Ack { delivery } => self.acknowledge(delivery, routing),
            // Answered before registration is checked, or (publishing a
            // prekey, blobs) handled apart.
            ClientFrame::Register { .. }
            | ClientFrame::PublishPrekey { .. }
            | ClientFrame::PutChunk { .. }
            | ClientFrame::GetChunk { .. }
            | ClientFrame::BlobStatus { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Pong { .. }
            | ClientFrame::Bye => {}
        }
    }

    // The store operations below (and registration's) wait for the
    // blocking pool; they are rare and their state is large, so they are
    // called boxed: the state of
    // every connection's future (all its awaits overlaid) stays small, and
    // so does an idle connection.

    async fn lookup_key(&self, wanted: UserName) -> RelayFrame {
        let found = self.shared.backend.lookup(wanted.clone()).await;
        match found {
            Ok(record) => RelayFrame::Key {
                prekeys: record.as_ref().map_or_else(Vec::new, |r| {
                    self.shared.prekeys_of(&r.fingerprint, now_secs())
                }),
                name: record.as_ref().map_or(wanted, |r| r.name.clone()),
                identity: record.map(|r| r.identity),
            },
            Err(failure) => {
                warn!(error = %failure, "a key lookup failed: the directory is unavailable");
                error(ErrorCode::Internal, "directory unavailable".into())
            }
        }
    }
}

/// An `Error` frame answering a request that is not a `Send`.
fn error(code: ErrorCode, message: String) -> RelayFrame {
    RelayFrame::Error {
        id: None,
        code,
        message,
    }
}

/// Runs a store operation on the blocking pool (redb commits fsync).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}
