//! Disappearing messages (protocol.md 13.8 and 20.2): each conversation's
//! timer, which any member sets with a [`Content::Timer`]; the expiry of
//! every message sent or stored under a timer; and the sweep that deletes
//! what expired (history, outgoing and unsent records, the outbox) and then
//! compacts the store so the deleted records leave the file.
//!
//! The sweep runs when the engine starts and at every `tick` of the session
//! loop: it only looks at the earliest expiry (a sorted index in memory), so
//! a tick with nothing due costs nothing. Compaction follows a sweep that
//! deleted something, at most once per [`SessionLimits::compact_every`].
//!
//! [`SessionLimits::compact_every`]: super::SessionLimits::compact_every

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use sotto_crypto::{Conversation, Fingerprint};
use sotto_proto::UserName;

use super::{Engine, Out, now_ms};
use crate::session::content::{Content, MAX_TIMER_SECS};
use crate::session::{Chat, MessageId, Problem, ProblemCode, Queued, Update};
use crate::store::{ExpiringRecord, StoreError, TimerRecord};

/// What the engine knows of disappearing messages.
#[derive(Debug, Default)]
pub(super) struct Timers {
    /// Each chat's timer (chats without one are absent).
    timers: HashMap<Chat, TimerRecord>,
    /// Every message that expires, by when, then by its record key.
    expiring: BTreeMap<(u64, Vec<u8>), ExpiringRecord>,
    /// Deleted records wait for a compaction.
    pub(super) compaction_due: bool,
    /// When the store was last compacted by this engine.
    compacted_at: Option<Instant>,
    /// Messages this client sent that disappeared while a recipient's
    /// receipt was still awaited, with a heartbeat pending for them: the
    /// heartbeats still go (one message per conversation at most: a newer
    /// one takes its place).
    unreceipted: HashMap<Conversation, u64>,
}

impl Timers {
    /// The timers and expiring messages of the store.
    pub(super) fn load(store: &crate::store::Store) -> Result<Self, StoreError> {
        let timers = store
            .timers()?
            .into_iter()
            .map(|t| (t.chat.clone(), t))
            .collect();
        let expiring = store
            .all_expiring()?
            .into_iter()
            .map(|r| ((r.expires_at_ms, r.key()), r))
            .collect();
        Ok(Self {
            timers,
            expiring,
            compaction_due: false,
            compacted_at: None,
            unreceipted: HashMap::new(),
        })
    }

    /// The stored settings, as shown at start.
    pub(super) fn updates(&self) -> Vec<Update> {
        let mut timers: Vec<&TimerRecord> = self.timers.values().collect();
        timers.sort_by(|a, b| a.chat.cmp(&b.chat));
        timers
            .into_iter()
            .map(|t| Update::Timer {
                chat: t.chat.clone(),
                seconds: t.seconds,
                by: None,
            })
            .collect()
    }

    /// When each expiring history record disappears, by its key.
    pub(super) fn by_history_key(&self) -> HashMap<Vec<u8>, u64> {
        self.expiring
            .values()
            .filter_map(|r| Some((r.history.clone()?, r.expires_at_ms)))
            .collect()
    }

    /// `chat`'s timer in seconds (0: none).
    pub(super) fn of(&self, chat: &Chat) -> u64 {
        self.timers.get(chat).map_or(0, |t| t.seconds)
    }

    fn track(&mut self, record: ExpiringRecord) {
        // The outbox text it was sealed from (if any) is tracked by the
        // message now.
        if let (Some(_), Some(id)) = (&record.history, record.typed) {
            self.expiring
                .retain(|_, r| !(r.history.is_none() && r.typed == Some(id)));
        }
        self.expiring
            .insert((record.expires_at_ms, record.key()), record);
    }
}

/// `seconds` from `from_ms`, in ms (saturating).
fn expiry(from_ms: u64, seconds: u64) -> u64 {
    from_ms.saturating_add(seconds.saturating_mul(1000))
}

impl Engine {
    /// `chat`'s disappearing-message timer in seconds (0: none).
    pub(super) fn timer_of(&self, chat: &Chat) -> u64 {
        self.timers.of(chat)
    }

    /// The `expiring` record of a text this client sent under `seconds`
    /// and stored at `stored_ms`, or `None` without a timer.
    #[allow(clippy::too_many_arguments)] // the record's parts
    pub(super) fn sent_expiring(
        &self,
        chat: &Chat,
        seconds: u64,
        history: Vec<u8>,
        conversation: &Conversation,
        seq: u64,
        typed: Option<u64>,
        stored_ms: u64,
    ) -> Option<ExpiringRecord> {
        (seconds > 0).then(|| ExpiringRecord {
            expires_at_ms: expiry(stored_ms, seconds),
            chat: chat.clone(),
            id: Some((self.me, seq)),
            history: Some(history),
            sent: Some((conversation.clone(), seq)),
            typed,
        })
    }

    /// The `expiring` record of a text received under `seconds` and
    /// stored at `stored_ms`.
    pub(super) fn received_expiring(
        chat: &Chat,
        seconds: u64,
        history: Vec<u8>,
        sender: Fingerprint,
        seq: u64,
        stored_ms: u64,
    ) -> Option<ExpiringRecord> {
        (seconds > 0).then(|| ExpiringRecord {
            expires_at_ms: expiry(stored_ms, seconds),
            chat: chat.clone(),
            id: Some((sender, seq)),
            history: Some(history),
            sent: None,
            typed: None,
        })
    }

    /// A message's `expiring` record was stored: swept when it is due.
    pub(super) fn track_expiring(&mut self, record: ExpiringRecord) {
        self.timers.track(record);
    }

    /// A text entered the outbox as `id` under `chat`'s timer: it expires
    /// there too, from when it was typed.
    pub(super) fn typed_expiring(&mut self, id: u64, chat: &Chat, out: &mut Out) {
        let seconds = self.timer_of(chat);
        if seconds == 0 {
            return;
        }
        let record = ExpiringRecord {
            expires_at_ms: expiry(now_ms(), seconds),
            chat: chat.clone(),
            id: None,
            history: None,
            sent: None,
            typed: Some(id),
        };
        match self.store.set_expiring(&record) {
            Ok(()) => self.timers.track(record),
            Err(e) => out.error(
                ProblemCode::Storage,
                format!("could not store when a queued message disappears: {e}"),
            ),
        }
    }

    /// The user sets `chat`'s timer: every member is told (a
    /// [`Content::Timer`] sealed like a text), then it is stored and
    /// applies to what this client sends next.
    pub(super) fn set_timer_command(&mut self, chat: Chat, seconds: u64, out: &mut Out) {
        let answer = |message: String, code| {
            Problem::new(code, message)
                .answering(crate::session::Answers::Timer { chat: chat.clone() })
        };
        if seconds > MAX_TIMER_SECS {
            let message = format!(
                "{chat}: a disappearing-message timer is at most {}",
                crate::ui::words::duration(MAX_TIMER_SECS)
            );
            return out.problem(answer(message, ProblemCode::BadCommand));
        }
        if !self.connected {
            let message = format!("{chat}: not connected: the members could not be told");
            return out.problem(answer(message, ProblemCode::NotConnected));
        }
        let content = Content::Timer { seconds };
        match &chat {
            Chat::Room(room) => {
                if !self.rooms.contains_key(room) {
                    let message = format!("you are not in #{room}: /join {room} first");
                    return out.problem(answer(message, ProblemCode::NotInRoom));
                }
                self.send_content_to_room(room.clone(), content, out);
            }
            Chat::Direct(user) => {
                if self.is_me(user) {
                    let message = "that is you: set a timer with someone else".to_owned();
                    return out.problem(answer(message, ProblemCode::Yourself));
                }
                let peer = match self.contacts.sendable(user) {
                    Ok(peer) => peer.clone(),
                    Err(blocked) => {
                        let message = format!("@{user}: not changed: {blocked}");
                        return out.problem(answer(message, ProblemCode::NoKeyYet));
                    }
                };
                let conversation = Conversation::direct(self.me, peer.fingerprint());
                self.seal_direct(user, peer, conversation, content, out);
            }
        }
        let by = self.name.clone();
        self.apply_timer(chat, seconds, by, out);
    }

    /// `chat`'s timer is `seconds` from now on, as `by` set it.
    pub(super) fn apply_timer(&mut self, chat: Chat, seconds: u64, by: UserName, out: &mut Out) {
        let record = TimerRecord {
            chat: chat.clone(),
            seconds,
            set_by: by.clone(),
            set_at_ms: now_ms(),
        };
        if let Err(e) = self.store.set_timer(&chat, Some(&record)) {
            out.error(
                ProblemCode::Storage,
                format!("could not store the disappearing-message timer of {chat}: {e}"),
            );
            return;
        }
        if seconds == 0 {
            self.timers.timers.remove(&chat);
        } else {
            self.timers.timers.insert(chat.clone(), record);
        }
        out.update(Update::Timer {
            chat,
            seconds,
            by: Some(by),
        });
    }

    /// Deletes every message whose timer ran out by `now_ms` (one
    /// transaction) and tells the front end; the store is compacted after
    /// (see [`Engine::compact_if_due`]).
    pub(super) fn sweep_expired(&mut self, now_ms: u64, out: &mut Out) {
        let due: Vec<(u64, Vec<u8>)> = self
            .timers
            .expiring
            .range(..(now_ms.saturating_add(1), Vec::new()))
            .map(|(key, _)| key.clone())
            .collect();
        if due.is_empty() {
            return;
        }
        let expired: Vec<ExpiringRecord> = due
            .iter()
            .filter_map(|key| self.timers.expiring.get(key).cloned())
            .collect();
        // A message whose heartbeat is still to come and that some
        // recipient has not receipted yet: its heartbeat goes all the same.
        let mut unreceipted = Vec::new();
        for (conversation, seq) in expired.iter().filter_map(|r| r.sent.as_ref()) {
            let beating = self
                .heartbeats
                .get(conversation)
                .is_some_and(|h| h.seq == *seq);
            let waiting = beating
                && self
                    .store
                    .outgoing(conversation, *seq)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.state != 2 && r.delivered.len() < r.recipients.len());
            if waiting {
                unreceipted.push((conversation.clone(), *seq));
            }
        }
        if let Err(e) = self.store.delete_expired(&expired) {
            // Kept in the index: tried again at the next tick.
            out.error(
                ProblemCode::Storage,
                format!("could not delete disappearing messages: {e}"),
            );
            return;
        }
        for key in &due {
            self.timers.expiring.remove(key);
        }
        self.timers.unreceipted.extend(unreceipted);
        self.timers.compaction_due = true;
        let mut by_chat: BTreeMap<Chat, (Vec<MessageId>, Vec<Queued>)> = BTreeMap::new();
        for record in expired {
            let (ids, queued) = by_chat.entry(record.chat.clone()).or_default();
            if let Some((sender, seq)) = record.id {
                let id = MessageId { sender, seq };
                self.files.forget(&record.chat, id);
                ids.push(id);
            }
            if let Some((conversation, seq)) = &record.sent {
                self.unsent
                    .retain(|u| !(u.seq == *seq && u.conversation == *conversation));
            }
            if let Some(id) = record.typed
                && record.history.is_none()
                && let Some(text) = self.drop_typed(id)
            {
                queued.push(Queued {
                    chat: record.chat.clone(),
                    typed_at_ms: id / 1000,
                    text,
                });
            }
        }
        for (chat, (ids, queued)) in by_chat {
            out.update(Update::Expired { chat, ids, queued });
        }
    }

    /// Whether `seq`, a message this client sent in `conversation` that
    /// disappeared, was still waiting for a receipt (for its heartbeat,
    /// which keeps its own count; receipts that come after it disappeared
    /// find no record to mark, so its heartbeats all go).
    pub(super) fn expired_unreceipted(&self, conversation: &Conversation, seq: u64) -> bool {
        self.timers.unreceipted.get(conversation) == Some(&seq)
    }

    /// Forgets the outbox text `id` wherever it waits; its text.
    fn drop_typed(&mut self, id: u64) -> Option<String> {
        if let Some(at) = self.outbox.iter().position(|(typed, _, _)| *typed == id) {
            return self.outbox.remove(at).map(|(_, _, text)| text);
        }
        for awaiting in self.awaiting_key.values_mut() {
            if let Some(at) = awaiting.texts.iter().position(|(typed, _)| *typed == id) {
                return Some(awaiting.texts.remove(at).1);
            }
        }
        None
    }

    /// Compacts the store if deleted messages wait for it and the last
    /// compaction is at least [`super::SessionLimits::compact_every`] ago
    /// (`force`: whenever they wait, as at shutdown).
    pub(super) fn compact_if_due(&mut self, now: Instant, force: bool, out: &mut Out) {
        if !self.timers.compaction_due {
            return;
        }
        let waited = self
            .timers
            .compacted_at
            .is_none_or(|at| now.duration_since(at) >= self.limits.compact_every);
        if !(waited || force) {
            return;
        }
        match self.store.compact() {
            Ok(true) => {
                self.timers.compaction_due = false;
                self.timers.compacted_at = Some(now);
            }
            // A transaction is open: at the next tick.
            Ok(false) => {}
            Err(e) => {
                self.timers.compaction_due = false;
                self.timers.compacted_at = Some(now);
                out.error(
                    ProblemCode::Storage,
                    format!(
                        "could not compact the local database (deleted messages may remain in its free space until the next compaction): {e}"
                    ),
                );
            }
        }
    }

    /// Says `chat`'s timer again.
    pub(super) fn show_timer(&self, chat: Chat, out: &mut Out) {
        let seconds = self.timer_of(&chat);
        out.update(Update::Timer {
            chat,
            seconds,
            by: None,
        });
    }
}

#[cfg(test)]
mod tests;
