//! `--size`: the smallest cluster that keeps every peak under
//! `--max-utilisation`, and how far the community can grow on it.
//!
//! The relay count is searched by simulating the normal day at each
//! candidate (the NATS side does not depend on it). Whether 3 or 5 NATS
//! nodes do is read off the same day: SOTTO_INBOX is one stream with
//! `--replicas` replicas, so its leader and followers carry the same load
//! whatever the number of nodes. Growth is the day's peaks scaled with the
//! community (see the report's assumptions).

use std::collections::BTreeMap;

use crate::SimError;
use crate::community::Community;
use crate::day::{Day, Plan, simulate};
use crate::params::{ParamRow, Params};
use crate::report::{self, Table, bytes, count, num, pct, say};
use crate::stats::summarise;

/// How a resource's figures are shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Measure {
    Cores,
    Bytes,
    BitsPerSecond,
}

/// One resource at its peak second.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Use {
    pub(crate) name: &'static str,
    pub(crate) peak: f64,
    pub(crate) capacity: f64,
    pub(crate) measure: Measure,
    /// A relay's: more relays relieve it.
    pub(crate) per_relay: bool,
}

impl Use {
    /// Peak over capacity.
    pub(crate) fn utilisation(&self) -> f64 {
        if self.capacity > 0.0 {
            self.peak / self.capacity
        } else {
            0.0
        }
    }

    /// A figure in this resource's unit.
    pub(crate) fn show(&self, x: f64) -> String {
        match self.measure {
            Measure::Cores => format!("{} cores", num(x)),
            Measure::Bytes => bytes(x),
            Measure::BitsPerSecond => format!("{} Mbit/s", num(x / 1e6)),
        }
    }
}

/// Every resource's peak in a day.
pub(crate) fn uses(p: &Params, day: &Day) -> Vec<Use> {
    let n = day.seconds.len();
    let peak = |f: fn(&crate::stats::Second) -> f64| summarise(&day.seconds, 0, n, f).peak;
    let m = &p.cluster;
    let gib = 1024.0 * 1024.0 * 1024.0;
    let nic = m.nic_gbps * 1e9;
    vec![
        Use {
            name: "relay CPU (busiest relay)",
            peak: peak(|s| s.relay_cpu) * m.relay_cores,
            capacity: m.relay_cores,
            measure: Measure::Cores,
            per_relay: true,
        },
        Use {
            name: "relay memory (busiest relay)",
            peak: peak(|s| s.relay_mem),
            capacity: m.relay_mem_gib * gib,
            measure: Measure::Bytes,
            per_relay: true,
        },
        Use {
            name: "relay network (busiest relay, busier way)",
            peak: peak(|s| s.relay_in.max(s.relay_out)) * 8.0,
            capacity: nic,
            measure: Measure::BitsPerSecond,
            per_relay: true,
        },
        Use {
            name: "stream leader CPU",
            peak: peak(|s| s.leader_cpu) * m.nats_cores,
            capacity: m.nats_cores,
            measure: Measure::Cores,
            per_relay: false,
        },
        Use {
            name: "follower CPU",
            peak: peak(|s| s.follower_cpu) * m.nats_cores,
            capacity: m.nats_cores,
            measure: Measure::Cores,
            per_relay: false,
        },
        Use {
            name: "stream leader network (busier way)",
            peak: peak(|s| s.leader_in.max(s.leader_out)) * 8.0,
            capacity: nic,
            measure: Measure::BitsPerSecond,
            per_relay: false,
        },
        Use {
            name: "NATS memory per node",
            peak: peak(|s| s.nats_mem),
            capacity: m.nats_mem_gib * gib,
            measure: Measure::Bytes,
            per_relay: false,
        },
        Use {
            name: "NATS disk per stream node",
            peak: peak(|s| s.stored) * p.delivery_bytes(),
            capacity: m.nats_disk_gib * gib,
            measure: Measure::Bytes,
            per_relay: false,
        },
    ]
}

/// One candidate relay count and how its busiest relay fared.
#[derive(Clone, Debug)]
pub(crate) struct Probe {
    pub(crate) relays: usize,
    pub(crate) uses: Vec<Use>,
    pub(crate) fits: bool,
}

/// The normal day at a relay count.
fn normal(relays: usize) -> Plan {
    Plan {
        relays,
        relay_failure: None,
        leader_failure: None,
    }
}

fn relay_fits(p: &Params, uses: &[Use]) -> bool {
    uses.iter()
        .filter(|u| u.per_relay)
        .all(|u| u.utilisation() <= p.cluster.max_utilisation)
}

/// Most relays the search tries.
const MOST_RELAYS: usize = 4096;

/// The smallest relay count whose busiest relay stays within the limit
/// (and one fewer does not), with every count tried, and the day at it.
/// Counts are tried two at a time, one per core.
pub(crate) fn smallest_relays(
    p: &Params,
    c: &Community,
) -> Result<(usize, Vec<Probe>, Day), SimError> {
    let mut tried: BTreeMap<usize, Probe> = BTreeMap::new();
    let mut days: BTreeMap<usize, Day> = BTreeMap::new();
    let mut try_all = |counts: &[usize], tried: &mut BTreeMap<usize, Probe>| {
        let todo: Vec<usize> = counts
            .iter()
            .copied()
            .filter(|r| !tried.contains_key(r))
            .collect();
        let plans: Vec<Plan> = todo.iter().map(|&r| normal(r)).collect();
        for (relays, day) in todo.into_iter().zip(simulate(p, c, &plans)?) {
            let uses = uses(p, &day);
            let fits = relay_fits(p, &uses);
            tried.insert(relays, Probe { relays, uses, fits });
            days.insert(relays, day);
        }
        Ok::<(), SimError>(())
    };
    let start = (p.cluster.relays as usize).clamp(1, MOST_RELAYS);
    try_all(&[start], &mut tried)?;
    // A first guess: the busiest relay's load shrinks about as 1/relays.
    let worst = tried.get(&start).map_or(1.0, |probe| {
        probe
            .uses
            .iter()
            .filter(|u| u.per_relay)
            .map(|u| u.utilisation() / p.cluster.max_utilisation)
            .fold(0.0, f64::max)
    });
    let guess = ((start as f64 * worst).ceil() as usize).clamp(1, MOST_RELAYS);
    let mut counts = vec![guess.saturating_sub(1).max(1), guess];
    let found = loop {
        try_all(&counts, &mut tried)?;
        let smallest_fit = tried
            .values()
            .find(|probe| probe.fits)
            .map(|probe| probe.relays);
        let largest_fail = tried
            .values()
            .filter(|probe| !probe.fits && smallest_fit.is_none_or(|f| probe.relays < f))
            .map(|probe| probe.relays)
            .max()
            .unwrap_or(0);
        match smallest_fit {
            Some(f) if f == largest_fail + 1 => break f,
            Some(f) => {
                // Counts not tried between the last failure and the first fit.
                let (lo, hi) = (largest_fail + 1, f - 1);
                counts = if hi - lo < 2 {
                    (lo..=hi).collect()
                } else {
                    vec![lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3]
                };
            }
            None => {
                if largest_fail >= MOST_RELAYS {
                    return Err(SimError::Invalid(format!(
                        "no relay count up to {MOST_RELAYS} keeps the busiest relay within \
                         --max-utilisation"
                    )));
                }
                // Grow in steps of about 5% so a far-off guess does not
                // take hundreds of runs.
                let step = (largest_fail / 20).max(1);
                counts = vec![
                    (largest_fail + step).min(MOST_RELAYS),
                    (largest_fail + 2 * step).min(MOST_RELAYS),
                ];
            }
        }
    };
    let day = days
        .remove(&found)
        .ok_or_else(|| SimError::Invalid("the search lost its result".into()))?;
    Ok((found, tried.into_values().collect(), day))
}

/// The sizing report.
pub(crate) fn size(p: &Params, rows: &[ParamRow], c: &Community) -> Result<String, SimError> {
    let limit = p.cluster.max_utilisation;
    let (relays, probes, day) = smallest_relays(p, c)?;
    let mut out = String::new();
    report::header(&mut out, p, rows);
    report::community_section(&mut out, p, c, &day);

    say(&mut out, "## Sizing: relays");
    say(&mut out, "");
    say(
        &mut out,
        &format!(
            "The normal day simulated at each relay count tried; the busiest relay's peak \
             second against --max-utilisation {}:",
            pct(limit)
        ),
    );
    say(&mut out, "");
    let mut table = Table::new(&["relays", "CPU", "memory", "network", "within limit"]);
    for probe in &probes {
        let util = |i: usize| probe.uses.get(i).map_or(0.0, Use::utilisation);
        table.row(vec![
            probe.relays.to_string(),
            pct(util(0)),
            pct(util(1)),
            pct(util(2)),
            if probe.fits { "yes" } else { "no" }.into(),
        ]);
    }
    out.push_str(&table.render());
    say(&mut out, "");
    say(
        &mut out,
        &format!(
            "Smallest relay count: **{relays}** ({} cores each).",
            num(p.cluster.relay_cores)
        ),
    );
    say(&mut out, "");
    report::day_section(&mut out, p, &day);

    // NATS: 3 or 5 nodes.
    let all = uses(p, &day);
    let nats: Vec<&Use> = all.iter().filter(|u| !u.per_relay).collect();
    say(&mut out, "## Sizing: NATS nodes");
    say(&mut out, "");
    say(
        &mut out,
        &format!(
            "SOTTO_INBOX is one stream with {} replicas: one node leads it, {} follow, and \
             further nodes hold no part of it. The stream's load per node is therefore the \
             same with 3 or 5 nodes; a fifth node adds failure tolerance only with \
             --replicas 5, which adds followers, not capacity.",
            p.cluster.replicas,
            p.cluster.replicas.saturating_sub(1)
        ),
    );
    say(&mut out, "");
    let mut table = Table::new(&["nodes", "nodes without a stream replica"]);
    for u in &nats {
        table.head_push(u.name);
    }
    table.head_push("within limit");
    let nats_fits = nats.iter().all(|u| u.utilisation() <= limit);
    for nodes in [3u32, 5] {
        if nodes < p.cluster.replicas {
            continue;
        }
        let mut row = vec![nodes.to_string(), (nodes - p.cluster.replicas).to_string()];
        for u in &nats {
            row.push(pct(u.utilisation()));
        }
        row.push(if nats_fits { "yes" } else { "no" }.into());
        table.row(row);
    }
    out.push_str(&table.render());
    say(&mut out, "");
    let leader_peak = nats.first().map_or(0.0, |u| u.peak);
    if nats_fits {
        say(
            &mut out,
            "3 NATS nodes suffice (5 would carry the same stream load).",
        );
    } else {
        let over: Vec<String> = nats
            .iter()
            .filter(|u| u.utilisation() > limit)
            .map(|u| format!("{} at {}", u.name, pct(u.utilisation())))
            .collect();
        say(
            &mut out,
            &format!(
                "Neither 3 nor 5 NATS nodes suffice: {}. The stream leader would need {} cores \
                 to stay within the limit at this community's peak ({} cores of demand), or \
                 the stream split so that several nodes lead a part each.",
                over.join(", "),
                num((leader_peak / limit).ceil()),
                num(leader_peak)
            ),
        );
    }
    say(&mut out, "");

    // Growth.
    growth_section(&mut out, p, relays, &all);

    // The sized cluster under the day's failures.
    if p.relay_failure_at().is_some() || p.leader_failure_at().is_some() {
        let relays_failing = relays.max(2);
        let mut plans = vec![Plan {
            relays: relays_failing,
            relay_failure: p.relay_failure_at(),
            leader_failure: p.leader_failure_at(),
        }];
        if relays_failing != relays {
            plans.push(normal(relays_failing));
        }
        let mut days = simulate(p, c, &plans)?.into_iter();
        let failing = days
            .next()
            .ok_or_else(|| SimError::Invalid("no day simulated".into()))?;
        let normal = days.next().unwrap_or(day);
        say(
            &mut out,
            &format!("## The sized cluster ({relays_failing} relays) under the day's failures"),
        );
        say(&mut out, "");
        report::failure_sections(&mut out, p, &normal, &failing);
    }
    report::assumptions(&mut out, p);
    Ok(out)
}

fn growth_section(out: &mut String, p: &Params, relays: usize, all: &[Use]) {
    let limit = p.cluster.max_utilisation;
    let registered = f64::from(p.community.registered);
    let connected = f64::from(p.community.connected);
    say(out, "## Sizing: as the community grows");
    say(out, "");
    say(
        out,
        &format!(
            "On {relays} relays and {} NATS nodes, each resource's peak grown with the community \
             (registered and connected users alike); it binds when it passes {}:",
            p.cluster.nats_nodes,
            pct(limit)
        ),
    );
    say(out, "");
    let mut binds: Vec<(f64, &Use)> = all
        .iter()
        .map(|u| {
            let k = if u.utilisation() > 0.0 {
                limit / u.utilisation()
            } else {
                f64::INFINITY
            };
            (k, u)
        })
        .collect();
    binds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut table = Table::new(&[
        "resource",
        "peak use now",
        "binds at",
        "registered then",
        "connected at peak then",
        "more relays help",
    ]);
    for (k, u) in &binds {
        table.row(vec![
            u.name.to_owned(),
            pct(u.utilisation()),
            if k.is_finite() {
                format!("x{}", num(*k))
            } else {
                "never".into()
            },
            if k.is_finite() {
                count(registered * k)
            } else {
                "-".into()
            },
            if k.is_finite() {
                count(connected * k)
            } else {
                "-".into()
            },
            if u.per_relay { "yes" } else { "no" }.into(),
        ]);
    }
    out.push_str(&table.render());
    say(out, "");
    if let Some((k, u)) = binds.first() {
        say(
            out,
            &format!(
                "First to run out: **{}** at x{} of this community{}.",
                u.name,
                num(*k),
                if *k < 1.0 {
                    " (already over the limit)"
                } else {
                    ""
                }
            ),
        );
    }
    if let Some((k, u)) = binds.iter().find(|(_, u)| !u.per_relay) {
        say(
            out,
            &format!(
                "First that no number of relays relieves: **{}** at x{} ({} registered, {} \
                 connected at the peak).",
                u.name,
                num(*k),
                count(registered * k),
                count(connected * k)
            ),
        );
    }
    say(out, "");
    // The table by scale.
    let fixed: Vec<&Use> = all.iter().filter(|u| !u.per_relay).collect();
    let relay_util = all
        .iter()
        .filter(|u| u.per_relay)
        .map(Use::utilisation)
        .fold(0.0, f64::max);
    let last_bind = binds
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| k.is_finite())
        .fold(1.0, f64::max);
    let mut head = vec!["scale", "registered", "connected at peak", "relays needed"];
    head.extend(fixed.iter().map(|u| u.name));
    let mut table = Table::new(&head);
    let mut scale = 1.0f64;
    loop {
        let needed = ((relays as f64) * scale * relay_util / limit)
            .ceil()
            .max(1.0);
        let mut row = vec![
            format!("x{}", num(scale)),
            count(registered * scale),
            count(connected * scale),
            count(needed),
        ];
        for u in &fixed {
            let util = u.utilisation() * scale;
            let mark = if util > limit { " !" } else { "" };
            row.push(format!("{}{mark}", pct(util)));
        }
        table.row(row);
        if scale >= last_bind || scale >= 4096.0 {
            break;
        }
        scale *= 2.0;
    }
    out.push_str(&table.render());
    say(out, "");
    say(
        out,
        "\"!\" marks a resource over the limit. Relays needed: the busiest relay's peak \
         (CPU, memory or network, whichever is highest) grown with the community and spread \
         over more relays.",
    );
    say(out, "");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &[&str]) -> Params {
        let mut argv = vec![
            "scaling-sim",
            "--registered",
            "3000",
            "--connected",
            "1500",
            "--seconds",
            "1200",
            "--peak-hour",
            "0",
            "--trough-hour",
            "12",
            "--room-mix",
            "3-10:100",
            "--relays",
            "2",
            "--relay-cores",
            "0.005",
            "--drain-per-client",
            "10",
            "--handshake-us",
            "200",
            "--msgs-per-user-day",
            "5000",
            "--no-failures",
        ];
        argv.extend_from_slice(extra);
        Params::parse_args(argv).unwrap().0
    }

    #[test]
    fn dearer_deliveries_need_more_relays() {
        let cheap = params(&[]);
        let community = Community::generate(&cheap).unwrap();
        let (relays, probes, _) = smallest_relays(&cheap, &community).unwrap();
        assert!(relays > 1, "the test needs more than one relay: {relays}");
        // The count found fits and the one below does not.
        assert!(probes.iter().any(|pr| pr.relays == relays && pr.fits));
        assert!(probes.iter().any(|pr| pr.relays == relays - 1 && !pr.fits));
        let dear = params(&["--relay-us-per-delivery", "80"]);
        let (more, _, _) = smallest_relays(&dear, &community).unwrap();
        assert!(
            more > relays,
            "{more} relays for twice the cost, {relays} before"
        );
    }
}
