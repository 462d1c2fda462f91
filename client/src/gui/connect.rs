//! Connect: paste a relay address, see the certificate it pins, pick a
//! saved relay.

use iced::widget::{button, column, container, row, scrollable, text, text_input};
use iced::{Element, Fill};
use sotto_proto::{RelayAddress, fingerprint_text};

use super::style::{BOLD, MONO};
use crate::account::Account;
use crate::servers::{KnownServers, SERVERS_FILE, ServerChanged};

/// The widget ids, for tests and focus.
pub mod ids {
    /// The address field.
    pub const ADDRESS: &str = "connect-address";
}

/// The connect screen.
#[derive(Debug)]
pub struct Connect {
    account: Account,
    known: Option<KnownServers>,
    /// Why the saved relays could not be read, if they could not.
    known_error: Option<String>,
    address: String,
    /// Why the last session ended, shown above the form.
    ended: Option<String>,
}

/// What the connect screen does.
#[derive(Clone, Debug)]
pub enum Message {
    /// The address field changed.
    Address(String),
    /// A saved relay was picked.
    Pick(String),
    /// Connect to the address in the field.
    Connect,
    /// Open the settings.
    Settings,
}

/// What the app should do next.
#[derive(Debug)]
pub enum Action {
    /// Nothing more.
    None,
    /// Start a session with this relay.
    Connect {
        /// Who.
        account: Account,
        /// The relay.
        relay: RelayAddress,
        /// Whether it was connected to before (it is in the saved relays).
        known: bool,
    },
    /// Open the settings.
    Settings,
}

/// What the address field holds.
enum Parsed {
    Empty,
    Invalid(String),
    Changed(ServerChanged),
    Valid { address: RelayAddress, saved: bool },
}

impl Connect {
    /// The screen for `account`; `ended` says why the last session ended,
    /// `address` is the address to show in the field (by default the first
    /// saved relay's).
    pub fn new(account: Account, ended: Option<String>, address: Option<String>) -> Self {
        // A small read; the file is written only by the session's thread.
        let (known, known_error) =
            match KnownServers::load(account.profile().dir().join(SERVERS_FILE)) {
                Ok(known) => (Some(known), None),
                Err(e) => (None, Some(format!("cannot read the saved relays: {e}"))),
            };
        let address = address
            .or_else(|| {
                known
                    .as_ref()
                    .and_then(|known| known.iter().next())
                    .map(ToString::to_string)
            })
            .unwrap_or_default();
        Self {
            account,
            known,
            known_error,
            address,
            ended,
        }
    }

    fn parsed(&self) -> Parsed {
        let input = self.address.trim();
        if input.is_empty() {
            return Parsed::Empty;
        }
        let address: RelayAddress = match input.parse() {
            Ok(address) => address,
            Err(e) => return Parsed::Invalid(e.to_string()),
        };
        let Some(known) = &self.known else {
            return Parsed::Valid {
                address,
                saved: false,
            };
        };
        if let Err(changed) = known.check(&address) {
            return Parsed::Changed(changed);
        }
        let saved = known.iter().any(|k| *k == address);
        Parsed::Valid { address, saved }
    }

    /// Handles a message.
    pub fn update(&mut self, message: Message) -> Action {
        match message {
            Message::Address(address) | Message::Pick(address) => {
                self.address = address;
                Action::None
            }
            Message::Settings => Action::Settings,
            Message::Connect => match self.parsed() {
                Parsed::Valid { address, saved } => Action::Connect {
                    account: self.account.clone(),
                    relay: address,
                    known: saved,
                },
                _ => Action::None,
            },
        }
    }

    /// The screen.
    pub fn view(&self) -> Element<'_, Message> {
        let me = self.account.identity().fingerprint().to_string();
        let header = column![
            row![
                text(format!("Signed in as {}", self.account.name())).size(16),
                iced::widget::space().width(Fill),
                button("Settings")
                    .style(button::secondary)
                    .on_press(Message::Settings),
            ],
            text(format!("Your key fingerprint: {me}"))
                .font(MONO)
                .size(12)
                .style(text::secondary),
        ]
        .spacing(4);

        let parsed = self.parsed();
        let ready = matches!(parsed, Parsed::Valid { .. });
        let mut form = column![
            text("Connect to a relay").size(30),
            text(
                "Paste the address your relay's operator gave you (the relay prints it \
                 when it starts). It looks like sotto://FINGERPRINT@host:port."
            ),
            text_input("sotto://…@host:port", &self.address)
                .id(ids::ADDRESS)
                .on_input(Message::Address)
                .on_submit_maybe(ready.then_some(Message::Connect))
                .padding(10),
        ]
        .spacing(12);
        form = form.push(match parsed {
            Parsed::Empty => Element::from(text(" ")),
            Parsed::Invalid(e) => text(format!("Not a relay address: {e}"))
                .style(text::danger)
                .into(),
            Parsed::Changed(changed) => text(format!(
                "Refusing to connect. {changed}. Someone may be impersonating the relay; ask its \
                 operator. To accept the new certificate, remove the old line from {}.",
                self.account.profile().dir().join(SERVERS_FILE).display()
            ))
            .style(text::danger)
            .into(),
            Parsed::Valid { address, saved } => pin_card(&address, saved),
        });
        form = form.push(
            button(text("Connect"))
                .padding([8, 16])
                .style(button::primary)
                .on_press_maybe(ready.then_some(Message::Connect)),
        );
        if let Some(ended) = &self.ended {
            form = form.push(text(crate::safe_text::multiline(ended)).style(text::danger));
        }
        let mut saved = column![text("Saved relays").font(BOLD)].spacing(6);
        match (&self.known, &self.known_error) {
            (_, Some(error)) => saved = saved.push(text(error).style(text::danger)),
            (Some(known), None) if known.iter().next().is_some() => {
                for address in known.iter() {
                    let line = address.to_string();
                    saved = saved.push(
                        button(
                            column![
                                text(address.authority()),
                                text(fingerprint_text(&address.fingerprint))
                                    .font(MONO)
                                    .size(11),
                            ]
                            .spacing(2),
                        )
                        .width(Fill)
                        .style(button::secondary)
                        .on_press(Message::Pick(line)),
                    );
                }
            }
            _ => {
                saved = saved.push(
                    text("None yet: relays are saved on the first connection.")
                        .size(13)
                        .style(text::secondary),
                );
            }
        }
        let content = column![header, form, saved].spacing(28).max_width(640);
        container(scrollable(container(content).padding(40).center_x(Fill)))
            .center_y(Fill)
            .into()
    }
}

/// What the address pins, and what pinning means.
fn pin_card<'a>(address: &RelayAddress, saved: bool) -> Element<'a, Message> {
    let status = if saved {
        "You have connected to this relay before with this certificate."
    } else {
        "First connection to this relay: sotto will remember this certificate for it."
    };
    container(
        column![
            text(format!("Relay {}", address.authority())).font(BOLD),
            text("Certificate fingerprint (SHA-256):").size(13),
            text(fingerprint_text(&address.fingerprint))
                .font(MONO)
                .size(13),
            text(status).size(13),
            text(
                "sotto only talks to a relay presenting exactly this certificate. If the \
                 relay's certificate ever differs, sotto refuses to connect rather than \
                 trust it. The relay only forwards encrypted messages: it cannot read them, \
                 and your contacts' keys are checked separately, by safety number."
            )
            .size(13)
            .style(text::secondary),
        ]
        .spacing(6),
    )
    .padding(14)
    .width(Fill)
    .style(container::bordered_box)
    .into()
}
