//! Opens arbitrary bytes, and mutations of a real sealed record, as a
//! record of the client's local store. Nothing may panic, nothing but the
//! unmodified record may open, and what opens is what was sealed.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_crypto::at_rest::{RecordCipher, StorageKey};

const TABLE: &str = "history";
const RECORD: &[u8] = b"\x00\x00\x00\x00\x00\x00\x00\x07";
const VALUE: &[u8] = b"a record of the local store";

fuzz_target!(|data: &[u8]| {
    let cipher = RecordCipher::new(&StorageKey::from_bytes([0x5a; 32]));
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let sealed = cipher.seal(&mut rng, TABLE, RECORD, VALUE).expect("seal");

    // The input as a stored value.
    if let Ok(opened) = cipher.open(TABLE, RECORD, data) {
        assert_eq!(data, sealed.as_slice(), "only the real record opens");
        assert_eq!(&opened[..], VALUE);
    }

    // The input as a mutation of the real record: XORed over it.
    let mut mutated = sealed.clone();
    for (byte, flip) in mutated.iter_mut().zip(data) {
        *byte ^= flip;
    }
    let opened = cipher.open(TABLE, RECORD, &mutated);
    if mutated == sealed {
        assert_eq!(&opened.expect("the real record opens")[..], VALUE);
    } else {
        assert!(opened.is_err(), "a changed record must not open");
    }
});
