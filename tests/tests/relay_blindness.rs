//! P1, P12 and keys at rest: a marker plaintext sent through the relay in a
//! room, a live direct message and a stored (offline) direct message never
//! appears in the relay's logs at trace level, in any file the relay wrote,
//! or in the clients' data directories. (One test per file: the log capture
//! is the process's global tracing subscriber.)
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sotto_client::session::Update;
use sotto_testkit::*;

const MARKER: &str = "MARKER-7c1e9a-never-in-the-clear";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if path.is_file() {
            found.push(path);
        }
        // Else a socket (the relay's `relay.sock`), which holds nothing.
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_plaintext_never_reaches_relay_logs_or_anything_written() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let (mut bed, mut alice, mut bob) = alice_and_bob().await;
    let relay_dir = bed.relay.dir.clone();
    let bob_dir = bed.temp.path().join("bob");

    let room_text = format!("{MARKER} in the lobby");
    let live_text = format!("{MARKER} direct, live");
    let stored_text = format!("{MARKER} direct, stored while bob is away");
    alice.send(lobby(), &room_text);
    bob.expect_message(&lobby(), &room_text).await;
    alice.send(dm("bob"), &live_text);
    bob.expect_message(&dm("alice"), &live_text).await;
    bob.quit().await;
    alice.send(dm("bob"), &stored_text);
    alice
        .expect(|u| matches!(u, Update::Message(m) if m.outgoing && m.text == stored_text))
        .await;
    // Stored by the relay: wait until it is in bob's queue by delivering it.
    let mut bob = Peer::connect(account(&bob_dir, "bob", "bob").await, &bed.relay.address).await;
    bob.expect_message(&dm("alice"), &stored_text).await;
    // The barrier for what follows: both sessions ended (Peer::quit waits
    // for it) and the relay is gone, so nothing more is to be written.
    bob.quit().await;
    alice.quit().await;
    bed.relay.kill().await;

    let log = capture.0.lock().unwrap().clone();
    // The capture really holds the relay's trace output (or this test could
    // not fail): registrations, routing, the queue.
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("TRACE") || text.contains("DEBUG"), "{text}");
    assert!(text.contains("alice"), "{text}");
    assert!(
        !contains(&log, MARKER.as_bytes()),
        "marker in the relay log"
    );

    let written = files(&relay_dir);
    assert!(written.len() >= 3, "{written:?}"); // certificate, key, database
    for file in written {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !contains(&bytes, MARKER.as_bytes()),
            "marker in {}",
            file.display()
        );
    }
    // Keys at rest: the clients' own history is encrypted too.
    for dir in [bed.temp.path().join("alice"), bob_dir] {
        for file in files(&dir) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !contains(&bytes, MARKER.as_bytes()),
                "marker in {}",
                file.display()
            );
            assert!(
                !contains(&bytes, b"lobby"),
                "a room name in {}",
                file.display()
            );
        }
    }
}
