//! sotto's relay: a self-hostable TLS 1.3 server that routes end-to-end
//! encrypted frames between sotto clients without being able to read them.
//!
//! # Status
//!
//! This crate is a skeleton. The wire format it will speak is
//! [`sotto_proto`]; the relay itself (TLS, registration, rooms, routing,
//! offline queue, limits) is the next piece of work. What it can already
//! promise is its boundary: it reads only the routing header of a
//! [`sotto_proto::ClientFrame::Send`] and forwards the opaque `body` and
//! `slot` bytes untouched.
//!
//! # Example
//!
//! ```
//! assert_eq!(sotto_relay::DEFAULT_ROOM, "lobby");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The room every client can join without asking: the seed chat's general room.
pub const DEFAULT_ROOM: &str = sotto_proto::LOBBY;
