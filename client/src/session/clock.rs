//! The session's clock: the system's, plus an offset that tests move, so
//! that a client's days pass in a test's seconds (prekeys expiring and
//! deleted, sessions aging out). Products never move it.
//!
//! Each session runs on a thread of its own (`connection::spawn`), which
//! takes its clock from its [`SessionLimits`](super::SessionLimits) when it
//! starts; the engine reads the time only through [`now_ms`].

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A handle on a session's clock: the system time plus an offset.
/// Cloning shares the offset.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicU64>,
}

impl Clock {
    /// Moves this clock `by` ahead of the system's (tests only: a client
    /// whose clock runs ahead sees its prekeys expire, its sessions age).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ahead_ms.fetch_add(by, Ordering::Relaxed);
    }

    /// Milliseconds since the Unix epoch on this clock.
    pub fn now_ms(&self) -> u64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        system.saturating_add(self.ahead_ms.load(Ordering::Relaxed))
    }
}

thread_local! {
    static CURRENT: RefCell<Clock> = RefCell::new(Clock::default());
}

/// Makes `clock` the one this thread's session reads.
pub(crate) fn use_on_this_thread(clock: Clock) {
    CURRENT.with(|current| *current.borrow_mut() = clock);
}

/// Milliseconds since the Unix epoch on this thread's session clock.
pub(crate) fn now_ms() -> u64 {
    CURRENT.with(|current| current.borrow().now_ms())
}
