//! Running the scenarios: their rounds, each target a fresh process, and
//! the figures of every round.

use std::time::{Duration, Instant};

use crate::BoxError;
use crate::cli::{BlobArgs, HandshakeArgs, IdleArgs, ModeArg, TrafficArgs};
use crate::env::Env;
use crate::load::{self, Mode, Sender, Traffic};
use crate::report::{Figures, Report};
use crate::target::{self, Usage};
use crate::wire::{self, Proto, Template, fwd};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    Dm {
        pairs: u32,
    },
    Room {
        members: u32,
        senders: u32,
        /// Bytes of each member's key slot (0: no slots).
        slot_len: usize,
    },
}

/// How long a cluster's relays are given to learn of the room's members
/// before the traffic starts (a lag shows as `missing`).
const CLUSTER_SETTLE: Duration = Duration::from_secs(2);

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

pub(crate) async fn traffic(env: &Env, args: &TrafficArgs, shape: Shape) -> Result<(), BoxError> {
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
    let target = env.start(round, proto, true).await?;
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
                    Proto::Relay | Proto::InMemory | Proto::Cluster => {
                        Template::relay(load::to_user(peer)?, i, body, Vec::new())?
                    }
                    Proto::Forwarder => Template::forwarder(fwd::DIRECT, peer, i, body, 0)?,
                };
                senders.push(Sender {
                    conn: usize::try_from(i)?,
                    template,
                });
            }
        }
        Shape::Room {
            members,
            senders: count,
            slot_len,
        } => {
            for i in 0..count {
                let template = match proto {
                    Proto::Relay | Proto::InMemory | Proto::Cluster => {
                        // One slot per other member, as a sotto client
                        // wraps the message key for each.
                        let others = (0..members)
                            .filter(|&j| j != i)
                            .map(load::user_name)
                            .collect::<Result<Vec<_>, _>>()?;
                        let slots = if slot_len > 0 {
                            wire::slots(&others, slot_len)
                        } else {
                            Vec::new()
                        };
                        Template::relay(load::to_room()?, i, body, slots)?
                    }
                    Proto::Forwarder => Template::forwarder(fwd::GROUP, 0, i, body, slot_len)?,
                };
                senders.push(Sender {
                    conn: usize::try_from(i)?,
                    template,
                });
            }
        }
    }
    let conns = load::connect_all(&env.bench, &target, clients, join, 32).await?;
    if proto == Proto::Cluster && join {
        // Each relay learns the members who joined through the others
        // from NATS.
        tokio::time::sleep(CLUSTER_SETTLE).await;
    }
    let plan = Traffic {
        senders,
        fanout,
        mode,
        batch: args.batch,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        drain: secs(args.drain),
        ack: !args.no_ack,
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
    ]);
    if proto == Proto::Cluster {
        let nats_cpu = outcome.target.1.nats_secs - outcome.target.0.nats_secs;
        figures.push((
            "nats us/delivery",
            nats_cpu * 1e6 / (outcome.delivered.max(1) as f64),
        ));
    }
    figures.extend([
        ("bench cores", cpu(outcome.bench) / outcome.secs),
        (
            "other cores",
            other_cores(outcome.target, outcome.bench, outcome.secs),
        ),
        ("missing", outcome.missing as f64),
        ("refused", outcome.refused as f64),
        (
            "sends/Sent",
            outcome.sent as f64 / outcome.sent_frames.max(1) as f64,
        ),
    ]);
    if outcome.refused > 0 {
        println!(
            "warning: the {} refused {} send(s) or recipients (Error, Undelivered)",
            proto.label(),
            outcome.refused
        );
    }
    if outcome.lost > 0 {
        println!(
            "warning: {} connection(s) closed during the round; see {}",
            outcome.lost,
            env.log(round, proto).display()
        );
    }
    Ok(figures)
}

pub(crate) async fn idle(args: &IdleArgs) -> Result<(), BoxError> {
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
            let target = env.start(round, proto, false).await?;
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

pub(crate) async fn handshakes(args: &HandshakeArgs) -> Result<(), BoxError> {
    let env = Env::new(&args.common, "handshakes")?;
    let mut report = Report::default();
    for round in 1..=env.rounds {
        for &proto in &env.targets {
            let target = env.start(round, proto, false).await?;
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

/// The blob path against the forwarder at the same frame size: each round
/// the relay (pairs uploading and fetching 64 KiB chunks), then the
/// forwarder (pairs sending 64 KiB frames one way, closed loop with the
/// same window). A chunk fetched counts once stored and once served, as
/// a frame forwarded counts once received and once written.
pub(crate) async fn blobs(args: &BlobArgs) -> Result<(), BoxError> {
    let env = Env::new(&args.common, "blobs")?;
    let pairs = args.pairs.max(1);
    let window = args.window.max(1);
    let chunk = sotto_proto::BLOB_CHUNK_LEN as f64;
    let mut report = Report::default();
    for round in 1..=env.rounds {
        for &proto in &env.targets {
            let figures = match proto {
                Proto::Forwarder => {
                    let forward = TrafficArgs {
                        mode: ModeArg::Closed,
                        window: u64::from(window),
                        rate: None,
                        rate_fraction: 0.5,
                        tick_us: 100,
                        batch: u64::from(window),
                        body: sotto_proto::BLOB_CHUNK_LEN,
                        warmup: args.warmup,
                        duration: args.duration,
                        drain: 2.0,
                        no_ack: false,
                    };
                    let closed = Mode::Closed {
                        window: u64::from(window),
                    };
                    let dm = Shape::Dm { pairs };
                    let figures = traffic_round(&env, &forward, dm, closed, round, proto).await?;
                    let get = |name: &str| {
                        figures
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map_or(0.0, |(_, v)| *v)
                    };
                    // Each frame forwarded is read once and written once,
                    // as a chunk is uploaded once and fetched once.
                    let per_sec = get("deliveries/s");
                    let cores = get("cpu cores");
                    vec![
                        ("MB/s", per_sec * chunk / 1e6),
                        ("frames/s", per_sec),
                        ("cpu cores", cores),
                        ("cpu us/frame", cores * 1e6 / per_sec.max(1e-9)),
                        ("bench cores", get("bench cores")),
                        ("other cores", get("other cores")),
                    ]
                }
                _ => {
                    let target = env.start(round, proto, true).await?;
                    let conns =
                        load::connect_all(&env.bench, &target, pairs * 2, false, 32).await?;
                    let plan = load::BlobPlan {
                        window,
                        chunks: args.chunks.max(1),
                        warmup: secs(args.warmup),
                        duration: secs(args.duration),
                    };
                    let outcome = load::run_blobs(conns, plan, &target, env.bench.clock).await?;
                    target.stop().await;
                    let per_sec = outcome.served as f64 / outcome.secs;
                    let cores = cpu(outcome.target) / outcome.secs;
                    if outcome.refused > 0 {
                        println!(
                            "warning: the {} refused {} chunk(s)",
                            proto.label(),
                            outcome.refused
                        );
                    }
                    vec![
                        ("MB/s", per_sec * chunk / 1e6),
                        ("frames/s", per_sec),
                        ("stored/s", outcome.stored as f64 / outcome.secs),
                        ("cpu cores", cores),
                        ("cpu us/frame", cores * 1e6 / per_sec.max(1e-9)),
                        ("bench cores", cpu(outcome.bench) / outcome.secs),
                        (
                            "other cores",
                            other_cores(outcome.target, outcome.bench, outcome.secs),
                        ),
                        ("refused", outcome.refused as f64),
                    ]
                }
            };
            report.add(round, proto, figures);
        }
    }
    report.summary();
    Ok(())
}
