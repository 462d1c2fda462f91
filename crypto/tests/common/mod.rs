//! Fixtures shared by this crate's integration tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_crypto::Identity;

/// Three identities from fixed seeds, generated once per test binary.
pub struct People {
    pub alice: Identity,
    pub bob: Identity,
    pub carol: Identity,
}

pub fn people() -> &'static People {
    static PEOPLE: OnceLock<People> = OnceLock::new();
    PEOPLE.get_or_init(|| {
        let make = |seed: u8| {
            Identity::generate_from_rng(&mut ChaCha20Rng::from_seed([seed; 32])).unwrap()
        };
        People {
            alice: make(1),
            bob: make(2),
            carol: make(3),
        }
    })
}

/// A seeded RNG; each call gives a different stream, so two sessions made in
/// one test never share keys or ids.
pub fn rng() -> ChaCha20Rng {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    ChaCha20Rng::seed_from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The repository's `testdata/` directory.
pub fn testdata() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Key `i` of the pre-generated test pool (`testdata/prekey-keys.txt`),
/// PKCS#8 DER.
pub fn pool_key_der(i: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(testdata().join("prekey-keys.txt")).unwrap();
    unhex(text.lines().filter(|l| !l.starts_with('#')).nth(i).unwrap())
}

/// `owner`'s signed prekey made from pool key `i` at `created_at`.
pub fn prekey_of(
    owner: &Identity,
    i: usize,
    created_at: u64,
) -> (sotto_crypto::SignedPrekey, sotto_crypto::PrekeySecret) {
    let key = sotto_crypto::PrekeyKey::from_pkcs8_der(&pool_key_der(i)).unwrap();
    owner.make_prekey_with(&mut rng(), key, created_at).unwrap()
}

/// postcard of two byte strings: each a varint length, then the bytes.
pub fn two_byte_strings(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for bytes in [a, b] {
        let mut len = bytes.len();
        while len >= 0x80 {
            out.push(u8::try_from(len & 0x7f).unwrap() | 0x80);
            len >>= 7;
        }
        out.push(u8::try_from(len).unwrap());
        out.extend_from_slice(bytes);
    }
    out
}

pub const IDENTITY_FILE_PASS: &[u8] = b"correct horse battery staple";

/// An identity file holding these two private keys, written from the
/// layout in protocol.md 20 (cheap Argon2id costs), passphrase
/// [`IDENTITY_FILE_PASS`].
pub fn identity_file(enc: &rsa::PrivateKey, sig: &rsa::PrivateKey) -> Vec<u8> {
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
    use argon2::{Algorithm, Argon2, Params, Version};
    use rsa::pkcs8::EncodePrivateKey;
    use sha2::{Digest, Sha256};

    let (memory, passes, lanes) = (64u32, 1u32, 1u32);
    let salt = [7u8; 16];
    let nonce = [9u8; 12];
    let mut key = [0u8; 32];
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(memory, passes, lanes, Some(32)).unwrap(),
    )
    .hash_password_into(IDENTITY_FILE_PASS, &salt, &mut key)
    .unwrap();

    let mut out = b"SOTTOKEY".to_vec();
    out.push(sotto_crypto::IDENTITY_FILE_VERSION);
    for cost in [memory, passes, lanes] {
        out.extend_from_slice(&cost.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let mut plain = two_byte_strings(
        enc.to_pkcs8_der().unwrap().as_bytes(),
        sig.to_pkcs8_der().unwrap().as_bytes(),
    );
    let tag = Aes256Gcm::new_from_slice(&key)
        .unwrap()
        .encrypt_inout_detached(&Nonce::from(nonce), &out, plain.as_mut_slice().into())
        .unwrap();
    out.extend_from_slice(&plain);
    out.extend_from_slice(&tag);
    let check = Sha256::digest(&out);
    out.extend_from_slice(&check);
    out
}

/// A sender who signs whatever it likes: an identity made from two pool
/// keys (6 and 7) whose raw signing key the test holds, so that it can
/// sign announcements `SendingSession` would never make (a context naming
/// others, a conversation that does not admit the pair). It builds them
/// from protocol.md 14 alone, so an announcement of its own that is
/// accepted also checks that section.
pub struct Forger {
    pub identity: Identity,
    sig: rsa::PrivateKey,
}

pub fn forger() -> &'static Forger {
    use rsa::pkcs8::DecodePrivateKey;
    static FORGER: OnceLock<Forger> = OnceLock::new();
    FORGER.get_or_init(|| {
        let enc = rsa::PrivateKey::from_pkcs8_der(&pool_key_der(6)).unwrap();
        let sig = rsa::PrivateKey::from_pkcs8_der(&pool_key_der(7)).unwrap();
        let identity =
            Identity::decrypt_from_bytes(&identity_file(&enc, &sig), IDENTITY_FILE_PASS).unwrap();
        Forger { identity, sig }
    })
}

/// The OAEP public key of `identity`, taken out of its encoding
/// (protocol.md 12.1: version, then two length-prefixed DER keys).
pub fn oaep_key(identity: &sotto_crypto::PublicIdentity) -> rsa::PublicKey {
    use rsa::pkcs8::DecodePublicKey;
    let bytes = identity.to_bytes();
    // version byte, then a two-byte varint length (the DER is > 127 bytes).
    let len = usize::from(bytes[1] & 0x7f) | usize::from(bytes[2]) << 7;
    rsa::PublicKey::from_public_key_der(&bytes[3..3 + len]).unwrap()
}

impl Forger {
    /// An announcement of `context` (any sender, recipient, conversation)
    /// alone in its batch: `secret` wrapped with OAEP to `to`'s identity
    /// key under `"sotto/v2/session-key\0" || postcard(context)`, and a PSS
    /// signature over `"sotto/v2/announce\0" || u32be(1) || leaf`, the leaf
    /// `SHA256("sotto/v2/announce-leaf\0" || postcard(context) ||
    /// postcard(wrapped_key))` (protocol.md 14.1-14.2).
    pub fn announce(
        &self,
        to: &sotto_crypto::PublicIdentity,
        context: sotto_crypto::SessionContext,
        secret: &[u8],
    ) -> sotto_crypto::Announcement {
        use rsa::{Oaep, Pss};
        use sha2::{Digest, Sha256};
        let mut label = b"sotto/v2/session-key\0".to_vec();
        label.extend(postcard::to_stdvec(&context).unwrap());
        let wrapped_key = oaep_key(to)
            .encrypt(&mut rng(), Oaep::<Sha256>::new_with_label(label), secret)
            .unwrap();
        let leaf: [u8; 32] = Sha256::new_with_prefix(b"sotto/v2/announce-leaf\0")
            .chain_update(postcard::to_stdvec(&(&context, &wrapped_key)).unwrap())
            .finalize()
            .into();
        let mut transcript = b"sotto/v2/announce\0".to_vec();
        transcript.extend_from_slice(&1u32.to_be_bytes());
        transcript.extend_from_slice(&leaf);
        let signature = self
            .sig
            .sign_with_rng(
                &mut rng(),
                Pss::<Sha256>::new_with_salt(32),
                &Sha256::digest(&transcript),
            )
            .unwrap();
        sotto_crypto::Announcement {
            context,
            wrapped_key,
            index: 0,
            size: 1,
            path: Vec::new(),
            signature,
        }
    }
}

/// Held by every test of a binary that decrypts with the shared identities
/// or counts their RSA decryptions, so that one test's count is not moved
/// by another's decryption running at the same time.
pub fn rsa_counting() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
