//! Membership changes in rooms of 10, 100 and 1,000: what one join and one
//! leave cost, with the session's real engine (its real encrypted store on
//! a real temporary directory, real RSA-3072 keys) for every member, the
//! frames of each carried to the others as the relay carries them, in this
//! one process (issue 14, item 5; docs/benchmarks.md, "Membership").
//!
//! `cargo bench -p sotto-client --bench membership` (add `-- 10 100` for
//! some sizes only). It checks what it measures (each existing member makes
//! exactly one RSA decryption and no announcement for a join, none for a
//! leave; everyone reads everyone at the end) and panics otherwise.
//!
//! Keys: every member needs its own identity, and RSA-3072 key generation
//! takes about a second a key, so the identities are made of pairs of 33
//! keys generated once and kept in the target directory (33 x 32 = 1,056
//! distinct identities); prekeys come from the test pool of
//! testdata/prekey-keys.txt. Which keys they are changes no cost.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stdout,
    clippy::cast_precision_loss
)] // benchmarks

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sotto_client::account::Account;
use sotto_client::profile::Profile;
use sotto_client::session::bench::Receiver;
use sotto_client::session::{Chat, Command};
use sotto_crypto::{Conversation, Identity, PeerBody, PrekeyKey, SignedPrekey};
use sotto_proto::{
    ClientFrame, Destination, Member, PresenceEvent, RelayFrame, RoomName, UserName,
};

/// Keys identities are made of: `KEYS` keys give `KEYS * (KEYS - 1)`.
const KEYS: usize = 33;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The CPU time this thread has used: the first field of
/// /proc/thread-self/schedstat, in nanoseconds (Linux). What the join's
/// targets are about: the fsyncs of each store commit wait on the disk
/// without using the CPU, and the wall time is reported on its own.
fn cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
}

fn unhex(line: &str) -> Vec<u8> {
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The identity keys, generated once (two threads) and kept.
fn identity_keys() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("membership-identity-keys.txt");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let keys: Vec<Vec<u8>> = text.lines().map(unhex).collect();
        if keys.len() == KEYS {
            return keys;
        }
    }
    println!("generating {KEYS} RSA-3072 keys for the bench's identities (once)...");
    let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let halves: Vec<_> = (0..2)
            .map(|half| {
                scope.spawn(move || {
                    (0..KEYS)
                        .filter(|i| i % 2 == half)
                        .map(|_| {
                            PrekeyKey::generate(&mut rand::rng())
                                .unwrap()
                                .to_pkcs8_der()
                                .unwrap()
                                .to_vec()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let text: Vec<String> = keys.iter().map(|k| hex(k)).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    keys
}

fn prekey_pool() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/prekey-keys.txt");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(unhex)
        .collect()
}

/// Identity `i`: the `i`-th ordered pair of distinct keys.
fn identity(keys: &[Vec<u8>], i: usize) -> Arc<Identity> {
    let enc = i / (KEYS - 1);
    let mut sig = i % (KEYS - 1);
    if sig >= enc {
        sig += 1;
    }
    Arc::new(Identity::from_private_keys(&keys[enc], &keys[sig]).unwrap())
}

/// A roster entry, with the member's published prekeys as the relay hands
/// them out.
fn member(name: &UserName, identity: &Identity, prekey: Option<&SignedPrekey>) -> Member {
    Member {
        name: name.clone(),
        identity: identity.public().to_bytes().into(),
        online: true,
        prekeys: prekey
            .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()))
            .into_iter()
            .collect(),
    }
}

/// One client: its name, its key, its engine.
struct Client {
    name: UserName,
    identity: Arc<Identity>,
    engine: Receiver,
}

/// A client's name, key, and prekey (signed, and its secret).
struct Made {
    name: UserName,
    identity: Arc<Identity>,
    secret: sotto_crypto::PrekeySecret,
    signed: SignedPrekey,
}

/// What the relay delivers of the `Send`s in `frames` from `from`, for
/// each recipient: room messages to every other client of `room` with its
/// own slot, direct frames to the one they name.
fn carry(
    frames: &[ClientFrame],
    from: &UserName,
    others: &[&UserName],
) -> Vec<(UserName, RelayFrame)> {
    let mut out = Vec::new();
    for frame in frames {
        let ClientFrame::Send { route, body, slots } = frame else {
            continue;
        };
        let to: Vec<&UserName> = match &route.to {
            Destination::Room(_) => others.to_vec(),
            Destination::User(user) => vec![user],
        };
        for recipient in to {
            let slot = slots
                .iter()
                .find(|s| s.to == *recipient)
                .map(|s| s.data.clone());
            out.push((
                recipient.clone(),
                RelayFrame::Deliver {
                    delivery: 0,
                    from: from.clone(),
                    to: route.to.clone(),
                    body: body.clone(),
                    slot,
                },
            ));
        }
    }
    out
}

fn announcements(frames: &[ClientFrame]) -> usize {
    frames
        .iter()
        .filter(|f| {
            matches!(f, ClientFrame::Send { body, .. }
            if matches!(PeerBody::decode(body), Ok(PeerBody::Announcement(_))))
        })
        .count()
}

struct Figures {
    size: usize,
    member_join: Duration,
    member_join_max: Duration,
    newcomer: Duration,
    everyone: Duration,
    /// Handling the `Presence` of the leave.
    leave_presence: Duration,
    /// Sealing the next message after it, and one before it.
    after_leave: Duration,
    baseline_seal: Duration,
}

/// A room of `size`: `size` long-standing members, then one newcomer joins;
/// then, at one member whose session has everyone, another member leaves.
async fn room_of(size: usize, keys: &[Vec<u8>], pool: &[Vec<u8>], dir: &Path) -> Figures {
    let lobby = RoomName::lobby();
    let conversation = Conversation::room("lobby");
    let at = now();
    let made = |i: usize, name: String| -> Made {
        let identity = identity(keys, i);
        let (signed, secret) = identity
            .make_prekey_with(
                &mut rand::rng(),
                PrekeyKey::from_pkcs8_der(&pool[i % pool.len()]).unwrap(),
                at,
            )
            .unwrap();
        Made {
            name: name.parse().unwrap(),
            identity,
            secret,
            signed,
        }
    };
    let open = |dir: PathBuf, identity: Arc<Identity>, name: UserName| async move {
        Account::open(Profile::open(dir).unwrap(), identity, Some(name))
            .await
            .unwrap()
    };

    // The members, each alone with itself in its roster but for the
    // newcomer it is about to see (see docs/benchmarks.md); the newcomer.
    let mut members = Vec::with_capacity(size);
    let mut signed_prekeys = Vec::with_capacity(size);
    for i in 0..size {
        let Made {
            name,
            identity,
            secret,
            signed,
        } = made(i, format!("m{i}"));
        let account = open(dir.join(format!("m{i}")), identity.clone(), name.clone()).await;
        let mut engine = Receiver::long_standing(
            &account,
            name.clone(),
            lobby.clone(),
            vec![member(&name, &identity, None)],
        )
        .unwrap();
        engine.keep_own_prekey(signed.clone(), secret);
        signed_prekeys.push(signed);
        members.push((
            Client {
                name,
                identity,
                engine,
            },
            account,
        ));
    }
    let Made {
        name,
        identity: newcomer_identity,
        secret,
        signed: newcomer_prekey,
    } = made(size, "newcomer".into());
    let newcomer_account = open(
        dir.join("newcomer"),
        newcomer_identity.clone(),
        name.clone(),
    )
    .await;

    // The join. Each member hears of it, then gets the newcomer's
    // announcement and answers; the newcomer gets the answers.
    let started = Instant::now();
    let mut member_times = vec![Duration::ZERO; size];
    for ((client, _), time) in members.iter_mut().zip(&mut member_times) {
        let t = cpu();
        client.engine.receive(vec![RelayFrame::Presence {
            room: lobby.clone(),
            user: name.clone(),
            event: PresenceEvent::Joined,
            identity: Some(newcomer_identity.public().to_bytes().into()),
            prekeys: vec![bytes::Bytes::copy_from_slice(newcomer_prekey.as_bytes())],
        }]);
        *time += cpu() - t;
    }
    let t = cpu();
    // The roster comes with each member's prekey: the newcomer verifies
    // each against the key it pins (part of its cost).
    let roster: Vec<Member> = members
        .iter()
        .zip(&signed_prekeys)
        .map(|((c, _), p)| member(&c.name, &c.identity, Some(p)))
        .chain([member(&name, &newcomer_identity, Some(&newcomer_prekey))])
        .collect();
    let mut newcomer = Client {
        engine: Receiver::new(&newcomer_account, name.clone(), lobby.clone(), Vec::new()).unwrap(),
        name,
        identity: newcomer_identity,
    };
    newcomer
        .engine
        .keep_own_prekey(newcomer_prekey.clone(), secret);
    let (frames, _) = newcomer.engine.receive(vec![RelayFrame::Joined {
        room: lobby.clone(),
        members: roster,
    }]);
    let mut newcomer_time = cpu() - t;
    assert_eq!(announcements(&frames), size, "one announcement per member");
    let names: Vec<&UserName> = members.iter().map(|(c, _)| &c.name).collect();
    let mut deliveries = carry(&frames, &newcomer.name, &names);
    let mut replies = Vec::new();
    for ((client, _), time) in members.iter_mut().zip(&mut member_times) {
        let mine: Vec<RelayFrame> = deliveries
            .iter()
            .filter(|(to, _)| *to == client.name)
            .map(|(_, f)| f.clone())
            .collect();
        deliveries.retain(|(to, _)| *to != client.name);
        let before = client.engine.rsa_decryptions();
        let t = cpu();
        let (out, _) = client.engine.receive(mine);
        *time += cpu() - t;
        assert_eq!(
            client.engine.rsa_decryptions(),
            before + 1,
            "one RSA decryption"
        );
        assert_eq!(announcements(&out), 0, "no announcement, so no signature");
        replies.extend(carry(&out, &client.name, &[&newcomer.name]));
    }
    let t = cpu();
    // The replies come in reads of up to 64 frames, as from a socket.
    let replies: Vec<RelayFrame> = replies.into_iter().map(|(_, f)| f).collect();
    for batch in replies.chunks(64) {
        newcomer.engine.receive(batch.to_vec());
    }
    newcomer_time += cpu() - t;
    let everyone = started.elapsed();
    for (client, _) in &members {
        assert!(
            newcomer
                .engine
                .reads(client.identity.fingerprint(), &conversation)
        );
        assert!(
            client
                .engine
                .reads(newcomer.identity.fingerprint(), &conversation)
        );
    }
    let total: Duration = member_times.iter().sum();

    // The leave, at a member whose session has every other member: m0 as
    // a long-standing member of the whole room.
    let (client, _) = &mut members[0];
    let everybody: Vec<Member> = members_list(size, keys)
        .iter()
        .zip(&signed_prekeys)
        .map(|((n, id), p)| member(n, id, Some(p)))
        .chain([member(
            &newcomer.name,
            &newcomer.identity,
            Some(&newcomer_prekey),
        )])
        .collect();
    let account = open(
        dir.join("m0-full"),
        client.identity.clone(),
        client.name.clone(),
    )
    .await;
    let mut full =
        Receiver::long_standing(&account, client.name.clone(), lobby.clone(), everybody).unwrap();
    let say = |engine: &mut Receiver, text: &str| {
        let t = cpu();
        let (frames, _) = engine.command(Command::Send {
            chat: Chat::Room(RoomName::lobby()),
            text: text.into(),
        });
        (cpu() - t, frames)
    };
    let (_, warm) = say(&mut full, "the session is made");
    assert_eq!(announcements(&warm), size, "everyone added once");
    let (baseline_seal, _) = say(&mut full, "a message like any");
    let decryptions = full.rsa_decryptions();
    let t = cpu();
    full.receive(vec![RelayFrame::Presence {
        room: lobby.clone(),
        user: "m1".parse().unwrap(),
        event: PresenceEvent::Left,
        identity: None,
        prekeys: Vec::new(),
    }]);
    let presence = cpu() - t;
    let (after, frames) = say(&mut full, "after the leave");
    assert_eq!(announcements(&frames), 0, "a leave announces nothing");
    assert_eq!(
        full.rsa_decryptions(),
        decryptions,
        "a leave decrypts nothing"
    );
    let slots = frames
        .iter()
        .find_map(|f| match f {
            ClientFrame::Send { route, slots, .. }
                if route.to == Destination::Room(lobby.clone()) =>
            {
                Some(slots.len())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(slots, size - 1, "no slot for the one who left");

    Figures {
        size,
        member_join: total / u32::try_from(size).unwrap(),
        member_join_max: member_times.iter().max().copied().unwrap_or_default(),
        newcomer: newcomer_time,
        everyone,
        leave_presence: presence,
        after_leave: after,
        baseline_seal,
    }
}

fn members_list(size: usize, keys: &[Vec<u8>]) -> Vec<(UserName, Arc<Identity>)> {
    (0..size)
        .map(|i| (format!("m{i}").parse().unwrap(), identity(keys, i)))
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    let keys = identity_keys();
    let pool = prekey_pool();
    println!(
        "| room | join, per member: CPU ms (mean / max) | join, newcomer: CPU ms | join: everyone reads everyone, s (wall, one process) | leave, per member: presence CPU ms | leave: next message CPU ms (a message before it) |"
    );
    println!("|---|---|---|---|---|---|");
    for size in sizes {
        let dir = tempfile::tempdir().unwrap();
        let f = room_of(size, &keys, &pool, dir.path()).await;
        println!(
            "| {} | {} / {} | {} | {:.2} | {} | {} ({}) |",
            f.size,
            ms(f.member_join),
            ms(f.member_join_max),
            ms(f.newcomer),
            f.everyone.as_secs_f64(),
            ms(f.leave_presence),
            ms(f.after_leave),
            ms(f.baseline_seal),
        );
    }
}
