//! Deliveries from the relay: announcements (no rollback, checked before any
//! RSA work; the shared signature budget; each sender's allowance), messages
//! held until their announcement comes, and opening a message, its replay
//! window and recording it (protocol.md 17, 18; P11: every failure is the
//! same `Rejected`).

use std::collections::hash_map::Entry;
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{
    Announcement, Arrival, Conversation, Fingerprint, MessageBody, PeerBody, PublicIdentity,
    SessionContext, SessionId, Via,
};
use sotto_proto::{Destination, RoomName, UserName};

use super::{Engine, Out, now_ms, now_secs};
use crate::contacts::Trust;
use crate::session::content::Content;
use crate::session::{Chat, ProblemCode, Update};
use crate::store::{Beside, Inbound, Snapshot, StoreError, StoredEntry};

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
            Ok(PeerBody::PairReply(reply)) => self.on_pair_reply(delivery, &reply, out),
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

    /// Charges `sender`'s allowance for a pair key its own key made (signed,
    /// or sealed under a pair key it was sent); when none is left, says so
    /// (naming `from`, the relay's name for it) and returns false: the key
    /// is discarded.
    pub(super) fn charge_allowance(
        &mut self,
        sender: Fingerprint,
        from: &UserName,
        out: &mut Out,
    ) -> bool {
        let charged = self.take_token(sender);
        if !charged {
            out.error(
                ProblemCode::Flooded,
                format!("ignoring session keys from {from}: too many in a short time"),
            );
        }
        charged
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

    /// What every new pair key (an announcement or a pair reply) must pass
    /// before any cryptography (protocol.md 14.3, steps 1-4): it travels
    /// alone, to this client, from the key pinned for its sender, who is a
    /// member of its conversation; and it is no rollback (an epoch not
    /// newer than the highest accepted, or a session already held, is
    /// dropped without a word). The sender's pinned identity, or how the
    /// delivery was handled.
    pub(super) fn new_pair_key(
        &mut self,
        delivery: &Delivery,
        context: &SessionContext,
        out: &mut Out,
    ) -> Result<PublicIdentity, Handled> {
        let to_me = matches!(&delivery.to, Destination::User(user) if self.is_me(user));
        if !to_me || context.recipient != self.me || delivery.slot.is_some() {
            return Err(self.reject(delivery, out));
        }
        let sender = self.sender_key(delivery, context.sender, out)?;
        if !self.admits(&context.conversation, &delivery.from, sender.fingerprint()) {
            return Err(self.reject(delivery, out));
        }
        let inbound = self
            .inbound_mut(sender.fingerprint(), &context.conversation)
            .map_err(|e| Self::unreadable_sessions(&e, out))?;
        if context.epoch <= inbound.max_epoch
            || inbound
                .sessions
                .iter()
                .any(|r| r.session.context().session_id == context.session_id)
        {
            return Err(Handled::Done);
        }
        Ok(sender)
    }

    pub(super) fn on_announcement(
        &mut self,
        delivery: &Delivery,
        announcement: Announcement,
        out: &mut Out,
    ) -> Handled {
        let context = &announcement.context;
        let sender = match self.new_pair_key(delivery, context, out) {
            Ok(sender) => sender,
            Err(handled) => return handled,
        };
        let conversation = context.conversation.clone();
        // The signature first (cheap, shared budget): a forgery is counted
        // against the relay, and never against the sender it names.
        if !self.take_verification() {
            // Not acknowledged: if the relay stored it, it comes again on
            // the next connection, checked then.
            self.unchecked += 1;
            return Handled::Kept;
        }
        let Ok(verified) = announcement.verify(&self.identity, &sender) else {
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
        if !self.charge_allowance(sender.fingerprint(), &delivery.from, out) {
            return Handled::Done;
        }
        let prekey = match verified.context().via {
            Via::Prekey(id) => match self.own_prekey(id) {
                Some(prekey) => Some(prekey),
                None => {
                    // Wrapped to a prekey this client deleted (its grace,
                    // the relay's longest storage, is over) or never had.
                    let chat = self.chat_for(&conversation, &delivery.from);
                    out.error(
                        ProblemCode::KeyExpired,
                        format!(
                            "{chat}: messages from {} cannot be opened: their key was sent to a prekey of yours \
                             that has been deleted (it was older than the relay keeps messages)",
                            self.display_name(&delivery.from)
                        ),
                    );
                    return self.reject(delivery, out);
                }
            },
            Via::Identity | Via::Reply(_) => None,
        };
        let Ok(session) = verified.accept(&mut rand::rng(), &self.identity, now, prekey.as_deref())
        else {
            return self.reject(delivery, out);
        };
        self.keep_session(delivery, sender.fingerprint(), &conversation, session, out)
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
            // Its key already forgotten: a genuine duplicate (the sender
            // sending again, the relay delivering again) is dropped quietly,
            // and its sender gets a receipt again (the first may have been
            // lost); anything else was forged.
            let seen = receiving.window.clone().accept(header.seq).is_err();
            if seen && receiving.session.is_genuine(&conversation, body, &slot) {
                self.receipts_due
                    .add(&delivery.from, &conversation, header.seq);
                return Handled::Done;
            }
            return self.reject(delivery, out);
        };
        // What it carries: a text, or a receipt (13.8); anything else is
        // rejected like a forgery (P11).
        let Some(content) = Content::decode(&opened.plaintext) else {
            return self.reject(delivery, out);
        };
        let before = receiving.snapshot();
        let top = receiving.window.next_expected();
        let Ok(arrival) = receiving.window.accept(opened.seq) else {
            // Too old to place: its key was kept (skipped) but the window
            // has passed it. Dropped quietly, its key forgotten.
            let _ = receiving.session.forget(opened.seq);
            return Handled::Done;
        };
        // Kept from here on (or put back if storing fails): its key is
        // forgotten, and so are those of numbers the window has passed.
        if receiving.session.forget(opened.seq).is_err() {
            return self.reject(delivery, out);
        }
        receiving.session.forget_before(
            receiving
                .window
                .next_expected()
                .saturating_sub(sotto_crypto::REPLAY_WINDOW),
        );
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
        let (text, timer, offer) = match content {
            Content::Text(text) => (text, 0, None),
            Content::TimedText { seconds, text } => (text, seconds, None),
            Content::File(offer) => (offer.name.clone(), offer.seconds, Some(offer)),
            content @ (Content::Receipt(_)
            | Content::Heartbeat
            | Content::KeyRequest { .. }
            | Content::Timer { .. }) => {
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
        // Under the timer it was sent with, from now (when it is stored).
        let expiring = Self::received_expiring(
            &chat,
            timer,
            self.store.history_record_key(&entry, position),
            sender,
            opened.seq,
            entry.received_at_ms,
        );
        let key = (sender, conversation.clone());
        let saved = match self.inbound.get(&key) {
            Some(inbound) => self.store.record_received(
                &entry,
                position,
                sender,
                &conversation,
                inbound,
                Beside {
                    expiring: expiring.as_ref(),
                    file: offer.as_ref(),
                },
            ),
            None => Err(StoreError::Format),
        };
        if let Err(e) = saved {
            return self.not_stored(&key, index, before, &e, out);
        }
        let expires_at_ms = expiring.as_ref().map(|e| e.expires_at_ms);
        if let Some(expiring) = expiring {
            self.track_expiring(expiring);
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
        let mut message = self.message_of(entry, position);
        message.expires_at_ms = expires_at_ms;
        if let Some(offer) = offer {
            message.file = Some(Box::new(crate::session::FileInfo::of(&offer)));
            self.files.remember(&chat, message.id(), offer);
        }
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
        before: Snapshot,
        error: &StoreError,
        out: &mut Out,
    ) -> Handled {
        if let Some(receiving) = self
            .inbound
            .get_mut(key)
            .and_then(|i| i.sessions.get_mut(index))
            && let Err(e) = receiving.put_back(&before)
        {
            out.error(
                ProblemCode::Storage,
                format!("could not restore a session key after a failed write: {e}"),
            );
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
        before: Snapshot,
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
            Content::Timer { seconds } => {
                let by = self.display_name(&delivery.from);
                self.apply_timer(chat.clone(), *seconds, by, out);
            }
            Content::Text(_)
            | Content::TimedText { .. }
            | Content::File(_)
            | Content::Heartbeat => {}
        }
        Handled::Done
    }
}

#[cfg(test)]
mod tests;
