//! [`DynamicAllocator`]: any free port of the pool, chosen per RFC 4787 section 4, RFC 6056,
//! RFC 6888 and RFC 7857, with no per-subscriber reservation.
//!
//! State per (external address, protocol) is a [`PortSet`] bitmap; released ports wait in one FIFO
//! for their hold-down (RFC 6888 REQ-8) and leave it lazily, on the next `allocate` or `release`,
//! so the allocator needs no timer of its own.

use super::HeldPort;
use super::pool_choice::{Extreme, PoolChoice};
use super::pool_index::PoolIndex;
use super::ports::{Parity, PortSet};
use super::reserved::Reserved;
use super::{AddressUsage, AllocError, AllocRequest, PortAllocator, PortRange};
use crate::alloc::SubscriberId;
use crate::config::{Config, Pooling, PortAssignment};
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use core::fmt;
use core::hash::{BuildHasherDefault, Hasher};
use core::num::NonZeroU16;
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// The allocation behaviours, taken from the engine config by [`AllocSettings::from_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocSettings {
    /// How an external address is chosen for a subscriber (RFC 4787 REQ-2, RFC 6888 REQ-2).
    pub pooling: Pooling,
    /// How an external port is chosen (RFC 4787 section 4.2, RFC 6056, RFC 7857 section 3).
    pub port_assignment: PortAssignment,
    /// Under sequential assignment, the distance from the last port given out to where the
    /// next search starts.
    pub sequential_step: NonZeroU16,
    /// Keep the parity of the internal port (RFC 4787 REQ-4). Not applied to ICMP identifiers.
    pub port_parity: bool,
    /// Keep internal ports 0-1023 on external 1-1023 and the rest on 1024-65535 (RFC 4787
    /// REQ-3a). When off, every TCP/UDP mapping gets a port in 1024-65535. Not applied to ICMP.
    pub port_range_preservation: bool,
    /// How long a released port stays unusable (RFC 6888 REQ-8: 120 s); zero reuses at once.
    pub hold_down: Duration,
    /// Most ports in hold-down at once, over the whole pool (RFC 6888 REQ-8's cap). A release past
    /// the cap frees the oldest held port early: the port that has already waited longest is the
    /// one whose reuse is least likely to confuse a remote peer, and refusing the release instead
    /// would leak the port for good.
    pub max_held_down: usize,
}

impl AllocSettings {
    /// The settings a validated engine config asks for.
    pub fn from_config(cfg: &Config) -> Self {
        let b = &cfg.behavior;
        AllocSettings {
            pooling: b.pooling,
            port_assignment: b.port_assignment,
            sequential_step: b.sequential_step,
            port_parity: b.port_parity,
            port_range_preservation: b.port_range_preservation,
            hold_down: Duration::from_secs(u64::from(b.timers.port_hold_down)),
            max_held_down: usize::try_from(cfg.limits.max_ports_in_hold_down).unwrap_or(usize::MAX),
        }
    }

    /// The ports (identifiers) `proto` may get for an internal port, and their parity.
    ///
    /// TCP and UDP never get port 0, which no valid flow uses. ICMP query identifiers have no
    /// well-known range and no pairing convention (RFC 5508 section 3.1 only asks that they be
    /// mapped endpoint-independently), so they take any of the 65536 values, 0 included.
    fn constraints(&self, proto: Protocol, internal_port: u16) -> (u16, u16, Parity) {
        match proto {
            Protocol::Icmp => (0, u16::MAX, Parity::Any),
            Protocol::Tcp | Protocol::Udp => {
                let (lo, hi) = if self.port_range_preservation && internal_port < 1024 {
                    (1, 1023)
                } else {
                    (1024, u16::MAX)
                };
                let parity = if self.port_parity {
                    Parity::of(internal_port)
                } else {
                    Parity::Any
                };
                (lo, hi, parity)
            }
        }
    }
}

/// One external address of the pool.
struct Address {
    addr: Ipv4Addr,
    /// Port state, indexed by [`Protocol::index`].
    ports: [PortSet; 3],
    /// Sequential assignment: where the next search starts, per protocol and per port range (low
    /// 1-1023, high 1024-65535; ICMP uses the first), so one range does not reset the other.
    next: [[u16; 2]; 3],
    /// Internal addresses with at least one live mapping here.
    subscribers: u32,
    /// Random-start assignment, per protocol: the random bits of the next two searches'
    /// starts (RFC 6056 algorithm 1), drawn ahead (`None` before the first search). A search
    /// uses the first, moves the second up and draws a new second, whose bitmap word it starts
    /// loading; the first's word, loaded at the search before, is by then in cache, so the
    /// search can also tell which port the next one will most likely hand out (see
    /// [`DynamicAllocator::likely`]). A bitmap word is a random access into 48 KiB per address
    /// that no cache keeps for a big pool, as is the inbound index entry of a new external
    /// endpoint: drawn ahead, their misses overlap other work instead of stalling a creation.
    draws: [Option<[u32; 2]>; 3],
}

/// A released port waiting out its hold-down.
struct Held {
    released_at: Instant,
    /// Index into `DynamicAllocator::addresses`; pool indexes fit in `u32` (see `PoolIndex`).
    address: u32,
    port: u16,
    proto: Protocol,
}

/// Paired pooling: the external address of a subscriber, kept while it has live mappings.
struct Subscriber {
    paired: usize,
    /// Live mappings of this subscriber, on any address (soft-paired fallbacks included), so the
    /// pairing holds as long as the subscriber has any mapping at all.
    live: u32,
}

/// A multiply-xorshift hasher for the allocator's `u64` keys, several times cheaper than SipHash on
/// the mapping-creation path. Keys are internal addresses, which subscribers cannot choose freely
/// (the access network or the softwire fixes them), so flooding resistance buys nothing here; the
/// fixed function also keeps runs reproducible (RFC 4787 REQ-11).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // Fold the well-mixed high half into the low bits the table indexes with.
        self.0 = h ^ (h >> 32);
    }
}

type KeyMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// The key of a subscriber's live-mapping count on one external address.
fn link_key(subscriber: SubscriberId, address: usize) -> u64 {
    // The subscriber's 33-bit key, and 31 bits of address index (pools are far smaller).
    (subscriber.key() << 31) | (address as u64 & 0x7fff_ffff)
}

/// The value in `lo..=hi` (`lo <= hi`) that 32 random bits `r` pick, as [`Rng::below`] scales
/// them: uniform for uniform `r`.
fn scale_into(r: u32, lo: u16, hi: u16) -> u16 {
    let offset = (u64::from(r) * (u64::from(hi - lo) + 1)) >> 32;
    lo.saturating_add(u16::try_from(offset).unwrap_or(0))
}

/// The classic dynamic NAPT allocator: any free port of any eligible pool address.
///
/// It does not store which internal endpoint owns each port (that is the mapping table's job), so
/// `release` trusts the caller that `internal` is the mapping's; it only checks that the port is
/// in use and that the subscriber has a live mapping on that address. `usage` counts ports in
/// hold-down as of the last `allocate` or `release`, which is when they leave it.
///
/// Memory: 48 KiB per pool address (two 65536-bit maps per protocol) and 8 bytes (at most 16)
/// for the choice of a new subscriber's address, plus 16 bytes per held-down port and a hash
/// entry per subscriber and per (subscriber, address) pair with live mappings.
pub struct DynamicAllocator {
    settings: AllocSettings,
    index: PoolIndex,
    addresses: Vec<Address>,
    /// Released ports in release order; `released_at` is non-decreasing as long as `now` is.
    held: VecDeque<Held>,
    /// Paired and soft-paired pooling: each subscriber's address, keyed by internal address.
    subscribers: KeyMap<Subscriber>,
    /// Live mappings per (internal address, external address), for `AddressUsage::subscribers`
    /// and to refuse releases that do not belong to the subscriber.
    links: KeyMap<u32>,
    /// Ports per protocol that [`DynamicAllocator::withhold_ports`] took out of use on every
    /// address; `usage` does not count them.
    withheld: [u32; 3],
    /// The TCP and UDP ports searches run over ([`DynamicAllocator::limit_ports`]): all of them
    /// unless the driver shares the address with the host's own sockets.
    ports: PortRange,
    /// Ports static rules and virtual servers hold.
    reserved: Reserved,
    /// The reserved ports `set_reserved` took out of use: (address index, protocol, port).
    /// `usage` does not count them.
    reserved_taken: Vec<(u32, Protocol, u16)>,
    /// Each address's subscribers, kept equal to `Address::subscribers` wherever it changes, so
    /// that `least_loaded` is O(log n).
    load: PoolChoice,
    /// What [`PortAllocator::likely_next`] answers: the port the next random search on the
    /// address and protocol of the last one will most likely find.
    likely: Option<(Protocol, Endpoint)>,
}

impl fmt::Debug for DynamicAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicAllocator")
            .field("settings", &self.settings)
            .field("addresses", &self.addresses.len())
            .field("held_down", &self.held.len())
            .field("paired_subscribers", &self.subscribers.len())
            .finish_non_exhaustive()
    }
}

impl DynamicAllocator {
    /// An allocator over `pool` with every port free. A repeated address counts once; an empty
    /// pool makes every allocation fail with [`AllocError::Exhausted`] (config validation refuses
    /// both before they get here).
    pub fn new(pool: &[Ipv4Addr], settings: AllocSettings) -> Self {
        let (index, distinct) = PoolIndex::new(pool);
        let addresses: Vec<Address> = distinct
            .into_iter()
            .map(|addr| Address {
                addr,
                ports: [PortSet::new(), PortSet::new(), PortSet::new()],
                next: [[0; 2]; 3],
                subscribers: 0,
                draws: [None; 3],
            })
            .collect();
        let load = PoolChoice::new(Extreme::Fewest, addresses.iter().map(|a| a.subscribers));
        // Reserve the hold-down queue once, up to the number of ports that can ever be held, so
        // that releases do not allocate; a reservation that fails just leaves it growing lazily.
        let mut held = VecDeque::new();
        let ports = addresses.len().saturating_mul(3 << 16);
        let _ = held.try_reserve(settings.max_held_down.min(ports));
        DynamicAllocator {
            settings,
            index,
            addresses,
            held,
            subscribers: KeyMap::default(),
            links: KeyMap::default(),
            withheld: [0; 3],
            ports: PortRange {
                first: 0,
                last: u16::MAX,
            },
            reserved: Reserved::default(),
            reserved_taken: Vec::new(),
            load,
            likely: None,
        }
    }

    /// Takes every port (ICMP identifier) for which `keep(proto, port)` is false out of use on
    /// every address: it is never handed out and not counted by `usage`. For a driver that gives
    /// each core a share of the ports, or leaves some to the host's own sockets. Call before the
    /// first allocation; costs one pass over 3 x 65536 ports per address.
    pub fn withhold_ports(&mut self, keep: impl Fn(Protocol, u16) -> bool) {
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            let p = proto.index();
            let mut count = 0;
            for port in 0..=u16::MAX {
                if keep(proto, port) {
                    continue;
                }
                for a in &mut self.addresses {
                    a.ports[p].take(port);
                }
                count += 1;
            }
            self.withheld[p] += count;
        }
    }

    /// Limits TCP and UDP ports to `range` on every address, for a driver that leaves the
    /// other ports to the host's own sockets (a home gateway on its outside address): the rest
    /// are withheld ([`Self::withhold_ports`]), and random searches start uniformly *inside*
    /// `range` (RFC 6056 algorithm 1 over the ports that can be had). Withholding alone is not
    /// enough: a start drawn over 1024-65535 that fell among withheld ports would walk to the
    /// first free port after them, so a third of a home gateway's mappings would get 20000,
    /// 20001, 20002... in order. The range meets REQ-3a's: where they do not overlap (every
    /// port below 1024 withheld) such a mapping searches `range` instead. Call before the first
    /// allocation.
    pub fn limit_ports(&mut self, range: PortRange) {
        self.withhold_ports(|proto, port| proto == Protocol::Icmp || range.contains(port));
        self.ports = range;
    }

    /// [`AllocSettings::constraints`] within [`Self::limit_ports`]'s range.
    fn constraints(&self, proto: Protocol, internal_port: u16) -> (u16, u16, Parity) {
        let (lo, hi, parity) = self.settings.constraints(proto, internal_port);
        if proto == Protocol::Icmp {
            return (lo, hi, parity);
        }
        let (first, last) = (self.ports.first.max(1), self.ports.last);
        let (l, h) = (lo.max(first), hi.min(last));
        if l <= h {
            (l, h, parity)
        } else {
            (first, last, parity)
        }
    }

    /// The settings this allocator was built with.
    pub fn settings(&self) -> &AllocSettings {
        &self.settings
    }

    /// Frees every held port whose hold-down has passed at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(h) = self.held.front() {
            if now < h.released_at + self.settings.hold_down {
                break;
            }
            self.free_oldest_held();
        }
    }

    fn free_oldest_held(&mut self) {
        if let Some(h) = self.held.pop_front()
            && let Some(a) = self.addresses.get_mut(h.address as usize)
        {
            a.ports[h.proto.index()].free_held(h.port);
        }
    }

    /// Takes the internal port itself on address `i`, if it is free and allowed. The internal
    /// port has its own parity, so REQ-4 holds; the range check is REQ-3a (and keeps TCP/UDP off
    /// port 0).
    fn take_preserved(&mut self, i: usize, req: &AllocRequest) -> Option<u16> {
        let (lo, hi, _) = self.constraints(req.proto, req.internal.port);
        let internal = req.internal.port;
        let ports = &mut self.addresses.get_mut(i)?.ports[req.proto.index()];
        ((lo..=hi).contains(&internal) && ports.take(internal)).then_some(internal)
    }

    /// Picks and takes a port on address `i` for `req`, if one is free.
    fn take_port(&mut self, i: usize, req: &AllocRequest, rng: &mut Rng) -> Option<u16> {
        let assignment = self.settings.port_assignment;
        let step = self.settings.sequential_step.get();
        // RFC 7857 section 3: keep the port; randomise only on collision.
        if assignment == PortAssignment::Preserve
            && let Some(port) = self.take_preserved(i, req)
        {
            return Some(port);
        }
        let (lo, hi, parity) = self.constraints(req.proto, req.internal.port);
        // Where the next search on this address starts if its internal port is not a
        // well-known one (the common case, so the one worth prefetching).
        let (next_lo, next_hi, _) = self.constraints(req.proto, u16::MAX);
        let a = self.addresses.get_mut(i)?;
        let p = req.proto.index();
        let ports = &mut a.ports[p];
        let port = match assignment {
            // RFC 6056 algorithm 1: a random start, then the next free port. The start's bits
            // were drawn ahead (see `Address::draws`).
            PortAssignment::Preserve | PortAssignment::Random => {
                let d = a.draws[p].get_or_insert_with(|| [rng.next_u32(), rng.next_u32()]);
                let r = d[0];
                *d = [d[1], rng.next_u32()];
                let [upcoming, later] = *d;
                ports.prefetch(scale_into(later, next_lo, next_hi));
                let port = ports.find_free(scale_into(r, lo, hi), lo, hi, parity)?;
                if !ports.take(port) {
                    return None;
                }
                // Parity is the next request's, unknown yet: under parity preservation the
                // guess is right about half the time, which costs only a wasted prefetch.
                // Only the start's own word is read (loaded since the search before): a start
                // in a full word makes no guess rather than a second walk.
                self.likely = ports
                    .free_in_start_word(
                        scale_into(upcoming, next_lo, next_hi),
                        next_hi,
                        Parity::Any,
                    )
                    .map(|port| (req.proto, Endpoint::new(a.addr, port)));
                return Some(port);
            }
            PortAssignment::Sequential => {
                let next = &mut a.next[p][usize::from(lo >= 1024)];
                let port = ports.find_free(*next, lo, hi, parity)?;
                *next = port.wrapping_add(step);
                port
            }
        };
        ports.take(port).then_some(port)
    }

    /// Takes a port on any address but `skip`, starting at a random one so that mappings spread
    /// over the pool. Under port preservation, an address where the internal port is free wins
    /// over a random port (RFC 4787 section 4.2.1: another address can keep the port).
    fn take_anywhere(
        &mut self,
        req: &AllocRequest,
        rng: &mut Rng,
        skip: Option<usize>,
    ) -> Result<(usize, u16), AllocError> {
        let n = self.addresses.len();
        let start = self.random_address(rng).ok_or(AllocError::Exhausted)?;
        if self.settings.port_assignment == PortAssignment::Preserve {
            for k in 0..n {
                let i = (start + k) % n;
                if Some(i) != skip
                    && let Some(port) = self.take_preserved(i, req)
                {
                    return Ok((i, port));
                }
            }
        }
        for k in 0..n {
            let i = (start + k) % n;
            if Some(i) == skip {
                continue;
            }
            if let Some(port) = self.take_port(i, req, rng) {
                return Ok((i, port));
            }
        }
        Err(AllocError::Exhausted)
    }

    /// A uniformly random address index, `None` for an empty pool.
    fn random_address(&self, rng: &mut Rng) -> Option<usize> {
        let n = u32::try_from(self.addresses.len()).ok()?;
        (n > 0).then(|| rng.below(n) as usize)
    }

    /// The address with the fewest subscribers, for a new subscriber (RFC 6888 REQ-2 wants them
    /// spread evenly): the first minimum in pool order from a random address on, so ties go to
    /// a random one of them. O(log n) in the pool.
    fn least_loaded(&self, rng: &mut Rng) -> Option<usize> {
        let start = self.random_address(rng)?;
        self.load.choose(start).map(|(i, _)| i)
    }

    /// Paired and soft-paired pooling (RFC 4787 REQ-2): the subscriber's address if it has one,
    /// otherwise the least loaded, which becomes its address. Counts the new mapping among the
    /// subscriber's live ones when it returns a port.
    fn take_paired(
        &mut self,
        req: &AllocRequest,
        rng: &mut Rng,
    ) -> Result<(usize, u16), AllocError> {
        let key = req.subscriber.key();
        let soft = self.settings.pooling == Pooling::SoftPaired;
        if let Some(s) = self.subscribers.get_mut(&key) {
            // The new mapping is counted before it is made, so that the common case looks the
            // subscriber up once; a failure takes it back.
            s.live = s.live.saturating_add(1);
            let paired = s.paired;
            let taken = match self.take_port(paired, req, rng) {
                Some(port) => Ok((paired, port)),
                None if soft => self.take_anywhere(req, rng, Some(paired)),
                None => Err(AllocError::PairedAddressFull),
            };
            if taken.is_err()
                && let Some(s) = self.subscribers.get_mut(&key)
            {
                s.live = s.live.saturating_sub(1);
            }
            return taken;
        }
        let first = self.least_loaded(rng).ok_or(AllocError::Exhausted)?;
        // A new subscriber is not paired yet: if the least loaded address is full for this
        // protocol, any other with a free port becomes its address, even under strict pairing.
        let (i, port) = match self.take_port(first, req, rng) {
            Some(port) => (first, port),
            None => self.take_anywhere(req, rng, Some(first))?,
        };
        self.subscribers
            .insert(key, Subscriber { paired: i, live: 1 });
        Ok((i, port))
    }

    /// Bytes the allocator holds, by the structures' own sizes: the port maps of every address,
    /// the choice of a new subscriber's address, the hold-down queue, and the pairing and
    /// per-address subscriber entries.
    pub fn memory_bytes(&self) -> usize {
        use core::mem::size_of;
        let port_maps: usize = self
            .addresses
            .iter()
            .flat_map(|a| a.ports.iter())
            .map(PortSet::heap_bytes)
            .sum();
        self.addresses.capacity() * size_of::<Address>()
            + port_maps
            + self.index.memory_bytes()
            + self.load.memory_bytes()
            + self.held.capacity() * size_of::<Held>()
            + super::map_bytes(&self.subscribers)
            + super::map_bytes(&self.links)
    }
}

impl DynamicAllocator {
    /// Picks and takes an endpoint for `req`, reserved or not ([`Reserved`] filters).
    fn pick(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        self.likely = None;
        let (i, port) = if self.settings.pooling != Pooling::Arbitrary {
            self.take_paired(req, rng)?
        } else {
            self.take_anywhere(req, rng, None)?
        };
        self.link(i, req.subscriber, port)
    }

    /// Counts a new mapping of `subscriber` on address `i` (whose `port` it took): the link
    /// that makes it one of the address's subscribers while it has live mappings there.
    fn link(
        &mut self,
        i: usize,
        subscriber: SubscriberId,
        port: u16,
    ) -> Result<Endpoint, AllocError> {
        let a = self.addresses.get_mut(i).ok_or(AllocError::Exhausted)?;
        let live = self.links.entry(link_key(subscriber, i)).or_insert(0);
        if *live == 0 {
            a.subscribers += 1;
            self.load.set(i, a.subscribers);
        }
        *live = live.saturating_add(1);
        Ok(Endpoint::new(a.addr, port))
    }
}

impl PortAllocator for DynamicAllocator {
    /// The port must be in the range `allocate` would search for this internal port (the
    /// well-known or the ephemeral range, RFC 4787 REQ-3a; the NAT's range on a home gateway);
    /// parity is the requester's choice. Under paired pooling the address must be the
    /// subscriber's (any, for a subscriber without mappings); under soft pairing any address.
    fn allocate_at(&mut self, req: &AllocRequest, want: Endpoint) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        let i = self.index.get(want.addr).ok_or(AllocError::Unavailable)?;
        let (lo, hi, _) = self.constraints(req.proto, req.internal.port);
        if !(lo..=hi).contains(&want.port) || self.reserved.contains(req.proto, want) {
            return Err(AllocError::Unavailable);
        }
        let key = req.subscriber.key();
        let paired = self.settings.pooling != Pooling::Arbitrary;
        if paired
            && self.settings.pooling == Pooling::Paired
            && self.subscribers.get(&key).is_some_and(|s| s.paired != i)
        {
            return Err(AllocError::PairedAddressFull);
        }
        let ports = &mut self
            .addresses
            .get_mut(i)
            .ok_or(AllocError::Unavailable)?
            .ports;
        if !ports[req.proto.index()].take(want.port) {
            return Err(AllocError::Unavailable);
        }
        if paired {
            self.subscribers
                .entry(key)
                .and_modify(|s| s.live = s.live.saturating_add(1))
                .or_insert(Subscriber { paired: i, live: 1 });
        }
        self.link(i, req.subscriber, want.port)
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

    /// Reserved ports that are free are taken out of use at once, as `withhold_ports` does, so
    /// the search never meets them (a subscriber paired to an address with many reserved
    /// ports is not sent round them); ports in use now keep their mapping and are caught by
    /// the allocation-time check if they come back. The ports the previous list took go back.
    fn set_reserved(&mut self, list: &[(Ipv4Addr, Protocol, PortRange)], now: Instant) {
        for (i, proto, port) in self.reserved_taken.drain(..) {
            if let Some(a) = self.addresses.get_mut(i as usize) {
                a.ports[proto.index()].free_in_use(port);
            }
        }
        for &(addr, proto, r) in list {
            let Some(i) = self.index.get(addr) else {
                continue;
            };
            let Some(a) = self.addresses.get_mut(i) else {
                continue;
            };
            for port in r.first..=r.last {
                if a.ports[proto.index()].take(port) {
                    self.reserved_taken.push((i as u32, proto, port));
                }
            }
        }
        let mut reserved = core::mem::take(&mut self.reserved);
        let freed = reserved.set(list, |a| self.owns(a));
        self.reserved = reserved;
        for p in freed {
            self.release(p.proto, p.subscriber, p.external, now);
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
        let Some(i) = self.index.get(external.addr) else {
            return;
        };
        let key = link_key(subscriber, i);
        // Only a subscriber with a live mapping on that address can give a port of it back.
        let (Some(live), Some(a)) = (self.links.get_mut(&key), self.addresses.get_mut(i)) else {
            return;
        };
        let ports = &mut a.ports[proto.index()];
        let hold = !self.settings.hold_down.is_zero() && self.settings.max_held_down > 0;
        let released = if hold {
            ports.hold(external.port)
        } else {
            ports.free_in_use(external.port)
        };
        if !released {
            // Not in use: released twice, or never allocated.
            return;
        }
        *live -= 1;
        if *live == 0 {
            self.links.remove(&key);
            a.subscribers -= 1;
            self.load.set(i, a.subscribers);
        }
        let sub = subscriber.key();
        if let Some(s) = self.subscribers.get_mut(&sub) {
            s.live = s.live.saturating_sub(1);
            if s.live == 0 {
                // No live mapping left: the pairing ends, and the next mapping is placed afresh.
                self.subscribers.remove(&sub);
            }
        }
        if hold {
            self.held.push_back(Held {
                released_at: now,
                address: i as u32,
                port: external.port,
                proto,
            });
            if self.held.len() > self.settings.max_held_down {
                self.free_oldest_held();
            }
        }
    }

    fn likely_next(&self) -> Option<(Protocol, Endpoint)> {
        self.likely
    }

    fn held_down(&self) -> Vec<HeldPort> {
        self.held
            .iter()
            .filter_map(|h| {
                Some(HeldPort {
                    proto: h.proto,
                    external: Endpoint::new(self.addresses.get(h.address as usize)?.addr, h.port),
                    released_at: h.released_at,
                    subscriber: None,
                })
            })
            .collect()
    }

    /// Inlined: the batch path asks this of every packet before its look-up.
    #[inline]
    fn paired_address(&self, subscriber: Ipv4Addr) -> Option<Ipv4Addr> {
        let s = self.subscribers.get(&u64::from(subscriber.to_bits()))?;
        self.addresses.get(s.paired).map(|a| a.addr)
    }

    fn owns(&self, addr: Ipv4Addr) -> bool {
        self.index.get(addr).is_some()
    }

    fn usage(&self) -> Vec<AddressUsage> {
        let mut reserved = vec![[0u32; 3]; self.addresses.len()];
        for &(i, proto, _) in &self.reserved_taken {
            if let Some(r) = reserved.get_mut(i as usize) {
                r[proto.index()] += 1;
            }
        }
        self.addresses
            .iter()
            .zip(reserved)
            .map(|(a, r)| AddressUsage {
                addr: a.addr,
                in_use: [0, 1, 2].map(|p| {
                    a.ports[p]
                        .in_use()
                        .saturating_sub(self.withheld[p])
                        .saturating_sub(r[p])
                }),
                held_down: a.ports.each_ref().map(PortSet::held_down),
                subscribers: a.subscribers,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{
        Just, Strategy, any, prop_assert, prop_assert_eq, prop_assert_ne, prop_oneof, proptest,
    };
    use std::collections::HashSet;

    const X1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const X2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const X3: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
    const X4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 4);

    fn settings(pooling: Pooling, port_assignment: PortAssignment) -> AllocSettings {
        AllocSettings {
            pooling,
            port_assignment,
            sequential_step: NonZeroU16::MIN,
            port_parity: false,
            port_range_preservation: true,
            hold_down: Duration::from_secs(120),
            max_held_down: 1 << 20,
        }
    }

    fn subscriber(n: u32) -> Ipv4Addr {
        Ipv4Addr::from_bits(0x6440_0000 + n)
    }

    fn req(proto: Protocol, internal: Ipv4Addr, port: u16, now: Instant) -> AllocRequest {
        AllocRequest {
            proto,
            internal: Endpoint::new(internal, port),
            subscriber: SubscriberId::of(Endpoint::new(internal, port)),
            now,
        }
    }

    fn udp(internal: Ipv4Addr, port: u16) -> AllocRequest {
        req(Protocol::Udp, internal, port, Instant::ZERO)
    }

    fn usage_of(a: &DynamicAllocator, addr: Ipv4Addr) -> AddressUsage {
        a.usage()
            .into_iter()
            .find(|u| u.addr == addr)
            .expect("address in pool")
    }

    /// A suggested endpoint (PCP, NAT-PMP) is given when it is free, in range, not reserved and
    /// on the subscriber's address; it is then in use and released like any other.
    #[test]
    fn allocate_at_gives_a_free_endpoint_of_the_subscribers_address() {
        let mut a =
            DynamicAllocator::new(&[X1, X2], settings(Pooling::Paired, PortAssignment::Random));
        let s = subscriber(1);
        let want = Endpoint::new(X1, 40000);
        assert_eq!(a.allocate_at(&udp(s, 5000), want), Ok(want));
        assert_eq!(a.paired_address(s), Some(X1));
        assert_eq!(usage_of(&a, X1).in_use[Protocol::Udp.index()], 1);
        assert_eq!(usage_of(&a, X1).subscribers, 1);
        let unavailable = Err(AllocError::Unavailable);
        assert_eq!(
            a.allocate_at(&udp(subscriber(2), 5000), want),
            unavailable,
            "taken"
        );
        assert_eq!(
            a.allocate_at(&udp(s, 5001), Endpoint::new(X2, 40001)),
            Err(AllocError::PairedAddressFull),
            "RFC 4787 REQ-2"
        );
        assert_eq!(
            a.allocate_at(&udp(s, 5001), Endpoint::new(X1, 80)),
            unavailable,
            "REQ-3a"
        );
        let elsewhere = Endpoint::new(Ipv4Addr::new(192, 0, 2, 9), 40001);
        assert_eq!(
            a.allocate_at(&udp(s, 5001), elsewhere),
            unavailable,
            "not ours"
        );
        let range = PortRange {
            first: 41000,
            last: 41000,
        };
        a.set_reserved(&[(X1, Protocol::Udp, range)], Instant::ZERO);
        assert_eq!(
            a.allocate_at(&udp(s, 5001), Endpoint::new(X1, 41000)),
            unavailable,
            "reserved"
        );
        a.release(Protocol::Udp, SubscriberId::Ipv4(s), want, Instant::ZERO);
        assert_eq!(a.paired_address(s), None);
        assert_eq!(
            a.allocate_at(&udp(subscriber(2), 5000), want),
            unavailable,
            "held down"
        );
        let later = req(Protocol::Udp, subscriber(2), 5000, Instant::from_secs(121));
        assert_eq!(a.allocate_at(&later, want), Ok(want));
    }

    #[test]
    fn rfc4787_req2_paired_pooling_same_address() {
        let mut a = DynamicAllocator::new(
            &[X1, X2, X3, X4],
            settings(Pooling::Paired, PortAssignment::Random),
        );
        let mut rng = Rng::new(1);
        for s in 0..50 {
            let first = a.allocate(&udp(subscriber(s), 1000), &mut rng).expect("ok");
            for (i, proto) in Protocol::ALL.iter().cycle().take(30).enumerate() {
                let r = req(*proto, subscriber(s), 2000 + i as u16, Instant::ZERO);
                let e = a.allocate(&r, &mut rng).expect("ok");
                assert_eq!(e.addr, first.addr, "subscriber {s} stays on one address");
            }
        }
    }

    #[test]
    fn rfc4787_req2_pairing_sticks_while_a_mapping_lives() {
        let mut a = DynamicAllocator::new(
            &[X1, X2, X3, X4],
            settings(Pooling::Paired, PortAssignment::Random),
        );
        let mut rng = Rng::new(2);
        let s = subscriber(1);
        let e1 = a.allocate(&udp(s, 1000), &mut rng).expect("ok");
        let e2 = a.allocate(&udp(s, 1001), &mut rng).expect("ok");
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(s, 1000)),
            e1,
            Instant::ZERO,
        );
        // Other subscribers arrive and load the other addresses; s keeps its address.
        for n in 2..20 {
            a.allocate(&udp(subscriber(n), 1000), &mut rng).expect("ok");
        }
        let e3 = a.allocate(&udp(s, 1002), &mut rng).expect("ok");
        assert_eq!(e3.addr, e2.addr);
        assert_eq!(
            usage_of(&a, e2.addr).subscribers,
            5,
            "19 subscribers on 4 addresses"
        );
    }

    #[test]
    fn rfc6888_req2_new_subscribers_spread_evenly() {
        for pooling in [Pooling::Paired, Pooling::SoftPaired] {
            let mut a =
                DynamicAllocator::new(&[X1, X2, X3, X4], settings(pooling, PortAssignment::Random));
            let mut rng = Rng::new(3);
            for n in 0..400 {
                a.allocate(&udp(subscriber(n), 5000), &mut rng).expect("ok");
            }
            for u in a.usage() {
                assert_eq!(u.subscribers, 100, "{pooling:?} {u:?}");
                assert_eq!(u.in_use, [0, 0, 100]);
            }
        }
    }

    #[test]
    fn rfc6888_req2_ties_are_broken_at_random() {
        let mut firsts = HashSet::new();
        for seed in 0..64 {
            let mut a = DynamicAllocator::new(
                &[X1, X2, X3, X4],
                settings(Pooling::Paired, PortAssignment::Random),
            );
            let e = a.allocate(&udp(subscriber(0), 5000), &mut Rng::new(seed));
            firsts.insert(e.expect("ok").addr);
        }
        assert_eq!(
            firsts.len(),
            4,
            "the first subscriber may land on any address"
        );
    }

    #[test]
    fn rfc6888_req2_new_subscribers_fill_the_address_others_left() {
        // Several seeds: the first newcomer's tie-break must not be what sends it to X1.
        for seed in 0..8 {
            let mut a = DynamicAllocator::new(
                &[X1, X2, X3, X4],
                settings(Pooling::Paired, PortAssignment::Random),
            );
            let mut rng = Rng::new(seed);
            let mut on_x1 = Vec::new();
            for n in 0..40 {
                let e = a.allocate(&udp(subscriber(n), 5000), &mut rng).expect("ok");
                if e.addr == X1 {
                    on_x1.push((Endpoint::new(subscriber(n), 5000), e));
                }
            }
            // X1's ten subscribers leave: the next ten new ones all go there, the least loaded.
            for (internal, e) in on_x1 {
                a.release(Protocol::Udp, SubscriberId::of(internal), e, Instant::ZERO);
            }
            assert_eq!(usage_of(&a, X1).subscribers, 0);
            for n in 40..50 {
                let e = a.allocate(&udp(subscriber(n), 5000), &mut rng).expect("ok");
                assert_eq!(e.addr, X1, "seed {seed}, subscriber {n}");
            }
            for u in a.usage() {
                assert_eq!(u.subscribers, 10, "seed {seed}: {u:?}");
            }
        }
    }

    #[test]
    fn rfc4787_req3a_range_preservation() {
        let mut a = DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Random));
        let mut rng = Rng::new(4);
        for i in 0..1000u16 {
            let low = a
                .allocate(&udp(subscriber(0), i % 1024), &mut rng)
                .expect("ok");
            assert!((1..=1023).contains(&low.port), "{low}");
            let high = a
                .allocate(&udp(subscriber(0), 1024 + i), &mut rng)
                .expect("ok");
            assert!(high.port >= 1024, "{high}");
        }
        // Preserve keeps a free low port, and never port 0.
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        assert_eq!(
            a.allocate(&udp(subscriber(0), 53), &mut rng)
                .expect("ok")
                .port,
            53
        );
        let zero = a.allocate(&udp(subscriber(0), 0), &mut rng).expect("ok");
        assert!((1..=1023).contains(&zero.port), "{zero}");
    }

    #[test]
    fn rfc4787_req3a_off_gives_every_port_1024_up() {
        let mut s = settings(Pooling::Paired, PortAssignment::Preserve);
        s.port_range_preservation = false;
        let mut a = DynamicAllocator::new(&[X1], s);
        let mut rng = Rng::new(5);
        for p in [0u16, 1, 53, 80, 1023] {
            let e = a.allocate(&udp(subscriber(0), p), &mut rng).expect("ok");
            assert!(e.port >= 1024, "{p} -> {e}");
        }
        assert_eq!(
            a.allocate(&udp(subscriber(0), 1024), &mut rng)
                .expect("ok")
                .port,
            1024
        );
    }

    #[test]
    fn rfc4787_req4_parity_preserved() {
        for assignment in [
            PortAssignment::Random,
            PortAssignment::Sequential,
            PortAssignment::Preserve,
        ] {
            let mut s = settings(Pooling::Arbitrary, assignment);
            s.port_parity = true;
            let mut a = DynamicAllocator::new(&[X1, X2], s);
            let mut rng = Rng::new(6);
            for i in 0..3000u16 {
                // Internal ports repeat, so Preserve collides and has to pick at random; one in
                // four is a low port (511 even and 512 odd low ports per address).
                let internal = if i % 4 == 0 { i % 300 } else { 1024 + i % 700 };
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    let r = req(proto, subscriber(u32::from(i)), internal, Instant::ZERO);
                    let e = a.allocate(&r, &mut rng).expect("ok");
                    assert_eq!(e.port % 2, internal % 2, "{assignment:?} {internal} -> {e}");
                }
            }
        }
    }

    #[test]
    fn rfc4787_req3_no_port_overloading_per_protocol() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        let mut rng = Rng::new(7);
        let mut seen = [HashSet::new(), HashSet::new(), HashSet::new()];
        for i in 0..5000u16 {
            for proto in Protocol::ALL {
                let r = req(
                    proto,
                    subscriber(u32::from(i % 7)),
                    4000 + i % 100,
                    Instant::ZERO,
                );
                let e = a.allocate(&r, &mut rng).expect("ok");
                assert!(
                    seen[proto.index()].insert(e),
                    "{proto} {e} handed out twice"
                );
            }
        }
        // Protocols have separate port spaces: the same number serves TCP and UDP.
        let t = a.allocate(
            &req(Protocol::Tcp, subscriber(9), 7777, Instant::ZERO),
            &mut rng,
        );
        let u = a.allocate(
            &req(Protocol::Udp, subscriber(9), 7777, Instant::ZERO),
            &mut rng,
        );
        assert_eq!((t.expect("ok").port, u.expect("ok").port), (7777, 7777));
    }

    /// Fills every TCP port 1024-65535 of one address for one subscriber.
    fn fill_high_ports(a: &mut DynamicAllocator, rng: &mut Rng) -> Vec<Endpoint> {
        (0..64512u32)
            .map(|i| {
                let r = req(
                    Protocol::Tcp,
                    subscriber(0),
                    1024 + (i % 64512) as u16,
                    Instant::ZERO,
                );
                a.allocate(&r, rng).expect("port free")
            })
            .collect()
    }

    #[test]
    fn rfc6888_req8_port_held_down_120s() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Arbitrary, PortAssignment::Random));
        let mut rng = Rng::new(8);
        let all = fill_high_ports(&mut a, &mut rng);
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), 64512, "every high port, once");
        let victim = all[1234];
        let released = Instant::from_secs(10);
        a.release(
            Protocol::Tcp,
            SubscriberId::of(Endpoint::new(subscriber(0), 4242)),
            victim,
            released,
        );
        assert_eq!(usage_of(&a, X1).held_down, [0, 1, 0]);
        let at = |ms| {
            req(
                Protocol::Tcp,
                subscriber(1),
                5000,
                released + Duration::from_millis(ms),
            )
        };
        assert_eq!(a.allocate(&at(0), &mut rng), Err(AllocError::Exhausted));
        assert_eq!(
            a.allocate(&at(119_999), &mut rng),
            Err(AllocError::Exhausted)
        );
        assert_eq!(a.allocate(&at(120_000), &mut rng), Ok(victim));
        assert_eq!(usage_of(&a, X1).held_down, [0, 0, 0]);
    }

    #[test]
    fn rfc6888_req8_preserved_port_not_reused_during_hold_down() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        let mut rng = Rng::new(9);
        let e = a.allocate(&udp(subscriber(0), 5000), &mut rng).expect("ok");
        assert_eq!(e, Endpoint::new(X1, 5000));
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(subscriber(0), 5000)),
            e,
            Instant::ZERO,
        );
        let r = |ms| req(Protocol::Udp, subscriber(1), 5000, Instant::from_millis(ms));
        let during = a.allocate(&r(119_999), &mut rng).expect("ok");
        assert_ne!(during.port, 5000, "held port is a collision: randomised");
        assert_eq!(a.allocate(&r(120_000), &mut rng).expect("ok").port, 5000);
    }

    #[test]
    fn hold_down_cap_frees_the_oldest() {
        let mut s = settings(Pooling::Paired, PortAssignment::Preserve);
        s.max_held_down = 2;
        let mut a = DynamicAllocator::new(&[X1], s);
        let mut rng = Rng::new(10);
        let me = subscriber(0);
        for (t, p) in [(0, 5000), (1, 5001), (2, 5002)] {
            let e = a.allocate(&udp(me, p), &mut rng).expect("ok");
            a.release(
                Protocol::Udp,
                SubscriberId::of(Endpoint::new(me, p)),
                e,
                Instant::from_secs(t),
            );
        }
        assert_eq!(usage_of(&a, X1).held_down, [0, 0, 2]);
        let at3 = |p| req(Protocol::Udp, me, p, Instant::from_secs(3));
        assert_eq!(
            a.allocate(&at3(5000), &mut rng).expect("ok").port,
            5000,
            "oldest freed"
        );
        assert_ne!(a.allocate(&at3(5001), &mut rng).expect("ok").port, 5001);
        assert_ne!(a.allocate(&at3(5002), &mut rng).expect("ok").port, 5002);
    }

    #[test]
    fn hold_down_zero_reuses_at_once() {
        for (hold_down, max_held_down) in [(Duration::ZERO, 100), (Duration::from_secs(120), 0)] {
            let mut s = settings(Pooling::Paired, PortAssignment::Preserve);
            s.hold_down = hold_down;
            s.max_held_down = max_held_down;
            let mut a = DynamicAllocator::new(&[X1], s);
            let mut rng = Rng::new(11);
            let e = a.allocate(&udp(subscriber(0), 6000), &mut rng).expect("ok");
            a.release(
                Protocol::Udp,
                SubscriberId::of(Endpoint::new(subscriber(0), 6000)),
                e,
                Instant::ZERO,
            );
            assert_eq!(usage_of(&a, X1).held_down, [0, 0, 0]);
            assert_eq!(a.allocate(&udp(subscriber(1), 6000), &mut rng), Ok(e));
        }
    }

    #[test]
    fn rfc7857_preserve_keeps_the_port_when_free() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        let mut rng = Rng::new(12);
        for p in [1u16, 80, 1023, 1024, 40000, 65535] {
            assert_eq!(
                a.allocate(&udp(subscriber(0), p), &mut rng),
                Ok(Endpoint::new(X1, p))
            );
        }
    }

    #[test]
    fn rfc7857_preserve_randomises_only_on_collision() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        let mut rng = Rng::new(13);
        let mut ports = HashSet::new();
        for n in 0..100 {
            let e = a
                .allocate(&udp(subscriber(n), 40000), &mut rng)
                .expect("ok");
            assert!(ports.insert(e.port));
        }
        assert!(ports.contains(&40000));
        // The 99 colliding ones are random, not 40001, 40002, ...
        let near = ports.iter().filter(|p| (40000..40200).contains(*p)).count();
        assert!(near < 5, "{near} ports next to the preserved one");
    }

    #[test]
    fn rfc6056_random_ports_are_spread() {
        let mut a = DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Random));
        let mut rng = Rng::new(14);
        let mut buckets = [0u32; 8];
        for n in 0..8000 {
            let e = a
                .allocate(&udp(subscriber(0), 3000 + (n % 10) as u16), &mut rng)
                .expect("ok");
            buckets[usize::from((e.port - 1024) / 8064)] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "{buckets:?}");
        }
    }

    /// A home gateway's NAT gets 20000-65535 of its address; the host keeps the rest. Random
    /// ports are uniform over that range: not bunched at its start, not in order. (With the
    /// host's ports only withheld, a third of the starts fell below 20000 and walked up to
    /// the first free port: 20000, 20001, 20002...)
    #[test]
    fn rfc6056_random_ports_are_spread_over_a_limited_range() {
        let range = PortRange {
            first: 20_000,
            last: u16::MAX,
        };
        let mut a = DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Random));
        a.limit_ports(range);
        let mut rng = Rng::new(15);
        let ports: Vec<u16> = (0..4000u16)
            .map(|n| {
                let proto = if n % 2 == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let r = req(proto, subscriber(0), 30_000 + n, Instant::ZERO);
                a.allocate(&r, &mut rng).expect("ok").port
            })
            .collect();
        assert!(
            ports.iter().all(|&p| range.contains(p)),
            "host ports left alone"
        );
        let mut buckets = [0u32; 8];
        for &p in &ports {
            buckets[usize::from((p - range.first) / 5692).min(7)] += 1;
        }
        for b in buckets {
            assert!((400..600).contains(&b), "{buckets:?}");
        }
        let in_order = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(in_order < 10, "{in_order} ports right after the one before");
    }

    #[test]
    fn rfc6056_starts_drawn_ahead_keep_each_range_and_repeat_with_the_seed() {
        // The next start is drawn (and prefetched) for the common range, 1024-65535; a request
        // for the other range scales the same bits into its own, so it stays random there too.
        let run = |seed| {
            let mut a =
                DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Random));
            let mut rng = Rng::new(seed);
            (0..600u16)
                .map(|n| {
                    let proto = if n % 3 == 0 {
                        Protocol::Tcp
                    } else {
                        Protocol::Udp
                    };
                    let internal = if n % 2 == 0 { 100 + n } else { 30_000 + n };
                    let r = req(proto, subscriber(0), internal, Instant::ZERO);
                    (internal, a.allocate(&r, &mut rng).expect("ok").port)
                })
                .collect::<Vec<_>>()
        };
        let ports = run(21);
        for &(internal, port) in &ports {
            assert_eq!(
                internal < 1024,
                port < 1024,
                "REQ-3a for {internal} -> {port}"
            );
            assert_ne!(port, 0);
        }
        let low_halves = ports
            .iter()
            .filter(|(i, _)| *i < 1024)
            .fold([0; 2], |mut h, (_, p)| {
                h[usize::from(*p >= 512)] += 1;
                h
            });
        assert!(low_halves.iter().all(|&h| h > 100), "{low_halves:?}");
        assert_eq!(run(21), ports, "same seed, same ports (RFC 4787 REQ-11)");
        assert_ne!(run(22), ports);
    }

    #[test]
    fn likely_next_names_the_port_the_next_random_search_finds() {
        let mut a =
            DynamicAllocator::new(&[X1, X2], settings(Pooling::Paired, PortAssignment::Random));
        let mut rng = Rng::new(23);
        assert_eq!(a.likely_next(), None, "nothing is known before a search");
        for n in 0..200u16 {
            let proto = if n % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let e = a
                .allocate(
                    &req(proto, subscriber(0), 20_000 + n, Instant::ZERO),
                    &mut rng,
                )
                .expect("ok");
            let (p, next) = a.likely_next().expect("a random search makes a guess");
            assert_eq!((p, next.addr), (proto, e.addr));
            assert_ne!(next, e, "the port just taken is not free");
            // With nothing taken in between and no parity to keep, the guess is right.
            let r = req(proto, subscriber(0), 40_000 + n, Instant::ZERO);
            assert_eq!(a.allocate(&r, &mut rng), Ok(next));
        }
        // A sequential port comes from no random search: no guess.
        let mut s =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Sequential));
        s.allocate(&udp(subscriber(0), 5000), &mut rng).expect("ok");
        assert_eq!(s.likely_next(), None);
    }

    #[test]
    fn sequential_hands_out_the_next_free_port_in_order() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Sequential));
        let mut rng = Rng::new(15);
        let me = subscriber(0);
        let ports: Vec<u16> = (0..5)
            .map(|i| a.allocate(&udp(me, 9000 + i), &mut rng).expect("ok").port)
            .collect();
        assert_eq!(ports, [1024, 1025, 1026, 1027, 1028]);
        // Low internal ports count in their own range (RFC 4787 REQ-3a), TCP on its own.
        assert_eq!(a.allocate(&udp(me, 22), &mut rng).expect("ok").port, 1);
        assert_eq!(a.allocate(&udp(me, 23), &mut rng).expect("ok").port, 2);
        let tcp = a.allocate(&req(Protocol::Tcp, me, 9000, Instant::ZERO), &mut rng);
        assert_eq!(tcp.expect("ok").port, 1024);
        assert_eq!(a.allocate(&udp(me, 9005), &mut rng).expect("ok").port, 1029);
        // The sequence goes on after a release; it does not step back into the gap.
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 9001)),
            Endpoint::new(X1, 1025),
            Instant::ZERO,
        );
        assert_eq!(a.allocate(&udp(me, 9006), &mut rng).expect("ok").port, 1030);
    }

    #[test]
    fn sequential_step_sets_the_port_delta() {
        let mut s = settings(Pooling::Paired, PortAssignment::Sequential);
        s.sequential_step = NonZeroU16::new(7).expect("not 0");
        let mut a = DynamicAllocator::new(&[X1], s);
        a.withhold_ports(|_, port| port != 1052);
        let mut rng = Rng::new(15);
        let me = subscriber(0);
        let ports: Vec<u16> = (0..4)
            .map(|i| a.allocate(&udp(me, 9000 + i), &mut rng).expect("ok").port)
            .collect();
        assert_eq!(ports, [1024, 1031, 1038, 1045]);
        // A taken port is skipped to the next free one, and the step goes on from there.
        let next = a.allocate(&udp(me, 9004), &mut rng).expect("ok").port;
        assert_eq!(next, 1053);
        assert_eq!(a.allocate(&udp(me, 9005), &mut rng).expect("ok").port, 1060);
    }

    #[test]
    fn sequential_wraps_at_the_top_of_the_range() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Sequential));
        let mut rng = Rng::new(16);
        let me = subscriber(0);
        let mut last = 0;
        for i in 0..64512u32 {
            last = a
                .allocate(&udp(me, 2000 + (i % 100) as u16), &mut rng)
                .expect("ok")
                .port;
        }
        assert_eq!(last, 65535);
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 1)),
            Endpoint::new(X1, 3000),
            Instant::ZERO,
        );
        let later = req(Protocol::Udp, me, 2000, Instant::from_secs(120));
        assert_eq!(a.allocate(&later, &mut rng).expect("ok").port, 3000);
    }

    #[test]
    fn exhaustion_is_reported_not_panicked() {
        // Arbitrary pooling: no free port anywhere.
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Arbitrary, PortAssignment::Random));
        let mut rng = Rng::new(17);
        fill_high_ports(&mut a, &mut rng);
        let r = req(Protocol::Tcp, subscriber(5), 5000, Instant::ZERO);
        assert_eq!(a.allocate(&r, &mut rng), Err(AllocError::Exhausted));
        // The low range and other protocols are separate pools.
        let low = req(Protocol::Tcp, subscriber(5), 80, Instant::ZERO);
        assert!(a.allocate(&low, &mut rng).is_ok());
        assert!(a.allocate(&udp(subscriber(5), 5000), &mut rng).is_ok());
        // An empty pool has nothing at all.
        let mut empty =
            DynamicAllocator::new(&[], settings(Pooling::Paired, PortAssignment::Random));
        assert_eq!(
            empty.allocate(&udp(subscriber(0), 1), &mut rng),
            Err(AllocError::Exhausted)
        );
        assert!(empty.usage().is_empty());
    }

    #[test]
    fn rfc4787_req2_paired_address_full_does_not_fall_back() {
        let mut a =
            DynamicAllocator::new(&[X1, X2], settings(Pooling::Paired, PortAssignment::Random));
        let mut rng = Rng::new(18);
        let all = fill_high_ports(&mut a, &mut rng);
        let home = all[0].addr;
        assert!(all.iter().all(|e| e.addr == home));
        let r = req(Protocol::Tcp, subscriber(0), 5000, Instant::ZERO);
        assert_eq!(a.allocate(&r, &mut rng), Err(AllocError::PairedAddressFull));
        // A new subscriber is not paired yet, so it goes to the address with room.
        let other = a.allocate(
            &req(Protocol::Tcp, subscriber(1), 5000, Instant::ZERO),
            &mut rng,
        );
        assert_ne!(other.expect("ok").addr, home);
        // The refused request left no live mapping behind: once the subscriber's mappings are
        // all released, its pairing ends and its home address has no subscriber left.
        for (i, e) in (0u16..).zip(&all) {
            let internal = Endpoint::new(subscriber(0), 1024 + i);
            a.release(Protocol::Tcp, SubscriberId::of(internal), *e, Instant::ZERO);
        }
        assert_eq!(usage_of(&a, home).subscribers, 0);
        let key = u64::from(subscriber(0).to_bits());
        assert!(!a.subscribers.contains_key(&key), "the pairing ended");
    }

    #[test]
    fn soft_paired_falls_back_to_another_address() {
        let mut a = DynamicAllocator::new(
            &[X1, X2],
            settings(Pooling::SoftPaired, PortAssignment::Random),
        );
        let mut rng = Rng::new(19);
        let all = fill_high_ports(&mut a, &mut rng);
        let home = all[0].addr;
        let r = req(Protocol::Tcp, subscriber(0), 5000, Instant::ZERO);
        let fallback = a.allocate(&r, &mut rng).expect("falls back");
        assert_ne!(fallback.addr, home);
        assert_eq!(usage_of(&a, fallback.addr).subscribers, 1);
        // Still paired with its home address for protocols that have room there.
        assert_eq!(
            a.allocate(&udp(subscriber(0), 5000), &mut rng)
                .expect("ok")
                .addr,
            home
        );
        // Both addresses full: exhausted.
        for _ in 0..64511 {
            a.allocate(&r, &mut rng)
                .expect("room on the fallback address");
        }
        assert_eq!(a.allocate(&r, &mut rng), Err(AllocError::Exhausted));
    }

    #[test]
    fn rfc4787_arbitrary_pooling_preserves_the_port_on_another_address() {
        let pool = [X1, X2, X3, X4];
        let mut a = DynamicAllocator::new(
            &pool,
            settings(Pooling::Arbitrary, PortAssignment::Preserve),
        );
        let mut rng = Rng::new(24);
        let mut addrs = HashSet::new();
        for n in 0..4 {
            let e = a.allocate(&udp(subscriber(n), 5000), &mut rng).expect("ok");
            assert_eq!(e.port, 5000);
            assert!(addrs.insert(e.addr));
        }
        let fifth = a.allocate(&udp(subscriber(4), 5000), &mut rng).expect("ok");
        assert_ne!(fifth.port, 5000, "taken everywhere: randomised");
    }

    #[test]
    fn arbitrary_pooling_spreads_over_the_pool() {
        let mut a = DynamicAllocator::new(
            &[X1, X2, X3, X4],
            settings(Pooling::Arbitrary, PortAssignment::Random),
        );
        let mut rng = Rng::new(20);
        let me = subscriber(0);
        for i in 0..4000u16 {
            a.allocate(&udp(me, 10000 + i), &mut rng).expect("ok");
        }
        for u in a.usage() {
            assert!((800..1200).contains(&u.in_use[2]), "{u:?}");
            assert_eq!(u.subscribers, 1);
        }
    }

    #[test]
    fn icmp_identifiers_use_every_value_without_range_or_parity() {
        let mut s = settings(Pooling::Paired, PortAssignment::Preserve);
        s.port_parity = true;
        let mut a = DynamicAllocator::new(&[X1], s);
        let mut rng = Rng::new(21);
        let me = subscriber(0);
        let icmp = |id| req(Protocol::Icmp, me, id, Instant::ZERO);
        assert_eq!(
            a.allocate(&icmp(0), &mut rng).expect("ok").port,
            0,
            "id 0 is valid"
        );
        assert_eq!(a.allocate(&icmp(7), &mut rng).expect("ok").port, 7);
        let mut ids: HashSet<u16> = [0, 7].into();
        let mut parity_changed = false;
        for _ in 2..65536 {
            let e = a.allocate(&icmp(7), &mut rng).expect("an id is free");
            parity_changed |= e.port % 2 == 0;
            assert!(ids.insert(e.port));
        }
        assert!(parity_changed, "parity does not apply to identifiers");
        assert_eq!(
            a.allocate(&icmp(7), &mut rng),
            Err(AllocError::PairedAddressFull)
        );
        assert_eq!(usage_of(&a, X1).in_use, [65536, 0, 0]);
    }

    #[test]
    fn withheld_ports_are_never_handed_out_nor_counted() {
        let mut s = settings(Pooling::Paired, PortAssignment::Random);
        s.port_range_preservation = false;
        let mut a = DynamicAllocator::new(&[X1], s);
        a.withhold_ports(|proto, port| {
            proto == Protocol::Icmp || (40_000..=40_099).contains(&port)
        });
        assert_eq!(usage_of(&a, X1).in_use, [0, 0, 0]);
        let mut rng = Rng::new(5);
        let mut got = HashSet::new();
        for i in 0..100 {
            let e = a
                .allocate(&udp(subscriber(0), 1000 + i), &mut rng)
                .expect("a port of the window");
            assert!((40_000..=40_099).contains(&e.port), "{e}");
            got.insert(e.port);
        }
        assert_eq!(got.len(), 100);
        assert_eq!(usage_of(&a, X1).in_use[Protocol::Udp.index()], 100);
        assert!(a.allocate(&udp(subscriber(0), 7), &mut rng).is_err());
    }

    #[test]
    fn release_of_what_was_not_allocated_is_ignored() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        let mut rng = Rng::new(22);
        let me = Endpoint::new(subscriber(0), 5000);
        let e = a.allocate(&udp(me.addr, me.port), &mut rng).expect("ok");
        let before = a.usage();
        let now = Instant::ZERO;
        // Not a pool address; a port never handed out; the wrong protocol; a stranger.
        a.release(
            Protocol::Udp,
            SubscriberId::of(me),
            Endpoint::new(X2, 5000),
            now,
        );
        a.release(
            Protocol::Udp,
            SubscriberId::of(me),
            Endpoint::new(X1, 5001),
            now,
        );
        a.release(Protocol::Tcp, SubscriberId::of(me), e, now);
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(subscriber(9), 5000)),
            e,
            now,
        );
        assert_eq!(a.usage(), before);
        // Released twice: counted once.
        a.release(Protocol::Udp, SubscriberId::of(me), e, now);
        a.release(Protocol::Udp, SubscriberId::of(me), e, now);
        assert_eq!(usage_of(&a, X1).held_down, [0, 0, 1]);
        assert_eq!(usage_of(&a, X1).in_use, [0, 0, 0]);
        assert_eq!(usage_of(&a, X1).subscribers, 0);
    }

    #[test]
    fn time_going_backwards_only_delays_reuse() {
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Paired, PortAssignment::Preserve));
        let mut rng = Rng::new(23);
        let me = subscriber(0);
        let e = a.allocate(&udp(me, 5000), &mut rng).expect("ok");
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 5000)),
            e,
            Instant::from_secs(1000),
        );
        let back = req(Protocol::Udp, me, 5000, Instant::from_secs(5));
        assert_ne!(a.allocate(&back, &mut rng).expect("ok").port, 5000);
        let end = req(Protocol::Udp, me, 5000, Instant::from_millis(u64::MAX));
        assert_eq!(a.allocate(&end, &mut rng).expect("ok").port, 5000);
    }

    #[test]
    fn owns_exactly_the_pool() {
        let a = DynamicAllocator::new(
            &[X1, X3, X1],
            settings(Pooling::Paired, PortAssignment::Random),
        );
        assert!(a.owns(X1) && a.owns(X3));
        assert!(!a.owns(X2) && !a.owns(X4) && !a.owns(Ipv4Addr::UNSPECIFIED));
        assert_eq!(a.usage().len(), 2, "a repeated address counts once");
    }

    #[test]
    fn settings_come_from_the_config() {
        let mut cfg = Config::new(vec![X1], Ipv4Addr::new(100, 64, 0, 1));
        cfg.behavior.pooling = Pooling::SoftPaired;
        cfg.behavior.port_assignment = PortAssignment::Sequential;
        cfg.behavior.sequential_step = NonZeroU16::new(7).expect("not 0");
        cfg.behavior.port_parity = true;
        cfg.behavior.port_range_preservation = false;
        cfg.behavior.timers.port_hold_down = 90;
        cfg.limits.max_ports_in_hold_down = 77;
        let s = AllocSettings::from_config(&cfg);
        assert_eq!(
            s,
            AllocSettings {
                pooling: Pooling::SoftPaired,
                port_assignment: PortAssignment::Sequential,
                sequential_step: NonZeroU16::new(7).expect("not 0"),
                port_parity: true,
                port_range_preservation: false,
                hold_down: Duration::from_secs(90),
                max_held_down: 77,
            }
        );
        let d = Config::new(vec![X1], Ipv4Addr::new(100, 64, 0, 1));
        let s = AllocSettings::from_config(&d);
        assert_eq!(
            (s.pooling, s.hold_down),
            (Pooling::Paired, Duration::from_secs(120))
        );
        assert_eq!(DynamicAllocator::new(&[X1], s).settings(), &s);
    }

    /// Rough timings, for the numbers in the report; run with
    /// `cargo test --release -p natgate-core --lib alloc::dynamic::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check; run in release"]
    #[allow(clippy::print_stderr)]
    fn timing() {
        use std::time::Instant as Clock;
        let pool: Vec<Ipv4Addr> = (0..64)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i))
            .collect();
        let mut rng = Rng::new(99);

        // Steady state of a CGN: 10k subscribers, 200k live mappings, every new mapping paired
        // with the release of an old one, hold-down on (the queue reaches its cap and evicts).
        let mut s = settings(Pooling::Paired, PortAssignment::Random);
        s.max_held_down = 1 << 18;
        let mut a = DynamicAllocator::new(&pool, s);
        let mut live = VecDeque::new();
        let mut now = Instant::ZERO;
        for i in 0..200_000u32 {
            let r = req(
                Protocol::Udp,
                subscriber(i % 10_000),
                (i / 10_000) as u16 + 2000,
                now,
            );
            live.push_back((r.internal, a.allocate(&r, &mut rng).expect("ok")));
        }
        let n = 2_000_000u32;
        let t0 = Clock::now();
        for i in 0..n {
            now = now + Duration::from_micros(50);
            let r = req(
                Protocol::Udp,
                subscriber(i % 10_000),
                (i % 60_000) as u16 + 1024,
                now,
            );
            let e = a.allocate(&r, &mut rng).expect("ok");
            let (internal, old) = live.pop_front().expect("live");
            a.release(Protocol::Udp, SubscriberId::of(internal), old, now);
            live.push_back((r.internal, e));
        }
        let pair = t0.elapsed().as_nanos() / u128::from(n);
        eprintln!("steady state, 64 addresses, 10k subscribers: {pair} ns per allocate + release");

        // Allocation alone, on that warm state: 200k more mappings.
        let t0 = Clock::now();
        for i in 0..200_000u32 {
            let r = req(
                Protocol::Tcp,
                subscriber(i % 10_000),
                (i / 10_000) as u16 + 3000,
                now,
            );
            a.allocate(&r, &mut rng).expect("ok");
        }
        let alloc = t0.elapsed().as_nanos() / 200_000;
        eprintln!("then 200k TCP mappings: {alloc} ns per allocate");

        // Filling one address to the last port: the search stays bounded as it fills.
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Arbitrary, PortAssignment::Random));
        let t0 = Clock::now();
        let all = fill_high_ports(&mut a, &mut rng);
        let fill = t0.elapsed().as_nanos() / all.len() as u128;
        eprintln!("fill 64512 ports of one address: {fill} ns per allocate");

        // Almost full: 64 free ports scattered over 64512, allocate and release at once.
        let mut s = settings(Pooling::Arbitrary, PortAssignment::Random);
        s.hold_down = Duration::ZERO;
        let mut a = DynamicAllocator::new(&[X1], s);
        let all = fill_high_ports(&mut a, &mut rng);
        let me = Endpoint::new(subscriber(0), 1);
        for e in all.iter().step_by(1008) {
            a.release(Protocol::Tcp, SubscriberId::of(me), *e, Instant::ZERO);
        }
        let n = 1_000_000u32;
        let t0 = Clock::now();
        for _ in 0..n {
            let e = a.allocate(&req(Protocol::Tcp, me.addr, 7000, Instant::ZERO), &mut rng);
            a.release(
                Protocol::Tcp,
                SubscriberId::of(me),
                e.expect("one of 64 free"),
                Instant::ZERO,
            );
        }
        let near_full = t0.elapsed().as_nanos() / u128::from(n);
        eprintln!("64 of 64512 free: {near_full} ns per allocate + release");

        // Exhausted: how long it takes to say no.
        let n = 1_000_000u32;
        let mut a =
            DynamicAllocator::new(&[X1], settings(Pooling::Arbitrary, PortAssignment::Random));
        fill_high_ports(&mut a, &mut rng);
        let t0 = Clock::now();
        for _ in 0..n {
            let r = req(Protocol::Tcp, me.addr, 7000, Instant::ZERO);
            assert_eq!(a.allocate(&r, &mut rng), Err(AllocError::Exhausted));
        }
        let no = t0.elapsed().as_nanos() / u128::from(n);
        eprintln!("exhausted address: {no} ns per refused allocate");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate {
            proto: usize,
            sub: u32,
            port: u16,
        },
        Release {
            pick: usize,
        },
        ReleaseBogus {
            proto: usize,
            sub: u32,
            addr: usize,
            port: u16,
        },
        Advance {
            millis: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let port = prop_oneof![0u16..4, 1020u16..1030, any::<u16>()];
        prop_oneof![
            4 => (0usize..3, 0u32..6, port.clone())
                .prop_map(|(proto, sub, port)| Op::Allocate { proto, sub, port }),
            3 => any::<usize>().prop_map(|pick| Op::Release { pick }),
            1 => (0usize..3, 0u32..6, 0usize..3, port)
                .prop_map(|(proto, sub, addr, port)| Op::ReleaseBogus { proto, sub, addr, port }),
            1 => (0u64..60_000).prop_map(|millis| Op::Advance { millis }),
        ]
    }

    fn any_settings() -> impl Strategy<Value = AllocSettings> {
        (
            prop_oneof![
                Just(Pooling::Paired),
                Just(Pooling::SoftPaired),
                Just(Pooling::Arbitrary)
            ],
            prop_oneof![
                Just(PortAssignment::Preserve),
                Just(PortAssignment::Random),
                Just(PortAssignment::Sequential)
            ],
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u64), 1u64..200_000],
            0usize..6,
        )
            .prop_map(
                |(pooling, port_assignment, port_parity, range, hold, max)| AllocSettings {
                    pooling,
                    port_assignment,
                    sequential_step: NonZeroU16::MIN,
                    port_parity,
                    port_range_preservation: range,
                    hold_down: Duration::from_millis(hold),
                    max_held_down: max,
                },
            )
    }

    /// The reference model: lists, searched linearly.
    #[derive(Default)]
    struct Model {
        live: Vec<(Protocol, Endpoint, Endpoint)>,
        held: VecDeque<(Protocol, Endpoint, Instant)>,
    }

    impl Model {
        fn expire(&mut self, now: Instant, hold_down: Duration) {
            while self.held.front().is_some_and(|h| now >= h.2 + hold_down) {
                self.held.pop_front();
            }
        }

        fn check_usage(&self, a: &DynamicAllocator) {
            for u in a.usage() {
                let mut in_use = [0u32; 3];
                let mut held = [0u32; 3];
                let mut subs = HashSet::new();
                for (p, i, e) in &self.live {
                    if e.addr == u.addr {
                        in_use[p.index()] += 1;
                        subs.insert(i.addr);
                    }
                }
                for (p, e, _) in &self.held {
                    if e.addr == u.addr {
                        held[p.index()] += 1;
                    }
                }
                assert_eq!(u.in_use, in_use, "{u:?}");
                assert_eq!(u.held_down, held, "{u:?}");
                assert_eq!(u.subscribers as usize, subs.len(), "{u:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn never_hands_out_a_live_or_held_endpoint(
            s in any_settings(),
            seed in any::<u64>(),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let pool = [X1, X2];
            let mut a = DynamicAllocator::new(&pool, s);
            let mut rng = Rng::new(seed);
            let mut m = Model::default();
            let mut now = Instant::ZERO;
            let hold = !s.hold_down.is_zero() && s.max_held_down > 0;
            for op in ops {
                match op {
                    Op::Allocate { proto, sub, port } => {
                        let proto = Protocol::ALL[proto];
                        let internal = Endpoint::new(subscriber(sub), port);
                        let e = a.allocate(&req(proto, internal.addr, port, now), &mut rng);
                        m.expire(now, s.hold_down);
                        let e = e.expect("the pool is far from full");
                        prop_assert!(a.owns(e.addr));
                        prop_assert!(!m.live.iter().any(|l| l.0 == proto && l.2 == e), "{e} live");
                        prop_assert!(!m.held.iter().any(|h| h.0 == proto && h.1 == e), "{e} held");
                        if proto != Protocol::Icmp {
                            prop_assert_ne!(e.port, 0);
                            if s.port_parity {
                                prop_assert_eq!(e.port % 2, port % 2);
                            }
                            let low = s.port_range_preservation && port < 1024;
                            prop_assert_eq!(e.port < 1024, low, "{} -> {}", port, e);
                        }
                        // Soft-paired falls back only when the paired address is full, which
                        // two addresses and 200 operations never reach.
                        if s.pooling != Pooling::Arbitrary
                            && let Some(l) = m.live.iter().find(|l| l.1.addr == internal.addr)
                        {
                            prop_assert_eq!(l.2.addr, e.addr, "paired");
                        }
                        m.live.push((proto, internal, e));
                    }
                    Op::Release { pick } => {
                        if m.live.is_empty() {
                            continue;
                        }
                        let (proto, internal, e) = m.live.swap_remove(pick % m.live.len());
                        a.release(proto, SubscriberId::of(internal), e, now);
                        m.expire(now, s.hold_down);
                        if hold {
                            m.held.push_back((proto, e, now));
                            if m.held.len() > s.max_held_down {
                                m.held.pop_front();
                            }
                        }
                    }
                    Op::ReleaseBogus { proto, sub, addr, port } => {
                        let proto = Protocol::ALL[proto];
                        let internal = Endpoint::new(subscriber(sub), port);
                        let e = Endpoint::new([X1, X2, X3][addr], port);
                        // Only an endpoint that is not live for this very subscriber is bogus.
                        if m.live.iter().any(|l| l.0 == proto && l.2 == e) {
                            continue;
                        }
                        a.release(proto, SubscriberId::of(internal), e, now);
                        m.expire(now, s.hold_down);
                    }
                    Op::Advance { millis } => now = now + Duration::from_millis(millis),
                }
                m.check_usage(&a);
            }
        }
    }
}
