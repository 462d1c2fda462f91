//! Frames read together, stored together: every record the frames of one
//! read batch produce (messages, receiving sessions and their windows,
//! counters, pins) goes into one [`StoreBatch`], committed durably once;
//! only then do the batch's acknowledgements and receipts leave and its
//! messages show (P13: nothing acknowledged is lost).

use sotto_proto::{ClientFrame, RelayFrame};

use super::{Engine, Out};
use crate::session::{Problem, ProblemCode, Update};
use crate::store::StoreBatch;

/// What a failed batch commit means to the user: nothing of it was kept,
/// and the relay delivers the stored deliveries again.
pub(crate) fn batch_not_stored(error: &crate::store::StoreError) -> String {
    format!("could not store what the relay delivered (it will come again): {error}")
}

impl Engine {
    /// Handles `frames` (read together from the relay, in order) as one
    /// store batch, and puts in `out` what they produced once the batch is
    /// durably committed.
    ///
    /// If the commit fails, nothing of the batch is on disk: its
    /// acknowledgements and the updates about its deliveries (messages,
    /// gaps, rejections, deliveries not for this client) are discarded and
    /// one error is reported instead, the engine forgets what it holds in
    /// memory of the store (receiving sessions are read again; contacts
    /// are saved again at the next tick), and the relay delivers what it
    /// stored again, unacknowledged. Messages the batch released for
    /// sending (texts that waited for a key, the outbox after a rejoin) are
    /// not sent either: neither their record in this user's history nor a
    /// sequence counter reservation they may have used is durable (the
    /// write-ahead rule: nothing is sent under a number that was not
    /// reserved durably); each is reported not sent, with its
    /// conversation. The batch's other frames (answers to pings, key
    /// lookups) and updates (member lists, presence, key events, errors)
    /// report nothing about storage and still go out.
    pub(crate) fn handle_frames(
        &mut self,
        frames: impl IntoIterator<Item = RelayFrame>,
        out: &mut Out,
    ) {
        let batch: StoreBatch = match self.store.batch() {
            Ok(batch) => batch,
            Err(e) => {
                // Not even a batch: nothing of these frames is handled, so
                // nothing is acknowledged.
                out.error(ProblemCode::Storage, batch_not_stored(&e));
                return;
            }
        };
        let mut produced = Out::default();
        for frame in frames {
            self.on_frame(frame, &mut produced);
        }
        match batch.commit() {
            Ok(()) => {
                out.frames.append(&mut produced.frames);
                out.updates.append(&mut produced.updates);
                // Stored now: their senders may hear so.
                self.send_receipts(out);
            }
            Err(e) => {
                self.receipts_due.clear();
                self.inbound.clear();
                // Sending state is read again too: a session started in
                // this batch was never announced (its announcements are not
                // sent), and its epoch and counter reservation are not on
                // disk; the next message starts a new session from what is.
                self.outbound.clear();
                self.unsaved_contacts
                    .extend(self.contacts.iter().map(|c| c.name.key()));
                out.frames.extend(
                    produced.frames.into_iter().filter(|f| {
                        !matches!(f, ClientFrame::Ack { .. } | ClientFrame::Send { .. })
                    }),
                );
                for update in produced.updates {
                    match update {
                        Update::Message(message) if message.outgoing => out.problem(
                            Problem::new(
                                ProblemCode::Storage,
                                format!("{}: not sent: could not store it: {e}", message.chat),
                            )
                            .unsent(message.chat, 1),
                        ),
                        update if about_delivery(&update) => {}
                        update => out.updates.push(update),
                    }
                }
                out.error(ProblemCode::Storage, batch_not_stored(&e));
            }
        }
    }
}

/// Whether `update` reports a delivery (which comes again when its batch
/// was not stored).
fn about_delivery(update: &Update) -> bool {
    match update {
        Update::Message(message) => !message.outgoing,
        Update::Missing { .. } | Update::Rejected { .. } | Update::NotForYou { .. } => true,
        // A member's change of a timer (its delivery comes again).
        Update::Timer { by, .. } => by.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    /// Bob's announcement (stored delivery 1) and `count` messages in the
    /// lobby (stored deliveries 2..), all of one session.
    fn a_burst(bob: &mut Bob, count: u64) -> Vec<RelayFrame> {
        let mut frames = vec![announce_stored(&bob.announcement, 1)];
        for n in 0..count {
            let sealed = bob.seal(&format!("m{n}"));
            frames.push(stored(deliver(&sealed, lobby()), n + 2));
        }
        frames
    }

    fn acks(out: &Out) -> Vec<u64> {
        out.frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Ack { delivery } => Some(*delivery),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_read_batch_is_one_commit_and_is_acknowledged_only_once_committed() {
        let alice = fixture("alice");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        let frames = a_burst(&mut bob, 8);
        let vault = engine.store.vault();
        let before = vault.commits();

        // The commit fails: nothing acknowledged, no message shown, one
        // error, nothing on disk.
        engine.store.vault().fail_commits(true);
        let mut out = Out::default();
        engine.handle_frames(frames.clone(), &mut out);
        assert_eq!(acks(&out), Vec::<u64>::new());
        assert!(messages(&out.updates).is_empty(), "{:?}", out.updates);
        assert_eq!(
            codes(&out.updates),
            [crate::session::ProblemCode::Storage],
            "{:?}",
            out.updates
        );
        assert_eq!(engine.store.vault().commits(), before);
        assert!(engine.store.history().unwrap().entries.is_empty());

        // The relay delivers them again: the same batch, now committed
        // once, every message of the one session stored (each found the
        // window its predecessor in the batch left) and every delivery
        // acknowledged, in order.
        engine.store.vault().fail_commits(false);
        let mut out = Out::default();
        engine.handle_frames(frames.clone(), &mut out);
        assert_eq!(acks(&out), (1..=9).collect::<Vec<u64>>());
        let texts: Vec<&str> = messages(&out.updates)
            .iter()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(texts, (0..8).map(|n| format!("m{n}")).collect::<Vec<_>>());
        assert!(errors(&out.updates).is_empty(), "{:?}", out.updates);
        // One commit for the batch; then one receipt to bob for the eight,
        // in a new direct session: its epoch and its first reservation of
        // sequence numbers are two more. Before it, alice answered bob's
        // lobby announcement with a pair reply (no RSA, no signature).
        assert_eq!(engine.store.vault().commits(), before + 3);
        let receipts = out
            .frames
            .iter()
            .filter(|f| matches!(f, ClientFrame::Send { route, .. } if route.to == Destination::User(name("bob"))))
            .count();
        assert_eq!(
            receipts, 3,
            "a pair reply, an announcement and one receipt: {:?}",
            out.frames
        );
        let history = engine.store.history().unwrap();
        assert_eq!(history.entries.len(), 8);

        // Once more (a replay): acknowledged, nothing new shown or stored.
        let mut out = Out::default();
        engine.handle_frames(frames, &mut out);
        assert_eq!(acks(&out), (1..=9).collect::<Vec<u64>>());
        assert!(messages(&out.updates).is_empty(), "{:?}", out.updates);
        assert_eq!(engine.store.history().unwrap().entries.len(), 8);
    }

    #[tokio::test]
    async fn a_batch_that_stores_nothing_commits_nothing() {
        let alice = fixture("alice");
        let bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        let before = engine.store.vault().commits();
        let mut out = Out::default();
        engine.handle_frames(
            [RelayFrame::Ping { nonce: 7 }, RelayFrame::Ping { nonce: 8 }],
            &mut out,
        );
        assert_eq!(engine.store.vault().commits(), before);
        assert!(matches!(
            out.frames.as_slice(),
            [
                ClientFrame::Pong { nonce: 7 },
                ClientFrame::Pong { nonce: 8 }
            ]
        ));
    }

    #[tokio::test]
    async fn messages_a_failed_batch_released_are_not_sent_and_the_next_starts_a_new_session() {
        let bob = fixture("bob");
        let carol = fixture("carol");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let carol_key = RelayFrame::Key {
            name: name("carol"),
            identity: Some(carol.public().to_bytes().into()),
            prekeys: Vec::new(),
        };
        // A direct message to carol waits for her key...
        let out = command(&mut engine, send(Chat::Direct(name("carol")), "first"));
        assert!(
            matches!(&out.frames[..], [ClientFrame::LookupKey { .. }]),
            "{:?}",
            out.frames
        );
        // ...which comes in a batch whose commit fails: nothing is sent
        // (neither the announcement nor the message), and it says so.
        engine.store.vault().fail_commits(true);
        let mut out = Out::default();
        engine.handle_frames([carol_key.clone()], &mut out);
        assert!(
            !out.frames
                .iter()
                .any(|f| matches!(f, ClientFrame::Send { .. })),
            "{:?}",
            out.frames
        );
        assert!(
            errors(&out.updates)
                .iter()
                .any(|e| e.starts_with("@carol: not sent: could not store it")),
            "{:?}",
            out.updates
        );
        // Every error of the failed batch is this client's storage; the
        // one about the text answers its send.
        assert!(
            codes(&out.updates)
                .iter()
                .all(|c| *c == crate::session::ProblemCode::Storage),
            "{:?}",
            out.updates
        );
        assert!(
            out.updates.iter().any(|u| matches!(u, Update::Error(p)
            if p.answers == [crate::session::Answers::Sends {
                chat: Chat::Direct(name("carol")),
                count: 1,
            }])),
            "{:?}",
            out.updates
        );
        assert!(!out.updates.iter().any(|u| matches!(u, Update::Message(_))));
        // The next message goes under a new session, announced first.
        engine.store.vault().fail_commits(false);
        let out = command(&mut engine, send(Chat::Direct(name("carol")), "second"));
        let sends = out
            .frames
            .iter()
            .filter(|f| matches!(f, ClientFrame::Send { .. }))
            .count();
        assert_eq!(
            sends, 2,
            "an announcement, then the message: {:?}",
            out.frames
        );
    }
}
