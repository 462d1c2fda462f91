//! Stored deliveries and lasting membership through a live relay: every
//! delivery, room or direct, waits in order until acknowledged, within
//! its bounds, for members online or not; membership outlives the
//! connection and the relay; `Sent` is cumulative and comes only after
//! the commit. Real relay, real TLS clients.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use bytes::Bytes;
use common::{Client, Relay, numbered, room, send_to_room, send_to_user, user};
use sotto_proto::{ClientFrame, Destination, ErrorCode, PresenceEvent, RelayFrame};

/// The members of a `Joined` frame, with whether each is online.
fn members(frame: &RelayFrame) -> Vec<(String, bool)> {
    match frame {
        RelayFrame::Joined { members, .. } => members
            .iter()
            .map(|m| (m.name.to_string(), m.online))
            .collect(),
        other => panic!("expected Joined, got {other:?}"),
    }
}

/// The next delivery's id and body (panics on any other frame but
/// presence).
async fn delivery(client: &mut Client) -> (u64, Bytes) {
    loop {
        match client.recv().await {
            RelayFrame::Deliver { delivery, body, .. } => return (delivery, body),
            RelayFrame::Presence { .. } => {}
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// Frames until a `Sent` covering `id`; returns everything before it.
async fn sent_through(client: &mut Client, id: u64) -> Vec<RelayFrame> {
    let mut before = Vec::new();
    loop {
        match client.recv().await {
            RelayFrame::Sent { id: sent } if sent >= id => return before,
            frame => before.push(frame),
        }
    }
}

/// A member stays one while offline, and across a restart of the relay:
/// the others hear it go and come back, its `Joined` comes right after
/// `Registered`, listing who is online, and only `Leave` ends it.
#[tokio::test]
async fn room_membership_outlives_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_in(dir.path(), |_| {}).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    assert!(matches!(
        alice.recv().await,
        RelayFrame::Presence {
            event: PresenceEvent::Joined,
            ..
        }
    ));
    bob.send(ClientFrame::Bye).await;
    assert!(bob.closed().await.is_empty());
    let RelayFrame::Presence {
        user: who, event, ..
    } = alice.recv().await
    else {
        panic!("expected presence")
    };
    assert_eq!((who, event), (user("bob"), PresenceEvent::Disconnected));
    // Still a member, offline.
    assert_eq!(
        members(&alice.join("lobby").await),
        [("alice".to_string(), true), ("bob".to_string(), false)]
    );
    alice.send(ClientFrame::ListRooms).await;
    let RelayFrame::Rooms { rooms } = alice.recv().await else {
        panic!("expected rooms")
    };
    assert_eq!(rooms[0].members, 2);
    drop(alice);

    // The relay restarts: memberships are in its database.
    relay.stop().await;
    let relay = Relay::start_in(dir.path(), |_| {}).await;
    let mut alice = relay.registered("alice").await;
    let joined = alice.recv().await;
    assert_eq!(
        members(&joined),
        [("alice".to_string(), true), ("bob".to_string(), false)]
    );
    let mut bob = relay.registered("bob").await;
    assert_eq!(
        members(&bob.recv().await),
        [("alice".to_string(), true), ("bob".to_string(), true)]
    );
    let RelayFrame::Presence {
        user: who, event, ..
    } = alice.recv().await
    else {
        panic!("expected presence")
    };
    assert_eq!((who, event), (user("bob"), PresenceEvent::Connected));

    bob.send(ClientFrame::Leave {
        room: room("lobby"),
    })
    .await;
    assert_eq!(
        bob.recv().await,
        RelayFrame::Left {
            room: room("lobby")
        }
    );
    let RelayFrame::Presence {
        user: who, event, ..
    } = alice.recv().await
    else {
        panic!("expected presence")
    };
    assert_eq!((who, event), (user("bob"), PresenceEvent::Left));
    drop(bob);
    let mut bob = relay.registered("bob").await;
    assert_eq!(bob.barrier().await, [], "no room any more");
}

/// What is said in a room while a member is offline waits for it, across
/// a restart of the relay too, each with its own slot, in order; the
/// member online gets it at once; each delivery goes once per connection
/// until acknowledged.
#[tokio::test]
async fn room_messages_wait_for_offline_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_in(dir.path(), |_| {}).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let carol = relay.registered("carol").await;
    let mut carol = carol;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join("lobby").await;
    }
    drop(carol);
    alice.barrier().await;
    for (id, body) in [(1, &b"one"[..]), (2, b"two")] {
        alice
            .send(send_to_room(
                id,
                "lobby",
                body,
                &[("bob", b"b"), ("carol", b"c")],
            ))
            .await;
    }
    sent_through(&mut alice, 2).await;
    for body in [&b"one"[..], b"two"] {
        let (id, got) = delivery(&mut bob).await;
        assert_eq!(got, body);
        bob.send(ClientFrame::Ack { delivery: id }).await;
    }
    drop((alice, bob));
    relay.stop().await;

    let relay = Relay::start_in(dir.path(), |_| {}).await;
    let mut carol = relay.registered("carol").await;
    assert!(matches!(carol.recv().await, RelayFrame::Joined { .. }));
    let mut first = Vec::new();
    for body in [&b"one"[..], b"two"] {
        let RelayFrame::Deliver {
            delivery,
            from,
            to,
            body: got,
            slot,
        } = carol.recv().await
        else {
            panic!("expected a delivery")
        };
        assert_eq!(
            (from, to, got, slot),
            (
                user("alice"),
                Destination::Room(room("lobby")),
                Bytes::from_static(body),
                Some(Bytes::from_static(b"c"))
            )
        );
        first.push(delivery);
    }
    assert_eq!(carol.barrier().await, [], "each once on this connection");
    // Only the first is acknowledged: the second comes again.
    carol.send(ClientFrame::Ack { delivery: first[0] }).await;
    carol.send(ClientFrame::Bye).await;
    carol.closed().await;
    let mut carol = relay.registered("carol").await;
    assert!(matches!(carol.recv().await, RelayFrame::Joined { .. }));
    let (again, body) = delivery(&mut carol).await;
    assert_eq!((again, body.as_ref()), (first[1], &b"two"[..]));
    carol.send(ClientFrame::Ack { delivery: again }).await;
    assert_eq!(carol.barrier().await, []);
}

/// A room message is stored for the members who have room; those at
/// their bound are named in `Undelivered`, before the `Sent` that covers
/// it; if nobody has room, the send fails.
#[tokio::test]
async fn undelivered_names_the_members_at_their_bound() {
    let relay = Relay::start_with(|c| c.offline_max_messages = 1).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join("lobby").await;
    }
    drop(carol);
    alice.barrier().await;
    // Carol (offline) takes one; bob acknowledges his.
    alice.send(send_to_room(1, "lobby", b"one", &[])).await;
    sent_through(&mut alice, 1).await;
    let (id, _) = delivery(&mut bob).await;
    bob.send(ClientFrame::Ack { delivery: id }).await;
    bob.barrier().await;

    alice.send(send_to_room(2, "lobby", b"two", &[])).await;
    let before = sent_through(&mut alice, 2).await;
    assert_eq!(
        before,
        [RelayFrame::Undelivered {
            id: 2,
            code: ErrorCode::QueueFull,
            users: vec![user("carol")]
        }]
    );
    assert_eq!(delivery(&mut bob).await.1.as_ref(), b"two");

    // Bob does not acknowledge: now nobody has room.
    alice.send(send_to_room(3, "lobby", b"three", &[])).await;
    let refused = alice.recv().await;
    assert!(
        matches!(
            refused,
            RelayFrame::Error {
                id: Some(3),
                code: ErrorCode::QueueFull,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(
        relay
            .metrics
            .queue_full
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // Bob's connection was handed "three" before the store refused it
    // (protocol.md 9.7), so he may read it now; it is not kept for him: his
    // next connection gets only "two", which he never acknowledged.
    let live = bob.barrier().await;
    assert!(
        live.iter().all(|frame| matches!(
            frame,
            RelayFrame::Deliver { body, .. } if body.as_ref() == b"three"
        )),
        "{live:?}"
    );
    drop(bob);
    let mut bob = relay.registered("bob").await;
    let again: Vec<Bytes> = bob
        .barrier()
        .await
        .into_iter()
        .filter_map(|frame| match frame {
            RelayFrame::Deliver { body, .. } => Some(body),
            _ => None,
        })
        .collect();
    assert_eq!(again, [Bytes::from_static(b"two")]);
}

/// `Sent` is cumulative and comes only once everything it covers is
/// stored: many sends in a row are answered by fewer, increasing `Sent`s,
/// the last covering them all, and each stored message is there for its
/// recipient.
#[tokio::test]
async fn sent_is_cumulative() {
    let relay = Relay::start().await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    for id in 1..=200 {
        alice
            .send(send_to_user(id, "bob", numbered(id), None))
            .await;
    }
    let mut sents = Vec::new();
    while sents.last() != Some(&200) {
        match alice.recv().await {
            RelayFrame::Sent { id } => sents.push(id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(sents.windows(2).all(|w| w[0] < w[1]), "{sents:?}");
    let mut bob = relay.registered("bob").await;
    for _ in 0..200 {
        delivery(&mut bob).await;
    }
    assert_eq!(bob.barrier().await, []);
}

/// Route ids must increase on a connection: one that does not is refused
/// (the connection stays open) and nothing is stored for it.
#[tokio::test]
async fn send_ids_must_increase() {
    let relay = Relay::start().await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    alice.send(send_to_user(5, "bob", b"five", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 5 });
    for id in [5, 4] {
        alice.send(send_to_user(id, "bob", b"again", None)).await;
        let refused = alice.recv().await;
        assert!(
            matches!(&refused, RelayFrame::Error { id: Some(i), code: ErrorCode::BadFrame, message } if *i == id && message == "send ids must increase"),
            "{refused:?}"
        );
    }
    alice.send(send_to_user(6, "bob", b"six", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 6 });
    let mut bob = relay.registered("bob").await;
    assert_eq!(delivery(&mut bob).await.1.as_ref(), b"five");
    assert_eq!(delivery(&mut bob).await.1.as_ref(), b"six");
    assert_eq!(bob.barrier().await, []);
}

#[tokio::test]
async fn offline_messages_wait_in_order_until_acknowledged() {
    let relay = Relay::start().await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    for (id, body) in [(1, &b"first"[..]), (2, b"second")] {
        alice
            .send(send_to_user(id, "bob", body, Some(b"slot")))
            .await;
        assert_eq!(alice.recv().await, RelayFrame::Sent { id });
    }
    let mut bob = relay.registered("bob").await;
    let mut deliveries = Vec::new();
    for expected in [&b"first"[..], b"second"] {
        let RelayFrame::Deliver {
            delivery,
            body,
            slot,
            ..
        } = bob.recv().await
        else {
            panic!()
        };
        assert_eq!(body.as_ref(), expected);
        assert_eq!(slot.as_deref(), Some(&b"slot"[..]));
        assert_ne!(delivery, 0);
        deliveries.push(delivery);
    }
    // Only the first is acknowledged: the second comes again next time.
    bob.send(ClientFrame::Ack {
        delivery: deliveries[0],
    })
    .await;
    bob.send(ClientFrame::Bye).await;
    assert!(bob.closed().await.is_empty());
    let mut bob = relay.registered("bob").await;
    let RelayFrame::Deliver { body, .. } = bob.recv().await else {
        panic!()
    };
    assert_eq!(body.as_ref(), b"second");
    // The stored queue is served before the next frame is read.
    assert_eq!(bob.barrier().await, []);
}

#[tokio::test]
async fn offline_queue_is_bounded() {
    let relay = Relay::start_with(|c| c.offline_max_messages = 2).await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    for id in 0..3 {
        alice
            .send(send_to_user(id, "bob", numbered(id), None))
            .await;
    }
    // One refusal, for the third; `Sent` (cumulative) covers the others
    // and never the third.
    let answers = alice.barrier().await;
    let refused: Vec<(Option<u64>, ErrorCode)> = answers
        .iter()
        .filter_map(|frame| match frame {
            RelayFrame::Error { id, code, .. } => Some((*id, *code)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [(Some(2), ErrorCode::QueueFull)]);
    let sent: Vec<u64> = answers
        .iter()
        .filter_map(|frame| match frame {
            RelayFrame::Sent { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(sent.last(), Some(&1), "{answers:?}");
    let error_at = answers
        .iter()
        .position(|f| matches!(f, RelayFrame::Error { .. }));
    assert!(
        error_at
            < answers
                .iter()
                .rposition(|f| matches!(f, RelayFrame::Sent { .. })),
        "the refusal comes before the Sent that would cover it: {answers:?}"
    );
}

#[tokio::test]
async fn an_offline_backlog_larger_than_the_outbound_queue_is_delivered() {
    let relay = Relay::start_with(|c| c.outbound_queue = 4).await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    for id in 1..=12 {
        alice
            .send(send_to_user(id, "bob", numbered(id), None))
            .await;
        assert_eq!(alice.recv().await, RelayFrame::Sent { id });
    }
    let mut bob = relay.registered("bob").await;
    for _ in 0..12 {
        let RelayFrame::Deliver { delivery, .. } = bob.recv().await else {
            panic!()
        };
        bob.send(ClientFrame::Ack { delivery }).await;
    }
    assert_eq!(bob.barrier().await, []);
    assert_eq!(
        relay
            .metrics
            .slow_consumers
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A connection's requests are answered in order: the answer to a request
/// after some sends comes after their answers, although those wait for
/// the commit; and a `Pong` after them all.
#[tokio::test]
async fn requests_are_answered_in_order() {
    let relay = Relay::start().await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    for round in 0..5 {
        let first = round * 100 + 1;
        for id in first..first + 100 {
            alice
                .send(send_to_user(id, "bob", numbered(id), None))
                .await;
        }
        alice.send(ClientFrame::ListUsers).await;
        let before = sent_through(&mut alice, first + 99).await;
        assert!(
            before.iter().all(|f| matches!(f, RelayFrame::Sent { .. })),
            "{before:?}"
        );
        assert!(matches!(alice.recv().await, RelayFrame::Users { .. }));
    }
    alice.send(send_to_user(1000, "bob", b"last", None)).await;
    let answers = alice.barrier().await;
    assert_eq!(answers, [RelayFrame::Sent { id: 1000 }]);
}

/// A `Send` of bytes the relay still stores for their recipients (a
/// client resending what it was not told was stored, on a new connection)
/// is answered `Sent` and stored no second time; once the recipient has
/// acknowledged it, the same bytes are a new delivery.
#[tokio::test]
async fn a_resend_of_what_is_stored_is_kept_once() {
    let relay = Relay::start().await;
    drop(relay.registered("bob").await);
    for _ in 0..2 {
        let mut alice = relay.registered("alice").await;
        alice.send(send_to_user(1, "bob", b"once", None)).await;
        assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });
        alice.send(send_to_user(2, "bob", b"once", None)).await;
        assert_eq!(alice.recv().await, RelayFrame::Sent { id: 2 });
    }
    // Another sender's identical bytes are its own delivery.
    let mut carol = relay.registered("carol").await;
    carol.send(send_to_user(1, "bob", b"once", None)).await;
    assert_eq!(carol.recv().await, RelayFrame::Sent { id: 1 });
    let mut bob = relay.registered("bob").await;
    let (first, _) = delivery(&mut bob).await;
    let (second, _) = delivery(&mut bob).await;
    assert_eq!(bob.barrier().await, [], "alice's once, carol's once");
    for id in [first, second] {
        bob.send(ClientFrame::Ack { delivery: id }).await;
    }
    bob.barrier().await;
    let mut alice = relay.registered("alice").await;
    alice.send(send_to_user(1, "bob", b"once", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });
    let (third, body) = delivery(&mut bob).await;
    assert!(third > second);
    assert_eq!(body.as_ref(), b"once");
}
