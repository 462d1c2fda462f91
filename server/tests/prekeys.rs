//! The prekey directory (protocol.md 9.11): `PublishPrekey` verified
//! against the registered identity and stored durably, the newest two per
//! identity handed out in `Key`, `Joined` and the join `Presence`, expired
//! ones dropped; and the refusal of a version-1 client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Relay, identity, now_secs, prekey, user};
use sotto_crypto::{MAX_PREKEY_LEN, PREKEY_LIFETIME, SignedPrekey};
use sotto_proto::{ClientFrame, ErrorCode, RelayFrame};
use tokio::io::AsyncWriteExt;

const HOUR: u64 = 60 * 60;

async fn publish(client: &mut Client, prekey: &Bytes) -> RelayFrame {
    client
        .send(ClientFrame::PublishPrekey {
            prekey: prekey.clone(),
        })
        .await;
    client.recv().await
}

/// The id the relay must answer with: the prekey's own.
fn id_of(owner: &str, prekey: &Bytes) -> [u8; 16] {
    let verified = SignedPrekey::verify(prekey, identity(owner).public(), now_secs()).unwrap();
    *verified.id().as_bytes()
}

async fn prekeys_of(client: &mut Client, name: &str) -> Vec<Bytes> {
    client
        .send(ClientFrame::LookupKey { name: user(name) })
        .await;
    match client.recv().await {
        RelayFrame::Key { prekeys, .. } => prekeys,
        other => panic!("expected Key, got {other:?}"),
    }
}

fn refused(frame: &RelayFrame) -> ErrorCode {
    match frame {
        RelayFrame::Error { id: None, code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn published_prekeys_are_handed_out_with_the_identity() {
    let relay = Relay::start().await;
    let now = now_secs();
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let alices = prekey(identity("alice"), 0, now);
    let bobs = prekey(identity("bob"), 1, now);
    assert_eq!(
        publish(&mut alice, &alices).await,
        RelayFrame::PrekeyPublished {
            id: id_of("alice", &alices)
        }
    );
    assert_eq!(
        publish(&mut bob, &bobs).await,
        RelayFrame::PrekeyPublished {
            id: id_of("bob", &bobs)
        }
    );
    assert_eq!(relay.metrics.prekeys_published.load(Ordering::Relaxed), 2);

    // In the directory answer, with the identity.
    assert_eq!(prekeys_of(&mut bob, "alice").await, vec![alices.clone()]);
    assert_eq!(prekeys_of(&mut alice, "carol").await, Vec::<Bytes>::new());

    // In each member of Joined, and in the Presence of a join.
    alice.join("lobby").await;
    let RelayFrame::Joined { members, .. } = bob.join("lobby").await else {
        panic!("expected Joined")
    };
    let listed: Vec<(&str, &[Bytes])> = members
        .iter()
        .map(|m| (m.name.as_str(), m.prekeys.as_slice()))
        .collect();
    assert_eq!(
        listed,
        [
            ("alice", std::slice::from_ref(&alices)),
            ("bob", std::slice::from_ref(&bobs))
        ]
    );
    let RelayFrame::Presence {
        user: who, prekeys, ..
    } = alice.recv().await
    else {
        panic!("expected Presence")
    };
    assert_eq!((who, prekeys), (user("bob"), vec![bobs.clone()]));

    // Carol registers without one: a Joined after a reconnection still
    // lists the others' prekeys, and hers is empty.
    let mut carol = relay.registered("carol").await;
    let RelayFrame::Joined { members, .. } = carol.join("lobby").await else {
        panic!("expected Joined")
    };
    let carols = members.iter().find(|m| m.name == user("carol")).unwrap();
    assert!(carols.prekeys.is_empty());
    assert_eq!(members[0].prekeys, vec![alices]);
}

#[tokio::test]
async fn the_relay_refuses_prekeys_that_do_not_verify_for_the_registered_identity() {
    let relay = Relay::start().await;
    let now = now_secs();
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    // Bob's genuine prekey, published on Alice's connection.
    let bobs = prekey(identity("bob"), 1, now);
    assert_eq!(
        refused(&publish(&mut alice, &bobs).await),
        ErrorCode::BadPrekey
    );
    // Alice's own, but expired.
    let old = prekey(identity("alice"), 0, now - PREKEY_LIFETIME.as_secs() - 1);
    assert_eq!(
        refused(&publish(&mut alice, &old).await),
        ErrorCode::BadPrekey
    );
    // Alice's own, one byte changed (in the signature).
    let mut changed = prekey(identity("alice"), 0, now).to_vec();
    *changed.last_mut().unwrap() ^= 1;
    let changed = Bytes::from(changed);
    assert_eq!(
        refused(&publish(&mut alice, &changed).await),
        ErrorCode::BadPrekey
    );
    // Longer than any prekey.
    let long = Bytes::from(vec![2; MAX_PREKEY_LEN + 1]);
    assert_eq!(
        refused(&publish(&mut alice, &long).await),
        ErrorCode::TooLarge
    );
    assert_eq!(relay.metrics.prekeys_refused.load(Ordering::Relaxed), 4);
    assert_eq!(relay.metrics.prekeys_published.load(Ordering::Relaxed), 0);
    // Nothing was stored, and the connection is still served.
    assert!(prekeys_of(&mut bob, "alice").await.is_empty());
    assert!(prekeys_of(&mut alice, "bob").await.is_empty());

    // Before registration: refused like every request that needs a name.
    let mut anonymous = relay.client().await;
    assert_eq!(
        refused(&publish(&mut anonymous, &bobs).await),
        ErrorCode::NotRegistered
    );
}

#[tokio::test]
async fn the_newest_two_are_kept_durably_and_publishing_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_in(dir.path(), |_| {}).await;
    let now = now_secs();
    let alice_id = identity("alice");
    let made = [
        prekey(alice_id, 0, now - 2 * HOUR),
        prekey(alice_id, 1, now - HOUR),
        prekey(alice_id, 2, now),
        prekey(alice_id, 3, now - 3 * HOUR),
    ];
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    for (i, p) in made.iter().enumerate() {
        assert_eq!(
            publish(&mut alice, p).await,
            RelayFrame::PrekeyPublished {
                id: id_of("alice", p)
            },
            "prekey {i}"
        );
    }
    // The newest two by created_at, newest first; the older one published
    // last is not among them.
    let newest = vec![made[2].clone(), made[1].clone()];
    assert_eq!(prekeys_of(&mut bob, "alice").await, newest);
    // A fifth publication on this connection is one too many.
    assert_eq!(
        refused(&publish(&mut alice, &made[2]).await),
        ErrorCode::RateLimited
    );

    // Stored before the answer: they survive a restart.
    drop((alice, bob));
    relay.stop().await;
    let relay = Relay::start_in(dir.path(), |_| {}).await;
    let mut bob = relay.registered("bob").await;
    assert_eq!(prekeys_of(&mut bob, "alice").await, newest);
}

#[tokio::test]
async fn expired_prekeys_are_no_longer_handed_out() {
    let relay = Relay::start().await;
    let now = now_secs();
    // Made so that it expires two seconds from now.
    let expiring = prekey(identity("alice"), 0, now + 2 - PREKEY_LIFETIME.as_secs());
    let fresh = prekey(identity("alice"), 1, now - HOUR);
    let mut alice = relay.registered("alice").await;
    for p in [&expiring, &fresh] {
        assert!(matches!(
            publish(&mut alice, p).await,
            RelayFrame::PrekeyPublished { .. }
        ));
    }
    let mut bob = relay.registered("bob").await;
    assert_eq!(
        prekeys_of(&mut bob, "alice").await,
        vec![fresh.clone(), expiring]
    );
    // Let the clock pass its expiry (this waits for time, it asserts
    // nothing about it).
    while now_secs() < now + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(prekeys_of(&mut bob, "alice").await, vec![fresh.clone()]);
    alice.join("lobby").await;
    let RelayFrame::Joined { members, .. } = bob.join("lobby").await else {
        panic!("expected Joined")
    };
    assert_eq!(members[0].prekeys, vec![fresh]);
}

/// A client of protocol version 1 (before prekeys) or 2 (before blobs)
/// gets the relay's version in its challenge's first byte, and an
/// `UnsupportedVersion` error naming both versions for any frame of its
/// own.
#[tokio::test]
async fn clients_of_older_versions_are_refused_clearly() {
    let relay = Relay::start().await;
    assert_eq!(sotto_proto::PROTOCOL_VERSION, 3);
    for old_version in [1, 2] {
        // The challenge decoded at all: it was framed as version 3.
        let mut old = relay.client().await;
        // An old `ListRooms` (variant 3 in both).
        old.framed
            .get_mut()
            .write_all(&[0, 0, 0, 2, old_version, 3])
            .await
            .unwrap();
        old.framed.get_mut().flush().await.unwrap();
        let seen = old.closed().await;
        assert_eq!(
            seen,
            [RelayFrame::Error {
                id: None,
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "protocol version {old_version} is not supported; this relay speaks 3"
                ),
            }]
        );
    }
}
