//! Sessions, sealing and opening, with the checks that defend P2-P5, P8, P11.
//!
//! Sessions v2: every slot seals the content key XOR the chain's key for
//! the message under the recipient's pair key; a recipient forgets a
//! message's key once the message is kept (`ReceivingSession::forget`).

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
    Arrival, Conversation, Error, Identity, MAX_MESSAGES_PER_SESSION, NoPersistence, PeerBody,
    ReceivingSession, ReplayWindow, SealedMessage, SendingSession, SequenceCounter, WrapTo,
    roster_digest, sign_announcements,
};

/// When the sessions below are made and accepted.
const NOW: u64 = 1_700_000_000;

/// `sender`'s session in `conversation` (epoch 1, from seq 0) to `to`,
/// wrapped to their identity keys and signed in one batch, and each
/// recipient's accepted receiving session, in the order of `to`.
fn start(
    sender: &Identity,
    conversation: &Conversation,
    to: &[&Identity],
) -> (SendingSession, Vec<ReceivingSession>) {
    let mut rng = rng();
    let mut session = SendingSession::start(
        &mut rng,
        sender.fingerprint(),
        conversation.clone(),
        1,
        0,
        NOW,
    );
    let targets: Vec<WrapTo<'_>> = to.iter().map(|r| WrapTo::Identity(r.public())).collect();
    let unsigned = session.add_recipients(&mut rng, &targets, 0).unwrap();
    let announcements = sign_announcements(sender, &mut rng, unsigned).unwrap();
    let receiving = to
        .iter()
        .zip(&announcements)
        .map(|(r, a)| {
            assert_eq!(a.context.recipient, r.fingerprint());
            a.accept(&mut rng, r, sender.public(), NOW, None).unwrap()
        })
        .collect();
    (session, receiving)
}

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
    let room = Conversation::room(name);
    let (session, mut receiving) = start(&p.alice, &room, &[&p.bob, &p.carol]);
    let carol = receiving.pop().unwrap();
    let bob = receiving.pop().unwrap();
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
    let (mut to_bob, _) = start(&p.alice, &dm, &[&p.bob]);
    let (_, mut from_bob) = start(&p.bob, &dm, &[&p.alice]);
    let alice_from_bob = from_bob.remove(0);

    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let sealed = to_bob.seal(&mut rng, &mut counter, 0, b"mine").unwrap();
    let slot = sealed.slots[0].to_bytes();
    assert_opaque(open(&alice_from_bob, &dm, &sealed.body, &slot));
    let mut readdressed = slot;
    readdressed[..32].copy_from_slice(p.alice.fingerprint().as_bytes());
    assert_opaque(open(&alice_from_bob, &dm, &sealed.body, &readdressed));
}

/// The window and the chain agree: a message kept has its key forgotten,
/// so a replay is refused twice over (its key is gone, and the window has
/// seen it); a message overtaken by a later one still opens from the key
/// kept for it.
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
        let arrival = match dm
            .bob
            .open(&dm.room, &body, &slot_for(sealed, p.bob.fingerprint()))
        {
            Ok(opened) => {
                assert_eq!(opened.seq, i as u64);
                let arrival = window.accept(opened.seq);
                if arrival.is_ok() {
                    dm.bob.forget(opened.seq).unwrap();
                }
                arrival
            }
            Err(e) => {
                // Only the replay fails to open, and the window refuses it
                // too.
                assert_eq!(arrivals.len(), 3, "message {i}");
                assert!(window.accept(sealed.seq).is_err());
                Err(e)
            }
        };
        arrivals.push(arrival.map_err(|e| e.to_string()));
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

/// v2: sending sessions are never stored (v1's `SendingSession::export`
/// and `restore` are gone: a sending session restarts instead), so this is
/// the receiving side's state at rest: its pair key and its chain, with
/// the keys kept for messages passed over. A restored copy opens what
/// follows and what was passed over, and nothing already forgotten.
#[test]
fn sessions_survive_export_and_restore() {
    let p = people();
    let bob = p.bob.fingerprint();
    let mut dm = room_with_bob_and_carol("lobby");
    let read = seal(&mut dm, b"read");
    let passed_over = seal(&mut dm, b"passed over");
    let also_read = seal(&mut dm, b"also read");
    for sealed in [&read, &also_read] {
        assert!(open(&dm.bob, &dm.room, &sealed.body, &slot_for(sealed, bob)).is_ok());
        dm.bob.forget(sealed.seq).unwrap();
    }
    let state = dm.bob.export();
    assert_eq!(state.context, *dm.bob.context());
    assert_eq!(
        state.chain.n,
        also_read.seq + 1,
        "the chain is past what was read"
    );
    assert_eq!(
        state
            .chain
            .skipped
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>(),
        [passed_over.seq],
        "one key kept, for the message passed over"
    );
    let shown = format!("{state:?}");
    assert!(
        !shown.contains(&format!("{:?}", &state.key.expose_secret()[..4])),
        "Debug shows no key bytes: {shown}"
    );
    let restored = ReceivingSession::restore(state).unwrap();
    let after = seal(&mut dm, b"after");
    assert_eq!(after.seq, also_read.seq + 1);
    for (sealed, text) in [(&after, &b"after"[..]), (&passed_over, b"passed over")] {
        let got = open(&restored, &dm.room, &sealed.body, &slot_for(sealed, bob));
        assert_eq!(got.unwrap(), text);
    }
    for forgotten in [&read, &also_read] {
        assert_opaque(open(
            &restored,
            &dm.room,
            &forgotten.body,
            &slot_for(forgotten, bob),
        ));
    }
    // Far ahead still opens (the chain derives up to 10,000 ahead).
    for _ in 0..200 {
        seal(&mut dm, b"");
    }
    let far = seal(&mut dm, b"far");
    assert_eq!(
        open(&restored, &dm.room, &far.body, &slot_for(&far, bob)).unwrap(),
        b"far"
    );
}

#[test]
fn nothing_sent_contains_the_plaintext_or_a_key() {
    let p = people();
    let mut rng = rng();
    let room = Conversation::room("lobby");
    let mut session =
        SendingSession::start(&mut rng, p.alice.fingerprint(), room.clone(), 1, 0, NOW);
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Identity(p.bob.public())], 0)
        .unwrap();
    let announcements = sign_announcements(&p.alice, &mut rng, unsigned).unwrap();
    let bob = announcements[0]
        .accept(&mut rng, &p.bob, p.alice.public(), NOW, None)
        .unwrap();
    let marker = b"MARKER-PLAINTEXT-4f1c9a";
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let sealed: Vec<SealedMessage> = (0..3)
        .map(|_| session.seal(&mut rng, &mut counter, 0, marker).unwrap())
        .collect();
    let mut wire = Vec::new();
    for message in &sealed {
        wire.extend_from_slice(&message.body);
        wire.extend(message.slots.iter().flat_map(|s| s.to_bytes()));
    }
    for announcement in &announcements {
        wire.extend(PeerBody::Announcement(announcement.clone()).encode());
    }
    let contains = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(marker), "plaintext on the wire (P1)");
    // The pair key and every chain key of the messages sent.
    let state = bob.export();
    assert!(
        !contains(state.key.expose_secret()),
        "pair key on the wire (P1)"
    );
    let mut chain = bob;
    for message in &sealed {
        let key = chain.export().chain.next;
        assert!(!contains(key.expose_secret()), "chain key on the wire (P1)");
        chain.forget(message.seq).unwrap();
    }
}

#[test]
fn exhausted_session_refuses_to_seal_until_rotated() {
    let p = people();
    let mut dm = room_with_bob_and_carol("lobby");
    for _ in 0..MAX_MESSAGES_PER_SESSION - 1 {
        dm.session
            .seal(&mut rng(), &mut dm.counter, 0, b"")
            .unwrap();
    }
    assert!(!dm.session.needs_rotation(NOW));
    let last = seal(&mut dm, b"the last one");
    assert_eq!(last.seq, MAX_MESSAGES_PER_SESSION - 1);
    // The last one opens: the chain reaches every message of a session.
    assert_eq!(
        open(
            &dm.bob,
            &dm.room,
            &last.body,
            &slot_for(&last, p.bob.fingerprint())
        )
        .unwrap(),
        b"the last one"
    );
    assert!(dm.session.needs_rotation(NOW));
    let err = dm
        .session
        .seal(&mut rng(), &mut dm.counter, 0, b"one too many")
        .unwrap_err();
    assert!(matches!(err, Error::SessionExhausted), "{err:?}");
    // Rotated: a new session (new pair keys, new chain) seals on from the
    // same counter, at the next epoch.
    let mut rotated = SendingSession::start(
        &mut rng(),
        p.alice.fingerprint(),
        dm.room.clone(),
        2,
        dm.counter.peek(),
        NOW,
    );
    rotated
        .add_recipients(
            &mut rng(),
            &[WrapTo::Identity(p.bob.public())],
            dm.counter.peek(),
        )
        .unwrap();
    assert!(!rotated.needs_rotation(NOW));
    let next = rotated
        .seal(&mut rng(), &mut dm.counter, 0, b"rotated")
        .unwrap();
    assert_eq!(next.seq, MAX_MESSAGES_PER_SESSION);
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
/// made for someone who is not a recipient, nor signed by someone else.
#[test]
fn a_session_announced_again_opens_what_it_sealed() {
    let p = people();
    let mut rng = rng();
    let mut dm = room_with_bob_and_carol("lobby");
    let before = seal(&mut dm, b"before");
    let unsigned = dm
        .session
        .announce_again(&mut rng, WrapTo::Identity(p.bob.public()))
        .unwrap();
    let again = sign_announcements(&p.alice, &mut rng, vec![unsigned])
        .unwrap()
        .remove(0);
    assert_eq!(again.context.session_id, dm.session.id());
    assert_eq!(
        again.context,
        *dm.bob.context(),
        "the same pair, from the same first number"
    );
    let bob = again
        .accept(&mut rng, &p.bob, p.alice.public(), NOW, None)
        .unwrap();
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
    let unsigned = dm
        .session
        .announce_again(&mut rng, WrapTo::Identity(p.bob.public()))
        .unwrap();
    let twice = sign_announcements(&p.alice, &mut rng, vec![unsigned])
        .unwrap()
        .remove(0);
    assert_ne!(
        PeerBody::Announcement(twice).encode(),
        PeerBody::Announcement(again).encode(),
        "wrapped and signed afresh each time"
    );
    // Not a recipient: neither the sender nor a stranger.
    let stranger = common::forger();
    for target in [p.alice.public(), stranger.identity.public()] {
        assert!(
            dm.session
                .announce_again(&mut rng, WrapTo::Identity(target))
                .is_err()
        );
    }
    // Only the sender signs it.
    let carols = dm
        .session
        .announce_again(&mut rng, WrapTo::Identity(p.carol.public()))
        .unwrap();
    assert!(sign_announcements(&p.bob, &mut rng, vec![carols]).is_err());
}

/// Announced again to a newer prekey of the recipient's: the same pair
/// from the same first number, now readable only with that prekey.
#[test]
fn a_session_announced_again_to_a_prekey_needs_that_prekey() {
    let p = people();
    let mut rng = rng();
    let mut dm = room_with_bob_and_carol("lobby");
    let before = seal(&mut dm, b"before");
    let (signed, secret) = common::prekey_of(&p.bob, 2, NOW);
    let prekey =
        sotto_crypto::SignedPrekey::verify(signed.as_bytes(), p.bob.public(), NOW).unwrap();
    let unsigned = dm
        .session
        .announce_again(&mut rng, WrapTo::Prekey(&prekey))
        .unwrap();
    let again = sign_announcements(&p.alice, &mut rng, vec![unsigned])
        .unwrap()
        .remove(0);
    assert_eq!(again.context.via, sotto_crypto::Via::Prekey(prekey.id()));
    assert!(
        again
            .accept(&mut rng, &p.bob, p.alice.public(), NOW, None)
            .is_err()
    );
    let bob = again
        .accept(&mut rng, &p.bob, p.alice.public(), NOW, Some(&secret))
        .unwrap();
    assert_eq!(
        open(
            &bob,
            &dm.room,
            &before.body,
            &slot_for(&before, p.bob.fingerprint())
        )
        .unwrap(),
        b"before"
    );
}
