//! sotto's end-to-end test harness: a real relay (in this process, on a
//! runtime of its own so a test can kill it at once) on 127.0.0.1 with a
//! generated certificate, and real clients (`sotto_client::session::run`)
//! with real data directories, for the cross-crate tests (`sotto-tests`)
//! and the app's (`sotto-app`).
//!
//! Test code: it panics on whatever a test did not expect.

#![forbid(unsafe_code)]
#![allow(
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    reason = "a test harness: a failed expectation is a failed test"
)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use sotto_client::account::Account;
use sotto_client::contacts::Blocked;
use sotto_client::profile::Profile;
use sotto_client::session::{
    self, Chat, Command, Config, Connection, Controller, Direction, PresenceChange, Transfer,
    TransferState, Update,
};
use sotto_crypto::Identity;
use sotto_proto::{RelayAddress, RoomName, UserName};
use sotto_relay::{CertSource, CertStore};

mod local;
pub mod nats;
pub mod process;
pub mod proxy;
pub use local::LocalRelay;
pub use proxy::{Proxy, Stats};

/// How long any expected event may take.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A loopback address whose port was free a moment ago.
pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The whole HTTP response to `GET path` from `addr` (a relay's metrics
/// endpoint, a NATS node's monitoring), or `None` if it does not answer
/// within a couple of seconds. Blocking.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// The pre-generated prekey keys of `testdata/prekey-keys.txt`, for test
/// clients (`SessionLimits::prekeys`), loaded once.
pub fn prekey_pool() -> session::PrekeySource {
    static POOL: OnceLock<session::PrekeySource> = OnceLock::new();
    POOL.get_or_init(|| {
        session::PrekeySource::pool_file(&testdata().join("prekey-keys.txt"))
            .expect("testdata/prekey-keys.txt")
    })
    .clone()
}

/// A fixture identity (testdata/identities), loaded once.
pub fn identity(name: &str) -> Arc<Identity> {
    type Loaded = Mutex<Vec<(String, Arc<Identity>)>>;
    static CACHE: OnceLock<Loaded> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
    if let Some((_, id)) = cache.iter().find(|(n, _)| n == name) {
        return id.clone();
    }
    let path = testdata().join(format!("identities/{name}.sotto-id"));
    let id = Arc::new(Identity::load(&path, b"sotto test vectors").unwrap());
    cache.push((name.to_owned(), id.clone()));
    id
}

/// The texts of the messages in `chat` that `peer` was shown live (not its
/// own), starting with `prefix`, in the order it was shown them.
pub fn shown_in(peer: &Peer, chat: &Chat, prefix: &str) -> Vec<String> {
    peer.seen
        .iter()
        .filter_map(|u| match u {
            Update::Message(m) if !m.outgoing && m.chat == *chat => Some(&m.text),
            _ => None,
        })
        .filter(|text| text.starts_with(prefix))
        .cloned()
        .collect()
}

/// Shows the relays' and clients' warnings (or what `RUST_LOG` asks for)
/// with the output of a test that fails, through the test harness's
/// capture: the first call in a test binary installs it, later calls do
/// nothing. Not for a binary whose tests install a subscriber of their
/// own.
pub fn test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A connection to the relay driven by hand at the frame level.
pub type RawFrames = tokio_util::codec::Framed<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    sotto_proto::ClientCodec,
>;

/// `name` (its fixture identity) registered on `relay` frame by frame,
/// as a modified client would: the connection once the relay answered
/// `Registered` (what came before it is passed over).
pub async fn register_raw(relay: &RelayAddress, name: &str) -> RawFrames {
    match register_raw_answer(relay, name).await {
        (framed, sotto_proto::RelayFrame::Registered { .. }) => framed,
        (_, refused) => panic!("{name}: the registration was refused: {refused:?}"),
    }
}

/// [`register_raw`], with the relay's answer to `Register`: `Registered`
/// or the `Error` that refused it (what came before it is passed over).
pub async fn register_raw_answer(
    relay: &RelayAddress,
    name: &str,
) -> (RawFrames, sotto_proto::RelayFrame) {
    use futures::SinkExt;
    use sotto_proto::{ClientFrame, RelayFrame};
    let tls = sotto_client::tls::connect(relay).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(tls, sotto_proto::ClientCodec::new());
    let Some(Ok(RelayFrame::Challenge { nonce })) = framed.next().await else {
        panic!("no challenge")
    };
    let identity = identity(name);
    let proof = identity
        .sign_registration(&mut rand::rng(), &relay.fingerprint, &nonce, name)
        .unwrap();
    framed
        .send(ClientFrame::Register {
            name: user(name),
            identity: identity.public().to_bytes().into(),
            proof: proof.into(),
        })
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(PATIENCE, framed.next())
            .await
            .expect("Registered in time")
            .unwrap()
            .unwrap();
        if matches!(
            frame,
            RelayFrame::Registered { .. } | RelayFrame::Error { .. }
        ) {
            return (framed, frame);
        }
    }
}

pub fn user(name: &str) -> UserName {
    name.parse().unwrap()
}

pub fn room(name: &str) -> RoomName {
    name.parse().unwrap()
}

pub fn lobby() -> Chat {
    Chat::Room(RoomName::lobby())
}

pub fn dm(name: &str) -> Chat {
    Chat::Direct(user(name))
}

/// What starting a relay takes: a listener on 127.0.0.1 (`port`, 0 for any;
/// non-blocking, for tokio), the certificate generated in `dir` (or the one
/// already there), a configuration keeping its data in `dir`, and the
/// address that pins its key.
pub(crate) struct Setup {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) config: sotto_relay::Config,
    pub(crate) address: RelayAddress,
}

impl Setup {
    pub(crate) fn new(dir: &Path, port: u16) -> Setup {
        let certs = CertStore::load(CertSource::Generated {
            dir: dir.to_path_buf(),
            hosts: vec!["localhost".into()],
        })
        .unwrap();
        let config = sotto_relay::Config {
            data_dir: dir.to_path_buf(),
            ..sotto_relay::Config::default()
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = RelayAddress {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
            fingerprint: certs.fingerprint(),
            alternates: Vec::new(),
        };
        Setup {
            listener,
            certs,
            config,
            address,
        }
    }
}

/// A relay running on a thread (and runtime) of its own.
pub struct Relay {
    pub address: RelayAddress,
    pub dir: PathBuf,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// With [`nats::CLUSTER_MODE`]: the NATS cluster it is a member of,
    /// kept across [`Relay::restart`].
    nats: Option<Arc<nats::NatsCluster>>,
}

impl Relay {
    /// Starts a relay keeping its certificate and database in `dir`, on
    /// `port` (0: any free port); with [`nats::CLUSTER_MODE`] set, as a
    /// member of a cluster over a one-node NATS cluster of its own (its
    /// data there, not in `dir`).
    pub fn start(dir: &Path, port: u16) -> Relay {
        let nats = nats::cluster_mode().then(|| Arc::new(nats::NatsCluster::start(1)));
        Self::start_over(dir, port, nats)
    }

    fn start_over(dir: &Path, port: u16, nats: Option<Arc<nats::NatsCluster>>) -> Relay {
        let cluster = nats.as_ref().map(|n| n.relay_config(1));
        let mut relay = Self::start_with(dir, port, |config| config.cluster = cluster);
        relay.nats = nats;
        relay
    }

    /// [`Relay::start`], with the relay's configuration changed by
    /// `adjust` first (a cluster to join, say).
    pub fn start_with(
        dir: &Path,
        port: u16,
        adjust: impl FnOnce(&mut sotto_relay::Config),
    ) -> Relay {
        let Setup {
            listener,
            certs,
            mut config,
            address,
        } = Setup::new(dir, port);
        adjust(&mut config);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // A relay that cannot start says why (on standard error,
                // as a panic of its task), not only by refusing to connect.
                sotto_relay::run(listener, certs, config, std::future::pending::<()>())
                    .await
                    .expect("the relay runs");
            });
            // Runs until told to stop (or the test ends), then drops every
            // task at once: the relay dies as if killed.
            let _ = stopped.recv();
            runtime.shutdown_timeout(Duration::from_secs(5));
        });
        Relay {
            address,
            dir: dir.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
            nats: None,
        }
    }

    /// Kills the relay: every connection drops, nothing is said to anyone.
    pub async fn kill(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
        }
    }

    /// Starts the relay again on the same port with the same data (in a
    /// cluster, the same NATS cluster).
    pub fn restart(&mut self) {
        let nats = self.nats.take();
        *self = Relay::start_over(&self.dir.clone(), self.address.port, nats);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

/// A real client: an account in its own data directory and a running session.
pub struct Peer {
    pub name: String,
    pub account: Account,
    pub controller: Controller,
    pub updates: Updates,
    /// Every update seen so far (copies), for assertions
    /// after the fact: [`Peer::saw`], [`Peer::seen_at`], [`Peer::count`].
    pub seen: Vec<Update>,
    /// Updates that arrived while connecting, not yet expected.
    backlog: std::collections::VecDeque<Update>,
}

/// Creates the account `name` (with the fixture identity of `fixture`) in `dir`.
pub async fn account(dir: &Path, name: &str, fixture: &str) -> Account {
    let profile = Profile::open(dir).unwrap();
    Account::open(profile, identity(fixture), Some(user(name)))
        .await
        .unwrap()
}

impl Peer {
    /// Connects `account` to `relay` and waits until it is in the lobby.
    pub async fn connect(account: Account, relay: &RelayAddress) -> Peer {
        Self::connect_with(account, relay, |_| {}).await
    }

    /// `name` (its fixture identity, its account in `dir/name`) connected
    /// to `relay`, retrying every 50-200 ms after losing its connection,
    /// with room in its outbox for everything typed while the relay is
    /// away: for the tests that kill a relay under it.
    pub async fn quick_to_return(dir: &Path, name: &str, relay: &RelayAddress) -> Peer {
        let short = Duration::from_millis(50);
        Self::connect_with(
            account(&dir.join(name), name, name).await,
            relay,
            |config| {
                config.limits.reconnect =
                    sotto_client::backoff::Backoff::new(short, short * 4, Duration::from_secs(60));
                config.limits.outbox = 1024;
            },
        )
        .await
    }

    pub async fn connect_with(
        account: Account,
        relay: &RelayAddress,
        adjust: impl FnOnce(&mut Config),
    ) -> Peer {
        let name = account.name().to_string();
        let mut config = Config::new(account.clone(), relay.clone());
        // Prekeys from the pre-generated pool: no seconds of RSA key
        // generation per client.
        config.limits.prekeys = prekey_pool();
        adjust(&mut config);
        let mut updates: Updates = Box::pin(session::run(config));
        let Some(Update::Ready(controller)) = updates.next().await else {
            panic!("no controller");
        };
        let mut peer = Peer {
            name,
            account,
            controller,
            updates,
            seen: Vec::new(),
            backlog: Default::default(),
        };
        let mut early = Vec::new();
        loop {
            let update = peer.next().await;
            let joined = matches!(update, Update::Joined { .. });
            early.push(update);
            if joined {
                break;
            }
        }
        peer.backlog = early.into();
        peer
    }

    /// Starts a named client with a fixture identity in a fresh directory
    /// under `base`.
    pub async fn join(base: &Path, name: &str, relay: &RelayAddress) -> Peer {
        let dir = base.join(name);
        Peer::connect(account(&dir, name, name).await, relay).await
    }

    async fn next(&mut self) -> Update {
        let next = tokio::time::timeout(PATIENCE, self.updates.next()).await;
        let update = match next {
            Ok(Some(update)) => update,
            Ok(None) => panic!("{}: session ended; seen: {:#?}", self.name, self.seen),
            Err(_) => panic!("{}: timed out; seen: {:#?}", self.name, self.seen),
        };
        self.seen.push(update.clone());
        update
    }

    /// Takes every update that is there now (into [`Peer::seen`]) without
    /// waiting: a peer whose updates nobody reads stops (its session waits
    /// for the front end), so a test that only watches another peer keeps
    /// this one going with it.
    pub fn drain(&mut self) {
        while let Some(Some(update)) = self.updates.next().now_or_never() {
            self.seen.push(update);
        }
    }

    /// The next update matching `wanted` (first among those that came while
    /// connecting), skipping others.
    pub async fn expect(&mut self, wanted: impl Fn(&Update) -> bool) -> Update {
        if let Some(index) = self.backlog.iter().position(&wanted) {
            let update = self.backlog.remove(index);
            self.backlog.drain(..index);
            if let Some(update) = update {
                return update;
            }
        }
        self.backlog.clear();
        loop {
            let update = self.next().await;
            if wanted(&update) {
                return update;
            }
        }
    }

    /// Waits until every predicate of `wanted` has matched an update, in
    /// any order; returns the matches in the order of `wanted`.
    pub async fn expect_all(&mut self, wanted: &[&dyn Fn(&Update) -> bool]) -> Vec<Update> {
        let mut found: Vec<Option<Update>> = wanted.iter().map(|_| None).collect();
        let mut backlog: Vec<Update> = self.backlog.drain(..).collect();
        backlog.reverse();
        while found.iter().any(Option::is_none) {
            let update = match backlog.pop() {
                Some(update) => update,
                None => self.next().await,
            };
            if let Some(slot) = wanted
                .iter()
                .zip(found.iter_mut())
                .find(|(want, slot)| slot.is_none() && want(&update))
                .map(|(_, slot)| slot)
            {
                *slot = Some(update);
            }
        }
        found.into_iter().flatten().collect()
    }

    /// Waits for messages in `chat` with each of `texts`, in any order.
    pub async fn expect_texts(&mut self, chat: &Chat, texts: &[&str]) -> Vec<session::Message> {
        type Wanted = Box<dyn Fn(&Update) -> bool>;
        let wanted: Vec<Wanted> = texts
            .iter()
            .map(|text| {
                let (chat, text) = (chat.clone(), text.to_string());
                Box::new(move |u: &Update| {
                    matches!(u, Update::Message(m) if m.chat == chat && m.text == text && !m.outgoing)
                }) as Wanted
            })
            .collect();
        let refs: Vec<&dyn Fn(&Update) -> bool> = wanted.iter().map(|w| w.as_ref()).collect();
        self.expect_all(&refs)
            .await
            .into_iter()
            .map(|u| match u {
                Update::Message(m) => m,
                _ => unreachable!(),
            })
            .collect()
    }

    /// Where in the updates seen so far the first one matching `wanted` is.
    pub fn seen_at(&self, wanted: impl Fn(&Update) -> bool) -> Option<usize> {
        self.seen.iter().position(wanted)
    }

    /// Whether any update seen so far matches `wanted`. Before asserting
    /// that something was *not* seen, pass a [`barrier`].
    pub fn saw(&self, wanted: impl Fn(&Update) -> bool) -> bool {
        self.seen.iter().any(wanted)
    }

    /// How many updates seen so far match `wanted`.
    pub fn count(&self, wanted: impl Fn(&Update) -> bool) -> usize {
        self.seen.iter().filter(|u| wanted(u)).count()
    }

    /// Waits for a message in `chat` whose text is `text`; returns it.
    pub async fn expect_message(&mut self, chat: &Chat, text: &str) -> session::Message {
        let update = self
            .expect(|u| matches!(u, Update::Message(m) if &m.chat == chat && m.text == text && !m.outgoing))
            .await;
        let Update::Message(message) = update else {
            unreachable!()
        };
        message
    }

    /// Waits for a message in `chat` offering a file; of `name` if given.
    pub async fn expect_file(&mut self, chat: &Chat, name: Option<&str>) -> session::Message {
        let update = self
            .expect(|u| {
                matches!(u, Update::Message(m) if m.chat == *chat
                    && m.file.as_ref().is_some_and(|f| name.is_none_or(|name| f.name == name)))
            })
            .await;
        let Update::Message(message) = update else {
            unreachable!()
        };
        message
    }

    /// Waits for the end (done or failed) of a transfer that way; of the
    /// file `name` if given.
    pub async fn transfer_ended(&mut self, name: Option<&str>, direction: Direction) -> Transfer {
        let update = self
            .expect(|u| {
                matches!(u, Update::Transfer(t) if name.is_none_or(|name| t.name == name)
                    && t.direction == direction
                    && !matches!(t.state, TransferState::Running))
            })
            .await;
        let Update::Transfer(transfer) = update else {
            unreachable!()
        };
        *transfer
    }

    /// Saves the file of `message` at `to`; the transfer's end.
    pub async fn save_file(&mut self, message: &session::Message, to: &Path) -> Transfer {
        let name = message.file.as_ref().map(|f| f.name.clone());
        self.command(Command::SaveFile {
            chat: message.chat.clone(),
            message: message.id(),
            to: to.to_path_buf(),
        });
        self.transfer_ended(name.as_deref(), Direction::Download)
            .await
    }

    /// Sends `direct` to `name` and `in_room` to the lobby, and checks that
    /// neither is encrypted to `name`: the direct message is refused with an
    /// error naming the key change, the room message is `NotSentTo` `name`.
    pub async fn expect_sending_blocked(&mut self, name: &str, direct: &str, in_room: &str) {
        self.send(dm(name), direct);
        let refused = self.expect(|u| matches!(u, Update::Error(_))).await;
        let blocked = Blocked::KeyChanged {
            name: name.to_owned(),
        };
        let expected = format!("@{name}: not sent: {blocked}");
        assert!(
            matches!(&refused, Update::Error(e)
                if e.code == session::ProblemCode::KeyChanged && e.message == expected),
            "{refused:?}"
        );
        self.send(lobby(), in_room);
        self.expect(|u| matches!(u, Update::NotSentTo { names, .. } if names == &[name]))
            .await;
    }

    /// Waits until `room`'s member list is exactly `names`.
    pub async fn expect_members(&mut self, room: &str, names: &[&str]) {
        self.expect(|u| {
            matches!(u, Update::Members { room: r, members }
                if r.as_str() == room
                    && members.iter().map(|m| m.name.as_str()).eq(names.iter().copied()))
        })
        .await;
    }

    pub fn send(&self, chat: Chat, text: &str) {
        self.controller.send(chat, text).unwrap();
    }

    pub fn command(&self, command: Command) {
        self.controller.command(command).unwrap();
    }

    /// Waits until the session reports being connected again.
    pub async fn expect_connected(&mut self) {
        self.expect(|u| matches!(u, Update::Connection(Connection::Connected { .. })))
            .await;
    }

    /// Says goodbye and waits for the session to end (so that whatever it
    /// was to write and send is written and sent).
    pub async fn quit(mut self) {
        self.controller.quit().unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.updates.next()).await {
                Ok(Some(update)) => self.seen.push(update),
                Ok(None) => return,
                Err(_) => panic!(
                    "{}: did not end after quitting; seen: {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }
}

// Predicates over updates, for `expect`, `saw`, `seen_at` and `count`.

/// A message received (not sent) with exactly `text`, in any chat, live or
/// in a chat's stored history: what "the user was shown `text`" means.
pub fn shown(text: &str) -> impl Fn(&Update) -> bool + use<> {
    let text = text.to_owned();
    move |update| match update {
        Update::Message(m) => !m.outgoing && m.text == text,
        Update::History { messages, .. } => messages.iter().any(|m| !m.outgoing && m.text == text),
        _ => false,
    }
}

/// A received message (live or stored) whose text `test` accepts.
pub fn shown_where(test: impl Fn(&str) -> bool) -> impl Fn(&Update) -> bool {
    move |update| match update {
        Update::Message(m) => !m.outgoing && test(&m.text),
        Update::History { messages, .. } => messages.iter().any(|m| !m.outgoing && test(&m.text)),
        _ => false,
    }
}

/// Something claiming to come from anyone failed its checks.
pub fn rejected(update: &Update) -> bool {
    matches!(update, Update::Rejected { .. })
}

/// A gap in some sender's numbers.
pub fn missing(update: &Update) -> bool {
    matches!(update, Update::Missing { .. })
}

/// The relay sent `update` about `name` joining or leaving `room`.
pub fn presence(name: &str, change: PresenceChange) -> impl Fn(&Update) -> bool + use<> {
    let name = name.to_owned();
    move |update| matches!(update, Update::Presence { name: n, change: c, .. } if *n == *name && *c == change)
}

/// What a [`barrier`] goes through.
pub enum Via<'a> {
    /// `from` sends `marker` to `chat` (named as `from` names it: a room,
    /// or `dm(peer)`), and the peer waits for it. The relay keeps each
    /// sender's order across rooms and direct messages and a session
    /// handles what it reads in order: once the marker is in, the peer has
    /// handled everything `from` sent before it, by either path.
    Message {
        /// The sender of the marker.
        from: &'a Peer,
        /// Where it goes.
        chat: Chat,
        /// Its text (unique in the test).
        marker: &'a str,
    },
    /// A `/users` round trip: the relay answers a connection's frames in
    /// order, so once the answer is in, the peer has handled every reply
    /// to what it sent before (an error for a message, a `Sent`), and
    /// everything the relay had queued for it.
    Relay,
}

impl<'a> Via<'a> {
    /// [`Via::Message`].
    pub fn message(from: &'a Peer, chat: Chat, marker: &'a str) -> Via<'a> {
        Via::Message { from, chat, marker }
    }
}

/// The barrier before a negative assertion ("`peer` never saw X"): makes
/// `peer` handle something that went `via` the same path as X, after it.
/// Without one, "not seen" may only mean "not yet".
pub async fn barrier(peer: &mut Peer, via: Via<'_>) {
    match via {
        Via::Message { from, chat, marker } => {
            let arrives_in = match &chat {
                Chat::Room(_) => chat.clone(),
                Chat::Direct(_) => dm(&from.name),
            };
            from.send(chat, marker);
            peer.expect_message(&arrives_in, marker).await;
        }
        Via::Relay => {
            peer.command(Command::ListUsers);
            peer.expect(|u| matches!(u, Update::Users(_))).await;
        }
    }
}

/// A relay, and the directory the peers of a test keep their data in.
pub struct Testbed {
    pub temp: tempfile::TempDir,
    pub relay: Relay,
}

impl Testbed {
    pub fn start() -> Testbed {
        let temp = tempfile::tempdir().unwrap();
        let relay = Relay::start(&temp.path().join("relay"), 0);
        Testbed { temp, relay }
    }

    /// `name`, with the fixture identity of that name, in the lobby.
    pub async fn join(&self, name: &str) -> Peer {
        Peer::join(self.temp.path(), name, &self.relay.address).await
    }
}

/// alice and bob in the lobby, each seeing both there.
pub async fn alice_and_bob() -> (Testbed, Peer, Peer) {
    let bed = Testbed::start();
    let mut alice = bed.join("alice").await;
    let mut bob = bed.join("bob").await;
    for peer in [&mut alice, &mut bob] {
        peer.expect_members("lobby", &["alice", "bob"]).await;
    }
    (bed, alice, bob)
}

/// alice, bob and carol in the lobby, each seeing all three there.
pub async fn alice_bob_carol() -> (Testbed, Peer, Peer, Peer) {
    let bed = Testbed::start();
    let mut alice = bed.join("alice").await;
    let mut bob = bed.join("bob").await;
    let mut carol = bed.join("carol").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.expect_members("lobby", &["alice", "bob", "carol"])
            .await;
    }
    (bed, alice, bob, carol)
}
