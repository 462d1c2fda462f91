//! Publishing a prekey (`PublishPrekey`): checked against the identity
//! the connection registered, stored durably, then answered
//! `PrekeyPublished`. Clients verify every prekey themselves anyway; the
//! relay's check keeps garbage and other identities' prekeys out of its
//! directory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sotto_crypto::{MAX_PREKEY_LEN, PublicIdentity, SignedPrekey};
use sotto_proto::{ErrorCode, RelayFrame};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::send::Routing;
use super::{Connection, blocking, error};
use crate::metrics::Metrics;
use crate::store::{PrekeyRecord, StoreError, now_secs};

/// Prekeys one connection may publish at once; the allowance refills by
/// one every [`PUBLISH_REFILL`]. A client publishes one after registering
/// and one a day: more is refused `RateLimited`, so that a connection
/// cannot make the relay verify signatures and commit to disk in a loop.
pub(crate) const PUBLISH_BURST: u32 = 4;
/// See [`PUBLISH_BURST`].
pub(crate) const PUBLISH_REFILL: Duration = Duration::from_secs(10 * 60);

/// The registered identity of a connection, and its allowance of
/// publications.
pub(super) struct Publisher {
    public: Arc<PublicIdentity>,
    tokens: f64,
    last: Instant,
}

impl Publisher {
    pub(super) fn new(public: PublicIdentity) -> Self {
        Self {
            public: Arc::new(public),
            tokens: f64::from(PUBLISH_BURST),
            last: Instant::now(),
        }
    }

    /// The registered identity's fingerprint.
    pub(super) fn fingerprint(&self) -> [u8; 32] {
        *self.public.fingerprint().as_bytes()
    }

    /// Takes one publication from the allowance at `now`, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens =
            (self.tokens + elapsed / PUBLISH_REFILL.as_secs_f64()).min(f64::from(PUBLISH_BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a publication failed.
enum Refused {
    /// The prekey does not verify for the registered identity.
    Invalid,
    /// The directory could not store it.
    Store(StoreError),
}

impl Connection {
    /// Verifies `prekey` against the registered identity, stores it, and
    /// answers.
    pub(super) async fn publish_prekey(&mut self, prekey: Bytes, routing: &mut Routing) {
        let Some(publisher) = self.publisher.as_mut() else {
            self.error(None, ErrorCode::NotRegistered, "register first");
            return;
        };
        let refuse = |this: &Self, code, message: &str, routing: &mut Routing| {
            Metrics::inc(&this.shared.metrics.prekeys_refused);
            this.answer(&error(code, message.to_string()), routing);
        };
        if prekey.len() > MAX_PREKEY_LEN {
            let message = format!("a prekey is at most {MAX_PREKEY_LEN} bytes");
            return refuse(self, ErrorCode::TooLarge, &message, routing);
        }
        if !publisher.take(Instant::now()) {
            let message = "too many prekeys published on this connection; wait";
            return refuse(self, ErrorCode::RateLimited, message, routing);
        }
        let public = Arc::clone(&publisher.public);
        let fingerprint = *public.fingerprint().as_bytes();
        let now = now_secs();
        // An RSA verification: on the blocking pool.
        let verified = blocking(move || {
            let verified = SignedPrekey::verify(&prekey, &public, now).ok()?;
            let record = PrekeyRecord {
                created_at: verified.created_at(),
                expires_at: verified.expires_at(),
                prekey,
            };
            Some((*verified.id().as_bytes(), record))
        })
        .await;
        let published = match verified {
            Some(Some((id, record))) => self
                .shared
                .backend
                .publish_prekey(fingerprint, record, now)
                .await
                .map(|kept| (id, kept))
                .map_err(Refused::Store),
            Some(None) => Err(Refused::Invalid),
            None => Err(Refused::Store(StoreError::Database(
                "the verification task failed".into(),
            ))),
        };
        match published {
            Ok((id, kept)) => {
                self.shared.set_prekeys(fingerprint, kept, now);
                Metrics::inc(&self.shared.metrics.prekeys_published);
                debug!("prekey published");
                self.answer(&RelayFrame::PrekeyPublished { id }, routing);
            }
            Err(Refused::Invalid) => refuse(
                self,
                ErrorCode::BadPrekey,
                "the prekey does not verify for the registered identity",
                routing,
            ),
            Err(Refused::Store(failure)) => {
                warn!(error = %failure, "a prekey was refused: the directory is unavailable");
                self.answer(
                    &error(ErrorCode::Internal, "directory unavailable".into()),
                    routing,
                );
            }
        }
    }
}
