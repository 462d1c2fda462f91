//! The chat window: conversations in a sidebar with unread counts, the
//! timeline, the current room's members, the composer; the verification
//! and key-change screens on top.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use iced::widget::{
    Column, button, checkbox, column, container, row, scrollable, space, text, text_editor,
    text_input,
};
use iced::{Alignment, Element, Fill, Task, keyboard};
use sotto_crypto::Fingerprint;
use sotto_proto::{RelayAddress, RoomName, UserKey, UserName};

use crate::style::{BOLD, MONO, badge, clock, count};
use crate::timeline::{Entry, Timeline, Tone};
use crate::verify::{self, KeyChange, Shown};
use sotto_client::account::Account;
use sotto_client::commands;
use sotto_client::contacts::KeyEvent;
use sotto_client::safe_text::multiline as visible;
use sotto_client::session::{
    self, Chat as Conversation, Command, Connection, Controller, PresenceChange, TrustLevel, Update,
};
use sotto_client::ui::{self, Local, Place, Resolved, Said, words};

/// The widget ids, for tests and focus.
pub mod ids {
    /// The composer.
    pub const COMPOSER: &str = "chat-composer";
    /// The timeline's scrollable.
    pub const TIMELINE: &str = "chat-timeline";
    /// The "join a room" field.
    pub const JOIN: &str = "chat-join";
}

/// What the chat window does.
#[derive(Clone, Debug)]
pub enum Message {
    /// Something from session number `.0`.
    Session(u64, Update),
    /// Session number `.0` has ended (its stream is over).
    Ended(u64),
    /// Open a conversation.
    Select(Conversation),
    /// The composer was edited (typing, pasting, Shift+Enter for a new
    /// line).
    Composer(text_editor::Action),
    /// Send what the composer holds.
    Submit,
    /// The "join a room" field changed.
    JoinField(String),
    /// Join the room in the field.
    Join,
    /// Leave a room.
    Leave(RoomName),
    /// In a room, encrypt to verified members only (or to all pinned).
    VerifiedOnly(RoomName, bool),
    /// Open the verification screen for a peer.
    Verify(UserName),
    /// Mark a peer verified with the safety number shown.
    MarkVerified(UserName),
    /// Close the verification screen.
    CloseVerify,
    /// The key-change consent box.
    Consent(bool),
    /// Accept a changed key (with consent).
    AcceptKey(UserName),
    /// The timeline was scrolled.
    Scrolled(scrollable::Viewport),
    /// Show the newest messages.
    Newest,
    /// A second passed (countdowns).
    Tick,
    /// While waiting to reconnect, try the relay again now.
    RetryNow,
    /// Leave this relay.
    Disconnect,
    /// Open the settings.
    Settings,
}

/// What the app should do next.
#[derive(Debug)]
pub enum Action {
    /// Nothing more.
    None,
    /// Run this.
    Run(Task<Message>),
    /// Tell the desktop about a message (the app decides whether to).
    Notify {
        /// Who wrote.
        from: UserName,
        /// Where.
        chat: Conversation,
    },
    /// The session is over: back to the connect screen, with the address
    /// of this relay in the field and why it ended (if it did not end by
    /// the user's choice).
    Disconnected {
        /// Who is signed in.
        account: Account,
        /// The relay's address, kept in the field.
        address: RelayAddress,
        /// Why the session ended.
        reason: Option<String>,
    },
    /// Open the settings.
    Settings,
    /// Quit the app.
    Quit,
}

/// A conversation as the window files it: a direct conversation under
/// its peer's folded name ([`UserKey`]), so `@BOB` (as typed) and `@bob`
/// (as the session files what was sent) are one conversation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChatKey {
    /// A room.
    Room(RoomName),
    /// The direct conversation with this user.
    Direct(UserKey),
}

impl From<&Conversation> for ChatKey {
    fn from(chat: &Conversation) -> Self {
        match chat {
            Conversation::Room(room) => ChatKey::Room(room.clone()),
            Conversation::Direct(user) => ChatKey::Direct(user.key()),
        }
    }
}

/// A message handed to the session that it has not reported sent yet.
#[derive(Debug)]
struct Pending {
    /// What was sent, exactly (matched against what the session reports).
    text: String,
    /// Why the session did not send it, if it said so.
    failed: Option<String>,
}

/// A conversation's state in the window.
#[derive(Debug)]
struct Thread {
    /// The conversation as last named by the session (the pinned case of
    /// a peer's name), or as the user typed it before that.
    chat: Conversation,
    timeline: Timeline,
    unread: usize,
    /// Messages written here that the session has not reported sent, in
    /// the order written; shown after the timeline.
    pending: Vec<Pending>,
}

/// The chat window.
#[derive(Debug)]
pub struct Chat {
    account: Account,
    relay: RelayAddress,
    generation: u64,
    controller: Option<Controller>,
    connection: Connection,
    retry_at: Option<Instant>,
    /// What this window knows of its session (rooms, members, trust,
    /// look-alikes, the safety numbers shown, the current conversation),
    /// shared with sotto-cli's way of keeping it.
    view: ui::View,
    threads: BTreeMap<ChatKey, Thread>,
    /// The safety numbers shown, per user, ready to draw (with their QR
    /// codes, built once).
    shown: HashMap<UserKey, Shown>,
    /// Contacts pinned before any conversation with them is known: their
    /// notice waits for the room (or direct message) they show up in.
    new_contacts: HashMap<UserKey, (Tone, String)>,
    verifying: Option<UserName>,
    key_changes: Vec<KeyChange>,
    consent: bool,
    composer: text_editor::Content,
    /// Whether this relay was connected to before this session (saved in
    /// the known relays): only then does a failed first attempt retry in
    /// the window rather than go back to the connect screen.
    known_relay: bool,
    /// Whether this session has been connected at least once.
    connected_once: bool,
    join_field: String,
    status: Option<(Tone, String)>,
    /// The newest position seen: notices go after it.
    last_position: (u64, u32),
    focused: bool,
    /// Per room, the presence changes of one kind shown as one notice
    /// while nothing else comes between them.
    presence: HashMap<RoomName, PresenceRun>,
}

/// Presence changes of one kind in one room, shown as one notice: a flood
/// of joins is one line that counts, not a line each.
#[derive(Debug)]
struct PresenceRun {
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Chat {
    /// A chat window for a session with `relay` (session number
    /// `generation`: updates of other sessions are ignored), a relay
    /// connected to before.
    pub fn new(account: Account, relay: RelayAddress, generation: u64) -> Self {
        Self::connecting(account, relay, generation, true)
    }

    /// [`Chat::new`]; `known_relay` says whether the relay was connected
    /// to before. For a new relay, a first attempt that fails ends the
    /// session and goes back to the connect screen, with the reason.
    pub fn connecting(
        account: Account,
        relay: RelayAddress,
        generation: u64,
        known_relay: bool,
    ) -> Self {
        // A line with no conversation is refused: there is nowhere to show
        // it waiting.
        let view = ui::View::new(
            relay.authority(),
            Some(account.identity().fingerprint()),
            false,
        );
        Self {
            view,
            account,
            relay,
            generation,
            controller: None,
            connection: Connection::Connecting,
            retry_at: None,
            threads: BTreeMap::new(),
            shown: HashMap::new(),
            new_contacts: HashMap::new(),
            verifying: None,
            key_changes: Vec::new(),
            consent: false,
            composer: text_editor::Content::new(),
            known_relay,
            connected_once: false,
            join_field: String::new(),
            status: None,
            last_position: (0, 0),
            focused: true,
            presence: HashMap::new(),
        }
    }

    /// Whether a countdown is on screen (the app ticks every second).
    pub fn needs_ticks(&self) -> bool {
        self.retry_at.is_some()
    }

    /// Unread messages in all conversations.
    pub fn unread(&self) -> usize {
        self.threads.values().map(|t| t.unread).sum()
    }

    /// The conversations in the sidebar's order (rooms, then direct
    /// conversations), each once whatever the case of a peer's name.
    pub fn conversations(&self) -> Vec<Conversation> {
        self.threads.values().map(|t| t.chat.clone()).collect()
    }

    /// The conversation on screen.
    pub fn current(&self) -> Option<&Conversation> {
        self.current_key()
            .and_then(|key| self.threads.get(&key))
            .map(|thread| &thread.chat)
    }

    /// The key of the conversation on screen.
    fn current_key(&self) -> Option<ChatKey> {
        self.view.context.current.as_ref().map(ChatKey::from)
    }

    /// This user's name, as the relay registered it once connected.
    fn me(&self) -> &UserName {
        self.view.me().unwrap_or(self.account.name())
    }

    /// What the composer holds.
    pub fn composer(&self) -> String {
        self.composer.text()
    }

    /// Whether a key change waits for the user's decision (the composer is
    /// hidden until then).
    pub fn is_blocked(&self) -> bool {
        !self.key_changes.is_empty()
    }

    /// The window gained or lost focus.
    pub fn set_focused(&mut self, focused: bool) {
        self.focused = focused;
        if focused
            && let Some(current) = self.current_key()
            && let Some(thread) = self.threads.get_mut(&current)
        {
            thread.unread = 0;
        }
    }

    /// Asks the session to stop (the app is closing).
    pub fn quit(&self) {
        if let Some(controller) = &self.controller {
            let _ = controller.quit();
        }
    }

    /// Hands `command` to the session; false (and said so) if the session
    /// is gone.
    fn command(&mut self, command: Command) -> bool {
        let sent = self
            .controller
            .as_ref()
            .map(|controller| controller.command(command));
        if matches!(sent, Some(Ok(()))) {
            return true;
        }
        self.status = Some((Tone::Danger, "the session has ended".to_owned()));
        false
    }

    /// Sends `text` to `chat`; it shows as pending at once, until the
    /// session reports it sent.
    fn send(&mut self, chat: Conversation, text: String) {
        let pending = Pending {
            text: text.clone(),
            failed: None,
        };
        if self.command(Command::Send {
            chat: chat.clone(),
            text,
        }) {
            self.thread(&chat).pending.push(pending);
        }
    }

    fn thread(&mut self, chat: &Conversation) -> &mut Thread {
        self.threads
            .entry(ChatKey::from(chat))
            .or_insert_with(|| Thread {
                chat: chat.clone(),
                timeline: Timeline::new(),
                unread: 0,
                pending: Vec::new(),
            })
    }

    /// Opens `chat` (creating it if needed).
    fn open(&mut self, chat: &Conversation) {
        self.thread(chat);
        self.view.context.current = Some(chat.clone());
    }

    /// Opens `chat` if no conversation is on screen.
    fn open_if_none(&mut self, chat: &Conversation) {
        if self.view.context.current.is_none() {
            self.view.context.current = Some(chat.clone());
        }
    }

    fn is_current(&self, chat: &Conversation) -> bool {
        self.view.context.current.as_ref() == Some(chat)
    }

    fn notice(&mut self, chat: &Conversation, tone: Tone, text: String) {
        let position = self.last_position;
        self.thread(chat)
            .timeline
            .push_notice(position, tone, text, now_ms());
    }

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

    /// A notice in the current conversation, or the status line.
    fn tell(&mut self, tone: Tone, text: String) {
        match self.current().cloned() {
            Some(chat) => self.notice(&chat, tone, text),
            None => self.status = Some((tone, text)),
        }
    }

    /// The badge beside `name`: this user's own name counts as verified.
    fn trust_of(&self, name: &UserName) -> TrustLevel {
        if self.view.is_me(name) || name.same_as(self.account.name()) {
            return TrustLevel::Verified;
        }
        self.view.trust_of(name).0
    }

    /// The start of `fingerprint` beside a name that looks like another
    /// contact's, so the two can be told apart; `None` for other names.
    fn lookalike_key(&self, name: &UserName, fingerprint: Option<Fingerprint>) -> Option<String> {
        if !self.view.is_lookalike(name) {
            return None;
        }
        let fingerprint = fingerprint.or_else(|| self.view.trust_of(name).1)?;
        let text = fingerprint.to_string();
        Some(format!("key {}…", text.get(..19).unwrap_or(&text)))
    }

    /// Handles a message.
    pub fn update(&mut self, message: Message) -> Action {
        match message {
            Message::Session(generation, update) => {
                if generation != self.generation {
                    return Action::None;
                }
                return self.apply(update);
            }
            Message::Ended(generation) => {
                if generation != self.generation {
                    return Action::None;
                }
                self.controller = None;
                let reason = match &self.connection {
                    Connection::Failed { reason } => Some(self.failure(reason)),
                    _ => None,
                };
                return self.disconnected(reason);
            }
            Message::Select(chat) => {
                if let Some(thread) = self.threads.get_mut(&ChatKey::from(&chat)) {
                    thread.unread = 0;
                }
                self.open(&chat);
                self.status = None;
                return Action::Run(Task::batch([
                    to_newest(),
                    iced::widget::operation::focus(ids::COMPOSER),
                ]));
            }
            Message::Composer(action) => self.composer.perform(action),
            Message::Submit => return self.submit(),
            Message::JoinField(text) => self.join_field = text,
            Message::Join => match commands::room(self.join_field.trim()) {
                Ok(room) => {
                    self.join_field.clear();
                    self.join(room);
                }
                Err(e) => self.status = Some((Tone::Warning, e)),
            },
            Message::Leave(room) => {
                self.command(Command::Leave(room));
            }
            Message::VerifiedOnly(room, on) => {
                self.command(Command::SetVerifiedOnly { room, on });
            }
            Message::Verify(name) => self.verify_screen(name),
            Message::MarkVerified(name) => {
                let Some(shown) = self.shown.get(&name.key()) else {
                    return Action::None;
                };
                let safety_number = shown.safety_number.digits().to_owned();
                self.command(Command::Verify {
                    name,
                    safety_number,
                });
            }
            Message::CloseVerify => {
                self.verifying = None;
                return Action::Run(iced::widget::operation::focus(ids::COMPOSER));
            }
            Message::Consent(consent) => self.consent = consent,
            Message::AcceptKey(name) => {
                if !self.consent {
                    return Action::None;
                }
                self.command(Command::AcceptKey(name));
            }
            Message::Scrolled(viewport) => {
                let y = viewport.relative_offset().y;
                let Some(thread) = self.current_key().and_then(|c| self.threads.get_mut(&c)) else {
                    return Action::None;
                };
                // The timeline is anchored at the bottom: 1.0 is the top.
                if y >= 0.999 && thread.timeline.has_older() {
                    thread.timeline.older();
                } else if y <= 0.001 && !thread.timeline.is_following() {
                    thread.timeline.newer();
                }
            }
            Message::Newest => {
                if let Some(thread) = self.current_key().and_then(|c| self.threads.get_mut(&c)) {
                    thread.timeline.follow();
                }
                return Action::Run(to_newest());
            }
            Message::Tick => {
                if self.retry_at.is_some_and(|at| at <= Instant::now()) {
                    self.retry_at = None;
                }
            }
            Message::RetryNow => {
                self.command(Command::Reconnect);
            }
            Message::Disconnect => {
                self.quit();
                return self.disconnected(None);
            }
            Message::Settings => return Action::Settings,
        }
        Action::None
    }

    fn disconnected(&self, reason: Option<String>) -> Action {
        Action::Disconnected {
            account: self.account.clone(),
            address: self.relay.clone(),
            reason,
        }
    }

    /// What the connect screen says about a failure retrying cannot fix.
    fn failure(&self, reason: &str) -> String {
        let reason = visible(reason);
        let pinned = self.relay.fingerprint_text();
        if reason.contains(&pinned) {
            // The relay presented another key than the address pins (the
            // session's reason names both).
            format!(
                "Refused to connect to {}: the relay did not present the key this address pins. \
                 This may be an attack: someone between you and the relay may be impersonating \
                 it. Or the address is wrong or out of date: ask the relay's operator, over a \
                 channel you trust, for its address. The address pins {pinned}. ({reason})",
                self.relay.authority()
            )
        } else {
            format!("The session ended: {reason}")
        }
    }

    /// Opens the verification screen for `user` and asks the session for
    /// the safety number it shows.
    fn verify_screen(&mut self, user: UserName) {
        self.verifying = Some(user.clone());
        self.command(Command::SafetyNumber(user));
    }

    /// Joins `room`, current at once (before the session reports it
    /// joined).
    fn join(&mut self, room: RoomName) {
        self.command(Command::Join(room.clone()));
        self.view.context.current = Some(Conversation::Room(room));
    }

    /// What the composer sends or does. The composer is emptied once its
    /// line was understood; a line that was not stays for correcting.
    fn submit(&mut self) -> Action {
        if self.is_blocked() {
            return Action::None;
        }
        let line = self.composer.text().replace("\r\n", "\n");
        let resolved = match ui::resolve(&line, &self.view.context) {
            Ok(Resolved::Local(Local::Hold(_))) => {
                Err("you are in no room: /join ROOM first".to_owned())
            }
            resolved => resolved,
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(e) => {
                self.status = Some((Tone::Warning, e));
                return Action::None;
            }
        };
        self.composer = text_editor::Content::new();
        self.status = None;
        match resolved {
            Resolved::Nothing => {}
            Resolved::Command(command) => return self.perform(command),
            Resolved::Local(local) => self.local(local),
        }
        Action::None
    }

    /// Hands a typed command to the session, showing at once what it
    /// opens.
    fn perform(&mut self, command: Command) -> Action {
        match command {
            Command::Send { chat, text } => {
                let chat = match &chat {
                    Conversation::Direct(_) => {
                        self.open(&chat);
                        // The conversation keeps the name as the session
                        // knows it (`@bob` for `/msg BOB`), once it has
                        // been named.
                        self.current().cloned().unwrap_or(chat)
                    }
                    Conversation::Room(_) => chat,
                };
                self.send(chat, text);
            }
            Command::Join(room) => self.join(room),
            Command::SafetyNumber(user) => self.verify_screen(user),
            Command::Quit => {
                self.quit();
                return Action::Quit;
            }
            other => {
                self.command(other);
            }
        }
        Action::None
    }

    /// Does what a typed line asks of the window alone.
    fn local(&mut self, local: Local) {
        match local {
            Local::Help => self.tell(Tone::Info, commands::HELP.to_owned()),
            Local::Members(room) => {
                let members = self.view.members(&room);
                let names: Vec<String> = members.iter().map(|m| self.view.label(&m.name)).collect();
                let text = format!("#{room}: {} members: {}", members.len(), names.join(", "));
                self.tell(Tone::Info, text);
            }
            Local::Switch(room) => self.open(&Conversation::Room(room)),
            Local::Fingerprint(fingerprint) => {
                self.tell(Tone::Info, format!("your key fingerprint: {fingerprint}"));
            }
            // Not asked for (the context does not hold): refused above.
            Local::Hold(_) => {}
        }
    }

    /// Applies one update from the session: what it says is kept by the
    /// shared [`ui::View`], which also gives the words for it; this puts
    /// them where they belong and keeps only what is the window's own.
    fn apply(&mut self, update: Update) -> Action {
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
                self.thread(&chat).timeline.extend_messages(messages);
                self.open_if_none(&chat);
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
                self.thread(&Conversation::Room(room));
                self.show(said);
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
            Update::Message(message) => {
                let chat = message.chat.clone();
                let from = message.from.clone();
                self.introduce(&from, &chat);
                self.last_position = self.last_position.max(message.position);
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
                self.consent = false;
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
            Update::Left { .. }
            | Update::Missing { .. }
            | Update::Rejected { .. }
            | Update::NotForYou { .. }
            | Update::NotSentTo { .. }
            | Update::RosterMismatch { .. }
            | Update::Users(_)
            | Update::Rooms(_)
            | Update::VerifiedOnly { .. }
            | Update::RelayKeyMoved(_) => self.show(said),
        }
        Action::None
    }

    /// Puts each notice where it belongs.
    fn show(&mut self, said: Vec<Said>) {
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
            .get(&ChatKey::Direct(name.key()))
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

    /// Marks as not sent the newest message still waiting in the
    /// conversation an error of the session names (its errors about a
    /// message start with the conversation: `#room: ` or `@name: `).
    fn not_sent(&mut self, error: &str) {
        let Some((head, reason)) = error.split_once(": ") else {
            return;
        };
        let key = if let Some(room) = head.strip_prefix('#') {
            room.parse::<RoomName>().ok().map(ChatKey::Room)
        } else if let Some(user) = head.strip_prefix('@') {
            user.parse::<UserName>()
                .ok()
                .map(|user| ChatKey::Direct(user.key()))
        } else {
            None
        };
        let Some(thread) = key.and_then(|key| self.threads.get_mut(&key)) else {
            return;
        };
        if let Some(pending) = thread
            .pending
            .iter_mut()
            .rev()
            .find(|pending| pending.failed.is_none())
        {
            pending.failed = Some(reason.to_owned());
        }
    }

    /// The window's title.
    pub fn title(&self) -> String {
        match self.current() {
            Some(chat) => format!("{chat} · sotto"),
            None => "sotto".to_owned(),
        }
    }

    /// The window.
    pub fn view(&self) -> Element<'_, Message> {
        if let Some(change) = self.key_changes.first() {
            if let Some(name) = &self.verifying
                && change.name.same_as(name)
            {
                return verify::view(self.shown.get(&name.key()), name, &self.account);
            }
            return verify::key_change(change, self.consent);
        }
        let main = match &self.verifying {
            Some(name) => verify::view(self.shown.get(&name.key()), name, &self.account),
            None => self.conversation(),
        };
        let mut layout = row![self.sidebar(), main];
        if self.verifying.is_none()
            && let Some(ChatKey::Room(room)) = &self.current_key()
        {
            layout = layout.push(self.member_list(room));
        }
        layout.height(Fill).into()
    }

    fn connection_line(&self) -> Element<'_, Message> {
        let (label, style): (String, fn(&iced::Theme) -> text::Style) = match &self.connection {
            Connection::Connecting => (
                format!("Connecting to {}…", self.relay.authority()),
                text::secondary,
            ),
            Connection::Connected { name } => (
                format!("Connected to {} as {name}", self.relay.authority()),
                text::success,
            ),
            Connection::Reconnecting { reason, .. } => {
                let left = self
                    .retry_at
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::ZERO);
                let when = if left.is_zero() {
                    "reconnecting now".to_owned()
                } else {
                    format!("reconnecting in {} s", left.as_secs() + 1)
                };
                (
                    format!("Connection lost ({}): {when}", visible(reason)),
                    text::warning,
                )
            }
            Connection::Failed { reason } => {
                (format!("Not connected: {}", visible(reason)), text::danger)
            }
        };
        let label = text(label).size(13).style(style);
        if matches!(self.connection, Connection::Reconnecting { .. }) {
            row![
                label,
                button(text("Retry now").size(13))
                    .style(button::secondary)
                    .padding([2, 8])
                    .on_press(Message::RetryNow)
            ]
            .spacing(8)
            .align_y(Alignment::Center)
            .into()
        } else {
            label.into()
        }
    }

    fn sidebar(&self) -> Element<'_, Message> {
        let mut rooms = Column::new().spacing(2);
        let mut direct = Column::new().spacing(2);
        for (key, thread) in &self.threads {
            let chat = &thread.chat;
            let selected = self.current_key().as_ref() == Some(key);
            let mut label = row![].spacing(6).align_y(Alignment::Center);
            match chat {
                Conversation::Room(room) => {
                    if !self.view.context.rooms.contains(room) {
                        continue;
                    }
                    label = label.push(text(format!("# {room}")));
                }
                Conversation::Direct(user) => {
                    label = label.push(text(user.to_string()));
                    label = label.push(badge(self.trust_of(user)));
                    if let Some(key) = self.lookalike_key(user, None) {
                        label = label.push(text(key).font(MONO).size(10).style(text::warning));
                    }
                }
            }
            label = label.push(space().width(Fill));
            if thread.unread > 0 {
                label = label.push(count(thread.unread));
            }
            let entry = button(label)
                .width(Fill)
                .style(if selected {
                    button::primary
                } else {
                    button::text
                })
                .on_press(Message::Select(chat.clone()));
            match chat {
                Conversation::Room(_) => rooms = rooms.push(entry),
                Conversation::Direct(_) => direct = direct.push(entry),
            }
        }
        let join = text_input("Join a room…", &self.join_field)
            .id(ids::JOIN)
            .on_input(Message::JoinField)
            .on_submit(Message::Join)
            .padding(6)
            .size(13);
        let content = column![
            text(self.me().as_str()).font(BOLD).size(18),
            text(self.account.identity().fingerprint().to_string())
                .font(MONO)
                .size(10)
                .style(text::secondary),
            text("Rooms").size(13).style(text::secondary),
            rooms,
            join,
            text("Direct messages").size(13).style(text::secondary),
            direct,
            space().height(Fill),
            row![
                button(text("Settings").size(13))
                    .style(button::secondary)
                    .on_press(Message::Settings),
                button(text("Disconnect").size(13))
                    .style(button::secondary)
                    .on_press(Message::Disconnect),
            ]
            .spacing(6),
        ]
        .spacing(8);
        container(content)
            .padding(12)
            .width(230)
            .height(Fill)
            .style(container::rounded_box)
            .into()
    }

    fn conversation(&self) -> Element<'_, Message> {
        let title: Element<'_, Message> = match self.current() {
            Some(Conversation::Room(room)) => {
                let mut line = row![text(format!("#{room}")).size(22)]
                    .spacing(10)
                    .align_y(Alignment::Center);
                line = line.push(space().width(Fill));
                let room_ = room.clone();
                line = line.push(
                    checkbox(self.view.is_verified_only(room))
                        .label("Verified members only")
                        .text_size(13)
                        .on_toggle(move |on| Message::VerifiedOnly(room_.clone(), on)),
                );
                line = line.push(
                    button(text("Leave").size(13))
                        .style(button::secondary)
                        .on_press(Message::Leave(room.clone())),
                );
                line.into()
            }
            Some(Conversation::Direct(user)) => {
                let mut line = row![
                    text(format!("@{user}")).size(22),
                    badge(self.trust_of(user))
                ]
                .spacing(10)
                .align_y(Alignment::Center);
                if let Some(key) = self.lookalike_key(user, None) {
                    line = line.push(text(key).font(MONO).size(12).style(text::warning));
                }
                line.push(space().width(Fill))
                    .push(
                        button(text("Verify").size(13))
                            .style(button::secondary)
                            .on_press(Message::Verify(user.clone())),
                    )
                    .into()
            }
            None => text("No conversation").size(22).into(),
        };
        let header = column![title, self.connection_line()].spacing(4);

        let thread = self.current_key().and_then(|chat| self.threads.get(&chat));
        let mut lines = Column::new().spacing(6).padding([8, 12]);
        if let Some(thread) = thread {
            if thread.timeline.has_older() {
                lines = lines.push(
                    text("Scroll up for older messages")
                        .size(12)
                        .style(text::secondary),
                );
            }
            for entry in thread.timeline.visible() {
                lines = lines.push(self.entry(entry));
            }
            // What was written here and not reported sent yet comes after
            // everything the session has reported.
            if thread.timeline.is_following() {
                for pending in &thread.pending {
                    lines = lines.push(self.pending(pending));
                }
            }
        }
        let timeline = scrollable(lines)
            .id(ids::TIMELINE)
            .anchor_bottom()
            .on_scroll(Message::Scrolled)
            .height(Fill)
            .width(Fill);
        let mut body = column![header, timeline].spacing(8);
        if thread.is_some_and(|thread| !thread.timeline.is_following()) {
            body = body.push(
                button(text("Jump to the newest messages").size(13))
                    .style(button::secondary)
                    .on_press(Message::Newest),
            );
        }
        if let Some((tone, status)) = &self.status {
            body = body.push(text(visible(status)).size(13).style(tone_style(*tone)));
        }
        let can_send = self.view.context.current.is_some() && self.controller.is_some();
        body = body.push(
            row![
                text_editor(&self.composer)
                    .id(ids::COMPOSER)
                    .placeholder("Write a message, or /help (Shift+Enter: new line)")
                    .on_action(Message::Composer)
                    .key_binding(composer_keys)
                    .height(iced::Shrink)
                    .max_height(160)
                    .padding(10),
                button(text("Send"))
                    .padding([10, 16])
                    .style(button::primary)
                    .on_press_maybe(can_send.then_some(Message::Submit)),
            ]
            .spacing(8)
            .align_y(Alignment::End),
        );
        container(body).padding(12).width(Fill).height(Fill).into()
    }

    fn entry<'a>(&'a self, entry: &'a Entry) -> Element<'a, Message> {
        match entry {
            Entry::Message(message) => {
                // The sender, badge and time are widgets of their own, and
                // the text a paragraph of its own with its bidi controls
                // escaped: nothing in it can move them (see `safe`).
                let mut head = row![text(message.from.as_str()).font(BOLD)]
                    .spacing(8)
                    .align_y(Alignment::Center);
                if !message.outgoing {
                    head = head.push(badge(message.trust));
                    if let Some(key) = self.lookalike_key(&message.from, Some(message.fingerprint))
                    {
                        head = head.push(text(key).font(MONO).size(11).style(text::warning));
                    }
                }
                head = head.push(
                    text(clock(message.sent_at_ms))
                        .size(11)
                        .style(text::secondary),
                );
                if message.late {
                    head = head.push(text("arrived late").size(11).style(text::secondary));
                }
                column![head, text(visible(&message.text))]
                    .spacing(2)
                    .into()
            }
            Entry::Notice(notice) => row![
                text(clock(notice.at_ms)).size(11).style(text::secondary),
                text(visible(&notice.text))
                    .size(13)
                    .style(tone_style(notice.tone)),
            ]
            .spacing(8)
            .into(),
        }
    }

    /// A message written here that the session has not reported sent:
    /// greyed, with what is known of it.
    fn pending<'a>(&'a self, pending: &'a Pending) -> Element<'a, Message> {
        let state = match (&pending.failed, &self.connection) {
            (Some(reason), _) => text(format!("not sent: {}", visible(reason))).style(text::danger),
            (None, Connection::Connected { .. }) => text("sending…").style(text::secondary),
            (None, _) => text("not sent yet: waiting for the connection").style(text::secondary),
        };
        column![
            row![
                text(self.me().as_str()).font(BOLD).style(text::secondary),
                state.size(11)
            ]
            .spacing(8)
            .align_y(Alignment::Center),
            text(visible(&pending.text)).style(text::secondary),
        ]
        .spacing(2)
        .into()
    }

    fn member_list(&self, room: &RoomName) -> Element<'_, Message> {
        let members = self.view.members(room);
        let mut list = Column::new().spacing(4);
        for member in members {
            let me = self.view.is_me(&member.name) || member.name.same_as(self.account.name());
            let name = if me {
                format!("{} (you)", member.name)
            } else {
                member.name.to_string()
            };
            let mut line = row![text(name)].spacing(6).align_y(Alignment::Center);
            if !me {
                line = line.push(badge(member.trust));
            }
            let mut entry = column![line].spacing(2);
            if !me && let Some(key) = self.lookalike_key(&member.name, member.fingerprint) {
                entry = entry.push(text(key).font(MONO).size(10).style(text::warning));
            }
            if !me {
                entry = entry.push(
                    row![
                        button(text("Message").size(11))
                            .padding([2, 6])
                            .style(button::secondary)
                            .on_press(Message::Select(Conversation::Direct(member.name.clone()))),
                        button(text("Verify").size(11))
                            .padding([2, 6])
                            .style(button::secondary)
                            .on_press(Message::Verify(member.name.clone())),
                    ]
                    .spacing(4),
                );
            }
            list = list.push(entry);
        }
        container(
            column![
                text(format!("Members · {}", members.len())).font(BOLD),
                scrollable(list).height(Fill),
            ]
            .spacing(8),
        )
        .padding(12)
        .width(210)
        .height(Fill)
        .style(container::rounded_box)
        .into()
    }
}

/// The composer's keys: Enter sends, Shift+Enter breaks the line, the
/// rest as in any text editor (pasted text keeps its lines).
fn composer_keys(press: text_editor::KeyPress) -> Option<text_editor::Binding<Message>> {
    let enter = matches!(
        press.key.as_ref(),
        keyboard::Key::Named(keyboard::key::Named::Enter)
    );
    if enter && matches!(press.status, text_editor::Status::Focused { .. }) {
        return Some(if press.modifiers.shift() {
            text_editor::Binding::Enter
        } else {
            text_editor::Binding::Custom(Message::Submit)
        });
    }
    text_editor::Binding::from_key_press(press)
}

/// Scrolls the timeline to its newest entry. The timeline is anchored at
/// the bottom, so its offsets count from there: the start is the newest.
fn to_newest() -> Task<Message> {
    iced::widget::operation::snap_to(ids::TIMELINE, scrollable::RelativeOffset::START)
}

fn tone_style(tone: Tone) -> fn(&iced::Theme) -> text::Style {
    match tone {
        Tone::Info => text::secondary,
        Tone::Warning => text::warning,
        Tone::Danger => text::danger,
    }
}

/// Starts session number `generation` for `account` at `relay`; its updates
/// arrive as [`Message::Session`].
pub fn start(account: Account, relay: RelayAddress, generation: u64) -> Task<Message> {
    let config = session::Config::new(account, relay);
    Task::run(session::run(config), move |update| {
        Message::Session(generation, update)
    })
    .chain(Task::done(Message::Ended(generation)))
}
