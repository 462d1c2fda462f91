//! What a line typed in a composer means here and now.
//!
//! [`commands::parse`] reads a line; [`resolve`] gives it its meaning in
//! a [`Context`] (the current conversation, the rooms the user is in, the
//! safety numbers last shown, this user's fingerprint): a [`Command`] for
//! the session, a [`Local`] action the front end performs on screen, or a
//! refusal with the words to show.

use std::collections::{BTreeMap, BTreeSet};

use sotto_crypto::{Fingerprint, SafetyNumber};
use sotto_proto::{RoomName, UserKey};

use crate::commands::{self, Line};
use crate::session::{Chat, Command, MessageId};

/// What a typed line's meaning depends on, as the front end knows it.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The conversation plain text goes to; `None` before any is open.
    pub current: Option<Chat>,
    /// The rooms this user is in (reported joined): `/room` switches to
    /// these only.
    pub rooms: BTreeSet<RoomName>,
    /// The safety number last shown for each peer: `/verify NAME yes`
    /// marks exactly this number verified.
    pub shown: BTreeMap<UserKey, SafetyNumber>,
    /// This user's key fingerprint, for `/fingerprint`.
    pub fingerprint: Option<Fingerprint>,
    /// Whether a plain line with no current conversation is held for the
    /// first room joined ([`Local::Hold`]) rather than refused. sotto-cli
    /// holds until the session has reported a room (it is still
    /// connecting); the app refuses (it has no conversation to show the
    /// line in).
    pub hold: bool,
    /// The file messages seen, in the order they came: `/save N` saves
    /// the `N`th (from 1), `/save` the newest of the current
    /// conversation.
    pub files: Vec<SeenFile>,
}

/// A file message a front end has shown, for `/save`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenFile {
    /// Its chat.
    pub chat: Chat,
    /// Its message.
    pub id: MessageId,
    /// Its name made safe to save under (`session::safe_file_name`).
    pub name: String,
}

/// What a typed line means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Nothing (a blank line).
    Nothing,
    /// Hand this to the session. What a front end shows at once is its
    /// own: both make a room they ask to [`Command::Join`] current at once
    /// (before the session reports it joined), and the app opens the
    /// conversation of a direct [`Command::Send`] and the verification
    /// screen for [`Command::SafetyNumber`].
    Command(Command),
    /// Something the front end does on screen, with nothing for the
    /// session.
    Local(Local),
}

/// What a front end does on screen for a line, without the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    /// Show [`commands::HELP`].
    Help,
    /// Show the members of this room (the current one), as last reported.
    Members(RoomName),
    /// Make this room (one the user is in) the current conversation.
    Switch(RoomName),
    /// Show this user's own key fingerprint.
    Fingerprint(Fingerprint),
    /// Keep this text and send it to the first room joined (only when the
    /// [`Context`] says to hold).
    Hold(String),
}

/// What `line` means in `context`; the error is the refusal to show (the
/// line was not understood, or cannot be done here), and nothing of the
/// line has been done.
pub fn resolve(line: &str, context: &Context) -> Result<Resolved, String> {
    let command = match commands::parse(line)? {
        Line::Empty => return Ok(Resolved::Nothing),
        Line::Say(text) => match &context.current {
            Some(chat) => Command::Send {
                chat: chat.clone(),
                text,
            },
            None if context.hold => return Ok(Resolved::Local(Local::Hold(text))),
            None => return Err("you are in no room: /join ROOM first".to_owned()),
        },
        Line::Msg { to, text } => Command::Send {
            chat: Chat::Direct(to),
            text,
        },
        Line::SendFile(path) => match &context.current {
            Some(chat) => Command::SendFile {
                chat: chat.clone(),
                path,
            },
            None => {
                return Err("you are in no conversation: /join ROOM or /msg NAME first".to_owned());
            }
        },
        Line::Save { number, to } => {
            let file = match number {
                Some(number) => number
                    .checked_sub(1)
                    .and_then(|n| context.files.get(n))
                    .ok_or_else(|| format!("there is no file {number}"))?,
                None => context
                    .files
                    .iter()
                    .rev()
                    .find(|f| context.current.as_ref() == Some(&f.chat))
                    .ok_or_else(|| "no file in this conversation".to_owned())?,
            };
            let to = match to {
                Some(to) if to.is_dir() => to.join(&file.name),
                Some(to) => to,
                None => std::path::PathBuf::from(&file.name),
            };
            Command::SaveFile {
                chat: file.chat.clone(),
                message: file.id,
                to,
            }
        }
        Line::Join(room) => Command::Join(room),
        Line::Room(room) => {
            if !context.rooms.contains(&room) {
                return Err(format!("you are not in #{room}: /join {room}"));
            }
            return Ok(Resolved::Local(Local::Switch(room)));
        }
        Line::Leave(Some(room)) => Command::Leave(room),
        Line::Leave(None) => Command::Leave(current_room(context)?),
        Line::Users => Command::ListUsers,
        Line::Rooms => Command::ListRooms,
        Line::Members => return Ok(Resolved::Local(Local::Members(current_room(context)?))),
        Line::Fingerprint => {
            return match context.fingerprint {
                Some(fingerprint) => Ok(Resolved::Local(Local::Fingerprint(fingerprint))),
                None => Err("your fingerprint is not known here".to_owned()),
            };
        }
        Line::SafetyNumber(name) => Command::SafetyNumber(name),
        Line::Confirm(name) => {
            let Some(number) = context.shown.get(&name.key()) else {
                return Err(format!("first /verify {name} and compare the number"));
            };
            Command::Verify {
                safety_number: number.digits().to_owned(),
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
        Line::VerifiedOnly(on) => Command::SetVerifiedOnly {
            room: current_room(context)?,
            on,
        },
        Line::Timer(seconds) => {
            let chat = context.current.clone().ok_or_else(|| {
                "you are in no conversation: /join ROOM or /msg NAME first".to_owned()
            })?;
            match seconds {
                Some(seconds) => Command::SetTimer { chat, seconds },
                None => Command::ShowTimer(chat),
            }
        }
        Line::Help => return Ok(Resolved::Local(Local::Help)),
        Line::Reconnect => Command::Reconnect,
        Line::Quit => Command::Quit,
    };
    Ok(Resolved::Command(command))
}

/// The current conversation, which must be a room.
fn current_room(context: &Context) -> Result<RoomName, String> {
    match &context.current {
        Some(Chat::Room(room)) => Ok(room.clone()),
        Some(Chat::Direct(_)) => Err("this is not a room".to_owned()),
        None => Err("you are in no room".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use sotto_proto::UserName;

    use super::*;

    fn room(name: &str) -> RoomName {
        name.parse().unwrap()
    }

    fn user(name: &str) -> UserName {
        name.parse().unwrap()
    }

    fn number() -> SafetyNumber {
        SafetyNumber::new(&Fingerprint([1; 32]), &Fingerprint([2; 32]))
    }

    /// In #lobby (and #dev), bob's number shown, the fingerprint known.
    fn in_lobby() -> Context {
        Context {
            current: Some(Chat::Room(room("lobby"))),
            rooms: [room("lobby"), room("dev")].into(),
            shown: [(user("bob").key(), number())].into(),
            fingerprint: Some(Fingerprint([7; 32])),
            hold: false,
            files: Vec::new(),
        }
    }

    /// In the direct conversation with bob (and in #lobby).
    fn with_bob() -> Context {
        Context {
            current: Some(Chat::Direct(user("bob"))),
            ..in_lobby()
        }
    }

    /// Nowhere yet (no conversation, no room, nothing shown).
    fn nowhere() -> Context {
        Context::default()
    }

    /// Still connecting, in a front end that holds early lines.
    fn connecting() -> Context {
        Context {
            hold: true,
            ..Context::default()
        }
    }

    fn command(command: Command) -> Result<Resolved, String> {
        Ok(Resolved::Command(command))
    }

    fn local(local: Local) -> Result<Resolved, String> {
        Ok(Resolved::Local(local))
    }

    fn refused(words: &str) -> Result<Resolved, String> {
        Err(words.to_owned())
    }

    fn send(chat: Chat, text: &str) -> Result<Resolved, String> {
        command(Command::Send {
            chat,
            text: text.to_owned(),
        })
    }

    #[test]
    fn every_line_resolves_to_what_it_means_in_its_context() {
        let lobby = || Chat::Room(room("lobby"));
        let digits = number().digits().to_owned();
        let table: Vec<(&str, Context, Result<Resolved, String>)> = vec![
            // Line::Empty
            ("", in_lobby(), Ok(Resolved::Nothing)),
            ("   \r\n", nowhere(), Ok(Resolved::Nothing)),
            // Line::Say: to the current conversation, room or direct.
            ("hello /there", in_lobby(), send(lobby(), "hello /there")),
            ("hi", with_bob(), send(Chat::Direct(user("bob")), "hi")),
            ("a\nb", in_lobby(), send(lobby(), "a\nb")),
            (
                "early",
                connecting(),
                local(Local::Hold("early".to_owned())),
            ),
            (
                "late",
                nowhere(),
                refused("you are in no room: /join ROOM first"),
            ),
            // Line::Msg: direct, whatever is current.
            (
                "/msg BOB  hi  there",
                in_lobby(),
                send(Chat::Direct(user("BOB")), "hi  there"),
            ),
            (
                "/msg @bob hi",
                nowhere(),
                send(Chat::Direct(user("bob")), "hi"),
            ),
            ("/msg bob", in_lobby(), refused("usage: /msg NAME TEXT")),
            // Line::Join
            ("/join #ops", nowhere(), command(Command::Join(room("ops")))),
            ("/join ops", in_lobby(), command(Command::Join(room("ops")))),
            // Line::Room: only to a room the user is in.
            ("/room #dev", in_lobby(), local(Local::Switch(room("dev")))),
            ("/room dev", with_bob(), local(Local::Switch(room("dev")))),
            (
                "/room ops",
                in_lobby(),
                refused("you are not in #ops: /join ops"),
            ),
            // Line::Leave: the room named, or the current one.
            (
                "/leave #dev",
                in_lobby(),
                command(Command::Leave(room("dev"))),
            ),
            (
                "/leave dev",
                nowhere(),
                command(Command::Leave(room("dev"))),
            ),
            ("/leave", in_lobby(), command(Command::Leave(room("lobby")))),
            ("/leave", with_bob(), refused("this is not a room")),
            ("/leave", nowhere(), refused("you are in no room")),
            // Line::Users, Line::Rooms
            ("/users", nowhere(), command(Command::ListUsers)),
            ("/rooms", with_bob(), command(Command::ListRooms)),
            // Line::Members: the current room's, shown locally.
            ("/members", in_lobby(), local(Local::Members(room("lobby")))),
            ("/members", with_bob(), refused("this is not a room")),
            ("/members", nowhere(), refused("you are in no room")),
            // Line::Fingerprint
            (
                "/fingerprint",
                in_lobby(),
                local(Local::Fingerprint(Fingerprint([7; 32]))),
            ),
            (
                "/fingerprint",
                nowhere(),
                refused("your fingerprint is not known here"),
            ),
            // Line::SafetyNumber
            (
                "/verify @carol",
                in_lobby(),
                command(Command::SafetyNumber(user("carol"))),
            ),
            (
                "/fingerprint carol",
                nowhere(),
                command(Command::SafetyNumber(user("carol"))),
            ),
            // Line::Confirm: exactly the number shown, found by folded name.
            (
                "/verify BOB yes",
                in_lobby(),
                command(Command::Verify {
                    name: user("BOB"),
                    safety_number: digits.clone(),
                }),
            ),
            (
                "/verify carol yes",
                in_lobby(),
                refused("first /verify carol and compare the number"),
            ),
            // Line::Verify: typed digits, groups joined.
            (
                "/verify carol 12345 67890",
                nowhere(),
                command(Command::Verify {
                    name: user("carol"),
                    safety_number: "1234567890".to_owned(),
                }),
            ),
            // Line::Trust
            (
                "/trust bob",
                nowhere(),
                command(Command::AcceptKey(user("bob"))),
            ),
            // Line::VerifiedOnly: in the current room.
            (
                "/verified-only on",
                in_lobby(),
                command(Command::SetVerifiedOnly {
                    room: room("lobby"),
                    on: true,
                }),
            ),
            (
                "/verified-only off",
                in_lobby(),
                command(Command::SetVerifiedOnly {
                    room: room("lobby"),
                    on: false,
                }),
            ),
            (
                "/verified-only on",
                with_bob(),
                refused("this is not a room"),
            ),
            (
                "/verified-only on",
                nowhere(),
                refused("you are in no room"),
            ),
            // Line::Timer: in the current conversation, room or direct.
            (
                "/timer 1h",
                in_lobby(),
                command(Command::SetTimer {
                    chat: Chat::Room(room("lobby")),
                    seconds: 3600,
                }),
            ),
            (
                "/timer off",
                with_bob(),
                command(Command::SetTimer {
                    chat: Chat::Direct(user("bob")),
                    seconds: 0,
                }),
            ),
            (
                "/timer",
                in_lobby(),
                command(Command::ShowTimer(Chat::Room(room("lobby")))),
            ),
            (
                "/timer 1h",
                nowhere(),
                refused("you are in no conversation: /join ROOM or /msg NAME first"),
            ),
            (
                "/verified-only maybe",
                in_lobby(),
                refused("usage: /verified-only on|off"),
            ),
            // Line::Help
            ("/help", nowhere(), local(Local::Help)),
            // Line::Quit
            ("/reconnect", nowhere(), command(Command::Reconnect)),
            ("/quit", in_lobby(), command(Command::Quit)),
            ("/exit", nowhere(), command(Command::Quit)),
            // Not a line at all.
            (
                "/frobnicate",
                in_lobby(),
                refused("unknown command or wrong arguments: /frobnicate (try /help)"),
            ),
        ];
        for (line, context, expected) in table {
            assert_eq!(resolve(line, &context), expected, "{line:?} in {context:?}");
        }
    }

    /// `Chat` compares names folded; the typed spelling is what goes out.
    #[test]
    fn names_go_to_the_session_as_typed() {
        let Ok(Resolved::Command(Command::Send {
            chat: Chat::Direct(to),
            ..
        })) = resolve("/msg BOB hi", &nowhere())
        else {
            panic!("not a direct message");
        };
        assert_eq!(to.as_str(), "BOB");
        let Ok(Resolved::Command(Command::Verify { name, .. })) =
            resolve("/verify BoB yes", &in_lobby())
        else {
            panic!("not a verification");
        };
        assert_eq!(name.as_str(), "BoB");
    }

    /// A held line is held only with no conversation: with one, it is sent.
    #[test]
    fn holding_is_only_for_a_line_with_nowhere_to_go() {
        let context = Context {
            hold: true,
            ..in_lobby()
        };
        assert_eq!(
            resolve("hi", &context),
            send(Chat::Room(room("lobby")), "hi")
        );
        // Commands are not held.
        assert_eq!(
            resolve("/members", &connecting()),
            refused("you are in no room")
        );
    }

    #[test]
    fn files_are_sent_to_the_current_conversation_and_saved_by_number() {
        let mut context = in_lobby();
        assert_eq!(
            resolve("/send a b.png", &context),
            Ok(Resolved::Command(Command::SendFile {
                chat: Chat::Room(room("lobby")),
                path: "a b.png".into(),
            }))
        );
        let id = |seq| MessageId {
            sender: Fingerprint([2; 32]),
            seq,
        };
        assert_eq!(
            resolve("/save", &context),
            Err("no file in this conversation".to_owned())
        );
        context.files = vec![
            SeenFile {
                chat: Chat::Room(room("lobby")),
                id: id(1),
                name: "one.png".into(),
            },
            SeenFile {
                chat: Chat::Direct(user("bob")),
                id: id(2),
                name: "two.pdf".into(),
            },
        ];
        // The newest of this conversation, under its name, here.
        assert_eq!(
            resolve("/save", &context),
            Ok(Resolved::Command(Command::SaveFile {
                chat: Chat::Room(room("lobby")),
                message: id(1),
                to: "one.png".into(),
            }))
        );
        // By number, from any conversation; into a directory under its name.
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve(&format!("/save 2 {}", dir.path().display()), &context),
            Ok(Resolved::Command(Command::SaveFile {
                chat: Chat::Direct(user("bob")),
                message: id(2),
                to: dir.path().join("two.pdf"),
            }))
        );
        assert_eq!(
            resolve("/save 3", &context),
            Err("there is no file 3".to_owned())
        );
        assert_eq!(
            resolve("/save 0", &context),
            Err("there is no file 0".to_owned())
        );
    }
}
