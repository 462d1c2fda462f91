//! The error type of this crate.

use crate::codec::PROTOCOL_VERSION;

/// Why a frame could not be encoded or decoded.
///
/// After any decoding error the connection's byte stream can no longer be
/// trusted to be in sync; callers should close it (a relay may first send
/// an [`ErrorCode`](crate::ErrorCode)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame's length is over [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN).
    ///
    /// When decoding, this is detected from the length prefix alone, before
    /// anything is allocated for the frame.
    #[error("frame of {len} bytes exceeds the maximum frame length of {max} bytes")]
    FrameTooLarge {
        /// The frame's length (version byte and body, without the prefix).
        len: usize,
        /// The maximum allowed length.
        max: usize,
    },
    /// The frame starts with a protocol version other than
    /// [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {0} (this build speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The frame is empty, truncated, fails to decode, carries an invalid
    /// name, or has bytes left over after the frame.
    #[error("malformed frame")]
    Malformed,
    /// The underlying transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
