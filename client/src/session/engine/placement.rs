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

    /// Positions of the messages in `updates`, by text.
    fn placed(updates: &[Update]) -> Vec<(String, (u64, u32), bool)> {
        messages(updates)
            .into_iter()
            .map(|m| (m.text.clone(), m.position, m.late))
            .collect()
    }

    #[tokio::test]
    async fn a_late_message_goes_before_its_senders_next_one_and_stays_there_after_a_restart() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let mut bob = Bob::start(bob_identity.clone(), alice.public(), 1, 0);
        let dir = tempfile::tempdir().unwrap();
        let account = alice_account(dir.path()).await;
        {
            let (mut engine, _) =
                alice_in_lobby_with(&account, &bob_identity, SessionLimits::default());
            feed(&mut engine, announce(&bob.announcement));
            let sealed: Vec<SealedMessage> = ["b0", "b1", "b2"].map(|t| bob.seal(t)).into();
            let mut shown = Vec::new();
            shown.extend(placed(&feed(&mut engine, deliver(&sealed[0], lobby()))));
            shown.extend(placed(&feed(&mut engine, deliver(&sealed[2], lobby()))));
            let mut out = Out::default();
            engine.handle_command(send(lobby_chat(), "mine"), &mut out);
            shown.extend(placed(&out.updates));
            // b1 comes last, and is shown before b2 (its sender's next one),
            // not after alice's own message.
            let late = placed(&feed(&mut engine, deliver(&sealed[1], lobby())));
            assert!(late[0].2, "{late:?}");
            shown.extend(late);
            shown.sort_by_key(|(_, position, _)| *position);
            let order: Vec<&str> = shown.iter().map(|(t, _, _)| t.as_str()).collect();
            assert_eq!(order, ["b0", "b1", "b2", "mine"]);
        }
        // The stored history keeps that order.
        let (_, history) = alice_in_lobby_with(&account, &bob_identity, SessionLimits::default());
        assert_eq!(history_texts(&history), ["b0", "b1", "b2", "mine"]);
    }

    #[tokio::test]
    async fn where_late_messages_go_is_remembered_for_placed_per_sender_messages() {
        let alice = fixture("alice");
        for (limit, expected) in [
            (
                SessionLimits::default().placed_per_sender,
                ["b0", "b1", "b2", "b3", "b4"],
            ),
            // b2's place is forgotten: b1 goes before b3, the next one known.
            (2, ["b0", "b2", "b1", "b3", "b4"]),
        ] {
            let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
            let limits = SessionLimits {
                placed_per_sender: limit,
                ..SessionLimits::default()
            };
            let (mut engine, _dir) = alice_with_bob_limits(&bob.identity, limits).await;
            feed(&mut engine, announce(&bob.announcement));
            let sealed: Vec<SealedMessage> = (0..5).map(|i| bob.seal(&format!("b{i}"))).collect();
            let mut shown = Vec::new();
            for i in [0, 2, 3, 4, 1] {
                shown.extend(placed(&feed(&mut engine, deliver(&sealed[i], lobby()))));
            }
            shown.sort_by_key(|(_, position, _)| *position);
            let order: Vec<&str> = shown.iter().map(|(t, _, _)| t.as_str()).collect();
            assert_eq!(order, expected, "placed_per_sender {limit}");
        }
    }
}
