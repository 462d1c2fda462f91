//! Files and images: chunked end-to-end encryption of the blobs the relay
//! stores.
//!
//! A file does not travel inside a message. The sender encrypts it in
//! chunks under a fresh [`FileKey`] with a [`FileSealer`], uploads the
//! chunks to the relay under a fresh random [`BlobId`], and sends the
//! [`FileManifest`] (blob id, key, size, chunk count, digest) inside an
//! ordinary sealed message, which authenticates it. A recipient fetches
//! chunks on demand and opens them in order with a [`FileOpener`]. The
//! relay may swap, reorder, truncate or replay chunks, or serve the chunks
//! of another file: none of them opens.
//!
//! # Format
//!
//! - A file of `size` bytes, at most [`MAX_FILE_LEN`], has
//!   `count = max(1, ceil(size / CHUNK_LEN))` chunks ([`chunk_count`]).
//!   Chunk `i < count - 1` holds exactly [`CHUNK_LEN`] (65,536) plaintext
//!   bytes; the last holds `size - (count - 1) * CHUNK_LEN`: 1 to 65,536
//!   bytes, or 0 for the empty file, which is one empty chunk.
//! - Chunk `i` is
//!
//!   ```text
//!   AES-256-GCM(key   = the file key,
//!               nonce = 8 zero bytes || u32be(i),
//!               aad   = FILE_CHUNK_LABEL || blob id (16) || u32be(i) || u32be(count) || u64be(size),
//!               the chunk's plaintext) || tag (16)
//!   ```
//!
//!   with [`FILE_CHUNK_LABEL`] = `"sotto/v2/file-chunk\0"` (20 bytes): its
//!   plaintext's length plus [`TAG_LEN`], so [`CHUNK_CIPHERTEXT_LEN`]
//!   (65,552) bytes for every chunk but the last.
//! - The digest is BLAKE3 in derive-key mode with the context
//!   [`FILE_DIGEST_CONTEXT`] (`"sotto/v2/file-digest"`) over the whole
//!   plaintext, in order: 32 bytes.
//!
//! # Why it holds
//!
//! - The index in the associated data keeps a chunk from opening at any
//!   other index (swapped, reordered, replayed). The count and size fix
//!   which chunk is last and how long it is, so a truncated file never
//!   completes and a non-last chunk never opens as the last. The key and
//!   the blob id keep the chunks of another file out. The recipient checks
//!   the digest after the last chunk, in addition to every tag.
//! - The nonce is the index. That is safe because every file has a fresh
//!   key and each chunk is encrypted once: a [`FileSealer`] draws its own
//!   key and seals each index once, in order. Resuming an upload resends
//!   the stored ciphertext; it never seals again.
//! - Every failure to open (a wrong length, tag, index or digest, a chunk
//!   too many, an inconsistent manifest) is the one opaque
//!   [`Error::DecryptionFailed`] (property P11).
//!
//! # Known answer
//!
//! Key `[7; 32]`, blob id `[9; 16]`, plaintext `b"sotto"` (size 5, one
//! chunk), checked against OpenSSL's AES-GCM and Python's `blake3`:
//!
//! ```text
//! chunk 0 = 12b7d0c6948504d28a2e1269c42b2f07b0662bf8b7
//! digest  = e9df87878354ad8237d0cf10e589797eebe5cdd519132cfd8143422cce665921
//! ```
//!
//! # Example
//!
//! ```
//! use sotto_crypto::file::{FileOpener, FileSealer};
//!
//! # fn main() -> Result<(), sotto_crypto::Error> {
//! let file = vec![0x5a; 100_000];
//!
//! // The sender seals the chunks in order, uploads them under
//! // `manifest.blob` and sends `manifest` in a sealed message.
//! let mut sealer = FileSealer::new(file.len() as u64)?;
//! let mut chunks = Vec::new();
//! let mut rest = &file[..];
//! while let Some(len) = sealer.next_chunk_len() {
//!     let (chunk, tail) = rest.split_at(len);
//!     chunks.push(sealer.seal_chunk(chunk)?);
//!     rest = tail;
//! }
//! let manifest = sealer.finish()?;
//!
//! // The recipient opens them in order; the file is whole once `finish`
//! // accepts it.
//! let mut opener = FileOpener::new(&manifest)?;
//! let mut received = Vec::new();
//! for (index, chunk) in (0..).zip(&chunks) {
//!     received.extend(opener.open_chunk(index, chunk)?);
//! }
//! opener.finish()?;
//! assert_eq!(received, file);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io::Read;
use std::sync::LazyLock;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::Rng as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};
use crate::secret::KEY_LEN;

/// Plaintext bytes in every chunk but the last.
pub const CHUNK_LEN: usize = 65_536;
/// Length of the AES-GCM tag at the end of every sealed chunk.
pub const TAG_LEN: usize = 16;
/// Length of every sealed chunk but the last.
pub const CHUNK_CIPHERTEXT_LEN: usize = CHUNK_LEN + TAG_LEN;
/// The largest file: [`u32::MAX`] full chunks.
pub const MAX_FILE_LEN: u64 = CHUNK_LEN as u64 * u32::MAX as u64;
/// Length of a [`BlobId`].
pub const BLOB_ID_LEN: usize = 16;
/// Length of a file's digest.
pub const DIGEST_LEN: usize = 32;
/// The start of every chunk's associated data.
pub const FILE_CHUNK_LABEL: &[u8; 20] = b"sotto/v2/file-chunk\0";
/// The BLAKE3 derive-key context of a file's digest.
pub const FILE_DIGEST_CONTEXT: &str = "sotto/v2/file-digest";

/// Label, blob id, index, count, size.
const AAD_LEN: usize = FILE_CHUNK_LABEL.len() + BLOB_ID_LEN + 4 + 4 + 8;

/// How many chunks a file of `size` bytes has: `max(1, ceil(size /
/// CHUNK_LEN))`.
///
/// Fails with [`Error::InvalidParameter`] above [`MAX_FILE_LEN`].
pub fn chunk_count(size: u64) -> Result<u32> {
    u32::try_from(size.div_ceil(CHUNK_LEN as u64).max(1))
        .map_err(|_| Error::InvalidParameter("file larger than MAX_FILE_LEN"))
}

/// The plaintext length of chunk `index` of a file of `size` bytes in
/// `count` chunks; `None` past the last chunk or if `count` is not the
/// file's chunk count.
fn chunk_len(size: u64, count: u32, index: u32) -> Option<usize> {
    if chunk_count(size).ok()? != count || index >= count {
        return None;
    }
    if index < count - 1 {
        return Some(CHUNK_LEN);
    }
    let before = u64::from(index) * CHUNK_LEN as u64;
    usize::try_from(size.checked_sub(before)?).ok()
}

/// A 256-bit key that encrypts one file.
///
/// Wiped from memory when dropped; its `Debug` output never contains key
/// bytes. It is `Clone` because a [`FileManifest`] is, and serializable
/// because a manifest travels in message content and the client's store.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct FileKey([u8; KEY_LEN]);

impl FileKey {
    /// Draws a fresh key from the thread's CSPRNG.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// Wraps raw key bytes, taking ownership of them.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// Compared in constant time.
impl PartialEq for FileKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for FileKey {}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey { .. }")
    }
}

/// The random name the relay stores a file's chunks under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobId(pub [u8; BLOB_ID_LEN]);

impl BlobId {
    /// Draws a fresh id from the thread's CSPRNG.
    pub fn generate() -> Self {
        let mut id = [0u8; BLOB_ID_LEN];
        rand::rng().fill_bytes(&mut id);
        Self(id)
    }

    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a recipient needs to fetch, open and check a file; it travels
/// inside a sealed message, which authenticates it.
///
/// A manifest that arrives is not trusted to be consistent:
/// [`FileOpener::new`] checks that `chunks` is `chunk_count(size)`.
/// `Debug` shows everything but the key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    /// Where the relay stores the chunks.
    pub blob: BlobId,
    /// The key the chunks are sealed under.
    pub key: FileKey,
    /// Plaintext length in bytes.
    pub size: u64,
    /// Number of chunks: [`chunk_count`]`(size)`.
    pub chunks: u32,
    /// BLAKE3 of the plaintext ([`FILE_DIGEST_CONTEXT`]).
    pub digest: [u8; DIGEST_LEN],
}

impl FileManifest {
    /// The plaintext length of chunk `index`; `None` past the last chunk or
    /// for an inconsistent manifest.
    pub fn chunk_len(&self, index: u32) -> Option<usize> {
        chunk_len(self.size, self.chunks, index)
    }

    /// The sealed length of chunk `index` (plaintext plus [`TAG_LEN`]);
    /// `None` as for [`FileManifest::chunk_len`].
    pub fn ciphertext_len(&self, index: u32) -> Option<usize> {
        Some(self.chunk_len(index)? + TAG_LEN)
    }
}

/// A fresh hasher for a file's digest: derive-key mode hashes the context
/// once, here, and each file clones the result.
fn digest_hasher() -> blake3::Hasher {
    static HASHER: LazyLock<blake3::Hasher> =
        LazyLock::new(|| blake3::Hasher::new_derive_key(FILE_DIGEST_CONTEXT));
    HASHER.clone()
}

/// AES-256-GCM under one file key, with the file's associated data.
struct ChunkCipher {
    cipher: Aes256Gcm,
    blob: BlobId,
    size: u64,
    count: u32,
}

impl ChunkCipher {
    fn nonce(index: u32) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        let (_, counter) = nonce.split_at_mut(8);
        counter.copy_from_slice(&index.to_be_bytes());
        nonce
    }

    fn aad(&self, index: u32) -> [u8; AAD_LEN] {
        let mut aad = [0u8; AAD_LEN];
        let parts: [&[u8]; 5] = [
            FILE_CHUNK_LABEL,
            &self.blob.0,
            &index.to_be_bytes(),
            &self.count.to_be_bytes(),
            &self.size.to_be_bytes(),
        ];
        for (to, from) in aad.iter_mut().zip(parts.into_iter().flatten()) {
            *to = *from;
        }
        aad
    }

    fn chunk_len(&self, index: u32) -> Option<usize> {
        chunk_len(self.size, self.count, index)
    }

    /// Encrypts `buf` in place and appends the tag.
    fn seal(&self, index: u32, buf: &mut Vec<u8>) -> Result<()> {
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(Self::nonce(index)),
                &self.aad(index),
                buf.as_mut_slice().into(),
            )
            .map_err(|_| Error::InvalidParameter("chunk too large for AES-GCM"))?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Checks and strips the tag at the end of `buf` and decrypts the rest
    /// in place.
    fn open(&self, index: u32, buf: &mut Vec<u8>) -> Result<()> {
        let at = buf
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(Error::DecryptionFailed)?;
        let tag = Tag::try_from(buf.get(at..).ok_or(Error::DecryptionFailed)?)
            .map_err(|_| Error::DecryptionFailed)?;
        buf.truncate(at);
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(Self::nonce(index)),
                &self.aad(index),
                buf.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| Error::DecryptionFailed)
    }
}

/// Encrypts one file, chunk by chunk in order, under a key and blob id it
/// draws itself, and hashes it on the way.
///
/// Each index is sealed once: a sealer cannot be rewound, copied or given
/// a key, which is what makes the index a safe nonce.
pub struct FileSealer {
    chunks: ChunkCipher,
    key: FileKey,
    next: u32,
    hasher: blake3::Hasher,
}

impl fmt::Debug for FileSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSealer")
            .field("blob", &self.chunks.blob)
            .field("size", &self.chunks.size)
            .field("chunks", &self.chunks.count)
            .field("sealed", &self.next)
            .finish_non_exhaustive()
    }
}

impl FileSealer {
    /// A sealer for a file of `size` bytes, with a fresh key and blob id.
    ///
    /// Fails with [`Error::InvalidParameter`] above [`MAX_FILE_LEN`].
    pub fn new(size: u64) -> Result<Self> {
        Self::with_key(FileKey::generate(), BlobId::generate(), size)
    }

    /// Only for known answers: a key must never seal two files.
    fn with_key(key: FileKey, blob: BlobId, size: u64) -> Result<Self> {
        let count = chunk_count(size)?;
        Ok(Self {
            chunks: ChunkCipher {
                cipher: Aes256Gcm::new(key.expose_secret().into()),
                blob,
                size,
                count,
            },
            key,
            next: 0,
            hasher: digest_hasher(),
        })
    }

    /// The blob id the chunks are to be uploaded under.
    pub fn blob(&self) -> BlobId {
        self.chunks.blob
    }

    /// How many plaintext bytes the next chunk must hold; `None` once every
    /// chunk is sealed. The empty file has one chunk, of 0 bytes.
    pub fn next_chunk_len(&self) -> Option<usize> {
        self.chunks.chunk_len(self.next)
    }

    /// Seals the next chunk, of exactly [`FileSealer::next_chunk_len`]
    /// bytes, and returns it with its tag.
    ///
    /// Fails with [`Error::InvalidParameter`], sealing nothing, for
    /// another length or once every chunk is sealed.
    pub fn seal_chunk(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.check_next(plaintext.len())?;
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        self.seal_chunk_in_place(&mut buf)?;
        Ok(buf)
    }

    /// [`FileSealer::seal_chunk`] without a copy: `buf` holds the
    /// plaintext and, on success, the sealed chunk; on failure it is
    /// untouched.
    pub fn seal_chunk_in_place(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let index = self.check_next(buf.len())?;
        self.hasher.update(buf);
        // Cannot fail: a chunk is far below AES-GCM's limit.
        self.chunks.seal(index, buf)?;
        self.next = index + 1;
        Ok(())
    }

    fn check_next(&self, len: usize) -> Result<u32> {
        let expected = self
            .next_chunk_len()
            .ok_or(Error::InvalidParameter("every chunk is already sealed"))?;
        if len != expected {
            return Err(Error::InvalidParameter(
                "a chunk holds CHUNK_LEN bytes, the last one the rest of the file",
            ));
        }
        Ok(self.next)
    }

    /// The manifest to send, once every chunk is sealed.
    ///
    /// Fails with [`Error::InvalidParameter`] if a chunk was not sealed.
    pub fn finish(self) -> Result<FileManifest> {
        if self.next != self.chunks.count {
            return Err(Error::InvalidParameter("not every chunk was sealed"));
        }
        Ok(FileManifest {
            blob: self.chunks.blob,
            key: self.key,
            size: self.chunks.size,
            chunks: self.chunks.count,
            digest: self.hasher.finalize().into(),
        })
    }
}

/// Opens one file's chunks in order and checks the whole file's digest.
///
/// Every chunk it returns is authentic, but the file is whole only once
/// [`FileOpener::finish`] accepts it. A chunk that fails to open leaves
/// the opener where it was, so it can be fetched again.
pub struct FileOpener {
    chunks: ChunkCipher,
    digest: [u8; DIGEST_LEN],
    next: u32,
    hasher: blake3::Hasher,
}

impl fmt::Debug for FileOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileOpener")
            .field("blob", &self.chunks.blob)
            .field("size", &self.chunks.size)
            .field("chunks", &self.chunks.count)
            .field("opened", &self.next)
            .finish_non_exhaustive()
    }
}

impl FileOpener {
    /// An opener for the file of `manifest`, at chunk 0.
    ///
    /// Fails with [`Error::DecryptionFailed`] if `manifest.chunks` is not
    /// `chunk_count(manifest.size)`.
    pub fn new(manifest: &FileManifest) -> Result<Self> {
        if chunk_count(manifest.size).ok() != Some(manifest.chunks) {
            return Err(Error::DecryptionFailed);
        }
        Ok(Self {
            chunks: ChunkCipher {
                cipher: Aes256Gcm::new(manifest.key.expose_secret().into()),
                blob: manifest.blob,
                size: manifest.size,
                count: manifest.chunks,
            },
            digest: manifest.digest,
            next: 0,
            hasher: digest_hasher(),
        })
    }

    /// An opener that continues a download at chunk `chunks_done`: it
    /// reads and hashes the plaintext of chunks `0..chunks_done` (as
    /// written before, `chunks_done * CHUNK_LEN` bytes, or `size` if every
    /// chunk is done) from `plaintext`, and nothing beyond it.
    ///
    /// A prefix that differs from the file's is caught by
    /// [`FileOpener::finish`]. Fails with [`Error::DecryptionFailed`] for
    /// an inconsistent manifest, [`Error::InvalidParameter`] if
    /// `chunks_done` exceeds the chunk count, and [`Error::Io`] if reading
    /// fails or ends early.
    pub fn resume<R: Read + ?Sized>(
        manifest: &FileManifest,
        chunks_done: u32,
        plaintext: &mut R,
    ) -> Result<Self> {
        let mut opener = Self::new(manifest)?;
        if chunks_done > opener.chunks.count {
            return Err(Error::InvalidParameter(
                "more chunks done than the file has",
            ));
        }
        let mut buf = Zeroizing::new(vec![0u8; CHUNK_LEN]);
        for index in 0..chunks_done {
            let len = opener.chunks.chunk_len(index).unwrap_or_default();
            let chunk = buf.get_mut(..len).ok_or(Error::DecryptionFailed)?;
            plaintext.read_exact(chunk)?;
            opener.hasher.update(chunk);
        }
        opener.next = chunks_done;
        Ok(opener)
    }

    /// The index [`FileOpener::open_chunk`] expects next; `None` once every
    /// chunk is open.
    pub fn next_index(&self) -> Option<u32> {
        (self.next < self.chunks.count).then_some(self.next)
    }

    /// Opens chunk `index`, which must be the next one, and returns its
    /// plaintext.
    ///
    /// Whatever is wrong (another index, length, key, blob or file, a
    /// damaged byte, every chunk already open), the error is
    /// [`Error::DecryptionFailed`].
    pub fn open_chunk(&mut self, index: u32, ciphertext: &[u8]) -> Result<Vec<u8>> {
        self.check_next(index, ciphertext.len())?;
        let mut buf = ciphertext.to_vec();
        self.open_chunk_in_place(index, &mut buf)?;
        Ok(buf)
    }

    /// [`FileOpener::open_chunk`] without a copy: `buf` holds the sealed
    /// chunk and, on success, its plaintext; on failure it is emptied.
    pub fn open_chunk_in_place(&mut self, index: u32, buf: &mut Vec<u8>) -> Result<()> {
        let opened = self
            .check_next(index, buf.len())
            .and_then(|()| self.chunks.open(index, buf));
        if opened.is_err() {
            buf.clear();
            return Err(Error::DecryptionFailed);
        }
        self.hasher.update(buf);
        self.next = index + 1;
        Ok(())
    }

    fn check_next(&self, index: u32, len: usize) -> Result<()> {
        let expected = self
            .chunks
            .chunk_len(index)
            .ok_or(Error::DecryptionFailed)?;
        if index != self.next || len != expected + TAG_LEN {
            return Err(Error::DecryptionFailed);
        }
        Ok(())
    }

    /// Accepts the file: every chunk is open and the plaintext's digest is
    /// the manifest's. Otherwise [`Error::DecryptionFailed`].
    pub fn finish(self) -> Result<()> {
        if self.next != self.chunks.count || self.hasher.finalize() != self.digest {
            return Err(Error::DecryptionFailed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
