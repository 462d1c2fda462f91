//! What the load generator puts on the wire and how it reads it back.
//!
//! Both targets use sotto's framing: a big-endian `u32` length, then that
//! many bytes of payload starting with the protocol version byte.
//!
//! - The relay gets real [`ClientFrame::Send`]s, encoded once by
//!   [`encode_frame`] into a [`Template`] whose timestamp is then patched in
//!   place for every frame sent (no re-encoding per frame), and answers with
//!   [`RelayFrame::Deliver`] and [`RelayFrame::Sent`], which [`parse`] reads
//!   without allocating with `sotto_proto::codec::fast` (which is tested
//!   against the codec; so are the uses here).
//! - The bare forwarder gets a minimal routing header of our own after the
//!   version byte: an op byte and a `u32` target ([`fwd`]), then the same
//!   body, and forwards the frame's bytes unchanged.
//!
//! Every body starts with the send timestamp (nanoseconds on the bench's
//! clock, little-endian `u64`) and the sender's index (`u32`), then zeroes.

use bytes::Bytes;
use sotto_proto::codec::PREFIX_LEN as PREFIX;
use sotto_proto::codec::fast::{RelayView, peek_relay};
use sotto_proto::{ClientFrame, Destination, PROTOCOL_VERSION, Route, encode_frame};

use crate::BoxError;

/// Bytes of the body taken by the timestamp and the sender's index.
pub(crate) const BODY_HEADER: usize = 12;
/// Written where the timestamp goes, to find it in the encoded template.
const SENTINEL: u64 = 0xA55A_C33C_0FF0_9669;

/// Which protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// The sotto relay.
    Relay,
    /// The bare forwarder.
    Forwarder,
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

/// A body of `len` bytes carrying `sender` and the sentinel timestamp.
fn body(sender: u32, len: usize) -> Vec<u8> {
    let mut body = vec![0u8; len.max(BODY_HEADER)];
    if let Some(head) = body.get_mut(..BODY_HEADER) {
        let (ts, who) = head.split_at_mut(8);
        ts.copy_from_slice(&SENTINEL.to_le_bytes());
        who.copy_from_slice(&sender.to_le_bytes());
    }
    body
}

/// One encoded send frame, sent many times with a fresh timestamp.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    /// Offset of the timestamp in `bytes`.
    ts_at: usize,
}

impl Template {
    /// A relay `Send` of a `body_len`-byte body from sender `sender` to `to`.
    pub(crate) fn relay(to: Destination, sender: u32, body_len: usize) -> Result<Self, BoxError> {
        let frame = ClientFrame::Send {
            route: Route { id: 1, to },
            body: Bytes::from(body(sender, body_len)),
            slots: Vec::new(),
        };
        Self::locate(encode_frame(&frame)?)
    }

    /// A forwarder frame `op` (DIRECT or GROUP) to `target`.
    pub(crate) fn forwarder(
        op: u8,
        target: u32,
        sender: u32,
        body_len: usize,
    ) -> Result<Self, BoxError> {
        Self::locate(fwd_frame(op, target, &body(sender, body_len)))
    }

    fn locate(bytes: Vec<u8>) -> Result<Self, BoxError> {
        let needle = SENTINEL.to_le_bytes();
        let mut hits = bytes.windows(8).enumerate().filter(|(_, w)| *w == needle);
        match (hits.next(), hits.next()) {
            (Some((ts_at, _)), None) => Ok(Self { bytes, ts_at }),
            _ => Err("cannot locate the timestamp in the encoded frame".into()),
        }
    }

    /// Length of one frame on the wire, prefix included.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends the frame stamped with `ts`.
    pub(crate) fn append(&self, out: &mut Vec<u8>, ts: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(slot) = out.get_mut(start + self.ts_at..start + self.ts_at + 8) {
            slot.copy_from_slice(&ts.to_le_bytes());
        }
    }
}

/// A frame read back, by what the load generator cares about.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A delivered message, with its body.
    Deliver(&'a [u8]),
    /// The target accepted one of our sends (`Sent`, or the forwarder's ack).
    Ack,
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
        Proto::Relay => parse_relay(payload),
        Proto::Forwarder => parse_forwarder(payload),
    };
    parsed.unwrap_or(Incoming::Other)
}

fn parse_relay(payload: &[u8]) -> Option<Incoming<'_>> {
    Some(match peek_relay(payload)? {
        RelayView::Deliver(deliver) => Incoming::Deliver(deliver.body),
        RelayView::Sent { .. } => Incoming::Ack,
        RelayView::Other { .. } => Incoming::Other,
    })
}

fn parse_forwarder(payload: &[u8]) -> Option<Incoming<'_>> {
    let (&version, rest) = payload.split_first()?;
    if version != PROTOCOL_VERSION {
        return None;
    }
    match *rest.first()? {
        fwd::DIRECT | fwd::GROUP => Some(Incoming::Deliver(payload.get(fwd::HEADER..)?)),
        fwd::ACK => Some(Incoming::Ack),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use sotto_proto::codec::fast::split_frame;
    use sotto_proto::{RelayFrame, RoomName, UserName, decode_payload};

    use super::*;

    fn user(name: &str) -> UserName {
        UserName::try_from(name).unwrap()
    }

    #[test]
    fn patched_template_is_what_encode_frame_makes() {
        let to = Destination::User(user("bench00001"));
        let template = Template::relay(to.clone(), 7, 100).unwrap();
        let mut out = Vec::new();
        template.append(&mut out, 0x0102_0304_0506_0708);
        let mut expected_body = body(7, 100);
        expected_body[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let expected = ClientFrame::Send {
            route: Route { id: 1, to },
            body: Bytes::from(expected_body),
            slots: Vec::new(),
        };
        assert_eq!(out, encode_frame(&expected).unwrap());
        let (payload, rest) = split_frame(&out).unwrap().unwrap();
        assert!(rest.is_empty());
        assert_eq!(decode_payload::<ClientFrame>(payload).unwrap(), expected);
    }

    #[test]
    fn deliveries_and_acks_are_read_from_relay_frames() {
        let mut body = body(3, 100);
        body[..8].copy_from_slice(&42u64.to_le_bytes());
        for (to, slot) in [
            (Destination::User(user("bench00002")), None),
            (
                Destination::Room(RoomName::try_from("bench").unwrap()),
                Some(Bytes::from(vec![5; 300])),
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
            let Incoming::Deliver(got) = parse(Proto::Relay, payload) else {
                panic!("not read as a delivery")
            };
            assert_eq!(got, body.as_slice());
            assert_eq!(body_header(got), Some((42, 3)));
        }
        let sent = encode_frame(&RelayFrame::Sent { id: 1 }).unwrap();
        let (payload, _) = split_frame(&sent).unwrap().unwrap();
        assert_eq!(parse(Proto::Relay, payload), Incoming::Ack);
        let pong = encode_frame(&RelayFrame::Pong { nonce: 9 }).unwrap();
        let (payload, _) = split_frame(&pong).unwrap().unwrap();
        assert_eq!(parse(Proto::Relay, payload), Incoming::Other);
    }

    #[test]
    fn forwarder_frames_carry_the_same_body() {
        let template = Template::forwarder(fwd::DIRECT, 9, 4, 100).unwrap();
        let mut out = Vec::new();
        template.append(&mut out, 77);
        template.append(&mut out, 78);
        let (first, rest) = split_frame(&out).unwrap().unwrap();
        let Incoming::Deliver(body) = parse(Proto::Forwarder, first) else {
            panic!("not a delivery")
        };
        assert_eq!(body.len(), 100);
        assert_eq!(body_header(body), Some((77, 4)));
        let (second, rest) = split_frame(rest).unwrap().unwrap();
        assert!(rest.is_empty());
        assert!(
            matches!(parse(Proto::Forwarder, second), Incoming::Deliver(b) if body_header(b) == Some((78, 4)))
        );
        let ack = fwd_ack();
        let (payload, _) = split_frame(&ack).unwrap().unwrap();
        assert_eq!(parse(Proto::Forwarder, payload), Incoming::Ack);
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
