//! The failures: relay 0 killed, and the NATS node leading SOTTO_INBOX
//! killed.

use super::{Engine, Presence};

/// What killing relay 0 did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RelayFailure {
    pub(crate) at: u32,
    /// Its connected users, who reconnect elsewhere.
    pub(crate) users: u64,
    pub(crate) survivors: usize,
    /// Most of them landing on one surviving relay.
    pub(crate) most_on_one: u64,
    /// That relay's CPU demand just before, fraction of its cores.
    pub(crate) busiest_load_before: f64,
    /// Seconds from the kill until the last of them was connected again
    /// (None: not within the simulated seconds).
    pub(crate) all_back_after: Option<f64>,
    /// Deliveries stored for them while they were reconnecting.
    pub(crate) stored_meanwhile: u64,
    pub(crate) back_at: u32,
}

/// What killing the stream leader's node did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LeaderFailure {
    pub(crate) at: u32,
    pub(crate) node: usize,
    pub(crate) new_leader: Option<usize>,
    /// Seconds without acknowledgement (election, rounded up to the
    /// relays' next retry; until the node returns if no quorum is left).
    pub(crate) stalled_secs: u32,
    /// Messages sent meanwhile, waiting for their Sent.
    pub(crate) messages_waiting: u64,
    pub(crate) deliveries_waiting: u64,
    /// Largest queue at the leader, seconds of its capacity.
    pub(crate) peak_backlog_secs: f64,
    /// Seconds from the resumption until the queue was empty (None: not
    /// within the simulated seconds).
    pub(crate) normal_after: Option<f64>,
    pub(crate) back_at: u32,
    /// Bytes the node copies from the others when it is back.
    pub(crate) catch_up_bytes: f64,
}

/// A killed relay while its users come back elsewhere.
#[derive(Debug)]
pub(super) struct Outage {
    pub(super) relay: usize,
    pub(super) at: u32,
    pub(super) back_at: u32,
    pub(super) join_at: u32,
    pub(super) join_from: f64,
    pub(super) joining: Vec<(u32, usize)>,
    /// Per relay: queue entries left before its last storm user.
    pub(super) ahead: Vec<usize>,
    pub(super) finished: Vec<Option<f64>>,
    /// Per relay: whether storm users landed on it.
    pub(super) expected: Vec<bool>,
    /// Per user: what it had stored when the relay died (u32::MAX: not
    /// one of its users).
    pub(super) base: Vec<u32>,
    pub(super) report: RelayFailure,
}

/// The stream leader's node killed.
#[derive(Debug)]
pub(super) struct LeaderLoss {
    pub(super) node: usize,
    pub(super) stall_until: u32,
    pub(super) back_at: u32,
    pub(super) published_while_away: f64,
    pub(super) report: LeaderFailure,
}

impl Engine<'_> {
    pub(super) fn failures(&mut self, t: u32) {
        if self.plan.relay_failure == Some(t) && self.outage.is_none() {
            self.kill_relay(t);
        }
        if let Some((join_at, back_at, relay)) = self
            .outage
            .as_ref()
            .map(|o| (o.join_at, o.back_at, o.relay))
        {
            if t == join_at {
                self.storm_arrives();
            }
            if t == back_at {
                self.alive[relay] = true;
            }
        }
        if self.plan.leader_failure == Some(t) && self.loss.is_none() {
            self.kill_leader(t);
        }
        if let Some((stall_until, back_at, node)) = self
            .loss
            .as_ref()
            .map(|l| (l.stall_until, l.back_at, l.node))
        {
            if t == stall_until && self.stalled {
                self.resume();
            }
            if t == back_at {
                self.node_alive[node] = true;
                if let Some(loss) = &mut self.loss {
                    loss.report.catch_up_bytes =
                        loss.published_while_away * self.unit.delivery_bytes;
                }
            }
        }
    }

    pub(super) fn kill_relay(&mut self, t: u32) {
        let relay = 0;
        let busiest_before = (0..self.relays)
            .filter(|&r| r != relay && self.alive[r])
            .map(|r| self.last_cpu[r])
            .fold(0.0, f64::max);
        self.alive[relay] = false;
        let on_it: Vec<u32> = self
            .connected
            .iter()
            .copied()
            .filter(|&u| self.users[u as usize].relay as usize == relay)
            .collect();
        let mut base = vec![u32::MAX; self.c.users()];
        let mut joining = Vec::with_capacity(on_it.len());
        let mut per_relay = vec![0u64; self.relays];
        for &user in &on_it {
            self.leave(user, t, Presence::Handshaking);
            base[user as usize] = self.users[user as usize].carried;
            self.handshaking += 1;
            let next = self.pick_relay();
            per_relay[next] += 1;
            joining.push((user, next));
        }
        // Those waiting for it try the next host at once.
        let waiting: Vec<u32> = self.queue[relay].drain(..).collect();
        for user in waiting {
            let next = self.pick_relay();
            self.queue[next].push_back(user);
        }
        let arrive = f64::from(t) + self.p.costs.failover_secs;
        let back_at = t.saturating_add(self.p.failures.relay_down_secs);
        self.outage = Some(Outage {
            relay,
            at: t,
            back_at,
            join_at: arrive.floor() as u32,
            join_from: arrive - arrive.floor(),
            joining,
            ahead: vec![0; self.relays],
            finished: vec![None; self.relays],
            expected: vec![false; self.relays],
            base,
            report: RelayFailure {
                at: t,
                users: on_it.len() as u64,
                survivors: self.alive.iter().filter(|&&a| a).count(),
                most_on_one: per_relay.iter().copied().max().unwrap_or(0),
                busiest_load_before: busiest_before,
                all_back_after: None,
                stored_meanwhile: 0,
                back_at,
            },
        });
    }

    /// The killed relay's users reach the others.
    pub(super) fn storm_arrives(&mut self) {
        let Some(outage) = &mut self.outage else {
            return;
        };
        let joining = std::mem::take(&mut outage.joining);
        let from = outage.join_from;
        let mut got = vec![false; self.relays];
        for (user, relay) in joining {
            self.queue[relay].push_back(user);
            got[relay] = true;
        }
        for (relay, &got) in got.iter().enumerate() {
            if got {
                self.tick[relay].from = from;
                if let Some(outage) = &mut self.outage {
                    outage.ahead[relay] = self.queue[relay].len();
                    outage.expected[relay] = true;
                }
            }
        }
    }

    pub(super) fn kill_leader(&mut self, t: u32) {
        let node = self.leader;
        self.node_alive[node] = false;
        let replicas = self.p.cluster.replicas as usize;
        let up = (0..replicas).filter(|&n| self.node_alive[n]).count();
        let quorum = replicas / 2 + 1;
        let down = self.p.failures.nats_down_secs;
        let new_leader = (0..replicas).find(|&n| self.node_alive[n]);
        let stalled_secs = match new_leader {
            Some(n) if up >= quorum => {
                self.leader = n;
                let retry = self.p.failures.retry_secs;
                ((self.p.costs.election_secs / retry).ceil() * retry).ceil() as u32
            }
            _ => down,
        };
        self.stalled = stalled_secs > 0;
        let back_at = t.saturating_add(down);
        self.loss = Some(LeaderLoss {
            node,
            stall_until: t.saturating_add(stalled_secs),
            back_at,
            published_while_away: 0.0,
            report: LeaderFailure {
                at: t,
                node,
                new_leader: new_leader.filter(|_| up >= quorum),
                stalled_secs,
                messages_waiting: 0,
                deliveries_waiting: 0,
                peak_backlog_secs: 0.0,
                normal_after: None,
                back_at,
                catch_up_bytes: 0.0,
            },
        });
    }

    /// The stream has a leader again: what waited is handed over.
    pub(super) fn resume(&mut self) {
        self.stalled = false;
        for relay in 0..self.relays {
            let n = std::mem::take(&mut self.deferred[relay]);
            if n > 0.0 && self.alive[relay] {
                self.hand_over(relay, n);
            }
        }
    }
}
