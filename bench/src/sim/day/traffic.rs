//! Messages, their deliveries, what returning users take, and the relays'
//! handshake queues.

use rand::RngExt;

use super::{Engine, NOT_DENSE, Presence};
use crate::dist;

impl Engine<'_> {
    pub(super) fn messages(&mut self, t: u32) {
        let senders = self.connected.len();
        if senders == 0 || self.quiet {
            return;
        }
        let rate = senders as f64 * self.unit.msgs_per_user_second * self.curve.activity(t);
        let dms = dist::poisson(&mut self.traffic, rate * self.unit.dm_share);
        let room_messages = dist::poisson(&mut self.traffic, rate * (1.0 - self.unit.dm_share));
        let c = self.c;
        for _ in 0..dms {
            let sender = self.connected[self.traffic.random_range(0..senders)];
            let i = self.traffic.random_range(0..c.partners());
            self.direct(sender, c.partner(sender, i));
        }
        for _ in 0..room_messages {
            let sender = self.connected[self.traffic.random_range(0..senders)];
            let rooms = self.rooms_of(sender);
            if rooms.is_empty() {
                continue;
            }
            let room = rooms[self.traffic.random_range(0..rooms.len())];
            self.room(sender, room);
        }
    }

    /// The sender's relay takes a Send for `recipients` and publishes one
    /// delivery for each.
    pub(super) fn accept(&mut self, relay: usize, recipients: u64) {
        let n = recipients as f64;
        let tick = &mut self.tick[relay];
        tick.cpu_us += self.unit.send_us + n * self.unit.relay_publish_us;
        tick.client_in += self.unit.send_base_bytes + n * self.unit.slot_bytes;
        tick.nats_out += n * self.unit.delivery_bytes;
        self.new_publish += n;
        if self.stalled
            && let Some(loss) = &mut self.loss
        {
            loss.report.messages_waiting += 1;
            loss.report.deliveries_waiting += recipients;
        }
    }

    /// A relay hands `n` deliveries to its users (once they are stored:
    /// while the stream has no leader they wait).
    pub(super) fn hand_over(&mut self, relay: usize, n: f64) {
        if self.stalled {
            self.deferred[relay] += n;
            return;
        }
        let tick = &mut self.tick[relay];
        tick.cpu_us += n * self.unit.relay_handover_us;
        tick.client_out += n * self.unit.delivery_bytes;
        tick.nats_in += n * self.unit.delivery_bytes;
        self.new_handover += n;
    }

    pub(super) fn direct(&mut self, sender: u32, to: u32) {
        self.counts.dm += 1;
        self.counts.deliveries += 1;
        let from = self.users[sender as usize].relay as usize;
        self.accept(from, 1);
        let v = to as usize;
        if self.users[v].presence == Presence::Connected {
            self.counts.live += 1;
            self.hand_over(self.users[v].relay as usize, 1.0);
        } else if self.users[v].capped {
            self.count_dropped(to, 1);
        } else {
            self.users[v].carried += 1;
            self.stored += 1;
            self.counts.stored_new += 1;
        }
    }

    pub(super) fn room(&mut self, sender: u32, room: u32) {
        self.counts.room += 1;
        let r = room as usize;
        self.rooms[r].messages += 1;
        let others = u64::from(self.rooms[r].size).saturating_sub(1);
        if others == 0 {
            return;
        }
        self.counts.deliveries += others;
        let from = self.users[sender as usize].relay as usize;
        self.accept(from, others);
        // The sender is a connected member; the capped are away members.
        let live = u64::from(self.rooms[r].connected) - 1;
        let refused = u64::from(self.rooms[r].capped_count);
        let expired = u64::from(self.rooms[r].capped_age);
        let stored = others - live - refused - expired;
        self.counts.live += live;
        self.counts.stored_new += stored;
        self.counts.dropped += refused + expired;
        self.totals.refused += refused;
        self.totals.expired += expired;
        self.stored += stored as i64;
        let d = self.rooms[r].dense;
        if d == NOT_DENSE {
            let c = self.c;
            for &member in c.members_of(room) {
                let m = member as usize;
                if member != sender && self.users[m].presence == Presence::Connected {
                    self.hand_over(self.users[m].relay as usize, 1.0);
                }
            }
        } else {
            let base = d as usize * self.relays;
            for relay in 0..self.relays {
                let mut n = self.dense[base + relay];
                if relay == from {
                    n -= 1;
                }
                if n > 0 {
                    self.hand_over(relay, f64::from(n));
                }
            }
        }
    }

    /// Users who came back take their stored deliveries.
    pub(super) fn drains(&mut self) {
        if self.stalled {
            return;
        }
        let per_second = self.unit.drain_per_second;
        let mut i = 0;
        while i < self.draining.len() {
            let (user, generation) = self.draining[i];
            let u = user as usize;
            if self.users[u].generation != generation
                || self.users[u].presence != Presence::Connected
                || self.users[u].drain == 0
            {
                self.draining.swap_remove(i);
                continue;
            }
            let n = self.users[u].drain.min(per_second);
            self.users[u].drain -= n;
            self.stored -= i64::from(n);
            self.counts.drained += u64::from(n);
            self.hand_over(self.users[u].relay as usize, f64::from(n));
            if self.users[u].drain == 0 {
                self.draining.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Each relay works through its handshake queue with the CPU its
    /// messages leave it (both slowed alike when together they exceed it).
    pub(super) fn handshakes(&mut self, t: u32) {
        for relay in 0..self.relays {
            if !self.alive[relay] || self.queue[relay].is_empty() {
                continue;
            }
            let from = self.tick[relay].from;
            let capacity = self.unit.relay_capacity_us * (1.0 - from);
            let waiting = self.queue[relay].len();
            let want = waiting as f64 * self.unit.handshake_us;
            let busy = self.tick[relay].cpu_us;
            let done = if busy + want <= capacity {
                waiting
            } else {
                let share = capacity * want / (busy + want);
                ((share / self.unit.handshake_us).floor() as usize).min(waiting)
            };
            for _ in 0..done {
                let Some(user) = self.queue[relay].pop_front() else {
                    break;
                };
                self.handshaking -= 1;
                self.join(user, relay);
            }
            let tick = &mut self.tick[relay];
            tick.handshakes += done as u32;
            tick.cpu_us += done as f64 * self.unit.handshake_us;
            self.totals.connections += done as u64;
            if let Some(outage) = &mut self.outage
                && t >= outage.join_at
                && outage.ahead[relay] > 0
            {
                let ahead = outage.ahead[relay];
                if done >= ahead {
                    // Handshakes get the relay's cores in proportion to
                    // their share of its work: when the last storm user's
                    // is done.
                    let pace = self.unit.relay_capacity_us * want / (busy + want);
                    let used = (ahead as f64 * self.unit.handshake_us / pace).min(1.0 - from);
                    outage.finished[relay] = Some(f64::from(t) + from + used);
                    outage.ahead[relay] = 0;
                } else {
                    outage.ahead[relay] -= done;
                }
            }
        }
    }
}
