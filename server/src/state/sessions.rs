//! Who is online: registering a name's connection (replacing an older
//! one), the limits on one identity key, and the listing of users.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sotto_proto::{PresenceEvent, UserInfo, UserKey, UserName};
use tokio::time::Instant;

use super::{KeyUse, Online, Peer, Registry, Shared};
use crate::metrics::Metrics;

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
    /// connection of the same user is disconnected and leaves its rooms.
    pub(crate) fn register(
        &self,
        conn: u64,
        name: UserName,
        identity: Bytes,
        fingerprint: [u8; 32],
        peer: Peer,
    ) -> Result<(), KeyLimit> {
        let user = name.key();
        let mut registry = self.registry();
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
        let user = name.key();
        let mut registry = self.registry();
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

    /// The peer of `name`, if connected.
    pub(crate) fn peer(&self, name: &UserName) -> Option<Peer> {
        let user = name.key();
        self.registry().users.get(&user).map(|o| o.peer.clone())
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
}
