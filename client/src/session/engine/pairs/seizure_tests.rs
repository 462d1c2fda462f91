//! "Record now, seize later" (docs/threat-model.md 11): a recipient's data
//! directory and passphrase are taken after every frame sent to it was
//! recorded; the test tries every key the copy holds on every recorded
//! frame. Two real engines on real stores; the frames between them carried,
//! and recorded, as the relay carries them; the recipient's days passed on
//! the session clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_crypto::{
    Conversation, Identity, PeerBody, PrekeySecret, ReceivingSession, SignedPrekey,
};

use super::super::testing::*;
use crate::account::Account;
use crate::profile::Profile;
use crate::session::Clock;
use crate::session::clock::use_on_this_thread;
use crate::session::content::Content;
use crate::session::prekeys::Prekeys;

const DAY: u64 = 24 * 60 * 60;

/// `user`'s engine on the store in `dir`, its prekeys made by the real
/// lifecycle (stored, from the test pool), registered at a relay that keeps
/// deliveries 7 days, in the lobby with `members`.
async fn client(user: &str, members: &[&str], dir: &std::path::Path) -> (Engine, Out) {
    let account = Account::open(Profile::open(dir).unwrap(), fixture(user), Some(name(user)))
        .await
        .unwrap();
    let limits = SessionLimits {
        prekeys: sotto_testkit_pool(),
        ..SessionLimits::default()
    };
    let (mut engine, _) = Engine::new(&account, &[RoomName::lobby()], limits).unwrap();
    if let Some(job) = engine.prekeys.first_job(now_secs()) {
        engine.prekeys.keep_made(job()).unwrap();
    }
    let mut out = Out::default();
    engine.publish_prekeys(7 * DAY, &mut out);
    engine.on_registered(name(user), &mut out);
    engine.handle_frame(lobby_joined(members), &mut out);
    (engine, out)
}

/// The pre-generated prekey keys (testdata/prekey-keys.txt).
fn sotto_testkit_pool() -> crate::session::PrekeySource {
    crate::session::PrekeySource::pool_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/prekey-keys.txt"),
    )
    .unwrap()
}

/// bob's own newest prekey, as alice is handed it and verifies it.
fn newest_of(engine: &Engine) -> sotto_crypto::VerifiedPrekey {
    let (_, bytes) = engine.prekeys.own_newest(now_secs()).unwrap();
    SignedPrekey::verify(bytes, engine.identity.public(), now_secs()).unwrap()
}

/// Every frame the relay delivered to bob from alice, for the recording.
fn to_bob(out: &Out) -> Vec<RelayFrame> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, body, slots } => {
                let for_bob = match &route.to {
                    Destination::Room(_) => true,
                    Destination::User(user) => *user == name("bob"),
                };
                for_bob.then(|| RelayFrame::Deliver {
                    delivery: 0,
                    from: name("alice"),
                    to: route.to.clone(),
                    body: body.clone(),
                    slot: slots
                        .iter()
                        .find(|s| s.to == name("bob"))
                        .map(|s| s.data.clone()),
                })
            }
            _ => None,
        })
        .collect()
}

fn to_alice(out: &Out) -> Vec<RelayFrame> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, body, .. }
                if route.to == Destination::User(name("alice")) =>
            {
                Some(RelayFrame::Deliver {
                    delivery: 0,
                    from: name("bob"),
                    to: route.to.clone(),
                    body: body.clone(),
                    slot: None,
                })
            }
            _ => None,
        })
        .collect()
}

/// What an attacker holding `dir` (a copy of bob's data directory) and the
/// passphrase opens of `recorded`: it unwraps every recorded announcement
/// with the identity key and every prekey secret the copy holds (ignoring
/// the clock), adds every receiving session the copy holds, and tries each
/// on every recorded message. The texts that open.
async fn what_a_seizure_opens(dir: &std::path::Path, recorded: &[RelayFrame]) -> Vec<String> {
    let bob: Arc<Identity> = fixture("bob");
    let alice = fixture("alice");
    let account = Account::open(Profile::open(dir).unwrap(), bob.clone(), Some(name("bob")))
        .await
        .unwrap();
    let store = account.store();
    let secrets: Vec<PrekeySecret> = Prekeys::stored_secrets(store);
    let mut sessions: Vec<ReceivingSession> = store
        .all_receiving()
        .unwrap()
        .into_iter()
        .map(|r| r.session)
        .collect();
    for frame in recorded {
        let RelayFrame::Deliver { body, .. } = frame else {
            continue;
        };
        let Ok(PeerBody::Announcement(a)) = PeerBody::decode(body) else {
            continue;
        };
        let when = a.context.created_at;
        for key in [None].into_iter().chain(secrets.iter().map(Some)) {
            if let Ok(session) = a.accept(&mut rand::rng(), &bob, alice.public(), when, key) {
                sessions.push(session);
            }
        }
    }
    let mut opened = Vec::new();
    for frame in recorded {
        let RelayFrame::Deliver {
            body,
            slot: Some(slot),
            to,
            ..
        } = frame
        else {
            continue;
        };
        let Ok(PeerBody::Message(message)) = PeerBody::decode(body) else {
            continue;
        };
        let conversation = match to {
            Destination::Room(room) => Conversation::room(room.as_str()),
            Destination::User(_) => Conversation::direct(alice.fingerprint(), bob.fingerprint()),
        };
        for session in &sessions {
            if let Ok(o) = session.open(&conversation, &message, slot) {
                if let Some(content) = Content::decode(&o.plaintext)
                    && let Some((text, _)) = content.as_text()
                {
                    opened.push(text.to_owned());
                }
                break;
            }
        }
    }
    opened
}

/// A copy of `from` (a data directory in use) in a fresh directory.
fn copy_dir(from: &std::path::Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
    }
    to
}

/// A run of alice's client: she joins and announces herself to bob,
/// wrapped to his newest prekey; he answers; she writes `texts`, and he
/// reads them; then she writes `withheld`, which the relay records but
/// never delivers. Every frame to bob is recorded.
async fn alice_writes(
    bob: &mut Engine,
    alice_dir: &std::path::Path,
    recorded: &mut Vec<RelayFrame>,
    texts: &[&str],
    withheld: &[&str],
) {
    let (mut alice, _) = client("alice", &["bob"], alice_dir).await;
    alice.keep_peer_prekey(newest_of(bob));
    feed(
        bob,
        presence(
            "alice",
            PresenceEvent::Joined,
            Some(fixture("alice").public()),
        ),
    );
    let mut joined = Out::default();
    alice.handle_frame(lobby_joined(&["bob", "alice"]), &mut joined);
    let frames = to_bob(&joined);
    recorded.extend(frames.clone());
    let mut answered = Out::default();
    bob.handle_frames(frames, &mut answered);
    alice.handle_frames(to_alice(&answered), &mut Out::default());
    for text in texts {
        let said = command(&mut alice, send(lobby_chat(), text));
        let frames = to_bob(&said);
        recorded.extend(frames.clone());
        let mut read = Out::default();
        bob.handle_frames(frames, &mut read);
        assert_eq!(messages(&read.updates)[0].text, *text, "{:?}", read.updates);
    }
    for text in withheld {
        recorded.extend(to_bob(&command(&mut alice, send(lobby_chat(), text))));
    }
    feed(bob, presence("alice", PresenceEvent::Left, None));
}

/// Passes `days` on the session clock and lets bob's housekeeping run: his
/// prekeys rotate and those past their grace are deleted, sessions past
/// their age are pruned, the store is compacted.
fn pass_days(bob: &mut Engine, clock: &Clock, days: u64) {
    clock.advance(Duration::from_secs(days * DAY + 2 * 60 * 60));
    let mut out = Out::default();
    // The first tick deletes and starts a new prekey; once made (on a
    // thread of its own) it is taken, and the next tick compacts.
    bob.tick(Instant::now(), &mut out);
    bob.prekeys.finish_generation().unwrap();
    bob.tick(Instant::now() + Duration::from_secs(3600), &mut out);
    assert!(codes(&out.updates).is_empty(), "{:?}", out.updates);
}

/// Inside the grace: a seized copy opens the sessions wrapped to the
/// prekeys it still holds, from their first message (the documented
/// window, docs/threat-model.md 11.2), and nothing of an older session,
/// whose prekey was deleted and whose receiving session was pruned.
#[tokio::test]
async fn a_seizure_inside_the_grace_opens_only_the_documented_window() {
    let clock = Clock::default();
    use_on_this_thread(clock.clone());
    let (bob_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut bob, _) = client("bob", &["bob"], bob_dir.path()).await;
    let mut recorded = Vec::new();
    alice_writes(
        &mut bob,
        alice_dir.path(),
        &mut recorded,
        &["old one", "old two"],
        &[],
    )
    .await;
    // A fortnight and a day: bob's first prekey is past its grace.
    pass_days(&mut bob, &clock, 15);
    alice_writes(
        &mut bob,
        alice_dir.path(),
        &mut recorded,
        &["new one", "new two"],
        &[],
    )
    .await;
    let seized = copy_dir(bob_dir.path());
    let opened = what_a_seizure_opens(seized.path(), &recorded).await;
    assert_eq!(opened, ["new one", "new two"]);
}

/// After the grace: a seized copy opens nothing that was recorded, though
/// it holds the identity keys, every prekey left and every session left;
/// not even a message the relay withheld (its session's keys were pruned
/// with the session).
#[tokio::test]
async fn record_now_seize_later_opens_nothing_once_the_grace_is_over() {
    let clock = Clock::default();
    use_on_this_thread(clock.clone());
    let (bob_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut bob, _) = client("bob", &["bob"], bob_dir.path()).await;
    let mut recorded = Vec::new();
    alice_writes(
        &mut bob,
        alice_dir.path(),
        &mut recorded,
        &["one", "two"],
        &["withheld"],
    )
    .await;
    // Control: before the grace is over, the copy opens them all.
    let early = copy_dir(bob_dir.path());
    assert_eq!(
        what_a_seizure_opens(early.path(), &recorded).await,
        ["one", "two", "withheld"]
    );
    pass_days(&mut bob, &clock, 15);
    drop(bob);
    let seized = copy_dir(bob_dir.path());
    assert!(
        what_a_seizure_opens(seized.path(), &recorded)
            .await
            .is_empty(),
        "the recording opened"
    );
}

/// Healing (docs/threat-model.md 11.3): a copy of bob's data directory
/// taken at one moment keeps opening what it held keys for, but nothing of
/// the session alice starts after bob's prekey rotated: her next session is
/// wrapped to a prekey made after the copy.
#[tokio::test]
async fn a_stolen_state_opens_nothing_after_the_next_restart() {
    let clock = Clock::default();
    use_on_this_thread(clock.clone());
    let (bob_dir, alice_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut bob, _) = client("bob", &["bob"], bob_dir.path()).await;
    let mut recorded = Vec::new();
    alice_writes(&mut bob, alice_dir.path(), &mut recorded, &["before"], &[]).await;
    let stolen = copy_dir(bob_dir.path());
    // Two days: bob has made a new prekey; alice's session has aged out and
    // her next run starts another, wrapped to bob's newest prekey.
    pass_days(&mut bob, &clock, 2);
    alice_writes(&mut bob, alice_dir.path(), &mut recorded, &["after"], &[]).await;
    assert_eq!(
        what_a_seizure_opens(stolen.path(), &recorded).await,
        ["before"]
    );
}
