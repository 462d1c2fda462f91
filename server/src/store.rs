//! What the relay keeps on disk, in one redb database in the data
//! directory: which identity owns which name, and the offline queue of
//! ciphertext for registered users who are not connected.
//!
//! Nothing else is stored: no plaintext (the relay never has any), no
//! session keys, no logs of who talked to whom beyond the queued frames
//! themselves, which are deleted once acknowledged or expired.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sotto_proto::{Destination, UserName};

/// File name of the database in the data directory.
pub const DATABASE_FILE: &str = "relay.redb";

// The tables are keyed by a user's name as its `UserKey`'s string form
// (`UserName::key().as_str()`): the lower-cased name, byte for byte what
// relays wrote before the key had a type, so existing databases open
// unchanged. The key's string is the database format: it must not change.

/// A user's key -> [`NameRecord`].
const NAMES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("names");
/// (recipient's key, id) -> [`Queued`].
const QUEUE: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("queue");
/// Recipient's key -> (messages, bytes) queued.
const QUEUE_STATS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("queue_stats");
/// Counters: `next_id`, and `names_per_key`, set once [`NAMES_PER_KEY`]
/// has been filled from [`NAMES`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Fingerprint -> how many names in [`NAMES`] it owns.
const NAMES_PER_KEY: TableDefinition<'_, &[u8], u64> = TableDefinition::new("names_per_key");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused an operation.
    #[error("database: {0}")]
    Database(String),
    /// A stored record did not decode (the file is damaged).
    #[error("damaged record in the database")]
    Corrupt,
    /// The database file exists but cannot be used: empty, damaged, not a
    /// database, or unreadable. The relay refuses to start rather than
    /// replace it, which would silently forget every name and stored
    /// delivery.
    #[error(
        "{}: {reason}; refusing to start rather than replace it (restore it from a backup, or move it away to start with an empty directory)",
        path.display()
    )]
    Unusable {
        /// The database file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

fn db_err<E: std::fmt::Display>(error: E) -> StoreError {
    StoreError::Database(error.to_string())
}

/// Who owns a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The name as registered (case preserved).
    pub name: UserName,
    /// SHA-256 fingerprint of the owner's identity.
    pub fingerprint: [u8; 32],
    /// The owner's encoded public identity.
    pub identity: Bytes,
}

/// Outcome of claiming a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The name was free and is now bound to the identity.
    New,
    /// The identity already owned the name, registered with this casing.
    Existing(UserName),
    /// Another identity owns the name (in any letter case).
    Taken,
    /// The name is free, but the identity owns the most names one key may
    /// register already.
    KeyFull,
}

/// One queued delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// When it was queued, seconds since the Unix epoch.
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

/// Outcome of queueing a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueue {
    /// Stored under this id.
    Stored(u64),
    /// The recipient's queue is full (count or bytes).
    Full,
}

/// Bounds of each user's offline queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most messages.
    pub max_messages: u64,
    /// Most bytes (bodies and slots).
    pub max_bytes: u64,
    /// Oldest message kept.
    pub max_age: Duration,
}

/// The relay's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    limits: QueueLimits,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens the database in `dir`, creating it only if there is no file:
    /// an existing file that is empty, damaged or unreadable is an error
    /// naming it ([`StoreError::Unusable`]), never replaced.
    pub fn open(dir: &Path, limits: QueueLimits) -> Result<Self, StoreError> {
        sotto_fsutil::create_private_dir(dir).map_err(db_err)?;
        let path = dir.join(DATABASE_FILE);
        let unusable = |reason: String| StoreError::Unusable {
            path: path.clone(),
            reason,
        };
        let db = match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => return Err(unusable("not a regular file".into())),
            Ok(meta) if meta.len() == 0 => {
                return Err(unusable("the file is empty (0 bytes)".into()));
            }
            Ok(_) => Database::open(&path).map_err(|e| unusable(e.to_string()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Database::create(&path).map_err(|e| unusable(e.to_string()))?
            }
            Err(error) => return Err(unusable(error.to_string())),
        };
        let txn = db.begin_write().map_err(|e| unusable(e.to_string()))?;
        {
            let names = txn.open_table(NAMES).map_err(|e| unusable(e.to_string()))?;
            txn.open_table(QUEUE).map_err(db_err)?;
            txn.open_table(QUEUE_STATS).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut per_key = txn.open_table(NAMES_PER_KEY).map_err(db_err)?;
            // A database from before the per-key count: count once.
            if meta.get("names_per_key").map_err(db_err)?.is_none() {
                let mut counts: std::collections::HashMap<[u8; 32], u64> = Default::default();
                for entry in names.iter().map_err(db_err)? {
                    let (_, value) = entry.map_err(db_err)?;
                    let record: NameRecord = decode(value.value())?;
                    *counts.entry(record.fingerprint).or_default() += 1;
                }
                for (fingerprint, count) in counts {
                    per_key
                        .insert(fingerprint.as_slice(), count)
                        .map_err(db_err)?;
                }
                meta.insert("names_per_key", 1).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(Self { db, limits })
    }

    /// Binds `name` to the identity with `fingerprint`, unless another
    /// identity holds it already, or the identity owns `max_names` names
    /// already. Names compare without regard to case, so `Alice` cannot be
    /// taken by someone else once `alice` is.
    pub fn claim(&self, record: &NameRecord, max_names: u64) -> Result<Claim, StoreError> {
        let key = record.name.key();
        let txn = self.db.begin_write().map_err(db_err)?;
        let claim = {
            let mut names = txn.open_table(NAMES).map_err(db_err)?;
            let mut per_key = txn.open_table(NAMES_PER_KEY).map_err(db_err)?;
            let existing = match names.get(key.as_str()).map_err(db_err)? {
                Some(value) => Some(decode::<NameRecord>(value.value())?),
                None => None,
            };
            let owned = per_key
                .get(record.fingerprint.as_slice())
                .map_err(db_err)?
                .map_or(0, |v| v.value());
            match existing {
                Some(owner) if owner.fingerprint != record.fingerprint => Claim::Taken,
                Some(owner) => Claim::Existing(owner.name),
                None if owned >= max_names => Claim::KeyFull,
                None => {
                    let value = postcard::to_stdvec(record).map_err(db_err)?;
                    names
                        .insert(key.as_str(), value.as_slice())
                        .map_err(db_err)?;
                    per_key
                        .insert(record.fingerprint.as_slice(), owned + 1)
                        .map_err(db_err)?;
                    Claim::New
                }
            }
        };
        if claim == Claim::New {
            txn.commit().map_err(db_err)?;
        } else {
            txn.abort().map_err(db_err)?;
        }
        Ok(claim)
    }

    /// How many names the identity with `fingerprint` owns.
    pub fn names_of(&self, fingerprint: &[u8; 32]) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let per_key = txn.open_table(NAMES_PER_KEY).map_err(db_err)?;
        let count = per_key.get(fingerprint.as_slice()).map_err(db_err)?;
        Ok(count.map_or(0, |v| v.value()))
    }

    /// The owner of `name`, if registered.
    pub fn lookup(&self, name: &UserName) -> Result<Option<NameRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let names = txn.open_table(NAMES).map_err(db_err)?;
        let found = names.get(name.key().as_str()).map_err(db_err)?;
        found.map(|value| decode(value.value())).transpose()
    }

    /// Queues a delivery for `recipient`, within its limits; expired
    /// entries are dropped first.
    pub fn enqueue(&self, recipient: &UserName, message: &Queued) -> Result<Enqueue, StoreError> {
        let key = recipient.key();
        let user = key.as_str();
        let size = message.body.len() as u64 + message.slot.as_ref().map_or(0, |s| s.len() as u64);
        let txn = self.db.begin_write().map_err(db_err)?;
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
                let value = postcard::to_stdvec(message).map_err(db_err)?;
                queue.insert((user, id), value.as_slice()).map_err(db_err)?;
                stats
                    .insert(user, (count + 1, bytes + size))
                    .map_err(db_err)?;
                Enqueue::Stored(id)
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(outcome)
    }

    /// Everything queued for `recipient`, oldest first, expired entries
    /// dropped.
    pub fn pending(&self, recipient: &UserName) -> Result<Vec<(u64, Queued)>, StoreError> {
        let key = recipient.key();
        let user = key.as_str();
        let txn = self.db.begin_write().map_err(db_err)?;
        let pending = {
            let mut queue = txn.open_table(QUEUE).map_err(db_err)?;
            let mut stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
            expire(&mut queue, &mut stats, user, self.cutoff())?;
            let mut pending = Vec::new();
            for entry in queue.range((user, 0)..=(user, u64::MAX)).map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                pending.push((k.value().1, decode(v.value())?));
            }
            pending
        };
        txn.commit().map_err(db_err)?;
        Ok(pending)
    }

    /// Forgets delivery `id` of `recipient` (acknowledged). Unknown ids are
    /// ignored.
    pub fn acknowledge(&self, recipient: &UserName, id: u64) -> Result<bool, StoreError> {
        let key = recipient.key();
        let user = key.as_str();
        let txn = self.db.begin_write().map_err(db_err)?;
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
    }

    /// Drops every user's expired entries, so that ciphertext for users who
    /// never come back does not stay on disk past its age. Returns how many
    /// entries were dropped.
    pub fn expire_all(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
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
    }

    /// Messages and bytes queued for `recipient`.
    pub fn queue_depth(&self, recipient: &UserName) -> Result<(u64, u64), StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let stats = txn.open_table(QUEUE_STATS).map_err(db_err)?;
        let depth = stats.get(recipient.key().as_str()).map_err(db_err)?;
        Ok(depth.map_or((0, 0), |v| v.value()))
    }

    /// Messages queued for everyone.
    pub fn total_queued(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let queue = txn.open_table(QUEUE).map_err(db_err)?;
        queue.len().map_err(db_err)
    }

    fn cutoff(&self) -> u64 {
        now_secs().saturating_sub(self.limits.max_age.as_secs())
    }
}

fn stored_size(message: &Queued) -> u64 {
    message.body.len() as u64 + message.slot.as_ref().map_or(0, |s| s.len() as u64)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, limits: QueueLimits) -> Store {
        Store::open(dir, limits).unwrap()
    }

    const LIMITS: QueueLimits = QueueLimits {
        max_messages: 3,
        max_bytes: 1000,
        max_age: Duration::from_secs(3600),
    };

    fn user(name: &str) -> UserName {
        UserName::try_from(name).unwrap()
    }

    fn message(body: &'static [u8]) -> Queued {
        Queued {
            queued_at: now_secs(),
            from: user("alice"),
            to: Destination::User(user("bob")),
            body: Bytes::from_static(body),
            slot: None,
        }
    }

    #[test]
    fn a_name_stays_bound_to_its_first_key_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), LIMITS);
        assert_eq!(s.claim(&record("alice", 1), 8).unwrap(), Claim::New);
        assert_eq!(
            s.claim(&record("ALICE", 1), 8).unwrap(),
            Claim::Existing(user("alice"))
        );
        assert_eq!(s.claim(&record("alice", 2), 8).unwrap(), Claim::Taken);
        assert_eq!(s.claim(&record("ALICE", 2), 8).unwrap(), Claim::Taken);
        assert_eq!(
            s.lookup(&user("Alice")).unwrap().unwrap().name,
            user("alice")
        );
        assert!(s.lookup(&user("bob")).unwrap().is_none());
    }

    #[test]
    fn queue_keeps_order_limits_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path(), LIMITS);
            for body in [b"one".as_slice(), b"two", b"three"] {
                let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
                assert!(matches!(
                    s.enqueue(&user("bob"), &message(body)).unwrap(),
                    Enqueue::Stored(_)
                ));
            }
            assert_eq!(
                s.enqueue(&user("bob"), &message(b"four")).unwrap(),
                Enqueue::Full
            );
        }
        let s = store(dir.path(), LIMITS);
        let pending = s.pending(&user("Bob")).unwrap();
        let bodies: Vec<&[u8]> = pending.iter().map(|(_, q)| q.body.as_ref()).collect();
        assert_eq!(bodies, vec![b"one".as_slice(), b"two", b"three"]);
        assert!(s.acknowledge(&user("bob"), pending[0].0).unwrap());
        assert!(!s.acknowledge(&user("bob"), pending[0].0).unwrap());
        assert_eq!(s.queue_depth(&user("bob")).unwrap(), (2, 8));
        assert!(matches!(
            s.enqueue(&user("bob"), &message(b"four")).unwrap(),
            Enqueue::Stored(_)
        ));
    }

    #[test]
    fn queue_is_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(
            dir.path(),
            QueueLimits {
                max_bytes: 5,
                ..LIMITS
            },
        );
        assert!(matches!(
            s.enqueue(&user("bob"), &message(b"1234")).unwrap(),
            Enqueue::Stored(_)
        ));
        assert_eq!(
            s.enqueue(&user("bob"), &message(b"56")).unwrap(),
            Enqueue::Full
        );
    }

    #[test]
    fn expired_messages_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), LIMITS);
        let mut old = message(b"old");
        old.queued_at = now_secs() - 7200;
        s.enqueue(&user("bob"), &old).unwrap();
        s.enqueue(&user("carol"), &old).unwrap();
        s.enqueue(&user("bob"), &message(b"new")).unwrap();
        // Bob's old entry went when his queue was written to; Carol never
        // comes back, and the periodic sweep removes hers.
        assert_eq!(s.expire_all().unwrap(), 1);
        assert_eq!(s.queue_depth(&user("carol")).unwrap(), (0, 0));
        assert_eq!(s.total_queued().unwrap(), 1);
        let pending = s.pending(&user("bob")).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1.body.as_ref(), b"new");
        assert_eq!(s.queue_depth(&user("bob")).unwrap(), (1, 3));
    }

    fn record(name: &str, fp: u8) -> NameRecord {
        NameRecord {
            name: user(name),
            fingerprint: [fp; 32],
            identity: Bytes::from_static(b"id"),
        }
    }

    /// One key registers at most its limit of names; the names it has
    /// keep working, other keys are unaffected, and the count survives
    /// reopening.
    #[test]
    fn one_key_owns_at_most_its_limit_of_names() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path(), LIMITS);
            assert_eq!(s.claim(&record("a1", 1), 2).unwrap(), Claim::New);
            assert_eq!(s.claim(&record("a2", 1), 2).unwrap(), Claim::New);
            assert_eq!(s.claim(&record("a3", 1), 2).unwrap(), Claim::KeyFull);
            assert_eq!(
                s.claim(&record("A1", 1), 2).unwrap(),
                Claim::Existing(user("a1"))
            );
            // Someone else's name is taken whatever the count.
            assert_eq!(s.claim(&record("b1", 2), 2).unwrap(), Claim::New);
            assert_eq!(s.claim(&record("b1", 1), 2).unwrap(), Claim::Taken);
            assert!(s.lookup(&user("a3")).unwrap().is_none());
        }
        let s = store(dir.path(), LIMITS);
        assert_eq!(s.names_of(&[1; 32]).unwrap(), 2);
        assert_eq!(s.names_of(&[2; 32]).unwrap(), 1);
        assert_eq!(s.claim(&record("a3", 1), 2).unwrap(), Claim::KeyFull);
        assert_eq!(s.claim(&record("a3", 1), 3).unwrap(), Claim::New);
    }

    /// A database written before names were counted per key is counted
    /// once, when it is opened.
    #[test]
    fn names_registered_before_the_count_are_counted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path(), LIMITS);
            for name in ["a1", "a2", "a3"] {
                s.claim(&record(name, 1), 8).unwrap();
            }
            // Forget the count, as a database from before it had none.
            let txn = s.db.begin_write().unwrap();
            txn.delete_table(NAMES_PER_KEY).unwrap();
            txn.open_table(META)
                .unwrap()
                .remove("names_per_key")
                .unwrap();
            txn.commit().unwrap();
        }
        let s = store(dir.path(), LIMITS);
        assert_eq!(s.names_of(&[1; 32]).unwrap(), 3);
        assert_eq!(s.claim(&record("a4", 1), 3).unwrap(), Claim::KeyFull);
    }

    /// The tables' keys are the lower-cased name, as relays wrote them
    /// before names had a key type: a database written that way (here by
    /// hand) is read the same, in any letter case.
    #[test]
    fn keys_on_disk_are_the_lower_cased_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store(dir.path(), LIMITS);
            let txn = s.db.begin_write().unwrap();
            {
                let value = postcard::to_stdvec(&record("Alice", 1)).unwrap();
                let mut names = txn.open_table(NAMES).unwrap();
                names.insert("alice", value.as_slice()).unwrap();
                let value = postcard::to_stdvec(&message(b"stored")).unwrap();
                let mut queue = txn.open_table(QUEUE).unwrap();
                queue.insert(("bob", 7), value.as_slice()).unwrap();
                let mut stats = txn.open_table(QUEUE_STATS).unwrap();
                stats.insert("bob", (1, 6)).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = store(dir.path(), LIMITS);
        assert_eq!(
            s.lookup(&user("ALICE")).unwrap().unwrap().name,
            user("Alice")
        );
        assert_eq!(s.queue_depth(&user("Bob")).unwrap(), (1, 6));
        let pending = s.pending(&user("BOB")).unwrap();
        assert_eq!(pending, vec![(7, message(b"stored"))]);
        assert!(s.acknowledge(&user("bOb"), 7).unwrap());
        assert_eq!(s.queue_depth(&user("bob")).unwrap(), (0, 0));

        // And what the store writes is keyed the same way.
        s.enqueue(&user("Carol"), &message(b"new")).unwrap();
        let txn = s.db.begin_read().unwrap();
        let stats = txn.open_table(QUEUE_STATS).unwrap();
        assert_eq!(stats.get("carol").unwrap().unwrap().value(), (1, 3));
    }

    /// An empty (truncated) database file is refused with an error naming
    /// it, and left as it was; a missing one is created.
    #[test]
    fn an_empty_database_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DATABASE_FILE);
        std::fs::write(&path, b"").unwrap();
        let error = Store::open(dir.path(), LIMITS).unwrap_err();
        let StoreError::Unusable { path: named, .. } = &error else {
            panic!("expected Unusable, got {error:?}");
        };
        assert_eq!(named, &path);
        assert!(error.to_string().contains(&path.display().to_string()));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

        // Garbage is refused the same way.
        std::fs::write(&path, vec![0x5a; 4096]).unwrap();
        assert!(matches!(
            Store::open(dir.path(), LIMITS),
            Err(StoreError::Unusable { .. })
        ));

        let fresh = tempfile::tempdir().unwrap();
        let s = store(fresh.path(), LIMITS);
        assert_eq!(s.claim(&record("a1", 1), 8).unwrap(), Claim::New);
        drop(s);
        let s = store(fresh.path(), LIMITS);
        assert!(s.lookup(&user("a1")).unwrap().is_some());
    }
}
