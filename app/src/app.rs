//! The app: which screen is up, the settings, the window's focus, and the
//! glue between screens.

use std::path::PathBuf;
use std::time::Duration;

use iced::widget::{column, container, text};
use iced::{Element, Fill, Subscription, Task, Theme, event, keyboard, window};
use sotto_crypto::KdfParams;

use crate::chat::{self, Chat};
use crate::connect::{self, Connect};
use crate::onboarding::{self, Onboarding};
use crate::settings::{self, Settings};
use sotto_client::profile::Profile;
use sotto_client::session::Chat as Conversation;

/// How the app starts.
#[derive(Clone, Debug)]
pub struct Options {
    /// The data directory; `None` is the default (XDG data dir).
    pub data_dir: Option<PathBuf>,
    /// The passphrase-hashing costs for new identities.
    pub kdf: KdfParams,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            data_dir: None,
            kdf: KdfParams::DEFAULT,
        }
    }
}

/// The screen on display.
#[derive(Debug)]
enum Screen {
    /// Opening the data directory (off the UI thread: it may be created).
    Starting(KdfParams),
    /// The data directory could not be opened.
    Broken(String),
    Onboarding(Onboarding),
    Connect(Connect),
    Chat(Box<Chat>),
}

/// The app.
#[derive(Debug)]
pub struct App {
    data_dir: Option<PathBuf>,
    settings: Settings,
    settings_open: bool,
    settings_error: Option<String>,
    screen: Screen,
    focused: bool,
    sessions: u64,
    /// The window was asked to close: exit once the session has said
    /// goodbye (or after [`CLOSE_GRACE`]).
    closing: bool,
}

/// Longest wait for the session to end when the window closes. The session
/// itself gives queued messages up to 10 s to leave, then saves its
/// counters and reports what was not sent; the app normally exits as soon
/// as the session's stream ends, well before this.
const CLOSE_GRACE: Duration = Duration::from_secs(15);

/// Everything the app reacts to.
#[derive(Clone, Debug)]
pub enum Message {
    /// The onboarding screen.
    Onboarding(onboarding::Message),
    /// The connect screen.
    Connect(connect::Message),
    /// The chat window.
    Chat(chat::Message),
    /// The settings screen.
    Settings(settings::Message),
    /// The window gained (true) or lost focus.
    Focus(bool),
    /// The window is being closed.
    CloseRequested,
    /// Close now, whatever the session is doing.
    Exit,
    /// Tab: the next field.
    FocusNext,
    /// Shift-Tab: the previous field.
    FocusPrevious,
    /// Escape: close the settings or the verification screen.
    Escape,
    /// The data directory is open (created if needed), with its settings.
    Opened(Result<(Profile, Settings), String>),
}

impl App {
    /// The app as it starts: the data directory is opened (and created if
    /// needed) in the background, then onboarding (create or unlock).
    pub fn new(options: Options) -> (Self, Task<Message>) {
        let app = Self {
            data_dir: None,
            settings: Settings::default(),
            settings_open: false,
            settings_error: None,
            screen: Screen::Starting(options.kdf),
            focused: true,
            sessions: 0,
            closing: false,
        };
        let open = Task::perform(
            async move {
                tokio::task::spawn_blocking(move || {
                    let profile = match options.data_dir {
                        Some(dir) => Profile::open(dir),
                        None => Profile::open_default(),
                    }
                    .map_err(|e| e.to_string())?;
                    let settings = Settings::load(profile.dir());
                    Ok((profile, settings))
                })
                .await
                .map_err(|e| format!("cannot open the data directory: {e}"))
                .and_then(|opened| opened)
            },
            Message::Opened,
        );
        (app, open)
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The chat window, once connected.
    pub fn chat(&self) -> Option<&Chat> {
        match &self.screen {
            Screen::Chat(chat) => Some(chat),
            _ => None,
        }
    }

    /// Which screen is up: "starting", "onboarding", "connect", "chat",
    /// "settings" or "broken" (for tests and logs).
    pub fn screen_name(&self) -> &'static str {
        if self.settings_open {
            return "settings";
        }
        match &self.screen {
            Screen::Starting(_) => "starting",
            Screen::Broken(_) => "broken",
            Screen::Onboarding(_) => "onboarding",
            Screen::Connect(_) => "connect",
            Screen::Chat(_) => "chat",
        }
    }

    /// Handles a message.
    pub fn update(&mut self, message: Message) -> Task<Message> {
        match message {
            Message::Opened(opened) => {
                let Screen::Starting(kdf) = self.screen else {
                    return Task::none();
                };
                match opened {
                    Ok((profile, settings)) => {
                        self.data_dir = Some(profile.dir().to_path_buf());
                        self.settings = settings;
                        let onboarding = Onboarding::new(profile, kdf);
                        let focus = onboarding.first_field();
                        self.screen = Screen::Onboarding(onboarding);
                        focus
                    }
                    Err(e) => {
                        self.screen = Screen::Broken(e);
                        Task::none()
                    }
                }
            }
            Message::Onboarding(message) => {
                let Screen::Onboarding(onboarding) = &mut self.screen else {
                    return Task::none();
                };
                match onboarding.update(message) {
                    onboarding::Action::None => Task::none(),
                    onboarding::Action::Run(task) => task.map(Message::Onboarding),
                    onboarding::Action::Unlocked(account) => {
                        self.screen = Screen::Connect(Connect::new(account, None, None));
                        iced::widget::operation::focus(connect::ids::ADDRESS)
                    }
                }
            }
            Message::Connect(message) => {
                let Screen::Connect(connect) = &mut self.screen else {
                    return Task::none();
                };
                match connect.update(message) {
                    connect::Action::None => Task::none(),
                    connect::Action::Settings => {
                        self.settings_open = true;
                        Task::none()
                    }
                    connect::Action::Connect {
                        account,
                        relay,
                        known,
                    } => {
                        self.sessions += 1;
                        let generation = self.sessions;
                        let mut chat =
                            Chat::connecting(account.clone(), relay.clone(), generation, known);
                        chat.set_focused(self.focused);
                        chat.set_downloads(self.settings.downloads_dir());
                        self.screen = Screen::Chat(Box::new(chat));
                        Task::batch([
                            chat::start(account, relay, generation).map(Message::Chat),
                            iced::widget::operation::focus(chat::ids::COMPOSER),
                        ])
                    }
                }
            }
            Message::Chat(message) => {
                let Screen::Chat(chat) = &mut self.screen else {
                    return Task::none();
                };
                let action = chat.update(message);
                self.on_chat(action)
            }
            Message::Settings(message) => match message {
                settings::Message::Theme(theme) => {
                    self.settings.theme = theme;
                    self.save_settings()
                }
                settings::Message::Notifications(on) => {
                    self.settings.notifications = on;
                    self.save_settings()
                }
                settings::Message::ChooseDownloads => {
                    settings::choose_downloads(self.settings.downloads_dir()).map(Message::Settings)
                }
                settings::Message::Downloads(chosen) => {
                    let Some(dir) = chosen else {
                        return Task::none();
                    };
                    self.settings.downloads = Some(dir.clone());
                    if let Screen::Chat(chat) = &mut self.screen {
                        chat.set_downloads(dir);
                    }
                    self.save_settings()
                }
                settings::Message::Saved(result) => {
                    self.settings_error = result.err();
                    Task::none()
                }
                settings::Message::Close => {
                    self.settings_open = false;
                    Task::none()
                }
            },
            Message::Focus(focused) => {
                self.focused = focused;
                if let Screen::Chat(chat) = &mut self.screen {
                    chat.set_focused(focused);
                }
                Task::none()
            }
            Message::CloseRequested => {
                let Screen::Chat(chat) = &self.screen else {
                    return iced::exit();
                };
                // Let the session send what is queued and say goodbye.
                self.closing = true;
                chat.quit();
                Task::perform(tokio::time::sleep(CLOSE_GRACE), |()| Message::Exit)
            }
            Message::Exit => iced::exit(),
            Message::FocusNext => iced::widget::operation::focus_next(),
            Message::FocusPrevious => iced::widget::operation::focus_previous(),
            Message::Escape => {
                if self.settings_open {
                    self.settings_open = false;
                    Task::none()
                } else {
                    self.update(Message::Chat(chat::Message::Escape))
                }
            }
        }
    }

    /// Does what the chat window asked for.
    fn on_chat(&mut self, action: chat::Action) -> Task<Message> {
        match action {
            chat::Action::None => Task::none(),
            chat::Action::Many(actions) => {
                let mut tasks = Vec::with_capacity(actions.len());
                for action in actions {
                    tasks.push(self.on_chat(action));
                }
                Task::batch(tasks)
            }
            chat::Action::Run(task) => task.map(Message::Chat),
            chat::Action::Settings => {
                self.settings_open = true;
                Task::none()
            }
            chat::Action::Notify { from, chat } => self.notify(from.as_str(), &chat),
            chat::Action::Disconnected {
                account,
                address,
                reason,
            } => {
                if self.closing {
                    return iced::exit();
                }
                // The address stays in the field: to try again, or to
                // correct it.
                self.screen =
                    Screen::Connect(Connect::new(account, reason, Some(address.to_string())));
                iced::widget::operation::focus(connect::ids::ADDRESS)
            }
            chat::Action::Quit => {
                self.closing = true;
                Task::perform(tokio::time::sleep(CLOSE_GRACE), |()| Message::Exit)
            }
        }
    }

    fn save_settings(&self) -> Task<Message> {
        match &self.data_dir {
            Some(dir) => self.settings.save(dir.clone()).map(Message::Settings),
            None => Task::none(),
        }
    }

    /// A desktop notification for a message from `from` in `chat`, when the
    /// window is in the background and notifications are on
    /// ([`notification`] is all it says).
    fn notify(&self, from: &str, chat: &Conversation) -> Task<Message> {
        if self.focused || !self.settings.notifications {
            return Task::none();
        }
        let body = notification(from, chat);
        Task::future(async move {
            // D-Bus calls block: keep them off the UI thread.
            let _ = tokio::task::spawn_blocking(move || {
                notify_rust::Notification::new()
                    .appname("sotto")
                    .summary("sotto")
                    .body(&body)
                    .show()
            })
            .await;
        })
        .discard()
    }

    /// The window title, with the unread count.
    pub fn title(&self) -> String {
        match &self.screen {
            Screen::Chat(chat) => match chat.unread() {
                0 => chat.title(),
                n => format!("({n}) {}", chat.title()),
            },
            _ => "sotto".to_owned(),
        }
    }

    /// The theme.
    pub fn theme(&self) -> Theme {
        self.settings.theme.theme()
    }

    /// Window focus and close events, files dropped, Tab, Shift-Tab and
    /// Escape; ticks for countdowns and progress.
    pub fn subscription(&self) -> Subscription<Message> {
        let window = event::listen_with(|event, _status, _window| match event {
            iced::Event::Window(window::Event::Focused) => Some(Message::Focus(true)),
            iced::Event::Window(window::Event::Unfocused) => Some(Message::Focus(false)),
            // A file dropped on the window is sent to the conversation on
            // screen (one event per file).
            iced::Event::Window(window::Event::FileDropped(path)) => {
                Some(Message::Chat(chat::Message::Dropped(path)))
            }
            _ => None,
        });
        let close = window::close_requests().map(|_| Message::CloseRequested);
        let keys = keyboard::listen().filter_map(|event| match event {
            keyboard::Event::KeyPressed {
                key: keyboard::Key::Named(keyboard::key::Named::Tab),
                modifiers,
                ..
            } => Some(if modifiers.shift() {
                Message::FocusPrevious
            } else {
                Message::FocusNext
            }),
            keyboard::Event::KeyPressed {
                key: keyboard::Key::Named(keyboard::key::Named::Escape),
                ..
            } => Some(Message::Escape),
            // Not taken by a focused widget (the composer passes them on
            // itself): the chat window's shortcuts.
            keyboard::Event::KeyPressed { key, modifiers, .. } => {
                chat::shortcut(&key, modifiers).map(Message::Chat)
            }
            _ => None,
        });
        let ticks = match &self.screen {
            Screen::Onboarding(onboarding) if onboarding.is_busy() => {
                iced::time::every(Duration::from_millis(50))
                    .map(|_| Message::Onboarding(onboarding::Message::Tick))
            }
            Screen::Chat(chat) if chat.needs_ticks() => iced::time::every(Duration::from_secs(1))
                .map(|_| Message::Chat(chat::Message::Tick)),
            _ => Subscription::none(),
        };
        Subscription::batch([window, close, keys, ticks])
    }

    /// The window's content.
    pub fn view(&self) -> Element<'_, Message> {
        if self.settings_open {
            return settings::view(&self.settings, self.settings_error.as_deref())
                .map(Message::Settings);
        }
        match &self.screen {
            Screen::Starting(_) => container(text("Opening your data directory…"))
                .center(Fill)
                .into(),
            Screen::Broken(reason) => container(
                column![
                    text("sotto cannot start").size(28),
                    text(reason.as_str()).style(text::danger),
                ]
                .spacing(12),
            )
            .center(Fill)
            .into(),
            Screen::Onboarding(onboarding) => onboarding.view().map(Message::Onboarding),
            Screen::Connect(connect) => connect.view().map(Message::Connect),
            Screen::Chat(chat) => chat.view().map(Message::Chat),
        }
    }
}

/// The text of the desktop notification for a message from `from` in
/// `chat`: the sender's name and the conversation, never the message's
/// text (a notification is shown outside the app, on the lock screen, and
/// read by other programs). A name is a relay-checked name (ASCII letters,
/// digits, `-`, `_`, `.`), so it carries no control character.
pub fn notification(from: impl AsRef<str>, chat: &Conversation) -> String {
    let from = sotto_client::safe_text::multiline(from.as_ref());
    match chat {
        Conversation::Room(room) => format!("New message from {from} in #{room}"),
        Conversation::Direct(_) => format!("New direct message from {from}"),
    }
}
