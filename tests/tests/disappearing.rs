//! Disappearing messages end to end, through a real relay with real
//! clients (docs/protocol.md 13.8 and 20.2): a timer one member sets
//! applies at the others, a member who missed the change still deletes
//! what was sent under it, and a restarted client keeps its timer and
//! still deletes on time. Expiry is waited for as an update, bounded by
//! the harness's patience; the timers are a few seconds long.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

use sotto_client::session::{Chat, Command, MessageId, Update};
use sotto_testkit::*;

/// A timer change in `chat` to `seconds` made by `by` (`None`: the
/// setting as stored, or as asked for).
fn timer(chat: Chat, seconds: u64, by: Option<&str>) -> impl Fn(&Update) -> bool {
    let by = by.map(str::to_owned);
    move |u| {
        matches!(u, Update::Timer { chat: c, seconds: s, by: b }
            if *c == chat && *s == seconds && b.as_ref().map(|b| b.as_str()) == by.as_deref())
    }
}

/// `id` expired in `chat`.
fn expired(chat: Chat, id: MessageId) -> impl Fn(&Update) -> bool {
    move |u| matches!(u, Update::Expired { chat: c, ids, .. } if *c == chat && ids.contains(&id))
}

/// Waits until every one of `ids` expired in `chat` (one `Expired` may
/// name several).
async fn expect_expired(peer: &mut Peer, chat: &Chat, mut ids: Vec<MessageId>) {
    while !ids.is_empty() {
        let update = peer
            .expect(|u| matches!(u, Update::Expired { chat: c, .. } if c == chat))
            .await;
        let Update::Expired { ids: gone, .. } = update else {
            unreachable!()
        };
        ids.retain(|id| !gone.contains(id));
    }
}

/// The message this peer sent with `text`, as it was shown.
async fn sent(peer: &mut Peer, text: &str) -> sotto_client::session::Message {
    let update = peer
        .expect(|u| matches!(u, Update::Message(m) if m.outgoing && m.text == text))
        .await;
    let Update::Message(message) = update else {
        unreachable!()
    };
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_one_member_sets_applies_at_the_others_even_one_who_missed_it() {
    let (bed, mut alice, mut bob) = alice_and_bob().await;
    alice.command(Command::SetTimer {
        chat: lobby(),
        seconds: 2,
    });
    alice.expect(timer(lobby(), 2, Some("alice"))).await;
    // Shown to bob as alice's change, and his own texts follow it.
    bob.expect(timer(lobby(), 2, Some("alice"))).await;
    bob.send(lobby(), "gone in two seconds");
    let mine = sent(&mut bob, "gone in two seconds").await;
    let theirs = alice.expect_message(&lobby(), "gone in two seconds").await;
    assert_eq!(theirs.id(), mine.id());
    // Each copy says when it disappears: two seconds after it was stored.
    for copy in [&mine, &theirs] {
        let expires = copy.expires_at_ms.unwrap();
        assert_eq!(expires - copy.received_at_ms, 2000, "{copy:?}");
    }

    // Carol joins after the change: she never got it, yet what alice
    // sends under it disappears at carol's too, and carol's own setting
    // stays off.
    let mut carol = bed.join("carol").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_members("lobby", &["alice", "bob", "carol"])
            .await;
    }
    alice.send(lobby(), "for all of you, briefly");
    let at_carol = carol
        .expect_message(&lobby(), "for all of you, briefly")
        .await;
    let at_alice = sent(&mut alice, "for all of you, briefly").await;

    bob.expect(expired(lobby(), mine.id())).await;
    expect_expired(&mut alice, &lobby(), vec![mine.id(), at_alice.id()]).await;
    carol.expect(expired(lobby(), at_carol.id())).await;
    carol.command(Command::ShowTimer(lobby()));
    carol.expect(timer(lobby(), 0, None)).await;

    // Turned off by bob: shown to alice as his change.
    bob.command(Command::SetTimer {
        chat: lobby(),
        seconds: 0,
    });
    alice.expect(timer(lobby(), 0, Some("bob"))).await;
    alice.command(Command::ShowTimer(lobby()));
    alice.expect(timer(lobby(), 0, None)).await;
    carol.drain();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_conversations_timer_survives_a_restart_and_still_deletes_on_time() {
    let (bed, mut alice, mut bob) = alice_and_bob().await;
    alice.command(Command::SetTimer {
        chat: dm("bob"),
        seconds: 4,
    });
    alice.expect(timer(dm("bob"), 4, Some("alice"))).await;
    bob.expect(timer(dm("alice"), 4, Some("alice"))).await;
    bob.quit().await;

    // Bob restarts: the timer is there before anything arrives, and what
    // arrives under it is deleted on time by the new run.
    let bob_dir = bed.temp.path().join("bob");
    let mut bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &bed.relay.address).await;
    bob.expect(timer(dm("alice"), 4, None)).await;
    alice.send(dm("bob"), "read it fast");
    let received = bob.expect_message(&dm("alice"), "read it fast").await;
    // Bob answers under the timer he has (from the stored setting).
    bob.send(dm("alice"), "done");
    let answer = sent(&mut bob, "done").await;
    bob.quit().await;
    let mut bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &bed.relay.address).await;
    bob.expect(timer(dm("alice"), 4, None)).await;
    // Restarted before the four seconds ran out, the run deletes them at
    // the time; restarted after, they are already gone from the history.
    let mut pending = Vec::new();
    for id in [received.id(), answer.id()] {
        let in_history = bob.saw(|u| {
            matches!(u, Update::History { messages, .. } if messages.iter().any(|m| m.id() == id))
        });
        if in_history {
            pending.push(id);
        }
    }
    expect_expired(&mut bob, &dm("alice"), pending).await;
    alice.expect(expired(dm("bob"), answer.id())).await;
    bob.quit().await;
    let bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &bed.relay.address).await;
    assert!(
        !bob.saw(|u| matches!(u, Update::History { chat, .. } if *chat == dm("alice"))),
        "{:#?}",
        bob.seen
    );
}
