//! Identity at rest: the identity file, encrypted under a passphrase.
//!
//! Layout (version 1), all integers little-endian:
//!
//! | offset | size | field                                                   |
//! |--------|------|---------------------------------------------------------|
//! | 0      | 8    | magic `SOTTOKEY`                                        |
//! | 8      | 1    | version, `1`                                            |
//! | 9      | 4    | argon2id memory cost, KiB                               |
//! | 13     | 4    | argon2id time cost (passes)                             |
//! | 17     | 4    | argon2id parallelism                                    |
//! | 21     | 16   | salt                                                    |
//! | 37     | 12   | AES-256-GCM nonce                                       |
//! | 49     | n+16 | AES-256-GCM ciphertext and tag, associated data = bytes 0..49 |
//! | end-32 | 32   | SHA-256 of every byte before it                         |
//!
//! The key is argon2id(passphrase, salt) with the stored costs. The
//! plaintext is the postcard encoding of both private keys' PKCS#8 DER.
//! The trailing SHA-256 is not a security measure (anyone can recompute
//! it); it only lets a damaged file be told apart from a wrong passphrase.

use std::fs;
use std::path::Path;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use argon2::{Algorithm, Argon2, Params, Version};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::wire;

const MAGIC: &[u8; 8] = b"SOTTOKEY";
/// Current identity-file format version.
pub const IDENTITY_FILE_VERSION: u8 = 1;
const HEADER_LEN: usize = 49;
const TAG_LEN: usize = 16;
const CHECK_LEN: usize = 32;

/// argon2id costs for deriving the identity file's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (RFC 9106's second
    /// recommendation with one lane; about 0.2 s on one core here).
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Deliberately cheap costs for tests only: never use them for a real
    /// identity.
    pub const INSECURE_FOR_TESTS: Self = Self {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    /// Largest costs accepted when reading a file, so that a crafted file
    /// cannot make unlocking allocate without bound.
    const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    const MAX_ITERATIONS: u32 = 64;
    const MAX_PARALLELISM: u32 = 16;

    fn argon2(&self) -> Result<Argon2<'static>> {
        if self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(Error::InvalidParameter("argon2id costs out of range"));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|_| Error::InvalidParameter("argon2id costs out of range"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[derive(Serialize, Deserialize)]
struct SecretKeysWire<'a> {
    #[serde(borrow)]
    enc_pkcs8: &'a [u8],
    #[serde(borrow)]
    sig_pkcs8: &'a [u8],
}

fn derive_key(passphrase: &[u8], salt: &[u8], params: &KdfParams) -> Result<Aes256Gcm> {
    if passphrase.is_empty() {
        return Err(Error::EmptyPassphrase);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    params
        .argon2()?
        .hash_password_into(passphrase, salt, key.as_mut())
        .map_err(|_| Error::InvalidParameter("argon2id input"))?;
    Aes256Gcm::new_from_slice(key.as_ref()).map_err(|_| Error::InvalidParameter("key length"))
}

impl Identity {
    /// Encrypts this identity under `passphrase` into identity-file bytes.
    pub fn encrypt_to_bytes<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<Vec<u8>> {
        let mut salt = [0u8; 16];
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        let cipher = derive_key(passphrase, &salt, &params)?;

        let [enc, sig] = self.to_pkcs8()?;
        // Sized up front so the buffer holding the private keys never
        // reallocates and leaves an unwiped copy behind.
        let mut buffer = Zeroizing::new(Vec::with_capacity(enc.len() + sig.len() + 16));
        wire::encode_into(
            &SecretKeysWire {
                enc_pkcs8: &enc,
                sig_pkcs8: &sig,
            },
            &mut buffer,
        );

        let mut out = Vec::with_capacity(HEADER_LEN + buffer.len() + TAG_LEN + CHECK_LEN);
        out.extend_from_slice(MAGIC);
        out.push(IDENTITY_FILE_VERSION);
        for cost in [params.memory_kib, params.iterations, params.parallelism] {
            out.extend_from_slice(&cost.to_le_bytes());
        }
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &out, buffer.as_mut_slice().into())
            .map_err(|_| Error::InvalidParameter("identity too large"))?;
        out.extend_from_slice(&buffer);
        out.extend_from_slice(&tag);
        let check = Sha256::digest(&out);
        out.extend_from_slice(&check);
        Ok(out)
    }

    /// Decrypts identity-file bytes with `passphrase`.
    ///
    /// A damaged file gives [`Error::CorruptIdentityFile`], an intact file
    /// with another passphrase [`Error::WrongPassphrase`].
    pub fn decrypt_from_bytes(bytes: &[u8], passphrase: &[u8]) -> Result<Identity> {
        if bytes.len() < MAGIC.len() + 1 || !bytes.starts_with(MAGIC) {
            return Err(Error::CorruptIdentityFile);
        }
        // The version decides the rest of the layout, so it comes first.
        match bytes.get(MAGIC.len()) {
            Some(&IDENTITY_FILE_VERSION) => {}
            Some(&other) => return Err(Error::UnsupportedVersion(other)),
            None => return Err(Error::CorruptIdentityFile),
        }
        let (body, check) = bytes
            .split_at_checked(bytes.len().saturating_sub(CHECK_LEN))
            .ok_or(Error::CorruptIdentityFile)?;
        if body.len() < HEADER_LEN + TAG_LEN
            || !bool::from(Sha256::digest(body).as_slice().ct_eq(check))
        {
            return Err(Error::CorruptIdentityFile);
        }
        let (header, sealed) = body.split_at(HEADER_LEN);
        let field =
            |at: usize, len: usize| header.get(at..at + len).ok_or(Error::CorruptIdentityFile);
        let cost = |at: usize| -> Result<u32> {
            let bytes: [u8; 4] = field(at, 4)?
                .try_into()
                .map_err(|_| Error::CorruptIdentityFile)?;
            Ok(u32::from_le_bytes(bytes))
        };
        let params = KdfParams {
            memory_kib: cost(9)?,
            iterations: cost(13)?,
            parallelism: cost(17)?,
        };
        let salt = field(21, 16)?;
        let nonce: [u8; 12] = field(37, 12)?
            .try_into()
            .map_err(|_| Error::CorruptIdentityFile)?;
        let cipher = derive_key(passphrase, salt, &params).map_err(|e| match e {
            Error::EmptyPassphrase => Error::WrongPassphrase,
            _ => Error::CorruptIdentityFile,
        })?;

        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| Error::CorruptIdentityFile)?;
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                header,
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Error::WrongPassphrase)?;
        let keys: SecretKeysWire<'_> =
            wire::decode_exact(&plain).map_err(|_| Error::CorruptIdentityFile)?;
        Identity::from_pkcs8(keys.enc_pkcs8, keys.sig_pkcs8)
    }

    /// Writes this identity, encrypted under `passphrase`, to `path`.
    ///
    /// The file is created with mode 0600 under a temporary name in the same
    /// directory, synced, then renamed over `path`: a crash leaves either the
    /// old file or the new one, and the private keys never touch the disk
    /// unencrypted.
    pub fn save<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        path: &Path,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<()> {
        let bytes = self.encrypt_to_bytes(rng, passphrase, params)?;
        Ok(sotto_fsutil::write_private(path, &bytes)?)
    }

    /// Reads and decrypts the identity file at `path`.
    pub fn load(path: &Path, passphrase: &[u8]) -> Result<Identity> {
        let bytes = fs::read(path)?;
        Self::decrypt_from_bytes(&bytes, passphrase)
    }

    /// Re-encrypts the identity file at `path` under a new passphrase; the
    /// old passphrase must open it.
    pub fn change_passphrase<R: CryptoRng + ?Sized>(
        rng: &mut R,
        path: &Path,
        old: &[u8],
        new: &[u8],
        params: KdfParams,
    ) -> Result<Identity> {
        let identity = Self::load(path, old)?;
        identity.save(rng, path, new, params)?;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn identity_file_never_holds_private_keys_in_the_clear() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let identity = Identity::generate_from_rng(&mut rng).unwrap();
        let bytes = identity
            .encrypt_to_bytes(&mut rng, b"pass", KdfParams::INSECURE_FOR_TESTS)
            .unwrap();
        for der in identity.to_pkcs8().unwrap().iter() {
            // Any 32-byte window of the private key DER would betray it.
            for window in der.windows(32).step_by(97) {
                assert!(!bytes.windows(32).any(|w| w == window));
            }
        }
    }
}
