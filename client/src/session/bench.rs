//! Not an API: what `client/benches/receive.rs` drives, the session's
//! engine fed frames as the connection loop feeds it, with no relay and no
//! network. Hidden from the documentation; it may change at any time.

use sotto_proto::{ClientFrame, Member, RelayFrame, RoomName, UserName};

use super::engine::{Engine, Out};
use super::{SessionLimits, Update};
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
        let (mut engine, _) = Engine::new(
            account,
            std::slice::from_ref(&room),
            SessionLimits::default(),
        )?;
        let mut out = Out::default();
        engine.on_registered(name, &mut out);
        engine.handle_frame(RelayFrame::Joined { room, members }, &mut out);
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
}
