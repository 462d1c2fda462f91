//! Blobs (protocol.md 9.13): encrypted file chunks uploaded in order by
//! their owner, answered `ChunkStored` once durable, fetched by anyone
//! registered once complete, refused with a `BlobRefused` code when a
//! chunk or a limit is wrong, kept across a restart, and forgotten when
//! they expire.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, PATIENCE, Relay, free_port, http_get, identity, now_secs, user};
use sotto_proto::{BLOB_CHUNK_LEN, ClientFrame, ErrorCode, RelayFrame};
use sotto_relay::Config;

/// The length of every chunk but a blob's last, as a charge.
const FULL: u64 = BLOB_CHUNK_LEN as u64;

/// A test blob: its id, its chunk count and the length of its last chunk;
/// every chunk's bytes are its own (they differ from blob to blob and
/// from chunk to chunk).
#[derive(Clone, Copy, Debug)]
struct Blob {
    id: [u8; 16],
    chunks: u32,
    last: usize,
}

impl Blob {
    /// Blob `n` of `chunks` chunks, the last `last` bytes long.
    fn new(n: u8, chunks: u32, last: usize) -> Self {
        let mut id = [0xb1; 16];
        id[0] = n;
        Self { id, chunks, last }
    }

    fn len(&self, index: u32) -> usize {
        if index + 1 == self.chunks {
            self.last
        } else {
            BLOB_CHUNK_LEN
        }
    }

    /// The bytes of chunk `index`.
    fn data(&self, index: u32) -> Bytes {
        pattern(self.id[0], index, self.len(index))
    }

    /// The `PutChunk` of chunk `index`.
    fn put(&self, index: u32) -> ClientFrame {
        put(self.id, index, self.chunks, self.data(index))
    }

    /// The relay's answer to a stored chunk `index`.
    fn stored(&self, index: u32) -> RelayFrame {
        RelayFrame::ChunkStored {
            blob: self.id,
            index,
        }
    }
}

/// `len` bytes of their own for `seed` and `index`.
fn pattern(seed: u8, index: u32, len: usize) -> Bytes {
    let mut state = (u64::from(seed) << 32 | u64::from(index)) ^ 0x9e37_79b9_7f4a_7c15;
    let bytes = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>();
    Bytes::from(bytes)
}

fn put(blob: [u8; 16], index: u32, chunks: u32, data: Bytes) -> ClientFrame {
    ClientFrame::PutChunk {
        blob,
        index,
        chunks,
        data,
    }
}

/// Sends `frame` and returns the answer.
async fn ask(client: &mut Client, frame: ClientFrame) -> RelayFrame {
    client.send(frame).await;
    client.recv().await
}

/// Uploads chunks `indices` of `blob`, each answered `ChunkStored`.
async fn upload(client: &mut Client, blob: &Blob, indices: std::ops::Range<u32>) {
    for index in indices {
        assert_eq!(
            ask(client, blob.put(index)).await,
            blob.stored(index),
            "chunk {index}"
        );
    }
}

/// The code of a `BlobRefused` about `blob` and `index`.
fn refusal(frame: &RelayFrame, blob: [u8; 16], index: u32) -> ErrorCode {
    match frame {
        RelayFrame::BlobRefused {
            blob: b,
            index: i,
            code,
            ..
        } if *b == blob && *i == index => *code,
        other => panic!("expected a refusal of chunk {index}, got {}", brief(other)),
    }
}

/// A frame for a failure message, without the 64 KiB of a chunk.
fn brief(frame: &RelayFrame) -> String {
    match frame {
        RelayFrame::Chunk { blob, index, data } => {
            format!(
                "Chunk {{ blob: {blob:?}, index: {index}, {} bytes }}",
                data.len()
            )
        }
        other => format!("{other:?}"),
    }
}

/// `(chunks, stored, expires_at)` of `blob`, as `BlobStatus` says.
async fn status(client: &mut Client, blob: [u8; 16]) -> (u32, u32, u64) {
    match ask(client, ClientFrame::BlobStatus { blob }).await {
        RelayFrame::BlobState {
            blob: b,
            chunks,
            stored,
            expires_at,
        } if b == blob => (chunks, stored, expires_at),
        other => panic!("expected the blob's state, got {other:?}"),
    }
}

/// The refusal code of `BlobStatus` for `blob`.
async fn status_refused(client: &mut Client, blob: [u8; 16]) -> ErrorCode {
    let answer = ask(client, ClientFrame::BlobStatus { blob }).await;
    refusal(&answer, blob, 0)
}

/// The answer to `GetChunk`.
async fn get(client: &mut Client, blob: [u8; 16], index: u32) -> RelayFrame {
    ask(client, ClientFrame::GetChunk { blob, index }).await
}

/// Fetches chunk `index` of `blob` and checks it is the one uploaded,
/// byte for byte.
async fn fetch_intact(client: &mut Client, blob: &Blob, index: u32) {
    let answer = get(client, blob.id, index).await;
    let RelayFrame::Chunk {
        blob: b,
        index: i,
        data,
    } = &answer
    else {
        panic!("expected chunk {index}, got {}", brief(&answer));
    };
    assert_eq!((*b, *i), (blob.id, index));
    assert_eq!(data.len(), blob.len(index), "chunk {index}'s length");
    assert!(*data == blob.data(index), "chunk {index} came back intact");
}

/// Whether the connection still answers: a ping answered with nothing
/// before its pong.
async fn usable(client: &mut Client) {
    assert_eq!(client.barrier().await, Vec::new());
}

/// A registration as `name` with `identity`'s key: the `Registered`
/// frame.
async fn register_as(relay: &Relay, name: &str, key: &str) -> (Client, RelayFrame) {
    let mut client = relay.client().await;
    let reply = client.register(name, identity(key)).await;
    (client, reply)
}

/// The `Registered` answer of a relay whose limits on blobs are
/// `max_bytes` and `max_age` (the other limits their defaults).
fn announcing(name: &str, max_bytes: u64, max_age: Duration) -> RelayFrame {
    RelayFrame::Registered {
        name: user(name),
        offline_max_age: Config::default().offline_max_age.as_secs(),
        blob_max_bytes: max_bytes,
        blob_max_age: max_age.as_secs(),
    }
}

/// A client registered as `name` (its fixture key) on a relay that
/// announces `max_bytes` and `max_age` as its limits on blobs.
async fn registered_under(relay: &Relay, name: &str, max_bytes: u64, max_age: Duration) -> Client {
    let (client, welcome) = register_as(relay, name, name).await;
    assert_eq!(welcome, announcing(name, max_bytes, max_age));
    client
}

/// [`registered_under`] a relay of `blob_max_age` 1 s.
async fn registered_briefly(relay: &Relay, name: &str) -> Client {
    let max_bytes = Config::default().blob_max_bytes;
    registered_under(relay, name, max_bytes, Duration::from_secs(1)).await
}

#[tokio::test]
async fn an_upload_is_stored_chunk_by_chunk_and_another_user_fetches_it_intact() {
    let age = Duration::from_secs(3600);
    let max = 10 * FULL;
    let relay = Relay::start_with(|c| {
        c.blob_max_bytes = max;
        c.blob_max_age = age;
    })
    .await;
    // The limits are announced at registration.
    let (mut alice, welcome) = register_as(&relay, "alice", "alice").await;
    assert_eq!(welcome, announcing("alice", max, age));
    let (mut bob, _) = register_as(&relay, "bob", "bob").await;

    // Two full chunks and a short last one.
    let blob = Blob::new(1, 3, 1000);
    for index in 0..3 {
        let before = now_secs();
        assert_eq!(ask(&mut alice, blob.put(index)).await, blob.stored(index));
        let after = now_secs();
        let (chunks, stored, expires_at) = status(&mut alice, blob.id).await;
        assert_eq!((chunks, stored), (3, index + 1));
        assert!(
            (before + 3600..=after + 3600).contains(&expires_at),
            "expires an age after the chunk: {expires_at}, stored in {before}..={after}"
        );
        // Anyone registered sees the same state.
        assert_eq!(
            status(&mut bob, blob.id).await,
            (chunks, stored, expires_at)
        );
    }
    for index in 0..3 {
        fetch_intact(&mut bob, &blob, index).await;
    }
    // Its owner may fetch it too, and again.
    fetch_intact(&mut alice, &blob, 2).await;
    fetch_intact(&mut bob, &blob, 0).await;
}

#[tokio::test]
async fn a_blob_is_not_fetchable_until_complete() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let blob = Blob::new(2, 2, 17);

    // Unknown: no state, no chunks.
    assert_eq!(
        status_refused(&mut bob, blob.id).await,
        ErrorCode::NoSuchBlob
    );
    let answer = get(&mut bob, blob.id, 0).await;
    assert_eq!(refusal(&answer, blob.id, 0), ErrorCode::NoSuchBlob);

    // Half stored: its state is known, its chunks are not served, not
    // even the stored one, not even to its owner.
    upload(&mut alice, &blob, 0..1).await;
    assert_eq!(status(&mut bob, blob.id).await.1, 1);
    for client in [&mut bob, &mut alice] {
        for index in 0..2 {
            let answer = get(client, blob.id, index).await;
            assert_eq!(refusal(&answer, blob.id, index), ErrorCode::NoSuchBlob);
        }
    }

    // Complete: served; past its last chunk, BadChunk.
    upload(&mut alice, &blob, 1..2).await;
    for index in 0..2 {
        fetch_intact(&mut bob, &blob, index).await;
    }
    let answer = get(&mut bob, blob.id, 2).await;
    assert_eq!(refusal(&answer, blob.id, 2), ErrorCode::BadChunk);
    usable(&mut bob).await;
}

#[tokio::test]
async fn misshapen_and_out_of_order_chunks_are_bad_chunks_and_the_connection_stays_usable() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let blob = Blob::new(3, 3, 100);
    let id = blob.id;
    let full = |index| pattern(3, index, BLOB_CHUNK_LEN);
    let cases = [
        ("out of order: chunk 1 first", put(id, 1, 3, full(1)), 1),
        ("zero chunks", put(id, 0, 0, full(0)), 0),
        ("index past the count", put(id, 3, 3, pattern(3, 3, 100)), 3),
        (
            "a first chunk one byte short",
            put(id, 0, 3, pattern(3, 0, BLOB_CHUNK_LEN - 1)),
            0,
        ),
        (
            "a first chunk one byte long",
            put(id, 0, 3, pattern(3, 0, BLOB_CHUNK_LEN + 1)),
            0,
        ),
        ("an empty last chunk", put(id, 0, 1, Bytes::new()), 0),
        (
            "a last chunk one byte long",
            put(id, 0, 1, pattern(3, 0, BLOB_CHUNK_LEN + 1)),
            0,
        ),
    ];
    for (case, frame, index) in cases {
        let answer = ask(&mut alice, frame).await;
        assert_eq!(refusal(&answer, id, index), ErrorCode::BadChunk, "{case}");
        usable(&mut alice).await;
    }
    // None of them made a blob.
    assert_eq!(status_refused(&mut alice, id).await, ErrorCode::NoSuchBlob);

    // Once chunk 0 is stored: a gap, or another chunk count, is refused
    // and changes nothing.
    upload(&mut alice, &blob, 0..1).await;
    let (_, _, expires_at) = status(&mut alice, id).await;
    let later = [
        (
            "a gap: chunk 2 after 0",
            put(id, 2, 3, pattern(3, 2, 100)),
            2,
        ),
        ("another chunk count", put(id, 1, 4, full(1)), 1),
        (
            "a smaller chunk count",
            put(id, 1, 2, pattern(3, 1, 100)),
            1,
        ),
        (
            "a middle chunk one byte short",
            put(id, 1, 3, pattern(3, 1, BLOB_CHUNK_LEN - 1)),
            1,
        ),
    ];
    for (case, frame, index) in later {
        let answer = ask(&mut alice, frame).await;
        assert_eq!(refusal(&answer, id, index), ErrorCode::BadChunk, "{case}");
        usable(&mut alice).await;
    }
    assert_eq!(status(&mut alice, id).await, (3, 1, expires_at));
    // And the upload goes on as if nothing happened.
    upload(&mut alice, &blob, 1..3).await;
    for index in 0..3 {
        fetch_intact(&mut alice, &blob, index).await;
    }
}

#[tokio::test]
async fn a_stored_chunk_sent_again_is_stored_again_only_with_the_same_bytes() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let blob = Blob::new(4, 3, 5);
    upload(&mut alice, &blob, 0..2).await;

    // The answer was lost: the same bytes again are answered again.
    assert_eq!(ask(&mut alice, blob.put(0)).await, blob.stored(0));
    assert_eq!(ask(&mut alice, blob.put(1)).await, blob.stored(1));
    assert_eq!(status(&mut alice, blob.id).await.1, 2);

    // Other bytes at a stored index are not taken.
    let mut other = blob.data(0).to_vec();
    other[100] ^= 1;
    let answer = ask(&mut alice, put(blob.id, 0, 3, Bytes::from(other))).await;
    assert_eq!(refusal(&answer, blob.id, 0), ErrorCode::BadChunk);
    usable(&mut alice).await;
    assert_eq!(status(&mut alice, blob.id).await.1, 2);

    // Complete, a resend of the last chunk is answered too; the stored
    // bytes are the first ones.
    upload(&mut alice, &blob, 2..3).await;
    assert_eq!(ask(&mut alice, blob.put(2)).await, blob.stored(2));
    let answer = ask(&mut alice, put(blob.id, 2, 3, pattern(9, 2, 5))).await;
    assert_eq!(refusal(&answer, blob.id, 2), ErrorCode::BadChunk);
    for index in 0..3 {
        fetch_intact(&mut alice, &blob, index).await;
    }
}

#[tokio::test]
async fn another_identity_cannot_add_to_a_blob_but_another_name_of_its_owner_can() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let blob = Blob::new(5, 3, 9);
    upload(&mut alice, &blob, 0..1).await;
    let before = status(&mut alice, blob.id).await;

    // Bob: not the next chunk, not alice's own first chunk again, not
    // another first chunk.
    for (case, frame, index) in [
        ("the next chunk", blob.put(1), 1),
        ("the same first chunk", blob.put(0), 0),
        (
            "another first chunk",
            put(blob.id, 0, 3, pattern(50, 0, BLOB_CHUNK_LEN)),
            0,
        ),
    ] {
        let answer = ask(&mut bob, frame).await;
        assert_eq!(
            refusal(&answer, blob.id, index),
            ErrorCode::BadChunk,
            "{case}"
        );
    }
    usable(&mut bob).await;
    // Alice's blob is as it was.
    assert_eq!(status(&mut alice, blob.id).await, before);

    // The same key under another name is the same owner.
    let (mut phone, welcome) = register_as(&relay, "alice2", "alice").await;
    assert_eq!(welcome, common::welcome("alice2"));
    upload(&mut phone, &blob, 1..2).await;
    upload(&mut alice, &blob, 2..3).await;
    for index in 0..3 {
        fetch_intact(&mut bob, &blob, index).await;
    }
}

#[tokio::test]
async fn a_blob_larger_than_blob_max_bytes_is_refused_too_large() {
    // Three chunks hold at least 2 * FULL + 1 bytes: exactly the limit.
    let relay = Relay::start_with(|c| c.blob_max_bytes = 2 * FULL + 1).await;
    let mut alice = registered_under(
        &relay,
        "alice",
        2 * FULL + 1,
        Config::default().blob_max_age,
    )
    .await;
    let too_large = Blob::new(6, 4, 1);
    let answer = ask(&mut alice, too_large.put(0)).await;
    assert_eq!(refusal(&answer, too_large.id, 0), ErrorCode::TooLarge);
    assert_eq!(
        status_refused(&mut alice, too_large.id).await,
        ErrorCode::NoSuchBlob
    );
    // At the limit: taken, with a full last chunk too.
    let fits = Blob::new(7, 3, BLOB_CHUNK_LEN);
    upload(&mut alice, &fits, 0..3).await;
    fetch_intact(&mut alice, &fits, 2).await;
}

#[tokio::test]
async fn a_relay_with_blob_max_bytes_zero_takes_no_files() {
    let relay = Relay::start_with(|c| c.blob_max_bytes = 0).await;
    let mut alice = registered_under(&relay, "alice", 0, Config::default().blob_max_age).await;
    let blob = Blob::new(8, 1, 1);
    let answer = ask(&mut alice, blob.put(0)).await;
    assert_eq!(refusal(&answer, blob.id, 0), ErrorCode::TooLarge);
    assert_eq!(
        status_refused(&mut alice, blob.id).await,
        ErrorCode::NoSuchBlob
    );
    usable(&mut alice).await;
}

/// A relay whose frames are too short to carry a full chunk takes no files
/// either: it announces 0, and refuses a blob, even a small one.
#[tokio::test]
async fn a_relay_whose_frames_cannot_carry_a_chunk_takes_no_files() {
    let relay = Relay::start_with(|c| c.max_frame_len = 64 * 1024).await;
    let mut alice = registered_under(&relay, "alice", 0, Config::default().blob_max_age).await;
    let blob = Blob::new(9, 1, 1);
    let answer = ask(&mut alice, blob.put(0)).await;
    assert_eq!(refusal(&answer, blob.id, 0), ErrorCode::TooLarge);
    usable(&mut alice).await;
}

#[tokio::test]
async fn an_identity_holding_its_quota_is_refused_limit_reached() {
    let relay = Relay::start_with(|c| c.blob_quota_bytes = 3 * FULL).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    // Charged its full size from its first chunk: 2 * FULL.
    let first = Blob::new(10, 2, 1);
    upload(&mut alice, &first, 0..1).await;
    let second = Blob::new(11, 2, 1);
    let answer = ask(&mut alice, second.put(0)).await;
    assert_eq!(refusal(&answer, second.id, 0), ErrorCode::LimitReached);
    assert_eq!(
        status_refused(&mut alice, second.id).await,
        ErrorCode::NoSuchBlob
    );
    // What is left fits; then nothing more, under any name of the key.
    let third = Blob::new(12, 1, 1);
    upload(&mut alice, &third, 0..1).await;
    let (mut phone, _) = register_as(&relay, "alice2", "alice").await;
    let fourth = Blob::new(13, 1, 1);
    let answer = ask(&mut phone, fourth.put(0)).await;
    assert_eq!(refusal(&answer, fourth.id, 0), ErrorCode::LimitReached);
    // The blob admitted goes on; another key has a quota of its own.
    upload(&mut alice, &first, 1..2).await;
    upload(&mut bob, &second, 0..2).await;
}

#[tokio::test]
async fn a_relay_holding_blob_max_total_is_refused_queue_full() {
    let relay = Relay::start_with(|c| c.blob_max_total = 3 * FULL).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let alices = Blob::new(20, 2, 1);
    upload(&mut alice, &alices, 0..1).await;
    let bobs = Blob::new(21, 2, 1);
    let answer = ask(&mut bob, bobs.put(0)).await;
    assert_eq!(refusal(&answer, bobs.id, 0), ErrorCode::QueueFull);
    let small = Blob::new(22, 1, 1);
    upload(&mut bob, &small, 0..1).await;
    let more = Blob::new(23, 1, 1);
    let answer = ask(&mut alice, more.put(0)).await;
    assert_eq!(refusal(&answer, more.id, 0), ErrorCode::QueueFull);
    upload(&mut alice, &alices, 1..2).await;
}

#[tokio::test]
async fn blobs_survive_a_restart_and_the_upload_resumes_where_its_state_says() {
    let dir = tempfile::tempdir().unwrap();
    let quota = |c: &mut Config| c.blob_quota_bytes = 4 * FULL;
    let mut relay = Relay::start_in(dir.path(), quota).await;
    let mut alice = relay.registered("alice").await;
    let blob = Blob::new(30, 3, 321);
    let done = Blob::new(31, 1, 77);
    upload(&mut alice, &blob, 0..2).await;
    upload(&mut alice, &done, 0..1).await;
    let before = status(&mut alice, blob.id).await;
    assert_eq!((before.0, before.1), (3, 2));

    drop(alice);
    relay.stop().await;
    let relay = Relay::start_in(dir.path(), quota).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    assert_eq!(status(&mut alice, blob.id).await, before);
    fetch_intact(&mut bob, &done, 0).await;
    // Its charges survive too: 4 * FULL held, nothing more fits.
    let another = Blob::new(32, 1, 1);
    let answer = ask(&mut alice, another.put(0)).await;
    assert_eq!(refusal(&answer, another.id, 0), ErrorCode::LimitReached);
    // Resumed at the chunk its state names; a stored one sent again is
    // still recognised.
    let next = before.1;
    upload(&mut alice, &blob, next..3).await;
    assert_eq!(ask(&mut alice, blob.put(0)).await, blob.stored(0));
    for index in 0..3 {
        fetch_intact(&mut bob, &blob, index).await;
    }
}

/// Waits (on the wall clock the relay reads) until `at` is past.
async fn wait_past(at: u64) {
    while now_secs() < at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_expired_blob_is_gone_at_once_and_its_quota_is_released() {
    let relay = Relay::start_with(|c| {
        c.blob_max_age = Duration::from_secs(1);
        c.blob_quota_bytes = 3 * FULL;
    })
    .await;
    let mut alice = registered_briefly(&relay, "alice").await;
    let mut bob = registered_briefly(&relay, "bob").await;
    let complete = Blob::new(40, 1, 40);
    let partial = Blob::new(41, 2, 41);
    upload(&mut alice, &complete, 0..1).await;
    upload(&mut alice, &partial, 0..1).await;
    fetch_intact(&mut bob, &complete, 0).await;
    // The quota is used up.
    let waiting = Blob::new(42, 1, 42);
    let answer = ask(&mut alice, waiting.put(0)).await;
    assert_eq!(refusal(&answer, waiting.id, 0), ErrorCode::LimitReached);

    let (_, _, complete_expiry) = status(&mut alice, complete.id).await;
    let (_, _, partial_expiry) = status(&mut alice, partial.id).await;
    wait_past(complete_expiry.max(partial_expiry)).await;
    for blob in [&complete, &partial] {
        assert_eq!(
            status_refused(&mut bob, blob.id).await,
            ErrorCode::NoSuchBlob
        );
        let answer = get(&mut bob, blob.id, 0).await;
        assert_eq!(refusal(&answer, blob.id, 0), ErrorCode::NoSuchBlob);
    }
    // The partial one cannot be resumed either.
    let answer = ask(&mut alice, partial.put(1)).await;
    assert_eq!(refusal(&answer, partial.id, 1), ErrorCode::BadChunk);
    // Their charges are released: a new blob that needs the whole quota
    // is taken.
    let fresh = Blob::new(43, 3, 43);
    upload(&mut alice, &fresh, 0..3).await;
    fetch_intact(&mut bob, &fresh, 2).await;
}

#[tokio::test]
async fn an_expired_blob_id_can_be_uploaded_afresh() {
    let relay = Relay::start_with(|c| {
        c.blob_max_age = Duration::from_secs(1);
        // Room for this one blob in all.
        c.blob_max_total = FULL;
    })
    .await;
    let mut alice = registered_briefly(&relay, "alice").await;
    let mut bob = registered_briefly(&relay, "bob").await;
    let old = Blob::new(44, 1, 44);
    upload(&mut alice, &old, 0..1).await;
    let (_, _, expires_at) = status(&mut alice, old.id).await;
    wait_past(expires_at).await;
    // Same id, another owner and other bytes: the expired blob is gone,
    // and so is its charge on the relay's total.
    let new = Blob { last: 45, ..old };
    upload(&mut bob, &new, 0..1).await;
    fetch_intact(&mut alice, &new, 0).await;
}

#[tokio::test]
async fn blob_requests_before_registration_are_refused_not_registered() {
    let relay = Relay::start().await;
    let mut anonymous = relay.client().await;
    let blob = Blob::new(50, 1, 50);
    for frame in [
        blob.put(0),
        ClientFrame::GetChunk {
            blob: blob.id,
            index: 0,
        },
        ClientFrame::BlobStatus { blob: blob.id },
    ] {
        match ask(&mut anonymous, frame).await {
            RelayFrame::Error {
                id: None,
                code: ErrorCode::NotRegistered,
                ..
            } => {}
            other => panic!("expected NotRegistered, got {other:?}"),
        }
    }
    // Nothing was stored, and the connection may still register.
    let reply = anonymous.register("alice", identity("alice")).await;
    assert_eq!(reply, common::welcome("alice"));
    assert_eq!(
        status_refused(&mut anonymous, blob.id).await,
        ErrorCode::NoSuchBlob
    );
}

/// The value of the metric `name` in the relay's `/metrics` at `port`.
async fn metric(port: u16, name: &str) -> u64 {
    let response = http_get(port, "/metrics").await;
    let prefix = format!("\n{name} ");
    let at = response
        .find(&prefix)
        .unwrap_or_else(|| panic!("{name} in {response}"));
    let rest = &response[at + prefix.len()..];
    rest[..rest.find('\n').unwrap()].parse().unwrap()
}

#[tokio::test]
async fn metrics_count_stored_refused_and_served_chunks_and_the_bytes_held() {
    let port = free_port();
    let relay = Relay::start_with(|c| c.metrics = Some(([127, 0, 0, 1], port).into())).await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let blob = Blob::new(60, 2, 60);
    upload(&mut alice, &blob, 0..2).await;
    let answer = ask(&mut alice, put(blob.id, 5, 2, pattern(0, 5, 1))).await;
    assert_eq!(refusal(&answer, blob.id, 5), ErrorCode::BadChunk);
    for index in 0..2 {
        fetch_intact(&mut bob, &blob, index).await;
    }
    fetch_intact(&mut bob, &blob, 0).await;
    // Not served: an unknown blob.
    let unknown = Blob::new(61, 1, 1);
    let answer = get(&mut bob, unknown.id, 0).await;
    assert_eq!(refusal(&answer, unknown.id, 0), ErrorCode::NoSuchBlob);
    // Served chunks are counted once queued: after bob's barrier, all of
    // his are.
    usable(&mut bob).await;

    assert_eq!(
        metric(port, "sotto_relay_blob_chunks_stored_total").await,
        2
    );
    assert_eq!(
        metric(port, "sotto_relay_blob_chunks_refused_total").await,
        1
    );
    assert_eq!(
        metric(port, "sotto_relay_blob_chunks_served_total").await,
        3
    );
    // The gauge is updated by the writer after it answers: wait for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let held = metric(port, "sotto_relay_blob_bytes").await;
        if held == 2 * FULL {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sotto_relay_blob_bytes is {held}, not {}",
            2 * FULL
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(relay.metrics.blob_chunks_stored.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn pipelined_chunks_are_all_stored_and_answered_in_order() {
    let relay = Relay::start().await;
    let mut alice = relay.registered("alice").await;
    let mut bob = relay.registered("bob").await;
    let blob = Blob::new(70, 32, 1234);
    for index in 0..32 {
        alice.send(blob.put(index)).await;
    }
    for index in 0..32 {
        assert_eq!(alice.recv().await, blob.stored(index));
    }
    assert_eq!(status(&mut alice, blob.id).await.1, 32);
    // Fetched pipelined too, in order.
    for index in 0..32 {
        bob.send(ClientFrame::GetChunk {
            blob: blob.id,
            index,
        })
        .await;
    }
    for index in 0..32 {
        let answer = bob.recv().await;
        match &answer {
            RelayFrame::Chunk { index: i, data, .. } if *i == index => {
                assert!(*data == blob.data(index), "chunk {index} intact");
            }
            other => panic!("expected chunk {index}, got {}", brief(other)),
        }
    }
}

#[tokio::test]
async fn a_client_that_asks_for_chunks_and_does_not_read_is_dropped_and_stalls_nobody() {
    let relay = Relay::start_with(|c| {
        c.max_frame_len = 128 * 1024;
        c.outbound_queue_bytes = 256 * 1024;
        c.keepalive_interval = Duration::from_millis(200);
        c.idle_timeout = Duration::from_millis(700);
    })
    .await;
    let mut alice = relay.registered("alice").await;
    let mut sloth = relay.registered("bob").await;
    let mut carol = relay.registered("carol").await;
    let blob = Blob::new(80, 2, 80);
    upload(&mut alice, &blob, 0..2).await;

    // 400 chunks asked for, 26 MB: more than the sockets' buffers and
    // the connection's queue hold. Bob reads none of them.
    for _ in 0..400 {
        sloth
            .send(ClientFrame::GetChunk {
                blob: blob.id,
                index: 0,
            })
            .await;
    }
    // Meanwhile, longer than the idle timeout, the others are served.
    for round in 0..8_u8 {
        fetch_intact(&mut carol, &blob, u32::from(round % 2)).await;
        upload(&mut alice, &Blob::new(81 + round, 1, 5), 0..1).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Bob was cut off as a slow reader.
    let seen = sloth.closed().await;
    assert!(seen.len() < 400, "bob got all {} frames", seen.len());
    assert_eq!(relay.metrics.slow_consumers.load(Ordering::Relaxed), 1);
    usable(&mut carol).await;
}
