//! Sessions, sealing and opening, with the checks that defend P2-P5, P8, P11.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{people, rng};
use proptest::prelude::*;
use sotto_crypto::{
    Arrival, Conversation, Error, NoPersistence, PeerBody, ReceivingSession, ReplayWindow,
    SealedMessage, SendingSession, SequenceCounter, roster_digest,
};

struct Dm {
    room: Conversation,
    session: SendingSession,
    counter: SequenceCounter<NoPersistence>,
    bob: ReceivingSession,
    carol: ReceivingSession,
}

/// Alice sends in a room with Bob and Carol.
fn room_with_bob_and_carol(name: &str) -> Dm {
    let p = people();
    let mut rng = rng();
    let room = Conversation::room(name);
    let (session, announcements) = SendingSession::start(
        &mut rng,
        &p.alice,
        room.clone(),
        1,
        0,
        1_700_000_000,
        &[p.bob.public(), p.carol.public()],
    )
    .unwrap();
    let to = |fp| {
        announcements
            .iter()
            .find(|a| a.context.recipient == fp)
            .unwrap()
    };
    let bob = p
        .bob
        .accept(&mut rng, to(p.bob.fingerprint()), p.alice.public())
        .unwrap();
    let carol = p
        .carol
        .accept(&mut rng, to(p.carol.fingerprint()), p.alice.public())
        .unwrap();
    Dm {
        room,
        session,
        counter: SequenceCounter::resume(0, NoPersistence),
        bob,
        carol,
    }
}

fn seal(dm: &mut Dm, text: &[u8]) -> SealedMessage {
    dm.session
        .seal(&mut rng(), &mut dm.counter, 1_700_000_000_000, text)
        .unwrap()
}

fn slot_for(sealed: &SealedMessage, who: sotto_crypto::Fingerprint) -> [u8; 80] {
    sealed
        .slots
        .iter()
        .find(|s| s.recipient == who)
        .unwrap()
        .to_bytes()
}

fn open(
    session: &ReceivingSession,
    room: &Conversation,
    body: &[u8],
    slot: &[u8],
) -> Result<Vec<u8>, Error> {
    let PeerBody::Message(message) = PeerBody::decode(body)? else {
        return Err(Error::DecryptionFailed);
    };
    Ok(session.open(room, &message, slot)?.plaintext.to_vec())
}

fn assert_opaque(result: Result<Vec<u8>, Error>) {
    assert!(matches!(result, Err(Error::DecryptionFailed)), "{result:?}");
}

#[test]
fn every_recipient_opens_the_same_plaintext() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"hello, room");
    assert_eq!(sealed.slots.len(), 2);
    for (session, who) in [
        (&dm.bob, p.bob.fingerprint()),
        (&dm.carol, p.carol.fingerprint()),
    ] {
        let text = open(session, &dm.room, &sealed.body, &slot_for(&sealed, who)).unwrap();
        assert_eq!(text, b"hello, room");
    }
}

#[test]
fn empty_and_block_sized_plaintexts_round_trip() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    for len in [0, 1, 59, 60, 61, 64, 1000, 65536] {
        let text = vec![0x5a; len];
        let sealed = seal(&mut dm, &text);
        let got = open(
            &dm.bob,
            &dm.room,
            &sealed.body,
            &slot_for(&sealed, p.bob.fingerprint()),
        );
        assert_eq!(got.unwrap(), text, "length {len}");
    }
}

#[test]
fn flipped_bit_anywhere_in_body_is_rejected() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"do not touch");
    let slot = slot_for(&sealed, p.bob.fingerprint());
    for bit in 0..sealed.body.len() * 8 {
        let mut body = sealed.body.clone();
        body[bit / 8] ^= 1 << (bit % 8);
        assert_opaque(open(&dm.bob, &dm.room, &body, &slot));
    }
}

#[test]
fn flipped_bit_anywhere_in_slot_is_rejected() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"do not touch");
    let slot = slot_for(&sealed, p.bob.fingerprint());
    for bit in 0..slot.len() * 8 {
        let mut bad = slot;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert_opaque(open(&dm.bob, &dm.room, &sealed.body, &bad));
    }
}

#[test]
fn truncated_body_or_slot_is_rejected() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"whole");
    let slot = slot_for(&sealed, p.bob.fingerprint());
    for len in 0..sealed.body.len() {
        assert_opaque(open(&dm.bob, &dm.room, &sealed.body[..len], &slot));
    }
    for len in 0..slot.len() {
        assert_opaque(open(&dm.bob, &dm.room, &sealed.body, &slot[..len]));
    }
    let mut longer = sealed.body.clone();
    longer.push(0);
    assert_opaque(open(&dm.bob, &dm.room, &longer, &slot));
}

#[test]
fn wrong_recipient_cannot_use_anothers_slot() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"for carol's eyes");
    let carols_slot = slot_for(&sealed, p.carol.fingerprint());
    assert_opaque(open(&dm.bob, &dm.room, &sealed.body, &carols_slot));
    // Even relabelled as Bob's, Carol's slot does not open under Bob's key.
    let mut relabelled = carols_slot;
    relabelled[..32].copy_from_slice(p.bob.fingerprint().as_bytes());
    assert_opaque(open(&dm.bob, &dm.room, &sealed.body, &relabelled));
}

#[test]
fn slot_spliced_from_another_message_is_rejected() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let first = seal(&mut dm, b"first");
    let second = seal(&mut dm, b"second");
    let slot_of_first = slot_for(&first, p.bob.fingerprint());
    assert_opaque(open(&dm.bob, &dm.room, &second.body, &slot_of_first));
}

#[test]
fn body_moved_to_another_room_is_rejected() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"lobby only");
    let slot = slot_for(&sealed, p.bob.fingerprint());
    assert_opaque(open(
        &dm.bob,
        &Conversation::room("elsewhere"),
        &sealed.body,
        &slot,
    ));
}

#[test]
fn message_spliced_across_sessions_is_rejected() {
    let p = people();
    let mut lobby = room_with_bob_and_carol("lobby");
    let other = room_with_bob_and_carol("lobby"); // a second session, same room
    let sealed = seal(&mut lobby, b"session one");
    let slot = slot_for(&sealed, p.bob.fingerprint());
    assert_opaque(open(&other.bob, &lobby.room, &sealed.body, &slot));
    // And a session from another room entirely.
    let elsewhere = room_with_bob_and_carol("elsewhere");
    assert_opaque(open(&elsewhere.bob, &lobby.room, &sealed.body, &slot));
}

#[test]
fn message_reflected_back_to_its_sender_is_rejected() {
    let p = people();
    let mut rng = rng();
    let dm = Conversation::direct(p.alice.fingerprint(), p.bob.fingerprint());
    // Alice -> Bob and Bob -> Alice sessions in the same DM.
    let (mut to_bob, ann) =
        SendingSession::start(&mut rng, &p.alice, dm.clone(), 1, 0, 0, &[p.bob.public()]).unwrap();
    let _ = p.bob.accept(&mut rng, &ann[0], p.alice.public()).unwrap();
    let (_, ann) =
        SendingSession::start(&mut rng, &p.bob, dm.clone(), 1, 0, 0, &[p.alice.public()]).unwrap();
    let alice_from_bob = p.alice.accept(&mut rng, &ann[0], p.bob.public()).unwrap();

    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let sealed = to_bob.seal(&mut rng, &mut counter, 0, b"mine").unwrap();
    let slot = sealed.slots[0].to_bytes();
    assert_opaque(open(&alice_from_bob, &dm, &sealed.body, &slot));
    let mut readdressed = slot;
    readdressed[..32].copy_from_slice(p.alice.fingerprint().as_bytes());
    assert_opaque(open(&alice_from_bob, &dm, &sealed.body, &readdressed));
}

#[test]
fn replayed_or_reordered_sequence_is_handled_by_the_window() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let messages: Vec<_> = (0..4)
        .map(|i| seal(&mut dm, format!("m{i}").as_bytes()))
        .collect();
    let mut window = ReplayWindow::starting_at(dm.bob.context().first_seq);
    let mut arrivals = Vec::new();
    // Delivered as 0, 2, 1, 2 (replay), 3.
    for i in [0, 2, 1, 2, 3] {
        let sealed = &messages[i];
        let PeerBody::Message(body) = PeerBody::decode(&sealed.body).unwrap() else {
            panic!()
        };
        let opened = dm
            .bob
            .open(&dm.room, &body, &slot_for(sealed, p.bob.fingerprint()))
            .unwrap();
        assert_eq!(opened.seq, i as u64);
        arrivals.push(window.accept(opened.seq).map_err(|e| e.to_string()));
    }
    assert_eq!(
        arrivals,
        vec![
            Ok(Arrival::Newest { missing: 0 }),
            Ok(Arrival::Newest { missing: 1 }),
            Ok(Arrival::Late),
            Err("decryption failed".to_string()),
            Ok(Arrival::Newest { missing: 0 }),
        ]
    );
}

#[test]
fn sealing_reuses_no_sequence_number() {
    let mut dm = room_with_bob_and_carol("lobby");
    let seqs: Vec<u64> = (0..10).map(|_| seal(&mut dm, b"x").seq).collect();
    assert_eq!(seqs, (0..10).collect::<Vec<_>>());
    // A counter that went backwards (say, restored from an old backup) is refused.
    dm.counter = SequenceCounter::resume(3, NoPersistence);
    let err = dm
        .session
        .seal(&mut rng(), &mut dm.counter, 0, b"x")
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)), "{err:?}");
}

#[test]
fn roster_digest_ignores_order_and_duplicates() {
    let p = people();
    let (a, b, c) = (
        p.alice.fingerprint(),
        p.bob.fingerprint(),
        p.carol.fingerprint(),
    );
    assert_eq!(roster_digest([a, b, c]), roster_digest([c, a, b, a]));
    assert_ne!(roster_digest([a, b, c]), roster_digest([a, b]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_open_round_trips(text in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let p = people();
        let mut dm = room_with_bob_and_carol("lobby");
        let sealed = seal(&mut dm, &text);
        for (session, who) in [(&dm.bob, p.bob.fingerprint()), (&dm.carol, p.carol.fingerprint())] {
            let got = open(session, &dm.room, &sealed.body, &slot_for(&sealed, who)).unwrap();
            prop_assert_eq!(&got, &text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_open(body in proptest::collection::vec(any::<u8>(), 0..512),
                                  slot in proptest::collection::vec(any::<u8>(), 80..=80)) {
        let dm = room_with_bob_and_carol("lobby");
        prop_assert!(open(&dm.bob, &dm.room, &body, &slot).is_err());
    }
}

#[test]
fn sessions_survive_export_and_restore() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let first = seal(&mut dm, b"before");
    let state = dm.session.export();
    assert!(
        !format!("{state:?}").contains("key: ["),
        "Debug shows no key bytes"
    );
    dm.session = SendingSession::restore(state).unwrap();
    let second = seal(&mut dm, b"after");
    assert_eq!(second.seq, first.seq + 1);
    let bob = ReceivingSession::restore(dm.bob.context().clone(), dm.bob.export_key());
    let slot = slot_for(&second, p.bob.fingerprint());
    assert_eq!(open(&bob, &dm.room, &second.body, &slot).unwrap(), b"after");
}

#[test]
fn nothing_sent_contains_the_plaintext_or_a_key() {
    let p = people();
    let mut rng = rng();
    let room = Conversation::room("lobby");
    let (mut session, announcements) =
        SendingSession::start(&mut rng, &p.alice, room, 1, 0, 0, &[p.bob.public()]).unwrap();
    let marker = b"MARKER-PLAINTEXT-4f1c9a";
    let sealed = session
        .seal(
            &mut rng,
            &mut SequenceCounter::resume(0, NoPersistence),
            0,
            marker,
        )
        .unwrap();
    let mut wire = sealed.body.clone();
    wire.extend(sealed.slots.iter().flat_map(|s| s.to_bytes()));
    for announcement in &announcements {
        wire.extend(PeerBody::Announcement(announcement.clone()).encode());
    }
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(marker), "plaintext on the wire (P1)");
    for (_, key) in session.export().keys {
        assert!(
            !contains(key.expose_secret()),
            "session key on the wire (P1)"
        );
    }
}

#[test]
fn exhausted_session_refuses_to_seal_until_rotated() {
    let mut dm = room_with_bob_and_carol("lobby");
    let mut state = dm.session.export();
    state.sealed = sotto_crypto::MAX_MESSAGES_PER_SESSION - 1;
    dm.session = SendingSession::restore(state).unwrap();
    assert!(!dm.session.needs_rotation(0));
    seal(&mut dm, b"the last one");
    assert!(dm.session.needs_rotation(0));
    let err = dm
        .session
        .seal(&mut rng(), &mut dm.counter, 0, b"one too many")
        .unwrap_err();
    assert!(matches!(err, Error::SessionExhausted), "{err:?}");
}

#[test]
fn over_long_encodings_are_refused() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"canonical");
    let slot = slot_for(&sealed, p.bob.fingerprint());
    // Rewrite the header's one-byte length varint as two bytes (same value).
    let len = sealed.body[2];
    assert!(len < 0x80);
    let mut overlong = vec![sealed.body[0], sealed.body[1], len | 0x80, 0x00];
    overlong.extend_from_slice(&sealed.body[3..]);
    assert_opaque(open(&dm.bob, &dm.room, &overlong, &slot));
}

#[test]
fn the_header_commits_to_who_can_read_the_message() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    let sealed = seal(&mut dm, b"who reads this?");
    let PeerBody::Message(body) = PeerBody::decode(&sealed.body).unwrap() else {
        panic!()
    };
    let opened = dm
        .bob
        .open(&dm.room, &body, &slot_for(&sealed, p.bob.fingerprint()))
        .unwrap();
    let everyone = [
        p.alice.fingerprint(),
        p.bob.fingerprint(),
        p.carol.fingerprint(),
    ];
    assert_eq!(opened.roster, roster_digest(everyone));
    assert_ne!(
        opened.roster,
        roster_digest([p.alice.fingerprint(), p.bob.fingerprint()])
    );
}

/// A session announced again to one of its recipients (its first
/// announcement lost): other bytes, the same session: the recipient
/// accepts it and opens what was sealed before and after; it cannot be
/// made for someone who is not a recipient, nor by someone else.
#[test]
fn a_session_announced_again_opens_what_it_sealed() {
    let p = people();
    let mut rng = rng();
    let mut dm = room_with_bob_and_carol("lobby");
    let before = seal(&mut dm, b"before");
    let again = dm
        .session
        .announce_again(&mut rng, &p.alice, p.bob.public())
        .unwrap();
    assert_eq!(again.context.session_id, dm.session.id());
    let bob = p.bob.accept(&mut rng, &again, p.alice.public()).unwrap();
    let after = seal(&mut dm, b"after");
    for (sealed, text) in [(&before, &b"before"[..]), (&after, b"after")] {
        let PeerBody::Message(body) = PeerBody::decode(&sealed.body).unwrap() else {
            panic!()
        };
        let opened = bob
            .open(&dm.room, &body, &slot_for(sealed, p.bob.fingerprint()))
            .unwrap();
        assert_eq!(&opened.plaintext[..], text);
    }
    let twice = dm
        .session
        .announce_again(&mut rng, &p.alice, p.bob.public())
        .unwrap();
    assert_ne!(
        PeerBody::Announcement(twice).encode(),
        PeerBody::Announcement(again).encode(),
        "wrapped and signed afresh each time"
    );
    assert!(
        dm.session
            .announce_again(&mut rng, &p.alice, p.alice.public())
            .is_err()
    );
    assert!(
        dm.session
            .announce_again(&mut rng, &p.bob, p.carol.public())
            .is_err()
    );
}
