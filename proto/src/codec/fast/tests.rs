//! The hand-written wire format against the codec: byte for byte, across
//! every varint length boundary, and on arbitrary frames and bytes.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::*;
use crate::codec::{MAX_FRAME_LEN, PREFIX_LEN, decode_payload, encode_frame};
use crate::error::ProtoError;
use crate::frame::{Destination, RelayFrame, index};
use crate::name::{RoomName, UserName};
use crate::strategies::*;

fn user(name: &str) -> UserName {
    UserName::try_from(name).unwrap()
}

/// Varint boundaries: 7, 14, 21, ... bits, and either side of each.
fn boundaries() -> Vec<u64> {
    let mut values = vec![0, 1, 300, u64::MAX - 1, u64::MAX];
    for bits in (7..64).step_by(7) {
        let edge = 1u64 << bits;
        values.extend([edge - 1, edge, edge + 1]);
    }
    values
}

/// What `peek_relay` must read from `frame`.
fn expected_view(frame: &RelayFrame) -> RelayView<'_> {
    match frame {
        RelayFrame::Deliver {
            delivery,
            from,
            to,
            body,
            slot,
        } => RelayView::Deliver(DeliverView {
            delivery: *delivery,
            from: from.as_str(),
            to: match to {
                Destination::Room(room) => DestinationView::Room(room.as_str()),
                Destination::User(user) => DestinationView::User(user.as_str()),
            },
            body,
            slot: slot.as_deref(),
        }),
        RelayFrame::Sent { id } => RelayView::Sent { id: *id },
        other => RelayView::Other {
            index: other.index(),
        },
    }
}

/// The frame `Deliver` writes, whole and in three parts, checked against
/// each other and against the lengths it announces.
fn assembled(
    delivery: u64,
    from: &UserName,
    to: To<'_>,
    body: &[u8],
    slot: Option<&[u8]>,
) -> Vec<u8> {
    let frame = Deliver::new(delivery, from, to, body, slot).unwrap();
    let mut whole = BytesMut::new();
    frame.put(&mut whole);
    assert_eq!(whole.len(), frame.frame_len());
    let mut parts = BytesMut::new();
    frame.put_head(&mut parts);
    assert_eq!(parts.len(), frame.head_len());
    parts.extend_from_slice(body);
    frame.put_tail(&mut parts);
    assert_eq!(
        parts.len() - frame.head_len() - body.len(),
        frame.tail_len()
    );
    assert_eq!(parts, whole);
    whole.to_vec()
}

#[test]
fn variant_indices_are_the_first_byte_of_every_encoded_variant() {
    let mut runner = TestRunner::deterministic();
    let (mut client, mut relay) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..2000 {
        let frame = client_frame().new_tree(&mut runner).unwrap().current();
        let wire = encode_frame(&frame).unwrap();
        assert_eq!(u32::from(wire[PREFIX_LEN + 1]), frame.index(), "{frame:?}");
        assert_eq!(frame.index() as usize, client_variant(&frame));
        client.insert(frame.index());
        let frame = relay_frame().new_tree(&mut runner).unwrap().current();
        let wire = encode_frame(&frame).unwrap();
        assert_eq!(u32::from(wire[PREFIX_LEN + 1]), frame.index(), "{frame:?}");
        assert_eq!(frame.index() as usize, relay_variant(&frame));
        relay.insert(frame.index());
    }
    // Every constant was checked, and they are the declaration order.
    let all = |n: usize| (0..u32::try_from(n).unwrap()).collect::<BTreeSet<_>>();
    assert_eq!(client, all(CLIENT_VARIANTS));
    assert_eq!(relay, all(RELAY_VARIANTS));

    for (to, expected) in [
        (
            Destination::Room(RoomName::lobby()),
            index::destination::ROOM,
        ),
        (Destination::User(user("bob")), index::destination::USER),
    ] {
        assert_eq!(to.index(), expected);
        let wire = postcard::to_allocvec(&to).unwrap();
        assert_eq!(u32::from(wire[0]), expected);
    }
    // The constants the fast paths use, by name.
    let deliver = RelayFrame::Deliver {
        delivery: 0,
        from: user("a"),
        to: Destination::User(user("b")),
        body: Bytes::new(),
        slot: None,
    };
    assert_eq!(deliver.index(), index::relay::DELIVER);
    assert_eq!(RelayFrame::Sent { id: 0 }.index(), index::relay::SENT);
}

#[test]
fn varints_are_postcards() {
    for value in boundaries() {
        let expected = postcard::to_allocvec(&value).unwrap();
        assert_eq!(varint_len(value), expected.len(), "{value}");
        let mut out = BytesMut::new();
        put_varint(&mut out, value);
        assert_eq!(&out[..], &expected[..], "{value}");

        let mut r = Reader::new(&expected);
        assert_eq!(r.u64(), Some(value));
        assert!(r.is_empty());
        // Cut short: nothing read, nothing consumed.
        for cut in 0..expected.len() {
            let mut r = Reader::new(&expected[..cut]);
            assert_eq!(r.u64(), None, "{value} cut at {cut}");
            assert_eq!(r.rest().len(), cut);
        }
        if let Ok(small) = u32::try_from(value) {
            assert_eq!(Reader::new(&expected).u32(), Some(small));
        } else {
            assert_eq!(Reader::new(&expected).u32(), None, "{value}");
        }
    }
    assert_eq!(varint_len(u64::MAX), MAX_VARINT_LEN);
}

#[test]
fn invalid_varints_are_refused_like_postcard() {
    let cases: [&[u8]; 6] = [
        // A tenth byte carrying more than u64's last bit.
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
        // Eleven bytes.
        &[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ],
        // Continuation bits to the end.
        &[0x80],
        &[0xff, 0xff],
        &[],
        // Over-long but within ten bytes: postcard takes it, so do we.
        &[0x80, 0x00],
    ];
    for case in cases {
        let ours = Reader::new(case).u64();
        let theirs = postcard::take_from_bytes::<u64>(case).ok().map(|(v, _)| v);
        assert_eq!(ours, theirs, "{case:?}");
    }
    // u32: a fifth byte over 0x0f.
    let case = [0xff, 0xff, 0xff, 0xff, 0x1f];
    assert_eq!(Reader::new(&case).u32(), None);
    assert!(postcard::from_bytes::<u32>(&case).is_err());
    let max = [0xff, 0xff, 0xff, 0xff, 0x0f];
    assert_eq!(Reader::new(&max).u32(), Some(u32::MAX));
}

/// The encoder's output is byte for byte what the codec makes, across every
/// varint length boundary that matters: delivery ids, names, bodies and
/// slots around 127/128 and 16383/16384 bytes, and a body past 2^16.
#[test]
fn deliver_frames_equal_encode_frame_across_varint_boundaries() {
    let from = user("Alice.w");
    let bob = user("bob");
    let room = RoomName::lobby();
    let long_name = user(&"n".repeat(32));
    for delivery in boundaries() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 70_000] {
            let body = Bytes::from(vec![0xb7; len]);
            for slot in [
                None,
                Some(Bytes::new()),
                Some(Bytes::from(vec![3; 127])),
                Some(Bytes::from(vec![3; 384])),
            ] {
                for (to, borrowed) in [
                    (Destination::User(bob.clone()), To::User(&bob)),
                    (Destination::Room(room.clone()), To::Room(&room)),
                    (Destination::User(long_name.clone()), To::User(&long_name)),
                ] {
                    assert_eq!(To::from(&to), borrowed);
                    let frame = RelayFrame::Deliver {
                        delivery,
                        from: from.clone(),
                        to,
                        body: body.clone(),
                        slot: slot.clone(),
                    };
                    assert_eq!(
                        assembled(delivery, &from, borrowed, &body, slot.as_deref()),
                        encode_frame(&frame).unwrap(),
                        "{delivery} {len} {slot:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_largest_deliver_frame_is_written_and_one_more_byte_is_refused_like_encode() {
    let bob = user("bob");
    // Payload: version, variant, delivery, "bob", User, "bob", the body's
    // 3-byte length, the None tag.
    let fixed = 1 + 1 + 1 + 4 + 1 + 4 + 3 + 1;
    let body = vec![0; MAX_FRAME_LEN - fixed];
    let largest = Deliver::new(0, &bob, To::User(&bob), &body, None).unwrap();
    assert_eq!(largest.frame_len(), PREFIX_LEN + MAX_FRAME_LEN);

    let body = vec![0; MAX_FRAME_LEN - fixed + 1];
    let err = Deliver::new(0, &bob, To::User(&bob), &body, None).unwrap_err();
    let frame = RelayFrame::Deliver {
        delivery: 0,
        from: bob.clone(),
        to: Destination::User(bob.clone()),
        body: Bytes::from(body),
        slot: None,
    };
    let expected = encode_frame(&frame).unwrap_err();
    assert!(
        matches!(
            (&err, &expected),
            (
                ProtoError::FrameTooLarge { len: a, max: MAX_FRAME_LEN },
                ProtoError::FrameTooLarge { len: b, max: MAX_FRAME_LEN },
            ) if a == b
        ),
        "{err:?} {expected:?}"
    );
}

#[test]
fn sent_frames_equal_encode_frame() {
    let ids = (0..5000).chain(boundaries());
    let mut out = BytesMut::new();
    for id in ids {
        out.clear();
        put_sent(&mut out, id);
        assert_eq!(out.len(), sent_len(id), "{id}");
        assert_eq!(
            &out[..],
            &encode_frame(&RelayFrame::Sent { id }).unwrap()[..],
            "{id}"
        );
    }
    assert_eq!(sent_len(u64::MAX), 16);
}

#[test]
fn split_frame_takes_one_whole_frame_and_refuses_impossible_lengths() {
    let first = encode_frame(&RelayFrame::Sent { id: 1 }).unwrap();
    let second = encode_frame(&RelayFrame::Pong { nonce: 9 }).unwrap();
    let wire = [first.clone(), second.clone()].concat();
    let (payload, rest) = split_frame(&wire).unwrap().unwrap();
    assert_eq!(payload, &first[PREFIX_LEN..]);
    assert_eq!(rest, &second[..]);
    for cut in 0..first.len() {
        assert_eq!(split_frame(&first[..cut]).unwrap(), None, "cut at {cut}");
    }
    assert!(matches!(
        split_frame(&[0, 0, 0, 0, 1]),
        Err(ProtoError::Malformed)
    ));
    let over = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
    assert!(matches!(
        split_frame(&over),
        Err(ProtoError::FrameTooLarge {
            max: MAX_FRAME_LEN,
            ..
        })
    ));
    assert!(matches!(
        split_frame(&[0xff, 0, 0, 0, 1]),
        Err(ProtoError::FrameTooLarge { .. })
    ));
}

#[test]
fn peek_refuses_other_versions_trailing_bytes_and_bad_tags() {
    let wire = encode_frame(&RelayFrame::Deliver {
        delivery: 300,
        from: user("alice"),
        to: Destination::Room(RoomName::lobby()),
        body: Bytes::from_static(b"body"),
        slot: Some(Bytes::from_static(b"slot")),
    })
    .unwrap();
    let payload = &wire[PREFIX_LEN..];
    assert!(matches!(peek_relay(payload), Some(RelayView::Deliver(_))));

    let mut other_version = payload.to_vec();
    other_version[0] = 1;
    assert_eq!(peek_relay(&other_version), None);

    let trailing = [payload, &[0]].concat();
    assert_eq!(peek_relay(&trailing), None);
    assert!(decode_payload::<RelayFrame>(&trailing).is_err());

    // The option tag of the slot is the byte after the body.
    let tag_at = payload.len() - 1 - 1 - b"slot".len();
    assert_eq!(payload[tag_at], 1);
    let mut bad_tag = payload.to_vec();
    bad_tag[tag_at] = 2;
    assert_eq!(peek_relay(&bad_tag), None);
    assert!(decode_payload::<RelayFrame>(&bad_tag).is_err());

    assert_eq!(peek_relay(&[]), None);
    assert_eq!(peek_relay(&[crate::PROTOCOL_VERSION]), None);
    assert_eq!(
        peek_relay(&[crate::PROTOCOL_VERSION, 13]),
        Some(RelayView::Other { index: 13 })
    );
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    // Past 127 bytes: lengths of one and two varint bytes.
    proptest::collection::vec(any::<u8>(), 0..300)
}

fn to_strategy() -> impl Strategy<Value = Destination> {
    prop_oneof![
        room_name().prop_map(Destination::Room),
        user_name().prop_map(Destination::User),
    ]
}

proptest! {
    /// Every primitive read agrees with postcard on any bytes: the same
    /// value and the same rest, or a refusal by both.
    #[test]
    fn reader_agrees_with_postcard_on_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut r = Reader::new(&bytes);
        let ours = r.u64().map(|v| (v, r.rest()));
        prop_assert_eq!(ours, postcard::take_from_bytes::<u64>(&bytes).ok());
        let mut r = Reader::new(&bytes);
        let ours = r.u32().map(|v| (v, r.rest()));
        prop_assert_eq!(ours, postcard::take_from_bytes::<u32>(&bytes).ok());
        let mut r = Reader::new(&bytes);
        let ours = r.bytes().map(|v| (v, r.rest()));
        prop_assert_eq!(ours, postcard::take_from_bytes::<&[u8]>(&bytes).ok());
        let mut r = Reader::new(&bytes);
        let ours = r.str().map(|v| (v, r.rest()));
        prop_assert_eq!(ours, postcard::take_from_bytes::<&str>(&bytes).ok());
        let mut r = Reader::new(&bytes);
        let ours = r.option_bytes().map(|v| (v, r.rest()));
        prop_assert_eq!(ours, postcard::take_from_bytes::<Option<&[u8]>>(&bytes).ok());
        // A refusal consumes nothing.
        let mut r = Reader::new(&bytes);
        if r.bytes().is_none() {
            prop_assert_eq!(r.rest(), &bytes[..]);
        }
    }
}

proptest! {
    #[test]
    fn deliver_equals_encode_frame_for_any_frame(
        delivery in any::<u64>(),
        from in user_name(),
        to in to_strategy(),
        body in body(),
        slot in proptest::option::of(body()),
    ) {
        let written = assembled(delivery, &from, To::from(&to), &body, slot.as_deref());
        let frame = RelayFrame::Deliver {
            delivery,
            from,
            to,
            body: Bytes::from(body),
            slot: slot.map(Bytes::from),
        };
        prop_assert_eq!(written, encode_frame(&frame).unwrap());
    }

    #[test]
    fn sent_equals_encode_frame_for_any_id(id in any::<u64>()) {
        let mut out = BytesMut::new();
        put_sent(&mut out, id);
        prop_assert_eq!(&out[..], &encode_frame(&RelayFrame::Sent { id }).unwrap()[..]);
    }

    #[test]
    fn peek_agrees_with_decode_payload_on_any_relay_frame(frame in relay_frame()) {
        let wire = encode_frame(&frame).unwrap();
        let (payload, rest) = split_frame(&wire).unwrap().unwrap();
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&decode_payload::<RelayFrame>(payload).unwrap(), &frame);
        prop_assert_eq!(peek_relay(payload), Some(expected_view(&frame)));
        // Cut short, a frame is not there yet; a read Deliver or Sent is
        // not a frame at all.
        for cut in 0..wire.len() {
            prop_assert_eq!(split_frame(&wire[..cut]).unwrap(), None);
        }
        if matches!(frame, RelayFrame::Deliver { .. } | RelayFrame::Sent { .. }) {
            for cut in 0..payload.len() {
                prop_assert_eq!(peek_relay(&payload[..cut]), None);
            }
        }
    }

    #[test]
    fn peek_never_panics_and_agrees_whenever_decode_succeeds(
        bytes in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let _ = split_frame(&bytes);
        let peeked = peek_relay(&bytes);
        if let Ok(frame) = decode_payload::<RelayFrame>(&bytes) {
            prop_assert_eq!(peeked, Some(expected_view(&frame)));
        }
        // The same bytes as a Deliver's or a Sent's fields.
        for variant in [index::relay::DELIVER, index::relay::SENT] {
            let payload = [&[crate::PROTOCOL_VERSION, u8::try_from(variant).unwrap()][..], &bytes].concat();
            let peeked = peek_relay(&payload);
            if let Ok(frame) = decode_payload::<RelayFrame>(&payload) {
                prop_assert_eq!(peeked, Some(expected_view(&frame)));
            }
        }
    }

    #[test]
    fn peek_agrees_with_decode_payload_on_mutated_deliveries(
        delivery in any::<u64>(),
        from in user_name(),
        to in to_strategy(),
        body in body(),
        slot in proptest::option::of(body()),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let frame = RelayFrame::Deliver {
            delivery,
            from,
            to,
            body: Bytes::from(body),
            slot: slot.map(Bytes::from),
        };
        let wire = encode_frame(&frame).unwrap();
        let mut payload = wire[PREFIX_LEN..].to_vec();
        let at = at.index(payload.len());
        payload[at] = byte;
        let peeked = peek_relay(&payload);
        if let Ok(decoded) = decode_payload::<RelayFrame>(&payload) {
            prop_assert_eq!(peeked, Some(expected_view(&decoded)));
        }
    }
}
