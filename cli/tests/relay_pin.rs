//! `sotto-cli` and a relay whose key changed without a signed hand-over:
//! the connection is refused naming both keys and the command that
//! replaces the pin; `sotto-cli relay replace-pin` refuses without a
//! confirmation, replaces with one, records it, and the new address then
//! connects.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod support;

use std::sync::Arc;

use sotto_client::servers::{KnownServers, PIN_LOG_FILE, SERVERS_FILE};
use sotto_proto::RelayAddress;
use sotto_relay::tls::{GENERATED_CERT, GENERATED_KEY};
use sotto_relay::{CertSource, CertStore, Config};
use support::{Bot, cli, exited, init};

#[tokio::test]
async fn an_unsigned_key_change_is_refused_and_replace_pin_replaces_it_on_purpose() {
    let base = tempfile::tempdir().unwrap();
    let relay_dir = base.path().join("relay");
    let certs = CertStore::load(CertSource::Generated {
        dir: relay_dir.clone(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old = RelayAddress {
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
        fingerprint: certs.fingerprint(),
        alternates: Vec::new(),
    };
    tokio::spawn(sotto_relay::run(
        listener,
        Arc::clone(&certs),
        Config {
            data_dir: relay_dir.clone(),
            ..Config::default()
        },
        std::future::pending::<()>(),
    ));
    let alice = base.path().join("alice");
    init(&alice, "alice").await;
    let mut bot = Bot::connect(&alice, "alice", &old).await;
    drop(bot.stdin);
    exited(&mut bot.child, "alice").await;

    // The relay's key is replaced, with no hand-over.
    std::fs::remove_file(relay_dir.join(GENERATED_KEY)).unwrap();
    std::fs::remove_file(relay_dir.join(GENERATED_CERT)).unwrap();
    let new_key = certs.reload().unwrap();
    let mut new = old.clone();
    new.fingerprint = new_key;

    // Refused, naming both keys and the way out, with either address.
    for address in [&old, &new] {
        let out = cli(&alice)
            .args(["connect", "--json"])
            .arg(address.to_string())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let failed: serde_json::Value = stdout
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|event| event["type"] == "connection" && event["state"] == "failed")
            .unwrap_or_else(|| panic!("{stdout}"));
        let reason = failed["reason"].as_str().unwrap();
        assert!(
            reason.contains(&old.fingerprint_text())
                && reason.contains(&new.fingerprint_text())
                && reason.contains("sotto-cli relay replace-pin"),
            "{reason}"
        );
    }

    // No confirmation, no terminal: refused, naming --yes; nothing changed.
    let out = cli(&alice)
        .args(["relay", "replace-pin"])
        .arg(new.to_string())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stdout.contains(&old.fingerprint_text()) && stdout.contains(&new.fingerprint_text()),
        "{stdout}"
    );
    assert!(stderr.contains("--yes"), "{stderr}");
    let known = KnownServers::load(alice.join(SERVERS_FILE)).unwrap();
    assert_eq!(known.get(&old).unwrap().fingerprint, old.fingerprint);
    assert!(!alice.join(PIN_LOG_FILE).exists());

    // Confirmed: replaced and recorded.
    let out = cli(&alice)
        .args(["relay", "replace-pin", "--yes"])
        .arg(new.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "{} -> {}",
            old.fingerprint_text(),
            new.fingerprint_text()
        )),
        "{stdout}"
    );
    let log = std::fs::read_to_string(alice.join(PIN_LOG_FILE)).unwrap();
    assert!(
        log.contains(&format!(
            "{} replaced-by-user {} -> {}",
            old.authority(),
            old.fingerprint_text(),
            new.fingerprint_text()
        )),
        "{log}"
    );
    // The new address connects; the old one is refused from now on.
    let mut bot = Bot::connect(&alice, "alice", &new).await;
    drop(bot.stdin);
    exited(&mut bot.child, "alice").await;
    let known = KnownServers::load(alice.join(SERVERS_FILE)).unwrap();
    assert!(known.check(&old).is_err());
}
