//! The replay and order window (P5).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How far behind the newest sequence number a late message is still
/// accepted.
pub const REPLAY_WINDOW: u64 = 128;

/// Where an accepted message falls in the sender's sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than anything seen; `missing` numbers were skipped on the way
    /// (show "N messages missing" if they never arrive).
    Newest {
        /// Sequence numbers between the previous newest and this one.
        missing: u64,
    },
    /// Fills an earlier gap: it arrived out of order; place it by its
    /// sequence number.
    Late,
}

/// Record of the sequence numbers seen from one sender in one conversation,
/// kept per receiving session and started at the session's `first_seq`:
/// rejects duplicates and anything older than the window, reports gaps.
/// (A sender's numbers keep growing across its sessions, so numbers skipped
/// between two sessions, after a crash, are not counted as missing.)
///
/// Apply it only to messages that opened: forged messages must not move it.
/// It serializes (with serde) so a client can keep it with the session it
/// belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayWindow {
    /// One past the newest sequence number accepted.
    top: u64,
    /// Bit `i` set: `top - 1 - i` was accepted (or lies before the start).
    seen: u128,
}

impl ReplayWindow {
    /// A window that expects `first_seq` next (from the session
    /// announcement) and refuses everything before it.
    pub fn starting_at(first_seq: u64) -> Self {
        Self {
            top: first_seq,
            seen: u128::MAX,
        }
    }

    /// One past the newest sequence number accepted.
    pub fn next_expected(&self) -> u64 {
        self.top
    }

    /// Records `seq`, or refuses it as a duplicate or as too old, with the
    /// same opaque [`Error::DecryptionFailed`] as every other failed check.
    pub fn accept(&mut self, seq: u64) -> Result<Arrival> {
        if seq >= self.top {
            let top = seq.checked_add(1).ok_or(Error::DecryptionFailed)?;
            let missing = seq - self.top;
            let shift = missing.saturating_add(1);
            self.seen = if shift >= 128 { 0 } else { self.seen << shift } | 1;
            self.top = top;
            return Ok(Arrival::Newest { missing });
        }
        let age = self.top - 1 - seq;
        if age >= REPLAY_WINDOW {
            return Err(Error::DecryptionFailed);
        }
        let bit = 1u128 << age;
        if self.seen & bit != 0 {
            return Err(Error::DecryptionFailed);
        }
        self.seen |= bit;
        Ok(Arrival::Late)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_messages_have_no_gaps() {
        let mut w = ReplayWindow::starting_at(5);
        for seq in 5..300 {
            assert_eq!(w.accept(seq).unwrap(), Arrival::Newest { missing: 0 });
        }
    }

    #[test]
    fn replayed_sequence_number_is_rejected() {
        let mut w = ReplayWindow::starting_at(0);
        w.accept(0).unwrap();
        w.accept(1).unwrap();
        assert!(w.accept(1).is_err());
        assert!(w.accept(0).is_err());
    }

    #[test]
    fn numbers_before_the_session_start_are_rejected() {
        let mut w = ReplayWindow::starting_at(10);
        assert!(w.accept(9).is_err());
        assert!(w.accept(0).is_err());
        assert_eq!(w.accept(10).unwrap(), Arrival::Newest { missing: 0 });
    }

    #[test]
    fn gap_is_reported_then_filled_once() {
        let mut w = ReplayWindow::starting_at(0);
        w.accept(0).unwrap();
        assert_eq!(w.accept(4).unwrap(), Arrival::Newest { missing: 3 });
        assert_eq!(w.accept(2).unwrap(), Arrival::Late);
        assert!(
            w.accept(2).is_err(),
            "a late message replayed is still a replay"
        );
        assert_eq!(w.accept(1).unwrap(), Arrival::Late);
        assert_eq!(w.accept(5).unwrap(), Arrival::Newest { missing: 0 });
    }

    #[test]
    fn reordered_older_than_window_is_rejected() {
        let mut w = ReplayWindow::starting_at(0);
        w.accept(0).unwrap();
        w.accept(REPLAY_WINDOW + 1).unwrap();
        assert!(w.accept(1).is_err());
        assert_eq!(w.accept(2).unwrap(), Arrival::Late);
    }

    #[test]
    fn huge_jump_does_not_overflow() {
        let mut w = ReplayWindow::starting_at(0);
        assert_eq!(
            w.accept(u64::MAX - 1).unwrap(),
            Arrival::Newest {
                missing: u64::MAX - 1
            }
        );
        assert!(w.accept(u64::MAX - 1).is_err());
        assert!(w.accept(u64::MAX).is_err(), "top cannot pass u64::MAX");
    }
}
