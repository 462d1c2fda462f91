use redb::ReadableDatabase;

use super::*;
use sotto_proto::Destination;

/// The store's redb handle, for tests that write records by hand.
fn raw(s: &Store) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
    s.db.read().unwrap()
}

/// The store in `dir`, where `bob` (the recipient of every test message)
/// is a registered name: a direct message is stored only for one.
fn store(dir: &Path, limits: QueueLimits) -> Store {
    let s = Store::open(dir, limits).unwrap();
    claim_bob(&s);
    s
}

fn claim_bob(s: &Store) {
    let bob = NameRecord {
        name: UserName::try_from("bob").unwrap(),
        fingerprint: [0xbb; 32],
        identity: Bytes::from_static(b"bob"),
    };
    s.claim(&bob, 8).unwrap();
}

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 3,
    max_bytes: 1000,
    max_age: Duration::from_secs(3600),
    room_max_messages: 1000,
    room_max_bytes: 1 << 20,
};

fn user(name: &str) -> UserName {
    UserName::try_from(name).unwrap()
}

fn message(body: &'static [u8]) -> Queued {
    Queued {
        queued_at: now_secs(),
        from: user("alice"),
        to: Destination::User(user("bob")),
        body: Bytes::from_static(body),
        slot: None,
    }
}

#[test]
fn a_name_stays_bound_to_its_first_key_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    assert_eq!(s.claim(&record("alice", 1), 8).unwrap(), Claim::New);
    assert_eq!(
        s.claim(&record("ALICE", 1), 8).unwrap(),
        Claim::Existing(user("alice"))
    );
    assert_eq!(s.claim(&record("alice", 2), 8).unwrap(), Claim::Taken);
    assert_eq!(s.claim(&record("ALICE", 2), 8).unwrap(), Claim::Taken);
    assert_eq!(
        s.lookup(&user("Alice")).unwrap().unwrap().name,
        user("alice")
    );
    assert!(s.lookup(&user("dave")).unwrap().is_none());
}

#[test]
fn queue_keeps_order_limits_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), LIMITS);
        for body in [b"one".as_slice(), b"two", b"three"] {
            let body: &'static [u8] = Box::leak(body.to_vec().into_boxed_slice());
            assert!(matches!(
                s.enqueue(&user("bob"), &message(body)).unwrap(),
                Enqueue::Stored(_)
            ));
        }
        assert_eq!(
            s.enqueue(&user("bob"), &message(b"four")).unwrap(),
            Enqueue::Full
        );
    }
    let s = store(dir.path(), LIMITS);
    let pending = s.pending(&user("Bob")).unwrap();
    let bodies: Vec<&[u8]> = pending.iter().map(|(_, q)| q.body.as_ref()).collect();
    assert_eq!(bodies, vec![b"one".as_slice(), b"two", b"three"]);
    assert!(s.acknowledge(&user("bob"), pending[0].0).unwrap());
    assert!(!s.acknowledge(&user("bob"), pending[0].0).unwrap());
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (2, 8));
    assert!(matches!(
        s.enqueue(&user("bob"), &message(b"four")).unwrap(),
        Enqueue::Stored(_)
    ));
}

#[test]
fn queue_is_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(
        dir.path(),
        QueueLimits {
            max_bytes: 5,
            ..LIMITS
        },
    );
    assert!(matches!(
        s.enqueue(&user("bob"), &message(b"1234")).unwrap(),
        Enqueue::Stored(_)
    ));
    assert_eq!(
        s.enqueue(&user("bob"), &message(b"56")).unwrap(),
        Enqueue::Full
    );
}

#[test]
fn expired_messages_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    let mut old = message(b"old");
    old.queued_at = now_secs() - 7200;
    s.enqueue(&user("bob"), &old).unwrap();
    s.enqueue(&user("carol"), &old).unwrap();
    s.enqueue(&user("bob"), &message(b"new")).unwrap();
    // Expired entries stay until the periodic sweep, also for Carol, who
    // never comes back.
    assert_eq!(s.expire_all().unwrap(), 2);
    assert_eq!(s.queue_depth(&user("carol")).unwrap(), (0, 0));
    assert_eq!(s.total_queued().unwrap(), 1);
    let pending = s.pending(&user("bob")).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.body.as_ref(), b"new");
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (1, 3));
}

fn record(name: &str, fp: u8) -> NameRecord {
    NameRecord {
        name: user(name),
        fingerprint: [fp; 32],
        identity: Bytes::from_static(b"id"),
    }
}

/// One key registers at most its limit of names; the names it has
/// keep working, other keys are unaffected, and the count survives
/// reopening.
#[test]
fn one_key_owns_at_most_its_limit_of_names() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), LIMITS);
        assert_eq!(s.claim(&record("a1", 1), 2).unwrap(), Claim::New);
        assert_eq!(s.claim(&record("a2", 1), 2).unwrap(), Claim::New);
        assert_eq!(s.claim(&record("a3", 1), 2).unwrap(), Claim::KeyFull);
        assert_eq!(
            s.claim(&record("A1", 1), 2).unwrap(),
            Claim::Existing(user("a1"))
        );
        // Someone else's name is taken whatever the count.
        assert_eq!(s.claim(&record("b1", 2), 2).unwrap(), Claim::New);
        assert_eq!(s.claim(&record("b1", 1), 2).unwrap(), Claim::Taken);
        assert!(s.lookup(&user("a3")).unwrap().is_none());
    }
    let s = store(dir.path(), LIMITS);
    assert_eq!(s.names_of(&[1; 32]).unwrap(), 2);
    assert_eq!(s.names_of(&[2; 32]).unwrap(), 1);
    assert_eq!(s.claim(&record("a3", 1), 2).unwrap(), Claim::KeyFull);
    assert_eq!(s.claim(&record("a3", 1), 3).unwrap(), Claim::New);
}

/// A database written before names were counted per key is counted
/// once, when it is opened.
#[test]
fn names_registered_before_the_count_are_counted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), LIMITS);
        for name in ["a1", "a2", "a3"] {
            s.claim(&record(name, 1), 8).unwrap();
        }
        // Forget the count, as a database from before it had none.
        let txn = raw(&s).as_ref().unwrap().begin_write().unwrap();
        txn.delete_table(NAMES_PER_KEY).unwrap();
        txn.open_table(META)
            .unwrap()
            .remove("names_per_key")
            .unwrap();
        txn.commit().unwrap();
    }
    let s = store(dir.path(), LIMITS);
    assert_eq!(s.names_of(&[1; 32]).unwrap(), 3);
    assert_eq!(s.claim(&record("a4", 1), 3).unwrap(), Claim::KeyFull);
}

/// The tables' keys are the lower-cased name, as relays wrote them
/// before names had a key type: a database written that way (here by
/// hand) is read the same, in any letter case.
#[test]
fn keys_on_disk_are_the_lower_cased_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path(), LIMITS);
        let txn = raw(&s).as_ref().unwrap().begin_write().unwrap();
        {
            let value = postcard::to_stdvec(&record("Alice", 1)).unwrap();
            let mut names = txn.open_table(NAMES).unwrap();
            names.insert("alice", value.as_slice()).unwrap();
            let value = postcard::to_stdvec(&message(b"stored")).unwrap();
            let mut queue = txn.open_table(QUEUE).unwrap();
            queue.insert(("bob", 7), value.as_slice()).unwrap();
            let mut stats = txn.open_table(QUEUE_STATS).unwrap();
            stats.insert("bob", (1, 6)).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = store(dir.path(), LIMITS);
    assert_eq!(
        s.lookup(&user("ALICE")).unwrap().unwrap().name,
        user("Alice")
    );
    assert_eq!(s.queue_depth(&user("Bob")).unwrap(), (1, 6));
    let pending = s.pending(&user("BOB")).unwrap();
    assert_eq!(pending, vec![(7, message(b"stored"))]);
    assert!(s.acknowledge(&user("bOb"), 7).unwrap());
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (0, 0));

    // And what the store writes is keyed the same way.
    s.enqueue(&user("Carol"), &message(b"new")).unwrap();
    let txn = raw(&s).as_ref().unwrap().begin_read().unwrap();
    let stats = txn.open_table(QUEUE_STATS).unwrap();
    assert_eq!(stats.get("carol").unwrap().unwrap().value(), (1, 3));
}

/// An empty (truncated) database file is refused with an error naming
/// it, and left as it was; a missing one is created.
#[test]
fn an_empty_database_file_is_refused_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATABASE_FILE);
    std::fs::write(&path, b"").unwrap();
    let error = Store::open(dir.path(), LIMITS).unwrap_err();
    let StoreError::Unusable { path: named, .. } = &error else {
        panic!("expected Unusable, got {error:?}");
    };
    assert_eq!(named, &path);
    assert!(error.to_string().contains(&path.display().to_string()));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");

    // Garbage is refused the same way.
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    assert!(matches!(
        Store::open(dir.path(), LIMITS),
        Err(StoreError::Unusable { .. })
    ));

    let fresh = tempfile::tempdir().unwrap();
    let s = store(fresh.path(), LIMITS);
    assert_eq!(s.claim(&record("a1", 1), 8).unwrap(), Claim::New);
    drop(s);
    let s = store(fresh.path(), LIMITS);
    assert!(s.lookup(&user("a1")).unwrap().is_some());
}

/// Reading the stored deliveries leaves expired ones out; the sweep
/// deletes them, bodies and counts with them.
#[test]
fn expired_deliveries_are_left_out_then_swept() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    let mut old = message(b"old");
    old.queued_at = now_secs() - 7200;
    s.enqueue(&user("bob"), &old).unwrap();
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (1, 3));
    assert!(s.pending(&user("bob")).unwrap().is_empty());
    assert_eq!(s.expire_all().unwrap(), 1);
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (0, 0));
    assert_eq!(s.total_queued().unwrap(), 0);
    assert_eq!(s.total_bodies().unwrap(), 0);
}

/// A direct message keeps its body in its one inbox entry; a room message
/// for several members stores its body once, shared, deleted with the
/// last entry; the counts per user and per room follow both, and a resend
/// of either is stored once while it is held.
#[test]
fn bodies_are_inline_for_one_recipient_and_shared_by_several() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    let room: sotto_proto::RoomName = "lobby".parse().unwrap();
    let send = |to: Destination, names: &[&str], body: &'static [u8]| {
        Write::Deliver(NewDelivery {
            queued_at: now_secs(),
            from: user("alice"),
            to,
            body: Bytes::from_static(body),
            recipients: names
                .iter()
                .map(|n| Recipient {
                    name: user(n),
                    slot: Some(Bytes::from_static(b"s")),
                    id: 0,
                })
                .collect(),
            body_id: 0,
        })
    };
    let ids = |outcome: &Outcome| match outcome {
        Outcome::Deliver(Stored::Stored { delivered, .. }) => {
            delivered.iter().map(|(_, id)| *id).collect::<Vec<u64>>()
        }
        other => panic!("{other:?}"),
    };
    let dm = s
        .apply(&[send(Destination::User(user("bob")), &["bob"], b"direct")])
        .unwrap();
    assert_eq!(ids(&dm[0]).len(), 1);
    assert_eq!(s.total_bodies().unwrap(), 0, "inline");
    let shared = s
        .apply(&[send(
            Destination::Room(room.clone()),
            &["bob", "carol"],
            b"to both",
        )])
        .unwrap();
    assert_eq!(s.total_bodies().unwrap(), 1);
    assert_eq!(s.room_depth(&room).unwrap(), (1, 7));
    // Resends while held: stored no second time.
    let again = s
        .apply(&[
            send(Destination::User(user("bob")), &["bob"], b"direct"),
            send(
                Destination::Room(room.clone()),
                &["bob", "carol"],
                b"to both",
            ),
        ])
        .unwrap();
    assert!(again.iter().all(|o| ids(o).is_empty()), "{again:?}");
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (2, 7 + 8));
    let bob: Vec<Vec<u8>> = s
        .pending(&user("bob"))
        .unwrap()
        .into_iter()
        .map(|(_, q)| q.body.to_vec())
        .collect();
    assert_eq!(bob, [b"direct".to_vec(), b"to both".to_vec()]);
    // Acknowledged: the inline body goes with its entry, the shared one
    // with the last of its two.
    let shared_ids = ids(&shared[0]);
    s.acknowledge(&user("bob"), ids(&dm[0])[0]).unwrap();
    s.acknowledge(&user("bob"), shared_ids[0]).unwrap();
    assert_eq!(s.total_bodies().unwrap(), 1);
    s.acknowledge(&user("carol"), shared_ids[1]).unwrap();
    assert_eq!(s.total_bodies().unwrap(), 0);
    assert_eq!(s.room_depth(&room).unwrap(), (0, 0));
    assert_eq!(s.queue_depth(&user("bob")).unwrap(), (0, 0));
    // Gone: the same bytes are a new delivery.
    let new = s
        .apply(&[send(Destination::User(user("bob")), &["bob"], b"direct")])
        .unwrap();
    assert_eq!(ids(&new[0]).len(), 1);
}

/// Ids are handed out before anything is stored under them (protocol.md
/// 9.7): one handed out before a crash, stored or not, is never handed
/// out again, and the ceiling that ensures it is raised a block at a time,
/// not per id.
#[test]
fn ids_are_never_handed_out_twice_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    let first = s.reserve_ids(10).unwrap();
    assert_eq!(s.reserve_ids(5).unwrap(), first + 10);
    assert_eq!(s.last_reserved(), first + 14);
    // Nothing stored under them; the process ends without a word.
    drop(s);
    let s = Store::open(dir.path(), LIMITS).unwrap();
    let after = s.reserve_ids(1).unwrap();
    assert!(after > first + 14, "{after} after {first}");
    // Stored ids come from the same counter.
    let Enqueue::Stored(id) = s.enqueue(&user("bob"), &message(b"one")).unwrap() else {
        panic!("not stored");
    };
    assert!(id > after, "{id} after {after}");
}

/// The prekey directory keeps the newest `MAX_PREKEYS` unexpired prekeys
/// of each identity, newest first, one of each encoding; the sweep deletes
/// the expired ones from the file.
#[test]
fn the_prekey_directory_keeps_the_newest_unexpired_per_identity() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), LIMITS).unwrap();
    let record = |created_at: u64, expires_at: u64, byte: u8| PrekeyRecord {
        created_at,
        expires_at,
        prekey: Bytes::from(vec![byte; 4]),
    };
    let (alice, bob) = ([1; 32], [2; 32]);
    assert_eq!(
        s.publish_prekey(&alice, record(10, 100, 1), 10)
            .unwrap()
            .len(),
        1
    );
    // The same prekey again is not a second one.
    assert_eq!(
        s.publish_prekey(&alice, record(10, 100, 1), 10)
            .unwrap()
            .len(),
        1
    );
    s.publish_prekey(&alice, record(30, 50, 3), 10).unwrap();
    let kept = s.publish_prekey(&alice, record(20, 200, 2), 10).unwrap();
    assert_eq!(kept, [record(30, 50, 3), record(20, 200, 2)]);
    // An older one does not displace them.
    let kept = s.publish_prekey(&alice, record(5, 100, 5), 10).unwrap();
    assert_eq!(kept, [record(30, 50, 3), record(20, 200, 2)]);
    s.publish_prekey(&bob, record(10, 60, 9), 10).unwrap();
    assert_eq!(
        s.prekeys(10).unwrap(),
        [
            (alice, vec![record(30, 50, 3), record(20, 200, 2)]),
            (bob, vec![record(10, 60, 9)])
        ]
    );
    // At 60 Bob's and Alice's newest have expired: read without them,
    // then deleted.
    assert_eq!(s.prekeys(60).unwrap(), [(alice, vec![record(20, 200, 2)])]);
    assert_eq!(s.expire_prekeys(60).unwrap(), 2);
    assert_eq!(s.expire_prekeys(60).unwrap(), 0);
    drop(s);
    let s = Store::open(dir.path(), LIMITS).unwrap();
    assert_eq!(s.prekeys(0).unwrap(), [(alice, vec![record(20, 200, 2)])]);
}

/// A backup taken while the store is open (and written after it) holds
/// the snapshot: names and stored deliveries, nothing written later; the
/// store opened from it goes on with delivery ids past every id the
/// original handed out, so none is handed out twice.
#[test]
fn a_backup_is_a_snapshot_taken_while_the_store_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    let Enqueue::Stored(first) = s.enqueue(&user("bob"), &message(b"kept")).unwrap() else {
        panic!("not stored")
    };
    let copy = tempfile::tempdir().unwrap();
    let copied = s
        .backup(new_file(&copy.path().join(DATABASE_FILE)))
        .unwrap();
    assert!(copied.bytes > 0);
    assert_eq!(
        table_entries(&copy.path().join(DATABASE_FILE)).unwrap(),
        copied.tables,
        "what it reports is what the file holds"
    );
    assert!(
        copied.tables.contains(&("names".to_string(), 1)),
        "{copied:?}"
    );
    // Written after the snapshot: not in the copy.
    let Enqueue::Stored(later) = s.enqueue(&user("bob"), &message(b"later")).unwrap() else {
        panic!("not stored")
    };
    let handed_out = s.reserve_ids(1000).unwrap() + 1000;
    drop(s);

    let restored = Store::open(copy.path(), LIMITS).unwrap();
    let pending = restored.pending(&user("bob")).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].0, first);
    assert_eq!(pending[0].1.body.as_ref(), b"kept");
    let next = restored.reserve_ids(1).unwrap();
    assert!(
        next > handed_out && next > later,
        "{next} after {handed_out}"
    );
    assert!(next >= 1 << 40);
    // Opened again, it is an ordinary database: the ids go on from there.
    drop(restored);
    let again = Store::open(copy.path(), LIMITS).unwrap();
    let after = again.reserve_ids(1).unwrap();
    assert!(
        after > next && after - next <= 2 * ID_BLOCK,
        "{after} after {next}"
    );
}

/// A table this relay does not know stops a backup rather than being left
/// out of the copy.
#[test]
fn a_backup_refuses_an_unknown_table() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    {
        let db = raw(&s);
        let txn = db.as_ref().unwrap().begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, u64>::new("from_the_future"))
            .unwrap()
            .insert(1, 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let copy = tempfile::tempdir().unwrap();
    let error = s
        .backup(new_file(&copy.path().join(DATABASE_FILE)))
        .unwrap_err();
    assert!(error.to_string().contains("from_the_future"), "{error}");
    let empty = tempfile::tempdir().unwrap();
    assert!(backup_stopped(empty.path(), new_file(&copy.path().join("none.redb"))).is_err());
    // A running store's file is not read behind its back.
    assert!(backup_stopped(dir.path(), new_file(&copy.path().join("other.redb"))).is_err());
    drop(s);
    let stopped = backup_stopped(dir.path(), new_file(&copy.path().join("stopped.redb")));
    assert!(stopped.is_err(), "the unknown table stops it here too");
}

/// A new, empty file for a backup.
fn new_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap()
}

#[test]
fn a_restored_ceiling_passes_the_snapshot_and_the_clock() {
    use super::backup::restored_ceiling;
    let now = 1_800_000_000;
    let by_time = now << 24;
    assert_eq!(restored_ceiling(5, now), Some(by_time + (1 << 40)));
    assert_eq!(
        restored_ceiling(by_time * 2, now),
        Some(by_time * 2 + (1 << 40))
    );
    assert!(restored_ceiling(5, now + 1).unwrap() > restored_ceiling(5, now).unwrap());
    assert_eq!(restored_ceiling(u64::MAX - 1, now), None);
    assert_eq!(restored_ceiling(5, u64::MAX >> 10), None);
}

/// A backup that fails (its file cannot be written) leaves the store
/// serving: the failure is the backup's, not the database's.
#[test]
fn a_failed_backup_leaves_the_store_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), LIMITS);
    let read_only = dir.path().join("read-only.redb");
    std::fs::write(&read_only, b"").unwrap();
    assert!(s.backup(std::fs::File::open(&read_only).unwrap()).is_err());
    assert!(!s.broken.load(Ordering::Acquire));
    assert!(matches!(
        s.enqueue(&user("bob"), &message(b"after")).unwrap(),
        Enqueue::Stored(_)
    ));
}
