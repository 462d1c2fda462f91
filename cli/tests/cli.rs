//! `sotto-cli` as a user (or a bot) runs it: real processes, real data
//! directories, a real relay on 127.0.0.1, JSON lines in and out.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod support;

use serde_json::{Value, json};
use support::{Bot, PASSPHRASE, PATIENCE, cli, exited, init, relay};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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

    bob.say(json!({"type": "send", "user": "alice", "text": "a direct reply", "id": "r1"}))
        .await;
    let reply = alice
        .expect(|e| e["type"] == "message" && e["text"] == "a direct reply")
        .await;
    assert_eq!(reply["user"], "bob");
    assert_eq!(reply["from"], "bob");
    // Bob's command id comes back on his message and its deliveries; alice's
    // receipt makes it delivered.
    let mine = bob
        .expect(|e| e["type"] == "message" && e["text"] == "a direct reply")
        .await;
    assert_eq!(mine["command_id"], "r1");
    let delivered = bob
        .expect(|e| {
            e["type"] == "delivery"
                && e["id"] == mine["id"]
                && e["delivery"]["delivered"] == json!(["alice"])
        })
        .await;
    assert_eq!(delivered["command_id"], "r1");
    // And alice pages back through what she has.
    alice
        .say(json!({"type": "history", "user": "bob", "limit": 1, "id": 5}))
        .await;
    let page = alice
        .expect(|e| e["type"] == "history" && e["command_id"] == 5)
        .await;
    assert_eq!(page["messages"][0]["text"], "a direct reply");

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
    let refused =
        |e: &Value| e["type"] == "error" && e["message"].as_str().is_some_and(|m| !m.is_empty());
    alice.say(json!({"type": "fly"})).await;
    alice.expect(refused).await;
    alice.stdin.write_all(b"not json at all\n").await.unwrap();
    alice.expect(refused).await;
    alice
        .say(json!({"type": "send", "room": "lobby", "text": "still working"}))
        .await;
    let still = bob
        .expect(|e| e["type"] == "message" && e["text"] == "still working")
        .await;
    assert_eq!(still["trust"], "unverified"); // bob has not verified alice
    // "still working" went after the bad lines: they sent bob nothing.
    let from_alice: Vec<&Value> = bob
        .seen
        .iter()
        .filter(|e| e["type"] == "message" && e["from"] == "alice")
        .map(|e| &e["text"])
        .collect();
    assert_eq!(from_alice, ["hello over json", "still working"]);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_a_stable_code_and_the_id_of_the_command_they_answer() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let dir = temp.path().join("alice");
    init(&dir, "alice").await;
    // Connected and in the lobby.
    let mut alice = Bot::connect(&dir, "alice", &relay).await;
    let error = |id: &'static str| move |e: &Value| e["type"] == "error" && e["command_id"] == id;

    // A room this client is not in: refused here, nothing sent.
    alice
        .say(json!({"type": "send", "room": "ops", "text": "hello?", "id": "ops-1"}))
        .await;
    let not_in = alice.expect(error("ops-1")).await;
    assert_eq!(
        (&not_in["code"], &not_in["message"]),
        (
            &json!("not_in_room"),
            &json!("you are not in #ops: /join ops first")
        )
    );
    assert!(not_in.get("relay_code").is_none(), "{not_in}");

    // A direct message to a name nobody owns: the relay has no key for it.
    alice
        .say(json!({"type": "send", "user": "nobody", "text": "hi", "id": "dm-1"}))
        .await;
    let no_user = alice.expect(error("dm-1")).await;
    assert_eq!(no_user["code"], "no_such_user", "{no_user}");
    assert!(no_user.get("relay_code").is_none(), "{no_user}");

    // A room to leave that this client is not in.
    alice
        .say(json!({"type": "leave", "room": "ops", "id": "leave-1"}))
        .await;
    let not_left = alice.expect(error("leave-1")).await;
    assert_eq!(not_left["code"], "not_in_room", "{not_left}");

    // A line that is not a command.
    alice
        .say(json!({"type": "send", "text": "where to?", "id": "bad-1"}))
        .await;
    let bad = alice.expect(error("bad-1")).await;
    assert_eq!(bad["code"], "bad_command", "{bad}");

    // A command without an id, refused, does not take the next one's id.
    alice
        .say(json!({"type": "send", "room": "ops", "text": "again"}))
        .await;
    alice
        .say(json!({"type": "send", "room": "lobby", "text": "in the lobby", "id": "ok-1"}))
        .await;
    let sent = alice
        .expect(|e| e["type"] == "message" && e["text"] == "in the lobby")
        .await;
    assert_eq!(sent["command_id"], "ok-1");
    let errors: Vec<(&Value, &Value)> = alice
        .seen
        .iter()
        .filter(|e| e["type"] == "error")
        .map(|e| (&e["code"], &e["command_id"]))
        .collect();
    assert_eq!(
        errors,
        [
            (&json!("not_in_room"), &json!("ops-1")),
            (&json!("no_such_user"), &json!("dm-1")),
            (&json!("not_in_room"), &json!("leave-1")),
            (&json!("bad_command"), &json!("bad-1")),
            (&json!("not_in_room"), &Value::Null),
        ]
    );
}

/// A bot sends a file with `send_file` and another saves it with
/// `save_file`: `transfer` events carry each command's id from start to
/// end, the file message says what the file is, and the saved file is the
/// sent one byte for byte; saving over an existing file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_send_and_save_files_over_json_lines() {
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
    let contents: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    let path = temp.path().join("chart.png");
    std::fs::write(&path, &contents).unwrap();
    alice
        .say(json!({"type": "send_file", "room": "lobby", "path": path, "id": "up"}))
        .await;
    let started = alice.expect(|e| e["type"] == "transfer").await;
    assert_eq!(
        (
            &started["direction"],
            &started["state"],
            &started["command_id"]
        ),
        (&json!("upload"), &json!("running"), &json!("up"))
    );
    let done = alice
        .expect(|e| e["type"] == "transfer" && e["state"] != "running")
        .await;
    assert_eq!(
        (&done["state"], &done["command_id"]),
        (&json!("done"), &json!("up"))
    );
    assert_eq!(done["size"], 150_000);
    let mine = alice
        .expect(|e| e["type"] == "message" && e["outgoing"] == true)
        .await;
    assert_eq!(mine["command_id"], "up");
    assert_eq!(mine["file"]["name"], "chart.png");
    let offered = bob
        .expect(|e| e["type"] == "message" && e["file"].is_object())
        .await;
    assert_eq!(offered["text"], "chart.png");
    assert_eq!(offered["file"]["media_type"], "image/png");
    assert_eq!(offered["file"]["size"], 150_000);
    assert_eq!(offered["file"]["blob"], done["blob"]);
    let to = temp.path().join("saved.png");
    bob.say(json!({"type": "save_file", "room": "lobby", "message": offered["id"], "path": to, "id": "down"}))
        .await;
    let saved = bob
        .expect(|e| e["type"] == "transfer" && e["state"] != "running")
        .await;
    assert_eq!(
        (&saved["state"], &saved["command_id"]),
        (&json!("done"), &json!("down")),
        "{saved}"
    );
    assert_eq!(saved["path"], json!(to));
    assert_eq!(std::fs::read(&to).unwrap(), contents);
    // Again, to the same place: refused, the file left as it is.
    bob.say(json!({"type": "save_file", "room": "lobby", "message": offered["id"], "path": to}))
        .await;
    let refused = bob
        .expect(|e| e["type"] == "transfer" && e["state"] == "failed")
        .await;
    assert_eq!(refused["code"], "file");
    assert_eq!(std::fs::read(&to).unwrap(), contents);
    // A bad message id is refused as a line.
    bob.say(json!({"type": "save_file", "room": "lobby", "message": "nope", "path": to}))
        .await;
    bob.expect(|e| {
        e["type"] == "error"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("not a message id"))
    })
    .await;
}
