//! [`DeterministicAllocator`]: deterministic NAT (RFC 7422). Each subscriber's external address
//! and port range are a formula of its internal address ([`DeterministicMap`]), so the question
//! "who used this address and port" is answered by computation, and nothing is logged per
//! session; only the optional overflow to port blocks is logged.

use super::block::{BLOCK_PORTS, BlockAllocator, BlockSettings, FIRST_BLOCK_PORT, random_in};
use super::hold::{Held, HoldQueue};
use super::ports::{Parity, PortSet};
use super::share::Share;
use super::{AddressUsage, AllocError, AllocEvent, AllocRequest, PortAllocator};
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
}

impl PortAllocator for DeterministicAllocator {
    fn allocate(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        let i = self
            .map
            .inside
            .offset_of(req.internal.addr)
            .ok_or(AllocError::UnknownSubscriber)?;
        if !self.settings.share.owns(i) {
            return Err(AllocError::OtherShare);
        }
        let parity = if self.settings.port_parity && req.proto != Protocol::Icmp {
            Parity::of(req.internal.port)
        } else {
            Parity::Any
        };
        if let Some((a, port)) = self.take_in_range(i, req.proto, parity, rng) {
            let live = self.live.entry(i).or_insert(0);
            if *live == 0
                && let Some(s) = self.subscribers.get_mut(a as usize)
            {
                *s += 1;
            }
            *live += 1;
            let addr = self.map.outside.nth(a).ok_or(AllocError::Exhausted)?;
            return Ok(Endpoint::new(addr, port));
        }
        match self.overflow.as_mut() {
            Some(o) => o.allocate(req, rng),
            None => Err(AllocError::SubscriberPortLimit),
        }
    }

    fn release(&mut self, proto: Protocol, internal: Endpoint, external: Endpoint, now: Instant) {
        self.expire(now);
        if let Some(o) = self.overflow.as_mut()
            && o.owns(external.addr)
        {
            o.release(proto, internal, external, now);
            return;
        }
        // Only the subscriber the formula gives the port to can release it.
        let Some(i) = self.map.subscriber_of(external.addr, external.port) else {
            return;
        };
        if self.map.inside.offset_of(internal.addr) != Some(i) {
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
