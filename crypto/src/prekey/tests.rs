//! Every check of `SignedPrekey::verify`, each shown to trip on its own,
//! and the private half's OAEP and store encoding.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rsa::traits::PublicKeyParts;

use super::*;

const T: u64 = 1_764_000_000;
const DAY: u64 = 24 * 60 * 60;
const SKEW: u64 = 60 * 60;
const LABEL: &[u8] = b"sotto/v2/test\0";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

struct People {
    alice: Identity,
    bob: Identity,
}

fn people() -> &'static People {
    static PEOPLE: OnceLock<People> = OnceLock::new();
    PEOPLE.get_or_init(|| {
        let load = |name: &str| {
            Identity::load(
                &testdata().join(format!("identities/{name}.sotto-id")),
                b"sotto test vectors",
            )
            .unwrap()
        };
        People {
            alice: load("alice"),
            bob: load("bob"),
        }
    })
}

/// Key `i` of the pre-generated test pool.
fn pool_key(i: usize) -> PrekeyKey {
    let text = std::fs::read_to_string(testdata().join("prekey-keys.txt")).unwrap();
    let line = text.lines().filter(|l| !l.starts_with('#')).nth(i).unwrap();
    PrekeyKey::from_pkcs8_der(&unhex(line)).unwrap()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

/// Alice's signed prekey made from pool key 0 at `T`.
fn alice_prekey() -> &'static (SignedPrekey, PrekeySecret) {
    static PREKEY: OnceLock<(SignedPrekey, PrekeySecret)> = OnceLock::new();
    PREKEY.get_or_init(|| {
        people()
            .alice
            .make_prekey_with(&mut rng(), pool_key(0), T)
            .unwrap()
    })
}

/// A prekey with any fields, signed by `signer`, encoded as sotto does.
fn forge(signer: &Identity, owner: Fingerprint, created: u64, expires: u64, der: &[u8]) -> Vec<u8> {
    let prekey = PrekeyWire {
        owner,
        created_at: created,
        expires_at: expires,
        public: der,
    };
    let signature = signer.sign(&mut rng(), &transcript(&prekey)).unwrap();
    let mut out = vec![PREKEY_VERSION];
    wire::encode_into(&(&prekey, signature.as_slice()), &mut out);
    out
}

fn der_of(key: &PublicKey) -> Vec<u8> {
    key.to_public_key_der().unwrap().into_vec()
}

fn pool_der(i: usize) -> Vec<u8> {
    der_of(&pool_key(i).0.to_public_key())
}

fn refused(bytes: &[u8], owner: &PublicIdentity, now: u64) -> bool {
    matches!(
        SignedPrekey::verify(bytes, owner, now),
        Err(Error::InvalidPrekey)
    )
}

#[test]
fn a_prekey_verifies_for_its_owner_and_round_trips_oaep() {
    let (signed, secret) = alice_prekey();
    let alice = people().alice.public();
    let verified = SignedPrekey::verify(signed.as_bytes(), alice, T).unwrap();
    assert_eq!(verified.id(), secret.id());
    assert_eq!(verified.id(), PrekeyId::of(&pool_der(0)));
    assert_eq!(verified.owner(), alice.fingerprint());
    assert_eq!(
        (verified.created_at(), verified.expires_at()),
        (T, T + PREKEY_LIFETIME.as_secs())
    );
    assert_eq!(verified.bytes(), signed.as_bytes());
    assert!(signed.as_bytes().len() <= MAX_PREKEY_LEN);

    let mut rng = rng();
    let ciphertext = verified.encrypt_oaep(&mut rng, LABEL, b"key").unwrap();
    assert_eq!(ciphertext.len(), crate::RSA_LEN);
    let before = secret.rsa_decryptions();
    assert_eq!(
        &secret.decrypt_oaep(&mut rng, LABEL, &ciphertext).unwrap()[..],
        b"key"
    );
    assert!(matches!(
        secret.decrypt_oaep(&mut rng, b"sotto/v2/other\0", &ciphertext),
        Err(Error::DecryptionFailed)
    ));
    assert_eq!(secret.rsa_decryptions(), before + 2);
}

#[test]
fn prekeys_of_another_signer_or_owner_are_refused() {
    let People { alice, bob } = people();
    let der = pool_der(1);
    let end = T + DAY;
    // The control: the same fields signed by Alice verify.
    let good = forge(alice, alice.fingerprint(), T, end, &der);
    SignedPrekey::verify(&good, alice.public(), T).unwrap();
    // Bob signs a prekey that names Alice as its owner.
    let by_bob = forge(bob, alice.fingerprint(), T, end, &der);
    assert!(refused(&by_bob, alice.public(), T));
    // Alice signs a prekey that names Bob: owner mismatch either way.
    let for_bob = forge(alice, bob.fingerprint(), T, end, &der);
    assert!(refused(&for_bob, alice.public(), T));
    assert!(refused(&for_bob, bob.public(), T));
    // Bob's genuine prekey is not Alice's.
    let bobs = forge(bob, bob.fingerprint(), T, end, &der);
    SignedPrekey::verify(&bobs, bob.public(), T).unwrap();
    assert!(refused(&bobs, alice.public(), T));
}

#[test]
fn any_changed_byte_is_refused() {
    let (signed, _) = alice_prekey();
    let alice = people().alice.public();
    let bytes = signed.as_bytes();
    for i in 0..bytes.len() {
        for flip in [0x01, 0x80] {
            let mut changed = bytes.to_vec();
            changed[i] ^= flip;
            assert!(refused(&changed, alice, T), "byte {i} ^ {flip:#x}");
        }
    }
}

#[test]
fn the_validity_window_is_enforced() {
    let alice = &people().alice;
    let public = alice.public();
    let der = pool_der(1);
    let (signed, _) = alice_prekey();
    let expires = T + PREKEY_LIFETIME.as_secs();
    // Expired: valid up to the second before expires_at.
    SignedPrekey::verify(signed.as_bytes(), public, expires - 1).unwrap();
    assert!(refused(signed.as_bytes(), public, expires));
    assert!(refused(signed.as_bytes(), public, u64::MAX));
    // From the future: up to MAX_CLOCK_SKEW ahead of the verifier.
    SignedPrekey::verify(signed.as_bytes(), public, T - SKEW).unwrap();
    assert!(refused(signed.as_bytes(), public, T - SKEW - 1));
    let verified = SignedPrekey::verify(signed.as_bytes(), public, T).unwrap();
    assert!(verified.valid_at(T - SKEW) && verified.valid_at(expires - 1));
    assert!(!verified.valid_at(T - SKEW - 1) && !verified.valid_at(expires));
    // A lifetime of exactly PREKEY_LIFETIME, not one second more.
    let longest = forge(alice, alice.fingerprint(), T, expires, &der);
    SignedPrekey::verify(&longest, public, T).unwrap();
    let longer = forge(alice, alice.fingerprint(), T, expires + 1, &der);
    assert!(refused(&longer, public, T));
    // created_at < expires_at.
    for end in [T, T - 1, 0] {
        assert!(refused(
            &forge(alice, alice.fingerprint(), T, end, &der),
            public,
            T - 2
        ));
    }
}

#[test]
fn keys_sotto_does_not_make_are_refused() {
    let alice = &people().alice;
    let public = alice.public();
    let fp = alice.fingerprint();
    let end = T + DAY;
    // 2048 bits.
    let small = PrivateKey::new(&mut rng(), 2048).unwrap().to_public_key();
    assert!(refused(
        &forge(alice, fp, T, end, &der_of(&small)),
        public,
        T
    ));
    // Exponent 3 on a 3072-bit modulus.
    let key = pool_key(1).0.to_public_key();
    let e3 = PublicKey::new(key.n().as_ref().clone(), rsa::BoxedUint::from(3u32)).unwrap();
    assert!(refused(&forge(alice, fp, T, end, &der_of(&e3)), public, T));
    // The control with the same modulus and e = 65537.
    SignedPrekey::verify(&forge(alice, fp, T, end, &der_of(&key)), public, T).unwrap();
    // Either of the owner's own identity keys.
    let identity = public.to_bytes();
    let (enc, sig) = (&identity[3..425], &identity[427..849]);
    PublicKey::from_public_key_der(enc).unwrap();
    PublicKey::from_public_key_der(sig).unwrap();
    for der in [enc, sig] {
        assert!(refused(&forge(alice, fp, T, end, der), public, T));
    }
    assert!(matches!(
        alice.make_prekey_with(
            &mut rng(),
            PrekeyKey(PrivateKey::from_pkcs8_der(&alice.to_pkcs8().unwrap()[0]).unwrap()),
            T
        ),
        Err(Error::InvalidParameter(_))
    ));
    // Garbage instead of DER.
    assert!(refused(&forge(alice, fp, T, end, b"not a key"), public, T));
}

#[test]
fn only_the_one_canonical_encoding_is_accepted() {
    let (signed, _) = alice_prekey();
    let alice = people().alice.public();
    let bytes = signed.as_bytes();
    // Trailing bytes, truncation, other versions, nothing at all.
    for extra in [&[0u8][..], &[1, 2, 3]] {
        assert!(refused(&[bytes, extra].concat(), alice, T));
    }
    assert!(refused(&bytes[..bytes.len() - 1], alice, T));
    assert!(refused(&[], alice, T));
    for version in [0, 1, 3, 0xff] {
        let mut other = bytes.to_vec();
        other[0] = version;
        assert!(refused(&other, alice, T));
    }
    // Layout: 02 || owner (32) || created_at || expires_at || len || der ||
    // 80 03 (384) || signature.
    let created = wire::encode(&T);
    let at = 33;
    assert_eq!(&bytes[at..at + created.len()], &created[..]);
    // created_at as an over-long varint (an extra 0x80 .. 0x00 group): the
    // signed transcript re-encodes to the same bytes, so only the
    // canonical-encoding rule refuses it.
    let mut long = created.clone();
    *long.last_mut().unwrap() |= 0x80;
    long.push(0x00);
    let mut overlong = bytes[..at].to_vec();
    overlong.extend_from_slice(&long);
    overlong.extend_from_slice(&bytes[at + created.len()..]);
    assert!(refused(&overlong, alice, T));
    // The signature's length 384 as `80 83 00` instead of `80 03`.
    let sig_at = bytes.len() - crate::RSA_LEN - 2;
    assert_eq!(&bytes[sig_at..sig_at + 2], &[0x80, 0x03]);
    let mut overlong = bytes[..sig_at].to_vec();
    overlong.extend_from_slice(&[0x80, 0x83, 0x00]);
    overlong.extend_from_slice(&bytes[sig_at + 2..]);
    assert!(refused(&overlong, alice, T));
    // Longer than MAX_PREKEY_LEN.
    assert!(refused(&vec![PREKEY_VERSION; MAX_PREKEY_LEN + 1], alice, T));
}

#[test]
fn the_secret_round_trips_through_its_store_encoding_only() {
    let (signed, secret) = alice_prekey();
    let verified = SignedPrekey::verify(signed.as_bytes(), people().alice.public(), T).unwrap();
    let stored = secret.to_bytes().unwrap();
    assert_eq!(stored[0], PREKEY_SECRET_VERSION);
    let back = PrekeySecret::from_bytes(&stored).unwrap();
    assert_eq!(
        (back.id(), back.created_at(), back.expires_at()),
        (secret.id(), secret.created_at(), secret.expires_at())
    );
    let mut rng = rng();
    let ciphertext = verified.encrypt_oaep(&mut rng, LABEL, b"k").unwrap();
    assert_eq!(
        &back.decrypt_oaep(&mut rng, LABEL, &ciphertext).unwrap()[..],
        b"k"
    );
    // Another id, a trailing byte, another version: refused.
    let mut other_id = stored.to_vec();
    other_id[1] ^= 1;
    let mut other_version = stored.to_vec();
    other_version[0] = 1;
    for bad in [other_id, [&stored[..], &[0]].concat(), other_version] {
        assert!(matches!(
            PrekeySecret::from_bytes(&bad),
            Err(Error::InvalidPrekey)
        ));
    }
    assert_eq!(
        format!("{secret:?}"),
        format!(
            "PrekeySecret {{ id: {:?}, created_at: {T}, expires_at: {}, .. }}",
            secret.id(),
            T + PREKEY_LIFETIME.as_secs()
        )
    );
}

#[test]
fn the_private_half_is_deleted_after_the_capped_grace() {
    let (_, secret) = alice_prekey();
    let expires = T + PREKEY_LIFETIME.as_secs();
    let week = Duration::from_secs(7 * DAY);
    assert_eq!(secret.delete_at(week), expires + 7 * DAY + SKEW);
    assert_eq!(
        secret.delete_at(Duration::from_secs(365 * DAY)),
        expires + 30 * DAY + SKEW
    );
}
