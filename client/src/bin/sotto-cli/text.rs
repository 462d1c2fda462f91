//! Interactive mode: `/` commands in, readable lines out.

use std::collections::BTreeMap;

use sotto_client::commands::{self, Line};
use sotto_client::contacts::KeyEvent;
use sotto_client::session::{
    Chat, Command, Connection, Member, Message, PresenceChange, TrustLevel, Update,
};
use sotto_proto::RoomName;

/// What interactive mode remembers: the current room, the members of each
/// room, and the safety numbers it showed (so `/verify NAME yes` marks
/// exactly the number the user compared).
#[derive(Debug, Default)]
pub(crate) struct View {
    current: Option<RoomName>,
    members: BTreeMap<RoomName, Vec<Member>>,
    shown: BTreeMap<String, String>,
    me: Option<String>,
    /// This user's key fingerprint, for `/fingerprint`.
    pub(crate) fingerprint: Option<String>,
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

impl View {
    /// Parses one line typed by the user.
    pub(crate) fn command(&mut self, line: &str) -> Result<Option<Command>, String> {
        let command = match commands::parse(line)? {
            Line::Empty => return Ok(None),
            Line::Say(text) => {
                let Some(room) = self.current.clone() else {
                    return Err("you are in no room: /join ROOM first".to_owned());
                };
                Command::Send {
                    chat: Chat::Room(room),
                    text,
                }
            }
            Line::Help => {
                println!("{}", commands::HELP);
                return Ok(None);
            }
            Line::Quit => Command::Quit,
            Line::Users => Command::ListUsers,
            Line::Rooms => Command::ListRooms,
            Line::Members => {
                self.print_members();
                return Ok(None);
            }
            Line::Join(room) => {
                self.current = Some(room.clone());
                Command::Join(room)
            }
            Line::Room(room) => {
                if !self.members.contains_key(&room) {
                    return Err(format!("you are not in #{room}: /join {room}"));
                }
                println!("* current room: #{room}");
                self.current = Some(room);
                return Ok(None);
            }
            Line::Leave(Some(room)) => Command::Leave(room),
            Line::Leave(None) => match &self.current {
                Some(room) => Command::Leave(room.clone()),
                None => return Err("you are in no room".to_owned()),
            },
            Line::Msg { to, text } => Command::Send {
                chat: Chat::Direct(to),
                text,
            },
            Line::Fingerprint => {
                match &self.fingerprint {
                    Some(fingerprint) => println!("* your fingerprint: {fingerprint}"),
                    None => println!("* use `sotto-cli fingerprint`"),
                }
                return Ok(None);
            }
            Line::SafetyNumber(name) => Command::SafetyNumber(name),
            Line::Confirm(name) => {
                let Some(number) = self.shown.get(&name.as_str().to_ascii_lowercase()) else {
                    return Err(format!("first /verify {name} and compare the number"));
                };
                Command::Verify {
                    safety_number: number.clone(),
                    name,
                }
            }
            Line::Verify {
                name,
                safety_number,
            } => Command::Verify {
                name,
                safety_number,
            },
            Line::Trust(name) => Command::AcceptKey(name),
            Line::VerifiedOnly(on) => match &self.current {
                Some(room) => Command::SetVerifiedOnly {
                    room: room.clone(),
                    on,
                },
                None => return Err("you are in no room".to_owned()),
            },
        };
        Ok(Some(command))
    }

    fn print_members(&self) {
        let Some(room) = &self.current else {
            println!("! you are in no room");
            return;
        };
        let members = self
            .members
            .get(room)
            .map(Vec::as_slice)
            .unwrap_or_default();
        println!("* #{room}: {} members", members.len());
        for member in members {
            println!(
                "*   {}{}",
                member.name,
                self.badge(&member.name, member.trust)
            );
        }
    }

    /// The trust badge after a name; "(you)" for this user.
    fn badge(&self, name: &str, trust: TrustLevel) -> &'static str {
        if self.me.as_deref() == Some(name) {
            " (you)"
        } else {
            trust_badge(trust)
        }
    }

    fn message(&self, message: &Message) {
        let late = if message.late { " (arrived late)" } else { "" };
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
        println!(
            "[{}] {place} <{}{badge}> {}{late}",
            clock(message.sent_at_ms),
            message.from,
            message.text
        );
    }

    /// Prints one update.
    pub(crate) fn show(&mut self, update: &Update) {
        match update {
            Update::Ready(_) => {}
            Update::History { chat, messages } => {
                let recent = messages.len().saturating_sub(20);
                if recent > 0 {
                    println!("* {chat}: {recent} older messages in history");
                }
                for message in messages.iter().skip(recent) {
                    self.message(message);
                }
            }
            Update::Connection(state) => match state {
                Connection::Connecting => println!("* connecting..."),
                Connection::Connected { name } => {
                    self.me = Some(name.clone());
                    println!("* connected as {name}");
                }
                Connection::Reconnecting { after, reason } => println!(
                    "! connection lost ({reason}); reconnecting in {:.1} s",
                    after.as_secs_f64()
                ),
                Connection::Failed { reason } => println!("! {reason}"),
            },
            Update::Joined { room } => {
                if self.current.is_none() {
                    self.current = Some(room.clone());
                }
                println!("* you joined #{room}");
            }
            Update::Left { room } => {
                self.members.remove(room);
                if self.current.as_ref() == Some(room) {
                    self.current = self.members.keys().next().cloned();
                }
                println!("* you left #{room}");
            }
            Update::Members { room, members } => {
                let first = !self.members.contains_key(room);
                self.members.insert(room.clone(), members.clone());
                if first {
                    let names: Vec<String> = members
                        .iter()
                        .map(|m| format!("{}{}", m.name, self.badge(&m.name, m.trust)))
                        .collect();
                    println!("* in #{room}: {}", names.join(", "));
                }
            }
            Update::Presence { room, name, change } => {
                let what = match change {
                    PresenceChange::Joined => "joined",
                    PresenceChange::Left => "left",
                    PresenceChange::Disconnected => "disconnected from",
                };
                println!("* {name} {what} #{room}");
            }
            Update::Message(message) => self.message(message),
            Update::Missing { chat, from, count } => {
                let s = if *count == 1 { "" } else { "s" };
                println!("! {chat}: {count} message{s} from {from} missing");
            }
            Update::Rejected { chat, from } => match chat {
                Some(chat) => println!(
                    "! {chat}: a message claiming to be from {from} could not be opened and was dropped"
                ),
                None => println!(
                    "! a message claiming to be from {from} could not be opened and was dropped"
                ),
            },
            Update::NotForYou { chat, from } => println!(
                "! {chat}: {from} sent a message without a key for you (you are not among its recipients)"
            ),
            Update::Key(event) => match event {
                KeyEvent::Pinned {
                    name, fingerprint, ..
                } => {
                    println!(
                        "* new contact {name}, key {fingerprint} (unverified: /verify {name})"
                    );
                }
                KeyEvent::Changed {
                    name,
                    previous,
                    current,
                } => println!(
                    "! {name}'s key changed from {previous} to {current} (they were not verified; /verify {name})"
                ),
                KeyEvent::ChangedVerified {
                    name,
                    pinned,
                    offered,
                } => {
                    println!("!! WARNING: {name}'s key changed since you verified it.");
                    println!("!!   verified key: {pinned}");
                    println!("!!   new key:      {offered}");
                    println!(
                        "!! Nothing is sent to {name} until you compare the new safety number (/verify {name}) or accept the new key (/trust {name})."
                    );
                }
            },
            Update::Trust { name, trust } => match trust {
                TrustLevel::Verified => println!("* {name} is now verified"),
                TrustLevel::Unverified => println!("* {name}'s new key is accepted (unverified)"),
                other => println!("* {name}: {other:?}"),
            },
            Update::SafetyNumber {
                name,
                fingerprint,
                safety_number,
                trust,
            } => {
                self.shown
                    .insert(name.to_ascii_lowercase(), safety_number.digits().to_owned());
                println!("* {name}{}: key {fingerprint}", trust_badge(*trust));
                println!(
                    "* safety number with {name} (compare it with theirs, in person or by a call):"
                );
                for line in safety_number.groups().chunks(4) {
                    println!("*     {}", line.join(" "));
                }
                println!("* if it matches: /verify {name} yes");
            }
            Update::NotSentTo {
                chat,
                names,
                reason,
            } => {
                if names.is_empty() {
                    println!("! {chat}: {reason}");
                } else {
                    println!("! {chat}: not sent to {}: {reason}", names.join(", "));
                }
            }
            Update::RosterMismatch { room, from } => println!(
                "! #{room}: {from} encrypted for another set of members than you see: the relay may be showing members different rosters"
            ),
            Update::Users(users) => {
                println!("* {} users connected:", users.len());
                for user in users {
                    println!(
                        "*   {}{} in {}",
                        user.name,
                        self.badge(&user.name, user.trust),
                        if user.rooms.is_empty() {
                            "no room".to_owned()
                        } else {
                            user.rooms
                                .iter()
                                .map(|r| format!("#{r}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    );
                }
            }
            Update::Rooms(rooms) => {
                println!("* {} rooms:", rooms.len());
                for (room, count) in rooms {
                    println!("*   #{room} ({count} members)");
                }
            }
            Update::VerifiedOnly { room, on } => {
                if *on {
                    println!("* #{room}: messages now go to verified members only");
                } else {
                    println!("* #{room}: messages go to every member with a known key");
                }
            }
            Update::Error(message) => println!("! {message}"),
            other => println!("* {other:?}"),
        }
    }
}
