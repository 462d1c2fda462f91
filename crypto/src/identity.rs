//! Identities: two RSA-3072 key pairs per user, their fingerprint, safety
//! numbers and the registration proof.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand_core::{CryptoRng, TryCryptoRng};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, PrivateKey, Pss, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::at_rest::StorageKey;
use crate::error::{Error, Result};
use crate::wire;

/// RSA modulus size of both identity keys, in bits.
pub const RSA_BITS: usize = 3072;
/// Length of an RSA-3072 ciphertext or signature, in bytes.
pub const RSA_LEN: usize = RSA_BITS / 8;
/// Version byte that opens an encoded [`PublicIdentity`].
pub const PUBLIC_IDENTITY_VERSION: u8 = 1;
/// The public exponent of both identity keys; no other is accepted.
pub const RSA_PUBLIC_EXPONENT: u32 = 65537;
/// Length of the RSA-PSS salt, in bytes (SHA-256's output): signatures
/// are made with it, and a signature with any other salt length does not
/// verify.
pub const PSS_SALT_LEN: usize = 32;

const FINGERPRINT_LABEL: &[u8] = b"sotto/v1/fingerprint\0";
const SAFETY_NUMBER_LABEL: &[u8] = b"sotto/v1/safety-number\0";
const REGISTER_LABEL: &[u8] = b"sotto/v1/register\0";
/// Iterations of SHA-512 behind each half of a safety number: they make a
/// search for a key whose safety-number half matches a victim's ~5,000 times
/// more expensive than one hash per try.
const SAFETY_NUMBER_ITERATIONS: usize = 5200;
/// Digits each side contributes to a safety number.
const SAFETY_DIGITS_PER_SIDE: usize = 30;
/// QR payload prefix; the rest is both fingerprints in upper-case hex.
const QR_PREFIX: &str = "SOTTO-SN:1:";

/// SHA-256 over both public keys of an identity: its stable name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, 64 characters, no separators.
    pub fn to_hex(&self) -> String {
        hex_lower(&self.0)
    }

    /// Parses 64 hex digits, ignoring spaces and colons.
    pub fn from_hex(text: &str) -> Option<Self> {
        let digits: Vec<u8> = text.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(*pair.first()?)?;
            let lo = hex_value(*pair.get(1)?)?;
            *byte = hi << 4 | lo;
        }
        Some(Self(out))
    }
}

impl fmt::Display for Fingerprint {
    /// Groups of four hex digits separated by spaces, for reading aloud.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        for (i, group) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "Fingerprint({})", hex.get(..16).unwrap_or(&hex))
    }
}

/// The public half of an identity: an RSA-OAEP-SHA256 key for wrapping
/// session keys to this user and an RSA-PSS-SHA256 key that verifies what
/// this user signs. Both are RSA-3072.
#[derive(Clone)]
pub struct PublicIdentity {
    enc: PublicKey,
    sig: PublicKey,
    enc_der: Vec<u8>,
    sig_der: Vec<u8>,
    fingerprint: Fingerprint,
}

#[derive(Serialize, Deserialize)]
struct PublicIdentityWire<'a> {
    #[serde(borrow)]
    enc: &'a [u8],
    #[serde(borrow)]
    sig: &'a [u8],
}

impl PublicIdentity {
    /// Builds the identity from its two keys, refusing any pair that is
    /// not what sotto generates ([`acceptable_keys`]).
    fn from_keys(enc: PublicKey, sig: PublicKey) -> Result<Self> {
        if !acceptable_keys(&enc, &sig) {
            return Err(Error::InvalidPublicIdentity);
        }
        let enc_der = enc
            .to_public_key_der()
            .map_err(|_| Error::InvalidPublicIdentity)?
            .into_vec();
        let sig_der = sig
            .to_public_key_der()
            .map_err(|_| Error::InvalidPublicIdentity)?
            .into_vec();
        let fingerprint = fingerprint_of(&enc_der, &sig_der);
        Ok(Self {
            enc,
            sig,
            enc_der,
            sig_der,
            fingerprint,
        })
    }

    /// Encodes the identity for export: version byte 1, then postcard of
    /// both keys' SubjectPublicKeyInfo DER (OAEP key first).
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = PublicIdentityWire {
            enc: &self.enc_der,
            sig: &self.sig_der,
        };
        wire::encode_versioned(PUBLIC_IDENTITY_VERSION, &wire)
    }

    /// Decodes an exported identity, refusing anything but two distinct,
    /// well-formed RSA public keys of exactly 3072 bits (top bit set) with
    /// public exponent 65537, in canonical DER, with nothing trailing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (&version, rest) = bytes.split_first().ok_or(Error::InvalidPublicIdentity)?;
        if version != PUBLIC_IDENTITY_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let wire: PublicIdentityWire<'_> =
            wire::decode_exact(rest).map_err(|_| Error::InvalidPublicIdentity)?;
        let enc = parse_public_key(wire.enc)?;
        let sig = parse_public_key(wire.sig)?;
        let identity = Self::from_keys(enc, sig)?;
        // Re-encoding must give the same bytes (DER and postcard alike): one
        // identity, one encoding.
        if identity.to_bytes() != bytes {
            return Err(Error::InvalidPublicIdentity);
        }
        Ok(identity)
    }

    /// The identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The safety number shared by `self` and `other` (order-independent).
    pub fn safety_number(&self, other: &PublicIdentity) -> SafetyNumber {
        SafetyNumber::new(&self.fingerprint, &other.fingerprint)
    }

    /// Checks a registration proof made by [`Identity::sign_registration`]
    /// for the relay whose TLS certificate has SHA-256 `relay`.
    pub fn verify_registration(
        &self,
        relay: &[u8; 32],
        challenge: &[u8; 32],
        name: &str,
        proof: &[u8],
    ) -> Result<()> {
        let message = registration_transcript(relay, challenge, name, &self.to_bytes());
        self.verify(&message, proof)
            .map_err(|_| Error::InvalidSignature)
    }

    /// Verifies a PSS-SHA256 signature over `message`: exactly
    /// [`RSA_LEN`] bytes, MGF1-SHA256, salt of exactly [`PSS_SALT_LEN`]
    /// bytes.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        if signature.len() != RSA_LEN {
            return Err(Error::DecryptionFailed);
        }
        let digest = Sha256::digest(message);
        self.sig
            .verify(
                Pss::<Sha256>::new_with_salt(PSS_SALT_LEN),
                &digest,
                signature,
            )
            .map_err(|_| Error::DecryptionFailed)
    }

    /// Whether `key` has the modulus of either of this identity's keys.
    pub(crate) fn uses_key(&self, key: &PublicKey) -> bool {
        self.enc.n() == key.n() || self.sig.n() == key.n()
    }

    /// Wraps `secret` to this identity's OAEP key under `label` (sessions
    /// v2, when the recipient has no valid prekey).
    pub(crate) fn wrap_secret<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: Vec<u8>,
        secret: &[u8],
    ) -> Result<Vec<u8>> {
        self.enc
            .encrypt(rng, Oaep::<Sha256>::new_with_label(label), secret)
            .map_err(|_| Error::Rsa)
    }
}

impl PartialEq for PublicIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for PublicIdentity {}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// A user's private identity: both RSA-3072 private keys.
///
/// It has no `Clone` (share it behind an `Arc`); the private keys are wiped
/// when it is dropped and `Debug` shows only the fingerprint.
pub struct Identity {
    enc: PrivateKey,
    sig: PrivateKey,
    public: PublicIdentity,
    /// Shared with the prekey secrets counted for this identity
    /// ([`crate::PrekeySecret::count_for`]).
    rsa_decryptions: Arc<AtomicU64>,
}

impl Identity {
    /// Generates a new identity from the operating system's RNG. Takes about
    /// a second or two in a release build: call it off any UI thread.
    pub fn generate() -> Result<Self> {
        Self::generate_from_rng(&mut rand::rngs::SysRng)
    }

    /// Generates a new identity from `rng` (tests use a seeded RNG).
    pub fn generate_from_rng<R: TryCryptoRng + ?Sized>(rng: &mut R) -> Result<Self> {
        let enc = PrivateKey::new(rng, RSA_BITS).map_err(|_| Error::Rsa)?;
        let sig = PrivateKey::new(rng, RSA_BITS).map_err(|_| Error::Rsa)?;
        Self::from_keys(enc, sig)
    }

    fn from_keys(enc: PrivateKey, sig: PrivateKey) -> Result<Self> {
        // The same rules as for a public identity: a private identity that
        // could not be exported and imported is never used.
        let public = PublicIdentity::from_keys(enc.to_public_key(), sig.to_public_key())?;
        Ok(Self {
            enc,
            sig,
            public,
            rsa_decryptions: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Both private keys as PKCS#8 DER (OAEP key first), in zeroizing buffers.
    pub(crate) fn to_pkcs8(&self) -> Result<[Zeroizing<Vec<u8>>; 2]> {
        let enc = self.enc.to_pkcs8_der().map_err(|_| Error::Rsa)?;
        let sig = self.sig.to_pkcs8_der().map_err(|_| Error::Rsa)?;
        Ok([
            Zeroizing::new(enc.as_bytes().to_vec()),
            Zeroizing::new(sig.as_bytes().to_vec()),
        ])
    }

    /// Rebuilds an identity from both private keys' PKCS#8 DER, under the
    /// rules of [`PublicIdentity::from_bytes`] (3072 bits, exponent 65537,
    /// two distinct keys); anything else is [`Error::CorruptIdentityFile`].
    pub(crate) fn from_pkcs8(enc: &[u8], sig: &[u8]) -> Result<Self> {
        let enc = PrivateKey::from_pkcs8_der(enc).map_err(|_| Error::CorruptIdentityFile)?;
        let sig = PrivateKey::from_pkcs8_der(sig).map_err(|_| Error::CorruptIdentityFile)?;
        Self::from_keys(enc, sig).map_err(|_| Error::CorruptIdentityFile)
    }

    /// An identity from its two private keys, each PKCS#8 DER (the OAEP key
    /// first), under the rules of an identity file (3072 bits, exponent
    /// 65537, two distinct keys; anything else is
    /// [`Error::CorruptIdentityFile`]): for tools and benchmarks that keep
    /// keys of their own. People's identities come from
    /// [`Identity::generate`] and live in identity files.
    pub fn from_private_keys(enc: &[u8], sig: &[u8]) -> Result<Self> {
        Self::from_pkcs8(enc, sig)
    }

    /// The public half.
    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// This identity's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public.fingerprint
    }

    /// A 256-bit key for encrypting this user's local data at rest (history,
    /// session state; see [`crate::at_rest`]), derived from the private keys: BLAKE3 in derive-key
    /// mode, context `"sotto/v1/local-storage " || purpose`, over both
    /// PKCS#8 encodings (OAEP key first, each prefixed with its u32 BE
    /// length). Whoever can open the identity file can derive it; nobody
    /// else can, and no extra secret needs storing.
    pub fn local_storage_key(&self, purpose: &str) -> Result<StorageKey> {
        let [enc, sig] = self.to_pkcs8()?;
        let mut hasher =
            blake3::Hasher::new_derive_key(&format!("sotto/v1/local-storage {purpose}"));
        for der in [&enc, &sig] {
            hasher.update(&len_u32(der.len()).to_be_bytes());
            hasher.update(der);
        }
        Ok(StorageKey::from_bytes(*hasher.finalize().as_bytes()))
    }

    /// How many RSA decryptions this identity's keys have performed, and
    /// the prekey secrets counted for it (those it made, and those given
    /// [`crate::PrekeySecret::count_for`]). Tests use it to show that
    /// forged announcements never reach the decryption (P3).
    pub fn rsa_decryptions(&self) -> u64 {
        self.rsa_decryptions.load(Ordering::Relaxed)
    }

    /// The counter behind [`Identity::rsa_decryptions`], for its prekeys.
    pub(crate) fn decryption_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.rsa_decryptions)
    }

    /// Proves possession of the signing key to a relay: a PSS signature over
    /// the SHA-256 of the relay's TLS certificate (as pinned by the client),
    /// the relay's challenge, the claimed name and this public identity. The
    /// certificate hash keeps one relay from replaying the proof at another.
    pub fn sign_registration<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        relay: &[u8; 32],
        challenge: &[u8; 32],
        name: &str,
    ) -> Result<Vec<u8>> {
        let message = registration_transcript(relay, challenge, name, &self.public.to_bytes());
        self.sign(rng, &message)
    }

    /// PSS-SHA256 (salt length 32, blinded) over `message`.
    pub(crate) fn sign<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        message: &[u8],
    ) -> Result<Vec<u8>> {
        let digest = Sha256::digest(message);
        self.sig
            .sign_with_rng(rng, Pss::<Sha256>::new_with_salt(PSS_SALT_LEN), &digest)
            .map_err(|_| Error::Rsa)
    }

    /// Decrypts a secret wrapped to this identity's OAEP key under `label`,
    /// with RSA blinding (sessions v2: a pair key and a chain key, when the
    /// recipient had no valid prekey). Callers must have verified the
    /// sender's signature over the wrapped secret first (P3).
    pub(crate) fn unwrap_secret<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: Vec<u8>,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.rsa_decryptions.fetch_add(1, Ordering::Relaxed);
        self.enc
            .decrypt_blinded(rng, Oaep::<Sha256>::new_with_label(label), wrapped)
            .map(Zeroizing::new)
            .map_err(|_| Error::DecryptionFailed)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.public.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The number two people compare to verify each other: 60 digits in twelve
/// groups of five, the same whichever side computes it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber {
    digits: String,
    qr: String,
}

impl SafetyNumber {
    /// The safety number of the pair `a`, `b`, in either order.
    pub fn new(a: &Fingerprint, b: &Fingerprint) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut halves = [safety_digits(low), safety_digits(high)];
        halves.sort();
        let [first, second] = halves;
        Self {
            digits: first + &second,
            qr: format!("{QR_PREFIX}{}:{}", hex_upper(&low.0), hex_upper(&high.0)),
        }
    }

    /// The 60 digits with no separators.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The digits in twelve groups of five, for reading aloud.
    pub fn groups(&self) -> Vec<&str> {
        (0..self.digits.len() / 5)
            .filter_map(|i| self.digits.get(i * 5..i * 5 + 5))
            .collect()
    }

    /// The text to put in a QR code: `SOTTO-SN:1:` then both fingerprints,
    /// lower first, in upper-case hex separated by `:` (QR alphanumeric mode).
    pub fn qr_payload(&self) -> &str {
        &self.qr
    }

    /// Whether a scanned QR payload shows the same pair of identities.
    pub fn matches_qr(&self, scanned: &str) -> bool {
        self.qr.as_bytes().ct_eq(scanned.trim().as_bytes()).into()
    }
}

impl fmt::Display for SafetyNumber {
    /// Three lines of four groups.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.groups().iter().enumerate() {
            if i > 0 {
                f.write_str(if i % 4 == 0 { "\n" } else { " " })?;
            }
            f.write_str(group)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.digits)
    }
}

fn safety_digits(fingerprint: &Fingerprint) -> String {
    let mut hash = Sha512::new_with_prefix(SAFETY_NUMBER_LABEL)
        .chain_update(fingerprint.0)
        .finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        hash = Sha512::new_with_prefix(hash)
            .chain_update(fingerprint.0)
            .finalize();
    }
    let mut digits = String::with_capacity(SAFETY_DIGITS_PER_SIDE);
    for chunk in hash.chunks_exact(5).take(SAFETY_DIGITS_PER_SIDE / 5) {
        let value = chunk.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        digits.push_str(&format!("{:05}", value % 100_000));
    }
    digits
}

fn fingerprint_of(enc_der: &[u8], sig_der: &[u8]) -> Fingerprint {
    let mut hash = Sha256::new_with_prefix(FINGERPRINT_LABEL);
    for der in [enc_der, sig_der] {
        hash.update(len_u32(der.len()).to_be_bytes());
        hash.update(der);
    }
    Fingerprint(hash.finalize().into())
}

fn registration_transcript(
    relay: &[u8; 32],
    challenge: &[u8; 32],
    name: &str,
    identity: &[u8],
) -> Vec<u8> {
    let mut message = REGISTER_LABEL.to_vec();
    message.extend_from_slice(&wire::encode(&(relay, challenge, name, identity)));
    message
}

fn parse_public_key(der: &[u8]) -> Result<PublicKey> {
    PublicKey::from_public_key_der(der).map_err(|_| Error::InvalidPublicIdentity)
}

/// The only keys sotto uses, whether they come from another user or from
/// the identity file: moduli of exactly [`RSA_BITS`] bits (the top bit
/// set, not merely [`RSA_LEN`] bytes), public exponent
/// [`RSA_PUBLIC_EXPONENT`], and two distinct keys, so that the wrapping
/// key is never also the signing key.
fn acceptable_keys(enc: &PublicKey, sig: &PublicKey) -> bool {
    acceptable_key(enc) && acceptable_key(sig) && enc.n() != sig.n()
}

/// One key under the rules of [`acceptable_keys`]: a modulus of exactly
/// [`RSA_BITS`] bits and public exponent [`RSA_PUBLIC_EXPONENT`]. Prekeys
/// (`crate::prekey`) are held to it too.
pub(crate) fn acceptable_key(key: &PublicKey) -> bool {
    let exponent = rsa::BoxedUint::from(RSA_PUBLIC_EXPONENT);
    key.n().bit_width() as usize == RSA_BITS && *key.e() == exponent
}

/// Lengths in sotto's hashes are u32; nothing hashed comes near 4 GiB.
pub(crate) fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn signatures_with_another_pss_salt_length_do_not_verify() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let identity = Identity::generate_from_rng(&mut rng).unwrap();
        let message = b"sotto/v1/test";
        let signature = identity.sign(&mut rng, message).unwrap();
        identity.public().verify(message, &signature).unwrap();

        let digest = Sha256::digest(message);
        for salt in [0, 20, PSS_SALT_LEN - 1, PSS_SALT_LEN + 1, 64] {
            let other = identity
                .sig
                .sign_with_rng(&mut rng, Pss::<Sha256>::new_with_salt(salt), &digest)
                .unwrap();
            assert!(matches!(
                identity.public().verify(message, &other),
                Err(Error::DecryptionFailed)
            ));
        }
    }
}
