//! `relay backup`: a consistent copy of the database. The copy is one
//! read transaction's snapshot, table by table, into a new database made
//! durable before it is reported done. A running relay makes it itself
//! ([`Store::backup`], asked through its control socket, which streams
//! the copy to `relay backup`), since it holds its database file
//! exclusively; a stopped relay's is read by [`backup_stopped`].
//!
//! A copy is marked (`META` `from_backup`): the relay that opens it moves
//! its delivery ids far past anything handed out since the snapshot
//! ([`restored_ceiling`]), so that ids stay unique after a restore
//! (protocol.md 9.7).

use std::fs::File;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{
    Builder, Database, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError, TableHandle, Value, WriteTransaction,
};

use super::{
    BODIES, BODY_HASHES, BODY_REFS, DATABASE_FILE, INBOX, MEMBERS, META, NAMES, NAMES_PER_KEY,
    PREKEYS, QUEUE, QUEUE_STATS, ROOM_STATS, Store, StoreError, db_err,
};

/// The `META` key that marks a database made by [`backup`], until the
/// relay that opens it has moved its ids on.
pub(super) const FROM_BACKUP: &str = "from_backup";

/// What a backup copied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Each table of the copy, with its entries (as [`table_entries`]
    /// counts them in the file).
    pub tables: Vec<(String, u64)>,
    /// The size of the new database file, in bytes.
    pub bytes: u64,
}

impl Store {
    /// Copies the open database into `to`, an empty file opened for
    /// reading and writing, from one snapshot, while the relay goes on
    /// writing; the copy is on disk (fsynced) when this returns.
    pub fn backup(&self, to: File) -> Result<Copied, StoreError> {
        self.read("backup", |db| copy_into(db, to))
    }
}

/// [`Store::backup`] of the database in `dir`, which no relay has open
/// (a relay that runs refuses it: ask the relay).
pub fn backup_stopped(dir: &Path, to: File) -> Result<Copied, StoreError> {
    let path = dir.join(DATABASE_FILE);
    if !path.is_file() {
        return Err(StoreError::Database(format!(
            "{}: no database (a relay that has never started, or a cluster relay, keeps none)",
            path.display()
        )));
    }
    let source = Builder::new()
        .open_read_only(&path)
        .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
    copy_into(&source, to)
}

/// The entries of each table of the database file `path`, opened read
/// only (a copy received from a running relay, checked against what it
/// reported).
pub fn table_entries(path: &Path) -> Result<Vec<(String, u64)>, StoreError> {
    let database = Builder::new()
        .open_read_only(path)
        .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
    entries(&database)
}

fn entries(database: &impl ReadableDatabase) -> Result<Vec<(String, u64)>, StoreError> {
    let read = database.begin_read().map_err(db_err)?;
    let mut tables = Vec::new();
    for table in read.list_tables().map_err(db_err)? {
        let entries = read
            .open_untyped_table(table.clone())
            .map_err(db_err)?
            .len();
        tables.push((table.name().to_string(), entries.map_err(db_err)?));
    }
    tables.sort();
    Ok(tables)
}

/// Every table of `source`'s snapshot into a new database in `file`.
fn copy_into(source: &impl ReadableDatabase, file: File) -> Result<Copied, StoreError> {
    let sized = file
        .try_clone()
        .map_err(|e| StoreError::Database(format!("the backup's file: {e}")))?;
    let target = FileBackend::new(file)
        .and_then(|backend| Database::builder().create_with_backend(backend))
        .map_err(|e| StoreError::Database(format!("the backup's file: {e}")))?;
    // A failure here is the backup's (its target full, say), never taken
    // for one of the relay's storage: the relay goes on serving.
    let backup_failed = |error| match error {
        StoreError::Storage(why) => StoreError::Database(format!("the backup failed: {why}")),
        other => other,
    };
    copy_all(source, &target).map_err(backup_failed)?;
    let tables = entries(&target).map_err(backup_failed)?;
    drop(target);
    let bytes = sized.metadata().map_or(0, |meta| meta.len());
    Ok(Copied { tables, bytes })
}

/// Every table of `source`'s snapshot into `target`, in one durable
/// transaction; a table this relay does not know is an error, never
/// left out.
fn copy_all(source: &impl ReadableDatabase, target: &Database) -> Result<(), StoreError> {
    let read = source.begin_read().map_err(db_err)?;
    if read
        .list_multimap_tables()
        .map_err(db_err)?
        .next()
        .is_some()
    {
        return Err(StoreError::Database(
            "the database has a multimap table this relay does not know".into(),
        ));
    }
    let write = target.begin_write().map_err(db_err)?;
    let copied = vec![
        copy(&read, &write, NAMES)?,
        copy(&read, &write, QUEUE)?,
        copy(&read, &write, BODIES)?,
        copy(&read, &write, BODY_REFS)?,
        copy(&read, &write, BODY_HASHES)?,
        copy(&read, &write, INBOX)?,
        copy(&read, &write, QUEUE_STATS)?,
        copy(&read, &write, ROOM_STATS)?,
        copy(&read, &write, MEMBERS)?,
        copy(&read, &write, META)?,
        copy(&read, &write, NAMES_PER_KEY)?,
        copy(&read, &write, PREKEYS)?,
    ];
    let copied: Vec<String> = copied.into_iter().flatten().collect();
    // Every table the snapshot holds was copied if this relay knows it:
    // any other is a newer relay's, which the copy must not drop.
    for table in read.list_tables().map_err(db_err)? {
        if !copied.iter().any(|name| name == table.name()) {
            return Err(StoreError::Database(format!(
                "the database has a table this relay does not know ({}): back it up with the relay that made it",
                table.name()
            )));
        }
    }
    write
        .open_table(META)
        .map_err(db_err)?
        .insert(FROM_BACKUP, 1)
        .map_err(db_err)?;
    write.commit().map_err(db_err)
}

/// Copies the table `table` of `read` into `write`: its name, or `None` if
/// the snapshot has no such table (what the copy holds is counted in it,
/// [`entries`]).
fn copy<K: Key + 'static, V: Value + 'static>(
    read: &ReadTransaction,
    write: &WriteTransaction,
    table: TableDefinition<'_, K, V>,
) -> Result<Option<String>, StoreError> {
    let source = match read.open_table(table) {
        Ok(source) => source,
        Err(TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(error) => return Err(db_err(error)),
    };
    let mut target = write.open_table(table).map_err(db_err)?;
    for entry in source.iter().map_err(db_err)? {
        let (key, value) = entry.map_err(db_err)?;
        target.insert(key.value(), value.value()).map_err(db_err)?;
    }
    Ok(Some(table.name().to_owned()))
}

/// Where a restored database's delivery ids go on from: past the
/// snapshot's ceiling `ceiling`, and past what a relay could have handed
/// out by `now_secs` (fewer than 2^24, about 16.8 million, ids per second
/// since the Unix epoch), with 2^40 to spare (18 hours of that rate, so
/// that a clock set back by less still gives unique ids). Restoring the
/// same backup twice, later, moves further on.
pub(super) fn restored_ceiling(ceiling: u64, now_secs: u64) -> Option<u64> {
    const PER_SECOND: u32 = 24;
    const SPARE: u64 = 1 << 40;
    let by_time = now_secs
        .checked_shl(PER_SECOND)
        .filter(|t| t >> PER_SECOND == now_secs)?;
    ceiling.max(by_time).checked_add(SPARE)
}
