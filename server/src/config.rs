//! The relay's settings: every limit with its documented default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything [`crate::run`] needs to know besides the listener and TLS.
///
/// Every field has a default fit for a small VPS; `relay --help` and
/// docs/self-hosting.md describe each one.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (used by the `relay` binary).
    pub listen: SocketAddr,
    /// Host name clients reach the relay by, printed in its address (used
    /// by the `relay` binary; defaults to the machine's host name).
    pub public_host: Option<String>,
    /// PEM certificate chain from a CA (with `key`); without it the relay
    /// generates a self-signed certificate in `data_dir` on first start.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Where the relay keeps its certificate, key and database.
    pub data_dir: PathBuf,
    /// Most simultaneous connections; further ones wait to be accepted.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and for registering.
    #[serde(with = "humantime_secs")]
    pub handshake_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_secs")]
    pub idle_timeout: Duration,
    /// The relay pings a connection that has been quiet for this long.
    #[serde(with = "humantime_secs")]
    pub keepalive_interval: Duration,
    /// Largest frame accepted from a client, in bytes (at most
    /// `sotto_proto::MAX_FRAME_LEN`).
    pub max_frame_len: usize,
    /// Most slots (recipients) in one message.
    pub max_slots: usize,
    /// Frames per second a connection may send, sustained.
    pub rate_per_sec: u32,
    /// Frames a connection may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Frames waiting to be written to one client; a client that lets this
    /// many pile up is disconnected as too slow.
    pub outbound_queue: usize,
    /// Most rooms one user may be in at once.
    pub max_rooms_per_user: usize,
    /// Offline queue: most messages held for one user.
    pub offline_max_messages: u64,
    /// Offline queue: most bytes held for one user.
    pub offline_max_bytes: u64,
    /// Offline queue: messages older than this are dropped.
    #[serde(with = "humantime_secs")]
    pub offline_max_age: Duration,
    /// Time connected clients get to hear the shutdown before the relay exits.
    #[serde(with = "humantime_secs")]
    pub shutdown_grace: Duration,
    /// Address of the Prometheus metrics endpoint; off when absent.
    pub metrics: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], sotto_proto::DEFAULT_PORT)),
            public_host: None,
            cert: None,
            key: None,
            data_dir: PathBuf::from("sotto-relay-data"),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            keepalive_interval: Duration::from_secs(30),
            max_frame_len: sotto_proto::MAX_FRAME_LEN,
            max_slots: 4096,
            rate_per_sec: 500,
            rate_burst: 1000,
            outbound_queue: 4096,
            max_rooms_per_user: 64,
            offline_max_messages: 1000,
            offline_max_bytes: 16 * 1024 * 1024,
            offline_max_age: Duration::from_secs(7 * 24 * 60 * 60),
            shutdown_grace: Duration::from_secs(5),
            metrics: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; absent keys keep their defaults, unknown keys are
    /// an error.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                self.max_connections > 0,
                "max_connections must be at least 1",
            ),
            (
                (64..=sotto_proto::MAX_FRAME_LEN).contains(&self.max_frame_len),
                "max_frame_len must be between 64 bytes and 1 MiB",
            ),
            (self.rate_per_sec > 0, "rate_per_sec must be at least 1"),
            (self.rate_burst > 0, "rate_burst must be at least 1"),
            (self.outbound_queue > 0, "outbound_queue must be at least 1"),
            (
                self.keepalive_interval < self.idle_timeout,
                "keepalive_interval must be shorter than idle_timeout",
            ),
            (
                !self.handshake_timeout.is_zero(),
                "handshake_timeout must not be zero",
            ),
            (
                self.cert.is_some() == self.key.is_some(),
                "cert and key must be given together",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err((*why).to_string()),
            None => Ok(()),
        }
    }
}

/// Durations in the TOML file are whole seconds.
mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_only_what_it_names() {
        let config = Config::from_toml(
            "max_connections = 5\nidle_timeout = 60\nmetrics = \"127.0.0.1:9100\"\n",
        )
        .unwrap();
        assert_eq!(config.max_connections, 5);
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(config.rate_per_sec, Config::default().rate_per_sec);
    }

    #[test]
    fn unknown_keys_are_an_error() {
        assert!(Config::from_toml("max_conections = 5").is_err());
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let config = Config {
            keepalive_interval: Duration::from_secs(100),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
