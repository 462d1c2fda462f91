//! Stored deliveries in a JetStream stream, `SOTTO_INBOX`, on each
//! recipient's subject `sotto.inbox.<user>`, replicated, kept until the
//! recipient acknowledges them (the message is deleted) or they are older
//! than `offline_max_age` (the stream's age limit).
//!
//! A stream message (a "write") holds up to [`COPIES`] deliveries for its
//! recipient: those of one commit turn, so that a busy recipient's
//! deliveries of a turn are one replicated write and one round trip, not
//! one each. A delivery's id is its write's sequence in the stream times
//! [`COPIES`] plus its place in the write: non-zero, never reused, and
//! growing in the order the stream's leader took the writes, for all
//! relays together, so each recipient reads its deliveries in that order.
//! A write is answered `Sent` only once JetStream has acknowledged it,
//! which it does once a majority of the stream's replicas hold it. The
//! stream bounds each recipient to `offline_max_messages` writes (discard
//! new, per subject): a delivery past it is refused for that recipient,
//! as the local store refuses it.
//!
//! A write sent again (JetStream's answer lost) is recognised by its
//! `Nats-Msg-Id`, a hash of its copies', within the stream's duplicate
//! window; each copy carries its own hash (of sender, destination,
//! recipient and body), by which the recipient's pump hands a resend
//! stored in another write (its sender's relay died before answering)
//! over once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_proto::{Destination, MAX_FRAME_LEN, RoomName, UserKey};

use super::{
    Cluster, INBOX, INBOX_PREFIX, LIVE_PREFIX, STREAM_TIMEOUT, hex, nats_err, says, user_hex,
};
use crate::store::{NewDelivery, QueueLimits, Queued, StoreError};

/// How many deliveries one write holds at most: a delivery's id is its
/// write's sequence times this, plus its place in the write.
pub(crate) const COPIES: u64 = 64;
/// How many bytes of deliveries a write is given: a delivery larger than
/// this goes in a write alone.
const WRITE_BYTES: usize = 256 * 1024;
/// What a copy's encoding takes beyond its body and slot, at most (its
/// names, time, hash and the rooms its sender joined are counted apart).
const COPY_OVERHEAD: usize = 256;
/// The largest write, in bytes: one delivery of the largest frame, with
/// room for what the write adds to it. NATS must take messages this
/// large (its `max_payload`, 1 MiB unless set; `Cluster::connect` checks).
pub(super) const MAX_WRITE: usize = MAX_FRAME_LEN + 64 * 1024;
/// How long a resend is recognised as one.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a write JetStream did not acknowledge (a NATS node lost, a
/// stream electing its leader) is sent again before its deliveries are
/// refused: sending again is safe, the `Nats-Msg-Id` keeps one copy.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// How soon it is sent again after JetStream refused it.
const PUBLISH_RETRY: Duration = Duration::from_millis(250);

/// The stream's configuration.
pub(super) fn stream_config(replicas: usize, limits: QueueLimits) -> stream::Config {
    let max_age = limits.max_age.max(Duration::from_secs(1));
    stream::Config {
        name: INBOX.to_string(),
        subjects: vec![format!("{INBOX_PREFIX}*")],
        max_age,
        max_messages_per_subject: i64::try_from(limits.max_messages).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        max_message_size: i32::try_from(MAX_WRITE).unwrap_or(i32::MAX),
        duplicate_window: DUPLICATE_WINDOW.min(max_age),
        allow_direct: false,
        num_replicas: replicas,
        republish: Some(stream::Republish {
            source: format!("{INBOX_PREFIX}>"),
            destination: format!("{LIVE_PREFIX}>"),
            headers_only: false,
        }),
        ..stream::Config::default()
    }
}

/// What one write holds for its recipient: deliveries, in order.
#[derive(Serialize, Deserialize)]
pub(crate) struct InboxEntry {
    pub(crate) copies: Vec<InboxCopy>,
}

/// A write as it is encoded: the same as [`InboxEntry`], borrowed.
#[derive(Serialize)]
struct WriteOut<'a> {
    copies: Vec<&'a InboxCopy>,
}

/// One delivery in a write.
#[derive(Serialize, Deserialize)]
pub(crate) struct InboxCopy {
    pub(crate) queued: Queued,
    /// The rooms its sender joined lately through the relay it was sent
    /// through (`Cluster::recent_joins`): the recipient's relay makes sure
    /// it knows of those memberships before it hands the delivery over
    /// (`Cluster::know_joins`).
    pub(crate) joined: Vec<RoomName>,
    /// What it is a copy of ([`copy_hash`]): the same for a resend.
    pub(crate) hash: [u8; 16],
}

/// One recipient's copy of a delivery, for the stream.
pub(crate) struct Outgoing {
    subject: String,
    copy: InboxCopy,
}

impl Outgoing {
    /// About how many bytes it takes in a write.
    fn size(&self) -> usize {
        let queued = &self.copy.queued;
        let joined: usize = self.copy.joined.iter().map(|r| r.as_str().len() + 2).sum();
        queued.body.len() + queued.slot.as_ref().map_or(0, Bytes::len) + joined + COPY_OVERHEAD
    }
}

/// What became of one recipient's copy.
pub(crate) enum Publication {
    /// Stored under this id.
    Stored(u64),
    /// The recipient holds as many deliveries as the relays keep.
    Full,
    /// Not stored: NATS failed.
    Failed,
}

/// What a copy of `delivery` for `recipient` is a copy of: the same for
/// its resends.
fn copy_hash(delivery: &NewDelivery, recipient: &UserKey) -> [u8; 16] {
    let mut hash = Sha256::new();
    hash.update(delivery.from.key().as_str().as_bytes());
    hash.update([0]);
    match &delivery.to {
        Destination::Room(room) => hash.update(room.as_str().as_bytes()),
        Destination::User(user) => hash.update(user.key().as_str().as_bytes()),
    }
    hash.update([0]);
    hash.update(recipient.as_str().as_bytes());
    hash.update([1]);
    hash.update(&delivery.body);
    let digest = hash.finalize();
    let mut first = [0; 16];
    first.copy_from_slice(digest.get(..16).unwrap_or(&[0; 16]));
    first
}

/// The `Nats-Msg-Id` of a write of `copies`: the same when it is sent
/// again.
fn write_id(copies: &[&InboxCopy]) -> String {
    let mut hash = Sha256::new();
    for copy in copies {
        hash.update(copy.hash);
    }
    hex(hash.finalize().get(..16).unwrap_or_default())
}

/// One write to be stored: a recipient's copies, by their place in the
/// turn's outgoing copies.
struct Write<'a> {
    subject: &'a str,
    copies: Vec<usize>,
}

/// `outgoing` in writes: each recipient's copies in order, in writes of
/// at most [`COPIES`] deliveries and [`WRITE_BYTES`] bytes (or one larger
/// delivery). Wave `n` holds each recipient's `n`-th write.
fn waves(outgoing: &[Outgoing]) -> Vec<Vec<Write<'_>>> {
    // Each recipient's writes, and the bytes of its last.
    let mut writes: HashMap<&str, (Vec<Vec<usize>>, usize)> = HashMap::new();
    for (index, out) in outgoing.iter().enumerate() {
        let size = out.size();
        let (recipient, bytes) = writes.entry(out.subject.as_str()).or_default();
        match recipient.last_mut() {
            Some(last) if (last.len() as u64) < COPIES && *bytes + size <= WRITE_BYTES => {
                last.push(index);
                *bytes += size;
            }
            _ => {
                recipient.push(vec![index]);
                *bytes = size;
            }
        }
    }
    let mut waves: Vec<Vec<Write<'_>>> = Vec::new();
    for (subject, (recipient, _)) in writes {
        for (n, copies) in recipient.into_iter().enumerate() {
            let write = Write { subject, copies };
            match waves.get_mut(n) {
                Some(wave) => wave.push(write),
                None => waves.push(vec![write]),
            }
        }
    }
    waves
}

impl Cluster {
    /// The subject of `user`'s deliveries.
    pub(crate) fn inbox_subject(user: &UserKey) -> String {
        format!("{INBOX_PREFIX}{}", user_hex(user))
    }

    /// `delivery`'s copies for the stream, one per recipient, in order,
    /// for [`Cluster::store_in_order`].
    pub(crate) fn outgoing(&self, delivery: &NewDelivery) -> Vec<Outgoing> {
        let joined = self.recent_joins(&delivery.from.key());
        delivery
            .recipients
            .iter()
            .map(|recipient| {
                let user = recipient.name.key();
                Outgoing {
                    subject: Self::inbox_subject(&user),
                    copy: InboxCopy {
                        queued: Queued {
                            queued_at: delivery.queued_at,
                            from: delivery.from.clone(),
                            to: delivery.to.clone(),
                            body: delivery.body.clone(),
                            slot: recipient.slot.clone(),
                        },
                        joined: joined.clone(),
                        hash: copy_hash(delivery, &user),
                    },
                }
            })
            .collect()
    }

    /// Stores `outgoing` in the stream, one answer per copy in the same
    /// order, keeping each recipient's order: each recipient's copies in
    /// as few writes as they fit ([`COPIES`], [`WRITE_BYTES`]), writes to
    /// different recipients together, and a recipient's next write only
    /// once its previous one is stored. Sending them all at once would not
    /// do: a NATS node lost with a write on its way while the next reaches
    /// the stream (through the node the client moved to) stores the next
    /// first, and its recipient would read a gap. Once a recipient's write
    /// fails, its later ones are not sent either (they fail too, and their
    /// senders send them again, in order).
    pub(crate) async fn store_in_order(&self, outgoing: &[Outgoing]) -> Vec<Publication> {
        let mut answers: Vec<Publication> = outgoing.iter().map(|_| Publication::Failed).collect();
        let mut failed: HashSet<&str> = HashSet::new();
        for wave in waves(outgoing) {
            let due: Vec<Write<'_>> = wave
                .into_iter()
                .filter(|write| !failed.contains(write.subject))
                .collect();
            let stored = join_all(due.iter().map(|write| {
                let copies: Vec<&InboxCopy> = write
                    .copies
                    .iter()
                    .filter_map(|&index| outgoing.get(index))
                    .map(|out| &out.copy)
                    .collect();
                self.stored(write.subject, copies)
            }))
            .await;
            for (write, publication) in due.into_iter().zip(stored) {
                if let Publication::Failed = publication {
                    failed.insert(write.subject);
                }
                for (place, index) in (0..).zip(&write.copies) {
                    if let Some(answer) = answers.get_mut(*index) {
                        *answer = match publication {
                            Publication::Stored(seq) => Publication::Stored(seq * COPIES + place),
                            Publication::Full => Publication::Full,
                            Publication::Failed => Publication::Failed,
                        };
                    }
                }
            }
        }
        answers
    }

    /// Stores one write of `copies` on `subject` and waits for
    /// JetStream's answer (`Stored` with the write's sequence), sending it
    /// again while it is not acknowledged, for up to [`PUBLISH_PATIENCE`]:
    /// at once if the client reconnected to NATS meanwhile (an answer due
    /// on the lost connection never comes) or no answer within
    /// [`STREAM_TIMEOUT`], [`PUBLISH_RETRY`] after a refusal.
    async fn stored(&self, subject: &str, copies: Vec<&InboxCopy>) -> Publication {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", write_id(&copies).as_str());
        let Ok(payload) = postcard::to_stdvec(&WriteOut { copies }) else {
            return Publication::Failed;
        };
        let payload = Bytes::from(payload);
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        let mut reconnected = self.reconnected.clone();
        loop {
            reconnected.borrow_and_update();
            let sent = self
                .js
                .publish_with_headers(subject.to_string(), headers.clone(), payload.clone())
                .await;
            let (failure, pause) = match sent {
                Ok(ack) => tokio::select! {
                    answer = tokio::time::timeout(STREAM_TIMEOUT, ack) => match answer {
                        Err(_) => ("not acknowledged in time".to_string(), Duration::ZERO),
                        Ok(Ok(ack)) => return Publication::Stored(ack.sequence),
                        Ok(Err(error)) => {
                            if says(&error, "maximum messages per subject") {
                                return Publication::Full;
                            }
                            (error.to_string(), PUBLISH_RETRY)
                        }
                    },
                    Ok(()) = reconnected.changed() => {
                        ("reconnected to NATS".to_string(), Duration::ZERO)
                    }
                },
                Err(error) => (error.to_string(), PUBLISH_RETRY),
            };
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(error = %failure, "deliveries were not stored in the cluster");
                return Publication::Failed;
            }
            tracing::debug!(error = %failure, "deliveries are sent to the cluster again");
            tokio::time::sleep(pause).await;
        }
    }

    /// Counts the deliveries the stream holds (for the metrics).
    pub(crate) async fn count_queued(&self) {
        match self.inbox.get_info().await {
            Ok(info) => self
                .queued
                .store(info.state.messages, std::sync::atomic::Ordering::Relaxed),
            Err(error) => tracing::debug!(%error, "could not count the stored deliveries"),
        }
    }

    /// The subscription to `user`'s writes as the stream republishes them
    /// once stored ([`Cluster::live_delivery`] reads one).
    pub(crate) async fn live(&self, user: &UserKey) -> Result<async_nats::Subscriber, StoreError> {
        self.client
            .subscribe(format!("{LIVE_PREFIX}{}", user_hex(user)))
            .await
            .map_err(nats_err)
    }

    /// A write as the stream republished it: its sequence, the sequence of
    /// the recipient's write stored before it that was still there (0: none
    /// was), and what it holds (`None`: it does not decode). `None` if the
    /// headers are not the stream's.
    pub(crate) fn live_delivery(
        message: &async_nats::Message,
    ) -> Option<(u64, u64, Option<InboxEntry>)> {
        let headers = message.headers.as_ref()?;
        let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
        let seq = number("Nats-Sequence").filter(|&seq| seq > 0)?;
        let last = number("Nats-Last-Sequence")?;
        Some((seq, last, postcard::from_bytes(&message.payload).ok()))
    }

    /// `user`'s first write stored with a sequence above `after`, if any
    /// (`None` with its sequence: a message that does not decode, to
    /// skip).
    pub(crate) async fn next_delivery(
        &self,
        user: &UserKey,
        after: u64,
    ) -> Result<Option<(u64, Option<InboxEntry>)>, StoreError> {
        let read = self
            .inbox
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(Self::inbox_subject(user))
            .send();
        let Ok(found) = tokio::time::timeout(STREAM_TIMEOUT, read).await else {
            return Err(StoreError::Cluster(
                "the stream did not answer in time".into(),
            ));
        };
        match found {
            Ok(message) => Ok(Some((
                message.sequence,
                postcard::from_bytes(&message.payload).ok(),
            ))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(nats_err(e)),
        }
    }

    /// Notes that the write `seq` of `user`'s was read on its connection
    /// `conn`, and that of its deliveries those with the ids `handed` go
    /// to the client (only such deliveries can be acknowledged away; the
    /// write's others, resends handed over already and any that do not
    /// decode, are taken as acknowledged).
    pub(crate) fn note_sent(&self, user: &UserKey, conn: u64, seq: u64, handed: &[u64]) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sent.entry(user.clone()).or_insert_with(|| Sent::on(conn));
        if entry.conn != conn {
            *entry = Sent::on(conn);
        }
        entry.outstanding.extend(handed);
        entry.highest = entry.highest.max(seq);
    }

    /// Forgets what was sent on `user`'s connection `conn`, which ended.
    pub(crate) fn forget_sent(&self, user: &UserKey, conn: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.get(user).is_some_and(|s| s.conn == conn) {
            sent.remove(user);
        }
    }

    /// Takes `ids` as acknowledged if they were sent to `user` here (any
    /// other id is ignored: it is not `user`'s, or it is gone already) and
    /// deletes the writes nothing is waited for in any more: every write
    /// of `user`'s below the one holding the lowest delivery sent here and
    /// not acknowledged, in one purge of its subject (the pump read each
    /// of those, as it reads the user's writes in order from the first on
    /// each connection, and each of their deliveries sent was
    /// acknowledged), and any above it whose deliveries are all
    /// acknowledged (a delivery the client keeps for later, such as one
    /// waiting for a key, holds the purge back) one by one. Returns how
    /// many writes were deleted.
    pub(crate) async fn acknowledge(&self, user: &UserKey, ids: &[u64]) -> u64 {
        let (purge, singles) = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            let Some(entry) = sent.get_mut(user) else {
                return 0;
            };
            let acked: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| entry.outstanding.remove(id))
                .collect();
            let below = entry
                .outstanding
                .first()
                .map_or(entry.highest + 1, |id| id / COPIES);
            let purge = (!acked.is_empty() && below > entry.purged).then_some(below);
            if let Some(below) = purge {
                entry.purged = below;
            }
            let mut singles: Vec<u64> = acked
                .into_iter()
                .map(|id| id / COPIES)
                .filter(|&seq| seq > below)
                .collect();
            singles.sort_unstable();
            singles.dedup();
            singles.retain(|&seq| {
                let write = seq * COPIES..(seq + 1) * COPIES;
                entry.outstanding.range(write).next().is_none()
            });
            (purge, singles)
        };
        let mut deleted = 0;
        if let Some(below) = purge {
            let purged = self
                .inbox
                .purge()
                .filter(Self::inbox_subject(user))
                .sequence(below)
                .await;
            match purged {
                Ok(response) => deleted += response.purged,
                Err(error) => {
                    // Left for the next acknowledgement's purge, or its age.
                    tracing::debug!(%error, "acknowledged deliveries were not deleted");
                    let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(entry) = sent.get_mut(user) {
                        entry.purged = entry.purged.min(below.saturating_sub(1)).max(1);
                    }
                }
            }
        }
        let deletions = singles.iter().map(|seq| self.inbox.delete_message(*seq));
        for result in join_all(deletions).await {
            match result {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                // Gone already (a duplicate acknowledgement, or its age).
                Err(error) => tracing::debug!(%error, "an acknowledged delivery was not deleted"),
            }
        }
        deleted
    }
}

/// What was sent to a user on its connection here.
pub(crate) struct Sent {
    conn: u64,
    /// The ids of the deliveries sent and not acknowledged.
    outstanding: BTreeSet<u64>,
    /// The sequence of the last write read.
    highest: u64,
    /// Every write of the user's below this sequence is deleted. At least
    /// 1: nothing is below the stream's first sequence, and JetStream
    /// takes a purge below 1 for a purge of the whole subject.
    purged: u64,
}

impl Sent {
    fn on(conn: u64) -> Self {
        Self {
            conn,
            outstanding: BTreeSet::new(),
            highest: 0,
            purged: 1,
        }
    }
}
