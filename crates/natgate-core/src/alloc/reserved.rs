//! External ports that static NAT rules and virtual servers hold, withheld from dynamic
//! allocation: static rules win over dynamic NAPT.
//!
//! Every allocator keeps a [`Reserved`] and routes its `allocate` through
//! [`Reserved::allocate`]: the allocator picks as usual, and a pick that falls on a reserved
//! port is *parked*, kept taken inside the allocator so that it is never picked again, and the
//! allocator picks again. The check is one branch while nothing is reserved and a binary search
//! otherwise, and only new mappings pay it. Parked ports go back through the allocator's own
//! `release` when a new reservation list no longer holds them, so each allocator's bookkeeping
//! (hold-down, port blocks, pairing) stays its own.

use super::{AllocError, AllocRequest, PortRange};
use crate::alloc::SubscriberId;
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use std::net::Ipv4Addr;

/// Most picks per allocation that may land on reserved ports before giving up with
/// [`AllocError::Exhausted`]. Each one parks a different port, so a later allocation makes
/// progress where this one stopped; the bound keeps one allocation's cost small.
const MAX_PICKS: usize = 16;

/// One reserved `(address, protocol, port range)`, packed for the search.
type Entry = (u32, u8, u16, u16);

/// A port the allocator handed out that turned out to be reserved: it stays allocated (to the
/// subscriber that asked) until the reservation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    /// Its protocol.
    pub proto: Protocol,
    /// The internal endpoint it was allocated for.
    pub internal: Endpoint,
    /// The subscriber it was allocated to.
    pub subscriber: SubscriberId,
    /// The reserved external endpoint.
    pub external: Endpoint,
}

/// The reserved ports and the parked picks of one allocator. Boxed and absent while nothing is
/// reserved, so that an allocator without static rules grows by one pointer.
#[derive(Debug, Clone, Default)]
pub struct Reserved(Option<Box<Inner>>);

#[derive(Debug, Clone, Default)]
struct Inner {
    /// Sorted by (address, protocol, first port); ranges of one address and protocol may overlap.
    entries: Vec<Entry>,
    parked: Vec<Parked>,
}

impl Reserved {
    /// Replaces the reservations with `list` (addresses outside `owns` are dropped: the
    /// allocator never hands them out anyway) and returns the parked ports no longer reserved,
    /// for the allocator to release.
    pub fn set(
        &mut self,
        list: &[(Ipv4Addr, Protocol, PortRange)],
        owns: impl Fn(Ipv4Addr) -> bool,
    ) -> Vec<Parked> {
        let mut inner = self.0.take().unwrap_or_default();
        inner.entries = list
            .iter()
            .filter(|(a, _, _)| owns(*a))
            .map(|&(a, p, r)| (a.to_bits(), p.ip_number(), r.first, r.last))
            .collect();
        inner.entries.sort_unstable();
        inner.entries.dedup();
        let (keep, free): (Vec<Parked>, Vec<Parked>) = inner
            .parked
            .iter()
            .partition(|p| inner.contains(p.proto, p.external));
        inner.parked = keep;
        if !inner.entries.is_empty() || !inner.parked.is_empty() {
            self.0 = Some(inner);
        }
        free
    }

    /// Whether `external` is reserved for `proto`.
    #[inline]
    pub fn contains(&self, proto: Protocol, external: Endpoint) -> bool {
        self.0.as_ref().is_some_and(|i| i.contains(proto, external))
    }

    /// Whether nothing is reserved (the allocators then skip the check altogether).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Ports parked so far.
    pub fn parked(&self) -> &[Parked] {
        self.0.as_ref().map_or(&[], |i| &i.parked)
    }

    /// `pick` (the allocator's own allocation) until it returns an endpoint that is not
    /// reserved, parking each reserved one.
    #[inline]
    pub fn allocate(
        &mut self,
        req: &AllocRequest,
        rng: &mut Rng,
        mut pick: impl FnMut(&AllocRequest, &mut Rng) -> Result<Endpoint, AllocError>,
    ) -> Result<Endpoint, AllocError> {
        let Some(inner) = self.0.as_mut() else {
            return pick(req, rng);
        };
        for _ in 0..MAX_PICKS {
            let e = pick(req, rng)?;
            if !inner.contains(req.proto, e) {
                return Ok(e);
            }
            inner.parked.push(Parked {
                proto: req.proto,
                internal: req.internal,
                subscriber: req.subscriber,
                external: e,
            });
        }
        Err(AllocError::Exhausted)
    }
}

impl Inner {
    fn contains(&self, proto: Protocol, external: Endpoint) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let key = (external.addr.to_bits(), proto.ip_number());
        // Entries of this address and protocol form one run; ranges may overlap, so look at
        // each range starting at or below the port.
        let end = self
            .entries
            .partition_point(|&(a, p, first, _)| (a, p, first) <= (key.0, key.1, external.port));
        self.entries[..end]
            .iter()
            .rev()
            .take_while(|&&(a, p, _, _)| (a, p) == key)
            .any(|&(_, _, _, last)| external.port <= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Instant;

    const A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn contains_follows_address_protocol_and_overlapping_ranges() {
        let mut res = Reserved::default();
        let freed = res.set(
            &[
                (A, Protocol::Tcp, r(80, 80)),
                (A, Protocol::Tcp, r(70, 90)),
                (A, Protocol::Tcp, r(75, 76)),
                (A, Protocol::Udp, r(5000, 5099)),
                (B, Protocol::Tcp, r(0, u16::MAX)),
                (Ipv4Addr::new(192, 0, 2, 1), Protocol::Tcp, r(1, 9)),
            ],
            |a| a == A || a == B,
        );
        assert!(freed.is_empty());
        let has = |p, a, port| res.contains(p, Endpoint::new(a, port));
        assert!(has(Protocol::Tcp, A, 80));
        assert!(has(Protocol::Tcp, A, 90), "inside the wider range");
        assert!(has(Protocol::Tcp, A, 70));
        assert!(!has(Protocol::Tcp, A, 91));
        assert!(!has(Protocol::Tcp, A, 69));
        assert!(!has(Protocol::Udp, A, 80), "other protocol");
        assert!(has(Protocol::Udp, A, 5099));
        assert!(has(Protocol::Tcp, B, 1) && has(Protocol::Tcp, B, 65535));
        assert!(!has(Protocol::Icmp, B, 1));
        assert!(
            !has(Protocol::Tcp, Ipv4Addr::new(192, 0, 2, 1), 5),
            "not ours: dropped"
        );
    }

    #[test]
    fn reserved_picks_are_parked_and_released_when_unreserved() {
        let mut res = Reserved::default();
        res.set(&[(A, Protocol::Udp, r(1000, 1001))], |_| true);
        let req = AllocRequest {
            proto: Protocol::Udp,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), 1000),
            subscriber: SubscriberId::of(Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), 1000)),
            now: Instant::ZERO,
        };
        let mut next = 1000u16;
        let mut pick = |_: &AllocRequest, _: &mut Rng| {
            next += 1;
            Ok(Endpoint::new(A, next - 1))
        };
        let e = res
            .allocate(&req, &mut Rng::new(1), &mut pick)
            .expect("third pick");
        assert_eq!(e.port, 1002);
        assert_eq!(res.parked().len(), 2);
        let freed = res.set(&[(A, Protocol::Udp, r(1001, 1001))], |_| true);
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].external.port, 1000);
        assert_eq!(res.parked().len(), 1);
        // An allocator that only ever offers reserved ports gives up.
        let mut stuck = |_: &AllocRequest, _: &mut Rng| Ok(Endpoint::new(A, 1001));
        assert_eq!(
            res.allocate(&req, &mut Rng::new(1), &mut stuck),
            Err(AllocError::Exhausted)
        );
    }
}
