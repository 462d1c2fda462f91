//! Who is online and who is a member of which room (online or not), and
//! the routing that follows from it.
//!
//! One `std::sync::Mutex` guards the registry. It is never held across an
//! `.await`: every operation here is synchronous and short (map lookups and
//! non-blocking `try_send`s), so an async mutex would only add cost
//! (mini-redis makes the same choice in `db.rs`).
//!
//! What is routed is stored by the committer (`crate::commit`) and sent
//! from the store by each connection's delivery pump; the registry only
//! says who the recipients are and wakes their pumps. `Deliver` and `Sent`
//! frames are assembled from their parts ([`deliver`], [`sent`], by
//! `sotto_proto::codec::fast`: the same bytes as the codec, see the tests
//! there and here) into blocks shared by many frames instead of one
//! allocation each.
//!
//! The parts: `frames` (a connection's outbound queue and the frames put
//! on it), `sources` (admission per source address), `sessions` (who is
//! registered, per-key limits), `rooms` (membership and presence),
//! `routing` (a room message's recipients). The registry they share is
//! defined here.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sotto_proto::{RoomName, UserKey, UserName};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Config;
use crate::backend::Backend;
use crate::commit::Committer;
use crate::metrics::Metrics;
use crate::store::{Membership, NewDelivery, PrekeyDirectory, PrekeyRecord};
use crate::tls::CertStore;

mod frames;
mod prekeys;
mod remote;
mod rooms;
mod routing;
mod sessions;
mod sources;
#[cfg(test)]
mod tests;

pub(crate) use frames::{Peer, To, deliver, encode, sent};
pub(crate) use sessions::KeyLimit;
pub(crate) use sources::Arrival;
use sources::SourceUse;

struct Online {
    name: UserName,
    identity: Bytes,
    fingerprint: [u8; 32],
    conn: u64,
    peer: Peer,
    /// The connection's delivery pump's door: woken when something is
    /// stored for it.
    wake: Arc<PumpDoor>,
    /// In a cluster, the revision of this connection's entry in the
    /// `sotto_online` bucket, once written.
    revision: Option<u64>,
}

/// How the committer reaches a connection's delivery pump: the deliveries
/// it hands over from memory before they are stored (protocol.md 9.7),
/// a wake-up when something was stored for its user, and frames to send
/// once everything stored so far is sent (a `Pong`, which so answers
/// after every delivery stored before its `Ping`).
///
/// The door is *live* while the pump has sent everything stored for its
/// user: it sends what is handed over, in id order. It *falls back* to
/// the database at the start of the connection (what is stored comes
/// first) and when its queue of handed deliveries overflows (a reader
/// that does not keep up): the queue is then emptied, and the pump reads
/// the database until it has sent every delivery up to the highest one
/// it did not get from the queue, committed by then; what is handed over
/// meanwhile waits in the queue, and goes after.
pub(crate) struct PumpDoor {
    pub(crate) wake: Notify,
    state: Mutex<DoorState>,
}

struct DoorState {
    /// Frames for after the deliveries.
    after: Vec<Bytes>,
    /// Deliveries handed over, in id order, and their bytes.
    live: VecDeque<Live>,
    live_bytes: usize,
    /// `Some(id)`: deliveries up to `id` that are not in `live` may be in
    /// the database only; the pump reads them from there first.
    fallback: Option<u64>,
    /// The pump is sending deliveries it took from `live`.
    busy: bool,
    /// The highest delivery the committer queued on the connection itself
    /// (the door was live and idle, [`PumpDoor::offer`]), for the pump to
    /// count as sent.
    direct: u64,
}

/// What became of a delivery offered to a door.
pub(crate) enum Offered {
    /// Queued on the connection at once: the pump had nothing to send.
    Sent,
    /// Waiting for the pump; `first`: nothing was waiting before it (the
    /// door needs a wake-up).
    Handed { first: bool },
    /// The door's queue was full: emptied, the door reads the database.
    Refused,
}

/// What a pump learns from its door at the top of its loop.
pub(crate) struct Opened {
    /// Frames left for after the deliveries.
    pub(crate) after: Vec<Bytes>,
    /// Whether the database has to be read first.
    pub(crate) falls_back: bool,
    /// The highest delivery queued without it (count it as sent).
    pub(crate) direct: u64,
}

/// The most deliveries, and bytes, handed to one door and not yet taken by
/// its pump; past either the door falls back to the database. A delivery
/// counts with its body and every slot of its message, all of which the
/// door keeps alive while it holds it (shared with the other recipients'
/// doors, so this overstates what one door costs).
const LIVE_FRAMES: usize = 1024;
const LIVE_BYTES: usize = 4 * 1024 * 1024;

/// A delivery handed to a pump before it is stored: recipient
/// `recipient` of `delivery`, under `id`.
pub(crate) struct Live {
    pub(crate) id: u64,
    pub(crate) delivery: Arc<NewDelivery>,
    pub(crate) recipient: usize,
}

impl Live {
    /// The `Deliver` frame for its recipient (`None` if it cannot be
    /// framed, which routing rules out).
    pub(crate) fn frame(&self) -> Option<crate::writer::Outbound> {
        let delivery = &self.delivery;
        let to = match &delivery.to {
            sotto_proto::Destination::Room(room) => To::Room(room),
            sotto_proto::Destination::User(user) => To::User(user),
        };
        let slot = delivery.recipients.get(self.recipient)?.slot.as_deref();
        deliver(self.id, &delivery.from, to, &delivery.body, slot)
            .map(crate::writer::Outbound::Whole)
    }
}

impl PumpDoor {
    /// A door that reads the database first: every id up to `reserved`
    /// (the highest handed out so far) may be stored for its user.
    pub(crate) fn new(reserved: u64) -> Self {
        Self {
            wake: Notify::new(),
            state: Mutex::new(DoorState {
                after: Vec::new(),
                live: VecDeque::new(),
                live_bytes: 0,
                fallback: Some(reserved),
                busy: false,
                direct: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, DoorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames left for after the deliveries (taken), whether the
    /// database is to be read first, and what was queued without the pump.
    pub(crate) fn open(&self) -> Opened {
        let mut state = self.state();
        Opened {
            after: std::mem::take(&mut state.after),
            falls_back: state.fallback.is_some(),
            direct: state.direct,
        }
    }

    /// Takes the deliveries handed over, in id order, into `into` (empty:
    /// the door keeps its buffer, so neither allocates once warm); the
    /// pump is busy until it takes an empty queue.
    pub(crate) fn take_live(&self, into: &mut VecDeque<Live>) {
        let mut state = self.state();
        state.live_bytes = 0;
        std::mem::swap(&mut state.live, into);
        state.busy = !into.is_empty();
    }

    /// The pump read the database empty, with every id up to `resolved`
    /// committed (or refused) before the read: the door is live again if
    /// nothing it was not handed lies above that.
    pub(crate) fn go_live(&self, resolved: u64) -> bool {
        let mut state = self.state();
        match state.fallback {
            Some(up_to) if up_to <= resolved => {
                state.fallback = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Hands `live` (of `len` bytes) over. If the door is live and its
    /// pump has nothing to send, the delivery is queued on the connection
    /// `peer` at once, if it has room ([`Offered::Sent`]: no pump wakes);
    /// otherwise it waits in the door's queue ([`Offered::Handed`]). If
    /// that queue is full, it is emptied and the door falls back to the
    /// database for everything up to `live` ([`Offered::Refused`]). No
    /// wake-up here: the committer wakes each door once for everything it
    /// handed over.
    pub(crate) fn offer(&self, live: Live, len: usize, peer: &Peer, metrics: &Metrics) -> Offered {
        let mut state = self.state();
        if state.fallback.is_none() && state.live.is_empty() && !state.busy {
            let id = live.id;
            match live.frame() {
                // Nothing to send (it cannot be framed): as good as sent.
                None => {
                    state.direct = id;
                    return Offered::Sent;
                }
                Some(frame) => {
                    if peer.try_push_delivery(frame).is_ok() {
                        state.direct = id;
                        Metrics::inc(&metrics.deliveries);
                        return Offered::Sent;
                    }
                }
            }
        }
        if state.live.len() < LIVE_FRAMES && state.live_bytes + len <= LIVE_BYTES {
            let first = state.live.is_empty();
            state.live.push_back(live);
            state.live_bytes += len;
            return Offered::Handed { first };
        }
        let up_to = state.fallback.unwrap_or(0).max(live.id);
        state.fallback = Some(up_to);
        state.live.clear();
        state.live_bytes = 0;
        Offered::Refused
    }

    /// Delivery `id` is not handed over: the door falls back to the
    /// database for it (and everything before it).
    pub(crate) fn skip(&self, id: u64) {
        let mut state = self.state();
        state.fallback = Some(state.fallback.unwrap_or(0).max(id));
    }

    /// Puts frames taken for after the deliveries back in front of any
    /// left since (the deliveries they wait for are not all sent yet).
    pub(crate) fn put_back(&self, frames: Vec<Bytes>) {
        if !frames.is_empty() {
            let mut state = self.state();
            let newer = std::mem::replace(&mut state.after, frames);
            state.after.extend(newer);
        }
    }

    fn leave(&self, frames: Vec<Bytes>) {
        self.state().after.extend(frames);
        self.wake.notify_one();
    }
}

/// A member of a room, online or not.
struct RoomMember {
    /// The name as registered.
    name: UserName,
    /// The identity it registered with (the name's owner's).
    identity: Bytes,
    /// That identity's fingerprint (its prekeys' key in the registry).
    fingerprint: [u8; 32],
    /// Its connection, while it has one.
    peer: Option<Peer>,
    /// When it was last connected (or joined), seconds since the epoch.
    last_seen: u64,
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
pub(crate) struct Registry {
    /// Name's key -> the connection registered under it.
    users: HashMap<UserKey, Online>,
    /// Room -> its members, online or not, with the connections of those
    /// online (the same as in `users`: a member that logs out or in again
    /// changes both under the same lock). Rooms without members are
    /// removed.
    rooms: BTreeMap<RoomName, BTreeMap<UserKey, RoomMember>>,
    /// Member's key -> its rooms (the same memberships as `rooms`).
    memberships: HashMap<UserKey, BTreeSet<RoomName>>,
    /// Fingerprint -> what the key holds. A key leaves once it has no
    /// connection and a full budget.
    keys: HashMap<[u8; 32], KeyUse>,
    /// Fingerprint -> the identity's stored prekeys, newest first: the
    /// same as the store's prekey directory, read once at start and kept
    /// up to date by every publication (`prekeys`).
    prekeys: HashMap<[u8; 32], Vec<PrekeyRecord>>,
    /// In a cluster, users connected to the other relays (`remote`).
    remote: HashMap<UserKey, remote::Remote>,
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Where names, prekeys and (through the committer) deliveries and
    /// memberships are kept.
    pub(crate) backend: Backend,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where every write to the store goes, in batches.
    pub(crate) commit: Committer,
    /// Where blob chunks go and come from; `None` if this relay keeps no
    /// blobs.
    pub(crate) blobs: Option<crate::blobs::Blobs>,
    registry: Arc<Mutex<Registry>>,
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

/// Wakes the delivery pumps of the users something was stored for: the
/// committer's view of the registry (it holds nothing else of it).
#[derive(Clone)]
pub(crate) struct Wakers(Arc<Mutex<Registry>>);

impl Wakers {
    /// Wakes the pump of each of `users` that is connected.
    pub(crate) fn wake<'a>(&self, users: impl IntoIterator<Item = &'a UserKey>) {
        let registry = lock(&self.0);
        for user in users {
            if let Some(online) = registry.users.get(user) {
                online.wake.wake.notify_one();
            }
        }
    }

    /// Calls `each` with the index, the door and the connection of every
    /// connected user among `names`, under one lock of the registry (no
    /// allocation: the names are folded on the stack).
    pub(crate) fn each_door<'a>(
        &self,
        names: impl IntoIterator<Item = &'a UserName>,
        mut each: impl FnMut(usize, &Arc<PumpDoor>, &Peer),
    ) {
        let registry = lock(&self.0);
        let mut buf = [0; sotto_proto::MAX_NAME_LEN];
        for (index, name) in names.into_iter().enumerate() {
            if let Some(online) = registry.users.get(name.folded(&mut buf)) {
                each(index, &online.wake, &online.peer);
            }
        }
    }

    /// Leaves `frames` with the pump of connection `conn` of `user`, to
    /// send after every delivery stored so far; `frames` back if that
    /// connection is gone (they are pushed straight to it then).
    pub(crate) fn after(
        &self,
        user: &UserKey,
        conn: u64,
        frames: Vec<Bytes>,
    ) -> Option<Vec<Bytes>> {
        let registry = lock(&self.0);
        match registry.users.get(user) {
            Some(online) if online.conn == conn => {
                online.wake.leave(frames);
                None
            }
            _ => Some(frames),
        }
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // A panic while holding the lock cannot leave the maps half-updated
    // in a way that matters more than losing the relay: carry on.
    registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// The relay's state, with the room memberships the store kept (each
    /// with its member's identity); the committer is started by the caller
    /// with [`Shared::wakers`].
    pub(crate) fn new(
        config: Config,
        backend: Backend,
        certs: Arc<CertStore>,
        metrics: Arc<Metrics>,
        commit: Committer,
        blobs: Option<crate::blobs::Blobs>,
        registry: Registry,
    ) -> Self {
        Self {
            config,
            backend,
            certs,
            metrics,
            commit,
            blobs,
            registry: Arc::new(Mutex::new(registry)),
            next_conn: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// What the committer needs of the registry.
    pub(crate) fn wakers(&self) -> Wakers {
        Wakers(Arc::clone(&self.registry))
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }
}

impl Registry {
    /// The registry of a relay that starts with `memberships`, each with
    /// its member's identity and that identity's fingerprint, and with the
    /// stored `prekeys` of every identity.
    pub(crate) fn with_members(
        memberships: Vec<(Membership, Bytes, [u8; 32])>,
        prekeys: PrekeyDirectory,
    ) -> Self {
        let mut registry = Self {
            prekeys: prekeys.into_iter().collect(),
            ..Self::default()
        };
        for (Membership { room, member }, identity, fingerprint) in memberships {
            let key = member.name.key();
            registry
                .memberships
                .entry(key.clone())
                .or_default()
                .insert(room.clone());
            registry.rooms.entry(room).or_default().insert(
                key,
                RoomMember {
                    name: member.name,
                    identity,
                    fingerprint,
                    peer: None,
                    last_seen: member.last_seen,
                },
            );
        }
        registry
    }
}
