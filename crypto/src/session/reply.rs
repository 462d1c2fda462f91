//! The pair reply: a member who accepted a sender's pair key sends its own
//! pair key (and chain key) back under it, with no RSA operation and no
//! signature. Only the two of them hold the key it answers: the sender
//! made it and wrapped it to the member's prekey, so a reply that opens
//! comes from the member (protocol.md 14.5).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{SECRET_LEN, SessionContext};
use crate::error::{Error, Result};
use crate::kdf::hkdf32;
use crate::message::TAG_LEN;
use crate::secret::SessionKey;
use crate::wire;

const REPLY_LABEL: &[u8] = b"sotto/v2/pair-reply\0";

/// A pair key and chain key sent back under the pair key they answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairReply {
    /// What the key is bound to; `via` names the session it answers.
    pub context: SessionContext,
    /// The AES-256-GCM nonce, random.
    pub nonce: [u8; 12],
    /// AES-256-GCM of the 64-byte secret with its 16-byte tag.
    pub sealed: Vec<u8>,
}

/// `HKDF-SHA256(salt = "sotto/v2/pair-reply\0", ikm = answered, info =
/// postcard(context))` and the associated data `"sotto/v2/pair-reply\0" ||
/// postcard(context)`.
fn reply_cipher(answered: &SessionKey, context: &SessionContext) -> (Aes256Gcm, Vec<u8>) {
    let encoded = wire::encode(context);
    let key = hkdf32(REPLY_LABEL, answered.expose_secret(), &encoded);
    let mut aad = REPLY_LABEL.to_vec();
    aad.extend_from_slice(&encoded);
    (Aes256Gcm::new((&*key).into()), aad)
}

/// Seals `secret` for `context` under `answered`, the pair key the
/// recipient made for the replier.
pub(crate) fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    answered: &SessionKey,
    context: SessionContext,
    secret: &[u8; SECRET_LEN],
) -> Result<PairReply> {
    let (cipher, aad) = reply_cipher(answered, &context);
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let mut sealed = secret.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), &aad, sealed.as_mut_slice().into())
        .map_err(|_| Error::InvalidParameter("pair reply"))?;
    sealed.extend_from_slice(&tag);
    Ok(PairReply {
        context,
        nonce,
        sealed,
    })
}

/// Opens a reply under `answered`; any failure is
/// [`Error::DecryptionFailed`].
pub(crate) fn open(
    answered: &SessionKey,
    reply: &PairReply,
) -> Result<Zeroizing<[u8; SECRET_LEN]>> {
    if reply.sealed.len() != SECRET_LEN + TAG_LEN {
        return Err(Error::DecryptionFailed);
    }
    let (sealed, tag) = reply.sealed.split_at(SECRET_LEN);
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| Error::DecryptionFailed)?;
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    secret.copy_from_slice(sealed);
    let (cipher, aad) = reply_cipher(answered, &reply.context);
    cipher
        .decrypt_inout_detached(
            &Nonce::from(reply.nonce),
            &aad,
            secret.as_mut_slice().into(),
            &Tag::from(tag),
        )
        .map_err(|_| Error::DecryptionFailed)?;
    Ok(secret)
}
