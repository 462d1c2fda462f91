//! Storage faults on the real database file: redb's own file backend
//! under a [`Disk`] that the tests fill (every write, growth and sync fails
//! with `StorageFull`, as on a full disk) and free again.

use super::fault::Disk;
use super::*;
use sotto_proto::Destination;

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 1000,
    max_bytes: 1 << 20,
    max_age: Duration::from_secs(3600),
    room_max_messages: 1000,
    room_max_bytes: 1 << 20,
};

/// Reopens at the first operation after a failure (no backoff).
const AT_ONCE: Recovery = Recovery {
    first_retry: Duration::ZERO,
    max_retry: Duration::ZERO,
};

fn user(name: &str) -> UserName {
    UserName::try_from(name).unwrap()
}

fn message(body: &str) -> Queued {
    Queued {
        queued_at: now_secs(),
        from: user("alice"),
        to: Destination::User(user("bob")),
        body: Bytes::from(body.to_string()),
        slot: None,
    }
}

/// `bob`, the recipient of every test message, registered: a direct
/// message is stored only for a registered name.
fn claim_bob(s: &Store) {
    s.claim(&record("bob", 0xbb), 8).unwrap();
}

fn record(name: &str, fp: u8) -> NameRecord {
    NameRecord {
        name: user(name),
        fingerprint: [fp; 32],
        identity: Bytes::from_static(b"id"),
    }
}

fn bodies(s: &Store, name: &str) -> Vec<String> {
    s.pending(&user(name))
        .unwrap()
        .into_iter()
        .map(|(_, q)| String::from_utf8(q.body.to_vec()).unwrap())
        .collect()
}

/// While the disk is full a delivery is not stored and a new name is not
/// registered, each with an error; once space is back, the same store
/// (no restart) stores and registers again, and what was stored before
/// the fault is all there.
#[test]
fn a_full_disk_refuses_writes_and_the_store_recovers_when_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    let metrics = Arc::new(Metrics::default());
    let s = Store::open_on(dir.path(), LIMITS, &disk, AT_ONCE)
        .unwrap()
        .with_metrics(Arc::clone(&metrics));
    assert_eq!(s.claim(&record("bob", 1), 8).unwrap(), Claim::New);
    for body in ["one", "two"] {
        assert!(matches!(
            s.enqueue(&user("bob"), &message(body)).unwrap(),
            Enqueue::Stored(_)
        ));
    }

    disk.fill();
    assert!(matches!(
        s.enqueue(&user("bob"), &message("refused")),
        Err(StoreError::Storage(_))
    ));
    assert!(s.claim(&record("carol", 2), 8).is_err());
    assert!(s.enqueue(&user("bob"), &message("refused")).is_err());
    assert!(disk.refused() > 0);
    assert!(metrics.storage_failures.load(Ordering::Relaxed) >= 1);
    assert_eq!(metrics.storage_unavailable.load(Ordering::Relaxed), 1);

    disk.free();
    assert!(matches!(
        s.enqueue(&user("bob"), &message("three")).unwrap(),
        Enqueue::Stored(_)
    ));
    assert_eq!(metrics.storage_unavailable.load(Ordering::Relaxed), 0);
    assert!(metrics.storage_reopened.load(Ordering::Relaxed) >= 1);
    assert_eq!(s.claim(&record("carol", 2), 8).unwrap(), Claim::New);
    assert_eq!(bodies(&s, "bob"), ["one", "two", "three"]);
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (3, 11));
    assert!(s.lookup(&user("carol")).unwrap().is_some());

    // And it is all on disk: a fresh open (a restart) finds the same.
    drop(s);
    let s = Store::open(dir.path(), LIMITS).unwrap();
    claim_bob(&s);
    assert_eq!(bodies(&s, "bob"), ["one", "two", "three"]);
    assert_eq!(s.names_of(&[2; 32]).unwrap(), 1);
}

/// What was stored is still read while the disk is full: reading the
/// queue writes nothing.
#[test]
fn what_was_stored_is_read_while_the_disk_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    let s = Store::open_on(dir.path(), LIMITS, &disk, AT_ONCE).unwrap();
    claim_bob(&s);
    for body in ["one", "two"] {
        s.enqueue(&user("bob"), &message(body)).unwrap();
    }
    disk.fill();
    assert_eq!(bodies(&s, "bob"), ["one", "two"]);
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (2, 6));
    assert!(s.lookup(&user("bob")).unwrap().is_some());
    assert_eq!(disk.refused(), 0, "nothing was written");
}

/// The disk fills at every point of a commit in turn (after 0 writes,
/// after 1, ...) until one commit has room to finish. Each refused
/// delivery and name is either wholly there or wholly absent once the
/// store has recovered: the counts match what is stored, nothing
/// accepted is missing, nothing is there twice.
#[test]
fn a_fault_anywhere_in_a_commit_leaves_nothing_half_stored() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    let s = Store::open_on(dir.path(), LIMITS, &disk, AT_ONCE).unwrap();
    claim_bob(&s);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    let mut n = 0;
    loop {
        let body = format!("message {n}");
        disk.fill_after(n);
        let result = s.enqueue(&user("bob"), &message(&body));
        disk.free();
        match result {
            Ok(Enqueue::Stored(_)) => accepted.push(body),
            Ok(Enqueue::Full | Enqueue::NoSuchUser) => panic!("not stored"),
            Err(StoreError::Storage(_) | StoreError::Unavailable) => refused.push(body),
            Err(other) => panic!("{other:?}"),
        }
        // Consistent after recovery: the stats are those of what is
        // stored, every accepted message is there once, in order.
        let stored = bodies(&s, "bob");
        let bytes: usize = stored.iter().map(String::len).sum();
        assert_eq!(
            s.queue_depth(&user("bob")).unwrap(),
            (stored.len() as u64, bytes as u64),
            "fault after {n} writes"
        );
        let kept: Vec<&String> = stored.iter().filter(|b| accepted.contains(b)).collect();
        assert_eq!(kept, accepted.iter().collect::<Vec<_>>(), "after {n}");
        for body in &stored {
            assert_eq!(stored.iter().filter(|b| *b == body).count(), 1);
            assert!(accepted.contains(body) || refused.contains(body));
        }
        if !accepted.is_empty() && refused.len() as u64 == n {
            break; // the commit had room to finish
        }
        n += 1;
        assert!(n < 200, "a commit never finished");
    }
    assert!(!refused.is_empty());

    // The same for a name: its directory entry and its key's count go
    // together.
    let mut n = 0;
    loop {
        let name = format!("n{n}");
        disk.fill_after(n);
        let result = s.claim(&record(&name, 7), 1000);
        disk.free();
        let registered = s.lookup(&user(&name)).unwrap().is_some();
        let count = (0..=n)
            .filter(|i| s.lookup(&user(&format!("n{i}"))).unwrap().is_some())
            .count() as u64;
        assert_eq!(s.names_of(&[7; 32]).unwrap(), count, "after {n}");
        if let Ok(claim) = result {
            assert_eq!(claim, Claim::New);
            assert!(registered);
            break;
        }
        n += 1;
        assert!(n < 200, "a claim never finished");
    }
}

/// A disk that stays full is not reopened at every operation: after a
/// failure the store waits out its backoff, refusing operations with
/// `Unavailable` without touching the file.
#[test]
fn a_disk_that_stays_full_is_not_reopened_in_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::new();
    let hour = Duration::from_secs(3600);
    let recovery = Recovery {
        first_retry: hour,
        max_retry: hour,
    };
    let s = Store::open_on(dir.path(), LIMITS, &disk, recovery).unwrap();
    claim_bob(&s);
    assert_eq!(disk.opens(), 1);
    disk.fill();
    assert!(matches!(
        s.enqueue(&user("bob"), &message("x")),
        Err(StoreError::Storage(_))
    ));
    disk.free();
    for _ in 0..50 {
        assert!(matches!(
            s.enqueue(&user("bob"), &message("x")),
            Err(StoreError::Unavailable)
        ));
        assert!(matches!(
            s.lookup(&user("bob")),
            Err(StoreError::Unavailable)
        ));
    }
    assert_eq!(disk.opens(), 1, "not reopened before the backoff");
}

#[test]
fn the_backoff_doubles_up_to_its_bound() {
    let recovery = Recovery {
        first_retry: Duration::from_millis(100),
        max_retry: Duration::from_secs(1),
    };
    let waits: Vec<u64> = (1..=6)
        .map(|n| u64::try_from(recovery.delay(n).as_millis()).unwrap())
        .collect();
    assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    assert_eq!(recovery.delay(u32::MAX), Duration::from_secs(1));
}
