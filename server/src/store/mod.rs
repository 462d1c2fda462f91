//! What the relay keeps on disk, in one redb database in the data
//! directory: which identity owns which name, each identity's newest
//! signed prekeys, who is a member of which room, and every delivery
//! until its recipient acknowledges it.
//!
//! Nothing else is stored: no plaintext (the relay never has any), no
//! session keys, no logs of who talked to whom beyond the stored
//! deliveries themselves, which are deleted once acknowledged or expired.
//!
//! This module opens the database and defines its tables and records; the
//! name directory is in `names`, the prekey directory in `prekeys`, the
//! stored deliveries in `inbox`, the memberships in `members`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Builder, Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sotto_proto::UserName;
use tracing::{debug, error, warn};

use crate::metrics::Metrics;

mod backup;
#[cfg(any(test, feature = "fault-injection"))]
pub mod fault;
mod inbox;
mod members;
mod names;
mod prekeys;

pub use inbox::{Enqueue, NewDelivery, Outcome, Queued, Recipient, Stored, Write};

pub use members::Membership;
pub use prekeys::{PrekeyDirectory, PrekeyRecord, keep_newest};

/// File name of the database in the data directory.
pub const DATABASE_FILE: &str = "relay.redb";

pub use backup::{Copied, backup_stopped, table_entries};

// The tables are keyed by a user's name as its `UserKey`'s string form
// (`UserName::key().as_str()`): the lower-cased name, byte for byte what
// relays wrote before the key had a type, so existing databases open
// unchanged. The key's string is the database format: it must not change.

/// A user's key -> [`NameRecord`].
const NAMES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("names");
/// Before every delivery was stored: (recipient's key, id) -> a
/// [`Queued`]; moved into [`INBOX`] and [`BODIES`] at open.
const QUEUE: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("queue");
/// Body id -> the body shared by the recipients of one `Send`.
const BODIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("bodies");
/// Body id -> (recipients still holding it, body length, the two halves
/// of its [`BODY_HASHES`] key).
const BODY_REFS: TableDefinition<'_, u64, (u64, u64, u64, u64)> = TableDefinition::new("body_meta");
/// A stored body's hash (its sender and bytes, 16 bytes) -> its id: a
/// `Send` of the same bytes again (a client resending what it was not told
/// was stored) is answered `Sent` and stored no second time.
const BODY_HASHES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("body_hashes");
/// (recipient's key, delivery id) -> the recipient's entry (body id, slot).
const INBOX: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("inbox");
/// Recipient's key -> (deliveries, bytes) stored.
const QUEUE_STATS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("queue_stats");
/// Room -> (bodies, bytes) stored.
const ROOM_STATS: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("room_stats");
/// (room, member's key) -> [`MemberRecord`].
const MEMBERS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("members");
/// Counters: `next_id` (the ceiling of the ids handed out: every id the
/// relay ever handed out, stored or not, is below it; see [`Ids`]), and
/// `names_per_key`, set once [`NAMES_PER_KEY`] has been filled from
/// [`NAMES`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// Fingerprint -> how many names in [`NAMES`] it owns.
const NAMES_PER_KEY: TableDefinition<'_, &[u8], u64> = TableDefinition::new("names_per_key");
/// Fingerprint -> the identity's newest signed prekeys (a postcard
/// `Vec<PrekeyRecord>`, newest first, at most `MAX_PREKEYS`).
const PREKEYS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("prekeys");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database refused an operation.
    #[error("database: {0}")]
    Database(String),
    /// The database's storage failed (a full disk, an I/O error): the
    /// operation did not happen, and the database is reopened on a later
    /// one.
    #[error("storage failed: {0}")]
    Storage(String),
    /// A storage failure broke the database and it is not open again yet
    /// (it is reopened on a later operation, after a backoff).
    #[error("the database is unavailable after a storage failure")]
    Unavailable,
    /// A stored record did not decode (the file is damaged).
    #[error("damaged record in the database")]
    Corrupt,
    /// The NATS cluster a clustered relay keeps its state in refused the
    /// operation or could not be reached (nothing was changed, or the
    /// change is unknown: see each operation).
    #[error("cluster: {0}")]
    Cluster(String),
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

/// A redb error as a [`StoreError`]: a failure of the storage (which
/// poisons the database until it is reopened) is [`StoreError::Storage`].
fn db_err<E: Into<redb::Error>>(error: E) -> StoreError {
    match error.into() {
        error @ (redb::Error::Io(_)
        | redb::Error::PreviousIo
        | redb::Error::DatabaseClosed
        | redb::Error::Backend(_)
        | redb::Error::LockPoisoned(_)) => StoreError::Storage(error.to_string()),
        error => StoreError::Database(error.to_string()),
    }
}

/// A record that does not encode.
fn encode_err(error: postcard::Error) -> StoreError {
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

/// A member of a room, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's name as registered.
    pub name: UserName,
    /// When it joined, seconds since the Unix epoch.
    pub joined_at: u64,
    /// When it was last connected (or joined), seconds since the epoch.
    pub last_seen: u64,
}

/// Bounds of what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most deliveries stored for one user.
    pub max_messages: u64,
    /// Most bytes stored for one user (bodies and slots).
    pub max_bytes: u64,
    /// Oldest delivery kept.
    pub max_age: Duration,
    /// Most bodies stored for one room.
    pub room_max_messages: u64,
    /// Most bytes of bodies stored for one room.
    pub room_max_bytes: u64,
}

/// The relay's database.
///
/// A storage failure (a full disk, an I/O error) poisons a redb
/// [`Database`]: every later operation on it fails with
/// `StorageError::PreviousIo` until it is closed and opened again. The
/// store logs each failure, refuses the operation, and reopens the file
/// (redb repairs it on open if the failure left it needing a repair) on a
/// later operation, no sooner than a backoff that doubles with each
/// failure in a row ([`Recovery`]), so that a disk that stays full is not
/// reopened in a loop. Until then operations fail with
/// [`StoreError::Unavailable`]. On the healthy path an operation costs one
/// atomic load and one uncontended shared lock (an atomic increment, no
/// system call) beyond redb's own transaction.
#[derive(Debug)]
pub struct Store {
    /// `None` while the database could not be reopened.
    db: RwLock<Option<Database>>,
    /// Set by a storage failure: the next operation reopens first.
    broken: AtomicBool,
    /// Reopens so far: an operation that fails on a database replaced
    /// meanwhile does not mark the new one broken.
    generation: AtomicU64,
    /// Storage failures in a row since the last write that succeeded.
    failures: AtomicU32,
    /// When the next reopen may be tried; only touched after a failure.
    health: Mutex<Health>,
    path: PathBuf,
    opener: Opener,
    limits: QueueLimits,
    recovery: Recovery,
    metrics: Arc<Metrics>,
    ids: Mutex<Ids>,
    /// Every id up to this one is stored, acknowledged or refused: none
    /// is still on its way to the database ([`Store::resolved`]).
    resolved: AtomicU64,
    /// The highest id reserved (the `next` of [`Ids`] less one).
    reserved: AtomicU64,
}

/// Delivery and body ids, handed out from memory ([`Store::reserve_ids`])
/// below a ceiling kept in the database, raised (with an fsync) a block
/// at a time before any id above it is handed out. An id given to a
/// connection before its delivery is stored (protocol.md 9.7) so stays
/// unique across a crash: the relay restarts counting from the ceiling.
#[derive(Debug)]
struct Ids {
    next: u64,
    ceiling: u64,
}

/// How far the ceiling of [`Ids`] is raised at a time.
const ID_BLOCK: u64 = 1 << 20;

/// How soon the store tries to reopen its database after a storage
/// failure: `first_retry` after the first failure in a row, doubling with
/// each further one up to `max_retry`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The wait after the first failure.
    pub first_retry: Duration,
    /// The longest wait.
    pub max_retry: Duration,
}

impl Default for Recovery {
    fn default() -> Self {
        Self {
            first_retry: Duration::from_millis(100),
            max_retry: Duration::from_secs(5),
        }
    }
}

impl Recovery {
    /// The wait after `failures` storage failures in a row (at least one).
    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.first_retry
            .saturating_mul(1 << doublings)
            .min(self.max_retry)
    }
}

#[derive(Debug, Default)]
struct Health {
    /// No reopen before this.
    retry_at: Option<Instant>,
    /// Operations refused since the last attempt, for its log line.
    refused: u64,
}

/// How the database file is opened: as redb opens a file, or (tests only)
/// through a [`fault::Disk`] that can be filled.
#[derive(Clone, Debug)]
enum Opener {
    File,
    #[cfg(any(test, feature = "fault-injection"))]
    Disk(fault::Disk),
}

impl Opener {
    /// Opens the database at `path`, creating it if `create`; a database
    /// that needs a repair (after a crash or a failed commit) is repaired.
    fn open(&self, path: &Path, create: bool) -> Result<Database, redb::DatabaseError> {
        let mut builder = Builder::new();
        let database = path.display().to_string();
        let told = AtomicBool::new(false);
        builder.set_repair_callback(move |_| {
            if !told.swap(true, Ordering::Relaxed) {
                warn!(
                    database,
                    "repairing the database (it was not closed cleanly)"
                );
            }
        });
        match self {
            Self::File if create => builder.create(path),
            Self::File => builder.open(path),
            #[cfg(any(test, feature = "fault-injection"))]
            Self::Disk(disk) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(create)
                    .truncate(false)
                    .open(path)?;
                builder.create_with_backend(disk.backend(file)?)
            }
        }
    }
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
        Self::open_with(dir, limits, Opener::File, Recovery::default())
    }

    /// [`Store::open`] on a [`fault::Disk`] that the caller can fill and
    /// free, recovering as `recovery` says. For tests only.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn open_on(
        dir: &Path,
        limits: QueueLimits,
        disk: &fault::Disk,
        recovery: Recovery,
    ) -> Result<Self, StoreError> {
        Self::open_with(dir, limits, Opener::Disk(disk.clone()), recovery)
    }

    /// Counts storage failures and reopens in `metrics` (the relay's).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn open_with(
        dir: &Path,
        limits: QueueLimits,
        opener: Opener,
        recovery: Recovery,
    ) -> Result<Self, StoreError> {
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
            Ok(_) => opener
                .open(&path, false)
                .map_err(|e| unusable(e.to_string()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => opener
                .open(&path, true)
                .map_err(|e| unusable(e.to_string()))?,
            Err(error) => return Err(unusable(error.to_string())),
        };
        let txn = db.begin_write().map_err(|e| unusable(e.to_string()))?;
        {
            let names = txn.open_table(NAMES).map_err(|e| unusable(e.to_string()))?;
            txn.open_table(QUEUE_STATS).map_err(db_err)?;
            txn.open_table(ROOM_STATS).map_err(db_err)?;
            txn.open_table(MEMBERS).map_err(db_err)?;
            txn.open_table(BODY_REFS).map_err(db_err)?;
            txn.open_table(BODY_HASHES).map_err(db_err)?;
            txn.open_table(PREKEYS).map_err(db_err)?;
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
        migrate_queue(&txn)?;
        let ceiling = {
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let stored = meta
                .get("next_id")
                .map_err(db_err)?
                .map_or(1, |v| v.value());
            if meta.remove(backup::FROM_BACKUP).map_err(db_err)?.is_some() {
                // A restored backup: ids handed out after its snapshot are
                // not below its ceiling. Move on past them.
                let ceiling =
                    backup::restored_ceiling(stored, now_secs()).ok_or(StoreError::Corrupt)?;
                meta.insert("next_id", ceiling).map_err(db_err)?;
                tracing::info!(
                    database = %path.display(),
                    from = stored,
                    to = ceiling,
                    "opened a restored backup: delivery ids go on past any handed out since it was made"
                );
                ceiling
            } else {
                stored
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            broken: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            health: Mutex::default(),
            path,
            opener,
            limits,
            recovery,
            metrics: Arc::default(),
            ids: Mutex::new(Ids {
                next: ceiling,
                ceiling,
            }),
            resolved: AtomicU64::new(ceiling.saturating_sub(1)),
            reserved: AtomicU64::new(ceiling.saturating_sub(1)),
        })
    }

    /// Reserves `n` consecutive ids for deliveries and bodies: the first
    /// is returned. None of them was handed out before, in this run or an
    /// earlier one, and none will be again (see [`Ids`]).
    pub fn reserve_ids(&self, n: u64) -> Result<u64, StoreError> {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        let end = ids.next.checked_add(n).ok_or(StoreError::Corrupt)?;
        if end > ids.ceiling {
            let ceiling = end.saturating_add(ID_BLOCK);
            self.write("reserve_ids", |db| {
                let txn = db.begin_write().map_err(db_err)?;
                {
                    let mut meta = txn.open_table(META).map_err(db_err)?;
                    meta.insert("next_id", ceiling).map_err(db_err)?;
                }
                txn.commit().map_err(db_err)
            })?;
            ids.ceiling = ceiling;
        }
        let first = ids.next;
        ids.next = end;
        self.reserved
            .store(end.saturating_sub(1), Ordering::Release);
        Ok(first)
    }

    /// Every delivery id up to the one returned is stored, acknowledged
    /// or refused: none is on its way to the database any more (the
    /// committer says so after each commit, [`Store::mark_resolved`]).
    pub fn resolved(&self) -> u64 {
        self.resolved.load(Ordering::Acquire)
    }

    /// Records that every id up to `id` is resolved (see
    /// [`Store::resolved`]); never moves back.
    pub fn mark_resolved(&self, id: u64) {
        self.resolved.fetch_max(id, Ordering::Release);
    }

    /// The highest id reserved so far (0 if none). Lock-free: a
    /// registration reads it while it holds the relay's registry.
    pub fn last_reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Runs a read-only operation on the database (see [`Store::write`]).
    fn read<T>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(operation, false, work)
    }

    /// Runs an operation that writes: reopens the database first if a
    /// storage failure broke it, and on a storage failure logs it, counts
    /// it and marks the database for reopening.
    fn write<T>(
        &self,
        operation: &'static str,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(operation, true, work)
    }

    fn run<T>(
        &self,
        operation: &'static str,
        writes: bool,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.recover(operation)?;
        }
        let slot = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = slot.as_ref() else {
            // Reopening failed between the check above and here.
            return Err(StoreError::Unavailable);
        };
        match work(db) {
            Ok(done) => {
                if writes && self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                Ok(done)
            }
            Err(error @ StoreError::Storage(_)) => {
                let generation = self.generation.load(Ordering::Relaxed);
                drop(slot);
                self.failed(operation, &error, generation);
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    /// Records a storage failure of `operation` on the database of
    /// `generation`.
    fn failed(&self, operation: &'static str, error: &StoreError, generation: u64) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        Metrics::inc(&self.metrics.storage_failures);
        if self.generation.load(Ordering::Relaxed) != generation {
            // The database was reopened meanwhile: the new one is not broken.
            error!(
                database = %self.path.display(),
                operation,
                %error,
                "storage failed; the operation was refused (the database was reopened since)"
            );
            return;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let delay = self.recovery.delay(failures);
        health.retry_at = Some(Instant::now() + delay);
        self.broken.store(true, Ordering::Release);
        self.metrics.storage_unavailable.store(1, Ordering::Relaxed);
        error!(
            database = %self.path.display(),
            operation,
            %error,
            failures,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "storage failed; the operation was refused and the database will be reopened"
        );
    }

    /// Reopens the database after a storage failure, if its backoff has
    /// passed; otherwise refuses `operation`.
    fn recover(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.broken.load(Ordering::Acquire) {
            return Ok(()); // reopened by another operation meanwhile
        }
        let now = Instant::now();
        if health.retry_at.is_some_and(|at| now < at) {
            health.refused += 1;
            return Err(StoreError::Unavailable);
        }
        let refused = std::mem::take(&mut health.refused);
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // Closing the broken handle releases the file's lock; its error is
        // the failure already logged.
        if let Some(broken) = slot.take()
            && let Err(error) = broken.close()
        {
            debug!(database = %self.path.display(), %error, "closed the broken database");
        }
        match self.opener.open(&self.path, false) {
            Ok(db) => {
                *slot = Some(db);
                self.generation.fetch_add(1, Ordering::Relaxed);
                health.retry_at = None;
                self.broken.store(false, Ordering::Release);
                self.metrics.storage_unavailable.store(0, Ordering::Relaxed);
                Metrics::inc(&self.metrics.storage_reopened);
                warn!(
                    database = %self.path.display(),
                    operation,
                    refused,
                    "database reopened after a storage failure"
                );
                Ok(())
            }
            Err(error) => {
                let failures = self
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                let delay = self.recovery.delay(failures);
                health.retry_at = Some(now + delay);
                Metrics::inc(&self.metrics.storage_failures);
                error!(
                    database = %self.path.display(),
                    operation,
                    %error,
                    failures,
                    refused,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "could not reopen the database after a storage failure; operations are refused until it opens"
                );
                Err(StoreError::Unavailable)
            }
        }
    }
}

/// Moves the deliveries of a database from before every delivery was
/// stored (the `queue` table) into the inbox, each keeping its id, and
/// deletes the old table. Their bounds' counts are unchanged.
fn migrate_queue(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    use redb::TableHandle;
    let exists = txn
        .list_tables()
        .map_err(db_err)?
        .any(|t| t.name() == QUEUE.name());
    if !exists {
        txn.open_table(BODIES).map_err(db_err)?;
        txn.open_table(INBOX).map_err(db_err)?;
        return Ok(());
    }
    {
        let queue = txn.open_table(QUEUE).map_err(db_err)?;
        let mut bodies = txn.open_table(BODIES).map_err(db_err)?;
        let mut refs = txn.open_table(BODY_REFS).map_err(db_err)?;
        let mut inbox = txn.open_table(INBOX).map_err(db_err)?;
        for entry in queue.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let (user, id) = key.value();
            let old: Queued = decode(value.value())?;
            let body_len = old.body.len() as u64;
            let size = body_len + old.slot.as_ref().map_or(0, |s| s.len() as u64);
            let body = inbox::BodyRecord {
                from: old.from,
                to: old.to,
                body: old.body,
            };
            let record = inbox::InboxRecord {
                body: id,
                queued_at: old.queued_at,
                size,
                slot: old.slot,
                inline: None,
            };
            let body = postcard::to_stdvec(&body).map_err(encode_err)?;
            let record = postcard::to_stdvec(&record).map_err(encode_err)?;
            bodies.insert(id, body.as_slice()).map_err(db_err)?;
            // Moved bodies get no hash: their senders' resends are long past.
            refs.insert(id, (1, body_len, 0, 0)).map_err(db_err)?;
            inbox
                .insert((user, id), record.as_slice())
                .map_err(db_err)?;
        }
    }
    txn.delete_table(QUEUE).map_err(db_err)?;
    Ok(())
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt)
}

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
