//! Fixtures shared by the engine's unit tests.

// Tests may abort (clippy.toml lets them unwrap and panic; clippy has no
// such setting for `unreachable!`).
#![allow(clippy::unreachable)]

use std::path::Path;
use std::sync::Arc;

use sotto_crypto::{
    Announcement, Conversation, Identity, NoPersistence, PeerBody, PrekeyKey, PrekeySecret,
    PublicIdentity, SendingSession, SequenceCounter, SessionId, SignedPrekey, VerifiedPrekey,
    WrapTo, sign_announcements,
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

/// The test prekey of `owner` (a key of the pre-generated pool in
/// testdata/prekey-keys.txt, chosen by its fingerprint, made at the start
/// of the test run): signed, verified and its secret.
pub(super) fn test_prekey(owner: &Identity) -> (VerifiedPrekey, PrekeySecret) {
    let (_, verified, secret) = test_signed_prekey(owner);
    (verified, secret)
}

/// [`test_prekey`] with the signed prekey as published.
pub(super) fn test_signed_prekey(owner: &Identity) -> (SignedPrekey, VerifiedPrekey, PrekeySecret) {
    static MADE_AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let made_at = *MADE_AT.get_or_init(now_secs);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/prekey-keys.txt"),
    )
    .unwrap();
    let keys: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let line = keys[usize::from(owner.fingerprint().0[0]) % keys.len()];
    let der: Vec<u8> = (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect();
    let (signed, secret) = owner
        .make_prekey_with(
            &mut rand::rng(),
            PrekeyKey::from_pkcs8_der(&der).unwrap(),
            made_at,
        )
        .unwrap();
    let verified = SignedPrekey::verify(signed.as_bytes(), owner.public(), now_secs()).unwrap();
    (signed, verified, secret)
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

/// `Engine::new` in the lobby, with its own test prekey and those of every
/// test identity, as if the relay had served them (the prekey lifecycle
/// itself is tested on its own).
pub(super) fn new_engine(account: &Account, limits: SessionLimits) -> (Engine, Vec<Update>) {
    let (mut engine, history) = Engine::new(account, &[RoomName::lobby()], limits).unwrap();
    for name in ["alice", "bob", "carol", "dave", "erin", "mallory"] {
        let identity = fixture(name);
        let (signed, verified, secret) = test_signed_prekey(&identity);
        if identity.fingerprint() == engine.me {
            engine.prekeys.keep_own(signed, secret);
        } else {
            engine.prekeys.keep_theirs(verified);
        }
    }
    (engine, history)
}

/// Every RSA decryption the engine's keys made: its identity's and its
/// prekeys'.
pub(super) fn rsa_decryptions(engine: &Engine) -> u64 {
    engine.rsa_decryptions()
}

/// `Joined` for the lobby with `members` (names of test identities), as
/// the relay sends it, without prekeys.
pub(super) fn lobby_joined(members: &[&str]) -> RelayFrame {
    RelayFrame::Joined {
        room: RoomName::lobby(),
        members: members
            .iter()
            .map(|m| RosterMember {
                name: name(m),
                identity: fixture(m).public().to_bytes().into(),
                online: true,
                prekeys: Vec::new(),
            })
            .collect(),
    }
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
    let (mut engine, history) = new_engine(account, limits);
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
                    prekeys: Vec::new(),
                },
                RosterMember {
                    name: name("bob"),
                    identity: bob.public().to_bytes().into(),
                    online: true,
                    prekeys: Vec::new(),
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
        let mut session = SendingSession::start(
            &mut rand::rng(),
            identity.fingerprint(),
            conversation,
            epoch,
            first,
            created_at,
        );
        // Wrapped to alice's test prekey, as a client that knows it does.
        let (prekey, _) = test_prekey(&fixture("alice"));
        assert_eq!(prekey.owner(), alice.fingerprint());
        let unsigned = session
            .add_recipients(&mut rand::rng(), &[WrapTo::Prekey(&prekey)], first)
            .unwrap();
        let mut announcements = sign_announcements(&identity, &mut rand::rng(), unsigned).unwrap();
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
        prekeys: Vec::new(),
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
