//! Admission: connections counted against the relay's slots and per
//! source address, before and after they register.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::Shared;

/// The connections of one source address.
#[derive(Debug, Default)]
pub(super) struct SourceUse {
    /// All of them.
    open: usize,
    /// Those that have not registered yet.
    unregistered: usize,
}

/// Why a connection was closed before its TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceLimit {
    /// Its address has `max_unregistered_per_ip` unregistered connections.
    Unregistered,
    /// The relay is nearly full and its address holds as many connections
    /// as one key may (`max_connections_per_key`) or more.
    Reserve,
}

/// What a connection's source address is counted as: an IPv4 address, or
/// the /64 prefix of an IPv6 address (one host usually has a whole /64).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// An open connection, counted against the relay's slots and its source
/// address (as unregistered until [`Arrival::registered`]) until it is
/// dropped.
pub(crate) struct Arrival {
    shared: Arc<Shared>,
    source: IpAddr,
    registered: bool,
}

impl Arrival {
    /// The connection registered: it no longer counts as unregistered.
    pub(crate) fn registered(&mut self) {
        if !self.registered {
            self.registered = true;
            if let Some(used) = self.shared.sources().get_mut(&self.source) {
                used.unregistered = used.unregistered.saturating_sub(1);
            }
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        let mut sources = self.shared.sources();
        if let Some(used) = sources.get_mut(&self.source) {
            used.open = used.open.saturating_sub(1);
            if !self.registered {
                used.unregistered = used.unregistered.saturating_sub(1);
            }
            if used.open == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

impl Shared {
    fn sources(&self) -> MutexGuard<'_, HashMap<IpAddr, SourceUse>> {
        self.sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts an accepted connection from `ip`, unless its source address
    /// has `max_unregistered_per_ip` unregistered connections already, or
    /// the relay is nearly full and the address holds as many connections
    /// as one key may: then the connection is to be closed at once.
    pub(crate) fn arrive(self: &Arc<Self>, ip: IpAddr) -> Result<Arrival, SourceLimit> {
        let source = source(ip);
        let mut sources = self.sources();
        let used = sources.entry(source).or_default();
        let refused = if used.unregistered >= self.config.max_unregistered_per_ip {
            Some(SourceLimit::Unregistered)
        } else if used.open >= self.config.max_connections_per_key && self.nearly_full(1) {
            Some(SourceLimit::Reserve)
        } else {
            None
        };
        if let Some(limit) = refused {
            if used.open == 0 {
                sources.remove(&source);
            }
            return Err(limit);
        }
        used.open += 1;
        used.unregistered += 1;
        drop(sources);
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Arrival {
            shared: Arc::clone(self),
            source,
            registered: false,
        })
    }

    /// Whether fewer than [`Config::reserve`] slots are free, counting
    /// `coming` connections not yet counted as open.
    pub(super) fn nearly_full(&self, coming: usize) -> bool {
        let open = self.open.load(Ordering::Relaxed) + coming;
        self.config.max_connections.saturating_sub(open) < self.config.reserve()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unregistered connections are counted per IPv4 address and per IPv6
    /// /64 (an IPv4-mapped address is its IPv4 address).
    #[test]
    fn sources_are_addresses_and_ipv6_prefixes() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(source(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source(ip("2001:db8:1:2:bbbb::9")),
            source(ip("2001:db8:1:2:aaaa::1"))
        );
        assert_ne!(source(ip("2001:db8:1:3::1")), source(ip("2001:db8:1:2::1")));
    }
}
