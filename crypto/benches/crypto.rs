//! The crypto path: seal to 1, 10, 100 and 1000 recipients, open, announce,
//! accept, sealing 64 KiB against raw AES-256-GCM, and a step of the key
//! chain of sessions v2.
//!
//! `cargo bench -p sotto-crypto --bench crypto`; figures in docs/benchmarks.md.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::unreachable
)] // benchmarks

use std::hint::black_box;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_crypto::{
    Conversation, Fingerprint, Identity, NoPersistence, PeerBody, ReceivingSession, SendingSession,
    SendingState, SequenceCounter, SessionContext, SessionId, SessionKey,
};

const SENDER: Fingerprint = Fingerprint([0xA1; 32]);

/// A sending session to `n` recipients with random keys (no RSA: sessions
/// are set up once, and 1000 RSA identities would take minutes to make),
/// plus the first recipient's receiving session.
fn session(n: usize) -> (SendingSession, ReceivingSession) {
    let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
    let keys: Vec<(Fingerprint, SessionKey)> = (0..n)
        .map(|i| {
            let mut fp = [0u8; 32];
            fp[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            (Fingerprint(fp), SessionKey::random(&mut rng))
        })
        .collect();
    let conversation = Conversation::room("lobby");
    let session_id = SessionId([7; 16]);
    let first = &keys[0];
    let receiving = ReceivingSession::restore(
        SessionContext {
            conversation: conversation.clone(),
            sender: SENDER,
            recipient: first.0,
            session_id,
            epoch: 1,
            first_seq: 0,
            created_at: 0,
        },
        SessionKey::from_bytes(*first.1.expose_secret()),
    );
    let sending = SendingSession::restore(SendingState {
        conversation,
        sender: SENDER,
        session_id,
        epoch: 1,
        first_seq: 0,
        created_at: 0,
        last_seq: None,
        sealed: 0,
        keys,
    })
    .unwrap();
    (sending, receiving)
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal_100B");
    let text = [0x61u8; 100];
    for n in [1usize, 10, 100, 1000] {
        let (mut session, _) = session(n);
        let mut counter = SequenceCounter::resume(0, NoPersistence);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                // A fresh session every 2^20 messages, as in real use.
                if session.needs_rotation(0) {
                    session = self::session(n).0;
                    counter = SequenceCounter::resume(0, NoPersistence);
                }
                session
                    .seal(&mut rng, &mut counter, 0, black_box(&text))
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    let conversation = Conversation::room("lobby");
    for len in [100usize, 65536] {
        let (mut session, receiving) = session(100);
        let mut counter = SequenceCounter::resume(0, NoPersistence);
        let sealed = session
            .seal(
                &mut ChaCha20Rng::seed_from_u64(2),
                &mut counter,
                0,
                &vec![0x62; len],
            )
            .unwrap();
        let slot = sealed.slots[0].to_bytes();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| {
                let PeerBody::Message(body) = PeerBody::decode(black_box(&sealed.body)).unwrap()
                else {
                    unreachable!()
                };
                receiving.open(&conversation, &body, &slot).unwrap()
            })
        });
    }
    group.finish();
}

/// Our seal path at 64 KiB to one recipient against a bare AES-256-GCM
/// encryption of the same bytes in place.
fn seal_64k_vs_raw(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal_64KiB");
    let text = vec![0x63u8; 65536];
    group.throughput(Throughput::Bytes(text.len() as u64));
    let cipher = Aes256Gcm::new(&[9u8; 32].into());
    let mut buffer = text.clone();
    group.bench_function("raw_aes_256_gcm", |b| {
        b.iter(|| {
            cipher
                .encrypt_inout_detached(&Nonce::from([0u8; 12]), b"", buffer.as_mut_slice().into())
                .unwrap()
        })
    });
    let (mut session, _) = session(1);
    let mut counter = SequenceCounter::resume(0, NoPersistence);
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    group.bench_function("sotto_seal", |b| {
        b.iter(|| {
            session
                .seal(&mut rng, &mut counter, 0, black_box(&text))
                .unwrap()
        })
    });
    group.finish();
}

fn rsa(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let alice = Identity::generate_from_rng(&mut rng).unwrap();
    let bob = Identity::generate_from_rng(&mut rng).unwrap();
    let room = Conversation::room("lobby");
    let mut group = c.benchmark_group("session_setup");
    group.sample_size(20);
    group.bench_function("announce", |b| {
        b.iter(|| {
            SendingSession::start(&mut rng, &alice, room.clone(), 1, 0, 0, &[bob.public()]).unwrap()
        })
    });
    let (_, announcements) =
        SendingSession::start(&mut rng, &alice, room.clone(), 1, 0, 0, &[bob.public()]).unwrap();
    group.bench_function("accept", |b| {
        b.iter(|| {
            bob.accept(&mut rng, &announcements[0], alice.public())
                .unwrap()
        })
    });
    let mut forged = announcements[0].clone();
    forged.signature[10] ^= 1;
    group.bench_function("reject_forged", |b| {
        b.iter(|| bob.accept(&mut rng, &forged, alice.public()).unwrap_err())
    });
    group.finish();
}

/// The symmetric chain of sessions v2 (`sotto_crypto::chain`, not used by
/// the protocol yet): one step (a message key and the next chain key, two
/// HMAC-SHA256), per recipient and message when every pair advances with
/// the sender's sequence number; and a receiver's jump over 1,000 numbers.
fn chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("chain");
    let mut sending = sotto_crypto::chain::SendingChain::new(&[7; 32], b"bench");
    group.bench_function("step", |b| b.iter(|| black_box(sending.next_key())));
    let receiving = sotto_crypto::chain::ReceivingChain::new(&[7; 32], b"bench");
    group.bench_function("key_1000_ahead", |b| {
        b.iter(|| black_box(receiving.key(1000).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, seal, open, seal_64k_vs_raw, rsa, chain);
criterion_main!(benches);
