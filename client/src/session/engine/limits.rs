//! The bounds on what a session keeps and accepts: every limit the engine
//! applies is a field of [`SessionLimits`], with its default in its doc.
//! Protocol constants (the replay window, the longest message, session
//! ages) are not tunable and live in `sotto-crypto`.

use std::time::Duration;

/// How often expired receiving sessions are deleted (at the first tick,
/// then at this interval).
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// Bounds on what the session keeps and accepts.
///
/// Each field's doc gives its default ([`SessionLimits::default`]). Lower
/// bounds cost less memory and CPU under a flood; higher ones lose less
/// when a relay or a peer is merely slow.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Session announcements accepted from one sender in a burst.
    /// Default: 20.
    pub announcement_burst: u32,
    /// ...refilled at one per this interval. Default: 3 s.
    pub announcement_refill: Duration,
    /// Messages kept while waiting for the announcement that opens them,
    /// all senders together. Default: 512.
    pub held_messages: usize,
    /// How long such a message waits before it is given up. Default: 120 s.
    pub held_for: Duration,
    /// Receiving sessions kept per sender and conversation (older ones are
    /// forgotten, and their late messages with them). Default: 4 (at least
    /// 1 is always kept).
    pub kept_sessions: usize,
    /// A message's member set is compared with the rosters this client saw
    /// this recently (joins and leaves race with messages). Default: 10 s.
    pub roster_grace: Duration,
    /// ...and with at most this many of them per room (the oldest are
    /// forgotten first). Default: 16.
    pub roster_views: usize,
    /// During a burst of presence changes, the digest of a member set that
    /// was current for less than this (or, in a large room, for less than
    /// [`view_per_member`](Self::view_per_member) per member) is not
    /// computed, and a message sealed to exactly that set may then be
    /// reported as a roster mismatch: computing a digest costs the size of
    /// the room, so it is not done for every event. Default: 100 ms.
    pub view_interval: Duration,
    /// See [`view_interval`](Self::view_interval). Default: 100 µs.
    pub view_per_member: Duration,
    /// The whole member list of a room goes to the front end at most this
    /// often while presence keeps changing it (each change is also its own
    /// small `Update::Presence`); in a large room, at most once per
    /// [`member_list_per_member`](Self::member_list_per_member) times its
    /// size (with the defaults, in rooms of more than 20,000 members),
    /// since building the list costs the size of the room. Default: 1 s.
    pub member_list_interval: Duration,
    /// See [`member_list_interval`](Self::member_list_interval).
    /// Default: 50 µs.
    pub member_list_per_member: Duration,
    /// Messages queued while disconnected. Default: 256.
    pub outbox: usize,
    /// Direct messages typed to one peer while its key is being looked up.
    /// Default: 64.
    pub texts_awaiting_key: usize,
    /// Deliveries from one sender kept while its key is being looked up
    /// (more are rejected). Default: 64.
    pub deliveries_awaiting_key: usize,
    /// Deliveries from one sender, under the changed key the user has not
    /// decided on yet, kept until the decision (more are rejected).
    /// Default: 256.
    pub deliveries_awaiting_trust: usize,
    /// Messages sent whose relay answer (`Sent` or `Error`) is still
    /// awaited, kept to name the chat of a failure (the oldest are forgotten
    /// first). Default: 4,096.
    pub tracked_sends: usize,
    /// Recently parsed peer identities kept, by their bytes, so presence
    /// floods that repeat a key cost no parsing. Default: 16.
    pub parsed_keys: usize,
    /// Per chat and sender, the sequence numbers whose place in the chat is
    /// remembered to place late messages (the oldest are forgotten first).
    /// Default: twice `sotto_crypto::REPLAY_WINDOW` (256): a message older
    /// than the window is dropped anyway.
    pub placed_per_sender: usize,
    /// After `Quit`, how long the session waits for messages still queued
    /// to be sent before it stops anyway. Default: 10 s.
    pub quit_wait: Duration,
    /// Updates waiting for the front end (the session's channel to it).
    /// When it is full the session stops reading from the relay until the
    /// front end catches up (so a flood waits in the relay's bounded queue
    /// for this client, not in this client's memory), except that presence
    /// notices are dropped instead (the member lists carry the same facts)
    /// and a member list that finds it full waits beside it, newest per
    /// room only.
    /// Default: 1,024.
    pub updates: usize,
    /// Frames from the relay handled as one store batch: after a frame
    /// arrives, the session also takes those already received (without
    /// waiting for more), up to this many in all, stores everything they
    /// carry in one durable commit, and only then acknowledges them and
    /// shows their messages. Higher costs fewer disk flushes per message;
    /// a batch that cannot be stored is reported once and comes again.
    /// Default: 256 (at least 1 is always taken).
    pub read_batch: usize,
    /// Signature checks of announcements, all senders together, in a burst
    /// (each costs one RSA public-key operation, about 0.15 ms). This, not
    /// the per-sender allowance, bounds what forgeries cost: a sender's
    /// allowance is charged only for announcements its key signed.
    /// Default: 2,000.
    pub verification_burst: u32,
    /// ...refilled at this many per second. Default: 500.
    pub verifications_per_second: u32,
    /// Time limits on every network step (connect, TLS handshake, the
    /// relay's answers, writes) and the dead-connection bound. Default:
    /// `Timeouts::default()` (see docs/protocol.md, section 23).
    pub network: crate::tls::Timeouts,
    /// How long after its last message in a conversation a client tells
    /// the conversation its newest sequence number again (a heartbeat,
    /// protocol.md 13.8), if some recipient has not sent a receipt for
    /// that message by then: a relay withholding the end of a
    /// conversation then shows as a gap to the recipients within about
    /// this long, and the heartbeat is repeated at twice the interval, up
    /// to 3 times. Default: 20 s.
    pub heartbeat: Duration,
    /// How long a message waits for its session's announcement before
    /// this client asks the sender for it again (a key request,
    /// protocol.md 13.8); also the least time between two announcements
    /// sent again to one member on request. Default: 5 s.
    pub key_request: Duration,
    /// How long to wait before reconnecting after a lost connection or a
    /// failed attempt. Default: `Backoff::default()` (0.5 s doubling up to
    /// 60 s, with jitter; see docs/protocol.md, section 23).
    pub reconnect: crate::backoff::Backoff,
    /// After disappearing messages are deleted, the store is compacted
    /// (so that they leave the file) at most once per this interval: the
    /// first time at once, later deletions wait out the rest of it and
    /// share one compaction. Compaction rewrites the live part of the
    /// database, so it is not run after every deletion. Default: 60 s.
    pub compact_every: Duration,
    /// Where this client's prekey key pairs come from. Default:
    /// [`PrekeySource::Fresh`](crate::session::PrekeySource::Fresh), a
    /// fresh RSA-3072 key for every prekey; only tests use a pool.
    pub prekeys: crate::session::PrekeySource,
    /// The clock the session reads. Default: the system's; only tests move
    /// it ([`Clock::advance`](crate::session::Clock::advance)).
    pub clock: crate::session::Clock,
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
            roster_views: 16,
            view_interval: Duration::from_millis(100),
            view_per_member: Duration::from_micros(100),
            member_list_interval: Duration::from_secs(1),
            member_list_per_member: Duration::from_micros(50),
            outbox: 256,
            texts_awaiting_key: 64,
            deliveries_awaiting_key: 64,
            deliveries_awaiting_trust: 256,
            tracked_sends: 4096,
            parsed_keys: 16,
            #[allow(
                clippy::cast_possible_truncation,
                reason = "REPLAY_WINDOW is 128: it fits in any usize"
            )]
            placed_per_sender: 2 * sotto_crypto::REPLAY_WINDOW as usize,
            quit_wait: Duration::from_secs(10),
            verification_burst: 2000,
            verifications_per_second: 500,
            updates: 1024,
            read_batch: 256,
            network: crate::tls::Timeouts::default(),
            heartbeat: Duration::from_secs(20),
            key_request: Duration::from_secs(5),
            reconnect: crate::backoff::Backoff::default(),
            compact_every: Duration::from_secs(60),
            prekeys: crate::session::PrekeySource::Fresh,
            clock: crate::session::Clock::default(),
        }
    }
}

impl SessionLimits {
    /// How often a room of `members` members gets its whole member list
    /// while presence keeps changing it.
    pub(super) fn member_list_every(&self, members: usize) -> Duration {
        scaled(
            self.member_list_interval,
            self.member_list_per_member,
            members,
        )
    }

    /// How long a member set of a room of `members` members must have been
    /// current for its digest to be kept as a view, during a burst.
    pub(super) fn view_every(&self, members: usize) -> Duration {
        scaled(self.view_interval, self.view_per_member, members)
    }
}

/// `base`, or `per_member` times the room's size if that is longer.
fn scaled(base: Duration, per_member: Duration, members: usize) -> Duration {
    base.max(per_member.saturating_mul(u32::try_from(members).unwrap_or(u32::MAX)))
}
