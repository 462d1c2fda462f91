//! The prekey directory: each identity's newest signed prekeys, by the
//! identity's fingerprint. A prekey is verified against the registered
//! identity before it gets here (`connection::prekeys`); the store keeps,
//! per identity, the newest [`MAX_PREKEYS`] by `created_at` that have not
//! expired, and nothing else.

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use sotto_crypto::MAX_PREKEYS;

use super::{PREKEYS, Store, StoreError, db_err, decode, encode_err};

/// One stored prekey: its signed encoding and the times the relay
/// verified in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyRecord {
    /// When it was made (the owner's clock), Unix seconds.
    pub created_at: u64,
    /// When it expires, Unix seconds; it is dropped then.
    pub expires_at: u64,
    /// The signed prekey, as published.
    pub prekey: Bytes,
}

/// Every identity's prekeys: (fingerprint, its prekeys newest first).
pub type PrekeyDirectory = Vec<([u8; 32], Vec<PrekeyRecord>)>;

/// `records` with `record` added, keeping only those unexpired at `now`,
/// one of each encoding, the newest [`MAX_PREKEYS`] by `created_at`
/// (ties by their bytes), newest first.
pub fn keep_newest(
    mut records: Vec<PrekeyRecord>,
    record: Option<PrekeyRecord>,
    now: u64,
) -> Vec<PrekeyRecord> {
    records.extend(record);
    records.retain(|r| now < r.expires_at);
    records.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| b.prekey.cmp(&a.prekey))
    });
    records.dedup_by(|a, b| a.prekey == b.prekey);
    records.truncate(MAX_PREKEYS);
    records
}

impl Store {
    /// Adds `record` to the prekeys of the identity `fingerprint` (see
    /// [`keep_newest`]), durably once this returns. Returns what is kept,
    /// newest first.
    pub fn publish_prekey(
        &self,
        fingerprint: &[u8; 32],
        record: PrekeyRecord,
        now: u64,
    ) -> Result<Vec<PrekeyRecord>, StoreError> {
        self.write("publish_prekey", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let kept = {
                let mut table = txn.open_table(PREKEYS).map_err(db_err)?;
                let stored: Vec<PrekeyRecord> =
                    match table.get(fingerprint.as_slice()).map_err(db_err)? {
                        Some(value) => decode(value.value())?,
                        None => Vec::new(),
                    };
                let kept = keep_newest(stored, Some(record), now);
                if kept.is_empty() {
                    table.remove(fingerprint.as_slice()).map_err(db_err)?;
                } else {
                    let value = postcard::to_stdvec(&kept).map_err(encode_err)?;
                    table
                        .insert(fingerprint.as_slice(), value.as_slice())
                        .map_err(db_err)?;
                }
                kept
            };
            txn.commit().map_err(db_err)?;
            Ok(kept)
        })
    }

    /// Every identity's stored prekeys unexpired at `now`, newest first
    /// (read once, when the relay starts).
    pub fn prekeys(&self, now: u64) -> Result<PrekeyDirectory, StoreError> {
        self.read("prekeys", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(PREKEYS).map_err(db_err)?;
            let mut all = Vec::new();
            for entry in table.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let fingerprint: [u8; 32] =
                    key.value().try_into().map_err(|_| StoreError::Corrupt)?;
                let kept = keep_newest(decode(value.value())?, None, now);
                if !kept.is_empty() {
                    all.push((fingerprint, kept));
                }
            }
            Ok(all)
        })
    }

    /// Deletes the prekeys expired at `now`; returns how many.
    pub fn expire_prekeys(&self, now: u64) -> Result<u64, StoreError> {
        self.write("expire_prekeys", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut dropped = 0u64;
            {
                let mut table = txn.open_table(PREKEYS).map_err(db_err)?;
                let mut changed = Vec::new();
                for entry in table.iter().map_err(db_err)? {
                    let (key, value) = entry.map_err(db_err)?;
                    let stored: Vec<PrekeyRecord> = decode(value.value())?;
                    let before = stored.len();
                    let kept = keep_newest(stored, None, now);
                    if kept.len() != before {
                        dropped += (before - kept.len()) as u64;
                        changed.push((key.value().to_vec(), kept));
                    }
                }
                for (key, kept) in changed {
                    if kept.is_empty() {
                        table.remove(key.as_slice()).map_err(db_err)?;
                    } else {
                        let value = postcard::to_stdvec(&kept).map_err(encode_err)?;
                        table
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(db_err)?;
                    }
                }
            }
            if dropped == 0 {
                txn.abort().map_err(db_err)?;
            } else {
                txn.commit().map_err(db_err)?;
            }
            Ok(dropped)
        })
    }
}
