//! Deliveries handed to connected recipients before they are stored
//! (protocol.md 9.7): an acknowledgement that comes while its batch is
//! held saves the write, `Sent` never comes before each delivery is
//! stored or acknowledged, what is not acknowledged in time is stored and
//! comes again, and a recipient gets everything once, in order, however
//! often its deliveries move between memory and the database. Real relay,
//! real TLS clients.

#![forbid(unsafe_code)]
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
use common::{Client, Relay, send_to_room, send_to_user, user};
use sotto_proto::{ClientFrame, RelayFrame};

/// Long enough that a test sees a held batch stored only because its
/// deliveries were acknowledged, never because time ran out.
const FOREVER_MS: u64 = 10_000;

/// The next delivery's id and body (presence skipped).
async fn delivery(client: &mut Client) -> (u64, Bytes) {
    loop {
        match client.recv().await {
            RelayFrame::Deliver { delivery, body, .. } => return (delivery, body),
            RelayFrame::Presence { .. } => {}
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// A body of 1,000 bytes of its own for message `id` (the relay stores
/// identical bytes from one sender once).
fn kilobyte(id: u64) -> Bytes {
    let mut bytes = vec![0x5a; 1000];
    bytes[..8].copy_from_slice(&id.to_be_bytes());
    Bytes::from(bytes)
}

/// Sends direct messages `ids` of 1,000 bytes from `alice` to bob, on a
/// task of its own (so that bob reads while alice sends); gives `alice`
/// back once all are sent.
fn burst(mut alice: Client, ids: std::ops::RangeInclusive<u64>) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        for id in ids {
            alice
                .send(ClientFrame::Send {
                    route: sotto_proto::Route {
                        id,
                        to: sotto_proto::Destination::User(user("bob")),
                    },
                    body: kilobyte(id),
                    slots: Vec::new(),
                })
                .await;
        }
        alice
    })
}

/// Reads messages `ids` of [`burst`], each once and in order,
/// acknowledging them 64 at a time, then nothing more.
async fn read_in_order(bob: &mut Client, ids: std::ops::RangeInclusive<u64>) {
    let last = *ids.end();
    let mut acks = Vec::new();
    for expected in ids {
        let (id, body) = delivery(bob).await;
        assert_eq!(body, kilobyte(expected), "message {expected}");
        acks.push(id);
        if acks.len() == 64 || expected == last {
            for id in acks.drain(..) {
                bob.send(ClientFrame::Ack { delivery: id }).await;
            }
        }
    }
    assert_eq!(delivered(bob).await, Vec::<Bytes>::new());
}

/// The bodies delivered before a barrier.
async fn delivered(client: &mut Client) -> Vec<Bytes> {
    client
        .barrier()
        .await
        .into_iter()
        .filter_map(|frame| match frame {
            RelayFrame::Deliver { body, .. } => Some(body),
            _ => None,
        })
        .collect()
}

/// A direct message reaches its connected recipient before it is stored;
/// the sender's `Sent` waits until the recipient acknowledges it (never
/// before: nothing is stored), and the acknowledgement saves the write, so
/// it does not come again.
#[tokio::test]
async fn an_acknowledgement_before_the_write_saves_it_and_sent_waits_for_it() {
    let relay = Relay::start_with(|c| c.delivery_hold_ms = FOREVER_MS).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    bob.barrier().await;

    alice.send(send_to_user(1, "bob", b"hello", None)).await;
    let (id, body) = delivery(&mut bob).await;
    assert_eq!(body.as_ref(), b"hello");
    assert_eq!(
        alice.try_recv(Duration::from_millis(300)).await,
        None,
        "no Sent while the delivery is neither stored nor acknowledged"
    );
    bob.send(ClientFrame::Ack { delivery: id }).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });
    assert_eq!(relay.metrics.acked_unstored.load(Ordering::Relaxed), 1);
    assert_eq!(relay.metrics.queued.load(Ordering::Relaxed), 0);

    drop(bob);
    let mut bob = relay.registered("bob").await;
    assert_eq!(delivered(&mut bob).await, Vec::<Bytes>::new());
}

/// A delivery its recipient does not acknowledge while its batch is held
/// is stored before `Sent`, and comes again, with the same id, on the
/// recipient's next connection.
#[tokio::test]
async fn a_delivery_not_acknowledged_in_time_is_stored_and_comes_again() {
    let relay = Relay::start_with(|c| c.delivery_hold_ms = 1).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    bob.barrier().await;

    alice.send(send_to_user(1, "bob", b"keep me", None)).await;
    let (id, _) = delivery(&mut bob).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });
    assert_eq!(relay.metrics.queued.load(Ordering::Relaxed), 1);
    assert_eq!(relay.metrics.acked_unstored.load(Ordering::Relaxed), 0);

    drop(bob);
    let mut bob = relay.registered("bob").await;
    let (again, body) = delivery(&mut bob).await;
    assert_eq!((again, body.as_ref()), (id, b"keep me".as_slice()));
}

/// A room message is stored only for the members who did not acknowledge
/// it while it was held: an offline member gets it on its return, the one
/// who acknowledged it never again.
#[tokio::test]
async fn a_room_message_is_stored_only_for_those_who_did_not_acknowledge_it() {
    let relay = Relay::start_with(|c| c.delivery_hold_ms = FOREVER_MS).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join("lobby").await;
    }
    drop(carol);
    alice.barrier().await;
    bob.barrier().await;

    alice.send(send_to_room(1, "lobby", b"to all", &[])).await;
    let (id, _) = delivery(&mut bob).await;
    bob.send(ClientFrame::Ack { delivery: id }).await;
    loop {
        match alice.recv().await {
            RelayFrame::Sent { id: 1 } => break,
            RelayFrame::Presence { .. } => {}
            other => panic!("expected Sent, got {other:?}"),
        }
    }
    assert_eq!(relay.metrics.acked_unstored.load(Ordering::Relaxed), 1);
    assert_eq!(relay.metrics.queued.load(Ordering::Relaxed), 1);

    let mut carol = relay.registered("carol").await;
    assert_eq!(delivered(&mut carol).await, [Bytes::from_static(b"to all")]);
    drop(bob);
    let mut bob = relay.registered("bob").await;
    assert_eq!(delivered(&mut bob).await, Vec::<Bytes>::new());
}

/// A recipient whose outbound queue is tiny falls behind again and again
/// during a burst, so its deliveries keep moving from memory to the
/// database and back: it still gets every one, once, in order.
#[tokio::test]
async fn deliveries_moving_between_memory_and_the_database_arrive_once_in_order() {
    const COUNT: u64 = 3000;
    let relay = Relay::start_with(|c| {
        c.max_frame_len = 4096;
        c.outbound_queue_bytes = 4096 + 1024;
        c.rate_burst = 4000;
        c.offline_max_messages = 2 * COUNT;
    })
    .await;
    let alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    bob.barrier().await;

    let sender = burst(alice, 1..=COUNT);
    read_in_order(&mut bob, 1..=COUNT).await;
    let mut alice = sender.await.unwrap();
    alice.barrier().await;
    assert!(
        relay.metrics.queued.load(Ordering::Relaxed) > 0,
        "the burst overflowed memory at least once"
    );
}

/// Only a delivery's recipient can acknowledge it away: another user's
/// `Ack` of its id (ids are easy to guess) neither cancels its write nor
/// lets `Sent` come before the recipient has it.
#[tokio::test]
async fn only_its_recipient_can_acknowledge_a_delivery() {
    let relay = Relay::start_with(|c| c.delivery_hold_ms = FOREVER_MS).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut mallory = relay.registered("mallory").await;
    mallory.barrier().await;
    bob.barrier().await;

    alice.send(send_to_user(1, "bob", b"for bob", None)).await;
    let (id, _) = delivery(&mut bob).await;
    // (No barrier for mallory: its `Pong` would wait behind the batch
    // held for bob, as every answer waits for the batches before it.)
    mallory.send(ClientFrame::Ack { delivery: id }).await;
    assert_eq!(
        alice.try_recv(Duration::from_millis(300)).await,
        None,
        "someone else's acknowledgement cancelled bob's delivery"
    );
    bob.send(ClientFrame::Ack { delivery: id }).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });
    assert_eq!(relay.metrics.acked_unstored.load(Ordering::Relaxed), 1);
}

/// A delivery the committer queued on the connection itself (the pump had
/// nothing to send) and that was then stored, not acknowledged in time,
/// is not sent again when the connection falls behind and its pump reads
/// the database: the recipient gets it once, then the burst, in order.
#[tokio::test]
async fn a_delivery_queued_directly_is_not_sent_again_from_the_database() {
    const BURST: u64 = 1500;
    let relay = Relay::start_with(|c| {
        c.delivery_hold_ms = 1;
        c.max_frame_len = 4096;
        c.outbound_queue_bytes = 4096 + 1024;
        c.rate_burst = 4000;
        c.offline_max_messages = 2 * BURST;
    })
    .await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    bob.barrier().await;

    // Bob reads it but does not acknowledge it: stored after the hold.
    alice.send(send_to_user(1, "bob", b"first", None)).await;
    let (_, body) = delivery(&mut bob).await;
    assert_eq!(body.as_ref(), b"first");
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });

    // A burst larger than what a door holds: bob's tiny queue makes him
    // fall behind, and his pump reads the database.
    let sender = burst(alice, 2..=BURST);
    read_in_order(&mut bob, 2..=BURST).await;
    sender.await.unwrap().barrier().await;
}
