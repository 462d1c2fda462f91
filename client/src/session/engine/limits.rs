//! The bounds on what a session keeps and accepts, with their defaults.

use std::time::Duration;

/// Bounds on what the session keeps and accepts.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Session announcements accepted from one sender in a burst.
    pub announcement_burst: u32,
    /// ...refilled at one per this interval.
    pub announcement_refill: Duration,
    /// Messages kept while waiting for the announcement that opens them.
    pub held_messages: usize,
    /// How long such a message waits before it is given up.
    pub held_for: Duration,
    /// Receiving sessions kept per sender and conversation (older ones are
    /// forgotten, and their late messages with them).
    pub kept_sessions: usize,
    /// A message's member set is compared with the rosters this client saw
    /// this recently (joins and leaves race with messages).
    pub roster_grace: Duration,
    /// Messages queued while disconnected.
    pub outbox: usize,
    /// Updates waiting for the front end (the session's channel to it).
    /// When it is full the session stops reading from the relay until the
    /// front end catches up (so a flood waits in the relay's bounded queue
    /// for this client, not in this client's memory), except that presence
    /// notices are dropped instead: the member lists carry the same facts.
    pub updates: usize,
    /// Signature checks of announcements, all senders together, in a burst
    /// (each costs one RSA public-key operation, about 0.15 ms). This, not
    /// the per-sender allowance, bounds what forgeries cost: a sender's
    /// allowance is charged only for announcements its key signed.
    pub verification_burst: u32,
    /// ...refilled at this many per second.
    pub verifications_per_second: u32,
    /// Time limits on every network step (connect, TLS handshake, the
    /// relay's answers, writes) and the dead-connection bound.
    pub network: crate::tls::Timeouts,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            announcement_burst: 20,
            announcement_refill: Duration::from_secs(3),
            held_messages: 512,
            held_for: Duration::from_secs(120),
            kept_sessions: 4,
            roster_grace: Duration::from_secs(10),
            outbox: 256,
            verification_burst: 2000,
            verifications_per_second: 500,
            updates: 1024,
            network: crate::tls::Timeouts::default(),
        }
    }
}
