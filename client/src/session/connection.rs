//! The connection loop: connect with the certificate pinned, register,
//! move frames between the relay and the engine, reconnect with backoff.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use sotto_proto::{ClientCodec, ClientFrame, ErrorCode, ProtoError, RelayFrame, RoomName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

use super::engine::{Engine, Flow, Out};
use super::{Command, Config, Connection, RelayKeyMoved, Update};
use crate::servers::{KnownServers, Move};
use crate::tls::{self, ConnectError, Handover, PinMatch, Timeouts, Unpinned};

// The time limits on the network (connect, handshake, answers, writes,
// keepalive, the dead-connection bound) are `crate::tls::Timeouts`, in
// `SessionLimits::network`.
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
    /// Member lists the front end had no room for, newest per room: each
    /// is a whole list that replaces the one before, so only the newest
    /// is kept, and sent as soon as there is room.
    deferred: BTreeMap<RoomName, Update>,
    /// Which host of the relay's address to try first (a cluster's address
    /// lists several): the one last connected to, or the next after it
    /// once that connection was lost.
    host: usize,
}

impl Session {
    /// Sends updates to the UI, waiting while its channel is full (so the
    /// read loop, which calls this before reading the next frame, makes
    /// the relay wait too); false once nobody listens.
    ///
    /// Presence notices and member lists are the exception, so a flood of
    /// them cannot stop the session reading: when the channel is full, a
    /// presence notice is dropped (the member lists carry the same facts)
    /// and a member list waits in `deferred`, replaced by any newer list of
    /// its room, until there is room. Every other update first waits for
    /// the deferred lists to go out, so none is overtaken by one of them.
    async fn emit(&mut self, out: &mut Out) -> bool {
        for update in out.updates.drain(..) {
            match update {
                presence @ Update::Presence { .. } => match self.updates.try_send(presence) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },
                Update::Members { room, members } => {
                    let list = Update::Members {
                        room: room.clone(),
                        members,
                    };
                    self.deferred.insert(room, list);
                    if !self.try_flush() {
                        return false;
                    }
                }
                other => {
                    if !self.flush().await || self.updates.send(other).await.is_err() {
                        return false;
                    }
                }
            }
        }
        self.try_flush()
    }

    /// Sends the deferred member lists the channel has room for; false once
    /// nobody listens.
    fn try_flush(&mut self) -> bool {
        while let Some((room, list)) = self.deferred.pop_first() {
            match self.updates.try_send(list) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(list)) => {
                    self.deferred.insert(room, list);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }

    /// Sends every deferred member list, waiting for room; false once
    /// nobody listens.
    async fn flush(&mut self) -> bool {
        while let Some((_, list)) = self.deferred.pop_first() {
            if self.updates.send(list).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn state(&mut self, state: Connection) -> bool {
        self.flush().await && self.updates.send(Update::Connection(state)).await.is_ok()
    }
}

async fn drive(
    config: Config,
    commands: mpsc::UnboundedReceiver<Command>,
    updates: mpsc::Sender<Update>,
) {
    super::clock::use_on_this_thread(config.limits.clock.clone());
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
    let mut engine = engine;
    if let Some(problem) = engine.prepare_prekey().await
        && updates.send(Update::Error(problem)).await.is_err()
    {
        return;
    }
    let mut session = Session {
        config,
        engine,
        commands,
        updates,
        deferred: BTreeMap::new(),
        host: 0,
    };
    let mut backoff = session.config.limits.reconnect.clone();
    loop {
        if !session.state(Connection::Connecting).await {
            break;
        }
        let attempt = Instant::now();
        let reason = match connect(&mut session).await {
            Ok(framed) => match serve(&mut session, framed).await {
                End::Quit => break,
                End::Lost(reason) => {
                    // Its relay may be gone: the next host first.
                    session.host = session.host.wrapping_add(1);
                    reason
                }
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
/// now are queued until the connection is back); disappearing messages
/// still disappear meanwhile (the housekeeping tick).
async fn wait(session: &mut Session, delay: Duration) -> Flow {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = &mut sleep => return Flow::Continue,
            _ = ticker.tick() => {
                let mut out = Out::default();
                session.engine.expire(Instant::now(), &mut out);
                if !session.emit(&mut out).await {
                    return Flow::Quit;
                }
            }
            command = session.commands.recv() => {
                let Some(command) = command else { return Flow::Quit };
                if matches!(command, Command::Reconnect) {
                    return Flow::Continue;
                }
                let mut out = Out::default();
                let flow = session.engine.handle_command(command, &mut out);
                if !session.emit(&mut out).await || flow == Flow::Quit {
                    return Flow::Quit;
                }
            }
        }
    }
}

/// Connects, checks the relay against the known servers, follows a signed
/// key hand-over if the relay presents a new key, and registers.
async fn connect(session: &mut Session) -> Result<Framed_, End> {
    let timeouts = session.config.limits.network;
    let servers_path = session
        .config
        .account
        .profile()
        .dir()
        .join(crate::servers::SERVERS_FILE);
    let mut servers = KnownServers::load(&servers_path)
        .map_err(|e| End::Fatal(format!("{}: {e}", servers_path.display())))?;
    // The pin to check: the address's, or the key it was moved to.
    let relay = servers
        .resolve(&session.config.relay)
        .map_err(|e| End::Fatal(e.to_string()))?;

    let opened = open_any(session, &relay, &timeouts).await?;
    let presented = opened.presented;
    let mut framed = Framed::new(opened.stream, ClientCodec::new());
    let (moved, first) = match presented.matched {
        PinMatch::Key => (None, opening_frame(&mut framed, &timeouts).await?),
        PinMatch::Certificate => (
            Some(Move::Converted),
            opening_frame(&mut framed, &timeouts).await?,
        ),
        // Not the pinned key: nothing is sent until the first frame proves
        // that the pinned key handed over to this one.
        PinMatch::Neither => {
            follow_handover(&mut framed, &relay, &presented, &timeouts).await?;
            (
                Some(Move::Handover),
                opening_frame(&mut framed, &timeouts).await?,
            )
        }
    };
    // A client on the new key ignores the hand-over.
    let first = match first {
        RelayFrame::KeyHandover { .. } => opening_frame(&mut framed, &timeouts).await?,
        other => other,
    };
    let challenge = match first {
        RelayFrame::Challenge { nonce } => nonce,
        other => {
            return Err(End::Lost(format!(
                "unexpected first frame from the relay: {}",
                kind(&other)
            )));
        }
    };
    let account = &session.config.account;
    // Bound to the key this handshake presented and this client verified.
    let proof = account
        .identity()
        .sign_registration(
            &mut rand::rng(),
            &presented.key,
            &challenge,
            account.name().as_str(),
        )
        .map_err(|e| End::Fatal(format!("cannot sign the registration: {e}")))?;
    let register = ClientFrame::Register {
        name: account.name().clone(),
        identity: Bytes::from(account.identity().public().to_bytes()),
        proof: Bytes::from(proof),
    };
    write(
        &mut framed,
        [register],
        write_deadline(Instant::now(), &timeouts),
    )
    .await?;
    match next_frame(&mut framed, &timeouts).await? {
        RelayFrame::Registered {
            name,
            offline_max_age,
            blob_max_bytes,
            blob_max_age: _,
        } => {
            let mut out = Out::default();
            // The key is now known to be this relay's: pin it.
            match moved {
                None => servers
                    .remember(&relay)
                    .map_err(|e| End::Fatal(e.to_string()))?,
                Some(how) => {
                    servers
                        .follow(&relay, presented.key, how)
                        .map_err(|e| End::Fatal(format!("cannot save the known relays: {e}")))?;
                    out.updates.push(Update::RelayKeyMoved(RelayKeyMoved {
                        authority: relay.authority(),
                        from: relay.fingerprint,
                        to: presented.key,
                        how,
                        log: servers.log_path(),
                    }));
                }
            }
            // Prekeys first: the relay hands them out with the join that
            // follows (`Presence`), so members who see this client arrive
            // can wrap to them at once.
            session.engine.publish_prekeys(offline_max_age, &mut out);
            session.engine.on_registered(name.clone(), &mut out);
            session.engine.resume_transfers(blob_max_bytes, &mut out);
            let frames: Vec<ClientFrame> = out.frames.drain(..).collect();
            write(
                &mut framed,
                frames,
                write_deadline(Instant::now(), &timeouts),
            )
            .await?;
            if !session
                .state(Connection::Connected { name: name.clone() })
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

/// Opens a TLS connection to the first host of `relay` that answers, in
/// the address's order from the session's current host (a cluster's
/// relays share one key, so one pin is checked on each). A host that
/// presents another key completes the handshake and is refused right
/// after it unless the pinned key handed over to that key
/// ([`follow_handover`]): fatal, as for a single relay, never a reason to
/// try the next host. So is a host that is no host name.
async fn open_any(
    session: &mut Session,
    relay: &sotto_proto::RelayAddress,
    timeouts: &Timeouts,
) -> Result<tls::Opened, End> {
    let hosts = relay.hosts();
    let mut failures = Vec::new();
    for step in 0..hosts {
        let index = session.host.wrapping_add(step) % hosts;
        match tls::open(&relay.host_at(index), Unpinned::AwaitHandover, timeouts).await {
            Ok(opened) => {
                session.host = index;
                return Ok(opened);
            }
            Err(e @ (ConnectError::CertificateMismatch { .. } | ConnectError::InvalidHost(_))) => {
                return Err(End::Fatal(e.to_string()));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(End::Lost(failures.join("; ")))
}

/// Reads the first frame of a connection whose key is not the pinned one
/// and accepts the key only if that frame is a valid hand-over from the
/// pinned key (tls::verify_handover). Anything else, a silence or a closed
/// connection included, is the refusal of a different key: fatal, naming
/// both fingerprints, with nothing sent.
async fn follow_handover(
    framed: &mut Framed_,
    relay: &sotto_proto::RelayAddress,
    presented: &tls::Presented,
    timeouts: &Timeouts,
) -> Result<(), End> {
    let refused = |why: &str| {
        End::Fatal(format!(
            "{} ({why})",
            ConnectError::CertificateMismatch {
                expected: relay.fingerprint,
                presented: presented.key,
            }
        ))
    };
    let first = next_frame(framed, timeouts)
        .await
        .map_err(|_| refused("no key hand-over from the pinned key"))?;
    let RelayFrame::KeyHandover {
        old_key,
        new_key,
        not_after,
        scheme,
        signature,
    } = first
    else {
        return Err(refused("no key hand-over from the pinned key"));
    };
    let handover = Handover {
        old_key: &old_key,
        new_key,
        not_after,
        scheme,
        signature: &signature,
    };
    tls::verify_handover(&handover, &relay.fingerprint, &presented.key, unix_now())
        .map_err(|why| refused(&why.to_string()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The latest time a write may finish: within the write limit, and never
/// later than the dead-connection bound after `heard` (a relay that stops
/// reading is given up as one that stops answering).
fn write_deadline(heard: Instant, timeouts: &Timeouts) -> Instant {
    (Instant::now() + timeouts.write).min(heard + timeouts.dead_after)
}

/// Writes `frames` and flushes them, each frame by the time left until
/// `deadline` from when the one before it was taken: the bound is on a
/// relay that stops reading, not on the size of what is sent (a backlog
/// sent again after reconnecting can be megabytes).
async fn write(
    framed: &mut Framed_,
    frames: impl IntoIterator<Item = ClientFrame>,
    deadline: Instant,
) -> Result<(), End> {
    let allowance = deadline.saturating_duration_since(Instant::now());
    let stalled = || End::Lost("the relay stopped reading what this client sends".to_owned());
    let mut until = deadline;
    for frame in frames {
        match tokio::time::timeout_at(until.into(), framed.feed(frame)).await {
            Err(_) => return Err(stalled()),
            Ok(Err(e)) => return Err(End::Lost(e.to_string())),
            Ok(Ok(())) => until = Instant::now() + allowance,
        }
    }
    match tokio::time::timeout_at(until.into(), SinkExt::<ClientFrame>::flush(framed)).await {
        Err(_) => Err(stalled()),
        Ok(Err(e)) => Err(End::Lost(e.to_string())),
        Ok(Ok(())) => Ok(()),
    }
}

async fn next_frame(framed: &mut Framed_, timeouts: &Timeouts) -> Result<RelayFrame, End> {
    match tokio::time::timeout(timeouts.answer, framed.next()).await {
        Err(_) => Err(End::Lost("the relay did not answer in time".to_owned())),
        Ok(None) => Err(End::Lost("the relay closed the connection".to_owned())),
        Ok(Some(Err(e))) => Err(End::Lost(read_failed(&e))),
        Ok(Some(Ok(frame))) => Ok(frame),
    }
}

/// [`next_frame`] for the frames that open a connection (a hand-over, the
/// challenge): a relay that frames them in another protocol version speaks
/// that version, and retrying cannot help, so the connection fails for
/// good with words that say which side to update.
async fn opening_frame(framed: &mut Framed_, timeouts: &Timeouts) -> Result<RelayFrame, End> {
    match tokio::time::timeout(timeouts.answer, framed.next()).await {
        Ok(Some(Err(ProtoError::UnsupportedVersion(theirs)))) => {
            Err(End::Fatal(other_version(theirs)))
        }
        Err(_) => Err(End::Lost("the relay did not answer in time".to_owned())),
        Ok(None) => Err(End::Lost("the relay closed the connection".to_owned())),
        Ok(Some(Err(e))) => Err(End::Lost(read_failed(&e))),
        Ok(Some(Ok(frame))) => Ok(frame),
    }
}

/// Why a relay of protocol version `theirs` cannot be used.
fn other_version(theirs: u8) -> String {
    let ours = sotto_proto::PROTOCOL_VERSION;
    if theirs > ours {
        format!(
            "the relay speaks protocol version {theirs}, newer than this sotto's version {ours}: update sotto"
        )
    } else {
        format!(
            "the relay speaks protocol version {theirs}, older than this sotto's version {ours}: the relay must be updated"
        )
    }
}

/// Why reading from the relay failed, in words: a connection that broke is
/// not a bad frame.
fn read_failed(error: &ProtoError) -> String {
    match error {
        ProtoError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the relay closed the connection without ending it cleanly".to_owned()
        }
        ProtoError::Io(e) => format!("the connection to the relay failed: {}", e.kind()),
        other => format!("bad frame from the relay: {other}"),
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
        RelayFrame::KeyHandover { .. } => "KeyHandover",
        RelayFrame::Undelivered { .. } => "Undelivered",
        RelayFrame::PrekeyPublished { .. } => "PrekeyPublished",
        RelayFrame::ChunkStored { .. } => "ChunkStored",
        RelayFrame::Chunk { .. } => "Chunk",
        RelayFrame::BlobState { .. } => "BlobState",
        RelayFrame::BlobRefused { .. } => "BlobRefused",
    }
}

/// `first` and the frames already received after it, taken without
/// waiting, up to `limit` in all (a read batch); and how the connection
/// ended, if it did behind them.
fn read_batch(
    framed: &mut Framed_,
    first: RelayFrame,
    limit: usize,
) -> (Vec<RelayFrame>, Option<End>) {
    let mut frames = vec![first];
    while frames.len() < limit {
        // Polled once: a frame already buffered, or one the socket has
        // ready; never a wait.
        let end = match framed.next().now_or_never() {
            None => break,
            Some(Some(Ok(RelayFrame::ShuttingDown))) => "the relay is shutting down".to_owned(),
            Some(Some(Ok(frame))) => {
                frames.push(frame);
                continue;
            }
            Some(Some(Err(e))) => read_failed(&e),
            Some(None) => "the relay closed the connection".to_owned(),
        };
        return (frames, Some(End::Lost(end)));
    }
    (frames, None)
}

/// Serves one registered connection until it ends.
///
/// The frames of one read are one store batch ([`Engine::handle_frames`]):
/// what they produce is written (acknowledgements) and shown (messages)
/// only after the batch is durably committed.
async fn serve(session: &mut Session, mut framed: Framed_) -> End {
    let timeouts = session.config.limits.network;
    let batch_limit = session.config.limits.read_batch.max(1);
    let mut ticker = tokio::time::interval(TICK);
    let mut heard = Instant::now();
    let mut pinged = false;
    loop {
        let mut out = Out::default();
        let mut flow = Flow::Continue;
        let mut ended = None;
        tokio::select! {
            frame = framed.next() => match frame {
                Some(Ok(RelayFrame::ShuttingDown)) => {
                    return End::Lost("the relay is shutting down".to_owned());
                }
                Some(Ok(frame)) => {
                    heard = Instant::now();
                    pinged = false;
                    let (frames, end) = read_batch(&mut framed, frame, batch_limit);
                    session.engine.handle_frames(frames, &mut out);
                    ended = end;
                }
                Some(Err(e)) => return End::Lost(read_failed(&e)),
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
                if quiet >= timeouts.dead_after {
                    return End::Lost("the relay stopped answering".to_owned());
                }
                if quiet >= timeouts.keepalive && !pinged {
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
        let frames: Vec<ClientFrame> = out.frames.drain(..).collect();
        let written = write(&mut framed, frames, write_deadline(heard, &timeouts)).await;
        // What the batch stored is shown even if its acknowledgements could
        // not be written: the relay then delivers it again, and the copy
        // is dropped as a replay, so this is the only time it is shown.
        let shown = session.emit(&mut out).await;
        // A quit ends the session even if its `Bye` could not be written
        // (the connection died meanwhile): it must not reconnect.
        if !shown || flow == Flow::Quit {
            return End::Quit;
        }
        if let Err(End::Lost(reason) | End::Fatal(reason)) = written {
            return End::Lost(reason);
        }
        if let Some(end) = ended {
            return end;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn a_broken_connection_is_not_called_a_bad_frame() {
        let eof = ProtoError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/",
        ));
        assert_eq!(
            read_failed(&eof),
            "the relay closed the connection without ending it cleanly"
        );
        let reset = ProtoError::Io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            read_failed(&reset),
            "the connection to the relay failed: connection reset"
        );
        assert_eq!(
            read_failed(&ProtoError::UnsupportedVersion(4)),
            "bad frame from the relay: unsupported protocol version 4 (this build speaks version 3)"
        );
    }

    #[test]
    fn a_relay_of_another_protocol_version_is_named_with_the_side_to_update() {
        assert_eq!(
            other_version(4),
            "the relay speaks protocol version 4, newer than this sotto's version 3: update sotto"
        );
        assert_eq!(
            other_version(2),
            "the relay speaks protocol version 2, older than this sotto's version 3: the relay must be updated"
        );
    }
}
