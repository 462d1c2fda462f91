//! The clients: connecting and registering, the traffic phase (closed and
//! open loop), idle connections and handshake storms.
//!
//! # Measuring
//!
//! Every phase runs on one clock ([`Clock`]): warm-up, then a measurement
//! window, then the senders stop and what is in flight drains. Senders
//! stamp each frame's body with its send time (closed loop: the time it is
//! written; open loop: the time it was *scheduled*, so a stalled target
//! cannot hide its stall by slowing the sender, i.e. no coordinated
//! omission). Readers take the time once per read and record receive time
//! minus stamp in an HDR histogram for every frame stamped inside the
//! window, and count the deliveries received inside it. The target's CPU
//! time and memory are read from `/proc` at the window's edges.
//!
//! Closed loop: a sender keeps at most `window` messages in flight; a
//! message is done when the target accepted it (a `Sent` covering its
//! route id, or a forwarder ack) and all its deliveries arrived. The
//! sender writes whatever the window allows as one batch. Open loop: a pacer
//! thread ticks every `tick` and each sender writes everything scheduled
//! until then.
//!
//! # Layout
//!
//! - `client`: connecting and registering a client ([`Conn`]), many at
//!   once ([`connect_all`], also the idle scenario's clients), and the
//!   relay names and destinations they use.
//! - `traffic`: the traffic phase: senders (closed and open loop), readers
//!   and what they measured.
//! - `handshake`: handshake storms.
//! - `blobs`: the blob path, uploads and fetches of 64 KiB chunks.
//! - here: the clock and the measurement window every phase shares.

mod blobs;
mod client;
mod handshake;
mod traffic;

use std::time::{Duration, Instant};

use crate::BoxError;
use crate::target::{Target, Usage, usage_of};

pub(crate) use blobs::{BlobPlan, run_blobs};
pub(crate) use client::{Bench, Conn, connect_all, to_room, to_user, user_name};
pub(crate) use handshake::handshakes;
pub(crate) use traffic::{Mode, Sender, Traffic, run_traffic};

/// Nanoseconds since the bench started, shared by senders and readers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn instant(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.base + Duration::from_nanos(ns))
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    end: u64,
}

impl Window {
    fn contains(&self, t: u64) -> bool {
        (self.start..self.end).contains(&t)
    }

    /// Waits out the window, reading the target's and this process's CPU
    /// and memory at its start and its end.
    async fn measure(
        &self,
        clock: &Clock,
        target: &Target,
    ) -> Result<((Usage, Usage), (Usage, Usage)), BoxError> {
        tokio::time::sleep_until(clock.instant(self.start)).await;
        let (target_start, bench_start) = (target.usage()?, usage_of("self")?);
        tokio::time::sleep_until(clock.instant(self.end)).await;
        let (target_end, bench_end) = (target.usage()?, usage_of("self")?);
        Ok(((target_start, target_end), (bench_start, bench_end)))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
