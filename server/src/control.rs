//! The relay's control socket, `relay.sock` in its data directory: how
//! `relay backup` asks a running relay for a copy of its database (the
//! relay holds the file exclusively). Only the relay's own user reaches
//! it: the socket is made with mode 0600 in the private data directory.
//!
//! One request per connection, a line:
//!
//! - `backup`: the relay copies its database into an unnamed file of its
//!   data directory (nothing is left behind if it dies meanwhile), then
//!   answers the line `ok BYTES TABLE=ENTRIES ...` followed by exactly
//!   BYTES bytes, the copy; or the line `error WHY`. The copy is streamed
//!   so that the relay writes nowhere but its data directory (a service
//!   sandboxed to it can still be backed up), and whoever asked writes
//!   the copy wherever they can.
//!
//! Anything else is answered `error` and closed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
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

/// Answers requests on `listener` until `stop`, then removes the socket
/// `path` (in the data directory, where copies are made). Each answer is
/// a task of `tracker`, so that the relay waits for a backup under way
/// before it closes its database.
pub(crate) async fn serve(
    listener: UnixListener,
    path: PathBuf,
    store: Arc<Store>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let dir: Arc<Path> = path.parent().unwrap_or(Path::new(".")).into();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (store, dir) = (Arc::clone(&store), Arc::clone(&dir));
                    tracker.spawn(answer(stream, store, dir, stop.clone()));
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

/// Answers one request. A copy is made in full even while the relay
/// stops (it reads the database, which stays open until it is done); its
/// hand-over is cut short by `stop`, so that a reader that stalls cannot
/// keep the relay from exiting.
async fn answer(stream: UnixStream, store: Arc<Store>, dir: Arc<Path>, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let request = tokio::time::timeout(Duration::from_secs(5), read.read_line(&mut line)).await;
    let copy = match request {
        Ok(Ok(_)) if line.trim_end_matches('\n') == "backup" => backup(store, dir).await,
        Ok(Ok(_)) => Err("unknown request".to_string()),
        _ => Err("no request".to_string()),
    };
    match copy {
        Ok((header, mut file)) => {
            let streamed = async {
                write.write_all(header.as_bytes()).await?;
                file.seek(std::io::SeekFrom::Start(0)).await?;
                tokio::io::copy(&mut file, &mut write).await
            };
            tokio::select! {
                streamed = streamed => if let Err(error) = streamed {
                    tracing::warn!(%error, "a backup could not be handed over");
                },
                () = stop.cancelled() => {
                    tracing::warn!("a backup's hand-over was cut short: the relay stops");
                }
            }
        }
        Err(why) => {
            let _ = write.write_all(format!("error {why}\n").as_bytes()).await;
        }
    }
    let _ = write.shutdown().await;
}

/// A copy of the database in an unnamed file of `dir`, and the line that
/// announces it.
async fn backup(store: Arc<Store>, dir: Arc<Path>) -> Result<(String, tokio::fs::File), String> {
    let made = tokio::task::spawn_blocking(move || {
        let file = tempfile::tempfile_in(&dir)
            .map_err(|e| format!("no room for the copy in the data directory: {e}"))?;
        let into = file
            .try_clone()
            .map_err(|e| format!("the copy's file: {e}"))?;
        let copied = store.backup(into).map_err(|e| e.to_string())?;
        Ok::<_, String>((copied, file))
    })
    .await;
    match made {
        Ok(Ok((copied, file))) => {
            tracing::info!(bytes = copied.bytes, "database backed up");
            let tables: Vec<String> = copied
                .tables
                .iter()
                .map(|(name, entries)| format!("{name}={entries}"))
                .collect();
            let header = format!("ok {} {}\n", copied.bytes, tables.join(" "));
            Ok((header, tokio::fs::File::from_std(file)))
        }
        Ok(Err(why)) => {
            tracing::warn!(why, "a backup failed");
            Err(why)
        }
        Err(_) => Err("the backup task failed".to_string()),
    }
}
