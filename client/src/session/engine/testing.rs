//! Fixtures shared by the engine's unit tests.

// Tests may abort (clippy.toml lets them unwrap and panic; clippy has no
// such setting for `unreachable!`).
#![allow(clippy::unreachable)]

use std::path::Path;
use std::sync::Arc;

use sotto_crypto::{
    Announcement, Conversation, Identity, NoPersistence, PeerBody, PublicIdentity, SendingSession,
    SequenceCounter, SessionId,
};
use sotto_proto::Member as RosterMember;
pub(super) use sotto_proto::{ClientFrame, Destination, PresenceEvent, RoomName, UserName};

pub(super) use super::{Engine, Out, SessionLimits, now_ms, now_secs};
use crate::account::Account;
pub(super) use crate::contacts::KeyEvent;
use crate::profile::Profile;
pub(super) use crate::session::content::Content;
pub(super) use crate::session::{Chat, Command, Message, Update};
pub(super) use sotto_crypto::SealedMessage;
pub(super) use sotto_proto::RelayFrame;

pub(super) fn fixture(name: &str) -> Arc<Identity> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../testdata/identities/{name}.sotto-id"));
    Arc::new(Identity::load(&path, b"sotto test vectors").unwrap())
}

pub(super) fn name(name: &str) -> UserName {
    name.parse().unwrap()
}

/// Alice's account in `dir`.
pub(super) async fn alice_account(dir: &Path) -> Account {
    Account::open(
        Profile::open(dir).unwrap(),
        fixture("alice"),
        Some(name("alice")),
    )
    .await
    .unwrap()
}

/// Alice's engine, registered, in the lobby with bob.
pub(super) async fn alice_with_bob(bob: &Identity) -> (Engine, tempfile::TempDir) {
    alice_with_bob_limits(bob, SessionLimits::default()).await
}

pub(super) async fn alice_with_bob_limits(
    bob: &Identity,
    limits: SessionLimits,
) -> (Engine, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let account = alice_account(dir.path()).await;
    let (engine, _) = alice_in_lobby_with(&account, bob, limits);
    (engine, dir)
}

pub(super) fn alice_in_lobby_with(
    account: &Account,
    bob: &Identity,
    limits: SessionLimits,
) -> (Engine, Vec<Update>) {
    let (mut engine, history) = Engine::new(account, &[RoomName::lobby()], limits).unwrap();
    back_in_lobby(&mut engine, bob);
    (engine, history)
}

/// Alice's engine registered and told it is in the lobby with bob (as
/// after connecting); what it sends and shows for that.
pub(super) fn back_in_lobby(engine: &mut Engine, bob: &Identity) -> Out {
    let alice = fixture("alice");
    let mut out = Out::default();
    engine.on_registered(name("alice"), &mut out);
    engine.handle_frame(
        RelayFrame::Joined {
            room: RoomName::lobby(),
            members: vec![
                RosterMember {
                    name: name("alice"),
                    identity: alice.public().to_bytes().into(),
                    online: true,
                },
                RosterMember {
                    name: name("bob"),
                    identity: bob.public().to_bytes().into(),
                    online: true,
                },
            ],
        },
        &mut out,
    );
    out
}

/// Bob's side: a session to alice in the lobby and its counter.
pub(super) struct Bob {
    pub(super) identity: Arc<Identity>,
    pub(super) session: SendingSession,
    pub(super) counter: SequenceCounter<NoPersistence>,
    pub(super) announcement: Announcement,
}

impl Bob {
    pub(super) fn start(
        identity: Arc<Identity>,
        alice: &PublicIdentity,
        epoch: u32,
        first: u64,
    ) -> Bob {
        Bob::start_in(
            Conversation::room("lobby"),
            identity,
            alice,
            epoch,
            first,
            now_secs(),
        )
    }

    pub(super) fn start_in(
        conversation: Conversation,
        identity: Arc<Identity>,
        alice: &PublicIdentity,
        epoch: u32,
        first: u64,
        created_at: u64,
    ) -> Bob {
        let (session, mut announcements) = SendingSession::start(
            &mut rand::rng(),
            &identity,
            conversation,
            epoch,
            first,
            created_at,
            &[alice],
        )
        .unwrap();
        Bob {
            identity,
            session,
            counter: SequenceCounter::resume(first, NoPersistence),
            announcement: announcements.remove(0),
        }
    }

    /// A text sealed as a client seals it (its content encoded, 13.8).
    pub(super) fn seal(&mut self, text: &str) -> SealedMessage {
        self.seal_content(&Content::Text(text.to_owned()))
    }

    pub(super) fn seal_content(&mut self, content: &Content) -> SealedMessage {
        self.session
            .seal(
                &mut rand::rng(),
                &mut self.counter,
                now_ms(),
                &content.encode(),
            )
            .unwrap()
    }
}

pub(super) fn announce(announcement: &Announcement) -> RelayFrame {
    RelayFrame::Deliver {
        delivery: 0,
        from: name("bob"),
        to: Destination::User(name("alice")),
        body: PeerBody::Announcement(announcement.clone()).encode().into(),
        slot: None,
    }
}

pub(super) fn deliver(sealed: &SealedMessage, to: Destination) -> RelayFrame {
    RelayFrame::Deliver {
        delivery: 0,
        from: name("bob"),
        to,
        body: sealed.body.clone().into(),
        slot: Some(sealed.slots[0].to_bytes().to_vec().into()),
    }
}

pub(super) fn lobby() -> Destination {
    Destination::Room(RoomName::lobby())
}

pub(super) fn feed(engine: &mut Engine, frame: RelayFrame) -> Vec<Update> {
    let mut out = Out::default();
    engine.handle_frame(frame, &mut out);
    out.updates
}

pub(super) fn messages(updates: &[Update]) -> Vec<&Message> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// The texts of every stored message handed over at start, in order.
pub(super) fn history_texts(updates: &[Update]) -> Vec<&str> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::History { messages, .. } => Some(messages),
            _ => None,
        })
        .flatten()
        .map(|m| m.text.as_str())
        .collect()
}

pub(super) fn feed_out(engine: &mut Engine, frame: RelayFrame) -> Out {
    let mut out = Out::default();
    engine.handle_frame(frame, &mut out);
    out
}

pub(super) fn acked(out: &Out, delivery: u64) -> bool {
    out.frames
        .iter()
        .any(|f| matches!(f, ClientFrame::Ack { delivery: d } if *d == delivery))
}

/// The texts of the errors in `updates`.
pub(super) fn errors(updates: &[Update]) -> Vec<&str> {
    problems(updates).map(|p| p.message.as_str()).collect()
}

/// The codes of the errors in `updates`.
pub(super) fn codes(updates: &[Update]) -> Vec<crate::session::ProblemCode> {
    problems(updates).map(|p| p.code).collect()
}

fn problems(updates: &[Update]) -> impl Iterator<Item = &crate::session::Problem> {
    updates.iter().filter_map(|u| match u {
        Update::Error(problem) => Some(problem),
        _ => None,
    })
}

/// `announcement` from bob as the stored delivery number `delivery`.
pub(super) fn announce_stored(announcement: &Announcement, delivery: u64) -> RelayFrame {
    stored(announce(announcement), delivery)
}

/// `count` announcements claiming bob, each a new session, none signed.
pub(super) fn forgeries(genuine: &Announcement, count: u8) -> Vec<Announcement> {
    (0..count)
        .map(|n| {
            let mut forged = genuine.clone();
            forged.context.session_id = SessionId([n.wrapping_add(100); 16]);
            forged.context.epoch += u32::from(n) + 1;
            forged.signature[0] ^= 1;
            forged
        })
        .collect()
}

/// `frame` (a `Deliver`) as the stored delivery number `delivery`.
pub(super) fn stored(frame: RelayFrame, delivery: u64) -> RelayFrame {
    let RelayFrame::Deliver {
        from,
        to,
        body,
        slot,
        ..
    } = frame
    else {
        unreachable!()
    };
    RelayFrame::Deliver {
        delivery,
        from,
        to,
        body,
        slot,
    }
}

/// `user` joined (with `identity`) or left the lobby.
pub(super) fn presence(
    user: &str,
    event: PresenceEvent,
    identity: Option<&PublicIdentity>,
) -> RelayFrame {
    RelayFrame::Presence {
        room: RoomName::lobby(),
        user: name(user),
        event,
        identity: identity.map(|id| id.to_bytes().into()),
    }
}

/// What the engine does for `command`.
pub(super) fn command(engine: &mut Engine, command: Command) -> Out {
    let mut out = Out::default();
    engine.handle_command(command, &mut out);
    out
}

/// A `Send` of `text` to `chat`.
pub(super) fn send(chat: Chat, text: &str) -> Command {
    Command::Send {
        chat,
        text: text.into(),
    }
}

/// The lobby's chat.
pub(super) fn lobby_chat() -> Chat {
    Chat::Room(RoomName::lobby())
}

/// Where the `Send` frames in `out` go, in order.
pub(super) fn sent_to(out: &Out) -> Vec<&Destination> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, .. } => Some(&route.to),
            _ => None,
        })
        .collect()
}

/// The route ids of the `Send` frames in `out`, in order.
pub(super) fn send_ids(out: &Out) -> Vec<u64> {
    out.frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Send { route, .. } => Some(route.id),
            _ => None,
        })
        .collect()
}

/// The names in each member list among `updates`.
pub(super) fn member_lists(updates: &[Update]) -> Vec<Vec<&str>> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Members { members, .. } => {
                Some(members.iter().map(|m| m.name.as_str()).collect())
            }
            _ => None,
        })
        .collect()
}
