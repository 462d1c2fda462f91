//! The committer: one thread that runs every write to the database in
//! batches (group commit).
//!
//! Connections hand it what they route ([`Job::Sends`]: one job per read
//! batch of a connection) and what they learn ([`Job::Write`]:
//! acknowledgements, joins, leaves, last-seen times). It takes everything
//! waiting, up to [`MAX_JOBS`] jobs or [`MAX_BYTES`] of bodies, runs it in
//! one transaction with one commit (made durable, with an fsync, when it
//! stores anything), and then answers: an `Error` or `Undelivered` for the
//! sends that need one, one cumulative `Sent` per sending connection, and
//! a wake-up for the delivery pump of every connected recipient. Nothing
//! is answered `Sent` before its commit returned.
//!
//! One fsync for a batch instead of one per message is what makes storing
//! every delivery affordable (docs/benchmarks.md); answering per batch
//! instead of per message saves the clients as much.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sotto_proto::{Destination, ErrorCode, RelayFrame, UserKey};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::warn;

use crate::metrics::Metrics;
use crate::state::{Peer, Wakers, encode, sent};
use crate::store::{NewDelivery, Outcome, Store, Stored, Write};

/// Most jobs in one batch.
const MAX_JOBS: usize = 1024;
/// Most bytes of bodies in one batch (a batch is one transaction, held in
/// memory until it commits).
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Jobs waiting for the committer; a connection whose job does not fit
/// waits (its client's sends then wait in TCP).
const QUEUE: usize = 4096;
/// Acknowledgements committed without an fsync are made durable this soon
/// if nothing else is written meanwhile.
const SYNC_AFTER: Duration = Duration::from_secs(1);

/// One connection's sends, routed, in the order it sent them.
pub(crate) struct Sends {
    /// The sender and its connection.
    pub(crate) user: UserKey,
    pub(crate) conn: u64,
    /// Where the answers go.
    pub(crate) peer: Peer,
    /// Each send's route id and what to store.
    pub(crate) sends: Vec<(u64, NewDelivery)>,
    /// Answers to the connection's other requests, which go right after
    /// the answers to the sends before them.
    pub(crate) replies: Vec<bytes::Bytes>,
    /// Frames that go after the answers and after every delivery stored
    /// for the sender so far (a `Pong`: it answers after all that came
    /// before its `Ping`).
    pub(crate) then: Vec<bytes::Bytes>,
    /// The connection's jobs not answered yet, this one included: counted
    /// down once this one is.
    pub(crate) unanswered: Arc<AtomicUsize>,
}

/// Work for the committer.
pub(crate) enum Job {
    /// Store these deliveries and answer their sender.
    Sends(Sends),
    /// A write nobody waits for (an acknowledgement, a membership).
    Write(Write),
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Self::Sends(sends) => sends.sends.iter().map(|(_, d)| d.body.len()).sum(),
            Self::Write(_) => 0,
        }
    }
}

/// The connections' handle on the committer.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Job>,
}

impl Committer {
    /// A committer and the receiving end its thread runs on.
    pub(crate) fn new() -> (Self, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, rx)
    }

    /// Queues `job`, waiting for room; `false` if the committer is gone
    /// (the relay is stopping).
    pub(crate) async fn submit(&self, job: Job) -> bool {
        self.tx.send(job).await.is_ok()
    }
}

/// Runs the committer until every [`Committer`] is dropped, then makes
/// what it wrote durable. Blocks: run it on a thread of its own.
pub(crate) fn run(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<Store>,
    wakers: Wakers,
    metrics: Arc<Metrics>,
    runtime: Handle,
) {
    let mut jobs = Vec::new();
    let mut unsynced = false;
    loop {
        let first = if unsynced {
            match runtime.block_on(tokio::time::timeout(SYNC_AFTER, rx.recv())) {
                Ok(next) => next,
                Err(_) => {
                    sync(&store, &mut unsynced);
                    continue;
                }
            }
        } else {
            rx.blocking_recv()
        };
        let Some(first) = first else { break };
        let mut bytes = first.bytes();
        jobs.push(first);
        while jobs.len() < MAX_JOBS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.bytes();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        unsynced = commit(&store, &wakers, &metrics, &mut jobs);
    }
    sync(&store, &mut unsynced);
}

/// Makes what was committed without an fsync durable.
fn sync(store: &Store, unsynced: &mut bool) {
    if *unsynced {
        if let Err(error) = store.sync() {
            warn!(%error, "could not make acknowledgements durable; they may come again");
        }
        *unsynced = false;
    }
}

/// Runs one batch and answers it; `true` if the commit was not made
/// durable (acknowledgements only).
fn commit(store: &Store, wakers: &Wakers, metrics: &Metrics, jobs: &mut Vec<Job>) -> bool {
    let mut writes = Vec::with_capacity(jobs.len());
    let mut answers: Vec<Answer> = Vec::new();
    for job in jobs.drain(..) {
        match job {
            Job::Sends(Sends {
                user,
                conn,
                peer,
                sends,
                replies,
                then,
                unanswered,
            }) => {
                let mut routed = Vec::with_capacity(sends.len());
                for (id, delivery) in sends {
                    routed.push((id, delivery.to.clone()));
                    writes.push(Write::Deliver(delivery));
                }
                answers.push(Answer {
                    user,
                    conn,
                    peer,
                    routed,
                    replies,
                    then,
                    unanswered,
                });
            }
            Job::Write(write) => writes.push(write),
        }
    }
    if writes.is_empty() {
        for mut answer in answers {
            answer.replied(metrics);
            answer.then(wakers, metrics);
        }
        return false;
    }
    let durable = writes.iter().any(|w| !matches!(w, Write::Ack { .. }));
    let outcomes = store.apply(&writes);
    let mut outcomes = match outcomes {
        Ok(outcomes) => outcomes.into_iter().filter_map(|outcome| match outcome {
            Outcome::Deliver(stored) => Some(stored),
            Outcome::Acked(_) | Outcome::Done => None,
        }),
        Err(error) => {
            // Nothing of the batch happened: every sender is told, and
            // acknowledgements come again (their deliveries are resent).
            warn!(%error, "a batch of writes failed; its messages were refused");
            for mut answer in answers {
                for (id, _) in &answer.routed {
                    refuse(
                        &answer.peer,
                        metrics,
                        *id,
                        ErrorCode::Internal,
                        "could not store the message".into(),
                    );
                }
                answer.replied(metrics);
                answer.then(wakers, metrics);
            }
            return false;
        }
    };
    let mut woken: HashSet<UserKey> = HashSet::new();
    // Woken before the frames left with them, so that those come after.
    let mut done = Vec::with_capacity(answers.len());
    for mut answer in answers {
        let peer = answer.peer.clone();
        let routed = std::mem::take(&mut answer.routed);
        let mut last_sent = None;
        for (id, to) in routed {
            let Some(outcome) = outcomes.next() else {
                break;
            };
            match (outcome, &to) {
                (Stored::NoSuchUser, Destination::User(user)) => {
                    refuse(
                        &peer,
                        metrics,
                        id,
                        ErrorCode::NoSuchUser,
                        format!("no user {user}"),
                    );
                }
                (Stored::RoomFull, Destination::Room(room)) => {
                    Metrics::inc(&metrics.queue_full);
                    let message = format!("{room} holds too many undelivered messages");
                    refuse(&peer, metrics, id, ErrorCode::QueueFull, message);
                }
                (Stored::Stored { delivered, refused }, to) => {
                    metrics
                        .queued
                        .fetch_add(delivered.len() as u64, Ordering::Relaxed);
                    if !refused.is_empty() {
                        metrics
                            .queue_full
                            .fetch_add(refused.len() as u64, Ordering::Relaxed);
                    }
                    if delivered.is_empty() && !refused.is_empty() {
                        let message = match to {
                            Destination::User(user) => {
                                format!("{user} has as many stored messages as the relay keeps")
                            }
                            Destination::Room(room) => {
                                format!("no member of {room} can store more messages")
                            }
                        };
                        refuse(&peer, metrics, id, ErrorCode::QueueFull, message);
                        continue;
                    }
                    if !refused.is_empty()
                        && let Some(bytes) = encode(&RelayFrame::Undelivered {
                            id,
                            code: ErrorCode::QueueFull,
                            users: refused,
                        })
                    {
                        peer.push(bytes, metrics);
                    }
                    woken.extend(delivered.into_iter().map(|(user, _)| user));
                    last_sent = Some(id);
                }
                // An outcome that does not fit its destination cannot
                // happen; refused rather than claimed stored.
                (_, _) => refuse(
                    &peer,
                    metrics,
                    id,
                    ErrorCode::Internal,
                    "could not store the message".into(),
                ),
            }
        }
        if let Some(id) = last_sent {
            peer.push(sent(id), metrics);
        }
        answer.replied(metrics);
        done.push(answer);
    }
    wakers.wake(&woken);
    for answer in done {
        answer.then(wakers, metrics);
    }
    !durable
}

/// What one [`Sends`] job is answered with, once its batch is committed.
struct Answer {
    user: UserKey,
    conn: u64,
    peer: Peer,
    routed: Vec<(u64, Destination)>,
    replies: Vec<bytes::Bytes>,
    then: Vec<bytes::Bytes>,
    unanswered: Arc<AtomicUsize>,
}

impl Answer {
    /// Pushes the replies that follow the answers to the sends, then
    /// counts the job answered (after: a reply the connection makes
    /// directly once nothing is unanswered comes after these).
    fn replied(&mut self, metrics: &Metrics) {
        for frame in self.replies.drain(..) {
            self.peer.push(frame, metrics);
        }
        self.unanswered.fetch_sub(1, Ordering::Release);
    }

    /// Leaves the frames that follow the answers with the connection's
    /// delivery pump, or pushes them if it is gone.
    fn then(self, wakers: &Wakers, metrics: &Metrics) {
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
