//! Rooms and roster views: the rooms this client is in and wants to be in,
//! their members as the relay reports them (`Joined`, `Presence`), the member
//! lists sent to the front end (at most once per interval during a presence
//! flood), and the recent roster digests a message's member set is compared
//! with (P7, protocol.md 15.1).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{Fingerprint, SessionId, roster_digest};
use sotto_proto::{PresenceEvent, RoomName, UserKey, UserName};

use super::keys::trust_level;
use super::{Engine, Out};
use crate::session::{Chat, Member, PresenceChange, TrustLevel, Update};
use crate::store::RoomSettings;

#[derive(Debug)]
pub(super) struct RosterEntry {
    pub(super) name: UserName,
}

#[derive(Debug, Default)]
pub(super) struct Room {
    pub(super) members: BTreeMap<UserKey, RosterEntry>,
    pub(super) settings: RoomSettings,
    /// Digests of recent member sets, with when they stopped being current.
    pub(super) views: VecDeque<([u8; 32], Instant)>,
    /// The digest of the current member set, once computed.
    pub(super) digest: Option<[u8; 32]>,
    /// When a member set was last retired with its digest computed.
    pub(super) retired: Option<Instant>,
    /// When the whole member list was last sent to the front end.
    pub(super) listed: Option<Instant>,
    /// The member list changed since it was last sent.
    pub(super) unlisted: bool,
}

impl Engine {
    pub(super) fn save_wanted(&self, out: &mut Out) {
        let rooms: Vec<String> = self.wanted.iter().map(|r| r.to_string()).collect();
        if let Err(e) = self.store.set_joined_rooms(&rooms) {
            out.error(format!("could not save the room list: {e}"));
        }
    }

    pub(super) fn on_joined(
        &mut self,
        room: RoomName,
        members: Vec<sotto_proto::Member>,
        out: &mut Out,
    ) {
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

    pub(super) fn on_presence(
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
            // Not sent by this relay yet: membership is the connection's.
            PresenceEvent::Connected => return,
        };
        let pinned = match (&event, identity) {
            (PresenceEvent::Joined, Some(identity)) => self.observe(&user, &identity, out),
            _ => false,
        };
        out.update(Update::Presence {
            room: room.clone(),
            name: user.clone(),
            change,
        });
        self.members_changed(&room, out);
        if pinned {
            self.retry_key(&user, out);
        }
    }

    /// Forgets the roster views older than `roster_grace`.
    pub(super) fn forget_old_views(&mut self, now: Instant) {
        let grace = self.limits.roster_grace;
        for room in self.rooms.values_mut() {
            room.views
                .retain(|(_, since)| now.duration_since(*since) < grace);
        }
    }

    /// Sends the member lists held back by `member_list_interval` once it
    /// has passed.
    pub(super) fn send_due_member_lists(&mut self, now: Instant, out: &mut Out) {
        let unlisted: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, r)| {
                r.unlisted
                    && r.listed.is_none_or(|at| {
                        now.duration_since(at) >= self.limits.member_list_every(r.members.len())
                    })
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in unlisted {
            self.members_update(&room, now, out);
        }
    }

    /// Remembers the member set that was current until `now`, so messages
    /// sealed just before a change still match (`roster_grace`).
    pub(super) fn retire_view(&mut self, room: &RoomName, now: Instant) {
        let Some(entry) = self.rooms.get(room) else {
            return;
        };
        let digest = match entry.digest {
            Some(digest) => Some(digest),
            // In a burst of changes, not every fleeting member set.
            None if entry.retired.is_some_and(|at| {
                now.duration_since(at) < self.limits.view_every(entry.members.len())
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
                while entry.views.len() > self.limits.roster_views {
                    entry.views.pop_front();
                }
            }
        }
    }

    /// The digest of `room`'s current member set, computed once per set.
    pub(super) fn current_digest(&mut self, room: &RoomName) -> Option<[u8; 32]> {
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
    pub(super) fn view_digest(&self, room: &Room) -> [u8; 32] {
        let others = room
            .members
            .values()
            .filter(|m| !self.is_me(&m.name))
            .filter_map(|m| self.contacts.get(&m.name))
            .map(|c| c.identity.fingerprint());
        roster_digest(others.chain([self.me]))
    }

    /// `room`'s members changed: send the whole list now, or at the next
    /// tick if one was sent less than `member_list_interval` ago, so a
    /// presence flood costs one list per room per interval, not one per
    /// event.
    pub(super) fn members_changed(&mut self, room: &RoomName, out: &mut Out) {
        let now = Instant::now();
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        let interval = self.limits.member_list_every(entry.members.len());
        if entry
            .listed
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            entry.unlisted = true;
        } else {
            self.members_update(room, now, out);
        }
    }

    pub(super) fn members_update(&mut self, room: &RoomName, now: Instant, out: &mut Out) {
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
                        name: m.name.clone(),
                        fingerprint: Some(self.me),
                        trust: TrustLevel::Verified,
                    }
                } else {
                    let contact = self.contacts.get(&m.name);
                    Member {
                        name: m.name.clone(),
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

    /// P7: a message commits to its sender's view of the room; warn once per
    /// session when it matches none of this client's recent views.
    pub(super) fn check_roster(
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
            from: self.display_name(from),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::*;
    use super::*;

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

    #[tokio::test]
    async fn a_member_who_leaves_drops_out_of_the_member_list_and_the_recipients() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let updates = feed(&mut engine, presence("bob", PresenceEvent::Left, None));
        assert!(
            matches!(
                &updates[..],
                [Update::Presence { name, change: PresenceChange::Left, .. }] if name == "bob"
            ),
            "{updates:?}"
        );
        // The list held back by the interval goes out at the next tick after
        // it, without bob.
        let mut out = Out::default();
        engine.tick(Instant::now() + Duration::from_secs(2), &mut out);
        assert_eq!(member_lists(&out.updates), [vec!["alice"]]);
        // A message to the room is sealed to nobody: bob is no recipient.
        let out = command(&mut engine, send(lobby_chat(), "after bob left"));
        assert!(sent_to(&out).is_empty(), "{:?}", out.frames);
        assert!(
            out.updates.iter().any(|u| matches!(
                u,
                Update::NotSentTo { names, .. } if names.is_empty()
            )),
            "{:?}",
            out.updates
        );
    }

    #[tokio::test]
    async fn a_room_the_relay_says_we_left_is_forgotten_and_not_joined_again() {
        let bob = fixture("bob");
        let (mut engine, _dir) = alice_with_bob(&bob).await;
        let updates = feed(
            &mut engine,
            RelayFrame::Left {
                room: RoomName::lobby(),
            },
        );
        assert!(
            matches!(&updates[..], [Update::Left { room }] if *room == RoomName::lobby()),
            "{updates:?}"
        );
        let out = command(&mut engine, send(lobby_chat(), "hello?"));
        assert!(sent_to(&out).is_empty());
        assert_eq!(
            errors(&out.updates),
            ["you are not in #lobby: /join lobby first"]
        );
        assert_eq!(engine.store.joined_rooms().unwrap(), Some(Vec::new()));
        // The next connection does not join it again.
        engine.on_disconnected();
        let mut out = Out::default();
        engine.on_registered(name("alice"), &mut out);
        assert!(
            !out.frames
                .iter()
                .any(|f| matches!(f, ClientFrame::Join { .. })),
            "{:?}",
            out.frames
        );
    }

    #[tokio::test]
    async fn a_message_sealed_to_another_member_set_is_reported_once_per_session() {
        let alice = fixture("alice");
        let carol = fixture("carol");
        let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
        let limits = SessionLimits {
            roster_grace: Duration::ZERO,
            ..SessionLimits::default()
        };
        let (mut engine, _dir) = alice_with_bob_limits(&bob.identity, limits).await;
        feed(&mut engine, announce(&bob.announcement));
        let mismatches = |updates: &[Update]| {
            updates
                .iter()
                .filter(|u| matches!(u, Update::RosterMismatch { .. }))
                .count()
        };
        // Sealed to {alice, bob}, alice's view: no warning.
        let updates = feed(&mut engine, deliver(&bob.seal("one"), lobby()));
        assert_eq!(messages(&updates)[0].text, "one");
        assert_eq!(mismatches(&updates), 0, "{updates:?}");
        // carol joins, and the old view is past its grace.
        feed(
            &mut engine,
            presence("carol", PresenceEvent::Joined, Some(carol.public())),
        );
        engine.tick(Instant::now() + Duration::from_secs(1), &mut Out::default());
        let updates = feed(&mut engine, deliver(&bob.seal("two"), lobby()));
        assert_eq!(messages(&updates)[0].text, "two");
        assert!(
            matches!(
                updates.iter().find(|u| matches!(u, Update::RosterMismatch { .. })),
                Some(Update::RosterMismatch { room, from }) if *room == RoomName::lobby() && from == "bob"
            ),
            "{updates:?}"
        );
        // Once per session.
        let updates = feed(&mut engine, deliver(&bob.seal("three"), lobby()));
        assert_eq!(messages(&updates)[0].text, "three");
        assert_eq!(mismatches(&updates), 0, "{updates:?}");
    }
}
