//! Who is online and in which rooms, and the routing that follows from it.
//!
//! One `std::sync::Mutex` guards the registry. It is never held across an
//! `.await`: every operation here is synchronous and short (map lookups and
//! non-blocking `try_send`s), so an async mutex would only add cost
//! (mini-redis makes the same choice in `db.rs`).
//!
//! The routing path is built to cost little per message, because a relay
//! is judged by how close it comes to a bare forwarder (docs/benchmarks.md):
//! `Deliver` and `Sent` frames are assembled from their parts ([`deliver`],
//! [`sent`], by `sotto_proto::codec::fast`: the same bytes as the codec,
//! see the tests there and here) into blocks shared
//! by many frames instead of one allocation each; a room message without
//! slots is assembled once for all its members, whose connections the
//! room keeps at hand; and a batch of direct messages to one user takes
//! the registry's lock once ([`PeerCache`]).
//!
//! The parts: `frames` (a connection's outbound queue and the frames put
//! on it), `sources` (admission per source address), `sessions` (who is
//! registered, per-key limits), `rooms` (membership and presence),
//! `routing` (room fan-out and direct hand-over). The registry they share
//! is defined here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sotto_proto::{RoomName, UserKey, UserName};
use tokio::time::Instant;

use crate::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::CertStore;

mod frames;
mod rooms;
mod routing;
mod sessions;
mod sources;
#[cfg(test)]
mod tests;

pub(crate) use frames::{Peer, To, deliver, deliver_shared, encode, sent};
pub(crate) use routing::{Direct, PeerCache};
pub(crate) use sessions::KeyLimit;
pub(crate) use sources::Arrival;
use sources::SourceUse;

struct Online {
    /// The name as registered, shared with the peer caches that hold
    /// this connection (a cache compares it with a recipient's name).
    name: Arc<UserName>,
    identity: Bytes,
    fingerprint: [u8; 32],
    conn: u64,
    peer: Peer,
    rooms: BTreeSet<RoomName>,
}

/// What one identity key holds: its registered connections, and what is
/// left of its fan-out budget (a token bucket of bytes).
struct KeyUse {
    connections: usize,
    fanout: f64,
    last: Instant,
}

impl KeyUse {
    /// The budget refilled up to `now`.
    fn refill(&mut self, config: &Config, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.fanout = (self.fanout + elapsed * config.fanout_bytes_per_sec as f64)
            .min(config.fanout_burst_bytes as f64);
    }
}

#[derive(Default)]
struct Registry {
    /// Name's key -> the connection registered under it.
    users: HashMap<UserKey, Online>,
    /// Room -> the keys of its members, with their connections
    /// (the same as in `users`: a member that logs out or in again leaves
    /// its rooms under the same lock), so that a room message reaches each
    /// member without looking it up. Empty rooms are removed.
    rooms: BTreeMap<RoomName, BTreeMap<UserKey, Peer>>,
    /// Fingerprint -> what the key holds. A key leaves once it has no
    /// connection and a full budget.
    keys: HashMap<[u8; 32], KeyUse>,
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) metrics: Arc<Metrics>,
    registry: Mutex<Registry>,
    /// Changed (under the lock) whenever `registry.users` changes.
    generation: AtomicU64,
    next_conn: AtomicU64,
    /// Connections open (each holds one of `max_connections`), counted
    /// from when they are accepted.
    open: AtomicUsize,
    /// Source address -> its connections (guarded apart from the
    /// registry: it changes on every accept).
    sources: Mutex<HashMap<IpAddr, SourceUse>>,
}

/// A registered user as its connection knows it: the name as registered
/// (how everyone sees it) and its key (how the registry finds it). The key
/// is folded once, at registration, so that routing a message never folds
/// its sender's name again.
#[derive(Clone, Debug)]
pub(crate) struct Registered {
    pub(crate) name: UserName,
    pub(crate) key: UserKey,
}

impl Registered {
    pub(crate) fn new(name: UserName) -> Self {
        let key = name.key();
        Self { name, key }
    }
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        store: Arc<Store>,
        certs: Arc<CertStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            store,
            certs,
            metrics,
            registry: Mutex::new(Registry::default()),
            generation: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the relay: carry on.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
