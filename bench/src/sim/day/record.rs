//! The end of a second: the stream leader's queue, and the second's
//! figures.

use super::Engine;
use crate::stats::Second;

impl Engine<'_> {
    pub(super) fn close_second(&mut self, t: u32) -> Second {
        let u = self.unit;
        // The stream leader: a queue of work served at its cores' pace.
        let leader_demand =
            self.new_publish * u.leader_publish_us + self.new_handover * u.leader_handover_us;
        self.queue_publish += self.new_publish;
        self.queue_handover += self.new_handover;
        let (mut published, mut handed) = (0.0, 0.0);
        let mut used = 0.0;
        if !self.stalled {
            let need = self.queue_publish * u.leader_publish_us
                + self.queue_handover * u.leader_handover_us;
            if need <= u.nats_capacity_us {
                published = self.queue_publish;
                handed = self.queue_handover;
                self.queue_publish = 0.0;
                self.queue_handover = 0.0;
                used = need / u.nats_capacity_us;
            } else {
                let f = u.nats_capacity_us / need;
                published = self.queue_publish * f;
                handed = self.queue_handover * f;
                self.queue_publish -= published;
                self.queue_handover -= handed;
                used = 1.0;
            }
        }
        let backlog = (self.queue_publish * u.leader_publish_us
            + self.queue_handover * u.leader_handover_us)
            / u.nats_capacity_us;
        let replicas = self.p.cluster.replicas as usize;
        let followers = (0..replicas)
            .filter(|&n| n != self.leader && self.node_alive[n])
            .count() as f64;
        let follower_us = published * u.follower_publish_us + handed * u.follower_handover_us;
        let follower_demand =
            self.new_publish * u.follower_publish_us + self.new_handover * u.follower_handover_us;
        let b = u.delivery_bytes;
        if let Some(loss) = &mut self.loss {
            if !self.node_alive[loss.node] {
                loss.published_while_away += published;
            }
            loss.report.peak_backlog_secs = loss.report.peak_backlog_secs.max(backlog);
            if !self.stalled
                && t >= loss.stall_until
                && loss.report.normal_after.is_none()
                && backlog == 0.0
            {
                loss.report.normal_after = Some(f64::from(t - loss.stall_until) + used);
            }
        }

        // The relays.
        let (mut cpu_max, mut cpu_sum, mut cpu_us, mut up) = (0.0f64, 0.0, 0.0, 0usize);
        let (mut mem_max, mut in_max, mut out_max, mut hs_max) = (0.0f64, 0.0f64, 0.0f64, 0u32);
        for relay in 0..self.relays {
            if !self.alive[relay] {
                self.last_cpu[relay] = 0.0;
                continue;
            }
            let tick = self.tick[relay];
            let cpu = tick.cpu_us / u.relay_capacity_us;
            self.last_cpu[relay] = cpu;
            up += 1;
            cpu_max = cpu_max.max(cpu);
            cpu_sum += cpu;
            cpu_us += tick.cpu_us;
            mem_max = mem_max.max(f64::from(self.users_on[relay]) * u.relay_bytes_per_client);
            in_max = in_max.max(tick.client_in + tick.nats_in);
            out_max = out_max.max(tick.client_out + tick.nats_out);
            hs_max = hs_max.max(tick.handshakes);
        }
        if let Some(outage) = &mut self.outage
            && outage.report.all_back_after.is_none()
            && t >= outage.join_at
            && outage.ahead.iter().all(|&a| a == 0)
        {
            let last = outage
                .expected
                .iter()
                .zip(&outage.finished)
                .filter(|(e, _)| **e)
                .filter_map(|(_, f)| *f)
                .fold(f64::from(outage.at), f64::max);
            outage.report.all_back_after = Some(last - f64::from(outage.at));
        }

        let counts = self.counts;
        self.totals.dm_messages += counts.dm;
        self.totals.room_messages += counts.room;
        self.totals.deliveries += counts.deliveries;
        self.totals.live += counts.live;
        self.totals.stored_new += counts.stored_new;
        self.totals.drained += counts.drained;
        Second {
            connected: self.connected.len() as f64,
            handshaking: self.handshaking as f64,
            dm_messages: counts.dm as f64,
            room_messages: counts.room as f64,
            deliveries: counts.deliveries as f64,
            live: counts.live as f64,
            stored_new: counts.stored_new as f64,
            dropped: counts.dropped as f64,
            drained: counts.drained as f64,
            relay_cpu: cpu_max,
            relay_cpu_us: cpu_us,
            relay_cpu_mean: if up > 0 { cpu_sum / up as f64 } else { 0.0 },
            relay_mem: mem_max,
            relay_in: in_max,
            relay_out: out_max,
            relay_handshakes: f64::from(hs_max),
            leader_cpu: leader_demand / u.nats_capacity_us,
            leader_cpu_us: leader_demand,
            leader_backlog: backlog,
            follower_cpu: if followers > 0.0 {
                follower_demand / u.nats_capacity_us
            } else {
                0.0
            },
            follower_served: if followers > 0.0 {
                follower_us / u.nats_capacity_us
            } else {
                0.0
            },
            leader_in: self.new_publish * b,
            leader_out: self.new_publish * b * followers + self.new_handover * b,
            follower_in: if followers > 0.0 {
                self.new_publish * b
            } else {
                0.0
            },
            nats_mem: self.connected.len() as f64 * u.nats_bytes_per_client,
            stored: self.stored as f64,
        }
    }
}
