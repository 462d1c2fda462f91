//! Blobs: the encrypted chunks of files and images, stored until they
//! expire (protocol.md 9.13).
//!
//! A client uploads a blob chunk by chunk, in order, under an id it drew
//! at random; once every chunk is stored, anyone registered who knows the
//! id may fetch them. The relay never sees a key: a chunk is ciphertext,
//! and the message that says which file a blob holds (and with which key)
//! is sealed like any other.
//!
//! Blobs live in a database of their own, `blobs.redb` in the data
//! directory, written by a thread of its own ([`run`]) in batches (one
//! commit, with an fsync, per batch): large uploads never hold up the
//! commits of messages in `relay.redb`, and `relay backup` leaves them
//! out (they are transient: every blob expires).
//!
//! Limits (`Config`, docs/self-hosting.md): the ciphertext of one blob
//! (`blob_max_bytes`), what one identity key may hold at once
//! (`blob_quota_bytes`), what the relay holds in all (`blob_max_total`),
//! and how long a blob is kept after its last chunk was stored
//! (`blob_max_age`). A blob is charged its full size (its chunk count
//! times [`BLOB_CHUNK_LEN`]) from its first chunk until it expires.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sotto_proto::{BLOB_CHUNK_LEN, ErrorCode, RelayFrame};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::state::{Peer, encode};
use crate::store::{StoreError, now_secs};

/// File name of the blob database in the data directory.
pub const BLOB_DATABASE_FILE: &str = "blobs.redb";

/// Blob id -> its [`BlobMeta`].
const BLOBS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blobs");
/// (blob id, chunk index) -> the chunk.
const CHUNKS: TableDefinition<'_, (&[u8], u32), &[u8]> = TableDefinition::new("chunks");
/// Owner's fingerprint -> bytes charged to it.
const USAGE: TableDefinition<'_, &[u8], u64> = TableDefinition::new("usage");
/// (expiry, blob id) -> nothing: the sweep's index.
const EXPIRY: TableDefinition<'_, (u64, &[u8]), ()> = TableDefinition::new("expiry");
/// `charged`: the bytes charged to every blob held.
const TOTALS: TableDefinition<'_, &str, u64> = TableDefinition::new("totals");

/// Most puts written in one commit.
const MAX_BATCH: usize = 256;
/// Most bytes of chunks written in one commit.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Puts waiting for the writer; a connection whose put does not fit waits
/// (and its client waits in TCP).
const QUEUE: usize = 512;
/// How often the writer deletes expired blobs when it has nothing else to
/// do.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The limits on blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLimits {
    /// Most bytes of ciphertext in one blob; 0: the relay takes no blobs.
    pub max_bytes: u64,
    /// Most bytes charged to one identity key at once.
    pub quota_bytes: u64,
    /// Most bytes charged to all blobs at once.
    pub max_total: u64,
    /// How long a blob is kept after its last chunk was stored.
    pub max_age: Duration,
}

/// A blob's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BlobMeta {
    /// The fingerprint of the identity that uploads it.
    owner: [u8; 32],
    /// Its chunk count.
    chunks: u32,
    /// How many chunks are stored: the first `stored`.
    stored: u32,
    /// Bytes charged to the owner and the relay for it.
    charged: u64,
    /// When it is deleted (Unix seconds).
    expires_at: u64,
}

/// How much of a blob is stored, for `BlobState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobState {
    /// Its chunk count.
    pub chunks: u32,
    /// How many are stored.
    pub stored: u32,
    /// When it is deleted (Unix seconds).
    pub expires_at: u64,
}

/// Why a blob request is refused: a code and a message for the client.
pub type Refusal = (ErrorCode, &'static str);

/// One chunk to store.
pub(crate) struct Put {
    /// The uploader's fingerprint.
    pub(crate) owner: [u8; 32],
    pub(crate) blob: [u8; 16],
    pub(crate) index: u32,
    pub(crate) chunks: u32,
    pub(crate) data: Bytes,
    /// Where the answer goes.
    pub(crate) peer: Peer,
}

/// The blob database.
pub struct BlobStore {
    /// `None` after a storage failure, until it is reopened.
    db: RwLock<Option<Database>>,
    path: std::path::PathBuf,
    limits: BlobLimits,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn db_err<E: Into<redb::Error>>(error: E) -> StoreError {
    StoreError::Storage(error.into().to_string())
}

fn decode_meta(bytes: &[u8]) -> Result<BlobMeta, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt)
}

fn encode_meta(meta: &BlobMeta) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(meta).map_err(|e| StoreError::Database(e.to_string()))
}

impl BlobStore {
    /// Opens (or creates) `blobs.redb` in `dir`.
    pub fn open(dir: &Path, limits: BlobLimits) -> Result<Self, StoreError> {
        sotto_fsutil::create_private_dir(dir).map_err(|e| StoreError::Storage(e.to_string()))?;
        let path = dir.join(BLOB_DATABASE_FILE);
        let store = Self {
            db: RwLock::new(Some(Self::open_file(&path)?)),
            path,
            limits,
        };
        Ok(store)
    }

    fn open_file(path: &Path) -> Result<Database, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            path: path.to_path_buf(),
            reason,
        };
        let db = Database::create(path).map_err(|e| unusable(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| unusable(e.to_string()))?;
        txn.open_table(BLOBS).map_err(db_err)?;
        txn.open_table(CHUNKS).map_err(db_err)?;
        txn.open_table(USAGE).map_err(db_err)?;
        txn.open_table(EXPIRY).map_err(db_err)?;
        txn.open_table(TOTALS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(db)
    }

    /// The limits it enforces.
    pub fn limits(&self) -> BlobLimits {
        self.limits
    }

    /// Runs `work` on the open database, reopening it after a storage
    /// failure; a failure of `work` itself closes it for the next call to
    /// reopen.
    fn with_db<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        {
            let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(db) = db.as_ref() {
                return self.note(work(db));
            }
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(Self::open_file(&self.path)?);
            info!(database = %self.path.display(), "the blob database is open again");
        }
        let result = match slot.as_ref() {
            Some(db) => work(db),
            None => Err(StoreError::Unavailable),
        };
        drop(slot);
        self.note(result)
    }

    /// After a storage failure, closes the database so that the next
    /// operation reopens it.
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Storage(_)) = &result {
            *self.db.write().unwrap_or_else(PoisonError::into_inner) = None;
        }
        result
    }

    /// Stores `puts` in one transaction and one durable commit: for each,
    /// `Ok` if it is stored (now or before), or why not. A storage failure
    /// stores none of them.
    pub(crate) fn put_all(
        &self,
        puts: &[Put],
        now: u64,
    ) -> Result<Vec<Result<(), Refusal>>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut answers = Vec::with_capacity(puts.len());
            {
                let mut tables = Tables::open(&txn)?;
                for put in puts {
                    answers.push(tables.put(put, &self.limits, now)?);
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(answers)
        })
    }

    /// Chunk `index` of the complete blob `blob`.
    pub fn chunk(
        &self,
        blob: &[u8; 16],
        index: u32,
        now: u64,
    ) -> Result<Result<Bytes, Refusal>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let blobs = txn.open_table(BLOBS).map_err(db_err)?;
            let meta = match blobs.get(blob.as_slice()).map_err(db_err)? {
                Some(value) => decode_meta(value.value())?,
                None => return Ok(Err(NO_SUCH_BLOB)),
            };
            if meta.expires_at <= now || meta.stored < meta.chunks {
                return Ok(Err(NO_SUCH_BLOB));
            }
            if index >= meta.chunks {
                return Ok(Err((ErrorCode::BadChunk, "the blob has fewer chunks")));
            }
            let chunks = txn.open_table(CHUNKS).map_err(db_err)?;
            match chunks.get((blob.as_slice(), index)).map_err(db_err)? {
                Some(value) => Ok(Ok(Bytes::copy_from_slice(value.value()))),
                None => Err(StoreError::Corrupt),
            }
        })
    }

    /// How much of `blob` is stored.
    pub fn status(
        &self,
        blob: &[u8; 16],
        now: u64,
    ) -> Result<Result<BlobState, Refusal>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let blobs = txn.open_table(BLOBS).map_err(db_err)?;
            Ok(match blobs.get(blob.as_slice()).map_err(db_err)? {
                Some(value) => {
                    let meta = decode_meta(value.value())?;
                    if meta.expires_at <= now {
                        Err(NO_SUCH_BLOB)
                    } else {
                        Ok(BlobState {
                            chunks: meta.chunks,
                            stored: meta.stored,
                            expires_at: meta.expires_at,
                        })
                    }
                }
                None => Err(NO_SUCH_BLOB),
            })
        })
    }

    /// Deletes every blob expired at `now`; how many.
    pub fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let swept = Tables::open(&txn)?.sweep(now)?;
            txn.commit().map_err(db_err)?;
            Ok(swept)
        })
    }

    /// Bytes charged to every blob held.
    pub fn charged(&self) -> Result<u64, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let totals = txn.open_table(TOTALS).map_err(db_err)?;
            Ok(totals
                .get("charged")
                .map_err(db_err)?
                .map_or(0, |v| v.value()))
        })
    }
}

/// The answer for a blob that is not there (or not complete).
pub(crate) const NO_SUCH_BLOB: Refusal = (ErrorCode::NoSuchBlob, "no such blob, or not complete");

/// The tables of one write transaction.
struct Tables<'txn> {
    blobs: redb::Table<'txn, &'static [u8], &'static [u8]>,
    chunks: redb::Table<'txn, (&'static [u8], u32), &'static [u8]>,
    usage: redb::Table<'txn, &'static [u8], u64>,
    expiry: redb::Table<'txn, (u64, &'static [u8]), ()>,
    totals: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            blobs: txn.open_table(BLOBS).map_err(db_err)?,
            chunks: txn.open_table(CHUNKS).map_err(db_err)?,
            usage: txn.open_table(USAGE).map_err(db_err)?,
            expiry: txn.open_table(EXPIRY).map_err(db_err)?,
            totals: txn.open_table(TOTALS).map_err(db_err)?,
        })
    }

    fn meta(&self, blob: &[u8]) -> Result<Option<BlobMeta>, StoreError> {
        match self.blobs.get(blob).map_err(db_err)? {
            Some(value) => decode_meta(value.value()).map(Some),
            None => Ok(None),
        }
    }

    fn usage_of(&self, owner: &[u8; 32]) -> Result<u64, StoreError> {
        Ok(self
            .usage
            .get(owner.as_slice())
            .map_err(db_err)?
            .map_or(0, |v| v.value()))
    }

    fn charged(&self) -> Result<u64, StoreError> {
        Ok(self
            .totals
            .get("charged")
            .map_err(db_err)?
            .map_or(0, |v| v.value()))
    }

    /// Stores one chunk, or says why not.
    fn put(
        &mut self,
        put: &Put,
        limits: &BlobLimits,
        now: u64,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let blob = put.blob.as_slice();
        if let Err(refusal) = check_shape(put.index, put.chunks, put.data.len()) {
            return Ok(Err(refusal));
        }
        let mut meta = match self.meta(blob)? {
            Some(meta) if meta.expires_at <= now => {
                self.delete(blob)?;
                None
            }
            other => other,
        };
        if let Some(meta) = &meta {
            if meta.owner != put.owner {
                return Ok(Err((
                    ErrorCode::BadChunk,
                    "the blob belongs to someone else",
                )));
            }
            if meta.chunks != put.chunks {
                return Ok(Err((
                    ErrorCode::BadChunk,
                    "the blob has another chunk count",
                )));
            }
            if put.index < meta.stored {
                // Sent again (its answer was lost): the same bytes are
                // stored already.
                let same = self
                    .chunks
                    .get((blob, put.index))
                    .map_err(db_err)?
                    .is_some_and(|stored| stored.value() == put.data.as_ref());
                return Ok(if same {
                    Ok(())
                } else {
                    Err((ErrorCode::BadChunk, "another chunk is stored at this index"))
                });
            }
        }
        let stored = meta.map_or(0, |m| m.stored);
        if put.index != stored {
            return Ok(Err((
                ErrorCode::BadChunk,
                "chunks are stored in order, from 0",
            )));
        }
        let mut new = match meta.take() {
            Some(meta) => meta,
            None => match self.admit(put, limits, now)? {
                Ok(meta) => meta,
                Err(refusal) => return Ok(Err(refusal)),
            },
        };
        self.chunks
            .insert((blob, put.index), put.data.as_ref())
            .map_err(db_err)?;
        self.expiry.remove((new.expires_at, blob)).map_err(db_err)?;
        new.stored += 1;
        new.expires_at = now.saturating_add(limits.max_age.as_secs());
        self.expiry
            .insert((new.expires_at, blob), ())
            .map_err(db_err)?;
        self.blobs
            .insert(blob, encode_meta(&new)?.as_slice())
            .map_err(db_err)?;
        Ok(Ok(()))
    }

    /// Deletes every blob expired at `now`; how many.
    fn sweep(&mut self, now: u64) -> Result<u64, StoreError> {
        let mut due = Vec::new();
        for entry in self
            .expiry
            .range((0, &[][..])..(now.saturating_add(1), &[][..]))
            .map_err(db_err)?
        {
            let (key, _) = entry.map_err(db_err)?;
            due.push(key.value().1.to_vec());
        }
        for blob in &due {
            self.delete(blob)?;
        }
        Ok(due.len() as u64)
    }

    /// A new blob's record, if the limits let it in: its full size is
    /// charged to its owner and to the relay, once what expired is no
    /// longer charged.
    fn admit(
        &mut self,
        put: &Put,
        limits: &BlobLimits,
        now: u64,
    ) -> Result<Result<BlobMeta, Refusal>, StoreError> {
        self.sweep(now)?;
        let charged = u64::from(put.chunks).saturating_mul(BLOB_CHUNK_LEN as u64);
        if let Err(refusal) = check_size(put.chunks, limits) {
            return Ok(Err(refusal));
        }
        let usage = self.usage_of(&put.owner)?;
        if usage.saturating_add(charged) > limits.quota_bytes {
            return Ok(Err((
                ErrorCode::LimitReached,
                "this key holds as many blobs as it may; wait for some to expire",
            )));
        }
        let total = self.charged()?;
        if total.saturating_add(charged) > limits.max_total {
            return Ok(Err((
                ErrorCode::QueueFull,
                "the relay's blob storage is full",
            )));
        }
        self.usage
            .insert(put.owner.as_slice(), usage.saturating_add(charged))
            .map_err(db_err)?;
        self.totals
            .insert("charged", total.saturating_add(charged))
            .map_err(db_err)?;
        Ok(Ok(BlobMeta {
            owner: put.owner,
            chunks: put.chunks,
            stored: 0,
            charged,
            expires_at: now,
        }))
    }

    /// Deletes a blob, its chunks and its charges.
    fn delete(&mut self, blob: &[u8]) -> Result<(), StoreError> {
        let Some(meta) = self.meta(blob)? else {
            return Ok(());
        };
        for index in 0..meta.stored {
            self.chunks.remove((blob, index)).map_err(db_err)?;
        }
        self.expiry
            .remove((meta.expires_at, blob))
            .map_err(db_err)?;
        self.blobs.remove(blob).map_err(db_err)?;
        let usage = self.usage_of(&meta.owner)?.saturating_sub(meta.charged);
        if usage == 0 {
            self.usage.remove(meta.owner.as_slice()).map_err(db_err)?;
        } else {
            self.usage
                .insert(meta.owner.as_slice(), usage)
                .map_err(db_err)?;
        }
        let total = self.charged()?.saturating_sub(meta.charged);
        self.totals.insert("charged", total).map_err(db_err)?;
        Ok(())
    }
}

/// Refuses a new blob of `chunks` chunks (at least 1) that the relay does
/// not take: it takes no files, or the least such a blob holds is above
/// `max_bytes`.
pub(crate) fn check_size(chunks: u32, limits: &BlobLimits) -> Result<(), Refusal> {
    let least = u64::from(chunks.saturating_sub(1)) * BLOB_CHUNK_LEN as u64 + 1;
    if limits.max_bytes == 0 {
        Err((ErrorCode::TooLarge, "this relay takes no files"))
    } else if least > limits.max_bytes {
        Err((
            ErrorCode::TooLarge,
            "the blob is larger than this relay takes",
        ))
    } else {
        Ok(())
    }
}

/// Refuses chunk `index` of `chunks`, `len` bytes long, if its index,
/// count or length cannot be right whatever is stored.
pub(crate) fn check_shape(index: u32, chunks: u32, len: usize) -> Result<(), Refusal> {
    if chunks == 0 || index >= chunks {
        return Err((ErrorCode::BadChunk, "the index is past the chunk count"));
    }
    let last = index == chunks - 1;
    let fits = if last {
        (1..=BLOB_CHUNK_LEN).contains(&len)
    } else {
        len == BLOB_CHUNK_LEN
    };
    if fits {
        Ok(())
    } else {
        Err((ErrorCode::BadChunk, "a chunk has the wrong length"))
    }
}

/// The connections' handle on the blob writer.
#[derive(Clone)]
pub(crate) struct Blobs {
    tx: mpsc::Sender<Put>,
    /// For fetches and status, which read on the blocking pool.
    pub(crate) store: Arc<BlobStore>,
}

impl Blobs {
    /// A handle and the receiving end [`run`] takes.
    pub(crate) fn new(store: Arc<BlobStore>) -> (Self, mpsc::Receiver<Put>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx, store }, rx)
    }

    /// Queues `put` for the writer, waiting for room; `false` if the
    /// writer is gone (the relay is stopping).
    pub(crate) async fn put(&self, put: Put) -> bool {
        self.tx.send(put).await.is_ok()
    }
}

/// The answer to a put.
fn answer(put: &Put, result: Result<(), Refusal>) -> RelayFrame {
    match result {
        Ok(()) => RelayFrame::ChunkStored {
            blob: put.blob,
            index: put.index,
        },
        Err((code, message)) => refused(put.blob, put.index, code, message),
    }
}

/// A `BlobRefused`.
pub(crate) fn refused(blob: [u8; 16], index: u32, code: ErrorCode, message: &str) -> RelayFrame {
    RelayFrame::BlobRefused {
        blob,
        index,
        code,
        message: message.to_owned(),
    }
}

/// The blob writer: takes the puts waiting, up to [`MAX_BATCH`] or
/// [`MAX_BATCH_BYTES`], stores them in one commit, answers each, and
/// sweeps expired blobs when idle. Runs until every [`Blobs`] handle is
/// dropped. Blocks: run it on a thread of its own.
pub(crate) fn run(
    mut rx: mpsc::Receiver<Put>,
    store: Arc<BlobStore>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
) {
    sweep(&store, &metrics);
    let mut last_sweep = std::time::Instant::now();
    let mut batch = Vec::new();
    loop {
        let first = if last_sweep.elapsed() >= SWEEP_EVERY {
            sweep(&store, &metrics);
            last_sweep = std::time::Instant::now();
            continue;
        } else {
            let wait = SWEEP_EVERY.saturating_sub(last_sweep.elapsed());
            match runtime.block_on(tokio::time::timeout(wait, rx.recv())) {
                Ok(Some(put)) => put,
                Ok(None) => break,
                Err(_) => continue,
            }
        };
        let mut bytes = first.data.len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(put) => {
                    bytes += put.data.len();
                    batch.push(put);
                }
                Err(_) => break,
            }
        }
        let answers = store.put_all(&batch, now_secs());
        match answers {
            Ok(answers) => {
                for (put, result) in batch.iter().zip(answers) {
                    match &result {
                        Ok(()) => Metrics::inc(&metrics.blob_chunks_stored),
                        Err(_) => Metrics::inc(&metrics.blob_chunks_refused),
                    }
                    reply(put, &answer(put, result), &metrics);
                }
                update_gauge(&store, &metrics);
            }
            Err(error) => {
                warn!(%error, chunks = batch.len(), "could not store blob chunks");
                for put in &batch {
                    Metrics::inc(&metrics.blob_chunks_refused);
                    let frame = refused(
                        put.blob,
                        put.index,
                        ErrorCode::Internal,
                        "the relay could not store the chunk; try again",
                    );
                    reply(put, &frame, &metrics);
                }
            }
        }
        batch.clear();
    }
}

fn reply(put: &Put, frame: &RelayFrame, metrics: &Metrics) {
    if let Some(bytes) = encode(frame) {
        put.peer.push(bytes, metrics);
    }
}

fn sweep(store: &BlobStore, metrics: &Metrics) {
    match store.sweep(now_secs()) {
        Ok(0) => {}
        Ok(swept) => info!(swept, "expired blobs removed"),
        Err(error) => warn!(%error, "could not sweep the blobs"),
    }
    update_gauge(store, metrics);
}

fn update_gauge(store: &BlobStore, metrics: &Metrics) {
    if let Ok(charged) = store.charged() {
        metrics
            .blob_bytes
            .store(charged, std::sync::atomic::Ordering::Relaxed);
    }
}
