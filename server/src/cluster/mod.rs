//! Several relays sharing one community through NATS JetStream
//! (`--cluster`, [`ClusterConfig`]).
//!
//! Without `--cluster` a relay keeps everything in its own database
//! (`crate::store`). With it, what the relays of one community must agree
//! on lives in JetStream, replicated over the NATS cluster
//! ([`ClusterConfig::replicas`] copies), and each relay keeps in memory
//! only its own connections and a mirror of what the others share:
//!
//! | What | Where in NATS | Written by | Read by |
//! |---|---|---|---|
//! | the name directory | KV bucket `sotto_names`: the name's key (hex) -> a `NameRecord` | [`Cluster::claim`]: create-if-absent, so one registration wins cluster-wide | [`Cluster::lookup`], from the stream's leader |
//! | the names of each key | KV `sotto_keys`: fingerprint (hex) -> the names it owns | [`Cluster::claim`], compare-and-set | [`Cluster::claim`] (`max_names_per_key`) |
//! | the prekey directory | KV `sotto_prekeys`: fingerprint (hex) -> its newest prekeys | [`Cluster::publish_prekey`], compare-and-set | every relay's registry, by a watch |
//! | blobs (files' chunks) | KV `sotto_blobs` (`blobs`) | [`Cluster::put_chunk`], the record by compare-and-set | [`Cluster::chunk`], [`Cluster::blob_status`] |
//!
//! Only what one relay sees already crosses NATS: names, public
//! identities, signed prekeys, routing data and ciphertext
//! (threat-model.md, "A cluster of relays").
//!
//! The KV buckets are made here as the streams NATS's own clients make
//! for them (`KV_<bucket>`, subjects `$KV.<bucket>.>`), not through
//! `create_key_value`: async-nats asks the server for account fields that
//! Debian's nats-server 2.9 does not send. Reads go to each stream's
//! leader (no direct gets from followers), so a name registered through
//! one relay is seen by every other at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::{ConnectOptions, ServerAddr};
use serde::{Deserialize, Serialize};
use sotto_proto::{RoomName, UserKey, UserName};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::store::{QueueLimits, StoreError};

mod blobs;
mod directory;
mod inbox;
pub(crate) mod mirror;

pub(crate) use inbox::{COPIES, InboxEntry, Publication};

/// The KV bucket of the name directory.
const NAMES: &str = "sotto_names";
/// The KV bucket of the names each key owns.
const KEYS: &str = "sotto_keys";
/// The KV bucket of the prekey directory.
const PREKEYS: &str = "sotto_prekeys";
/// The KV bucket of room memberships: `<room>.<member>` (hex) -> a
/// [`MemberValue`].
const MEMBERS: &str = "sotto_members";
/// The KV bucket of who is connected where: the user's key (hex) -> an
/// [`OnlineValue`].
const ONLINE: &str = "sotto_online";
/// The KV bucket of the relays' heartbeats: relay id -> when.
const RELAYS: &str = "sotto_relays";
/// The stream of stored deliveries, subjects `sotto.inbox.<user>` (hex).
const INBOX: &str = "SOTTO_INBOX";
/// Subjects of the stored deliveries.
const INBOX_PREFIX: &str = "sotto.inbox.";
/// Core NATS subjects on which the stream republishes each delivery once
/// stored, for the recipient's delivery pump wherever it is connected:
/// `sotto.live.<user>` (hex).
const LIVE_PREFIX: &str = "sotto.live.";

/// How often a relay writes its heartbeat.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A relay not heard for this long is taken for dead: its users are shown
/// offline (until it is heard again). Longer than JetStream takes to
/// elect its streams' new leaders when a NATS node goes (while no
/// heartbeat can be written: seen to take 20 s on a loaded machine), so
/// that a NATS node lost does not look like a relay lost.
pub(crate) const DEAD_AFTER: Duration = Duration::from_secs(30);
/// A relay dead for this long has its users' entries deleted.
pub(crate) const GONE_AFTER: Duration = Duration::from_secs(60);

/// How long the relay tries to reach NATS when it starts before it gives
/// up with an error (once running, the client reconnects for ever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay waits for JetStream to make its buckets and stream
/// when it starts.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);
/// How long one attempt of a JetStream request may take before it is
/// sent again. Such a request may never be answered: one sent while
/// JetStream elects its leaders (a fresh cluster starting: about one
/// relay start in three waited out async-nats's 10 s), or while a bucket
/// elects its leader after a NATS node was lost (its new leader does not
/// answer what came before it), or a watch whose consumer JetStream
/// placed on a lost node (for up to a minute with nats-server 2.9, until
/// the others take it for gone). Sent again this soon, rather than after
/// async-nats's own timeout (5 s a request), it is most often answered.
/// Far above a loaded cluster's answer (milliseconds); every request
/// given it is safe to send again.
pub(super) const ATTEMPT: Duration = Duration::from_secs(3);
/// How long a publication to the stream, or a read of it, waits for
/// JetStream's answer before it is sent again: a stream whose leader was
/// lost answers nothing until another is elected (several seconds), and
/// is asked again within this of having one. Well above a loaded
/// cluster's answer; a publication sent again that was stored meanwhile
/// is recognised (`Nats-Msg-Id`). (Other requests keep async-nats's 5 s:
/// the directory's are not sent again.)
pub(super) const STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// A member of a room, as the cluster keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MemberValue {
    pub(crate) name: UserName,
    pub(crate) identity: bytes::Bytes,
    pub(crate) fingerprint: [u8; 32],
    pub(crate) joined_at: u64,
    pub(crate) last_seen: u64,
}

/// Where a user is connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct OnlineValue {
    pub(crate) relay: String,
    pub(crate) conn: u64,
    pub(crate) name: UserName,
}

/// A relay's handle on the NATS cluster.
pub(crate) struct Cluster {
    /// This relay's id in the cluster: random, new at every start.
    pub(crate) relay: String,
    client: async_nats::Client,
    js: jetstream::Context,
    names: kv::Store,
    keys: kv::Store,
    prekeys: kv::Store,
    members: kv::Store,
    online: kv::Store,
    relays: kv::Store,
    /// Files' chunks and records (`blobs`), and their limits.
    blobs: kv::Store,
    blob_limits: crate::blobs::BlobLimits,
    inbox: stream::Stream,
    /// Names known to be owned (never released, so never stale), for
    /// routing direct messages without a lookup each.
    known: Mutex<std::collections::HashSet<UserKey>>,
    /// Per user served here: what was sent on its connection
    /// ([`inbox::Sent`]; only that can be acknowledged away).
    sent: Mutex<HashMap<UserKey, inbox::Sent>>,
    /// Per user connected here: its connection and its entry's revision in
    /// `sotto_online`.
    registered: Mutex<HashMap<UserKey, (u64, u64)>>,
    /// Per user connected here: the rooms it joined here lately, which
    /// what it sends carries ([`inbox::InboxCopy::joined`]).
    joined: Mutex<HashMap<UserKey, Vec<(RoomName, tokio::time::Instant)>>>,
    /// Deliveries stored in the stream, as last counted (for the metrics).
    pub(crate) queued: std::sync::atomic::AtomicU64,
    /// Counts the client's reconnections to NATS: a pump reads again after
    /// each (a wake-up may have been lost meanwhile).
    pub(crate) reconnected: watch::Receiver<u64>,
}

/// Whether `error`, or an error it comes from, says `text` (how NATS
/// tells one refusal of JetStream's from another).
fn says(error: &(dyn std::error::Error + 'static), text: &str) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.to_string().contains(text) {
            return true;
        }
        next = error.source();
    }
    false
}

/// A NATS failure as a [`StoreError`].
fn nats_err(error: impl std::fmt::Display) -> StoreError {
    StoreError::Cluster(error.to_string())
}

/// The hexadecimal form of `bytes`: KV keys and subjects allow only a few
/// characters, and names may hold dots, which NATS reads as separators.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The bytes of a [`hex`] text.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// The key of `user` in the buckets and subjects.
fn user_hex(user: &UserKey) -> String {
    hex(user.as_str().as_bytes())
}

impl Cluster {
    /// Whether the relay's connection to NATS is up (`GET /health`).
    pub(crate) fn nats_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Connects to NATS as `config` says and makes the buckets and streams
    /// that are missing; deliveries are kept within `limits`.
    pub(crate) async fn connect(
        config: &ClusterConfig,
        limits: QueueLimits,
        blob_limits: crate::blobs::BlobLimits,
    ) -> Result<Self, StoreError> {
        let servers = config
            .servers
            .iter()
            .map(|s| s.parse::<ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Cluster(format!("a NATS server address: {e}")))?;
        let (reconnects, reconnected) = watch::channel(0u64);
        let options = options(config)?.event_callback(move |event| {
            let reconnects = reconnects.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("connected to NATS");
                        reconnects.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => warn!("lost the connection to NATS"),
                    other => info!(event = %other, "NATS"),
                }
            }
        });
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(servers.as_slice()))
            .await
            .map_err(|_| {
                StoreError::Cluster(format!(
                    "no NATS server of {} answered within {CONNECT_TIMEOUT:?}",
                    config.servers.join(", ")
                ))
            })?
            .map_err(|e| {
                StoreError::Cluster(format!(
                    "cannot join NATS at {}: {e}",
                    config.servers.join(", ")
                ))
            })?;
        let max_payload = client.server_info().max_payload;
        if max_payload < inbox::MAX_WRITE {
            return Err(StoreError::Cluster(format!(
                "the NATS server takes messages of at most {max_payload} bytes (its \
                 max_payload), and a delivery of the largest frame needs {}: set \
                 `max_payload: 2MB` in the configuration of every NATS node",
                inbox::MAX_WRITE
            )));
        }
        let js = jetstream::new(client.clone());
        let replicas = config.replicas;
        let inbox = set_up(INBOX, || async {
            let config = inbox::stream_config(replicas, limits);
            let mut stream = js
                .get_or_create_stream(config.clone())
                .await
                .map_err(|e| StoreError::Cluster(format!("the stream {INBOX}: {e}")))?;
            if stream.cached_info().config.republish != config.republish {
                // Made by a relay that did not republish.
                js.update_stream(config)
                    .await
                    .map_err(|e| StoreError::Cluster(format!("the stream {INBOX}: {e}")))?;
                stream = js
                    .get_stream(INBOX)
                    .await
                    .map_err(|e| StoreError::Cluster(format!("the stream {INBOX}: {e}")))?;
            }
            stream.get_info().await.map_err(|e| {
                StoreError::Cluster(format!("the stream {INBOX} has no leader yet: {e}"))
            })?;
            Ok(stream)
        })
        .await?;
        let cluster = Self {
            relay: hex(&rand::random::<[u8; 8]>()),
            names: set_up(NAMES, || bucket(&js, NAMES, replicas, None)).await?,
            keys: set_up(KEYS, || bucket(&js, KEYS, replicas, None)).await?,
            prekeys: set_up(PREKEYS, || bucket(&js, PREKEYS, replicas, None)).await?,
            members: set_up(MEMBERS, || bucket(&js, MEMBERS, replicas, None)).await?,
            online: set_up(ONLINE, || bucket(&js, ONLINE, replicas, None)).await?,
            relays: set_up(RELAYS, || bucket(&js, RELAYS, replicas, Some(GONE_AFTER))).await?,
            blobs: set_up(blobs::BLOBS, || blobs::bucket(&js, replicas, &blob_limits)).await?,
            blob_limits,
            client,
            js,
            inbox,
            known: Mutex::default(),
            sent: Mutex::default(),
            registered: Mutex::default(),
            joined: Mutex::default(),
            queued: std::sync::atomic::AtomicU64::new(0),
            reconnected,
        };
        info!(
            servers = %config.servers.join(","),
            replicas,
            relay = %cluster.relay,
            "joined the NATS cluster"
        );
        Ok(cluster)
    }
}

/// Makes (or finds) `what` with `step`, each attempt given
/// [`ATTEMPT`], again until it succeeds (`patiently`).
async fn set_up<T, F: Future<Output = Result<T, StoreError>>>(
    what: &str,
    mut step: impl FnMut() -> F,
) -> Result<T, StoreError> {
    patiently(|| {
        let attempt = tokio::time::timeout(ATTEMPT, step());
        async move {
            attempt.await.unwrap_or_else(|_| {
                Err(StoreError::Cluster(format!(
                    "{what}: no answer within {ATTEMPT:?}"
                )))
            })
        }
    })
    .await
}

/// Runs `step` until it succeeds, for up to [`SETUP_PATIENCE`]: a NATS
/// cluster that has just started answers JetStream requests only once it
/// has elected its leaders.
async fn patiently<T, F: Future<Output = Result<T, StoreError>>>(
    step: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let retried = |error: &StoreError| info!(%error, "JetStream is not ready yet; trying again");
    until_done(SETUP_PATIENCE, Duration::from_millis(500), retried, step).await
}

/// Runs `step` until it succeeds, for up to `patience`, pausing `pause`
/// (and telling `retried`) after each failure.
async fn until_done<T, F: Future<Output = Result<T, StoreError>>>(
    patience: Duration,
    pause: Duration,
    retried: impl Fn(&StoreError),
    mut step: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(error) if tokio::time::Instant::now() < deadline => {
                retried(&error);
                tokio::time::sleep(pause).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// How long a write to a bucket (a membership, where a user is) is tried
/// again while JetStream does not answer (a NATS node lost, a stream
/// electing its leader) before it is given up.
const WRITE_PATIENCE: Duration = Duration::from_secs(30);

/// Runs `write` until it succeeds, for up to [`WRITE_PATIENCE`]: a
/// membership written while a bucket has no leader would otherwise be
/// lost to the other relays.
pub(crate) async fn persistently<T, F: Future<Output = Result<T, StoreError>>>(
    what: &str,
    write: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let retried =
        |error: &StoreError| tracing::debug!(%error, what, "a write to the cluster is tried again");
    until_done(WRITE_PATIENCE, Duration::from_millis(250), retried, write).await
}

/// How long a directory request (a name claimed or looked up, a prekey
/// published) is tried again while JetStream does not answer (a bucket
/// electing its leader after a NATS node was lost: 4-9 s seen on
/// loopback) before the client is told the directory is unavailable:
/// with its last attempt, inside the client's wait for the answer to
/// `Register` (15 s, docs/protocol.md).
const DIRECTORY_PATIENCE: Duration = Duration::from_secs(11);

/// Runs the directory request `request` again while NATS fails it or
/// does not answer within [`ATTEMPT`] ([`StoreError::Cluster`];
/// a record that does not decode is not asked for again), for up to
/// [`DIRECTORY_PATIENCE`]. Each request it runs is safe to run again, or
/// to drop midway, whether or not an earlier attempt took effect (a claim
/// finds its own name, a prekey is kept once).
pub(crate) async fn directory_request<T, F: Future<Output = Result<T, StoreError>>>(
    what: &str,
    mut request: impl FnMut() -> F,
) -> Result<T, StoreError> {
    let deadline = tokio::time::Instant::now() + DIRECTORY_PATIENCE;
    loop {
        let answer = tokio::time::timeout(ATTEMPT, request())
            .await
            .unwrap_or_else(|_| Err(StoreError::Cluster("no answer in time".into())));
        match answer {
            Err(error @ StoreError::Cluster(_)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, what, "a directory request to the cluster is tried again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            answer => return answer,
        }
    }
}

/// How to connect to NATS: credentials, TLS, and a client that keeps
/// reconnecting (to any server of the list) for as long as the relay runs.
fn options(config: &ClusterConfig) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .name("sotto-relay")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if let (Some(user), Some(file)) = (&config.user, &config.password_file) {
        let password = first_line(file)?;
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(file) = &config.nkey_file {
        options = options.nkey(first_line(file)?);
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options)
}

/// Checks the files `config` names without connecting (`relay
/// check-config`): the secrets are readable and not empty, the CA file
/// holds certificates. NATS verifies the secrets when the relay connects.
pub fn check_files(config: &ClusterConfig) -> Result<(), String> {
    options(config).map_err(|e| e.to_string())?;
    if let Some(ca) = &config.tls_ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let certificates = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("{}: {e}", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        if certificates.is_empty() {
            return Err(format!("{}: no PEM certificate in the file", ca.display()));
        }
    }
    Ok(())
}

/// The first line of a secret's file, without its line ending.
fn first_line(file: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| StoreError::Cluster(format!("{}: {e}", file.display())))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(StoreError::Cluster(format!("{} is empty", file.display())));
    }
    Ok(line)
}

/// The KV bucket `name`, made if missing: one value per key, replicated
/// `replicas` times, read from the stream's leader; values older than
/// `max_age` go.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
    max_age: Option<Duration>,
) -> Result<kv::Store, StoreError> {
    open_bucket(js, name, bucket_config(name, replicas, max_age)).await
}

/// The stream of the KV bucket `name`, as NATS's own clients make it:
/// see [`bucket`].
fn bucket_config(name: &str, replicas: usize, max_age: Option<Duration>) -> stream::Config {
    stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: max_age.unwrap_or_default(),
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: false,
        num_replicas: replicas,
        ..stream::Config::default()
    }
}

/// Makes (or finds) the KV bucket `name` on the stream `config`, once its
/// leader answers.
async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    config: stream::Config,
) -> Result<kv::Store, StoreError> {
    let stream = js
        .get_or_create_stream(config)
        .await
        .map_err(|e| StoreError::Cluster(format!("the bucket {name}: {e}")))?;
    // Answered by the stream's leader: the bucket can be written.
    stream
        .get_info()
        .await
        .map_err(|e| StoreError::Cluster(format!("the bucket {name} has no leader yet: {e}")))?;
    js.get_key_value(name)
        .await
        .map_err(|e| StoreError::Cluster(format!("the bucket {name}: {e}")))
}
