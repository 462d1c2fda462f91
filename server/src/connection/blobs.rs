//! Blob requests (protocol.md 9.13): a chunk to store goes to the blob
//! writer, which answers once it is durable; a chunk to fetch or a status
//! is read on the blocking pool and answered at once. A relay of a
//! cluster stores and reads them in NATS (`crate::cluster`), one request
//! at a time.
//!
//! Answers to blob requests name their blob and chunk, and do not wait
//! for the answers to earlier `Send`s: a client matches them by id.

use bytes::Bytes;
use sotto_proto::{ErrorCode, RelayFrame};
use tracing::warn;

use super::send::Routing;
use super::{Connection, blocking};
use crate::backend::Backend;
use crate::blobs::{Put, refused};
use crate::metrics::Metrics;
use crate::state::encode;
use crate::store::now_secs;

impl Connection {
    /// `PutChunk`: hands the chunk to the blob writer (waiting for room
    /// in its queue, so that a fast uploader waits in TCP).
    pub(super) async fn put_chunk(
        &self,
        blob: [u8; 16],
        index: u32,
        chunks: u32,
        data: Bytes,
        routing: &mut Routing,
    ) {
        let Some(publisher) = &self.publisher else {
            return self.blob_refused(blob, index, ErrorCode::NotRegistered, "register first");
        };
        if let Backend::Cluster(cluster) = &self.shared.backend {
            self.flush(routing).await;
            let stored = cluster
                .put_chunk(publisher.fingerprint(), blob, index, chunks, data)
                .await;
            let metrics = &self.shared.metrics;
            match stored {
                Ok(Ok(())) => {
                    Metrics::inc(&metrics.blob_chunks_stored);
                    self.reply(RelayFrame::ChunkStored { blob, index });
                }
                Ok(Err((code, message))) => {
                    Metrics::inc(&metrics.blob_chunks_refused);
                    self.blob_refused(blob, index, code, message);
                }
                Err(error) => {
                    warn!(%error, "could not store a blob chunk in the cluster");
                    Metrics::inc(&metrics.blob_chunks_refused);
                    self.blob_refused(blob, index, ErrorCode::Internal, UNSTORED);
                }
            }
            return;
        }
        let Some(blobs) = &self.shared.blobs else {
            return self.blob_refused(blob, index, ErrorCode::TooLarge, NO_BLOBS);
        };
        let put = Put {
            owner: publisher.fingerprint(),
            blob,
            index,
            chunks,
            data,
            peer: self.peer.clone(),
        };
        // What this read batch routed so far does not wait for the
        // writer's queue.
        self.flush(routing).await;
        if !blobs.put(put).await {
            self.blob_refused(
                blob,
                index,
                ErrorCode::ShuttingDown,
                "the relay is stopping",
            );
        }
    }

    /// `GetChunk`: reads the chunk and queues it, waiting while the
    /// client reads what is queued before it.
    pub(super) async fn get_chunk(&self, blob: [u8; 16], index: u32, routing: &mut Routing) {
        self.flush(routing).await;
        let read = match (&self.shared.backend, &self.shared.blobs) {
            (Backend::Cluster(cluster), _) => Some(cluster.chunk(&blob, index).await),
            (Backend::Local(_), Some(blobs)) => {
                let store = std::sync::Arc::clone(&blobs.store);
                blocking(move || store.chunk(&blob, index, now_secs())).await
            }
            (Backend::Local(_), None) => {
                return self.blob_refused(blob, index, ErrorCode::NoSuchBlob, NO_BLOBS);
            }
        };
        match read {
            Some(Ok(Ok(data))) => {
                let frame = RelayFrame::Chunk { blob, index, data };
                let Some(bytes) = encode(&frame) else { return };
                let metrics = &self.shared.metrics;
                if self
                    .peer
                    .push_waiting(bytes, self.shared.config.idle_timeout, metrics)
                    .await
                {
                    Metrics::inc(&metrics.blob_chunks_served);
                }
            }
            Some(Ok(Err((code, message)))) => self.blob_refused(blob, index, code, message),
            Some(Err(error)) => {
                warn!(%error, "could not read a blob chunk");
                self.blob_refused(blob, index, ErrorCode::Internal, UNREADABLE);
            }
            None => self.blob_refused(blob, index, ErrorCode::Internal, UNREADABLE),
        }
    }

    /// `BlobStatus`: how much of the blob is stored.
    pub(super) async fn blob_status(&self, blob: [u8; 16], routing: &mut Routing) {
        self.flush(routing).await;
        let read = match (&self.shared.backend, &self.shared.blobs) {
            (Backend::Cluster(cluster), _) => Some(cluster.blob_status(&blob).await),
            (Backend::Local(_), Some(blobs)) => {
                let store = std::sync::Arc::clone(&blobs.store);
                blocking(move || store.status(&blob, now_secs())).await
            }
            (Backend::Local(_), None) => {
                return self.blob_refused(blob, 0, ErrorCode::NoSuchBlob, NO_BLOBS);
            }
        };
        match read {
            Some(Ok(Ok(state))) => self.reply(RelayFrame::BlobState {
                blob,
                chunks: state.chunks,
                stored: state.stored,
                expires_at: state.expires_at,
            }),
            Some(Ok(Err((code, message)))) => self.blob_refused(blob, 0, code, message),
            Some(Err(error)) => {
                warn!(%error, "could not read a blob's state");
                self.blob_refused(blob, 0, ErrorCode::Internal, UNREADABLE);
            }
            None => self.blob_refused(blob, 0, ErrorCode::Internal, UNREADABLE),
        }
    }

    fn blob_refused(&self, blob: [u8; 16], index: u32, code: ErrorCode, message: &str) {
        self.reply(refused(blob, index, code, message));
    }
}

const NO_BLOBS: &str = "this relay takes no files";
const UNREADABLE: &str = "the relay could not read the blob; try again";
const UNSTORED: &str = "the relay could not store the chunk; try again";
