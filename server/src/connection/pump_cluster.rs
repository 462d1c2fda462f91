//! A connection's delivery pump in a cluster: the user's writes (each
//! holding some of its deliveries, `crate::cluster::inbox`) in order, so
//! that whatever JetStream acknowledged to any relay is seen. It reads
//! them from the stream's leader until nothing is left, then takes each as
//! the stream republishes it once stored (`sotto.live.<user>`, from
//! whichever relay stored it) as long as it follows the last one read;
//! after a gap (a republished write lost, the subscription behind) it
//! reads from the stream again, and so it does when the committer has
//! frames to send after the deliveries (a `Pong`) and after the relay's
//! reconnection to NATS. Each delivery goes out once on a connection, and
//! a resend stored in another write (its sender's relay died before
//! answering) is not handed over again while the connection remembers
//! the first ([`REMEMBERED`]); what the client has not acknowledged when
//! the connection ends comes again on its next one, on any relay.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sotto_proto::UserKey;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::pump::{send, stored_frame};
use crate::cluster::{COPIES, Cluster, InboxEntry};
use crate::state::{Peer, PumpDoor, Shared};

/// How soon a read that failed is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// How many of the deliveries last handed over a connection remembers, to
/// hand a resend stored again over once.
const REMEMBERED: usize = 256;

/// Streams `user`'s deliveries (its connection `conn`) to `peer` until
/// `done` is cancelled.
pub(super) async fn pump(
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
    user: UserKey,
    conn: u64,
    peer: Peer,
    door: Arc<PumpDoor>,
    done: CancellationToken,
) {
    // Subscribed before the first read: nothing stored after that read
    // can go unnoticed.
    let mut live = loop {
        match cluster.live(&user).await {
            Ok(live) => break live,
            Err(error) => {
                warn!(%error, "could not subscribe to a user's deliveries; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = done.cancelled() => return,
                }
            }
        }
    };
    let mut pump = Pump {
        shared: &shared,
        cluster: &cluster,
        user: &user,
        conn,
        peer: &peer,
        done: &done,
        handed: VecDeque::new(),
    };
    let mut reconnected = cluster.reconnected.clone();
    // The sequence of the last write read.
    let mut after = 0;
    'pump: loop {
        // Taken before the read: what they wait for is read first.
        let then = door.open().after;
        loop {
            let next = tokio::select! {
                next = cluster.next_delivery(&user, after) => next,
                () = done.cancelled() => return,
            };
            match next {
                Ok(Some((seq, entry))) => {
                    if !pump.hand_over(seq, entry).await {
                        return;
                    }
                    after = seq;
                }
                Ok(None) => break,
                Err(error) => {
                    warn!(%error, "could not read stored deliveries from the cluster");
                    door.put_back(then);
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => continue 'pump,
                        () = done.cancelled() => return,
                    }
                }
            }
        }
        for frame in then {
            peer.push(frame, &shared.metrics);
        }
        // Then each write as the stream republishes it, handed over as it
        // comes while it follows the last one read (the one stored before
        // it for this user, if still there, was read); after a gap, read
        // from the stream again.
        loop {
            tokio::select! {
                message = live.next() => match message.as_ref().and_then(Cluster::live_delivery) {
                    Some((seq, _, _)) if seq <= after => {}
                    Some((seq, last, entry)) if last <= after => {
                        if !pump.hand_over(seq, entry).await {
                            return;
                        }
                        after = seq;
                    }
                    Some(_) => continue 'pump,
                    None if message.is_some() => {
                        warn!("a write republished by the stream has no sequence; read again");
                        continue 'pump;
                    }
                    None => {
                        // The subscription ended (the client is closing):
                        // read again in a moment.
                        tokio::time::sleep(RETRY).await;
                        continue 'pump;
                    }
                },
                () = door.wake.notified() => continue 'pump,
                _ = reconnected.changed() => continue 'pump,
                () = done.cancelled() => return,
            }
        }
    }
}

/// What handing deliveries over needs.
struct Pump<'a> {
    shared: &'a Shared,
    cluster: &'a Cluster,
    user: &'a UserKey,
    conn: u64,
    peer: &'a Peer,
    done: &'a CancellationToken,
    /// The hashes of the last [`REMEMBERED`] deliveries handed over.
    handed: VecDeque<[u8; 16]>,
}

impl Pump<'_> {
    /// Sends the deliveries of write `seq` (`None`: it does not decode,
    /// and is skipped), each once this relay knows the memberships it
    /// names, but for those handed over already; `false` if the
    /// connection is gone.
    async fn hand_over(&mut self, seq: u64, entry: Option<InboxEntry>) -> bool {
        let Some(entry) = entry else {
            warn!(
                seq,
                "a write of stored deliveries in the cluster does not decode; skipped"
            );
            self.cluster.note_sent(self.user, self.conn, seq, &[]);
            return true;
        };
        let mut due = Vec::with_capacity(entry.copies.len());
        for (place, copy) in (0..COPIES).zip(entry.copies) {
            if self.handed.contains(&copy.hash) {
                continue;
            }
            if self.handed.len() == REMEMBERED {
                self.handed.pop_front();
            }
            self.handed.push_back(copy.hash);
            due.push((seq * COPIES + place, copy));
        }
        let ids: Vec<u64> = due.iter().map(|(id, _)| *id).collect();
        self.cluster.note_sent(self.user, self.conn, seq, &ids);
        for (id, copy) in due {
            let queued = copy.queued;
            tokio::select! {
                () = self.cluster.know_joins(self.shared, &queued.from, &copy.joined) => {}
                () = self.done.cancelled() => return false,
            }
            if let sotto_proto::Destination::Room(room) = &queued.to {
                self.cluster
                    .know_sender(self.shared, room, &queued.from)
                    .await;
            }
            let sent = match stored_frame(id, &queued) {
                Some(frame) => send(self.shared, self.peer, frame, self.done).await,
                None => true,
            };
            if !sent {
                return false;
            }
        }
        true
    }
}
