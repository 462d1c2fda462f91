//! Storing the batches that are due and answering their jobs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sotto_proto::{Destination, ErrorCode, RelayFrame, UserKey, UserName};
use tracing::warn;

use super::Committed;
use super::staged::{Staged, StagedDelivery};
use crate::metrics::Metrics;
use crate::state::{Peer, Wakers, encode, sent};
use crate::store::{NewDelivery, Outcome, Store, Stored, Write};

/// Stores `batches` (without what their recipients acknowledged
/// meanwhile) and `writes` in one commit, then answers the batches' jobs,
/// in order.
pub(super) fn store(
    store: &Store,
    wakers: &Wakers,
    metrics: &Metrics,
    batches: Vec<Staged>,
    writes: Vec<Write>,
) -> Committed {
    if batches.is_empty() && writes.is_empty() {
        return Committed::Nothing;
    }
    let mut all = Vec::with_capacity(
        writes.len() + batches.iter().map(|b| b.deliveries.len()).sum::<usize>(),
    );
    // Delivery -> its write in `all` (`None`: every recipient has it), for
    // each batch.
    let mut plans = Vec::with_capacity(batches.len());
    let mut acked = 0;
    for batch in &batches {
        let mut plan = Vec::with_capacity(batch.deliveries.len());
        for staged in &batch.deliveries {
            let delivery = &staged.delivery;
            acked += staged.acked.len() as u64;
            if staged.acked.len() == delivery.recipients.len() {
                plan.push(None);
                continue;
            }
            let recipients = staged.unacknowledged().cloned().collect();
            plan.push(Some(all.len()));
            all.push(Write::Deliver(NewDelivery {
                queued_at: delivery.queued_at,
                from: delivery.from.clone(),
                to: delivery.to.clone(),
                body: delivery.body.clone(),
                recipients,
                body_id: delivery.body_id,
            }));
        }
        plans.push(plan);
    }
    metrics.acked_unstored.fetch_add(acked, Ordering::Relaxed);
    all.extend(writes);
    let durable = all.iter().any(|w| !matches!(w, Write::Ack { .. }));
    let result = if all.is_empty() {
        Ok(Vec::new())
    } else {
        store.apply(&all)
    };
    // Before any pump is woken to read what was stored.
    if let Some(last) = batches.last() {
        store.mark_resolved(last.last_id);
    }
    let (mut outcomes, committed) = match result {
        Ok(outcomes) if all.is_empty() => (outcomes, Committed::Nothing),
        Ok(outcomes) if durable => (outcomes, Committed::Durable),
        Ok(outcomes) => (outcomes, Committed::NotSynced),
        Err(error) => {
            // Nothing of it was stored: the senders of what was not
            // acknowledged already are told, and acknowledgements come
            // again (their deliveries are resent).
            warn!(%error, "a batch of writes failed; its messages were refused");
            (Vec::new(), Committed::Nothing)
        }
    };
    let mut woken: HashSet<UserKey> = HashSet::new();
    // Woken before the frames left with them, so that those come after.
    let mut done = Vec::new();
    for (batch, plan) in batches.into_iter().zip(plans) {
        let Staged {
            answers,
            deliveries,
            skipped,
            ..
        } = batch;
        woken.extend(skipped);
        let mut index = 0;
        for mut answer in answers {
            let peer = answer.peer.clone();
            let mut last_sent = None;
            for id in std::mem::take(&mut answer.routed) {
                let (Some(staged), Some(slot)) = (deliveries.get(index), plan.get(index)) else {
                    break;
                };
                index += 1;
                let stored = match slot {
                    None => Some(Stored::Stored {
                        delivered: Vec::new(),
                        refused: Vec::new(),
                    }),
                    Some(write) => match outcomes
                        .get_mut(*write)
                        .map(|outcome| std::mem::replace(outcome, Outcome::Done))
                    {
                        Some(Outcome::Deliver(stored)) => Some(stored),
                        _ => None,
                    },
                };
                if answered(&peer, metrics, id, staged, stored, &mut woken) {
                    last_sent = Some(id);
                }
            }
            if let Some(id) = last_sent {
                peer.push(sent(id), metrics);
            }
            answer.replied(metrics);
            done.push(answer);
        }
    }
    wakers.wake(&woken);
    for answer in done {
        answer.then(wakers, metrics);
    }
    committed
}

/// Answers send `id` of `staged` as `stored` says (`None`: not stored),
/// adding the recipients it was stored for to `woken`; `true` if it is
/// covered by the connection's `Sent`.
pub(super) fn answered(
    peer: &Peer,
    metrics: &Metrics,
    id: u64,
    staged: &StagedDelivery,
    stored: Option<Stored>,
    woken: &mut HashSet<UserKey>,
) -> bool {
    let delivery = &staged.delivery;
    let acked = staged.acked.len();
    let to = &delivery.to;
    match stored {
        Some(Stored::NoSuchUser) => {
            let message = match to {
                Destination::User(user) => format!("no user {user}"),
                Destination::Room(room) => format!("no user in {room}"),
            };
            refuse(peer, metrics, id, ErrorCode::NoSuchUser, message);
            false
        }
        Some(Stored::RoomFull) if acked == 0 => {
            Metrics::inc(&metrics.queue_full);
            let message = match to {
                Destination::Room(room) => format!("{room} holds too many undelivered messages"),
                Destination::User(user) => {
                    format!("{user} has as many stored messages as the relay keeps")
                }
            };
            refuse(peer, metrics, id, ErrorCode::QueueFull, message);
            false
        }
        Some(Stored::RoomFull) => {
            // It reached those who acknowledged it; it is kept for no one
            // else.
            let refused: Vec<_> = staged
                .unacknowledged()
                .map(|recipient| recipient.name.clone())
                .collect();
            metrics
                .queue_full
                .fetch_add(refused.len() as u64, Ordering::Relaxed);
            undelivered(peer, metrics, id, refused);
            true
        }
        Some(Stored::Stored { delivered, refused }) => {
            metrics
                .queued
                .fetch_add(delivered.len() as u64, Ordering::Relaxed);
            if !refused.is_empty() {
                metrics
                    .queue_full
                    .fetch_add(refused.len() as u64, Ordering::Relaxed);
            }
            if delivered.is_empty() && acked == 0 && !refused.is_empty() {
                let message = match to {
                    Destination::User(user) => {
                        format!("{user} has as many stored messages as the relay keeps")
                    }
                    Destination::Room(room) => {
                        format!("no member of {room} can store more messages")
                    }
                };
                refuse(peer, metrics, id, ErrorCode::QueueFull, message);
                return false;
            }
            if !refused.is_empty() {
                undelivered(peer, metrics, id, refused);
            }
            woken.extend(delivered.into_iter().map(|(user, _)| user));
            true
        }
        None => {
            refuse(
                peer,
                metrics,
                id,
                ErrorCode::Internal,
                "could not store the message".into(),
            );
            false
        }
    }
}

fn undelivered(peer: &Peer, metrics: &Metrics, id: u64, users: Vec<UserName>) {
    if let Some(bytes) = encode(&RelayFrame::Undelivered {
        id,
        code: ErrorCode::QueueFull,
        users,
    }) {
        peer.push(bytes, metrics);
    }
}

/// What one job is answered with, once its batch is stored.
pub(super) struct Answer {
    pub(super) user: UserKey,
    pub(super) conn: u64,
    pub(super) peer: Peer,
    /// The route ids of its sends, in order.
    pub(super) routed: Vec<u64>,
    pub(super) replies: Vec<bytes::Bytes>,
    pub(super) then: Vec<bytes::Bytes>,
    pub(super) unanswered: Arc<AtomicUsize>,
}

impl super::Sends {
    /// The job's answer (its sends' route ids, in order) and what its sends
    /// route, in the same order.
    pub(super) fn into_answer(self) -> (Answer, Vec<NewDelivery>) {
        let Self {
            user,
            conn,
            peer,
            sends,
            replies,
            then,
            unanswered,
        } = self;
        let (routed, deliveries) = sends.into_iter().unzip();
        let answer = Answer {
            user,
            conn,
            peer,
            routed,
            replies,
            then,
            unanswered,
        };
        (answer, deliveries)
    }
}

impl Answer {
    /// Pushes the replies that follow the answers to the sends, then
    /// counts the job answered (after: a reply the connection makes
    /// directly once nothing is unanswered comes after these).
    pub(super) fn replied(&mut self, metrics: &Metrics) {
        for frame in self.replies.drain(..) {
            self.peer.push(frame, metrics);
        }
        self.unanswered.fetch_sub(1, Ordering::Release);
    }

    /// Leaves the frames that follow the answers with the connection's
    /// delivery pump, or pushes them if it is gone.
    pub(super) fn then(self, wakers: &Wakers, metrics: &Metrics) {
        if self.then.is_empty() {
            return;
        }
        if let Some(frames) = wakers.after(&self.user, self.conn, self.then) {
            for frame in frames {
                self.peer.push(frame, metrics);
            }
        }
    }
}

fn refuse(peer: &Peer, metrics: &Metrics, id: u64, code: ErrorCode, message: String) {
    let frame = RelayFrame::Error {
        id: Some(id),
        code,
        message,
    };
    if let Some(bytes) = encode(&frame) {
        peer.push(bytes, metrics);
    }
}
