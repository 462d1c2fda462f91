//! The blob path (protocol.md 9.13): in each pair, one client uploads
//! blobs chunk by chunk (a window of `PutChunk`s in flight, each answered
//! `ChunkStored` once durably stored) and hands each complete blob to its
//! partner, which fetches every chunk of it (a window of `GetChunk`s).
//! Counted: chunks fetched inside the measurement window, so each counts
//! once stored and once served, as a forwarded frame counts once received
//! and once written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use sotto_proto::codec::fast::{put_varint, split_frame, varint_len};
use sotto_proto::codec::{PREFIX_LEN, PROTOCOL_VERSION};
use sotto_proto::frame::index;
use sotto_proto::{BLOB_CHUNK_LEN, ClientFrame, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Clock, Conn, Window, nanos};
use crate::BoxError;
use crate::target::{Target, Usage};

/// What the blob phase measured.
#[derive(Debug)]
pub(crate) struct BlobOutcome {
    /// Chunks fetched inside the window.
    pub(crate) served: u64,
    /// Chunks stored (`ChunkStored`) inside the window.
    pub(crate) stored: u64,
    /// Chunks refused (`BlobRefused`), at any time.
    pub(crate) refused: u64,
    pub(crate) secs: f64,
    pub(crate) target: (Usage, Usage),
    pub(crate) bench: (Usage, Usage),
}

/// The shape of the phase.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobPlan {
    /// Chunks in flight per client.
    pub(crate) window: u32,
    /// Chunks per blob.
    pub(crate) chunks: u32,
    pub(crate) warmup: std::time::Duration,
    pub(crate) duration: std::time::Duration,
}

#[derive(Default)]
struct Counts {
    served: AtomicU64,
    stored: AtomicU64,
    refused: AtomicU64,
}

/// A `PutChunk` of a full chunk, by hand: its header, then `data`.
fn put_chunk(out: &mut BytesMut, blob: &[u8; 16], index: u32, chunks: u32, data: &[u8]) {
    let frame = ClientFrame::PutChunk {
        blob: *blob,
        index,
        chunks,
        data: Bytes::new(),
    };
    // The frame with empty data ends in varint(0): replace it by the
    // data's length and the data.
    let Ok(mut empty) = encode_frame(&frame) else {
        return;
    };
    empty.pop();
    let header = empty.get(PREFIX_LEN..).unwrap_or_default();
    let len = data.len() as u64;
    let payload = header.len() + varint_len(len) + data.len();
    out.put_u32(u32::try_from(payload).unwrap_or(u32::MAX));
    out.put_slice(header);
    put_varint(out, len);
    out.put_slice(data);
}

/// Runs the blob phase over `conns` (pairs: 2i uploads, 2i+1 fetches).
pub(crate) async fn run_blobs(
    conns: Vec<Conn>,
    plan: BlobPlan,
    target: &Target,
    clock: Clock,
) -> Result<BlobOutcome, BoxError> {
    let t0 = clock.now() + 20_000_000;
    let start = t0 + nanos(plan.warmup);
    let window = Window {
        start,
        end: start + nanos(plan.duration),
    };
    let stop = CancellationToken::new();
    let counts = Arc::new(Counts::default());
    let data = Bytes::from(vec![0x5a; BLOB_CHUNK_LEN]);
    let mut tasks = Vec::new();
    let mut conns = conns.into_iter();
    while let (Some(up), Some(down)) = (conns.next(), conns.next()) {
        let (blobs_tx, blobs_rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(upload(
            up,
            plan,
            data.clone(),
            blobs_tx,
            Arc::clone(&counts),
            window,
            clock,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(download(
            down,
            plan,
            blobs_rx,
            Arc::clone(&counts),
            window,
            clock,
            stop.clone(),
        )));
    }
    let (target_usage, bench_usage) = window.measure(&clock, target).await?;
    stop.cancel();
    for task in tasks {
        task.await??;
    }
    Ok(BlobOutcome {
        served: counts.served.load(Ordering::Relaxed),
        stored: counts.stored.load(Ordering::Relaxed),
        refused: counts.refused.load(Ordering::Relaxed),
        secs: plan.duration.as_secs_f64(),
        target: target_usage,
        bench: bench_usage,
    })
}

/// Uploads blob after blob until told to stop, each handed to the partner
/// once complete.
#[allow(clippy::too_many_arguments)] // one task's whole setting
async fn upload(
    conn: Conn,
    plan: BlobPlan,
    data: Bytes,
    blobs: mpsc::UnboundedSender<[u8; 16]>,
    counts: Arc<Counts>,
    window: Window,
    clock: Clock,
    stop: CancellationToken,
) -> Result<(), BoxError> {
    let (reader, mut writer) = tokio::io::split(conn.stream);
    let room = Arc::new(Semaphore::new(plan.window as usize));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u32>();
    let reading = tokio::spawn(read_answers(
        reader,
        conn.buf,
        Arc::clone(&room),
        Some(done_tx),
        Arc::clone(&counts),
        window,
        clock,
        stop.clone(),
        index::relay::CHUNK_STORED,
    ));
    let mut frame = BytesMut::with_capacity(BLOB_CHUNK_LEN + 64);
    'blobs: while !stop.is_cancelled() {
        let blob: [u8; 16] = rand::random();
        for index in 0..plan.chunks {
            let permit = tokio::select! {
                permit = Arc::clone(&room).acquire_owned() => permit?,
                () = stop.cancelled() => break 'blobs,
            };
            permit.forget();
            frame.clear();
            put_chunk(&mut frame, &blob, index, plan.chunks, &data);
            writer.write_all(&frame).await?;
        }
        writer.flush().await?;
        // Complete once every chunk of it is answered.
        let mut answered = 0;
        while answered < plan.chunks {
            tokio::select! {
                got = done_rx.recv() => match got {
                    Some(n) => answered += n,
                    None => break 'blobs,
                },
                () = stop.cancelled() => break 'blobs,
            }
        }
        let _ = blobs.send(blob);
    }
    let _ = writer.flush().await;
    reading.await?
}

/// Fetches every chunk of each blob the partner completes.
async fn download(
    conn: Conn,
    plan: BlobPlan,
    mut blobs: mpsc::UnboundedReceiver<[u8; 16]>,
    counts: Arc<Counts>,
    window: Window,
    clock: Clock,
    stop: CancellationToken,
) -> Result<(), BoxError> {
    let (reader, mut writer) = tokio::io::split(conn.stream);
    let room = Arc::new(Semaphore::new(plan.window as usize));
    let reading = tokio::spawn(read_answers(
        reader,
        conn.buf,
        Arc::clone(&room),
        None,
        Arc::clone(&counts),
        window,
        clock,
        stop.clone(),
        index::relay::CHUNK,
    ));
    'blobs: loop {
        let blob = tokio::select! {
            blob = blobs.recv() => match blob {
                Some(blob) => blob,
                None => break,
            },
            () = stop.cancelled() => break,
        };
        for index in 0..plan.chunks {
            let permit = tokio::select! {
                permit = Arc::clone(&room).acquire_owned() => permit?,
                () = stop.cancelled() => break 'blobs,
            };
            permit.forget();
            let get = encode_frame(&ClientFrame::GetChunk { blob, index })?;
            writer.write_all(&get).await?;
            if index % 8 == 7 || index + 1 == plan.chunks {
                writer.flush().await?;
            }
        }
    }
    let _ = writer.flush().await;
    reading.await?
}

/// Reads the answers of one client: each answer of kind `want` frees a
/// place in the window and is counted (if inside the measurement window);
/// a `BlobRefused` too, counted as refused.
#[allow(clippy::too_many_arguments)] // one task's whole setting
async fn read_answers<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    room: Arc<Semaphore>,
    done: Option<mpsc::UnboundedSender<u32>>,
    counts: Arc<Counts>,
    window: Window,
    clock: Clock,
    stop: CancellationToken,
    want: u32,
) -> Result<(), BoxError> {
    loop {
        let mut answered = 0;
        while let Some((payload, _)) = split_frame(&buf)? {
            let len = payload.len();
            let kind = match payload {
                [version, kind, ..] if *version == PROTOCOL_VERSION => u32::from(*kind),
                _ => return Err("a frame of another version".into()),
            };
            let _ = buf.split_to(PREFIX_LEN + len);
            if kind == want || kind == index::relay::BLOB_REFUSED {
                answered += 1;
                if kind == index::relay::BLOB_REFUSED {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                } else if window.contains(clock.now()) {
                    let counter = if want == index::relay::CHUNK {
                        &counts.served
                    } else {
                        &counts.stored
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if answered > 0 {
            room.add_permits(answered as usize);
            if let Some(done) = &done {
                let _ = done.send(answered);
            }
        }
        buf.reserve(256 * 1024);
        let read = tokio::select! {
            read = reader.read_buf(&mut buf) => read?,
            () = stop.cancelled() => return Ok(()),
        };
        if read == 0 {
            return if stop.is_cancelled() {
                Ok(())
            } else {
                Err("the relay closed the connection".into())
            };
        }
    }
}
