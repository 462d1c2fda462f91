//! `RelayFrame::Deliver` and `RelayFrame::Sent`, written from their parts.

use bytes::{BufMut, BytesMut};

use super::varint::{bytes_len, put_bytes, put_varint, varint_len};
use crate::codec::{MAX_FRAME_LEN, PREFIX_LEN, PROTOCOL_VERSION};
use crate::error::ProtoError;
use crate::frame::{Destination, index};
use crate::name::{RoomName, UserName};

/// Where a delivery was addressed, borrowed: writing a `Deliver` frame
/// needs only the name's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To<'a> {
    /// A room: `Destination::Room`.
    Room(&'a RoomName),
    /// A user: `Destination::User`.
    User(&'a UserName),
}

impl<'a> To<'a> {
    /// The variant index and the name.
    #[inline]
    fn parts(self) -> (u32, &'a str) {
        match self {
            To::Room(room) => (index::destination::ROOM, room.as_str()),
            To::User(user) => (index::destination::USER, user.as_str()),
        }
    }
}

impl<'a> From<&'a Destination> for To<'a> {
    fn from(to: &'a Destination) -> Self {
        match to {
            Destination::Room(room) => To::Room(room),
            Destination::User(user) => To::User(user),
        }
    }
}

/// `RelayFrame::Deliver { delivery, from, to, body, slot }`, ready to be
/// written from borrowed parts: the same bytes as
/// [`encode_frame`](crate::encode_frame) of that frame.
///
/// Write it whole with [`put`](Self::put), or as [`put_head`](Self::put_head)
/// (everything up to the body), the body, and [`put_tail`](Self::put_tail)
/// (everything after it), so that the frames of many recipients can share
/// one body instead of copying it.
#[derive(Clone, Copy, Debug)]
pub struct Deliver<'a> {
    delivery: u64,
    from: &'a str,
    to_index: u32,
    to_name: &'a str,
    body: &'a [u8],
    slot: Option<&'a [u8]>,
    /// The payload's length: the length prefix.
    payload: u32,
}

impl<'a> Deliver<'a> {
    /// The frame's parts, measured. Fails with
    /// [`ProtoError::FrameTooLarge`], as `encode_frame` does, if the
    /// payload would exceed [`MAX_FRAME_LEN`].
    #[inline]
    pub fn new(
        delivery: u64,
        from: &'a UserName,
        to: To<'a>,
        body: &'a [u8],
        slot: Option<&'a [u8]>,
    ) -> Result<Self, ProtoError> {
        let (to_index, to_name) = to.parts();
        let from = from.as_str();
        // Names are at most 32 bytes and the body and slot are in memory, so
        // the sum cannot overflow; saturating anyway keeps it a "too large".
        let payload = [
            1,
            varint_len(u64::from(index::relay::DELIVER)),
            varint_len(delivery),
            bytes_len(from.len()),
            varint_len(u64::from(to_index)),
            bytes_len(to_name.len()),
            bytes_len(body.len()),
            Self::slot_len(slot),
        ]
        .into_iter()
        .fold(0usize, usize::saturating_add);
        let too_large = || ProtoError::FrameTooLarge {
            len: payload,
            max: MAX_FRAME_LEN,
        };
        if payload > MAX_FRAME_LEN {
            return Err(too_large());
        }
        let payload = u32::try_from(payload).map_err(|_| too_large())?;
        Ok(Self {
            delivery,
            from,
            to_index,
            to_name,
            body,
            slot,
            payload,
        })
    }

    /// Bytes of the optional slot: its tag, then the bytes if any.
    #[inline]
    const fn slot_len(slot: Option<&[u8]>) -> usize {
        match slot {
            None => 1,
            Some(slot) => 1 + bytes_len(slot.len()),
        }
    }

    /// Bytes of the whole frame, its length prefix included.
    #[inline]
    pub const fn frame_len(&self) -> usize {
        PREFIX_LEN + self.payload as usize
    }

    /// Bytes up to the body: the prefix and every field before the body,
    /// the body's length included.
    #[inline]
    pub const fn head_len(&self) -> usize {
        self.frame_len() - self.body.len() - self.tail_len()
    }

    /// Bytes after the body: the slot.
    #[inline]
    pub const fn tail_len(&self) -> usize {
        Self::slot_len(self.slot)
    }

    /// Appends the whole frame ([`frame_len`](Self::frame_len) bytes).
    #[inline]
    pub fn put(&self, out: &mut BytesMut) {
        self.put_head(out);
        out.extend_from_slice(self.body);
        self.put_tail(out);
    }

    /// Appends the bytes before the body ([`head_len`](Self::head_len)).
    #[inline]
    pub fn put_head(&self, out: &mut BytesMut) {
        out.put_u32(self.payload);
        out.put_u8(PROTOCOL_VERSION);
        put_varint(out, u64::from(index::relay::DELIVER));
        put_varint(out, self.delivery);
        put_bytes(out, self.from.as_bytes());
        put_varint(out, u64::from(self.to_index));
        put_bytes(out, self.to_name.as_bytes());
        put_varint(out, self.body.len() as u64);
    }

    /// Appends the bytes after the body ([`tail_len`](Self::tail_len)).
    #[inline]
    pub fn put_tail(&self, out: &mut BytesMut) {
        match self.slot {
            None => out.put_u8(0),
            Some(slot) => {
                out.put_u8(1);
                put_bytes(out, slot);
            }
        }
    }
}

/// Bytes of the wire form of `RelayFrame::Sent { id }`, its length prefix
/// included: at most 16.
#[inline]
pub const fn sent_len(id: u64) -> usize {
    PREFIX_LEN + sent_payload_len(id)
}

#[inline]
const fn sent_payload_len(id: u64) -> usize {
    1 + varint_len(index::relay::SENT as u64) + varint_len(id)
}

/// Appends the wire form of `RelayFrame::Sent { id }` ([`sent_len`] bytes):
/// the same bytes as [`encode_frame`](crate::encode_frame) of that frame.
#[inline]
#[allow(
    clippy::cast_possible_truncation,
    reason = "a version byte and two varints: at most 21 bytes"
)]
pub fn put_sent(out: &mut BytesMut, id: u64) {
    out.put_u32(sent_payload_len(id) as u32);
    out.put_u8(PROTOCOL_VERSION);
    put_varint(out, u64::from(index::relay::SENT));
    put_varint(out, id);
}
