//! The session state machine: everything between relay frames and what the
//! user sees, with no I/O but the encrypted store. The rules it applies are
//! those of docs/protocol.md, sections 14.3 and 17-19.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sotto_crypto::{
    Announcement, Arrival, Conversation, Fingerprint, Identity, MessageBody, PeerBody,
    PublicIdentity, ReplayWindow, SendingSession, SequenceCounter, SessionId, roster_digest,
};
use sotto_proto::{
    ClientFrame, Destination, PresenceEvent, RelayFrame, RoomName, Route, Slot, UserName,
};

use super::{
    Chat, Command, Member, Message, OnlineUser, PresenceChange, TrustLevel, Update, lower,
};
use crate::account::Account;
use crate::contacts::{Blocked, Contacts, KeyEvent, Trust};
use crate::store::{
    Inbound, Position, Receiving, RoomSettings, Store, StoreError, StoredEntry, VaultCounter,
};

/// Bounds on what the session keeps and accepts.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Session announcements accepted from one sender in a burst.
    pub announcement_burst: u32,
    /// ...refilled at one per this interval.
    pub announcement_refill: Duration,
    /// Messages kept while waiting for the announcement that opens them.
    pub held_messages: usize,
    /// How long such a message waits before it is given up.
    pub held_for: Duration,
    /// Receiving sessions kept per sender and conversation (older ones are
    /// forgotten, and their late messages with them).
    pub kept_sessions: usize,
    /// A message's member set is compared with the rosters this client saw
    /// this recently (joins and leaves race with messages).
    pub roster_grace: Duration,
    /// Messages queued while disconnected.
    pub outbox: usize,
    /// Time limits on every network step (connect, TLS handshake, the
    /// relay's answers, writes) and the dead-connection bound.
    pub network: crate::tls::Timeouts,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            announcement_burst: 20,
            announcement_refill: Duration::from_secs(3),
            held_messages: 512,
            held_for: Duration::from_secs(120),
            kept_sessions: 4,
            roster_grace: Duration::from_secs(10),
            outbox: 256,
            network: crate::tls::Timeouts::default(),
        }
    }
}

/// What the engine wants done: frames for the relay, updates for the UI.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub(crate) frames: Vec<ClientFrame>,
    pub(crate) updates: Vec<Update>,
}

impl Out {
    fn update(&mut self, update: Update) {
        self.updates.push(update);
    }

    fn error(&mut self, message: impl Into<String>) {
        self.updates.push(Update::Error(message.into()));
    }
}

/// Whether to keep going after a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Quit,
}

/// A delivery kept for later: waiting for a key lookup, a trust decision or
/// the announcement of its session.
#[derive(Clone, Debug)]
struct Delivery {
    delivery: u64,
    from: UserName,
    to: Destination,
    body: Bytes,
    slot: Option<Bytes>,
}

#[derive(Debug)]
struct Held {
    delivery: Delivery,
    sender: Fingerprint,
    session: SessionId,
    since: Instant,
}

/// Work waiting for a peer's key (a `LookupKey` is in flight).
#[derive(Debug, Default)]
struct Awaiting {
    deliveries: Vec<Delivery>,
    texts: Vec<String>,
    show_safety_number: bool,
}

#[derive(Debug)]
struct RosterEntry {
    name: UserName,
}

#[derive(Debug, Default)]
struct Room {
    members: BTreeMap<UserName, RosterEntry>,
    settings: RoomSettings,
    /// Digests of recent member sets, with when they stopped being current.
    views: VecDeque<([u8; 32], Instant)>,
}

struct Outbound {
    epoch: u32,
    counter: SequenceCounter<VaultCounter>,
    session: Option<SendingSession>,
}

/// A token bucket per announcing sender.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Whether a delivery was dealt with (stored or dropped: acknowledge it) or
/// kept for later.
#[derive(Debug, PartialEq, Eq)]
enum Handled {
    Done,
    Kept,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_secs() -> u64 {
    now_ms() / 1000
}

fn trust_level(trust: &Trust) -> TrustLevel {
    match trust {
        Trust::Unverified => TrustLevel::Unverified,
        Trust::Verified => TrustLevel::Verified,
        Trust::Changed { .. } => TrustLevel::Changed,
    }
}

/// The state machine.
pub(crate) struct Engine {
    identity: Arc<Identity>,
    me: Fingerprint,
    name: UserName,
    store: Store,
    contacts: Contacts,
    limits: SessionLimits,
    connected: bool,
    rooms: BTreeMap<RoomName, Room>,
    wanted: BTreeSet<RoomName>,
    outbound: HashMap<Conversation, Outbound>,
    inbound: HashMap<(Fingerprint, Conversation), Inbound>,
    awaiting_key: BTreeMap<UserName, Awaiting>,
    awaiting_trust: BTreeMap<UserName, Vec<Delivery>>,
    held: VecDeque<Held>,
    buckets: HashMap<Fingerprint, Bucket>,
    arrival: u64,
    /// Per chat and sender: sequence number -> arrival number, to place
    /// late messages (bounded to the replay window).
    placed: HashMap<(Chat, Fingerprint), BTreeMap<u64, u64>>,
    warned: HashSet<(Fingerprint, SessionId)>,
    outbox: VecDeque<(Chat, String)>,
    sends: BTreeMap<u64, Chat>,
    next_route: u64,
    /// Set by `Quit` while messages still wait to be sent.
    quitting: Option<Instant>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("rooms", &self.rooms.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads the account's state; returns the engine and the stored
    /// history, one update per chat.
    pub(crate) fn new(
        account: &Account,
        first_rooms: &[RoomName],
        limits: SessionLimits,
    ) -> Result<(Self, Vec<Update>), StoreError> {
        let store = account.store().clone();
        let contacts = store.contacts()?;
        let wanted = match store.joined_rooms()? {
            Some(rooms) => rooms.iter().filter_map(|r| r.parse().ok()).collect(),
            None => {
                // First run: these rooms are the user's rooms from now on.
                let rooms: Vec<String> = first_rooms.iter().map(|r| r.to_string()).collect();
                store.set_joined_rooms(&rooms)?;
                first_rooms.iter().cloned().collect()
            }
        };
        let mut engine = Self {
            identity: account.identity().clone(),
            me: account.identity().fingerprint(),
            name: account.name().clone(),
            store,
            contacts,
            limits,
            connected: false,
            rooms: BTreeMap::new(),
            wanted,
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            awaiting_key: BTreeMap::new(),
            awaiting_trust: BTreeMap::new(),
            held: VecDeque::new(),
            buckets: HashMap::new(),
            arrival: 0,
            placed: HashMap::new(),
            warned: HashSet::new(),
            outbox: VecDeque::new(),
            sends: BTreeMap::new(),
            next_route: 1,
            quitting: None,
        };
        let (entries, last) = engine.store.history()?;
        engine.arrival = last;
        let mut chats: BTreeMap<Chat, Vec<Message>> = BTreeMap::new();
        for (position, entry) in entries {
            let late = position.rank != Position::IN_ORDER;
            if !late {
                engine.remember_place(&entry.chat, entry.fingerprint, entry.seq, position.anchor);
            }
            let message = engine.message_of(entry, position);
            chats.entry(message.chat.clone()).or_default().push(message);
        }
        let mut updates: Vec<Update> = chats
            .into_iter()
            .map(|(chat, messages)| Update::History { chat, messages })
            .collect();
        // A key change the user has not decided on yet is still pending:
        // say so again, so a new UI blocks on it as the last one did (P6).
        for contact in engine.contacts.iter() {
            if let Trust::Changed { offered } = &contact.trust {
                updates.push(Update::Key(KeyEvent::ChangedVerified {
                    name: contact.name.clone(),
                    pinned: contact.identity.fingerprint(),
                    offered: offered.fingerprint(),
                }));
            }
        }
        Ok((engine, updates))
    }

    fn message_of(&self, entry: StoredEntry, position: Position) -> Message {
        let trust = if entry.outgoing {
            TrustLevel::Verified
        } else {
            // The trust of the key it came from: a message from a key that
            // is no longer pinned is not shown with the new key's trust.
            match self.contacts.get(&entry.from) {
                Some(c) if c.identity.fingerprint() == entry.fingerprint => trust_level(&c.trust),
                Some(_) | None => TrustLevel::Unverified,
            }
        };
        Message {
            chat: entry.chat,
            from: entry.from,
            fingerprint: entry.fingerprint,
            trust,
            outgoing: entry.outgoing,
            seq: entry.seq,
            sent_at_ms: entry.sent_at_ms,
            received_at_ms: entry.received_at_ms,
            late: position.rank != Position::IN_ORDER,
            position: (position.anchor, position.rank),
            text: entry.text,
        }
    }

    fn trust_of(&self, name: &str) -> TrustLevel {
        self.contacts
            .get(name)
            .map_or(TrustLevel::Unknown, |c| trust_level(&c.trust))
    }

    fn is_me(&self, name: &UserName) -> bool {
        name.as_str().eq_ignore_ascii_case(self.name.as_str())
    }

    fn route_id(&mut self) -> u64 {
        let id = self.next_route;
        self.next_route = self.next_route.wrapping_add(1).max(1);
        id
    }

    // ----- connection lifecycle -------------------------------------------

    /// The relay registered us: join the rooms we want to be in and send
    /// what waited for the connection.
    pub(crate) fn on_registered(&mut self, name: UserName, out: &mut Out) {
        self.connected = true;
        self.name = name;
        for room in &self.wanted {
            out.frames.push(ClientFrame::Join { room: room.clone() });
        }
        let waiting: Vec<(Chat, String)> = self.outbox.drain(..).collect();
        for (chat, text) in waiting {
            match &chat {
                // Rooms are flushed when `Joined` confirms membership.
                Chat::Room(_) => self.outbox.push_back((chat, text)),
                Chat::Direct(_) => self.send_text(chat, text, out),
            }
        }
    }

    /// The connection ended: membership ends with it (the relay forgets it
    /// too), and stored deliveries not yet acknowledged will come again.
    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
        self.rooms.clear();
        self.held.retain(|h| h.delivery.delivery == 0);
        for awaiting in self.awaiting_key.values_mut() {
            awaiting.deliveries.retain(|d| d.delivery == 0);
        }
        for parked in self.awaiting_trust.values_mut() {
            parked.retain(|d| d.delivery == 0);
        }
        self.sends.clear();
    }

    /// Persists exactly where each counter stands (clean shutdown).
    pub(crate) fn shutdown(&mut self) {
        for outbound in self.outbound.values_mut() {
            let _ = outbound.counter.checkpoint();
        }
    }

    /// Periodic housekeeping: gives up messages whose announcement never came.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Out) {
        while let Some(held) = self.held.front() {
            if now.duration_since(held.since) < self.limits.held_for {
                break;
            }
            if let Some(held) = self.held.pop_front() {
                let chat = self.chat_of(&held.delivery);
                out.update(Update::Rejected {
                    chat,
                    from: held.delivery.from.to_string(),
                });
                Self::ack(&held.delivery, out);
            }
        }
        let grace = self.limits.roster_grace;
        for room in self.rooms.values_mut() {
            room.views
                .retain(|(_, since)| now.duration_since(*since) < grace);
        }
    }

    fn ack(delivery: &Delivery, out: &mut Out) {
        if delivery.delivery != 0 {
            out.frames.push(ClientFrame::Ack {
                delivery: delivery.delivery,
            });
        }
    }

    // ----- frames from the relay ------------------------------------------

    pub(crate) fn handle_frame(&mut self, frame: RelayFrame, out: &mut Out) {
        match frame {
            RelayFrame::Joined { room, members } => self.on_joined(room, members, out),
            RelayFrame::Left { room } => {
                self.rooms.remove(&room);
                self.wanted.remove(&room);
                self.save_wanted(out);
                out.update(Update::Left { room });
            }
            RelayFrame::Presence {
                room,
                user,
                event,
                identity,
            } => self.on_presence(room, user, event, identity, out),
            RelayFrame::Rooms { rooms } => out.update(Update::Rooms(
                rooms
                    .into_iter()
                    .map(|r| (r.name.to_string(), r.members))
                    .collect(),
            )),
            RelayFrame::Users { users } => {
                let users = users
                    .into_iter()
                    .map(|u| OnlineUser {
                        trust: if self.is_me(&u.name) {
                            TrustLevel::Verified
                        } else {
                            self.trust_of(u.name.as_str())
                        },
                        name: u.name.to_string(),
                        rooms: u.rooms.into_iter().map(String::from).collect(),
                    })
                    .collect();
                out.update(Update::Users(users));
            }
            RelayFrame::Key { name, identity } => self.on_key(name, identity, out),
            RelayFrame::Deliver {
                delivery,
                from,
                to,
                body,
                slot,
            } => {
                self.deliver(
                    Delivery {
                        delivery,
                        from,
                        to,
                        body,
                        slot,
                    },
                    out,
                );
            }
            RelayFrame::Sent { id } => {
                self.sends.remove(&id);
            }
            RelayFrame::Error { id, code, message } => {
                let chat = id.and_then(|id| self.sends.remove(&id));
                match chat {
                    Some(chat) => out.error(format!("{chat}: not delivered: {message} ({code:?})")),
                    None => out.error(format!("relay: {message} ({code:?})")),
                }
            }
            RelayFrame::Ping { nonce } => out.frames.push(ClientFrame::Pong { nonce }),
            // Registration and shutdown are the connection's business.
            RelayFrame::Pong { .. }
            | RelayFrame::Challenge { .. }
            | RelayFrame::Registered { .. }
            | RelayFrame::KeyHandover { .. }
            | RelayFrame::ShuttingDown => {}
        }
    }

    /// Pins `identity` (bytes from the relay, a hint) for `name` on first
    /// sight; reports any change.
    fn observe(&mut self, name: &UserName, identity: &[u8], out: &mut Out) -> bool {
        if self.is_me(name) {
            return false;
        }
        let Ok(identity) = PublicIdentity::from_bytes(identity) else {
            out.error(format!("the relay sent an invalid key for {name}"));
            return false;
        };
        if let Some(event) = self.contacts.observe(name.as_str(), &identity) {
            self.save_contacts(out);
            out.update(Update::Key(event));
        }
        true
    }

    fn save_contacts(&self, out: &mut Out) {
        if let Err(e) = self.store.set_contacts(&self.contacts) {
            out.error(format!("could not save contacts: {e}"));
        }
    }

    fn save_wanted(&self, out: &mut Out) {
        let rooms: Vec<String> = self.wanted.iter().map(|r| r.to_string()).collect();
        if let Err(e) = self.store.set_joined_rooms(&rooms) {
            out.error(format!("could not save the room list: {e}"));
        }
    }

    fn on_joined(&mut self, room: RoomName, members: Vec<sotto_proto::Member>, out: &mut Out) {
        let settings = match self.store.room_settings(room.as_str()) {
            Ok(settings) => settings,
            Err(e) => {
                out.error(format!("could not read the settings of #{room}: {e}"));
                RoomSettings::default()
            }
        };
        let verified_only = settings.verified_only;
        let mut entry = Room {
            settings,
            ..Room::default()
        };
        let mut names = Vec::new();
        for member in members {
            if self.observe(&member.name, &member.identity, out) {
                names.push(member.name.clone());
            }
            entry
                .members
                .insert(lower(&member.name), RosterEntry { name: member.name });
        }
        self.retire_view(&room, Instant::now());
        if let Some(previous) = self.rooms.insert(room.clone(), entry)
            && let Some(current) = self.rooms.get_mut(&room)
        {
            current.views = previous.views;
        }
        if self.wanted.insert(room.clone()) {
            self.save_wanted(out);
        }
        out.update(Update::Joined { room: room.clone() });
        if verified_only {
            // Kept from an earlier run: the UI shows it from the start.
            out.update(Update::VerifiedOnly {
                room: room.clone(),
                on: true,
            });
        }
        self.members_update(&room, out);
        for name in names {
            self.retry_key(&name, out);
        }
        let queued: Vec<(Chat, String)> = self.outbox.drain(..).collect();
        for (chat, text) in queued {
            if chat == Chat::Room(room.clone()) {
                self.send_text(chat, text, out);
            } else {
                self.outbox.push_back((chat, text));
            }
        }
    }

    fn on_presence(
        &mut self,
        room: RoomName,
        user: UserName,
        event: PresenceEvent,
        identity: Option<Bytes>,
        out: &mut Out,
    ) {
        self.retire_view(&room, Instant::now());
        let Some(entry) = self.rooms.get_mut(&room) else {
            return;
        };
        let change = match event {
            PresenceEvent::Joined => {
                entry
                    .members
                    .insert(lower(&user), RosterEntry { name: user.clone() });
                PresenceChange::Joined
            }
            PresenceEvent::Left => {
                entry.members.remove(&lower(&user));
                PresenceChange::Left
            }
            PresenceEvent::Disconnected => {
                entry.members.remove(&lower(&user));
                PresenceChange::Disconnected
            }
        };
        let pinned = match (&event, identity) {
            (PresenceEvent::Joined, Some(identity)) => self.observe(&user, &identity, out),
            _ => false,
        };
        out.update(Update::Presence {
            room: room.clone(),
            name: user.to_string(),
            change,
        });
        self.members_update(&room, out);
        if pinned {
            self.retry_key(&user, out);
        }
    }

    /// Remembers the member set that was current until `now`, so messages
    /// sealed just before a change still match (`roster_grace`).
    fn retire_view(&mut self, room: &RoomName, now: Instant) {
        let Some(digest) = self.rooms.get(room).map(|r| self.view_digest(r)) else {
            return;
        };
        if let Some(room) = self.rooms.get_mut(room) {
            room.views.push_back((digest, now));
            while room.views.len() > 16 {
                room.views.pop_front();
            }
        }
    }

    /// The roster digest (15.1) of the members this client sees in `room`
    /// with their pinned keys, itself included: what a message sealed to
    /// the same view commits to.
    fn view_digest(&self, room: &Room) -> [u8; 32] {
        let others = room
            .members
            .values()
            .filter(|m| !self.is_me(&m.name))
            .filter_map(|m| self.contacts.get(m.name.as_str()))
            .map(|c| c.identity.fingerprint());
        roster_digest(others.chain([self.me]))
    }

    fn members_update(&self, room: &RoomName, out: &mut Out) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        let members = entry
            .members
            .values()
            .map(|m| {
                if self.is_me(&m.name) {
                    Member {
                        name: m.name.to_string(),
                        fingerprint: Some(self.me),
                        trust: TrustLevel::Verified,
                    }
                } else {
                    let contact = self.contacts.get(m.name.as_str());
                    Member {
                        name: m.name.to_string(),
                        fingerprint: contact.map(|c| c.identity.fingerprint()),
                        trust: contact.map_or(TrustLevel::Unknown, |c| trust_level(&c.trust)),
                    }
                }
            })
            .collect();
        out.update(Update::Members {
            room: room.clone(),
            members,
        });
    }

    fn on_key(&mut self, name: UserName, identity: Option<Bytes>, out: &mut Out) {
        match identity {
            Some(identity) => {
                self.observe(&name, &identity, out);
                self.retry_key(&name, out);
            }
            None => {
                if let Some(awaiting) = self.awaiting_key.remove(&lower(&name)) {
                    if !awaiting.texts.is_empty() || awaiting.show_safety_number {
                        out.error(format!("there is no user called {name} on this relay"));
                    }
                    for delivery in awaiting.deliveries {
                        out.update(Update::Rejected {
                            chat: None,
                            from: delivery.from.to_string(),
                        });
                        Self::ack(&delivery, out);
                    }
                }
            }
        }
    }

    /// A key for `name` is now pinned: run what waited for it.
    fn retry_key(&mut self, name: &UserName, out: &mut Out) {
        let Some(awaiting) = self.awaiting_key.remove(&lower(name)) else {
            return;
        };
        if self.contacts.get(name.as_str()).is_none() {
            self.awaiting_key.insert(lower(name), awaiting);
            return;
        }
        if awaiting.show_safety_number {
            self.show_safety_number(name, out);
        }
        for delivery in awaiting.deliveries {
            self.deliver(delivery, out);
        }
        for text in awaiting.texts {
            self.send_text(Chat::Direct(name.clone()), text, out);
        }
    }

    /// Asks the relay for `name`'s key unless a lookup is already out.
    fn await_key(&mut self, name: &UserName, out: &mut Out) -> &mut Awaiting {
        let key = lower(name);
        if !self.awaiting_key.contains_key(&key) {
            out.frames
                .push(ClientFrame::LookupKey { name: name.clone() });
        }
        self.awaiting_key.entry(key).or_default()
    }

    // ----- deliveries -----------------------------------------------------

    fn chat_of(&self, delivery: &Delivery) -> Option<Chat> {
        match &delivery.to {
            Destination::Room(room) => Some(Chat::Room(room.clone())),
            Destination::User(user) if self.is_me(user) => {
                Some(Chat::Direct(self.display_name(&delivery.from)))
            }
            Destination::User(_) => None,
        }
    }

    /// The name as first pinned (the relay may show another letter case).
    fn display_name(&self, name: &UserName) -> UserName {
        self.contacts
            .get(name.as_str())
            .and_then(|c| c.name.parse().ok())
            .unwrap_or_else(|| name.clone())
    }

    fn reject(&self, delivery: &Delivery, out: &mut Out) -> Handled {
        out.update(Update::Rejected {
            chat: self.chat_of(delivery),
            from: delivery.from.to_string(),
        });
        Handled::Done
    }

    /// Handles a delivery (again, for one that waited) and acknowledges it
    /// once it is dealt with: stored, or dropped for good.
    fn deliver(&mut self, delivery: Delivery, out: &mut Out) {
        if self.on_delivery(&delivery, out) == Handled::Done {
            Self::ack(&delivery, out);
        }
    }

    fn on_delivery(&mut self, delivery: &Delivery, out: &mut Out) -> Handled {
        if self.is_me(&delivery.from) {
            // The relay never sends us our own frames: a reflection.
            return self.reject(delivery, out);
        }
        match PeerBody::decode(&delivery.body) {
            Ok(PeerBody::Announcement(announcement)) => {
                self.on_announcement(delivery, announcement, out)
            }
            Ok(PeerBody::Message(body)) => self.on_message(delivery, &body, out),
            Err(_) => self.reject(delivery, out),
        }
    }

    /// The sender's pinned key for a delivery that names `claimed`: the
    /// pinned key if it is `claimed`; `Err(Kept)` if the delivery now waits
    /// (for a key lookup, or for the user's decision on a changed key);
    /// `Err(Done)` if it must be rejected.
    fn sender_key(
        &mut self,
        delivery: &Delivery,
        claimed: Fingerprint,
        out: &mut Out,
    ) -> Result<PublicIdentity, Handled> {
        let Some(contact) = self.contacts.get(delivery.from.as_str()) else {
            let awaiting = self.await_key(&delivery.from, out);
            if awaiting.deliveries.len() >= 64 {
                return Err(self.reject(delivery, out));
            }
            awaiting.deliveries.push(delivery.clone());
            return Err(Handled::Kept);
        };
        if contact.identity.fingerprint() == claimed {
            return Ok(contact.identity.clone());
        }
        if let Trust::Changed { offered } = &contact.trust
            && offered.fingerprint() == claimed
        {
            let parked = self
                .awaiting_trust
                .entry(lower(&delivery.from))
                .or_default();
            if parked.len() < 256 {
                parked.push(delivery.clone());
                return Err(Handled::Kept);
            }
        }
        Err(self.reject(delivery, out))
    }

    /// Whether `from` belongs in `conversation` as this client sees it.
    fn admits(&self, conversation: &Conversation, from: &UserName, sender: Fingerprint) -> bool {
        match conversation {
            Conversation::Room(room) => room
                .parse::<RoomName>()
                .ok()
                .and_then(|room| self.rooms.get(&room))
                .is_some_and(|room| room.members.contains_key(&lower(from))),
            Conversation::Direct(..) => *conversation == Conversation::direct(sender, self.me),
        }
    }

    fn take_token(&mut self, sender: Fingerprint) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.limits.announcement_burst);
        let refill = self.limits.announcement_refill.as_secs_f64().max(1e-3);
        let bucket = self.buckets.entry(sender).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() / refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn inbound_mut(
        &mut self,
        sender: Fingerprint,
        conversation: &Conversation,
        out: &mut Out,
    ) -> &mut Inbound {
        let store = &self.store;
        self.inbound
            .entry((sender, conversation.clone()))
            .or_insert_with(|| {
                store.inbound(sender, conversation).unwrap_or_else(|e| {
                    out.error(format!("could not read stored sessions: {e}"));
                    Inbound::default()
                })
            })
    }

    fn on_announcement(
        &mut self,
        delivery: &Delivery,
        announcement: Announcement,
        out: &mut Out,
    ) -> Handled {
        // Announcements travel alone, to their one recipient.
        let to_me = matches!(&delivery.to, Destination::User(user) if self.is_me(user));
        let context = &announcement.context;
        if !to_me || context.recipient != self.me || delivery.slot.is_some() {
            return self.reject(delivery, out);
        }
        let sender = match self.sender_key(delivery, context.sender, out) {
            Ok(sender) => sender,
            Err(handled) => return handled,
        };
        let conversation = context.conversation.clone();
        if !self.admits(&conversation, &delivery.from, sender.fingerprint()) {
            return self.reject(delivery, out);
        }
        // No rollback, checked before any RSA work: a replayed or older
        // announcement is dropped without a word.
        let (epoch, session_id) = (context.epoch, context.session_id);
        let inbound = self.inbound_mut(sender.fingerprint(), &conversation, out);
        if epoch <= inbound.max_epoch
            || inbound
                .sessions
                .iter()
                .any(|r| r.session.context().session_id == session_id)
        {
            return Handled::Done;
        }
        if !self.take_token(sender.fingerprint()) {
            out.error(format!(
                "ignoring session keys from {}: too many in a short time",
                delivery.from
            ));
            return Handled::Done;
        }
        let Ok(session) = self
            .identity
            .accept(&mut rand::rng(), &announcement, &sender)
        else {
            return self.reject(delivery, out);
        };
        let first_seq = session.context().first_seq;
        let kept = self.limits.kept_sessions.max(1);
        let store = self.store.clone();
        let inbound = self.inbound_mut(sender.fingerprint(), &conversation, out);
        let previous_epoch = std::mem::replace(&mut inbound.max_epoch, epoch);
        inbound.sessions.push(Receiving {
            session,
            window: ReplayWindow::starting_at(first_seq),
            missing: BTreeSet::new(),
        });
        let excess = inbound.sessions.len().saturating_sub(kept);
        let dropped: Vec<Receiving> = inbound.sessions.drain(..excess).collect();
        let saved = store.set_inbound(sender.fingerprint(), &conversation, inbound);
        if let Err(e) = saved {
            // Undo, so that the relay's redelivery is accepted again; not
            // acknowledged, so a stored announcement does come again.
            inbound.max_epoch = previous_epoch;
            inbound.sessions.pop();
            inbound.sessions.splice(..0, dropped);
            out.error(format!("could not save a session key: {e}"));
            return Handled::Kept;
        }
        // Messages that arrived before their announcement.
        let fingerprint = sender.fingerprint();
        let (ready, waiting): (Vec<Held>, Vec<Held>) = self
            .held
            .drain(..)
            .partition(|h| h.sender == fingerprint && h.session == session_id);
        self.held = waiting.into();
        for held in ready {
            self.deliver(held.delivery, out);
        }
        Handled::Done
    }

    fn on_message(
        &mut self,
        delivery: &Delivery,
        body: &MessageBody<'_>,
        out: &mut Out,
    ) -> Handled {
        let Ok(header) = body.header() else {
            return self.reject(delivery, out);
        };
        let sender = match self.sender_key(delivery, header.sender, out) {
            Ok(sender) => sender.fingerprint(),
            Err(handled) => return handled,
        };
        let (conversation, chat) = match &delivery.to {
            Destination::Room(room) => {
                (Conversation::room(room.as_str()), Chat::Room(room.clone()))
            }
            Destination::User(user) if self.is_me(user) => (
                Conversation::direct(sender, self.me),
                Chat::Direct(self.display_name(&delivery.from)),
            ),
            Destination::User(_) => return self.reject(delivery, out),
        };
        // The header must name the conversation the message came in (checked
        // again, authenticated, by `open`): a message moved elsewhere is
        // rejected at once rather than held for an announcement.
        if header.conversation != conversation
            || !self.admits(&conversation, &delivery.from, sender)
        {
            return self.reject(delivery, out);
        }
        let Some(slot) = delivery.slot.clone() else {
            // Not a forgery: the sender did not include this client (or the
            // relay stripped its slot).
            out.update(Update::NotForYou {
                chat,
                from: self.display_name(&delivery.from).to_string(),
            });
            return Handled::Done;
        };
        let held_limit = self.limits.held_messages;
        let inbound = self.inbound_mut(sender, &conversation, out);
        let Some(index) = inbound
            .sessions
            .iter()
            .position(|r| r.session.context().session_id == header.session_id)
        else {
            if header.epoch > inbound.max_epoch && self.held.len() < held_limit {
                // Its announcement may still be on the way.
                self.held.push_back(Held {
                    delivery: delivery.clone(),
                    sender,
                    session: header.session_id,
                    since: Instant::now(),
                });
                return Handled::Kept;
            }
            return self.reject(delivery, out);
        };
        let Some(receiving) = inbound.sessions.get_mut(index) else {
            return self.reject(delivery, out);
        };
        let Ok(opened) = receiving.session.open(&conversation, body, &slot) else {
            return self.reject(delivery, out);
        };
        let before = (receiving.window.clone(), receiving.missing.clone());
        let top = receiving.window.next_expected();
        let Ok(arrival) = receiving.window.accept(opened.seq) else {
            // A duplicate (or too old to place): dropped quietly.
            return Handled::Done;
        };
        let mut missing = 0;
        match arrival {
            Arrival::Newest { missing: n } => {
                missing = n;
                let start = top.max(opened.seq.saturating_sub(sotto_crypto::REPLAY_WINDOW));
                receiving.missing.extend(start..opened.seq);
                let floor = opened.seq.saturating_sub(sotto_crypto::REPLAY_WINDOW);
                receiving.missing = receiving.missing.split_off(&floor);
            }
            Arrival::Late => {
                receiving.missing.remove(&opened.seq);
            }
        }
        let session_id = header.session_id;
        let roster = opened.roster;
        let entry = StoredEntry {
            chat: chat.clone(),
            from: self.display_name(&delivery.from).to_string(),
            fingerprint: sender,
            outgoing: false,
            seq: opened.seq,
            sent_at_ms: opened.sent_at_ms,
            received_at_ms: now_ms(),
            text: String::from_utf8_lossy(&opened.plaintext).into_owned(),
        };
        let position = self.place(&chat, sender, opened.seq, arrival == Arrival::Late);
        let key = (sender, conversation.clone());
        let saved = match self.inbound.get(&key) {
            Some(inbound) => {
                self.store
                    .record_received(&entry, position, sender, &conversation, inbound)
            }
            None => Err(StoreError::Format),
        };
        if let Err(e) = saved {
            // Undo, so that the relay's redelivery opens it again.
            if let Some(receiving) = self
                .inbound
                .get_mut(&key)
                .and_then(|i| i.sessions.get_mut(index))
            {
                (receiving.window, receiving.missing) = before;
            }
            out.error(format!("could not store a message: {e}"));
            return Handled::Kept;
        }
        if !matches!(arrival, Arrival::Late) {
            self.remember_place(&chat, sender, opened.seq, position.anchor);
        }
        if let Chat::Room(room) = &chat {
            self.check_roster(room, &delivery.from, sender, session_id, roster, out);
        }
        if missing > 0 {
            out.update(Update::Missing {
                chat: chat.clone(),
                from: entry.from.clone(),
                count: missing,
            });
        }
        let message = self.message_of(entry, position);
        out.update(Update::Message(message));
        Handled::Done
    }

    /// Where a message goes on screen: in arrival order, except that a late
    /// message is placed just before its sender's next message (17.4).
    fn place(&mut self, chat: &Chat, sender: Fingerprint, seq: u64, late: bool) -> Position {
        if late
            && let Some(placed) = self.placed.get(&(chat.canonical(), sender))
            && let Some((next_seq, anchor)) = placed.range(seq + 1..).next()
        {
            let distance = u32::try_from(next_seq - seq)
                .unwrap_or(u32::MAX)
                .min(Position::IN_ORDER);
            return Position {
                anchor: *anchor,
                rank: Position::IN_ORDER - distance,
            };
        }
        self.arrival += 1;
        Position {
            anchor: self.arrival,
            rank: Position::IN_ORDER,
        }
    }

    fn remember_place(&mut self, chat: &Chat, sender: Fingerprint, seq: u64, anchor: u64) {
        let placed = self.placed.entry((chat.canonical(), sender)).or_default();
        placed.insert(seq, anchor);
        while placed.len() > 2 * sotto_crypto::REPLAY_WINDOW as usize {
            placed.pop_first();
        }
    }

    /// P7: a message commits to its sender's view of the room; warn once per
    /// session when it matches none of this client's recent views.
    fn check_roster(
        &mut self,
        room: &RoomName,
        from: &UserName,
        sender: Fingerprint,
        session: SessionId,
        roster: [u8; 32],
        out: &mut Out,
    ) {
        if self.warned.contains(&(sender, session)) {
            return;
        }
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        if roster == self.view_digest(entry) || entry.views.iter().any(|(d, _)| *d == roster) {
            return;
        }
        self.warned.insert((sender, session));
        out.update(Update::RosterMismatch {
            room: room.clone(),
            from: self.display_name(from).to_string(),
        });
    }

    // ----- commands -------------------------------------------------------

    pub(crate) fn handle_command(&mut self, command: Command, out: &mut Out) -> Flow {
        match command {
            Command::Send { chat, text } => self.send_text(chat, text, out),
            Command::Join(room) => {
                if self.connected {
                    out.frames.push(ClientFrame::Join { room });
                } else if self.wanted.insert(room) {
                    self.save_wanted(out);
                }
            }
            Command::Leave(room) => {
                if !self.connected {
                    if self.wanted.remove(&room) {
                        self.save_wanted(out);
                        out.update(Update::Left { room });
                    }
                } else if self.rooms.contains_key(&room) {
                    out.frames.push(ClientFrame::Leave { room });
                } else {
                    out.error(format!("you are not in #{room}"));
                }
            }
            Command::ListUsers => self.when_connected(ClientFrame::ListUsers, out),
            Command::ListRooms => self.when_connected(ClientFrame::ListRooms, out),
            Command::SafetyNumber(name) => {
                if self.is_me(&name) {
                    out.error("that is you: compare safety numbers with someone else");
                } else if self.contacts.get(name.as_str()).is_some() {
                    self.show_safety_number(&name, out);
                } else if self.connected {
                    self.await_key(&name, out).show_safety_number = true;
                } else {
                    out.error(format!("no key is known for {name} yet"));
                }
            }
            Command::Verify {
                name,
                safety_number,
            } => {
                let result = self.contacts.mark_verified(
                    self.identity.public(),
                    name.as_str(),
                    &safety_number,
                );
                match result {
                    Ok(()) => self.trust_changed(&name, out),
                    Err(e) => out.error(e.to_string()),
                }
            }
            Command::AcceptKey(name) => match self.contacts.accept_new_key(name.as_str()) {
                Ok(_) => self.trust_changed(&name, out),
                Err(e) => out.error(e.to_string()),
            },
            Command::SetVerifiedOnly { room, on } => {
                let settings = RoomSettings { verified_only: on };
                if let Err(e) = self.store.set_room_settings(room.as_str(), &settings) {
                    out.error(format!("could not save the setting: {e}"));
                    return Flow::Continue;
                }
                if let Some(entry) = self.rooms.get_mut(&room) {
                    entry.settings = settings;
                }
                out.update(Update::VerifiedOnly { room, on });
            }
            Command::Quit => {
                if self.connected && self.has_unsent() {
                    // Send what is queued first (bounded by `should_quit`).
                    self.quitting = Some(Instant::now());
                } else {
                    self.report_unsent(out);
                    return Flow::Quit;
                }
            }
        }
        Flow::Continue
    }

    /// Messages typed but not yet sealed: waiting for the connection, a
    /// room's `Joined` or a peer's key.
    fn has_unsent(&self) -> bool {
        !self.outbox.is_empty() || self.awaiting_key.values().any(|a| !a.texts.is_empty())
    }

    /// Says which typed messages were never sent.
    pub(crate) fn report_unsent(&mut self, out: &mut Out) {
        let queued = self.outbox.len()
            + self
                .awaiting_key
                .values()
                .map(|a| a.texts.len())
                .sum::<usize>();
        if queued > 0 {
            out.error(format!(
                "{queued} queued message(s) were not sent: the relay could not be reached"
            ));
        }
    }

    /// After a `Quit` that waited for queued messages: whether to stop now
    /// (all sent, or waited long enough).
    pub(crate) fn should_quit(&self, now: Instant) -> bool {
        self.quitting.is_some_and(|since| {
            !self.has_unsent() || now.duration_since(since) >= Duration::from_secs(10)
        })
    }

    /// Whether a `Quit` came in.
    pub(crate) fn quitting(&self) -> bool {
        self.quitting.is_some()
    }

    fn when_connected(&mut self, frame: ClientFrame, out: &mut Out) {
        if self.connected {
            out.frames.push(frame);
        } else {
            out.error("not connected to the relay");
        }
    }

    fn show_safety_number(&self, name: &UserName, out: &mut Out) {
        let Some(contact) = self.contacts.get(name.as_str()) else {
            return;
        };
        let theirs = match &contact.trust {
            Trust::Changed { offered } => offered,
            Trust::Unverified | Trust::Verified => &contact.identity,
        };
        out.update(Update::SafetyNumber {
            name: contact.name.clone(),
            fingerprint: theirs.fingerprint(),
            safety_number: self.identity.public().safety_number(theirs),
            trust: trust_level(&contact.trust),
        });
    }

    fn trust_changed(&mut self, name: &UserName, out: &mut Out) {
        self.save_contacts(out);
        let trust = self.trust_of(name.as_str());
        out.update(Update::Trust {
            name: self
                .contacts
                .get(name.as_str())
                .map_or_else(|| name.to_string(), |c| c.name.clone()),
            trust,
        });
        let rooms: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.members.contains_key(&lower(name)))
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            self.members_update(&room, out);
        }
        for delivery in self.awaiting_trust.remove(&lower(name)).unwrap_or_default() {
            self.deliver(delivery, out);
        }
    }

    // ----- sending --------------------------------------------------------

    fn send_text(&mut self, chat: Chat, text: String, out: &mut Out) {
        if text.len() > sotto_crypto::MAX_PLAINTEXT_LEN {
            out.error(format!(
                "{chat}: the message is too long ({} bytes; at most {})",
                text.len(),
                sotto_crypto::MAX_PLAINTEXT_LEN
            ));
            return;
        }
        if !self.connected {
            if self.outbox.len() >= self.limits.outbox {
                out.error(format!(
                    "{chat}: not connected and too many messages queued; not sent"
                ));
            } else {
                self.outbox.push_back((chat, text));
            }
            return;
        }
        match chat {
            Chat::Room(room) => self.send_to_room(room, text, out),
            Chat::Direct(user) => self.send_direct(user, text, out),
        }
    }

    fn send_to_room(&mut self, room: RoomName, text: String, out: &mut Out) {
        let Some(entry) = self.rooms.get(&room) else {
            if self.wanted.contains(&room) {
                // Joining is under way: send once `Joined` arrives.
                self.outbox.push_back((Chat::Room(room), text));
            } else {
                out.error(format!("you are not in #{room}: /join {room} first"));
            }
            return;
        };
        let verified_only = entry.settings.verified_only;
        let mut recipients = Vec::new();
        let mut left_out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        for member in entry.members.values() {
            if self.is_me(&member.name) {
                continue;
            }
            let contact = self.contacts.get(member.name.as_str());
            match self.contacts.sendable(member.name.as_str()) {
                Ok(identity)
                    if !verified_only || contact.is_some_and(|c| c.trust == Trust::Verified) =>
                {
                    recipients.push((member.name.clone(), identity.clone()));
                }
                Ok(_) => left_out
                    .entry("not verified, and this room sends to verified members only")
                    .or_default()
                    .push(member.name.to_string()),
                Err(Blocked::KeyChanged { .. }) => left_out
                    .entry("their key changed: verify or accept it first")
                    .or_default()
                    .push(member.name.to_string()),
                Err(_) => left_out
                    .entry("no key is known for them")
                    .or_default()
                    .push(member.name.to_string()),
            }
        }
        let chat = Chat::Room(room.clone());
        for (reason, names) in left_out {
            out.update(Update::NotSentTo {
                chat: chat.clone(),
                names,
                reason: reason.to_owned(),
            });
        }
        self.seal_and_send(
            chat,
            Conversation::room(room.as_str()),
            Destination::Room(room),
            recipients,
            text,
            out,
        );
    }

    fn send_direct(&mut self, user: UserName, text: String, out: &mut Out) {
        if self.is_me(&user) {
            out.error("you cannot send a direct message to yourself");
            return;
        }
        let peer = match self.contacts.sendable(user.as_str()) {
            Ok(identity) => identity.clone(),
            Err(Blocked::Unknown(_)) => {
                let awaiting = self.await_key(&user, out);
                if awaiting.texts.len() < 64 {
                    awaiting.texts.push(text);
                } else {
                    out.error(format!("@{user}: too many messages waiting for a key"));
                }
                return;
            }
            Err(blocked) => {
                out.error(format!("@{user}: not sent: {blocked}"));
                return;
            }
        };
        let name = self.display_name(&user);
        let conversation = Conversation::direct(self.me, peer.fingerprint());
        self.seal_and_send(
            Chat::Direct(name.clone()),
            conversation,
            Destination::User(name.clone()),
            vec![(name, peer)],
            text,
            out,
        );
    }

    fn outbound(&mut self, conversation: &Conversation) -> Result<&mut Outbound, StoreError> {
        Ok(match self.outbound.entry(conversation.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let epoch = self.store.epoch(conversation)?;
                let (limit, store) = self.store.counter(conversation)?;
                entry.insert(Outbound {
                    epoch,
                    counter: SequenceCounter::resume(limit, store),
                    session: None,
                })
            }
        })
    }

    fn seal_and_send(
        &mut self,
        chat: Chat,
        conversation: Conversation,
        to: Destination,
        recipients: Vec<(UserName, PublicIdentity)>,
        text: String,
        out: &mut Out,
    ) {
        let identity = self.identity.clone();
        let store = self.store.clone();
        let fail = |out: &mut Out, what: &dyn std::fmt::Display| {
            out.error(format!("{chat}: not sent: {what}"));
        };
        let outbound = match self.outbound(&conversation) {
            Ok(outbound) => outbound,
            Err(e) => return fail(out, &e),
        };
        let wanted: BTreeSet<Fingerprint> =
            recipients.iter().map(|(_, id)| id.fingerprint()).collect();
        let now = now_secs();
        let current = outbound.session.as_ref().is_some_and(|s| {
            s.recipients().collect::<BTreeSet<_>>() == wanted && !s.needs_rotation(now)
        });
        let mut frames = Vec::new();
        if !current && !recipients.is_empty() {
            // A new session: new keys for exactly these recipients. The epoch
            // also follows the clock, so that a data directory restored from
            // a backup still announces epochs newer than any it used.
            let clock = u32::try_from(now).unwrap_or(u32::MAX);
            let epoch = outbound.epoch.saturating_add(1).max(clock);
            if let Err(e) = store.set_epoch(&conversation, epoch) {
                return fail(out, &e);
            }
            outbound.epoch = epoch;
            let keys: Vec<&PublicIdentity> = recipients.iter().map(|(_, id)| id).collect();
            let started = SendingSession::start(
                &mut rand::rng(),
                &identity,
                conversation.clone(),
                epoch,
                outbound.counter.peek(),
                now,
                &keys,
            );
            let (session, announcements) = match started {
                Ok(started) => started,
                Err(e) => return fail(out, &e),
            };
            outbound.session = Some(session);
            for announcement in announcements {
                let Some((name, _)) = recipients
                    .iter()
                    .find(|(_, id)| id.fingerprint() == announcement.context.recipient)
                else {
                    continue;
                };
                frames.push((
                    Destination::User(name.clone()),
                    Bytes::from(PeerBody::Announcement(announcement).encode()),
                    Vec::new(),
                ));
            }
        }
        let sealed = match (&mut outbound.session, recipients.is_empty()) {
            (Some(session), false) => {
                match session.seal(
                    &mut rand::rng(),
                    &mut outbound.counter,
                    now_ms(),
                    text.as_bytes(),
                ) {
                    Ok(sealed) => Some(sealed),
                    Err(e) => return fail(out, &e),
                }
            }
            _ => None,
        };
        let seq = match &sealed {
            Some(sealed) => sealed.seq,
            None => outbound.counter.peek(),
        };
        if let Some(sealed) = sealed {
            let slots = sealed
                .slots
                .iter()
                .filter_map(|slot| {
                    let (name, _) = recipients
                        .iter()
                        .find(|(_, id)| id.fingerprint() == slot.recipient)?;
                    Some(Slot {
                        to: name.clone(),
                        data: Bytes::copy_from_slice(&slot.to_bytes()),
                    })
                })
                .collect();
            frames.push((to, Bytes::from(sealed.body), slots));
        } else {
            out.update(Update::NotSentTo {
                chat: chat.clone(),
                names: Vec::new(),
                reason: "nobody else can read it here".to_owned(),
            });
        }
        for (to, body, slots) in frames {
            let id = self.route_id();
            self.sends.insert(id, chat.clone());
            while self.sends.len() > 4096 {
                self.sends.pop_first();
            }
            out.frames.push(ClientFrame::Send {
                route: Route { id, to },
                body,
                slots,
            });
        }
        let entry = StoredEntry {
            chat,
            from: self.name.to_string(),
            fingerprint: self.me,
            outgoing: true,
            seq,
            sent_at_ms: now_ms(),
            received_at_ms: now_ms(),
            text,
        };
        self.arrival += 1;
        let position = Position {
            anchor: self.arrival,
            rank: Position::IN_ORDER,
        };
        if let Err(e) = self.store.record_sent(&entry, position) {
            out.error(format!("could not store the message you sent: {e}"));
        }
        let message = self.message_of(entry, position);
        out.update(Update::Message(message));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sotto_crypto::{NoPersistence, SealedMessage};
    use sotto_proto::Member as RosterMember;

    use super::*;
    use crate::profile::Profile;

    fn fixture(name: &str) -> Arc<Identity> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../testdata/identities/{name}.sotto-id"));
        Arc::new(Identity::load(&path, b"sotto test vectors").unwrap())
    }

    fn name(name: &str) -> UserName {
        name.parse().unwrap()
    }

    /// Alice's engine, registered, in the lobby with bob.
    async fn alice_with_bob(bob: &Identity) -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let alice = fixture("alice");
        let account = Account::open(
            Profile::open(dir.path()).unwrap(),
            alice.clone(),
            Some(name("alice")),
        )
        .await
        .unwrap();
        let (mut engine, _) =
            Engine::new(&account, &[RoomName::lobby()], SessionLimits::default()).unwrap();
        let mut out = Out::default();
        engine.on_registered(name("alice"), &mut out);
        engine.handle_frame(
            RelayFrame::Joined {
                room: RoomName::lobby(),
                members: vec![
                    RosterMember {
                        name: name("alice"),
                        identity: alice.public().to_bytes().into(),
                    },
                    RosterMember {
                        name: name("bob"),
                        identity: bob.public().to_bytes().into(),
                    },
                ],
            },
            &mut out,
        );
        (engine, dir)
    }

    /// Bob's side: a session to alice in the lobby and its counter.
    struct Bob {
        identity: Arc<Identity>,
        session: SendingSession,
        counter: SequenceCounter<NoPersistence>,
        announcement: Announcement,
    }

    impl Bob {
        fn start(identity: Arc<Identity>, alice: &PublicIdentity, epoch: u32, first: u64) -> Bob {
            let (session, mut announcements) = SendingSession::start(
                &mut rand::rng(),
                &identity,
                Conversation::room("lobby"),
                epoch,
                first,
                now_secs(),
                &[alice],
            )
            .unwrap();
            Bob {
                identity,
                session,
                counter: SequenceCounter::resume(first, NoPersistence),
                announcement: announcements.remove(0),
            }
        }

        fn seal(&mut self, text: &str) -> SealedMessage {
            self.session
                .seal(
                    &mut rand::rng(),
                    &mut self.counter,
                    now_ms(),
                    text.as_bytes(),
                )
                .unwrap()
        }
    }

    fn announce(announcement: &Announcement) -> RelayFrame {
        RelayFrame::Deliver {
            delivery: 0,
            from: name("bob"),
            to: Destination::User(name("alice")),
            body: PeerBody::Announcement(announcement.clone()).encode().into(),
            slot: None,
        }
    }

    fn deliver(sealed: &SealedMessage, to: Destination) -> RelayFrame {
        RelayFrame::Deliver {
            delivery: 0,
            from: name("bob"),
            to,
            body: sealed.body.clone().into(),
            slot: Some(sealed.slots[0].to_bytes().to_vec().into()),
        }
    }

    fn lobby() -> Destination {
        Destination::Room(RoomName::lobby())
    }

    fn feed(engine: &mut Engine, frame: RelayFrame) -> Vec<Update> {
        let mut out = Out::default();
        engine.handle_frame(frame, &mut out);
        out.updates
    }

    fn messages(updates: &[Update]) -> Vec<&Message> {
        updates
            .iter()
            .filter_map(|u| match u {
                Update::Message(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn gaps_duplicates_and_late_messages_follow_the_senders_order() {
        let alice = fixture("alice");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        assert!(feed(&mut engine, announce(&bob.announcement)).is_empty());
        let sealed: Vec<SealedMessage> = (0..4).map(|i| bob.seal(&format!("m{i}"))).collect();

        let first = feed(&mut engine, deliver(&sealed[0], lobby()));
        assert_eq!(messages(&first)[0].text, "m0");
        // m3 before m1 and m2: two missing, reported once.
        let third = feed(&mut engine, deliver(&sealed[3], lobby()));
        assert!(
            matches!(third[0], Update::Missing { count: 2, .. }),
            "{third:?}"
        );
        let m3 = messages(&third)[0].clone();
        // m1 late: placed before m3, not after it.
        let late = feed(&mut engine, deliver(&sealed[1], lobby()));
        let m1 = messages(&late)[0].clone();
        assert!(m1.late && m1.position < m3.position, "{m1:?} {m3:?}");
        // A duplicate is dropped without a word.
        assert!(feed(&mut engine, deliver(&sealed[1], lobby())).is_empty());
        assert!(feed(&mut engine, deliver(&sealed[0], lobby())).is_empty());
        let late = feed(&mut engine, deliver(&sealed[2], lobby()));
        let m2 = messages(&late)[0].clone();
        assert!(m1.position < m2.position && m2.position < m3.position);
        // On screen, sorted by position: the sender's order.
        let mut shown = [&m3, &m1, &m2];
        shown.sort_by_key(|m| m.position);
        assert_eq!(shown.map(|m| m.seq), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_message_before_its_announcement_waits_for_it() {
        let alice = fixture("alice");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        let early = bob.seal("early");
        assert!(feed(&mut engine, deliver(&early, lobby())).is_empty());
        let updates = feed(&mut engine, announce(&bob.announcement));
        assert_eq!(messages(&updates)[0].text, "early");
    }

    #[tokio::test]
    async fn replayed_or_older_announcements_cost_no_rsa_and_roll_nothing_back() {
        let alice = fixture("alice");
        let old = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let mut new = Bob::start(fixture("bob"), alice.public(), 2, 10);
        let (mut engine, _dir) = alice_with_bob(&new.identity).await;
        let before = engine.identity.rsa_decryptions();
        assert!(feed(&mut engine, announce(&new.announcement)).is_empty());
        assert_eq!(engine.identity.rsa_decryptions(), before + 1);
        // The same announcement again, and an older epoch: dropped before RSA.
        assert!(feed(&mut engine, announce(&new.announcement)).is_empty());
        assert!(feed(&mut engine, announce(&old.announcement)).is_empty());
        assert_eq!(engine.identity.rsa_decryptions(), before + 1);
        // The newer session is still the one in use.
        let sealed = new.seal("still epoch 2");
        let updates = feed(&mut engine, deliver(&sealed, lobby()));
        assert_eq!(messages(&updates)[0].text, "still epoch 2");
    }

    #[tokio::test]
    async fn moved_forged_and_reflected_messages_are_rejected() {
        let alice = fixture("alice");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        feed(&mut engine, announce(&bob.announcement));
        let rejected = |updates: &[Update]| {
            matches!(updates, [Update::Rejected { .. }]) && messages(updates).is_empty()
        };

        // Moved into a direct message, or into another room.
        let sealed = bob.seal("lobby only");
        let moved = feed(
            &mut engine,
            deliver(&sealed, Destination::User(name("alice"))),
        );
        assert!(rejected(&moved), "{moved:?}");
        let moved = feed(
            &mut engine,
            deliver(&sealed, Destination::Room("side".parse().unwrap())),
        );
        assert!(rejected(&moved), "{moved:?}");
        // A flipped bit anywhere in the body.
        let mut forged = sealed.clone();
        let last = forged.body.len() - 1;
        forged.body[last] ^= 1;
        assert!(rejected(&feed(&mut engine, deliver(&forged, lobby()))));
        // Claiming to come from alice herself.
        let RelayFrame::Deliver { to, body, slot, .. } = deliver(&sealed, lobby()) else {
            unreachable!()
        };
        let reflected = RelayFrame::Deliver {
            delivery: 0,
            from: name("alice"),
            to,
            body,
            slot,
        };
        assert!(rejected(&feed(&mut engine, reflected)));
        // The untouched message still opens afterwards: nothing above moved
        // the replay window.
        let updates = feed(&mut engine, deliver(&sealed, lobby()));
        assert_eq!(messages(&updates)[0].text, "lobby only");
    }
}
