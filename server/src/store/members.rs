//! Room memberships: a user stays a member of a room while offline, until
//! it leaves or has been away longer than the absence limit. Written by
//! the committer's batches ([`super::Write::Join`], `Leave`, `Seen`); read
//! once, when the relay starts.

use redb::{ReadableDatabase, ReadableTable};
use sotto_proto::RoomName;

use super::{MEMBERS, MemberRecord, Store, StoreError, db_err, decode};

/// One stored membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The room.
    pub room: RoomName,
    /// The member, with when it joined and when it was last connected.
    pub member: MemberRecord,
}

impl Store {
    /// Every membership, by room and then member.
    pub fn memberships(&self) -> Result<Vec<Membership>, StoreError> {
        self.read("memberships", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let members = txn.open_table(MEMBERS).map_err(db_err)?;
            let mut all = Vec::new();
            for entry in members.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let Ok(room) = key.value().0.parse::<RoomName>() else {
                    return Err(StoreError::Corrupt);
                };
                all.push(Membership {
                    room,
                    member: decode(value.value())?,
                });
            }
            Ok(all)
        })
    }
}
