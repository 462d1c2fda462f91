//! Interactive mode: `/` commands in, readable lines out.
//!
//! Every text that came from a peer or the relay (message text, names,
//! room names in listings, reasons) goes through
//! [`sotto_client::safe_text`] before it is printed, and a message of
//! several lines prints its lines after the first under [`CONTINUATION`],
//! which no header starts with: nothing a peer writes can pose as another
//! line of this program (docs/cli.md section 7.1).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sotto_client::commands;
use sotto_client::contacts::KeyEvent;
use sotto_client::safe_text;
use sotto_client::session::{
    Chat, Command, Connection, Member, Message, PresenceChange, TrustLevel, Update,
};
use sotto_client::ui::{self, Local, Resolved};
use sotto_crypto::{Fingerprint, SafetyNumber};
use sotto_proto::{RoomName, UserKey, UserName};

/// What starts every line of a message after its first: no header
/// (`[`, `*`, `!`) starts with a space.
pub(crate) const CONTINUATION: &str = "           | ";

/// Lines typed before the session knows its rooms that are held for the
/// first room joined; more are refused.
pub(crate) const MAX_PENDING: usize = 16;

/// What interactive mode remembers: the current room, the rooms joined,
/// the members of each room, and the safety numbers it showed (so
/// `/verify NAME yes` marks exactly the number the user compared). What a
/// typed line means in this is [`ui::resolve`]'s.
#[derive(Debug, Default)]
pub(crate) struct View {
    current: Option<RoomName>,
    rooms: BTreeSet<RoomName>,
    members: BTreeMap<RoomName, Vec<Member>>,
    shown: BTreeMap<UserKey, SafetyNumber>,
    me: Option<UserName>,
    /// This user's key fingerprint, for `/fingerprint`.
    pub(crate) fingerprint: Option<Fingerprint>,
    /// Whether the session reported a room yet (a `Joined`): until then a
    /// plain line is held in `pending`, not refused.
    rooms_known: bool,
    /// Lines typed before any room was joined, for the first room joined.
    pending: Vec<String>,
    /// New contacts whose names look like known ones (folded name to the
    /// look-alikes), flagged in member lists.
    lookalikes: BTreeMap<UserKey, Vec<UserName>>,
}

/// Untrusted text (a name, a reason) ready to print on one line.
fn safe(text: &impl fmt::Display) -> String {
    safe_text::inline(&text.to_string()).to_string()
}

fn trust_badge(trust: TrustLevel) -> &'static str {
    match trust {
        TrustLevel::Verified => " [verified]",
        TrustLevel::Unverified => "",
        TrustLevel::Changed => " [KEY CHANGED]",
        TrustLevel::Unknown => " [no key]",
    }
}

/// HH:MM:SS (UTC) of a time in ms since the Unix epoch.
fn clock(ms: u64) -> String {
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

impl View {
    /// The prompt of the line editor: the current conversation.
    pub(crate) fn prompt(&self) -> String {
        match &self.current {
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
        let context = ui::Context {
            current: self.current.clone().map(Chat::Room),
            rooms: self.rooms.clone(),
            shown: self.shown.clone(),
            fingerprint: self.fingerprint,
            hold: !self.rooms_known,
        };
        match ui::resolve(line, &context)? {
            Resolved::Nothing => {}
            Resolved::Command(command) => {
                // `/join` makes the room current at once.
                if let Command::Join(room) = &command {
                    self.current = Some(room.clone());
                }
                return Ok(Some(command));
            }
            Resolved::Local(Local::Help) => out.extend(commands::HELP.lines().map(str::to_owned)),
            Resolved::Local(Local::Members(room)) => self.print_members(&room, out),
            Resolved::Local(Local::Switch(room)) => {
                out.push(format!("* current room: #{room}"));
                self.current = Some(room);
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

    /// A name as listed, with " [looks like NAME, key ...]" for a contact
    /// flagged as a look-alike in this run.
    fn label(&self, name: &UserName, trust: TrustLevel, fingerprint: Option<String>) -> String {
        let mut label = format!("{}{}", safe(name), self.badge(name, trust));
        if let Some(like) = self.lookalikes.get(&name.key()) {
            let like: Vec<String> = like.iter().map(safe).collect();
            label.push_str(&format!(" [looks like {}", like.join(", ")));
            if let Some(fingerprint) = fingerprint {
                label.push_str(&format!(", key {fingerprint}"));
            }
            label.push(']');
        }
        label
    }

    fn print_members(&self, room: &RoomName, out: &mut Vec<String>) {
        let members = self
            .members
            .get(room)
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.push(format!("* #{room}: {} members", members.len()));
        for member in members {
            out.push(format!(
                "*   {}",
                self.label(
                    &member.name,
                    member.trust,
                    member.fingerprint.map(|f| f.to_string())
                )
            ));
        }
    }

    /// The trust badge after a name; "(you)" for this user.
    fn badge(&self, name: &UserName, trust: TrustLevel) -> &'static str {
        if self.me.as_ref() == Some(name) {
            " (you)"
        } else {
            trust_badge(trust)
        }
    }

    fn message(&self, message: &Message, out: &mut Vec<String>) {
        let badge = if message.outgoing {
            ""
        } else {
            trust_badge(message.trust)
        };
        let place = match &message.chat {
            Chat::Room(room) => format!("#{room}"),
            Chat::Direct(peer) if message.outgoing => format!("-> @{peer}"),
            Chat::Direct(_) => "(direct)".to_owned(),
        };
        let mut lines = safe_text::message_lines(&message.text);
        if message.late
            && let Some(last) = lines.last_mut()
        {
            last.push_str(" (arrived late)");
        }
        let mut lines = lines.into_iter();
        out.push(format!(
            "[{}] {place} <{}{badge}> {}",
            clock(message.sent_at_ms),
            safe(&message.from),
            lines.next().unwrap_or_default()
        ));
        out.extend(lines.map(|line| format!("{CONTINUATION}{line}")));
    }

    /// Prints one update into `out`; returns the commands it releases
    /// (lines held until a room was joined).
    pub(crate) fn show(&mut self, update: &Update, out: &mut Vec<String>) -> Vec<Command> {
        match update {
            Update::Ready(_) => {}
            Update::History { chat, messages } => {
                let recent = messages.len().saturating_sub(20);
                if recent > 0 {
                    out.push(format!("* {chat}: {recent} older messages in history"));
                }
                for message in messages.iter().skip(recent) {
                    self.message(message, out);
                }
            }
            Update::Connection(state) => match state {
                Connection::Connecting => out.push("* connecting...".to_owned()),
                Connection::Connected { name } => {
                    self.me = Some(name.clone());
                    out.push(format!("* connected as {}", safe(name)));
                }
                Connection::Reconnecting { after, reason } => out.push(format!(
                    "! connection lost ({}); reconnecting in {:.1} s",
                    safe(reason),
                    after.as_secs_f64()
                )),
                Connection::Failed { reason } => {
                    out.push(format!("! {}", safe(reason)));
                    self.abandon(out);
                }
            },
            Update::Joined { room } => {
                self.rooms.insert(room.clone());
                if self.current.is_none() {
                    self.current = Some(room.clone());
                }
                out.push(format!("* you joined #{}", safe(room)));
                if !self.rooms_known {
                    self.rooms_known = true;
                    return self
                        .pending
                        .drain(..)
                        .map(|text| Command::Send {
                            chat: Chat::Room(room.clone()),
                            text,
                        })
                        .collect();
                }
            }
            Update::Left { room } => {
                self.rooms.remove(room);
                self.members.remove(room);
                if self.current.as_ref() == Some(room) {
                    self.current = self.rooms.first().cloned();
                }
                out.push(format!("* you left #{}", safe(room)));
            }
            Update::Members { room, members } => {
                let first = !self.members.contains_key(room);
                self.members.insert(room.clone(), members.clone());
                if first {
                    let names: Vec<String> = members
                        .iter()
                        .map(|m| self.label(&m.name, m.trust, m.fingerprint.map(|f| f.to_string())))
                        .collect();
                    out.push(format!("* in #{}: {}", safe(room), names.join(", ")));
                }
            }
            Update::Presence { room, name, change } => {
                let what = match change {
                    PresenceChange::Joined => "joined",
                    PresenceChange::Left => "left",
                    PresenceChange::Disconnected => "disconnected from",
                };
                out.push(format!("* {} {what} #{}", safe(name), safe(room)));
            }
            Update::Message(message) => self.message(message, out),
            Update::Missing { chat, from, count } => {
                let s = if *count == 1 { "" } else { "s" };
                out.push(format!(
                    "! {}: {count} message{s} from {} missing",
                    safe(chat),
                    safe(from)
                ));
            }
            Update::Rejected { chat, from } => match chat {
                Some(chat) => out.push(format!(
                    "! {}: a message claiming to be from {} could not be opened and was dropped",
                    safe(chat),
                    safe(from)
                )),
                None => out.push(format!(
                    "! a message claiming to be from {} could not be opened and was dropped",
                    safe(from)
                )),
            },
            Update::NotForYou { chat, from } => out.push(format!(
                "! {}: {} sent a message without a key for you (you are not among its recipients)",
                safe(chat),
                safe(from)
            )),
            Update::Key(event) => self.key(event, out),
            Update::Trust { name, trust } => {
                let name = safe(name);
                match trust {
                    TrustLevel::Verified => out.push(format!("* {name} is now verified")),
                    TrustLevel::Unverified => {
                        out.push(format!("* {name}'s new key is accepted (unverified)"));
                    }
                    other => out.push(format!("* {name}: {other:?}")),
                }
            }
            Update::SafetyNumber {
                name,
                fingerprint,
                safety_number,
                trust,
            } => {
                self.shown.insert(name.key(), safety_number.clone());
                let name = safe(name);
                out.push(format!("* {name}{}: key {fingerprint}", trust_badge(*trust)));
                out.push(format!(
                    "* safety number with {name} (compare it with theirs, in person or by a call):"
                ));
                for line in safety_number.groups().chunks(4) {
                    out.push(format!("*     {}", line.join(" ")));
                }
                out.push(format!("* if it matches: /verify {name} yes"));
            }
            Update::NotSentTo {
                chat,
                names,
                reason,
            } => {
                if names.is_empty() {
                    out.push(format!("! {}: {}", safe(chat), safe(reason)));
                } else {
                    let names: Vec<String> = names.iter().map(safe).collect();
                    out.push(format!(
                        "! {}: not sent to {}: {}",
                        safe(chat),
                        names.join(", "),
                        safe(reason)
                    ));
                }
            }
            Update::RosterMismatch { room, from } => out.push(format!(
                "! #{}: {} encrypted for another set of members than you see: the relay may be showing members different rosters",
                safe(room),
                safe(from)
            )),
            Update::Users(users) => {
                out.push(format!("* {} users connected:", users.len()));
                for user in users {
                    let rooms = if user.rooms.is_empty() {
                        "no room".to_owned()
                    } else {
                        user.rooms
                            .iter()
                            .map(|r| format!("#{}", safe(r)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    out.push(format!(
                        "*   {}{} in {rooms}",
                        safe(&user.name),
                        self.badge(&user.name, user.trust),
                    ));
                }
            }
            Update::Rooms(rooms) => {
                out.push(format!("* {} rooms:", rooms.len()));
                for (room, count) in rooms {
                    out.push(format!("*   #{} ({count} members)", safe(room)));
                }
            }
            Update::VerifiedOnly { room, on } => {
                let room = safe(room);
                if *on {
                    out.push(format!(
                        "* #{room}: messages now go to verified members only"
                    ));
                } else {
                    out.push(format!(
                        "* #{room}: messages go to every member with a known key"
                    ));
                }
            }
            Update::Error(message) => out.push(format!("! {}", safe(message))),
            Update::RelayKeyMoved(moved) => out.push(format!("* {}", safe(&moved.to_string()))),
        }
        Vec::new()
    }

    fn key(&mut self, event: &KeyEvent, out: &mut Vec<String>) {
        match event {
            KeyEvent::Pinned {
                name,
                fingerprint,
                lookalikes,
            } => {
                let shown = safe(name);
                if !lookalikes.is_empty() {
                    let like: Vec<String> = lookalikes.iter().map(safe).collect();
                    out.push(format!(
                        "!! WARNING: the new contact {shown} has a name that looks like {}, whom you already know: it may be someone else posing as them.",
                        like.join(", ")
                    ));
                    out.push(format!("!!   {shown}'s key: {fingerprint}"));
                    out.push(format!(
                        "!!   Compare it with the key you know ({}) before you trust {shown}.",
                        like.iter()
                            .map(|n| format!("/verify {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    self.lookalikes.insert(name.key(), lookalikes.clone());
                }
                out.push(format!(
                    "* new contact {shown}, key {fingerprint} (unverified: /verify {shown})"
                ));
            }
            KeyEvent::Changed {
                name,
                previous,
                current,
            } => {
                let name = safe(name);
                out.push(format!(
                    "! {name}'s key changed from {previous} to {current} (they were not verified; /verify {name})"
                ));
            }
            KeyEvent::ChangedVerified {
                name,
                pinned,
                offered,
            } => {
                let name = safe(name);
                out.push(format!(
                    "!! WARNING: {name}'s key changed since you verified it."
                ));
                out.push(format!("!!   verified key: {pinned}"));
                out.push(format!("!!   new key:      {offered}"));
                out.push(format!(
                    "!! Nothing is sent to {name} until you compare the new safety number (/verify {name}) or accept the new key (/trust {name})."
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        })
    }

    fn shown(view: &mut View, update: &Update) -> Vec<String> {
        let mut out = Vec::new();
        view.show(update, &mut out);
        out
    }

    #[test]
    fn a_forged_header_inside_a_message_is_a_continuation_line() {
        let mut view = View::default();
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
        let mut view = View::default();
        let out = shown(
            &mut view,
            &message("mallory", "\u{1b}]0;TITLE\u{7} \u{1b}[2J"),
        );
        assert_eq!(out, [r"[06:59:59] #lobby <mallory> \e]0;TITLE\x07 \e[2J"]);
    }

    #[test]
    fn a_look_alike_contact_is_a_warning_naming_both_with_the_key() {
        let mut view = View::default();
        let fingerprint = Fingerprint([0xab; 32]);
        let out = shown(
            &mut view,
            &Update::Key(KeyEvent::Pinned {
                name: "aIice".parse().unwrap(),
                fingerprint,
                lookalikes: vec!["alice".parse().unwrap()],
            }),
        );
        assert!(
            out[0]
                .starts_with("!! WARNING: the new contact aIice has a name that looks like alice,")
        );
        assert_eq!(out[1], format!("!!   aIice's key: {fingerprint}"));
        assert_eq!(
            out.last().unwrap(),
            &format!("* new contact aIice, key {fingerprint} (unverified: /verify aIice)")
        );
        // Without look-alikes: the plain notice only.
        let out = shown(
            &mut view,
            &Update::Key(KeyEvent::Pinned {
                name: "carol".parse().unwrap(),
                fingerprint,
                lookalikes: Vec::new(),
            }),
        );
        assert_eq!(out.len(), 1);
        // The look-alike is flagged in member lists.
        let out = shown(
            &mut view,
            &Update::Members {
                room: "lobby".parse().unwrap(),
                members: vec![Member {
                    name: "aIice".parse().unwrap(),
                    fingerprint: Some(fingerprint),
                    trust: TrustLevel::Unverified,
                }],
            },
        );
        assert_eq!(
            out,
            [format!(
                "* in #lobby: aIice [looks like alice, key {fingerprint}]"
            )]
        );
    }

    #[test]
    fn lines_typed_before_a_room_is_joined_are_held_then_sent_there() {
        let mut view = View::default();
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
        let mut view = View::default();
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
                "! no".to_owned(),
                format!("! {MAX_PENDING} lines typed before a room was joined were not sent")
            ]
        );
    }

    #[test]
    fn a_typed_escape_sequence_is_refused() {
        let mut view = View::default();
        let mut out = Vec::new();
        let error = view.command("\u{1b}[A", &mut out).unwrap_err();
        assert!(error.starts_with(r"not sent: the line contains the control character \e"));
        assert!(view.pending.is_empty());
    }
}
