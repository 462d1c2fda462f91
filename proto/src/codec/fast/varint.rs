//! postcard's primitives: unsigned LEB128 varints and length-prefixed bytes.

use bytes::{BufMut, BytesMut};

/// The longest varint of a `u64`: 10 bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// The longest varint of a `u32`: 5 bytes.
const MAX_VARINT_U32_LEN: usize = 5;

/// Bytes of `value` as a postcard varint (LEB128): 1 to
/// [`MAX_VARINT_LEN`].
#[inline]
pub const fn varint_len(value: u64) -> usize {
    // Significant bits (at least 1), seven per byte. `leading_zeros` is at
    // most 63 here, so the subtraction cannot wrap.
    let bits = 64 - (value | 1).leading_zeros();
    (bits as usize).div_ceil(7)
}

/// Appends `value` as a postcard varint (LEB128): seven bits per byte, low
/// bits first, the high bit set on every byte but the last.
#[inline]
#[allow(
    clippy::cast_possible_truncation,
    reason = "each byte keeps the low 7 bits of `value` on purpose; the last is below 0x80"
)]
pub fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Appends `bytes` as postcard writes a byte string or a `str`: its length
/// as a varint, then the bytes.
#[inline]
pub(super) fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Bytes of a byte string of `len` bytes, its length varint included.
#[inline]
pub(super) const fn bytes_len(len: usize) -> usize {
    varint_len(len as u64) + len
}

/// Reads postcard's primitives from untrusted bytes, front to back.
///
/// Every read checks its bounds and returns `None` on short or invalid
/// input, leaving the reader where it was; it accepts exactly what postcard
/// accepts (over-long varints included, a varint overflowing its type
/// refused).
#[derive(Clone, Copy, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `input`.
    pub const fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// The bytes not read yet.
    pub const fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Whether every byte has been read.
    pub const fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// One byte.
    #[inline]
    pub fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// A varint of at most `max_len` bytes whose last byte, at that
    /// length, carries at most `last_max`, as postcard checks it.
    #[inline]
    fn varint(&mut self, max_len: usize, last_max: u8) -> Option<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().take(max_len).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i + 1 == max_len && byte > last_max {
                    return None;
                }
                self.rest = self.rest.get(i + 1..)?;
                return Some(value);
            }
        }
        None
    }

    /// A `u64` varint.
    #[inline]
    pub fn u64(&mut self) -> Option<u64> {
        // 9 bytes carry 63 bits: the tenth may carry one more.
        self.varint(MAX_VARINT_LEN, 0x01)
    }

    /// A `u32` varint, as postcard writes `u32`s and variant indices.
    #[inline]
    pub fn u32(&mut self) -> Option<u32> {
        // 4 bytes carry 28 bits: the fifth may carry four more.
        let value = self.varint(MAX_VARINT_U32_LEN, 0x0f)?;
        u32::try_from(value).ok()
    }

    /// A length-prefixed byte string (postcard's `Bytes`, `&[u8]`).
    #[inline]
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let mut ahead = *self;
        let len = usize::try_from(ahead.u64()?).ok()?;
        let (taken, rest) = ahead.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(taken)
    }

    /// A length-prefixed UTF-8 string (postcard's `str`, and the names).
    #[inline]
    pub fn str(&mut self) -> Option<&'a str> {
        let mut ahead = *self;
        let text = std::str::from_utf8(ahead.bytes()?).ok()?;
        *self = ahead;
        Some(text)
    }

    /// An `Option<Bytes>`: a tag byte, 0 for `None`, 1 then the bytes for
    /// `Some`.
    #[inline]
    pub fn option_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let mut ahead = *self;
        let value = match ahead.byte()? {
            0 => None,
            1 => Some(ahead.bytes()?),
            _ => return None,
        };
        *self = ahead;
        Some(value)
    }
}
