//! The relay's key, as real clients (`sotto_client::session::run`) meet it:
//! a signed key rotation is followed without a prompt and recorded, an old
//! certificate pin is converted, an unsigned key change (no hand-over, a
//! forged, expired or misdirected one) is refused naming both keys with
//! nothing sent, and a relay that accepts but never answers, or stops
//! reading, is given up within the session's time limits.

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::indexing_slicing
)] // tests

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use sotto_client::servers::{KnownServers, Move, PIN_LOG_FILE, SERVERS_FILE};
use sotto_client::session::{self, Config, Connection, RelayKeyMoved, Update};
use sotto_client::tls::{self, Timeouts};
use sotto_proto::{RelayAddress, RelayFrame, encode_frame, fingerprint_text};
use sotto_relay::tls::{GENERATED_CERT, GENERATED_KEY, HANDOVER_FILE};
use sotto_relay::{CertSource, CertStore};
use sotto_testkit::{PATIENCE, Peer, account, lobby};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A relay in this process whose certificates the test reloads.
struct Relay {
    address: RelayAddress,
    certs: Arc<CertStore>,
    dir: PathBuf,
    source: CertSource,
}

async fn relay(dir: &Path) -> Relay {
    let source = CertSource::Generated {
        dir: dir.to_path_buf(),
        hosts: vec!["localhost".into()],
    };
    let certs = CertStore::load(source.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = RelayAddress {
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
        fingerprint: certs.fingerprint(),
        alternates: Vec::new(),
    };
    let config = sotto_relay::Config {
        data_dir: dir.to_path_buf(),
        ..sotto_relay::Config::default()
    };
    tokio::spawn(sotto_relay::run(
        listener,
        Arc::clone(&certs),
        config,
        std::future::pending::<()>(),
    ));
    Relay {
        address,
        certs,
        dir: dir.to_path_buf(),
        source,
    }
}

fn servers_txt(profile: &Path) -> String {
    std::fs::read_to_string(profile.join(SERVERS_FILE)).unwrap_or_default()
}

/// Runs a session until it is connected or has failed, then quits it and
/// waits for its end (the barrier for "seen nothing": the session has
/// nothing more to say); returns what happened and every update seen.
async fn outcome(config: Config) -> (Connection, Vec<Update>) {
    let mut updates = Box::pin(session::run(config));
    let mut seen = Vec::new();
    loop {
        let update = tokio::time::timeout(PATIENCE, updates.next())
            .await
            .unwrap_or_else(|_| panic!("no outcome in time; seen: {seen:#?}"))
            .expect("the session ended without an outcome");
        match update {
            Update::Connection(
                state @ (Connection::Connected { .. } | Connection::Failed { .. }),
            ) => {
                if let Some(Update::Ready(controller)) = seen.first() {
                    let _ = controller.quit();
                }
                // Let the session finish (and write its files).
                loop {
                    match tokio::time::timeout(PATIENCE, updates.next()).await {
                        Ok(Some(update)) => seen.push(update),
                        Ok(None) => return (state, seen),
                        Err(_) => panic!("the session did not end; seen: {seen:#?}"),
                    }
                }
            }
            other => seen.push(other),
        }
    }
}

/// The relay key moves the session reported.
fn moves(seen: &[Update]) -> Vec<&RelayKeyMoved> {
    seen.iter()
        .filter_map(|update| match update {
            Update::RelayKeyMoved(moved) => Some(moved),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_signed_key_rotation_is_followed_without_a_prompt_and_recorded() {
    let base = tempfile::tempdir().unwrap();
    let relay = relay(&base.path().join("relay")).await;
    let old = relay.address.clone();
    let profile = base.path().join("alice");
    let alice = account(&profile, "alice", "alice").await;
    let (state, _) = outcome(Config::new(alice.clone(), old.clone())).await;
    assert!(matches!(state, Connection::Connected { .. }), "{state:?}");

    // The operator rotates the key (relay rotate-key) and reloads.
    let rotation =
        sotto_relay::tls::rotate_key(&relay.source, &relay.dir, None, Duration::from_secs(3600))
            .unwrap();
    let new = relay.certs.reload().unwrap();
    assert_eq!(rotation.handover.new_key, new);
    assert_ne!(new, old.fingerprint);

    // Alice, with the address she always had: followed, told, recorded.
    let (state, seen) = outcome(Config::new(alice.clone(), old.clone())).await;
    assert!(matches!(state, Connection::Connected { .. }), "{state:?}");
    let moved = moves(&seen);
    assert!(
        matches!(moved[..], [m] if m.how == Move::Handover
            && m.from == old.fingerprint
            && m.to == new
            && m.authority == format!("127.0.0.1:{}", old.port)),
        "{moved:?}"
    );
    // What the user reads names both keys.
    let notice = moved[0].to_string();
    assert!(
        notice.contains(&fingerprint_text(&new))
            && notice.contains(&old.fingerprint_text())
            && notice.contains("signed over by its previous key"),
        "{notice}"
    );
    let known = KnownServers::load(profile.join(SERVERS_FILE)).unwrap();
    assert_eq!(known.get(&old).unwrap().fingerprint, new);
    assert!(
        servers_txt(&profile).contains(&format!("was={}", old.fingerprint_text())),
        "{}",
        servers_txt(&profile)
    );
    let log = std::fs::read_to_string(profile.join(PIN_LOG_FILE)).unwrap();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{} followed-handover {} -> {}",
            old.port,
            old.fingerprint_text(),
            fingerprint_text(&new)
        )),
        "{log}"
    );

    // A client on the new key ignores the hand-over still being sent.
    let mut new_address = old.clone();
    new_address.fingerprint = new;
    let (state, seen) = outcome(Config::new(alice.clone(), new_address)).await;
    assert!(matches!(state, Connection::Connected { .. }), "{state:?}");
    assert!(moves(&seen).is_empty(), "{seen:?}");

    // Later runs with the old address go straight to the new key, also
    // once the hand-over is gone.
    std::fs::remove_file(relay.dir.join(HANDOVER_FILE)).unwrap();
    relay.certs.reload().unwrap();
    assert!(relay.certs.current_handover().is_none());
    let (state, seen) = outcome(Config::new(alice, old.clone())).await;
    assert!(matches!(state, Connection::Connected { .. }), "{state:?}");
    assert!(moves(&seen).is_empty(), "{seen:?}");
}

#[tokio::test]
async fn an_old_certificate_pin_still_connects_and_is_converted_once_with_a_notice() {
    let base = tempfile::tempdir().unwrap();
    let relay = relay(&base.path().join("relay")).await;
    let pem = std::fs::read(relay.dir.join(GENERATED_CERT)).unwrap();
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
    };
    let mut legacy = relay.address.clone();
    legacy.fingerprint = tls::certificate_fingerprint(&der);
    assert_ne!(legacy.fingerprint, relay.address.fingerprint);

    let profile = base.path().join("alice");
    let alice = account(&profile, "alice", "alice").await;
    // servers.txt as an older sotto wrote it: the certificate's hash.
    std::fs::write(profile.join(SERVERS_FILE), format!("{legacy}\n")).unwrap();
    let (state, seen) = outcome(Config::new(alice.clone(), legacy.clone())).await;
    assert!(matches!(state, Connection::Connected { .. }), "{state:?}");
    let moved = moves(&seen);
    assert!(
        matches!(moved[..], [m] if m.how == Move::Converted
            && m.from == legacy.fingerprint
            && m.to == relay.address.fingerprint),
        "{seen:?}"
    );
    let known = KnownServers::load(profile.join(SERVERS_FILE)).unwrap();
    assert_eq!(
        known.get(&legacy).unwrap().fingerprint,
        relay.address.fingerprint
    );
    // Converted once: the next run says nothing.
    let (state, seen) = outcome(Config::new(alice, legacy)).await;
    assert!(matches!(state, Connection::Connected { .. }), "{state:?}");
    assert!(moves(&seen).is_empty(), "{seen:?}");
}

/// A TLS server presenting `cert`/`key` that sends `frames` first, then
/// counts the bytes the client sends until it goes away.
async fn impostor(
    dir: &Path,
    frames: Vec<RelayFrame>,
) -> (u16, tokio::task::JoinHandle<usize>, [u8; 32]) {
    let certs = CertStore::load(CertSource::Generated {
        dir: dir.to_path_buf(),
        hosts: vec!["localhost".into()],
    })
    .unwrap();
    let presented = certs.fingerprint();
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(socket).await.unwrap();
        for frame in frames {
            tls.write_all(&encode_frame(&frame).unwrap()).await.unwrap();
        }
        tls.flush().await.unwrap();
        let mut received = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut received)).await;
        received.len()
    });
    (port, task, presented)
}

fn private_key(dir: &Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(GENERATED_KEY)).unwrap()
}

fn spki(dir: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join(GENERATED_KEY)).unwrap();
    rustls::crypto::ring::sign::any_supported_type(&key)
        .unwrap()
        .public_key()
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn an_unsigned_key_change_is_refused_naming_both_keys_with_nothing_sent() {
    let base = tempfile::tempdir().unwrap();
    // The relay's real key (what the user pinned), the impostor's, a third.
    let pinned_dir = base.path().join("pinned");
    let pinned = CertStore::load(CertSource::Generated {
        dir: pinned_dir.clone(),
        hosts: vec!["localhost".into()],
    })
    .unwrap()
    .fingerprint();
    let impostor_dir = base.path().join("impostor");
    drop(
        CertStore::load(CertSource::Generated {
            dir: impostor_dir.clone(),
            hosts: vec!["localhost".into()],
        })
        .unwrap(),
    );
    let third_dir = base.path().join("third");
    drop(
        CertStore::load(CertSource::Generated {
            dir: third_dir.clone(),
            hosts: vec!["localhost".into()],
        })
        .unwrap(),
    );
    let now = sotto_relay_now();
    let sign = |by: &Path, to: &Path, not_after: u64| {
        sotto_relay::tls::sign_handover(&private_key(by), &spki(to), not_after)
            .unwrap()
            .frame()
    };
    let challenge = RelayFrame::Challenge { nonce: [7; 32] };
    let forged = {
        let RelayFrame::KeyHandover {
            old_key,
            new_key,
            not_after,
            scheme,
            signature,
        } = sign(&pinned_dir, &impostor_dir, now + 3600)
        else {
            unreachable!()
        };
        let mut signature = signature.to_vec();
        let last = signature.len() - 1;
        signature[last] ^= 1;
        RelayFrame::KeyHandover {
            old_key,
            new_key,
            not_after,
            scheme,
            signature: signature.into(),
        }
    };
    let cases: Vec<(&str, Vec<RelayFrame>)> = vec![
        ("no hand-over", vec![challenge.clone()]),
        ("nothing at all", vec![]),
        ("a forged signature", vec![forged, challenge.clone()]),
        (
            "an expired hand-over",
            vec![sign(&pinned_dir, &impostor_dir, now - 1), challenge.clone()],
        ),
        (
            "a hand-over to another key",
            vec![sign(&pinned_dir, &third_dir, now + 3600), challenge.clone()],
        ),
        (
            "a hand-over from another key",
            vec![
                sign(&third_dir, &impostor_dir, now + 3600),
                challenge.clone(),
            ],
        ),
    ];
    for (number, (case, frames)) in cases.into_iter().enumerate() {
        let (port, received, presented) = impostor(&impostor_dir, frames).await;
        let address = RelayAddress {
            host: "127.0.0.1".into(),
            port,
            fingerprint: pinned,
            alternates: Vec::new(),
        };
        let profile = base.path().join(format!("alice{number}"));
        let alice = account(&profile, "alice", "alice").await;
        let mut config = Config::new(alice, address);
        config.limits.network.answer = Duration::from_millis(500);
        let (state, _) = outcome(config).await;
        let Connection::Failed { reason } = state else {
            panic!("{case}: {state:?}")
        };
        assert!(
            reason.contains(&fingerprint_text(&pinned))
                && reason.contains(&fingerprint_text(&presented)),
            "{case}: {reason}"
        );
        assert_eq!(
            received.await.unwrap(),
            0,
            "{case}: the client sent something"
        );
        assert!(
            !servers_txt(&profile).contains(&fingerprint_text(&presented)),
            "{case}"
        );
    }
}

fn sotto_relay_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        handshake: Duration::from_millis(500),
        answer: Duration::from_millis(500),
        write: Duration::from_millis(500),
        keepalive: Duration::from_millis(700),
        dead_after: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn a_relay_that_accepts_and_never_answers_times_out_and_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            sockets.push(socket);
        }
    });
    let address = RelayAddress {
        host: "127.0.0.1".into(),
        port,
        fingerprint: [1; 32],
        alternates: Vec::new(),
    };
    let error = tokio::time::timeout(
        PATIENCE,
        tls::open(&address, tls::Unpinned::Refuse, &short()),
    )
    .await
    .expect("tls::open has no handshake timeout")
    .unwrap_err();
    assert!(
        matches!(
            error,
            tls::ConnectError::TimedOut {
                step: tls::Step::Handshake,
                ..
            }
        ),
        "{error}"
    );

    // The session reports it and retries (it is not fatal).
    let base = tempfile::tempdir().unwrap();
    let alice = account(&base.path().join("alice"), "alice", "alice").await;
    let mut config = Config::new(alice, address);
    config.limits.network = short();
    let mut updates = Box::pin(session::run(config));
    let reconnecting = tokio::time::timeout(PATIENCE, async {
        while let Some(update) = updates.next().await {
            if let Update::Connection(Connection::Reconnecting { reason, .. }) = update {
                return reason;
            }
        }
        panic!("the session ended")
    })
    .await
    .expect("the session hung in the handshake");
    assert!(reconnecting.contains("TLS handshake"), "{reconnecting}");
    held.abort();
}

/// Forwards connections to `target`; once `stall` is set, stops reading
/// from the first client (its writes then block once the buffers fill)
/// while still forwarding what the relay sends it.
async fn stalling_proxy(target: u16, stall: Arc<AtomicBool>) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let relay = TcpStream::connect(("127.0.0.1", target)).await.unwrap();
            let stalls = std::mem::replace(&mut first, false);
            let stall = Arc::clone(&stall);
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_relay, mut to_relay) = relay.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_relay, &mut to_client).await;
                });
                let mut buf = vec![0; 16 * 1024];
                loop {
                    if stalls && stall.load(Ordering::SeqCst) {
                        // Hold the connection open and read nothing more.
                        std::future::pending::<()>().await;
                    }
                    match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to_relay.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_relay_that_stops_reading_is_given_up_within_the_dead_connection_bound() {
    let base = tempfile::tempdir().unwrap();
    let relay = relay(&base.path().join("relay")).await;
    let mut bob = Peer::join(base.path(), "bob", &relay.address).await;
    let stall = Arc::new(AtomicBool::new(false));
    let mut through_proxy = relay.address.clone();
    through_proxy.port = stalling_proxy(relay.address.port, Arc::clone(&stall)).await;
    let alice_account = account(&base.path().join("alice"), "alice", "alice").await;
    let mut alice = Peer::connect_with(alice_account, &through_proxy, |config| {
        config.limits.network = short();
    })
    .await;
    bob.expect_members("lobby", &["alice", "bob"]).await;
    alice.expect_members("lobby", &["alice", "bob"]).await;

    // The relay stops reading alice; she sends far more than the buffers hold.
    stall.store(true, Ordering::SeqCst);
    let big = "x".repeat(400 * 1024);
    for _ in 0..40 {
        alice.send(lobby(), &big);
    }
    let update = alice
        .expect(|u| matches!(u, Update::Connection(Connection::Reconnecting { .. })))
        .await;
    let Update::Connection(Connection::Reconnecting { reason, .. }) = update else {
        unreachable!()
    };
    assert_eq!(reason, "the relay stopped reading what this client sends");
    // ...and comes back (the proxy reads new connections normally).
    alice.expect_connected().await;
}

/// `tls::connect` completes a handshake only with the key the address
/// pins, or with the exact certificate an address made before key pins
/// names; any other key is refused, naming both.
#[tokio::test]
async fn the_pinned_connector_accepts_only_the_pinned_key_or_certificate() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(temp.path()).await;
    assert!(tls::connect(&relay.address).await.is_ok());

    let presented = tls::open(&relay.address, tls::Unpinned::Refuse, &Timeouts::default())
        .await
        .unwrap()
        .presented;
    assert_eq!(presented.key, relay.address.fingerprint);
    let mut old_pin = relay.address.clone();
    old_pin.fingerprint = presented.certificate;
    assert!(
        tls::connect(&old_pin).await.is_ok(),
        "an address pinning the certificate itself"
    );

    let mut other = relay.address.clone();
    other.fingerprint = [7; 32];
    match tls::connect(&other).await {
        Err(tls::ConnectError::CertificateMismatch {
            expected,
            presented,
        }) => assert_eq!((expected, presented), ([7; 32], relay.address.fingerprint)),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a key other than the pinned one was accepted"),
    }
}

/// A cluster's address pins one key for all its hosts (protocol.md 9.1):
/// a host that presents another key is refused, naming both keys, with
/// nothing sent, and the client does not go on to the next host, which
/// would make any host an address lists a way around its pin. A host that
/// cannot be reached is skipped for the next, which connects.
#[tokio::test]
async fn every_host_of_a_cluster_address_must_present_the_pinned_key() {
    let base = tempfile::tempdir().unwrap();
    let good = relay(&base.path().join("good")).await;
    let other = relay(&base.path().join("other")).await;
    let pinned = good.address.fingerprint;
    let presented = other.address.fingerprint;
    assert_ne!(pinned, presented);
    let cluster = |first: (String, u16)| RelayAddress {
        host: first.0,
        port: first.1,
        fingerprint: pinned,
        alternates: vec![(good.address.host.clone(), good.address.port)],
    };

    // The first host has another key: refused, the second never tried.
    let address = cluster((other.address.host.clone(), other.address.port));
    let profile = base.path().join("alice");
    let mut config = Config::new(account(&profile, "alice", "alice").await, address);
    config.limits.prekeys = sotto_testkit::prekey_pool();
    let (state, seen) = outcome(config).await;
    let Connection::Failed { reason } = state else {
        panic!("{state:?}: {seen:#?}")
    };
    assert!(
        reason.contains(&fingerprint_text(&pinned))
            && reason.contains(&fingerprint_text(&presented)),
        "{reason}"
    );
    assert!(
        !seen
            .iter()
            .any(|u| matches!(u, Update::Connection(Connection::Connected { .. }))),
        "{seen:#?}"
    );

    // The first host is down: the next one, with the pinned key, connects.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let address = cluster(("127.0.0.1".into(), dead_port));
    let profile = base.path().join("bob");
    let mut config = Config::new(account(&profile, "bob", "bob").await, address);
    config.limits.prekeys = sotto_testkit::prekey_pool();
    let (state, seen) = outcome(config).await;
    assert!(
        matches!(state, Connection::Connected { .. }),
        "{state:?}: {seen:#?}"
    );
}
