//! A room of two dozen real engines joining one after another, as the relay
//! carries their frames: every pair is made (by announcements and pair
//! replies), every message commits to exactly who can read it (P7), and a
//! leave costs nothing but the next message's slot.

use std::collections::VecDeque;

use sotto_crypto::{Identity, PeerBody, SignedPrekey};

use super::super::testing::*;
use crate::account::Account;
use crate::profile::Profile;
use crate::session::PrekeySource;

/// Members: pairs of the test pool's keys make this many identities.
const ROOM: usize = 24;

fn pool() -> Vec<Vec<u8>> {
    let PrekeySource::Pool(keys) = PrekeySource::pool_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/prekey-keys.txt"),
    )
    .unwrap() else {
        panic!("a pool")
    };
    keys.iter().map(|k| k.to_vec()).collect()
}

struct Member {
    name: UserName,
    identity: std::sync::Arc<Identity>,
    prekey: SignedPrekey,
    engine: Engine,
    updates: Vec<Update>,
    _dir: tempfile::TempDir,
}

/// The relay of the test: who is in the lobby, in join order.
struct Lobby {
    members: Vec<Member>,
    here: Vec<usize>,
}

impl Lobby {
    fn roster_entry(&self, i: usize) -> sotto_proto::Member {
        let m = &self.members[i];
        sotto_proto::Member {
            name: m.name.clone(),
            identity: m.identity.public().to_bytes().into(),
            online: true,
            prekeys: vec![bytes::Bytes::copy_from_slice(m.prekey.as_bytes())],
        }
    }

    /// Delivers `frames` sent by member `from`, and whatever they cause, until
    /// nothing is left to carry.
    fn carry(&mut self, from: usize, frames: Vec<ClientFrame>) {
        let mut queue: VecDeque<(usize, ClientFrame)> =
            frames.into_iter().map(|f| (from, f)).collect();
        while let Some((sender, frame)) = queue.pop_front() {
            let ClientFrame::Send { route, body, slots } = frame else {
                continue;
            };
            let to: Vec<usize> = match &route.to {
                Destination::Room(_) => {
                    self.here.iter().copied().filter(|i| *i != sender).collect()
                }
                Destination::User(user) => self
                    .here
                    .iter()
                    .copied()
                    .filter(|i| self.members[*i].name == *user)
                    .collect(),
            };
            for i in to {
                let slot = slots
                    .iter()
                    .find(|s| s.to == self.members[i].name)
                    .map(|s| s.data.clone());
                let frame = RelayFrame::Deliver {
                    delivery: 0,
                    from: self.members[sender].name.clone(),
                    to: route.to.clone(),
                    body: body.clone(),
                    slot,
                };
                let mut out = Out::default();
                self.members[i].engine.handle_frames([frame], &mut out);
                self.members[i].updates.extend(out.updates);
                queue.extend(out.frames.into_iter().map(|f| (i, f)));
            }
        }
    }

    /// Member `i` joins: the others hear of it (with its prekey), it gets
    /// the roster (with theirs) and announces itself; all that follows is
    /// carried.
    fn join(&mut self, i: usize) {
        let entry = self.roster_entry(i);
        for j in self.here.clone() {
            let mut out = Out::default();
            self.members[j].engine.handle_frame(
                RelayFrame::Presence {
                    room: RoomName::lobby(),
                    user: entry.name.clone(),
                    event: PresenceEvent::Joined,
                    identity: Some(entry.identity.clone()),
                    prekeys: entry.prekeys.clone(),
                },
                &mut out,
            );
            self.members[j].updates.extend(out.updates);
        }
        self.here.push(i);
        let roster = self.here.iter().map(|j| self.roster_entry(*j)).collect();
        let mut out = Out::default();
        self.members[i].engine.handle_frame(
            RelayFrame::Joined {
                room: RoomName::lobby(),
                members: roster,
            },
            &mut out,
        );
        self.members[i].updates.extend(out.updates);
        self.carry(i, out.frames);
    }

    fn say(&mut self, i: usize, text: &str) -> Vec<ClientFrame> {
        let out = command(&mut self.members[i].engine, send(lobby_chat(), text));
        self.members[i].updates.extend(out.updates);
        self.carry(i, out.frames.clone());
        out.frames
    }
}

fn roster_of(frames: &[ClientFrame]) -> ([u8; 32], usize) {
    frames
        .iter()
        .find_map(|f| match f {
            ClientFrame::Send { route, body, slots } if route.to == lobby() => {
                match PeerBody::decode(body) {
                    Ok(PeerBody::Message(m)) => Some((m.header().unwrap().roster, slots.len())),
                    _ => None,
                }
            }
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn a_room_of_two_dozen_joins_pairs_everyone_and_commits_every_message_to_its_readers() {
    let keys = pool();
    let mut members = Vec::new();
    let mut made = 0;
    'pairs: for enc in 0..keys.len() {
        for sig in 0..keys.len() {
            if enc == sig {
                continue;
            }
            if made == ROOM {
                break 'pairs;
            }
            let identity =
                std::sync::Arc::new(Identity::from_private_keys(&keys[enc], &keys[sig]).unwrap());
            // A prekey from a pool key that is neither of its identity keys.
            let spare = (0..keys.len()).find(|k| *k != enc && *k != sig).unwrap();
            let (prekey, secret) = identity
                .make_prekey_with(
                    &mut rand::rng(),
                    sotto_crypto::PrekeyKey::from_pkcs8_der(&keys[(spare + made) % keys.len()])
                        .or_else(|_| sotto_crypto::PrekeyKey::from_pkcs8_der(&keys[spare]))
                        .unwrap(),
                    now_secs(),
                )
                .or_else(|_| {
                    identity.make_prekey_with(
                        &mut rand::rng(),
                        sotto_crypto::PrekeyKey::from_pkcs8_der(&keys[spare]).unwrap(),
                        now_secs(),
                    )
                })
                .unwrap();
            let name: UserName = format!("m{made}").parse().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let account = Account::open(
                Profile::open(dir.path()).unwrap(),
                identity.clone(),
                Some(name.clone()),
            )
            .await
            .unwrap();
            let (mut engine, _) =
                Engine::new(&account, &[RoomName::lobby()], SessionLimits::default()).unwrap();
            engine.prekeys.keep_own(prekey.clone(), secret);
            engine.on_registered(name.clone(), &mut Out::default());
            members.push(Member {
                name,
                identity,
                prekey,
                engine,
                updates: Vec::new(),
                _dir: dir,
            });
            made += 1;
        }
    }
    let mut lobby = Lobby {
        members,
        here: Vec::new(),
    };
    for i in 0..ROOM {
        lobby.join(i);
    }
    // Everyone writes once; everyone else reads it, under a roster of all.
    let everyone =
        sotto_crypto::roster_digest(lobby.members.iter().map(|m| m.identity.fingerprint()));
    for i in 0..ROOM {
        let frames = lobby.say(i, &format!("hello from m{i}"));
        assert_eq!(roster_of(&frames), (everyone, ROOM - 1), "m{i}'s message");
    }
    for member in &lobby.members {
        let read = messages(&member.updates)
            .iter()
            .filter(|m| !m.outgoing)
            .count();
        assert_eq!(
            read,
            ROOM - 1,
            "{}: {:?}",
            member.name,
            codes(&member.updates)
        );
        assert!(
            !member.updates.iter().any(|u| matches!(
                u,
                Update::RosterMismatch { .. }
                    | Update::Rejected { .. }
                    | Update::NotForYou { .. }
                    | Update::Error(_)
            )),
            "{}: {:?}",
            member.name,
            member.updates
        );
    }
    // The last to join leaves: m0's next message has no slot for it and
    // commits to the others only, with no RSA and nothing announced.
    let leaver = ROOM - 1;
    lobby.here.retain(|i| *i != leaver);
    let left = lobby.members[leaver].name.clone();
    for member in lobby.members.iter_mut().take(leaver) {
        member.updates.clear();
        let updates = feed(
            &mut member.engine,
            presence(left.as_str(), PresenceEvent::Left, None),
        );
        member.updates.extend(updates);
    }
    let before = rsa_decryptions(&lobby.members[0].engine);
    let frames = lobby.say(0, "after the leave");
    let rest = sotto_crypto::roster_digest(
        lobby
            .members
            .iter()
            .take(leaver)
            .map(|m| m.identity.fingerprint()),
    );
    assert_eq!(roster_of(&frames), (rest, ROOM - 2));
    assert!(
        !frames.iter().any(|f| matches!(f, ClientFrame::Send { route, .. } if matches!(route.to, Destination::User(_)))),
        "{frames:?}"
    );
    assert_eq!(rsa_decryptions(&lobby.members[0].engine), before);
    // Every remaining member read it, and its roster is the one each sees.
    for member in lobby.members.iter().take(leaver).skip(1) {
        assert!(
            messages(&member.updates)
                .iter()
                .any(|m| m.text == "after the leave"),
            "{}",
            member.name
        );
        assert!(
            !member
                .updates
                .iter()
                .any(|u| matches!(u, Update::RosterMismatch { .. } | Update::Rejected { .. })),
            "{}: {:?}",
            member.name,
            member.updates
        );
    }
}
