//! Validated user and room names.
//!
//! A name is 1 to [`MAX_NAME_LEN`] bytes of ASCII letters, digits, `-`, `_`
//! and `.`, and starts with a letter or a digit. Names are case-sensitive:
//! `Alice` and `alice` are different names. The rules are checked when a
//! name is built *and* when one is deserialized, so a frame that decoded
//! successfully never carries an invalid name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest allowed name, in bytes.
pub const MAX_NAME_LEN: usize = 32;

/// The name of the room every client may join.
pub const LOBBY: &str = "lobby";

/// Why a string is not a valid [`UserName`] or [`RoomName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is the empty string.
    #[error("name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("name is {len} bytes long, the maximum is {MAX_NAME_LEN}")]
    TooLong {
        /// The length of the refused name, in bytes.
        len: usize,
    },
    /// The name starts with `-`, `_` or `.`.
    #[error("name must start with an ASCII letter or digit, not {0:?}")]
    BadFirstChar(char),
    /// The name contains a character outside `A-Z a-z 0-9 - _ .`.
    #[error("name contains {0:?}; only ASCII letters, digits, '-', '_' and '.' are allowed")]
    InvalidChar(char),
}

/// Checks `name` against the rules in the [module documentation](self).
fn validate(name: &str) -> Result<(), NameError> {
    let mut chars = name.chars();
    let first = chars.next().ok_or(NameError::Empty)?;
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if !first.is_ascii_alphanumeric() {
        return if is_name_char(first) {
            Err(NameError::BadFirstChar(first))
        } else {
            Err(NameError::InvalidChar(first))
        };
    }
    match chars.find(|&c| !is_name_char(c)) {
        Some(bad) => Err(NameError::InvalidChar(bad)),
        None => Ok(()),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Defines a validated name newtype with its conversions.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;

            fn try_from(name: String) -> Result<Self, NameError> {
                validate(&name)?;
                Ok(Self(name))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;

            fn try_from(name: &str) -> Result<Self, NameError> {
                validate(name)?;
                Ok(Self(name.to_owned()))
            }
        }

        impl FromStr for $name {
            type Err = NameError;

            fn from_str(name: &str) -> Result<Self, NameError> {
                Self::try_from(name)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Compares with a plain string exactly: byte for byte, so
        /// case-sensitive like `==` between two names (`name == "bob"`).
        /// Two spellings the relay takes for one user (`Bob`, `bob`) are
        /// equal only as [`UserKey`]s ([`UserName::key`]).
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        /// As `PartialEq<str>`: exact and case-sensitive.
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type! {
    /// A user's name on a relay, as claimed by `Register`.
    ///
    /// ```
    /// use sotto_proto::UserName;
    ///
    /// let alice: UserName = "alice".parse()?;
    /// assert_eq!(alice.as_str(), "alice");
    /// assert!("no/slashes".parse::<UserName>().is_err());
    /// # Ok::<(), sotto_proto::NameError>(())
    /// ```
    UserName
}

name_type! {
    /// A room's name.
    ///
    /// ```
    /// use sotto_proto::{RoomName, LOBBY};
    ///
    /// assert_eq!(RoomName::lobby().as_str(), LOBBY);
    /// assert!(RoomName::try_from(".hidden").is_err());
    /// ```
    RoomName
}

impl RoomName {
    /// The [`LOBBY`] room.
    pub fn lobby() -> Self {
        // LOBBY is a valid name; `lobby_is_a_valid_room_name` checks it.
        Self(LOBBY.to_owned())
    }
}

/// A user name folded the way the relay compares names: ASCII letters
/// lower-cased, so `Alice`, `ALICE` and `alice` are one key.
///
/// Every map or set of users (the relay's directory and registry, a
/// client's contacts, conversations and members) is keyed by this type,
/// never by a [`UserName`] or a hand-lowered string, so two spellings of
/// one name can never land in two entries.
///
/// ```
/// use sotto_proto::UserName;
///
/// let a: UserName = "Alice".parse()?;
/// let b: UserName = "aLICE".parse()?;
/// assert_ne!(a, b);
/// assert_eq!(a.key(), b.key());
/// assert_eq!(a.key().as_str(), "alice");
/// # Ok::<(), sotto_proto::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserKey(String);

impl UserKey {
    /// The folded name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The folded name as a valid [`UserName`] (folding keeps a name valid).
    pub fn to_name(&self) -> UserName {
        UserName(self.0.clone())
    }
}

/// A key is looked up by its folded text, so that a map of keys can be
/// searched with [`UserName::folded`] without allocating one (`UserKey`
/// hashes and compares as its text does).
impl std::borrow::Borrow<str> for UserKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&UserName> for UserKey {
    fn from(name: &UserName) -> Self {
        name.key()
    }
}

impl UserName {
    /// The name's [`UserKey`]: how the relay and every client compare it.
    pub fn key(&self) -> UserKey {
        UserKey(self.0.to_ascii_lowercase())
    }

    /// Whether two names are the same name as the relay compares them.
    pub fn same_as(&self, other: &UserName) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }

    /// Whether this name's key is `key`, without making the key.
    pub fn has_key(&self, key: &UserKey) -> bool {
        self.0.eq_ignore_ascii_case(&key.0)
    }

    /// The text of this name's [`UserKey`], folded into `buf` instead of
    /// a new allocation (a name is at most [`MAX_NAME_LEN`] bytes of
    /// ASCII): for looking a key up in a map of them.
    pub fn folded<'a>(&self, buf: &'a mut [u8; MAX_NAME_LEN]) -> &'a str {
        let mut len = 0;
        for (to, from) in buf.iter_mut().zip(self.0.as_bytes()) {
            *to = from.to_ascii_lowercase();
            len += 1;
        }
        // ASCII lowered is still ASCII, so still UTF-8.
        buf.get(..len)
            .and_then(|folded| std::str::from_utf8(folded).ok())
            .unwrap_or_default()
    }

    /// The name reduced to how it looks: case folded, and the characters
    /// that are easily taken for one another in common fonts made one
    /// (`I`, `l`, `1` and `|`-like glyphs to `l`; `O` and `0` to `o`; `rn`
    /// to `m`; `vv` to `w`; `5` to `s`; `-`, `_` and `.` dropped). Two
    /// different names with the same skeleton can be mistaken for each
    /// other on screen: a client warns when a new contact's skeleton is
    /// that of a known one.
    ///
    /// ```
    /// use sotto_proto::UserName;
    ///
    /// let alice: UserName = "alice".parse()?;
    /// for lookalike in ["aIice", "al1ce", "ALICE", "a.lice"] {
    ///     let other: UserName = lookalike.parse()?;
    ///     assert_eq!(other.skeleton(), alice.skeleton(), "{lookalike}");
    /// }
    /// let modern: UserName = "modern".parse()?;
    /// let rnodern: UserName = "rnodern".parse()?;
    /// assert_eq!(modern.skeleton(), rnodern.skeleton());
    /// let bob: UserName = "bob".parse()?;
    /// assert_ne!(bob.skeleton(), alice.skeleton());
    /// # Ok::<(), sotto_proto::NameError>(())
    /// ```
    pub fn skeleton(&self) -> String {
        let mut folded = String::with_capacity(self.0.len());
        for c in self.0.chars() {
            match c.to_ascii_lowercase() {
                'i' | 'l' | '1' => folded.push('l'),
                '0' => folded.push('o'),
                '5' => folded.push('s'),
                '-' | '_' | '.' => {}
                other => folded.push(other),
            }
        }
        folded.replace("rn", "m").replace("vv", "w")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// An independent statement of the rule, checked against `validate`.
        #[test]
        fn validation_agrees_with_the_rule(name in "[a-zA-Z0-9._/ é-]{0,40}|.{0,8}") {
            let bytes = name.as_bytes();
            let valid = (1..=32).contains(&bytes.len())
                && bytes[0].is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
            prop_assert_eq!(UserName::try_from(name.as_str()).is_ok(), valid);
            prop_assert_eq!(RoomName::try_from(name.as_str()).is_ok(), valid);
        }
    }

    #[test]
    fn valid_names_are_accepted() {
        for name in [
            "a",
            "Z",
            "7",
            "alice",
            "Bob-2",
            "c_d.e",
            "0.-_",
            &"x".repeat(32),
        ] {
            assert_eq!(UserName::try_from(name).unwrap().as_str(), name);
            assert_eq!(RoomName::try_from(name.to_owned()).unwrap().as_str(), name);
            assert_eq!(name.parse::<UserName>().unwrap().to_string(), name);
        }
    }

    #[test]
    fn empty_name_is_refused() {
        assert_eq!(UserName::try_from(""), Err(NameError::Empty));
        assert_eq!(RoomName::try_from(""), Err(NameError::Empty));
    }

    #[test]
    fn name_over_32_bytes_is_refused() {
        let long = "a".repeat(33);
        assert_eq!(
            UserName::try_from(long.as_str()),
            Err(NameError::TooLong { len: 33 })
        );
        assert_eq!(
            RoomName::try_from(long),
            Err(NameError::TooLong { len: 33 })
        );
    }

    #[test]
    fn name_starting_with_punctuation_is_refused() {
        for (name, c) in [("-a", '-'), ("_a", '_'), (".a", '.'), ("..", '.')] {
            assert_eq!(UserName::try_from(name), Err(NameError::BadFirstChar(c)));
        }
    }

    #[test]
    fn name_with_other_characters_is_refused() {
        for (name, c) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("/a", '/'),
            ("a\0", '\0'),
            ("café", 'é'),
            ("a:b", ':'),
            ("a\u{202e}b", '\u{202e}'),
        ] {
            assert_eq!(
                UserName::try_from(name),
                Err(NameError::InvalidChar(c)),
                "{name:?}"
            );
            assert_eq!(
                RoomName::try_from(name),
                Err(NameError::InvalidChar(c)),
                "{name:?}"
            );
        }
    }

    #[test]
    fn multibyte_name_is_measured_in_bytes() {
        // 11 three-byte characters: 33 bytes, refused for length before the
        // character check even though it is only 11 characters.
        let name = "€".repeat(11);
        assert_eq!(
            UserName::try_from(name),
            Err(NameError::TooLong { len: 33 })
        );
    }

    #[test]
    fn keys_fold_ascii_case_only() {
        let a = UserName::try_from("Bob-2.x").unwrap();
        let b = UserName::try_from("bOB-2.X").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key().as_str(), "bob-2.x");
        assert_eq!(a.key().to_name().as_str(), "bob-2.x");
        assert!(a.same_as(&b));
        assert_ne!(a.key(), UserName::try_from("bob-2x").unwrap().key());
        assert!(a.has_key(&b.key()));
        assert!(!a.has_key(&UserName::try_from("bob-2x").unwrap().key()));
    }

    #[test]
    fn a_name_folded_in_place_is_its_keys_text_and_finds_it_in_a_map() {
        let longest = "A".repeat(MAX_NAME_LEN);
        for name in ["Bob-2.x", "x", longest.as_str()] {
            let name = UserName::try_from(name).unwrap();
            let mut buf = [0; MAX_NAME_LEN];
            assert_eq!(name.folded(&mut buf), name.key().as_str());
            let map: std::collections::HashMap<UserKey, u8> = [(name.key(), 7)].into();
            assert_eq!(map.get(name.folded(&mut buf)), Some(&7));
        }
    }

    #[test]
    fn lookalike_names_share_a_skeleton() {
        let skeleton = |name: &str| UserName::try_from(name).unwrap().skeleton();
        for (a, b) in [
            ("alice", "aIice"),
            ("alice", "al1ce"),
            ("alice", "ALICE"),
            ("bob", "B0B"),
            ("m", "rn"),
            ("walter", "vvalter"),
            ("sam", "5am"),
            ("ann_lee", "annlee"),
        ] {
            assert_eq!(skeleton(a), skeleton(b), "{a} {b}");
        }
        for (a, b) in [("alice", "alicia"), ("bob", "rob"), ("ann", "anne")] {
            assert_ne!(skeleton(a), skeleton(b), "{a} {b}");
        }
    }

    #[test]
    fn lobby_is_a_valid_room_name() {
        assert_eq!(RoomName::try_from(LOBBY).unwrap(), RoomName::lobby());
    }

    #[test]
    fn deserializing_revalidates() {
        let bytes = postcard::to_allocvec("bad/name").unwrap();
        assert!(postcard::from_bytes::<UserName>(&bytes).is_err());
        assert!(postcard::from_bytes::<RoomName>(&bytes).is_err());
        let bytes = postcard::to_allocvec("good.name").unwrap();
        assert_eq!(
            postcard::from_bytes::<UserName>(&bytes).unwrap().as_str(),
            "good.name"
        );
    }

    #[test]
    fn names_serialize_as_plain_strings() {
        let name = UserName::try_from("alice").unwrap();
        assert_eq!(
            postcard::to_allocvec(&name).unwrap(),
            postcard::to_allocvec("alice").unwrap()
        );
    }

    #[test]
    fn a_name_equals_exactly_its_own_string() {
        let bob = UserName::try_from("Bob").unwrap();
        assert!(bob == "Bob" && bob == *"Bob");
        assert!(bob != "bob" && bob != *"BOB");
        assert_eq!(bob.key(), UserName::try_from("bob").unwrap().key());
        let side = RoomName::try_from("Side").unwrap();
        assert!(side == "Side" && side != "side");
    }
}
