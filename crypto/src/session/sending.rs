//! The sending side of a session, version 2: one chain, one pair key per
//! recipient, recipients added and removed while it runs.

use std::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use rand_core::CryptoRng;

use super::{
    Conversation, CounterStore, MAX_MESSAGES_PER_SESSION, MAX_SESSION_AGE, PairReply,
    ReceivingSession, SECRET_LEN, SequenceCounter, SessionContext, SessionId, UnsignedAnnouncement,
    Via, reply,
};
use crate::chain::{ChainKey, MessageKey, SendingChain};
use crate::error::{Error, Result};
use crate::identity::{Fingerprint, PublicIdentity};
use crate::message::{
    KeySlot, MAX_PLAINTEXT_LEN, MessageHeader, PEER_VERSION, SealedMessage, commitment,
    encrypt_body, message_digest, roster_digest, slot_aad, slot_nonce,
};
use crate::prekey::VerifiedPrekey;
use crate::secret::{ContentKey, KEY_LEN, SessionKey};
use crate::wire;

/// What a recipient's pair key is wrapped to.
#[derive(Clone, Copy, Debug)]
pub enum WrapTo<'a> {
    /// Its signed prekey, verified against its pinned identity.
    Prekey(&'a VerifiedPrekey),
    /// Its identity key: the fallback when it has no valid prekey, which
    /// is not forward secret against a later compromise of its identity
    /// file (callers tell the user).
    Identity(&'a PublicIdentity),
}

impl WrapTo<'_> {
    fn owner(&self) -> Fingerprint {
        match self {
            Self::Prekey(prekey) => prekey.owner(),
            Self::Identity(identity) => identity.fingerprint(),
        }
    }

    fn via(&self) -> Via {
        match self {
            Self::Prekey(prekey) => Via::Prekey(prekey.id()),
            Self::Identity(_) => Via::Identity,
        }
    }

    fn wrap<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: Vec<u8>,
        secret: &[u8],
    ) -> Result<Vec<u8>> {
        match self {
            Self::Prekey(prekey) => prekey.encrypt_oaep(rng, &label, secret),
            Self::Identity(identity) => identity.wrap_secret(rng, label, secret),
        }
    }
}

/// One recipient of a sending session.
struct Pair {
    fingerprint: Fingerprint,
    /// The first sequence number it may read.
    first_seq: u64,
    /// Its pair key, kept for [`SendingSession::announce_again`] and to
    /// open its pair replies.
    key: SessionKey,
    /// The chain key at `first_seq`, kept (in memory only: sending
    /// sessions are never stored) for [`SendingSession::announce_again`].
    chain_key: ChainKey,
    cipher: Aes256Gcm,
}

impl Pair {
    fn secret(&self) -> [u8; SECRET_LEN] {
        let mut secret = [0u8; SECRET_LEN];
        let (pair, chain) = secret.split_at_mut(KEY_LEN);
        pair.copy_from_slice(self.key.expose_secret());
        chain.copy_from_slice(self.chain_key.expose_secret());
        secret
    }
}

/// The sending side of a session: one chain, one pair key per recipient.
pub struct SendingSession {
    conversation: Conversation,
    sender: Fingerprint,
    session_id: SessionId,
    epoch: u32,
    first_seq: u64,
    created_at: u64,
    chain: SendingChain,
    /// Sorted by fingerprint.
    recipients: Vec<Pair>,
    /// [`roster_digest`] of the sender and the recipients.
    roster: [u8; 32],
    last_seq: Option<u64>,
    sealed: u64,
}

impl SendingSession {
    /// Starts a session of `sender` in `conversation` at `epoch`, whose first
    /// message will carry `first_seq`, with a fresh chain and no recipients
    /// yet ([`SendingSession::add_recipients`]).
    pub fn start<R: CryptoRng + ?Sized>(
        rng: &mut R,
        sender: Fingerprint,
        conversation: Conversation,
        epoch: u32,
        first_seq: u64,
        created_at: u64,
    ) -> Self {
        let mut session = Self {
            conversation,
            sender,
            session_id: SessionId::random(rng),
            epoch,
            first_seq,
            created_at,
            chain: SendingChain::random(rng),
            recipients: Vec::new(),
            roster: [0; 32],
            last_seq: None,
            sealed: 0,
        };
        session.update_roster();
        session
    }

    /// The first sequence number a recipient added now could be given: the
    /// one after the last message sealed.
    pub fn next_seq(&self) -> u64 {
        self.last_seq
            .map_or(self.first_seq, |last| last.saturating_add(1))
    }

    fn context(&self, recipient: Fingerprint, first_seq: u64, via: Via) -> SessionContext {
        SessionContext {
            conversation: self.conversation.clone(),
            sender: self.sender,
            recipient,
            session_id: self.session_id,
            epoch: self.epoch,
            first_seq,
            created_at: self.created_at,
            via,
        }
    }

    /// Makes a pair for `recipient` reading from `first_seq`, after checking
    /// it may join: not the sender, admitted by the conversation, not yet a
    /// recipient, and `first_seq` not before the next message.
    fn new_pair<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        recipient: Fingerprint,
        first_seq: u64,
    ) -> Result<Pair> {
        if !self.conversation.admits(self.sender, recipient) {
            return Err(Error::InvalidParameter(
                "recipient not admitted by the conversation",
            ));
        }
        if self.recipients.iter().any(|p| p.fingerprint == recipient) {
            return Err(Error::InvalidParameter("already a recipient"));
        }
        if first_seq < self.next_seq() {
            return Err(Error::InvalidParameter(
                "a recipient cannot read messages already sealed",
            ));
        }
        let chain_key = self.chain.chain_key_at(first_seq - self.first_seq)?;
        let key = SessionKey::random(rng);
        let cipher = Aes256Gcm::new(key.expose_secret().into());
        Ok(Pair {
            fingerprint: recipient,
            first_seq,
            key,
            chain_key,
            cipher,
        })
    }

    fn insert(&mut self, pair: Pair) {
        let at = self
            .recipients
            .partition_point(|p| p.fingerprint < pair.fingerprint);
        self.recipients.insert(at, pair);
    }

    fn update_roster(&mut self) {
        self.roster = roster_digest(
            self.recipients
                .iter()
                .map(|p| p.fingerprint)
                .chain([self.sender]),
        );
    }

    /// Adds `targets` as recipients who read from `first_seq` on (pass the
    /// counter's next number, [`SequenceCounter::peek`]): a fresh pair key
    /// each, wrapped with the chain key at `first_seq` to the target's
    /// prekey or identity key. Returns the announcements to sign
    /// ([`super::sign_announcements`], one signature for all).
    /// Refuses, before any RSA work, a target named twice or already a
    /// recipient, the sender itself, one the conversation does not admit,
    /// and a `first_seq` before the next message. Costs one OAEP
    /// encryption (a public-key operation) per target.
    pub fn add_recipients<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        targets: &[WrapTo<'_>],
        first_seq: u64,
    ) -> Result<Vec<UnsignedAnnouncement>> {
        let mut owners: Vec<Fingerprint> = targets.iter().map(WrapTo::owner).collect();
        owners.sort_unstable();
        if owners.windows(2).any(|w| matches!(w, [a, b] if a == b)) {
            return Err(Error::InvalidParameter("duplicate recipient"));
        }
        let mut pairs = Vec::with_capacity(targets.len());
        for target in targets {
            pairs.push(self.new_pair(rng, target.owner(), first_seq)?);
        }
        let mut unsigned = Vec::with_capacity(targets.len());
        for (target, pair) in targets.iter().zip(&pairs) {
            let context = self.context(pair.fingerprint, first_seq, target.via());
            let wrapped_key = target.wrap(rng, context.wrap_label(), &pair.secret())?;
            unsigned.push(UnsignedAnnouncement {
                context,
                wrapped_key,
            });
        }
        for pair in pairs {
            self.insert(pair);
        }
        self.update_roster();
        Ok(unsigned)
    }

    /// Adds `recipients` reading from `first_seq` with no wrapping at all,
    /// returning their receiving sessions: for benchmarks of rooms of
    /// thousands, whose RSA identities would take minutes to make.
    ///
    /// **Hazardous** (only with the `hazmat` feature): the keys never
    /// travel, so nothing binds them to anyone.
    #[cfg(feature = "hazmat")]
    pub fn add_unwrapped<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        recipients: &[Fingerprint],
        first_seq: u64,
    ) -> Result<Vec<ReceivingSession>> {
        let mut sessions = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            let pair = self.new_pair(rng, *recipient, first_seq)?;
            let context = self.context(*recipient, first_seq, Via::Identity);
            sessions.push(ReceivingSession::from_secret(context, &pair.secret()));
            self.insert(pair);
        }
        self.update_roster();
        Ok(sessions)
    }

    /// Adds the sender of `answered` (a session this client accepted from
    /// it, in this conversation) as a recipient reading from `first_seq`,
    /// its new pair key sent back under the one it made for us: no RSA, no
    /// signature. What a member does when a newcomer announced itself.
    pub fn add_by_reply<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
        answered: &ReceivingSession,
        first_seq: u64,
    ) -> Result<PairReply> {
        let theirs = answered.context();
        if theirs.recipient != self.sender || theirs.conversation != self.conversation {
            return Err(Error::InvalidParameter(
                "not a session of this conversation to this sender",
            ));
        }
        let pair = self.new_pair(rng, theirs.sender, first_seq)?;
        let context = self.context(theirs.sender, first_seq, Via::Reply(theirs.session_id));
        let reply = reply::seal(rng, answered.pair_key(), context, &pair.secret())?;
        self.insert(pair);
        self.update_roster();
        Ok(reply)
    }

    /// Accepts the reply of `from` (its **pinned** identity) to this
    /// session: `from` is a recipient, the reply names it as sender, this
    /// sender as recipient, this conversation and this session, is current
    /// at `now`, and opens under the pair key made for `from`. No RSA.
    /// Every failure is [`Error::DecryptionFailed`].
    pub fn accept_reply(
        &self,
        reply: &PairReply,
        from: &PublicIdentity,
        now: u64,
    ) -> Result<ReceivingSession> {
        let context = &reply.context;
        let from = from.fingerprint();
        let well_formed = context.names(from, self.sender)
            && context.conversation == self.conversation
            && context.via == Via::Reply(self.session_id)
            && context.is_current(now);
        let pair = self
            .recipients
            .iter()
            .find(|p| p.fingerprint == from)
            .filter(|_| well_formed)
            .ok_or(Error::DecryptionFailed)?;
        let secret = reply::open(&pair.key, reply)?;
        Ok(ReceivingSession::from_secret(context.clone(), &secret))
    }

    /// Stops sealing to `recipient`: from the next message it gets no slot,
    /// and the header's roster no longer names it. No RSA. Whether it was a
    /// recipient.
    pub fn remove_recipient(&mut self, recipient: Fingerprint) -> bool {
        let before = self.recipients.len();
        self.recipients.retain(|p| p.fingerprint != recipient);
        let removed = self.recipients.len() != before;
        if removed {
            self.update_roster();
        }
        removed
    }

    /// A new announcement of `target`'s pair (it is a recipient): the same
    /// pair key, chain key and starting point, wrapped afresh (to `target`,
    /// which may be a newer prekey than the first time), for a recipient
    /// whose announcement never came and who asks for it again. To be
    /// signed like any other.
    pub fn announce_again<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        target: WrapTo<'_>,
    ) -> Result<UnsignedAnnouncement> {
        let pair = self
            .recipients
            .iter()
            .find(|p| p.fingerprint == target.owner())
            .ok_or(Error::InvalidParameter("not a recipient of this session"))?;
        let context = self.context(pair.fingerprint, pair.first_seq, target.via());
        let wrapped_key = target.wrap(rng, context.wrap_label(), &pair.secret())?;
        Ok(UnsignedAnnouncement {
            context,
            wrapped_key,
        })
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
        self.recipients.iter().map(|p| p.fingerprint)
    }

    /// The roster digest the next message's header carries: the sender and
    /// the current recipients.
    pub fn roster(&self) -> [u8; 32] {
        self.roster
    }

    /// Whether the session must restart before sending again (healing): it
    /// has sealed [`MAX_MESSAGES_PER_SESSION`] messages or is
    /// [`MAX_SESSION_AGE`] old at `now` (seconds since the Unix epoch).
    pub fn needs_rotation(&self, now: u64) -> bool {
        self.sealed >= MAX_MESSAGES_PER_SESSION
            || now.saturating_sub(self.created_at) >= MAX_SESSION_AGE.as_secs()
    }

    /// Seals `plaintext` to every current recipient under the next number
    /// of `counter` (persisted first, P9). The header commits to exactly
    /// the current recipients ([`SendingSession::roster`]).
    pub fn seal<R: CryptoRng + ?Sized, S: CounterStore>(
        &mut self,
        rng: &mut R,
        counter: &mut SequenceCounter<S>,
        sent_at_ms: u64,
        plaintext: &[u8],
    ) -> Result<SealedMessage> {
        if self.sealed >= MAX_MESSAGES_PER_SESSION {
            return Err(Error::SessionExhausted);
        }
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(Error::InvalidParameter("plaintext too long"));
        }
        if counter.peek() < self.next_seq() {
            return Err(Error::InvalidParameter(
                "sequence counter behind this session",
            ));
        }
        let seq = counter.next()?;
        let message_key = self.chain.key_at(seq - self.first_seq)?;
        self.last_seq = Some(seq);
        self.sealed += 1;

        let mut key = ContentKey([0u8; KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        let committed = commitment(&key);
        self.seal_parts(
            seq,
            sent_at_ms,
            plaintext,
            committed,
            &key,
            &key,
            &message_key,
        )
    }

    /// Builds the message. Production passes one key for the commitment, the
    /// body and the slots; tests pass mismatched ones to show the
    /// commitment check (P8) is what stops them.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn seal_parts(
        &self,
        seq: u64,
        sent_at_ms: u64,
        plaintext: &[u8],
        committed: [u8; 32],
        body_key: &ContentKey,
        slot_key: &ContentKey,
        message_key: &MessageKey,
    ) -> Result<SealedMessage> {
        let header = wire::encode(&MessageHeader {
            version: PEER_VERSION,
            conversation: self.conversation.clone(),
            sender: self.sender,
            session_id: self.session_id,
            epoch: self.epoch,
            seq,
            roster: self.roster,
            commitment: committed,
        });
        let (body, start) = encrypt_body(PEER_VERSION, &header, sent_at_ms, plaintext, body_key)?;
        let digest = message_digest(&header, body.get(start..).unwrap_or_default());

        // Each slot seals K XOR MK_n: the pair key alone (a departed
        // member's) or the chain alone (a copy of a later state) opens
        // nothing.
        let mut share = slot_key.0;
        for (s, m) in share.iter_mut().zip(message_key.as_bytes()) {
            *s ^= m;
        }
        let share = ContentKey(share);
        let nonce = slot_nonce(seq);
        let mut slots = Vec::with_capacity(self.recipients.len());
        for pair in &self.recipients {
            let mut ciphertext = share.0;
            let tag = pair
                .cipher
                .encrypt_inout_detached(
                    &nonce,
                    &slot_aad(&digest, &pair.fingerprint),
                    ciphertext.as_mut_slice().into(),
                )
                .map_err(|_| Error::InvalidParameter("slot"))?;
            slots.push(KeySlot {
                recipient: pair.fingerprint,
                ciphertext,
                tag: tag.into(),
            });
        }
        Ok(SealedMessage { seq, body, slots })
    }
}

impl fmt::Debug for SendingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingSession")
            .field("conversation", &self.conversation)
            .field("session_id", &self.session_id)
            .field("epoch", &self.epoch)
            .field("recipients", &self.recipients.len())
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}
