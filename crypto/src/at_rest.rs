//! Records at rest: the sealing of the client's local store.
//!
//! A client keeps its history, contacts, counters and receiving sessions
//! in a local database whose every value is one sealed record
//! (docs/protocol.md 20.1 and 20.2). This module is that seal, so that it
//! is tested and fuzzed with the rest of sotto's cryptography; the
//! database itself (client/src/vault.rs) only stores the bytes.
//!
//! # Format
//!
//! A sealed record is
//!
//! ```text
//! nonce (12 random bytes) || AES-256-GCM ciphertext (as long as the value) || tag (16)
//! ```
//!
//! under a [`StorageKey`], with associated data
//! `u32be(len table) || table || record`: the name of the table and the
//! record's key in it. A sealed value therefore opens only in the record
//! it was written to; moved to another record or table, damaged in any
//! bit, or opened under another key it fails with the one opaque
//! [`Error::DecryptionFailed`].
//!
//! The format carries no version byte: it is the one written since the
//! local store exists, and the key derivation's context
//! (`"sotto/v1/local-storage "`, [`crate::Identity::local_storage_key`])
//! names its version. A future format would be told apart by a new
//! derivation context, not by a byte in every record.
//!
//! Nonces are random: a record key is written many times (a counter, the
//! settings), so no deterministic nonce would be safe, and 96 random bits
//! keep the chance of a repeat under one key negligible for the number of
//! writes a local store sees (NIST SP 800-38D allows 2^32 messages).

use std::fmt;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::secret::KEY_LEN;

/// Length of a sealed record's nonce, at its start.
pub const RECORD_NONCE_LEN: usize = 12;
/// Length of a sealed record's tag, at its end.
pub const RECORD_TAG_LEN: usize = 16;
/// How much longer a sealed record is than its value.
pub const RECORD_OVERHEAD: usize = RECORD_NONCE_LEN + RECORD_TAG_LEN;

/// A 256-bit key for data at rest, derived from an identity
/// ([`crate::Identity::local_storage_key`]).
///
/// It is its own type, not a [`crate::SessionKey`], so a key for the local
/// store cannot be handed to a session by mistake, nor the reverse. It has
/// no `Clone`, is wiped from memory when dropped, and its `Debug` output
/// never contains key bytes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct StorageKey([u8; KEY_LEN]);

impl StorageKey {
    /// Wraps raw key bytes, taking ownership of them.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes (the client keys its record ids with them).
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey { .. }")
    }
}

/// Seals and opens records of the local store under one [`StorageKey`].
pub struct RecordCipher {
    cipher: Aes256Gcm,
}

impl fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordCipher { .. }")
    }
}

/// The associated data of a record: the table's name, length-prefixed,
/// then the record's key.
fn associated_data(table: &str, record: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + table.len() + record.len());
    aad.extend_from_slice(&u32::try_from(table.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(table.as_bytes());
    aad.extend_from_slice(record);
    aad
}

impl RecordCipher {
    /// A cipher for records under `key`.
    pub fn new(key: &StorageKey) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.expose_secret().into()),
        }
    }

    /// Seals `value` for the record `record` of `table`, with a fresh
    /// random nonce from `rng`.
    ///
    /// Fails only for a value or table name too long for AES-GCM.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        table: &str,
        record: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>> {
        let mut nonce = [0u8; RECORD_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_with_nonce(nonce, table, record, value)
    }

    fn seal_with_nonce(
        &self,
        nonce: [u8; RECORD_NONCE_LEN],
        table: &str,
        record: &[u8],
        value: &[u8],
    ) -> Result<Vec<u8>> {
        if u32::try_from(table.len()).is_err() {
            return Err(Error::InvalidParameter("table name too long"));
        }
        let mut out = Vec::with_capacity(RECORD_OVERHEAD + value.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &associated_data(table, record),
                out.get_mut(RECORD_NONCE_LEN..).unwrap_or_default().into(),
            )
            .map_err(|_| Error::InvalidParameter("record too large"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens `sealed`, the stored bytes of the record `record` of `table`.
    ///
    /// Whatever is wrong (too short, damaged, another key, another record
    /// or table), the error is [`Error::DecryptionFailed`]. The value is
    /// wiped from memory when dropped.
    pub fn open(&self, table: &str, record: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (nonce, rest) = sealed
            .split_at_checked(RECORD_NONCE_LEN)
            .ok_or(Error::DecryptionFailed)?;
        let (ciphertext, tag) = rest
            .split_at_checked(rest.len().wrapping_sub(RECORD_TAG_LEN))
            .ok_or(Error::DecryptionFailed)?;
        let nonce: [u8; RECORD_NONCE_LEN] =
            nonce.try_into().map_err(|_| Error::DecryptionFailed)?;
        let tag = Tag::try_from(tag).map_err(|_| Error::DecryptionFailed)?;
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &associated_data(table, record),
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Error::DecryptionFailed)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests

    use super::*;

    /// Known answers, made with the client vault's associated data and
    /// AES-256-GCM and opened by the vault's own code before its cipher
    /// moved here (client/src/vault.rs keeps the same vectors); key bytes
    /// 0, 1, .., 31, nonce bytes a0, a1, .., ab.
    pub(crate) const KNOWN: [(&str, &[u8], &[u8], &str); 2] = [
        (
            "history",
            &7u64.to_be_bytes(),
            b"sotto at-rest known answer",
            "a0a1a2a3a4a5a6a7a8a9aaab957708592aeb63cb4f17e2a0735aabb01fdb3730f3d9311bf97ceb2b2c5daf7aebe5359b1de15b854a14",
        ),
        (
            "settings",
            b"name",
            b"",
            "a0a1a2a3a4a5a6a7a8a9aaab90060cb33e02cc12f785f00fcb103cd0",
        ),
    ];

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn known_cipher() -> RecordCipher {
        RecordCipher::new(&StorageKey::from_bytes(std::array::from_fn(|i| {
            u8::try_from(i).unwrap()
        })))
    }

    #[test]
    fn sealing_gives_the_known_bytes() {
        let cipher = known_cipher();
        let nonce = std::array::from_fn(|i| 0xa0 + u8::try_from(i).unwrap());
        for (table, record, value, expected) in KNOWN {
            let sealed = cipher.seal_with_nonce(nonce, table, record, value).unwrap();
            assert_eq!(hex(&sealed), expected);
            assert_eq!(sealed.len(), value.len() + RECORD_OVERHEAD);
            assert_eq!(&cipher.open(table, record, &sealed).unwrap()[..], value);
        }
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = StorageKey::from_bytes([0xAB; KEY_LEN]);
        let shown = format!("{key:?} {:?}", RecordCipher::new(&key));
        assert_eq!(shown, "StorageKey { .. } RecordCipher { .. }");
    }
}
