//! `relay-bench`: the relay's load generator (docs/benchmarks.md, with its targets).
//!
//! Each scenario starts the `relay` binary as a child process and, in the
//! same run, a bare tokio-rustls forwarder (`relay-bench forwarder`, also a
//! child process) with the same framing and write batching, and puts the
//! same load on both, interleaved: relay, forwarder, relay, forwarder... for
//! `--rounds` rounds, each target a fresh process. It prints every round's
//! figures, then each figure's median and min-max spread and the per-round
//! ratio relay/forwarder. Every phase has a fixed length; children are
//! killed when the bench exits, fails or is interrupted.
//!
//! Scenarios:
//!
//! - `dm`: `--pairs` pairs of clients sending each other 100-byte bodies.
//! - `room`: one room of `--members`, `--senders` of them sending; counts
//!   fan-out deliveries.
//! - `idle`: `--clients` registered idle clients; resident memory per client.
//! - `handshakes`: full TLS 1.3 handshakes per second.
//!
//! `dm` and `room` run closed loop (`--window` messages in flight per
//! sender) or open loop (`--mode open`, a fixed total `--rate`, or
//! `--rate-fraction` of the relay's closed-loop maximum measured first),
//! with latency from each frame's timestamp in an HDR histogram.
//!
//! # Layout
//!
//! - `wire`: frame templates and allocation-free parsing of what comes back.
//! - `load`: clients, the traffic phase, idle clients, handshake storms.
//! - `target`: the child processes and `/proc`.
//! - `forwarder`: the baseline server.
//! - `report`: rounds, medians, spreads and ratios.

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    reason = "a benchmark's report is its output, on stdout"
)]
#![allow(
    clippy::cast_possible_truncation,
    reason = "schedules and figures are computed in f64 and rounded down to whole \
              nanoseconds or counts on purpose (an f64 to u64 cast saturates)"
)]

mod forwarder;
mod load;
mod report;
mod target;
mod wire;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use sotto_crypto::Identity;

use crate::load::{Bench, Clock, Mode, Sender, Traffic};
use crate::report::{Figures, Report};
use crate::target::{Launch, Target, Usage};
use crate::wire::{Proto, Template, fwd};

/// Errors of the bench: reported, never panicked on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Load generator for sotto's relay, compared with a bare TLS forwarder.
#[derive(Debug, Parser)]
#[command(about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Direct messages between pairs of clients.
    Dm(DmArgs),
    /// Fan-out: one room, some members sending, all receiving.
    Room(RoomArgs),
    /// Resident memory per registered idle client.
    Idle(IdleArgs),
    /// Full TLS 1.3 handshakes per second.
    Handshakes(HandshakeArgs),
    /// The bare forwarder baseline (started by the other commands).
    #[command(hide = true)]
    Forwarder(forwarder::ForwarderArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Rounds; each round runs the relay, then the forwarder.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Which targets to run.
    #[arg(long, value_enum, default_value_t = Targets::Both)]
    targets: Targets,
    /// The relay binary [default: `relay` next to this executable].
    #[arg(long, value_name = "PATH")]
    relay_bin: Option<PathBuf>,
    /// Directory for the relay's data and both targets' logs [default: a
    /// fresh directory under the system's temporary directory, removed at
    /// the end].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Extra argument for the relay (repeat for several).
    #[arg(long = "relay-arg", value_name = "ARG", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// RUST_LOG for the relay.
    #[arg(long, default_value = "warn")]
    relay_log: String,
    /// Identity every client registers with (one key may own many names).
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Passphrase of --identity.
    #[arg(long, default_value = "sotto test vectors")]
    passphrase: String,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Targets {
    Both,
    Relay,
    Forwarder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Closed,
    Open,
}

#[derive(Debug, clap::Args)]
struct TrafficArgs {
    /// Closed loop (a window of messages in flight) or open loop (a fixed rate).
    #[arg(long, value_enum, default_value_t = ModeArg::Closed)]
    mode: ModeArg,
    /// Closed loop: messages in flight per sender.
    #[arg(long, default_value_t = 128)]
    window: u64,
    /// Open loop: messages per second, all senders together.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop without --rate: this fraction of the relay's closed-loop
    /// maximum, measured first in a calibration round.
    #[arg(long, default_value_t = 0.5)]
    rate_fraction: f64,
    /// Open loop: pacer tick, microseconds.
    #[arg(long, default_value_t = 100)]
    tick_us: u64,
    /// Most frames per write.
    #[arg(long, default_value_t = 256)]
    batch: u64,
    /// Body length, bytes (at least 12: timestamp and sender).
    #[arg(long, default_value_t = 100)]
    body: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Most seconds to wait for frames in flight at the end.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
}

#[derive(Debug, clap::Args)]
struct DmArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Pairs of clients; each client sends to its partner.
    #[arg(long, default_value_t = 4)]
    pairs: u32,
}

#[derive(Debug, clap::Args)]
struct RoomArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Members of the room, all receiving.
    #[arg(long, default_value_t = 32)]
    members: u32,
    /// Members that send.
    #[arg(long, default_value_t = 4)]
    senders: u32,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Idle clients to hold.
    #[arg(long, default_value_t = 10_000)]
    clients: u32,
    /// Clients connecting (and registering) at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to wait after the last client before reading memory.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
}

#[derive(Debug, clap::Args)]
struct HandshakeArgs {
    #[command(flatten)]
    common: Common,
    /// Connections handshaking at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Dm(a) => a.common.threads,
        Command::Room(a) => a.common.threads,
        Command::Idle(a) => a.common.threads,
        Command::Handshakes(a) => a.common.threads,
        // The relay's #[tokio::main]: one worker per core.
        Command::Forwarder(_) => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("relay-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(cli.command) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("relay-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), BoxError> {
    match command {
        Command::Forwarder(args) => forwarder::serve(args).await,
        Command::Dm(args) => {
            let pairs = args.pairs.max(1);
            let env = Env::new(&args.common, "dm")?;
            traffic(&env, &args.traffic, Shape::Dm { pairs }).await
        }
        Command::Room(args) => {
            let members = args.members.max(2);
            let senders = args.senders.clamp(1, members);
            let env = Env::new(&args.common, "room")?;
            traffic(&env, &args.traffic, Shape::Room { members, senders }).await
        }
        Command::Idle(args) => idle(&args).await,
        Command::Handshakes(args) => handshakes(&args).await,
    }
}

/// What every scenario needs: how to start targets, the shared client
/// context and where logs go.
struct Env {
    launch: Launch,
    bench: Arc<Bench>,
    rounds: usize,
    targets: Vec<Proto>,
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
    fn new(common: &Common, scenario: &str) -> Result<Self, BoxError> {
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
        let targets = match common.targets {
            Targets::Both => vec![Proto::Relay, Proto::Forwarder],
            Targets::Relay => vec![Proto::Relay],
            Targets::Forwarder => vec![Proto::Forwarder],
        };
        let launch = Launch {
            relay_bin,
            self_bin,
            data_dir: dir.path.join("relay-data"),
            relay_args: common.relay_args.clone(),
            relay_log: common.relay_log.clone(),
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
        println!("relay:   {}", self.launch.relay_command());
        println!(
            "machine: {cores} cores, {cpu}, Linux {}; bench runtime {threads} worker threads",
            kernel.trim()
        );
        println!();
    }

    fn log(&self, round: usize, proto: Proto) -> PathBuf {
        self.dir
            .path
            .join(format!("{proto:?}-{round}.log").to_lowercase())
    }

    async fn start(&self, round: usize, proto: Proto) -> Result<Target, BoxError> {
        let target = Target::start(&self.launch, proto, &self.log(round, proto)).await?;
        // Let it finish starting (runtime threads, database) before measuring.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(target)
    }
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Dm { pairs: u32 },
    Room { members: u32, senders: u32 },
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn cpu(usage: (Usage, Usage)) -> f64 {
    usage.1.cpu_secs - usage.0.cpu_secs
}

/// Cores busy with anything but the target and the bench during a window.
fn other_cores(target: (Usage, Usage), bench: (Usage, Usage), secs: f64) -> f64 {
    let machine = target.1.machine_secs - target.0.machine_secs;
    ((machine - cpu(target) - cpu(bench)) / secs).max(0.0)
}

async fn traffic(env: &Env, args: &TrafficArgs, shape: Shape) -> Result<(), BoxError> {
    let mode = match (args.mode, args.rate) {
        (ModeArg::Closed, _) => Mode::Closed {
            window: args.window,
        },
        (ModeArg::Open, Some(rate)) => Mode::Open {
            rate,
            tick: Duration::from_micros(args.tick_us),
        },
        (ModeArg::Open, None) => {
            let figures = traffic_round(
                env,
                args,
                shape,
                Mode::Closed {
                    window: args.window,
                },
                0,
                Proto::Relay,
            )
            .await?;
            let max = figures
                .iter()
                .find(|(n, _)| *n == "msgs/s")
                .map_or(0.0, |(_, v)| *v);
            let rate = (max * args.rate_fraction).max(1.0);
            println!(
                "calibration: relay closed-loop maximum {max:.0} msgs/s; open loop at {:.2} of it: {rate:.0} msgs/s",
                args.rate_fraction
            );
            Mode::Open {
                rate,
                tick: Duration::from_micros(args.tick_us),
            }
        }
    };
    let mut report = Report::default();
    for round in 1..=env.rounds {
        for &proto in &env.targets {
            let figures = traffic_round(env, args, shape, mode, round, proto).await?;
            report.add(round, proto, figures);
        }
    }
    report.summary();
    Ok(())
}

async fn traffic_round(
    env: &Env,
    args: &TrafficArgs,
    shape: Shape,
    mode: Mode,
    round: usize,
    proto: Proto,
) -> Result<Figures, BoxError> {
    let target = env.start(round, proto).await?;
    let body = args.body.max(wire::BODY_HEADER);
    let (clients, join, fanout) = match shape {
        Shape::Dm { pairs } => (pairs * 2, false, 1),
        Shape::Room { members, .. } => (members, true, u64::from(members - 1)),
    };
    let mut senders = Vec::new();
    match shape {
        Shape::Dm { pairs } => {
            for i in 0..pairs * 2 {
                let peer = i ^ 1;
                let template = match proto {
                    Proto::Relay => Template::relay(load::to_user(peer)?, i, body)?,
                    Proto::Forwarder => Template::forwarder(fwd::DIRECT, peer, i, body)?,
                };
                senders.push(Sender {
                    conn: usize::try_from(i)?,
                    template,
                });
            }
        }
        Shape::Room { senders: count, .. } => {
            for i in 0..count {
                let template = match proto {
                    Proto::Relay => Template::relay(load::to_room()?, i, body)?,
                    Proto::Forwarder => Template::forwarder(fwd::GROUP, 0, i, body)?,
                };
                senders.push(Sender {
                    conn: usize::try_from(i)?,
                    template,
                });
            }
        }
    }
    let conns = load::connect_all(&env.bench, &target, clients, join, 32).await?;
    let plan = Traffic {
        senders,
        fanout,
        mode,
        batch: args.batch,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        drain: secs(args.drain),
    };
    let outcome = load::run_traffic(conns, &plan, &target, env.bench.clock).await?;
    target.stop().await;
    let q = |quantile: f64| outcome.latency.value_at_quantile(quantile) as f64 / 1000.0;
    let relay_cpu = cpu(outcome.target);
    let mut figures: Figures = Vec::new();
    if let Mode::Open { .. } = mode {
        figures.push(("offered/s", outcome.scheduled as f64 / outcome.secs));
    }
    figures.extend([
        ("msgs/s", outcome.sent as f64 / outcome.secs),
        ("deliveries/s", outcome.delivered as f64 / outcome.secs),
        ("p50 us", q(0.5)),
        ("p99 us", q(0.99)),
        ("p99.9 us", q(0.999)),
        ("max us", outcome.latency.max() as f64 / 1000.0),
        ("cpu s", relay_cpu),
        ("cpu cores", relay_cpu / outcome.secs),
        (
            "cpu us/delivery",
            relay_cpu * 1e6 / (outcome.delivered.max(1) as f64),
        ),
        ("rss MiB", outcome.target.1.rss_kib as f64 / 1024.0),
        ("bench cores", cpu(outcome.bench) / outcome.secs),
        (
            "other cores",
            other_cores(outcome.target, outcome.bench, outcome.secs),
        ),
        ("missing", outcome.missing as f64),
    ]);
    if outcome.lost > 0 {
        println!(
            "warning: {} connection(s) closed during the round; see {}",
            outcome.lost,
            env.log(round, proto).display()
        );
    }
    Ok(figures)
}

async fn idle(args: &IdleArgs) -> Result<(), BoxError> {
    let env = Env::new(&args.common, "idle")?;
    if let Some(limit) = target::open_file_limit()
        && limit < u64::from(args.clients) + 64
    {
        return Err(format!(
            "{} clients need {} open files but the limit is {limit}: raise it (ulimit -n) or pass fewer --clients",
            args.clients,
            u64::from(args.clients) + 64
        )
        .into());
    }
    let mut report = Report::default();
    for round in 1..=env.rounds {
        for &proto in &env.targets {
            let target = env.start(round, proto).await?;
            let before = target.usage()?;
            let started = Instant::now();
            let conns =
                load::connect_all(&env.bench, &target, args.clients, false, args.concurrency)
                    .await?;
            let setup = started.elapsed().as_secs_f64();
            tokio::time::sleep(secs(args.settle)).await;
            let after = target.usage()?;
            drop(conns);
            target.stop().await;
            let clients = f64::from(args.clients.max(1));
            let grown = after.rss_kib.saturating_sub(before.rss_kib) as f64;
            report.add(
                round,
                proto,
                vec![
                    ("clients", clients),
                    ("rss before MiB", before.rss_kib as f64 / 1024.0),
                    ("rss after MiB", after.rss_kib as f64 / 1024.0),
                    ("KiB/client", grown / clients),
                    ("setup s", setup),
                    ("connects/s", clients / setup.max(1e-9)),
                ],
            );
        }
    }
    report.summary();
    Ok(())
}

async fn handshakes(args: &HandshakeArgs) -> Result<(), BoxError> {
    let env = Env::new(&args.common, "handshakes")?;
    let mut report = Report::default();
    for round in 1..=env.rounds {
        for &proto in &env.targets {
            let target = env.start(round, proto).await?;
            let outcome = load::handshakes(
                &target,
                args.concurrency,
                secs(args.warmup),
                secs(args.duration),
                env.bench.clock,
            )
            .await?;
            target.stop().await;
            let target_cpu = cpu(outcome.target);
            report.add(
                round,
                proto,
                vec![
                    ("handshakes/s", outcome.completed as f64 / outcome.secs),
                    ("cpu cores", target_cpu / outcome.secs),
                    (
                        "cpu us/handshake",
                        target_cpu * 1e6 / outcome.completed.max(1) as f64,
                    ),
                    ("bench cores", cpu(outcome.bench) / outcome.secs),
                    (
                        "other cores",
                        other_cores(outcome.target, outcome.bench, outcome.secs),
                    ),
                    ("failed", outcome.failed as f64),
                ],
            );
        }
    }
    report.summary();
    Ok(())
}
