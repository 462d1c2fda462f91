//! The writer half of a connection, shared with the load generator's bare
//! forwarder so that the baseline batches writes exactly as the relay does.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// How many queued frames the writer takes per TLS write.
pub const WRITE_BATCH: usize = 512;
/// How long a closing connection may take to flush what it was sending.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Writes queued frames: everything waiting (up to a batch) goes out as one
/// TLS write and one flush, so many small frames share TLS records and
/// system calls.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Bytes>,
    kill: CancellationToken,
) {
    // Both grow with use, so an idle connection holds next to nothing.
    let mut batch = Vec::new();
    let mut buffer = BytesMut::new();
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
