//! Several relays over NATS JetStream (issue 15): three relays sharing one
//! community through a three-node NATS cluster on loopback, with real
//! clients. The relays share one TLS key, so one pinned fingerprint
//! reaches any of them.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sotto_client::session::{DeliveryState, MessageId, PresenceChange, Update};
use sotto_proto::{ClientFrame, RelayAddress, RelayFrame};
use sotto_relay::{ClusterConfig, tls};
use sotto_testkit::nats::{self, NatsCluster};
use sotto_testkit::process::{self, RelayProcess};
use sotto_testkit::*;

/// Three `nats-server` processes with JetStream, on loopback, form one
/// cluster; one killed, the other two stay routed to each other.
#[test]
fn a_three_node_nats_cluster_starts_routes_and_survives_a_node() {
    let mut cluster = NatsCluster::start(3);
    assert_eq!(cluster.urls().split(',').count(), 3);
    for node in &cluster.nodes {
        assert_eq!(node.routes(), Some(2), "{}", node.client);
    }
    cluster.nodes[0].kill();
    assert!(!cluster.nodes[0].running());
    let started = Instant::now();
    while cluster.nodes[1..].iter().any(|n| n.routes() != Some(1)) {
        assert!(
            started.elapsed() < PATIENCE,
            "the survivors keep their route"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A NATS cluster and relays over it, sharing one key.
struct Bed {
    nats: NatsCluster,
    relays: Vec<LocalRelay>,
    temp: tempfile::TempDir,
}

impl Bed {
    /// `relays` relays over a fresh three-node NATS cluster.
    fn start(relays: usize) -> Bed {
        test_logs();
        let nats = NatsCluster::start(3);
        let temp = tempfile::tempdir().unwrap();
        let mut bed = Bed {
            nats,
            relays: Vec::new(),
            temp,
        };
        for i in 0..relays {
            let dir = bed.relay_dir(i);
            bed.relays.push(bed.relay(&dir));
        }
        bed
    }

    /// [`Bed::start`], once every relay serves.
    async fn serving(relays: usize) -> Bed {
        let bed = Bed::start(relays);
        for relay in &bed.relays {
            ready(&relay.address).await;
        }
        bed
    }

    /// The data directory of relay `i`, holding the cluster's one key
    /// (made in the first one's, copied into the others').
    fn relay_dir(&self, i: usize) -> PathBuf {
        let first = self.temp.path().join("relay0");
        if !first.exists() {
            sotto_relay::CertStore::load(sotto_relay::CertSource::Generated {
                dir: first.clone(),
                hosts: vec!["localhost".into()],
            })
            .unwrap();
        }
        let dir = self.temp.path().join(format!("relay{i}"));
        if !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            for file in [tls::GENERATED_CERT, tls::GENERATED_KEY] {
                std::fs::copy(first.join(file), dir.join(file)).unwrap();
            }
        }
        dir
    }

    /// A relay keeping its key in `dir`, over the NATS cluster.
    fn relay(&self, dir: &Path) -> LocalRelay {
        let config = self.cluster_config();
        LocalRelay::start_with(dir, 0, |c| c.cluster = Some(config))
    }

    /// A relay keeping its key in `dir`, over the NATS cluster, as a
    /// process of its own.
    fn relay_process(&self, dir: &Path) -> RelayProcess {
        relay_process(dir, &self.nats.urls(), &self.nats.password_file())
    }

    /// How the relays join the NATS cluster: its servers, and the user
    /// and password it requires.
    fn cluster_config(&self) -> ClusterConfig {
        cluster_config(&self.nats.urls(), &self.nats.password_file())
    }

    /// Starts `name` (its fixture identity) on relay `i`, once it serves.
    async fn join(&self, name: &str, i: usize) -> Peer {
        ready(&self.relays[i].address).await;
        Peer::join(self.temp.path(), name, &self.relays[i].address).await
    }
}

/// The relays' configuration for the NATS servers `urls` (comma-separated),
/// authenticating with the password in `password_file`.
fn cluster_config(urls: &str, password_file: &Path) -> ClusterConfig {
    ClusterConfig {
        servers: urls.split(',').map(str::to_string).collect(),
        user: Some(nats::USER.to_owned()),
        password_file: Some(password_file.to_path_buf()),
        ..ClusterConfig::default()
    }
}

/// One address for `relays`, in that order: the first host first.
fn address_of(relays: &[&RelayAddress]) -> RelayAddress {
    let mut address = relays[0].clone();
    address.alternates = relays[1..]
        .iter()
        .map(|r| (r.host.clone(), r.port))
        .collect();
    address
}

/// Where the relay process keeps its data, and the NATS servers it joins;
/// set only in that process (this test binary, run again by the test).
const RELAY_PROCESS_DIR: &str = "SOTTO_CLUSTER_RELAY_DIR";
const RELAY_PROCESS_NATS: &str = "SOTTO_CLUSTER_RELAY_NATS";
const RELAY_PROCESS_PASSWORD: &str = "SOTTO_CLUSTER_RELAY_PASSWORD";

/// Not a test: a relay of the cluster as a process of its own, which a
/// test kills with SIGKILL. The test runs this binary again with only this
/// function selected and [`RELAY_PROCESS_DIR`] set; it prints its address
/// and runs until killed, or until its standard input closes (the test is
/// gone). Run as an ordinary test, it does nothing.
#[test]
#[allow(clippy::print_stdout)] // its address, for the test that started it
fn cluster_relay_process() {
    let Some(dir) = std::env::var_os(RELAY_PROCESS_DIR) else {
        return;
    };
    let urls = std::env::var(RELAY_PROCESS_NATS).unwrap();
    let password = PathBuf::from(std::env::var_os(RELAY_PROCESS_PASSWORD).unwrap());
    let relay = Relay::start_with(Path::new(&dir), 0, |config| {
        config.cluster = Some(cluster_config(&urls, &password));
    });
    println!("{}{}", process::ADDRESS_LINE, relay.address);
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    std::process::exit(0);
}

/// A relay of the cluster as a process of its own: this test binary, run
/// again as [`cluster_relay_process`].
fn relay_process(dir: &Path, urls: &str, password: &Path) -> RelayProcess {
    RelayProcess::start(
        "cluster_relay_process",
        &[
            (RELAY_PROCESS_DIR, dir.as_os_str()),
            (RELAY_PROCESS_NATS, std::ffi::OsStr::new(urls)),
            (RELAY_PROCESS_PASSWORD, password.as_os_str()),
        ],
    )
}

/// How long a relay may take to join a NATS cluster that has just
/// started (its JetStream elects its leaders first; slower on a loaded
/// machine, with other tests' clusters starting beside it).
const STARTUP: Duration = Duration::from_secs(120);

/// Waits until the relay at `address` completes a TLS handshake: it has
/// joined the cluster and serves (until then its listener only queues
/// connections).
async fn ready(address: &RelayAddress) {
    let deadline = Instant::now() + STARTUP;
    while sotto_client::tls::connect(address).await.is_err() {
        assert!(Instant::now() < deadline, "{address} never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `peer` saw no gap in anyone's numbers, nothing that failed its checks
/// and no error.
fn assert_untroubled(peer: &Peer) {
    assert!(!peer.saw(missing), "{}: {:#?}", peer.name, peer.seen);
    assert!(!peer.saw(rejected), "{}: {:#?}", peer.name, peer.seen);
    assert!(
        !peer.saw(|u| matches!(u, Update::Error(_))),
        "{}: {:#?}",
        peer.name,
        peer.seen
    );
}

fn reconnecting(update: &Update) -> bool {
    matches!(
        update,
        Update::Connection(sotto_client::session::Connection::Reconnecting { .. })
    )
}

fn connected(update: &Update) -> bool {
    matches!(
        update,
        Update::Connection(sotto_client::session::Connection::Connected { .. })
    )
}

/// The texts `sender` sent in `chat` that it was told were stored (`Sent`)
/// among its first `upto` updates.
fn told_sent(sender: &Peer, upto: usize) -> Vec<String> {
    let ids: HashSet<MessageId> = sender.seen[..upto]
        .iter()
        .filter_map(|u| match u {
            Update::Delivery { id, delivery, .. } if delivery.state == DeliveryState::Sent => {
                Some(*id)
            }
            _ => None,
        })
        .collect();
    sender.seen[..upto]
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) if m.outgoing && ids.contains(&m.id()) => Some(m.text.clone()),
            _ => None,
        })
        .collect()
}

/// Streams `texts` from `sender` to `recipient` (direct messages), and
/// kills `relay` with SIGKILL once `sender` has handed over the 300th
/// (`sender` is on it, and `recipient` too if `both_on_it`):
/// what `sender` was told `Sent` before the kill, and all the rest once
/// they are back, reach `recipient` once, in order. Returns the time from
/// the kill until both were connected again.
async fn stream_through_a_kill(
    sender: &mut Peer,
    recipient: &mut Peer,
    relay: &mut RelayProcess,
    both_on_it: bool,
    texts: &[String],
) -> Duration {
    let prefix = texts[0].split(' ').next().unwrap().to_string() + " ";
    let (first, rest) = texts.split_at(250);
    for text in first {
        sender.send(dm(&recipient.name), text);
    }
    barrier(sender, Via::Relay).await;
    for text in rest {
        sender.send(dm(&recipient.name), text);
    }
    sender
        .expect(|u| matches!(u, Update::Message(m) if m.outgoing && m.text == texts[299]))
        .await;
    let before = (sender.seen.len(), recipient.seen.len());
    relay.kill();
    let killed = Instant::now();
    // Those it served come back (on the next host of the address) by
    // themselves.
    let mut on_it = vec![(&mut *sender, before.0)];
    if both_on_it {
        on_it.push((&mut *recipient, before.1));
    }
    for (peer, start) in on_it {
        if !peer.seen[start..].iter().any(connected) {
            peer.expect(connected).await;
        }
    }
    let failover = killed.elapsed();
    let cut = sender.seen[before.0..]
        .iter()
        .position(reconnecting)
        .map_or(sender.seen.len(), |i| before.0 + i);
    let chat = dm(&sender.name);
    while shown_in(recipient, &chat, &prefix).len() < texts.len() {
        recipient
            .expect(
                |u| matches!(u, Update::Message(m) if !m.outgoing && m.text.starts_with(&prefix)),
            )
            .await;
        sender.drain();
    }
    // Nothing more comes (a duplicate would come before this).
    barrier(
        recipient,
        Via::message(sender, dm(&recipient.name), &format!("{prefix}after")),
    )
    .await;
    let arrived = shown_in(recipient, &chat, &prefix);
    let arrived: Vec<&String> = arrived.iter().filter(|t| !t.ends_with("after")).collect();
    assert_eq!(arrived, texts.iter().collect::<Vec<_>>());
    let sent = told_sent(sender, cut);
    assert!(sent.len() >= first.len(), "{} told Sent", sent.len());
    for peer in [&*sender, &*recipient] {
        assert_untroubled(peer);
    }
    failover
}

/// A relay of the cluster killed with SIGKILL in the middle of a stream
/// of 500 direct messages: its users fail over to the next host of the
/// address by themselves, and nothing the sender was told was stored is
/// lost, nothing is shown twice. First the sender's relay is killed, then
/// the one both are on by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_with_sigkill_its_users_fail_over_and_nothing_is_lost() {
    let bed = Bed::start(0);
    let mut relays: Vec<RelayProcess> = (0..3)
        .map(|i| bed.relay_process(&bed.relay_dir(i)))
        .collect();
    let addresses: Vec<RelayAddress> = relays.iter().map(|r| r.address.clone()).collect();
    for address in &addresses {
        ready(address).await;
    }
    // alice starts on relay 0, bob on relay 1; each fails over to the next.
    let for_alice = address_of(&[&addresses[0], &addresses[1], &addresses[2]]);
    let for_bob = address_of(&[&addresses[1], &addresses[2], &addresses[0]]);
    let mut alice = Peer::quick_to_return(bed.temp.path(), "alice", &for_alice).await;
    let mut bob = Peer::quick_to_return(bed.temp.path(), "bob", &for_bob).await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    let texts: Vec<String> = (0..500).map(|i| format!("one {i:04}")).collect();
    let first = stream_through_a_kill(&mut alice, &mut bob, &mut relays[0], false, &texts).await;
    // alice is on relay 1 now, with bob: kill that one too.
    let texts: Vec<String> = (0..500).map(|i| format!("two {i:04}")).collect();
    let second = stream_through_a_kill(&mut alice, &mut bob, &mut relays[1], true, &texts).await;
    eprintln!("failover: {first:?} (the sender's relay), {second:?} (both users' relay)");
}
/// Users on three relays chat in a room and directly, and see each
/// other's presence and keys: what one relay sees of its own users, each
/// sees of the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_relays_chat_in_rooms_and_directly() {
    let bed = Bed::start(3);
    // One key, one fingerprint: the same pin reaches every relay.
    let fingerprints: Vec<_> = bed.relays.iter().map(|r| r.address.fingerprint).collect();
    assert!(fingerprints.windows(2).all(|w| w[0] == w[1]));
    let mut alice = bed.join("alice", 0).await;
    let mut bob = bed.join("bob", 1).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    bob.expect_members("lobby", &["alice", "bob"]).await;
    let mut carol = bed.join("carol", 2).await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_members("lobby", &["alice", "bob", "carol"])
            .await;
    }

    alice.send(lobby(), "hello from relay 0");
    bob.send(lobby(), "hello from relay 1");
    carol.send(dm("alice"), "a direct word from relay 2");
    let texts = carol
        .expect_texts(&lobby(), &["hello from relay 0", "hello from relay 1"])
        .await;
    assert_eq!(texts[0].from, "alice");
    assert_eq!(texts[0].fingerprint, identity("alice").fingerprint());
    assert_eq!(texts[1].from, "bob");
    bob.expect_texts(&lobby(), &["hello from relay 0"]).await;
    alice.expect_texts(&lobby(), &["hello from relay 1"]).await;
    let direct = alice
        .expect_message(&dm("carol"), "a direct word from relay 2")
        .await;
    assert_eq!(direct.fingerprint, identity("carol").fingerprint());
    alice.send(dm("carol"), "and back to relay 2");
    carol
        .expect_message(&dm("alice"), "and back to relay 2")
        .await;

    // Nothing failed to open on the way.
    for peer in [&alice, &bob, &carol] {
        assert_untroubled(peer);
    }
}

/// A file uploaded through one relay is saved through another (its chunks
/// are in JetStream, not in the relay alone), byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_sent_through_one_relay_is_saved_through_another() {
    use sotto_client::session::{Command, TransferState};
    let bed = Bed::start(2);
    let mut alice = bed.join("alice", 0).await;
    let mut bob = bed.join("bob", 1).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    bob.expect_members("lobby", &["alice", "bob"]).await;
    let contents: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let path = bed.temp.path().join("plan.pdf");
    std::fs::write(&path, &contents).unwrap();
    alice.command(Command::SendFile {
        chat: lobby(),
        path,
    });
    let message = bob.expect_file(&lobby(), Some("plan.pdf")).await;
    let to = bed.temp.path().join("bob-plan.pdf");
    let saved = bob.save_file(&message, &to).await;
    assert!(
        matches!(saved.state, TransferState::Done { .. }),
        "{saved:?}"
    );
    assert_eq!(std::fs::read(&to).unwrap(), contents);
    for peer in [&alice, &bob] {
        assert_untroubled(peer);
    }
}

/// A user who quits is seen going offline by the members on the other
/// relays.
///
/// It was ignored for a while (issue 15): in about one run of eight, the
/// relays' logs showed bob's `Bye` handled by his relay only when the test
/// ended, 20 s after he quit. Since a watch not started in 3 s is asked
/// for again (`cluster::ATTEMPT`) it passed 57 runs of 57 (three at a time,
/// and with the whole file); the link is not understood, so a failure
/// here is that defect back: its log (`RUST_LOG=sotto_relay=info`) says
/// when each relay handled each `Bye` (`disconnected why=the client said
/// goodbye`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_quits_is_seen_offline_on_the_other_relays() {
    let bed = Bed::start(3);
    let mut alice = bed.join("alice", 0).await;
    let mut bob = bed.join("bob", 1).await;
    let mut carol = bed.join("carol", 2).await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_members("lobby", &["alice", "bob", "carol"])
            .await;
    }
    bob.quit().await;
    alice
        .expect(presence("bob", PresenceChange::Disconnected))
        .await;
    carol
        .expect(presence("bob", PresenceChange::Disconnected))
        .await;
    for peer in [&alice, &carol] {
        assert_untroubled(peer);
    }
}

/// Registers `name` with the fixture identity `fixture` through `relay`:
/// `Ok` once registered, `Err` with the reason once refused for good.
async fn try_register(
    dir: &Path,
    name: &str,
    fixture: &str,
    relay: &RelayAddress,
) -> Result<(), String> {
    use futures::StreamExt;
    use sotto_client::session::{self, Connection};
    let account = account(&dir.join(format!("{name}-{fixture}")), name, fixture).await;
    let mut config = session::Config::new(account, relay.clone());
    config.limits.prekeys = prekey_pool();
    let mut updates = Box::pin(session::run(config));
    let Some(Update::Ready(controller)) = updates.next().await else {
        panic!("no controller");
    };
    let outcome = loop {
        let update = tokio::time::timeout(PATIENCE, updates.next())
            .await
            .expect("a registration is answered")
            .expect("the session runs");
        match update {
            Update::Connection(Connection::Connected { .. }) => break Ok(()),
            Update::Connection(Connection::Failed { reason }) => break Err(reason),
            _ => {}
        }
    };
    let _ = controller.quit();
    while updates.next().await.is_some() {}
    outcome
}

/// One name cannot be registered twice through two relays at once: for
/// each of several names, two keys register it at the same moment, one
/// through each relay; exactly one gets it, the other is refused, and
/// stays refused through either relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_cannot_be_registered_twice_through_two_relays_at_once() {
    let bed = Bed::start(2);
    let (a, b) = (&bed.relays[0].address, &bed.relays[1].address);
    for relay in [a, b] {
        ready(relay).await;
    }
    let dir = bed.temp.path();
    for i in 0..6 {
        let name = format!("dana{i}");
        // Alternate which key goes through which relay.
        let (first, second) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let (alice, bob) = tokio::join!(
            try_register(dir, &name, "alice", first),
            try_register(dir, &name, "bob", second),
        );
        let winner = match (&alice, &bob) {
            (Ok(()), Err(why)) => {
                assert!(why.contains("belongs to another key"), "{why}");
                "alice"
            }
            (Err(why), Ok(())) => {
                assert!(why.contains("belongs to another key"), "{why}");
                "bob"
            }
            other => panic!("{name}: {other:?}"),
        };
        let loser = if winner == "alice" { "bob" } else { "alice" };
        for relay in [a, b] {
            assert!(try_register(dir, &name, loser, relay).await.is_err());
            assert_eq!(try_register(dir, &name, winner, relay).await, Ok(()));
        }
    }
}

/// One NATS node of three killed with SIGKILL: the relays move to the
/// others by themselves and the community goes on, nothing refused and
/// nothing lost: messages sent while JetStream elects new leaders wait
/// for them instead of failing, and a newcomer registers. Started again,
/// the node rejoins, and the chat goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_node_killed_the_chat_goes_on() {
    let mut bed = Bed::start(2);
    let mut alice = bed.join("alice", 0).await;
    let mut bob = bed.join("bob", 1).await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    alice.send(dm("bob"), "before");
    bob.expect_message(&dm("alice"), "before").await;
    bed.nats.nodes[0].kill();
    let chat = async |alice: &mut Peer, bob: &mut Peer, round: &str| {
        let texts: Vec<String> = (0..20).map(|i| format!("{round} {i:02}")).collect();
        for text in &texts {
            alice.send(dm("bob"), text);
            bob.send(lobby(), text);
        }
        let wanted: Vec<&str> = texts.iter().map(String::as_str).collect();
        bob.expect_texts(&dm("alice"), &wanted).await;
        alice.expect_texts(&lobby(), &wanted).await;
    };
    chat(&mut alice, &mut bob, "down").await;
    // A newcomer registers, joins and is read by the others.
    let carol = bed.join("carol", 0).await;
    carol.send(lobby(), "hello from carol");
    bob.expect_message(&lobby(), "hello from carol").await;
    alice.expect_message(&lobby(), "hello from carol").await;
    carol.quit().await;
    bed.nats.restart(0);
    chat(&mut alice, &mut bob, "back").await;
    for peer in [&alice, &bob] {
        assert_untroubled(peer);
    }
    for round in ["down ", "back "] {
        assert_eq!(shown_in(&bob, &dm("alice"), round).len(), 20, "each once");
        assert_eq!(shown_in(&alice, &lobby(), round).len(), 20, "each once");
    }
}

/// The NATS node leading the name directory's bucket killed with
/// SIGKILL, and a newcomer registering at once, while the bucket elects
/// a new leader: its relay asks the directory again until it answers, so
/// the newcomer is registered, or refused only once the relay's patience
/// (11 s) is over, never at its first request that goes unanswered
/// (after 10 s, without the relay's retries); then it chats with a member
/// on the other relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_registers_while_the_name_directory_elects_its_leader() {
    let mut bed = Bed::start(2);
    let mut alice = bed.join("alice", 0).await;
    alice.expect_members("lobby", &["alice"]).await;
    // Both relays serve first: the election is to meet the registration,
    // not a relay's start (a_relay_started_while_a_bucket_elects_...).
    ready(&bed.relays[1].address).await;
    let leader = bed
        .nats
        .leader_of("KV_sotto_names")
        .expect("the name directory has a leader");
    bed.nats.nodes[leader].kill();
    let asked = Instant::now();
    let (frames, answer) = register_raw_answer(&bed.relays[1].address, "carol").await;
    let waited = asked.elapsed();
    match answer {
        RelayFrame::Registered { .. } => eprintln!("registered after {waited:?}"),
        refused => assert!(
            waited >= Duration::from_secs(11),
            "refused after {waited:?}, before the relay's patience was over: {refused:?}"
        ),
    }
    drop(frames);
    let mut carol = bed.join("carol", 1).await;
    carol.expect_members("lobby", &["alice", "carol"]).await;
    carol.send(lobby(), "hello from carol");
    alice.expect_message(&lobby(), "hello from carol").await;
    assert_ne!(bed.nats.leader_of("KV_sotto_names"), Some(leader));
    assert_untroubled(&alice);
}

/// A relay started just after the NATS node leading the first bucket it
/// reads (the prekeys) was killed with SIGKILL: it waits for JetStream to
/// elect a new leader instead of giving up (it did, "timed out", before),
/// then serves, and its user chats with one on the relay that ran. Until
/// the other nodes take the lost one for gone, JetStream may place the
/// relay's watches on it, where they never start: each is asked for again
/// (the relay that read every bucket again for one such watch, 10 s an
/// attempt, served after 50-70 s, and once not within its minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_while_a_bucket_elects_its_leader_waits_and_serves() {
    let mut bed = Bed::start(1);
    let mut alice = bed.join("alice", 0).await;
    alice.expect_members("lobby", &["alice"]).await;
    let leader = bed
        .nats
        .leader_of("KV_sotto_prekeys")
        .expect("the prekey directory has a leader");
    bed.nats.nodes[leader].kill();
    let killed = Instant::now();
    let dir = bed.relay_dir(1);
    let relay = bed.relay(&dir);
    bed.relays.push(relay);
    let mut bob = bed.join("bob", 1).await;
    bob.expect_members("lobby", &["alice", "bob"]).await;
    eprintln!(
        "the relay started late served {:?} after the kill",
        killed.elapsed()
    );
    bob.send(lobby(), "hello from the relay started late");
    alice
        .expect_message(&lobby(), "hello from the relay started late")
        .await;
    assert_untroubled(&alice);
}

/// The NATS node a relay is connected through, killed with SIGKILL while
/// a sender on that relay sends a burst: what was on its way through the
/// dead node is sent again, and what came after waits for it, so the
/// recipient reads every message once, in the order sent, with no gap
/// (a relay sending everything at once would store what came after the
/// loss first: the recipient would read a gap, then the rest late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_lost_under_a_sender_keeps_its_order() {
    let mut bed = Bed::start(0);
    // Each relay told one node (it learns the others from it): alice's
    // relay is connected through node 0.
    for (i, node) in [0, 1].into_iter().enumerate() {
        let dir = bed.relay_dir(i);
        let config = cluster_config(&bed.nats.nodes[node].url(), &bed.nats.password_file());
        bed.relays.push(LocalRelay::start_with(&dir, 0, |c| {
            c.cluster = Some(config)
        }));
    }
    let mut alice = bed.join("alice", 0).await;
    let mut bob = bed.join("bob", 1).await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    let texts: Vec<String> = (0..300).map(|i| format!("burst {i:03}")).collect();
    for text in &texts {
        alice.send(dm("bob"), text);
    }
    // Killed while the burst flows through it; alice's updates are read
    // meanwhile (a session nobody reads waits).
    let chat = dm("alice");
    let mut killed = false;
    while shown_in(&bob, &chat, "burst ").len() < texts.len() {
        bob.expect(|u| matches!(u, Update::Message(m) if !m.outgoing && m.chat == chat))
            .await;
        alice.drain();
        if !killed && shown_in(&bob, &chat, "burst ").len() >= 50 {
            bed.nats.nodes[0].kill();
            killed = true;
        }
    }
    barrier(&mut bob, Via::message(&alice, dm("bob"), "burst after")).await;
    let arrived = shown_in(&bob, &dm("alice"), "burst ");
    assert_eq!(arrived[..texts.len()], texts[..], "each once, in order");
    let times: Vec<u64> = bob
        .seen
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) if m.text.starts_with("burst ") => Some(m.received_at_ms),
            _ => None,
        })
        .collect();
    let pause = times.windows(2).map(|w| w[1].saturating_sub(w[0])).max();
    eprintln!("the longest pause in the burst: {pause:?} ms");
    assert!(
        !bob.saw(|u| matches!(u, Update::Message(m) if m.late)),
        "{:#?}",
        bob.seen
    );
    for peer in [&alice, &bob] {
        assert_untroubled(peer);
    }
}

/// A client driven by hand at the frame level: what a modified client
/// can send, an `Ack` of someone else's delivery among it.
struct Raw {
    framed: RawFrames,
}

impl Raw {
    /// `name` (its fixture identity) registered on `relay`.
    async fn register(relay: &RelayAddress, name: &str) -> Raw {
        Raw {
            framed: register_raw(relay, name).await,
        }
    }

    /// Asserts that `name`, registered on `relay`, is handed nothing.
    async fn nothing_for(relay: &RelayAddress, name: &str) {
        let mut raw = Raw::register(relay, name).await;
        assert_eq!(
            raw.barrier().await,
            Vec::<u64>::new(),
            "acknowledged, yet sent again"
        );
    }

    async fn send(&mut self, frame: ClientFrame) {
        use futures::SinkExt;
        self.framed.send(frame).await.unwrap();
    }

    /// Sends `body` to the user `to` as the `Send` with route id `id`,
    /// without slots.
    async fn send_direct(&mut self, id: u64, to: &str, body: String) {
        self.send_direct_together(id, to, &[body]).await;
    }

    /// The next frame that matches `wanted`; the others are passed over.
    async fn next(&mut self, wanted: impl Fn(&RelayFrame) -> bool) -> RelayFrame {
        use futures::StreamExt;
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.framed.next())
                .await
                .expect("a frame in time")
                .unwrap()
                .unwrap();
            if wanted(&frame) {
                return frame;
            }
        }
    }

    /// Sends direct messages to `to`, one `Send` each with route ids
    /// from `first`, flushed together: they reach the relay in one read,
    /// and are stored in one commit turn.
    async fn send_direct_together(&mut self, first: u64, to: &str, bodies: &[String]) {
        use futures::SinkExt;
        for (id, body) in (first..).zip(bodies) {
            let frame = ClientFrame::Send {
                route: sotto_proto::Route {
                    id,
                    to: sotto_proto::Destination::User(user(to)),
                },
                body: bytes::Bytes::from(body.clone()),
                slots: Vec::new(),
            };
            self.framed.feed(frame).await.unwrap();
        }
        SinkExt::<ClientFrame>::flush(&mut self.framed)
            .await
            .unwrap();
    }

    /// Waits for the `Sent` that covers route id `id`.
    async fn sent(&mut self, id: u64) {
        self.next(|f| matches!(f, RelayFrame::Sent { id: got } if *got >= id))
            .await;
    }

    /// A round trip through the relay; the deliveries that came before
    /// its answer.
    async fn barrier(&mut self) -> Vec<u64> {
        self.delivered()
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// A round trip through the relay; the deliveries that came before
    /// its answer, with their bodies.
    async fn delivered(&mut self) -> Vec<(u64, String)> {
        let nonce = rand::random();
        self.send(ClientFrame::Ping { nonce }).await;
        let mut delivered = Vec::new();
        loop {
            match self
                .next(|f| matches!(f, RelayFrame::Pong { .. } | RelayFrame::Deliver { .. }))
                .await
            {
                RelayFrame::Deliver { delivery, body, .. } => {
                    delivered.push((delivery, String::from_utf8_lossy(&body).into_owned()));
                }
                RelayFrame::Pong { nonce: n } if n == nonce => return delivered,
                _ => {}
            }
        }
    }

    /// Acknowledges `ids` and waits until the relay has read them.
    async fn ack(&mut self, ids: &[u64]) {
        for &delivery in ids {
            self.send(ClientFrame::Ack { delivery }).await;
        }
        self.barrier().await;
    }
}

/// A direct message as large as a frame allows crosses the cluster, from
/// one relay to the other: NATS takes messages as large as the relays'
/// largest write (its `max_payload`, which a relay checks when it starts;
/// NATS's own default, 1 MiB, is too small).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_as_large_as_a_frame_allows_crosses_the_cluster() {
    let bed = Bed::serving(2).await;
    let mut bob = Raw::register(&bed.relays[1].address, "bob").await;
    bob.barrier().await;
    let mut alice = Raw::register(&bed.relays[0].address, "alice").await;
    let body = "x".repeat(sotto_proto::MAX_FRAME_LEN - 1024);
    alice.send_direct(1, "bob", body.clone()).await;
    alice.sent(1).await;
    let got = bob.delivered().await;
    assert_eq!(got.len(), 1);
    assert!(got[0].1 == body, "another body came");
}

/// How many deliveries a stream message of the cluster holds at most: a
/// delivery's id is its stream message's sequence times this plus its
/// place in it (protocol.md 9.7).
const COPIES: u64 = 64;

/// A recipient's deliveries of one commit turn are stored together (one
/// stream message: fewer writes than deliveries), and each is
/// acknowledged on its own: what it did not acknowledge comes again on
/// its next connection, through either relay, with the same id (with the
/// rest of its write); a later write acknowledged whole while an earlier
/// one is not is deleted, and never comes again; once everything is
/// acknowledged, nothing comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_stored_together_are_acknowledged_each_on_its_own() {
    let bed = Bed::serving(2).await;
    let (near, far) = (&bed.relays[0].address, &bed.relays[1].address);
    let mut bob = Raw::register(far, "bob").await;
    bob.barrier().await;
    drop(bob);
    let mut alice = Raw::register(near, "alice").await;
    let early: Vec<String> = (0..6).map(|i| format!("early {i}")).collect();
    let late: Vec<String> = (0..6).map(|i| format!("late {i}")).collect();
    alice.send_direct_together(1, "bob", &early).await;
    alice.sent(6).await;
    alice.send_direct_together(7, "bob", &late).await;
    alice.sent(12).await;

    let mut bob = Raw::register(far, "bob").await;
    let got = bob.delivered().await;
    let bodies: Vec<&String> = got.iter().map(|(_, body)| body).collect();
    assert_eq!(bodies, early.iter().chain(&late).collect::<Vec<_>>());
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut writes: Vec<u64> = ids.iter().map(|id| id / COPIES).collect();
    writes.dedup();
    assert!(writes.len() < ids.len(), "a write per delivery: {ids:?}");
    // Every other one of the early ones, and all of the late ones.
    let (early_ids, late_ids) = ids.split_at(6);
    let kept: Vec<u64> = early_ids.iter().step_by(2).copied().collect();
    let acked: Vec<u64> = early_ids.iter().skip(1).step_by(2).copied().collect();
    bob.ack(&acked).await;
    bob.ack(late_ids).await;
    drop(bob);
    // What comes again: the writes that still hold one not acknowledged,
    // whole (the others of such a write are duplicates, which clients
    // drop and acknowledge again).
    let again: Vec<u64> = early_ids
        .iter()
        .copied()
        .filter(|id| kept.iter().any(|k| k / COPIES == id / COPIES))
        .collect();
    for relay in [near, far] {
        let mut bob = Raw::register(relay, "bob").await;
        assert_eq!(bob.barrier().await, again, "through {relay:?}");
        drop(bob);
    }
    let mut bob = Raw::register(near, "bob").await;
    assert_eq!(bob.barrier().await, again);
    bob.ack(&again).await;
    drop(bob);
    for relay in [near, far] {
        Raw::nothing_for(relay, "bob").await;
    }
}

/// A resend stored again in another write (its sender sent the same bytes
/// again along with a new message, as after a relay that died before its
/// `Sent`) is handed over once, on a connection that is handed both
/// writes, and it does not hold the deletion back once what was handed
/// over is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_stored_in_another_write_is_handed_over_once() {
    let bed = Bed::serving(2).await;
    let (near, far) = (&bed.relays[0].address, &bed.relays[1].address);
    let mut bob = Raw::register(far, "bob").await;
    bob.barrier().await;
    drop(bob);
    let mut alice = Raw::register(near, "alice").await;
    let first = "the first".to_string();
    let second = "the second".to_string();
    alice.send_direct(1, "bob", first.clone()).await;
    alice.sent(1).await;
    alice
        .send_direct_together(2, "bob", &[second.clone(), first.clone()])
        .await;
    alice.sent(3).await;
    for _ in 0..2 {
        let mut bob = Raw::register(far, "bob").await;
        let got = bob.delivered().await;
        let bodies: Vec<&String> = got.iter().map(|(_, body)| body).collect();
        assert_eq!(bodies, [&first, &second], "{got:?}");
        drop(bob);
    }
    let mut bob = Raw::register(near, "bob").await;
    let got = bob.delivered().await;
    assert_eq!(got.len(), 2, "{got:?}");
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    bob.ack(&ids).await;
    drop(bob);
    Raw::nothing_for(far, "bob").await;
}

/// Only a delivery's recipient can acknowledge it away in a cluster too:
/// other users' `Ack` of its id (ids are easy to guess), through the
/// sender's relay and through the recipient's, deletes nothing: the
/// recipient gets it again on its next connection, until it acknowledges
/// it itself, after which it never comes again, through either relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_recipient_can_acknowledge_a_delivery_in_a_cluster() {
    let bed = Bed::serving(2).await;
    let (near, far) = (&bed.relays[0].address, &bed.relays[1].address);
    let mut alice = Raw::register(near, "alice").await;
    let mut bob = Raw::register(far, "bob").await;
    let mut mallory = Raw::register(near, "mallory").await;
    let mut erin = Raw::register(far, "erin").await;
    // Each gets a delivery of its own first, and acknowledges it: what
    // it acknowledges next is checked against what was sent to it.
    for (id, to) in [(1, "mallory"), (2, "erin"), (3, "bob")] {
        alice.send_direct(id, to, format!("for {to}")).await;
    }
    fn delivered(to: &'static str) -> impl Fn(&RelayFrame) -> bool {
        let body = format!("for {to}");
        move |frame| matches!(frame, RelayFrame::Deliver { body: b, .. } if *b == body)
    }
    for (other, name) in [(&mut mallory, "mallory"), (&mut erin, "erin")] {
        let RelayFrame::Deliver { delivery, .. } = other.next(delivered(name)).await else {
            panic!("not a delivery")
        };
        other.send(ClientFrame::Ack { delivery }).await;
        other.barrier().await;
    }
    let RelayFrame::Deliver { delivery: id, .. } = bob.next(delivered("bob")).await else {
        panic!("not a delivery")
    };
    for other in [&mut mallory, &mut erin] {
        for guess in [id, id + 1, id.saturating_sub(1)] {
            other.send(ClientFrame::Ack { delivery: guess }).await;
        }
        other.barrier().await;
    }
    drop(bob);
    let mut bob = Raw::register(far, "bob").await;
    assert_eq!(bob.barrier().await, [id], "someone else's Ack deleted it");
    bob.send(ClientFrame::Ack { delivery: id }).await;
    bob.barrier().await;
    drop(bob);
    for relay in [near, far] {
        Raw::nothing_for(relay, "bob").await;
    }
}

/// Direct messages sent in one go through a relay that has not heard of
/// their recipients: each recipient's name is asked of the directory
/// (once per name, the turn's names together), those nobody owns are
/// refused `NoSuchUser` (each before the `Sent` that covers it), and the
/// others, a name in any letter case among them, reach their recipient
/// on the other relay, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_to_names_nobody_owns_are_refused_and_the_rest_delivered() {
    let bed = Bed::serving(2).await;
    let mut bob = Raw::register(&bed.relays[1].address, "bob").await;
    bob.barrier().await;
    let mut alice = Raw::register(&bed.relays[0].address, "alice").await;
    let to = [
        (1, "bob"),
        (2, "nobody"),
        (3, "BOB"),
        (4, "noone"),
        (5, "bob"),
    ];
    for (id, name) in to {
        alice
            .send_direct(id, name, format!("{id} for {name}"))
            .await;
    }
    // `Sent` is cumulative: each refusal comes before the `Sent` that
    // covers its id (protocol.md 9.6).
    let mut refused = Vec::new();
    let mut sent = Vec::new();
    while sent.last() < Some(&5) {
        match alice
            .next(|f| matches!(f, RelayFrame::Sent { .. } | RelayFrame::Error { .. }))
            .await
        {
            RelayFrame::Sent { id } => sent.push(id),
            RelayFrame::Error { id, code, .. } => {
                assert!(
                    sent.last() < id.as_ref(),
                    "refused after a Sent covering it"
                );
                refused.push((id, code));
            }
            _ => {}
        }
    }
    let nobody = sotto_proto::ErrorCode::NoSuchUser;
    assert_eq!(refused, [(Some(2), nobody), (Some(4), nobody)]);
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
    for body in ["1 for bob", "3 for BOB", "5 for bob"] {
        let frame = bob.next(|f| matches!(f, RelayFrame::Deliver { .. })).await;
        let RelayFrame::Deliver { body: got, .. } = frame else {
            panic!("not a delivery")
        };
        assert_eq!(got, body.as_bytes(), "in order");
    }
    assert_eq!(bob.barrier().await, Vec::<u64>::new(), "each once");
}

/// Everything stopped (the relay, then all three NATS nodes) and started
/// again: what was stored for a user who was offline survives, and
/// reaches him once, in order, when he is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_deliveries_survive_a_restart_of_everything() {
    let mut bed = Bed::start(1);
    let mut alice = bed.join("alice", 0).await;
    let bob = bed.join("bob", 0).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    let bob_account = bob.account.clone();
    bob.quit().await;
    let texts: Vec<String> = (0..30).map(|i| format!("kept {i:02}")).collect();
    for text in &texts {
        alice.send(dm("bob"), text);
    }
    // Each told stored (`Sent`) before anything stops.
    let mut sent = HashSet::new();
    while sent.len() < texts.len() {
        if let Update::Delivery { id, delivery, .. } = alice
            .expect(|u| matches!(u, Update::Delivery { delivery, .. } if delivery.state == DeliveryState::Sent))
            .await
        {
            assert_eq!(delivery.state, DeliveryState::Sent);
            sent.insert(id);
        }
    }
    alice.quit().await;
    let relay = bed.relays.pop().unwrap();
    let port = relay.address.port;
    relay.stop().await;
    for node in &mut bed.nats.nodes {
        node.stop();
    }
    for node in 0..3 {
        bed.nats.restart(node);
    }
    let dir = bed.relay_dir(0);
    let config = bed.cluster_config();
    bed.relays.push(LocalRelay::start_with(&dir, port, |c| {
        c.cluster = Some(config)
    }));
    ready(&bed.relays[0].address).await;
    let mut bob = Peer::connect(bob_account, &bed.relays[0].address).await;
    let wanted: Vec<&str> = texts.iter().map(String::as_str).collect();
    bob.expect_texts(&dm("alice"), &wanted).await;
    barrier(&mut bob, Via::Relay).await;
    assert_eq!(shown_in(&bob, &dm("alice"), "kept "), texts);
    assert!(!bob.saw(missing), "{:#?}", bob.seen);
}

/// A cluster relay's `/health` says when NATS is out of reach (every node
/// stopped: 503 and why, for a load balancer to send users elsewhere)
/// and `ok` once the nodes are back; the relay was not restarted, and
/// users register and chat through it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_health_says_when_nats_is_out_of_reach() {
    let mut bed = Bed::start(0);
    let metrics = free_port();
    let (dir, config) = (bed.relay_dir(0), bed.cluster_config());
    bed.relays.push(LocalRelay::start_with(&dir, 0, |c| {
        c.cluster = Some(config);
        c.metrics = Some(metrics);
    }));
    ready(&bed.relays[0].address).await;
    let health = async || {
        tokio::task::spawn_blocking(move || http_get(metrics, "/health"))
            .await
            .unwrap()
            .unwrap_or_default()
    };
    let until = async |wanted: &str, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let answer = health().await;
            if answer.ends_with(wanted) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "still {answer:?}, not {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Healthy while it serves: within a moment of serving, since a NATS
    // cluster that has just formed its routes may still move the relay's
    // connection from one node to another.
    let first = health().await;
    let serving = until("\r\n\r\nok\n", Duration::from_secs(10)).await;
    assert!(serving.starts_with("HTTP/1.1 200 OK\r\n"), "{serving}");
    if !first.ends_with("\r\n\r\nok\n") {
        eprintln!("the first answer once serving: {first:?}");
    }
    for node in &mut bed.nats.nodes {
        node.stop();
    }
    let stopped = Instant::now();
    let down = until("\r\n\r\nnot connected to NATS\n", Duration::from_secs(10)).await;
    assert!(
        down.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{down}"
    );
    eprintln!(
        "unhealthy {:?} after the last node stopped",
        stopped.elapsed()
    );
    let restarting = Instant::now();
    for node in 0..3 {
        bed.nats.restart(node);
    }
    let restarted = restarting.elapsed();
    let up = until("\r\n\r\nok\n", STARTUP).await;
    assert!(up.starts_with("HTTP/1.1 200 OK\r\n"), "{up}");
    eprintln!(
        "healthy again {:?} after the restarts began ({restarted:?} of them)",
        restarting.elapsed()
    );
    let mut alice = bed.join("alice", 0).await;
    let mut bob = bed.join("bob", 0).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;
    alice.send(dm("bob"), "back again");
    bob.expect_message(&dm("alice"), "back again").await;
}

/// A relay with the wrong NATS password does not start: it fails with
/// NATS's refusal, and never serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_the_wrong_nats_password_does_not_start() {
    let bed = Bed::start(0);
    let wrong = bed.temp.path().join("wrong-password");
    std::fs::write(&wrong, "not the password\n").unwrap();
    let dir = bed.relay_dir(0);
    let certs = sotto_relay::CertStore::load(sotto_relay::CertSource::Generated {
        dir: dir.clone(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    let config = sotto_relay::Config {
        data_dir: dir,
        cluster: Some(cluster_config(&bed.nats.urls(), &wrong)),
        ..sotto_relay::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(
        PATIENCE,
        sotto_relay::run(listener, certs, config, std::future::pending::<()>()),
    )
    .await
    .expect("it gives up");
    let error = started.unwrap_err().to_string();
    assert!(error.contains("authorization"), "{error}");
}
