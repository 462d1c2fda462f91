//! Relay addresses: where a relay is and which key it must present.
//!
//! An address is `sotto://FINGERPRINT@HOST:PORT`, where `FINGERPRINT` is the
//! SHA-256 of the SubjectPublicKeyInfo (DER) of the relay's TLS certificate
//! (its public key, as HPKP pins), in unpadded base64url (43 characters),
//! `HOST` a DNS name, an IPv4 address or a bracketed IPv6 address, and
//! `:PORT` optional ([`DEFAULT_PORT`]). A client that connects with an
//! address accepts exactly that key and no other, so an address is all a
//! user needs to share: no certificate authority, and no "accept any
//! certificate" step. A renewed certificate with the same key keeps every
//! address valid; a new key is followed only through the old key's signed
//! hand-over ([`key_handover_transcript`]).
//!
//! A cluster of relays sharing one key (several relays of one community,
//! docs/self-hosting.md) has one address listing its hosts:
//! `sotto://FINGERPRINT@HOST1:PORT1,HOST2:PORT2,...`, at most
//! [`MAX_HOSTS`]. A client connects to the first that answers, in the
//! address's order, and moves on to the next when its relay fails; each
//! host must present the same pinned key.
//!
//! Addresses made before version 0.1's key pins carry the SHA-256 of the
//! whole certificate instead; clients still accept a certificate whose
//! hash equals such a pin and convert the pin to the key's.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The port a relay listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7447;
/// The URI scheme of relay addresses.
pub const SCHEME: &str = "sotto://";
/// The most hosts one address lists.
pub const MAX_HOSTS: usize = 16;

/// A relay's host, port and pinned certificate fingerprint, and the other
/// hosts of its cluster (the same key), if any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelayAddress {
    /// DNS name or IP address (IPv6 without brackets): the first host.
    pub host: String,
    /// TCP port of the first host.
    pub port: u16,
    /// SHA-256 of the relay's public key (the certificate's
    /// SubjectPublicKeyInfo, DER); in old addresses, of the whole
    /// certificate's DER.
    pub fingerprint: [u8; 32],
    /// The other hosts of a cluster, `(host, port)`, in the order they are
    /// tried after the first; empty for a single relay.
    pub alternates: Vec<(String, u16)>,
}

/// Why a string is not a relay address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// It does not start with `sotto://`.
    #[error("a relay address starts with {SCHEME}")]
    Scheme,
    /// The fingerprint part is missing or is not 32 bytes of base64url.
    #[error("the key fingerprint (before '@') must be 43 base64url characters")]
    Fingerprint,
    /// The host is missing or malformed.
    #[error("the host (after '@') is missing or malformed")]
    Host,
    /// More than [`MAX_HOSTS`] hosts.
    #[error("an address lists at most {MAX_HOSTS} hosts")]
    TooManyHosts,
    /// The port is not a number from 1 to 65535.
    #[error("the port must be a number from 1 to 65535")]
    Port,
}

/// A key fingerprint as addresses, the relay's log and every front end
/// write it: unpadded base64url.
pub fn fingerprint_text(fingerprint: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(fingerprint)
}

/// The domain-separation label of a relay key hand-over's transcript.
pub const KEY_HANDOVER_LABEL: &[u8] = b"sotto/v1/relay-key-handover\0";

/// The signature schemes a hand-over may use, as TLS code points
/// (RFC 8446 section 4.2.3): TLS 1.3's, as the relay's handshake does.
/// ECDSA P-256/SHA-256, ECDSA P-384/SHA-384, Ed25519, RSA-PSS with
/// SHA-256, SHA-384, SHA-512.
pub const KEY_HANDOVER_SCHEMES: [u16; 6] = [0x0403, 0x0503, 0x0807, 0x0804, 0x0805, 0x0806];

/// The bytes the old key signs to hand over to the new one
/// (protocol.md §9.2.1): [`KEY_HANDOVER_LABEL`] || SHA-256 of the old
/// SubjectPublicKeyInfo || SHA-256 of the new one || `not_after` as
/// 8 bytes big-endian (Unix seconds).
pub fn key_handover_transcript(old: &[u8; 32], new: &[u8; 32], not_after: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(KEY_HANDOVER_LABEL.len() + 72);
    out.extend_from_slice(KEY_HANDOVER_LABEL);
    out.extend_from_slice(old);
    out.extend_from_slice(new);
    out.extend_from_slice(&not_after.to_be_bytes());
    out
}

impl RelayAddress {
    /// The fingerprint as it appears in the address.
    pub fn fingerprint_text(&self) -> String {
        fingerprint_text(&self.fingerprint)
    }

    /// The first host's `host:port`, with IPv6 hosts in brackets, for
    /// connecting; it also names the relay (its pin, in the known relays).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// How many hosts it lists (at least one).
    pub fn hosts(&self) -> usize {
        1 + self.alternates.len()
    }

    /// The single-host address of host `index` (wrapping around), with
    /// the same pinned key.
    pub fn host_at(&self, index: usize) -> RelayAddress {
        let index = index % self.hosts();
        let (host, port) = match index.checked_sub(1).and_then(|i| self.alternates.get(i)) {
            Some((host, port)) => (host.clone(), *port),
            None => (self.host.clone(), self.port),
        };
        RelayAddress {
            host,
            port,
            fingerprint: self.fingerprint,
            alternates: Vec::new(),
        }
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}@{}",
            self.fingerprint_text(),
            self.authority()
        )?;
        for (host, port) in &self.alternates {
            write!(f, ",{}", authority(host, *port))?;
        }
        Ok(())
    }
}

impl FromStr for RelayAddress {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        let rest = text
            .trim()
            .strip_prefix(SCHEME)
            .ok_or(AddressError::Scheme)?;
        let (fingerprint, authority) = rest.split_once('@').ok_or(AddressError::Fingerprint)?;
        let fingerprint: [u8; 32] = URL_SAFE_NO_PAD
            .decode(fingerprint)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(AddressError::Fingerprint)?;
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let mut hosts = authority.split(',');
        let (host, port) = split_host_port(hosts.next().unwrap_or_default())?;
        let alternates = hosts.map(split_host_port).collect::<Result<Vec<_>, _>>()?;
        if alternates.len() >= MAX_HOSTS {
            return Err(AddressError::TooManyHosts);
        }
        Ok(Self {
            host,
            port,
            fingerprint,
            alternates,
        })
    }
}

fn split_host_port(authority: &str) -> Result<(String, u16), AddressError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(AddressError::Host)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(AddressError::Host);
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(AddressError::Port)?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
    if !valid_host {
        return Err(AddressError::Host);
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port)
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            return Err(AddressError::Port);
        }
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(AddressError::Port),
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(host: &str, port: u16) -> RelayAddress {
        RelayAddress {
            host: host.into(),
            port,
            fingerprint: [0xAB; 32],
            alternates: Vec::new(),
        }
    }

    #[test]
    fn a_cluster_address_lists_its_hosts_in_order() {
        let fp = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let text = format!("sotto://{fp}@a.example:7000,[::1]:7001,c.example");
        let parsed: RelayAddress = text.parse().unwrap();
        assert_eq!(parsed.hosts(), 3);
        assert_eq!(parsed.authority(), "a.example:7000");
        assert_eq!(
            parsed.alternates,
            vec![
                ("::1".to_string(), 7001),
                ("c.example".to_string(), DEFAULT_PORT)
            ]
        );
        assert_eq!(
            parsed.to_string(),
            format!("sotto://{fp}@a.example:7000,[::1]:7001,c.example:7447")
        );
        assert_eq!(parsed.to_string().parse::<RelayAddress>().unwrap(), parsed);
        // Each host is the same key at its own host and port.
        let second = parsed.host_at(1);
        assert_eq!((second.host.as_str(), second.port), ("::1", 7001));
        assert_eq!(second.fingerprint, [7; 32]);
        assert!(second.alternates.is_empty());
        assert_eq!(parsed.host_at(3).authority(), "a.example:7000");
        for bad in [
            ",a.example",
            "a.example,",
            "a.example,,b.example",
            "a.example,b example",
        ] {
            assert_eq!(
                format!("sotto://{fp}@{bad}").parse::<RelayAddress>(),
                Err(AddressError::Host),
                "{bad}"
            );
        }
        let many = vec!["h.example"; MAX_HOSTS + 1].join(",");
        assert_eq!(
            format!("sotto://{fp}@{many}").parse::<RelayAddress>(),
            Err(AddressError::TooManyHosts)
        );
        let most = vec!["h.example"; MAX_HOSTS].join(",");
        assert!(
            format!("sotto://{fp}@{most}")
                .parse::<RelayAddress>()
                .is_ok()
        );
    }

    #[test]
    fn addresses_round_trip() {
        for a in [
            address("relay.example.org", 7447),
            address("127.0.0.1", 1),
            address("::1", 65535),
        ] {
            let text = a.to_string();
            assert_eq!(text.parse::<RelayAddress>().unwrap(), a, "{text}");
        }
        assert_eq!(
            address("::1", 9).to_string(),
            format!(
                "sotto://{}@[::1]:9",
                "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"
            )
        );
    }

    #[test]
    fn port_defaults_and_whitespace_is_ignored() {
        let text = format!(
            "  sotto://{}@example.org\n",
            URL_SAFE_NO_PAD.encode([1u8; 32])
        );
        let parsed: RelayAddress = text.parse().unwrap();
        assert_eq!(parsed.port, DEFAULT_PORT);
        assert_eq!(parsed.fingerprint, [1; 32]);
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        let fp = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let cases = [
            ("https://x@example.org".to_string(), AddressError::Scheme),
            ("sotto://example.org".to_string(), AddressError::Fingerprint),
            (
                "sotto://abc@example.org".to_string(),
                AddressError::Fingerprint,
            ),
            (format!("sotto://{fp}@"), AddressError::Host),
            (format!("sotto://{fp}@exa mple.org"), AddressError::Host),
            (format!("sotto://{fp}@[nothex]:1"), AddressError::Host),
            (format!("sotto://{fp}@example.org:0"), AddressError::Port),
            (
                format!("sotto://{fp}@example.org:99999"),
                AddressError::Port,
            ),
            (format!("sotto://{fp}@example.org:x"), AddressError::Port),
            (format!("sotto://{fp}@example.org:+443"), AddressError::Port),
            (format!("sotto://{fp}@example.org:"), AddressError::Port),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<RelayAddress>(), Err(expected), "{text}");
        }
    }
}
