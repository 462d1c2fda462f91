//! Keys and trust: pinning the keys the relay shows for peers (P6), key
//! lookups and the work waiting for them, trust decisions (verify, accept a
//! changed key) and safety numbers.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::PublicIdentity;
use sotto_proto::{ClientFrame, RoomName, UserName};

use super::inbound::Delivery;
use super::{Engine, Out};
use crate::contacts::{KeyEvent, Trust};
use crate::session::{Answers, Chat, Problem, ProblemCode, TrustLevel, Update};

/// Work waiting for a peer's key (a `LookupKey` is in flight).
#[derive(Debug, Default)]
pub(super) struct Awaiting {
    pub(super) deliveries: Vec<Delivery>,
    /// Direct messages typed for the peer, by outbox id: kept in the
    /// store's outbox until sealed, so that a restart keeps them.
    pub(super) texts: Vec<(u64, String)>,
    pub(super) show_safety_number: bool,
}

pub(super) fn trust_level(trust: &Trust) -> TrustLevel {
    match trust {
        Trust::Unverified => TrustLevel::Unverified,
        Trust::Verified => TrustLevel::Verified,
        Trust::Changed { .. } => TrustLevel::Changed,
    }
}

impl Engine {
    /// Pins `identity` (bytes from the relay, a hint) for `name` on first
    /// sight; reports any change.
    ///
    /// The same bytes as last time for the same name change nothing and
    /// cost no parsing: presence floods repeat them.
    pub(super) fn observe(&mut self, name: &UserName, identity: &[u8], out: &mut Out) -> bool {
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
                    out.error(
                        ProblemCode::InvalidKey,
                        format!("the relay sent an invalid key for {name}"),
                    );
                    return false;
                };
                let parsed = Arc::new(parsed);
                self.parsed
                    .push_front((Bytes::copy_from_slice(identity), parsed.clone()));
                self.parsed.truncate(self.limits.parsed_keys);
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
        self.take_handed_prekeys(name, out);
        true
    }

    /// Saves the contacts changed since the last save.
    pub(super) fn save_contacts(&mut self, out: &mut Out) {
        if self.unsaved_contacts.is_empty() {
            return;
        }
        let unsaved = std::mem::take(&mut self.unsaved_contacts);
        let contacts: Vec<&crate::contacts::Contact> = unsaved
            .iter()
            .filter_map(|key| self.contacts.get(&key.to_name()))
            .collect();
        if let Err(e) = self.store.save_contacts(contacts) {
            out.error(
                ProblemCode::Storage,
                format!("could not save contacts: {e}"),
            );
            self.unsaved_contacts = unsaved;
        }
    }

    pub(super) fn on_key(&mut self, name: UserName, identity: Option<Bytes>, out: &mut Out) {
        match identity {
            Some(identity) => {
                self.observe(&name, &identity, out);
                self.retry_key(&name, out);
            }
            None => {
                if let Some(awaiting) = self.awaiting_key.remove(&name.key()) {
                    if !awaiting.texts.is_empty() || awaiting.show_safety_number {
                        let mut problem = Problem::new(
                            ProblemCode::NoSuchUser,
                            format!("there is no user called {name} on this relay"),
                        )
                        .unsent(Chat::Direct(name.clone()), awaiting.texts.len());
                        if awaiting.show_safety_number {
                            problem =
                                problem.answering(Answers::SafetyNumber { name: name.clone() });
                        }
                        out.problem(problem);
                    }
                    // Never to be sent (the problem above says so for each,
                    // by `Answers::Sends`): out of the outbox.
                    for (id, _) in &awaiting.texts {
                        if let Err(e) = self.store.remove_outbox(*id) {
                            out.error(
                                ProblemCode::Storage,
                                format!("could not update the messages waiting to be sent: {e}"),
                            );
                        }
                    }
                    for delivery in awaiting.deliveries {
                        out.update(Update::Rejected {
                            chat: None,
                            from: delivery.from.clone(),
                        });
                        Self::ack(&delivery, out);
                    }
                }
            }
        }
    }

    /// A key for `name` is now pinned: run what waited for it.
    pub(super) fn retry_key(&mut self, name: &UserName, out: &mut Out) {
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
        for (id, text) in awaiting.texts {
            self.send_typed(id, Chat::Direct(name.clone()), text, out);
        }
    }

    /// Asks the relay for `name`'s key unless a lookup is already out.
    pub(super) fn await_key(&mut self, name: &UserName, out: &mut Out) -> &mut Awaiting {
        let key = name.key();
        if !self.awaiting_key.contains_key(&key) {
            out.frames
                .push(ClientFrame::LookupKey { name: name.clone() });
        }
        self.awaiting_key.entry(key).or_default()
    }

    pub(super) fn show_safety_number(&self, name: &UserName, out: &mut Out) {
        let Some(contact) = self.contacts.get(name) else {
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

    pub(super) fn trust_changed(&mut self, name: &UserName, out: &mut Out) {
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
                .map_or_else(|| name.clone(), |c| c.name.clone()),
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
}

#[cfg(test)]
mod tests {
    use sotto_crypto::Identity;

    use super::super::testing::*;
    use super::*;
    use crate::contacts::Blocked;

    /// Alice verifies bob's key, then the relay shows another key for bob.
    async fn bob_verified_then_changed(
        bob: &Identity,
        new: &Identity,
    ) -> (Engine, tempfile::TempDir) {
        let alice = fixture("alice");
        let (mut engine, dir) = alice_with_bob(bob).await;
        let safety = alice.public().safety_number(bob.public());
        let out = command(
            &mut engine,
            Command::Verify {
                name: name("bob"),
                safety_number: safety.digits().to_owned(),
            },
        );
        assert!(
            out.updates.iter().any(|u| matches!(
                u,
                Update::Trust { name, trust: TrustLevel::Verified } if name == "bob"
            )),
            "{:?}",
            out.updates
        );
        let updates = feed(
            &mut engine,
            presence("bob", PresenceEvent::Joined, Some(new.public())),
        );
        assert!(
            updates
                .iter()
                .any(|u| matches!(u, Update::Key(KeyEvent::ChangedVerified { .. }))),
            "{updates:?}"
        );
        (engine, dir)
    }

    #[tokio::test]
    async fn a_changed_verified_key_blocks_sending_until_it_is_accepted() {
        let (bob, new) = (fixture("bob"), fixture("mallory"));
        let (mut engine, _dir) = bob_verified_then_changed(&bob, &new).await;
        // Direct: refused with the reason.
        let out = command(&mut engine, send(Chat::Direct(name("bob")), "hi"));
        assert!(sent_to(&out).is_empty(), "{:?}", out.frames);
        let blocked = Blocked::KeyChanged { name: "bob".into() };
        assert_eq!(errors(&out.updates), [format!("@bob: not sent: {blocked}")]);
        assert_eq!(codes(&out.updates), [ProblemCode::KeyChanged]);
        // In the room: bob is left out, and told why.
        let out = command(&mut engine, send(lobby_chat(), "hi all"));
        assert!(sent_to(&out).is_empty(), "{:?}", out.frames);
        assert!(
            out.updates.iter().any(|u| matches!(
                u,
                Update::NotSentTo { names, reason, .. }
                    if names == &["bob"] && reason == "their key changed: verify or accept it first"
            )),
            "{:?}",
            out.updates
        );
        // Accepted: sent to the new key.
        let out = command(&mut engine, Command::AcceptKey(name("bob")));
        assert!(errors(&out.updates).is_empty(), "{:?}", out.updates);
        let out = command(&mut engine, send(Chat::Direct(name("bob")), "hi"));
        assert!(errors(&out.updates).is_empty(), "{:?}", out.updates);
        assert!(!sent_to(&out).is_empty());
    }

    #[tokio::test]
    async fn a_delivery_under_an_offered_key_waits_for_the_users_decision() {
        let alice = fixture("alice");
        let (bob, new) = (fixture("bob"), fixture("mallory"));
        let (mut engine, _dir) = bob_verified_then_changed(&bob, &new).await;
        let mut from_new = Bob::start(new.clone(), alice.public(), 1, 0);
        let out = feed_out(&mut engine, stored(announce(&from_new.announcement), 9));
        assert!(out.updates.is_empty(), "{:?}", out.updates);
        assert!(!acked(&out, 9), "{out:?}");
        // The user accepts the new key: the announcement is taken then.
        let out = command(&mut engine, Command::AcceptKey(name("bob")));
        assert!(acked(&out, 9), "{out:?}");
        let updates = feed(&mut engine, deliver(&from_new.seal("new key"), lobby()));
        assert_eq!(messages(&updates)[0].text, "new key");
    }

    #[tokio::test]
    async fn asking_for_the_safety_number_of_an_unknown_user_looks_up_the_key() {
        let bob = fixture("bob");
        let carol = fixture("carol");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let out = command(&mut engine, Command::SafetyNumber(name("carol")));
        assert!(
            matches!(&out.frames[..], [ClientFrame::LookupKey { name: n }] if *n == name("carol")),
            "{:?}",
            out.frames
        );
        let updates = feed(
            &mut engine,
            RelayFrame::Key {
                name: name("carol"),
                identity: Some(carol.public().to_bytes().into()),
                prekeys: Vec::new(),
            },
        );
        let expected = fixture("alice").public().safety_number(carol.public());
        assert!(
            updates.iter().any(|u| matches!(
                u,
                Update::SafetyNumber { name, safety_number, trust: TrustLevel::Unverified, .. }
                    if name == "carol" && safety_number.digits() == expected.digits()
            )),
            "{updates:?}"
        );
        // Nobody of that name: said so.
        command(&mut engine, Command::SafetyNumber(name("nobody")));
        let updates = feed(
            &mut engine,
            RelayFrame::Key {
                name: name("nobody"),
                identity: None,
                prekeys: Vec::new(),
            },
        );
        assert_eq!(
            errors(&updates),
            ["there is no user called nobody on this relay"]
        );
        assert_eq!(codes(&updates), [ProblemCode::NoSuchUser]);
    }

    /// Alice's engine after a restart: registered and in the lobby with
    /// bob; what it sent on connecting.
    fn restarted(account: &crate::account::Account, bob: &Identity) -> (Engine, Out) {
        let (mut engine, _) = new_engine(account, SessionLimits::default());
        let out = back_in_lobby(&mut engine, bob);
        (engine, out)
    }

    fn lookups(out: &Out) -> Vec<&str> {
        out.frames
            .iter()
            .filter_map(|f| match f {
                ClientFrame::LookupKey { name } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// A direct message to a user known by name only waits for the key
    /// lookup in the store's outbox: a restart before the answer keeps it,
    /// the lookup is asked again, and once the key is pinned it is sealed
    /// once (a later restart does not seal it again).
    #[tokio::test]
    async fn a_direct_message_waiting_for_a_key_survives_a_restart_and_is_sealed_once() {
        let (bob, carol) = (fixture("bob"), fixture("carol"));
        let (mut engine, dir) = alice_with_bob(&bob).await;
        let to_carol = Chat::Direct(name("carol"));
        let out = command(&mut engine, send(to_carol.clone(), "hi carol"));
        assert_eq!(lookups(&out), ["carol"]);
        assert!(sent_to(&out).is_empty(), "{out:?}");
        assert!(engine.has_unsent());
        drop(engine);

        let account = alice_account(dir.path()).await;
        // Shown pending at once by the next run, before anything is sent.
        let (_, history) = new_engine(&account, SessionLimits::default());
        assert!(
            history.iter().any(|u| matches!(u, Update::Queued(queued)
                if matches!(&queued[..], [q] if q.chat == to_carol && q.text == "hi carol"))),
            "{history:?}"
        );
        let (mut engine, out) = restarted(&account, &bob);
        assert_eq!(lookups(&out), ["carol"], "asked again: {out:?}");
        let out = feed_out(
            &mut engine,
            RelayFrame::Key {
                name: name("carol"),
                identity: Some(carol.public().to_bytes().into()),
                prekeys: Vec::new(),
            },
        );
        let carol_dest = Destination::User(name("carol"));
        assert_eq!(sent_to(&out), [&carol_dest, &carol_dest], "{out:?}");
        let sent = messages(&out.updates);
        assert_eq!(sent.len(), 1, "{:?}", out.updates);
        assert!(sent[0].outgoing && sent[0].text == "hi carol");
        assert!(!engine.has_unsent());
        let last = *send_ids(&out).iter().max().unwrap();
        feed(&mut engine, RelayFrame::Sent { id: last });
        drop(engine);

        // Sealed and accepted: the next run neither looks it up nor sends
        // it, and its history holds it once.
        let (engine, out) = restarted(&account, &bob);
        assert!(lookups(&out).is_empty(), "{out:?}");
        assert!(!sent_to(&out).contains(&&carol_dest), "{out:?}");
        drop(engine);
        let (_, history) = new_engine(&account, SessionLimits::default());
        assert_eq!(history_texts(&history), ["hi carol"]);
    }

    /// A lookup lost with the connection is asked again on the next one.
    #[tokio::test]
    async fn a_key_lookup_lost_with_the_connection_is_asked_again() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let out = command(&mut engine, send(Chat::Direct(name("carol")), "hi"));
        assert_eq!(lookups(&out), ["carol"]);
        engine.on_disconnected();
        let out = back_in_lobby(&mut engine, &bob);
        assert_eq!(lookups(&out), ["carol"], "{out:?}");
        assert!(engine.has_unsent());
    }

    /// The relay knows no such user: said, and the text leaves the outbox
    /// (not looked up again after a restart).
    #[tokio::test]
    async fn a_direct_message_to_nobody_is_refused_and_forgotten() {
        let bob = fixture("bob");
        let (mut engine, dir) = alice_with_bob(&bob).await;
        command(&mut engine, send(Chat::Direct(name("nobody")), "hello?"));
        drop(engine);
        let account = alice_account(dir.path()).await;
        let (mut engine, out) = restarted(&account, &bob);
        assert_eq!(lookups(&out), ["nobody"]);
        let updates = feed(
            &mut engine,
            RelayFrame::Key {
                name: name("nobody"),
                identity: None,
                prekeys: Vec::new(),
            },
        );
        assert_eq!(
            errors(&updates),
            ["there is no user called nobody on this relay"]
        );
        let answers: Vec<_> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Error(problem) => Some(problem.answers.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            answers,
            [vec![Answers::Sends {
                chat: Chat::Direct(name("nobody")),
                count: 1
            }]]
        );
        assert!(!engine.has_unsent());
        drop(engine);
        let (_engine, out) = restarted(&account, &bob);
        assert!(lookups(&out).is_empty(), "{out:?}");
    }
}
