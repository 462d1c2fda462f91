//! A user's profile: the data directory and the identity kept in it.
//!
//! The directory is `$XDG_DATA_HOME/sotto` (else `~/.local/share/sotto`)
//! unless the caller names another (`--data-dir`); it is created readable
//! by its owner only. The identity lives in `identity.sotto-id`, encrypted
//! under the user's passphrase (sotto-crypto's identity file). Key
//! generation and passphrase hashing are slow on purpose, so every
//! operation here runs on tokio's blocking pool, never on the caller's
//! thread (a UI stays responsive).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sotto_crypto::{Identity, KdfParams};
use zeroize::Zeroizing;

/// File name of the identity in the data directory.
pub const IDENTITY_FILE: &str = "identity.sotto-id";

/// Why a profile operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// There is no identity in the data directory yet.
    #[error("no identity in {0}: create one first")]
    NoIdentity(PathBuf),
    /// An identity exists already; creating would overwrite it.
    #[error("an identity already exists in {0}")]
    AlreadyExists(PathBuf),
    /// No data directory could be found (neither XDG_DATA_HOME nor HOME).
    #[error("cannot find a data directory: set XDG_DATA_HOME or HOME, or pass --data-dir")]
    NoDataDir,
    /// The identity file refused the passphrase, is damaged, or cannot be
    /// read or written.
    #[error(transparent)]
    Crypto(#[from] sotto_crypto::Error),
    /// The data directory could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The background task running the operation failed.
    #[error("the background task failed")]
    Task,
}

/// The data directory of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    dir: PathBuf,
}

/// `$XDG_DATA_HOME/sotto`, else `$HOME/.local/share/sotto`.
pub fn default_data_dir() -> Option<PathBuf> {
    data_dir_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

/// The XDG rule: an absolute `XDG_DATA_HOME` wins; otherwise
/// `HOME/.local/share`; empty values count as unset.
fn data_dir_from(
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    set(xdg)
        .filter(|p| p.is_absolute())
        .or_else(|| set(home).map(|home| home.join(".local/share")))
        .map(|base| base.join("sotto"))
}

impl Profile {
    /// The profile in `dir`, created (mode 0700) if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ProfileError> {
        let dir = dir.into();
        sotto_fsutil::create_private_dir(&dir).map_err(|source| ProfileError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The profile in [`default_data_dir`].
    pub fn open_default() -> Result<Self, ProfileError> {
        Self::open(default_data_dir().ok_or(ProfileError::NoDataDir)?)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the identity file is.
    pub fn identity_path(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// Whether an identity has been created here.
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Generates a new identity and saves it under `passphrase`, off the
    /// caller's thread. Refuses to overwrite an existing one.
    pub async fn create(
        &self,
        passphrase: Zeroizing<String>,
        params: KdfParams,
    ) -> Result<Arc<Identity>, ProfileError> {
        let path = self.identity_path();
        if path.exists() {
            return Err(ProfileError::AlreadyExists(path));
        }
        let passphrase = normalize_passphrase(&passphrase);
        blocking(move || {
            let identity = Identity::generate()?;
            identity.save(&mut rand::rng(), &path, passphrase.as_bytes(), params)?;
            Ok(Arc::new(identity))
        })
        .await
    }

    /// Opens the identity with `passphrase`, off the caller's thread.
    pub async fn unlock(
        &self,
        passphrase: Zeroizing<String>,
    ) -> Result<Arc<Identity>, ProfileError> {
        let path = self.identity_path();
        if !path.exists() {
            return Err(ProfileError::NoIdentity(self.dir.clone()));
        }
        let passphrase = normalize_passphrase(&passphrase);
        blocking(move || Ok(Arc::new(Identity::load(&path, passphrase.as_bytes())?))).await
    }

    /// Re-encrypts the identity under `new`; `old` must open it.
    pub async fn change_passphrase(
        &self,
        old: Zeroizing<String>,
        new: Zeroizing<String>,
        params: KdfParams,
    ) -> Result<(), ProfileError> {
        let path = self.identity_path();
        if !path.exists() {
            return Err(ProfileError::NoIdentity(self.dir.clone()));
        }
        let (old, new) = (normalize_passphrase(&old), normalize_passphrase(&new));
        blocking(move || {
            Identity::change_passphrase(
                &mut rand::rng(),
                &path,
                old.as_bytes(),
                new.as_bytes(),
                params,
            )?;
            Ok(())
        })
        .await
    }
}

/// The passphrase as the identity file uses it: Unicode NFKC, so the same
/// words typed on another keyboard or system (composed or decomposed
/// accents, full-width forms) open the file.
pub fn normalize_passphrase(passphrase: &str) -> Zeroizing<String> {
    use unicode_normalization::UnicodeNormalization;
    Zeroizing::new(passphrase.nfkc().collect())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ProfileError> + Send + 'static,
) -> Result<T, ProfileError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ProfileError::Task)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_are_compared_after_normalisation() {
        // "é" composed and decomposed are the same passphrase.
        assert_eq!(
            normalize_passphrase("caf\u{e9}"),
            normalize_passphrase("cafe\u{301}")
        );
        assert_eq!(&*normalize_passphrase("plain ascii"), "plain ascii");
    }

    fn pass(text: &str) -> Zeroizing<String> {
        Zeroizing::new(text.to_string())
    }

    #[tokio::test]
    async fn create_unlock_and_change_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let profile = Profile::open(dir.path().join("profile")).unwrap();
        assert!(matches!(
            profile.unlock(pass("x")).await,
            Err(ProfileError::NoIdentity(_))
        ));

        let created = profile
            .create(pass("first"), KdfParams::INSECURE_FOR_TESTS)
            .await
            .unwrap();
        assert!(profile.has_identity());
        assert!(matches!(
            profile
                .create(pass("again"), KdfParams::INSECURE_FOR_TESTS)
                .await,
            Err(ProfileError::AlreadyExists(_))
        ));
        let unlocked = profile.unlock(pass("first")).await.unwrap();
        assert_eq!(unlocked.fingerprint(), created.fingerprint());
        let wrong = profile.unlock(pass("second")).await.unwrap_err();
        assert!(matches!(
            wrong,
            ProfileError::Crypto(sotto_crypto::Error::WrongPassphrase)
        ));
        assert_eq!(wrong.to_string(), "wrong passphrase");

        profile
            .change_passphrase(pass("first"), pass("second"), KdfParams::INSECURE_FOR_TESTS)
            .await
            .unwrap();
        assert!(profile.unlock(pass("first")).await.is_err());
        assert_eq!(
            profile.unlock(pass("second")).await.unwrap().fingerprint(),
            created.fingerprint()
        );

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(profile.dir())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn default_directory_follows_xdg() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            data_dir_from(os("/x/data"), os("/home/a")),
            Some(PathBuf::from("/x/data/sotto"))
        );
        assert_eq!(
            data_dir_from(None, os("/home/a")),
            Some(PathBuf::from("/home/a/.local/share/sotto"))
        );
        // A relative or empty XDG_DATA_HOME is ignored, as the spec says.
        assert_eq!(
            data_dir_from(os("rel"), os("/home/a")),
            Some(PathBuf::from("/home/a/.local/share/sotto"))
        );
        assert_eq!(
            data_dir_from(os(""), os("/home/a")),
            Some(PathBuf::from("/home/a/.local/share/sotto"))
        );
        assert_eq!(data_dir_from(None, None), None);
    }
}
