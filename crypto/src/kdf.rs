//! HMAC-SHA256 and HKDF-SHA256 (RFC 2104, RFC 5869), for the keys sessions
//! v2 derive from a pairwise key (the pair reply, protocol.md 14.5).

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::secret::KEY_LEN;

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 of `parts` under `key`, a key of at most 64 bytes (the
/// block size: HMAC pads such a key with zeros to 64 bytes, which is what
/// is done here, so the key never needs the fallible slice constructor).
/// Every key here is 32 bytes or a label shorter than 64.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut block = Zeroizing::new([0u8; 64]);
    for (to, from) in block.iter_mut().zip(key) {
        *to = *from;
    }
    let mut mac = <HmacSha256 as KeyInit>::new(&(*block).into());
    for part in parts {
        mac.update(part);
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

/// HKDF-SHA256 with a 32-byte output: extract, then one block of expand.
pub(crate) fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let prk = hmac(salt, &[ikm]);
    hmac(&prk[..], &[info, &[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The primitives against their RFCs: HMAC-SHA256 (RFC 4231, test case 1)
    /// and the first block of HKDF-SHA256 (RFC 5869, test case 1).
    #[test]
    fn hmac_and_hkdf_match_their_rfcs() {
        assert_eq!(
            hex(&hmac(&[0x0b; 20], &[b"Hi There"])[..]),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let salt: Vec<u8> = (0..13).collect();
        let info: Vec<u8> = (0xf0..0xfa).collect();
        assert_eq!(
            hex(&hkdf32(&salt, &[0x0b; 22], &info)[..]),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }
}
