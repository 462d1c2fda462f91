//! Routing: a room message fanned out to the members (within its
//! sender's fan-out budget), a direct message handed to its recipient's
//! connection, through a connection's [`PeerCache`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sotto_proto::{ErrorCode, RoomName, Slot, UserKey, UserName};
use tokio::time::Instant;

use super::{Peer, Registered, Registry, Shared, To, deliver_shared};
use crate::metrics::Metrics;
use crate::writer::Outbound;

/// What a direct delivery came to.
pub(crate) enum Direct {
    /// Handed to the recipient's connection.
    Delivered,
    /// The recipient is not connected (or was just disconnected as too
    /// slow): the message should go to the offline queue.
    Offline,
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

impl Shared {
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
                // Folded before the lock is taken, so as not to hold it
                // for an allocation.
                let user = to.key();
                let registry = self.registry();
                let generation = self.generation.load(Ordering::Acquire);
                cache.last = registry
                    .users
                    .get(&user)
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
}
