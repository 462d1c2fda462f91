//! Framing: the length prefix, the version byte and the codec.
//!
//! A frame on the wire is
//!
//! ```text
//! +----------------+---------+-----------------------------+
//! | len: u32 (BE)  | version | postcard encoding of frame  |
//! +----------------+---------+-----------------------------+
//!                  |<------------- len bytes ------------->|
//! ```
//!
//! `len` counts the version byte and the postcard body, never the prefix
//! itself; it is at least 1 and at most [`MAX_FRAME_LEN`].

use std::marker::PhantomData;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtoError;
use crate::frame::{ClientFrame, RelayFrame};

pub mod fast;

/// The protocol version, the first byte of every frame's payload.
pub const PROTOCOL_VERSION: u8 = 3;

/// The length of every chunk of a blob but its last (which is 1 to this
/// many bytes): 64 KiB of a file's plaintext and its 16-byte AES-GCM tag
/// (protocol.md 9.13). A `PutChunk` or `Chunk` frame of a full chunk is a
/// few dozen bytes longer.
pub const BLOB_CHUNK_LEN: usize = 65_536 + 16;

/// The largest allowed frame payload (version byte plus postcard body), in
/// bytes: 1 MiB.
///
/// The decoder checks the length prefix against this limit *before*
/// reserving any memory for the frame, so a peer cannot make us allocate
/// more than this by announcing a huge frame. The encoder refuses to
/// produce a larger frame.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the big-endian `u32` length prefix before every payload.
pub const PREFIX_LEN: usize = 4;

/// Checks a payload length against the protocol's bounds.
pub(crate) fn check_len(len: usize) -> Result<(), ProtoError> {
    if len == 0 {
        Err(ProtoError::Malformed)
    } else if len > MAX_FRAME_LEN {
        Err(ProtoError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        })
    } else {
        Ok(())
    }
}

/// Encodes `frame` into its full wire form: length prefix, version byte and
/// postcard body.
///
/// Fails with [`ProtoError::FrameTooLarge`] if the payload would be longer
/// than [`MAX_FRAME_LEN`], and with [`ProtoError::Malformed`] if postcard
/// cannot encode the value (never the case for this crate's frames).
pub fn encode_frame<T: Serialize>(frame: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = BytesMut::new();
    encode_into(frame, &mut out)?;
    Ok(Vec::from(out))
}

/// Decodes one frame payload: the version byte followed by the postcard
/// body, without the length prefix.
///
/// The whole of `payload` must be one frame: trailing bytes are refused as
/// [`ProtoError::Malformed`].
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtoError> {
    check_len(payload.len())?;
    let (&version, body) = payload.split_first().ok_or(ProtoError::Malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    match postcard::take_from_bytes(body) {
        Ok((frame, [])) => Ok(frame),
        // Strict: bytes left over after the frame are refused too.
        Ok((_, [_, ..])) | Err(_) => Err(ProtoError::Malformed),
    }
}

/// Appends the wire form of `frame` to `dst`; on error `dst` is left as it
/// was.
fn encode_into<T: Serialize>(frame: &T, dst: &mut BytesMut) -> Result<(), ProtoError> {
    let start = dst.len();
    dst.put_u32(0); // patched below, once the length is known
    let mut sink = CappedSink { dst, len: 0 };
    let encoded = sink
        .push(PROTOCOL_VERSION)
        .and_then(|()| postcard::serialize_with_flavor(frame, sink));
    let result = match encoded {
        Ok((dst, len)) => check_len(len).and_then(|()| {
            let prefix = u32::try_from(len).map_err(|_| ProtoError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            })?;
            let slot = dst
                .get_mut(start..)
                .and_then(|tail| tail.first_chunk_mut::<PREFIX_LEN>())
                .ok_or(ProtoError::Malformed)?;
            *slot = prefix.to_be_bytes();
            Ok(())
        }),
        Err(_) => Err(ProtoError::Malformed),
    };
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// A postcard output that appends to a buffer but stops storing bytes past
/// [`MAX_FRAME_LEN`] while still counting them, so that encoding an
/// oversized frame neither copies it whole nor loses its true length.
struct CappedSink<'a> {
    dst: &'a mut BytesMut,
    /// Payload bytes produced so far, stored or not.
    len: usize,
}

impl CappedSink<'_> {
    fn push(&mut self, byte: u8) -> postcard::Result<()> {
        postcard::ser_flavors::Flavor::try_push(self, byte)
    }
}

impl<'a> postcard::ser_flavors::Flavor for CappedSink<'a> {
    type Output = (&'a mut BytesMut, usize);

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.try_extend(&[byte])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let room = MAX_FRAME_LEN.saturating_sub(self.len);
        self.dst.extend_from_slice(data.get(..room).unwrap_or(data));
        self.len = self.len.saturating_add(data.len());
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Self::Output> {
        Ok((self.dst, self.len))
    }
}

/// The codec for a sotto connection: decodes `In` frames, encodes `Out`
/// frames.
///
/// Use the aliases [`ClientCodec`] and [`RelayCodec`]. Both directions go
/// through [`encode_frame`]'s and [`decode_payload`]'s logic, so the codec
/// and those functions cannot disagree about the format.
///
/// The decoder reads the 4-byte length prefix first and refuses a length
/// over [`MAX_FRAME_LEN`] (or of zero) before reserving anything; it then
/// reserves exactly the missing bytes of the frame and waits for them. A
/// stream that ends inside a frame is [`ProtoError::Malformed`].
pub struct FrameCodec<In, Out> {
    /// Largest payload this codec decodes: [`MAX_FRAME_LEN`] or less.
    max_len: usize,
    // `fn() -> ..` keeps the codec Send, Sync and Unpin whatever the frames.
    _frames: PhantomData<fn() -> (In, Out)>,
}

/// The client's codec: decodes [`RelayFrame`]s, encodes [`ClientFrame`]s.
pub type ClientCodec = FrameCodec<RelayFrame, ClientFrame>;

/// The relay's codec: decodes [`ClientFrame`]s, encodes [`RelayFrame`]s.
pub type RelayCodec = FrameCodec<ClientFrame, RelayFrame>;

impl<In, Out> FrameCodec<In, Out> {
    /// A new codec. It holds no state.
    pub const fn new() -> Self {
        Self {
            max_len: MAX_FRAME_LEN,
            _frames: PhantomData,
        }
    }

    /// A codec that refuses to decode payloads longer than `max_len` bytes
    /// (capped at [`MAX_FRAME_LEN`]), checked before allocating, as
    /// [`ProtoError::FrameTooLarge`]. A relay can accept less than the
    /// protocol's maximum.
    pub const fn with_max_len(max_len: usize) -> Self {
        Self {
            max_len: if max_len < MAX_FRAME_LEN {
                max_len
            } else {
                MAX_FRAME_LEN
            },
            _frames: PhantomData,
        }
    }
}

impl<In, Out> Default for FrameCodec<In, Out> {
    fn default() -> Self {
        Self::new()
    }
}

impl<In, Out> Clone for FrameCodec<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<In, Out> Copy for FrameCodec<In, Out> {}

impl<In, Out> std::fmt::Debug for FrameCodec<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("in", &std::any::type_name::<In>())
            .field("out", &std::any::type_name::<Out>())
            .finish()
    }
}

impl<In: DeserializeOwned, Out> Decoder for FrameCodec<In, Out> {
    type Item = In;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtoError> {
        let Some(prefix) = src.first_chunk::<PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
        check_len(len)?;
        if len > self.max_len {
            return Err(ProtoError::FrameTooLarge {
                len,
                max: self.max_len,
            });
        }
        let total = PREFIX_LEN + len;
        if src.len() < total {
            // Bounded by MAX_FRAME_LEN + PREFIX_LEN thanks to check_len.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let payload = src.split_to(len);
        decode_payload(&payload).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, ProtoError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            // The stream ended inside a frame.
            None => Err(ProtoError::Malformed),
        }
    }
}

impl<In, Out: Serialize> Encoder<&Out> for FrameCodec<In, Out> {
    type Error = ProtoError;

    fn encode(&mut self, frame: &Out, dst: &mut BytesMut) -> Result<(), ProtoError> {
        encode_into(frame, dst)
    }
}

impl<In, Out: Serialize> Encoder<Out> for FrameCodec<In, Out> {
    type Error = ProtoError;

    fn encode(&mut self, frame: Out, dst: &mut BytesMut) -> Result<(), ProtoError> {
        encode_into(&frame, dst)
    }
}

#[cfg(test)]
mod tests;
