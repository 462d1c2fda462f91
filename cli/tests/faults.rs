//! Fault injection, case (d) (issue 13, item 9; the other cases are in
//! tests/tests/faults.rs): a slow consumer, a real `sotto-cli --json`
//! process, stopped with SIGSTOP and continued. It needs a process of its
//! own (a stopped library client would stop the test with it), hence this
//! file.
//!
//! The relay keeps every delivery until its recipient acknowledges it, and
//! waits for a slow reader instead of cutting it off and dropping what it
//! had queued for it: while the reader is stopped, what is sent to it waits
//! in the relay's database (within the relay's storage bounds, 10,000
//! messages and 64 MiB per user by default); the relay's idle timeout ends
//! its connection; once continued, the client reconnects and gets each
//! message once, in order, and its stored history holds the same.
#![forbid(unsafe_code)]
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use sotto_client::session::{MessageId, PresenceChange, Update};
use sotto_testkit::{LocalRelay, Peer, Via, barrier, dm, presence};
use support::{Bot, exited, init};

/// Sends `signal` (`STOP`, `CONT`) to `bot`'s process.
async fn signal(bot: &Bot, signal: &str) {
    let pid = bot.child.id().expect("the process runs").to_string();
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(&pid)
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The texts of the messages from alice in `events` (message events, or
/// the messages of a history event), received, starting with `prefix`.
fn from_alice<'a>(events: impl IntoIterator<Item = &'a Value>, prefix: &str) -> Vec<String> {
    events
        .into_iter()
        .filter(|e| e["from"] == "alice" && e["user"] == "alice" && e["outgoing"] == false)
        .filter_map(|e| e["text"].as_str())
        .filter(|text| text.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn messages(bot: &Bot) -> impl Iterator<Item = &Value> {
    bot.seen.iter().filter(|e| e["type"] == "message")
}

/// Case (d): bob, a `sotto-cli --json` process, is stopped (SIGSTOP) for
/// longer than the relay's idle timeout while alice sends him 300
/// numbered 16 KB direct messages (4.8 MB, within the relay's bounds for
/// him), then continued (SIGCONT). The relay cuts the stopped
/// connection; alice is shown no error; bob reconnects by himself and
/// shows each message once, in order, and so does his history after a
/// restart; alice sees each delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reader_gets_every_16_kb_message_once_in_order_once_continued() {
    const COUNT: usize = 300;
    let temp = tempfile::tempdir().unwrap();
    // Idle 3 s: the relay gives up on the stopped reader soon.
    let relay = LocalRelay::start_with(&temp.path().join("relay"), 0, |config| {
        config.keepalive_interval = Duration::from_secs(1);
        config.idle_timeout = Duration::from_secs(3);
    })
    .detach();
    let bob_dir = temp.path().join("bob");
    init(&bob_dir, "bob").await;
    let mut bob = Bot::connect(&bob_dir, "bob", &relay).await;
    let mut alice = Peer::join(temp.path(), "alice", &relay).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    barrier(&mut alice, Via::Relay).await;
    alice.send(dm("bob"), "before");
    bob.expect(|e| e["type"] == "message" && e["text"] == "before")
        .await;

    signal(&bob, "STOP").await;
    let texts: Vec<String> = (0..COUNT)
        .map(|i| format!("big {i:03} {}", "x".repeat(16 * 1024 - 8)))
        .collect();
    for text in &texts {
        alice.send(dm("bob"), text);
    }
    // The relay cut the stopped reader off (its idle timeout), and
    // accepted every message: they wait for him.
    alice
        .expect(presence("bob", PresenceChange::Disconnected))
        .await;
    barrier(&mut alice, Via::Relay).await;
    assert!(
        !alice.saw(|u| matches!(u, Update::Error(_))),
        "{:#?}",
        alice.seen
    );

    signal(&bob, "CONT").await;
    let last = texts.last().unwrap().clone();
    bob.expect(|e| e["type"] == "message" && e["text"] == last.as_str())
        .await;
    alice
        .expect(presence("bob", PresenceChange::Connected))
        .await;
    // Anything more (a duplicate) would come before a marker sent now.
    alice.send(dm("bob"), "after");
    bob.expect(|e| e["type"] == "message" && e["text"] == "after")
        .await;
    assert_eq!(from_alice(messages(&bob), "big "), texts);
    assert!(
        !bob.seen
            .iter()
            .any(|e| e["type"] == "missing" || e["type"] == "rejected"),
        "{:?}",
        bob.seen.iter().map(|e| &e["type"]).collect::<Vec<_>>()
    );
    assert!(
        bob.seen
            .iter()
            .any(|e| e["type"] == "connection" && e["state"] == "reconnecting"),
        "the relay did not cut the stopped reader off"
    );

    // Alice is shown each delivered, by bob's own receipts.
    let ids: HashSet<MessageId> = alice
        .seen
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) if m.outgoing && m.text.starts_with("big ") => Some(m.id()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), COUNT);
    let delivered = |alice: &Peer| {
        let mut done = HashSet::new();
        for update in &alice.seen {
            if let Update::Delivery { id, delivery, .. } = update
                && ids.contains(id)
                && delivery.delivered.iter().any(|d| d == "bob")
            {
                done.insert(*id);
            }
        }
        done.len()
    };
    while delivered(&alice) < COUNT {
        alice.expect(|u| matches!(u, Update::Delivery { .. })).await;
    }

    // Restarted, bob shows the same history.
    bob.say(serde_json::json!({"type": "quit"})).await;
    assert!(exited(&mut bob.child, "bob").await.success());
    let mut bob = Bot::connect(&bob_dir, "bob", &relay).await;
    let history = |e: &Value| e["type"] == "history" && e["user"] == "alice";
    let history = match bob.seen.iter().find(|e| history(e)) {
        Some(event) => event.clone(),
        None => bob.expect(history).await,
    };
    let stored = history["messages"].as_array().unwrap();
    assert_eq!(from_alice(stored, "big "), texts);
}
