//! Rooms: membership that outlives a connection (joining, leaving, the
//! absence limit), the presence events the other members hear, and the
//! listing of rooms.

use std::time::Duration;

use sotto_proto::{
    ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, RoomName, UserKey, UserName,
};

use super::{Registry, RoomMember, Shared, encode};
use crate::store::now_secs;

impl Shared {
    /// Sends `frame` to every connected member of `room` except `except`.
    pub(super) fn broadcast(
        &self,
        registry: &Registry,
        room: &RoomName,
        except: Option<&UserKey>,
        frame: &RelayFrame,
    ) {
        let Some(members) = registry.rooms.get(room) else {
            return;
        };
        let Some(bytes) = encode(frame) else { return };
        for (_, member) in members.iter().filter(|(m, _)| Some(*m) != except) {
            if let Some(peer) = &member.peer {
                peer.push(bytes.clone(), &self.metrics);
            }
        }
    }

    /// Tells the other connected members of `room` that `name` did `event`.
    pub(super) fn presence(
        &self,
        registry: &Registry,
        room: &RoomName,
        user: &UserKey,
        name: &UserName,
        event: PresenceEvent,
    ) {
        self.broadcast(
            registry,
            room,
            Some(user),
            &RelayFrame::Presence {
                room: room.clone(),
                user: name.clone(),
                event,
                identity: None,
                prekeys: Vec::new(),
            },
        );
    }

    /// Makes `name` a member of `room` (until it leaves) and returns the
    /// members, online or not, with their identities (as hints), and
    /// whether it is a new member (then the others are told, and the
    /// caller stores the membership).
    pub(crate) fn join(
        &self,
        name: &UserName,
        room: &RoomName,
    ) -> Result<(Vec<Member>, bool), ErrorCode> {
        let user = name.key();
        let mut registry = self.registry();
        let Registry {
            users,
            rooms,
            memberships,
            prekeys,
            ..
        } = &mut *registry;
        let online = users.get(&user).ok_or(ErrorCode::NotRegistered)?;
        let mine = memberships.entry(user.clone()).or_default();
        if !mine.contains(room) && mine.len() >= self.config.max_rooms_per_user {
            return Err(ErrorCode::TooLarge);
        }
        let fresh = mine.insert(room.clone());
        if fresh {
            rooms.entry(room.clone()).or_default().insert(
                user.clone(),
                RoomMember {
                    name: online.name.clone(),
                    identity: online.identity.clone(),
                    fingerprint: online.fingerprint,
                    peer: Some(online.peer.clone()),
                    last_seen: now_secs(),
                },
            );
            let identity = online.identity.clone();
            let display = online.name.clone();
            let prekeys = super::prekeys::unexpired(prekeys, &online.fingerprint, now_secs());
            self.broadcast(
                &registry,
                room,
                Some(&user),
                &RelayFrame::Presence {
                    room: room.clone(),
                    user: display,
                    event: PresenceEvent::Joined,
                    identity: Some(identity),
                    prekeys,
                },
            );
        }
        Ok((members_of(&registry, room), fresh))
    }

    /// Ends `name`'s membership of `room`; the others are told.
    pub(crate) fn leave(&self, name: &UserName, room: &RoomName) -> Result<(), ErrorCode> {
        let user = name.key();
        let mut registry = self.registry();
        let left = registry
            .memberships
            .get_mut(&user)
            .is_some_and(|rooms| rooms.remove(room));
        if !left {
            return Err(ErrorCode::NotMember);
        }
        let display = remove_member(&mut registry, room, &user).unwrap_or_else(|| name.clone());
        self.presence(&registry, room, &user, &display, PresenceEvent::Left);
        Ok(())
    }

    /// Ends the memberships of members offline for longer than `absence`
    /// (as of `now`, seconds since the epoch); the members online are told.
    /// Returns them, for the store.
    pub(crate) fn expire_absent(&self, now: u64, absence: Duration) -> Vec<(RoomName, UserKey)> {
        if absence.is_zero() {
            return Vec::new();
        }
        let cutoff = now.saturating_sub(absence.as_secs());
        let mut registry = self.registry();
        let gone: Vec<(RoomName, UserKey)> = registry
            .rooms
            .iter()
            .flat_map(|(room, members)| {
                members
                    .iter()
                    .filter(|(user, m)| {
                        m.peer.is_none() && !registry.is_online(user) && m.last_seen < cutoff
                    })
                    .map(|(user, _)| (room.clone(), user.clone()))
            })
            .collect();
        for (room, user) in &gone {
            if let Some(rooms) = registry.memberships.get_mut(user) {
                rooms.remove(room);
                if rooms.is_empty() {
                    registry.memberships.remove(user);
                }
            }
            if let Some(name) = remove_member(&mut registry, room, user) {
                self.presence(&registry, room, user, &name, PresenceEvent::Left);
            }
        }
        gone
    }

    /// Rooms with their member counts (online or not), by name.
    pub(crate) fn rooms(&self) -> Vec<RoomInfo> {
        self.registry()
            .rooms
            .iter()
            .map(|(name, members)| RoomInfo {
                name: name.clone(),
                members: u32::try_from(members.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }
}

/// Takes `user` out of `room`'s members (the room goes with its last);
/// returns the name it had.
pub(super) fn remove_member(
    registry: &mut Registry,
    room: &RoomName,
    user: &UserKey,
) -> Option<UserName> {
    let members = registry.rooms.get_mut(room)?;
    let removed = members.remove(user).map(|m| m.name);
    if members.is_empty() {
        registry.rooms.remove(room);
    }
    removed
}

/// `room`'s members, online or not, in ascending order of their keys (the
/// names with ASCII letters lowered), with their identities' prekeys as
/// far as [`JOINED_PREKEY_ROOM`] allows (see [`Registry::fill_prekeys`]).
pub(super) fn members_of(registry: &Registry, room: &RoomName) -> Vec<Member> {
    let members = registry.rooms.get(room);
    let mut list: Vec<Member> = members
        .into_iter()
        .flatten()
        .map(|(_, m)| Member {
            name: m.name.clone(),
            identity: m.identity.clone(),
            online: m.peer.is_some() || registry.is_online(&m.name.key()),
            prekeys: Vec::new(),
        })
        .collect();
    let fingerprints = members.into_iter().flatten().map(|(_, m)| m.fingerprint);
    registry.fill_prekeys(room, &mut list, fingerprints, now_secs());
    list
}
