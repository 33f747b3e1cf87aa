//! Port-mapping protocols: a subscriber asks the NAT for an inbound port (PCP, RFC 6887;
//! NAT-PMP, RFC 6886) and gets an explicit mapping in the engine.
//!
//! [`wire`] parses and writes the messages; [`PortMapServer`] decides the answers (who may ask
//! for what, lifetimes, nonces, rate limits) and makes the mappings through the engine's
//! `map_explicit`/`unmap_explicit`. Like the engine it is sans-IO: the driver hands it a
//! datagram with the sender and the time, and sends back what it writes.

mod config;
mod server;
pub mod upnp;
pub mod wire;

pub use config::PortMapConfig;
pub use server::{Answer, PortMapCounters, PortMapDrop, PortMapServer};

use std::net::Ipv4Addr;

/// Whose mapping a request from `client` is about: the address in a PCP THIRD_PARTY option,
/// else the client itself. A gateway with several engines serves the request in the engine
/// that owns that subscriber's flows, so that the mapping is where its packets go.
pub fn subject(request: &[u8], client: Ipv4Addr) -> Ipv4Addr {
    wire::pcp::parse(request)
        .ok()
        .and_then(|r| r.options.third_party)
        .and_then(|a| wire::pcp::unmapped(&a))
        .unwrap_or(client)
}
