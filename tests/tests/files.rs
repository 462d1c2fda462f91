//! Files end to end (issue 16): real clients and the real relay. A file
//! sent to a room or a person is sealed in chunks, uploaded, offered in a
//! message, and saved by a recipient byte for byte; an upload or a
//! download cut off goes on where it stopped (an upload also after a
//! restart of its client); what the relay refuses is said, and nothing of
//! a failed download is left on disk. The relay as an attacker on chunks
//! is `tests/tests/hostile_relay.rs`, s23.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sotto_client::backoff::Backoff;
use sotto_client::session::{
    BlobId, Chat, Command, DeliveryState, Direction, ProblemCode, Transfer, TransferState, Update,
};
use sotto_proto::ErrorCode;
use sotto_testkit::*;

/// `len` bytes that differ from chunk to chunk and from file to file.
fn contents(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let [low, _, third, ..] = i.to_le_bytes();
            low.wrapping_mul(31).wrapping_add(seed) ^ third
        })
        .collect()
}

/// A file of `contents` in `dir`.
fn file_in(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// What is in `dir` (names), sorted: no temporary file may be left.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn is_done(transfer: &Transfer) -> bool {
    matches!(transfer.state, TransferState::Done { .. })
}

/// A room file, a direct file and an empty file: each offered once its
/// chunks are on the relay, each saved byte for byte by the recipient,
/// the room one receipted like a text; a file that exists already is not
/// overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sent_to_a_room_and_to_a_person_are_saved_byte_for_byte() {
    let (bed, mut alice, mut bob) = alice_and_bob().await;
    let mine = bed.temp.path().join("alice-files");
    let saved = bed.temp.path().join("bob-saved");
    std::fs::create_dir_all(&saved).unwrap();
    // Three full chunks and a short one; one short chunk; none.
    let cases = [
        ("photo.png", lobby(), contents(3 * 65_536 + 5, 1)),
        ("notes.txt", dm("bob"), contents(1000, 2)),
        ("empty", dm("bob"), Vec::new()),
    ];
    for (name, chat, bytes) in &cases {
        let path = file_in(&mine, name, bytes);
        alice.command(Command::SendFile {
            chat: chat.clone(),
            path,
        });
        let sent = alice.transfer_ended(Some(name), Direction::Upload).await;
        assert!(is_done(&sent), "{sent:?}");
        assert_eq!(
            (sent.done, sent.size),
            (bytes.len() as u64, bytes.len() as u64)
        );
        let own = alice.expect_file(chat, Some(name)).await;
        assert!(own.outgoing);
        let seen_by_bob = match chat {
            Chat::Room(_) => lobby(),
            Chat::Direct(_) => dm("alice"),
        };
        let message = bob.expect_file(&seen_by_bob, Some(name)).await;
        let file = message.file.clone().unwrap();
        assert_eq!(file.size, bytes.len() as u64);
        assert_eq!(message.text, *name);
        let to = saved.join(name);
        let got = bob.save_file(&message, &to).await;
        assert_eq!(
            got.state,
            TransferState::Done {
                path: Some(to.clone())
            }
        );
        assert_eq!(std::fs::read(&to).unwrap(), *bytes, "{name}");
        // The same file again, to where it now is: refused, not
        // overwritten.
        let again = bob.save_file(&message, &to).await;
        assert!(
            matches!(&again.state, TransferState::Failed(p) if p.code == ProblemCode::File),
            "{again:?}"
        );
        assert_eq!(std::fs::read(&to).unwrap(), *bytes);
    }
    assert_eq!(listing(&saved), ["empty", "notes.txt", "photo.png"]);
    // Receipted like a text: alice sees the room file delivered to bob.
    let delivered = |u: &Update| {
        matches!(u, Update::Delivery { chat, delivery, .. } if *chat == lobby()
            && delivery.state == DeliveryState::Sent
            && delivery.delivered.iter().any(|n| n.as_str() == "bob"))
    };
    if !alice.saw(delivered) {
        alice.expect(delivered).await;
    }
    // The staging copies are gone once offered.
    let staging = alice.account.profile().dir().join("uploads");
    assert_eq!(listing(&staging), Vec::<String>::new());
    // After a restart, the history still holds the file, and it can be
    // saved again.
    let relay = bed.relay.address.clone();
    let account = bob.account.clone();
    bob.quit().await;
    let mut bob = Peer::connect(account, &relay).await;
    let history = bob
        .expect(|u| matches!(u, Update::History { chat, .. } if *chat == lobby()))
        .await;
    let Update::History { messages, .. } = history else {
        unreachable!()
    };
    let photo = messages
        .iter()
        .find(|m| m.file.as_ref().is_some_and(|f| f.name == "photo.png"))
        .unwrap()
        .clone();
    let to = saved.join("photo again.png");
    assert!(is_done(&bob.save_file(&photo, &to).await));
    assert_eq!(std::fs::read(&to).unwrap(), cases[0].2);
}

/// A file larger than the relay takes is refused before anything is
/// sealed or sent, naming the limit; one the relay refuses for its quota
/// fails with the relay's code; neither leaves a staging copy behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_relay_will_not_take_is_refused_with_its_reason() {
    let temp = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&temp.path().join("relay"), 0, |config| {
        config.blob_max_bytes = 200_000;
        config.blob_quota_bytes = 300_000;
    });
    let mut alice = Peer::join(temp.path(), "alice", &relay.address).await;
    alice.expect_members("lobby", &["alice"]).await;
    let mine = temp.path().join("files");
    let big = file_in(&mine, "big.bin", &contents(300_000, 3));
    alice.command(Command::SendFile {
        chat: lobby(),
        path: big,
    });
    let refused = alice
        .expect(
            |u| matches!(u, Update::Error(p) if p.code == ProblemCode::Relay(ErrorCode::TooLarge)),
        )
        .await;
    let Update::Error(problem) = refused else {
        unreachable!()
    };
    assert!(
        problem.message.contains("big.bin") && problem.message.contains("195 KiB"),
        "{problem:?}"
    );
    // Two of 131,104 bytes each fit one at a time in a quota of 300,000.
    for (name, expect_done) in [("one.bin", true), ("two.bin", true), ("three.bin", false)] {
        let path = file_in(&mine, name, &contents(65_536 + 1, 4));
        alice.command(Command::SendFile {
            chat: lobby(),
            path,
        });
        let transfer = alice.transfer_ended(Some(name), Direction::Upload).await;
        if expect_done {
            assert!(is_done(&transfer), "{transfer:?}");
        } else {
            assert!(
                matches!(&transfer.state, TransferState::Failed(p)
                    if p.code == ProblemCode::Relay(ErrorCode::LimitReached)),
                "{transfer:?}"
            );
        }
    }
    let staging = alice.account.profile().dir().join("uploads");
    assert_eq!(listing(&staging), Vec::<String>::new());
}

/// `name` connected through `proxy`, retrying every 50-200 ms.
async fn through(bed: &Testbed, proxy: &Proxy, name: &str) -> Peer {
    let dir = bed.temp.path().join(name);
    let short = Duration::from_millis(50);
    Peer::connect_with(
        account(&dir, name, name).await,
        &proxy.relay_address(&bed.relay.address),
        |config| config.limits.reconnect = Backoff::new(short, short * 4, Duration::from_secs(60)),
    )
    .await
}

fn proxy_to(bed: &Testbed) -> Proxy {
    let relay: SocketAddr = ([127, 0, 0, 1], bed.relay.address.port).into();
    Proxy::start(relay)
}

/// Both connections cut in the middle of their transfer: the upload goes
/// on from what the relay holds (it does not start again: the bytes it
/// sends stay within one window of the file's size), the download from
/// its next chunk, and the file arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cut_off_go_on_where_they_stopped() {
    let bed = Testbed::start();
    let up = proxy_to(&bed);
    let down = proxy_to(&bed);
    let mut alice = through(&bed, &up, "alice").await;
    let mut bob = through(&bed, &down, "bob").await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    let size = 2 * 1024 * 1024 + 7;
    let bytes = contents(size, 5);
    let path = file_in(&bed.temp.path().join("files"), "big.bin", &bytes);
    let before = up.stats().to_upstream;
    alice.command(Command::SendFile {
        chat: lobby(),
        path,
    });
    // Cut once a third is through, then again at two thirds (on the
    // connection made after the first cut).
    for third in 1..=2u64 {
        up.wait_until(|s| {
            s.to_upstream >= before + third * size as u64 / 3 && s.open > 0 && s.accepted >= third
        })
        .await;
        up.reset();
    }
    let sent = alice
        .transfer_ended(Some("big.bin"), Direction::Upload)
        .await;
    assert!(is_done(&sent), "{sent:?}");
    assert_eq!(up.stats().reset, 2);
    // Each cut may cost what was in flight (one window of 8 chunks) and a
    // handshake; starting again would cost a third of the file or more.
    let sent_bytes = up.stats().to_upstream - before;
    let bound = size as u64 + 2 * (8 * 65_552 + 16_384);
    assert!(sent_bytes < bound, "{sent_bytes} bytes sent for {size}");
    let message = bob.expect_file(&lobby(), Some("big.bin")).await;
    let to = bed.temp.path().join("bob-big.bin");
    let before = down.stats().to_client;
    bob.command(Command::SaveFile {
        chat: lobby(),
        message: message.id(),
        to: to.clone(),
    });
    down.wait_until(|s| s.to_client >= before + size as u64 / 2)
        .await;
    down.reset();
    let got = bob
        .transfer_ended(Some("big.bin"), Direction::Download)
        .await;
    assert!(is_done(&got), "{got:?}");
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
}

/// An upload whose client quits half way (its path stalled) goes on when
/// the client starts again, from what the relay holds, and is offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_on_after_its_client_restarts() {
    let bed = Testbed::start();
    let up = proxy_to(&bed);
    let mut alice = through(&bed, &up, "alice").await;
    let mut bob = bed.join("bob").await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    let size = 1024 * 1024;
    let bytes = contents(size, 6);
    let path = file_in(&bed.temp.path().join("files"), "half.bin", &bytes);
    let before = up.stats().to_upstream;
    alice.command(Command::SendFile {
        chat: lobby(),
        path: path.clone(),
    });
    up.wait_until(|s| s.to_upstream >= before + size as u64 / 2)
        .await;
    up.stall(true);
    up.reset();
    // The file the upload was sealed from may change or go now: what is
    // sent is its sealed copy.
    std::fs::remove_file(&path).unwrap();
    let account = alice.account.clone();
    alice.quit().await;
    let uploads = account.store().uploads().unwrap();
    assert_eq!(uploads.len(), 1, "the upload is kept for the next run");
    let blob: BlobId = uploads[0].manifest.blob;
    let mut alice = Peer::connect(account, &bed.relay.address).await;
    let sent = alice
        .transfer_ended(Some("half.bin"), Direction::Upload)
        .await;
    assert!(is_done(&sent), "{sent:?}");
    assert_eq!(sent.blob, blob);
    let message = bob.expect_file(&lobby(), Some("half.bin")).await;
    let to = bed.temp.path().join("bob-half.bin");
    assert!(is_done(&bob.save_file(&message, &to).await));
    assert_eq!(std::fs::read(&to).unwrap(), bytes);
}
