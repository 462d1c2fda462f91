//! The name directory and the prekey directory in NATS KV buckets.
//!
//! A name is claimed with a create-if-absent on its key in `sotto_names`:
//! JetStream's leader for the bucket accepts exactly one create of a key,
//! so of two relays registering one name at once exactly one wins, and
//! the other reads the winner's record. The limit of names per key is a
//! list per fingerprint in `sotto_keys`, changed by compare-and-set: a
//! place is held on that list before the name is created, and given back
//! if another key won the name. A relay that dies between the two leaves
//! a place held for a name it never took; a key whose list is full drops
//! such places (names it does not own) before it is refused.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sotto_proto::UserName;

use super::{Cluster, directory_request, hex, nats_err};
use crate::store::{Claim, NameRecord, PrekeyRecord, StoreError, keep_newest};

/// Compare-and-set attempts before an operation gives up as contended
/// (each failed attempt means another relay changed the value meanwhile).
const ATTEMPTS: usize = 64;

/// The names one key owns, by their keys (`UserKey` strings).
#[derive(Default, Serialize, Deserialize)]
struct KeyNames {
    names: Vec<String>,
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt)
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Database(e.to_string()))
}

/// The current value of `key` and its revision (`None`: absent, or
/// deleted).
pub(super) async fn current(
    bucket: &kv::Store,
    key: &str,
) -> Result<Option<(Bytes, u64)>, StoreError> {
    Ok(bucket
        .entry(key)
        .await
        .map_err(nats_err)?
        .filter(|entry| entry.operation == kv::Operation::Put)
        .map(|entry| (entry.value, entry.revision)))
}

/// Writes `value` to `key` if it is still at `revision` (`None`: absent);
/// `false` if another write came first.
pub(super) async fn swap(
    bucket: &kv::Store,
    key: &str,
    revision: Option<u64>,
    value: Bytes,
) -> Result<bool, StoreError> {
    match revision {
        None => match bucket.create(key, value).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(nats_err(e)),
        },
        Some(revision) => match bucket.update(key, value, revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(nats_err(e)),
        },
    }
}

fn contended(what: &str) -> StoreError {
    StoreError::Cluster(format!("{what}: too many concurrent changes, try again"))
}

impl Cluster {
    /// Binds `record.name` to `record`'s identity if no identity owns it
    /// yet in any letter case and that identity owns fewer than
    /// `max_names` names: the same answers as the local store's claim.
    pub(crate) async fn claim(
        &self,
        record: &NameRecord,
        max_names: u64,
    ) -> Result<Claim, StoreError> {
        // Run again after a failure, it finds the name it created (then
        // `Existing`: the same registration) or the place it held.
        directory_request("a name claimed", || self.claim_once(record, max_names)).await
    }

    async fn claim_once(&self, record: &NameRecord, max_names: u64) -> Result<Claim, StoreError> {
        let user = record.name.key();
        let user = user.as_str();
        let name_key = hex(user.as_bytes());
        for _ in 0..ATTEMPTS {
            if let Some(owner) = self.owner(&name_key).await? {
                return Ok(if owner.fingerprint == record.fingerprint {
                    Claim::Existing(owner.name)
                } else {
                    Claim::Taken
                });
            }
            if !self
                .hold_place(&record.fingerprint, user, max_names)
                .await?
            {
                return Ok(Claim::KeyFull);
            }
            match self.names.create(&name_key, encode(record)?).await {
                Ok(_) => return Ok(Claim::New),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // Taken meanwhile, through another relay: by this same
                    // key (then the place is its), or by another.
                    let ours = self
                        .owner(&name_key)
                        .await?
                        .is_some_and(|owner| owner.fingerprint == record.fingerprint);
                    if !ours {
                        self.give_back_place(&record.fingerprint, user).await?;
                    }
                }
                Err(e) => return Err(nats_err(e)),
            }
        }
        Err(contended("the name directory"))
    }

    /// Who owns the name whose key is `name_key` (hex), if anyone.
    async fn owner(&self, name_key: &str) -> Result<Option<NameRecord>, StoreError> {
        current(&self.names, name_key)
            .await?
            .map(|(value, _)| decode(&value))
            .transpose()
    }

    /// Whether some identity owns `name` (in any letter case). Names are
    /// never released, so what was found once is kept (up to a bound).
    pub(crate) async fn exists(&self, name: &UserName) -> Result<bool, StoreError> {
        const KNOWN: usize = 100_000;
        let user = name.key();
        if self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&user)
        {
            return Ok(true);
        }
        let found = self.lookup(name).await?.is_some();
        if found {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() >= KNOWN {
                known.clear();
            }
            known.insert(user);
        }
        Ok(found)
    }

    /// The owner of `name`, in any letter case.
    pub(crate) async fn lookup(&self, name: &UserName) -> Result<Option<NameRecord>, StoreError> {
        let name_key = hex(name.key().as_str().as_bytes());
        directory_request("a name looked up", || self.owner(&name_key)).await
    }

    /// Puts `user` on the list of names of the key `fingerprint`, unless
    /// the list is full (`false`).
    async fn hold_place(
        &self,
        fingerprint: &[u8; 32],
        user: &str,
        max_names: u64,
    ) -> Result<bool, StoreError> {
        let key = hex(fingerprint);
        for _ in 0..ATTEMPTS {
            let (mut list, revision) = match current(&self.keys, &key).await? {
                Some((value, revision)) => (decode::<KeyNames>(&value)?, Some(revision)),
                None => (KeyNames::default(), None),
            };
            if list.names.iter().any(|n| n == user) {
                return Ok(true);
            }
            if list.names.len() as u64 >= max_names {
                // Places held for names the key does not own (a relay
                // died between holding one and creating the name) are
                // given up before the key is refused.
                let mut owned = Vec::with_capacity(list.names.len());
                for name in list.names {
                    let owner = self.owner(&hex(name.as_bytes())).await?;
                    if owner.is_some_and(|o| o.fingerprint == *fingerprint) {
                        owned.push(name);
                    }
                }
                if owned.len() as u64 >= max_names {
                    return Ok(false);
                }
                list.names = owned;
            }
            list.names.push(user.to_string());
            if swap(&self.keys, &key, revision, encode(&list)?).await? {
                return Ok(true);
            }
        }
        Err(contended("the names of a key"))
    }

    /// Takes `user` off the list of names of the key `fingerprint`.
    async fn give_back_place(&self, fingerprint: &[u8; 32], user: &str) -> Result<(), StoreError> {
        let key = hex(fingerprint);
        for _ in 0..ATTEMPTS {
            let Some((value, revision)) = current(&self.keys, &key).await? else {
                return Ok(());
            };
            let mut list: KeyNames = decode(&value)?;
            let before = list.names.len();
            list.names.retain(|n| n != user);
            if list.names.len() == before
                || swap(&self.keys, &key, Some(revision), encode(&list)?).await?
            {
                return Ok(());
            }
        }
        Err(contended("the names of a key"))
    }

    /// Adds `record` to the prekeys of the identity `fingerprint` (the
    /// local store's rule, `keep_newest`), replicated once this returns.
    /// Returns what is kept, newest first.
    pub(crate) async fn publish_prekey(
        &self,
        fingerprint: &[u8; 32],
        record: PrekeyRecord,
        now: u64,
    ) -> Result<Vec<PrekeyRecord>, StoreError> {
        // Run again after a failure, it keeps the prekey once (`keep_newest`).
        directory_request("a prekey published", || {
            self.publish_prekey_once(fingerprint, &record, now)
        })
        .await
    }

    async fn publish_prekey_once(
        &self,
        fingerprint: &[u8; 32],
        record: &PrekeyRecord,
        now: u64,
    ) -> Result<Vec<PrekeyRecord>, StoreError> {
        let key = hex(fingerprint);
        for _ in 0..ATTEMPTS {
            let (stored, revision) = match current(&self.prekeys, &key).await? {
                Some((value, revision)) => (decode::<Vec<PrekeyRecord>>(&value)?, Some(revision)),
                None => (Vec::new(), None),
            };
            let kept = keep_newest(stored, Some(record.clone()), now);
            if swap(&self.prekeys, &key, revision, encode(&kept)?).await? {
                return Ok(kept);
            }
        }
        Err(contended("the prekey directory"))
    }
}
