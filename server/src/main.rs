//! The `relay` binary: parse the configuration, set up logging, load or
//! generate the certificate, bind, print the address to share, and run
//! until SIGINT or SIGTERM. SIGHUP reloads the certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sotto_proto::RelayAddress;
use sotto_relay::{CertSource, CertStore, Config, run};
use tracing_subscriber::EnvFilter;

/// sotto's relay: routes end-to-end encrypted chat between sotto clients.
///
/// With no arguments it listens on 0.0.0.0:7447, keeps its data in
/// ./sotto-relay-data, generates a self-signed certificate there on first
/// start, and prints a line `address: sotto://...` to share with users:
/// the address carries the certificate's fingerprint, so clients pin it
/// with no other step. Every option can also be set in a TOML file
/// (`--config`); options on the command line win. Logs go to stderr
/// (RUST_LOG=debug for more) and never contain message content.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// TOML file with any of the settings below (same names, underscores
    /// instead of dashes; durations in seconds).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address and port to listen on [default: 0.0.0.0:7447].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Host name or IP clients use to reach the relay, printed in its
    /// address [default: this machine's host name].
    #[arg(long = "host", value_name = "NAME")]
    public_host: Option<String>,
    /// Directory for the certificate, key and database [default: ./sotto-relay-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain from a CA (leaf first); needs --key. Without it
    /// a self-signed certificate is generated in the data directory.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9747 [default: off].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most simultaneous connections [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds allowed for the TLS handshake and registration [default: 10].
    #[arg(long, value_name = "SECS")]
    handshake_timeout: Option<u64>,
    /// Close connections silent for this many seconds [default: 90].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// Ping connections quiet for this many seconds [default: 30].
    #[arg(long, value_name = "SECS")]
    keepalive_interval: Option<u64>,
    /// Largest frame accepted, in bytes [default and maximum: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_frame_len: Option<usize>,
    /// Most recipients (slots) in one message [default: 4096].
    #[arg(long, value_name = "N")]
    max_slots: Option<usize>,
    /// Frames per second one connection may send, sustained; faster
    /// senders are slowed down, not dropped [default: 500].
    #[arg(long, value_name = "N")]
    rate_per_sec: Option<u32>,
    /// Frames one connection may send in a burst [default: 1000].
    #[arg(long, value_name = "N")]
    rate_burst: Option<u32>,
    /// Frames queued for one client before it is disconnected as too slow
    /// [default: 4096].
    #[arg(long, value_name = "N")]
    outbound_queue: Option<usize>,
    /// Most rooms one user may be in [default: 64].
    #[arg(long, value_name = "N")]
    max_rooms_per_user: Option<usize>,
    /// Offline queue: most messages kept per user [default: 1000].
    #[arg(long, value_name = "N")]
    offline_max_messages: Option<u64>,
    /// Offline queue: most bytes kept per user [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    offline_max_bytes: Option<u64>,
    /// Offline queue: drop messages older than this many seconds [default: 604800].
    #[arg(long, value_name = "SECS")]
    offline_max_age: Option<u64>,
    /// Seconds clients get to hear about a shutdown [default: 5].
    #[arg(long, value_name = "SECS")]
    shutdown_grace: Option<u64>,
}

impl Args {
    /// Defaults, then the file, then the flags.
    fn config(self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        let secs = Duration::from_secs;
        macro_rules! set {
            ($($field:ident $(=> $map:expr)?),* $(,)?) => {$(
                if let Some(value) = self.$field {
                    config.$field = set!(@map value $(, $map)?);
                }
            )*};
            (@map $value:ident) => { $value };
            (@map $value:ident, $map:expr) => { $map($value) };
        }
        set!(
            listen, data_dir, max_connections, max_frame_len, max_slots, rate_per_sec,
            rate_burst, outbound_queue, max_rooms_per_user, offline_max_messages,
            offline_max_bytes,
            handshake_timeout => secs, idle_timeout => secs, keepalive_interval => secs,
            offline_max_age => secs, shutdown_grace => secs,
        );
        if self.public_host.is_some() {
            config.public_host = self.public_host;
        }
        if self.cert.is_some() {
            config.cert = self.cert;
            config.key = self.key;
        }
        if self.metrics.is_some() {
            config.metrics = self.metrics;
        }
        config.validate()?;
        Ok(config)
    }
}

fn machine_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn print_address(host: &str, port: u16, fingerprint: [u8; 32]) {
    let address = RelayAddress {
        host: host.to_string(),
        port,
        fingerprint,
    };
    // The one line meant for people and scripts alike: on stdout, on its own.
    #[allow(clippy::print_stdout)]
    {
        println!("address: {address}");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match serve(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), String> {
    let config = args.config()?;
    let host = config.public_host.clone().unwrap_or_else(|| {
        if config.listen.ip().is_unspecified() {
            machine_host_name()
        } else {
            config.listen.ip().to_string()
        }
    });
    let source = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => CertSource::Generated {
            dir: config.data_dir.clone(),
            hosts: vec![host.clone(), "localhost".to_string()],
        },
    };
    let certs = CertStore::load(source).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tracing::info!(
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        certificate = %sotto_relay::tls::hex(&certs.fingerprint()),
        "relay starting"
    );
    print_address(&host, port, certs.fingerprint());

    tokio::spawn(reload_on_hangup(Arc::clone(&certs), host.clone(), port));
    run(listener, certs, config, terminated())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("relay stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the certificate on every SIGHUP (after a renewal), keeping
/// connected clients.
async fn reload_on_hangup(certs: Arc<CertStore>, host: String, port: u16) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            match certs.reload() {
                Ok(fingerprint) => {
                    tracing::info!(certificate = %sotto_relay::tls::hex(&fingerprint), "certificate reloaded");
                    print_address(&host, port, fingerprint);
                }
                Err(error) => {
                    tracing::error!(%error, "certificate reload failed; keeping the old one")
                }
            }
        }
    }
}
