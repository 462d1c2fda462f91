//! Not an API: what `client/benches/receive.rs` and
//! `client/benches/membership.rs` drive, the session's engine fed frames
//! as the connection loop feeds it, with no relay and no network. Hidden
//! from the documentation; it may change at any time.

use sotto_crypto::{Conversation, Fingerprint, PrekeySecret, SignedPrekey, VerifiedPrekey};
use sotto_proto::{ClientFrame, Member, RelayFrame, RoomName, UserName};

use super::engine::{Engine, Out};
use super::{Command, SessionLimits, Update};
use crate::account::Account;
use crate::store::StoreError;

/// A session's engine on `account`'s real store, registered and in one
/// room.
#[derive(Debug)]
pub struct Receiver {
    engine: Engine,
}

impl Receiver {
    /// The engine of `account`, registered as `name`, in `room` with
    /// `members`.
    pub fn new(
        account: &Account,
        name: UserName,
        room: RoomName,
        members: Vec<Member>,
    ) -> Result<Self, StoreError> {
        let (mut engine, mut out) = Self::registered(account, name, &room)?;
        engine.handle_frame(RelayFrame::Joined { room, members }, &mut out);
        Ok(Self { engine })
    }

    /// The engine of `account` for `room`, registered as `name`.
    fn registered(
        account: &Account,
        name: UserName,
        room: &RoomName,
    ) -> Result<(Engine, Out), StoreError> {
        let (mut engine, _) = Engine::new(
            account,
            std::slice::from_ref(room),
            SessionLimits::default(),
        )?;
        let mut out = Out::default();
        engine.on_registered(name, &mut out);
        Ok((engine, out))
    }

    /// The engine of `account`, registered as `name`, in `room` with
    /// `members` as a member who has been there all along: the roster and
    /// everything `Joined` does, but no announcement of its session (its
    /// pairs would have been made long ago).
    pub fn long_standing(
        account: &Account,
        name: UserName,
        room: RoomName,
        members: Vec<Member>,
    ) -> Result<Self, StoreError> {
        let (mut engine, mut out) = Self::registered(account, name, &room)?;
        engine.enter_room(room, members, &mut out);
        Ok(Self { engine })
    }

    /// Handles `frames` as one read batch, as the connection loop does
    /// with the frames of one read: one durable commit. Returns the frames
    /// for the relay (acknowledgements) and the updates for the front end.
    pub fn receive(&mut self, frames: Vec<RelayFrame>) -> (Vec<ClientFrame>, Vec<Update>) {
        let mut out = Out::default();
        self.engine.handle_frames(frames, &mut out);
        (out.frames, out.updates)
    }

    /// Handles one command of the front end.
    pub fn command(&mut self, command: Command) -> (Vec<ClientFrame>, Vec<Update>) {
        let mut out = Out::default();
        self.engine.handle_command(command, &mut out);
        (out.frames, out.updates)
    }

    /// Keeps one of this client's own prekey secrets, as the prekey
    /// lifecycle does.
    pub fn keep_own_prekey(&mut self, signed: SignedPrekey, secret: PrekeySecret) {
        self.engine.keep_own_prekey(signed, secret);
    }

    /// Keeps a contact's prekey, verified against its pinned identity.
    pub fn keep_peer_prekey(&mut self, prekey: VerifiedPrekey) {
        self.engine.keep_peer_prekey(prekey);
    }

    /// The RSA decryptions this client's keys (identity and prekeys) made.
    pub fn rsa_decryptions(&self) -> u64 {
        self.engine.rsa_decryptions()
    }

    /// Whether this client holds a current session of `sender` in
    /// `conversation`: whether it can read what `sender` sends there.
    pub fn reads(&self, sender: Fingerprint, conversation: &Conversation) -> bool {
        self.engine.reads(sender, conversation)
    }
}
