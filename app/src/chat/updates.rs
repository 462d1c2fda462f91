//! Applying the session's updates to the window: the shared
//! [`sotto_client::ui::View`] keeps what they say and gives the words; this puts the
//! words where they belong (runs of presence changes as one notice, a new
//! contact's notice in the first conversation they show up in) and keeps
//! what is the window's own (timelines, pending messages, key changes).

use std::time::Instant;

use sotto_proto::{RoomName, UserName};

use crate::timeline::Tone;
use crate::verify::{KeyChange, Shown};
use sotto_client::contacts::KeyEvent;
use sotto_client::safe_text::multiline as visible;
use sotto_client::session::{
    Answers, Chat as Conversation, Connection, PresenceChange, Problem, Update,
};
use sotto_client::ui::{Place, Said, words};

use super::{Action, Chat, Pending, ids, now_ms};

/// Presence changes of one kind in one room, shown as one notice: a flood
/// of joins is one line that counts, not a line each.
#[derive(Debug)]
pub(super) struct PresenceRun {
    change: PresenceChange,
    /// The first two names (shown).
    first: Vec<UserName>,
    /// The newest name, when there are more than two (shown).
    newest: Option<UserName>,
    /// How many changes in all.
    count: u64,
    /// When the newest was, ms since the Unix epoch.
    at_ms: u64,
    /// The notice as shown: the run goes on only while it is the newest
    /// entry of the room.
    shown: String,
}

/// A run grows only while its changes come this close together.
const PRESENCE_RUN_GAP_MS: u64 = 30_000;

impl PresenceRun {
    fn new(change: PresenceChange, name: UserName, at_ms: u64) -> Self {
        Self {
            change,
            first: vec![name],
            newest: None,
            count: 1,
            at_ms,
            shown: String::new(),
        }
    }

    fn add(&mut self, name: UserName, at_ms: u64) {
        self.count += 1;
        self.at_ms = at_ms;
        if self.first.len() < 2 {
            self.first.push(name);
        } else {
            self.newest = Some(name);
        }
    }

    /// The run in words (`ui::words::presence`): `bob joined #lobby`,
    /// `bob and carol joined #lobby`, `bob, carol, 12 others and dave
    /// joined #lobby`, the newest name always last.
    fn text(&self, room: &RoomName) -> String {
        words::presence(
            &self.first,
            self.newest.as_ref(),
            self.count,
            self.change,
            room,
        )
    }
}

impl Chat {
    /// A presence change as a notice in its room, added to the run of
    /// changes of the same kind shown just before it, if any.
    fn presence_notice(&mut self, room: RoomName, name: UserName, change: PresenceChange) {
        let now = now_ms();
        let chat = Conversation::Room(room.clone());
        let last = self.thread(&chat).timeline.last_notice().map(str::to_owned);
        if let Some(run) = self.presence.get_mut(&room)
            && run.change == change
            && now.saturating_sub(run.at_ms) < PRESENCE_RUN_GAP_MS
            && last.as_deref() == Some(run.shown.as_str())
        {
            run.add(name, now);
            run.shown = run.text(&room);
            let text = run.shown.clone();
            self.thread(&chat).timeline.rewrite_last_notice(text, now);
            return;
        }
        let mut run = PresenceRun::new(change, name, now);
        run.shown = run.text(&room);
        self.notice(&chat, Tone::Info, run.shown.clone());
        self.presence.insert(room, run);
    }

    /// Applies a batch of updates, in order: what they ask for together
    /// (one desktop notification at most: for the newest message); an
    /// update that ends the window ends the batch.
    pub(super) fn apply_all(&mut self, updates: Vec<Update>) -> Action {
        let mut actions = Vec::new();
        let mut notify = None;
        for update in updates {
            match self.apply(update) {
                Action::None => {}
                notice @ Action::Notify { .. } => notify = Some(notice),
                task @ (Action::Run(_) | Action::Many(_)) => actions.push(task),
                // Back to the connect screen, settings, quitting: nothing
                // after it applies to this window.
                last @ (Action::Disconnected { .. } | Action::Settings | Action::Quit) => {
                    actions.push(last);
                    notify = None;
                    break;
                }
            }
        }
        actions.extend(notify);
        match actions.len() {
            0 => Action::None,
            1 => actions.pop().unwrap_or(Action::None),
            _ => Action::Many(actions),
        }
    }

    /// Applies one update from the session: what it says is kept by the
    /// shared [`sotto_client::ui::View`], which also gives the words for it; this puts
    /// them where they belong and keeps only what is the window's own.
    pub(super) fn apply(&mut self, update: Update) -> Action {
        let said = self.view.apply(&update);
        match update {
            Update::Ready(controller) => {
                self.controller = Some(controller);
                // The chat window is on screen by now: put the cursor in
                // the composer.
                return Action::Run(iced::widget::operation::focus(ids::COMPOSER));
            }
            Update::History { chat, messages } => {
                if let Some(last) = messages.iter().map(|m| m.position).max() {
                    self.last_position = self.last_position.max(last);
                }
                self.fetch_history_previews(&messages);
                self.thread(&chat).timeline.extend_messages(messages);
                self.open_if_none(&chat);
            }
            // Typed in an earlier run, not sent yet: pending, as if just
            // written.
            Update::Queued(queued) => {
                for queued in queued {
                    self.thread(&queued.chat).pending.push(Pending {
                        text: queued.text,
                        failed: None,
                    });
                }
            }
            Update::Connection(connection) => {
                self.retry_at = match &connection {
                    Connection::Reconnecting { after, .. } => Some(Instant::now() + *after),
                    _ => None,
                };
                match &connection {
                    Connection::Connected { .. } => self.connected_once = true,
                    Connection::Failed { reason } => {
                        // The session has stopped: back to the connect
                        // screen with the address and the reason.
                        self.controller = None;
                        return self.disconnected(Some(self.failure(reason)));
                    }
                    Connection::Reconnecting { reason, .. }
                        if !self.known_relay && !self.connected_once =>
                    {
                        // A relay never reached before, and not reached
                        // now: most likely a wrong address. Say so on the
                        // connect screen rather than retry in an empty
                        // window.
                        self.quit();
                        self.controller = None;
                        let text = format!(
                            "Could not reach the relay at {}: {}. Check the address and that the \
                             relay is running, then connect again.",
                            self.relay.authority(),
                            visible(reason)
                        );
                        return self.disconnected(Some(text));
                    }
                    _ => {}
                }
                // Shown in the header, not as a notice.
                self.connection = connection;
            }
            Update::Joined { room } => {
                self.thread(&Conversation::Room(room.clone()));
                if self.joined.insert(room) {
                    self.show(said);
                }
            }
            Update::Members { room, members } => {
                // Shown in the member list, not as a notice; a new
                // contact's notice waits for the first room they show up in.
                let chat = Conversation::Room(room);
                for member in &members {
                    if !self.view.is_me(&member.name) {
                        self.introduce(&member.name, &chat);
                    }
                }
            }
            Update::Presence { room, name, change } => self.presence_notice(room, name, change),
            // Drawn beside the message's time; found by its id.
            Update::Delivery { chat, id, delivery } => {
                if let Some(thread) = self.threads.get_mut(&chat) {
                    thread.timeline.set_delivery(id, delivery);
                }
            }
            Update::Message(message) => {
                let chat = message.chat.clone();
                let from = message.from.clone();
                self.introduce(&from, &chat);
                self.last_position = self.last_position.max(message.position);
                self.fetch_previews(std::iter::once(&message));
                let outgoing = message.outgoing;
                let seen = self.focused && self.is_current(&chat);
                let thread = self.thread(&chat);
                // The session names a conversation as it pinned the peer.
                thread.chat = chat.clone();
                if outgoing {
                    // Sent: no longer pending. Matched by text, in order
                    // (the session reports its messages in the order given).
                    if let Some(at) = thread.pending.iter().position(|p| p.text == message.text) {
                        thread.pending.remove(at);
                    }
                }
                let added = thread.timeline.push_message(message);
                if added && !outgoing {
                    if !seen {
                        thread.unread += 1;
                    }
                    self.open_if_none(&chat);
                    return Action::Notify { from, chat };
                }
            }
            Update::Key(event) => self.key_event(event, said),
            Update::Trust { name, trust } => {
                self.key_changes
                    .retain(|change| !change.name.same_as(&name));
                if self.consent == Some(name.key()) {
                    self.consent = None;
                }
                // The key now trusted (the new one, after a key change).
                if let (_, Some(fingerprint)) = self.view.trust_of(&name) {
                    for thread in self.threads.values_mut() {
                        thread.timeline.retrust(fingerprint, trust);
                    }
                }
                if let Some(shown) = self.shown.get_mut(&name.key()) {
                    shown.trust = trust;
                }
                self.show(said);
            }
            Update::SafetyNumber {
                name,
                fingerprint,
                safety_number,
                trust,
            } => {
                // Shown on the verification screen, with its QR code.
                let key = name.key();
                let shown = Shown::new(name, fingerprint, safety_number, trust);
                self.shown.insert(key, shown);
            }
            Update::Error(error) => {
                self.not_sent(&error);
                // In the status line, louder than the notices.
                for said in said {
                    self.status = Some((Tone::Danger, said.text));
                }
            }
            // Gone from the store: gone from the screen (what was never
            // sent leaves the pending list), with a notice of how many.
            Update::Expired {
                ref chat,
                ref ids,
                ref queued,
            } => {
                if let Some(thread) = self.threads.get(chat) {
                    let blobs = thread.timeline.files_of(ids);
                    self.forget_files(&blobs);
                }
                if let Some(thread) = self.threads.get_mut(chat) {
                    thread.timeline.remove_messages(ids);
                    for queued in queued {
                        if let Some(at) = thread.pending.iter().position(|p| p.text == queued.text)
                        {
                            thread.pending.remove(at);
                        }
                    }
                }
                self.show(said);
            }
            Update::Left { room } => {
                self.joined.remove(&room);
                self.show(said);
            }
            Update::Timer { .. }
            | Update::Missing { .. }
            | Update::Rejected { .. }
            | Update::NotForYou { .. }
            | Update::NotSentTo { .. }
            | Update::RosterMismatch { .. }
            | Update::Users(_)
            | Update::Rooms(_)
            | Update::VerifiedOnly { .. }
            | Update::RelayKeyMoved(_) => self.show(said),
            // Shown on the file's card or the upload's line, not as notices.
            Update::Transfer(transfer) => return self.transfer(*transfer),
        }
        Action::None
    }

    /// Puts each notice where it belongs.
    pub(super) fn show(&mut self, said: Vec<Said>) {
        for said in said {
            match said.place {
                Place::Chat(chat) => self.notice(&chat, said.tone, said.text),
                Place::With(name) => self.notice_everywhere(&name, said.tone, said.text),
                Place::General => self.tell(said.tone, said.text),
            }
        }
    }

    fn key_event(&mut self, event: KeyEvent, said: Vec<Said>) {
        match event {
            KeyEvent::Pinned { name, .. } => {
                if self.shared_with(&name).is_empty() {
                    // Usually the key arrives just before the member list
                    // or the message that names them: the notice waits
                    // for it.
                    for said in said {
                        self.new_contacts.insert(name.key(), (said.tone, said.text));
                    }
                } else {
                    self.show(said);
                }
            }
            KeyEvent::Changed { .. } => self.show(said),
            KeyEvent::ChangedVerified {
                name,
                pinned,
                offered,
            } => {
                self.show(said);
                if !self
                    .key_changes
                    .iter()
                    .any(|change| change.name.same_as(&name))
                {
                    self.key_changes.push(KeyChange {
                        name,
                        pinned,
                        offered,
                    });
                }
            }
        }
    }

    /// The conversations `name` takes part in.
    fn shared_with(&self, name: &UserName) -> Vec<Conversation> {
        let mut chats: Vec<Conversation> = self
            .view
            .rooms_with(name)
            .into_iter()
            .map(Conversation::Room)
            .collect();
        let direct = self
            .threads
            .get(&Conversation::Direct(name.clone()))
            .map(|thread| thread.chat.clone());
        chats.extend(direct);
        chats
    }

    /// The waiting new-contact notice of `name`, if any, goes to `chat`.
    fn introduce(&mut self, name: &UserName, chat: &Conversation) {
        if let Some((tone, text)) = self.new_contacts.remove(&name.key()) {
            self.notice(chat, tone, text);
        }
    }

    /// A notice in the conversations `name` takes part in.
    fn notice_everywhere(&mut self, name: &UserName, tone: Tone, text: String) {
        let chats = self.shared_with(name);
        if chats.is_empty() {
            self.tell(tone, text);
            return;
        }
        for chat in chats {
            self.notice(&chat, tone, text.clone());
        }
    }

    /// Marks as not sent the messages still waiting that a problem of the
    /// session answers: the oldest `count` in its conversation (those the
    /// session got first). A problem about a message already shown (the
    /// relay refused it) answers none: its `Update::Delivery` marks it.
    fn not_sent(&mut self, problem: &Problem) {
        for answers in &problem.answers {
            let Answers::Sends { chat, count } = answers else {
                continue;
            };
            let Some(thread) = self.threads.get_mut(chat) else {
                continue;
            };
            // The conversation is the thread's: the reason without it.
            let named = format!("{chat}: ");
            let reason = problem
                .message
                .strip_prefix(named.as_str())
                .unwrap_or(&problem.message);
            for pending in thread
                .pending
                .iter_mut()
                .filter(|pending| pending.failed.is_none())
                .take(*count)
            {
                pending.failed = Some(reason.to_owned());
            }
        }
    }
}
