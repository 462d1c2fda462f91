//! Small pieces of look shared by the screens: trust badges, fonts, times.

use std::sync::OnceLock;

use iced::theme::palette;
use iced::widget::{container, text};
use iced::{Border, Color, Element, Font, Theme, font};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use sotto_client::session::TrustLevel;
use sotto_client::ui::words;

/// The least contrast of any text with what it is drawn on: WCAG 2's
/// level AA for body text, 4.5:1.
pub(crate) const MIN_CONTRAST: f32 = 4.5;

/// The app's theme: iced's light or dark palette, with each colour text
/// is written in (the primary, secondary, success, warning and danger
/// tones) moved away from the background, where needed, until it stands
/// out at least [`MIN_CONTRAST`] from every surface text is drawn on: the
/// window, the sidebar's and your own messages' tint, the file cards'.
/// iced's own palettes fall short (its green on dark grey is 2:1).
pub(crate) fn theme(dark: bool) -> Theme {
    // Made once each: the app asks for its theme at every redraw.
    static LIGHT: OnceLock<Theme> = OnceLock::new();
    static DARK: OnceLock<Theme> = OnceLock::new();
    let made = if dark { &DARK } else { &LIGHT };
    made.get_or_init(|| make_theme(dark)).clone()
}

fn make_theme(dark: bool) -> Theme {
    let base = if dark {
        palette::Palette::DARK
    } else {
        palette::Palette::LIGHT
    };
    let surfaces = surfaces(&palette::Extended::generate(base));
    let legible = |colour| legible(colour, &surfaces);
    let palette = palette::Palette {
        primary: legible(base.primary),
        success: legible(base.success),
        warning: legible(base.warning),
        danger: legible(base.danger),
        ..base
    };
    let name = if dark { "sotto dark" } else { "sotto light" };
    Theme::custom_with_fn(name, palette, move |palette| {
        let mut extended = palette::Extended::generate(palette);
        let secondary = legible(extended.secondary.base.color);
        extended.secondary.base = palette::Pair::new(secondary, palette.text);
        extended
    })
}

/// The surfaces text is drawn on: the window, the weak tint (sidebar,
/// member list, your own messages), the weakest (file cards).
fn surfaces(extended: &palette::Extended) -> [Color; 3] {
    [
        extended.background.base.color,
        extended.background.weak.color,
        extended.background.weakest.color,
    ]
}

/// `colour`, mixed with black on light surfaces (with white on dark ones)
/// just enough to stand out [`MIN_CONTRAST`] from each of `surfaces`.
fn legible(colour: Color, surfaces: &[Color; 3]) -> Color {
    let towards = if palette::is_dark(surfaces[0]) {
        Color::WHITE
    } else {
        Color::BLACK
    };
    let stands_out = |c: Color| {
        surfaces
            .iter()
            .all(|surface| surface.relative_contrast(c) >= MIN_CONTRAST)
    };
    (0..=50u8)
        .map(|step| {
            let t = f32::from(step) / 50.0;
            Color::from_rgb(
                colour.r + (towards.r - colour.r) * t,
                colour.g + (towards.g - colour.g) * t,
                colour.b + (towards.b - colour.b) * t,
            )
        })
        .find(|c| stands_out(*c))
        .unwrap_or(towards)
}

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
    clock_in(ms, zone())
}

/// The system's time zone, read once.
fn zone() -> &'static TimeZone {
    static ZONE: OnceLock<TimeZone> = OnceLock::new();
    ZONE.get_or_init(TimeZone::system)
}

/// The local day of a time in ms since the Unix epoch (None if out of
/// range): what a date separator compares.
pub(crate) fn day_of(ms: u64) -> Option<jiff::civil::Date> {
    day_in(ms, zone())
}

fn day_in(ms: u64, zone: &TimeZone) -> Option<jiff::civil::Date> {
    let at = Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok()?;
    Some(at.to_zoned(zone.clone()).date())
}

/// A date separator's words for `day`, seen on `today`: "Today",
/// "Yesterday", the weekday within the last week ("Monday"), the day and
/// month this year ("Monday 30 November"), with the year before
/// ("30 November 2025").
pub(crate) fn day_label(day: jiff::civil::Date, today: jiff::civil::Date) -> String {
    let ago = day.until(today).map_or(i32::MAX, |span| span.get_days());
    match ago {
        0 => "Today".to_owned(),
        1 => "Yesterday".to_owned(),
        2..=6 => day.strftime("%A").to_string(),
        _ if day.year() == today.year() => day.strftime("%A %-d %B").to_string(),
        _ => day.strftime("%-d %B %Y").to_string(),
    }
}

/// Today, in the system's time zone.
pub(crate) fn today() -> jiff::civil::Date {
    jiff::Zoned::now().with_time_zone(zone().clone()).date()
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

    /// WCAG 2's contrast ratio, computed here from the sRGB values (not
    /// with iced's own function, which the theme uses).
    fn contrast(a: Color, b: Color) -> f64 {
        let luminance = |c: Color| {
            let channel = |v: f32| {
                let v = f64::from(v);
                if v <= 0.040_45 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b)
        };
        let (x, y) = (luminance(a), luminance(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn every_text_colour_stands_out_at_least_4_5_to_1_in_both_themes() {
        for dark in [false, true] {
            let theme = theme(dark);
            let palette = theme.palette();
            let extended = theme.extended_palette();
            let texts = [
                ("text", palette.text),
                ("primary", palette.primary),
                ("secondary", extended.secondary.base.color),
                ("success", palette.success),
                ("warning", palette.warning),
                ("danger", palette.danger),
            ];
            for (name, colour) in texts {
                for surface in surfaces(extended) {
                    let ratio = contrast(colour, surface);
                    assert!(
                        ratio >= 4.5,
                        "dark {dark}: {name} {colour:?} on {surface:?}: {ratio:.2}"
                    );
                }
            }
            // Text on filled things: buttons, badges, unread counts.
            let pairs = [
                ("primary button", extended.primary.base),
                ("secondary button", extended.secondary.base),
                ("verified badge", extended.success.base),
                ("changed badge", extended.danger.base),
                ("unverified badge", extended.background.strong),
            ];
            for (name, pair) in pairs {
                let ratio = contrast(pair.text, pair.color);
                assert!(ratio >= 4.5, "dark {dark}: {name}: {ratio:.2}");
            }
        }
        // iced's own palettes do not: the reason for these.
        let dark = Theme::Dark;
        let green = dark.palette().success;
        assert!(contrast(green, dark.palette().background) < 4.5);
    }

    #[test]
    fn date_separators_say_today_yesterday_the_weekday_or_the_date() {
        use jiff::civil::date;
        let today = date(2026, 12, 6);
        assert_eq!(day_label(today, today), "Today");
        assert_eq!(day_label(date(2026, 12, 5), today), "Yesterday");
        assert_eq!(day_label(date(2026, 12, 1), today), "Tuesday");
        assert_eq!(day_label(date(2026, 11, 30), today), "Monday");
        assert_eq!(day_label(date(2026, 11, 29), today), "Sunday 29 November");
        assert_eq!(day_label(date(2025, 12, 24), today), "24 December 2025");
        // A clock set back: a day after today is dated, not "Today".
        assert_eq!(day_label(date(2026, 12, 7), today), "Monday 7 December");
        // The day is the local one: 23:30 UTC is the next day in Tokyo.
        let late = (((20_000 * 24) + 23) * 60 + 30) * 60_000;
        let tokyo = TimeZone::fixed(jiff::tz::offset(9));
        assert_eq!(
            day_in(late, &tokyo),
            day_in(late, &TimeZone::UTC).map(|d| d.tomorrow().unwrap())
        );
        assert_eq!(day_in(u64::MAX, &TimeZone::UTC), None);
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
