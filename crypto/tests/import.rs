//! Importing keys: a public identity from another user, and the private
//! keys in an identity file, are accepted only if they are keys sotto
//! makes: two distinct RSA keys of exactly 3072 bits with public exponent
//! 65537 (protocol.md 12.1 and 20).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{IDENTITY_FILE_PASS as PASS, identity_file, people, rng, two_byte_strings};
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, PrivateKey, PublicKey};
use sotto_crypto::{Error, Identity, PublicIdentity};

/// An exported public identity holding these two keys (protocol.md 12.1).
fn public_identity_bytes(enc: &PublicKey, sig: &PublicKey) -> Vec<u8> {
    let enc = enc.to_public_key_der().unwrap();
    let sig = sig.to_public_key_der().unwrap();
    let mut out = vec![sotto_crypto::PUBLIC_IDENTITY_VERSION];
    out.extend(two_byte_strings(enc.as_bytes(), sig.as_bytes()));
    out
}

/// The OAEP key of a genuine identity, taken out of its encoding.
fn genuine_key(identity: &Identity) -> PublicKey {
    let bytes = identity.public().to_bytes();
    // version byte, then a two-byte varint length (the DER is > 127 bytes).
    let len = usize::from(bytes[1] & 0x7f) | usize::from(bytes[2]) << 7;
    PublicKey::from_public_key_der(&bytes[3..3 + len]).unwrap()
}

fn with_modulus(n: &[u8], e: u64) -> PublicKey {
    PublicKey::new(BoxedUint::from_be_slice_vartime(n), BoxedUint::from(e)).unwrap()
}

#[test]
fn public_identities_with_keys_sotto_does_not_make_are_refused() {
    let alice = genuine_key(&people().alice);
    let bob = genuine_key(&people().bob);
    // The genuine pair is accepted, so what follows fails for its keys only.
    let genuine = PublicIdentity::from_bytes(&public_identity_bytes(&alice, &bob)).unwrap();
    assert_eq!(genuine.to_bytes(), public_identity_bytes(&alice, &bob));
    let n = alice.n_bytes();
    assert_eq!(n.len(), 384);

    // 3071 bits: still 384 bytes, which is all the old check looked at.
    let mut short = n.to_vec();
    let mut carry = 0u8;
    for byte in short.iter_mut() {
        let next = *byte & 1;
        *byte = (*byte >> 1) | (carry << 7);
        carry = next;
    }
    *short.last_mut().unwrap() |= 1;
    let short = with_modulus(&short, 65537);
    assert_eq!(short.size(), 384);
    assert_eq!(short.n().bit_width_vartime(), 3071);

    // 3073 bits.
    let mut long = vec![0u8];
    long.extend_from_slice(&n);
    let mut carry = 0u8;
    for byte in long.iter_mut().rev() {
        let next = *byte >> 7;
        *byte = (*byte << 1) | carry;
        carry = next;
    }
    *long.last_mut().unwrap() |= 1;
    let long = with_modulus(&long, 65537);
    assert_eq!(long.n().bit_width_vartime(), 3073);

    let mut bad = vec![
        ("3071-bit modulus".to_owned(), short),
        ("3073-bit modulus".to_owned(), long),
    ];
    for e in [3, 17, 65539, (1 << 33) - 1] {
        bad.push((format!("e = {e}"), with_modulus(&n, e)));
    }
    let mut cases = vec![(
        "one key for both purposes".to_owned(),
        public_identity_bytes(&alice, &alice),
    )];
    for (what, key) in &bad {
        cases.push((
            format!("OAEP key: {what}"),
            public_identity_bytes(key, &bob),
        ));
        cases.push((
            format!("PSS key: {what}"),
            public_identity_bytes(&alice, key),
        ));
    }
    let accepted: Vec<_> = cases
        .iter()
        .filter(|(_, bytes)| {
            !matches!(
                PublicIdentity::from_bytes(bytes),
                Err(Error::InvalidPublicIdentity)
            )
        })
        .map(|(what, _)| what)
        .collect();
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

#[test]
fn identity_files_with_keys_sotto_does_not_make_are_refused() {
    // Four keys, generated in parallel (about a second each).
    let [good, other, short, small_e] = std::thread::scope(|scope| {
        let three = BoxedUint::from(3u64);
        let jobs = [
            scope.spawn(|| PrivateKey::new(&mut rng(), 3072).unwrap()),
            scope.spawn(|| PrivateKey::new(&mut rng(), 3072).unwrap()),
            scope.spawn(|| PrivateKey::new(&mut rng(), 3071).unwrap()),
            scope.spawn(move || PrivateKey::new_with_exp(&mut rng(), 3072, three).unwrap()),
        ];
        jobs.map(|job| job.join().unwrap())
    });
    assert_eq!(short.size(), 384);
    assert_eq!(short.n().bit_width_vartime(), 3071);

    // The file format is right: two good keys load.
    let loaded = Identity::decrypt_from_bytes(&identity_file(&good, &other), PASS).unwrap();
    let expected = PublicIdentity::from_bytes(&public_identity_bytes(
        &good.to_public_key(),
        &other.to_public_key(),
    ))
    .unwrap();
    assert_eq!(loaded.fingerprint(), expected.fingerprint());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.sotto-id");
    let mut accepted = Vec::new();
    for (what, enc, sig) in [
        ("a 3071-bit OAEP key", &short, &other),
        ("a 3071-bit PSS key", &good, &short),
        ("an OAEP key with e = 3", &small_e, &other),
        ("a PSS key with e = 3", &good, &small_e),
        ("one key for both purposes", &good, &good),
    ] {
        let file = identity_file(enc, sig);
        std::fs::write(&path, &file).unwrap();
        let refused = |result| matches!(result, Err(Error::CorruptIdentityFile));
        if !refused(Identity::decrypt_from_bytes(&file, PASS))
            || !refused(Identity::load(&path, PASS))
        {
            accepted.push(what);
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}
