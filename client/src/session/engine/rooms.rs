//! Rooms and roster views: the rooms this client is in, wants to be in and
//! left while disconnected, their members as the relay reports them
//! (`Joined`, `Presence`), the member lists sent to the front end (at most
//! once per interval during a presence flood), and the recent roster digests
//! a message's member set is compared with (P7, protocol.md 15.1).
//!
//! Membership is the user's, not the connection's: a member who goes
//! offline (`Presence { Disconnected }`) stays in the roster, marked
//! offline, and keeps its key slot in what this client sends (the relay
//! stores it until the member is back); only `Left` removes a member. The
//! relay reports every room the user is a member of right after
//! registration (`Joined`): a room the user left while disconnected is left
//! at the relay then, and a room joined from another device becomes one of
//! the rooms this client wants.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use sotto_crypto::{Fingerprint, SessionId, roster_digest};
use sotto_proto::{ClientFrame, ErrorCode, PresenceEvent, RoomName, UserKey, UserName};

use super::keys::trust_level;
use super::{Engine, Out};
use crate::session::{
    Answers, Chat, Member, PresenceChange, Problem, ProblemCode, TrustLevel, Update,
};
use crate::store::RoomSettings;

#[derive(Debug)]
pub(super) struct RosterEntry {
    pub(super) name: UserName,
    /// Connected now, as the relay last said.
    pub(super) online: bool,
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

/// The rooms recorded under `rooms` (names that no longer parse are
/// dropped).
pub(super) fn room_set(rooms: &[String]) -> BTreeSet<RoomName> {
    rooms.iter().filter_map(|r| r.parse().ok()).collect()
}

impl Engine {
    pub(super) fn save_wanted(&self, out: &mut Out) {
        let rooms: Vec<String> = self.wanted.iter().map(|r| r.to_string()).collect();
        if let Err(e) = self.store.set_joined_rooms(&rooms) {
            out.error(
                ProblemCode::Storage,
                format!("could not save the room list: {e}"),
            );
        }
    }

    fn save_leaving(&self, out: &mut Out) {
        let rooms: Vec<String> = self.leaving.iter().map(|r| r.to_string()).collect();
        if let Err(e) = self.store.set_rooms_to_leave(&rooms) {
            out.error(
                ProblemCode::Storage,
                format!("could not save the room list: {e}"),
            );
        }
    }

    /// Registered: join the rooms wanted (the relay answers `Joined`, again
    /// for a room the user is a member of already) and leave those left
    /// while disconnected.
    pub(super) fn rejoin(&mut self, out: &mut Out) {
        for room in &self.wanted {
            out.frames.push(ClientFrame::Join { room: room.clone() });
        }
        for room in &self.leaving {
            out.frames.push(ClientFrame::Leave { room: room.clone() });
        }
        self.leave_sent = self.leaving.clone();
    }

    /// The user's `/join`.
    pub(super) fn join_command(&mut self, room: RoomName, out: &mut Out) {
        if self.leaving.remove(&room) {
            self.save_leaving(out);
        }
        if self.connected {
            out.frames.push(ClientFrame::Join { room });
        } else if self.wanted.insert(room) {
            self.save_wanted(out);
        }
    }

    /// The user's `/leave`. While disconnected the room is left here at
    /// once and at the relay on the next connection (the user stays a
    /// member there until then).
    pub(super) fn leave_command(&mut self, room: RoomName, out: &mut Out) {
        if !self.connected {
            if self.wanted.remove(&room) {
                self.save_wanted(out);
                if self.leaving.insert(room.clone()) {
                    self.save_leaving(out);
                }
                out.update(Update::Left { room });
            }
        } else if self.rooms.contains_key(&room) {
            out.frames.push(ClientFrame::Leave { room });
        } else {
            let problem = Problem::new(ProblemCode::NotInRoom, format!("you are not in #{room}"));
            out.problem(problem.answering(Answers::Leave { room }));
        }
    }

    /// The relay's `Left`: the user is no longer a member. Said only for a
    /// room the user was in or joining: one left while disconnected was
    /// said then.
    pub(super) fn on_left(&mut self, room: RoomName, out: &mut Out) {
        self.leave_sent.remove(&room);
        if self.leaving.remove(&room) {
            self.save_leaving(out);
        }
        let was_in = self.rooms.remove(&room).is_some();
        let wanted = self.wanted.remove(&room);
        if wanted {
            self.save_wanted(out);
        }
        if was_in || wanted {
            out.update(Update::Left { room });
        }
    }

    /// Whether the relay's error answers a `Leave` of a room left while
    /// disconnected that the user is no longer a member of (a relay that
    /// ended the membership itself): that room is left, nothing to report.
    pub(super) fn left_already(
        &mut self,
        id: Option<u64>,
        code: ErrorCode,
        message: &str,
        out: &mut Out,
    ) -> bool {
        if id.is_some() || code != ErrorCode::NotMember {
            return false;
        }
        let Some(room) = self
            .leave_sent
            .iter()
            .find(|room| message == format!("not in {room}"))
            .cloned()
        else {
            return false;
        };
        self.leave_sent.remove(&room);
        if self.leaving.remove(&room) {
            self.save_leaving(out);
        }
        true
    }

    pub(super) fn on_joined(
        &mut self,
        room: RoomName,
        members: Vec<sotto_proto::Member>,
        out: &mut Out,
    ) {
        if self.enter_room(room.clone(), members, out) {
            // Last, after what was resent under earlier sessions.
            self.announce_in_room(&room, out);
        }
    }

    /// Everything `Joined` does but announcing this client's session: the
    /// roster, the notices, what waited for the room. Whether the client is
    /// in the room now (not leaving it).
    pub(crate) fn enter_room(
        &mut self,
        room: RoomName,
        members: Vec<sotto_proto::Member>,
        out: &mut Out,
    ) -> bool {
        if self.leaving.contains(&room) {
            // Left while disconnected: leave it at the relay too (once per
            // connection: the `Leave` sent on registering may be on its way).
            if self.leave_sent.insert(room.clone()) {
                out.frames.push(ClientFrame::Leave { room });
            }
            return false;
        }
        // The relay says `Joined` for each room right after registration
        // and again in answer to `Join`: the user hears it once per
        // connection.
        let again = self.rooms.contains_key(&room);
        let settings = match self.store.room_settings(room.as_str()) {
            Ok(settings) => settings,
            Err(e) => {
                out.error(
                    ProblemCode::Storage,
                    format!("could not read the settings of #{room}: {e}"),
                );
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
            entry.members.insert(
                member.name.key(),
                RosterEntry {
                    name: member.name,
                    online: member.online,
                },
            );
        }
        self.retire_view(&room, Instant::now());
        if let Some(previous) = self.rooms.insert(room.clone(), entry)
            && let Some(current) = self.rooms.get_mut(&room)
        {
            current.views = previous.views;
        }
        // A room joined from another device is one of the user's rooms now.
        if self.wanted.insert(room.clone()) {
            self.save_wanted(out);
        }
        if !again {
            out.update(Update::Joined { room: room.clone() });
        }
        if verified_only && !again {
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
        let here = Chat::Room(room.clone());
        self.resend_unsent(|chat| *chat == here, out);
        let queued: Vec<(u64, Chat, String)> = self.outbox.drain(..).collect();
        for (id, chat, text) in queued {
            if chat == Chat::Room(room.clone()) {
                self.send_typed(id, chat, text, out);
            } else {
                self.outbox.push_back((id, chat, text));
            }
        }
        true
    }

    pub(super) fn on_presence(
        &mut self,
        room: RoomName,
        user: UserName,
        event: PresenceEvent,
        identity: Option<Bytes>,
        out: &mut Out,
    ) {
        let Some(entry) = self.rooms.get(&room) else {
            return;
        };
        let known = entry.members.contains_key(&user.key());
        let (change, online) = match event {
            PresenceEvent::Joined => (PresenceChange::Joined, true),
            PresenceEvent::Left => (PresenceChange::Left, false),
            PresenceEvent::Disconnected => (PresenceChange::Disconnected, false),
            PresenceEvent::Connected => (PresenceChange::Connected, true),
        };
        // Only a member who joins or leaves changes the member set (and
        // with it the roster digest); one who goes offline or comes back is
        // a member all along. One not known yet is a member the relay
        // names: it joins the set.
        let membership = match change {
            PresenceChange::Joined | PresenceChange::Left => true,
            PresenceChange::Disconnected | PresenceChange::Connected => !known,
        };
        if membership {
            self.retire_view(&room, Instant::now());
        }
        let Some(entry) = self.rooms.get_mut(&room) else {
            return;
        };
        if change == PresenceChange::Left {
            entry.members.remove(&user.key());
        } else {
            entry
                .members
                .entry(user.key())
                .and_modify(|m| m.online = online)
                .or_insert_with(|| RosterEntry {
                    name: user.clone(),
                    online,
                });
        }
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
    /// with their pinned keys, offline members included, itself included:
    /// what a message sealed to the same view commits to.
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
                        online: self.connected,
                    }
                } else {
                    let contact = self.contacts.get(&m.name);
                    Member {
                        name: m.name.clone(),
                        fingerprint: contact.map(|c| c.identity.fingerprint()),
                        trust: contact.map_or(TrustLevel::Unknown, |c| trust_level(&c.trust)),
                        online: m.online,
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
mod tests;
