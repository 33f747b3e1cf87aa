//! Explicit mappings: the ones a subscriber asked for with a port-mapping protocol (PCP MAP,
//! NAT-PMP), as opposed to the implicit ones its outbound packets make.
//!
//! An explicit mapping is endpoint-independent in both senses whatever the dynamic behaviour
//! is (RFC 6887 section 11.1: a MAP opens the external endpoint to every remote peer, or to the
//! FILTER's peers, RFC 6887 section 13.3), and it lives until its lifetime ends or it is deleted,
//! not until its last session ends. It is found by its internal endpoint (a subscriber's new
//! outbound flow) and by its external endpoint (a remote's new inbound flow). Both are ordered
//! maps: deterministic, no hash key to protect from chosen external ports, and small (a
//! configured cap per subscriber bounds them).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::endpoint::{Endpoint, Ipv4Prefix, Protocol};
use crate::time::Instant;

/// Who asked for an explicit mapping, for logs and for the renewal check of each protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingOrigin {
    /// A PCP MAP request (RFC 6887) with this mapping nonce; a renewal must carry the same
    /// nonce (section 11.3).
    Pcp {
        /// The 96-bit mapping nonce of the request that made the mapping.
        nonce: [u8; 12],
    },
    /// A NAT-PMP mapping request (RFC 6886 section 3.3).
    NatPmp,
    /// A UPnP IGD AddPortMapping or AddAnyPortMapping (WANIPConnection), with the
    /// description the client gave, which its GetSpecificPortMappingEntry shows back.
    Upnp {
        /// The client's NewPortMappingDescription, cut to fit.
        description: Description,
    },
}

/// A short text kept inline, so that a mapping's origin stays `Copy` and small (it rides in
/// every mapping event): a UPnP client's description of its mapping, cut at a character
/// boundary to [`Description::MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Description {
    len: u8,
    bytes: [u8; Description::MAX],
}

impl Description {
    /// The most bytes kept: room for the names clients use ("libminiupnpc", an application's
    /// name and port) without growing every event by much.
    pub const MAX: usize = 31;

    /// `text`, cut to [`Self::MAX`] bytes at a character boundary.
    pub fn new(text: &str) -> Self {
        let mut end = text.len().min(Self::MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; Self::MAX];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        Description {
            len: end as u8,
            bytes,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Made from a `&str` cut at a character boundary, so always UTF-8.
        core::str::from_utf8(&self.bytes[..usize::from(self.len).min(Self::MAX)]).unwrap_or("")
    }
}

impl core::fmt::Debug for Description {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `pcp nonce HEX`, `nat-pmp` or `upnp "DESCRIPTION"`: how logs and `ctl mappings` name an origin. A `Display`, so a
/// log sink writes it without allocating.
impl core::fmt::Display for MappingOrigin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MappingOrigin::Pcp { nonce } => {
                f.write_str("pcp nonce ")?;
                for b in nonce {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            MappingOrigin::NatPmp => f.write_str("nat-pmp"),
            // Quoted and escaped: the text is the client's, and must not forge a log line.
            MappingOrigin::Upnp { description } => write!(f, "upnp {description:?}"),
        }
    }
}

/// A remote peer a filtered mapping admits (a PCP FILTER option, RFC 6887 section 13.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemotePeer {
    /// The peers' addresses.
    pub prefix: Ipv4Prefix,
    /// The peers' port; `None` for every port (the option's port 0).
    pub port: Option<u16>,
}

impl RemotePeer {
    /// Whether a packet from `remote` is from this peer.
    pub fn admits(&self, remote: Endpoint) -> bool {
        self.prefix.contains(remote.addr) && self.port.is_none_or(|p| p == remote.port)
    }
}

/// One explicit mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplicitMapping {
    /// Protocol (TCP or UDP).
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint it appears as outside, from the allocator.
    pub external: Endpoint,
    /// When it ends unless renewed.
    pub expires: Instant,
    /// Who asked for it.
    pub origin: MappingOrigin,
    /// The only remote peers let in; empty: every remote (endpoint-independent filtering).
    pub peers: Vec<RemotePeer>,
}

impl ExplicitMapping {
    /// Whether a new inbound flow from `remote` may use the mapping.
    pub fn admits(&self, remote: Endpoint) -> bool {
        self.peers.is_empty() || self.peers.iter().any(|p| p.admits(remote))
    }
}

/// The explicit mappings of one engine, by both endpoints.
#[derive(Debug, Clone, Default)]
pub struct ExplicitTable {
    by_internal: BTreeMap<(Protocol, Endpoint), ExplicitMapping>,
    /// External endpoint to the internal endpoint that owns it.
    by_external: BTreeMap<(Protocol, Endpoint), Endpoint>,
    /// The earliest expiry, kept so the engine's timer query costs nothing per packet.
    next_expiry: Option<Instant>,
}

impl ExplicitTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there are none (the packet path then skips the look-ups).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.by_internal.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_internal.len()
    }

    /// The mapping of `internal` for `proto`.
    #[inline]
    pub fn by_internal(&self, proto: Protocol, internal: Endpoint) -> Option<&ExplicitMapping> {
        self.by_internal.get(&(proto, internal))
    }

    /// The mapping whose external endpoint is `external` for `proto`.
    #[inline]
    pub fn by_external(&self, proto: Protocol, external: Endpoint) -> Option<&ExplicitMapping> {
        let internal = self.by_external.get(&(proto, external))?;
        self.by_internal.get(&(proto, *internal))
    }

    /// The mapping of `internal` for `proto`, to renew or refilter it. Its endpoints are fixed:
    /// only `expires`, `origin` and `peers` may change (then call [`Self::retime`]).
    pub fn get_mut(&mut self, proto: Protocol, internal: Endpoint) -> Option<&mut ExplicitMapping> {
        self.by_internal.get_mut(&(proto, internal))
    }

    /// Recomputes the earliest expiry after a change through [`Self::get_mut`].
    pub fn retime(&mut self) {
        self.next_expiry = self.by_internal.values().map(|m| m.expires).min();
    }

    /// Adds `m`. The caller has checked that neither endpoint is mapped.
    pub fn insert(&mut self, m: ExplicitMapping) {
        self.next_expiry = Some(self.next_expiry.map_or(m.expires, |t| t.min(m.expires)));
        self.by_external.insert((m.proto, m.external), m.internal);
        self.by_internal.insert((m.proto, m.internal), m);
    }

    /// Removes and returns the mapping of `internal` for `proto`.
    pub fn remove(&mut self, proto: Protocol, internal: Endpoint) -> Option<ExplicitMapping> {
        let m = self.by_internal.remove(&(proto, internal))?;
        self.by_external.remove(&(proto, m.external));
        self.retime();
        Some(m)
    }

    /// Removes and returns every mapping whose lifetime ended by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<ExplicitMapping> {
        if self.next_expiry.is_none_or(|t| t > now) {
            return Vec::new();
        }
        let due: Vec<(Protocol, Endpoint)> = self
            .by_internal
            .iter()
            .filter(|(_, m)| m.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        due.into_iter()
            .filter_map(|(proto, internal)| self.remove(proto, internal))
            .collect()
    }

    /// When the next mapping's lifetime ends.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.next_expiry
    }

    /// Every mapping, by protocol and internal endpoint.
    pub fn iter(&self) -> impl Iterator<Item = &ExplicitMapping> {
        self.by_internal.values()
    }

    /// How many mappings `subscriber` holds (both protocols).
    pub fn count_of(&self, subscriber: Ipv4Addr) -> usize {
        let lo = Endpoint::new(subscriber, 0);
        let hi = Endpoint::new(subscriber, u16::MAX);
        [Protocol::Tcp, Protocol::Udp]
            .into_iter()
            .map(|p| self.by_internal.range((p, lo)..=(p, hi)).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::from(a), port)
    }

    fn mapping(internal: Endpoint, external: Endpoint, expires: u64) -> ExplicitMapping {
        ExplicitMapping {
            proto: Protocol::Udp,
            internal,
            external,
            expires: Instant::from_secs(expires),
            origin: MappingOrigin::NatPmp,
            peers: Vec::new(),
        }
    }

    #[test]
    fn found_by_both_endpoints_and_expired_in_order() {
        let mut t = ExplicitTable::new();
        let (i1, e1) = (ep([10, 0, 0, 2], 5000), ep([198, 51, 100, 1], 40000));
        let (i2, e2) = (ep([10, 0, 0, 2], 5001), ep([198, 51, 100, 1], 40001));
        t.insert(mapping(i1, e1, 100));
        t.insert(mapping(i2, e2, 50));
        assert_eq!(t.next_expiry(), Some(Instant::from_secs(50)));
        assert_eq!(
            t.by_external(Protocol::Udp, e1).map(|m| m.internal),
            Some(i1)
        );
        assert!(t.by_external(Protocol::Tcp, e1).is_none());
        assert_eq!(t.count_of(Ipv4Addr::new(10, 0, 0, 2)), 2);
        assert_eq!(t.count_of(Ipv4Addr::new(10, 0, 0, 3)), 0);
        assert!(t.expire(Instant::from_secs(49)).is_empty());
        let gone = t.expire(Instant::from_secs(50));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].internal, i2);
        assert!(t.by_external(Protocol::Udp, e2).is_none());
        assert_eq!(t.next_expiry(), Some(Instant::from_secs(100)));
        assert!(t.remove(Protocol::Udp, i1).is_some());
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn peers_filter_by_prefix_and_port() {
        let mut m = mapping(ep([10, 0, 0, 2], 1), ep([198, 51, 100, 1], 2), 1);
        assert!(m.admits(ep([1, 2, 3, 4], 5)), "no peers: everyone");
        m.peers.push(RemotePeer {
            prefix: Ipv4Prefix::new(Ipv4Addr::new(203, 0, 113, 0), 24).expect("prefix"),
            port: Some(9),
        });
        assert!(m.admits(ep([203, 0, 113, 7], 9)));
        assert!(!m.admits(ep([203, 0, 113, 7], 10)));
        assert!(!m.admits(ep([203, 0, 114, 7], 9)));
    }

    #[test]
    fn origins_are_named() {
        assert_eq!(MappingOrigin::NatPmp.to_string(), "nat-pmp");
        let mut nonce = [0u8; 12];
        nonce[11] = 0xab;
        assert_eq!(
            MappingOrigin::Pcp { nonce }.to_string(),
            "pcp nonce 0000000000000000000000ab"
        );
        let description = Description::new("game\nfake log line");
        assert_eq!(
            MappingOrigin::Upnp { description }.to_string(),
            "upnp \"game\\nfake log line\""
        );
    }

    #[test]
    fn descriptions_are_cut_at_a_character_boundary() {
        assert_eq!(Description::new("libminiupnpc").as_str(), "libminiupnpc");
        let d = Description::new(&"é".repeat(20));
        assert_eq!(d.as_str(), "é".repeat(15));
        assert_eq!(Description::new("").as_str(), "");
    }
}
