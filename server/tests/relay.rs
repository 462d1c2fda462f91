//! The relay end to end: real TLS on 127.0.0.1:0, real clients.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{
    Client, Relay, free_port, http_get, identity, numbered, room, send_to_room, send_to_user, user,
    welcome,
};
use sotto_proto::{
    ClientFrame, Destination, ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, UserInfo,
};
use tokio::io::AsyncWriteExt;

fn members(frame: &RelayFrame) -> Vec<String> {
    let RelayFrame::Joined { members, .. } = frame else {
        panic!("expected Joined, got {frame:?}")
    };
    members
        .iter()
        .map(|m: &Member| m.name.to_string())
        .collect()
}

#[tokio::test]
async fn registration_needs_a_proof_for_this_relays_challenge() {
    let relay = Relay::start().await;
    let alice = identity("alice");

    // A proof for another challenge (say, relayed from another session).
    let mut client = relay.client().await;
    let stale = alice
        .sign_registration(&mut rand::rng(), &client.relay, &[0; 32], "alice")
        .unwrap();
    client
        .send(ClientFrame::Register {
            name: user("alice"),
            identity: Bytes::from(alice.public().to_bytes()),
            proof: Bytes::from(stale),
        })
        .await;
    let RelayFrame::Error { code, .. } = client.recv().await else {
        panic!()
    };
    assert_eq!(code, ErrorCode::BadProof);

    // A proof made for another relay's certificate.
    let mut client = relay.client().await;
    let elsewhere = alice
        .sign_registration(&mut rand::rng(), &[9; 32], &client.challenge, "alice")
        .unwrap();
    client
        .send(ClientFrame::Register {
            name: user("alice"),
            identity: Bytes::from(alice.public().to_bytes()),
            proof: Bytes::from(elsewhere),
        })
        .await;
    let RelayFrame::Error { code, .. } = client.recv().await else {
        panic!()
    };
    assert_eq!(code, ErrorCode::BadProof);

    // Nothing but registration is served before it.
    client.send(ClientFrame::ListUsers).await;
    let RelayFrame::Error { code, .. } = client.recv().await else {
        panic!()
    };
    assert_eq!(code, ErrorCode::NotRegistered);

    // The right proof works on the same connection.
    assert_eq!(client.register("alice", alice).await, welcome("alice"));
}

#[tokio::test]
async fn a_name_stays_bound_to_its_key_in_any_letter_case() {
    let relay = Relay::start().await;
    drop(relay.registered("alice").await);

    for claimed in ["alice", "ALICE", "Alice"] {
        let mut mallory = relay.client().await;
        let RelayFrame::Error { code, .. } = mallory.register(claimed, identity("mallory")).await
        else {
            panic!("{claimed} was given to another key")
        };
        assert_eq!(code, ErrorCode::NameTaken);
    }
    // Alice herself gets it back, and a second login replaces the first.
    let mut first = relay.registered("alice").await;
    let _second = relay.registered("alice").await;
    assert!(first.closed().await.is_empty());
    assert!(
        relay
            .metrics
            .registrations_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
}

#[tokio::test]
async fn rooms_presence_and_listings_follow_the_seed_chat() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;

    assert_eq!(members(&alice.join("lobby").await), vec!["alice"]);
    assert_eq!(members(&bob.join("lobby").await), vec!["alice", "bob"]);
    // Alice hears Bob join, with his public identity as a hint.
    let RelayFrame::Presence {
        room: r,
        user: u,
        event,
        identity: id,
        prekeys,
    } = alice.recv().await
    else {
        panic!()
    };
    assert_eq!(
        (r, u, event),
        (room("lobby"), user("bob"), PresenceEvent::Joined)
    );
    assert_eq!(
        id.unwrap(),
        Bytes::from(identity("bob").public().to_bytes())
    );
    // Bob published no prekey.
    assert!(prekeys.is_empty());

    bob.join("ops").await;
    alice.send(ClientFrame::ListUsers).await;
    assert_eq!(
        alice.recv().await,
        RelayFrame::Users {
            users: vec![
                UserInfo {
                    name: user("alice"),
                    rooms: vec![room("lobby")]
                },
                UserInfo {
                    name: user("bob"),
                    rooms: vec![room("lobby"), room("ops")]
                },
            ]
        }
    );
    alice.send(ClientFrame::ListRooms).await;
    assert_eq!(
        alice.recv().await,
        RelayFrame::Rooms {
            rooms: vec![
                RoomInfo {
                    name: room("lobby"),
                    members: 2
                },
                RoomInfo {
                    name: room("ops"),
                    members: 1
                },
            ]
        }
    );

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
    let RelayFrame::Presence { user: u, event, .. } = alice.recv().await else {
        panic!()
    };
    assert_eq!((u, event), (user("bob"), PresenceEvent::Left));
    bob.send(ClientFrame::Leave {
        room: room("lobby"),
    })
    .await;
    let RelayFrame::Error { code, .. } = bob.recv().await else {
        panic!()
    };
    assert_eq!(code, ErrorCode::NotMember);

    bob.join("lobby").await;
    let _joined = alice.recv().await;
    drop(bob);
    let RelayFrame::Presence { user: u, event, .. } = alice.recv().await else {
        panic!()
    };
    assert_eq!((u, event), (user("bob"), PresenceEvent::Disconnected));
}

#[tokio::test]
async fn room_message_fans_out_each_member_getting_only_its_slot() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;
    let mut dave = relay.registered("dave").await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.join("lobby").await;
    }
    // Drain the presence notices.
    alice.recv().await;
    alice.recv().await;
    bob.recv().await;

    alice
        .send(send_to_room(
            7,
            "lobby",
            b"ciphertext",
            &[
                ("bob", b"bob-slot"),
                ("carol", b"carol-slot"),
                ("dave", b"x"),
            ],
        ))
        .await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 7 });
    for (client, slot) in [(&mut bob, &b"bob-slot"[..]), (&mut carol, b"carol-slot")] {
        let RelayFrame::Deliver {
            delivery,
            from,
            to,
            body,
            slot: got,
        } = client.recv().await
        else {
            panic!("expected a delivery");
        };
        assert_ne!(delivery, 0, "stored until acknowledged");
        assert_eq!(
            (from, to, body, got),
            (
                user("alice"),
                Destination::Room(room("lobby")),
                Bytes::from_static(b"ciphertext"),
                Some(Bytes::copy_from_slice(slot)),
            )
        );
    }
    // Dave is not in the room: nothing for him, whatever the slots say
    // (queued before alice's `Sent`, so before dave's pong, if at all).
    assert_eq!(dave.barrier().await, []);
    // And he cannot post to it.
    dave.send(send_to_room(1, "lobby", b"x", &[])).await;
    assert!(matches!(
        dave.recv().await,
        RelayFrame::Error {
            id: Some(1),
            code: ErrorCode::NotMember,
            ..
        }
    ));
}

#[tokio::test]
async fn direct_message_reaches_only_its_recipient() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;

    alice.send(send_to_user(3, "Bob", b"for bob", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 3 });
    let RelayFrame::Deliver { from, to, body, .. } = bob.recv().await else {
        panic!()
    };
    assert_eq!(
        (from, to, body),
        (
            user("alice"),
            Destination::User(user("Bob")),
            Bytes::from_static(b"for bob")
        )
    );
    assert_eq!(carol.barrier().await, []);

    alice.send(send_to_user(4, "nobody", b"x", None)).await;
    assert!(matches!(
        alice.recv().await,
        RelayFrame::Error {
            id: Some(4),
            code: ErrorCode::NoSuchUser,
            ..
        }
    ));
}

#[tokio::test]
async fn key_directory_answers_with_the_registered_identity() {
    let relay = Relay::start().await;
    drop(relay.registered("bob").await);
    let mut alice = relay.registered("alice").await;
    alice
        .send(ClientFrame::LookupKey { name: user("BOB") })
        .await;
    assert_eq!(
        alice.recv().await,
        RelayFrame::Key {
            name: user("bob"),
            identity: Some(Bytes::from(identity("bob").public().to_bytes())),
            prekeys: Vec::new(),
        }
    );
    alice
        .send(ClientFrame::LookupKey {
            name: user("nobody"),
        })
        .await;
    assert_eq!(
        alice.recv().await,
        RelayFrame::Key {
            name: user("nobody"),
            identity: None,
            prekeys: Vec::new(),
        }
    );
}

/// Raw bytes on a TLS connection, outside the codec.
async fn raw(relay: &Relay, bytes: &[u8]) -> Client {
    let mut client = relay.client().await;
    client.framed.get_mut().write_all(bytes).await.unwrap();
    client.framed.get_mut().flush().await.unwrap();
    client
}

#[tokio::test]
async fn bad_input_closes_only_the_offending_connection() {
    let relay = Relay::start_with(|c| c.max_frame_len = 4096).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    alice.recv().await;

    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "garbage",
            b"\x00\x00\x00\x05\x03\xff\xff\xff\xff".to_vec(),
            ErrorCode::BadFrame,
        ),
        (
            "wrong version",
            b"\x00\x00\x00\x02\x07\x03".to_vec(),
            ErrorCode::UnsupportedVersion,
        ),
        (
            "oversized",
            5000u32.to_be_bytes().to_vec(),
            ErrorCode::TooLarge,
        ),
        ("zero length", vec![0, 0, 0, 0], ErrorCode::BadFrame),
        (
            "truncated then closed",
            b"\x00\x00\x00\x10\x03\x05".to_vec(),
            ErrorCode::BadFrame,
        ),
    ];
    for (id, (what, bytes, code)) in (1..).zip(cases) {
        let mut bad = raw(&relay, &bytes).await;
        if what.starts_with("truncated") {
            bad.framed.get_mut().shutdown().await.unwrap();
        }
        let seen = bad.closed().await;
        assert!(
            matches!(seen.as_slice(), [RelayFrame::Error { code: c, .. }] if *c == code),
            "{what}: {seen:?}"
        );
        // Everyone else keeps chatting.
        alice
            .send(send_to_room(
                id,
                "lobby",
                // Its own bytes each time: identical ones are stored once.
                numbered(id),
                &[],
            ))
            .await;
        assert_eq!(alice.recv().await, RelayFrame::Sent { id }, "{what}");
        assert!(
            matches!(bob.recv().await, RelayFrame::Deliver { .. }),
            "{what}"
        );
    }
    assert_eq!(
        relay
            .metrics
            .bad_frames
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}

#[tokio::test]
async fn shutdown_tells_every_client_and_returns() {
    let mut relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut anonymous = relay.client().await;
    relay.stop().await;
    assert_eq!(alice.closed().await, vec![RelayFrame::ShuttingDown]);
    assert_eq!(anonymous.closed().await, vec![RelayFrame::ShuttingDown]);
}

#[tokio::test]
async fn certificate_reload_keeps_connections_and_changes_the_pin() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write = |hosts: Vec<String>| {
        let generated = rcgen::generate_simple_self_signed(hosts).unwrap();
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    };
    write(vec!["old.example".into()]);
    let certs = sotto_relay::CertStore::load(sotto_relay::CertSource::Files {
        cert: cert.clone(),
        key: key.clone(),
    })
    .unwrap();
    let config = sotto_relay::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let relay = Relay::start_with_certs(dir.path(), config, Arc::clone(&certs)).await;
    let mut before = relay.registered("alice").await;
    // Connected (old certificate) but not yet registered when the reload happens.
    let mut straddling = relay.client().await;

    write(vec!["new.example".into()]);
    let new_fingerprint = certs.reload().unwrap();
    assert_ne!(new_fingerprint, relay.address.fingerprint);

    // Its proof names the old certificate, which it was shown: accepted.
    assert_eq!(
        straddling.register("carol", identity("carol")).await,
        welcome("carol")
    );
    // The open connection carries on.
    before.send(ClientFrame::Ping { nonce: 5 }).await;
    assert_eq!(before.recv().await, RelayFrame::Pong { nonce: 5 });
    // A client pinned to the old key is refused (that sotto's client then
    // names both keys is the client's test, in sotto-tests' relay_key.rs).
    assert!(Client::try_connect(&relay.address).await.is_none());
    // The new address works.
    let mut renewed = relay.address.clone();
    renewed.fingerprint = new_fingerprint;
    let mut after = Client::connect(&renewed).await;
    assert_eq!(after.register("bob", identity("bob")).await, welcome("bob"));
    // A bad reload (a key that does not match) keeps the current certificate.
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    assert!(certs.reload().is_err());
    assert_eq!(certs.fingerprint(), new_fingerprint);
}

#[tokio::test]
async fn generated_key_is_private_and_reused() {
    let relay = Relay::start().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(relay.dir.join(sotto_relay::tls::GENERATED_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = sotto_relay::CertStore::load(sotto_relay::CertSource::Generated {
        dir: relay.dir.clone(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    assert_eq!(again.fingerprint(), relay.address.fingerprint);
}

#[tokio::test]
async fn metrics_endpoint_counts_without_naming_anyone() {
    let port = free_port();
    let relay = Relay::start_with(|c| c.metrics = Some(([127, 0, 0, 1], port).into())).await;
    let mut alice = relay.registered("alice").await;
    alice.send(ClientFrame::Ping { nonce: 1 }).await;
    alice.recv().await;

    let response = http_get(port, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "sotto_relay_connections 1",
        "sotto_relay_users_online 1",
        "sotto_relay_frames_in_total 2",
        "# TYPE sotto_relay_offline_queue_messages gauge",
        &format!(
            "sotto_relay_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        // The generated certificate's end (rcgen's default, 4096-01-01).
        "sotto_relay_certificate_expiry_seconds 67090118400",
    ] {
        assert!(
            response.contains(&format!("\n{line}\n")),
            "{line}: {response}"
        );
    }
    assert_eq!(relay.certs.not_after(), Some(67_090_118_400));
    assert!(!response.contains("alice"), "metrics never name users");
    assert!(http_get(port, "/other").await.starts_with("HTTP/1.1 404"));
}

/// `/health` beside `/metrics`: 200 and `ok` while the relay serves (the
/// unhealthy answers: storage.rs for a full disk, the cluster tests for
/// NATS out of reach).
#[tokio::test]
async fn the_health_endpoint_answers_ok_while_the_relay_serves() {
    let port = free_port();
    let relay = Relay::start_with(|c| c.metrics = Some(([127, 0, 0, 1], port).into())).await;
    drop(relay.registered("alice").await);
    let response = http_get(port, "/health").await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    assert!(
        http_get(port, "/health?probe=1")
            .await
            .starts_with("HTTP/1.1 200 OK")
    );
    assert!(http_get(port, "/healthz").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test]
async fn data_directory_is_private() {
    let relay = Relay::start().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // A data directory the relay creates is readable by its owner only.
        let nested = relay.dir.join("nested/data");
        let _second = Relay::start_in(&nested, |_| {}).await;
        let mode = std::fs::metadata(&nested).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}

#[tokio::test]
async fn a_name_keeps_the_casing_it_was_first_registered_with() {
    let relay = Relay::start().await;
    drop(relay.registered("alice").await);
    let mut again = relay.client().await;
    assert_eq!(
        again.register("ALICE", identity("alice")).await,
        welcome("alice")
    );
    let mut bob = relay.registered("bob").await;
    bob.send(ClientFrame::ListUsers).await;
    let RelayFrame::Users { users } = bob.recv().await else {
        panic!()
    };
    let names: Vec<String> = users.iter().map(|u| u.name.to_string()).collect();
    assert_eq!(names, vec!["alice", "bob"]);
}

#[tokio::test]
async fn a_second_registration_on_one_connection_closes_it() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let reply = alice.register("alice2", identity("alice")).await;
    assert!(
        matches!(
            reply,
            RelayFrame::Error {
                code: ErrorCode::BadFrame,
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(alice.closed().await.is_empty());
}

/// When `run` returns, every task it started is done and its database is
/// closed: the same data directory opens again at once (a restart in the
/// same process, as the app's tests and the end-to-end harness do). The
/// first run shuts down before it ever yields, so a task left holding the
/// store would still hold it when the second opens it.
#[tokio::test]
async fn when_run_returns_its_database_is_closed() {
    let temp = tempfile::tempdir().unwrap();
    let certs = sotto_relay::CertStore::load(sotto_relay::CertSource::Generated {
        dir: temp.path().to_path_buf(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    for _ in 0..2 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let config = sotto_relay::Config {
            data_dir: temp.path().to_path_buf(),
            ..sotto_relay::Config::default()
        };
        sotto_relay::run(listener, Arc::clone(&certs), config, std::future::ready(()))
            .await
            .unwrap();
    }
}
