//! [`BlockAllocator`]: port-block allocation for carrier-grade NAT (RFC 6888 REQ-2, REQ-4, REQ-8,
//! REQ-13..15).
//!
//! Each subscriber gets blocks of `block_size` consecutive ports on its paired external address,
//! up to `max_blocks_per_subscriber`, and its mappings take ports only from its own blocks. The
//! translation log then needs one record per block allocation and release instead of one per
//! session (RFC 6888 REQ-14), and a subscriber's port use is bounded by construction (REQ-4).
//!
//! Choices, as most CGNs make them:
//! - **One block serves every protocol.** TCP, UDP and ICMP identifiers each have their own port
//!   space (RFC 4787 REQ-3 forbids overloading only within one protocol), so a block gives the
//!   subscriber `block_size` ports of each; one log record covers all three.
//! - **Blocks live in 1024-65535.** Block `b` of an address is ports
//!   `1024 + b * block_size ..= 1024 + (b + 1) * block_size - 1`; the top
//!   `64512 % block_size` ports are unused. Well-known ports 0-1023 are never in a block: there
//!   are too few to share fairly among an address's subscribers. A mapping of an internal port
//!   below 1024 therefore gets a port of the subscriber's block, above 1023: RFC 4787 REQ-3a's
//!   range preservation is a recommendation that port blocks cannot keep.
//! - **Paired blocks.** All blocks of a subscriber are on one address (RFC 6888 REQ-2); a new
//!   subscriber goes to the address with the most free blocks (ties at random), so subscribers
//!   spread evenly; the block on that address is a uniformly random free one.
//! - **Hard to guess, well used (REQ-13, REQ-15).** A port is chosen at a random start inside the
//!   block, then the next free one (RFC 6056 algorithm 1 within the block), keeping the internal
//!   port's parity when configured (RFC 4787 REQ-4). The subscriber's blocks are tried oldest
//!   first, so that load concentrates and the newer blocks drain and go back to the pool; a new
//!   block is taken only when every block the subscriber has is full for this protocol.
//! - **Hold-down (REQ-8).** A released port is held for `hold_down` (120 s by default) before it
//!   is free again; a block goes back to the pool when it has no port in use or held, that is
//!   when the hold-down of its last released port has passed. The cap on held ports frees the
//!   oldest early, as in [`DynamicAllocator`](super::DynamicAllocator).

use super::HeldPort;
use super::hold::{Held, HoldQueue};
use super::pool_choice::{Extreme, PoolChoice};
use super::pool_index::PoolIndex;
use super::ports::{Parity, PortSet};
use super::reserved::Reserved;
use super::share::Share;
use super::{
    AddressUsage, AllocError, AllocEvent, AllocRequest, PortAllocator, PortBlock, PortRange,
    PortSetKind, PortSetUsage, SubscriberId,
};
use crate::config::{Config, PortBlockSpec};
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use core::fmt;
use core::hash::{BuildHasherDefault, Hasher};
use core::time::Duration;
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// The first port a block may hold: well-known ports are never in blocks.
pub(super) const FIRST_BLOCK_PORT: u16 = 1024;
/// Ports available to blocks on one address: 1024-65535.
pub(super) const BLOCK_PORTS: u32 = 65536 - FIRST_BLOCK_PORT as u32;

/// The port-block parameters of a [`BlockAllocator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSettings {
    /// Ports per block, 2..=64512 (every block then has ports of both parities).
    pub block_size: u16,
    /// Most blocks one subscriber may hold at once: its port limit (RFC 6888 REQ-4) is
    /// `block_size * max_blocks_per_subscriber` per protocol.
    pub max_blocks_per_subscriber: u16,
    /// Keep the parity of the internal port (RFC 4787 REQ-4). Not applied to ICMP identifiers.
    pub port_parity: bool,
    /// How long a released port stays unusable (RFC 6888 REQ-8: 120 s); zero reuses at once.
    pub hold_down: Duration,
    /// Most ports in hold-down at once (RFC 6888 REQ-8's cap); past it the oldest is freed early.
    pub max_held_down: usize,
    /// The blocks this allocator may hand out: block `b` when `b % count == index`.
    pub share: Share,
}

impl BlockSettings {
    /// The settings of a validated config's port-block section (`spec`), with its behaviour's
    /// parity and hold-down, for the whole port space.
    pub fn from_config(cfg: &Config, spec: &PortBlockSpec) -> Self {
        let b = &cfg.behavior;
        BlockSettings {
            block_size: spec.block_size,
            max_blocks_per_subscriber: spec.max_blocks_per_subscriber,
            port_parity: b.port_parity,
            hold_down: Duration::from_secs(u64::from(b.timers.port_hold_down)),
            max_held_down: usize::try_from(cfg.limits.max_ports_in_hold_down).unwrap_or(usize::MAX),
            share: Share::WHOLE,
        }
    }

    /// Blocks on one address.
    pub fn blocks_per_address(&self) -> u16 {
        u16::try_from(BLOCK_PORTS / u32::from(self.block_size.max(1))).unwrap_or(u16::MAX)
    }

    /// The ports of block `b`, if the address has such a block.
    pub fn block_ports(&self, b: u16) -> Option<PortRange> {
        if b >= self.blocks_per_address() {
            return None;
        }
        let first = u32::from(FIRST_BLOCK_PORT) + u32::from(b) * u32::from(self.block_size);
        let last = first + u32::from(self.block_size) - 1;
        Some(PortRange {
            first: u16::try_from(first).ok()?,
            last: u16::try_from(last).ok()?,
        })
    }

    /// The block `port` is in, if any.
    pub fn block_of(&self, port: u16) -> Option<u16> {
        let offset = port.checked_sub(FIRST_BLOCK_PORT)?;
        let b = offset / self.block_size.max(1);
        (b < self.blocks_per_address()).then_some(b)
    }

    /// Which of `count` workers owns the return traffic of external `port` (see [`Share`]):
    /// block `b` belongs to worker `b % count`. `None` for ports in no block.
    pub fn worker_of(&self, port: u16, count: u16) -> Option<u16> {
        self.block_of(port)
            .map(|b| Share::worker_of(count, u32::from(b)))
    }
}

/// One block of one address.
#[derive(Debug, Clone, Copy)]
struct BlockState {
    /// The subscriber holding it; `None` when free (or outside this allocator's share).
    owner: Option<SubscriberId>,
    /// Ports of the block, over all protocols, in use or held down. The block goes back to the
    /// pool when this reaches zero.
    busy: u32,
}

/// One external address of the pool.
struct Address {
    addr: Ipv4Addr,
    /// Port state, indexed by [`Protocol::index`].
    ports: [PortSet; 3],
    /// Every block of the address, indexed by block number.
    blocks: Box<[BlockState]>,
    /// Free blocks of this allocator's share, in no order: a random index is a uniformly random
    /// free block, taken in O(1) with `swap_remove`.
    free: Vec<u16>,
    /// Subscribers holding at least one block here.
    subscribers: u32,
}

impl Address {
    /// Free blocks, the key by which a new subscriber's address is chosen.
    fn room(&self) -> u32 {
        u32::try_from(self.free.len()).unwrap_or(u32::MAX)
    }
}

/// A subscriber's blocks, all on one address (paired pooling).
struct Subscriber {
    address: u32,
    /// Block numbers, oldest first; never empty while the subscriber is in the map.
    blocks: Vec<u16>,
}

/// A multiply-xorshift hasher for subscriber ids, several times cheaper than SipHash on the
/// allocation path. Subscribers cannot choose their ids freely (the access network or the
/// softwire fixes them), so flooding resistance buys nothing; the fixed function keeps runs
/// reproducible (RFC 4787 REQ-11).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type IdMap<V> = HashMap<SubscriberId, V, BuildHasherDefault<IdHasher>>;

/// A uniform value in `lo..=hi` (`lo <= hi`).
pub(super) fn random_in(rng: &mut Rng, lo: u16, hi: u16) -> u16 {
    let offset = rng.below(u32::from(hi - lo) + 1);
    lo.saturating_add(u16::try_from(offset).unwrap_or(0))
}

/// Takes a free port of block `b` of `a`: a random start inside the block, then the next free
/// port of the right parity (RFC 6056 algorithm 1 within the block, RFC 6888 REQ-15).
fn take_in_block(
    settings: &BlockSettings,
    a: &mut Address,
    b: u16,
    proto: Protocol,
    parity: Parity,
    rng: &mut Rng,
) -> Option<u16> {
    let r = settings.block_ports(b)?;
    let ports = &mut a.ports[proto.index()];
    let port = ports.find_free(random_in(rng, r.first, r.last), r.first, r.last, parity)?;
    if !ports.take(port) {
        return None;
    }
    a.blocks.get_mut(usize::from(b))?.busy += 1;
    Some(port)
}

/// Port-block allocation (see the module documentation for the rules).
///
/// Memory: 48 KiB per pool address for the port maps plus 14 bytes per block and 8 bytes (at
/// most 16) for the choice of a new subscriber's address, a hash entry per subscriber holding
/// blocks, and 16 bytes per held-down port.
pub struct BlockAllocator {
    settings: BlockSettings,
    index: PoolIndex,
    addresses: Vec<Address>,
    /// Each address's free blocks, kept equal to `Address::room` wherever a block is taken or
    /// returned, so that `roomiest` is O(log n).
    room: PoolChoice,
    held: HoldQueue,
    subscribers: IdMap<Subscriber>,
    /// Block records for the log, drained by `poll_event`; at most `max_events` are kept.
    events: VecDeque<AllocEvent>,
    max_events: usize,
    events_lost: u64,
    /// Ports static rules and virtual servers hold.
    reserved: Reserved,
}

impl fmt::Debug for BlockAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockAllocator")
            .field("settings", &self.settings)
            .field("addresses", &self.addresses.len())
            .field("subscribers", &self.subscribers.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl BlockAllocator {
    /// An allocator over `pool` with every block free. A repeated address counts once; an empty
    /// pool makes every allocation fail with [`AllocError::Exhausted`] (config validation refuses
    /// both, and a block size outside 2..=64512, before they get here).
    pub fn new(pool: &[Ipv4Addr], settings: BlockSettings) -> Self {
        let (index, distinct) = PoolIndex::new(pool);
        let n = settings.blocks_per_address();
        let share = settings.share;
        let addresses: Vec<Address> = distinct
            .into_iter()
            .map(|addr| Address {
                addr,
                ports: [PortSet::new(), PortSet::new(), PortSet::new()],
                blocks: vec![
                    BlockState {
                        owner: None,
                        busy: 0
                    };
                    usize::from(n)
                ]
                .into_boxed_slice(),
                free: (0..n).filter(|&b| share.owns(u32::from(b))).collect(),
                subscribers: 0,
            })
            .collect();
        let room = PoolChoice::new(Extreme::Most, addresses.iter().map(Address::room));
        let ports = addresses.len().saturating_mul(3 * BLOCK_PORTS as usize);
        // Every block can be allocated and released once between two drains.
        let max_events = addresses
            .len()
            .saturating_mul(usize::from(n))
            .saturating_mul(2)
            .max(1024);
        BlockAllocator {
            held: HoldQueue::new(settings.hold_down, settings.max_held_down, ports),
            settings,
            index,
            addresses,
            room,
            subscribers: IdMap::default(),
            events: VecDeque::new(),
            max_events,
            events_lost: 0,
            reserved: Reserved::default(),
        }
    }

    /// The settings this allocator was built with.
    pub fn settings(&self) -> &BlockSettings {
        &self.settings
    }

    /// The blocks `subscriber` holds, oldest first, with their address: the live answer to
    /// "who has this port" for `ctl whois`.
    pub fn blocks_of(&self, subscriber: SubscriberId) -> Vec<(Ipv4Addr, PortRange)> {
        let Some(s) = self.subscribers.get(&subscriber) else {
            return Vec::new();
        };
        let Some(a) = self.addresses.get(s.address as usize) else {
            return Vec::new();
        };
        s.blocks
            .iter()
            .filter_map(|&b| Some((a.addr, self.settings.block_ports(b)?)))
            .collect()
    }

    /// The subscriber holding the block that `external` is in, if any.
    pub fn owner_of(&self, external: Endpoint) -> Option<SubscriberId> {
        let a = self.addresses.get(self.index.get(external.addr)?)?;
        let b = self.settings.block_of(external.port)?;
        a.blocks.get(usize::from(b))?.owner
    }

    /// Free blocks (of this allocator's share) on each address, in pool order.
    pub fn free_blocks(&self) -> Vec<(Ipv4Addr, u32)> {
        self.addresses.iter().map(|a| (a.addr, a.room())).collect()
    }

    /// Block records dropped because `poll_event` was not called for too long.
    pub fn events_lost(&self) -> u64 {
        self.events_lost
    }

    fn push_event(&mut self, e: AllocEvent) {
        if self.events.len() >= self.max_events {
            self.events_lost += 1;
        } else {
            self.events.push_back(e);
        }
    }

    /// Frees every held port whose hold-down has passed at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((h, until)) = self.held.pop_expired(now) {
            self.free_held(h, until);
        }
    }

    /// Frees a held port; its block goes back to the pool at `at` if that was its last port.
    fn free_held(&mut self, h: Held, at: Instant) {
        let Some(a) = self.addresses.get_mut(h.address as usize) else {
            return;
        };
        if a.ports[h.proto.index()].free_held(h.port) {
            self.unbusy(h.address as usize, h.port, at);
        }
    }

    /// One port of the block holding `port` on address `i` is free again.
    fn unbusy(&mut self, i: usize, port: u16, at: Instant) {
        let Some(b) = self.settings.block_of(port) else {
            return;
        };
        let Some(block) = self
            .addresses
            .get_mut(i)
            .and_then(|a| a.blocks.get_mut(usize::from(b)))
        else {
            return;
        };
        block.busy = block.busy.saturating_sub(1);
        if block.busy == 0 {
            self.release_block(i, b, at);
        }
    }

    /// Block `b` of address `i` has no port in use or held: back to the pool.
    fn release_block(&mut self, i: usize, b: u16, at: Instant) {
        let (Some(a), Some(ports)) = (self.addresses.get_mut(i), self.settings.block_ports(b))
        else {
            return;
        };
        let Some(owner) = a
            .blocks
            .get_mut(usize::from(b))
            .and_then(|s| s.owner.take())
        else {
            return;
        };
        a.free.push(b);
        self.room.set(i, a.room());
        if let Some(s) = self.subscribers.get_mut(&owner) {
            s.blocks.retain(|&x| x != b);
            if s.blocks.is_empty() {
                self.subscribers.remove(&owner);
                a.subscribers = a.subscribers.saturating_sub(1);
            }
        }
        let external = a.addr;
        self.push_event(AllocEvent::BlockReleased(PortBlock {
            at,
            subscriber: owner,
            external,
            ports,
        }));
    }

    /// The address with the most free blocks, for a new subscriber (RFC 6888 REQ-2: spread
    /// evenly): the first maximum in pool order from a random address on, so ties go to a
    /// random one of them. `None` when no address has a free block. O(log n) in the pool.
    fn roomiest(&self, rng: &mut Rng) -> Option<usize> {
        let n = u32::try_from(self.addresses.len())
            .ok()
            .filter(|&n| n > 0)?;
        let start = rng.below(n) as usize;
        self.room
            .choose(start)
            .filter(|&(_, free)| free > 0)
            .map(|(i, _)| i)
    }

    /// Gives `subscriber` a uniformly random free block of address `i`; `None` if it has none.
    fn new_block(
        &mut self,
        i: usize,
        subscriber: SubscriberId,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<u16> {
        let a = self.addresses.get(i)?;
        let n = u32::try_from(a.free.len()).ok().filter(|&n| n > 0)?;
        self.give_block(i, rng.below(n) as usize, subscriber, now)
    }

    /// Gives `subscriber` the free block at position `at` of address `i`'s free list.
    fn give_block(
        &mut self,
        i: usize,
        at: usize,
        subscriber: SubscriberId,
        now: Instant,
    ) -> Option<u16> {
        let a = self.addresses.get_mut(i)?;
        if at >= a.free.len() {
            return None;
        }
        let b = a.free.swap_remove(at);
        self.room.set(i, a.room());
        if let Some(block) = a.blocks.get_mut(usize::from(b)) {
            block.owner = Some(subscriber);
        }
        let external = a.addr;
        let ports = self.settings.block_ports(b)?;
        match self.subscribers.get_mut(&subscriber) {
            Some(s) => s.blocks.push(b),
            None => {
                a.subscribers += 1;
                let mut blocks =
                    Vec::with_capacity(usize::from(self.settings.max_blocks_per_subscriber.max(1)));
                blocks.push(b);
                self.subscribers.insert(
                    subscriber,
                    Subscriber {
                        address: u32::try_from(i).ok()?,
                        blocks,
                    },
                );
            }
        }
        self.push_event(AllocEvent::BlockAllocated(PortBlock {
            at: now,
            subscriber,
            external,
            ports,
        }));
        Some(b)
    }

    /// Bytes the allocator holds, by the structures' own sizes: the port maps, block table and
    /// free list of every address, the choice of a new subscriber's address, the hold-down
    /// queue, each subscriber's entry and block list, and the event queue. What one more
    /// subscriber costs is its entry and block list; the rest is fixed by the pool.
    pub fn memory_bytes(&self) -> usize {
        use core::mem::size_of;
        let addresses: usize = self
            .addresses
            .iter()
            .map(|a| {
                a.ports.iter().map(PortSet::heap_bytes).sum::<usize>()
                    + size_of_val(&*a.blocks)
                    + a.free.capacity() * size_of::<u16>()
            })
            .sum();
        let blocks: usize = self
            .subscribers
            .values()
            .map(|s| s.blocks.capacity() * size_of::<u16>())
            .sum();
        self.addresses.capacity() * size_of::<Address>()
            + addresses
            + self.index.memory_bytes()
            + self.room.memory_bytes()
            + self.held.memory_bytes()
            + super::map_bytes(&self.subscribers)
            + blocks
            + self.events.capacity() * size_of::<AllocEvent>()
    }
}

impl BlockAllocator {
    /// Picks and takes an endpoint for `req`, reserved or not ([`Reserved`] filters).
    fn pick(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        let subscriber = req.subscriber;
        let parity = if self.settings.port_parity && req.proto != Protocol::Icmp {
            Parity::of(req.internal.port)
        } else {
            Parity::Any
        };
        let i = match self.subscribers.get(&subscriber) {
            Some(s) => {
                let i = s.address as usize;
                let a = self.addresses.get_mut(i).ok_or(AllocError::Exhausted)?;
                for &b in &s.blocks {
                    if let Some(port) = take_in_block(&self.settings, a, b, req.proto, parity, rng)
                    {
                        return Ok(Endpoint::new(a.addr, port));
                    }
                }
                if s.blocks.len() >= usize::from(self.settings.max_blocks_per_subscriber) {
                    return Err(AllocError::SubscriberPortLimit);
                }
                i
            }
            None => {
                if self.settings.max_blocks_per_subscriber == 0 {
                    return Err(AllocError::SubscriberPortLimit);
                }
                self.roomiest(rng).ok_or(AllocError::Exhausted)?
            }
        };
        let paired = self.subscribers.contains_key(&subscriber);
        let Some(b) = self.new_block(i, subscriber, req.now, rng) else {
            return Err(if paired {
                AllocError::PairedAddressFull
            } else {
                AllocError::Exhausted
            });
        };
        // A fresh block has every port free, and at least one of each parity.
        let a = self.addresses.get_mut(i).ok_or(AllocError::Exhausted)?;
        let port = take_in_block(&self.settings, a, b, req.proto, parity, rng)
            .ok_or(AllocError::Exhausted)?;
        Ok(Endpoint::new(a.addr, port))
    }
}

impl PortAllocator for BlockAllocator {
    fn held_down(&self) -> Vec<HeldPort> {
        self.held
            .iter()
            .filter_map(|h| {
                let external = Endpoint::new(self.addresses.get(h.address as usize)?.addr, h.port);
                let subscriber = match self.owner_of(external) {
                    Some(SubscriberId::Ipv4(a)) => Some(a),
                    _ => None,
                };
                Some(HeldPort {
                    proto: h.proto,
                    external,
                    released_at: h.released_at,
                    subscriber,
                })
            })
            .collect()
    }

    /// The port must be in one of the subscriber's blocks, or in a free block of its address
    /// (any address, for a subscriber without blocks) that it may still take.
    fn allocate_at(&mut self, req: &AllocRequest, want: Endpoint) -> Result<Endpoint, AllocError> {
        self.expire(req.now);
        let i = self.index.get(want.addr).ok_or(AllocError::Unavailable)?;
        let b = self
            .settings
            .block_of(want.port)
            .ok_or(AllocError::Unavailable)?;
        if self.reserved.contains(req.proto, want) {
            return Err(AllocError::Unavailable);
        }
        let subscriber = req.subscriber;
        let held = match self.subscribers.get(&subscriber) {
            Some(s) if s.address as usize != i => return Err(AllocError::PairedAddressFull),
            Some(s) if s.blocks.contains(&b) => true,
            Some(s) if s.blocks.len() >= usize::from(self.settings.max_blocks_per_subscriber) => {
                return Err(AllocError::SubscriberPortLimit);
            }
            None if self.settings.max_blocks_per_subscriber == 0 => {
                return Err(AllocError::SubscriberPortLimit);
            }
            _ => false,
        };
        let a = self.addresses.get(i).ok_or(AllocError::Unavailable)?;
        if !held {
            // A block that is free has every port free: taking it cannot fail below.
            let at = a
                .free
                .iter()
                .position(|&f| f == b)
                .ok_or(AllocError::Unavailable)?;
            self.give_block(i, at, subscriber, req.now)
                .ok_or(AllocError::Unavailable)?;
        }
        let a = self.addresses.get_mut(i).ok_or(AllocError::Unavailable)?;
        if !a.ports[req.proto.index()].take(want.port) {
            return Err(AllocError::Unavailable);
        }
        if let Some(block) = a.blocks.get_mut(usize::from(b)) {
            block.busy += 1;
        }
        Ok(want)
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
            self.release(p.proto, SubscriberId::of(p.internal), p.external, now);
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
        let Some(b) = self.settings.block_of(external.port) else {
            return;
        };
        let hold = self.held.enabled();
        let Some(a) = self.addresses.get_mut(i) else {
            return;
        };
        // Only the block's owner can give one of its ports back.
        let owner = a.blocks.get(usize::from(b)).and_then(|s| s.owner);
        if owner != Some(subscriber) {
            return;
        }
        let ports = &mut a.ports[proto.index()];
        if hold {
            if !ports.hold(external.port) {
                return;
            }
            let pushed_out = self.held.push(Held {
                released_at: now,
                address: u32::try_from(i).unwrap_or(u32::MAX),
                port: external.port,
                proto,
            });
            if let Some(h) = pushed_out {
                self.free_held(h, now);
            }
        } else if ports.free_in_use(external.port) {
            self.unbusy(i, external.port, now);
        }
    }

    fn paired_address(&self, subscriber: Ipv4Addr) -> Option<Ipv4Addr> {
        let s = self.subscribers.get(&SubscriberId::Ipv4(subscriber))?;
        self.addresses.get(s.address as usize).map(|a| a.addr)
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

    fn port_sets(&self) -> Vec<PortSetUsage> {
        self.addresses
            .iter()
            .map(|a| {
                let (mut in_use, mut held_down) = (0, 0);
                for (b, state) in a.blocks.iter().enumerate() {
                    if state.owner.is_none() {
                        continue;
                    }
                    // An owned block stays its subscriber's until the hold-down of its last
                    // port ends; with no port in use it is only waiting for that.
                    let live = u16::try_from(b)
                        .ok()
                        .and_then(|b| self.settings.block_ports(b))
                        .is_some_and(|r| a.ports.iter().any(|p| p.any_in_use(r)));
                    if live {
                        in_use += 1;
                    } else {
                        held_down += 1;
                    }
                }
                PortSetUsage {
                    addr: a.addr,
                    kind: PortSetKind::Block,
                    size: self.settings.block_size,
                    in_use,
                    held_down,
                    free: a.room(),
                }
            })
            .collect()
    }

    fn poll_event(&mut self) -> Option<AllocEvent> {
        self.events.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest};
    use std::collections::{BTreeMap, HashSet};

    const X1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const X2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    const X3: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
    const X4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 4);

    fn settings(block_size: u16, max_blocks: u16) -> BlockSettings {
        BlockSettings {
            block_size,
            max_blocks_per_subscriber: max_blocks,
            port_parity: false,
            hold_down: Duration::from_secs(120),
            max_held_down: 1 << 20,
            share: Share::WHOLE,
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

    fn events(a: &mut BlockAllocator) -> Vec<AllocEvent> {
        core::iter::from_fn(|| a.poll_event()).collect()
    }

    fn block(at: Instant, who: Ipv4Addr, external: Ipv4Addr, first: u16, size: u16) -> PortBlock {
        PortBlock {
            at,
            subscriber: SubscriberId::Ipv4(who),
            external,
            ports: PortRange {
                first,
                last: first + (size - 1),
            },
        }
    }

    /// A suggested endpoint is a port of one of the subscriber's blocks, or of a free block of
    /// its address that it may still take (which it then holds, and the log says so).
    #[test]
    fn allocate_at_takes_a_port_of_the_subscribers_block_or_a_free_block() {
        let mut a = BlockAllocator::new(&[X1, X2], settings(512, 2));
        let s = subscriber(1);
        let at = |port| Endpoint::new(X1, port);
        assert_eq!(a.allocate_at(&udp(s, 5000), at(2000)), Ok(at(2000)));
        assert_eq!(
            events(&mut a),
            [AllocEvent::BlockAllocated(block(
                Instant::ZERO,
                s,
                X1,
                1536,
                512
            ))]
        );
        assert_eq!(a.allocate_at(&udp(s, 5001), at(2001)), Ok(at(2001)));
        assert_eq!(events(&mut a), [], "its own block");
        let unavailable = Err(AllocError::Unavailable);
        assert_eq!(a.allocate_at(&udp(s, 5001), at(2001)), unavailable, "taken");
        assert_eq!(
            a.allocate_at(&udp(subscriber(2), 5000), at(2002)),
            unavailable,
            "another's block"
        );
        assert_eq!(
            a.allocate_at(&udp(s, 5002), Endpoint::new(X2, 3000)),
            Err(AllocError::PairedAddressFull)
        );
        assert_eq!(
            a.allocate_at(&udp(s, 5002), at(3000)),
            Ok(at(3000)),
            "a second block"
        );
        assert_eq!(
            a.allocate_at(&udp(s, 5003), at(4000)),
            Err(AllocError::SubscriberPortLimit),
            "two blocks at most"
        );
        assert_eq!(
            a.allocate_at(&udp(subscriber(3), 5000), at(80)),
            unavailable,
            "in no block"
        );
        // Released like any other port: its block goes back after the hold-down.
        for port in [2000, 2001] {
            a.release(
                Protocol::Udp,
                SubscriberId::Ipv4(s),
                at(port),
                Instant::ZERO,
            );
        }
        let later = req(Protocol::Udp, subscriber(2), 5000, Instant::from_secs(121));
        assert_eq!(
            a.allocate_at(&later, Endpoint::new(X1, 2002)),
            Ok(Endpoint::new(X1, 2002)),
            "the block went back to the pool, and another subscriber may take it"
        );
    }

    /// What `ctl pools` shows for port blocks: blocks in use, in hold-down (RFC 6888 REQ-8) and
    /// free, per address, adding up over the workers' shares to the address's blocks.
    #[test]
    fn port_sets_are_blocks_in_use_held_down_and_free() {
        let mut a = BlockAllocator::new(&[X1, X2], settings(512, 2));
        let mut rng = Rng::new(3);
        let sets = |a: &BlockAllocator, x: Ipv4Addr| {
            let s = a
                .port_sets()
                .into_iter()
                .find(|s| s.addr == x)
                .expect("listed");
            assert_eq!((s.kind, s.size), (PortSetKind::Block, 512));
            (s.in_use, s.held_down, s.free)
        };
        assert_eq!(sets(&a, X1), (0, 0, 126), "64512 / 512 blocks");
        let me = subscriber(1);
        let e = a.allocate(&udp(me, 5000), &mut rng).expect("a block");
        let other = if e.addr == X1 { X2 } else { X1 };
        // Ports of two protocols in one block: still one block.
        let t = a
            .allocate(&req(Protocol::Tcp, me, 5000, Instant::ZERO), &mut rng)
            .expect("same block");
        assert_eq!(sets(&a, e.addr), (1, 0, 125));
        assert_eq!(sets(&a, other), (0, 0, 126));
        let released = Instant::from_secs(10);
        a.release(
            Protocol::Tcp,
            SubscriberId::of(Endpoint::new(me, 5000)),
            t,
            released,
        );
        assert_eq!(sets(&a, e.addr), (1, 0, 125), "a UDP port is still in use");
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 5000)),
            e,
            released,
        );
        assert_eq!(sets(&a, e.addr), (0, 1, 125), "only held ports left");
        a.handle_timeout(released + Duration::from_secs(120));
        assert_eq!(sets(&a, e.addr), (0, 0, 126), "back in the pool");

        // Workers' shares split the blocks; their figures add up.
        let free: u32 = (0..3)
            .map(|i| {
                let mut s = settings(512, 2);
                s.share = Share::new(i, 3).expect("share");
                sets(&BlockAllocator::new(&[X1], s), X1).2
            })
            .sum();
        assert_eq!(free, 126);
    }

    #[test]
    fn rfc6888_req4_subscriber_port_limit_exact() {
        let mut a = BlockAllocator::new(&[X1], settings(64, 2));
        let mut rng = Rng::new(1);
        let me = subscriber(1);
        for proto in [Protocol::Udp, Protocol::Tcp, Protocol::Icmp] {
            let mut got = HashSet::new();
            for i in 0..128u16 {
                let e = a.allocate(&req(proto, me, 2000 + i, Instant::ZERO), &mut rng);
                assert!(
                    got.insert(e.expect("within the limit")),
                    "{proto}: no reuse"
                );
            }
            assert_eq!(
                a.allocate(&req(proto, me, 5000, Instant::ZERO), &mut rng),
                Err(AllocError::SubscriberPortLimit),
                "{proto}: port 129 is over the limit"
            );
            let blocks = a.blocks_of(SubscriberId::Ipv4(me));
            assert!(got.iter().all(|e| {
                blocks
                    .iter()
                    .any(|(x, r)| *x == e.addr && r.contains(e.port))
            }));
        }
        // One block record per block, not per port or protocol.
        assert_eq!(events(&mut a).len(), 2);
        // Other subscribers are unaffected.
        assert!(a.allocate(&udp(subscriber(2), 9), &mut rng).is_ok());
    }

    #[test]
    fn rfc6888_req8_block_released_after_hold_down() {
        // Two blocks on one address: a third subscriber needs one of them back.
        let mut a = BlockAllocator::new(&[X1], settings(32256, 1));
        let mut rng = Rng::new(2);
        let (s1, s2, s3) = (subscriber(1), subscriber(2), subscriber(3));
        let e1 = a.allocate(&udp(s1, 5000), &mut rng).expect("first block");
        a.allocate(&udp(s2, 5000), &mut rng).expect("second block");
        let first = if e1.port < 1024 + 32256 {
            1024
        } else {
            1024 + 32256
        };
        assert_eq!(
            events(&mut a)[0],
            AllocEvent::BlockAllocated(block(Instant::ZERO, s1, X1, first, 32256))
        );
        let released = Instant::from_secs(10);
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(s1, 5000)),
            e1,
            released,
        );
        assert_eq!(a.usage()[0].held_down, [0, 0, 1]);
        let edge = released + Duration::from_secs(120);

        // Still held 1 ms before the edge: the block is s1's, the pool has none.
        let before = edge - Duration::from_millis(1);
        a.handle_timeout(before);
        assert_eq!(events(&mut a), vec![]);
        assert_eq!(
            a.allocate(&req(Protocol::Udp, s3, 1, before), &mut rng),
            Err(AllocError::Exhausted)
        );
        assert_eq!(a.blocks_of(SubscriberId::Ipv4(s1)).len(), 1);

        // Free exactly at the edge, and the release is stamped with the edge.
        let e3 = a
            .allocate(&req(Protocol::Udp, s3, 1, edge), &mut rng)
            .expect("the block is back");
        assert!((first..=first + 32255).contains(&e3.port));
        assert_eq!(
            events(&mut a),
            vec![
                AllocEvent::BlockReleased(block(edge, s1, X1, first, 32256)),
                AllocEvent::BlockAllocated(block(edge, s3, X1, first, 32256)),
            ]
        );
        assert!(a.blocks_of(SubscriberId::Ipv4(s1)).is_empty());
        assert_eq!(a.usage()[0].subscribers, 2);
    }

    #[test]
    fn rfc6888_req8_released_block_is_stamped_with_its_edge_even_if_noticed_late() {
        let mut a = BlockAllocator::new(&[X1], settings(512, 4));
        let mut rng = Rng::new(3);
        let me = subscriber(1);
        let e = a.allocate(&udp(me, 7), &mut rng).expect("ok");
        let b = a.blocks_of(SubscriberId::Ipv4(me))[0].1;
        events(&mut a);
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 7)),
            e,
            Instant::from_secs(1),
        );
        a.handle_timeout(Instant::from_secs(1000));
        assert_eq!(
            events(&mut a),
            vec![AllocEvent::BlockReleased(block(
                Instant::from_secs(121),
                me,
                X1,
                b.first,
                512
            ))]
        );
    }

    #[test]
    fn rfc6888_req8_held_port_of_a_live_block_is_not_reused() {
        // A block of 2 with parity: one port of each parity, so the released port must wait.
        let mut s = settings(2, 1);
        s.port_parity = true;
        let mut a = BlockAllocator::new(&[X1], s);
        let mut rng = Rng::new(4);
        let me = subscriber(1);
        let even = a.allocate(&udp(me, 10), &mut rng).expect("even");
        let odd = a.allocate(&udp(me, 11), &mut rng).expect("odd");
        assert_eq!((even.port % 2, odd.port % 2), (0, 1));
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(me, 10)),
            even,
            Instant::ZERO,
        );
        let at = |ms| req(Protocol::Udp, me, 12, Instant::from_millis(ms));
        assert_eq!(
            a.allocate(&at(119_999), &mut rng),
            Err(AllocError::SubscriberPortLimit)
        );
        assert_eq!(a.allocate(&at(120_000), &mut rng), Ok(even));
        assert_eq!(
            events(&mut a).len(),
            1,
            "the block stayed the subscriber's throughout"
        );
    }

    #[test]
    fn rfc6888_req8_cap_on_held_ports_frees_the_oldest_early() {
        let mut s = settings(64, 1);
        s.max_held_down = 1;
        let mut a = BlockAllocator::new(&[X1], s);
        let mut rng = Rng::new(5);
        let (s1, s2) = (subscriber(1), subscriber(2));
        let e1 = a.allocate(&udp(s1, 1), &mut rng).expect("ok");
        let e2 = a.allocate(&udp(s2, 1), &mut rng).expect("ok");
        events(&mut a);
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(s1, 1)),
            e1,
            Instant::from_secs(1),
        );
        a.release(
            Protocol::Udp,
            SubscriberId::of(Endpoint::new(s2, 1)),
            e2,
            Instant::from_secs(2),
        );
        // s1's port was pushed out by s2's: its block went back at s2's release.
        let ev = events(&mut a);
        assert!(
            matches!(ev[..], [AllocEvent::BlockReleased(b)] if b.at == Instant::from_secs(2) && b.subscriber == SubscriberId::Ipv4(s1)),
            "{ev:?}"
        );
        assert_eq!(a.usage()[0].held_down, [0, 0, 1]);
    }

    #[test]
    fn a_new_block_only_when_the_subscribers_blocks_are_full() {
        let mut a = BlockAllocator::new(&[X1, X2], settings(64, 3));
        let mut rng = Rng::new(6);
        let me = subscriber(1);
        for i in 0..64u16 {
            a.allocate(&udp(me, 3000 + i), &mut rng).expect("ok");
            assert_eq!(a.blocks_of(SubscriberId::Ipv4(me)).len(), 1);
        }
        // TCP has its own port space in the same block.
        for i in 0..64u16 {
            a.allocate(&req(Protocol::Tcp, me, 3000 + i, Instant::ZERO), &mut rng)
                .expect("ok");
        }
        assert_eq!(a.blocks_of(SubscriberId::Ipv4(me)).len(), 1);
        a.allocate(&udp(me, 4000), &mut rng).expect("ok");
        let blocks = a.blocks_of(SubscriberId::Ipv4(me));
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            blocks[0].0, blocks[1].0,
            "paired: one address (RFC 6888 REQ-2)"
        );
        assert_eq!(events(&mut a).len(), 2);
    }

    #[test]
    fn rfc6888_req2_new_subscribers_spread_evenly() {
        let mut a = BlockAllocator::new(&[X1, X2, X3, X4], settings(512, 2));
        let mut rng = Rng::new(7);
        for n in 0..400 {
            for p in 0..3u16 {
                let e = a
                    .allocate(&udp(subscriber(n), 5000 + p), &mut rng)
                    .expect("ok");
                let blocks = a.blocks_of(SubscriberId::Ipv4(subscriber(n)));
                assert!(blocks.iter().all(|(x, _)| *x == e.addr));
            }
        }
        for u in a.usage() {
            assert_eq!(u.subscribers, 100, "{u:?}");
        }
        // 126 blocks per address, 100 taken on each.
        for (_, free) in a.free_blocks() {
            assert_eq!(free, 26);
        }
    }

    #[test]
    fn rfc6888_req15_blocks_and_ports_are_hard_to_guess() {
        let mut firsts = HashSet::new();
        let mut blocks = HashSet::new();
        for seed in 0..64 {
            let mut a = BlockAllocator::new(&[X1], settings(512, 1));
            let e = a.allocate(&udp(subscriber(0), 5000), &mut Rng::new(seed));
            let e = e.expect("ok");
            firsts.insert(e.port);
            blocks.insert(a.settings().block_of(e.port));
        }
        assert!(firsts.len() > 60, "{}", firsts.len());
        assert!(blocks.len() > 30, "{}", blocks.len());
    }

    #[test]
    fn rfc4787_req4_parity_preserved_in_blocks() {
        let mut s = settings(256, 2);
        s.port_parity = true;
        let mut a = BlockAllocator::new(&[X1], s);
        let mut rng = Rng::new(8);
        let me = subscriber(1);
        // 128 even and 128 odd ports per block, two blocks: 256 of each parity.
        for i in 0..256u16 {
            let even = a.allocate(&udp(me, 2 * i), &mut rng).expect("even");
            assert_eq!(even.port % 2, 0);
        }
        assert_eq!(
            a.allocate(&udp(me, 2000), &mut rng),
            Err(AllocError::SubscriberPortLimit)
        );
        for i in 0..256u16 {
            let odd = a.allocate(&udp(me, 2 * i + 1), &mut rng).expect("odd");
            assert_eq!(odd.port % 2, 1);
        }
        // ICMP identifiers have no parity.
        let icmp = req(Protocol::Icmp, me, 2, Instant::ZERO);
        let ids: HashSet<u16> = (0..512)
            .map(|_| a.allocate(&icmp, &mut rng).expect("ok").port % 2)
            .collect();
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn well_known_ports_are_never_in_blocks() {
        let mut a = BlockAllocator::new(&[X1], settings(2048, 31));
        let mut rng = Rng::new(9);
        for p in [0u16, 1, 22, 53, 80, 443, 1023] {
            let e = a.allocate(&udp(subscriber(1), p), &mut rng).expect("ok");
            assert!(e.port >= 1024, "{p} -> {e}");
        }
        let s = a.settings();
        assert_eq!(s.blocks_per_address(), 31, "the top 1024 ports are unused");
        assert_eq!(s.block_of(1023), None);
        assert_eq!(s.block_of(1024), Some(0));
        assert_eq!(s.block_of(1024 + 31 * 2048 - 1), Some(30));
        assert_eq!(s.block_of(1024 + 31 * 2048), None);
        assert_eq!(
            s.block_ports(30),
            Some(PortRange {
                first: 62464,
                last: 64511
            })
        );
        assert_eq!(
            BlockSettings {
                block_size: 512,
                ..*s
            }
            .block_ports(125)
            .map(|r| r.last),
            Some(65535)
        );
    }

    #[test]
    fn out_of_blocks_exhausted_or_paired_address_full() {
        let mut a = BlockAllocator::new(&[X1], settings(32256, 2));
        let mut rng = Rng::new(10);
        a.allocate(&udp(subscriber(1), 1), &mut rng).expect("ok");
        a.allocate(&udp(subscriber(2), 1), &mut rng).expect("ok");
        assert_eq!(
            a.allocate(&udp(subscriber(3), 1), &mut rng),
            Err(AllocError::Exhausted)
        );
        let mut a = BlockAllocator::new(&[X1], settings(64512 / 3, 3));
        a.allocate(&udp(subscriber(1), 1), &mut rng).expect("ok");
        a.allocate(&udp(subscriber(2), 1), &mut rng).expect("ok");
        a.allocate(&udp(subscriber(3), 1), &mut rng).expect("ok");
        for i in 0..(64512 / 3 - 1) {
            a.allocate(&udp(subscriber(1), 2 + i), &mut rng)
                .expect("ok");
        }
        assert_eq!(
            a.allocate(&udp(subscriber(1), 1), &mut rng),
            Err(AllocError::PairedAddressFull)
        );
        assert_eq!(
            BlockAllocator::new(&[], settings(64, 1)).allocate(&udp(subscriber(1), 1), &mut rng),
            Err(AllocError::Exhausted)
        );
    }

    #[test]
    fn release_of_what_is_not_yours_is_ignored() {
        let mut a = BlockAllocator::new(&[X1], settings(64, 1));
        let mut rng = Rng::new(11);
        let me = Endpoint::new(subscriber(1), 5000);
        let e = a.allocate(&udp(me.addr, me.port), &mut rng).expect("ok");
        let before = a.usage();
        let stranger = Endpoint::new(subscriber(2), 5000);
        a.release(Protocol::Udp, SubscriberId::of(stranger), e, Instant::ZERO);
        a.release(
            Protocol::Udp,
            SubscriberId::of(me),
            Endpoint::new(X2, e.port),
            Instant::ZERO,
        );
        a.release(Protocol::Tcp, SubscriberId::of(me), e, Instant::ZERO);
        a.release(
            Protocol::Udp,
            SubscriberId::of(me),
            Endpoint::new(X1, 80),
            Instant::ZERO,
        );
        assert_eq!(a.usage(), before);
        assert_eq!(a.owner_of(e), Some(SubscriberId::Ipv4(me.addr)));
        a.release(Protocol::Udp, SubscriberId::of(me), e, Instant::ZERO);
        a.release(Protocol::Udp, SubscriberId::of(me), e, Instant::ZERO);
        assert_eq!(
            a.usage()[0].held_down,
            [0, 0, 1],
            "released twice, held once"
        );
        assert!(a.owns(X1) && !a.owns(X2));
    }

    #[test]
    fn zero_hold_down_returns_the_block_at_once() {
        let mut s = settings(64, 1);
        s.hold_down = Duration::ZERO;
        let mut a = BlockAllocator::new(&[X1], s);
        let mut rng = Rng::new(12);
        let me = Endpoint::new(subscriber(1), 1);
        let e = a.allocate(&udp(me.addr, 1), &mut rng).expect("ok");
        a.release(
            Protocol::Udp,
            SubscriberId::of(me),
            e,
            Instant::from_secs(3),
        );
        let ev = events(&mut a);
        assert!(
            matches!(ev[..], [AllocEvent::BlockAllocated(_), AllocEvent::BlockReleased(b)] if b.at == Instant::from_secs(3))
        );
        assert_eq!(a.usage()[0].subscribers, 0);
    }

    #[test]
    fn a_share_hands_out_only_its_own_blocks() {
        let count = 3;
        for index in 0..count {
            let mut s = settings(512, 4);
            s.share = Share::new(index, count).expect("valid");
            let mut a = BlockAllocator::new(&[X1, X2], s);
            let mut rng = Rng::new(13);
            for n in 0..50 {
                for p in 0..20 {
                    let e = a.allocate(&udp(subscriber(n), p), &mut rng).expect("ok");
                    assert_eq!(s.worker_of(e.port, count), Some(index), "{e}");
                }
            }
            let free: u32 = a.free_blocks().iter().map(|f| f.1).sum();
            assert_eq!(
                free,
                2 * 42 - 50,
                "42 of 126 blocks per address are this share's"
            );
        }
    }

    #[test]
    fn settings_come_from_the_config() {
        let mut cfg = Config::new(vec![X1], Ipv4Addr::new(100, 64, 0, 1));
        cfg.behavior.port_parity = true;
        cfg.behavior.timers.port_hold_down = 300;
        cfg.limits.max_ports_in_hold_down = 9;
        let spec = PortBlockSpec {
            block_size: 1024,
            max_blocks_per_subscriber: 4,
        };
        assert_eq!(
            BlockSettings::from_config(&cfg, &spec),
            BlockSettings {
                block_size: 1024,
                max_blocks_per_subscriber: 4,
                port_parity: true,
                hold_down: Duration::from_secs(300),
                max_held_down: 9,
                share: Share::WHOLE,
            }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate { proto: usize, sub: u32, port: u16 },
        Release { pick: usize },
        Bogus { proto: usize, sub: u32, port: u16 },
        Advance { millis: u64 },
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0usize..3, 0u32..5, any::<u16>())
                .prop_map(|(proto, sub, port)| Op::Allocate { proto, sub, port }),
            4 => any::<usize>().prop_map(|pick| Op::Release { pick }),
            1 => (0usize..3, 0u32..5, 1000u16..1200)
                .prop_map(|(proto, sub, port)| Op::Bogus { proto, sub, port }),
            2 => (0u64..40_000).prop_map(|millis| Op::Advance { millis }),
            1 => proptest::prelude::Just(Op::Tick),
        ]
    }

    proptest! {
        /// Against a model of lists: never a live or held port twice, never more than the block
        /// limit, every port inside one of the subscriber's blocks on one address, and block
        /// records that pair up (allocated, then released, per block).
        #[test]
        fn random_sequences_keep_every_rule(
            seed in any::<u64>(),
            block_size in proptest::prelude::prop_oneof![2u16..6, 16u16..40],
            max_blocks in 1u16..4,
            parity in any::<bool>(),
            hold_ms in proptest::prelude::prop_oneof![proptest::prelude::Just(0u64), 1u64..100_000],
            cap in 0usize..8,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut s = settings(block_size, max_blocks);
            s.port_parity = parity;
            s.hold_down = Duration::from_millis(hold_ms);
            s.max_held_down = cap;
            let mut a = BlockAllocator::new(&[X1, X2], s);
            let mut rng = Rng::new(seed);
            let mut now = Instant::ZERO;
            let mut live: Vec<(Protocol, Endpoint, Endpoint)> = Vec::new();
            let mut held: Vec<(Protocol, Endpoint, Instant)> = Vec::new();
            // Open blocks from the records: (address, first port) -> subscriber.
            let mut open: BTreeMap<(Ipv4Addr, u16), SubscriberId> = BTreeMap::new();
            let hold = hold_ms > 0 && cap > 0;
            for op in ops {
                match op {
                    Op::Allocate { proto, sub, port } => {
                        let proto = Protocol::ALL[proto];
                        let internal = Endpoint::new(subscriber(sub), port);
                        let r = a.allocate(&req(proto, internal.addr, port, now), &mut rng);
                        held.retain(|h| now < h.2 + s.hold_down);
                        if let Ok(e) = r {
                            prop_assert!(e.port >= 1024);
                            prop_assert!(!live.iter().any(|l| l.0 == proto && l.2 == e), "{e} live");
                            prop_assert!(!held.iter().any(|h| h.0 == proto && h.1 == e), "{e} held");
                            if parity && proto != Protocol::Icmp {
                                prop_assert_eq!(e.port % 2, port % 2);
                            }
                            live.push((proto, internal, e));
                        }
                    }
                    Op::Release { pick } => {
                        if live.is_empty() {
                            continue;
                        }
                        let (proto, internal, e) = live.swap_remove(pick % live.len());
                        a.release(proto, SubscriberId::of(internal), e, now);
                        held.retain(|h| now < h.2 + s.hold_down);
                        if hold {
                            held.push((proto, e, now));
                            if held.len() > cap {
                                held.remove(0);
                            }
                        }
                    }
                    Op::Bogus { proto, sub, port } => {
                        let proto = Protocol::ALL[proto];
                        let internal = Endpoint::new(subscriber(sub), port);
                        let e = Endpoint::new(X1, port + 1000);
                        if live.iter().any(|l| l.0 == proto && l.2 == e) {
                            continue;
                        }
                        a.release(proto, SubscriberId::of(internal), e, now);
                        held.retain(|h| now < h.2 + s.hold_down);
                    }
                    Op::Advance { millis } => now = now + Duration::from_millis(millis),
                    Op::Tick => {
                        a.handle_timeout(now);
                        held.retain(|h| now < h.2 + s.hold_down);
                    }
                }
                while let Some(ev) = a.poll_event() {
                    match ev {
                        AllocEvent::BlockAllocated(b) => {
                            prop_assert!(b.at <= now);
                            prop_assert_eq!(b.ports.len(), u32::from(block_size));
                            let prev = open.insert((b.external, b.ports.first), b.subscriber);
                            prop_assert!(prev.is_none(), "{b:?} allocated twice");
                        }
                        AllocEvent::BlockReleased(b) => {
                            prop_assert!(b.at <= now);
                            let prev = open.remove(&(b.external, b.ports.first));
                            prop_assert_eq!(prev, Some(b.subscriber), "{:?} released unopened", b);
                        }
                    }
                }
                // Every subscriber: within its limit, on one address, its live ports in its
                // blocks, and its blocks exactly the open records.
                for sub in 0..5 {
                    let id = SubscriberId::Ipv4(subscriber(sub));
                    let blocks = a.blocks_of(id);
                    prop_assert!(blocks.len() <= usize::from(max_blocks));
                    prop_assert!(blocks.iter().all(|b| b.0 == blocks[0].0));
                    let recorded: Vec<_> = open.iter().filter(|o| *o.1 == id).map(|o| *o.0).collect();
                    let mut mine: Vec<_> = blocks.iter().map(|b| (b.0, b.1.first)).collect();
                    mine.sort();
                    prop_assert_eq!(mine, recorded);
                    for l in live.iter().filter(|l| l.1.addr == subscriber(sub)) {
                        prop_assert!(blocks.iter().any(|(x, r)| *x == l.2.addr && r.contains(l.2.port)));
                    }
                }
                for u in a.usage() {
                    let mut in_use = [0u32; 3];
                    for l in live.iter().filter(|l| l.2.addr == u.addr) {
                        in_use[l.0.index()] += 1;
                    }
                    prop_assert_eq!(u.in_use, in_use);
                }
            }
        }
    }

    /// The first address with the most free blocks from `start` on, by a scan of the pool: what
    /// `roomiest` answered before the tree.
    fn roomiest_by_scan(a: &BlockAllocator, start: usize) -> Option<usize> {
        let n = a.addresses.len();
        let mut best: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let free = a.addresses[i].free.len();
            if free > best.map_or(0, |(_, f)| f) {
                best = Some((i, free));
            }
        }
        best.map(|(i, _)| i)
    }

    proptest! {
        /// RFC 6888 REQ-2: whatever blocks are taken and returned (released at once, after the
        /// hold-down, or pushed out by the cap), each address's key in the tree is its free
        /// blocks and a new subscriber's address is the one the scan of the pool would choose.
        #[test]
        fn rfc6888_req2_roomiest_follows_every_block_taken_and_returned(
            seed in any::<u64>(),
            hold_ms in proptest::prelude::prop_oneof![proptest::prelude::Just(0u64), 1u64..100_000],
            cap in 0usize..8,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut s = settings(12_000, 2);
            s.hold_down = Duration::from_millis(hold_ms);
            s.max_held_down = cap;
            // Five blocks per address, five addresses: blocks run out and come back often.
            let mut a = BlockAllocator::new(&[X1, X2, X3, X4, Ipv4Addr::new(198, 51, 100, 5)], s);
            let mut rng = Rng::new(seed);
            let mut now = Instant::ZERO;
            let mut live: Vec<(Protocol, Endpoint, Endpoint)> = Vec::new();
            for op in ops {
                match op {
                    Op::Allocate { proto, sub, port } => {
                        let proto = Protocol::ALL[proto];
                        // Many subscribers, so that new ones keep arriving.
                        let who = subscriber(sub * 7 + u32::from(port % 7));
                        let internal = Endpoint::new(who, port);
                        if let Ok(e) = a.allocate(&req(proto, internal.addr, port, now), &mut rng) {
                            live.push((proto, internal, e));
                        }
                    }
                    Op::Release { pick } => {
                        if !live.is_empty() {
                            let (proto, internal, e) = live.swap_remove(pick % live.len());
                            a.release(proto, SubscriberId::of(internal), e, now);
                        }
                    }
                    Op::Bogus { .. } => {}
                    Op::Advance { millis } => now = now + Duration::from_millis(millis),
                    Op::Tick => a.handle_timeout(now),
                }
                while a.poll_event().is_some() {}
                for (i, addr) in a.addresses.iter().enumerate() {
                    prop_assert_eq!(a.room.get(i), Some(addr.room()), "{}", addr.addr);
                }
                let n = a.addresses.len() as u32;
                let (mut tree_rng, mut scan_rng) = (rng.clone(), rng.clone());
                let start = scan_rng.below(n) as usize;
                prop_assert_eq!(a.roomiest(&mut tree_rng), roomiest_by_scan(&a, start));
            }
        }
    }

    /// Rough timings for the report; run with
    /// `cargo test --release -p natgate-core --lib alloc::block::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check; run in release"]
    #[allow(clippy::print_stderr)]
    fn timing() {
        use std::time::Instant as Clock;
        let pool: Vec<Ipv4Addr> = (0..64)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i))
            .collect();
        let mut rng = Rng::new(99);
        // 10k subscribers with 512-port blocks (126 per address, 8064 in the pool: 1.24 blocks
        // per subscriber), 200k live mappings, every new mapping paired with a release.
        let mut s = settings(512, 4);
        s.max_held_down = 1 << 18;
        let mut a = BlockAllocator::new(&pool, s);
        let mut live = VecDeque::new();
        let mut now = Instant::ZERO;
        let subs = 6_000u32;
        for i in 0..120_000u32 {
            let r = req(
                Protocol::Udp,
                subscriber(i % subs),
                (i / subs) as u16 + 2000,
                now,
            );
            live.push_back((r.internal, a.allocate(&r, &mut rng).expect("ok")));
        }
        while a.poll_event().is_some() {}
        let n = 2_000_000u32;
        let t0 = Clock::now();
        let mut evs = 0u64;
        for i in 0..n {
            now = now + Duration::from_micros(50);
            let r = req(
                Protocol::Udp,
                subscriber(i % subs),
                (i % 60_000) as u16 + 1024,
                now,
            );
            let e = a.allocate(&r, &mut rng).expect("ok");
            let (internal, old) = live.pop_front().expect("live");
            a.release(Protocol::Udp, SubscriberId::of(internal), old, now);
            live.push_back((r.internal, e));
            while a.poll_event().is_some() {
                evs += 1;
            }
        }
        let pair = t0.elapsed().as_nanos() / u128::from(n);
        eprintln!(
            "blocks of 512, 64 addresses, {subs} subscribers, 120k live: {pair} ns per allocate + release ({evs} block records)"
        );
        let t0 = Clock::now();
        let m = 200_000u32;
        for i in 0..m {
            let r = req(
                Protocol::Tcp,
                subscriber(i % subs),
                (i / subs) as u16 + 3000,
                now,
            );
            a.allocate(&r, &mut rng).expect("ok");
        }
        let alloc = t0.elapsed().as_nanos() / u128::from(m);
        eprintln!("then 200k TCP mappings: {alloc} ns per allocate");

        // Block churn: 8000 new subscribers each take a block (one record each), all leave, and
        // one timer call after the hold-down returns every block (one record each).
        let mut a = BlockAllocator::new(&pool, settings(512, 4));
        let subs = 8_000u32;
        let t0 = Clock::now();
        let mut firsts = Vec::with_capacity(subs as usize);
        for i in 0..subs {
            let r = req(Protocol::Udp, subscriber(i), 5000, Instant::ZERO);
            firsts.push((r.internal, a.allocate(&r, &mut rng).expect("ok")));
        }
        let new_sub = t0.elapsed().as_nanos() / u128::from(subs);
        let allocated = core::iter::from_fn(|| a.poll_event()).count();
        for (internal, e) in firsts {
            a.release(Protocol::Udp, SubscriberId::of(internal), e, Instant::ZERO);
        }
        let t0 = Clock::now();
        a.handle_timeout(Instant::from_secs(120));
        let back = t0.elapsed().as_nanos() / u128::from(subs);
        let released = core::iter::from_fn(|| a.poll_event()).count();
        eprintln!(
            "new subscriber (block + port + record): {new_sub} ns; block back after hold-down: {back} ns ({allocated} allocated, {released} released records)"
        );
    }
}
