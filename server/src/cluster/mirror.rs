//! This relay's mirror of what the cluster shares: it reads the buckets
//! once at start (the registry the relay starts with), then follows them
//! (KV watches) and applies each change to the registry, so that the
//! relay routes to, and tells its members about, users of every relay.
//! It also writes this relay's heartbeat and watches the others': a relay
//! not heard for [`DEAD_AFTER`] has its users shown offline until it is
//! heard again, and one gone for [`GONE_AFTER`] has their entries deleted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use sotto_proto::{RoomName, UserKey, UserName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    ATTEMPT, Cluster, DEAD_AFTER, GONE_AFTER, HEARTBEAT, MemberValue, OnlineValue, hex, nats_err,
    patiently, persistently, says, unhex, user_hex,
};
use crate::state::{Registry, Shared};
use crate::store::{MemberRecord, Membership, PrekeyRecord, StoreError, keep_newest, now_secs};

/// How long the first read of a bucket may wait for its next entry.
const LOAD_PATIENCE: Duration = Duration::from_secs(10);
/// How soon a watch that failed is started again.
const RETRY: Duration = Duration::from_secs(1);
/// Every this many heartbeats, each watch's progress is checked.
const WATCHDOG: u64 = 3;

/// A bucket as read at start, and the watch that continues from there.
struct Loaded {
    entries: Vec<kv::Entry>,
    watch: kv::Watch,
}

/// The state of `bucket`'s stream, asked of its leader now (the bucket's
/// own `status` is what was known when it was opened).
async fn state_of(
    js: &async_nats::jetstream::Context,
    bucket: &kv::Store,
) -> Result<async_nats::jetstream::stream::State, StoreError> {
    let failed = |error: &dyn std::fmt::Display| {
        StoreError::Cluster(format!("the bucket {}: its state: {error}", bucket.name))
    };
    let stream = js
        .get_stream(format!("KV_{}", bucket.name))
        .await
        .map_err(|e| failed(&e))?;
    Ok(stream.get_info().await.map_err(|e| failed(&e))?.state)
}

/// Every current entry of `bucket` (then its changes, through the watch).
async fn load(
    js: &async_nats::jetstream::Context,
    bucket: &kv::Store,
) -> Result<Loaded, StoreError> {
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        StoreError::Cluster(format!("the bucket {}: {what}: {error}", bucket.name))
    };
    let messages = state_of(js, bucket).await?.messages;
    let mut watch = tokio::time::timeout(ATTEMPT, bucket.watch_with_history(">"))
        .await
        .map_err(|_| failed("a watch", &"not started in time"))?
        .map_err(|e| failed("a watch", &e))?;
    let mut entries = Vec::new();
    if messages > 0 {
        loop {
            match tokio::time::timeout(LOAD_PATIENCE, watch.next()).await {
                Ok(Some(Ok(entry))) => {
                    let last = entry.delta == 0;
                    entries.push(entry);
                    if last {
                        break;
                    }
                }
                Ok(Some(Err(error))) => return Err(failed("reading it", &error)),
                Ok(None) => return Err(failed("reading it", &"the watch ended")),
                // Nothing more came: what was counted is gone (aged out).
                Err(_) => break,
            }
        }
    }
    Ok(Loaded { entries, watch })
}

/// What the mirror starts from: the registry for the relay, and the
/// watches that continue each bucket.
pub(crate) struct Start {
    pub(crate) registry: Registry,
    online: Loaded,
    members: Followed,
    prekeys: Followed,
}

/// A bucket followed: its watch, the revision of the last change applied,
/// and that revision as of the last check of the watch's progress.
struct Followed {
    watch: kv::Watch,
    revision: u64,
    checked: Option<u64>,
}

impl Followed {
    fn new(watch: kv::Watch, entries: &[kv::Entry]) -> Self {
        Self {
            watch,
            revision: entries.iter().map(|e| e.revision).max().unwrap_or(0),
            checked: None,
        }
    }

    /// Whether the watch has stalled: the bucket holds changes past the
    /// last one applied, and did at the previous check too, with nothing
    /// applied since (a watch whose consumer went with a NATS node can
    /// stop delivering without an error).
    async fn stalled(&mut self, js: &async_nats::jetstream::Context, bucket: &kv::Store) -> bool {
        let Ok(state) = state_of(js, bucket).await else {
            return false;
        };
        if state.last_sequence <= self.revision {
            self.checked = None;
            return false;
        }
        let stalled = self.checked == Some(self.revision);
        self.checked = Some(self.revision);
        stalled
    }
}

/// How long a room joined through this relay is named in what its new
/// member sends (`InboxCopy::joined`): longer than the other relays'
/// watches of `sotto_members` lag, even while JetStream elects a leader.
const JOIN_MEMORY: Duration = Duration::from_secs(120);
/// The most rooms named so.
const MAX_RECENT_JOINS: usize = 8;

/// The key of a membership entry: the room's and the member's (hex).
fn member_key(room: &RoomName, user: &UserKey) -> String {
    format!("{}.{}", hex(room.as_str().as_bytes()), user_hex(user))
}

fn text_of(hex_text: &str) -> Option<String> {
    String::from_utf8(unhex(hex_text)?).ok()
}

fn parse_member_key(key: &str) -> Option<(RoomName, UserKey)> {
    let (room, user) = key.split_once('.')?;
    let room = RoomName::try_from(text_of(room)?.as_str()).ok()?;
    let user = UserName::try_from(text_of(user)?.as_str()).ok()?.key();
    Some((room, user))
}

fn parse_fingerprint(key: &str) -> Option<[u8; 32]> {
    unhex(key)?.try_into().ok()
}

fn parse_user(key: &str) -> Option<UserKey> {
    Some(UserName::try_from(text_of(key)?.as_str()).ok()?.key())
}

impl Cluster {
    /// Reads the shared memberships and prekeys into a registry. Each
    /// bucket's read is tried again while JetStream does not answer
    /// (`patiently`: a relay started while a bucket elects its leader, or
    /// while JetStream still places watches on a lost node, waits instead
    /// of giving up), and alone: one bucket read is not read again for
    /// another's failure.
    pub(crate) async fn start(&self) -> Result<Start, StoreError> {
        let Loaded {
            entries,
            watch: prekeys,
        } = patiently(|| load(&self.js, &self.prekeys)).await?;
        let now = now_secs();
        let prekeys = Followed::new(prekeys, &entries);
        let mut directory = Vec::new();
        for entry in entries {
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let (Some(fingerprint), Ok(records)) = (
                parse_fingerprint(&entry.key),
                postcard::from_bytes::<Vec<PrekeyRecord>>(&entry.value),
            ) else {
                warn!(key = %entry.key, "a damaged prekey entry in the cluster is ignored");
                continue;
            };
            let kept = keep_newest(records, None, now);
            if !kept.is_empty() {
                directory.push((fingerprint, kept));
            }
        }
        let Loaded {
            entries,
            watch: members,
        } = patiently(|| load(&self.js, &self.members)).await?;
        let members = Followed::new(members, &entries);
        let mut memberships = Vec::new();
        for entry in entries {
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let (Some((room, _)), Ok(value)) = (
                parse_member_key(&entry.key),
                postcard::from_bytes::<MemberValue>(&entry.value),
            ) else {
                warn!(key = %entry.key, "a damaged membership in the cluster is ignored");
                continue;
            };
            let member = MemberRecord {
                name: value.name,
                joined_at: value.joined_at,
                last_seen: value.last_seen,
            };
            memberships.push((
                Membership { room, member },
                value.identity,
                value.fingerprint,
            ));
        }
        let online = patiently(|| load(&self.js, &self.online)).await?;
        Ok(Start {
            registry: Registry::with_members(memberships, directory),
            online,
            members,
            prekeys,
        })
    }

    /// Makes `name` (with `identity`, `fingerprint`) a member of `room`
    /// in the cluster.
    pub(crate) async fn join(
        &self,
        room: &RoomName,
        name: &UserName,
        identity: Bytes,
        fingerprint: [u8; 32],
    ) -> Result<(), StoreError> {
        let now = now_secs();
        let value = MemberValue {
            name: name.clone(),
            identity,
            fingerprint,
            joined_at: now,
            last_seen: now,
        };
        let value = Bytes::from(postcard::to_stdvec(&value).map_err(nats_err)?);
        let key = member_key(room, &name.key());
        persistently("a membership", || async {
            self.members
                .put(&key, value.clone())
                .await
                .map(|_| ())
                .map_err(nats_err)
        })
        .await?;
        let mut joined = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        let recent = joined.entry(name.key()).or_default();
        recent.retain(|(r, at)| r != room && at.elapsed() < JOIN_MEMORY);
        recent.push((room.clone(), Instant::now()));
        if recent.len() > MAX_RECENT_JOINS {
            recent.remove(0);
        }
        Ok(())
    }

    /// The rooms `user` joined through this relay lately (in the last
    /// [`JOIN_MEMORY`], at most [`MAX_RECENT_JOINS`]).
    pub(crate) fn recent_joins(&self, user: &UserKey) -> Vec<RoomName> {
        let joined = self.joined.lock().unwrap_or_else(|p| p.into_inner());
        joined.get(user).map_or_else(Vec::new, |recent| {
            recent
                .iter()
                .filter(|(_, at)| at.elapsed() < JOIN_MEMORY)
                .map(|(room, _)| room.clone())
                .collect()
        })
    }

    /// Ends `user`'s membership of `room` in the cluster.
    pub(crate) async fn leave(&self, room: &RoomName, user: &UserKey) -> Result<(), StoreError> {
        let key = member_key(room, user);
        persistently("the end of a membership", || async {
            self.members.delete(&key).await.map_err(nats_err)
        })
        .await
    }

    /// Notes that `user` was last connected at `at` in each of `rooms`.
    pub(crate) async fn seen(&self, user: &UserKey, rooms: &[RoomName], at: u64) {
        for room in rooms {
            let key = member_key(room, user);
            let entry = match self.members.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                Ok(_) => continue,
                Err(error) => {
                    warn!(%error, "a member's last connection was not noted");
                    continue;
                }
            };
            let Ok(mut value) = postcard::from_bytes::<MemberValue>(&entry.value) else {
                continue;
            };
            value.last_seen = value.last_seen.max(at);
            let Ok(bytes) = postcard::to_stdvec(&value) else {
                continue;
            };
            // A change meanwhile (a leave, a rejoin) wins.
            let _ = self
                .members
                .update(&key, bytes.into(), entry.revision)
                .await;
        }
    }

    /// Says that `name`'s connection `conn` is on this relay; the entry's
    /// revision.
    pub(crate) async fn online(&self, name: &UserName, conn: u64) -> Result<u64, StoreError> {
        let value = OnlineValue {
            relay: self.relay.clone(),
            conn,
            name: name.clone(),
        };
        let value = Bytes::from(postcard::to_stdvec(&value).map_err(nats_err)?);
        let key = user_hex(&name.key());
        // Within the registration's time (`handshake_timeout`): a client
        // refused now tries again by itself.
        let revision = tokio::time::timeout(
            Duration::from_secs(5),
            persistently("where a user is", || async {
                self.online.put(&key, value.clone()).await.map_err(nats_err)
            }),
        )
        .await
        .map_err(|_| StoreError::Cluster("where a user is was not written in time".into()))??;
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.key(), (conn, revision));
        Ok(revision)
    }

    /// `user`'s connection `conn` here ended: its entry is deleted, if
    /// the user did not connect elsewhere meanwhile.
    pub(crate) async fn gone(&self, user: &UserKey, conn: u64) {
        self.forget_sent(user, conn);
        let revision = {
            let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
            match registered.get(user) {
                Some(&(c, revision)) if c == conn => {
                    registered.remove(user);
                    let mut joined = self.joined.lock().unwrap_or_else(|p| p.into_inner());
                    joined.remove(user);
                    Some(revision)
                }
                _ => None,
            }
        };
        if let Some(revision) = revision {
            self.offline(user, revision).await;
        }
    }

    /// Deletes `user`'s entry if it is still the one at `revision` (the
    /// user did not connect elsewhere meanwhile), tried again while
    /// JetStream does not answer (`persistently`): an entry left behind
    /// would show the user online to the other relays for as long as this
    /// relay runs. Tried again after a deletion that was applied but not
    /// answered, it finds the entry changed.
    pub(crate) async fn offline(&self, user: &UserKey, revision: u64) {
        let key = user_hex(user);
        let deleted = persistently("where a user was", || async {
            match self
                .online
                .delete_expect_revision(&key, Some(revision))
                .await
            {
                Ok(()) => Ok(true),
                Err(error) if says(&error, "wrong last sequence") => Ok(false),
                Err(error) => Err(nats_err(error)),
            }
        })
        .await;
        match deleted {
            Ok(true) => {}
            Ok(false) => debug!("an entry of who is online was not deleted: it changed"),
            Err(error) => warn!(%error, "an entry of who is online could not be deleted"),
        }
    }

    /// The prekeys the cluster holds for `fingerprint`.
    async fn prekeys_of(&self, fingerprint: &[u8; 32]) -> Option<Vec<PrekeyRecord>> {
        let value = self.prekeys.get(hex(fingerprint)).await.ok()??;
        postcard::from_bytes(&value).ok()
    }
}

/// Follows the cluster for `shared` until `stop`: the watches of `start`,
/// this relay's heartbeat and the others'.
pub(crate) async fn run(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    start: Start,
    stop: CancellationToken,
) {
    let Start {
        online,
        members,
        prekeys,
        ..
    } = start;
    let relays = Arc::new(std::sync::Mutex::new(Relays::default()));
    let online_followed = Followed::new(online.watch, &online.entries);
    for entry in online.entries {
        apply_online(&cluster, &shared, &relays, entry);
    }
    // The heartbeats on a task of their own: a watch being started again
    // here must not stop this relay's heartbeat, nor the others' being
    // heard.
    tokio::spawn(heartbeats(
        Arc::clone(&cluster),
        Arc::clone(&shared),
        Arc::clone(&relays),
        stop.clone(),
    ));
    let (mut online, mut members, mut prekeys) = (online_followed, members, prekeys);
    let mut tick = tokio::time::interval(HEARTBEAT * u32::try_from(WATCHDOG).unwrap_or(3));
    // Ticks missed while the loop waited (a watch started again) are not
    // made up in a burst: each would find the watch "stalled" again.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                if ticks.is_multiple_of(4) {
                    cluster.count_queued().await;
                }
                ticks += 1;
                for (followed, bucket) in [
                    (&mut online, &cluster.online),
                    (&mut members, &cluster.members),
                    (&mut prekeys, &cluster.prekeys),
                ] {
                    if followed.stalled(&cluster.js, bucket).await {
                        warn!(bucket = %bucket.name, "a watch of the cluster stalled; started again");
                        match rewatch(bucket, followed.revision, &stop).await {
                            Some(watch) => followed.watch = watch,
                            None => return,
                        }
                    }
                }
            }
            entry = online.watch.next() => match entry {
                Some(Ok(entry)) => {
                    online.revision = entry.revision;
                    apply_online(&cluster, &shared, &relays, entry);
                }
                _ => match rewatch(&cluster.online, online.revision, &stop).await {
                    Some(watch) => online.watch = watch,
                    None => return,
                },
            },
            entry = members.watch.next() => match entry {
                Some(Ok(entry)) => {
                    members.revision = entry.revision;
                    apply_member(&cluster, &shared, entry).await;
                }
                _ => match rewatch(&cluster.members, members.revision, &stop).await {
                    Some(watch) => members.watch = watch,
                    None => return,
                },
            },
            entry = prekeys.watch.next() => match entry {
                Some(Ok(entry)) => {
                    prekeys.revision = entry.revision;
                    apply_prekeys(&shared, &entry);
                }
                _ => match rewatch(&cluster.prekeys, prekeys.revision, &stop).await {
                    Some(watch) => prekeys.watch = watch,
                    None => return,
                },
            },
        }
    }
}

/// Writes this relay's heartbeat every [`HEARTBEAT`], hears the others'
/// (a watch started again when none came for a while), and sweeps the
/// relays not heard.
async fn heartbeats(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    relays: Arc<std::sync::Mutex<Relays>>,
    stop: CancellationToken,
) {
    let mut watch = cluster.relays.watch_all().await.ok();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut beats, mut checked, mut ticks) = (0u64, 0u64, 0u64);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {
                beat(&cluster).await;
                sweep(&cluster, &shared, &relays).await;
                ticks += 1;
                if ticks.is_multiple_of(WATCHDOG) {
                    // Heartbeats come every second: none for a while, the
                    // watch is started again.
                    if beats == checked {
                        watch = None;
                    }
                    checked = beats;
                }
                if watch.is_none() {
                    watch = cluster.relays.watch_all().await.ok();
                }
            }
            entry = next_beat(&mut watch) => match entry {
                Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                    beats += 1;
                    lock(&relays).heard(&entry.key, &shared);
                }
                Some(Ok(_)) => {}
                _ => watch = None,
            },
        }
    }
}

fn lock(relays: &std::sync::Mutex<Relays>) -> std::sync::MutexGuard<'_, Relays> {
    relays.lock().unwrap_or_else(|p| p.into_inner())
}

/// Relays not heard for [`DEAD_AFTER`] are dead; those gone for
/// [`GONE_AFTER`] are forgotten, with their users' entries.
async fn sweep(cluster: &Cluster, shared: &Shared, relays: &std::sync::Mutex<Relays>) {
    let gone = lock(relays).sweep(shared);
    for relay in gone {
        for (user, revision) in shared.cluster_users_of(&relay) {
            cluster.offline(&user, revision).await;
        }
    }
}

async fn next_beat(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// A watch of `bucket` from after `revision`, retried until it starts;
/// `None` once the relay stops.
async fn rewatch(bucket: &kv::Store, revision: u64, stop: &CancellationToken) -> Option<kv::Watch> {
    loop {
        match tokio::time::timeout(ATTEMPT, bucket.watch_all_from_revision(revision + 1)).await {
            Ok(Ok(watch)) => return Some(watch),
            Ok(Err(error)) => warn!(%error, "a watch of the cluster failed; retrying"),
            Err(_) => warn!("a watch of the cluster did not start in time; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = stop.cancelled() => return None,
        }
    }
}

/// Writes this relay's heartbeat.
async fn beat(cluster: &Cluster) {
    let now = postcard::to_stdvec(&now_secs()).unwrap_or_default();
    if let Err(error) = cluster.relays.put(&cluster.relay, now.into()).await {
        debug!(%error, "the heartbeat was not written");
    }
}

fn apply_online(
    cluster: &Cluster,
    shared: &Shared,
    relays: &std::sync::Mutex<Relays>,
    entry: kv::Entry,
) {
    let Some(user) = parse_user(&entry.key) else {
        return;
    };
    match entry.operation {
        kv::Operation::Put => {
            let Ok(value) = postcard::from_bytes::<OnlineValue>(&entry.value) else {
                warn!(key = %entry.key, "a damaged entry of who is online is ignored");
                return;
            };
            if value.relay == cluster.relay {
                return;
            }
            lock(relays).seen(&value.relay);
            shared.cluster_online(value.name, value.relay, entry.revision);
        }
        kv::Operation::Delete | kv::Operation::Purge => shared.cluster_offline(&user),
    }
}

async fn apply_member(cluster: &Cluster, shared: &Shared, entry: kv::Entry) {
    let Some((room, user)) = parse_member_key(&entry.key) else {
        return;
    };
    match entry.operation {
        kv::Operation::Put => {
            let Ok(value) = postcard::from_bytes::<MemberValue>(&entry.value) else {
                warn!(key = %entry.key, "a damaged membership is ignored");
                return;
            };
            admit(cluster, shared, room, value).await;
        }
        kv::Operation::Delete | kv::Operation::Purge => shared.cluster_member_left(&room, &user),
    }
}

/// Applies a membership the cluster holds to the registry (its room's
/// connected members hear of a new member).
async fn admit(cluster: &Cluster, shared: &Shared, room: RoomName, value: MemberValue) {
    // The prekeys its join carries: the newcomer published them before it
    // joined, but through another bucket, whose change may not have come
    // yet.
    if shared.prekeys_of(&value.fingerprint, now_secs()).is_empty()
        && let Some(records) = cluster.prekeys_of(&value.fingerprint).await
    {
        shared.set_prekeys(value.fingerprint, records, now_secs());
    }
    shared.cluster_member(
        room,
        value.name,
        value.identity,
        value.fingerprint,
        value.last_seen,
    );
}

impl Cluster {
    /// Makes sure this relay knows `from` as a member of `room` before it
    /// delivers `from`'s message there: the membership and the message
    /// reach this relay by different ways (a bucket's watch, the stream),
    /// in either order, and the recipient must hear of a new member (its
    /// `Presence`, with its identity and prekeys) before its first
    /// message. Read from the bucket's leader if the registry lacks it.
    pub(crate) async fn know_sender(&self, shared: &Shared, room: &RoomName, from: &UserName) {
        let user = from.key();
        if shared.is_member(room, &user) {
            return;
        }
        let Ok(Some(value)) = self.members.get(member_key(room, &user)).await else {
            return;
        };
        if let Ok(value) = postcard::from_bytes::<MemberValue>(&value) {
            admit(self, shared, room.clone(), value).await;
        }
    }

    /// Makes sure this relay knows `from` as a member of each of `rooms`
    /// (those it joined lately, as its delivery names them) before it
    /// delivers anything of `from`'s, direct messages included: a new
    /// member's first frames to the others (its key announcements) are
    /// direct, and its recipients must hear of it first, as on a single
    /// relay. The membership and the delivery reach this relay by
    /// different ways (the bucket's watch, the stream), in either order.
    pub(crate) async fn know_joins(&self, shared: &Shared, from: &UserName, rooms: &[RoomName]) {
        for room in rooms {
            self.know_sender(shared, room, from).await;
        }
    }
}

fn apply_prekeys(shared: &Shared, entry: &kv::Entry) {
    if entry.operation != kv::Operation::Put {
        return;
    }
    let (Some(fingerprint), Ok(records)) = (
        parse_fingerprint(&entry.key),
        postcard::from_bytes::<Vec<PrekeyRecord>>(&entry.value),
    ) else {
        return;
    };
    shared.set_prekeys(fingerprint, records, now_secs());
}

/// The other relays: when each was last heard, and which are taken for
/// dead.
#[derive(Default)]
struct Relays {
    heard: HashMap<String, (Instant, bool)>,
}

impl Relays {
    /// `relay` is named by an entry: known from now if it was not.
    fn seen(&mut self, relay: &str) {
        self.heard
            .entry(relay.to_string())
            .or_insert((Instant::now(), true));
    }

    /// `relay`'s heartbeat came.
    fn heard(&mut self, relay: &str, shared: &Shared) {
        let (at, alive) = self
            .heard
            .entry(relay.to_string())
            .or_insert((Instant::now(), true));
        *at = Instant::now();
        if !*alive {
            *alive = true;
            tracing::info!(%relay, "a relay of the cluster answers again");
            shared.cluster_relay(relay, true);
        }
    }

    /// Relays not heard for [`DEAD_AFTER`] are dead; those gone for
    /// [`GONE_AFTER`] are forgotten: returned, for their users' entries
    /// to be deleted.
    fn sweep(&mut self, shared: &Shared) -> Vec<String> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (relay, (at, alive)) in &mut self.heard {
            let quiet = now.duration_since(*at);
            if *alive && quiet >= DEAD_AFTER {
                *alive = false;
                warn!(%relay, "a relay of the cluster stopped answering; its users are offline");
                shared.cluster_relay(relay, false);
            }
            if quiet >= GONE_AFTER {
                gone.push(relay.clone());
            }
        }
        for relay in &gone {
            self.heard.remove(relay);
        }
        gone
    }
}
