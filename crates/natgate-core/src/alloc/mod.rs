//! Port and address allocation: which external endpoint a new mapping gets.
//!
//! The translation code asks for endpoints through one interface, [`PortAllocator`], so that other
//! policies (per-subscriber port blocks, deterministic NAT per RFC 7422, per-core port ownership)
//! plug in without touching it. [`DynamicAllocator`] is the classic one: any free port of the pool,
//! chosen per RFC 4787 section 4, RFC 6056, RFC 6888 and RFC 7857.

mod dynamic;
mod pool_index;
mod ports;

pub use dynamic::{AllocSettings, DynamicAllocator};

use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use std::net::Ipv4Addr;

/// What the engine asks for: an external endpoint for a new mapping of `internal`.
#[derive(Debug, Clone, Copy)]
pub struct AllocRequest {
    /// The protocol: ports are allocated per protocol, ICMP identifiers separately.
    pub proto: Protocol,
    /// The internal endpoint being mapped; its address is the subscriber (RFC 6888 REQ-2).
    pub internal: Endpoint,
    /// The current time, so that ports leave hold-down lazily, without a timer of their own.
    pub now: Instant,
}

/// Why no external endpoint could be allocated. The engine drops the packet and may answer with
/// ICMP destination unreachable (RFC 5508 REQ-8, RFC 6888 REQ-11); it never frees a live mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free port on any eligible address.
    #[error("no free external port on any eligible address")]
    Exhausted,
    /// Paired pooling: the subscriber's address has no free port, and falling back to another
    /// address is not allowed (RFC 4787 REQ-2).
    #[error("the subscriber's paired external address has no free port")]
    PairedAddressFull,
}

/// The allocator interface: the only way the engine gets or gives back an external endpoint.
///
/// Implementations are sans-IO and deterministic: the same requests, times and random numbers give
/// the same endpoints (RFC 4787 REQ-11).
pub trait PortAllocator {
    /// Picks and reserves an external endpoint for a new mapping of `req.internal`.
    fn allocate(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError>;

    /// Returns an external endpoint whose mapping ended at `now`; it is not handed out again before
    /// the hold-down passes (RFC 6888 REQ-8). An endpoint that is not allocated is ignored.
    fn release(&mut self, proto: Protocol, internal: Endpoint, external: Endpoint, now: Instant);

    /// Whether `addr` is an external address this allocator hands out. Inbound packets and hairpin
    /// detection ask this on the fast path, so it is O(1).
    fn owns(&self, addr: Ipv4Addr) -> bool;

    /// Utilisation per external address, for `ctl pools` and metrics.
    fn usage(&self) -> Vec<AddressUsage>;
}

/// How one external address is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressUsage {
    /// The external address.
    pub addr: Ipv4Addr,
    /// Ports (ICMP identifiers) held by live mappings, indexed by [`Protocol::index`].
    pub in_use: [u32; 3],
    /// Ports released but not yet reusable (RFC 6888 REQ-8), indexed by [`Protocol::index`].
    pub held_down: [u32; 3],
    /// Internal addresses with at least one live mapping on this address.
    pub subscribers: u32,
}
