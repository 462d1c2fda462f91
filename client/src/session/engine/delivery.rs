//! How far each message this client sent got, and the receipts that say
//! so: pending until the relay's `Sent` covers it, failed on its `Error`,
//! with the members the relay will not keep it for from `Undelivered`,
//! and delivered to each recipient whose receipt came (protocol.md 13.8).
//!
//! The other way, this client sends a receipt to a message's sender once
//! the message is durably stored (after its read batch's commit), in their
//! direct conversation, for every message stored in that batch (a copy
//! that came again counts too: its first receipt may have been lost).
//!
//! Also here: the heartbeat a conversation gets when this client's newest
//! message there is not receipted in time (so that a withheld tail shows
//! as a gap), and sending again, byte for byte, the messages whose `Sent`
//! never came (after a lost connection or a restart).

use std::collections::BTreeMap;
use std::time::Instant;

use sotto_crypto::{Conversation, Fingerprint};
use sotto_proto::{ErrorCode, UserKey, UserName};

use super::{Engine, Out};
use crate::session::content::{Content, Receipt};
use crate::session::{Chat, Delivery, DeliveryState, MessageId, Problem, ProblemCode, Update};
use crate::store::OutgoingRecord;

/// The most sequence numbers one receipt may mark delivered: a receipt
/// naming more (a wide range, from a buggy or hostile peer) is read up to
/// this many.
const RECEIPT_SEQS: usize = 4096;

/// What one send of this connection was, for the relay's answers.
#[derive(Clone, Debug)]
pub(crate) struct Sending {
    pub(super) chat: Chat,
    /// The message it carried (its conversation and sequence number); an
    /// announcement or a receipt carries none the user tracks.
    pub(super) message: Option<(Conversation, u64)>,
}

impl Sending {
    /// `problem`, about this send's message (sent by `me`) if it carried
    /// one, so that a front end marks that message.
    pub(super) fn about(&self, problem: Problem, me: Fingerprint) -> Problem {
        match &self.message {
            Some((_, seq)) => problem.about(
                self.chat.clone(),
                MessageId {
                    sender: me,
                    seq: *seq,
                },
            ),
            None => problem,
        }
    }
}

/// A conversation whose newest message of this client's is not receipted
/// by every recipient yet: when to tell it the newest number again.
#[derive(Clone, Debug)]
pub(crate) struct Heartbeat {
    chat: Chat,
    pub(super) seq: u64,
    due: Instant,
    sent: u32,
}

/// Heartbeats sent for one message at most (at 1, 2 and 4 intervals).
const HEARTBEATS: u32 = 3;

/// Receipts to send once the read batch that stored the messages commits:
/// per sender and conversation, the sender's name and the numbers stored.
#[derive(Debug, Default)]
pub(crate) struct ReceiptsDue(
    BTreeMap<(UserKey, ConversationKey), (UserName, Conversation, Vec<u64>)>,
);

/// A conversation as an ordered key (its encoding).
type ConversationKey = Vec<u8>;

impl ReceiptsDue {
    pub(super) fn add(&mut self, sender: &UserName, conversation: &Conversation, seq: u64) {
        let key = (
            sender.key(),
            postcard::to_stdvec(conversation).unwrap_or_default(),
        );
        self.0
            .entry(key)
            .or_insert_with(|| (sender.clone(), conversation.clone(), Vec::new()))
            .2
            .push(seq);
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

impl Delivery {
    /// The delivery a record describes, recipients named as then.
    pub(crate) fn of(record: &OutgoingRecord) -> Self {
        let state = match (record.state, &record.failed) {
            (2, Some((code, why))) => DeliveryState::Failed(Box::new(Problem::new(
                ProblemCode::Relay(*code),
                why.clone(),
            ))),
            // Not written: a failed record says why.
            (2, None) => DeliveryState::Failed(Box::new(Problem::new(
                ProblemCode::Relay(ErrorCode::Internal),
                "the relay refused it",
            ))),
            (1, _) => DeliveryState::Sent,
            _ => DeliveryState::Pending,
        };
        Self {
            state,
            recipients: record.recipients.iter().map(|(n, _)| n.clone()).collect(),
            delivered: record
                .recipients
                .iter()
                .filter(|(_, fp)| record.delivered.contains(fp))
                .map(|(n, _)| n.clone())
                .collect(),
            refused: record.refused.clone(),
        }
    }
}

impl Engine {
    /// Changes the record of message `seq` in `conversation` with `change`
    /// (which says whether it changed anything), stores it and tells the
    /// front end.
    fn update_outgoing(
        &mut self,
        conversation: &Conversation,
        seq: u64,
        out: &mut Out,
        change: impl FnOnce(&mut OutgoingRecord) -> bool,
    ) {
        let mut record = match self.store.outgoing(conversation, seq) {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                out.error(
                    ProblemCode::Storage,
                    format!("could not read how far a sent message got: {e}"),
                );
                return;
            }
        };
        if !change(&mut record) {
            return;
        }
        if let Err(e) = self.store.set_outgoing(conversation, seq, &record) {
            out.error(
                ProblemCode::Storage,
                format!("could not store how far a sent message got: {e}"),
            );
            return;
        }
        out.update(Update::Delivery {
            chat: record.chat.clone(),
            id: MessageId {
                sender: self.me,
                seq,
            },
            delivery: Delivery::of(&record),
        });
    }

    /// The relay's cumulative `Sent`: every send of this connection up to
    /// `id` not answered with an error is stored for its recipients.
    pub(super) fn on_sent(&mut self, id: u64, out: &mut Out) {
        let rest = match id.checked_add(1) {
            Some(next) => self.sends.split_off(&next),
            None => Default::default(),
        };
        let covered = std::mem::replace(&mut self.sends, rest);
        for sending in covered.into_values() {
            if let Some((conversation, seq)) = sending.message {
                self.forget_unsent(&conversation, seq, out);
                self.update_outgoing(&conversation, seq, out, |record| {
                    let pending = record.state == 0;
                    if pending {
                        record.state = 1;
                    }
                    pending
                });
            }
        }
    }

    /// The relay refused send `id`: its message, if any, failed.
    pub(super) fn on_refused(&mut self, id: u64, code: ErrorCode, message: &str, out: &mut Out) {
        let Some(sending) = self.sends.remove(&id) else {
            out.error(
                ProblemCode::Relay(code),
                format!("relay: {message} ({code:?})"),
            );
            return;
        };
        let problem = Problem::new(
            ProblemCode::Relay(code),
            format!("{}: not delivered: {message} ({code:?})", sending.chat),
        );
        out.problem(sending.about(problem, self.me));
        if let Some((conversation, seq)) = sending.message {
            self.forget_unsent(&conversation, seq, out);
            let why = format!("{message} ({code:?})");
            self.update_outgoing(&conversation, seq, out, |record| {
                record.state = 2;
                record.failed = Some((code, why));
                true
            });
        }
    }

    /// The relay's `Undelivered` for send `id`: `users` will not get it.
    pub(super) fn mark_refused(&mut self, id: u64, users: &[UserName], out: &mut Out) {
        let Some((conversation, seq)) = self.sends.get(&id).and_then(|s| s.message.clone()) else {
            return;
        };
        let users = users.to_vec();
        self.update_outgoing(&conversation, seq, out, |record| {
            let before = record.refused.len();
            for user in users {
                if !record.refused.iter().any(|r| r.same_as(&user)) {
                    record.refused.push(user);
                }
            }
            record.refused.len() != before
        });
    }

    /// A receipt from `from` (whose key is `sender`): it has stored the
    /// messages it names. Only `from` itself is marked, and only for
    /// messages sealed for it.
    pub(super) fn on_receipt(&mut self, sender: Fingerprint, receipt: &Receipt, out: &mut Out) {
        for seq in receipt.seqs().take(RECEIPT_SEQS) {
            self.update_outgoing(&receipt.conversation, seq, out, |record| {
                let for_it = record.recipients.iter().any(|(_, fp)| *fp == sender);
                let fresh = for_it && !record.delivered.contains(&sender);
                if fresh {
                    record.delivered.push(sender);
                }
                fresh
            });
        }
    }

    /// The relay answered for message `seq` of `conversation`: its frames
    /// are not sent again.
    fn forget_unsent(&mut self, conversation: &Conversation, seq: u64, out: &mut Out) {
        self.unsent_unkept
            .retain(|u| !(u.seq == seq && u.conversation == *conversation));
        let before = self.unsent.len();
        self.unsent
            .retain(|u| !(u.seq == seq && u.conversation == *conversation));
        if self.unsent.len() != before
            && let Err(e) = self.store.forget_unsent(conversation, seq)
        {
            // Sent again on the next connection: a copy its recipients
            // and the relay drop.
            out.error(
                ProblemCode::Storage,
                format!("could not record that the relay stored a message: {e}"),
            );
        }
    }

    /// Sends again, byte for byte, the messages of the chats `which`
    /// admits whose `Sent` has not come and that are not in flight on
    /// this connection: lost with a connection, or sealed before a
    /// restart. Their recipients drop a copy they have, and so does the
    /// relay (protocol.md 9.7), so each is kept exactly once.
    pub(super) fn resend_unsent(&mut self, which: impl Fn(&Chat) -> bool, out: &mut Out) {
        let in_flight: std::collections::HashSet<(Conversation, u64)> = self
            .sends
            .values()
            .filter_map(|s| s.message.clone())
            .collect();
        let again: Vec<crate::store::UnsentRecord> = self
            .unsent
            .iter()
            .chain(&self.unsent_unkept)
            .filter(|u| which(&u.chat) && !in_flight.contains(&(u.conversation.clone(), u.seq)))
            .cloned()
            .collect();
        // Each conversation's in the order sealed.
        let mut again = again;
        again.sort_by_key(|u| u.seq);
        for unsent in again {
            let count = unsent.frames.len();
            for (n, (to, body, slots)) in unsent.frames.into_iter().enumerate() {
                let message = (n + 1 == count).then(|| (unsent.conversation.clone(), unsent.seq));
                self.push_send(unsent.chat.clone(), message, to, body.into(), slots, out);
            }
        }
    }

    /// A text went out as `seq` in `conversation`: a heartbeat follows if
    /// it is not receipted in time.
    pub(super) fn heartbeat_after(&mut self, chat: &Chat, conversation: &Conversation, seq: u64) {
        self.heartbeats.insert(
            conversation.clone(),
            Heartbeat {
                chat: chat.clone(),
                seq,
                due: Instant::now() + self.limits.heartbeat,
                sent: 0,
            },
        );
    }

    /// Sends the heartbeats that are due: for each conversation whose
    /// newest message of this client's some recipient has not receipted
    /// (nor was it refused for it, nor did it fail), one sealed
    /// `Content::Heartbeat` to the conversation's recipients.
    pub(super) fn send_due_heartbeats(&mut self, now: Instant, out: &mut Out) {
        if !self.connected {
            return;
        }
        let due: Vec<(Conversation, Heartbeat)> = self
            .heartbeats
            .iter()
            .filter(|(_, h)| h.due <= now)
            .map(|(c, h)| (c.clone(), h.clone()))
            .collect();
        for (conversation, mut heartbeat) in due {
            let waiting = match self.store.outgoing(&conversation, heartbeat.seq) {
                Ok(Some(record)) => {
                    record.state != 2
                        && record.recipients.iter().any(|(name, fp)| {
                            !record.delivered.contains(fp)
                                && !record.refused.iter().any(|r| r.same_as(name))
                        })
                }
                // Disappeared before every receipt came: still waited for
                // (its record went with it), so a withheld tail still shows.
                Ok(None) => self.expired_unreceipted(&conversation, heartbeat.seq),
                Err(_) => false,
            };
            if !waiting || heartbeat.sent >= HEARTBEATS {
                self.heartbeats.remove(&conversation);
                continue;
            }
            match &heartbeat.chat {
                Chat::Room(room) => {
                    self.send_content_to_room(room.clone(), Content::Heartbeat, out)
                }
                Chat::Direct(user) => {
                    if let Ok(peer) = self.contacts.sendable(user).cloned() {
                        let user = user.clone();
                        self.seal_direct(
                            &user,
                            peer,
                            conversation.clone(),
                            Content::Heartbeat,
                            out,
                        );
                    }
                }
            }
            heartbeat.sent += 1;
            heartbeat.due = now + self.limits.heartbeat * (1 << heartbeat.sent);
            self.heartbeats.insert(conversation, heartbeat);
        }
    }

    /// Sends the receipts due for what the committed batch stored.
    pub(super) fn send_receipts(&mut self, out: &mut Out) {
        let due = std::mem::take(&mut self.receipts_due);
        for (_, (sender, conversation, seqs)) in due.0 {
            let Ok(peer) = self.contacts.sendable(&sender).cloned() else {
                // No key to send to (or a changed one): no receipt.
                continue;
            };
            let direct = Conversation::direct(self.me, peer.fingerprint());
            for receipt in Receipt::for_seqs(&conversation, seqs) {
                let content = Content::Receipt(receipt);
                self.seal_direct(&sender, peer.clone(), direct.clone(), content, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn deliveries(updates: &[Update]) -> Vec<(MessageId, Delivery)> {
        updates
            .iter()
            .filter_map(|u| match u {
                Update::Delivery { id, delivery, .. } => Some((*id, delivery.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `Send`s to `user` in `out`: route id and body.
    fn direct_sends(out: &Out, user: &str) -> Vec<(u64, bytes::Bytes)> {
        out.frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Send { route, body, .. }
                    if route.to == Destination::User(name(user)) =>
                {
                    Some((route.id, body.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// A receipt takes a sequence number in the direct conversation: one
    /// lost with its connection (its relay died before answering for it)
    /// would show its recipient a message missing. So it is sent again,
    /// byte for byte, on the next connection, until the relay answers for
    /// it; then never again.
    #[tokio::test]
    async fn a_receipt_lost_with_its_connection_is_sent_again_until_stored() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let direct = Conversation::direct(alice.fingerprint(), bob_identity.fingerprint());
        let mut bob = Bob::start_in(
            direct.clone(),
            bob_identity,
            alice.public(),
            1,
            0,
            now_secs(),
        );
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        feed(&mut engine, announce(&bob.announcement));
        let sealed = bob.seal("for alice");
        let out = feed_out(
            &mut engine,
            stored(deliver(&sealed, Destination::User(name("alice"))), 7),
        );
        let receipt = direct_sends(&out, "bob");
        assert_eq!(receipt.len(), 1, "{:?}", out.frames);
        engine.on_disconnected();
        let out = back_in_lobby(&mut engine, &bob.identity);
        let again = direct_sends(&out, "bob");
        assert_eq!(
            again.iter().map(|(_, body)| body).collect::<Vec<_>>(),
            [&receipt[0].1],
            "sent again as it was"
        );
        feed(&mut engine, RelayFrame::Sent { id: again[0].0 });
        engine.on_disconnected();
        let out = back_in_lobby(&mut engine, &bob.identity);
        assert!(direct_sends(&out, "bob").is_empty(), "{:?}", out.frames);
    }

    /// A message to bob is pending, then sent (the relay's word), then
    /// delivered to bob by bob's own receipt, sealed in his session; a
    /// receipt cannot mark what was not sealed for its sender, a replayed
    /// receipt changes nothing, and the states are kept across a restart.
    #[tokio::test]
    async fn a_message_is_pending_then_sent_then_delivered_by_the_recipients_receipt() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let direct = Conversation::direct(alice.fingerprint(), bob_identity.fingerprint());
        let mut bob = Bob::start_in(
            direct.clone(),
            bob_identity,
            alice.public(),
            1,
            0,
            now_secs(),
        );
        let (mut engine, dir) = alice_with_bob(&bob.identity).await;
        let out = command(&mut engine, send(Chat::Direct(name("bob")), "hi"));
        let sent = messages(&out.updates)[0].clone();
        let delivery = sent.delivery.clone().unwrap();
        assert_eq!(delivery.state, DeliveryState::Pending);
        assert_eq!(delivery.recipients, [name("bob")]);
        let id = *send_ids(&out).last().unwrap();
        let updates = feed(&mut engine, RelayFrame::Sent { id });
        let [(got, delivery)] = &deliveries(&updates)[..] else {
            panic!("{updates:?}")
        };
        assert_eq!(*got, sent.id());
        assert_eq!(delivery.state, DeliveryState::Sent);
        assert!(delivery.delivered.is_empty());

        // Bob's receipt: for a number alice never sent him, nothing; for
        // the message, delivered to bob.
        feed(&mut engine, announce(&bob.announcement));
        let receipt = |seqs: Vec<(u64, u64)>| {
            Content::Receipt(Receipt {
                conversation: direct.clone(),
                stored: seqs,
            })
        };
        let other = bob.seal_content(&receipt(vec![(sent.seq + 5, sent.seq + 5)]));
        let updates = feed(
            &mut engine,
            deliver(&other, Destination::User(name("alice"))),
        );
        assert!(deliveries(&updates).is_empty(), "{updates:?}");
        let sealed = bob.seal_content(&receipt(vec![(sent.seq, sent.seq)]));
        let frame = deliver(&sealed, Destination::User(name("alice")));
        let updates = feed(&mut engine, frame.clone());
        let [(got, delivery)] = &deliveries(&updates)[..] else {
            panic!("{updates:?}")
        };
        assert_eq!(*got, sent.id());
        assert_eq!(delivery.delivered, [name("bob")]);
        assert!(messages(&updates).is_empty(), "a receipt is not a message");
        assert!(deliveries(&feed(&mut engine, frame)).is_empty(), "replayed");

        // A message sealed for nobody but alice (alone in #solo): bob's
        // receipt for its number marks nothing.
        let solo = RoomName::try_from("solo").unwrap();
        let joined = RelayFrame::Joined {
            room: solo.clone(),
            members: vec![sotto_proto::Member {
                name: name("alice"),
                identity: alice.public().to_bytes().into(),
                online: true,
                prekeys: Vec::new(),
            }],
        };
        feed(&mut engine, joined);
        let out = command(&mut engine, send(Chat::Room(solo.clone()), "alone"));
        let alone = messages(&out.updates)[0].clone();
        assert!(alone.delivery.clone().unwrap().recipients.is_empty());
        let sealed = bob.seal_content(&Content::Receipt(Receipt {
            conversation: Conversation::room("solo"),
            stored: vec![(alone.seq, alone.seq)],
        }));
        let updates = feed(
            &mut engine,
            deliver(&sealed, Destination::User(name("alice"))),
        );
        assert!(
            deliveries(&updates).is_empty(),
            "not sealed for bob: {updates:?}"
        );

        // After a restart the history shows it delivered.
        drop(engine);
        let account = alice_account(dir.path()).await;
        let (_engine, history) =
            alice_in_lobby_with(&account, &bob.identity, SessionLimits::default());
        let shown: Vec<Delivery> = history
            .iter()
            .filter_map(|u| match u {
                Update::History { messages, .. } => Some(messages.clone()),
                _ => None,
            })
            .flatten()
            .filter(|m| m.text == "hi")
            .filter_map(|m| m.delivery)
            .collect();
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (shown[0].state.clone(), shown[0].delivered.clone()),
            (DeliveryState::Sent, vec![name("bob")])
        );
    }

    /// Alice stores bob's messages, then sends him one receipt for them, in
    /// their direct conversation; a duplicate of a stored message gets a
    /// receipt again; a batch that fails to commit sends none.
    #[tokio::test]
    async fn stored_messages_are_receipted_to_their_sender_only_once_stored() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let direct = Conversation::direct(alice.fingerprint(), bob_identity.fingerprint());
        let mut bob = Bob::start_in(direct, bob_identity, alice.public(), 1, 0, now_secs());
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        let to_bob = |out: &Out| -> usize {
            out.frames
                .iter()
                .filter(|f| matches!(f, ClientFrame::Send { route, .. } if route.to == Destination::User(name("bob"))))
                .count()
        };
        let mut frames = vec![announce(&bob.announcement)];
        for text in ["one", "two"] {
            frames.push(deliver(&bob.seal(text), Destination::User(name("alice"))));
        }
        engine.store.vault().fail_commits(true);
        let mut out = Out::default();
        engine.handle_frames(frames.clone(), &mut out);
        assert_eq!(to_bob(&out), 0, "nothing stored, nothing receipted");
        engine.store.vault().fail_commits(false);
        let mut out = Out::default();
        engine.handle_frames(frames.clone(), &mut out);
        assert_eq!(
            to_bob(&out),
            2,
            "an announcement and one receipt for both: {:?}",
            out.frames
        );
        let mut out = Out::default();
        engine.handle_frames(frames[1..].to_vec(), &mut out);
        assert_eq!(to_bob(&out), 1, "the copies: a receipt again");
        // Bob's heartbeat (he is still waiting for a receipt): another.
        let heartbeat = deliver(
            &bob.seal_content(&Content::Heartbeat),
            Destination::User(name("alice")),
        );
        let mut out = Out::default();
        engine.handle_frames([heartbeat], &mut out);
        assert_eq!(to_bob(&out), 1, "a heartbeat: a receipt again");
    }
}
