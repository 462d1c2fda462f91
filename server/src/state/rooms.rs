//! Rooms: joining and leaving, the presence events the other members
//! hear, and the listing of rooms.

use sotto_proto::{
    ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, RoomName, UserKey, UserName,
};

use super::{Registry, Shared, encode};

impl Shared {
    /// Takes `user` (shown as `name`) out of `room` and tells the
    /// remaining members.
    pub(super) fn remove_member(
        &self,
        registry: &mut Registry,
        room: &RoomName,
        user: &UserKey,
        name: &UserName,
        event: PresenceEvent,
    ) {
        if let Some(members) = registry.rooms.get_mut(room) {
            members.remove(user);
            if members.is_empty() {
                registry.rooms.remove(room);
            }
        }
        self.broadcast(
            registry,
            room,
            None,
            &RelayFrame::Presence {
                room: room.clone(),
                user: name.clone(),
                event,
                identity: None,
            },
        );
    }

    /// Sends `frame` to every member of `room` except `except`.
    fn broadcast(
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
        for (_, peer) in members.iter().filter(|(m, _)| Some(*m) != except) {
            peer.push(bytes.clone(), &self.metrics);
        }
    }

    /// Adds `name` to `room` and returns the members (with their
    /// identities, as hints); the others are told.
    pub(crate) fn join(&self, name: &UserName, room: &RoomName) -> Result<Vec<Member>, ErrorCode> {
        let user = name.key();
        let mut registry = self.registry();
        let (identity, display, peer) = {
            let online = registry
                .users
                .get_mut(&user)
                .ok_or(ErrorCode::NotRegistered)?;
            if !online.rooms.contains(room) && online.rooms.len() >= self.config.max_rooms_per_user
            {
                return Err(ErrorCode::TooLarge);
            }
            let fresh = online.rooms.insert(room.clone());
            (
                fresh.then(|| online.identity.clone()),
                UserName::clone(&online.name),
                online.peer.clone(),
            )
        };
        registry
            .rooms
            .entry(room.clone())
            .or_default()
            .insert(user.clone(), peer);
        if let Some(identity) = identity {
            self.broadcast(
                &registry,
                room,
                Some(&user),
                &RelayFrame::Presence {
                    room: room.clone(),
                    user: display,
                    event: PresenceEvent::Joined,
                    identity: Some(identity),
                },
            );
        }
        let members = registry
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|(m, _)| registry.users.get(m))
            .map(|o| Member {
                name: UserName::clone(&o.name),
                identity: o.identity.clone(),
                online: true,
            })
            .collect();
        Ok(members)
    }

    /// Takes `name` out of `room`; the others are told.
    pub(crate) fn leave(&self, name: &UserName, room: &RoomName) -> Result<(), ErrorCode> {
        let user = name.key();
        let mut registry = self.registry();
        let online = registry
            .users
            .get_mut(&user)
            .ok_or(ErrorCode::NotRegistered)?;
        if !online.rooms.remove(room) {
            return Err(ErrorCode::NotMember);
        }
        let display = UserName::clone(&online.name);
        self.remove_member(&mut registry, room, &user, &display, PresenceEvent::Left);
        Ok(())
    }

    /// Rooms with their member counts, by name.
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
