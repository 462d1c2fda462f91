//! Prekeys: short-lived RSA-3072 OAEP keys an identity signs and publishes
//! through the relay, so that session keys are wrapped to a key whose
//! private half is deleted after a while rather than to the long-term
//! identity key (forward secrecy against a later identity compromise).
//!
//! ```text
//! Prekey        = { owner: Fingerprint (32 raw), created_at: varint, expires_at: varint,
//!                   public: varint(len) || SubjectPublicKeyInfo DER }
//! transcript    = "sotto/v2/prekey\0" || postcard(Prekey)
//! SignedPrekey  = 02 || postcard(Prekey) || varint(384) || PSS signature over transcript
//! PrekeyId      = SHA256("sotto/v2/prekey-id\0" || public DER)[..16]
//! ```
//!
//! docs/protocol.md ("Prekeys") gives every byte and every check.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand_core::{CryptoRng, TryCryptoRng};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::{Oaep, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::MAX_CLOCK_SKEW;
use crate::error::{Error, Result};
use crate::identity::{Fingerprint, Identity, PublicIdentity, RSA_BITS, acceptable_key};
use crate::wire;

#[cfg(test)]
mod tests;

/// Version byte that opens an encoded signed prekey.
pub const PREKEY_VERSION: u8 = 2;
/// Version byte that opens an encoded [`PrekeySecret`] (the client store).
pub const PREKEY_SECRET_VERSION: u8 = 2;
/// How long a prekey is valid for new sessions: `expires_at - created_at`
/// is at most this (and exactly this for the prekeys sotto makes).
pub const PREKEY_LIFETIME: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// A client makes a new prekey once its newest is this old.
pub const PREKEY_ROTATE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest grace a client keeps a prekey's private half past its
/// expiry, whatever storage age the relay announces.
pub const PREKEY_GRACE_MAX: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How many prekeys the relay keeps (and hands out) per identity: the
/// newest by `created_at`.
pub const MAX_PREKEYS: usize = 2;
/// The longest encoded signed prekey accepted anywhere, in bytes (sotto's
/// own are 853 with today's timestamps).
pub const MAX_PREKEY_LEN: usize = 1024;

const PREKEY_LABEL: &[u8] = b"sotto/v2/prekey\0";
const PREKEY_ID_LABEL: &[u8] = b"sotto/v2/prekey-id\0";

/// The name of a prekey: the first 16 bytes of
/// `SHA256("sotto/v2/prekey-id\0" || public DER)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PrekeyId(pub [u8; 16]);

impl PrekeyId {
    fn of(public_der: &[u8]) -> Self {
        let digest = Sha256::new_with_prefix(PREKEY_ID_LABEL)
            .chain_update(public_der)
            .finalize();
        let mut id = [0u8; 16];
        for (out, byte) in id.iter_mut().zip(digest.iter()) {
            *out = *byte;
        }
        Self(id)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for PrekeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrekeyId({})", self.to_hex())
    }
}

/// The signed fields of a prekey, as postcard encodes them.
#[derive(Serialize, Deserialize)]
struct PrekeyWire<'a> {
    owner: Fingerprint,
    created_at: u64,
    expires_at: u64,
    #[serde(borrow)]
    public: &'a [u8],
}

fn transcript(prekey: &PrekeyWire<'_>) -> Vec<u8> {
    let mut out = PREKEY_LABEL.to_vec();
    wire::encode_into(prekey, &mut out);
    out
}

/// An encoded signed prekey, as made by [`Identity::make_prekey`]: what a
/// client publishes and the relay hands out. [`SignedPrekey::verify`]
/// checks one.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedPrekey(Vec<u8>);

impl SignedPrekey {
    /// The encoding: `02 || postcard(Prekey) || varint(384) || signature`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoding, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Checks an encoded signed prekey of `owner` at `now_secs` (Unix
    /// seconds): exact canonical encoding with nothing trailing, at most
    /// [`MAX_PREKEY_LEN`] bytes, version [`PREKEY_VERSION`], `owner` the
    /// owner's fingerprint, an RSA-3072 key with exponent 65537 in
    /// canonical DER that is neither of the owner's identity keys,
    /// `created_at < expires_at`, a lifetime of at most
    /// [`PREKEY_LIFETIME`], `created_at <= now + MAX_CLOCK_SKEW`,
    /// `now < expires_at`, and the owner's PSS signature over the
    /// transcript. Every failure is [`Error::InvalidPrekey`].
    pub fn verify(bytes: &[u8], owner: &PublicIdentity, now_secs: u64) -> Result<VerifiedPrekey> {
        Self::check(bytes, owner, now_secs).map_err(|_| Error::InvalidPrekey)
    }

    fn check(bytes: &[u8], owner: &PublicIdentity, now: u64) -> Result<VerifiedPrekey, ()> {
        if bytes.len() > MAX_PREKEY_LEN {
            return Err(());
        }
        let (&version, rest) = bytes.split_first().ok_or(())?;
        if version != PREKEY_VERSION {
            return Err(());
        }
        let (prekey, signature): (PrekeyWire<'_>, &[u8]) = wire::decode_canonical(rest)?;
        if prekey.owner != owner.fingerprint() {
            return Err(());
        }
        let key = PublicKey::from_public_key_der(prekey.public).map_err(|_| ())?;
        let der = key.to_public_key_der().map_err(|_| ())?;
        if der.as_bytes() != prekey.public || !acceptable_key(&key) || owner.uses_key(&key) {
            return Err(());
        }
        let lifetime = prekey.expires_at.checked_sub(prekey.created_at).ok_or(())?;
        let skew = MAX_CLOCK_SKEW.as_secs();
        if lifetime == 0
            || lifetime > PREKEY_LIFETIME.as_secs()
            || prekey.created_at > now.saturating_add(skew)
            || now >= prekey.expires_at
        {
            return Err(());
        }
        owner
            .verify(&transcript(&prekey), signature)
            .map_err(|_| ())?;
        Ok(VerifiedPrekey {
            id: PrekeyId::of(prekey.public),
            owner: prekey.owner,
            created_at: prekey.created_at,
            expires_at: prekey.expires_at,
            key,
            bytes: bytes.to_vec(),
        })
    }
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignedPrekey({} bytes)", self.0.len())
    }
}

/// A prekey that passed [`SignedPrekey::verify`] for its owner: something
/// to wrap session keys to.
#[derive(Clone)]
pub struct VerifiedPrekey {
    id: PrekeyId,
    owner: Fingerprint,
    created_at: u64,
    expires_at: u64,
    key: PublicKey,
    bytes: Vec<u8>,
}

impl VerifiedPrekey {
    /// Its id.
    pub fn id(&self) -> PrekeyId {
        self.id
    }

    /// The fingerprint of the identity that signed it.
    pub fn owner(&self) -> Fingerprint {
        self.owner
    }

    /// When it was made (Unix seconds, the owner's clock).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// When it stops being valid for new sessions (Unix seconds).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether it is still valid for new sessions at `now_secs`: the time
    /// checks of [`SignedPrekey::verify`] again (made at most
    /// `MAX_CLOCK_SKEW` in the future, not yet expired).
    pub fn valid_at(&self, now_secs: u64) -> bool {
        self.created_at <= now_secs.saturating_add(MAX_CLOCK_SKEW.as_secs())
            && now_secs < self.expires_at
    }

    /// The signed encoding it was verified from.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// RSA-OAEP-SHA256 (MGF1-SHA256) of `message` to this prekey under
    /// `label`: 384 bytes.
    pub fn encrypt_oaep<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>> {
        self.key
            .encrypt(rng, Oaep::<Sha256>::new_with_label(label.to_vec()), message)
            .map_err(|_| Error::Rsa)
    }
}

impl PartialEq for VerifiedPrekey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for VerifiedPrekey {}

impl fmt::Debug for VerifiedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedPrekey")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The private key of a prekey before it is signed: generated fresh
/// ([`PrekeyKey::generate`], what every client does) or, in tests, loaded
/// from pre-generated key material.
pub struct PrekeyKey(PrivateKey);

impl PrekeyKey {
    /// Generates an RSA-3072 key (e = 65537). Slow (0.5-3 s in a release
    /// build): never on a UI thread or an async task's thread.
    pub fn generate<R: TryCryptoRng + ?Sized>(rng: &mut R) -> Result<Self> {
        Ok(Self(
            PrivateKey::new(rng, RSA_BITS).map_err(|_| Error::Rsa)?,
        ))
    }

    /// A key from its PKCS#8 DER, held to the prekey rules (3072 bits,
    /// e = 65537).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let key = PrivateKey::from_pkcs8_der(der).map_err(|_| Error::InvalidPrekey)?;
        if !acceptable_key(&key.to_public_key()) {
            return Err(Error::InvalidPrekey);
        }
        Ok(Self(key))
    }

    /// Its PKCS#8 DER, in a zeroizing buffer.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        let der = self.0.to_pkcs8_der().map_err(|_| Error::Rsa)?;
        Ok(Zeroizing::new(der.as_bytes().to_vec()))
    }
}

impl fmt::Debug for PrekeyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrekeyKey(..)")
    }
}

impl Identity {
    /// Makes a prekey valid from `created_at` (Unix seconds) for
    /// [`PREKEY_LIFETIME`]: a fresh RSA-3072 key (slow, see
    /// [`PrekeyKey::generate`]), signed with this identity. Returns what to
    /// publish and the private half to keep.
    pub fn make_prekey<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        created_at: u64,
    ) -> Result<(SignedPrekey, PrekeySecret)> {
        let key = PrekeyKey::generate(rng)?;
        self.make_prekey_with(rng, key, created_at)
    }

    /// [`Identity::make_prekey`] with the given key instead of a fresh one
    /// (tests take keys from a pre-generated pool; products always call
    /// `make_prekey`).
    pub fn make_prekey_with<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        key: PrekeyKey,
        created_at: u64,
    ) -> Result<(SignedPrekey, PrekeySecret)> {
        let expires_at = created_at
            .checked_add(PREKEY_LIFETIME.as_secs())
            .ok_or(Error::InvalidParameter("prekey created_at"))?;
        let public = key.0.to_public_key();
        if self.public().uses_key(&public) {
            return Err(Error::InvalidParameter("prekey key is an identity key"));
        }
        let der = public.to_public_key_der().map_err(|_| Error::Rsa)?;
        let prekey = PrekeyWire {
            owner: self.fingerprint(),
            created_at,
            expires_at,
            public: der.as_bytes(),
        };
        let signature = self.sign(rng, &transcript(&prekey))?;
        let mut bytes = vec![PREKEY_VERSION];
        wire::encode_into(&(&prekey, signature.as_slice()), &mut bytes);
        let secret = PrekeySecret {
            id: PrekeyId::of(der.as_bytes()),
            created_at,
            expires_at,
            key: key.0,
            decryptions: AtomicU64::new(0),
            owner_count: Some(self.decryption_counter()),
        };
        Ok((SignedPrekey(bytes), secret))
    }
}

/// The private half of a prekey, kept by its owner until
/// [`PrekeySecret::delete_at`]. No `Clone`; the key is wiped on drop and
/// `Debug` shows only the id and times.
pub struct PrekeySecret {
    id: PrekeyId,
    created_at: u64,
    expires_at: u64,
    key: PrivateKey,
    decryptions: AtomicU64,
    /// Its owner's count too ([`Identity::rsa_decryptions`]), once
    /// [`PrekeySecret::count_for`] gave it.
    owner_count: Option<Arc<AtomicU64>>,
}

/// The stored form of a [`PrekeySecret`].
#[derive(Serialize, Deserialize)]
struct PrekeySecretWire<'a> {
    id: PrekeyId,
    created_at: u64,
    expires_at: u64,
    #[serde(borrow)]
    key: &'a [u8],
}

impl PrekeySecret {
    /// Its id (that of the published prekey).
    pub fn id(&self) -> PrekeyId {
        self.id
    }

    /// When the prekey was made (Unix seconds).
    pub fn created_at(&self) -> u64 {
        self.created_at
    }

    /// When the prekey stopped being valid for new sessions (Unix seconds).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// When its owner deletes it, for a relay that keeps deliveries
    /// `storage_age` long: `expires_at + min(storage_age,
    /// PREKEY_GRACE_MAX) + MAX_CLOCK_SKEW`. A session key wrapped to it
    /// just before it expired can be stored that long by the relay.
    pub fn delete_at(&self, storage_age: Duration) -> u64 {
        let grace = storage_age.min(PREKEY_GRACE_MAX) + MAX_CLOCK_SKEW;
        self.expires_at.saturating_add(grace.as_secs())
    }

    /// Decrypts an RSA-OAEP-SHA256 ciphertext made by
    /// [`VerifiedPrekey::encrypt_oaep`] under `label`, with RSA blinding.
    /// Callers must have checked the sender's signature over it first.
    pub fn decrypt_oaep<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        label: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.decryptions.fetch_add(1, Ordering::Relaxed);
        if let Some(owner) = &self.owner_count {
            owner.fetch_add(1, Ordering::Relaxed);
        }
        self.key
            .decrypt_blinded(
                rng,
                Oaep::<Sha256>::new_with_label(label.to_vec()),
                ciphertext,
            )
            .map(Zeroizing::new)
            .map_err(|_| Error::DecryptionFailed)
    }

    /// Counts this prekey's decryptions in `owner`'s too
    /// ([`Identity::rsa_decryptions`]), for a secret read back from a store:
    /// one count per client of every RSA decryption it makes.
    pub fn count_for(&mut self, owner: &Identity) {
        self.owner_count = Some(owner.decryption_counter());
    }

    /// How many RSA decryptions this prekey has performed (tests show with
    /// it that forged announcements never reach the decryption).
    pub fn rsa_decryptions(&self) -> u64 {
        self.decryptions.load(Ordering::Relaxed)
    }

    /// The store encoding: `02 || postcard({ id: 16 raw, created_at,
    /// expires_at, key: PKCS#8 DER })`, in a zeroizing buffer. Store it
    /// only encrypted (the client seals it in its vault).
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        let der = self.key.to_pkcs8_der().map_err(|_| Error::Rsa)?;
        let wire = PrekeySecretWire {
            id: self.id,
            created_at: self.created_at,
            expires_at: self.expires_at,
            key: der.as_bytes(),
        };
        let mut out = Zeroizing::new(vec![PREKEY_SECRET_VERSION]);
        let mut body = Zeroizing::new(wire::encode(&wire));
        out.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut *body);
        Ok(out)
    }

    /// Decodes [`PrekeySecret::to_bytes`]: canonical, the key held to the
    /// prekey rules, its id that of its public key, `created_at <
    /// expires_at`. Anything else is [`Error::InvalidPrekey`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (&version, rest) = bytes.split_first().ok_or(Error::InvalidPrekey)?;
        if version != PREKEY_SECRET_VERSION {
            return Err(Error::InvalidPrekey);
        }
        let wire: PrekeySecretWire<'_> =
            wire::decode_canonical(rest).map_err(|_| Error::InvalidPrekey)?;
        let key = PrekeyKey::from_pkcs8_der(wire.key)?.0;
        let der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| Error::InvalidPrekey)?;
        if PrekeyId::of(der.as_bytes()) != wire.id || wire.created_at >= wire.expires_at {
            return Err(Error::InvalidPrekey);
        }
        Ok(Self {
            id: wire.id,
            created_at: wire.created_at,
            expires_at: wire.expires_at,
            key,
            decryptions: AtomicU64::new(0),
            owner_count: None,
        })
    }
}

impl fmt::Debug for PrekeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrekeySecret")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}
