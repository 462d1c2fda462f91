//! Randomness: the seeded generator, Poisson counts, a weighted sampler of
//! users, and a stateless hash for choices that need no memory.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// The generator of every random choice: portable and seeded, so a seed
/// gives the same run on every machine.
pub(crate) type SimRng = Xoshiro256PlusPlus;

/// The independent streams of a run, so that one kind of choice (where a
/// user connects) does not shift another (when users send).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    /// The community: rooms, their members.
    Community,
    /// The initial state: who is connected at midnight, what is stored.
    Start,
    /// Arrivals, departures and messages.
    Traffic,
    /// Which relay a connection lands on.
    Placement,
}

/// A generator for one stream of a run.
pub(crate) fn rng(seed: u64, stream: Stream) -> SimRng {
    let tag = match stream {
        Stream::Community => 1,
        Stream::Start => 2,
        Stream::Traffic => 3,
        Stream::Placement => 4,
    };
    SimRng::seed_from_u64(mix(seed ^ mix(tag)))
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of a 64-bit value.
pub(crate) fn mix(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash turned into a number in [0, 1).
pub(crate) fn unit(hash: u64) -> f64 {
    let mantissa = (hash >> 11) as f64;
    mantissa / (1u64 << 53) as f64
}

/// A Poisson-distributed count with the given mean (0 for a mean that is
/// not positive).
pub(crate) fn poisson(rng: &mut SimRng, mean: f64) -> u64 {
    if !(mean > 0.0 && mean.is_finite()) {
        return 0;
    }
    if mean < 12.0 {
        poisson_by_inversion(rng, mean)
    } else {
        poisson_by_rejection(rng, mean)
    }
}

/// Small means: walk the cumulative distribution from 0.
fn poisson_by_inversion(rng: &mut SimRng, mean: f64) -> u64 {
    let u: f64 = rng.random();
    let mut k = 0u64;
    let mut p = (-mean).exp();
    let mut cumulative = p;
    // With a mean below 12 the tail beyond 200 is far below f64's epsilon.
    while u > cumulative && k < 200 {
        k += 1;
        p *= mean / k as f64;
        cumulative += p;
    }
    k
}

/// Large means: Hörmann's transformed rejection with squeeze (PTRS, 1993).
fn poisson_by_rejection(rng: &mut SimRng, mean: f64) -> u64 {
    let sqrt_mean = mean.sqrt();
    let log_mean = mean.ln();
    let b = 0.931 + 2.53 * sqrt_mean;
    let a = -0.059 + 0.02483 * b;
    let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    let v_r = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let u = rng.random::<f64>() - 0.5;
        let v: f64 = rng.random();
        let us = 0.5 - u.abs();
        if us <= 0.0 {
            continue;
        }
        let k = ((2.0 * a / us + b) * u + mean + 0.43).floor();
        if k < 0.0 {
            continue;
        }
        // A non-negative whole number well below 2^53.
        let count = k as u64;
        if us >= 0.07 && v <= v_r {
            return count;
        }
        if us < 0.013 && v > us {
            continue;
        }
        let lhs = (v * inv_alpha / (a / (us * us) + b)).ln();
        if lhs <= -mean + k * log_mean - ln_factorial(k) {
            return count;
        }
    }
}

/// ln(k!) for a whole number k >= 0: exact below 10, Stirling's series above.
pub(crate) fn ln_factorial(k: f64) -> f64 {
    if k < 10.0 {
        let mut sum = 0.0;
        let mut i = 2.0;
        while i <= k {
            sum += f64::ln(i);
            i += 1.0;
        }
        return sum;
    }
    let k2 = k * k;
    k * k.ln() - k + 0.5 * (2.0 * std::f64::consts::PI * k).ln() + 1.0 / (12.0 * k)
        - 1.0 / (360.0 * k2 * k)
        + 1.0 / (1260.0 * k2 * k2 * k)
}

/// Entries to draw in proportion to a weight that changes as they come
/// and go (users away, drawn by engagement).
///
/// Entries are grouped in buckets of `BUCKET` neighbours: a draw picks a
/// bucket in proportion to its total weight (a Fenwick tree over the
/// buckets, small enough to stay in cache), then an entry of the bucket
/// by rejection against the bucket's largest weight. That is exact for any
/// weights, and fast when neighbours weigh about the same (users are
/// numbered in order of engagement). Weights are whole numbers, so a
/// weight set back to zero is exactly zero after millions of changes.
#[derive(Clone, Debug)]
pub(crate) struct WeightedSet {
    weight: Vec<u64>,
    /// Each bucket's total, and the largest weight any of its entries has
    /// had.
    bucket_total: Vec<u64>,
    bucket_max: Vec<u64>,
    /// Partial sums of the bucket totals, 1-based.
    tree: Vec<u64>,
    total: u64,
    /// The largest power of two not above the number of buckets.
    top: usize,
}

/// Entries per bucket.
const BUCKET: usize = 512;

impl WeightedSet {
    /// A set holding every entry with its weight.
    pub(crate) fn new(weights: Vec<u64>) -> Self {
        let buckets = weights.len().div_ceil(BUCKET);
        let mut bucket_total = vec![0u64; buckets];
        let mut bucket_max = vec![0u64; buckets];
        for (i, &w) in weights.iter().enumerate() {
            if let (Some(total), Some(max)) = (
                bucket_total.get_mut(i / BUCKET),
                bucket_max.get_mut(i / BUCKET),
            ) {
                *total += w;
                *max = (*max).max(w);
            }
        }
        let mut set = Self {
            total: 0,
            top: if buckets == 0 {
                0
            } else {
                1usize << buckets.ilog2()
            },
            tree: vec![0u64; buckets + 1],
            bucket_total: vec![0; buckets],
            bucket_max,
            weight: weights,
        };
        for (b, total) in bucket_total.into_iter().enumerate() {
            set.add_to_bucket(b, total);
        }
        set
    }

    fn add_to_bucket(&mut self, bucket: usize, delta: u64) {
        if let Some(total) = self.bucket_total.get_mut(bucket) {
            *total = total.wrapping_add(delta);
        }
        self.total = self.total.wrapping_add(delta);
        let mut i = bucket + 1;
        while let Some(slot) = self.tree.get_mut(i) {
            *slot = slot.wrapping_add(delta);
            i += i & i.wrapping_neg();
        }
    }

    /// Sets an entry's weight (0 takes it out of the draw).
    pub(crate) fn set(&mut self, index: usize, weight: u64) {
        let Some(old) = self.weight.get_mut(index) else {
            return;
        };
        let delta = weight.wrapping_sub(*old);
        *old = weight;
        let bucket = index / BUCKET;
        if let Some(max) = self.bucket_max.get_mut(bucket) {
            *max = (*max).max(weight);
        }
        self.add_to_bucket(bucket, delta);
    }

    /// The sum of all weights.
    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// One entry, drawn in proportion to its weight; None if all are 0.
    pub(crate) fn draw(&self, rng: &mut SimRng) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let mut rest = rng.random_range(0..self.total);
        let mut position = 0usize;
        let mut step = self.top;
        while step > 0 {
            let next = position + step;
            if let Some(&sum) = self.tree.get(next)
                && sum <= rest
            {
                position = next;
                rest -= sum;
            }
            step >>= 1;
        }
        let bucket = position;
        let first = bucket * BUCKET;
        let last = (first + BUCKET).min(self.weight.len());
        let max = self.bucket_max.get(bucket).copied().unwrap_or(0);
        if first >= last || max == 0 {
            return None;
        }
        // Rejection: accept an entry with probability weight / max. A
        // bucket that is nearly empty could take long: after many misses,
        // draw from its entries directly.
        for _ in 0..64 * BUCKET {
            let i = rng.random_range(first..last);
            let w = self.weight.get(i).copied().unwrap_or(0);
            if w > 0 && rng.random_range(0..max) < w {
                return Some(i);
            }
        }
        let total = self.bucket_total.get(bucket).copied().unwrap_or(0);
        if total == 0 {
            return None;
        }
        let mut pick = rng.random_range(0..total);
        for i in first..last {
            let w = self.weight.get(i).copied().unwrap_or(0);
            if pick < w {
                return Some(i);
            }
            pick -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_and_variance(samples: &[u64]) -> (f64, f64) {
        let n = samples.len() as f64;
        let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = samples
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var)
    }

    #[test]
    fn poisson_counts_have_their_mean_and_variance() {
        let mut rng = rng(7, Stream::Traffic);
        for mean in [0.3, 5.0, 11.9, 12.0, 80.0, 5000.0] {
            let samples: Vec<u64> = (0..40_000).map(|_| poisson(&mut rng, mean)).collect();
            let (m, v) = mean_and_variance(&samples);
            assert!((m - mean).abs() < 0.03 * mean + 0.02, "mean {mean}: {m}");
            assert!(
                (v - mean).abs() < 0.08 * mean + 0.05,
                "variance {mean}: {v}"
            );
        }
        assert_eq!(poisson(&mut rng, 0.0), 0);
        assert_eq!(poisson(&mut rng, -1.0), 0);
        assert_eq!(poisson(&mut rng, f64::NAN), 0);
    }

    #[test]
    fn ln_factorial_is_close_on_both_sides_of_the_switch() {
        let exact = |k: u32| (2..=k).map(|i| (i as f64).ln()).sum::<f64>();
        for k in [0u32, 1, 2, 9, 10, 11, 50, 170] {
            assert!((ln_factorial(f64::from(k)) - exact(k)).abs() < 1e-9, "{k}");
        }
    }

    #[test]
    fn weighted_draws_follow_the_weights_and_zero_is_never_drawn() {
        let mut set = WeightedSet::new(vec![1, 0, 3, 6, 0]);
        assert_eq!(set.total(), 10);
        let mut rng = rng(3, Stream::Traffic);
        let mut counts = [0u32; 5];
        for _ in 0..100_000 {
            counts[set.draw(&mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        assert_eq!(counts[4], 0);
        assert!((f64::from(counts[3]) / 1e5 - 0.6).abs() < 0.01);
        set.set(3, 0);
        set.set(1, 2);
        assert_eq!(set.total(), 6);
        for _ in 0..10_000 {
            assert_ne!(set.draw(&mut rng), Some(3));
        }
        for i in 0..5 {
            set.set(i, 0);
        }
        assert_eq!(set.draw(&mut rng), None);
    }

    #[test]
    fn draws_across_buckets_follow_uneven_weights() {
        // Three buckets and a bit; weights uneven within buckets.
        let n = 3 * BUCKET + 100;
        let weights: Vec<u64> = (0..n).map(|i| 1 + (i % 7) as u64 * 10).collect();
        let total: u64 = weights.iter().sum();
        let mut set = WeightedSet::new(weights.clone());
        let mut rng = rng(5, Stream::Traffic);
        let mut by_class = [0u64; 7];
        let draws = 300_000;
        for _ in 0..draws {
            by_class[set.draw(&mut rng).unwrap() % 7] += 1;
        }
        for (class, &drawn) in by_class.iter().enumerate() {
            let weight: u64 = weights
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 7 == class)
                .map(|(_, w)| w)
                .sum();
            let expected = weight as f64 / total as f64;
            let got = drawn as f64 / draws as f64;
            assert!(
                (got - expected).abs() < 0.01,
                "class {class}: {got} vs {expected}"
            );
        }
        // Empty all but one entry of a bucket: still found.
        for i in 0..n {
            if i != BUCKET + 3 {
                set.set(i, 0);
            }
        }
        for _ in 0..100 {
            assert_eq!(set.draw(&mut rng), Some(BUCKET + 3));
        }
    }
}
