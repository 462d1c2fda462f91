//! Pairs: keeping this client's sending session in a conversation in step
//! with who should read it (protocol.md 18), and pair replies both ways.
//!
//! A sending session runs until it must restart (a day, 10,000 messages:
//! healing) and its recipients change while it runs: one who left simply
//! gets no more slots (no RSA); one who joined gets a pair key, wrapped to
//! its prekey (or, if it has none, to its identity key, and the user is
//! told) and signed with every other wrap of the moment under one
//! signature. A member who accepts a newcomer's announcement answers it at
//! once with its own pair key under the newcomer's ([`PairReply`]): so a
//! join costs each member one RSA decryption and no signature.

use bytes::Bytes;
use std::sync::Arc;

use sotto_crypto::{
    Conversation, Fingerprint, PairReply, PeerBody, PrekeyId, PrekeySecret, PublicIdentity,
    ReceivingSession, ReplayWindow, SendingSession, SignedPrekey, VerifiedPrekey, WrapTo,
    sign_announcements,
};
use sotto_proto::{Destination, RoomName, Slot, UserName};

use super::inbound::{Delivery, Handled};
use super::{Engine, Out, now_secs};
use crate::contacts::Trust;
use crate::session::{Chat, ProblemCode};
use crate::store::Receiving;

/// One `Send` to make: where, the body, the slots.
pub(super) type Frame = (Destination, Bytes, Vec<Slot>);

/// Why a session could not be brought in step: what to tell the user.
pub(super) struct NotInStep {
    pub(super) code: ProblemCode,
    pub(super) message: String,
}

impl NotInStep {
    fn new(code: ProblemCode, what: impl std::fmt::Display) -> Self {
        Self {
            code,
            message: what.to_string(),
        }
    }
}

impl Engine {
    /// This client's own prekey secret with `id`, if it still has it (until
    /// its grace is over, `session::prekeys`).
    pub(super) fn own_prekey(&self, id: PrekeyId) -> Option<Arc<PrekeySecret>> {
        self.prekeys.own_secret(&id)
    }

    /// The newest valid prekey of `peer` at `now`, if one is known
    /// (verified against its pinned identity, never an older one than
    /// seen, `session::prekeys`).
    pub(super) fn peer_prekey(&self, peer: Fingerprint, now: u64) -> Option<VerifiedPrekey> {
        self.prekeys.newest_for(&peer, now).cloned()
    }

    /// The chat `conversation` is shown in, for a session from `from`.
    pub(super) fn chat_for(&self, conversation: &Conversation, from: &UserName) -> String {
        match conversation {
            Conversation::Room(room) => format!("#{room}"),
            Conversation::Direct(..) => Chat::Direct(self.display_name(from)).to_string(),
        }
    }

    /// Keeps one of this client's own prekeys, as the prekey lifecycle
    /// does once it made one (in memory only: benchmarks and tests).
    pub(crate) fn keep_own_prekey(&mut self, signed: SignedPrekey, secret: PrekeySecret) {
        self.prekeys.keep_own(signed, secret);
    }

    /// Keeps a contact's prekey, verified against its pinned identity, as
    /// the lifecycle does with one a relay frame handed out (in memory
    /// only: benchmarks and tests).
    pub(crate) fn keep_peer_prekey(&mut self, prekey: VerifiedPrekey) {
        self.prekeys.keep_theirs(prekey);
    }

    /// The RSA decryptions this client's keys (identity and prekeys) made.
    pub(crate) fn rsa_decryptions(&self) -> u64 {
        self.identity.rsa_decryptions()
    }

    /// Whether this client holds a current session of `sender` in
    /// `conversation` (as loaded in memory).
    pub(crate) fn reads(&self, sender: Fingerprint, conversation: &Conversation) -> bool {
        let now = now_secs();
        self.inbound
            .get(&(sender, conversation.clone()))
            .is_some_and(|i| i.sessions.iter().any(|r| r.session.is_current(now)))
    }

    /// Whether `from` (key `sender`) is someone this client seals to in
    /// `conversation`: in a room, a member whose key it can send to (and
    /// verified, if the room sends to verified members only); in a direct
    /// conversation, its peer.
    fn seals_to(&self, conversation: &Conversation, from: &UserName, sender: Fingerprint) -> bool {
        let sendable = self
            .contacts
            .sendable(from)
            .is_ok_and(|identity| identity.fingerprint() == sender);
        match conversation {
            Conversation::Room(room) => room
                .parse::<RoomName>()
                .ok()
                .and_then(|room| self.rooms.get(&room))
                .is_some_and(|room| {
                    room.members.contains_key(&from.key())
                        && sendable
                        && (!room.settings.verified_only
                            || self
                                .contacts
                                .get(from)
                                .is_some_and(|c| c.trust == Trust::Verified))
                }),
            Conversation::Direct(..) => {
                sendable && *conversation == Conversation::direct(self.me, sender)
            }
        }
    }

    /// A new sending session in `conversation` (none yet, or the current one
    /// must restart), with no recipients: its epoch, stored first, is the
    /// next one, and at least the clock's seconds, so that a data directory
    /// restored from a backup still starts epochs newer than any it used.
    fn restart_session(&mut self, conversation: &Conversation, now: u64) -> Result<(), NotInStep> {
        let me = self.me;
        let store = self.store.clone();
        let outbound = self
            .outbound(conversation)
            .map_err(|e| NotInStep::new(ProblemCode::Storage, e))?;
        let clock = u32::try_from(now).unwrap_or(u32::MAX);
        let epoch = outbound.epoch.saturating_add(1).max(clock);
        store
            .set_epoch(conversation, epoch)
            .map_err(|e| NotInStep::new(ProblemCode::Storage, e))?;
        outbound.epoch = epoch;
        outbound.session = Some(SendingSession::start(
            &mut rand::rng(),
            me,
            conversation.clone(),
            epoch,
            outbound.counter.peek(),
            now,
        ));
        Ok(())
    }

    /// Brings the sending session in `conversation` to exactly `recipients`
    /// before a message is sealed: restarted if there is none or it must
    /// (healing, or a recipient it wrapped to an identity key now has a
    /// prekey); those who left removed; those who joined added, their
    /// pair keys wrapped (to their prekeys where they have one) and signed
    /// together. Returns the announcements to send before the message.
    pub(super) fn sync_session(
        &mut self,
        chat: &Chat,
        conversation: &Conversation,
        recipients: &[(UserName, PublicIdentity)],
        out: &mut Out,
    ) -> Result<Vec<Frame>, NotInStep> {
        let now = now_secs();
        let outbound = self
            .outbound(conversation)
            .map_err(|e| NotInStep::new(ProblemCode::Storage, e))?;
        let fallback: Vec<Fingerprint> = outbound.fallback.iter().copied().collect();
        let must_restart = outbound
            .session
            .as_ref()
            .is_none_or(|session| session.needs_rotation(now));
        // A member wrapped to its identity key that has a prekey now.
        let heals = fallback.iter().any(|fp| {
            recipients.iter().any(|(_, id)| id.fingerprint() == *fp)
                && self.prekeys.newest_for(fp, now).is_some()
        });
        let restart = must_restart || heals;
        if restart && !recipients.is_empty() {
            self.restart_session(conversation, now)?;
        }
        // The recipients the session lacks, with their prekeys: looked up
        // only for them, not for every recipient of every message.
        let current: std::collections::BTreeSet<Fingerprint> = self
            .outbound
            .get(conversation)
            .and_then(|o| o.session.as_ref())
            .map(|session| session.recipients().collect())
            .unwrap_or_default();
        let joining: Vec<(&UserName, &PublicIdentity, Option<VerifiedPrekey>)> = recipients
            .iter()
            .filter(|(_, identity)| !current.contains(&identity.fingerprint()))
            .map(|(name, identity)| {
                (
                    name,
                    identity,
                    self.peer_prekey(identity.fingerprint(), now),
                )
            })
            .collect();
        let identity = self.identity.clone();
        let outbound = self
            .outbound(conversation)
            .map_err(|e| NotInStep::new(ProblemCode::Storage, e))?;
        let Some(session) = outbound.session.as_mut() else {
            return Ok(Vec::new());
        };
        if restart {
            outbound.fallback.clear();
        }
        let wanted: std::collections::BTreeSet<Fingerprint> =
            recipients.iter().map(|(_, id)| id.fingerprint()).collect();
        let gone: Vec<Fingerprint> = session
            .recipients()
            .filter(|fp| !wanted.contains(fp))
            .collect();
        for fp in gone {
            session.remove_recipient(fp);
            outbound.fallback.remove(&fp);
        }
        let mut targets = Vec::new();
        let mut names = Vec::new();
        for (name, identity, prekey) in &joining {
            match prekey {
                Some(prekey) => targets.push(WrapTo::Prekey(prekey)),
                None => {
                    targets.push(WrapTo::Identity(identity));
                    outbound.fallback.insert(identity.fingerprint());
                    out.error(
                        ProblemCode::NotForwardSecret,
                        format!(
                            "{chat}: not forward secret for {name}: their client has published no valid prekey \
                             (it has not been online for a week?); what you send them now can be read by whoever later \
                             gets their identity file and passphrase, until they publish one"
                        ),
                    );
                }
            }
            names.push((*name).clone());
        }
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let first_seq = outbound.counter.peek();
        let unsigned = session
            .add_recipients(&mut rand::rng(), &targets, first_seq)
            .map_err(|e| NotInStep::new(ProblemCode::Internal, e))?;
        let signed = sign_announcements(&identity, &mut rand::rng(), unsigned)
            .map_err(|e| NotInStep::new(ProblemCode::Internal, e))?;
        Ok(names
            .into_iter()
            .zip(signed)
            .map(|(name, announcement)| {
                (
                    Destination::User(name),
                    Bytes::from(PeerBody::Announcement(announcement).encode()),
                    Vec::new(),
                )
            })
            .collect())
    }

    /// `answered` (a session just accepted from `from`, key `sender`) came
    /// from someone this client seals to in its conversation but whose pair
    /// its own session there lacks: that pair is added now, its key sent
    /// back under `answered`'s (a [`PairReply`]: no RSA, no signature). So
    /// a newcomer can read this client's next message, and a join costs
    /// this client only the decryption of the newcomer's announcement.
    pub(super) fn reply_if_wanted(
        &mut self,
        from: &UserName,
        sender: Fingerprint,
        answered: &ReceivingSession,
        out: &mut Out,
    ) {
        let conversation = answered.context().conversation.clone();
        if !self.seals_to(&conversation, from, sender) {
            return;
        }
        let now = now_secs();
        let has_pair = self
            .outbound
            .get(&conversation)
            .and_then(|o| o.session.as_ref())
            .is_some_and(|s| !s.needs_rotation(now) && s.recipients().any(|fp| fp == sender));
        if has_pair {
            return;
        }
        let usable = self
            .outbound
            .get(&conversation)
            .and_then(|o| o.session.as_ref())
            .is_some_and(|s| !s.needs_rotation(now));
        if !usable && self.restart_session(&conversation, now).is_err() {
            // Not now: the pair is made (wrapped) when the next message
            // is sealed.
            return;
        }
        let Ok(outbound) = self.outbound(&conversation) else {
            return;
        };
        let first_seq = outbound.counter.peek();
        let Some(session) = outbound.session.as_mut() else {
            return;
        };
        let Ok(reply) = session.add_by_reply(&mut rand::rng(), answered, first_seq) else {
            return;
        };
        let name = self.display_name(from);
        self.push_send(
            Chat::Direct(name.clone()),
            None,
            Destination::User(name),
            Bytes::from(PeerBody::PairReply(reply).encode()),
            Vec::new(),
            out,
        );
    }

    /// A pair reply: another client's pair key for this client, sent under
    /// one this client made for it. Checked like an announcement (to this
    /// client alone, from a pinned key, a member of the conversation, no
    /// rollback), then opened under the pair key of this client's sending
    /// session it names: no RSA, so no signature budget; charged to its
    /// sender's allowance once it opened.
    pub(super) fn on_pair_reply(
        &mut self,
        delivery: &Delivery,
        reply: &PairReply,
        out: &mut Out,
    ) -> Handled {
        let context = &reply.context;
        let sender = match self.new_pair_key(delivery, context, out) {
            Ok(sender) => sender,
            Err(handled) => return handled,
        };
        let conversation = context.conversation.clone();
        let opened = self
            .outbound
            .get(&conversation)
            .and_then(|o| o.session.as_ref())
            .map(|session| session.accept_reply(reply, &sender, now_secs()));
        let Some(Ok(session)) = opened else {
            // Not under this client's current session there (a reply to one
            // of an earlier run, or a forgery): the sender's messages will
            // be asked for again (a key request) if they come.
            return self.reject(delivery, out);
        };
        if !self.charge_allowance(sender.fingerprint(), &delivery.from, out) {
            return Handled::Done;
        }
        self.keep_session(delivery, sender.fingerprint(), &conversation, session, out)
    }

    /// Keeps an accepted session (from an announcement or a pair reply) with
    /// the sessions of its sender and conversation, stored before the
    /// delivery is acknowledged, then opens the messages held for it.
    pub(super) fn keep_session(
        &mut self,
        delivery: &Delivery,
        sender: Fingerprint,
        conversation: &Conversation,
        session: ReceivingSession,
        out: &mut Out,
    ) -> Handled {
        let context = session.context().clone();
        let kept = self.limits.kept_sessions.max(1);
        let store = self.store.clone();
        let inbound = match self.inbound_mut(sender, conversation) {
            Ok(inbound) => inbound,
            Err(e) => return Self::unreadable_sessions(&e, out),
        };
        let previous_epoch = std::mem::replace(&mut inbound.max_epoch, context.epoch);
        inbound.sessions.push(Receiving {
            session,
            window: ReplayWindow::starting_at(context.first_seq),
            missing: std::collections::BTreeSet::new(),
        });
        let excess = inbound.sessions.len().saturating_sub(kept);
        let dropped: Vec<Receiving> = inbound.sessions.drain(..excess).collect();
        let saved = store.set_inbound(sender, conversation, inbound);
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
        if context.via == sotto_crypto::Via::Identity {
            let chat = self.chat_for(conversation, &delivery.from);
            out.error(
                ProblemCode::NotForwardSecret,
                format!(
                    "{chat}: what {} sends you in this session is not forward secret: their client found no \
                     valid prekey of yours (it is published while you are online)",
                    self.display_name(&delivery.from)
                ),
            );
        }
        // A newcomer's announcement: answer with this client's own pair.
        if let Some(answered) = self
            .inbound
            .get(&(sender, conversation.clone()))
            .and_then(|i| i.sessions.last())
            .map(|r| &r.session)
            .filter(|s| s.context().session_id == context.session_id)
            && !matches!(context.via, sotto_crypto::Via::Reply(_))
        {
            let answered = ReceivingSession::restore(answered.export());
            if let Ok(answered) = answered {
                self.reply_if_wanted(&delivery.from, sender, &answered, out);
            }
        }
        // Messages that arrived before their session.
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .held
            .drain(..)
            .partition(|h| h.sender == sender && h.session == context.session_id);
        self.held = waiting.into();
        for held in ready {
            self.deliver(held.delivery, out);
        }
        Handled::Done
    }
}

#[cfg(test)]
mod room_tests;
#[cfg(test)]
mod seizure_tests;
#[cfg(test)]
mod tests;
