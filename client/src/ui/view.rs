//! What a front end knows of its session, kept from the session's updates
//! in one place for both front ends: the rooms joined and the current
//! conversation, each room's members, every user's trust and key as last
//! reported, the safety numbers shown, this user's name and the names that
//! look like others. [`View::apply`] takes an update, keeps what it says
//! and returns the [`Said`]s a user reads for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sotto_crypto::Fingerprint;
use sotto_proto::{RoomName, UserKey, UserName};

use super::words::{self, Place, Said, Tone};
use super::{Context, SeenFile};
use crate::contacts::KeyEvent;
use crate::session::{Chat, Connection, Member, Message, TrustLevel, Update};

/// A front end's knowledge of its session.
#[derive(Clone, Debug)]
pub struct View {
    /// What typed lines are resolved in: the current conversation, the
    /// rooms joined, the safety numbers shown, this user's fingerprint,
    /// whether a line is held for the first room. The front end moves
    /// `current` as the user switches conversations.
    pub context: Context,
    /// `host:port` of the relay, for the connection's words.
    relay: String,
    members: BTreeMap<RoomName, Vec<Member>>,
    trust: HashMap<UserKey, (TrustLevel, Option<Fingerprint>)>,
    /// This user, as the relay registered them.
    me: Option<UserName>,
    /// New contacts whose names look like known ones: the look-alikes.
    lookalikes: HashMap<UserKey, Vec<UserName>>,
    /// The new key of a verified contact whose key changed, until the
    /// user decides.
    offered: HashMap<UserKey, Fingerprint>,
    /// The rooms whose messages go to verified members only.
    verified_only: BTreeSet<RoomName>,
    /// Each chat's disappearing-message timer in seconds (absent: none).
    timers: HashMap<Chat, u64>,
}

impl View {
    /// Nothing known yet of a session with the relay at `relay`
    /// (`host:port`) for the user whose key has `fingerprint`. With
    /// `holds`, a plain line typed before any room is joined is held for
    /// the first room ([`super::Local::Hold`]); without, it is refused.
    pub fn new(relay: impl Into<String>, fingerprint: Option<Fingerprint>, holds: bool) -> Self {
        Self {
            context: Context {
                fingerprint,
                hold: holds,
                ..Context::default()
            },
            relay: relay.into(),
            members: BTreeMap::new(),
            trust: HashMap::new(),
            me: None,
            lookalikes: HashMap::new(),
            offered: HashMap::new(),
            verified_only: BTreeSet::new(),
            timers: HashMap::new(),
        }
    }

    /// The members of `room` as last reported (none for a room not
    /// joined).
    pub fn members(&self, room: &RoomName) -> &[Member] {
        self.members
            .get(room)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The rooms whose members include `name`.
    pub fn rooms_with(&self, name: &UserName) -> Vec<RoomName> {
        self.members
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m.name.same_as(name)))
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// `name`'s trust and pinned key as last reported (`Unknown` and no
    /// key for a name never heard of).
    pub fn trust_of(&self, name: &UserName) -> (TrustLevel, Option<Fingerprint>) {
        self.trust
            .get(&name.key())
            .copied()
            .unwrap_or((TrustLevel::Unknown, None))
    }

    /// This user, once connected (as the relay registered them).
    pub fn me(&self) -> Option<&UserName> {
        self.me.as_ref()
    }

    /// Whether `name` is this user.
    pub fn is_me(&self, name: &UserName) -> bool {
        self.me.as_ref().is_some_and(|me| me.same_as(name))
    }

    /// The known names `name` looks like, if it was pinned as a look-alike.
    pub fn lookalikes_of(&self, name: &UserName) -> Option<&[UserName]> {
        self.lookalikes.get(&name.key()).map(Vec::as_slice)
    }

    /// Whether `name` looks like another contact, or another contact
    /// looks like it.
    pub fn is_lookalike(&self, name: &UserName) -> bool {
        self.lookalikes.contains_key(&name.key())
            || self
                .lookalikes
                .values()
                .flatten()
                .any(|other| other.same_as(name))
    }

    /// `name` as listed: `(you)` or its trust, and what it looks like.
    pub fn label(&self, name: &UserName) -> String {
        let (trust, fingerprint) = self.trust_of(name);
        words::label(
            name,
            self.is_me(name),
            trust,
            self.lookalikes_of(name),
            fingerprint,
        )
    }

    /// A member as listed: its [`label`](Self::label), then
    /// [`words::OFFLINE`] for a member not connected now (`bob [verified]
    /// (offline)`).
    pub fn member_label(&self, member: &Member) -> String {
        let mut label = self.label(&member.name);
        if !member.online {
            label.push(' ');
            label.push_str(words::OFFLINE);
        }
        label
    }

    /// The words for the connection's state (see [`words::connection`]),
    /// `left` being what remains of the wait before reconnecting.
    pub fn connection(&self, state: &Connection, left: Duration) -> (Tone, String) {
        words::connection(state, &self.relay, left)
    }

    /// Whether `room`'s messages go to verified members only (as this
    /// session last set or reported it).
    pub fn is_verified_only(&self, room: &RoomName) -> bool {
        self.verified_only.contains(room)
    }

    /// `chat`'s disappearing-message timer in seconds, as last reported (0:
    /// none).
    pub fn timer(&self, chat: &Chat) -> u64 {
        self.timers.get(chat).copied().unwrap_or(0)
    }

    /// Records `name`'s trust (and key, if known), in the member lists
    /// too.
    fn set_trust(&mut self, name: &UserName, trust: TrustLevel, key: Option<Fingerprint>) {
        let entry = self.trust.entry(name.key()).or_insert((trust, key));
        entry.0 = trust;
        if key.is_some() {
            entry.1 = key;
        }
        for member in self.members.values_mut().flatten() {
            if member.name.same_as(name) {
                member.trust = trust;
                if key.is_some() {
                    member.fingerprint = key;
                }
            }
        }
    }

    /// A file message's number for `/save` (from 1), if it is one.
    pub fn file_number(&self, message: &Message) -> Option<usize> {
        message.file.as_ref()?;
        let id = message.id();
        self.context
            .files
            .iter()
            .position(|f| f.id == id && f.chat == message.chat)
            .map(|n| n + 1)
    }

    fn saw_file(&mut self, message: &Message) {
        if let Some(file) = &message.file
            && self.file_number(message).is_none()
        {
            self.context.files.push(SeenFile {
                chat: message.chat.clone(),
                id: message.id(),
                name: crate::session::safe_file_name(&file.name),
            });
        }
    }

    /// Keeps what `update` says and returns what the user reads for it
    /// (nothing for a message: each front end draws messages its own
    /// way). A front end shows the `Said`s of the updates it has no
    /// better way to show.
    pub fn apply(&mut self, update: &Update) -> Vec<Said> {
        let said = match update {
            Update::Ready(_) | Update::Delivery { .. } | Update::Queued(_) => {
                return Vec::new();
            }
            Update::Message(message) => {
                self.saw_file(message);
                return Vec::new();
            }
            Update::History { messages, .. } => {
                for message in messages {
                    self.saw_file(message);
                }
                for message in messages.iter().filter(|m| !m.outgoing) {
                    self.trust
                        .entry(message.from.key())
                        .or_insert((message.trust, Some(message.fingerprint)));
                }
                return Vec::new();
            }
            Update::Connection(state) => {
                let after = match state {
                    Connection::Connected { name } => {
                        self.me = Some(name.clone());
                        Duration::ZERO
                    }
                    Connection::Reconnecting { after, .. } => *after,
                    Connection::Connecting | Connection::Failed { .. } => Duration::ZERO,
                };
                let (tone, text) = self.connection(state, after);
                Said {
                    tone,
                    place: Place::General,
                    text,
                    names_place: false,
                }
            }
            Update::Joined { room } => {
                self.context.rooms.insert(room.clone());
                self.context.hold = false;
                if self.context.current.is_none() {
                    self.context.current = Some(Chat::Room(room.clone()));
                }
                words::membership(room, true)
            }
            Update::Left { room } => {
                self.context.rooms.remove(room);
                self.members.remove(room);
                if self.context.current.as_ref() == Some(&Chat::Room(room.clone())) {
                    self.context.current = self.context.rooms.first().cloned().map(Chat::Room);
                }
                words::membership(room, false)
            }
            Update::Members { room, members } => {
                for member in members {
                    if !self.is_me(&member.name) {
                        self.set_trust(&member.name, member.trust, member.fingerprint);
                    }
                }
                let first = !self.members.contains_key(room);
                self.members.insert(room.clone(), members.clone());
                if !first {
                    return Vec::new();
                }
                let labels: Vec<String> = members.iter().map(|m| self.member_label(m)).collect();
                words::members(room, &labels)
            }
            Update::Presence { room, name, change } => Said {
                tone: Tone::Info,
                place: Place::Chat(Chat::Room(room.clone())),
                text: words::presence(std::slice::from_ref(name), None, 1, *change, room),
                names_place: true,
            },
            Update::Missing { chat, from, count } => words::missing(chat, from, *count),
            Update::Rejected { chat, from } => words::rejected(chat.as_ref(), from),
            Update::NotForYou { chat, from } => words::not_for_you(chat, from),
            Update::Key(event) => {
                self.key_event(event);
                words::key_event(event)
            }
            Update::Trust { name, trust } => {
                // A decision on a changed key: the new key is the one now
                // trusted.
                let offered = self.offered.remove(&name.key());
                self.set_trust(name, *trust, offered);
                words::trust(name, *trust)
            }
            Update::SafetyNumber {
                name,
                fingerprint,
                safety_number,
                trust,
            } => {
                self.context.shown.insert(name.key(), safety_number.clone());
                self.set_trust(name, *trust, Some(*fingerprint));
                words::safety_number(name, fingerprint, safety_number, *trust)
            }
            Update::NotSentTo {
                chat,
                names,
                reason,
            } => words::not_sent_to(chat, names, reason),
            Update::RosterMismatch { room, from } => words::roster_mismatch(room, from),
            Update::Users(users) => {
                let lines: Vec<String> = users
                    .iter()
                    .map(|user| {
                        let rooms: Vec<String> =
                            user.rooms.iter().map(|room| format!("#{room}")).collect();
                        let label = words::label(
                            &user.name,
                            self.is_me(&user.name),
                            user.trust,
                            self.lookalikes_of(&user.name),
                            None,
                        );
                        let rooms = if rooms.is_empty() {
                            "no room".to_owned()
                        } else {
                            rooms.join(", ")
                        };
                        format!("{label} in {rooms}")
                    })
                    .collect();
                words::users(&lines)
            }
            Update::Rooms(rooms) => words::rooms(rooms),
            Update::VerifiedOnly { room, on } => {
                if *on {
                    self.verified_only.insert(room.clone());
                } else {
                    self.verified_only.remove(room);
                }
                words::verified_only(room, *on)
            }
            Update::Error(problem) => words::error(&problem.message),
            Update::RelayKeyMoved(moved) => words::info(moved),
            Update::Timer { chat, seconds, by } => {
                if *seconds == 0 {
                    self.timers.remove(chat);
                } else {
                    self.timers.insert(chat.clone(), *seconds);
                }
                let me = by.as_ref().is_some_and(|by| self.is_me(by));
                words::timer(chat, *seconds, by.as_ref(), me)
            }
            Update::Transfer(transfer) => return words::transfer(transfer).into_iter().collect(),
            Update::Expired { chat, ids, queued } => {
                return words::expired(chat, ids.len(), queued.len())
                    .into_iter()
                    .collect();
            }
        };
        vec![said]
    }

    fn key_event(&mut self, event: &KeyEvent) {
        match event {
            KeyEvent::Pinned {
                name,
                fingerprint,
                lookalikes,
            } => {
                self.trust
                    .entry(name.key())
                    .or_insert((TrustLevel::Unverified, Some(*fingerprint)));
                if !lookalikes.is_empty() {
                    self.lookalikes.insert(name.key(), lookalikes.clone());
                }
            }
            KeyEvent::Changed { name, current, .. } => {
                self.set_trust(name, TrustLevel::Unverified, Some(*current));
            }
            KeyEvent::ChangedVerified { name, offered, .. } => {
                self.set_trust(name, TrustLevel::Changed, None);
                self.offered.insert(name.key(), *offered);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sotto_crypto::SafetyNumber;

    use super::*;
    use crate::session::{Connection, PresenceChange};
    use crate::ui::{Local, Place, Resolved, resolve};

    fn room(name: &str) -> RoomName {
        name.parse().unwrap()
    }

    fn user(name: &str) -> UserName {
        name.parse().unwrap()
    }

    fn member(name: &str, trust: TrustLevel, key: u8) -> Member {
        Member {
            name: name.parse().unwrap(),
            fingerprint: Some(Fingerprint([key; 32])),
            trust,
            online: true,
        }
    }

    fn connected(view: &mut View, name: &str) {
        view.apply(&Update::Connection(Connection::Connected {
            name: name.parse().unwrap(),
        }));
    }

    fn texts(said: &[Said]) -> Vec<&str> {
        said.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn rooms_joined_and_left_move_the_current_room_and_end_holding() {
        let mut view = View::new("relay.example:7447", None, true);
        assert!(view.context.hold);
        let said = view.apply(&Update::Joined {
            room: room("lobby"),
        });
        assert_eq!(texts(&said), ["You joined #lobby"]);
        assert_eq!(said[0].place, Place::Chat(Chat::Room(room("lobby"))));
        assert!(said[0].names_place);
        assert!(!view.context.hold, "held lines go to the first room");
        assert_eq!(view.context.current, Some(Chat::Room(room("lobby"))));
        view.apply(&Update::Joined { room: room("dev") });
        assert_eq!(view.context.current, Some(Chat::Room(room("lobby"))));
        view.apply(&Update::Left {
            room: room("lobby"),
        });
        assert_eq!(view.context.current, Some(Chat::Room(room("dev"))));
        view.apply(&Update::Left { room: room("dev") });
        assert_eq!(view.context.current, None);
        assert!(
            !view.context.hold,
            "once rooms are known, no room is a refusal"
        );
    }

    #[test]
    fn members_are_listed_once_and_their_trust_kept() {
        let mut view = View::new("relay.example:7447", None, false);
        connected(&mut view, "Alice");
        let members = vec![
            member("alice", TrustLevel::Unverified, 1),
            member("bob", TrustLevel::Verified, 2),
        ];
        let said = view.apply(&Update::Members {
            room: room("lobby"),
            members: members.clone(),
        });
        assert_eq!(texts(&said), ["In #lobby: alice (you), bob [verified]"]);
        assert_eq!(
            view.trust_of(&user("BOB")),
            (TrustLevel::Verified, Some(Fingerprint([2; 32])))
        );
        assert!(view.is_me(&user("alice")));
        assert_eq!(view.rooms_with(&user("Bob")), [room("lobby")]);
        // Later lists replace the members silently.
        let said = view.apply(&Update::Members {
            room: room("lobby"),
            members: members[..1].to_vec(),
        });
        assert!(said.is_empty());
        assert_eq!(view.members(&room("lobby")).len(), 1);
        assert!(view.rooms_with(&user("bob")).is_empty());
    }

    #[test]
    fn a_safety_number_shown_is_the_one_yes_verifies() {
        let mut view = View::new("relay.example:7447", None, false);
        let number = SafetyNumber::new(&Fingerprint([1; 32]), &Fingerprint([2; 32]));
        let said = view.apply(&Update::SafetyNumber {
            name: "bob".parse().unwrap(),
            fingerprint: Fingerprint([2; 32]),
            safety_number: number.clone(),
            trust: TrustLevel::Unverified,
        });
        let text = &said[0].text;
        assert!(text.starts_with("bob [unverified]: key "), "{text}");
        assert!(text.ends_with("if it matches: /verify bob yes"), "{text}");
        assert_eq!(
            resolve("/verify BOB yes", &view.context),
            Ok(Resolved::Command(crate::session::Command::Verify {
                name: "BOB".parse().unwrap(),
                safety_number: number.digits().to_owned(),
            }))
        );
        assert!(matches!(
            resolve("/fingerprint", &view.context),
            Err(refusal) if refusal.contains("not known")
        ));
        let mut with_key = View::new("relay.example:7447", Some(Fingerprint([9; 32])), false);
        assert_eq!(
            resolve("/fingerprint", &with_key.context),
            Ok(Resolved::Local(Local::Fingerprint(Fingerprint([9; 32]))))
        );
        with_key.apply(&Update::Error(crate::session::Problem::new(
            crate::session::ProblemCode::BadCommand,
            "x",
        )));
    }

    #[test]
    fn key_events_set_trust_and_flag_look_alikes_both_ways() {
        let mut view = View::new("relay.example:7447", None, false);
        let said = view.apply(&Update::Key(KeyEvent::Pinned {
            name: "b0b".parse().unwrap(),
            fingerprint: Fingerprint([3; 32]),
            lookalikes: vec!["bob".parse().unwrap()],
        }));
        assert_eq!(said[0].tone, Tone::Danger);
        assert_eq!(said[0].place, Place::With(user("b0b")));
        assert!(said[0].text.starts_with("Careful: the new contact b0b"));
        assert!(view.is_lookalike(&user("b0b")) && view.is_lookalike(&user("BOB")));
        assert!(!view.is_lookalike(&user("carol")));
        assert!(view.label(&user("b0b")).contains("[looks like bob, key "));
        assert_eq!(view.trust_of(&user("b0b")).0, TrustLevel::Unverified);

        // A verified contact's key changes, then the user accepts it: the
        // new key is the one trusted.
        view.apply(&Update::Key(KeyEvent::ChangedVerified {
            name: "carol".parse().unwrap(),
            pinned: Fingerprint([4; 32]),
            offered: Fingerprint([5; 32]),
        }));
        assert_eq!(view.trust_of(&user("carol")).0, TrustLevel::Changed);
        let said = view.apply(&Update::Trust {
            name: "carol".parse().unwrap(),
            trust: TrustLevel::Unverified,
        });
        assert_eq!(
            texts(&said),
            ["You accepted carol's new key without verifying it"]
        );
        assert_eq!(
            view.trust_of(&user("carol")),
            (TrustLevel::Unverified, Some(Fingerprint([5; 32])))
        );
    }

    #[test]
    fn what_the_relay_or_a_peer_wrote_is_escaped_in_every_notice() {
        let mut view = View::new("relay.example:7447", None, false);
        let hostile = "\u{1b}]0;TITLE\u{7}\u{202e}\r\nsecond line";
        for update in [
            Update::Error(crate::session::Problem::new(
                crate::session::ProblemCode::Relay(sotto_proto::ErrorCode::Internal),
                hostile,
            )),
            Update::Connection(Connection::Failed {
                reason: hostile.to_owned(),
            }),
            Update::Connection(Connection::Reconnecting {
                after: Duration::from_millis(500),
                reason: hostile.to_owned(),
            }),
            Update::NotSentTo {
                chat: Chat::Room(room("lobby")),
                names: Vec::new(),
                reason: hostile.to_owned(),
            },
        ] {
            for said in view.apply(&update) {
                assert!(
                    !said.text.chars().any(|c| c.is_control() || c == '\u{202e}'),
                    "{:?}",
                    said.text
                );
                assert!(said.text.contains(r"\e]0;TITLE\x07"), "{:?}", said.text);
            }
        }
    }

    #[test]
    fn notices_that_do_not_name_their_conversation_are_qualified_in_one_stream() {
        let mut view = View::new("relay.example:7447", None, false);
        let said = view.apply(&Update::Missing {
            chat: Chat::Room(room("lobby")),
            from: "bob".parse().unwrap(),
            count: 2,
        });
        assert_eq!(
            said[0].qualified(),
            "#lobby: 2 messages from bob missing: lost, or withheld by the relay"
        );
        let said = view.apply(&Update::Presence {
            room: room("lobby"),
            name: "bob".parse().unwrap(),
            change: PresenceChange::Disconnected,
        });
        assert_eq!(said[0].qualified(), "bob went offline in #lobby");
        let (tone, text) = view.connection(
            &Connection::Reconnecting {
                after: Duration::from_secs(16),
                reason: "gone".to_owned(),
            },
            Duration::from_millis(15_200),
        );
        assert_eq!(
            (tone, text.as_str()),
            (
                Tone::Warning,
                "Connection lost (gone): reconnecting in 16 s"
            )
        );
    }

    #[test]
    fn an_offline_member_is_listed_as_offline_and_its_return_is_said() {
        let mut view = View::new("relay.example:7447", None, false);
        connected(&mut view, "alice");
        let mut bob = member("bob", TrustLevel::Verified, 2);
        bob.online = false;
        let said = view.apply(&Update::Members {
            room: room("lobby"),
            members: vec![member("alice", TrustLevel::Verified, 1), bob.clone()],
        });
        assert_eq!(
            texts(&said),
            ["In #lobby: alice (you), bob [verified] (offline)"]
        );
        assert_eq!(view.member_label(&bob), "bob [verified] (offline)");
        // Offline is still a member: still in the room.
        assert_eq!(view.rooms_with(&user("bob")), [room("lobby")]);
        let said = view.apply(&Update::Presence {
            room: room("lobby"),
            name: user("bob"),
            change: PresenceChange::Connected,
        });
        assert_eq!(texts(&said), ["bob is back in #lobby"]);
        let names = [user("bob"), user("carol")];
        assert_eq!(
            words::presence(&names, None, 2, PresenceChange::Connected, &room("lobby")),
            "bob and carol are back in #lobby"
        );
        assert_eq!(
            words::presence(
                &names,
                None,
                2,
                PresenceChange::Disconnected,
                &room("lobby")
            ),
            "bob and carol went offline in #lobby"
        );
    }

    #[test]
    fn presence_runs_name_the_first_two_and_the_newest() {
        let names = [user("bob"), user("carol")];
        let lobby = room("lobby");
        let joined = PresenceChange::Joined;
        assert_eq!(
            words::presence(&names[..1], None, 1, joined, &lobby),
            "bob joined #lobby"
        );
        assert_eq!(
            words::presence(&names, None, 2, joined, &lobby),
            "bob and carol joined #lobby"
        );
        assert_eq!(
            words::presence(&names, Some(&user("dave")), 3, joined, &lobby),
            "bob, carol and dave joined #lobby"
        );
        assert_eq!(
            words::presence(&names, Some(&user("zoe")), 15, PresenceChange::Left, &lobby),
            "bob, carol, 12 others and zoe left #lobby"
        );
    }
}
