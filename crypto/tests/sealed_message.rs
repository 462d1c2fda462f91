//! The known-answer vector of sessions v2, `testdata/sealed-message.json`
//! (protocol.md 24.2): Alice's session in `lobby` announced in one batch to
//! Bob's signed prekey (test pool key 1) and to Carol's identity key, two
//! messages in it, and Bob's pair reply. Everything comes from fixed seeds,
//! so the bytes are the same on every build. `scripts/check-sealed-vector.py`
//! checks the same file independently (Python `cryptography` and `blake3`):
//! the signature over the batch's Merkle root, the unwrapping, the chain
//! steps, the slots (`K XOR MK_n`), the commitment, the bodies and the reply.
//!
//! After an intended format change, regenerate it with
//!
//! ```text
//! SOTTO_REGENERATE_VECTORS=1 cargo test -p sotto-crypto --test sealed_message
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

mod common;

use common::{pool_key_der, testdata};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use sotto_crypto::{
    Conversation, Error, Identity, NoPersistence, PeerBody, PrekeyKey, PrekeySecret,
    ReceivingSession, SendingSession, SequenceCounter, SignedPrekey, WrapTo, roster_digest,
    sign_announcements,
};

/// When everything in the vector was made (and is checked).
const CREATED_AT: u64 = 1_764_000_000;
const FIRST: (&str, u64) = ("known answer: hello, Bob", 1_764_000_000_123);
const SECOND: (&str, u64) = ("and a second, one chain step on", 1_764_000_000_456);

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct SealedVector {
    room: String,
    created_at: u64,
    carol_fingerprint: String,
    bob_prekey_key: String,
    bob_prekey: String,
    announcement: String,
    plaintext: String,
    sent_at_ms: u64,
    body: String,
    slot: String,
    second_plaintext: String,
    second_sent_at_ms: u64,
    second_body: String,
    second_slot: String,
    reply: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn load(name: &str) -> Identity {
    Identity::load(
        &testdata().join(format!("identities/{name}.sotto-id")),
        b"sotto test vectors",
    )
    .unwrap()
}

/// Everything Bob needs and Alice made, from fixed seeds.
struct Made {
    vector: SealedVector,
    alice_session: SendingSession,
    bob_prekey: PrekeySecret,
}

fn make(alice: &Identity, bob: &Identity, carol: &Identity) -> Made {
    let room = Conversation::room("lobby");
    let key = PrekeyKey::from_pkcs8_der(&pool_key_der(1)).unwrap();
    let (signed, bob_prekey) = bob
        .make_prekey_with(&mut ChaCha20Rng::seed_from_u64(12), key, CREATED_AT)
        .unwrap();
    let prekey = SignedPrekey::verify(signed.as_bytes(), bob.public(), CREATED_AT).unwrap();

    let mut setup = ChaCha20Rng::seed_from_u64(10);
    let mut session = SendingSession::start(
        &mut setup,
        alice.fingerprint(),
        room.clone(),
        3,
        0,
        CREATED_AT,
    );
    let unsigned = session
        .add_recipients(
            &mut setup,
            &[WrapTo::Prekey(&prekey), WrapTo::Identity(carol.public())],
            0,
        )
        .unwrap();
    let announcements = sign_announcements(alice, &mut setup, unsigned).unwrap();
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let mut seal = |(text, at): (&str, u64), seed| {
        session
            .seal(
                &mut ChaCha20Rng::seed_from_u64(seed),
                &mut counter,
                at,
                text.as_bytes(),
            )
            .unwrap()
    };
    let first = seal(FIRST, 11);
    let second = seal(SECOND, 13);

    // Bob accepts and answers with his own pair key, under Alice's.
    let from_alice = announcements[0]
        .accept(
            &mut ChaCha20Rng::seed_from_u64(0),
            bob,
            alice.public(),
            CREATED_AT,
            Some(&bob_prekey),
        )
        .unwrap();
    let mut bob_setup = ChaCha20Rng::seed_from_u64(14);
    let mut bob_session =
        SendingSession::start(&mut bob_setup, bob.fingerprint(), room, 1, 0, CREATED_AT);
    let reply = bob_session
        .add_by_reply(&mut bob_setup, &from_alice, 0)
        .unwrap();

    let bob_slot = |m: &sotto_crypto::SealedMessage| {
        let slot = m
            .slots
            .iter()
            .find(|s| s.recipient == bob.fingerprint())
            .unwrap();
        hex(&slot.to_bytes())
    };
    let vector = SealedVector {
        room: "lobby".into(),
        created_at: CREATED_AT,
        carol_fingerprint: carol.fingerprint().to_hex(),
        bob_prekey_key: "testdata/prekey-keys.txt key 1".into(),
        bob_prekey: hex(signed.as_bytes()),
        announcement: hex(&PeerBody::Announcement(announcements[0].clone()).encode()),
        plaintext: FIRST.0.into(),
        sent_at_ms: FIRST.1,
        body: hex(&first.body),
        slot: bob_slot(&first),
        second_plaintext: SECOND.0.into(),
        second_sent_at_ms: SECOND.1,
        second_body: hex(&second.body),
        second_slot: bob_slot(&second),
        reply: hex(&PeerBody::PairReply(reply).encode()),
    };
    Made {
        vector,
        alice_session: session,
        bob_prekey,
    }
}

fn unhex(text: &str) -> Vec<u8> {
    common::unhex(text)
}

#[test]
fn sealed_message_vector_opens_and_reseals_identically() {
    let (alice, bob, carol) = (load("alice"), load("bob"), load("carol"));
    let made = make(&alice, &bob, &carol);
    let path = testdata().join("sealed-message.json");
    let mut json = serde_json::to_vec_pretty(&made.vector).unwrap();
    json.push(b'\n');
    if std::env::var_os("SOTTO_REGENERATE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &json).unwrap();
        return;
    }
    let stored: SealedVector = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // Made again from the same seeds, every byte is the same (RSA's
    // randomness too: OAEP seeds and PSS salts come from the seeded RNG).
    assert_eq!(
        stored,
        made.vector,
        "{} differs from this build",
        path.display()
    );

    // Bob, from the stored bytes alone (and his prekey's private half).
    let prekey =
        SignedPrekey::verify(&unhex(&stored.bob_prekey), bob.public(), CREATED_AT).unwrap();
    let bytes = unhex(&stored.announcement);
    let PeerBody::Announcement(announcement) = PeerBody::decode(&bytes).unwrap() else {
        panic!("not an announcement")
    };
    assert_eq!((announcement.index, announcement.size), (0, 2));
    assert_eq!(
        announcement.context.via,
        sotto_crypto::Via::Prekey(prekey.id())
    );
    let mut session: ReceivingSession = announcement
        .accept(
            &mut ChaCha20Rng::seed_from_u64(0),
            &bob,
            alice.public(),
            CREATED_AT,
            Some(&made.bob_prekey),
        )
        .unwrap();
    let room = Conversation::room(&stored.room);
    let everyone = roster_digest([alice.fingerprint(), bob.fingerprint(), carol.fingerprint()]);
    for (seq, body, slot, text, at) in [
        (
            0,
            &stored.body,
            &stored.slot,
            &stored.plaintext,
            stored.sent_at_ms,
        ),
        (
            1,
            &stored.second_body,
            &stored.second_slot,
            &stored.second_plaintext,
            stored.second_sent_at_ms,
        ),
    ] {
        let body_bytes = unhex(body);
        let PeerBody::Message(message) = PeerBody::decode(&body_bytes).unwrap() else {
            panic!("not a message")
        };
        let opened = session.open(&room, &message, &unhex(slot)).unwrap();
        assert_eq!(&opened.plaintext[..], text.as_bytes());
        assert_eq!((opened.seq, opened.sent_at_ms), (seq, at));
        assert_eq!(opened.roster, everyone);
        session.forget(seq).unwrap();
        assert!(matches!(
            session.open(&room, &message, &unhex(slot)),
            Err(Error::DecryptionFailed)
        ));
    }

    // Alice opens Bob's reply in her session, with no RSA.
    let bytes = unhex(&stored.reply);
    let PeerBody::PairReply(reply) = PeerBody::decode(&bytes).unwrap() else {
        panic!("not a pair reply")
    };
    let before = alice.rsa_decryptions();
    let from_bob = made
        .alice_session
        .accept_reply(&reply, bob.public(), CREATED_AT)
        .unwrap();
    assert_eq!(alice.rsa_decryptions(), before);
    assert_eq!(
        from_bob.context().via,
        sotto_crypto::Via::Reply(made.alice_session.id())
    );
}
