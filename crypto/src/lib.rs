//! sotto's end-to-end cryptography.
//!
//! Everything a sotto client needs so that the relay it talks through can
//! neither read nor forge what it carries: identities, their fingerprints
//! and safety numbers, the passphrase-encrypted identity file, pairwise
//! session keys, and the sealing and opening of messages.
//!
//! # Design
//!
//! - An [`Identity`] is two RSA-3072 key pairs: RSA-OAEP-SHA256 for
//!   receiving session keys and RSA-PSS-SHA256 for signing. Its
//!   [`Fingerprint`] is SHA-256 over both public keys; two people compare a
//!   [`SafetyNumber`] (or its QR code) to verify each other.
//! - RSA only runs at session set-up. A sender starts a [`SendingSession`]
//!   with a fresh 256-bit key per recipient, wrapped with OAEP (the
//!   [`SessionContext`] is the label) and signed with PSS over the full
//!   context: an [`Announcement`]. The recipient verifies the signature
//!   before any RSA decryption ([`Identity::accept`]).
//! - Each message is one body encrypted once with AES-256-CTR under a fresh
//!   content key (committed to in the header), plus an 80-byte [`KeySlot`]
//!   per recipient sealing that content key with AES-256-GCM under the
//!   pairwise session key, with a BLAKE3 digest of the whole message as the
//!   slot's associated data: the slot authenticates the body, the sender and
//!   the context at once. Slot nonces are the sender's [`SequenceCounter`],
//!   persisted ahead of use.
//! - The client's local store seals each record with [`at_rest::RecordCipher`]
//!   (AES-256-GCM, random nonce, the record's table and key as associated
//!   data) under an [`at_rest::StorageKey`] derived from the identity: its
//!   own key type, never a [`SessionKey`].
//! - Every failed check is the one opaque [`Error::DecryptionFailed`].
//! - Carrying a sending session or its counter across restarts
//!   (`SendingSession::export`/`restore`, `SendingState`,
//!   `FileCounterStore`) risks nonce reuse after a rollback, so it exists
//!   only with the `hazmat` feature, which only this crate's tests and
//!   benches enable.
//!
//! docs/protocol.md in the repository gives every byte.
//!
//! # Example
//!
//! ```no_run
//! use sotto_crypto::{
//!     Conversation, Identity, NoPersistence, PeerBody, ReplayWindow, SendingSession,
//!     SequenceCounter, roster_digest,
//! };
//!
//! # fn main() -> Result<(), sotto_crypto::Error> {
//! let mut rng = rand::rng();
//! let alice = Identity::generate()?;
//! let bob = Identity::generate()?;
//! let room = Conversation::room("lobby");
//!
//! // Alice starts a session and announces its key to Bob.
//! let (mut session, announcements) =
//!     SendingSession::start(&mut rng, &alice, room.clone(), 1, 0, 0, &[bob.public()])?;
//! let mut counter = SequenceCounter::resume(0, NoPersistence);
//! let sealed = session.seal(&mut rng, &mut counter, 0, b"hello")?;
//!
//! // Bob accepts the announcement (signature first), then opens the message.
//! let receiving = bob.accept(&mut rng, &announcements[0], alice.public())?;
//! let PeerBody::Message(body) = PeerBody::decode(&sealed.body)? else { unreachable!() };
//! let opened = receiving.open(&room, &body, &sealed.slots[0].to_bytes())?;
//! ReplayWindow::starting_at(0).accept(opened.seq)?;
//! // The header committed to who could read it: Alice and Bob.
//! assert_eq!(opened.roster, roster_digest([alice.fingerprint(), bob.fingerprint()]));
//! assert_eq!(&opened.plaintext[..], b"hello");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod at_rest;
pub mod chain;
mod error;
mod identity;
mod keystore;
mod message;
mod replay;
mod secret;
mod session;
mod wire;

pub use error::{Error, Result};
pub use identity::{
    Fingerprint, Identity, PSS_SALT_LEN, PUBLIC_IDENTITY_VERSION, PublicIdentity, RSA_BITS,
    RSA_LEN, RSA_PUBLIC_EXPONENT, SafetyNumber,
};
pub use keystore::{IDENTITY_FILE_VERSION, KdfParams};
pub use message::{
    KeySlot, MAX_PLAINTEXT_LEN, MessageBody, MessageHeader, Opened, PAD_BLOCK, PEER_VERSION,
    PeerBody, SLOT_LEN, SealedMessage, roster_digest,
};
pub use replay::{Arrival, REPLAY_WINDOW, ReplayWindow};
pub use secret::{KEY_LEN, SessionKey};
pub use session::{
    Announcement, Conversation, CounterStore, MAX_CLOCK_SKEW, MAX_DELIVERY_DELAY,
    MAX_MESSAGES_PER_SESSION, MAX_SESSION_AGE, NoPersistence, ReceivingSession, SendingSession,
    SequenceCounter, SessionContext, SessionId, VerifiedAnnouncement,
};
/// Carrying a sending session or its counter across restarts: the rollback
/// and nonce-reuse hazard of docs/threat-model.md section 9. Only with the
/// `hazmat` feature, which only this crate's tests and benches enable.
#[cfg(feature = "hazmat")]
pub use session::{FileCounterStore, SendingState};
