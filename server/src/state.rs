//! Who is online and in which rooms, and the routing that follows from it.
//!
//! One `std::sync::Mutex` guards the registry. It is never held across an
//! `.await`: every operation here is synchronous and short (map lookups and
//! non-blocking `try_send`s), so an async mutex would only add cost
//! (mini-redis makes the same choice in `db.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sotto_proto::{
    Destination, ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, RoomName, Slot, UserInfo,
    UserName, encode_frame,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tls::CertStore;

/// The outbound side of one connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// Encoded frames for the connection's writer.
    pub(crate) tx: mpsc::Sender<Bytes>,
    /// Cancelled to disconnect the connection (slow reader, replaced).
    pub(crate) kill: CancellationToken,
}

impl Peer {
    /// Queues an encoded frame without waiting. A peer whose queue is full
    /// reads too slowly: it is disconnected (never allowed to stall the
    /// sender or to grow memory), and `false` is returned.
    pub(crate) fn push(&self, frame: Bytes, metrics: &Metrics) -> bool {
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    Metrics::inc(&metrics.slow_consumers);
                    tracing::info!("disconnecting a client that reads too slowly");
                }
                self.kill.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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

struct Online {
    name: UserName,
    identity: Bytes,
    conn: u64,
    peer: Peer,
    rooms: BTreeSet<RoomName>,
}

#[derive(Default)]
struct Registry {
    /// Lower-cased name -> the connection registered under it.
    users: HashMap<String, Online>,
    /// Room -> lower-cased names of its members. Empty rooms are removed.
    rooms: BTreeMap<RoomName, BTreeSet<String>>,
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
    next_conn: AtomicU64,
}

pub(crate) fn key(name: &UserName) -> String {
    name.as_str().to_ascii_lowercase()
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
            next_conn: AtomicU64::new(1),
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

    /// Makes `conn` the connection of `name`. A previous connection of the
    /// same user is disconnected and leaves its rooms.
    pub(crate) fn register(&self, conn: u64, name: UserName, identity: Bytes, peer: Peer) {
        let mut registry = self.registry();
        let user = key(&name);
        if let Some(old) = registry.users.remove(&user) {
            old.peer.kill.cancel();
            self.leave_all(
                &mut registry,
                &user,
                &old.name,
                old.rooms,
                PresenceEvent::Disconnected,
            );
        } else {
            Metrics::inc(&self.metrics.users_online);
        }
        registry.users.insert(
            user,
            Online {
                name,
                identity,
                conn,
                peer,
                rooms: BTreeSet::new(),
            },
        );
    }

    /// Forgets `conn` if it is still the connection of `name`; its rooms
    /// hear that it disconnected.
    pub(crate) fn unregister(&self, conn: u64, name: &UserName) {
        let mut registry = self.registry();
        let user = key(name);
        if registry.users.get(&user).is_some_and(|o| o.conn == conn)
            && let Some(old) = registry.users.remove(&user)
        {
            Metrics::dec(&self.metrics.users_online);
            self.leave_all(
                &mut registry,
                &user,
                &old.name,
                old.rooms,
                PresenceEvent::Disconnected,
            );
        }
    }

    fn leave_all(
        &self,
        registry: &mut Registry,
        user: &str,
        name: &UserName,
        rooms: BTreeSet<RoomName>,
        event: PresenceEvent,
    ) {
        for room in rooms {
            self.remove_member(registry, &room, user, name, event);
        }
    }

    /// Takes `user` (lower-cased key, shown as `name`) out of `room` and
    /// tells the remaining members.
    fn remove_member(
        &self,
        registry: &mut Registry,
        room: &RoomName,
        user: &str,
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
        except: Option<&str>,
        frame: &RelayFrame,
    ) {
        let Some(members) = registry.rooms.get(room) else {
            return;
        };
        let Some(bytes) = encode(frame) else { return };
        for member in members.iter().filter(|m| Some(m.as_str()) != except) {
            if let Some(online) = registry.users.get(member) {
                online.peer.push(bytes.clone(), &self.metrics);
            }
        }
    }

    /// Adds `name` to `room` and returns the members (with their
    /// identities, as hints); the others are told.
    pub(crate) fn join(&self, name: &UserName, room: &RoomName) -> Result<Vec<Member>, ErrorCode> {
        let mut registry = self.registry();
        let user = key(name);
        let (identity, display) = {
            let online = registry
                .users
                .get_mut(&user)
                .ok_or(ErrorCode::NotRegistered)?;
            if !online.rooms.contains(room) && online.rooms.len() >= self.config.max_rooms_per_user
            {
                return Err(ErrorCode::TooLarge);
            }
            let fresh = online.rooms.insert(room.clone());
            (fresh.then(|| online.identity.clone()), online.name.clone())
        };
        registry
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(user.clone());
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
            .filter_map(|m| registry.users.get(m))
            .map(|o| Member {
                name: o.name.clone(),
                identity: o.identity.clone(),
            })
            .collect();
        Ok(members)
    }

    /// Takes `name` out of `room`; the others are told.
    pub(crate) fn leave(&self, name: &UserName, room: &RoomName) -> Result<(), ErrorCode> {
        let mut registry = self.registry();
        let user = key(name);
        let online = registry
            .users
            .get_mut(&user)
            .ok_or(ErrorCode::NotRegistered)?;
        if !online.rooms.remove(room) {
            return Err(ErrorCode::NotMember);
        }
        let display = online.name.clone();
        self.remove_member(&mut registry, room, &user, &display, PresenceEvent::Left);
        Ok(())
    }

    /// Fans a room message out to every other member, each with only its own
    /// slot (members without one get the body alone).
    pub(crate) fn route_room(
        &self,
        from: &UserName,
        room: &RoomName,
        body: &Bytes,
        slots: &[Slot],
    ) -> Result<usize, ErrorCode> {
        let registry = self.registry();
        let sender = key(from);
        let members = registry.rooms.get(room).ok_or(ErrorCode::NotMember)?;
        if !members.contains(&sender) {
            return Err(ErrorCode::NotMember);
        }
        let mut own: HashMap<String, &Bytes> = HashMap::with_capacity(slots.len());
        for slot in slots {
            own.insert(key(&slot.to), &slot.data);
        }
        let to = Destination::Room(room.clone());
        let mut delivered = 0;
        for member in members.iter().filter(|m| **m != sender) {
            let Some(online) = registry.users.get(member) else {
                continue;
            };
            let frame = RelayFrame::Deliver {
                delivery: 0,
                from: from.clone(),
                to: to.clone(),
                body: body.clone(),
                slot: own.get(member).map(|s| (*s).clone()),
            };
            if let Some(bytes) = encode(&frame)
                && online.peer.push(bytes, &self.metrics)
            {
                delivered += 1;
            }
        }
        self.metrics
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        Ok(delivered)
    }

    /// Hands an encoded delivery to `to` if connected.
    pub(crate) fn route_direct(&self, to: &UserName, frame: Bytes) -> Direct {
        let registry = self.registry();
        match registry.users.get(&key(to)) {
            Some(online) if online.peer.push(frame, &self.metrics) => {
                Metrics::inc(&self.metrics.deliveries);
                Direct::Delivered
            }
            _ => Direct::Offline,
        }
    }

    /// The peer of `name`, if connected.
    pub(crate) fn peer(&self, name: &UserName) -> Option<Peer> {
        self.registry()
            .users
            .get(&key(name))
            .map(|o| o.peer.clone())
    }

    /// Connected users and their rooms, by name.
    pub(crate) fn users(&self) -> Vec<UserInfo> {
        let registry = self.registry();
        let mut users: Vec<UserInfo> = registry
            .users
            .values()
            .map(|o| UserInfo {
                name: o.name.clone(),
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
