//! What the client keeps between runs, typed, on top of the encrypted
//! [`Vault`]: the account name, rooms to rejoin (and to leave), room settings, contacts,
//! sending epochs and sequence counters, receiving sessions with their
//! replay windows, and the message history.
//!
//! Record keys never contain names or message content: a conversation is
//! known on disk by a keyed hash ([`Store::record_id`]) whose key is derived
//! from the identity, so someone holding a copy of the data directory
//! cannot even confirm a guessed room name.
//!
//! Sending sessions are deliberately **not** stored: a client starts new
//! ones in every run (docs/protocol.md, section 17.1 "Rollback"), so a data
//! directory restored from a backup can never make it reuse a key slot
//! nonce under an old key.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_crypto::chain::{ChainKey, ChainState, MessageKey};
use sotto_crypto::{
    Conversation, CounterStore, Fingerprint, Identity, PublicIdentity, ReceivingSession,
    ReceivingState, ReplayWindow, SessionContext, SessionKey, at_rest::StorageKey,
};
use sotto_proto::UserName;
use zeroize::Zeroizing;

use crate::contacts::{Contact, Contacts, Trust};
use crate::session::content::FileOffer;
use crate::vault::{Vault, VaultError};

mod timers;
pub use timers::{ExpiringRecord, TimerRecord};

const SETTINGS: &str = "settings";
const CONTACTS: &str = "contacts";
const ROOMS: &str = "rooms";
const COUNTERS: &str = "counters";
const EPOCHS: &str = "epochs";
const INBOUND: &str = "inbound";
const HISTORY: &str = "history";
const OUTGOING: &str = "outgoing";
const UNSENT: &str = "unsent";
const OUTBOX: &str = "outbox";
const TIMERS: &str = "timers";
const EXPIRING: &str = "expiring";
/// A file message's offer, under its history record's key.
const FILES: &str = "files";
/// Files being uploaded (`UploadRecord`), until their message is sealed.
const UPLOADS: &str = "uploads";

const NAME_KEY: &[u8] = b"name";
const JOINED_KEY: &[u8] = b"joined";
const LEAVING_KEY: &[u8] = b"leaving";
const CONTACTS_KEY: &[u8] = b"all";
/// The format of the store's records: 2 since sessions v2 (absent in a
/// store made before, which is migrated once, `Store::new`).
const FORMAT_KEY: &[u8] = b"format";
/// What a migration dropped, until the engine has told the user.
const MIGRATED_KEY: &[u8] = b"migrated";
/// The record format this build writes.
pub const STORE_FORMAT: u8 = 2;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The vault underneath failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A record opened but does not decode: written by an incompatible
    /// version, or damaged.
    #[error("a record in the local database does not decode")]
    Format,
    /// Deriving the local keys failed.
    #[error(transparent)]
    Crypto(#[from] sotto_crypto::Error),
    /// The data directory was made by a newer sotto.
    #[error(
        "this data directory was written by a newer sotto (store format {0}); this build reads format 2"
    )]
    NewerFormat(u8),
}

fn encode<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    postcard::to_stdvec(value)
        .map(Zeroizing::new)
        .map_err(|_| StoreError::Format)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Format)
}

/// One message in the history, incoming or outgoing: the record as it is
/// on disk (postcard, these fields in this order: do not reorder, add or
/// retype them, or stored histories stop opening).
///
/// Not [`crate::session::Message`], which the engine makes of it at load
/// (and of each new entry, `Engine::message_of`) and which carries what is
/// not stored: the sender's trust (looked up in the contacts when shown,
/// so that it follows later verification) and the display position (the
/// record's key, not its value) with whether it came late.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The conversation, as the UI names it (see [`crate::session::Chat`]).
    pub chat: crate::session::Chat,
    /// The sender's name as pinned (serialized as the string it is, so
    /// the stored bytes are those of a `String`).
    pub from: UserName,
    /// The sender's fingerprint.
    pub fingerprint: Fingerprint,
    /// Whether this client sent it.
    pub outgoing: bool,
    /// The sender's sequence number in the conversation.
    pub seq: u64,
    /// The sender's clock, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// This client's clock when it arrived (or was sent).
    pub received_at_ms: u64,
    /// The text.
    pub text: String,
}

/// How far a message this client sent got (see
/// [`crate::session::Delivery`]): kept beside its history entry, keyed by
/// its conversation and sequence number, so that a receipt finds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRecord {
    /// The chat it was sent in, as the history names it.
    pub chat: crate::session::Chat,
    /// Who it was sealed for, as named then, with their keys.
    pub recipients: Vec<(UserName, Fingerprint)>,
    /// 0 pending, 1 accepted by the relay, 2 failed (`failed` says why).
    pub state: u8,
    /// Why it failed: the relay's code and what to tell the user.
    pub failed: Option<(sotto_proto::ErrorCode, String)>,
    /// The keys of the recipients whose receipt came.
    pub delivered: Vec<Fingerprint>,
    /// The recipients the relay will not keep it for.
    pub refused: Vec<UserName>,
    /// The id of the typed text it was sealed from, if it waited in the
    /// outbox (so that a restart does not send it a second time).
    pub typed: Option<u64>,
}

/// A message this client sealed that the relay has not yet said it
/// stored: exactly the frames that carry it (its announcements first), to
/// send again, byte for byte, on the next connection. Its recipients
/// drop a copy they have (the replay window), and so does the relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsentRecord {
    /// The conversation and the message's sequence number in it.
    pub conversation: Conversation,
    /// The message's sequence number.
    pub seq: u64,
    /// The chat, as the history names it.
    pub chat: crate::session::Chat,
    /// The frames: destination, body, slots.
    pub frames: Vec<(sotto_proto::Destination, Vec<u8>, Vec<sotto_proto::Slot>)>,
}

/// Where an entry sits in its conversation's history: record keys sort in
/// display order (section 17.4 of docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The arrival number of the entry it is shown with: its own, or for a
    /// late message the arrival number of the sender's next message.
    pub anchor: u64,
    /// Order among entries sharing an anchor: [`Position::IN_ORDER`] for the
    /// anchor itself, less for late messages placed before it.
    pub rank: u32,
}

impl Position {
    /// The rank of an entry shown where it arrived.
    pub const IN_ORDER: u32 = 1 << 31;

    fn to_bytes(self) -> [u8; 12] {
        let mut bytes = [0u8; 12];
        let (anchor, rank) = bytes.split_at_mut(8);
        anchor.copy_from_slice(&self.anchor.to_be_bytes());
        rank.copy_from_slice(&self.rank.to_be_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let anchor = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let rank = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
        Some(Self { anchor, rank })
    }
}

/// The stored history ([`Store::history`]).
#[derive(Debug, Default)]
pub struct History {
    /// Every readable entry, in display order per conversation.
    pub entries: Vec<(Position, StoredEntry)>,
    /// The highest arrival number used so far.
    pub last: u64,
    /// Records that could not be read (damaged) and were skipped.
    pub skipped: usize,
    /// The offers of the file messages, by history record key
    /// ([`Store::history_record_key`]).
    pub files: std::collections::HashMap<Vec<u8>, FileOffer>,
}

/// What a history record is written with, in its transaction: when the
/// message disappears (under a timer), and a file message's offer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Beside<'a> {
    /// Its `expiring` record.
    pub expiring: Option<&'a ExpiringRecord>,
    /// Its offer, if it is a file.
    pub file: Option<&'a FileOffer>,
}

/// A file being uploaded: what it is, where its sealed chunks wait on
/// disk, and the chat its message goes to once the relay holds them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Where its message goes.
    pub chat: crate::session::Chat,
    /// Its name, as offered.
    pub name: String,
    /// Its media type, as offered.
    pub media_type: String,
    /// Its manifest (with the key).
    pub manifest: sotto_crypto::file::FileManifest,
    /// The file of its sealed chunks, one after the other.
    pub staged: std::path::PathBuf,
    /// When the user sent it (this client's clock), ms since the Unix
    /// epoch.
    pub started_at_ms: u64,
}

/// A receiving session at rest: its context, pair key, chain (its next
/// key, that key's number, and the keys kept for messages passed over),
/// replay window and the sequence numbers still missing in it.
#[derive(Serialize, Deserialize)]
struct StoredReceiving {
    context: SessionContext,
    key: [u8; 32],
    chain_next: [u8; 32],
    chain_n: u64,
    skipped: Vec<(u64, [u8; 32])>,
    window: ReplayWindow,
    missing: BTreeSet<u64>,
}

impl Drop for StoredReceiving {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
        zeroize::Zeroize::zeroize(&mut self.chain_next);
        for (_, key) in &mut self.skipped {
            zeroize::Zeroize::zeroize(key);
        }
    }
}

impl StoredReceiving {
    fn of(receiving: &Receiving) -> Self {
        let ReceivingState {
            context,
            key,
            chain,
        } = receiving.session.export();
        Self {
            context,
            key: *key.expose_secret(),
            chain_next: *chain.next.expose_secret(),
            chain_n: chain.n,
            skipped: chain
                .skipped
                .iter()
                .map(|(n, key)| (*n, *key.as_bytes()))
                .collect(),
            window: receiving.window.clone(),
            missing: receiving.missing.clone(),
        }
    }

    fn restore(&self) -> Result<Receiving, StoreError> {
        let chain = ChainState {
            next: ChainKey::from_bytes(self.chain_next),
            n: self.chain_n,
            skipped: self
                .skipped
                .iter()
                .map(|(n, key)| (*n, MessageKey::from_bytes(*key)))
                .collect(),
        };
        let session = ReceivingSession::restore(ReceivingState {
            context: self.context.clone(),
            key: SessionKey::from_bytes(self.key),
            chain,
        })
        .map_err(|_| StoreError::Format)?;
        Ok(Receiving {
            session,
            window: self.window.clone(),
            missing: self.missing.clone(),
        })
    }
}

/// A receiving session in memory, with its window.
#[derive(Debug)]
pub struct Receiving {
    /// The session.
    pub session: ReceivingSession,
    /// Its replay window.
    pub window: ReplayWindow,
    /// Sequence numbers skipped and not (yet) arrived, within the window.
    pub missing: BTreeSet<u64>,
}

/// A receiving session as it was before a message moved it: put back if
/// what the message carried could not be stored, so that the relay's
/// redelivery opens it again.
pub struct Snapshot {
    state: StoredReceiving,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Receiving {
    /// What [`Receiving::put_back`] restores.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: StoredReceiving::of(self),
        }
    }

    /// Puts the session, its window and its missing numbers back as they
    /// were at `snapshot`.
    pub fn put_back(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        *self = snapshot.state.restore()?;
        Ok(())
    }
}

/// Everything received from one sender in one conversation.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Highest epoch accepted from this sender here: older or equal
    /// announcements are replays (no rollback, docs/protocol.md 14.3).
    pub max_epoch: u32,
    /// Recent sessions, newest last.
    pub sessions: Vec<Receiving>,
}

#[derive(Serialize, Deserialize)]
struct StoredInbound {
    max_epoch: u32,
    sessions: Vec<StoredReceiving>,
}

#[derive(Serialize, Deserialize)]
struct StoredContact {
    name: String,
    identity: Vec<u8>,
    verified: bool,
    offered: Option<Vec<u8>>,
}

/// Per-room settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Wrap keys only to verified members.
    pub verified_only: bool,
}

/// The typed store.
#[derive(Clone, Debug)]
pub struct Store {
    vault: Arc<Vault>,
    ids: Arc<StorageKey>,
}

/// A store batch ([`Store::batch`]): while it is open every write to the
/// store (by anyone holding it) goes into one write transaction, which
/// reads see, and nothing of it is durable until [`StoreBatch::commit`]
/// succeeds. Dropped without committing, it keeps nothing.
///
/// What a write inside the batch reports (acknowledgements, messages
/// shown) must therefore wait for `commit`: it is the caller's one point
/// where the batch's writes become durable.
#[must_use = "a batch keeps nothing unless it is committed"]
#[derive(Debug)]
pub struct StoreBatch {
    vault: Arc<Vault>,
    open: bool,
}

impl StoreBatch {
    /// Commits every write of the batch durably in one transaction: all
    /// of them, or (an error) none.
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        Ok(self.vault.commit_batch()?)
    }
}

impl Drop for StoreBatch {
    fn drop(&mut self) {
        if self.open {
            self.vault.abort_batch();
        }
    }
}

impl Store {
    /// Opens a batch (see [`StoreBatch`]); only one is open at a time.
    pub fn batch(&self) -> Result<StoreBatch, StoreError> {
        self.vault.begin_batch()?;
        Ok(StoreBatch {
            vault: self.vault.clone(),
            open: true,
        })
    }

    /// The store of `identity` in `vault`, migrated once if a version of
    /// sotto before sessions v2 made it ([`Store::migrated`]); one made by
    /// a newer sotto is refused ([`StoreError::NewerFormat`]).
    pub fn new(vault: Arc<Vault>, identity: &Identity) -> Result<Self, StoreError> {
        let ids = Arc::new(identity.local_storage_key("record-ids")?);
        let store = Self { vault, ids };
        let format = store.vault.get(SETTINGS, FORMAT_KEY)?;
        match format.as_ref().map(|f| f.as_slice()) {
            Some([STORE_FORMAT]) => {}
            Some([newer]) if *newer > STORE_FORMAT => return Err(StoreError::NewerFormat(*newer)),
            Some(_) => return Err(StoreError::Format),
            None => store.migrate_from_v1()?,
        }
        Ok(store)
    }

    /// A store without a format mark: new, or made before sessions v2
    /// (protocol.md 20.2, "Migration"). Its receiving sessions (version 1,
    /// which no peer uses any more) are dropped, and each message it
    /// sealed that the relay never confirmed, whose frames are version 1,
    /// is marked failed rather than sent: what is said about both is kept
    /// in `settings` for the engine to tell the user once. Then the mark.
    fn migrate_from_v1(&self) -> Result<(), StoreError> {
        let sessions = self.vault.all(INBOUND)?.len();
        let mut unsent: usize = 0;
        for (key, value) in self.vault.each(UNSENT)? {
            self.vault.remove(UNSENT, &key)?;
            let Ok(value) = value else { continue };
            let Ok(record) = decode::<UnsentRecord>(&value) else {
                continue;
            };
            unsent += 1;
            if let Some(bytes) = self.vault.get(OUTGOING, &key)?
                && let Ok(mut outgoing) = decode::<OutgoingRecord>(&bytes)
            {
                outgoing.state = 2;
                outgoing.failed = Some((
                    sotto_proto::ErrorCode::UnsupportedVersion,
                    "sealed by an earlier version of sotto and never sent: send it again"
                        .to_owned(),
                ));
                self.set_outgoing(&record.conversation, record.seq, &outgoing)?;
            }
        }
        for (key, _) in self.vault.each(INBOUND)? {
            self.vault.remove(INBOUND, &key)?;
        }
        if sessions > 0 || unsent > 0 {
            let note = encode(&(sessions, unsent))?;
            self.vault.put(SETTINGS, MIGRATED_KEY, &note)?;
        }
        Ok(self.vault.put(SETTINGS, FORMAT_KEY, &[STORE_FORMAT])?)
    }

    /// What the migration from before sessions v2 dropped, once: the
    /// receiving sessions and the unsent messages (then forgotten).
    pub fn take_migrated(&self) -> Result<Option<(usize, usize)>, StoreError> {
        let Some(bytes) = self.vault.get(SETTINGS, MIGRATED_KEY)? else {
            return Ok(None);
        };
        let note = decode(&bytes)?;
        self.vault.remove(SETTINGS, MIGRATED_KEY)?;
        Ok(Some(note))
    }

    /// A 16-byte record id for `parts`: SHA-256 keyed with a secret of the
    /// identity, so ids reveal nothing about names.
    pub fn record_id(&self, parts: &impl Serialize) -> [u8; 16] {
        let mut hash = Sha256::new();
        hash.update(self.ids.expose_secret());
        hash.update(postcard::to_stdvec(parts).unwrap_or_default());
        let digest = hash.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
        id
    }

    /// The vault underneath, for the tables another module keeps
    /// (`session::prekeys`: `own_prekeys`, `peer_prekeys`).
    pub(crate) fn records(&self) -> &Vault {
        &self.vault
    }

    /// The account's name on relays.
    pub fn name(&self) -> Result<Option<String>, StoreError> {
        self.vault
            .get(SETTINGS, NAME_KEY)?
            .map(|bytes| String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Format))
            .transpose()
    }

    /// Records the account's name.
    pub fn set_name(&self, name: &str) -> Result<(), StoreError> {
        Ok(self.vault.put(SETTINGS, NAME_KEY, name.as_bytes())?)
    }

    /// The rooms to join on connecting, or `None` if never recorded.
    pub fn joined_rooms(&self) -> Result<Option<Vec<String>>, StoreError> {
        self.vault
            .get(SETTINGS, JOINED_KEY)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    /// Records the rooms to join on connecting.
    pub fn set_joined_rooms(&self, rooms: &[String]) -> Result<(), StoreError> {
        Ok(self.vault.put(SETTINGS, JOINED_KEY, &encode(&rooms)?)?)
    }

    /// The rooms left while disconnected, to leave at the relay on the
    /// next connection (membership outlasts connections). Empty if never
    /// recorded (a data directory from before the record existed).
    pub fn rooms_to_leave(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .vault
            .get(SETTINGS, LEAVING_KEY)?
            .map(|bytes| decode(&bytes))
            .transpose()?
            .unwrap_or_default())
    }

    /// Records the rooms to leave on the next connection.
    pub fn set_rooms_to_leave(&self, rooms: &[String]) -> Result<(), StoreError> {
        Ok(self.vault.put(SETTINGS, LEAVING_KEY, &encode(&rooms)?)?)
    }

    /// The settings of `room`.
    pub fn room_settings(&self, room: &str) -> Result<RoomSettings, StoreError> {
        let id = self.record_id(&("room", room));
        Ok(self
            .vault
            .get(ROOMS, &id)?
            .map(|bytes| decode(&bytes))
            .transpose()?
            .unwrap_or_default())
    }

    /// Records the settings of `room`.
    pub fn set_room_settings(&self, room: &str, settings: &RoomSettings) -> Result<(), StoreError> {
        let id = self.record_id(&("room", room));
        Ok(self.vault.put(ROOMS, &id, &encode(settings)?)?)
    }

    /// The pinned contacts: one record per contact (and, from versions
    /// that kept them all in one record, that record first).
    pub fn contacts(&self) -> Result<Contacts, StoreError> {
        let mut stored: Vec<StoredContact> = Vec::new();
        let mut each = Vec::new();
        for (key, value) in self.vault.all(CONTACTS)? {
            if key == CONTACTS_KEY {
                stored.splice(0..0, decode::<Vec<StoredContact>>(&value)?);
            } else {
                each.push(decode::<StoredContact>(&value)?);
            }
        }
        stored.extend(each);
        let parse =
            |bytes: &[u8]| PublicIdentity::from_bytes(bytes).map_err(|_| StoreError::Format);
        let mut contacts = Vec::with_capacity(stored.len());
        for contact in stored {
            let trust = match (&contact.offered, contact.verified) {
                (Some(offered), _) => Trust::Changed {
                    offered: parse(offered)?.into(),
                },
                (None, true) => Trust::Verified,
                (None, false) => Trust::Unverified,
            };
            contacts.push(Contact {
                name: contact.name.parse().map_err(|_| StoreError::Format)?,
                identity: parse(&contact.identity)?.into(),
                trust,
            });
        }
        Ok(Contacts::from_contacts(contacts))
    }

    fn contact_record(&self, c: &Contact) -> Result<([u8; 16], Zeroizing<Vec<u8>>), StoreError> {
        let stored = StoredContact {
            name: c.name.to_string(),
            identity: c.identity.to_bytes(),
            verified: !matches!(c.trust, Trust::Unverified),
            offered: match &c.trust {
                Trust::Changed { offered } => Some(offered.to_bytes()),
                Trust::Unverified | Trust::Verified => None,
            },
        };
        let id = self.record_id(&("contact", c.name.key().as_str()));
        Ok((id, encode(&stored)?))
    }

    /// Records every contact.
    pub fn set_contacts(&self, contacts: &Contacts) -> Result<(), StoreError> {
        self.save_contacts(contacts.iter())
    }

    /// Records these contacts (one record each, in one transaction), so
    /// pinning one more costs one record, not a rewrite of all of them.
    pub fn save_contacts<'a>(
        &self,
        contacts: impl IntoIterator<Item = &'a Contact>,
    ) -> Result<(), StoreError> {
        let mut records = Vec::new();
        for c in contacts {
            records.push(self.contact_record(c)?);
        }
        if records.is_empty() {
            return Ok(());
        }
        let batch: Vec<(&str, &[u8], &[u8])> = records
            .iter()
            .map(|(id, value)| (CONTACTS, id.as_slice(), value.as_slice()))
            .collect();
        self.vault.put_all(&batch)?;
        // The one-record form of earlier versions is superseded.
        if self.vault.get(CONTACTS, CONTACTS_KEY)?.is_some() {
            let all = self.contacts()?;
            let mut records = Vec::new();
            for c in all.iter() {
                records.push(self.contact_record(c)?);
            }
            let batch: Vec<(&str, &[u8], &[u8])> = records
                .iter()
                .map(|(id, value)| (CONTACTS, id.as_slice(), value.as_slice()))
                .collect();
            self.vault.put_all(&batch)?;
            self.vault.remove(CONTACTS, CONTACTS_KEY)?;
        }
        Ok(())
    }

    /// The last epoch this client used to send in `conversation` (0: none).
    pub fn epoch(&self, conversation: &Conversation) -> Result<u32, StoreError> {
        let id = self.record_id(&("epoch", conversation));
        Ok(self
            .vault
            .get(EPOCHS, &id)?
            .map(|bytes| decode(&bytes))
            .transpose()?
            .unwrap_or(0))
    }

    /// Records the epoch this client now sends with in `conversation`.
    pub fn set_epoch(&self, conversation: &Conversation, epoch: u32) -> Result<(), StoreError> {
        let id = self.record_id(&("epoch", conversation));
        Ok(self.vault.put(EPOCHS, &id, &encode(&epoch)?)?)
    }

    /// The sequence counter limit persisted for `conversation`, and the
    /// [`CounterStore`] that keeps it.
    pub fn counter(&self, conversation: &Conversation) -> Result<(u64, VaultCounter), StoreError> {
        let id = self.record_id(&("counter", conversation));
        let limit = self
            .vault
            .get(COUNTERS, &id)?
            .map(|bytes| decode(&bytes))
            .transpose()?
            .unwrap_or(0);
        Ok((
            limit,
            VaultCounter {
                vault: self.vault.clone(),
                id,
            },
        ))
    }

    fn inbound_id(&self, sender: Fingerprint, conversation: &Conversation) -> [u8; 16] {
        self.record_id(&("inbound", sender, conversation))
    }

    /// What was received from `sender` in `conversation`.
    pub fn inbound(
        &self,
        sender: Fingerprint,
        conversation: &Conversation,
    ) -> Result<Inbound, StoreError> {
        let id = self.inbound_id(sender, conversation);
        let Some(bytes) = self.vault.get(INBOUND, &id)? else {
            return Ok(Inbound::default());
        };
        let stored: StoredInbound = decode(&bytes)?;
        let sessions = stored
            .sessions
            .iter()
            .map(StoredReceiving::restore)
            .collect::<Result<_, _>>()?;
        Ok(Inbound {
            max_epoch: stored.max_epoch,
            sessions,
        })
    }

    fn encode_inbound(inbound: &Inbound) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let stored = StoredInbound {
            max_epoch: inbound.max_epoch,
            sessions: inbound.sessions.iter().map(StoredReceiving::of).collect(),
        };
        encode(&stored)
    }

    /// Deletes, from every `inbound` record, the receiving sessions no longer
    /// current at `now` (protocol.md 18.1), keeping each sender's epoch
    /// floor: their keys would open nothing the client still accepts, and
    /// would open for whoever copies the database the messages it never
    /// received (docs/threat-model.md 11). How many were deleted.
    pub fn prune_inbound(&self, now: u64) -> Result<usize, StoreError> {
        let mut pruned = 0;
        for (key, value) in self.vault.all(INBOUND)? {
            let stored: StoredInbound = decode(&value)?;
            let before = stored.sessions.len();
            let sessions: Vec<StoredReceiving> = stored
                .sessions
                .into_iter()
                .filter(|s| s.context.is_current(now))
                .collect();
            if sessions.len() != before {
                pruned += before - sessions.len();
                let kept = StoredInbound {
                    max_epoch: stored.max_epoch,
                    sessions,
                };
                self.vault.put(INBOUND, &key, &encode(&kept)?)?;
            }
        }
        Ok(pruned)
    }

    /// Every receiving session the store holds, whoever sent it (tests of
    /// what a copy of the database opens).
    #[cfg(test)]
    pub(crate) fn all_receiving(&self) -> Result<Vec<Receiving>, StoreError> {
        let mut all = Vec::new();
        for (_, value) in self.vault.all(INBOUND)? {
            let stored: StoredInbound = decode(&value)?;
            for session in &stored.sessions {
                all.push(session.restore()?);
            }
        }
        Ok(all)
    }

    /// Records what was received from `sender` in `conversation`.
    pub fn set_inbound(
        &self,
        sender: Fingerprint,
        conversation: &Conversation,
        inbound: &Inbound,
    ) -> Result<(), StoreError> {
        let id = self.inbound_id(sender, conversation);
        Ok(self
            .vault
            .put(INBOUND, &id, &Self::encode_inbound(inbound)?)?)
    }

    fn history_key(&self, entry: &StoredEntry, position: Position) -> Vec<u8> {
        let mut key = self.record_id(&("history", &entry.chat)).to_vec();
        key.extend_from_slice(&position.to_bytes());
        key
    }

    /// Records an opened message and the receiving state it moved, in one
    /// transaction: after a crash either both are there or neither is, so
    /// a message is never shown twice nor lost once acknowledged.
    ///
    /// A message under a disappearing-message timer has its `expiring`
    /// record written in the same transaction.
    pub fn record_received(
        &self,
        entry: &StoredEntry,
        position: Position,
        sender: Fingerprint,
        conversation: &Conversation,
        inbound: &Inbound,
        beside: Beside<'_>,
    ) -> Result<(), StoreError> {
        let Beside { expiring, file } = beside;
        let history_key = self.history_key(entry, position);
        let history_value = encode(entry)?;
        let file = file.map(encode).transpose()?;
        let inbound_id = self.inbound_id(sender, conversation);
        let inbound_value = Self::encode_inbound(inbound)?;
        let expiring = expiring.map(|r| self.expiring_parts(r)).transpose()?;
        let mut records = vec![
            (HISTORY, history_key.as_slice(), history_value.as_slice()),
            (INBOUND, inbound_id.as_slice(), inbound_value.as_slice()),
        ];
        if let Some((key, value, _)) = &expiring {
            records.push((EXPIRING, key.as_slice(), value.as_slice()));
        }
        if let Some(file) = &file {
            records.push((FILES, history_key.as_slice(), file.as_slice()));
        }
        Ok(self.vault.put_all(&records)?)
    }

    /// Records a message this client sent, with how far it got and, until
    /// the relay says it stored it, the frames that carry it: one
    /// transaction, before the frames leave.
    ///
    /// A message under a disappearing-message timer has its `expiring`
    /// record written in the same transaction (replacing the one of the
    /// outbox text it was sealed from, if any).
    pub fn record_sent(
        &self,
        entry: &StoredEntry,
        position: Position,
        conversation: &Conversation,
        record: &OutgoingRecord,
        unsent: Option<&UnsentRecord>,
        beside: Beside<'_>,
    ) -> Result<(), StoreError> {
        let Beside { expiring, file } = beside;
        let key = self.history_key(entry, position);
        let value = encode(entry)?;
        let file = file.map(encode).transpose()?;
        let outgoing_key = self.outgoing_key(conversation, entry.seq);
        let outgoing = encode(record)?;
        let unsent = unsent.map(encode).transpose()?;
        let expiring = expiring.map(|r| self.expiring_parts(r)).transpose()?;
        let mut records = vec![
            (HISTORY, key.as_slice(), value.as_slice()),
            (OUTGOING, outgoing_key.as_slice(), outgoing.as_slice()),
        ];
        if let Some(unsent) = &unsent {
            records.push((UNSENT, outgoing_key.as_slice(), unsent.as_slice()));
        }
        if let Some(file) = &file {
            records.push((FILES, key.as_slice(), file.as_slice()));
        }
        let mut removed = Vec::new();
        if let Some((key, value, typed)) = &expiring {
            records.push((EXPIRING, key.as_slice(), value.as_slice()));
            if let Some(typed) = typed {
                removed.push((EXPIRING, typed.as_slice()));
            }
        }
        Ok(self.vault.put_and_remove(&records, &removed)?)
    }

    /// The texts typed while they could not be sealed, in the order typed
    /// (by id): id, chat, text.
    pub fn outbox(&self) -> Result<Vec<(u64, crate::session::Chat, String)>, StoreError> {
        Ok(self
            .vault
            .each(OUTBOX)?
            .into_iter()
            .filter_map(|(key, value)| {
                let id = u64::from_be_bytes(key.as_slice().try_into().ok()?);
                let (chat, text) = value.ok().and_then(|v| decode(&v).ok())?;
                Some((id, chat, text))
            })
            .collect())
    }

    /// Keeps a text typed while it could not be sealed (one record each,
    /// so that a long outbox is not rewritten at every text).
    pub fn push_outbox(
        &self,
        id: u64,
        chat: &crate::session::Chat,
        text: &str,
    ) -> Result<(), StoreError> {
        Ok(self
            .vault
            .put(OUTBOX, &id.to_be_bytes(), &encode(&(chat, text))?)?)
    }

    /// Forgets the typed text `id` (sealed).
    pub fn remove_outbox(&self, id: u64) -> Result<(), StoreError> {
        Ok(self.vault.remove(OUTBOX, &id.to_be_bytes())?)
    }

    /// Test hook: keeps `entries` as the outbox, as a crash could leave it.
    #[cfg(test)]
    pub(crate) fn set_outbox(
        &self,
        entries: &[(u64, crate::session::Chat, String)],
    ) -> Result<(), StoreError> {
        for (id, chat, text) in entries {
            self.push_outbox(*id, chat, text)?;
        }
        Ok(())
    }

    /// The relay stored (or refused) message `seq` of `conversation`: its
    /// frames are not kept to send again any more.
    pub fn forget_unsent(&self, conversation: &Conversation, seq: u64) -> Result<(), StoreError> {
        let key = self.outgoing_key(conversation, seq);
        Ok(self.vault.remove(UNSENT, &key)?)
    }

    /// Every message kept to send again (damaged records skipped).
    pub fn all_unsent(&self) -> Result<Vec<UnsentRecord>, StoreError> {
        let mut all: Vec<UnsentRecord> = self
            .vault
            .each(UNSENT)?
            .into_iter()
            .filter_map(|(_, value)| value.ok().and_then(|v| decode(&v).ok()))
            .collect();
        all.sort_by_key(|u| u.seq);
        Ok(all)
    }

    fn outgoing_key(&self, conversation: &Conversation, seq: u64) -> [u8; 24] {
        let mut key = [0; 24];
        let (id, number) = key.split_at_mut(16);
        id.copy_from_slice(&self.record_id(&("outgoing", conversation)));
        number.copy_from_slice(&seq.to_be_bytes());
        key
    }

    /// How far the message `seq` this client sent in `conversation` got.
    pub fn outgoing(
        &self,
        conversation: &Conversation,
        seq: u64,
    ) -> Result<Option<OutgoingRecord>, StoreError> {
        let key = self.outgoing_key(conversation, seq);
        self.vault
            .get(OUTGOING, &key)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    /// Records how far the message `seq` in `conversation` got.
    pub fn set_outgoing(
        &self,
        conversation: &Conversation,
        seq: u64,
        record: &OutgoingRecord,
    ) -> Result<(), StoreError> {
        let key = self.outgoing_key(conversation, seq);
        Ok(self.vault.put(OUTGOING, &key, &encode(record)?)?)
    }

    /// Every outgoing record with its sequence number (damaged ones
    /// skipped), for showing the history.
    pub fn all_outgoing(&self) -> Result<Vec<(u64, OutgoingRecord)>, StoreError> {
        let mut all = Vec::new();
        for (key, value) in self.vault.each(OUTGOING)? {
            let seq = key
                .get(16..24)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            let record = value.ok().and_then(|v| decode::<OutgoingRecord>(&v).ok());
            if let (Some(seq), Some(record)) = (seq, record) {
                all.push((seq, record));
            }
        }
        Ok(all)
    }

    /// The whole history in display order per conversation.
    ///
    /// A record that does not open or decode (damaged on disk) is skipped
    /// and counted in [`History::skipped`]; the others are all returned.
    /// Only a failure of the database itself is an error.
    pub fn history(&self) -> Result<History, StoreError> {
        let mut history = History::default();
        for (key, value) in self.vault.each(HISTORY)? {
            let position = key.get(16..).and_then(Position::from_bytes);
            if let Some(position) = position {
                // Even a damaged record used its arrival number.
                history.last = history.last.max(position.anchor);
            }
            let entry = value
                .ok()
                .and_then(|value| decode::<StoredEntry>(&value).ok());
            match (position, entry) {
                (Some(position), Some(entry)) => history.entries.push((position, entry)),
                _ => history.skipped += 1,
            }
        }
        for (key, value) in self.vault.each(FILES)? {
            // A damaged offer leaves its message a text (its name).
            if let Some(offer) = value.ok().and_then(|v| decode::<FileOffer>(&v).ok()) {
                history.files.insert(key, offer);
            }
        }
        Ok(history)
    }

    /// Every file being uploaded (damaged records skipped).
    pub fn uploads(&self) -> Result<Vec<UploadRecord>, StoreError> {
        Ok(self
            .vault
            .each(UPLOADS)?
            .into_iter()
            .filter_map(|(_, value)| value.ok().and_then(|v| decode(&v).ok()))
            .collect())
    }

    /// Records a file being uploaded.
    pub fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        let key = self.upload_key(&upload.manifest.blob);
        Ok(self.vault.put(UPLOADS, &key, &encode(upload)?)?)
    }

    /// Forgets a file being uploaded.
    pub fn remove_upload(&self, blob: &sotto_crypto::file::BlobId) -> Result<(), StoreError> {
        Ok(self.vault.remove(UPLOADS, &self.upload_key(blob))?)
    }

    fn upload_key(&self, blob: &sotto_crypto::file::BlobId) -> [u8; 16] {
        self.record_id(&("upload", blob.0))
    }

    /// Test hook: the vault underneath.
    #[cfg(test)]
    pub(crate) fn vault(&self) -> &Vault {
        &self.vault
    }

    /// Test hook: the record id of what was received from `sender` in
    /// `conversation`, in the table of that name.
    #[cfg(test)]
    pub(crate) fn inbound_record(
        &self,
        sender: Fingerprint,
        conversation: &Conversation,
    ) -> (&'static str, [u8; 16]) {
        (INBOUND, self.inbound_id(sender, conversation))
    }

    /// Test hook: the name of the history table.
    #[cfg(test)]
    pub(crate) const HISTORY_TABLE: &'static str = HISTORY;
}

/// A [`CounterStore`] in the vault: every reservation is one durable
/// transaction (or part of the open [`StoreBatch`], durable with it).
#[derive(Debug)]
pub struct VaultCounter {
    vault: Arc<Vault>,
    id: [u8; 16],
}

impl CounterStore for VaultCounter {
    fn persist(&mut self, limit: u64) -> std::io::Result<()> {
        let value = postcard::to_stdvec(&limit).map_err(std::io::Error::other)?;
        self.vault
            .put(COUNTERS, &self.id, &value)
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests;
