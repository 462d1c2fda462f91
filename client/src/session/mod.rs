//! The client's conversation with a relay, as a stream of [`Update`]s.
//!
//! [`run`] starts the session on a thread of its own (with its own tokio
//! runtime, so neither RSA work nor disk writes ever run on the caller's
//! thread or executor) and returns a stream. Its first item is
//! [`Update::Ready`] with the [`Controller`] that takes [`Command`]s; every
//! later item is something a UI shows: messages, presence, members, key
//! changes, trust, missing messages, the connection state and errors. The
//! session ends when the controller says [`Command::Quit`] or when every
//! controller and the stream are dropped.
//!
//! # Design
//!
//! - `engine` is the state machine: contacts (trust on first use), rooms
//!   and their rosters, sending sessions (started lazily, rotated whenever
//!   the set of members a message would reach differs from the session's,
//!   and after [`sotto_crypto::MAX_MESSAGES_PER_SESSION`] messages or
//!   [`sotto_crypto::MAX_SESSION_AGE`]), receiving sessions with their
//!   replay windows, history. It is synchronous, so tests drive it without
//!   a network.
//! - `connection` owns the TLS connection: connect with the relay
//!   certificate pinned, register, rejoin rooms, move frames between the
//!   relay and the engine, and reconnect with backoff when the connection
//!   fails.
//! - Everything the engine learns is stored (encrypted, [`crate::store`])
//!   before the relay is told it may forget it (`Ack`).
//! - The stream of updates is bounded ([`SessionLimits::updates`]): when
//!   the front end falls behind, the session stops reading from the relay
//!   until it catches up (so a flood waits in the relay's bounded queue,
//!   not in this process), and drops presence notices rather than wait for
//!   them ([`Update::Members`] follows with the same facts, at most once a
//!   second per room while presence keeps changing). Commands travel
//!   unbounded: only the local user sends them.
//!
//! # Example
//!
//! ```no_run
//! use futures::StreamExt;
//! use sotto_client::account::Account;
//! use sotto_client::session::{self, Chat, Config, Update};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let account = Account::unlock_default("correct horse".to_owned().into()).await?;
//! let relay = "sotto://AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA@127.0.0.1:7447".parse()?;
//! let mut updates = Box::pin(session::run(Config::new(account, relay)));
//! let Some(Update::Ready(controller)) = updates.next().await else {
//!     return Ok(());
//! };
//! controller.send(Chat::Room("lobby".parse()?), "hello")?;
//! while let Some(update) = updates.next().await {
//!     println!("{update:?}");
//! }
//! # Ok(())
//! # }
//! ```

#[doc(hidden)]
pub mod bench;
mod clock;
mod connection;
pub mod content;
mod engine;
mod prekeys;
mod problem;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use sotto_crypto::{Fingerprint, SafetyNumber};
use sotto_proto::{RelayAddress, RoomName, UserKey, UserName};

pub use sotto_proto::RoomInfo;
use tokio::sync::mpsc;

use crate::account::Account;
use crate::contacts::KeyEvent;
use crate::servers::Move;

pub use clock::Clock;
pub use engine::SessionLimits;
pub use engine::files::{human_size, safe_file_name};
pub use prekeys::PrekeySource;
pub use problem::{Answers, Problem, ProblemCode, relay_code_str};
pub use sotto_crypto::file::BlobId;

/// A conversation as a user sees it: a room, or the direct conversation
/// with one peer.
///
/// Chats compare, order and hash as the relay compares names: `@BOB` and
/// `@bob` are one chat (by [`UserKey`]), shown in the spelling it carries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Chat {
    /// A room.
    Room(RoomName),
    /// Direct messages with this user.
    Direct(UserName),
}

/// What a [`Chat`] is compared by.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
enum ChatKey<'a> {
    Room(&'a RoomName),
    Direct(UserKey),
}

impl Chat {
    fn key(&self) -> ChatKey<'_> {
        match self {
            Chat::Room(room) => ChatKey::Room(room),
            Chat::Direct(user) => ChatKey::Direct(user.key()),
        }
    }
}

impl PartialEq for Chat {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Chat::Room(a), Chat::Room(b)) => a == b,
            (Chat::Direct(a), Chat::Direct(b)) => a.same_as(b),
            _ => false,
        }
    }
}

impl Eq for Chat {}

impl PartialOrd for Chat {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Chat {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl std::hash::Hash for Chat {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl fmt::Display for Chat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chat::Room(room) => write!(f, "#{room}"),
            Chat::Direct(user) => write!(f, "@{user}"),
        }
    }
}

/// How far a peer is trusted, as shown next to its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustLevel {
    /// No key is pinned for the name yet.
    Unknown,
    /// Pinned on first sight, not verified.
    Unverified,
    /// Verified by safety number.
    Verified,
    /// A verified peer presented another key: nothing is sent to it until
    /// the user verifies or accepts the new key.
    Changed,
}

/// A room member as shown in the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The name.
    pub name: UserName,
    /// The pinned key's fingerprint, if any.
    pub fingerprint: Option<Fingerprint>,
    /// Its trust.
    pub trust: TrustLevel,
    /// Whether it is connected now (an offline member is still a member:
    /// messages are encrypted to it and wait at the relay until it is
    /// back).
    pub online: bool,
}

/// A message, sent or received.
///
/// The stored [`crate::store::StoredEntry`] with what the history does not
/// store: the sender's `trust` as of now, the display `position` (the
/// record's key) and `late`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Where it belongs.
    pub chat: Chat,
    /// Who sent it (as pinned).
    pub from: UserName,
    /// The sender's key.
    pub fingerprint: Fingerprint,
    /// The sender's trust when it arrived.
    pub trust: TrustLevel,
    /// Whether this client sent it.
    pub outgoing: bool,
    /// The sender's sequence number: messages of one sender are ordered by it.
    pub seq: u64,
    /// The sender's clock (shown, not trusted), ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// This client's clock at arrival, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// It arrived after a later message of its sender and fills a gap: show
    /// it at its place in the sender's order, before `anchor`.
    pub late: bool,
    /// Display position in the chat: messages sort by it.
    pub position: (u64, u32),
    /// The text.
    pub text: String,
    /// For a message this client sent: how far it got ([`Update::Delivery`]
    /// follows each change). `None` for a received one.
    pub delivery: Option<Delivery>,
    /// Under a disappearing-message timer: when it disappears (this
    /// client's clock, ms since the Unix epoch; [`Update::Expired`] says
    /// when it did). `None`: it stays.
    pub expires_at_ms: Option<u64>,
    /// For a file message: the file (`text` is then its name). Fetched
    /// only when asked for ([`Command::SaveFile`]); boxed, so that a
    /// text stays small.
    pub file: Option<Box<FileInfo>>,
}

/// A file sent or received in a message, as a UI shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Its name as the sender offered it (shown; saved under
    /// [`safe_file_name`] of it).
    pub name: String,
    /// Its media type as the sender guessed it (`image/png`), or empty.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The relay's id for its chunks: the id of its transfers
    /// ([`Update::Transfer`]).
    pub blob: BlobId,
}

/// A file on its way to or from the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The relay's id for the file's chunks.
    pub blob: BlobId,
    /// The chat of its message.
    pub chat: Chat,
    /// Its name.
    pub name: String,
    /// Up to the relay, or down from it.
    pub direction: Direction,
    /// Bytes of it done so far.
    pub done: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Where it is.
    pub state: TransferState,
}

/// Which way a file goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent: sealed and uploaded, then offered in a message.
    Upload,
    /// Saved: fetched, opened and checked, then written where asked.
    Download,
}

/// Where a transfer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferState {
    /// Going on (it waits while the relay is out of reach, and goes on
    /// where it stopped once it is back).
    Running,
    /// Done: an upload's message is sealed (its [`Update::Message`]
    /// follows); a download is checked and saved at `path`.
    Done {
        /// Where a download was saved.
        path: Option<PathBuf>,
    },
    /// Given up, and why; nothing of a download is left on disk.
    Failed(Box<Problem>),
}

impl Message {
    /// The message's stable id in its chat.
    pub fn id(&self) -> MessageId {
        MessageId {
            sender: self.fingerprint,
            seq: self.seq,
        }
    }
}

/// A message's stable id within its chat: its sender's key and the
/// sender's sequence number in the conversation, which the sender never
/// uses twice there, in any session (protocol.md 17.1). Shown as
/// `FINGERPRINT-HEX:SEQ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId {
    /// The sender's key.
    pub sender: Fingerprint,
    /// The sender's sequence number in the conversation.
    pub seq: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.sender.to_hex(), self.seq)
    }
}

/// How far a message this client sent got. The relay can delay or drop
/// messages, and lie about `Sent`; it cannot forge `delivered`, which
/// comes from each recipient's own authenticated receipt (protocol.md
/// 13.8).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Where it is.
    pub state: DeliveryState,
    /// Who it was sealed for (everyone who can read it), as named then.
    pub recipients: Vec<UserName>,
    /// Those of `recipients` whose receipt came: they have it stored.
    pub delivered: Vec<UserName>,
    /// Those the relay said it will not keep it for (their stored
    /// messages are at its limit).
    pub refused: Vec<UserName>,
}

/// Where a sent message is.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum DeliveryState {
    /// Not yet accepted by the relay.
    #[default]
    Pending,
    /// Accepted by the relay: stored for its recipients (the relay's word).
    Sent,
    /// Not accepted: why (the relay's refusal, with its code; boxed, so
    /// that a delivery stays small).
    Failed(Box<Problem>),
}

/// A text typed but not sealed yet (see [`Update::Queued`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    /// Where it goes.
    pub chat: Chat,
    /// When it was typed (this client's clock), ms since the Unix epoch.
    pub typed_at_ms: u64,
    /// The text.
    pub text: String,
}

/// The connection to the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Connecting (TLS handshake and registration).
    Connecting,
    /// Registered under `name`.
    Connected {
        /// The name the relay registered.
        name: UserName,
    },
    /// The connection failed or closed; the next attempt is in `after`.
    Reconnecting {
        /// Delay before the next attempt.
        after: Duration,
        /// Why the last connection ended.
        reason: String,
    },
    /// A failure retrying cannot fix (a different relay certificate, a
    /// name registered to someone else): the session has stopped.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

/// A presence change in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceChange {
    /// Joined the room.
    Joined,
    /// Left the room.
    Left,
    /// Went offline: still a member, it reads what was said when it is
    /// back.
    Disconnected,
    /// Came back online.
    Connected,
}

/// A connected user, in [`Update::Users`]: the relay's
/// [`sotto_proto::UserInfo`] with this client's trust in the user beside
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnlineUser {
    /// The name.
    pub name: UserName,
    /// The rooms the user is in.
    pub rooms: Vec<RoomName>,
    /// Its trust here.
    pub trust: TrustLevel,
}

/// Something the UI shows.
///
/// Not `#[non_exhaustive]`: both front ends match every update, so a new
/// one fails their build until each says what it shows.
///
/// `Clone`, so a front end can pass an update around as a value (the app's
/// messages are `Clone`); cloning one is cheap next to showing it.
#[derive(Clone, Debug)]
pub enum Update {
    /// The session started: commands go through this controller.
    Ready(Controller),
    /// The stored history of one chat, in display order, at start.
    History {
        /// The chat.
        chat: Chat,
        /// Its messages.
        messages: Vec<Message>,
    },
    /// The connection changed.
    Connection(Connection),
    /// This client is now in `room`.
    Joined {
        /// The room.
        room: RoomName,
    },
    /// This client left `room`.
    Left {
        /// The room.
        room: RoomName,
    },
    /// The members of `room` changed (the relay's roster, with this
    /// client's trust in each).
    Members {
        /// The room.
        room: RoomName,
        /// Every member, this client included.
        members: Vec<Member>,
    },
    /// Someone joined, left, went offline or came back in a room this
    /// client is in.
    Presence {
        /// The room.
        room: RoomName,
        /// Who.
        name: UserName,
        /// What happened.
        change: PresenceChange,
    },
    /// A message arrived or was sent.
    Message(Message),
    /// At start: the texts typed in an earlier run that are still to be
    /// sent (kept in the store's outbox: typed while disconnected, or
    /// waiting for a peer's key), in the order typed. Each is reported as
    /// a [`Update::Message`] once sealed, like one typed now.
    Queued(Vec<Queued>),
    /// A message this client sent got further (the relay accepted it, a
    /// recipient's receipt came, or it failed).
    Delivery {
        /// Its chat.
        chat: Chat,
        /// Its id.
        id: MessageId,
        /// Where it is now.
        delivery: Delivery,
    },
    /// Messages of `from` in `chat` were skipped: `count` numbers between
    /// the last one received and the one that just arrived.
    Missing {
        /// The chat.
        chat: Chat,
        /// The sender.
        from: UserName,
        /// How many are missing.
        count: u64,
    },
    /// Something claiming to come from `from` failed its checks and was
    /// dropped (forged, altered, replayed or not addressed to this client).
    Rejected {
        /// The chat it claimed, when known.
        chat: Option<Chat>,
        /// The sender the relay named.
        from: UserName,
    },
    /// `from` sent a message in `chat` without a key for this client: it
    /// does not count this client among the recipients (not verified in a
    /// verified-only room, a key it has not accepted), or the relay
    /// stripped this client's key slot. Nothing to open; not a forgery.
    NotForYou {
        /// The chat.
        chat: Chat,
        /// The sender.
        from: UserName,
    },
    /// A peer's key was pinned or changed.
    Key(KeyEvent),
    /// A peer's trust changed (verified, accepted a new key).
    Trust {
        /// Who.
        name: UserName,
        /// The trust now.
        trust: TrustLevel,
    },
    /// The safety number with `name`, as asked for.
    SafetyNumber {
        /// Who.
        name: UserName,
        /// Their pinned key (or, for a changed key, the key offered).
        fingerprint: Fingerprint,
        /// What to compare.
        safety_number: SafetyNumber,
        /// Their trust.
        trust: TrustLevel,
    },
    /// A message was sent but some members were left out: `names` cannot
    /// read it, for `reason`.
    NotSentTo {
        /// The chat.
        chat: Chat,
        /// Who was left out.
        names: Vec<UserName>,
        /// Why.
        reason: String,
    },
    /// `from`'s message committed to another member set of `room` than the
    /// one this client sees: the relay may be showing members different
    /// rosters (or someone joined or left a moment ago).
    RosterMismatch {
        /// The room.
        room: RoomName,
        /// Whose view differs.
        from: UserName,
    },
    /// The connected users.
    Users(Vec<OnlineUser>),
    /// The rooms, with member counts, as the relay listed them.
    Rooms(Vec<RoomInfo>),
    /// A room setting changed.
    VerifiedOnly {
        /// The room.
        room: RoomName,
        /// Whether keys go to verified members only.
        on: bool,
    },
    /// A command failed, or the relay refused something: its kind (a
    /// stable code) and what to tell the user.
    Error(Problem),
    /// The relay's pinned key moved without the user, because the move
    /// proved itself (see [`RelayKeyMoved`]); recorded in
    /// [`crate::servers::PIN_LOG_FILE`].
    RelayKeyMoved(RelayKeyMoved),
    /// `chat`'s disappearing-message timer: `seconds` (0: off). With `by`,
    /// a change that member made (this user's own name for a change made
    /// here): show it as a notice. Without, the setting as stored, at
    /// start (only for chats that have a timer).
    Timer {
        /// The chat.
        chat: Chat,
        /// Messages disappear this long after they are sent or arrive; 0:
        /// they do not.
        seconds: u64,
        /// Who changed it, for a change.
        by: Option<UserName>,
    },
    /// Messages of `chat` reached the end of their disappearing-message
    /// timer and were deleted from the store: remove them from the screen.
    Expired {
        /// The chat.
        chat: Chat,
        /// The messages (sent and received).
        ids: Vec<MessageId>,
        /// Texts still waiting to be sent (see [`Update::Queued`]) that
        /// expired before they could be, in the order typed: they will
        /// not be sent.
        queued: Vec<Queued>,
    },
    /// A file transfer started, moved on (at most a few times a second),
    /// ended or failed (boxed: updates stay small).
    Transfer(Box<Transfer>),
}

/// A relay's pinned key moved with no decision of the user's: the key
/// pinned for `host:port` signed a hand-over to the key the relay now
/// presents ([`Move::Handover`]), or an older pin of the relay's whole
/// certificate was converted to the key of that very certificate
/// ([`Move::Converted`]). Any other change of key is refused, never
/// reported as this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayKeyMoved {
    /// `host:port`.
    pub authority: String,
    /// The fingerprint pinned before.
    pub from: [u8; 32],
    /// The fingerprint pinned now.
    pub to: [u8; 32],
    /// How the pin moved.
    pub how: Move,
    /// Where the move is recorded.
    pub log: PathBuf,
}

impl fmt::Display for RelayKeyMoved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.how {
            Move::Handover => "the relay moved to a new key, signed over by its previous key",
            Move::Converted | Move::Replaced => {
                "the address pins the relay's certificate, an older form of pin; it now pins the certificate's key"
            }
        };
        write!(
            f,
            "{}: {why}: now pinned to key {} instead of {} (recorded in {})",
            self.authority,
            sotto_proto::fingerprint_text(&self.to),
            sotto_proto::fingerprint_text(&self.from),
            self.log.display()
        )
    }
}

/// What the UI asks of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Send `text` to `chat`.
    Send {
        /// Where.
        chat: Chat,
        /// What.
        text: String,
    },
    /// Join a room.
    Join(RoomName),
    /// Leave a room.
    Leave(RoomName),
    /// List the connected users.
    ListUsers,
    /// List the rooms.
    ListRooms,
    /// Show the safety number with a peer (looked up if not yet pinned).
    SafetyNumber(UserName),
    /// Mark a peer verified after comparing `safety_number` (the digits,
    /// or a scanned QR payload) with them.
    Verify {
        /// Who.
        name: UserName,
        /// What was compared.
        safety_number: String,
    },
    /// Accept a verified peer's changed key without verifying it.
    AcceptKey(UserName),
    /// In `room`, wrap keys only to verified members (or to all pinned).
    SetVerifiedOnly {
        /// The room.
        room: RoomName,
        /// On or off.
        on: bool,
    },
    /// Set `chat`'s disappearing-message timer to `seconds` (0: off, at
    /// most [`content::MAX_TIMER_SECS`]): every member is told, and texts
    /// sent in it from now on disappear that long after they are sent
    /// (and, at each recipient, after they arrive).
    SetTimer {
        /// The chat.
        chat: Chat,
        /// The timer.
        seconds: u64,
    },
    /// Send the file at `path` to `chat`: sealed in chunks under a fresh
    /// key, uploaded (going on where it stopped after a lost connection
    /// or a restart), then offered in a message ([`Update::Transfer`]
    /// follows its way).
    SendFile {
        /// Where.
        chat: Chat,
        /// The file.
        path: PathBuf,
    },
    /// Fetch the file of message `message` of `chat`, check it, and
    /// write it at `to` (which must not exist yet).
    SaveFile {
        /// The chat.
        chat: Chat,
        /// The file message.
        message: MessageId,
        /// Where to write it.
        to: PathBuf,
    },
    /// Say `chat`'s disappearing-message timer again (an
    /// [`Update::Timer`] without `by`, with 0 if it has none).
    ShowTimer(Chat),
    /// While waiting to reconnect, try the relay again now instead of
    /// waiting out the backoff (sent during an attempt: try again as soon as
    /// that attempt fails). Nothing while connected.
    Reconnect,
    /// Say goodbye to the relay and stop.
    Quit,
}

/// The session is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the session has ended")]
pub struct Closed;

/// Sends [`Command`]s to a running session. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Controller {
    commands: mpsc::UnboundedSender<Command>,
}

impl Controller {
    /// Sends any command.
    pub fn command(&self, command: Command) -> Result<(), Closed> {
        self.commands.send(command).map_err(|_| Closed)
    }

    /// Sends `text` to `chat`.
    pub fn send(&self, chat: Chat, text: impl Into<String>) -> Result<(), Closed> {
        self.command(Command::Send {
            chat,
            text: text.into(),
        })
    }

    /// Stops the session.
    pub fn quit(&self) -> Result<(), Closed> {
        self.command(Command::Quit)
    }
}

/// What [`run`] needs.
#[derive(Debug)]
pub struct Config {
    /// The unlocked account.
    pub account: Account,
    /// The relay, with its pinned certificate.
    pub relay: RelayAddress,
    /// Rooms to join the first time (later runs rejoin the rooms the user
    /// was in). Defaults to the lobby.
    pub rooms: Vec<RoomName>,
    /// Tunables.
    pub limits: SessionLimits,
}

impl Config {
    /// The default configuration for `account` at `relay`.
    pub fn new(account: Account, relay: RelayAddress) -> Self {
        Self {
            account,
            relay,
            rooms: vec![RoomName::lobby()],
            limits: SessionLimits::default(),
        }
    }
}

/// Starts a session; see the [module documentation](self).
pub fn run(config: Config) -> impl Stream<Item = Update> + Send + 'static {
    let (updates_tx, updates_rx) = mpsc::channel(config.limits.updates.max(1));
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let controller = Controller {
        commands: commands_tx,
    };
    // The channel is new and holds at least one update.
    let _ = updates_tx.try_send(Update::Ready(controller));
    connection::spawn(config, commands_rx, updates_tx);
    futures::stream::unfold(updates_rx, |mut rx| async move {
        rx.recv().await.map(|update| (update, rx))
    })
}
