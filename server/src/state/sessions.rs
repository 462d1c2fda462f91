//! Who is online: registering a name's connection (replacing an older
//! one), the limits on one identity key, and the listing of users.

use std::sync::Arc;

use bytes::Bytes;
use sotto_proto::{Member, PresenceEvent, RoomName, UserInfo, UserKey, UserName};
use tokio::time::Instant;

use super::rooms::members_of;
use super::{KeyUse, Online, Peer, PumpDoor, Registry, Shared};
use crate::metrics::Metrics;
use crate::store::now_secs;

/// What a registration brings: the rooms the user is a member of, each
/// with its members (for the `Joined` frames that follow `Registered`),
/// and what wakes the connection's delivery pump.
pub(crate) struct Welcome {
    pub(crate) rooms: Vec<(RoomName, Vec<Member>)>,
    pub(crate) wake: Arc<PumpDoor>,
}

/// Why a registration was refused by a limit on its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyLimit {
    /// The key has `max_connections_per_key` connections already.
    Connections,
    /// The relay is nearly full and the key has a connection already.
    Reserve,
}

impl Shared {
    /// Whether the key with `fingerprint` may register `name` on one more
    /// connection: [`Shared::register`] checks the same, this only spares
    /// claiming a name for a connection that would be refused.
    pub(crate) fn may_register(
        &self,
        fingerprint: &[u8; 32],
        name: &UserName,
    ) -> Result<(), KeyLimit> {
        let user = name.key();
        let registry = self.registry();
        self.key_limit(&registry, fingerprint, &user)
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
    /// connection of the same user is disconnected. The user's rooms hear
    /// that it is back.
    pub(crate) fn register(
        &self,
        conn: u64,
        name: UserName,
        identity: Bytes,
        fingerprint: [u8; 32],
        peer: Peer,
    ) -> Result<Welcome, KeyLimit> {
        let user = name.key();
        let mut registry = self.registry();
        self.key_limit(&registry, &fingerprint, &user)?;
        if let Some(old) = registry.users.remove(&user) {
            old.peer.kill.cancel();
            self.disconnected(&mut registry, &user, &old);
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
        let reserved = self
            .backend
            .local()
            .map_or(0, |store| store.last_reserved());
        let wake = Arc::new(PumpDoor::new(reserved));
        registry.users.insert(
            user.clone(),
            Online {
                name: name.clone(),
                identity: identity.clone(),
                fingerprint,
                conn,
                peer: peer.clone(),
                wake: Arc::clone(&wake),
                revision: None,
            },
        );
        let rooms: Vec<RoomName> = registry
            .memberships
            .get(&user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default();
        for room in &rooms {
            if let Some(member) = registry
                .rooms
                .get_mut(room)
                .and_then(|members| members.get_mut(&user))
            {
                member.peer = Some(peer.clone());
                member.name = name.clone();
                member.identity = identity.clone();
                member.fingerprint = fingerprint;
                member.last_seen = now_secs();
            }
            self.presence(&registry, room, &user, &name, PresenceEvent::Connected);
        }
        let rooms = rooms
            .into_iter()
            .map(|room| {
                let members = members_of(&registry, &room);
                (room, members)
            })
            .collect();
        Ok(Welcome { rooms, wake })
    }

    /// Forgets `conn` if it is still the connection of `name`; its rooms
    /// hear that it went offline. Returns its rooms, whose absence now
    /// counts (for the store), if it was.
    pub(crate) fn unregister(&self, conn: u64, name: &UserName) -> Option<Vec<RoomName>> {
        let user = name.key();
        let mut registry = self.registry();
        if registry.users.get(&user).is_some_and(|o| o.conn == conn)
            && let Some(old) = registry.users.remove(&user)
        {
            Metrics::dec(&self.metrics.users_online);
            return Some(self.disconnected(&mut registry, &user, &old));
        }
        None
    }

    /// A connection that is gone (`old`, of `user`): its rooms hear that it
    /// went offline (it stays a member). Returns those rooms.
    pub(super) fn disconnected(
        &self,
        registry: &mut Registry,
        user: &UserKey,
        old: &Online,
    ) -> Vec<RoomName> {
        if let Some(held) = registry.keys.get_mut(&old.fingerprint) {
            held.connections = held.connections.saturating_sub(1);
            held.refill(&self.config, Instant::now());
            // Kept while its budget refills, so that logging in again does
            // not refill it.
            if held.connections == 0 && held.fanout >= self.config.fanout_burst_bytes as f64 {
                registry.keys.remove(&old.fingerprint);
            }
        }
        let rooms: Vec<RoomName> = registry
            .memberships
            .get(user)
            .map(|rooms| rooms.iter().cloned().collect())
            .unwrap_or_default();
        let now = now_secs();
        for room in &rooms {
            if let Some(member) = registry
                .rooms
                .get_mut(room)
                .and_then(|members| members.get_mut(user))
            {
                member.peer = None;
                member.last_seen = now;
            }
            self.presence(registry, room, user, &old.name, PresenceEvent::Disconnected);
        }
        rooms
    }

    /// Connected users and their rooms, by name.
    pub(crate) fn users(&self) -> Vec<UserInfo> {
        let registry = self.registry();
        let mut users: Vec<UserInfo> = registry
            .users
            .iter()
            .map(|(key, o)| UserInfo {
                name: o.name.clone(),
                rooms: registry
                    .memberships
                    .get(key)
                    .map(|rooms| rooms.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .collect();
        users.extend(
            registry
                .remote
                .iter()
                .filter(|(key, remote)| remote.alive && !registry.users.contains_key(*key))
                .map(|(key, remote)| UserInfo {
                    name: remote.name.clone(),
                    rooms: registry
                        .memberships
                        .get(key)
                        .map(|rooms| rooms.iter().cloned().collect())
                        .unwrap_or_default(),
                }),
        );
        users.sort_by(|a, b| a.name.cmp(&b.name));
        users
    }
}
