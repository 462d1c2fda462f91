//! Per-round lines, then for every figure the median and min-max spread
//! per target and the per-round ratio relay/forwarder.

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

    /// Prints the summary table.
    pub(crate) fn summary(&self) {
        let mut names: Vec<&'static str> = Vec::new();
        for (_, _, figures) in &self.rounds {
            for (name, _) in figures {
                if !names.contains(name) {
                    names.push(name);
                }
            }
        }
        println!();
        println!(
            "{:<18} {:>34} {:>34} {:>26}",
            "median [min-max]", "relay", "forwarder", "relay/forwarder (per round)"
        );
        for name in names {
            let relay = self.values(Proto::Relay, name);
            let forwarder = self.values(Proto::Forwarder, name);
            // Counts of trouble and of other load are not compared.
            let comparable = !matches!(name, "other cores" | "missing" | "failed" | "clients");
            let ratios: Vec<f64> = relay
                .iter()
                .filter(|_| comparable)
                .filter_map(|(round, r)| {
                    let (_, f) = forwarder.iter().find(|(fr, _)| fr == round)?;
                    (*f != 0.0).then(|| r / f)
                })
                .collect();
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
            println!(
                "{:<18} {:>34} {:>34} {:>26}",
                name,
                cell(relay.into_iter().map(|(_, v)| v).collect(), false),
                cell(forwarder.into_iter().map(|(_, v)| v).collect(), false),
                cell(ratios, true),
            );
        }
    }
}

fn label(proto: Proto) -> &'static str {
    match proto {
        Proto::Relay => "relay",
        Proto::Forwarder => "forwarder",
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
    if name.ends_with("/s") || name == "clients" || name == "missing" || name == "failed" {
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
