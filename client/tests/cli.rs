//! `sotto-cli` as a user (or a bot) runs it: real processes, real data
//! directories, a real relay on 127.0.0.1, JSON lines in and out.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use sotto_proto::RelayAddress;
use sotto_relay::{CertSource, CertStore, Config};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const CLI: &str = env!("CARGO_BIN_EXE_sotto-cli");
const PATIENCE: Duration = Duration::from_secs(30);
const PASSPHRASE: &str = "correct horse battery staple";

async fn relay(dir: &Path) -> RelayAddress {
    let certs = CertStore::load(CertSource::Generated {
        dir: dir.to_path_buf(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = RelayAddress {
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
        fingerprint: certs.fingerprint(),
    };
    let config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    tokio::spawn(sotto_relay::run(
        listener,
        certs,
        config,
        std::future::pending::<()>(),
    ));
    address
}

fn cli(dir: &Path) -> Command {
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

async fn init(dir: &Path, name: &str) {
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
struct Bot {
    name: &'static str,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
}

impl Bot {
    async fn connect(dir: &Path, name: &'static str, relay: &RelayAddress) -> Bot {
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

    async fn say(&mut self, command: Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    async fn expect(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
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
async fn exited(child: &mut Child, name: &str) -> std::process::ExitStatus {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cli_users_chat_and_verify_each_other_over_json_lines() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let (alice_dir, bob_dir) = (temp.path().join("alice"), temp.path().join("bob"));
    init(&alice_dir, "alice").await;
    init(&bob_dir, "bob").await;

    let mut alice = Bot::connect(&alice_dir, "alice", &relay).await;
    let mut bob = Bot::connect(&bob_dir, "bob", &relay).await;
    alice
        .expect(|e| e["type"] == "presence" && e["name"] == "bob" && e["change"] == "joined")
        .await;

    alice
        .say(json!({"type": "send", "room": "lobby", "text": "hello over json"}))
        .await;
    let message = bob
        .expect(|e| e["type"] == "message" && e["text"] == "hello over json")
        .await;
    assert_eq!(message["from"], "alice");
    assert_eq!(message["room"], "lobby");
    assert_eq!(message["outgoing"], false);
    assert_eq!(message["trust"], "unverified");

    bob.say(json!({"type": "send", "user": "alice", "text": "a direct reply"}))
        .await;
    let reply = alice
        .expect(|e| e["type"] == "message" && e["text"] == "a direct reply")
        .await;
    assert_eq!(reply["user"], "bob");
    assert_eq!(reply["from"], "bob");

    // Verification by safety number.
    alice
        .say(json!({"type": "safety_number", "name": "bob"}))
        .await;
    let shown = alice.expect(|e| e["type"] == "safety_number").await;
    bob.say(json!({"type": "safety_number", "name": "alice"}))
        .await;
    let theirs = bob.expect(|e| e["type"] == "safety_number").await;
    assert_eq!(shown["safety_number"], theirs["safety_number"]);
    assert_eq!(shown["safety_number"].as_str().unwrap().len(), 60);
    alice
        .say(json!({"type": "verify", "name": "bob", "safety_number": shown["safety_number"]}))
        .await;
    alice
        .expect(|e| e["type"] == "trust" && e["name"] == "bob" && e["trust"] == "verified")
        .await;

    // Listings.
    alice.say(json!({"type": "users"})).await;
    let users = alice.expect(|e| e["type"] == "users").await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);

    // Bad input gets an error event and changes nothing.
    alice.say(json!({"type": "fly"})).await;
    alice.expect(|e| e["type"] == "error").await;
    alice.stdin.write_all(b"not json at all\n").await.unwrap();
    alice.expect(|e| e["type"] == "error").await;
    alice
        .say(json!({"type": "send", "room": "lobby", "text": "still working"}))
        .await;
    let still = bob
        .expect(|e| e["type"] == "message" && e["text"] == "still working")
        .await;
    assert_eq!(still["trust"], "unverified"); // bob has not verified alice

    // Quitting ends the process cleanly, and the other side is told.
    alice.say(json!({"type": "quit"})).await;
    let status = exited(&mut alice.child, "alice").await;
    assert!(status.success());
    bob.expect(|e| {
        e["type"] == "presence" && e["name"] == "alice" && e["change"] == "disconnected"
    })
    .await;
    // End of input quits too.
    drop(bob.stdin);
    let status = exited(&mut bob.child, "bob").await;
    assert!(status.success());
}

#[tokio::test]
async fn wrong_passphrase_and_missing_identity_are_clear_errors() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("me");
    let out = cli(&dir).arg("fingerprint").output().await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sotto-cli init --name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    init(&dir, "me").await;
    let out = cli(&dir).arg("fingerprint").output().await.unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("name: me"), "{stdout}");

    // The passphrase file wins over the environment, and a wrong one says so.
    let file = temp.path().join("pass");
    std::fs::write(&file, "not the passphrase\n").unwrap();
    let out = cli(&dir)
        .arg("--passphrase-file")
        .arg(&file)
        .arg("fingerprint")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&file, format!("{PASSPHRASE}\n")).unwrap();
    let out = cli(&dir)
        .env_remove("SOTTO_PASSPHRASE")
        .arg("--passphrase-file")
        .arg(&file)
        .arg("fingerprint")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    // A second init refuses to overwrite the identity.
    let out = cli(&dir)
        .args(["init", "--name", "me"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_presenting_another_certificate_is_refused_naming_both() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let dir = temp.path().join("me");
    init(&dir, "me").await;
    // An address whose pinned fingerprint is not the relay's certificate.
    let mut wrong = relay.clone();
    wrong.fingerprint = [7; 32];
    let mut bot = cli(&dir)
        .args(["connect", "--json"])
        .arg(wrong.to_string())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(bot.stdout.take().unwrap()).lines();
    let failed = loop {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("a failure event");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["type"] == "connection" && event["state"] == "failed" {
            break event;
        }
    };
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains(&wrong.fingerprint_text()), "{reason}");
    assert!(reason.contains(&relay.fingerprint_text()), "{reason}");
    let status = exited(&mut bot, "me").await;
    assert!(!status.success());
}
