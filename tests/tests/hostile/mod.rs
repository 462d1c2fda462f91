//! A hostile relay for tests: a man in the middle between real clients and
//! the real relay, run by whoever runs the relay (it holds the relay's
//! certificate and key, so clients pinning the relay accept it, and the
//! relay accepts their registration proofs).
//!
//! Every frame is decoded with `sotto-proto` in both directions and passed
//! through [`Rule`]s: declarative descriptions of what to do to which
//! frames (drop, hold for later, duplicate, rewrite, change raw bytes).
//! The test can also inject frames or raw bytes towards any client, and
//! read a log of everything that passed.
#![allow(dead_code, unreachable_pub)] // each scenario uses part of it

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sotto_crypto::{Announcement, PeerBody, PublicIdentity};
use sotto_proto::{
    ClientFrame, Destination, RelayAddress, RelayFrame, UserName, decode_payload, encode_frame,
};
use sotto_relay::{CertSource, CertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Which way a frame travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From a client to the relay.
    Up,
    /// From the relay to a client.
    Down,
}

/// A decoded frame.
#[derive(Clone, Debug)]
pub enum Frame {
    /// From a client.
    Client(ClientFrame),
    /// From the relay.
    Relay(RelayFrame),
}

/// What a rule does to the frames it matches.
pub enum Act {
    /// Never deliver them.
    Drop,
    /// Keep them until [`Hostile::release`].
    Hold,
    /// Deliver them twice.
    Duplicate,
    /// Deliver these frames instead (none, one or several).
    Rewrite(Box<dyn Fn(Frame) -> Vec<Frame> + Send>),
    /// Deliver these bytes (the payload: version byte and body) instead.
    Bytes(Box<dyn Fn(Vec<u8>) -> Vec<u8> + Send>),
}

/// One attack: which frames, on whose connection, and what to do.
pub struct Rule {
    dir: Dir,
    user: Option<String>,
    matches: Box<dyn Fn(&Frame) -> bool + Send>,
    skip: usize,
    take: usize,
    act: Act,
    seen: usize,
}

impl Rule {
    /// Frames from the relay to `user`'s client.
    pub fn down(user: &str) -> Rule {
        Rule::new(Dir::Down, Some(user))
    }

    fn new(dir: Dir, user: Option<&str>) -> Rule {
        Rule {
            dir,
            user: user.map(str::to_ascii_lowercase),
            matches: Box::new(|_| true),
            skip: 0,
            take: usize::MAX,
            act: Act::Drop,
            seen: 0,
        }
    }

    /// Only frames for which `matches` holds.
    pub fn when(mut self, matches: impl Fn(&Frame) -> bool + Send + 'static) -> Rule {
        self.matches = Box::new(matches);
        self
    }

    /// Lets the first `n` matching frames through untouched.
    pub fn skip(mut self, n: usize) -> Rule {
        self.skip = n;
        self
    }

    /// Acts on `n` matching frames (after the skipped ones), then no more.
    pub fn take(mut self, n: usize) -> Rule {
        self.take = n;
        self
    }

    /// What to do.
    pub fn then(mut self, act: Act) -> Rule {
        self.act = act;
        self
    }

    /// Whether this rule acts on `frame` now (counting it).
    fn fires(&mut self, dir: Dir, user: Option<&str>, frame: &Frame) -> bool {
        if dir != self.dir
            || self.user.as_deref().is_some_and(|u| Some(u) != user)
            || !(self.matches)(frame)
        {
            return false;
        }
        self.seen += 1;
        self.seen > self.skip && self.seen - self.skip <= self.take
    }
}

// What frames are: matchers for rules.

/// The peer body of a routed frame, if it decodes.
pub fn peer_body(frame: &Frame) -> Option<PeerBody<'_>> {
    match frame {
        Frame::Relay(RelayFrame::Deliver { body, .. }) => PeerBody::decode(body).ok(),
        Frame::Client(ClientFrame::Send { body, .. }) => PeerBody::decode(body).ok(),
        _ => None,
    }
}

/// A delivery from `from` carrying a sealed message.
pub fn message_from(from: &str) -> impl Fn(&Frame) -> bool + Send + 'static {
    let from = from.to_owned();
    move |frame| {
        matches!(frame, Frame::Relay(RelayFrame::Deliver { from: f, .. }) if f.as_str().eq_ignore_ascii_case(&from))
            && matches!(peer_body(frame), Some(PeerBody::Message(_)))
    }
}

/// A pair key of `from`'s (an announcement or a pair reply) for the room
/// `room`, as the relay delivers it.
pub fn pair_key_in(from: &str, room: &str) -> impl Fn(&Frame) -> bool + Send + 'static {
    let (from, room) = (from.to_owned(), sotto_crypto::Conversation::room(room));
    move |frame| {
        matches!(frame, Frame::Relay(RelayFrame::Deliver { from: f, .. }) if f.as_str().eq_ignore_ascii_case(&from))
            && match peer_body(frame) {
                Some(PeerBody::Announcement(a)) => a.context.conversation == room,
                Some(PeerBody::PairReply(r)) => r.context.conversation == room,
                _ => false,
            }
    }
}

/// Frames from the relay that carry someone's identity: room rosters,
/// presence and directory answers.
pub fn carries_identities() -> impl Fn(&Frame) -> bool + Send + 'static {
    |frame| {
        matches!(
            frame,
            Frame::Relay(
                RelayFrame::Joined { .. } | RelayFrame::Presence { .. } | RelayFrame::Key { .. }
            )
        )
    }
}

// Rewrites.

/// Frames from the relay that announce `name` joining a room, with its
/// identity and prekeys: its `Presence { Joined }`.
pub fn joins_of(name: &str) -> impl Fn(&Frame) -> bool + Send + 'static {
    let name = name.to_ascii_lowercase();
    move |frame| {
        matches!(frame, Frame::Relay(RelayFrame::Presence { user, event: sotto_proto::PresenceEvent::Joined, .. })
            if user.as_str().eq_ignore_ascii_case(&name))
    }
}

/// Replaces the prekeys the relay hands out for `name` (in `Joined`,
/// `Presence` and `Key`) with `prekeys`.
pub fn substitute_prekeys(name: &str, prekeys: Vec<Bytes>) -> Act {
    let name = name.to_ascii_lowercase();
    Act::Rewrite(Box::new(move |frame| {
        let is = |user: &UserName| user.as_str().eq_ignore_ascii_case(&name);
        let frame = match frame {
            Frame::Relay(RelayFrame::Joined { room, mut members }) => {
                for member in &mut members {
                    if is(&member.name) {
                        member.prekeys = prekeys.clone();
                    }
                }
                Frame::Relay(RelayFrame::Joined { room, members })
            }
            Frame::Relay(RelayFrame::Presence {
                room,
                user,
                event,
                identity,
                prekeys: theirs,
            }) => Frame::Relay(RelayFrame::Presence {
                prekeys: if is(&user) { prekeys.clone() } else { theirs },
                room,
                user,
                event,
                identity,
            }),
            Frame::Relay(RelayFrame::Key {
                name: who,
                identity,
                prekeys: theirs,
            }) => Frame::Relay(RelayFrame::Key {
                prekeys: if is(&who) { prekeys.clone() } else { theirs },
                name: who,
                identity,
            }),
            other => other,
        };
        vec![frame]
    }))
}

/// Replaces `name`'s identity with `identity` wherever the relay names it
/// (roster, presence, directory).
pub fn substitute_key(name: &str, identity: &PublicIdentity) -> Act {
    let name = name.to_ascii_lowercase();
    let bytes = Bytes::from(identity.to_bytes());
    Act::Rewrite(Box::new(move |frame| {
        let is = |user: &UserName| user.as_str().eq_ignore_ascii_case(&name);
        let frame = match frame {
            Frame::Relay(RelayFrame::Joined { room, mut members }) => {
                for member in &mut members {
                    if is(&member.name) {
                        member.identity = bytes.clone();
                    }
                }
                Frame::Relay(RelayFrame::Joined { room, members })
            }
            Frame::Relay(RelayFrame::Presence {
                room,
                user,
                event,
                identity,
                prekeys,
            }) => Frame::Relay(RelayFrame::Presence {
                identity: if is(&user) {
                    identity.map(|_| bytes.clone())
                } else {
                    identity
                },
                room,
                user,
                event,
                prekeys,
            }),
            Frame::Relay(RelayFrame::Key {
                name: who,
                identity,
                prekeys,
            }) => Frame::Relay(RelayFrame::Key {
                identity: if is(&who) {
                    identity.map(|_| bytes.clone())
                } else {
                    identity
                },
                name: who,
                prekeys,
            }),
            other => other,
        };
        vec![frame]
    }))
}

/// Removes `name` from rosters and drops its presence events.
pub fn hide_member(name: &str) -> Act {
    let name = name.to_ascii_lowercase();
    Act::Rewrite(Box::new(move |frame| match frame {
        Frame::Relay(RelayFrame::Joined { room, members }) => {
            vec![Frame::Relay(RelayFrame::Joined {
                room,
                members: members
                    .into_iter()
                    .filter(|m| !m.name.as_str().eq_ignore_ascii_case(&name))
                    .collect(),
            })]
        }
        Frame::Relay(RelayFrame::Presence { ref user, .. })
            if user.as_str().eq_ignore_ascii_case(&name) =>
        {
            Vec::new()
        }
        other => vec![other],
    }))
}

/// Changes routed frames (`Deliver`) in place: where they are addressed,
/// their body, their key slot. Other frames pass as they are.
fn edit_delivery(
    edit: impl Fn(&mut Destination, &mut Bytes, &mut Option<Bytes>) + Send + 'static,
) -> Act {
    Act::Rewrite(Box::new(move |mut frame| {
        if let Frame::Relay(RelayFrame::Deliver { to, body, slot, .. }) = &mut frame {
            edit(to, body, slot);
        }
        vec![frame]
    }))
}

/// Delivers a routed frame as addressed to `to` instead.
pub fn readdress(to: Destination) -> Act {
    edit_delivery(move |dest, _, _| *dest = to.clone())
}

/// Changes the body of a routed frame.
pub fn rewrite_body(change: impl Fn(Vec<u8>) -> Vec<u8> + Send + 'static) -> Act {
    edit_delivery(move |_, body, _| *body = Bytes::from(change(body.to_vec())))
}

/// Changes the key slot of a routed frame.
pub fn rewrite_slot(change: impl Fn(Option<Vec<u8>>) -> Option<Vec<u8>> + Send + 'static) -> Act {
    edit_delivery(move |_, _, slot| {
        *slot = change(slot.take().map(|s| s.to_vec())).map(Bytes::from);
    })
}

/// A routed frame from the relay to one client, as injected.
pub fn deliver(from: &str, to: Destination, body: Vec<u8>, slot: Option<Vec<u8>>) -> RelayFrame {
    RelayFrame::Deliver {
        delivery: 0,
        from: from.parse().unwrap(),
        to,
        body: body.into(),
        slot: slot.map(Bytes::from),
    }
}

/// A session announcement as a routed body.
pub fn announcement_body(announcement: Announcement) -> Vec<u8> {
    PeerBody::Announcement(announcement).encode()
}

/// One frame that passed (or was made up), as the log keeps it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// Which way.
    pub dir: Dir,
    /// Whose connection.
    pub user: Option<String>,
    /// The frame, if it decoded.
    pub frame: Option<Frame>,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    held: Vec<(Dir, Option<String>, Vec<u8>)>,
    /// Per connected user: where to write frames for its client.
    clients: HashMap<String, mpsc::UnboundedSender<Vec<u8>>>,
    /// Per connected user: where to write frames for the relay.
    relays: HashMap<String, mpsc::UnboundedSender<Vec<u8>>>,
    log: Vec<Logged>,
}

/// The hostile relay.
pub struct Hostile {
    /// The address clients connect to: the man in the middle, with the
    /// real relay's certificate fingerprint.
    pub address: RelayAddress,
    state: Arc<Mutex<State>>,
}

/// Wire form of a payload: length prefix, then the payload.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame's payload (without the length prefix).
fn payload(frame: &Frame) -> Vec<u8> {
    let wire = match frame {
        Frame::Client(f) => encode_frame(f).unwrap(),
        Frame::Relay(f) => encode_frame(f).unwrap(),
    };
    wire[4..].to_vec()
}

impl Hostile {
    /// Starts in front of the relay whose data directory is `relay_dir`
    /// (its generated certificate and key) listening at `relay`.
    pub async fn start(relay_dir: &Path, relay: &RelayAddress) -> Hostile {
        let certs = Arc::new(
            CertStore::load(CertSource::Files {
                cert: relay_dir.join(sotto_relay::tls::GENERATED_CERT),
                key: relay_dir.join(sotto_relay::tls::GENERATED_KEY),
            })
            .unwrap(),
        );
        assert_eq!(certs.fingerprint(), relay.fingerprint);
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = RelayAddress {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
            fingerprint: relay.fingerprint,
            alternates: Vec::new(),
        };
        let state = Arc::new(Mutex::new(State::default()));
        let upstream = relay.clone();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(client) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(relay) = sotto_client::tls::connect(&upstream).await else {
                        return;
                    };
                    connection(client, relay, state).await;
                });
            }
        });
        Hostile { address, state }
    }

    /// Adds an attack.
    pub fn rule(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push(rule);
    }

    /// Stops every attack (held frames stay held).
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Delivers the held frames, in the order they were held.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap();
        let held = std::mem::take(&mut state.held);
        for (dir, user, payload) in held {
            state.write(dir, user.as_deref(), &payload);
        }
    }

    /// How many frames are held.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held.len()
    }

    /// Sends `frame` to `user`'s client as if from the relay.
    pub fn inject(&self, user: &str, frame: RelayFrame) {
        self.inject_bytes(user, &payload(&Frame::Relay(frame)));
    }

    /// Sends `payload` (version byte and body) to `user`'s client.
    pub fn inject_bytes(&self, user: &str, payload: &[u8]) {
        self.inject_wire(user, &framed(payload));
    }

    /// Sends raw bytes, length prefix included, to `user`'s client.
    pub fn inject_wire(&self, user: &str, wire: &[u8]) {
        let state = self.state.lock().unwrap();
        let link = state
            .clients
            .get(&user.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("{user} is not connected"));
        let _ = link.send(wire.to_vec());
    }

    /// Every frame logged so far that `select` picks.
    pub fn logged<T>(&self, select: impl Fn(&Logged) -> Option<T>) -> Vec<T> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter_map(select)
            .collect()
    }

    /// Whether `needle` appears in any frame that passed, either way
    /// (before any rule changed it).
    pub fn saw_bytes(&self, needle: &[u8]) -> bool {
        self.state.lock().unwrap().log.iter().any(|logged| {
            logged.frame.as_ref().is_some_and(|frame| {
                payload(frame)
                    .windows(needle.len())
                    .any(|window| window == needle)
            })
        })
    }

    /// Frames the relay delivered to `user` (before any rule changed them).
    pub fn delivered_to(&self, user: &str) -> Vec<RelayFrame> {
        let user = user.to_ascii_lowercase();
        self.logged(|l| match (&l.dir, &l.user, &l.frame) {
            (Dir::Down, Some(u), Some(Frame::Relay(f))) if *u == user => Some(f.clone()),
            _ => None,
        })
    }

    /// Frames `user`'s client sent (before any rule changed them).
    pub fn sent_by(&self, user: &str) -> Vec<ClientFrame> {
        let user = user.to_ascii_lowercase();
        self.logged(|l| match (&l.dir, &l.user, &l.frame) {
            (Dir::Up, Some(u), Some(Frame::Client(f))) if *u == user => Some(f.clone()),
            _ => None,
        })
    }
}

impl State {
    fn write(&self, dir: Dir, user: Option<&str>, payload: &[u8]) {
        let links = match dir {
            Dir::Up => &self.relays,
            Dir::Down => &self.clients,
        };
        if let Some(link) = user.and_then(|u| links.get(u)) {
            let _ = link.send(framed(payload));
        }
    }

    /// Passes one payload through the rules and on.
    fn pass(&mut self, dir: Dir, user: Option<&str>, payload: Vec<u8>) {
        let frame = match dir {
            Dir::Up => decode_payload::<ClientFrame>(&payload)
                .ok()
                .map(Frame::Client),
            Dir::Down => decode_payload::<RelayFrame>(&payload)
                .ok()
                .map(Frame::Relay),
        };
        self.log.push(Logged {
            dir,
            user: user.map(str::to_owned),
            frame: frame.clone(),
        });
        let Some(frame) = frame else {
            self.write(dir, user, &payload);
            return;
        };
        let fired = self
            .rules
            .iter_mut()
            .position(|rule| rule.fires(dir, user, &frame));
        let Some(index) = fired else {
            self.write(dir, user, &payload);
            return;
        };
        let out: Vec<Vec<u8>> = match &self.rules[index].act {
            Act::Drop => Vec::new(),
            Act::Hold => {
                self.held.push((dir, user.map(str::to_owned), payload));
                Vec::new()
            }
            Act::Duplicate => vec![payload.clone(), payload],
            Act::Rewrite(rewrite) => rewrite(frame).iter().map(self::payload).collect(),
            Act::Bytes(change) => vec![change(payload)],
        };
        for payload in out {
            self.write(dir, user, &payload);
        }
    }
}

/// Reads one payload: length prefix, then that many bytes.
async fn read_payload<R: AsyncReadExt + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await.ok()?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > sotto_proto::MAX_FRAME_LEN {
        return None;
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

async fn connection<C, R>(client: C, relay: R, state: Arc<Mutex<State>>)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    R: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut relay_read, mut relay_write) = tokio::io::split(relay);
    let (to_client, mut for_client) = mpsc::unbounded_channel::<Vec<u8>>();
    let (to_relay, mut for_relay) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(wire) = for_client.recv().await {
            if client_write.write_all(&wire).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    });
    tokio::spawn(async move {
        while let Some(wire) = for_relay.recv().await {
            if relay_write.write_all(&wire).await.is_err() {
                break;
            }
        }
        let _ = relay_write.shutdown().await;
    });
    // Whose connection this is: known once the client registers.
    let user: Arc<Mutex<Option<String>>> = Arc::default();
    let down_user = user.clone();
    let down_state = state.clone();
    let early_client = to_client.clone();
    let down = tokio::spawn(async move {
        while let Some(payload) = read_payload(&mut relay_read).await {
            let who = down_user.lock().unwrap().clone();
            match who {
                Some(who) => down_state
                    .lock()
                    .unwrap()
                    .pass(Dir::Down, Some(&who), payload),
                // Before registration (the challenge): straight through.
                None => {
                    let _ = early_client.send(framed(&payload));
                }
            }
        }
    });
    while let Some(payload) = read_payload(&mut client_read).await {
        let who = user.lock().unwrap().clone();
        let who = match who {
            Some(who) => who,
            None => {
                if let Ok(ClientFrame::Register { name, .. }) = decode_payload(&payload) {
                    let name = name.as_str().to_ascii_lowercase();
                    let mut s = state.lock().unwrap();
                    s.clients.insert(name.clone(), to_client.clone());
                    s.relays.insert(name.clone(), to_relay.clone());
                    *user.lock().unwrap() = Some(name.clone());
                    name
                } else {
                    let _ = to_relay.send(framed(&payload));
                    continue;
                }
            }
        };
        state.lock().unwrap().pass(Dir::Up, Some(&who), payload);
    }
    down.abort();
}
