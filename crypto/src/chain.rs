//! Symmetric key chains: one key per message, each derived from the one
//! before and forgotten once used, so that a copy of a chain's state
//! opens nothing that came before it (forward secrecy within a session,
//! as Signal's and Megolm's symmetric ratchets give).
//!
//! Groundwork for sessions v2 (issue 14, item 2): nothing in protocol
//! version 1 uses a chain yet, and the labels below are those v2 will
//! specify in docs/protocol.md once the sessions use them.
//!
//! ```text
//! CK_0     = HKDF-SHA256( salt = "sotto/v2/chain\0", ikm = root key, info = context ), 32 bytes
//! MK_n     = HMAC-SHA256( CK_n, 0x01 )          the key of message n
//! CK_{n+1} = HMAC-SHA256( CK_n, 0x02 )
//! ```
//!
//! A [`SendingChain`] hands out `(n, MK_n)` for n = 0, 1, 2, ... and
//! keeps only `CK_{n+1}`. A [`ReceivingChain`] gives the key of any
//! message at most [`MAX_JUMP`] ahead of the next one it expects, and of
//! the last [`MAX_SKIPPED`] it skipped, without changing (so that a forged
//! message that fails to open costs nothing), and forgets a key once the
//! caller says the message opened ([`ReceivingChain::forget`]).

use std::collections::BTreeMap;
use std::fmt;

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::replay::REPLAY_WINDOW;
use crate::secret::KEY_LEN;

/// The HKDF salt of a chain's first key.
pub const CHAIN_SALT: &[u8] = b"sotto/v2/chain\0";

/// The most keys a receiving chain keeps for messages it skipped: those
/// older than the replay window are refused anyway (17.2).
#[allow(clippy::cast_possible_truncation)] // 128 fits every usize
pub const MAX_SKIPPED: usize = REPLAY_WINDOW as usize;

/// How far ahead of the next expected message a receiving chain derives a
/// key: each step is two HMACs, done before the message is authenticated,
/// so a message claiming a far number must not cost more than this.
pub const MAX_JUMP: u64 = 1 << 16;

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 of `parts` under `key`, a key of at most 64 bytes (the
/// block size: HMAC pads such a key with zeros to 64 bytes, which is what
/// is done here, so the key never needs the fallible slice constructor).
/// Every key here is 32 bytes or [`CHAIN_SALT`].
fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut block = Zeroizing::new([0u8; 64]);
    for (to, from) in block.iter_mut().zip(key) {
        *to = *from;
    }
    let mut mac = <HmacSha256 as KeyInit>::new(&(*block).into());
    for part in parts {
        mac.update(part);
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// HKDF-SHA256 (RFC 5869) with a 32-byte output: extract, then one block
/// of expand.
fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let prk = hmac(salt, &[ikm]);
    hmac(&prk[..], &[info, &[1]])
}

/// The key of one message: 32 bytes, wiped when dropped, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKey([u8; KEY_LEN]);

impl MessageKey {
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

/// A chain key `CK_n`.
#[derive(Zeroize, ZeroizeOnDrop)]
struct ChainKey([u8; KEY_LEN]);

impl ChainKey {
    fn root(root: &[u8; KEY_LEN], context: &[u8]) -> Self {
        Self(*hkdf32(CHAIN_SALT, root, context))
    }

    /// `(MK_n, CK_{n+1})`.
    fn step(&self) -> (MessageKey, ChainKey) {
        (
            MessageKey(*hmac(&self.0, &[&[1]])),
            ChainKey(*hmac(&self.0, &[&[2]])),
        )
    }
}

/// The sender's end of a chain.
pub struct SendingChain {
    next: ChainKey,
    n: u64,
}

impl SendingChain {
    /// A chain from `root` (a pairwise key), bound to `context` (what
    /// that key is for: v2 passes the encoded session context).
    pub fn new(root: &[u8; KEY_LEN], context: &[u8]) -> Self {
        Self {
            next: ChainKey::root(root, context),
            n: 0,
        }
    }

    /// The next message's number and key; the chain keeps only what
    /// follows it.
    pub fn next_key(&mut self) -> (u64, MessageKey) {
        let (key, next) = self.next.step();
        self.next = next;
        let n = self.n;
        self.n = self.n.saturating_add(1);
        (n, key)
    }
}

impl fmt::Debug for SendingChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendingChain").field("n", &self.n).finish()
    }
}

/// The recipient's end of a chain.
pub struct ReceivingChain {
    /// `CK_n` of the next message not yet reached.
    next: ChainKey,
    n: u64,
    /// Keys of messages passed over, not yet opened: at most
    /// [`MAX_SKIPPED`], the newest.
    skipped: BTreeMap<u64, MessageKey>,
}

impl ReceivingChain {
    /// The chain [`SendingChain::new`] makes from the same `root` and
    /// `context`.
    pub fn new(root: &[u8; KEY_LEN], context: &[u8]) -> Self {
        Self {
            next: ChainKey::root(root, context),
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
        let mut chain = ChainKey(self.next.0);
        for _ in self.n..n {
            chain = chain.step().1;
        }
        Ok(chain.step().0)
    }

    /// Message `n` opened: its key is forgotten, and so is the chain up to
    /// it; the keys of the messages it passed over are kept (the newest
    /// [`MAX_SKIPPED`]) for when they come. Call it only with an `n` whose
    /// [`ReceivingChain::key`] opened a message.
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
        while self.n < n {
            let (key, next) = self.next.step();
            if self.n >= keep_from {
                self.skipped.insert(self.n, key);
            }
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
