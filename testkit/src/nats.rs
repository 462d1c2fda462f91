//! A NATS cluster for the cluster tests (issue 15): real `nats-server`
//! processes (Debian's package) with JetStream on, on loopback ports, their
//! data in a temporary directory, joined into one cluster by their routes.
//! Clients authenticate with a user and password ([`USER`],
//! [`NatsCluster::password_file`]), as relays do in production. Each node
//! can be killed, stopped and started again on its ports and data.
//!
//! A machine without `nats-server` fails the test that asks for one, with
//! the command that installs it: never a silent skip.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::PATIENCE;

/// One node: its ports and its process while it runs.
pub struct NatsNode {
    /// Where clients connect (`nats://127.0.0.1:PORT`).
    pub client: SocketAddr,
    cluster: SocketAddr,
    monitor: SocketAddr,
    store: PathBuf,
    process: Option<Child>,
}

/// Nodes routed to each other into one cluster.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    /// Every node's cluster (route) URL.
    routes: Vec<String>,
    /// The clients' password.
    password: String,
    dir: tempfile::TempDir,
}

/// The user clients authenticate as.
pub const USER: &str = "sotto-relay";

/// The variable that makes [`crate::Relay::start`] run every relay as a
/// member of a cluster, over a one-node NATS cluster of its own: the
/// suites that apply to a cluster run so too (.ci/run runs the
/// hostile-relay suite and the fault suite's cases that apply with it).
pub const CLUSTER_MODE: &str = "SOTTO_TEST_CLUSTER";

/// Whether [`CLUSTER_MODE`] is set (to anything but `0`).
pub fn cluster_mode() -> bool {
    std::env::var_os(CLUSTER_MODE).is_some_and(|v| v != "0")
}

/// The `nats-server` to run: `$SOTTO_NATS_SERVER`, else the one on the
/// `PATH` (Debian installs it as /usr/sbin/nats-server).
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SOTTO_NATS_SERVER") {
        return PathBuf::from(path);
    }
    for dir in std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
    {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server is not installed: the cluster tests need it \
         (Debian: `apt-get install nats-server`; or set SOTTO_NATS_SERVER to its path)"
    );
}

impl NatsCluster {
    /// `n` nodes with JetStream, each routed to all the others, and waits
    /// until every node has its `n - 1` routes. The ports are free when
    /// chosen but may be taken before a node binds them (by any process
    /// of the machine): a cluster that does not form for that, or for any
    /// other reason, is started again on other ports, three times at most.
    pub fn start(n: usize) -> Self {
        const ATTEMPTS: usize = 3;
        for attempt in 1.. {
            let mut cluster = Self::spawn(n);
            match cluster.wait_until_routed() {
                Ok(()) => return cluster,
                Err(why) if attempt < ATTEMPTS => {
                    eprintln!("the NATS cluster did not form ({why}); starting it again");
                }
                Err(why) => panic!("the NATS cluster did not form {ATTEMPTS} times: {why}"),
            }
        }
        unreachable!("the attempts end with a cluster or a panic")
    }

    /// Starts `n` nodes on free ports, without waiting for them.
    fn spawn(n: usize) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("SOTTO_NATS_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("NATS cluster in {}", dir.path().display());
        }
        let mut nodes: Vec<NatsNode> = (0..n)
            .map(|i| NatsNode {
                client: crate::free_port(),
                cluster: crate::free_port(),
                monitor: crate::free_port(),
                store: dir.path().join(format!("node{i}")),
                process: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|node| format!("nats://{}", node.cluster))
            .collect();
        // Not guessable by another test's relay: the temporary directory's
        // random name and the time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = dir.path().file_name().unwrap().to_string_lossy();
        let password: String = format!("{name}{nanos}")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            node.start(i, &routes, &password);
        }
        std::fs::write(dir.path().join("password"), &password).unwrap();
        Self {
            nodes,
            routes,
            password,
            dir,
        }
    }

    /// Waits (up to [`PATIENCE`]) until every node has a route to every
    /// other; an error at once if a node exited (a port of its taken).
    fn wait_until_routed(&mut self) -> Result<(), String> {
        let routes = self.nodes.len() - 1;
        let started = Instant::now();
        loop {
            for node in &mut self.nodes {
                if let Some(status) = node.exited() {
                    return Err(format!("nats-server at {} exited: {status}", node.client));
                }
            }
            match self.nodes.iter().find(|node| node.routes() != Some(routes)) {
                None => return Ok(()),
                Some(node) if started.elapsed() >= PATIENCE => {
                    return Err(format!(
                        "nats-server at {} has {:?} routes, not {routes}",
                        node.client,
                        node.routes()
                    ));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// A file whose first line is the clients' password (for [`USER`]).
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// Starts node `i` again (after [`NatsNode::kill`] or
    /// [`NatsNode::stop`]) on its ports and data, and waits until it has
    /// its routes to every other node that runs and, if a majority runs,
    /// until its JetStream has caught up (`/healthz`): only then may
    /// another node go without JetStream losing its majority.
    pub fn restart(&mut self, i: usize) {
        let (routes, password) = (self.routes.clone(), self.password.clone());
        self.nodes[i].start(i, &routes, &password);
        let running = self.nodes.iter().filter(|n| n.running()).count();
        self.nodes[i].wait_for_routes(running - 1);
        if 2 * running > self.nodes.len() {
            self.nodes[i].wait_until_healthy();
        }
    }

    /// The index of the node that leads the stream `stream` (a KV bucket
    /// `b` is the stream `KV_b`), as a running node's monitoring endpoint
    /// reports it (`/jsz`); `None` while it has no leader.
    pub fn leader_of(&self, stream: &str) -> Option<usize> {
        let node = self.nodes.iter().find(|n| n.running())?;
        // Pretty-printed JSON: without its white space, `"key":"value"`.
        let reply: String = node
            .monitoring("/jsz?accounts=true&streams=true")?
            .split_whitespace()
            .collect();
        let detail = &reply[reply.find(&format!("\"name\":\"{stream}\""))?..];
        let at = detail.find("\"leader\":\"")? + "\"leader\":\"".len();
        let leader: String = detail[at..].chars().take_while(|&c| c != '"').collect();
        let index = leader.strip_prefix("sotto-nats-")?.parse().ok()?;
        (index < self.nodes.len()).then_some(index)
    }

    /// How a relay joins this cluster: its servers, the user and password
    /// it requires, and `replicas` copies of everything.
    pub fn relay_config(&self, replicas: usize) -> sotto_relay::ClusterConfig {
        sotto_relay::ClusterConfig {
            servers: self.nodes.iter().map(NatsNode::url).collect(),
            user: Some(USER.to_owned()),
            password_file: Some(self.password_file()),
            replicas,
            ..sotto_relay::ClusterConfig::default()
        }
    }

    /// The client URLs of every node, comma-separated, as a relay takes
    /// them (`--cluster`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl NatsNode {
    fn start(&mut self, index: usize, routes: &[String], password: &str) {
        let own = format!("nats://{}", self.cluster);
        let others: Vec<&str> = routes
            .iter()
            .filter(|r| **r != own)
            .map(String::as_str)
            .collect();
        // What the command line cannot say: messages as large as the
        // relays' largest (docs/self-hosting.md, "NATS").
        let config = self.store.with_extension("conf");
        std::fs::write(&config, "max_payload: 2MB\n").expect("the node's configuration is written");
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(&config)
            .args(["--addr", "127.0.0.1"])
            .args(["--port", &self.client.port().to_string()])
            .args(["--http_port", &self.monitor.port().to_string()])
            .args(["--jetstream", "--store_dir"])
            .arg(&self.store)
            .args(["--server_name", &format!("sotto-nats-{index}")])
            .args(["--user", USER, "--pass", password])
            // Its log beside its data, for a test that fails to look at
            // (with `SOTTO_NATS_KEEP`, the directory is kept).
            .arg("--log")
            .arg(self.store.with_extension("log"));
        // One node alone runs JetStream standalone: clustered JetStream
        // needs routes.
        if !others.is_empty() {
            command
                .args(["--cluster_name", "sotto-test"])
                .args(["--cluster", &own])
                .args(["--routes", &others.join(",")]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.process = Some(child);
    }

    /// The node's client URL, as a relay takes it.
    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    /// Kills the node at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the node gracefully (SIGTERM: it flushes its files first),
    /// and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// How the process ended, if it has.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut()?.try_wait().ok()?
    }

    /// The process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn running(&self) -> bool {
        self.process.is_some()
    }

    /// The node's store directory (JetStream's data).
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// What the node's monitoring endpoint answers at `path`.
    fn monitoring(&self, path: &str) -> Option<String> {
        crate::http_get(self.monitor, path)
    }

    /// Whether the node says it is healthy, its JetStream current
    /// (`/healthz`).
    pub fn healthy(&self) -> bool {
        self.monitoring("/healthz")
            .is_some_and(|reply| reply.contains("\"status\":\"ok\""))
    }

    /// Waits until [`NatsNode::healthy`], for up to two minutes: a node
    /// restarted beside others catches up on every stream first, slowly
    /// on a loaded machine.
    fn wait_until_healthy(&self) {
        let started = Instant::now();
        while !self.healthy() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "nats-server at {} is not healthy: {:?}",
                self.client,
                self.monitoring("/healthz")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The number of routes the node's monitoring endpoint reports.
    pub fn routes(&self) -> Option<usize> {
        let reply = self.monitoring("/routez")?;
        let at = reply.find("\"num_routes\":")? + "\"num_routes\":".len();
        let digits: String = reply[at..]
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// Waits until the node has `routes` routes, for up to a minute: a
    /// node started again recovers every stream's state before its
    /// monitoring endpoint answers, which took over 20 s once on a
    /// machine running three clusters' tests at once.
    fn wait_for_routes(&self, routes: usize) {
        let started = Instant::now();
        while self.routes() != Some(routes) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "nats-server at {} has {:?} routes, not {routes}",
                self.client,
                self.routes()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}
