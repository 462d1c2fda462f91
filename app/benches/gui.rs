//! What the chat window costs as its history grows: the same work with 100
//! and with 100 000 messages in the room, so the ratio shows whether a long
//! history slows the app down.
//!
//! - `layout`: `view` and layout of the whole window (what every update
//!   costs before drawing), in iced_test's headless simulator;
//! - `frame`: the same, then drawn to pixels with tiny-skia (what a frame
//!   costs in the real window, at 1024x768);
//! - `message`: one incoming message applied by `update`;
//! - `delivery`: one change of how far a message of yours got (an
//!   `Update::Delivery`, for a message in the middle of the history, where
//!   every tenth message is yours) applied by `update`;
//! - `history`: a stored history handed over by the session at start.
//!
//! `cargo bench -p sotto-client --bench gui`
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // benchmarks

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sotto_app::chat::{Chat, Message};
use sotto_client::account::Account;
use sotto_client::profile::Profile;
use sotto_client::session::{
    self, Chat as Conversation, Delivery, DeliveryState, TrustLevel, Update,
};
use sotto_crypto::{Fingerprint, KdfParams};
use sotto_proto::{RelayAddress, RoomName};

const SIZES: [usize; 2] = [100, 100_000];
const IN_ORDER: u32 = 1 << 31;

fn room() -> Conversation {
    Conversation::Room(RoomName::lobby())
}

fn message(i: u64) -> session::Message {
    let from = ["bob", "carol", "dave"][(i % 3) as usize];
    session::Message {
        chat: room(),
        from: from.parse().unwrap(),
        fingerprint: Fingerprint([(i % 3) as u8; 32]),
        trust: TrustLevel::Unverified,
        outgoing: false,
        seq: i,
        sent_at_ms: 1_800_000_000_000 + i * 1000,
        received_at_ms: 1_800_000_000_000 + i * 1000,
        late: false,
        position: (i, IN_ORDER),
        text: format!("message number {i}: the quick brown fox jumps over the lazy dog"),
        delivery: None,
        expires_at_ms: None,
        file: None,
    }
}

/// Message `i`, every tenth one alice's own, sent and waiting for its
/// receipts from bob, carol and dave.
fn mixed(i: u64) -> session::Message {
    let mut message = message(i);
    if i.is_multiple_of(10) {
        message.from = "alice".parse().unwrap();
        message.fingerprint = Fingerprint([9; 32]);
        message.outgoing = true;
        message.delivery = Some(Delivery {
            state: DeliveryState::Sent,
            recipients: ["bob", "carol", "dave"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect(),
            ..Delivery::default()
        });
    }
    message
}

fn update(chat: &mut Chat, update: Update) {
    let _ = chat.update(Message::Session(1, Box::new(update)));
}

/// A chat window in the lobby with `n` messages of history.
fn chat_with(account: &Account, n: usize) -> Chat {
    let relay = RelayAddress {
        host: "127.0.0.1".into(),
        port: 7447,
        fingerprint: [0; 32],
        alternates: Vec::new(),
    };
    let mut chat = Chat::new(account.clone(), relay, 1);
    update(
        &mut chat,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    update(
        &mut chat,
        Update::History {
            chat: room(),
            messages: (1..=n as u64).map(message).collect(),
        },
    );
    chat
}

fn gui(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let account = runtime
        .block_on(Account::create(
            &Profile::open(dir.path()).unwrap(),
            "alice".parse().unwrap(),
            "bench passphrase".to_owned().into(),
            KdfParams::INSECURE_FOR_TESTS,
        ))
        .unwrap();

    let mut group = c.benchmark_group("gui");
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    for n in SIZES {
        let chat = chat_with(&account, n);
        group.bench_with_input(BenchmarkId::new("layout", n), &chat, |b, chat| {
            b.iter(|| black_box(iced_test::simulator(chat.view())));
        });
        group.bench_with_input(BenchmarkId::new("frame", n), &chat, |b, chat| {
            b.iter(|| {
                let mut ui = iced_test::simulator(chat.view());
                black_box(ui.snapshot(&iced::Theme::Light).unwrap())
            });
        });
        let mut growing = chat_with(&account, n);
        let mut next = n as u64;
        group.bench_function(BenchmarkId::new("message", n), |b| {
            b.iter(|| {
                next += 1;
                update(&mut growing, Update::Message(message(next)));
            });
        });
        let mut mine = chat_with(&account, 0);
        update(
            &mut mine,
            Update::History {
                chat: room(),
                messages: (1..=n as u64).map(mixed).collect(),
            },
        );
        let middle = mixed(n as u64 / 20 * 10);
        let mut receipts = 0usize;
        group.bench_function(BenchmarkId::new("delivery", n), |b| {
            b.iter(|| {
                // Delivered to one, two, then all three, over again.
                receipts = receipts % 3 + 1;
                let mut delivery = middle.delivery.clone().unwrap();
                delivery.delivered = delivery.recipients[..receipts].to_vec();
                update(
                    &mut mine,
                    Update::Delivery {
                        chat: room(),
                        id: middle.id(),
                        delivery,
                    },
                );
            });
        });
        group.bench_function(BenchmarkId::new("history", n), |b| {
            b.iter_batched(
                || (1..=n as u64).map(message).collect::<Vec<_>>(),
                |messages| {
                    let mut chat = chat_with(&account, 0);
                    update(
                        &mut chat,
                        Update::History {
                            chat: room(),
                            messages,
                        },
                    );
                    black_box(chat)
                },
                criterion::BatchSize::LargeInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, gui);
criterion_main!(benches);
