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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use sotto_proto::codec::fast;
use sotto_proto::{
    ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, RoomName, Slot, UserInfo, UserName,
    encode_frame,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use sotto_proto::UserKey;

use crate::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::CertStore;
use crate::writer::{Backlog, Outbound};

/// The outbound side of one connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// Encoded frames for the connection's writer.
    pub(crate) tx: mpsc::Sender<Outbound>,
    /// Cancelled to disconnect the connection (slow reader, replaced).
    pub(crate) kill: CancellationToken,
    /// The bytes queued in `tx`, bounded.
    pub(crate) backlog: Arc<Backlog>,
}

impl Peer {
    /// Queues an encoded frame without waiting. A peer whose queue is full,
    /// in frames or in bytes, reads too slowly: it is disconnected (never
    /// allowed to stall the sender or to grow memory), and `false` is
    /// returned.
    pub(crate) fn push(&self, frame: impl Into<Outbound>, metrics: &Metrics) -> bool {
        let frame = frame.into();
        let len = frame.len();
        if !self.backlog.try_take(len) {
            self.too_slow(metrics);
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.backlog.release(len);
                self.too_slow(metrics);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.backlog.release(len);
                false
            }
        }
    }

    fn too_slow(&self, metrics: &Metrics) {
        if !self.kill.is_cancelled() {
            Metrics::inc(&metrics.slow_consumers);
            tracing::info!("disconnecting a client that reads too slowly");
        }
        self.kill.cancel();
    }
}

/// Encodes a relay frame. Frames the relay builds are bounded by what it
/// accepted (see `Connection::send`), so this cannot exceed the maximum;
/// if it ever did, the frame is dropped and logged rather than sent.
pub(crate) fn encode(frame: &RelayFrame) -> Option<Bytes> {
    match encode_frame(frame) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::error!(%error, "could not encode a relay frame");
            None
        }
    }
}

pub(crate) use sotto_proto::codec::fast::To;

/// Bodies at least this long are not copied into each recipient's
/// `Deliver` frame of a room message: the frames share them
/// ([`deliver_shared`]).
pub(crate) const SHARED_BODY: usize = 16 * 1024;

/// The `Deliver` frame's parts, measured; `None`, logged, if the frame
/// would exceed the maximum frame length, as with `encode`.
fn measure<'a>(
    delivery: u64,
    from: &'a UserName,
    to: To<'a>,
    body: &'a [u8],
    slot: Option<&'a [u8]>,
) -> Option<fast::Deliver<'a>> {
    match fast::Deliver::new(delivery, from, to, body, slot) {
        Ok(frame) => Some(frame),
        Err(error) => {
            tracing::error!(%error, "could not encode a relay frame");
            None
        }
    }
}

/// The wire form of `RelayFrame::Deliver { delivery, from, to, body, slot }`,
/// written straight from its parts by `sotto_proto::codec::fast`: the same
/// bytes as `encode` of that frame (see the tests), without building the
/// frame (cloning names) or growing a buffer while serializing. `None`,
/// logged, if it would exceed the maximum frame length, as with `encode`.
pub(crate) fn deliver(
    delivery: u64,
    from: &UserName,
    to: To<'_>,
    body: &[u8],
    slot: Option<&[u8]>,
) -> Option<Bytes> {
    let frame = measure(delivery, from, to, body, slot)?;
    Some(carve(frame.frame_len(), |out| frame.put(out)))
}

/// [`deliver`], for one of many recipients of `body`: a body of at least
/// [`SHARED_BODY`] bytes is not copied but shared, the frame being the
/// fields before it, the body, and the fields after it. A 1 MiB message to
/// a room of 100 then holds 1 MiB of the relay's memory, not 100.
pub(crate) fn deliver_shared(
    delivery: u64,
    from: &UserName,
    to: To<'_>,
    body: &Bytes,
    slot: Option<&[u8]>,
) -> Option<Outbound> {
    if body.len() < SHARED_BODY {
        return deliver(delivery, from, to, body, slot).map(Outbound::Whole);
    }
    let frame = measure(delivery, from, to, body, slot)?;
    let head = carve(frame.head_len(), |out| frame.put_head(out));
    let tail = carve(frame.tail_len(), |out| frame.put_tail(out));
    Some(Outbound::Parts(Box::new([head, body.clone(), tail])))
}

/// The wire form of `RelayFrame::Sent { id }` (the same bytes as `encode`).
pub(crate) fn sent(id: u64) -> Bytes {
    carve(fast::sent_len(id), |out| fast::put_sent(out, id))
}

/// Size of the blocks relay-built frames are carved from.
const BLOCK: usize = 8 * 1024;

thread_local! {
    /// This thread's current block: what is left of it after the frames
    /// already carved out.
    static BLOCK_LEFT: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A frame of `len` bytes written by `write`, carved from the thread's
/// current block instead of allocated on its own: routing builds one or
/// two frames per message, and a `malloc` plus a `free` on another thread
/// (the recipient's writer) for each cost more than the rest of the
/// frame's assembly. A frame keeps its block alive (reference-counted) until
/// it is written, so a block lives as long as its longest-queued frame: a
/// queued frame holds at most `BLOCK` bytes besides its own, and a reader
/// too slow to empty its queue is disconnected when the queue is full.
fn carve(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    BLOCK_LEFT.with(|left| {
        let mut left = left.borrow_mut();
        if left.capacity() < len {
            *left = BytesMut::with_capacity(BLOCK.max(len));
        }
        write(&mut left);
        debug_assert_eq!(left.len(), len, "a frame's length was miscounted");
        left.split().freeze()
    })
}

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

/// Why a registration was refused by a limit on its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyLimit {
    /// The key has `max_connections_per_key` connections already.
    Connections,
    /// The relay is nearly full and the key has a connection already.
    Reserve,
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

/// What a direct delivery came to.
pub(crate) enum Direct {
    /// Handed to the recipient's connection.
    Delivered,
    /// The recipient is not connected (or was just disconnected as too
    /// slow): the message should go to the offline queue.
    Offline,
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

/// The connections of one source address.
#[derive(Debug, Default)]
struct SourceUse {
    /// All of them.
    open: usize,
    /// Those that have not registered yet.
    unregistered: usize,
}

/// Why a connection was closed before its TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceLimit {
    /// Its address has `max_unregistered_per_ip` unregistered connections.
    Unregistered,
    /// The relay is nearly full and its address holds as many connections
    /// as one key may (`max_connections_per_key`) or more.
    Reserve,
}

/// What a connection's source address is counted as: an IPv4 address, or
/// the /64 prefix of an IPv6 address (one host usually has a whole /64).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// An open connection, counted against the relay's slots and its source
/// address (as unregistered until [`Arrival::registered`]) until it is
/// dropped.
pub(crate) struct Arrival {
    shared: Arc<Shared>,
    source: IpAddr,
    registered: bool,
}

impl Arrival {
    /// The connection registered: it no longer counts as unregistered.
    pub(crate) fn registered(&mut self) {
        if !self.registered {
            self.registered = true;
            if let Some(used) = self.shared.sources().get_mut(&self.source) {
                used.unregistered = used.unregistered.saturating_sub(1);
            }
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        let mut sources = self.shared.sources();
        if let Some(used) = sources.get_mut(&self.source) {
            used.open = used.open.saturating_sub(1);
            if !self.registered {
                used.unregistered = used.unregistered.saturating_sub(1);
            }
            if used.open == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

/// A connection's memory of its last direct recipient: the registry
/// generation it was looked up in, the recipient's name as registered and
/// its connection.
///
/// It holds the recipient's queue open, which must not outlive the batch
/// of frames it serves: a connection that ends closes once everyone has
/// let go of its queue. So it is forgotten at the end of every batch and
/// before anything that waits.
#[derive(Debug, Default)]
pub(crate) struct PeerCache {
    last: Option<(u64, Arc<UserName>, Peer)>,
}

impl PeerCache {
    /// Lets go of the cached connection.
    pub(crate) fn forget(&mut self) {
        self.last = None;
    }
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

    fn sources(&self) -> MutexGuard<'_, HashMap<IpAddr, SourceUse>> {
        self.sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts an accepted connection from `ip`, unless its source address
    /// has `max_unregistered_per_ip` unregistered connections already, or
    /// the relay is nearly full and the address holds as many connections
    /// as one key may: then the connection is to be closed at once.
    pub(crate) fn arrive(self: &Arc<Self>, ip: IpAddr) -> Result<Arrival, SourceLimit> {
        let source = source(ip);
        let mut sources = self.sources();
        let used = sources.entry(source).or_default();
        let refused = if used.unregistered >= self.config.max_unregistered_per_ip {
            Some(SourceLimit::Unregistered)
        } else if used.open >= self.config.max_connections_per_key && self.nearly_full(1) {
            Some(SourceLimit::Reserve)
        } else {
            None
        };
        if let Some(limit) = refused {
            if used.open == 0 {
                sources.remove(&source);
            }
            return Err(limit);
        }
        used.open += 1;
        used.unregistered += 1;
        drop(sources);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Arrival {
            shared: Arc::clone(self),
            source,
            registered: false,
        })
    }

    /// Whether fewer than [`Config::reserve`] slots are free, counting
    /// `coming` connections not yet counted as open.
    fn nearly_full(&self, coming: usize) -> bool {
        let open = self.open.load(Ordering::Relaxed) + coming;
        self.config.max_connections.saturating_sub(open) < self.config.reserve()
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

    /// Whether the key with `fingerprint` may register `name` on one more
    /// connection: [`Shared::register`] checks the same, this only spares
    /// claiming a name for a connection that would be refused.
    pub(crate) fn may_register(
        &self,
        fingerprint: &[u8; 32],
        name: &UserName,
    ) -> Result<(), KeyLimit> {
        let registry = self.registry();
        self.key_limit(&registry, fingerprint, &name.key())
    }

    /// The limit that keeps `fingerprint` from one more connection for
    /// `user`, if any. A new login of a name replaces that
    /// name's connection, so it does not count as one more.
    fn key_limit(
        &self,
        registry: &Registry,
        fingerprint: &[u8; 32],
        user: &UserKey,
    ) -> Result<(), KeyLimit> {
        let replaced = registry
            .users
            .get(user)
            .is_some_and(|o| o.fingerprint == *fingerprint);
        let held = registry
            .keys
            .get(fingerprint)
            .map_or(0, |k| k.connections)
            .saturating_sub(usize::from(replaced));
        if held >= self.config.max_connections_per_key {
            return Err(KeyLimit::Connections);
        }
        if held > 0 && self.nearly_full(0) {
            return Err(KeyLimit::Reserve);
        }
        Ok(())
    }

    /// Makes `conn` the connection of `name`, of the key with
    /// `fingerprint`, unless a limit on that key refuses it. A previous
    /// connection of the same user is disconnected and leaves its rooms.
    pub(crate) fn register(
        &self,
        conn: u64,
        name: UserName,
        identity: Bytes,
        fingerprint: [u8; 32],
        peer: Peer,
    ) -> Result<(), KeyLimit> {
        let mut registry = self.registry();
        let user = name.key();
        self.key_limit(&registry, &fingerprint, &user)?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = registry.users.remove(&user) {
            old.peer.kill.cancel();
            self.disconnected(&mut registry, &user, old);
        } else {
            Metrics::inc(&self.metrics.users_online);
        }
        let burst = self.config.fanout_burst_bytes as f64;
        // Keys that left with a spent budget stay until it has refilled:
        // forget those that have, now and then.
        if registry.keys.len() > 2 * registry.users.len() + 64 {
            let now = Instant::now();
            registry.keys.retain(|_, held| {
                held.refill(&self.config, now);
                held.connections > 0 || held.fanout < burst
            });
        }
        registry
            .keys
            .entry(fingerprint)
            .or_insert_with(|| KeyUse {
                connections: 0,
                fanout: burst,
                last: Instant::now(),
            })
            .connections += 1;
        registry.users.insert(
            user,
            Online {
                name: Arc::new(name),
                identity,
                fingerprint,
                conn,
                peer,
                rooms: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// Forgets `conn` if it is still the connection of `name`; its rooms
    /// hear that it disconnected.
    pub(crate) fn unregister(&self, conn: u64, name: &UserName) {
        let mut registry = self.registry();
        let user = name.key();
        if registry.users.get(&user).is_some_and(|o| o.conn == conn)
            && let Some(old) = registry.users.remove(&user)
        {
            self.generation.fetch_add(1, Ordering::AcqRel);
            Metrics::dec(&self.metrics.users_online);
            self.disconnected(&mut registry, &user, old);
        }
    }

    /// Takes a connection that is gone (`old`, of `user`) out of its
    /// rooms, whose members hear that it disconnected.
    fn disconnected(&self, registry: &mut Registry, user: &UserKey, old: Online) {
        if let Some(held) = registry.keys.get_mut(&old.fingerprint) {
            held.connections = held.connections.saturating_sub(1);
            held.refill(&self.config, Instant::now());
            // Kept while its budget refills, so that logging in again does
            // not refill it.
            if held.connections == 0 && held.fanout >= self.config.fanout_burst_bytes as f64 {
                registry.keys.remove(&old.fingerprint);
            }
        }
        for room in old.rooms {
            self.remove_member(
                registry,
                &room,
                user,
                &old.name,
                PresenceEvent::Disconnected,
            );
        }
    }

    /// Takes `user` (shown as `name`) out of `room` and tells the
    /// remaining members.
    fn remove_member(
        &self,
        registry: &mut Registry,
        room: &RoomName,
        user: &UserKey,
        name: &UserName,
        event: PresenceEvent,
    ) {
        if let Some(members) = registry.rooms.get_mut(room) {
            members.remove(user);
            if members.is_empty() {
                registry.rooms.remove(room);
            }
        }
        self.broadcast(
            registry,
            room,
            None,
            &RelayFrame::Presence {
                room: room.clone(),
                user: name.clone(),
                event,
                identity: None,
            },
        );
    }

    /// Sends `frame` to every member of `room` except `except`.
    fn broadcast(
        &self,
        registry: &Registry,
        room: &RoomName,
        except: Option<&UserKey>,
        frame: &RelayFrame,
    ) {
        let Some(members) = registry.rooms.get(room) else {
            return;
        };
        let Some(bytes) = encode(frame) else { return };
        for (_, peer) in members.iter().filter(|(m, _)| Some(*m) != except) {
            peer.push(bytes.clone(), &self.metrics);
        }
    }

    /// Adds `name` to `room` and returns the members (with their
    /// identities, as hints); the others are told.
    pub(crate) fn join(&self, name: &UserName, room: &RoomName) -> Result<Vec<Member>, ErrorCode> {
        let mut registry = self.registry();
        let user = name.key();
        let (identity, display, peer) = {
            let online = registry
                .users
                .get_mut(&user)
                .ok_or(ErrorCode::NotRegistered)?;
            if !online.rooms.contains(room) && online.rooms.len() >= self.config.max_rooms_per_user
            {
                return Err(ErrorCode::TooLarge);
            }
            let fresh = online.rooms.insert(room.clone());
            (
                fresh.then(|| online.identity.clone()),
                UserName::clone(&online.name),
                online.peer.clone(),
            )
        };
        registry
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(user.clone(), peer);
        if let Some(identity) = identity {
            self.broadcast(
                &registry,
                room,
                Some(&user),
                &RelayFrame::Presence {
                    room: room.clone(),
                    user: display,
                    event: PresenceEvent::Joined,
                    identity: Some(identity),
                },
            );
        }
        let members = registry
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|(m, _)| registry.users.get(m))
            .map(|o| Member {
                name: UserName::clone(&o.name),
                identity: o.identity.clone(),
            })
            .collect();
        Ok(members)
    }

    /// Takes `name` out of `room`; the others are told.
    pub(crate) fn leave(&self, name: &UserName, room: &RoomName) -> Result<(), ErrorCode> {
        let mut registry = self.registry();
        let user = name.key();
        let online = registry
            .users
            .get_mut(&user)
            .ok_or(ErrorCode::NotRegistered)?;
        if !online.rooms.remove(room) {
            return Err(ErrorCode::NotMember);
        }
        let display = UserName::clone(&online.name);
        self.remove_member(&mut registry, room, &user, &display, PresenceEvent::Left);
        Ok(())
    }

    /// Fans a room message out to every other member, each with only its own
    /// slot (members without one get the body alone). The frame without a
    /// slot is assembled once and shared by every member that has none.
    ///
    /// The message costs its sender's key its body's size times the other
    /// members, plus its slots: `TooLarge` if that is more than the whole
    /// budget (`fanout_burst_bytes`), `RateLimited` if more than is left of
    /// it; nobody gets the message then.
    pub(crate) fn route_room(
        &self,
        from: &Registered,
        room: &RoomName,
        body: &Bytes,
        slots: &[Slot],
    ) -> Result<usize, ErrorCode> {
        let mut registry = self.registry();
        let Registry {
            users, rooms, keys, ..
        } = &mut *registry;
        let sender = &from.key;
        let members = rooms.get(room).ok_or(ErrorCode::NotMember)?;
        if !members.contains_key(sender) {
            return Err(ErrorCode::NotMember);
        }
        let fingerprint = users
            .get(sender)
            .map(|o| o.fingerprint)
            .ok_or(ErrorCode::NotRegistered)?;
        let recipients = members.len().saturating_sub(1) as u64;
        let cost = (body.len() as u64)
            .saturating_mul(recipients)
            .saturating_add(slots.iter().map(|s| s.data.len() as u64).sum::<u64>());
        if let Some(budget) = keys.get_mut(&fingerprint) {
            if cost > self.config.fanout_burst_bytes {
                Metrics::inc(&self.metrics.fanout_refused);
                return Err(ErrorCode::TooLarge);
            }
            budget.refill(&self.config, Instant::now());
            if cost as f64 > budget.fanout {
                Metrics::inc(&self.metrics.fanout_refused);
                return Err(ErrorCode::RateLimited);
            }
            budget.fanout -= cost as f64;
        }
        let mut own: HashMap<UserKey, &Bytes> = HashMap::with_capacity(slots.len());
        // The first slot for a recipient counts, as for direct messages.
        for slot in slots {
            own.entry(slot.to.key()).or_insert(&slot.data);
        }
        let (from, to) = (&from.name, To::Room(room));
        let mut shared: Option<Option<Outbound>> = None;
        let mut delivered = 0;
        for (member, peer) in members.iter().filter(|(m, _)| *m != sender) {
            let frame = match own.get(member) {
                Some(slot) => deliver_shared(0, from, to, body, Some(slot)),
                None => shared
                    .get_or_insert_with(|| deliver_shared(0, from, to, body, None))
                    .clone(),
            };
            if let Some(bytes) = frame
                && peer.push(bytes, &self.metrics)
            {
                delivered += 1;
            }
        }
        Ok(delivered)
    }

    /// Hands an encoded delivery to `to` if connected. `cache` remembers
    /// the last recipient's connection, so that a batch of messages to the
    /// same user takes the registry's lock once, not once per message: it
    /// is used only while no one has logged in or out since it was filled
    /// (the registry's generation is unchanged), which makes it exactly
    /// what the lookup would find.
    pub(crate) fn route_direct(
        &self,
        cache: &mut PeerCache,
        to: &UserName,
        frame: Bytes,
    ) -> Direct {
        let generation = self.generation.load(Ordering::Acquire);
        let cached = cache
            .last
            .as_ref()
            .filter(|(g, name, _)| *g == generation && to.same_as(name))
            .map(|(_, _, peer)| peer);
        let delivered = match cached {
            Some(peer) => peer.push(frame, &self.metrics),
            None => {
                let registry = self.registry();
                let generation = self.generation.load(Ordering::Acquire);
                cache.last = registry
                    .users
                    .get(&to.key())
                    .map(|online| (generation, Arc::clone(&online.name), online.peer.clone()));
                match &cache.last {
                    Some((_, _, peer)) => peer.push(frame, &self.metrics),
                    None => false,
                }
            }
        };
        if delivered {
            Direct::Delivered
        } else {
            Direct::Offline
        }
    }

    /// The peer of `name`, if connected.
    pub(crate) fn peer(&self, name: &UserName) -> Option<Peer> {
        self.registry()
            .users
            .get(&name.key())
            .map(|o| o.peer.clone())
    }

    /// Connected users and their rooms, by name.
    pub(crate) fn users(&self) -> Vec<UserInfo> {
        let registry = self.registry();
        let mut users: Vec<UserInfo> = registry
            .users
            .values()
            .map(|o| UserInfo {
                name: UserName::clone(&o.name),
                rooms: o.rooms.iter().cloned().collect(),
            })
            .collect();
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }

    /// Rooms with their member counts, by name.
    pub(crate) fn rooms(&self) -> Vec<RoomInfo> {
        self.registry()
            .rooms
            .iter()
            .map(|(name, members)| RoomInfo {
                name: name.clone(),
                members: u32::try_from(members.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use sotto_proto::{Destination, MAX_FRAME_LEN};
    use tokio::sync::mpsc::error::TryRecvError;

    use super::*;

    fn user(name: &str) -> UserName {
        UserName::try_from(name).unwrap()
    }

    /// The hand-assembled frames are byte for byte what the codec makes,
    /// across every varint length boundary that matters.
    #[test]
    fn assembled_deliver_frames_equal_encode_frame() {
        let from = user("Alice.w");
        let bob = user("bob");
        let room = RoomName::try_from("lobby").unwrap();
        let long_name = user(&"n".repeat(32));
        for delivery in [0, 1, 127, 128, 300, u64::MAX] {
            for len in [0, 1, 127, 128, 16_383, 16_384, 70_000] {
                let body = Bytes::from(vec![0xb7; len]);
                for slot in [None, Some(Bytes::new()), Some(Bytes::from(vec![3; 384]))] {
                    for (to, borrowed) in [
                        (Destination::User(bob.clone()), To::User(&bob)),
                        (Destination::Room(room.clone()), To::Room(&room)),
                        (Destination::User(long_name.clone()), To::User(&long_name)),
                    ] {
                        let frame = RelayFrame::Deliver {
                            delivery,
                            from: from.clone(),
                            to,
                            body: body.clone(),
                            slot: slot.clone(),
                        };
                        let assembled =
                            deliver(delivery, &from, borrowed, &body, slot.as_deref()).unwrap();
                        assert_eq!(
                            assembled,
                            encode_frame(&frame).unwrap(),
                            "{delivery} {len} {slot:?}"
                        );
                        let shared =
                            deliver_shared(delivery, &from, borrowed, &body, slot.as_deref())
                                .unwrap();
                        assert_eq!(shared.to_bytes(), assembled, "{delivery} {len} {slot:?}");
                        assert_eq!(
                            matches!(shared, Outbound::Parts(_)),
                            len >= SHARED_BODY,
                            "{len}"
                        );
                    }
                }
            }
        }
    }

    /// The recipients of a large room message share its body: it is in
    /// the relay's memory once, not once per member.
    #[test]
    fn a_large_body_is_shared_by_every_recipient() {
        let from = user("alice");
        let room = RoomName::try_from("lobby").unwrap();
        let body = Bytes::from(vec![7; 100_000]);
        let frames: Vec<Outbound> = [Some([1u8; 80].as_slice()), Some(&[2; 80]), None]
            .into_iter()
            .map(|slot| deliver_shared(0, &from, To::Room(&room), &body, slot).unwrap())
            .collect();
        for frame in &frames {
            let Outbound::Parts(parts) = frame else {
                panic!("expected the body to be shared");
            };
            assert_eq!(parts[1].as_ptr(), body.as_ptr());
            assert_eq!(frame.len(), frame.to_bytes().len());
        }
    }

    #[test]
    fn oversized_deliver_frames_are_refused_like_encode() {
        let body = vec![0; MAX_FRAME_LEN];
        let bob = user("bob");
        assert!(deliver(0, &bob, To::User(&bob), &body, None).is_none());
        let frame = RelayFrame::Deliver {
            delivery: 0,
            from: bob.clone(),
            to: Destination::User(bob.clone()),
            body: Bytes::from(body),
            slot: None,
        };
        assert!(encode(&frame).is_none());
    }

    #[test]
    fn assembled_sent_frames_equal_encode_frame() {
        // Thousands of frames: several blocks, each frame its own bytes.
        let ids: Vec<u64> = (0..5000).chain([1 << 35, u64::MAX]).collect();
        let frames: Vec<Bytes> = ids.iter().map(|&id| sent(id)).collect();
        for (id, frame) in ids.into_iter().zip(frames) {
            assert_eq!(
                frame,
                encode_frame(&RelayFrame::Sent { id }).unwrap(),
                "{id}"
            );
        }
    }

    fn shared(dir: &std::path::Path) -> Shared {
        let store = Store::open(
            dir,
            crate::store::QueueLimits {
                max_messages: 10,
                max_bytes: 1 << 20,
                max_age: std::time::Duration::from_secs(60),
            },
        )
        .unwrap();
        let certs = CertStore::load(crate::tls::CertSource::Generated {
            dir: dir.to_path_buf(),
            hosts: vec!["localhost".into()],
        })
        .unwrap();
        Shared::new(
            Config::default(),
            Arc::new(store),
            certs,
            Arc::new(Metrics::default()),
        )
    }

    fn peer() -> (Peer, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(8);
        let kill = CancellationToken::new();
        let backlog = Arc::new(Backlog::new(1 << 20, Arc::new(Metrics::default())));
        (Peer { tx, kill, backlog }, rx)
    }

    /// A cached recipient is used only while it is still the registered
    /// one: a new login or a logout sends the next message where a lookup
    /// would.
    #[test]
    fn the_peer_cache_follows_logins_and_logouts() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let mut cache = PeerCache::default();
        let frame = |text: &'static str| Bytes::from_static(text.as_bytes());

        assert!(matches!(
            shared.route_direct(&mut cache, &user("bob"), frame("nobody")),
            Direct::Offline
        ));
        let (first, mut first_rx) = peer();
        shared
            .register(1, user("bob"), Bytes::new(), [1; 32], first)
            .unwrap();
        for text in ["one", "two"] {
            assert!(matches!(
                shared.route_direct(&mut cache, &user("Bob"), frame(text)),
                Direct::Delivered
            ));
            assert_eq!(first_rx.try_recv().unwrap().to_bytes(), frame(text));
        }

        let (second, mut second_rx) = peer();
        shared
            .register(2, user("bob"), Bytes::new(), [1; 32], second)
            .unwrap();
        assert!(matches!(
            shared.route_direct(&mut cache, &user("bob"), frame("three")),
            Direct::Delivered
        ));
        assert_eq!(second_rx.try_recv().unwrap().to_bytes(), frame("three"));
        assert!(
            first_rx.try_recv().is_err(),
            "the replaced login gets nothing"
        );

        // Once bob is gone and the cache forgotten, nothing holds his
        // queue open: his connection can close.
        shared.unregister(2, &user("bob"));
        assert!(matches!(second_rx.try_recv(), Err(TryRecvError::Empty)));
        cache.forget();
        assert!(matches!(
            second_rx.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
        assert!(matches!(
            shared.route_direct(&mut cache, &user("bob"), frame("four")),
            Direct::Offline
        ));
    }

    /// Unregistered connections are counted per IPv4 address and per IPv6
    /// /64 (an IPv4-mapped address is its IPv4 address).
    #[test]
    fn sources_are_addresses_and_ipv6_prefixes() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source(ip("2001:db8:1:2:bbbb::9")),
            source(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(source(ip("2001:db8:1:3::1")), source(ip("2001:db8:1:2::1")));
    }

    /// The registry knows a user by its name's key: every spelling of the
    /// name finds the one connection, in rooms, slots and lookups, and
    /// everyone sees the name as registered.
    #[test]
    fn every_spelling_of_a_name_is_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let room = RoomName::try_from("lobby").unwrap();
        let (bob, mut bob_rx) = peer();
        shared
            .register(1, user("Bob"), Bytes::new(), [1; 32], bob)
            .unwrap();
        let (alice, mut alice_rx) = peer();
        shared
            .register(2, user("alice"), Bytes::from_static(b"a"), [2; 32], alice)
            .unwrap();
        assert!(shared.join(&user("BOB"), &room).unwrap().len() == 1);
        let members = shared.join(&user("ALICE"), &room).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["alice", "Bob"]);
        let joined = encode_frame(&RelayFrame::Presence {
            room: room.clone(),
            user: user("alice"),
            event: PresenceEvent::Joined,
            identity: Some(Bytes::from_static(b"a")),
        })
        .unwrap();
        assert_eq!(bob_rx.try_recv().unwrap().to_bytes(), joined);

        let body = Bytes::from_static(b"hi");
        let slot = Slot {
            to: user("bOB"),
            data: Bytes::from_static(b"slot"),
        };
        let sender = Registered::new(user("aLiCe"));
        assert_eq!(
            shared
                .route_room(&sender, &room, &body, std::slice::from_ref(&slot))
                .unwrap(),
            1
        );
        let delivered = encode_frame(&RelayFrame::Deliver {
            delivery: 0,
            from: user("aLiCe"),
            to: Destination::Room(room.clone()),
            body,
            slot: Some(slot.data),
        })
        .unwrap();
        assert_eq!(bob_rx.try_recv().unwrap().to_bytes(), delivered);
        assert!(
            matches!(alice_rx.try_recv(), Err(TryRecvError::Empty)),
            "the sender gets no copy"
        );

        assert!(shared.peer(&user("bOb")).is_some());
        assert!(
            shared.may_register(&[3; 32], &user("BOB")).is_ok(),
            "another key's login would replace no connection of its own"
        );
        shared.unregister(1, &user("bob"));
        assert!(shared.peer(&user("Bob")).is_none());
        let names: Vec<String> = shared
            .users()
            .into_iter()
            .map(|u| u.name.as_str().to_owned())
            .collect();
        assert_eq!(names, ["alice"]);
    }
}
