use sotto_proto::{PresenceEvent, RelayFrame, RoomName, Slot, encode_frame};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::store::{Recipient, Store};
use crate::writer::{Backlog, Outbound};
use sotto_proto::ErrorCode;

fn user(name: &str) -> UserName {
    UserName::try_from(name).unwrap()
}

fn shared(dir: &std::path::Path) -> Shared {
    let store = Store::open(
        dir,
        crate::store::QueueLimits {
            max_messages: 10,
            max_bytes: 1 << 20,
            max_age: std::time::Duration::from_secs(60),
            room_max_messages: 10,
            room_max_bytes: 1 << 20,
        },
    )
    .unwrap();
    let certs = CertStore::load(crate::tls::CertSource::Generated {
        dir: dir.to_path_buf(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    // No committer runs: these tests are of the registry alone.
    let (commit, _) = Committer::new();
    Shared::new(
        Config::default(),
        Backend::Local(Arc::new(store)),
        certs,
        Arc::new(Metrics::default()),
        commit,
        None,
        Registry::default(),
    )
}

fn peer() -> (Peer, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(8);
    let kill = CancellationToken::new();
    let backlog = Arc::new(Backlog::new(1 << 20, Arc::new(Metrics::default())));
    (Peer { tx, kill, backlog }, rx)
}

/// Membership belongs to the user, not its connection: a member that
/// goes offline stays one (the others hear it went and came back, and
/// messages are still for it), until it leaves.
#[test]
fn a_member_stays_a_member_while_offline_until_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let room = RoomName::try_from("lobby").unwrap();
    let (alice, mut alice_rx) = peer();
    shared
        .register(1, user("alice"), Bytes::from_static(b"a"), [1; 32], alice)
        .unwrap();
    let (bob, _bob_rx) = peer();
    shared
        .register(2, user("bob"), Bytes::from_static(b"b"), [2; 32], bob)
        .unwrap();
    shared.join(&user("alice"), &room).unwrap();
    shared.join(&user("bob"), &room).unwrap();
    let presence = |event| {
        encode_frame(&RelayFrame::Presence {
            room: room.clone(),
            user: user("bob"),
            event,
            identity: None,
            prekeys: Vec::new(),
        })
        .unwrap()
    };
    alice_rx.try_recv().unwrap(); // bob joined

    assert_eq!(shared.unregister(2, &user("bob")), Some(vec![room.clone()]));
    assert_eq!(
        alice_rx.try_recv().unwrap().to_bytes(),
        presence(PresenceEvent::Disconnected)
    );
    let sender = Registered::new(user("alice"));
    let body = Bytes::from_static(b"hi");
    let recipients = shared.room_recipients(&sender, &room, &body, &[]).unwrap();
    assert_eq!(
        recipients,
        [Recipient {
            name: user("bob"),
            slot: None,
            id: 0,
        }]
    );
    assert_eq!(shared.rooms()[0].members, 2, "an offline member counts");
    let (members, fresh) = shared.join(&user("alice"), &room).unwrap();
    assert!(!fresh);
    let online: Vec<(&str, bool)> = members
        .iter()
        .map(|m| (m.name.as_str(), m.online))
        .collect();
    assert_eq!(online, [("alice", true), ("bob", false)]);

    let (bob, _bob_rx) = peer();
    let welcome = shared
        .register(3, user("bob"), Bytes::from_static(b"b"), [2; 32], bob)
        .unwrap();
    assert_eq!(welcome.rooms.len(), 1);
    assert_eq!(welcome.rooms[0].0, room);
    assert!(welcome.rooms[0].1.iter().all(|m| m.online));
    assert_eq!(
        alice_rx.try_recv().unwrap().to_bytes(),
        presence(PresenceEvent::Connected)
    );

    shared.leave(&user("bob"), &room).unwrap();
    assert_eq!(
        alice_rx.try_recv().unwrap().to_bytes(),
        presence(PresenceEvent::Left)
    );
    assert!(
        shared
            .room_recipients(&sender, &room, &body, &[])
            .unwrap()
            .is_empty(),
        "a member who left gets nothing that follows"
    );
    assert_eq!(shared.leave(&user("bob"), &room), Err(ErrorCode::NotMember));
}

/// A member away longer than the absence limit leaves its rooms (the
/// members online hear `Left`); one online, or away less long, stays.
#[test]
fn members_away_too_long_leave_their_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let room = RoomName::try_from("lobby").unwrap();
    let (alice, mut alice_rx) = peer();
    shared
        .register(1, user("alice"), Bytes::new(), [1; 32], alice)
        .unwrap();
    let (bob, _bob_rx) = peer();
    shared
        .register(2, user("bob"), Bytes::new(), [2; 32], bob)
        .unwrap();
    shared.join(&user("alice"), &room).unwrap();
    shared.join(&user("bob"), &room).unwrap();
    shared.unregister(2, &user("bob")).unwrap();
    while alice_rx.try_recv().is_ok() {}

    let day = std::time::Duration::from_secs(86_400);
    let now = crate::store::now_secs();
    assert!(shared.expire_absent(now + 86_000, day).is_empty());
    assert!(
        shared
            .expire_absent(now + 10 * 86_400, std::time::Duration::ZERO)
            .is_empty()
    );
    assert_eq!(
        shared.expire_absent(now + 2 * 86_400, day),
        [(room.clone(), user("bob").key())],
        "bob, offline; never alice, online"
    );
    assert_eq!(
        alice_rx.try_recv().unwrap().to_bytes(),
        encode_frame(&RelayFrame::Presence {
            room: room.clone(),
            user: user("bob"),
            event: PresenceEvent::Left,
            identity: None,
            prekeys: Vec::new(),
        })
        .unwrap()
    );
    assert_eq!(shared.rooms()[0].members, 1);
}

/// The registry knows a user by its name's key: every spelling of the
/// name finds the one connection, in rooms, slots and lookups, and
/// everyone sees the name as registered.
#[test]
fn every_spelling_of_a_name_is_one_user() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let room = RoomName::try_from("lobby").unwrap();
    let (bob, mut bob_rx) = peer();
    shared
        .register(1, user("Bob"), Bytes::new(), [1; 32], bob)
        .unwrap();
    let (alice, mut alice_rx) = peer();
    shared
        .register(2, user("alice"), Bytes::from_static(b"a"), [2; 32], alice)
        .unwrap();
    assert!(shared.join(&user("BOB"), &room).unwrap().0.len() == 1);
    let (members, fresh) = shared.join(&user("ALICE"), &room).unwrap();
    assert!(fresh);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alice", "Bob"]);
    let joined = encode_frame(&RelayFrame::Presence {
        room: room.clone(),
        user: user("alice"),
        event: PresenceEvent::Joined,
        identity: Some(Bytes::from_static(b"a")),
        prekeys: Vec::new(),
    })
    .unwrap();
    assert_eq!(bob_rx.try_recv().unwrap().to_bytes(), joined);

    let body = Bytes::from_static(b"hi");
    let slot = Slot {
        to: user("bOB"),
        data: Bytes::from_static(b"slot"),
    };
    let sender = Registered::new(user("aLiCe"));
    let recipients = shared
        .room_recipients(&sender, &room, &body, std::slice::from_ref(&slot))
        .unwrap();
    assert_eq!(
        recipients,
        [Recipient {
            name: user("Bob"),
            slot: Some(slot.data),
            id: 0,
        }],
        "the other member, with its own slot; the sender gets no copy"
    );
    assert!(matches!(alice_rx.try_recv(), Err(TryRecvError::Empty)));

    assert!(
        shared.may_register(&[3; 32], &user("BOB")).is_ok(),
        "another key's login would replace no connection of its own"
    );
    assert_eq!(shared.unregister(1, &user("bob")), Some(vec![room.clone()]));
    let names: Vec<String> = shared
        .users()
        .into_iter()
        .map(|u| u.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alice"]);
}

/// A delivery offered to a door whose pump has nothing to send goes
/// straight onto the connection, and the door says so, so that the pump
/// counts it as sent before it ever reads the database; while the pump is
/// busy, or the door falls back, deliveries wait in the door, in order; a
/// full door empties and falls back to the database for all of them.
#[test]
fn a_door_queues_on_the_connection_only_when_its_pump_is_idle() {
    let metrics = Metrics::default();
    let (bob, mut bob_rx) = peer();
    let delivery = Arc::new(NewDelivery {
        queued_at: 0,
        from: user("alice"),
        to: sotto_proto::Destination::User(user("bob")),
        body: Bytes::from_static(b"hi"),
        recipients: vec![Recipient {
            name: user("bob"),
            slot: None,
            id: 0,
        }],
        body_id: 0,
    });
    let live = |id| Live {
        id,
        delivery: Arc::clone(&delivery),
        recipient: 0,
    };
    let door = PumpDoor::new(0);
    // A new door reads the database first: everything waits in it.
    assert!(matches!(
        door.offer(live(1), 2, &bob, &metrics),
        Offered::Handed { first: true }
    ));
    assert!(door.go_live(0));
    let mut taken = VecDeque::new();
    door.take_live(&mut taken);
    assert_eq!(taken.iter().map(|l| l.id).collect::<Vec<_>>(), [1]);
    // The pump is busy with it: the next waits too.
    assert!(matches!(
        door.offer(live(2), 2, &bob, &metrics),
        Offered::Handed { first: true }
    ));
    taken.clear();
    door.take_live(&mut taken);
    taken.clear();
    // It took everything and then found nothing: idle, so the next goes
    // on the connection itself, and the door remembers it.
    door.take_live(&mut taken);
    assert!(taken.is_empty());
    assert!(matches!(
        door.offer(live(3), 2, &bob, &metrics),
        Offered::Sent
    ));
    let opened = door.open();
    assert_eq!((opened.direct, opened.falls_back), (3, false));
    assert!(matches!(
        bob_rx.try_recv(),
        Ok(frame) if !frame.is_empty()
    ));
    assert_eq!(metrics.deliveries.load(Ordering::Relaxed), 1);
    // A full door empties and falls back for everything up to the last.
    let (slow, _slow_rx) = peer();
    let full = PumpDoor::new(0);
    assert!(full.go_live(0));
    full.take_live(&mut taken);
    // (Busy from here on: nothing goes on the connection.)
    full.state().busy = true;
    let mut refused = None;
    for id in 10..10 + 2 * LIVE_FRAMES as u64 {
        if matches!(full.offer(live(id), 2, &slow, &metrics), Offered::Refused) {
            refused = Some(id);
            break;
        }
    }
    let refused = refused.expect("the door fills");
    assert_eq!(refused, 10 + LIVE_FRAMES as u64);
    assert!(full.open().falls_back);
    assert!(
        !full.go_live(refused - 1),
        "not before the last is resolved"
    );
    full.take_live(&mut taken);
    assert!(taken.is_empty(), "emptied");
    assert!(full.go_live(refused));
}
