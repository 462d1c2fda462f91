//! Sessions: pair keys announced to prekeys in signed batches or sent back
//! in pair replies, the chain that gives every message its own key, and
//! the sequence counter whose persistence keeps nonces unique (P9).
//!
//! A sending session in a conversation has:
//!
//! - one **chain** ([`crate::chain`]): message `seq` takes the chain's key
//!   `MK_{seq - first_seq}`, and the chain forgets it;
//! - one **pair key** `S_r` per recipient, made for it alone: wrapped with
//!   RSA-OAEP to the recipient's prekey (or identity key, when it has no
//!   valid prekey) in a signed [`Announcement`], or sent under the pair key
//!   the recipient itself made for the sender ([`PairReply`], no RSA).
//!
//! Recipients join and leave a running session: one who joins at `seq`
//! receives its pair key and the chain key at `seq`, so it reads nothing
//! before; one who leaves gets no more slots. Each message's slot for `r`
//! is AES-256-GCM under `S_r` of `K XOR MK_n`, `K` the message's content
//! key: opening it takes the pair key **and** the chain. A departed
//! member, who holds the chain, lacks the others' pair keys; a copy of a
//! recipient's state (its pair key and the chain from its next message on)
//! lacks every message key already used.
//!
//! This file holds what every part shares: the limits, the
//! [`Conversation`], the [`SessionId`], [`Via`] and the [`SessionContext`]
//! a key is bound to. The parts, one concern each:
//!
//! - `announce.rs`: the [`Announcement`], signed in batches
//!   ([`sign_announcements`], over a Merkle tree: `merkle.rs`), and its
//!   acceptance, signature first.
//! - `reply.rs`: the [`PairReply`].
//! - `sending.rs`: the [`SendingSession`].
//! - `receiving.rs`: the [`ReceivingSession`] and its [`ReceivingState`].
//! - `counter.rs`: the [`SequenceCounter`] and its [`CounterStore`].

use std::fmt;
use std::time::Duration;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::identity::Fingerprint;
use crate::prekey::PrekeyId;
use crate::wire;

mod announce;
mod counter;
mod merkle;
mod receiving;
mod reply;
mod sending;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod v2_tests;

pub use announce::{
    Announcement, MAX_BATCH, UnsignedAnnouncement, VerifiedAnnouncement, sign_announcements,
};
#[cfg(feature = "hazmat")]
pub use counter::FileCounterStore;
pub use counter::{CounterStore, NoPersistence, SequenceCounter};
pub use receiving::{ReceivingSession, ReceivingState};
pub use reply::PairReply;
pub use sending::{SendingSession, WrapTo};

const WRAP_LABEL: &[u8] = b"sotto/v2/session-key\0";

/// Length of the secret a recipient receives: its pair key, then the chain
/// key from its first message on.
pub(crate) const SECRET_LEN: usize = 64;

/// A sending session restarts (new pair keys from fresh prekeys, a new
/// chain) after this many messages: the healing bound in messages.
pub const MAX_MESSAGES_PER_SESSION: u64 = 10_000;
/// A sending session restarts once it is this old: the healing bound in
/// time. A passive attacker who copied a client's state reads its
/// conversations for at most this long (or that many messages).
pub const MAX_SESSION_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a message may take to arrive after it was sealed: the relay's
/// default bound on stored deliveries (`offline_max_age`, 7 days). A
/// receiver keeps a session usable for [`MAX_SESSION_AGE`] plus this, so a
/// message sealed just before a restart and stored by the relay still opens.
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

/// How a recipient received its pair key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Via {
    /// Wrapped to the recipient's signed prekey with this id: forward
    /// secret once the recipient deletes the prekey.
    Prekey(PrekeyId),
    /// Wrapped to the recipient's identity key: it had no valid prekey.
    /// Whoever later holds the identity file and its passphrase can read
    /// the session; both sides are told.
    Identity,
    /// Sent in a [`PairReply`], under the pair key of the recipient's own
    /// session with this id, which it made for the sender.
    Reply(SessionId),
}

/// Everything a pair key is bound to: signed by the sender (or, for a
/// reply, authenticated under the pair key it answers) and used as the
/// OAEP label or the reply's associated data, so a key cannot be moved to
/// another conversation, direction, session, epoch or starting point (P3).
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
    /// The first sequence number this recipient can read: the session's
    /// first, or the next one when the recipient joined the session later.
    pub first_seq: u64,
    /// When the session was made, seconds since the Unix epoch (sender's clock).
    pub created_at: u64,
    /// How the recipient received the key.
    pub via: Via,
}

impl SessionContext {
    /// Whether a session made at `created_at` may still be used by its
    /// receiver at `now` (seconds since the Unix epoch): made at most
    /// [`MAX_CLOCK_SKEW`] in the future, and at most [`MAX_SESSION_AGE`] +
    /// [`MAX_DELIVERY_DELAY`] + [`MAX_CLOCK_SKEW`] ago.
    pub fn is_current(&self, now: u64) -> bool {
        let skew = MAX_CLOCK_SKEW.as_secs();
        let oldest = MAX_SESSION_AGE.as_secs() + MAX_DELIVERY_DELAY.as_secs() + skew;
        self.created_at <= now.saturating_add(skew) && now.saturating_sub(self.created_at) <= oldest
    }

    /// The OAEP label of the key wrapped for this context.
    pub(crate) fn wrap_label(&self) -> Vec<u8> {
        let mut label = WRAP_LABEL.to_vec();
        wire::encode_into(self, &mut label);
        label
    }

    /// The names and the conversation agree: `sender` sends to `recipient`
    /// and the conversation admits the pair.
    pub(crate) fn names(&self, sender: Fingerprint, recipient: Fingerprint) -> bool {
        self.sender == sender
            && self.recipient == recipient
            && self.conversation.admits(sender, recipient)
    }
}
