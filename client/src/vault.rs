//! The client's local store, encrypted at rest: one redb database in the
//! data directory whose every value is sealed by
//! [`sotto_crypto::at_rest::RecordCipher`] under a key derived from the
//! user's identity ([`sotto_crypto::Identity::local_storage_key`]). This
//! module is only the database; the format of a sealed value is the
//! crypto crate's.
//!
//! Keys (table names and record keys) are stored in the clear, so callers
//! use opaque keys (numbers, hashes), never message content. Each value is
//! `nonce (12 random bytes) || ciphertext || tag`, with the table name and
//! the record key as associated data, so a value cannot be moved to
//! another record or table without failing to open. Someone who copies the
//! data directory while the app is closed learns how many records there
//! are and their sizes, not what they say.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use sotto_crypto::at_rest::{RecordCipher, StorageKey};
use zeroize::Zeroizing;

/// File name of the database in the data directory.
pub const VAULT_FILE: &str = "client.redb";

/// Memory redb may use to cache pages (its default is 1 GiB, which a
/// client that pins many contacts would otherwise fill).
const CACHE_SIZE: usize = 32 * 1024 * 1024;

/// Why the vault failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The database refused an operation.
    #[error("local database: {0}")]
    Database(String),
    /// Another process (the app or `sotto-cli`) has the database open.
    #[error(
        "this data directory is in use by another sotto (the app or sotto-cli): close it first"
    )]
    InUse,
    /// A value did not open: damaged, moved, or written under another key.
    #[error("a record in the local database is damaged or was not written by this identity")]
    Corrupt,
}

fn db_err<E: std::fmt::Display>(error: E) -> VaultError {
    VaultError::Database(error.to_string())
}

/// The encrypted store.
///
/// Every write is durable when it returns, except inside a batch
/// ([`Vault::begin_batch`]): then every write of every caller goes into the
/// batch's one write transaction, every read sees those writes, and
/// nothing of it is on disk until [`Vault::commit_batch`] commits it all,
/// durably, at once.
pub struct Vault {
    /// The database: shared by every read and write (each only begins its
    /// transaction under the lock), held alone by [`Vault::compact`], the
    /// one operation that needs `&mut Database`.
    db: RwLock<Database>,
    cipher: RecordCipher,
    batch: Mutex<Batch>,
    /// Test hook: commits (batched or not) fail while set.
    #[cfg(test)]
    fail_commits: std::sync::atomic::AtomicBool,
    /// Test hook: durable commits made so far.
    #[cfg(test)]
    commits: std::sync::atomic::AtomicU64,
}

/// The state of the vault's batch.
#[derive(Default)]
enum Batch {
    /// No batch: each write commits on its own.
    #[default]
    Closed,
    /// A batch is open: `txn` is begun at its first write (a batch that
    /// writes nothing commits nothing), and `failed` is set once a write
    /// in it failed, so that the batch is never committed with part of an
    /// operation in it.
    Open {
        txn: Option<Box<WriteTransaction>>,
        failed: bool,
    },
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").finish_non_exhaustive()
    }
}

type Table<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// A record's key and its opened value (wiped when dropped).
pub type Record = (Vec<u8>, Zeroizing<Vec<u8>>);

impl Vault {
    /// Opens (or creates) the vault at `path` with `key`.
    pub fn open(path: &Path, key: &StorageKey) -> Result<Self, VaultError> {
        sotto_fsutil::create_private_file(path).map_err(db_err)?;
        let db = Database::builder()
            .set_cache_size(CACHE_SIZE)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => VaultError::InUse,
                e => db_err(e),
            })?;
        Ok(Self {
            db: RwLock::new(db),
            cipher: RecordCipher::new(key),
            batch: Mutex::new(Batch::Closed),
            #[cfg(test)]
            fail_commits: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            commits: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The database, shared: only to begin a transaction (transactions
    /// are not bound to the guard, which is dropped at once).
    fn db(&self) -> Result<RwLockReadGuard<'_, Database>, VaultError> {
        self.db
            .read()
            .map_err(|_| VaultError::Database("the database lock is poisoned".to_owned()))
    }

    fn batch(&self) -> Result<MutexGuard<'_, Batch>, VaultError> {
        self.batch
            .lock()
            .map_err(|_| VaultError::Database("the batch lock is poisoned".to_owned()))
    }

    /// Commits `txn` durably.
    fn commit(&self, txn: WriteTransaction) -> Result<(), VaultError> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            if self.fail_commits.load(Ordering::SeqCst) {
                txn.abort().map_err(db_err)?;
                return Err(VaultError::Database("commit failed (test hook)".to_owned()));
            }
            self.commits.fetch_add(1, Ordering::SeqCst);
        }
        txn.commit().map_err(db_err)
    }

    /// Runs `write` in the open batch's transaction, or in a transaction
    /// of its own committed durably before this returns. A failed write
    /// fails its batch.
    fn write<R>(
        &self,
        write: impl FnOnce(&WriteTransaction) -> Result<R, VaultError>,
    ) -> Result<R, VaultError> {
        let mut batch = self.batch()?;
        match &mut *batch {
            Batch::Open { txn, failed } => {
                if *failed {
                    return Err(VaultError::Database(
                        "an earlier write of this batch failed".to_owned(),
                    ));
                }
                let result = match txn {
                    Some(txn) => write(txn),
                    None => match self.db().and_then(|db| db.begin_write().map_err(db_err)) {
                        Ok(begun) => write(txn.insert(Box::new(begun))),
                        Err(e) => Err(e),
                    },
                };
                *failed = result.is_err();
                result
            }
            Batch::Closed => {
                drop(batch);
                let txn = self.db()?.begin_write().map_err(db_err)?;
                let result = write(&txn)?;
                self.commit(txn)?;
                Ok(result)
            }
        }
    }

    /// Runs `read` on `table` as the open batch has it (its own writes
    /// included), or as committed; `None` if the table does not exist.
    fn read<R>(
        &self,
        table: &str,
        read: impl FnOnce(Option<&dyn Lookup>) -> Result<R, VaultError>,
    ) -> Result<R, VaultError> {
        let batch = self.batch()?;
        if let Batch::Open { txn: Some(txn), .. } = &*batch {
            let t = txn.open_table(Table::new(table)).map_err(db_err)?;
            return read(Some(&t));
        }
        drop(batch);
        let txn = self.db()?.begin_read().map_err(db_err)?;
        match txn.open_table(Table::new(table)) {
            Ok(t) => read(Some(&t)),
            Err(redb::TableError::TableDoesNotExist(_)) => read(None),
            Err(e) => Err(db_err(e)),
        }
    }

    /// Opens a batch: until [`Vault::commit_batch`] or
    /// [`Vault::abort_batch`], every write (from any caller) goes into one
    /// write transaction, and reads see it. Only one batch is open at a
    /// time.
    pub(crate) fn begin_batch(&self) -> Result<(), VaultError> {
        let mut batch = self.batch()?;
        if matches!(*batch, Batch::Open { .. }) {
            return Err(VaultError::Database("a batch is already open".to_owned()));
        }
        *batch = Batch::Open {
            txn: None,
            failed: false,
        };
        Ok(())
    }

    /// Commits the open batch durably, all of it or nothing: an error if a
    /// write in it failed (then nothing of it is kept) or the commit did.
    pub(crate) fn commit_batch(&self) -> Result<(), VaultError> {
        let mut batch = self.batch()?;
        match std::mem::take(&mut *batch) {
            Batch::Closed => Err(VaultError::Database("no batch is open".to_owned())),
            Batch::Open { txn: None, failed } => {
                if failed {
                    Err(VaultError::Database(
                        "a write of this batch failed".to_owned(),
                    ))
                } else {
                    Ok(())
                }
            }
            Batch::Open {
                txn: Some(txn),
                failed,
            } => {
                drop(batch);
                if failed {
                    txn.abort().map_err(db_err)?;
                    return Err(VaultError::Database(
                        "a write of this batch failed".to_owned(),
                    ));
                }
                self.commit(*txn)
            }
        }
    }

    /// Drops the open batch (if any) and everything written in it.
    pub(crate) fn abort_batch(&self) {
        let Ok(mut batch) = self.batch() else { return };
        if let Batch::Open { txn: Some(txn), .. } = std::mem::take(&mut *batch) {
            drop(batch);
            let _ = txn.abort();
        }
    }

    /// Compacts the database file (redb `Database::compact`): live pages
    /// move to the front of the file and the rest is cut off, so that
    /// records deleted before it no longer linger in free pages. It runs
    /// in redb's own durable transactions: a crash during it leaves the
    /// database as last committed. `Ok(false)` if it could not run now (a
    /// batch or another transaction is open: try again later).
    pub(crate) fn compact(&self) -> Result<bool, VaultError> {
        // The batch lock first (as every write takes it): no batch begins
        // while the database is held alone.
        let batch = self.batch()?;
        if matches!(*batch, Batch::Open { .. }) {
            return Ok(false);
        }
        let mut db = self
            .db
            .write()
            .map_err(|_| VaultError::Database("the database lock is poisoned".to_owned()))?;
        let compacted = match db.compact() {
            Ok(_) => Ok(true),
            Err(redb::CompactionError::TransactionInProgress) => Ok(false),
            Err(e) => Err(db_err(e)),
        };
        drop(db);
        drop(batch);
        compacted
    }

    /// Test hook: makes every commit fail (`true`) or succeed again.
    #[cfg(test)]
    pub(crate) fn fail_commits(&self, fail: bool) {
        self.fail_commits
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test hook: the durable commits made so far.
    #[cfg(test)]
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn seal(&self, table: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.cipher
            .seal(&mut rand::rng(), table, key, value)
            .map_err(|_| VaultError::Corrupt)
    }

    fn open_value(
        &self,
        table: &str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.cipher
            .open(table, key, sealed)
            .map_err(|_| VaultError::Corrupt)
    }

    /// Stores `value` under `key` in `table`, durably.
    pub fn put(&self, table: &str, key: &[u8], value: &[u8]) -> Result<(), VaultError> {
        let sealed = self.seal(table, key, value)?;
        self.write(|txn| {
            let mut t = txn.open_table(Table::new(table)).map_err(db_err)?;
            t.insert(key, sealed.as_slice()).map_err(db_err)?;
            Ok(())
        })
    }

    /// Stores several `(table, key, value)` records in one durable
    /// transaction: all of them or none.
    pub fn put_all(&self, records: &[(&str, &[u8], &[u8])]) -> Result<(), VaultError> {
        self.put_and_remove(records, &[])
    }

    /// Stores `records` and removes the `(table, key)` records of
    /// `removed`, in one durable transaction: all of it or none.
    pub fn put_and_remove(
        &self,
        records: &[(&str, &[u8], &[u8])],
        removed: &[(&str, &[u8])],
    ) -> Result<(), VaultError> {
        let sealed = records
            .iter()
            .map(|(table, key, value)| self.seal(table, key, value))
            .collect::<Result<Vec<_>, _>>()?;
        self.write(|txn| {
            for ((table, key, _), sealed) in records.iter().zip(&sealed) {
                let mut t = txn.open_table(Table::new(table)).map_err(db_err)?;
                t.insert(*key, sealed.as_slice()).map_err(db_err)?;
            }
            for (table, key) in removed {
                let mut t = txn.open_table(Table::new(table)).map_err(db_err)?;
                t.remove(*key).map_err(db_err)?;
            }
            Ok(())
        })
    }

    /// The value under `key` in `table`, if any.
    pub fn get(&self, table: &str, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let sealed = self.read(table, |t| match t {
            Some(t) => t.sealed(key),
            None => Ok(None),
        })?;
        sealed
            .map(|sealed| self.open_value(table, key, &sealed))
            .transpose()
    }

    /// Removes `key` from `table`.
    pub fn remove(&self, table: &str, key: &[u8]) -> Result<(), VaultError> {
        self.write(|txn| {
            let mut t = txn.open_table(Table::new(table)).map_err(db_err)?;
            t.remove(key).map_err(db_err)?;
            Ok(())
        })
    }

    /// Every record of `table` in key order (byte-wise), opened.
    pub fn all(&self, table: &str) -> Result<Vec<Record>, VaultError> {
        self.each(table)?
            .into_iter()
            .map(|(key, value)| Ok((key, value?)))
            .collect()
    }

    /// Every record of `table` in key order, each opened on its own: one
    /// damaged value does not hide the others.
    #[allow(clippy::type_complexity)] // a record and its own outcome
    pub fn each(
        &self,
        table: &str,
    ) -> Result<Vec<(Vec<u8>, Result<Zeroizing<Vec<u8>>, VaultError>)>, VaultError> {
        let sealed = self.read(table, |t| match t {
            Some(t) => t.every(),
            None => Ok(Vec::new()),
        })?;
        Ok(sealed
            .into_iter()
            .map(|(key, sealed)| {
                let value = self.open_value(table, &key, &sealed);
                (key, value)
            })
            .collect())
    }

    /// Test hook: stores `raw` as the value under `key`, unsealed, as
    /// damage on disk would leave it.
    #[cfg(test)]
    pub(crate) fn put_raw(&self, table: &str, key: &[u8], raw: &[u8]) -> Result<(), VaultError> {
        self.write(|txn| {
            let mut t = txn.open_table(Table::new(table)).map_err(db_err)?;
            t.insert(key, raw).map_err(db_err)?;
            Ok(())
        })
    }

    /// Test hook: the value under `key` as stored (sealed).
    #[cfg(test)]
    pub(crate) fn get_raw(&self, table: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.read(table, |t| match t {
            Some(t) => t.sealed(key),
            None => Ok(None),
        })
        .ok()?
    }
}

/// A record's key and its value as stored (sealed).
type SealedRecord = (Vec<u8>, Vec<u8>);

/// Reading a table, whether it is read in a write transaction (a batch's)
/// or a read transaction.
trait Lookup {
    /// The sealed value under `key`.
    fn sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, VaultError>;
    /// Every record, sealed, in key order.
    fn every(&self) -> Result<Vec<SealedRecord>, VaultError>;
}

impl<T: ReadableTable<&'static [u8], &'static [u8]>> Lookup for T {
    fn sealed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, VaultError> {
        Ok(self.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn every(&self) -> Result<Vec<SealedRecord>, VaultError> {
        let mut records = Vec::new();
        for entry in self.iter().map_err(db_err)? {
            let (key, sealed) = entry.map_err(db_err)?;
            records.push((key.value().to_vec(), sealed.value().to_vec()));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_from(bytes: [u8; 32]) -> StorageKey {
        StorageKey::from_bytes(bytes)
    }

    fn key(byte: u8) -> StorageKey {
        key_from([byte; 32])
    }

    #[cfg(unix)]
    #[test]
    fn the_database_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAULT_FILE);
        let vault = Vault::open(&path, &key(1)).unwrap();
        vault
            .put_all(&[("a", b"1", b"one"), ("b", b"2", b"two")])
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(&vault.get("b", b"2").unwrap().unwrap()[..], b"two");
    }

    #[test]
    fn values_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAULT_FILE);
        {
            let vault = Vault::open(&path, &key(1)).unwrap();
            vault.put("history", &1u64.to_be_bytes(), b"first").unwrap();
            vault
                .put("history", &2u64.to_be_bytes(), b"second")
                .unwrap();
            vault.remove("history", &1u64.to_be_bytes()).unwrap();
        }
        let vault = Vault::open(&path, &key(1)).unwrap();
        let all = vault.all("history").unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(&all[0].1[..], b"second");
        assert_eq!(vault.get("history", &9u64.to_be_bytes()).unwrap(), None);
        assert!(vault.all("never-written").unwrap().is_empty());
        // Open twice (the app and sotto-cli on one data directory): refused
        // with an error that says so.
        assert!(matches!(
            Vault::open(&path, &key(1)),
            Err(VaultError::InUse)
        ));
    }

    #[test]
    fn nothing_is_stored_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAULT_FILE);
        let marker = b"PLAINTEXT-MARKER-0b9d";
        {
            let vault = Vault::open(&path, &key(1)).unwrap();
            vault.put("history", b"k", marker).unwrap();
        }
        let file = std::fs::read(&path).unwrap();
        assert!(!file.windows(marker.len()).any(|w| w == marker));
    }

    #[test]
    fn another_key_or_a_moved_value_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAULT_FILE);
        {
            let vault = Vault::open(&path, &key(1)).unwrap();
            vault.put("history", b"a", b"for a").unwrap();
        }
        let wrong = Vault::open(&path, &key(2)).unwrap();
        assert!(matches!(
            wrong.get("history", b"a"),
            Err(VaultError::Corrupt)
        ));
        drop(wrong);

        // Copy the sealed bytes of record "a" to record "b" behind the
        // vault's back: it must not open there.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(Table::new("history")).unwrap();
            let sealed = t.get(b"a".as_slice()).unwrap().unwrap().value().to_vec();
            t.insert(b"b".as_slice(), sealed.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        drop(db);
        let vault = Vault::open(&path, &key(1)).unwrap();
        assert_eq!(&vault.get("history", b"a").unwrap().unwrap()[..], b"for a");
        assert!(matches!(
            vault.get("history", b"b"),
            Err(VaultError::Corrupt)
        ));
    }

    fn contains(file: &[u8], needle: &[u8]) -> bool {
        file.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_removed_record_is_gone_from_the_file_after_compaction_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VAULT_FILE);
        let vault = Vault::open(&path, &key(1)).unwrap();
        // Enough records around it that the file has pages to move.
        for n in 0u64..200 {
            vault
                .put(
                    "history",
                    &n.to_be_bytes(),
                    &[u8::try_from(n % 251).unwrap(); 300],
                )
                .unwrap();
        }
        let doomed = [7u64, 100, 150];
        let sealed: Vec<Vec<u8>> = doomed
            .iter()
            .map(|n| vault.get_raw("history", &n.to_be_bytes()).unwrap())
            .collect();
        for bytes in &sealed {
            assert!(contains(&std::fs::read(&path).unwrap(), bytes));
        }
        for n in doomed {
            vault.remove("history", &n.to_be_bytes()).unwrap();
        }
        assert!(vault.compact().unwrap());
        let file = std::fs::read(&path).unwrap();
        for bytes in &sealed {
            assert!(!contains(&file, bytes), "a deleted record lingers");
        }
        // Not while a batch is open (it would wait on the batch).
        vault.begin_batch().unwrap();
        vault.put("history", b"x", b"in the batch").unwrap();
        assert!(!vault.compact().unwrap());
        vault.commit_batch().unwrap();
        drop(vault);
        let vault = Vault::open(&path, &key(1)).unwrap();
        let all = vault.all("history").unwrap();
        assert_eq!(all.len(), 198);
        assert_eq!(
            &vault.get("history", b"x").unwrap().unwrap()[..],
            b"in the batch"
        );
        assert_eq!(
            &vault
                .get("history", &199u64.to_be_bytes())
                .unwrap()
                .unwrap()[..],
            &[199u8; 300]
        );
    }

    /// Records in the format of this file's own sealing before it moved to
    /// `sotto_crypto::at_rest` (its associated data and AES-256-GCM, a
    /// fixed nonce; opened by that code): they must keep opening, byte for
    /// byte the same format (docs/protocol.md 20.1).
    const KNOWN_RECORDS: [(&str, &[u8], &[u8], &str); 2] = [
        (
            "history",
            &7u64.to_be_bytes(),
            b"sotto at-rest known answer",
            "a0a1a2a3a4a5a6a7a8a9aaab957708592aeb63cb4f17e2a0735aabb01fdb3730f3d9311bf97ceb2b2c5daf7aebe5359b1de15b854a14",
        ),
        (
            "settings",
            b"name",
            b"",
            "a0a1a2a3a4a5a6a7a8a9aaab90060cb33e02cc12f785f00fcb103cd0",
        ),
    ];

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn records_in_the_known_format_open_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(
            &dir.path().join(VAULT_FILE),
            &key_from(std::array::from_fn(|i| u8::try_from(i).unwrap())),
        )
        .unwrap();
        for (table, record, plain, hex) in KNOWN_RECORDS {
            let sealed = unhex(hex);
            vault.put_raw(table, record, &sealed).unwrap();
            assert_eq!(&vault.get(table, record).unwrap().unwrap()[..], plain);
            // A fresh seal has the same layout: nonce, ciphertext, tag.
            vault.put(table, record, plain).unwrap();
            let fresh = vault.get_raw(table, record).unwrap();
            assert_eq!(fresh.len(), sealed.len());
            assert_ne!(fresh, sealed, "a fresh nonce every time");
            // Any flipped bit, or another table or record, does not open.
            for bit in 0..sealed.len() * 8 {
                let mut damaged = sealed.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                vault.put_raw(table, record, &damaged).unwrap();
                assert!(matches!(vault.get(table, record), Err(VaultError::Corrupt)));
            }
            vault.put_raw("elsewhere", record, &sealed).unwrap();
            assert!(matches!(
                vault.get("elsewhere", record),
                Err(VaultError::Corrupt)
            ));
            vault.put_raw(table, b"other", &sealed).unwrap();
            assert!(matches!(
                vault.get(table, b"other"),
                Err(VaultError::Corrupt)
            ));
        }
    }
}
