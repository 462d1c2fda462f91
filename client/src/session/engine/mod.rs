//! The session state machine: everything between relay frames and what the
//! user sees, with no I/O but the encrypted store. The rules it applies are
//! those of docs/protocol.md, sections 14.3 and 17-19.
//!
//! # Layout
//!
//! One [`Engine`] struct owns the state; its methods are grouped by concern,
//! one module each, and each can be read alone:
//!
//! - this module: the struct, loading the account's state and history, the
//!   connection lifecycle and housekeeping (`tick`), and the entry points,
//!   [`Engine::handle_frame`] and [`Engine::handle_command`], which only
//!   dispatch;
//! - [`batch`]: [`Engine::handle_frames`], the frames of one read handled
//!   as one store batch, committed once before anything they produced
//!   leaves;
//! - [`limits`]: [`SessionLimits`], every bound the engine applies;
//! - [`rooms`]: rooms, their members and the roster views messages are
//!   compared with (P7);
//! - [`keys`]: pinning peers' keys, key lookups, trust decisions and safety
//!   numbers (P6);
//! - [`inbound`]: deliveries: announcements (no rollback, the signature
//!   budget, the per-sender allowance), messages held for their
//!   announcement, and opening, windowing and recording a message;
//! - [`outbound`]: sending: sealing, the outbox of messages typed while
//!   disconnected, and the drain before quitting;
//! - [`pairs`]: keeping a sending session's recipients in step (restarts,
//!   joins wrapped to prekeys under one signature, leaves), and pair
//!   replies both ways;
//! - [`placement`]: where a message goes in its chat (17.4);
//! - [`delivery`]: how far each sent message got (the relay's answers,
//!   the recipients' receipts) and the receipts this client sends;
//! - [`recovery`]: asking for a session key whose announcement never
//!   came, and answering such requests;
//! - [`timers`]: disappearing messages: each conversation's timer, the
//!   expiry of what was sent and stored under one, the sweep that deletes
//!   it and the compaction after.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{Conversation, Fingerprint, Identity, PublicIdentity, SessionId};
use sotto_proto::{ClientFrame, RelayFrame, RoomName, UserKey, UserName};

use super::prekeys::{Prekeys, Refusal};
use super::{
    Answers, Chat, Command, DeliveryState, Message, OnlineUser, Problem, ProblemCode, TrustLevel,
    Update,
};
use crate::account::Account;
use crate::contacts::{Contacts, KeyEvent, Trust, TrustError};
use crate::store::{Inbound, Position, RoomSettings, Store, StoreError, StoredEntry};

mod batch;
mod delivery;
pub(crate) mod files;
mod inbound;
mod keys;
mod limits;
mod outbound;
mod pairs;
mod placement;
mod recovery;
mod rooms;
#[cfg(test)]
mod testing;
mod timers;

use inbound::{Bucket, Delivery, Held};
use keys::{Awaiting, trust_level};
use outbound::Outbound;
use rooms::{Room, room_set};

pub use limits::SessionLimits;

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

    /// Tells the user of a problem of kind `code`.
    fn error(&mut self, code: ProblemCode, message: impl Into<String>) {
        self.problem(Problem::new(code, message));
    }

    fn problem(&mut self, problem: Problem) {
        self.updates.push(Update::Error(problem));
    }
}

/// Whether to keep going after a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Quit,
}

/// The session clock's milliseconds since the Unix epoch (`session::clock`).
pub(super) fn now_ms() -> u64 {
    super::clock::now_ms()
}

pub(super) fn now_secs() -> u64 {
    now_ms() / 1000
}

/// The kind of a refused trust decision.
/// The uploads an earlier run left unfinished.
fn store_uploads(account: &Account) -> Result<Vec<crate::store::UploadRecord>, StoreError> {
    account.store().uploads()
}

fn trust_problem(error: &TrustError) -> ProblemCode {
    match error {
        TrustError::Unknown(_) => ProblemCode::NoKeyYet,
        TrustError::Mismatch(_) => ProblemCode::WrongSafetyNumber,
        TrustError::NothingToAccept(_) => ProblemCode::BadCommand,
    }
}

/// What the user is told when stored messages could not be read.
pub(crate) fn skipped_history(count: usize) -> String {
    match count {
        1 => "1 stored message is damaged and could not be read: skipped, the rest of the history is shown".to_owned(),
        n => format!("{n} stored messages are damaged and could not be read: skipped, the rest of the history is shown"),
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
    /// Rooms the user left while disconnected, still to leave at the relay
    /// (stored: the user stays a member there until the relay is told).
    leaving: BTreeSet<RoomName>,
    /// The rooms of `leaving` a `Leave` was sent for on this connection.
    leave_sent: BTreeSet<RoomName>,
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
    /// Texts typed while they could not be sealed (disconnected, or the
    /// room not joined yet): id, chat, text; kept in the store too.
    outbox: VecDeque<(u64, Chat, String)>,
    /// The id of the outbox text being sealed now, for its record.
    sealing_typed: Option<u64>,
    /// The least id of the next text to enter the outbox.
    next_typed: u64,
    /// The sends of this connection the relay has not confirmed yet, by
    /// route id (a cumulative `Sent` confirms every id up to its own),
    /// with the message each carried.
    sends: BTreeMap<u64, delivery::Sending>,
    /// Receipts for what the open read batch stores.
    receipts_due: delivery::ReceiptsDue,
    /// Conversations whose newest message of this client's may need a
    /// heartbeat.
    heartbeats: HashMap<Conversation, delivery::Heartbeat>,
    /// Messages sealed whose `Sent` has not come, oldest first: sent again
    /// on the next connection (kept in the store too).
    unsent: Vec<crate::store::UnsentRecord>,
    /// Sealed receipts, heartbeats and key requests whose `Sent` has not
    /// come: sent again on the next connection, like `unsent`, but kept in
    /// memory only (each takes a sequence number, so one lost with a
    /// connection would show its recipient a message missing).
    unsent_unkept: Vec<crate::store::UnsentRecord>,
    /// Sessions whose announcement this client asked a sender for.
    keys_requested: HashSet<(Fingerprint, SessionId)>,
    /// When this client last sent an announcement again on request, per
    /// requester and session.
    reannounced: HashMap<(Fingerprint, SessionId), Instant>,
    /// The next route id: ids only grow, over every connection of this
    /// engine (the relay refuses a `Send` whose id does not exceed the
    /// previous one on the connection).
    next_route: u64,
    /// Set by `Quit` while messages still wait to be sent.
    quitting: Option<Instant>,
    /// Disappearing messages: timers, expiries, compaction.
    timers: timers::Timers,
    /// This client's prekeys and its contacts' (`session::prekeys`).
    prekeys: Prekeys,
    /// The prekeys the frame being handled handed out, by owner, until
    /// taken (`Engine::take_handed_prekeys`).
    handed_prekeys: HashMap<UserKey, (UserName, Vec<Bytes>)>,
    /// When expired receiving sessions were last deleted.
    pruned_at: Option<Instant>,
    /// Files being sent and saved, and the offers of the history's.
    files: files::Transfers,
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
        let leaving = room_set(&store.rooms_to_leave()?);
        let wanted = match store.joined_rooms()? {
            Some(rooms) => room_set(&rooms),
            None => {
                // First run: these rooms are the user's rooms from now on.
                let rooms: Vec<String> = first_rooms.iter().map(|r| r.to_string()).collect();
                store.set_joined_rooms(&rooms)?;
                first_rooms.iter().cloned().collect()
            }
        };
        let prekeys = Prekeys::load(
            account.identity().clone(),
            store.clone(),
            limits.prekeys.clone(),
            &contacts,
            now_secs(),
        )?;
        let mut engine = Self {
            prekeys,
            handed_prekeys: HashMap::new(),
            pruned_at: None,
            identity: account.identity().clone(),
            me: account.identity().fingerprint(),
            name: account.name().clone(),
            store,
            contacts,
            limits,
            connected: false,
            rooms: BTreeMap::new(),
            wanted,
            leaving,
            leave_sent: BTreeSet::new(),
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
            sealing_typed: None,
            next_typed: 0,
            sends: BTreeMap::new(),
            receipts_due: delivery::ReceiptsDue::default(),
            heartbeats: HashMap::new(),
            unsent: Vec::new(),
            unsent_unkept: Vec::new(),
            keys_requested: HashSet::new(),
            reannounced: HashMap::new(),
            next_route: 1,
            quitting: None,
            timers: timers::Timers::default(),
            files: files::Transfers::load(account.profile().dir(), store_uploads(account)?),
        };
        // What expired while the client was not running goes before
        // anything is read or shown.
        engine.timers = timers::Timers::load(&engine.store)?;
        let mut swept = Out::default();
        engine.sweep_expired(now_ms(), &mut swept);
        engine.compact_if_due(Instant::now(), true, &mut swept);
        engine.unsent = engine.store.all_unsent()?;
        // Texts typed before a restart, less any sealed meanwhile (sealing
        // records which typed text it was, in the same transaction).
        let sealed: HashSet<u64> = engine
            .store
            .all_outgoing()?
            .into_iter()
            .filter_map(|(_, record)| record.typed)
            .collect();
        for (id, chat, text) in engine.store.outbox()? {
            if sealed.contains(&id) {
                // Sealed just before a crash: its record outlived it.
                engine.store.remove_outbox(id)?;
            } else {
                engine.outbox.push_back((id, chat, text));
            }
            engine.next_typed = engine.next_typed.max(id.saturating_add(1));
        }
        let history = engine.store.history()?;
        engine.arrival = history.last;
        let mut sent: HashMap<(Chat, u64), crate::store::OutgoingRecord> = engine
            .store
            .all_outgoing()?
            .into_iter()
            .map(|(seq, record)| ((record.chat.clone(), seq), record))
            .collect();
        let mut chats: BTreeMap<Chat, Vec<Message>> = BTreeMap::new();
        let expiries = engine.timers.by_history_key();
        let mut offers = history.files;
        for (position, entry) in history.entries {
            let history_key = (!expiries.is_empty() || !offers.is_empty())
                .then(|| engine.store.history_record_key(&entry, position));
            let expires_at_ms = history_key
                .as_ref()
                .and_then(|key| expiries.get(key))
                .copied();
            let offer = history_key.as_ref().and_then(|key| offers.remove(key));
            let late = position.rank != Position::IN_ORDER;
            if !late {
                engine.remember_place(&entry.chat, entry.fingerprint, entry.seq, position.anchor);
            }
            let record = entry
                .outgoing
                .then(|| sent.remove(&(entry.chat.clone(), entry.seq)))
                .flatten();
            let mut message = engine.message_of(entry, position);
            message.expires_at_ms = expires_at_ms;
            if let Some(offer) = offer {
                message.file = Some(Box::new(super::FileInfo::of(&offer)));
                engine.files.remember(&message.chat, message.id(), offer);
            }
            if message.outgoing {
                // A message sent before delivery states were kept: sent.
                message.delivery = Some(record.as_ref().map_or_else(
                    || super::Delivery {
                        state: DeliveryState::Sent,
                        ..super::Delivery::default()
                    },
                    super::Delivery::of,
                ));
            }
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
        updates.extend(engine.timers.updates());
        updates.extend(
            swept
                .updates
                .into_iter()
                .filter(|u| matches!(u, Update::Error(_))),
        );
        if history.skipped > 0 {
            updates.push(Update::Error(Problem::new(
                ProblemCode::HistoryDamaged,
                skipped_history(history.skipped),
            )));
        }
        if let Some((sessions, unsent)) = engine.store.take_migrated()? {
            updates.push(Update::Error(Problem::new(
                ProblemCode::Migrated,
                format!(
                    "this data directory was written by an earlier sotto: its {sessions} received session keys were dropped (your contacts' next sessions replace them), and {unsent} messages it had not yet sent are marked failed: send them again"
                ),
            )));
        }
        // What an earlier run typed and did not seal: pending at once.
        if !engine.outbox.is_empty() {
            updates.push(Update::Queued(
                engine
                    .outbox
                    .iter()
                    .map(|(id, chat, text)| super::Queued {
                        chat: chat.clone(),
                        // Ids are at least the typing time in µs.
                        typed_at_ms: id / 1000,
                        text: text.clone(),
                    })
                    .collect(),
            ));
        }
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
            delivery: None,
            expires_at_ms: None,
            file: None,
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

    /// A new route id, greater than every one before it (2^64 sends are
    /// out of reach, so the id saturates rather than wraps).
    fn route_id(&mut self) -> u64 {
        let id = self.next_route;
        self.next_route = self.next_route.saturating_add(1);
        id
    }

    // ----- connection lifecycle -------------------------------------------

    /// The relay registered us: join the rooms we want to be in, leave
    /// those left while disconnected, and send what waited for the
    /// connection.
    pub(crate) fn on_registered(&mut self, name: UserName, out: &mut Out) {
        self.connected = true;
        self.name = name;
        self.rejoin(out);
        // Key lookups of the last connection went with it: asked again.
        for key in self.awaiting_key.keys() {
            out.frames.push(ClientFrame::LookupKey {
                name: key.to_name(),
            });
        }
        // Direct messages whose `Sent` never came go again now; a room's,
        // once its `Joined` gives the current members.
        self.resend_unsent(|chat| matches!(chat, Chat::Direct(_)), out);
        let waiting: Vec<(u64, Chat, String)> = self.outbox.drain(..).collect();
        for (id, chat, text) in waiting {
            match &chat {
                // Rooms are flushed when `Joined` confirms membership.
                Chat::Room(_) => self.outbox.push_back((id, chat, text)),
                Chat::Direct(_) => self.send_typed(id, chat, text, out),
            }
        }
    }

    /// The connection ended: the rosters are the relay's to report again
    /// (membership outlasts the connection: the relay sends `Joined` for
    /// each room on the next one), and stored deliveries not yet
    /// acknowledged will come again.
    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
        self.pause_transfers();
        self.prekeys.on_disconnected();
        self.rooms.clear();
        self.leave_sent.clear();
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
        self.compact_if_due(Instant::now(), true, &mut Out::default());
    }

    /// Periodic housekeeping: gives up messages whose announcement never
    /// came, reports forgeries, forgets old roster views, saves new pins and
    /// sends the member lists that were held back.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Out) {
        self.give_up_held(now, out);
        self.report_forgeries(out);
        self.forget_old_views(now);
        self.save_contacts(out);
        self.send_due_member_lists(now, out);
        self.send_due_heartbeats(now, out);
        self.request_missing_keys(now, out);
        self.prune_sessions(now, out);
        self.expire(now, out);
        self.prekey_housekeeping(out);
        self.retry_transfers(now, out);
    }

    /// At the first tick and every hour: receiving sessions past their age
    /// are deleted, from memory and from the store, and the store is then
    /// compacted (as after disappearing messages) so that their keys leave
    /// the file (docs/threat-model.md 11).
    fn prune_sessions(&mut self, now: Instant, out: &mut Out) {
        if self
            .pruned_at
            .is_some_and(|at| now.duration_since(at) < limits::PRUNE_EVERY)
        {
            return;
        }
        self.pruned_at = Some(now);
        let secs = now_secs();
        for inbound in self.inbound.values_mut() {
            inbound.sessions.retain(|r| r.session.is_current(secs));
        }
        match self.store.prune_inbound(secs) {
            Ok(0) => {}
            Ok(_) => self.timers.compaction_due = true,
            Err(e) => out.error(
                ProblemCode::Storage,
                format!("could not delete expired session keys: {e}"),
            ),
        }
    }

    /// Deletes what expired and compacts the store when that is due (also
    /// called while waiting to reconnect).
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Out) {
        self.sweep_expired(now_ms(), out);
        self.compact_if_due(now, false, out);
    }

    // ----- prekeys (session::prekeys) ----------------------------------------

    /// Before the first connection: makes this client's first prekey (on
    /// the blocking pool) if it has no valid one, so that its first
    /// registration publishes it at once. An error is reported; the
    /// prekey is then made after registering, as usual.
    pub(crate) async fn prepare_prekey(&mut self) -> Option<Problem> {
        let job = self.prekeys.first_job(now_secs())?;
        let made = tokio::task::spawn_blocking(job).await.ok()?;
        self.prekeys.keep_made(made).err().map(|e| {
            Problem::new(
                ProblemCode::Storage,
                format!("could not store a prekey: {e}"),
            )
        })
    }

    /// Registered at a relay that keeps deliveries `offline_max_age`
    /// seconds: publishes this client's valid prekeys, and starts making
    /// one if none is fresh.
    pub(crate) fn publish_prekeys(&mut self, offline_max_age: u64, out: &mut Out) {
        let frames = self.prekeys.on_registered(offline_max_age, now_secs());
        out.frames.extend(frames);
    }

    /// Takes a prekey made meanwhile (and publishes it), rotates, deletes
    /// expired secrets, and reports prekeys the relay handed out wrongly.
    fn prekey_housekeeping(&mut self, out: &mut Out) {
        match self.prekeys.tick(now_secs()) {
            Ok(frames) => out.frames.extend(frames),
            Err(e) => out.error(
                ProblemCode::Storage,
                format!("could not store or delete a prekey: {e}"),
            ),
        }
        for (name, how) in self.prekeys.take_refused() {
            let what = match how {
                Refusal::Forged => {
                    format!("a prekey for {name} that {name}'s pinned key did not sign")
                }
                Refusal::Replayed => {
                    format!("only older prekeys for {name} than one already taken")
                }
            };
            out.error(
                ProblemCode::ForgedPrekey,
                format!("the relay handed out {what}: refused"),
            );
        }
    }

    /// Takes the prekeys a relay frame handed out, for contacts pinned
    /// (by the frame itself, if it was the first sight) and not waiting
    /// for a decision on a changed key.
    fn observe_prekeys(&mut self, handed: Vec<(UserName, Vec<Bytes>)>, out: &mut Out) {
        let now = now_secs();
        for (name, prekeys) in handed {
            let Some(contact) = self.contacts.get(&name) else {
                continue;
            };
            if matches!(contact.trust, Trust::Changed { .. }) {
                continue;
            }
            let pinned = Arc::clone(&contact.identity);
            if let Err(e) = self.prekeys.observe(&name, &pinned, &prekeys, now) {
                out.error(
                    ProblemCode::Storage,
                    format!("could not store a prekey of {name}: {e}"),
                );
            }
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

    /// Handles one frame as a store batch of its own (see
    /// [`Engine::handle_frames`], which the connection loop calls with
    /// every frame already read).
    pub(crate) fn handle_frame(&mut self, frame: RelayFrame, out: &mut Out) {
        self.handle_frames([frame], out);
    }

    /// Dispatches one frame; what it stores goes into the open batch.
    fn on_frame(&mut self, frame: RelayFrame, out: &mut Out) {
        // Prekeys are taken as soon as their owner's key is pinned (the
        // frame may pin it: `observe`), before anything is sealed to it;
        // those of owners the frame did not pin after it.
        let handed: Vec<(UserName, Vec<Bytes>)> = match &frame {
            RelayFrame::Joined { members, .. } => members
                .iter()
                .filter(|m| !m.prekeys.is_empty())
                .map(|m| (m.name.clone(), m.prekeys.clone()))
                .collect(),
            RelayFrame::Presence { user, prekeys, .. }
            | RelayFrame::Key {
                name: user,
                prekeys,
                ..
            } if !prekeys.is_empty() => {
                vec![(user.clone(), prekeys.clone())]
            }
            _ => Vec::new(),
        };
        self.handed_prekeys = handed.into_iter().map(|(n, p)| (n.key(), (n, p))).collect();
        self.dispatch_frame(frame, out);
        if !self.handed_prekeys.is_empty() {
            let left: Vec<(UserName, Vec<Bytes>)> = std::mem::take(&mut self.handed_prekeys)
                .into_values()
                .collect();
            self.observe_prekeys(left, out);
        }
    }

    /// The prekeys the frame being handled handed out for `name`, taken
    /// now that its key is pinned (`keys::observe`).
    pub(super) fn take_handed_prekeys(&mut self, name: &UserName, out: &mut Out) {
        if let Some(handed) = self.handed_prekeys.remove(&name.key()) {
            self.observe_prekeys(vec![handed], out);
        }
    }

    fn dispatch_frame(&mut self, frame: RelayFrame, out: &mut Out) {
        match frame {
            RelayFrame::Joined { room, members } => self.on_joined(room, members, out),
            RelayFrame::Left { room } => self.on_left(room, out),
            RelayFrame::Presence {
                room,
                user,
                event,
                identity,
                ..
            } => self.on_presence(room, user, event, identity, out),
            RelayFrame::Rooms { rooms } => out.update(Update::Rooms(rooms)),
            RelayFrame::Users { users } => {
                let users = users
                    .into_iter()
                    .map(|u| OnlineUser {
                        trust: if self.is_me(&u.name) {
                            TrustLevel::Verified
                        } else {
                            self.trust_of(&u.name)
                        },
                        name: u.name,
                        rooms: u.rooms,
                    })
                    .collect();
                out.update(Update::Users(users));
            }
            RelayFrame::Key { name, identity, .. } => self.on_key(name, identity, out),
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
            RelayFrame::Sent { id } => self.on_sent(id, out),
            RelayFrame::Error { id, code, message } => {
                if self.left_already(id, code, &message, out) {
                    return;
                }
                match id {
                    Some(id) => self.on_refused(id, code, &message, out),
                    None => out.error(
                        ProblemCode::Relay(code),
                        format!("relay: {message} ({code:?})"),
                    ),
                }
            }
            RelayFrame::Undelivered { id, code, users } => {
                self.on_undelivered(id, code, &users, out);
                self.mark_refused(id, &users, out);
            }
            RelayFrame::Ping { nonce } => out.frames.push(ClientFrame::Pong { nonce }),
            // Registration and shutdown are the connection's business.
            RelayFrame::Pong { .. }
            | RelayFrame::Challenge { .. }
            | RelayFrame::Registered { .. }
            | RelayFrame::KeyHandover { .. }
            | RelayFrame::PrekeyPublished { .. }
            | RelayFrame::ShuttingDown => {}
            frame @ (RelayFrame::ChunkStored { .. }
            | RelayFrame::Chunk { .. }
            | RelayFrame::BlobState { .. }
            | RelayFrame::BlobRefused { .. }) => self.on_blob_frame(frame, out),
        }
    }

    // ----- commands -------------------------------------------------------

    pub(crate) fn handle_command(&mut self, command: Command, out: &mut Out) -> Flow {
        match command {
            Command::Send { chat, text } => self.send_text(chat, text, out),
            Command::SendFile { chat, path } => self.send_file(chat, path, out),
            Command::SaveFile { chat, message, to } => self.save_file(chat, message, to, out),
            Command::Join(room) => self.join_command(room, out),
            Command::Leave(room) => self.leave_command(room, out),
            Command::ListUsers => self.when_connected(ClientFrame::ListUsers, Answers::Users, out),
            Command::ListRooms => self.when_connected(ClientFrame::ListRooms, Answers::Rooms, out),
            Command::SafetyNumber(name) => {
                let problem = if self.is_me(&name) {
                    Problem::new(
                        ProblemCode::Yourself,
                        "that is you: compare safety numbers with someone else",
                    )
                } else if self.contacts.get(&name).is_some() {
                    self.show_safety_number(&name, out);
                    return Flow::Continue;
                } else if self.connected {
                    self.await_key(&name, out).show_safety_number = true;
                    return Flow::Continue;
                } else {
                    Problem::new(
                        ProblemCode::NoKeyYet,
                        format!("no key is known for {name} yet"),
                    )
                };
                out.problem(problem.answering(Answers::SafetyNumber { name }));
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
                    Err(e) => out.problem(
                        Problem::new(trust_problem(&e), e.to_string())
                            .answering(Answers::Trust { name }),
                    ),
                }
            }
            Command::AcceptKey(name) => match self.contacts.accept_new_key(&name) {
                Ok(_) => self.trust_changed(&name, out),
                Err(e) => out.problem(
                    Problem::new(trust_problem(&e), e.to_string())
                        .answering(Answers::Trust { name }),
                ),
            },
            Command::SetVerifiedOnly { room, on } => {
                let settings = RoomSettings { verified_only: on };
                if let Err(e) = self.store.set_room_settings(room.as_str(), &settings) {
                    out.error(
                        ProblemCode::Storage,
                        format!("could not save the setting: {e}"),
                    );
                    return Flow::Continue;
                }
                if let Some(entry) = self.rooms.get_mut(&room) {
                    entry.settings = settings;
                }
                out.update(Update::VerifiedOnly { room, on });
            }
            Command::SetTimer { chat, seconds } => self.set_timer_command(chat, seconds, out),
            Command::ShowTimer(chat) => self.show_timer(chat, out),
            // Only meaningful while waiting to reconnect (the connection
            // loop takes it there); connected, there is nothing to retry.
            Command::Reconnect => {}
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

    /// Sends `frame` if connected; otherwise the command it `answers`
    /// fails.
    pub(super) fn when_connected(&mut self, frame: ClientFrame, answers: Answers, out: &mut Out) {
        if self.connected {
            out.frames.push(frame);
        } else {
            out.problem(
                Problem::new(ProblemCode::NotConnected, "not connected to the relay")
                    .answering(answers),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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
        assert_eq!(history_texts(&history), ["one", "two"]);
        assert_eq!(errors(&history), [skipped_history(1)]);
    }
}
