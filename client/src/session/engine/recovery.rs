//! Recovering a session key whose announcement never came (protocol.md
//! 13.8, "Key requests").
//!
//! A message held because its session's announcement has not arrived is
//! asked for after `SessionLimits::key_request`: this client sends the
//! message's sender a `KeyRequest` naming the conversation and the
//! session, sealed in their direct conversation like any message, so the
//! relay can neither read nor forge one. The sender answers by sending
//! the announcement of that session to that member again (the same
//! signed bytes), if the session is its current one in that conversation
//! and the member is among its recipients, at most once per
//! `SessionLimits::key_request` for each member and session: a new
//! announcement of the same session (the same context and key, wrapped
//! and signed afresh, so that it is not the same bytes as the lost one,
//! which a relay would take for a resend of what it holds). A relay that
//! drops the requests or the announcement again leaves the messages held:
//! they are given up with a notice after `SessionLimits::held_for`, and
//! the sender sees them not delivered (no receipt).

use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{Conversation, Fingerprint, PeerBody, SessionId, WrapTo, sign_announcements};
use sotto_proto::{Destination, UserName};

use super::{Engine, Out};
use crate::session::Chat;
use crate::session::content::Content;

impl Engine {
    /// Asks the senders of messages held longer than `key_request` for
    /// their sessions' announcements, once per sender and session.
    pub(super) fn request_missing_keys(&mut self, now: Instant, out: &mut Out) {
        let wait = self.limits.key_request;
        // Forgotten once they no longer matter: a requester asks again at
        // most once per `wait`, and a session held no more needs no key.
        self.reannounced
            .retain(|_, at| now.duration_since(*at) < wait);
        let held: std::collections::HashSet<(Fingerprint, SessionId)> =
            self.held.iter().map(|h| (h.sender, h.session)).collect();
        self.keys_requested.retain(|k| held.contains(k));
        if !self.connected {
            return;
        }
        let due: Vec<(UserName, Fingerprint, Conversation, SessionId)> = self
            .held
            .iter()
            .filter(|h| now.duration_since(h.since) >= wait)
            .filter(|h| !self.keys_requested.contains(&(h.sender, h.session)))
            .map(|h| {
                (
                    h.delivery.from.clone(),
                    h.sender,
                    h.conversation.clone(),
                    h.session,
                )
            })
            .collect();
        for (from, sender, conversation, session) in due {
            if !self.keys_requested.insert((sender, session)) {
                continue;
            }
            let Ok(peer) = self.contacts.sendable(&from).cloned() else {
                continue;
            };
            if peer.fingerprint() != sender {
                continue;
            }
            let direct = Conversation::direct(self.me, sender);
            let request = Content::KeyRequest {
                conversation,
                session,
            };
            self.seal_direct(&from, peer, direct, request, out);
        }
    }

    /// `from` (key `requester`) asks again for the announcement of
    /// `session` in `conversation`: sent again if it is this client's
    /// current session there and `from` is among its recipients, at most
    /// once per `key_request` for each.
    pub(super) fn on_key_request(
        &mut self,
        from: &UserName,
        requester: Fingerprint,
        conversation: &Conversation,
        session: SessionId,
        out: &mut Out,
    ) {
        let now = Instant::now();
        let wait = self.limits.key_request;
        if self
            .reannounced
            .get(&(requester, session))
            .is_some_and(|at| now.duration_since(*at) < wait)
        {
            return;
        }
        let Ok(peer) = self.contacts.sendable(from).cloned() else {
            return;
        };
        if peer.fingerprint() != requester {
            return;
        }
        let identity = self.identity.clone();
        let prekey = self.peer_prekey(requester, super::now_secs());
        let target = match &prekey {
            Some(prekey) => WrapTo::Prekey(prekey),
            None => WrapTo::Identity(&peer),
        };
        let announced = self.outbound.get(conversation).and_then(|outbound| {
            let current = outbound.session.as_ref()?;
            (current.id() == session).then(|| {
                let unsigned = current.announce_again(&mut rand::rng(), target)?;
                sign_announcements(&identity, &mut rand::rng(), vec![unsigned])
            })
        });
        let announcement = match announced {
            Some(Ok(mut signed)) if signed.len() == 1 => signed.remove(0),
            // Not this client's current session there, or not sealed for
            // the requester: nothing to send.
            _ => return,
        };
        self.reannounced.insert((requester, session), now);
        let name = self.display_name(from);
        self.push_send(
            Chat::Direct(name.clone()),
            None,
            Destination::User(name),
            Bytes::from(PeerBody::Announcement(announcement).encode()),
            Vec::new(),
            out,
        );
    }
}
