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
    ClientFrame, Destination, PresenceEvent, RelayFrame, RoomName, Route, Slot, UserKey, UserName,
};

use super::{Chat, Command, Member, Message, OnlineUser, PresenceChange, TrustLevel, Update};
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
    /// Updates waiting for the front end (the session's channel to it).
    /// When it is full the session stops reading from the relay until the
    /// front end catches up (so a flood waits in the relay's bounded queue
    /// for this client, not in this client's memory), except that presence
    /// notices are dropped instead: the member lists carry the same facts.
    pub updates: usize,
    /// Signature checks of announcements, all senders together, in a burst
    /// (each costs one RSA public-key operation, about 0.15 ms). This, not
    /// the per-sender allowance, bounds what forgeries cost: a sender's
    /// allowance is charged only for announcements its key signed.
    pub verification_burst: u32,
    /// ...refilled at this many per second.
    pub verifications_per_second: u32,
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
            verification_burst: 2000,
            verifications_per_second: 500,
            updates: 1024,
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
    members: BTreeMap<UserKey, RosterEntry>,
    settings: RoomSettings,
    /// Digests of recent member sets, with when they stopped being current.
    views: VecDeque<([u8; 32], Instant)>,
    /// The digest of the current member set, once computed.
    digest: Option<[u8; 32]>,
    /// When a member set was last retired with its digest computed.
    retired: Option<Instant>,
    /// When the whole member list was last sent to the front end.
    listed: Option<Instant>,
    /// The member list changed since it was last sent.
    unlisted: bool,
}

/// The whole member list of a room goes to the front end at most this
/// often while presence keeps changing it (each change is also its own small
/// [`Update::Presence`]); in a room of more than 20,000 members, at most
/// once per [`MEMBER_LIST_PER_MEMBER`] times its size, since building the
/// list costs the size of the room.
const MEMBER_LIST_INTERVAL: Duration = Duration::from_secs(1);
/// See [`MEMBER_LIST_INTERVAL`].
const MEMBER_LIST_PER_MEMBER: Duration = Duration::from_micros(50);

/// During a burst of presence changes, the digest of a member set that was
/// current for less than this (or, in a large room, for less than
/// [`VIEW_PER_MEMBER`] per member) is not computed, and a message sealed to
/// exactly that set may then be reported as a roster mismatch: computing a
/// digest costs the size of the room, so it is not done for every event.
const VIEW_INTERVAL: Duration = Duration::from_millis(100);
/// See [`VIEW_INTERVAL`].
const VIEW_PER_MEMBER: Duration = Duration::from_micros(100);

/// How many recently parsed identities are kept, by their bytes.
const PARSED_KEYS: usize = 16;

/// `base`, or `per_member` times the room's size if that is longer.
fn scaled(base: Duration, per_member: Duration, members: usize) -> Duration {
    base.max(per_member.saturating_mul(u32::try_from(members).unwrap_or(u32::MAX)))
}

struct Outbound {
    epoch: u32,
    counter: SequenceCounter<VaultCounter>,
    session: Option<SendingSession>,
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills at `rate` tokens per second up to `burst`, then takes one.
    fn take(&mut self, now: Instant, burst: f64, rate: f64) -> bool {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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

/// What the user is told when stored messages could not be read.
pub(crate) fn skipped_history(count: usize) -> String {
    match count {
        1 => "1 stored message is damaged and could not be read: skipped, the rest of the history is shown".to_owned(),
        n => format!("{n} stored messages are damaged and could not be read: skipped, the rest of the history is shown"),
    }
}

/// What the user is told about forged announcements: the relay's doing
/// (only the relay, or whoever it lets in, can deliver them), never the
/// named sender's.
pub(crate) fn forged_announcements(count: u64, claimed: &str) -> String {
    match count {
        1 => format!("the relay delivered 1 forged key announcement claiming to be from {claimed}"),
        n => format!(
            "the relay delivered {n} forged key announcements claiming to be from {claimed}"
        ),
    }
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
    awaiting_key: BTreeMap<UserKey, Awaiting>,
    awaiting_trust: BTreeMap<UserKey, Vec<Delivery>>,
    held: VecDeque<Held>,
    buckets: HashMap<Fingerprint, Bucket>,
    /// Contacts pinned or changed and not yet saved.
    unsaved_contacts: BTreeSet<UserKey>,
    /// The identities parsed last, with their bytes, newest first.
    parsed: VecDeque<(Bytes, Arc<PublicIdentity>)>,
    /// Signature checks of announcements, all senders together.
    verifications: Option<Bucket>,
    /// Forged announcements not yet reported, by the name they claimed.
    forged: BTreeMap<UserKey, (UserName, u64)>,
    /// Announcements dropped unchecked (the verification budget was spent).
    unchecked: u64,
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
            unsaved_contacts: BTreeSet::new(),
            parsed: VecDeque::new(),
            verifications: None,
            forged: BTreeMap::new(),
            unchecked: 0,
            arrival: 0,
            placed: HashMap::new(),
            warned: HashSet::new(),
            outbox: VecDeque::new(),
            sends: BTreeMap::new(),
            next_route: 1,
            quitting: None,
        };
        let history = engine.store.history()?;
        engine.arrival = history.last;
        let mut chats: BTreeMap<Chat, Vec<Message>> = BTreeMap::new();
        for (position, entry) in history.entries {
            let late = position.rank != Position::IN_ORDER;
            if !late {
                engine.remember_place(&entry.chat, entry.fingerprint, entry.seq, position.anchor);
            }
            let message = engine.message_of(entry, position);
            chats.entry(message.chat.clone()).or_default().push(message);
        }
        let mut updates: Vec<Update> = chats
            .into_iter()
            .map(|(chat, mut messages)| {
                // One chat may span records filed under two spellings of
                // a name (`@BOB`, `@bob`): one display order.
                messages.sort_by_key(|m| m.position);
                Update::History { chat, messages }
            })
            .collect();
        if history.skipped > 0 {
            updates.push(Update::Error(skipped_history(history.skipped)));
        }
        // A key change the user has not decided on yet is still pending:
        // say so again, so a new UI blocks on it as the last one did (P6).
        for contact in engine.contacts.iter() {
            if let Trust::Changed { offered } = &contact.trust {
                updates.push(Update::Key(KeyEvent::ChangedVerified {
                    name: contact.name.to_string(),
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
            let from = entry.from.parse::<UserName>().ok();
            match from.and_then(|from| self.contacts.get(&from)) {
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

    fn trust_of(&self, name: &UserName) -> TrustLevel {
        self.contacts
            .get(name)
            .map_or(TrustLevel::Unknown, |c| trust_level(&c.trust))
    }

    fn is_me(&self, name: &UserName) -> bool {
        name.same_as(&self.name)
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
        self.save_contacts(&mut Out::default());
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
        // Forgeries are reported at most once per tick and claimed sender.
        for (_, (claimed, count)) in std::mem::take(&mut self.forged) {
            out.error(forged_announcements(count, claimed.as_str()));
        }
        if self.unchecked > 0 {
            out.error(format!(
                "the relay delivered key announcements faster than they can be checked: {} dropped unchecked",
                std::mem::take(&mut self.unchecked)
            ));
        }
        let grace = self.limits.roster_grace;
        for room in self.rooms.values_mut() {
            room.views
                .retain(|(_, since)| now.duration_since(*since) < grace);
        }
        self.save_contacts(out);
        let unlisted: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.unlisted
                    && r.listed.is_none_or(|at| {
                        now.duration_since(at)
                            >= scaled(
                                MEMBER_LIST_INTERVAL,
                                MEMBER_LIST_PER_MEMBER,
                                r.members.len(),
                            )
                    })
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in unlisted {
            self.members_update(&room, now, out);
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
                            self.trust_of(&u.name)
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
    ///
    /// The same bytes as last time for the same name change nothing and
    /// cost no parsing: presence floods repeat them.
    fn observe(&mut self, name: &UserName, identity: &[u8], out: &mut Out) -> bool {
        if self.is_me(name) {
            return false;
        }
        let key = name.key();
        // The keys seen last are parsed once: presence floods repeat them,
        // and a relay may show one key under many names.
        let cached = self
            .parsed
            .iter()
            .position(|(bytes, _)| bytes.as_ref() == identity);
        let parsed = match cached.and_then(|i| self.parsed.remove(i)) {
            Some((bytes, parsed)) => {
                self.parsed.push_front((bytes, parsed.clone()));
                parsed
            }
            None => {
                let Ok(parsed) = PublicIdentity::from_bytes(identity) else {
                    out.error(format!("the relay sent an invalid key for {name}"));
                    return false;
                };
                let parsed = Arc::new(parsed);
                self.parsed
                    .push_front((Bytes::copy_from_slice(identity), parsed.clone()));
                self.parsed.truncate(PARSED_KEYS);
                parsed
            }
        };
        if let Some(event) = self.contacts.observe(name, &parsed) {
            self.unsaved_contacts.insert(key.clone());
            if !matches!(event, KeyEvent::Pinned { .. }) {
                // A key change is saved at once; a first pin at the next
                // tick (a crash before it only means pinning it again).
                self.save_contacts(out);
            }
            // Rosters digest the pinned keys: recompute them.
            for room in self.rooms.values_mut() {
                room.digest = None;
            }
            out.update(Update::Key(event));
        }
        true
    }

    /// Saves the contacts changed since the last save.
    fn save_contacts(&mut self, out: &mut Out) {
        if self.unsaved_contacts.is_empty() {
            return;
        }
        let unsaved = std::mem::take(&mut self.unsaved_contacts);
        let contacts: Vec<&crate::contacts::Contact> = unsaved
            .iter()
            .filter_map(|key| self.contacts.get(&key.to_name()))
            .collect();
        if let Err(e) = self.store.save_contacts(contacts) {
            out.error(format!("could not save contacts: {e}"));
            self.unsaved_contacts = unsaved;
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
                .insert(member.name.key(), RosterEntry { name: member.name });
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
        self.members_update(&room, Instant::now(), out);
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
                    .insert(user.key(), RosterEntry { name: user.clone() });
                PresenceChange::Joined
            }
            PresenceEvent::Left => {
                entry.members.remove(&user.key());
                PresenceChange::Left
            }
            PresenceEvent::Disconnected => {
                entry.members.remove(&user.key());
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
        self.members_changed(&room, out);
        if pinned {
            self.retry_key(&user, out);
        }
    }

    /// Remembers the member set that was current until `now`, so messages
    /// sealed just before a change still match (`roster_grace`).
    fn retire_view(&mut self, room: &RoomName, now: Instant) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        let digest = match entry.digest {
            Some(digest) => Some(digest),
            // In a burst of changes, not every fleeting member set.
            None if entry.retired.is_some_and(|at| {
                now.duration_since(at) < scaled(VIEW_INTERVAL, VIEW_PER_MEMBER, entry.members.len())
            }) =>
            {
                None
            }
            None => Some(self.view_digest(entry)),
        };
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.digest = None;
            if let Some(digest) = digest {
                entry.retired = Some(now);
                entry.views.push_back((digest, now));
                while entry.views.len() > 16 {
                    entry.views.pop_front();
                }
            }
        }
    }

    /// The digest of `room`'s current member set, computed once per set.
    fn current_digest(&mut self, room: &RoomName) -> Option<[u8; 32]> {
        let entry = self.rooms.get(room)?;
        if let Some(digest) = entry.digest {
            return Some(digest);
        }
        let digest = self.view_digest(entry);
        if let Some(entry) = self.rooms.get_mut(room) {
            entry.digest = Some(digest);
        }
        Some(digest)
    }

    /// The roster digest (15.1) of the members this client sees in `room`
    /// with their pinned keys, itself included: what a message sealed to
    /// the same view commits to.
    fn view_digest(&self, room: &Room) -> [u8; 32] {
        let others = room
            .members
            .values()
            .filter(|m| !self.is_me(&m.name))
            .filter_map(|m| self.contacts.get(&m.name))
            .map(|c| c.identity.fingerprint());
        roster_digest(others.chain([self.me]))
    }

    /// `room`'s members changed: send the whole list now, or at the next
    /// tick if one was sent less than [`MEMBER_LIST_INTERVAL`] ago, so a
    /// presence flood costs one list per room per interval, not one per
    /// event.
    fn members_changed(&mut self, room: &RoomName, out: &mut Out) {
        let now = Instant::now();
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        let interval = scaled(
            MEMBER_LIST_INTERVAL,
            MEMBER_LIST_PER_MEMBER,
            entry.members.len(),
        );
        if entry
            .listed
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            entry.unlisted = true;
        } else {
            self.members_update(room, now, out);
        }
    }

    fn members_update(&mut self, room: &RoomName, now: Instant, out: &mut Out) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        entry.listed = Some(now);
        entry.unlisted = false;
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
                    let contact = self.contacts.get(&m.name);
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
                if let Some(awaiting) = self.awaiting_key.remove(&name.key()) {
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
        let Some(awaiting) = self.awaiting_key.remove(&name.key()) else {
            return;
        };
        if self.contacts.get(name).is_none() {
            self.awaiting_key.insert(name.key(), awaiting);
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
        let key = name.key();
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
            .get(name)
            .map_or_else(|| name.clone(), |c| c.name.clone())
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
        let Some(contact) = self.contacts.get(&delivery.from) else {
            let awaiting = self.await_key(&delivery.from, out);
            if awaiting.deliveries.len() >= 64 {
                return Err(self.reject(delivery, out));
            }
            awaiting.deliveries.push(delivery.clone());
            return Err(Handled::Kept);
        };
        if contact.identity.fingerprint() == claimed {
            return Ok((*contact.identity).clone());
        }
        if let Trust::Changed { offered } = &contact.trust
            && offered.fingerprint() == claimed
        {
            let parked = self.awaiting_trust.entry(delivery.from.key()).or_default();
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
                .is_some_and(|room| room.members.contains_key(&from.key())),
            Conversation::Direct(..) => *conversation == Conversation::direct(sender, self.me),
        }
    }

    /// Charges `sender`'s allowance of announcements: only for one its key
    /// signed.
    fn take_token(&mut self, sender: Fingerprint) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.limits.announcement_burst);
        let refill = self.limits.announcement_refill.as_secs_f64().max(1e-3);
        let bucket = self.buckets.entry(sender).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.take(now, burst, 1.0 / refill)
    }

    /// Charges the budget of signature checks shared by every sender.
    fn take_verification(&mut self) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.limits.verification_burst);
        let rate = f64::from(self.limits.verifications_per_second);
        self.verifications
            .get_or_insert(Bucket {
                tokens: burst,
                at: now,
            })
            .take(now, burst, rate)
    }

    /// What was received from `sender` in `conversation`, read from the
    /// store the first time. A store error is returned, never replaced by
    /// an empty state (which the next accepted announcement would then
    /// persist over the real one, losing its kept sessions and its epoch
    /// floor): the caller leaves the delivery unacknowledged, so it comes
    /// again.
    fn inbound_mut(
        &mut self,
        sender: Fingerprint,
        conversation: &Conversation,
    ) -> Result<&mut Inbound, StoreError> {
        Ok(match self.inbound.entry((sender, conversation.clone())) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(self.store.inbound(sender, conversation)?),
        })
    }

    /// Reports that the stored sessions could not be read; the delivery
    /// stays unacknowledged.
    fn unreadable_sessions(e: &StoreError, out: &mut Out) -> Handled {
        out.error(format!(
            "could not read stored session keys (the message will be retried): {e}"
        ));
        Handled::Kept
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
        let inbound = match self.inbound_mut(sender.fingerprint(), &conversation) {
            Ok(inbound) => inbound,
            Err(e) => return Self::unreadable_sessions(&e, out),
        };
        if epoch <= inbound.max_epoch
            || inbound
                .sessions
                .iter()
                .any(|r| r.session.context().session_id == session_id)
        {
            return Handled::Done;
        }
        // The signature first (cheap, shared budget): a forgery is counted
        // against the relay, and never against the sender it names.
        if !self.take_verification() {
            // Not acknowledged: if the relay stored it, it comes again on
            // the next connection, checked then.
            self.unchecked += 1;
            return Handled::Kept;
        }
        let Ok(verified) = self.identity.verify_announcement(&announcement, &sender) else {
            let claimed = self.display_name(&delivery.from);
            let (_, count) = self
                .forged
                .entry(delivery.from.key())
                .or_insert_with(|| (claimed, 0));
            *count += 1;
            return self.reject(delivery, out);
        };
        // Signed by the sender: its age, then its sender's allowance, then
        // the RSA decryption.
        let now = now_secs();
        if !verified.context().is_current(now) {
            return self.reject(delivery, out);
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
            .accept_verified(&mut rand::rng(), &verified, now)
        else {
            return self.reject(delivery, out);
        };
        let first_seq = session.context().first_seq;
        let kept = self.limits.kept_sessions.max(1);
        let store = self.store.clone();
        let inbound = match self.inbound_mut(sender.fingerprint(), &conversation) {
            Ok(inbound) => inbound,
            Err(e) => return Self::unreadable_sessions(&e, out),
        };
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
        let inbound = match self.inbound_mut(sender, &conversation) {
            Ok(inbound) => inbound,
            Err(e) => return Self::unreadable_sessions(&e, out),
        };
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
        // A session past its age (or made in the future) opens nothing
        // (18; the same opaque rejection as any other failure, P11).
        if !receiving.session.is_current(now_secs()) {
            return self.reject(delivery, out);
        }
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
            && let Some(placed) = self.placed.get(&(chat.clone(), sender))
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
        let placed = self.placed.entry((chat.clone(), sender)).or_default();
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
        let Some(current) = self.current_digest(room) else {
            return;
        };
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        if roster == current || entry.views.iter().any(|(d, _)| *d == roster) {
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
                } else if self.contacts.get(&name).is_some() {
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
                let result =
                    self.contacts
                        .mark_verified(self.identity.public(), &name, &safety_number);
                match result {
                    Ok(()) => self.trust_changed(&name, out),
                    Err(e) => out.error(e.to_string()),
                }
            }
            Command::AcceptKey(name) => match self.contacts.accept_new_key(&name) {
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
        let Some(contact) = self.contacts.get(name) else {
            return;
        };
        let theirs = match &contact.trust {
            Trust::Changed { offered } => offered,
            Trust::Unverified | Trust::Verified => &contact.identity,
        };
        out.update(Update::SafetyNumber {
            name: contact.name.to_string(),
            fingerprint: theirs.fingerprint(),
            safety_number: self.identity.public().safety_number(theirs),
            trust: trust_level(&contact.trust),
        });
    }

    fn trust_changed(&mut self, name: &UserName, out: &mut Out) {
        self.unsaved_contacts.insert(name.key());
        self.save_contacts(out);
        for room in self.rooms.values_mut() {
            room.digest = None;
        }
        let trust = self.trust_of(name);
        out.update(Update::Trust {
            name: self
                .contacts
                .get(name)
                .map_or_else(|| name.to_string(), |c| c.name.to_string()),
            trust,
        });
        let rooms: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.members.contains_key(&name.key()))
            .map(|(room, _)| room.clone())
            .collect();
        let now = Instant::now();
        for room in rooms {
            self.members_update(&room, now, out);
        }
        for delivery in self.awaiting_trust.remove(&name.key()).unwrap_or_default() {
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
            let contact = self.contacts.get(&member.name);
            match self.contacts.sendable(&member.name) {
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
        let peer = match self.contacts.sendable(&user) {
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

    /// Alice's account in `dir`.
    async fn alice_account(dir: &Path) -> Account {
        Account::open(
            Profile::open(dir).unwrap(),
            fixture("alice"),
            Some(name("alice")),
        )
        .await
        .unwrap()
    }

    /// Alice's engine, registered, in the lobby with bob.
    async fn alice_with_bob(bob: &Identity) -> (Engine, tempfile::TempDir) {
        alice_with_bob_limits(bob, SessionLimits::default()).await
    }

    async fn alice_with_bob_limits(
        bob: &Identity,
        limits: SessionLimits,
    ) -> (Engine, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let account = alice_account(dir.path()).await;
        let (engine, _) = alice_in_lobby_with(&account, bob, limits);
        (engine, dir)
    }

    fn alice_in_lobby_with(
        account: &Account,
        bob: &Identity,
        limits: SessionLimits,
    ) -> (Engine, Vec<Update>) {
        let alice = fixture("alice");
        let (mut engine, history) = Engine::new(account, &[RoomName::lobby()], limits).unwrap();
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
        (engine, history)
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
            Bob::start_in(
                Conversation::room("lobby"),
                identity,
                alice,
                epoch,
                first,
                now_secs(),
            )
        }

        fn start_in(
            conversation: Conversation,
            identity: Arc<Identity>,
            alice: &PublicIdentity,
            epoch: u32,
            first: u64,
            created_at: u64,
        ) -> Bob {
            let (session, mut announcements) = SendingSession::start(
                &mut rand::rng(),
                &identity,
                conversation,
                epoch,
                first,
                created_at,
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

    #[tokio::test]
    async fn a_message_sent_to_bob_in_capitals_and_one_from_bob_share_one_chat() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let direct = Conversation::direct(alice.fingerprint(), bob_identity.fingerprint());
        let mut bob = Bob::start_in(direct, bob_identity, alice.public(), 1, 0, now_secs());
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        // The user typed `/msg BOB hi`: the app opened `@BOB`.
        let typed = Chat::Direct(name("BOB"));
        let mut out = Out::default();
        engine.handle_command(
            Command::Send {
                chat: typed.clone(),
                text: "hi".into(),
            },
            &mut out,
        );
        let sent = messages(&out.updates)[0].clone();
        // bob answers in the direct conversation.
        feed(
            &mut engine,
            RelayFrame::Deliver {
                delivery: 0,
                from: name("bob"),
                to: Destination::User(name("alice")),
                body: PeerBody::Announcement(bob.announcement.clone())
                    .encode()
                    .into(),
                slot: None,
            },
        );
        let sealed = bob.seal("hello");
        let updates = feed(
            &mut engine,
            deliver(&sealed, Destination::User(name("alice"))),
        );
        let received = messages(&updates)[0].clone();
        assert_eq!(received.text, "hello");
        assert_eq!(sent.chat, typed);
        assert_eq!(received.chat, typed);
        let threads: HashSet<Chat> = [typed.clone(), sent.chat, received.chat].into();
        assert_eq!(threads.len(), 1);
        let ordered: BTreeSet<Chat> = [typed, Chat::Direct(name("bob"))].into();
        assert_eq!(ordered.len(), 1);
    }

    fn feed_out(engine: &mut Engine, frame: RelayFrame) -> Out {
        let mut out = Out::default();
        engine.handle_frame(frame, &mut out);
        out
    }

    fn acked(out: &Out, delivery: u64) -> bool {
        out.frames
            .iter()
            .any(|f| matches!(f, ClientFrame::Ack { delivery: d } if *d == delivery))
    }

    fn errors(updates: &[Update]) -> Vec<&str> {
        updates
            .iter()
            .filter_map(|u| match u {
                Update::Error(e) => Some(e.as_str()),
                _ => None,
            })
            .collect()
    }

    /// `announcement` from bob as the stored delivery number `delivery`.
    fn announce_stored(announcement: &Announcement, delivery: u64) -> RelayFrame {
        let RelayFrame::Deliver {
            from,
            to,
            body,
            slot,
            ..
        } = announce(announcement)
        else {
            unreachable!()
        };
        RelayFrame::Deliver {
            delivery,
            from,
            to,
            body,
            slot,
        }
    }

    #[tokio::test]
    async fn a_store_read_failure_is_retried_and_never_overwrites_the_stored_sessions() {
        let alice = fixture("alice");
        let mut first = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let second = Bob::start(fixture("bob"), alice.public(), 2, 10);
        let (mut engine, _dir) = alice_with_bob(&first.identity).await;
        assert!(feed(&mut engine, announce(&first.announcement)).is_empty());
        let (table, id) = engine
            .store
            .inbound_record(first.identity.fingerprint(), &Conversation::room("lobby"));
        let sealed = engine.store.vault().get_raw(table, &id).unwrap();
        // The record is damaged on disk, and the engine reads it afresh (as
        // after a restart).
        engine
            .store
            .vault()
            .put_raw(table, &id, b"damaged")
            .unwrap();
        engine.inbound.clear();
        let out = feed_out(&mut engine, announce_stored(&second.announcement, 7));
        assert!(!acked(&out, 7), "{out:?}");
        assert_eq!(errors(&out.updates).len(), 1, "{:?}", out.updates);
        // Nothing was written over the stored state.
        assert_eq!(
            engine.store.vault().get_raw(table, &id).unwrap(),
            b"damaged".to_vec()
        );
        // Once the record reads again, the redelivery is accepted and the
        // first session is still kept beside the new one.
        engine.store.vault().put_raw(table, &id, &sealed).unwrap();
        let out = feed_out(&mut engine, announce_stored(&second.announcement, 7));
        assert!(acked(&out, 7), "{out:?}");
        let updates = feed(&mut engine, deliver(&first.seal("epoch 1"), lobby()));
        assert_eq!(messages(&updates)[0].text, "epoch 1");
        // And the epoch floor held: epoch 1 again is a replay.
        let before = engine.identity.rsa_decryptions();
        assert!(feed(&mut engine, announce(&first.announcement)).is_empty());
        assert_eq!(engine.identity.rsa_decryptions(), before);
    }

    #[tokio::test]
    async fn a_damaged_history_record_is_skipped_and_reported_and_the_rest_kept() {
        let bob = fixture("bob");
        let dir = tempfile::tempdir().unwrap();
        let account = alice_account(dir.path()).await;
        {
            let (mut engine, _) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
            for text in ["one", "two"] {
                let mut out = Out::default();
                engine.handle_command(
                    Command::Send {
                        chat: Chat::Room(RoomName::lobby()),
                        text: text.into(),
                    },
                    &mut out,
                );
            }
            let vault = engine.store.vault();
            vault
                .put_raw(Store::HISTORY_TABLE, &[0; 28], b"not a sealed record")
                .unwrap();
        }
        let (_, history) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
        let shown: Vec<&str> = history
            .iter()
            .filter_map(|u| match u {
                Update::History { messages, .. } => Some(messages),
                _ => None,
            })
            .flatten()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(shown, ["one", "two"]);
        assert_eq!(errors(&history), [skipped_history(1)]);
    }

    #[tokio::test]
    async fn sessions_made_long_ago_or_in_the_future_are_refused_on_receipt() {
        let alice = fixture("alice");
        let bob_identity = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob_identity).await;
        let lobby_conversation = Conversation::room("lobby");
        for created_at in [0, 1 << 40] {
            let bob = Bob::start_in(
                lobby_conversation.clone(),
                bob_identity.clone(),
                alice.public(),
                7,
                0,
                created_at,
            );
            let before = engine.identity.rsa_decryptions();
            // As often as bob's whole allowance: signed but out of date,
            // they must not spend it (the current session below still
            // gets through).
            for _ in 0..SessionLimits::default().announcement_burst {
                let updates = feed(&mut engine, announce(&bob.announcement));
                assert!(
                    matches!(updates[..], [Update::Rejected { .. }]),
                    "{created_at}: {updates:?}"
                );
            }
            assert_eq!(engine.identity.rsa_decryptions(), before);
        }
        // A session accepted long ago (kept from an earlier run) no longer
        // opens anything.
        let created_at = now_secs()
            - sotto_crypto::MAX_SESSION_AGE.as_secs()
            - sotto_crypto::MAX_DELIVERY_DELAY.as_secs()
            - sotto_crypto::MAX_CLOCK_SKEW.as_secs()
            - 60;
        let mut old = Bob::start_in(
            lobby_conversation.clone(),
            bob_identity.clone(),
            alice.public(),
            8,
            0,
            created_at,
        );
        let session = alice
            .accept(&mut rand::rng(), &old.announcement, bob_identity.public())
            .unwrap();
        engine.inbound.insert(
            (bob_identity.fingerprint(), lobby_conversation),
            Inbound {
                max_epoch: 8,
                sessions: vec![Receiving {
                    session,
                    window: ReplayWindow::starting_at(0),
                    missing: BTreeSet::new(),
                }],
            },
        );
        let updates = feed(&mut engine, deliver(&old.seal("too old"), lobby()));
        assert!(
            matches!(updates[..], [Update::Rejected { .. }]),
            "{updates:?}"
        );
        // A current session still works.
        let mut fresh = Bob::start(bob_identity.clone(), alice.public(), 9, 1);
        feed(&mut engine, announce(&fresh.announcement));
        let updates = feed(&mut engine, deliver(&fresh.seal("fresh"), lobby()));
        assert_eq!(messages(&updates)[0].text, "fresh");
    }

    /// `count` announcements claiming bob, each a new session, none signed.
    fn forgeries(genuine: &Announcement, count: u8) -> Vec<Announcement> {
        (0..count)
            .map(|n| {
                let mut forged = genuine.clone();
                forged.context.session_id = SessionId([n.wrapping_add(100); 16]);
                forged.context.epoch += u32::from(n) + 1;
                forged.signature[0] ^= 1;
                forged
            })
            .collect()
    }

    #[tokio::test]
    async fn forged_announcements_are_blamed_on_the_relay_and_spend_none_of_the_senders_allowance()
    {
        let alice = fixture("alice");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1_000, 0);
        let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
        let limits = SessionLimits::default();
        let count = u8::try_from(limits.announcement_burst + 5).unwrap();
        let before = engine.identity.rsa_decryptions();
        for forged in forgeries(&bob.announcement, count) {
            let updates = feed(&mut engine, announce(&forged));
            assert!(
                matches!(updates[..], [Update::Rejected { .. }]),
                "{updates:?}"
            );
        }
        assert_eq!(engine.identity.rsa_decryptions(), before);
        // bob's real announcement still opens his messages.
        assert!(feed(&mut engine, announce(&bob.announcement)).is_empty());
        let updates = feed(&mut engine, deliver(&bob.seal("real"), lobby()));
        assert_eq!(messages(&updates)[0].text, "real");
        // The relay is named, once, with the count.
        let mut out = Out::default();
        engine.tick(Instant::now(), &mut out);
        assert_eq!(
            errors(&out.updates),
            [forged_announcements(u64::from(count), "bob")]
        );
        let mut out = Out::default();
        engine.tick(Instant::now(), &mut out);
        assert!(errors(&out.updates).is_empty());
    }

    #[tokio::test]
    async fn checking_forgeries_is_bounded_by_a_budget_shared_by_all_senders() {
        let alice = fixture("alice");
        let bob = Bob::start(fixture("bob"), alice.public(), 1_000, 0);
        let limits = SessionLimits {
            verification_burst: 3,
            verifications_per_second: 0,
            ..SessionLimits::default()
        };
        let (mut engine, _dir) = alice_with_bob_limits(&bob.identity, limits).await;
        let mut rejected = 0;
        for forged in forgeries(&bob.announcement, 5) {
            let updates = feed(&mut engine, announce(&forged));
            rejected += updates
                .iter()
                .filter(|u| matches!(u, Update::Rejected { .. }))
                .count();
        }
        assert_eq!(rejected, 3);
        let mut out = Out::default();
        engine.tick(Instant::now(), &mut out);
        assert_eq!(
            errors(&out.updates),
            [
                forged_announcements(3, "bob"),
                "the relay delivered key announcements faster than they can be checked: 2 dropped unchecked".to_owned()
            ]
        );
    }

    #[tokio::test]
    async fn a_presence_flood_sends_each_change_once_and_the_member_list_once_per_interval() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let key = Bytes::from(fixture("mallory").public().to_bytes());
        let mut updates = Vec::new();
        for i in 0..50 {
            updates.extend(feed(
                &mut engine,
                RelayFrame::Presence {
                    room: RoomName::lobby(),
                    user: name(&format!("flood{i}")),
                    event: PresenceEvent::Joined,
                    identity: Some(key.clone()),
                },
            ));
        }
        let count =
            |updates: &[Update], f: fn(&Update) -> bool| updates.iter().filter(|u| f(u)).count();
        assert_eq!(
            count(&updates, |u| matches!(u, Update::Presence { .. })),
            50
        );
        assert_eq!(
            count(&updates, |u| matches!(
                u,
                Update::Key(KeyEvent::Pinned { .. })
            )),
            50
        );
        // The whole list went out with the first change only (the list was
        // sent on joining the room, so not even then)...
        assert!(count(&updates, |u| matches!(u, Update::Members { .. })) <= 1);
        // ...and goes out, complete, at the first tick after the interval.
        let mut out = Out::default();
        engine.tick(Instant::now() + Duration::from_secs(2), &mut out);
        let lists: Vec<usize> = out
            .updates
            .iter()
            .filter_map(|u| match u {
                Update::Members { members, .. } => Some(members.len()),
                _ => None,
            })
            .collect();
        assert_eq!(lists, [52]);
        // The new contacts were saved at that tick, one record each.
        let stored = engine.store.contacts().unwrap();
        assert!(stored.get(&name("flood49")).is_some());
    }
}
