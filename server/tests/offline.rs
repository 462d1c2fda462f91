//! The offline queue through a live relay: deliveries wait, in order,
//! until acknowledged, within their bounds. Real relay, real TLS clients.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{Relay, send_to_user};
use sotto_proto::{ClientFrame, ErrorCode, RelayFrame};

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
        alice.send(send_to_user(id, "bob", b"x", None)).await;
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
    let error_at = answers.iter().position(|f| matches!(f, RelayFrame::Error { .. }));
    assert!(
        error_at < answers.iter().rposition(|f| matches!(f, RelayFrame::Sent { .. })),
        "the refusal comes before the Sent that would cover it: {answers:?}"
    );
}

#[tokio::test]
async fn an_offline_backlog_larger_than_the_outbound_queue_is_delivered() {
    let relay = Relay::start_with(|c| c.outbound_queue = 4).await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    for id in 1..=12 {
        alice.send(send_to_user(id, "bob", b"waiting", None)).await;
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
