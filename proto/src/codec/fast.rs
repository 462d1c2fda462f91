//! The wire format by hand, for the paths where building a frame and
//! serializing it costs too much: the relay's fan-out and the benchmark's
//! reader.
//!
//! Everything here writes or reads exactly the bytes of
//! [`encode_frame`](crate::encode_frame) and
//! [`decode_payload`](crate::decode_payload) (the tests compare them,
//! across every varint length boundary and on arbitrary frames); the
//! variant indices come from [`frame::index`](crate::frame::index), next to
//! the enums.
//!
//! - Varints ([`varint_len`], [`put_varint`]) and a bounds-checked
//!   [`Reader`] of postcard's primitives.
//! - [`Deliver`] and [`put_sent`]: `RelayFrame::Deliver` and
//!   `RelayFrame::Sent` written straight from borrowed parts into the
//!   caller's buffer, without building the frame (cloning names) or
//!   growing a buffer while serializing. A `Deliver` can also be written
//!   as the bytes before its body and the bytes after it, so that many
//!   frames share one body.
//! - [`split_frame`] and [`peek_relay`]: the first whole frame of a buffer,
//!   and a relay frame read without allocating. Reading takes untrusted
//!   bytes: it returns `None` or an error, never panics.
//!
//! # Example
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use sotto_proto::codec::fast::{self, Deliver, RelayView, To};
//! use sotto_proto::{Destination, RelayFrame, UserName, encode_frame};
//!
//! let bob = UserName::try_from("bob")?;
//! let frame = Deliver::new(0, &bob, To::User(&bob), b"sealed", None)?;
//! let mut out = BytesMut::with_capacity(frame.frame_len());
//! frame.put(&mut out);
//! let expected = encode_frame(&RelayFrame::Deliver {
//!     delivery: 0,
//!     from: bob.clone(),
//!     to: Destination::User(bob.clone()),
//!     body: Bytes::from_static(b"sealed"),
//!     slot: None,
//! })?;
//! assert_eq!(&out[..], &expected[..]);
//!
//! let (payload, rest) = fast::split_frame(&out)?.ok_or("incomplete")?;
//! assert!(rest.is_empty());
//! let Some(RelayView::Deliver(view)) = fast::peek_relay(payload) else {
//!     return Err("not a delivery".into());
//! };
//! assert_eq!((view.from, view.body), ("bob", &b"sealed"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod encode;
mod peek;
#[cfg(test)]
mod tests;
mod varint;

pub use encode::{Deliver, To, put_sent, sent_len};
pub use peek::{DeliverView, DestinationView, RelayView, Split, peek_relay, split_frame};
pub use varint::{MAX_VARINT_LEN, Reader, put_varint, varint_len};
