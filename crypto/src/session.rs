//! Pairwise sessions: announcing a session key to a peer, accepting one,
//! and the sequence counter whose persistence keeps nonces unique (P9).

use std::fmt;
#[cfg(feature = "hazmat")]
use std::fs;
#[cfg(feature = "hazmat")]
use std::path::PathBuf;
use std::time::Duration;

use aes_gcm::{Aes256Gcm, KeyInit};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::{Fingerprint, Identity, PublicIdentity, RSA_LEN};
use crate::secret::SessionKey;
use crate::wire;

const ANNOUNCE_LABEL: &[u8] = b"sotto/v1/announce\0";
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

/// A session key for one recipient: wrapped to the recipient's OAEP key and
/// signed, with its context, by the sender's PSS key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// What the key is bound to.
    pub context: SessionContext,
    /// RSA-OAEP-SHA256 of the 32-byte key, label `sotto/v1/session-key\0 || postcard(context)`.
    pub wrapped_key: Vec<u8>,
    /// RSA-PSS-SHA256 over `sotto/v1/announce\0 || postcard((context, wrapped_key))`.
    pub signature: Vec<u8>,
}

fn announcement_transcript(context: &SessionContext, wrapped_key: &[u8]) -> Vec<u8> {
    let mut message = ANNOUNCE_LABEL.to_vec();
    message.extend_from_slice(&wire::encode(&(context, wrapped_key)));
    message
}

/// One recipient of a sending session.
pub(crate) struct SlotKey {
    pub(crate) fingerprint: Fingerprint,
    /// Kept only for [`SendingSession::export`]; the cipher is all sealing
    /// needs, so without `hazmat` the key is wiped once the cipher exists.
    #[cfg(feature = "hazmat")]
    pub(crate) key: SessionKey,
    pub(crate) cipher: Aes256Gcm,
}

impl SlotKey {
    fn new(fingerprint: Fingerprint, key: SessionKey) -> Self {
        let cipher = cipher_for(&key);
        Self {
            fingerprint,
            #[cfg(feature = "hazmat")]
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

/// The receiving side of one pairwise session.
pub struct ReceivingSession {
    pub(crate) context: SessionContext,
    pub(crate) key: SessionKey,
    pub(crate) cipher: Aes256Gcm,
}

impl ReceivingSession {
    /// Rebuilds a session accepted earlier, from its context and the key
    /// [`ReceivingSession::export_key`] gave.
    pub fn restore(context: SessionContext, key: SessionKey) -> Self {
        let cipher = cipher_for(&key);
        Self {
            context,
            key,
            cipher,
        }
    }

    /// A copy of the session key, for storage at rest.
    pub fn export_key(&self) -> SessionKey {
        SessionKey::from_bytes(*self.key.expose_secret())
    }

    /// What the session key is bound to.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Whether the session may still open messages at `now`
    /// ([`SessionContext::is_current`]).
    pub fn is_current(&self, now: u64) -> bool {
        self.context.is_current(now)
    }
}

/// An announcement whose signature verified ([`Identity::verify_announcement`]):
/// its context is the sender's own word. Its key is not unwrapped yet.
#[derive(Debug)]
pub struct VerifiedAnnouncement<'a> {
    announcement: &'a Announcement,
}

impl VerifiedAnnouncement<'_> {
    /// The context the sender signed.
    pub fn context(&self) -> &SessionContext {
        &self.announcement.context
    }
}

impl fmt::Debug for ReceivingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingSession")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

pub(crate) fn cipher_for(key: &SessionKey) -> Aes256Gcm {
    Aes256Gcm::new(key.expose_secret().into())
}

impl Identity {
    /// Wraps `key` to `recipient` and signs it with its full `context`.
    pub fn announce<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        recipient: &PublicIdentity,
        context: SessionContext,
        key: &SessionKey,
    ) -> Result<Announcement> {
        if context.sender != self.fingerprint() || context.recipient != recipient.fingerprint() {
            return Err(Error::InvalidParameter(
                "context does not name sender and recipient",
            ));
        }
        let wrapped_key = recipient.wrap_session_key(rng, context.label(), key)?;
        let signature = self.sign(rng, &announcement_transcript(&context, &wrapped_key))?;
        Ok(Announcement {
            context,
            wrapped_key,
            signature,
        })
    }

    /// Accepts an announcement from `sender` addressed to this identity.
    ///
    /// Checks, in order: the context names `sender` and this identity, the
    /// sizes are those of RSA-3072, and the sender's PSS signature verifies.
    /// Only then is the key decrypted (with blinding), so forged or
    /// unsigned wraps never reach RSA decryption (P3). Every failure is
    /// [`Error::DecryptionFailed`] (P11).
    ///
    /// The caller still decides whether the session is welcome: that
    /// `sender` belongs in `context.conversation` and that `context.epoch`
    /// is newer than the sender's current one (no rollback).
    ///
    /// [`Identity::accept`] does not look at the clock; a receiver uses
    /// [`Identity::verify_announcement`] and
    /// [`Identity::accept_verified`], which also enforce the session's age.
    pub fn accept<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        announcement: &Announcement,
        sender: &PublicIdentity,
    ) -> Result<ReceivingSession> {
        let verified = self.verify_announcement(announcement, sender)?;
        self.unwrap_verified(rng, &verified)
    }

    /// The first, cheap half of [`Identity::accept`]: the context names
    /// `sender` and this identity, the sizes are those of RSA-3072, and the
    /// sender's PSS signature verifies (one RSA public-key operation, about
    /// 0.15 ms). No private-key operation. Every failure is
    /// [`Error::DecryptionFailed`] (P11).
    ///
    /// A caller that rations announcements per sender charges the sender
    /// only once this succeeded: a forgery is the relay's doing, not the
    /// named sender's.
    pub fn verify_announcement<'a>(
        &self,
        announcement: &'a Announcement,
        sender: &PublicIdentity,
    ) -> Result<VerifiedAnnouncement<'a>> {
        let context = &announcement.context;
        let well_formed = context.sender == sender.fingerprint()
            && context.recipient == self.fingerprint()
            && context
                .conversation
                .admits(context.sender, context.recipient)
            && announcement.wrapped_key.len() == RSA_LEN
            && announcement.signature.len() == RSA_LEN;
        if !well_formed {
            return Err(Error::DecryptionFailed);
        }
        sender
            .verify(
                &announcement_transcript(context, &announcement.wrapped_key),
                &announcement.signature,
            )
            .map_err(|_| Error::DecryptionFailed)?;
        Ok(VerifiedAnnouncement { announcement })
    }

    /// The second half: refuses a session that is not current at `now`
    /// (seconds since the Unix epoch, [`SessionContext::is_current`]), then
    /// unwraps the key (one RSA-OAEP decryption, with blinding). Every
    /// failure is [`Error::DecryptionFailed`] (P11).
    pub fn accept_verified<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        verified: &VerifiedAnnouncement<'_>,
        now: u64,
    ) -> Result<ReceivingSession> {
        if !verified.context().is_current(now) {
            return Err(Error::DecryptionFailed);
        }
        self.unwrap_verified(rng, verified)
    }

    fn unwrap_verified<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        verified: &VerifiedAnnouncement<'_>,
    ) -> Result<ReceivingSession> {
        let announcement = verified.announcement;
        let context = &announcement.context;
        let key = self.unwrap_session_key(rng, context.label(), &announcement.wrapped_key)?;
        Ok(ReceivingSession::restore(context.clone(), key))
    }
}

/// Durable storage for a [`SequenceCounter`]: the write-ahead hook of P9.
pub trait CounterStore {
    /// Records durably that sequence numbers below `limit` may have been
    /// used. Must not return `Ok` before the value is on stable storage.
    fn persist(&mut self, limit: u64) -> std::io::Result<()>;
}

/// A [`CounterStore`] that keeps nothing: for tests and throw-away sessions.
#[derive(Debug, Default)]
pub struct NoPersistence;

impl CounterStore for NoPersistence {
    fn persist(&mut self, _limit: u64) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`CounterStore`] in a small file (8 bytes, little-endian), replaced
/// atomically and synced on every reservation.
///
/// **Hazardous** (only with the `hazmat` feature, which only this crate's
/// tests and benches enable): a counter file restored from a backup brings
/// back numbers already used, and nothing ties it to the session keys it
/// numbers (docs/threat-model.md section 9). The sotto client keeps its
/// counters in its encrypted store and never continues a sending session
/// across runs.
#[cfg(feature = "hazmat")]
#[derive(Debug)]
pub struct FileCounterStore {
    path: PathBuf,
}

#[cfg(feature = "hazmat")]
impl FileCounterStore {
    /// Uses the file at `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The limit stored in the file, or 0 if there is no file yet.
    pub fn load(&self) -> Result<u64> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let bytes: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::InvalidParameter("counter file is not 8 bytes"))?;
                Ok(u64::from_le_bytes(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(feature = "hazmat")]
impl CounterStore for FileCounterStore {
    fn persist(&mut self, limit: u64) -> std::io::Result<()> {
        sotto_fsutil::write_private(&self.path, &limit.to_le_bytes())
    }
}

/// The per-conversation message sequence of one sender, which also numbers
/// the AES-GCM nonces of its key slots.
///
/// Numbers are reserved in blocks: before the first number of a block is
/// handed out, the end of the block is persisted through the
/// [`CounterStore`]. After a crash the counter resumes at the persisted
/// limit, skipping the unused rest of the block but never reusing a number
/// (P9).
#[derive(Debug)]
pub struct SequenceCounter<S> {
    next: u64,
    reserved: u64,
    block: u64,
    store: S,
}

impl<S: CounterStore> SequenceCounter<S> {
    /// Numbers reserved per write to the store.
    pub const DEFAULT_BLOCK: u64 = 64;

    /// Resumes from `persisted`, the last limit the store recorded (0 for a
    /// new conversation).
    pub fn resume(persisted: u64, store: S) -> Self {
        Self::with_block(persisted, store, Self::DEFAULT_BLOCK)
    }

    /// Like [`SequenceCounter::resume`] with `block` numbers per reservation
    /// (1 persists before every message).
    pub fn with_block(persisted: u64, store: S, block: u64) -> Self {
        Self {
            next: persisted,
            reserved: persisted,
            block: block.max(1),
            store,
        }
    }

    /// The number the next call to [`SequenceCounter::next`] returns.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Persists exactly the next unused number, for a clean shutdown: the
    /// next run resumes there and recipients see no gap.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.store.persist(self.next)?;
        self.reserved = self.next;
        Ok(())
    }

    /// Hands out the next number, persisting a new reservation first when
    /// the current one is used up. If persisting fails, nothing is handed
    /// out.
    #[allow(clippy::should_implement_trait)] // fallible, unlike Iterator::next
    pub fn next(&mut self) -> Result<u64> {
        if self.next == u64::MAX {
            return Err(Error::CounterExhausted);
        }
        if self.next >= self.reserved {
            let limit = self.next.saturating_add(self.block);
            self.store.persist(limit)?;
            self.reserved = limit;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn announcement_made_at(created_at: u64) -> (Identity, Identity, Announcement) {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let alice = Identity::generate_from_rng(&mut rng).unwrap();
        let bob = Identity::generate_from_rng(&mut rng).unwrap();
        let (_, mut announcements) = SendingSession::start(
            &mut rng,
            &alice,
            Conversation::room("lobby"),
            1,
            0,
            created_at,
            &[bob.public()],
        )
        .unwrap();
        let announcement = announcements.remove(0);
        (alice, bob, announcement)
    }

    #[test]
    fn sessions_are_current_within_their_age_and_the_clock_skew() {
        let at = |created_at: u64| SessionContext {
            conversation: Conversation::room("lobby"),
            sender: Fingerprint([1; 32]),
            recipient: Fingerprint([2; 32]),
            session_id: SessionId([0; 16]),
            epoch: 1,
            first_seq: 0,
            created_at,
        };
        let skew = MAX_CLOCK_SKEW.as_secs();
        let oldest = MAX_SESSION_AGE.as_secs() + MAX_DELIVERY_DELAY.as_secs() + skew;
        assert!(at(NOW).is_current(NOW));
        assert!(at(NOW + skew).is_current(NOW));
        assert!(!at(NOW + skew + 1).is_current(NOW));
        assert!(at(NOW - oldest).is_current(NOW));
        assert!(!at(NOW - oldest - 1).is_current(NOW));
        assert!(!at(0).is_current(NOW));
        assert!(!at(1 << 40).is_current(NOW));
        assert!(!at(u64::MAX).is_current(NOW));
    }

    #[test]
    fn an_announcement_too_old_or_from_the_future_is_refused_opaquely_before_rsa() {
        for created_at in [0, 1 << 40] {
            let (alice, bob, announcement) = announcement_made_at(created_at);
            let verified = bob
                .verify_announcement(&announcement, alice.public())
                .unwrap();
            let before = bob.rsa_decryptions();
            let result = bob.accept_verified(&mut rand::rng(), &verified, NOW);
            assert!(matches!(result, Err(Error::DecryptionFailed)), "{result:?}");
            assert_eq!(bob.rsa_decryptions(), before);
        }
        let (alice, bob, announcement) = announcement_made_at(NOW - 60);
        let verified = bob
            .verify_announcement(&announcement, alice.public())
            .unwrap();
        let session = bob
            .accept_verified(&mut rand::rng(), &verified, NOW)
            .unwrap();
        assert!(session.is_current(NOW));
        let later = NOW + MAX_SESSION_AGE.as_secs() + MAX_DELIVERY_DELAY.as_secs() + 3600;
        assert!(!session.is_current(later));
    }

    #[test]
    fn a_forged_signature_fails_verification_before_any_decryption() {
        let (alice, bob, mut announcement) = announcement_made_at(NOW);
        if let Some(byte) = announcement.signature.first_mut() {
            *byte ^= 1;
        }
        let before = bob.rsa_decryptions();
        let result = bob.verify_announcement(&announcement, alice.public());
        assert!(matches!(result, Err(Error::DecryptionFailed)), "{result:?}");
        assert_eq!(bob.rsa_decryptions(), before);
    }
}
