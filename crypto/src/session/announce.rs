//! Announcements, version 2: a pair key and a chain key wrapped to the
//! recipient's prekey (or identity key), many of them signed with one
//! signature over a Merkle tree, and accepted signature first (P3).

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::merkle::{self, Hash};
use super::{ReceivingSession, SECRET_LEN, SessionContext, Via};
use crate::error::{Error, Result};
use crate::identity::{Identity, PublicIdentity, RSA_LEN, len_u32};
use crate::prekey::PrekeySecret;
use crate::wire;

const ANNOUNCE_LABEL: &[u8] = b"sotto/v2/announce\0";

/// The most announcements one signature covers: a larger batch is signed
/// in several (a path of at most 12 hashes).
pub const MAX_BATCH: usize = 4096;

/// A wrapped key not yet signed: what a sending session makes for each
/// recipient it adds, for [`sign_announcements`] to sign with
/// others in one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsignedAnnouncement {
    pub(crate) context: SessionContext,
    pub(crate) wrapped_key: Vec<u8>,
}

impl UnsignedAnnouncement {
    /// What the key is bound to.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }
}

/// A pair key and chain key for one recipient, wrapped to its prekey or
/// identity key, with the proof that the sender signed it: the leaf's place
/// in a signed batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// What the key is bound to.
    pub context: SessionContext,
    /// RSA-OAEP-SHA256 of the 64-byte secret, label
    /// `sotto/v2/session-key\0 || postcard(context)`.
    pub wrapped_key: Vec<u8>,
    /// The leaf's index in its batch.
    pub index: u32,
    /// How many announcements the batch holds.
    pub size: u32,
    /// The leaf's audit path, from the leaf up.
    pub path: Vec<[u8; 32]>,
    /// RSA-PSS-SHA256 over `sotto/v2/announce\0 || u32be(size) || root`.
    pub signature: Vec<u8>,
}

fn leaf_of(context: &SessionContext, wrapped_key: &[u8]) -> Hash {
    merkle::leaf(&wire::encode(&(context, wrapped_key)))
}

fn batch_transcript(size: u32, root: &Hash) -> Vec<u8> {
    let mut message = ANNOUNCE_LABEL.to_vec();
    message.extend_from_slice(&size.to_be_bytes());
    message.extend_from_slice(root);
    message
}

/// An announcement whose signature verified
/// ([`Announcement::verify`]): its context is the sender's own
/// word. Its key is not unwrapped yet.
#[derive(Debug)]
pub struct VerifiedAnnouncement<'a> {
    announcement: &'a Announcement,
}

impl VerifiedAnnouncement<'_> {
    /// The context the sender signed.
    pub fn context(&self) -> &SessionContext {
        &self.announcement.context
    }
}

/// Signs `unsigned` (any recipients, sessions and conversations, all made
/// by `signer`) with one PSS signature per [`MAX_BATCH`]: returns one
/// announcement per entry, in the same order.
pub fn sign_announcements<R: CryptoRng + ?Sized>(
    signer: &Identity,
    rng: &mut R,
    unsigned: Vec<UnsignedAnnouncement>,
) -> Result<Vec<Announcement>> {
    if unsigned
        .iter()
        .any(|u| u.context.sender != signer.fingerprint())
    {
        return Err(Error::InvalidParameter("not this identity's announcement"));
    }
    let mut out = Vec::with_capacity(unsigned.len());
    let mut rest = unsigned;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(MAX_BATCH));
        let batch = std::mem::replace(&mut rest, tail);
        let leaves: Vec<Hash> = batch
            .iter()
            .map(|u| leaf_of(&u.context, &u.wrapped_key))
            .collect();
        let (root, paths) = merkle::root_and_paths(&leaves);
        let size = len_u32(batch.len());
        let signature = signer.sign(rng, &batch_transcript(size, &root))?;
        for (index, (entry, path)) in batch.into_iter().zip(paths).enumerate() {
            out.push(Announcement {
                context: entry.context,
                wrapped_key: entry.wrapped_key,
                index: len_u32(index),
                size,
                path,
                signature: signature.clone(),
            });
        }
    }
    Ok(out)
}

impl Announcement {
    /// The first, cheap half of accepting an announcement from `sender`
    /// (its **pinned** identity): the context names `sender` and this
    /// identity and the conversation admits them, the key was wrapped (not
    /// replied), the sizes are those of RSA-3072, the leaf's path leads to a
    /// root, and the sender's PSS signature over that root verifies (one
    /// RSA public-key operation, no private-key work). Every failure is
    /// [`Error::DecryptionFailed`] (P11).
    pub fn verify(
        &self,
        recipient: &Identity,
        sender: &PublicIdentity,
    ) -> Result<VerifiedAnnouncement<'_>> {
        let announcement = self;
        let context = &announcement.context;
        let well_formed = context.names(sender.fingerprint(), recipient.fingerprint())
            && !matches!(context.via, Via::Reply(_))
            && announcement.wrapped_key.len() == RSA_LEN
            && announcement.signature.len() == RSA_LEN
            && usize::try_from(announcement.size).is_ok_and(|size| size <= MAX_BATCH);
        if !well_formed {
            return Err(Error::DecryptionFailed);
        }
        let root = merkle::root_from_path(
            leaf_of(context, &announcement.wrapped_key),
            u64::from(announcement.index),
            u64::from(announcement.size),
            &announcement.path,
        )
        .ok_or(Error::DecryptionFailed)?;
        sender.verify(
            &batch_transcript(announcement.size, &root),
            &announcement.signature,
        )?;
        Ok(VerifiedAnnouncement { announcement })
    }

    /// Both halves, for tests and tools: [`Announcement::verify`] then
    /// [`VerifiedAnnouncement::accept`].
    pub fn accept<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        recipient: &Identity,
        sender: &PublicIdentity,
        now: u64,
        prekey: Option<&PrekeySecret>,
    ) -> Result<ReceivingSession> {
        self.verify(recipient, sender)?
            .accept(rng, recipient, now, prekey)
    }
}

impl VerifiedAnnouncement<'_> {
    /// The second half: refuses a session that is not current at `now`
    /// ([`SessionContext::is_current`]), then unwraps the secret (RSA-OAEP
    /// with blinding) with the prekey the context names, which the caller
    /// looks up and passes as `prekey`, or with this identity's key when
    /// the context says [`Via::Identity`]. A missing or other prekey, or a
    /// secret that is not exactly a pair key and a chain key:
    /// [`Error::DecryptionFailed`].
    pub fn accept<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        recipient: &Identity,
        now: u64,
        prekey: Option<&PrekeySecret>,
    ) -> Result<ReceivingSession> {
        let announcement = self.announcement;
        let context = &announcement.context;
        if !context.is_current(now) {
            return Err(Error::DecryptionFailed);
        }
        let label = context.wrap_label();
        let secret: Zeroizing<Vec<u8>> = match (context.via, prekey) {
            (Via::Identity, None) => {
                recipient.unwrap_secret(rng, label, &announcement.wrapped_key)?
            }
            (Via::Prekey(id), Some(prekey)) if prekey.id() == id => {
                prekey.decrypt_oaep(rng, &label, &announcement.wrapped_key)?
            }
            _ => return Err(Error::DecryptionFailed),
        };
        let secret: &[u8; SECRET_LEN] = secret
            .as_slice()
            .try_into()
            .map_err(|_| Error::DecryptionFailed)?;
        Ok(ReceivingSession::from_secret(context.clone(), secret))
    }
}
