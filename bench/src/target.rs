//! The process under test: a `relay` (the one under test or the
//! in-memory baseline), a cluster (relays over three `nats-server`
//! nodes) or a `relay-bench forwarder` child, its addresses, and its CPU
//! time and resident memory from `/proc`.
//!
//! Children are killed when their [`Target`] is dropped, so an error, a
//! panic or Ctrl-C in the bench never leaves one behind; the forwarder also
//! exits when its stdin (a pipe from the bench) closes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sotto_proto::RelayAddress;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use sotto_relay::tls;
use sotto_testkit::nats::{self, NatsCluster};

use crate::BoxError;
use crate::wire::Proto;

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// How to start the targets.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    /// The `relay` binary.
    pub(crate) relay_bin: PathBuf,
    /// The in-memory relay's binary, if it is run.
    pub(crate) baseline_bin: Option<PathBuf>,
    /// This binary, for `relay-bench forwarder`.
    pub(crate) self_bin: PathBuf,
    /// Where the relays' data directories (one per relay and round) and
    /// the limits file go.
    pub(crate) work_dir: PathBuf,
    /// Extra arguments for the relay (not the baseline), after the
    /// benchmark limits.
    pub(crate) relay_args: Vec<String>,
    /// RUST_LOG for the relay.
    pub(crate) relay_log: String,
    /// Relays of the cluster target.
    pub(crate) cluster_relays: usize,
}

/// The benchmark limits: nothing in the relay's defaults may throttle the
/// load generator (rate limit, queue, connection and idle limits).
const RELAY_LIMITS: &[&str] = &[
    "--rate-per-sec",
    "10000000",
    "--rate-burst",
    "10000000",
    "--outbound-queue",
    "65536",
    "--max-connections",
    "20000",
    "--handshake-timeout",
    "600",
    "--idle-timeout",
    "3600",
    "--keepalive-interval",
    "1800",
];

/// The benchmark limits that have no flag, given to the relay in a
/// configuration file: every client of the load registers with one key
/// and connects from one address.
const RELAY_LIMITS_FILE: &str = "\
max_connections_per_key = 20000
max_names_per_key = 1000000
max_unregistered_per_ip = 20000
outbound_queue_bytes = 1073741824
fanout_bytes_per_sec = 1125899906842624
fanout_burst_bytes = 1125899906842624
";

/// The limits on blobs, for relays that have them (not the in-memory
/// relay of before issue 13): every blob of the load is one key's.
const RELAY_BLOB_LIMITS: &str = "\
blob_quota_bytes = 1125899906842624
blob_max_total = 1125899906842624
";

impl Launch {
    /// The command line of relay `proto` (round N's data directory shown
    /// as `*-N`), for the report.
    pub(crate) fn relay_command(&self, proto: Proto) -> String {
        let mut words = vec![
            self.relay_binary(proto).display().to_string(),
            "--config".to_string(),
            self.limits_file().display().to_string(),
            "--listen 127.0.0.1:0 --host 127.0.0.1 --data-dir".to_string(),
            self.data_dir(proto, "N".to_string()).display().to_string(),
        ];
        words.extend(RELAY_LIMITS.iter().map(|s| (*s).to_string()));
        if proto != Proto::InMemory {
            words.extend(self.relay_args.iter().cloned());
        }
        words.join(" ")
    }

    fn relay_binary(&self, proto: Proto) -> &Path {
        match (proto, &self.baseline_bin) {
            (Proto::InMemory, Some(baseline)) => baseline,
            _ => &self.relay_bin,
        }
    }

    /// The data directory of relay `proto` in `round`.
    fn data_dir(&self, proto: Proto, round: String) -> PathBuf {
        self.work_dir
            .join(format!("data-{}-{round}", proto.label()))
    }

    /// Where [`RELAY_LIMITS_FILE`] is written.
    fn limits_file(&self) -> PathBuf {
        self.work_dir.join("relay-limits.toml")
    }

    /// The command that starts relay `proto` on `data_dir`, as
    /// [`Launch::relay_command`] shows it.
    fn relay(&self, proto: Proto, data_dir: &Path) -> Result<Command, BoxError> {
        let limits = self.limits_file();
        let text = match proto {
            Proto::InMemory => RELAY_LIMITS_FILE.to_owned(),
            _ => format!("{RELAY_LIMITS_FILE}{RELAY_BLOB_LIMITS}"),
        };
        std::fs::write(&limits, text)
            .map_err(|e| format!("cannot write {}: {e}", limits.display()))?;
        let mut command = Command::new(self.relay_binary(proto));
        command
            .arg("--config")
            .arg(&limits)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--host",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(RELAY_LIMITS)
            .env("RUST_LOG", &self.relay_log);
        if proto != Proto::InMemory {
            command.args(&self.relay_args);
        }
        Ok(command)
    }
}

/// A running target: one process (a relay, a forwarder), or a cluster's
/// relays and NATS nodes.
pub(crate) struct Target {
    pub(crate) proto: Proto,
    /// Where clients connect: client `i` to `addresses[i % len]`.
    addresses: Vec<RelayAddress>,
    processes: Vec<Process>,
    /// A cluster's NATS nodes (stopped when it drops).
    nats: Option<NatsCluster>,
    /// Fresh data directories, removed once the target stopped.
    data_dirs: Vec<PathBuf>,
}

/// One child process of a target.
struct Process {
    pid: u32,
    child: Child,
    // Held open: the forwarder exits when it closes; the relay's stdout
    // stays readable so a later print cannot fail.
    _stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

/// CPU time and memory of a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    /// User plus system CPU seconds so far (a cluster: its relays' and
    /// NATS nodes' together).
    pub(crate) cpu_secs: f64,
    /// Of which a cluster's NATS nodes spent this many.
    pub(crate) nats_secs: f64,
    /// Resident set size, KiB (a cluster: every process's together).
    pub(crate) rss_kib: u64,
    /// Busy CPU seconds of the whole machine so far.
    pub(crate) machine_secs: f64,
}

/// How long a relay may take to print its address: a relay of a cluster
/// first waits for JetStream to elect its leaders.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(120);

impl Target {
    /// Starts a target speaking `proto` for `round`; `log` receives its
    /// stderr. A relay gets a `fresh` data directory (nothing stored or
    /// joined by an earlier round, removed when it stops), or else the one
    /// its earlier rounds used (names already claimed); a cluster always
    /// starts fresh, NATS included.
    pub(crate) async fn start(
        launch: &Launch,
        proto: Proto,
        round: usize,
        fresh: bool,
        log: &Path,
    ) -> Result<Self, BoxError> {
        let stderr = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut target = Self {
            proto,
            addresses: Vec::new(),
            processes: Vec::new(),
            nats: None,
            data_dirs: Vec::new(),
        };
        match proto {
            Proto::Relay | Proto::InMemory => {
                let round = if fresh {
                    round.to_string()
                } else {
                    "kept".to_string()
                };
                let data_dir = launch.data_dir(proto, round);
                if fresh {
                    let _ = std::fs::remove_dir_all(&data_dir);
                    target.data_dirs.push(data_dir.clone());
                }
                let command = launch.relay(proto, &data_dir)?;
                target.spawn(command, stderr, log).await?;
            }
            Proto::Cluster => {
                let nats = tokio::task::spawn_blocking(|| NatsCluster::start(3))
                    .await
                    .map_err(|e| {
                        format!("the NATS cluster did not start (is nats-server installed?): {e}")
                    })?;
                let (urls, password) = (nats.urls(), nats.password_file());
                target.nats = Some(nats);
                let first = launch.data_dir(proto, format!("{round}-0"));
                for i in 0..launch.cluster_relays {
                    let data_dir = launch.data_dir(proto, format!("{round}-{i}"));
                    let _ = std::fs::remove_dir_all(&data_dir);
                    target.data_dirs.push(data_dir.clone());
                    if i > 0 {
                        // The cluster's one key, made by its first relay.
                        std::fs::create_dir_all(&data_dir)?;
                        for file in [tls::GENERATED_CERT, tls::GENERATED_KEY] {
                            std::fs::copy(first.join(file), data_dir.join(file))?;
                        }
                    }
                    let mut command = launch.relay(proto, &data_dir)?;
                    command
                        .args(["--cluster", &urls, "--cluster-user", nats::USER])
                        .arg("--cluster-password-file")
                        .arg(&password);
                    target.spawn(command, stderr.try_clone()?, log).await?;
                }
                for address in &target.addresses {
                    serving(address).await?;
                }
            }
            Proto::Forwarder => {
                let mut command = Command::new(&launch.self_bin);
                command.args(["forwarder", "--listen", "127.0.0.1:0"]);
                target.spawn(command, stderr, log).await?;
            }
        }
        Ok(target)
    }

    /// Starts one process of the target and reads the address it prints.
    async fn spawn(
        &mut self,
        mut command: Command,
        stderr: std::fs::File,
        log: &Path,
    ) -> Result<(), BoxError> {
        let proto = self.proto;
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {proto:?} target: {e}"))?;
        let pid = child.id().ok_or("the target exited at once")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        let read = tokio::time::timeout(ADDRESS_TIMEOUT, stdout.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{proto:?} target printed no address; its log:\n{log}").into());
        }
        let address: RelayAddress = line
            .trim()
            .strip_prefix("address: ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        self.addresses.push(address);
        self.processes.push(Process {
            pid,
            child,
            _stdin: stdin,
            _stdout: stdout,
        });
        Ok(())
    }

    /// Where client `index` connects.
    pub(crate) fn address_for(&self, index: u32) -> Result<&RelayAddress, BoxError> {
        let at = usize::try_from(index).unwrap_or(0) % self.addresses.len().max(1);
        Ok(self.addresses.get(at).ok_or("the target has no address")?)
    }

    /// This target's CPU time and memory now: its processes' together.
    pub(crate) fn usage(&self) -> Result<Usage, BoxError> {
        let mut total = Usage {
            machine_secs: machine_busy_secs()?,
            ..Usage::default()
        };
        let nats = self
            .nats
            .iter()
            .flat_map(|n| n.nodes.iter().filter_map(|node| node.pid()));
        for (pid, of_nats) in self
            .processes
            .iter()
            .map(|p| (p.pid, false))
            .chain(nats.map(|pid| (pid, true)))
        {
            let usage = usage_of(&pid.to_string())?;
            total.cpu_secs += usage.cpu_secs;
            total.rss_kib += usage.rss_kib;
            if of_nats {
                total.nats_secs += usage.cpu_secs;
            }
        }
        Ok(total)
    }

    /// Kills the target and waits for it.
    pub(crate) async fn stop(mut self) {
        for process in &mut self.processes {
            let _ = process.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await;
        }
        if let Some(nats) = self.nats.take() {
            let _ = tokio::task::spawn_blocking(move || drop(nats)).await;
        }
        for dir in &self.data_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Waits until the relay at `address` completes a TLS handshake: a relay
/// of a cluster prints its address once it listens, and serves once it
/// has joined NATS (until then connections wait in its listener's queue).
async fn serving(address: &RelayAddress) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + ADDRESS_TIMEOUT;
    while sotto_client::tls::connect(address).await.is_err() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("the relay at {address} never served").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// CPU time and memory of `/proc/<pid>` (`self` for this process), with
/// the machine's busy time.
pub(crate) fn usage_of(pid: &str) -> Result<Usage, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at
    // field 3, "state"; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64, BoxError> {
        let field = fields.get(i).ok_or("short /proc stat")?;
        Ok(field.parse::<u64>()? as f64)
    };
    let cpu_secs = (ticks(11)? + ticks(12)?) / USER_HZ;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or("no VmRSS in /proc status")?
        .parse()?;
    Ok(Usage {
        cpu_secs,
        nats_secs: 0.0,
        rss_kib,
        machine_secs: machine_busy_secs()?,
    })
}

/// CPU seconds the whole machine has spent busy (all cores, everything
/// but idle and iowait), from `/proc/stat`: with the target's and the
/// bench's own, it shows how much else ran during a measurement.
pub(crate) fn machine_busy_secs() -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok(total.saturating_sub(idle) as f64 / USER_HZ)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
