//! The codec's unit tests: round trips through every encoding and decoding
//! path, the wire layout against known answers, and every refusal (length,
//! version, truncation, trailing bytes, unknown variants, invalid names).

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
            vec![0, 0, 0, 4, 3, 8, 0xac, 0x02],
        ),
        (
            encode_frame(&ClientFrame::Join {
                room: RoomName::lobby(),
            })
            .unwrap(),
            [&[0, 0, 0, 8, 3, 1, 5][..], b"lobby"].concat(),
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
                &[0, 0, 0, 18, 3, 6, 1, 1, 3][..],
                b"bob",
                &[2, 0xaa, 0xbb, 1, 3],
                b"bob",
                &[1, 0xcc],
            ]
            .concat(),
        ),
        (
            encode_frame(&RelayFrame::Challenge { nonce: [7; 32] }).unwrap(),
            [&[0, 0, 0, 34, 3, 0][..], &[7; 32]].concat(),
        ),
        (
            encode_frame(&RelayFrame::Error {
                id: Some(5),
                code: ErrorCode::NameTaken,
                message: "x".into(),
            })
            .unwrap(),
            vec![0, 0, 0, 7, 3, 10, 1, 5, 4, 1, b'x'],
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
    // Versions 1 (before prekeys) and 2 (before blobs) are refused like
    // any other.
    for version in [0, 1, 2, 4, 0xff] {
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
        decode_all::<ClientFrame>(&[0, 0, 0, 1, PROTOCOL_VERSION]),
        Err(ProtoError::Malformed)
    ));
}

#[test]
fn unknown_variant_is_refused() {
    let past_client = u8::try_from(CLIENT_VARIANTS).unwrap();
    let past_relay = u8::try_from(RELAY_VARIANTS).unwrap();
    let v = PROTOCOL_VERSION;
    assert!(matches!(
        decode_payload::<ClientFrame>(&[v, past_client]),
        Err(ProtoError::Malformed)
    ));
    assert!(matches!(
        decode_payload::<RelayFrame>(&[v, past_relay]),
        Err(ProtoError::Malformed)
    ));
    // The last client variant, BlobStatus: a 16-byte blob id.
    let mut last = vec![v, past_client - 1];
    last.extend_from_slice(&[0; 16]);
    assert!(decode_payload::<ClientFrame>(&last).is_ok());
    // The last relay variant, BlobRefused: a blob id, an index, a code and
    // an empty message.
    let mut last = vec![v, past_relay - 1];
    last.extend_from_slice(&[0; 16]);
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
        ProtoError::UnsupportedVersion(1).to_string(),
        "unsupported protocol version 1 (this build speaks version 3)"
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
            .send(&RelayFrame::Registered {
                name: name.clone(),
                offline_max_age: 604_800,
                blob_max_bytes: 104_857_600,
                blob_max_age: 604_800,
            })
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
            name: user("alice"),
            offline_max_age: 604_800,
            blob_max_bytes: 104_857_600,
            blob_max_age: 604_800,
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
