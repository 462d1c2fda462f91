//! The relay's control socket, `relay.sock` in its data directory: how
//! `relay backup` asks a running relay for a copy of its database (the
//! relay holds the file exclusively). Only the relay's own user reaches
//! it: the socket is made with mode 0600 in the private data directory.
//!
//! One request per connection, one line each way:
//!
//! - `backup PATH` (an absolute path of a file that does not exist):
//!   answered `ok BYTES TABLE=ENTRIES ...` once the copy is on disk, or
//!   `error WHY`.
//!
//! Anything else is answered `error` and closed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;

/// File name of the control socket in the data directory.
pub const CONTROL_SOCKET: &str = "relay.sock";

/// The longest request line read.
const MAX_REQUEST: u64 = 4096;

/// Binds the control socket in `dir`, replacing a stale one (a relay that
/// was killed leaves it behind; the database lock already guarantees no
/// other relay uses this directory).
pub(crate) fn bind(dir: &Path) -> std::io::Result<UnixListener> {
    let path = dir.join(CONTROL_SOCKET);
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Answers requests on `listener` until `stop`, then removes the socket.
/// Each answer is a task of `tracker`, so that the relay waits for a
/// backup under way before it closes its database.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    store: Arc<Store>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tracker.spawn(answer(stream, Arc::clone(&store)));
                }
                Err(error) => {
                    tracing::warn!(%error, "the control socket failed to accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    let _ = std::fs::remove_file(path);
}

async fn answer(stream: UnixStream, store: Arc<Store>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let request = tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line)).await;
    let reply = match request {
        Ok(Ok(_)) => match line.trim_end_matches('\n').split_once(' ') {
            Some(("backup", path)) if Path::new(path).is_absolute() => {
                backup(store, PathBuf::from(path)).await
            }
            Some(("backup", _)) => "error the path must be absolute".to_string(),
            _ => "error unknown request".to_string(),
        },
        _ => "error no request".to_string(),
    };
    let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
    let _ = write.shutdown().await;
}

async fn backup(store: Arc<Store>, to: PathBuf) -> String {
    let shown = to.display().to_string();
    match tokio::task::spawn_blocking(move || store.backup(&to)).await {
        Ok(Ok(copied)) => {
            tracing::info!(to = shown, bytes = copied.bytes, "database backed up");
            let tables: Vec<String> = copied
                .tables
                .iter()
                .map(|(name, entries)| format!("{name}={entries}"))
                .collect();
            format!("ok {} {}", copied.bytes, tables.join(" "))
        }
        Ok(Err(error)) => {
            tracing::warn!(to = shown, %error, "a backup failed");
            format!("error {error}")
        }
        Err(_) => "error the backup task failed".to_string(),
    }
}
