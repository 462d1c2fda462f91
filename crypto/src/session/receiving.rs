//! The receiving side of one sender's session, version 2: the pair key
//! and the chain, from the first message this recipient may read.

use std::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Tag};
use subtle::ConstantTimeEq;

use super::{Conversation, SECRET_LEN, SessionContext};
use crate::chain::{ChainKey, ChainState, ReceivingChain};
use crate::error::{Error, Result};
use crate::message::{
    KeySlot, MessageBody, MessageHeader, Opened, PEER_VERSION, commitment, decrypt_body,
    is_padded_len, message_digest, slot_aad, slot_nonce,
};
use crate::secret::{ContentKey, KEY_LEN, SessionKey};

/// A receiving session taken apart for storage at rest: key material,
/// zeroized on drop, never printed.
#[derive(Debug)]
pub struct ReceivingState {
    /// What the pair key is bound to.
    pub context: SessionContext,
    /// The pair key.
    pub key: SessionKey,
    /// The chain, numbered from `context.first_seq`.
    pub chain: ChainState,
}

/// The receiving side of one sender's session.
pub struct ReceivingSession {
    context: SessionContext,
    key: SessionKey,
    cipher: Aes256Gcm,
    chain: ReceivingChain,
}

impl ReceivingSession {
    /// The session a 64-byte secret (pair key, then chain key) gives.
    pub(crate) fn from_secret(context: SessionContext, secret: &[u8; SECRET_LEN]) -> Self {
        let (key, chain) = secret.split_at(KEY_LEN);
        let mut pair = [0u8; KEY_LEN];
        pair.copy_from_slice(key);
        let mut chain_key = [0u8; KEY_LEN];
        chain_key.copy_from_slice(chain);
        Self::new(
            context,
            SessionKey::from_bytes(pair),
            ReceivingChain::from_key(ChainKey::from_bytes(chain_key)),
        )
    }

    fn new(context: SessionContext, key: SessionKey, chain: ReceivingChain) -> Self {
        let cipher = Aes256Gcm::new(key.expose_secret().into());
        Self {
            context,
            key,
            cipher,
            chain,
        }
    }

    /// Rebuilds a session from [`ReceivingSession::export`].
    pub fn restore(state: ReceivingState) -> Result<Self> {
        let ReceivingState {
            context,
            key,
            chain,
        } = state;
        Ok(Self::new(context, key, ReceivingChain::restore(chain)?))
    }

    /// The session's state, keys included, for storage at rest.
    pub fn export(&self) -> ReceivingState {
        ReceivingState {
            context: self.context.clone(),
            key: SessionKey::from_bytes(*self.key.expose_secret()),
            chain: self.chain.export(),
        }
    }

    /// What the pair key is bound to.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Whether the session may still open messages at `now`
    /// ([`SessionContext::is_current`]).
    pub fn is_current(&self, now: u64) -> bool {
        self.context.is_current(now)
    }

    /// The pair key, to answer with a pair reply.
    pub(crate) fn pair_key(&self) -> &SessionKey {
        &self.key
    }

    /// Opens a message that arrived in `conversation` with this recipient's
    /// `slot`, without changing the session: a message that fails costs
    /// nothing, and one that opens is forgotten only once the caller kept
    /// it ([`ReceivingSession::forget`]).
    ///
    /// Every check must pass: the header's version, conversation, sender,
    /// session and epoch match, the number is one this recipient may read,
    /// the message is not this recipient's own (no reflection), the slot is
    /// addressed here and opens under the pair key with the whole message
    /// bound in; only then is the chain asked for the message key, and the
    /// content key (the slot's plaintext XOR that key) must match the
    /// header's commitment. Then the body is decrypted and its padding must
    /// be exact. Any failure is [`Error::DecryptionFailed`] (P11).
    pub fn open(
        &self,
        conversation: &Conversation,
        body: &MessageBody<'_>,
        slot: &[u8],
    ) -> Result<Opened> {
        let (header, mut key) = self.authenticate(conversation, body, slot)?;
        // The slot authenticated the message under the pair key: only now is
        // the chain derived (so a forgery claiming a far number costs no
        // chain steps), and the content key is the slot's plaintext XOR the
        // message key.
        let message_key = self.chain.key(header.seq - self.context.first_seq)?;
        for (k, m) in key.0.iter_mut().zip(message_key.as_bytes()) {
            *k ^= m;
        }
        if !bool::from(commitment(&key).ct_eq(&header.commitment)) {
            return Err(Error::DecryptionFailed);
        }
        let (sent_at_ms, plaintext) = decrypt_body(&key, body.ciphertext)?;
        Ok(Opened {
            seq: header.seq,
            sent_at_ms,
            roster: header.roster,
            plaintext,
        })
    }

    /// Whether the sender sealed this message for this recipient in this
    /// session: every check of [`ReceivingSession::open`] up to and
    /// including the slot's tag, but not the chain. True also for a
    /// message already opened, whose key is forgotten: that is how a
    /// recipient tells a genuine duplicate (the sender sending again, the
    /// relay delivering again) from a forgery.
    pub fn is_genuine(
        &self,
        conversation: &Conversation,
        body: &MessageBody<'_>,
        slot: &[u8],
    ) -> bool {
        self.authenticate(conversation, body, slot).is_ok()
    }

    /// The checks on the unauthenticated header, then the slot opened under
    /// the pair key over the message digest: the header and the slot's
    /// plaintext (the content key masked with the chain's key).
    fn authenticate(
        &self,
        conversation: &Conversation,
        body: &MessageBody<'_>,
        slot: &[u8],
    ) -> Result<(MessageHeader, ContentKey)> {
        let header = body.header()?;
        let context = &self.context;
        let slot = KeySlot::from_bytes(slot)?;
        let matches = header.version == PEER_VERSION
            && header.conversation == *conversation
            && header.conversation == context.conversation
            && header.sender == context.sender
            && header.sender != context.recipient
            && header.session_id == context.session_id
            && header.epoch == context.epoch
            && header.seq >= context.first_seq
            && slot.recipient == context.recipient
            && is_padded_len(body.ciphertext.len());
        if !matches {
            return Err(Error::DecryptionFailed);
        }
        let digest = message_digest(body.header, body.ciphertext);
        let mut key = ContentKey(slot.ciphertext);
        self.cipher
            .decrypt_inout_detached(
                &slot_nonce(header.seq),
                &slot_aad(&digest, &slot.recipient),
                key.0.as_mut_slice().into(),
                &Tag::from(slot.tag),
            )
            .map_err(|_| Error::DecryptionFailed)?;
        Ok((header, key))
    }

    /// Message `seq` opened and was kept: its key is forgotten (and the
    /// chain up to it; the keys of messages it passed over are kept, the
    /// newest 128, for when they come). Once forgotten, neither this session
    /// nor any copy of its state opens it again.
    pub fn forget(&mut self, seq: u64) -> Result<()> {
        let n = seq
            .checked_sub(self.context.first_seq)
            .ok_or(Error::DecryptionFailed)?;
        self.chain.forget(n)
    }

    /// The chain's key for message `seq`, for tests that build messages by
    /// hand.
    #[cfg(test)]
    pub(super) fn chain_key_for_tests(&self, seq: u64) -> crate::chain::MessageKey {
        #[allow(clippy::unwrap_used)]
        self.chain.key(seq - self.context.first_seq).unwrap()
    }

    /// Forgets the keys kept for messages numbered below `seq`: those the
    /// replay window will no longer accept.
    pub fn forget_before(&mut self, seq: u64) {
        self.chain
            .forget_before(seq.saturating_sub(self.context.first_seq));
    }
}

impl fmt::Debug for ReceivingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingSession")
            .field("context", &self.context)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}
