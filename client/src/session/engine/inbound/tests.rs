// Tests may abort (clippy.toml lets them unwrap and panic; clippy has no
// such setting for `unreachable!`).
#![allow(clippy::unreachable)]

use std::time::Duration;

use super::super::testing::*;
use super::*;

#[tokio::test]
async fn a_message_before_its_announcement_waits_for_it() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
    let early = bob.seal("early");
    assert!(feed(&mut engine, deliver(&early, lobby())).is_empty());
    let updates = feed(&mut engine, announce(&bob.announcement));
    assert_eq!(messages(&updates)[0].text, "early");
}

#[tokio::test]
async fn replayed_or_older_announcements_cost_no_rsa_and_roll_nothing_back() {
    let alice = fixture("alice");
    let old = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let mut new = Bob::start(fixture("bob"), alice.public(), 2, 10);
    let (mut engine, _dir) = alice_with_bob(&new.identity).await;
    let before = rsa_decryptions(&engine);
    assert!(feed(&mut engine, announce(&new.announcement)).is_empty());
    assert_eq!(rsa_decryptions(&engine), before + 1);
    // The same announcement again, and an older epoch: dropped before RSA.
    assert!(feed(&mut engine, announce(&new.announcement)).is_empty());
    assert!(feed(&mut engine, announce(&old.announcement)).is_empty());
    assert_eq!(rsa_decryptions(&engine), before + 1);
    // The newer session is still the one in use.
    let sealed = new.seal("still epoch 2");
    let updates = feed(&mut engine, deliver(&sealed, lobby()));
    assert_eq!(messages(&updates)[0].text, "still epoch 2");
}

#[tokio::test]
async fn moved_forged_and_reflected_messages_are_rejected() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
    feed(&mut engine, announce(&bob.announcement));
    let rejected = |updates: &[Update]| {
        matches!(updates, [Update::Rejected { .. }]) && messages(updates).is_empty()
    };

    // Moved into a direct message, or into another room.
    let sealed = bob.seal("lobby only");
    let moved = feed(
        &mut engine,
        deliver(&sealed, Destination::User(name("alice"))),
    );
    assert!(rejected(&moved), "{moved:?}");
    let moved = feed(
        &mut engine,
        deliver(&sealed, Destination::Room("side".parse().unwrap())),
    );
    assert!(rejected(&moved), "{moved:?}");
    // A flipped bit anywhere in the body.
    let mut forged = sealed.clone();
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    assert!(rejected(&feed(&mut engine, deliver(&forged, lobby()))));
    // Claiming to come from alice herself.
    let RelayFrame::Deliver { to, body, slot, .. } = deliver(&sealed, lobby()) else {
        unreachable!()
    };
    let reflected = RelayFrame::Deliver {
        delivery: 0,
        from: name("alice"),
        to,
        body,
        slot,
    };
    assert!(rejected(&feed(&mut engine, reflected)));
    // The untouched message still opens afterwards: nothing above moved
    // the replay window.
    let updates = feed(&mut engine, deliver(&sealed, lobby()));
    assert_eq!(messages(&updates)[0].text, "lobby only");
}

#[tokio::test]
async fn a_store_read_failure_is_retried_and_never_overwrites_the_stored_sessions() {
    let alice = fixture("alice");
    let mut first = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let second = Bob::start(fixture("bob"), alice.public(), 2, 10);
    let (mut engine, _dir) = alice_with_bob(&first.identity).await;
    assert!(feed(&mut engine, announce(&first.announcement)).is_empty());
    let (table, id) = engine
        .store
        .inbound_record(first.identity.fingerprint(), &Conversation::room("lobby"));
    let sealed = engine.store.vault().get_raw(table, &id).unwrap();
    // The record is damaged on disk, and the engine reads it afresh (as
    // after a restart).
    engine
        .store
        .vault()
        .put_raw(table, &id, b"damaged")
        .unwrap();
    engine.inbound.clear();
    let out = feed_out(&mut engine, announce_stored(&second.announcement, 7));
    assert!(!acked(&out, 7), "{out:?}");
    assert_eq!(
        codes(&out.updates),
        [ProblemCode::Storage],
        "{:?}",
        out.updates
    );
    // Nothing was written over the stored state.
    assert_eq!(
        engine.store.vault().get_raw(table, &id).unwrap(),
        b"damaged".to_vec()
    );
    // Once the record reads again, the redelivery is accepted and the
    // first session is still kept beside the new one.
    engine.store.vault().put_raw(table, &id, &sealed).unwrap();
    let out = feed_out(&mut engine, announce_stored(&second.announcement, 7));
    assert!(acked(&out, 7), "{out:?}");
    let updates = feed(&mut engine, deliver(&first.seal("epoch 1"), lobby()));
    assert_eq!(messages(&updates)[0].text, "epoch 1");
    // And the epoch floor held: epoch 1 again is a replay.
    let before = rsa_decryptions(&engine);
    assert!(feed(&mut engine, announce(&first.announcement)).is_empty());
    assert_eq!(rsa_decryptions(&engine), before);
}

#[tokio::test]
async fn sessions_made_long_ago_or_in_the_future_are_refused_on_receipt() {
    let alice = fixture("alice");
    let bob_identity = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob_identity).await;
    let lobby_conversation = Conversation::room("lobby");
    for created_at in [0, 1 << 40] {
        let bob = Bob::start_in(
            lobby_conversation.clone(),
            bob_identity.clone(),
            alice.public(),
            7,
            0,
            created_at,
        );
        let before = rsa_decryptions(&engine);
        // As often as bob's whole allowance: signed but out of date,
        // they must not spend it (the current session below still
        // gets through).
        for _ in 0..SessionLimits::default().announcement_burst {
            let updates = feed(&mut engine, announce(&bob.announcement));
            assert!(
                matches!(updates[..], [Update::Rejected { .. }]),
                "{created_at}: {updates:?}"
            );
        }
        assert_eq!(rsa_decryptions(&engine), before);
    }
    // A session accepted long ago (kept from an earlier run) no longer
    // opens anything.
    let created_at = now_secs()
        - sotto_crypto::MAX_SESSION_AGE.as_secs()
        - sotto_crypto::MAX_DELIVERY_DELAY.as_secs()
        - sotto_crypto::MAX_CLOCK_SKEW.as_secs()
        - 60;
    let mut old = Bob::start_in(
        lobby_conversation.clone(),
        bob_identity.clone(),
        alice.public(),
        8,
        0,
        created_at,
    );
    let (_, secret) = test_prekey(&alice);
    let session = old
        .announcement
        .accept(
            &mut rand::rng(),
            &alice,
            bob_identity.public(),
            created_at,
            Some(&secret),
        )
        .unwrap();
    engine.inbound.insert(
        (bob_identity.fingerprint(), lobby_conversation),
        Inbound {
            max_epoch: 8,
            sessions: vec![crate::store::Receiving {
                session,
                window: sotto_crypto::ReplayWindow::starting_at(0),
                missing: std::collections::BTreeSet::new(),
            }],
        },
    );
    let updates = feed(&mut engine, deliver(&old.seal("too old"), lobby()));
    assert!(
        matches!(updates[..], [Update::Rejected { .. }]),
        "{updates:?}"
    );
    // A current session still works.
    let mut fresh = Bob::start(bob_identity.clone(), alice.public(), 9, 1);
    feed(&mut engine, announce(&fresh.announcement));
    let updates = feed(&mut engine, deliver(&fresh.seal("fresh"), lobby()));
    assert_eq!(messages(&updates)[0].text, "fresh");
}

#[tokio::test]
async fn forged_announcements_are_blamed_on_the_relay_and_spend_none_of_the_senders_allowance() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1_000, 0);
    let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
    let limits = SessionLimits::default();
    let count = u8::try_from(limits.announcement_burst + 5).unwrap();
    let before = rsa_decryptions(&engine);
    for forged in forgeries(&bob.announcement, count) {
        let updates = feed(&mut engine, announce(&forged));
        assert!(
            matches!(updates[..], [Update::Rejected { .. }]),
            "{updates:?}"
        );
    }
    assert_eq!(rsa_decryptions(&engine), before);
    // bob's real announcement still opens his messages.
    assert!(feed(&mut engine, announce(&bob.announcement)).is_empty());
    let updates = feed(&mut engine, deliver(&bob.seal("real"), lobby()));
    assert_eq!(messages(&updates)[0].text, "real");
    // The relay is named, once, with the count.
    let mut out = Out::default();
    engine.tick(Instant::now(), &mut out);
    assert_eq!(
        errors(&out.updates),
        [forged_announcements(u64::from(count), "bob")]
    );
    assert_eq!(codes(&out.updates), [ProblemCode::Forged]);
    let mut out = Out::default();
    engine.tick(Instant::now(), &mut out);
    assert!(errors(&out.updates).is_empty());
}

#[tokio::test]
async fn checking_forgeries_is_bounded_by_a_budget_shared_by_all_senders() {
    let alice = fixture("alice");
    let bob = Bob::start(fixture("bob"), alice.public(), 1_000, 0);
    let limits = SessionLimits {
        verification_burst: 3,
        verifications_per_second: 0,
        ..SessionLimits::default()
    };
    let (mut engine, _dir) = alice_with_bob_limits(&bob.identity, limits).await;
    let mut rejected = 0;
    for forged in forgeries(&bob.announcement, 5) {
        let updates = feed(&mut engine, announce(&forged));
        rejected += updates
            .iter()
            .filter(|u| matches!(u, Update::Rejected { .. }))
            .count();
    }
    assert_eq!(rejected, 3);
    let mut out = Out::default();
    engine.tick(Instant::now(), &mut out);
    assert_eq!(
        errors(&out.updates),
        [
            forged_announcements(3, "bob"),
            "the relay delivered key announcements faster than they can be checked: 2 dropped unchecked".to_owned()
        ]
    );
    assert_eq!(
        codes(&out.updates),
        [ProblemCode::Forged, ProblemCode::Flooded]
    );
}

#[tokio::test]
async fn a_duplicate_announcement_is_ignored_acknowledged_and_costs_no_rsa() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
    let out = feed_out(&mut engine, stored(announce(&bob.announcement), 5));
    assert!(acked(&out, 5) && out.updates.is_empty(), "{out:?}");
    let before = rsa_decryptions(&engine);
    // The relay delivers it again (as stored delivery 6): acknowledged so it
    // is not stored forever, and nothing else.
    let out = feed_out(&mut engine, stored(announce(&bob.announcement), 6));
    assert!(acked(&out, 6), "{out:?}");
    assert!(out.updates.is_empty(), "{:?}", out.updates);
    assert_eq!(rsa_decryptions(&engine), before);
    let updates = feed(&mut engine, deliver(&bob.seal("still open"), lobby()));
    assert_eq!(messages(&updates)[0].text, "still open");
}

#[tokio::test]
async fn a_held_message_whose_announcement_never_comes_is_given_up_after_held_for() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let (mut engine, _dir) = alice_with_bob(&bob.identity).await;
    let held_for = SessionLimits::default().held_for;
    let out = feed_out(&mut engine, stored(deliver(&bob.seal("early"), lobby()), 3));
    assert!(!acked(&out, 3) && out.updates.is_empty(), "{out:?}");
    let start = Instant::now();
    let mut out = Out::default();
    engine.tick(start + held_for - Duration::from_secs(5), &mut out);
    assert!(out.updates.is_empty() && !acked(&out, 3), "{out:?}");
    let mut out = Out::default();
    engine.tick(start + held_for + Duration::from_secs(1), &mut out);
    assert!(
        matches!(
            &out.updates[..],
            [Update::Rejected { chat: Some(chat), from }] if *chat == Chat::Room(RoomName::lobby()) && from == "bob"
        ),
        "{:?}",
        out.updates
    );
    assert!(acked(&out, 3), "{out:?}");
    // Given up for good: its announcement now opens nothing that waited.
    assert!(feed(&mut engine, announce(&bob.announcement)).is_empty());
}

#[tokio::test]
async fn messages_beyond_the_held_bound_are_rejected_at_once() {
    let alice = fixture("alice");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let limits = SessionLimits {
        held_messages: 1,
        ..SessionLimits::default()
    };
    let (mut engine, _dir) = alice_with_bob_limits(&bob.identity, limits).await;
    assert!(feed(&mut engine, deliver(&bob.seal("kept"), lobby())).is_empty());
    let updates = feed(&mut engine, deliver(&bob.seal("one too many"), lobby()));
    assert!(
        matches!(updates[..], [Update::Rejected { .. }]),
        "{updates:?}"
    );
    let updates = feed(&mut engine, announce(&bob.announcement));
    let texts: Vec<&str> = messages(&updates).iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["kept"]);
}
