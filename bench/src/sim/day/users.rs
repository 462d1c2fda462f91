//! Users coming and going: connections, disconnections, and the bounds
//! of what is stored for them.

use rand::RngExt;

use super::{BoundKind, Engine, NOT_DENSE, Presence};
use crate::community::Community;
use crate::dist;

impl<'a> Engine<'a> {
    pub(super) fn pick_relay(&mut self) -> usize {
        let up = self.alive.iter().filter(|&&a| a).count();
        if up == 0 {
            return 0;
        }
        let mut n = self.placement.random_range(0..up);
        for (relay, &a) in self.alive.iter().enumerate() {
            if a {
                if n == 0 {
                    return relay;
                }
                n -= 1;
            }
        }
        0
    }

    /// The rooms of a user, through its own record (one miss fewer than
    /// through the community's index).
    pub(super) fn rooms_of(&self, user: u32) -> &'a [u32] {
        let c: &'a Community = self.c;
        let record = &self.users[user as usize];
        c.memberships(record.rooms_from, record.rooms_len)
    }

    pub(super) fn room_sum(&self, user: u32) -> u64 {
        self.rooms_of(user)
            .iter()
            .map(|&r| self.rooms[r as usize].messages)
            .sum()
    }

    /// Deliveries a user not connected has missed, before its bound.
    pub(super) fn missed(&self, user: u32) -> u64 {
        let u = user as usize;
        u64::from(self.users[u].carried) + (self.room_sum(user) - self.users[u].snapshot)
    }

    /// Connects a user on a relay (its handshake done).
    pub(super) fn join(&mut self, user: u32, relay: usize) {
        let u = user as usize;
        let missed = self.missed(user);
        let bound = u64::from(self.users[u].bound);
        let pending = if self.users[u].capped {
            self.unmark_capped(user);
            bound
        } else {
            if missed > bound {
                self.drop_excess(user, missed - bound);
            }
            missed.min(bound)
        };
        if let Some(outage) = &mut self.outage {
            let base = outage.base[u];
            if base != u32::MAX {
                outage.report.stored_meanwhile += missed.saturating_sub(u64::from(base));
                outage.base[u] = u32::MAX;
            }
        }
        self.users[u].generation = self.users[u].generation.wrapping_add(1);
        self.users[u].carried = 0;
        self.users[u].drain = pending as u32;
        if pending > 0 {
            self.draining.push((user, self.users[u].generation));
        }
        self.users[u].presence = Presence::Connected;
        self.users[u].relay = relay as u16;
        self.users[u].slot = self.connected.len() as u32;
        self.connected.push(user);
        self.users_on[relay] += 1;
        for &room in self.rooms_of(user) {
            let r = room as usize;
            self.rooms[r].connected += 1;
            let d = self.rooms[r].dense;
            if d != NOT_DENSE {
                self.dense[d as usize * self.relays + relay] += 1;
            }
        }
        self.users[u].seen = true;
    }

    /// Disconnects a user; `to` is Away, or Handshaking if it is already
    /// on its way to another relay.
    pub(super) fn leave(&mut self, user: u32, t: u32, to: Presence) {
        let u = user as usize;
        let relay = self.users[u].relay as usize;
        let position = self.users[u].slot as usize;
        if let Some(last) = self.connected.pop()
            && position < self.connected.len()
        {
            self.connected[position] = last;
            self.users[last as usize].slot = position as u32;
        }
        self.users_on[relay] -= 1;
        for &room in self.rooms_of(user) {
            let r = room as usize;
            self.rooms[r].connected -= 1;
            let d = self.rooms[r].dense;
            if d != NOT_DENSE {
                self.dense[d as usize * self.relays + relay] -= 1;
            }
        }
        self.users[u].snapshot = self.room_sum(user);
        self.users[u].carried = self.users[u].drain;
        self.users[u].drain = 0;
        self.users[u].generation = self.users[u].generation.wrapping_add(1);
        self.users[u].presence = to;
        if to == Presence::Away {
            self.away.set(u, u64::from(self.users[u].weight));
        }
        if self.users[u].carried >= self.users[u].bound {
            self.mark_capped(user);
        } else {
            self.schedule_check(user, t);
        }
    }

    pub(super) fn schedule_check(&mut self, user: u32, t: u32) {
        let u = user as usize;
        let room = f64::from(self.users[u].bound.saturating_sub(self.users[u].carried));
        let rate = f64::from(self.users[u].check_rate);
        if rate <= 0.0 {
            return;
        }
        let wait = (room / rate).clamp(60.0, 1e9);
        let at = f64::from(t) + wait;
        if at < self.checks.len() as f64 {
            let at = at as usize;
            self.checks[at].push((user, self.users[u].generation));
        }
    }

    /// Looks at the users due: those past their bound stop storing.
    pub(super) fn checks_due(&mut self, t: u32) {
        let due = std::mem::take(&mut self.checks[t as usize]);
        for (user, generation) in due {
            let u = user as usize;
            if self.users[u].generation != generation
                || self.users[u].presence == Presence::Connected
                || self.users[u].capped
            {
                continue;
            }
            let missed = self.missed(user);
            let bound = u64::from(self.users[u].bound);
            if missed >= bound {
                self.drop_excess(user, missed - bound);
                self.mark_capped(user);
            } else {
                self.schedule_check(user, t);
            }
        }
    }

    /// Deliveries counted as stored for a user beyond its bound: they were
    /// refused (or the oldest expired) when they came.
    pub(super) fn drop_excess(&mut self, user: u32, excess: u64) {
        self.stored -= excess as i64;
        self.count_dropped(user, excess);
    }

    pub(super) fn count_dropped(&mut self, user: u32, n: u64) {
        self.counts.dropped += n;
        match self.users[user as usize].kind {
            BoundKind::Count => self.totals.refused += n,
            BoundKind::Age => self.totals.expired += n,
        }
    }

    pub(super) fn mark_capped(&mut self, user: u32) {
        let u = user as usize;
        self.users[u].capped = true;
        for &room in self.rooms_of(user) {
            match self.users[u].kind {
                BoundKind::Count => self.rooms[room as usize].capped_count += 1,
                BoundKind::Age => self.rooms[room as usize].capped_age += 1,
            }
        }
    }

    pub(super) fn unmark_capped(&mut self, user: u32) {
        let u = user as usize;
        self.users[u].capped = false;
        for &room in self.rooms_of(user) {
            match self.users[u].kind {
                BoundKind::Count => self.rooms[room as usize].capped_count -= 1,
                BoundKind::Age => self.rooms[room as usize].capped_age -= 1,
            }
        }
    }

    pub(super) fn departures(&mut self, t: u32) {
        if self.quiet {
            return;
        }
        let mean = self.connected.len() as f64 / self.unit.session_secs;
        let leaving = dist::poisson(&mut self.traffic, mean);
        for _ in 0..leaving {
            if self.connected.is_empty() {
                break;
            }
            let i = self.traffic.random_range(0..self.connected.len());
            let user = self.connected[i];
            self.leave(user, t, Presence::Away);
        }
    }

    pub(super) fn arrivals(&mut self, t: u32) {
        if self.quiet {
            return;
        }
        let target = self.curve.connected(t);
        let next = self.curve.connected(t + 1);
        let present = self.connected.len() as f64 + self.handshaking as f64;
        let mean = target / self.unit.session_secs + (next - target) + (target - present) / 60.0;
        let coming = dist::poisson(&mut self.traffic, mean);
        for _ in 0..coming {
            let Some(user) = self.away.draw(&mut self.traffic) else {
                break;
            };
            self.away.set(user, 0);
            self.users[user].presence = Presence::Handshaking;
            let relay = self.pick_relay();
            self.queue[relay].push_back(user as u32);
            self.handshaking += 1;
        }
    }
}
