//! Sessions v2 end to end through the public API, as two clients would run
//! them: pair keys wrapped to signed prekeys (pool keys of
//! `testdata/prekey-keys.txt`), a batch of announcements under one
//! signature, a newcomer joining a room by pair replies (one RSA
//! decryption per member, none for the newcomer), and a member leaving.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{forger, people, prekey_of, rng};
use sotto_crypto::{
    Announcement, Conversation, Error, Fingerprint, Identity, NoPersistence, PeerBody,
    PrekeySecret, ReceivingSession, SealedMessage, SendingSession, SequenceCounter, SignedPrekey,
    Via, WrapTo, roster_digest, sign_announcements,
};

const NOW: u64 = 1_764_000_000;

fn room() -> Conversation {
    Conversation::room("lobby")
}

/// `receiving`'s recipient opens `sealed` with its own slot.
fn open(receiving: &ReceivingSession, sealed: &SealedMessage) -> Result<Vec<u8>, Error> {
    let PeerBody::Message(body) = PeerBody::decode(&sealed.body)? else {
        return Err(Error::DecryptionFailed);
    };
    let slot = sealed
        .slots
        .iter()
        .find(|s| s.recipient == receiving.context().recipient)
        .ok_or(Error::DecryptionFailed)?;
    Ok(receiving
        .open(&room(), &body, &slot.to_bytes())?
        .plaintext
        .to_vec())
}

/// Through the wire: encoded as a peer body and decoded again.
fn carried(announcement: &Announcement) -> Announcement {
    let bytes = PeerBody::Announcement(announcement.clone()).encode();
    let PeerBody::Announcement(back) = PeerBody::decode(&bytes).unwrap() else {
        panic!()
    };
    back
}

/// A prekey-wrapped session, from publishing the prekey to reading: Alice
/// verifies Bob's signed prekey against his pinned identity, wraps to it;
/// Bob accepts with the prekey's private half (even after storing and
/// reloading it) and reads. His identity key alone does not open it: once
/// the private half is deleted, nothing recorded opens.
#[test]
fn a_session_wrapped_to_a_prekey_opens_with_it_and_nothing_else() {
    let _counting = common::rsa_counting();
    let p = people();
    let mut rng = rng();
    let (signed, secret) = prekey_of(&p.bob, 0, NOW);
    let published = signed.as_bytes().to_vec();
    // A relay passing Bob's prekey off as Carol's: refused.
    assert!(SignedPrekey::verify(&published, p.carol.public(), NOW).is_err());
    let prekey = SignedPrekey::verify(&published, p.bob.public(), NOW).unwrap();

    let mut session = SendingSession::start(&mut rng, p.alice.fingerprint(), room(), 1, 0, NOW);
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Prekey(&prekey)], 0)
        .unwrap();
    assert_eq!(unsigned[0].context().via, Via::Prekey(prekey.id()));
    assert_eq!(unsigned[0].context().recipient, p.bob.fingerprint());
    let announcement = carried(&sign_announcements(&p.alice, &mut rng, unsigned).unwrap()[0]);
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let sealed = session
        .seal(&mut rng, &mut counter, 0, b"forward secret")
        .unwrap();

    // The private half, stored and reloaded as the client's vault does.
    let stored = secret.to_bytes().unwrap();
    let reloaded = PrekeySecret::from_bytes(&stored).unwrap();
    let bob = announcement
        .accept(&mut rng, &p.bob, p.alice.public(), NOW, Some(&reloaded))
        .unwrap();
    assert_eq!(reloaded.rsa_decryptions(), 1);
    assert_eq!(open(&bob, &sealed).unwrap(), b"forward secret");

    // Without it: not with the identity key, not with another prekey of
    // Bob's; and no decryption by the identity key was even tried.
    let (_, other) = prekey_of(&p.bob, 1, NOW);
    let before = p.bob.rsa_decryptions();
    for prekey in [None, Some(&other)] {
        assert!(matches!(
            announcement.accept(&mut rng, &p.bob, p.alice.public(), NOW, prekey),
            Err(Error::DecryptionFailed)
        ));
    }
    assert_eq!(p.bob.rsa_decryptions(), before);
    assert_eq!(other.rsa_decryptions(), 0, "another prekey's id: not tried");
    drop((secret, reloaded));
}

/// One signature covers wraps to prekeys and to identity keys, for several
/// conversations: each recipient checks its own leaf alone and reads its
/// own session; nobody can take another's leaf.
#[test]
fn one_signature_covers_a_batch_of_prekeys_and_identities_in_several_rooms() {
    let _counting = common::rsa_counting();
    let p = people();
    let dave = &forger().identity;
    let mut rng = rng();
    let (bob_signed, bob_secret) = prekey_of(&p.bob, 3, NOW);
    let bob_prekey = SignedPrekey::verify(bob_signed.as_bytes(), p.bob.public(), NOW).unwrap();
    let mut lobby = SendingSession::start(&mut rng, p.alice.fingerprint(), room(), 1, 0, NOW);
    let other = Conversation::room("other");
    let mut elsewhere =
        SendingSession::start(&mut rng, p.alice.fingerprint(), other.clone(), 1, 0, NOW);
    let mut unsigned = lobby
        .add_recipients(
            &mut rng,
            &[
                WrapTo::Prekey(&bob_prekey),
                WrapTo::Identity(p.carol.public()),
                WrapTo::Identity(dave.public()),
            ],
            0,
        )
        .unwrap();
    unsigned.extend(
        elsewhere
            .add_recipients(&mut rng, &[WrapTo::Identity(p.carol.public())], 0)
            .unwrap(),
    );
    let signed: Vec<Announcement> = sign_announcements(&p.alice, &mut rng, unsigned)
        .unwrap()
        .iter()
        .map(carried)
        .collect();
    assert_eq!(signed.len(), 4);
    for (i, a) in signed.iter().enumerate() {
        assert_eq!((a.index, a.size), (u32::try_from(i).unwrap(), 4));
        assert_eq!(a.signature, signed[0].signature, "one signature");
        assert_eq!(a.path.len(), 2, "a tree of 4: two hashes each");
    }
    let recipients: [(&Identity, Option<&PrekeySecret>); 4] = [
        (&p.bob, Some(&bob_secret)),
        (&p.carol, None),
        (dave, None),
        (&p.carol, None),
    ];
    let sessions: Vec<ReceivingSession> = signed
        .iter()
        .zip(recipients)
        .map(|(a, (who, prekey))| {
            a.accept(&mut rng, who, p.alice.public(), NOW, prekey)
                .unwrap()
        })
        .collect();
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let in_lobby = lobby.seal(&mut rng, &mut counter, 0, b"lobby").unwrap();
    for session in &sessions[..3] {
        assert_eq!(open(session, &in_lobby).unwrap(), b"lobby");
    }
    assert_eq!(sessions[3].context().conversation, other);
    assert!(open(&sessions[3], &in_lobby).is_err());
    // Carol's leaf with Bob's path, Dave's leaf presented to Carol: refused.
    let mut swapped = signed[1].clone();
    swapped.path = signed[0].path.clone();
    assert!(swapped.verify(&p.carol, p.alice.public()).is_err());
    assert!(signed[2].verify(&p.carol, p.alice.public()).is_err());
}

/// A newcomer joins a room of three: it announces itself to every member
/// under one signature (N public-key operations); each member reads that
/// announcement (one RSA decryption each) and adds the newcomer to its own
/// session with a pair reply (no RSA, no signature); the newcomer accepts
/// the replies with no RSA at all. Then everyone reads everyone, from the
/// join on, and the rosters say who could. A member who leaves reads
/// nothing after, at no RSA cost to anyone.
#[test]
fn a_newcomer_joins_by_pair_replies_and_a_leaver_reads_nothing_after() {
    let _counting = common::rsa_counting();
    let p = people();
    let dave = &forger().identity;
    let mut rng = rng();
    let members = [&p.alice, &p.bob, &p.carol];
    let fp = |i: &Identity| i.fingerprint();

    // The room before: each member's session to the two others.
    let mut sending: Vec<SendingSession> = Vec::new();
    let mut counters: Vec<SequenceCounter<NoPersistence>> = Vec::new();
    // reading[r][s]: member r's receiving session from sender s.
    let mut reading: Vec<Vec<Option<ReceivingSession>>> =
        (0..3).map(|_| (0..3).map(|_| None).collect()).collect();
    for (s, sender) in members.iter().enumerate() {
        let mut session = SendingSession::start(&mut rng, fp(sender), room(), 1, 0, NOW);
        let others: Vec<&Identity> = members
            .iter()
            .copied()
            .filter(|m| m.fingerprint() != sender.fingerprint())
            .collect();
        let targets: Vec<WrapTo<'_>> = others
            .iter()
            .map(|m| WrapTo::Identity(m.public()))
            .collect();
        let unsigned = session.add_recipients(&mut rng, &targets, 0).unwrap();
        for a in sign_announcements(sender, &mut rng, unsigned).unwrap() {
            let r = members
                .iter()
                .position(|m| fp(m) == a.context.recipient)
                .unwrap();
            reading[r][s] = Some(
                a.accept(&mut rng, members[r], sender.public(), NOW, None)
                    .unwrap(),
            );
        }
        sending.push(session);
        counters.push(SequenceCounter::resume(0, NoPersistence));
    }
    let before: Vec<SealedMessage> = (0..3)
        .map(|s| {
            sending[s]
                .seal(&mut rng, &mut counters[s], 0, b"before")
                .unwrap()
        })
        .collect();

    // Dave announces himself: one batch, one signature, to every member.
    let rsa = |who: &[&Identity]| who.iter().map(|i| i.rsa_decryptions()).collect::<Vec<_>>();
    let members_before = rsa(&members);
    let dave_before = dave.rsa_decryptions();
    let mut dave_session = SendingSession::start(&mut rng, fp(dave), room(), 1, 0, NOW);
    let targets: Vec<WrapTo<'_>> = members
        .iter()
        .map(|m| WrapTo::Identity(m.public()))
        .collect();
    let unsigned = dave_session.add_recipients(&mut rng, &targets, 0).unwrap();
    let announcements = sign_announcements(dave, &mut rng, unsigned).unwrap();
    assert!(
        announcements
            .iter()
            .all(|a| a.signature == announcements[0].signature)
    );

    // Each member: one decryption, then a reply (from its next number on).
    let mut from_dave = Vec::new();
    let mut replies = Vec::new();
    for (m, member) in members.iter().enumerate() {
        let a = announcements
            .iter()
            .find(|a| a.context.recipient == fp(member))
            .unwrap();
        let session = carried(a)
            .accept(&mut rng, member, dave.public(), NOW, None)
            .unwrap();
        let reply = sending[m]
            .add_by_reply(&mut rng, &session, counters[m].peek())
            .unwrap();
        assert_eq!(reply.context.via, Via::Reply(dave_session.id()));
        assert_eq!(reply.context.first_seq, 1, "Dave reads from the join on");
        // Through the wire.
        let bytes = PeerBody::PairReply(reply).encode();
        let PeerBody::PairReply(reply) = PeerBody::decode(&bytes).unwrap() else {
            panic!()
        };
        replies.push(reply);
        from_dave.push(session);
    }
    let members_after = rsa(&members);
    for (b, a) in members_before.iter().zip(&members_after) {
        assert_eq!(a - b, 1, "one RSA decryption per member for a join");
    }
    // Dave accepts the replies: no RSA at all.
    let dave_reads: Vec<ReceivingSession> = replies
        .iter()
        .zip(members)
        .map(|(reply, member)| {
            dave_session
                .accept_reply(reply, member.public(), NOW)
                .unwrap()
        })
        .collect();
    assert_eq!(
        dave.rsa_decryptions(),
        dave_before,
        "the newcomer decrypts nothing"
    );
    // A reply is accepted only from the member it names.
    assert!(
        dave_session
            .accept_reply(&replies[0], p.bob.public(), NOW)
            .is_err()
    );
    assert_eq!(rsa(&members), members_after);

    // Everyone reads everyone from the join on; Dave nothing before it.
    let everyone = roster_digest(members.iter().map(|m| fp(m)).chain([fp(dave)]));
    for s in 0..3 {
        let sealed = sending[s]
            .seal(&mut rng, &mut counters[s], 0, b"with dave")
            .unwrap();
        let PeerBody::Message(body) = PeerBody::decode(&sealed.body).unwrap() else {
            panic!()
        };
        assert_eq!(body.header().unwrap().roster, everyone);
        assert_eq!(open(&dave_reads[s], &sealed).unwrap(), b"with dave");
        assert!(
            open(&dave_reads[s], &before[s]).is_err(),
            "nothing before the join"
        );
        for r in (0..3).filter(|r| *r != s) {
            assert_eq!(
                open(reading[r][s].as_ref().unwrap(), &sealed).unwrap(),
                b"with dave"
            );
        }
    }
    let mut dave_counter = SequenceCounter::resume(0, NoPersistence);
    let from_him = dave_session
        .seal(&mut rng, &mut dave_counter, 0, b"hi all")
        .unwrap();
    for session in &from_dave {
        assert_eq!(open(session, &from_him).unwrap(), b"hi all");
    }

    // Carol leaves Alice's session: no RSA, no slot, and the roster says so.
    let rsa_before = rsa(&[&p.alice, &p.bob, &p.carol, dave]);
    assert!(sending[0].remove_recipient(fp(&p.carol)));
    let after = sending[0]
        .seal(&mut rng, &mut counters[0], 0, b"after carol")
        .unwrap();
    assert_eq!(rsa(&[&p.alice, &p.bob, &p.carol, dave]), rsa_before);
    let carol_fp: Fingerprint = fp(&p.carol);
    assert!(after.slots.iter().all(|s| s.recipient != carol_fp));
    assert!(open(reading[2][0].as_ref().unwrap(), &after).is_err());
    assert_eq!(
        open(reading[1][0].as_ref().unwrap(), &after).unwrap(),
        b"after carol"
    );
    let PeerBody::Message(body) = PeerBody::decode(&after.body).unwrap() else {
        panic!()
    };
    assert_eq!(
        body.header().unwrap().roster,
        roster_digest([fp(&p.alice), fp(&p.bob), fp(dave)])
    );
}
