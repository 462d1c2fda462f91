//! Deliveries from the relay: announcements (no rollback, checked before any
//! RSA work; the shared signature budget; each sender's allowance), messages
//! held until their announcement comes, and opening a message, its replay
//! window and recording it (protocol.md 17, 18; P11: every failure is the
//! same `Rejected`).

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{
    Announcement, Arrival, Conversation, Fingerprint, MessageBody, PeerBody, PublicIdentity,
    ReplayWindow, SessionId,
};
use sotto_proto::{Destination, RoomName, UserName};

use super::{Engine, Out, now_ms, now_secs};
use crate::contacts::Trust;
use crate::session::content::Content;
use crate::session::{Chat, ProblemCode, Update};
use crate::store::{Inbound, Receiving, StoreError, StoredEntry};

/// A delivery kept for later: waiting for a key lookup, a trust decision or
/// the announcement of its session.
///
/// The fields of [`sotto_proto::RelayFrame::Deliver`], as they came. A
/// distinct type only because an enum variant is not one the engine can
/// hold in its queues (`Held`, `Awaiting`); it carries nothing more. Were
/// the frame's variant a struct of its own (`Deliver(Delivery)` in
/// sotto-proto), this would be that struct.
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    pub(super) delivery: u64,
    pub(super) from: UserName,
    pub(super) to: Destination,
    pub(super) body: Bytes,
    pub(super) slot: Option<Bytes>,
}

#[derive(Debug)]
pub(super) struct Held {
    pub(super) delivery: Delivery,
    pub(super) sender: Fingerprint,
    pub(super) session: SessionId,
    pub(super) since: Instant,
    /// The conversation it came in (where to ask for its key).
    pub(super) conversation: Conversation,
}

/// A token bucket.
#[derive(Debug)]
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) at: Instant,
}

impl Bucket {
    /// Refills at `rate` tokens per second up to `burst`, then takes one.
    pub(super) fn take(&mut self, now: Instant, burst: f64, rate: f64) -> bool {
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
pub(super) enum Handled {
    Done,
    Kept,
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

impl Engine {
    pub(super) fn chat_of(&self, delivery: &Delivery) -> Option<Chat> {
        match &delivery.to {
            Destination::Room(room) => Some(Chat::Room(room.clone())),
            Destination::User(user) if self.is_me(user) => {
                Some(Chat::Direct(self.display_name(&delivery.from)))
            }
            Destination::User(_) => None,
        }
    }

    /// The name as first pinned (the relay may show another letter case).
    pub(super) fn display_name(&self, name: &UserName) -> UserName {
        self.contacts
            .get(name)
            .map_or_else(|| name.clone(), |c| c.name.clone())
    }

    pub(super) fn reject(&self, delivery: &Delivery, out: &mut Out) -> Handled {
        out.update(Update::Rejected {
            chat: self.chat_of(delivery),
            from: delivery.from.clone(),
        });
        Handled::Done
    }

    /// Gives up the held messages whose announcement did not come within
    /// `held_for`.
    pub(super) fn give_up_held(&mut self, now: Instant, out: &mut Out) {
        while let Some(held) = self.held.front() {
            if now.duration_since(held.since) < self.limits.held_for {
                break;
            }
            if let Some(held) = self.held.pop_front() {
                let chat = self.chat_of(&held.delivery);
                out.update(Update::Rejected {
                    chat,
                    from: held.delivery.from.clone(),
                });
                Self::ack(&held.delivery, out);
            }
        }
    }

    /// Reports the forged and unchecked announcements seen since the last
    /// tick.
    pub(super) fn report_forgeries(&mut self, out: &mut Out) {
        // Forgeries are reported at most once per tick and claimed sender.
        for (_, (claimed, count)) in std::mem::take(&mut self.forged) {
            out.error(
                ProblemCode::Forged,
                forged_announcements(count, claimed.as_str()),
            );
        }
        if self.unchecked > 0 {
            out.error(
                ProblemCode::Flooded,
                format!(
                    "the relay delivered key announcements faster than they can be checked: {} dropped unchecked",
                    std::mem::take(&mut self.unchecked)
                ),
            );
        }
    }

    /// Handles a delivery (again, for one that waited) and acknowledges it
    /// once it is dealt with: stored, or dropped for good.
    pub(super) fn deliver(&mut self, delivery: Delivery, out: &mut Out) {
        if self.on_delivery(&delivery, out) == Handled::Done {
            Self::ack(&delivery, out);
        }
    }

    pub(super) fn on_delivery(&mut self, delivery: &Delivery, out: &mut Out) -> Handled {
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
    pub(super) fn sender_key(
        &mut self,
        delivery: &Delivery,
        claimed: Fingerprint,
        out: &mut Out,
    ) -> Result<PublicIdentity, Handled> {
        let Some(contact) = self.contacts.get(&delivery.from) else {
            let limit = self.limits.deliveries_awaiting_key;
            let awaiting = self.await_key(&delivery.from, out);
            if awaiting.deliveries.len() >= limit {
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
            if parked.len() < self.limits.deliveries_awaiting_trust {
                parked.push(delivery.clone());
                return Err(Handled::Kept);
            }
        }
        Err(self.reject(delivery, out))
    }

    /// Whether `from` belongs in `conversation` as this client sees it.
    pub(super) fn admits(
        &self,
        conversation: &Conversation,
        from: &UserName,
        sender: Fingerprint,
    ) -> bool {
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
    pub(super) fn take_token(&mut self, sender: Fingerprint) -> bool {
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
    pub(super) fn take_verification(&mut self) -> bool {
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
    pub(super) fn inbound_mut(
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
    pub(super) fn unreadable_sessions(e: &StoreError, out: &mut Out) -> Handled {
        out.error(
            ProblemCode::Storage,
            format!("could not read stored session keys (the message will be retried): {e}"),
        );
        Handled::Kept
    }

    pub(super) fn on_announcement(
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
            out.error(
                ProblemCode::Flooded,
                format!(
                    "ignoring session keys from {}: too many in a short time",
                    delivery.from
                ),
            );
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
            out.error(
                ProblemCode::Storage,
                format!("could not save a session key: {e}"),
            );
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

    pub(super) fn on_message(
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
                from: self.display_name(&delivery.from),
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
                    conversation: conversation.clone(),
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
        // What it carries: a text, or a receipt (13.8); anything else is
        // rejected like a forgery (P11).
        let Some(content) = Content::decode(&opened.plaintext) else {
            return self.reject(delivery, out);
        };
        let before = (receiving.window.clone(), receiving.missing.clone());
        let top = receiving.window.next_expected();
        let Ok(arrival) = receiving.window.accept(opened.seq) else {
            // A duplicate (or too old to place): dropped quietly. A text is
            // stored already: its sender gets a receipt again (the first
            // may have been lost, and it may be resending for that).
            if matches!(content, Content::Text(_)) {
                self.receipts_due
                    .add(&delivery.from, &conversation, opened.seq);
            }
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
        let text = match content {
            Content::Text(text) => text,
            content @ (Content::Receipt(_) | Content::Heartbeat | Content::KeyRequest { .. }) => {
                return self.control_arrived(
                    delivery,
                    sender,
                    &conversation,
                    index,
                    before,
                    &content,
                    missing,
                    &chat,
                    out,
                );
            }
        };
        let entry = StoredEntry {
            chat: chat.clone(),
            from: self.display_name(&delivery.from),
            fingerprint: sender,
            outgoing: false,
            seq: opened.seq,
            sent_at_ms: opened.sent_at_ms,
            received_at_ms: now_ms(),
            text,
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
            return self.not_stored(&key, index, before, &e, out);
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
        self.receipts_due
            .add(&delivery.from, &conversation, opened.seq);
        let message = self.message_of(entry, position);
        out.update(Update::Message(message));
        Handled::Done
    }

    /// What arrived could not be stored: the receiving window moves back,
    /// so that the relay's redelivery opens it again, and the user hears
    /// so.
    fn not_stored(
        &mut self,
        key: &(Fingerprint, Conversation),
        index: usize,
        before: (ReplayWindow, BTreeSet<u64>),
        error: &StoreError,
        out: &mut Out,
    ) -> Handled {
        if let Some(receiving) = self
            .inbound
            .get_mut(key)
            .and_then(|i| i.sessions.get_mut(index))
        {
            (receiving.window, receiving.missing) = before;
        }
        out.error(
            ProblemCode::Storage,
            format!("could not store a message: {error}"),
        );
        Handled::Kept
    }

    /// Receipts again, for every number of the receiving session at
    /// `index` of `key` that arrived (within the replay window, from the
    /// session's first number): answered to a heartbeat.
    fn receipt_again(
        &mut self,
        from: &UserName,
        key: &(Fingerprint, Conversation),
        index: usize,
        conversation: &Conversation,
    ) {
        let Some(receiving) = self.inbound.get(key).and_then(|i| i.sessions.get(index)) else {
            return;
        };
        let top = receiving.window.next_expected();
        let first = receiving
            .session
            .context()
            .first_seq
            .max(top.saturating_sub(sotto_crypto::REPLAY_WINDOW));
        let stored: Vec<u64> = (first..top)
            .filter(|seq| !receiving.missing.contains(seq))
            .collect();
        for seq in stored {
            self.receipts_due.add(from, conversation, seq);
        }
    }

    /// A receipt or a heartbeat opened: its place in the sender's numbers
    /// is stored (in the open batch) like a message's, without a history
    /// entry (a gap it reveals is reported like any); a receipt's messages
    /// are marked delivered to its sender.
    #[allow(clippy::too_many_arguments)]
    fn control_arrived(
        &mut self,
        delivery: &Delivery,
        sender: Fingerprint,
        conversation: &Conversation,
        index: usize,
        before: (ReplayWindow, BTreeSet<u64>),
        content: &Content,
        missing: u64,
        chat: &Chat,
        out: &mut Out,
    ) -> Handled {
        let key = (sender, conversation.clone());
        let saved = match self.inbound.get(&key) {
            Some(inbound) => self.store.set_inbound(sender, conversation, inbound),
            None => Err(StoreError::Format),
        };
        if let Err(e) = saved {
            return self.not_stored(&key, index, before, &e, out);
        }
        if missing > 0 {
            out.update(Update::Missing {
                chat: chat.clone(),
                from: self.display_name(&delivery.from),
                count: missing,
            });
        }
        if matches!(content, Content::Heartbeat) {
            // The sender waits for a receipt: say again what is stored of
            // this session (a receipt may have been lost or refused).
            self.receipt_again(&delivery.from, &key, index, conversation);
        }
        match content {
            Content::Receipt(receipt) => self.on_receipt(sender, receipt, out),
            Content::KeyRequest {
                conversation: asked,
                session,
            } => self.on_key_request(&delivery.from, sender, asked, *session, out),
            Content::Text(_) | Content::Heartbeat => {}
        }
        Handled::Done
    }
}

#[cfg(test)]
mod tests;
