//! The prekey directory in memory: each identity's stored prekeys, as the
//! store's `prekeys` table holds them, for the frames that carry them
//! (`Key`, each `Member` of `Joined`, the `Presence` of a join).

use std::collections::HashMap;

use bytes::Bytes;
use sotto_proto::{MAX_FRAME_LEN, Member, RoomName};

use super::{Registry, Shared};
use crate::store::{PrekeyRecord, keep_newest};

/// The most bytes a `Joined` may reach with its members' prekeys: from the
/// first member whose prekeys would take it past this, in list order, no
/// member's prekeys are included (a client asks for them with `LookupKey`).
/// What is left of the frame limit covers the estimate's slack.
pub(crate) const JOINED_PREKEY_ROOM: usize = MAX_FRAME_LEN - 64 * 1024;

/// The prekeys in `directory` of the identity `fingerprint` unexpired at
/// `now`, newest first.
pub(super) fn unexpired(
    directory: &HashMap<[u8; 32], Vec<PrekeyRecord>>,
    fingerprint: &[u8; 32],
    now: u64,
) -> Vec<Bytes> {
    directory
        .get(fingerprint)
        .into_iter()
        .flatten()
        .filter(|r| now < r.expires_at)
        .map(|r| r.prekey.clone())
        .collect()
}

impl Registry {
    /// The prekeys of the identity `fingerprint` unexpired at `now`,
    /// newest first.
    pub(super) fn prekeys_of(&self, fingerprint: &[u8; 32], now: u64) -> Vec<Bytes> {
        unexpired(&self.prekeys, fingerprint, now)
    }

    /// Gives each of `members` (of `room`, whose identities have
    /// `fingerprints`, in the same order) its prekeys, within
    /// [`JOINED_PREKEY_ROOM`].
    pub(super) fn fill_prekeys(
        &self,
        room: &RoomName,
        members: &mut [Member],
        fingerprints: impl Iterator<Item = [u8; 32]>,
        now: u64,
    ) {
        // The frame without prekeys: each member's name and identity, and
        // at most 8 bytes of lengths, flag and count.
        let mut size = 16
            + room.as_str().len()
            + members
                .iter()
                .map(|m| m.name.as_str().len() + m.identity.len() + 8)
                .sum::<usize>();
        for (member, fingerprint) in members.iter_mut().zip(fingerprints) {
            let prekeys = self.prekeys_of(&fingerprint, now);
            let cost: usize = prekeys.iter().map(|p| p.len() + 3).sum();
            if size + cost > JOINED_PREKEY_ROOM {
                break;
            }
            size += cost;
            member.prekeys = prekeys;
        }
    }
}

impl Shared {
    /// The prekeys of the identity `fingerprint` unexpired at `now`,
    /// newest first.
    pub(crate) fn prekeys_of(&self, fingerprint: &[u8; 32], now: u64) -> Vec<Bytes> {
        self.registry().prekeys_of(fingerprint, now)
    }

    /// Merges `kept`, what the store holds for `fingerprint` after a
    /// publication at `now`, into the prekeys in memory. Merged, not
    /// replaced: two publications of one identity (on two connections)
    /// may commit in one order and arrive here in the other, and the
    /// newest [`MAX_PREKEYS`](sotto_crypto::MAX_PREKEYS) of both are what
    /// the store holds.
    pub(crate) fn set_prekeys(&self, fingerprint: [u8; 32], kept: Vec<PrekeyRecord>, now: u64) {
        let mut registry = self.registry();
        let mut all = registry.prekeys.remove(&fingerprint).unwrap_or_default();
        all.extend(kept);
        let merged = keep_newest(all, None, now);
        if !merged.is_empty() {
            registry.prekeys.insert(fingerprint, merged);
        }
    }

    /// Forgets the prekeys expired at `now`.
    pub(crate) fn expire_prekeys(&self, now: u64) {
        let mut registry = self.registry();
        registry.prekeys.retain(|_, records| {
            *records = keep_newest(std::mem::take(records), None, now);
            !records.is_empty()
        });
    }
}
