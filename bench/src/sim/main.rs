//! `scaling-sim`: a capacity model of a sotto cluster at internet scale.
//!
//! It simulates one day (86,400 one-second steps) of a community using a
//! cluster of relays over NATS JetStream (self-hosting.md, "A cluster of
//! relays"): users connecting and leaving along a day curve, direct and
//! room messages with Poisson arrivals, every delivery published to the one
//! stream SOTTO_INBOX (whose leader, one NATS node, takes every write),
//! deliveries stored for members who are away and taken when they come
//! back, and the CPU, memory, network and disk this costs each relay, the
//! stream leader and its followers. Then the same day again with a relay
//! killed and the stream leader's node killed at the peak. With `--size`
//! it finds the smallest cluster that keeps every peak under
//! `--max-utilisation` and how far the community could then grow. The
//! report (plain text with Markdown tables) goes to standard output;
//! the run's time to standard error. The same parameters and seed give the
//! same report.
//!
//! ```sh
//! cargo run --release -p sotto-bench --bin scaling-sim
//! cargo run --release -p sotto-bench --bin scaling-sim -- --size
//! ```
//!
//! # Layout
//!
//! - `params`: the command line, every parameter with its default, the
//!   calibration (`Costs::measured`).
//! - `community`: users, rooms and their members, direct-message partners.
//! - `curve`: the day's connected count and sending activity.
//! - `start`: the state at midnight (what each user has stored).
//! - `day`: the second-by-second engine (`day/users.rs`: connections and
//!   the bounds of what is stored; `day/traffic.rs`: messages, deliveries,
//!   handshake queues; `day/failures.rs`; `day/record.rs`: the stream
//!   leader's queue and each second's figures).
//! - `dist`: the seeded generator, Poisson counts, weighted draws.
//! - `stats`: one second's figures and their summaries.
//! - `report`: the day's report; `sizing`: the search and the growth table.

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    reason = "the report is the program's output, on stdout"
)]
#![allow(
    clippy::cast_possible_truncation,
    reason = "the model computes in f64 and rounds to whole counts and seconds on \
              purpose (an f64 to integer cast saturates); user, room and relay \
              numbers are below the u32/u16 limits the parameters are checked against"
)]
#![allow(
    clippy::indexing_slicing,
    reason = "the engine indexes its own arrays by the user, room and relay numbers \
              it generated, each below the array's length by construction; a slip \
              is a bug the tests catch, not bad input"
)]

mod community;
mod curve;
mod day;
mod dist;
mod params;
mod report;
mod sizing;
mod start;
mod stats;

use std::ffi::OsString;
use std::fmt;
use std::process::ExitCode;
use std::time::Instant;

use community::Community;
use params::Params;

/// What can stop a run.
#[derive(Debug)]
pub(crate) enum SimError {
    /// The command line could not be parsed (or asked for help).
    Usage(clap::Error),
    /// The parameters describe no possible community or cluster.
    Invalid(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(e) => write!(f, "{e}"),
            Self::Invalid(why) => write!(f, "invalid parameters: {why}"),
        }
    }
}

impl std::error::Error for SimError {}

fn main() -> ExitCode {
    let started = Instant::now();
    match run(std::env::args_os()) {
        Ok(report) => {
            print!("{report}");
            eprintln!(
                "scaling-sim: done in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(SimError::Usage(e)) => {
            // Help and version go to stdout with status 0; errors to stderr.
            // If even that cannot be written there is nowhere left to say so.
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
        Err(e) => {
            eprintln!("scaling-sim: {e}");
            ExitCode::from(2)
        }
    }
}

/// Parses the arguments, runs what they ask for and returns the report.
pub(crate) fn run<I, T>(args: I) -> Result<String, SimError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let (params, rows) = Params::parse_args(args)?;
    let community = Community::generate(&params)?;
    if params.run.size {
        sizing::size(&params, &rows, &community)
    } else {
        report::day_report(&params, &rows, &community)
    }
}
