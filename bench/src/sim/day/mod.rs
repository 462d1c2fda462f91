//! One day of the cluster, second by second.
//!
//! # What is simulated
//!
//! - **Users** come and go: every second a Poisson number of connected
//!   users leave (sessions are exponential), and a Poisson number of away
//!   users, drawn in proportion to their engagement, connect, so that the
//!   connected count follows the day's curve. A connection lands on a relay
//!   drawn at random among those up (clients take the hosts in different
//!   orders) and waits in that relay's handshake queue, which the relay
//!   works through with the CPU its messages leave (both shrink in
//!   proportion when together they exceed its cores).
//! - **Messages**: each second a Poisson number of direct and of room
//!   messages (the rates follow the connected count and the activity
//!   curve); each has a sender drawn among the connected users, and goes to
//!   one of the sender's partners or to one of its rooms.
//! - **Deliveries**: a direct message makes one, a room message one per
//!   other member, each published to SOTTO_INBOX. Those for connected
//!   members are handed over at once by their relay; those for members away
//!   are stored, and a member who connects takes its stored deliveries at
//!   `--drain-per-client` per second. A user holds at most its bound
//!   (`--max-per-user`, or what `--max-age-days` of its traffic comes to if
//!   that is less); beyond it deliveries are refused (count bound) or expire
//!   (age bound).
//! - **Failures**: relay 0 killed (its users queue for a handshake on the
//!   others after `--failover-secs`; it comes back empty after
//!   `--relay-down-secs`), and the NATS node leading SOTTO_INBOX killed
//!   (nothing is acknowledged until the election is over and the relays'
//!   next retry; then the new leader works through the backlog).
//!
//! # Aggregation
//!
//! No message is an object. A room keeps how many messages it has had, how
//! many of its members are connected (per relay, for rooms bigger than the
//! relay count) and how many away members are at their bound. A user who
//! leaves notes the sum of its rooms' message counts; when it comes back,
//! what it missed is the difference, plus the direct messages counted for it
//! while away. The total stored is kept exactly in step with those per-user
//! figures (`Engine::audit` in the tests recounts it).

mod failures;
mod record;
#[cfg(test)]
mod tests;
mod traffic;
mod users;

use std::collections::VecDeque;

use rand::RngExt;

use crate::SimError;
use crate::community::Community;
use crate::curve::Diurnal;
use crate::dist::{self, SimRng, Stream, WeightedSet};
use crate::params::Params;
use crate::start;
use crate::stats::Second;

pub(crate) use failures::{LeaderFailure, RelayFailure};
use failures::{LeaderLoss, Outage};

/// What to simulate: the relay count and the failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) relays: usize,
    pub(crate) relay_failure: Option<u32>,
    pub(crate) leader_failure: Option<u32>,
}

/// Simulates each plan's day, two at a time (the day is bound by memory
/// latency, so two threads on two cores nearly halve the time).
pub(crate) fn simulate(p: &Params, c: &Community, plans: &[Plan]) -> Result<Vec<Day>, SimError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 2);
    let mut days = Vec::with_capacity(plans.len());
    for batch in plans.chunks(threads) {
        let results: Vec<std::thread::Result<Day>> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&plan| scope.spawn(move || Engine::new(p, c, plan).run()))
                .collect();
            handles.into_iter().map(|h| h.join()).collect()
        });
        for result in results {
            days.push(result.map_err(|_| SimError::Invalid("a simulation thread failed".into()))?);
        }
    }
    Ok(days)
}

/// The day's record.
#[derive(Clone, Debug)]
pub(crate) struct Day {
    pub(crate) plan: Plan,
    pub(crate) seconds: Vec<Second>,
    pub(crate) totals: Totals,
    pub(crate) relay_failure: Option<RelayFailure>,
    pub(crate) leader_failure: Option<LeaderFailure>,
}

/// Counts over the whole day.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Totals {
    pub(crate) dm_messages: u64,
    pub(crate) room_messages: u64,
    pub(crate) deliveries: u64,
    pub(crate) live: u64,
    pub(crate) stored_new: u64,
    /// Deliveries refused at a user's count bound.
    pub(crate) refused: u64,
    /// Deliveries expired at a user's age bound.
    pub(crate) expired: u64,
    pub(crate) drained: u64,
    /// Connections made (handshakes completed).
    pub(crate) connections: u64,
    /// Users connected at some time of the day.
    pub(crate) distinct_users: u64,
    /// Deliveries stored at midnight and at the end.
    pub(crate) stored_at_start: u64,
    pub(crate) stored_at_end: u64,
    /// Users at their bound at midnight.
    pub(crate) at_bound_at_start: u64,
    /// Users whose bound is the age, not the count.
    pub(crate) age_bound_users: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    Away,
    /// Waiting for a handshake (in a relay's queue, or about to be).
    Handshaking,
    Connected,
}

/// Whether a user's bound is its count or its age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BoundKind {
    Count,
    Age,
}

/// The model's unit costs, derived once from the parameters.
#[derive(Clone, Copy, Debug)]
struct Unit {
    send_us: f64,
    relay_publish_us: f64,
    relay_handover_us: f64,
    leader_publish_us: f64,
    leader_handover_us: f64,
    follower_publish_us: f64,
    follower_handover_us: f64,
    handshake_us: f64,
    relay_capacity_us: f64,
    nats_capacity_us: f64,
    delivery_bytes: f64,
    send_base_bytes: f64,
    slot_bytes: f64,
    relay_bytes_per_client: f64,
    nats_bytes_per_client: f64,
    drain_per_second: u32,
    session_secs: f64,
    msgs_per_user_second: f64,
    dm_share: f64,
}

impl Unit {
    fn new(p: &Params) -> Self {
        let k = &p.costs;
        let followers = f64::from(p.cluster.replicas.saturating_sub(1));
        let follower = if followers > 0.0 {
            k.nats_us_per_delivery * (1.0 - k.leader_share) / followers
        } else {
            0.0
        };
        let h = k.nats_handover_share;
        Self {
            send_us: k.relay_us_per_send,
            relay_publish_us: k.relay_us_per_delivery * k.relay_publish_share,
            relay_handover_us: k.relay_us_per_delivery * (1.0 - k.relay_publish_share),
            leader_publish_us: k.nats_us_per_delivery * k.leader_share * (1.0 - h),
            leader_handover_us: k.nats_us_per_delivery * k.leader_share * h,
            follower_publish_us: follower * (1.0 - h),
            follower_handover_us: follower * h,
            handshake_us: k.handshake_us,
            relay_capacity_us: p.cluster.relay_cores * 1e6,
            nats_capacity_us: p.cluster.nats_cores * 1e6,
            delivery_bytes: p.delivery_bytes(),
            send_base_bytes: f64::from(p.traffic.body_bytes) + f64::from(p.traffic.frame_overhead),
            slot_bytes: f64::from(p.traffic.slot_bytes),
            relay_bytes_per_client: k.relay_kib_per_client * 1024.0,
            nats_bytes_per_client: k.nats_kib_per_client * 1024.0,
            drain_per_second: k.drain_per_client.floor().max(1.0) as u32,
            session_secs: p.community.session_minutes * 60.0,
            msgs_per_user_second: p.traffic.msgs_per_user_day / 86_400.0,
            dm_share: p.traffic.dm_share,
        }
    }
}

/// One relay's work in the current second.
#[derive(Clone, Copy, Debug, Default)]
struct Tick {
    cpu_us: f64,
    client_in: f64,
    client_out: f64,
    nats_in: f64,
    nats_out: f64,
    handshakes: u32,
    /// Share of the second the relay can work in (less in the second a
    /// storm of reconnections arrives part-way through).
    from: f64,
}

/// This second's counts.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    dm: u64,
    room: u64,
    deliveries: u64,
    live: u64,
    stored_new: u64,
    dropped: u64,
    drained: u64,
}

const NOT_DENSE: u32 = u32::MAX;

/// A user's state, kept together (and aligned to a cache line) so that
/// touching a user costs one cache miss, not one per field.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct User {
    /// The sum of its rooms' message counts when it last left.
    snapshot: u64,
    /// Deliveries stored for it besides those of its rooms since it left:
    /// what it had not taken yet, and direct messages since.
    carried: u32,
    /// Stored deliveries it still has to take, while connected.
    drain: u32,
    /// Changes at every connection and disconnection, so that checks and
    /// drains scheduled before are recognised as stale.
    generation: u32,
    /// Most deliveries stored for it.
    bound: u32,
    /// Its place in `Engine::connected`.
    slot: u32,
    /// Deliveries per second used to schedule its checks.
    check_rate: f32,
    /// Its engagement as a weight in the draw of who connects.
    weight: u32,
    /// Where its rooms are in the community's list of memberships.
    rooms_from: u32,
    rooms_len: u32,
    relay: u16,
    presence: Presence,
    /// At its bound: what comes for it is dropped.
    capped: bool,
    kind: BoundKind,
    /// Connected at some time of the day.
    seen: bool,
}

impl Default for User {
    fn default() -> Self {
        Self {
            snapshot: 0,
            carried: 0,
            drain: 0,
            generation: 0,
            bound: 1,
            slot: 0,
            check_rate: 0.0,
            weight: 0,
            rooms_from: 0,
            rooms_len: 0,
            relay: 0,
            presence: Presence::Away,
            capped: false,
            kind: BoundKind::Count,
            seen: false,
        }
    }
}

/// A room's state.
#[derive(Clone, Copy, Debug)]
struct Room {
    /// Messages sent to it so far.
    messages: u64,
    /// Members connected.
    connected: u32,
    /// Members away and at their count bound, at their age bound.
    capped_count: u32,
    capped_age: u32,
    /// Its index in `Engine::dense`, or NOT_DENSE.
    dense: u32,
    /// Members.
    size: u32,
}

impl Default for Room {
    fn default() -> Self {
        Self {
            messages: 0,
            connected: 0,
            capped_count: 0,
            capped_age: 0,
            dense: NOT_DENSE,
            size: 0,
        }
    }
}

/// The simulation's state.
pub(crate) struct Engine<'a> {
    p: &'a Params,
    c: &'a Community,
    curve: Diurnal,
    unit: Unit,
    plan: Plan,
    relays: usize,
    traffic: SimRng,
    placement: SimRng,

    users: Vec<User>,
    connected: Vec<u32>,
    away: WeightedSet,
    draining: Vec<(u32, u32)>,
    checks: Vec<Vec<(u32, u32)>>,

    rooms: Vec<Room>,
    /// Connected members per relay of the rooms bigger than the relay
    /// count, `relays` entries per room.
    dense: Vec<u32>,

    alive: Vec<bool>,
    users_on: Vec<u32>,
    queue: Vec<VecDeque<u32>>,
    handshaking: u64,
    tick: Vec<Tick>,
    /// Each relay's CPU in the last second, fraction of its cores.
    last_cpu: Vec<f64>,
    deferred: Vec<f64>,

    node_alive: Vec<bool>,
    leader: usize,
    stalled: bool,
    queue_publish: f64,
    queue_handover: f64,
    new_publish: f64,
    new_handover: f64,

    /// Deliveries stored (signed, so that a slip shows as a negative count
    /// in the tests rather than wrapping).
    stored: i64,
    counts: Counts,
    totals: Totals,
    outage: Option<Outage>,
    loss: Option<LeaderLoss>,
    /// Tests only: no messages, nobody leaves or arrives by chance.
    quiet: bool,
}

impl<'a> Engine<'a> {
    /// The state at midnight.
    pub(crate) fn new(p: &'a Params, c: &'a Community, plan: Plan) -> Self {
        let users = c.users();
        let relays = plan.relays.max(1);
        let curve = Diurnal::new(p);
        let unit = Unit::new(p);
        let seconds = p.run.seconds as usize;
        let mut rooms = vec![Room::default(); c.rooms()];
        let mut dense_rooms = 0u32;
        for (room, state) in rooms.iter_mut().enumerate() {
            state.size = c.size_of(room as u32);
            if state.size as usize > relays {
                state.dense = dense_rooms;
                dense_rooms += 1;
            }
        }
        let mut engine = Self {
            p,
            c,
            curve,
            unit,
            plan,
            relays,
            traffic: dist::rng(p.run.seed, Stream::Traffic),
            placement: dist::rng(p.run.seed, Stream::Placement),
            users: (0..users as u32)
                .map(|user| {
                    let (rooms_from, rooms_len) = c.rooms_span(user);
                    User {
                        weight: c.weight(user),
                        rooms_from,
                        rooms_len,
                        ..User::default()
                    }
                })
                .collect(),
            connected: Vec::new(),
            away: WeightedSet::new(c.weights()),
            draining: Vec::new(),
            checks: vec![Vec::new(); seconds + 1],
            rooms,
            dense: vec![0; dense_rooms as usize * relays],
            alive: vec![true; relays],
            users_on: vec![0; relays],
            queue: vec![VecDeque::new(); relays],
            handshaking: 0,
            tick: vec![Tick::default(); relays],
            last_cpu: vec![0.0; relays],
            deferred: vec![0.0; relays],
            node_alive: vec![true; p.cluster.nats_nodes as usize],
            leader: 0,
            stalled: false,
            queue_publish: 0.0,
            queue_handover: 0.0,
            new_publish: 0.0,
            new_handover: 0.0,
            stored: 0,
            counts: Counts::default(),
            totals: Totals::default(),
            outage: None,
            loss: None,
            quiet: false,
        };
        engine.start();
        engine
    }

    /// Midnight: who is connected, and what the others have stored.
    fn start(&mut self) {
        let p = self.p;
        let room_rate = self.unit.msgs_per_user_second * (1.0 - self.unit.dm_share);
        let dm_rate = self.unit.msgs_per_user_second * self.unit.dm_share;
        let estimates = start::estimate(self.c, self.curve.mean_connected(), room_rate, dm_rate);
        let max_age = p.traffic.max_age_days * 86_400.0;
        let max_count = f64::from(p.traffic.max_per_user);
        for user in 0..self.c.users() {
            let rate = estimates.rate[user];
            let by_age = (rate * max_age).ceil().max(1.0);
            if by_age < max_count {
                self.users[user].bound = by_age as u32;
                self.users[user].kind = BoundKind::Age;
                self.totals.age_bound_users += 1;
            } else {
                self.users[user].bound = p.traffic.max_per_user;
            }
            // Looked at twice as often as the day-average rate needs, so a
            // busy hour does not carry a user far past its bound unseen.
            self.users[user].check_rate = (2.0 * rate) as f32;
        }

        let mut rng = dist::rng(p.run.seed, Stream::Start);
        let at_midnight = self.curve.connected(0).round() as u64;
        for _ in 0..at_midnight {
            let Some(user) = self.away.draw(&mut rng) else {
                break;
            };
            let user = user as u32;
            self.away.set(user as usize, 0);
            let relay = self.pick_relay();
            self.join(user, relay);
        }
        let x = estimates.return_factor;
        for user in 0..self.c.users() as u32 {
            let u = user as usize;
            if self.users[u].presence != Presence::Away {
                continue;
            }
            // How long it has been away: exponential with the mean of its
            // absences (memoryless, so the time since it left is too).
            let away_mean = self.unit.session_secs / (x * self.c.engagement(user));
            let uniform: f64 = rng.random();
            let away_for = -away_mean * (1.0 - uniform).ln();
            let missed = (estimates.rate[u] * away_for.min(max_age)).round();
            let pending = missed.min(f64::from(self.users[u].bound)) as u32;
            self.users[u].carried = pending;
            self.stored += i64::from(pending);
            if pending >= self.users[u].bound {
                self.mark_capped(user);
                self.totals.at_bound_at_start += 1;
            } else {
                self.schedule_check(user, 0);
            }
        }
        self.totals.stored_at_start = self.stored.max(0) as u64;
    }

    /// Runs the day and returns its record.
    pub(crate) fn run(mut self) -> Day {
        let mut seconds = Vec::with_capacity(self.p.run.seconds as usize);
        for t in 0..self.p.run.seconds {
            seconds.push(self.step(t));
        }
        self.finish(seconds)
    }

    /// One second.
    fn step(&mut self, t: u32) -> Second {
        self.counts = Counts::default();
        for tick in &mut self.tick {
            *tick = Tick::default();
        }
        self.new_publish = 0.0;
        self.new_handover = 0.0;
        self.failures(t);
        self.checks_due(t);
        self.departures(t);
        self.arrivals(t);
        self.messages(t);
        self.drains();
        self.handshakes(t);
        self.close_second(t)
    }

    fn finish(mut self, mut seconds: Vec<Second>) -> Day {
        // Users who passed their bound after their last check: what they
        // were counted beyond it was dropped.
        for user in 0..self.users.len() as u32 {
            let record = self.users[user as usize];
            if record.presence != Presence::Connected && !record.capped {
                let missed = self.missed(user);
                let bound = u64::from(record.bound);
                if missed > bound {
                    self.drop_excess(user, missed - bound);
                    self.mark_capped(user);
                }
            }
        }
        if let Some(last) = seconds.last_mut() {
            last.stored = self.stored as f64;
        }
        self.totals.distinct_users = self.users.iter().filter(|u| u.seen).count() as u64;
        self.totals.stored_at_end = self.stored.max(0) as u64;
        Day {
            plan: self.plan,
            seconds,
            totals: self.totals,
            relay_failure: self.outage.map(|o| o.report),
            leader_failure: self.loss.map(|l| l.report),
        }
    }
}
