//! sotto's wire protocol: the frames clients and the relay exchange, and
//! the codec that puts them on a byte stream.
//!
//! # Layout
//!
//! - [`frame`]: [`ClientFrame`] (client to relay) and [`RelayFrame`] (relay
//!   to client), with the types they carry. Ciphertext, identities and
//!   signatures are opaque [`Bytes`](bytes::Bytes): the relay reads only the
//!   [`Route`] of a [`ClientFrame::Send`].
//! - [`name`]: [`UserName`] and [`RoomName`], validated when built and when
//!   decoded.
//! - [`codec`]: the framing. Each frame is a big-endian `u32` length, then
//!   that many bytes of payload: the [`PROTOCOL_VERSION`] byte followed by
//!   the [postcard](https://docs.rs/postcard/1) encoding of the frame.
//!   Payloads are at most [`MAX_FRAME_LEN`] bytes, checked before any
//!   allocation. [`FrameCodec`] plugs into `tokio_util::codec::Framed`;
//!   [`encode_frame`] and [`decode_payload`] expose the same logic for
//!   fuzzing and test vectors.
//! - [`codec::fast`]: the same bytes written and read by hand where
//!   building a frame costs too much: the relay's `Deliver` and `Sent`
//!   frames written from borrowed parts, and a relay frame read without
//!   allocating (the benchmark's reader), with postcard's varints. The
//!   variant indices they use are [`frame::index`], next to the enums and
//!   checked against the encoder.
//!
//! # Design
//!
//! postcard encodes fields and enum variants by position, so the
//! declaration order of every field and variant in [`frame`] is part of the
//! wire format and must never change. Decoding is strict: unknown versions,
//! unknown variants, invalid names and trailing bytes are all refused.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use sotto_proto::{ClientCodec, ClientFrame, RelayCodec, RoomName};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let join = ClientFrame::Join { room: RoomName::lobby() };
//!
//! // The client encodes...
//! let mut wire = BytesMut::new();
//! ClientCodec::new().encode(&join, &mut wire)?;
//! assert_eq!(&wire[..5], &[0, 0, 0, 8, sotto_proto::PROTOCOL_VERSION]);
//!
//! // ...and the relay decodes.
//! let mut relay = RelayCodec::new();
//! assert_eq!(relay.decode(&mut wire)?, Some(join));
//! assert!(wire.is_empty());
//! # Ok::<(), sotto_proto::ProtoError>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
pub mod codec;
mod error;
pub mod frame;
pub mod name;

#[cfg(test)]
mod strategies;

pub use address::{
    AddressError, DEFAULT_PORT, KEY_HANDOVER_LABEL, KEY_HANDOVER_SCHEMES, RelayAddress,
    fingerprint_text, key_handover_transcript,
};
pub use codec::{
    BLOB_CHUNK_LEN, ClientCodec, FrameCodec, MAX_FRAME_LEN, PROTOCOL_VERSION, RelayCodec,
    decode_payload, encode_frame,
};
pub use error::ProtoError;
pub use frame::{
    ClientFrame, Destination, ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, Route, Slot,
    UserInfo,
};
pub use name::{LOBBY, MAX_NAME_LEN, NameError, RoomName, UserKey, UserName};
