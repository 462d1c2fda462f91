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
pub const PROTOCOL_VERSION: u8 = 1;

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
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    use super::*;
    use crate::frame::{Destination, ErrorCode, Route, Slot};
    use crate::name::{RoomName, UserName};
    use crate::strategies::*;

    fn user(name: &str) -> UserName {
        UserName::try_from(name).unwrap()
    }

    /// Feeds `wire` to a fresh decoder in one go and collects every frame,
    /// finishing with `decode_eof`.
    fn decode_all<T: DeserializeOwned>(wire: &[u8]) -> Result<Vec<T>, ProtoError> {
        let mut codec = FrameCodec::<T, ()>::new();
        let mut buf = BytesMut::from(wire);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
        while let Some(frame) = codec.decode_eof(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Feeds `wire` to a decoder in chunks of the given sizes (cycled) and
    /// collects every frame.
    fn decode_chunked<T: DeserializeOwned>(wire: &[u8], chunks: &[usize]) -> Vec<T> {
        let mut codec = FrameCodec::<T, ()>::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut rest = wire;
        for &size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            buf.extend_from_slice(chunk);
            rest = tail;
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
        frames
    }

    /// Checks one frame's round trip through every encoding and decoding
    /// path, and returns its wire bytes.
    fn assert_round_trip<T>(frame: &T) -> Vec<u8>
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let wire = encode_frame(frame).unwrap();
        let len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len() - PREFIX_LEN);
        assert_eq!(wire[PREFIX_LEN], PROTOCOL_VERSION);

        let mut via_codec = BytesMut::from(&b"already queued"[..]);
        FrameCodec::<(), T>::new()
            .encode(frame, &mut via_codec)
            .unwrap();
        assert_eq!(&via_codec[..14], b"already queued");
        assert_eq!(&via_codec[14..], &wire[..]);

        assert_eq!(&decode_payload::<T>(&wire[PREFIX_LEN..]).unwrap(), frame);
        assert_eq!(
            &decode_all::<T>(&wire).unwrap(),
            std::slice::from_ref(frame)
        );
        wire
    }

    proptest! {
        #[test]
        fn client_frames_round_trip(frame in client_frame()) {
            let wire = assert_round_trip(&frame);
            // Variant indices are below 128, so they are one varint byte.
            prop_assert_eq!(usize::from(wire[5]), client_variant(&frame));
        }

        #[test]
        fn relay_frames_round_trip(frame in relay_frame()) {
            let wire = assert_round_trip(&frame);
            prop_assert_eq!(usize::from(wire[5]), relay_variant(&frame));
        }

        #[test]
        fn client_frame_stream_survives_any_chunking(
            frames in proptest::collection::vec(client_frame(), 0..8),
            chunks in proptest::collection::vec(1usize..64, 1..16),
        ) {
            let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).unwrap()).collect();
            prop_assert_eq!(decode_chunked::<ClientFrame>(&wire, &chunks), frames);
        }

        #[test]
        fn relay_frame_stream_survives_any_chunking(
            frames in proptest::collection::vec(relay_frame(), 0..8),
            chunks in proptest::collection::vec(1usize..64, 1..16),
        ) {
            let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f).unwrap()).collect();
            prop_assert_eq!(decode_chunked::<RelayFrame>(&wire, &chunks), frames);
        }
    }

    #[test]
    fn strategies_cover_every_variant() {
        let mut runner = TestRunner::deterministic();
        let (mut client, mut relay) = (BTreeSet::new(), BTreeSet::new());
        for _ in 0..2000 {
            let frame = client_frame().new_tree(&mut runner).unwrap().current();
            client.insert(client_variant(&frame));
            let frame = relay_frame().new_tree(&mut runner).unwrap().current();
            relay.insert(relay_variant(&frame));
        }
        assert_eq!(client, (0..CLIENT_VARIANTS).collect());
        assert_eq!(relay, (0..RELAY_VARIANTS).collect());
    }

    #[test]
    fn wire_layout_matches_known_answers() {
        let vectors: [(Vec<u8>, Vec<u8>); 5] = [
            (
                encode_frame(&ClientFrame::Ping { nonce: 300 }).unwrap(),
                vec![0, 0, 0, 4, 1, 8, 0xac, 0x02],
            ),
            (
                encode_frame(&ClientFrame::Join {
                    room: RoomName::lobby(),
                })
                .unwrap(),
                [&[0, 0, 0, 8, 1, 1, 5][..], b"lobby"].concat(),
            ),
            (
                encode_frame(&ClientFrame::Send {
                    route: Route {
                        id: 1,
                        to: Destination::User(user("bob")),
                    },
                    body: Bytes::from_static(&[0xaa, 0xbb]),
                    slots: vec![Slot {
                        to: user("bob"),
                        data: Bytes::from_static(&[0xcc]),
                    }],
                })
                .unwrap(),
                [
                    &[0, 0, 0, 18, 1, 6, 1, 1, 3][..],
                    b"bob",
                    &[2, 0xaa, 0xbb, 1, 3],
                    b"bob",
                    &[1, 0xcc],
                ]
                .concat(),
            ),
            (
                encode_frame(&RelayFrame::Challenge { nonce: [7; 32] }).unwrap(),
                [&[0, 0, 0, 34, 1, 0][..], &[7; 32]].concat(),
            ),
            (
                encode_frame(&RelayFrame::Error {
                    id: Some(5),
                    code: ErrorCode::NameTaken,
                    message: "x".into(),
                })
                .unwrap(),
                vec![0, 0, 0, 7, 1, 10, 1, 5, 4, 1, b'x'],
            ),
        ];
        for (actual, expected) in vectors {
            assert_eq!(actual, expected);
        }
    }

    #[test]
    fn length_prefix_over_max_is_refused_before_allocating() {
        for len in [u32::MAX, u32::try_from(MAX_FRAME_LEN).unwrap() + 1] {
            let mut buf = BytesMut::with_capacity(PREFIX_LEN);
            buf.extend_from_slice(&len.to_be_bytes());
            let err = RelayCodec::new().decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, ProtoError::FrameTooLarge { len: l, max: MAX_FRAME_LEN } if l == len as usize),
                "{err:?}"
            );
            assert!(buf.capacity() < 1024, "grew to {}", buf.capacity());
            // The error is sticky: the prefix is still there.
            assert!(RelayCodec::new().decode(&mut buf).is_err());
        }
    }

    #[test]
    fn length_prefix_at_max_reserves_only_that_frame() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&u32::try_from(MAX_FRAME_LEN).unwrap().to_be_bytes());
        assert!(RelayCodec::new().decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= PREFIX_LEN + MAX_FRAME_LEN);
        assert!(
            buf.capacity() < 2 * MAX_FRAME_LEN,
            "grew to {}",
            buf.capacity()
        );
    }

    #[test]
    fn unknown_version_is_refused() {
        let wire = encode_frame(&ClientFrame::Bye).unwrap();
        for version in [0, 2, 0xff] {
            let mut bad = wire.clone();
            bad[PREFIX_LEN] = version;
            assert!(matches!(
                decode_all::<ClientFrame>(&bad),
                Err(ProtoError::UnsupportedVersion(v)) if v == version
            ));
            assert!(matches!(
                decode_payload::<ClientFrame>(&bad[PREFIX_LEN..]),
                Err(ProtoError::UnsupportedVersion(v)) if v == version
            ));
        }
        // Checked before the body: even garbage after it reports the version.
        assert!(matches!(
            decode_payload::<ClientFrame>(&[9, 0xff, 0xff]),
            Err(ProtoError::UnsupportedVersion(9))
        ));
    }

    #[test]
    fn truncated_frame_waits_then_is_malformed_at_eof() {
        let wire = encode_frame(&ClientFrame::LookupKey {
            name: user("alice"),
        })
        .unwrap();
        for cut in 1..wire.len() {
            let mut codec = RelayCodec::new();
            let mut buf = BytesMut::from(&wire[..cut]);
            assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert!(
                matches!(codec.decode_eof(&mut buf), Err(ProtoError::Malformed)),
                "cut at {cut}"
            );
        }
        assert!(
            RelayCodec::new()
                .decode_eof(&mut BytesMut::new())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let wire = encode_frame(&ClientFrame::Ping { nonce: 1 }).unwrap();
        let mut payload = wire[PREFIX_LEN..].to_vec();
        payload.push(0);
        assert!(matches!(
            decode_payload::<ClientFrame>(&payload),
            Err(ProtoError::Malformed)
        ));
        let mut framed = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        framed.extend_from_slice(&payload);
        assert!(matches!(
            decode_all::<ClientFrame>(&framed),
            Err(ProtoError::Malformed)
        ));
    }

    #[test]
    fn zero_length_frame_is_malformed() {
        assert!(matches!(
            decode_all::<ClientFrame>(&[0, 0, 0, 0]),
            Err(ProtoError::Malformed)
        ));
        assert!(matches!(
            decode_payload::<ClientFrame>(&[]),
            Err(ProtoError::Malformed)
        ));
        // A version byte and nothing else is not a frame either.
        assert!(matches!(
            decode_all::<ClientFrame>(&[0, 0, 0, 1, 1]),
            Err(ProtoError::Malformed)
        ));
    }

    #[test]
    fn unknown_variant_is_refused() {
        let past_client = u8::try_from(CLIENT_VARIANTS).unwrap();
        let past_relay = u8::try_from(RELAY_VARIANTS).unwrap();
        assert!(matches!(
            decode_payload::<ClientFrame>(&[1, past_client]),
            Err(ProtoError::Malformed)
        ));
        assert!(matches!(
            decode_payload::<RelayFrame>(&[1, past_relay]),
            Err(ProtoError::Malformed)
        ));
        assert!(decode_payload::<ClientFrame>(&[1, past_client - 1]).is_ok());
        // The last relay variant, KeyHandover: empty old_key, 32-byte
        // new_key, not_after 0, scheme 0, empty signature.
        let mut last = vec![1, past_relay - 1, 0];
        last.extend_from_slice(&[0; 32]);
        last.extend_from_slice(&[0, 0, 0]);
        assert!(decode_payload::<RelayFrame>(&last).is_ok());
    }

    #[test]
    fn invalid_name_in_frame_is_refused() {
        // ClientFrame::Join (variant 1) with a hand-written room name.
        let join = |name: &[u8]| {
            let mut payload = vec![PROTOCOL_VERSION, 1, u8::try_from(name.len()).unwrap()];
            payload.extend_from_slice(name);
            decode_payload::<ClientFrame>(&payload)
        };
        assert!(matches!(join(b"a/b"), Err(ProtoError::Malformed)));
        assert!(matches!(join(b"-a"), Err(ProtoError::Malformed)));
        assert!(matches!(join(b""), Err(ProtoError::Malformed)));
        assert!(matches!(join(&[b'a'; 33]), Err(ProtoError::Malformed)));
        assert!(matches!(join(&[0xff, 0xfe]), Err(ProtoError::Malformed)));
        // The same bytes with a valid name decode, so the refusals above are
        // about the names.
        let name = [b'a'; 32];
        let expected = RoomName::try_from(std::str::from_utf8(&name).unwrap()).unwrap();
        assert_eq!(join(&name).unwrap(), ClientFrame::Join { room: expected });
    }

    #[test]
    fn flipped_bit_in_a_frame_never_panics() {
        let frames = [
            encode_frame(&RelayFrame::Deliver {
                delivery: 1 << 40,
                from: user("alice"),
                to: Destination::Room(RoomName::lobby()),
                body: Bytes::from_static(b"ciphertext"),
                slot: Some(Bytes::from_static(b"slot")),
            })
            .unwrap(),
            encode_frame(&RelayFrame::Error {
                id: None,
                code: ErrorCode::Internal,
                message: "oops".into(),
            })
            .unwrap(),
        ];
        let mut decoded = 0;
        for wire in frames {
            for bit in 0..wire.len() * 8 {
                let mut bad = wire.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                let _ = decode_payload::<RelayFrame>(&bad[PREFIX_LEN..]);
                // Whatever decodes must re-encode to something that decodes
                // to the same value.
                if let Ok(frames) = decode_all::<RelayFrame>(&bad) {
                    decoded += 1;
                    for frame in frames {
                        let again = encode_frame(&frame).unwrap();
                        assert_eq!(decode_all::<RelayFrame>(&again).unwrap(), vec![frame]);
                    }
                }
            }
        }
        // Flips inside opaque bytes still decode: the test did exercise Ok.
        assert!(decoded > 0);
    }

    /// A Send whose payload is exactly `payload_len` bytes long: 10 bytes of
    /// framing and routing plus the body (whose length is a 3-byte varint
    /// while it is under 2^21).
    fn send_of_payload_len(payload_len: usize) -> ClientFrame {
        ClientFrame::Send {
            route: Route {
                id: 0,
                to: Destination::User(user("a")),
            },
            body: Bytes::from(vec![0; payload_len - 10]),
            slots: Vec::new(),
        }
    }

    #[test]
    fn encoding_an_oversized_frame_fails() {
        let largest = encode_frame(&send_of_payload_len(MAX_FRAME_LEN)).unwrap();
        assert_eq!(largest.len(), PREFIX_LEN + MAX_FRAME_LEN);
        assert_eq!(decode_all::<ClientFrame>(&largest).unwrap().len(), 1);

        for len in [MAX_FRAME_LEN + 1, (1 << 21) - 1] {
            let frame = send_of_payload_len(len);
            assert!(matches!(
                encode_frame(&frame),
                Err(ProtoError::FrameTooLarge { len: l, max: MAX_FRAME_LEN }) if l == len
            ));
            // The codec leaves what it had already queued untouched.
            let mut dst = BytesMut::from(&b"queued"[..]);
            assert!(ClientCodec::new().encode(&frame, &mut dst).is_err());
            assert_eq!(&dst[..], b"queued");
        }
    }

    #[test]
    fn errors_read_clearly() {
        let too_large = ProtoError::FrameTooLarge { len: 5, max: 4 };
        assert_eq!(
            too_large.to_string(),
            "frame of 5 bytes exceeds the maximum frame length of 4 bytes"
        );
        assert_eq!(
            ProtoError::UnsupportedVersion(2).to_string(),
            "unsupported protocol version 2 (this build speaks version 1)"
        );
    }

    #[tokio::test]
    async fn frames_cross_a_duplex_stream_both_ways() {
        use futures::{SinkExt, StreamExt};
        use tokio_util::codec::Framed;

        // A tiny pipe buffer forces frames to be split across reads.
        let (client_io, relay_io) = tokio::io::duplex(16);
        let mut client = Framed::new(client_io, ClientCodec::new());
        let mut relay = Framed::new(relay_io, RelayCodec::new());

        let relay_side = tokio::spawn(async move {
            relay
                .send(RelayFrame::Challenge { nonce: [3; 32] })
                .await
                .unwrap();
            let Some(Ok(ClientFrame::Register { name, .. })) = relay.next().await else {
                panic!("expected Register");
            };
            relay
                .send(&RelayFrame::Registered { name: name.clone() })
                .await
                .unwrap();
            let Some(Ok(ClientFrame::Send { route, body, .. })) = relay.next().await else {
                panic!("expected Send");
            };
            relay.send(RelayFrame::Sent { id: route.id }).await.unwrap();
            relay
                .send(RelayFrame::Deliver {
                    delivery: 1,
                    from: name,
                    to: route.to,
                    body,
                    slot: None,
                })
                .await
                .unwrap();
            assert!(matches!(relay.next().await, Some(Ok(ClientFrame::Bye))));
            // The client hung up cleanly between frames.
            assert!(relay.next().await.is_none());
        });

        assert_eq!(
            client.next().await.unwrap().unwrap(),
            RelayFrame::Challenge { nonce: [3; 32] }
        );
        let register = ClientFrame::Register {
            name: user("alice"),
            identity: Bytes::from(vec![1; 300]),
            proof: Bytes::from(vec![2; 256]),
        };
        client.send(&register).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            RelayFrame::Registered {
                name: user("alice")
            }
        );
        let body = Bytes::from(vec![9; 1000]);
        client
            .send(ClientFrame::Send {
                route: Route {
                    id: 42,
                    to: Destination::Room(RoomName::lobby()),
                },
                body: body.clone(),
                slots: Vec::new(),
            })
            .await
            .unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            RelayFrame::Sent { id: 42 }
        );
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            RelayFrame::Deliver {
                delivery: 1,
                from: user("alice"),
                to: Destination::Room(RoomName::lobby()),
                body,
                slot: None,
            }
        );
        client.send(ClientFrame::Bye).await.unwrap();
        drop(client);
        relay_side.await.unwrap();
    }
}
