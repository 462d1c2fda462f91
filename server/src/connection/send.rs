//! Routing what a client sends: checked, its recipients found (a room's
//! other members, online or not, or one user), and handed to the
//! committer, which stores it and answers. What a connection reads in one
//! batch goes to the committer as one job.

use std::mem;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use sotto_proto::{Destination, ErrorCode, RelayFrame, Route, Slot};

use super::Connection;
use crate::commit::{Job, Sends};
use crate::state::{Registered, encode};
use crate::store::{NewDelivery, Recipient, Write, now_secs};

/// Room the relay leaves for a Deliver frame's own fields when checking a
/// Send against the maximum frame length.
const DELIVER_OVERHEAD: usize = 256;

/// What a connection gathers while it handles one read batch of frames,
/// for the committer and the shared counters.
#[derive(Default)]
pub(super) struct Routing {
    /// The route id of the last `Send`: they must increase.
    last_id: Option<u64>,
    /// Sends routed in this batch, in order.
    sends: Vec<(u64, NewDelivery)>,
    /// Deliveries acknowledged in this batch.
    acks: Vec<u64>,
    /// Answers to other requests in this batch, held back because a send
    /// before them is not answered yet.
    replies: Vec<Bytes>,
    /// Frames to send after the answers to this batch's sends and every
    /// earlier one, and after the deliveries stored before (`Pong`s).
    then: Vec<Bytes>,
    /// Sends routed since the last flush: the shared counter is updated
    /// once per batch of frames, not once per frame (every connection on
    /// every core writes it).
    routed: u64,
}

impl Connection {
    pub(super) fn send(
        &self,
        from: &Registered,
        route: Route,
        body: Bytes,
        slots: Vec<Slot>,
        routing: &mut Routing,
    ) {
        let id = route.id;
        if routing.last_id.is_some_and(|last| id <= last) {
            self.error(Some(id), ErrorCode::BadFrame, "send ids must increase");
            return;
        }
        routing.last_id = Some(id);
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
        let recipients = match &route.to {
            Destination::Room(room) => {
                match self.shared.room_recipients(from, room, &body, &slots) {
                    Ok(recipients) => recipients,
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
                        return;
                    }
                }
            }
            Destination::User(to) => {
                let slot = slots.into_iter().find(|s| s.to.same_as(to)).map(|s| s.data);
                vec![Recipient {
                    name: to.clone(),
                    slot,
                    id: 0,
                }]
            }
        };
        routing.sends.push((
            id,
            NewDelivery {
                queued_at: now_secs(),
                from: from.name.clone(),
                to: route.to,
                body,
                recipients,
                body_id: 0,
            },
        ));
    }

    /// Answers a request (not a `Send`) after the answers to every `Send`
    /// before it: at once if they are all answered.
    pub(super) fn answer(&self, frame: &RelayFrame, routing: &mut Routing) {
        let Some(bytes) = encode(frame) else { return };
        if routing.sends.is_empty()
            && routing.replies.is_empty()
            && self.unanswered.load(Ordering::Acquire) == 0
        {
            self.peer.push(bytes, &self.shared.metrics);
        } else {
            routing.replies.push(bytes);
        }
    }

    /// Answers a `Ping` after the answers to every `Send` before it.
    pub(super) fn pong(&self, nonce: u64, routing: &mut Routing) {
        if let Some(bytes) = encode(&RelayFrame::Pong { nonce }) {
            routing.then.push(bytes);
        }
    }

    /// Records an acknowledgement, for the batch's end.
    pub(super) fn acknowledge(&self, delivery: u64, routing: &mut Routing) {
        if delivery != 0 {
            routing.acks.push(delivery);
        }
    }

    /// Ends a read batch: hands what it routed and acknowledged to the
    /// committer, and adds the counts to the shared counters.
    pub(super) async fn flush(&self, routing: &mut Routing) {
        if routing.routed > 0 {
            self.shared
                .metrics
                .frames_routed
                .fetch_add(mem::take(&mut routing.routed), Ordering::Relaxed);
        }
        if !routing.sends.is_empty() || !routing.replies.is_empty() || !routing.then.is_empty() {
            let sends = mem::take(&mut routing.sends);
            let replies = mem::take(&mut routing.replies);
            let then = mem::take(&mut routing.then);
            let ids: Vec<u64> = sends.iter().map(|(id, _)| *id).collect();
            let Some(me) = &self.me else { return };
            let job = Job::Sends(Sends {
                user: me.key.clone(),
                conn: self.conn,
                peer: self.peer.clone(),
                sends,
                replies,
                then,
                unanswered: Arc::clone(&self.unanswered),
            });
            self.unanswered.fetch_add(1, Ordering::AcqRel);
            if !self.shared.commit.submit(job).await {
                self.unanswered.fetch_sub(1, Ordering::AcqRel);
                for id in ids {
                    self.error(Some(id), ErrorCode::Internal, "the relay is shutting down");
                }
            }
        }
        if !routing.acks.is_empty()
            && let Some(me) = &self.me
        {
            let write = Write::Ack {
                user: me.key.clone(),
                ids: mem::take(&mut routing.acks),
            };
            // Lost only if the relay is stopping: the deliveries come again.
            let _ = self.shared.commit.submit(Job::Write(write)).await;
        }
    }

    /// Hands a write nobody waits for to the committer (lost only when
    /// the relay is stopping).
    pub(super) async fn record(&self, write: Write) {
        let _ = self.shared.commit.submit(Job::Write(write)).await;
    }
}
