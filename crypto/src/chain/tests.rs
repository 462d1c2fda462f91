#![allow(clippy::cast_possible_truncation)] // message numbers below 2,000 as indexes
use super::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const ROOT: [u8; KEY_LEN] = [7; KEY_LEN];

fn sending() -> SendingChain {
    SendingChain::from_key(ChainKey::from_bytes(ROOT))
}

fn receiving() -> ReceivingChain {
    ReceivingChain::from_key(ChainKey::from_bytes(ROOT))
}

fn sent(count: u64) -> Vec<MessageKey> {
    let mut chain = sending();
    (0..count).map(|n| chain.key_at(n).unwrap()).collect()
}

/// The first keys of a chain, as an independent implementation computes
/// them (Python's `blake3` package, from the formulas in the module
/// documentation: `blake3(b"sotto/v2/chain-step", key=ck).digest(64)`,
/// the chain key first, the message key second).
#[test]
fn a_chain_gives_its_known_keys_in_order() {
    let expected = [
        "7e105767622e909cd24b3fbd381dc366226741afca454dd04b68a66439e83c97",
        "cf130f5f10a2e390eec8533ac959db2f465bb03c54c2ba52676f80762d17b375",
        "c437073679bd4cd0f39da1ea59034d4d968b4f5d22839f6af8732749ab842418",
    ];
    let mut chain = sending();
    let receiving = receiving();
    for (n, expected) in expected.iter().enumerate() {
        let key = chain.key_at(n as u64).unwrap();
        assert_eq!(hex(key.as_bytes()), *expected);
        assert_eq!(receiving.key(n as u64).unwrap().as_bytes(), key.as_bytes());
    }
    assert_eq!(chain.position(), 3);
}

/// A recipient who joins at `n` gets `CK_n`: it derives the same keys
/// from `n` on, and none before.
#[test]
fn a_chain_key_handed_over_reads_from_its_point_on() {
    let keys = sent(30);
    let mut chain = sending();
    let handed = chain.chain_key_at(10).unwrap();
    let joined = ReceivingChain::from_key(handed);
    for n in 10..30 {
        assert_eq!(
            joined.key(n - 10).unwrap().as_bytes(),
            keys[n as usize].as_bytes()
        );
    }
    for n in 0..200 {
        let derived = *joined.key(n).unwrap().as_bytes();
        assert!(!keys[..10].iter().any(|k| *k.as_bytes() == derived));
    }
    // The sender's own chain moved to 10 too: it cannot go back.
    assert_eq!(chain.position(), 10);
    assert!(matches!(chain.key_at(9), Err(Error::InvalidParameter(_))));
    assert!(matches!(
        chain.chain_key_at(9),
        Err(Error::InvalidParameter(_))
    ));
    assert_eq!(chain.key_at(10).unwrap().as_bytes(), keys[10].as_bytes());
    assert!(matches!(
        chain.key_at(12 + MAX_JUMP),
        Err(Error::InvalidParameter(_))
    ));
}

/// Keys come in any order within the bounds, each opens once, and a
/// message that does not open (only `key`, no `forget`) costs nothing.
#[test]
fn keys_are_taken_in_any_order_once_each() {
    let sent = sent(10);
    let mut receiving = receiving();
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
    // The others passed over are still there, until the window passes them.
    for n in [0, 1, 3, 4, 6, 8] {
        assert_eq!(
            receiving.key(n).unwrap().as_bytes(),
            sent[n as usize].as_bytes()
        );
    }
    receiving.forget_before(4);
    for n in [0, 1, 3] {
        assert!(matches!(receiving.key(n), Err(Error::DecryptionFailed)));
    }
    assert!(receiving.key(4).is_ok());
}

/// Forward secrecy: what a chain holds after a key was used gives that key
/// no more, nor any before it but the ones passed over and kept.
#[test]
fn a_copy_of_the_state_opens_nothing_already_opened() {
    let mut chain = sending();
    let sent: Vec<[u8; KEY_LEN]> = (0..20)
        .map(|n| *chain.key_at(n).unwrap().as_bytes())
        .collect();
    // Everything the sender's state can still give differs from every key
    // it gave.
    for n in 20..220 {
        assert!(!sent.contains(chain.key_at(n).unwrap().as_bytes()));
    }
    let mut receiving = receiving();
    for n in 0..20 {
        receiving.forget(n).unwrap();
    }
    let copy = ReceivingChain::restore(receiving.export()).unwrap();
    for n in 0..20 {
        assert!(matches!(receiving.key(n), Err(Error::DecryptionFailed)));
        assert!(matches!(copy.key(n), Err(Error::DecryptionFailed)));
    }
    // Nor does anything it derives ahead equal an earlier key.
    for n in 20..220 {
        assert!(!sent.contains(copy.key(n).unwrap().as_bytes()));
    }
}

/// Bounds: a number too far ahead is refused before any derivation past
/// the bound; only the newest keys passed over are kept.
#[test]
fn a_chain_jumps_and_keeps_only_so_far() {
    let receiving = receiving();
    assert!(receiving.key(MAX_JUMP).is_ok());
    assert!(matches!(
        receiving.key(MAX_JUMP + 1),
        Err(Error::DecryptionFailed)
    ));
    assert!(matches!(
        receiving.key(u64::MAX),
        Err(Error::DecryptionFailed)
    ));
    let mut receiving = self::receiving();
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
    let sent = sent(1001);
    assert_eq!(
        receiving.key(oldest).unwrap().as_bytes(),
        sent[oldest as usize].as_bytes()
    );
    assert_eq!(receiving.key(999).unwrap().as_bytes(), sent[999].as_bytes());
    assert_eq!(
        receiving.key(1001).unwrap().as_bytes(),
        sending().key_at(1001).unwrap().as_bytes()
    );
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

/// What `export` gives, `restore` takes back; state no export makes is
/// refused.
#[test]
fn a_chain_survives_export_and_restore_and_refuses_made_up_state() {
    let sent = sent(10);
    let mut receiving = receiving();
    receiving.forget(6).unwrap();
    let restored = ReceivingChain::restore(receiving.export()).unwrap();
    for n in [0, 3, 5, 7, 9] {
        assert_eq!(
            restored.key(n).unwrap().as_bytes(),
            sent[n as usize].as_bytes()
        );
    }
    assert!(restored.key(6).is_err());
    let state = |n: u64, skipped: Vec<u64>| ChainState {
        next: ChainKey::from_bytes(ROOT),
        n,
        skipped: skipped
            .into_iter()
            .map(|s| (s, MessageKey([1; KEY_LEN])))
            .collect(),
    };
    assert!(ReceivingChain::restore(state(5, vec![1, 4])).is_ok());
    for bad in [
        state(5, vec![5]),
        state(5, vec![1, 1]),
        state(1000, (0..=MAX_SKIPPED as u64).collect()),
    ] {
        assert!(matches!(
            ReceivingChain::restore(bad),
            Err(Error::InvalidParameter(_))
        ));
    }
}

#[test]
fn debug_output_never_shows_key_material() {
    let mut chain = sending();
    let key = chain.key_at(0).unwrap();
    let handed = chain.chain_key_at(1).unwrap();
    let receiving = receiving();
    for shown in [
        format!("{key:?}"),
        format!("{handed:?}"),
        format!("{chain:?}"),
        format!("{receiving:?}"),
        format!("{:?}", receiving.export()),
    ] {
        assert!(!shown.contains(&hex(key.as_bytes())[..8]), "{shown}");
        assert!(!shown.contains(&hex(&ROOT)[..8]), "{shown}");
    }
}
