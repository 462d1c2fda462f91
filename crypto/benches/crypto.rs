//! The crypto path: seal to 1, 10, 100 and 1000 recipients, open, sealing
//! 64 KiB against raw AES-256-GCM, a step of the key chain, and the RSA
//! work of setting sessions up: announcing (to one recipient, and 100 under
//! one signature), accepting, rejecting a forgery, and the pair reply that
//! needs no RSA; and sealing and opening a 1 MiB file against raw
//! AES-256-GCM.
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
use sotto_crypto::chain::{ChainKey, ReceivingChain, SendingChain};
use sotto_crypto::file::{CHUNK_LEN, FileOpener, FileSealer};
use sotto_crypto::{
    Conversation, Fingerprint, Identity, NoPersistence, PeerBody, PrekeyKey, ReceivingSession,
    SendingSession, SequenceCounter, SignedPrekey, WrapTo, sign_announcements,
};

const SENDER: Fingerprint = Fingerprint([0xA1; 32]);
/// When the sessions of the RSA benchmarks are made and accepted.
const NOW: u64 = 1_764_000_000;

/// A sending session to `n` recipients whose pair keys are not wrapped
/// (`SendingSession::add_unwrapped`, hazmat: sessions are set up once, and
/// 1000 RSA identities would take minutes to make; the RSA work is measured
/// apart, in `rsa`), plus the first recipient's receiving session.
fn session(n: usize) -> (SendingSession, ReceivingSession) {
    let mut rng = ChaCha20Rng::seed_from_u64(n as u64);
    let recipients: Vec<Fingerprint> = (0..n)
        .map(|i| {
            let mut fp = [0u8; 32];
            fp[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            Fingerprint(fp)
        })
        .collect();
    let mut sending = SendingSession::start(&mut rng, SENDER, Conversation::room("lobby"), 1, 0, 0);
    let mut receiving = sending.add_unwrapped(&mut rng, &recipients, 0).unwrap();
    (sending, receiving.swap_remove(0))
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
                // A fresh session every 10,000 messages, as in real use.
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
            if session.needs_rotation(0) {
                session = self::session(1).0;
                counter = SequenceCounter::resume(0, NoPersistence);
            }
            session
                .seal(&mut rng, &mut counter, 0, black_box(&text))
                .unwrap()
        })
    });
    group.finish();
}

/// Key 0 of the test pool (`testdata/prekey-keys.txt`): prekey key
/// generation (seconds) is not what is measured.
fn pool_key() -> PrekeyKey {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/prekey-keys.txt");
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    let der: Vec<u8> = (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect();
    PrekeyKey::from_pkcs8_der(&der).unwrap()
}

/// Setting sessions up: the RSA operations, and the pair reply that
/// replaces them for a member answering a newcomer.
fn rsa(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let alice = Identity::generate_from_rng(&mut rng).unwrap();
    let bob = Identity::generate_from_rng(&mut rng).unwrap();
    let (signed, bob_secret) = bob.make_prekey_with(&mut rng, pool_key(), NOW).unwrap();
    let prekey = SignedPrekey::verify(signed.as_bytes(), bob.public(), NOW).unwrap();
    let room = Conversation::room("lobby");
    let mut group = c.benchmark_group("session_setup");
    group.sample_size(20);

    // One recipient: one OAEP encryption to its prekey, one PSS signature.
    group.bench_function("announce", |b| {
        b.iter(|| {
            let mut session =
                SendingSession::start(&mut rng, alice.fingerprint(), room.clone(), 1, 0, NOW);
            let unsigned = session
                .add_recipients(&mut rng, &[WrapTo::Prekey(&prekey)], 0)
                .unwrap();
            sign_announcements(&alice, &mut rng, unsigned).unwrap()
        })
    });
    // 100 announcements under one signature (100 OAEP encryptions, a
    // Merkle tree, one PSS signature): what a newcomer to a room of 100
    // spends. Here 100 sessions to Bob's prekey, since 100 identities
    // would take minutes to make; an OAEP encryption costs the same to
    // any RSA-3072 key.
    group.bench_function("announce_batch_100", |b| {
        b.iter(|| {
            let mut unsigned = Vec::with_capacity(100);
            for i in 0..100 {
                let conversation = Conversation::room(format!("room {i}"));
                let mut session =
                    SendingSession::start(&mut rng, alice.fingerprint(), conversation, 1, 0, NOW);
                unsigned.extend(
                    session
                        .add_recipients(&mut rng, &[WrapTo::Prekey(&prekey)], 0)
                        .unwrap(),
                );
            }
            sign_announcements(&alice, &mut rng, unsigned).unwrap()
        })
    });

    let mut alice_session =
        SendingSession::start(&mut rng, alice.fingerprint(), room.clone(), 1, 0, NOW);
    let unsigned = alice_session
        .add_recipients(&mut rng, &[WrapTo::Prekey(&prekey)], 0)
        .unwrap();
    let announcement = sign_announcements(&alice, &mut rng, unsigned)
        .unwrap()
        .remove(0);
    // PSS verify of the root, then OAEP decryption with the prekey.
    group.bench_function("accept", |b| {
        b.iter(|| {
            announcement
                .accept(&mut rng, &bob, alice.public(), NOW, Some(&bob_secret))
                .unwrap()
        })
    });
    let mut forged = announcement.clone();
    forged.signature[10] ^= 1;
    group.bench_function("reject_forged", |b| {
        b.iter(|| {
            forged
                .accept(&mut rng, &bob, alice.public(), NOW, Some(&bob_secret))
                .unwrap_err()
        })
    });

    // Bob answers Alice's pair key with his own (no RSA): sealing the
    // reply, and Alice opening it.
    let from_alice = announcement
        .accept(&mut rng, &bob, alice.public(), NOW, Some(&bob_secret))
        .unwrap();
    let mut bob_session = SendingSession::start(&mut rng, bob.fingerprint(), room, 1, 0, NOW);
    group.bench_function("pair_reply_seal", |b| {
        b.iter(|| {
            let reply = bob_session.add_by_reply(&mut rng, &from_alice, 0).unwrap();
            bob_session.remove_recipient(alice.fingerprint());
            reply
        })
    });
    let reply = bob_session.add_by_reply(&mut rng, &from_alice, 0).unwrap();
    group.bench_function("pair_reply_open", |b| {
        b.iter(|| {
            alice_session
                .accept_reply(black_box(&reply), bob.public(), NOW)
                .unwrap()
        })
    });
    group.finish();
}

/// The symmetric chain (`sotto_crypto::chain`): one step
/// (a message key and the next chain key, one BLAKE3 compression), and a
/// receiver's key 1,000 numbers ahead.
fn chain(c: &mut Criterion) {
    let mut group = c.benchmark_group("chain");
    let mut sending = SendingChain::from_key(ChainKey::from_bytes([7; 32]));
    let mut n = 0u64;
    group.bench_function("step", |b| {
        b.iter(|| {
            // Restart before the jump bound, as sessions do.
            if n == 9_999 {
                sending = SendingChain::from_key(ChainKey::from_bytes([7; 32]));
                n = 0;
            }
            n += 1;
            black_box(sending.key_at(n).unwrap())
        })
    });
    let receiving = ReceivingChain::from_key(ChainKey::from_bytes([7; 32]));
    group.bench_function("key_1000_ahead", |b| {
        b.iter(|| black_box(receiving.key(1000).unwrap()))
    });
    group.finish();
}

/// A 1 MiB file (16 chunks): sealing (AES-256-GCM and the BLAKE3 digest)
/// and opening (the same, and the digest check) against bare AES-256-GCM
/// in place over the same 16 chunks.
fn file(c: &mut Criterion) {
    const SIZE: usize = 16 * CHUNK_LEN;
    let mut group = c.benchmark_group("file");
    group.throughput(Throughput::Bytes(SIZE as u64));
    let plaintext = vec![0x64u8; SIZE];
    let seal = || {
        let mut sealer = FileSealer::new(SIZE as u64).unwrap();
        let chunks: Vec<Vec<u8>> = plaintext
            .chunks(CHUNK_LEN)
            .map(|chunk| sealer.seal_chunk(black_box(chunk)).unwrap())
            .collect();
        (sealer.finish().unwrap(), chunks)
    };
    group.bench_function("seal_1MiB", |b| b.iter(seal));
    let (manifest, chunks) = seal();
    group.bench_function("open_1MiB", |b| {
        b.iter(|| {
            let mut opener = FileOpener::new(&manifest).unwrap();
            for (index, chunk) in (0..).zip(&chunks) {
                black_box(opener.open_chunk(index, black_box(chunk)).unwrap());
            }
            opener.finish().unwrap()
        })
    });
    let cipher = Aes256Gcm::new(&[9u8; 32].into());
    let mut buffers: Vec<Vec<u8>> = plaintext.chunks(CHUNK_LEN).map(<[u8]>::to_vec).collect();
    group.bench_function("raw_aes_256_gcm_1MiB", |b| {
        b.iter(|| {
            for (index, buffer) in (0u32..).zip(&mut buffers) {
                let mut nonce = [0u8; 12];
                nonce[8..].copy_from_slice(&index.to_be_bytes());
                black_box(
                    cipher
                        .encrypt_inout_detached(
                            &Nonce::from(nonce),
                            b"",
                            buffer.as_mut_slice().into(),
                        )
                        .unwrap(),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, seal, open, seal_64k_vs_raw, rsa, chain, file);
criterion_main!(benches);
