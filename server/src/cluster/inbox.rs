//! Stored deliveries in a JetStream stream, `SOTTO_INBOX`: one message per
//! recipient on its subject `sotto.inbox.<user>`, replicated, kept until
//! the recipient acknowledges it (the message is deleted) or it is older
//! than `offline_max_age` (the stream's age limit).
//!
//! A delivery's id is its sequence in the stream: non-zero, never reused,
//! and growing in the order the stream's leader took the publications,
//! for all relays together, so each recipient reads its deliveries in
//! that order. A publication is answered `Sent` only once JetStream has
//! acknowledged it, which it does once a majority of the stream's
//! replicas hold it. The stream bounds each recipient to
//! `offline_max_messages` deliveries (discard new, per subject): a
//! delivery past it is refused for that recipient, as the local store
//! refuses it.
//!
//! A resend (a client sending again what it was not told was stored) is
//! recognised by its `Nats-Msg-Id`, a hash of sender, destination,
//! recipient and body, within the stream's duplicate window.

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

/// How long a resend is recognised as one.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long a publication JetStream did not acknowledge (a NATS node
/// lost, a stream electing its leader) is sent again before the message
/// is refused: sending again is safe, the `Nats-Msg-Id` keeps one copy.
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
        max_message_size: i32::try_from(MAX_FRAME_LEN + 64 * 1024).unwrap_or(i32::MAX),
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

/// What the stream holds for one recipient: the delivery, and the rooms
/// its sender joined lately.
#[derive(Serialize, Deserialize)]
pub(crate) struct InboxEntry {
    pub(crate) queued: Queued,
    /// The rooms its sender joined lately through the relay it was sent
    /// through (`Cluster::recent_joins`): the recipient's relay makes sure
    /// it knows of those memberships before it hands the delivery over
    /// (`Cluster::know_joins`).
    pub(crate) joined: Vec<RoomName>,
}

/// One recipient's copy of a delivery, for the stream.
pub(crate) struct Outgoing {
    subject: String,
    headers: HeaderMap,
    /// `None`: it did not encode (it is refused).
    payload: Option<Bytes>,
}

/// What became of one recipient's publication.
pub(crate) enum Publication {
    /// Stored under this id.
    Stored(u64),
    /// The recipient holds as many deliveries as the relays keep.
    Full,
    /// Not stored: NATS failed.
    Failed,
}

/// The `Nats-Msg-Id` of `delivery` for `recipient`.
fn message_id(delivery: &NewDelivery, recipient: &UserKey) -> String {
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
    hex(digest.get(..16).unwrap_or_default())
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
                let entry = InboxEntry {
                    queued: Queued {
                        queued_at: delivery.queued_at,
                        from: delivery.from.clone(),
                        to: delivery.to.clone(),
                        body: delivery.body.clone(),
                        slot: recipient.slot.clone(),
                    },
                    joined: joined.clone(),
                };
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", message_id(delivery, &user).as_str());
                Outgoing {
                    subject: Self::inbox_subject(&user),
                    headers,
                    payload: postcard::to_stdvec(&entry).ok().map(Bytes::from),
                }
            })
            .collect()
    }

    /// Stores `outgoing` in the stream, one answer per publication in the
    /// same order, keeping each recipient's order: copies to different
    /// recipients go out together, and a recipient's next copy goes out
    /// only once its previous one is stored. Sending them all at once
    /// would not do: a NATS node lost with a copy on its way while the
    /// next reaches the stream (through the node the client moved to)
    /// stores the next first, and its recipient would read a gap. Once a
    /// recipient's copy fails, its later ones in `outgoing` are not sent
    /// either (they fail too, and their senders send them again, in
    /// order).
    pub(crate) async fn store_in_order(&self, outgoing: &[Outgoing]) -> Vec<Publication> {
        // Wave n holds each recipient's n-th copy.
        let mut waves: Vec<Vec<usize>> = Vec::new();
        let mut copies: HashMap<&str, usize> = HashMap::new();
        for (index, out) in outgoing.iter().enumerate() {
            let wave = copies.entry(out.subject.as_str()).or_default();
            match waves.get_mut(*wave) {
                Some(members) => members.push(index),
                None => waves.push(vec![index]),
            }
            *wave += 1;
        }
        let mut answers: Vec<Publication> = outgoing.iter().map(|_| Publication::Failed).collect();
        let mut failed: HashSet<&str> = HashSet::new();
        for wave in waves {
            let due: Vec<usize> = wave
                .into_iter()
                .filter(|&index| {
                    outgoing
                        .get(index)
                        .is_some_and(|out| !failed.contains(out.subject.as_str()))
                })
                .collect();
            let stored = join_all(
                due.iter()
                    .filter_map(|&index| outgoing.get(index))
                    .map(|out| self.stored(out)),
            )
            .await;
            for (index, publication) in due.into_iter().zip(stored) {
                if let (Publication::Failed, Some(out)) = (&publication, outgoing.get(index)) {
                    failed.insert(out.subject.as_str());
                }
                if let Some(answer) = answers.get_mut(index) {
                    *answer = publication;
                }
            }
        }
        answers
    }

    /// Publishes one copy and waits for JetStream's answer, sending it
    /// again while it is not acknowledged, for up to [`PUBLISH_PATIENCE`]:
    /// at once if the client reconnected to NATS meanwhile (an answer due
    /// on the lost connection never comes) or no answer within
    /// [`STREAM_TIMEOUT`], [`PUBLISH_RETRY`] after a refusal.
    async fn stored(&self, outgoing: &Outgoing) -> Publication {
        let Some(payload) = &outgoing.payload else {
            return Publication::Failed;
        };
        let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
        let mut reconnected = self.reconnected.clone();
        loop {
            reconnected.borrow_and_update();
            let sent = self
                .js
                .publish_with_headers(
                    outgoing.subject.clone(),
                    outgoing.headers.clone(),
                    payload.clone(),
                )
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
                tracing::warn!(error = %failure, "a delivery was not stored in the cluster");
                return Publication::Failed;
            }
            tracing::debug!(error = %failure, "a delivery is sent to the cluster again");
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

    /// The subscription to `user`'s deliveries as the stream republishes
    /// them once stored ([`Cluster::live_delivery`] reads one).
    pub(crate) async fn live(&self, user: &UserKey) -> Result<async_nats::Subscriber, StoreError> {
        self.client
            .subscribe(format!("{LIVE_PREFIX}{}", user_hex(user)))
            .await
            .map_err(nats_err)
    }

    /// A delivery as the stream republished it: its id, the id of the
    /// recipient's delivery stored before it that was still there (0: none
    /// was), and what it holds (`None`: it does not decode). `None` if the
    /// headers are not the stream's.
    pub(crate) fn live_delivery(
        message: &async_nats::Message,
    ) -> Option<(u64, u64, Option<InboxEntry>)> {
        let headers = message.headers.as_ref()?;
        let number = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
        let id = number("Nats-Sequence").filter(|&id| id > 0)?;
        let last = number("Nats-Last-Sequence")?;
        Some((id, last, postcard::from_bytes(&message.payload).ok()))
    }

    /// `user`'s first stored delivery with an id above `after`, if any
    /// (`None` with its id: a message that does not decode, to skip).
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

    /// Notes that delivery `id` went to `user` on its connection `conn`
    /// (only such deliveries can be acknowledged away).
    pub(crate) fn note_sent(&self, user: &UserKey, conn: u64, id: u64) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let entry = sent.entry(user.clone()).or_insert_with(|| Sent::on(conn));
        if entry.conn != conn {
            *entry = Sent::on(conn);
        }
        entry.outstanding.insert(id);
        entry.highest = entry.highest.max(id);
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
    /// deletes them: every delivery of `user`'s below the lowest sent here
    /// and not acknowledged in one purge of its subject (the pump sent
    /// each of those, as it reads the user's deliveries in id order from
    /// the first on each connection, and each was acknowledged), and any
    /// acknowledged above it (a delivery the client keeps for later, such
    /// as one waiting for a key, holds the purge back) one by one. Returns
    /// how many were deleted.
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
                .copied()
                .unwrap_or(entry.highest + 1);
            let purge = (!acked.is_empty() && below > entry.purged).then_some(below);
            if let Some(below) = purge {
                entry.purged = below;
            }
            let singles: Vec<u64> = acked.into_iter().filter(|&id| id >= below).collect();
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
                        entry.purged = entry.purged.min(below.saturating_sub(1));
                    }
                }
            }
        }
        let deletions = singles.iter().map(|id| self.inbox.delete_message(*id));
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
    /// Sent and not acknowledged.
    outstanding: BTreeSet<u64>,
    /// The highest id sent.
    highest: u64,
    /// Every delivery of the user's below this is deleted.
    purged: u64,
}

impl Sent {
    fn on(conn: u64) -> Self {
        Self {
            conn,
            outstanding: BTreeSet::new(),
            highest: 0,
            purged: 0,
        }
    }
}
