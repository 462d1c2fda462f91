//! Blobs in a cluster (protocol.md 9.13): the chunks and each blob's
//! record in the KV bucket `sotto_blobs`, so that a file uploaded through
//! one relay is fetched through any other.
//!
//! | Key | Value |
//! |---|---|
//! | `<blob>.m` (hex) | the blob's [`BlobMeta`]: owner, chunk count, chunks stored, first chunk's time |
//! | `<blob>.c<index>` (hex, decimal) | chunk `index`, as its owner stored it |
//!
//! The rules are the relay's own (`crate::blobs`): chunks in order from
//! 0, the same chunk count, the owner's identity only, a chunk sent again
//! answered as stored if its bytes are. Each chunk is written, then the
//! record moved past it by a compare-and-set, so two connections of one
//! owner racing cannot both store a chunk at one index (the loser is told
//! to try again). The bucket's age (`blob_max_age`) deletes every entry
//! that long after it was written, and its size (`blob_max_total`) bounds
//! the whole (a write beyond is refused `QueueFull`); a file therefore
//! expires `blob_max_age` after its first chunk. There is no per-key
//! quota in a cluster (`blob_quota_bytes` is a single relay's): as for
//! stored deliveries, JetStream's bound holds for the whole.

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sotto_proto::{BLOB_CHUNK_LEN, ErrorCode};

use super::directory::{current, swap};
use super::{Cluster, bucket_config, hex, nats_err, open_bucket};
use crate::blobs::{BlobLimits, BlobState, Refusal, check_shape, check_size};
use crate::store::StoreError;

/// The KV bucket of the blobs.
pub(super) const BLOBS: &str = "sotto_blobs";

/// A blob's record in the bucket.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct BlobMeta {
    owner: [u8; 32],
    chunks: u32,
    stored: u32,
    /// When its first chunk was stored (Unix seconds): its entries go
    /// `blob_max_age` after theirs were written, this one's first.
    created_at: u64,
}

fn meta_key(blob: &[u8; 16]) -> String {
    format!("{}.m", hex(blob))
}

fn chunk_key(blob: &[u8; 16], index: u32) -> String {
    format!("{}.c{index}", hex(blob))
}

/// The bucket, made if missing: a KV bucket like the others (its age
/// `max_age`), at most `max_total` bytes in all (then writes are
/// refused), and values as large as a chunk.
pub(super) async fn bucket(
    js: &jetstream::Context,
    replicas: usize,
    limits: &BlobLimits,
) -> Result<kv::Store, StoreError> {
    let config = stream::Config {
        max_bytes: i64::try_from(limits.max_total).unwrap_or(i64::MAX),
        max_message_size: i32::try_from(BLOB_CHUNK_LEN + 1024).unwrap_or(i32::MAX),
        ..bucket_config(BLOBS, replicas, Some(limits.max_age))
    };
    open_bucket(js, BLOBS, config).await
}

/// A write the bucket refused for its size.
fn full(error: &StoreError) -> bool {
    matches!(error, StoreError::Cluster(text) if text.contains("maximum bytes"))
}

const FULL: Refusal = (ErrorCode::QueueFull, "the relay's blob storage is full");
const RACED: Refusal = (
    ErrorCode::Internal,
    "the blob changed meanwhile (another connection of yours); try again",
);

impl Cluster {
    async fn blob_meta(&self, blob: &[u8; 16]) -> Result<Option<(BlobMeta, u64)>, StoreError> {
        match current(&self.blobs, &meta_key(blob)).await? {
            Some((value, revision)) => {
                let meta = postcard::from_bytes(&value).map_err(|_| StoreError::Corrupt)?;
                Ok(Some((meta, revision)))
            }
            None => Ok(None),
        }
    }

    /// Stores chunk `index` of `blob` for `owner`, durably (acknowledged
    /// by JetStream) once it returns `Ok(Ok(()))`.
    pub(crate) async fn put_chunk(
        &self,
        owner: [u8; 32],
        blob: [u8; 16],
        index: u32,
        chunks: u32,
        data: Bytes,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let (limits, now) = (&self.blob_limits, crate::store::now_secs());
        if let Err(refusal) = check_shape(index, chunks, data.len()) {
            return Ok(Err(refusal));
        }
        let (meta, revision) = match self.blob_meta(&blob).await? {
            Some((meta, revision)) => (meta, Some(revision)),
            None => {
                if index != 0 {
                    return Ok(Err((
                        ErrorCode::BadChunk,
                        "chunks are stored in order, from 0",
                    )));
                }
                if let Err(refusal) = check_size(chunks, limits) {
                    return Ok(Err(refusal));
                }
                let meta = BlobMeta {
                    owner,
                    chunks,
                    stored: 0,
                    created_at: now,
                };
                (meta, None)
            }
        };
        if meta.owner != owner {
            return Ok(Err((
                ErrorCode::BadChunk,
                "the blob belongs to someone else",
            )));
        }
        if meta.chunks != chunks {
            return Ok(Err((
                ErrorCode::BadChunk,
                "the blob has another chunk count",
            )));
        }
        if index < meta.stored {
            let stored = self
                .blobs
                .get(chunk_key(&blob, index))
                .await
                .map_err(nats_err)?;
            return Ok(if stored.as_ref() == Some(&data) {
                Ok(())
            } else {
                Err((ErrorCode::BadChunk, "another chunk is stored at this index"))
            });
        }
        if index != meta.stored {
            return Ok(Err((
                ErrorCode::BadChunk,
                "chunks are stored in order, from 0",
            )));
        }
        if let Err(error) = self
            .blobs
            .put(chunk_key(&blob, index), data)
            .await
            .map_err(nats_err)
        {
            return if full(&error) {
                Ok(Err(FULL))
            } else {
                Err(error)
            };
        }
        let moved = BlobMeta {
            stored: index + 1,
            ..meta
        };
        let value = postcard::to_stdvec(&moved)
            .map(Bytes::from)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        match swap(&self.blobs, &meta_key(&blob), revision, value).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => Ok(Err(RACED)),
            Err(error) if full(&error) => Ok(Err(FULL)),
            Err(error) => Err(error),
        }
    }

    /// Chunk `index` of the complete blob `blob`.
    pub(crate) async fn chunk(
        &self,
        blob: &[u8; 16],
        index: u32,
    ) -> Result<Result<Bytes, Refusal>, StoreError> {
        let Some((meta, _)) = self.blob_meta(blob).await? else {
            return Ok(Err(crate::blobs::NO_SUCH_BLOB));
        };
        if meta.stored < meta.chunks {
            return Ok(Err(crate::blobs::NO_SUCH_BLOB));
        }
        if index >= meta.chunks {
            return Ok(Err((ErrorCode::BadChunk, "the blob has fewer chunks")));
        }
        Ok(
            match self
                .blobs
                .get(chunk_key(blob, index))
                .await
                .map_err(nats_err)?
            {
                Some(data) => Ok(data),
                // Its first chunks expired before its record.
                None => Err(crate::blobs::NO_SUCH_BLOB),
            },
        )
    }

    /// How much of `blob` is stored.
    pub(crate) async fn blob_status(
        &self,
        blob: &[u8; 16],
    ) -> Result<Result<BlobState, Refusal>, StoreError> {
        let max_age = self.blob_limits.max_age;
        Ok(match self.blob_meta(blob).await? {
            Some((meta, _)) => Ok(BlobState {
                chunks: meta.chunks,
                stored: meta.stored,
                expires_at: meta.created_at.saturating_add(max_age.as_secs()),
            }),
            None => Err(crate::blobs::NO_SUCH_BLOB),
        })
    }
}
