//! Known relays: the key pinned for each `host:port` the user has
//! connected to.
//!
//! An address carries its relay's key fingerprint, so the first
//! connection pins it with no other step. A later address for the same
//! `host:port` with another fingerprint is refused with
//! [`ServerChanged`], naming both, until the user explicitly replaces the
//! pin with [`KnownServers::replace`] (`sotto-cli relay replace-pin`, or
//! the app's button). There is no way to connect without a pin.
//!
//! Two moves happen without the user, because they prove themselves:
//! following the old key's signed hand-over to a new key
//! (`KnownServers::follow`, used by the session only), and converting an old-style certificate pin
//! to the key of that very certificate. Both keep the old fingerprint as a
//! superseded pin, so the old address still connects (to the new key), and
//! every move is recorded in [`PIN_LOG_FILE`].
//!
//! # File format
//!
//! `servers.txt` holds one relay per line: its address, then, separated by
//! spaces, `was=FINGERPRINT` for each superseded pin. Lines starting with
//! `#` are comments.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sotto_proto::{RelayAddress, fingerprint_text};

/// The known relays' file, in the data directory.
pub const SERVERS_FILE: &str = "servers.txt";
/// The record of every pin change, in the data directory: one line per
/// change, `TIME host:port how OLD -> NEW` (UTC, RFC 3339).
pub const PIN_LOG_FILE: &str = "relay-pins.log";

/// A known relay's key differs from the one an address offers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{authority} is known with key {}, but this address pins {}: if the relay's operator announced a new key, replace the pin explicitly with `sotto-cli relay replace-pin ADDRESS`",
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

/// A pin replaced on the user's request: see [`KnownServers::replace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    /// `host:port`.
    pub authority: String,
    /// The fingerprint pinned before, if the relay was known.
    pub old: Option<[u8; 32]>,
    /// The fingerprint pinned now.
    pub new: [u8; 32],
}

/// How a pin moved, for the record. (Only the session moves a pin by a
/// hand-over or a conversion, and only the user by [`KnownServers::replace`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// The old key's signed hand-over to the new key was verified.
    Handover,
    /// An old-style certificate pin was converted to that certificate's
    /// key.
    Converted,
    /// The user replaced the pin explicitly.
    Replaced,
}

impl Move {
    /// The word [`PIN_LOG_FILE`] records it with (`followed-handover`,
    /// `converted-certificate-pin`, `replaced-by-user`).
    pub fn as_str(self) -> &'static str {
        match self {
            Move::Handover => "followed-handover",
            Move::Converted => "converted-certificate-pin",
            Move::Replaced => "replaced-by-user",
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    address: RelayAddress,
    superseded: Vec<[u8; 32]>,
}

/// The known-servers file: one address per line.
#[derive(Clone, Debug)]
pub struct KnownServers {
    path: PathBuf,
    by_authority: BTreeMap<String, Entry>,
}

fn authority_key(address: &RelayAddress) -> String {
    address.authority().to_ascii_lowercase()
}

fn invalid(path: &Path, number: usize, what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}:{}: {what}", path.display(), number + 1),
    )
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
            let mut words = line.split_whitespace();
            let address: RelayAddress = words
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e| invalid(&path, number, e))?;
            let mut superseded = Vec::new();
            for word in words {
                let fingerprint = word
                    .strip_prefix("was=")
                    .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| {
                        invalid(&path, number, format!("not was=FINGERPRINT: {word}"))
                    })?;
                superseded.push(fingerprint);
            }
            by_authority.insert(
                authority_key(&address),
                Entry {
                    address,
                    superseded,
                },
            );
        }
        Ok(Self { path, by_authority })
    }

    /// Every known relay.
    pub fn iter(&self) -> impl Iterator<Item = &RelayAddress> {
        self.by_authority.values().map(|entry| &entry.address)
    }

    /// The pinned address for `address`'s `host:port`, if known.
    pub fn get(&self, address: &RelayAddress) -> Option<&RelayAddress> {
        self.by_authority
            .get(&authority_key(address))
            .map(|entry| &entry.address)
    }

    /// The address to connect with for `address`: itself if its relay is
    /// unknown or pinned to its fingerprint; with the current pin if its
    /// fingerprint was superseded by a hand-over or conversion; refused if
    /// another key is pinned.
    pub fn resolve(&self, address: &RelayAddress) -> Result<RelayAddress, ServerChanged> {
        let Some(entry) = self.by_authority.get(&authority_key(address)) else {
            return Ok(address.clone());
        };
        if entry.address.fingerprint == address.fingerprint
            || entry.superseded.contains(&address.fingerprint)
        {
            Ok(RelayAddress {
                fingerprint: entry.address.fingerprint,
                ..address.clone()
            })
        } else {
            Err(ServerChanged {
                authority: address.authority(),
                pinned: entry.address.fingerprint,
                offered: address.fingerprint,
            })
        }
    }

    /// Checks `address` against the pin for its `host:port`, if any.
    pub fn check(&self, address: &RelayAddress) -> Result<(), ServerChanged> {
        self.resolve(address).map(drop)
    }

    /// Pins `address` if its `host:port` is new; refuses a different
    /// key for a known one.
    pub fn remember(&mut self, address: &RelayAddress) -> Result<(), RememberError> {
        self.check(address)?;
        if self.by_authority.contains_key(&authority_key(address)) {
            return Ok(());
        }
        self.by_authority.insert(
            authority_key(address),
            Entry {
                address: address.clone(),
                superseded: Vec::new(),
            },
        );
        self.save().map_err(RememberError::Io)
    }

    /// Moves the pin of `address`'s `host:port` from `address.fingerprint`
    /// to `to`, keeping the old one as superseded (old addresses still
    /// connect, to `to`), and records it. Only for a move that proved
    /// itself: a verified hand-over from the pinned key
    /// ([`crate::tls::verify_handover`]) or the conversion of a certificate
    /// pin to the key of that very certificate. Only the session calls it
    /// (crate-private on purpose: no front end can move a pin silently).
    pub(crate) fn follow(
        &mut self,
        address: &RelayAddress,
        to: [u8; 32],
        how: Move,
    ) -> std::io::Result<()> {
        let from = address.fingerprint;
        let key = authority_key(address);
        let mut superseded = self
            .by_authority
            .remove(&key)
            .map(|entry| entry.superseded)
            .unwrap_or_default();
        if !superseded.contains(&from) && from != to {
            superseded.push(from);
        }
        superseded.retain(|fingerprint| *fingerprint != to);
        self.by_authority.insert(
            key,
            Entry {
                address: RelayAddress {
                    fingerprint: to,
                    ..address.clone()
                },
                superseded,
            },
        );
        self.save()?;
        self.record(&address.authority(), how, Some(from), to)
    }

    /// Replaces the pin of `address`'s `host:port` with `address`'s
    /// fingerprint: only on the user's explicit request (after checking the
    /// new fingerprint with the relay's operator). Superseded pins are
    /// forgotten: an old address for this relay is refused afterwards. The
    /// replacement is recorded in [`PIN_LOG_FILE`] (time, `host:port`, old
    /// and new fingerprints). Returns both fingerprints, for the user.
    pub fn replace(&mut self, address: &RelayAddress) -> std::io::Result<Replaced> {
        let old = self.get(address).map(|known| known.fingerprint);
        self.by_authority.insert(
            authority_key(address),
            Entry {
                address: address.clone(),
                superseded: Vec::new(),
            },
        );
        self.save()?;
        self.record(
            &address.authority(),
            Move::Replaced,
            old,
            address.fingerprint,
        )?;
        Ok(Replaced {
            authority: address.authority(),
            old,
            new: address.fingerprint,
        })
    }

    /// The record of pin changes, beside the known-servers file.
    pub fn log_path(&self) -> PathBuf {
        self.path.with_file_name(PIN_LOG_FILE)
    }

    fn record(
        &self,
        authority: &str,
        how: Move,
        old: Option<[u8; 32]>,
        new: [u8; 32],
    ) -> std::io::Result<()> {
        let old = old.map_or_else(|| "-".to_owned(), |old| fingerprint_text(&old));
        let line = format!(
            "{} {authority} {} {old} -> {}\n",
            utc_now(),
            how.as_str(),
            fingerprint_text(&new)
        );
        let path = self.log_path();
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path)?.write_all(line.as_bytes())
    }

    fn save(&self) -> std::io::Result<()> {
        let mut text = String::from(
            "# sotto known relays: one address per line, then was=FINGERPRINT for each superseded pin\n",
        );
        for entry in self.by_authority.values() {
            text.push_str(&entry.address.to_string());
            for old in &entry.superseded {
                text.push_str(" was=");
                text.push_str(&fingerprint_text(old));
            }
            text.push('\n');
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        sotto_fsutil::write_private(&self.path, text.as_bytes())
    }
}

/// The current time in UTC, as RFC 3339 (`2026-12-01T08:30:00Z`).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Why a relay could not be remembered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RememberError {
    /// A different key is pinned for this relay.
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
            alternates: Vec::new(),
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
        // Only an explicit replacement moves the pin, and it is recorded.
        let replaced = known.replace(&address("relay.example", 2)).unwrap();
        assert_eq!(
            replaced,
            Replaced {
                authority: "relay.example:7447".into(),
                old: Some([1; 32]),
                new: [2; 32],
            }
        );
        let log = std::fs::read_to_string(known.log_path()).unwrap();
        assert!(
            log.contains(&format!(
                " relay.example:7447 replaced-by-user {} -> {}",
                fingerprint_text(&[1; 32]),
                fingerprint_text(&[2; 32])
            )),
            "{log}"
        );
        // The old address is refused from now on.
        assert!(
            KnownServers::load(&path)
                .unwrap()
                .check(&address("relay.example", 1))
                .is_err()
        );
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
    fn a_followed_move_keeps_the_old_address_working_with_the_new_pin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers");
        let mut known = KnownServers::load(&path).unwrap();
        known.remember(&address("relay.example", 1)).unwrap();
        known
            .follow(&address("relay.example", 1), [2; 32], Move::Handover)
            .unwrap();
        known
            .follow(&address("relay.example", 2), [3; 32], Move::Handover)
            .unwrap();
        let reloaded = KnownServers::load(&path).unwrap();
        for old in [1, 2, 3] {
            assert_eq!(
                reloaded.resolve(&address("relay.example", old)).unwrap(),
                address("relay.example", 3)
            );
        }
        assert_eq!(
            reloaded
                .check(&address("relay.example", 4))
                .unwrap_err()
                .pinned,
            [3; 32]
        );
        let log = std::fs::read_to_string(reloaded.log_path()).unwrap();
        assert_eq!(log.matches("followed-handover").count(), 2, "{log}");
    }

    #[test]
    fn utc_time_is_rfc3339() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
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
