//! What clients send each other ([`PeerBody`]), and the parts of a sealed
//! message shared by sealing and opening (`session/sending.rs`,
//! `session/receiving.rs`).
//!
//! A message is one body encrypted once (AES-256-CTR) under a fresh content
//! key, plus one 80-byte key slot per recipient: the content key, masked with
//! the chain's key for the message, sealed with AES-256-GCM under that
//! recipient's pair key, with a BLAKE3 digest of the whole message (header
//! and body ciphertext) as associated data. The header commits to the
//! content key. docs/protocol.md gives the exact bytes and the argument that
//! this is as strong as a GCM body.

use aes_gcm::Nonce;
use ctr::cipher::StreamCipher;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{Fingerprint, len_u32};
use crate::secret::{ContentKey, KEY_LEN};
use crate::session::{Announcement, Conversation, PairReply, SessionId};
use crate::wire;

/// Version of everything clients send each other inside the relay's frames.
pub const PEER_VERSION: u8 = 2;
/// Length of an encoded [`KeySlot`].
pub const SLOT_LEN: usize = 32 + KEY_LEN + TAG_LEN;
/// Plaintexts are padded to a multiple of this many bytes (after a 12-byte
/// prefix: send time and length), so the relay learns lengths only to this
/// granularity.
pub const PAD_BLOCK: usize = 64;
/// Largest plaintext [`SendingSession::seal`](crate::SendingSession::seal) accepts.
pub const MAX_PLAINTEXT_LEN: usize = 512 * 1024;

pub(crate) const TAG_LEN: usize = 16;
/// postcard's variant index of [`PeerBody::Message`].
pub(crate) const MESSAGE_VARIANT: u8 = 1;
/// BLAKE3 derive-key context of the message digest.
const MESSAGE_CONTEXT: &str = "sotto/v2/message";
const COMMIT_LABEL: &[u8] = b"sotto/v2/commit\0";
const SLOT_LABEL: &[u8; 14] = b"sotto/v2/slot\0";
const ROSTER_LABEL: &[u8] = b"sotto/v2/roster\0";

/// What one client sends another inside a relay frame's body: version byte
/// [`PEER_VERSION`], then the postcard encoding of this enum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerBody<'a> {
    /// A pair key (and chain key) for the recipient, signed in a batch.
    Announcement(Announcement),
    /// A sealed message's shared part.
    Message(#[serde(borrow)] MessageBody<'a>),
    /// A pair key sent back under the pair key the recipient made.
    PairReply(PairReply),
}

impl<'a> PeerBody<'a> {
    /// Encodes the body with its version byte.
    pub fn encode(&self) -> Vec<u8> {
        wire::encode_versioned(PEER_VERSION, self)
    }

    /// Decodes a body, borrowing the message bytes from `bytes`. Anything
    /// malformed, trailing or of another version is
    /// [`Error::DecryptionFailed`] (P11).
    ///
    /// Decoding is canonical: the only bytes that decode to a given body are
    /// the ones [`PeerBody::encode`] writes for it.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        let Some((&PEER_VERSION, rest)) = bytes.split_first() else {
            return Err(Error::DecryptionFailed);
        };
        let body: Self = wire::decode_exact(rest).map_err(|()| Error::DecryptionFailed)?;
        let canonical = match &body {
            // Cheap for the common case: postcard's only freedom here is an
            // over-long length varint, which would make the input longer.
            Self::Message(m) => {
                bytes.len()
                    == 2 + varint_len(m.header.len())
                        + m.header.len()
                        + varint_len(m.ciphertext.len())
                        + m.ciphertext.len()
            }
            Self::Announcement(_) | Self::PairReply(_) => body.encode() == bytes,
        };
        if canonical {
            Ok(body)
        } else {
            Err(Error::DecryptionFailed)
        }
    }
}

/// The part of a sealed message every recipient gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBody<'a> {
    /// The encoded [`MessageHeader`], exactly as authenticated.
    #[serde(borrow)]
    pub header: &'a [u8],
    /// AES-256-CTR of the padded plaintext under the content key; no tag
    /// (every slot authenticates it through the message digest).
    #[serde(borrow)]
    pub ciphertext: &'a [u8],
}

impl MessageBody<'_> {
    /// Decodes the header (it is only authenticated once the message opens),
    /// refusing any encoding but the canonical one.
    pub fn header(&self) -> Result<MessageHeader> {
        wire::decode_canonical(self.header).map_err(|()| Error::DecryptionFailed)
    }
}

/// The authenticated, unencrypted header of a message (P4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageHeader {
    /// [`PEER_VERSION`].
    pub version: u8,
    /// Where the message belongs.
    pub conversation: Conversation,
    /// Who sent it.
    pub sender: Fingerprint,
    /// The sender's session it was sealed in.
    pub session_id: SessionId,
    /// That session's epoch.
    pub epoch: u32,
    /// The sender's sequence number in this conversation.
    pub seq: u64,
    /// [`roster_digest`] of the sender and every recipient of the session:
    /// who can read this message, as the sender sees it (P7).
    pub roster: [u8; 32],
    /// SHA-256 commitment to the content key (P8).
    pub commitment: [u8; 32],
}

/// One recipient's key slot: the content key sealed under the pairwise
/// session key. Encoded as 80 raw bytes: recipient fingerprint, encrypted
/// key, tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySlot {
    /// Whose slot this is.
    pub recipient: Fingerprint,
    /// The encrypted content key.
    pub ciphertext: [u8; KEY_LEN],
    /// Its AES-GCM tag.
    pub tag: [u8; TAG_LEN],
}

impl KeySlot {
    /// The 80-byte encoding.
    pub fn to_bytes(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        let (recipient, rest) = out.split_at_mut(32);
        let (ciphertext, tag) = rest.split_at_mut(KEY_LEN);
        recipient.copy_from_slice(&self.recipient.0);
        ciphertext.copy_from_slice(&self.ciphertext);
        tag.copy_from_slice(&self.tag);
        out
    }

    /// Decodes 80 bytes; any other length is [`Error::DecryptionFailed`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: &[u8; SLOT_LEN] = bytes.try_into().map_err(|_| Error::DecryptionFailed)?;
        let (recipient, rest) = bytes.split_at(32);
        let (ciphertext, tag) = rest.split_at(KEY_LEN);
        let fail = |_| Error::DecryptionFailed;
        Ok(Self {
            recipient: Fingerprint(recipient.try_into().map_err(fail)?),
            ciphertext: ciphertext.try_into().map_err(fail)?,
            tag: tag.try_into().map_err(fail)?,
        })
    }
}

/// A sealed message: the shared body (an encoded [`PeerBody::Message`]) and
/// one slot per recipient, ascending by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedMessage {
    /// Sequence number the message carries.
    pub seq: u64,
    /// The encoded body, for every recipient.
    pub body: Vec<u8>,
    /// One slot per recipient.
    pub slots: Vec<KeySlot>,
}

/// A message that passed every check.
#[derive(Debug)]
pub struct Opened {
    /// The sender's sequence number (order by it, not by arrival).
    pub seq: u64,
    /// The sender's clock at sending, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// [`roster_digest`] of the sender and the recipients the sender sealed
    /// to; compare it with the digest of your own view of the members to
    /// detect a relay showing different rosters (P7).
    pub roster: [u8; 32],
    /// The plaintext, wiped when dropped.
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// Digest of a conversation's member set (sender included), in any order,
/// duplicates ignored.
pub fn roster_digest(members: impl IntoIterator<Item = Fingerprint>) -> [u8; 32] {
    let mut members: Vec<Fingerprint> = members.into_iter().collect();
    members.sort_unstable();
    members.dedup();
    let mut hash = Sha256::new_with_prefix(ROSTER_LABEL);
    hash.update(len_u32(members.len()).to_be_bytes());
    for member in &members {
        hash.update(member.0);
    }
    hash.finalize().into()
}

pub(crate) fn commitment(key: &ContentKey) -> [u8; 32] {
    Sha256::new_with_prefix(COMMIT_LABEL)
        .chain_update(key.0)
        .finalize()
        .into()
}

/// Binds a slot to the whole message, header and ciphertext. It must be a
/// collision-resistant hash, not a MAC under the content key: every
/// recipient knows that key and could otherwise forge another body for the
/// other recipients. BLAKE3 (derive-key mode, context [`MESSAGE_CONTEXT`])
/// rather than SHA-256: it hashes a 64 KiB body in a fifth of the time
/// here, and after the body cipher it is the largest cost of sealing.
pub(crate) fn message_digest(header: &[u8], ciphertext: &[u8]) -> [u8; 32] {
    // Derive-key mode hashes the context string into the key on its own,
    // one compression: done once, and the hasher cloned for each message
    // (the same output, one compression fewer per seal and per open).
    static HASHER: std::sync::LazyLock<blake3::Hasher> =
        std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key(MESSAGE_CONTEXT));
    HASHER
        .clone()
        .update(&len_u32(header.len()).to_be_bytes())
        .update(header)
        .update(ciphertext)
        .finalize()
        .into()
}

pub(crate) fn slot_nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut nonce = [0u8; 12];
    let (_, counter) = nonce.split_at_mut(4);
    counter.copy_from_slice(&seq.to_be_bytes());
    Nonce::from(nonce)
}

pub(crate) fn slot_aad(digest: &[u8; 32], recipient: &Fingerprint) -> [u8; 78] {
    let mut aad = [0u8; 78];
    let (label, rest) = aad.split_at_mut(SLOT_LABEL.len());
    label.copy_from_slice(SLOT_LABEL);
    let (d, r) = rest.split_at_mut(32);
    d.copy_from_slice(digest);
    r.copy_from_slice(&recipient.0);
    aad
}

/// The body cipher: AES-256-CTR (32-bit big-endian block counter) from an
/// all-zero initial counter block, safe because each content key encrypts
/// exactly one body. The body carries no tag of its own: its integrity comes
/// from the message digest every key slot authenticates (see
/// docs/protocol.md), so a GCM tag would only cost a second pass.
fn body_cipher(key: &ContentKey) -> ctr::Ctr32BE<aes::Aes256> {
    use ctr::cipher::KeyIvInit;
    ctr::Ctr32BE::<aes::Aes256>::new(&key.0.into(), &[0u8; 16].into())
}

/// Length of postcard's varint encoding of `value`.
pub(crate) fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - value.leading_zeros();
    (bits.max(1)).div_ceil(7) as usize
}

/// Appends postcard's unsigned LEB128 varint of `value`.
fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "masked to 7 bits, so the value fits in a byte"
        )]
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes an encoded `PeerBody::Message` of `version` directly: version,
/// variant, `header` (length-prefixed), then the ciphertext
/// (length-prefixed) of the padded plaintext, encrypted straight from the
/// caller's buffer under `key`. Returns the body and where its ciphertext
/// starts.
pub(crate) fn encrypt_body(
    version: u8,
    header: &[u8],
    sent_at_ms: u64,
    plaintext: &[u8],
    key: &ContentKey,
) -> Result<(Vec<u8>, usize)> {
    let padded_len = padded_len(plaintext.len());
    let mut body = Vec::with_capacity(header.len() + padded_len + 12);
    body.push(version);
    body.push(MESSAGE_VARIANT);
    push_varint(&mut body, header.len());
    body.extend_from_slice(header);
    push_varint(&mut body, padded_len);
    let start = body.len();
    body.extend_from_slice(&sent_at_ms.to_le_bytes());
    body.extend_from_slice(&len_u32(plaintext.len()).to_le_bytes());
    body.resize(start + padded_len, 0);

    // Encrypt prefix, content and padding in order; the content goes
    // straight from the caller's buffer to the output (one pass, no
    // separate copy).
    let mut cipher = body_cipher(key);
    let (prefix, rest) = body
        .get_mut(start..)
        .unwrap_or_default()
        .split_at_mut(PREFIX_LEN);
    let (content, padding) = rest.split_at_mut(plaintext.len());
    let too_long = |_| Error::InvalidParameter("plaintext too long");
    cipher.try_apply_keystream(prefix).map_err(too_long)?;
    cipher
        .try_apply_keystream_b2b(plaintext, content)
        .map_err(too_long)?;
    cipher.try_apply_keystream(padding).map_err(too_long)?;
    Ok((body, start))
}

/// Whether `len` is a possible ciphertext length: at least one block of
/// padding, a multiple of [`PAD_BLOCK`] (there is no tag).
pub(crate) fn is_padded_len(len: usize) -> bool {
    len >= PAD_BLOCK && len.is_multiple_of(PAD_BLOCK)
}

/// Decrypts an authenticated body under its committed `key` and unpads
/// it: the send time and the plaintext. Call it only once the slot opened
/// and the key matched the commitment (protocol.md 16, step 11).
pub(crate) fn decrypt_body(
    key: &ContentKey,
    ciphertext: &[u8],
) -> Result<(u64, Zeroizing<Vec<u8>>)> {
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    body_cipher(key)
        .try_apply_keystream(plain.as_mut_slice())
        .map_err(|_| Error::DecryptionFailed)?;
    unpad(plain)
}

/// Bytes before the content in a body's plaintext: `sent_at_ms` (u64 LE)
/// and the content length (u32 LE).
const PREFIX_LEN: usize = 12;

fn padded_len(plaintext_len: usize) -> usize {
    PREFIX_LEN
        .saturating_add(plaintext_len)
        .div_ceil(PAD_BLOCK)
        .saturating_mul(PAD_BLOCK)
}

/// Splits off the send time and strips the zero padding, refusing
/// anything but the exact layout `seal` writes.
fn unpad(mut padded: Zeroizing<Vec<u8>>) -> Result<(u64, Zeroizing<Vec<u8>>)> {
    let (prefix, rest) = padded
        .split_first_chunk::<PREFIX_LEN>()
        .ok_or(Error::DecryptionFailed)?;
    let (sent_at, len) = prefix.split_at(8);
    let sent_at_ms = u64::from_le_bytes(sent_at.try_into().map_err(|_| Error::DecryptionFailed)?);
    let len = u32::from_le_bytes(len.try_into().map_err(|_| Error::DecryptionFailed)?);
    let len = usize::try_from(len).map_err(|_| Error::DecryptionFailed)?;
    if padded.len() != padded_len(len) {
        return Err(Error::DecryptionFailed);
    }
    let padding = rest.get(len..).ok_or(Error::DecryptionFailed)?;
    if padding.iter().fold(0u8, |acc, &b| acc | b) != 0 {
        return Err(Error::DecryptionFailed);
    }
    padded.copy_within(PREFIX_LEN..PREFIX_LEN + len, 0);
    padded.truncate(len);
    Ok((sent_at_ms, padded))
}
