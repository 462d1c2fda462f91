//! The report: plain text with Markdown tables, aligned so that it reads
//! as well in a terminal as in a rendered document.

use crate::SimError;
use crate::community::Community;
use crate::day::{Day, Plan, simulate};
use crate::params::{ParamRow, Params};
use crate::sizing::{self, Use};
use crate::stats::{Second, Summary, summarise};

/// A table: the first column left-aligned, the others right-aligned.
#[derive(Debug)]
pub(crate) struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    pub(crate) fn new(head: &[&str]) -> Self {
        Self {
            head: head.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            left: 1,
        }
    }

    /// A table whose first `n` columns are text, left-aligned.
    pub(crate) fn with_text_columns(mut self, n: usize) -> Self {
        self.left = n;
        self
    }

    /// Adds a column heading at the end.
    pub(crate) fn head_push(&mut self, heading: &str) {
        self.head.push(heading.to_owned());
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.head.len();
        let mut width: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                width[i] = width[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = w.saturating_sub(cell.chars().count());
                if i < self.left {
                    s.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
                } else {
                    s.push_str(&format!(" {}{cell} |", " ".repeat(pad)));
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.head);
        out.push('|');
        for (i, w) in width.iter().enumerate() {
            if i < self.left {
                out.push_str(&format!("{}|", "-".repeat(w + 2)));
            } else {
                out.push_str(&format!("{}:|", "-".repeat(w + 1)));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Appends a line.
pub(crate) fn say(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

/// A whole number with thousands separators.
pub(crate) fn count(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let negative = x < 0.0;
    let digits = format!("{:.0}", x.abs());
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if negative && grouped != "0" {
        format!("-{grouped}")
    } else {
        grouped
    }
}

/// A figure with as many decimals as its size deserves.
pub(crate) fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 1.0 {
        format!("{x:.3}")
    } else if a < 10.0 {
        format!("{x:.2}")
    } else if a < 100.0 {
        format!("{x:.1}")
    } else {
        count(x)
    }
}

/// A fraction as a percentage.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Bytes in decimal units.
pub(crate) fn bytes(x: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = x;
    let mut unit = 0;
    while value.abs() >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// A second of the day as hh:mm:ss (days past the first counted on).
pub(crate) fn clock(second: u32) -> String {
    let h = second / 3600;
    format!("{h:02}:{:02}:{:02}", (second / 60) % 60, second % 60)
}

/// The header: what was run, with every parameter.
pub(crate) fn header(out: &mut String, p: &Params, rows: &[ParamRow]) {
    say(out, "# scaling-sim: a sotto cluster at internet scale");
    say(out, "");
    let args: Vec<String> = rows
        .iter()
        .filter(|r| r.value != "false" && r.value != "(derived, below)")
        .map(|r| {
            if r.value == "true" {
                r.flag.clone()
            } else if r.value.contains([' ', ',', ':']) {
                format!("{} '{}'", r.flag, r.value)
            } else {
                format!("{} {}", r.flag, r.value)
            }
        })
        .collect();
    say(
        out,
        &format!(
            "Reproduce: `cargo run --release -p sotto-bench --bin scaling-sim -- {}`",
            args.join(" ")
        ),
    );
    say(out, "");
    say(out, "## Parameters");
    say(out, "");
    let mut table = Table::new(&["flag", "value", "meaning"]).with_text_columns(3);
    for row in rows {
        table.row(vec![row.flag.clone(), row.value.clone(), row.help.clone()]);
    }
    out.push_str(&table.render());
    say(out, "");
    say(out, "Derived:");
    say(out, "");
    let u = derived(p);
    for line in u {
        say(out, &format!("- {line}"));
    }
    say(out, "");
}

fn derived(p: &Params) -> Vec<String> {
    let k = &p.costs;
    let b = p.delivery_bytes();
    let followers = p.cluster.replicas.saturating_sub(1);
    let follower_us = if followers > 0 {
        k.nats_us_per_delivery * (1.0 - k.leader_share) / f64::from(followers)
    } else {
        0.0
    };
    let mut lines = vec![
        format!(
            "bytes per delivery: {} (body {} + slot {} + framing {})",
            count(b),
            p.traffic.body_bytes,
            p.traffic.slot_bytes,
            p.traffic.frame_overhead
        ),
        format!(
            "relay CPU per delivery: {} µs on the sender's relay (publication), {} µs on the \
             recipient's (hand-over, Ack); {} µs per Send",
            num(k.relay_us_per_delivery * k.relay_publish_share),
            num(k.relay_us_per_delivery * (1.0 - k.relay_publish_share)),
            num(k.relay_us_per_send)
        ),
        format!(
            "NATS CPU per delivery: {} µs on the stream leader, {} µs on each of {} followers \
             ({}% of it at publication, the rest at hand-over and Ack)",
            num(k.nats_us_per_delivery * k.leader_share),
            num(follower_us),
            followers,
            count((1.0 - k.nats_handover_share) * 100.0)
        ),
        format!(
            "handshakes a relay can take per second with all its cores: {}",
            count(p.cluster.relay_cores * 1e6 / k.handshake_us)
        ),
        format!(
            "deliveries per second the stream leader can take with all its cores: {}",
            count(p.cluster.nats_cores * 1e6 / (k.nats_us_per_delivery * k.leader_share).max(1e-9))
        ),
    ];
    match p.relay_failure_at() {
        Some(at) => lines.push(format!(
            "relay 0 killed at {} (second {at}), back after {} s",
            clock(at),
            p.failures.relay_down_secs
        )),
        None => lines.push("no relay failure".into()),
    }
    match p.leader_failure_at() {
        Some(at) => lines.push(format!(
            "the NATS node leading SOTTO_INBOX killed at {} (second {at}), back after {} s",
            clock(at),
            p.failures.nats_down_secs
        )),
        None => lines.push("no NATS failure".into()),
    }
    lines
}

/// The report of a day (and of the same day with its failures).
pub(crate) fn day_report(p: &Params, rows: &[ParamRow], c: &Community) -> Result<String, SimError> {
    let relays = p.cluster.relays as usize;
    let mut plans = vec![Plan {
        relays,
        relay_failure: None,
        leader_failure: None,
    }];
    if p.relay_failure_at().is_some() || p.leader_failure_at().is_some() {
        plans.push(Plan {
            relays,
            relay_failure: p.relay_failure_at(),
            leader_failure: p.leader_failure_at(),
        });
    }
    let mut days = simulate(p, c, &plans)?.into_iter();
    let normal = days
        .next()
        .ok_or_else(|| SimError::Invalid("no day simulated".into()))?;
    let failing = days.next();
    let mut out = String::new();
    header(&mut out, p, rows);
    community_section(&mut out, p, c, &normal);
    day_section(&mut out, p, &normal);
    hours_section(&mut out, &normal);
    if let Some(failing) = &failing {
        failure_sections(&mut out, p, &normal, failing);
    }
    assumptions(&mut out, p);
    Ok(out)
}

/// The community as generated, and the day's totals.
pub(crate) fn community_section(out: &mut String, p: &Params, c: &Community, day: &Day) {
    say(out, "## The community");
    say(out, "");
    let bands = c.bands();
    let mut rooms = vec![0u64; bands.len()];
    let mut members = vec![0u64; bands.len()];
    let mut smallest = vec![u32::MAX; bands.len()];
    let mut largest = vec![0u32; bands.len()];
    let mut pairs = 0.0;
    for room in 0..c.rooms() as u32 {
        let b = c.band_of(room);
        let size = c.size_of(room);
        rooms[b] += 1;
        members[b] += u64::from(size);
        smallest[b] = smallest[b].min(size);
        largest[b] = largest[b].max(size);
        pairs += f64::from(size) * f64::from(size.saturating_sub(1));
    }
    let memberships: u64 = members.iter().sum();
    let mut table = Table::new(&[
        "rooms of",
        "rooms",
        "share of rooms",
        "members (min-max)",
        "mean members",
        "share of memberships",
    ]);
    for (i, band) in bands.iter().enumerate() {
        table.row(vec![
            format!("{}-{}", band.lo, band.hi),
            count(rooms[i] as f64),
            pct(rooms[i] as f64 / c.rooms().max(1) as f64),
            if rooms[i] > 0 {
                format!("{}-{}", smallest[i], largest[i])
            } else {
                "-".into()
            },
            num(members[i] as f64 / rooms[i].max(1) as f64),
            pct(members[i] as f64 / memberships.max(1) as f64),
        ]);
    }
    table.row(vec![
        "all".into(),
        count(c.rooms() as f64),
        "100.0%".into(),
        String::new(),
        num(memberships as f64 / c.rooms().max(1) as f64),
        "100.0%".into(),
    ]);
    out.push_str(&table.render());
    say(out, "");
    let users = c.users() as f64;
    let most_rooms = (0..c.users() as u32)
        .map(|u| c.rooms_of(u).len())
        .max()
        .unwrap_or(0);
    let t = &day.totals;
    let simulated = day.seconds.len() as f64;
    let mean_connected = summarise(&day.seconds, 0, day.seconds.len(), |s| s.connected).mean;
    let messages = (t.dm_messages + t.room_messages) as f64;
    let room_fanout = if t.room_messages > 0 {
        (t.deliveries - t.dm_messages) as f64 / t.room_messages as f64
    } else {
        0.0
    };
    let mut table = Table::new(&["", "value"]);
    let mut add = |what: &str, value: String| table.row(vec![what.to_owned(), value]);
    add("registered users", count(users));
    add(
        "rooms per user: mean, most",
        format!("{}, {most_rooms}", num(memberships as f64 / users)),
    );
    add(
        "deliveries per room message if every room spoke alike (size-weighted mean size - 1)",
        num(pairs / memberships.max(1) as f64),
    );
    add("direct-message partners per user", c.partners().to_string());
    add("simulated seconds", count(simulated));
    add(
        "connected users, mean of the seconds",
        count(mean_connected),
    );
    add(
        "users connected at some time (of the registered)",
        format!(
            "{} ({})",
            count(t.distinct_users as f64),
            pct(t.distinct_users as f64 / users)
        ),
    );
    add("connections (handshakes)", count(t.connections as f64));
    add(
        "messages: direct, room",
        format!(
            "{}: {}, {}",
            count(messages),
            count(t.dm_messages as f64),
            count(t.room_messages as f64)
        ),
    );
    add(
        "messages per connected user-day",
        num(messages / (mean_connected * simulated / 86_400.0).max(1e-9)),
    );
    add(
        "deliveries (each published to SOTTO_INBOX)",
        count(t.deliveries as f64),
    );
    add("deliveries per room message", num(room_fanout));
    add(
        "... to connected users (handed over at once)",
        format!(
            "{} ({})",
            count(t.live as f64),
            pct(t.live as f64 / t.deliveries.max(1) as f64)
        ),
    );
    add(
        "... stored for users away",
        format!(
            "{} ({})",
            count(t.stored_new as f64),
            pct(t.stored_new as f64 / t.deliveries.max(1) as f64)
        ),
    );
    add(
        "... refused at a user's count bound (--max-per-user)",
        count(t.refused as f64),
    );
    add(
        "... expired at a user's age bound (--max-age-days)",
        count(t.expired as f64),
    );
    add(
        "stored deliveries taken by users coming back",
        count(t.drained as f64),
    );
    add(
        "stored at midnight, at the end (bytes per stream node)",
        format!(
            "{} ({}), {} ({})",
            count(t.stored_at_start as f64),
            bytes(t.stored_at_start as f64 * p.delivery_bytes()),
            count(t.stored_at_end as f64),
            bytes(t.stored_at_end as f64 * p.delivery_bytes())
        ),
    );
    add(
        "users at their bound at midnight",
        count(t.at_bound_at_start as f64),
    );
    add(
        "users whose bound is the age (they get less than --max-per-user in --max-age-days)",
        count(t.age_bound_users as f64),
    );
    out.push_str(&table.render());
    say(out, "");
}

/// One row of a day table: how a figure is shown.
type Figure = (&'static str, fn(&Second) -> f64, fn(f64) -> String);

fn rate(x: f64) -> String {
    format!("{}/s", bytes(x))
}

fn figures() -> Vec<Figure> {
    vec![
        ("connected users", |s| s.connected, count),
        ("users waiting for a handshake", |s| s.handshaking, count),
        ("direct messages /s", |s| s.dm_messages, num),
        ("room messages /s", |s| s.room_messages, num),
        ("deliveries /s", |s| s.deliveries, count),
        ("... to connected users /s", |s| s.live, count),
        ("... stored for users away /s", |s| s.stored_new, count),
        ("... dropped at a bound /s", |s| s.dropped, count),
        ("stored deliveries taken on return /s", |s| s.drained, count),
        ("relay CPU, busiest relay", |s| s.relay_cpu, pct),
        ("relay CPU, mean of the relays", |s| s.relay_cpu_mean, pct),
        (
            "relay CPU, all relays (cores)",
            |s| s.relay_cpu_us / 1e6,
            num,
        ),
        ("relay memory, busiest", |s| s.relay_mem, bytes),
        ("relay network in, busiest", |s| s.relay_in, rate),
        ("relay network out, busiest", |s| s.relay_out, rate),
        (
            "handshakes /s, busiest relay",
            |s| s.relay_handshakes,
            count,
        ),
        ("stream leader CPU demand", |s| s.leader_cpu, pct),
        (
            "stream leader backlog (s of its CPU)",
            |s| s.leader_backlog,
            num,
        ),
        ("follower CPU demand", |s| s.follower_cpu, pct),
        ("stream leader network in", |s| s.leader_in, rate),
        ("stream leader network out", |s| s.leader_out, rate),
        ("follower network in", |s| s.follower_in, rate),
        ("NATS memory per node (presence)", |s| s.nats_mem, bytes),
        ("stored deliveries", |s| s.stored, count),
    ]
}

/// The day's figures: mean, p99 second, peak second.
pub(crate) fn day_section(out: &mut String, p: &Params, day: &Day) {
    let n = day.seconds.len();
    say(
        out,
        &format!(
            "## The day: {} relays ({} cores each), {} NATS nodes, {} replicas",
            day.plan.relays, p.cluster.relay_cores, p.cluster.nats_nodes, p.cluster.replicas
        ),
    );
    say(out, "");
    say(
        out,
        "CPU and network figures are demand: the work that arrived in a second (for CPU, over \
         the machine's cores: above 100% a queue grows), whether or not it was served in that \
         second. \"Busiest\" is the largest of the relays in that second.",
    );
    say(out, "");
    let mut table = Table::new(&["figure", "mean", "p99 second", "peak second", "peak at"]);
    for (name, figure, show) in figures() {
        let s = summarise(&day.seconds, 0, n, figure);
        table.row(vec![
            name.to_owned(),
            show(s.mean),
            show(s.p99),
            show(s.peak),
            clock(s.peak_at),
        ]);
    }
    let b = p.delivery_bytes();
    let stored = summarise(&day.seconds, 0, n, |s| s.stored);
    let replicas = f64::from(p.cluster.replicas);
    for (name, factor) in [
        ("stored bytes per stream node", b),
        ("stored bytes, all replicas", b * replicas),
    ] {
        table.row(vec![
            name.to_owned(),
            bytes(stored.mean * factor),
            bytes(stored.p99 * factor),
            bytes(stored.peak * factor),
            clock(stored.peak_at),
        ]);
    }
    out.push_str(&table.render());
    say(out, "");
    headroom_section(out, p, &sizing::uses(p, day));
}

/// Each resource's peak against its capacity.
pub(crate) fn headroom_section(out: &mut String, p: &Params, uses: &[Use]) {
    say(
        out,
        &format!(
            "Peak use of each resource against --max-utilisation {}:",
            pct(p.cluster.max_utilisation)
        ),
    );
    say(out, "");
    let mut table = Table::new(&["resource", "peak", "capacity", "peak use", "within limit"]);
    for u in uses {
        table.row(vec![
            u.name.to_owned(),
            u.show(u.peak),
            u.show(u.capacity),
            pct(u.utilisation()),
            if u.utilisation() <= p.cluster.max_utilisation {
                "yes".into()
            } else {
                "NO".into()
            },
        ]);
    }
    out.push_str(&table.render());
    say(out, "");
}

/// Hour by hour.
pub(crate) fn hours_section(out: &mut String, day: &Day) {
    say(out, "## Hour by hour");
    say(out, "");
    let mut table = Table::new(&[
        "hour",
        "connected",
        "messages /s",
        "deliveries /s",
        "taken on return /s",
        "relay CPU, peak",
        "leader CPU, peak",
        "stored at the end",
    ]);
    let hours = day.seconds.len().div_ceil(3600);
    for hour in 0..hours {
        let (from, to) = (hour * 3600, ((hour + 1) * 3600).min(day.seconds.len()));
        let s = |f: fn(&Second) -> f64| summarise(&day.seconds, from, to, f);
        let last = day.seconds.get(to - 1).map_or(0.0, |s| s.stored);
        table.row(vec![
            format!("{:02}:00", hour % 24),
            count(s(|s| s.connected).mean),
            num(s(|s| s.dm_messages + s.room_messages).mean),
            count(s(|s| s.deliveries).mean),
            count(s(|s| s.drained).mean),
            pct(s(|s| s.relay_cpu).peak),
            pct(s(|s| s.leader_cpu).peak),
            count(last),
        ]);
    }
    out.push_str(&table.render());
    say(out, "");
}

/// The same day with its failures, against the normal day.
pub(crate) fn failure_sections(out: &mut String, p: &Params, normal: &Day, failing: &Day) {
    if let Some(f) = &failing.relay_failure {
        say(
            out,
            &format!(
                "## Failure: relay 0 killed at {} (with {} relays)",
                clock(f.at),
                failing.plan.relays
            ),
        );
        say(out, "");
        let hs = p.costs.handshake_us;
        let cores = p.cluster.relay_cores;
        let storm_core_secs = f.most_on_one as f64 * hs / 1e6;
        let window = |day: &Day, figure: fn(&Second) -> f64, secs: u32| -> Summary {
            summarise(&day.seconds, f.at as usize, (f.at + secs) as usize, figure)
        };
        let down = p.failures.relay_down_secs.max(1);
        let mut table = Table::new(&["", "value"]);
        let mut add = |what: &str, value: String| table.row(vec![what.to_owned(), value]);
        add("its connected users, who reconnect", count(f.users as f64));
        add("relays left", f.survivors.to_string());
        add("most landing on one relay", count(f.most_on_one as f64));
        add(
            "their handshakes on that relay",
            format!(
                "{} core-seconds ({} µs each) against its {} cores: {}",
                num(storm_core_secs),
                count(hs),
                num(cores),
                if storm_core_secs > cores {
                    "more than its cores can do in a second"
                } else {
                    "within one second of its cores"
                }
            ),
        );
        add("that relay's CPU just before", pct(f.busiest_load_before));
        add(
            "handshakes a relay takes per second (all cores, nothing else)",
            count(cores * 1e6 / hs),
        );
        add(
            "the last of them connected again after",
            f.all_back_after.map_or_else(
                || "not within the simulated seconds".into(),
                |s| {
                    format!(
                        "{} s (--failover-secs {} with no queue)",
                        num(s),
                        p.costs.failover_secs
                    )
                },
            ),
        );
        add(
            "deliveries stored for them meanwhile (none lost)",
            count(f.stored_meanwhile as f64),
        );
        let storm = |d: &Day| window(d, |s| s.relay_cpu, 10).peak;
        add(
            "busiest relay's CPU, first 10 s (normal day: same seconds)",
            format!("{} ({})", pct(storm(failing)), pct(storm(normal))),
        );
        let handshakes = |d: &Day| window(d, |s| s.relay_handshakes, 60).peak;
        add(
            "handshakes /s on the busiest relay, peak of the first minute",
            format!(
                "{} ({})",
                count(handshakes(failing)),
                count(handshakes(normal))
            ),
        );
        let outage = |d: &Day| window(d, |s| s.relay_cpu, down);
        add(
            &format!("busiest relay's CPU while it is down ({down} s): peak, p99 second"),
            format!(
                "{}, {} ({}, {})",
                pct(outage(failing).peak),
                pct(outage(failing).p99),
                pct(outage(normal).peak),
                pct(outage(normal).p99)
            ),
        );
        let drained = |d: &Day| window(d, |s| s.drained, 120).peak;
        add(
            "stored deliveries taken on return /s, peak of the first 2 min",
            format!("{} ({})", count(drained(failing)), count(drained(normal))),
        );
        let leader = |d: &Day| window(d, |s| s.leader_cpu, 120).peak;
        add(
            "stream leader CPU, peak of the first 2 min",
            format!("{} ({})", pct(leader(failing)), pct(leader(normal))),
        );
        add("relay 0 takes connections again at", clock(f.back_at));
        out.push_str(&table.render());
        say(out, "");
        say(
            out,
            "In brackets: the normal day at the same seconds. After the storm, the users whose \
             connections queued behind it connect together and take their stored deliveries at \
             once.",
        );
        say(out, "");
    }
    if let Some(f) = &failing.leader_failure {
        say(
            out,
            &format!(
                "## Failure: the NATS node leading SOTTO_INBOX killed at {}",
                clock(f.at)
            ),
        );
        say(out, "");
        let cap = p.cluster.nats_cores * 1e6;
        let mut table = Table::new(&["", "value"]);
        let mut add = |what: &str, value: String| table.row(vec![what.to_owned(), value]);
        add(
            "node killed, new leader",
            format!(
                "{}, {}",
                f.node,
                f.new_leader
                    .map_or_else(|| "none (no quorum left)".into(), |n| n.to_string())
            ),
        );
        add(
            "seconds with nothing acknowledged",
            format!(
                "{} (election {} s, rounded up to the relays' {} s retries)",
                f.stalled_secs, p.costs.election_secs, p.failures.retry_secs
            ),
        );
        add(
            "messages sent meanwhile, waiting for their Sent",
            count(f.messages_waiting as f64),
        );
        add(
            "their deliveries, waiting to be stored",
            format!(
                "{} ({})",
                count(f.deliveries_waiting as f64),
                bytes(f.deliveries_waiting as f64 * p.delivery_bytes())
            ),
        );
        add(
            "largest backlog at the leader (seconds of its CPU)",
            num(f.peak_backlog_secs),
        );
        add(
            "latency back to normal (backlog empty) after the resumption",
            f.normal_after.map_or_else(
                || {
                    "never within the simulated seconds (the leader's demand exceeds its cores)"
                        .into()
                },
                |s| {
                    format!(
                        "{} s ({} s after the kill)",
                        num(s),
                        num(s + f64::from(f.stalled_secs))
                    )
                },
            ),
        );
        let from = f.at as usize;
        let to = (f.at + f.stalled_secs + 120) as usize;
        let demand = summarise(&failing.seconds, from, to, |s| s.leader_cpu_us);
        let spare = (cap - summarise(&normal.seconds, from, to, |s| s.leader_cpu_us).mean).max(0.0);
        add(
            "the new leader's spare CPU then (normal day, mean of the window)",
            format!("{} cores", num(spare / 1e6)),
        );
        add(
            "peak CPU demand of new work on the new leader (it runs at 100% while the backlog \
             lasts)",
            pct(demand.peak / cap),
        );
        let timeout = p.failures.presence_timeout_secs;
        add(
            "presence meanwhile",
            if f64::from(f.stalled_secs) < timeout {
                format!(
                    "kept: the stall is shorter than the {} s after which a silent relay's \
                     users are shown offline",
                    num(timeout)
                )
            } else {
                format!(
                    "lost: the stall outlasts the {} s heartbeat timeout, users on other relays \
                     are shown offline",
                    num(timeout)
                )
            },
        );
        add(
            "node back at, bytes it copies to catch up (at the full network speed)",
            format!(
                "{}, {} ({} s)",
                clock(f.back_at),
                bytes(f.catch_up_bytes),
                num(f.catch_up_bytes * 8.0 / (p.cluster.nic_gbps * 1e9))
            ),
        );
        out.push_str(&table.render());
        say(out, "");
        // The seconds around it.
        let mut table = Table::new(&[
            "second",
            "messages",
            "leader demand",
            "backlog (s)",
            "busiest relay CPU",
            "follower CPU (served)",
        ]);
        let after = f.normal_after.map_or(6.0, |s| s.ceil() + 3.0) as u32;
        let end = (f.at + f.stalled_secs + after.min(30)).min(failing.seconds.len() as u32);
        for t in f.at.saturating_sub(1)..end {
            if let Some(s) = failing.seconds.get(t as usize) {
                table.row(vec![
                    clock(t),
                    num(s.dm_messages + s.room_messages),
                    pct(s.leader_cpu),
                    num(s.leader_backlog),
                    pct(s.relay_cpu),
                    pct(s.follower_served),
                ]);
            }
        }
        out.push_str(&table.render());
        say(out, "");
    }
}

/// What the model takes for granted.
pub(crate) fn assumptions(out: &mut String, p: &Params) {
    say(out, "## What the model assumes");
    say(out, "");
    let lines = [
        "Users connect along the day curve (half cosines from the trough to the peak hour and \
         back); sessions are exponential (--session-minutes); a user away comes back at a rate \
         proportional to its engagement, log-uniform over --engagement-spread. All registered \
         users are members of their rooms (none absent past member_absence).",
        "Room counts per user follow a truncated power law with mean --rooms-per-user; rooms \
         are filled from shuffled memberships, so room count, room size and engagement are \
         independent. A user splits its room messages evenly over its rooms, so a room's \
         message rate is proportional to its connected members (weighted by 1/rooms each).",
        "Messages arrive as Poisson counts per second (direct and room), each from a connected \
         user drawn at random; a direct message goes to one of the sender's --dm-partners, \
         drawn by engagement, whether connected or not.",
        "Every delivery is one publication to SOTTO_INBOX, all through its leader; its way to \
         the recipient (republished to the recipient's relay, purged on the Ack) goes through \
         the leader too. The NATS CPU per delivery is split between leader \
         and followers by --leader-share and between publication and hand-over by \
         --nats-handover-share; followers replicate what the leader has taken. NATS nodes \
         beyond --replicas carry no part of the stream (one stream: extra nodes do not share \
         its load).",
        "Relay CPU: per Send, per delivery published (sender's relay) and per delivery handed \
         over (recipient's relay, at once or when the recipient returns), per handshake. \
         Memory: per connected client; NATS memory: the presence entry of each connected \
         client on each node holding the buckets. JetStream's own per-subject and cache \
         memory, KV traffic (presence, members) and TLS between relays and NATS are not \
         modelled.",
        "Deliveries to connected users are acknowledged within the second and not counted as \
         stored. A user's stored deliveries are bounded by --max-per-user, or by what \
         --max-age-days of its average traffic comes to if that is less; at the count bound \
         new ones are refused, at the age bound old ones expire (both still cost their \
         publication). The bound is checked at scheduled times, so between checks a user may \
         be counted up to a few minutes of traffic over it; the count is corrected then.",
        "A returning user takes its stored deliveries at --drain-per-client per second; its \
         relay and the leader pay for each as it is handed over.",
        "Handshakes queue at each relay and share its CPU with the relay's messages in \
         proportion to their demand. A killed relay's users land on the others at random \
         after --failover-secs; while they wait their deliveries are stored. When the stream \
         leader's node dies nothing is acknowledged until the election ends and the relays' \
         next retry; live hand-overs wait with it, then the backlog is served at the new \
         leader's full cores. Client retries cost nothing extra.",
        "Growth (--size) is extrapolated linearly: per-user behaviour and the room mix stay \
         the same, so every load grows with the community. Per-relay peaks at a fixed relay \
         count are scaled as they are, which is slightly pessimistic (the imbalance between \
         relays shrinks as each holds more users).",
    ];
    for line in lines {
        say(out, &format!("- {line}"));
    }
    if (p.traffic.max_age_days - 7.0).abs() > 1e-9 {
        say(
            out,
            &format!(
                "- --max-age-days is {}; the relay's own default offline_max_age is 7 days.",
                p.traffic.max_age_days
            ),
        );
    }
    say(out, "");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(1_234_567.4), "1,234,567");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(-1500.0), "-1,500");
        assert_eq!(bytes(1_500_000.0), "1.5 MB");
        assert_eq!(bytes(12.0), "12 B");
        assert_eq!(pct(0.256), "25.6%");
        assert_eq!(clock(75_600), "21:00:00");
        assert_eq!(num(0.5), "0.500");
        assert_eq!(num(12.34), "12.3");
    }

    #[test]
    fn tables_are_aligned_markdown() {
        let mut t = Table::new(&["a", "bb"]);
        t.row(vec!["long name".into(), "1".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
        assert!(lines[1].ends_with(":|"));
    }
}
