//! Unit tests of the session's age checks and of signature-first
//! acceptance (they count RSA decryptions, which only this crate sees).

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::error::Error;
use crate::identity::Identity;

const NOW: u64 = 1_800_000_000;

fn announcement_made_at(created_at: u64) -> (Identity, Identity, Announcement) {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let alice = Identity::generate_from_rng(&mut rng).unwrap();
    let bob = Identity::generate_from_rng(&mut rng).unwrap();
    let mut session = SendingSession::start(
        &mut rng,
        alice.fingerprint(),
        Conversation::room("lobby"),
        1,
        0,
        created_at,
    );
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], 0)
        .unwrap();
    let announcement = sign_announcements(&alice, &mut rng, unsigned)
        .unwrap()
        .remove(0);
    (alice, bob, announcement)
}

#[test]
fn sessions_are_current_within_their_age_and_the_clock_skew() {
    let at = |created_at: u64| SessionContext {
        conversation: Conversation::room("lobby"),
        sender: Fingerprint([1; 32]),
        recipient: Fingerprint([2; 32]),
        session_id: SessionId([0; 16]),
        epoch: 1,
        first_seq: 0,
        created_at,
        via: Via::Identity,
    };
    let skew = MAX_CLOCK_SKEW.as_secs();
    let oldest = MAX_SESSION_AGE.as_secs() + MAX_DELIVERY_DELAY.as_secs() + skew;
    assert!(at(NOW).is_current(NOW));
    assert!(at(NOW + skew).is_current(NOW));
    assert!(!at(NOW + skew + 1).is_current(NOW));
    assert!(at(NOW - oldest).is_current(NOW));
    assert!(!at(NOW - oldest - 1).is_current(NOW));
    assert!(!at(0).is_current(NOW));
    assert!(!at(1 << 40).is_current(NOW));
    assert!(!at(u64::MAX).is_current(NOW));
}

#[test]
fn an_announcement_too_old_or_from_the_future_is_refused_opaquely_before_rsa() {
    for created_at in [0, 1 << 40] {
        let (alice, bob, announcement) = announcement_made_at(created_at);
        let verified = announcement.verify(&bob, alice.public()).unwrap();
        let before = bob.rsa_decryptions();
        assert!(matches!(
            verified.accept(&mut rand::rng(), &bob, NOW, None),
            Err(Error::DecryptionFailed)
        ));
        assert_eq!(bob.rsa_decryptions(), before, "no RSA decryption");
    }
    let (alice, bob, announcement) = announcement_made_at(NOW - 60);
    let verified = announcement.verify(&bob, alice.public()).unwrap();
    let session = verified.accept(&mut rand::rng(), &bob, NOW, None).unwrap();
    assert_eq!(bob.rsa_decryptions(), 1);
    assert!(session.is_current(NOW));
    let later = NOW + MAX_SESSION_AGE.as_secs() + MAX_DELIVERY_DELAY.as_secs() + 3600;
    assert!(!session.is_current(later));
}

#[test]
fn a_forged_signature_fails_verification_before_any_decryption() {
    let (alice, bob, mut announcement) = announcement_made_at(NOW);
    announcement.signature[0] ^= 1;
    assert!(matches!(
        announcement.verify(&bob, alice.public()),
        Err(Error::DecryptionFailed)
    ));
    assert!(matches!(
        announcement.accept(&mut rand::rng(), &bob, alice.public(), NOW, None),
        Err(Error::DecryptionFailed)
    ));
    assert_eq!(bob.rsa_decryptions(), 0);
}
