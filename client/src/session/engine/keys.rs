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
use crate::session::{Chat, TrustLevel, Update};

/// Work waiting for a peer's key (a `LookupKey` is in flight).
#[derive(Debug, Default)]
pub(super) struct Awaiting {
    pub(super) deliveries: Vec<Delivery>,
    pub(super) texts: Vec<String>,
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
                    out.error(format!("the relay sent an invalid key for {name}"));
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
            out.error(format!("could not save contacts: {e}"));
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
        for text in awaiting.texts {
            self.send_text(Chat::Direct(name.clone()), text, out);
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
            name: contact.name.to_string(),
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
}
