//! The committer of a relay in a cluster: the same jobs as the local
//! committer's (`super::run`), stored in JetStream instead of the
//! database (`crate::cluster`), and answered by the same rules
//! (protocol.md 9.6, 9.7): nothing is answered `Sent` before each of its
//! deliveries is acknowledged by JetStream, that is held by a majority of
//! the stream's replicas.
//!
//! Each turn takes every job waiting (up to [`super::MAX_JOBS`]), applies
//! its memberships in order, stores every delivery of its sends in the
//! stream (a recipient's copies of the turn in one write, writes to
//! different recipients together: `Cluster::store_in_order`) while it
//! deletes what its acknowledgements leave unwanted (one deletion per
//! user, all together), then answers the jobs in order. Nothing is handed
//! over before it is stored: each recipient's pump reads its deliveries
//! from the stream, wherever it is connected (the stream republishes each
//! write once stored).

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use futures::future::join_all;
use sotto_proto::{Destination, UserKey, UserName};
use tokio::sync::mpsc;
use tracing::warn;

use super::answer::{Answer, answered};
use super::staged::StagedDelivery;
use super::{Job, MAX_JOBS, Sends};
use crate::cluster::{Cluster, Publication, persistently};
use crate::metrics::Metrics;
use crate::state::{Wakers, sent};
use crate::store::{NewDelivery, Stored, Write};

/// Runs the committer until every `Committer` is dropped.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Job>,
    cluster: Arc<Cluster>,
    wakers: Wakers,
    metrics: Arc<Metrics>,
) {
    let mut jobs = Vec::new();
    while let Some(first) = rx.recv().await {
        jobs.push(first);
        while jobs.len() < MAX_JOBS {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        turn(&cluster, &wakers, &metrics, std::mem::take(&mut jobs)).await;
    }
}

/// What one delivery is waiting for.
enum Pending {
    /// Its direct recipient is a name nobody owns.
    NoSuchUser,
    /// The directory could not be asked.
    Failed,
    /// Its copies, one per recipient: these publications of the turn.
    Published(Range<usize>),
}

/// How many names of one turn are looked up in the directory at once.
const LOOKUPS: usize = 32;

/// Whether each name the turn's direct messages go to is owned, every
/// name asked of the directory once and the names asked together (at most
/// [`LOOKUPS`] at a time): while a bucket elects its leader, each lookup
/// waits up to `directory_request`'s patience, and a turn with many
/// recipients new to this relay waits that once, not once per recipient,
/// holding up every connection's sends. `None` for a name the directory
/// could not be asked about (logged once).
async fn owners(
    cluster: &Cluster,
    jobs: &[(Answer, Vec<NewDelivery>)],
) -> HashMap<UserKey, Option<bool>> {
    let mut names = HashMap::new();
    for (_, routed) in jobs {
        for delivery in routed {
            if let Destination::User(to) = &delivery.to {
                names.entry(to.key()).or_insert(to);
            }
        }
    }
    let names: Vec<(UserKey, &UserName)> = names.into_iter().collect();
    let mut owned = HashMap::with_capacity(names.len());
    for chunk in names.chunks(LOOKUPS) {
        let mut lookups = Vec::with_capacity(chunk.len());
        for (_, name) in chunk {
            lookups.push(cluster.exists(name));
        }
        let answers = join_all(lookups).await;
        for ((user, _), answer) in chunk.iter().zip(answers) {
            let answer = answer.inspect_err(|error| {
                warn!(%error, "a direct message was refused: the directory is unavailable");
            });
            owned.insert(user.clone(), answer.ok());
        }
    }
    owned
}

async fn turn(cluster: &Cluster, wakers: &Wakers, metrics: &Metrics, jobs: Vec<Job>) {
    let mut sends = Vec::new();
    let mut acks: HashMap<UserKey, Vec<u64>> = HashMap::new();
    for job in jobs {
        match job {
            Job::Sends(job) => sends.push(job),
            Job::Write(Write::Ack { user, ids }) => acks.entry(user).or_default().extend(ids),
            Job::Write(write) => apply(cluster, write).await,
        }
    }
    // Each user's acknowledgements of the turn in one deletion, all of
    // them while the turn's sends are stored: a deletion is a JetStream
    // request of its own, and one after the other they would hold up
    // every connection's sends a round trip each.
    let acknowledged = join_all(
        acks.iter()
            .map(|(user, ids)| cluster.acknowledge(user, ids)),
    );
    let ((), _) = futures::join!(store(cluster, wakers, metrics, sends), acknowledged);
}

/// Stores the turn's `sends` in the stream and answers them.
async fn store(cluster: &Cluster, wakers: &Wakers, metrics: &Metrics, sends: Vec<Sends>) {
    let jobs: Vec<_> = sends.into_iter().map(Sends::into_answer).collect();
    let owned = owners(cluster, &jobs).await;
    // Every copy of every delivery of the turn, in order...
    let mut outgoing = Vec::new();
    let mut waiting = Vec::with_capacity(jobs.len());
    for (answer, routed) in jobs {
        let mut deliveries = Vec::with_capacity(routed.len());
        for delivery in routed {
            let exists = match &delivery.to {
                Destination::User(to) => owned.get(&to.key()).copied().flatten(),
                Destination::Room(_) => Some(true),
            };
            let pending = match exists {
                Some(true) => {
                    let first = outgoing.len();
                    outgoing.extend(cluster.outgoing(&delivery));
                    Pending::Published(first..outgoing.len())
                }
                Some(false) => Pending::NoSuchUser,
                None => Pending::Failed,
            };
            let staged = StagedDelivery {
                delivery: Arc::new(delivery),
                acked: Vec::new(),
            };
            deliveries.push((staged, pending));
        }
        waiting.push((answer, deliveries));
    }
    // ...stored, each recipient's in order...
    let publications = cluster.store_in_order(&outgoing).await;
    // ...then the jobs' answers, in the same order.
    let mut woken: HashSet<UserKey> = HashSet::new();
    let mut done = Vec::with_capacity(waiting.len());
    for (mut answer, deliveries) in waiting {
        let peer = answer.peer.clone();
        let mut last_sent = None;
        let routed = std::mem::take(&mut answer.routed);
        for (id, (staged, pending)) in routed.into_iter().zip(deliveries) {
            let stored = match pending {
                Pending::NoSuchUser => Some(Stored::NoSuchUser),
                Pending::Failed => None,
                Pending::Published(range) => {
                    outcome(&staged, publications.get(range).unwrap_or_default())
                }
            };
            if answered(&peer, metrics, id, &staged, stored, &mut woken) {
                last_sent = Some(id);
            }
        }
        if let Some(id) = last_sent {
            peer.push(sent(id), metrics);
        }
        answer.replied(metrics);
        done.push(answer);
    }
    // The recipients' pumps, here or on other relays, take the deliveries
    // as the stream republishes them: `woken` is not needed.
    drop(woken);
    for answer in done {
        answer.then(wakers, metrics);
    }
}

/// What became of a delivery, from JetStream's answers for its
/// recipients: stored for those it was stored for, refused for those at
/// their bound; not stored at all (`None`) if any publication failed (its
/// sender then sends it again, and the copies stored already are
/// recognised as resends).
fn outcome(staged: &StagedDelivery, publications: &[Publication]) -> Option<Stored> {
    let recipients = &staged.delivery.recipients;
    if publications.len() != recipients.len() {
        return None;
    }
    let mut delivered = Vec::with_capacity(recipients.len());
    let mut refused = Vec::new();
    for (recipient, publication) in recipients.iter().zip(publications) {
        match publication {
            Publication::Stored(id) => delivered.push((recipient.name.key(), *id)),
            Publication::Full => refused.push(recipient.name.clone()),
            Publication::Failed => return None,
        }
    }
    Some(Stored::Stored { delivered, refused })
}

/// Applies a write nobody waits for.
async fn apply(cluster: &Cluster, write: Write) {
    let result = match write {
        Write::Join { room, name } => {
            match persistently("a member's identity", || cluster.lookup(&name)).await {
                Ok(Some(record)) => {
                    cluster
                        .join(&room, &record.name, record.identity, record.fingerprint)
                        .await
                }
                Ok(None) => Ok(()),
                Err(error) => Err(error),
            }
        }
        Write::Leave { room, user } => cluster.leave(&room, &user).await,
        Write::Seen { user, rooms, at } => {
            cluster.seen(&user, &rooms, at).await;
            Ok(())
        }
        // Acknowledgements are taken apart by `turn`, a user's together.
        Write::Ack { .. } | Write::Deliver(_) => Ok(()),
    };
    if let Err(error) = result {
        warn!(%error, "a change was not written to the cluster");
    }
}
