//! The writer half of a connection, shared with the load generator's bare
//! forwarder so that the baseline batches writes exactly as the relay does.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How many queued frames the writer takes per TLS write.
pub const WRITE_BATCH: usize = 512;
/// Most bytes the writer copies into one write: a batch of large frames
/// goes out in several writes, each releasing its frames' bytes.
pub const WRITE_CHUNK: usize = 256 * 1024;
/// How long a closing connection may take to flush what it was sending.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// The bytes queued for one connection, bounded: a frame is counted when
/// it is queued and released once it has been written (or discarded when
/// the connection ends).
///
/// Queueing touches only this connection's count, never a counter shared
/// by every connection (that would cost every delivery on every core). The
/// relay's gauges follow from the writer instead, once per write:
/// [`Metrics::outbound_bytes`] adds up what each connection had queued
/// after its last write, and [`Metrics::outbound_bytes_peak`] is the most
/// one connection ever had queued. Only the writer releases bytes (besides
/// a frame given back at once), so the count just before a release is the
/// most it has been since the previous one: the peak is exact.
#[derive(Debug)]
pub struct Backlog {
    room: Semaphore,
    limit: usize,
    metrics: Arc<Metrics>,
    /// What this connection last added to `Metrics::outbound_bytes`.
    reported: AtomicUsize,
}

impl Backlog {
    /// A backlog of at most `limit` bytes.
    pub fn new(limit: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            room: Semaphore::new(limit.min(Semaphore::MAX_PERMITS)),
            limit: limit.min(Semaphore::MAX_PERMITS),
            metrics,
            reported: AtomicUsize::new(0),
        }
    }

    /// The most bytes it holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts `len` more bytes if they fit; `false` if they do not.
    pub fn try_take(&self, len: usize) -> bool {
        let Ok(n) = u32::try_from(len) else {
            return false;
        };
        match self.room.try_acquire_many(n) {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Counts `len` more bytes, waiting for the writer to make room;
    /// `false` if they can never fit.
    pub async fn take(&self, len: usize) -> bool {
        let Ok(n) = u32::try_from(len) else {
            return false;
        };
        if len > self.limit {
            return false;
        }
        match self.room.acquire_many(n).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back `len` bytes taken for a frame that was not queued after
    /// all.
    pub fn release(&self, len: usize) {
        if len > 0 {
            self.room.add_permits(len);
        }
    }

    /// The writer wrote (or discarded) `len` bytes: releases them and
    /// updates the gauges.
    pub fn written(&self, len: usize) {
        let before = self.queued();
        self.metrics
            .outbound_bytes_peak
            .fetch_max(before as u64, Ordering::Relaxed);
        self.release(len);
        self.report(self.queued());
    }

    /// The connection is gone: it no longer counts in the gauge.
    pub fn closed(&self) {
        self.report(0);
    }

    fn report(&self, now: usize) {
        let before = self.reported.swap(now, Ordering::Relaxed);
        if now > before {
            self.metrics
                .outbound_bytes
                .fetch_add((now - before) as u64, Ordering::Relaxed);
        } else if before > now {
            self.metrics
                .outbound_bytes
                .fetch_sub((before - now) as u64, Ordering::Relaxed);
        }
    }

    /// Bytes counted and not released.
    pub fn queued(&self) -> usize {
        self.limit.saturating_sub(self.room.available_permits())
    }
}

/// A frame for a connection's writer: in one piece, or in three when a
/// large body is shared by every recipient of a room message instead of
/// copied for each (the fields before the body, the body, the fields
/// after it).
#[derive(Clone, Debug)]
pub enum Outbound {
    /// The whole frame.
    Whole(Bytes),
    /// The frame's bytes are these, one after the other.
    Parts(Box<[Bytes; 3]>),
}

// A queued frame costs no more than the `Bytes` it used to be: the queue
// of an idle connection stays as small as before.
const _: () = assert!(size_of::<Outbound>() == size_of::<Bytes>());

impl Outbound {
    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.pieces().iter().map(Bytes::len).sum()
    }

    /// Whether the frame has no bytes (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's bytes joined (tests).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Outbound::Whole(bytes) => bytes.clone(),
            Outbound::Parts(parts) => Bytes::from(parts.concat()),
        }
    }
}

impl From<Bytes> for Outbound {
    fn from(bytes: Bytes) -> Self {
        Outbound::Whole(bytes)
    }
}

/// What the writer can write: a frame as one or more pieces of bytes.
pub trait Pieces {
    /// The frame's bytes, in order.
    fn pieces(&self) -> &[Bytes];
}

impl Pieces for Bytes {
    fn pieces(&self) -> &[Bytes] {
        std::slice::from_ref(self)
    }
}

impl Pieces for Outbound {
    fn pieces(&self) -> &[Bytes] {
        match self {
            Outbound::Whole(bytes) => std::slice::from_ref(bytes),
            Outbound::Parts(parts) => parts.as_slice(),
        }
    }
}

/// Writes queued frames: everything waiting (up to a batch) goes out as one
/// TLS write and one flush, so many small frames share TLS records and
/// system calls.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    writer: W,
    rx: mpsc::Receiver<Bytes>,
    kill: CancellationToken,
) {
    write_counted(writer, rx, kill, None).await;
}

/// [`write_loop`], releasing each frame's bytes from `backlog` once it is
/// written, and every frame still queued when the connection ends. A
/// piece of at least [`WRITE_CHUNK`] bytes (a large body) is written as it
/// is, not copied.
pub async fn write_counted<W: AsyncWrite + Unpin, T: Pieces>(
    mut writer: W,
    mut rx: mpsc::Receiver<T>,
    kill: CancellationToken,
    backlog: Option<Arc<Backlog>>,
) {
    let release = |len: usize| {
        if let Some(backlog) = &backlog {
            backlog.written(len);
        }
    };
    let size = |frame: &T| frame.pieces().iter().map(Bytes::len).sum::<usize>();
    // Both grow with use, so an idle connection holds next to nothing.
    let mut batch = Vec::new();
    let mut buffer = BytesMut::new();
    'serve: loop {
        let received = tokio::select! {
            biased;
            () = kill.cancelled() => break,
            n = rx.recv_many(&mut batch, WRITE_BATCH) => n,
        };
        if received == 0 {
            break;
        }
        // Bytes of frames wholly in `buffer` or written: released once
        // `buffer` is written.
        let mut done = 0;
        let mut frames = batch.drain(..).peekable();
        while let Some(frame) = frames.next() {
            for piece in frame.pieces() {
                if piece.len() < WRITE_CHUNK {
                    buffer.extend_from_slice(piece);
                    continue;
                }
                let written = (buffer.is_empty() || write_out(&mut writer, &buffer, &kill).await)
                    && write_out(&mut writer, piece, &kill).await;
                buffer.clear();
                if !written {
                    release(done + size(&frame) + frames.map(|f| size(&f)).sum::<usize>());
                    break 'serve;
                }
            }
            done += size(&frame);
            if buffer.len() < WRITE_CHUNK && frames.peek().is_some() {
                continue;
            }
            let written = buffer.is_empty() || write_out(&mut writer, &buffer, &kill).await;
            buffer.clear();
            release(done);
            done = 0;
            if !written {
                // What is left of the batch is discarded with it.
                release(frames.map(|f| size(&f)).sum());
                break 'serve;
            }
        }
    }
    // Frames still queued are discarded: release them, and refuse more.
    rx.close();
    let mut left = 0;
    while let Ok(frame) = rx.try_recv() {
        left += size(&frame);
    }
    release(left);
    if let Some(backlog) = &backlog {
        backlog.closed();
    }
    let _ = timeout(CLOSE_FLUSH, writer.shutdown()).await;
}

/// Writes and flushes `buffer`; `false` if the connection was killed or
/// broke.
async fn write_out<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buffer: &[u8],
    kill: &CancellationToken,
) -> bool {
    let write = async {
        writer.write_all(buffer).await?;
        writer.flush().await
    };
    tokio::select! {
        biased;
        () = kill.cancelled() => false,
        result = write => if result.is_err() {
            kill.cancel();
            false
        } else {
            true
        }
    }
}
