//! Drawing the chat window: the sidebar, the header with the connection,
//! the timeline, pending messages, the member list.

use std::time::{Duration, Instant};

use iced::widget::{
    Column, Row, button, checkbox, column, container, pick_list, responsive, row, rule, scrollable,
    space, text, text_editor, text_input,
};
use iced::{Alignment, Element, Fill, Task};
use sotto_proto::RoomName;

use crate::style::{BOLD, MONO, badge, clock, count, day_label, day_of, ellipsis, today};
use crate::timeline::{Entry, Tone};
use crate::verify::{self};
use sotto_client::safe_text::multiline as visible;
use sotto_client::session::{Chat as Conversation, Connection};
use sotto_client::ui::words;

use super::composer::composer_keys;
use super::delivery;
use super::{Chat, Message, Pending, ids};

/// The narrowest window that shows the sidebar beside the conversation.
const SIDEBAR_FITS: f32 = 640.0;
/// The narrowest window that shows a room's member list too.
const MEMBERS_FIT: f32 = 880.0;
/// The sidebar's width.
const SIDEBAR: f32 = 230.0;
/// The member list's width.
const MEMBERS: f32 = 210.0;
/// The narrowest conversation pane whose header holds its controls
/// beside its name.
const CONTROLS_FIT: f32 = 640.0;

impl Chat {
    /// The window's title.
    pub fn title(&self) -> String {
        match self.current() {
            Some(chat) => format!("{chat} · sotto"),
            None => "sotto".to_owned(),
        }
    }

    /// The window.
    pub fn view(&self) -> Element<'_, Message> {
        responsive(move |size| self.layout(size.width)).into()
    }

    /// The window at `width`: the sidebar, the conversation and a room's
    /// member list; a narrower window folds the member list away
    /// (`/members` still lists it), then the sidebar (a header button
    /// shows it again).
    fn layout(&self, width: f32) -> Element<'_, Message> {
        let narrow = width < SIDEBAR_FITS;
        let sidebar = !narrow || self.sidebar_open;
        let members = match &self.selected() {
            Some(Conversation::Room(room)) if self.verifying.is_none() && width >= MEMBERS_FIT => {
                Some(room.clone())
            }
            _ => None,
        };
        let pane = width
            - if sidebar { SIDEBAR } else { 0.0 }
            - if members.is_some() { MEMBERS } else { 0.0 };
        let main = match &self.verifying {
            Some(name) => verify::view(self.shown.get(&name.key()), name, &self.account),
            None => self.conversation(narrow, pane),
        };
        let mut layout = row![];
        if sidebar {
            layout = layout.push(self.sidebar());
        }
        layout = layout.push(main);
        if let Some(room) = members {
            layout = layout.push(self.member_list(&room));
        }
        layout.height(Fill).into()
    }

    fn connection_line(&self) -> Element<'_, Message> {
        // The words are the client library's (`ui::words::connection`,
        // as sotto-cli prints them); the colour is the window's.
        let style: fn(&iced::Theme) -> text::Style = match &self.connection {
            Connection::Connecting => text::secondary,
            Connection::Connected { .. } => text::success,
            Connection::Reconnecting { .. } => text::warning,
            Connection::Failed { .. } => text::danger,
        };
        let left = self.retry_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        });
        let (_, label) = self.view.connection(&self.connection, left);
        let label = text(label).size(13).style(style);
        if matches!(self.connection, Connection::Reconnecting { .. }) {
            row![
                label,
                button(text("Retry now").size(13))
                    .style(button::secondary)
                    .padding([2, 8])
                    .on_press(Message::RetryNow)
            ]
            .spacing(8)
            .align_y(Alignment::Center)
            .into()
        } else {
            label.into()
        }
    }

    fn sidebar(&self) -> Element<'_, Message> {
        let mut rooms = Column::new().spacing(2);
        let mut direct = Column::new().spacing(2);
        // While the finder is open, only what it finds.
        let shown = if self.finder.is_some() {
            self.found()
        } else {
            self.sidebar_order()
        };
        for thread in shown.iter().filter_map(|chat| self.threads.get(chat)) {
            let chat = &thread.chat;
            let selected = self.selected().as_ref() == Some(chat);
            let mut label = row![].spacing(6).align_y(Alignment::Center);
            match chat {
                Conversation::Room(room) => {
                    label = label.push(text(format!("# {}", ellipsis(room.as_str(), 20))));
                }
                Conversation::Direct(user) => {
                    label = label.push(text(ellipsis(user.as_str(), 14)));
                    label = label.push(badge(self.trust_of(user)));
                    if let Some(key) = self.lookalike_key(user, None) {
                        label = label.push(text(key).font(MONO).size(10).style(text::warning));
                    }
                }
            }
            label = label.push(space().width(Fill));
            if thread.unread > 0 {
                label = label.push(count(thread.unread));
            }
            let entry = button(label)
                .width(Fill)
                .style(if selected {
                    button::primary
                } else {
                    button::text
                })
                .on_press(Message::Select(chat.clone()));
            match chat {
                Conversation::Room(_) => rooms = rooms.push(entry),
                Conversation::Direct(_) => direct = direct.push(entry),
            }
        }
        let join = text_input("Join a room…", &self.join_field)
            .id(ids::JOIN)
            .on_input(Message::JoinField)
            .on_submit(Message::Join)
            .padding(6)
            .size(13);
        let mut identity = column![
            text(self.me().as_str()).font(BOLD).size(18),
            text(self.account.identity().fingerprint().to_string())
                .font(MONO)
                .size(10)
                .style(text::secondary),
        ]
        .spacing(8);
        if let Some(wanted) = &self.finder {
            identity = identity.push(
                column![
                    text_input("Go to a conversation…", wanted)
                        .id(ids::FINDER)
                        .on_input(Message::FindField)
                        .on_submit(Message::FindSubmit)
                        .padding(6)
                        .size(13),
                    text(if shown.is_empty() {
                        "No conversation has that name · Esc: close"
                    } else {
                        "Enter: the first found · Esc: close"
                    })
                    .size(11)
                    .style(text::secondary),
                ]
                .spacing(4),
            );
        }
        let content = column![
            identity,
            text("Rooms").size(13).style(text::secondary),
            rooms,
            join,
            text("Direct messages").size(13).style(text::secondary),
            direct,
            space().height(Fill),
            row![
                button(text("Settings").size(13))
                    .style(button::secondary)
                    .on_press(Message::Settings),
                button(text("Disconnect").size(13))
                    .style(button::secondary)
                    .on_press(Message::Disconnect),
            ]
            .spacing(6),
        ]
        .spacing(8);
        container(content)
            .padding(12)
            .width(SIDEBAR)
            .height(Fill)
            .style(container::rounded_box)
            .into()
    }

    /// The conversation's disappearing-message timer: what it is (shown
    /// as a clock and its duration while on) and a list to change it.
    fn timer_control(&self, chat: &Conversation) -> Element<'_, Message> {
        let current = self.view.timer(chat);
        let mut choices: Vec<TimerChoice> =
            TIMER_CHOICES.iter().copied().map(TimerChoice).collect();
        if !choices.contains(&TimerChoice(current)) {
            // Set elsewhere to a value not in the list: shown as it is.
            choices.push(TimerChoice(current));
            choices.sort_unstable();
        }
        let chat = chat.clone();
        let list = pick_list(
            choices,
            Some(TimerChoice(current)),
            move |choice: TimerChoice| Message::Timer(chat.clone(), choice.0),
        )
        .text_size(13);
        let label = if current == 0 {
            text("Disappearing: off").size(13).style(text::secondary)
        } else {
            text(format!("Disappearing: {}", words::duration(current)))
                .size(13)
                .style(text::primary)
        };
        row![label, list]
            .spacing(6)
            .align_y(Alignment::Center)
            .into()
    }

    /// The conversation pane, `width` wide (`narrow`: the sidebar folds).
    fn conversation(&self, narrow: bool, width: f32) -> Element<'_, Message> {
        let (name, controls): (Element<'_, Message>, Row<'_, Message>) = match self.current() {
            Some(Conversation::Room(room)) => {
                let room_ = room.clone();
                let controls = row![
                    self.timer_control(&Conversation::Room(room.clone())),
                    checkbox(self.view.is_verified_only(room))
                        .label("Verified members only")
                        .text_size(13)
                        .on_toggle(move |on| Message::VerifiedOnly(room_.clone(), on)),
                    button(text("Leave").size(13))
                        .style(button::secondary)
                        .on_press(Message::Leave(room.clone())),
                ]
                .spacing(10)
                .align_y(Alignment::Center);
                (text(format!("#{room}")).size(22).into(), controls)
            }
            Some(Conversation::Direct(user)) => {
                let mut name = row![
                    text(format!("@{user}")).size(22),
                    badge(self.trust_of(user))
                ]
                .spacing(10)
                .align_y(Alignment::Center);
                if let Some(key) = self.lookalike_key(user, None) {
                    name = name.push(text(key).font(MONO).size(12).style(text::warning));
                }
                let controls = row![
                    self.timer_control(&Conversation::Direct(user.clone())),
                    button(text("Verify").size(13))
                        .style(button::secondary)
                        .on_press(Message::Verify(user.clone())),
                ]
                .spacing(10)
                .align_y(Alignment::Center);
                (name.into(), controls)
            }
            None => (text("No conversation").size(22).into(), row![]),
        };
        let name: Element<'_, Message> = if narrow {
            // The sidebar is folded away: the way back to it.
            row![
                button(
                    text(if self.sidebar_open {
                        "Hide"
                    } else {
                        "Conversations"
                    })
                    .size(13)
                )
                .style(button::secondary)
                .padding([2, 8])
                .on_press(Message::ToggleSidebar),
                name
            ]
            .spacing(10)
            .align_y(Alignment::Center)
            .into()
        } else {
            name
        };
        // The conversation's controls beside its name while they fit,
        // else on lines of their own.
        let title: Element<'_, Message> = if width >= CONTROLS_FIT {
            row![name, space().width(Fill), controls]
                .spacing(10)
                .align_y(Alignment::Center)
                .into()
        } else {
            column![name, controls.wrap().vertical_spacing(6)]
                .spacing(6)
                .into()
        };
        let mut header = column![title, self.connection_line()].spacing(4);
        // A verified contact's changed key: a banner where it matters,
        // until the user decides; the rest of the app goes on.
        let blocked = self.current().and_then(|chat| self.blocking(chat));
        let banners = match (blocked, self.current()) {
            (Some(change), _) => vec![(change, true)],
            (None, Some(Conversation::Room(room))) => self
                .key_changes_in(room)
                .into_iter()
                .map(|change| (change, false))
                .collect(),
            _ => Vec::new(),
        };
        for (change, full) in banners {
            let consent = self.consents_to(&change.name);
            header = header.push(verify::key_change(change, consent, full));
        }

        let thread = self.selected().and_then(|chat| self.threads.get(&chat));
        let mut lines = Column::new().spacing(6).padding([8, 12]);
        if let Some(thread) = thread {
            if thread.timeline.has_older() {
                lines = lines.push(
                    text("Scroll up for older messages")
                        .size(12)
                        .style(text::secondary),
                );
            }
            // A date above each day's first entry; one header per run of
            // messages from one sender.
            let today = today();
            let mut dated = None;
            let mut previous = None;
            for entry in thread.timeline.visible() {
                let day = day_of(entry_ms(entry));
                if day.is_some() && day > dated {
                    dated = day;
                    if let Some(day) = day {
                        lines = lines.push(date_separator(day_label(day, today)));
                    }
                }
                lines = lines.push(self.entry(entry, continues(previous, entry)));
                previous = Some(entry);
            }
            // What was written here and not reported sent yet comes after
            // everything the session has reported.
            if thread.timeline.is_following() {
                for upload in self.uploads(&thread.chat) {
                    lines = lines.push(upload);
                }
                for pending in &thread.pending {
                    lines = lines.push(self.pending(pending));
                }
            }
        }
        let timeline = scrollable(lines)
            .id(ids::TIMELINE)
            .anchor_bottom()
            .on_scroll(Message::Scrolled)
            .height(Fill)
            .width(Fill);
        // The jump button and the status line come and go inside one
        // column of their own: the composer stays the same child of the
        // body, so it keeps its state (the cursor, the focus) when they do.
        let mut notes = Column::new().spacing(8);
        if thread.is_some_and(|thread| !thread.timeline.is_following()) {
            notes = notes.push(
                button(text("Jump to the newest messages").size(13))
                    .style(button::secondary)
                    .on_press(Message::Newest),
            );
        }
        if let Some((tone, status)) = &self.status {
            notes = notes.push(text(visible(status)).size(13).style(tone_style(*tone)));
        }
        let mut body = column![header, timeline, notes].spacing(8);
        if blocked.is_some() {
            return container(body).padding(12).width(Fill).height(Fill).into();
        }
        let can_send = self.view.context.current.is_some() && self.controller.is_some();
        if let Some(attach) = self.attach_row() {
            body = body.push(attach);
        }
        body = body.push(
            row![
                button(text("Attach"))
                    .padding([10, 12])
                    .style(button::secondary)
                    .on_press(Message::Attach),
                text_editor(&self.composer)
                    .id(ids::COMPOSER)
                    .placeholder("Write a message, or /help (Shift+Enter: new line)")
                    .on_action(Message::Composer)
                    .key_binding(composer_keys)
                    .height(iced::Shrink)
                    .max_height(160)
                    .padding(10),
                button(text("Send"))
                    .padding([10, 16])
                    .style(button::primary)
                    .on_press_maybe(can_send.then_some(Message::Submit)),
            ]
            .spacing(8)
            .align_y(Alignment::End),
        );
        container(body).padding(12).width(Fill).height(Fill).into()
    }

    /// An entry of the timeline; `continued`: a message that goes on a
    /// run of its sender's, shown without their name.
    fn entry<'a>(&'a self, entry: &'a Entry, continued: bool) -> Element<'a, Message> {
        match entry {
            Entry::Message(message) => {
                // The sender, badge and time are widgets of their own, and
                // the text a paragraph of its own with its bidi controls
                // escaped: nothing in it can move them (see `safe`).
                let mut head = row![].spacing(8).align_y(Alignment::Center);
                if !continued {
                    head = head.push(text(message.from.as_str()).font(BOLD));
                }
                if !message.outgoing && !continued {
                    head = head.push(badge(message.trust));
                    if let Some(key) = self.lookalike_key(&message.from, Some(message.fingerprint))
                    {
                        head = head.push(text(key).font(MONO).size(11).style(text::warning));
                    }
                }
                head = head.push(
                    text(clock(message.sent_at_ms))
                        .size(11)
                        .style(text::secondary),
                );
                if let Some(got) = &message.delivery {
                    // How far it got, beside the time (see `delivery`).
                    let (label, look) = delivery::mark(got);
                    head = head.push(delivery::mark_button(
                        label,
                        look,
                        delivery::details(got),
                        Message::Details(message.id()),
                    ));
                }
                if message.late {
                    head = head.push(text("arrived late").size(11).style(text::secondary));
                }
                if let Some(expires) = message.expires_at_ms {
                    head = head.push(
                        text(format!("disappears at {}", clock(expires)))
                            .size(11)
                            .style(text::secondary),
                    );
                }
                let body: Element<'a, Message> = match &message.file {
                    Some(file) => self.file_card(message, file),
                    None => text(visible(&message.text))
                        .wrapping(text::Wrapping::WordOrGlyph)
                        .into(),
                };
                let mut lines = column![head, body].spacing(2);
                if let Some(got) = &message.delivery {
                    for (line, look) in delivery::warnings(got) {
                        lines = lines.push(text(line).size(11).style(delivery::style(look)));
                    }
                    if self
                        .details
                        .as_ref()
                        .is_some_and(|(chat, id)| *id == message.id() && self.is_current(chat))
                    {
                        lines = lines
                            .push(text(delivery::details(got)).size(11).style(text::secondary));
                    }
                }
                // Your own messages on a tint of their own.
                container(lines)
                    .padding([3, 8])
                    .width(Fill)
                    .style(if message.outgoing {
                        own_message
                    } else {
                        container::transparent
                    })
                    .into()
            }
            Entry::Notice(notice) => row![
                text(clock(notice.at_ms)).size(11).style(text::secondary),
                text(visible(&notice.text))
                    .wrapping(text::Wrapping::WordOrGlyph)
                    .size(13)
                    .style(tone_style(notice.tone)),
            ]
            .spacing(8)
            .into(),
        }
    }

    /// A message written here that the session has not reported sent:
    /// greyed, marked pending as a message the relay has not accepted is
    /// (or not sent, with why), with what is known of it.
    fn pending<'a>(&'a self, pending: &'a Pending) -> Element<'a, Message> {
        let (mark, state) = match (&pending.failed, &self.connection) {
            (Some(reason), _) => (
                text(delivery::FAILED).style(text::danger),
                Some(text(format!("not sent: {}", visible(reason))).style(text::danger)),
            ),
            (None, Connection::Connected { .. }) => {
                (text(delivery::PENDING).style(text::secondary), None)
            }
            (None, _) => (
                text(delivery::PENDING).style(text::secondary),
                Some(text("not sent yet: waiting for the connection").style(text::secondary)),
            ),
        };
        let mut head = row![
            text(self.me().as_str()).font(BOLD).style(text::secondary),
            mark.size(11)
        ]
        .spacing(8)
        .align_y(Alignment::Center);
        if let Some(state) = state {
            head = head.push(state.size(11));
        }
        column![
            head,
            text(visible(&pending.text))
                .wrapping(text::Wrapping::WordOrGlyph)
                .style(text::secondary)
        ]
        .spacing(2)
        .into()
    }

    fn member_list(&self, room: &RoomName) -> Element<'_, Message> {
        let members = self.view.members(room);
        let mut list = Column::new().spacing(4);
        for member in members {
            let me = member.name.same_as(self.me());
            let name = if me {
                format!("{} (you)", ellipsis(member.name.as_str(), 12))
            } else {
                ellipsis(member.name.as_str(), 14)
            };
            // An offline member is still a member (what is said waits for
            // it at the relay): dimmed, and marked.
            let name = if member.online {
                text(name)
            } else {
                text(name).style(text::secondary)
            };
            let mut line = row![name].spacing(6).align_y(Alignment::Center);
            if !me {
                line = line.push(badge(member.trust));
            }
            if !member.online {
                line = line.push(text(words::OFFLINE).size(11).style(text::secondary));
            }
            let mut entry = column![line].spacing(2);
            if !me && let Some(key) = self.lookalike_key(&member.name, member.fingerprint) {
                entry = entry.push(text(key).font(MONO).size(10).style(text::warning));
            }
            if !me {
                entry = entry.push(
                    row![
                        button(text("Message").size(11))
                            .padding([2, 6])
                            .style(button::secondary)
                            .on_press(Message::Select(Conversation::Direct(member.name.clone()))),
                        button(text("Verify").size(11))
                            .padding([2, 6])
                            .style(button::secondary)
                            .on_press(Message::Verify(member.name.clone())),
                    ]
                    .spacing(4),
                );
            }
            list = list.push(entry);
        }
        container(
            column![
                text(format!("Members · {}", members.len())).font(BOLD),
                scrollable(list).height(Fill),
            ]
            .spacing(8),
        )
        .padding(12)
        .width(MEMBERS)
        .height(Fill)
        .style(container::rounded_box)
        .into()
    }
}

/// A run of one sender's messages goes on while they come this close.
const RUN_GAP_MS: u64 = 5 * 60 * 1000;

/// When an entry was: a message's sending time (as shown beside it), a
/// notice's.
fn entry_ms(entry: &Entry) -> u64 {
    match entry {
        Entry::Message(message) => message.sent_at_ms,
        Entry::Notice(notice) => notice.at_ms,
    }
}

/// Whether `entry` goes on the run of messages `previous` belongs to: the
/// same sender (key and direction), the same day, within [`RUN_GAP_MS`].
fn continues(previous: Option<&Entry>, entry: &Entry) -> bool {
    let (Some(Entry::Message(before)), Entry::Message(message)) = (previous, entry) else {
        return false;
    };
    before.fingerprint == message.fingerprint
        && before.outgoing == message.outgoing
        && before.from == message.from
        && message.sent_at_ms >= before.sent_at_ms
        && message.sent_at_ms - before.sent_at_ms < RUN_GAP_MS
        && day_of(before.sent_at_ms) == day_of(message.sent_at_ms)
}

/// A day's first entry is under its date, centred between two rules.
fn date_separator<'a>(label: String) -> Element<'a, Message> {
    row![
        rule::horizontal(1),
        text(label).size(12).style(text::secondary),
        rule::horizontal(1)
    ]
    .spacing(10)
    .align_y(Alignment::Center)
    .padding([6, 0])
    .into()
}

/// The tint of your own messages.
fn own_message(theme: &iced::Theme) -> container::Style {
    let pair = theme.extended_palette().background.weak;
    container::Style {
        background: Some(pair.color.into()),
        text_color: Some(pair.text),
        border: iced::Border::default().rounded(6),
        ..container::Style::default()
    }
}

/// Scrolls the timeline to its newest entry. The timeline is anchored at
/// the bottom, so its offsets count from there: the start is the newest.
pub(super) fn to_newest() -> Task<Message> {
    iced::widget::operation::snap_to(ids::TIMELINE, scrollable::RelativeOffset::START)
}

fn tone_style(tone: Tone) -> fn(&iced::Theme) -> text::Style {
    match tone {
        Tone::Info => text::secondary,
        Tone::Warning => text::warning,
        Tone::Danger => text::danger,
    }
}

/// The timers the header offers (seconds; 0: off).
const TIMER_CHOICES: [u64; 7] = [0, 30, 300, 3600, 8 * 3600, 24 * 3600, 7 * 24 * 3600];

/// A choice of disappearing-message timer, shown in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TimerChoice(u64);

impl std::fmt::Display for TimerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&words::duration(self.0))
    }
}
