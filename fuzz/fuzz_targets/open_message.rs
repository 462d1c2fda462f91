//! Opens arbitrary bytes, and mutations of a real sealed message, as a
//! message from Alice to Bob (sessions v2: the slot opens under Bob's pair
//! key, then the chain gives the message key). Nothing may panic, and
//! nothing but the unmodified message may open. Bodies that decode as an
//! announcement must re-encode to the same bytes and fail Bob's
//! signature-first check unless they are Alice's real announcement; pair
//! replies must fail to open in Alice's session.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_crypto::{
    Conversation, Identity, NoPersistence, PeerBody, PublicIdentity, ReceivingSession,
    SendingSession, SequenceCounter, WrapTo, sign_announcements,
};

const NOW: u64 = 1_764_000_000;

struct Fixture {
    room: Conversation,
    alice: PublicIdentity,
    bob_identity: Identity,
    alice_session: SendingSession,
    bob: ReceivingSession,
    announcement: Vec<u8>,
    body: Vec<u8>,
    slot: Vec<u8>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let alice = Identity::generate_from_rng(&mut rng).expect("keygen");
    let bob = Identity::generate_from_rng(&mut rng).expect("keygen");
    let room = Conversation::room("lobby");
    let mut session = SendingSession::start(&mut rng, alice.fingerprint(), room.clone(), 1, 0, NOW);
    let unsigned = session
        .add_recipients(&mut rng, &[WrapTo::Identity(bob.public())], 0)
        .expect("add");
    let announcements = sign_announcements(&alice, &mut rng, unsigned).expect("sign");
    let receiving = announcements[0]
        .accept(&mut rng, &bob, alice.public(), NOW, None)
        .expect("accept");
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let sealed = session
        .seal(&mut rng, &mut counter, 0, b"fuzz me")
        .expect("seal");
    Fixture {
        room,
        alice: alice.public().clone(),
        bob_identity: bob,
        alice_session: session,
        bob: receiving,
        announcement: PeerBody::Announcement(announcements[0].clone()).encode(),
        body: sealed.body,
        slot: sealed.slots[0].to_bytes().to_vec(),
    }
});

fn open(f: &Fixture, body: &[u8], slot: &[u8]) -> bool {
    match PeerBody::decode(body) {
        Ok(PeerBody::Message(message)) => f.bob.open(&f.room, &message, slot).is_ok(),
        Ok(other) => {
            let encoded = other.encode();
            assert_eq!(encoded, body, "decoding is canonical");
            assert_eq!(PeerBody::decode(&encoded).ok().as_ref(), Some(&other));
            match &other {
                PeerBody::Announcement(a) => {
                    let verified = a.verify(&f.bob_identity, &f.alice).is_ok();
                    assert!(!verified || body == f.announcement);
                }
                PeerBody::PairReply(reply) => {
                    assert!(f.alice_session.accept_reply(reply, &f.alice, NOW).is_err());
                }
                PeerBody::Message(_) => {}
            }
            false
        }
        Err(_) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw: the last 80 bytes are the slot.
        let split = rest.len().saturating_sub(80);
        assert!(
            !open(f, &rest[..split], &rest[split..])
                || (rest[..split] == f.body[..] && rest[split..] == f.slot[..])
        );
        return;
    }
    // Mutate the real message: pairs of (position, xor mask).
    let mut body = f.body.clone();
    let mut slot = f.slot.clone();
    for pair in rest.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([pair[0], pair[1]]));
        let total = body.len() + slot.len();
        let at = at % total;
        if at < body.len() {
            body[at] ^= pair[2];
        } else {
            slot[at - body.len()] ^= pair[2];
        }
    }
    let unchanged = body == f.body && slot == f.slot;
    assert_eq!(open(f, &body, &slot), unchanged);
});
