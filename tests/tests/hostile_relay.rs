//! The relay as the attacker: real clients, the real relay, and a hostile
//! man in the middle run with the relay's own certificate (`hostile/`).
//! Each scenario states one attack as rules or injected frames, then checks
//! what the user is shown and that nothing readable, forged or keyed
//! reached the wrong party. docs/security-tests.md maps them to P1-P12.
//!
//! One file (about 1,200 lines) on purpose: each scenario is one test over
//! the shared harness in `hostile/`, read in the order docs/security-tests.md
//! lists them, and another test binary would link the relay, the client
//! library and the harness again, which costs link time and disk on this
//! 2-core machine.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

mod hostile;

use hostile::{
    Act, Hostile, Rule, announcement_body, carries_identities, deliver, hide_member, message_from,
    pair_key_in, readdress, rewrite_body, rewrite_slot, substitute_key,
};
use sotto_testkit::{
    Peer, Relay, Via, barrier, dm, identity, lobby, room, shown, shown_where, user,
};
use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use sotto_client::account::Account;
use sotto_client::contacts::KeyEvent;
use sotto_client::profile::Profile;
use sotto_client::session::{
    Command, Connection, PresenceChange, Problem, ProblemCode, TrustLevel, Update,
};
use sotto_crypto::{
    Conversation, Identity, NoPersistence, PeerBody, RSA_LEN, SendingSession, SequenceCounter,
    SessionId,
};
use sotto_proto::{ClientFrame, Destination, PresenceEvent, RelayFrame, RoomName};

/// A relay with a hostile man in the middle; clients connect to the latter.
struct World {
    temp: tempfile::TempDir,
    _relay: Relay,
    hostile: Hostile,
}

async fn world() -> World {
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&temp.path().join("relay"), 0);
    let hostile = Hostile::start(&relay.dir, &relay.address).await;
    World {
        temp,
        _relay: relay,
        hostile,
    }
}

/// A world with alice and bob in the lobby, alice seeing bob there.
async fn alice_and_bob() -> (World, Peer, Peer) {
    let w = world().await;
    // bob first: alice, joining after him, announces her session to him
    // (and he answers with a pair reply), so that the scenarios have an
    // announcement of alice's to bob to replay, forge or drop.
    let mut bob = w.join("bob").await;
    let mut alice = w.join("alice").await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    bob.expect_members("lobby", &["alice", "bob"]).await;
    (w, alice, bob)
}

/// A world with alice, bob and carol in the lobby, alice seeing all three
/// there.
async fn alice_bob_carol() -> (World, Peer, Peer, Peer) {
    let w = world().await;
    let mut alice = w.join("alice").await;
    let bob = w.join("bob").await;
    let carol = w.join("carol").await;
    alice
        .expect_members("lobby", &["alice", "bob", "carol"])
        .await;
    (w, alice, bob, carol)
}

impl World {
    /// `name` (with the fixture identity of the same name) connected
    /// through the hostile relay, in the lobby.
    ///
    /// Each peer loads its own copy of the identity, so that its count of
    /// RSA decryptions is its own (tests run in parallel).
    async fn join(&self, name: &str) -> Peer {
        self.join_with(name, |_| {}).await
    }

    /// [`World::join`], with the session's configuration adjusted.
    async fn join_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut sotto_client::session::Config),
    ) -> Peer {
        let dir = self.temp.path().join(name);
        let identity = Identity::load(
            &sotto_testkit::testdata().join(format!("identities/{name}.sotto-id")),
            b"sotto test vectors",
        )
        .unwrap();
        let account = Account::open(
            Profile::open(&dir).unwrap(),
            Arc::new(identity),
            Some(user(name)),
        )
        .await
        .unwrap();
        Peer::connect_with(account, &self.hostile.address, adjust).await
    }
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::from_seed([7; 32])
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Announcements travel alone, addressed to their one recipient.
fn to_bob() -> Destination {
    Destination::User(user("bob"))
}

fn lobby_route() -> Destination {
    Destination::Room(RoomName::lobby())
}

fn rsa(peer: &Peer) -> u64 {
    peer.account.identity().rsa_decryptions()
}

/// Waits until `peer` has seen `name` join the lobby again (after a
/// reconnection), so that what it sends next is for `name` too.
/// `name` reconnected: still a member of the lobby, it is back online.
async fn back_in_the_lobby(peer: &mut Peer, name: &str) {
    peer.expect(|u| {
        matches!(u, Update::Presence { name: n, change: PresenceChange::Connected, .. } if n == name)
    })
    .await;
}

/// The number alice and bob compare.
fn true_number() -> String {
    identity("alice")
        .public()
        .safety_number(identity("bob").public())
        .digits()
        .to_owned()
}

async fn verify_bob(alice: &mut Peer) {
    alice.command(Command::Verify {
        name: user("bob"),
        safety_number: true_number(),
    });
    alice
        .expect(
            |u| matches!(u, Update::Trust { name, trust: TrustLevel::Verified } if name == "bob"),
        )
        .await;
}

// 1. P6: its own key for a peer at first contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_own_key_at_first_contact_fails_the_safety_number_comparison() {
    let w = world().await;
    w.hostile.rule(
        Rule::down("alice")
            .when(carries_identities())
            .then(substitute_key("bob", identity("mallory").public())),
    );
    let mut alice = w.join("alice").await;
    let mut bob = w.join("bob").await;
    let pinned = alice
        .expect(|u| matches!(u, Update::Key(KeyEvent::Pinned { name, .. }) if name == "bob"))
        .await;
    let Update::Key(KeyEvent::Pinned { fingerprint, .. }) = pinned else {
        unreachable!()
    };
    assert_eq!(fingerprint, identity("mallory").fingerprint());

    // The two sides compute different numbers: comparing them shows it.
    alice.command(Command::SafetyNumber(user("bob")));
    let Update::SafetyNumber { safety_number, .. } = alice
        .expect(|u| matches!(u, Update::SafetyNumber { .. }))
        .await
    else {
        unreachable!()
    };
    bob.command(Command::SafetyNumber(user("alice")));
    let Update::SafetyNumber {
        safety_number: theirs,
        ..
    } = bob
        .expect(|u| matches!(u, Update::SafetyNumber { .. }))
        .await
    else {
        unreachable!()
    };
    assert_ne!(safety_number.digits(), theirs.digits());
    assert_eq!(theirs.digits(), true_number());
    // Typing bob's number in does not verify the substituted key.
    alice.command(Command::Verify {
        name: user("bob"),
        safety_number: theirs.digits().to_owned(),
    });
    alice
        .expect(|u| matches!(u, Update::Error(e) if e.code == ProblemCode::WrongSafetyNumber))
        .await;
    alice.command(Command::SafetyNumber(user("bob")));
    alice
        .expect(|u| {
            matches!(
                u,
                Update::SafetyNumber {
                    trust: TrustLevel::Unverified,
                    ..
                }
            )
        })
        .await;
    // (The answer to the later command is the barrier: a session handles
    // commands in order.)
    assert!(
        !alice.saw(|u| matches!(u, Update::Trust { .. })),
        "{:#?}",
        alice.seen
    );
}

// 2. P6: swaps the key of a verified peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s02_swapped_key_of_a_verified_peer_blocks_sending_to_it() {
    let (w, mut alice, mut bob, mut carol) = alice_bob_carol().await;
    verify_bob(&mut alice).await;
    // From now on the relay says bob's key is mallory's; bob rejoins.
    w.hostile.rule(
        Rule::down("alice")
            .when(carries_identities())
            .then(substitute_key("bob", identity("mallory").public())),
    );
    bob.command(Command::Leave(room("lobby")));
    bob.expect(|u| matches!(u, Update::Left { .. })).await;
    bob.command(Command::Join(room("lobby")));
    alice
        .expect(
            |u| matches!(u, Update::Key(KeyEvent::ChangedVerified { name, .. }) if name == "bob"),
        )
        .await;
    let changed_at = w.hostile.sent_by("alice").len();

    alice
        .expect_sending_blocked("bob", "direct while blocked", "room while blocked")
        .await;
    carol.expect_message(&lobby(), "room while blocked").await;
    // bob got the body without a key for him: alice sent nothing after it
    // (the direct message never left her client), so that is the barrier.
    bob.expect(|u| matches!(u, Update::NotForYou { from, .. } if from == "alice"))
        .await;
    assert!(
        !bob.saw(shown_where(|t| t.ends_with("while blocked"))),
        "{:#?}",
        bob.seen
    );
    // No key to the substituted identity left alice's client.
    // Since the change, no key for bob left alice's client: no slot and no
    // announcement (which would have been wrapped to the relay's key).
    for frame in w.hostile.sent_by("alice").iter().skip(changed_at) {
        assert!(
            !keys_for(frame, "bob"),
            "a key for the swapped identity: {frame:?}"
        );
    }
}

/// Whether `frame` carries a key for `name`: a slot, or an announcement
/// addressed to it.
fn keys_for(frame: &ClientFrame, name: &str) -> bool {
    matches!(frame, ClientFrame::Send { route, slots, .. }
        if slots.iter().any(|s| s.to.as_str() == name)
            || route.to == Destination::User(user(name)))
}

/// Whether `frame` gives `name` a key in the lobby: a slot of a lobby
/// message, or an announcement or pair reply for the lobby. (Their direct
/// conversation is another matter: leaving a room does not end it.)
fn lobby_keys_for(frame: &ClientFrame, name: &str) -> bool {
    let ClientFrame::Send { route, slots, body } = frame else {
        return false;
    };
    let lobby_pair = match PeerBody::decode(body) {
        Ok(PeerBody::Announcement(a)) => a.context.conversation == Conversation::room("lobby"),
        Ok(PeerBody::PairReply(r)) => r.context.conversation == Conversation::room("lobby"),
        _ => false,
    };
    (route.to == Destination::Room(RoomName::lobby())
        && slots.iter().any(|s| s.to.as_str() == name))
        || (route.to == Destination::User(user(name)) && lobby_pair)
}

// 3. P7: adds a member to a room's roster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s03_added_member_is_announced_and_gets_no_key_in_a_verified_only_room() {
    let (w, mut alice, mut bob) = alice_and_bob().await;
    verify_bob(&mut alice).await;
    alice.command(Command::SetVerifiedOnly {
        room: room("lobby"),
        on: true,
    });
    alice
        .expect(|u| matches!(u, Update::VerifiedOnly { on: true, .. }))
        .await;
    // A member that is not there, with a key of the relay's choosing.
    let ghost = RelayFrame::Presence {
        room: RoomName::lobby(),
        user: user("mallory"),
        event: PresenceEvent::Joined,
        identity: Some(identity("mallory").public().to_bytes().into()),
        prekeys: Vec::new(),
    };
    w.hostile.inject("alice", ghost.clone());
    w.hostile.inject("bob", ghost);
    for peer in [&mut alice, &mut bob] {
        peer.expect_all(&[
            &|u| matches!(u, Update::Presence { name, .. } if name == "mallory"),
            &|u| matches!(u, Update::Key(KeyEvent::Pinned { name, .. }) if name == "mallory"),
        ])
        .await;
    }
    alice.send(lobby(), "verified eyes only");
    alice
        .expect(|u| matches!(u, Update::NotSentTo { names, .. } if names == &["mallory"]))
        .await;
    bob.expect_message(&lobby(), "verified eyes only").await;
    for frame in w.hostile.sent_by("alice") {
        assert!(
            !keys_for(&frame, "mallory"),
            "a key for the ghost: {frame:?}"
        );
    }
}

/// A session of `sender` in the lobby to bob (wrapped to his identity key:
/// the relay's forgeries do not need his prekey), and its announcement.
fn session_to_bob(
    sender: &Identity,
    epoch: u32,
    first_seq: u64,
) -> (SendingSession, Vec<sotto_crypto::Announcement>) {
    let mut session = SendingSession::start(
        &mut rng(),
        sender.fingerprint(),
        Conversation::room("lobby"),
        epoch,
        first_seq,
        now(),
    );
    let bob = identity("bob");
    let unsigned = session
        .add_recipients(
            &mut rng(),
            &[sotto_crypto::WrapTo::Identity(bob.public())],
            first_seq,
        )
        .unwrap();
    let announcements = sotto_crypto::sign_announcements(sender, &mut rng(), unsigned).unwrap();
    (session, announcements)
}

// 4. P2, P3: a message claiming to come from a member, with an
// announcement of the relay's own making.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_injected_message_with_its_own_announcement_is_rejected() {
    let (w, alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "genuine")).await;
    let before = rsa(&bob);

    let mallory = identity("mallory");
    let (mut session, announcements) = session_to_bob(&mallory, u32::MAX - 1, 1);
    // Signed by mallory, delivered as alice's...
    let own = announcements[0].clone();
    w.hostile.inject(
        "bob",
        deliver("alice", to_bob(), announcement_body(own.clone()), None),
    );
    // ...and claiming alice as its sender (the signature cannot match).
    let mut claimed = own;
    claimed.context.sender = identity("alice").fingerprint();
    w.hostile.inject(
        "bob",
        deliver("alice", to_bob(), announcement_body(claimed), None),
    );
    let sealed = session
        .seal(
            &mut rng(),
            &mut SequenceCounter::resume(1, NoPersistence),
            0,
            b"forged by the relay",
        )
        .unwrap();
    w.hostile.inject(
        "bob",
        deliver(
            "alice",
            lobby_route(),
            sealed.body,
            Some(sealed.slots[0].to_bytes().to_vec()),
        ),
    );
    // Both announcements are rejected; the message waits for a valid
    // announcement that never comes, and is never shown.
    for _ in 0..2 {
        bob.expect(|u| matches!(u, Update::Rejected { from, .. } if from == "alice"))
            .await;
    }
    barrier(&mut bob, Via::message(&alice, lobby(), "after the forgery")).await;
    assert!(!bob.saw(shown("forged by the relay")), "{:#?}", bob.seen);
    assert_eq!(rsa(&bob), before, "a forged announcement reached RSA");
}

// 5. P3, P5: replays a message and an old session announcement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_replays_are_dropped_and_roll_nothing_back() {
    let (w, mut alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "one")).await;
    let old: Vec<RelayFrame> = w.hostile.delivered_to("bob");
    let find = |frames: &[RelayFrame], announcement: bool| {
        frames
            .iter()
            .rev()
            .find(|f| match f {
                RelayFrame::Deliver { from, body, .. } if from.as_str() == "alice" => matches!(
                    (announcement, PeerBody::decode(body)),
                    (true, Ok(PeerBody::Announcement(_))) | (false, Ok(PeerBody::Message(_)))
                ),
                _ => false,
            })
            .cloned()
            .unwrap()
    };
    let old_message = find(&old, false);
    let old_announcement = find(&old, true);

    // A new member makes alice start a new session for the lobby.
    let mut carol = w.join("carol").await;
    bob.expect(|u| matches!(u, Update::Presence { name, .. } if name == "carol"))
        .await;
    alice
        .expect_members("lobby", &["alice", "bob", "carol"])
        .await;
    barrier(&mut bob, Via::message(&alice, lobby(), "two")).await;
    carol.expect_message(&lobby(), "two").await;
    let before = rsa(&bob);

    w.hostile.inject("bob", old_message);
    w.hostile.inject("bob", old_announcement);
    // And the next message twice in a row.
    w.hostile.rule(
        Rule::down("bob")
            .when(message_from("alice"))
            .take(1)
            .then(Act::Duplicate),
    );
    barrier(&mut bob, Via::message(&alice, lobby(), "three")).await;
    barrier(&mut bob, Via::message(&alice, lobby(), "four")).await;
    for text in ["one", "three"] {
        let times = bob.count(shown(text));
        assert_eq!(times, 1, "{text} was shown again: {:#?}", bob.seen);
    }
    // The old announcement cost no RSA and did not bring the old session
    // back: "three" opened under the new one.
    assert_eq!(rsa(&bob), before);
}

// 6. P5: reorders messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_reordered_messages_are_shown_in_the_senders_order() {
    let (w, alice, mut bob) = alice_and_bob().await;
    w.hostile.rule(
        Rule::down("bob")
            .when(message_from("alice"))
            .skip(1)
            .take(1)
            .then(Act::Hold),
    );
    alice.send(lobby(), "first");
    alice.send(lobby(), "second");
    alice.send(lobby(), "third");
    let first = bob.expect_message(&lobby(), "first").await;
    let third = bob.expect_message(&lobby(), "third").await;
    assert_eq!(w.hostile.held(), 1);
    w.hostile.release();
    let second = bob.expect_message(&lobby(), "second").await;
    assert!(second.late);
    assert!(first.position < second.position && second.position < third.position);
}

// 7. P5: drops messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_dropped_messages_are_reported_as_missing() {
    let (w, alice, mut bob) = alice_and_bob().await;
    w.hostile.rule(
        Rule::down("bob")
            .when(message_from("alice"))
            .skip(1)
            .take(2)
            .then(Act::Drop),
    );
    for text in ["m1", "m2", "m3", "m4"] {
        alice.send(lobby(), text);
    }
    bob.expect_message(&lobby(), "m1").await;
    bob.expect(|u| matches!(u, Update::Missing { from, count: 2, .. } if from == "alice"))
        .await;
    bob.expect_message(&lobby(), "m4").await;
}

// 8. P4: moves a message into another room or a direct conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_moved_messages_are_rejected() {
    let w = world().await;
    let mut alice = w.join("alice").await;
    let mut bob = w.join("bob").await;
    // bob gets no key of alice's in "other": a message moved there finds
    // nothing to reject it by but its header's conversation (with a key
    // there, the no-rollback rule would reject it anyway).
    w.hostile.rule(
        Rule::down("bob")
            .when(pair_key_in("alice", "other"))
            .take(1)
            .then(Act::Drop),
    );
    for peer in [&mut alice, &mut bob] {
        peer.command(Command::Join(room("other")));
        peer.expect(|u| matches!(u, Update::Joined { room } if room.as_str() == "other"))
            .await;
    }
    alice.expect_members("other", &["alice", "bob"]).await;
    barrier(&mut bob, Via::message(&alice, lobby(), "settled")).await;
    for to in [
        Destination::Room(room("other")),
        Destination::User(user("bob")),
    ] {
        w.hostile.rule(
            Rule::down("bob")
                .when(message_from("alice"))
                .take(1)
                .then(readdress(to)),
        );
        alice.send(lobby(), "moved elsewhere");
        bob.expect(|u| matches!(u, Update::Rejected { from, .. } if from == "alice"))
            .await;
    }
    barrier(&mut bob, Via::message(&alice, lobby(), "after the moves")).await;
    assert!(!bob.saw(shown("moved elsewhere")), "{:#?}", bob.seen);
}

// 9. P4: reflects a user's own message back as if from a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_reflected_own_message_is_rejected() {
    let w = world().await;
    // alice gets no key of bob's in the lobby: her own message reflected as
    // bob's finds nothing to reject it by but the pinned key of its sender
    // (with a key of bob's, the no-rollback rule would reject it anyway).
    w.hostile.rule(
        Rule::down("alice")
            .when(pair_key_in("bob", "lobby"))
            .take(1)
            .then(Act::Drop),
    );
    let mut bob = w.join("bob").await;
    let mut alice = w.join("alice").await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    barrier(&mut bob, Via::message(&alice, lobby(), "mine")).await;
    let (body, slot) = w
        .hostile
        .sent_by("alice")
        .into_iter()
        .rev()
        .find_map(|f| match f {
            ClientFrame::Send { body, slots, .. }
                if matches!(PeerBody::decode(&body), Ok(PeerBody::Message(_))) =>
            {
                Some((body.to_vec(), slots.first().map(|s| s.data.to_vec())))
            }
            _ => None,
        })
        .unwrap();
    w.hostile
        .inject("alice", deliver("bob", lobby_route(), body, slot));
    alice
        .expect(|u| matches!(u, Update::Rejected { from, .. } if from == "bob"))
        .await;
    barrier(
        &mut alice,
        Via::message(&bob, dm("alice"), "after the reflection"),
    )
    .await;
    assert!(!alice.saw(shown("mine")), "{:#?}", alice.seen);
}

// 10. P2, P8, P11: flips bits or truncates anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s10_tampered_messages_are_rejected_alike() {
    let (w, alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "untouched")).await;
    let before = rsa(&bob);
    type Change = fn(Vec<u8>) -> Vec<u8>;
    let body_changes: [(&str, Change); 8] = [
        ("flip the body's version", |mut b| {
            b[0] ^= 1;
            b
        }),
        ("flip a header byte", |mut b| {
            b[8] ^= 0x40;
            b
        }),
        ("flip a ciphertext byte", |mut b| {
            let last = b.len() - 1;
            b[last] ^= 1;
            b
        }),
        ("flip a middle byte", |mut b| {
            let mid = b.len() / 2;
            b[mid] ^= 0x80;
            b
        }),
        ("flip a byte of the encrypted content", |mut b| {
            // The first byte of the content (its kind), after the 12-byte
            // time and length.
            let Ok(PeerBody::Message(m)) = PeerBody::decode(&b) else {
                panic!("not a message")
            };
            let at = b.len() - m.ciphertext.len() + 12;
            b[at] ^= 1;
            b
        }),
        ("flip a letter of the text", |mut b| {
            // The text's first letter, after the content's kind and length:
            // the body cipher is malleable, so only the slot's digest of
            // the ciphertext stops a "uampered" from showing.
            let Ok(PeerBody::Message(m)) = PeerBody::decode(&b) else {
                panic!("not a message")
            };
            let at = b.len() - m.ciphertext.len() + 12 + 2;
            b[at] ^= 1;
            b
        }),
        ("truncate the body", |mut b| {
            b.pop();
            b
        }),
        ("append to the body", |mut b| {
            b.push(0);
            b
        }),
    ];
    let mut n = 0;
    for (what, change) in body_changes {
        n += 1;
        w.hostile.rule(
            Rule::down("bob")
                .when(message_from("alice"))
                .take(1)
                .then(rewrite_body(change)),
        );
        alice.send(lobby(), &format!("tampered {n}"));
        let rejected = bob
            .expect(|u| matches!(u, Update::Rejected { .. } | Update::Message(_)))
            .await;
        assert!(
            matches!(rejected, Update::Rejected { .. }),
            "{what}: {rejected:?}"
        );
    }
    type SlotChange = fn(Option<Vec<u8>>) -> Option<Vec<u8>>;
    let slot_changes: [(&str, SlotChange); 3] = [
        ("flip a slot byte", |s| {
            s.map(|mut s| {
                let last = s.len() - 1;
                s[last] ^= 1;
                s
            })
        }),
        ("truncate the slot", |s| {
            s.map(|mut s| {
                s.pop();
                s
            })
        }),
        ("flip the slot's recipient", |s| {
            s.map(|mut s| {
                s[0] ^= 1;
                s
            })
        }),
    ];
    for (what, change) in slot_changes {
        n += 1;
        w.hostile.rule(
            Rule::down("bob")
                .when(message_from("alice"))
                .take(1)
                .then(rewrite_slot(change)),
        );
        alice.send(lobby(), &format!("tampered {n}"));
        let outcome = bob
            .expect(|u| {
                matches!(
                    u,
                    Update::Rejected { .. } | Update::NotForYou { .. } | Update::Message(_)
                )
            })
            .await;
        assert!(
            !matches!(outcome, Update::Message(_)),
            "{what}: {outcome:?}"
        );
    }
    barrier(
        &mut bob,
        Via::message(&alice, lobby(), "after the tampering"),
    )
    .await;
    assert!(
        !bob.saw(shown_where(|t| t.starts_with("tampered"))),
        "{:#?}",
        bob.seen
    );
    // Same timing class: no failure reached RSA (only symmetric checks).
    assert_eq!(rsa(&bob), before);
}

// 11. P3: crafted, unsigned or wrongly signed key wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s11_crafted_key_wraps_never_reach_rsa_decryption() {
    let (w, alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "genuine")).await;
    let genuine = w
        .hostile
        .delivered_to("bob")
        .into_iter()
        .find_map(|f| match f {
            RelayFrame::Deliver { body, .. } => match PeerBody::decode(&body) {
                Ok(PeerBody::Announcement(a)) => Some(a),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    let before = rsa(&bob);
    let mut crafted = Vec::new();
    // Unsigned.
    let mut a = genuine.clone();
    a.signature = vec![0; RSA_LEN];
    a.context.epoch += 1;
    crafted.push(a);
    // A new epoch under the old signature.
    let mut a = genuine.clone();
    a.context.epoch += 2;
    crafted.push(a);
    // Another wrapped key under the old signature.
    let mut a = genuine.clone();
    a.wrapped_key[10] ^= 1;
    a.context.epoch += 3;
    crafted.push(a);
    // Wrong sizes.
    let mut a = genuine.clone();
    a.wrapped_key.truncate(RSA_LEN - 1);
    a.context.epoch += 4;
    crafted.push(a);
    // Signed by someone else (mallory), claiming alice.
    let (_, signed_by_mallory) = session_to_bob(&identity("mallory"), genuine.context.epoch + 5, 1);
    let mut a = signed_by_mallory[0].clone();
    a.context.sender = identity("alice").fingerprint();
    crafted.push(a);
    for (n, mut announcement) in crafted.into_iter().enumerate() {
        // A session bob has not seen, so that only the signature (or the
        // sizes) can stop it: a known session id is dropped as a replay.
        announcement.context.session_id = SessionId([u8::try_from(n + 1).unwrap(); 16]);
        w.hostile.inject(
            "bob",
            deliver("alice", to_bob(), announcement_body(announcement), None),
        );
        bob.expect(|u| matches!(u, Update::Rejected { from, .. } if from == "alice"))
            .await;
    }
    barrier(
        &mut bob,
        Via::message(&alice, lobby(), "after the crafted wraps"),
    )
    .await;
    assert_eq!(rsa(&bob), before, "RSA decryption was attempted");
}

// 12. P7: keeps routing to a member who left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_a_member_who_left_cannot_open_what_follows() {
    let (w, mut alice, mut bob, mut carol) = alice_bob_carol().await;
    barrier(
        &mut carol,
        Via::message(&alice, lobby(), "before carol leaves"),
    )
    .await;
    carol.command(Command::Leave(room("lobby")));
    alice
        .expect(|u| matches!(u, Update::Presence { name, .. } if name == "carol"))
        .await;
    let sent_before = w.hostile.sent_by("alice").len();
    barrier(&mut bob, Via::message(&alice, lobby(), "after carol left")).await;
    // No key left alice for carol in the lobby after she left: no slot, no
    // announcement, no pair reply.
    for frame in w.hostile.sent_by("alice").iter().skip(sent_before) {
        assert!(
            !lobby_keys_for(frame, "carol"),
            "a key for carol after she left: {frame:?}"
        );
    }
    // The relay keeps routing to carol everything alice sends: any key or
    // slot alice still made for her, else bob's slot.
    for frame in w.hostile.sent_by("alice").into_iter().skip(sent_before) {
        if let ClientFrame::Send { route, body, slots } = frame {
            let slot = slots
                .iter()
                .find(|s| s.to.as_str() == "carol")
                .or(slots.first())
                .map(|s| s.data.to_vec());
            w.hostile
                .inject("carol", deliver("alice", route.to, body.to_vec(), slot));
        }
    }
    // P1: whatever the relay does, what it carries is ciphertext.
    let marker = "plaintext marker 5b9e: the relay must never see this";
    barrier(&mut bob, Via::message(&alice, lobby(), marker)).await;
    assert!(!w.hostile.saw_bytes(marker.as_bytes()));
    assert!(w.hostile.saw_bytes(b"lobby"), "the log is empty");
    // What was injected is in carol's link before bob's message.
    barrier(&mut carol, Via::message(&bob, dm("carol"), "barrier")).await;
    // Of what alice sent, carol was shown only what came before she left.
    assert!(
        !carol.saw(|u| matches!(u, Update::Message(m)
            if m.from == "alice" && m.text != "before carol leaves")),
        "{:#?}",
        carol.seen
    );
    assert!(!carol.saw(shown("after carol left")), "{:#?}", carol.seen);
}

// 13. P4, P11: rewrites the protocol version or strips fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_other_versions_and_stripped_fields_are_refused() {
    let (w, mut alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "settled")).await;
    // The peer body's version.
    w.hostile.rule(
        Rule::down("bob")
            .when(message_from("alice"))
            .take(1)
            .then(rewrite_body(|mut b| {
                b[0] = 0;
                b
            })),
    );
    alice.send(lobby(), "old body version");
    bob.expect(|u| matches!(u, Update::Rejected { from, .. } if from == "alice"))
        .await;
    // The key slot stripped.
    w.hostile.rule(
        Rule::down("bob")
            .when(message_from("alice"))
            .take(1)
            .then(rewrite_slot(|_| None)),
    );
    alice.send(lobby(), "without a slot");
    bob.expect(|u| matches!(u, Update::NotForYou { from, .. } if from == "alice"))
        .await;
    // The frame's protocol version: the client refuses the connection's
    // frames rather than reading them another way, reconnects, goes on.
    w.hostile.rule(
        Rule::down("bob")
            .when(message_from("alice"))
            .take(1)
            .then(Act::Bytes(Box::new(|mut p| {
                p[0] = sotto_proto::PROTOCOL_VERSION + 1;
                p
            }))),
    );
    alice.send(lobby(), "another frame version");
    let lost = bob
        .expect(|u| matches!(u, Update::Connection(Connection::Reconnecting { .. })))
        .await;
    let Update::Connection(Connection::Reconnecting { reason, .. }) = &lost else {
        unreachable!()
    };
    let refused = sotto_proto::ProtoError::UnsupportedVersion(sotto_proto::PROTOCOL_VERSION + 1);
    assert!(reason.contains(&refused.to_string()), "{lost:?}");
    bob.expect(|u| matches!(u, Update::Connection(Connection::Connected { .. })))
        .await;
    bob.expect(|u| matches!(u, Update::Joined { .. })).await;
    back_in_the_lobby(&mut alice, "bob").await;
    // The frame bob refused was never acknowledged: the relay kept it and
    // delivers it again on the new connection, this time as sent.
    bob.expect_message(&lobby(), "another frame version").await;
    barrier(&mut bob, Via::message(&alice, lobby(), "still working")).await;
    for text in ["old body version", "without a slot"] {
        assert!(!bob.saw(shown(text)), "{text}: {:#?}", bob.seen);
    }
}

// 14. P7: shows two members different rosters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s14_different_rosters_are_detected() {
    let w = world().await;
    w.hostile.rule(
        Rule::down("bob")
            .when(carries_identities())
            .then(hide_member("carol")),
    );
    let mut alice = w.join("alice").await;
    let mut bob = w.join("bob").await;
    let _carol = w.join("carol").await;
    alice
        .expect_members("lobby", &["alice", "bob", "carol"])
        .await;
    alice.send(lobby(), "who is here?");
    bob.expect_all(&[
        &|u| matches!(u, Update::Message(m) if m.text == "who is here?"),
        &|u| matches!(u, Update::RosterMismatch { from, .. } if from == "alice"),
    ])
    .await;
}

// 15. P11: malformed and oversized frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s15_malformed_and_oversized_frames_are_reported_and_survived() {
    let (w, mut alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "settled")).await;
    let oversized = u32::try_from(sotto_proto::MAX_FRAME_LEN + 1)
        .unwrap()
        .to_be_bytes();
    let attacks: [(&str, Vec<u8>); 3] = [
        (
            "garbage",
            vec![0, 0, 0, 4, sotto_proto::PROTOCOL_VERSION, 0xff, 0xff, 0xff],
        ),
        ("empty", vec![0, 0, 0, 0]),
        ("oversized", oversized.to_vec()),
    ];
    for (what, wire) in attacks {
        w.hostile.inject_wire("bob", &wire);
        let lost = bob
            .expect(|u| matches!(u, Update::Connection(Connection::Reconnecting { .. })))
            .await;
        let Update::Connection(Connection::Reconnecting { reason, .. }) = lost else {
            unreachable!()
        };
        assert!(!reason.is_empty(), "{what}");
        bob.expect(|u| matches!(u, Update::Joined { .. })).await;
        back_in_the_lobby(&mut alice, "bob").await;
        barrier(
            &mut bob,
            Via::message(&alice, lobby(), &format!("still working after {what}")),
        )
        .await;
    }
    // Nobody else was affected.
    barrier(&mut alice, Via::message(&bob, lobby(), "bob is back")).await;
    assert!(
        !alice.saw(|u| matches!(u, Update::Connection(Connection::Reconnecting { .. }))),
        "{:#?}",
        alice.seen
    );
    alice.send(dm("bob"), "the end");
    bob.expect_message(&dm("alice"), "the end").await;
}

// 16. P5: replays a stored (offline) delivery after it was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s16_a_stored_delivery_replayed_after_its_ack_is_dropped() {
    let w = world().await;
    let mut alice = w.join("alice").await;
    let bob = w.join("bob").await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    let account = bob.account.clone();
    bob.quit().await;
    alice
        .expect(|u| matches!(u, Update::Presence { name, .. } if name == "bob"))
        .await;
    // bob is away: the relay stores the direct message for him (and says
    // so to alice, `Sent`, before bob comes back).
    let sent = |w: &World| {
        w.hostile
            .delivered_to("alice")
            .iter()
            .filter(|f| matches!(f, RelayFrame::Sent { .. }))
            .count()
    };
    let before = sent(&w);
    alice.send(dm("bob"), "while you were away");
    let deadline = std::time::Instant::now() + sotto_testkit::PATIENCE;
    while sent(&w) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never took it"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut bob = Peer::connect(account, &w.hostile.address).await;
    bob.expect_message(&dm("alice"), "while you were away")
        .await;
    let stored = w
        .hostile
        .delivered_to("bob")
        .into_iter()
        .rev()
        .find(|f| {
            matches!(f, RelayFrame::Deliver { delivery, body, .. }
                if *delivery != 0 && matches!(PeerBody::decode(body), Ok(PeerBody::Message(_))))
        })
        .expect("a stored delivery");
    let RelayFrame::Deliver { delivery, .. } = &stored else {
        unreachable!()
    };
    let delivery = *delivery;
    // Acknowledged once stored...
    barrier(&mut bob, Via::message(&alice, dm("bob"), "barrier")).await;
    assert!(
        w.hostile
            .sent_by("bob")
            .iter()
            .any(|f| matches!(f, ClientFrame::Ack { delivery: d } if *d == delivery)),
        "bob never acknowledged delivery {delivery}"
    );
    // ...and replayed by the relay afterwards: not shown again.
    w.hostile.inject("bob", stored);
    alice.send(dm("bob"), "after the replay");
    bob.expect_message(&dm("alice"), "after the replay").await;
    let times = bob.count(shown("while you were away"));
    assert_eq!(times, 1, "{:#?}", bob.seen);
}

// 17. P2, P11 (denial of service): forged announcements in alice's name,
// injected just before her real rotation, must not use up her allowance
// (bob still reads her) nor be blamed on her (bob is told the relay did it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s17_forged_announcements_do_not_spend_the_senders_allowance() {
    let (w, alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "genuine")).await;
    let genuine = w
        .hostile
        .delivered_to("bob")
        .into_iter()
        .find_map(|f| match f {
            RelayFrame::Deliver { body, .. } => match PeerBody::decode(&body) {
                Ok(PeerBody::Announcement(a)) => Some(a),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    // More forgeries than a sender's burst of announcements (20), each a
    // new session of a newer epoch, none signed by alice.
    let forged = 25u8;
    for n in 0..forged {
        let mut a = genuine.clone();
        a.context.session_id = SessionId([n.wrapping_add(1); 16]);
        a.context.epoch += u32::from(n) + 1;
        a.signature[n as usize] ^= 1;
        w.hostile.inject(
            "bob",
            deliver("alice", to_bob(), announcement_body(a), None),
        );
    }
    // alice starts a new session for real, announced to bob right behind
    // the forgeries: a new run of her client (sending sessions are never
    // carried across runs; a join or a leave no longer starts one).
    alice.quit().await;
    let mut alice = w.join("alice").await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    alice.send(lobby(), "after the rotation");
    // In either order: the forgeries are reported at bob's next tick.
    bob.expect_all(&[
        &|u| matches!(u, Update::Message(m) if m.text == "after the rotation"),
        &|u| {
            matches!(u, Update::Error(e)
                if e.code == ProblemCode::Forged
                    && e.message.starts_with("the relay delivered ")
                    && e.message.ends_with(" claiming to be from alice"))
        },
    ])
    .await;
    barrier(&mut bob, Via::message(&alice, lobby(), "and later")).await;
    // The one error bob was shown is the relay's doing, not alice's (not
    // "ignoring session keys from alice").
    let forgery_report = |e: &Problem| {
        e.code == ProblemCode::Forged
            && e.message.starts_with("the relay delivered ")
            && e.message.ends_with(" claiming to be from alice")
    };
    assert!(
        !bob.saw(|u| matches!(u, Update::Error(e) if !forgery_report(e))),
        "alice was blamed: {:#?}",
        bob.seen
    );
}

// 18. Availability: a presence flood towards a front end that does not keep
// up waits at the relay (the session stops reading) instead of filling the
// client's memory, and only presence notices are dropped for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s18_a_presence_flood_is_bounded_by_the_front_ends_pace() {
    let w = world().await;
    let mut alice = w.join("alice").await;
    let identity = Identity::load(
        &sotto_testkit::testdata().join("identities/bob.sotto-id"),
        b"sotto test vectors",
    )
    .unwrap();
    let account = Account::open(
        Profile::open(w.temp.path().join("bob")).unwrap(),
        Arc::new(identity),
        Some(user("bob")),
    )
    .await
    .unwrap();
    let capacity = 16;
    let mut bob = Peer::connect_with(account, &w.hostile.address, |config| {
        config.limits.updates = capacity;
    })
    .await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    barrier(&mut bob, Via::message(&alice, lobby(), "before the flood")).await;
    // bob's front end reads nothing while the relay floods it...
    let flood = 2000;
    for i in 0..flood {
        w.hostile.inject(
            "bob",
            RelayFrame::Presence {
                room: RoomName::lobby(),
                user: user(&format!("flood{i}")),
                event: PresenceEvent::Joined,
                identity: None,
                prekeys: Vec::new(),
            },
        );
    }
    // ...and the Pong to a Ping behind the flood shows that bob's session
    // has read all of it. A session writes a batch's answers before it
    // hands the batch's updates to the front end, so a second Ping, sent
    // only once the first is answered, reads in a later batch: its Pong
    // shows that the flood's last batch has been handed over too (else
    // the front end, reading below, would make room for that batch's
    // notices).
    for nonce in [0x5eed_f100d, 0x5eed_f100e] {
        w.hostile.inject("bob", RelayFrame::Ping { nonce });
        let deadline = std::time::Instant::now() + sotto_testkit::PATIENCE;
        while !w
            .hostile
            .sent_by("bob")
            .iter()
            .any(|f| matches!(f, ClientFrame::Pong { nonce: n } if *n == nonce))
        {
            assert!(std::time::Instant::now() < deadline, "bob stopped reading");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    alice.send(lobby(), "after the flood");
    // The message, and the member list, complete all the same (in either
    // order: a list the front end had no room for waits, newest only,
    // without holding up the session).
    bob.expect_all(&[
        &|u| matches!(u, Update::Message(m) if m.text == "after the flood"),
        &|u| {
            matches!(u, Update::Members { room, members }
                if *room == RoomName::lobby() && members.len() == flood + 2)
        },
    ])
    .await;
    let notices = bob.count(
        |u| matches!(u, Update::Presence { name, .. } if name.as_str().starts_with("flood")),
    );
    assert!(
        notices <= capacity,
        "{notices} presence notices were kept for a front end that read none"
    );
}

/// Peak resident memory of this process so far, in KiB (Linux).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Not a test (it asserts no timing): a measurement for docs/benchmarks.md.
/// The hostile relay floods bob with `SOTTO_FLOOD` presence events (joins
/// of distinct names, each with a key, as a relay that lets one key
/// register many names can), then alice sends one message; bob's "front
/// end" drains updates as a UI would. Prints how long the message took to
/// get through and the process's peak memory.
///
/// SOTTO_FLOOD=200000 cargo test -p sotto-tests --test hostile_relay \
///     measure_presence_flood -- --ignored --nocapture
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
#[allow(clippy::print_stdout)] // it reports what it measured
async fn measure_presence_flood() {
    use futures::StreamExt;
    let flood: usize = std::env::var("SOTTO_FLOOD")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let give_up = std::time::Duration::from_secs(
        std::env::var("SOTTO_FLOOD_WAIT")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(120),
    );
    let (w, alice, mut bob) = alice_and_bob().await;
    barrier(&mut bob, Via::message(&alice, lobby(), "before the flood")).await;
    let rss_before = peak_rss_kib();
    // SOTTO_FLOOD_KEYS=0: joins without keys (no new contacts).
    let key = (std::env::var("SOTTO_FLOOD_KEYS").as_deref() != Ok("0"))
        .then(|| bytes::Bytes::from(identity("mallory").public().to_bytes()));
    let start = std::time::Instant::now();
    for i in 0..flood {
        w.hostile.inject(
            "bob",
            RelayFrame::Presence {
                room: RoomName::lobby(),
                user: format!("flood{i}").parse().unwrap(),
                event: PresenceEvent::Joined,
                identity: key.clone(),
                prekeys: Vec::new(),
            },
        );
    }
    alice.send(lobby(), "after the flood");
    let (mut updates, mut members_lists, mut largest) = (0u64, 0u64, 0usize);
    let through = loop {
        let left = give_up.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, bob.updates.next()).await {
            Ok(Some(Update::Message(m))) if m.text == "after the flood" => {
                break Some(start.elapsed());
            }
            Ok(Some(Update::Members { members, .. })) => {
                members_lists += 1;
                largest = largest.max(members.len());
                updates += 1;
            }
            Ok(Some(_)) => updates += 1,
            Ok(None) | Err(_) => break None,
        }
    };
    println!(
        "presence flood {flood}: message through after {}; {updates} updates ({members_lists} member lists, largest {largest}); peak RSS {} MiB before the flood, {} MiB after",
        through.map_or_else(
            || format!("NOT through after {} s", give_up.as_secs()),
            |t| format!("{:.2} s", t.as_secs_f64())
        ),
        rss_before / 1024,
        peak_rss_kib() / 1024
    );
}

// 19. P13 (receipts): a delivery receipt is the recipient's own word. The
// relay withholds bob's receipts: alice's message stays "sent" for bob and
// is delivered only to carol; passing carol's receipt off as bob's is
// rejected; replaying one changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s19_receipts_cannot_be_forged_withheld_unnoticed_or_passed_off() {
    use sotto_client::session::{Delivery, MessageId};
    let (w, mut alice, mut bob, mut carol) = alice_bob_carol().await;
    let delivered = |alice: &Peer, id: MessageId| -> Vec<String> {
        alice
            .seen
            .iter()
            .filter_map(|u| match u {
                Update::Delivery {
                    id: i,
                    delivery: Delivery { delivered, .. },
                    ..
                } if *i == id => Some(delivered.iter().map(|n| n.to_string()).collect()),
                _ => None,
            })
            .next_back()
            .unwrap_or_default()
    };
    // Honest: both receipts come.
    alice.send(lobby(), "to both");
    bob.expect_message(&lobby(), "to both").await;
    carol.expect_message(&lobby(), "to both").await;
    let first = sent_id(&mut alice, "to both").await;
    while delivered(&alice, first).len() < 2 {
        alice.expect(|u| matches!(u, Update::Delivery { .. })).await;
    }

    // Bob's receipts (direct messages from bob to alice: bob sends her
    // nothing else) are dropped on their way down to alice.
    let from_bob_to_alice = |frame: &hostile::Frame| {
        matches!(frame, hostile::Frame::Relay(RelayFrame::Deliver { from, to: Destination::User(_), body, .. })
            if from.as_str() == "bob" && matches!(PeerBody::decode(body), Ok(PeerBody::Message(_))))
    };
    w.hostile
        .rule(Rule::down("alice").when(from_bob_to_alice).then(Act::Drop));
    alice.send(lobby(), "to both again");
    bob.expect_message(&lobby(), "to both again").await;
    carol.expect_message(&lobby(), "to both again").await;
    let second = sent_id(&mut alice, "to both again").await;
    while delivered(&alice, second).is_empty() {
        alice.expect(|u| matches!(u, Update::Delivery { .. })).await;
    }
    assert_eq!(delivered(&alice, second), ["carol"]);

    // Carol's next receipt is passed off as bob's: rejected, bob is not
    // marked; the next one of carol's, replayed, changes nothing.
    let from_carol_to_alice = |frame: &hostile::Frame| {
        matches!(frame, hostile::Frame::Relay(RelayFrame::Deliver { from, to: Destination::User(_), body, .. })
            if from.as_str() == "carol" && matches!(PeerBody::decode(body), Ok(PeerBody::Message(_))))
    };
    w.hostile.rule(
        Rule::down("alice")
            .when(from_carol_to_alice)
            .take(1)
            .then(Act::Rewrite(Box::new(|frame| match frame {
                hostile::Frame::Relay(RelayFrame::Deliver {
                    delivery,
                    to,
                    body,
                    slot,
                    ..
                }) => {
                    vec![hostile::Frame::Relay(RelayFrame::Deliver {
                        delivery,
                        from: user("bob"),
                        to,
                        body,
                        slot,
                    })]
                }
                other => vec![other],
            }))),
    );
    alice.send(lobby(), "third");
    bob.expect_message(&lobby(), "third").await;
    carol.expect_message(&lobby(), "third").await;
    alice
        .expect(|u| matches!(u, Update::Rejected { from, .. } if from == "bob"))
        .await;
    let third = sent_id(&mut alice, "third").await;
    w.hostile.rule(
        Rule::down("alice")
            .when(from_carol_to_alice)
            .take(1)
            .then(Act::Duplicate),
    );
    alice.send(lobby(), "fourth");
    carol.expect_message(&lobby(), "fourth").await;
    let fourth = sent_id(&mut alice, "fourth").await;
    while delivered(&alice, fourth).is_empty() {
        alice.expect(|u| matches!(u, Update::Delivery { .. })).await;
    }
    barrier(&mut alice, Via::message(&carol, lobby(), "carol is done")).await;
    assert_eq!(delivered(&alice, first), ["bob", "carol"]);
    assert_eq!(delivered(&alice, second), ["carol"]);
    assert!(delivered(&alice, third).is_empty(), "{:#?}", alice.seen);
    assert_eq!(delivered(&alice, fourth), ["carol"]);
}

/// The id of the message `text` that `peer` sent (waiting for it to be
/// sealed if need be).
async fn sent_id(peer: &mut Peer, text: &str) -> sotto_client::session::MessageId {
    let mine = |u: &Update| matches!(u, Update::Message(m) if m.outgoing && m.text == text);
    let found = match peer.seen.iter().find(|u| mine(u)) {
        Some(update) => update.clone(),
        None => peer.expect(mine).await,
    };
    let Update::Message(message) = found else {
        unreachable!()
    };
    message.id()
}

// 20. P5 (withheld tail): withholds the end of a direct conversation and of
// a room conversation (the last two messages of each) while everything
// else flows. Nothing follows them, yet bob is told two messages are
// missing in each, within a bound (alice's heartbeat, here after 1 s),
// and alice sees them not delivered to bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s20_a_withheld_tail_is_reported_to_both_within_a_bound() {
    let w = world().await;
    let fast = |config: &mut sotto_client::session::Config| {
        config.limits.heartbeat = std::time::Duration::from_secs(1);
    };
    let mut alice = w.join_with("alice", fast).await;
    let mut bob = w.join_with("bob", fast).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    for chat in [dm("bob"), lobby()] {
        let arrives_in = if chat == lobby() {
            lobby()
        } else {
            dm("alice")
        };
        barrier(
            &mut bob,
            Via::message(&alice, chat.clone(), &format!("settled in {chat}")),
        )
        .await;
        // The next two messages from alice to bob in this chat never come.
        let room = chat == lobby();
        w.hostile.rule(
            Rule::down("bob")
                .when(move |frame| {
                    matches!(frame, hostile::Frame::Relay(RelayFrame::Deliver { from, to, body, .. })
                        if from.as_str() == "alice"
                            && matches!(to, Destination::Room(_)) == room
                            && matches!(PeerBody::decode(body), Ok(PeerBody::Message(_))))
                })
                .take(2)
                .then(Act::Drop),
        );
        for text in ["tail 1", "tail 2"] {
            alice.send(chat.clone(), &format!("{text} in {chat}"));
        }
        bob.expect(|u| {
            matches!(u, Update::Missing { chat: c, from, count: 2 } if *c == arrives_in && from == "alice")
        })
        .await;
        for text in ["tail 1", "tail 2"] {
            assert!(
                !bob.saw(shown(&format!("{text} in {chat}"))),
                "{:#?}",
                bob.seen
            );
            let id = sent_id(&mut alice, &format!("{text} in {chat}")).await;
            let delivered = alice.seen.iter().any(|u| {
                matches!(u, Update::Delivery { chat: c, id: i, delivery } if *c == chat && *i == id && !delivery.delivered.is_empty())
            });
            assert!(
                !delivered,
                "{text} in {chat} shows delivered: {:#?}",
                alice.seen
            );
        }
    }
}

// 21. Availability (a lost key): drops alice's announcement of her new
// session in a room to bob. Bob holds her message, asks her for the key
// (an authenticated key request), she sends the announcement again, and
// bob reads it within a bound. A relay that drops the requests too leaves
// bob told the messages could not be opened, and alice sees them not
// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_a_dropped_announcement_is_asked_for_again() {
    let w = world().await;
    let patient = |config: &mut sotto_client::session::Config| {
        config.limits.key_request = std::time::Duration::from_secs(1);
        config.limits.held_for = std::time::Duration::from_secs(4);
    };
    let mut alice = w.join_with("alice", patient).await;
    let mut bob = w.join_with("bob", patient).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    // Bob's key request for alice travels in their direct conversation:
    // set it up first (announcements both ways).
    barrier(&mut alice, Via::message(&bob, dm("alice"), "hello alice")).await;
    barrier(&mut bob, Via::message(&alice, dm("bob"), "hello bob")).await;
    for (room_name, drop_requests) in [("r2", false), ("r3", true)] {
        // alice's key for bob in the room goes as soon as he joins (a pair
        // reply to his announcement): the rule that drops it comes first.
        w.hostile.rule(
            Rule::down("bob")
                .when(pair_key_in("alice", room_name))
                .take(1)
                .then(Act::Drop),
        );
        for peer in [&mut alice, &mut bob] {
            peer.command(Command::Join(room(room_name)));
            peer.expect(|u| matches!(u, Update::Joined { room } if room.as_str() == room_name))
                .await;
        }
        alice.expect_members(room_name, &["alice", "bob"]).await;
        if drop_requests {
            // Every message bob sends alice from now on: his requests.
            w.hostile.rule(
                Rule::down("alice")
                    .when(|frame| {
                        matches!(frame, hostile::Frame::Relay(RelayFrame::Deliver { from, to: Destination::User(_), body, .. })
                            if from.as_str() == "bob" && matches!(PeerBody::decode(body), Ok(PeerBody::Message(_))))
                    })
                    .then(Act::Drop),
            );
        }
        let text = format!("after a lost key in {room_name}");
        let chat = sotto_client::session::Chat::Room(room(room_name));
        alice.send(chat.clone(), &text);
        if drop_requests {
            // Given up after `held_for`, with a notice naming alice.
            bob.expect(|u| matches!(u, Update::Rejected { from, .. } if from == "alice"))
                .await;
            assert!(!bob.saw(shown(&text)), "{:#?}", bob.seen);
            let id = sent_id(&mut alice, &text).await;
            let delivered = alice.seen.iter().any(|u| {
                matches!(u, Update::Delivery { chat: c, id: i, delivery } if *c == chat && *i == id && !delivery.delivered.is_empty())
            });
            assert!(!delivered, "{:#?}", alice.seen);
        } else {
            bob.expect_message(&chat, &text).await;
        }
    }
}

// 22. Forward secrecy (prekeys, protocol.md 12.6): hands out a prekey for
// bob that another key signed, then bob's genuine newest prekey, then an
// older one of his again (a replay, which would make alice wrap to a key
// whose secret bob may have deleted, or one the relay kept a copy of).
// Both the substitute and the replay are refused and blamed on the relay;
// the genuine one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_a_substituted_or_replayed_prekey_is_refused_and_blamed_on_the_relay() {
    let (w, mut alice, mut bob) = alice_and_bob().await;
    let made = |signer: &Identity, key: usize, created_at: u64| {
        let sotto_client::session::PrekeySource::Pool(keys) = sotto_testkit::prekey_pool() else {
            panic!("the test pool is a pool")
        };
        let key = sotto_crypto::PrekeyKey::from_pkcs8_der(&keys[key]).unwrap();
        let (signed, _) = signer
            .make_prekey_with(&mut rng(), key, created_at)
            .unwrap();
        bytes::Bytes::from(signed.into_bytes())
    };
    // Bob's client publishes a prekey of its own after registering (made
    // on its blocking pool, from the test pool): wait until it has.
    let bobs_own = tokio::time::timeout(sotto_testkit::PATIENCE, async {
        loop {
            let published = w.hostile.sent_by("bob").into_iter().find_map(|f| match f {
                ClientFrame::PublishPrekey { prekey } => Some(prekey),
                _ => None,
            });
            if let Some(prekey) = published {
                return prekey;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("bob publishes a prekey");
    sotto_crypto::SignedPrekey::verify(&bobs_own, identity("bob").public(), now()).unwrap();
    // Newer than anything bob's own client makes meanwhile (it is within
    // the clock skew a prekey may be ahead).
    let newest = made(&identity("bob"), 5, now() + 60);
    let older = made(&identity("bob"), 6, now() - 60 * 60);
    let forged = made(&identity("mallory"), 7, now() + 120);
    // The two refusals, told apart by what the user is told.
    let forged_message =
        "the relay handed out a prekey for bob that bob's pinned key did not sign: refused";
    let replayed_message =
        "the relay handed out only older prekeys for bob than one already taken: refused";
    let refusal = |text: &'static str| {
        move |u: &Update| {
            matches!(u, Update::Error(Problem { code: ProblemCode::ForgedPrekey, message, .. })
                if message == text)
        }
    };
    let rejoin = async |bob: &mut Peer| {
        bob.command(Command::Leave(room("lobby")));
        bob.expect(|u| matches!(u, Update::Left { .. })).await;
        bob.command(Command::Join(room("lobby")));
    };
    for (step, prekeys) in [
        vec![forged],
        vec![newest.clone(), older.clone()],
        vec![older],
    ]
    .into_iter()
    .enumerate()
    {
        w.hostile.rule(
            Rule::down("alice")
                .when(hostile::joins_of("bob"))
                .take(1)
                .then(hostile::substitute_prekeys("bob", prekeys)),
        );
        rejoin(&mut bob).await;
        alice
            .expect(|u| matches!(u, Update::Presence { room: r, change: PresenceChange::Joined, name, .. } if *r == RoomName::lobby() && name == "bob"))
            .await;
        match step {
            0 => drop(alice.expect(refusal(forged_message)).await),
            2 => drop(alice.expect(refusal(replayed_message)).await),
            _ => {}
        }
    }
    // The genuine newest was taken: the replay was refused as older than
    // it (had it been refused, the older one would have been taken
    // silently), and only the substitute was called forged.
    let forged = alice
        .seen
        .iter()
        .filter(|u| refusal(forged_message)(u))
        .count();
    assert_eq!(forged, 1, "{:#?}", alice.seen);
    // What the relay itself handed alice with bob's joins was bob's own
    // published prekey.
    let handed = w.hostile.delivered_to("alice").into_iter().any(|f| {
        matches!(&f, RelayFrame::Presence { user: u, event: PresenceEvent::Joined, prekeys, .. }
            if *u == user("bob") && prekeys.contains(&bobs_own))
    });
    assert!(handed, "{:#?}", w.hostile.delivered_to("alice"));
}

// 23. Files (protocol.md 9.13): the relay holds a file's chunks, so it can
// serve them swapped, out of order, cut short or twice. Each attack makes
// bob's save fail its integrity check with the one message for it (P11),
// and leaves nothing of the file on disk; with the attacks gone, the same
// file saves byte for byte, so it was the attack and nothing else that
// was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s23_swapped_reordered_truncated_or_replayed_chunks_are_refused() {
    use bytes::Bytes;
    use hostile::Frame;
    use sotto_client::session::TransferState;
    use std::sync::Mutex;

    let (w, alice, mut bob) = alice_and_bob().await;
    // Three full chunks and a short one.
    let contents: Vec<u8> = (0..3 * 65_536 + 100).map(|i| (i % 251) as u8).collect();
    let dir = w.temp.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.pdf");
    std::fs::write(&path, &contents).unwrap();
    alice.command(Command::SendFile {
        chat: lobby(),
        path,
    });
    let message = bob.expect_file(&lobby(), None).await;
    let chunk = |index: u32| move |frame: &Frame| matches!(frame, Frame::Relay(RelayFrame::Chunk { index: i, .. }) if *i == index);
    let either = |a: u32, b: u32| move |frame: &Frame| matches!(frame, Frame::Relay(RelayFrame::Chunk { index: i, .. }) if *i == a || *i == b);
    // Chunk 1's bytes and chunk 2's, each answered with the other's.
    let swapped = || {
        let first: Arc<Mutex<Option<Bytes>>> = Arc::default();
        Rule::down("bob")
            .when(either(1, 2))
            .take(2)
            .then(Act::Rewrite(Box::new(move |frame| {
                let Frame::Relay(RelayFrame::Chunk { blob, index, data }) = frame else {
                    return vec![frame];
                };
                let mut first = first.lock().unwrap();
                match first.take() {
                    None => {
                        *first = Some(data);
                        Vec::new()
                    }
                    Some(one) => vec![
                        Frame::Relay(RelayFrame::Chunk {
                            blob,
                            index: index - 1,
                            data,
                        }),
                        Frame::Relay(RelayFrame::Chunk {
                            blob,
                            index,
                            data: one,
                        }),
                    ],
                }
            })))
    };
    // Chunk 2 before chunk 1, each as itself.
    let reordered = || {
        let held: Arc<Mutex<Option<Frame>>> = Arc::default();
        Rule::down("bob")
            .when(either(1, 2))
            .take(2)
            .then(Act::Rewrite(Box::new(move |frame| {
                let mut held = held.lock().unwrap();
                match held.take() {
                    None => {
                        *held = Some(frame);
                        Vec::new()
                    }
                    Some(earlier) => vec![frame, earlier],
                }
            })))
    };
    // The last chunk one byte short.
    // Every chunk 3 while the rule holds: a stale chunk 3 of the save
    // before (still in flight when it failed) must not use the attack up.
    let truncated = || {
        Rule::down("bob")
            .when(chunk(3))
            .then(Act::Rewrite(Box::new(|frame| {
                let Frame::Relay(RelayFrame::Chunk { blob, index, data }) = frame else {
                    return vec![frame];
                };
                let data = data.slice(..data.len() - 1);
                vec![Frame::Relay(RelayFrame::Chunk { blob, index, data })]
            })))
    };
    // Chunk 0 twice: the copy comes where chunk 1 should.
    let replayed = || {
        Rule::down("bob")
            .when(chunk(0))
            .take(1)
            .then(Act::Duplicate)
    };
    let attacks: [(&str, Rule); 4] = [
        ("swapped", swapped()),
        ("reordered", reordered()),
        ("truncated", truncated()),
        ("replayed", replayed()),
    ];
    let saved = w.temp.path().join("saved");
    std::fs::create_dir_all(&saved).unwrap();
    let mut failures = Vec::new();
    for (attack, rule) in attacks {
        w.hostile.rule(rule);
        let transfer = bob.save_file(&message, &saved.join(attack)).await;
        w.hostile.clear();
        let TransferState::Failed(problem) = transfer.state else {
            panic!("{attack}: {transfer:?}");
        };
        assert_eq!(
            problem.code,
            ProblemCode::FileDamaged,
            "{attack}: {problem:?}"
        );
        failures.push(problem.message);
        // Nothing of it on disk, not even a temporary file.
        let left: Vec<_> = std::fs::read_dir(&saved).unwrap().collect();
        assert!(left.is_empty(), "{attack}: {left:?}");
    }
    // One message, whichever check failed.
    failures.dedup();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("integrity check"), "{failures:?}");
    let transfer = bob.save_file(&message, &saved.join("genuine")).await;
    assert!(
        matches!(transfer.state, TransferState::Done { .. }),
        "{transfer:?}"
    );
    assert_eq!(std::fs::read(saved.join("genuine")).unwrap(), contents);
}

// 24. Files again, as a relay that fails now and then: it answers one of
// alice's chunks `Internal` (though it stored it), and one of the chunks
// bob fetches `Internal` too. Both clients try again a few seconds later,
// from what the relay holds and from the chunk that failed: the answers
// still coming for what was in flight are not taken for new ones, and
// the file arrives byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s24_chunks_the_relay_fails_once_are_tried_again() {
    use hostile::Frame;
    use sotto_client::session::{Direction, TransferState};
    use sotto_proto::ErrorCode;

    let (w, mut alice, mut bob) = alice_and_bob().await;
    let failed = |index: u32| {
        Act::Rewrite(Box::new(move |frame| match frame {
            Frame::Relay(RelayFrame::ChunkStored { blob, .. } | RelayFrame::Chunk { blob, .. }) => {
                vec![Frame::Relay(RelayFrame::BlobRefused {
                    blob,
                    index,
                    code: ErrorCode::Internal,
                    message: "the relay could not store the chunk; try again".into(),
                })]
            }
            other => vec![other],
        }))
    };
    let stored = |index: u32| move |frame: &Frame| matches!(frame, Frame::Relay(RelayFrame::ChunkStored { index: i, .. }) if *i == index);
    let fetched = |index: u32| move |frame: &Frame| matches!(frame, Frame::Relay(RelayFrame::Chunk { index: i, .. }) if *i == index);
    w.hostile
        .rule(Rule::down("alice").when(stored(2)).take(1).then(failed(2)));
    w.hostile
        .rule(Rule::down("bob").when(fetched(1)).take(1).then(failed(1)));
    let contents: Vec<u8> = (0..7 * 65_536 + 9).map(|i| (i % 239) as u8).collect();
    let dir = w.temp.path().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("slides.pdf");
    std::fs::write(&path, &contents).unwrap();
    alice.command(Command::SendFile {
        chat: lobby(),
        path,
    });
    let sent = alice.transfer_ended(None, Direction::Upload).await;
    assert!(matches!(sent.state, TransferState::Done { .. }), "{sent:?}");
    let message = bob.expect_file(&lobby(), None).await;
    let to = w.temp.path().join("slides.pdf");
    let saved = bob.save_file(&message, &to).await;
    assert!(
        matches!(saved.state, TransferState::Done { .. }),
        "{saved:?}"
    );
    assert_eq!(std::fs::read(&to).unwrap(), contents);
}
