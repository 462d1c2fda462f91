//! What one simulated second measured, and the day's summaries of it.

/// One second of the day. CPU and network figures are demand: the work
/// that arrived in the second (over the cores' capacity for CPU: above 1.0
/// a queue grows), whether or not it was served in that second. Per-relay
/// figures are the largest of the relays that are up.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Second {
    /// Users connected (registered on a relay).
    pub(crate) connected: f64,
    /// Users waiting for their handshake on a relay.
    pub(crate) handshaking: f64,
    pub(crate) dm_messages: f64,
    pub(crate) room_messages: f64,
    /// Deliveries the second's messages made (all of them published).
    pub(crate) deliveries: f64,
    /// ... of which to connected users, handed over at once.
    pub(crate) live: f64,
    /// ... of which stored for users not connected.
    pub(crate) stored_new: f64,
    /// Deliveries dropped at a user's bound (refused or expired).
    pub(crate) dropped: f64,
    /// Stored deliveries handed over to users who came back.
    pub(crate) drained: f64,
    /// Relay CPU, largest of the relays, fraction of its cores.
    pub(crate) relay_cpu: f64,
    /// Relay CPU, all relays together, µs.
    pub(crate) relay_cpu_us: f64,
    /// Relay CPU, mean of the relays that are up, fraction of cores.
    pub(crate) relay_cpu_mean: f64,
    /// Relay memory, largest, bytes.
    pub(crate) relay_mem: f64,
    /// Relay bytes received (clients and NATS), largest, per second.
    pub(crate) relay_in: f64,
    /// Relay bytes sent (clients and NATS), largest, per second.
    pub(crate) relay_out: f64,
    /// Handshakes completed, largest of the relays.
    pub(crate) relay_handshakes: f64,
    /// Stream leader CPU demand, fraction of its cores.
    pub(crate) leader_cpu: f64,
    /// Stream leader CPU demand, µs.
    pub(crate) leader_cpu_us: f64,
    /// Work queued at the stream leader, in seconds of its capacity.
    pub(crate) leader_backlog: f64,
    /// A follower's CPU demand (what the second's publications and
    /// hand-overs will cost it), fraction of its cores.
    pub(crate) follower_cpu: f64,
    /// A follower's CPU for what the leader actually served this second
    /// (none while the stream has no leader), fraction of its cores.
    pub(crate) follower_served: f64,
    /// Stream leader bytes in (publications) and out (replication to each
    /// live follower, reads for hand-over), demand, per second.
    pub(crate) leader_in: f64,
    pub(crate) leader_out: f64,
    /// A follower's bytes in (replication), demand, per second.
    pub(crate) follower_in: f64,
    /// Memory per NATS node holding the buckets, bytes.
    pub(crate) nats_mem: f64,
    /// Deliveries stored, waiting for their recipient.
    pub(crate) stored: f64,
}

/// Mean, 99th-percentile second and peak second of one figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) mean: f64,
    pub(crate) p99: f64,
    pub(crate) peak: f64,
    /// Second of the day of the peak.
    pub(crate) peak_at: u32,
}

/// Summarises one figure over the seconds `from..to`.
pub(crate) fn summarise(
    seconds: &[Second],
    from: usize,
    to: usize,
    figure: impl Fn(&Second) -> f64,
) -> Summary {
    let window = seconds.get(from..to.min(seconds.len())).unwrap_or(&[]);
    if window.is_empty() {
        return Summary {
            mean: 0.0,
            p99: 0.0,
            peak: 0.0,
            peak_at: 0,
        };
    }
    let mut values: Vec<f64> = window.iter().map(&figure).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let (mut peak, mut peak_at) = (f64::NEG_INFINITY, 0usize);
    for (i, &v) in values.iter().enumerate() {
        if v > peak {
            peak = v;
            peak_at = i;
        }
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * 0.99).ceil() as usize;
    let p99 = values
        .get(rank.saturating_sub(1).min(values.len() - 1))
        .copied()
        .unwrap_or(0.0);
    Summary {
        mean,
        p99,
        peak,
        peak_at: (from + peak_at) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_find_mean_percentile_and_peak() {
        let seconds: Vec<Second> = (0..200)
            .map(|i| Second {
                stored: f64::from(i),
                ..Second::default()
            })
            .collect();
        let s = summarise(&seconds, 0, 200, |s| s.stored);
        assert!((s.mean - 99.5).abs() < 1e-9);
        assert_eq!(s.p99, 197.0);
        assert_eq!(s.peak, 199.0);
        assert_eq!(s.peak_at, 199);
        let later = summarise(&seconds, 100, 150, |s| s.stored);
        assert_eq!(later.peak_at, 149);
        assert_eq!(summarise(&seconds, 300, 400, |s| s.stored).mean, 0.0);
    }
}
