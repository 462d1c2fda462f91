//! Registration: the proof of the challenge, the name claimed in the
//! directory, the registry's per-key limits, then the user's rooms and its
//! stored deliveries.

use std::sync::Arc;

use bytes::Bytes;
use sotto_crypto::PublicIdentity;
use sotto_proto::{ErrorCode, RelayFrame, UserName};
use tracing::{info, warn};

use tokio_util::sync::CancellationToken;

use super::prekeys::Publisher;
use super::{Connection, End, blocking, pump, pump_cluster};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::state::{KeyLimit, Registered};
use crate::store::{Claim, NameRecord, Write, now_secs};

impl Connection {
    /// Checks the proof, claims the name, and serves what waited offline.
    /// `Some` ends the connection.
    pub(super) async fn register(
        &mut self,
        name: UserName,
        identity: Bytes,
        proof: Bytes,
    ) -> Option<End> {
        if self.me.is_some() {
            // A protocol violation, answered like any other bad frame.
            self.error(None, ErrorCode::BadFrame, "already registered");
            return Some(End::BadFrame);
        }
        let refuse = |this: &Self, code, message: &str| {
            Metrics::inc(&this.shared.metrics.registrations_refused);
            info!(?code, why = message, "registration refused");
            this.error(None, code, message);
        };
        // Parsing the keys and verifying the RSA signature take a fraction
        // of a millisecond each: on the blocking pool, not the runtime.
        let (current, previous) = self.relay_fingerprints;
        let challenge = self.challenge;
        let (claimed, bytes) = (name.clone(), identity.clone());
        let check = blocking(move || {
            let public =
                PublicIdentity::from_bytes(&bytes).map_err(|_| "not a sotto public identity")?;
            let verifies = |relay: &[u8; 32]| {
                public
                    .verify_registration(relay, &challenge, claimed.as_str(), &proof)
                    .is_ok()
            };
            if verifies(&current) || previous.is_some_and(|p| verifies(&p)) {
                Ok(public)
            } else {
                Err("the proof does not verify for this relay's challenge")
            }
        })
        .await;
        let public = match check {
            Some(Ok(public)) => public,
            Some(Err(why)) => {
                refuse(self, ErrorCode::BadProof, why);
                return None;
            }
            None => {
                self.error(None, ErrorCode::Internal, "registration failed");
                return None;
            }
        };
        let fingerprint = *public.fingerprint().as_bytes();
        // A key at its connection limit gets no further name either.
        if let Err(limit) = self.shared.may_register(&fingerprint, &name) {
            return self.refuse_key(limit);
        }
        let record = NameRecord {
            name: name.clone(),
            fingerprint,
            identity: identity.clone(),
        };
        let max_names = self.shared.config.max_names_per_key;
        let claim = self.shared.backend.claim(record, max_names).await;
        // The name as first registered is how everyone sees it.
        let name = match claim {
            Ok(Claim::New) => name,
            Ok(Claim::Existing(registered)) => registered,
            Ok(Claim::Taken) => {
                refuse(
                    self,
                    ErrorCode::NameTaken,
                    "that name belongs to another key",
                );
                return None;
            }
            Ok(Claim::KeyFull) => {
                Metrics::inc(&self.shared.metrics.key_limit_refusals);
                refuse(
                    self,
                    ErrorCode::LimitReached,
                    &format!(
                        "this key owns {} names already, the most this relay allows; register one of them",
                        self.shared.config.max_names_per_key
                    ),
                );
                return None;
            }
            Err(error) => {
                // Not registered: nothing was kept.
                warn!(%error, "a registration was refused: the directory is unavailable");
                self.error(None, ErrorCode::Internal, "directory unavailable");
                return None;
            }
        };
        let welcome = match self.shared.register(
            self.conn,
            name.clone(),
            identity,
            fingerprint,
            self.peer.clone(),
        ) {
            Ok(welcome) => welcome,
            Err(limit) => return self.refuse_key(limit),
        };
        // In a cluster, the other relays learn where the user is (and a
        // connection of it on another relay is replaced).
        if let Backend::Cluster(cluster) = &self.shared.backend {
            match cluster.online(&name, self.conn).await {
                Ok(revision) => self
                    .shared
                    .cluster_registered(&name.key(), self.conn, revision),
                Err(error) => {
                    warn!(%error, "a registration was refused: the cluster is unavailable");
                    self.shared.unregister(self.conn, &name);
                    self.error(None, ErrorCode::Internal, "directory unavailable");
                    return None;
                }
            }
        }
        self.arrival.registered();
        let me = Registered::new(name.clone());
        self.publisher = Some(Publisher::new(public));
        info!(user = %name, "registered");
        self.reply(RelayFrame::Registered {
            name: name.clone(),
            offline_max_age: self.shared.config.offline_max_age.as_secs(),
            blob_max_bytes: crate::blob_limits(&self.shared.config).max_bytes,
            blob_max_age: self.shared.config.blob_max_age.as_secs(),
        });
        // The rooms it is a member of, then what is stored for it.
        let rooms: Vec<_> = welcome.rooms.iter().map(|(room, _)| room.clone()).collect();
        for (room, members) in welcome.rooms {
            self.reply(RelayFrame::Joined { room, members });
        }
        let done = CancellationToken::new();
        let pump = match &self.shared.backend {
            Backend::Local(store) => tokio::spawn(pump::pump(
                Arc::clone(&self.shared),
                Arc::clone(store),
                me.key.clone(),
                self.peer.clone(),
                welcome.wake,
                done.clone(),
            )),
            Backend::Cluster(cluster) => tokio::spawn(pump_cluster::pump(
                Arc::clone(&self.shared),
                Arc::clone(cluster),
                me.key.clone(),
                self.conn,
                self.peer.clone(),
                welcome.wake,
                done.clone(),
            )),
        };
        self.pump = Some((done, pump));
        if !rooms.is_empty() {
            let user = me.key.clone();
            self.record(Write::Seen {
                user,
                rooms,
                at: now_secs(),
            })
            .await;
        }
        self.me = Some(me);
        None
    }

    /// Refuses a registration that a limit on its key does not allow; the
    /// connection is closed, so that it does not hold a slot.
    pub(super) fn refuse_key(&self, limit: KeyLimit) -> Option<End> {
        Metrics::inc(&self.shared.metrics.registrations_refused);
        Metrics::inc(&self.shared.metrics.key_limit_refusals);
        let message = match limit {
            KeyLimit::Connections => format!(
                "this key has {} connections already, the most this relay allows",
                self.shared.config.max_connections_per_key
            ),
            KeyLimit::Reserve => "the relay is nearly full and this key is connected already; \
                                  the last connections are kept for others"
                .to_string(),
        };
        info!(?limit, "registration refused by a per-key limit");
        self.error(None, ErrorCode::LimitReached, message);
        Some(End::KeyLimit)
    }
}
