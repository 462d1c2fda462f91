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
//!   receiving keys and RSA-PSS-SHA256 for signing. Its [`Fingerprint`] is
//!   SHA-256 over both public keys; two people compare a [`SafetyNumber`]
//!   (or its QR code) to verify each other.
//! - Each identity publishes short-lived RSA-3072 **prekeys**, signed with
//!   its identity key ([`SignedPrekey`]), and deletes their private halves
//!   after a grace period: what was wrapped to them cannot be read after
//!   that with the identity file and its passphrase.
//! - RSA only runs when a pair is set up. A sender's [`SendingSession`] in a
//!   conversation has one symmetric **chain** ([`chain`]) and one fresh
//!   256-bit **pair key** per recipient, wrapped with OAEP to the
//!   recipient's prekey (its identity key only when it has none) with the
//!   chain key, and signed, many at once, with one PSS signature over a
//!   Merkle root ([`sign_announcements`], [`Announcement`]). A recipient
//!   verifies the signature before any RSA decryption. A member can answer
//!   a pair key with its own, under that key, with no RSA at all
//!   ([`PairReply`]). Recipients join and leave a running session.
//! - Each message is one body encrypted once with AES-256-CTR under a fresh
//!   content key (committed to in the header), plus an 80-byte [`KeySlot`]
//!   per recipient sealing that content key, masked with the chain's key for
//!   the message, with AES-256-GCM under the pair key, with a BLAKE3 digest
//!   of the whole message as the slot's associated data: the slot
//!   authenticates the body, the sender and the context at once, and opens
//!   only with both the pair key and the chain. The chain forgets each key
//!   once used. Slot nonces are the sender's [`SequenceCounter`], persisted
//!   ahead of use.
//! - The client's local store seals each record with [`at_rest::RecordCipher`]
//!   (AES-256-GCM, random nonce, the record's table and key as associated
//!   data) under an [`at_rest::StorageKey`] derived from the identity: its
//!   own key type, never a [`SessionKey`].
//! - Every failed check is the one opaque [`Error::DecryptionFailed`].
//! - Sending sessions are never stored. Carrying a sequence counter across
//!   restarts in a file (`FileCounterStore`) risks nonce reuse after a
//!   rollback, so it exists only with the `hazmat` feature, which only this
//!   crate's tests and benches enable.
//!
//! docs/protocol.md in the repository gives every byte.
//!
//! # Example
//!
//! ```no_run
//! use sotto_crypto::{
//!     Conversation, Identity, NoPersistence, PeerBody, ReplayWindow, SendingSession,
//!     SequenceCounter, WrapTo, roster_digest, sign_announcements,
//! };
//!
//! # fn main() -> Result<(), sotto_crypto::Error> {
//! let mut rng = rand::rng();
//! let alice = Identity::generate()?;
//! let bob = Identity::generate()?;
//! let room = Conversation::room("lobby");
//! let now = 1_800_000_000;
//!
//! // Alice starts a session, adds Bob (here to his identity key: he has no
//! // prekey) and signs the announcement.
//! let mut counter = SequenceCounter::resume(0, NoPersistence);
//! let mut session = SendingSession::start(&mut rng, alice.fingerprint(), room.clone(), 1, 0, now);
//! let unsigned = session.add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], counter.peek())?;
//! let announcements = sign_announcements(&alice, &mut rng, unsigned)?;
//! let sealed = session.seal(&mut rng, &mut counter, 0, b"hello")?;
//!
//! // Bob accepts the announcement (signature first), then opens the message.
//! let mut receiving = announcements[0].accept(&mut rng, &bob, alice.public(), now, None)?;
//! let PeerBody::Message(body) = PeerBody::decode(&sealed.body)? else { unreachable!() };
//! let opened = receiving.open(&room, &body, &sealed.slots[0].to_bytes())?;
//! ReplayWindow::starting_at(0).accept(opened.seq)?;
//! receiving.forget(opened.seq)?; // kept: its key is gone
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
pub mod file;
mod identity;
mod kdf;
mod keystore;
mod message;
mod prekey;
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
pub use prekey::{
    MAX_PREKEY_LEN, MAX_PREKEYS, PREKEY_GRACE_MAX, PREKEY_LIFETIME, PREKEY_ROTATE,
    PREKEY_SECRET_VERSION, PREKEY_VERSION, PrekeyId, PrekeyKey, PrekeySecret, SignedPrekey,
    VerifiedPrekey,
};
pub use replay::{Arrival, REPLAY_WINDOW, ReplayWindow};
pub use secret::{KEY_LEN, SessionKey};
#[cfg(feature = "hazmat")]
pub use session::FileCounterStore;
pub use session::{
    Announcement, Conversation, CounterStore, MAX_BATCH, MAX_CLOCK_SKEW, MAX_DELIVERY_DELAY,
    MAX_MESSAGES_PER_SESSION, MAX_SESSION_AGE, NoPersistence, PairReply, ReceivingSession,
    ReceivingState, SendingSession, SequenceCounter, SessionContext, SessionId,
    UnsignedAnnouncement, VerifiedAnnouncement, Via, WrapTo, sign_announcements,
};
