//! Routing: who a room message is for (every other member, online or not,
//! each with its own slot), within its sender's fan-out budget. What is
//! routed is then stored by the committer, and delivered from the store.

use std::collections::HashMap;

use bytes::Bytes;
use sotto_proto::{ErrorCode, RoomName, Slot, UserKey};
use tokio::time::Instant;

use super::{Registered, Registry, Shared};
use crate::metrics::Metrics;
use crate::store::Recipient;

impl Shared {
    /// The recipients of a room message: every other member, online or
    /// not, each with only its own slot (the first one naming it) or none.
    ///
    /// The message costs its sender's key its body's size times the other
    /// members, plus its slots: `TooLarge` if that is more than the whole
    /// budget (`fanout_burst_bytes`), `RateLimited` if more than is left of
    /// it; nobody gets the message then.
    pub(crate) fn room_recipients(
        &self,
        from: &Registered,
        room: &RoomName,
        body: &Bytes,
        slots: &[Slot],
    ) -> Result<Vec<Recipient>, ErrorCode> {
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
        Ok(members
            .iter()
            .filter(|(m, _)| *m != sender)
            .map(|(member, m)| Recipient {
                name: m.name.clone(),
                slot: own.get(member).map(|slot| Bytes::clone(slot)),
                id: 0,
            })
            .collect())
    }
}
