//! Interactive mode: `/` commands in, readable lines out.
//!
//! Every text that came from a peer or the relay (message text, names,
//! room names in listings, reasons) goes through
//! [`sotto_client::safe_text`] before it is printed, and a message of
//! several lines prints its lines after the first under [`CONTINUATION`],
//! which no header starts with: nothing a peer writes can pose as another
//! line of this program (docs/cli.md section 7.1).
//!
//! Your own messages end with their delivery mark and later changes are
//! said as notices naming the message: [`crate::marks`].

use std::fmt;
use std::time::Instant;

use sotto_client::commands;
use sotto_client::safe_text;
use sotto_client::session::{Chat, Command, Connection, Message, TrustLevel, Update, human_size};
use sotto_client::ui::{self, Local, Resolved, Said, Tone};
use sotto_crypto::Fingerprint;
use sotto_proto::{RoomName, UserName};

use crate::marks::Marks;

/// What starts every line of a message after its first: no header
/// (`[`, `*`, `!`) starts with a space.
pub(crate) const CONTINUATION: &str = "           | ";

/// Stored messages shown per conversation at start unless `--history N`
/// says otherwise (older ones are counted, not shown).
pub(crate) const HISTORY_SHOWN: usize = 20;

/// Lines typed before the session knows its rooms that are held for the
/// first room joined; more are refused.
pub(crate) const MAX_PENDING: usize = 16;

/// Interactive mode: what the session reported ([`ui::View`], shared with
/// the app) and the lines typed before a room was joined. What a typed
/// line means is [`ui::resolve`]'s, what an update says [`ui::View::apply`]'s:
/// this only prints.
#[derive(Debug)]
pub(crate) struct View {
    view: ui::View,
    /// Lines typed before any room was joined, for the first room joined.
    pending: Vec<String>,
    /// Stored messages shown per conversation at start.
    history: usize,
    /// How far this user's messages got, as said so far.
    marks: Marks,
    /// Whether the session is connected (as last reported).
    connected: bool,
    /// This user's name, for lines printed before the relay registered it.
    name: Option<UserName>,
}

fn safe(text: &impl fmt::Display) -> String {
    safe_text::inline(&text.to_string()).to_string()
}

/// The badge after a sender's name in a message line.
fn trust_badge(trust: TrustLevel) -> &'static str {
    match trust {
        TrustLevel::Verified => " [verified]",
        TrustLevel::Unverified => "",
        TrustLevel::Changed => " [KEY CHANGED]",
        TrustLevel::Unknown => " [no key]",
    }
}

/// HH:MM:SS (UTC) of a time in ms since the Unix epoch.
pub(crate) fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// `s` for a count other than one.
fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// The lines of a notice, each starting with its tone's mark: `* ` for
/// what happened, `! ` for a warning, `!! ` for a possible attack or a
/// failure; a listing's later lines keep their indentation.
fn said_lines(said: &Said, out: &mut Vec<String>) {
    let mark = match said.tone {
        Tone::Info => "*",
        Tone::Warning => "!",
        Tone::Danger => "!!",
    };
    out.extend(
        said.qualified()
            .lines()
            .map(|line| format!("{mark} {line}")),
    );
}

/// Where a message line says it belongs.
fn place(chat: &Chat, outgoing: bool) -> String {
    match chat {
        Chat::Room(room) => format!("#{room}"),
        Chat::Direct(peer) if outgoing => format!("-> @{peer}"),
        Chat::Direct(_) => "(direct)".to_owned(),
    }
}

/// The lines of a message: its header and first line, the rest under
/// [`CONTINUATION`]; `mark` (a delivery mark, `(arrived late)`) ends the
/// last line.
fn print_message(
    at_ms: u64,
    place: &str,
    from: &UserName,
    badge: &str,
    text: &str,
    mark: Option<&str>,
    out: &mut Vec<String>,
) {
    let mut lines = safe_text::message_lines(text);
    if let Some(mark) = mark
        && let Some(last) = lines.last_mut()
    {
        last.push(' ');
        last.push_str(mark);
    }
    let mut lines = lines.into_iter();
    out.push(format!(
        "[{}] {place} <{}{badge}> {}",
        clock(at_ms),
        safe(from),
        lines.next().unwrap_or_default()
    ));
    out.extend(lines.map(|line| format!("{CONTINUATION}{line}")));
}

impl View {
    /// Nothing known yet of a session with the relay at `relay`
    /// (`host:port`) for the user whose key has `fingerprint`.
    /// At start, at most `history` stored messages of each conversation
    /// are printed.
    pub(crate) fn new(relay: &str, fingerprint: Option<Fingerprint>, history: usize) -> Self {
        Self {
            view: ui::View::new(relay, fingerprint, true),
            pending: Vec::new(),
            history,
            marks: Marks::default(),
            connected: false,
            name: None,
        }
    }

    /// This user's name (shown on lines typed before connecting).
    pub(crate) fn named(mut self, name: UserName) -> Self {
        self.name = Some(name);
        self
    }

    /// When [`View::tick`] has something to say.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.marks.due()
    }

    /// Prints what waited until `now` (coalesced delivery notices).
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<String>) {
        self.marks.tick(now, out);
    }

    /// A line sent while the session cannot seal it at once (not
    /// connected, or a direct message to someone whose key is to be
    /// looked up first) is printed at once, marked pending.
    fn typed(&mut self, command: &Command, out: &mut Vec<String>) {
        let Command::Send { chat, text } = command else {
            return;
        };
        let waits = !self.connected
            || matches!(chat, Chat::Direct(peer)
                if self.view.trust_of(peer).0 == TrustLevel::Unknown);
        if !waits {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.queued(chat, text, now, out);
    }

    /// Prints a text of this user's not sealed yet, typed at `at_ms`,
    /// marked pending; the session's report of it once sealed is not
    /// printed again.
    fn queued(&mut self, chat: &Chat, text: &str, at_ms: u64, out: &mut Vec<String>) {
        let Some(me) = self.view.me().or(self.name.as_ref()).cloned() else {
            return;
        };
        print_message(
            at_ms,
            &place(chat, true),
            &me,
            "",
            text,
            Some("(pending)"),
            out,
        );
        self.marks.typed(chat.clone(), text.to_owned(), at_ms);
    }

    fn current_room(&self) -> Option<&RoomName> {
        match &self.view.context.current {
            Some(Chat::Room(room)) => Some(room),
            _ => None,
        }
    }

    /// The prompt of the line editor: the current conversation.
    pub(crate) fn prompt(&self) -> String {
        match self.current_room() {
            Some(room) => format!("#{room}> "),
            None => "> ".to_owned(),
        }
    }

    /// Parses one line typed by the user; what it prints at once goes to
    /// `out`.
    pub(crate) fn command(
        &mut self,
        line: &str,
        out: &mut Vec<String>,
    ) -> Result<Option<Command>, String> {
        if let Some(c) = safe_text::find_control(line) {
            return Err(format!(
                "not sent: the line contains the control character {} (an arrow or function key typed without a line editor?)",
                safe_text::inline(c.encode_utf8(&mut [0; 4]))
            ));
        }
        match ui::resolve(line, &self.view.context)? {
            Resolved::Nothing => {}
            Resolved::Command(command) => {
                // `/join` makes the room current at once.
                if let Command::Join(room) = &command {
                    self.view.context.current = Some(Chat::Room(room.clone()));
                }
                self.typed(&command, out);
                return Ok(Some(command));
            }
            Resolved::Local(Local::Help) => out.extend(commands::HELP.lines().map(str::to_owned)),
            Resolved::Local(Local::Members(room)) => self.print_members(&room, out),
            Resolved::Local(Local::Switch(room)) => {
                out.push(format!("* current room: #{room}"));
                self.view.context.current = Some(Chat::Room(room));
            }
            Resolved::Local(Local::Fingerprint(fingerprint)) => {
                out.push(format!("* your fingerprint: {fingerprint}"));
            }
            Resolved::Local(Local::Hold(text)) => return self.hold(text, out),
        }
        Ok(None)
    }

    /// A plain line typed while there is no current room and the session
    /// has not reported one yet (it is still connecting): held for the
    /// first room joined, up to [`MAX_PENDING`] lines.
    fn hold(&mut self, text: String, out: &mut Vec<String>) -> Result<Option<Command>, String> {
        if self.pending.len() >= MAX_PENDING {
            return Err(format!(
                "not sent: {MAX_PENDING} lines are already waiting for the first room to be joined"
            ));
        }
        self.pending.push(text);
        let count = self.pending.len();
        out.push(format!(
            "* not in a room yet: {count} line{} held, sent to the first room joined",
            plural(count)
        ));
        Ok(None)
    }

    /// Says that the lines still held were not sent (the session ended).
    pub(crate) fn abandon(&mut self, out: &mut Vec<String>) {
        let count = self.pending.len();
        if count > 0 {
            out.push(format!(
                "! {count} line{} typed before a room was joined {} not sent",
                plural(count),
                if count == 1 { "was" } else { "were" }
            ));
            self.pending.clear();
        }
    }

    fn print_members(&self, room: &RoomName, out: &mut Vec<String>) {
        let members = self.view.members(room);
        out.push(format!("* #{room}: {} members", members.len()));
        for member in members {
            out.push(format!("*   {}", self.view.member_label(member)));
        }
    }

    /// Prints `message`; one of this user's is tracked for its delivery
    /// notices (`live`: sent in this run, not from the history).
    fn message(&mut self, message: &Message, live: bool, out: &mut Vec<String>) {
        let mut shown_mark = None;
        if message.outgoing {
            match self.marks.sent(message, live, self.connected) {
                // Printed when typed.
                None => return,
                Some(mark) => shown_mark = mark,
            }
        }
        let badge = if message.outgoing {
            ""
        } else {
            trust_badge(message.trust)
        };
        let mut text_mark = shown_mark;
        if message.late {
            text_mark = Some(match text_mark {
                Some(mark) => format!("(arrived late) {mark}"),
                None => "(arrived late)".to_owned(),
            });
        }
        if let Some(expires) = message.expires_at_ms {
            let disappears = format!("(disappears at {})", clock(expires));
            text_mark = Some(match text_mark {
                Some(mark) => format!("{mark} {disappears}"),
                None => disappears,
            });
        }
        // A file: its name, size and number to save it by.
        let text = match (&message.file, self.view.file_number(message)) {
            (Some(file), Some(number)) => format!(
                "[file {number}] {} ({}){}",
                message.text,
                human_size(file.size),
                if message.outgoing {
                    String::new()
                } else {
                    format!(": /save {number} to keep it")
                }
            ),
            _ => message.text.clone(),
        };
        print_message(
            message.sent_at_ms,
            &place(&message.chat, message.outgoing),
            &message.from,
            badge,
            &text,
            text_mark.as_deref(),
            out,
        );
    }

    /// Prints one update into `out`; returns the commands it releases
    /// (lines held until a room was joined).
    pub(crate) fn show(&mut self, update: &Update, out: &mut Vec<String>) -> Vec<Command> {
        // Whether a room was joined before this update (lines are held
        // until the first one is).
        let rooms_known = !self.view.context.hold;
        let said = self.view.apply(update);
        // An error about a line printed when typed names it instead.
        let named = match update {
            Update::Error(problem) => self.marks.not_sent(problem),
            _ => Vec::new(),
        };
        if named.is_empty() {
            for said in said {
                said_lines(&said, out);
            }
        } else {
            out.extend(named);
        }
        match update {
            Update::History { chat, messages } => {
                let older = messages.len().saturating_sub(self.history);
                if older > 0 {
                    out.push(format!(
                        "* {chat}: {older} older message{} in history",
                        plural(older)
                    ));
                }
                for message in messages.iter().skip(older) {
                    self.message(message, false, out);
                }
            }
            Update::Message(message) => self.message(message, true, out),
            Update::Queued(queued) => {
                for queued in queued {
                    self.queued(&queued.chat, &queued.text, queued.typed_at_ms, out);
                }
            }
            Update::Delivery { chat, id, delivery } => {
                self.marks.delivery(chat, id, delivery, Instant::now(), out);
            }
            Update::Connection(Connection::Connected { .. }) => self.connected = true,
            Update::Connection(Connection::Reconnecting { .. }) => {
                self.connected = false;
                self.marks.disconnected(out);
            }
            Update::Connection(Connection::Connecting) => self.connected = false,
            Update::Connection(Connection::Failed { .. }) => {
                self.connected = false;
                self.abandon(out);
            }
            Update::Joined { room } if !rooms_known => {
                return self
                    .pending
                    .drain(..)
                    .map(|text| Command::Send {
                        chat: Chat::Room(room.clone()),
                        text,
                    })
                    .collect();
            }
            _ => {}
        }
        Vec::new()
    }
}

#[cfg(test)]
#[path = "marks_tests.rs"]
mod marks_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_client::contacts::KeyEvent;
    use sotto_client::session::{Member, PresenceChange};
    use sotto_crypto::Fingerprint;

    fn message(from: &str, text: &str) -> Update {
        Update::Message(Message {
            chat: Chat::Room("lobby".parse().unwrap()),
            from: from.parse().unwrap(),
            fingerprint: Fingerprint([1; 32]),
            trust: TrustLevel::Unverified,
            outgoing: false,
            seq: 0,
            sent_at_ms: 25_199_000,
            received_at_ms: 25_199_000,
            late: false,
            position: (0, 0),
            text: text.to_owned(),
            delivery: None,
            expires_at_ms: None,
            file: None,
        })
    }

    pub(super) fn shown(view: &mut View, update: &Update) -> Vec<String> {
        let mut out = Vec::new();
        view.show(update, &mut out);
        out
    }

    /// A view connected as alice, in the lobby.
    pub(super) fn connected() -> View {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        shown(
            &mut view,
            &Update::Connection(Connection::Connected {
                name: "alice".parse().unwrap(),
            }),
        );
        shown(
            &mut view,
            &Update::Joined {
                room: "lobby".parse().unwrap(),
            },
        );
        view
    }

    #[test]
    fn a_forged_header_inside_a_message_is_a_continuation_line() {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        let out = shown(
            &mut view,
            &message(
                "mallory",
                "hi\n[06:59:59] #lobby <bob [verified]> please send me your passphrase",
            ),
        );
        assert_eq!(
            out,
            [
                "[06:59:59] #lobby <mallory> hi".to_owned(),
                format!(
                    "{CONTINUATION}[06:59:59] #lobby <bob [verified]> please send me your passphrase"
                ),
            ]
        );
    }

    #[test]
    fn escapes_in_a_message_are_shown_not_obeyed() {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        let out = shown(
            &mut view,
            &message("mallory", "\u{1b}]0;TITLE\u{7} \u{1b}[2J"),
        );
        assert_eq!(out, [r"[06:59:59] #lobby <mallory> \e]0;TITLE\x07 \e[2J"]);
    }

    #[test]
    fn a_look_alike_contact_is_a_warning_naming_both_with_the_key() {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        let fingerprint = Fingerprint([0xab; 32]);
        let out = shown(
            &mut view,
            &Update::Key(KeyEvent::Pinned {
                name: "aIice".parse().unwrap(),
                fingerprint,
                lookalikes: vec!["alice".parse().unwrap()],
            }),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0]
                .starts_with("!! Careful: the new contact aIice has a name that looks like alice,"),
            "{out:?}"
        );
        assert!(out[0].contains(&format!("aIice's key is {fingerprint}")));
        assert!(out[0].contains("/verify alice"));
        // Without look-alikes: the plain notice only.
        let out = shown(
            &mut view,
            &Update::Key(KeyEvent::Pinned {
                name: "carol".parse().unwrap(),
                fingerprint,
                lookalikes: Vec::new(),
            }),
        );
        assert_eq!(
            out,
            [format!(
                "* New contact carol: key {fingerprint}, pinned unverified (/verify carol to be sure it is them)"
            )]
        );
        // The look-alike is flagged in member lists.
        let out = shown(
            &mut view,
            &Update::Members {
                room: "lobby".parse().unwrap(),
                members: vec![Member {
                    name: "aIice".parse().unwrap(),
                    fingerprint: Some(fingerprint),
                    trust: TrustLevel::Unverified,
                    online: true,
                }],
            },
        );
        assert_eq!(
            out,
            [format!(
                "* In #lobby: aIice [unverified] [looks like alice, key {fingerprint}]"
            )]
        );
    }

    #[test]
    fn lines_typed_before_a_room_is_joined_are_held_then_sent_there() {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        let mut out = Vec::new();
        assert!(view.command("early", &mut out).unwrap().is_none());
        assert!(out[0].starts_with("* not in a room yet: 1 line held"));
        let lobby: RoomName = "lobby".parse().unwrap();
        let released = view.show(
            &Update::Joined {
                room: lobby.clone(),
            },
            &mut out,
        );
        assert!(matches!(
            released.as_slice(),
            [Command::Send { chat: Chat::Room(room), text }] if *room == lobby && text == "early"
        ));
        // Once rooms are known, no room means a refusal, as before.
        view.show(&Update::Left { room: lobby }, &mut out);
        assert_eq!(
            view.command("late", &mut out).unwrap_err(),
            "you are in no room: /join ROOM first"
        );
    }

    #[test]
    fn held_lines_are_bounded_and_reported_when_the_session_fails() {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        let mut out = Vec::new();
        for _ in 0..MAX_PENDING {
            view.command("x", &mut out).unwrap();
        }
        assert!(view.command("x", &mut out).is_err());
        out.clear();
        view.show(
            &Update::Connection(Connection::Failed {
                reason: "no".to_owned(),
            }),
            &mut out,
        );
        assert_eq!(
            out,
            [
                "!! Not connected: no".to_owned(),
                format!("! {MAX_PENDING} lines typed before a room was joined were not sent")
            ]
        );
    }

    #[test]
    fn at_start_only_the_newest_stored_messages_are_printed() {
        let history = |view: &mut View, count: u64| {
            let messages = (0..count)
                .map(|seq| match message("bob", &format!("m{seq}")) {
                    Update::Message(message) => message,
                    other => panic!("not a message: {other:?}"),
                })
                .collect();
            let update = Update::History {
                chat: Chat::Room("lobby".parse().unwrap()),
                messages,
            };
            shown(view, &update)
        };
        let mut view = View::new("relay.example:7447", None, 2);
        let out = history(&mut view, 3);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], "* #lobby: 1 older message in history");
        assert!(
            out[1].ends_with("> m1") && out[2].ends_with("> m2"),
            "{out:?}"
        );
        let mut none = View::new("relay.example:7447", None, 0);
        assert_eq!(
            history(&mut none, 3),
            ["* #lobby: 3 older messages in history"]
        );
    }

    #[test]
    fn a_typed_escape_sequence_is_refused() {
        let mut view = View::new("relay.example:7447", None, HISTORY_SHOWN);
        let mut out = Vec::new();
        let error = view.command("\u{1b}[A", &mut out).unwrap_err();
        assert!(error.starts_with(r"not sent: the line contains the control character \e"));
        assert!(view.pending.is_empty());
    }

    #[test]
    fn offline_members_are_listed_as_offline_and_their_presence_is_said() {
        let mut view = connected();
        let lobby: RoomName = "lobby".parse().unwrap();
        let member = |name: &str, online| Member {
            name: name.parse().unwrap(),
            fingerprint: Some(Fingerprint([2; 32])),
            trust: TrustLevel::Unverified,
            online,
        };
        let out = shown(
            &mut view,
            &Update::Members {
                room: lobby.clone(),
                members: vec![member("alice", true), member("bob", false)],
            },
        );
        assert_eq!(
            out,
            ["* In #lobby: alice (you), bob [unverified] (offline)"]
        );
        let mut out = Vec::new();
        assert!(view.command("/members", &mut out).unwrap().is_none());
        assert_eq!(
            out,
            [
                "* #lobby: 2 members",
                "*   alice (you)",
                "*   bob [unverified] (offline)"
            ]
        );
        for (change, line) in [
            (PresenceChange::Disconnected, "* bob went offline in #lobby"),
            (PresenceChange::Connected, "* bob is back in #lobby"),
            (PresenceChange::Left, "* bob left #lobby"),
        ] {
            let out = shown(
                &mut view,
                &Update::Presence {
                    room: lobby.clone(),
                    name: "bob".parse().unwrap(),
                    change,
                },
            );
            assert_eq!(out, [line]);
        }
    }
}
