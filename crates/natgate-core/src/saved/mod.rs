//! What an engine keeps across a restart: its sessions, explicit mappings and ports in
//! hold-down, as plain records that name endpoints rather than table slots.
//!
//! Records, not a copy of the tables: a new version of natgate may lay its tables out
//! differently, may run with another number of workers (each record goes to whichever worker
//! owns its subscriber), and checks every record against its own config as it restores it (an
//! external port must be one its allocator could have handed out). Times are ages relative to
//! the moment of saving, so the engine clock's origin, which is per process, never appears.
//!
//! [`codec`] is the file format; [`Engine::save`](crate::engine::Engine::save) and
//! [`Engine::restore`](crate::engine::Engine::restore) are the policy.

pub mod codec;

use crate::endpoint::{Endpoint, Protocol};
use crate::table::{MappingOrigin, RemotePeer};
use core::time::Duration;
use std::net::Ipv4Addr;

/// One dynamic session: its mapping's two endpoints and its remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedSession {
    /// Protocol.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The external endpoint of its mapping: what restoring must give back exactly.
    pub external: Endpoint,
    /// The remote endpoint.
    pub remote: Endpoint,
    /// The TCP state byte ([`TcpState::to_byte`](crate::tcp_state::TcpState::to_byte)); 0 for
    /// UDP and ICMP.
    pub tcp: u8,
    /// Seconds since a packet last refreshed it.
    pub idle_secs: u32,
}

/// One explicit mapping (PCP, NAT-PMP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedExplicit {
    /// TCP or UDP.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// Its external endpoint.
    pub external: Endpoint,
    /// Lifetime left when it was saved.
    pub remaining: Duration,
    /// Who asked for it (a PCP renewal must carry the same nonce).
    pub origin: MappingOrigin,
    /// The remote peers it admits; empty: every remote.
    pub peers: Vec<RemotePeer>,
}

/// One external port in hold-down (RFC 6888 REQ-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedHold {
    /// The protocol whose port space it is in.
    pub proto: Protocol,
    /// The held endpoint.
    pub external: Endpoint,
    /// Time since it was released.
    pub age: Duration,
    /// Whose it was, where the allocator keeps that (port blocks, deterministic ranges keep
    /// the port their subscriber's until the hold-down ends); `None` where it does not.
    pub subscriber: Option<Ipv4Addr>,
}

/// One engine's (or, merged, one gateway's) saved state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedState {
    /// Dynamic sessions.
    pub sessions: Vec<SavedSession>,
    /// Explicit mappings.
    pub explicit: Vec<SavedExplicit>,
    /// Ports in hold-down, oldest release first.
    pub held: Vec<SavedHold>,
}

impl SavedState {
    /// The state divided among `n` engines: each record goes to `owner` of its subscriber
    /// (clamped to the last engine). A held port whose subscriber is not known goes to the
    /// first: only the dynamic allocator keeps none, and it runs as one engine.
    pub fn split(self, n: usize, owner: impl Fn(Ipv4Addr) -> usize) -> Vec<SavedState> {
        let n = n.max(1);
        let of = |a: Ipv4Addr| owner(a).min(n - 1);
        let mut parts = vec![SavedState::default(); n];
        for r in self.sessions {
            parts[of(r.internal.addr)].sessions.push(r);
        }
        for r in self.explicit {
            parts[of(r.internal.addr)].explicit.push(r);
        }
        for h in self.held {
            parts[h.subscriber.map_or(0, of)].held.push(h);
        }
        parts
    }

    /// Adds another engine's state to this one.
    pub fn merge(&mut self, other: SavedState) {
        self.sessions.extend(other.sessions);
        self.explicit.extend(other.explicit);
        self.held.extend(other.held);
        // Restoring releases held ports in this order, and hold-down queues expect their
        // releases oldest first.
        self.held.sort_by_key(|h| core::cmp::Reverse(h.age));
    }
}
