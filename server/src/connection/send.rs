//! Routing what a client sends: to a room's members, to a connected
//! user, or into a user's offline queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sotto_proto::{Destination, ErrorCode, RelayFrame, Route, Slot, UserName};
use tracing::warn;

use super::{Connection, blocking, deliver_frame};
use crate::metrics::Metrics;
use crate::state::{Direct, PeerCache, Registered, To, deliver, encode, sent};
use crate::store::{Enqueue, Queued, now_secs};

/// Room the relay leaves for a Deliver frame's own fields when checking a
/// Send against the maximum frame length.
const DELIVER_OVERHEAD: usize = 256;

/// What a connection keeps between frames to route cheaply.
#[derive(Default)]
pub(super) struct Routing {
    /// Where its direct messages went last, within this batch.
    pub(super) peers: PeerCache,
    /// Sends routed and deliveries made since the last flush: the shared
    /// counters are updated once per batch of frames, not once per frame
    /// (every connection on every core writes them).
    routed: u64,
    delivered: u64,
}

impl Routing {
    /// Ends a batch: adds the counts to the shared counters and forgets
    /// the cached recipient.
    pub(super) fn flush(&mut self, metrics: &Metrics) {
        self.peers.forget();
        if self.routed > 0 {
            metrics
                .frames_routed
                .fetch_add(self.routed, Ordering::Relaxed);
            self.routed = 0;
        }
        if self.delivered > 0 {
            metrics
                .deliveries
                .fetch_add(self.delivered, Ordering::Relaxed);
            self.delivered = 0;
        }
    }
}

impl Connection {
    pub(super) async fn send(
        &self,
        from: &Registered,
        route: Route,
        body: Bytes,
        slots: Vec<Slot>,
        routing: &mut Routing,
    ) {
        let id = route.id;
        let largest_slot = slots.iter().map(|s| s.data.len()).max().unwrap_or(0);
        if slots.len() > self.shared.config.max_slots
            || body.len() + largest_slot + DELIVER_OVERHEAD > sotto_proto::MAX_FRAME_LEN
        {
            self.error(
                Some(id),
                ErrorCode::TooLarge,
                "too many slots or too large to deliver",
            );
            return;
        }
        routing.routed += 1;
        match route.to {
            Destination::Room(room) => match self.shared.route_room(from, &room, &body, &slots) {
                Ok(delivered) => {
                    routing.delivered += delivered as u64;
                    self.push(sent(id));
                }
                Err(code) => {
                    let message = match code {
                        ErrorCode::RateLimited => format!(
                            "too much sent to rooms in a short time: room messages may cost {} bytes a second (size times members), in bursts of {}; try again later",
                            self.shared.config.fanout_bytes_per_sec,
                            self.shared.config.fanout_burst_bytes
                        ),
                        ErrorCode::TooLarge => format!(
                            "too large for the members of {room}: size times members exceeds {} bytes",
                            self.shared.config.fanout_burst_bytes
                        ),
                        _ => format!("not a member of {room}"),
                    };
                    self.error(Some(id), code, message);
                }
            },
            Destination::User(to) => {
                let slot = slots
                    .into_iter()
                    .find(|s| s.to.same_as(&to))
                    .map(|s| s.data);
                self.send_direct(id, &from.name, to, body, slot, routing)
                    .await;
            }
        }
    }

    /// Queues an encoded frame for this client.
    pub(super) fn push(&self, bytes: Bytes) {
        self.peer.push(bytes, &self.shared.metrics);
    }

    pub(super) async fn send_direct(
        &self,
        id: u64,
        from: &UserName,
        to: UserName,
        body: Bytes,
        slot: Option<Bytes>,
        routing: &mut Routing,
    ) {
        if let Some(bytes) = deliver(0, from, To::User(&to), &body, slot.as_deref())
            && let Direct::Delivered = self.shared.route_direct(&mut routing.peers, &to, bytes)
        {
            routing.delivered += 1;
            self.push(sent(id));
            return;
        }
        // Not connected (or too slow to take it): queue it, if `to` exists.
        routing.peers.forget();
        Box::pin(self.store_offline(id, from, to, body, slot)).await;
    }

    pub(super) async fn store_offline(
        &self,
        id: u64,
        from: &UserName,
        to: UserName,
        body: Bytes,
        slot: Option<Bytes>,
    ) {
        let queued = Queued {
            queued_at: now_secs(),
            from: from.clone(),
            to: Destination::User(to.clone()),
            body,
            slot,
        };
        let store = Arc::clone(&self.shared.store);
        let recipient = to.clone();
        let message = queued.clone();
        let stored = blocking(
            move || -> Result<Option<Enqueue>, crate::store::StoreError> {
                if store.lookup(&recipient)?.is_none() {
                    return Ok(None);
                }
                store.enqueue(&recipient, &message).map(Some)
            },
        )
        .await;
        match stored {
            Some(Ok(Some(Enqueue::Stored(delivery)))) => {
                Metrics::inc(&self.shared.metrics.queued);
                self.reply(RelayFrame::Sent { id });
                // The recipient may have connected while this was stored,
                // after reading its queue: hand it over now (a duplicate
                // at worst, which clients drop).
                if let Some(peer) = self.shared.peer(&to)
                    && let Some(bytes) = encode(&deliver_frame(delivery, queued))
                {
                    peer.push(bytes, &self.shared.metrics);
                }
            }
            Some(Ok(Some(Enqueue::Full))) => {
                Metrics::inc(&self.shared.metrics.queue_full);
                self.error(
                    Some(id),
                    ErrorCode::QueueFull,
                    format!("{to}'s offline queue is full"),
                );
            }
            Some(Ok(None)) => self.error(Some(id), ErrorCode::NoSuchUser, format!("no user {to}")),
            Some(Err(error)) => {
                // Not stored, so not `Sent`: the sender is told.
                warn!(%error, "a delivery for an offline user was refused: the offline queue is unavailable");
                self.error(Some(id), ErrorCode::Internal, "offline queue unavailable");
            }
            None => {
                warn!("a delivery for an offline user was refused: the store task failed");
                self.error(Some(id), ErrorCode::Internal, "offline queue unavailable");
            }
        }
    }
}
