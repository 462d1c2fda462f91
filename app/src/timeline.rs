//! One conversation's timeline: messages in their senders' order, system
//! notices between them, and the window of it that is on screen.
//!
//! Entries are kept sorted by a key: a message's display position (see
//! [`sotto_client::session::Message::position`]); a notice sorts after the last
//! message known when it was added. Appending is the common case and costs
//! O(1); a late message is inserted at its place. Messages this client
//! sent are also indexed by id (to their key), so that a change of how far
//! one got ([`Timeline::set_delivery`]) finds it in O(log n), whatever the
//! length of the history.
//!
//! Only a window of at most [`WINDOW`] entries is laid out and drawn:
//! scrolling to the top of the window moves it [`PAGE`] entries into the
//! past, scrolling to its bottom moves it back towards the present, where
//! it follows new messages again.

use std::collections::HashMap;
use std::ops::Range;

use sotto_crypto::Fingerprint;
use sotto_crypto::file::BlobId;

use sotto_client::session::{Delivery, Message, MessageId, TrustLevel};

/// Most entries on screen at once.
pub const WINDOW: usize = 200;
/// How far the window moves at a time.
pub const PAGE: usize = 100;

/// How a notice is shown: the client library's tone of what it says.
pub use sotto_client::ui::Tone;

/// A line from sotto itself, not from a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// How it looks.
    pub tone: Tone,
    /// What it says.
    pub text: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
}

/// One line of the timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A message.
    Message(Box<Message>),
    /// A notice.
    Notice(Notice),
}

type Key = (u64, u32, u32);

fn same_message(a: &Entry, b: &Entry) -> bool {
    matches!((a, b), (Entry::Message(a), Entry::Message(b))
        if a.seq == b.seq && a.fingerprint == b.fingerprint)
}

/// A conversation's entries and the window shown.
#[derive(Debug, Default)]
pub struct Timeline {
    entries: Vec<(Key, Entry)>,
    /// One past the last entry shown; `None` follows the newest.
    end: Option<usize>,
    /// How many entries above `end` are shown.
    span: usize,
    notices: u32,
    /// The key of each message this client sent (those with a delivery).
    sent: HashMap<MessageId, Key>,
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self {
            span: PAGE,
            ..Self::default()
        }
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a message at its place; false if it was there already.
    pub fn push_message(&mut self, message: Message) -> bool {
        let key = (message.position.0, message.position.1, 0);
        let at = self.entries.partition_point(|(k, _)| *k < key);
        if message.delivery.is_some() {
            self.sent.insert(message.id(), key);
        }
        let entry = Entry::Message(Box::new(message));
        if let Some((k, existing)) = self.entries.get(at)
            && *k == key
            && same_message(existing, &entry)
        {
            return false;
        }
        self.insert(at, key, entry);
        true
    }

    /// Adds many messages (a stored history): sorted once.
    pub fn extend_messages(&mut self, messages: Vec<Message>) {
        self.entries.reserve(messages.len());
        for message in messages {
            let key = (message.position.0, message.position.1, 0);
            if message.delivery.is_some() {
                self.sent.insert(message.id(), key);
            }
            self.entries.push((key, Entry::Message(Box::new(message))));
        }
        self.entries.sort_by_key(|(key, _)| *key);
        self.entries
            .dedup_by(|(a, x), (b, y)| a == b && same_message(x, y));
    }

    /// The message this client sent with `id`, now at `delivery`; false if
    /// there is none. O(log n): found by its key.
    pub fn set_delivery(&mut self, id: MessageId, delivery: Delivery) -> bool {
        let Some(key) = self.sent.get(&id).copied() else {
            return false;
        };
        let at = self.entries.partition_point(|(k, _)| *k < key);
        let found = self
            .entries
            .get_mut(at..)
            .unwrap_or_default()
            .iter_mut()
            .take_while(|(k, _)| *k == key)
            .find_map(|(_, entry)| match entry {
                Entry::Message(message) if message.id() == id => Some(message),
                _ => None,
            });
        match found {
            Some(message) => {
                message.delivery = Some(delivery);
                true
            }
            None => false,
        }
    }

    /// Removes the messages `ids` (they disappeared); how many it held.
    pub fn remove_messages(&mut self, ids: &[MessageId]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        let before = self.entries.len();
        let end = self.end;
        let mut removed_before_end = 0;
        let mut index = 0;
        self.entries.retain(|(_, entry)| {
            let gone = matches!(entry, Entry::Message(m) if ids.contains(&m.id()));
            if gone && end.is_some_and(|end| index < end) {
                removed_before_end += 1;
            }
            index += 1;
            !gone
        });
        // A window in the past keeps showing the entries it showed.
        if let Some(end) = &mut self.end {
            *end = end
                .saturating_sub(removed_before_end)
                .min(self.entries.len());
        }
        for id in ids {
            self.sent.remove(id);
        }
        before - self.entries.len()
    }

    /// Every message, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.entries.iter().filter_map(|(_, entry)| match entry {
            Entry::Message(message) => Some(&**message),
            Entry::Notice(_) => None,
        })
    }

    /// The files of the messages `ids` (to forget with them).
    pub fn files_of(&self, ids: &[MessageId]) -> Vec<BlobId> {
        self.messages()
            .filter(|m| ids.contains(&m.id()))
            .filter_map(|m| m.file.as_ref().map(|f| f.blob))
            .collect()
    }

    /// The text of the newest entry, if it is a notice.
    pub fn last_notice(&self) -> Option<&str> {
        match self.entries.last() {
            Some((_, Entry::Notice(notice))) => Some(&notice.text),
            _ => None,
        }
    }

    /// Rewrites the newest entry, if it is a notice (a run of presence
    /// notices shown as one).
    pub fn rewrite_last_notice(&mut self, text: String, at_ms: u64) {
        if let Some((_, Entry::Notice(notice))) = self.entries.last_mut() {
            notice.text = text;
            notice.at_ms = at_ms;
        }
    }

    /// Adds a notice after the message at `anchor` (the newest position the
    /// app has seen).
    pub fn push_notice(&mut self, anchor: (u64, u32), tone: Tone, text: String, at_ms: u64) {
        self.notices = self.notices.wrapping_add(1);
        let key = (anchor.0, anchor.1, self.notices);
        let at = self.entries.partition_point(|(k, _)| *k <= key);
        self.insert(at, key, Entry::Notice(Notice { tone, text, at_ms }));
    }

    fn insert(&mut self, at: usize, key: Key, entry: Entry) {
        self.entries.insert(at, (key, entry));
        // A window in the past keeps showing the same entries.
        if let Some(end) = &mut self.end
            && at < *end
        {
            *end += 1;
        }
    }

    /// The indices of the entries on screen.
    pub fn range(&self) -> Range<usize> {
        let end = self.end.unwrap_or(self.entries.len());
        end.saturating_sub(self.span)..end
    }

    /// The entries on screen.
    pub fn visible(&self) -> impl Iterator<Item = &Entry> {
        let range = self.range();
        self.entries
            .get(range)
            .unwrap_or_default()
            .iter()
            .map(|(_, entry)| entry)
    }

    /// Whether the window follows the newest entries.
    pub fn is_following(&self) -> bool {
        self.end.is_none()
    }

    /// Whether older entries exist above the window.
    pub fn has_older(&self) -> bool {
        self.range().start > 0
    }

    /// Shows older entries: grows the window up to [`WINDOW`], then moves it.
    pub fn older(&mut self) {
        if !self.has_older() {
            return;
        }
        if self.span < WINDOW {
            self.span = (self.span + PAGE).min(WINDOW);
            return;
        }
        let end = self.end.unwrap_or(self.entries.len());
        self.end = Some(
            end.saturating_sub(PAGE)
                .max(self.span.min(self.entries.len())),
        );
    }

    /// Shows newer entries; back to following at the end.
    pub fn newer(&mut self) {
        if let Some(end) = self.end {
            let end = end + PAGE;
            self.end = (end < self.entries.len()).then_some(end);
        }
    }

    /// Back to the newest entries.
    pub fn follow(&mut self) {
        self.end = None;
        self.span = PAGE;
    }

    /// Messages signed with `fingerprint` now carry `trust` (the badge
    /// follows what the user decided about that key).
    pub fn retrust(&mut self, fingerprint: Fingerprint, trust: TrustLevel) {
        for (_, entry) in &mut self.entries {
            if let Entry::Message(message) = entry
                && !message.outgoing
                && message.fingerprint == fingerprint
            {
                message.trust = trust;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_client::session::Chat;

    fn message(anchor: u64, rank: u32, seq: u64) -> Message {
        Message {
            chat: Chat::Room("lobby".parse().unwrap()),
            from: "bob".parse().unwrap(),
            fingerprint: Fingerprint([1; 32]),
            trust: TrustLevel::Unverified,
            outgoing: false,
            seq,
            sent_at_ms: 0,
            received_at_ms: 0,
            late: rank != 1 << 31,
            position: (anchor, rank),
            text: format!("m{seq}"),
            delivery: None,
            expires_at_ms: None,
            file: None,
        }
    }

    fn texts(timeline: &Timeline) -> Vec<String> {
        timeline
            .visible()
            .map(|entry| match entry {
                Entry::Message(m) => m.text.clone(),
                Entry::Notice(n) => n.text.clone(),
            })
            .collect()
    }

    #[test]
    fn disappeared_messages_leave_the_timeline_and_the_rest_stays_in_order() {
        let mut timeline = Timeline::new();
        for seq in 1..=4 {
            timeline.push_message(message(seq, 1 << 31, seq));
        }
        let gone: Vec<MessageId> = [2, 4]
            .iter()
            .map(|seq| message(*seq, 0, *seq).id())
            .collect();
        assert_eq!(timeline.remove_messages(&gone), 2);
        assert_eq!(texts(&timeline), ["m1", "m3"]);
        assert_eq!(timeline.remove_messages(&gone), 0);
    }

    #[test]
    fn late_messages_go_to_their_place_and_notices_after_what_was_known() {
        let mut timeline = Timeline::new();
        assert!(timeline.push_message(message(1, 1 << 31, 1)));
        timeline.push_notice((1, 1 << 31), Tone::Info, "carol joined".into(), 0);
        assert!(timeline.push_message(message(2, 1 << 31, 3)));
        // Message 2 arrives late: before message 3, after the notice.
        assert!(timeline.push_message(message(2, (1 << 31) - 1, 2)));
        assert!(!timeline.push_message(message(2, (1 << 31) - 1, 2)));
        assert_eq!(texts(&timeline), ["m1", "carol joined", "m2", "m3"]);
    }

    #[test]
    fn a_hundred_thousand_messages_show_a_bounded_window_that_pages() {
        let mut timeline = Timeline::new();
        timeline.extend_messages((1..=100_000).map(|i| message(i, 1 << 31, i)).collect());
        assert_eq!(timeline.len(), 100_000);
        assert_eq!(timeline.visible().count(), PAGE);
        assert_eq!(texts(&timeline).last().unwrap(), "m100000");
        for _ in 0..10 {
            timeline.older();
            assert!(timeline.visible().count() <= WINDOW);
        }
        assert!(!timeline.is_following());
        let first = texts(&timeline)[0].clone();
        // New messages arriving do not move a window in the past.
        timeline.push_message(message(100_001, 1 << 31, 100_001));
        assert_eq!(texts(&timeline)[0], first);
        while !timeline.is_following() {
            timeline.newer();
        }
        assert_eq!(texts(&timeline).last().unwrap(), "m100001");
        // All the way back to the first message.
        while timeline.has_older() {
            timeline.older();
        }
        assert_eq!(texts(&timeline)[0], "m1");
        timeline.follow();
        assert_eq!(timeline.visible().count(), PAGE);
    }

    #[test]
    fn a_delivery_change_finds_its_message_by_id_among_a_hundred_thousand() {
        use sotto_client::session::{Delivery, DeliveryState};
        let mut timeline = Timeline::new();
        let mine = |seq: u64, anchor: u64| Message {
            from: "alice".parse().unwrap(),
            fingerprint: Fingerprint([9; 32]),
            outgoing: true,
            delivery: Some(Delivery::default()),
            expires_at_ms: None,
            file: None,
            ..message(anchor, 1 << 31, seq)
        };
        let mut history: Vec<Message> = (1..=100_000).map(|i| message(i, 1 << 31, i)).collect();
        // One of alice's, with bob's number 500 at the same position.
        history.push(mine(500, 500));
        timeline.extend_messages(history);
        timeline.push_message(mine(501, 100_001));
        let sent = Delivery {
            state: DeliveryState::Sent,
            ..Delivery::default()
        };
        let id = |seq| MessageId {
            sender: Fingerprint([9; 32]),
            seq,
        };
        assert!(timeline.set_delivery(id(500), sent.clone()));
        assert!(timeline.set_delivery(id(501), sent.clone()));
        // Nobody's message (bob's ids are not indexed: his have none).
        assert!(!timeline.set_delivery(id(502), sent.clone()));
        let bobs = MessageId {
            sender: Fingerprint([1; 32]),
            seq: 500,
        };
        assert!(!timeline.set_delivery(bobs, sent.clone()));
        let states: Vec<(u64, bool)> = timeline
            .entries
            .iter()
            .filter_map(|(_, e)| match e {
                Entry::Message(m) => Some((m.seq, m.outgoing)),
                Entry::Notice(_) => None,
            })
            .filter(|(seq, _)| *seq == 500 || *seq == 501)
            .collect();
        assert_eq!(states.len(), 4, "bob's and alice's: {states:?}");
        for (_, entry) in &timeline.entries {
            if let Entry::Message(m) = entry {
                let expected = if m.outgoing { Some(&sent) } else { None };
                assert_eq!(m.delivery.as_ref(), expected, "{}", m.seq);
            }
        }
    }
}
