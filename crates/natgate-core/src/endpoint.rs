//! Names for the things a NAT talks about: protocols, endpoints, sides and directions.

use core::fmt;
use core::str::FromStr;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A transport protocol the engine translates. For ICMP, the "port" of an endpoint is the query
/// identifier (RFC 5508 section 3.1).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Protocol {
    /// ICMP queries (echo, timestamp); the identifier plays the port's role.
    Icmp = 1,
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
}

impl Protocol {
    /// All protocols, in IP protocol number order.
    pub const ALL: [Protocol; 3] = [Protocol::Icmp, Protocol::Tcp, Protocol::Udp];

    /// The protocol for an IPv4 protocol number, if the engine translates it.
    pub const fn from_ip_number(n: u8) -> Option<Protocol> {
        match n {
            1 => Some(Protocol::Icmp),
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// The IPv4 protocol number.
    pub const fn ip_number(self) -> u8 {
        self as u8
    }

    /// A dense index 0..3, for per-protocol arrays.
    pub const fn index(self) -> usize {
        match self {
            Protocol::Icmp => 0,
            Protocol::Tcp => 1,
            Protocol::Udp => 2,
        }
    }

    /// Lower-case name, as used in config, logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Icmp => "icmp",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An IPv4 address and a port (or ICMP query identifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The address.
    pub addr: Ipv4Addr,
    /// The port, or the ICMP query identifier.
    pub port: u16,
}

impl Endpoint {
    /// 0.0.0.0:0, the "no endpoint" placeholder in keys that ignore the remote side.
    pub const UNSPECIFIED: Endpoint = Endpoint::new(Ipv4Addr::UNSPECIFIED, 0);

    /// An endpoint from its parts.
    pub const fn new(addr: Ipv4Addr, port: u16) -> Self {
        Endpoint { addr, port }
    }

    /// Packs the endpoint into the low 48 bits of a `u64` (address high, port low), for hashing.
    pub const fn to_u64(self) -> u64 {
        ((u32::from_be_bytes(self.addr.octets()) as u64) << 16) | self.port as u64
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// The side of the gateway a packet arrived on or leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The subscribers' side (private / internal addresses).
    Inside,
    /// The Internet side (external pool addresses).
    Outside,
}

impl Side {
    /// The other side.
    pub const fn opposite(self) -> Side {
        match self {
            Side::Inside => Side::Outside,
            Side::Outside => Side::Inside,
        }
    }

    /// The direction of a packet that arrived on this side.
    pub const fn arrival_direction(self) -> Direction {
        match self {
            Side::Inside => Direction::Outbound,
            Side::Outside => Direction::Inbound,
        }
    }
}

/// The direction of a packet relative to the subscriber behind the NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// From the inside towards the Internet.
    Outbound,
    /// From the Internet towards the inside.
    Inbound,
}

/// An IPv4 prefix, written `a.b.c.d/len` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// The prefix `addr/len`; `None` if `len > 32` or `addr` has host bits set.
    pub const fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 || addr.to_bits() & !Ipv4Prefix::mask(len) != 0 {
            return None;
        }
        Some(Ipv4Prefix { addr, len })
    }

    const fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        }
    }

    /// The first address.
    pub const fn addr(self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix_len(self) -> u8 {
        self.len
    }

    /// Addresses in the prefix, `2^(32 - len)`.
    pub const fn size(self) -> u64 {
        1 << (32 - self.len as u32)
    }

    /// The offset of `a` in the prefix, if it is in it.
    pub const fn offset_of(self, a: Ipv4Addr) -> Option<u32> {
        let off = a.to_bits().wrapping_sub(self.addr.to_bits());
        if (off as u64) < self.size() {
            Some(off)
        } else {
            None
        }
    }

    /// The address at `offset`, if the prefix is that large.
    pub const fn nth(self, offset: u32) -> Option<Ipv4Addr> {
        if (offset as u64) < self.size() {
            Some(Ipv4Addr::from_bits(
                self.addr.to_bits().wrapping_add(offset),
            ))
        } else {
            None
        }
    }

    /// Whether `a` is in the prefix.
    pub const fn contains(self, a: Ipv4Addr) -> bool {
        self.offset_of(a).is_some()
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{l:?}: {e}"))?;
        Ipv4Prefix::new(addr, len).ok_or_else(|| {
            format!("{s}: the length must be at most 32 and the host bits must be zero")
        })
    }
}

impl TryFrom<String> for Ipv4Prefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv4Prefix> for String {
    fn from(p: Ipv4Prefix) -> String {
        p.to_string()
    }
}

/// An IPv6 prefix, written `addr/len` with no host bits set: B4 address ranges of DS-Lite
/// (the AFTR's `acl6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Prefix {
    addr: Ipv6Addr,
    len: u8,
}

impl Ipv6Prefix {
    /// The prefix `addr/len`; `None` if `len > 128` or `addr` has host bits set.
    pub const fn new(addr: Ipv6Addr, len: u8) -> Option<Self> {
        if len > 128 || addr.to_bits() & !Ipv6Prefix::mask(len) != 0 {
            return None;
        }
        Some(Ipv6Prefix { addr, len })
    }

    const fn mask(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - len as u32)
        }
    }

    /// The first address.
    pub const fn addr(self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub const fn prefix_len(self) -> u8 {
        self.len
    }

    /// Whether `a` is in the prefix.
    pub const fn contains(self, a: Ipv6Addr) -> bool {
        a.to_bits() & Ipv6Prefix::mask(self.len) == self.addr.to_bits()
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/LENGTH"))?;
        let addr: Ipv6Addr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{l:?}: {e}"))?;
        Ipv6Prefix::new(addr, len).ok_or_else(|| {
            format!("{s}: the length must be at most 128 and the host bits must be zero")
        })
    }
}

impl TryFrom<String> for Ipv6Prefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Ipv6Prefix> for String {
    fn from(p: Ipv6Prefix) -> String {
        p.to_string()
    }
}

/// A range of ports `first..=last` (`first <= last`), as port blocks are logged (RFC 8158's
/// portRangeStart / portRangeEnd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range, inclusive.
    pub last: u16,
}

impl PortRange {
    /// Number of ports in the range.
    pub const fn len(self) -> u32 {
        self.last as u32 - self.first as u32 + 1
    }

    /// Always false: a range holds at least one port. Here for clippy's `len_without_is_empty`.
    pub const fn is_empty(self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_numbers_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_ip_number(p.ip_number()), Some(p));
        }
        assert_eq!(Protocol::from_ip_number(47), None);
    }

    #[test]
    fn endpoint_packs_address_and_port() {
        let e = Endpoint::new(Ipv4Addr::new(1, 2, 3, 4), 0x5678);
        assert_eq!(e.to_u64(), 0x0102_0304_5678);
        assert_eq!(e.to_string(), "1.2.3.4:22136");
    }

    #[test]
    fn ipv6_prefixes_parse_contain_and_refuse_host_bits() {
        let p: Ipv6Prefix = "2001:db8:1::/48".parse().expect("ok");
        assert_eq!(p.prefix_len(), 48);
        assert_eq!(p.to_string(), "2001:db8:1::/48");
        assert!(p.contains("2001:db8:1:ffff::2".parse().expect("ok")));
        assert!(!p.contains("2001:db8:2::2".parse().expect("ok")));
        let all: Ipv6Prefix = "::/0".parse().expect("ok");
        assert!(all.contains(Ipv6Addr::LOCALHOST));
        let one: Ipv6Prefix = "2001:db8::1/128".parse().expect("ok");
        assert!(one.contains("2001:db8::1".parse().expect("ok")));
        assert!(!one.contains("2001:db8::2".parse().expect("ok")));
        assert!("2001:db8:1::1/48".parse::<Ipv6Prefix>().is_err());
        assert!("2001:db8::/129".parse::<Ipv6Prefix>().is_err());
        assert!("2001:db8::".parse::<Ipv6Prefix>().is_err());
    }

    #[test]
    fn prefixes_parse_and_refuse_host_bits() {
        let p: Ipv4Prefix = "100.64.0.0/24".parse().expect("ok");
        assert_eq!(
            (p.addr(), p.prefix_len(), p.size()),
            (Ipv4Addr::new(100, 64, 0, 0), 24, 256)
        );
        assert_eq!(p.to_string(), "100.64.0.0/24");
        assert_eq!(p.offset_of(Ipv4Addr::new(100, 64, 0, 255)), Some(255));
        assert_eq!(p.offset_of(Ipv4Addr::new(100, 64, 1, 0)), None);
        assert_eq!(p.nth(256), None);
        assert!("100.64.0.1/24".parse::<Ipv4Prefix>().is_err());
        assert!("100.64.0.0/33".parse::<Ipv4Prefix>().is_err());
        assert!("100.64.0.0".parse::<Ipv4Prefix>().is_err());
        let all: Ipv4Prefix = "0.0.0.0/0".parse().expect("ok");
        assert_eq!(all.size(), 1 << 32);
        assert!(all.contains(Ipv4Addr::BROADCAST));
    }
}
