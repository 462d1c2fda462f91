//! Announcements (P3), identities, safety numbers, the sequence counter (P9).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{people, rng};
use sotto_crypto::{
    Conversation, CounterStore, Error, FileCounterStore, PublicIdentity, SafetyNumber,
    SendingSession, SequenceCounter, SessionContext, SessionId, SessionKey,
};

fn announcement_to_bob() -> sotto_crypto::Announcement {
    let p = people();
    let (_, mut announcements) = SendingSession::start(
        &mut rng(),
        &p.alice,
        Conversation::room("lobby"),
        7,
        100,
        1_700_000_000,
        &[p.bob.public()],
    )
    .unwrap();
    announcements.remove(0)
}

/// Runs `accept` and asserts it failed opaquely without any RSA decryption.
fn assert_rejected_before_decryption(
    announcement: &sotto_crypto::Announcement,
    sender: &PublicIdentity,
) {
    let bob = &people().bob;
    let before = bob.rsa_decryptions();
    let result = bob.accept(&mut rng(), announcement, sender);
    assert!(matches!(result, Err(Error::DecryptionFailed)), "{result:?}");
    assert_eq!(bob.rsa_decryptions(), before, "RSA decryption was reached");
}

#[test]
fn announcement_is_accepted_with_its_context() {
    let p = people();
    let announcement = announcement_to_bob();
    let session = p
        .bob
        .accept(&mut rng(), &announcement, p.alice.public())
        .unwrap();
    assert_eq!(session.context().epoch, 7);
    assert_eq!(session.context().first_seq, 100);
    assert_eq!(session.context().sender, p.alice.fingerprint());
}

#[test]
fn unsigned_announcement_never_reaches_rsa_decryption() {
    let mut announcement = announcement_to_bob();
    announcement.signature = vec![0; announcement.signature.len()];
    assert_rejected_before_decryption(&announcement, people().alice.public());
    announcement.signature.clear();
    assert_rejected_before_decryption(&announcement, people().alice.public());
}

#[test]
fn announcement_signed_by_someone_else_never_reaches_rsa_decryption() {
    // Carol (or the relay with its own key) wraps a key to Bob and signs it
    // herself, claiming it comes from Alice.
    let p = people();
    let mut context = announcement_to_bob().context;
    context.sender = p.carol.fingerprint();
    let key = SessionKey::random(&mut rng());
    let mut forged = p
        .carol
        .announce(&mut rng(), p.bob.public(), context, &key)
        .unwrap();
    forged.context.sender = p.alice.fingerprint();
    assert_rejected_before_decryption(&forged, p.alice.public());
    // Presented honestly as Carol's, but checked against Alice's key.
    forged.context.sender = p.carol.fingerprint();
    assert_rejected_before_decryption(&forged, p.alice.public());
}

#[test]
fn any_change_to_a_signed_announcement_never_reaches_rsa_decryption() {
    let p = people();
    let original = announcement_to_bob();
    type Mutation = Box<dyn Fn(&mut sotto_crypto::Announcement)>;
    let mutations: Vec<Mutation> = vec![
        Box::new(|a| a.context.epoch += 1),
        Box::new(|a| a.context.first_seq = 0),
        Box::new(|a| a.context.created_at += 1),
        Box::new(|a| a.context.session_id = SessionId([9; 16])),
        Box::new(|a| a.context.conversation = Conversation::room("elsewhere")),
        Box::new(|a| a.wrapped_key[0] ^= 1),
        Box::new(|a| {
            let last = a.wrapped_key.len() - 1;
            a.wrapped_key[last] ^= 0x80
        }),
        Box::new(|a| a.signature[17] ^= 4),
        Box::new(|a| a.wrapped_key.truncate(100)),
    ];
    for mutate in mutations {
        let mut announcement = original.clone();
        mutate(&mut announcement);
        assert_rejected_before_decryption(&announcement, p.alice.public());
    }
}

#[test]
fn announcement_for_someone_else_is_rejected() {
    let p = people();
    let announcement = announcement_to_bob();
    let before = p.carol.rsa_decryptions();
    assert!(
        p.carol
            .accept(&mut rng(), &announcement, p.alice.public())
            .is_err()
    );
    assert_eq!(p.carol.rsa_decryptions(), before);
}

#[test]
fn announcing_with_a_context_naming_others_is_refused() {
    let p = people();
    let context = SessionContext {
        conversation: Conversation::room("lobby"),
        sender: p.bob.fingerprint(),
        recipient: p.carol.fingerprint(),
        session_id: SessionId([1; 16]),
        epoch: 1,
        first_seq: 0,
        created_at: 0,
    };
    let key = SessionKey::random(&mut rng());
    assert!(
        p.alice
            .announce(&mut rng(), p.carol.public(), context, &key)
            .is_err()
    );
}

#[test]
fn public_identity_round_trips_and_refuses_anything_else() {
    let p = people();
    let bytes = p.alice.public().to_bytes();
    let back = PublicIdentity::from_bytes(&bytes).unwrap();
    assert_eq!(back.fingerprint(), p.alice.fingerprint());

    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(PublicIdentity::from_bytes(&trailing).is_err());
    let mut version = bytes.clone();
    version[0] = 2;
    assert!(matches!(
        PublicIdentity::from_bytes(&version),
        Err(Error::UnsupportedVersion(2))
    ));
    for len in 0..bytes.len() {
        assert!(PublicIdentity::from_bytes(&bytes[..len]).is_err());
    }
}

#[test]
fn fingerprint_hex_round_trips_and_displays_in_groups() {
    let fp = people().alice.fingerprint();
    assert_eq!(sotto_crypto::Fingerprint::from_hex(&fp.to_hex()), Some(fp));
    assert_eq!(
        sotto_crypto::Fingerprint::from_hex(&fp.to_string()),
        Some(fp)
    );
    assert_eq!(fp.to_string().split(' ').count(), 16);
    assert_eq!(sotto_crypto::Fingerprint::from_hex("abc"), None);
}

#[test]
fn safety_number_is_the_same_from_both_sides() {
    let p = people();
    let ab = p.alice.public().safety_number(p.bob.public());
    let ba = p.bob.public().safety_number(p.alice.public());
    assert_eq!(ab, ba);
    assert_eq!(ab.digits().len(), 60);
    assert!(ab.digits().bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(ab.groups().len(), 12);
    assert_eq!(ab.to_string().lines().count(), 3);
    assert!(ab.matches_qr(ba.qr_payload()));
    assert!(ab.qr_payload().starts_with("SOTTO-SN:1:"));
}

#[test]
fn safety_number_changes_with_either_key() {
    let p = people();
    let ab = p.alice.public().safety_number(p.bob.public());
    let ac = p.alice.public().safety_number(p.carol.public());
    let cb = SafetyNumber::new(&p.carol.fingerprint(), &p.bob.fingerprint());
    assert_ne!(ab, ac);
    assert_ne!(ab, cb);
    assert!(!ab.matches_qr(ac.qr_payload()));
}

#[test]
fn registration_proof_binds_relay_challenge_name_and_key() {
    let p = people();
    let (relay, challenge) = ([3u8; 32], [7u8; 32]);
    let proof = p
        .alice
        .sign_registration(&mut rng(), &relay, &challenge, "alice")
        .unwrap();
    p.alice
        .public()
        .verify_registration(&relay, &challenge, "alice", &proof)
        .unwrap();
    assert!(
        p.alice
            .public()
            .verify_registration(&[4; 32], &challenge, "alice", &proof)
            .is_err(),
        "a proof made for one relay is refused by another"
    );
    assert!(
        p.alice
            .public()
            .verify_registration(&relay, &[8; 32], "alice", &proof)
            .is_err()
    );
    assert!(
        p.alice
            .public()
            .verify_registration(&relay, &challenge, "mallory", &proof)
            .is_err()
    );
    assert!(
        p.bob
            .public()
            .verify_registration(&relay, &challenge, "alice", &proof)
            .is_err()
    );
}

#[test]
fn debug_output_never_shows_key_material() {
    let p = people();
    let shown = format!("{:?} {:?}", p.alice, SessionKey::from_bytes([0x42; 32]));
    assert!(
        shown.starts_with("Identity { fingerprint: Fingerprint("),
        "{shown}"
    );
    assert!(
        !shown.contains("PrivateKey") && !shown.contains("66, 66"),
        "{shown}"
    );
}

/// A store that records what was persisted and can be made to fail.
#[derive(Default)]
struct Recording {
    persisted: Vec<u64>,
    fail: bool,
}

impl CounterStore for &mut Recording {
    fn persist(&mut self, limit: u64) -> std::io::Result<()> {
        if self.fail {
            return Err(std::io::Error::other("disk full"));
        }
        self.persisted.push(limit);
        Ok(())
    }
}

#[test]
fn counter_persists_before_handing_out_a_number() {
    let mut store = Recording::default();
    let mut counter = SequenceCounter::with_block(0, &mut store, 4);
    let got: Vec<u64> = (0..9).map(|_| counter.next().unwrap()).collect();
    assert_eq!(got, (0..9).collect::<Vec<_>>());
    assert_eq!(store.persisted, vec![4, 8, 12]);
}

#[test]
fn counter_hands_out_nothing_when_persisting_fails() {
    let mut store = Recording {
        fail: true,
        ..Default::default()
    };
    let mut counter = SequenceCounter::with_block(10, &mut store, 4);
    assert!(counter.next().is_err());
    assert_eq!(counter.peek(), 10);
}

#[test]
fn counter_never_reuses_a_number_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lobby.seq");
    let mut used = Vec::new();
    for _run in 0..3 {
        // Each run resumes from the file and "crashes" (drops) mid-block.
        let store = FileCounterStore::new(&path);
        let persisted = store.load().unwrap();
        let mut counter = SequenceCounter::resume(persisted, store);
        for _ in 0..10 {
            used.push(counter.next().unwrap());
        }
    }
    let mut sorted = used.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        used.len(),
        "a sequence number was reused: {used:?}"
    );
    assert!(used.windows(2).all(|w| w[0] < w[1]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn a_session_cannot_be_sent_to_oneself_or_twice_to_one_peer() {
    let p = people();
    let room = Conversation::room("lobby");
    assert!(
        SendingSession::start(
            &mut rng(),
            &p.alice,
            room.clone(),
            1,
            0,
            0,
            &[p.alice.public()]
        )
        .is_err()
    );
    assert!(
        SendingSession::start(
            &mut rng(),
            &p.alice,
            room,
            1,
            0,
            0,
            &[p.bob.public(), p.bob.public()]
        )
        .is_err()
    );
}

#[test]
fn sessions_ask_for_rotation_when_old() {
    let p = people();
    let (session, _) = SendingSession::start(
        &mut rng(),
        &p.alice,
        Conversation::room("lobby"),
        1,
        0,
        1_000,
        &[p.bob.public()],
    )
    .unwrap();
    assert!(!session.needs_rotation(1_000));
    assert!(session.needs_rotation(1_000 + sotto_crypto::MAX_SESSION_AGE.as_secs()));
}

#[test]
fn direct_session_must_name_exactly_its_two_parties() {
    let p = people();
    let (a, b, c) = (
        p.alice.fingerprint(),
        p.bob.fingerprint(),
        p.carol.fingerprint(),
    );
    // Alice cannot start a session for Bob in the Carol-Bob conversation.
    let carol_bob = Conversation::direct(c, b);
    assert!(
        SendingSession::start(
            &mut rng(),
            &p.alice,
            carol_bob.clone(),
            1,
            0,
            0,
            &[p.bob.public()]
        )
        .is_err()
    );

    // Nor can she make Bob accept one she signed for it herself.
    let mut announcement = announcement_to_bob();
    announcement.context.conversation = Conversation::direct(a, b);
    let honest = p
        .alice
        .announce(
            &mut rng(),
            p.bob.public(),
            announcement.context.clone(),
            &SessionKey::random(&mut rng()),
        )
        .unwrap();
    assert!(p.bob.accept(&mut rng(), &honest, p.alice.public()).is_ok());
    let mut context = honest.context.clone();
    context.conversation = carol_bob;
    let forged = p
        .alice
        .announce(
            &mut rng(),
            p.bob.public(),
            context.clone(),
            &SessionKey::random(&mut rng()),
        )
        .unwrap();
    assert_rejected_before_decryption(&forged, p.alice.public());
    // A direct conversation written in non-canonical order is refused too.
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    context.conversation = Conversation::Direct(high, low);
    let unsorted = p
        .alice
        .announce(
            &mut rng(),
            p.bob.public(),
            context,
            &SessionKey::random(&mut rng()),
        )
        .unwrap();
    assert_rejected_before_decryption(&unsorted, p.alice.public());
}

#[test]
fn checkpoint_resumes_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lobby.seq");
    let mut counter = SequenceCounter::resume(0, FileCounterStore::new(&path));
    for _ in 0..5 {
        counter.next().unwrap();
    }
    counter.checkpoint().unwrap();
    let store = FileCounterStore::new(&path);
    let mut resumed = SequenceCounter::resume(store.load().unwrap(), store);
    assert_eq!(resumed.next().unwrap(), 5);
}

#[test]
fn local_storage_keys_are_stable_per_identity_and_purpose() {
    let p = people();
    let a = p.alice.local_storage_key("history").unwrap();
    assert_eq!(
        a.expose_secret(),
        p.alice
            .local_storage_key("history")
            .unwrap()
            .expose_secret()
    );
    assert_ne!(
        a.expose_secret(),
        p.alice
            .local_storage_key("sessions")
            .unwrap()
            .expose_secret()
    );
    assert_ne!(
        a.expose_secret(),
        p.bob.local_storage_key("history").unwrap().expose_secret()
    );
}
