//! Peer text made safe to show: what could reorder or hide what the app
//! draws around it is shown as a visible escape.
//!
//! A message's text (and any text a relay sends: error reasons, refusals)
//! is drawn in a text widget of its own, a paragraph apart from its
//! sender, badge and time, so the Unicode bidirectional algorithm cannot
//! move one into the other. Inside the text, the invisible controls that
//! change direction (the embeddings and overrides U+202A-U+202E, the
//! isolates U+2066-U+2069, the marks U+200E, U+200F and U+061C) and the
//! other control characters (C0 but newline and tab, DEL, C1) are shown as
//! `<U+202E>`: the reader sees that the sender put them there, and the
//! text reads in the order it was typed. Right-to-left scripts still read
//! right to left: the bidi algorithm needs no controls for them.

use std::borrow::Cow;

/// Whether `c` is shown as an escape.
fn escaped(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    ) || (c.is_control() && c != '\n' && c != '\t')
}

/// `text` with every bidi control and control character (but newline and
/// tab) as a visible `<U+XXXX>`; a CR LF line end is a newline. Borrowed
/// when there is nothing to escape.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' && chars.peek() == Some(&'\n') {
            continue;
        }
        if escaped(c) {
            shown.push_str(&format!("<U+{:04X}>", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

/// Whether `text` holds a character [`visible`] escapes.
pub fn has_controls(text: &str) -> bool {
    text.chars().any(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_become_visible_and_plain_text_is_borrowed() {
        assert!(matches!(visible("hello\n\tשלום"), Cow::Borrowed(_)));
        assert_eq!(
            visible("a\u{202E}b\u{2066}c\u{2069}\u{200F}\u{061C}"),
            "a<U+202E>b<U+2066>c<U+2069><U+200F><U+061C>"
        );
        assert_eq!(
            visible("x\u{1b}]0;T\u{7}\r\ny\rz"),
            "x<U+001B>]0;T<U+0007>\ny<U+000D>z"
        );
        assert_eq!(visible("\u{85}\u{7f}"), "<U+0085><U+007F>");
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            assert!(!has_controls(&visible(&c.to_string())));
        }
    }
}
