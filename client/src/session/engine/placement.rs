//! Where a message goes in its chat: in arrival order, except that a late
//! message is placed just before its sender's next one (protocol.md 17.4).

use sotto_crypto::Fingerprint;

use super::Engine;
use crate::session::Chat;
use crate::store::Position;

impl Engine {
    /// Where a message goes on screen: in arrival order, except that a late
    /// message is placed just before its sender's next message (17.4).
    pub(super) fn place(
        &mut self,
        chat: &Chat,
        sender: Fingerprint,
        seq: u64,
        late: bool,
    ) -> Position {
        if late
            && let Some(placed) = self.placed.get(&(chat.clone(), sender))
            && let Some((next_seq, anchor)) = placed.range(seq + 1..).next()
        {
            let distance = u32::try_from(next_seq - seq)
                .unwrap_or(u32::MAX)
                .min(Position::IN_ORDER);
            return Position {
                anchor: *anchor,
                rank: Position::IN_ORDER - distance,
            };
        }
        self.arrival += 1;
        Position {
            anchor: self.arrival,
            rank: Position::IN_ORDER,
        }
    }

    pub(super) fn remember_place(
        &mut self,
        chat: &Chat,
        sender: Fingerprint,
        seq: u64,
        anchor: u64,
    ) {
        let limit = self.limits.placed_per_sender;
        let placed = self.placed.entry((chat.clone(), sender)).or_default();
        placed.insert(seq, anchor);
        while placed.len() > limit {
            placed.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[tokio::test]
    async fn gaps_duplicates_and_late_messages_follow_the_senders_order() {
        let alice = fixture("alice");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        assert!(feed(&mut engine, announce(&bob.announcement)).is_empty());
        let sealed: Vec<SealedMessage> = (0..4).map(|i| bob.seal(&format!("m{i}"))).collect();

        let first = feed(&mut engine, deliver(&sealed[0], lobby()));
        assert_eq!(messages(&first)[0].text, "m0");
        // m3 before m1 and m2: two missing, reported once.
        let third = feed(&mut engine, deliver(&sealed[3], lobby()));
        assert!(
            matches!(third[0], Update::Missing { count: 2, .. }),
            "{third:?}"
        );
        let m3 = messages(&third)[0].clone();
        // m1 late: placed before m3, not after it.
        let late = feed(&mut engine, deliver(&sealed[1], lobby()));
        let m1 = messages(&late)[0].clone();
        assert!(m1.late && m1.position < m3.position, "{m1:?} {m3:?}");
        // A duplicate is dropped without a word.
        assert!(feed(&mut engine, deliver(&sealed[1], lobby())).is_empty());
        assert!(feed(&mut engine, deliver(&sealed[0], lobby())).is_empty());
        let late = feed(&mut engine, deliver(&sealed[2], lobby()));
        let m2 = messages(&late)[0].clone();
        assert!(m1.position < m2.position && m2.position < m3.position);
        // On screen, sorted by position: the sender's order.
        let mut shown = [&m3, &m1, &m2];
        shown.sort_by_key(|m| m.position);
        assert_eq!(shown.map(|m| m.seq), [1, 2, 3]);
    }
}
