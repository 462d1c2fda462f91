//! The `/` commands typed in a composer, shared by `sotto-cli` and the
//! desktop app so that both understand exactly the same lines.
//!
//! [`parse`] only reads the line: what a command means in context (the
//! current room, the safety number last shown) is [`crate::ui::resolve`]'s.
//!
//! ```
//! use sotto_client::commands::{Line, parse};
//!
//! assert_eq!(parse("hello /there").unwrap(), Line::Say("hello /there".to_owned()));
//! assert!(matches!(parse("/join #general").unwrap(), Line::Join(room) if room.as_str() == "general"));
//! assert!(parse("/frobnicate").is_err());
//! ```

use sotto_proto::{RoomName, UserName};

/// Every command, one per line, as `/help` shows them.
pub const HELP: &str = "\
commands:
  TEXT                      send TEXT to the current conversation
  /msg NAME TEXT            send a direct message to NAME
  /send PATH                send the file at PATH to the current conversation
                            (encrypted, in chunks; goes on after a lost connection)
  /save [N] [PATH]          save file N (shown beside it; default: the newest
                            in this conversation) at PATH (default: its name,
                            here; a directory: its name in it)
  /join ROOM                join ROOM and make it the current room
  /room ROOM                make ROOM (already joined) the current room
  /leave [ROOM]             leave ROOM (default: the current room)
  /users                    list connected users and their rooms
  /rooms                    list rooms
  /members                  list the current room's members and their trust
  /fingerprint [NAME]       your fingerprint, or NAME's key and safety number
  /verify NAME              show the safety number to compare with NAME
  /verify NAME yes          mark NAME verified after the numbers matched
  /trust NAME               accept NAME's changed key without verifying it
  /verified-only [on|off]   in the current room, send only to verified members
  /timer [TIME|off]         show or set the current conversation's disappearing
                            messages (TIME: 30s, 5m, 1h, 1d, 1w; at most 365d)
  /reconnect                while the connection is lost, try again now
  /help                     this list
  /quit                     leave";

/// One line typed by the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// Nothing (blank).
    Empty,
    /// Text for the current conversation.
    Say(String),
    /// `/msg NAME TEXT`.
    Msg {
        /// Who.
        to: UserName,
        /// What.
        text: String,
    },
    /// `/send PATH`: send a file to the current conversation.
    SendFile(std::path::PathBuf),
    /// `/save [N] [PATH]`: save file `N` (`None`: the newest in the
    /// current conversation) at `PATH` (`None`: its name, in the working
    /// directory).
    Save {
        /// The file's number, as shown beside it.
        number: Option<usize>,
        /// Where to write it.
        to: Option<std::path::PathBuf>,
    },
    /// `/join ROOM`.
    Join(RoomName),
    /// `/room ROOM`.
    Room(RoomName),
    /// `/leave [ROOM]`: `None` is the current room.
    Leave(Option<RoomName>),
    /// `/users`.
    Users,
    /// `/rooms`.
    Rooms,
    /// `/members`.
    Members,
    /// `/fingerprint`: this user's own fingerprint.
    Fingerprint,
    /// `/fingerprint NAME` or `/verify NAME`: show the safety number.
    SafetyNumber(UserName),
    /// `/verify NAME yes`: mark verified with the number last shown.
    Confirm(UserName),
    /// `/verify NAME DIGITS...`: mark verified if these digits (or a
    /// scanned QR payload) match.
    Verify {
        /// Who.
        name: UserName,
        /// What the user typed, groups joined.
        safety_number: String,
    },
    /// `/trust NAME`: accept a changed key without verifying it.
    Trust(UserName),
    /// `/verified-only on|off`.
    VerifiedOnly(bool),
    /// `/timer`: show the current conversation's disappearing-message
    /// timer (`None`), or set it to so many seconds (`Some(0)`: off).
    Timer(Option<u64>),
    /// `/reconnect`.
    Reconnect,
    /// `/help`.
    Help,
    /// `/quit` or `/exit`.
    Quit,
}

/// Parses one line; the error says what is wrong with it.
pub fn parse(line: &str) -> Result<Line, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Line::Empty);
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Ok(Line::Say(line.to_owned()));
    };
    let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let args = args.trim();
    let words: Vec<&str> = args.split_whitespace().collect();
    Ok(match (name, words.as_slice()) {
        ("help", _) => Line::Help,
        ("quit" | "exit", _) => Line::Quit,
        ("users", []) => Line::Users,
        ("rooms", []) => Line::Rooms,
        ("members", []) => Line::Members,
        ("reconnect", []) => Line::Reconnect,
        ("join", [name]) => Line::Join(room(name)?),
        ("room", [name]) => Line::Room(room(name)?),
        ("leave", []) => Line::Leave(None),
        ("leave", [name]) => Line::Leave(Some(room(name)?)),
        ("msg", [name, ..]) => {
            let text = args
                .strip_prefix(name)
                .map(str::trim_start)
                .unwrap_or_default();
            if text.is_empty() {
                return Err("usage: /msg NAME TEXT".to_owned());
            }
            Line::Msg {
                to: user(name)?,
                text: text.to_owned(),
            }
        }
        ("send", []) => return Err("usage: /send PATH".to_owned()),
        ("send", _) => Line::SendFile(std::path::PathBuf::from(args)),
        ("save", []) => Line::Save {
            number: None,
            to: None,
        },
        ("save", [first, ..]) => match first.parse::<usize>() {
            Ok(number) => {
                let rest = args[first.len()..].trim();
                Line::Save {
                    number: Some(number),
                    to: (!rest.is_empty()).then(|| std::path::PathBuf::from(rest)),
                }
            }
            Err(_) => Line::Save {
                number: None,
                to: Some(std::path::PathBuf::from(args)),
            },
        },
        ("fingerprint", []) => Line::Fingerprint,
        ("fingerprint" | "verify", [name]) => Line::SafetyNumber(user(name)?),
        ("verify", [name, "yes"]) => Line::Confirm(user(name)?),
        ("verify", [name, digits @ ..]) => Line::Verify {
            name: user(name)?,
            safety_number: digits.concat(),
        },
        ("trust", [name]) => Line::Trust(user(name)?),
        ("verified-only", [state @ ("on" | "off")]) => Line::VerifiedOnly(*state == "on"),
        ("verified-only", _) => return Err("usage: /verified-only on|off".to_owned()),
        ("timer", []) => Line::Timer(None),
        ("timer", [time]) => Line::Timer(Some(timer(time)?)),
        ("timer", _) => return Err(TIMER_USAGE.to_owned()),
        _ => {
            return Err(format!(
                "unknown command or wrong arguments: /{name} (try /help)"
            ));
        }
    })
}

const TIMER_USAGE: &str =
    "usage: /timer [TIME|off], TIME a number and a unit: 30s, 5m, 1h, 1d, 1w (at most 365d)";

/// Parses a disappearing-message timer: `off` (0), or a whole number with
/// a unit (`s`, `m`, `h`, `d`, `w`), at most
/// [`MAX_TIMER_SECS`](crate::session::content::MAX_TIMER_SECS).
pub fn timer(time: &str) -> Result<u64, String> {
    if time.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let split = time
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| TIMER_USAGE.to_owned())?;
    let (number, unit) = time.split_at(split);
    let unit = match unit.to_ascii_lowercase().as_str() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        "w" => 7 * 24 * 3600,
        _ => return Err(TIMER_USAGE.to_owned()),
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|s| (1..=crate::session::content::MAX_TIMER_SECS).contains(s))
        .ok_or_else(|| TIMER_USAGE.to_owned())?;
    Ok(seconds)
}

/// Parses a user name, with a readable error.
pub fn user(name: &str) -> Result<UserName, String> {
    name.trim_start_matches('@')
        .parse()
        .map_err(|e| format!("{name:?} is not a valid name: {e}"))
}

/// Parses a room name (a leading `#` is allowed), with a readable error.
pub fn room(name: &str) -> Result<RoomName, String> {
    name.trim_start_matches('#')
        .parse()
        .map_err(|e| format!("{name:?} is not a valid room name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_to_what_they_say() {
        assert_eq!(parse("").unwrap(), Line::Empty);
        assert_eq!(parse("  \r\n").unwrap(), Line::Empty);
        assert_eq!(parse("hi\n").unwrap(), Line::Say("hi".to_owned()));
        assert_eq!(
            parse("/msg bob  hello  there").unwrap(),
            Line::Msg {
                to: user("bob").unwrap(),
                text: "hello  there".to_owned()
            }
        );
        assert!(parse("/msg bob").is_err());
        assert_eq!(parse("/leave").unwrap(), Line::Leave(None));
        assert_eq!(
            parse("/leave #x").unwrap(),
            Line::Leave(Some(room("x").unwrap()))
        );
        assert_eq!(
            parse("/verify bob yes").unwrap(),
            Line::Confirm(user("bob").unwrap())
        );
        assert_eq!(
            parse("/verify bob 12345 67890").unwrap(),
            Line::Verify {
                name: user("bob").unwrap(),
                safety_number: "1234567890".to_owned()
            }
        );
        assert_eq!(
            parse("/verify @bob").unwrap(),
            Line::SafetyNumber(user("bob").unwrap())
        );
        assert_eq!(
            parse("/verified-only on").unwrap(),
            Line::VerifiedOnly(true)
        );
        assert!(parse("/verified-only maybe").is_err());
        assert_eq!(parse("/timer").unwrap(), Line::Timer(None));
        assert_eq!(parse("/timer off").unwrap(), Line::Timer(Some(0)));
        assert_eq!(parse("/timer 1h").unwrap(), Line::Timer(Some(3600)));
        assert_eq!(parse("/timer 30s").unwrap(), Line::Timer(Some(30)));
        assert_eq!(parse("/timer 2W").unwrap(), Line::Timer(Some(1_209_600)));
        assert_eq!(parse("/timer 365d").unwrap(), Line::Timer(Some(31_536_000)));
        for wrong in [
            "/timer 366d",
            "/timer 0s",
            "/timer 5",
            "/timer h",
            "/timer 1y",
            "/timer 1h 2m",
            "/timer -1h",
        ] {
            assert!(parse(wrong).is_err(), "{wrong}");
        }
        assert_eq!(
            parse("/send my photos/a b.png").unwrap(),
            Line::SendFile("my photos/a b.png".into())
        );
        assert!(parse("/send").is_err());
        assert_eq!(
            parse("/save").unwrap(),
            Line::Save {
                number: None,
                to: None
            }
        );
        assert_eq!(
            parse("/save 3").unwrap(),
            Line::Save {
                number: Some(3),
                to: None
            }
        );
        assert_eq!(
            parse("/save 3 /tmp/x y").unwrap(),
            Line::Save {
                number: Some(3),
                to: Some("/tmp/x y".into())
            }
        );
        assert_eq!(
            parse("/save out.png").unwrap(),
            Line::Save {
                number: None,
                to: Some("out.png".into())
            }
        );
        assert!(parse("/join").is_err());
        assert!(parse("/join a b").is_err());
        assert!(parse("/nope").is_err());
    }
}
