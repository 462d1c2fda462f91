//! Contacts: peer keys pinned on first sight (TOFU), their trust, and the
//! rule that a changed key is never used silently (property P6).
//!
//! The relay's directory, rosters and presence frames are hints. A key is
//! pinned the first time it is seen for a name; from then on:
//!
//! - the same key again changes nothing;
//! - another key for an **unverified** contact replaces the pin, and the
//!   change is reported (the UI shows a notice) — it is never silent;
//! - another key for a **verified** contact is *not* used: the contact
//!   becomes [`Trust::Changed`] and [`Contacts::sendable`] refuses it until
//!   the user verifies the new key by safety number
//!   ([`Contacts::mark_verified`]) or explicitly accepts it
//!   ([`Contacts::accept_new_key`]).
//!
//! Nothing is ever encrypted to a key that is not pinned here, so nothing
//! is encrypted to a key the user has not at least seen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sotto_crypto::{Fingerprint, PublicIdentity, SafetyNumber};
use sotto_proto::{UserKey, UserName};

/// How far a contact's pinned key is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Pinned on first sight, not compared out of band.
    Unverified,
    /// The user compared safety numbers (or scanned the QR code).
    Verified,
    /// A verified contact presented another key. Sending is blocked until
    /// the user verifies or accepts `offered`.
    Changed {
        /// The key the contact presented, not yet trusted.
        offered: Arc<PublicIdentity>,
    },
}

/// One contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// The name as the relay showed it first.
    pub name: UserName,
    /// The pinned key: the only one messages are encrypted to (shared: a
    /// relay may show one key under many names).
    pub identity: Arc<PublicIdentity>,
    /// Its trust.
    pub trust: Trust,
}

/// What seeing a key for a name changed; every variant is an event the UI
/// shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// A new contact, pinned unverified.
    Pinned {
        /// Who.
        name: UserName,
        /// The pinned key.
        fingerprint: Fingerprint,
        /// Known contacts whose names look like this one
        /// ([`sotto_proto::UserName::skeleton`]): `aIice` next to `alice`.
        /// Front ends warn and show the fingerprint beside the name.
        lookalikes: Vec<UserName>,
    },
    /// An unverified contact's key changed; the new key is now pinned.
    Changed {
        /// Who.
        name: UserName,
        /// The key that was pinned.
        previous: Fingerprint,
        /// The key pinned now.
        current: Fingerprint,
    },
    /// A verified contact presented another key; sending to it is blocked
    /// until the user decides.
    ChangedVerified {
        /// Who.
        name: UserName,
        /// The verified key, still pinned.
        pinned: Fingerprint,
        /// The key offered instead.
        offered: Fingerprint,
    },
}

/// Why a contact cannot be sent to.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Blocked {
    /// No key is pinned for the name.
    #[error("no key is known for {0}")]
    Unknown(String),
    /// The contact is verified and presented another key.
    #[error(
        "{name}'s key changed since you verified it: verify the new key or accept it before sending"
    )]
    KeyChanged {
        /// Who.
        name: String,
    },
}

/// Why a trust decision was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// No such contact.
    #[error("no key is known for {0}")]
    Unknown(String),
    /// The safety number shown does not match the keys: nothing verified.
    #[error("the safety number does not match: {0} was not verified")]
    Mismatch(String),
    /// There is no changed key to accept.
    #[error("{0}'s key has not changed")]
    NothingToAccept(String),
}

/// All contacts, by [`UserKey`]: names compared as the relay compares them.
#[derive(Clone, Debug, Default)]
pub struct Contacts {
    by_name: BTreeMap<UserKey, Contact>,
    /// Every name's [`UserName::skeleton`] beside it, to find look-alikes
    /// without looking at every contact.
    by_skeleton: BTreeSet<(String, String)>,
}

impl Contacts {
    /// No contacts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Contacts restored from storage.
    pub fn from_contacts(contacts: impl IntoIterator<Item = Contact>) -> Self {
        let mut all = Self::default();
        for contact in contacts {
            all.insert(contact);
        }
        all
    }

    fn insert(&mut self, contact: Contact) {
        let key = contact.name.key();
        self.by_skeleton
            .insert((contact.name.skeleton(), key.as_str().to_owned()));
        self.by_name.insert(key, contact);
    }

    /// Records that `identity` was presented for `name` (by the relay's
    /// directory, a roster, or a signed announcement), pinning it on first
    /// sight; returns the event to show, if anything changed.
    ///
    /// A new contact whose name looks like a known one's
    /// ([`UserName::skeleton`]: `aIice` or `al1ce` next to `alice`) is
    /// pinned like any other, and the event names the look-alikes so the
    /// front end can warn.
    pub fn observe(&mut self, name: &UserName, identity: &Arc<PublicIdentity>) -> Option<KeyEvent> {
        let Some(contact) = self.by_name.get_mut(&name.key()) else {
            let skeleton = name.skeleton();
            let lookalikes = self
                .by_skeleton
                .range((skeleton.clone(), String::new())..)
                .take_while(|(s, _)| *s == skeleton)
                .filter_map(|(_, key)| UserName::try_from(key.as_str()).ok())
                .filter_map(|key| self.by_name.get(&key.key()))
                .map(|c| c.name.clone())
                .collect();
            self.insert(Contact {
                name: name.clone(),
                identity: identity.clone(),
                trust: Trust::Unverified,
            });
            return Some(KeyEvent::Pinned {
                name: name.clone(),
                fingerprint: identity.fingerprint(),
                lookalikes,
            });
        };
        if *contact.identity == **identity {
            return None;
        }
        match &contact.trust {
            Trust::Unverified => {
                let previous = contact.identity.fingerprint();
                contact.identity = identity.clone();
                Some(KeyEvent::Changed {
                    name: contact.name.clone(),
                    previous,
                    current: identity.fingerprint(),
                })
            }
            Trust::Changed { offered } if **offered == **identity => None,
            Trust::Verified | Trust::Changed { .. } => {
                contact.trust = Trust::Changed {
                    offered: identity.clone(),
                };
                Some(KeyEvent::ChangedVerified {
                    name: contact.name.clone(),
                    pinned: contact.identity.fingerprint(),
                    offered: identity.fingerprint(),
                })
            }
        }
    }

    /// The contact called `name`.
    pub fn get(&self, name: &UserName) -> Option<&Contact> {
        self.by_name.get(&name.key())
    }

    /// Every contact, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.by_name.values()
    }

    /// The key to encrypt to for `name`, or why not to send.
    pub fn sendable(&self, name: &UserName) -> Result<&PublicIdentity, Blocked> {
        let contact = self
            .get(name)
            .ok_or_else(|| Blocked::Unknown(name.to_string()))?;
        match contact.trust {
            Trust::Changed { .. } => Err(Blocked::KeyChanged {
                name: contact.name.to_string(),
            }),
            Trust::Unverified | Trust::Verified => Ok(&contact.identity),
        }
    }

    /// The safety number to compare with `name`: for a changed contact, the
    /// one of the key it now offers.
    pub fn safety_number(&self, mine: &PublicIdentity, name: &UserName) -> Option<SafetyNumber> {
        let contact = self.get(name)?;
        let theirs = match &contact.trust {
            Trust::Changed { offered } => offered,
            Trust::Unverified | Trust::Verified => &contact.identity,
        };
        Some(mine.safety_number(theirs))
    }

    /// Marks `name` verified after the user compared `compared` (the safety
    /// number both read aloud, or a scanned QR payload) with the one of its
    /// current key. For a changed contact this verifies, and pins, the new
    /// key.
    pub fn mark_verified(
        &mut self,
        mine: &PublicIdentity,
        name: &UserName,
        compared: &str,
    ) -> Result<(), TrustError> {
        let expected = self
            .safety_number(mine, name)
            .ok_or_else(|| TrustError::Unknown(name.to_string()))?;
        let digits: String = compared.chars().filter(char::is_ascii_digit).collect();
        if digits != expected.digits() && !expected.matches_qr(compared) {
            return Err(TrustError::Mismatch(name.to_string()));
        }
        let contact = self
            .by_name
            .get_mut(&name.key())
            .ok_or_else(|| TrustError::Unknown(name.to_string()))?;
        if let Trust::Changed { offered } = &contact.trust {
            contact.identity = offered.clone();
        }
        contact.trust = Trust::Verified;
        Ok(())
    }

    /// Accepts the key a verified contact now offers, without comparing
    /// safety numbers: the explicit consent that unblocks sending. The
    /// contact becomes unverified.
    pub fn accept_new_key(&mut self, name: &UserName) -> Result<Fingerprint, TrustError> {
        let contact = self
            .by_name
            .get_mut(&name.key())
            .ok_or_else(|| TrustError::Unknown(name.to_string()))?;
        let Trust::Changed { offered } = &contact.trust else {
            return Err(TrustError::NothingToAccept(contact.name.to_string()));
        };
        contact.identity = offered.clone();
        contact.trust = Trust::Unverified;
        Ok(contact.identity.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;

    use sotto_crypto::Identity;

    use super::*;

    fn fixture(name: &str) -> &'static Identity {
        static PEOPLE: OnceLock<Vec<(String, Identity)>> = OnceLock::new();
        let people = PEOPLE.get_or_init(|| {
            ["alice", "bob", "mallory"]
                .iter()
                .map(|n| {
                    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join(format!("../testdata/identities/{n}.sotto-id"));
                    (
                        n.to_string(),
                        Identity::load(&path, b"sotto test vectors").unwrap(),
                    )
                })
                .collect()
        });
        &people.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn public(name: &str) -> &'static PublicIdentity {
        fixture(name).public()
    }

    fn shared(name: &str) -> Arc<PublicIdentity> {
        Arc::new(public(name).clone())
    }

    fn n(name: &str) -> UserName {
        name.parse().unwrap()
    }

    #[test]
    fn first_sight_pins_and_the_same_key_changes_nothing() {
        let mut contacts = Contacts::new();
        let event = contacts.observe(&n("bob"), &shared("bob"));
        assert!(matches!(event, Some(KeyEvent::Pinned { .. })));
        assert_eq!(contacts.observe(&n("BOB"), &shared("bob")), None);
        assert_eq!(contacts.sendable(&n("Bob")).unwrap(), public("bob"));
        assert_eq!(contacts.get(&n("bob")).unwrap().trust, Trust::Unverified);
    }

    #[test]
    fn an_unverified_contacts_new_key_is_reported_never_silent() {
        let mut contacts = Contacts::new();
        contacts.observe(&n("bob"), &shared("bob"));
        let event = contacts.observe(&n("bob"), &shared("mallory")).unwrap();
        assert_eq!(
            event,
            KeyEvent::Changed {
                name: n("bob"),
                previous: public("bob").fingerprint(),
                current: public("mallory").fingerprint(),
            }
        );
    }

    #[test]
    fn a_verified_contacts_new_key_blocks_sending_until_decided() {
        let mine = public("alice");
        let mut contacts = Contacts::new();
        contacts.observe(&n("bob"), &shared("bob"));
        let number = mine.safety_number(public("bob"));
        contacts
            .mark_verified(mine, &n("bob"), &number.to_string())
            .unwrap();

        let event = contacts.observe(&n("bob"), &shared("mallory")).unwrap();
        assert!(matches!(event, KeyEvent::ChangedVerified { .. }));
        // The verified key stays pinned and nothing is sent to either.
        assert_eq!(*contacts.get(&n("bob")).unwrap().identity, *public("bob"));
        assert!(matches!(
            contacts.sendable(&n("bob")),
            Err(Blocked::KeyChanged { .. })
        ));
        // Seeing the offered key again is not a new event; the old key is.
        assert_eq!(contacts.observe(&n("bob"), &shared("mallory")), None);

        // Accepting is explicit, and leaves the contact unverified.
        assert_eq!(
            contacts.accept_new_key(&n("bob")).unwrap(),
            public("mallory").fingerprint()
        );
        assert_eq!(contacts.sendable(&n("bob")).unwrap(), public("mallory"));
        assert_eq!(contacts.get(&n("bob")).unwrap().trust, Trust::Unverified);
        assert!(matches!(
            contacts.accept_new_key(&n("bob")),
            Err(TrustError::NothingToAccept(_))
        ));
    }

    #[test]
    fn verifying_a_changed_key_needs_its_own_safety_number() {
        let mine = public("alice");
        let mut contacts = Contacts::new();
        contacts.observe(&n("bob"), &shared("bob"));
        contacts
            .mark_verified(
                mine,
                &n("bob"),
                mine.safety_number(public("bob")).qr_payload(),
            )
            .unwrap();
        contacts.observe(&n("bob"), &shared("mallory"));
        // The old number no longer verifies anything.
        let old = mine.safety_number(public("bob"));
        assert!(matches!(
            contacts.mark_verified(mine, &n("bob"), old.digits()),
            Err(TrustError::Mismatch(_))
        ));
        assert!(contacts.sendable(&n("bob")).is_err());
        let new = mine.safety_number(public("mallory"));
        contacts
            .mark_verified(mine, &n("bob"), &new.to_string())
            .unwrap();
        assert_eq!(contacts.get(&n("bob")).unwrap().trust, Trust::Verified);
        assert_eq!(contacts.sendable(&n("bob")).unwrap(), public("mallory"));
    }

    #[test]
    fn a_new_name_that_looks_like_a_known_one_names_it() {
        let mut contacts = Contacts::new();
        contacts.observe(&n("alice"), &shared("alice"));
        contacts.observe(&n("bob"), &shared("bob"));
        let lookalikes = |event: Option<KeyEvent>| match event {
            Some(KeyEvent::Pinned { lookalikes, .. }) => lookalikes,
            other => panic!("not a new pin: {other:?}"),
        };
        assert_eq!(
            lookalikes(contacts.observe(&n("aIice"), &shared("mallory"))),
            ["alice"]
        );
        // Now both earlier spellings are known look-alikes of the next one.
        assert_eq!(
            lookalikes(contacts.observe(&n("al1ce"), &shared("mallory"))),
            ["aIice", "alice"]
        );
        // A name that looks like nothing known, and the same name in
        // another letter case (the same contact, not a new one).
        assert!(lookalikes(contacts.observe(&n("carol"), &shared("mallory"))).is_empty());
        assert_eq!(contacts.observe(&n("ALICE"), &shared("alice")), None);
    }

    #[test]
    fn unknown_names_cannot_be_sent_to_or_verified() {
        let mut contacts = Contacts::new();
        assert!(matches!(
            contacts.sendable(&n("nobody")),
            Err(Blocked::Unknown(_))
        ));
        assert!(matches!(
            contacts.mark_verified(public("alice"), &n("nobody"), "123"),
            Err(TrustError::Unknown(_))
        ));
    }
}
