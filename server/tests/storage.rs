//! The relay's disk fills up, then space is given back: real relay, real
//! TLS clients, the real database file under redb's own file backend,
//! whose writes and syncs a `Disk` makes fail with `StorageFull` as a full
//! disk does (`sotto_relay::store::fault`).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Relay, free_port, http_get, identity, numbered, send_to_user, welcome};
use sotto_proto::{ClientFrame, ErrorCode, RelayFrame};
use sotto_relay::store::fault::Disk;
use sotto_relay::store::{DATABASE_FILE, Recovery};
use std::sync::atomic::Ordering;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Reopens at the first operation after a failure (no backoff).
const AT_ONCE: Recovery = Recovery {
    first_retry: Duration::ZERO,
    max_retry: Duration::ZERO,
};

/// One event the relay logged: its level and fields.
#[derive(Clone, Debug)]
struct Logged {
    level: tracing::Level,
    fields: Vec<(String, String)>,
}

impl Logged {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Capture(Arc<Mutex<Vec<Logged>>>);

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().to_string(), value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(Logged {
            level: *event.metadata().level(),
            fields: fields.0,
        });
    }
}

/// Everything logged in this test process (the relay's store logs from
/// the blocking pool's threads, so the capture is global).
fn logged() -> &'static Arc<Mutex<Vec<Logged>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<Logged>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&log)));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    })
}

/// The storage failures logged for the database of `relay`, as their
/// `operation` fields.
fn failures_logged(relay: &Relay) -> Vec<String> {
    let database = relay.dir.join(DATABASE_FILE).display().to_string();
    logged()
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.level == tracing::Level::ERROR && e.field("database") == Some(&database))
        .filter_map(|e| e.field("operation").map(str::to_string))
        .collect()
}

/// While the relay's disk is full, a message for an offline user is
/// refused to its sender (an error, never `Sent`) and a new name is not
/// registered, and the log says so; once space is back, the same relay,
/// not restarted, stores and delivers again, and what it had stored
/// before the fault is delivered too.
#[tokio::test]
async fn a_full_disk_refuses_what_it_cannot_keep_and_the_relay_recovers_without_a_restart() {
    let log = logged();
    let disk = Disk::new();
    let relay = Relay::start_on_disk(&disk, AT_ONCE).await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    alice
        .send(send_to_user(1, "bob", b"before the fault", None))
        .await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });

    disk.fill();
    alice
        .send(send_to_user(2, "bob", b"while full", None))
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayFrame::Error {
            id: Some(2),
            code: ErrorCode::Internal,
            ..
        }
    ));
    let mut carol = relay.client().await;
    assert!(matches!(
        carol.register("carol", identity("carol")).await,
        RelayFrame::Error {
            id: None,
            code: ErrorCode::Internal,
            ..
        }
    ));
    let failed = failures_logged(&relay);
    assert!(failed.iter().any(|op| op == "apply"), "{failed:?}");
    assert!(failed.iter().any(|op| op == "claim"), "{failed:?}");
    assert!(relay.metrics.storage_failures.load(Ordering::Relaxed) >= 2);
    // The refusals are logged where they are answered too.
    assert!(log.lock().unwrap().iter().any(|e| {
        e.level == tracing::Level::WARN
            && e.field("message")
                .is_some_and(|m| m.starts_with("a batch of writes failed"))
    }));

    disk.free();
    alice
        .send(send_to_user(3, "bob", b"after the fault", None))
        .await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 3 });
    let mut carol = relay.client().await;
    assert_eq!(
        carol.register("carol", identity("carol")).await,
        welcome("carol")
    );
    assert!(relay.metrics.storage_reopened.load(Ordering::Relaxed) >= 1);
    assert_eq!(relay.metrics.storage_unavailable.load(Ordering::Relaxed), 0);

    let mut bob = relay.registered("bob").await;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let RelayFrame::Deliver { delivery, body, .. } = bob.recv().await else {
            panic!("expected a delivery")
        };
        bob.send(ClientFrame::Ack { delivery }).await;
        bodies.push(body);
    }
    assert_eq!(bodies, [&b"before the fault"[..], b"after the fault"]);
    assert_eq!(bob.barrier().await, []);
}

/// `/health` says the relay cannot serve while its database waits to be
/// reopened after a full disk (503 and why, for a load balancer to send
/// users elsewhere), and `ok` again once space is back; `/metrics` is
/// served throughout.
#[tokio::test]
async fn the_health_endpoint_tells_a_full_disk() {
    logged();
    let disk = Disk::new();
    let port = free_port();
    let relay = Relay::start_on_disk_with(&disk, AT_ONCE, |c| {
        c.metrics = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    assert!(http_get(port, "/health").await.ends_with("\r\n\r\nok\n"));

    disk.fill();
    alice
        .send(send_to_user(1, "bob", b"while full", None))
        .await;
    assert!(matches!(
        alice.recv().await,
        RelayFrame::Error {
            code: ErrorCode::Internal,
            ..
        }
    ));
    let health = http_get(port, "/health").await;
    assert!(
        health.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{health}"
    );
    assert!(
        health.ends_with("\r\n\r\nstorage unavailable: the database waits to be reopened\n"),
        "{health}"
    );
    let metrics = http_get(port, "/metrics").await;
    assert!(
        metrics.contains("\nsotto_relay_storage_unavailable 1\n"),
        "{metrics}"
    );

    disk.free();
    alice.send(send_to_user(2, "bob", b"after", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 2 });
    assert!(http_get(port, "/health").await.ends_with("\r\n\r\nok\n"));
}

/// A disk that stays full is not reopened at every message: with the
/// relay's backoff, messages are refused without touching the file until
/// the next attempt is due.
#[tokio::test]
async fn a_disk_that_stays_full_is_not_reopened_at_every_message() {
    logged();
    let disk = Disk::new();
    let hour = Duration::from_secs(3600);
    let relay = Relay::start_on_disk(
        &disk,
        Recovery {
            first_retry: hour,
            max_retry: hour,
        },
    )
    .await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    disk.fill();
    let opens = disk.opens();
    for id in 0..20 {
        alice
            .send(send_to_user(id, "bob", numbered(id), None))
            .await;
        assert!(matches!(
            alice.recv().await,
            RelayFrame::Error {
                code: ErrorCode::Internal,
                ..
            }
        ));
    }
    assert_eq!(disk.opens(), opens);
    assert_eq!(relay.metrics.storage_unavailable.load(Ordering::Relaxed), 1);
    // The log says when the database will be tried again.
    let database = relay.dir.join(DATABASE_FILE).display().to_string();
    let announced: Vec<String> = logged()
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.level == tracing::Level::ERROR && e.field("database") == Some(&database))
        .filter_map(|e| e.field("retry_in_ms").map(str::to_string))
        .collect();
    assert_eq!(announced, ["3600000"]);
}

/// A user who connects while the relay's disk is full still gets what
/// was stored for them. Their acknowledgement is committed without an
/// fsync (a lost one only means a duplicate): if the full disk loses it,
/// the delivery comes again once space is back, with the same id, and
/// acknowledged then, it is gone. Either way nothing is lost before it
/// is acknowledged.
#[tokio::test]
async fn what_was_stored_is_delivered_while_the_disk_is_full_and_kept_until_acknowledged() {
    let disk = Disk::new();
    let relay = Relay::start_on_disk(&disk, AT_ONCE).await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    alice.send(send_to_user(1, "bob", b"stored", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });

    disk.fill();
    let mut bob = relay.registered("bob").await;
    let RelayFrame::Deliver { delivery, body, .. } = bob.recv().await else {
        panic!("expected the stored delivery")
    };
    assert_eq!(body.as_ref(), b"stored");
    bob.send(ClientFrame::Ack { delivery }).await;
    assert_eq!(bob.barrier().await, []);
    bob.send(ClientFrame::Bye).await;
    assert!(bob.closed().await.is_empty());

    disk.free();
    // A message after the fault makes everything before it durable.
    alice.send(send_to_user(2, "bob", b"after", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 2 });
    let mut bob = relay.registered("bob").await;
    let mut bodies = Vec::new();
    loop {
        let RelayFrame::Deliver {
            delivery: got,
            body,
            ..
        } = bob.recv().await
        else {
            panic!("expected a delivery")
        };
        if body.as_ref() == b"stored" {
            assert_eq!(got, delivery, "a duplicate keeps its id");
        }
        bob.send(ClientFrame::Ack { delivery: got }).await;
        bodies.push(body);
        if bodies.last().is_some_and(|b| b.as_ref() == b"after") {
            break;
        }
    }
    assert!(
        bodies == [&b"after"[..]] || bodies == [&b"stored"[..], b"after"],
        "{bodies:?}"
    );
    bob.send(ClientFrame::Bye).await;
    assert!(bob.closed().await.is_empty());
    let mut bob = relay.registered("bob").await;
    assert_eq!(bob.barrier().await, []);
}
