//! JSON mode as a bot drives it: each command may carry an `"id"` (any
//! JSON value), echoed as `"command_id"` in the events it causes; a
//! `history` command pages through what this client has stored, instead
//! of one giant history line at start (docs/cli.md, section 11).
//!
//! Which event a command causes is known from what the session reports
//! in order: the next outgoing `message` in a chat is the next `send` to
//! it (and its later `delivery` events carry the same id), the next
//! `joined` or `left` of a room the next `join` or `leave` of it, the next
//! `users`, `rooms` or `safety_number` of a name the next such command.
//! A `verify` or `trust` of a name is answered by the next `trust` of it,
//! a `timer` of a chat by the next `timer` of that chat.
//! A command that ends in an `error` instead (a send not in the room or to
//! no such user, a leave of a room not joined, ...) is answered by that
//! error: the session's `Problem` says which commands it answers (a
//! chat's oldest sends, a leave of a room, ...); an error about a message
//! already sent (the relay refused it) names that message.
//!
//! Every command is queued, with its id or without one, so that a command
//! with no id does not take the id of the next one.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value, json};
use sotto_client::session::{
    Answers, BlobId, Chat, Command, Direction, Message, MessageId, Problem, Transfer,
    TransferState, Update, safe_file_name,
};
use sotto_proto::{RoomName, UserKey};

use crate::json;

/// What a line asks for.
pub(crate) enum Action {
    /// A command for the session.
    Command(Command),
    /// An event to print at once (answered here).
    Print(Value),
}

/// The most messages one `history` answer carries.
const PAGE_LIMIT: usize = 500;

/// The ids of the commands of one kind not yet answered, oldest first
/// (`None` for a command without one).
type Waiting = VecDeque<Option<Value>>;

/// The bot side of JSON mode: command ids and stored messages to page.
#[derive(Default)]
pub(crate) struct Bot {
    sends: HashMap<Chat, Waiting>,
    sent: HashMap<(Chat, MessageId), Value>,
    rooms_joined: HashMap<RoomName, Waiting>,
    rooms_left: HashMap<RoomName, Waiting>,
    users: Waiting,
    rooms: Waiting,
    safety: HashMap<UserKey, Waiting>,
    /// `verify` and `trust` commands, answered by `trust` (or an error).
    trusts: HashMap<UserKey, Waiting>,
    /// `timer` commands, answered by `timer` (or an error).
    timers: HashMap<Chat, Waiting>,
    /// Every message of each chat this session has shown, in display
    /// order.
    stored: HashMap<Chat, Vec<Message>>,
    /// This user, once registered (its own timer changes answer its
    /// `timer` commands).
    me: Option<sotto_proto::UserName>,
    /// `send_file` commands by chat and file name, answered by the first
    /// `transfer` of an upload of that name there.
    uploads: HashMap<(Chat, String), Waiting>,
    /// `save_file` commands by file, answered by its next download.
    downloads: HashMap<BlobId, Waiting>,
    /// The id of each transfer going on, for all its events.
    transfers: HashMap<(BlobId, Direction), Value>,
    /// The id of each upload done, for its file message (and that
    /// message's deliveries).
    offered: HashMap<BlobId, Value>,
}

impl Bot {
    /// Parses one line: a command for the session, an answer to print, or
    /// an `error` event (with the command's id, if it had one).
    pub(crate) fn line(&mut self, line: &str) -> Result<Option<Action>, Value> {
        let id = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("id").cloned());
        let failed = |message: String| with_id(json::refused(&message), id.clone());
        if let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line)
            && object.get("type").and_then(Value::as_str) == Some("history")
        {
            return self
                .page(&object)
                .map(|event| Some(Action::Print(with_id(event, id.clone()))))
                .map_err(failed);
        }
        let Some(command) = json::command(line).map_err(failed)? else {
            return Ok(None);
        };
        match &command {
            Command::Send { chat, .. } => self.sends.entry(chat.clone()).or_default().push_back(id),
            Command::Join(room) => self
                .rooms_joined
                .entry(room.clone())
                .or_default()
                .push_back(id),
            Command::Leave(room) => self
                .rooms_left
                .entry(room.clone())
                .or_default()
                .push_back(id),
            Command::ListUsers => self.users.push_back(id),
            Command::ListRooms => self.rooms.push_back(id),
            Command::SafetyNumber(name) => self.safety.entry(name.key()).or_default().push_back(id),
            Command::Verify { name, .. } | Command::AcceptKey(name) => {
                self.trusts.entry(name.key()).or_default().push_back(id)
            }
            Command::SetTimer { chat, .. } | Command::ShowTimer(chat) => {
                self.timers.entry(chat.clone()).or_default().push_back(id);
            }
            Command::SendFile { chat, path } => {
                let name = path
                    .file_name()
                    .map(|n| safe_file_name(&n.to_string_lossy()))
                    .unwrap_or_default();
                self.uploads
                    .entry((chat.clone(), name))
                    .or_default()
                    .push_back(id);
            }
            Command::SaveFile { chat, message, .. } => {
                let blob = self
                    .stored
                    .get(chat)
                    .and_then(|messages| messages.iter().find(|m| m.id() == *message))
                    .and_then(|m| m.file.as_ref().map(|f| f.blob));
                if let Some(blob) = blob {
                    self.downloads.entry(blob).or_default().push_back(id);
                }
            }
            _ => {}
        }
        Ok(Some(Action::Command(command)))
    }

    /// The event to print for `update` (a history cut to its `newest`
    /// messages, as `json::shown`), with the id of the command that caused
    /// it.
    pub(crate) fn event(&mut self, update: &Update, newest: Option<usize>) -> Option<Value> {
        if let Update::Error(problem) = update {
            // The commands it answers: the first one's id is the
            // `command_id`, and all of them (when there are several)
            // `command_ids`.
            let ids = self.answered(problem);
            let mut event = with_id(json::event(update), ids.first().cloned());
            if let (true, Value::Object(fields)) = (ids.len() > 1, &mut event) {
                fields.insert("command_ids".to_owned(), Value::Array(ids));
            }
            return Some(event);
        }
        let id = self.caused(update);
        self.keep(update);
        json::shown(update, newest).map(|event| with_id(event, id))
    }

    fn caused(&mut self, update: &Update) -> Option<Value> {
        let first = |queue: Option<&mut Waiting>| queue.and_then(VecDeque::pop_front).flatten();
        match update {
            Update::Message(m) if m.outgoing && m.file.is_some() => {
                let id = self.offered.remove(&m.file.as_ref()?.blob)?;
                self.sent.insert((m.chat.clone(), m.id()), id.clone());
                Some(id)
            }
            Update::Transfer(transfer) => self.transfer_id(transfer),
            Update::Message(m) if m.outgoing => {
                let id = first(self.sends.get_mut(&m.chat))?;
                self.sent.insert((m.chat.clone(), m.id()), id.clone());
                Some(id)
            }
            Update::Delivery { chat, id, .. } => self.sent.get(&(chat.clone(), *id)).cloned(),
            Update::Joined { room } => first(self.rooms_joined.get_mut(room)),
            Update::Left { room } => first(self.rooms_left.get_mut(room)),
            Update::Users(_) => self.users.pop_front().flatten(),
            Update::Rooms(_) => self.rooms.pop_front().flatten(),
            Update::SafetyNumber { name, .. } => first(self.safety.get_mut(&name.key())),
            Update::Trust { name, .. } => first(self.trusts.get_mut(&name.key())),
            // A member's change answers nothing; this user's own, or the
            // setting shown, answers the chat's oldest `timer`.
            Update::Timer { chat, by, .. }
                if by
                    .as_ref()
                    .is_none_or(|by| self.me.as_ref().is_some_and(|me| me.same_as(by))) =>
            {
                first(self.timers.get_mut(chat))
            }
            _ => None,
        }
    }

    /// The id of the command that started `transfer`: a transfer's first
    /// event takes it, and keeps it to its end.
    fn transfer_id(&mut self, transfer: &Transfer) -> Option<Value> {
        let key = (transfer.blob, transfer.direction);
        let id = match self.transfers.get(&key) {
            Some(id) => id.clone(),
            None => {
                let waiting = match transfer.direction {
                    Direction::Upload => self
                        .uploads
                        .get_mut(&(transfer.chat.clone(), transfer.name.clone())),
                    Direction::Download => self.downloads.get_mut(&transfer.blob),
                };
                let id = waiting.and_then(VecDeque::pop_front).flatten()?;
                self.transfers.insert(key, id.clone());
                id
            }
        };
        match &transfer.state {
            TransferState::Running => {}
            ended => {
                self.transfers.remove(&key);
                if transfer.direction == Direction::Upload
                    && matches!(ended, TransferState::Done { .. })
                {
                    self.offered.insert(transfer.blob, id.clone());
                }
            }
        }
        Some(id)
    }

    /// The ids of the commands `problem` answers (those that had one), in
    /// order; they are answered, so no later event takes their ids.
    fn answered(&mut self, problem: &Problem) -> Vec<Value> {
        let first = |queue: Option<&mut Waiting>| queue.and_then(VecDeque::pop_front).flatten();
        let mut ids = Vec::new();
        for answers in &problem.answers {
            match answers {
                Answers::Sends { chat, count } => {
                    let queue = self.sends.entry(chat.clone()).or_default();
                    ids.extend((0..*count).filter_map(|_| queue.pop_front().flatten()));
                }
                Answers::Message { chat, id } => {
                    ids.extend(self.sent.get(&(chat.clone(), *id)).cloned());
                }
                Answers::Leave { room } => ids.extend(first(self.rooms_left.get_mut(room))),
                Answers::SafetyNumber { name } => {
                    ids.extend(first(self.safety.get_mut(&name.key())));
                }
                Answers::Trust { name } => ids.extend(first(self.trusts.get_mut(&name.key()))),
                Answers::Users => ids.extend(self.users.pop_front().flatten()),
                Answers::Rooms => ids.extend(self.rooms.pop_front().flatten()),
                Answers::Timer { chat } => ids.extend(first(self.timers.get_mut(chat))),
                // Answers this version does not know: no id.
                _ => {}
            }
        }
        ids
    }

    fn keep(&mut self, update: &Update) {
        match update {
            Update::History { chat, messages } => {
                let kept = self.stored.entry(chat.clone()).or_default();
                kept.extend(messages.iter().cloned());
                kept.sort_by_key(|m| m.position);
            }
            Update::Message(m) => {
                let kept = self.stored.entry(m.chat.clone()).or_default();
                // Late messages go where they belong: by display position.
                let at = kept.partition_point(|k| k.position <= m.position);
                kept.insert(at, m.clone());
            }
            // Disappeared: no page shows them again.
            Update::Expired { chat, ids, .. } => {
                if let Some(kept) = self.stored.get_mut(chat) {
                    kept.retain(|m| !ids.contains(&m.id()));
                }
                for id in ids {
                    self.sent.remove(&(chat.clone(), *id));
                }
            }
            Update::Connection(sotto_client::session::Connection::Connected { name }) => {
                self.me = Some(name.clone());
            }
            _ => {}
        }
    }

    /// `{"type":"history", "room"|"user": ..., "before": MESSAGE_ID?,
    /// "limit": N?}`: up to `limit` (default 50, at most 500) messages of
    /// the chat, the newest before `before` (or the newest of all), as a
    /// `history` event with `more` saying whether older ones remain.
    fn page(&self, object: &Map<String, Value>) -> Result<Value, String> {
        let chat = match (object.get("room"), object.get("user")) {
            (Some(Value::String(r)), None) => Chat::Room(sotto_client::commands::room(r)?),
            (None, Some(Value::String(u))) => Chat::Direct(sotto_client::commands::user(u)?),
            _ => return Err("history needs exactly one of \"room\" and \"user\"".to_owned()),
        };
        let limit = match object.get("limit") {
            None => 50,
            Some(value) => value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=PAGE_LIMIT).contains(n))
                .ok_or_else(|| format!("\"limit\" must be a number from 1 to {PAGE_LIMIT}"))?,
        };
        let messages = self.stored.get(&chat).map_or(&[][..], Vec::as_slice);
        let end = match object.get("before") {
            None => messages.len(),
            Some(Value::String(before)) => messages
                .iter()
                .position(|m| m.id().to_string() == *before)
                .ok_or_else(|| format!("no message {before:?} in {chat}"))?,
            Some(_) => return Err("\"before\" must be a message id (a string)".to_owned()),
        };
        let start = end.saturating_sub(limit);
        let page = messages.get(start..end).unwrap_or_default();
        let mut event = json::event(&Update::History {
            chat,
            messages: page.to_vec(),
        });
        if let Value::Object(fields) = &mut event {
            fields.insert("more".to_owned(), json!(start > 0));
        }
        Ok(event)
    }
}

/// `event` with `"command_id": id`, if there is one.
fn with_id(mut event: Value, id: Option<Value>) -> Value {
    if let (Some(id), Value::Object(fields)) = (id, &mut event) {
        fields.insert("command_id".to_owned(), id);
    }
    event
}

#[cfg(test)]
mod tests {
    use sotto_client::session::{Delivery, TrustLevel};
    use sotto_crypto::Fingerprint;

    use super::*;
    use crate::json::tests::texts;

    fn sent(seq: u64, text: &str) -> Message {
        Message {
            chat: Chat::Room("lobby".parse().unwrap()),
            from: "alice".parse().unwrap(),
            fingerprint: Fingerprint([7; 32]),
            trust: TrustLevel::Verified,
            outgoing: true,
            seq,
            sent_at_ms: 0,
            received_at_ms: 0,
            late: false,
            position: (seq + 1, 1 << 31),
            text: text.to_owned(),
            delivery: Some(Delivery::default()),
            expires_at_ms: None,
            file: None,
        }
    }

    #[test]
    fn a_commands_id_comes_back_on_the_events_it_causes() {
        let mut bot = Bot::default();
        for (line, id) in [
            (
                r#"{"type":"send","room":"lobby","text":"one","id":1}"#,
                json!(1),
            ),
            (
                r#"{"type":"send","room":"lobby","text":"two","id":"b"}"#,
                json!("b"),
            ),
        ] {
            assert!(
                matches!(bot.line(line), Ok(Some(Action::Command(_)))),
                "{id}"
            );
        }
        let one = bot.event(&Update::Message(sent(0, "one")), None).unwrap();
        let two = bot.event(&Update::Message(sent(1, "two")), None).unwrap();
        assert_eq!(
            (one["command_id"].clone(), two["command_id"].clone()),
            (json!(1), json!("b"))
        );
        let delivery = Update::Delivery {
            chat: Chat::Room("lobby".parse().unwrap()),
            id: sent(1, "two").id(),
            delivery: Delivery::default(),
        };
        assert_eq!(
            bot.event(&delivery, None).unwrap()["command_id"],
            json!("b")
        );
        // A command with no id, and what it causes, have none.
        assert!(matches!(
            bot.line(r#"{"type":"send","room":"lobby","text":"3"}"#),
            Ok(Some(_))
        ));
        assert!(
            bot.event(&Update::Message(sent(2, "3")), None)
                .unwrap()
                .get("command_id")
                .is_none()
        );
        // A refused line's error carries its id.
        let Err(error) = bot.line(r#"{"type":"send","text":"x","id":[9]}"#) else {
            panic!("refused")
        };
        assert_eq!(
            (error["type"].clone(), error["command_id"].clone()),
            (json!("error"), json!([9]))
        );
        bot.line(r#"{"type":"users","id":"u"}"#).unwrap();
        assert_eq!(
            bot.event(&Update::Users(Vec::new()), None).unwrap()["command_id"],
            json!("u")
        );
    }

    #[test]
    fn an_error_that_answers_a_command_carries_its_id_and_its_codes() {
        use sotto_client::session::ProblemCode;
        use sotto_proto::ErrorCode;
        let mut bot = Bot::default();
        let ops = Chat::Room("ops".parse().unwrap());
        let nobody = Chat::Direct("nobody".parse().unwrap());
        for line in [
            r#"{"type":"send","room":"ops","text":"a"}"#,
            r#"{"type":"send","room":"ops","text":"b","id":"b"}"#,
            r#"{"type":"send","user":"nobody","text":"c","id":3}"#,
            r#"{"type":"send","user":"nobody","text":"d","id":4}"#,
            r#"{"type":"send","room":"lobby","text":"e","id":"e"}"#,
        ] {
            assert!(matches!(bot.line(line), Ok(Some(Action::Command(_)))));
        }
        let not_in = |text: &str| {
            Update::Error(Problem::new(ProblemCode::NotInRoom, text).unsent(ops.clone(), 1))
        };
        // The first send had no id: its error has none, and does not take
        // the next one's.
        let first = bot.event(&not_in("first"), None).unwrap();
        assert!(first.get("command_id").is_none(), "{first}");
        let second = bot.event(&not_in("second"), None).unwrap();
        assert_eq!(
            (second["code"].clone(), second["command_id"].clone()),
            (json!("not_in_room"), json!("b"))
        );
        // One error for both texts waiting for nobody's key.
        let no_user = bot
            .event(
                &Update::Error(
                    Problem::new(ProblemCode::NoSuchUser, "there is no user called nobody")
                        .unsent(nobody, 2),
                ),
                None,
            )
            .unwrap();
        assert_eq!(
            (
                no_user["code"].clone(),
                no_user["command_id"].clone(),
                no_user["command_ids"].clone()
            ),
            (json!("no_such_user"), json!(3), json!([3, 4]))
        );
        // The relay refusing a message already shown: the id of its send.
        let message = sent(0, "e");
        let shown = bot.event(&Update::Message(message.clone()), None).unwrap();
        assert_eq!(shown["command_id"], json!("e"));
        let refused = bot
            .event(
                &Update::Error(
                    Problem::new(ProblemCode::Relay(ErrorCode::QueueFull), "not delivered")
                        .about(message.chat.clone(), message.id()),
                ),
                None,
            )
            .unwrap();
        assert_eq!(
            (
                refused["code"].clone(),
                refused["relay_code"].clone(),
                refused["command_id"].clone()
            ),
            (json!("relay"), json!("queue_full"), json!("e"))
        );
        // Other commands' errors: a leave, a safety number, a verify, a
        // listing; the next answer of each kind is the next command's.
        for line in [
            r#"{"type":"leave","room":"ops","id":"l"}"#,
            r#"{"type":"safety_number","name":"Carol","id":"s1"}"#,
            r#"{"type":"safety_number","name":"carol","id":"s2"}"#,
            r#"{"type":"trust","name":"bob","id":"t"}"#,
            r#"{"type":"users","id":"u1"}"#,
            r#"{"type":"users","id":"u2"}"#,
        ] {
            assert!(matches!(bot.line(line), Ok(Some(Action::Command(_)))));
        }
        let answering = |code, answers| Update::Error(Problem::new(code, "no").answering(answers));
        for (error, id) in [
            (
                answering(
                    ProblemCode::NotInRoom,
                    Answers::Leave {
                        room: "ops".parse().unwrap(),
                    },
                ),
                "l",
            ),
            (
                answering(
                    ProblemCode::NoKeyYet,
                    Answers::SafetyNumber {
                        name: "CAROL".parse().unwrap(),
                    },
                ),
                "s1",
            ),
            (
                answering(
                    ProblemCode::BadCommand,
                    Answers::Trust {
                        name: "bob".parse().unwrap(),
                    },
                ),
                "t",
            ),
            (answering(ProblemCode::NotConnected, Answers::Users), "u1"),
        ] {
            assert_eq!(bot.event(&error, None).unwrap()["command_id"], json!(id));
        }
        assert_eq!(
            bot.event(&Update::Users(Vec::new()), None).unwrap()["command_id"],
            json!("u2")
        );
        // An error about nothing sent has no id.
        let other = bot
            .event(
                &Update::Error(Problem::new(ProblemCode::Storage, "disk")),
                None,
            )
            .unwrap();
        assert!(other.get("command_id").is_none(), "{other}");
    }

    #[test]
    fn history_pages_back_through_what_is_stored() {
        let mut bot = Bot::default();
        let chat = Chat::Room("lobby".parse().unwrap());
        let messages: Vec<Message> = (0..120).map(|n| sent(n, &format!("m{n}"))).collect();
        bot.event(
            &Update::History {
                chat,
                messages: messages.clone(),
            },
            Some(0),
        );
        let page = |bot: &mut Bot, line: &str| match bot.line(line) {
            Ok(Some(Action::Print(event))) => event,
            _ => panic!("{line}"),
        };
        let newest = page(&mut bot, r#"{"type":"history","room":"lobby","id":7}"#);
        assert_eq!(texts(&newest).len(), 50);
        assert_eq!(texts(&newest).last().unwrap(), "m119");
        assert_eq!(
            (newest["more"].clone(), newest["command_id"].clone()),
            (json!(true), json!(7))
        );
        let before = messages[70].id().to_string();
        let older = page(
            &mut bot,
            &format!(r#"{{"type":"history","room":"lobby","before":"{before}","limit":100}}"#),
        );
        assert_eq!(texts(&older).first().unwrap(), "m0");
        assert_eq!(texts(&older).last().unwrap(), "m69");
        assert_eq!(older["more"], json!(false));
        assert!(
            bot.line(r#"{"type":"history","room":"lobby","limit":0}"#)
                .is_err()
        );
        assert!(
            bot.line(r#"{"type":"history","room":"lobby","before":"nope"}"#)
                .is_err()
        );
    }
}
