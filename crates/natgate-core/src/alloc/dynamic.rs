//! [`DynamicAllocator`]: any free port of the pool, chosen per RFC 4787 section 4, RFC 6056,
//! RFC 6888 and RFC 7857, with no per-subscriber reservation.
//!
//! State per (external address, protocol) is a [`PortSet`] bitmap; released ports wait in one FIFO
//! for their hold-down (RFC 6888 REQ-8) and leave it lazily, on the next `allocate` or `release`,
//! so the allocator needs no timer of its own.

use super::pool_index::PoolIndex;
use super::ports::{Parity, PortSet};
use super::{AddressUsage, AllocError, AllocRequest, PortAllocator};
use crate::config::{Config, Pooling, PortAssignment};
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use core::fmt;
use core::hash::{BuildHasherDefault, Hasher};
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
    /// Sequential assignment: where the next search starts, per protocol.
    next: [u16; 3],
    /// Internal addresses with at least one live mapping here.
    subscribers: u32,
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
fn link_key(internal: Ipv4Addr, address: usize) -> u64 {
    (u64::from(internal.to_bits()) << 32) | (address as u64 & 0xffff_ffff)
}

/// A uniform value in `lo..=hi` (`lo <= hi`).
fn random_in(rng: &mut Rng, lo: u16, hi: u16) -> u16 {
    let offset = rng.below(u32::from(hi - lo) + 1);
    lo.saturating_add(u16::try_from(offset).unwrap_or(0))
}

/// The classic dynamic NAPT allocator: any free port of any eligible pool address.
///
/// Memory: 48 KiB per pool address (two 65536-bit maps per protocol), plus 16 bytes per held-down
/// port and a hash entry per subscriber and per (subscriber, address) pair with live mappings.
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
}

impl fmt::Debug for DynamicAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicAllocator")
            .field("settings", &self.settings)
            .field("addresses", &self.addresses.len())
            .field("held_down", &self.held.len())
            .field("subscribers", &self.links.len())
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
                next: [0; 3],
                subscribers: 0,
            })
            .collect();
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

    /// Picks and takes a port on address `i` for `req`, if one is free.
    fn take_port(&mut self, i: usize, req: &AllocRequest, rng: &mut Rng) -> Option<u16> {
        let (lo, hi, parity) = self.settings.constraints(req.proto, req.internal.port);
        let a = self.addresses.get_mut(i)?;
        let p = req.proto.index();
        let ports = &mut a.ports[p];
        let internal = req.internal.port;
        let port = match self.settings.port_assignment {
            // RFC 7857 section 3: keep the port; randomise only on collision. The internal port
            // has its own parity, so REQ-4 holds; the range check is REQ-3a (and keeps TCP/UDP
            // off port 0).
            PortAssignment::Preserve
                if (lo..=hi).contains(&internal) && ports.is_free(internal) =>
            {
                internal
            }
            // RFC 6056 algorithm 1: a random start, then the next free port.
            PortAssignment::Preserve | PortAssignment::Random => {
                ports.find_free(random_in(rng, lo, hi), lo, hi, parity)?
            }
            PortAssignment::Sequential => {
                let port = ports.find_free(a.next[p], lo, hi, parity)?;
                a.next[p] = port.wrapping_add(1);
                port
            }
        };
        ports.take(port).then_some(port)
    }

    /// Takes a port on any address but `skip`, starting at a random one so that mappings spread
    /// over the pool.
    fn take_anywhere(
        &mut self,
        req: &AllocRequest,
        rng: &mut Rng,
        skip: Option<usize>,
    ) -> Result<(usize, u16), AllocError> {
        let n = self.addresses.len();
        let start = self.random_address(rng).ok_or(AllocError::Exhausted)?;
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
    /// spread evenly). The scan starts at a random address and keeps the first minimum it meets,
    /// so ties go to a random one of them.
    fn least_loaded(&self, rng: &mut Rng) -> Option<usize> {
        let n = self.addresses.len();
        let start = self.random_address(rng)?;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.addresses.get(i).map_or(u32::MAX, |a| a.subscribers))
    }

    /// Paired and soft-paired pooling (RFC 4787 REQ-2): the subscriber's address if it has one,
    /// otherwise the least loaded, which becomes its address.
    fn take_paired(
        &mut self,
        req: &AllocRequest,
        rng: &mut Rng,
    ) -> Result<(usize, u16), AllocError> {
        let key = u64::from(req.internal.addr.to_bits());
        let soft = self.settings.pooling == Pooling::SoftPaired;
        if let Some(paired) = self.subscribers.get(&key).map(|s| s.paired) {
            return match self.take_port(paired, req, rng) {
                Some(port) => Ok((paired, port)),
                None if soft => self.take_anywhere(req, rng, Some(paired)),
                None => Err(AllocError::PairedAddressFull),
            };
        }
        let first = self.least_loaded(rng).ok_or(AllocError::Exhausted)?;
        // A new subscriber is not paired yet: if the least loaded address is full for this
        // protocol, any other with a free port becomes its address, even under strict pairing.
        let (i, port) = match self.take_port(first, req, rng) {
            Some(port) => (first, port),
            None => self.take_anywhere(req, rng, Some(first))?,
        };
        self.subscribers
            .insert(key, Subscriber { paired: i, live: 0 });
        Ok((i, port))
    }
}

impl PortAllocator for DynamicAllocator {
    fn allocate(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        let paired = self.settings.pooling != Pooling::Arbitrary;
        let (i, port) = if paired {
            self.take_paired(req, rng)?
        } else {
            self.take_anywhere(req, rng, None)?
        };
        if paired
            && let Some(s) = self
                .subscribers
                .get_mut(&u64::from(req.internal.addr.to_bits()))
        {
            s.live = s.live.saturating_add(1);
        }
        let a = self.addresses.get_mut(i).ok_or(AllocError::Exhausted)?;
        let live = self
            .links
            .entry(link_key(req.internal.addr, i))
            .or_insert(0);
        if *live == 0 {
            a.subscribers += 1;
        }
        *live = live.saturating_add(1);
        Ok(Endpoint::new(a.addr, port))
    }

    fn release(&mut self, proto: Protocol, internal: Endpoint, external: Endpoint, now: Instant) {
        self.expire(now);
        let Some(i) = self.index.get(external.addr) else {
            return;
        };
        let key = link_key(internal.addr, i);
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
        }
        let sub = u64::from(internal.addr.to_bits());
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

    fn owns(&self, addr: Ipv4Addr) -> bool {
        self.index.get(addr).is_some()
    }

    fn usage(&self) -> Vec<AddressUsage> {
        self.addresses
            .iter()
            .map(|a| AddressUsage {
                addr: a.addr,
                in_use: a.ports.each_ref().map(PortSet::in_use),
                held_down: a.ports.each_ref().map(PortSet::held_down),
                subscribers: a.subscribers,
            })
            .collect()
    }
}
