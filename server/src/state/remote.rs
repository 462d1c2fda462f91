//! What the other relays of a cluster share, applied to this relay's
//! registry (`crate::cluster` watches the NATS buckets and calls these):
//! the members they add and remove, and the users connected to them.
//!
//! Each relay tells its own connected members what happens on the others,
//! as it tells them what happens on itself: a member who joins through
//! another relay reaches them as a `Presence` join with its identity and
//! prekeys, a user who connects to another relay as `Connected`, one whose
//! relay stops answering as `Disconnected`.

use bytes::Bytes;
use sotto_proto::{PresenceEvent, RelayFrame, RoomName, UserKey, UserName};

use super::{Registry, RoomMember, Shared, lock};
use crate::metrics::Metrics;

/// A user connected to another relay of the cluster, as the `sotto_online`
/// bucket has it.
pub(crate) struct Remote {
    /// The name as registered.
    pub(crate) name: UserName,
    /// The relay it is connected to.
    pub(crate) relay: String,
    /// The revision of the bucket's entry: of two entries for one user,
    /// the later one says where it is.
    pub(crate) revision: u64,
    /// Whether that relay still answers (its heartbeat is recent).
    pub(crate) alive: bool,
}

impl Registry {
    /// Whether `user` is connected, here or to a relay that answers.
    pub(super) fn is_online(&self, user: &UserKey) -> bool {
        self.users.contains_key(user) || self.remote.get(user).is_some_and(|r| r.alive)
    }
}

impl Shared {
    /// Whether `user` is a member of `room` here.
    pub(crate) fn is_member(&self, room: &RoomName, user: &UserKey) -> bool {
        lock(&self.registry)
            .rooms
            .get(room)
            .is_some_and(|members| members.contains_key(user))
    }

    /// The cluster says `name` is a member of `room`, with `identity`
    /// (`fingerprint`), last connected at `last_seen`. A member new to this
    /// relay is added, and its other connected members hear it joined.
    pub(crate) fn cluster_member(
        &self,
        room: RoomName,
        name: UserName,
        identity: Bytes,
        fingerprint: [u8; 32],
        last_seen: u64,
    ) {
        let user = name.key();
        let mut registry = self.registry();
        if let Some(member) = registry
            .rooms
            .get_mut(&room)
            .and_then(|members| members.get_mut(&user))
        {
            member.last_seen = member.last_seen.max(last_seen);
            return;
        }
        let peer = registry.users.get(&user).map(|online| online.peer.clone());
        registry
            .memberships
            .entry(user.clone())
            .or_default()
            .insert(room.clone());
        registry.rooms.entry(room.clone()).or_default().insert(
            user.clone(),
            RoomMember {
                name: name.clone(),
                identity: identity.clone(),
                fingerprint,
                peer,
                last_seen,
            },
        );
        let prekeys = registry.prekeys_of(&fingerprint, crate::store::now_secs());
        self.broadcast(
            &registry,
            &room,
            Some(&user),
            &RelayFrame::Presence {
                room: room.clone(),
                user: name,
                event: PresenceEvent::Joined,
                identity: Some(identity),
                prekeys,
            },
        );
    }

    /// The cluster says `user` is no longer a member of `room`; its other
    /// connected members hear it left.
    pub(crate) fn cluster_member_left(&self, room: &RoomName, user: &UserKey) {
        let mut registry = self.registry();
        let left = registry
            .memberships
            .get_mut(user)
            .is_some_and(|rooms| rooms.remove(room));
        if !left {
            return;
        }
        if registry.memberships.get(user).is_some_and(|r| r.is_empty()) {
            registry.memberships.remove(user);
        }
        if let Some(name) = super::rooms::remove_member(&mut registry, room, user) {
            self.presence(&registry, room, user, &name, PresenceEvent::Left);
        }
    }

    /// The cluster says `name` is connected to `relay` (not this one), as
    /// of the bucket's `revision`. A connection of the same user here that
    /// registered before (a lower revision) is replaced: disconnected, as
    /// a second registration on one relay replaces the first. Its rooms
    /// hear it connected.
    pub(crate) fn cluster_online(&self, name: UserName, relay: String, revision: u64) {
        let user = name.key();
        let mut registry = self.registry();
        if let Some(known) = registry.remote.get(&user)
            && known.revision >= revision
        {
            return;
        }
        let was_online = registry.is_online(&user);
        let replaced = match registry.users.get(&user).map(|online| online.revision) {
            // Registered here after: this connection stays.
            Some(Some(ours)) if ours > revision => return,
            // Registered here, its entry not written yet: which came
            // first is decided once it is ([`Shared::cluster_registered`]).
            Some(None) => {
                registry.remote.insert(
                    user,
                    Remote {
                        name,
                        relay,
                        revision,
                        alive: true,
                    },
                );
                return;
            }
            Some(_) => registry.users.remove(&user),
            None => None,
        };
        let moved = replaced.is_some();
        if let Some(old) = replaced {
            old.peer.kill.cancel();
            Metrics::dec(&self.metrics.users_online);
            self.disconnected(&mut registry, &user, &old);
        }
        registry.remote.insert(
            user.clone(),
            Remote {
                name: name.clone(),
                relay,
                revision,
                alive: true,
            },
        );
        if !was_online || moved {
            self.tell_rooms(&registry, &user, &name, PresenceEvent::Connected);
        }
    }

    /// This relay's own entry for `user`'s connection `conn` has
    /// `revision`: if the cluster has a later entry for the user (it
    /// registered on another relay meanwhile), this connection is replaced.
    pub(crate) fn cluster_registered(&self, user: &UserKey, conn: u64, revision: u64) {
        let mut registry = self.registry();
        let Some(online) = registry.users.get_mut(user) else {
            return;
        };
        if online.conn != conn {
            return;
        }
        online.revision = Some(revision);
        let later = registry
            .remote
            .get(user)
            .is_some_and(|remote| remote.revision > revision);
        if !later {
            // An entry from before this registration: stale now.
            registry.remote.remove(user);
        } else if let Some(old) = registry.users.remove(user) {
            old.peer.kill.cancel();
            Metrics::dec(&self.metrics.users_online);
            self.disconnected(&mut registry, user, &old);
            if let Some(remote) = registry.remote.get(user) {
                let name = remote.name.clone();
                self.tell_rooms(&registry, user, &name, PresenceEvent::Connected);
            }
        }
    }

    /// The cluster's entry for `user` was deleted (its relay saw it
    /// disconnect): if it was connected elsewhere, its rooms hear it
    /// went offline.
    pub(crate) fn cluster_offline(&self, user: &UserKey) {
        let mut registry = self.registry();
        let Some(remote) = registry.remote.remove(user) else {
            return;
        };
        if remote.alive && !registry.users.contains_key(user) {
            self.tell_rooms(&registry, user, &remote.name, PresenceEvent::Disconnected);
        }
    }

    /// Relay `relay` stopped answering (`alive` false) or answers again:
    /// its users' rooms hear them go offline or come back.
    pub(crate) fn cluster_relay(&self, relay: &str, alive: bool) {
        let mut registry = self.registry();
        let changed: Vec<(UserKey, UserName)> = registry
            .remote
            .iter_mut()
            .filter(|(_, remote)| remote.relay == relay && remote.alive != alive)
            .map(|(user, remote)| {
                remote.alive = alive;
                (user.clone(), remote.name.clone())
            })
            .collect();
        let event = if alive {
            PresenceEvent::Connected
        } else {
            PresenceEvent::Disconnected
        };
        for (user, name) in changed {
            if !registry.users.contains_key(&user) {
                self.tell_rooms(&registry, &user, &name, event);
            }
        }
    }

    /// The users connected to `relay`, with their entries' revisions (for
    /// deleting the entries of a relay that died).
    pub(crate) fn cluster_users_of(&self, relay: &str) -> Vec<(UserKey, u64)> {
        lock(&self.registry)
            .remote
            .iter()
            .filter(|(_, remote)| remote.relay == relay)
            .map(|(user, remote)| (user.clone(), remote.revision))
            .collect()
    }

    /// Tells the connected members of each of `user`'s rooms that it did
    /// `event`, and keeps its `last_seen` when it goes.
    fn tell_rooms(
        &self,
        registry: &Registry,
        user: &UserKey,
        name: &UserName,
        event: PresenceEvent,
    ) {
        if let Some(rooms) = registry.memberships.get(user) {
            for room in rooms {
                self.presence(registry, room, user, name, event);
            }
        }
    }
}
