//! Records of the local store at rest ([`sotto_crypto::at_rest`]).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{people, rng};
use proptest::prelude::*;
use sotto_crypto::Error;
use sotto_crypto::at_rest::{RECORD_OVERHEAD, RecordCipher, StorageKey};

fn cipher(byte: u8) -> RecordCipher {
    RecordCipher::new(&StorageKey::from_bytes([byte; 32]))
}

#[test]
fn a_record_opens_only_where_and_under_the_key_it_was_sealed() {
    let c = cipher(1);
    let sealed = c.seal(&mut rng(), "history", b"k", b"for k").unwrap();
    assert_eq!(sealed.len(), 5 + RECORD_OVERHEAD);
    assert_eq!(&c.open("history", b"k", &sealed).unwrap()[..], b"for k");
    for (table, record) in [("history", &b"j"[..]), ("historx", b"k"), ("", b"historyk")] {
        assert!(matches!(
            c.open(table, record, &sealed),
            Err(Error::DecryptionFailed)
        ));
    }
    // The table name is length-prefixed: moving bytes between the name and
    // the record key changes the associated data.
    let split = c.seal(&mut rng(), "ab", b"c", b"x").unwrap();
    assert!(c.open("a", b"bc", &split).is_err());
    assert!(matches!(
        cipher(2).open("history", b"k", &sealed),
        Err(Error::DecryptionFailed)
    ));
}

#[test]
fn any_flipped_bit_or_cut_fails_opaquely() {
    let c = cipher(7);
    for value in [&b""[..], b"a value of a few bytes"] {
        let sealed = c.seal(&mut rng(), "counters", b"\x01\x02", value).unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut damaged = sealed.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    c.open("counters", b"\x01\x02", &damaged),
                    Err(Error::DecryptionFailed)
                ),
                "bit {bit}"
            );
        }
        for len in 0..sealed.len() {
            assert!(matches!(
                c.open("counters", b"\x01\x02", &sealed[..len]),
                Err(Error::DecryptionFailed)
            ));
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(matches!(
            c.open("counters", b"\x01\x02", &longer),
            Err(Error::DecryptionFailed)
        ));
    }
}

#[test]
fn every_seal_draws_a_fresh_nonce() {
    let c = cipher(3);
    let mut rng = rng();
    let a = c.seal(&mut rng, "settings", b"name", b"alice").unwrap();
    let b = c.seal(&mut rng, "settings", b"name", b"alice").unwrap();
    assert_ne!(a[..12], b[..12]);
    assert_ne!(a, b);
}

#[test]
fn storage_keys_are_not_session_keys_and_never_print() {
    let key = people().alice.local_storage_key("vault").unwrap();
    let shown = format!("{key:?} {:?}", RecordCipher::new(&key));
    assert_eq!(shown, "StorageKey { .. } RecordCipher { .. }");
    // Different purposes, different keys: a record sealed under the vault
    // key does not open under the record-id key.
    let ids = people().alice.local_storage_key("record-ids").unwrap();
    let sealed = RecordCipher::new(&key)
        .seal(&mut rng(), "t", b"r", b"v")
        .unwrap();
    assert!(RecordCipher::new(&ids).open("t", b"r", &sealed).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn records_round_trip(
        key in any::<[u8; 32]>(),
        table in "[a-z]{0,12}",
        record in proptest::collection::vec(any::<u8>(), 0..40),
        value in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let c = RecordCipher::new(&StorageKey::from_bytes(key));
        let sealed = c.seal(&mut rng(), &table, &record, &value).unwrap();
        prop_assert_eq!(sealed.len(), value.len() + RECORD_OVERHEAD);
        prop_assert_eq!(&c.open(&table, &record, &sealed).unwrap()[..], &value[..]);
    }

    #[test]
    fn arbitrary_bytes_never_open(sealed in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(matches!(cipher(9).open("history", b"k", &sealed), Err(Error::DecryptionFailed)));
    }
}
