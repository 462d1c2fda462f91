//! Small pieces of look shared by the screens: trust badges, fonts, times.

use std::sync::OnceLock;

use iced::theme::palette;
use iced::widget::{container, text};
use iced::{Border, Element, Font, Theme, font};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use sotto_client::session::TrustLevel;
use sotto_client::ui::words;

/// The bold variant of the default font.
pub(crate) const BOLD: Font = Font {
    weight: font::Weight::Bold,
    ..Font::DEFAULT
};

/// A monospaced font, for fingerprints and safety numbers.
pub(crate) const MONO: Font = Font::MONOSPACE;

/// A pill with the trust level, coloured by how far it can be relied on.
pub(crate) fn badge<'a, M: 'a>(trust: TrustLevel) -> Element<'a, M> {
    pill(words::trust_label(trust), move |palette| match trust {
        TrustLevel::Verified => palette.success.base,
        TrustLevel::Changed => palette.danger.base,
        TrustLevel::Unverified | TrustLevel::Unknown => palette.background.strong,
    })
}

/// A small count pill (unread messages).
pub(crate) fn count<'a, M: 'a>(n: usize) -> Element<'a, M> {
    pill(n.to_string(), |palette| palette.primary.base)
}

/// Small text on a rounded background of the palette's `pair`.
fn pill<'a, M: 'a>(
    label: impl text::IntoFragment<'a>,
    pair: impl Fn(&palette::Extended) -> palette::Pair + 'a,
) -> Element<'a, M> {
    container(text(label).size(11))
        .padding([1, 6])
        .style(move |theme: &Theme| {
            let pair = pair(theme.extended_palette());
            container::Style {
                background: Some(pair.color.into()),
                text_color: Some(pair.text),
                border: Border::default().rounded(8),
                ..container::Style::default()
            }
        })
        .into()
}

/// HH:MM in the system's time zone (read once) of a time in ms since the
/// Unix epoch.
pub(crate) fn clock(ms: u64) -> String {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    clock_in(ms, ZONE.get_or_init(TimeZone::system))
}

fn clock_in(ms: u64, zone: &TimeZone) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .map_or_else(
            || "--:--".to_owned(),
            |at| at.to_zoned(zone.clone()).strftime("%H:%M").to_string(),
        )
}

/// `name` cut to `max` characters, the last of them an ellipsis, so that
/// what stands beside it (a badge, an unread count) stays in view; the
/// whole name is in the conversation's header.
pub(crate) fn ellipsis(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        return name.to_owned();
    }
    let mut cut: String = name.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks() {
        let utc = TimeZone::UTC;
        assert_eq!(clock_in(0, &utc), "00:00");
        assert_eq!(clock_in((13 * 60 + 7) * 60_000 + 59_999, &utc), "13:07");
        let tokyo = TimeZone::fixed(jiff::tz::offset(9));
        assert_eq!(clock_in((13 * 60 + 7) * 60_000, &tokyo), "22:07");
        assert_eq!(clock_in(u64::MAX, &utc), "--:--");
    }

    #[test]
    fn long_names_end_in_an_ellipsis_within_their_room() {
        assert_eq!(ellipsis("bob", 16), "bob");
        assert_eq!(ellipsis("sixteen-letters!", 16), "sixteen-letters!");
        let long = "a-name-of-thirty-two-characters.";
        assert_eq!(ellipsis(long, 16), "a-name-of-thirt…");
        assert_eq!(ellipsis(long, 16).chars().count(), 16);
    }
}
