//! A connection's delivery pump: the user's stored deliveries, streamed
//! from the database in id order (which is commit order), waiting for
//! room in the outbound queue instead of treating a backlog as a slow
//! reader.
//!
//! The committer wakes the pump after each commit that stored something
//! for the user; the pump reads everything with an id above the last it
//! sent, so each delivery goes out once on a connection, in order, and
//! whatever the client has not acknowledged when the connection ends is
//! sent again on its next one.

use std::sync::Arc;

use sotto_proto::UserKey;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::blocking;
use crate::metrics::Metrics;
use crate::state::{Peer, PumpDoor, Shared, To, deliver};
use crate::store::Queued;
use crate::writer::Outbound;

/// Deliveries read from the database at a time.
const READ_BATCH: usize = 256;
/// How soon a read that failed is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Streams `user`'s deliveries to `peer` until `done` is cancelled.
pub(super) async fn pump(
    shared: Arc<Shared>,
    user: UserKey,
    peer: Peer,
    door: Arc<PumpDoor>,
    done: CancellationToken,
) {
    let mut after = 0;
    // Frames left for after the deliveries: taken before reading, so
    // that the read sees every commit that came before them.
    let mut then = door.take_after();
    loop {
        let store = Arc::clone(&shared.store);
        let reader = user.clone();
        let read = blocking(move || store.pending_after(&reader, after, READ_BATCH));
        let batch = tokio::select! {
            batch = read => batch,
            () = done.cancelled() => return,
        };
        let batch = match batch {
            Some(Ok(batch)) => batch,
            failed => {
                // Still stored: read again in a moment (the store reopens
                // after a storage failure); the frames left for after the
                // deliveries wait for them.
                match failed {
                    Some(Err(error)) => warn!(%error, "could not read stored deliveries"),
                    _ => warn!("could not read stored deliveries: the task failed"),
                }
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = done.cancelled() => return,
                }
            }
        };
        if batch.is_empty() {
            for frame in then.drain(..) {
                peer.push(frame, &shared.metrics);
            }
            tokio::select! {
                () = door.wake.notified() => {}
                () = done.cancelled() => return,
            }
            then = door.take_after();
            continue;
        }
        for (id, queued) in batch {
            let Some(frame) = frame(id, &queued) else {
                after = id;
                continue;
            };
            let queued = tokio::select! {
                queued = push(&peer, frame) => queued,
                () = done.cancelled() => return,
            };
            if !queued {
                return;
            }
            Metrics::inc(&shared.metrics.deliveries);
            after = id;
        }
    }
}

fn frame(id: u64, queued: &Queued) -> Option<Outbound> {
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
