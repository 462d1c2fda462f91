//! The traffic phase: one sender task per sending client (closed or open
//! loop, see the parent module), one reader task per client, and what they
//! measured ([`Outcome`]).
//!
//! Each reader acknowledges every delivery with an id (the relay stores
//! each until then) in one write per read, on the connection's writer,
//! which it shares with the connection's sender, if any, behind a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::{Clock, Conn, Window, nanos};
use crate::BoxError;
use crate::target::{Target, Usage};
use crate::wire::{FIRST_ID, Incoming, Proto, Template, body_header, parse, put_ack};
use sotto_proto::codec::fast::split_frame;

/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

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
    /// Whether readers acknowledge deliveries.
    pub(crate) ack: bool,
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
    /// `Sent` frames (forwarder acks) received inside the window.
    pub(crate) sent_frames: u64,
    /// `Error` and `Undelivered` frames received during the phase.
    pub(crate) refused: u64,
}

/// Per-sender progress, shared with the readers.
#[derive(Debug, Default)]
struct Flow {
    /// Deliveries of this sender's messages received so far.
    delivered: AtomicU64,
    /// This sender's messages the target has accepted so far: covered by
    /// a (cumulative) `Sent`, or forwarder acks.
    accepted: AtomicU64,
    /// Woken when `delivered` or `accepted` grows.
    wake: Notify,
}

/// A connection's writer, shared by its sender and its reader (acks).
type Writer = Arc<Mutex<WriteHalf<TlsStream<TcpStream>>>>;

struct ReadResult {
    latency: Histogram<u64>,
    delivered_in_window: u64,
    stamped_in_window: u64,
    sent_frames: u64,
    refused: u64,
    closed: bool,
}

struct SendResult {
    in_window: u64,
    scheduled_in_window: u64,
    total: u64,
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

    let mut writers: Vec<Writer> = Vec::with_capacity(conns.len());
    let mut readers = Vec::with_capacity(conns.len());
    for (index, conn) in conns.into_iter().enumerate() {
        let (reader, writer) = tokio::io::split(conn.stream);
        let writer = Arc::new(Mutex::new(writer));
        writers.push(Arc::clone(&writer));
        let own = traffic.senders.iter().position(|s| s.conn == index);
        readers.push(tokio::spawn(read_loop(
            Reading {
                proto,
                ack: traffic.ack,
                own,
                flows: Arc::clone(&flows),
                window,
                clock,
                stop: stop.clone(),
            },
            reader,
            conn.buf,
            writer,
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
            .get(sender.conn)
            .cloned()
            .ok_or("a sender without a connection")?;
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
    for sender in senders {
        let result = sender.await?;
        sent += result.in_window;
        scheduled += result.scheduled_in_window;
        total_sent += result.total;
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
    let (mut sent_frames, mut refused) = (0, 0);
    for reader in readers {
        let result = reader.await??;
        latency.add(&result.latency)?;
        delivered += result.delivered_in_window;
        stamped += result.stamped_in_window;
        sent_frames += result.sent_frames;
        refused += result.refused;
        lost += usize::from(result.closed);
    }
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
        sent_frames,
        refused,
    })
}

/// What a reader needs besides its connection.
struct Reading {
    proto: Proto,
    /// Whether to acknowledge deliveries.
    ack: bool,
    /// The flow of this connection's own sender, if it sends.
    own: Option<usize>,
    flows: Arc<[Flow]>,
    window: Window,
    clock: Clock,
    stop: CancellationToken,
}

async fn read_loop(
    ctx: Reading,
    mut reader: ReadHalf<TlsStream<TcpStream>>,
    mut buf: BytesMut,
    writer: Writer,
) -> Result<ReadResult, BoxError> {
    let Reading {
        proto,
        ack,
        own,
        flows,
        window,
        clock,
        stop,
    } = ctx;
    let mut result = ReadResult {
        latency: histogram()?,
        delivered_in_window: 0,
        stamped_in_window: 0,
        sent_frames: 0,
        refused: 0,
        closed: false,
    };
    let mut local = vec![0u64; flows.len()];
    let mut touched: Vec<usize> = Vec::new();
    let mut acks = BytesMut::with_capacity(4096);
    loop {
        let now = clock.now();
        let mut rest: &[u8] = &buf;
        let mut accepted = None;
        while let Some((payload, tail)) = split_frame(rest)? {
            rest = tail;
            let body = match parse(proto, payload) {
                Incoming::Deliver { delivery, body } => {
                    if ack && delivery != 0 {
                        put_ack(&mut acks, delivery);
                    }
                    body
                }
                Incoming::Ack(id) => {
                    if window.contains(now) {
                        result.sent_frames += 1;
                    }
                    let before = accepted.unwrap_or(0);
                    accepted = Some(match id {
                        // Cumulative: every send up to `id`.
                        Some(id) => before.max(id.saturating_sub(FIRST_ID) + 1),
                        None => before + 1,
                    });
                    continue;
                }
                Incoming::Refused => {
                    result.refused += 1;
                    continue;
                }
                Incoming::Other => continue,
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
        if !acks.is_empty() {
            // Every delivery of this read acknowledged in one write, as a
            // client does once it has stored the read's messages.
            let mut writer = writer.lock().await;
            if writer.write_all(&acks).await.is_err() || writer.flush().await.is_err() {
                result.closed = !stop.is_cancelled();
                break;
            }
            acks.clear();
        }
        if let (Some(accepted), Some(flow)) = (accepted, own.and_then(|own| flows.get(own))) {
            match proto {
                Proto::Forwarder => flow.accepted.fetch_add(accepted, Ordering::Release),
                Proto::Relay | Proto::InMemory | Proto::Cluster => {
                    flow.accepted.fetch_max(accepted, Ordering::Release)
                }
            };
            flow.wake.notify_one();
        }
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

/// Messages of a sender still in flight: of the `total` it sent, those
/// not yet accepted (`accepted` so far) or not yet delivered to all
/// `fanout` recipients (`delivered` deliveries so far, any order).
fn in_flight(total: u64, fanout: u64, delivered: u64, accepted: u64) -> u64 {
    let fanout = fanout.max(1);
    let undelivered = (total * fanout).saturating_sub(delivered).div_ceil(fanout);
    undelivered.max(total.saturating_sub(accepted))
}

struct SendJob {
    writer: Writer,
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
        let mut writer = self.writer.lock().await;
        writer.write_all(out).await.is_ok() && writer.flush().await.is_ok()
    }

    /// Keeps `window` messages in flight until the window ends: a message
    /// is in flight until the target has accepted it (`Sent`) and every
    /// delivery of it arrived.
    async fn closed(mut self, window: u64) -> SendResult {
        let window = window.max(1);
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
                let in_flight = in_flight(
                    total,
                    self.fanout,
                    flow.delivered.load(Ordering::Acquire),
                    flow.accepted.load(Ordering::Acquire),
                );
                let room = window.saturating_sub(in_flight);
                if room == 0 {
                    tokio::select! {
                        () = flow.wake.notified() => continue,
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                let n = room.min(self.batch);
                out.clear();
                for k in total..total + n {
                    self.template.append(&mut out, now, FIRST_ID + k);
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
                    self.template.append(&mut out, stamp, FIRST_ID + k);
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_flight;

    #[test]
    fn a_message_is_in_flight_until_accepted_and_delivered() {
        // Nothing back yet.
        assert_eq!(in_flight(10, 1, 0, 0), 10);
        // Delivered but not yet covered by a Sent, and the reverse.
        assert_eq!(in_flight(10, 1, 10, 4), 6);
        assert_eq!(in_flight(10, 1, 3, 10), 7);
        // A cumulative Sent covering everything and every delivery in.
        assert_eq!(in_flight(10, 1, 10, 10), 0);
        // Fan-out: a message with one delivery missing is still in flight.
        assert_eq!(in_flight(4, 31, 4 * 31 - 1, 4), 1);
        assert_eq!(in_flight(4, 31, 4 * 31, 4), 0);
        // More accepted or delivered than sent (never) counts nothing.
        assert_eq!(in_flight(2, 1, 5, 5), 0);
    }
}
