//! Sessions v2: each property shown with the check that makes it, so that
//! breaking the check breaks a test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::error::{Error, Result};
use crate::identity::{Fingerprint, Identity};
use crate::message::{PEER_VERSION, PeerBody, SealedMessage, roster_digest};
use crate::prekey::{PrekeyKey, PrekeySecret, SignedPrekey};

const T: u64 = 1_764_000_000;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

struct People {
    alice: Identity,
    bob: Identity,
    carol: Identity,
    dave: Identity,
}

fn people() -> &'static People {
    static PEOPLE: OnceLock<People> = OnceLock::new();
    PEOPLE.get_or_init(|| {
        let load = |name: &str| {
            Identity::load(
                &testdata().join(format!("identities/{name}.sotto-id")),
                b"sotto test vectors",
            )
            .unwrap()
        };
        People {
            alice: load("alice"),
            bob: load("bob"),
            carol: load("carol"),
            dave: load("dave"),
        }
    })
}

/// Bob's signed prekey (test pool key `i`), made at `T`.
fn bob_prekey(i: usize) -> (SignedPrekey, PrekeySecret) {
    let text = std::fs::read_to_string(testdata().join("prekey-keys.txt")).unwrap();
    let line = text.lines().filter(|l| !l.starts_with('#')).nth(i).unwrap();
    let der: Vec<u8> = (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect();
    people()
        .bob
        .make_prekey_with(&mut rng(), PrekeyKey::from_pkcs8_der(&der).unwrap(), T)
        .unwrap()
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(14)
}

fn room() -> Conversation {
    Conversation::room("lobby")
}

/// Alice's session in `lobby` to `to` (identity-wrapped), with each
/// recipient's accepted receiving session.
fn session_to(to: &[&Identity]) -> (SendingSession, Vec<ReceivingSession>) {
    let alice = &people().alice;
    let mut rng = rng();
    let mut session = SendingSession::start(&mut rng, alice.fingerprint(), room(), 7, 100, T);
    let targets: Vec<WrapTo<'_>> = to.iter().map(|r| WrapTo::Identity(r.public())).collect();
    let unsigned = session.add_recipients(&mut rng, &targets, 100).unwrap();
    let announcements = sign_announcements(alice, &mut rng, unsigned).unwrap();
    let receiving = to
        .iter()
        .zip(&announcements)
        .map(|(r, a)| a.accept(&mut rng, r, alice.public(), T, None).unwrap())
        .collect();
    (session, receiving)
}

fn seal(
    session: &mut SendingSession,
    counter: &mut SequenceCounter<NoPersistence>,
    text: &[u8],
) -> SealedMessage {
    session.seal(&mut rng(), counter, 5, text).unwrap()
}

/// Opens `sealed` as `receiving`'s recipient, with the slot for `slot_of`.
fn open(
    receiving: &ReceivingSession,
    sealed: &SealedMessage,
    slot_of: Fingerprint,
) -> Result<Vec<u8>> {
    let PeerBody::Message(body) = PeerBody::decode(&sealed.body)? else {
        return Err(Error::DecryptionFailed);
    };
    let slot = sealed
        .slots
        .iter()
        .find(|s| s.recipient == slot_of)
        .ok_or(Error::DecryptionFailed)?;
    Ok(receiving
        .open(&room(), &body, &slot.to_bytes())?
        .plaintext
        .to_vec())
}

fn counter() -> SequenceCounter<NoPersistence> {
    SequenceCounter::resume(100, NoPersistence)
}

#[test]
fn every_recipient_opens_each_message_once_its_key_forgotten() {
    let p = people();
    let (mut session, mut receiving) = session_to(&[&p.bob, &p.carol]);
    let mut counter = counter();
    for i in 0..5u8 {
        let sealed = seal(&mut session, &mut counter, &[i; 30]);
        assert_eq!(sealed.slots.len(), 2);
        for (r, who) in receiving.iter_mut().zip([&p.bob, &p.carol]) {
            assert_eq!(open(r, &sealed, who.fingerprint()).unwrap(), [i; 30]);
            let PeerBody::Message(body) = PeerBody::decode(&sealed.body).unwrap() else {
                panic!()
            };
            let opened = r
                .open(&room(), &body, &sealed.slots[0].to_bytes())
                .or_else(|_| r.open(&room(), &body, &sealed.slots[1].to_bytes()))
                .unwrap();
            assert_eq!(
                opened.roster,
                roster_digest([
                    p.alice.fingerprint(),
                    p.bob.fingerprint(),
                    p.carol.fingerprint()
                ])
            );
            r.forget(sealed.seq).unwrap();
            // Forgotten: it does not open again.
            assert!(open(r, &sealed, who.fingerprint()).is_err());
        }
    }
}

/// Forward secrecy within a session: a copy of a recipient's whole state
/// (pair key, chain, the keys kept for skipped messages), taken after it
/// read messages, opens none of them, though it holds the pair key that
/// sealed their slots.
#[test]
fn a_stolen_state_opens_nothing_read_before_it() {
    let p = people();
    let (mut session, mut receiving) = session_to(&[&p.bob]);
    let mut counter = counter();
    let bob = p.bob.fingerprint();
    let sealed: Vec<SealedMessage> = (0..6)
        .map(|i| seal(&mut session, &mut counter, &[i; 10]))
        .collect();
    let bob_session = &mut receiving[0];
    // Bob reads all but number 2 (withheld): its key is kept, as skipped.
    for (i, message) in sealed.iter().enumerate() {
        if i != 2 {
            assert!(open(bob_session, message, bob).is_ok());
            bob_session.forget(message.seq).unwrap();
        }
    }
    let stolen = ReceivingSession::restore(bob_session.export()).unwrap();
    for (i, message) in sealed.iter().enumerate() {
        // Only the one never read opens: the documented window of the
        // skipped keys (at most 128). Tried as an attacker would, with
        // every key the copy holds, not only through `open`.
        assert_eq!(open(&stolen, message, bob).is_ok(), i == 2, "message {i}");
        assert_eq!(
            any_key_opens(&bob_session.export(), message),
            i == 2,
            "message {i}"
        );
    }
    // And what follows still opens with the copy: healing needs a restart.
    let later = seal(&mut session, &mut counter, b"later");
    assert_eq!(open(&stolen, &later, bob).unwrap(), b"later");
}

/// Whether any key in `state` (the pair key; the chain's next key and
/// 200 derived from it; every key kept for a skipped message), alone or
/// combined, gives the content key `message`'s header commits to.
fn any_key_opens(state: &ReceivingState, message: &SealedMessage) -> bool {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use subtle::ConstantTimeEq;

    use crate::chain::{ChainKey, SendingChain};
    use crate::message::{commitment, message_digest, slot_aad, slot_nonce};
    use crate::secret::ContentKey;

    let PeerBody::Message(body) = PeerBody::decode(&message.body).unwrap() else {
        panic!()
    };
    let header = body.header().unwrap();
    let slot = message
        .slots
        .iter()
        .find(|s| s.recipient == state.context.recipient)
        .unwrap();
    let mut share = slot.ciphertext;
    let digest = message_digest(body.header, body.ciphertext);
    let opened = aes_gcm::Aes256Gcm::new(state.key.expose_secret().into())
        .decrypt_inout_detached(
            &slot_nonce(header.seq),
            &slot_aad(&digest, &slot.recipient),
            share.as_mut_slice().into(),
            &slot.tag.into(),
        )
        .is_ok();
    assert!(opened, "the pair key opens its slot");
    let mut candidates = vec![[0u8; 32]];
    let mut ahead = SendingChain::from_key(ChainKey::from_bytes(*state.chain.next.expose_secret()));
    for n in 0..200 {
        candidates.push(*ahead.key_at(n).unwrap().as_bytes());
    }
    candidates.extend(state.chain.skipped.iter().map(|(_, k)| *k.as_bytes()));
    candidates.push(*state.key.expose_secret());
    candidates.push(*state.chain.next.expose_secret());
    candidates.iter().any(|mask| {
        let mut key = ContentKey(share);
        for (k, m) in key.0.iter_mut().zip(mask) {
            *k ^= m;
        }
        bool::from(commitment(&key).ct_eq(&header.commitment))
    })
}

/// A recipient added later reads from its first number on; one removed
/// reads nothing after; both without any RSA for the others; the header
/// commits to exactly who could read each message.
#[test]
fn joins_and_leaves_change_who_can_read_and_the_roster_says_so() {
    let p = people();
    let (alice, bob, carol, dave) = (&p.alice, &p.bob, &p.carol, &p.dave);
    let (mut session, receiving) = session_to(&[bob, carol]);
    let mut counter = counter();
    let before = seal(&mut session, &mut counter, b"before");

    let mut rng = rng();
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Identity(dave.public())], counter.peek())
        .unwrap();
    assert_eq!(unsigned[0].context().first_seq, 101);
    let announcement = sign_announcements(alice, &mut rng, unsigned).unwrap();
    let dave_session = announcement[0]
        .accept(&mut rng, dave, alice.public(), T, None)
        .unwrap();
    let with_dave = seal(&mut session, &mut counter, b"with dave");
    assert_eq!(
        open(&dave_session, &with_dave, dave.fingerprint()).unwrap(),
        b"with dave"
    );
    // Dave has no slot before he joined, and carol's does not open for him.
    assert!(open(&dave_session, &before, carol.fingerprint()).is_err());

    assert!(session.remove_recipient(carol.fingerprint()));
    assert!(!session.remove_recipient(carol.fingerprint()));
    let after = seal(&mut session, &mut counter, b"after");
    assert!(
        after
            .slots
            .iter()
            .all(|s| s.recipient != carol.fingerprint())
    );
    assert_eq!(
        open(&receiving[0], &after, bob.fingerprint()).unwrap(),
        b"after"
    );
    // Carol still holds the chain: with it alone, bob's slot does not open
    // (her session refuses a slot addressed to bob; the one made to look
    // like hers fails under her pair key).
    assert!(open(&receiving[1], &after, bob.fingerprint()).is_err());
    let mut as_bob = receiving[1].export();
    as_bob.context.recipient = bob.fingerprint();
    let carol_as_bob = ReceivingSession::restore(as_bob).unwrap();
    assert!(open(&carol_as_bob, &after, bob.fingerprint()).is_err());

    let roster = |who: &[&Identity]| roster_digest(who.iter().map(|i| i.fingerprint()));
    let header = |m: &SealedMessage| {
        let PeerBody::Message(body) = PeerBody::decode(&m.body).unwrap() else {
            panic!()
        };
        body.header().unwrap().roster
    };
    assert_eq!(header(&before), roster(&[alice, bob, carol]));
    assert_eq!(header(&with_dave), roster(&[alice, bob, carol, dave]));
    assert_eq!(header(&after), roster(&[alice, bob, dave]));
}

/// A member answers a newcomer's announcement with a pair reply: no RSA
/// on either side of it, and only the newcomer, who made the key it is
/// sealed under, opens it.
#[test]
fn a_pair_reply_opens_only_for_the_session_it_answers() {
    let p = people();
    let (alice, bob) = (&p.alice, &p.bob);
    let (alice_session, mut receiving) = session_to(&[bob]);
    let from_alice = receiving.remove(0);
    let mut rng = rng();
    let mut bob_session = SendingSession::start(&mut rng, bob.fingerprint(), room(), 9, 40, T);
    let decryptions = (alice.rsa_decryptions(), bob.rsa_decryptions());
    let reply = bob_session.add_by_reply(&mut rng, &from_alice, 40).unwrap();
    let alice_from_bob = alice_session.accept_reply(&reply, bob.public(), T).unwrap();
    assert_eq!(
        decryptions,
        (alice.rsa_decryptions(), bob.rsa_decryptions())
    );

    let mut counter = SequenceCounter::resume(40, NoPersistence);
    let sealed = bob_session
        .seal(&mut rng, &mut counter, 1, b"hi alice")
        .unwrap();
    assert_eq!(
        open(&alice_from_bob, &sealed, alice.fingerprint()).unwrap(),
        b"hi alice"
    );

    // Tampered, claimed by someone else, for another session, or too old:
    // refused, all alike.
    let mut flipped = reply.clone();
    flipped.sealed[3] ^= 1;
    let mut moved = reply.clone();
    moved.context.first_seq = 39;
    let other_session = SendingSession::start(&mut rng, alice.fingerprint(), room(), 8, 0, T);
    for (reply, from, session, now) in [
        (&flipped, bob, &alice_session, T),
        (&moved, bob, &alice_session, T),
        (&reply, &p.carol, &alice_session, T),
        (&reply, bob, &other_session, T),
        (&reply, bob, &alice_session, T + 10 * 24 * 60 * 60),
    ] {
        assert!(matches!(
            session.accept_reply(reply, from.public(), now),
            Err(Error::DecryptionFailed)
        ));
    }
    // A reply is not an announcement: it cannot be answered twice.
    assert!(bob_session.add_by_reply(&mut rng, &from_alice, 41).is_err());
}

/// One signature covers a batch; each leaf checks only with its own path,
/// and a forgery never reaches RSA decryption (P3).
#[test]
fn a_batch_is_signed_once_and_each_leaf_checks_alone() {
    let p = people();
    let (alice, bob, carol, dave) = (&p.alice, &p.bob, &p.carol, &p.dave);
    let mut rng = rng();
    let mut lobby = SendingSession::start(&mut rng, alice.fingerprint(), room(), 1, 0, T);
    let mut other = SendingSession::start(
        &mut rng,
        alice.fingerprint(),
        Conversation::room("other"),
        1,
        0,
        T,
    );
    let mut unsigned = lobby
        .add_recipients(
            &mut rng,
            &[
                WrapTo::Identity(bob.public()),
                WrapTo::Identity(carol.public()),
            ],
            0,
        )
        .unwrap();
    unsigned.extend(
        other
            .add_recipients(&mut rng, &[WrapTo::Identity(dave.public())], 0)
            .unwrap(),
    );
    let signed = sign_announcements(alice, &mut rng, unsigned).unwrap();
    assert_eq!(signed.len(), 3);
    assert!(
        signed
            .iter()
            .all(|a| a.signature == signed[0].signature && a.size == 3)
    );
    for (a, who) in signed.iter().zip([bob, carol, dave]) {
        assert!(a.verify(who, alice.public()).is_ok());
    }

    let before = bob.rsa_decryptions();
    let mut wrong_index = signed[0].clone();
    wrong_index.index = 1;
    let mut carols_path = signed[0].clone();
    carols_path.path = signed[1].path.clone();
    let mut other_key = signed[0].clone();
    other_key.wrapped_key[7] ^= 1;
    let mut later = signed[0].clone();
    later.context.first_seq = 5;
    let mut bigger = signed[0].clone();
    bigger.size = 4;
    let mut huge = signed[0].clone();
    huge.size = u32::try_from(MAX_BATCH).unwrap() + 1;
    let mut replied = signed[0].clone();
    replied.context.via = Via::Reply(lobby.id());
    for forged in [
        wrong_index,
        carols_path,
        other_key,
        later,
        bigger,
        huge,
        replied,
    ] {
        assert!(matches!(
            forged.accept(&mut rng, bob, alice.public(), T, None),
            Err(Error::DecryptionFailed)
        ));
    }
    // Not for bob, or not from alice.
    assert!(signed[1].verify(bob, alice.public()).is_err());
    assert!(signed[0].verify(bob, carol.public()).is_err());
    assert_eq!(bob.rsa_decryptions(), before);
    // Too old or from the future: refused before the decryption too.
    for now in [T - 2 * 60 * 60, T + 9 * 24 * 60 * 60] {
        assert!(
            signed[0]
                .accept(&mut rng, bob, alice.public(), now, None)
                .is_err()
        );
    }
    assert_eq!(bob.rsa_decryptions(), before);
    assert!(
        signed[0]
            .accept(&mut rng, bob, alice.public(), T, None)
            .is_ok()
    );
    assert_eq!(bob.rsa_decryptions(), before + 1);
}

/// Wrapped to a prekey, the key opens only with that prekey's private
/// half: not with the identity key, not with another prekey.
#[test]
fn a_key_wrapped_to_a_prekey_needs_that_prekey() {
    let p = people();
    let (alice, bob) = (&p.alice, &p.bob);
    let (signed, secret) = bob_prekey(0);
    let (_, other_secret) = bob_prekey(1);
    let verified = SignedPrekey::verify(signed.as_bytes(), bob.public(), T).unwrap();
    let mut rng = rng();
    let mut session = SendingSession::start(&mut rng, alice.fingerprint(), room(), 1, 0, T);
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Prekey(&verified)], 0)
        .unwrap();
    assert_eq!(unsigned[0].context().via, Via::Prekey(verified.id()));
    let announcement = sign_announcements(alice, &mut rng, unsigned)
        .unwrap()
        .remove(0);
    for prekey in [None, Some(&other_secret)] {
        assert!(matches!(
            announcement.accept(&mut rng, bob, alice.public(), T, prekey),
            Err(Error::DecryptionFailed)
        ));
    }
    let receiving = announcement
        .accept(&mut rng, bob, alice.public(), T, Some(&secret))
        .unwrap();
    assert_eq!(secret.rsa_decryptions(), 1);
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let sealed = session
        .seal(&mut rng, &mut counter, 0, b"forward secret")
        .unwrap();
    assert_eq!(
        open(&receiving, &sealed, bob.fingerprint()).unwrap(),
        b"forward secret"
    );
    // An identity-wrapped announcement does not take a prekey.
    let (_, mut from_identity) = {
        let mut s = SendingSession::start(&mut rng, alice.fingerprint(), room(), 2, 0, T);
        let u = s
            .add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], 0)
            .unwrap();
        (s, sign_announcements(alice, &mut rng, u).unwrap())
    };
    assert!(
        from_identity
            .remove(0)
            .accept(&mut rng, bob, alice.public(), T, Some(&secret))
            .is_err()
    );
}

/// Who may be added, and when: never the sender, never twice, never to
/// read what was already sealed; a direct conversation only its peer.
#[test]
fn recipients_are_checked_before_any_rsa() {
    let p = people();
    let (alice, bob, carol) = (&p.alice, &p.bob, &p.carol);
    let mut rng = rng();
    let mut session = SendingSession::start(&mut rng, alice.fingerprint(), room(), 1, 0, T);
    for targets in [
        vec![WrapTo::Identity(alice.public())],
        vec![
            WrapTo::Identity(bob.public()),
            WrapTo::Identity(bob.public()),
        ],
    ] {
        assert!(session.add_recipients(&mut rng, &targets, 0).is_err());
    }
    session
        .add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], 0)
        .unwrap();
    assert!(
        session
            .add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], 0)
            .is_err()
    );
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    seal(&mut session, &mut counter, b"0");
    assert!(
        session
            .add_recipients(&mut rng, &[WrapTo::Identity(carol.public())], 0)
            .is_err()
    );
    assert!(
        session
            .add_recipients(&mut rng, &[WrapTo::Identity(carol.public())], 1)
            .is_ok()
    );

    let direct = Conversation::direct(alice.fingerprint(), bob.fingerprint());
    let mut dm = SendingSession::start(&mut rng, alice.fingerprint(), direct, 1, 0, T);
    assert!(
        dm.add_recipients(&mut rng, &[WrapTo::Identity(carol.public())], 0)
            .is_err()
    );
    assert!(
        dm.add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], 0)
            .is_ok()
    );
}

/// Healing bounds: a session restarts after a day or 10,000 messages, and
/// refuses to seal past the count.
#[test]
fn a_session_must_restart_after_a_day_or_ten_thousand_messages() {
    let p = people();
    let (mut session, _) = session_to(&[&p.bob]);
    assert!(!session.needs_rotation(T + 24 * 60 * 60 - 1));
    assert!(session.needs_rotation(T + 24 * 60 * 60));
    let mut counter = counter();
    let mut rng = rng();
    for _ in 0..MAX_MESSAGES_PER_SESSION {
        session.seal(&mut rng, &mut counter, 0, b"").unwrap();
    }
    assert!(session.needs_rotation(T));
    assert!(matches!(
        session.seal(&mut rng, &mut counter, 0, b""),
        Err(Error::SessionExhausted)
    ));
}

#[test]
fn peer_bodies_have_one_encoding_and_version_two() {
    let p = people();
    let (mut session, _) = session_to(&[&p.bob]);
    let mut counter = counter();
    let sealed = seal(&mut session, &mut counter, b"x");
    assert_eq!(sealed.body[0], PEER_VERSION);
    assert_eq!(
        PeerBody::decode(&sealed.body).unwrap().encode(),
        sealed.body
    );
    let mut v1 = sealed.body.clone();
    v1[0] = 1;
    assert!(PeerBody::decode(&v1).is_err());
    let mut trailing = sealed.body.clone();
    trailing.push(0);
    assert!(PeerBody::decode(&trailing).is_err());
    let (alice_session, receiving) = session_to(&[&p.bob]);
    let mut bob_session = SendingSession::start(&mut rng(), p.bob.fingerprint(), room(), 1, 0, T);
    let reply = bob_session
        .add_by_reply(&mut rng(), &receiving[0], 0)
        .unwrap();
    let encoded = PeerBody::PairReply(reply.clone()).encode();
    assert_eq!(
        PeerBody::decode(&encoded).unwrap(),
        PeerBody::PairReply(reply)
    );
    drop(alice_session);
}

/// A message under `session` as the test chooses its keys: the chain's key
/// for `seq` taken from a copy of the chain a recipient was given.
fn seal_with(
    session: &SendingSession,
    receiving: &ReceivingSession,
    committed: &crate::secret::ContentKey,
    body_key: &crate::secret::ContentKey,
    slot_key: &crate::secret::ContentKey,
) -> SealedMessage {
    let message_key = receiving.chain_key_for_tests(100);
    session
        .seal_parts(
            100,
            0,
            b"x",
            crate::message::commitment(committed),
            body_key,
            slot_key,
            &message_key,
        )
        .unwrap()
}

#[test]
fn mismatched_key_commitment_is_rejected() {
    use crate::secret::ContentKey;
    let p = people();
    let (session, receiving) = session_to(&[&p.bob]);
    let bob = p.bob.fingerprint();
    let (committed, used) = (ContentKey([1; 32]), ContentKey([2; 32]));
    // Control: a consistent message under `used` opens.
    let honest = seal_with(&session, &receiving[0], &used, &used, &used);
    assert_eq!(open(&receiving[0], &honest, bob).unwrap(), b"x");
    // Body and slot agree on `used`, but the header commits to another key:
    // what a sender would do to show two recipients two texts.
    let split = seal_with(&session, &receiving[0], &committed, &used, &used);
    assert!(matches!(
        open(&receiving[0], &split, bob),
        Err(Error::DecryptionFailed)
    ));
}

#[test]
fn body_under_another_key_than_the_slot_is_rejected() {
    use crate::secret::ContentKey;
    let p = people();
    let (session, receiving) = session_to(&[&p.bob]);
    let (slot_key, body_key) = (ContentKey([1; 32]), ContentKey([2; 32]));
    let sealed = seal_with(&session, &receiving[0], &slot_key, &body_key, &slot_key);
    assert!(matches!(
        open(&receiving[0], &sealed, p.bob.fingerprint()),
        Err(Error::DecryptionFailed)
    ));
}

#[test]
fn hand_written_body_encoding_matches_postcard() {
    let p = people();
    let (mut session, _) = session_to(&[&p.bob]);
    let mut counter = counter();
    for len in [0, 100, 200, 20_000] {
        let sealed = seal(&mut session, &mut counter, &vec![7; len]);
        let decoded = PeerBody::decode(&sealed.body).unwrap();
        assert_eq!(decoded.encode(), sealed.body, "length {len}");
    }
}
