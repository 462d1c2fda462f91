//! The chat window: conversations in a sidebar with unread counts, the
//! timeline, the current room's members, the composer; the verification
//! screen, and the banners of a verified contact's changed key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};

use iced::Task;
use iced::widget::{scrollable, text_editor};
use sotto_crypto::Fingerprint;
use sotto_crypto::file::BlobId;
use sotto_proto::{RelayAddress, RoomName, UserKey, UserName};

use crate::timeline::{Timeline, Tone};
use crate::verify::{KeyChange, Shown};
use sotto_client::account::Account;
use sotto_client::commands;
use sotto_client::safe_text::multiline as visible;
use sotto_client::session::{
    self, Chat as Conversation, Command, Connection, Controller, MessageId, TrustLevel, Update,
};
use sotto_client::ui::{self};

mod composer;
pub use composer::shortcut;
mod delivery;
mod files;
pub use files::{
    PASTED_DIR, PREVIEW_EDGE, PREVIEW_MAX_BYTES, PREVIEWS_DIR, Preview, Thumbnail, save_path,
};
mod updates;
mod view;

use files::Files;
use updates::PresenceRun;
use view::to_newest;

/// The widget ids, for tests and focus.
pub mod ids {
    /// The composer.
    pub const COMPOSER: &str = "chat-composer";
    /// The timeline's scrollable.
    pub const TIMELINE: &str = "chat-timeline";
    /// The "join a room" field.
    pub const JOIN: &str = "chat-join";
    /// The conversation finder (Ctrl+K).
    pub const FINDER: &str = "chat-finder";
    /// The attach row's path field.
    pub const ATTACH: &str = "chat-attach";
}

/// What the chat window does.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "a message lives only while iced hands it to `update`; boxing the session's updates would allocate once more for each"
)]
pub enum Message {
    /// Something from session number `.0` (boxed: a message stays small).
    Session(u64, Box<Update>),
    /// What session number `.0` reported close together, applied together
    /// (one rebuild and one redraw of the window for all of them; see
    /// [`batches`]).
    Updates(u64, Vec<Update>),
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
    /// Set a conversation's disappearing-message timer (seconds, 0: off).
    Timer(Conversation, u64),
    /// Open the verification screen for a peer.
    Verify(UserName),
    /// Mark a peer verified with the safety number shown.
    MarkVerified(UserName),
    /// Close the verification screen.
    CloseVerify,
    /// The consent box of a changed key: whose, ticked or not.
    Consent(UserName, bool),
    /// Accept a changed key (with consent).
    AcceptKey(UserName),
    /// The timeline was scrolled.
    Scrolled(scrollable::Viewport),
    /// Show the newest messages.
    Newest,
    /// Ctrl+Down (true) or Ctrl+Up: the next or previous conversation in
    /// the sidebar's order, round the end.
    Step(bool),
    /// PageUp (true: towards older messages) or PageDown in the timeline.
    Page(bool),
    /// Ctrl+K: open the conversation finder.
    Find,
    /// Show or hide the sidebar in a narrow window.
    ToggleSidebar,
    /// What the finder holds.
    FindField(String),
    /// Enter in the finder: the first conversation it shows.
    FindSubmit,
    /// Escape: close the finder if open, else the verification screen.
    Escape,
    /// Show (or hide again) how far a message of yours in the current
    /// conversation got: who has it, who not yet, who will not get it.
    Details(MessageId),
    /// A second passed (countdowns).
    Tick,
    /// While waiting to reconnect, try the relay again now.
    RetryNow,
    /// Open (or close) the attach row.
    Attach,
    /// The attach row's path field changed.
    AttachField(String),
    /// Open the desktop's file chooser.
    AttachBrowse,
    /// The file chooser closed: the file chosen, if any.
    AttachPicked(Option<PathBuf>),
    /// Send the file in the attach row to the conversation on screen.
    AttachSend,
    /// A file was dropped on the window: send it to the conversation on
    /// screen.
    Dropped(PathBuf),
    /// Save the file of a message (its conversation, id, blob and name)
    /// into the downloads folder.
    Save(Conversation, MessageId, BlobId, String),
    /// Ctrl+V in the composer: an image the clipboard holds (and no
    /// text) is sent.
    Paste,
    /// A pasted image, written to be sent (`None`: the clipboard held
    /// none).
    Pasted(Option<Result<PathBuf, String>>),
    /// A preview was decoded (or could not be).
    Previewed(BlobId, Option<Thumbnail>),
    /// Stop showing a failed upload.
    Dismiss(BlobId),
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
    /// All of these, in order (what a batch of updates asked for).
    Many(Vec<Action>),
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
    /// The conversations, each once whatever the case of a peer's name
    /// (a [`Conversation`] compares by the folded name).
    threads: BTreeMap<Conversation, Thread>,
    /// The safety numbers shown, per user, ready to draw (with their QR
    /// codes, built once).
    shown: HashMap<UserKey, Shown>,
    /// Contacts pinned before any conversation with them is known: their
    /// notice waits for the room (or direct message) they show up in.
    new_contacts: HashMap<UserKey, (Tone, String)>,
    verifying: Option<UserName>,
    /// The rooms whose "You joined" this window has shown: a rejoin
    /// after a reconnection says nothing (the header tells the
    /// connection), a join after a leave does.
    joined: BTreeSet<RoomName>,
    /// Verified contacts whose key changed, waiting for the user's
    /// decision: their direct conversation is blocked (a banner, no
    /// composer), the rooms shared with them carry a banner, everything
    /// else goes on.
    key_changes: Vec<KeyChange>,
    /// Whose key change the user ticked "I understand" for.
    consent: Option<UserKey>,
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
    /// The message of yours whose delivery details are shown, if any.
    details: Option<(Conversation, MessageId)>,
    /// The conversation finder's text, while it is open (Ctrl+K).
    finder: Option<String>,
    /// In a window too narrow for it, whether the sidebar is shown.
    sidebar_open: bool,
    /// The timeline's height, as last scrolled: what PageUp moves by.
    page: f32,
    focused: bool,
    /// Per room, the presence changes of one kind shown as one notice
    /// while nothing else comes between them.
    presence: HashMap<RoomName, PresenceRun>,
    /// Files: transfers, previews, the attach row, the downloads folder.
    files: Files,
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
        let files = Files::new(account.profile().dir());
        let chat = Self {
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
            consent: None,
            joined: BTreeSet::new(),
            composer: text_editor::Content::new(),
            known_relay,
            connected_once: false,
            join_field: String::new(),
            status: None,
            last_position: (0, 0),
            details: None,
            finder: None,
            sidebar_open: false,
            page: 400.0,
            focused: true,
            presence: HashMap::new(),
            files,
        };
        chat.clear_previews();
        chat
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
        self.selected()
            .and_then(|key| self.threads.get(&key))
            .map(|thread| &thread.chat)
    }

    /// The conversation on screen, as selected (the spelling may differ
    /// from its thread's; they compare alike).
    fn selected(&self) -> Option<Conversation> {
        self.view.context.current.clone()
    }

    /// This user's name, as the relay registered it once connected.
    fn me(&self) -> &UserName {
        self.view.me().unwrap_or(self.account.name())
    }

    /// The messages of the conversation on screen, oldest first.
    pub fn messages(&self) -> Vec<&session::Message> {
        self.selected()
            .and_then(|chat| self.threads.get(&chat))
            .map(|thread| thread.timeline.messages().collect())
            .unwrap_or_default()
    }

    /// What the composer holds.
    pub fn composer(&self) -> String {
        self.composer.text()
    }

    /// Whether the conversation shown is blocked by a key change waiting
    /// for the user's decision (its composer is hidden until then).
    pub fn is_blocked(&self) -> bool {
        self.current()
            .is_some_and(|chat| self.blocking(chat).is_some())
    }

    /// The key change that blocks `chat`: a direct conversation with a
    /// verified contact whose key changed.
    pub(super) fn blocking(&self, chat: &Conversation) -> Option<&KeyChange> {
        let Conversation::Direct(user) = chat else {
            return None;
        };
        self.key_changes
            .iter()
            .find(|change| change.name.same_as(user))
    }

    /// The key changes of the members of `room` (its banners).
    pub(super) fn key_changes_in(&self, room: &RoomName) -> Vec<&KeyChange> {
        let members = self.view.members(room);
        self.key_changes
            .iter()
            .filter(|change| members.iter().any(|m| m.name.same_as(&change.name)))
            .collect()
    }

    /// Key changes waiting for the user's decision, oldest first.
    pub fn key_changes(&self) -> &[KeyChange] {
        &self.key_changes
    }

    /// Whether the user ticked "I understand" for `name`'s key change.
    pub(super) fn consents_to(&self, name: &UserName) -> bool {
        self.consent.as_ref() == Some(&name.key())
    }

    /// The window gained or lost focus.
    pub fn set_focused(&mut self, focused: bool) {
        self.focused = focused;
        if focused
            && let Some(current) = self.selected()
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
        self.threads.entry(chat.clone()).or_insert_with(|| Thread {
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

    /// The conversations in the sidebar's order: the rooms joined, then
    /// the direct conversations.
    pub(super) fn sidebar_order(&self) -> Vec<Conversation> {
        let (rooms, direct): (Vec<&Conversation>, Vec<&Conversation>) = self
            .threads
            .values()
            .map(|thread| &thread.chat)
            .filter(|chat| match chat {
                Conversation::Room(room) => self.view.context.rooms.contains(room),
                Conversation::Direct(_) => true,
            })
            .partition(|chat| matches!(chat, Conversation::Room(_)));
        rooms.into_iter().chain(direct).cloned().collect()
    }

    /// The conversations the finder shows: those whose name holds its
    /// text, whatever the case (all of them while it is empty).
    pub(super) fn found(&self) -> Vec<Conversation> {
        let wanted = self
            .finder
            .as_deref()
            .unwrap_or_default()
            .trim()
            .trim_start_matches(['#', '@'])
            .to_ascii_lowercase();
        self.sidebar_order()
            .into_iter()
            .filter(|chat| {
                let name = match chat {
                    Conversation::Room(room) => room.as_str().to_ascii_lowercase(),
                    Conversation::Direct(user) => user.as_str().to_ascii_lowercase(),
                };
                name.contains(&wanted)
            })
            .collect()
    }

    /// Whether the conversation finder is open (Ctrl+K).
    pub fn is_finding(&self) -> bool {
        self.finder.is_some()
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

    /// A notice in the current conversation, or the status line.
    fn tell(&mut self, tone: Tone, text: String) {
        match self.current().cloned() {
            Some(chat) => self.notice(&chat, tone, text),
            None => self.status = Some((tone, text)),
        }
    }

    /// The badge beside `name`: this user's own name counts as verified.
    fn trust_of(&self, name: &UserName) -> TrustLevel {
        if name.same_as(self.me()) {
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
                return self.apply(*update);
            }
            Message::Updates(generation, updates) => {
                if generation != self.generation {
                    return Action::None;
                }
                return self.apply_all(updates);
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
                self.sidebar_open = false;
                if let Some(thread) = self.threads.get_mut(&chat) {
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
            Message::Timer(chat, seconds) => {
                self.command(Command::SetTimer { chat, seconds });
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
            Message::Consent(name, ticked) => {
                self.consent = ticked.then(|| name.key());
            }
            Message::AcceptKey(name) => {
                if !self.consents_to(&name) {
                    return Action::None;
                }
                self.command(Command::AcceptKey(name));
            }
            Message::Scrolled(viewport) => {
                self.page = viewport.bounds().height;
                let y = viewport.relative_offset().y;
                let Some(thread) = self.selected().and_then(|c| self.threads.get_mut(&c)) else {
                    return Action::None;
                };
                // The timeline is anchored at the bottom: 1.0 is the top.
                if y >= 0.999 && thread.timeline.has_older() {
                    thread.timeline.older();
                } else if y <= 0.001 && !thread.timeline.is_following() {
                    thread.timeline.newer();
                }
            }
            Message::Step(forward) => {
                let order = self.sidebar_order();
                let at = self
                    .selected()
                    .and_then(|current| order.iter().position(|chat| *chat == current));
                let next = match (at, forward) {
                    (_, _) if order.is_empty() => return Action::None,
                    (None, _) => 0,
                    (Some(at), true) => (at + 1) % order.len(),
                    (Some(at), false) => (at + order.len() - 1) % order.len(),
                };
                if let Some(chat) = order.get(next).cloned() {
                    return self.update(Message::Select(chat));
                }
            }
            Message::Page(up) => {
                // Anchored at the bottom: an offset counts from the newest
                // message, so older is further.
                let by = 0.9 * self.page;
                let offset = scrollable::AbsoluteOffset {
                    x: 0.0,
                    y: if up { by } else { -by },
                };
                return Action::Run(iced::widget::operation::scroll_by(ids::TIMELINE, offset));
            }
            Message::ToggleSidebar => self.sidebar_open = !self.sidebar_open,
            Message::Find => {
                // In a narrow window the finder is in the sidebar.
                self.sidebar_open = true;
                self.finder = Some(String::new());
                return Action::Run(iced::widget::operation::focus(ids::FINDER));
            }
            Message::FindField(text) => self.finder = Some(text),
            Message::FindSubmit => {
                let found = self.found().first().cloned();
                self.finder = None;
                self.sidebar_open = false;
                return match found {
                    Some(chat) => self.update(Message::Select(chat)),
                    None => Action::Run(iced::widget::operation::focus(ids::COMPOSER)),
                };
            }
            Message::Escape => {
                if self.finder.take().is_some() {
                    self.sidebar_open = false;
                    return Action::Run(iced::widget::operation::focus(ids::COMPOSER));
                }
                return self.update(Message::CloseVerify);
            }
            Message::Newest => {
                if let Some(thread) = self.selected().and_then(|c| self.threads.get_mut(&c)) {
                    thread.timeline.follow();
                }
                return Action::Run(to_newest());
            }
            Message::Details(id) => {
                let shown = self.selected().map(|chat| (chat, id));
                self.details = if self.details == shown { None } else { shown };
            }
            Message::Tick => {
                if self.retry_at.is_some_and(|at| at <= Instant::now()) {
                    self.retry_at = None;
                }
            }
            Message::RetryNow => {
                self.command(Command::Reconnect);
            }
            Message::Attach => {
                self.files.attach = match self.files.attach {
                    Some(_) => None,
                    None => Some(String::new()),
                };
                if self.files.attach.is_some() {
                    return Action::Run(iced::widget::operation::focus(ids::ATTACH));
                }
            }
            Message::AttachField(text) => self.files.attach = Some(text),
            Message::AttachBrowse => return Action::Run(Chat::browse()),
            Message::AttachPicked(picked) => {
                if let Some(path) = picked {
                    self.files.attach = Some(path.display().to_string());
                }
            }
            Message::AttachSend => self.send_attached(),
            Message::Dropped(path) => self.send_file(path),
            Message::Save(chat, id, blob, name) => self.save(chat, id, blob, name),
            Message::Previewed(blob, thumbnail) => self.previewed(blob, thumbnail),
            Message::Paste => return Action::Run(self.paste()),
            Message::Pasted(written) => self.pasted(written),
            Message::Dismiss(blob) => {
                self.files.transfers.remove(&blob);
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
}

/// Starts session number `generation` for `account` at `relay`; its updates
/// arrive in batches ([`batches`]), as [`Message::Updates`].
pub fn start(account: Account, relay: RelayAddress, generation: u64) -> Task<Message> {
    let config = session::Config::new(account, relay);
    Task::run(
        batches(session::run(config), BATCH_WINDOW),
        move |updates| Message::Updates(generation, updates),
    )
    .chain(Task::done(Message::Ended(generation)))
}

/// How often, at most, the session's updates reach the window while they
/// keep coming: each batch costs one rebuild and one redraw, whatever it
/// holds (a frame costs about 17 ms of CPU, docs/benchmarks.md).
pub const BATCH_WINDOW: Duration = Duration::from_millis(250);

/// `updates` in batches: an update after a quiet spell (longer than
/// `window` since the last batch) goes at once, with whatever else is
/// ready; one that comes sooner waits for the end of that window, and
/// goes with everything that came meanwhile. So a lone message shows at
/// once, and a flood redraws the window at most once per `window`.
pub fn batches<S>(updates: S, window: Duration) -> impl Stream<Item = Vec<Update>> + Send + 'static
where
    S: Stream<Item = Update> + Send + 'static,
{
    // The state: the updates (`None` once they ended: an ended stream is
    // never polled again) and when the last batch went.
    futures::stream::unfold(
        (Some(Box::pin(updates)), None::<tokio::time::Instant>),
        move |(updates, last)| async move {
            let mut updates = updates?;
            let first = updates.next().await?;
            let mut batch = vec![first];
            let until = last
                .map(|last| last + window)
                .filter(|until| *until > tokio::time::Instant::now());
            let mut ended = false;
            loop {
                // Whatever is ready now goes in this batch.
                match updates.next().now_or_never() {
                    Some(Some(update)) => {
                        batch.push(update);
                        continue;
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => {}
                }
                let Some(until) = until else { break };
                match tokio::time::timeout_at(until, updates.next()).await {
                    Ok(Some(update)) => batch.push(update),
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let updates = (!ended).then_some(updates);
            Some((batch, (updates, Some(tokio::time::Instant::now()))))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_client::session::{Problem, ProblemCode};

    fn numbered(i: usize) -> Update {
        Update::Error(Problem::new(ProblemCode::BadCommand, i.to_string()))
    }

    fn numbers(batch: &[Update]) -> Vec<usize> {
        batch
            .iter()
            .map(|u| match u {
                Update::Error(p) => p.message.parse().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn what_is_ready_together_goes_together_and_a_lone_update_alone() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for i in 0..100 {
            tx.unbounded_send(numbered(i)).unwrap();
        }
        let mut batched = Box::pin(batches(rx, BATCH_WINDOW));
        let first = batched.next().await.unwrap();
        assert_eq!(numbers(&first), (0..100).collect::<Vec<_>>());
        // A quiet spell longer than the window: the next goes alone, at once.
        tokio::time::sleep(BATCH_WINDOW + Duration::from_millis(50)).await;
        tx.unbounded_send(numbered(100)).unwrap();
        let at = Instant::now();
        assert_eq!(numbers(&batched.next().await.unwrap()), [100]);
        assert!(at.elapsed() < BATCH_WINDOW, "not held back");
        drop(tx);
        assert!(batched.next().await.is_none());
    }

    #[tokio::test]
    async fn an_ended_stream_is_never_polled_again() {
        // `unfold` panics when polled after its end, as the session's
        // stream may.
        let three =
            futures::stream::unfold(0, |i| async move { (i < 3).then(|| (numbered(i), i + 1)) });
        let all: Vec<Vec<Update>> = batches(three, BATCH_WINDOW).collect().await;
        let all: Vec<Vec<usize>> = all.iter().map(|b| numbers(b)).collect();
        assert_eq!(all, [vec![0, 1, 2]]);
    }

    #[tokio::test]
    async fn a_flood_reaches_the_window_at_most_once_per_window_and_in_order() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let window = Duration::from_millis(100);
        let producer = tokio::spawn(async move {
            for i in 0..120 {
                tx.unbounded_send(numbered(i)).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut batched = Box::pin(batches(rx, window));
        let mut seen = Vec::new();
        let mut times = Vec::new();
        while let Some(batch) = batched.next().await {
            times.push(Instant::now());
            seen.extend(numbers(&batch));
        }
        producer.await.unwrap();
        assert_eq!(seen, (0..120).collect::<Vec<_>>(), "each once, in order");
        // The batches come at least a window apart (the code waits; a slow
        // machine only spaces them more), however fast updates come; the
        // last goes as soon as the stream ends.
        assert!(times.len() > 2);
        for pair in times[..times.len() - 1].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap + Duration::from_millis(5) >= window, "{gap:?}");
        }
    }
}
