//! The prekey lifecycle on a real store: generation off the caller's
//! thread, publication, rotation, deletion after the grace, persistence,
//! and contacts' prekeys verified against the pinned identity (a
//! substituted or replayed prekey refused).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::PathBuf;

use sotto_crypto::{MAX_CLOCK_SKEW, PREKEY_LIFETIME, at_rest::StorageKey};

use super::*;
use crate::contacts::{Contact, Trust};
use crate::vault::Vault;

const T: u64 = 1_764_000_000;
const DAY: u64 = 24 * 60 * 60;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn fixture(name: &str) -> Arc<Identity> {
    Arc::new(
        Identity::load(
            &testdata().join(format!("identities/{name}.sotto-id")),
            b"sotto test vectors",
        )
        .unwrap(),
    )
}

fn pool() -> PrekeySource {
    PrekeySource::pool_file(&testdata().join("prekey-keys.txt")).unwrap()
}

fn store(dir: &Path, identity: &Identity) -> Store {
    let vault = Vault::open(
        &dir.join(crate::vault::VAULT_FILE),
        &StorageKey::from_bytes([5; 32]),
    )
    .unwrap();
    Store::new(Arc::new(vault), identity).unwrap()
}

fn contacts(pins: &[(&str, &Arc<Identity>)]) -> Contacts {
    Contacts::from_contacts(pins.iter().map(|(name, identity)| Contact {
        name: name.parse().unwrap(),
        identity: Arc::new(identity.public().clone()),
        trust: Trust::Unverified,
    }))
}

fn published(frames: &[ClientFrame]) -> Vec<Bytes> {
    frames
        .iter()
        .map(|f| match f {
            ClientFrame::PublishPrekey { prekey } => prekey.clone(),
            other => panic!("expected PublishPrekey, got {other:?}"),
        })
        .collect()
}

/// A signed prekey of `signer` from pool key `key`, made at `created_at`.
fn prekey_of(signer: &Identity, key: usize, created_at: u64) -> Bytes {
    let PrekeySource::Pool(keys) = pool() else {
        panic!("the test pool is a pool")
    };
    let key = PrekeyKey::from_pkcs8_der(&keys[key]).unwrap();
    let (signed, _) = signer
        .make_prekey_with(&mut rand::rng(), key, created_at)
        .unwrap();
    Bytes::from(signed.into_bytes())
}

#[test]
fn own_prekeys_are_made_off_thread_published_rotated_and_deleted_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let alice = fixture("alice");
    let store = store(dir.path(), &alice);
    let mut prekeys =
        Prekeys::load(Arc::clone(&alice), store.clone(), pool(), &contacts(&[]), T).unwrap();
    // Registered with nothing to publish: a generation starts, and its
    // prekey is published once made.
    assert!(prekeys.on_registered(7 * DAY, T).is_empty());
    assert!(prekeys.generating());
    let frames = prekeys.finish_generation().unwrap();
    let [first] = &published(&frames)[..] else {
        panic!("{frames:?}")
    };
    let verified = SignedPrekey::verify(first, alice.public(), T).unwrap();
    let id = verified.id();
    assert_eq!(verified.created_at(), T);
    assert!(prekeys.own_secret(&id).is_some());
    assert_eq!(prekeys.own_newest(T).unwrap().0, id);

    // Nothing is due before PREKEY_ROTATE; then the next one is made.
    let rotate = T + PREKEY_ROTATE.as_secs();
    assert!(prekeys.tick(rotate - 1).unwrap().is_empty());
    assert!(!prekeys.generating());
    assert!(prekeys.tick(rotate).unwrap().is_empty());
    assert!(prekeys.generating());
    let second = published(&prekeys.finish_generation().unwrap());
    let second = SignedPrekey::verify(&second[0], alice.public(), rotate).unwrap();
    assert_eq!(prekeys.own_newest(rotate).unwrap().0, second.id());

    // After a restart both are there, and both are published again.
    drop(prekeys);
    let mut prekeys =
        Prekeys::load(Arc::clone(&alice), store.clone(), pool(), &contacts(&[]), T).unwrap();
    let again = published(&prekeys.on_registered(7 * DAY, rotate));
    assert_eq!(
        again,
        [first.clone(), Bytes::copy_from_slice(second.bytes())]
    );
    assert!(!prekeys.generating());

    // The first one's secret stays until expires_at + storage age + skew.
    let delete_at = T + PREKEY_LIFETIME.as_secs() + 7 * DAY + MAX_CLOCK_SKEW.as_secs();
    prekeys.tick(delete_at - 1).unwrap();
    // (the tick also started the next rotation: take it out of the way)
    prekeys.finish_generation().unwrap();
    assert!(prekeys.own_secret(&id).is_some());
    prekeys.tick(delete_at).unwrap();
    assert!(prekeys.own_secret(&id).is_none());
    // ... and it is gone from the store too.
    let reloaded =
        Prekeys::load(Arc::clone(&alice), store, pool(), &contacts(&[]), delete_at).unwrap();
    assert!(reloaded.own_secret(&id).is_none());
    assert!(reloaded.own_secret(&second.id()).is_some());
}

#[test]
fn the_grace_follows_the_relays_storage_age_capped() {
    let dir = tempfile::tempdir().unwrap();
    let alice = fixture("alice");
    let mut prekeys = Prekeys::load(
        Arc::clone(&alice),
        store(dir.path(), &alice),
        pool(),
        &contacts(&[]),
        T,
    )
    .unwrap();
    // A relay that claims to keep deliveries for a year: the cap holds.
    prekeys.on_registered(365 * DAY, T);
    let made = published(&prekeys.finish_generation().unwrap());
    let id = SignedPrekey::verify(&made[0], alice.public(), T)
        .unwrap()
        .id();
    let delete_at =
        T + PREKEY_LIFETIME.as_secs() + PREKEY_GRACE_MAX.as_secs() + MAX_CLOCK_SKEW.as_secs();
    prekeys.tick(delete_at - 1).unwrap();
    prekeys.finish_generation().unwrap();
    assert!(prekeys.own_secret(&id).is_some());
    prekeys.tick(delete_at).unwrap();
    assert!(prekeys.own_secret(&id).is_none());
}

#[test]
fn contacts_prekeys_are_verified_against_the_pin_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, mallory) = (fixture("alice"), fixture("bob"), fixture("mallory"));
    let store = store(dir.path(), &alice);
    let pins = contacts(&[("bob", &bob)]);
    let mut prekeys = Prekeys::load(Arc::clone(&alice), store.clone(), pool(), &pins, T).unwrap();
    let name: UserName = "bob".parse().unwrap();
    let fp = bob.fingerprint();
    let older = prekey_of(&bob, 1, T - DAY);
    let newer = prekey_of(&bob, 2, T);

    // A prekey signed by another key (the relay substitutes one): refused,
    // blamed, nothing kept.
    let forged = prekey_of(&mallory, 3, T);
    prekeys.observe(&name, bob.public(), &[forged], T).unwrap();
    assert_eq!(
        prekeys.take_refused(),
        BTreeSet::from([(name.clone(), Refusal::Forged)])
    );
    assert!(prekeys.newest_for(&fp, T).is_none());

    // Both of Bob's: the newest is kept, the older beside it is no fault.
    prekeys
        .observe(&name, bob.public(), &[newer.clone(), older.clone()], T)
        .unwrap();
    assert!(prekeys.take_refused().is_empty());
    assert_eq!(prekeys.newest_for(&fp, T).unwrap().bytes(), &newer[..]);

    // The older one alone (the relay replays it): refused, the newer kept.
    prekeys
        .observe(&name, bob.public(), std::slice::from_ref(&older), T)
        .unwrap();
    assert_eq!(
        prekeys.take_refused(),
        BTreeSet::from([(name.clone(), Refusal::Replayed)])
    );
    assert_eq!(prekeys.newest_for(&fp, T).unwrap().bytes(), &newer[..]);
    // Nothing at all (a Joined with no room for prekeys) says nothing.
    prekeys.observe(&name, bob.public(), &[], T).unwrap();
    assert!(prekeys.take_refused().is_empty());

    // Kept across a restart, verified again against the pin.
    drop(prekeys);
    let mut prekeys = Prekeys::load(Arc::clone(&alice), store.clone(), pool(), &pins, T).unwrap();
    assert_eq!(prekeys.newest_for(&fp, T).unwrap().bytes(), &newer[..]);
    prekeys.observe(&name, bob.public(), &[older], T).unwrap();
    assert_eq!(
        prekeys.take_refused(),
        BTreeSet::from([(name.clone(), Refusal::Replayed)])
    );

    // Expired: no longer offered, and dropped at the next tick.
    let expiry = T + PREKEY_LIFETIME.as_secs();
    assert!(prekeys.newest_for(&fp, expiry - 1).is_some());
    assert!(prekeys.newest_for(&fp, expiry).is_none());
    prekeys.tick(expiry).unwrap();
    assert!(prekeys.newest_for(&fp, expiry - 1).is_none());
    // A pin that changed: the stored prekey does not verify for it.
    let repinned = contacts(&[("bob", &mallory)]);
    let reloaded = Prekeys::load(alice, store, pool(), &repinned, T).unwrap();
    assert!(reloaded.newest_for(&fp, T).is_none());
}
