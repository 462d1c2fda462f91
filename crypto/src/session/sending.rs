//! The sending side of a session: one pairwise key per recipient, the
//! session's roster digest, and when it must be rotated.

use std::fmt;

use aes_gcm::Aes256Gcm;
use rand_core::CryptoRng;

use super::{
    Announcement, Conversation, MAX_MESSAGES_PER_SESSION, MAX_SESSION_AGE, SessionContext,
    SessionId, cipher_for,
};
use crate::error::{Error, Result};
use crate::identity::{Fingerprint, Identity, PublicIdentity};
use crate::secret::SessionKey;

/// One recipient of a sending session.
pub(crate) struct SlotKey {
    pub(crate) fingerprint: Fingerprint,
    /// Kept (zeroized on drop) for [`SendingSession::announce_again`] and
    /// [`SendingSession::export`]. Wiping it would protect little: the
    /// cipher beside it holds the AES-256 key schedule, whose first two
    /// round keys are the key.
    pub(crate) key: SessionKey,
    pub(crate) cipher: Aes256Gcm,
}

impl SlotKey {
    fn new(fingerprint: Fingerprint, key: SessionKey) -> Self {
        let cipher = cipher_for(&key);
        Self {
            fingerprint,
            key,
            cipher,
        }
    }
}

/// Everything needed to carry a [`SendingSession`] across a restart. It
/// holds key material: zeroized on drop, and its `Debug` shows no keys.
///
/// **Hazardous** (only with the `hazmat` feature, which only this crate's
/// tests and benches enable): restoring a sending session from a copy of
/// its state that is older than the session's last use reuses key slot
/// nonces (docs/threat-model.md section 9, "Rollback of the data directory
/// reuses nonces"). The sotto client never stores sending sessions.
#[derive(Debug)]
// Without `hazmat` it is only how `start` builds a session, not exported.
#[cfg_attr(not(feature = "hazmat"), allow(unreachable_pub))]
pub struct SendingState {
    /// The conversation.
    pub conversation: Conversation,
    /// The sender's fingerprint.
    pub sender: Fingerprint,
    /// The session id.
    pub session_id: SessionId,
    /// The epoch.
    pub epoch: u32,
    /// Sequence number of the session's first message.
    pub first_seq: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// The last sequence number sealed, if any.
    pub last_seq: Option<u64>,
    /// How many messages were sealed.
    pub sealed: u64,
    /// One pairwise key per recipient.
    pub keys: Vec<(Fingerprint, SessionKey)>,
}

/// The sending side of a session: one pairwise key per recipient.
pub struct SendingSession {
    pub(crate) conversation: Conversation,
    pub(crate) sender: Fingerprint,
    pub(crate) session_id: SessionId,
    pub(crate) epoch: u32,
    pub(crate) first_seq: u64,
    pub(crate) created_at: u64,
    /// Sorted by fingerprint.
    pub(crate) recipients: Vec<SlotKey>,
    /// [`crate::roster_digest`] of the sender and the recipients.
    pub(crate) roster: [u8; 32],
    pub(crate) last_seq: Option<u64>,
    pub(crate) sealed: u64,
}

/// Refuses a recipient list (`sorted` ascending) that names someone twice,
/// or someone `conversation` does not admit as a recipient of `sender`.
fn check_recipients(
    conversation: &Conversation,
    sender: Fingerprint,
    sorted: &[Fingerprint],
) -> Result<()> {
    if sorted.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
        return Err(Error::InvalidParameter("duplicate recipient"));
    }
    if !sorted.iter().all(|r| conversation.admits(sender, *r)) {
        return Err(Error::InvalidParameter(
            "recipient not admitted by the conversation",
        ));
    }
    Ok(())
}

impl SendingSession {
    /// Starts a session in `conversation` at `epoch`, whose first message will
    /// carry `first_seq`, with a fresh key for each of `recipients`; returns
    /// it with one signed [`Announcement`] per recipient to deliver.
    ///
    /// Each announcement costs one OAEP encryption and one PSS signature.
    pub fn start<R: CryptoRng + ?Sized>(
        rng: &mut R,
        sender: &Identity,
        conversation: Conversation,
        epoch: u32,
        first_seq: u64,
        created_at: u64,
        recipients: &[&PublicIdentity],
    ) -> Result<(Self, Vec<Announcement>)> {
        // Checked before any RSA work; `restore` below checks the same.
        let mut fingerprints: Vec<Fingerprint> =
            recipients.iter().map(|r| r.fingerprint()).collect();
        fingerprints.sort_unstable();
        check_recipients(&conversation, sender.fingerprint(), &fingerprints)?;
        let session_id = SessionId::random(rng);
        let mut keys = Vec::with_capacity(recipients.len());
        let mut announcements = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            let context = SessionContext {
                conversation: conversation.clone(),
                sender: sender.fingerprint(),
                recipient: recipient.fingerprint(),
                session_id,
                epoch,
                first_seq,
                created_at,
            };
            let key = SessionKey::random(rng);
            announcements.push(sender.announce(rng, recipient, context, &key)?);
            keys.push((recipient.fingerprint(), key));
        }
        let session = Self::from_state(SendingState {
            conversation,
            sender: sender.fingerprint(),
            session_id,
            epoch,
            first_seq,
            created_at,
            last_seq: None,
            sealed: 0,
            keys,
        })?;
        Ok((session, announcements))
    }

    /// Rebuilds a session from state saved with [`SendingSession::export`].
    ///
    /// **Hazardous** (only with the `hazmat` feature): see [`SendingState`].
    #[cfg(feature = "hazmat")]
    pub fn restore(state: SendingState) -> Result<Self> {
        Self::from_state(state)
    }

    fn from_state(state: SendingState) -> Result<Self> {
        // Taken apart field by field, not by `state.field`: a field added to
        // `SendingState` then fails to compile here instead of being dropped.
        let SendingState {
            conversation,
            sender,
            session_id,
            epoch,
            first_seq,
            created_at,
            last_seq,
            sealed,
            keys,
        } = state;
        let mut recipients: Vec<SlotKey> = keys
            .into_iter()
            .map(|(fingerprint, key)| SlotKey::new(fingerprint, key))
            .collect();
        recipients.sort_by_key(|k| k.fingerprint);
        let fingerprints: Vec<Fingerprint> = recipients.iter().map(|k| k.fingerprint).collect();
        check_recipients(&conversation, sender, &fingerprints)?;
        let roster = crate::roster_digest(fingerprints.into_iter().chain([sender]));
        Ok(Self {
            conversation,
            sender,
            session_id,
            epoch,
            first_seq,
            created_at,
            recipients,
            roster,
            last_seq,
            sealed,
        })
    }

    /// The session's state, keys included, for storage at rest.
    ///
    /// **Hazardous** (only with the `hazmat` feature): see [`SendingState`].
    #[cfg(feature = "hazmat")]
    pub fn export(&self) -> SendingState {
        SendingState {
            conversation: self.conversation.clone(),
            sender: self.sender,
            session_id: self.session_id,
            epoch: self.epoch,
            first_seq: self.first_seq,
            created_at: self.created_at,
            last_seq: self.last_seq,
            sealed: self.sealed,
            keys: self
                .recipients
                .iter()
                .map(|k| {
                    (
                        k.fingerprint,
                        SessionKey::from_bytes(*k.key.expose_secret()),
                    )
                })
                .collect(),
        }
    }

    /// A new announcement of this session to `recipient`, one of its
    /// recipients: the same context and key, wrapped and signed afresh, so
    /// its bytes differ from the first one's (for a recipient whose
    /// announcement never came and who asks for it again, protocol.md
    /// 13.8). Costs one OAEP encryption and one PSS signature.
    pub fn announce_again<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        sender: &Identity,
        recipient: &PublicIdentity,
    ) -> Result<Announcement> {
        if sender.fingerprint() != self.sender {
            return Err(Error::InvalidParameter("not this session's sender"));
        }
        let Some(slot) = self
            .recipients
            .iter()
            .find(|k| k.fingerprint == recipient.fingerprint())
        else {
            return Err(Error::InvalidParameter("not a recipient of this session"));
        };
        let context = SessionContext {
            conversation: self.conversation.clone(),
            sender: self.sender,
            recipient: recipient.fingerprint(),
            session_id: self.session_id,
            epoch: self.epoch,
            first_seq: self.first_seq,
            created_at: self.created_at,
        };
        sender.announce(rng, recipient, context, &slot.key)
    }

    /// The session id.
    pub fn id(&self) -> SessionId {
        self.session_id
    }

    /// The epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The conversation.
    pub fn conversation(&self) -> &Conversation {
        &self.conversation
    }

    /// Fingerprints of the recipients, ascending.
    pub fn recipients(&self) -> impl Iterator<Item = Fingerprint> + '_ {
        self.recipients.iter().map(|k| k.fingerprint)
    }

    /// Whether the session should be replaced before sending again: it has
    /// sealed [`MAX_MESSAGES_PER_SESSION`] messages or is older than
    /// [`MAX_SESSION_AGE`] at `now` (seconds since the Unix epoch).
    pub fn needs_rotation(&self, now: u64) -> bool {
        self.sealed >= MAX_MESSAGES_PER_SESSION
            || now.saturating_sub(self.created_at) >= MAX_SESSION_AGE.as_secs()
    }
}

impl fmt::Debug for SendingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingSession")
            .field("conversation", &self.conversation)
            .field("session_id", &self.session_id)
            .field("epoch", &self.epoch)
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}
