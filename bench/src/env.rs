//! The environment of a run: the relay and bench binaries, the work
//! directory for the relay's data and the logs, the identity every client
//! registers with, and the header every report starts with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sotto_crypto::Identity;

use crate::BoxError;
use crate::cli::{Common, Targets};
use crate::load::{Bench, Clock};
use crate::target::{Launch, Target};
use crate::wire::Proto;

/// What every scenario needs: how to start targets, the shared client
/// context and where logs go.
pub(crate) struct Env {
    pub(crate) launch: Launch,
    pub(crate) bench: Arc<Bench>,
    pub(crate) rounds: usize,
    pub(crate) targets: Vec<Proto>,
    dir: WorkDir,
}

/// The working directory; removed at the end if the bench made it.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Env {
    pub(crate) fn new(common: &Common, scenario: &str) -> Result<Self, BoxError> {
        let self_bin = std::env::current_exe()?;
        let relay_bin = common
            .relay_bin
            .clone()
            .unwrap_or_else(|| self_bin.with_file_name("relay"));
        if !relay_bin.exists() {
            return Err(format!(
                "no relay binary at {} (build it: cargo build --release -p sotto-relay -p sotto-bench, or pass --relay-bin)",
                relay_bin.display()
            )
            .into());
        }
        let dir = match &common.data_dir {
            Some(path) => WorkDir {
                path: path.clone(),
                remove: false,
            },
            None => WorkDir {
                path: std::env::temp_dir().join(format!("relay-bench-{}", std::process::id())),
                remove: true,
            },
        };
        std::fs::create_dir_all(&dir.path)?;
        let identity_path = common.identity.clone().unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/identities/alice.sotto-id")
        });
        let identity = Identity::load(&identity_path, common.passphrase.as_bytes())
            .map_err(|e| format!("{}: {e}", identity_path.display()))?;
        let public = Bytes::from(identity.public().to_bytes());
        if let Some(baseline) = &common.baseline_relay
            && !baseline.exists()
        {
            return Err(format!("no baseline relay binary at {}", baseline.display()).into());
        }
        let relays = common.targets != Targets::Forwarder;
        let mut targets = Vec::new();
        if relays {
            targets.push(Proto::Relay);
        }
        if relays && common.cluster {
            targets.push(Proto::Cluster);
        }
        if relays && common.baseline_relay.is_some() {
            targets.push(Proto::InMemory);
        }
        if common.targets != Targets::Relay {
            targets.push(Proto::Forwarder);
        }
        let launch = Launch {
            relay_bin,
            baseline_bin: common.baseline_relay.clone(),
            self_bin,
            work_dir: dir.path.clone(),
            relay_args: common.relay_args.clone(),
            relay_log: common.relay_log.clone(),
            cluster_relays: common.cluster_relays.max(1),
        };
        let env = Self {
            launch,
            bench: Arc::new(Bench {
                identity,
                public,
                clock: Clock::new(),
            }),
            rounds: common.rounds.max(1),
            targets,
            dir,
        };
        env.header(scenario, common.threads);
        Ok(env)
    }

    fn header(&self, scenario: &str, threads: usize) {
        let args: Vec<String> = std::env::args().collect();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        println!("# relay-bench {scenario}");
        println!("command: {}", args.join(" "));
        println!("relay:   {}", self.launch.relay_command(Proto::Relay));
        if self.targets.contains(&Proto::Cluster) {
            println!(
                "cluster: {} x {} --cluster <3 nats-server nodes, JetStream, 3 replicas, user and password>",
                self.launch.cluster_relays,
                self.launch.relay_command(Proto::Cluster)
            );
        }
        if self.targets.contains(&Proto::InMemory) {
            println!("in-memory: {}", self.launch.relay_command(Proto::InMemory));
        }
        if let Some(fs) = filesystem(&self.dir.path) {
            println!("data:    {} ({fs})", self.dir.path.display());
        }
        println!(
            "machine: {cores} cores, {cpu}, Linux {}; bench runtime {threads} worker threads",
            kernel.trim()
        );
        println!();
    }

    pub(crate) fn log(&self, round: usize, proto: Proto) -> PathBuf {
        self.dir.path.join(format!("{}-{round}.log", proto.label()))
    }

    /// Starts `proto`'s target for `round`; a relay on a `fresh` data
    /// directory (nothing stored, no membership left from an earlier round;
    /// removed when the target stops), or on the one its earlier rounds
    /// used (the idle and handshake scenarios: names already claimed, as
    /// on a relay in use).
    pub(crate) async fn start(
        &self,
        round: usize,
        proto: Proto,
        fresh: bool,
    ) -> Result<Target, BoxError> {
        let log = self.log(round, proto);
        let target = Target::start(&self.launch, proto, round, fresh, &log).await?;
        // Let it finish starting (runtime threads, database) before measuring.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(target)
    }
}

/// The type of the filesystem holding `path`, from `/proc/self/mounts`
/// (the longest mount point that is a prefix of it).
fn filesystem(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point).then(|| {
                (
                    point.len(),
                    format!("{kind} on {device}, mounted at {point}"),
                )
            })
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}
