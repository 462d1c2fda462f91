//! A connection's delivery pump: the user's deliveries in id order (which
//! is the committer's order), waiting for room in the outbound queue
//! instead of treating a backlog as a slow reader.
//!
//! While its door is live ([`PumpDoor`]) the pump sends what the committer
//! hands it from memory, before it is stored (protocol.md 9.7), unless it
//! had nothing to send: the committer then queues the delivery on the
//! connection itself, and the pump counts it as sent; when the
//! door falls back (at the start of the connection, and after the pump
//! fell behind) it first reads the database for everything with an id
//! above the last it sent, until the door can be live again. So each
//! delivery goes out once on a connection, in order, and whatever the
//! client has not acknowledged when the connection ends is stored and
//! sent again on its next one.

use std::sync::Arc;

use sotto_proto::UserKey;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::blocking;
use crate::metrics::Metrics;
use crate::state::{Peer, PumpDoor, Shared, To, deliver};
use crate::store::{Queued, Store};
use crate::writer::Outbound;

/// Deliveries read from the database at a time.
const READ_BATCH: usize = 256;
/// How soon a read that failed is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Streams `user`'s deliveries, stored in `store`, to `peer` until `done`
/// is cancelled.
pub(super) async fn pump(
    shared: Arc<Shared>,
    store: Arc<Store>,
    user: UserKey,
    peer: Peer,
    door: Arc<PumpDoor>,
    done: CancellationToken,
) {
    // The id of the last delivery sent.
    let mut after = 0;
    // What is taken from the door (its buffer swapped with the door's).
    let mut live = std::collections::VecDeque::new();
    loop {
        // Frames left for after the deliveries are taken first, so that
        // what they wait for is read or taken after them.
        let opened = door.open();
        // What the committer queued on the connection itself, while this
        // pump had nothing to send, counts as sent.
        after = after.max(opened.direct);
        let then = opened.after;
        if opened.falls_back {
            // Every id up to here was committed (or refused) before the read.
            let resolved = store.resolved();
            let store = Arc::clone(&store);
            let reader = user.clone();
            let read = blocking(move || store.pending_after(&reader, after, READ_BATCH));
            let batch = tokio::select! {
                batch = read => batch,
                () = done.cancelled() => return,
            };
            let batch = match batch {
                Some(Ok(batch)) => batch,
                failed => {
                    // Still stored: read again in a moment (the store
                    // reopens after a storage failure); the frames left for
                    // after the deliveries wait for them.
                    match failed {
                        Some(Err(error)) => warn!(%error, "could not read stored deliveries"),
                        _ => warn!("could not read stored deliveries: the task failed"),
                    }
                    door.put_back(then);
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue,
                        () = done.cancelled() => return,
                    }
                }
            };
            if !batch.is_empty() {
                door.put_back(then);
                for (id, queued) in batch {
                    if let Some(frame) = stored_frame(id, &queued)
                        && !send(&shared, &peer, frame, &done).await
                    {
                        return;
                    }
                    after = id;
                }
                continue;
            }
            if !door.go_live(resolved) {
                // Everything before the frames is sent: what is missing
                // was stored after them.
                for frame in then {
                    peer.push(frame, &shared.metrics);
                }
                tokio::select! {
                    () = door.wake.notified() => {}
                    () = done.cancelled() => return,
                }
                continue;
            }
        }
        door.take_live(&mut live);
        let idle = live.is_empty() && then.is_empty();
        for live in live.drain(..) {
            // Sent from the database already (stored before it was taken).
            if live.id <= after {
                continue;
            }
            if let Some(frame) = live.frame()
                && !send(&shared, &peer, frame, &done).await
            {
                return;
            }
            after = live.id;
        }
        for frame in then {
            peer.push(frame, &shared.metrics);
        }
        if idle {
            tokio::select! {
                () = door.wake.notified() => {}
                () = done.cancelled() => return,
            }
        }
    }
}

/// Queues one delivery; `false` if the connection is gone or ending.
pub(super) async fn send(
    shared: &Shared,
    peer: &Peer,
    frame: Outbound,
    done: &CancellationToken,
) -> bool {
    let queued = tokio::select! {
        queued = push(peer, frame) => queued,
        () = done.cancelled() => return false,
    };
    if queued {
        Metrics::inc(&shared.metrics.deliveries);
    }
    queued
}

pub(super) fn stored_frame(id: u64, queued: &Queued) -> Option<Outbound> {
    let to = match &queued.to {
        sotto_proto::Destination::Room(room) => To::Room(room),
        sotto_proto::Destination::User(user) => To::User(user),
    };
    deliver(id, &queued.from, to, &queued.body, queued.slot.as_deref()).map(Outbound::Whole)
}

/// Queues `frame`, waiting until the outbound queue has room for it and
/// still half of its room (in bytes and in frames) for the connection's
/// other frames, which are never waited for (presence, `Sent`): a backlog
/// of deliveries must not make them look like a slow reader. `false` if
/// the connection is gone.
async fn push(peer: &Peer, frame: Outbound) -> bool {
    let len = frame.len();
    let limit = peer.backlog.limit();
    let headroom = (limit / 2).min(limit.saturating_sub(len));
    if !peer.backlog.take(len + headroom).await {
        return false;
    }
    peer.backlog.release(headroom);
    let frames = (peer.tx.max_capacity() / 2).max(1);
    match peer.tx.reserve_many(frames).await {
        Ok(mut permits) => match permits.next() {
            Some(permit) => {
                permit.send(frame);
                true
            }
            None => {
                peer.backlog.release(len);
                false
            }
        },
        Err(_) => {
            peer.backlog.release(len);
            false
        }
    }
}
