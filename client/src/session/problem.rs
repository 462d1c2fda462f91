//! What [`Update::Error`](super::Update::Error) carries: a [`Problem`],
//! the human text beside a [`ProblemCode`] a program can match on.

use std::fmt;

use sotto_proto::{ErrorCode, RoomName, UserName};

use super::{Chat, MessageId};

/// A command failed, or the relay refused something: what kind of
/// failure ([`code`](Self::code), stable) and what to tell the user
/// ([`message`](Self::message), for people, free to change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What kind of failure.
    pub code: ProblemCode,
    /// What to tell the user.
    pub message: String,
    /// What the user did that it answers, if anything: the commands it
    /// ends (so that a front end can match it to them, without reading
    /// `message`) or the message it is about. Empty for most problems.
    pub answers: Vec<Answers>,
}

/// What a [`Problem`] answers. More may be added: a front end ignores
/// what it does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answers {
    /// Typed texts it left unsent: the oldest `count` sends to `chat` not
    /// yet answered by a message or a problem, in the order typed.
    Sends {
        /// Their chat.
        chat: Chat,
        /// How many.
        count: usize,
    },
    /// A message this client sent (already shown): the relay refused it,
    /// or some recipients will not get it.
    Message {
        /// Its chat.
        chat: Chat,
        /// Its id.
        id: MessageId,
    },
    /// The oldest [`Command::Leave`](super::Command::Leave) of `room` not
    /// yet answered by a `Left` or a problem.
    Leave {
        /// The room.
        room: RoomName,
    },
    /// The oldest [`Command::SafetyNumber`](super::Command::SafetyNumber)
    /// for `name` not yet answered by a safety number or a problem.
    SafetyNumber {
        /// Who.
        name: UserName,
    },
    /// The oldest [`Command::Verify`](super::Command::Verify) or
    /// [`Command::AcceptKey`](super::Command::AcceptKey) of `name` not yet
    /// answered by a `Trust` or a problem.
    Trust {
        /// Who.
        name: UserName,
    },
    /// The oldest [`Command::ListUsers`](super::Command::ListUsers) not
    /// yet answered.
    Users,
    /// The oldest [`Command::ListRooms`](super::Command::ListRooms) not
    /// yet answered.
    Rooms,
    /// The oldest [`Command::SetTimer`](super::Command::SetTimer) of
    /// `chat` not yet answered by an `Update::Timer` or a problem.
    Timer {
        /// The chat.
        chat: Chat,
    },
}

impl Problem {
    /// A problem of kind `code`, with the text `message`.
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            answers: Vec::new(),
        }
    }

    /// The same, having left `count` typed texts to `chat` unsent (none:
    /// no change).
    pub fn unsent(self, chat: Chat, count: usize) -> Self {
        if count == 0 {
            return self;
        }
        self.answering(Answers::Sends { chat, count })
    }

    /// The same, about message `id`, already sent in `chat`.
    pub fn about(self, chat: Chat, id: MessageId) -> Self {
        self.answering(Answers::Message { chat, id })
    }

    /// The same, answering `answers` too.
    pub fn answering(mut self, answers: Answers) -> Self {
        self.answers.push(answers);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kinds of [`Problem`], each with a stable code ([`as_str`](Self::as_str)).
/// New kinds may be added: a program treats a kind it does not know as a
/// generic failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemCode {
    /// Sending to, or leaving, a room this client is not in.
    NotInRoom,
    /// The relay knows no user of that name.
    NoSuchUser,
    /// A command about oneself that only makes sense about someone else.
    Yourself,
    /// Not sent: the contact's key changed since it was verified; the
    /// user verifies or accepts the new key first.
    KeyChanged,
    /// No key is known for that user yet (the relay is not reachable to
    /// ask for it, or nothing to decide about).
    NoKeyYet,
    /// Not sent: too many texts already wait (for a key, or for the
    /// connection).
    TooManyWaiting,
    /// Not done: this client is not connected to the relay (queued texts
    /// were not sent before quitting, or a command needs the relay now).
    NotConnected,
    /// The text is longer than a message can carry.
    TooLong,
    /// This client could not store or read something in its own data
    /// directory: what it concerned was not acknowledged or not sent.
    Storage,
    /// The relay refused something, with its code.
    Relay(ErrorCode),
    /// The relay accepted a message but will not keep it for some of its
    /// recipients, with its code.
    Undelivered(ErrorCode),
    /// The relay delivered forged key announcements.
    Forged,
    /// Key announcements came faster than they are checked: some were
    /// dropped unchecked.
    Flooded,
    /// The relay sent a key that is not a valid sotto identity.
    InvalidKey,
    /// The relay handed out a prekey that does not verify for the
    /// contact's pinned identity, or only older ones than already seen:
    /// refused (blamed on the relay, not on the contact).
    ForgedPrekey,
    /// The safety number given does not match: nothing was verified.
    WrongSafetyNumber,
    /// A command that does not apply (a key to accept that has not
    /// changed).
    BadCommand,
    /// Stored messages are damaged and were skipped.
    HistoryDamaged,
    /// Sealing a message failed in this client (its sequence numbers are
    /// used up, or a key operation failed): not sent.
    Internal,
    /// A pair key went to (or came from) an identity key rather than a
    /// prekey: what it carries is not forward secret against a later
    /// compromise of that identity file and its passphrase.
    NotForwardSecret,
    /// A session key was wrapped to a prekey this client has deleted (its
    /// grace period is over): its messages cannot be opened.
    KeyExpired,
    /// The data directory was written by an earlier sotto and was
    /// migrated once: what it could not keep is named.
    Migrated,
    /// A file could not be read, written or found here (the file to send,
    /// or where a received one is to be saved).
    File,
    /// A received file did not pass its integrity check (a chunk or the
    /// whole): the relay altered or mixed up its chunks. Nothing of it was
    /// kept.
    FileDamaged,
}

impl ProblemCode {
    /// The stable snake_case code: what a program matches on.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotInRoom => "not_in_room",
            Self::NotForwardSecret => "not_forward_secret",
            Self::KeyExpired => "key_expired",
            Self::Migrated => "migrated",
            Self::File => "file",
            Self::FileDamaged => "file_damaged",
            Self::NoSuchUser => "no_such_user",
            Self::Yourself => "yourself",
            Self::KeyChanged => "key_changed",
            Self::NoKeyYet => "no_key_yet",
            Self::TooManyWaiting => "too_many_waiting",
            Self::NotConnected => "not_connected",
            Self::TooLong => "too_long",
            Self::Storage => "storage",
            Self::Relay(_) => "relay",
            Self::Undelivered(_) => "undelivered",
            Self::Forged => "forged",
            Self::Flooded => "flooded",
            Self::InvalidKey => "invalid_key",
            Self::ForgedPrekey => "forged_prekey",
            Self::WrongSafetyNumber => "wrong_safety_number",
            Self::BadCommand => "bad_command",
            Self::HistoryDamaged => "history_damaged",
            Self::Internal => "internal",
        }
    }

    /// The relay's own code, when the relay refused something.
    pub fn relay_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Relay(code) | Self::Undelivered(code) => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for ProblemCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The stable snake_case name of the relay's `code`. Every code is named
/// here (no wildcard), so a new one fails the build until it has a name.
pub fn relay_code_str(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadFrame => "bad_frame",
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::NotRegistered => "not_registered",
        ErrorCode::BadProof => "bad_proof",
        ErrorCode::NameTaken => "name_taken",
        ErrorCode::NoSuchUser => "no_such_user",
        ErrorCode::NoSuchRoom => "no_such_room",
        ErrorCode::NotMember => "not_member",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::QueueFull => "queue_full",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::Internal => "internal",
        ErrorCode::LimitReached => "limit_reached",
        ErrorCode::BadPrekey => "bad_prekey",
        ErrorCode::NoSuchBlob => "no_such_blob",
        ErrorCode::BadChunk => "bad_chunk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_name_the_relays_code() {
        let codes = [
            ProblemCode::NotInRoom,
            ProblemCode::NoSuchUser,
            ProblemCode::Yourself,
            ProblemCode::KeyChanged,
            ProblemCode::NoKeyYet,
            ProblemCode::TooManyWaiting,
            ProblemCode::NotConnected,
            ProblemCode::TooLong,
            ProblemCode::Storage,
            ProblemCode::Relay(ErrorCode::QueueFull),
            ProblemCode::Undelivered(ErrorCode::QueueFull),
            ProblemCode::Forged,
            ProblemCode::Flooded,
            ProblemCode::InvalidKey,
            ProblemCode::ForgedPrekey,
            ProblemCode::WrongSafetyNumber,
            ProblemCode::BadCommand,
            ProblemCode::HistoryDamaged,
            ProblemCode::Internal,
            ProblemCode::NotForwardSecret,
            ProblemCode::KeyExpired,
            ProblemCode::Migrated,
            ProblemCode::File,
            ProblemCode::FileDamaged,
        ];
        let names: std::collections::BTreeSet<&str> = codes.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), codes.len());
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
        assert_eq!(
            ProblemCode::Relay(ErrorCode::LimitReached).relay_code(),
            Some(ErrorCode::LimitReached)
        );
        assert_eq!(ProblemCode::NotInRoom.relay_code(), None);
        assert_eq!(relay_code_str(ErrorCode::QueueFull), "queue_full");
        assert_eq!(relay_code_str(ErrorCode::NoSuchUser), "no_such_user");
    }
}
