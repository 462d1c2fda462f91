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

mod commit;
mod config;
mod connection;
pub mod metrics;
mod state;
pub mod store;
pub mod tls;
pub mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use metrics::Metrics;
pub use tls::{CertSource, CertStore, TlsError};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    let store = Store::open(&config.data_dir, queue_limits(&config))?;
    serve(listener, certs, config, metrics, store, shutdown).await
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
    serve(listener, certs, config, metrics, store, shutdown).await
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
    store: Store,
    shutdown: impl Future,
) -> Result<(), RelayError> {
    let store = Arc::new(store.with_metrics(Arc::clone(&metrics)));
    let acceptor = TlsAcceptor::from(certs.server_config()?);
    // Every task that holds the store is tracked, so that when `run`
    // returns the database is closed and the data directory can be opened
    // again (a restart in the same process, as the tests do).
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();

    if let Some(addr) = config.metrics {
        let endpoint = TcpListener::bind(addr).await.map_err(RelayError::Metrics)?;
        let store = Arc::clone(&store);
        let depth = Arc::new(move || store.total_queued().unwrap_or(0));
        let serve = metrics::serve(endpoint, Arc::clone(&metrics), depth);
        let stop = stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = serve => {}
                () = stop.cancelled() => {}
            }
        });
    }

    // The rooms' members, with their identities, as the store kept them.
    let mut members = Vec::new();
    for membership in store.memberships()? {
        let identity = store
            .lookup(&membership.member.name)?
            .map(|record| record.identity)
            .unwrap_or_default();
        members.push((membership, identity));
    }
    let (commit, jobs) = Committer::new();
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let shared = Arc::new(Shared::new(
        config,
        Arc::clone(&store),
        certs,
        Arc::clone(&metrics),
        commit,
        Registry::with_members(members),
    ));
    {
        let (store, wakers, metrics) = (Arc::clone(&store), shared.wakers(), Arc::clone(&metrics));
        let runtime = tokio::runtime::Handle::current();
        let hold = Duration::from_millis(shared.config.delivery_hold_ms);
        tracker.spawn_blocking(move || commit::run(jobs, store, wakers, metrics, runtime, hold));
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

/// Deletes expired deliveries and ends the memberships of members away
/// longer than the absence limit.
async fn sweep(shared: &Arc<Shared>) {
    let store = Arc::clone(&shared.store);
    match tokio::task::spawn_blocking(move || store.expire_all()).await {
        Ok(Ok(0)) => {}
        Ok(Ok(dropped)) => tracing::info!(dropped, "expired stored deliveries removed"),
        Ok(Err(error)) => tracing::warn!(%error, "could not sweep the stored deliveries"),
        Err(_) => tracing::warn!("could not sweep the stored deliveries: the task failed"),
    }
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
