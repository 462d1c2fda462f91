//! Connect: paste a relay address, see the key it pins, pick a saved
//! relay, and (only on purpose, after a clear warning) replace a saved
//! relay's key.

use iced::widget::{button, column, container, row, scrollable, text, text_input};
use iced::{Element, Fill};
use sotto_proto::{RelayAddress, fingerprint_text};

use crate::style::{BOLD, MONO};
use sotto_client::account::Account;
use sotto_client::servers::{KnownServers, PIN_LOG_FILE, SERVERS_FILE, ServerChanged};

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
    /// The user asked to replace a saved relay's key with the one the
    /// address pins, and has not confirmed yet.
    confirming: bool,
    /// What the last replacement did (or why it failed).
    replaced: Option<Result<String, String>>,
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
    /// Start replacing the saved key of the address's relay (asks again).
    ReplacePin,
    /// Replace it: the user confirmed.
    ConfirmReplacePin,
    /// Keep the saved key.
    CancelReplacePin,
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
    Valid {
        address: RelayAddress,
        saved: bool,
        /// The key this relay moved to by a signed hand-over, when the
        /// address still names the key it moved from.
        moved_to: Option<[u8; 32]>,
    },
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
            confirming: false,
            replaced: None,
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
                moved_to: None,
            };
        };
        match known.resolve(&address) {
            Err(changed) => Parsed::Changed(changed),
            Ok(resolved) => Parsed::Valid {
                saved: known.get(&address).is_some(),
                moved_to: (resolved.fingerprint != address.fingerprint)
                    .then_some(resolved.fingerprint),
                address,
            },
        }
    }

    /// Replaces the saved key of the address's relay with the one the
    /// address pins: only after [`Message::ReplacePin`] and
    /// [`Message::ConfirmReplacePin`]. A small write, like the read in
    /// [`Connect::new`]: no session runs while this screen is shown.
    fn replace_pin(&mut self) {
        self.confirming = false;
        let Parsed::Changed(changed) = self.parsed() else {
            return;
        };
        let (Some(known), Ok(address)) = (&mut self.known, self.address.trim().parse()) else {
            return;
        };
        self.replaced = Some(match known.replace(&address) {
            Ok(replaced) => Ok(format!(
                "The saved key of {} is now {} (it was {}). The change is recorded in {}.",
                replaced.authority,
                fingerprint_text(&replaced.new),
                fingerprint_text(&changed.pinned),
                known.log_path().display()
            )),
            Err(e) => Err(format!("Could not replace the saved key: {e}")),
        });
    }

    /// Handles a message.
    pub fn update(&mut self, message: Message) -> Action {
        match message {
            Message::Address(address) | Message::Pick(address) => {
                self.address = address;
                self.confirming = false;
                self.replaced = None;
                Action::None
            }
            Message::Settings => Action::Settings,
            Message::ReplacePin => {
                self.confirming = matches!(self.parsed(), Parsed::Changed(_));
                Action::None
            }
            Message::CancelReplacePin => {
                self.confirming = false;
                Action::None
            }
            Message::ConfirmReplacePin => {
                if self.confirming {
                    self.replace_pin();
                }
                Action::None
            }
            Message::Connect => match self.parsed() {
                Parsed::Valid { address, saved, .. } => Action::Connect {
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
            Parsed::Changed(changed) => changed_card(&changed, self.confirming),
            Parsed::Valid {
                address,
                saved,
                moved_to,
            } => pin_card(&address, saved, moved_to),
        });
        match &self.replaced {
            Some(Ok(done)) => form = form.push(text(done.clone()).style(text::success)),
            Some(Err(e)) => form = form.push(text(e.clone()).style(text::danger)),
            None => {}
        }
        form = form.push(
            button(text("Connect"))
                .padding([8, 16])
                .style(button::primary)
                .on_press_maybe(ready.then_some(Message::Connect)),
        );
        if let Some(ended) = &self.ended {
            form = form.push(text(sotto_client::safe_text::multiline(ended)).style(text::danger));
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

/// The refusal of an address whose key differs from the saved one, and
/// the explicit, twice-asked way to replace the saved key.
fn changed_card<'a>(changed: &ServerChanged, confirming: bool) -> Element<'a, Message> {
    let mut card = column![
        text("Refusing to connect: this is not the key sotto knows for this relay.")
            .font(BOLD)
            .style(text::danger),
        text(format!("Saved key for {}:", changed.authority)).size(13),
        text(fingerprint_text(&changed.pinned)).font(MONO).size(13),
        text("Key this address pins:").size(13),
        text(fingerprint_text(&changed.offered)).font(MONO).size(13),
        text(
            "Someone may be impersonating the relay. A relay that changes its key \
             properly hands over to the new key with a signature of the old one, and \
             sotto follows that by itself; this address comes with no such hand-over. \
             Ask the relay's operator, over another channel, which key is right."
        )
        .size(13),
    ]
    .spacing(6);
    card = if confirming {
        card.push(
            text(format!(
                "Replace the saved key with {}? Do this only if the operator confirmed this \
                 key to you. The change is recorded in {PIN_LOG_FILE}.",
                fingerprint_text(&changed.offered)
            ))
            .size(13)
            .font(BOLD),
        )
        .push(
            row![
                button(text("Yes, replace the saved key"))
                    .style(button::danger)
                    .on_press(Message::ConfirmReplacePin),
                button(text("Keep the saved key"))
                    .style(button::secondary)
                    .on_press(Message::CancelReplacePin),
            ]
            .spacing(8),
        )
    } else {
        card.push(
            button(text("Replace the saved key…"))
                .style(button::secondary)
                .on_press(Message::ReplacePin),
        )
    };
    container(card)
        .padding(14)
        .width(Fill)
        .style(container::bordered_box)
        .into()
}

/// What the address pins, and what pinning means.
fn pin_card<'a>(
    address: &RelayAddress,
    saved: bool,
    moved_to: Option<[u8; 32]>,
) -> Element<'a, Message> {
    let status = match (saved, moved_to) {
        (_, Some(key)) => format!(
            "This relay moved from this key to {} with a hand-over signed by this key; \
             sotto connects to the new key.",
            fingerprint_text(&key)
        ),
        (true, None) => "You have connected to this relay before with this key.".to_owned(),
        (false, None) => {
            "First connection to this relay: sotto will remember this key for it.".to_owned()
        }
    };
    container(
        column![
            text(format!("Relay {}", address.authority())).font(BOLD),
            text("Key fingerprint (SHA-256 of the relay's public key):").size(13),
            text(fingerprint_text(&address.fingerprint))
                .font(MONO)
                .size(13),
            text(status).size(13),
            text(
                "sotto only talks to a relay holding exactly this key (or a key this one \
                 handed over to by signature). If the relay ever presents another, sotto \
                 refuses to connect rather than trust it. The relay only forwards encrypted \
                 messages: it cannot read them, and your contacts' keys are checked \
                 separately, by safety number."
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
