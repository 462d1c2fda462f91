//! sotto's relay: a self-hostable TLS 1.3 server that routes end-to-end
//! encrypted frames between sotto clients without being able to read them.
//!
//! # Design
//!
//! - [`run`] takes a bound listener, the certificate store, the
//!   [`Config`] and a shutdown future; `main.rs` only parses arguments,
//!   sets up logging, loads or generates the certificate, binds and calls
//!   it. Tests bind `127.0.0.1:0` and call [`run`] directly.
//! - Each connection is one task: TLS handshake (with a timeout), a fresh
//!   registration challenge, then one `select!` over inbound frames,
//!   keepalive and shutdown. A writer task per connection drains a bounded
//!   outbound queue in batches: one TLS write and one flush for everything
//!   queued. A client that lets its queue fill with frames other than its
//!   stored deliveries is disconnected, never waited for.
//! - The relay decodes each frame, but of a `Send` it reads only the
//!   routing header (destination and slot recipients); bodies and slots are
//!   forwarded as the opaque bytes they came as, each recipient getting
//!   only its own slot.
//! - Who is online and who is a member of which room lives in one
//!   mutex-guarded registry (never held across an `.await`). Name
//!   ownership, memberships and every delivery until it is acknowledged
//!   live in a redb database in the data directory ([`store`]), written by
//!   one committer thread in batches (group commit); each connection's
//!   delivery pump streams its user's stored deliveries from there.
//!
//! # Example
//!
//! ```no_run
//! use sotto_relay::{CertSource, CertStore, Config, run};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::default();
//! let certs = CertStore::load(CertSource::Generated {
//!     dir: config.data_dir.clone(),
//!     hosts: vec!["localhost".into()],
//! })?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7447").await?;
//! run(listener, certs, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
pub mod blobs;
mod cluster;
mod commit;
mod config;
mod connection;
pub mod control;
mod der;
pub mod metrics;
mod state;
pub mod store;
pub mod tls;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use cluster::check_files as check_cluster_files;
pub use config::{ClusterConfig, Config};
pub use metrics::Metrics;
pub use tls::{CertSource, CertStore, TlsError};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::cluster::Cluster;
use crate::commit::Committer;
use crate::state::{Registry, Shared};
use crate::store::{QueueLimits, Store, StoreError, Write, now_secs};

/// How often expired deliveries and absent members are swept.
const EXPIRY_SWEEP: Duration = Duration::from_secs(60 * 60);

/// The room every client can join without asking: the seed chat's general room.
pub const DEFAULT_ROOM: &str = sotto_proto::LOBBY;

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the metrics endpoint failed.
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
}

/// Serves clients on `listener` until `shutdown` completes, then tells
/// every client, waits up to [`Config::shutdown_grace`] for them to hear it,
/// and returns. Every write to the database is durable when it returns, so
/// there is nothing left to flush.
pub async fn run(
    listener: TcpListener,
    certs: Arc<CertStore>,
    config: Config,
    shutdown: impl Future,
) -> Result<(), RelayError> {
    run_with_metrics(
        listener,
        certs,
        config,
        Arc::new(Metrics::default()),
        shutdown,
    )
    .await
}

/// [`run`], with the counters kept in `metrics` (tests and the load
/// generator read them).
pub async fn run_with_metrics(
    listener: TcpListener,
    certs: Arc<CertStore>,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future,
) -> Result<(), RelayError> {
    config.validate().map_err(RelayError::Config)?;
    let kept = match &config.cluster {
        None => Kept::Local(Store::open(&config.data_dir, queue_limits(&config))?),
        Some(cluster) => Kept::Cluster(
            Cluster::connect(cluster, queue_limits(&config), blob_limits(&config)).await?,
        ),
    };
    serve(listener, certs, config, metrics, kept, shutdown).await
}

/// Where a relay keeps what outlives a connection, opened.
#[allow(
    clippy::large_enum_variant,
    reason = "one is made when the relay starts, and moved once"
)]
enum Kept {
    Local(Store),
    Cluster(Cluster),
}

/// [`run_with_metrics`] with the database on a [`store::fault::Disk`] that
/// the caller can fill and free, recovering from storage failures as
/// `recovery` says. For tests only (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
pub async fn run_on_disk(
    listener: TcpListener,
    certs: Arc<CertStore>,
    config: Config,
    metrics: Arc<Metrics>,
    disk: store::fault::Disk,
    recovery: store::Recovery,
    shutdown: impl Future,
) -> Result<(), RelayError> {
    config.validate().map_err(RelayError::Config)?;
    let store = Store::open_on(&config.data_dir, queue_limits(&config), &disk, recovery)?;
    serve(
        listener,
        certs,
        config,
        metrics,
        Kept::Local(store),
        shutdown,
    )
    .await
}

pub(crate) fn blob_limits(config: &Config) -> blobs::BlobLimits {
    // A full chunk's frame, with room to spare: below it, no chunk could
    // be sent, so the relay takes no files.
    let chunk_fits = config.max_frame_len >= sotto_proto::BLOB_CHUNK_LEN + 64;
    blobs::BlobLimits {
        max_bytes: if chunk_fits { config.blob_max_bytes } else { 0 },
        quota_bytes: config.blob_quota_bytes,
        max_total: config.blob_max_total,
        max_age: config.blob_max_age,
    }
}

fn queue_limits(config: &Config) -> QueueLimits {
    QueueLimits {
        max_messages: config.offline_max_messages,
        max_bytes: config.offline_max_bytes,
        max_age: config.offline_max_age,
        room_max_messages: config.room_max_messages,
        room_max_bytes: config.room_max_bytes,
    }
}

async fn serve(
    listener: TcpListener,
    certs: Arc<CertStore>,
    config: Config,
    metrics: Arc<Metrics>,
    kept: Kept,
    shutdown: impl Future,
) -> Result<(), RelayError> {
    let acceptor = TlsAcceptor::from(certs.server_config()?);
    // Every task that holds the store is tracked, so that when `run`
    // returns the database is closed and the data directory can be opened
    // again (a restart in the same process, as the tests do).
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();

    let (backend, registry, start) = match kept {
        Kept::Local(store) => {
            let store = Arc::new(store.with_metrics(Arc::clone(&metrics)));
            let registry = local_registry(&store)?;
            (Backend::Local(store), registry, None)
        }
        Kept::Cluster(cluster) => {
            let mut start = cluster.start().await?;
            let registry = std::mem::take(&mut start.registry);
            (Backend::Cluster(Arc::new(cluster)), registry, Some(start))
        }
    };

    if let Some(addr) = config.metrics {
        let endpoint = TcpListener::bind(addr).await.map_err(RelayError::Metrics)?;
        let (depth, trouble): (Box<dyn Fn() -> u64 + Send + Sync>, _) = match &backend {
            Backend::Local(store) => {
                let store = Arc::clone(store);
                let metrics = Arc::clone(&metrics);
                let trouble: Box<dyn Fn() -> Option<&'static str> + Send + Sync> =
                    Box::new(move || {
                        (metrics.storage_unavailable.load(Ordering::Relaxed) != 0)
                            .then_some("storage unavailable: the database waits to be reopened")
                    });
                (Box::new(move || store.total_queued().unwrap_or(0)), trouble)
            }
            Backend::Cluster(cluster) => {
                let (counted, connected) = (Arc::clone(cluster), Arc::clone(cluster));
                (
                    Box::new(move || counted.queued.load(Ordering::Relaxed)),
                    Box::new(move || {
                        (!connected.nats_connected()).then_some("not connected to NATS")
                    }),
                )
            }
        };
        let certs = Arc::clone(&certs);
        let probe = metrics::Probe {
            depth,
            trouble,
            cert_not_after: Box::new(move || certs.not_after()),
        };
        let serve = metrics::serve(endpoint, Arc::clone(&metrics), probe);
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = serve => {}
                () = stop.cancelled() => {}
            }
        });
    }

    // Blobs (files) are kept by a relay alone, in a database of their own.
    let blobs = match &backend {
        Backend::Local(_) => {
            let store = Arc::new(blobs::BlobStore::open(
                &config.data_dir,
                blob_limits(&config),
            )?);
            let (blobs, puts) = blobs::Blobs::new(Arc::clone(&store));
            let (metrics, runtime) = (Arc::clone(&metrics), tokio::runtime::Handle::current());
            tracker.spawn_blocking(move || blobs::run(puts, store, metrics, runtime));
            Some(blobs)
        }
        Backend::Cluster(_) => None,
    };
    let (commit, jobs) = Committer::new();
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let shared = Arc::new(Shared::new(
        config,
        backend,
        certs,
        Arc::clone(&metrics),
        commit,
        blobs,
        registry,
    ));
    let (wakers, metrics) = (shared.wakers(), Arc::clone(&metrics));
    match &shared.backend {
        Backend::Local(store) => {
            match control::bind(&shared.config.data_dir) {
                Ok(listener) => {
                    tracker.spawn(control::serve(
                        listener,
                        shared.config.data_dir.join(control::CONTROL_SOCKET),
                        Arc::clone(store),
                        tracker.clone(),
                        stop.clone(),
                    ));
                }
                Err(error) => tracing::warn!(
                    %error,
                    "no control socket in the data directory: relay backup cannot reach this relay"
                ),
            }
            let store = Arc::clone(store);
            let runtime = tokio::runtime::Handle::current();
            let hold = Duration::from_millis(shared.config.delivery_hold_ms);
            tracker
                .spawn_blocking(move || commit::run(jobs, store, wakers, metrics, runtime, hold));
        }
        Backend::Cluster(cluster) => {
            tracker.spawn(commit::cluster::run(
                jobs,
                Arc::clone(cluster),
                wakers,
                metrics,
            ));
            if let Some(start) = start {
                tracker.spawn(cluster::mirror::run(
                    Arc::clone(cluster),
                    Arc::clone(&shared),
                    start,
                    stop.clone(),
                ));
            }
        }
    }
    // Expired deliveries (of users who never return) and members away too
    // long are swept at start and then hourly.
    {
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tracker.spawn(async move {
            let mut hourly = tokio::time::interval(EXPIRY_SWEEP);
            loop {
                tokio::select! {
                    _ = hourly.tick() => {}
                    () = stop.cancelled() => return,
                }
                sweep(&shared).await;
            }
        });
    }
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(1);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        match accepted {
            Ok((socket, addr)) => {
                backoff = Duration::from_millis(1);
                let _ = socket.set_nodelay(true);
                tracker.spawn(connection::serve(
                    Arc::clone(&shared),
                    acceptor.clone(),
                    socket,
                    addr,
                    stop.child_token(),
                    permit,
                ));
            }
            Err(error) => {
                // Out of file descriptors and the like: wait, never give up.
                tracing::warn!(%error, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    tracing::info!("shutting down");
    stop.cancel();
    tracker.close();
    // The committer stops once every connection has let go of it, after
    // committing what they gave it.
    let grace = shared.config.shutdown_grace;
    drop(shared);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not close within the grace period");
    }
    Ok(())
}

/// The registry of a relay alone: the rooms' members, with their
/// identities, and the prekey directory, as its database kept them.
fn local_registry(store: &Store) -> Result<Registry, StoreError> {
    let mut members = Vec::new();
    for membership in store.memberships()? {
        let (identity, fingerprint) = store
            .lookup(&membership.member.name)?
            .map(|record| (record.identity, record.fingerprint))
            .unwrap_or_default();
        members.push((membership, identity, fingerprint));
    }
    let prekeys = store.prekeys(now_secs())?;
    Ok(Registry::with_members(members, prekeys))
}

/// Deletes expired deliveries and prekeys, and ends the memberships of
/// members away longer than the absence limit. (In a cluster the stream
/// forgets deliveries past their age by itself.)
async fn sweep(shared: &Arc<Shared>) {
    let now = now_secs();
    shared.expire_prekeys(now);
    if let Some(store) = shared.backend.local() {
        sweep_store(store, now).await;
    }
    expire_members(shared).await;
}

/// Deletes the expired prekeys and deliveries of the local database.
async fn sweep_store(store: &Arc<Store>, now: u64) {
    let prekeys = Arc::clone(store);
    match tokio::task::spawn_blocking(move || prekeys.expire_prekeys(now)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(dropped)) => tracing::info!(dropped, "expired prekeys removed"),
        Ok(Err(error)) => tracing::warn!(%error, "could not sweep the prekeys"),
        Err(_) => tracing::warn!("could not sweep the prekeys: the task failed"),
    }
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store.expire_all()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(dropped)) => tracing::info!(dropped, "expired stored deliveries removed"),
        Ok(Err(error)) => tracing::warn!(%error, "could not sweep the stored deliveries"),
        Err(_) => tracing::warn!("could not sweep the stored deliveries: the task failed"),
    }
}

/// Ends the memberships of members away longer than the absence limit.
async fn expire_members(shared: &Arc<Shared>) {
    let gone = shared.expire_absent(now_secs(), shared.config.member_absence);
    if !gone.is_empty() {
        tracing::info!(
            memberships = gone.len(),
            "members away too long left their rooms"
        );
    }
    for (room, user) in gone {
        let write = Write::Leave { room, user };
        let _ = shared.commit.submit(commit::Job::Write(write)).await;
    }
}
