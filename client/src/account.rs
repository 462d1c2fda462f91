//! An unlocked account: the profile's identity, the name it registers on
//! relays, and its encrypted local store.
//!
//! Creating and unlocking run the slow parts (RSA key generation,
//! argon2id, opening the database) on tokio's blocking pool, never on the
//! caller's thread. The name is kept inside the encrypted store, not next
//! to it: a copy of the data directory does not say whose it is.

use std::fmt;
use std::sync::Arc;

use sotto_crypto::{Identity, KdfParams};
use sotto_proto::UserName;
use zeroize::Zeroizing;

use crate::profile::{Profile, ProfileError};
use crate::store::{Store, StoreError};
use crate::vault::{VAULT_FILE, Vault};

/// Why an account could not be created or unlocked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The profile (identity file, data directory) failed.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The local store has no name: the identity was made by something
    /// else than `Account::create`.
    #[error("this profile has no name yet: create it with a name")]
    NoName,
    /// The stored name is not a valid name.
    #[error("the stored name is not a valid sotto name")]
    BadName,
}

/// An unlocked account.
#[derive(Clone)]
pub struct Account {
    profile: Profile,
    identity: Arc<Identity>,
    name: UserName,
    store: Store,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("dir", &self.profile.dir())
            .field("name", &self.name)
            .field("fingerprint", &self.identity.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Account {
    /// Creates a new identity for `name` in `profile`, saved under
    /// `passphrase` with `params`.
    pub async fn create(
        profile: &Profile,
        name: UserName,
        passphrase: Zeroizing<String>,
        params: KdfParams,
    ) -> Result<Self, AccountError> {
        let identity = profile.create(passphrase, params).await?;
        Self::open(profile.clone(), identity, Some(name)).await
    }

    /// Unlocks the account in `profile` with `passphrase`.
    pub async fn unlock(
        profile: &Profile,
        passphrase: Zeroizing<String>,
    ) -> Result<Self, AccountError> {
        let identity = profile.unlock(passphrase).await?;
        Self::open(profile.clone(), identity, None).await
    }

    /// Unlocks the account in the default data directory.
    pub async fn unlock_default(passphrase: Zeroizing<String>) -> Result<Self, AccountError> {
        Self::unlock(&Profile::open_default()?, passphrase).await
    }

    /// Opens the store of an unlocked `identity`; records `name` if given.
    pub async fn open(
        profile: Profile,
        identity: Arc<Identity>,
        name: Option<UserName>,
    ) -> Result<Self, AccountError> {
        tokio::task::spawn_blocking(move || {
            let key = identity
                .local_storage_key("vault")
                .map_err(StoreError::from)?;
            let vault =
                Vault::open(&profile.dir().join(VAULT_FILE), &key).map_err(StoreError::from)?;
            let store = Store::new(Arc::new(vault), &identity)?;
            let name = match name {
                Some(name) => {
                    store.set_name(name.as_str())?;
                    name
                }
                None => store
                    .name()?
                    .ok_or(AccountError::NoName)?
                    .parse()
                    .map_err(|_| AccountError::BadName)?,
            };
            Ok(Self {
                profile,
                identity,
                name,
                store,
            })
        })
        .await
        .map_err(|_| AccountError::Profile(ProfileError::Task))?
    }

    /// The profile (data directory).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The identity.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The name registered on relays.
    pub fn name(&self) -> &UserName {
        &self.name
    }

    /// The encrypted local store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
