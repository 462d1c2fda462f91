//! Fault injection (issue 13, item 9): real clients and the real relay, with
//! `sotto_testkit::Proxy` between one client and the relay to reset, stall,
//! slow or refuse its connection.
//!
//! Every delivery is stored by the relay until its recipient acknowledges
//! it, and room membership outlives the connection, so whatever happens to
//! the recipient's connection, what was sent arrives once, in order, and
//! is in the recipient's history after a restart of its client: cases (a)
//! 1,000 numbered direct messages while the recipient's connection is
//! reset 5 times at random points, (b) the same in a room of 3 with one
//! flaky member, (c) a member offline while 20 room messages and 20 direct
//! messages are sent, (d2) 1,000 direct messages while the recipient's
//! path is silent for 15 s without closing, (e) the relay, a process of
//! its own, killed with SIGKILL in the middle of a stream of 500 direct
//! messages and restarted on its data, (f) the relay's database disk full
//! (the relay's test-only `store::fault::Disk`), then given space back.
//! The resets come at points drawn from a fixed seed, so a failure can be
//! replayed. Case (d), a stopped reader (SIGSTOP), needs a client process
//! of its own: it is `cli/tests/faults.rs`, with a real `sotto-cli`.
//! The helpers are in `fault_kit/`; for (e) this binary runs itself again
//! as the relay process (`fault_kit::relay_process_for_the_kill_case`,
//! which does nothing as an ordinary test). Besides: a client told to quit
//! as its connection is reset ends.
//!
//! What the sender is shown: no error for what the relay accepted, an
//! error naming the chat for what it refused (f). The library tells its
//! user nothing when the relay answers `Sent`, so "accepted" is learnt
//! from a `/users` round trip (`barrier(.., Via::Relay)`): the relay
//! answers a connection's requests in order.
//!
//! Not yet here (later steps of issue 13): per-message delivery states
//! (receipts), and messages in flight when the relay dies, which may be
//! lost until the durable outbox sends them again: (e) asserts that every
//! message confirmed before the kill arrives, and nothing twice or out of
//! order, not that all 500 arrive. A relay that sends a delivery twice is
//! not seen here: the recipient's client drops the copy (its replay
//! window), which is what these tests check the user is shown.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

mod fault_kit;

use std::time::Duration;

use fault_kit::*;
use sotto_client::backoff::Backoff;
use sotto_client::session::{PresenceChange, Update};
use sotto_testkit::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_comes_back_by_itself_and_direct_messages_flow_again() {
    let (_bed, proxy, mut alice, mut bob) = bob_behind_a_proxy().await;
    alice.send(dm("bob"), "before");
    bob.expect_message(&dm("alice"), "before").await;

    // Reset while alice is sending (what becomes of these is not asserted:
    // some may be lost today).
    for i in 0..10 {
        alice.send(dm("bob"), &format!("during {i}"));
    }
    proxy.reset();
    for i in 10..20 {
        alice.send(dm("bob"), &format!("during {i}"));
    }
    bob.expect(reconnecting).await;
    bob.expect_connected().await;
    let stats = proxy.stats();
    assert_eq!(stats.reset, 1, "{stats:?}");
    assert!(stats.accepted >= 2, "{stats:?}");

    alice.send(dm("bob"), "after");
    bob.expect_message(&dm("alice"), "after").await;
    bob.send(dm("alice"), "bob is back");
    alice.expect_message(&dm("bob"), "bob is back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_sent_while_the_recipient_is_refused_arrive_once_in_order() {
    let (_bed, proxy, mut alice, mut bob) = bob_behind_a_proxy().await;
    alice.send(dm("bob"), "before");
    bob.expect_message(&dm("alice"), "before").await;

    // Bob is cut off and cannot come back: the relay sees him gone.
    proxy.refuse(true);
    proxy.reset();
    bob.expect(reconnecting).await;
    alice
        .expect(presence("bob", PresenceChange::Disconnected))
        .await;
    // He keeps trying (and is refused) while alice writes to him.
    proxy.wait_until(|s| s.refused >= 1).await;
    let texts: Vec<String> = (0..20).map(|i| format!("offline {i:02}")).collect();
    for text in &texts {
        alice.send(dm("bob"), text);
    }
    // Every one sealed and handed to the relay, none refused by it.
    for text in &texts {
        alice
            .expect(|u| matches!(u, Update::Message(m) if m.outgoing && m.text == *text))
            .await;
    }
    barrier(&mut alice, Via::Relay).await;
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );

    proxy.refuse(false);
    bob.expect_connected().await;
    // What the relay stored for bob comes before anything sent after it.
    barrier(&mut bob, Via::message(&alice, dm("bob"), "now live")).await;
    assert_eq!(from_alice(&bob, "offline"), texts, "{:#?}", bob.seen);
    let stats = proxy.stats();
    assert!(stats.refused >= 1 && stats.accepted >= 2, "{stats:?}");
}

/// Case (a): 1,000 numbered direct messages while the recipient's
/// connection is reset 5 times at random points: each arrives once, in
/// order, nothing is reported missing, and the recipient's history after a
/// restart of its client holds each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_direct_messages_through_five_resets_arrive_once_in_order() {
    let (bed, proxy, alice, mut bob) = bob_behind_a_proxy().await;
    let texts: Vec<String> = (0..1000).map(|i| format!("dm {i:04}")).collect();
    for text in &texts {
        alice.send(dm("bob"), text);
    }
    let points = reset_points(0xa, 5, 1000);
    receive(&mut bob, &dm("alice"), "dm ", 1000, Some((&proxy, &points))).await;
    assert_eq!(proxy.stats().reset, 5, "{points:?}");
    assert_eq!(shown_in(&bob, &dm("alice"), "dm "), texts);
    nothing_missing(&bob);
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );
    let relay = proxy.relay_address(&bed.relay.address);
    assert_eq!(
        history_after_restart(bob, &relay, &dm("alice"), "dm ").await,
        texts
    );
}

/// Case (b): 1,000 numbered room messages in a room of 3, one member's
/// connection reset 5 times at random points: both other members get each
/// once, in order, and so does the flaky one's history after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_room_messages_reach_a_flaky_member_once_in_order() {
    let bed = Testbed::start();
    let proxy = proxy_to(&bed);
    let mut alice = bed.join("alice").await;
    let mut carol = bed.join("carol").await;
    let mut bob = flaky(&bed, &proxy, "bob").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_members("lobby", &["alice", "bob", "carol"])
            .await;
    }
    let texts: Vec<String> = (0..1000).map(|i| format!("room {i:04}")).collect();
    for text in &texts {
        alice.send(lobby(), text);
    }
    let points = reset_points(0xb, 5, 1000);
    receive(&mut bob, &lobby(), "room ", 1000, Some((&proxy, &points))).await;
    receive(&mut carol, &lobby(), "room ", 1000, None).await;
    assert_eq!(proxy.stats().reset, 5, "{points:?}");
    assert_eq!(shown_in(&bob, &lobby(), "room "), texts);
    assert_eq!(shown_in(&carol, &lobby(), "room "), texts);
    nothing_missing(&bob);
    nothing_missing(&carol);
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );
    let relay = proxy.relay_address(&bed.relay.address);
    assert_eq!(
        history_after_restart(bob, &relay, &lobby(), "room ").await,
        texts
    );
}

/// Case (c): a member offline while 20 room messages and 20 direct
/// messages are sent to it: it stays a member, the sender wraps the keys
/// of the room messages for it too, and when it comes back it gets all 40,
/// once, in order, each in its chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_offline_gets_what_was_said_in_the_room_and_to_it() {
    let (bed, mut alice, bob) = alice_and_bob().await;
    let account = bob.account.clone();
    bob.quit().await;
    alice
        .expect(presence("bob", PresenceChange::Disconnected))
        .await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    let room_texts: Vec<String> = (0..20).map(|i| format!("room {i:02}")).collect();
    let dm_texts: Vec<String> = (0..20).map(|i| format!("dm {i:02}")).collect();
    for (room, direct) in room_texts.iter().zip(&dm_texts) {
        alice.send(lobby(), room);
        alice.send(dm("bob"), direct);
    }
    barrier(&mut alice, Via::Relay).await;
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );

    let mut bob = Peer::connect(account, &bed.relay.address).await;
    receive(&mut bob, &lobby(), "room ", 20, None).await;
    receive(&mut bob, &dm("alice"), "dm ", 20, None).await;
    assert_eq!(shown_in(&bob, &lobby(), "room "), room_texts);
    assert_eq!(shown_in(&bob, &dm("alice"), "dm "), dm_texts);
    nothing_missing(&bob);
    alice
        .expect(presence("bob", PresenceChange::Connected))
        .await;
}

/// Case (d2): bob's network path goes silent for 15 s without closing
/// while alice sends him 1,000 numbered direct messages: the relay accepts
/// every one (it keeps them until bob acknowledges them, never drops a
/// reader that is slow), and when the path comes back bob gets each once,
/// in order, as his history does after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_whose_path_goes_silent_for_fifteen_seconds_gets_every_message_once() {
    const OUTAGE: Duration = Duration::from_secs(15);
    let (bed, proxy, mut alice, mut bob) = bob_behind_a_proxy().await;
    alice.send(dm("bob"), "before");
    bob.expect_message(&dm("alice"), "before").await;

    let silent_since = tokio::time::Instant::now();
    proxy.stall(true);
    let texts: Vec<String> = (0..1000).map(|i| format!("silent {i:04}")).collect();
    for text in &texts {
        alice.send(dm("bob"), text);
    }
    // All of them answered by the relay while bob's path is dead.
    barrier(&mut alice, Via::Relay).await;
    // The relay has written deliveries to the dead path, still open.
    let stats = proxy.wait_until(|s| s.held > 0).await;
    assert_eq!((stats.open, stats.reset), (1, 0), "{stats:?}");
    // The outage itself (the scenario, not an assertion).
    tokio::time::sleep_until(silent_since + OUTAGE).await;
    proxy.stall(false);

    receive(&mut bob, &dm("alice"), "silent ", 1000, None).await;
    assert_eq!(shown_in(&bob, &dm("alice"), "silent "), texts);
    nothing_missing(&bob);
    barrier(&mut alice, Via::Relay).await;
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );
    let relay = proxy.relay_address(&bed.relay.address);
    assert_eq!(
        history_after_restart(bob, &relay, &dm("alice"), "silent ").await,
        texts
    );
}

/// Case (e): the relay, a process of its own, is killed with SIGKILL in
/// the middle of a stream of 500 numbered direct messages from alice to
/// bob, then started again on the same data.
///
/// The library tells its user nothing when the relay answers `Sent`
/// (receipts are a later step of issue 13), so the test learns what the
/// relay accepted from a `/users` round trip: the relay answers a
/// connection's requests in order, so its answer means that every message
/// alice handed over before it was answered, and with no error, durably
/// stored (`Sent`). The first 250 are confirmed so; the relay is killed
/// while the other 250 are being sent. Every confirmed message reaches
/// bob; of those in flight at the kill, some may be lost today (the
/// durable outbox that sends them again is a later step of issue 13);
/// nothing arrives twice or out of order, and bob's history after a
/// restart holds exactly what he was shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_killed_mid_stream_loses_nothing_it_confirmed_and_duplicates_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let relay_dir = temp.path().join("relay");
    let process = RelayProcess::start(&relay_dir, 0);
    let relay = process.address.clone();
    let mut alice = quick_to_return(temp.path(), "alice", &relay).await;
    let mut bob = quick_to_return(temp.path(), "bob", &relay).await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }

    let texts: Vec<String> = (0..500).map(|i| format!("crash {i:04}")).collect();
    let (confirmed, in_flight) = texts.split_at(250);
    for text in confirmed {
        alice.send(dm("bob"), text);
    }
    barrier(&mut alice, Via::Relay).await;
    for text in in_flight {
        alice.send(dm("bob"), text);
    }
    // Killed once alice has handed over the 300th: the rest are still
    // being sealed and sent, the relay still storing and delivering.
    alice
        .expect(|u| matches!(u, Update::Message(m) if m.outgoing && m.text == texts[299]))
        .await;
    process.kill();
    alice.expect(reconnecting).await;
    let _process = RelayProcess::start(&relay_dir, relay.port);
    alice.expect_connected().await;

    let after: Vec<String> = (0..20).map(|i| format!("after {i:02}")).collect();
    for text in &after {
        alice.send(dm("bob"), text);
    }
    barrier(&mut alice, Via::Relay).await;
    // Nothing refused: what was in flight is not reported yet either.
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );

    receive(&mut bob, &dm("alice"), "after ", after.len(), None).await;
    assert_eq!(shown_in(&bob, &dm("alice"), "after "), after);
    let arrived = shown_in(&bob, &dm("alice"), "crash ");
    assert!(arrived.starts_with(confirmed), "{arrived:#?}");
    // Once each, in order: each one later in the stream than the one
    // before it.
    let places: Vec<usize> = arrived
        .iter()
        .map(|text| texts.iter().position(|t| t == text).unwrap())
        .collect();
    assert!(places.is_sorted_by(|a, b| a < b), "{arrived:#?}");
    assert!(
        !bob.saw(|u| matches!(u, Update::Rejected { .. } | Update::NotForYou { .. })),
        "{:#?}",
        bob.seen
    );
    let mut everything = arrived.clone();
    everything.extend(after);
    assert_eq!(
        history_after_restart(bob, &relay, &dm("alice"), "").await,
        everything
    );
    // What the kill cost today (until the durable outbox).
    eprintln!("case (e): {} of 500 arrived", arrived.len());
}

/// Case (f): the relay's database on a disk that fills up while alice
/// writes to bob, then gets its space back. What she sends while it is
/// full is refused to her, each with an error naming the chat (and bob is
/// told that many are missing: they never reached him); what she sent
/// before and sends after reaches bob once, in order, and is in his
/// history after a restart. The relay recovers by itself: it is never
/// restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_it_cannot_store_and_the_relay_recovers_by_itself() {
    use sotto_relay::store::Recovery;
    use sotto_relay::store::fault::Disk;
    let temp = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    // Reopens the database at the first write after a failure.
    let at_once = Recovery {
        first_retry: Duration::ZERO,
        max_retry: Duration::ZERO,
    };
    let relay = LocalRelay::start_on_disk(&temp.path().join("relay"), 0, &disk, at_once);
    let mut alice = Peer::join(temp.path(), "alice", &relay.address).await;
    let mut bob = Peer::join(temp.path(), "bob", &relay.address).await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }

    let before: Vec<String> = (0..20).map(|i| format!("disk before {i:02}")).collect();
    for text in &before {
        alice.send(dm("bob"), text);
    }
    barrier(&mut alice, Via::Relay).await;

    disk.fill();
    for i in 0..5 {
        alice.send(dm("bob"), &format!("disk full {i}"));
    }
    let refused = format!(
        "{}: not delivered: could not store the message (Internal)",
        dm("bob")
    );
    for _ in 0..5 {
        let error = alice.expect(|u| matches!(u, Update::Error(_))).await;
        assert!(
            matches!(&error, Update::Error(e) if *e == refused),
            "{error:?}"
        );
    }
    assert!(disk.refused() > 0);

    disk.free();
    let after: Vec<String> = (0..20).map(|i| format!("disk after {i:02}")).collect();
    for text in &after {
        alice.send(dm("bob"), text);
    }
    barrier(&mut alice, Via::Relay).await;
    assert_eq!(
        alice.count(|u| matches!(u, Update::Error(_))),
        5,
        "{:#?}",
        alice.seen
    );

    receive(&mut bob, &dm("alice"), "disk after ", after.len(), None).await;
    let mut expected = before.clone();
    expected.extend(after);
    assert_eq!(shown_in(&bob, &dm("alice"), "disk "), expected);
    let missing: Vec<u64> = bob
        .seen
        .iter()
        .filter_map(|u| match u {
            Update::Missing { count, .. } => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(missing, [5], "{:#?}", bob.seen);
    assert!(!bob.saw(|u| matches!(u, Update::Rejected { .. } | Update::NotForYou { .. })));
    assert_eq!(
        history_after_restart(bob, &relay.address, &dm("alice"), "disk ").await,
        expected
    );
}

/// A client told to quit just as its connection is reset ends its
/// session: it used to reconnect instead when its `Bye` could not be
/// written, and run on. The reset and the quit race (the client mostly
/// sees the reset first), so it is tried 100 times: without the fix, one
/// run in two failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quit_just_after_a_reset_ends_the_session() {
    let (bed, proxy, _alice, mut bob) = bob_behind_a_proxy().await;
    let relay = proxy.relay_address(&bed.relay.address);
    let short = Duration::from_millis(50);
    for round in 1..=100 {
        proxy.reset();
        proxy.wait_until(|s| s.reset >= round).await;
        let account = bob.account.clone();
        bob.quit().await;
        bob = Peer::connect_with(account, &relay, |config| {
            config.limits.reconnect = Backoff::new(short, short * 4, Duration::from_secs(60));
        })
        .await;
    }
}
