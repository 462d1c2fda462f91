#![allow(clippy::cast_possible_truncation)] // message numbers below 2,000 as indexes
use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const ROOT: [u8; KEY_LEN] = [7; KEY_LEN];
const CONTEXT: &[u8] = b"sotto test context";

/// The primitives against their RFCs: HMAC-SHA256 (RFC 4231, test case 1)
/// and the first block of HKDF-SHA256 (RFC 5869, test case 1).
#[test]
fn hmac_and_hkdf_match_their_rfcs() {
    assert_eq!(
        hex(&hmac(&[0x0b; 20], &[b"Hi There"])[..]),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    let salt: Vec<u8> = (0..13).collect();
    let info: Vec<u8> = (0xf0..0xfa).collect();
    assert_eq!(
        hex(&hkdf32(&salt, &[0x0b; 22], &info)[..]),
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
    );
}

/// The first keys of a chain, as an independent implementation computes
/// them (Python's `hmac` and `hashlib`, from the formulas in the module
/// documentation).
#[test]
fn a_chain_gives_its_known_keys_in_order() {
    let expected = [
        "6999c473bfe7df2624226a39556bdb092362067076beb767d73dcfbe266e91e6",
        "02b7fd8776590e7ebf1fdeac761a1881b6f27582b56cfa59d8750d281f5d169f",
        "3678eac4f0ffe08d3e6ec125a9fb16638d815acb4ecdc6657b1285727d1b9f99",
    ];
    let mut sending = SendingChain::new(&ROOT, CONTEXT);
    let receiving = ReceivingChain::new(&ROOT, CONTEXT);
    for (n, expected) in expected.iter().enumerate() {
        let (number, key) = sending.next_key();
        assert_eq!(number, n as u64);
        assert_eq!(hex(key.as_bytes()), *expected);
        assert_eq!(receiving.key(number).unwrap().as_bytes(), key.as_bytes());
    }
    // Another context, another chain.
    let mut other = SendingChain::new(&ROOT, b"another context");
    assert_ne!(hex(other.next_key().1.as_bytes()), expected[0]);
}

/// Keys come in any order within the bounds, each opens once, and a
/// message that does not open (only `key`, no `forget`) costs nothing.
#[test]
fn keys_are_taken_in_any_order_once_each() {
    let mut sending = SendingChain::new(&ROOT, CONTEXT);
    let sent: Vec<MessageKey> = (0..10).map(|_| sending.next_key().1).collect();
    let mut receiving = ReceivingChain::new(&ROOT, CONTEXT);
    // A forgery claiming 5 fails to open: the chain is unchanged.
    assert_eq!(receiving.key(5).unwrap().as_bytes(), sent[5].as_bytes());
    assert_eq!(receiving.key(5).unwrap().as_bytes(), sent[5].as_bytes());
    // 5 opens; then 2 (passed over), then 9, then 7.
    receiving.forget(5).unwrap();
    for n in [2, 9, 7] {
        assert_eq!(
            receiving.key(n).unwrap().as_bytes(),
            sent[n as usize].as_bytes()
        );
        receiving.forget(n).unwrap();
    }
    // Each only once.
    for n in [2, 5, 7, 9] {
        assert!(matches!(receiving.key(n), Err(Error::DecryptionFailed)));
        assert!(matches!(receiving.forget(n), Err(Error::DecryptionFailed)));
    }
    // The others passed over are still there.
    for n in [0, 1, 3, 4, 6, 8] {
        assert_eq!(
            receiving.key(n).unwrap().as_bytes(),
            sent[n as usize].as_bytes()
        );
    }
}

/// Forward secrecy: what a chain holds after a key was used gives that key
/// no more, nor any before it but the ones passed over and kept.
#[test]
fn a_copy_of_the_state_opens_nothing_already_opened() {
    let mut sending = SendingChain::new(&ROOT, CONTEXT);
    let sent: Vec<[u8; KEY_LEN]> = (0..20).map(|_| *sending.next_key().1.as_bytes()).collect();
    // Everything the sender's state can still give differs from every key
    // it gave.
    for _ in 0..200 {
        let (_, later) = sending.next_key();
        assert!(!sent.contains(later.as_bytes()));
    }
    let mut receiving = ReceivingChain::new(&ROOT, CONTEXT);
    for n in 0..20 {
        receiving.forget(n).unwrap();
    }
    for n in 0..20 {
        assert!(matches!(receiving.key(n), Err(Error::DecryptionFailed)));
    }
    // Nor does anything it derives ahead equal an earlier key.
    for n in 20..220 {
        assert!(!sent.contains(receiving.key(n).unwrap().as_bytes()));
    }
}

/// Bounds: a number too far ahead is refused before any derivation past
/// the bound; only the newest keys passed over are kept.
#[test]
fn a_chain_jumps_and_keeps_only_so_far() {
    let receiving = ReceivingChain::new(&ROOT, CONTEXT);
    assert!(receiving.key(MAX_JUMP).is_ok());
    assert!(matches!(
        receiving.key(MAX_JUMP + 1),
        Err(Error::DecryptionFailed)
    ));
    assert!(matches!(
        receiving.key(u64::MAX),
        Err(Error::DecryptionFailed)
    ));
    let mut receiving = ReceivingChain::new(&ROOT, CONTEXT);
    assert!(matches!(
        receiving.forget(u64::MAX),
        Err(Error::DecryptionFailed)
    ));
    receiving.forget(1000).unwrap();
    assert_eq!(receiving.skipped.len(), MAX_SKIPPED);
    let oldest = 1000 - MAX_SKIPPED as u64;
    assert!(matches!(
        receiving.key(oldest - 1),
        Err(Error::DecryptionFailed)
    ));
    let mut sending = SendingChain::new(&ROOT, CONTEXT);
    let sent: Vec<MessageKey> = (0..=1000).map(|_| sending.next_key().1).collect();
    assert_eq!(
        receiving.key(oldest).unwrap().as_bytes(),
        sent[oldest as usize].as_bytes()
    );
    assert_eq!(receiving.key(999).unwrap().as_bytes(), sent[999].as_bytes());
    // More passed over later: still only the newest kept.
    receiving.forget(1500).unwrap();
    assert_eq!(receiving.skipped.len(), MAX_SKIPPED);
    assert!(
        receiving
            .skipped
            .keys()
            .all(|n| *n >= 1500 - MAX_SKIPPED as u64)
    );
}

#[test]
fn debug_output_never_shows_key_material() {
    let mut sending = SendingChain::new(&ROOT, CONTEXT);
    let (_, key) = sending.next_key();
    let receiving = ReceivingChain::new(&ROOT, CONTEXT);
    for shown in [
        format!("{key:?}"),
        format!("{sending:?}"),
        format!("{receiving:?}"),
    ] {
        assert!(!shown.contains(&hex(key.as_bytes())[..8]), "{shown}");
    }
}
