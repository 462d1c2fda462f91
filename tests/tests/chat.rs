//! End-to-end chat through a real relay with real clients: the seed's
//! features and the properties the client enforces (P5-P7 and P9 of docs/threat-model.md).
//!
//! One file (about 750 lines) on purpose: each scenario is one test over the
//! shared harness (`sotto_testkit`'s relay and peers), and another test
//! binary would link the relay and the client library again, which costs
//! link time and disk on this 2-core machine.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

use std::time::Duration;

use sotto_client::backoff::Backoff;
use sotto_client::contacts::KeyEvent;
use sotto_client::session::{Command, Connection, PresenceChange, ProblemCode, TrustLevel, Update};
use sotto_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_chat_in_a_room() {
    // Everyone sees everyone in the lobby before talking.
    let (_bed, mut alice, mut bob, mut carol) = alice_bob_carol().await;

    alice.send(lobby(), "hello from alice");
    bob.send(lobby(), "hello from bob");
    carol.send(lobby(), "hello from carol");

    for (peer, others) in [
        (&mut alice, ["bob", "carol"]),
        (&mut bob, ["alice", "carol"]),
        (&mut carol, ["alice", "bob"]),
    ] {
        let texts = others.map(|other| format!("hello from {other}"));
        let messages = peer.expect_texts(&lobby(), &[&texts[0], &texts[1]]).await;
        for (other, message) in others.iter().zip(messages) {
            let other = *other;
            assert_eq!(message.from, other);
            assert_eq!(message.fingerprint, identity(other).fingerprint());
            assert_eq!(message.trust, TrustLevel::Unverified);
        }
    }
    // Nothing failed to open along the way: once each has a later message
    // of each other sender, nothing of theirs is still to come.
    barrier(
        &mut bob,
        Via::message(&alice, lobby(), "alice's last, for bob"),
    )
    .await;
    barrier(
        &mut carol,
        Via::message(&alice, lobby(), "alice's last, for carol"),
    )
    .await;
    barrier(
        &mut alice,
        Via::message(&bob, lobby(), "bob's last, for alice"),
    )
    .await;
    barrier(
        &mut carol,
        Via::message(&bob, lobby(), "bob's last, for carol"),
    )
    .await;
    barrier(
        &mut alice,
        Via::message(&carol, lobby(), "carol's last, for alice"),
    )
    .await;
    barrier(
        &mut bob,
        Via::message(&carol, lobby(), "carol's last, for bob"),
    )
    .await;
    for peer in [&alice, &bob, &carol] {
        assert!(!peer.saw(rejected), "{}: {:#?}", peer.name, peer.seen);
        assert!(!peer.saw(missing), "{}: {:#?}", peer.name, peer.seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_reaches_only_its_recipient() {
    let (_bed, mut alice, mut bob, mut carol) = alice_bob_carol().await;

    alice.send(dm("bob"), "for bob only");
    let received = bob.expect_message(&dm("alice"), "for bob only").await;
    assert_eq!(received.from, "alice");

    // A later room message from alice reaches carol after anything alice
    // sent before it (the relay keeps each sender's order), so once carol
    // has it, she would have had the direct message too.
    barrier(&mut carol, Via::message(&alice, lobby(), "sync")).await;
    assert!(!carol.saw(shown("for bob only")), "{:#?}", carol.seen);
    assert!(!carol.saw(rejected), "{:#?}", carol.seen);
    assert!(
        !carol.saw(|u| matches!(u, Update::NotForYou { .. })),
        "{:#?}",
        carol.seen
    );

    // And bob answers in the same conversation.
    bob.send(dm("alice"), "got it");
    alice.expect_message(&dm("bob"), "got it").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_list_and_join_leave_notices_follow_the_seed_chat() {
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&temp.path().join("relay"), 0);
    let mut alice = Peer::join(temp.path(), "alice", &relay.address).await;
    let mut bob = Peer::join(temp.path(), "bob", &relay.address).await;

    // Joining: a notice, and the member list grows.
    alice
        .expect(|u| {
            matches!(u, Update::Presence { name, change: PresenceChange::Joined, .. } if name == "bob")
        })
        .await;
    let members = alice.expect(|u| matches!(u, Update::Members { .. })).await;
    let Update::Members { members, .. } = members else {
        unreachable!()
    };
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alice", "bob"]);

    // /users lists who is connected and where.
    bob.command(Command::Join(room("side")));
    bob.expect(|u| matches!(u, Update::Joined { room } if room.as_str() == "side"))
        .await;
    alice.command(Command::ListUsers);
    let users = alice.expect(|u| matches!(u, Update::Users(_))).await;
    let Update::Users(users) = users else {
        unreachable!()
    };
    let listed: Vec<(&str, Vec<&str>)> = users
        .iter()
        .map(|u| {
            (
                u.name.as_str(),
                u.rooms.iter().map(sotto_proto::RoomName::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [("alice", vec!["lobby"]), ("bob", vec!["lobby", "side"])]
    );
    alice.command(Command::ListRooms);
    let rooms = alice.expect(|u| matches!(u, Update::Rooms(_))).await;
    let Update::Rooms(rooms) = rooms else {
        unreachable!()
    };
    let rooms: Vec<(&str, u32)> = rooms.iter().map(|r| (r.name.as_str(), r.members)).collect();
    assert_eq!(rooms, [("lobby", 2), ("side", 1)]);

    // Leaving a room and leaving altogether are both announced.
    bob.command(Command::Leave(room("lobby")));
    bob.expect(|u| matches!(u, Update::Left { room } if room.as_str() == "lobby"))
        .await;
    alice
        .expect(|u| {
            matches!(u, Update::Presence { name, change: PresenceChange::Left, .. } if name == "bob")
        })
        .await;
    bob.command(Command::Join(room("lobby")));
    alice
        .expect(|u| {
            matches!(u, Update::Presence { name, change: PresenceChange::Joined, .. } if name == "bob")
        })
        .await;
    bob.quit().await;
    alice
        .expect(|u| {
            matches!(u, Update::Presence { name, change: PresenceChange::Disconnected, .. } if name == "bob")
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_direct_messages_arrive_once_on_reconnect_and_stay_in_history() {
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&temp.path().join("relay"), 0);
    let bob_dir = temp.path().join("bob");
    // Bob registers once (so the relay knows his key), then goes away.
    let bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &relay.address).await;
    bob.quit().await;

    let mut alice = Peer::join(temp.path(), "alice", &relay.address).await;
    alice.send(dm("bob"), "while you were away 1");
    alice.send(dm("bob"), "while you were away 2");
    // Both sealed and handed to the relay (stored for bob).
    for text in ["while you were away 1", "while you were away 2"] {
        alice
            .expect(|u| matches!(u, Update::Message(m) if m.outgoing && m.text == text))
            .await;
    }
    // Any refusal of the relay's comes before its answer to a later frame.
    barrier(&mut alice, Via::Relay).await;
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );

    let mut bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &relay.address).await;
    let first = bob
        .expect_message(&dm("alice"), "while you were away 1")
        .await;
    let second = bob
        .expect_message(&dm("alice"), "while you were away 2")
        .await;
    assert!(first.seq < second.seq);
    bob.quit().await;

    // Acknowledged after being stored: the next run shows them from the
    // history and the relay does not deliver them again.
    let mut bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &relay.address).await;
    assert!(
        bob.saw(|u| matches!(u, Update::History { chat, messages }
            if *chat == dm("alice")
                && messages.iter().map(|m| m.text.as_str())
                    .eq(["while you were away 1", "while you were away 2"]))),
        "{:#?}",
        bob.seen
    );
    // What the relay still had for bob comes before anything live.
    barrier(&mut bob, Via::message(&alice, dm("bob"), "now live")).await;
    let redelivered =
        bob.count(|u| matches!(u, Update::Message(m) if m.text.starts_with("while you were away")));
    assert_eq!(redelivered, 0, "{:#?}", bob.seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_the_relay_is_killed_and_restarted() {
    let (mut bed, mut alice, mut bob) = alice_and_bob().await;
    alice.send(lobby(), "before");
    bob.expect_message(&lobby(), "before").await;

    bed.relay.kill().await;
    for peer in [&mut alice, &mut bob] {
        peer.expect(|u| matches!(u, Update::Connection(Connection::Reconnecting { .. })))
            .await;
    }
    // Typed while the relay is down: queued, sent once connected again.
    alice.send(dm("bob"), "typed while offline");
    bed.relay.restart();
    for peer in [&mut alice, &mut bob] {
        peer.expect_connected().await;
    }
    // The queued message arrives, and both rejoined the lobby (in either
    // order, so wait for both in any order).
    bob.expect_all(&[
        &|u| matches!(u, Update::Message(m) if m.text == "typed while offline" && m.chat == dm("alice")),
        &|u| {
            matches!(u, Update::Members { members, .. }
                if members.iter().map(|m| m.name.as_str()).eq(["alice", "bob"]))
        },
    ])
    .await;
    bob.send(lobby(), "after");
    alice.expect_message(&lobby(), "after").await;
}

/// `Command::Reconnect` ends the wait between attempts: with a delay of an
/// hour, the client is back as soon as it is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_tries_again_at_once_instead_of_waiting_out_the_delay() {
    let mut bed = Testbed::start();
    let hour = Duration::from_secs(3600);
    let account = account(&bed.temp.path().join("alice"), "alice", "alice").await;
    let mut alice = Peer::connect_with(account, &bed.relay.address, |config| {
        config.limits.reconnect = Backoff::new(hour, hour, hour);
    })
    .await;
    let mut bob = bed.join("bob").await;
    alice.expect(presence("bob", PresenceChange::Joined)).await;
    // Nothing to retry while connected.
    alice.command(Command::Reconnect);

    bed.relay.kill().await;
    let waiting = alice
        .expect(|u| matches!(u, Update::Connection(Connection::Reconnecting { .. })))
        .await;
    let Update::Connection(Connection::Reconnecting { after, .. }) = waiting else {
        unreachable!()
    };
    assert!(after >= hour / 2, "{after:?}");
    alice.send(dm("bob"), "typed while offline");
    bed.relay.restart();
    alice.command(Command::Reconnect);
    alice.expect_connected().await;
    bob.expect_message(&dm("alice"), "typed while offline")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_a_verified_peer_whose_key_changed_is_blocked_until_trusted_again() {
    let temp = tempfile::tempdir().unwrap();
    // On the first relay, "bob" is bob's key; alice verifies it.
    let first = Relay::start(&temp.path().join("relay-1"), 0);
    let alice_account = account(&temp.path().join("alice"), "alice", "alice").await;
    let mut alice = Peer::connect(alice_account.clone(), &first.address).await;
    let mut bob = Peer::join(temp.path(), "bob", &first.address).await;
    alice
        .expect(|u| matches!(u, Update::Presence { name, .. } if name == "bob"))
        .await;
    alice.command(Command::SafetyNumber(user("bob")));
    let number = alice
        .expect(|u| matches!(u, Update::SafetyNumber { .. }))
        .await;
    let Update::SafetyNumber { safety_number, .. } = number else {
        unreachable!()
    };
    // Both sides compute the same number.
    assert_eq!(
        safety_number,
        identity("bob")
            .public()
            .safety_number(identity("alice").public())
    );
    // A wrong number verifies nothing.
    alice.command(Command::Verify {
        name: user("bob"),
        safety_number: "12345".repeat(12),
    });
    alice
        .expect(|u| matches!(u, Update::Error(e) if e.code == ProblemCode::WrongSafetyNumber))
        .await;
    alice.command(Command::Verify {
        name: user("bob"),
        safety_number: safety_number.digits().to_owned(),
    });
    alice
        .expect(
            |u| matches!(u, Update::Trust { name, trust: TrustLevel::Verified } if name == "bob"),
        )
        .await;
    alice.send(dm("bob"), "verified hello");
    bob.expect_message(&dm("alice"), "verified hello").await;
    alice.quit().await;
    bob.quit().await;

    // On a second relay someone else holds the name "bob" (mallory's key).
    let second = Relay::start(&temp.path().join("relay-2"), 0);
    let mut mallory = Peer::connect(
        account(&temp.path().join("mallory-as-bob"), "bob", "mallory").await,
        &second.address,
    )
    .await;
    let mut alice = Peer::connect(alice_account.clone(), &second.address).await;
    let event = alice
        .expect(|u| matches!(u, Update::Key(KeyEvent::ChangedVerified { .. })))
        .await;
    let Update::Key(KeyEvent::ChangedVerified {
        name,
        pinned,
        offered,
    }) = event
    else {
        unreachable!()
    };
    assert_eq!(name, "bob");
    assert_eq!(pinned, identity("bob").fingerprint());
    assert_eq!(offered, identity("mallory").fingerprint());

    // Nothing is encrypted to the new key: not in a direct message, nor in
    // a room.
    alice
        .expect_sending_blocked(
            "bob",
            "must not reach the new key",
            "room message while blocked",
        )
        .await;
    // Undecided, the change is reported again by the next session, so a
    // new UI blocks on it as well (nothing is decided by restarting).
    alice.quit().await;
    let mut alice = Peer::connect(alice_account, &second.address).await;
    alice
        .expect(|u| {
            matches!(u, Update::Key(KeyEvent::ChangedVerified { name, offered, .. })
                if name == "bob" && *offered == identity("mallory").fingerprint())
        })
        .await;
    // What the new key sends is held, not shown, until the user decides.
    mallory.send(lobby(), "I am bob, trust me");
    mallory
        .expect(|u| matches!(u, Update::Message(m) if m.outgoing))
        .await;

    // The explicit decision unblocks sending, to the new key...
    alice.command(Command::AcceptKey(user("bob")));
    alice
        .expect(
            |u| matches!(u, Update::Trust { name, trust: TrustLevel::Unverified } if name == "bob"),
        )
        .await;
    // ...and only then is the held message opened.
    let held = alice.expect_message(&lobby(), "I am bob, trust me").await;
    assert_eq!(held.fingerprint, identity("mallory").fingerprint());
    let accepted = alice
        .seen_at(
            |u| matches!(u, Update::Trust { name, trust: TrustLevel::Unverified } if name == "bob"),
        )
        .expect("the acceptance");
    assert!(
        alice.seen_at(shown("I am bob, trust me")) > Some(accepted),
        "shown before the user accepted the key: {:#?}",
        alice.seen
    );
    barrier(
        &mut mallory,
        Via::message(&alice, dm("bob"), "after accepting"),
    )
    .await;
    assert!(
        !mallory.saw(shown("must not reach the new key")),
        "{:#?}",
        mallory.seen
    );
    assert!(
        !mallory.saw(shown("room message while blocked")),
        "{:#?}",
        mallory.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_sequence_numbers_survive_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&temp.path().join("relay"), 0);
    let alice_dir = temp.path().join("alice");
    let mut bob = Peer::join(temp.path(), "bob", &relay.address).await;
    let alice = Peer::connect(account(&alice_dir, "alice", "alice").await, &relay.address).await;
    alice.send(lobby(), "one");
    alice.send(lobby(), "two");
    let two = bob.expect_message(&lobby(), "two").await;
    alice.quit().await;

    let alice = Peer::connect(account(&alice_dir, "alice", "alice").await, &relay.address).await;
    assert!(
        alice.saw(|u| matches!(u, Update::History { chat, messages }
            if *chat == lobby()
                && messages.iter().map(|m| (m.text.as_str(), m.outgoing))
                    .eq([("one", true), ("two", true)]))),
        "{:#?}",
        alice.seen
    );
    alice.send(lobby(), "three");
    let three = bob.expect_message(&lobby(), "three").await;
    // P9: numbers never go back, across runs (the counter is persisted
    // before use), and the new run's new session shows no false gap.
    assert!(three.seq > two.seq, "{} <= {}", three.seq, two.seq);
    barrier(&mut bob, Via::message(&alice, lobby(), "four")).await;
    assert!(!bob.saw(missing), "{:#?}", bob.seen);
    alice.quit().await;
}

/// A member driven by hand at the frame level, to look at what the relay
/// delivers (and what a member can open with its own keys).
struct Tap {
    framed: RawFrames,
    identity: std::sync::Arc<sotto_crypto::Identity>,
    sessions: Vec<sotto_crypto::ReceivingSession>,
}

impl Tap {
    async fn join(relay: &sotto_proto::RelayAddress, name: &str) -> Tap {
        use futures::SinkExt;
        use sotto_proto::ClientFrame;
        let mut framed = register_raw(relay, name).await;
        framed
            .send(ClientFrame::Join {
                room: room("lobby"),
            })
            .await
            .unwrap();
        Tap {
            framed,
            identity: identity(name),
            sessions: Vec::new(),
        }
    }

    /// Accepts announcements from `sender` until a message arrives; returns
    /// its body bytes, its slot, and what the tap's own keys open of it.
    async fn next_message(
        &mut self,
        sender: &sotto_crypto::PublicIdentity,
    ) -> (bytes::Bytes, bytes::Bytes, sotto_crypto::Opened) {
        use futures::StreamExt;
        use sotto_crypto::PeerBody;
        use sotto_proto::RelayFrame;
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.framed.next())
                .await
                .expect("a frame in time")
                .unwrap()
                .unwrap();
            let RelayFrame::Deliver { body, slot, .. } = frame else {
                continue;
            };
            match PeerBody::decode(&body).unwrap() {
                PeerBody::Announcement(announcement) => {
                    // The tap publishes no prekey: its key comes wrapped to
                    // its identity key.
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let session = announcement
                        .accept(&mut rand::rng(), &self.identity, sender, now, None)
                        .unwrap();
                    self.sessions.push(session);
                }
                PeerBody::PairReply(_) => {}
                PeerBody::Message(message) => {
                    let slot = slot.expect("the tap's own slot");
                    let header = message.header().unwrap();
                    let session = self
                        .sessions
                        .iter()
                        .find(|s| s.context().session_id == header.session_id)
                        .expect("announced before use");
                    let opened = session
                        .open(&sotto_crypto::Conversation::room("lobby"), &message, &slot)
                        .unwrap();
                    return (body.clone(), slot, opened);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_cannot_open_what_is_sent_after() {
    use sotto_client::session::content::Content;
    use sotto_crypto::{Conversation, MessageBody, PeerBody, roster_digest};
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&temp.path().join("relay"), 0);
    let mut alice = Peer::join(temp.path(), "alice", &relay.address).await;
    let mut carol = Peer::join(temp.path(), "carol", &relay.address).await;
    let mut dave = Tap::join(&relay.address, "dave").await;
    alice
        .expect_members("lobby", &["alice", "carol", "dave"])
        .await;
    let alice_key = identity("alice").public().clone();

    alice.send(lobby(), "before carol leaves");
    carol.expect_message(&lobby(), "before carol leaves").await;
    let (_, _, before) = dave.next_message(&alice_key).await;
    let text = |plaintext: &[u8]| match Content::decode(plaintext) {
        Some(Content::Text(text)) => text,
        other => panic!("not a text: {other:?}"),
    };
    assert_eq!(text(&before.plaintext), "before carol leaves");

    carol.command(Command::Leave(room("lobby")));
    alice
        .expect(|u| matches!(u, Update::Presence { name, change: PresenceChange::Left, .. } if name == "carol"))
        .await;
    alice.send(lobby(), "after carol left");
    let (body, slot, after) = dave.next_message(&alice_key).await;
    assert_eq!(text(&after.plaintext), "after carol left");
    // The message commits to who could read it: alice and dave only.
    assert_eq!(
        after.roster,
        roster_digest([
            identity("alice").fingerprint(),
            identity("dave").fingerprint()
        ])
    );
    let PeerBody::Message(message) = PeerBody::decode(&body).unwrap() else {
        panic!("not a message")
    };
    let header = message.header().unwrap();

    // Carol's client holds every session key alice ever gave her in the
    // lobby, the chain of the session this message was sealed in among
    // them (leaving does not restart alice's session): none opens it, not
    // with the slot that opens for dave, not even with her pair key put in
    // dave's place.
    let received = carol
        .account
        .store()
        .inbound(
            identity("alice").fingerprint(),
            &Conversation::room("lobby"),
        )
        .unwrap();
    assert!(!received.sessions.is_empty());
    let body = MessageBody {
        header: message.header,
        ciphertext: message.ciphertext,
    };
    for held in &received.sessions {
        assert!(
            held.session
                .open(&Conversation::room("lobby"), &body, &slot)
                .is_err()
        );
        let mut as_dave = held.session.export();
        as_dave.context.recipient = identity("dave").fingerprint();
        let as_dave = sotto_crypto::ReceivingSession::restore(as_dave).unwrap();
        assert!(
            as_dave
                .open(&Conversation::room("lobby"), &body, &slot)
                .is_err()
        );
    }
    assert!(
        received
            .sessions
            .iter()
            .any(|held| held.session.context().session_id == header.session_id),
        "the session ran on"
    );
    // And the relay gave her nothing of it (alice's next message, to her
    // directly, comes after it if it came at all).
    barrier(&mut carol, Via::message(&alice, dm("carol"), "barrier")).await;
    assert!(!carol.saw(shown("after carol left")), "{:#?}", carol.seen);
    assert!(
        !carol.saw(|u| matches!(u, Update::NotForYou { .. } | Update::Rejected { .. })),
        "{:#?}",
        carol.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_only_room_wraps_no_key_to_unverified_members() {
    let (bed, mut alice, mut bob, mut carol) = alice_bob_carol().await;
    let number = identity("alice")
        .public()
        .safety_number(identity("bob").public());
    alice.command(Command::Verify {
        name: user("bob"),
        safety_number: number.digits().to_owned(),
    });
    alice.command(Command::SetVerifiedOnly {
        room: room("lobby"),
        on: true,
    });
    alice
        .expect(|u| matches!(u, Update::VerifiedOnly { on: true, .. }))
        .await;

    alice.send(lobby(), "verified eyes only");
    alice
        .expect(|u| matches!(u, Update::NotSentTo { names, .. } if names == &["carol"]))
        .await;
    bob.expect_message(&lobby(), "verified eyes only").await;
    // Carol gets the body without a key slot: nothing she can open, and
    // she is told so (not as a forgery).
    carol
        .expect(|u| matches!(u, Update::NotForYou { from, .. } if from == "alice"))
        .await;
    // (Directly: in the lobby, carol gets no key from alice now.)
    barrier(&mut carol, Via::message(&alice, dm("carol"), "the end")).await;
    assert!(!carol.saw(rejected), "{:#?}", carol.seen);
    assert!(!carol.saw(shown("verified eyes only")), "{:#?}", carol.seen);
    // She holds alice's session from before the room became verified-only
    // (alice announced it on joining), and that session runs on: she was
    // removed from it, so no slot of the message was hers (above) and none
    // of her keys opens the message (the chain alone opens nothing).

    // The setting is kept: the next session says so when it joins.
    let account = alice.account.clone();
    alice.quit().await;
    let mut alice = Peer::connect(account, &bed.relay.address).await;
    alice
        .expect(
            |u| matches!(u, Update::VerifiedOnly { room, on: true } if room.as_str() == "lobby"),
        )
        .await;
}

/// A first direct message to a user the relay knows but this client has no
/// key for waits for the key lookup in the client's stored outbox: the
/// client stopped before the relay answered (the path to it dead) keeps
/// it; the next run looks the key up again, seals and sends it, and it
/// arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_waiting_for_a_key_survives_a_restart_and_arrives_once() {
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start(&temp.path().join("relay"), 0);
    // carol registers once (so the relay knows her key), in a room of
    // her own (so alice sees no roster with her key), then goes away.
    let carol_account = account(&temp.path().join("carol"), "carol", "carol").await;
    let elsewhere = |config: &mut sotto_client::session::Config| {
        config.rooms = vec![room("elsewhere")];
    };
    let carol = Peer::connect_with(carol_account.clone(), &relay.address, elsewhere).await;
    carol.quit().await;

    // alice through a proxy, which goes silent before she writes to carol.
    let proxy = Proxy::start(format!("127.0.0.1:{}", relay.address.port).parse().unwrap());
    let alice_account = account(&temp.path().join("alice"), "alice", "alice").await;
    let alice = Peer::connect_with(
        alice_account.clone(),
        &proxy.relay_address(&relay.address),
        |config| config.limits.quit_wait = Duration::ZERO,
    )
    .await;
    proxy.stall(true);
    alice.send(dm("carol"), "hi carol, a first word");
    // The lookup is written (so the text was kept first) and held.
    proxy.wait_until(|stats| stats.held > 0).await;
    alice.quit().await;
    drop(proxy);

    // The next run shows it pending at once, looks the key up again, then
    // seals and sends it.
    let mut alice = Peer::connect(alice_account.clone(), &relay.address).await;
    let sealed = |u: &Update| matches!(u, Update::Message(m) if m.outgoing && m.text == "hi carol, a first word");
    alice.expect(sealed).await;
    let queued = alice.seen_at(|u| {
        matches!(u, Update::Queued(queued)
            if queued.iter().any(|q| q.chat == dm("carol") && q.text == "hi carol, a first word"))
    });
    assert!(
        queued.is_some_and(|at| Some(at) < alice.seen_at(sealed)),
        "{:#?}",
        alice.seen
    );
    let mut carol = Peer::connect_with(carol_account, &relay.address, elsewhere).await;
    carol
        .expect_message(&dm("alice"), "hi carol, a first word")
        .await;
    barrier(
        &mut carol,
        Via::message(&alice, dm("carol"), "and a second"),
    )
    .await;
    assert_eq!(
        carol.count(shown("hi carol, a first word")),
        1,
        "{:#?}",
        carol.seen
    );
    // alice's next run has it once in its history and sends nothing again.
    alice.quit().await;
    let alice = Peer::connect(alice_account, &relay.address).await;
    let sent: usize = alice
        .seen
        .iter()
        .map(|u| match u {
            Update::History { messages, .. } => messages
                .iter()
                .filter(|m| m.outgoing && m.text == "hi carol, a first word")
                .count(),
            Update::Message(m) if m.outgoing && m.text == "hi carol, a first word" => 1,
            _ => 0,
        })
        .sum();
    assert_eq!(sent, 1, "{:#?}", alice.seen);
}
