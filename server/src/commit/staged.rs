//! Batches handed over and not stored yet: their deliveries went to the
//! pumps of their connected recipients from memory, and each waits here
//! until it is due (held long enough, or every delivery handed over
//! acknowledged).
//! An acknowledgement that comes meanwhile cancels the delivery's write.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_proto::UserKey;

use super::answer::Answer;
use super::{Job, Sends};
use crate::metrics::Metrics;
use crate::state::{Live, Offered, Peer, PumpDoor, Wakers};
use crate::store::{NewDelivery, Recipient, Store, Write};

/// A batch held this many times the hold is stored even while jobs are
/// waiting.
const OVERDUE: u32 = 4;
/// Most batches held at once; past it the oldest are stored.
const MAX_BATCHES: usize = 256;
/// Most bytes of bodies and slots held at once; past it the oldest are
/// stored.
const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// Hashes a delivery id (consecutive numbers from one counter, never
/// chosen by a client) by one multiplication: SipHash, which the map
/// would use otherwise, was a tenth of the committer's time per delivery.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Ids<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The batches held, oldest first, and the writes that go with the next
/// commit.
pub(super) struct Pipeline {
    /// How long a batch handed over waits for its recipients'
    /// acknowledgements before it is stored anyway
    /// (`Config::delivery_hold_ms`): the time a connected recipient has to
    /// make a copy in the relay's database unnecessary, and what a
    /// delivery to someone offline or slow adds to its `Sent`. Zero: every
    /// batch is stored in the turn it is handed over.
    hold: Duration,
    /// The relay's counters (deliveries queued on a connection directly).
    metrics: Arc<Metrics>,
    batches: VecDeque<Staged>,
    /// The number of `batches[0]` (batches are numbered as they come).
    first: u64,
    /// Delivery id -> where it is: those handed over, until acknowledged
    /// or stored.
    handed: Ids<Handed>,
    /// Writes nobody waits for (acknowledgements of what is stored,
    /// memberships), for the next commit.
    writes: Vec<Write>,
    /// Bytes of bodies held.
    bytes: usize,
}

/// Where a delivery handed over is.
struct Handed {
    batch: u64,
    delivery: usize,
    recipient: usize,
}

/// One batch: the sends of one turn.
pub(super) struct Staged {
    /// When it was handed over.
    at: Instant,
    /// What its jobs are answered with, in order.
    pub(super) answers: Vec<Answer>,
    /// Its deliveries, in the order of the answers' sends.
    pub(super) deliveries: Vec<StagedDelivery>,
    /// The ids handed over (acknowledged or not), and how many of them
    /// are not acknowledged yet.
    handed: Vec<u64>,
    unacked: usize,
    /// Users whose pump was not handed a delivery of this batch (it reads
    /// the database): woken once the batch is stored.
    pub(super) skipped: HashSet<UserKey>,
    /// Every id of this batch is at most this one.
    pub(super) last_id: u64,
    bytes: usize,
}

/// One delivery of a [`Staged`] batch.
pub(super) struct StagedDelivery {
    pub(super) delivery: Arc<NewDelivery>,
    /// The recipients (by index) that acknowledged it before it was
    /// stored: it is not stored for them.
    pub(super) acked: Vec<usize>,
}

impl StagedDelivery {
    /// The recipients that have not acknowledged it, in order (linear in
    /// the recipients, however many acknowledged).
    pub(super) fn unacknowledged(&self) -> impl Iterator<Item = &Recipient> {
        let mut acked = vec![false; self.delivery.recipients.len()];
        for &i in &self.acked {
            if let Some(flag) = acked.get_mut(i) {
                *flag = true;
            }
        }
        self.delivery
            .recipients
            .iter()
            .zip(acked)
            .filter(|(_, acked)| !acked)
            .map(|(recipient, _)| recipient)
    }
}

impl Pipeline {
    pub(super) fn new(hold: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            hold,
            metrics,
            batches: VecDeque::new(),
            first: 0,
            handed: Ids::default(),
            writes: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.writes.is_empty()
    }

    /// Takes one turn's jobs: acknowledgements of deliveries handed over
    /// cancel their writes, other writes wait for the next commit, and the
    /// sends are handed over as a new batch.
    pub(super) fn take(&mut self, jobs: &mut Vec<Job>, store: &Store, wakers: &Wakers) {
        let mut sends = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Write(Write::Ack { user, mut ids }) => {
                    ids.retain(|id| !self.acknowledge(&user, *id));
                    if !ids.is_empty() {
                        self.writes.push(Write::Ack { user, ids });
                    }
                }
                Job::Write(write) => self.writes.push(write),
                Job::Sends(job) => sends.push(job),
            }
        }
        if !sends.is_empty() {
            let number = self.first + self.batches.len() as u64;
            let hand_over = !self.hold.is_zero();
            let batch = Staged::hand_over(
                sends,
                number,
                hand_over,
                (store, wakers, &self.metrics),
                &mut self.handed,
            );
            self.bytes += batch.bytes;
            self.batches.push_back(batch);
        }
    }

    /// `user` acknowledged delivery `id`; `true` if it was handed over and
    /// is not stored yet (its write is cancelled).
    fn acknowledge(&mut self, user: &UserKey, id: u64) -> bool {
        let Some(handed) = self.handed.get(&id) else {
            return false;
        };
        let Some(batch) = handed
            .batch
            .checked_sub(self.first)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.batches.get_mut(i))
        else {
            return false;
        };
        let Some(staged) = batch.deliveries.get_mut(handed.delivery) else {
            return false;
        };
        // Only the recipient's own acknowledgement counts.
        let recipient = handed.recipient;
        if !staged
            .delivery
            .recipients
            .get(recipient)
            .is_some_and(|to| to.name.has_key(user))
        {
            return false;
        }
        staged.acked.push(recipient);
        batch.unacked -= 1;
        self.handed.remove(&id);
        true
    }

    /// When something held is due to be stored (`None`: nothing is held).
    pub(super) fn due_at(&self) -> Option<Instant> {
        match self.batches.front() {
            Some(batch) if batch.unacked == 0 => Some(Instant::now()),
            Some(batch) => Some(batch.at + self.hold),
            None if self.writes.is_empty() => None,
            None => Some(Instant::now()),
        }
    }

    /// The batches due at `now`, oldest first, and with them the writes
    /// waiting: what the next commit stores. A batch is due once every
    /// delivery handed over from it is acknowledged, when too much is
    /// held, and (only if `drained`: no job is waiting that could
    /// acknowledge more) once it is held as long as `hold` says, and
    /// [`OVERDUE`] times that in any case (a relay never idle still
    /// answers); at once with a `hold` of zero. Writes wait only while a
    /// batch is held that is not due.
    pub(super) fn due(&mut self, now: Instant, drained: bool) -> (Vec<Staged>, Vec<Write>) {
        let mut due = Vec::new();
        while let Some(batch) = self.batches.front() {
            let ready = batch.unacked == 0
                || self.hold.is_zero()
                || (drained && now >= batch.at + self.hold)
                || now >= batch.at + self.hold * OVERDUE
                || self.batches.len() > MAX_BATCHES
                || self.bytes > MAX_HELD_BYTES;
            if !ready {
                break;
            }
            self.pop(&mut due);
        }
        let writes = if due.is_empty() && !self.batches.is_empty() {
            Vec::new()
        } else {
            std::mem::take(&mut self.writes)
        };
        (due, writes)
    }

    /// Everything held (the committer is stopping).
    pub(super) fn all(&mut self) -> (Vec<Staged>, Vec<Write>) {
        let mut due = Vec::new();
        while !self.batches.is_empty() {
            self.pop(&mut due);
        }
        (due, std::mem::take(&mut self.writes))
    }

    fn pop(&mut self, due: &mut Vec<Staged>) {
        let Some(batch) = self.batches.pop_front() else {
            return;
        };
        self.first += 1;
        self.bytes -= batch.bytes;
        if batch.unacked > 0 {
            for id in &batch.handed {
                self.handed.remove(id);
            }
        }
        due.push(batch);
    }
}

impl Staged {
    /// Batch `number` of `jobs`: every delivery gets its ids and, with
    /// `hand_over`, goes to the pumps of its connected recipients
    /// (recorded in `handed`); without, they read it once it is stored. If
    /// no ids can be reserved (the database fails), nothing is handed
    /// over: the store assigns them, or refuses the batch.
    fn hand_over(
        jobs: Vec<Sends>,
        number: u64,
        hand_over: bool,
        (store, wakers, metrics): (&Store, &Wakers, &Metrics),
        handed: &mut Ids<Handed>,
    ) -> Self {
        let mut batch = Self {
            at: Instant::now(),
            answers: Vec::with_capacity(jobs.len()),
            deliveries: Vec::new(),
            handed: Vec::new(),
            unacked: 0,
            skipped: HashSet::new(),
            last_id: 0,
            bytes: 0,
        };
        for job in jobs {
            batch.add(job);
        }
        let count: u64 = batch
            .deliveries
            .iter()
            .map(|d| d.delivery.unnumbered())
            .sum();
        let reserved = if count == 0 {
            None
        } else {
            store.reserve_ids(count).ok()
        };
        if let Some(first) = reserved {
            batch.offer(first, number, hand_over, (wakers, metrics), handed);
        }
        batch.last_id = store.last_reserved();
        batch
    }

    fn add(&mut self, job: Sends) {
        let (answer, deliveries) = job.into_answer();
        for delivery in deliveries {
            self.bytes += size(&delivery);
            self.deliveries.push(StagedDelivery {
                delivery: Arc::new(delivery),
                acked: Vec::new(),
            });
        }
        self.answers.push(answer);
    }

    /// Numbers the deliveries from `next` on ([`NewDelivery::number`]) and
    /// offers each to its recipient's pump (with `hand_over`; else tells
    /// the pump to read it from the database).
    fn offer(
        &mut self,
        mut next: u64,
        number: u64,
        hand_over: bool,
        (wakers, metrics): (&Wakers, &Metrics),
        handed: &mut Ids<Handed>,
    ) {
        // The doors to wake once everything is handed over: those whose
        // queue was empty before (the others are woken already).
        let mut woken: Vec<Arc<PumpDoor>> = Vec::new();
        for (index, staged) in self.deliveries.iter_mut().enumerate() {
            let Some(delivery) = Arc::get_mut(&mut staged.delivery) else {
                continue;
            };
            delivery.number(&mut next);
            let delivery = &staged.delivery;
            // What a door holds while it holds this: all of it (its
            // recipients' doors share it).
            let len = size(delivery);
            let names = delivery.recipients.iter().map(|r| &r.name);
            let mut handed_any = |recipient: usize, door: &Arc<PumpDoor>, peer: &Peer| {
                let Some(to) = delivery.recipients.get(recipient) else {
                    return;
                };
                let id = to.id;
                if hand_over {
                    let live = Live {
                        id,
                        delivery: Arc::clone(delivery),
                        recipient,
                    };
                    let first = match door.offer(live, len, peer, metrics) {
                        Offered::Sent => false,
                        Offered::Handed { first } => first,
                        Offered::Refused => {
                            self.skipped.insert(to.name.key());
                            return;
                        }
                    };
                    self.handed.push(id);
                    self.unacked += 1;
                    handed.insert(
                        id,
                        Handed {
                            batch: number,
                            delivery: index,
                            recipient,
                        },
                    );
                    if first {
                        woken.push(Arc::clone(door));
                    }
                    return;
                } else {
                    door.skip(id);
                }
                self.skipped.insert(to.name.key());
            };
            wakers.each_door(names, &mut handed_any);
        }
        for door in woken {
            door.wake.notify_one();
        }
    }
}

/// The bytes of a delivery held in memory: its body and every slot.
fn size(delivery: &NewDelivery) -> usize {
    delivery.body.len()
        + delivery
            .recipients
            .iter()
            .map(|r| r.slot.as_ref().map_or(0, |s| s.len()))
            .sum::<usize>()
}
