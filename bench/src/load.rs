//! The clients: connecting and registering, the traffic phase (closed and
//! open loop), idle connections and handshake storms.
//!
//! # Measuring
//!
//! Every phase runs on one clock ([`Clock`]): warm-up, then a measurement
//! window, then the senders stop and what is in flight drains. Senders
//! stamp each frame's body with its send time (closed loop: the time it is
//! written; open loop: the time it was *scheduled*, so a stalled target
//! cannot hide its stall by slowing the sender, i.e. no coordinated
//! omission). Readers take the time once per read and record receive time
//! minus stamp in an HDR histogram for every frame stamped inside the
//! window, and count the deliveries received inside it. The target's CPU
//! time and memory are read from `/proc` at the window's edges.
//!
//! Closed loop: a sender keeps at most `window` messages in flight, counted
//! by deliveries (a room message is done when all its deliveries arrived),
//! and writes whatever the window allows as one batch. Open loop: a pacer
//! thread ticks every `tick` and each sender writes everything scheduled
//! until then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rustls::pki_types::ServerName;
use sotto_crypto::Identity;
use sotto_proto::codec::PREFIX_LEN;
use sotto_proto::codec::fast::split_frame;
use sotto_proto::{
    ClientFrame, Destination, RelayAddress, RelayFrame, RoomName, UserName, decode_payload,
    encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::BoxError;
use crate::target::{Target, Usage, usage_of};
use crate::wire::{Incoming, Proto, Template, body_header, fwd, fwd_frame, parse};

/// The room (relay) or group id (forwarder) of the fan-out scenario.
pub(crate) const ROOM: &str = "bench";
/// Longest a client may take to connect and register.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// Nanoseconds since the bench started, shared by senders and readers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_nanos(ns))
    }
}

/// What every client shares: the identity it registers with and the clock.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) identity: Identity,
    pub(crate) public: Bytes,
    pub(crate) clock: Clock,
}

/// The relay name of client `index`.
pub(crate) fn user_name(index: u32) -> Result<UserName, BoxError> {
    Ok(UserName::try_from(format!("bench{index:05}"))?)
}

/// A connected client, registered (and in the room, if asked), with what it
/// has read but not consumed yet.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Conn {
    /// The next frame's payload (version byte first).
    async fn next_payload(&mut self) -> Result<Bytes, BoxError> {
        loop {
            if let Some((payload, _)) = split_frame(&self.buf)? {
                let len = payload.len();
                let frame = self.buf.split_to(PREFIX_LEN + len).freeze();
                return Ok(frame.slice(PREFIX_LEN..));
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("the target closed the connection during setup".into());
            }
        }
    }

    async fn next_relay(&mut self) -> Result<RelayFrame, BoxError> {
        let payload = self.next_payload().await?;
        Ok(decode_payload(&payload)?)
    }

    /// Reads relay frames until `want` matches one; an error frame fails.
    async fn expect_relay(
        &mut self,
        want: impl Fn(&RelayFrame) -> bool,
    ) -> Result<RelayFrame, BoxError> {
        loop {
            let frame = self.next_relay().await?;
            if want(&frame) {
                return Ok(frame);
            }
            if let RelayFrame::Error { code, message, .. } = frame {
                return Err(format!("relay refused: {code:?}: {message}").into());
            }
        }
    }

    /// Reads forwarder frames until one with `op`.
    async fn expect_fwd(&mut self, op: u8) -> Result<(), BoxError> {
        loop {
            let payload = self.next_payload().await?;
            if payload.get(1) == Some(&op) {
                return Ok(());
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

/// Connects client `index` to `address` and registers it (as
/// `bench<index>` on the relay), joining the bench room if `join`.
pub(crate) async fn connect(
    bench: &Bench,
    proto: Proto,
    address: &RelayAddress,
    index: u32,
    join: bool,
) -> Result<Conn, BoxError> {
    let stream = sotto_client::tls::connect(address).await?;
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(4096),
    };
    match proto {
        Proto::Relay => {
            let RelayFrame::Challenge { nonce } = conn.next_relay().await? else {
                return Err("the relay did not open with a challenge".into());
            };
            let name = user_name(index)?;
            let proof = bench.identity.sign_registration(
                &mut rand::rng(),
                &address.fingerprint,
                &nonce,
                name.as_str(),
            )?;
            let register = ClientFrame::Register {
                name,
                identity: bench.public.clone(),
                proof: Bytes::from(proof),
            };
            conn.write(&encode_frame(&register)?).await?;
            conn.expect_relay(|f| matches!(f, RelayFrame::Registered { .. }))
                .await?;
            if join {
                let room = RoomName::try_from(ROOM)?;
                conn.write(&encode_frame(&ClientFrame::Join { room })?)
                    .await?;
                conn.expect_relay(|f| matches!(f, RelayFrame::Joined { .. }))
                    .await?;
            }
        }
        Proto::Forwarder => {
            conn.expect_fwd(fwd::HELLO).await?;
            conn.write(&fwd_frame(fwd::REGISTER, index, &[])).await?;
            conn.expect_fwd(fwd::ACK).await?;
            if join {
                conn.write(&fwd_frame(fwd::JOIN, 0, &[])).await?;
                conn.expect_fwd(fwd::ACK).await?;
            }
        }
    }
    Ok(conn)
}

/// Connects clients `0..count`, `concurrency` at a time, on the runtime's
/// worker threads (registration signs with RSA).
pub(crate) async fn connect_all(
    bench: &Arc<Bench>,
    target: &Target,
    count: u32,
    join: bool,
    concurrency: usize,
) -> Result<Vec<Conn>, BoxError> {
    let proto = target.proto;
    let address = Arc::new(target.address.clone());
    let mut pending = futures::stream::iter(0..count)
        .map(|index| {
            let bench = Arc::clone(bench);
            let address = Arc::clone(&address);
            tokio::spawn(async move {
                tokio::time::timeout(SETUP_TIMEOUT, connect(&bench, proto, &address, index, join))
                    .await
                    .map_err(|_| BoxError::from("setup timed out"))
                    .and_then(|r| r)
            })
        })
        .buffered(concurrency.max(1));
    let mut conns = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(joined) = pending.next().await {
        let index = conns.len();
        conns.push(joined?.map_err(|e| format!("client {index}: {e}"))?);
    }
    Ok(conns)
}

/// How senders pace themselves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// At most `window` messages in flight per sender.
    Closed { window: u64 },
    /// `rate` messages per second in total, scheduled evenly; the pacer
    /// ticks every `tick`.
    Open { rate: f64, tick: Duration },
}

/// One sending client.
#[derive(Debug)]
pub(crate) struct Sender {
    /// Index of its connection.
    pub(crate) conn: usize,
    /// What it sends.
    pub(crate) template: Template,
}

/// A traffic phase.
#[derive(Debug)]
pub(crate) struct Traffic {
    pub(crate) senders: Vec<Sender>,
    /// Deliveries per message.
    pub(crate) fanout: u64,
    pub(crate) mode: Mode,
    /// Most frames per write.
    pub(crate) batch: u64,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    /// Longest wait for in-flight frames after the senders stop.
    pub(crate) drain: Duration,
}

/// What a traffic phase measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Window length, seconds.
    pub(crate) secs: f64,
    /// Messages sent (stamped) inside the window.
    pub(crate) sent: u64,
    /// Messages the open-loop schedule asked for inside the window.
    pub(crate) scheduled: u64,
    /// Deliveries received inside the window.
    pub(crate) delivered: u64,
    /// Deliveries of messages stamped inside the window that never came.
    pub(crate) missing: u64,
    /// Latency of messages stamped inside the window, ns.
    pub(crate) latency: Histogram<u64>,
    /// The target's usage at the window's start and end.
    pub(crate) target: (Usage, Usage),
    /// This process's usage at the window's start and end.
    pub(crate) bench: (Usage, Usage),
    /// Connections that closed during the phase.
    pub(crate) lost: usize,
}

/// Per-sender progress, shared with the readers.
#[derive(Debug, Default)]
struct Flow {
    /// Deliveries of this sender's messages received so far.
    delivered: AtomicU64,
    /// Woken when `delivered` grows.
    wake: Notify,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        (self.start..self.end).contains(&t)
    }

    /// Waits out the window, reading the target's and this process's CPU
    /// and memory at its start and its end.
    async fn measure(
        &self,
        clock: &Clock,
        target: &Target,
    ) -> Result<((Usage, Usage), (Usage, Usage)), BoxError> {
        tokio::time::sleep_until(clock.instant(self.start)).await;
        let (target_start, bench_start) = (target.usage()?, usage_of("self")?);
        tokio::time::sleep_until(clock.instant(self.end)).await;
        let (target_end, bench_end) = (target.usage()?, usage_of("self")?);
        Ok(((target_start, target_end), (bench_start, bench_end)))
    }
}

struct ReadResult {
    latency: Histogram<u64>,
    delivered_in_window: u64,
    stamped_in_window: u64,
    closed: bool,
}

struct SendResult {
    in_window: u64,
    scheduled_in_window: u64,
    total: u64,
    _writer: WriteHalf<TlsStream<TcpStream>>,
}

fn histogram() -> Result<Histogram<u64>, BoxError> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

/// Runs `traffic` over `conns` against `target`.
pub(crate) async fn run_traffic(
    conns: Vec<Conn>,
    traffic: &Traffic,
    target: &Target,
    clock: Clock,
) -> Result<Outcome, BoxError> {
    let proto = target.proto;
    let flows: Arc<[Flow]> = (0..traffic.senders.len())
        .map(|_| Flow::default())
        .collect();
    let t0 = clock.now() + 20_000_000;
    let start = t0 + nanos(traffic.warmup);
    let window = Window {
        start,
        end: start + nanos(traffic.duration),
    };
    let stop = CancellationToken::new();

    let mut writers: Vec<Option<WriteHalf<_>>> = Vec::with_capacity(conns.len());
    let mut readers = Vec::with_capacity(conns.len());
    for conn in conns {
        let (reader, writer) = tokio::io::split(conn.stream);
        writers.push(Some(writer));
        readers.push(tokio::spawn(read_loop(
            reader,
            conn.buf,
            proto,
            Arc::clone(&flows),
            window,
            clock,
            stop.clone(),
        )));
    }

    let pacer_stop = Arc::new(AtomicBool::new(false));
    let pacer = Arc::new(Notify::new());
    if let Mode::Open { tick, .. } = traffic.mode {
        let stop = Arc::clone(&pacer_stop);
        let pacer = Arc::clone(&pacer);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                pacer.notify_waiters();
            }
        });
    }
    let senders_count = traffic.senders.len().max(1) as f64;
    let mut senders = Vec::with_capacity(traffic.senders.len());
    for (index, sender) in traffic.senders.iter().enumerate() {
        let writer = writers
            .get_mut(sender.conn)
            .and_then(Option::take)
            .ok_or("two senders on one connection")?;
        let job = SendJob {
            writer,
            template: sender.template.clone(),
            flows: Arc::clone(&flows),
            index,
            fanout: traffic.fanout.max(1),
            batch: traffic.batch.max(1),
            t0,
            window,
            clock,
        };
        senders.push(match traffic.mode {
            Mode::Closed { window } => tokio::spawn(job.closed(window)),
            Mode::Open { rate, .. } => {
                let interval = 1e9 * senders_count / rate.max(1.0);
                let offset = interval * index as f64 / senders_count;
                tokio::spawn(job.open(interval, offset, Arc::clone(&pacer)))
            }
        });
    }

    let (target_usage, bench_usage) = window.measure(&clock, target).await?;

    let mut sent = 0;
    let mut scheduled = 0;
    let mut total_sent = 0;
    let mut kept = Vec::new();
    for sender in senders {
        let result = sender.await?;
        sent += result.in_window;
        scheduled += result.scheduled_in_window;
        total_sent += result.total;
        kept.push(result);
    }
    pacer_stop.store(true, Ordering::Relaxed);
    let expected = total_sent * traffic.fanout;
    let drain_until = tokio::time::Instant::now() + traffic.drain;
    while flows
        .iter()
        .map(|f| f.delivered.load(Ordering::Relaxed))
        .sum::<u64>()
        < expected
        && tokio::time::Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let mut latency = histogram()?;
    let mut delivered = 0;
    let mut stamped = 0;
    let mut lost = 0;
    for reader in readers {
        let result = reader.await??;
        latency.add(&result.latency)?;
        delivered += result.delivered_in_window;
        stamped += result.stamped_in_window;
        lost += usize::from(result.closed);
    }
    drop(kept);
    drop(writers);
    Ok(Outcome {
        secs: traffic.duration.as_secs_f64(),
        sent,
        scheduled,
        delivered,
        missing: (sent * traffic.fanout).saturating_sub(stamped),
        latency,
        target: target_usage,
        bench: bench_usage,
        lost,
    })
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn read_loop(
    mut reader: ReadHalf<TlsStream<TcpStream>>,
    mut buf: BytesMut,
    proto: Proto,
    flows: Arc<[Flow]>,
    window: Window,
    clock: Clock,
    stop: CancellationToken,
) -> Result<ReadResult, BoxError> {
    let mut result = ReadResult {
        latency: histogram()?,
        delivered_in_window: 0,
        stamped_in_window: 0,
        closed: false,
    };
    let mut local = vec![0u64; flows.len()];
    let mut touched: Vec<usize> = Vec::new();
    loop {
        let now = clock.now();
        let mut rest: &[u8] = &buf;
        while let Some((payload, tail)) = split_frame(rest)? {
            rest = tail;
            let Incoming::Deliver(body) = parse(proto, payload) else {
                continue;
            };
            let Some((stamp, who)) = body_header(body) else {
                continue;
            };
            if window.contains(stamp) {
                result
                    .latency
                    .saturating_record(now.saturating_sub(stamp).max(1));
                result.stamped_in_window += 1;
            }
            if window.contains(now) {
                result.delivered_in_window += 1;
            }
            let who = usize::try_from(who).unwrap_or(usize::MAX);
            if let Some(count) = local.get_mut(who) {
                if *count == 0 {
                    touched.push(who);
                }
                *count += 1;
            }
        }
        let consumed = buf.len() - rest.len();
        buf.advance(consumed);
        for who in touched.drain(..) {
            if let (Some(count), Some(flow)) = (local.get_mut(who), flows.get(who)) {
                flow.delivered.fetch_add(*count, Ordering::Release);
                flow.wake.notify_one();
                *count = 0;
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    result.closed = !stop.is_cancelled();
                    break;
                }
                Ok(_) => {}
            },
        }
    }
    Ok(result)
}

struct SendJob {
    writer: WriteHalf<TlsStream<TcpStream>>,
    template: Template,
    flows: Arc<[Flow]>,
    index: usize,
    fanout: u64,
    batch: u64,
    t0: u64,
    window: Window,
    clock: Clock,
}

impl SendJob {
    async fn write(&mut self, out: &[u8]) -> bool {
        self.writer.write_all(out).await.is_ok() && self.writer.flush().await.is_ok()
    }

    /// Keeps `window` messages in flight until the window ends.
    async fn closed(mut self, window: u64) -> SendResult {
        let cap = window.max(1) * self.fanout;
        let mut out =
            Vec::with_capacity(self.template.len() * usize::try_from(self.batch).unwrap_or(1));
        let (mut total, mut in_window) = (0u64, 0u64);
        let deadline = self.clock.instant(self.window.end);
        tokio::time::sleep_until(self.clock.instant(self.t0)).await;
        let flows = Arc::clone(&self.flows);
        if let Some(flow) = flows.get(self.index) {
            loop {
                let now = self.clock.now();
                if now >= self.window.end {
                    break;
                }
                let done = flow.delivered.load(Ordering::Acquire);
                let in_flight = (total * self.fanout).saturating_sub(done);
                let room = cap.saturating_sub(in_flight) / self.fanout;
                if room == 0 {
                    tokio::select! {
                        () = flow.wake.notified() => continue,
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                let n = room.min(self.batch);
                out.clear();
                for _ in 0..n {
                    self.template.append(&mut out, now);
                }
                if !self.write(&out).await {
                    break;
                }
                total += n;
                if self.window.contains(now) {
                    in_window += n;
                }
            }
        }
        SendResult {
            in_window,
            scheduled_in_window: in_window,
            total,
            _writer: self.writer,
        }
    }

    /// Sends on an even schedule (one message every `interval` ns, starting
    /// `offset` ns after t0), stamping each with its scheduled time.
    async fn open(mut self, interval: f64, offset: f64, pacer: Arc<Notify>) -> SendResult {
        let t0 = self.t0;
        let schedule = |k: u64| t0 + (offset + interval * k as f64) as u64;
        // Messages scheduled up to `t`.
        let due = |t: u64| -> u64 {
            let since = t.saturating_sub(t0) as f64 - offset;
            if since < 0.0 {
                0
            } else {
                (since / interval) as u64 + 1
            }
        };
        let mut out =
            Vec::with_capacity(self.template.len() * usize::try_from(self.batch).unwrap_or(1));
        let (mut total, mut in_window) = (0u64, 0u64);
        let deadline = self.clock.instant(self.window.end);
        loop {
            let tick = pacer.notified();
            tokio::pin!(tick);
            tick.as_mut().enable();
            let now = self.clock.now();
            if now >= self.window.end {
                break;
            }
            let n = due(now).saturating_sub(total).min(self.batch);
            if n > 0 {
                out.clear();
                for k in total..total + n {
                    let stamp = schedule(k);
                    self.template.append(&mut out, stamp);
                    if self.window.contains(stamp) {
                        in_window += 1;
                    }
                }
                if !self.write(&out).await {
                    break;
                }
                total += n;
                continue;
            }
            tokio::select! {
                () = &mut tick => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let scheduled_in_window = due(self.window.end).saturating_sub(due(self.window.start));
        SendResult {
            in_window,
            scheduled_in_window,
            total,
            _writer: self.writer,
        }
    }
}

/// What a handshake storm measured.
#[derive(Debug)]
pub(crate) struct Handshakes {
    pub(crate) secs: f64,
    /// Handshakes completed (first frame read) inside the window.
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) target: (Usage, Usage),
    pub(crate) bench: (Usage, Usage),
}

/// `concurrency` loops of: TCP connect, full TLS 1.3 handshake with the
/// client library's pinned connector, read the target's first frame
/// (challenge or hello), reset the connection (no TIME_WAIT left behind).
pub(crate) async fn handshakes(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    clock: Clock,
) -> Result<Handshakes, BoxError> {
    let connector = sotto_client::tls::connector(&target.address)?;
    let server_name = ServerName::try_from(target.address.host.clone())?;
    let addr = (target.address.host.clone(), target.address.port);
    let start = clock.now() + nanos(warmup);
    let window = Window {
        start,
        end: start + nanos(duration),
    };
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let (mut completed, mut failed) = (0u64, 0u64);
            while clock.now() < window.end {
                let attempt = async {
                    let socket = TcpStream::connect((addr.0.as_str(), addr.1)).await?;
                    socket.set_nodelay(true)?;
                    socket.set_zero_linger()?;
                    let mut tls = connector.connect(server_name.clone(), socket).await?;
                    let mut buf = BytesMut::with_capacity(256);
                    while split_frame(&buf)?.is_none() {
                        if tls.read_buf(&mut buf).await? == 0 {
                            return Err(BoxError::from("closed before the first frame"));
                        }
                    }
                    Ok::<_, BoxError>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(())) => completed += u64::from(window.contains(clock.now())),
                    _ => failed += 1,
                }
            }
            (completed, failed)
        }));
    }
    let (target_usage, bench_usage) = window.measure(&clock, target).await?;
    let (mut completed, mut failed) = (0, 0);
    for task in tasks {
        let (c, f) = task.await?;
        completed += c;
        failed += f;
    }
    Ok(Handshakes {
        secs: duration.as_secs_f64(),
        completed,
        failed,
        target: target_usage,
        bench: bench_usage,
    })
}

/// Destination of a relay direct message to client `index`.
pub(crate) fn to_user(index: u32) -> Result<Destination, BoxError> {
    Ok(Destination::User(user_name(index)?))
}

/// Destination of a relay room message.
pub(crate) fn to_room() -> Result<Destination, BoxError> {
    Ok(Destination::Room(RoomName::try_from(ROOM)?))
}
