//! Sending: choosing a room's recipients, session rotation (a new session for
//! a new recipient set or an old session), sealing, the outbox of messages
//! typed while disconnected, and the drain before quitting (protocol.md 18).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{Conversation, Fingerprint, PublicIdentity, SendingSession, SequenceCounter};
use sotto_proto::{ClientFrame, Destination, ErrorCode, RoomName, Route, Slot, UserName};

use super::delivery::Sending;
use super::{Engine, Out, now_ms};
use crate::contacts::{Blocked, Trust};
use crate::session::content::Content;
use crate::session::{Chat, Delivery, Problem, ProblemCode, Update};
use crate::store::{
    Beside, OutgoingRecord, Position, StoreError, StoredEntry, UnsentRecord, VaultCounter,
};

/// The members a room message leaves out, by reason.
type LeftOut = BTreeMap<&'static str, Vec<UserName>>;

/// The names an `Undelivered` notice lists; the rest are counted.
const UNDELIVERED_NAMES: usize = 5;

pub(super) struct Outbound {
    pub(super) epoch: u32,
    pub(super) counter: SequenceCounter<VaultCounter>,
    pub(super) session: Option<SendingSession>,
    /// The recipients of `session` whose pair key went to their identity
    /// key (they had no valid prekey): the session restarts once they have
    /// one, so that what follows is forward secret again.
    pub(super) fallback: BTreeSet<Fingerprint>,
}

/// The kind of a failure to seal: the sequence counter's file failed
/// (this client's storage), or something in this client did.
fn sealing_problem(error: &sotto_crypto::Error) -> ProblemCode {
    match error {
        sotto_crypto::Error::Io(_) => ProblemCode::Storage,
        _ => ProblemCode::Internal,
    }
}

impl Engine {
    /// Messages typed but not yet sealed: waiting for the connection, a
    /// room's `Joined` or a peer's key (all of them in the store's outbox).
    pub(super) fn has_unsent(&self) -> bool {
        !self.outbox.is_empty() || self.awaiting_key.values().any(|a| !a.texts.is_empty())
    }

    /// Says which typed messages were never sent.
    pub(crate) fn report_unsent(&mut self, out: &mut Out) {
        let queued = self.outbox.len()
            + self
                .awaiting_key
                .values()
                .map(|a| a.texts.len())
                .sum::<usize>();
        if queued > 0 {
            let (noun, verb) = if queued == 1 {
                ("message", "was")
            } else {
                ("messages", "were")
            };
            out.error(
                ProblemCode::NotConnected,
                format!("{queued} queued {noun} {verb} not sent: the relay could not be reached"),
            );
        }
    }

    /// After a `Quit` that waited for queued messages: whether to stop now
    /// (all sent, or waited long enough).
    pub(crate) fn should_quit(&self, now: Instant) -> bool {
        self.quitting.is_some_and(|since| {
            !self.has_unsent() || now.duration_since(since) >= self.limits.quit_wait
        })
    }

    /// Whether a `Quit` came in.
    pub(crate) fn quitting(&self) -> bool {
        self.quitting.is_some()
    }

    /// The relay's `Undelivered`: the room message of send `id` was stored
    /// for every other member but `users`. It still counts as sent (a
    /// `Sent` covering it follows); the user hears who will not get it and
    /// why.
    pub(super) fn on_undelivered(
        &mut self,
        id: u64,
        code: ErrorCode,
        users: &[UserName],
        out: &mut Out,
    ) {
        if users.is_empty() {
            return;
        }
        let shown: Vec<String> = users
            .iter()
            .take(UNDELIVERED_NAMES)
            .map(|u| self.display_name(u).to_string())
            .collect();
        let more = users.len().saturating_sub(shown.len());
        let names = match (shown.split_last(), more) {
            (Some((last, [])), 0) => last.clone(),
            (Some((last, first)), 0) => format!("{} and {last}", first.join(", ")),
            (_, 1) => format!("{} and 1 other", shown.join(", ")),
            (_, more) => format!("{} and {more} others", shown.join(", ")),
        };
        let why = match code {
            ErrorCode::QueueFull => "their stored messages are at the relay's limit".to_owned(),
            other => format!("the relay did not store it for them ({other:?})"),
        };
        let code = ProblemCode::Undelivered(code);
        match self.sends.get(&id) {
            Some(sending) => {
                let problem = Problem::new(
                    code,
                    format!(
                        "{names} will not get your message in {}: {why}",
                        sending.chat
                    ),
                );
                out.problem(sending.about(problem, self.me));
            }
            None => out.error(
                code,
                format!("{names} will not get a message you sent: {why}"),
            ),
        }
    }

    pub(super) fn send_text(&mut self, chat: Chat, text: String, out: &mut Out) {
        if text.len() > sotto_crypto::MAX_PLAINTEXT_LEN {
            let message = format!(
                "{chat}: the message is too long ({} bytes; at most {})",
                text.len(),
                sotto_crypto::MAX_PLAINTEXT_LEN
            );
            out.problem(Problem::new(ProblemCode::TooLong, message).unsent(chat, 1));
            return;
        }
        if !self.connected {
            if self.outbox.len() >= self.limits.outbox {
                let message =
                    format!("{chat}: not connected and too many messages queued; not sent");
                out.problem(Problem::new(ProblemCode::TooManyWaiting, message).unsent(chat, 1));
            } else {
                self.queue_typed(chat, text, out);
            }
            return;
        }
        match chat {
            Chat::Room(room) => self.send_to_room(room, text, out),
            Chat::Direct(user) => self.send_direct(user, text, out),
        }
    }

    pub(super) fn send_to_room(&mut self, room: RoomName, text: String, out: &mut Out) {
        let timer = self.timer_of(&Chat::Room(room.clone()));
        self.send_content_to_room(room, Content::text(text, timer), out);
    }

    /// Seals `content` for the room's members this client can send to (a
    /// text also tells the user who was left out and why).
    pub(super) fn send_content_to_room(&mut self, room: RoomName, content: Content, out: &mut Out) {
        let Some(entry) = self.rooms.get(&room) else {
            match content.as_text() {
                // Joining is under way: send once `Joined` arrives.
                Some((text, _)) if self.wanted.contains(&room) => {
                    self.queue_typed(Chat::Room(room), text.to_owned(), out);
                }
                Some(_) => out.problem(
                    Problem::new(
                        ProblemCode::NotInRoom,
                        format!("you are not in #{room}: /join {room} first"),
                    )
                    .unsent(Chat::Room(room), 1),
                ),
                None => {}
            }
            return;
        };
        let verified_only = entry.settings.verified_only;
        let (recipients, left_out) = self.room_recipients(entry.members.values(), verified_only);
        let chat = Chat::Room(room.clone());
        if content.shown().is_some() {
            for (reason, names) in left_out {
                out.update(Update::NotSentTo {
                    chat: chat.clone(),
                    names,
                    reason: reason.to_owned(),
                });
            }
        }
        self.seal_and_send(
            chat,
            Conversation::room(room.as_str()),
            Destination::Room(room),
            recipients,
            content,
            out,
        );
    }

    /// Who a room message goes to: every member but this client whose key
    /// it can send to (and verified, if `verified_only`); and who is left
    /// out, by reason.
    fn room_recipients<'a>(
        &self,
        members: impl Iterator<Item = &'a super::rooms::RosterEntry>,
        verified_only: bool,
    ) -> (Vec<(UserName, PublicIdentity)>, LeftOut) {
        let mut recipients = Vec::new();
        let mut left_out = LeftOut::new();
        for member in members {
            if self.is_me(&member.name) {
                continue;
            }
            let contact = self.contacts.get(&member.name);
            match self.contacts.sendable(&member.name) {
                Ok(identity)
                    if !verified_only || contact.is_some_and(|c| c.trust == Trust::Verified) =>
                {
                    recipients.push((member.name.clone(), identity.clone()));
                }
                Ok(_) => left_out
                    .entry("not verified, and this room sends to verified members only")
                    .or_default()
                    .push(member.name.clone()),
                Err(Blocked::KeyChanged { .. }) => left_out
                    .entry("their key changed: verify or accept it first")
                    .or_default()
                    .push(member.name.clone()),
                Err(_) => left_out
                    .entry("no key is known for them")
                    .or_default()
                    .push(member.name.clone()),
            }
        }
        (recipients, left_out)
    }

    /// Once in a room: this client's session there is brought in step with
    /// the members now (18), so that a newcomer announces itself at once
    /// and every member can answer with a pair reply before either sends a
    /// word. Nothing is sent if the session already has every member.
    pub(super) fn announce_in_room(&mut self, room: &RoomName, out: &mut Out) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        let verified_only = entry.settings.verified_only;
        let (recipients, _) = self.room_recipients(entry.members.values(), verified_only);
        if recipients.is_empty() {
            return;
        }
        let chat = Chat::Room(room.clone());
        let conversation = Conversation::room(room.as_str());
        match self.sync_session(&chat, &conversation, &recipients, out) {
            Ok(frames) => {
                for (to, body, slots) in frames {
                    self.push_send(chat.clone(), None, to, body, slots, out);
                }
            }
            Err(e) => out.error(e.code, format!("{chat}: {}", e.message)),
        }
    }

    pub(super) fn send_direct(&mut self, user: UserName, text: String, out: &mut Out) {
        if self.is_me(&user) {
            out.problem(
                Problem::new(
                    ProblemCode::Yourself,
                    "you cannot send a direct message to yourself",
                )
                .unsent(Chat::Direct(user), 1),
            );
            return;
        }
        let peer = match self.contacts.sendable(&user) {
            Ok(identity) => identity.clone(),
            Err(Blocked::Unknown(_)) => {
                // Kept in the store's outbox at once, like a text typed
                // while disconnected: a restart or a lost connection does
                // not lose it, and it is sealed once the key is pinned.
                let limit = self.limits.texts_awaiting_key;
                let waiting = self
                    .awaiting_key
                    .get(&user.key())
                    .map_or(0, |a| a.texts.len());
                if waiting >= limit {
                    let message = format!("@{user}: too many messages waiting for a key");
                    out.problem(
                        Problem::new(ProblemCode::TooManyWaiting, message)
                            .unsent(Chat::Direct(user), 1),
                    );
                    return;
                }
                let id = self.typed_id(&Chat::Direct(user.clone()), &text, out);
                self.await_key(&user, out).texts.push((id, text));
                return;
            }
            Err(blocked) => {
                let code = match blocked {
                    Blocked::Unknown(_) => ProblemCode::NoKeyYet,
                    Blocked::KeyChanged { .. } => ProblemCode::KeyChanged,
                };
                let message = format!("@{user}: not sent: {blocked}");
                out.problem(Problem::new(code, message).unsent(Chat::Direct(user), 1));
                return;
            }
        };
        let conversation = Conversation::direct(self.me, peer.fingerprint());
        let timer = self.timer_of(&Chat::Direct(user.clone()));
        self.seal_direct(&user, peer, conversation, Content::text(text, timer), out);
    }

    pub(super) fn outbound(
        &mut self,
        conversation: &Conversation,
    ) -> Result<&mut Outbound, StoreError> {
        Ok(match self.outbound.entry(conversation.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let epoch = self.store.epoch(conversation)?;
                let (limit, store) = self.store.counter(conversation)?;
                entry.insert(Outbound {
                    epoch,
                    counter: SequenceCounter::resume(limit, store),
                    session: None,
                    fallback: BTreeSet::new(),
                })
            }
        })
    }

    /// Seals `content` in `conversation` for `user` (whose key is `peer`)
    /// alone, and sends it as a direct message under the name as pinned.
    pub(super) fn seal_direct(
        &mut self,
        user: &UserName,
        peer: PublicIdentity,
        conversation: Conversation,
        content: Content,
        out: &mut Out,
    ) {
        let name = self.display_name(user);
        self.seal_and_send(
            Chat::Direct(name.clone()),
            conversation,
            Destination::User(name.clone()),
            vec![(name, peer)],
            content,
            out,
        );
    }

    pub(super) fn seal_and_send(
        &mut self,
        chat: Chat,
        conversation: Conversation,
        to: Destination,
        recipients: Vec<(UserName, PublicIdentity)>,
        content: Content,
        out: &mut Out,
    ) {
        // A typed text that fails leaves one send unanswered; a receipt,
        // heartbeat or key request none.
        let typed = usize::from(content.shown().is_some());
        let fail = |out: &mut Out, code: ProblemCode, what: &dyn std::fmt::Display| {
            out.problem(
                Problem::new(code, format!("{chat}: not sent: {what}")).unsent(chat.clone(), typed),
            );
        };
        let mut frames = match self.sync_session(&chat, &conversation, &recipients, out) {
            Ok(frames) => frames,
            Err(e) => return fail(out, e.code, &e.message),
        };
        let outbound = match self.outbound(&conversation) {
            Ok(outbound) => outbound,
            Err(e) => return fail(out, ProblemCode::Storage, &e),
        };
        let sealed = match (&mut outbound.session, recipients.is_empty()) {
            (Some(session), false) => {
                match session.seal(
                    &mut rand::rng(),
                    &mut outbound.counter,
                    now_ms(),
                    &content.encode(),
                ) {
                    Ok(sealed) => Some(sealed),
                    Err(e) => return fail(out, sealing_problem(&e), &e),
                }
            }
            _ => None,
        };
        let seq = match &sealed {
            Some(sealed) => sealed.seq,
            None => outbound.counter.peek(),
        };
        let sealed_seq = sealed.as_ref().map(|sealed| sealed.seq);
        if let Some(sealed) = sealed {
            let slots = sealed
                .slots
                .iter()
                .filter_map(|slot| {
                    let (name, _) = recipients
                        .iter()
                        .find(|(_, id)| id.fingerprint() == slot.recipient)?;
                    Some(Slot {
                        to: name.clone(),
                        data: Bytes::copy_from_slice(&slot.to_bytes()),
                    })
                })
                .collect();
            frames.push((to, Bytes::from(sealed.body), slots));
        } else if content.shown().is_some() {
            out.update(Update::NotSentTo {
                chat: chat.clone(),
                names: Vec::new(),
                reason: "nobody else can read it here".to_owned(),
            });
        }
        // Kept until the relay says it stored them, to send again as they
        // are after a lost connection or a restart (protocol.md 19.2).
        let unsent = sealed_seq.map(|seq| UnsentRecord {
            conversation: conversation.clone(),
            seq,
            chat: chat.clone(),
            frames: frames
                .iter()
                .map(|(to, body, slots)| (to.clone(), body.to_vec(), slots.clone()))
                .collect(),
        });
        let count = frames.len();
        for (n, (to, body, slots)) in frames.into_iter().enumerate() {
            // The message is the last frame (announcements go first).
            let message = (n + 1 == count)
                .then(|| sealed_seq.map(|seq| (conversation.clone(), seq)))
                .flatten();
            self.push_send(chat.clone(), message, to, body, slots, out);
        }
        let Some((text, timer)) = content
            .shown()
            .map(|(text, timer)| (text.to_owned(), timer))
        else {
            // A receipt, heartbeat or key request: nothing to show or
            // store, but sent again after a lost connection (not after a
            // restart) until the relay answers for it.
            self.unsent_unkept.extend(unsent);
            return;
        };
        if let Some(seq) = sealed_seq {
            self.heartbeat_after(&chat, &conversation, seq);
        }
        let offer = match content {
            Content::File(offer) => Some(offer),
            _ => None,
        };
        let entry = StoredEntry {
            chat: chat.clone(),
            from: self.name.clone(),
            fingerprint: self.me,
            outgoing: true,
            seq,
            sent_at_ms: now_ms(),
            received_at_ms: now_ms(),
            text,
        };
        let record = OutgoingRecord {
            chat: chat.clone(),
            recipients: recipients
                .iter()
                .map(|(name, id)| (name.clone(), id.fingerprint()))
                .collect(),
            // Sealed for nobody: nothing to wait for.
            state: if sealed_seq.is_some() { 0 } else { 1 },
            failed: None,
            delivered: Vec::new(),
            refused: Vec::new(),
            typed: self.sealing_typed.take(),
        };
        self.arrival += 1;
        let position = Position {
            anchor: self.arrival,
            rank: Position::IN_ORDER,
        };
        let history_key = self.store.history_record_key(&entry, position);
        let expiring = self.sent_expiring(
            &chat,
            timer,
            history_key,
            &conversation,
            seq,
            record.typed,
            entry.received_at_ms,
        );
        let expires_at_ms = expiring.as_ref().map(|e| e.expires_at_ms);
        match self.store.record_sent(
            &entry,
            position,
            &conversation,
            &record,
            unsent.as_ref(),
            Beside {
                expiring: expiring.as_ref(),
                file: offer.as_ref(),
            },
        ) {
            Ok(()) => {
                if let Some(expiring) = expiring {
                    self.track_expiring(expiring);
                }
            }
            Err(e) => out.error(
                ProblemCode::Storage,
                format!("could not store the message you sent: {e}"),
            ),
        }
        self.unsent.extend(unsent);
        let mut message = self.message_of(entry, position);
        message.delivery = Some(Delivery::of(&record));
        message.expires_at_ms = expires_at_ms;
        if let Some(offer) = offer {
            message.file = Some(Box::new(crate::session::FileInfo::of(&offer)));
            self.files.remember(&chat, message.id(), offer);
        }
        out.update(Update::Message(message));
    }

    /// Seals a text that waited in the outbox (`id`), recording which it
    /// was; if it has to wait again (its room is not joined yet) it keeps
    /// its id and its record, otherwise its record goes.
    pub(super) fn send_typed(&mut self, id: u64, chat: Chat, text: String, out: &mut Out) {
        self.sealing_typed = Some(id);
        self.send_text(chat, text, out);
        self.sealing_typed = None;
        let waits = self.outbox.iter().any(|(queued, _, _)| *queued == id)
            || self
                .awaiting_key
                .values()
                .any(|a| a.texts.iter().any(|(queued, _)| *queued == id));
        if !waits && let Err(e) = self.store.remove_outbox(id) {
            out.error(
                ProblemCode::Storage,
                format!("could not update the messages waiting to be sent: {e}"),
            );
        }
    }

    /// A text enters the outbox: kept in the store too (unless it is one
    /// being sealed again, whose record is there already).
    fn queue_typed(&mut self, chat: Chat, text: String, out: &mut Out) {
        let id = self.typed_id(&chat, &text, out);
        self.outbox.push_back((id, chat, text));
    }

    /// The outbox id of a text that has to wait: the one it has if it is
    /// being sealed again from the outbox, else a new one, with the text
    /// kept in the store under it.
    fn typed_id(&mut self, chat: &Chat, text: &str, out: &mut Out) -> u64 {
        if let Some(id) = self.sealing_typed.take() {
            return id;
        }
        // Ids grow, so the store keeps the order typed.
        let id = self.next_typed.max(now_ms().saturating_mul(1000));
        self.next_typed = id.saturating_add(1);
        // Its expiry first: one without its text deletes nothing.
        self.typed_expiring(id, chat, out);
        if let Err(e) = self.store.push_outbox(id, chat, text) {
            out.error(
                ProblemCode::Storage,
                format!("could not keep the message to send later: {e}"),
            );
        }
        id
    }

    /// Puts one `Send` in `out` and remembers what it carried.
    pub(super) fn push_send(
        &mut self,
        chat: Chat,
        message: Option<(Conversation, u64)>,
        to: Destination,
        body: Bytes,
        slots: Vec<Slot>,
        out: &mut Out,
    ) {
        let id = self.route_id();
        self.sends.insert(id, Sending { chat, message });
        while self.sends.len() > self.limits.tracked_sends {
            self.sends.pop_first();
        }
        out.frames.push(ClientFrame::Send {
            route: Route { id, to },
            body,
            slots,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::super::testing::*;
    use super::*;
    use crate::session::DeliveryState;
    use crate::session::engine::Flow;

    #[tokio::test]
    async fn a_message_sent_to_bob_in_capitals_and_one_from_bob_share_one_chat() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let direct = Conversation::direct(alice.fingerprint(), bob_identity.fingerprint());
        let mut bob = Bob::start_in(direct, bob_identity, alice.public(), 1, 0, now_secs());
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        // The user typed `/msg BOB hi`: the app opened `@BOB`.
        let typed = Chat::Direct(name("BOB"));
        let mut out = Out::default();
        engine.handle_command(
            Command::Send {
                chat: typed.clone(),
                text: "hi".into(),
            },
            &mut out,
        );
        let sent = messages(&out.updates)[0].clone();
        // bob answers in the direct conversation.
        feed(
            &mut engine,
            RelayFrame::Deliver {
                delivery: 0,
                from: name("bob"),
                to: Destination::User(name("alice")),
                body: sotto_crypto::PeerBody::Announcement(bob.announcement.clone())
                    .encode()
                    .into(),
                slot: None,
            },
        );
        let sealed = bob.seal("hello");
        let updates = feed(
            &mut engine,
            deliver(&sealed, Destination::User(name("alice"))),
        );
        let received = messages(&updates)[0].clone();
        assert_eq!(received.text, "hello");
        assert_eq!(sent.chat, typed);
        assert_eq!(received.chat, typed);
        let threads: HashSet<Chat> = [typed.clone(), sent.chat, received.chat].into();
        assert_eq!(threads.len(), 1);
        let ordered: BTreeSet<Chat> = [typed, Chat::Direct(name("bob"))].into();
        assert_eq!(ordered.len(), 1);
    }

    /// Alice back from a restart, connected and in the lobby with bob:
    /// the engine and what it sent on connecting.
    fn alice_restarted(
        account: &crate::account::Account,
        bob: &sotto_crypto::Identity,
    ) -> (Engine, Out) {
        let (mut engine, _) = new_engine(account, SessionLimits::default());
        let out = back_in_lobby(&mut engine, bob);
        (engine, out)
    }

    fn room_bodies(out: &Out) -> Vec<Bytes> {
        out.frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Send { route, body, .. } if route.to == lobby() => Some(body.clone()),
                _ => None,
            })
            .collect()
    }

    /// Texts typed while disconnected survive a restart and are sealed
    /// once back; sealed, and not yet confirmed by the relay, they are sent
    /// again after the next restart byte for byte (the same messages), not
    /// sealed anew; confirmed, they are not sent again.
    #[tokio::test]
    async fn typed_and_sealed_messages_survive_restarts_and_are_sent_once() {
        let bob = fixture("bob");
        let (mut engine, dir) = alice_with_bob(&bob).await;
        engine.on_disconnected();
        for text in ["queued 1", "queued 2"] {
            let out = command(&mut engine, send(lobby_chat(), text));
            assert!(out.frames.is_empty(), "{out:?}");
        }
        drop(engine);
        let account = alice_account(dir.path()).await;
        let (engine, out) = alice_restarted(&account, &bob);
        let first = room_bodies(&out);
        assert_eq!(first.len(), 2, "the typed texts, sealed: {:?}", out.frames);
        drop(engine);
        let (mut engine, out) = alice_restarted(&account, &bob);
        assert_eq!(room_bodies(&out), first, "sent again as they were");
        let last = *send_ids(&out).iter().max().unwrap();
        feed(&mut engine, RelayFrame::Sent { id: last });
        drop(engine);
        let (engine, out) = alice_restarted(&account, &bob);
        assert!(room_bodies(&out).is_empty(), "confirmed: {:?}", out.frames);

        // A crash after a text was sealed, before the outbox was written
        // without it: the outbox still names it, and it is not sealed
        // again (its record says which typed text it was).
        let typed: Vec<u64> = engine
            .store
            .all_outgoing()
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| r.typed)
            .collect();
        assert_eq!(typed.len(), 2);
        engine
            .store
            .set_outbox(&[(typed[0], lobby_chat(), "queued 1".into())])
            .unwrap();
        drop(engine);
        let (_engine, out) = alice_restarted(&account, &bob);
        assert!(
            room_bodies(&out).is_empty(),
            "not sealed twice: {:?}",
            out.frames
        );
    }

    #[tokio::test]
    async fn the_outbox_bound_refuses_the_257th_queued_message_with_an_error() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        engine.on_disconnected();
        let bound = SessionLimits::default().outbox;
        assert_eq!(bound, 256);
        for i in 0..bound {
            let out = command(&mut engine, send(lobby_chat(), &format!("queued {i}")));
            assert!(out.updates.is_empty() && out.frames.is_empty(), "{out:?}");
        }
        let out = command(&mut engine, send(lobby_chat(), "one too many"));
        assert_eq!(
            errors(&out.updates),
            ["#lobby: not connected and too many messages queued; not sent"]
        );
        assert_eq!(codes(&out.updates), [ProblemCode::TooManyWaiting]);
        assert!(out.frames.is_empty());
        // Reconnected and back in the room: the 256 kept go out, under the
        // session announced to bob on the first join, which runs on.
        let out = back_in_lobby(&mut engine, &bob);
        let to = sent_to(&out);
        assert_eq!(to.iter().filter(|d| **d == &lobby()).count(), bound);
        assert_eq!(to.len(), bound, "no announcement again: {to:?}");
    }

    #[tokio::test]
    async fn quit_waits_for_queued_messages_at_most_quit_wait() {
        let bob = fixture("bob");
        let limits = SessionLimits {
            quit_wait: Duration::from_secs(30),
            ..SessionLimits::default()
        };
        let (mut engine, _dir) = alice_with_bob_limits(&bob, limits).await;
        // Nothing queued: quits at once.
        let mut out = Out::default();
        assert_eq!(
            engine.handle_command(Command::Quit, &mut Out::default()),
            Flow::Quit
        );
        // A message to carol waits for her key.
        let queued = command(&mut engine, send(Chat::Direct(name("carol")), "hi"));
        assert!(
            matches!(&queued.frames[..], [ClientFrame::LookupKey { .. }]),
            "{queued:?}"
        );
        let start = Instant::now();
        assert_eq!(
            engine.handle_command(Command::Quit, &mut out),
            Flow::Continue
        );
        assert!(engine.quitting());
        let now = Instant::now();
        assert!(!engine.should_quit(now));
        assert!(!engine.should_quit(start + Duration::from_secs(11)));
        assert!(engine.should_quit(now + Duration::from_secs(30)));
        engine.report_unsent(&mut out);
        assert_eq!(
            errors(&out.updates),
            ["1 queued message was not sent: the relay could not be reached"]
        );
        assert_eq!(codes(&out.updates), [ProblemCode::NotConnected]);
    }

    /// Sessions v2: one session runs on while the room changes. A newcomer
    /// alone gets an announcement (the others keep their pairs); one who
    /// leaves gets no more slots, and nobody gets an announcement for it.
    #[tokio::test]
    async fn a_session_runs_on_and_only_a_newcomer_gets_an_announcement() {
        let bob = fixture("bob");
        let carol = fixture("carol");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let announced_to = |out: &Out| -> Vec<Destination> {
            sent_to(out)
                .into_iter()
                .filter(|d| matches!(d, Destination::User(_)))
                .cloned()
                .collect()
        };
        let slots_for = |out: &Out| -> Vec<UserName> {
            out.frames
                .iter()
                .filter_map(|f| match f {
                    ClientFrame::Send { route, slots, .. } if route.to == lobby() => {
                        Some(slots.iter().map(|s| s.to.clone()))
                    }
                    _ => None,
                })
                .flatten()
                .collect()
        };
        // Announced to bob on joining (so that he could answer with a pair
        // reply before anyone wrote): the first message needs none.
        assert!(
            engine.outbound[&Conversation::room("lobby")]
                .session
                .is_some()
        );
        let first = command(&mut engine, send(lobby_chat(), "one"));
        assert!(announced_to(&first).is_empty(), "{:?}", first.frames);
        let session = engine.outbound[&Conversation::room("lobby")]
            .session
            .as_ref()
            .unwrap()
            .id();
        let second = command(&mut engine, send(lobby_chat(), "two"));
        assert!(announced_to(&second).is_empty(), "{:?}", second.frames);
        // carol joins: announced to her alone, in the same session.
        let presence = |event| RelayFrame::Presence {
            room: RoomName::lobby(),
            user: name("carol"),
            event,
            identity: Some(carol.public().to_bytes().into()),
            prekeys: Vec::new(),
        };
        feed(&mut engine, presence(PresenceEvent::Joined));
        let third = command(&mut engine, send(lobby_chat(), "three"));
        assert_eq!(announced_to(&third), [Destination::User(name("carol"))]);
        assert_eq!(slots_for(&third), [name("bob"), name("carol")]);
        // carol leaves: no announcement to anyone, and no slot for her.
        feed(&mut engine, presence(PresenceEvent::Left));
        let fourth = command(&mut engine, send(lobby_chat(), "four"));
        assert!(announced_to(&fourth).is_empty(), "{:?}", fourth.frames);
        assert_eq!(slots_for(&fourth), [name("bob")]);
        // And the header commits to exactly who can read it now (P7).
        let roster = fourth
            .frames
            .iter()
            .find_map(|f| match f {
                ClientFrame::Send { route, body, .. } if route.to == lobby() => {
                    match sotto_crypto::PeerBody::decode(body) {
                        Ok(sotto_crypto::PeerBody::Message(m)) => Some(m.header().unwrap().roster),
                        _ => None,
                    }
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(
            roster,
            sotto_crypto::roster_digest([fixture("alice").fingerprint(), bob.fingerprint()])
        );
        let outbound = &engine.outbound[&Conversation::room("lobby")];
        assert_eq!(outbound.session.as_ref().unwrap().id(), session);
        let seqs: Vec<u64> = [&first, &second, &third, &fourth]
            .iter()
            .map(|out| messages(&out.updates)[0].seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }

    /// The route ids of the `Send`s in `out` to `to`.
    fn route_ids(out: &Out, to: &Destination) -> Vec<u64> {
        out.frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::Send { route, .. } if route.to == *to => Some(route.id),
                _ => None,
            })
            .collect()
    }

    fn deliveries(updates: &[Update]) -> Vec<Delivery> {
        updates
            .iter()
            .filter_map(|u| match u {
                Update::Delivery { delivery, .. } => Some(delivery.clone()),
                _ => None,
            })
            .collect()
    }

    fn states(updates: &[Update]) -> Vec<DeliveryState> {
        deliveries(updates).into_iter().map(|d| d.state).collect()
    }

    #[tokio::test]
    async fn a_cumulative_sent_confirms_every_send_up_to_its_id() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let ids: Vec<u64> = ["one", "two", "three"]
            .iter()
            .flat_map(|text| route_ids(&command(&mut engine, send(lobby_chat(), text)), &lobby()))
            .collect();
        assert_eq!(ids.len(), 3);
        // The second is refused; then one `Sent` for the batch.
        let updates = feed(
            &mut engine,
            RelayFrame::Error {
                id: Some(ids[1]),
                code: ErrorCode::RateLimited,
                message: "slow down".to_owned(),
            },
        );
        assert_eq!(
            errors(&updates),
            ["#lobby: not delivered: slow down (RateLimited)"]
        );
        assert_eq!(
            codes(&updates),
            [ProblemCode::Relay(ErrorCode::RateLimited)]
        );
        // The error names the message it refused, whose delivery failed
        // with the relay's code.
        let refused = updates.iter().find_map(|u| match u {
            Update::Error(problem) => match &problem.answers[..] {
                [crate::session::Answers::Message { chat, id }] => Some((chat.clone(), *id)),
                _ => None,
            },
            _ => None,
        });
        let failed = updates.iter().find_map(|u| match u {
            Update::Delivery { chat, id, delivery } => match &delivery.state {
                DeliveryState::Failed(why) => Some((chat.clone(), *id, why.code)),
                _ => None,
            },
            _ => None,
        });
        let (chat, id) = refused.expect("the refused message");
        assert_eq!(chat, lobby_chat());
        assert_eq!(
            failed,
            Some((chat, id, ProblemCode::Relay(ErrorCode::RateLimited)))
        );
        // Sent: the first and the third; the second failed.
        let updates = feed(&mut engine, RelayFrame::Sent { id: ids[2] });
        assert_eq!(states(&updates), [DeliveryState::Sent, DeliveryState::Sent]);
        assert!(engine.sends.is_empty(), "{:?}", engine.sends);
        // Nothing of those is pending any more: a late error about the
        // first names no chat.
        let updates = feed(
            &mut engine,
            RelayFrame::Error {
                id: Some(ids[0]),
                code: ErrorCode::Internal,
                message: "late".to_owned(),
            },
        );
        assert_eq!(errors(&updates), ["relay: late (Internal)"]);
        assert_eq!(codes(&updates), [ProblemCode::Relay(ErrorCode::Internal)]);
        // A `Sent` below what is pending leaves the newer sends pending.
        let next = route_ids(&command(&mut engine, send(lobby_chat(), "four")), &lobby());
        feed(&mut engine, RelayFrame::Sent { id: ids[2] });
        assert_eq!(engine.sends.keys().copied().collect::<Vec<_>>(), next);
        feed(&mut engine, RelayFrame::Sent { id: u64::MAX });
        assert!(engine.sends.is_empty());
    }

    #[tokio::test]
    async fn members_the_relay_could_not_store_a_message_for_are_named_and_it_still_counts_as_sent()
    {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let out = command(&mut engine, send(lobby_chat(), "hello"));
        let [id] = route_ids(&out, &lobby())[..] else {
            panic!("one room send: {:?}", out.frames);
        };
        let updates = feed(
            &mut engine,
            RelayFrame::Undelivered {
                id,
                code: ErrorCode::QueueFull,
                users: vec![name("bob")],
            },
        );
        assert_eq!(
            errors(&updates),
            [
                "bob will not get your message in #lobby: their stored messages are at the relay's limit"
            ]
        );
        assert_eq!(
            codes(&updates),
            [ProblemCode::Undelivered(ErrorCode::QueueFull)]
        );
        assert!(engine.sends.contains_key(&id), "sent for the others");
        let refused: Vec<Vec<UserName>> = deliveries(&updates)
            .iter()
            .map(|d| d.refused.clone())
            .collect();
        assert_eq!(refused, [vec![name("bob")]]);
        let updates = feed(&mut engine, RelayFrame::Sent { id });
        assert_eq!(states(&updates), [DeliveryState::Sent]);
        assert!(engine.sends.is_empty());
        // Many names: the first are listed, the rest counted.
        let out = command(&mut engine, send(lobby_chat(), "again"));
        let [id] = route_ids(&out, &lobby())[..] else {
            panic!("one room send: {:?}", out.frames);
        };
        let users: Vec<UserName> = (1..=7).map(|i| name(&format!("u{i}"))).collect();
        let updates = feed(
            &mut engine,
            RelayFrame::Undelivered {
                id,
                code: ErrorCode::QueueFull,
                users: users[..2].to_vec(),
            },
        );
        assert_eq!(
            errors(&updates),
            [
                "u1 and u2 will not get your message in #lobby: their stored messages are at the relay's limit"
            ]
        );
        let updates = feed(
            &mut engine,
            RelayFrame::Undelivered {
                id,
                code: ErrorCode::Internal,
                users,
            },
        );
        assert_eq!(
            errors(&updates),
            [
                "u1, u2, u3, u4, u5 and 2 others will not get your message in #lobby: the relay did not store it for them (Internal)"
            ]
        );
    }

    #[tokio::test]
    async fn route_ids_keep_growing_across_connections() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let before = route_ids(&command(&mut engine, send(lobby_chat(), "one")), &lobby());
        engine.on_disconnected();
        let mut out = Out::default();
        engine.on_registered(name("alice"), &mut out);
        let alice = fixture("alice");
        let joined = RelayFrame::Joined {
            room: RoomName::lobby(),
            members: vec![
                sotto_proto::Member {
                    name: name("alice"),
                    identity: alice.public().to_bytes().into(),
                    online: true,
                    prekeys: Vec::new(),
                },
                sotto_proto::Member {
                    name: name("bob"),
                    identity: bob.public().to_bytes().into(),
                    online: false,
                    prekeys: Vec::new(),
                },
            ],
        };
        feed(&mut engine, joined);
        let out = command(&mut engine, send(lobby_chat(), "two"));
        let after = send_ids(&out);
        assert!(!after.is_empty());
        assert!(after.iter().all(|id| before.iter().all(|b| id > b)));
        assert!(after.windows(2).all(|w| w[0] < w[1]), "{after:?}");
    }
}
