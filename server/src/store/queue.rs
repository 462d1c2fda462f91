//! The offline queue: ciphertext for registered users who are not
//! connected, bounded per user, until acknowledged or expired.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use sotto_proto::UserName;

use super::{
    Enqueue, META, QUEUE, QUEUE_STATS, Queued, Store, StoreError, db_err, decode, encode_err,
    now_secs,
};

impl Store {
    /// Queues a delivery for `recipient`, within its limits; expired
    /// entries are dropped first.
    pub fn enqueue(&self, recipient: &UserName, message: &Queued) -> Result<Enqueue, StoreError> {
        let key = recipient.key();
        let user = key.as_str();
        let size = message.body.len() as u64 + message.slot.as_ref().map_or(0, |s| s.len() as u64);
        self.write("enqueue", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let outcome = {
                let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
                let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
                let mut meta = txn.open_table(META).map_err(db_err)?;
                expire(&mut queue, &mut stats, user, self.cutoff())?;
                let (count, bytes) = stats
                    .get(user)
                    .map_err(db_err)?
                    .map_or((0, 0), |v| v.value());
                if count + 1 > self.limits.max_messages || bytes + size > self.limits.max_bytes {
                    Enqueue::Full
                } else {
                    let id = meta
                        .get("next_id")
                        .map_err(db_err)?
                        .map_or(1, |v| v.value());
                    meta.insert("next_id", id + 1).map_err(db_err)?;
                    let value = postcard::to_stdvec(message).map_err(encode_err)?;
                    queue.insert((user, id), value.as_slice()).map_err(db_err)?;
                    stats
                        .insert(user, (count + 1, bytes + size))
                        .map_err(db_err)?;
                    Enqueue::Stored(id)
                }
            };
            txn.commit().map_err(db_err)?;
            Ok(outcome)
        })
    }

    /// Everything queued for `recipient`, oldest first, expired entries
    /// left out (and dropped). Reading writes nothing, so what is stored
    /// is still delivered while the disk is full; expired entries, if
    /// any, are dropped afterwards in a write of their own, or failing
    /// that at the next write to the queue or the next sweep.
    pub fn pending(&self, recipient: &UserName) -> Result<Vec<(u64, Queued)>, StoreError> {
        let key = recipient.key();
        let user = key.as_str();
        let cutoff = self.cutoff();
        let (pending, expired) = self.read("pending", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut pending = Vec::new();
            let mut expired = false;
            for entry in queue.range((user, 0)..=(user, u64::MAX)).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let message: Queued = decode(v.value())?;
                if message.queued_at < cutoff {
                    expired = true;
                } else {
                    pending.push((k.value().1, message));
                }
            }
            Ok((pending, expired))
        })?;
        if expired {
            // A failure is logged, and changes nothing of what is served.
            let _ = self.write("expire", |db| {
                let txn = db.begin_write().map_err(db_err)?;
                {
                    let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
                    let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
                    expire(&mut queue, &mut stats, user, cutoff)?;
                }
                txn.commit().map_err(db_err)
            });
        }
        Ok(pending)
    }

    /// Forgets delivery `id` of `recipient` (acknowledged). Unknown ids are
    /// ignored.
    pub fn acknowledge(&self, recipient: &UserName, id: u64) -> Result<bool, StoreError> {
        let key = recipient.key();
        let user = key.as_str();
        self.write("acknowledge", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let removed = {
                let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
                let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
                let removed = match queue.remove((user, id)).map_err(db_err)? {
                    Some(value) => Some(decode::<Queued>(value.value())?),
                    None => None,
                };
                if let Some(message) = &removed {
                    subtract(&mut stats, user, 1, stored_size(message))?;
                }
                removed.is_some()
            };
            txn.commit().map_err(db_err)?;
            Ok(removed)
        })
    }

    /// Drops every user's expired entries, so that ciphertext for users who
    /// never come back does not stay on disk past its age. Returns how many
    /// entries were dropped.
    pub fn expire_all(&self) -> Result<u64, StoreError> {
        self.write("expire_all", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let dropped = {
                let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
                let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
                let mut users = Vec::new();
                for entry in stats.iter().map_err(db_err)? {
                    let (user, depth) = entry.map_err(db_err)?;
                    users.push((user.value().to_string(), depth.value().0));
                }
                let mut dropped = 0;
                for (user, before) in users {
                    expire(&mut queue, &mut stats, &user, self.cutoff())?;
                    let after = stats
                        .get(user.as_str())
                        .map_err(db_err)?
                        .map_or(0, |v| v.value().0);
                    dropped += before.saturating_sub(after);
                }
                dropped
            };
            txn.commit().map_err(db_err)?;
            Ok(dropped)
        })
    }

    /// Messages and bytes queued for `recipient`.
    pub fn queue_depth(&self, recipient: &UserName) -> Result<(u64, u64), StoreError> {
        self.read("queue_depth", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
            let depth = stats.get(recipient.key().as_str()).map_err(db_err)?;
            Ok(depth.map_or((0, 0), |v| v.value()))
        })
    }

    /// Messages queued for everyone.
    pub fn total_queued(&self) -> Result<u64, StoreError> {
        self.read("total_queued", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let queue = txn.open_table(QUEUE).map_err(db_err)?;
            queue.len().map_err(db_err)
        })
    }

    fn cutoff(&self) -> u64 {
        now_secs().saturating_sub(self.limits.max_age.as_secs())
    }
}

fn stored_size(message: &Queued) -> u64 {
    message.body.len() as u64 + message.slot.as_ref().map_or(0, |s| s.len() as u64)
}

fn subtract(
    stats: &mut redb::Table<'_, &str, (u64, u64)>,
    user: &str,
    count: u64,
    bytes: u64,
) -> Result<(), StoreError> {
    let (have_count, have_bytes) = stats
        .get(user)
        .map_err(db_err)?
        .map_or((0, 0), |v| v.value());
    let left = (
        have_count.saturating_sub(count),
        have_bytes.saturating_sub(bytes),
    );
    if left.0 == 0 {
        stats.remove(user).map_err(db_err)?;
    } else {
        stats.insert(user, left).map_err(db_err)?;
    }
    Ok(())
}

/// Drops `user`'s entries queued before `cutoff`.
fn expire(
    queue: &mut redb::Table<'_, (&str, u64), &[u8]>,
    stats: &mut redb::Table<'_, &str, (u64, u64)>,
    user: &str,
    cutoff: u64,
) -> Result<(), StoreError> {
    let mut expired = Vec::new();
    for entry in queue.range((user, 0)..=(user, u64::MAX)).map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        let message: Queued = decode(v.value())?;
        // Ids grow with time, so the first fresh entry ends the scan.
        if message.queued_at >= cutoff {
            break;
        }
        expired.push((k.value().1, stored_size(&message)));
    }
    for (id, size) in expired {
        queue.remove((user, id)).map_err(db_err)?;
        subtract(stats, user, 1, size)?;
    }
    Ok(())
}
