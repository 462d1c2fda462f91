//! Verifying a peer (safety number and QR code) and deciding about a
//! verified peer's changed key.

use iced::widget::{Column, button, checkbox, column, container, qr_code, row, space, text};
use iced::{Alignment, Color, Element, Fill};
use sotto_crypto::{Fingerprint, SafetyNumber};
use sotto_proto::UserName;

use crate::chat::Message;
use crate::style::{BOLD, MONO, badge};
use sotto_client::account::Account;
use sotto_client::session::TrustLevel;

/// A safety number the session computed, ready to show.
#[derive(Debug)]
pub struct Shown {
    /// The peer.
    pub name: UserName,
    /// The peer's key (for a changed key: the key offered).
    pub fingerprint: Fingerprint,
    /// What to compare.
    pub safety_number: SafetyNumber,
    /// The peer's trust.
    pub trust: TrustLevel,
    /// The QR code of [`SafetyNumber::qr_payload`], made once.
    qr: Option<qr_code::Data>,
}

impl Shown {
    /// Prepares the screen's data (the QR code is encoded here, not in
    /// `view`).
    pub fn new(
        name: UserName,
        fingerprint: Fingerprint,
        safety_number: SafetyNumber,
        trust: TrustLevel,
    ) -> Self {
        let qr = qr_code::Data::new(safety_number.qr_payload()).ok();
        Self {
            name,
            fingerprint,
            safety_number,
            trust,
            qr,
        }
    }
}

/// The side of a QR code's cell, in logical pixels.
const QR_CELL: f32 = 5.0;

/// The QR code, black on white in every theme (scanners look for dark
/// modules on a light ground; light on dark is not read by zbar, for
/// one) and with the four-cell quiet zone the standard asks for (iced
/// draws two: the container adds two more, white).
fn qr<'a>(data: &'a qr_code::Data) -> Element<'a, Message> {
    container(
        qr_code(data)
            .cell_size(QR_CELL)
            .style(|_theme| qr_code::Style {
                cell: Color::BLACK,
                background: Color::WHITE,
            }),
    )
    .padding(2.0 * QR_CELL)
    .style(|_theme| container::Style {
        background: Some(Color::WHITE.into()),
        ..container::Style::default()
    })
    .into()
}

/// A verified peer's key changed: sending to them is blocked until the
/// user verifies the new key or accepts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChange {
    /// Who.
    pub name: UserName,
    /// The key that was verified.
    pub pinned: Fingerprint,
    /// The key presented now.
    pub offered: Fingerprint,
}

/// The verification screen for `name`; `shown` is `None` until the
/// session answers.
pub fn view<'a>(
    shown: Option<&'a Shown>,
    name: &'a UserName,
    account: &'a Account,
) -> Element<'a, Message> {
    let close = button("Close")
        .style(button::secondary)
        .on_press(Message::CloseVerify);
    let Some(shown) = shown else {
        return container(
            column![
                text(format!("Verify {name}")).size(28),
                text("Computing the safety number… (the relay is asked for their key if it is not known yet)"),
                close,
            ]
            .spacing(16),
        )
        .padding(32)
        .width(Fill)
        .into();
    };
    let mut groups = Column::new().spacing(6);
    for line in shown.safety_number.groups().chunks(4) {
        groups = groups.push(text(line.join("  ")).font(MONO).size(26));
    }
    let qr: Element<'a, Message> = match &shown.qr {
        Some(data) => qr(data),
        None => text("(no QR code)").into(),
    };
    let verified = shown.trust == TrustLevel::Verified;
    let action: Element<'a, Message> = if verified {
        text(format!("{} is verified.", shown.name))
            .style(text::success)
            .into()
    } else {
        button(text("Mark as verified"))
            .padding([8, 16])
            .style(button::success)
            .on_press(Message::MarkVerified(shown.name.clone()))
            .into()
    };
    let explanation = if shown.trust == TrustLevel::Changed {
        format!(
            "This is the safety number with {}'s NEW key. Compare it with them before you trust it.",
            shown.name
        )
    } else {
        format!(
            "Compare these numbers with {0} in person or on a call you trust: their sotto shows \
             the same twelve groups on its verification screen for you. The QR code holds both \
             keys' fingerprints: text scanned from it can be checked with /verify {0} TEXT. If \
             everything matches, nobody (not even the relay) stands between you.",
            shown.name
        )
    };
    let content = column![
        row![
            text(format!("Verify {}", shown.name)).size(28),
            badge(shown.trust),
            space().width(Fill),
            close
        ]
        .spacing(12)
        .align_y(Alignment::Center),
        text(explanation),
        row![
            column![text("Your safety number").font(BOLD), groups].spacing(10),
            space().width(Fill),
            qr,
        ]
        .align_y(Alignment::Center),
        action,
        column![
            text(format!("{}'s key fingerprint", shown.name)).size(12),
            text(shown.fingerprint.to_string()).font(MONO).size(12),
            text("Your key fingerprint").size(12),
            text(account.identity().fingerprint().to_string())
                .font(MONO)
                .size(12),
        ]
        .spacing(4),
    ]
    .spacing(20)
    .max_width(760);
    container(content).padding(32).width(Fill).into()
}

/// The banner of a verified peer's changed key: in their direct
/// conversation (`full`: both keys, and the composer is gone) and in
/// each room shared with them (what it means there: they are left out of
/// what the user writes). It goes once the user decided.
pub fn key_change(change: &KeyChange, consent: bool, full: bool) -> Element<'_, Message> {
    let name = change.name.as_str();
    let what = if full {
        format!(
            "You verified {name}, but the relay now presents another key under that name. \
             It may be that {name} reinstalled sotto or moved to a new computer, or that \
             someone is trying to impersonate them. Until you decide, nothing you write is \
             sent to {name}, and their messages under the new key are held unread. \
             Best: ask {name}, in person or on a call, to compare the new safety number with you."
        )
    } else {
        format!(
            "Until you decide, what you write here is not sent to {name}, and their \
             messages under the new key are held unread."
        )
    };
    let mut content = column![
        text(format!("{name}'s key has changed"))
            .size(if full { 22 } else { 16 })
            .font(BOLD)
            .style(text::danger),
        text(what),
    ]
    .spacing(10);
    if full {
        content = content.push(
            column![
                text("Verified key").size(12),
                text(change.pinned.to_string()).font(MONO).size(12),
                text("New key").size(12),
                text(change.offered.to_string()).font(MONO).size(12),
            ]
            .spacing(4),
        );
    }
    let accept = button(text("Accept the new key without verifying"))
        .padding([6, 12])
        .style(button::danger)
        .on_press_maybe(consent.then(|| Message::AcceptKey(change.name.clone())));
    let decided = change.name.clone();
    content = content.push(
        row![
            button(text("Verify the new key"))
                .padding([6, 12])
                .style(button::primary)
                .on_press(Message::Verify(change.name.clone())),
            checkbox(consent)
                .label(format!(
                    "I understand that I have not verified {name}'s new key"
                ))
                .on_toggle(move |ticked| Message::Consent(decided.clone(), ticked)),
            accept,
        ]
        .spacing(12)
        .align_y(Alignment::Center)
        .wrap(),
    );
    container(content)
        .padding(14)
        .width(Fill)
        .style(|theme: &iced::Theme| {
            let palette = theme.extended_palette();
            container::Style {
                border: iced::Border {
                    color: palette.danger.base.color,
                    width: 2.0,
                    radius: 6.0.into(),
                },
                ..container::rounded_box(theme)
            }
        })
        .into()
}
