//! Small pieces of look shared by the screens: trust badges, fonts, times.

use iced::widget::{container, text};
use iced::{Border, Element, Font, Theme, font};

use crate::session::TrustLevel;

/// The bold variant of the default font.
pub(crate) const BOLD: Font = Font {
    weight: font::Weight::Bold,
    ..Font::DEFAULT
};

/// A monospaced font, for fingerprints and safety numbers.
pub(crate) const MONO: Font = Font::MONOSPACE;

/// The word shown in a trust badge.
pub(crate) fn trust_label(trust: TrustLevel) -> &'static str {
    match trust {
        TrustLevel::Verified => "verified",
        TrustLevel::Unverified => "unverified",
        TrustLevel::Changed => "KEY CHANGED",
        TrustLevel::Unknown => "no key",
    }
}

/// A pill with the trust level, coloured by how far it can be relied on.
pub(crate) fn badge<'a, M: 'a>(trust: TrustLevel) -> Element<'a, M> {
    container(text(trust_label(trust)).size(11))
        .padding([1, 6])
        .style(move |theme: &Theme| {
            let palette = theme.extended_palette();
            let pair = match trust {
                TrustLevel::Verified => palette.success.base,
                TrustLevel::Changed => palette.danger.base,
                TrustLevel::Unverified | TrustLevel::Unknown => palette.background.strong,
            };
            container::Style {
                background: Some(pair.color.into()),
                text_color: Some(pair.text),
                border: Border::default().rounded(8),
                ..container::Style::default()
            }
        })
        .into()
}

/// A small count pill (unread messages).
pub(crate) fn count<'a, M: 'a>(n: usize) -> Element<'a, M> {
    container(text(n.to_string()).size(11))
        .padding([1, 6])
        .style(|theme: &Theme| {
            let pair = theme.extended_palette().primary.base;
            container::Style {
                background: Some(pair.color.into()),
                text_color: Some(pair.text),
                border: Border::default().rounded(8),
                ..container::Style::default()
            }
        })
        .into()
}

/// HH:MM (UTC) of a time in ms since the Unix epoch.
pub(crate) fn clock(ms: u64) -> String {
    let minutes = ms / 60_000;
    format!("{:02}:{:02}", (minutes / 60) % 24, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks() {
        assert_eq!(clock(0), "00:00");
        assert_eq!(clock((13 * 60 + 7) * 60_000 + 59_999), "13:07");
    }
}
