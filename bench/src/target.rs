//! The process under test: a `relay` (the one under test or the
//! in-memory baseline) or a `relay-bench forwarder` child,
//! its address, and its CPU time and resident memory from `/proc`.
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
        if proto == Proto::Relay {
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
}

/// A running target.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) proto: Proto,
    pub(crate) address: RelayAddress,
    pub(crate) pid: u32,
    child: Child,
    // Held open: the forwarder exits when it closes; the relay's stdout
    // stays readable so a later print cannot fail.
    _stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    /// A relay's fresh data directory, removed once it stopped.
    data_dir: Option<PathBuf>,
}

/// CPU time and memory of a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    /// User plus system CPU seconds so far.
    pub(crate) cpu_secs: f64,
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
    /// Busy CPU seconds of the whole machine so far.
    pub(crate) machine_secs: f64,
}

impl Target {
    /// Starts a target speaking `proto` for `round`; `log` receives its
    /// stderr. A relay gets a `fresh` data directory (nothing stored or
    /// joined by an earlier round, removed when it stops), or else the one
    /// its earlier rounds used (names already claimed).
    pub(crate) async fn start(
        launch: &Launch,
        proto: Proto,
        round: usize,
        fresh: bool,
        log: &Path,
    ) -> Result<Self, BoxError> {
        let data_dir = proto.is_relay().then(|| {
            if fresh {
                launch.data_dir(proto, round.to_string())
            } else {
                launch.data_dir(proto, "kept".to_string())
            }
        });
        if fresh && let Some(dir) = &data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        let mut command = match (proto, &data_dir) {
            (Proto::Relay | Proto::InMemory, Some(data_dir)) => {
                let limits = launch.limits_file();
                std::fs::write(&limits, RELAY_LIMITS_FILE)
                    .map_err(|e| format!("cannot write {}: {e}", limits.display()))?;
                let mut command = Command::new(launch.relay_binary(proto));
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
                    .env("RUST_LOG", &launch.relay_log);
                if proto == Proto::Relay {
                    command.args(&launch.relay_args);
                }
                command
            }
            _ => {
                let mut command = Command::new(&launch.self_bin);
                command.args(["forwarder", "--listen", "127.0.0.1:0"]);
                command
            }
        };
        let stderr = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
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
        let read = tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{proto:?} target printed no address; its log:\n{log}").into());
        }
        let address: RelayAddress = line
            .trim()
            .strip_prefix("address: ")
            .ok_or_else(|| format!("unexpected first line {line:?}"))?
            .parse()?;
        Ok(Self {
            proto,
            address,
            pid,
            child,
            _stdin: stdin,
            _stdout: stdout,
            data_dir: data_dir.filter(|_| fresh),
        })
    }

    /// This target's CPU time and memory now.
    pub(crate) fn usage(&self) -> Result<Usage, BoxError> {
        usage_of(&self.pid.to_string())
    }

    /// Kills the target and waits for it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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
