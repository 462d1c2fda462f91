//! Pairwise sessions: announcing a session key to a peer, accepting one,
//! and the sequence counter whose persistence keeps nonces unique (P9).
//!
//! This file holds what every part shares: the limits, the
//! [`Conversation`], the [`SessionId`] and the [`SessionContext`] a key is
//! bound to. The parts, one concern each:
//!
//! - `announce.rs`: the signed [`Announcement`], its transcript, and
//!   `Identity::announce` / `Identity::accept` (signature first).
//! - `sending.rs`: the [`SendingSession`] (and, with `hazmat`, its
//!   exportable `SendingState`).
//! - `receiving.rs`: the [`ReceivingSession`].
//! - `counter.rs`: the [`SequenceCounter`] and its [`CounterStore`].

use std::fmt;
use std::time::Duration;

use aes_gcm::{Aes256Gcm, KeyInit};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::identity::Fingerprint;
use crate::secret::SessionKey;
use crate::wire;

mod announce;
mod counter;
mod receiving;
mod sending;
#[cfg(test)]
mod tests;

pub use announce::{Announcement, VerifiedAnnouncement};
#[cfg(feature = "hazmat")]
pub use counter::FileCounterStore;
pub use counter::{CounterStore, NoPersistence, SequenceCounter};
pub use receiving::ReceivingSession;
pub use sending::SendingSession;
#[cfg(feature = "hazmat")]
pub use sending::SendingState;

const WRAP_LABEL: &[u8] = b"sotto/v1/session-key\0";

/// A sending session is rotated after this many messages (well before any
/// AES-GCM limit: slot nonces are counters, so the bound is hygiene).
pub const MAX_MESSAGES_PER_SESSION: u64 = 1 << 20;
/// A sending session is rotated once it is this old.
pub const MAX_SESSION_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How long a message may take to arrive after it was sealed: the relay's
/// default bound on stored deliveries (`offline_max_age`, 7 days). A
/// receiver keeps a session usable for [`MAX_SESSION_AGE`] plus this, so a
/// message sealed just before rotation and stored by the relay still opens.
pub const MAX_DELIVERY_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// How far the sender's clock may be ahead of (or behind) the receiver's: a
/// session made up to this far in the receiver's future is accepted.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// Where a message belongs: a named room, or the direct conversation of two
/// identities.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Conversation {
    /// A room, by its name on the relay.
    Room(String),
    /// A direct conversation; the two fingerprints are in ascending order,
    /// so both sides name it the same way (use [`Conversation::direct`]).
    Direct(Fingerprint, Fingerprint),
}

impl Conversation {
    /// The room called `name`.
    pub fn room(name: impl Into<String>) -> Self {
        Self::Room(name.into())
    }

    /// The direct conversation between `a` and `b`, in either order.
    pub fn direct(a: Fingerprint, b: Fingerprint) -> Self {
        if a <= b {
            Self::Direct(a, b)
        } else {
            Self::Direct(b, a)
        }
    }

    /// Whether `sender` may send to `recipient` here: any two distinct
    /// parties in a room (membership is the client's to judge), exactly the
    /// two parties, in canonical order, in a direct conversation.
    pub fn admits(&self, sender: Fingerprint, recipient: Fingerprint) -> bool {
        sender != recipient
            && match self {
                Self::Room(_) => true,
                Self::Direct(..) => *self == Self::direct(sender, recipient),
            }
    }
}

/// A random 128-bit session identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh random id.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId(")?;
        for b in self.0.iter().take(4) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// Everything a session key is bound to: signed by the sender and used as
/// the OAEP label, so a key cannot be moved to another conversation,
/// direction, session or epoch (P3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionContext {
    /// The conversation the session encrypts.
    pub conversation: Conversation,
    /// Who sends under this key.
    pub sender: Fingerprint,
    /// Who receives under this key.
    pub recipient: Fingerprint,
    /// The sender's session in this conversation.
    pub session_id: SessionId,
    /// Rotation counter of the sender in this conversation; strictly grows.
    pub epoch: u32,
    /// Sequence number of the first message sent in this session.
    pub first_seq: u64,
    /// When the session was made, seconds since the Unix epoch (sender's clock).
    pub created_at: u64,
}

impl SessionContext {
    /// Whether a session made at `created_at` may still be used by its
    /// receiver at `now` (seconds since the Unix epoch): made at most
    /// [`MAX_CLOCK_SKEW`] in the future, and at most [`MAX_SESSION_AGE`] +
    /// [`MAX_DELIVERY_DELAY`] + [`MAX_CLOCK_SKEW`] ago. Checked on receipt
    /// of the announcement and of every message under the session, so a
    /// `created_at` of 0 or 2^40 is refused and an old session stops
    /// opening anything.
    pub fn is_current(&self, now: u64) -> bool {
        let skew = MAX_CLOCK_SKEW.as_secs();
        let oldest = MAX_SESSION_AGE.as_secs() + MAX_DELIVERY_DELAY.as_secs() + skew;
        self.created_at <= now.saturating_add(skew) && now.saturating_sub(self.created_at) <= oldest
    }

    fn label(&self) -> Vec<u8> {
        let mut label = WRAP_LABEL.to_vec();
        label.extend_from_slice(&wire::encode(self));
        label
    }
}

fn cipher_for(key: &SessionKey) -> Aes256Gcm {
    Aes256Gcm::new(key.expose_secret().into())
}
