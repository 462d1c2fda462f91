//! Announcements (P3), identities, safety numbers, the sequence counter (P9).
//!
//! Sessions v2: an announcement is one leaf of a batch signed once
//! (`SendingSession::add_recipients`, `sign_announcements`), accepted
//! signature first (`Announcement::verify`) and only then unwrapped
//! (`VerifiedAnnouncement::accept`). Every refusal below is also shown to
//! cost no RSA decryption.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{forger, people, rng};
use sotto_crypto::{
    Announcement, Conversation, CounterStore, Error, FileCounterStore, NoPersistence, PrekeyId,
    PublicIdentity, ReceivingSession, SafetyNumber, SendingSession, SequenceCounter, SessionId,
    SessionKey, Via, WrapTo, sign_announcements,
};

/// When the announcements below are made and accepted.
const NOW: u64 = 1_700_000_000;

/// Alice's session in `lobby` (epoch 7, from seq 100) with Bob, and its
/// signed announcement to him.
fn session_to_bob() -> (SendingSession, Announcement) {
    let p = people();
    let mut rng = rng();
    let mut session = SendingSession::start(
        &mut rng,
        p.alice.fingerprint(),
        Conversation::room("lobby"),
        7,
        100,
        NOW,
    );
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 100)
        .unwrap();
    let announcement = sign_announcements(&p.alice, &mut rng, unsigned)
        .unwrap()
        .remove(0);
    (session, announcement)
}

fn announcement_to_bob() -> Announcement {
    session_to_bob().1
}

/// Asserts that `announcement` is refused opaquely, both by the cheap
/// check alone (`verify`: the signature first) and by the whole
/// acceptance, without any RSA decryption.
fn assert_rejected_before_decryption(announcement: &Announcement, sender: &PublicIdentity) {
    let bob = &people().bob;
    let before = bob.rsa_decryptions();
    let verified = announcement.verify(bob, sender);
    assert!(
        matches!(verified, Err(Error::DecryptionFailed)),
        "{verified:?}"
    );
    let result = announcement.accept(&mut rng(), bob, sender, NOW, None);
    assert!(matches!(result, Err(Error::DecryptionFailed)), "{result:?}");
    assert_eq!(bob.rsa_decryptions(), before, "RSA decryption was reached");
}

#[test]
fn announcement_is_accepted_with_its_context() {
    let _counting = common::rsa_counting();
    let p = people();
    let (mut session, announcement) = session_to_bob();
    let before = p.bob.rsa_decryptions();
    let verified = announcement.verify(&p.bob, p.alice.public()).unwrap();
    assert_eq!(p.bob.rsa_decryptions(), before, "verify decrypts nothing");
    assert_eq!(verified.context(), &announcement.context);
    let bob = verified.accept(&mut rng(), &p.bob, NOW, None).unwrap();
    assert_eq!(p.bob.rsa_decryptions(), before + 1, "one RSA decryption");
    let context = bob.context();
    assert_eq!(context.epoch, 7);
    assert_eq!(context.first_seq, 100);
    assert_eq!(context.sender, p.alice.fingerprint());
    assert_eq!(context.recipient, p.bob.fingerprint());
    assert_eq!(context.session_id, session.id());
    assert_eq!(context.created_at, NOW);
    assert_eq!(context.via, Via::Identity);
    assert_eq!(
        (
            announcement.index,
            announcement.size,
            announcement.path.len()
        ),
        (0, 1, 0),
        "alone in its batch: the root is its leaf"
    );
    // The key it carries opens what the session seals.
    let mut counter = SequenceCounter::resume(100, NoPersistence);
    let sealed = session.seal(&mut rng(), &mut counter, 0, b"hi").unwrap();
    let sotto_crypto::PeerBody::Message(body) =
        sotto_crypto::PeerBody::decode(&sealed.body).unwrap()
    else {
        panic!()
    };
    let opened = bob
        .open(&context.conversation, &body, &sealed.slots[0].to_bytes())
        .unwrap();
    assert_eq!(&opened.plaintext[..], b"hi");
}

#[test]
fn unsigned_announcement_never_reaches_rsa_decryption() {
    let _counting = common::rsa_counting();
    let mut announcement = announcement_to_bob();
    announcement.signature = vec![0; announcement.signature.len()];
    assert_rejected_before_decryption(&announcement, people().alice.public());
    announcement.signature.clear();
    assert_rejected_before_decryption(&announcement, people().alice.public());
    // The signature of another batch of Alice's does not cover this leaf.
    let mut other = announcement_to_bob();
    other.signature = announcement_to_bob().signature;
    assert_rejected_before_decryption(&other, people().alice.public());
}

#[test]
fn announcement_signed_by_someone_else_never_reaches_rsa_decryption() {
    let _counting = common::rsa_counting();
    // Carol (or the relay with its own key) wraps a key to Bob and signs it
    // herself, claiming it comes from Alice.
    let p = people();
    let mut rng = rng();
    let mut carols = SendingSession::start(
        &mut rng,
        p.carol.fingerprint(),
        Conversation::room("lobby"),
        7,
        100,
        NOW,
    );
    let unsigned = carols
        .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 100)
        .unwrap();
    let mut forged = sign_announcements(&p.carol, &mut rng, unsigned)
        .unwrap()
        .remove(0);
    forged.context.sender = p.alice.fingerprint();
    assert_rejected_before_decryption(&forged, p.alice.public());
    // Presented honestly as Carol's, but checked against Alice's key.
    forged.context.sender = p.carol.fingerprint();
    assert_rejected_before_decryption(&forged, p.alice.public());
    // Control: as Carol's, checked against Carol's key, it is accepted.
    assert!(
        forged
            .accept(&mut rng, &p.bob, p.carol.public(), NOW, None)
            .is_ok()
    );
}

#[test]
fn any_change_to_a_signed_announcement_never_reaches_rsa_decryption() {
    let _counting = common::rsa_counting();
    let p = people();
    let original = announcement_to_bob();
    type Mutation = Box<dyn Fn(&mut Announcement)>;
    let mutations: Vec<Mutation> = vec![
        Box::new(|a| a.context.epoch += 1),
        Box::new(|a| a.context.first_seq = 0),
        Box::new(|a| a.context.created_at += 1),
        Box::new(|a| a.context.session_id = SessionId([9; 16])),
        Box::new(|a| a.context.conversation = Conversation::room("elsewhere")),
        Box::new(|a| a.context.via = Via::Prekey(PrekeyId([3; 16]))),
        Box::new(|a| a.wrapped_key[0] ^= 1),
        Box::new(|a| {
            let last = a.wrapped_key.len() - 1;
            a.wrapped_key[last] ^= 0x80
        }),
        Box::new(|a| a.signature[17] ^= 4),
        Box::new(|a| a.wrapped_key.truncate(100)),
        // The leaf's place in its batch: another index, size or path.
        Box::new(|a| a.index = 1),
        Box::new(|a| a.size = 2),
        Box::new(|a| a.path.push([0; 32])),
        Box::new(|a| a.size = 0),
        Box::new(|a| a.size = u32::MAX),
    ];
    for mutate in mutations {
        let mut announcement = original.clone();
        mutate(&mut announcement);
        assert_rejected_before_decryption(&announcement, p.alice.public());
    }
}

#[test]
fn announcement_for_someone_else_is_rejected() {
    let _counting = common::rsa_counting();
    let p = people();
    let announcement = announcement_to_bob();
    let before = p.carol.rsa_decryptions();
    assert!(announcement.verify(&p.carol, p.alice.public()).is_err());
    assert!(
        announcement
            .accept(&mut rng(), &p.carol, p.alice.public(), NOW, None)
            .is_err()
    );
    assert_eq!(p.carol.rsa_decryptions(), before);
}

/// v1 refused `Identity::announce` with a context naming another sender;
/// v2 makes contexts only inside a `SendingSession`, and
/// `sign_announcements` refuses to sign any whose sender is not the signer.
/// The receiving side of the same check: a context naming others, validly
/// signed by whoever it names as sender, is refused before decryption.
#[test]
fn announcing_with_a_context_naming_others_is_refused() {
    let _counting = common::rsa_counting();
    let p = people();
    let mut rng = rng();
    // A session "of Bob's", made on Alice's machine: Alice cannot sign it.
    let mut as_bob = SendingSession::start(
        &mut rng,
        p.bob.fingerprint(),
        Conversation::room("lobby"),
        1,
        0,
        NOW,
    );
    let unsigned = as_bob
        .add_recipients(&mut rng, &[WrapTo::Identity(p.carol.public())], 0)
        .unwrap();
    assert!(matches!(
        sign_announcements(&p.alice, &mut rng, unsigned),
        Err(Error::InvalidParameter(_))
    ));
    // Nor one of her own batch mixed with it.
    let mut mixed = as_bob
        .add_recipients(&mut rng, &[WrapTo::Identity(p.alice.public())], 0)
        .unwrap();
    let (_, mut own) = {
        let mut s = SendingSession::start(
            &mut rng,
            p.alice.fingerprint(),
            Conversation::room("lobby"),
            1,
            0,
            NOW,
        );
        let u = s
            .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 0)
            .unwrap();
        (s, u)
    };
    own.append(&mut mixed);
    assert!(sign_announcements(&p.alice, &mut rng, own).is_err());

    // A forger signing a context whose recipient is Carol, sent to Bob:
    // validly signed, refused by Bob before decryption.
    let forger = forger();
    let mut context = announcement_to_bob().context;
    context.sender = forger.identity.fingerprint();
    let honest = forger.announce(p.bob.public(), context.clone(), &[5; 64]);
    assert!(
        honest
            .accept(&mut rng, &p.bob, forger.identity.public(), NOW, None)
            .is_ok(),
        "control: the forger's own announcement to Bob is accepted"
    );
    context.recipient = p.carol.fingerprint();
    let misnamed = forger.announce(p.bob.public(), context, &[5; 64]);
    assert_rejected_before_decryption(&misnamed, forger.identity.public());
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
    let _counting = common::rsa_counting();
    let p = people();
    let shown = format!("{:?} {:?}", p.alice, SessionKey::from_bytes([0x42; 32]));
    // Nor do the sessions and the state they export.
    let (session, announcement) = session_to_bob();
    let bob = announcement
        .accept(&mut rng(), &p.bob, p.alice.public(), NOW, None)
        .unwrap();
    let state = bob.export();
    let keys = [
        *state.key.expose_secret(),
        *state.chain.next.expose_secret(),
    ];
    let sessions = format!("{session:?} {bob:?} {state:?}");
    for key in keys {
        for shown_as in [format!("{:?}", &key[..4]), hex(&key[..4])] {
            assert!(!sessions.contains(&shown_as), "{sessions}");
        }
    }
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
    let mut rng = rng();
    let mut session = SendingSession::start(
        &mut rng,
        p.alice.fingerprint(),
        Conversation::room("lobby"),
        1,
        0,
        0,
    );
    assert!(
        session
            .add_recipients(&mut rng, &[WrapTo::Identity(p.alice.public())], 0)
            .is_err()
    );
    assert!(
        session
            .add_recipients(
                &mut rng,
                &[
                    WrapTo::Identity(p.bob.public()),
                    WrapTo::Identity(p.bob.public())
                ],
                0
            )
            .is_err()
    );
    // Refused as a whole: nobody was added.
    assert_eq!(session.recipients().count(), 0);
    session
        .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 0)
        .unwrap();
    // Already a recipient: not again, neither by announcement nor by reply.
    assert!(
        session
            .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 0)
            .is_err()
    );
    assert_eq!(
        session.recipients().collect::<Vec<_>>(),
        [p.bob.fingerprint()]
    );
}

#[test]
fn sessions_ask_for_rotation_when_old() {
    let p = people();
    let session = SendingSession::start(
        &mut rng(),
        p.alice.fingerprint(),
        Conversation::room("lobby"),
        1,
        0,
        1_000,
    );
    assert!(!session.needs_rotation(1_000));
    assert!(!session.needs_rotation(1_000 + sotto_crypto::MAX_SESSION_AGE.as_secs() - 1));
    assert!(session.needs_rotation(1_000 + sotto_crypto::MAX_SESSION_AGE.as_secs()));
}

#[test]
fn direct_session_must_name_exactly_its_two_parties() {
    let _counting = common::rsa_counting();
    let p = people();
    let mut rng = rng();
    let (a, b, c) = (
        p.alice.fingerprint(),
        p.bob.fingerprint(),
        p.carol.fingerprint(),
    );
    // Alice cannot add Bob to a session in the Carol-Bob conversation.
    let carol_bob = Conversation::direct(c, b);
    let mut session = SendingSession::start(&mut rng, a, carol_bob.clone(), 1, 0, NOW);
    assert!(
        session
            .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 0)
            .is_err()
    );
    // In their own conversation, only Bob.
    let mut dm = SendingSession::start(&mut rng, a, Conversation::direct(a, b), 1, 0, NOW);
    assert!(
        dm.add_recipients(&mut rng, &[WrapTo::Identity(p.carol.public())], 0)
            .is_err()
    );
    let unsigned = dm
        .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 0)
        .unwrap();
    let honest = sign_announcements(&p.alice, &mut rng, unsigned)
        .unwrap()
        .remove(0);
    assert!(
        honest
            .accept(&mut rng, &p.bob, p.alice.public(), NOW, None)
            .is_ok()
    );

    // Nor can a sender make Bob accept one it signed for such a
    // conversation itself: the forger signs what SendingSession refuses.
    let forger = forger();
    let f = forger.identity.fingerprint();
    let mut context = honest.context.clone();
    context.sender = f;
    context.conversation = Conversation::direct(f, b);
    let control = forger.announce(p.bob.public(), context.clone(), &[1; 64]);
    assert!(
        control
            .accept(&mut rng, &p.bob, forger.identity.public(), NOW, None)
            .is_ok(),
        "control: the forger's announcement in its own conversation with Bob"
    );
    context.conversation = carol_bob;
    let forged = forger.announce(p.bob.public(), context.clone(), &[1; 64]);
    assert_rejected_before_decryption(&forged, forger.identity.public());
    // A direct conversation written in non-canonical order is refused too.
    let (low, high) = if f < b { (f, b) } else { (b, f) };
    context.conversation = Conversation::Direct(high, low);
    let unsorted = forger.announce(p.bob.public(), context, &[1; 64]);
    assert_rejected_before_decryption(&unsorted, forger.identity.public());
}

/// v2: a key sent back in a pair reply is never an announcement, and a
/// validly signed announcement whose secret is not exactly a pair key and
/// a chain key (64 bytes) is refused after decryption, opaquely.
#[test]
fn an_announcement_is_only_ever_a_wrapped_pair_and_chain_key() {
    let _counting = common::rsa_counting();
    let p = people();
    let forger = forger();
    let mut context = announcement_to_bob().context;
    context.sender = forger.identity.fingerprint();
    context.via = Via::Reply(SessionId([4; 16]));
    let replied = forger.announce(p.bob.public(), context.clone(), &[1; 64]);
    assert_rejected_before_decryption(&replied, forger.identity.public());
    context.via = Via::Identity;
    for len in [0, 32, 63, 65] {
        let wrong = forger.announce(p.bob.public(), context.clone(), &vec![1; len]);
        let result = wrong.accept(&mut rng(), &p.bob, forger.identity.public(), NOW, None);
        assert!(
            matches!(result, Err(Error::DecryptionFailed)),
            "{len} bytes"
        );
    }
    // Ready to use once accepted: a receiving session is nothing more.
    let right = forger.announce(p.bob.public(), context, &[1; 64]);
    let session: ReceivingSession = right
        .accept(&mut rng(), &p.bob, forger.identity.public(), NOW, None)
        .unwrap();
    assert!(session.is_current(NOW));
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
