//! The name directory: which identity owns which name.

use redb::{ReadableDatabase, ReadableTable};
use sotto_proto::UserName;

use super::{
    Claim, NAMES, NAMES_PER_KEY, NameRecord, Store, StoreError, db_err, decode, encode_err,
};

impl Store {
    /// Binds `name` to the identity with `fingerprint`, unless another
    /// identity holds it already, or the identity owns `max_names` names
    /// already. Names compare without regard to case, so `Alice` cannot be
    /// taken by someone else once `alice` is.
    pub fn claim(&self, record: &NameRecord, max_names: u64) -> Result<Claim, StoreError> {
        let key = record.name.key();
        self.write("claim", |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let claim = {
                let mut names = txn.open_table(NAMES).map_err(db_err)?;
                let mut per_key = txn.open_table(NAMES_PER_KEY).map_err(db_err)?;
                let existing = match names.get(key.as_str()).map_err(db_err)? {
                    Some(value) => Some(decode::<NameRecord>(value.value())?),
                    None => None,
                };
                let owned = per_key
                    .get(record.fingerprint.as_slice())
                    .map_err(db_err)?
                    .map_or(0, |v| v.value());
                match existing {
                    Some(owner) if owner.fingerprint != record.fingerprint => Claim::Taken,
                    Some(owner) => Claim::Existing(owner.name),
                    None if owned >= max_names => Claim::KeyFull,
                    None => {
                        let value = postcard::to_stdvec(record).map_err(encode_err)?;
                        names
                            .insert(key.as_str(), value.as_slice())
                            .map_err(db_err)?;
                        per_key
                            .insert(record.fingerprint.as_slice(), owned + 1)
                            .map_err(db_err)?;
                        Claim::New
                    }
                }
            };
            if claim == Claim::New {
                txn.commit().map_err(db_err)?;
            } else {
                txn.abort().map_err(db_err)?;
            }
            Ok(claim)
        })
    }

    /// How many names the identity with `fingerprint` owns.
    pub fn names_of(&self, fingerprint: &[u8; 32]) -> Result<u64, StoreError> {
        self.read("names_of", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let per_key = txn.open_table(NAMES_PER_KEY).map_err(db_err)?;
            let count = per_key.get(fingerprint.as_slice()).map_err(db_err)?;
            Ok(count.map_or(0, |v| v.value()))
        })
    }

    /// The owner of `name`, if registered.
    pub fn lookup(&self, name: &UserName) -> Result<Option<NameRecord>, StoreError> {
        self.read("lookup", |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let names = txn.open_table(NAMES).map_err(db_err)?;
            let found = names.get(name.key().as_str()).map_err(db_err)?;
            found.map(|value| decode(value.value())).transpose()
        })
    }
}
