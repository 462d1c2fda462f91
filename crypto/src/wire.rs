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

/// Appends the postcard encoding of `value` to `out` (which does not
/// reallocate if it has the capacity).
pub(crate) fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Invariant: as in `encode`.
    #[allow(clippy::expect_used)]
    let encoded = postcard::to_extend(value, std::mem::take(out))
        .expect("postcard encodes plain data into a Vec");
    *out = encoded;
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

/// Decodes `bytes` as exactly one `T` and refuses any encoding other than
/// the one [`encode`] writes (postcard also accepts over-long varints).
pub(crate) fn decode_canonical<'a, T: Deserialize<'a> + Serialize>(
    bytes: &'a [u8],
) -> Result<T, ()> {
    let value: T = decode_exact(bytes)?;
    if encode(&value) == bytes {
        Ok(value)
    } else {
        Err(())
    }
}
