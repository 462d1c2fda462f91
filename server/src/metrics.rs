//! Counters the relay keeps about itself, and the opt-in HTTP endpoint
//! that shows them: `GET /metrics` (Prometheus) and `GET /health` (for a
//! load balancer or a supervisor). Nothing here names a user or holds
//! content.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The relay's counters and gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client connections (gauge).
    pub connections: AtomicU64,
    /// Registered, connected users (gauge).
    pub users_online: AtomicU64,
    /// TLS handshakes completed.
    pub handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Frames received from clients.
    pub frames_in: AtomicU64,
    /// Send frames routed.
    pub frames_routed: AtomicU64,
    /// Deliveries handed to connected recipients.
    pub deliveries: AtomicU64,
    /// Deliveries stored in the offline queue.
    pub queued: AtomicU64,
    /// Deliveries their recipient acknowledged before they were stored,
    /// so never written (protocol.md 9.7).
    pub acked_unstored: AtomicU64,
    /// Deliveries refused because a recipient's offline queue was full.
    pub queue_full: AtomicU64,
    /// Clients disconnected for not reading fast enough.
    pub slow_consumers: AtomicU64,
    /// Connections closed for sending malformed, oversized or
    /// wrong-version frames.
    pub bad_frames: AtomicU64,
    /// Registrations refused (bad proof, name taken, a per-key limit).
    pub registrations_refused: AtomicU64,
    /// Signed prekeys verified and stored (`PublishPrekey`).
    pub prekeys_published: AtomicU64,
    /// `PublishPrekey`s refused: not verifying for the registered
    /// identity, too large, or too frequent.
    pub prekeys_refused: AtomicU64,
    /// Blob chunks durably stored (`PutChunk` answered `ChunkStored`).
    pub blob_chunks_stored: AtomicU64,
    /// Blob chunks refused (`PutChunk` answered `BlobRefused`).
    pub blob_chunks_refused: AtomicU64,
    /// Blob chunks served (`GetChunk` answered `Chunk`).
    pub blob_chunks_served: AtomicU64,
    /// Bytes charged to the blobs held (gauge).
    pub blob_bytes: AtomicU64,
    /// Bytes queued for clients and not yet written, over all connections,
    /// as each connection's writer last saw it (gauge, updated once per
    /// write).
    pub outbound_bytes: AtomicU64,
    /// The most bytes ever queued for one connection since the relay
    /// started (gauge; at most `outbound_queue_bytes`).
    pub outbound_bytes_peak: AtomicU64,
    /// Connections closed before the TLS handshake because their source
    /// address had too many unregistered connections.
    pub connections_refused: AtomicU64,
    /// Registrations refused by a limit on one key: names per key,
    /// connections per key, or the reserve of a nearly full relay (also
    /// counted in `registrations_refused`).
    pub key_limit_refusals: AtomicU64,
    /// Room messages refused because their sender's key had used up its
    /// fan-out budget.
    pub fanout_refused: AtomicU64,
    /// Storage failures of the database (a full disk, an I/O error),
    /// failed reopens included: each refused the operation it hit.
    pub storage_failures: AtomicU64,
    /// Times the database was reopened after a storage failure.
    pub storage_reopened: AtomicU64,
    /// 1 while a storage failure has left the database waiting to be
    /// reopened (operations that need it are refused), else 0 (gauge).
    pub storage_unavailable: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one from the gauge `counter`.
    pub fn dec(counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter, plus the offline
    /// queue depth, the relay's version and its certificate's expiry
    /// (Unix seconds, if known) given by the caller.
    pub fn render(&self, offline_queue_depth: u64, cert_not_after: Option<u64>) -> String {
        let rows: [(&str, &str, &str, u64); 28] = [
            (
                "sotto_relay_connections",
                "gauge",
                "Open client connections.",
                self.connections.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_users_online",
                "gauge",
                "Registered users connected.",
                self.users_online.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_offline_queue_messages",
                "gauge",
                "Messages in the offline queue.",
                offline_queue_depth,
            ),
            (
                "sotto_relay_handshakes_total",
                "counter",
                "TLS handshakes completed.",
                self.handshakes.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_handshake_failures_total",
                "counter",
                "TLS handshakes failed or timed out.",
                self.handshake_failures.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_frames_in_total",
                "counter",
                "Frames received from clients.",
                self.frames_in.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_frames_routed_total",
                "counter",
                "Send frames routed.",
                self.frames_routed.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_deliveries_total",
                "counter",
                "Deliveries to connected clients.",
                self.deliveries.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_queued_total",
                "counter",
                "Deliveries stored for offline users.",
                self.queued.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_acked_unstored_total",
                "counter",
                "Deliveries acknowledged before they were stored, never written.",
                self.acked_unstored.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_queue_full_total",
                "counter",
                "Deliveries refused: offline queue full.",
                self.queue_full.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_slow_consumers_total",
                "counter",
                "Clients disconnected for reading too slowly.",
                self.slow_consumers.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_bad_frames_total",
                "counter",
                "Connections closed for bad frames.",
                self.bad_frames.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_registrations_refused_total",
                "counter",
                "Registrations refused.",
                self.registrations_refused.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_prekeys_published_total",
                "counter",
                "Signed prekeys verified and stored.",
                self.prekeys_published.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_prekeys_refused_total",
                "counter",
                "Prekey publications refused.",
                self.prekeys_refused.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_blob_chunks_stored_total",
                "counter",
                "Blob chunks durably stored.",
                self.blob_chunks_stored.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_blob_chunks_refused_total",
                "counter",
                "Blob chunks refused.",
                self.blob_chunks_refused.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_blob_chunks_served_total",
                "counter",
                "Blob chunks served.",
                self.blob_chunks_served.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_blob_bytes",
                "gauge",
                "Bytes charged to the blobs held (chunk count times the chunk length).",
                self.blob_bytes.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_outbound_bytes",
                "gauge",
                "Bytes queued for clients, not yet written, as of each one's last write.",
                self.outbound_bytes.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_outbound_bytes_peak",
                "gauge",
                "Most bytes ever queued for one client.",
                self.outbound_bytes_peak.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_connections_refused_total",
                "counter",
                "Connections closed at once: too many unregistered from one address.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_key_limit_refusals_total",
                "counter",
                "Registrations refused by a per-key limit.",
                self.key_limit_refusals.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_fanout_refused_total",
                "counter",
                "Room messages refused: the sender's fan-out budget was used up.",
                self.fanout_refused.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_storage_failures_total",
                "counter",
                "Storage failures of the database (full disk, I/O error), failed reopens included.",
                self.storage_failures.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_storage_reopened_total",
                "counter",
                "Times the database was reopened after a storage failure.",
                self.storage_reopened.load(Ordering::Relaxed),
            ),
            (
                "sotto_relay_storage_unavailable",
                "gauge",
                "1 while the database waits to be reopened after a storage failure.",
                self.storage_unavailable.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP sotto_relay_build_info The relay's version.\n\
             # TYPE sotto_relay_build_info gauge\n\
             sotto_relay_build_info{{version=\"{VERSION}\"}} 1"
        );
        if let Some(not_after) = cert_not_after {
            let name = "sotto_relay_certificate_expiry_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} When the certificate clients get expires (Unix seconds).\n\
                 # TYPE {name} gauge\n{name} {not_after}"
            );
        }
        out
    }
}

/// The relay's version, as `relay --version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the endpoint asks the relay at each request, besides its
/// counters.
pub struct Probe {
    /// Stored deliveries not yet acknowledged (may block: it is called
    /// off the runtime's threads).
    pub depth: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Why the relay cannot serve now, if it cannot (`GET /health`).
    pub trouble: Box<dyn Fn() -> Option<&'static str> + Send + Sync>,
    /// When the certificate clients get now expires (Unix seconds).
    pub cert_not_after: Box<dyn Fn() -> Option<u64> + Send + Sync>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

/// Serves `GET /metrics` and `GET /health` on `listener` until the task
/// is dropped. Any other request gets a 404.
///
/// `/health` answers `200 OK` with `ok` while the relay can serve, and
/// `503 Service Unavailable` with the reason (one line) while it cannot:
/// its database waits to be reopened after a storage failure, or, in a
/// cluster, it has lost its connection to NATS.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, probe: Probe) {
    let probe = Arc::new(probe);
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            // Out of descriptors and the like: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let probe = Arc::clone(&probe);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut request))
                    .await;
            let Ok(Ok(n)) = read else { return };
            let head = request.get(..n).unwrap_or_default();
            let response = if requests(head, "/metrics") {
                let (depth, not_after) = tokio::task::spawn_blocking(move || {
                    ((probe.depth)(), (probe.cert_not_after)())
                })
                .await
                .unwrap_or((0, None));
                let body = metrics.render(depth, not_after);
                response("200 OK", "text/plain; version=0.0.4", &body)
            } else if requests(head, "/health") {
                match (probe.trouble)() {
                    None => response("200 OK", "text/plain", "ok\n"),
                    Some(trouble) => response(
                        "503 Service Unavailable",
                        "text/plain",
                        &format!("{trouble}\n"),
                    ),
                }
            } else {
                response("404 Not Found", "text/plain", "")
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Whether the request `head` is a `GET` of `path` (with or without a
/// query).
fn requests(head: &[u8], path: &str) -> bool {
    head.strip_prefix(b"GET ")
        .and_then(|rest| rest.strip_prefix(path.as_bytes()))
        .is_some_and(|rest| rest.starts_with(b" ") || rest.starts_with(b"?"))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
