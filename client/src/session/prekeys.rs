//! The client's prekeys (docs/protocol.md 12.6, 9.11): its own, generated
//! on the blocking pool (never on the session loop), kept sealed in the
//! vault, published after every registration, rotated every
//! `PREKEY_ROTATE` and deleted once their grace has passed; and its
//! contacts', verified against the **pinned** identity, the newest valid
//! one kept per contact, never replaced by an older one, and dropped once
//! expired. What the relay hands out that fails is blamed on the relay.
//!
//! What the session construction asks of it:
//! [`Prekeys::newest_for`] (the newest valid prekey of a fingerprint at a
//! time) and [`Prekeys::own_secret`] (this client's prekey secret with an
//! id).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sotto_crypto::{
    Fingerprint, Identity, PREKEY_GRACE_MAX, PREKEY_ROTATE, PrekeyId, PrekeyKey, PrekeySecret,
    PublicIdentity, SignedPrekey, VerifiedPrekey,
};
use sotto_proto::{ClientFrame, UserName};
use zeroize::Zeroizing;

use crate::contacts::Contacts;
use crate::store::{Store, StoreError};

#[cfg(test)]
mod tests;

/// This client's prekeys: keyed hash of the id -> [`StoredOwn`] (the
/// signed prekey and the secret's encoding).
const OWN: &str = "own_prekeys";
/// Contacts' prekeys: keyed hash of the fingerprint -> [`StoredTheirs`].
const THEIRS: &str = "peer_prekeys";

/// Where a client's prekey key pairs come from.
#[derive(Clone, Debug, Default)]
pub enum PrekeySource {
    /// A fresh RSA-3072 key from the operating system's RNG for every
    /// prekey (0.5-3 s of CPU each, on the blocking pool). What every
    /// product uses.
    #[default]
    Fresh,
    /// Pre-generated keys (PKCS#8 DER), taken in turn. **Tests only**: every
    /// client given the same pool shares its private keys.
    Pool(Arc<[Zeroizing<Vec<u8>>]>),
}

impl PrekeySource {
    /// The pool in `path`: one PKCS#8 DER per line in hex, `#` lines
    /// ignored (`testdata/prekey-keys.txt`). For tests.
    pub fn pool_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a hex key line");
        let mut keys = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let der = (0..line.len())
                .step_by(2)
                .map(|at| {
                    line.get(at..at + 2)
                        .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(bad)?;
            keys.push(Zeroizing::new(der));
        }
        if keys.is_empty() {
            return Err(bad());
        }
        Ok(Self::Pool(keys.into()))
    }
}

/// One of this client's prekeys.
struct Own {
    signed: Bytes,
    secret: Arc<PrekeySecret>,
}

/// What this client knows of a contact's prekeys.
#[derive(Default)]
struct Theirs {
    /// The newest valid prekey seen, while it is valid.
    newest: Option<VerifiedPrekey>,
    /// The newest `created_at` ever accepted: nothing older is taken.
    seen: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredOwn {
    signed: Vec<u8>,
    secret: Vec<u8>,
}

impl Drop for StoredOwn {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

#[derive(Serialize, Deserialize)]
struct StoredTheirs {
    fingerprint: Fingerprint,
    newest: Option<Vec<u8>>,
    seen: u64,
}

/// What a generation job sends back.
pub(crate) type Made = sotto_crypto::Result<(SignedPrekey, PrekeySecret)>;

/// The prekeys of one client.
pub(crate) struct Prekeys {
    identity: Arc<Identity>,
    store: Store,
    source: PrekeySource,
    /// The next key of a pool.
    next_key: usize,
    own: BTreeMap<PrekeyId, Own>,
    theirs: HashMap<Fingerprint, Theirs>,
    /// The relay's storage age (`Registered.offline_max_age`), capped.
    storage_age: Duration,
    connected: bool,
    /// A generation under way on the blocking pool.
    generating: Option<mpsc::Receiver<Made>>,
    /// Contacts whose prekeys the relay handed out wrongly, and how, to
    /// report.
    refused: BTreeSet<(UserName, Refusal)>,
}

/// How the relay handed out a contact's prekeys wrongly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Refusal {
    /// A prekey that does not verify for the pinned identity (another
    /// key's, changed, expired, malformed).
    Forged,
    /// Only older prekeys than one already taken and still valid.
    Replayed,
}

/// What the engine is to do after [`Prekeys::tick`] or
/// [`Prekeys::on_registered`]: frames to send.
pub(crate) type Frames = Vec<ClientFrame>;

impl Prekeys {
    /// The prekeys kept in `store`: this client's own, and those of the
    /// `contacts` (each verified again against its pinned identity at
    /// `now`; one that no longer verifies is dropped, its `seen` kept).
    pub(crate) fn load(
        identity: Arc<Identity>,
        store: Store,
        source: PrekeySource,
        contacts: &Contacts,
        now: u64,
    ) -> Result<Self, StoreError> {
        let mut own = BTreeMap::new();
        for (_, value) in store.records().all(OWN)? {
            let stored: StoredOwn = postcard::from_bytes(&value).map_err(|_| StoreError::Format)?;
            let mut secret =
                PrekeySecret::from_bytes(&stored.secret).map_err(|_| StoreError::Format)?;
            secret.count_for(&identity);
            own.insert(
                secret.id(),
                Own {
                    signed: Bytes::from(stored.signed.clone()),
                    secret: Arc::new(secret),
                },
            );
        }
        let pinned: HashMap<Fingerprint, Arc<PublicIdentity>> = contacts
            .iter()
            .map(|c| (c.identity.fingerprint(), Arc::clone(&c.identity)))
            .collect();
        let mut theirs = HashMap::new();
        for (_, value) in store.records().all(THEIRS)? {
            let stored: StoredTheirs =
                postcard::from_bytes(&value).map_err(|_| StoreError::Format)?;
            let newest = match (&stored.newest, pinned.get(&stored.fingerprint)) {
                (Some(bytes), Some(identity)) => SignedPrekey::verify(bytes, identity, now).ok(),
                _ => None,
            };
            theirs.insert(
                stored.fingerprint,
                Theirs {
                    newest,
                    seen: stored.seen,
                },
            );
        }
        Ok(Self {
            identity,
            store,
            source,
            next_key: 0,
            own,
            theirs,
            storage_age: PREKEY_GRACE_MAX,
            connected: false,
            generating: None,
            refused: BTreeSet::new(),
        })
    }

    // ----- for the session construction -----------------------------------

    /// The newest valid prekey of the identity `fingerprint` at `now`
    /// (Unix seconds): verified against the identity pinned for it, never
    /// older than one already seen, not expired. `None`: fall back to the
    /// identity key (docs/protocol.md 12.6).
    pub(crate) fn newest_for(
        &self,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> Option<&VerifiedPrekey> {
        self.theirs
            .get(fingerprint)?
            .newest
            .as_ref()
            .filter(|p| p.valid_at(now))
    }

    /// This client's prekey secret with `id`, while it is kept (until its
    /// grace has passed).
    pub(crate) fn own_secret(&self, id: &PrekeyId) -> Option<Arc<PrekeySecret>> {
        self.own.get(id).map(|own| Arc::clone(&own.secret))
    }

    /// Keeps one of this client's own prekeys in memory, as `take` does with
    /// one just made but without storing or publishing it (benchmarks and
    /// tests, whose engines have no relay).
    pub(crate) fn keep_own(&mut self, signed: SignedPrekey, mut secret: PrekeySecret) {
        secret.count_for(&self.identity);
        self.own.insert(
            secret.id(),
            Own {
                signed: Bytes::from(signed.into_bytes()),
                secret: Arc::new(secret),
            },
        );
    }

    /// Keeps a contact's prekey verified against its pinned identity, if
    /// newer than the one kept (benchmarks and tests).
    pub(crate) fn keep_theirs(&mut self, prekey: VerifiedPrekey) {
        let theirs = self.theirs.entry(prekey.owner()).or_default();
        if theirs
            .newest
            .as_ref()
            .is_none_or(|kept| kept.created_at() < prekey.created_at())
        {
            theirs.seen = theirs.seen.max(prekey.created_at());
            theirs.newest = Some(prekey);
        }
    }

    /// This client's newest prekey valid at `now`, as published.
    pub(crate) fn own_newest(&self, now: u64) -> Option<(PrekeyId, &Bytes)> {
        self.own
            .iter()
            .filter(|(_, own)| is_valid(&own.secret, now))
            .max_by_key(|(_, own)| own.secret.created_at())
            .map(|(id, own)| (*id, &own.signed))
    }

    // ----- lifecycle -------------------------------------------------------

    /// Registered at a relay that keeps deliveries `offline_max_age`
    /// seconds: publish every own prekey still valid, and make one if
    /// none is fresh enough.
    pub(crate) fn on_registered(&mut self, offline_max_age: u64, now: u64) -> Frames {
        self.storage_age = Duration::from_secs(offline_max_age).min(PREKEY_GRACE_MAX);
        self.connected = true;
        let mut valid: Vec<&Own> = self
            .own
            .values()
            .filter(|own| is_valid(&own.secret, now))
            .collect();
        valid.sort_by_key(|own| own.secret.created_at());
        let frames = valid
            .into_iter()
            .map(|own| ClientFrame::PublishPrekey {
                prekey: own.signed.clone(),
            })
            .collect();
        self.start_if_due(now);
        frames
    }

    /// The connection ended.
    pub(crate) fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// Housekeeping at `now`: takes a finished generation (stored, then
    /// published if connected), starts the next one when the newest is
    /// `PREKEY_ROTATE` old, deletes the secrets whose grace has passed and
    /// forgets contacts' expired prekeys.
    pub(crate) fn tick(&mut self, now: u64) -> Result<Frames, StoreError> {
        let mut frames = Vec::new();
        if let Some(receiver) = &self.generating {
            match receiver.try_recv() {
                Ok(made) => {
                    self.generating = None;
                    frames.extend(self.take(made)?);
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.generating = None,
            }
        }
        if self.connected {
            self.start_if_due(now);
        }
        let storage_age = self.storage_age;
        let gone: Vec<PrekeyId> = self
            .own
            .iter()
            .filter(|(_, own)| now >= own.secret.delete_at(storage_age))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let key = self.store.record_id(&("own-prekey", id.as_bytes()));
            self.store.records().remove(OWN, &key)?;
            self.own.remove(&id);
        }
        for theirs in self.theirs.values_mut() {
            if theirs.newest.as_ref().is_some_and(|p| !p.valid_at(now)) {
                theirs.newest = None;
            }
        }
        Ok(frames)
    }

    /// Contacts whose prekeys the relay handed out wrongly since the last
    /// call (a prekey that does not verify for the pinned identity, or
    /// only older ones than already seen).
    pub(crate) fn take_refused(&mut self) -> BTreeSet<(UserName, Refusal)> {
        std::mem::take(&mut self.refused)
    }

    /// Prekeys the relay handed out for `name`, whose pinned identity is
    /// `pinned`, at `now`: each verified against `pinned`; the newest
    /// valid one is kept if it is newer than what was seen. Anything that
    /// does not verify, or a list whose newest is older than a prekey of
    /// this contact still valid, is refused and `name` reported. An empty
    /// list says nothing (a `Joined` may leave prekeys out).
    pub(crate) fn observe(
        &mut self,
        name: &UserName,
        pinned: &PublicIdentity,
        prekeys: &[Bytes],
        now: u64,
    ) -> Result<(), StoreError> {
        if prekeys.is_empty() || pinned.fingerprint() == self.identity.fingerprint() {
            return Ok(());
        }
        // The relay lists the newest first: the one already kept means
        // nothing new (and no RSA verification for it).
        let kept = self.theirs.get(&pinned.fingerprint());
        if kept
            .and_then(|t| t.newest.as_ref())
            .is_some_and(|p| prekeys.first().is_some_and(|b| b[..] == *p.bytes()))
        {
            return Ok(());
        }
        let mut best: Option<VerifiedPrekey> = None;
        for bytes in prekeys {
            match SignedPrekey::verify(bytes, pinned, now) {
                Ok(verified) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| verified.created_at() > b.created_at())
                    {
                        best = Some(verified);
                    }
                }
                Err(_) => {
                    self.refused.insert((name.clone(), Refusal::Forged));
                }
            }
        }
        let fingerprint = pinned.fingerprint();
        let theirs = self.theirs.entry(fingerprint).or_default();
        let Some(best) = best else { return Ok(()) };
        if best.created_at() < theirs.seen {
            // Older than one already taken: a replay, unless what was
            // taken has expired meanwhile (then nothing better exists).
            if theirs.newest.as_ref().is_some_and(|p| p.valid_at(now)) {
                self.refused.insert((name.clone(), Refusal::Replayed));
            }
            return Ok(());
        }
        if best.created_at() == theirs.seen && theirs.newest.is_some() {
            return Ok(());
        }
        theirs.seen = best.created_at();
        theirs.newest = Some(best);
        let stored = StoredTheirs {
            fingerprint,
            newest: theirs.newest.as_ref().map(|p| p.bytes().to_vec()),
            seen: theirs.seen,
        };
        let id = self.store.record_id(&("prekey", fingerprint.as_bytes()));
        let value = postcard::to_stdvec(&stored).map_err(|_| StoreError::Format)?;
        self.store.records().put(THEIRS, &id, &value)?;
        Ok(())
    }

    // ----- generation ------------------------------------------------------

    /// Whether a new own prekey is due at `now`: none is valid, or the
    /// newest is `PREKEY_ROTATE` old.
    fn due(&self, now: u64) -> bool {
        self.own_newest(now).is_none_or(|(id, _)| {
            self.own.get(&id).is_some_and(|own| {
                own.secret
                    .created_at()
                    .saturating_add(PREKEY_ROTATE.as_secs())
                    <= now
            })
        })
    }

    fn start_if_due(&mut self, now: u64) {
        if self.generating.is_none() && self.due(now) {
            self.start(now);
        }
    }

    /// A pool's keys in turn from the next one, skipping any that one of
    /// this client's kept prekeys already uses; `None` for fresh keys.
    fn pool_turn(&mut self) -> Option<PoolTurn> {
        match &self.source {
            PrekeySource::Fresh => None,
            PrekeySource::Pool(keys) => {
                let start = self.next_key;
                self.next_key = self.next_key.wrapping_add(1);
                let taken: BTreeSet<PrekeyId> = self.own.keys().copied().collect();
                Some((Arc::clone(keys), start, taken))
            }
        }
    }

    /// Makes a prekey valid from `now` on the blocking pool (a thread of
    /// its own outside a runtime); [`Prekeys::tick`] takes it.
    fn start(&mut self, now: u64) {
        let (tx, rx) = mpsc::channel();
        let identity = Arc::clone(&self.identity);
        let pool = self.pool_turn();
        let job = move || {
            let _ = tx.send(make(&identity, pool.as_ref(), now));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(job)),
            Err(_) => drop(std::thread::spawn(job)),
        }
        self.generating = Some(rx);
    }

    /// If this client has no valid prekey at `now` (a new account, or one
    /// back after its prekeys expired), the job that makes one, to run on
    /// the blocking pool before the first connection, so that the first
    /// registration publishes it at once and a peer who writes right
    /// then finds it (rather than falling back to the identity key).
    pub(crate) fn first_job(&mut self, now: u64) -> Option<impl FnOnce() -> Made + Send + 'static> {
        if self.own_newest(now).is_some() || self.generating.is_some() {
            return None;
        }
        let identity = Arc::clone(&self.identity);
        let pool = self.pool_turn();
        Some(move || make(&identity, pool.as_ref(), now))
    }

    /// Keeps what [`Prekeys::first_job`] made (stored; published at the
    /// registration that follows).
    pub(crate) fn keep_made(&mut self, made: Made) -> Result<(), StoreError> {
        self.take(made).map(drop)
    }

    /// Keeps a prekey just made: sealed in the vault first, then published
    /// if connected.
    fn take(&mut self, made: Made) -> Result<Frames, StoreError> {
        let Ok((signed, secret)) = made else {
            // Key generation failed (it does not, short of the RNG): the
            // next tick tries again.
            return Ok(Vec::new());
        };
        let stored = StoredOwn {
            signed: signed.as_bytes().to_vec(),
            secret: secret.to_bytes()?.to_vec(),
        };
        let value = Zeroizing::new(postcard::to_stdvec(&stored).map_err(|_| StoreError::Format)?);
        let key = self
            .store
            .record_id(&("own-prekey", secret.id().as_bytes()));
        self.store.records().put(OWN, &key, &value)?;
        let signed = Bytes::from(signed.into_bytes());
        self.own.insert(
            secret.id(),
            Own {
                signed: signed.clone(),
                secret: Arc::new(secret),
            },
        );
        Ok(if self.connected {
            vec![ClientFrame::PublishPrekey { prekey: signed }]
        } else {
            Vec::new()
        })
    }

    /// Every own prekey secret `store` holds, as a copy of the data
    /// directory would give them up (tests of what a seizure opens).
    #[cfg(test)]
    pub(crate) fn stored_secrets(store: &Store) -> Vec<PrekeySecret> {
        store
            .records()
            .all(OWN)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(_, value)| {
                let stored: StoredOwn = postcard::from_bytes(&value).ok()?;
                PrekeySecret::from_bytes(&stored.secret).ok()
            })
            .collect()
    }

    /// Waits for the generation under way and takes it (tests).
    #[cfg(test)]
    pub(crate) fn finish_generation(&mut self) -> Result<Frames, StoreError> {
        match self.generating.take() {
            Some(receiver) => match receiver.recv() {
                Ok(made) => self.take(made),
                Err(_) => Ok(Vec::new()),
            },
            None => Ok(Vec::new()),
        }
    }

    /// Whether a generation is under way.
    #[cfg(test)]
    pub(crate) fn generating(&self) -> bool {
        self.generating.is_some()
    }
}

/// A pool's keys, the one to start from, and the prekeys already kept.
type PoolTurn = (Arc<[Zeroizing<Vec<u8>>]>, usize, BTreeSet<PrekeyId>);

/// A prekey of `identity` made at `now`: from a fresh RSA-3072 key (about
/// a second), or from the pool's keys in turn, skipping those already
/// kept.
fn make(identity: &Identity, pool: Option<&PoolTurn>, now: u64) -> Made {
    let mut rng = rand::rng();
    match pool {
        None => identity.make_prekey(&mut rng, now),
        Some((keys, start, taken)) => {
            let mut made = Err(sotto_crypto::Error::InvalidParameter("an empty key pool"));
            for turn in 0..keys.len() {
                let Some(der) = keys.get(start.wrapping_add(turn) % keys.len()) else {
                    continue;
                };
                made = PrekeyKey::from_pkcs8_der(der)
                    .and_then(|key| identity.make_prekey_with(&mut rng, key, now));
                if made.as_ref().is_ok_and(|(_, s)| !taken.contains(&s.id())) {
                    break;
                }
            }
            made
        }
    }
}

/// Whether an own prekey is valid for new sessions at `now`.
fn is_valid(secret: &PrekeySecret, now: u64) -> bool {
    now < secret.expires_at()
}
