//! Interactive mode: how far your messages got, on append-only lines.
//!
//! A line once printed cannot change, so a message's state is said twice
//! at most in kind: as a mark at the end of its own line when it is
//! printed (` (pending)`, ` (delivered)`, ...; no mark while it is being
//! sent over a live connection, the normal case), then as a short notice
//! when it changes in a way that matters, naming the message by the time
//! on its line and its first words (`your message of 15:00:01 "see you
//! at…"`). The notices, and the quiet policy that keeps a big room from
//! printing one line per receipt (docs/cli.md section 7.1):
//!
//! - delivered to everyone it was sealed for: once per message
//!   (`* @bob: delivered: ...`, `* #lobby: delivered to all 3 (...)`);
//! - delivered to some only: once per message, [`COALESCE`] after its
//!   first receipt if not everyone has it by then (`delivered to 2 of 5`);
//! - not sent (the relay refused it), and members the relay will not
//!   keep it for: once each, at once (`!` lines);
//! - not yet accepted by the relay when the connection is lost: one line
//!   per conversation for the messages it concerns, and once the relay
//!   has accepted them (after reconnecting), one line per conversation
//!   [`COALESCE`] later, unless each was delivered meanwhile;
//! - nothing for "sent" otherwise, nor for messages not shown in this run.
//!
//! The messages tracked are those printed in this run (sent here, or in
//! the history shown at start): the newest [`TRACKED`] of them, by their
//! conversation and id, with the time and first words shown; an update
//! for an older one is not said (`--json` has every change).
//!
//! Lines typed while the session cannot send them at once (no connection,
//! or a direct message to someone whose key is still to be looked up) are
//! printed at once with ` (pending)`: the session's own report of the
//! message, when it is sealed, is then not printed again (matched by
//! conversation and text, the oldest first; at most [`TRACKED`] wait),
//! and a problem the session reports as leaving it unsent
//! (`Answers::Sends`: a user the relay does not know, say) is said as a
//! notice naming it.
//!
//! Every text here went through [`sotto_client::safe_text`]; every line
//! starts with `*` or `!`, so none can be taken for a message.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sotto_client::safe_text;
use sotto_client::session::{Answers, Chat, Delivery, DeliveryState, Message, MessageId, Problem};
use sotto_client::ui::words;
use sotto_proto::UserName;

/// Sent messages whose state changes are said (the newest).
pub(crate) const TRACKED: usize = 256;

/// How long after a room message's first receipt "delivered to N of M" is
/// said if not everyone has it by then; also how long "accepted by the
/// relay" lines wait to gather the messages accepted together.
pub(crate) const COALESCE: Duration = Duration::from_secs(3);

/// The characters of a message's first line that name it in a notice.
const SNIPPET_CHARS: usize = 24;

/// Names listed in a notice; beyond, only counted.
const NAMES: usize = 5;

/// What is known and said of one message of this user's.
#[derive(Debug)]
struct Tracked {
    chat: Chat,
    id: MessageId,
    /// The time on its line (ms since the Unix epoch).
    at_ms: u64,
    /// Its first words, safe.
    snippet: String,
    /// Its delivery as last reported.
    delivery: Delivery,
    /// "Not yet accepted by the relay" was said (its mark, or the line
    /// when the connection was lost).
    said_pending: bool,
    /// Accepted after `said_pending`, not said yet.
    accepted_unsaid: bool,
    said_partial: bool,
    said_all: bool,
    said_failed: bool,
    /// Those said not to get it.
    said_refused: Vec<UserName>,
    /// When to say "delivered to N of M".
    partial_due: Option<Instant>,
}

/// A line printed when typed, waiting for the session's report of it.
#[derive(Debug)]
struct Typed {
    chat: Chat,
    text: String,
    at_ms: u64,
}

/// The delivery state of this user's messages, as said so far.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    tracked: VecDeque<Tracked>,
    typed: VecDeque<Typed>,
    /// When to say which pending messages the relay accepted.
    accepted_due: Option<Instant>,
}

/// The recipients whose receipt came, and those still waiting (neither
/// delivered nor refused).
fn split(delivery: &Delivery) -> (Vec<&UserName>, Vec<&UserName>) {
    let reached = words::reached(delivery);
    (reached.got, reached.waiting)
}

fn everyone_has_it(delivery: &Delivery) -> bool {
    words::reached(delivery).everyone()
}

/// `a, b and c` (names safe), at most [`NAMES`], then `and N others`.
fn names(names: &[&UserName]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(NAMES)
        .map(|n| safe_text::inline(n.as_str()).to_string())
        .collect();
    let more = names.len() - shown.len();
    match (shown.split_last(), more) {
        (None, _) => String::new(),
        (Some((last, [])), 0) => last.clone(),
        (Some((last, first)), 0) => format!("{} and {last}", first.join(", ")),
        (_, 1) => format!("{} and 1 other", shown.join(", ")),
        (_, more) => format!("{} and {more} others", shown.join(", ")),
    }
}

/// A message's first words, safe, in quotes: at most [`SNIPPET_CHARS`]
/// characters of its first line, `…` when cut.
pub(crate) fn snippet(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    let cut: String = first.chars().take(SNIPPET_CHARS).collect();
    let more = cut.len() < text.trim_end().len();
    format!(
        "\"{}{}\"",
        safe_text::inline(&cut),
        if more { "…" } else { "" }
    )
}

/// The mark at the end of a message of yours when it is printed: `live`
/// for one sent in this run (then "pending" over a live connection and
/// "sent" go without a mark: being sent is the normal case).
pub(crate) fn mark(delivery: &Delivery, live: bool, connected: bool) -> Option<String> {
    if let DeliveryState::Failed(why) = &delivery.state {
        return Some(format!("(not sent: {})", safe_text::inline(&why.message)));
    }
    let (got, _) = split(delivery);
    if !got.is_empty() {
        if got.len() == delivery.recipients.len() {
            return Some("(delivered)".to_owned());
        }
        return Some(format!(
            "(delivered to {} of {})",
            got.len(),
            delivery.recipients.len()
        ));
    }
    match delivery.state {
        DeliveryState::Pending if !live || !connected => Some("(pending)".to_owned()),
        DeliveryState::Sent if !live => Some("(sent)".to_owned()),
        _ => None,
    }
}

/// `your message of 15:00:01 "hi"`, or for several `3 messages, 15:00:01
/// "a" to 15:00:09 "c"`.
fn which(messages: &[&Tracked]) -> String {
    match messages {
        [] => String::new(),
        [one] => format!(
            "your message of {} {}",
            super::text::clock(one.at_ms),
            one.snippet
        ),
        [first, .., last] => format!(
            "{} messages, {} {} to {} {}",
            messages.len(),
            super::text::clock(first.at_ms),
            first.snippet,
            super::text::clock(last.at_ms),
            last.snippet
        ),
    }
}

fn safe_chat(chat: &Chat) -> String {
    safe_text::inline(&chat.to_string()).to_string()
}

/// The lines for `tracked`'s change to `delivery`, at `now`.
fn changed(tracked: &mut Tracked, delivery: &Delivery, now: Instant, out: &mut Vec<String>) {
    let chat = safe_chat(&tracked.chat);
    let was_pending = tracked.delivery.state == DeliveryState::Pending;
    tracked.delivery = delivery.clone();
    if let DeliveryState::Failed(why) = &delivery.state {
        if !tracked.said_failed {
            tracked.said_failed = true;
            tracked.accepted_unsaid = false;
            tracked.partial_due = None;
            out.push(format!(
                "! {chat}: not sent: {}: {}",
                which(&[&*tracked]),
                safe_text::inline(&why.message)
            ));
        }
        return;
    }
    // (A receipt can come before the relay's `Sent`: the relay hands a
    // message to a connected recipient before it stores it, protocol.md
    // 9.7. Once everyone has it, "accepted" says nothing more.)
    if was_pending
        && delivery.state == DeliveryState::Sent
        && tracked.said_pending
        && !tracked.said_all
    {
        tracked.accepted_unsaid = true;
    }
    let refused: Vec<&UserName> = delivery
        .refused
        .iter()
        .filter(|r| {
            !delivery.delivered.iter().any(|d| d.same_as(r))
                && !tracked.said_refused.iter().any(|s| s.same_as(r))
        })
        .collect();
    if !refused.is_empty() {
        out.push(format!(
            "! {chat}: {} will not get {}: {}",
            names(&refused),
            which(&[&*tracked]),
            words::NOT_KEPT
        ));
        let refused: Vec<UserName> = refused.into_iter().cloned().collect();
        tracked.said_refused.extend(refused);
    }
    if tracked.said_all {
        return;
    }
    let (got, _) = split(delivery);
    if everyone_has_it(delivery) {
        tracked.said_all = true;
        tracked.partial_due = None;
        tracked.accepted_unsaid = false;
        let to = match (&tracked.chat, got.len()) {
            (Chat::Direct(_), _) => String::new(),
            (Chat::Room(_), 1) => format!(" to {}", names(&got)),
            (Chat::Room(_), n) if n <= NAMES => format!(" to all {n} ({})", names(&got)),
            (Chat::Room(_), n) => format!(" to all {n}"),
        };
        out.push(format!("* {chat}: delivered{to}: {}", which(&[&*tracked])));
    } else if !got.is_empty() && !tracked.said_partial && tracked.partial_due.is_none() {
        tracked.partial_due = Some(now + COALESCE);
    }
}

impl Marks {
    /// A line typed for `chat` printed at once (it waits for the
    /// connection or a key): the session's report of it is not printed
    /// again.
    pub(crate) fn typed(&mut self, chat: Chat, text: String, at_ms: u64) {
        if self.typed.len() >= TRACKED {
            self.typed.pop_front();
        }
        self.typed.push_back(Typed { chat, text, at_ms });
    }

    /// The session's `problem` about lines printed when typed: for each
    /// line it left unsent (`Answers::Sends`: the oldest lines still
    /// waiting in a conversation), a notice naming it, and the line is
    /// not followed any more. Empty if it answers none of them.
    pub(crate) fn not_sent(&mut self, problem: &Problem) -> Vec<String> {
        let mut said = Vec::new();
        for answers in &problem.answers {
            let Answers::Sends { chat, count } = answers else {
                continue;
            };
            for _ in 0..*count {
                let Some(at) = self.typed.iter().position(|t| t.chat == *chat) else {
                    break;
                };
                let Some(typed) = self.typed.remove(at) else {
                    break;
                };
                said.push(format!(
                    "! {}: not sent: your message of {} {}: {}",
                    safe_chat(chat),
                    super::text::clock(typed.at_ms),
                    snippet(&typed.text),
                    safe_text::inline(&problem.message)
                ));
            }
        }
        said
    }

    /// A message of yours the session reports (sent now, or in the history
    /// shown at start): tracked from now on. Returns whether it is to be
    /// printed with `mark`, or was printed already when typed.
    pub(crate) fn sent(
        &mut self,
        message: &Message,
        live: bool,
        connected: bool,
    ) -> Option<Option<String>> {
        let delivery = message.delivery.clone().unwrap_or_default();
        let typed = live
            .then(|| {
                self.typed
                    .iter()
                    .position(|t| t.chat == message.chat && t.text == message.text)
            })
            .flatten()
            .and_then(|at| self.typed.remove(at));
        let shown_mark = mark(&delivery, live, connected);
        let (got, _) = split(&delivery);
        let tracked = Tracked {
            chat: message.chat.clone(),
            id: message.id(),
            at_ms: typed.as_ref().map_or(message.sent_at_ms, |t| t.at_ms),
            snippet: snippet(&message.text),
            said_pending: typed.is_some()
                || (delivery.state == DeliveryState::Pending && shown_mark.is_some()),
            accepted_unsaid: false,
            said_partial: !got.is_empty(),
            said_all: everyone_has_it(&delivery),
            said_failed: matches!(delivery.state, DeliveryState::Failed(_)),
            said_refused: delivery.refused.clone(),
            partial_due: None,
            delivery,
        };
        if self.tracked.len() >= TRACKED {
            self.tracked.pop_front();
        }
        self.tracked.push_back(tracked);
        match typed {
            Some(_) => None,
            None => Some(shown_mark),
        }
    }

    /// A message of yours got further: what to say of it, if anything.
    pub(crate) fn delivery(
        &mut self,
        chat: &Chat,
        id: &MessageId,
        delivery: &Delivery,
        now: Instant,
        out: &mut Vec<String>,
    ) {
        let Some(tracked) = self
            .tracked
            .iter_mut()
            .rev()
            .find(|t| t.id == *id && t.chat == *chat)
        else {
            return;
        };
        changed(tracked, delivery, now, out);
        if tracked.accepted_unsaid && self.accepted_due.is_none() {
            self.accepted_due = Some(now + COALESCE);
        }
    }

    /// The connection was lost: which messages the relay had not accepted
    /// yet (not said before), one line per conversation.
    pub(crate) fn disconnected(&mut self, out: &mut Vec<String>) {
        let mut chats: Vec<Chat> = Vec::new();
        for tracked in &mut self.tracked {
            if tracked.delivery.state == DeliveryState::Pending && !tracked.said_pending {
                tracked.said_pending = true;
                if !chats.contains(&tracked.chat) {
                    chats.push(tracked.chat.clone());
                }
            }
        }
        for chat in chats {
            let these: Vec<&Tracked> = self
                .tracked
                .iter()
                .filter(|t| {
                    t.chat == chat && t.delivery.state == DeliveryState::Pending && t.said_pending
                })
                .collect();
            out.push(format!(
                "! {}: not yet accepted by the relay, kept and sent again once connected: {}",
                safe_chat(&chat),
                which(&these)
            ));
        }
    }

    /// When [`Marks::tick`] has something to say.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.tracked
            .iter()
            .filter_map(|t| t.partial_due)
            .chain(self.accepted_due)
            .min()
    }

    /// Says what was waiting until `now`: "delivered to N of M" for the
    /// room messages whose receipts stopped short of everyone, and which
    /// pending messages the relay accepted.
    pub(crate) fn tick(&mut self, now: Instant, out: &mut Vec<String>) {
        for tracked in &mut self.tracked {
            if tracked.partial_due.is_some_and(|due| due <= now) {
                tracked.partial_due = None;
                tracked.said_partial = true;
                let (got, waiting) = split(&tracked.delivery);
                let mut who = String::new();
                if got.len() <= NAMES {
                    who = names(&got);
                }
                if !waiting.is_empty() && waiting.len() <= NAMES {
                    let not_yet = format!("not yet {}", names(&waiting));
                    who = if who.is_empty() {
                        not_yet
                    } else {
                        format!("{who}; {not_yet}")
                    };
                }
                let who = if who.is_empty() {
                    who
                } else {
                    format!(" ({who})")
                };
                out.push(format!(
                    "* {}: delivered to {} of {}{who}: {}",
                    safe_chat(&tracked.chat),
                    got.len(),
                    tracked.delivery.recipients.len(),
                    which(&[&*tracked])
                ));
            }
        }
        if self.accepted_due.is_some_and(|due| due <= now) {
            self.accepted_due = None;
            let mut chats: Vec<Chat> = Vec::new();
            for tracked in &self.tracked {
                if tracked.accepted_unsaid && !chats.contains(&tracked.chat) {
                    chats.push(tracked.chat.clone());
                }
            }
            for chat in chats {
                let these: Vec<&Tracked> = self
                    .tracked
                    .iter()
                    .filter(|t| t.chat == chat && t.accepted_unsaid)
                    .collect();
                out.push(format!(
                    "* {}: accepted by the relay: {}",
                    safe_chat(&chat),
                    which(&these)
                ));
            }
            for tracked in &mut self.tracked {
                tracked.accepted_unsaid = false;
            }
        }
    }
}
