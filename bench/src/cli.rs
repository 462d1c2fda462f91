//! The command line: the scenarios and their options.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::forwarder;

/// Load generator for sotto's relay, compared with a bare TLS forwarder.
#[derive(Debug, Parser)]
#[command(about, long_about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Direct messages between pairs of clients.
    Dm(DmArgs),
    /// Fan-out: one room, some members sending, all receiving.
    Room(RoomArgs),
    /// Resident memory per registered idle client.
    Idle(IdleArgs),
    /// Full TLS 1.3 handshakes per second.
    Handshakes(HandshakeArgs),
    /// The blob path: 64 KiB chunks uploaded and fetched (the relay),
    /// against 64 KiB direct frames (the forwarder).
    Blobs(BlobArgs),
    /// The bare forwarder baseline (started by the other commands).
    #[command(hide = true)]
    Forwarder(forwarder::ForwarderArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Rounds; each round runs the relay, then the cluster (with
    /// --cluster), then the in-memory relay (with --baseline-relay), then
    /// the forwarder.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Which targets to run.
    #[arg(long, value_enum, default_value_t = Targets::Both)]
    pub(crate) targets: Targets,
    /// The relay binary [default: `relay` next to this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay_bin: Option<PathBuf>,
    /// A second relay binary run as the baseline target "in-memory" in
    /// every round, after the relay: the relay of before issue 13 (commit
    /// 75849f6), which kept live deliveries in memory only.
    #[arg(long, value_name = "PATH")]
    pub(crate) baseline_relay: Option<PathBuf>,
    /// Directory for the targets' logs and the relays' data (dm and room: a
    /// fresh data directory per relay and round, removed after the round;
    /// idle and handshakes: one per relay, kept across rounds) [default: a
    /// fresh directory under the system's temporary directory, removed at
    /// the end].
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Extra argument for the relay, not the baseline (repeat for several).
    #[arg(long = "relay-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub(crate) relay_args: Vec<String>,
    /// RUST_LOG for the relay.
    #[arg(long, default_value = "warn")]
    pub(crate) relay_log: String,
    /// Also run a cluster as the target "cluster" in every round, after
    /// the relay: `--cluster-relays` relays (`--relay-bin`) over a fresh
    /// three-node NATS cluster (`nats-server` on the PATH, or
    /// $SOTTO_NATS_SERVER), client i on relay i mod N, so that every pair
    /// of `dm` crosses relays and so does most of a room's fan-out. Its CPU
    /// is the relays' and the NATS nodes' together.
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Relays of the cluster (with --cluster).
    #[arg(long, default_value_t = 2)]
    pub(crate) cluster_relays: usize,
    /// Identity every client registers with (one key may own many names).
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: Option<PathBuf>,
    /// Passphrase of --identity.
    #[arg(long, default_value = "sotto test vectors")]
    pub(crate) passphrase: String,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Targets {
    Both,
    Relay,
    Forwarder,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeArg {
    Closed,
    Open,
}

#[derive(Debug, clap::Args)]
pub(crate) struct TrafficArgs {
    /// Closed loop (a window of messages in flight) or open loop (a fixed rate).
    #[arg(long, value_enum, default_value_t = ModeArg::Closed)]
    pub(crate) mode: ModeArg,
    /// Closed loop: messages in flight per sender.
    #[arg(long, default_value_t = 128)]
    pub(crate) window: u64,
    /// Open loop: messages per second, all senders together.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Open loop without --rate: this fraction of the relay's closed-loop
    /// maximum, measured first in a calibration round.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) rate_fraction: f64,
    /// Open loop: pacer tick, microseconds.
    #[arg(long, default_value_t = 100)]
    pub(crate) tick_us: u64,
    /// Most frames per write.
    #[arg(long, default_value_t = 256)]
    pub(crate) batch: u64,
    /// Body length, bytes (at least 20: timestamp, sender and sequence
    /// number, so that no two bodies are the same).
    #[arg(long, default_value_t = 100)]
    pub(crate) body: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) duration: f64,
    /// Most seconds to wait for frames in flight at the end.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) drain: f64,
    /// Never acknowledge deliveries: a measured variant that shows what
    /// storing costs without removing (the relay's stored deliveries then
    /// grow: raise its bounds with --relay-arg, e.g. --offline-max-messages).
    #[arg(long)]
    pub(crate) no_ack: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DmArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
    /// Pairs of clients; each client sends to its partner.
    #[arg(long, default_value_t = 4)]
    pub(crate) pairs: u32,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RoomArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
    /// Members of the room, all receiving.
    #[arg(long, default_value_t = 32)]
    pub(crate) members: u32,
    /// Members that send.
    #[arg(long, default_value_t = 4)]
    pub(crate) senders: u32,
    /// Bytes of the key slot each room message carries for every other
    /// member, as sotto clients send them (80); 0 sends no slots, so that
    /// every member gets the same frame (the form measured before issue 13).
    /// The forwarder's frames carry this many bytes more instead.
    #[arg(long, default_value_t = 80)]
    pub(crate) slot_len: usize,
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Idle clients to hold.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) clients: u32,
    /// Clients connecting (and registering) at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Seconds to wait after the last client before reading memory.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) settle: f64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct HandshakeArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Connections handshaking at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) duration: f64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct BlobArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Pairs of clients: one uploads blobs, the other fetches them (on
    /// the forwarder: one sends 64 KiB frames to the other).
    #[arg(long, default_value_t = 4)]
    pub(crate) pairs: u32,
    /// Chunks (frames) in flight per client.
    #[arg(long, default_value_t = 16)]
    pub(crate) window: u32,
    /// Chunks per blob.
    #[arg(long, default_value_t = 64)]
    pub(crate) chunks: u32,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 3.0)]
    pub(crate) duration: f64,
}
