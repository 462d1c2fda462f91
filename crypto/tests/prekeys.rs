//! The prekey known-answer vector, `testdata/prekey-vector.txt`: Alice's
//! signed prekey made from test pool key 0 at a fixed time with a fixed
//! RNG, and one OAEP ciphertext to it. `scripts/check-prekey-vector.py`
//! checks the same file independently (Python `cryptography`).
//!
//! After an intended format change, regenerate it with
//!
//! ```text
//! SOTTO_REGENERATE_VECTORS=1 cargo test -p sotto-crypto --test prekeys
//! ```

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_crypto::{
    Error, Identity, PREKEY_LIFETIME, PrekeyKey, PrekeySecret, PublicIdentity, SignedPrekey,
};

const CREATED_AT: u64 = 1_764_000_000;
const LABEL: &[u8] = b"sotto/v2/test-vector\0";
const PLAINTEXT: &[u8] = b"known answer: a session secret";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn pool_key_der(i: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(testdata().join("prekey-keys.txt")).unwrap();
    unhex(text.lines().filter(|l| !l.starts_with('#')).nth(i).unwrap())
}

fn vector_lines(alice: &Identity) -> (String, PrekeySecret) {
    let key = PrekeyKey::from_pkcs8_der(&pool_key_der(0)).unwrap();
    let (signed, secret) = alice
        .make_prekey_with(&mut ChaCha20Rng::seed_from_u64(24), key, CREATED_AT)
        .unwrap();
    let verified = SignedPrekey::verify(signed.as_bytes(), alice.public(), CREATED_AT).unwrap();
    let ciphertext = verified
        .encrypt_oaep(&mut ChaCha20Rng::seed_from_u64(25), LABEL, PLAINTEXT)
        .unwrap();
    let lines = [
        ("owner_public", hex(&alice.public().to_bytes())),
        ("owner_fingerprint", alice.fingerprint().to_hex()),
        ("created_at", CREATED_AT.to_string()),
        (
            "expires_at",
            (CREATED_AT + PREKEY_LIFETIME.as_secs()).to_string(),
        ),
        ("prekey_key", "testdata/prekey-keys.txt key 0".to_string()),
        ("prekey_id", verified.id().to_hex()),
        ("signed_prekey", hex(signed.as_bytes())),
        ("oaep_label", hex(LABEL)),
        ("oaep_plaintext", hex(PLAINTEXT)),
        ("oaep_ciphertext", hex(&ciphertext)),
    ];
    let text = lines
        .iter()
        .map(|(name, value)| format!("{name} {value}\n"))
        .collect();
    (text, secret)
}

#[test]
fn the_prekey_vector_matches_and_opens() {
    let alice = Identity::load(
        &testdata().join("identities/alice.sotto-id"),
        b"sotto test vectors",
    )
    .unwrap();
    let (text, secret) = vector_lines(&alice);
    let path = testdata().join("prekey-vector.txt");
    if std::env::var_os("SOTTO_REGENERATE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap();
    assert_eq!(stored, text, "{} differs from this build", path.display());

    let field = |name: &str| {
        stored
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap()
            .to_string()
    };
    let owner = PublicIdentity::from_bytes(&unhex(&field("owner_public"))).unwrap();
    let signed = unhex(&field("signed_prekey"));
    let verified = SignedPrekey::verify(&signed, &owner, CREATED_AT).unwrap();
    assert_eq!(verified.id().to_hex(), field("prekey_id"));
    let opened = secret
        .decrypt_oaep(
            &mut ChaCha20Rng::seed_from_u64(26),
            LABEL,
            &unhex(&field("oaep_ciphertext")),
        )
        .unwrap();
    assert_eq!(&opened[..], PLAINTEXT);
    // The vector is refused once expired.
    assert!(matches!(
        SignedPrekey::verify(&signed, &owner, verified.expires_at()),
        Err(Error::InvalidPrekey)
    ));
}
