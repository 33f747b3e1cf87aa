//! DS-Lite softwires (RFC 6333) as subscribers: which B4s may have one, the number each gets
//! (the [`SoftwireTag`] its sessions carry), what each may hold and how fast it may open
//! sessions (the ISC AFTR's per-tunnel quotas and rates, RFC 6888 REQ-4 and REQ-5 with the
//! softwire as the subscriber), and its MTU (RFC 6333 section 5.3), which ICMPv6 packet too
//! big may lower.
//!
//! The table is reserved at `max-softwires` entries when the engine is built and never grows.
//! A softwire made automatically is forgotten with its last session; a configured one stays.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::alloc::SubscriberId;
use crate::config::{DsLite, MIN_SOFTWIRE_MTU, SoftwireLimits, TooBig};
use crate::counters::DropReason;
use crate::endpoint::{Endpoint, Ipv4Prefix, Ipv6Prefix, Protocol};
use crate::table::{SoftwireId, SoftwireTag};
use crate::time::Instant;
use crate::wire::tunnel::Outer;

/// The hop limit of packets to B4s: RFC 8200 leaves it to the node, and 64 is the common
/// default (RFC 4861's `CurHopLimit` suggestion is 64 too).
pub(crate) const HOP_LIMIT: u8 = 64;

/// One token is this many milli-tokens, so that refill needs no floating point.
const MILLI: u32 = 1000;

/// One softwire's state.
#[derive(Debug, Clone, Copy)]
struct Softwire {
    b4: Ipv6Addr,
    /// The largest IPv4 packet carried whole; lowered by packet too big.
    mtu: u16,
    /// Configured softwires outlive their sessions.
    configured: bool,
    limits: SoftwireLimits,
    /// Live sessions, by [`Protocol::index`].
    sessions: [u32; 3],
    /// Creation-rate buckets, milli-tokens, by [`Protocol::index`]. Each holds at most one
    /// second's worth.
    tokens: [u32; 3],
    /// When the buckets were last refilled.
    refilled: Instant,
}

/// What an operator sees of a softwire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftwireInfo {
    /// Its number in this engine (the tag its sessions carry).
    pub id: SoftwireId,
    /// The B4's IPv6 address.
    pub b4: Ipv6Addr,
    /// Its MTU now.
    pub mtu: u16,
    /// Whether it was configured (rather than made by its first packet).
    pub configured: bool,
    /// Live sessions, by [`Protocol::index`].
    pub sessions: [u32; 3],
}

/// The softwires of one engine and the `[ds-lite]` policy that admits them.
#[derive(Debug)]
pub(crate) struct Softwires {
    pub endpoint: Ipv6Addr,
    acl6: Box<[Ipv6Prefix]>,
    auto: bool,
    private: Box<[Ipv4Prefix]>,
    mtu: u16,
    pub mss: bool,
    pub too_big: TooBig,
    pub equal_fragments: bool,
    limits: SoftwireLimits,
    by_b4: HashMap<Ipv6Addr, SoftwireId>,
    /// Slot `id - 1` holds softwire `id`.
    slots: Vec<Option<Softwire>>,
    /// Vacant ids, reused last-in first-out.
    free: Vec<SoftwireId>,
    max: usize,
}

impl Softwires {
    /// The table for a validated `[ds-lite]` section, with its configured softwires in it.
    pub fn new(d: &DsLite, now: Instant) -> Self {
        let max = d.max_softwires as usize;
        let mut t = Softwires {
            endpoint: d.endpoint,
            acl6: d.acl6.clone().into_boxed_slice(),
            auto: d.auto,
            private: d.private.clone().into_boxed_slice(),
            mtu: d.mtu,
            mss: d.mss,
            too_big: d.too_big,
            equal_fragments: d.equal_fragments,
            limits: d.limits,
            by_b4: HashMap::with_capacity(max),
            slots: Vec::with_capacity(max),
            free: Vec::with_capacity(max),
            max,
        };
        for s in &d.softwires {
            let limits = s.limits.unwrap_or(d.limits);
            // Validation keeps the configured ones distinct and within `max-softwires`, so
            // none is refused.
            let _ = t.insert(s.b4, s.mtu.unwrap_or(d.mtu), limits, true, now);
        }
        t
    }

    fn insert(
        &mut self,
        b4: Ipv6Addr,
        mtu: u16,
        limits: SoftwireLimits,
        configured: bool,
        now: Instant,
    ) -> Result<SoftwireId, DropReason> {
        let sw = Softwire {
            b4,
            mtu,
            configured,
            limits,
            sessions: [0; 3],
            tokens: Protocol::ALL.map(|p| limits.rate(p).saturating_mul(MILLI)),
            refilled: now,
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.slots.len() < self.max => {
                // Fits: `max` is at most MAX_SOFTWIRES, so the new id is in range.
                let Some(id) = SoftwireId::new(self.slots.len() as u32 + 1) else {
                    return Err(DropReason::SoftwireTableFull);
                };
                self.slots.push(None);
                id
            }
            None => return Err(DropReason::SoftwireTableFull),
        };
        self.slots[id.get() as usize - 1] = Some(sw);
        self.by_b4.insert(b4, id);
        Ok(id)
    }

    fn slot(&self, id: SoftwireId) -> Option<&Softwire> {
        self.slots.get(id.get() as usize - 1)?.as_ref()
    }

    fn slot_mut(&mut self, id: SoftwireId) -> Option<&mut Softwire> {
        self.slots.get_mut(id.get() as usize - 1)?.as_mut()
    }

    /// The softwire of B4 `b4`, made now if the B4 may make one (in `acl6`, automatic
    /// softwires on); refused otherwise, or when the table is full. A softwire made here and
    /// left without sessions is forgotten by [`Self::forget_if_idle`].
    pub fn resolve(&mut self, b4: Ipv6Addr, now: Instant) -> Result<SoftwireId, DropReason> {
        if let Some(&id) = self.by_b4.get(&b4) {
            return Ok(id);
        }
        if !(self.auto && self.acl6.iter().any(|p| p.contains(b4))) {
            return Err(DropReason::SoftwireNotAllowed);
        }
        self.insert(b4, self.mtu, self.limits, false, now)
    }

    /// The softwire of B4 `b4`, if it has one now.
    pub fn find(&self, b4: Ipv6Addr) -> Option<SoftwireId> {
        self.by_b4.get(&b4).copied()
    }

    /// Whether `src` may be the inner source of a softwire packet (the AFTR's `private`).
    pub fn allows_inner_source(&self, src: Ipv4Addr) -> bool {
        self.private.iter().any(|p| p.contains(src))
    }

    /// The B4 and MTU of the softwire a session's tag names.
    pub fn endpoint_of(&self, tag: SoftwireTag) -> Option<(Ipv6Addr, u16)> {
        let s = self.slot(tag.get()?)?;
        Some((s.b4, s.mtu))
    }

    /// The outer header for a packet to the softwire a session's tag names: from the AFTR's
    /// endpoint to its B4 (traffic class and hop limit are the caller's to fill in).
    pub fn outer_for(&self, tag: SoftwireTag) -> Option<Outer> {
        let (b4, _) = self.endpoint_of(tag)?;
        Some(Outer {
            b4,
            aftr: self.endpoint,
            traffic_class: 0,
            hop_limit: HOP_LIMIT,
        })
    }

    /// Charges a new `proto` session to softwire `id`, or says which limit refuses it. The
    /// creation rate applies only to sessions the B4's side opens.
    pub fn admit(
        &mut self,
        id: SoftwireId,
        proto: Protocol,
        now: Instant,
        opened_by_subscriber: bool,
    ) -> Result<(), DropReason> {
        let Some(s) = self.slot_mut(id) else {
            return Err(DropReason::SoftwireNotAllowed);
        };
        let i = proto.index();
        let quota = s.limits.sessions(proto);
        if quota != 0 && s.sessions[i] >= quota {
            return Err(DropReason::SoftwireSessionLimit);
        }
        let rate = s.limits.rate(proto);
        if rate != 0 && opened_by_subscriber {
            // `rate` tokens per second is `rate` milli-tokens per millisecond.
            let elapsed = now.as_millis().saturating_sub(s.refilled.as_millis());
            for (p, t) in Protocol::ALL.iter().zip(&mut s.tokens) {
                let rate = s.limits.rate(*p);
                let add = elapsed.saturating_mul(u64::from(rate));
                let cap = u64::from(rate.saturating_mul(MILLI));
                // Fits: at most `cap`, a u32.
                *t = u64::from(*t).saturating_add(add).min(cap) as u32;
            }
            s.refilled = now.max(s.refilled);
            if s.tokens[i] < MILLI {
                return Err(DropReason::SoftwireRateLimit);
            }
            s.tokens[i] -= MILLI;
        }
        s.sessions[i] += 1;
        Ok(())
    }

    /// A session of softwire `id` ended (or was never made after `admit`); an automatic
    /// softwire goes with its last session.
    pub fn release(&mut self, id: SoftwireId, proto: Protocol) {
        if let Some(s) = self.slot_mut(id) {
            let n = &mut s.sessions[proto.index()];
            *n = n.saturating_sub(1);
        }
        self.forget_if_idle(id);
    }

    /// Forgets an automatic softwire with no sessions, so the table holds only softwires with
    /// state (a B4 whose packets were all refused leaves nothing behind).
    pub fn forget_if_idle(&mut self, id: SoftwireId) {
        let idle = self
            .slot(id)
            .is_some_and(|s| !s.configured && s.sessions == [0; 3]);
        if !idle {
            return;
        }
        if let Some(s) = self
            .slots
            .get_mut(id.get() as usize - 1)
            .and_then(Option::take)
        {
            self.by_b4.remove(&s.b4);
            self.free.push(id);
        }
    }

    /// ICMPv6 packet too big from the path to `b4` (RFC 6333 section 5.3, RFC 8201): the
    /// softwire's MTU becomes what fits in `path_mtu` after the IPv6 header, never below
    /// [`MIN_SOFTWIRE_MTU`] (RFC 8201 section 4: a too-big below 1280 is not believed) and
    /// never raised. Returns the new MTU, if the B4 has a softwire.
    pub fn lower_mtu(&mut self, b4: Ipv6Addr, path_mtu: u32) -> Option<u16> {
        let id = self.find(b4)?;
        let s = self.slot_mut(id)?;
        let inner = path_mtu.saturating_sub(crate::wire::ipv6::HEADER_LEN as u32);
        let inner = u16::try_from(inner)
            .unwrap_or(u16::MAX)
            .max(MIN_SOFTWIRE_MTU);
        s.mtu = s.mtu.min(inner);
        Some(s.mtu)
    }

    /// Every softwire, in id order.
    pub fn iter(&self) -> impl Iterator<Item = SoftwireInfo> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let s = s.as_ref()?;
            Some(SoftwireInfo {
                id: SoftwireId::new(i as u32 + 1)?,
                b4: s.b4,
                mtu: s.mtu,
                configured: s.configured,
                sessions: s.sessions,
            })
        })
    }

    /// Softwires tracked now.
    pub fn len(&self) -> usize {
        self.by_b4.len()
    }

    /// Bytes the table reserves: slots, the B4 index (an entry and a control byte each), the
    /// free list. Fixed at `max-softwires`: it never grows.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Option<Softwire>>()
            + self.by_b4.capacity() * (core::mem::size_of::<(Ipv6Addr, SoftwireId)>() + 1)
            + self.free.capacity() * core::mem::size_of::<SoftwireId>()
    }

    /// [`Self::memory_bytes`] per softwire, before the hash table's rounding up of its
    /// capacity.
    #[cfg(test)]
    pub const fn memory_for(max: usize) -> usize {
        max * (core::mem::size_of::<Option<Softwire>>()
            + core::mem::size_of::<(Ipv6Addr, SoftwireId)>()
            + 1
            + core::mem::size_of::<SoftwireId>())
    }
}

/// Who a mapping of `internal` behind softwire `tag` is charged to: the softwire, named by its
/// B4, or the plain IPv4 subscriber. A live session keeps its softwire in the table, so a
/// tagged mapping always finds its B4; the IPv4 fallback is never taken while that holds.
pub(crate) fn subscriber_of(
    softwires: &Option<Softwires>,
    tag: SoftwireTag,
    internal: Endpoint,
) -> SubscriberId {
    match (tag.get(), softwires.as_ref()) {
        (Some(id), Some(t)) => match t.slot(id) {
            Some(s) => SubscriberId::Softwire { b4: s.b4, id },
            None => SubscriberId::of(internal),
        },
        _ => SubscriberId::of(internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SoftwireSpec;

    fn b4(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last)
    }

    fn section() -> DsLite {
        DsLite::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            vec!["2001:db8:1::/48".parse().unwrap()],
        )
    }

    const T0: Instant = Instant::ZERO;

    #[test]
    fn acl6_and_auto_decide_who_gets_a_softwire() {
        let mut t = Softwires::new(&section(), T0);
        let a = t.resolve(b4(2), T0).unwrap();
        assert_eq!(t.resolve(b4(2), T0), Ok(a), "one softwire per B4");
        let b = t.resolve(b4(3), T0).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            t.resolve("2001:db8:2::2".parse().unwrap(), T0),
            Err(DropReason::SoftwireNotAllowed)
        );
        let mut d = section();
        d.auto = false;
        d.softwires = vec![SoftwireSpec {
            b4: "2001:db8:9::9".parse().unwrap(),
            mtu: Some(1400),
            limits: None,
        }];
        let mut t = Softwires::new(&d, T0);
        assert_eq!(
            t.resolve(b4(2), T0),
            Err(DropReason::SoftwireNotAllowed),
            "auto off: acl6 alone is not enough"
        );
        let c = t.resolve("2001:db8:9::9".parse().unwrap(), T0).unwrap();
        assert_eq!(
            t.endpoint_of(SoftwireTag::of(c)),
            Some(("2001:db8:9::9".parse().unwrap(), 1400))
        );
    }

    #[test]
    fn the_table_is_bounded_and_ids_are_reused() {
        let mut d = section();
        d.max_softwires = 2;
        let mut t = Softwires::new(&d, T0);
        let a = t.resolve(b4(2), T0).unwrap();
        t.resolve(b4(3), T0).unwrap();
        assert_eq!(t.resolve(b4(4), T0), Err(DropReason::SoftwireTableFull));
        t.forget_if_idle(a);
        assert_eq!(t.len(), 1);
        assert_eq!(t.find(b4(2)), None);
        assert_eq!(t.resolve(b4(4), T0), Ok(a), "the freed id is reused");
        assert_eq!(t.iter().count(), 2);
    }

    #[test]
    fn isc_aftr_default_quotas_per_protocol() {
        let mut t = Softwires::new(&section(), T0);
        let a = t.resolve(b4(2), T0).unwrap();
        let other = t.resolve(b4(3), T0).unwrap();
        for (proto, quota) in [
            (Protocol::Tcp, 2000),
            (Protocol::Udp, 200),
            (Protocol::Icmp, 50),
        ] {
            // Sessions the outside opens are not rate limited: fill the quota with them.
            for _ in 0..quota {
                t.admit(a, proto, T0, false).unwrap();
            }
            assert_eq!(
                t.admit(a, proto, T0, false),
                Err(DropReason::SoftwireSessionLimit),
                "{proto}"
            );
            assert_eq!(t.admit(other, proto, T0, false), Ok(()), "per softwire");
            t.release(a, proto);
            assert_eq!(t.admit(a, proto, T0, false), Ok(()), "room again");
        }
    }

    #[test]
    fn isc_aftr_default_rates_per_protocol() {
        let mut t = Softwires::new(&section(), T0);
        let a = t.resolve(b4(2), T0).unwrap();
        for (proto, rate) in [
            (Protocol::Tcp, 50),
            (Protocol::Udp, 20),
            (Protocol::Icmp, 5),
        ] {
            for _ in 0..rate {
                t.admit(a, proto, T0, true).unwrap();
            }
            assert_eq!(
                t.admit(a, proto, T0, true),
                Err(DropReason::SoftwireRateLimit),
                "{proto}: a second's worth, no more"
            );
        }
        // A fifth of a second later: a fifth of each rate again.
        let later = Instant::from_millis(200);
        for (proto, n) in [(Protocol::Tcp, 10), (Protocol::Udp, 4), (Protocol::Icmp, 1)] {
            for _ in 0..n {
                t.admit(a, proto, later, true).unwrap();
            }
            assert_eq!(
                t.admit(a, proto, later, true),
                Err(DropReason::SoftwireRateLimit),
                "{proto}"
            );
        }
    }

    #[test]
    fn the_last_session_takes_an_automatic_softwire_with_it() {
        let mut d = section();
        d.softwires = vec![SoftwireSpec {
            b4: b4(9),
            mtu: None,
            limits: None,
        }];
        let mut t = Softwires::new(&d, T0);
        let auto = t.resolve(b4(2), T0).unwrap();
        let conf = t.find(b4(9)).unwrap();
        for id in [auto, conf] {
            t.admit(id, Protocol::Udp, T0, true).unwrap();
            t.release(id, Protocol::Udp);
        }
        assert_eq!(t.find(b4(2)), None);
        assert_eq!(t.find(b4(9)), Some(conf), "configured softwires stay");
    }

    #[test]
    fn packet_too_big_lowers_the_mtu_within_bounds() {
        let mut t = Softwires::new(&section(), T0);
        let a = t.resolve(b4(2), T0).unwrap();
        assert_eq!(t.lower_mtu(b4(2), 1500), Some(1460));
        assert_eq!(t.lower_mtu(b4(2), 9000), Some(1460), "never raised");
        assert_eq!(
            t.lower_mtu(b4(2), 600),
            Some(MIN_SOFTWIRE_MTU),
            "not below 1240"
        );
        assert_eq!(t.endpoint_of(SoftwireTag::of(a)).map(|e| e.1), Some(1240));
        assert_eq!(t.lower_mtu(b4(3), 1400), None);
    }

    #[test]
    fn inner_sources_are_the_private_prefixes() {
        let t = Softwires::new(&section(), T0);
        assert!(t.allows_inner_source(Ipv4Addr::new(192, 168, 1, 10)));
        assert!(t.allows_inner_source(Ipv4Addr::new(192, 0, 0, 2)));
        assert!(!t.allows_inner_source(Ipv4Addr::new(203, 0, 113, 7)));
    }

    #[test]
    fn an_idle_softwire_costs_at_most_128_bytes() {
        let per = Softwires::memory_for(1);
        assert!(per <= 128, "{per} bytes per softwire");
        let t = Softwires::new(&section(), T0);
        let per = t.memory_bytes() / section().max_softwires as usize;
        assert!(per <= 128, "{per} bytes per softwire, as reserved");
    }
}
