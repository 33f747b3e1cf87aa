//! Explicit mappings in the engine: made, renewed and deleted by a port-mapping server on the
//! control path (never per packet), used by the packet path through the static session table
//! (see `static_nat`: an explicit mapping's flows are static sessions whose origin names it).
//!
//! The external port comes from the engine's allocator, so it is taken from the subscriber's
//! own port block, deterministic range or the pool, counts against its port limit, and is held
//! down after release like any other (RFC 6888 REQ-4, REQ-8). The mapping also counts as one
//! session against the subscriber's quota of its protocol, so a subscriber cannot hold more
//! inbound ports than it could open outbound flows.

use super::Engine;
use std::net::Ipv4Addr;

use crate::alloc::SubscriberId;
use crate::alloc::{AllocRequest, PortAllocator};
use crate::counters::DropReason;
use crate::endpoint::{Endpoint, Protocol};
use crate::event::Event;
use crate::table::{ExplicitMapping, MappingOrigin, RemotePeer, SoftwireTag, StaticOrigin};
use crate::time::Instant;
use core::time::Duration;

/// What a port-mapping server asks the engine for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRequest {
    /// TCP or UDP.
    pub proto: Protocol,
    /// The subscriber's endpoint to map.
    pub internal: Endpoint,
    /// How long the mapping lives from now (the server has clamped it to its limits).
    pub lifetime: Duration,
    /// Who asks.
    pub origin: MappingOrigin,
    /// The only remote peers to let in; empty: every remote.
    pub peers: Vec<RemotePeer>,
    /// The external endpoint the requester would like, if any (a new mapping only: a mapping
    /// that exists keeps its endpoint).
    pub suggested: Option<Suggestion>,
}

/// An external endpoint a port-mapping client suggests (PCP's suggested address and port,
/// NAT-PMP's requested public port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suggestion {
    /// The address, or `None` for whichever the subscriber's mappings are on.
    pub addr: Option<Ipv4Addr>,
    /// The port (not 0).
    pub port: u16,
    /// That endpoint or no mapping (PCP's PREFER_FAILURE, RFC 6887 section 13.2); otherwise
    /// another endpoint when it is not available.
    pub required: bool,
}

/// Why an explicit mapping could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The engine's config does not take explicit mappings (`Config::explicit_mappings`).
    #[error("this engine takes no explicit mappings")]
    Disabled,
    /// Only TCP and UDP ports can be mapped.
    #[error("only TCP and UDP can be mapped")]
    UnsupportedProtocol,
    /// The internal address is not in the inside networks the NAT serves.
    #[error("the internal address is not one the NAT serves")]
    NotInside,
    /// The internal port is 0, which names no endpoint.
    #[error("the internal port is 0")]
    ZeroPort,
    /// The subscriber holds as many explicit mappings as it may.
    #[error("the subscriber holds its limit of explicit mappings")]
    MappingLimit,
    /// The allocator, the subscriber's quota or a table refused it; the reason is the drop
    /// counter a packet refused for the same cause would be counted under.
    #[error("no external port: {}", .0.name())]
    NoResources(DropReason),
    /// The suggested endpoint was required and is not available.
    #[error("the suggested external endpoint is not available")]
    SuggestionUnavailable,
}

impl<A: PortAllocator> Engine<A> {
    /// Makes an explicit mapping for `req.internal`, or renews the one it has (new lifetime,
    /// origin and peers; same external endpoint). `max_per_subscriber` caps the explicit
    /// mappings one internal address may hold. Returns the mapping as it now is.
    pub fn map_explicit(
        &mut self,
        now: Instant,
        req: MapRequest,
        max_per_subscriber: usize,
    ) -> Result<ExplicitMapping, MapError> {
        if !matches!(req.proto, Protocol::Tcp | Protocol::Udp) {
            return Err(MapError::UnsupportedProtocol);
        }
        if req.internal.port == 0 {
            return Err(MapError::ZeroPort);
        }
        if !self.source_is_inside(req.internal.addr) {
            return Err(MapError::NotInside);
        }
        if self.statics.table.is_none() {
            return Err(MapError::Disabled);
        }
        let expires = now + req.lifetime;
        if let Some(m) = self.explicit.get_mut(req.proto, req.internal) {
            m.expires = expires;
            m.origin = req.origin;
            m.peers = req.peers;
            let m = m.clone();
            self.explicit.retime();
            return Ok(m);
        }
        if self.explicit.count_of(req.internal.addr) >= max_per_subscriber {
            return Err(MapError::MappingLimit);
        }
        if let Some(subs) = self.subscribers.as_mut() {
            subs.admit(req.internal.addr, req.proto, now, false)
                .map_err(MapError::NoResources)?;
        }
        let alloc_req = AllocRequest {
            proto: req.proto,
            internal: req.internal,
            subscriber: SubscriberId::of(req.internal),
            now,
        };
        let suggested = req
            .suggested
            .and_then(|s| self.allocate_suggested(&alloc_req, s));
        let allocated = match (suggested, req.suggested) {
            (Some(e), _) => Ok(e),
            (None, Some(s)) if s.required => {
                self.unadmit(SoftwireTag::NONE, req.internal.addr, req.proto);
                return Err(MapError::SuggestionUnavailable);
            }
            (None, _) => self.alloc.allocate(&alloc_req, &mut self.rng),
        };
        self.drain_alloc_events();
        let external = match allocated {
            Ok(e) => e,
            Err(e) => {
                self.unadmit(SoftwireTag::NONE, req.internal.addr, req.proto);
                return Err(MapError::NoResources(super::translate::drop_reason(e)));
            }
        };
        let m = ExplicitMapping {
            proto: req.proto,
            internal: req.internal,
            external,
            expires,
            origin: req.origin,
            peers: req.peers,
        };
        self.explicit.insert(m.clone());
        self.emit(Event::ExplicitMappingCreated {
            at: now,
            proto: m.proto,
            internal: m.internal,
            external: m.external,
            origin: m.origin,
        });
        Ok(m)
    }

    /// Takes the suggested endpoint for `req` if the allocator can give it: on the suggested
    /// address, or else on the subscriber's own (paired or computed), or else on the first
    /// address of the pool where it is free. `None` if on none.
    fn allocate_suggested(&mut self, req: &AllocRequest, s: Suggestion) -> Option<Endpoint> {
        let candidates: Vec<Ipv4Addr> = match s.addr {
            Some(a) => vec![a],
            None => match self.alloc.paired_address(req.internal.addr) {
                Some(a) => vec![a],
                None => self.alloc.usage().iter().map(|u| u.addr).collect(),
            },
        };
        candidates
            .into_iter()
            .find_map(|a| self.alloc.allocate_at(req, Endpoint::new(a, s.port)).ok())
    }

    /// Deletes the explicit mapping of `internal` for `proto` and the flows it let through
    /// (so that nothing reaches the subscriber by it any more); its port enters hold-down.
    /// Returns it, or `None` if there was none.
    pub fn unmap_explicit(
        &mut self,
        now: Instant,
        proto: Protocol,
        internal: Endpoint,
    ) -> Option<ExplicitMapping> {
        let m = self.explicit.remove(proto, internal)?;
        self.explicit_gone(now, &m);
        Some(m)
    }

    /// Whether `addr` is a subscriber this engine translates for (in the inside networks, or
    /// any address when none are configured): whom a port-mapping server may serve.
    pub fn serves(&self, addr: std::net::Ipv4Addr) -> bool {
        self.source_is_inside(addr)
    }

    /// The external address to tell `subscriber` it has (NAT-PMP's public address request):
    /// the address its mappings are on (paired pooling, RFC 4787 REQ-2, or its deterministic
    /// address), else the pool's first address. That is exact on a home gateway (one address)
    /// and with deterministic NAT; with a pool of several addresses a subscriber without live
    /// mappings is not paired yet, and its first mapping may land on another address (PCP's
    /// MAP answer carries each mapping's address; NAT-PMP cannot).
    pub fn external_address_for(
        &self,
        subscriber: std::net::Ipv4Addr,
    ) -> Option<std::net::Ipv4Addr> {
        self.alloc
            .paired_address(subscriber)
            .or_else(|| self.statics.pool.first().copied())
    }

    /// The explicit mapping of `internal` for `proto`.
    pub fn explicit_mapping(
        &self,
        proto: Protocol,
        internal: Endpoint,
    ) -> Option<&ExplicitMapping> {
        self.explicit.by_internal(proto, internal)
    }

    /// Every explicit mapping, by protocol and internal endpoint.
    pub fn explicit_mappings(&self) -> impl Iterator<Item = &ExplicitMapping> {
        self.explicit.iter()
    }

    /// The explicit mappings as operators see them, with the flows each carries now (one
    /// pass over the static sessions: a control-plane listing, never on the packet path).
    pub(super) fn explicit_infos(&self) -> impl Iterator<Item = super::MappingInfo> + '_ {
        let mut flows: std::collections::BTreeMap<(Protocol, Endpoint), u32> =
            std::collections::BTreeMap::new();
        if !self.explicit.is_empty()
            && let Some(t) = self.statics.table.as_ref()
        {
            for (_, s) in t.iter() {
                if matches!(s.origin, StaticOrigin::Explicit(_)) {
                    *flows.entry((s.proto, s.inside_local)).or_default() += 1;
                }
            }
        }
        self.explicit.iter().map(move |m| super::MappingInfo {
            proto: m.proto,
            internal: m.internal,
            external: m.external,
            sessions: flows.get(&(m.proto, m.internal)).copied().unwrap_or(0),
            explicit: Some(super::ExplicitInfo {
                origin: m.origin,
                expires: m.expires,
            }),
            softwire: None,
        })
    }

    /// Ends the explicit mappings whose lifetime ran out (from `handle_timeout`).
    pub(super) fn expire_explicit(&mut self, now: Instant) {
        for m in self.explicit.expire(now) {
            self.explicit_gone(now, &m);
        }
    }

    /// When an explicit mapping's lifetime next ends.
    pub(super) fn explicit_next_expiry(&self) -> Option<Instant> {
        self.explicit.next_expiry()
    }

    /// A removed explicit mapping's flows, port, quota charge and event.
    fn explicit_gone(&mut self, now: Instant, m: &ExplicitMapping) {
        let (proto, internal) = (m.proto, m.internal);
        self.flush_static_where(now, |s| {
            matches!(s.origin, StaticOrigin::Explicit(_))
                && s.proto == proto
                && s.inside_local == internal
        });
        self.alloc
            .release(proto, SubscriberId::of(internal), m.external, now);
        self.drain_alloc_events();
        self.unadmit(SoftwireTag::NONE, internal.addr, proto);
        self.emit(Event::ExplicitMappingDeleted {
            at: now,
            proto,
            internal,
            external: m.external,
            origin: m.origin,
        });
    }
}

#[cfg(test)]
mod tests;
