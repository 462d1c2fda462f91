//! The receiving side of one pairwise session.

use std::fmt;

use aes_gcm::Aes256Gcm;

use super::{SessionContext, cipher_for};
use crate::secret::SessionKey;

/// The receiving side of one pairwise session.
pub struct ReceivingSession {
    pub(crate) context: SessionContext,
    pub(crate) key: SessionKey,
    pub(crate) cipher: Aes256Gcm,
}

impl ReceivingSession {
    /// Rebuilds a session accepted earlier, from its context and the key
    /// [`ReceivingSession::export_key`] gave.
    pub fn restore(context: SessionContext, key: SessionKey) -> Self {
        let cipher = cipher_for(&key);
        Self {
            context,
            key,
            cipher,
        }
    }

    /// A copy of the session key, for storage at rest.
    pub fn export_key(&self) -> SessionKey {
        SessionKey::from_bytes(*self.key.expose_secret())
    }

    /// What the session key is bound to.
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// Whether the session may still open messages at `now`
    /// ([`SessionContext::is_current`]).
    pub fn is_current(&self, now: u64) -> bool {
        self.context.is_current(now)
    }
}

impl fmt::Debug for ReceivingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivingSession")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}
