//! [`DeterministicAllocator`]: deterministic NAT (RFC 7422). Each subscriber's external address
//! and port range are a formula of its internal address ([`DeterministicMap`]), so the question
//! "who used this address and port" is answered by computation, and nothing is logged per
//! session; only the optional overflow to port blocks is logged.

use super::HeldPort;
use super::SubscriberId;
use super::block::{BLOCK_PORTS, BlockAllocator, BlockSettings, FIRST_BLOCK_PORT, random_in};
use super::hold::{Held, HoldQueue};
use super::ports::{Parity, PortSet};
use super::reserved::Reserved;
use super::share::Share;
use super::{
    AddressUsage, AllocError, AllocEvent, AllocRequest, PortAllocator, PortRange, PortSetKind,
    PortSetUsage,
};
use crate::config::{Config, DeterministicSpec, Ipv4Prefix};
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use core::fmt;
use core::ops::RangeInclusive;
use core::time::Duration;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The RFC 7422 formula from an inside prefix to an outside prefix.
///
/// With `H = 2^(32 - inside length)` inside addresses (every address of the prefix is a
/// subscriber) and `A = 2^(32 - outside length)` outside addresses:
///
/// - subscribers per outside address `S = ceil(H / A)`;
/// - ports per subscriber `P = floor(64512 / S)`, or a configured smaller size; ports 0-1023
///   are never used (RFC 7422 section 2 excludes the well-known ports);
/// - subscriber `i` (the offset of its address in the inside prefix) gets outside address
///   `outside_base + floor(i / S)` and ports `1024 + (i mod S) * P ..= 1024 + (i mod S) * P + P - 1`;
/// - the reverse: for outside address `outside_base + a` and port `p >= 1024` with
///   `k = floor((p - 1024) / P) < S`, the subscriber is `inside_base + a * S + k` (if that is
///   below `H`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeterministicMap {
    inside: Ipv4Prefix,
    outside: Ipv4Prefix,
    per_address: u32,
    ports: u16,
}

impl DeterministicMap {
    /// The map of `inside` onto `outside` with `ports` per subscriber (`None`: as many as fit).
    /// `None` if the prefixes leave no port per subscriber or `ports` is zero or too large.
    pub fn new(inside: Ipv4Prefix, outside: Ipv4Prefix, ports: Option<u16>) -> Option<Self> {
        let per_address = inside.size().div_ceil(outside.size());
        let most = u64::from(BLOCK_PORTS) / per_address;
        let ports = ports.map_or(most, u64::from);
        if ports == 0 || ports > most {
            return None;
        }
        Some(DeterministicMap {
            inside,
            outside,
            per_address: u32::try_from(per_address).ok()?,
            ports: u16::try_from(ports).ok()?,
        })
    }

    /// The map a validated config section describes.
    pub fn from_spec(spec: &DeterministicSpec) -> Option<Self> {
        DeterministicMap::new(spec.inside, spec.outside, spec.ports_per_subscriber)
    }

    /// The inside prefix.
    pub fn inside(&self) -> Ipv4Prefix {
        self.inside
    }

    /// The outside prefix.
    pub fn outside(&self) -> Ipv4Prefix {
        self.outside
    }

    /// Subscribers per outside address, `S`.
    pub fn subscribers_per_address(&self) -> u32 {
        self.per_address
    }

    /// Ports per subscriber, `P`.
    pub fn ports_per_subscriber(&self) -> u16 {
        self.ports
    }

    /// Subscriber `i`'s outside address offset and first port.
    fn place(&self, i: u32) -> (u32, u16) {
        let a = i / self.per_address;
        let k = i % self.per_address;
        // k < S and S * P <= 64512, so the range ends at or below 65535.
        let first = u32::from(FIRST_BLOCK_PORT) + k * u32::from(self.ports);
        (a, u16::try_from(first).unwrap_or(u16::MAX))
    }

    /// The external address and port range of `internal`, if it is in the inside prefix.
    pub fn forward(&self, internal: Ipv4Addr) -> Option<(Ipv4Addr, RangeInclusive<u16>)> {
        let i = self.inside.offset_of(internal)?;
        let (a, first) = self.place(i);
        let last = first.checked_add(self.ports - 1)?;
        Some((self.outside.nth(a)?, first..=last))
    }

    /// The offset in the inside prefix of the subscriber that `external:port` belongs to.
    fn subscriber_of(&self, external: Ipv4Addr, port: u16) -> Option<u32> {
        let a = self.outside.offset_of(external)?;
        let k = u32::from(port.checked_sub(FIRST_BLOCK_PORT)? / self.ports);
        if k >= self.per_address {
            return None;
        }
        let i = a.checked_mul(self.per_address)?.checked_add(k)?;
        self.inside.nth(i).map(|_| i)
    }

    /// The internal address that `external:port` belongs to: computed, no state (RFC 7422
    /// section 2). `None` for ports below 1024, ports past the last range, or addresses outside
    /// the outside prefix.
    pub fn reverse(&self, external: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
        self.inside.nth(self.subscriber_of(external, port)?)
    }

    /// Which of `count` workers owns `internal`'s traffic (see [`Share`]): subscriber `i` belongs
    /// to worker `i % count`.
    pub fn worker_of_internal(&self, internal: Ipv4Addr, count: u16) -> Option<u16> {
        Some(Share::worker_of(count, self.inside.offset_of(internal)?))
    }

    /// Which of `count` workers owns the return traffic to `external:port`: that of the
    /// subscriber the port belongs to.
    pub fn worker_of_external(&self, external: Ipv4Addr, port: u16, count: u16) -> Option<u16> {
        Some(Share::worker_of(count, self.subscriber_of(external, port)?))
    }
}

/// The behaviour of a [`DeterministicAllocator`] inside each subscriber's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeterministicSettings {
    /// Keep the parity of the internal port (RFC 4787 REQ-4). Not applied to ICMP identifiers.
    pub port_parity: bool,
    /// How long a released port stays unusable (RFC 6888 REQ-8: 120 s); zero reuses at once.
    pub hold_down: Duration,
    /// Most ports in hold-down at once (RFC 6888 REQ-8's cap); past it the oldest is freed early.
    pub max_held_down: usize,
    /// The subscribers this allocator serves: offset `i` when `i % count == index`.
    pub share: Share,
}

impl DeterministicSettings {
    /// The settings a validated config asks for, for the whole subscriber space.
    pub fn from_config(cfg: &Config) -> Self {
        let b = &cfg.behavior;
        DeterministicSettings {
            port_parity: b.port_parity,
            hold_down: Duration::from_secs(u64::from(b.timers.port_hold_down)),
            max_held_down: usize::try_from(cfg.limits.max_ports_in_hold_down).unwrap_or(usize::MAX),
            share: Share::WHOLE,
        }
    }
}

/// Deterministic NAT (RFC 7422): each subscriber takes ports only from its computed range, at a
/// random start inside it then the next free one (RFC 6056 algorithm 1 within the range),
/// keeping parity when configured; released ports wait out the hold-down (RFC 6888 REQ-8). Every
/// protocol uses the same range. A request for an internal port below 1024 gets a port of the
/// range too (well-known ports are excluded from every range).
///
/// When a range is full for a protocol, an optional [`BlockAllocator`] over separate addresses
/// takes over; its blocks are reported through [`PortAllocator::poll_event`] for the log. Without
/// it, a full range is the subscriber's port limit ([`AllocError::SubscriberPortLimit`], RFC 6888
/// REQ-4).
///
/// Memory: 48 KiB per outside address, made when its first subscriber allocates; a hash entry
/// per subscriber with live ports; 16 bytes per held-down port.
pub struct DeterministicAllocator {
    map: DeterministicMap,
    settings: DeterministicSettings,
    /// Port maps per outside address offset, indexed by [`Protocol::index`]; `None` until used.
    ports: Vec<Option<Box<[PortSet; 3]>>>,
    /// Subscribers with live ports, per outside address offset.
    subscribers: Vec<u32>,
    /// Live ports per subscriber offset, for subscribers that have any.
    live: HashMap<u32, u32>,
    held: HoldQueue,
    overflow: Option<BlockAllocator>,
    /// Ports static rules and virtual servers hold.
    reserved: Reserved,
}

impl fmt::Debug for DeterministicAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeterministicAllocator")
            .field("map", &self.map)
            .field("settings", &self.settings)
            .field("live_subscribers", &self.live.len())
            .field("overflow", &self.overflow)
            .finish_non_exhaustive()
    }
}

impl DeterministicAllocator {
    /// An allocator for `map`, with `overflow` for subscribers whose range is full. The overflow
    /// allocator's addresses must not be in the outside prefix (config validation makes sure).
    pub fn new(
        map: DeterministicMap,
        settings: DeterministicSettings,
        overflow: Option<BlockAllocator>,
    ) -> Self {
        let n = usize::try_from(map.outside.size()).unwrap_or(usize::MAX);
        let ports = usize::try_from(map.inside.size())
            .unwrap_or(usize::MAX)
            .saturating_mul(3 * usize::from(map.ports));
        DeterministicAllocator {
            map,
            ports: (0..n).map(|_| None).collect(),
            subscribers: vec![0; n],
            live: HashMap::new(),
            held: HoldQueue::new(settings.hold_down, settings.max_held_down, ports),
            settings,
            overflow,
            reserved: Reserved::default(),
        }
    }

    /// The allocator a validated config's deterministic section describes, for `share`: the
    /// overflow blocks (if any) go on the pool addresses outside the outside prefix. `None` if
    /// the section does not describe a map (validation refuses that).
    pub fn from_config(cfg: &Config, spec: &DeterministicSpec, share: Share) -> Option<Self> {
        let map = DeterministicMap::from_spec(spec)?;
        let mut settings = DeterministicSettings::from_config(cfg);
        settings.share = share;
        let overflow = spec.overflow.map(|o| {
            let extra: Vec<Ipv4Addr> = cfg
                .pool
                .iter()
                .copied()
                .filter(|a| !spec.outside.contains(*a))
                .collect();
            let mut s = BlockSettings::from_config(cfg, &o);
            s.share = share;
            BlockAllocator::new(&extra, s)
        });
        Some(DeterministicAllocator::new(map, settings, overflow))
    }

    /// The formula.
    pub fn map(&self) -> &DeterministicMap {
        &self.map
    }

    /// The overflow allocator, if any.
    pub fn overflow(&self) -> Option<&BlockAllocator> {
        self.overflow.as_ref()
    }

    /// See [`DeterministicMap::forward`].
    pub fn forward(&self, internal: Ipv4Addr) -> Option<(Ipv4Addr, RangeInclusive<u16>)> {
        self.map.forward(internal)
    }

    /// See [`DeterministicMap::reverse`].
    pub fn reverse(&self, external: Ipv4Addr, port: u16) -> Option<Ipv4Addr> {
        self.map.reverse(external, port)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((h, _)) = self.held.pop_expired(now) {
            self.free_held(h);
        }
    }

    fn free_held(&mut self, h: Held) {
        if let Some(Some(p)) = self.ports.get_mut(h.address as usize) {
            p[h.proto.index()].free_held(h.port);
        }
    }

    /// Takes a port of subscriber `i`'s range, if one is free.
    fn take_in_range(
        &mut self,
        i: u32,
        proto: Protocol,
        parity: Parity,
        rng: &mut Rng,
    ) -> Option<(u32, u16)> {
        let (a, first) = self.map.place(i);
        let last = first.checked_add(self.map.ports - 1)?;
        let slot = self.ports.get_mut(a as usize)?;
        let ports = &mut slot
            .get_or_insert_with(|| Box::new([PortSet::new(), PortSet::new(), PortSet::new()]))
            [proto.index()];
        let port = ports.find_free(random_in(rng, first, last), first, last, parity)?;
        ports.take(port).then_some((a, port))
    }

    /// Bytes the allocator holds, by the structures' own sizes: the port maps of every outside
    /// address in use (made with its first subscriber), the per-address and per-subscriber
    /// counts, the hold-down queue, and the overflow allocator if any. Nothing is kept per
    /// session, and per subscriber only a count while it has live ports.
    pub fn memory_bytes(&self) -> usize {
        use core::mem::size_of;
        let port_maps: usize = self
            .ports
            .iter()
            .flatten()
            .map(|p| size_of::<[PortSet; 3]>() + p.iter().map(PortSet::heap_bytes).sum::<usize>())
            .sum();
        self.ports.capacity() * size_of::<Option<Box<[PortSet; 3]>>>()
            + port_maps
            + self.subscribers.capacity() * size_of::<u32>()
            + super::map_bytes(&self.live)
            + self.held.memory_bytes()
            + self
                .overflow
                .as_ref()
                .map_or(0, BlockAllocator::memory_bytes)
    }
}

impl DeterministicAllocator {
    /// The offset of `req`'s subscriber in the inside prefix, if the formula covers it and it
    /// is this allocator's share's.
    fn subscriber_offset(&self, req: &AllocRequest) -> Result<u32, AllocError> {
        // The formula is over inside IPv4 addresses (RFC 7422); a softwire has none of its own.
        let SubscriberId::Ipv4(internal) = req.subscriber else {
            return Err(AllocError::UnknownSubscriber);
        };
        let i = self
            .map
            .inside
            .offset_of(internal)
            .ok_or(AllocError::UnknownSubscriber)?;
        if !self.settings.share.owns(i) {
            return Err(AllocError::OtherShare);
        }
        Ok(i)
    }

    /// Picks and takes an endpoint for `req`, reserved or not ([`Reserved`] filters).
    fn pick(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        let i = self.subscriber_offset(req)?;
        let parity = if self.settings.port_parity && req.proto != Protocol::Icmp {
            Parity::of(req.internal.port)
        } else {
            Parity::Any
        };
        if let Some((a, port)) = self.take_in_range(i, req.proto, parity, rng) {
            return self.count_live(i, a, port);
        }
        match self.overflow.as_mut() {
            Some(o) => o.allocate(req, rng),
            None => Err(AllocError::SubscriberPortLimit),
        }
    }

    /// Counts a port subscriber `i` took on outside address offset `a`.
    fn count_live(&mut self, i: u32, a: u32, port: u16) -> Result<Endpoint, AllocError> {
        let live = self.live.entry(i).or_insert(0);
        if *live == 0
            && let Some(s) = self.subscribers.get_mut(a as usize)
        {
            *s += 1;
        }
        *live += 1;
        let addr = self.map.outside.nth(a).ok_or(AllocError::Exhausted)?;
        Ok(Endpoint::new(addr, port))
    }
}

impl PortAllocator for DeterministicAllocator {
    fn held_down(&self) -> Vec<HeldPort> {
        let mut held: Vec<HeldPort> = self
            .held
            .iter()
            .filter_map(|h| {
                let addr = self.map.outside.nth(h.address)?;
                Some(HeldPort {
                    proto: h.proto,
                    external: Endpoint::new(addr, h.port),
                    released_at: h.released_at,
                    subscriber: self.map.reverse(addr, h.port),
                })
            })
            .collect();
        if let Some(o) = &self.overflow {
            held.extend(o.held_down());
            held.sort_by_key(|h| h.released_at);
        }
        held
    }

    /// The port must be in the subscriber's own range (RFC 7422: the formula gives every port
    /// to one subscriber), or in an overflow block the overflow allocator would give it.
    fn allocate_at(&mut self, req: &AllocRequest, want: Endpoint) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        if let Some(o) = self.overflow.as_mut()
            && o.owns(want.addr)
        {
            return o.allocate_at(req, want);
        }
        let i = self.subscriber_offset(req)?;
        if self.map.subscriber_of(want.addr, want.port) != Some(i)
            || self.reserved.contains(req.proto, want)
        {
            return Err(AllocError::Unavailable);
        }
        let (a, _) = self.map.place(i);
        let slot = self
            .ports
            .get_mut(a as usize)
            .ok_or(AllocError::Unavailable)?;
        let ports = &mut slot
            .get_or_insert_with(|| Box::new([PortSet::new(), PortSet::new(), PortSet::new()]))
            [req.proto.index()];
        if !ports.take(want.port) {
            return Err(AllocError::Unavailable);
        }
        self.count_live(i, a, want.port)
    }

    fn allocate(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        if self.reserved.is_empty() {
            return self.pick(req, rng);
        }
        let mut reserved = core::mem::take(&mut self.reserved);
        let e = reserved.allocate(req, rng, |req, rng| self.pick(req, rng));
        self.reserved = reserved;
        e
    }

    fn set_reserved(&mut self, list: &[(Ipv4Addr, Protocol, PortRange)], now: Instant) {
        let mut reserved = core::mem::take(&mut self.reserved);
        let freed = reserved.set(list, |a| self.owns(a));
        self.reserved = reserved;
        for p in freed {
            self.release(p.proto, p.subscriber, p.external, now);
        }
        if let Some(o) = self.overflow.as_mut() {
            o.set_reserved(list, now);
        }
    }

    fn release(
        &mut self,
        proto: Protocol,
        subscriber: SubscriberId,
        external: Endpoint,
        now: Instant,
    ) {
        self.expire(now);
        if let Some(o) = self.overflow.as_mut()
            && o.owns(external.addr)
        {
            o.release(proto, subscriber, external, now);
            return;
        }
        // Only the subscriber the formula gives the port to can release it.
        let Some(i) = self.map.subscriber_of(external.addr, external.port) else {
            return;
        };
        let SubscriberId::Ipv4(internal) = subscriber else {
            return;
        };
        if self.map.inside.offset_of(internal) != Some(i) {
            return;
        }
        let (a, _) = self.map.place(i);
        let hold = self.held.enabled();
        let Some(Some(p)) = self.ports.get_mut(a as usize) else {
            return;
        };
        let ports = &mut p[proto.index()];
        let released = if hold {
            ports.hold(external.port)
        } else {
            ports.free_in_use(external.port)
        };
        if !released {
            return;
        }
        if let Some(live) = self.live.get_mut(&i) {
            *live -= 1;
            if *live == 0 {
                self.live.remove(&i);
                if let Some(s) = self.subscribers.get_mut(a as usize) {
                    *s = s.saturating_sub(1);
                }
            }
        }
        if hold
            && let Some(h) = self.held.push(Held {
                released_at: now,
                address: a,
                port: external.port,
                proto,
            })
        {
            self.free_held(h);
        }
    }

    fn paired_address(&self, subscriber: Ipv4Addr) -> Option<Ipv4Addr> {
        self.map.forward(subscriber).map(|(addr, _)| addr)
    }

    fn owns(&self, addr: Ipv4Addr) -> bool {
        self.map.outside.contains(addr) || self.overflow.as_ref().is_some_and(|o| o.owns(addr))
    }

    fn usage(&self) -> Vec<AddressUsage> {
        let mut v: Vec<AddressUsage> = self
            .ports
            .iter()
            .zip(&self.subscribers)
            .enumerate()
            .filter_map(|(a, (p, s))| {
                let addr = self.map.outside.nth(u32::try_from(a).ok()?)?;
                Some(AddressUsage {
                    addr,
                    in_use: p
                        .as_ref()
                        .map_or([0; 3], |p| p.each_ref().map(PortSet::in_use)),
                    held_down: p
                        .as_ref()
                        .map_or([0; 3], |p| p.each_ref().map(PortSet::held_down)),
                    subscribers: *s,
                })
            })
            .collect();
        if let Some(o) = &self.overflow {
            v.extend(o.usage());
        }
        v
    }

    fn port_sets(&self) -> Vec<PortSetUsage> {
        let per = u64::from(self.map.per_address);
        let hosts = self.map.inside.size();
        let share = self.settings.share;
        let mut v: Vec<PortSetUsage> = self
            .subscribers
            .iter()
            .enumerate()
            .filter_map(|(a, live)| {
                let a = u32::try_from(a).ok()?;
                let addr = self.map.outside.nth(a)?;
                // The formula puts subscribers a * S .. (a + 1) * S on address a; the last
                // address may have fewer, and this allocator serves only its share of them.
                let first = u64::from(a) * per;
                let end = (first + per).min(hosts);
                let ranges = share.owned_below(end) - share.owned_below(first.min(end));
                let ranges = u32::try_from(ranges).unwrap_or(u32::MAX);
                Some(PortSetUsage {
                    addr,
                    kind: PortSetKind::DeterministicRange,
                    size: self.map.ports,
                    in_use: *live,
                    held_down: 0,
                    free: ranges.saturating_sub(*live),
                })
            })
            .collect();
        if let Some(o) = &self.overflow {
            v.extend(o.port_sets());
        }
        v
    }

    fn poll_event(&mut self) -> Option<AllocEvent> {
        self.overflow.as_mut()?.poll_event()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        if let Some(o) = self.overflow.as_mut() {
            o.handle_timeout(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::{PortBlock, SubscriberId};
    use crate::config::PortBlockSpec;
    use std::collections::HashSet;

    fn prefix(s: &str) -> Ipv4Prefix {
        s.parse().expect("prefix")
    }

    fn map(inside: &str, outside: &str, ports: Option<u16>) -> DeterministicMap {
        DeterministicMap::new(prefix(inside), prefix(outside), ports).expect("fits")
    }

    fn settings() -> DeterministicSettings {
        DeterministicSettings {
            port_parity: false,
            hold_down: Duration::from_secs(120),
            max_held_down: 1 << 20,
            share: Share::WHOLE,
        }
    }

    fn req(proto: Protocol, internal: Ipv4Addr, port: u16, now: Instant) -> AllocRequest {
        AllocRequest {
            proto,
            internal: Endpoint::new(internal, port),
            subscriber: SubscriberId::of(Endpoint::new(internal, port)),
            now,
        }
    }

    fn host(n: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(0x6440_0000 + n)
    }

    #[test]
    fn rfc7422_forward_and_reverse_for_every_host_of_a_prefix() {
        let m = map("100.64.0.0/24", "198.51.100.0/28", None);
        assert_eq!(m.subscribers_per_address(), 16);
        assert_eq!(
            m.ports_per_subscriber(),
            4032,
            "floor(64512 / ceil(256 / 16))"
        );
        // Each outside address: which ports some subscriber has.
        let mut taken = vec![vec![false; 65536]; 16];
        for h in 0..256u32 {
            let internal = host(h);
            let (x, range) = m.forward(internal).expect("in the prefix");
            assert_eq!(x, Ipv4Addr::from_bits(0xC633_6400 + h / 16));
            assert_eq!(*range.start(), 1024 + (h % 16) as u16 * 4032);
            assert_eq!(range.len(), 4032);
            assert!(*range.start() >= 1024, "well-known ports excluded");
            for p in range {
                let slot = &mut taken[(h / 16) as usize][usize::from(p)];
                assert!(!*slot, "{x}:{p} in two ranges");
                *slot = true;
                assert_eq!(m.reverse(x, p), Some(internal), "{x}:{p}");
            }
        }
        // Every port 1024-65535 of every outside address is some subscriber's (16 * 4032 =
        // 64512), and no port below 1024 is anybody's.
        for (a, ports) in taken.iter().enumerate() {
            let x = Ipv4Addr::from_bits(0xC633_6400 + a as u32);
            for p in 0..1024u16 {
                assert!(!ports[usize::from(p)]);
                assert_eq!(m.reverse(x, p), None);
            }
            assert!(ports[1024..].iter().all(|t| *t));
        }
        assert_eq!(m.forward(Ipv4Addr::new(100, 64, 1, 0)), None);
        assert_eq!(m.reverse(Ipv4Addr::new(198, 51, 100, 16), 5000), None);
    }

    #[test]
    fn rfc7422_formula_with_a_configured_size_and_uneven_prefixes() {
        // A /22 (1024 hosts) on a /30 (4 addresses): 256 per address, 252 ports each.
        let m = map("10.0.0.0/22", "203.0.113.4/30", None);
        assert_eq!(
            (m.subscribers_per_address(), m.ports_per_subscriber()),
            (256, 252)
        );
        let m = map("10.0.0.0/22", "203.0.113.4/30", Some(200));
        let (x, r) = m.forward(Ipv4Addr::new(10, 0, 3, 255)).expect("last host");
        assert_eq!(x, Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(r, 1024 + 255 * 200..=1024 + 256 * 200 - 1);
        // Ports past the last range belong to nobody.
        assert_eq!(m.reverse(x, 1024 + 256 * 200), None);
        assert_eq!(m.reverse(x, 65535), None);
        // More outside addresses than needed: S = 1, a whole address per subscriber, and the
        // addresses past the last subscriber map to nobody.
        let m = map("10.0.0.0/30", "203.0.113.0/29", None);
        assert_eq!(
            (m.subscribers_per_address(), m.ports_per_subscriber()),
            (1, 64512)
        );
        assert_eq!(
            m.reverse(Ipv4Addr::new(203, 0, 113, 3), 1024),
            Some(Ipv4Addr::new(10, 0, 0, 3))
        );
        assert_eq!(m.reverse(Ipv4Addr::new(203, 0, 113, 4), 1024), None);
        // What does not fit.
        assert!(
            DeterministicMap::new(prefix("10.0.0.0/8"), prefix("203.0.113.0/32"), None).is_none()
        );
        assert!(
            DeterministicMap::new(prefix("10.0.0.0/24"), prefix("203.0.113.0/32"), Some(253))
                .is_none()
        );
        assert!(
            DeterministicMap::new(prefix("10.0.0.0/24"), prefix("203.0.113.0/32"), Some(0))
                .is_none()
        );
    }

    #[test]
    fn rfc7422_allocation_stays_in_the_range_and_logs_nothing() {
        let m = map("100.64.0.0/24", "198.51.100.0/28", Some(64));
        let mut a = DeterministicAllocator::new(m, settings(), None);
        let mut rng = Rng::new(1);
        let me = host(37);
        let (x, range) = m.forward(me).expect("in");
        for proto in Protocol::ALL {
            let mut got = HashSet::new();
            for i in 0..64u16 {
                let e = a
                    .allocate(&req(proto, me, i, Instant::ZERO), &mut rng)
                    .expect("in range");
                assert_eq!(e.addr, x);
                assert!(range.contains(&e.port));
                assert!(got.insert(e.port));
            }
            assert_eq!(
                a.allocate(&req(proto, me, 99, Instant::ZERO), &mut rng),
                Err(AllocError::SubscriberPortLimit),
                "the range is the limit (RFC 6888 REQ-4)"
            );
        }
        assert_eq!(a.poll_event(), None, "no per-session or per-range records");
        let u = a.usage();
        assert_eq!(u.len(), 16);
        let mine = u.iter().find(|u| u.addr == x).expect("listed");
        assert_eq!((mine.in_use, mine.subscribers), ([64, 64, 64], 1));
        assert!(a.owns(x) && !a.owns(Ipv4Addr::new(198, 51, 100, 16)));
        assert_eq!(
            a.allocate(
                &req(Protocol::Udp, Ipv4Addr::new(10, 0, 0, 1), 1, Instant::ZERO),
                &mut rng
            ),
            Err(AllocError::UnknownSubscriber)
        );
    }

    /// A suggested endpoint is a free port of the subscriber's own range (RFC 7422: the formula
    /// gives each port to one subscriber).
    #[test]
    fn allocate_at_takes_only_ports_of_the_subscribers_range() {
        let m = map("100.64.0.0/24", "198.51.100.0/28", Some(64));
        let mut a = DeterministicAllocator::new(m, settings(), None);
        let me = host(37);
        let (x, range) = m.forward(me).expect("in");
        let mine = Endpoint::new(x, *range.start() + 3);
        let udp = |who, port| req(Protocol::Udp, who, port, Instant::ZERO);
        assert_eq!(a.allocate_at(&udp(me, 5000), mine), Ok(mine));
        assert_eq!(
            a.usage()
                .iter()
                .find(|u| u.addr == x)
                .map(|u| u.subscribers),
            Some(1)
        );
        let unavailable = Err(AllocError::Unavailable);
        assert_eq!(a.allocate_at(&udp(me, 5001), mine), unavailable, "taken");
        assert_eq!(
            a.allocate_at(&udp(host(38), 5000), mine),
            unavailable,
            "another's range"
        );
        let beyond = Endpoint::new(x, *range.end() + 1);
        assert_eq!(
            a.allocate_at(&udp(me, 5001), beyond),
            unavailable,
            "outside the range"
        );
        assert_eq!(
            a.allocate_at(&udp(Ipv4Addr::new(10, 0, 0, 1), 1), mine),
            Err(AllocError::UnknownSubscriber)
        );
        a.release(Protocol::Udp, SubscriberId::Ipv4(me), mine, Instant::ZERO);
        let later = req(Protocol::Udp, me, 5000, Instant::from_secs(121));
        assert_eq!(a.allocate_at(&later, mine), Ok(mine), "after its hold-down");
    }

    /// What `ctl pools` shows for deterministic NAT: per address, the ranges the formula puts
    /// there (this share's), those of subscribers with a port in use, and the range size.
    #[test]
    fn port_sets_are_the_formulas_ranges_per_address() {
        let m = map("100.64.0.0/24", "198.51.100.0/28", Some(64));
        let mut a = DeterministicAllocator::new(m, settings(), None);
        let mut rng = Rng::new(1);
        let sets = a.port_sets();
        assert_eq!(sets.len(), 16);
        assert!(sets.iter().all(|s| {
            (s.kind, s.size, s.in_use, s.held_down, s.free)
                == (PortSetKind::DeterministicRange, 64, 0, 0, 16)
        }));
        let (x, _) = m.forward(host(37)).expect("in");
        a.allocate(&req(Protocol::Udp, host(37), 1, Instant::ZERO), &mut rng)
            .expect("in range");
        a.allocate(&req(Protocol::Tcp, host(37), 1, Instant::ZERO), &mut rng)
            .expect("in range");
        let mine = a
            .port_sets()
            .into_iter()
            .find(|s| s.addr == x)
            .expect("listed");
        assert_eq!((mine.in_use, mine.free), (1, 15));

        // 16 subscribers on 64 addresses: one each on the first 16, none on the rest; three
        // workers' shares add up to that.
        let m = map("100.64.0.0/28", "198.51.100.0/26", None);
        let mut ranges = [0u32; 64];
        for i in 0..3 {
            let mut s = settings();
            s.share = Share::new(i, 3).expect("share");
            for (n, set) in DeterministicAllocator::new(m, s, None)
                .port_sets()
                .iter()
                .enumerate()
            {
                ranges[n] += set.free;
            }
        }
        assert!(ranges[..16].iter().all(|r| *r == 1), "{ranges:?}");
        assert!(ranges[16..].iter().all(|r| *r == 0), "{ranges:?}");
    }

    #[test]
    fn rfc6888_req8_hold_down_inside_the_range() {
        let m = map("100.64.0.0/24", "198.51.100.0/28", Some(2));
        let mut s = settings();
        s.port_parity = true;
        let mut a = DeterministicAllocator::new(m, s, None);
        let mut rng = Rng::new(2);
        let me = Endpoint::new(host(5), 40);
        let even = a
            .allocate(&req(Protocol::Tcp, me.addr, 40, Instant::ZERO), &mut rng)
            .expect("ok");
        assert_eq!(even.port % 2, 0);
        a.release(
            Protocol::Tcp,
            SubscriberId::of(me),
            even,
            Instant::from_secs(1),
        );
        // A stranger cannot release what is not theirs.
        a.release(
            Protocol::Tcp,
            SubscriberId::of(Endpoint::new(host(6), 40)),
            even,
            Instant::from_secs(1),
        );
        assert_eq!(a.usage().iter().map(|u| u.held_down[1]).sum::<u32>(), 1);
        let at = |ms| req(Protocol::Tcp, me.addr, 42, Instant::from_millis(ms));
        assert_eq!(
            a.allocate(&at(120_999), &mut rng),
            Err(AllocError::SubscriberPortLimit)
        );
        assert_eq!(a.allocate(&at(121_000), &mut rng), Ok(even));
    }

    #[test]
    fn rfc7422_overflow_goes_to_logged_blocks() {
        let inside = prefix("100.64.0.0/24");
        let outside = prefix("198.51.100.0/28");
        let extra = Ipv4Addr::new(203, 0, 113, 1);
        let mut pool: Vec<Ipv4Addr> = (0..16)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i))
            .collect();
        pool.push(extra);
        let mut cfg = Config::new(pool, Ipv4Addr::new(100, 64, 255, 1));
        let spec = DeterministicSpec {
            inside,
            outside,
            ports_per_subscriber: Some(4),
            overflow: Some(PortBlockSpec {
                block_size: 64,
                max_blocks_per_subscriber: 1,
            }),
        };
        cfg.allocation = crate::config::Allocation::Deterministic(spec);
        let cfg = cfg.validate().expect("valid");
        let mut a =
            DeterministicAllocator::from_config(cfg.get(), &spec, Share::WHOLE).expect("map");
        let mut rng = Rng::new(3);
        let me = host(200);
        for i in 0..4 {
            let e = a
                .allocate(&req(Protocol::Udp, me, i, Instant::ZERO), &mut rng)
                .expect("ok");
            assert!(outside.contains(e.addr));
        }
        assert_eq!(a.poll_event(), None);
        let over = a
            .allocate(&req(Protocol::Udp, me, 9, Instant::ZERO), &mut rng)
            .expect("overflow");
        assert_eq!(over.addr, extra);
        let Some(AllocEvent::BlockAllocated(PortBlock {
            subscriber,
            external,
            ports,
            ..
        })) = a.poll_event()
        else {
            panic!("the overflow block is logged");
        };
        assert_eq!((subscriber, external), (SubscriberId::Ipv4(me), extra));
        assert!(ports.contains(over.port));
        assert!(a.owns(extra));
        assert_eq!(a.usage().len(), 17);
        // Releasing the overflow port returns its block after the hold-down.
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 9)),
            over,
            Instant::ZERO,
        );
        a.handle_timeout(Instant::from_secs(120));
        assert!(
            matches!(a.poll_event(), Some(AllocEvent::BlockReleased(b)) if b.at == Instant::from_secs(120))
        );
        assert_eq!(a.map().ports_per_subscriber(), 4);
        assert!(a.overflow().is_some());
    }

    #[test]
    fn shares_split_subscribers_and_steering_agrees() {
        let m = map("100.64.0.0/24", "198.51.100.0/28", None);
        let count = 4;
        let mut allocs: Vec<DeterministicAllocator> = (0..count)
            .map(|i| {
                let mut s = settings();
                s.share = Share::new(i, count).expect("valid");
                DeterministicAllocator::new(m, s, None)
            })
            .collect();
        let mut rng = Rng::new(4);
        for h in 0..256 {
            let internal = host(h);
            let w = m.worker_of_internal(internal, count).expect("in");
            for (i, a) in allocs.iter_mut().enumerate() {
                let r = a.allocate(&req(Protocol::Udp, internal, 7, Instant::ZERO), &mut rng);
                if i == usize::from(w) {
                    let e = r.expect("its own worker");
                    assert_eq!(m.worker_of_external(e.addr, e.port, count), Some(w));
                    assert_eq!(a.reverse(e.addr, e.port), Some(internal));
                } else {
                    assert_eq!(r, Err(AllocError::OtherShare));
                }
            }
        }
        assert_eq!(
            allocs[0].forward(host(0)).map(|f| f.0),
            Some(Ipv4Addr::new(198, 51, 100, 0))
        );
    }

    /// Rough timings for the report; run with
    /// `cargo test --release -p natgate-core --lib alloc::deterministic::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check; run in release"]
    #[allow(clippy::print_stderr)]
    fn timing() {
        use std::collections::VecDeque;
        use std::time::Instant as Clock;
        // A /18 of subscribers (16384) on a /26 (64 addresses): 256 per address, 252 ports each.
        let m = map("100.64.0.0/18", "198.51.100.0/26", None);
        let mut a = DeterministicAllocator::new(m, settings(), None);
        let mut rng = Rng::new(99);
        let subs = 16_384u32;
        let mut live = VecDeque::new();
        let mut now = Instant::ZERO;
        for i in 0..subs * 8 {
            let r = req(Protocol::Udp, host(i % subs), (i / subs) as u16 + 2000, now);
            live.push_back((r.internal, a.allocate(&r, &mut rng).expect("ok")));
        }
        let n = 2_000_000u32;
        let t0 = Clock::now();
        for i in 0..n {
            now = now + Duration::from_micros(50);
            let r = req(
                Protocol::Udp,
                host(i % subs),
                (i % 60_000) as u16 + 1024,
                now,
            );
            let e = a.allocate(&r, &mut rng).expect("ok");
            let (internal, old) = live.pop_front().expect("live");
            a.release(Protocol::Udp, SubscriberId::of(internal), old, now);
            live.push_back((r.internal, e));
        }
        let pair = t0.elapsed().as_nanos() / u128::from(n);
        eprintln!("deterministic /18 on /26, 131k live: {pair} ns per allocate + release");
        let t0 = Clock::now();
        let k = 10_000_000u32;
        let mut sum = 0u64;
        for i in 0..k {
            let x = Ipv4Addr::from_bits(0xC633_6400 + (i % 64));
            if let Some(h) = a.reverse(x, 1024 + (i % 64512) as u16) {
                sum += u64::from(h.to_bits());
            }
        }
        let rev = t0.elapsed().as_nanos() / u128::from(k);
        eprintln!("reverse look-up: {rev} ns ({sum})");
    }
}
