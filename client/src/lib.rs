//! sotto's client library: identities, contacts, sessions and the
//! connection to a relay, with no user interface: `sotto-cli` (crate
//! `cli/`) and the desktop app `sotto` (crate `app/`) sit on it.
//!
//! # Layout
//!
//! - [`session`]: the client as a stream of updates ([`session::run`]) with
//!   a [`session::Controller`] for commands; the state machine applying
//!   the rules of docs/protocol.md (trust on first use, sessions, replay
//!   windows, gaps, rosters) and the connection loop with backoff.
//! - [`account`], [`profile`]: the data directory, the identity in it and
//!   its name; [`store`] on [`vault`]: everything kept between runs,
//!   encrypted at rest.
//! - [`contacts`]: pinned peer keys and their trust; [`servers`] and
//!   [`tls`]: relay certificates pinned by address; [`backoff`]: when to
//!   reconnect.
//!
//! The cryptography the client drives is [`sotto_crypto`] and the frames it
//! exchanges with the relay are [`sotto_proto`]. Both front ends sit on
//! [`session`]; [`commands`] is the `/` command language they share,
//! [`ui`] what a typed line means in context (a command for the session,
//! an action on screen, or a refusal), and [`safe_text`] makes what peers
//! and the relay wrote safe for a terminal.
//!
//! # Example
//!
//! ```
//! assert_eq!(sotto_client::PROTOCOL_VERSION, 3);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod account;
pub mod backoff;
pub mod commands;
pub mod contacts;
pub mod profile;
pub mod safe_text;
pub mod servers;
pub mod session;
pub mod store;
pub mod tls;
pub mod ui;
pub mod vault;

/// The relay protocol version this client speaks.
pub const PROTOCOL_VERSION: u8 = sotto_proto::PROTOCOL_VERSION;
/// The version of what clients send each other.
pub const PEER_VERSION: u8 = sotto_crypto::PEER_VERSION;
