//! What the load generator puts on the wire and how it reads it back.
//!
//! Both targets use sotto's framing: a big-endian `u32` length, then that
//! many bytes of payload starting with the protocol version byte.
//!
//! - The relay gets real [`ClientFrame::Send`]s, encoded once by
//!   [`encode_frame`] into a [`Template`] whose timestamp and route id are
//!   then patched in place for every frame sent (no re-encoding per frame;
//!   route ids start at [`FIRST_ID`], so that their varint always takes 9
//!   bytes, and increase by one per frame, as the relay requires), room
//!   messages with one key slot per other member, as sotto clients send
//!   them. It answers with [`RelayFrame::Deliver`] and the cumulative
//!   [`RelayFrame::Sent`], which [`parse`] reads without allocating with
//!   `sotto_proto::codec::fast` (which is tested against the codec; so are
//!   the uses here), and each client acknowledges every delivery with a
//!   [`ClientFrame::Ack`] ([`put_ack`]), all those of one read in one
//!   write. The in-memory relay of before issue 13 (the baseline) speaks
//!   the same frames but for `Joined` (its `Member` has no `online`), its
//!   `Deliver` ids are 0 for live deliveries (not acknowledged: there is
//!   nothing to acknowledge) and it answers every `Send` with its own
//!   `Sent`, which the cumulative reading covers too.
//! - The bare forwarder gets a minimal routing header of our own after the
//!   version byte: an op byte and a `u32` target ([`fwd`]), then the same
//!   body, and forwards the frame's bytes unchanged.
//!
//! Every body starts with the send timestamp (nanoseconds on the bench's
//! clock, little-endian `u64`) and the sender's index (`u32`), then zeroes.

use bytes::{BufMut, Bytes, BytesMut};
use sotto_proto::codec::PREFIX_LEN as PREFIX;
use sotto_proto::codec::fast::{RelayView, peek_relay, put_varint, varint_len};
use sotto_proto::frame::index;
use sotto_proto::{
    ClientFrame, Destination, PROTOCOL_VERSION, Route, Slot, UserName, encode_frame,
};

use crate::BoxError;

/// Bytes of the body taken by the timestamp, the sender's index and the
/// message's sequence number (its route id): every body differs, as
/// sealed messages do (the relay stores a body it still holds only once,
/// taking the same bytes from the same sender for a resend).
pub(crate) const BODY_HEADER: usize = 20;
/// Where the sequence number starts, after the timestamp and the sender.
const SEQ_AT: usize = 12;
/// Written where the timestamp goes, to find it in the encoded template.
const SENTINEL: u64 = 0xA55A_C33C_0FF0_9669;
/// The first route id of every connection: 2^56, the smallest `u64`
/// whose varint is 9 bytes long, so every later id (up to 2^63) has the
/// same length and is patched in place.
pub(crate) const FIRST_ID: u64 = 1 << 56;
/// Bytes of a route id's varint from [`FIRST_ID`] on.
const ID_LEN: usize = 9;
/// Where a `Send`'s route id starts: after the prefix, the version byte
/// and the variant index (one byte: 6).
const ID_AT: usize = PREFIX + 2;

/// Which target a connection talks to, and so which protocol it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// The sotto relay under test (`--relay-bin`): every delivery stored.
    Relay,
    /// The in-memory relay of before issue 13 (`--baseline-relay`): the
    /// same protocol, read as above.
    InMemory,
    /// The bare forwarder.
    Forwarder,
    /// Two relays (`--relay-bin`) over a three-node NATS cluster
    /// (`--cluster`), clients alternating between them.
    Cluster,
}

impl Proto {
    /// The target's name in reports and file names.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Relay => "relay",
            Self::InMemory => "in-memory",
            Self::Forwarder => "forwarder",
            Self::Cluster => "cluster",
        }
    }
}

/// The bare forwarder's routing header: `[version, op, target: u32 BE]`.
pub(crate) mod fwd {
    /// Server to client on connect, like the relay's challenge.
    pub(crate) const HELLO: u8 = 1;
    /// Client to server: take `target` as this connection's id.
    pub(crate) const REGISTER: u8 = 2;
    /// Client to server: join group `target`.
    pub(crate) const JOIN: u8 = 3;
    /// Client to server: forward this frame to connection `target`.
    pub(crate) const DIRECT: u8 = 4;
    /// Client to server: forward this frame to every other member of group
    /// `target`.
    pub(crate) const GROUP: u8 = 5;
    /// Server to client: the last request was handled (like `Sent`).
    pub(crate) const ACK: u8 = 6;
    /// Header length: version, op and target.
    pub(crate) const HEADER: usize = 6;
}

/// A whole forwarder frame (prefix included) with just a header.
pub(crate) fn fwd_frame(op: u8, target: u32, extra: &[u8]) -> Vec<u8> {
    let payload = fwd::HEADER + extra.len();
    let mut out = Vec::with_capacity(PREFIX + payload);
    out.extend_from_slice(&u32::try_from(payload).unwrap_or(u32::MAX).to_be_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(op);
    out.extend_from_slice(&target.to_be_bytes());
    out.extend_from_slice(extra);
    out
}

/// The acknowledgement the forwarder sends for every request: a 3-byte
/// payload like the relay's `Sent { id: 1 }`.
pub(crate) fn fwd_ack() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 3, PROTOCOL_VERSION, fwd::ACK, 0])
}

/// A body of `len` bytes carrying `sender` and the sentinel timestamp
/// (the sequence number left 0, patched per frame).
fn body(sender: u32, len: usize) -> Vec<u8> {
    let mut body = vec![0u8; len.max(BODY_HEADER)];
    if let Some(head) = body.get_mut(..SEQ_AT) {
        let (ts, who) = head.split_at_mut(8);
        ts.copy_from_slice(&SENTINEL.to_le_bytes());
        who.copy_from_slice(&sender.to_le_bytes());
    }
    body
}

/// Key slots for `recipients`, `len` bytes each (what a sotto client
/// wraps the message key in for each other member: 80 bytes).
pub(crate) fn slots(recipients: &[UserName], len: usize) -> Vec<Slot> {
    recipients
        .iter()
        .map(|to| Slot {
            to: to.clone(),
            data: Bytes::from(vec![0x5c; len]),
        })
        .collect()
}

/// One encoded send frame, sent many times with a fresh timestamp (and,
/// to the relay, a fresh route id).
#[derive(Clone, Debug)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    /// Offset of the timestamp in `bytes`.
    ts_at: usize,
    /// Whether the route id at [`ID_AT`] is patched (relay frames).
    has_id: bool,
}

impl Template {
    /// A relay `Send` of a `body_len`-byte body from sender `sender` to
    /// `to`, with `slots`.
    pub(crate) fn relay(
        to: Destination,
        sender: u32,
        body_len: usize,
        slots: Vec<Slot>,
    ) -> Result<Self, BoxError> {
        let frame = ClientFrame::Send {
            route: Route { id: FIRST_ID, to },
            body: Bytes::from(body(sender, body_len)),
            slots,
        };
        Self::locate(encode_frame(&frame)?, true)
    }

    /// A forwarder frame `op` (DIRECT or GROUP) to `target`, carrying
    /// `extra` bytes after the body (room messages: one slot's worth, so
    /// that each member receives as many bytes as from the relay).
    pub(crate) fn forwarder(
        op: u8,
        target: u32,
        sender: u32,
        body_len: usize,
        extra: usize,
    ) -> Result<Self, BoxError> {
        let mut payload = body(sender, body_len);
        payload.resize(payload.len() + extra, 0x5c);
        Self::locate(fwd_frame(op, target, &payload), false)
    }

    fn locate(bytes: Vec<u8>, has_id: bool) -> Result<Self, BoxError> {
        let needle = SENTINEL.to_le_bytes();
        let mut hits = bytes.windows(8).enumerate().filter(|(_, w)| *w == needle);
        match (hits.next(), hits.next()) {
            (Some((ts_at, _)), None) => Ok(Self {
                bytes,
                ts_at,
                has_id,
            }),
            _ => Err("cannot locate the timestamp in the encoded frame".into()),
        }
    }

    /// Length of one frame on the wire, prefix included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends the frame stamped with `ts`, its body numbered `id` and (relay
    /// frames) route id `id`, at least [`FIRST_ID`].
    pub(crate) fn append(&self, out: &mut Vec<u8>, ts: u64, id: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(slot) = out.get_mut(start + self.ts_at..start + self.ts_at + 8) {
            slot.copy_from_slice(&ts.to_le_bytes());
        }
        let seq = start + self.ts_at + SEQ_AT;
        if let Some(slot) = out.get_mut(seq..seq + 8) {
            slot.copy_from_slice(&id.to_le_bytes());
        }
        if self.has_id
            && let Some(slot) = out.get_mut(start + ID_AT..start + ID_AT + ID_LEN)
        {
            // LEB128, 7 bits a byte, the high bit on all but the last.
            let mut value = id.max(FIRST_ID);
            for (i, byte) in slot.iter_mut().enumerate() {
                let low = (value & 0x7f) as u8;
                value >>= 7;
                *byte = if i + 1 < ID_LEN { low | 0x80 } else { low };
            }
        }
    }
}

/// Appends the wire form of `ClientFrame::Ack { delivery }`: the same
/// bytes as [`encode_frame`] of that frame.
#[allow(
    clippy::cast_possible_truncation,
    reason = "a version byte and two varints: at most 12 bytes"
)]
pub(crate) fn put_ack(out: &mut BytesMut, delivery: u64) {
    let ack = u64::from(index::client::ACK);
    out.put_u32((1 + varint_len(ack) + varint_len(delivery)) as u32);
    out.put_u8(PROTOCOL_VERSION);
    put_varint(out, ack);
    put_varint(out, delivery);
}

/// A frame read back, by what the load generator cares about.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A delivered message: the relay's delivery id (0: nothing to
    /// acknowledge) and the body.
    Deliver { delivery: u64, body: &'a [u8] },
    /// The target accepted our sends: the relay's `Sent { id }` (every
    /// send up to `id`), or `None` for one forwarder ack (one more send).
    Ack(Option<u64>),
    /// The relay refused a send, or some of its recipients (`Error`,
    /// `Undelivered`).
    Refused,
    /// Anything else (presence, joined, ...).
    Other,
}

/// The timestamp and sender index a body starts with.
pub(crate) fn body_header(body: &[u8]) -> Option<(u64, u32)> {
    let ts = u64::from_le_bytes(*body.first_chunk::<8>()?);
    let who = u32::from_le_bytes(*body.get(8..)?.first_chunk::<4>()?);
    Some((ts, who))
}

/// Classifies one payload (version byte first) of protocol `proto`.
pub(crate) fn parse(proto: Proto, payload: &[u8]) -> Incoming<'_> {
    let parsed = match proto {
        Proto::Relay | Proto::InMemory | Proto::Cluster => parse_relay(payload),
        Proto::Forwarder => parse_forwarder(payload),
    };
    parsed.unwrap_or(Incoming::Other)
}

fn parse_relay(payload: &[u8]) -> Option<Incoming<'_>> {
    Some(match peek_relay(payload)? {
        RelayView::Deliver(deliver) => Incoming::Deliver {
            delivery: deliver.delivery,
            body: deliver.body,
        },
        RelayView::Sent { id } => Incoming::Ack(Some(id)),
        RelayView::Other {
            index: index::relay::ERROR | index::relay::UNDELIVERED,
        } => Incoming::Refused,
        RelayView::Other { .. } => Incoming::Other,
    })
}

fn parse_forwarder(payload: &[u8]) -> Option<Incoming<'_>> {
    let (&version, rest) = payload.split_first()?;
    if version != PROTOCOL_VERSION {
        return None;
    }
    match *rest.first()? {
        fwd::DIRECT | fwd::GROUP => Some(Incoming::Deliver {
            delivery: 0,
            body: payload.get(fwd::HEADER..)?,
        }),
        fwd::ACK => Some(Incoming::Ack(None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use sotto_proto::codec::fast::split_frame;
    use sotto_proto::{ErrorCode, RelayFrame, RoomName, decode_payload};

    use super::*;

    fn user(name: &str) -> UserName {
        UserName::try_from(name).unwrap()
    }

    #[test]
    fn patched_template_is_what_encode_frame_makes() {
        let room = Destination::Room(RoomName::try_from("bench").unwrap());
        let members = [user("bench00001"), user("bench00002")];
        for (to, slots) in [
            (Destination::User(user("bench00001")), Vec::new()),
            (room, slots(&members, 80)),
        ] {
            let template = Template::relay(to.clone(), 7, 100, slots.clone()).unwrap();
            for id in [FIRST_ID, FIRST_ID + 1, FIRST_ID + 300, (1 << 63) - 1] {
                let mut out = Vec::new();
                template.append(&mut out, 0x0102_0304_0506_0708, id);
                let mut expected_body = body(7, 100);
                expected_body[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
                expected_body[SEQ_AT..BODY_HEADER].copy_from_slice(&id.to_le_bytes());
                let expected = ClientFrame::Send {
                    route: Route { id, to: to.clone() },
                    body: Bytes::from(expected_body),
                    slots: slots.clone(),
                };
                assert_eq!(out, encode_frame(&expected).unwrap());
                let (payload, rest) = split_frame(&out).unwrap().unwrap();
                assert!(rest.is_empty());
                assert_eq!(decode_payload::<ClientFrame>(payload).unwrap(), expected);
            }
        }
    }

    #[test]
    fn acks_are_what_encode_frame_makes() {
        for delivery in [1, 127, 128, 300, 1 << 40, u64::MAX] {
            let mut out = BytesMut::new();
            put_ack(&mut out, delivery);
            let expected = encode_frame(&ClientFrame::Ack { delivery }).unwrap();
            assert_eq!(&out[..], &expected[..]);
        }
    }

    #[test]
    fn deliveries_and_acks_are_read_from_relay_frames() {
        let mut body = body(3, 100);
        body[..8].copy_from_slice(&42u64.to_le_bytes());
        for (to, slot) in [
            (Destination::User(user("bench00002")), None),
            (
                Destination::Room(RoomName::try_from("bench").unwrap()),
                Some(Bytes::from(vec![5; 80])),
            ),
        ] {
            let frame = RelayFrame::Deliver {
                delivery: 300,
                from: user("bench00001"),
                to,
                body: Bytes::from(body.clone()),
                slot,
            };
            let wire = encode_frame(&frame).unwrap();
            let (payload, _) = split_frame(&wire).unwrap().unwrap();
            let Incoming::Deliver {
                delivery,
                body: got,
            } = parse(Proto::Relay, payload)
            else {
                panic!("not read as a delivery")
            };
            assert_eq!((delivery, got), (300, body.as_slice()));
            assert_eq!(body_header(got), Some((42, 3)));
        }
        let sent = encode_frame(&RelayFrame::Sent { id: FIRST_ID + 9 }).unwrap();
        let (payload, _) = split_frame(&sent).unwrap().unwrap();
        assert_eq!(
            parse(Proto::InMemory, payload),
            Incoming::Ack(Some(FIRST_ID + 9))
        );
        let refusals = [
            RelayFrame::Error {
                id: Some(FIRST_ID),
                code: ErrorCode::QueueFull,
                message: "full".into(),
            },
            RelayFrame::Undelivered {
                id: FIRST_ID,
                code: ErrorCode::QueueFull,
                users: vec![user("bench00002")],
            },
        ];
        for frame in refusals {
            let wire = encode_frame(&frame).unwrap();
            let (payload, _) = split_frame(&wire).unwrap().unwrap();
            assert_eq!(parse(Proto::Relay, payload), Incoming::Refused);
        }
        let pong = encode_frame(&RelayFrame::Pong { nonce: 9 }).unwrap();
        let (payload, _) = split_frame(&pong).unwrap().unwrap();
        assert_eq!(parse(Proto::Relay, payload), Incoming::Other);
    }

    #[test]
    fn forwarder_frames_carry_the_same_body() {
        let template = Template::forwarder(fwd::DIRECT, 9, 4, 100, 80).unwrap();
        let mut out = Vec::new();
        template.append(&mut out, 77, FIRST_ID);
        template.append(&mut out, 78, FIRST_ID + 1);
        let (first, rest) = split_frame(&out).unwrap().unwrap();
        let Incoming::Deliver { delivery: 0, body } = parse(Proto::Forwarder, first) else {
            panic!("not a delivery")
        };
        assert_eq!(body.len(), 180);
        assert_eq!(body_header(body), Some((77, 4)));
        assert_eq!(body[SEQ_AT..BODY_HEADER], FIRST_ID.to_le_bytes());
        let (second, rest) = split_frame(rest).unwrap().unwrap();
        assert!(rest.is_empty());
        assert!(matches!(
            parse(Proto::Forwarder, second),
            Incoming::Deliver { body: b, .. } if body_header(b) == Some((78, 4))
        ));
        let ack = fwd_ack();
        let (payload, _) = split_frame(&ack).unwrap().unwrap();
        assert_eq!(parse(Proto::Forwarder, payload), Incoming::Ack(None));
    }

    #[test]
    fn partial_and_bad_frames() {
        let wire = fwd_frame(fwd::HELLO, 0, &[1, 2, 3]);
        assert!(split_frame(&wire[..wire.len() - 1]).unwrap().is_none());
        assert!(split_frame(&wire[..3]).unwrap().is_none());
        assert!(split_frame(&[0, 0, 0, 0, 1]).is_err());
        assert!(split_frame(&[0xff, 0, 0, 0, 1]).is_err());
    }
}
