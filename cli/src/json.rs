//! `--json` mode: one JSON object per line, in (commands) and out (events),
//! each with a `type` field. docs/cli.md is the schema.

use serde_json::{Map, Value, json};
use sotto_client::contacts::KeyEvent;
use sotto_client::session::{
    Chat, Command, Connection, Delivery, DeliveryState, Direction, Member, Message, MessageId,
    PresenceChange, Problem, ProblemCode, Transfer, TransferState, TrustLevel, Update,
    relay_code_str,
};
use sotto_crypto::Fingerprint;
use sotto_proto::fingerprint_text;

use sotto_client::commands::{room, user};

fn trust(trust: TrustLevel) -> &'static str {
    match trust {
        TrustLevel::Unknown => "unknown",
        TrustLevel::Unverified => "unverified",
        TrustLevel::Verified => "verified",
        TrustLevel::Changed => "changed",
    }
}

/// `{"room": R}` or `{"user": PEER}`, merged into an event.
fn chat_fields(chat: &Chat, into: &mut Map<String, Value>) {
    match chat {
        Chat::Room(room) => into.insert("room".to_owned(), json!(room.as_str())),
        Chat::Direct(peer) => into.insert("user".to_owned(), json!(peer.as_str())),
    };
}

fn with_type(kind: &str, fields: Value) -> Value {
    let mut object = Map::new();
    object.insert("type".to_owned(), json!(kind));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object)
}

fn message(message: &Message) -> Value {
    let mut fields = Map::new();
    chat_fields(&message.chat, &mut fields);
    fields.insert("from".to_owned(), json!(message.from));
    fields.insert(
        "fingerprint".to_owned(),
        json!(message.fingerprint.to_hex()),
    );
    fields.insert("trust".to_owned(), json!(trust(message.trust)));
    fields.insert("outgoing".to_owned(), json!(message.outgoing));
    fields.insert("seq".to_owned(), json!(message.seq));
    fields.insert("sent_at_ms".to_owned(), json!(message.sent_at_ms));
    fields.insert("received_at_ms".to_owned(), json!(message.received_at_ms));
    fields.insert("late".to_owned(), json!(message.late));
    fields.insert("text".to_owned(), json!(message.text));
    fields.insert("id".to_owned(), json!(message.id().to_string()));
    if let Some(delivery) = &message.delivery {
        fields.insert("delivery".to_owned(), delivery_fields(delivery));
    }
    if let Some(expires) = message.expires_at_ms {
        fields.insert("expires_at_ms".to_owned(), json!(expires));
    }
    if let Some(file) = &message.file {
        fields.insert(
            "file".to_owned(),
            json!({
                "name": file.name,
                "media_type": file.media_type,
                "size": file.size,
                "blob": file.blob.to_hex(),
            }),
        );
    }
    Value::Object(fields)
}

/// A transfer event: where a file on its way is.
fn transfer(transfer: &Transfer) -> Value {
    let mut fields = Map::new();
    chat_fields(&transfer.chat, &mut fields);
    fields.insert("blob".to_owned(), json!(transfer.blob.to_hex()));
    fields.insert("name".to_owned(), json!(transfer.name));
    let direction = match transfer.direction {
        Direction::Upload => "upload",
        Direction::Download => "download",
    };
    fields.insert("direction".to_owned(), json!(direction));
    fields.insert("done".to_owned(), json!(transfer.done));
    fields.insert("size".to_owned(), json!(transfer.size));
    let state = match &transfer.state {
        TransferState::Running => "running",
        TransferState::Done { path } => {
            if let Some(path) = path {
                fields.insert("path".to_owned(), json!(path.display().to_string()));
            }
            "done"
        }
        TransferState::Failed(problem) => {
            code_fields(problem, &mut fields);
            fields.insert("message".to_owned(), json!(problem.message));
            "failed"
        }
    };
    fields.insert("state".to_owned(), json!(state));
    with_type("transfer", Value::Object(fields))
}

/// Reads a message id as events write it: `FINGERPRINT-HEX:SEQ`.
fn message_id(text: &str) -> Result<MessageId, String> {
    let wrong = || format!("{text:?} is not a message id (FINGERPRINT:SEQ)");
    let (sender, seq) = text.split_once(':').ok_or_else(wrong)?;
    Ok(MessageId {
        sender: Fingerprint::from_hex(sender).ok_or_else(wrong)?,
        seq: seq.parse().map_err(|_| wrong())?,
    })
}

/// The chat a command names with exactly one of `"room"` and `"user"`.
fn chat_of(object: &Map<String, Value>, command: &str) -> Result<Chat, String> {
    match (object.get("room"), object.get("user")) {
        (Some(Value::String(r)), None) => Ok(Chat::Room(room(r)?)),
        (None, Some(Value::String(u))) => Ok(Chat::Direct(user(u)?)),
        _ => Err(format!(
            "{command} needs exactly one of \"room\" and \"user\""
        )),
    }
}

/// `"code"` (and `"relay_code"` when the relay refused) of `problem`,
/// merged into an event.
fn code_fields(problem: &Problem, into: &mut Map<String, Value>) {
    into.insert("code".to_owned(), json!(problem.code.as_str()));
    if let Some(code) = problem.code.relay_code() {
        into.insert("relay_code".to_owned(), json!(relay_code_str(code)));
    }
}

/// How far a sent message got: `state` (`pending`, `sent` or `failed`,
/// with `reason`, its `code` and the relay's `relay_code`), `recipients`,
/// and those of them it was `delivered` to (their receipts) or `refused`
/// for (the relay will not keep it for them).
fn delivery_fields(delivery: &Delivery) -> Value {
    let (state, failed) = match &delivery.state {
        DeliveryState::Pending => ("pending", None),
        DeliveryState::Sent => ("sent", None),
        DeliveryState::Failed(why) => ("failed", Some(why)),
    };
    let mut fields = Map::new();
    fields.insert("state".to_owned(), json!(state));
    if let Some(why) = failed {
        fields.insert("reason".to_owned(), json!(why.message));
        code_fields(why, &mut fields);
    }
    fields.insert("recipients".to_owned(), json!(delivery.recipients));
    fields.insert("delivered".to_owned(), json!(delivery.delivered));
    fields.insert("refused".to_owned(), json!(delivery.refused));
    Value::Object(fields)
}

fn member(member: &Member) -> Value {
    json!({
        "name": member.name,
        "fingerprint": member.fingerprint.map(|f| f.to_hex()),
        "trust": trust(member.trust),
        "online": member.online,
    })
}

/// An error event: its stable `code`, the relay's `relay_code` when the
/// relay refused, and the `message` for people.
pub(crate) fn error(problem: &Problem) -> Value {
    let mut fields = Map::new();
    code_fields(problem, &mut fields);
    fields.insert("message".to_owned(), json!(problem.message));
    with_type("error", Value::Object(fields))
}

/// The error event for a command line that could not be read.
pub(crate) fn refused(message: &str) -> Value {
    error(&Problem::new(ProblemCode::BadCommand, message))
}

/// The event to print for `update`, with a stored history cut to its
/// `newest` messages (all of them with `None`; none, and no event, with
/// `Some(0)`): a `history` event then says how many it left out.
pub(crate) fn shown(update: &Update, newest: Option<usize>) -> Option<Value> {
    let (Update::History { chat, messages }, Some(newest)) = (update, newest) else {
        return Some(event(update));
    };
    if newest == 0 {
        return None;
    }
    let omitted = messages.len().saturating_sub(newest);
    let kept = Update::History {
        chat: chat.clone(),
        messages: messages.iter().skip(omitted).cloned().collect(),
    };
    let mut event = event(&kept);
    if omitted > 0
        && let Value::Object(fields) = &mut event
    {
        fields.insert("omitted".to_owned(), json!(omitted));
    }
    Some(event)
}

/// The event for one update.
pub(crate) fn event(update: &Update) -> Value {
    match update {
        Update::Ready(_) => with_type("ready", json!({})),
        Update::History { chat, messages } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert(
                "messages".to_owned(),
                Value::Array(messages.iter().map(message).collect()),
            );
            with_type("history", Value::Object(fields))
        }
        Update::Connection(state) => match state {
            Connection::Connecting => with_type("connection", json!({ "state": "connecting" })),
            Connection::Connected { name } => {
                with_type("connection", json!({ "state": "connected", "name": name }))
            }
            Connection::Reconnecting { after, reason } => with_type(
                "connection",
                json!({
                    "state": "reconnecting",
                    "after_ms": u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "reason": reason,
                }),
            ),
            Connection::Failed { reason } => {
                with_type("connection", json!({ "state": "failed", "reason": reason }))
            }
        },
        Update::Joined { room } => with_type("joined", json!({ "room": room.as_str() })),
        Update::Left { room } => with_type("left", json!({ "room": room.as_str() })),
        Update::Members { room, members } => with_type(
            "members",
            json!({
                "room": room.as_str(),
                "members": members.iter().map(member).collect::<Vec<_>>(),
            }),
        ),
        Update::Presence { room, name, change } => with_type(
            "presence",
            json!({
                "room": room.as_str(),
                "name": name,
                "change": match change {
                    PresenceChange::Joined => "joined",
                    PresenceChange::Left => "left",
                    PresenceChange::Disconnected => "disconnected",
                    PresenceChange::Connected => "connected",
                },
            }),
        ),
        Update::Message(m) => with_type("message", message(m)),
        Update::Transfer(t) => transfer(t),
        Update::Queued(queued) => {
            let messages: Vec<Value> = queued
                .iter()
                .map(|queued| {
                    let mut fields = Map::new();
                    chat_fields(&queued.chat, &mut fields);
                    fields.insert("typed_at_ms".to_owned(), json!(queued.typed_at_ms));
                    fields.insert("text".to_owned(), json!(queued.text));
                    Value::Object(fields)
                })
                .collect();
            with_type("queued", json!({ "messages": messages }))
        }
        Update::Delivery { chat, id, delivery } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert("id".to_owned(), json!(id.to_string()));
            fields.insert("delivery".to_owned(), delivery_fields(delivery));
            with_type("delivery", Value::Object(fields))
        }
        Update::Missing { chat, from, count } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert("from".to_owned(), json!(from));
            fields.insert("count".to_owned(), json!(count));
            with_type("missing", Value::Object(fields))
        }
        Update::Rejected { chat, from } => {
            let mut fields = Map::new();
            if let Some(chat) = chat {
                chat_fields(chat, &mut fields);
            }
            fields.insert("from".to_owned(), json!(from));
            with_type("rejected", Value::Object(fields))
        }
        Update::NotForYou { chat, from } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert("from".to_owned(), json!(from));
            with_type("not_for_you", Value::Object(fields))
        }
        Update::Key(event) => match event {
            KeyEvent::Pinned {
                name,
                fingerprint,
                lookalikes,
            } => with_type(
                "key",
                json!({
                    "event": "pinned",
                    "name": name,
                    "fingerprint": fingerprint.to_hex(),
                    "lookalikes": lookalikes,
                }),
            ),
            KeyEvent::Changed {
                name,
                previous,
                current,
            } => with_type(
                "key",
                json!({
                    "event": "changed",
                    "name": name,
                    "previous": previous.to_hex(),
                    "fingerprint": current.to_hex(),
                }),
            ),
            KeyEvent::ChangedVerified {
                name,
                pinned,
                offered,
            } => with_type(
                "key",
                json!({
                    "event": "changed_verified",
                    "name": name,
                    "previous": pinned.to_hex(),
                    "fingerprint": offered.to_hex(),
                    "blocked": true,
                }),
            ),
        },
        Update::Trust { name, trust: level } => {
            with_type("trust", json!({ "name": name, "trust": trust(*level) }))
        }
        Update::SafetyNumber {
            name,
            fingerprint,
            safety_number,
            trust: level,
        } => with_type(
            "safety_number",
            json!({
                "name": name,
                "fingerprint": fingerprint.to_hex(),
                "safety_number": safety_number.digits(),
                "groups": safety_number.groups(),
                "qr": safety_number.qr_payload(),
                "trust": trust(*level),
            }),
        ),
        Update::NotSentTo {
            chat,
            names,
            reason,
        } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert("names".to_owned(), json!(names));
            fields.insert("reason".to_owned(), json!(reason));
            with_type("not_sent", Value::Object(fields))
        }
        Update::RosterMismatch { room, from } => with_type(
            "roster_mismatch",
            json!({ "room": room.as_str(), "from": from }),
        ),
        Update::Users(users) => with_type(
            "users",
            json!({
                "users": users.iter().map(|u| json!({
                    "name": u.name,
                    "rooms": u.rooms,
                    "trust": trust(u.trust),
                })).collect::<Vec<_>>(),
            }),
        ),
        Update::Rooms(rooms) => with_type(
            "rooms",
            json!({
                "rooms": rooms.iter().map(|room| json!({
                    "name": room.name,
                    "members": room.members,
                })).collect::<Vec<_>>(),
            }),
        ),
        Update::VerifiedOnly { room, on } => {
            with_type("verified_only", json!({ "room": room.as_str(), "on": on }))
        }
        Update::Error(problem) => error(problem),
        Update::Timer { chat, seconds, by } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert("seconds".to_owned(), json!(seconds));
            if let Some(by) = by {
                fields.insert("by".to_owned(), json!(by));
            }
            with_type("timer", Value::Object(fields))
        }
        Update::Expired { chat, ids, queued } => {
            let mut fields = Map::new();
            chat_fields(chat, &mut fields);
            fields.insert(
                "ids".to_owned(),
                json!(ids.iter().map(ToString::to_string).collect::<Vec<_>>()),
            );
            let queued: Vec<Value> = queued
                .iter()
                .map(|q| json!({ "typed_at_ms": q.typed_at_ms, "text": q.text }))
                .collect();
            fields.insert("queued".to_owned(), Value::Array(queued));
            with_type("expired", Value::Object(fields))
        }
        Update::RelayKeyMoved(moved) => with_type(
            "relay_key",
            json!({
                "authority": moved.authority,
                "from": fingerprint_text(&moved.from),
                "to": fingerprint_text(&moved.to),
                "how": moved.how.as_str(),
                "log": moved.log.display().to_string(),
            }),
        ),
    }
}

fn text_field<'a>(object: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    object
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string field {field:?}"))
}

/// Parses one command line.
pub(crate) fn command(line: &str) -> Result<Option<Command>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let Value::Object(object) = value else {
        return Err("each line must be a JSON object".to_owned());
    };
    let kind = text_field(&object, "type")?;
    let command = match kind {
        "send" => {
            let text = text_field(&object, "text")?.to_owned();
            let chat = chat_of(&object, "send")?;
            Command::Send { chat, text }
        }
        "send_file" => Command::SendFile {
            chat: chat_of(&object, "send_file")?,
            path: text_field(&object, "path")?.into(),
        },
        "save_file" => Command::SaveFile {
            chat: chat_of(&object, "save_file")?,
            message: message_id(text_field(&object, "message")?)?,
            to: text_field(&object, "path")?.into(),
        },
        "join" => Command::Join(room(text_field(&object, "room")?)?),
        "leave" => Command::Leave(room(text_field(&object, "room")?)?),
        "users" => Command::ListUsers,
        "rooms" => Command::ListRooms,
        "safety_number" => Command::SafetyNumber(user(text_field(&object, "name")?)?),
        "verify" => Command::Verify {
            name: user(text_field(&object, "name")?)?,
            safety_number: text_field(&object, "safety_number")?.to_owned(),
        },
        "trust" => Command::AcceptKey(user(text_field(&object, "name")?)?),
        "verified_only" => Command::SetVerifiedOnly {
            room: room(text_field(&object, "room")?)?,
            on: object
                .get("on")
                .and_then(Value::as_bool)
                .ok_or("missing boolean field \"on\"")?,
        },
        "timer" => {
            let chat = chat_of(&object, "timer")?;
            match object.get("seconds") {
                None => Command::ShowTimer(chat),
                Some(seconds) => Command::SetTimer {
                    chat,
                    seconds: seconds
                        .as_u64()
                        .ok_or("\"seconds\" must be a whole number of seconds (0: off)")?,
                },
            }
        }
        "reconnect" => Command::Reconnect,
        "quit" => Command::Quit,
        other => return Err(format!("unknown command type {other:?}")),
    };
    Ok(Some(command))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sotto_client::session::RelayKeyMoved;
    use sotto_crypto::Fingerprint;

    fn history(count: u64) -> Update {
        let messages = (0..count)
            .map(|seq| Message {
                chat: Chat::Room("lobby".parse().unwrap()),
                from: "bob".parse().unwrap(),
                fingerprint: Fingerprint([1; 32]),
                trust: TrustLevel::Unverified,
                outgoing: false,
                seq,
                sent_at_ms: seq,
                received_at_ms: seq,
                late: false,
                position: (seq, 0),
                text: format!("message {seq}"),
                delivery: None,
                expires_at_ms: None,
                file: None,
            })
            .collect();
        Update::History {
            chat: Chat::Room("lobby".parse().unwrap()),
            messages,
        }
    }

    /// The texts of the messages of a `history` event.
    pub(crate) fn texts(event: &Value) -> Vec<String> {
        event["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_history_is_cut_to_its_newest_messages_and_says_how_many_it_left_out() {
        let all = shown(&history(3), None).unwrap();
        assert_eq!(texts(&all), ["message 0", "message 1", "message 2"]);
        assert!(all.get("omitted").is_none());
        let newest = shown(&history(3), Some(2)).unwrap();
        assert_eq!(texts(&newest), ["message 1", "message 2"]);
        assert_eq!(newest["omitted"], 1);
        assert_eq!(newest["type"], "history");
        let enough = shown(&history(3), Some(5)).unwrap();
        assert_eq!(texts(&enough).len(), 3);
        assert!(enough.get("omitted").is_none());
        assert_eq!(shown(&history(3), Some(0)), None);
        // Only the history is cut.
        let error = Update::Error(Problem::new(ProblemCode::NotInRoom, "x"));
        assert_eq!(shown(&error, Some(0)), Some(event(&error)));
    }

    #[test]
    fn an_error_says_its_code_and_the_relays_code_beside_the_text() {
        let mine = event(&Update::Error(Problem::new(
            ProblemCode::NotInRoom,
            "you are not in #ops: /join ops first",
        )));
        assert_eq!(
            mine,
            json!({
                "type": "error",
                "code": "not_in_room",
                "message": "you are not in #ops: /join ops first",
            })
        );
        let relays = event(&Update::Error(Problem::new(
            ProblemCode::Relay(sotto_proto::ErrorCode::QueueFull),
            "@bob: not delivered: full (QueueFull)",
        )));
        assert_eq!(
            relays,
            json!({
                "type": "error",
                "code": "relay",
                "relay_code": "queue_full",
                "message": "@bob: not delivered: full (QueueFull)",
            })
        );
        assert_eq!(
            refused("each line must be a JSON object"),
            json!({
                "type": "error",
                "code": "bad_command",
                "message": "each line must be a JSON object",
            })
        );
    }

    #[test]
    fn a_failed_delivery_says_its_code_and_the_relays_code() {
        let failed = Delivery {
            state: DeliveryState::Failed(Box::new(Problem::new(
                ProblemCode::Relay(sotto_proto::ErrorCode::LimitReached),
                "too many (LimitReached)",
            ))),
            recipients: vec!["bob".parse().unwrap()],
            ..Delivery::default()
        };
        assert_eq!(
            delivery_fields(&failed),
            json!({
                "state": "failed",
                "reason": "too many (LimitReached)",
                "code": "relay",
                "relay_code": "limit_reached",
                "recipients": ["bob"],
                "delivered": [],
                "refused": [],
            })
        );
        let sent = delivery_fields(&Delivery {
            state: DeliveryState::Sent,
            ..Delivery::default()
        });
        assert!(sent.get("code").is_none() && sent.get("reason").is_none());
    }

    #[test]
    fn a_pinned_key_event_names_the_look_alikes() {
        let event = event(&Update::Key(KeyEvent::Pinned {
            name: "aIice".parse().unwrap(),
            fingerprint: Fingerprint([0xab; 32]),
            lookalikes: vec!["alice".parse().unwrap()],
        }));
        assert_eq!(
            event,
            json!({
                "type": "key",
                "event": "pinned",
                "name": "aIice",
                "fingerprint": "ab".repeat(32),
                "lookalikes": ["alice"],
            })
        );
    }

    #[test]
    fn a_relay_key_move_is_its_own_event_not_an_error() {
        let event = event(&Update::RelayKeyMoved(RelayKeyMoved {
            authority: "relay.example:7447".to_owned(),
            from: [1; 32],
            to: [2; 32],
            how: sotto_client::servers::Move::Handover,
            log: "/data/relay-pins.log".into(),
        }));
        assert_eq!(
            event,
            json!({
                "type": "relay_key",
                "authority": "relay.example:7447",
                "from": fingerprint_text(&[1; 32]),
                "to": fingerprint_text(&[2; 32]),
                "how": "followed-handover",
                "log": "/data/relay-pins.log",
            })
        );
    }

    #[test]
    fn commands_without_fields() {
        for (line, expected) in [
            (r#"{"type":"users"}"#, Command::ListUsers),
            (r#"{"type":"rooms"}"#, Command::ListRooms),
            (r#"{"type":"reconnect"}"#, Command::Reconnect),
            (r#"{"type":"quit"}"#, Command::Quit),
        ] {
            assert_eq!(command(line), Ok(Some(expected)), "{line}");
        }
    }

    #[test]
    fn text_stays_exact_and_json_escaped() {
        let text = "\u{1b}]0;TITLE\u{7} \u{1b}[2J\n[06:59:59] #lobby <bob [verified]> x\u{202e}";
        let line = event(&Update::Error(Problem::new(ProblemCode::Storage, text))).to_string();
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["message"], text);
    }

    #[test]
    fn members_say_whether_they_are_online_and_presence_names_coming_back() {
        let event = event(&Update::Members {
            room: "lobby".parse().unwrap(),
            members: vec![Member {
                name: "bob".parse().unwrap(),
                fingerprint: None,
                trust: TrustLevel::Unknown,
                online: false,
            }],
        });
        assert_eq!(event["members"][0]["online"], false);
        for (change, word) in [
            (PresenceChange::Disconnected, "disconnected"),
            (PresenceChange::Connected, "connected"),
        ] {
            let event = super::event(&Update::Presence {
                room: "lobby".parse().unwrap(),
                name: "bob".parse().unwrap(),
                change,
            });
            assert_eq!(event["change"], word);
        }
    }
}
