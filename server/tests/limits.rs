//! What one identity key or one source address can take of a relay: names
//! in the directory, connections, room fan-out and queued bytes (issue 11,
//! item 4: "one key fills the relay"); and what one connection can: a slow
//! reader is disconnected, a flood slowed down, a silent or unregistered
//! connection closed. Real relay, real TLS clients.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Relay, identity, room, user, welcome};
use sotto_proto::{ClientFrame, Destination, ErrorCode, RelayFrame, Route};

fn to_room(id: u64, name: &str, body: Bytes) -> ClientFrame {
    ClientFrame::Send {
        route: Route {
            id,
            to: Destination::Room(room(name)),
        },
        body,
        slots: Vec::new(),
    }
}

/// The code of an `Error` frame (panics on any other frame).
fn code(frame: &RelayFrame) -> (Option<u64>, ErrorCode) {
    match frame {
        RelayFrame::Error { id, code, .. } => (*id, *code),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The next frame that is not presence (joins of others).
async fn next_not_presence(client: &mut Client) -> RelayFrame {
    loop {
        match client.recv().await {
            RelayFrame::Presence { .. } => {}
            frame => return frame,
        }
    }
}

/// A barrier ([`Client::barrier`]) before which only presence (joins of
/// others) may come.
async fn barrier(client: &mut Client) {
    for frame in client.barrier().await {
        assert!(
            matches!(frame, RelayFrame::Presence { .. }),
            "unexpected {frame:?} before the barrier"
        );
    }
}

#[tokio::test]
async fn one_key_registers_at_most_its_limit_of_names() {
    let relay = Relay::start_with(|c| c.max_names_per_key = 2).await;
    let mallory = identity("mallory");
    let mut first = relay.client().await;
    assert_eq!(first.register("m1", mallory).await, welcome("m1"));
    let mut second = relay.client().await;
    assert_eq!(second.register("m2", mallory).await, welcome("m2"));
    let mut third = relay.client().await;
    let refused = third.register("m3", mallory).await;
    assert_eq!(code(&refused), (None, ErrorCode::LimitReached));
    // The connection stays open: a name the key owns still registers.
    assert_eq!(third.register("M2", mallory).await, welcome("m2"));
    // m3 was not bound to mallory: anyone may take it.
    let mut bob = relay.client().await;
    assert_eq!(bob.register("m3", identity("bob")).await, welcome("m3"));
    assert_eq!(relay.metrics.key_limit_refusals.load(Ordering::Relaxed), 1);
    drop(first);
}

#[tokio::test]
async fn one_key_holds_at_most_its_limit_of_connections() {
    let relay = Relay::start_with(|c| c.max_connections_per_key = 2).await;
    let mallory = identity("mallory");
    let mut first = relay.client().await;
    assert!(matches!(
        first.register("m1", mallory).await,
        RelayFrame::Registered { .. }
    ));
    let mut second = relay.client().await;
    assert!(matches!(
        second.register("m2", mallory).await,
        RelayFrame::Registered { .. }
    ));
    // A new login of a name it has replaces that connection: allowed.
    let mut again = relay.client().await;
    assert!(matches!(
        again.register("m2", mallory).await,
        RelayFrame::Registered { .. }
    ));
    assert!(second.closed().await.is_empty());

    // A third connection is refused, and closed so that it holds no slot.
    let mut third = relay.client().await;
    let refused = third.register("m3", mallory).await;
    assert_eq!(code(&refused), (None, ErrorCode::LimitReached));
    assert!(third.closed().await.is_empty());
    // Others are unaffected.
    relay.registered("alice").await;

    // Once one of its connections ends, the key may connect again.
    first.send(ClientFrame::Bye).await;
    assert!(first.closed().await.is_empty());
    // The relay forgets the connection before it closes it.
    let mut fourth = relay.client().await;
    let reply = fourth.register("m3", mallory).await;
    assert_eq!(reply, welcome("m3"));
}

/// One key opens as many connections as the relay lets it (each under a
/// name of its own); a newcomer can still register, in the reserve the
/// relay keeps for keys that hold no connection.
#[tokio::test]
async fn a_key_filling_the_relay_leaves_room_for_a_new_user() {
    let relay = Relay::start_with(|c| {
        c.max_connections = 10;
        c.max_connections_per_key = 100;
        c.max_names_per_key = 100;
    })
    .await;
    let mallory = identity("mallory");
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() < 10, "one key took every slot");
        let mut client = relay.client().await;
        match client.register(&format!("m{}", held.len()), mallory).await {
            RelayFrame::Registered { .. } => held.push(client),
            frame => {
                assert!(client.closed().await.is_empty());
                break frame;
            }
        }
    };
    assert_eq!(code(&refused), (None, ErrorCode::LimitReached));
    assert_eq!(held.len(), 9, "all but the reserve (a tenth)");

    // Bob, who holds nothing, gets the last slot.
    let mut bob = relay.registered("bob").await;
    barrier(&mut bob).await;
    assert_eq!(relay.metrics.key_limit_refusals.load(Ordering::Relaxed), 1);
}

/// Several keys from one address fill the relay; when it is nearly full,
/// that address gets no further connection (closed before the TLS
/// handshake), while a newcomer from another address still registers.
#[tokio::test]
async fn an_address_filling_the_relay_leaves_room_for_another() {
    let relay = Relay::start_with(|c| {
        c.max_connections = 10;
        c.max_connections_per_key = 3;
    })
    .await;
    let mut held = Vec::new();
    for (key, count) in [("alice", 3), ("carol", 3), ("dave", 2), ("erin", 1)] {
        for i in 0..count {
            let mut client = relay.client().await;
            let reply = client.register(&format!("{key}{i}"), identity(key)).await;
            assert!(matches!(reply, RelayFrame::Registered { .. }), "{reply:?}");
            held.push(client);
        }
    }
    // Nine of ten slots are taken from 127.0.0.1: the tenth is not for it.
    assert!(Client::try_connect(&relay.address).await.is_none());
    assert_eq!(relay.metrics.connections_refused.load(Ordering::Relaxed), 1);
    let mut bob = Client::try_connect_from(&relay.address, "127.0.0.2")
        .await
        .expect("another address gets the last slot");
    assert_eq!(bob.register("bob", identity("bob")).await, welcome("bob"));
}

#[tokio::test]
async fn unregistered_connections_from_one_address_are_limited() {
    let relay = Relay::start_with(|c| c.max_unregistered_per_ip = 2).await;
    let mut first = Client::try_connect(&relay.address).await.unwrap();
    let _second = Client::try_connect(&relay.address).await.unwrap();
    // A third one from the same address is closed before its handshake.
    assert!(Client::try_connect(&relay.address).await.is_none());
    assert_eq!(relay.metrics.connections_refused.load(Ordering::Relaxed), 1);

    // A registered connection no longer counts.
    assert!(matches!(
        first.register("alice", identity("alice")).await,
        RelayFrame::Registered { .. }
    ));
    let mut third = Client::try_connect(&relay.address).await.unwrap();
    assert!(matches!(
        third.register("bob", identity("bob")).await,
        RelayFrame::Registered { .. }
    ));
}

/// A room message costs its sender's key its size times the other
/// members; past the burst the relay refuses it (`RateLimited`), and a
/// message that could never fit is `TooLarge`. Nobody gets a refused
/// message.
#[tokio::test]
async fn room_fan_out_is_bounded_per_key() {
    let relay = Relay::start_with(|c| {
        c.max_frame_len = 64 * 1024;
        c.fanout_burst_bytes = 100_000;
        c.fanout_bytes_per_sec = 1;
    })
    .await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        assert!(matches!(client.join("r").await, RelayFrame::Joined { .. }));
    }
    barrier(&mut alice).await;

    let big = Bytes::from(vec![0xb1; 30_000]);
    // 30,000 bytes to two members: 60,000 of 100,000.
    alice.send(to_room(1, "r", big.clone())).await;
    assert_eq!(
        next_not_presence(&mut alice).await,
        RelayFrame::Sent { id: 1 }
    );
    // Another 60,000 do not fit in what is left.
    alice.send(to_room(2, "r", big.clone())).await;
    let refused = next_not_presence(&mut alice).await;
    assert_eq!(code(&refused), (Some(2), ErrorCode::RateLimited));
    // 120,000 never fit.
    alice
        .send(to_room(3, "r", Bytes::from(vec![0xb3; 60_000])))
        .await;
    let refused = next_not_presence(&mut alice).await;
    assert_eq!(code(&refused), (Some(3), ErrorCode::TooLarge));
    // A small message still goes through.
    alice.send(to_room(4, "r", Bytes::from_static(b"hi"))).await;
    assert_eq!(
        next_not_presence(&mut alice).await,
        RelayFrame::Sent { id: 4 }
    );

    for member in [&mut bob, &mut carol] {
        let bodies: Vec<usize> = [
            next_not_presence(member).await,
            next_not_presence(member).await,
        ]
        .iter()
        .map(|frame| match frame {
            RelayFrame::Deliver { body, .. } => body.len(),
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect();
        assert_eq!(bodies, vec![30_000, 2], "the refused messages never came");
        barrier(member).await;
    }
    assert_eq!(relay.metrics.fanout_refused.load(Ordering::Relaxed), 2);

    // Logging in again does not refill the budget: it belongs to the key.
    alice.send(ClientFrame::Bye).await;
    assert!(alice.closed().await.is_empty());
    let mut alice = relay.registered("alice").await;
    // Still a member: the room comes right after the registration.
    assert!(matches!(alice.recv().await, RelayFrame::Joined { .. }));
    alice.send(to_room(5, "r", big)).await;
    let refused = next_not_presence(&mut alice).await;
    assert_eq!(code(&refused), (Some(5), ErrorCode::RateLimited));
}

/// A large room message (its body shared by the members' frames, and
/// written without being copied) reaches every member intact, each with
/// its own slot.
#[tokio::test]
async fn a_large_room_message_reaches_every_member_intact() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;
    let mut dave = relay.registered("dave").await;
    for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
        assert!(matches!(client.join("r").await, RelayFrame::Joined { .. }));
    }
    barrier(&mut alice).await;
    let body: Bytes = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let slot = |to: &str, byte: u8| sotto_proto::Slot {
        to: user(to),
        data: Bytes::from(vec![byte; 80]),
    };
    alice
        .send(ClientFrame::Send {
            route: Route {
                id: 9,
                to: Destination::Room(room("r")),
            },
            body: body.clone(),
            slots: vec![slot("bob", 1), slot("carol", 2)],
        })
        .await;
    assert_eq!(
        next_not_presence(&mut alice).await,
        RelayFrame::Sent { id: 9 }
    );
    for (member, own) in [
        (&mut bob, Some(1)),
        (&mut carol, Some(2)),
        (&mut dave, None),
    ] {
        match next_not_presence(member).await {
            RelayFrame::Deliver {
                body: got, slot, ..
            } => {
                assert!(got == body, "the body arrived intact");
                assert_eq!(slot, own.map(|b| Bytes::from(vec![b; 80])));
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// A reader that stops reading is not cut off and loses nothing: its
/// deliveries wait in the relay's store, the memory queued for it stays
/// within `outbound_queue_bytes` (and half of it is kept for its other
/// frames), its sender is not held up, and once it reads again it gets
/// every message, in order.
#[tokio::test]
async fn a_stopped_reader_loses_nothing_and_its_queue_stays_bounded() {
    const LIMIT: usize = 128 * 1024;
    let relay = Relay::start_with(|c| {
        c.max_frame_len = 64 * 1024;
        c.outbound_queue_bytes = LIMIT;
    })
    .await;
    let mut alice = relay.registered("alice").await;
    let mut sloth = relay.registered("bob").await;
    alice.join("r").await;
    sloth.join("r").await;
    barrier(&mut sloth).await;
    barrier(&mut alice).await;

    // Bob stops reading. 400 frames of 60,000 bytes: 24 MB, more than the
    // sockets' buffers hold.
    // Each body its own (the relay stores identical bytes from one sender
    // to the same recipients once).
    let body = |id: u64| {
        let mut bytes = vec![0x5a; 60_000];
        bytes[..8].copy_from_slice(&id.to_be_bytes());
        Bytes::from(bytes)
    };
    for id in 1..=400 {
        alice.send(to_room(id, "r", body(id))).await;
    }
    sent_through(&mut alice, 400).await;
    assert_eq!(relay.metrics.slow_consumers.load(Ordering::Relaxed), 0);
    let peak = relay.metrics.outbound_bytes_peak.load(Ordering::Relaxed);
    assert!(
        peak <= LIMIT as u64,
        "queued bytes stayed within the bound: {peak}"
    );

    // Bob reads again: everything, once, in order.
    for id in 1..=400 {
        match next_not_presence(&mut sloth).await {
            RelayFrame::Deliver { body: got, .. } => assert_eq!(got, body(id), "message {id}"),
            other => panic!("expected message {id}, got {other:?}"),
        }
    }
    barrier(&mut sloth).await;
}

/// Reads frames until a cumulative `Sent` covers `id`; any error fails.
async fn sent_through(client: &mut Client, id: u64) {
    loop {
        match next_not_presence(client).await {
            RelayFrame::Sent { id: sent } if sent >= id => return,
            RelayFrame::Sent { .. } => {}
            other => panic!("expected Sent up to {id}, got {other:?}"),
        }
    }
}

/// An existing but empty database (a `relay.redb` truncated to zero
/// bytes) stops the relay from starting, with an error naming the file,
/// instead of being replaced by an empty one; a fresh directory still
/// gets a new database.
#[tokio::test]
async fn an_empty_database_file_stops_the_relay() {
    use sotto_relay::store::{DATABASE_FILE, StoreError};
    use sotto_relay::{CertSource, CertStore, Config, RelayError};

    let dir = tempfile::tempdir().unwrap();
    let certs = CertStore::load(CertSource::Generated {
        dir: dir.path().to_path_buf(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    let database = dir.path().join(DATABASE_FILE);
    std::fs::write(&database, b"").unwrap();
    let config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outcome = sotto_relay::run(listener, certs, config, std::future::pending::<()>()).await;
    let Err(RelayError::Store(StoreError::Unusable { path, .. })) = &outcome else {
        panic!("expected the database to be refused, got {outcome:?}");
    };
    assert_eq!(path, &database);
    let message = outcome.unwrap_err().to_string();
    assert!(
        message.contains(&database.display().to_string()),
        "{message}"
    );
    assert_eq!(
        std::fs::metadata(&database).unwrap().len(),
        0,
        "left as it was"
    );

    // A fresh directory: the relay creates its database and serves.
    let mut relay = Relay::start().await;
    relay.registered("alice").await;
    assert!(relay.dir.join(DATABASE_FILE).metadata().unwrap().len() > 0);
    relay.stop().await;
}

/// The `relay` binary exits with an error naming the empty database.
#[tokio::test]
async fn the_relay_binary_refuses_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join(sotto_relay::store::DATABASE_FILE);
    std::fs::write(&database, b"").unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--host",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the relay exits")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&database.display().to_string()),
        "the error names the file: {stderr}"
    );
    assert_eq!(std::fs::metadata(&database).unwrap().len(), 0);
}

/// One member that stops reading holds up no one: the others get every
/// message at the sender's pace, while the stopped member's deliveries
/// wait, counted in frames too (its queue holds 64), and come once it reads.
#[tokio::test]
async fn a_stopped_reader_stalls_nobody() {
    // Alice is held to 200 frames/s, which Bob reads easily; Carol reads
    // nothing, and her queue of 64 frames would fill within a second.
    let relay = Relay::start_with(|c| {
        c.outbound_queue = 64;
        c.rate_per_sec = 200;
        c.rate_burst = 50;
    })
    .await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut sloth = relay.registered("carol").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    sloth.join("lobby").await;
    alice.recv().await;
    alice.recv().await;
    bob.recv().await;

    let big = |id: u64| {
        let mut bytes = vec![0x42; 60_000];
        bytes[..8].copy_from_slice(&id.to_be_bytes());
        Bytes::from(bytes)
    };
    let sender = tokio::spawn(async move {
        for id in 1..=400 {
            alice.send(to_room(id, "lobby", big(id))).await;
        }
        sent_through(&mut alice, 400).await;
        alice
    });
    let mut received = 0;
    while received < 400 {
        match bob.recv().await {
            RelayFrame::Deliver { .. } => received += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let _alice = sender.await.unwrap();
    assert_eq!(relay.metrics.slow_consumers.load(Ordering::Relaxed), 0);
    let mut late = 0;
    while late < 400 {
        match sloth.recv().await {
            RelayFrame::Deliver { .. } => late += 1,
            RelayFrame::Presence { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_flooding_client_is_slowed_down_not_dropped() {
    let relay = Relay::start_with(|c| {
        c.rate_per_sec = 50;
        c.rate_burst = 10;
    })
    .await;
    let mut alice = relay.registered("alice").await;
    let started = std::time::Instant::now();
    for nonce in 0..60 {
        alice.send(ClientFrame::Ping { nonce }).await;
    }
    for nonce in 0..60 {
        assert_eq!(alice.recv().await, RelayFrame::Pong { nonce });
    }
    // 60 frames at 50/s after a burst of 10 (plus the registration) cannot
    // take less than about one second: a lower bound, not a timing target.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unregistered_connection_is_closed_after_the_timeout() {
    let relay = Relay::start_with(|c| c.handshake_timeout = Duration::from_millis(500)).await;
    let mut idle = relay.client().await;
    assert!(idle.closed().await.is_empty());
    // A TCP connection that never starts TLS is dropped as well.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", relay.address.port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut socket, &mut buf),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_dropped() {
    let relay = Relay::start_with(|c| {
        c.keepalive_interval = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(700);
    })
    .await;
    let mut silent = relay.registered("alice").await;
    let mut lively = relay.registered("bob").await;
    // The silent one sees pings and is closed, while the lively one, which
    // keeps talking, stays.
    let keep_talking = async {
        for _ in 0..8 {
            lively.send(ClientFrame::ListRooms).await;
            assert_eq!(lively.recv().await, RelayFrame::Rooms { rooms: vec![] });
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let (seen, ()) = tokio::join!(silent.closed(), keep_talking);
    assert!(
        seen.iter().any(|f| matches!(f, RelayFrame::Ping { .. })),
        "{seen:?}"
    );
}
