//! The connection loop: connect with the certificate pinned, register,
//! move frames between the relay and the engine, reconnect with backoff.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sotto_proto::{ClientCodec, ClientFrame, ErrorCode, RelayFrame};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

use super::engine::{Engine, Flow, Out};
use super::{Command, Config, Connection, Update};
use crate::backoff::Backoff;
use crate::servers::KnownServers;
use crate::tls::{self, ConnectError};

/// How long to wait for the challenge and for the answer to `Register`.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(15);
/// Send a `Ping` after this long without hearing from the relay...
const KEEPALIVE: Duration = Duration::from_secs(30);
/// ...and give the connection up after this long.
const DEAD_AFTER: Duration = Duration::from_secs(90);
/// How often housekeeping runs.
const TICK: Duration = Duration::from_secs(1);

type Framed_ = Framed<TlsStream<TcpStream>, ClientCodec>;

/// Why a connection ended.
enum End {
    /// Retrying may help.
    Lost(String),
    /// Retrying cannot help.
    Fatal(String),
    /// The user quit (or dropped every handle).
    Quit,
}

/// Runs the session on a thread of its own.
pub(super) fn spawn(
    config: Config,
    commands: mpsc::UnboundedReceiver<Command>,
    updates: mpsc::Sender<Update>,
) {
    let spawned = std::thread::Builder::new()
        .name("sotto-session".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(drive(config, commands, updates)),
                Err(e) => {
                    let _ = updates.try_send(Update::Connection(Connection::Failed {
                        reason: format!("cannot start the session: {e}"),
                    }));
                }
            }
        });
    // If no thread could be started, the closure (and with it the updates
    // channel) is dropped: the stream ends right after `Ready`.
    drop(spawned);
}

struct Session {
    config: Config,
    engine: Engine,
    commands: mpsc::UnboundedReceiver<Command>,
    updates: mpsc::Sender<Update>,
}

impl Session {
    /// Sends updates to the UI, waiting while its channel is full (so the
    /// read loop, which calls this before reading the next frame, makes
    /// the relay wait too); false once nobody listens.
    ///
    /// Presence notices are the exception: when the channel is full they
    /// are dropped, since the member lists that follow them carry the same
    /// facts.
    async fn emit(&self, out: &mut Out) -> bool {
        for update in out.updates.drain(..) {
            let update = match update {
                presence @ Update::Presence { .. } => match self.updates.try_send(presence) {
                    Ok(()) => continue,
                    Err(mpsc::error::TrySendError::Full(_)) => continue,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },
                other => other,
            };
            if self.updates.send(update).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn state(&self, state: Connection) -> bool {
        self.updates.send(Update::Connection(state)).await.is_ok()
    }
}

async fn drive(
    config: Config,
    commands: mpsc::UnboundedReceiver<Command>,
    updates: mpsc::Sender<Update>,
) {
    let started = Engine::new(&config.account, &config.rooms, config.limits.clone());
    let (engine, history) = match started {
        Ok(started) => started,
        Err(e) => {
            let _ = updates
                .send(Update::Connection(Connection::Failed {
                    reason: format!("cannot read the local database: {e}"),
                }))
                .await;
            return;
        }
    };
    for update in history {
        if updates.send(update).await.is_err() {
            return;
        }
    }
    let mut session = Session {
        config,
        engine,
        commands,
        updates,
    };
    let mut backoff = Backoff::default();
    loop {
        if !session.state(Connection::Connecting).await {
            break;
        }
        let attempt = Instant::now();
        let reason = match connect(&mut session).await {
            Ok(framed) => match serve(&mut session, framed).await {
                End::Quit => break,
                End::Lost(reason) => reason,
                End::Fatal(reason) => {
                    session.state(Connection::Failed { reason }).await;
                    break;
                }
            },
            Err(End::Lost(reason)) => reason,
            Err(End::Fatal(reason)) => {
                session.state(Connection::Failed { reason }).await;
                break;
            }
            Err(End::Quit) => break,
        };
        session.engine.on_disconnected();
        if session.engine.quitting() {
            break;
        }
        let after = backoff.next_delay(attempt.elapsed(), &mut rand::rng());
        if !session
            .state(Connection::Reconnecting { after, reason })
            .await
        {
            break;
        }
        if wait(&mut session, after).await == Flow::Quit {
            break;
        }
    }
    session.engine.shutdown();
}

/// Waits `delay` before reconnecting, still taking commands (messages sent
/// now are queued until the connection is back).
async fn wait(session: &mut Session, delay: Duration) -> Flow {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return Flow::Continue,
            command = session.commands.recv() => {
                let Some(command) = command else { return Flow::Quit };
                let mut out = Out::default();
                let flow = session.engine.handle_command(command, &mut out);
                if !session.emit(&mut out).await || flow == Flow::Quit {
                    return Flow::Quit;
                }
            }
        }
    }
}

/// Connects, checks the relay against the known servers, and registers.
async fn connect(session: &mut Session) -> Result<Framed_, End> {
    let relay = session.config.relay.clone();
    let servers_path = session
        .config
        .account
        .profile()
        .dir()
        .join(crate::servers::SERVERS_FILE);
    let mut servers = KnownServers::load(&servers_path)
        .map_err(|e| End::Fatal(format!("{}: {e}", servers_path.display())))?;
    servers
        .check(&relay)
        .map_err(|e| End::Fatal(e.to_string()))?;

    let tls = tls::connect(&relay).await.map_err(|e| match e {
        ConnectError::CertificateMismatch { .. } | ConnectError::InvalidHost(_) => {
            End::Fatal(e.to_string())
        }
        _ => End::Lost(e.to_string()),
    })?;
    let mut framed = Framed::new(tls, ClientCodec::new());
    let challenge = match next_frame(&mut framed).await? {
        RelayFrame::Challenge { nonce } => nonce,
        other => {
            return Err(End::Lost(format!(
                "unexpected first frame from the relay: {}",
                kind(&other)
            )));
        }
    };
    let account = &session.config.account;
    let proof = account
        .identity()
        .sign_registration(
            &mut rand::rng(),
            &relay.fingerprint,
            &challenge,
            account.name().as_str(),
        )
        .map_err(|e| End::Fatal(format!("cannot sign the registration: {e}")))?;
    framed
        .send(ClientFrame::Register {
            name: account.name().clone(),
            identity: Bytes::from(account.identity().public().to_bytes()),
            proof: Bytes::from(proof),
        })
        .await
        .map_err(|e| End::Lost(e.to_string()))?;
    match next_frame(&mut framed).await? {
        RelayFrame::Registered { name } => {
            // The certificate is now known to be this relay's: pin it.
            servers
                .remember(&relay)
                .map_err(|e| End::Fatal(e.to_string()))?;
            let mut out = Out::default();
            session.engine.on_registered(name.clone(), &mut out);
            for frame in out.frames.drain(..) {
                framed
                    .feed(frame)
                    .await
                    .map_err(|e| End::Lost(e.to_string()))?;
            }
            SinkExt::<ClientFrame>::flush(&mut framed)
                .await
                .map_err(|e| End::Lost(e.to_string()))?;
            if !session
                .state(Connection::Connected {
                    name: name.to_string(),
                })
                .await
                || !session.emit(&mut out).await
            {
                return Err(End::Quit);
            }
            Ok(framed)
        }
        RelayFrame::Error { code, message, .. } => Err(match code {
            ErrorCode::NameTaken | ErrorCode::BadProof | ErrorCode::UnsupportedVersion => {
                End::Fatal(format!("the relay refused the registration: {message}"))
            }
            _ => End::Lost(format!("the relay refused the registration: {message}")),
        }),
        other => Err(End::Lost(format!(
            "unexpected answer to the registration: {}",
            kind(&other)
        ))),
    }
}

async fn next_frame(framed: &mut Framed_) -> Result<RelayFrame, End> {
    match tokio::time::timeout(REGISTRATION_TIMEOUT, framed.next()).await {
        Err(_) => Err(End::Lost("the relay did not answer in time".to_owned())),
        Ok(None) => Err(End::Lost("the relay closed the connection".to_owned())),
        Ok(Some(Err(e))) => Err(End::Lost(format!("bad frame from the relay: {e}"))),
        Ok(Some(Ok(frame))) => Ok(frame),
    }
}

/// The frame's kind, for messages (never its content).
fn kind(frame: &RelayFrame) -> &'static str {
    match frame {
        RelayFrame::Challenge { .. } => "Challenge",
        RelayFrame::Registered { .. } => "Registered",
        RelayFrame::Joined { .. } => "Joined",
        RelayFrame::Left { .. } => "Left",
        RelayFrame::Rooms { .. } => "Rooms",
        RelayFrame::Users { .. } => "Users",
        RelayFrame::Key { .. } => "Key",
        RelayFrame::Deliver { .. } => "Deliver",
        RelayFrame::Presence { .. } => "Presence",
        RelayFrame::Sent { .. } => "Sent",
        RelayFrame::Error { .. } => "Error",
        RelayFrame::Ping { .. } => "Ping",
        RelayFrame::Pong { .. } => "Pong",
        RelayFrame::ShuttingDown => "ShuttingDown",
    }
}

/// Serves one registered connection until it ends.
async fn serve(session: &mut Session, mut framed: Framed_) -> End {
    let mut ticker = tokio::time::interval(TICK);
    let mut heard = Instant::now();
    let mut pinged = false;
    loop {
        let mut out = Out::default();
        let mut flow = Flow::Continue;
        tokio::select! {
            frame = framed.next() => match frame {
                Some(Ok(RelayFrame::ShuttingDown)) => {
                    return End::Lost("the relay is shutting down".to_owned());
                }
                Some(Ok(frame)) => {
                    heard = Instant::now();
                    pinged = false;
                    session.engine.handle_frame(frame, &mut out);
                }
                Some(Err(e)) => return End::Lost(format!("bad frame from the relay: {e}")),
                None => return End::Lost("the relay closed the connection".to_owned()),
            },
            command = session.commands.recv() => match command {
                Some(command) => flow = session.engine.handle_command(command, &mut out),
                None => flow = Flow::Quit,
            },
            _ = ticker.tick() => {
                let now = Instant::now();
                session.engine.tick(now, &mut out);
                let quiet = now.duration_since(heard);
                if quiet >= DEAD_AFTER {
                    return End::Lost("the relay stopped answering".to_owned());
                }
                if quiet >= KEEPALIVE && !pinged {
                    pinged = true;
                    out.frames.push(ClientFrame::Ping { nonce: rand::random() });
                }
            }
        }
        if session.engine.should_quit(Instant::now()) {
            session.engine.report_unsent(&mut out);
            flow = Flow::Quit;
        }
        if flow == Flow::Quit {
            out.frames.push(ClientFrame::Bye);
        }
        for frame in out.frames.drain(..) {
            if let Err(e) = framed.feed(frame).await {
                return End::Lost(e.to_string());
            }
        }
        if let Err(e) = SinkExt::<ClientFrame>::flush(&mut framed).await {
            return End::Lost(e.to_string());
        }
        if !session.emit(&mut out).await || flow == Flow::Quit {
            return End::Quit;
        }
    }
}
