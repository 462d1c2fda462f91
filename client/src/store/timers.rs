//! Disappearing messages in the store (docs/protocol.md 20.2): each
//! conversation's timer (`timers`), and for every message sent or stored
//! under a timer, when it expires and which records hold it (`expiring`).
//!
//! Both tables are new beside the others: a record of `expiring` names the
//! records of `history`, `outgoing`, `unsent` and `outbox` that go when it
//! expires, and goes with them, in one transaction.

use serde::{Deserialize, Serialize};
use sotto_crypto::{Conversation, Fingerprint};
use sotto_proto::UserName;

use super::{
    EXPIRING, FILES, HISTORY, OUTBOX, OUTGOING, Position, Store, StoreError, StoredEntry, TIMERS,
    UNSENT, decode, encode,
};
use crate::session::Chat;

/// A conversation's disappearing-message timer, as last set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// The conversation, as the UI names it.
    pub chat: Chat,
    /// The timer in seconds (never 0: a timer turned off is no record).
    pub seconds: u64,
    /// Who set it (this client's own name if it did).
    pub set_by: UserName,
    /// This client's clock when the change arrived or was made, ms since
    /// the Unix epoch.
    pub set_at_ms: u64,
}

/// What goes when a message expires: the records that hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiringRecord {
    /// This client's clock at which it expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Its chat.
    pub chat: Chat,
    /// Its sender's key and sequence number (the message's id), if it was
    /// sealed (a text still in the outbox has none yet).
    pub id: Option<(Fingerprint, u64)>,
    /// The key of its history record.
    pub history: Option<Vec<u8>>,
    /// For a message this client sent: its conversation and number, the
    /// key of its `outgoing` and `unsent` records.
    pub sent: Option<(Conversation, u64)>,
    /// For a text that waited in the outbox: its id there.
    pub typed: Option<u64>,
}

impl ExpiringRecord {
    /// The key of this record in `expiring`: its history record's key, or
    /// for a text still in the outbox `b"typed" || id`.
    pub fn key(&self) -> Vec<u8> {
        match (&self.history, self.typed) {
            (Some(history), _) => history.clone(),
            (None, Some(id)) => typed_key(id),
            (None, None) => Vec::new(),
        }
    }
}

/// An `expiring` record's key and encoded value, and the key of the outbox
/// text's record it replaces.
type ExpiringParts = (Vec<u8>, zeroize::Zeroizing<Vec<u8>>, Option<Vec<u8>>);

fn typed_key(id: u64) -> Vec<u8> {
    let mut key = b"typed".to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The record id of `chat`'s timer: rooms by name, direct conversations by
/// the folded name, so every spelling of a name is one conversation.
fn timer_parts(chat: &Chat) -> (&'static str, &'static str, String) {
    match chat {
        Chat::Room(room) => ("timer", "room", room.to_string()),
        Chat::Direct(user) => ("timer", "direct", user.key().as_str().to_owned()),
    }
}

impl Store {
    /// Every conversation's timer (damaged records skipped).
    pub fn timers(&self) -> Result<Vec<TimerRecord>, StoreError> {
        Ok(self
            .vault
            .each(TIMERS)?
            .into_iter()
            .filter_map(|(_, value)| value.ok().and_then(|v| decode(&v).ok()))
            .collect())
    }

    /// Records `chat`'s timer; `None` (or 0 seconds) turns it off.
    pub fn set_timer(&self, chat: &Chat, timer: Option<&TimerRecord>) -> Result<(), StoreError> {
        let id = self.record_id(&timer_parts(chat));
        match timer {
            Some(timer) if timer.seconds > 0 => Ok(self.vault.put(TIMERS, &id, &encode(timer)?)?),
            _ => Ok(self.vault.remove(TIMERS, &id)?),
        }
    }

    /// The key of the history record of `entry` at `position`.
    pub fn history_record_key(&self, entry: &StoredEntry, position: Position) -> Vec<u8> {
        self.history_key(entry, position)
    }

    /// Records when a message expires (see [`Store::record_sent`] and
    /// [`Store::record_received`] for doing it in their transaction).
    pub fn set_expiring(&self, record: &ExpiringRecord) -> Result<(), StoreError> {
        Ok(self.vault.put(EXPIRING, &record.key(), &encode(record)?)?)
    }

    /// Every expiring message (damaged records skipped).
    pub fn all_expiring(&self) -> Result<Vec<ExpiringRecord>, StoreError> {
        Ok(self
            .vault
            .each(EXPIRING)?
            .into_iter()
            .filter_map(|(_, value)| value.ok().and_then(|v| decode(&v).ok()))
            .collect())
    }

    /// Deletes the expired messages `expired`: every record that holds one
    /// of them and their `expiring` records, in one transaction.
    pub fn delete_expired(&self, expired: &[ExpiringRecord]) -> Result<(), StoreError> {
        let mut keys: Vec<(&'static str, Vec<u8>)> = Vec::new();
        for record in expired {
            if let Some(history) = &record.history {
                keys.push((HISTORY, history.clone()));
                keys.push((FILES, history.clone()));
            }
            if let Some((conversation, seq)) = &record.sent {
                let key = self.outgoing_key(conversation, *seq).to_vec();
                keys.push((OUTGOING, key.clone()));
                keys.push((UNSENT, key));
            }
            if let Some(id) = record.typed {
                keys.push((OUTBOX, id.to_be_bytes().to_vec()));
                keys.push((EXPIRING, typed_key(id)));
            }
            keys.push((EXPIRING, record.key()));
        }
        let removed: Vec<(&str, &[u8])> = keys.iter().map(|(t, k)| (*t, k.as_slice())).collect();
        Ok(self.vault.put_and_remove(&[], &removed)?)
    }

    /// Compacts the database file so that deleted records leave it (see
    /// [`crate::vault::Vault::compact`]); `false` if it could not run now.
    pub fn compact(&self) -> Result<bool, StoreError> {
        Ok(self.vault.compact()?)
    }

    /// The `(table, key, value)` of `expiring`'s record for `record`, and
    /// the key of the outbox text's record it replaces.
    pub(super) fn expiring_parts(
        &self,
        record: &ExpiringRecord,
    ) -> Result<ExpiringParts, StoreError> {
        Ok((record.key(), encode(record)?, record.typed.map(typed_key)))
    }
}
