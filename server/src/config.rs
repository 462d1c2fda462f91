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
    /// The last tenth of them is kept for identity keys and source
    /// addresses that hold few ([`Config::reserve`]).
    pub max_connections: usize,
    /// Most connections registered under one identity key at once (each
    /// under a name of its own: a name has one connection).
    pub max_connections_per_key: usize,
    /// Most connections from one source address (an IPv4 address, or an
    /// IPv6 /64) that have not registered yet; further ones are closed at
    /// once, before the TLS handshake.
    pub max_unregistered_per_ip: usize,
    /// Most names one identity key may own in the name directory. Names
    /// are never released, so this is also how often a user can change
    /// names.
    pub max_names_per_key: u64,
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
    /// Bytes waiting to be written to one client; a client that lets this
    /// much pile up is disconnected as too slow, as for `outbound_queue`.
    pub outbound_queue_bytes: usize,
    /// Room fan-out one identity key may cause, in bytes per second,
    /// sustained: a room message costs its size (body and slots) times its
    /// recipients.
    pub fanout_bytes_per_sec: u64,
    /// Room fan-out one identity key may cause in a burst, in bytes; also
    /// the largest single room message (size times recipients).
    pub fanout_burst_bytes: u64,
    /// Most rooms one user may be in at once.
    pub max_rooms_per_user: usize,
    /// Stored deliveries: most held for one user (until it acknowledges
    /// them), online or not.
    pub offline_max_messages: u64,
    /// Stored deliveries: most bytes held for one user (bodies and slots).
    pub offline_max_bytes: u64,
    /// Stored deliveries older than this are dropped.
    #[serde(with = "humantime_secs")]
    pub offline_max_age: Duration,
    /// Most bytes of ciphertext in one blob (an encrypted file); 0: the
    /// relay takes no files.
    pub blob_max_bytes: u64,
    /// A blob is deleted this long after its last chunk was stored.
    #[serde(with = "humantime_secs")]
    pub blob_max_age: Duration,
    /// Most bytes of blobs one identity key may hold at once.
    pub blob_quota_bytes: u64,
    /// Most bytes of blobs the relay holds at once.
    pub blob_max_total: u64,
    /// Most message bodies stored for one room at once.
    pub room_max_messages: u64,
    /// Most bytes of message bodies stored for one room at once.
    pub room_max_bytes: u64,
    /// A member offline for longer than this stops being a member of its
    /// rooms (zero: never).
    #[serde(with = "humantime_secs")]
    pub member_absence: Duration,
    /// Time connected clients get to hear the shutdown before the relay exits.
    #[serde(with = "humantime_secs")]
    pub shutdown_grace: Duration,
    /// Milliseconds a batch of deliveries handed to connected recipients
    /// waits for their acknowledgements before it is written to the
    /// database anyway (protocol.md 9.7): what an acknowledgement within it
    /// saves is the write; what it costs is as much delay for the `Sent` of
    /// a message to someone offline or slow. Zero: nothing is handed over,
    /// every delivery is stored before it is sent to anyone. At most
    /// 10,000.
    pub delivery_hold_ms: u64,
    /// Address of the Prometheus metrics endpoint; off when absent.
    pub metrics: Option<SocketAddr>,
    /// Name each connection's peer address (IP and port) in the log. Off
    /// by default: the log then links a registered name to a connection
    /// number only, never to where it connects from.
    pub log_peer_addresses: bool,
    /// Share one community with other relays through NATS JetStream
    /// (docs/self-hosting.md, "A cluster of relays"); absent: this relay
    /// alone, with its database in `data_dir`.
    pub cluster: Option<ClusterConfig>,
}

/// How a relay reaches the NATS cluster it shares its community through.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers, `nats://HOST:PORT` (or `tls://HOST:PORT`); the relay
    /// connects to one and moves to another when it fails.
    pub servers: Vec<String>,
    /// User name to authenticate to NATS with (with `password_file`).
    pub user: Option<String>,
    /// File holding the password for `user` (its first line).
    pub password_file: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`) to authenticate with instead.
    pub nkey_file: Option<PathBuf>,
    /// PEM certificates to verify the NATS servers' TLS certificates with;
    /// given, the connection to NATS must be TLS.
    pub tls_ca: Option<PathBuf>,
    /// Copies JetStream keeps of everything the relays share: 3 for a
    /// cluster of three or more NATS nodes (one may fail), at most 5.
    pub replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            user: None,
            password_file: None,
            nkey_file: None,
            tls_ca: None,
            replicas: 3,
        }
    }
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
            max_connections_per_key: 8,
            max_unregistered_per_ip: 32,
            max_names_per_key: 8,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            keepalive_interval: Duration::from_secs(30),
            max_frame_len: sotto_proto::MAX_FRAME_LEN,
            max_slots: 4096,
            rate_per_sec: 500,
            rate_burst: 1000,
            outbound_queue: 4096,
            outbound_queue_bytes: 8 * 1024 * 1024,
            fanout_bytes_per_sec: 16 * 1024 * 1024,
            fanout_burst_bytes: 128 * 1024 * 1024,
            max_rooms_per_user: 64,
            offline_max_messages: 10_000,
            offline_max_bytes: 64 * 1024 * 1024,
            offline_max_age: Duration::from_secs(7 * 24 * 60 * 60),
            blob_max_bytes: 100 * 1024 * 1024,
            blob_max_age: Duration::from_secs(7 * 24 * 60 * 60),
            blob_quota_bytes: 1024 * 1024 * 1024,
            blob_max_total: 16 * 1024 * 1024 * 1024,
            room_max_messages: 10_000,
            room_max_bytes: 64 * 1024 * 1024,
            member_absence: Duration::from_secs(30 * 24 * 60 * 60),
            shutdown_grace: Duration::from_secs(5),
            delivery_hold_ms: 25,
            metrics: None,
            log_peer_addresses: false,
            cluster: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; absent keys keep their defaults, unknown keys are
    /// an error.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Connections kept for identity keys that hold none yet, and for
    /// source addresses that hold few: when fewer than this many are
    /// free, a key that is connected already cannot register another
    /// connection, and an address that holds `max_connections_per_key`
    /// connections gets no further one, so one key or one host filling
    /// the relay leaves room for everyone else to log in.
    pub fn reserve(&self) -> usize {
        self.max_connections / 10
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
                self.delivery_hold_ms <= 10_000,
                "delivery_hold_ms must be at most 10000",
            ),
            (
                self.outbound_queue_bytes >= self.max_frame_len + 1024,
                "outbound_queue_bytes must be at least max_frame_len + 1024",
            ),
            (
                self.max_connections_per_key > 0,
                "max_connections_per_key must be at least 1",
            ),
            (
                self.max_unregistered_per_ip > 0,
                "max_unregistered_per_ip must be at least 1",
            ),
            (
                self.max_names_per_key > 0,
                "max_names_per_key must be at least 1",
            ),
            (
                self.fanout_bytes_per_sec > 0,
                "fanout_bytes_per_sec must be at least 1",
            ),
            (
                self.fanout_burst_bytes >= self.max_frame_len as u64,
                "fanout_burst_bytes must be at least max_frame_len",
            ),
            (
                self.keepalive_interval < self.idle_timeout,
                "keepalive_interval must be shorter than idle_timeout",
            ),
            (
                !self.handshake_timeout.is_zero(),
                "handshake_timeout must not be zero",
            ),
            (
                !self.blob_max_age.is_zero(),
                "blob_max_age must be at least 1 second",
            ),
            (
                self.cert.is_some() == self.key.is_some(),
                "cert and key must be given together",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err((*why).to_string()),
            None => self
                .cluster
                .as_ref()
                .map_or(Ok(()), ClusterConfig::validate),
        }
    }
}

impl ClusterConfig {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("cluster: name at least one NATS server".into());
        }
        if let Some(bad) = self.servers.iter().find(|s| !valid_server(s)) {
            return Err(format!(
                "cluster: {bad:?} is not a NATS server address (nats://HOST:PORT or tls://HOST:PORT)"
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("cluster: replicas must be between 1 and 5".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err("cluster: user and password_file must be given together".into());
        }
        if self.user.is_some() && self.nkey_file.is_some() {
            return Err(
                "cluster: authenticate with a user and password or an nkey, not both".into(),
            );
        }
        Ok(())
    }
}

/// `nats://HOST:PORT` or `tls://HOST:PORT`, as NATS clients write them.
fn valid_server(server: &str) -> bool {
    let Some((scheme, rest)) = server.split_once("://") else {
        return false;
    };
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    matches!(scheme, "nats" | "tls")
        && host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
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
        let config = Config {
            outbound_queue_bytes: 1024,
            ..Config::default()
        };
        assert!(config.validate().is_err());
        let config = Config {
            max_names_per_key: 0,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn a_cluster_is_read_from_toml_and_checked() {
        let config = Config::from_toml(
            "[cluster]\nservers = [\"nats://10.0.0.1:4222\", \"tls://nats.example:4222\"]\n\
             user = \"relay\"\npassword_file = \"/etc/sotto/nats-password\"\n",
        )
        .unwrap();
        let cluster = config.cluster.clone().unwrap();
        assert_eq!(cluster.servers.len(), 2);
        assert_eq!(cluster.replicas, 3);
        config.validate().unwrap();
        assert!(Config::default().cluster.is_none());
        let bad = |cluster: ClusterConfig| {
            Config {
                cluster: Some(cluster),
                ..Config::default()
            }
            .validate()
            .unwrap_err()
        };
        let servers = vec!["nats://127.0.0.1:4222".to_string()];
        assert!(bad(ClusterConfig::default()).contains("at least one"));
        for wrong in ["127.0.0.1:4222", "http://h:1", "nats://h", "nats://:4222"] {
            let cluster = ClusterConfig {
                servers: vec![wrong.to_string()],
                ..ClusterConfig::default()
            };
            assert!(bad(cluster).contains("not a NATS server"), "{wrong}");
        }
        let cluster = ClusterConfig {
            servers: servers.clone(),
            replicas: 0,
            ..ClusterConfig::default()
        };
        assert!(bad(cluster).contains("replicas"));
        let cluster = ClusterConfig {
            servers,
            user: Some("relay".into()),
            ..ClusterConfig::default()
        };
        assert!(bad(cluster).contains("together"));
    }

    #[test]
    fn the_abuse_limits_are_read_from_toml() {
        let config = Config::from_toml(
            "max_names_per_key = 2\nmax_connections_per_key = 3\nmax_unregistered_per_ip = 4\n\
             fanout_bytes_per_sec = 5000000\nfanout_burst_bytes = 6000000\n\
             outbound_queue_bytes = 7000000\n",
        )
        .unwrap();
        assert_eq!(config.max_names_per_key, 2);
        assert_eq!(config.max_connections_per_key, 3);
        assert_eq!(config.max_unregistered_per_ip, 4);
        assert_eq!(config.fanout_bytes_per_sec, 5_000_000);
        assert_eq!(config.fanout_burst_bytes, 6_000_000);
        assert_eq!(config.outbound_queue_bytes, 7_000_000);
        config.validate().unwrap();
        assert_eq!(Config::default().reserve(), 1000);
    }
}
