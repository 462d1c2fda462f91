//! Symmetric key chains: one key per message, each derived from the one
//! before and forgotten once used, so that a copy of a chain's state
//! opens nothing that came before it (forward secrecy within a session,
//! as Signal's and Megolm's symmetric ratchets give; protocol.md 15).
//!
//! ```text
//! CK_0                = 32 random bytes, drawn when the sending session starts
//! CK_{n+1} || MK_n    = BLAKE3-keyed( key = CK_n, "sotto/v2/chain-step" ), 64 bytes of output
//! ```
//!
//! One step is one BLAKE3 compression (64 bytes of output from a single
//! block), about 0.07 us here against 0.50 us for the two HMAC-SHA256 of
//! the Signal-style step: the chain advances once for every message a
//! recipient opens, so its cost is added to every `open` (1.04 us for a
//! short message), and only a one-compression step keeps that within 10%
//! (docs/benchmarks.md). BLAKE3's keyed mode is a PRF, as HMAC is.
//!
//! A [`SendingChain`] gives `MK_n` for each message it seals, in
//! increasing order, and the chain key `CK_n` to hand to a recipient who
//! joins at `n` (who can then derive nothing before `n`). A
//! [`ReceivingChain`] gives the key of any message at most [`MAX_JUMP`]
//! ahead of the next one it expects, and of the last [`MAX_SKIPPED`] it
//! skipped, without changing (so that a message that fails to open costs
//! nothing), and forgets a key once the caller says the message opened and
//! was kept ([`ReceivingChain::forget`]).

use std::collections::BTreeMap;
use std::fmt;

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::replay::REPLAY_WINDOW;
use crate::secret::KEY_LEN;

/// The input of every chain step, under the chain key.
pub const CHAIN_STEP_LABEL: &[u8] = b"sotto/v2/chain-step";

/// The most keys a receiving chain keeps for messages it skipped: those
/// older than the replay window are refused anyway (protocol.md 17.2).
#[allow(clippy::cast_possible_truncation)] // 128 fits every usize
pub const MAX_SKIPPED: usize = REPLAY_WINDOW as usize;

/// How far ahead of the next expected message a chain derives a key: a
/// sending session seals at most [`crate::MAX_MESSAGES_PER_SESSION`]
/// (10,000) messages, so no honest message is further.
pub const MAX_JUMP: u64 = 10_000;

/// The key of one message: 32 bytes, wiped when dropped, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKey([u8; KEY_LEN]);

impl MessageKey {
    /// Wraps raw key bytes (a key kept at rest, [`ChainState`]).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKey(..)")
    }
}

/// A chain key `CK_n`: what a recipient receives to read a chain from `n`
/// on. Wiped when dropped, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ChainKey([u8; KEY_LEN]);

impl ChainKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn copy(&self) -> Self {
        Self(self.0)
    }

    /// `(MK_n, CK_{n+1})`: one BLAKE3 compression.
    fn step(&self) -> (MessageKey, ChainKey) {
        let mut out = Zeroizing::new([0u8; 2 * KEY_LEN]);
        blake3::Hasher::new_keyed(&self.0)
            .update(CHAIN_STEP_LABEL)
            .finalize_xof()
            .fill(out.as_mut_slice());
        let (next, message) = out.split_at(KEY_LEN);
        let mut key = MessageKey([0; KEY_LEN]);
        key.0.copy_from_slice(message);
        let mut chain = ChainKey([0; KEY_LEN]);
        chain.0.copy_from_slice(next);
        (key, chain)
    }

    /// `CK_{n+steps}`.
    fn advanced(&self, steps: u64) -> ChainKey {
        let mut chain = self.copy();
        for _ in 0..steps {
            chain = chain.step().1;
        }
        chain
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

/// The sender's end of a chain: it only moves forward.
pub struct SendingChain {
    /// `CK_n`.
    next: ChainKey,
    n: u64,
}

impl SendingChain {
    /// A new chain, `CK_0` drawn from `rng`.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = ChainKey([0; KEY_LEN]);
        rng.fill_bytes(&mut key.0);
        Self::from_key(key)
    }

    /// The chain whose key at 0 is `key`.
    pub fn from_key(key: ChainKey) -> Self {
        Self { next: key, n: 0 }
    }

    /// The number of the next message key not yet handed out.
    pub fn position(&self) -> u64 {
        self.n
    }

    /// `CK_n`, for a recipient who reads from `n` on, moving the chain to
    /// `n` (forgetting everything before it). `n` behind the chain, or more
    /// than [`MAX_JUMP`] ahead of it: [`Error::InvalidParameter`].
    pub fn chain_key_at(&mut self, n: u64) -> Result<ChainKey> {
        self.move_to(n)?;
        Ok(self.next.copy())
    }

    /// `MK_n`, moving the chain past `n`: nothing at or before `n` can be
    /// derived from it afterwards.
    pub fn key_at(&mut self, n: u64) -> Result<MessageKey> {
        self.move_to(n)?;
        let (key, next) = self.next.step();
        self.next = next;
        self.n = n.saturating_add(1);
        Ok(key)
    }

    fn move_to(&mut self, n: u64) -> Result<()> {
        let ahead = n.checked_sub(self.n).ok_or(Error::InvalidParameter(
            "the chain is already past this message",
        ))?;
        if ahead > MAX_JUMP {
            return Err(Error::InvalidParameter("too far ahead of the chain"));
        }
        self.next = self.next.advanced(ahead);
        self.n = n;
        Ok(())
    }
}

impl fmt::Debug for SendingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingChain").field("n", &self.n).finish()
    }
}

/// A receiving chain taken apart for storage at rest: key material,
/// zeroized on drop, never printed.
pub struct ChainState {
    /// `CK_n` of the next message not yet reached.
    pub next: ChainKey,
    /// That `n`.
    pub n: u64,
    /// The keys kept for messages passed over, ascending by number.
    pub skipped: Vec<(u64, MessageKey)>,
}

impl fmt::Debug for ChainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainState")
            .field("n", &self.n)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// The recipient's end of a chain, numbered from the first message the
/// recipient may read (its 0).
pub struct ReceivingChain {
    /// `CK_n` of the next message not yet reached.
    next: ChainKey,
    n: u64,
    /// Keys of messages passed over, not yet opened: at most
    /// [`MAX_SKIPPED`], the newest.
    skipped: BTreeMap<u64, MessageKey>,
}

impl ReceivingChain {
    /// The chain that starts, at its 0, with `key`.
    pub fn from_key(key: ChainKey) -> Self {
        Self {
            next: key,
            n: 0,
            skipped: BTreeMap::new(),
        }
    }

    /// The key of message `n`, without changing the chain: a key kept for
    /// a message passed over, or one derived ahead (at most [`MAX_JUMP`]).
    /// A message already opened, passed over too long ago, or too far
    /// ahead: [`Error::DecryptionFailed`], as for any message that does
    /// not open (P11).
    pub fn key(&self, n: u64) -> Result<MessageKey> {
        if n < self.n {
            return self
                .skipped
                .get(&n)
                .map(|key| MessageKey(key.0))
                .ok_or(Error::DecryptionFailed);
        }
        if n - self.n > MAX_JUMP {
            return Err(Error::DecryptionFailed);
        }
        Ok(self.next.advanced(n - self.n).step().0)
    }

    /// Message `n` opened and was kept: its key is forgotten, and so is the
    /// chain up to it; the keys of the messages it passed over are kept (the
    /// newest [`MAX_SKIPPED`]) for when they come. Call it only with an `n`
    /// whose [`ReceivingChain::key`] opened a message.
    pub fn forget(&mut self, n: u64) -> Result<()> {
        if n < self.n {
            return self
                .skipped
                .remove(&n)
                .map(drop)
                .ok_or(Error::DecryptionFailed);
        }
        if n - self.n > MAX_JUMP {
            return Err(Error::DecryptionFailed);
        }
        // Only the newest MAX_SKIPPED of the keys passed over are worth
        // deriving and keeping.
        let keep_from = n.saturating_sub(MAX_SKIPPED as u64);
        if self.n < keep_from {
            self.next = self.next.advanced(keep_from - self.n);
            self.n = keep_from;
        }
        while self.n < n {
            let (key, next) = self.next.step();
            self.skipped.insert(self.n, key);
            self.next = next;
            self.n += 1;
        }
        self.next = self.next.step().1;
        self.n = n.saturating_add(1);
        while self.skipped.len() > MAX_SKIPPED {
            self.skipped.pop_first();
        }
        Ok(())
    }

    /// Forgets every key kept for a message numbered below `n` (the
    /// messages the replay window no longer accepts).
    pub fn forget_before(&mut self, n: u64) {
        self.skipped = self.skipped.split_off(&n);
    }

    /// The number of the next message not yet reached.
    pub fn position(&self) -> u64 {
        self.n
    }

    /// The chain's state, keys included, for storage at rest.
    pub fn export(&self) -> ChainState {
        ChainState {
            next: self.next.copy(),
            n: self.n,
            skipped: self
                .skipped
                .iter()
                .map(|(n, key)| (*n, MessageKey(key.0)))
                .collect(),
        }
    }

    /// Rebuilds a chain from [`ReceivingChain::export`]. Refuses state no
    /// export makes: more than [`MAX_SKIPPED`] kept keys, or one for a
    /// message at or past `n` or listed twice.
    pub fn restore(state: ChainState) -> Result<Self> {
        let ChainState { next, n, skipped } = state;
        if skipped.len() > MAX_SKIPPED {
            return Err(Error::InvalidParameter("too many skipped keys"));
        }
        let mut kept = BTreeMap::new();
        for (number, key) in skipped {
            if number >= n || kept.insert(number, key).is_some() {
                return Err(Error::InvalidParameter("a skipped key out of place"));
            }
        }
        Ok(Self {
            next,
            n,
            skipped: kept,
        })
    }
}

impl fmt::Debug for ReceivingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingChain")
            .field("n", &self.n)
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

#[cfg(test)]
mod tests;
