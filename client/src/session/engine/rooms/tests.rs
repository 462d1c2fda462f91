//! The roster's tests: membership, presence, reconciliation with the
//! relay's rooms after registration, roster views.

use std::time::Duration;

use super::super::testing::*;
use super::*;

#[tokio::test]
async fn a_presence_flood_sends_each_change_once_and_the_member_list_once_per_interval() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let key = Bytes::from(fixture("mallory").public().to_bytes());
    let mut updates = Vec::new();
    for i in 0..50 {
        updates.extend(feed(
            &mut engine,
            RelayFrame::Presence {
                room: RoomName::lobby(),
                user: name(&format!("flood{i}")),
                event: PresenceEvent::Joined,
                identity: Some(key.clone()),
                prekeys: Vec::new(),
            },
        ));
    }
    let count =
        |updates: &[Update], f: fn(&Update) -> bool| updates.iter().filter(|u| f(u)).count();
    assert_eq!(
        count(&updates, |u| matches!(u, Update::Presence { .. })),
        50
    );
    assert_eq!(
        count(&updates, |u| matches!(
            u,
            Update::Key(KeyEvent::Pinned { .. })
        )),
        50
    );
    // The whole list went out with the first change only (the list was
    // sent on joining the room, so not even then)...
    assert!(count(&updates, |u| matches!(u, Update::Members { .. })) <= 1);
    // ...and goes out, complete, at the first tick after the interval.
    let mut out = Out::default();
    engine.tick(Instant::now() + Duration::from_secs(2), &mut out);
    let lists: Vec<usize> = out
        .updates
        .iter()
        .filter_map(|u| match u {
            Update::Members { members, .. } => Some(members.len()),
            _ => None,
        })
        .collect();
    assert_eq!(lists, [52]);
    // The new contacts were saved at that tick, one record each.
    let stored = engine.store.contacts().unwrap();
    assert!(stored.get(&name("flood49")).is_some());
}

#[tokio::test]
async fn a_member_who_leaves_drops_out_of_the_member_list_and_the_recipients() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let updates = feed(&mut engine, presence("bob", PresenceEvent::Left, None));
    assert!(
        matches!(
            &updates[..],
            [Update::Presence { name, change: PresenceChange::Left, .. }] if name == "bob"
        ),
        "{updates:?}"
    );
    // The list held back by the interval goes out at the next tick after
    // it, without bob.
    let mut out = Out::default();
    engine.tick(Instant::now() + Duration::from_secs(2), &mut out);
    assert_eq!(member_lists(&out.updates), [vec!["alice"]]);
    // A message to the room is sealed to nobody: bob is no recipient.
    let out = command(&mut engine, send(lobby_chat(), "after bob left"));
    assert!(sent_to(&out).is_empty(), "{:?}", out.frames);
    assert!(
        out.updates.iter().any(|u| matches!(
            u,
            Update::NotSentTo { names, .. } if names.is_empty()
        )),
        "{:?}",
        out.updates
    );
}

#[tokio::test]
async fn a_room_the_relay_says_we_left_is_forgotten_and_not_joined_again() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let updates = feed(
        &mut engine,
        RelayFrame::Left {
            room: RoomName::lobby(),
        },
    );
    assert!(
        matches!(&updates[..], [Update::Left { room }] if *room == RoomName::lobby()),
        "{updates:?}"
    );
    let out = command(&mut engine, send(lobby_chat(), "hello?"));
    assert!(sent_to(&out).is_empty());
    assert_eq!(
        errors(&out.updates),
        ["you are not in #lobby: /join lobby first"]
    );
    assert_eq!(codes(&out.updates), [ProblemCode::NotInRoom]);
    // The send it answers: one text to the lobby, not sent.
    assert!(matches!(
        &out.updates[..],
        [Update::Error(problem)] if problem.answers
            == [Answers::Sends { chat: lobby_chat(), count: 1 }]
    ));
    assert_eq!(engine.store.joined_rooms().unwrap(), Some(Vec::new()));
    // The next connection does not join it again.
    engine.on_disconnected();
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    assert!(
        !out.frames
            .iter()
            .any(|f| matches!(f, ClientFrame::Join { .. })),
        "{:?}",
        out.frames
    );
}

#[tokio::test]
async fn a_message_sealed_to_another_member_set_is_reported_once_per_session() {
    let alice = fixture("alice");
    let carol = fixture("carol");
    let mut bob = Bob::start(fixture("bob"), alice.public(), 1, 0);
    let limits = SessionLimits {
        roster_grace: Duration::ZERO,
        ..SessionLimits::default()
    };
    let (mut engine, _dir) = alice_with_bob_limits(&bob.identity, limits).await;
    feed(&mut engine, announce(&bob.announcement));
    let mismatches = |updates: &[Update]| {
        updates
            .iter()
            .filter(|u| matches!(u, Update::RosterMismatch { .. }))
            .count()
    };
    // Sealed to {alice, bob}, alice's view: no warning.
    let updates = feed(&mut engine, deliver(&bob.seal("one"), lobby()));
    assert_eq!(messages(&updates)[0].text, "one");
    assert_eq!(mismatches(&updates), 0, "{updates:?}");
    // carol joins, and the old view is past its grace.
    feed(
        &mut engine,
        presence("carol", PresenceEvent::Joined, Some(carol.public())),
    );
    engine.tick(Instant::now() + Duration::from_secs(1), &mut Out::default());
    let updates = feed(&mut engine, deliver(&bob.seal("two"), lobby()));
    assert_eq!(messages(&updates)[0].text, "two");
    assert!(
        matches!(
            updates.iter().find(|u| matches!(u, Update::RosterMismatch { .. })),
            Some(Update::RosterMismatch { room, from }) if *room == RoomName::lobby() && from == "bob"
        ),
        "{updates:?}"
    );
    // Once per session.
    let updates = feed(&mut engine, deliver(&bob.seal("three"), lobby()));
    assert_eq!(messages(&updates)[0].text, "three");
    assert_eq!(mismatches(&updates), 0, "{updates:?}");
}

/// Each member of the member lists among `updates`, with whether it is
/// online.
fn presence_lists(updates: &[Update]) -> Vec<Vec<(&str, bool)>> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Members { members, .. } => Some(
                members
                    .iter()
                    .map(|m| (m.name.as_str(), m.online))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The names the room `Send` in `out` has key slots for.
fn slots_to<'a>(out: &'a Out, room: &RoomName) -> Vec<&'a str> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, slots, .. }
                if route.to == Destination::Room(room.clone()) =>
            {
                Some(slots.iter().map(|s| s.to.as_str()))
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// The frames in `out` that join or leave a room.
fn joins_and_leaves(out: &Out) -> Vec<&ClientFrame> {
    out.frames
        .iter()
        .filter(|f| matches!(f, ClientFrame::Join { .. } | ClientFrame::Leave { .. }))
        .collect()
}

/// The relay's `Joined` for `room` with alice (online) and `others`.
fn joined(room: &str, others: &[(&str, &sotto_crypto::PublicIdentity, bool)]) -> RelayFrame {
    let alice = fixture("alice");
    let mut members = vec![sotto_proto::Member {
        name: name("alice"),
        identity: alice.public().to_bytes().into(),
        online: true,
        prekeys: Vec::new(),
    }];
    members.extend(others.iter().map(|(n, id, online)| sotto_proto::Member {
        name: name(n),
        identity: id.to_bytes().into(),
        online: *online,
        prekeys: Vec::new(),
    }));
    RelayFrame::Joined {
        room: room.parse().unwrap(),
        members,
    }
}

#[tokio::test]
async fn a_member_who_goes_offline_stays_a_member_marked_offline_and_keeps_its_slot() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let lobby = RoomName::lobby();
    let digest = engine.current_digest(&lobby);
    let updates = feed(
        &mut engine,
        presence("bob", PresenceEvent::Disconnected, None),
    );
    assert!(
        matches!(
            &updates[..],
            [Update::Presence { name, change: PresenceChange::Disconnected, .. }] if name == "bob"
        ),
        "{updates:?}"
    );
    let mut out = Out::default();
    engine.tick(Instant::now() + Duration::from_secs(2), &mut out);
    assert_eq!(
        presence_lists(&out.updates),
        [vec![("alice", true), ("bob", false)]]
    );
    // Still a member: the member set and its digest are unchanged, and a
    // message to the room is encrypted to bob, for when he is back.
    assert_eq!(engine.current_digest(&lobby), digest);
    let out = command(&mut engine, send(lobby_chat(), "while bob is away"));
    assert_eq!(slots_to(&out, &lobby), ["bob"]);
    assert!(
        !out.updates
            .iter()
            .any(|u| matches!(u, Update::NotSentTo { .. })),
        "{:?}",
        out.updates
    );
    // Back online.
    let updates = feed(&mut engine, presence("bob", PresenceEvent::Connected, None));
    assert!(
        matches!(
            &updates[..],
            [Update::Presence { name, change: PresenceChange::Connected, .. }] if name == "bob"
        ),
        "{updates:?}"
    );
    let mut out = Out::default();
    engine.tick(Instant::now() + Duration::from_secs(4), &mut out);
    assert_eq!(
        presence_lists(&out.updates),
        [vec![("alice", true), ("bob", true)]]
    );
    assert_eq!(engine.current_digest(&lobby), digest);
}

#[tokio::test]
async fn offline_members_the_relay_lists_get_slots_and_count_in_the_roster_digest() {
    let bob = fixture("bob");
    let carol = fixture("carol");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let dev: RoomName = "dev".parse().unwrap();
    let updates = feed(
        &mut engine,
        joined(
            "dev",
            &[
                ("bob", bob.public(), true),
                ("carol", carol.public(), false),
            ],
        ),
    );
    assert_eq!(
        presence_lists(&updates),
        [vec![("alice", true), ("bob", true), ("carol", false)]]
    );
    let everyone = roster_digest([
        bob.fingerprint(),
        carol.fingerprint(),
        fixture("alice").fingerprint(),
    ]);
    assert_eq!(engine.current_digest(&dev), Some(everyone));
    let out = command(&mut engine, send(Chat::Room(dev.clone()), "to all"));
    let mut slots = slots_to(&out, &dev);
    slots.sort_unstable();
    assert_eq!(slots, ["bob", "carol"]);
    // Leaving (and only leaving) takes carol out of what follows (P7).
    feed(
        &mut engine,
        RelayFrame::Presence {
            room: dev.clone(),
            user: name("carol"),
            event: PresenceEvent::Left,
            identity: None,
            prekeys: Vec::new(),
        },
    );
    let out = command(
        &mut engine,
        send(Chat::Room(dev.clone()), "after carol left"),
    );
    assert_eq!(slots_to(&out, &dev), ["bob"]);
}

#[tokio::test]
async fn a_room_left_while_disconnected_is_left_at_the_relay_on_the_next_connection() {
    let bob = fixture("bob");
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    {
        let (mut engine, _) = alice_in_lobby_with(&account, &bob, SessionLimits::default());
        engine.on_disconnected();
        let out = command(&mut engine, Command::Leave(RoomName::lobby()));
        assert!(
            matches!(&out.updates[..], [Update::Left { room }] if *room == RoomName::lobby()),
            "{:?}",
            out.updates
        );
        assert!(out.frames.is_empty());
    }
    // Kept on disk: the next run leaves it.
    assert_eq!(account.store().rooms_to_leave().unwrap(), ["lobby"]);
    assert_eq!(account.store().joined_rooms().unwrap(), Some(Vec::new()));
    let (mut engine, _) = new_engine(&account, SessionLimits::default());
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    assert!(
        matches!(
            &joins_and_leaves(&out)[..],
            [ClientFrame::Leave { room }] if *room == RoomName::lobby()
        ),
        "{:?}",
        out.frames
    );
    // The relay reports the membership first: not joined here, and the
    // `Leave` already on its way is not sent twice.
    let out = feed_out(&mut engine, joined("lobby", &[("bob", bob.public(), true)]));
    assert!(out.updates.is_empty(), "{:?}", out.updates);
    assert!(out.frames.is_empty(), "{:?}", out.frames);
    let out = command(&mut engine, send(lobby_chat(), "hello?"));
    assert_eq!(
        errors(&out.updates),
        ["you are not in #lobby: /join lobby first"]
    );
    // The relay's `Left` ends it; the user was told when they left.
    let updates = feed(
        &mut engine,
        RelayFrame::Left {
            room: RoomName::lobby(),
        },
    );
    assert!(updates.is_empty(), "{updates:?}");
    assert!(account.store().rooms_to_leave().unwrap().is_empty());
    engine.on_disconnected();
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    assert!(joins_and_leaves(&out).is_empty(), "{:?}", out.frames);
}

#[tokio::test]
async fn a_joined_for_a_room_to_leave_is_answered_with_leave_and_a_relay_that_forgot_it_is_quiet() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    engine.on_disconnected();
    command(&mut engine, Command::Leave(RoomName::lobby()));
    // Registered, but the relay's report comes on a connection whose
    // `Leave` was not sent (as after the set changed since registering).
    engine.connected = true;
    let out = feed_out(&mut engine, joined("lobby", &[("bob", bob.public(), true)]));
    assert!(
        matches!(
            &joins_and_leaves(&out)[..],
            [ClientFrame::Leave { room }] if *room == RoomName::lobby()
        ),
        "{:?}",
        out.frames
    );
    assert!(out.updates.is_empty(), "{:?}", out.updates);
    // A relay whose memberships end with the connection answers that the
    // user is not in the room: nothing to tell the user, and done.
    let updates = feed(
        &mut engine,
        RelayFrame::Error {
            id: None,
            code: ErrorCode::NotMember,
            message: "not in lobby".to_owned(),
        },
    );
    assert!(updates.is_empty(), "{updates:?}");
    assert!(engine.store.rooms_to_leave().unwrap().is_empty());
    // Any other refusal is still reported.
    let updates = feed(
        &mut engine,
        RelayFrame::Error {
            id: None,
            code: ErrorCode::NotMember,
            message: "not in lobby".to_owned(),
        },
    );
    assert_eq!(errors(&updates), ["relay: not in lobby (NotMember)"]);
    assert_eq!(codes(&updates), [ProblemCode::Relay(ErrorCode::NotMember)]);
}

#[tokio::test]
async fn a_room_joined_from_another_device_becomes_one_of_the_rooms_wanted() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let updates = feed(&mut engine, joined("dev", &[("bob", bob.public(), false)]));
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::Joined { room } if room.as_str() == "dev")),
        "{updates:?}"
    );
    let mut wanted = engine.store.joined_rooms().unwrap().unwrap();
    wanted.sort_unstable();
    assert_eq!(wanted, ["dev", "lobby"]);
    engine.on_disconnected();
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    let joins: Vec<&str> = joins_and_leaves(&out)
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Join { room } => Some(room.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(joins, ["dev", "lobby"]);
}

#[tokio::test]
async fn the_relays_report_and_the_answer_to_join_are_one_joined_for_the_user() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    // The answer to the `Join` sent on registering, after the report.
    let updates = feed(
        &mut engine,
        joined("lobby", &[("bob", bob.public(), false)]),
    );
    assert!(
        !updates.iter().any(|u| matches!(u, Update::Joined { .. })),
        "{updates:?}"
    );
    // The roster is the newer one.
    let mut out = Out::default();
    engine.tick(Instant::now() + Duration::from_secs(2), &mut out);
    let lists: Vec<_> = presence_lists(&updates)
        .into_iter()
        .chain(presence_lists(&out.updates))
        .collect();
    assert_eq!(lists.last(), Some(&vec![("alice", true), ("bob", false)]));
    // A new connection: joined once again.
    engine.on_disconnected();
    engine.on_registered(name("alice"), &mut Out::default());
    let updates = feed(&mut engine, joined("lobby", &[("bob", bob.public(), true)]));
    assert_eq!(
        updates
            .iter()
            .filter(|u| matches!(u, Update::Joined { .. }))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_room_left_while_disconnected_and_joined_again_once_back_ends_joined() {
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    engine.on_disconnected();
    command(&mut engine, Command::Leave(RoomName::lobby()));
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    // Joined again before the relay answered the `Leave`.
    let out = command(&mut engine, Command::Join(RoomName::lobby()));
    assert!(
        matches!(
            &joins_and_leaves(&out)[..],
            [ClientFrame::Join { room }] if *room == RoomName::lobby()
        ),
        "{:?}",
        out.frames
    );
    assert!(engine.store.rooms_to_leave().unwrap().is_empty());
    // The relay answers both in order: the `Left` says nothing (the user
    // was told when leaving), the `Joined` makes it the user's room again.
    let updates = feed(
        &mut engine,
        RelayFrame::Left {
            room: RoomName::lobby(),
        },
    );
    assert!(updates.is_empty(), "{updates:?}");
    let updates = feed(&mut engine, joined("lobby", &[("bob", bob.public(), true)]));
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::Joined { room } if *room == RoomName::lobby())),
        "{updates:?}"
    );
    assert_eq!(
        engine.store.joined_rooms().unwrap(),
        Some(vec!["lobby".to_owned()])
    );
}

#[tokio::test]
async fn a_refused_command_says_which_command_it_answers() {
    use crate::session::Problem;
    let bob = fixture("bob");
    let (mut engine, _dir) = alice_with_bob(&bob).await;
    let answered = |out: &Out| -> Vec<(ProblemCode, Vec<Answers>)> {
        out.updates
            .iter()
            .filter_map(|u| match u {
                Update::Error(Problem { code, answers, .. }) => Some((*code, answers.clone())),
                _ => None,
            })
            .collect()
    };
    let ops: RoomName = "ops".parse().unwrap();
    let out = command(&mut engine, Command::Leave(ops.clone()));
    assert_eq!(
        answered(&out),
        [(ProblemCode::NotInRoom, vec![Answers::Leave { room: ops }])]
    );
    let out = command(&mut engine, Command::SafetyNumber(name("alice")));
    assert_eq!(
        answered(&out),
        [(
            ProblemCode::Yourself,
            vec![Answers::SafetyNumber {
                name: name("alice")
            }]
        )]
    );
    let out = command(&mut engine, Command::AcceptKey(name("bob")));
    assert_eq!(
        answered(&out),
        [(
            ProblemCode::BadCommand,
            vec![Answers::Trust { name: name("bob") }]
        )]
    );
    engine.on_disconnected();
    let out = command(&mut engine, Command::ListUsers);
    assert_eq!(
        answered(&out),
        [(ProblemCode::NotConnected, vec![Answers::Users])]
    );
    let out = command(&mut engine, Command::SafetyNumber(name("carol")));
    assert_eq!(
        answered(&out),
        [(
            ProblemCode::NoKeyYet,
            vec![Answers::SafetyNumber {
                name: name("carol")
            }]
        )]
    );
}
