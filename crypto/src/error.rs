//! The one error type of this crate.

/// Everything that can go wrong in `sotto-crypto`.
///
/// Failures to open a message or accept a session announcement are
/// deliberately opaque: whichever check failed (encoding, context, signature,
/// key slot, key commitment, body tag, replay window), the caller sees the
/// single variant [`Error::DecryptionFailed`], so neither the relay nor a
/// peer can learn which check tripped (property P11).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message, key slot or session announcement failed any check.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The identity file is intact but the passphrase does not open it.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The identity file is damaged or is not a sotto identity file.
    #[error("the identity file is corrupted or is not a sotto identity file")]
    CorruptIdentityFile,
    /// A format version this build does not know.
    #[error("unsupported format version {0} (made by a newer sotto, or damaged)")]
    UnsupportedVersion(u8),
    /// Bytes that do not encode an acceptable sotto public identity
    /// (malformed, or not two distinct RSA keys of exactly 3072 bits with
    /// public exponent 65537).
    #[error("invalid public identity")]
    InvalidPublicIdentity,
    /// A signed prekey that fails any check (encoding, owner, key, times,
    /// signature: one opaque error), or a stored prekey secret that does
    /// not decode.
    #[error("invalid prekey")]
    InvalidPrekey,
    /// A registration proof that does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// An empty passphrase was offered for an identity file.
    #[error("the passphrase must not be empty")]
    EmptyPassphrase,
    /// A parameter outside its documented range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// A sending session used up its message budget and must be rotated.
    #[error("the session must be rotated before sending more messages")]
    SessionExhausted,
    /// The sequence counter cannot advance (it would overflow or go backwards).
    #[error("the sequence counter is exhausted")]
    CounterExhausted,
    /// An RSA operation failed for a reason other than bad input
    /// (key generation, encryption to a valid key, signing).
    #[error("RSA operation failed")]
    Rsa,
    /// Reading or writing a file (identity, sequence counter) failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
