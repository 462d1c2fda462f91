//! The announcement of a session key: wrapped to the recipient, signed
//! with its full context by the sender, and accepted signature first (P3).

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};

use super::{ReceivingSession, SessionContext};
use crate::error::{Error, Result};
use crate::identity::{Identity, PublicIdentity, RSA_LEN};
use crate::secret::SessionKey;
use crate::wire;

const ANNOUNCE_LABEL: &[u8] = b"sotto/v1/announce\0";

/// A session key for one recipient: wrapped to the recipient's OAEP key and
/// signed, with its context, by the sender's PSS key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// What the key is bound to.
    pub context: SessionContext,
    /// RSA-OAEP-SHA256 of the 32-byte key, label `sotto/v1/session-key\0 || postcard(context)`.
    pub wrapped_key: Vec<u8>,
    /// RSA-PSS-SHA256 over `sotto/v1/announce\0 || postcard((context, wrapped_key))`.
    pub signature: Vec<u8>,
}

fn announcement_transcript(context: &SessionContext, wrapped_key: &[u8]) -> Vec<u8> {
    let mut message = ANNOUNCE_LABEL.to_vec();
    message.extend_from_slice(&wire::encode(&(context, wrapped_key)));
    message
}

/// An announcement whose signature verified ([`Identity::verify_announcement`]):
/// its context is the sender's own word. Its key is not unwrapped yet.
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

impl Identity {
    /// Wraps `key` to `recipient` and signs it with its full `context`.
    pub fn announce<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        recipient: &PublicIdentity,
        context: SessionContext,
        key: &SessionKey,
    ) -> Result<Announcement> {
        if context.sender != self.fingerprint() || context.recipient != recipient.fingerprint() {
            return Err(Error::InvalidParameter(
                "context does not name sender and recipient",
            ));
        }
        let wrapped_key = recipient.wrap_session_key(rng, context.label(), key)?;
        let signature = self.sign(rng, &announcement_transcript(&context, &wrapped_key))?;
        Ok(Announcement {
            context,
            wrapped_key,
            signature,
        })
    }

    /// Accepts an announcement from `sender` addressed to this identity.
    ///
    /// Checks, in order: the context names `sender` and this identity, the
    /// sizes are those of RSA-3072, and the sender's PSS signature verifies.
    /// Only then is the key decrypted (with blinding), so forged or
    /// unsigned wraps never reach RSA decryption (P3). Every failure is
    /// [`Error::DecryptionFailed`] (P11).
    ///
    /// The caller still decides whether the session is welcome: that
    /// `sender` belongs in `context.conversation` and that `context.epoch`
    /// is newer than the sender's current one (no rollback).
    ///
    /// [`Identity::accept`] does not look at the clock; a receiver uses
    /// [`Identity::verify_announcement`] and
    /// [`Identity::accept_verified`], which also enforce the session's age.
    pub fn accept<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        announcement: &Announcement,
        sender: &PublicIdentity,
    ) -> Result<ReceivingSession> {
        let verified = self.verify_announcement(announcement, sender)?;
        self.unwrap_verified(rng, &verified)
    }

    /// The first, cheap half of [`Identity::accept`]: the context names
    /// `sender` and this identity, the sizes are those of RSA-3072, and the
    /// sender's PSS signature verifies (one RSA public-key operation, about
    /// 0.15 ms). No private-key operation. Every failure is
    /// [`Error::DecryptionFailed`] (P11).
    ///
    /// A caller that rations announcements per sender charges the sender
    /// only once this succeeded: a forgery is the relay's doing, not the
    /// named sender's.
    pub fn verify_announcement<'a>(
        &self,
        announcement: &'a Announcement,
        sender: &PublicIdentity,
    ) -> Result<VerifiedAnnouncement<'a>> {
        let context = &announcement.context;
        let well_formed = context.sender == sender.fingerprint()
            && context.recipient == self.fingerprint()
            && context
                .conversation
                .admits(context.sender, context.recipient)
            && announcement.wrapped_key.len() == RSA_LEN
            && announcement.signature.len() == RSA_LEN;
        if !well_formed {
            return Err(Error::DecryptionFailed);
        }
        sender
            .verify(
                &announcement_transcript(context, &announcement.wrapped_key),
                &announcement.signature,
            )
            .map_err(|_| Error::DecryptionFailed)?;
        Ok(VerifiedAnnouncement { announcement })
    }

    /// The second half: refuses a session that is not current at `now`
    /// (seconds since the Unix epoch, [`SessionContext::is_current`]), then
    /// unwraps the key (one RSA-OAEP decryption, with blinding). Every
    /// failure is [`Error::DecryptionFailed`] (P11).
    pub fn accept_verified<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        verified: &VerifiedAnnouncement<'_>,
        now: u64,
    ) -> Result<ReceivingSession> {
        if !verified.context().is_current(now) {
            return Err(Error::DecryptionFailed);
        }
        self.unwrap_verified(rng, verified)
    }

    fn unwrap_verified<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        verified: &VerifiedAnnouncement<'_>,
    ) -> Result<ReceivingSession> {
        let announcement = verified.announcement;
        let context = &announcement.context;
        let key = self.unwrap_session_key(rng, context.label(), &announcement.wrapped_key)?;
        Ok(ReceivingSession::restore(context.clone(), key))
    }
}
