//! Where the relay keeps what outlives a connection: its own database
//! (`crate::store`, the default), or the NATS cluster it shares with the
//! other relays of its community (`crate::cluster`, `--cluster`).
//!
//! The connections ask the backend for the directories (names, prekeys);
//! what they route and acknowledge goes to the committer, which runs on
//! the backend of the same kind.

use std::sync::Arc;

use sotto_proto::UserName;

use crate::cluster::Cluster;
use crate::store::{Claim, NameRecord, PrekeyRecord, Store, StoreError};

/// The relay's backend.
pub(crate) enum Backend {
    /// This relay alone, with its database.
    Local(Arc<Store>),
    /// One of several relays sharing a NATS cluster.
    Cluster(Arc<Cluster>),
}

/// Runs a store operation on the blocking pool (redb commits fsync).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Err(StoreError::Database("the store's task failed".into())))
}

impl Backend {
    /// The local database, if this relay keeps one.
    pub(crate) fn local(&self) -> Option<&Arc<Store>> {
        match self {
            Self::Local(store) => Some(store),
            Self::Cluster(_) => None,
        }
    }

    /// Binds `record.name` to its identity if nobody owns it in any letter
    /// case and the identity owns fewer than `max_names` names.
    pub(crate) async fn claim(
        &self,
        record: NameRecord,
        max_names: u64,
    ) -> Result<Claim, StoreError> {
        match self {
            Self::Local(store) => {
                let store = Arc::clone(store);
                blocking(move || store.claim(&record, max_names)).await
            }
            Self::Cluster(cluster) => cluster.claim(&record, max_names).await,
        }
    }

    /// The owner of `name`, in any letter case.
    pub(crate) async fn lookup(&self, name: UserName) -> Result<Option<NameRecord>, StoreError> {
        match self {
            Self::Local(store) => {
                let store = Arc::clone(store);
                blocking(move || store.lookup(&name)).await
            }
            Self::Cluster(cluster) => cluster.lookup(&name).await,
        }
    }

    /// Adds `record` to the prekeys of the identity `fingerprint`, durably
    /// once this returns; what is kept, newest first.
    pub(crate) async fn publish_prekey(
        &self,
        fingerprint: [u8; 32],
        record: PrekeyRecord,
        now: u64,
    ) -> Result<Vec<PrekeyRecord>, StoreError> {
        match self {
            Self::Local(store) => {
                let store = Arc::clone(store);
                blocking(move || store.publish_prekey(&fingerprint, record, now)).await
            }
            Self::Cluster(cluster) => cluster.publish_prekey(&fingerprint, record, now).await,
        }
    }
}
