//! Disappearing messages in the engine, with a real store on disk: what
//! expires leaves the history, the outgoing, unsent and outbox records, the
//! screen and (after compaction) the database file's bytes.

use super::super::testing::*;
use crate::session::MessageId;
use crate::store::Store;

const HOUR: u64 = 3600;

fn file_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    let file = std::fs::read(dir.join(crate::vault::VAULT_FILE)).unwrap();
    file.windows(needle.len()).any(|w| w == needle)
}

/// The only expiring record's history key and the sealed bytes under it.
fn the_expiring(engine: &Engine) -> (Vec<u8>, Vec<u8>) {
    let records: Vec<_> = engine.timers.expiring.values().collect();
    assert_eq!(records.len(), 1);
    let key = records[0].history.clone().unwrap();
    let sealed = engine
        .store
        .vault()
        .get_raw(Store::HISTORY_TABLE, &key)
        .unwrap();
    (key, sealed)
}

fn timers(updates: &[Update]) -> Vec<(Chat, u64, Option<&str>)> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Timer { chat, seconds, by } => {
                Some((chat.clone(), *seconds, by.as_ref().map(UserName::as_str)))
            }
            _ => None,
        })
        .collect()
}

fn expired(updates: &[Update]) -> Vec<(Chat, Vec<MessageId>, Vec<&str>)> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Expired { chat, ids, queued } => Some((
                chat.clone(),
                ids.clone(),
                queued.iter().map(|q| q.text.as_str()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Sweeps (and compacts if due) as if the clock were `seconds` later.
fn sweep_after(engine: &mut Engine, seconds: u64) -> Vec<Update> {
    let mut out = Out::default();
    engine.sweep_expired(now_ms() + seconds * 1000, &mut out);
    engine.compact_if_due(std::time::Instant::now(), false, &mut out);
    out.updates
}

#[tokio::test]
async fn a_sent_message_under_a_timer_leaves_the_store_file_when_it_expires() {
    let bob = fixture("bob");
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    let (mut engine, _) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
    let out = command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: HOUR,
        },
    );
    assert_eq!(timers(&out.updates), [(lobby_chat(), HOUR, Some("alice"))]);
    // The change itself went to bob, sealed like a text.
    assert_eq!(sent_to(&out).last(), Some(&&lobby()));
    let out = command(&mut engine, send(lobby_chat(), "burn after reading"));
    let sent = messages(&out.updates)[0].clone();
    let (key, sealed) = the_expiring(&engine);
    assert!(file_contains(dir.path(), &sealed), "stored before expiry");
    // Nothing is due an hour early, nor a second before.
    assert!(sweep_after(&mut engine, 0).is_empty());
    assert!(sweep_after(&mut engine, HOUR - 2).is_empty());
    assert!(file_contains(dir.path(), &sealed));

    let updates = sweep_after(&mut engine, HOUR + 1);
    assert_eq!(expired(&updates), [(lobby_chat(), vec![sent.id()], vec![])]);
    assert!(errors(&updates).is_empty());
    let vault = engine.store.vault();
    assert_eq!(vault.get_raw(Store::HISTORY_TABLE, &key), None);
    assert!(
        !file_contains(dir.path(), &sealed),
        "the deleted record is still in the file"
    );
    // Its delivery record and its frames kept to send again went with it.
    let conversation = sotto_crypto::Conversation::room("lobby");
    assert_eq!(
        engine.store.outgoing(&conversation, sent.seq).unwrap(),
        None
    );
    assert!(engine.store.all_unsent().unwrap().is_empty());
    assert!(engine.unsent.is_empty());
    // Swept once: nothing more to do.
    assert!(sweep_after(&mut engine, 2 * HOUR).is_empty());
    drop(engine);
    let (_, history) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
    assert!(history_texts(&history).is_empty());
    assert_eq!(timers(&history), [(lobby_chat(), HOUR, None)]);
}

#[tokio::test]
async fn a_received_timed_text_expires_from_when_it_was_stored_even_with_no_timer_here() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let (mut engine, dir) = alice_with_bob(&bob.identity).await;
    feed(&mut engine, announce_stored(&bob.announcement, 1));
    let before = now_ms();
    let sealed = bob.seal_content(&Content::text("a secret".into(), 60));
    let updates = feed(&mut engine, stored(deliver(&sealed, lobby()), 2));
    let message = messages(&updates)[0].clone();
    assert_eq!(message.text, "a secret");
    assert_eq!(engine.timer_of(&lobby_chat()), 0);
    let record = engine.timers.expiring.values().next().unwrap().clone();
    assert!(record.expires_at_ms >= before + 60_000);
    assert!(record.expires_at_ms <= now_ms() + 60_000);
    let (_, bytes) = the_expiring(&engine);
    assert!(file_contains(dir.path(), &bytes));
    assert!(sweep_after(&mut engine, 30).is_empty());
    let updates = sweep_after(&mut engine, 61);
    assert_eq!(
        expired(&updates),
        [(lobby_chat(), vec![message.id()], vec![])]
    );
    assert!(!file_contains(dir.path(), &bytes));
}

#[tokio::test]
async fn a_members_timer_is_shown_kept_across_restarts_and_turned_off() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    let (mut engine, _) = alice_in_lobby_with(&account, &bob.identity, SessionLimits::default());
    feed(&mut engine, announce_stored(&bob.announcement, 1));
    let set = bob.seal_content(&Content::Timer { seconds: 300 });
    let out = feed_out(&mut engine, stored(deliver(&set, lobby()), 2));
    assert!(acked(&out, 2));
    assert_eq!(timers(&out.updates), [(lobby_chat(), 300, Some("bob"))]);
    assert!(messages(&out.updates).is_empty(), "a notice, not a text");
    // What alice sends now is under bob's timer.
    command(&mut engine, send(lobby_chat(), "mine"));
    let record = engine.timers.expiring.values().next().unwrap().clone();
    assert!(record.expires_at_ms <= now_ms() + 300_000);
    assert_eq!(
        record.id.map(|(sender, _)| sender),
        Some(alice.fingerprint())
    );
    drop(engine);
    let (mut engine, history) =
        alice_in_lobby_with(&account, &bob.identity, SessionLimits::default());
    assert_eq!(timers(&history), [(lobby_chat(), 300, None)]);
    assert_eq!(history_texts(&history), ["mine"]);
    // The restarted engine still deletes it on time.
    assert_eq!(expired(&sweep_after(&mut engine, 301)).len(), 1);
    // Bob turns it off: what alice sends after it is kept.
    let off = bob.seal_content(&Content::Timer { seconds: 0 });
    let updates = feed(&mut engine, stored(deliver(&off, lobby()), 3));
    assert_eq!(timers(&updates), [(lobby_chat(), 0, Some("bob"))]);
    command(&mut engine, send(lobby_chat(), "kept"));
    assert!(engine.timers.expiring.is_empty());
    drop(engine);
    let (_, history) = alice_in_lobby_with(&account, &bob.identity, SessionLimits::default());
    assert!(timers(&history).is_empty());
    assert_eq!(history_texts(&history), ["kept"]);
}

#[tokio::test]
async fn a_queued_text_that_expires_before_it_is_sent_leaves_the_outbox() {
    let bob = fixture("bob");
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    let (mut engine, _) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
    command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: 60,
        },
    );
    engine.on_disconnected();
    let out = command(&mut engine, send(lobby_chat(), "typed offline"));
    assert!(out.frames.is_empty());
    assert_eq!(engine.store.outbox().unwrap().len(), 1);
    drop(engine);
    // Still queued after a restart, and still due.
    let (mut engine, history) = new_engine(&account, SessionLimits::default());
    assert!(
        history
            .iter()
            .any(|u| matches!(u, Update::Queued(q) if q.len() == 1))
    );
    let updates = sweep_after(&mut engine, 61);
    assert_eq!(
        expired(&updates),
        [(lobby_chat(), vec![], vec!["typed offline"])]
    );
    assert!(engine.store.outbox().unwrap().is_empty());
    // Back online: nothing is sent for it (the session's announcement to
    // bob on joining carries no message).
    let out = back_in_lobby(&mut engine, &bob);
    assert!(!sent_to(&out).contains(&&lobby()), "{:?}", out.frames);
    assert!(messages(&out.updates).is_empty());
}

#[tokio::test]
async fn a_queued_text_sealed_before_it_expires_expires_as_a_sent_message() {
    let bob = fixture("bob");
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    let (mut engine, _) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
    command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: 60,
        },
    );
    engine.on_disconnected();
    command(&mut engine, send(lobby_chat(), "typed offline"));
    let out = back_in_lobby(&mut engine, &bob);
    let sent = messages(&out.updates)[0].clone();
    // One record, the message's: the outbox text's went with the outbox.
    assert_eq!(engine.timers.expiring.len(), 1);
    assert_eq!(engine.store.all_expiring().unwrap().len(), 1);
    let updates = sweep_after(&mut engine, 61);
    assert_eq!(expired(&updates), [(lobby_chat(), vec![sent.id()], vec![])]);
    assert!(engine.store.all_expiring().unwrap().is_empty());
}

#[tokio::test]
async fn deletions_share_one_compaction_per_interval() {
    let bob = fixture("bob");
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    let limits = SessionLimits {
        compact_every: std::time::Duration::from_secs(3600),
        ..SessionLimits::default()
    };
    let (mut engine, _) = alice_in_lobby_with(&account, &bob, limits);
    command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: 1,
        },
    );
    command(&mut engine, send(lobby_chat(), "first"));
    sweep_after(&mut engine, 2);
    assert!(!engine.timers.compaction_due, "the first compacts at once");
    command(&mut engine, send(lobby_chat(), "second"));
    let (_, sealed) = the_expiring(&engine);
    sweep_after(&mut engine, 2);
    assert!(
        engine.timers.compaction_due,
        "the next waits for the interval"
    );
    // At shutdown it runs whatever the interval.
    engine.shutdown();
    assert!(!engine.timers.compaction_due);
    assert!(!file_contains(dir.path(), &sealed));
}

#[tokio::test]
async fn a_timer_is_refused_above_the_longest_and_when_it_cannot_be_told() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let too_long = crate::session::content::MAX_TIMER_SECS + 1;
    let out = command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: too_long,
        },
    );
    assert_eq!(
        codes(&out.updates),
        [crate::session::ProblemCode::BadCommand]
    );
    assert!(out.frames.is_empty());
    engine.on_disconnected();
    let out = command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: 60,
        },
    );
    assert_eq!(
        codes(&out.updates),
        [crate::session::ProblemCode::NotConnected]
    );
    assert_eq!(engine.timer_of(&lobby_chat()), 0);
    let out = command(&mut engine, Command::ShowTimer(lobby_chat()));
    assert_eq!(timers(&out.updates), [(lobby_chat(), 0, None)]);
}

#[tokio::test]
async fn a_message_that_disappears_unreceipted_still_gets_its_heartbeat() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    command(
        &mut engine,
        Command::SetTimer {
            chat: lobby_chat(),
            seconds: 1,
        },
    );
    command(&mut engine, send(lobby_chat(), "withheld by the relay?"));
    assert_eq!(expired(&sweep_after(&mut engine, 2)).len(), 1);
    // No receipt came: when the heartbeat is due it goes, so a relay that
    // withheld the message still shows as a gap to bob.
    let mut out = Out::default();
    let later = std::time::Instant::now() + SessionLimits::default().heartbeat;
    engine.tick(later, &mut out);
    assert_eq!(sent_to(&out), [&lobby()]);
}
