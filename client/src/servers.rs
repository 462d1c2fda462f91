//! Known relays: the certificate pinned for each `host:port` the user has
//! connected to.
//!
//! An address carries its certificate's fingerprint, so the first
//! connection pins it with no other step. A later address for the same
//! `host:port` with another fingerprint is refused with
//! [`ServerChanged`], naming both, until the user explicitly replaces the
//! pin (a relay's certificate renewal, announced out of band). There is no
//! way to connect without a pin.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sotto_proto::{RelayAddress, fingerprint_text};

/// The known relays' file, in the data directory.
pub const SERVERS_FILE: &str = "servers.txt";

/// A known relay's certificate differs from the one an address offers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{authority} is known with certificate {}, but this address pins {}: if the relay's operator announced a new certificate, replace the old address explicitly",
    fingerprint_text(pinned),
    fingerprint_text(offered)
)]
pub struct ServerChanged {
    /// `host:port`.
    pub authority: String,
    /// The fingerprint pinned earlier.
    pub pinned: [u8; 32],
    /// The fingerprint the new address carries.
    pub offered: [u8; 32],
}

/// The known-servers file: one address per line.
#[derive(Clone, Debug)]
pub struct KnownServers {
    path: PathBuf,
    by_authority: BTreeMap<String, RelayAddress>,
}

fn authority_key(address: &RelayAddress) -> String {
    address.authority().to_ascii_lowercase()
}

impl KnownServers {
    /// Reads `path` (a missing file is an empty list). Lines that are not
    /// addresses are an error: the file is the user's pins, never guessed.
    pub fn load(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut by_authority = BTreeMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let address: RelayAddress = line.parse().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), number + 1),
                )
            })?;
            by_authority.insert(authority_key(&address), address);
        }
        Ok(Self { path, by_authority })
    }

    /// Every known relay.
    pub fn iter(&self) -> impl Iterator<Item = &RelayAddress> {
        self.by_authority.values()
    }

    /// Checks `address` against the pin for its `host:port`, if any.
    pub fn check(&self, address: &RelayAddress) -> Result<(), ServerChanged> {
        match self.by_authority.get(&authority_key(address)) {
            Some(known) if known.fingerprint != address.fingerprint => Err(ServerChanged {
                authority: address.authority(),
                pinned: known.fingerprint,
                offered: address.fingerprint,
            }),
            _ => Ok(()),
        }
    }

    /// Pins `address` if its `host:port` is new; refuses a different
    /// certificate for a known one.
    pub fn remember(&mut self, address: &RelayAddress) -> Result<(), RememberError> {
        self.check(address)?;
        if self.by_authority.contains_key(&authority_key(address)) {
            return Ok(());
        }
        self.by_authority
            .insert(authority_key(address), address.clone());
        self.save().map_err(RememberError::Io)
    }

    /// Replaces the pin of `address`'s `host:port`: only on the user's
    /// explicit request.
    pub fn replace(&mut self, address: &RelayAddress) -> std::io::Result<()> {
        self.by_authority
            .insert(authority_key(address), address.clone());
        self.save()
    }

    fn save(&self) -> std::io::Result<()> {
        let mut text = String::from("# sotto known relays: one address per line\n");
        for address in self.by_authority.values() {
            text.push_str(&address.to_string());
            text.push('\n');
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        sotto_crypto::write_private_file(&self.path, text.as_bytes())
    }
}

/// Why a relay could not be remembered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RememberError {
    /// A different certificate is pinned for this relay.
    #[error(transparent)]
    Changed(#[from] ServerChanged),
    /// The file could not be written.
    #[error("cannot save the known relays: {0}")]
    Io(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(host: &str, fingerprint: u8) -> RelayAddress {
        RelayAddress {
            host: host.into(),
            port: 7447,
            fingerprint: [fingerprint; 32],
        }
    }

    #[test]
    fn first_connection_pins_and_a_changed_certificate_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers");
        let mut known = KnownServers::load(&path).unwrap();
        known.remember(&address("relay.example", 1)).unwrap();

        let reloaded = KnownServers::load(&path).unwrap();
        let error = reloaded.check(&address("RELAY.example", 2)).unwrap_err();
        assert_eq!((error.pinned, error.offered), ([1; 32], [2; 32]));
        let message = error.to_string();
        assert!(
            message.contains(&fingerprint_text(&[1; 32]))
                && message.contains(&fingerprint_text(&[2; 32]))
        );

        let mut known = reloaded;
        assert!(matches!(
            known.remember(&address("relay.example", 2)),
            Err(RememberError::Changed(_))
        ));
        // Only an explicit replacement moves the pin.
        known.replace(&address("relay.example", 2)).unwrap();
        assert!(
            KnownServers::load(&path)
                .unwrap()
                .check(&address("relay.example", 2))
                .is_ok()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers");
        std::fs::write(&path, "sotto://not-an-address\n").unwrap();
        let error = KnownServers::load(&path).unwrap_err();
        assert!(error.to_string().contains(":1:"), "{error}");
    }
}
