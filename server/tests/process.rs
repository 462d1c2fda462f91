//! The `relay` binary as a process: the printed address, a crash (SIGKILL)
//! and restart with the offline queue intact, SIGHUP certificate reload
//! (a renewal with the same key keeps every address), the key subcommands
//! (`fingerprint`, `renew-cert`, `rotate-key`), `check-config` and
//! `--version`, SIGTERM shutdown, and logs that never hold what clients
//! send (P12).

#![forbid(unsafe_code)]
#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    Client, Presented, handover_verifies, identity, presented, send_to_user, tls_connect, user,
};
use sotto_proto::{ClientFrame, ErrorCode, RelayAddress, RelayFrame};

/// A marker no log line may ever contain.
const MARKER: &[u8] = b"BODY-MARKER-7c1e55";

struct Process {
    child: Child,
    address: RelayAddress,
    log: std::sync::mpsc::Receiver<String>,
}

/// The relay on loopback with its data in `dir`, logging everything.
fn start(dir: &Path, extra: &[&str]) -> Process {
    start_logged(dir, extra, Some("trace"))
}

/// The relay `relay --listen 127.0.0.1:0 --host 127.0.0.1 --data-dir DIR
/// EXTRA`, as a process, with its standard output and error piped.
fn relay_child(dir: &Path, extra: &[&str], rust_log: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay"));
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--host",
            "127.0.0.1",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.spawn().unwrap()
}

/// [`start`], with `RUST_LOG` set to `rust_log` (`None`: the relay's
/// default filter).
fn start_logged(dir: &Path, extra: &[&str], rust_log: Option<&str>) -> Process {
    let mut child = relay_child(dir, extra, rust_log);
    // Collect stderr (the log) in the background.
    let mut stderr = child.stderr.take().unwrap();
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all);
        let _ = tx.send(all);
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let address = line
        .strip_prefix("address: ")
        .unwrap_or_else(|| panic!("first line should be the address, got {line:?}"))
        .trim()
        .parse()
        .unwrap();
    // Keep draining stdout (later address lines after SIGHUP).
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
    });
    Process {
        child,
        address,
        log,
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the relay did not exit");
}

async fn registered(address: &RelayAddress, name: &str) -> Client {
    let mut client = Client::connect(address).await;
    let reply = client.register(name, identity(name)).await;
    assert!(
        matches!(&reply, RelayFrame::Registered { name: n, .. } if *n == user(name)),
        "{reply:?}"
    );
    client
}

#[tokio::test]
async fn offline_queue_survives_a_killed_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), &[]);
    drop(registered(&first.address, "bob").await);
    let mut alice = registered(&first.address, "alice").await;
    alice
        .send(send_to_user(1, "bob", MARKER, Some(b"slot")))
        .await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 1 });

    // No goodbye, no flush: SIGKILL.
    signal(&first.child, "KILL");
    wait(&mut first.child);
    let log = first.log.recv().unwrap();
    assert!(!log.contains("BODY-MARKER"), "the log holds message bytes");

    let mut second = start(dir.path(), &[]);
    assert_eq!(
        second.address.fingerprint, first.address.fingerprint,
        "same certificate after restart"
    );
    let mut bob = registered(&second.address, "bob").await;
    let RelayFrame::Deliver {
        delivery,
        from,
        body,
        ..
    } = bob.recv().await
    else {
        panic!()
    };
    assert_eq!((from, body.as_ref()), (user("alice"), MARKER));
    bob.send(ClientFrame::Ack { delivery }).await;
    bob.send(ClientFrame::Bye).await;
    bob.closed().await;

    // SIGTERM: clients are told, the process exits cleanly and quickly.
    let mut watcher = registered(&second.address, "carol").await;
    signal(&second.child, "TERM");
    assert_eq!(watcher.closed().await, vec![RelayFrame::ShuttingDown]);
    assert!(wait(&mut second.child).success());
    let log = second.log.recv().unwrap();
    assert!(!log.contains("BODY-MARKER"), "the log holds message bytes");
    assert!(log.contains(" TRACE "), "trace-level logging was on: {log}");

    // Acknowledged means gone, across restarts too.
    let mut third = start(dir.path(), &[]);
    let mut bob = registered(&third.address, "bob").await;
    assert_eq!(bob.try_recv(Duration::from_millis(300)).await, None);
    signal(&third.child, "TERM");
    wait(&mut third.child);
}

#[tokio::test]
async fn sighup_reloads_a_renewed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write = |host: &str| {
        let generated = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    };
    write("one.example");
    let data = dir.path().join("data");
    let args = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut relay = start(&data, &args);
    let mut connected = registered(&relay.address, "alice").await;

    write("two.example");
    signal(&relay.child, "HUP");
    let mut renewed = relay.address.clone();
    let mut reloaded = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = presented(&relay.address).await;
        if now.key != relay.address.fingerprint {
            renewed.fingerprint = now.key;
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new certificate was not served");
    drop(registered(&renewed, "bob").await);
    connected.send(ClientFrame::Ping { nonce: 1 }).await;
    assert_eq!(connected.recv().await, RelayFrame::Pong { nonce: 1 });
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
}

/// Waits until the relay serves a certificate other than `before` (SHA-256
/// of its DER) after a SIGHUP.
async fn served_other_than(address: &RelayAddress, before: [u8; 32]) -> Presented {
    for _ in 0..200 {
        let now = presented(address).await;
        if now.certificate != before {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the new certificate was not served");
}

/// `relay ARGS`, run to its end: whether it succeeded, its standard
/// output and error.
fn relay_run<I: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = I>,
) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn relay_command(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec![std::ffi::OsStr::new("--data-dir"), dir.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    relay_run(all)
}

#[tokio::test]
async fn a_sighup_renewal_with_the_same_key_keeps_every_old_address() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let kept = rcgen::KeyPair::generate().unwrap();
    let issue = |host: &str| {
        let renewed = rcgen::CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .self_signed(&kept)
            .unwrap();
        std::fs::write(&cert, renewed.pem()).unwrap();
    };
    issue("one.example");
    std::fs::write(&key, kept.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let args = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut relay = start(&data, &args);
    let old = relay.address.clone();
    let before = presented(&old).await;
    let mut connected = registered(&old, "alice").await;

    // A CA renewal keeping the key (certbot --reuse-key), then SIGHUP.
    issue("two.example");
    signal(&relay.child, "HUP");
    let after = served_other_than(&old, before.certificate).await;
    assert_eq!(after.key, before.key);
    // The old address still connects and registers (its proof bound to
    // the same key), and the open connection carries on.
    drop(registered(&old, "bob").await);
    connected.send(ClientFrame::Ping { nonce: 1 }).await;
    assert_eq!(connected.recv().await, RelayFrame::Pong { nonce: 1 });
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
}

#[tokio::test]
async fn renew_cert_keeps_the_generated_key_and_every_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = start(dir.path(), &[]);
    let old = relay.address.clone();
    let before = presented(&old).await;
    let key_before = std::fs::read(dir.path().join(sotto_relay::tls::GENERATED_KEY)).unwrap();

    let (ok, stdout, stderr) = relay_command(dir.path(), &["renew-cert"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&old.fingerprint_text()), "{stdout}");
    assert_eq!(
        std::fs::read(dir.path().join(sotto_relay::tls::GENERATED_KEY)).unwrap(),
        key_before
    );
    signal(&relay.child, "HUP");
    let after = served_other_than(&old, before.certificate).await;
    assert_eq!(after.key, old.fingerprint);
    drop(registered(&old, "alice").await);

    // A restart that finds the certificate gone issues one for the same key.
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
    std::fs::remove_file(dir.path().join(sotto_relay::tls::GENERATED_CERT)).unwrap();
    let mut again = start(dir.path(), &[]);
    assert_eq!(again.address.fingerprint, old.fingerprint);
    signal(&again.child, "TERM");
    assert!(wait(&mut again.child).success());
}

#[tokio::test]
async fn the_fingerprint_command_and_openssl_print_the_address_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = start(dir.path(), &[]);
    let expected = relay.address.fingerprint_text();
    let log = {
        signal(&relay.child, "TERM");
        assert!(wait(&mut relay.child).success());
        relay.log.recv().unwrap()
    };
    // The log names the key in the same form.
    assert!(log.contains(&expected), "{log}");

    let (ok, stdout, stderr) = relay_command(dir.path(), &["fingerprint"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), expected);
    let cert = dir.path().join(sotto_relay::tls::GENERATED_CERT);
    let (ok, stdout, _) = relay_command(
        dir.path(),
        &["fingerprint", "--cert", cert.to_str().unwrap()],
    );
    assert!(ok);
    assert_eq!(stdout.trim(), expected);

    // The documented pipeline (docs/self-hosting.md), where OpenSSL exists.
    let pipeline = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der \
         | openssl dgst -sha256 -binary | basenc --base64url | tr -d '='",
        cert.display()
    );
    let openssl = Command::new("sh").args(["-c", &pipeline]).output().unwrap();
    if Command::new("openssl").arg("version").output().is_ok() && openssl.status.success() {
        assert_eq!(String::from_utf8(openssl.stdout).unwrap().trim(), expected);
    } else {
        eprintln!(
            "openssl or basenc missing: pipeline not checked here (see tls.rs's fixed vector)"
        );
    }
}

#[tokio::test]
async fn rotate_key_serves_the_old_keys_signed_handover_before_the_challenge() {
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let mut relay = start(dir.path(), &[]);
    let old = relay.address.clone();

    let before = presented(&old).await;

    let (ok, stdout, stderr) = relay_command(dir.path(), &["rotate-key", "--valid-days", "30"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&old.fingerprint_text()), "{stdout}");
    assert!(dir.path().join(sotto_relay::tls::PREVIOUS_KEY).exists());
    signal(&relay.child, "HUP");
    let new_key = served_other_than(&old, before.certificate).await.key;
    assert_ne!(new_key, old.fingerprint);

    // The old pin no longer completes a handshake...
    assert!(Client::try_connect(&old).await.is_none());
    let mut new_address = old.clone();
    new_address.fingerprint = new_key;
    let stream = tls_connect(&new_address).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, sotto_proto::ClientCodec::new());
    // ...and the first frame on the new key is the old key's signed
    // hand-over to it (what lets a client pinned to the old key follow).
    let Some(Ok(RelayFrame::KeyHandover {
        old_key,
        new_key: to,
        not_after,
        scheme,
        signature,
    })) = framed.next().await
    else {
        panic!("no hand-over first")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    use sha2::Digest;
    let from: [u8; 32] = sha2::Sha256::digest(&old_key).into();
    assert_eq!((from, to), (old.fingerprint, new_key));
    assert!(handover_verifies(
        &old_key, &to, not_after, scheme, &signature
    ));
    // A flipped bit in the signature does not verify.
    let mut forged = signature.to_vec();
    forged[0] ^= 1;
    assert!(!handover_verifies(
        &old_key, &to, not_after, scheme, &forged
    ));
    assert!(not_after > now + 29 * 86_400 && not_after <= now + 30 * 86_400 + 60);
    assert!(matches!(
        framed.next().await,
        Some(Ok(RelayFrame::Challenge { .. }))
    ));
    // The new address (printed after the reload) connects directly.
    assert!(tls_connect(&new_address).await.is_ok());
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
    let log = relay.log.recv().unwrap();
    assert!(log.contains("sending the key hand-over"), "{log}");
}

#[test]
fn help_explains_every_option() {
    let output = Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--config",
        "--listen",
        "--host",
        "--data-dir",
        "--cert",
        "--key",
        "--metrics",
        "--log-peer-addresses",
        "--max-connections",
        "--handshake-timeout",
        "--idle-timeout",
        "--keepalive-interval",
        "--max-frame-len",
        "--max-slots",
        "--rate-per-sec",
        "--rate-burst",
        "--outbound-queue",
        "--max-rooms-per-user",
        "--offline-max-messages",
        "--offline-max-bytes",
        "--offline-max-age",
        "--shutdown-grace",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
}

#[test]
fn a_bad_configuration_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "max_conections = 3\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_conections"), "{stderr}");
}

#[test]
fn the_version_is_printed() {
    let (ok, stdout, stderr) = relay_run(["--version"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, format!("relay {}\n", env!("CARGO_PKG_VERSION")));
}

/// `relay check-config FILE`, its output and whether it succeeded.
fn check_config(file: &Path) -> (bool, String, String) {
    relay_run([std::ffi::OsStr::new("check-config"), file.as_os_str()])
}

/// `relay check-config FILE` checks a configuration without starting:
/// before the first start it says a certificate will be made and makes
/// nothing; once the relay has run it prints the key and address the
/// relay prints, with the certificate's expiry; and the relay's start-up
/// log names its version and metrics address.
#[tokio::test]
async fn check_config_says_what_the_relay_would_start_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:7998\"\npublic_host = \"127.0.0.1\"\ndata_dir = \"{}\"\nmetrics = \"127.0.0.1:9798\"\n",
            data.display()
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = check_config(&file);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("a key and self-signed certificate will be generated"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "metrics: http://127.0.0.1:9798/metrics, health: http://127.0.0.1:9798/health"
        ),
        "{stdout}"
    );
    assert!(!data.exists(), "checking made the data directory");

    let metrics = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut relay = start(&data, &["--metrics", &format!("127.0.0.1:{metrics}")]);
    let fingerprint = relay.address.fingerprint_text();
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
    let log = relay.log.recv().unwrap();
    assert!(
        log.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{log}"
    );
    assert!(
        log.contains(&format!("metrics=http://127.0.0.1:{metrics}/metrics")),
        "{log}"
    );

    let (ok, stdout, stderr) = check_config(&file);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("key: {fingerprint}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("address: sotto://{fingerprint}@127.0.0.1:7998\n")),
        "{stdout}"
    );
    // The generated certificate's end, rcgen's default (4096-01-01).
    assert!(stdout.contains("(Unix time 67090118400)"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".check-config"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "the probe file is removed");
}

/// Every kind of configuration the relay would not start with is refused
/// by `relay check-config`, exit status 1, with the reason on stderr: an
/// unknown setting, a data directory that is a file, an expired
/// certificate, a cluster password file that is not there.
#[test]
fn check_config_refuses_what_would_not_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |name: &str, text: String, reason: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (ok, stdout, stderr) = check_config(&file);
        assert!(!ok, "{name} was accepted: {stdout}");
        assert!(stderr.contains(reason), "{name}: {stderr}");
    };
    refused(
        "typo.toml",
        "max_conections = 3\n".into(),
        "unknown field `max_conections`",
    );

    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    refused(
        "file.toml",
        format!("data_dir = \"{}\"\n", not_a_dir.display()),
        "not a directory",
    );

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.path().join("old.pem"), dir.path().join("old-key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    refused(
        "expired.toml",
        format!(
            "data_dir = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("data").display(),
            cert_file.display(),
            key_file.display()
        ),
        "the certificate expired",
    );

    let missing = dir.path().join("no-such-password");
    refused(
        "cluster.toml",
        format!(
            "data_dir = \"{}\"\n[cluster]\nservers = [\"nats://127.0.0.1:4222\"]\nuser = \"relay\"\npassword_file = \"{}\"\n",
            dir.path().join("data").display(),
            missing.display()
        ),
        &missing.display().to_string(),
    );
}

/// At its default level the log links a registered name to a connection
/// number, never to an address; it says when a registration is refused
/// and when a connection ends, and why; and rustls's warnings about what
/// clients send as their server name stay out of it.
#[tokio::test]
async fn the_log_names_no_address_by_default_and_tells_refusals_and_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = start_logged(dir.path(), &[], None);
    let alice = registered(&relay.address, "alice").await;
    let mut impostor = Client::connect(&relay.address).await;
    let reply = impostor.register("alice", identity("bob")).await;
    assert!(
        matches!(
            reply,
            RelayFrame::Error {
                code: ErrorCode::NameTaken,
                ..
            }
        ),
        "{reply:?}"
    );
    drop(impostor);
    drop(alice);
    // A server name rustls warns about, where OpenSSL exists.
    let openssl = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", relay.address.port))
        .args(["-servername", "bad_name!", "-tls1_3"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|output| output.status.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
    let log = relay.log.recv().unwrap();
    assert!(log.contains("registered user=alice"), "{log}");
    assert!(
        log.contains(
            "registration refused code=NameTaken why=\"that name belongs to another key\""
        ),
        "{log}"
    );
    assert!(log.contains("disconnected why="), "{log}");
    assert!(!log.contains("peer="), "{log}");
    if openssl {
        assert!(!log.contains("SNI"), "{log}");
    } else {
        eprintln!("openssl missing: rustls's server-name warning not provoked here");
    }
}

/// With `--log-peer-addresses`, each connection's lines name its peer.
#[tokio::test]
async fn the_log_names_peer_addresses_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = start_logged(dir.path(), &["--log-peer-addresses"], None);
    drop(registered(&relay.address, "alice").await);
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
    let log = relay.log.recv().unwrap();
    let line = log
        .lines()
        .find(|line| line.contains("registered user=alice"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(" peer=127.0.0.1:"), "{line}");
}

/// Whoever read the relay's output may be gone (`relay | head -1`, a
/// closed terminal): the relay goes on, reloads its certificate on the
/// next SIGHUP too (the first one's address line could not be printed),
/// and shuts down cleanly on SIGTERM.
#[tokio::test]
async fn the_relay_goes_on_when_its_output_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = relay_child(&data, &[], Some("info"));
    drop(child.stderr.take());
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let address: RelayAddress = line
        .strip_prefix("address: ")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(stdout);

    let before = presented(&address).await.certificate;
    signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, _, stderr) = relay_command(&data, &["--host", "127.0.0.1", "renew-cert"]);
    assert!(ok, "{stderr}");
    signal(&child, "HUP");
    let renewed = served_other_than(&address, before).await;
    assert_eq!(renewed.key, address.fingerprint);
    drop(registered(&address, "alice").await);
    signal(&child, "TERM");
    assert!(wait(&mut child).success());
}

/// The first delivery `client` gets: its id and body.
async fn delivered(client: &mut Client) -> (u64, Vec<u8>) {
    let RelayFrame::Deliver { delivery, body, .. } = client.recv().await else {
        panic!("expected a delivery")
    };
    (delivery, body.to_vec())
}

/// `relay backup DIR` while the relay runs copies its key and a snapshot
/// of its database (it refuses a directory that is not empty); a relay
/// started on the copy has the same key and what was stored at the
/// snapshot, and hands out delivery ids past every one handed out since,
/// so none is reused; a stopped relay's directory is backed up too.
#[tokio::test]
async fn a_backup_taken_while_the_relay_runs_restores_what_it_held() {
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    let mut relay = start(&data, &[]);
    drop(registered(&relay.address, "bob").await);
    let mut alice = registered(&relay.address, "alice").await;
    for (id, text) in [(1, b"one"), (2, b"two")] {
        alice.send(send_to_user(id, "bob", text, None)).await;
        assert_eq!(alice.recv().await, RelayFrame::Sent { id });
    }
    let (ok, stdout, stderr) = relay_command(&data, &["backup", copy.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("copied by the running relay"), "{stdout}");
    assert!(stdout.contains("inbox=2"), "{stdout}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&copy), 0o700);
        assert_eq!(mode(&copy.join(sotto_relay::tls::GENERATED_KEY)), 0o600);
    }
    let (ok, _, stderr) = relay_command(&data, &["backup", copy.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("not empty"), "{stderr}");

    // After the snapshot: one more, and all three taken and acknowledged.
    alice.send(send_to_user(3, "bob", b"three", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 3 });
    let mut bob = registered(&relay.address, "bob").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (delivery, body) = delivered(&mut bob).await;
        bob.send(ClientFrame::Ack { delivery }).await;
        seen.push((delivery, body));
    }
    drop((alice, bob));
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());

    let mut restored = start(&copy, &[]);
    assert_eq!(restored.address.fingerprint, relay.address.fingerprint);
    let mut bob = registered(&restored.address, "bob").await;
    let snapshot = [delivered(&mut bob).await, delivered(&mut bob).await];
    assert_eq!(
        snapshot.as_slice(),
        &seen[..2],
        "the snapshot, with its ids"
    );
    for (delivery, _) in &snapshot {
        bob.send(ClientFrame::Ack {
            delivery: *delivery,
        })
        .await;
    }
    let mut alice = registered(&restored.address, "alice").await;
    alice.send(send_to_user(4, "bob", b"four", None)).await;
    assert_eq!(alice.recv().await, RelayFrame::Sent { id: 4 });
    let (delivery, body) = delivered(&mut bob).await;
    assert_eq!(body, b"four");
    assert!(delivery > seen[2].0, "{delivery} reuses an id");
    drop((alice, bob));
    signal(&restored.child, "TERM");
    assert!(wait(&mut restored.child).success());
    let log = restored.log.recv().unwrap();
    assert!(log.contains("opened a restored backup"), "{log}");

    let stopped = dir.path().join("stopped");
    let (ok, stdout, stderr) = relay_command(&copy, &["backup", stopped.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("from the stopped relay's file"), "{stdout}");
}

/// `relay backup` keeps a copy only once all of it arrived: a control
/// socket that announces a copy and sends less (a relay killed half-way,
/// say) leaves no database file in the backup, and the reason is said.
/// A running relay's socket answers anything but `backup` with an error.
#[tokio::test]
async fn a_backup_cut_short_keeps_no_copy() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (data, copy) = (dir.path().join("data"), dir.path().join("copy"));
    std::fs::create_dir(&data).unwrap();
    let socket = std::os::unix::net::UnixListener::bind(data.join("relay.sock")).unwrap();
    let answering = std::thread::spawn(move || {
        let (mut stream, _) = socket.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        stream
            .write_all(b"ok 100000 names=1\nthe first bytes")
            .unwrap();
        request
    });
    let (ok, _, stderr) = relay_command(&data, &["backup", copy.to_str().unwrap()]);
    assert_eq!(answering.join().unwrap(), "backup\n");
    assert!(!ok);
    assert!(
        stderr.contains("sent 15 of the copy's 100000 bytes"),
        "{stderr}"
    );
    let kept: Vec<_> = std::fs::read_dir(&copy).unwrap().collect();
    assert!(kept.is_empty(), "{kept:?}");

    let mut relay = start(&dir.path().join("running"), &[]);
    // The address is printed as the relay opens its database, before the
    // socket is bound.
    let socket = dir.path().join("running/relay.sock");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"backup /somewhere\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "error unknown request\n");
    signal(&relay.child, "TERM");
    assert!(wait(&mut relay.child).success());
}
