//! What the fault-injection tests of `faults.rs` share: a recipient
//! behind a `Proxy`, what a peer was shown, receiving with resets at given
//! points, its history after a restart, the sender's delivery states, and
//! the relay as a process of its own (this test binary run again), to be
//! killed with SIGKILL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sotto_client::backoff::Backoff;
use sotto_client::session::{Chat, Connection, MessageId, Update};
use sotto_testkit::process::{ADDRESS_LINE, RelayProcess};
use sotto_testkit::*;

/// alice connected to the relay directly, bob through a proxy, both in the
/// lobby; bob retries every 50-200 ms after losing his connection.
pub(crate) async fn bob_behind_a_proxy() -> (Testbed, Proxy, Peer, Peer) {
    let bed = Testbed::start();
    let proxy = proxy_to(&bed);
    let mut alice = bed.join("alice").await;
    let mut bob = flaky(&bed, &proxy, "bob").await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    assert_eq!(proxy.stats().accepted, 1);
    (bed, proxy, alice, bob)
}

pub(crate) fn proxy_to(bed: &Testbed) -> Proxy {
    test_logs();
    let relay: SocketAddr = ([127, 0, 0, 1], bed.relay.address.port).into();
    Proxy::start(relay)
}

/// `name` connected through `proxy`, retrying every 50-200 ms.
pub(crate) async fn flaky(bed: &Testbed, proxy: &Proxy, name: &str) -> Peer {
    let dir = bed.temp.path().join(name);
    let short = Duration::from_millis(50);
    Peer::connect_with(
        account(&dir, name, name).await,
        &proxy.relay_address(&bed.relay.address),
        |config| {
            config.limits.reconnect = Backoff::new(short, short * 4, Duration::from_secs(60));
        },
    )
    .await
}

/// Waits until `peer` has been shown `count` messages in `chat` starting
/// with `prefix` (duplicates count: a test then finds them), resetting
/// `proxy` when the count reaches each of `resets`. A reset is made on a
/// connection accepted after the previous one (one reached while the
/// client still reads what it had before a reset waits for the next
/// connection), so that each cuts a live connection; those still due
/// when the last message is shown are made then. Returns once every
/// reset has ended its connection. The `others` are kept going meanwhile
/// (their updates taken as they come).
pub(crate) async fn receive(
    peer: &mut Peer,
    chat: &Chat,
    prefix: &str,
    count: usize,
    proxy: Option<(&Proxy, &[usize])>,
    others: &mut [&mut Peer],
) {
    let mut shown = shown_in(peer, chat, prefix).len();
    let reset_before = proxy.map_or(0, |(proxy, _)| proxy.stats().reset);
    let mut resets = proxy
        .map_or(&[][..], |(_, points)| points)
        .iter()
        .peekable();
    let mut due = 0;
    let mut cut = 0;
    while shown < count {
        peer.expect(|u| {
            matches!(u, Update::Message(m) if !m.outgoing && m.chat == *chat && m.text.starts_with(prefix))
        })
        .await;
        for other in others.iter_mut() {
            other.drain();
        }
        shown += 1;
        while resets.next_if(|&&at| at <= shown).is_some() {
            due += 1;
        }
        if let Some((proxy, _)) = proxy {
            let stats = proxy.stats();
            if due > 0 && stats.open > 0 && stats.accepted > cut {
                cut = stats.accepted;
                proxy.reset();
                due -= 1;
            }
        }
    }
    // Resets still due when the last message was shown (the client had
    // read ahead of what the test was shown): made on its next
    // connections, so that every test makes all its resets.
    if let Some((proxy, points)) = proxy {
        while due > 0 {
            let stats = proxy.wait_until(|s| s.open > 0 && s.accepted > cut).await;
            cut = stats.accepted;
            proxy.reset();
            due -= 1;
        }
        // Each reset counted (by the connection it ends, a moment later).
        let made = u64::try_from(points.len()).unwrap();
        proxy.wait_until(|s| s.reset >= reset_before + made).await;
    }
}

/// `count` reset points in `1..within`, sorted, distinct, from `seed`.
pub(crate) fn reset_points(seed: u64, count: usize, within: usize) -> Vec<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut points = Vec::new();
    while points.len() < count {
        let at = rng.random_range(1..within);
        if !points.contains(&at) {
            points.push(at);
        }
    }
    points.sort_unstable();
    points
}

/// `peer`'s client restarted (its session ended, a new one on the same
/// account): the texts of its stored history of `chat`, received ones
/// starting with `prefix`, in display order.
pub(crate) async fn history_after_restart(
    peer: Peer,
    relay: &sotto_proto::RelayAddress,
    chat: &Chat,
    prefix: &str,
) -> Vec<String> {
    let account = peer.account.clone();
    peer.quit().await;
    let mut again = Peer::connect(account, relay).await;
    let history = again
        .expect(|u| matches!(u, Update::History { chat: c, .. } if c == chat))
        .await;
    let Update::History { messages, .. } = history else {
        unreachable!()
    };
    messages
        .into_iter()
        .filter(|m| !m.outgoing && m.text.starts_with(prefix))
        .map(|m| m.text)
        .collect()
}

/// Waits until the sender has been told, by each of `to`'s own receipts,
/// that all of its `count` messages in `chat` starting with `prefix` are
/// delivered to each of them: the sender's view matches what arrived.
pub(crate) async fn delivered_to_all(
    sender: &mut Peer,
    chat: &Chat,
    prefix: &str,
    count: usize,
    to: &[&str],
) {
    let ids: std::collections::HashSet<MessageId> = sender
        .seen
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) if m.outgoing && m.chat == *chat && m.text.starts_with(prefix) => {
                Some(m.id())
            }
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), count);
    let done = |sender: &Peer| {
        let mut delivered: HashMap<MessageId, usize> = HashMap::new();
        for update in &sender.seen {
            if let Update::Delivery {
                chat: c,
                id,
                delivery,
            } = update
                && c == chat
                && ids.contains(id)
            {
                let all = to
                    .iter()
                    .filter(|name| delivery.delivered.iter().any(|d| d == **name))
                    .count();
                let best = delivered.entry(*id).or_default();
                *best = (*best).max(all);
            }
        }
        delivered.values().filter(|n| **n == to.len()).count()
    };
    while done(sender) < count {
        sender
            .expect(|u| matches!(u, Update::Delivery { .. }))
            .await;
    }
}

/// No gap was reported to `peer` and nothing failed its checks.
pub(crate) fn nothing_missing(peer: &Peer) {
    assert!(
        !peer.saw(|u| matches!(
            u,
            Update::Missing { .. } | Update::Rejected { .. } | Update::NotForYou { .. }
        )),
        "{}: {:#?}",
        peer.name,
        peer.seen
    );
}

/// `peer` was shown no error (nothing it sent was refused).
pub(crate) fn no_errors(peer: &Peer) {
    assert!(
        !peer.saw(|u| matches!(u, Update::Error(_))),
        "{}: {:#?}",
        peer.name,
        peer.seen
    );
}

pub(crate) fn reconnecting(update: &Update) -> bool {
    matches!(update, Update::Connection(Connection::Reconnecting { .. }))
}

/// The texts of the direct messages from alice that bob was shown live, in
/// the order he was shown them.
pub(crate) fn from_alice(bob: &Peer, prefix: &str) -> Vec<String> {
    bob.seen
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) if !m.outgoing && m.chat == dm("alice") => Some(&m.text),
            _ => None,
        })
        .filter(|text| text.starts_with(prefix))
        .cloned()
        .collect()
}

/// Where the relay process of case (e) keeps its data; set only in that
/// process (this test binary, run again by the test).
pub(crate) const RELAY_PROCESS_DIR: &str = "SOTTO_FAULTS_RELAY_DIR";
pub(crate) const RELAY_PROCESS_PORT: &str = "SOTTO_FAULTS_RELAY_PORT";

/// Not a test: the relay of case (e) as a process of its own, which the
/// test kills with SIGKILL. The test runs this binary again with only
/// this function selected and [`RELAY_PROCESS_DIR`] set; it starts
/// `sotto_testkit::Relay` there, prints its address and runs until
/// killed (or its standard input closes: the test is gone). Run as an
/// ordinary test, it does nothing.
#[test]
#[allow(clippy::print_stdout)] // its address, for the test that started it
fn relay_process_for_the_kill_case() {
    let Some(dir) = std::env::var_os(RELAY_PROCESS_DIR) else {
        return;
    };
    let port = std::env::var(RELAY_PROCESS_PORT).unwrap().parse().unwrap();
    let relay = Relay::start(std::path::Path::new(&dir), port);
    println!("{ADDRESS_LINE}{}", relay.address);
    // Until killed, or until the test that started it is gone (its end
    // of standard input closed), so that no relay outlives its test.
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    std::process::exit(0);
}

/// The relay as a process of its own: this test binary, run again as
/// [`relay_process_for_the_kill_case`], keeping its data in `dir` and
/// listening on `port` (0: any free one).
pub(crate) fn relay_process(dir: &std::path::Path, port: u16) -> RelayProcess {
    let port = port.to_string();
    RelayProcess::start(
        "fault_kit::relay_process_for_the_kill_case",
        &[
            (RELAY_PROCESS_DIR, dir.as_os_str()),
            (RELAY_PROCESS_PORT, std::ffi::OsStr::new(&port)),
        ],
    )
}
