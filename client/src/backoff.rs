//! When to try reconnecting to a relay: exponential backoff with jitter.
//!
//! After the `n`-th failure in a row the client waits a random time in
//! `[ceiling / 2, ceiling]`, where `ceiling = min(base * 2^n, cap)`: the
//! delays grow quickly while the relay is down, never exceed the cap, and
//! many clients cut off at once (a relay restart) do not all come back in
//! the same instant. A connection that stayed up for `stable` resets the
//! count.

use std::time::Duration;

use rand::Rng;

/// Reconnection delays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    stable: Duration,
    failures: u32,
}

impl Default for Backoff {
    /// 0.5 s doubling up to 60 s; a connection up for 30 s counts as stable.
    fn default() -> Self {
        Self::new(
            Duration::from_millis(500),
            Duration::from_secs(60),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    /// Delays from `base` doubling up to `cap`; a connection that lasted
    /// `stable` resets them.
    pub fn new(base: Duration, cap: Duration, stable: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            stable,
            failures: 0,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt, after a failed attempt or a
    /// connection that ended after `lasted` (zero for a failed attempt).
    pub fn next_delay<R: Rng + ?Sized>(&mut self, lasted: Duration, rng: &mut R) -> Duration {
        if lasted >= self.stable {
            self.failures = 0;
        }
        let ceiling = self
            .base
            .checked_mul(1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half).as_millis();
        let jitter = u64::try_from(spread).unwrap_or(u64::MAX);
        half + Duration::from_millis(if jitter == 0 {
            0
        } else {
            rng.next_u64() % (jitter + 1)
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn delays_grow_within_their_bounds_and_stop_at_the_cap() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut backoff = Backoff::default();
        let mut previous_ceiling = Duration::ZERO;
        for n in 0..20u32 {
            let ceiling =
                (Duration::from_millis(500) * 2u32.saturating_pow(n)).min(Duration::from_secs(60));
            let delay = backoff.next_delay(Duration::ZERO, &mut rng);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "attempt {n}: {delay:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            assert!(ceiling >= previous_ceiling);
            previous_ceiling = ceiling;
        }
        assert_eq!(previous_ceiling, Duration::from_secs(60));
    }

    #[test]
    fn a_stable_connection_resets_the_count() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut backoff = Backoff::default();
        for _ in 0..6 {
            backoff.next_delay(Duration::ZERO, &mut rng);
        }
        assert_eq!(backoff.failures(), 6);
        let delay = backoff.next_delay(Duration::from_secs(31), &mut rng);
        assert!(delay <= Duration::from_millis(500), "{delay:?}");
        assert_eq!(backoff.failures(), 1);
        // A short-lived connection does not.
        backoff.next_delay(Duration::from_secs(1), &mut rng);
        assert_eq!(backoff.failures(), 2);
    }

    #[test]
    fn clients_cut_off_together_spread_out() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let delays: std::collections::BTreeSet<Duration> = (0..50)
            .map(|_| {
                let mut backoff = Backoff::default();
                for _ in 0..4 {
                    backoff.next_delay(Duration::ZERO, &mut rng);
                }
                backoff.next_delay(Duration::ZERO, &mut rng)
            })
            .collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }
}
