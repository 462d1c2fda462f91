//! Reading frames back without allocating.

use super::varint::Reader;
use crate::codec::{MAX_FRAME_LEN, PREFIX_LEN, PROTOCOL_VERSION, check_len};
use crate::error::ProtoError;
use crate::frame::index;

/// A frame's payload (version byte first) and the bytes after the frame.
pub type Split<'a> = (&'a [u8], &'a [u8]);

/// Splits off the first whole frame of `buf`: `Ok(Some((payload, rest)))`,
/// `Ok(None)` if it is not all there yet, and the codec's error for a
/// length prefix of zero ([`ProtoError::Malformed`]) or over
/// [`MAX_FRAME_LEN`] ([`ProtoError::FrameTooLarge`]), checked before
/// waiting for the payload, as [`FrameCodec`](crate::FrameCodec) does.
pub fn split_frame(buf: &[u8]) -> Result<Option<Split<'_>>, ProtoError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    check_len(len)?;
    Ok(rest.split_at_checked(len))
}

/// A relay frame read by [`peek_relay`], borrowing from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayView<'a> {
    /// `RelayFrame::Deliver`, every field read.
    Deliver(DeliverView<'a>),
    /// `RelayFrame::Sent { id }`.
    Sent {
        /// The request id.
        id: u64,
    },
    /// Any other variant, by its index ([`index::relay`]); its fields are
    /// not read.
    Other {
        /// The variant's wire index.
        index: u32,
    },
}

/// The fields of a `RelayFrame::Deliver`, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliverView<'a> {
    /// The relay's id for this delivery.
    pub delivery: u64,
    /// The sender's name, as sent (not checked against the name rules).
    pub from: &'a str,
    /// The destination the sender addressed.
    pub to: DestinationView<'a>,
    /// The ciphertext.
    pub body: &'a [u8],
    /// This recipient's key slot, if any.
    pub slot: Option<&'a [u8]>,
}

/// A `Destination`, borrowed (the name not checked against the name
/// rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationView<'a> {
    /// `Destination::Room`.
    Room(&'a str),
    /// `Destination::User`.
    User(&'a str),
}

/// Reads one relay frame's payload (version byte first, as
/// [`split_frame`] gives it) without allocating: a `Deliver` or a `Sent`
/// whole, any other frame by its variant only.
///
/// `None` for a payload that is not one of the protocol's frames: another
/// version, a truncated or over-long `Deliver` or `Sent` (trailing bytes),
/// invalid varints, UTF-8 or option tags. Whenever
/// [`decode_payload`](crate::decode_payload) decodes a `Deliver` or a
/// `Sent`, this reads the same values; unlike it, this does not check the
/// names against the name rules, nor the fields of the other variants.
pub fn peek_relay(payload: &[u8]) -> Option<RelayView<'_>> {
    if payload.is_empty() || payload.len() > MAX_FRAME_LEN {
        return None;
    }
    let mut r = Reader::new(payload);
    if r.byte()? != PROTOCOL_VERSION {
        return None;
    }
    let view = match r.u32()? {
        index::relay::DELIVER => {
            let delivery = r.u64()?;
            let from = r.str()?;
            let to = match r.u32()? {
                index::destination::ROOM => DestinationView::Room(r.str()?),
                index::destination::USER => DestinationView::User(r.str()?),
                _ => return None,
            };
            let body = r.bytes()?;
            let slot = r.option_bytes()?;
            RelayView::Deliver(DeliverView {
                delivery,
                from,
                to,
                body,
                slot,
            })
        }
        index::relay::SENT => RelayView::Sent { id: r.u64()? },
        index => return Some(RelayView::Other { index }),
    };
    // Strict like `decode_payload`: nothing may follow the frame.
    r.is_empty().then_some(view)
}
