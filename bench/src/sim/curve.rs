//! The day: how many users are connected, and how fast each sends, at
//! every second.
//!
//! The shape rises from 0 at the trough hour to 1 at the peak hour along a
//! half cosine and falls back along another (so the curve is smooth, with
//! a long afternoon rise and a short night fall when the peak is in the
//! evening). Connected users follow `peak * (night + (1 - night) * shape)`.
//! A connected user's sending rate follows `1 + (peak_factor - 1) * shape`,
//! scaled so that the day's messages are exactly `msgs-per-user-day` per
//! connected user-day.

use std::f64::consts::PI;

use crate::params::{DAY, Params};

/// The day's curves.
#[derive(Clone, Debug)]
pub(crate) struct Diurnal {
    peak: f64,
    night: f64,
    trough_hour: f64,
    rise_hours: f64,
    peak_factor: f64,
    /// Scales the activity so that its connection-weighted mean is 1.
    activity_scale: f64,
    /// Mean connected users over the day.
    mean_connected: f64,
}

impl Diurnal {
    /// The curves of the parameters.
    pub(crate) fn new(params: &Params) -> Self {
        let c = &params.community;
        let rise_hours = (c.peak_hour - c.trough_hour).rem_euclid(24.0);
        let mut curve = Self {
            peak: f64::from(c.connected),
            night: c.night_fraction,
            trough_hour: c.trough_hour,
            rise_hours,
            peak_factor: params.traffic.peak_factor,
            activity_scale: 1.0,
            mean_connected: 0.0,
        };
        let (mut connected, mut sending) = (0.0, 0.0);
        for t in 0..DAY {
            connected += curve.connected(t);
            sending += curve.connected(t) * curve.activity(t);
        }
        curve.activity_scale = if sending > 0.0 {
            connected / sending
        } else {
            1.0
        };
        curve.mean_connected = connected / f64::from(DAY);
        curve
    }

    /// 0 at the trough, 1 at the peak.
    pub(crate) fn shape(&self, second: u32) -> f64 {
        let hour = f64::from(second % DAY) / 3600.0;
        let since_trough = (hour - self.trough_hour).rem_euclid(24.0);
        if since_trough < self.rise_hours {
            0.5 * (1.0 - (PI * since_trough / self.rise_hours).cos())
        } else {
            let fall = 24.0 - self.rise_hours;
            0.5 * (1.0 + (PI * (since_trough - self.rise_hours) / fall).cos())
        }
    }

    /// Users the community has connected at this second, on average.
    pub(crate) fn connected(&self, second: u32) -> f64 {
        self.peak * (self.night + (1.0 - self.night) * self.shape(second))
    }

    /// A connected user's sending rate at this second, relative to the
    /// day's average.
    pub(crate) fn activity(&self, second: u32) -> f64 {
        self.activity_scale * (1.0 + (self.peak_factor - 1.0) * self.shape(second))
    }

    /// Mean connected users over the day.
    pub(crate) fn mean_connected(&self) -> f64 {
        self.mean_connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(args: &[&str]) -> Diurnal {
        let mut argv = vec!["scaling-sim"];
        argv.extend_from_slice(args);
        Diurnal::new(&Params::parse_args(argv).unwrap().0)
    }

    #[test]
    fn the_day_peaks_and_troughs_where_asked_and_keeps_its_average() {
        let d = curve(&[]);
        assert!((d.connected(21 * 3600) - 100_000.0).abs() < 1e-6);
        assert!((d.connected(4 * 3600) - 30_000.0).abs() < 1e-6);
        let max = (0..DAY).map(|t| d.connected(t)).fold(0.0, f64::max);
        assert!((max - 100_000.0).abs() < 1e-3);
        let weighted: f64 = (0..DAY).map(|t| d.connected(t) * d.activity(t)).sum();
        let plain: f64 = (0..DAY).map(|t| d.connected(t)).sum();
        assert!((weighted / plain - 1.0).abs() < 1e-9);
        let ratio = d.activity(21 * 3600) / d.activity(4 * 3600);
        assert!((ratio - 3.0).abs() < 1e-9);
        // Smooth: no jump between two seconds anywhere.
        for t in 1..DAY {
            assert!((d.connected(t) - d.connected(t - 1)).abs() < 10.0);
        }
    }
}
