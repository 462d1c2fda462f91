//! Fixtures shared by this crate's integration tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_crypto::Identity;

/// Three identities from fixed seeds, generated once per test binary.
pub struct People {
    pub alice: Identity,
    pub bob: Identity,
    pub carol: Identity,
}

pub fn people() -> &'static People {
    static PEOPLE: OnceLock<People> = OnceLock::new();
    PEOPLE.get_or_init(|| {
        let make = |seed: u8| {
            Identity::generate_from_rng(&mut ChaCha20Rng::from_seed([seed; 32])).unwrap()
        };
        People {
            alice: make(1),
            bob: make(2),
            carol: make(3),
        }
    })
}

/// A seeded RNG; each call gives a different stream, so two sessions made in
/// one test never share keys or ids.
pub fn rng() -> ChaCha20Rng {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    ChaCha20Rng::seed_from_u64(NEXT.fetch_add(1, Ordering::Relaxed))
}
