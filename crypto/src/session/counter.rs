//! The per-conversation sequence counter, which also numbers the key
//! slots' nonces, and the durable store it reserves numbers through (P9).

#[cfg(feature = "hazmat")]
use std::fs;
#[cfg(feature = "hazmat")]
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Durable storage for a [`SequenceCounter`]: the write-ahead hook of P9.
pub trait CounterStore {
    /// Records durably that sequence numbers below `limit` may have been
    /// used. Must not return `Ok` before the value is on stable storage.
    fn persist(&mut self, limit: u64) -> std::io::Result<()>;
}

/// A [`CounterStore`] that keeps nothing: for tests and throw-away sessions.
#[derive(Debug, Default)]
pub struct NoPersistence;

impl CounterStore for NoPersistence {
    fn persist(&mut self, _limit: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`CounterStore`] in a small file (8 bytes, little-endian), replaced
/// atomically and synced on every reservation.
///
/// **Hazardous** (only with the `hazmat` feature, which only this crate's
/// tests and benches enable): a counter file restored from a backup brings
/// back numbers already used, and nothing ties it to the session keys it
/// numbers (docs/threat-model.md section 9). The sotto client keeps its
/// counters in its encrypted store and never continues a sending session
/// across runs.
#[cfg(feature = "hazmat")]
#[derive(Debug)]
pub struct FileCounterStore {
    path: PathBuf,
}

#[cfg(feature = "hazmat")]
impl FileCounterStore {
    /// Uses the file at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The limit stored in the file, or 0 if there is no file yet.
    pub fn load(&self) -> Result<u64> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let bytes: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::InvalidParameter("counter file is not 8 bytes"))?;
                Ok(u64::from_le_bytes(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(feature = "hazmat")]
impl CounterStore for FileCounterStore {
    fn persist(&mut self, limit: u64) -> std::io::Result<()> {
        sotto_fsutil::write_private(&self.path, &limit.to_le_bytes())
    }
}

/// The per-conversation message sequence of one sender, which also numbers
/// the AES-GCM nonces of its key slots.
///
/// Numbers are reserved in blocks: before the first number of a block is
/// handed out, the end of the block is persisted through the
/// [`CounterStore`]. After a crash the counter resumes at the persisted
/// limit, skipping the unused rest of the block but never reusing a number
/// (P9).
#[derive(Debug)]
pub struct SequenceCounter<S> {
    next: u64,
    reserved: u64,
    block: u64,
    store: S,
}

impl<S: CounterStore> SequenceCounter<S> {
    /// Numbers reserved per write to the store.
    pub const DEFAULT_BLOCK: u64 = 64;

    /// Resumes from `persisted`, the last limit the store recorded (0 for a
    /// new conversation).
    pub fn resume(persisted: u64, store: S) -> Self {
        Self::with_block(persisted, store, Self::DEFAULT_BLOCK)
    }

    /// Like [`SequenceCounter::resume`] with `block` numbers per reservation
    /// (1 persists before every message).
    pub fn with_block(persisted: u64, store: S, block: u64) -> Self {
        Self {
            next: persisted,
            reserved: persisted,
            block: block.max(1),
            store,
        }
    }

    /// The number the next call to [`SequenceCounter::next`] returns.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Persists exactly the next unused number, for a clean shutdown: the
    /// next run resumes there and recipients see no gap.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.store.persist(self.next)?;
        self.reserved = self.next;
        Ok(())
    }

    /// Hands out the next number, persisting a new reservation first when
    /// the current one is used up. If persisting fails, nothing is handed
    /// out.
    #[allow(clippy::should_implement_trait)] // fallible, unlike Iterator::next
    pub fn next(&mut self) -> Result<u64> {
        if self.next == u64::MAX {
            return Err(Error::CounterExhausted);
        }
        if self.next >= self.reserved {
            let limit = self.next.saturating_add(self.block);
            self.store.persist(limit)?;
            self.reserved = limit;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }
}
