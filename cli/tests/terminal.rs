//! Peer text cannot take over the terminal (issue 11 item 1): hostile
//! texts sent by a real peer through a real relay into a real `sotto-cli`
//! in interactive mode, and replayed from its history at the next
//! `connect`. The assertions read the process's standard output, the
//! bytes its one printing function writes. Also here: the delivery
//! notices of interactive mode (issue 13 item 3) through a real relay,
//! with the relay cut off by a proxy for the pending case, and
//! disappearing messages set at the terminal and seen by a bot.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod support;

use std::path::Path;

use serde_json::json;
use sotto_proto::RelayAddress;
use support::{Bot, PATIENCE, cli, exited, init, relay};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// The hostile texts, each sent as one message.
fn nasty() -> Vec<(&'static str, String)> {
    vec![
        (
            "the issue's title and clear-screen payload",
            "\u{1b}]0;TITLE\u{7} \u{1b}[2J".to_owned(),
        ),
        (
            "the issue's forged verified line",
            "hi\n[06:59:59] #lobby <bob [verified]> please send me your passphrase".to_owned(),
        ),
        (
            "CSI colours, cursor moves, erase",
            "\u{1b}[31mred\u{1b}[0m \u{1b}[1;1H\u{1b}[K\u{1b}[?1049h".to_owned(),
        ),
        (
            "OSC clipboard and hyperlink",
            "\u{1b}]52;c;cGF5bG9hZA==\u{7}\u{1b}]8;;http://evil/\u{1b}\\click\u{1b}]8;;\u{1b}\\"
                .to_owned(),
        ),
        (
            "a bare CR overwriting the line with a header",
            "harmless\r[06:59:59] #lobby <bob [verified]> overwritten".to_owned(),
        ),
        (
            "a CRLF before a forged direct message",
            "ok\r\n[07:00:00] (direct) <bob [verified]> psst\r\n[07:00:01] -> @bob <alice> x"
                .to_owned(),
        ),
        (
            "an indented forged header",
            "a\n   [06:59:59] #lobby <bob [verified]> spaced".to_owned(),
        ),
        ("BEL, NUL, DEL", "ding\u{7}\u{7}\u{0}nul\u{7f}del".to_owned()),
        (
            "C1 controls (8-bit CSI, OSC, ST, NEL)",
            "\u{9b}2J \u{9d}0;t\u{9c} \u{85}next".to_owned(),
        ),
        (
            "bidi overrides, embeddings, isolates and marks",
            "\u{202e}dessecorp\u{202c} \u{2066}x\u{2069} \u{2067}y\u{2069} \u{2068}z\u{2069} \u{202a}\u{202b}\u{202d}\u{200f}\u{200e}\u{61c}"
                .to_owned(),
        ),
        (
            "10,000 combining marks",
            format!("Z{}", "\u{301}".repeat(10_000)),
        ),
        (
            "a 500 kB line with a forged header at its end",
            format!(
                "{}\n[06:59:59] #lobby <bob [verified]> hidden at the end",
                "A".repeat(500_000)
            ),
        ),
        (
            "many lines with a forged header after them",
            format!(
                "{}[06:59:59] #lobby <bob [verified]> after the cut",
                "x\n".repeat(200)
            ),
        ),
    ]
}

const END: &str = "END OF THE NASTY TEXTS";

/// The sender of a line that reads as a message header
/// (`[HH:MM:SS] WHERE <SENDER BADGE> TEXT`, docs/cli.md 7.1), leading
/// spaces ignored; `None` for any other line. The one definition of a
/// header in these tests.
fn header(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let b = line.as_bytes();
    let clock = b.len() > 11
        && b[0] == b'['
        && b[3] == b':'
        && b[6] == b':'
        && b[9] == b']'
        && b[10] == b' '
        && [1, 2, 4, 5, 7, 8].iter().all(|&i| b[i].is_ascii_digit());
    if !clock {
        return None;
    }
    let rest = &line[11..];
    let rest = if let Some(rest) = rest.strip_prefix("(direct) ") {
        rest
    } else if rest.starts_with('#') || rest.starts_with("-> @") {
        let at = rest.find(" <")?;
        &rest[at + 1..]
    } else {
        return None;
    };
    let rest = rest.strip_prefix('<')?;
    let (sender, _) = rest.split_once('>')?;
    Some(sender)
}

#[test]
fn the_header_parser_reads_genuine_headers() {
    assert_eq!(
        header("[06:59:59] #lobby <bob [verified]> hi"),
        Some("bob [verified]")
    );
    assert_eq!(header("[06:59:59] -> @bob <alice> hi"), Some("alice"));
    assert_eq!(header("[06:59:59] (direct) <bob> hi"), Some("bob"));
    assert_eq!(header("   [06:59:59] #lobby <bob> hi"), Some("bob"));
    assert_eq!(header("           | [06:59:59] #lobby <bob> hi"), None);
    assert_eq!(header("* Connected to 127.0.0.1:7447 as bob"), None);
}

/// Characters that must never reach the terminal raw.
fn forbidden(c: char) -> bool {
    (c.is_control() && c != '\n')
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// A `sotto-cli connect` in interactive mode, its output kept raw.
struct Interactive {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Every byte printed so far.
    raw: Vec<u8>,
}

impl Interactive {
    fn spawn(dir: &Path, relay: &RelayAddress) -> Interactive {
        let mut child = cli(dir)
            .arg("connect")
            .arg(relay.to_string())
            .spawn()
            .unwrap();
        Interactive {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            raw: Vec::new(),
        }
    }

    async fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
    }

    /// Reads lines until one satisfies `wanted`; returns it.
    async fn until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let mut line = Vec::new();
            let read = tokio::time::timeout(PATIENCE, self.stdout.read_until(b'\n', &mut line))
                .await
                .unwrap_or_else(|_| panic!("timed out; output so far:\n{}", self.text()))
                .unwrap();
            assert!(read > 0, "output ended:\n{}", self.text());
            self.raw.extend_from_slice(&line);
            let line = String::from_utf8_lossy(&line).into_owned();
            if wanted(line.trim_end_matches('\n')) {
                return line;
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// What every output must satisfy: no raw control or bidi character, and
/// no header but the genuine ones (`senders`, in order).
fn assert_safe(raw: &[u8], senders: &[&str]) {
    for byte in [0x1b, 0x07, 0x00, 0x0d, 0x9b] {
        assert!(!raw.contains(&byte), "raw byte {byte:#04x} in the output");
    }
    let text = std::str::from_utf8(raw).expect("the output is UTF-8");
    if let Some(c) = text.chars().find(|&c| forbidden(c)) {
        panic!("{c:?} reached the terminal");
    }
    let headers: Vec<&str> = text.lines().filter_map(header).collect();
    assert_eq!(headers, senders, "message headers in:\n{text}");
    // The output stays bounded: no flood from the long texts.
    assert!(raw.len() < 200_000, "{} bytes printed", raw.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_texts_from_a_peer_cannot_take_over_the_terminal_live_or_replayed() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let dirs = ["alice", "bob", "carol"].map(|name| temp.path().join(name));
    for (dir, name) in dirs.iter().zip(["alice", "bob", "carol"]) {
        init(dir, name).await;
    }
    let mut alice = Bot::connect(&dirs[0], "alice", &relay).await;
    // carol reads the same texts in JSON mode: exact, only JSON-escaped.
    let mut carol = Bot::connect(&dirs[2], "carol", &relay).await;
    let mut bob = Interactive::spawn(&dirs[1], &relay);
    bob.until(|l| l == "* You joined #lobby").await;
    for name in ["carol", "bob"] {
        alice
            .expect(|e| e["type"] == "presence" && e["name"] == name && e["change"] == "joined")
            .await;
    }

    let texts = nasty();
    for (_, text) in &texts {
        alice
            .say(json!({"type": "send", "room": "lobby", "text": text}))
            .await;
    }
    alice
        .say(json!({"type": "send", "room": "lobby", "text": END}))
        .await;
    bob.until(|l| l.contains(END)).await;
    let senders = vec!["alice"; texts.len() + 1];
    assert_safe(&bob.raw, &senders);
    let shown = bob.text();
    // The issue's payloads, shown visibly: escapes, and the forged line
    // as a continuation of mallory's (here alice's) message.
    assert!(shown.contains(r"<alice> \e]0;TITLE\x07 \e[2J"), "{shown}");
    assert!(
        shown.contains(
            "\n           | [06:59:59] #lobby <bob [verified]> please send me your passphrase\n"
        ),
        "{shown}"
    );
    assert!(shown.contains(r"harmless\r[06:59:59]"), "{shown}");
    assert!(shown.contains(r"\u{202e}dessecorp\u{202c}"), "{shown}");
    assert!(shown.contains("[+8187 marks]"), "{shown}");
    assert!(shown.contains(" bytes more]"), "{shown}");

    for (what, text) in &texts {
        let event = carol
            .expect(|e| e["type"] == "message" && e["from"] == "alice")
            .await;
        assert_eq!(event["text"].as_str().unwrap(), text, "{what}");
    }

    // The stored history replays at the next connect: just as safe.
    bob.type_line("/quit").await;
    assert!(exited(&mut bob.child, "bob").await.success());
    let mut bob = Interactive::spawn(&dirs[1], &relay);
    bob.until(|l| l == "* You joined #lobby").await;
    // The barrier: the last text is in, so the whole history was replayed
    // before the checks below.
    let replayed = bob.text();
    assert!(replayed.contains(END), "{replayed}");
    assert_safe(&bob.raw, &senders);
    assert!(
        replayed.contains(r"<alice> \e]0;TITLE\x07 \e[2J"),
        "{replayed}"
    );
}

/// alice in JSON mode and bob interactive, on a fresh relay.
async fn alice_and_interactive_bob(temp: &Path) -> (Bot, RelayAddress, std::path::PathBuf) {
    let relay = relay(&temp.join("relay")).await;
    let (alice_dir, bob_dir) = (temp.join("alice"), temp.join("bob"));
    init(&alice_dir, "alice").await;
    init(&bob_dir, "bob").await;
    let alice = Bot::connect(&alice_dir, "alice", &relay).await;
    (alice, relay, bob_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_typed_while_connecting_is_sent_to_the_first_room_joined() {
    let temp = tempfile::tempdir().unwrap();
    let (mut alice, relay, bob_dir) = alice_and_interactive_bob(temp.path()).await;
    // Typed at once, before the session has joined its room.
    let mut bob = Interactive::spawn(&bob_dir, &relay);
    bob.type_line("typed while connecting").await;
    let first = alice
        .expect(|e| e["type"] == "message" && e["from"] == "bob")
        .await;
    assert_eq!(first["text"], "typed while connecting");
    bob.type_line("/quit").await;
    assert!(exited(&mut bob.child, "bob").await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_escape_sequence_is_refused_not_sent() {
    let temp = tempfile::tempdir().unwrap();
    let (mut alice, relay, bob_dir) = alice_and_interactive_bob(temp.path()).await;
    let mut bob = Interactive::spawn(&bob_dir, &relay);
    bob.until(|l| l == "* You joined #lobby").await;
    alice
        .expect(|e| e["type"] == "presence" && e["name"] == "bob" && e["change"] == "joined")
        .await;
    // Up-arrow then Enter without a line editor: ESC [ A is refused.
    bob.type_line("\u{1b}[A").await;
    bob.until(|l| l.starts_with(r"! not sent: the line contains the control character \e"))
        .await;
    // The barrier: the next line is the first message alice gets.
    bob.type_line("after the arrow").await;
    let next = alice
        .expect(|e| e["type"] == "message" && e["from"] == "bob")
        .await;
    assert_eq!(next["text"], "after the arrow");
    bob.type_line("/quit").await;
    assert!(exited(&mut bob.child, "bob").await.success());
}

/// `sotto-cli connect` under a pseudo-terminal (script(1)): its line
/// editor is on; what it writes is read as raw bytes.
struct Pty {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    raw: Vec<u8>,
}

impl Pty {
    fn spawn(dir: &Path, relay: &RelayAddress) -> Pty {
        let command = format!(
            "{} --data-dir {} connect {relay}",
            support::CLI,
            dir.display()
        );
        let mut child = tokio::process::Command::new("script")
            .args(["-q", "-f", "-e", "-c", &command, "/dev/null"])
            .env("SOTTO_PASSPHRASE", support::PASSPHRASE)
            // A terminal the editor supports, whatever the caller's is.
            .env("TERM", "xterm-256color")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("script(1) from util-linux");
        Pty {
            stdin: child.stdin.take().unwrap(),
            stdout: child.stdout.take().unwrap(),
            child,
            raw: Vec::new(),
        }
    }

    /// Keys, as a terminal sends them (Enter is CR).
    async fn keys(&mut self, keys: &str) {
        self.stdin.write_all(keys.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Reads until the output since `from` contains `wanted`; returns
    /// where it ends.
    async fn until(&mut self, from: usize, wanted: &str) -> usize {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(at) = self.raw[from..]
                .windows(wanted.len())
                .position(|w| w == wanted.as_bytes())
            {
                return from + at + wanted.len();
            }
            let mut buf = [0; 4096];
            let read = tokio::time::timeout(PATIENCE, self.stdout.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for {wanted:?}; output:\n{}",
                        String::from_utf8_lossy(&self.raw)
                    )
                })
                .unwrap();
            assert!(
                read > 0,
                "output ended: {}",
                String::from_utf8_lossy(&self.raw)
            );
            self.raw.extend_from_slice(&buf[..read]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_a_terminal_up_arrow_recalls_history_and_peer_escapes_stay_visible() {
    let temp = tempfile::tempdir().unwrap();
    let (mut alice, relay, bob_dir) = alice_and_interactive_bob(temp.path()).await;
    let mut bob = Pty::spawn(&bob_dir, &relay);
    let at = bob.until(0, "* You joined #lobby").await;
    alice
        .expect(|e| e["type"] == "presence" && e["name"] == "bob" && e["change"] == "joined")
        .await;
    // Type only once the prompt is drawn: the editor first asks the
    // terminal where its cursor is and would take a key for the answer.
    let at = bob.until(at, "> ").await;
    bob.keys("hello from a terminal\r").await;
    let first = alice
        .expect(|e| e["type"] == "message" && e["from"] == "bob")
        .await;
    assert_eq!(first["text"], "hello from a terminal");
    // The next prompt names the room; then Up, Enter sends the same line
    // again, never the arrow's escape sequence.
    let at = bob.until(at, "#lobby> ").await;
    bob.keys("\u{1b}[A\r").await;
    let again = alice
        .expect(|e| e["type"] == "message" && e["from"] == "bob")
        .await;
    assert_eq!(again["text"], "hello from a terminal");

    // The editor draws with escape sequences of its own, but what the
    // peer sent arrives escaped.
    alice
        .say(json!({"type": "send", "room": "lobby", "text": "\u{1b}]0;TITLE\u{7} \u{1b}[2J"}))
        .await;
    let at = bob.until(at, r"<alice> \e]0;TITLE\x07 \e[2J").await;
    bob.until(at, "#lobby> ").await;
    let raw = &bob.raw;
    for bad in ["\u{1b}]0;TITLE", "\u{1b}[2J", "\u{7}"] {
        assert!(
            !raw.windows(bad.len()).any(|w| w == bad.as_bytes()),
            "{bad:?} reached the terminal"
        );
    }
    bob.keys("/quit\r").await;
    assert!(exited(&mut bob.child, "bob").await.success());
}

/// Whether `line` is the notice that alice's message `text` was delivered
/// to bob (docs/cli.md 7.1: `* WHERE: delivered...: your message of
/// HH:MM:SS "FIRST WORDS"`).
fn delivered_to_bob(line: &str, place: &str, text: &str) -> bool {
    let to = if place.starts_with('#') {
        " to bob"
    } else {
        ""
    };
    line.starts_with(&format!("* {place}: delivered{to}: your message of "))
        && line.ends_with(&format!(" \"{text}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn your_messages_say_when_they_are_delivered_and_typed_while_the_relay_is_away_show_pending()
{
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let proxy = sotto_testkit::Proxy::start(format!("127.0.0.1:{}", relay.port).parse().unwrap());
    let (alice_dir, bob_dir) = (temp.path().join("alice"), temp.path().join("bob"));
    init(&alice_dir, "alice").await;
    init(&bob_dir, "bob").await;
    let mut bob = Bot::connect(&bob_dir, "bob", &relay).await;
    // alice at a terminal, through a proxy that can cut her off.
    let mut alice = Interactive::spawn(&alice_dir, &proxy.relay_address(&relay));
    alice
        .until(|l| l.starts_with("* In #lobby: ") && l.contains("bob"))
        .await;

    // Live: printed without a mark (being sent), then delivered once bob
    // has stored it.
    alice.type_line("hello bob").await;
    alice
        .until(|l| header(l) == Some("alice") && l.ends_with("#lobby <alice> hello bob"))
        .await;
    bob.expect(|e| e["type"] == "message" && e["text"] == "hello bob")
        .await;
    alice
        .until(|l| delivered_to_bob(l, "#lobby", "hello bob"))
        .await;
    alice.type_line("/msg bob a direct word").await;
    bob.expect(|e| e["type"] == "message" && e["text"] == "a direct word")
        .await;
    alice
        .until(|l| delivered_to_bob(l, "@bob", "a direct word"))
        .await;

    // The relay out of reach: a line typed now shows at once as pending.
    proxy.refuse(true);
    proxy.reset();
    alice.until(|l| l.starts_with("! Connection lost")).await;
    alice.type_line("typed while away").await;
    alice
        .until(|l| {
            header(l) == Some("alice") && l.ends_with("#lobby <alice> typed while away (pending)")
        })
        .await;
    // Back: sent once rejoined, not printed again, then delivered.
    proxy.refuse(false);
    alice.type_line("/reconnect").await;
    bob.expect(|e| e["type"] == "message" && e["text"] == "typed while away")
        .await;
    alice
        .until(|l| delivered_to_bob(l, "#lobby", "typed while away"))
        .await;
    alice.type_line("/quit").await;
    assert!(exited(&mut alice.child, "alice").await.success());
    let shown = alice.text();
    assert_eq!(
        shown
            .lines()
            .filter(|l| l.contains("<alice> typed while away"))
            .count(),
        1,
        "{shown}"
    );
    for text in ["hello bob", "a direct word", "typed while away"] {
        assert_eq!(
            shown
                .lines()
                .filter(|l| l.starts_with("* ") && l.ends_with(&format!("\"{text}\"")))
                .filter(|l| l.contains(": delivered"))
                .count(),
            1,
            "{shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_set_at_the_terminal_reaches_a_bot_and_what_is_sent_under_it_disappears() {
    let temp = tempfile::tempdir().unwrap();
    let (mut alice, relay, bob_dir) = alice_and_interactive_bob(temp.path()).await;
    let mut bob = Interactive::spawn(&bob_dir, &relay);
    bob.until(|line| line.contains("joined #lobby")).await;
    alice
        .expect(|e| e["type"] == "presence" && e["name"] == "bob" && e["change"] == "joined")
        .await;
    bob.type_line("/timer 2s").await;
    bob.until(|line| line == "* #lobby: you set disappearing messages to 2 seconds")
        .await;
    alice
        .expect(|e| e == &json!({"type": "timer", "room": "lobby", "seconds": 2, "by": "bob"}))
        .await;

    // alice sends under the timer she was told of: gone at both ends.
    alice
        .say(json!({"type": "send", "room": "lobby", "text": "brief", "id": "b1"}))
        .await;
    let sent = alice
        .expect(|e| e["type"] == "message" && e["command_id"] == "b1")
        .await;
    // Shown with when it disappears; the bot is told when, too.
    let line = bob
        .until(|line| line.contains("<alice> brief (disappears at "))
        .await;
    assert!(line.trim_end().ends_with(')'), "{line}");
    let expires = sent["expires_at_ms"].as_u64().unwrap();
    assert_eq!(expires - sent["received_at_ms"].as_u64().unwrap(), 2000);
    alice
        .expect(|e| e["type"] == "expired" && e["ids"] == json!([sent["id"]]))
        .await;
    bob.until(|line| line == "* #lobby: 1 message disappeared")
        .await;
    // Nor does the bot's paging show it any more.
    alice
        .say(json!({"type": "history", "room": "lobby", "id": "h1"}))
        .await;
    let page = alice
        .expect(|e| e["type"] == "history" && e["command_id"] == "h1")
        .await;
    assert_eq!(page["messages"], json!([]), "{page}");

    // Asked for, the setting answers its command; turned off, it says who.
    alice
        .say(json!({"type": "timer", "room": "lobby", "id": "t1"}))
        .await;
    let shown = alice
        .expect(|e| e["type"] == "timer" && e["command_id"] == "t1")
        .await;
    assert_eq!(shown["seconds"], 2, "{shown}");
    assert!(shown.get("by").is_none(), "{shown}");
    alice
        .say(json!({"type": "timer", "room": "lobby", "seconds": 0, "id": "t2"}))
        .await;
    let off = alice
        .expect(|e| e["type"] == "timer" && e["command_id"] == "t2")
        .await;
    assert_eq!((&off["seconds"], &off["by"]), (&json!(0), &json!("alice")));
    bob.until(|line| line == "* #lobby: alice turned off disappearing messages")
        .await;
    bob.type_line("/timer").await;
    bob.until(|line| line == "* #lobby: disappearing messages are off")
        .await;
    bob.type_line("/timer 2y").await;
    bob.until(|line| line.starts_with("! usage: /timer")).await;
    bob.type_line("/quit").await;
    assert!(exited(&mut bob.child, "bob").await.success());
    assert_safe(&bob.raw, &["alice"]);
}
