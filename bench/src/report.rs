//! Per-round lines, then for every figure the median and min-max spread
//! per target and the per-round ratios between the targets.

use crate::wire::Proto;

/// Named figures of one round of one target, in display order.
pub(crate) type Figures = Vec<(&'static str, f64)>;

/// Collects rounds and prints them.
#[derive(Debug, Default)]
pub(crate) struct Report {
    rounds: Vec<(usize, Proto, Figures)>,
}

impl Report {
    /// Records and prints one round.
    pub(crate) fn add(&mut self, round: usize, proto: Proto, figures: Figures) {
        let line: Vec<String> = figures
            .iter()
            .map(|(name, value)| format!("{name} {}", show(name, *value)))
            .collect();
        println!("round {round} {:<9}  {}", label(proto), line.join("  "));
        self.rounds.push((round, proto, figures));
    }

    fn values(&self, proto: Proto, name: &str) -> Vec<(usize, f64)> {
        self.rounds
            .iter()
            .filter(|(_, p, _)| *p == proto)
            .filter_map(|(round, _, figures)| {
                figures
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*round, *v))
            })
            .collect()
    }

    /// Prints the summary table: each target's median and spread, then
    /// the per-round ratios cluster/relay, relay/in-memory,
    /// relay/forwarder and in-memory/forwarder, for the targets that ran.
    pub(crate) fn summary(&self) {
        let mut names: Vec<&'static str> = Vec::new();
        let mut protos: Vec<Proto> = Vec::new();
        for (_, proto, figures) in &self.rounds {
            if !protos.contains(proto) {
                protos.push(*proto);
            }
            for (name, _) in figures {
                if !names.contains(name) {
                    names.push(name);
                }
            }
        }
        protos.sort_by_key(|p| order(*p));
        let pairs: Vec<(Proto, Proto)> = [
            (Proto::Cluster, Proto::Relay),
            (Proto::Relay, Proto::InMemory),
            (Proto::Relay, Proto::Forwarder),
            (Proto::InMemory, Proto::Forwarder),
        ]
        .into_iter()
        .filter(|(a, b)| protos.contains(a) && protos.contains(b))
        .collect();
        println!();
        let mut header = format!("{:<18}", "median [min-max]");
        for proto in &protos {
            header.push_str(&format!(" {:>32}", label(*proto)));
        }
        for (a, b) in &pairs {
            header.push_str(&format!(" {:>22}", format!("{}/{}", label(*a), label(*b))));
        }
        println!("{header}");
        println!(
            "{:<18} {:>w$}",
            "",
            "(ratios per round)",
            w = 33 * protos.len() + 23 * pairs.len() - 1
        );
        for name in names {
            // Counts of trouble and of other load are not compared.
            let comparable = !matches!(
                name,
                "other cores" | "missing" | "failed" | "clients" | "refused"
            );
            let cell = |values: Vec<f64>, ratio: bool| match spread(values) {
                None => "-".to_string(),
                Some((median, min, max)) if ratio => {
                    format!("{median:.2} [{min:.2}-{max:.2}]")
                }
                Some((median, min, max)) => format!(
                    "{} [{}-{}]",
                    show(name, median),
                    show(name, min),
                    show(name, max)
                ),
            };
            let mut line = format!("{name:<18}");
            for proto in &protos {
                let values = self.values(*proto, name).into_iter().map(|(_, v)| v);
                line.push_str(&format!(" {:>32}", cell(values.collect(), false)));
            }
            for (a, b) in &pairs {
                let ratios = if comparable {
                    self.ratios(*a, *b, name)
                } else {
                    Vec::new()
                };
                line.push_str(&format!(" {:>22}", cell(ratios, true)));
            }
            println!("{line}");
        }
    }

    /// `a`'s figure `name` over `b`'s, per round in which both ran.
    fn ratios(&self, a: Proto, b: Proto, name: &str) -> Vec<f64> {
        let over = self.values(b, name);
        self.values(a, name)
            .iter()
            .filter_map(|(round, x)| {
                let (_, y) = over.iter().find(|(r, _)| r == round)?;
                (*y != 0.0).then(|| x / y)
            })
            .collect()
    }
}

fn label(proto: Proto) -> &'static str {
    proto.label()
}

/// The order of the report's columns: the relay, the cluster, the
/// in-memory relay, the forwarder.
fn order(proto: Proto) -> u8 {
    match proto {
        Proto::Relay => 0,
        Proto::Cluster => 1,
        Proto::InMemory => 2,
        Proto::Forwarder => 3,
    }
}

/// Median, minimum and maximum.
fn spread(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let min = *values.first()?;
    let max = *values.last()?;
    let median = if n % 2 == 1 {
        *values.get(n / 2)?
    } else {
        (values.get(n / 2 - 1)? + values.get(n / 2)?) / 2.0
    };
    Some((median, min, max))
}

/// A figure formatted by what it measures.
fn show(name: &str, value: f64) -> String {
    if name.ends_with("/s") || matches!(name, "clients" | "missing" | "failed" | "refused") {
        thousands(value.round() as u64)
    } else if name.ends_with("us") {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_formatting() {
        assert_eq!(spread(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(spread(vec![4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(spread(vec![]), None);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(show("msgs/s", 1234.4), "1,234");
        assert_eq!(show("p99 us", 812.6), "813");
    }
}
