//! postcard helpers shared by every encoding in this crate.

use serde::Serialize;
use serde::de::Deserialize;

/// postcard encoding of `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Invariant: every type this crate encodes is a plain struct, tuple,
    // enum, byte slice, string or fixed array, all of which postcard can
    // always write into a growable Vec.
    #[allow(clippy::expect_used)]
    postcard::to_stdvec(value).expect("postcard encodes plain data into a Vec")
}

/// `version` followed by the postcard encoding of `value`.
pub(crate) fn encode_versioned<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    out.extend_from_slice(&encode(value));
    out
}

/// Decodes `bytes` as exactly one `T`: trailing bytes are an error.
pub(crate) fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ()> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(()),
    }
}
