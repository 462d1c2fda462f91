use sotto_proto::{Destination, PresenceEvent, RelayFrame, RoomName, Slot, encode_frame};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::writer::{Backlog, Outbound};

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
        },
    )
    .unwrap();
    let certs = CertStore::load(crate::tls::CertSource::Generated {
        dir: dir.to_path_buf(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    Shared::new(
        Config::default(),
        Arc::new(store),
        certs,
        Arc::new(Metrics::default()),
    )
}

fn peer() -> (Peer, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(8);
    let kill = CancellationToken::new();
    let backlog = Arc::new(Backlog::new(1 << 20, Arc::new(Metrics::default())));
    (Peer { tx, kill, backlog }, rx)
}

/// A cached recipient is used only while it is still the registered
/// one: a new login or a logout sends the next message where a lookup
/// would.
#[test]
fn the_peer_cache_follows_logins_and_logouts() {
    let dir = tempfile::tempdir().unwrap();
    let shared = shared(dir.path());
    let mut cache = PeerCache::default();
    let frame = |text: &'static str| Bytes::from_static(text.as_bytes());

    assert!(matches!(
        shared.route_direct(&mut cache, &user("bob"), frame("nobody")),
        Direct::Offline
    ));
    let (first, mut first_rx) = peer();
    shared
        .register(1, user("bob"), Bytes::new(), [1; 32], first)
        .unwrap();
    for text in ["one", "two"] {
        assert!(matches!(
            shared.route_direct(&mut cache, &user("Bob"), frame(text)),
            Direct::Delivered
        ));
        assert_eq!(first_rx.try_recv().unwrap().to_bytes(), frame(text));
    }

    let (second, mut second_rx) = peer();
    shared
        .register(2, user("bob"), Bytes::new(), [1; 32], second)
        .unwrap();
    assert!(matches!(
        shared.route_direct(&mut cache, &user("bob"), frame("three")),
        Direct::Delivered
    ));
    assert_eq!(second_rx.try_recv().unwrap().to_bytes(), frame("three"));
    assert!(
        first_rx.try_recv().is_err(),
        "the replaced login gets nothing"
    );

    // Once bob is gone and the cache forgotten, nothing holds his
    // queue open: his connection can close.
    shared.unregister(2, &user("bob"));
    assert!(matches!(second_rx.try_recv(), Err(TryRecvError::Empty)));
    cache.forget();
    assert!(matches!(
        second_rx.try_recv(),
        Err(TryRecvError::Disconnected)
    ));
    assert!(matches!(
        shared.route_direct(&mut cache, &user("bob"), frame("four")),
        Direct::Offline
    ));
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
    assert!(shared.join(&user("BOB"), &room).unwrap().len() == 1);
    let members = shared.join(&user("ALICE"), &room).unwrap();
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alice", "Bob"]);
    let joined = encode_frame(&RelayFrame::Presence {
        room: room.clone(),
        user: user("alice"),
        event: PresenceEvent::Joined,
        identity: Some(Bytes::from_static(b"a")),
    })
    .unwrap();
    assert_eq!(bob_rx.try_recv().unwrap().to_bytes(), joined);

    let body = Bytes::from_static(b"hi");
    let slot = Slot {
        to: user("bOB"),
        data: Bytes::from_static(b"slot"),
    };
    let sender = Registered::new(user("aLiCe"));
    assert_eq!(
        shared
            .route_room(&sender, &room, &body, std::slice::from_ref(&slot))
            .unwrap(),
        1
    );
    let delivered = encode_frame(&RelayFrame::Deliver {
        delivery: 0,
        from: user("aLiCe"),
        to: Destination::Room(room.clone()),
        body,
        slot: Some(slot.data),
    })
    .unwrap();
    assert_eq!(bob_rx.try_recv().unwrap().to_bytes(), delivered);
    assert!(
        matches!(alice_rx.try_recv(), Err(TryRecvError::Empty)),
        "the sender gets no copy"
    );

    assert!(shared.peer(&user("bOb")).is_some());
    assert!(
        shared.may_register(&[3; 32], &user("BOB")).is_ok(),
        "another key's login would replace no connection of its own"
    );
    shared.unregister(1, &user("bob"));
    assert!(shared.peer(&user("Bob")).is_none());
    let names: Vec<String> = shared
        .users()
        .into_iter()
        .map(|u| u.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["alice"]);
}
