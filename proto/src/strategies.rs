//! proptest strategies for names and frames, shared by the crate's tests.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use crate::frame::{
    ClientFrame, Destination, ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, Route, Slot,
    UserInfo,
};
use crate::name::{RoomName, UserName};

/// Every valid name, by construction of the regex.
fn name_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9._-]{0,31}"
}

pub(crate) fn user_name() -> impl Strategy<Value = UserName> {
    name_string().prop_map(|s| UserName::try_from(s).unwrap())
}

pub(crate) fn room_name() -> impl Strategy<Value = RoomName> {
    name_string().prop_map(|s| RoomName::try_from(s).unwrap())
}

fn bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..48).prop_map(Bytes::from)
}

fn destination() -> impl Strategy<Value = Destination> {
    prop_oneof![
        room_name().prop_map(Destination::Room),
        user_name().prop_map(Destination::User),
    ]
}

fn presence_event() -> impl Strategy<Value = PresenceEvent> {
    prop_oneof![
        Just(PresenceEvent::Joined),
        Just(PresenceEvent::Left),
        Just(PresenceEvent::Disconnected),
        Just(PresenceEvent::Connected),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    use ErrorCode::*;
    proptest::sample::select(vec![
        BadFrame,
        UnsupportedVersion,
        NotRegistered,
        BadProof,
        NameTaken,
        NoSuchUser,
        NoSuchRoom,
        NotMember,
        RateLimited,
        TooLarge,
        QueueFull,
        ShuttingDown,
        Internal,
        LimitReached,
        BadPrekey,
        NoSuchBlob,
        BadChunk,
    ])
}

pub(crate) fn client_frame() -> impl Strategy<Value = ClientFrame> {
    let slot = (user_name(), bytes()).prop_map(|(to, data)| Slot { to, data });
    prop_oneof![
        (user_name(), bytes(), bytes()).prop_map(|(name, identity, proof)| {
            ClientFrame::Register {
                name,
                identity,
                proof,
            }
        }),
        room_name().prop_map(|room| ClientFrame::Join { room }),
        room_name().prop_map(|room| ClientFrame::Leave { room }),
        Just(ClientFrame::ListRooms),
        Just(ClientFrame::ListUsers),
        user_name().prop_map(|name| ClientFrame::LookupKey { name }),
        (any::<u64>(), destination(), bytes(), vec(slot, 0..4)).prop_map(
            |(id, to, body, slots)| ClientFrame::Send {
                route: Route { id, to },
                body,
                slots,
            }
        ),
        any::<u64>().prop_map(|delivery| ClientFrame::Ack { delivery }),
        any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ClientFrame::Pong { nonce }),
        Just(ClientFrame::Bye),
        bytes().prop_map(|prekey| ClientFrame::PublishPrekey { prekey }),
        (any::<[u8; 16]>(), any::<u32>(), any::<u32>(), bytes()).prop_map(
            |(blob, index, chunks, data)| ClientFrame::PutChunk {
                blob,
                index,
                chunks,
                data,
            }
        ),
        (any::<[u8; 16]>(), any::<u32>())
            .prop_map(|(blob, index)| ClientFrame::GetChunk { blob, index }),
        any::<[u8; 16]>().prop_map(|blob| ClientFrame::BlobStatus { blob }),
    ]
}

pub(crate) fn relay_frame() -> impl Strategy<Value = RelayFrame> {
    let member = (user_name(), bytes(), any::<bool>(), vec(bytes(), 0..3)).prop_map(
        |(name, identity, online, prekeys)| Member {
            name,
            identity,
            online,
            prekeys,
        },
    );
    let room_info =
        (room_name(), any::<u32>()).prop_map(|(name, members)| RoomInfo { name, members });
    let user_info =
        (user_name(), vec(room_name(), 0..4)).prop_map(|(name, rooms)| UserInfo { name, rooms });
    prop_oneof![
        any::<[u8; 32]>().prop_map(|nonce| RelayFrame::Challenge { nonce }),
        (user_name(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(name, offline_max_age, blob_max_bytes, blob_max_age)| RelayFrame::Registered {
                name,
                offline_max_age,
                blob_max_bytes,
                blob_max_age,
            }
        ),
        (room_name(), vec(member, 0..4))
            .prop_map(|(room, members)| RelayFrame::Joined { room, members }),
        room_name().prop_map(|room| RelayFrame::Left { room }),
        vec(room_info, 0..4).prop_map(|rooms| RelayFrame::Rooms { rooms }),
        vec(user_info, 0..4).prop_map(|users| RelayFrame::Users { users }),
        (user_name(), option::of(bytes()), vec(bytes(), 0..3)).prop_map(
            |(name, identity, prekeys)| RelayFrame::Key {
                name,
                identity,
                prekeys,
            }
        ),
        (
            any::<u64>(),
            user_name(),
            destination(),
            bytes(),
            option::of(bytes())
        )
            .prop_map(|(delivery, from, to, body, slot)| RelayFrame::Deliver {
                delivery,
                from,
                to,
                body,
                slot,
            }),
        (
            room_name(),
            user_name(),
            presence_event(),
            option::of(bytes()),
            vec(bytes(), 0..3)
        )
            .prop_map(
                |(room, user, event, identity, prekeys)| RelayFrame::Presence {
                    room,
                    user,
                    event,
                    identity,
                    prekeys,
                }
            ),
        any::<u64>().prop_map(|id| RelayFrame::Sent { id }),
        (option::of(any::<u64>()), error_code(), ".{0,40}")
            .prop_map(|(id, code, message)| RelayFrame::Error { id, code, message }),
        any::<u64>().prop_map(|nonce| RelayFrame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| RelayFrame::Pong { nonce }),
        Just(RelayFrame::ShuttingDown),
        (
            bytes(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<u16>(),
            bytes()
        )
            .prop_map(|(old_key, new_key, not_after, scheme, signature)| {
                RelayFrame::KeyHandover {
                    old_key,
                    new_key,
                    not_after,
                    scheme,
                    signature,
                }
            }),
        (any::<u64>(), error_code(), vec(user_name(), 0..4))
            .prop_map(|(id, code, users)| RelayFrame::Undelivered { id, code, users }),
        any::<[u8; 16]>().prop_map(|id| RelayFrame::PrekeyPublished { id }),
        (any::<[u8; 16]>(), any::<u32>())
            .prop_map(|(blob, index)| RelayFrame::ChunkStored { blob, index }),
        (any::<[u8; 16]>(), any::<u32>(), bytes())
            .prop_map(|(blob, index, data)| RelayFrame::Chunk { blob, index, data }),
        (any::<[u8; 16]>(), any::<u32>(), any::<u32>(), any::<u64>()).prop_map(
            |(blob, chunks, stored, expires_at)| RelayFrame::BlobState {
                blob,
                chunks,
                stored,
                expires_at,
            }
        ),
        (any::<[u8; 16]>(), any::<u32>(), error_code(), ".{0,40}").prop_map(
            |(blob, index, code, message)| RelayFrame::BlobRefused {
                blob,
                index,
                code,
                message,
            }
        ),
    ]
}

/// The number of [`ClientFrame`] variants.
pub(crate) const CLIENT_VARIANTS: usize = 15;

/// The wire index of `frame`'s variant. Exhaustive on purpose: adding a
/// variant fails to compile here until the strategies and this table are
/// updated. The indices pin the declaration order.
pub(crate) fn client_variant(frame: &ClientFrame) -> usize {
    match frame {
        ClientFrame::Register { .. } => 0,
        ClientFrame::Join { .. } => 1,
        ClientFrame::Leave { .. } => 2,
        ClientFrame::ListRooms => 3,
        ClientFrame::ListUsers => 4,
        ClientFrame::LookupKey { .. } => 5,
        ClientFrame::Send { .. } => 6,
        ClientFrame::Ack { .. } => 7,
        ClientFrame::Ping { .. } => 8,
        ClientFrame::Pong { .. } => 9,
        ClientFrame::Bye => 10,
        ClientFrame::PublishPrekey { .. } => 11,
        ClientFrame::PutChunk { .. } => 12,
        ClientFrame::GetChunk { .. } => 13,
        ClientFrame::BlobStatus { .. } => 14,
    }
}

/// The number of [`RelayFrame`] variants.
pub(crate) const RELAY_VARIANTS: usize = 21;

/// The wire index of `frame`'s variant; see [`client_variant`].
pub(crate) fn relay_variant(frame: &RelayFrame) -> usize {
    match frame {
        RelayFrame::Challenge { .. } => 0,
        RelayFrame::Registered { .. } => 1,
        RelayFrame::Joined { .. } => 2,
        RelayFrame::Left { .. } => 3,
        RelayFrame::Rooms { .. } => 4,
        RelayFrame::Users { .. } => 5,
        RelayFrame::Key { .. } => 6,
        RelayFrame::Deliver { .. } => 7,
        RelayFrame::Presence { .. } => 8,
        RelayFrame::Sent { .. } => 9,
        RelayFrame::Error { .. } => 10,
        RelayFrame::Ping { .. } => 11,
        RelayFrame::Pong { .. } => 12,
        RelayFrame::ShuttingDown => 13,
        RelayFrame::KeyHandover { .. } => 14,
        RelayFrame::Undelivered { .. } => 15,
        RelayFrame::PrekeyPublished { .. } => 16,
        RelayFrame::ChunkStored { .. } => 17,
        RelayFrame::Chunk { .. } => 18,
        RelayFrame::BlobState { .. } => 19,
        RelayFrame::BlobRefused { .. } => 20,
    }
}
