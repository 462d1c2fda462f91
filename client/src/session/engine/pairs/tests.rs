//! Two real engines, the frames of one carried to the other as the relay
//! carries them.

use super::super::testing::*;
use crate::account::Account;
use crate::profile::Profile;

/// `user`'s engine on its own store, registered and in the lobby with
/// `members` (names of test identities).
async fn engine_of(user: &str, members: &[&str], dir: &std::path::Path) -> (Engine, Out) {
    let account = Account::open(Profile::open(dir).unwrap(), fixture(user), Some(name(user)))
        .await
        .unwrap();
    let (mut engine, _) = new_engine(&account, SessionLimits::default());
    let mut out = Out::default();
    engine.on_registered(name(user), &mut out);
    engine.handle_frame(lobby_joined(members), &mut out);
    (engine, out)
}

/// What the relay delivers to `to` of the `Send`s in `out` (from `from`):
/// room messages with `to`'s own slot, direct frames addressed to `to`.
fn carried(out: &Out, from: &str, to: &str) -> Vec<RelayFrame> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, body, slots } => {
                let mine = slots
                    .iter()
                    .find(|s| s.to == name(to))
                    .map(|s| s.data.clone());
                let for_them = match &route.to {
                    Destination::Room(_) => true,
                    Destination::User(user) => *user == name(to),
                };
                for_them.then(|| RelayFrame::Deliver {
                    delivery: 0,
                    from: name(from),
                    to: route.to.clone(),
                    body: body.clone(),
                    slot: mine,
                })
            }
            _ => None,
        })
        .collect()
}

fn kinds(frames: &[RelayFrame]) -> Vec<&'static str> {
    frames
        .iter()
        .map(|f| match f {
            RelayFrame::Deliver { body, .. } => match sotto_crypto::PeerBody::decode(body) {
                Ok(sotto_crypto::PeerBody::Announcement(_)) => "announcement",
                Ok(sotto_crypto::PeerBody::PairReply(_)) => "pair reply",
                Ok(sotto_crypto::PeerBody::Message(_)) => "message",
                Err(_) => "garbage",
            },
            _ => "other",
        })
        .collect()
}

/// A join, end to end between two engines: the newcomer announces itself
/// on joining; the member accepts (one RSA decryption, with its prekey)
/// and answers with a pair reply, no announcement and so no signature of
/// its own; then each reads the other's first message. (protocol.md 14.3,
/// step 10; the cost target of issue 14, item 5.)
#[tokio::test]
async fn a_newcomer_is_answered_with_a_pair_reply_for_one_decryption_and_no_signature() {
    let (bob_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut bob, out) = engine_of("bob", &["bob"], bob_dir.path()).await;
    assert!(carried(&out, "bob", "alice").is_empty(), "alone: {out:?}");
    // alice joins: bob hears of her; she announces herself to him.
    feed(
        &mut bob,
        presence(
            "alice",
            PresenceEvent::Joined,
            Some(fixture("alice").public()),
        ),
    );
    let (mut alice, joined) = engine_of("alice", &["bob", "alice"], alice_dir.path()).await;
    let to_bob = carried(&joined, "alice", "bob");
    assert_eq!(kinds(&to_bob), ["announcement"]);

    let decryptions = rsa_decryptions(&bob);
    let mut answered = Out::default();
    bob.handle_frames(to_bob, &mut answered);
    assert_eq!(rsa_decryptions(&bob), decryptions + 1, "one RSA decryption");
    let to_alice = carried(&answered, "bob", "alice");
    assert_eq!(
        kinds(&to_alice),
        ["pair reply"],
        "no announcement, no signature"
    );
    assert!(
        errors(&answered.updates).is_empty(),
        "{:?}",
        answered.updates
    );

    let before = rsa_decryptions(&alice);
    let mut out = Out::default();
    alice.handle_frames(to_alice, &mut out);
    assert_eq!(rsa_decryptions(&alice), before, "a pair reply costs no RSA");
    assert!(errors(&out.updates).is_empty(), "{:?}", out.updates);

    // Each reads the other, with nothing more announced.
    let said = command(&mut bob, send(lobby_chat(), "welcome"));
    let to_alice = carried(&said, "bob", "alice");
    assert_eq!(kinds(&to_alice), ["message"]);
    let mut out = Out::default();
    alice.handle_frames(to_alice, &mut out);
    assert_eq!(messages(&out.updates)[0].text, "welcome");
    let said = command(&mut alice, send(lobby_chat(), "thanks"));
    let to_bob = carried(&said, "alice", "bob");
    assert_eq!(kinds(&to_bob), ["message"]);
    let mut out = Out::default();
    bob.handle_frames(to_bob, &mut out);
    assert_eq!(messages(&out.updates)[0].text, "thanks");
}

/// A pair reply under a session the newcomer no longer runs (it restarted
/// since) opens nothing: it is rejected, not taken for a key.
#[tokio::test]
async fn a_pair_reply_to_a_session_no_longer_running_is_rejected() {
    let (bob_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut bob, _) = engine_of("bob", &["bob"], bob_dir.path()).await;
    feed(
        &mut bob,
        presence(
            "alice",
            PresenceEvent::Joined,
            Some(fixture("alice").public()),
        ),
    );
    let (_, joined) = engine_of("alice", &["bob", "alice"], alice_dir.path()).await;
    let mut answered = Out::default();
    bob.handle_frames(carried(&joined, "alice", "bob"), &mut answered);
    let reply = carried(&answered, "bob", "alice");
    // alice's next run (its sessions are never stored) gets the old reply.
    let (mut alice, _) = engine_of("alice", &["bob", "alice"], alice_dir.path()).await;
    let updates = feed(&mut alice, reply.into_iter().next().unwrap());
    assert!(
        matches!(updates[..], [Update::Rejected { .. }]),
        "{updates:?}"
    );
}

/// Pool key `i` of testdata/prekey-keys.txt.
fn pool_key(i: usize) -> sotto_crypto::PrekeyKey {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/prekey-keys.txt"),
    )
    .unwrap();
    let line = text.lines().filter(|l| !l.starts_with('#')).nth(i).unwrap();
    let der: Vec<u8> = (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect();
    sotto_crypto::PrekeyKey::from_pkcs8_der(&der).unwrap()
}

/// zed: an identity made of two pool keys, whose prekey no engine knows.
fn zed() -> sotto_crypto::Identity {
    let der = |i| pool_key(i).to_pkcs8_der().unwrap();
    sotto_crypto::Identity::from_private_keys(&der(6), &der(7)).unwrap()
}

fn codes_of(out: &Out) -> Vec<crate::session::ProblemCode> {
    codes(&out.updates)
}

/// A member with no valid prekey gets its pair key wrapped to its identity
/// key, never silently: the user is told, once per pair. Once the member
/// has a prekey, the session restarts, so what follows is forward secret
/// again.
#[tokio::test]
async fn no_prekey_falls_back_to_the_identity_key_with_a_notice_and_heals_once_one_appears() {
    use crate::session::ProblemCode;
    let bob = fixture("bob");
    let zed = zed();
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    feed(
        &mut engine,
        presence("zed", PresenceEvent::Joined, Some(zed.public())),
    );
    let out = command(&mut engine, send(lobby_chat(), "hello zed"));
    assert_eq!(
        codes_of(&out),
        [ProblemCode::NotForwardSecret],
        "{:?}",
        out.updates
    );
    let announced: Vec<_> = out
        .frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, body, .. } => match sotto_crypto::PeerBody::decode(body) {
                Ok(sotto_crypto::PeerBody::Announcement(a)) => {
                    Some((route.to.clone(), a.context.via))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(
        announced,
        [(Destination::User(name("zed")), sotto_crypto::Via::Identity)]
    );
    let session = |engine: &Engine| {
        engine.outbound[&sotto_crypto::Conversation::room("lobby")]
            .session
            .as_ref()
            .unwrap()
            .id()
    };
    let before = session(&engine);
    // Told once, not at every message.
    let out = command(&mut engine, send(lobby_chat(), "again"));
    assert!(codes_of(&out).is_empty(), "{:?}", out.updates);
    assert_eq!(session(&engine), before);
    // zed publishes a prekey: the next message restarts the session, every
    // member announced again, zed to the prekey.
    let (signed, _) = zed
        .make_prekey_with(&mut rand::rng(), pool_key(5), now_secs())
        .unwrap();
    engine.keep_peer_prekey(
        sotto_crypto::SignedPrekey::verify(signed.as_bytes(), zed.public(), now_secs()).unwrap(),
    );
    let out = command(&mut engine, send(lobby_chat(), "forward secret again"));
    assert!(codes_of(&out).is_empty(), "{:?}", out.updates);
    assert_ne!(session(&engine), before, "restarted");
    let vias: Vec<bool> = out
        .frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { body, .. } => match sotto_crypto::PeerBody::decode(body) {
                Ok(sotto_crypto::PeerBody::Announcement(a)) => {
                    Some(matches!(a.context.via, sotto_crypto::Via::Prekey(_)))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(vias, [true, true], "bob and zed, both to prekeys");
}

/// A key wrapped to a prekey this client no longer has (deleted after its
/// grace) cannot be opened, and the user is told why, not just "rejected".
#[tokio::test]
async fn a_key_for_a_deleted_prekey_is_refused_with_its_reason() {
    use crate::session::ProblemCode;
    let alice = fixture("alice");
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    // alice's prekey of long ago, which her engine does not hold.
    let (signed, _) = alice
        .make_prekey_with(&mut rand::rng(), pool_key(4), now_secs())
        .unwrap();
    let gone =
        sotto_crypto::SignedPrekey::verify(signed.as_bytes(), alice.public(), now_secs()).unwrap();
    let mut session = sotto_crypto::SendingSession::start(
        &mut rand::rng(),
        bob.fingerprint(),
        sotto_crypto::Conversation::room("lobby"),
        5,
        0,
        now_secs(),
    );
    let unsigned = session
        .add_recipients(&mut rand::rng(), &[sotto_crypto::WrapTo::Prekey(&gone)], 0)
        .unwrap();
    let announcement = sotto_crypto::sign_announcements(&bob, &mut rand::rng(), unsigned)
        .unwrap()
        .remove(0);
    let updates = feed(&mut engine, announce(&announcement));
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::Error(p) if p.code == ProblemCode::KeyExpired)),
        "{updates:?}"
    );
    assert!(
        updates.iter().any(|u| matches!(u, Update::Rejected { .. })),
        "{updates:?}"
    );
}

/// A message delivered again after it was opened (its key is forgotten) is
/// dropped quietly and receipted again; one that only claims an opened
/// number, with a body its sender never sealed, is rejected.
#[tokio::test]
async fn a_genuine_duplicate_is_dropped_quietly_and_a_forged_one_rejected() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 3, 0);
    let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
    feed(&mut engine, announce(&bob.announcement));
    let sealed = bob.seal("once");
    let updates = feed(&mut engine, deliver(&sealed, lobby()));
    assert_eq!(messages(&updates)[0].text, "once");
    // Again: nothing shown, nothing rejected, a receipt to bob again.
    let mut out = Out::default();
    engine.handle_frames([deliver(&sealed, lobby())], &mut out);
    assert!(out.updates.is_empty(), "{:?}", out.updates);
    assert!(
        sent_to(&out).contains(&&Destination::User(name("bob"))),
        "receipted again: {:?}",
        out.frames
    );
    // The same header and slot over another body: the slot's tag fails.
    let mut forged = sealed.clone();
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    let updates = feed(&mut engine, deliver(&forged, lobby()));
    assert!(
        matches!(updates[..], [Update::Rejected { .. }]),
        "{updates:?}"
    );
}

/// The prekeys a roster hands out are taken as each member is pinned,
/// before the newcomer announces itself: its first pairs are wrapped to
/// them, with no fallback to identity keys.
#[tokio::test]
async fn a_roster_s_prekeys_are_used_by_the_announcement_on_joining() {
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    // An engine with nothing preloaded: the prekeys come with `Joined`.
    let (mut engine, _) =
        Engine::new(&account, &[RoomName::lobby()], SessionLimits::default()).unwrap();
    let (signed, _, secret) = test_signed_prekey(&fixture("alice"));
    engine.prekeys.keep_own(signed, secret);
    let (bobs, _, _) = test_signed_prekey(&fixture("bob"));
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    let member = |who: &str, prekeys: Vec<bytes::Bytes>| sotto_proto::Member {
        name: name(who),
        identity: fixture(who).public().to_bytes().into(),
        online: true,
        prekeys,
    };
    engine.handle_frame(
        RelayFrame::Joined {
            room: RoomName::lobby(),
            members: vec![
                member("alice", Vec::new()),
                member("bob", vec![bytes::Bytes::copy_from_slice(bobs.as_bytes())]),
            ],
        },
        &mut out,
    );
    assert!(codes(&out.updates).is_empty(), "{:?}", out.updates);
    let vias: Vec<sotto_crypto::Via> = out
        .frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { body, .. } => match sotto_crypto::PeerBody::decode(body) {
                Ok(sotto_crypto::PeerBody::Announcement(a)) => Some(a.context.via),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(
        matches!(vias[..], [sotto_crypto::Via::Prekey(_)]),
        "{vias:?}"
    );
}
