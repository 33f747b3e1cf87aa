//! Port and address allocation: which external endpoint a new mapping gets.
//!
//! The translation code asks for endpoints through one interface, [`PortAllocator`], so that other
//! policies (per-subscriber port blocks, deterministic NAT per RFC 7422, per-core port ownership)
//! plug in without touching it. [`DynamicAllocator`] is the classic one: any free port of the pool,
//! chosen per RFC 4787 section 4, RFC 6056, RFC 6888 and RFC 7857. [`BlockAllocator`] gives each
//! subscriber port blocks (RFC 6888 REQ-4, REQ-13..15: one log record per block, not per
//! session); [`DeterministicAllocator`] computes each subscriber's address and port range from its
//! internal address (RFC 7422: no per-session log at all). Both take a [`Share`], so that each
//! worker of a multi-core gateway hands out only ports whose return traffic it receives.

mod block;
mod configured;
mod deterministic;
mod dynamic;
mod hold;
mod pool_choice;
mod pool_index;
mod ports;
mod reserved;
mod share;

pub use block::{BlockAllocator, BlockSettings};
pub use configured::ConfiguredAllocator;
pub use deterministic::{DeterministicAllocator, DeterministicMap, DeterministicSettings};
pub use dynamic::{AllocSettings, DynamicAllocator};
pub use reserved::{Parked, Reserved};
pub use share::Share;

pub use crate::endpoint::PortRange;

use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::table::SoftwireId;
use crate::time::Instant;
use core::fmt;
use core::hash::BuildHasher;
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Who a port allocation is charged to: the unit of pairing (RFC 6888 REQ-2) and of port limits
/// (RFC 6888 REQ-4), and the "subscriber id" of translation logs.
///
/// A plain subscriber is an internal IPv4 address. Behind DS-Lite (RFC 6333) private IPv4
/// space overlaps across homes and RFC 6888 REQ-2 makes the softwire the subscriber, named by
/// its B4's IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubscriberId {
    /// A subscriber known by its internal IPv4 address.
    Ipv4(Ipv4Addr),
    /// A DS-Lite softwire.
    Softwire {
        /// The B4's IPv6 address: what logs and `whois` name.
        b4: Ipv6Addr,
        /// Its number in the engine, unique among live softwires: what allocators key compact
        /// per-subscriber state by.
        id: SoftwireId,
    },
}

impl SubscriberId {
    /// The plain IPv4 subscriber at `internal`'s address.
    pub const fn of(internal: Endpoint) -> Self {
        SubscriberId::Ipv4(internal.addr)
    }

    /// A number unique among an engine's live subscribers, in 33 bits: the IPv4 address, or
    /// 2^32 plus the softwire's number. Allocators key per-subscriber state by it.
    pub const fn key(self) -> u64 {
        match self {
            SubscriberId::Ipv4(a) => a.to_bits() as u64,
            SubscriberId::Softwire { id, .. } => (1 << 32) | id.get() as u64,
        }
    }
}

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriberId::Ipv4(a) => a.fmt(f),
            SubscriberId::Softwire { b4, .. } => b4.fmt(f),
        }
    }
}

/// A port block given to or taken back from a subscriber. A block serves every protocol (TCP,
/// UDP and ICMP identifiers each have their own port space inside it), so it has no protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBlock {
    /// When it happened: for a release, the moment the hold-down of its last port ended.
    pub at: Instant,
    /// Whose block it is.
    pub subscriber: SubscriberId,
    /// The external address the block is on.
    pub external: Ipv4Addr,
    /// The block's ports.
    pub ports: PortRange,
}

/// What an allocator reports for translation logs: one record per port block, never one per
/// session (RFC 6888 REQ-14 keeps the log volume small; RFC 7422 section 1 logs only overflow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocEvent {
    /// A subscriber got a block.
    BlockAllocated(PortBlock),
    /// A block went back to the pool: its last port was released and the hold-down passed
    /// (RFC 6888 REQ-8).
    BlockReleased(PortBlock),
}

/// A port in hold-down, as [`PortAllocator::held_down`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldPort {
    /// The protocol whose port space it is in.
    pub proto: Protocol,
    /// The held endpoint.
    pub external: Endpoint,
    /// When it was released.
    pub released_at: Instant,
    /// Whose port it stays until the hold-down ends, where the allocator keeps that (a port
    /// block's owner, a deterministic range's subscriber); `None` where the port is simply
    /// withheld from everyone.
    pub subscriber: Option<Ipv4Addr>,
}

/// What the engine asks for: an external endpoint for a new mapping of `internal`.
#[derive(Debug, Clone, Copy)]
pub struct AllocRequest {
    /// The protocol: ports are allocated per protocol, ICMP identifiers separately.
    pub proto: Protocol,
    /// The internal endpoint being mapped.
    pub internal: Endpoint,
    /// Who the mapping is charged to: the unit of pairing and port limits (RFC 6888 REQ-2,
    /// REQ-4).
    pub subscriber: SubscriberId,
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
    /// The subscriber already holds all the ports it may (its blocks, or its deterministic range
    /// with no overflow), and each is in use or held down (RFC 6888 REQ-4).
    #[error("the subscriber holds its limit of external ports")]
    SubscriberPortLimit,
    /// Deterministic NAT: the internal address is not in the inside prefix (RFC 7422), so it has
    /// no external range.
    #[error("the internal address is not in the deterministic inside prefix")]
    UnknownSubscriber,
    /// The subscriber belongs to another worker's [`Share`]; the driver steered its packet to the
    /// wrong worker.
    #[error("the subscriber belongs to another worker's share")]
    OtherShare,
    /// [`PortAllocator::allocate_at`]: that endpoint is not one this allocator could give this
    /// subscriber now (in use or held down, reserved, outside its ranges, or another's).
    #[error("that external endpoint is not available to this subscriber")]
    Unavailable,
}

/// The allocator interface: the only way the engine gets or gives back an external endpoint.
///
/// Implementations are sans-IO and deterministic: the same requests, times and random numbers give
/// the same endpoints (RFC 4787 REQ-11).
pub trait PortAllocator {
    /// Picks and reserves an external endpoint for a new mapping of `req.internal`.
    fn allocate(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError>;

    /// Reserves exactly `external` for a new mapping of `req.internal`, if this allocator could
    /// have handed it out itself: an address and port it hands out (in range, not reserved or
    /// withheld), free, and the subscriber's to have (its paired address, its port block or a
    /// free block it may take, its deterministic range). For port-mapping requests that suggest
    /// an endpoint (PCP, NAT-PMP). Released like any other endpoint. Not for the packet path.
    fn allocate_at(
        &mut self,
        req: &AllocRequest,
        external: Endpoint,
    ) -> Result<Endpoint, AllocError>;

    /// The ports in hold-down, oldest release first: what a warm restart carries over, each
    /// held again by [`allocate_at`](Self::allocate_at) and [`release`](Self::release) at its
    /// original release time. Not for the packet path.
    fn held_down(&self) -> Vec<HeldPort>;
    /// Returns an external endpoint of `subscriber` whose mapping ended at `now`; it is not
    /// handed out again before the hold-down passes (RFC 6888 REQ-8). An endpoint that is not
    /// allocated, or not to `subscriber`, is ignored.
    fn release(
        &mut self,
        proto: Protocol,
        subscriber: SubscriberId,
        external: Endpoint,
        now: Instant,
    );

    /// Whether `addr` is an external address this allocator hands out. Inbound packets and hairpin
    /// detection ask this on the fast path, so it is O(1).
    fn owns(&self, addr: Ipv4Addr) -> bool;

    /// Utilisation per external address, for `ctl pools` and metrics.
    fn usage(&self) -> Vec<AddressUsage>;

    /// An external endpoint that a coming [`allocate`](Self::allocate) will likely hand out
    /// (for the protocol given with it), as known since the last `allocate`: the caller may
    /// start loading what that endpoint's mapping will touch (its inbound index bucket, a
    /// random cache miss per new mapping) while other work goes on. A hint for speed only,
    /// possibly wrong; allocators that cannot tell keep the default, which knows none.
    fn likely_next(&self) -> Option<(Protocol, Endpoint)> {
        None
    }

    /// How each external address's ports are divided into port sets (port blocks, RFC 7422
    /// ranges), for allocators that divide them; empty for those that hand out single ports.
    /// Only ports inside a set can ever be handed out, so the sets, not the port numbers, are
    /// an address's capacity in `ctl pools`. Not for the packet path: it scans every block.
    fn port_sets(&self) -> Vec<PortSetUsage> {
        Vec::new()
    }

    /// The next port-block record for the translation log, if any. Call it after every
    /// `allocate`, `release` and `handle_timeout` until it returns `None`; each of those calls
    /// queues at most a few. Allocators without blocks never have any.
    fn poll_event(&mut self) -> Option<AllocEvent> {
        None
    }

    /// Lets hold-downs that ended by `now` end (RFC 6888 REQ-8), so that blocks whose last port
    /// was released go back to the pool and their release is reported without waiting for the
    /// next `allocate` or `release`. Released blocks carry the exact time their hold-down ended,
    /// whenever this is called; calling it with the engine's timers keeps the log prompt.
    fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// The external address `subscriber`'s mappings are on, when that is fixed: its paired
    /// address while it has live mappings (RFC 4787 REQ-2), or its computed address
    /// (deterministic NAT). What NAT-PMP tells a client is its public address. Not for the
    /// packet path. Allocators without pairing keep the default, which knows none.
    fn paired_address(&self, subscriber: Ipv4Addr) -> Option<Ipv4Addr> {
        let _ = subscriber;
        None
    }

    /// Withholds these external ports (address, protocol, ports) from new allocations from now
    /// on: static NAT rules and virtual servers hold them (static rules win over
    /// dynamic NAPT). Replaces the previous list; addresses the allocator does not own are
    /// ignored. Live mappings keep their ports. Not for the packet path: it rebuilds a list.
    /// Allocators that hand out no ports of their own (a test double) may keep the default,
    /// which withholds nothing.
    fn set_reserved(&mut self, reserved: &[(Ipv4Addr, Protocol, PortRange)], now: Instant) {
        let _ = (reserved, now);
    }
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

/// What a port set of [`PortSetUsage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSetKind {
    /// A port block, given to a subscriber on demand and back to the pool after its hold-down
    /// (RFC 6888 REQ-8, REQ-14).
    Block,
    /// A deterministic range, the formula's for one subscriber and never anyone else's (RFC 7422).
    DeterministicRange,
}

/// How the port sets of one external address are used, as one allocator sees them (workers'
/// allocators own disjoint sets, so their figures add up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSetUsage {
    /// The external address.
    pub addr: Ipv4Addr,
    /// Blocks or deterministic ranges.
    pub kind: PortSetKind,
    /// Ports in each set (of every protocol: a set serves TCP, UDP and ICMP alike).
    pub size: u16,
    /// Sets of a subscriber with a port in use.
    pub in_use: u32,
    /// Blocks whose ports are all in hold-down (RFC 6888 REQ-8): back in the pool when it ends.
    /// Always 0 for deterministic ranges, which never change hands.
    pub held_down: u32,
    /// Blocks any new subscriber can be given; for deterministic ranges, those whose subscriber
    /// has no port in use.
    pub free: u32,
}

/// Bytes a hash map reserves, counting each entry plus its control byte: the convention of every
/// `memory_bytes` in this crate (the fragment tracker's, the engine's subscriber table's).
fn map_bytes<K, V, S: BuildHasher>(map: &HashMap<K, V, S>) -> usize {
    map.capacity() * (core::mem::size_of::<(K, V)>() + 1)
}
