//! What the process tests share: a relay on 127.0.0.1 and `sotto-cli`
//! processes driven by JSON lines.
#![allow(dead_code)] // each test binary uses its own part of it

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sotto_proto::RelayAddress;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub(crate) const CLI: &str = env!("CARGO_BIN_EXE_sotto-cli");
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
pub(crate) const PASSPHRASE: &str = "correct horse battery staple";

/// A relay on 127.0.0.1:0 (data and certificate in `dir`) that runs until
/// the test ends.
pub(crate) async fn relay(dir: &Path) -> RelayAddress {
    sotto_testkit::LocalRelay::start(dir, 0).detach()
}

pub(crate) fn cli(dir: &Path) -> Command {
    let mut command = Command::new(CLI);
    command
        .arg("--data-dir")
        .arg(dir)
        .env("SOTTO_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

pub(crate) async fn init(dir: &Path, name: &str) {
    let out = cli(dir)
        .args(["init", "--name", name])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("fingerprint: "), "{stdout}");
}

/// A `sotto-cli connect --json` process.
pub(crate) struct Bot {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: Lines<BufReader<ChildStdout>>,
    pub(crate) seen: Vec<Value>,
}

impl Bot {
    pub(crate) async fn connect(dir: &Path, name: &'static str, relay: &RelayAddress) -> Bot {
        let mut child = cli(dir)
            .args(["connect", "--json"])
            .arg(relay.to_string())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut bot = Bot {
            name,
            child,
            stdin,
            stdout,
            seen: Vec::new(),
        };
        bot.expect(|e| e["type"] == "joined" && e["room"] == "lobby")
            .await;
        bot
    }

    pub(crate) async fn say(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    pub(crate) async fn expect(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out; seen {:#?}", self.name, self.seen))
                .unwrap()
                .unwrap_or_else(|| panic!("{}: output ended; seen {:#?}", self.name, self.seen));
            let event: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.name));
            assert!(event["type"].is_string(), "{line}");
            self.seen.push(event.clone());
            if wanted(&event) {
                return event;
            }
        }
    }
}

/// Waits for `child` to exit; if it does not in time, kills it and fails
/// with what it wrote on standard error.
pub(crate) async fn exited(child: &mut Child, name: &str) -> std::process::ExitStatus {
    if let Ok(status) = tokio::time::timeout(PATIENCE, child.wait()).await {
        return status.unwrap();
    }
    child.start_kill().unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        pipe.read_to_string(&mut stderr).await.unwrap();
    }
    panic!("{name} did not exit; stderr: {stderr}");
}
