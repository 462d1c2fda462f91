//! The command line: every parameter of the model with its default, the
//! calibration costs in one place (`Costs::measured`), and their checks.

use std::ffi::OsString;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

use crate::SimError;

/// A capacity model of a sotto cluster (relays over NATS JetStream) at
/// internet scale: one simulated day of a community, second by second.
#[derive(Clone, Debug, Parser)]
#[command(name = "scaling-sim")]
pub(crate) struct Params {
    #[command(flatten)]
    pub(crate) community: CommunityArgs,
    #[command(flatten)]
    pub(crate) traffic: TrafficArgs,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    #[command(flatten)]
    pub(crate) costs: Costs,
    #[command(flatten)]
    pub(crate) failures: FailureArgs,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// Who is in the community and how they gather.
#[derive(Clone, Debug, Args)]
pub(crate) struct CommunityArgs {
    /// Registered users, all members of their rooms (users absent longer
    /// than the relay's member_absence, 30 days, are not counted: they left).
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) registered: u32,
    /// Users connected at the daily peak.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) connected: u32,
    /// Users connected at the daily trough, as a fraction of the peak.
    #[arg(long, default_value_t = 0.3)]
    pub(crate) night_fraction: f64,
    /// Hour of the daily peak (0-24, local time of the whole community).
    #[arg(long, default_value_t = 21.0)]
    pub(crate) peak_hour: f64,
    /// Hour of the daily trough.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) trough_hour: f64,
    /// Mean length of a connection (exponential), minutes.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) session_minutes: f64,
    /// How much more often the most engaged user connects than the least
    /// engaged (engagement log-uniform between them).
    #[arg(long, default_value_t = 600.0)]
    pub(crate) engagement_spread: f64,
    /// Rooms per user, on average (a truncated power law over 1..=max).
    #[arg(long, default_value_t = 8.0)]
    pub(crate) rooms_per_user: f64,
    /// Most rooms one user is in (the relay's max_rooms_per_user).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_rooms_per_user: u32,
    /// Room sizes: LO-HI:PERCENT of rooms, comma-separated; sizes
    /// log-uniform within each band (a power law: many small, few big).
    #[arg(long, default_value = "3-10:60,11-100:30,101-1000:9,1001-5000:1")]
    pub(crate) room_mix: String,
    /// Active direct-message partners per user (drawn in proportion to
    /// their engagement).
    #[arg(long, default_value_t = 20)]
    pub(crate) dm_partners: u32,
}

/// What the community sends and what the relay keeps.
#[derive(Clone, Debug, Args)]
pub(crate) struct TrafficArgs {
    /// Messages a connected user sends per day of connection, on average.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) msgs_per_user_day: f64,
    /// Share of messages that are direct messages (the rest go to rooms).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) dm_share: f64,
    /// How much faster a connected user sends at the daily peak than at
    /// the trough (the day's average stays msgs-per-user-day).
    #[arg(long, default_value_t = 3.0)]
    pub(crate) peak_factor: f64,
    /// Ciphertext body per delivery, bytes, overhead included.
    #[arg(long, default_value_t = 400)]
    pub(crate) body_bytes: u32,
    /// Key slot per recipient, bytes.
    #[arg(long, default_value_t = 80)]
    pub(crate) slot_bytes: u32,
    /// Framing per delivery (frame header, JetStream headers), bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) frame_overhead: u32,
    /// Stored deliveries older than this expire (the relay's
    /// offline_max_age; its default is 7 days).
    #[arg(long, default_value_t = 7.0)]
    pub(crate) max_age_days: f64,
    /// Most deliveries stored for one user; further ones are refused (the
    /// relay's offline_max_messages, which holds cluster-wide).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_per_user: u32,
}

/// The machines.
#[derive(Clone, Debug, Args)]
pub(crate) struct ClusterArgs {
    /// Relays (users spread over them at random).
    #[arg(long, default_value_t = 3)]
    pub(crate) relays: u32,
    /// Cores per relay machine.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) relay_cores: f64,
    /// Memory per relay machine, GiB.
    #[arg(long, default_value_t = 4.0)]
    pub(crate) relay_mem_gib: f64,
    /// NATS nodes.
    #[arg(long, default_value_t = 3)]
    pub(crate) nats_nodes: u32,
    /// JetStream replicas of SOTTO_INBOX and of the buckets.
    #[arg(long, default_value_t = 3)]
    pub(crate) replicas: u32,
    /// Cores per NATS node.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) nats_cores: f64,
    /// Memory per NATS node, GiB.
    #[arg(long, default_value_t = 8.0)]
    pub(crate) nats_mem_gib: f64,
    /// Disk for JetStream per NATS node, GiB.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) nats_disk_gib: f64,
    /// Network interface of every machine, Gbit/s each way.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) nic_gbps: f64,
    /// Highest acceptable peak use of any resource (CPU, memory, network,
    /// disk), as a fraction of the machine's.
    #[arg(long, default_value_t = 0.6)]
    pub(crate) max_utilisation: f64,
}

/// What each operation costs: the calibration of the model.
///
/// The defaults come from `Costs::measured`, the one place that holds them;
/// each field names the benchmark or test its figure comes from. They are
/// recorded, with their commands, in docs/benchmarks.md.
#[derive(Clone, Debug, Args)]
pub(crate) struct Costs {
    /// Relay CPU per delivery across relays, µs (publishing it to
    /// JetStream, taking it as the stream republishes it, handing it over,
    /// deleting it on its Ack), a write of one delivery: relays' CPU /
    /// deliveries of `relay-bench room --cluster --senders 1 --window 1`.
    #[arg(long, default_value_t = Costs::measured().relay_us_per_delivery)]
    pub(crate) relay_us_per_delivery: f64,
    /// Share of relay-us-per-delivery spent by the sender's relay (the
    /// publication); the rest by the recipient's (hand-over and Ack): the
    /// per-relay CPU of `relay-bench room --cluster`, whose sender and
    /// recipients sit on different relays.
    #[arg(long, default_value_t = Costs::measured().relay_publish_share)]
    pub(crate) relay_publish_share: f64,
    /// Relay CPU per accepted Send besides its deliveries, µs: relay CPU /
    /// messages of `relay-bench dm --cluster --window 1` less one delivery
    /// each.
    #[arg(long, default_value_t = Costs::measured().relay_us_per_send)]
    pub(crate) relay_us_per_send: f64,
    /// NATS CPU per delivery, all nodes together, µs, a write of one
    /// delivery: NATS nodes' CPU / deliveries of `relay-bench room
    /// --cluster --senders 1 --window 1`.
    #[arg(long, default_value_t = Costs::measured().nats_us_per_delivery)]
    pub(crate) nats_us_per_delivery: f64,
    /// Share of nats-us-per-delivery spent by the leader of SOTTO_INBOX
    /// (the rest split evenly over its followers): the per-node CPU of the
    /// same run.
    #[arg(long, default_value_t = Costs::measured().leader_share)]
    pub(crate) leader_share: f64,
    /// Share of nats-us-per-delivery spent when the delivery goes to its
    /// recipient (republished to its relay, purged on the Ack), not when it
    /// is published: the same run with and without acknowledgements
    /// (`--no-ack`).
    #[arg(long, default_value_t = Costs::measured().nats_handover_share)]
    pub(crate) nats_handover_share: f64,
    /// Relay memory per connected client, KiB: `relay-bench idle`
    /// (resident memory per registered idle client).
    #[arg(long, default_value_t = Costs::measured().relay_kib_per_client)]
    pub(crate) relay_kib_per_client: f64,
    /// NATS memory per connected client (its presence entry in
    /// sotto_online), KiB, on every node holding the bucket: `relay-bench
    /// idle --cluster`, NATS resident memory per client.
    #[arg(long, default_value_t = Costs::measured().nats_kib_per_client)]
    pub(crate) nats_kib_per_client: f64,
    /// Relay CPU per connection: TLS handshake and registration (RSA
    /// proof), µs: `relay-bench handshakes` plus the registration of
    /// `relay-bench idle`.
    #[arg(long, default_value_t = Costs::measured().handshake_us)]
    pub(crate) handshake_us: f64,
    /// Seconds without acknowledged publications when the node leading
    /// SOTTO_INBOX dies (JetStream's election): test
    /// `a_nats_node_lost_under_a_sender_keeps_its_order` (2-10 s).
    #[arg(long, default_value_t = Costs::measured().election_secs)]
    pub(crate) election_secs: f64,
    /// Seconds until a user of a killed relay chats on the next one: test
    /// `a_relay_killed_with_sigkill_its_users_fail_over_and_nothing_is_lost`
    /// (0.26-0.34 s, once 1.40 s).
    #[arg(long, default_value_t = Costs::measured().failover_secs)]
    pub(crate) failover_secs: f64,
    /// Stored deliveries one reconnecting client takes per second (its
    /// relay's delivery pump and its read batches): `cargo bench -p
    /// sotto-client --bench receive` bounds it from above (119,690/s);
    /// through a cluster relay not measured yet.
    #[arg(long, default_value_t = Costs::measured().drain_per_client)]
    pub(crate) drain_per_client: f64,
}

impl Costs {
    /// The calibration: every cost's default, in one place, each with
    /// where it comes from (docs/benchmarks.md, "A cluster over NATS
    /// JetStream": the delivery costs measured at commit 9a28d80 with one
    /// message in flight per sender, so that every write holds one
    /// delivery, as it does at this community's rates; docs/scaling.md
    /// lists which are measured and which are assumed).
    pub(crate) const fn measured() -> Self {
        Self {
            // Measured: relay-bench room --cluster --members 32 --senders 1
            // --window 1, relays' CPU / deliveries: 393 us in all less 322
            // in the NATS nodes.
            relay_us_per_delivery: 71.0,
            // Assumed: the per-relay split was not measured.
            relay_publish_share: 0.3,
            // Measured: relay-bench dm --cluster --pairs 64 --window 1
            // gives the relays 86 us per message with its one delivery
            // (326 us less 239 in NATS), 15 more than a delivery.
            relay_us_per_send: 15.0,
            // Measured: relay-bench room --cluster --senders 1 --window 1,
            // NATS nodes' CPU / deliveries, a write of one delivery each
            // (1:1: 239 us; with 16 in flight, 17-18 us, benchmarks.md).
            nats_us_per_delivery: 322.0,
            // Assumed: the per-node split was not measured.
            leader_share: 0.5,
            // Assumed: from relay-bench dm --cluster with and without
            // --no-ack at an earlier commit, roughly.
            nats_handover_share: 0.3,
            // Measured for the single relay: relay-bench idle (10,000
            // clients, about 16 KiB each); a cluster relay's not measured.
            relay_kib_per_client: 16.0,
            // Assumed: not measured.
            nats_kib_per_client: 2.0,
            // Measured: 169 us per TLS handshake (relay-bench handshakes),
            // plus an allowance for the registration (not measured).
            handshake_us: 500.0,
            // Measured: test a_nats_node_lost_under_a_sender_keeps_its_order
            // (2-10 s when the killed node led the stream).
            election_secs: 6.0,
            // Measured: test
            // a_relay_killed_with_sigkill_its_users_fail_over_and_nothing_is_lost
            // (0.26-0.34 s, once 1.40 s).
            failover_secs: 0.35,
            // Assumed: not measured through a cluster yet.
            drain_per_client: 2000.0,
        }
    }
}

/// The failures injected into the day.
#[derive(Clone, Debug, Args)]
pub(crate) struct FailureArgs {
    /// Second of the day at which relay 0 is killed [default: the peak
    /// hour, on the hour].
    #[arg(long, value_name = "SECS")]
    pub(crate) fail_relay_at: Option<u32>,
    /// Second of the day at which the NATS node leading SOTTO_INBOX is
    /// killed [default: half an hour after the peak hour].
    #[arg(long, value_name = "SECS")]
    pub(crate) fail_nats_leader_at: Option<u32>,
    /// Simulate no failures (only the normal day).
    #[arg(long)]
    pub(crate) no_failures: bool,
    /// Seconds the killed relay stays down (then it takes new connections).
    #[arg(long, default_value_t = 600)]
    pub(crate) relay_down_secs: u32,
    /// Seconds the killed NATS node stays down (then it catches up as a
    /// follower).
    #[arg(long, default_value_t = 600)]
    pub(crate) nats_down_secs: u32,
    /// Seconds between a relay's attempts to publish while JetStream does
    /// not answer (the relay's retry interval, self-hosting.md).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) retry_secs: f64,
    /// Seconds without a relay's heartbeat after which the other relays
    /// show its users offline (self-hosting.md, "What is different in a
    /// cluster"); no heartbeat is written while the stream has no leader.
    #[arg(long, default_value_t = 30.0)]
    pub(crate) presence_timeout_secs: f64,
}

/// The run itself.
#[derive(Clone, Debug, Args)]
pub(crate) struct RunArgs {
    /// Seconds simulated from midnight, one step per second.
    #[arg(long, default_value_t = 86_400)]
    pub(crate) seconds: u32,
    /// Seed of every random choice: the same seed gives the same report.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Find the smallest number of relays, and whether 3 or 5 NATS nodes
    /// do, that keep every peak under max-utilisation; then how far the
    /// community can grow.
    #[arg(long)]
    pub(crate) size: bool,
}

/// One band of the room-size mix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Band {
    /// Smallest room of the band.
    pub(crate) lo: u32,
    /// Largest room of the band.
    pub(crate) hi: u32,
    /// Share of all rooms (the shares sum to 1).
    pub(crate) share: f64,
}

/// One parameter as the report lists it.
#[derive(Clone, Debug)]
pub(crate) struct ParamRow {
    pub(crate) flag: String,
    pub(crate) value: String,
    pub(crate) help: String,
}

/// Seconds in a day.
pub(crate) const DAY: u32 = 86_400;

/// Largest room the model takes (room counts per relay are kept in u32,
/// but a room this big is far beyond any sotto community).
const MAX_ROOM: u32 = 1_000_000;

impl Params {
    /// Parses the command line, and lists every parameter with the value
    /// in use (given or default) for the report's header.
    pub(crate) fn parse_args<I, T>(args: I) -> Result<(Self, Vec<ParamRow>), SimError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = Self::command();
        // Sets every argument's action and value count, read below.
        command.build();
        let matches = command
            .clone()
            .try_get_matches_from(args)
            .map_err(SimError::Usage)?;
        let params = Self::from_arg_matches(&matches).map_err(SimError::Usage)?;
        let mut rows = Vec::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let Some(long) = arg.get_long() else {
                continue;
            };
            if id == "help" || id == "version" {
                continue;
            }
            let value = if arg.get_action().takes_values() {
                match matches.get_raw(id) {
                    Some(mut values) => values
                        .next()
                        .map_or_else(String::new, |v| v.to_string_lossy().into_owned()),
                    None => "(derived, below)".to_owned(),
                }
            } else {
                matches.get_flag(id).to_string()
            };
            let help = arg
                .get_help()
                .map(|h| h.to_string())
                .unwrap_or_default()
                .split(". ")
                .next()
                .unwrap_or_default()
                .trim_end_matches('.')
                .to_owned();
            rows.push(ParamRow {
                flag: format!("--{long}"),
                value,
                help,
            });
        }
        params.validate()?;
        Ok((params, rows))
    }

    /// The room-size mix, parsed and normalised.
    pub(crate) fn bands(&self) -> Result<Vec<Band>, SimError> {
        parse_mix(&self.community.room_mix)
    }

    /// Bytes of one stored delivery: body, key slot and framing.
    pub(crate) fn delivery_bytes(&self) -> f64 {
        f64::from(self.traffic.body_bytes)
            + f64::from(self.traffic.slot_bytes)
            + f64::from(self.traffic.frame_overhead)
    }

    /// When relay 0 is killed, if at all, within the simulated seconds.
    pub(crate) fn relay_failure_at(&self) -> Option<u32> {
        if self.failures.no_failures {
            return None;
        }
        let default = hour_to_second(self.community.peak_hour);
        let at = self.failures.fail_relay_at.unwrap_or(default);
        (at < self.run.seconds).then_some(at)
    }

    /// When the stream leader's node is killed, if at all.
    pub(crate) fn leader_failure_at(&self) -> Option<u32> {
        if self.failures.no_failures {
            return None;
        }
        let default = (hour_to_second(self.community.peak_hour) + 1800) % DAY;
        let at = self.failures.fail_nats_leader_at.unwrap_or(default);
        (at < self.run.seconds).then_some(at)
    }

    fn validate(&self) -> Result<(), SimError> {
        let c = &self.community;
        let t = &self.traffic;
        let m = &self.cluster;
        let k = &self.costs;
        let f = &self.failures;
        let fraction = |x: f64| (0.0..=1.0).contains(&x);
        let positive = |x: f64| x > 0.0 && x.is_finite();
        let hour = |x: f64| (0.0..24.0).contains(&x);
        let checks: &[(bool, &str)] = &[
            (c.registered >= 2, "--registered must be at least 2"),
            (c.connected >= 1, "--connected must be at least 1"),
            (
                c.connected <= c.registered,
                "--connected cannot exceed --registered",
            ),
            (
                fraction(c.night_fraction),
                "--night-fraction must be within 0..=1",
            ),
            (hour(c.peak_hour), "--peak-hour must be within 0..24"),
            (hour(c.trough_hour), "--trough-hour must be within 0..24"),
            (
                (c.peak_hour - c.trough_hour).abs() >= 1.0,
                "--peak-hour and --trough-hour must be at least an hour apart",
            ),
            (
                positive(c.session_minutes),
                "--session-minutes must be positive",
            ),
            (
                c.engagement_spread >= 1.0 && c.engagement_spread <= 1e6,
                "--engagement-spread must be within 1..=1e6",
            ),
            (
                c.max_rooms_per_user >= 1 && c.max_rooms_per_user <= 10_000,
                "--max-rooms-per-user must be within 1..=10000",
            ),
            (
                c.rooms_per_user >= 1.0 && c.rooms_per_user < f64::from(c.max_rooms_per_user),
                "--rooms-per-user must be at least 1 and below --max-rooms-per-user",
            ),
            (
                f64::from(c.registered) * c.rooms_per_user < 1.5e9,
                "--registered times --rooms-per-user is too large (at most 1.5e9 memberships)",
            ),
            (c.dm_partners >= 1, "--dm-partners must be at least 1"),
            (
                t.msgs_per_user_day >= 0.0 && t.msgs_per_user_day.is_finite(),
                "--msgs-per-user-day must be non-negative",
            ),
            (fraction(t.dm_share), "--dm-share must be within 0..=1"),
            (
                t.peak_factor >= 1.0 && t.peak_factor.is_finite(),
                "--peak-factor must be at least 1",
            ),
            (positive(t.max_age_days), "--max-age-days must be positive"),
            (t.max_per_user >= 1, "--max-per-user must be at least 1"),
            (m.relays >= 1, "--relays must be at least 1"),
            (m.relays <= 4096, "--relays must be at most 4096"),
            (
                positive(m.relay_cores) && positive(m.nats_cores),
                "--relay-cores and --nats-cores must be positive",
            ),
            (
                positive(m.relay_mem_gib)
                    && positive(m.nats_mem_gib)
                    && positive(m.nats_disk_gib)
                    && positive(m.nic_gbps),
                "memory, disk and network capacities must be positive",
            ),
            (
                m.replicas >= 1 && m.replicas <= m.nats_nodes,
                "--replicas must be within 1..=--nats-nodes",
            ),
            (
                m.max_utilisation > 0.0 && m.max_utilisation <= 1.0,
                "--max-utilisation must be within (0, 1]",
            ),
            (
                k.relay_us_per_delivery >= 0.0
                    && k.relay_us_per_send >= 0.0
                    && k.nats_us_per_delivery >= 0.0
                    && k.relay_kib_per_client >= 0.0
                    && k.nats_kib_per_client >= 0.0,
                "costs must be non-negative",
            ),
            (
                fraction(k.relay_publish_share),
                "--relay-publish-share must be within 0..=1",
            ),
            (
                k.leader_share > 0.0 && k.leader_share <= 1.0,
                "--leader-share must be within (0, 1]",
            ),
            (
                fraction(k.nats_handover_share),
                "--nats-handover-share must be within 0..=1",
            ),
            (positive(k.handshake_us), "--handshake-us must be positive"),
            (
                k.election_secs >= 0.0 && k.failover_secs >= 0.0,
                "--election-secs and --failover-secs must be non-negative",
            ),
            (
                k.drain_per_client >= 1.0,
                "--drain-per-client must be at least 1",
            ),
            (positive(f.retry_secs), "--retry-secs must be positive"),
            (
                positive(f.presence_timeout_secs),
                "--presence-timeout-secs must be positive",
            ),
            (
                self.run.seconds >= 1 && self.run.seconds <= 7 * DAY,
                "--seconds must be within 1..=604800",
            ),
            (
                self.relay_failure_at().is_none() || m.relays >= 2,
                "a relay failure needs at least 2 relays (or --no-failures)",
            ),
        ];
        for &(ok, message) in checks {
            if !ok {
                return Err(SimError::Invalid(message.to_owned()));
            }
        }
        let bands = self.bands()?;
        let largest = bands.iter().map(|b| b.hi).max().unwrap_or(0);
        if largest > c.registered {
            return Err(SimError::Invalid(format!(
                "--room-mix has rooms of {largest} but only {} users are registered",
                c.registered
            )));
        }
        Ok(())
    }
}

/// The second of the day at which an hour starts.
fn hour_to_second(hour: f64) -> u32 {
    #[allow(
        clippy::cast_possible_truncation,
        reason = "hour is checked within 0..24, so the product is below 86,400"
    )]
    let second = (hour * 3600.0).floor() as u32;
    second.min(DAY - 1)
}

/// Parses `LO-HI:PERCENT,...` into bands whose shares sum to 1.
pub(crate) fn parse_mix(text: &str) -> Result<Vec<Band>, SimError> {
    let bad = |why: &str| SimError::Invalid(format!("--room-mix {text:?}: {why}"));
    let mut bands = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (range, percent) = part
            .split_once(':')
            .ok_or_else(|| bad("each band is LO-HI:PERCENT"))?;
        let (lo, hi) = range
            .split_once('-')
            .ok_or_else(|| bad("each band is LO-HI:PERCENT"))?;
        let lo: u32 = lo.trim().parse().map_err(|_| bad("LO is not a number"))?;
        let hi: u32 = hi.trim().parse().map_err(|_| bad("HI is not a number"))?;
        let share: f64 = percent
            .trim()
            .parse()
            .map_err(|_| bad("PERCENT is not a number"))?;
        if lo < 2 || hi < lo || hi > MAX_ROOM {
            return Err(bad("rooms have 2 to 1,000,000 members, LO <= HI"));
        }
        if !(share >= 0.0 && share.is_finite()) {
            return Err(bad("PERCENT must be non-negative"));
        }
        bands.push(Band { lo, hi, share });
    }
    let total: f64 = bands.iter().map(|b| b.share).sum();
    if bands.is_empty() || total <= 0.0 {
        return Err(bad("no band with a positive share"));
    }
    for band in &mut bands {
        band.share /= total;
    }
    Ok(bands)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_parsed_and_normalised() {
        let bands = parse_mix("3-10:60, 11-100:30,101-1000:10").unwrap();
        assert_eq!(bands.len(), 3);
        assert_eq!((bands[0].lo, bands[0].hi), (3, 10));
        assert!((bands[0].share - 0.6).abs() < 1e-12);
        assert!((bands.iter().map(|b| b.share).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(parse_mix("10-3:50").is_err());
        assert!(parse_mix("1-3:50").is_err());
        assert!(parse_mix("3-10").is_err());
        assert!(parse_mix("").is_err());
    }

    #[test]
    fn every_flag_is_listed_with_its_value() {
        let (params, rows) = Params::parse_args(["scaling-sim", "--relays", "7"]).unwrap();
        assert_eq!(params.cluster.relays, 7);
        let relays = rows.iter().find(|r| r.flag == "--relays").unwrap();
        assert_eq!(relays.value, "7");
        let cost = rows
            .iter()
            .find(|r| r.flag == "--relay-us-per-delivery")
            .unwrap();
        assert_eq!(
            cost.value,
            Costs::measured().relay_us_per_delivery.to_string()
        );
        assert!(rows.iter().any(|r| r.flag == "--seed"));
        assert!(
            rows.iter()
                .any(|r| r.flag == "--size" && r.value == "false")
        );
    }

    #[test]
    fn impossible_parameters_are_refused() {
        assert!(Params::parse_args(["s", "--connected", "5", "--registered", "4"]).is_err());
        assert!(Params::parse_args(["s", "--replicas", "5"]).is_err());
        assert!(Params::parse_args(["s", "--relays", "1"]).is_err());
        assert!(Params::parse_args(["s", "--relays", "1", "--no-failures"]).is_ok());
    }
}
