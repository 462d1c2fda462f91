//! Known-answer vectors: any change to an encoding or to the cryptography
//! changes these bytes and fails here.
//!
//! The vectors live in `testdata/` at the repository root. After an
//! intended format change, regenerate them with
//!
//! ```text
//! SOTTO_REGENERATE_VECTORS=1 cargo test -p sotto-tests --test vectors
//! ```
//!
//! and review the diff: it is the format change.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sotto_crypto::{Identity, KdfParams, PublicIdentity, SafetyNumber};
use sotto_proto::{
    ClientFrame, Destination, ErrorCode, Member, PresenceEvent, RelayFrame, RoomInfo, RoomName,
    Route, Slot, UserInfo, UserName, decode_payload, encode_frame,
};

const PASSPHRASE: &[u8] = b"sotto test vectors";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

fn regenerating() -> bool {
    std::env::var_os("SOTTO_REGENERATE_VECTORS").is_some_and(|v| v == "1")
}

/// Compares `actual` with the file `name`, or writes it when regenerating.
fn check_file(name: &str, actual: &[u8]) {
    let path = testdata().join(name);
    if regenerating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (see this file's docs to regenerate)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from what this build produces",
        path.display()
    );
}

fn read_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    serde_json::from_slice(&std::fs::read(testdata().join(name)).unwrap()).unwrap()
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap();
    out.push(b'\n');
    out
}

fn user(name: &str) -> UserName {
    UserName::try_from(name).unwrap()
}

fn room(name: &str) -> RoomName {
    RoomName::try_from(name).unwrap()
}

/// One instance of every frame, with fixed contents.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let identity = Bytes::from_static(b"<public identity bytes>");
    let prekey = Bytes::from_static(b"<signed prekey>");
    let client = vec![
        (
            "client_register",
            ClientFrame::Register {
                name: user("alice"),
                identity: identity.clone(),
                proof: Bytes::from_static(&[0xAA; 8]),
            },
        ),
        (
            "client_join",
            ClientFrame::Join {
                room: room("lobby"),
            },
        ),
        (
            "client_leave",
            ClientFrame::Leave {
                room: room("lobby"),
            },
        ),
        ("client_list_rooms", ClientFrame::ListRooms),
        ("client_list_users", ClientFrame::ListUsers),
        (
            "client_lookup_key",
            ClientFrame::LookupKey { name: user("bob") },
        ),
        (
            "client_send_room",
            ClientFrame::Send {
                route: Route {
                    id: 7,
                    to: Destination::Room(room("lobby")),
                },
                body: Bytes::from_static(b"ciphertext"),
                slots: vec![
                    Slot {
                        to: user("bob"),
                        data: Bytes::from_static(&[1; 4]),
                    },
                    Slot {
                        to: user("carol"),
                        data: Bytes::from_static(&[2; 4]),
                    },
                ],
            },
        ),
        (
            "client_send_user",
            ClientFrame::Send {
                route: Route {
                    id: 300,
                    to: Destination::User(user("bob")),
                },
                body: Bytes::from_static(b"announcement"),
                slots: vec![],
            },
        ),
        ("client_ack", ClientFrame::Ack { delivery: 1 << 40 }),
        ("client_ping", ClientFrame::Ping { nonce: 300 }),
        ("client_pong", ClientFrame::Pong { nonce: 0 }),
        ("client_bye", ClientFrame::Bye),
        (
            "client_publish_prekey",
            ClientFrame::PublishPrekey {
                prekey: prekey.clone(),
            },
        ),
        (
            "client_put_chunk",
            ClientFrame::PutChunk {
                blob: [0x42; 16],
                index: 1,
                chunks: 3,
                data: Bytes::from_static(b"<chunk>"),
            },
        ),
        (
            "client_get_chunk",
            ClientFrame::GetChunk {
                blob: [0x42; 16],
                index: 300,
            },
        ),
        (
            "client_blob_status",
            ClientFrame::BlobStatus { blob: [0x42; 16] },
        ),
    ];
    let relay = vec![
        (
            "relay_challenge",
            RelayFrame::Challenge { nonce: [0x5C; 32] },
        ),
        (
            "relay_registered",
            RelayFrame::Registered {
                name: user("alice"),
                offline_max_age: 604_800,
                blob_max_bytes: 104_857_600,
                blob_max_age: 604_800,
            },
        ),
        (
            "relay_joined",
            RelayFrame::Joined {
                room: room("lobby"),
                members: vec![Member {
                    name: user("bob"),
                    identity: identity.clone(),
                    online: true,
                    prekeys: vec![prekey.clone()],
                }],
            },
        ),
        (
            "relay_left",
            RelayFrame::Left {
                room: room("lobby"),
            },
        ),
        (
            "relay_rooms",
            RelayFrame::Rooms {
                rooms: vec![RoomInfo {
                    name: room("lobby"),
                    members: 3,
                }],
            },
        ),
        (
            "relay_users",
            RelayFrame::Users {
                users: vec![UserInfo {
                    name: user("bob"),
                    rooms: vec![room("lobby"), room("ops")],
                }],
            },
        ),
        (
            "relay_key_found",
            RelayFrame::Key {
                name: user("bob"),
                identity: Some(identity.clone()),
                prekeys: vec![prekey.clone()],
            },
        ),
        (
            "relay_key_missing",
            RelayFrame::Key {
                name: user("eve"),
                identity: None,
                prekeys: Vec::new(),
            },
        ),
        (
            "relay_deliver",
            RelayFrame::Deliver {
                delivery: 42,
                from: user("alice"),
                to: Destination::Room(room("lobby")),
                body: Bytes::from_static(b"ciphertext"),
                slot: Some(Bytes::from_static(&[1; 4])),
            },
        ),
        (
            "relay_presence",
            RelayFrame::Presence {
                room: room("lobby"),
                user: user("carol"),
                event: PresenceEvent::Disconnected,
                identity: None,
                prekeys: Vec::new(),
            },
        ),
        (
            "relay_presence_connected",
            RelayFrame::Presence {
                room: room("lobby"),
                user: user("carol"),
                event: PresenceEvent::Connected,
                identity: None,
                prekeys: Vec::new(),
            },
        ),
        (
            "relay_presence_joined",
            RelayFrame::Presence {
                room: room("lobby"),
                user: user("carol"),
                event: PresenceEvent::Joined,
                identity: Some(identity.clone()),
                prekeys: vec![prekey.clone()],
            },
        ),
        ("relay_sent", RelayFrame::Sent { id: 7 }),
        (
            "relay_error",
            RelayFrame::Error {
                id: Some(7),
                code: ErrorCode::NoSuchUser,
                message: "no such user".into(),
            },
        ),
        ("relay_ping", RelayFrame::Ping { nonce: 1 }),
        ("relay_pong", RelayFrame::Pong { nonce: 1 }),
        ("relay_shutting_down", RelayFrame::ShuttingDown),
        (
            "relay_key_handover",
            RelayFrame::KeyHandover {
                old_key: Bytes::from_static(b"<old spki>"),
                new_key: [0x11; 32],
                not_after: 1_700_000_000,
                scheme: 0x0403,
                signature: Bytes::from_static(b"<signature>"),
            },
        ),
        (
            "relay_undelivered",
            RelayFrame::Undelivered {
                id: 7,
                code: ErrorCode::QueueFull,
                users: vec![user("carol")],
            },
        ),
        (
            "relay_prekey_published",
            RelayFrame::PrekeyPublished { id: [0x11; 16] },
        ),
        (
            "relay_chunk_stored",
            RelayFrame::ChunkStored {
                blob: [0x42; 16],
                index: 1,
            },
        ),
        (
            "relay_chunk",
            RelayFrame::Chunk {
                blob: [0x42; 16],
                index: 1,
                data: Bytes::from_static(b"<chunk>"),
            },
        ),
        (
            "relay_blob_state",
            RelayFrame::BlobState {
                blob: [0x42; 16],
                chunks: 3,
                stored: 2,
                expires_at: 1_700_000_000,
            },
        ),
        (
            "relay_blob_refused",
            RelayFrame::BlobRefused {
                blob: [0x42; 16],
                index: 2,
                code: ErrorCode::BadChunk,
                message: "x".into(),
            },
        ),
    ];
    let mut out = Vec::new();
    for (name, frame) in client {
        let bytes = encode_frame(&frame).unwrap();
        assert_eq!(
            decode_payload::<ClientFrame>(&bytes[4..]).unwrap(),
            frame,
            "{name}"
        );
        out.push((name, bytes));
    }
    for (name, frame) in relay {
        let bytes = encode_frame(&frame).unwrap();
        assert_eq!(
            decode_payload::<RelayFrame>(&bytes[4..]).unwrap(),
            frame,
            "{name}"
        );
        out.push((name, bytes));
    }
    out
}

#[test]
fn frames_encode_to_their_vectors() {
    let text: String = frames()
        .iter()
        .map(|(name, bytes)| format!("{name} {}\n", hex::encode(bytes)))
        .collect();
    check_file("frames.txt", text.as_bytes());
}

/// The fixed identities: generated from fixed seeds when regenerating,
/// otherwise loaded from their committed (encrypted) identity files.
fn identity(name: &str, seed: u64) -> Identity {
    let file = format!("identities/{name}.sotto-id");
    if regenerating() {
        let id = Identity::generate_from_rng(&mut ChaCha20Rng::seed_from_u64(seed)).unwrap();
        let bytes = id
            .encrypt_to_bytes(
                &mut ChaCha20Rng::seed_from_u64(seed + 100),
                PASSPHRASE,
                KdfParams::INSECURE_FOR_TESTS,
            )
            .unwrap();
        check_file(&file, &bytes);
        return id;
    }
    Identity::load(&testdata().join(file), PASSPHRASE).unwrap()
}

/// Identities the end-to-end tests load instead of generating RSA keys.
const FIXTURES: [(&str, u64); 6] = [
    ("alice", 1),
    ("bob", 2),
    ("carol", 3),
    ("dave", 4),
    ("erin", 5),
    ("mallory", 6),
];

#[test]
fn fixture_identities_load() {
    let fingerprints: Vec<String> = FIXTURES
        .iter()
        .map(|(name, seed)| identity(name, *seed).fingerprint().to_hex())
        .collect();
    let mut unique = fingerprints.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), FIXTURES.len());
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct IdentityVectors {
    alice_public: String,
    bob_public: String,
    alice_fingerprint: String,
    bob_fingerprint: String,
    safety_number: String,
    qr_payload: String,
}

#[test]
fn identity_files_fingerprints_and_safety_numbers_match_their_vectors() {
    let alice = identity("alice", 1);
    let bob = identity("bob", 2);
    let vectors = IdentityVectors {
        alice_public: hex::encode(alice.public().to_bytes()),
        bob_public: hex::encode(bob.public().to_bytes()),
        alice_fingerprint: alice.fingerprint().to_hex(),
        bob_fingerprint: bob.fingerprint().to_hex(),
        safety_number: alice
            .public()
            .safety_number(bob.public())
            .digits()
            .to_string(),
        qr_payload: alice
            .public()
            .safety_number(bob.public())
            .qr_payload()
            .to_string(),
    };
    check_file("identities.json", &json(&vectors));
    if !regenerating() {
        // The committed public identities decode to the same fingerprints.
        let stored: IdentityVectors = read_json("identities.json");
        let alice_pub =
            PublicIdentity::from_bytes(&hex::decode(&stored.alice_public).unwrap()).unwrap();
        let bob_pub =
            PublicIdentity::from_bytes(&hex::decode(&stored.bob_public).unwrap()).unwrap();
        assert_eq!(alice_pub.fingerprint().to_hex(), stored.alice_fingerprint);
        let sn = SafetyNumber::new(&bob_pub.fingerprint(), &alice_pub.fingerprint());
        assert_eq!(sn.digits(), stored.safety_number);
    }
}

// The sealed-message vector of sessions v2 (`testdata/sealed-message.json`)
// involves sotto-crypto alone: `crypto/tests/sealed_message.rs` makes and
// checks it, beside the prekey vector (`crypto/tests/prekeys.rs`).
