//! The committer: one thread that runs every write to the database in
//! batches (group commit), and hands each delivery to its connected
//! recipients before it writes it.
//!
//! Connections hand it what they route ([`Job::Sends`]: one job per read
//! batch of a connection) and what they learn ([`Job::Write`]:
//! acknowledgements, joins, leaves, last-seen times). Each turn it takes
//! everything waiting, up to [`MAX_JOBS`] jobs or [`MAX_BYTES`] of bodies,
//! and
//!
//! 1. **hands over** the turn's sends as a new batch ([`staged`]): ids for
//!    their deliveries, and each delivery for a connected recipient to that
//!    recipient's delivery pump (`state::PumpDoor`), from memory; the
//!    turn's acknowledgements of deliveries handed over earlier cancel
//!    their writes;
//! 2. **stores** the batches that are due ([`answer`]): those whose every
//!    handed delivery was acknowledged, and those held long enough
//!    (`Config::delivery_hold_ms`). One transaction and one commit (made
//!    durable, with an fsync, when it stores anything) takes every
//!    delivery of them except
//!    those their recipient acknowledged meanwhile, which are then
//!    durably in the recipient's own store and need no copy here. Then it
//!    answers: an `Error` or `Undelivered` for the sends that need one,
//!    one cumulative `Sent` per sending connection, and a wake-up for the
//!    pumps that read what was stored.
//!
//! Nothing is answered `Sent` before each of its deliveries is committed
//! or acknowledged by its recipient (protocol.md 9.7). On a live exchange
//! most deliveries are acknowledged while their batch is held and never
//! touch the database: that is what makes storing every delivery cheap
//! (docs/benchmarks.md, "Durable delivery"); one fsync per batch, and one
//! `Sent` per batch instead of one per message, do the rest.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use sotto_proto::UserKey;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::warn;

use crate::metrics::Metrics;
use crate::state::{Peer, Wakers};
use crate::store::{NewDelivery, Store, Write};

mod answer;
pub(crate) mod cluster;
mod staged;

use staged::Pipeline;

/// Most jobs in one turn.
const MAX_JOBS: usize = 1024;
/// Most bytes of bodies in one turn.
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

/// Runs the committer until every [`Committer`] is dropped, then stores
/// what it handed over and makes what it wrote durable. Blocks: run it on
/// a thread of its own.
pub(crate) fn run(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<Store>,
    wakers: Wakers,
    metrics: Arc<Metrics>,
    runtime: Handle,
    hold: Duration,
) {
    let mut jobs = Vec::new();
    let mut pipeline = Pipeline::new(hold, Arc::clone(&metrics));
    let mut unsynced = false;
    loop {
        let first = match rx.try_recv() {
            Ok(job) => Some(job),
            Err(TryRecvError::Disconnected) => None,
            Err(TryRecvError::Empty) => {
                let wait = match pipeline.due_at() {
                    Some(at) => Some(at.saturating_duration_since(Instant::now())),
                    None => unsynced.then_some(SYNC_AFTER),
                };
                match wait {
                    None => rx.blocking_recv(),
                    Some(wait) => match runtime.block_on(tokio::time::timeout(wait, rx.recv())) {
                        Ok(next) => next,
                        Err(_) => {
                            // Nothing came: store what is due, or make the
                            // acknowledgements durable.
                            if pipeline.is_empty() {
                                sync(&store, &mut unsynced);
                            } else {
                                let (batches, writes) = pipeline.due(Instant::now(), true);
                                answer::store(&store, &wakers, &metrics, batches, writes)
                                    .update(&mut unsynced);
                            }
                            continue;
                        }
                    },
                }
            }
        };
        let Some(first) = first else { break };
        let mut bytes = first.bytes();
        jobs.push(first);
        // Whether every job waiting was taken: only then is a batch stored
        // for its age (an acknowledgement that cancels one of its writes
        // may be among those waiting).
        let mut drained = false;
        while jobs.len() < MAX_JOBS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    bytes += job.bytes();
                    jobs.push(job);
                }
                Err(_) => {
                    drained = true;
                    break;
                }
            }
        }
        pipeline.take(&mut jobs, &store, &wakers);
        let (batches, writes) = pipeline.due(Instant::now(), drained);
        answer::store(&store, &wakers, &metrics, batches, writes).update(&mut unsynced);
    }
    let (batches, writes) = pipeline.all();
    answer::store(&store, &wakers, &metrics, batches, writes).update(&mut unsynced);
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

/// What a commit left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Committed {
    /// Nothing was committed.
    Nothing,
    /// A commit with an fsync: everything before it is durable too.
    Durable,
    /// A commit without one (acknowledgements only).
    NotSynced,
}

impl Committed {
    fn update(self, unsynced: &mut bool) {
        match self {
            Self::Nothing => {}
            Self::Durable => *unsynced = false,
            Self::NotSynced => *unsynced = true,
        }
    }
}
