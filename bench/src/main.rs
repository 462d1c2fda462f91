//! `relay-bench`: the relay's load generator (docs/benchmarks.md, with its targets).
//!
//! Each scenario starts the `relay` binary as a child process and, in the
//! same run, a bare tokio-rustls forwarder (`relay-bench forwarder`, also a
//! child process) with the same framing and write batching, and puts the
//! same load on both, interleaved: relay, forwarder, relay, forwarder... for
//! `--rounds` rounds, each target a fresh process (in `dm` and `room` a
//! relay on a fresh data directory; `idle` and `handshakes` keep each
//! relay's across rounds, names claimed once). With `--baseline-relay PATH` a second relay binary (the
//! in-memory relay of before issue 13) runs after the relay in every
//! round. It prints every round's figures, then each figure's median and
//! min-max spread and the per-round ratios relay/in-memory,
//! relay/forwarder and in-memory/forwarder. With `--cluster`, a cluster
//! runs after the relay in every round: `--cluster-relays` relays over a
//! fresh three-node NATS cluster (`nats-server`), client i on relay i mod
//! N, its CPU its relays' and NATS nodes' together; the ratios then start
//! with cluster/relay. Every phase has a fixed length; children are
//! killed when the bench exits, fails or is interrupted.
//!
//! Clients behave as sotto clients do towards the relay: route ids increase
//! on every connection, `Sent` is read as cumulative, every delivery is
//! acknowledged (all those of one read in one write), and room messages
//! carry a key slot per other member (`--slot-len`).
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
//! sender, each in flight until it is both accepted by a `Sent` and
//! delivered) or open loop (`--mode open`, a fixed total `--rate`, or
//! `--rate-fraction` of the relay's closed-loop maximum measured first),
//! with latency from each frame's timestamp in an HDR histogram.
//!
//! # Layout
//!
//! - `cli`: the command line.
//! - `env`: the environment of a run: the binaries, the work directory,
//!   the clients' identity, the report's header.
//! - `scenarios`: each scenario's rounds and the figures they report.
//! - `wire`: frame templates and allocation-free parsing of what comes back.
//! - `load`: clients (`load/client.rs`), the traffic phase
//!   (`load/traffic.rs`), handshake storms (`load/handshake.rs`).
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

mod cli;
mod env;
mod forwarder;
mod load;
mod report;
mod scenarios;
mod target;
mod wire;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::env::Env;
use crate::scenarios::{Shape, handshakes, idle, traffic};

/// Errors of the bench: reported, never panicked on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Dm(a) => a.common.threads,
        Command::Room(a) => a.common.threads,
        Command::Idle(a) => a.common.threads,
        Command::Handshakes(a) => a.common.threads,
        Command::Blobs(a) => a.common.threads,
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
            let shape = Shape::Room {
                members,
                senders,
                slot_len: args.slot_len,
            };
            traffic(&env, &args.traffic, shape).await
        }
        Command::Idle(args) => idle(&args).await,
        Command::Handshakes(args) => handshakes(&args).await,
        Command::Blobs(args) => scenarios::blobs(&args).await,
    }
}
