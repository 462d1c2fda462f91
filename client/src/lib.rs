//! sotto's client library: identities, contacts, sessions and the
//! connection to a relay, with no GUI dependency (the desktop app sits
//! behind the `gui` feature).
//!
//! # Status
//!
//! Early days. What exists: [`tls`], connecting to a relay with its
//! certificate pinned by the address, and [`contacts`], the trust-on-first-use
//! pinning of peer keys with the blocking rule for changed verified keys,
//! [`servers`], the relay certificates pinned per `host:port`, and
//! [`profile`], the data directory and the identity in it, [`vault`],
//! the local database encrypted at rest, and [`backoff`], when to
//! reconnect. The cryptography the client drives is
//! [`sotto_crypto`] and the frames it exchanges with the relay are
//! [`sotto_proto`]. The client state machine (`session::run`), the
//! `sotto-cli` binary and the `sotto` GUI are the next pieces of work.
//!
//! # Example
//!
//! ```
//! assert_eq!(sotto_client::PROTOCOL_VERSION, 1);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod account;
pub mod backoff;
pub mod contacts;
pub mod profile;
pub mod servers;
pub mod session;
pub mod store;
pub mod tls;
pub mod vault;

/// The relay protocol version this client speaks.
pub const PROTOCOL_VERSION: u8 = sotto_proto::PROTOCOL_VERSION;
/// The version of what clients send each other.
pub const PEER_VERSION: u8 = sotto_crypto::PEER_VERSION;
