//! The store's tests.

use super::*;
use crate::session::Chat;

/// `StoredEntry` as it was when its sender was a `String`: the bytes on
/// disk must not have changed with the typed name.
#[derive(Serialize)]
struct EntryWithStringName {
    chat: Chat,
    from: String,
    fingerprint: Fingerprint,
    outgoing: bool,
    seq: u64,
    sent_at_ms: u64,
    received_at_ms: u64,
    text: String,
}

#[test]
fn a_history_entry_has_the_bytes_it_had_before_names_were_typed() {
    let entry = StoredEntry {
        chat: Chat::Direct("Bob".parse().unwrap()),
        from: "Bob".parse().unwrap(),
        fingerprint: Fingerprint([7; 32]),
        outgoing: false,
        seq: 300,
        sent_at_ms: 1_700_000_000_000,
        received_at_ms: 1_700_000_000_123,
        text: "hello".to_owned(),
    };
    let before = EntryWithStringName {
        chat: entry.chat.clone(),
        from: "Bob".to_owned(),
        fingerprint: entry.fingerprint,
        outgoing: entry.outgoing,
        seq: entry.seq,
        sent_at_ms: entry.sent_at_ms,
        received_at_ms: entry.received_at_ms,
        text: entry.text.clone(),
    };
    let bytes = encode(&entry).unwrap();
    assert_eq!(*bytes, *encode(&before).unwrap());
    assert_eq!(decode::<StoredEntry>(&bytes).unwrap(), entry);
}

fn a_store(dir: &std::path::Path) -> Store {
    let identity = Identity::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/identities/alice.sotto-id"),
        b"sotto test vectors",
    )
    .unwrap();
    let vault = Vault::open(
        &dir.join(crate::vault::VAULT_FILE),
        &StorageKey::from_bytes([3; 32]),
    )
    .unwrap();
    Store::new(Arc::new(vault), &identity).unwrap()
}

fn an_entry(seq: u64) -> StoredEntry {
    StoredEntry {
        chat: Chat::Direct("Bob".parse().unwrap()),
        from: "Bob".parse().unwrap(),
        fingerprint: Fingerprint([7; 32]),
        outgoing: false,
        seq,
        sent_at_ms: 1,
        received_at_ms: 2,
        text: format!("m{seq}"),
    }
}

fn at(anchor: u64) -> Position {
    Position {
        anchor,
        rank: Position::IN_ORDER,
    }
}

#[test]
fn a_batch_reads_its_own_writes_and_keeps_them_only_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = a_store(dir.path());
    let conversation = Conversation::room("lobby");
    let sender = Fingerprint([9; 32]);
    let inbound = Inbound {
        max_epoch: 5,
        sessions: Vec::new(),
    };
    let before = store.vault().commits();

    // Dropped without committing: nothing kept, though it read its
    // own writes while open.
    {
        let batch = store.batch().unwrap();
        store
            .record_received(
                &an_entry(1),
                at(1),
                sender,
                &conversation,
                &inbound,
                Beside::default(),
            )
            .unwrap();
        assert_eq!(store.inbound(sender, &conversation).unwrap().max_epoch, 5);
        assert_eq!(store.history().unwrap().entries.len(), 1);
        assert!(store.batch().is_err(), "one batch at a time");
        drop(batch);
    }
    assert_eq!(store.inbound(sender, &conversation).unwrap().max_epoch, 0);
    assert!(store.history().unwrap().entries.is_empty());
    assert_eq!(store.vault().commits(), before);

    // Committed: every write of the batch, in one commit.
    let batch = store.batch().unwrap();
    for seq in 1..=3 {
        let seen = store.inbound(sender, &conversation).unwrap().max_epoch;
        let next = Inbound {
            max_epoch: seen + 1,
            sessions: Vec::new(),
        };
        store
            .record_received(
                &an_entry(seq),
                at(seq),
                sender,
                &conversation,
                &next,
                Beside::default(),
            )
            .unwrap();
    }
    batch.commit().unwrap();
    assert_eq!(store.vault().commits(), before + 1);
    assert_eq!(store.inbound(sender, &conversation).unwrap().max_epoch, 3);
    assert_eq!(store.history().unwrap().entries.len(), 3);

    // A failed commit keeps nothing of its batch.
    store.vault().fail_commits(true);
    let batch = store.batch().unwrap();
    store
        .record_received(
            &an_entry(4),
            at(4),
            sender,
            &conversation,
            &inbound,
            Beside::default(),
        )
        .unwrap();
    assert!(batch.commit().is_err());
    store.vault().fail_commits(false);
    assert_eq!(store.inbound(sender, &conversation).unwrap().max_epoch, 3);
    assert_eq!(store.history().unwrap().entries.len(), 3);
}

#[test]
fn rooms_to_leave_are_empty_until_recorded_and_kept_apart_from_the_rooms_to_join() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = a_store(dir.path());
        // A data directory from before the record: the joined rooms only.
        store.set_joined_rooms(&["lobby".to_owned()]).unwrap();
        assert!(store.rooms_to_leave().unwrap().is_empty());
        store.set_rooms_to_leave(&["dev".to_owned()]).unwrap();
    }
    let store = a_store(dir.path());
    assert_eq!(store.rooms_to_leave().unwrap(), ["dev"]);
    assert_eq!(
        store.joined_rooms().unwrap(),
        Some(vec!["lobby".to_owned()])
    );
    store.set_rooms_to_leave(&[]).unwrap();
    assert!(store.rooms_to_leave().unwrap().is_empty());
}

/// A data directory from before sessions v2 (no format mark): opened once,
/// its version-1 receiving sessions are gone, each message it never sent is
/// marked failed rather than sent as version-1 frames, the user is told once,
/// and the mark is written. A mark from a newer sotto is refused.
#[test]
fn a_version_1_store_is_migrated_once_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/identities/alice.sotto-id"),
        b"sotto test vectors",
    )
    .unwrap();
    let store = a_store(dir.path());
    let conversation = Conversation::room("lobby");
    // What a version-1 store held: a session record (its old format does
    // not even decode now), and a sealed message the relay never took.
    store
        .vault
        .put(INBOUND, b"an old session", b"v1 bytes")
        .unwrap();
    let outgoing = OutgoingRecord {
        chat: Chat::Room("lobby".parse().unwrap()),
        recipients: Vec::new(),
        state: 0,
        failed: None,
        delivered: Vec::new(),
        refused: Vec::new(),
        typed: None,
    };
    store.set_outgoing(&conversation, 7, &outgoing).unwrap();
    let unsent = UnsentRecord {
        conversation: conversation.clone(),
        seq: 7,
        chat: outgoing.chat.clone(),
        frames: Vec::new(),
    };
    let key = store.outgoing_key(&conversation, 7);
    store
        .vault
        .put(UNSENT, &key, &encode(&unsent).unwrap())
        .unwrap();
    store.vault.remove(SETTINGS, FORMAT_KEY).unwrap();
    let vault = store.vault.clone();
    drop(store);

    let store = Store::new(vault.clone(), &identity).unwrap();
    assert!(store.vault.all(INBOUND).unwrap().is_empty());
    assert!(store.all_unsent().unwrap().is_empty());
    let (_, failed) = store.all_outgoing().unwrap().remove(0);
    assert_eq!(failed.state, 2);
    assert!(failed.failed.is_some());
    assert_eq!(store.take_migrated().unwrap(), Some((1, 1)));
    assert_eq!(store.take_migrated().unwrap(), None, "told once");
    // Opened again: nothing more to migrate.
    drop(store);
    let store = Store::new(vault.clone(), &identity).unwrap();
    assert_eq!(store.take_migrated().unwrap(), None);
    // A newer sotto's mark: refused, nothing touched.
    store
        .vault
        .put(SETTINGS, FORMAT_KEY, &[STORE_FORMAT + 1])
        .unwrap();
    drop(store);
    assert!(matches!(
        Store::new(vault, &identity),
        Err(StoreError::NewerFormat(3))
    ));
}
