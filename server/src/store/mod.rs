//! What the relay keeps on disk, in one redb database in the data
//! directory: which identity owns which name, and the offline queue of
//! ciphertext for registered users who are not connected.
//!
//! Nothing else is stored: no plaintext (the relay never has any), no
//! session keys, no logs of who talked to whom beyond the queued frames
//! themselves, which are deleted once acknowledged or expired.
//!
//! This module opens the database and defines its tables and records; the
//! name directory is in `names`, the offline queue in `queue`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sotto_proto::{Destination, UserName};

mod names;
mod queue;

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
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt)
}

#[cfg(test)]
mod tests;
