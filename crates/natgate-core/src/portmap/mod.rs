//! Port-mapping protocols: a subscriber asks the NAT for an inbound port (PCP, RFC 6887;
//! NAT-PMP, RFC 6886) and gets an explicit mapping in the engine.
//!
//! [`wire`] parses and writes the messages; [`PortMapServer`] decides the answers (who may ask
//! for what, lifetimes, nonces, rate limits) and makes the mappings through the engine's
//! `map_explicit`/`unmap_explicit`. Like the engine it is sans-IO: the driver hands it a
//! datagram with the sender and the time, and sends back what it writes.

mod config;
mod server;
pub mod wire;

pub use config::PortMapConfig;
pub use server::{Answer, PortMapCounters, PortMapDrop, PortMapServer};
