//! A disk that tests can fill: redb's own [`FileBackend`] on the real
//! database file, whose writes, growth and syncs can be made to fail with
//! [`ErrorKind::StorageFull`] (ENOSPC) and then succeed again, as a real
//! disk does when it fills up and space is given back.
//!
//! Only for tests (the crate's own, and those built with the
//! `fault-injection` feature): the relay itself opens its database with
//! [`Database::open`](redb::Database::open), never through this.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// A switch shared by the test and every backend opened on it (the store
/// reopens its database after a failure, with a new backend each time).
#[derive(Clone, Debug, Default)]
pub struct Disk {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    /// Writes (and syncs, and growth) that may still succeed before the
    /// disk is full: `u64::MAX` is a disk with room.
    room: AtomicU64,
    /// Backends opened on this disk.
    opens: AtomicU64,
    /// Writes, syncs and growth refused.
    refused: AtomicU64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            room: AtomicU64::new(u64::MAX),
            opens: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl Disk {
    /// A disk with room.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Fills the disk: from now on every write, sync and growth of the
    /// file fails with `StorageFull`.
    pub fn fill(&self) {
        self.fill_after(0);
    }

    /// Fills the disk after `writes` more writes, syncs or growths have
    /// succeeded: a fault in the middle of whatever runs then.
    pub fn fill_after(&self, writes: u64) {
        self.state.room.store(writes, Ordering::SeqCst);
    }

    /// Gives the space back.
    pub fn free(&self) {
        self.state.room.store(u64::MAX, Ordering::SeqCst);
    }

    /// How many times the database was opened on this disk.
    #[must_use]
    pub fn opens(&self) -> u64 {
        self.state.opens.load(Ordering::SeqCst)
    }

    /// How many writes, syncs and growths were refused.
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// A backend on `file`, failing as this disk says.
    pub(crate) fn backend(&self, file: File) -> Result<Backend, redb::DatabaseError> {
        self.state.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Backend {
            file: FileBackend::new(file)?,
            disk: self.clone(),
        })
    }

    /// Takes one unit of room, or fails as a full disk does.
    fn take(&self) -> io::Result<()> {
        let taken = self
            .state
            .room
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |room| match room {
                u64::MAX => Some(u64::MAX),
                0 => None,
                n => Some(n - 1),
            });
        if taken.is_ok() {
            Ok(())
        } else {
            self.state.refused.fetch_add(1, Ordering::SeqCst);
            Err(io::Error::new(
                ErrorKind::StorageFull,
                "no space left on device (injected)",
            ))
        }
    }
}

/// redb's [`FileBackend`], failing writes as its [`Disk`] says.
#[derive(Debug)]
pub(crate) struct Backend {
    file: FileBackend,
    disk: Disk,
}

impl StorageBackend for Backend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        // Shrinking needs no room.
        if len > self.file.len()? {
            self.disk.take()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.disk.take()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.disk.take()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
