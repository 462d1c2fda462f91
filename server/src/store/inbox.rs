//! Stored deliveries: every message routed, kept for each recipient until
//! that recipient acknowledges it (or it expires), written in batches.
//!
//! A `Send` is stored once, as a body ([`BODIES`]) that its recipients
//! share; each recipient has an entry in its inbox ([`INBOX`]) with its own
//! slot, under a delivery id from one relay-wide counter. The body is
//! deleted with the last entry that refers to it ([`BODY_REFS`]). Bounds
//! are kept per recipient ([`QUEUE_STATS`]: entries and bytes, a body's
//! size counting once for every recipient) and per room ([`ROOM_STATS`]:
//! bodies and their bytes).
//!
//! Writes come in batches ([`Store::apply`]): one transaction and one
//! commit for everything the committer took from its queue, made durable
//! (fsync) when the batch stores anything.

use std::collections::HashMap;

use bytes::Bytes;
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};
use sotto_proto::{Destination, RoomName, UserKey, UserName};

use super::{
    BODIES, BODY_HASHES, BODY_REFS, INBOX, MEMBERS, MemberRecord, NAMES, QUEUE_STATS, ROOM_STATS,
    Store, StoreError, db_err, decode, encode_err, now_secs,
};

/// A body shared by the recipients of one `Send`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BodyRecord {
    /// The sender as registered.
    pub(super) from: UserName,
    /// Where it was sent.
    pub(super) to: Destination,
    /// The opaque body.
    pub(super) body: Bytes,
}

/// One recipient's entry: which body, when, how much it counts against
/// the recipient's bounds, and the recipient's own slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InboxRecord {
    pub(super) body: u64,
    pub(super) queued_at: u64,
    pub(super) size: u64,
    pub(super) slot: Option<Bytes>,
    /// A delivery with one recipient (a direct message) keeps its body
    /// here, with its resend hash, instead of in [`BODIES`] with a count
    /// in [`BODY_REFS`]: fewer B-tree writes per message
    /// (docs/benchmarks.md, "Direct messages with their body inline").
    pub(super) inline: Option<(BodyRecord, [u8; 16])>,
}

/// A stored delivery as read back. (Also the record of the `queue` table
/// of relays from before every delivery was stored, moved at open.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// When it was stored, seconds since the Unix epoch.
    pub queued_at: u64,
    /// The sender.
    pub from: UserName,
    /// Where it was sent.
    pub to: Destination,
    /// The opaque body.
    pub body: Bytes,
    /// The recipient's opaque slot, if any.
    pub slot: Option<Bytes>,
}

/// What became of [`Store::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueue {
    /// Stored under this id.
    Stored(u64),
    /// The recipient's bounds are reached.
    Full,
    /// A direct message to a name no identity owns.
    NoSuchUser,
}

/// One recipient of a [`NewDelivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The recipient's name (its key is the inbox's).
    pub name: UserName,
    /// Its slot, if the sender included one.
    pub slot: Option<Bytes>,
    /// Its delivery id, from [`Store::reserve_ids`]; 0: [`Store::apply`]
    /// reserves one.
    pub id: u64,
}

/// A `Send` to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDelivery {
    /// When it was sent, seconds since the Unix epoch (its age counts
    /// from then).
    pub queued_at: u64,
    /// The sender as registered.
    pub from: UserName,
    /// The destination as the sender wrote it.
    pub to: Destination,
    /// The opaque body.
    pub body: Bytes,
    /// Who gets it. For a direct message, the one recipient must be a name
    /// some identity owns.
    pub recipients: Vec<Recipient>,
    /// The id its body is stored under when it has several recipients,
    /// from [`Store::reserve_ids`]; 0: [`Store::apply`] reserves one.
    pub body_id: u64,
}

impl NewDelivery {
    /// How many of its ids (its body's, and one per recipient) are not
    /// assigned yet (0 stands for unassigned).
    pub fn unnumbered(&self) -> u64 {
        u64::from(self.body_id == 0) + self.recipients.iter().filter(|r| r.id == 0).count() as u64
    }

    /// Assigns the ids not assigned yet, the body's first and then each
    /// recipient's in order, counting up from `next` (reserved with
    /// [`Store::reserve_ids`]), which it leaves at the first id not used.
    pub fn number(&mut self, next: &mut u64) {
        let mut take = |id: &mut u64| {
            if *id == 0 {
                *id = *next;
                *next += 1;
            }
        };
        take(&mut self.body_id);
        for recipient in &mut self.recipients {
            take(&mut recipient.id);
        }
    }
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Store a delivery for its recipients.
    Deliver(NewDelivery),
    /// `user` acknowledged these deliveries: forget them.
    Ack {
        /// Whose inbox.
        user: UserKey,
        /// The delivery ids.
        ids: Vec<u64>,
    },
    /// `name` is a member of `room` (from now, or still).
    Join {
        /// The room.
        room: RoomName,
        /// The member.
        name: UserName,
    },
    /// `user` is no longer a member of `room`.
    Leave {
        /// The room.
        room: RoomName,
        /// The member.
        user: UserKey,
    },
    /// `user` was last connected at `at` (seconds since the epoch): its
    /// memberships' absence counts from then.
    Seen {
        /// The member.
        user: UserKey,
        /// Its rooms.
        rooms: Vec<RoomName>,
        /// When.
        at: u64,
    },
}

/// What became of a [`Write`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A [`Write::Deliver`]'s.
    Deliver(Stored),
    /// A [`Write::Ack`]'s: how many of its ids were stored (and are now
    /// forgotten).
    Acked(u64),
    /// Done (the other writes).
    Done,
}

/// What became of a [`Write::Deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored for every recipient but `refused`, whose bounds are reached
    /// (`delivered` lists the others with their delivery ids).
    Stored {
        /// Recipient -> its delivery id.
        delivered: Vec<(UserKey, u64)>,
        /// Recipients that will not get it: their deliveries are at a bound.
        refused: Vec<UserName>,
    },
    /// The direct recipient is a name no identity owns.
    NoSuchUser,
    /// The room holds as many undelivered bodies (or bytes) as it may.
    RoomFull,
}

/// One recipient's entries and bytes, and one room's bodies and bytes,
/// as the batch changes them (read once, written back at the end).
#[derive(Default)]
struct Tally {
    users: HashMap<String, (u64, u64)>,
    rooms: HashMap<String, (u64, u64)>,
}

impl Store {
    /// Runs `writes` in one transaction with one commit, durable (fsync)
    /// unless the batch only acknowledges, and returns what became of each.
    /// On an error nothing of the batch happened.
    pub fn apply(&self, writes: &[Write]) -> Result<Vec<Outcome>, StoreError> {
        let durable = writes.iter().any(|w| !matches!(w, Write::Ack { .. }));
        let needed: u64 = writes
            .iter()
            .map(|write| match write {
                Write::Deliver(d) => d.unnumbered(),
                _ => 0,
            })
            .sum();
        let numbered: Vec<Write>;
        let writes = if needed == 0 {
            writes
        } else {
            let mut next = self.reserve_ids(needed)?;
            numbered = writes
                .iter()
                .cloned()
                .map(|mut write| {
                    if let Write::Deliver(d) = &mut write {
                        d.number(&mut next);
                    }
                    write
                })
                .collect();
            numbered.as_slice()
        };
        self.write("apply", |db| {
            let mut txn = db.begin_write().map_err(db_err)?;
            if !durable {
                // An acknowledgement that a crash forgets only means the
                // delivery comes again (clients drop duplicates): made
                // durable by the next batch that stores something.
                txn.set_durability(Durability::None).map_err(db_err)?;
            }
            let outcomes = self.apply_in(&txn, writes)?;
            txn.commit().map_err(db_err)?;
            Ok(outcomes)
        })
    }

    fn apply_in(
        &self,
        txn: &WriteTransaction,
        writes: &[Write],
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut bodies = txn.open_table(BODIES).map_err(db_err)?;
        let mut refs = txn.open_table(BODY_REFS).map_err(db_err)?;
        let mut hashes = txn.open_table(BODY_HASHES).map_err(db_err)?;
        let mut inbox = txn.open_table(INBOX).map_err(db_err)?;
        let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
        let mut room_stats = txn.open_table(ROOM_STATS).map_err(db_err)?;
        let mut members = txn.open_table(MEMBERS).map_err(db_err)?;
        let names = txn.open_table(NAMES).map_err(db_err)?;
        let mut tally = Tally::default();
        let now = now_secs();
        let limits = self.limits;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            let outcome = match write {
                Write::Deliver(delivery) => {
                    if let Destination::User(to) = &delivery.to
                        && names.get(to.key().as_str()).map_err(db_err)?.is_none()
                    {
                        outcomes.push(Outcome::Deliver(Stored::NoSuchUser));
                        continue;
                    }
                    let room = match &delivery.to {
                        Destination::Room(room) => Some(room.as_str()),
                        Destination::User(_) => None,
                    };
                    let body_len = delivery.body.len() as u64;
                    // The same bytes from the same sender, still stored:
                    // a resend of what was stored already.
                    let hash = body_hash(delivery);
                    if hashes.get(hash.as_slice()).map_err(db_err)?.is_some() {
                        outcomes.push(Outcome::Deliver(Stored::Stored {
                            delivered: Vec::new(),
                            refused: Vec::new(),
                        }));
                        continue;
                    }
                    if let Some(room) = room {
                        let (count, bytes) = tally.room(&room_stats, room)?;
                        if !delivery.recipients.is_empty()
                            && (count + 1 > limits.room_max_messages
                                || bytes + body_len > limits.room_max_bytes)
                        {
                            outcomes.push(Outcome::Deliver(Stored::RoomFull));
                            continue;
                        }
                    }
                    let mut delivered = Vec::with_capacity(delivery.recipients.len());
                    let mut refused = Vec::new();
                    let single = delivery.recipients.len() == 1;
                    let body_id = if single { 0 } else { delivery.body_id };
                    for recipient in &delivery.recipients {
                        let key = recipient.name.key();
                        let size = body_len + recipient.slot.as_ref().map_or(0, |s| s.len() as u64);
                        let (count, bytes) = tally.user(&stats, key.as_str())?;
                        if count + 1 > limits.max_messages || bytes + size > limits.max_bytes {
                            refused.push(recipient.name.clone());
                            continue;
                        }
                        let id = recipient.id;
                        let record = InboxRecord {
                            body: body_id,
                            queued_at: delivery.queued_at,
                            size,
                            slot: recipient.slot.clone(),
                            inline: single.then(|| {
                                let body = BodyRecord {
                                    from: delivery.from.clone(),
                                    to: delivery.to.clone(),
                                    body: delivery.body.clone(),
                                };
                                (body, hash)
                            }),
                        };
                        let value = postcard::to_stdvec(&record).map_err(encode_err)?;
                        inbox
                            .insert((key.as_str(), id), value.as_slice())
                            .map_err(db_err)?;
                        tally.add_user(key.as_str(), 1, signed(size));
                        delivered.push((key, id));
                    }
                    if single && let Some((_, id)) = delivered.first() {
                        hashes.insert(hash.as_slice(), *id).map_err(db_err)?;
                        if let Some(room) = room {
                            tally.add_room(room, 1, signed(body_len));
                        }
                    }
                    // Nobody to keep it for: no body either.
                    if !single && !delivered.is_empty() {
                        let record = BodyRecord {
                            from: delivery.from.clone(),
                            to: delivery.to.clone(),
                            body: delivery.body.clone(),
                        };
                        let value = postcard::to_stdvec(&record).map_err(encode_err)?;
                        bodies.insert(body_id, value.as_slice()).map_err(db_err)?;
                        let (high, low) = halves(&hash);
                        refs.insert(body_id, (delivered.len() as u64, body_len, high, low))
                            .map_err(db_err)?;
                        hashes.insert(hash.as_slice(), body_id).map_err(db_err)?;
                        if let Some(room) = room {
                            tally.add_room(room, 1, signed(body_len));
                        }
                    }
                    Outcome::Deliver(Stored::Stored { delivered, refused })
                }
                Write::Ack { user, ids } => {
                    let mut acked = 0;
                    for id in ids {
                        let removed = match inbox.remove((user.as_str(), *id)).map_err(db_err)? {
                            Some(value) => Some(decode::<InboxRecord>(value.value())?),
                            None => None,
                        };
                        if let Some(record) = removed {
                            tally.user(&stats, user.as_str())?;
                            tally.add_user(user.as_str(), -1, -signed(record.size));
                            forget_body(
                                &mut bodies,
                                &mut refs,
                                &mut hashes,
                                &room_stats,
                                &mut tally,
                                record,
                            )?;
                            acked += 1;
                        }
                    }
                    Outcome::Acked(acked)
                }
                Write::Join { room, name } => {
                    let key = name.key();
                    let existing =
                        match members.get((room.as_str(), key.as_str())).map_err(db_err)? {
                            Some(value) => Some(decode::<MemberRecord>(value.value())?),
                            None => None,
                        };
                    let record = MemberRecord {
                        name: name.clone(),
                        joined_at: existing.as_ref().map_or(now, |m| m.joined_at),
                        last_seen: now,
                    };
                    let value = postcard::to_stdvec(&record).map_err(encode_err)?;
                    members
                        .insert((room.as_str(), key.as_str()), value.as_slice())
                        .map_err(db_err)?;
                    Outcome::Done
                }
                Write::Leave { room, user } => {
                    members
                        .remove((room.as_str(), user.as_str()))
                        .map_err(db_err)?;
                    Outcome::Done
                }
                Write::Seen { user, rooms, at } => {
                    for room in rooms {
                        let key = (room.as_str(), user.as_str());
                        let record = match members.get(key).map_err(db_err)? {
                            Some(value) => Some(decode::<MemberRecord>(value.value())?),
                            None => None,
                        };
                        if let Some(mut record) = record {
                            record.last_seen = *at;
                            let value = postcard::to_stdvec(&record).map_err(encode_err)?;
                            members.insert(key, value.as_slice()).map_err(db_err)?;
                        }
                    }
                    Outcome::Done
                }
            };
            outcomes.push(outcome);
        }
        tally.write_back(&mut stats, &mut room_stats)?;
        Ok(outcomes)
    }

    /// Makes every commit before it durable (an empty commit with an
    /// fsync): acknowledgements are committed without one.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.write("sync", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
    }

    /// Up to `limit` deliveries stored for `user` with ids above `after`,
    /// oldest first; expired ones are left out (the sweep deletes them).
    pub fn pending_after(
        &self,
        user: &UserKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Queued)>, StoreError> {
        let cutoff = self.cutoff();
        self.read("pending", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let inbox = txn.open_table(INBOX).map_err(db_err)?;
            let bodies = txn.open_table(BODIES).map_err(db_err)?;
            let mut pending = Vec::new();
            let start = after.saturating_add(1);
            let range = (user.as_str(), start)..=(user.as_str(), u64::MAX);
            let mut last_body: Option<(u64, BodyRecord)> = None;
            for entry in inbox.range(range).map_err(db_err)? {
                if pending.len() >= limit {
                    break;
                }
                let (key, value) = entry.map_err(db_err)?;
                let record: InboxRecord = decode(value.value())?;
                if record.queued_at < cutoff {
                    continue;
                }
                let body = match (record.inline, &last_body) {
                    (Some((body, _)), _) => body,
                    (None, Some((id, body))) if *id == record.body => body.clone(),
                    (None, _) => {
                        let Some(value) = bodies.get(record.body).map_err(db_err)? else {
                            return Err(StoreError::Corrupt);
                        };
                        let body: BodyRecord = decode(value.value())?;
                        last_body = Some((record.body, body.clone()));
                        body
                    }
                };
                pending.push((
                    key.value().1,
                    Queued {
                        queued_at: record.queued_at,
                        from: body.from,
                        to: body.to,
                        body: body.body,
                        slot: record.slot,
                    },
                ));
            }
            Ok(pending)
        })
    }

    /// Everything stored for `recipient`, oldest first.
    pub fn pending(&self, recipient: &UserName) -> Result<Vec<(u64, Queued)>, StoreError> {
        self.pending_after(&recipient.key(), 0, usize::MAX)
    }

    /// Stores one delivery for `recipient` alone (a convenience over
    /// [`Store::apply`]).
    pub fn enqueue(&self, recipient: &UserName, message: &Queued) -> Result<Enqueue, StoreError> {
        let write = Write::Deliver(NewDelivery {
            queued_at: message.queued_at,
            from: message.from.clone(),
            to: message.to.clone(),
            body: message.body.clone(),
            recipients: vec![Recipient {
                name: recipient.clone(),
                slot: message.slot.clone(),
                id: 0,
            }],
            body_id: 0,
        });
        match self.apply(&[write])?.pop() {
            Some(Outcome::Deliver(Stored::Stored { delivered, .. })) => Ok(delivered
                .first()
                .map_or(Enqueue::Full, |(_, id)| Enqueue::Stored(*id))),
            Some(Outcome::Deliver(Stored::NoSuchUser)) => Ok(Enqueue::NoSuchUser),
            _ => Ok(Enqueue::Full),
        }
    }

    /// Forgets delivery `id` of `recipient` (acknowledged); `false` if it
    /// was not stored (unknown ids are ignored).
    pub fn acknowledge(&self, recipient: &UserName, id: u64) -> Result<bool, StoreError> {
        let outcome = self.apply(&[Write::Ack {
            user: recipient.key(),
            ids: vec![id],
        }])?;
        Ok(matches!(outcome.first(), Some(Outcome::Acked(1))))
    }

    /// Deletes every delivery stored longer than the age bound, so that
    /// ciphertext for users who never come back does not stay on disk past
    /// its age. Returns how many were deleted.
    pub fn expire_all(&self) -> Result<u64, StoreError> {
        let cutoff = self.cutoff();
        self.write("expire_all", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let dropped = {
                let mut bodies = txn.open_table(BODIES).map_err(db_err)?;
                let mut refs = txn.open_table(BODY_REFS).map_err(db_err)?;
                let mut hashes = txn.open_table(BODY_HASHES).map_err(db_err)?;
                let mut inbox = txn.open_table(INBOX).map_err(db_err)?;
                let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
                let mut room_stats = txn.open_table(ROOM_STATS).map_err(db_err)?;
                let mut expired = Vec::new();
                for entry in inbox.iter().map_err(db_err)? {
                    let (key, value) = entry.map_err(db_err)?;
                    let record: InboxRecord = decode(value.value())?;
                    if record.queued_at < cutoff {
                        let (user, id) = key.value();
                        expired.push((user.to_string(), id, record));
                    }
                }
                let mut tally = Tally::default();
                let dropped = expired.len() as u64;
                for (user, id, record) in expired {
                    inbox.remove((user.as_str(), id)).map_err(db_err)?;
                    tally.user(&stats, &user)?;
                    tally.add_user(&user, -1, -signed(record.size));
                    forget_body(
                        &mut bodies,
                        &mut refs,
                        &mut hashes,
                        &room_stats,
                        &mut tally,
                        record,
                    )?;
                }
                tally.write_back(&mut stats, &mut room_stats)?;
                dropped
            };
            txn.commit().map_err(db_err)?;
            Ok(dropped)
        })
    }

    /// Deliveries and bytes stored for `recipient`.
    pub fn queue_depth(&self, recipient: &UserName) -> Result<(u64, u64), StoreError> {
        self.read("queue_depth", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
            let depth = stats.get(recipient.key().as_str()).map_err(db_err)?;
            Ok(depth.map_or((0, 0), |v| v.value()))
        })
    }

    /// Bodies and bytes stored for `room`.
    pub fn room_depth(&self, room: &RoomName) -> Result<(u64, u64), StoreError> {
        self.read("room_depth", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let stats = txn.open_table(ROOM_STATS).map_err(db_err)?;
            let depth = stats.get(room.as_str()).map_err(db_err)?;
            Ok(depth.map_or((0, 0), |v| v.value()))
        })
    }

    /// Deliveries stored for everyone.
    pub fn total_queued(&self) -> Result<u64, StoreError> {
        self.read("total_queued", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let inbox = txn.open_table(INBOX).map_err(db_err)?;
            inbox.len().map_err(db_err)
        })
    }

    /// Bodies stored (one per `Send` that someone has not acknowledged).
    pub fn total_bodies(&self) -> Result<u64, StoreError> {
        self.read("total_bodies", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let bodies = txn.open_table(BODIES).map_err(db_err)?;
            bodies.len().map_err(db_err)
        })
    }

    fn cutoff(&self) -> u64 {
        now_secs().saturating_sub(self.limits.max_age.as_secs())
    }
}

/// What identifies a stored body for resends: SHA-256 of the sender's
/// key, the destination, the recipients and the body, 16 bytes.
pub(super) fn body_hash(delivery: &NewDelivery) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(delivery.from.key().as_str().as_bytes());
    hasher.update([0]);
    match &delivery.to {
        Destination::Room(room) => hasher.update(room.as_str().as_bytes()),
        Destination::User(user) => hasher.update(user.key().as_str().as_bytes()),
    }
    for recipient in &delivery.recipients {
        hasher.update([0]);
        hasher.update(recipient.name.key().as_str().as_bytes());
    }
    hasher.update([1]);
    hasher.update(&delivery.body);
    let digest: [u8; 32] = hasher.finalize().into();
    let mut hash = [0; 16];
    for (to, from) in hash.iter_mut().zip(digest) {
        *to = from;
    }
    hash
}

/// A hash as two numbers (how [`BODY_REFS`] keeps it).
fn halves(hash: &[u8; 16]) -> (u64, u64) {
    let (high, low) = hash.split_at(8);
    let number = |half: &[u8]| u64::from_be_bytes(half.try_into().unwrap_or_default());
    (number(high), number(low))
}

/// The next id of the relay-wide counter.
/// A size as a signed change (sizes are bounded far below `i64::MAX`).
fn signed(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// What a removed inbox entry held of its body: an inline body and its
/// hash go with it; a shared one loses a holder.
fn forget_body(
    bodies: &mut redb::Table<'_, u64, &[u8]>,
    refs: &mut redb::Table<'_, u64, (u64, u64, u64, u64)>,
    hashes: &mut redb::Table<'_, &[u8], u64>,
    room_stats: &redb::Table<'_, &str, (u64, u64)>,
    tally: &mut Tally,
    record: InboxRecord,
) -> Result<(), StoreError> {
    match record.inline {
        Some((body, hash)) => {
            hashes.remove(hash.as_slice()).map_err(db_err)?;
            if let Destination::Room(room) = &body.to {
                tally.room(room_stats, room.as_str())?;
                tally.add_room(room.as_str(), -1, -signed(body.body.len() as u64));
            }
            Ok(())
        }
        None => release(bodies, refs, hashes, room_stats, tally, record.body),
    }
}

/// Drops one recipient's hold on body `id`: the body goes with the last.
fn release(
    bodies: &mut redb::Table<'_, u64, &[u8]>,
    refs: &mut redb::Table<'_, u64, (u64, u64, u64, u64)>,
    hashes: &mut redb::Table<'_, &[u8], u64>,
    room_stats: &redb::Table<'_, &str, (u64, u64)>,
    tally: &mut Tally,
    id: u64,
) -> Result<(), StoreError> {
    let Some((held, len, high, low)) = refs.get(id).map_err(db_err)?.map(|v| v.value()) else {
        return Ok(());
    };
    if held > 1 {
        refs.insert(id, (held - 1, len, high, low))
            .map_err(db_err)?;
        return Ok(());
    }
    refs.remove(id).map_err(db_err)?;
    if (high, low) != (0, 0) {
        let mut hash = high.to_be_bytes().to_vec();
        hash.extend_from_slice(&low.to_be_bytes());
        hashes.remove(hash.as_slice()).map_err(db_err)?;
    }
    if let Some(value) = bodies.remove(id).map_err(db_err)? {
        let record: BodyRecord = decode(value.value())?;
        if let Destination::Room(room) = &record.to {
            tally.room(room_stats, room.as_str())?;
            tally.add_room(room.as_str(), -1, -signed(len));
        }
    }
    Ok(())
}

impl Tally {
    fn user(
        &mut self,
        stats: &redb::Table<'_, &str, (u64, u64)>,
        user: &str,
    ) -> Result<(u64, u64), StoreError> {
        Self::read(&mut self.users, stats, user)
    }

    fn room(
        &mut self,
        stats: &redb::Table<'_, &str, (u64, u64)>,
        room: &str,
    ) -> Result<(u64, u64), StoreError> {
        Self::read(&mut self.rooms, stats, room)
    }

    fn read(
        cache: &mut HashMap<String, (u64, u64)>,
        stats: &redb::Table<'_, &str, (u64, u64)>,
        key: &str,
    ) -> Result<(u64, u64), StoreError> {
        if let Some(have) = cache.get(key) {
            return Ok(*have);
        }
        let have = stats
            .get(key)
            .map_err(db_err)?
            .map_or((0, 0), |v| v.value());
        cache.insert(key.to_string(), have);
        Ok(have)
    }

    /// Adds to a user's tally, which must have been read.
    fn add_user(&mut self, user: &str, count: i64, bytes: i64) {
        Self::add(&mut self.users, user, count, bytes);
    }

    fn add_room(&mut self, room: &str, count: i64, bytes: i64) {
        Self::add(&mut self.rooms, room, count, bytes);
    }

    fn add(cache: &mut HashMap<String, (u64, u64)>, key: &str, count: i64, bytes: i64) {
        let entry = cache.entry(key.to_string()).or_default();
        entry.0 = entry.0.saturating_add_signed(count);
        entry.1 = entry.1.saturating_add_signed(bytes);
    }

    fn write_back(
        self,
        stats: &mut redb::Table<'_, &str, (u64, u64)>,
        room_stats: &mut redb::Table<'_, &str, (u64, u64)>,
    ) -> Result<(), StoreError> {
        Self::store(self.users, stats)?;
        Self::store(self.rooms, room_stats)
    }

    fn store(
        cache: HashMap<String, (u64, u64)>,
        table: &mut redb::Table<'_, &str, (u64, u64)>,
    ) -> Result<(), StoreError> {
        for (key, value) in cache {
            if value.0 == 0 {
                table.remove(key.as_str()).map_err(db_err)?;
            } else {
                table.insert(key.as_str(), value).map_err(db_err)?;
            }
        }
        Ok(())
    }
}
