//! The words a user reads for what the session reports, written once for
//! both front ends.
//!
//! Every text from a peer or the relay in them (names, room names,
//! reasons, error messages) has gone through [`safe_text::inline`]: a
//! [`Said`] is safe to print to a terminal or to draw as it is.

use std::fmt;
use std::time::Duration;

use sotto_crypto::{Fingerprint, SafetyNumber};
use sotto_proto::{RoomName, UserName};

use crate::contacts::KeyEvent;
use crate::safe_text;
use crate::session::{
    Chat, Connection, Delivery, Direction, PresenceChange, RoomInfo, Transfer, TransferState,
    TrustLevel,
};

/// How much a notice matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tone {
    /// Something that happened.
    Info,
    /// Something the user should know: a loss, a refusal, a key that
    /// changed.
    Warning,
    /// A possible attack or a failure: a forged message, a verified key
    /// that changed, an error.
    Danger,
}

/// Where a notice belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In this conversation.
    Chat(Chat),
    /// In every conversation shared with this user: key events.
    With(UserName),
    /// Nowhere in particular: the connection, listings, errors.
    General,
}

/// One notice: what to tell the user, how loudly and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Said {
    /// How much it matters.
    pub tone: Tone,
    /// Where it belongs.
    pub place: Place,
    /// The words, safe to show; several lines for a listing or a safety
    /// number (later lines indented by two spaces).
    pub text: String,
    /// Whether the words name their conversation themselves. When they do
    /// not, a front end that shows every conversation in one stream (a
    /// terminal) puts the conversation before them.
    pub names_place: bool,
}

impl Said {
    fn new(tone: Tone, place: Place, text: String) -> Self {
        Self {
            tone,
            place,
            text,
            names_place: false,
        }
    }

    fn naming_place(mut self) -> Self {
        self.names_place = true;
        self
    }

    /// The words with the conversation before them when they do not name
    /// it (`#lobby: 2 messages from bob missing: ...`), for a front end
    /// that shows every conversation in one stream.
    pub fn qualified(&self) -> String {
        match &self.place {
            Place::Chat(chat) if !self.names_place => format!("{}: {}", safe(chat), self.text),
            _ => self.text.clone(),
        }
    }
}

/// Untrusted text (a name, a room, a reason) made safe to show on one
/// line.
pub(super) fn safe(text: &impl fmt::Display) -> String {
    safe_text::inline(&text.to_string()).to_string()
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// Why a recipient will not get a message the relay named in
/// `Undelivered`, as both front ends say it.
pub const NOT_KEPT: &str = "the relay would not keep it for them";

/// How far a message of yours reached: the recipients it was sealed for,
/// split into those whose receipt came, those still waited for, and those
/// the relay will not keep it for (names compared as the relay compares
/// them). Both front ends draw their marks and notices from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reached<'a> {
    /// Their receipt came: they have it stored.
    pub got: Vec<&'a UserName>,
    /// Neither delivered nor refused yet.
    pub waiting: Vec<&'a UserName>,
    /// The relay will not keep it for them (and no receipt came).
    pub refused: Vec<&'a UserName>,
}

impl Reached<'_> {
    /// Whether everyone it was sealed for has it (somebody, at least).
    pub fn everyone(&self) -> bool {
        !self.got.is_empty() && self.waiting.is_empty() && self.refused.is_empty()
    }

    /// How many it was sealed for.
    pub fn of(&self) -> usize {
        self.got.len() + self.waiting.len() + self.refused.len()
    }
}

/// [`Reached`] of `delivery`.
pub fn reached(delivery: &Delivery) -> Reached<'_> {
    let named_in = |name: &UserName, names: &[UserName]| names.iter().any(|n| n.same_as(name));
    let mut reached = Reached::default();
    for recipient in &delivery.recipients {
        if named_in(recipient, &delivery.delivered) {
            reached.got.push(recipient);
        } else if named_in(recipient, &delivery.refused) {
            reached.refused.push(recipient);
        } else {
            reached.waiting.push(recipient);
        }
    }
    reached
}

/// How a trust level is written beside a name: `verified`, `unverified`,
/// `KEY CHANGED`, `no key`.
pub fn trust_label(trust: TrustLevel) -> &'static str {
    match trust {
        TrustLevel::Verified => "verified",
        TrustLevel::Unverified => "unverified",
        TrustLevel::Changed => "KEY CHANGED",
        TrustLevel::Unknown => "no key",
    }
}

/// A name as listed: the name, then `(you)` or its trust in brackets
/// (`bob [verified]`), then, for a contact whose name looks like another
/// one's, what it looks like and its key (`b0b [unverified] [looks like
/// bob, key ...]`).
pub(super) fn label(
    name: &impl fmt::Display,
    me: bool,
    trust: TrustLevel,
    lookalikes: Option<&[UserName]>,
    fingerprint: Option<Fingerprint>,
) -> String {
    let mut label = safe(name);
    if me {
        label.push_str(" (you)");
    } else {
        label.push_str(&format!(" [{}]", trust_label(trust)));
    }
    if let Some(like) = lookalikes.filter(|like| !like.is_empty()) {
        let like: Vec<String> = like.iter().map(safe).collect();
        label.push_str(&format!(" [looks like {}", like.join(", ")));
        if let Some(fingerprint) = fingerprint {
            label.push_str(&format!(", key {fingerprint}"));
        }
        label.push(']');
    }
    label
}

/// `joined`, `left`, `went offline in`, `is back in` (`are back in` for
/// several names).
fn presence_verb(change: PresenceChange, count: u64) -> &'static str {
    match change {
        PresenceChange::Joined => "joined",
        PresenceChange::Left => "left",
        PresenceChange::Disconnected => "went offline in",
        PresenceChange::Connected if count == 1 => "is back in",
        PresenceChange::Connected => "are back in",
    }
}

/// What a member offline is marked with, after its label.
pub const OFFLINE: &str = "(offline)";

/// `bob joined #lobby`, `bob left #lobby`, `bob went offline in #lobby`
/// (still a member), `bob is back in #lobby`; for a run of changes of one
/// kind, `bob and carol joined #lobby`, `bob, carol and dave ...`, `bob,
/// carol, 12 others and dave ...`: `first` are the first (at most two)
/// names, `newest` the newest when there are more, `count` all of them.
pub fn presence(
    first: &[UserName],
    newest: Option<&UserName>,
    count: u64,
    change: PresenceChange,
    room: &impl fmt::Display,
) -> String {
    let first: Vec<String> = first.iter().map(safe).collect();
    let newest = newest.map(safe);
    let names = match (first.as_slice(), newest) {
        ([one], None) => one.clone(),
        ([a, b], None) => format!("{a} and {b}"),
        ([a, b], Some(newest)) if count == 3 => format!("{a}, {b} and {newest}"),
        ([a, b], Some(newest)) => {
            let others = count.saturating_sub(3);
            let word = if others == 1 { "other" } else { "others" };
            format!("{a}, {b}, {others} {word} and {newest}")
        }
        _ => first.join(", "),
    };
    let count = count.max(u64::try_from(first.len()).unwrap_or(u64::MAX));
    format!("{names} {} #{}", presence_verb(change, count), safe(room))
}

/// The connection's state in words, with `left` until the next attempt
/// when reconnecting (the delay the session announced, or what remains of
/// it).
pub fn connection(state: &Connection, relay: &str, left: Duration) -> (Tone, String) {
    match state {
        Connection::Connecting => (Tone::Info, format!("Connecting to {relay}…")),
        Connection::Connected { name } => (
            Tone::Info,
            format!("Connected to {relay} as {}", safe(name)),
        ),
        Connection::Reconnecting { reason, .. } => {
            let when = if left.is_zero() {
                "reconnecting now".to_owned()
            } else if left < Duration::from_secs(10) {
                format!("reconnecting in {:.1} s", left.as_secs_f64())
            } else {
                format!("reconnecting in {} s", left.as_secs_f64().ceil())
            };
            (
                Tone::Warning,
                format!("Connection lost ({}): {when}", safe(reason)),
            )
        }
        Connection::Failed { reason } => (Tone::Danger, format!("Not connected: {}", safe(reason))),
    }
}

/// What the app and the terminal say on joining or leaving a room.
pub(super) fn membership(room: &RoomName, joined: bool) -> Said {
    let place = Place::Chat(Chat::Room(room.clone()));
    let verb = if joined { "joined" } else { "left" };
    Said::new(Tone::Info, place, format!("You {verb} #{}", safe(room))).naming_place()
}

/// A room's members as first listed: `In #lobby: alice (you), bob
/// [verified]`.
pub(super) fn members(room: &RoomName, labels: &[String]) -> Said {
    Said::new(
        Tone::Info,
        Place::Chat(Chat::Room(room.clone())),
        format!("In #{}: {}", safe(room), labels.join(", ")),
    )
    .naming_place()
}

pub(super) fn missing(chat: &Chat, from: &impl fmt::Display, count: u64) -> Said {
    Said::new(
        Tone::Warning,
        Place::Chat(chat.clone()),
        format!(
            "{count} message{} from {} missing: lost, or withheld by the relay",
            plural(count),
            safe(from)
        ),
    )
}

pub(super) fn rejected(chat: Option<&Chat>, from: &impl fmt::Display) -> Said {
    let place = chat.cloned().map_or(Place::General, Place::Chat);
    Said::new(
        Tone::Danger,
        place,
        format!(
            "A message claiming to be from {} was dropped: it failed its checks (forged, altered or replayed) or the key to open it never came",
            safe(from)
        ),
    )
}

pub(super) fn not_for_you(chat: &Chat, from: &impl fmt::Display) -> Said {
    Said::new(
        Tone::Warning,
        Place::Chat(chat.clone()),
        format!(
            "{} sent a message you cannot read: it was not encrypted for you (you are not among its recipients)",
            safe(from)
        ),
    )
}

pub(super) fn key_event(event: &KeyEvent) -> Said {
    match event {
        KeyEvent::Pinned {
            name,
            fingerprint,
            lookalikes,
        } => {
            let shown = safe(name);
            let place = Place::With(name.clone());
            if lookalikes.is_empty() {
                return Said::new(
                    Tone::Info,
                    place,
                    format!(
                        "New contact {shown}: key {fingerprint}, pinned unverified (/verify {shown} to be sure it is them)"
                    ),
                );
            }
            let like: Vec<String> = lookalikes.iter().map(safe).collect();
            let compare: Vec<String> = like.iter().map(|n| format!("/verify {n}")).collect();
            Said::new(
                Tone::Danger,
                place,
                format!(
                    "Careful: the new contact {shown} has a name that looks like {}, whom you already know: it may be someone else passing for them. {shown}'s key is {fingerprint} (pinned unverified): compare it with the key you know ({}) before you trust {shown}.",
                    like.join(", "),
                    compare.join(", ")
                ),
            )
        }
        KeyEvent::Changed {
            name,
            previous,
            current,
        } => {
            let shown = safe(name);
            Said::new(
                Tone::Warning,
                Place::With(name.clone()),
                format!(
                    "{shown}'s key changed (they were not verified): {previous} → {current} (/verify {shown} to be sure it is them)"
                ),
            )
        }
        KeyEvent::ChangedVerified {
            name,
            pinned,
            offered,
        } => {
            let shown = safe(name);
            Said::new(
                Tone::Danger,
                Place::With(name.clone()),
                format!(
                    "{shown}'s key changed since you verified it: verified key {pinned}, new key {offered}. Nothing is sent to {shown} until you compare the new safety number (/verify {shown}) or accept the new key (/trust {shown})."
                ),
            )
        }
    }
}

pub(super) fn trust(name: &impl fmt::Display, trust: TrustLevel) -> Said {
    let name = safe(name);
    let text = match trust {
        TrustLevel::Verified => format!("You verified {name}"),
        TrustLevel::Unverified => format!("You accepted {name}'s new key without verifying it"),
        TrustLevel::Changed => {
            format!("{name}'s key changed: nothing is sent to {name} until you decide")
        }
        TrustLevel::Unknown => format!("No key is known for {name} any more"),
    };
    Said::new(Tone::Info, Place::General, text)
}

pub(super) fn safety_number(
    name: &impl fmt::Display,
    fingerprint: &Fingerprint,
    number: &SafetyNumber,
    trust: TrustLevel,
) -> Said {
    let name = safe(name);
    let mut text = format!("{name} [{}]: key {fingerprint}", trust_label(trust));
    text.push_str(&format!(
        "\n  safety number with {name} (compare it with theirs, in person or by a call):"
    ));
    for line in number.groups().chunks(4) {
        text.push_str(&format!("\n    {}", line.join(" ")));
    }
    text.push_str(&format!("\n  if it matches: /verify {name} yes"));
    Said::new(Tone::Info, Place::General, text)
}

pub(super) fn not_sent_to(chat: &Chat, names: &[UserName], reason: &str) -> Said {
    let reason = safe(&reason);
    let text = if names.is_empty() {
        reason
    } else {
        let names: Vec<String> = names.iter().map(safe).collect();
        format!("Not sent to {}: {reason}", names.join(", "))
    };
    Said::new(Tone::Warning, Place::Chat(chat.clone()), text)
}

pub(super) fn roster_mismatch(room: &RoomName, from: &UserName) -> Said {
    Said::new(
        Tone::Danger,
        Place::Chat(Chat::Room(room.clone())),
        format!(
            "{} encrypted for another set of members than you see in #{}: someone may just have joined or left, or the relay may be showing members different rosters",
            safe(from),
            safe(room)
        ),
    )
    .naming_place()
}

/// `N users connected:` and a line per user.
pub(super) fn users(lines: &[String]) -> Said {
    let mut text = format!(
        "{} user{} connected:",
        lines.len(),
        plural(u64::try_from(lines.len()).unwrap_or(u64::MAX))
    );
    for line in lines {
        text.push_str(&format!("\n  {line}"));
    }
    Said::new(Tone::Info, Place::General, text)
}

/// `N rooms:` and a line per room with its count of members.
pub(super) fn rooms(rooms: &[RoomInfo]) -> Said {
    let mut text = format!(
        "{} room{}:",
        rooms.len(),
        plural(u64::try_from(rooms.len()).unwrap_or(u64::MAX))
    );
    for room in rooms {
        let count = room.members;
        text.push_str(&format!(
            "\n  #{} ({count} member{})",
            safe(&room.name),
            plural(u64::from(count))
        ));
    }
    Said::new(Tone::Info, Place::General, text)
}

pub(super) fn verified_only(room: &RoomName, on: bool) -> Said {
    let chat = Chat::Room(room.clone());
    let room = safe(room);
    let text = if on {
        format!("#{room}: your messages go to verified members only")
    } else {
        format!("#{room}: your messages go to every member with a known key")
    };
    Said::new(Tone::Info, Place::Chat(chat), text).naming_place()
}

/// A disappearing-message timer as people say it: in the largest unit it
/// is a whole number (under 1,000) of ("30 seconds", "90 minutes", "1
/// hour", "365 days", "4 weeks"), else in its two largest units ("1 hour
/// 30 seconds"); 0 is "off".
pub fn duration(seconds: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (7 * 24 * 3600, "week"),
        (24 * 3600, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    if seconds == 0 {
        return "off".to_owned();
    }
    let count = |n: u64, unit: &str| format!("{n} {unit}{}", plural(n));
    if let Some((size, unit)) = UNITS
        .iter()
        .find(|(size, _)| seconds.is_multiple_of(*size) && seconds / size < 1000)
    {
        return count(seconds / size, unit);
    }
    let mut parts = Vec::new();
    let mut left = seconds;
    for (size, unit) in UNITS {
        if left >= size && parts.len() < 2 {
            parts.push(count(left / size, unit));
            left %= size;
        }
    }
    parts.join(" ")
}

/// A chat's disappearing-message timer: changed `by` someone (a notice
/// everyone in the chat sees; `me` when it was this user), or the setting
/// as it stands.
pub(super) fn timer(chat: &Chat, seconds: u64, by: Option<&UserName>, me: bool) -> Said {
    let place = Place::Chat(chat.clone());
    let text = match (by, seconds) {
        (Some(_), 0) if me => "you turned off disappearing messages".to_owned(),
        (Some(by), 0) => format!("{} turned off disappearing messages", safe(by)),
        (Some(_), seconds) if me => {
            format!("you set disappearing messages to {}", duration(seconds))
        }
        (Some(by), seconds) => format!(
            "{} set disappearing messages to {}",
            safe(by),
            duration(seconds)
        ),
        (None, 0) => "disappearing messages are off".to_owned(),
        (None, seconds) => format!(
            "messages disappear {} after they are sent or arrive",
            duration(seconds)
        ),
    };
    Said::new(Tone::Info, place, text)
}

/// Messages of `chat` disappeared: `count` shown ones, `queued` never sent.
/// Nothing to say when none was shown.
pub(super) fn expired(chat: &Chat, count: usize, queued: usize) -> Option<Said> {
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    let queued = u64::try_from(queued).unwrap_or(u64::MAX);
    let mut parts = Vec::new();
    if count > 0 {
        parts.push(format!("{count} message{} disappeared", plural(count)));
    }
    if queued > 0 {
        parts.push(format!(
            "{queued} queued message{} disappeared before {} could be sent",
            plural(queued),
            if queued == 1 { "it" } else { "they" }
        ));
    }
    (!parts.is_empty()).then(|| Said::new(Tone::Info, Place::Chat(chat.clone()), parts.join("; ")))
}

/// A command or a frame that failed (the session's words): a warning, as
/// most are refusals (a message not sent, a request the relay refused); a
/// front end may show them louder.
pub(super) fn error(message: &str) -> Said {
    Said::new(Tone::Warning, Place::General, safe(&message))
}

/// A file transfer's start, end or failure (its progress in between is
/// for front ends to draw: nothing here). The file's name is the
/// sender's, made safe to show.
pub(super) fn transfer(transfer: &Transfer) -> Option<Said> {
    let place = Place::Chat(transfer.chat.clone());
    let name = safe(&transfer.name);
    let size = crate::session::human_size(transfer.size);
    let (tone, text) = match (&transfer.state, transfer.direction) {
        (TransferState::Running, _) if transfer.done > 0 => return None,
        (TransferState::Running, Direction::Upload) => {
            (Tone::Info, format!("sending {name} ({size})"))
        }
        (TransferState::Running, Direction::Download) => {
            (Tone::Info, format!("saving {name} ({size})"))
        }
        (TransferState::Done { .. }, Direction::Upload) => (
            Tone::Info,
            format!("{name} is on the relay; offered in the chat"),
        ),
        (TransferState::Done { path }, Direction::Download) => {
            let path = path
                .as_ref()
                .map(|p| safe(&p.display()))
                .unwrap_or_default();
            (
                Tone::Info,
                format!("saved {name} ({size}) to {path}; its integrity checked"),
            )
        }
        (TransferState::Failed(problem), _) => (Tone::Warning, safe(&problem.message)),
    };
    Some(Said::new(tone, place, text))
}

pub(super) fn info(text: &impl fmt::Display) -> Said {
    Said::new(Tone::Info, Place::General, safe(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::DeliveryState;

    #[test]
    fn timers_read_as_people_say_them_and_changes_name_who_made_them() {
        let cases = [
            (0, "off"),
            (1, "1 second"),
            (90, "90 seconds"),
            (3600, "1 hour"),
            (5400, "90 minutes"),
            (3630, "1 hour 30 seconds"),
            (8 * 3600, "8 hours"),
            (90_000, "25 hours"),
            (604_800, "1 week"),
            (31_536_000, "365 days"),
            (31_535_999, "52 weeks 23 hours"),
        ];
        for (seconds, said) in cases {
            assert_eq!(duration(seconds), said, "{seconds}");
        }
        let lobby = Chat::Room("lobby".parse().unwrap());
        let bob: UserName = "bob".parse().unwrap();
        let text = |seconds, by: Option<&UserName>, me| timer(&lobby, seconds, by, me).qualified();
        assert_eq!(
            text(3600, Some(&bob), false),
            "#lobby: bob set disappearing messages to 1 hour"
        );
        assert_eq!(
            text(0, Some(&bob), false),
            "#lobby: bob turned off disappearing messages"
        );
        assert_eq!(
            text(60, Some(&bob), true),
            "#lobby: you set disappearing messages to 1 minute"
        );
        assert_eq!(
            text(0, None, false),
            "#lobby: disappearing messages are off"
        );
        assert_eq!(expired(&lobby, 0, 0), None);
        assert_eq!(
            expired(&lobby, 2, 0).map(|s| s.text),
            Some("2 messages disappeared".to_owned())
        );
    }

    #[test]
    fn reached_splits_the_recipients_by_their_receipts_and_the_relays_refusals() {
        let names =
            |list: &[&str]| -> Vec<UserName> { list.iter().map(|n| n.parse().unwrap()).collect() };
        let delivery = Delivery {
            state: DeliveryState::Sent,
            recipients: names(&["bob", "carol", "dave"]),
            // A receipt counts from a recipient only, in any letter case.
            delivered: names(&["BOB", "mallory"]),
            refused: names(&["dave"]),
        };
        let reached = reached(&delivery);
        let shown = |list: &[&UserName]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(shown(&reached.got), ["bob"]);
        assert_eq!(shown(&reached.waiting), ["carol"]);
        assert_eq!(shown(&reached.refused), ["dave"]);
        assert_eq!(reached.of(), 3);
        assert!(!reached.everyone());
        let all = Delivery {
            delivered: names(&["bob", "carol", "dave"]),
            ..delivery
        };
        assert!(super::reached(&all).everyone());
        assert!(!super::reached(&Delivery::default()).everyone());
    }
}
