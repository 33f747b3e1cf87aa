//! Names for the things a NAT talks about: protocols, endpoints, sides and directions.

use core::fmt;
use std::net::Ipv4Addr;

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
}
