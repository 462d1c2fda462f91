//! Frames on their way to a connection: its outbound queue ([`Peer`]),
//! and the relay's frames encoded, `Deliver` and `Sent` by
//! `sotto_proto::codec::fast` into blocks shared by many frames.

use std::cell::RefCell;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sotto_proto::codec::fast;
use sotto_proto::{RelayFrame, UserName, encode_frame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::writer::{Backlog, Outbound};

/// The outbound side of one connection.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    /// Encoded frames for the connection's writer.
    pub(crate) tx: mpsc::Sender<Outbound>,
    /// Cancelled to disconnect the connection (slow reader, replaced).
    pub(crate) kill: CancellationToken,
    /// The bytes queued in `tx`, bounded.
    pub(crate) backlog: Arc<Backlog>,
}

impl Peer {
    /// Queues an encoded frame without waiting. A peer whose queue is full,
    /// in frames or in bytes, reads too slowly: it is disconnected (never
    /// allowed to stall the sender or to grow memory), and `false` is
    /// returned.
    pub(crate) fn push(&self, frame: impl Into<Outbound>, metrics: &Metrics) -> bool {
        let frame = frame.into();
        let len = frame.len();
        if !self.backlog.try_take(len) {
            self.too_slow(metrics);
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.backlog.release(len);
                self.too_slow(metrics);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.backlog.release(len);
                false
            }
        }
    }

    /// Queues a delivery without waiting, if the outbound queue has room
    /// for it and still half of its room (in bytes and in frames) for the
    /// connection's other frames, as a delivery pump would; otherwise
    /// gives it back (it then waits with the pump, never a reason to
    /// disconnect).
    pub(crate) fn try_push_delivery(&self, frame: Outbound) -> Result<(), Outbound> {
        let len = frame.len();
        let limit = self.backlog.limit();
        let headroom = (limit / 2).min(limit.saturating_sub(len));
        if !self.backlog.try_take(len + headroom) {
            return Err(frame);
        }
        self.backlog.release(headroom);
        let frames = (self.tx.max_capacity() / 2).max(1);
        match self.tx.try_reserve_many(frames) {
            Ok(mut permits) => match permits.next() {
                Some(permit) => {
                    permit.send(frame);
                    Ok(())
                }
                None => {
                    self.backlog.release(len);
                    Err(frame)
                }
            },
            Err(_) => {
                self.backlog.release(len);
                Err(frame)
            }
        }
    }

    /// Queues a large frame the client asked for (a blob chunk), waiting
    /// for room as long as the client keeps reading: a client that leaves
    /// it unread for `patience` is disconnected as a slow reader. `false`
    /// if it was not queued.
    pub(crate) async fn push_waiting(
        &self,
        frame: Bytes,
        patience: std::time::Duration,
        metrics: &Metrics,
    ) -> bool {
        let len = frame.len();
        let queued = tokio::time::timeout(patience, async {
            tokio::select! {
                () = self.kill.cancelled() => false,
                room = self.backlog.take(len) => {
                    if !room {
                        return false;
                    }
                    if self.tx.send(Outbound::from(frame)).await.is_err() {
                        self.backlog.release(len);
                        return false;
                    }
                    true
                }
            }
        })
        .await;
        match queued {
            Ok(queued) => queued,
            Err(_) => {
                self.too_slow(metrics);
                false
            }
        }
    }

    fn too_slow(&self, metrics: &Metrics) {
        if !self.kill.is_cancelled() {
            Metrics::inc(&metrics.slow_consumers);
            tracing::info!("disconnecting a client that reads too slowly");
        }
        self.kill.cancel();
    }
}

/// Encodes a relay frame. Frames the relay builds are bounded by what it
/// accepted (see `Connection::send`), so this cannot exceed the maximum;
/// if it ever did, the frame is dropped and logged rather than sent.
pub(crate) fn encode(frame: &RelayFrame) -> Option<Bytes> {
    match encode_frame(frame) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(error) => {
            tracing::error!(%error, "could not encode a relay frame");
            None
        }
    }
}

pub(crate) use sotto_proto::codec::fast::To;

/// The `Deliver` frame's parts, measured; `None`, logged, if the frame
/// would exceed the maximum frame length, as with `encode`.
fn measure<'a>(
    delivery: u64,
    from: &'a UserName,
    to: To<'a>,
    body: &'a [u8],
    slot: Option<&'a [u8]>,
) -> Option<fast::Deliver<'a>> {
    match fast::Deliver::new(delivery, from, to, body, slot) {
        Ok(frame) => Some(frame),
        Err(error) => {
            tracing::error!(%error, "could not encode a relay frame");
            None
        }
    }
}

/// The wire form of `RelayFrame::Deliver { delivery, from, to, body, slot }`,
/// written straight from its parts by `sotto_proto::codec::fast`: the same
/// bytes as `encode` of that frame (see the tests), without building the
/// frame (cloning names) or growing a buffer while serializing. `None`,
/// logged, if it would exceed the maximum frame length, as with `encode`.
pub(crate) fn deliver(
    delivery: u64,
    from: &UserName,
    to: To<'_>,
    body: &[u8],
    slot: Option<&[u8]>,
) -> Option<Bytes> {
    let frame = measure(delivery, from, to, body, slot)?;
    Some(carve(frame.frame_len(), |out| frame.put(out)))
}

/// The wire form of `RelayFrame::Sent { id }` (the same bytes as `encode`).
pub(crate) fn sent(id: u64) -> Bytes {
    carve(fast::sent_len(id), |out| fast::put_sent(out, id))
}

/// Size of the blocks relay-built frames are carved from.
const BLOCK: usize = 8 * 1024;

thread_local! {
    /// This thread's current block: what is left of it after the frames
    /// already carved out.
    static BLOCK_LEFT: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// A frame of `len` bytes written by `write`, carved from the thread's
/// current block instead of allocated on its own: routing builds one or
/// two frames per message, and a `malloc` plus a `free` on another thread
/// (the recipient's writer) for each cost more than the rest of the
/// frame's assembly. A frame keeps its block alive (reference-counted) until
/// it is written, so a block lives as long as its longest-queued frame: a
/// queued frame holds at most `BLOCK` bytes besides its own, and a reader
/// too slow to empty its queue is disconnected when the queue is full.
fn carve(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    BLOCK_LEFT.with(|left| {
        let mut left = left.borrow_mut();
        if left.capacity() < len {
            *left = BytesMut::with_capacity(BLOCK.max(len));
        }
        write(&mut left);
        debug_assert_eq!(left.len(), len, "a frame's length was miscounted");
        left.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use sotto_proto::{Destination, MAX_FRAME_LEN, RoomName};

    use super::*;

    fn user(name: &str) -> UserName {
        UserName::try_from(name).unwrap()
    }

    /// The hand-assembled frames are byte for byte what the codec makes,
    /// across every varint length boundary that matters.
    #[test]
    fn assembled_deliver_frames_equal_encode_frame() {
        let from = user("Alice.w");
        let bob = user("bob");
        let room = RoomName::try_from("lobby").unwrap();
        let long_name = user(&"n".repeat(32));
        for delivery in [0, 1, 127, 128, 300, u64::MAX] {
            for len in [0, 1, 127, 128, 16_383, 16_384, 70_000] {
                let body = Bytes::from(vec![0xb7; len]);
                for slot in [None, Some(Bytes::new()), Some(Bytes::from(vec![3; 384]))] {
                    for (to, borrowed) in [
                        (Destination::User(bob.clone()), To::User(&bob)),
                        (Destination::Room(room.clone()), To::Room(&room)),
                        (Destination::User(long_name.clone()), To::User(&long_name)),
                    ] {
                        let frame = RelayFrame::Deliver {
                            delivery,
                            from: from.clone(),
                            to,
                            body: body.clone(),
                            slot: slot.clone(),
                        };
                        let assembled =
                            deliver(delivery, &from, borrowed, &body, slot.as_deref()).unwrap();
                        assert_eq!(
                            assembled,
                            encode_frame(&frame).unwrap(),
                            "{delivery} {len} {slot:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn oversized_deliver_frames_are_refused_like_encode() {
        let body = vec![0; MAX_FRAME_LEN];
        let bob = user("bob");
        assert!(deliver(0, &bob, To::User(&bob), &body, None).is_none());
        let frame = RelayFrame::Deliver {
            delivery: 0,
            from: bob.clone(),
            to: Destination::User(bob.clone()),
            body: Bytes::from(body),
            slot: None,
        };
        assert!(encode(&frame).is_none());
    }

    #[test]
    fn assembled_sent_frames_equal_encode_frame() {
        // Thousands of frames: several blocks, each frame its own bytes.
        let ids: Vec<u64> = (0..5000).chain([1 << 35, u64::MAX]).collect();
        let frames: Vec<Bytes> = ids.iter().map(|&id| sent(id)).collect();
        for (id, frame) in ids.into_iter().zip(frames) {
            assert_eq!(
                frame,
                encode_frame(&RelayFrame::Sent { id }).unwrap(),
                "{id}"
            );
        }
    }
}
