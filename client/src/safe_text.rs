//! Text from peers and the relay, made safe for a terminal.
//!
//! Everything a peer or the relay wrote (message text, names, room names,
//! error reasons, listings) is untrusted: printed as it came, an escape
//! sequence could retitle the window, clear the screen or move the cursor,
//! a bare carriage return could overwrite the start of a line, bidi
//! controls could reorder what is shown around the text, and a newline
//! could start a line that looks like a new message from someone else.
//! This module turns such text into what a terminal shows literally.
//!
//! # What is escaped
//!
//! Every character for which [`needs_escape`] is true is replaced by a
//! visible escape, in one form:
//!
//! | Character | Shown as |
//! |---|---|
//! | ESC (U+001B) | `\e` |
//! | CR (U+000D), TAB (U+0009), NUL (U+0000) | `\r`, `\t`, `\0` |
//! | LF (U+000A), in [`inline`] text only | `\n` |
//! | other C0 controls (U+0001-U+001F) and DEL (U+007F) | `\xHH` (two lower-case hex digits: BEL is `\x07`) |
//! | C1 controls (U+0080-U+009F) | `\u{HH}` (lower-case hex, as Rust writes it: CSI is `\u{9b}`) |
//! | bidi marks, embeddings, overrides and isolates: U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069 | `\u{HHHH}` (`\u{202e}`) |
//! | line and paragraph separators U+2028, U+2029 | `\u{2028}`, `\u{2029}` |
//!
//! A backslash is not doubled: `\e` typed by a peer shows as `\e`, like
//! an escaped ESC. The difference is harmless (neither does anything to
//! the terminal); `sotto-cli --json` gives the exact text.
//!
//! # Bounds
//!
//! - At most [`MAX_MARKS`] combining marks are shown after one base
//!   character; the rest are replaced by `[+N marks]` (a "zalgo" text of
//!   10,000 marks would otherwise draw over the lines around it).
//! - [`inline`] text (a name, a reason) shows at most [`INLINE_MAX_BYTES`]
//!   bytes of the original, [`message_lines`] at most
//!   [`MESSAGE_MAX_BYTES`] bytes in at most [`MESSAGE_MAX_LINES`] lines;
//!   what is left is counted: `[... N bytes more]`. A 1 MiB message costs
//!   16 KiB of work and output, not a flooded screen.
//!
//! Nothing is allocated per character: the escapes are written straight
//! into the output.
//!
//! # Example
//!
//! ```
//! use sotto_client::safe_text::{inline, message_lines};
//!
//! assert_eq!(inline("\u{1b}]0;TITLE\u{7} \u{1b}[2J").to_string(), r"\e]0;TITLE\x07 \e[2J");
//! assert_eq!(inline("one\ntwo").to_string(), r"one\ntwo");
//! assert_eq!(message_lines("one\r\ntwo\rthree"), ["one", r"two\rthree"]);
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use unicode_normalization::char::is_combining_mark;

/// Combining marks shown after one base character; more are counted.
pub const MAX_MARKS: usize = 4;
/// Bytes of an [`inline`] text shown; more are counted.
pub const INLINE_MAX_BYTES: usize = 512;
/// Bytes of a message shown by [`message_lines`]; more are counted.
pub const MESSAGE_MAX_BYTES: usize = 16 * 1024;
/// Lines of a message shown by [`message_lines`]; more are counted.
pub const MESSAGE_MAX_LINES: usize = 64;

/// Whether `c` is shown as an escape rather than as itself (see the
/// module documentation; LF is escaped by [`inline`] and splits lines in
/// [`message_lines`]).
pub fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// The first character of `text` that is a control character (C0 other
/// than TAB, DEL or C1), if any: what a line editor or a paste should
/// never send as text (an arrow key typed where the terminal has no line
/// editor arrives as `ESC [ A`).
pub fn find_control(text: &str) -> Option<char> {
    text.chars()
        .find(|&c| c != '\t' && matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
}

/// Writes `c` escaped (it [`needs_escape`]).
fn write_escape(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\u{1b}' => out.write_str("\\e"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        '\n' => out.write_str("\\n"),
        '\0' => out.write_str("\\0"),
        '\u{0}'..='\u{1f}' | '\u{7f}' => write!(out, "\\x{:02x}", u32::from(c)),
        _ => write!(out, "\\u{{{:x}}}", u32::from(c)),
    }
}

/// Writes characters one by one, escaping and capping combining marks.
struct Escaper<'w, W: fmt::Write> {
    out: &'w mut W,
    /// Combining marks since the last base character.
    marks: usize,
    /// Of those, the ones not shown.
    dropped: usize,
}

impl<'w, W: fmt::Write> Escaper<'w, W> {
    fn new(out: &'w mut W) -> Self {
        Escaper {
            out,
            marks: 0,
            dropped: 0,
        }
    }

    fn push(&mut self, c: char) -> fmt::Result {
        if is_combining_mark(c) {
            self.marks += 1;
            if self.marks > MAX_MARKS {
                self.dropped += 1;
                return Ok(());
            }
            return self.out.write_char(c);
        }
        self.end_marks()?;
        if needs_escape(c) {
            write_escape(self.out, c)
        } else {
            self.out.write_char(c)
        }
    }

    /// Counts the marks not shown, if any.
    fn end_marks(&mut self) -> fmt::Result {
        if self.dropped > 0 {
            write!(self.out, "[+{} marks]", self.dropped)?;
        }
        self.marks = 0;
        self.dropped = 0;
        Ok(())
    }

    fn text(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            self.push(c)?;
        }
        self.end_marks()
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
fn prefix(text: &str, max: usize) -> &str {
    let mut cut = max.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.get(..cut).unwrap_or_default()
}

/// `[... N bytes more]`, or nothing for 0.
fn more(out: &mut impl fmt::Write, bytes: usize) -> fmt::Result {
    if bytes > 0 {
        write!(out, "[... {bytes} bytes more]")?;
    }
    Ok(())
}

/// One untrusted text on one line, as [`Display`](fmt::Display): see
/// [`inline`].
#[derive(Clone, Copy, Debug)]
pub struct Inline<'a>(&'a str);

/// `text` made safe to print inside a line: escaped (newlines too),
/// combining marks capped, at most [`INLINE_MAX_BYTES`] bytes of it shown.
pub fn inline(text: &str) -> Inline<'_> {
    Inline(text)
}

impl fmt::Display for Inline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = prefix(self.0, INLINE_MAX_BYTES);
        Escaper::new(f).text(shown)?;
        let rest = self.0.len() - shown.len();
        if rest > 0 {
            f.write_char(' ')?;
        }
        more(f, rest)
    }
}

/// A multi-line untrusted text made safe to show in one paragraph (the
/// desktop app): escaped like [`inline`] text except that newlines stay
/// (a CR LF pair becomes one newline; a bare CR is escaped), combining
/// marks capped, nothing cut (the app lays out long text itself).
/// Borrowed when there is nothing to change.
///
/// ```
/// use sotto_client::safe_text::multiline;
///
/// assert_eq!(multiline("a\u{202e}b\r\nc\u{1b}[2J"), "a\\u{202e}b\nc\\e[2J");
/// assert!(matches!(multiline("plain\ntext"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn multiline(text: &str) -> Cow<'_, str> {
    let mut marks = 0;
    let clean = text.chars().all(|c| {
        if is_combining_mark(c) {
            marks += 1;
            return marks <= MAX_MARKS;
        }
        marks = 0;
        c == '\n' || !needs_escape(c)
    });
    if clean {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = match lines.peek() {
            Some(_) => line.strip_suffix('\r').unwrap_or(line),
            None => line,
        };
        // Writing to a String cannot fail.
        let _ = Escaper::new(&mut shown).text(line);
        if lines.peek().is_some() {
            shown.push('\n');
        }
    }
    Cow::Owned(shown)
}

/// A multi-line untrusted text (a message) as the lines to print: split
/// at LF (a CR LF pair counts as one newline; a bare CR is escaped), each
/// line escaped and its combining marks capped, at most
/// [`MESSAGE_MAX_BYTES`] bytes and [`MESSAGE_MAX_LINES`] lines shown, then
/// one more line `[... N bytes more]` if anything was left out.
///
/// There is always at least one line. The caller decides how lines after
/// the first are set apart (`sotto-cli` indents them under a marker no
/// message header starts with).
pub fn message_lines(text: &str) -> Vec<String> {
    let shown = prefix(text, MESSAGE_MAX_BYTES);
    let mut lines = Vec::new();
    let mut used = 0;
    for raw in shown.split('\n') {
        if lines.len() == MESSAGE_MAX_LINES {
            break;
        }
        used += raw.len();
        if used < shown.len() {
            used += 1; // the '\n' after it
        }
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let mut line = String::with_capacity(raw.len());
        // Writing to a String cannot fail.
        let _ = Escaper::new(&mut line).text(raw);
        lines.push(line);
    }
    let rest = text.len() - used;
    if rest > 0 {
        let mut line = String::new();
        let _ = more(&mut line, rest);
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_escapes_are_the_documented_ones() {
        let cases = [
            ("\u{1b}]0;TITLE\u{7} \u{1b}[2J", r"\e]0;TITLE\x07 \e[2J"),
            ("a\rb", r"a\rb"),
            ("a\tb\0c", r"a\tb\0c"),
            ("a\nb", r"a\nb"),
            ("\u{1}\u{1f}\u{7f}", r"\x01\x1f\x7f"),
            ("\u{80}\u{9b}\u{9f}", r"\u{80}\u{9b}\u{9f}"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
                r"\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                r"\u{2066}\u{2067}\u{2068}\u{2069}",
            ),
            ("\u{200e}\u{200f}\u{61c}", r"\u{200e}\u{200f}\u{61c}"),
            ("\u{2028}\u{2029}", r"\u{2028}\u{2029}"),
            // Ordinary text, accents and scripts are untouched.
            ("héllo wörld ✓ 日本語 שלום", "héllo wörld ✓ 日本語 שלום"),
            ("e\u{301}", "e\u{301}"),
            (r"C:\path \e", r"C:\path \e"),
        ];
        for (input, shown) in cases {
            assert_eq!(inline(input).to_string(), shown, "{input:?}");
        }
    }

    #[test]
    fn combining_marks_are_capped_per_base_character() {
        let zalgo = format!("a{}b", "\u{301}".repeat(5_000));
        assert_eq!(
            message_lines(&zalgo),
            [format!("a{}[+4996 marks]b", "\u{301}".repeat(MAX_MARKS))]
        );
        // 10,000 marks: more than a message shows, so counted twice.
        let zalgo = format!("a{}", "\u{301}".repeat(10_000));
        assert_eq!(
            message_lines(&zalgo),
            [
                format!("a{}[+8187 marks]", "\u{301}".repeat(MAX_MARKS)),
                "[... 3618 bytes more]".to_owned()
            ]
        );
        assert_eq!(
            inline(&zalgo).to_string(),
            format!(
                "a{}[+251 marks] [... 19490 bytes more]",
                "\u{301}".repeat(MAX_MARKS)
            )
        );
        // The count closes at the end of the text too, and marks on
        // another base start again.
        let two = format!("x{}y{}", "\u{300}".repeat(6), "\u{300}".repeat(5));
        assert_eq!(
            message_lines(&two),
            [format!(
                "x{m}[+2 marks]y{m}[+1 marks]",
                m = "\u{300}".repeat(MAX_MARKS)
            )]
        );
    }

    #[test]
    fn a_one_mebibyte_line_is_cut_and_counted() {
        let huge = "A".repeat(1 << 20);
        let lines = message_lines(&huge);
        assert_eq!(
            lines,
            [
                "A".repeat(MESSAGE_MAX_BYTES),
                format!("[... {} bytes more]", (1 << 20) - MESSAGE_MAX_BYTES)
            ]
        );
        let name = inline(&huge).to_string();
        assert_eq!(
            name,
            format!(
                "{} [... {} bytes more]",
                "A".repeat(INLINE_MAX_BYTES),
                (1 << 20) - INLINE_MAX_BYTES
            )
        );
        // The cut never splits a character.
        let wide = "é".repeat(MESSAGE_MAX_BYTES);
        let lines = message_lines(&wide);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "é".repeat(MESSAGE_MAX_BYTES / 2));
    }

    #[test]
    fn many_short_lines_are_cut_and_counted() {
        let text = "x\n".repeat(1000);
        let lines = message_lines(&text);
        assert_eq!(lines.len(), MESSAGE_MAX_LINES + 1);
        assert_eq!(
            lines.last().unwrap(),
            &format!("[... {} bytes more]", 2 * (1000 - MESSAGE_MAX_LINES))
        );
    }

    #[test]
    fn lines_split_at_newlines_and_crlf_only() {
        assert_eq!(message_lines(""), [""]);
        assert_eq!(message_lines("one"), ["one"]);
        assert_eq!(message_lines("one\n"), ["one", ""]);
        assert_eq!(
            message_lines("a\r\nb\nc\rd\u{2028}e"),
            ["a", "b", r"c\rd\u{2028}e"]
        );
        assert_eq!(
            message_lines("hi\n[06:59:59] #lobby <bob [verified]> please"),
            ["hi", "[06:59:59] #lobby <bob [verified]> please"]
        );
    }

    #[test]
    fn multiline_text_keeps_its_lines_and_escapes_the_rest() {
        assert_eq!(
            multiline("a\u{202E}b\u{2066}c\u{2069}\u{200F}\u{061C}"),
            r"a\u{202e}b\u{2066}c\u{2069}\u{200f}\u{61c}"
        );
        assert_eq!(
            multiline("x\u{1b}]0;T\u{7}\r\ny\rz\t"),
            "x\\e]0;T\\x07\ny\\rz\\t"
        );
        assert_eq!(multiline("\u{85}\u{7f}"), r"\u{85}\x7f");
        assert_eq!(multiline("e\u{301}\u{301}"), "e\u{301}\u{301}");
        let zalgo = format!("e{}", "\u{301}".repeat(10));
        assert_eq!(
            multiline(&zalgo),
            format!("e{}[+6 marks]", "\u{301}".repeat(MAX_MARKS))
        );
        assert!(matches!(multiline("hello\nשלום"), Cow::Borrowed(_)));
    }

    #[test]
    fn find_control_finds_typed_escape_sequences() {
        assert_eq!(find_control("\u{1b}[A"), Some('\u{1b}'));
        assert_eq!(find_control("a\u{7f}"), Some('\u{7f}'));
        assert_eq!(find_control("a\u{9b}"), Some('\u{9b}'));
        assert_eq!(find_control("tab\tand ünïcode \u{202e}"), None);
    }

    fn shows_no_control(shown: &str) -> Result<(), TestCaseError> {
        for c in shown.chars() {
            prop_assert!(!needs_escape(c), "{c:?} in {shown:?}");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn nothing_escaped_survives(text in any::<String>()) {
            let shown = inline(&text).to_string();
            shows_no_control(&shown)?;
            for line in message_lines(&text) {
                shows_no_control(&line)?;
            }
        }

        #[test]
        fn nothing_escaped_survives_in_multiline_text(text in any::<String>()) {
            let shown = multiline(&text);
            prop_assert!(!shown.chars().any(|c| c != '\n' && needs_escape(c)));
            prop_assert_eq!(shown.matches('\n').count(), text.matches('\n').count());
        }

        #[test]
        fn output_is_bounded(text in proptest::collection::vec(any::<char>(), 0..20_000)) {
            let text: String = text.into_iter().collect();
            // An escape is at most 4 bytes per byte (`\x01`); the counts add
            // a few more.
            let shown = inline(&text).to_string();
            prop_assert!(shown.len() <= 4 * INLINE_MAX_BYTES + 64);
            let lines = message_lines(&text);
            prop_assert!(lines.len() <= MESSAGE_MAX_LINES + 1);
            let total: usize = lines.iter().map(String::len).sum();
            prop_assert!(total <= 4 * MESSAGE_MAX_BYTES + 64 * MESSAGE_MAX_LINES);
        }

        #[test]
        fn safe_text_is_unchanged(text in "[a-zA-Z0-9 .,!?é日\u{301}]{0,200}") {
            // At most MAX_MARKS marks in a row here? Not guaranteed by the
            // pattern: compare only texts without a run of more.
            let run = text.chars().fold((0usize, 0usize), |(cur, max), c| {
                let cur = if is_combining_mark(c) { cur + 1 } else { 0 };
                (cur, max.max(cur))
            });
            prop_assume!(run.1 <= MAX_MARKS);
            prop_assert_eq!(inline(&text).to_string(), text.clone());
            prop_assert_eq!(message_lines(&text), vec![text]);
        }

        #[test]
        fn lines_are_the_original_lines_when_short(lines in proptest::collection::vec("[a-z ]{0,20}", 1..10)) {
            let text = lines.join("\n");
            prop_assert_eq!(message_lines(&text), lines);
        }
    }
}
