//! The frames exchanged between clients and the relay.
//!
//! # Compatibility
//!
//! Frames are encoded with postcard, which writes struct fields in
//! declaration order and enum variants by their index in declaration order.
//! The order of fields and variants is therefore part of the wire format:
//! **never reorder, remove or insert** fields or variants. A change that
//! does need to break the format bumps
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION). New variants may only be
//! appended, and only together with a version bump, because an older peer
//! refuses an unknown variant index as malformed.
//!
//! For the same reason these enums are not `#[non_exhaustive]`: both ends
//! are built from this crate and are expected to match every variant.
//!
//! Byte fields ([`Bytes`]) are opaque to this crate and to the relay: they
//! carry encoded identities, signatures and ciphertext that only
//! `sotto-crypto` interprets.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::name::{RoomName, UserName};

/// A frame sent by a client to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// Answer to the relay's [`RelayFrame::Challenge`]: claim `name` for
    /// `identity`.
    Register {
        /// The name to claim on this relay.
        name: UserName,
        /// An encoded sotto public identity (opaque here).
        identity: Bytes,
        /// A PSS signature over the registration transcript, as defined by
        /// `sotto-crypto`.
        proof: Bytes,
    },
    /// Join a room, creating it if needed.
    Join {
        /// The room to join.
        room: RoomName,
    },
    /// Leave a room.
    Leave {
        /// The room to leave.
        room: RoomName,
    },
    /// Ask for the list of rooms; answered by [`RelayFrame::Rooms`].
    ListRooms,
    /// Ask for the list of users; answered by [`RelayFrame::Users`].
    ListUsers,
    /// Ask the relay's directory for a user's identity; answered by
    /// [`RelayFrame::Key`].
    LookupKey {
        /// The user to look up.
        name: UserName,
    },
    /// Ciphertext to route. `route` is the routing header, the only part
    /// the relay reads.
    Send {
        /// Where to deliver the message, and the request id to echo.
        route: Route,
        /// The ciphertext, forwarded untouched to every recipient.
        body: Bytes,
        /// The recipients' key slots; each recipient receives only its own.
        slots: Vec<Slot>,
    },
    /// The client stored delivery `delivery`; the relay may forget it.
    Ack {
        /// The relay's id from [`RelayFrame::Deliver`].
        delivery: u64,
    },
    /// Liveness check; the relay answers with [`RelayFrame::Pong`].
    Ping {
        /// An arbitrary value echoed in the answer.
        nonce: u64,
    },
    /// Answer to a [`RelayFrame::Ping`].
    Pong {
        /// The nonce of the ping being answered.
        nonce: u64,
    },
    /// Orderly goodbye.
    Bye,
    /// Store a signed prekey of the registered identity in the relay's
    /// key directory; answered by [`RelayFrame::PrekeyPublished`] once it
    /// is stored durably, or by [`RelayFrame::Error`] (`BadPrekey`,
    /// `TooLarge`, `RateLimited`, `Internal`).
    PublishPrekey {
        /// The encoded signed prekey (opaque to this crate; the relay
        /// verifies it against the connection's registered identity).
        prekey: Bytes,
    },
    /// Store chunk `index` of the blob `blob`, of `chunks` chunks, for the
    /// registered identity. Chunks are stored in order, from 0; the first
    /// makes the blob, the owner's until it expires. Answered by
    /// [`RelayFrame::ChunkStored`] once durably stored, or by
    /// [`RelayFrame::BlobRefused`].
    PutChunk {
        /// The blob's id, drawn at random by its owner.
        blob: [u8; 16],
        /// The chunk's index: the number of chunks stored so far.
        index: u32,
        /// How many chunks the blob has, the same in every chunk.
        chunks: u32,
        /// The chunk's ciphertext (opaque here).
        data: Bytes,
    },
    /// Fetch chunk `index` of the complete blob `blob`; answered by
    /// [`RelayFrame::Chunk`] or [`RelayFrame::BlobRefused`].
    GetChunk {
        /// The blob.
        blob: [u8; 16],
        /// The chunk.
        index: u32,
    },
    /// Ask how much of `blob` is stored; answered by
    /// [`RelayFrame::BlobState`] or [`RelayFrame::BlobRefused`].
    BlobStatus {
        /// The blob.
        blob: [u8; 16],
    },
}

/// The routing header of a [`ClientFrame::Send`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// A client-chosen request id, echoed in [`RelayFrame::Sent`] or
    /// [`RelayFrame::Error`].
    pub id: u64,
    /// The recipient room or user.
    pub to: Destination,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Destination {
    /// Every member of a room.
    Room(RoomName),
    /// A single user.
    User(UserName),
}

/// One recipient's key slot; the relay forwards to each recipient only its
/// own slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The recipient.
    pub to: UserName,
    /// The wrapped key material for that recipient (opaque here).
    pub data: Bytes,
}

/// A frame sent by the relay to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayFrame {
    /// First frame on every connection: a fresh 32-byte challenge to sign.
    Challenge {
        /// The random challenge.
        nonce: [u8; 32],
    },
    /// The client's [`ClientFrame::Register`] succeeded.
    Registered {
        /// The name now bound to this connection.
        name: UserName,
        /// The relay's storage age: how long it keeps a delivery for an
        /// absent recipient (`--offline-max-age`), in seconds. Clients keep
        /// the private halves of their prekeys this much past expiry.
        offline_max_age: u64,
        /// The most bytes of ciphertext one blob may hold
        /// (`blob_max_bytes`).
        blob_max_bytes: u64,
        /// How long the relay keeps a complete blob, in seconds
        /// (`blob_max_age`).
        blob_max_age: u64,
    },
    /// The client joined `room`.
    Joined {
        /// The room joined.
        room: RoomName,
        /// The room's members, including the client itself.
        members: Vec<Member>,
    },
    /// The client left `room`.
    Left {
        /// The room left.
        room: RoomName,
    },
    /// Answer to [`ClientFrame::ListRooms`].
    Rooms {
        /// The relay's rooms.
        rooms: Vec<RoomInfo>,
    },
    /// Answer to [`ClientFrame::ListUsers`].
    Users {
        /// The relay's connected users.
        users: Vec<UserInfo>,
    },
    /// Directory answer: a hint the client verifies, never trusts.
    Key {
        /// The user looked up.
        name: UserName,
        /// The identity the relay has for `name`, if any (opaque here).
        identity: Option<Bytes>,
        /// The identity's stored signed prekeys, newest first (opaque
        /// here; the client verifies each against the pinned identity).
        prekeys: Vec<Bytes>,
    },
    /// Routed ciphertext, stored by the relay until the client
    /// acknowledges `delivery` with [`ClientFrame::Ack`].
    Deliver {
        /// The relay's id for this delivery.
        delivery: u64,
        /// The registered sender.
        from: UserName,
        /// The destination the sender addressed.
        to: Destination,
        /// The ciphertext, as sent.
        body: Bytes,
        /// This recipient's key slot, if the sender included one.
        slot: Option<Bytes>,
    },
    /// A member of a room the client is in joined, left or disconnected.
    Presence {
        /// The room.
        room: RoomName,
        /// The member concerned.
        user: UserName,
        /// What happened.
        event: PresenceEvent,
        /// The member's identity (opaque here), sent when it joins.
        identity: Option<Bytes>,
        /// The member's stored signed prekeys, newest first, sent when it
        /// joins (empty otherwise).
        prekeys: Vec<Bytes>,
    },
    /// Cumulative: every [`ClientFrame::Send`] of this connection with a
    /// route id up to `id` that was not answered with [`RelayFrame::Error`]
    /// before this frame is durably stored for its recipients.
    Sent {
        /// The highest [`Route::id`] covered.
        id: u64,
    },
    /// A request failed, or the connection is about to be closed.
    Error {
        /// The [`Route::id`] of the failed send, if the error concerns one.
        id: Option<u64>,
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
    /// Liveness check; the client answers with [`ClientFrame::Pong`].
    Ping {
        /// An arbitrary value echoed in the answer.
        nonce: u64,
    },
    /// Answer to a [`ClientFrame::Ping`].
    Pong {
        /// The nonce of the ping being answered.
        nonce: u64,
    },
    /// The relay is shutting down; reconnect later.
    ShuttingDown,
    /// The relay moved to a new TLS key: the previous key's signed
    /// statement that the key presented in this handshake succeeds it.
    /// Sent, while the hand-over is valid, as the first frame of every
    /// connection (before [`RelayFrame::Challenge`]). A client pinned to
    /// the old key follows it only if every check of protocol.md §9.2.1
    /// passes; a client pinned to the new key ignores it.
    KeyHandover {
        /// The previous key: its SubjectPublicKeyInfo, DER.
        old_key: Bytes,
        /// SHA-256 of the new key's SubjectPublicKeyInfo DER (the key of
        /// the certificate presented).
        new_key: [u8; 32],
        /// The hand-over is void after this time (Unix seconds).
        not_after: u64,
        /// The TLS 1.3 `SignatureScheme` code of `signature`.
        scheme: u16,
        /// The old key's signature over the hand-over transcript.
        signature: Bytes,
    },
    /// The room message of the [`ClientFrame::Send`] with route id `id`
    /// was stored for every other member except `users`, who will not get
    /// it because of `code`. A [`RelayFrame::Sent`] covering `id` follows.
    Undelivered {
        /// The [`Route::id`] of the send.
        id: u64,
        /// Why these members will not get it.
        code: ErrorCode,
        /// The members who will not get it.
        users: Vec<UserName>,
    },
    /// Answer to [`ClientFrame::PublishPrekey`]: the prekey is stored
    /// durably (or was already), and handed out while it is among the
    /// identity's newest unexpired ones.
    PrekeyPublished {
        /// The prekey's id (the first 16 bytes of
        /// `SHA256("sotto/v2/prekey-id\0" || its public key DER)`).
        id: [u8; 16],
    },
    /// Answer to [`ClientFrame::PutChunk`]: the chunk is durably stored
    /// (or already was).
    ChunkStored {
        /// The blob.
        blob: [u8; 16],
        /// The chunk.
        index: u32,
    },
    /// Answer to [`ClientFrame::GetChunk`]: the chunk as its owner stored
    /// it.
    Chunk {
        /// The blob.
        blob: [u8; 16],
        /// The chunk.
        index: u32,
        /// The chunk's ciphertext (opaque here).
        data: Bytes,
    },
    /// Answer to [`ClientFrame::BlobStatus`].
    BlobState {
        /// The blob.
        blob: [u8; 16],
        /// How many chunks it has.
        chunks: u32,
        /// How many of them are stored (the first `stored`); the blob is
        /// complete when `stored == chunks`.
        stored: u32,
        /// When the relay deletes it (Unix seconds).
        expires_at: u64,
    },
    /// A blob request failed.
    BlobRefused {
        /// The blob it concerned.
        blob: [u8; 16],
        /// The chunk it concerned (0 for [`ClientFrame::BlobStatus`]).
        index: u32,
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

/// A member of a room, in [`RelayFrame::Joined`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's name.
    pub name: UserName,
    /// The member's encoded public identity (opaque here).
    pub identity: Bytes,
    /// Whether the member has a registered connection now.
    pub online: bool,
    /// The member's stored signed prekeys, newest first (opaque here).
    pub prekeys: Vec<Bytes>,
}

/// A room, in [`RelayFrame::Rooms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room's name.
    pub name: RoomName,
    /// How many members it has.
    pub members: u32,
}

/// A user, in [`RelayFrame::Users`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user's name.
    pub name: UserName,
    /// The rooms the user is in.
    pub rooms: Vec<RoomName>,
}

/// What happened to a room member, in [`RelayFrame::Presence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PresenceEvent {
    /// The user joined the room.
    Joined,
    /// The user left the room.
    Left,
    /// The member's connection closed; it stays a member.
    Disconnected,
    /// The member connected again.
    Connected,
}

/// Why a request failed, in [`RelayFrame::Error`].
///
/// Encoded by variant index like every enum here: append only, never
/// reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client sent a frame that could not be decoded.
    BadFrame,
    /// The client speaks another protocol version.
    UnsupportedVersion,
    /// The request needs a registered name and the client has none.
    NotRegistered,
    /// The registration proof did not verify.
    BadProof,
    /// The name is registered to another identity.
    NameTaken,
    /// No such user.
    NoSuchUser,
    /// No such room.
    NoSuchRoom,
    /// The client is not a member of the room.
    NotMember,
    /// The client is sending too fast.
    RateLimited,
    /// The frame or message is too large.
    TooLarge,
    /// The recipient's offline queue is full.
    QueueFull,
    /// The relay is shutting down.
    ShuttingDown,
    /// The relay failed internally.
    Internal,
    /// A limit the relay sets on one identity key or one source address is
    /// reached: names per key, connections per key, or connections kept
    /// for keys not yet connected when the relay is nearly full.
    LimitReached,
    /// A published prekey that does not verify for the connection's
    /// registered identity (or is expired).
    BadPrekey,
    /// No complete blob (for a fetch), or no blob at all (for a status),
    /// has this id: it never existed, expired, or is still being uploaded.
    NoSuchBlob,
    /// A chunk that does not fit its blob: not the next one to store, a
    /// chunk count other than the blob's, a length other than a chunk's,
    /// or a blob that belongs to another identity.
    BadChunk,
}

/// The wire index of every variant of [`ClientFrame`], [`RelayFrame`] and
/// [`Destination`]: postcard writes an enum value as `varint(index)` then
/// the variant's fields, the index being the variant's position in the
/// declaration. The one place these numbers are written down, for the
/// hand-assembled frames of [`codec::fast`](crate::codec::fast); the
/// crate's tests encode every variant and compare its first byte with
/// these constants, so reordering an enum fails them. Every index is below
/// 128: one varint byte.
pub mod index {
    /// Indices of [`ClientFrame`](super::ClientFrame)'s variants.
    pub mod client {
        /// `Register`.
        pub const REGISTER: u32 = 0;
        /// `Join`.
        pub const JOIN: u32 = 1;
        /// `Leave`.
        pub const LEAVE: u32 = 2;
        /// `ListRooms`.
        pub const LIST_ROOMS: u32 = 3;
        /// `ListUsers`.
        pub const LIST_USERS: u32 = 4;
        /// `LookupKey`.
        pub const LOOKUP_KEY: u32 = 5;
        /// `Send`.
        pub const SEND: u32 = 6;
        /// `Ack`.
        pub const ACK: u32 = 7;
        /// `Ping`.
        pub const PING: u32 = 8;
        /// `Pong`.
        pub const PONG: u32 = 9;
        /// `Bye`.
        pub const BYE: u32 = 10;
        /// `PublishPrekey`.
        pub const PUBLISH_PREKEY: u32 = 11;
        /// `PutChunk`.
        pub const PUT_CHUNK: u32 = 12;
        /// `GetChunk`.
        pub const GET_CHUNK: u32 = 13;
        /// `BlobStatus`.
        pub const BLOB_STATUS: u32 = 14;
    }

    /// Indices of [`RelayFrame`](super::RelayFrame)'s variants.
    pub mod relay {
        /// `Challenge`.
        pub const CHALLENGE: u32 = 0;
        /// `Registered`.
        pub const REGISTERED: u32 = 1;
        /// `Joined`.
        pub const JOINED: u32 = 2;
        /// `Left`.
        pub const LEFT: u32 = 3;
        /// `Rooms`.
        pub const ROOMS: u32 = 4;
        /// `Users`.
        pub const USERS: u32 = 5;
        /// `Key`.
        pub const KEY: u32 = 6;
        /// `Deliver`.
        pub const DELIVER: u32 = 7;
        /// `Presence`.
        pub const PRESENCE: u32 = 8;
        /// `Sent`.
        pub const SENT: u32 = 9;
        /// `Error`.
        pub const ERROR: u32 = 10;
        /// `Ping`.
        pub const PING: u32 = 11;
        /// `Pong`.
        pub const PONG: u32 = 12;
        /// `ShuttingDown`.
        pub const SHUTTING_DOWN: u32 = 13;
        /// `KeyHandover`.
        pub const KEY_HANDOVER: u32 = 14;
        /// `Undelivered`.
        pub const UNDELIVERED: u32 = 15;
        /// `PrekeyPublished`.
        pub const PREKEY_PUBLISHED: u32 = 16;
        /// `ChunkStored`.
        pub const CHUNK_STORED: u32 = 17;
        /// `Chunk`.
        pub const CHUNK: u32 = 18;
        /// `BlobState`.
        pub const BLOB_STATE: u32 = 19;
        /// `BlobRefused`.
        pub const BLOB_REFUSED: u32 = 20;
    }

    /// Indices of [`Destination`](super::Destination)'s variants.
    pub mod destination {
        /// `Room`.
        pub const ROOM: u32 = 0;
        /// `User`.
        pub const USER: u32 = 1;
    }
}

impl ClientFrame {
    /// The wire index of this frame's variant ([`index::client`]).
    pub const fn index(&self) -> u32 {
        use index::client::*;
        match self {
            Self::Register { .. } => REGISTER,
            Self::Join { .. } => JOIN,
            Self::Leave { .. } => LEAVE,
            Self::ListRooms => LIST_ROOMS,
            Self::ListUsers => LIST_USERS,
            Self::LookupKey { .. } => LOOKUP_KEY,
            Self::Send { .. } => SEND,
            Self::Ack { .. } => ACK,
            Self::Ping { .. } => PING,
            Self::Pong { .. } => PONG,
            Self::Bye => BYE,
            Self::PublishPrekey { .. } => PUBLISH_PREKEY,
            Self::PutChunk { .. } => PUT_CHUNK,
            Self::GetChunk { .. } => GET_CHUNK,
            Self::BlobStatus { .. } => BLOB_STATUS,
        }
    }
}

impl RelayFrame {
    /// The wire index of this frame's variant ([`index::relay`]).
    pub const fn index(&self) -> u32 {
        use index::relay::*;
        match self {
            Self::Challenge { .. } => CHALLENGE,
            Self::Registered { .. } => REGISTERED,
            Self::Joined { .. } => JOINED,
            Self::Left { .. } => LEFT,
            Self::Rooms { .. } => ROOMS,
            Self::Users { .. } => USERS,
            Self::Key { .. } => KEY,
            Self::Deliver { .. } => DELIVER,
            Self::Presence { .. } => PRESENCE,
            Self::Sent { .. } => SENT,
            Self::Error { .. } => ERROR,
            Self::Ping { .. } => PING,
            Self::Pong { .. } => PONG,
            Self::ShuttingDown => SHUTTING_DOWN,
            Self::KeyHandover { .. } => KEY_HANDOVER,
            Self::Undelivered { .. } => UNDELIVERED,
            Self::PrekeyPublished { .. } => PREKEY_PUBLISHED,
            Self::ChunkStored { .. } => CHUNK_STORED,
            Self::Chunk { .. } => CHUNK,
            Self::BlobState { .. } => BLOB_STATE,
            Self::BlobRefused { .. } => BLOB_REFUSED,
        }
    }
}

impl Destination {
    /// The wire index of this destination's variant
    /// ([`index::destination`]).
    pub const fn index(&self) -> u32 {
        match self {
            Self::Room(_) => index::destination::ROOM,
            Self::User(_) => index::destination::USER,
        }
    }
}
