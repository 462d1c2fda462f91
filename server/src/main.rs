//! The `relay` binary: parse the configuration, set up logging, load or
//! generate the certificate, bind, print the address to share, and run
//! until SIGINT or SIGTERM. SIGHUP reloads the certificate (and the key
//! hand-over). Subcommands check a configuration file, back up the data
//! directory, print the key fingerprint, renew the generated certificate
//! with the same key, and rotate the key with a signed hand-over.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sotto_proto::{RelayAddress, fingerprint_text};
use sotto_relay::tls::{self, HANDOVER_FILE, HANDOVER_PERIOD};
use sotto_relay::{CertSource, CertStore, ClusterConfig, Config, run};
use tracing_subscriber::EnvFilter;

/// sotto's relay: routes end-to-end encrypted chat between sotto clients.
///
/// With no arguments it listens on 0.0.0.0:7447, keeps its data in
/// ./sotto-relay-data, generates a self-signed certificate there on first
/// start, and prints a line `address: sotto://...` to share with users:
/// the address carries the fingerprint of the certificate's key, so
/// clients pin it with no other step; renewing the certificate with the
/// same key changes nothing, and `relay rotate-key` hands over to a new
/// key. Every option can also be set in a TOML file
/// (`--config`); options on the command line win. Logs go to stderr
/// (RUST_LOG=debug for more) and never contain message content.
#[derive(Debug, Parser)]
#[command(name = "relay", version, about, long_about)]
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
    /// Name each connection's peer address (IP and port) in the log
    /// [default: off: a registered name is linked to a connection number
    /// only].
    #[arg(long)]
    log_peer_addresses: bool,
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
    /// Most messages stored for one user until it acknowledges them, online
    /// or not [default: 10000].
    #[arg(long, value_name = "N")]
    offline_max_messages: Option<u64>,
    /// Most bytes stored for one user [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    offline_max_bytes: Option<u64>,
    /// Drop stored messages older than this many seconds [default: 604800].
    #[arg(long, value_name = "SECS")]
    offline_max_age: Option<u64>,
    /// Most bytes of one encrypted file (blob) stored; 0 = no files
    /// [default: 104857600, 100 MiB].
    #[arg(long, value_name = "BYTES")]
    blob_max_bytes: Option<u64>,
    /// Delete a file (blob) this many seconds after its last chunk was
    /// stored [default: 604800].
    #[arg(long, value_name = "SECS")]
    blob_max_age: Option<u64>,
    /// Most bytes of files (blobs) stored in all [default: 17179869184,
    /// 16 GiB].
    #[arg(long, value_name = "BYTES")]
    blob_max_total: Option<u64>,
    /// Most message bodies stored for one room [default: 10000].
    #[arg(long, value_name = "N")]
    room_max_messages: Option<u64>,
    /// Most bytes of message bodies stored for one room [default: 67108864].
    #[arg(long, value_name = "BYTES")]
    room_max_bytes: Option<u64>,
    /// Seconds offline after which a member leaves its rooms; 0 = never
    /// [default: 2592000, 30 days].
    #[arg(long, value_name = "SECS")]
    member_absence: Option<u64>,
    /// Milliseconds a batch of deliveries to connected clients waits for
    /// their acknowledgements before it is stored anyway [default: 25].
    #[arg(long, value_name = "MS")]
    delivery_hold_ms: Option<u64>,
    /// Seconds clients get to hear about a shutdown [default: 5].
    #[arg(long, value_name = "SECS")]
    shutdown_grace: Option<u64>,
    /// Share one community with other relays through these NATS JetStream
    /// servers, comma-separated nats://HOST:PORT (or tls://) [default: this
    /// relay alone, with its own database].
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Option<Vec<String>>,
    /// User name to authenticate to NATS with (with --cluster-password-file).
    #[arg(long, value_name = "NAME", requires = "cluster_password_file")]
    cluster_user: Option<String>,
    /// File whose first line is the NATS password of --cluster-user.
    #[arg(long, value_name = "FILE", requires = "cluster_user")]
    cluster_password_file: Option<PathBuf>,
    /// File holding an nkey seed to authenticate to NATS with instead.
    #[arg(long, value_name = "FILE")]
    cluster_nkey_file: Option<PathBuf>,
    /// PEM certificates to verify the NATS servers with; requires TLS to NATS.
    #[arg(long, value_name = "PEM")]
    cluster_tls_ca: Option<PathBuf>,
    /// Copies JetStream keeps of what the relays share [default: 3].
    #[arg(long, value_name = "N")]
    cluster_replicas: Option<usize>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Checks, backups, and key and certificate maintenance; without one the
/// relay runs.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a configuration file, with any options given before the
    /// subcommand, without starting the relay: its settings, the
    /// certificate and key (and their fingerprint and expiry), the data
    /// directory, and the cluster's secret and CA files. Prints what the
    /// relay would run with; exits 1 with the reason if it would not
    /// start.
    CheckConfig {
        /// The TOML file (as --config would take it).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Copy the data directory into DIR (new, or empty): the key,
    /// certificate and hand-over files, and a consistent copy of the
    /// database, taken while the relay runs (the relay makes it, asked
    /// through relay.sock in its data directory) or while it is stopped.
    /// Restore by stopping the relay and putting DIR in place of the data
    /// directory (docs/self-hosting.md, "Backup and restore").
    Backup {
        /// Where the copy goes.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the key fingerprint clients pin (the one in the address) of
    /// a certificate file [default: the relay's certificate].
    Fingerprint {
        /// A PEM certificate (the first one in the file counts).
        #[arg(long, value_name = "PEM")]
        cert: Option<PathBuf>,
    },
    /// Issue a new self-signed certificate for the relay's generated key
    /// (relay-key.pem is kept, so every address stays valid), then SIGHUP
    /// the running relay.
    RenewCert,
    /// Move to a new key with a hand-over signed by the current key, which
    /// pinned clients follow without a prompt while it is valid.
    ///
    /// With a generated certificate the new key and certificate are
    /// installed at once (the old key is kept as relay-key-previous.pem):
    /// restart or SIGHUP the relay. With --cert/--key, get a certificate
    /// for the next key, point --cert/--key at it and SIGHUP.
    RotateKey {
        /// The next key (PEM) [default: a new ECDSA P-256 key].
        #[arg(long, value_name = "PEM")]
        next_key: Option<PathBuf>,
        /// Days the hand-over stays valid [default: 90].
        #[arg(long, value_name = "DAYS")]
        valid_days: Option<u64>,
    },
}

impl Args {
    /// Defaults, then the file, then the flags.
    fn config(&self) -> Result<Config, String> {
        self.config_from(self.config.as_deref())
    }

    /// Defaults, then `file`, then the flags.
    fn config_from(&self, file: Option<&std::path::Path>) -> Result<Config, String> {
        let mut config = match file {
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
                if let Some(value) = self.$field.clone() {
                    config.$field = set!(@map value $(, $map)?);
                }
            )*};
            (@map $value:ident) => { $value };
            (@map $value:ident, $map:expr) => { $map($value) };
        }
        set!(
            listen, data_dir, max_connections, max_frame_len, max_slots, rate_per_sec,
            rate_burst, outbound_queue, max_rooms_per_user, offline_max_messages,
            offline_max_bytes, room_max_messages, room_max_bytes, delivery_hold_ms,
            blob_max_bytes, blob_max_total, blob_max_age => secs,
            handshake_timeout => secs, idle_timeout => secs, keepalive_interval => secs,
            offline_max_age => secs, shutdown_grace => secs, member_absence => secs,
        );
        if self.public_host.is_some() {
            config.public_host.clone_from(&self.public_host);
        }
        if self.cert.is_some() {
            config.cert.clone_from(&self.cert);
            config.key.clone_from(&self.key);
        }
        if self.metrics.is_some() {
            config.metrics = self.metrics;
        }
        if self.log_peer_addresses {
            config.log_peer_addresses = true;
        }
        self.cluster_config(&mut config);
        config.validate()?;
        Ok(config)
    }
}

impl Args {
    /// The `--cluster` flags over the file's `[cluster]` table: any of
    /// them makes one if the file has none.
    fn cluster_config(&self, config: &mut Config) {
        let given = self.cluster.is_some()
            || self.cluster_user.is_some()
            || self.cluster_nkey_file.is_some()
            || self.cluster_tls_ca.is_some()
            || self.cluster_replicas.is_some();
        if !given {
            return;
        }
        let cluster = config.cluster.get_or_insert_with(ClusterConfig::default);
        if let Some(servers) = &self.cluster {
            cluster.servers.clone_from(servers);
        }
        if self.cluster_user.is_some() {
            cluster.user.clone_from(&self.cluster_user);
            cluster
                .password_file
                .clone_from(&self.cluster_password_file);
        }
        if self.cluster_nkey_file.is_some() {
            cluster.nkey_file.clone_from(&self.cluster_nkey_file);
        }
        if self.cluster_tls_ca.is_some() {
            cluster.tls_ca.clone_from(&self.cluster_tls_ca);
        }
        if let Some(replicas) = self.cluster_replicas {
            cluster.replicas = replicas;
        }
    }
}

/// The kernel's host name, else /etc/hostname (a service whose /proc
/// shows its own processes only, as the Debian package's unit has it),
/// else `localhost`.
fn machine_host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The log's filter when `RUST_LOG` is not set: `info`, and rustls only
/// for errors (it warns of every client that sends an IP address as its
/// server name, as sotto's clients do when the relay's host is one).
const DEFAULT_LOG: &str = "info,rustls=error";

fn print_address(host: &str, port: u16, fingerprint: [u8; 32]) {
    use std::io::Write as _;
    let address = RelayAddress {
        host: host.to_string(),
        port,
        fingerprint,
        alternates: Vec::new(),
    };
    // The one line meant for people and scripts alike: on stdout, on its
    // own. Whoever read it may be gone (`relay | head -1`): the relay
    // goes on without printing it.
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "address: {address}").and_then(|()| stdout.flush()) {
        tracing::warn!(%error, "could not print the address on standard output");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log nobody reads any more (its pipe closed) is not written;
        // the default would say so on standard error, and panic there.
        .log_internal_errors(false)
        .init();
    let args = Args::parse();
    let result = match &args.command {
        None => serve(&args).await,
        Some(command) => maintain(&args, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// The host printed in the address, and where the certificate comes from.
fn host_and_source(config: &Config) -> (String, CertSource) {
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
    (host, source)
}

/// The subcommands: check, back up, print, renew, rotate; the relay is
/// not started.
fn maintain(args: &Args, command: &Cmd) -> Result<(), String> {
    if let Cmd::CheckConfig { file } = command {
        return check_config(args, file);
    }
    let config = args.config()?;
    let (_, source) = host_and_source(&config);
    #[allow(clippy::print_stdout)] // the subcommands' output
    match command {
        // Taken above, before the configuration it checks is read.
        Cmd::CheckConfig { file } => check_config(args, file)?,
        Cmd::Backup { dir } => backup(&config, &source, dir)?,
        Cmd::Fingerprint { cert } => {
            let cert = match (cert, &source) {
                (Some(cert), _) => cert.clone(),
                (None, CertSource::Files { cert, .. }) => cert.clone(),
                (None, CertSource::Generated { dir, .. }) => dir.join(tls::GENERATED_CERT),
            };
            let fingerprint =
                tls::certificate_file_fingerprint(&cert).map_err(|e| e.to_string())?;
            println!("{}", fingerprint_text(&fingerprint));
        }
        Cmd::RenewCert => {
            let CertSource::Generated { dir, hosts } = &source else {
                return Err(
                    "renew-cert renews the generated certificate; renew a CA certificate with \
                     your CA keeping the key (certbot --reuse-key), then SIGHUP the relay"
                        .to_owned(),
                );
            };
            let fingerprint = tls::renew_certificate(dir, hosts).map_err(|e| e.to_string())?;
            println!(
                "renewed {} with the same key {}: SIGHUP the running relay; addresses stay valid",
                dir.join(tls::GENERATED_CERT).display(),
                fingerprint_text(&fingerprint)
            );
        }
        Cmd::RotateKey {
            next_key,
            valid_days,
        } => {
            let period = valid_days.map_or(HANDOVER_PERIOD, |days| {
                Duration::from_secs(days.saturating_mul(24 * 3600))
            });
            let rotation = tls::rotate_key(&source, &config.data_dir, next_key.as_deref(), period)
                .map_err(|e| e.to_string())?;
            let handover = &rotation.handover;
            println!(
                "hand-over from key {} to key {} until {} (Unix time), in {}",
                fingerprint_text(&handover.old_fingerprint()),
                fingerprint_text(&handover.new_key),
                handover.not_after,
                config.data_dir.join(HANDOVER_FILE).display()
            );
            if rotation.installed {
                println!(
                    "the new key and certificate are installed: restart or SIGHUP the relay; \
                     share the new address it prints (old addresses keep working for clients \
                     that connect before the hand-over expires)"
                );
            } else {
                println!(
                    "get a certificate for the next key {} (with certbot: a CSR made with that key, certbot certonly --csr), \
                     point --cert/--key at it and SIGHUP the relay",
                    rotation.next_key.display()
                );
            }
        }
    }
    Ok(())
}

/// `relay check-config FILE`: what [`serve`] would start with, checked
/// without listening, connecting or writing anything but a probe file in
/// the data directory.
fn check_config(args: &Args, file: &std::path::Path) -> Result<(), String> {
    let config = args.config_from(Some(file))?;
    let (host, source) = host_and_source(&config);
    let certificate = tls::check(&source, Some(&config.data_dir.join(HANDOVER_FILE)))
        .map_err(|e| e.to_string())?;
    check_data_dir(&config.data_dir)?;
    if let Some(cluster) = &config.cluster {
        sotto_relay::check_cluster_files(cluster)?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    #[allow(clippy::print_stdout)] // the subcommand's output
    {
        println!("{}: the relay would start with it", file.display());
        println!("listen: {}", config.listen);
        println!("data directory: {}", config.data_dir.display());
        match &certificate {
            Some(checked) => {
                let address = RelayAddress {
                    host: host.clone(),
                    port: config.listen.port(),
                    fingerprint: checked.fingerprint,
                    alternates: Vec::new(),
                };
                println!("key: {}", fingerprint_text(&checked.fingerprint));
                match checked.not_after {
                    Some(end) if end <= now => {
                        return Err(format!(
                            "the certificate expired {} days ago: renew it (relay renew-cert, or your CA keeping the key), then SIGHUP the relay",
                            (now - end) / 86_400
                        ));
                    }
                    Some(end) => println!(
                        "certificate: expires in {} days (Unix time {end})",
                        (end - now) / 86_400
                    ),
                    None => println!("certificate: its expiry could not be read"),
                }
                if let Some(handover) = &checked.handover {
                    println!(
                        "key hand-over from {} sent to clients until Unix time {}",
                        fingerprint_text(&handover.old_fingerprint()),
                        handover.not_after
                    );
                }
                println!("address: {address}");
            }
            None => println!(
                "certificate: none yet; a key and self-signed certificate will be generated in {} on first start",
                config.data_dir.display()
            ),
        }
        match config.metrics {
            Some(addr) => println!("metrics: http://{addr}/metrics, health: http://{addr}/health"),
            None => println!("metrics: off"),
        }
        match &config.cluster {
            Some(cluster) => println!(
                "cluster: {} ({} replicas; NATS is not contacted by this check)",
                cluster.servers.join(","),
                cluster.replicas
            ),
            None => println!("cluster: none, this relay alone with its own database"),
        }
    }
    Ok(())
}

/// `relay backup DIR`: the data directory's key files, then the database
/// (asked of the running relay, or read from the stopped one's file).
fn backup(config: &Config, source: &CertSource, to: &std::path::Path) -> Result<(), String> {
    use sotto_relay::control::CONTROL_SOCKET;
    use sotto_relay::store::DATABASE_FILE;
    let data = &config.data_dir;
    if std::fs::read_dir(to).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(format!(
            "{}: not empty; a backup goes into a new or empty directory",
            to.display()
        ));
    }
    sotto_fsutil::create_private_dir(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let to = std::fs::canonicalize(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let mut report = Vec::new();
    for (file, mode) in [
        (tls::GENERATED_CERT, 0o644),
        (tls::GENERATED_KEY, 0o600),
        (HANDOVER_FILE, 0o644),
        (tls::NEXT_KEY, 0o600),
        (tls::PREVIOUS_KEY, 0o600),
    ] {
        let from = data.join(file);
        match std::fs::read(&from) {
            Ok(bytes) => {
                sotto_fsutil::write_atomic(&to.join(file), &bytes, mode)
                    .map_err(|e| format!("{}: {e}", to.join(file).display()))?;
                report.push(format!("{file}: copied"));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("{}: {error}", from.display())),
        }
    }
    let database = to.join(DATABASE_FILE);
    let socket = data.join(CONTROL_SOCKET);
    let copied = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(stream) => Some(ask_running_relay(stream, &database)?),
        Err(_) if data.join(DATABASE_FILE).exists() => {
            let shown = |e: std::io::Error| format!("{}: {e}", database.display());
            let file = sotto_fsutil::PendingFile::create(&database, 0o600).map_err(shown)?;
            let into = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(file.temporary_path())
                .map_err(shown)?;
            let copied =
                sotto_relay::store::backup_stopped(data, into).map_err(|e| e.to_string())?;
            file.commit().map_err(shown)?;
            Some(format!(
                "{} bytes from the stopped relay's file",
                copied.bytes
            ))
        }
        Err(_) => None,
    };
    match (copied, &config.cluster) {
        (Some(copied), _) => report.push(format!("{DATABASE_FILE}: {copied}")),
        (None, Some(_)) => report.push(
            "no database: a cluster relay keeps the community in NATS JetStream (back it up with NATS's own tools)"
                .to_owned(),
        ),
        (None, None) => report.push("no database yet: the relay has never started here".to_owned()),
    }
    if let CertSource::Files { cert, key } = source {
        report.push(format!(
            "{} and {} are outside the data directory: keep them with your CA's files",
            cert.display(),
            key.display()
        ));
    }
    #[allow(clippy::print_stdout)] // the subcommand's output
    {
        println!("backed up {} into {}", data.display(), to.display());
        for line in report {
            println!("- {line}");
        }
    }
    Ok(())
}

/// Asks the relay listening on `stream` (its control socket) for a copy
/// of its database, received into `database` (kept only once all of it
/// arrived and its tables hold what the relay said it copied); what it
/// copied, or why not.
fn ask_running_relay(
    stream: std::os::unix::net::UnixStream,
    database: &std::path::Path,
) -> Result<String, String> {
    use std::io::{BufRead, Read, Write};
    let relay = |e: std::io::Error| format!("the running relay: {e}");
    let written = |e: std::io::Error| format!("{}: {e}", database.display());
    let mut stream = std::io::BufReader::new(stream);
    stream.get_mut().write_all(b"backup\n").map_err(relay)?;
    let mut answer = String::new();
    stream.read_line(&mut answer).map_err(relay)?;
    let (bytes, tables) = match answer.trim_end().split_once(' ') {
        Some(("ok", copied)) => copied.split_once(' ').unwrap_or((copied, "")),
        Some(("error", why)) => return Err(format!("the running relay could not back up: {why}")),
        _ => return Err(format!("the running relay answered {answer:?}")),
    };
    let bytes: u64 = bytes
        .parse()
        .map_err(|_| format!("the running relay answered {answer:?}"))?;
    let mut file = sotto_fsutil::PendingFile::create(database, 0o600).map_err(written)?;
    let received = std::io::copy(&mut stream.take(bytes), &mut file).map_err(written)?;
    if received != bytes {
        return Err(format!(
            "the running relay sent {received} of the copy's {bytes} bytes: no copy was kept"
        ));
    }
    let held = sotto_relay::store::table_entries(file.temporary_path())
        .map_err(|e| format!("the copy received: {e}"))?;
    let held: Vec<String> = held.iter().map(|(name, n)| format!("{name}={n}")).collect();
    if held.join(" ") != tables {
        return Err(format!(
            "the copy received holds {} where the relay copied {tables}: no copy was kept",
            held.join(" ")
        ));
    }
    file.commit().map_err(written)?;
    Ok(format!(
        "{bytes} bytes {tables} (copied by the running relay)"
    ))
}

/// The data directory exists and takes a file, or can be made.
fn check_data_dir(dir: &std::path::Path) -> Result<(), String> {
    if !dir.exists() {
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|ancestor| ancestor.exists())
            .unwrap_or(std::path::Path::new("."));
        let writable = std::fs::metadata(parent)
            .map(|m| m.is_dir() && !m.permissions().readonly())
            .unwrap_or(false);
        return if writable {
            Ok(())
        } else {
            Err(format!(
                "data directory {}: it does not exist and {} cannot take it",
                dir.display(),
                parent.display()
            ))
        };
    }
    if !dir.is_dir() {
        return Err(format!("data directory {}: not a directory", dir.display()));
    }
    let probe = dir.join(format!(".check-config-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("data directory {}: cannot write in it: {e}", dir.display()))?;
    std::fs::remove_file(&probe).map_err(|e| format!("data directory {}: {e}", dir.display()))
}

async fn serve(args: &Args) -> Result<(), String> {
    let config = args.config()?;
    let (host, source) = host_and_source(&config);
    let certs = CertStore::load_with_handover(source, Some(config.data_dir.join(HANDOVER_FILE)))
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tracing::info!(
        version = sotto_relay::metrics::VERSION,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        key = %fingerprint_text(&certs.fingerprint()),
        metrics = %config.metrics.map_or_else(|| "off".to_string(), |addr| format!("http://{addr}/metrics")),
        "relay starting"
    );
    log_handover(&certs);
    let shutdown = terminated();
    tokio::spawn(reload_on_hangup(Arc::clone(&certs), host.clone(), port));
    print_address(&host, port, certs.fingerprint());

    run(listener, certs, config, shutdown)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("relay stopped");
    Ok(())
}

/// Says whether a key hand-over is being sent to clients.
fn log_handover(certs: &CertStore) {
    if let Some(handover) = certs.current_handover() {
        tracing::info!(
            from = %fingerprint_text(&handover.old_fingerprint()),
            to = %fingerprint_text(&handover.new_key),
            not_after = handover.not_after,
            "sending the key hand-over to every client"
        );
    }
}

/// A future completing on SIGINT or SIGTERM. The handlers are installed
/// at once (before the address is printed), so a signal sent as soon as
/// the address appears is never lost to the default action.
fn terminated() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Reloads the certificate (and the key hand-over) on every SIGHUP, after
/// a renewal or a rotation, keeping connected clients. The handler is
/// installed when this is called; the returned future serves it.
fn reload_on_hangup(certs: Arc<CertStore>, host: String, port: u16) -> impl Future<Output = ()> {
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    async move {
        #[cfg(unix)]
        {
            let Some(mut hangup) = hangup else {
                return;
            };
            while hangup.recv().await.is_some() {
                match certs.reload() {
                    Ok(fingerprint) => {
                        tracing::info!(key = %fingerprint_text(&fingerprint), "certificate reloaded");
                        log_handover(&certs);
                        print_address(&host, port, fingerprint);
                    }
                    Err(error) => {
                        tracing::error!(%error, "certificate reload failed; keeping the old one")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        let _ = (certs, host, port);
    }
}
