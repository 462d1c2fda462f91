//! Secret key material: zeroized on drop, never printed.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length in bytes of every symmetric key in sotto (AES-256).
pub const KEY_LEN: usize = 32;

/// A 256-bit pairwise session key.
///
/// It has no `Clone`, is wiped from memory when dropped, and its `Debug`
/// output never contains key bytes.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SessionKey([u8; KEY_LEN]);

impl SessionKey {
    /// Draws a fresh key from `rng`.
    pub fn random<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut key = [0u8; KEY_LEN];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// Wraps raw key bytes, taking ownership of them.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey { .. }")
    }
}

/// A single-use content key: encrypts one message body.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct ContentKey(pub(crate) [u8; KEY_LEN]);

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey { .. }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = SessionKey::from_bytes([0xAB; KEY_LEN]);
        let shown = format!("{key:?} {:?}", ContentKey([0xAB; KEY_LEN]));
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert_eq!(format!("{key:?}"), "SessionKey { .. }");
    }
}
