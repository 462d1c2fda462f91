//! Receiving: messages stored per second by the session's engine through
//! the real encrypted store on a real temporary directory, with one read
//! batch (one durable commit) of 1 (every message its own commit), 64 and
//! 256 messages, in the same run.
//!
//! `cargo bench -p sotto-client --bench receive`; figures in
//! docs/benchmarks.md ("Client: receiving").

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // benchmarks

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sotto_client::account::Account;
use sotto_client::profile::Profile;
use sotto_client::session::Update;
use sotto_client::session::bench::Receiver;
use sotto_crypto::{
    Conversation, Identity, NoPersistence, PeerBody, SendingSession, SequenceCounter, WrapTo,
    sign_announcements,
};
use sotto_proto::{ClientFrame, Destination, Member, RelayFrame, RoomName, UserName};

fn fixture(name: &str) -> Arc<Identity> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../testdata/identities/{name}.sotto-id"));
    Arc::new(Identity::load(&path, b"sotto test vectors").unwrap())
}

fn name(name: &str) -> UserName {
    name.parse().unwrap()
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Bob sending to alice in the lobby: his session, and the next delivery
/// number the relay gives.
struct Bob {
    session: SendingSession,
    counter: SequenceCounter<NoPersistence>,
    delivery: u64,
}

impl Bob {
    /// The next `count` messages, as the relay delivers them (stored
    /// deliveries, so each is acknowledged).
    fn deliveries(&mut self, count: usize) -> Vec<RelayFrame> {
        (0..count)
            .map(|n| {
                let text = format!("message {n}: about a hundred bytes of text, as a chat line usually is, give or take.");
                let sealed = self
                    .session
                    .seal(
                        &mut rand::rng(),
                        &mut self.counter,
                        u64::try_from(now().as_millis()).unwrap(),
                        text.as_bytes(),
                    )
                    .unwrap();
                self.delivery += 1;
                RelayFrame::Deliver {
                    delivery: self.delivery,
                    from: name("bob"),
                    to: Destination::Room(RoomName::lobby()),
                    body: sealed.body.clone().into(),
                    slot: Some(sealed.slots[0].to_bytes().to_vec().into()),
                }
            })
            .collect()
    }
}

/// Alice's engine on a fresh data directory, in the lobby with bob, who
/// announced his session; and bob.
fn alice_and_bob(dir: &Path) -> (Receiver, Bob) {
    let (alice, bob) = (fixture("alice"), fixture("bob"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let account = runtime
        .block_on(Account::open(
            Profile::open(dir).unwrap(),
            alice.clone(),
            Some(name("alice")),
        ))
        .unwrap();
    let members = [("alice", &alice), ("bob", &bob)]
        .map(|(n, id)| Member {
            name: name(n),
            identity: id.public().to_bytes().into(),
            online: true,
            prekeys: Vec::new(),
        })
        .to_vec();
    let mut receiver = Receiver::new(&account, name("alice"), RoomName::lobby(), members).unwrap();
    // Wrapped to alice's identity key (this bench has no prekey
    // directory): the same RSA work as a prekey, and what is measured
    // is the messages after it.
    let mut session = SendingSession::start(
        &mut rand::rng(),
        bob.fingerprint(),
        Conversation::room("lobby"),
        1,
        0,
        now().as_secs(),
    );
    let unsigned = session
        .add_recipients(&mut rand::rng(), &[WrapTo::Identity(alice.public())], 0)
        .unwrap();
    let mut announcements = sign_announcements(&bob, &mut rand::rng(), unsigned).unwrap();
    let announce = RelayFrame::Deliver {
        delivery: 0,
        from: name("bob"),
        to: Destination::User(name("alice")),
        body: PeerBody::Announcement(announcements.remove(0))
            .encode()
            .into(),
        slot: None,
    };
    receiver.receive(vec![announce]);
    let bob = Bob {
        session,
        counter: SequenceCounter::resume(0, NoPersistence),
        delivery: 0,
    };
    (receiver, bob)
}

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive");
    for batch in [1usize, 64, 256] {
        let dir = tempfile::tempdir().unwrap();
        let (mut receiver, mut bob) = alice_and_bob(dir.path());
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(
            BenchmarkId::new("stored messages, read batch of", batch),
            |b| {
                b.iter_batched(
                    || bob.deliveries(batch),
                    |frames| {
                        let (sent, updates) = receiver.receive(frames);
                        // Every message stored and shown, every one acknowledged.
                        let shown = updates
                            .iter()
                            .filter(|u| matches!(u, Update::Message(_)))
                            .count();
                        let acks = sent
                            .iter()
                            .filter(|f| matches!(f, ClientFrame::Ack { .. }))
                            .count();
                        assert_eq!((shown, acks), (batch, batch), "{updates:?}");
                    },
                    BatchSize::PerIteration,
                );
            },
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = receive
}
criterion_main!(benches);
