//! Events the engine queues for the driver to drain with
//! [`Engine::poll_event`](crate::Engine::poll_event): the raw material of translation logs.

use crate::alloc::{AllocEvent, PortBlock, PortRange, SubscriberId};
use crate::counters::DropReason;
use crate::endpoint::{Endpoint, Protocol};
use crate::rules::RuleId;
use crate::table::MappingOrigin;
use crate::time::Instant;
use crate::vserver::RealServerId;
use std::net::Ipv4Addr;

/// Something that happened to the translation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A mapping (internal endpoint -> external endpoint) was created.
    MappingCreated {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The endpoint it appears as outside.
        external: Endpoint,
    },
    /// A mapping was deleted (its last session ended).
    MappingDeleted {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The endpoint it appeared as outside.
        external: Endpoint,
        /// Why it ended.
        reason: EndReason,
    },
    /// A session (one remote endpoint through a mapping) was created.
    SessionCreated {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The external endpoint.
        external: Endpoint,
        /// The remote endpoint.
        remote: Endpoint,
        /// What made it (dynamic NAPT, a static rule, a virtual server), so that a log ties a
        /// translation to the configuration that made it.
        origin: SessionOrigin,
    },
    /// A session was deleted (timed out or ended by an operator).
    SessionDeleted {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The external endpoint.
        external: Endpoint,
        /// The remote endpoint.
        remote: Endpoint,
        /// What made it: the same origin as its `SessionCreated`.
        origin: SessionOrigin,
        /// Why it ended.
        reason: EndReason,
    },
    /// A mapping or session could not be made because of a limit; the packet was dropped (RFC
    /// 6888 REQ-11: tell management). Outbound, the subscriber's packet found no mapping or
    /// session; inbound, a remote's packet to a live mapping was refused a session by the
    /// subscriber's quota or the session table.
    MappingFailed {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint (inbound: the mapping's internal endpoint).
        internal: Endpoint,
        /// Whom it tried to reach (inbound: the remote that sent the packet).
        remote: Endpoint,
        /// Which limit refused it (also the drop counter), so that a log can tell pool
        /// exhaustion from a subscriber's quota (RFC 8158 natEvent 3 vs 13).
        reason: DropReason,
    },
    /// A subscriber asked for a mapping with a port-mapping protocol and got it (RFC 6887
    /// section 11, RFC 6886 section 3.3); a renewal makes no event.
    ExplicitMappingCreated {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The endpoint it appears as outside.
        external: Endpoint,
        /// Who asked for it.
        origin: MappingOrigin,
    },
    /// An explicit mapping ended: its lifetime ran out or it was deleted.
    ExplicitMappingDeleted {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The endpoint it appeared as outside.
        external: Endpoint,
        /// Who asked for it.
        origin: MappingOrigin,
    },
    /// A subscriber was given a port block (RFC 6888 port-block logging; RFC 8158 natEvent 16).
    /// A block serves every protocol, so there is no protocol field.
    PortBlockAllocated {
        /// When.
        at: Instant,
        /// The subscriber.
        subscriber: SubscriberId,
        /// The external address of the block.
        external: Ipv4Addr,
        /// The block's ports.
        ports: PortRange,
    },
    /// A port block went back to the pool: its last port was released and the hold-down passed
    /// (RFC 6888 REQ-8; RFC 8158 natEvent 17).
    PortBlockReleased {
        /// When the hold-down of its last port ended.
        at: Instant,
        /// The subscriber that held it.
        subscriber: SubscriberId,
        /// The external address of the block.
        external: Ipv4Addr,
        /// The block's ports.
        ports: PortRange,
    },
}

impl From<AllocEvent> for Event {
    fn from(e: AllocEvent) -> Event {
        match e {
            AllocEvent::BlockAllocated(PortBlock {
                at,
                subscriber,
                external,
                ports,
            }) => Event::PortBlockAllocated {
                at,
                subscriber,
                external,
                ports,
            },
            AllocEvent::BlockReleased(PortBlock {
                at,
                subscriber,
                external,
                ports,
            }) => Event::PortBlockReleased {
                at,
                subscriber,
                external,
                ports,
            },
        }
    }
}

/// Why a session or mapping ended, so that a log tells an operator's delete from a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Idle past its timer (for TCP, the timer of its phase: a closed or reset connection's
    /// session ends this way too); a mapping, with its last session.
    Expired,
    /// An operator ended it: `flush` (of everything or of one subscriber), `session delete`, or
    /// `rule delete` with `flush`.
    Operator,
    /// A mapping made for a new session that a limit then refused: it never carried a packet.
    Unused,
}

impl EndReason {
    /// The lower-case name the logs carry.
    pub const fn name(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Operator => "operator",
            EndReason::Unused => "unused",
        }
    }
}

/// What made a session: dynamic NAPT, a static rule, or a virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOrigin {
    /// Dynamic NAPT: a mapping from the allocator.
    Dynamic,
    /// The static rule with this id (one-way rules and the reverse of a bidirectional rule
    /// share their rule's id).
    Rule(RuleId),
    /// The virtual server at `address` sent the connection to its real server `server`.
    VirtualServer {
        /// The virtual address and port.
        address: Endpoint,
        /// The real server chosen.
        server: RealServerId,
    },
    /// An explicit mapping (PCP, NAT-PMP) let the flow through.
    Explicit(MappingOrigin),
}

/// How operators and the translation logs name what made a session: `dynamic`, `rule ID` or
/// `vserver ADDR:PORT server ID`. A `Display` so a log sink writes it without allocating.
impl core::fmt::Display for SessionOrigin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SessionOrigin::Dynamic => f.write_str("dynamic"),
            SessionOrigin::Rule(id) => write!(f, "rule {id}"),
            SessionOrigin::VirtualServer { address, server } => {
                write!(f, "vserver {address} server {server}")
            }
            SessionOrigin::Explicit(o) => o.fmt(f),
        }
    }
}
