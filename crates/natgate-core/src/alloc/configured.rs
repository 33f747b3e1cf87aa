//! [`ConfiguredAllocator`]: the allocator a config's `[allocation]` section chooses, behind one
//! type, so that an engine can be built from a config alone.

use super::HeldPort;
use super::{
    AddressUsage, AllocError, AllocEvent, AllocRequest, AllocSettings, BlockAllocator,
    BlockSettings, DeterministicAllocator, DynamicAllocator, PortAllocator, PortRange,
    PortSetUsage, Share,
};
use crate::alloc::SubscriberId;
use crate::config::{Allocation, ValidConfig};
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use std::net::Ipv4Addr;

/// One of the allocators, as `[allocation]` chose it. Each call is one `match` away from the
/// allocator's own.
#[derive(Debug)]
// One allocator per engine, built once and never moved on the packet path: boxing the larger
// variant would only add an indirection to every allocation.
#[allow(clippy::large_enum_variant)]
pub enum ConfiguredAllocator {
    /// Any free port of the pool.
    Dynamic(DynamicAllocator),
    /// Per-subscriber port blocks (RFC 6888).
    PortBlock(BlockAllocator),
    /// Deterministic NAT (RFC 7422).
    Deterministic(DeterministicAllocator),
}

impl ConfiguredAllocator {
    /// The allocator `cfg` asks for, restricted to `share`. `None` for dynamic allocation with
    /// more than one worker: its ports are anywhere in the pool, so no worker could be steered
    /// the return traffic of its own ports (use port blocks or deterministic NAT to run several).
    pub fn from_config(cfg: &ValidConfig, share: Share) -> Option<Self> {
        let c = cfg.get();
        match &c.allocation {
            Allocation::Dynamic => (share == Share::WHOLE).then(|| {
                ConfiguredAllocator::Dynamic(DynamicAllocator::new(
                    &c.pool,
                    AllocSettings::from_config(c),
                ))
            }),
            Allocation::PortBlock(spec) => {
                let mut s = BlockSettings::from_config(c, spec);
                s.share = share;
                Some(ConfiguredAllocator::PortBlock(BlockAllocator::new(
                    &c.pool, s,
                )))
            }
            Allocation::Deterministic(spec) => DeterministicAllocator::from_config(c, spec, share)
                .map(ConfiguredAllocator::Deterministic),
        }
    }
}

macro_rules! each {
    ($self:ident, $a:ident => $e:expr) => {
        match $self {
            ConfiguredAllocator::Dynamic($a) => $e,
            ConfiguredAllocator::PortBlock($a) => $e,
            ConfiguredAllocator::Deterministic($a) => $e,
        }
    };
}

impl ConfiguredAllocator {
    /// Bytes the allocator holds (see each allocator's `memory_bytes`).
    pub fn memory_bytes(&self) -> usize {
        each!(self, a => a.memory_bytes())
    }
}

impl PortAllocator for ConfiguredAllocator {
    fn allocate(&mut self, req: &AllocRequest, rng: &mut Rng) -> Result<Endpoint, AllocError> {
        each!(self, a => a.allocate(req, rng))
    }

    fn allocate_at(
        &mut self,
        req: &AllocRequest,
        external: Endpoint,
    ) -> Result<Endpoint, AllocError> {
        each!(self, a => a.allocate_at(req, external))
    }

    fn release(
        &mut self,
        proto: Protocol,
        subscriber: SubscriberId,
        external: Endpoint,
        now: Instant,
    ) {
        each!(self, a => a.release(proto, subscriber, external, now))
    }

    fn held_down(&self) -> Vec<HeldPort> {
        each!(self, a => a.held_down())
    }

    fn owns(&self, addr: Ipv4Addr) -> bool {
        each!(self, a => a.owns(addr))
    }

    fn paired_address(&self, subscriber: Ipv4Addr) -> Option<Ipv4Addr> {
        each!(self, a => a.paired_address(subscriber))
    }

    fn usage(&self) -> Vec<AddressUsage> {
        each!(self, a => a.usage())
    }

    fn likely_next(&self) -> Option<(Protocol, Endpoint)> {
        each!(self, a => a.likely_next())
    }

    fn port_sets(&self) -> Vec<PortSetUsage> {
        each!(self, a => a.port_sets())
    }

    fn poll_event(&mut self) -> Option<AllocEvent> {
        each!(self, a => a.poll_event())
    }

    fn handle_timeout(&mut self, now: Instant) {
        each!(self, a => a.handle_timeout(now))
    }

    fn set_reserved(&mut self, list: &[(Ipv4Addr, Protocol, PortRange)], now: Instant) {
        each!(self, a => a.set_reserved(list, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DeterministicSpec, PortBlockSpec};

    fn cfg(allocation: Allocation, pool: u32) -> ValidConfig {
        let pool = (0..pool)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i))
            .collect();
        let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 255, 1));
        c.allocation = allocation;
        c.validate().expect("valid")
    }

    #[test]
    fn the_config_chooses_the_allocator() {
        let two = Share::new(1, 2).expect("valid");
        let d = cfg(Allocation::Dynamic, 1);
        assert!(matches!(
            ConfiguredAllocator::from_config(&d, Share::WHOLE),
            Some(ConfiguredAllocator::Dynamic(_))
        ));
        assert!(ConfiguredAllocator::from_config(&d, two).is_none());
        let b = cfg(
            Allocation::PortBlock(PortBlockSpec {
                block_size: 512,
                max_blocks_per_subscriber: 2,
            }),
            1,
        );
        let Some(mut a) = ConfiguredAllocator::from_config(&b, two) else {
            panic!("port blocks shard");
        };
        let req = AllocRequest {
            proto: Protocol::Udp,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), 5000),
            subscriber: SubscriberId::of(Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), 5000)),
            now: Instant::ZERO,
        };
        let e = a.allocate(&req, &mut Rng::new(1)).expect("ok");
        assert!(matches!(
            a.poll_event(),
            Some(AllocEvent::BlockAllocated(_))
        ));
        let ConfiguredAllocator::PortBlock(inner) = &a else {
            panic!("port blocks");
        };
        assert_eq!(inner.settings().worker_of(e.port, 2), Some(1));
        assert!(a.owns(e.addr));
        a.release(
            Protocol::Udp,
            SubscriberId::of(req.internal),
            e,
            Instant::ZERO,
        );
        a.handle_timeout(Instant::from_secs(120));
        assert!(matches!(a.poll_event(), Some(AllocEvent::BlockReleased(_))));
        assert_eq!(a.usage().len(), 1);
        let det = cfg(
            Allocation::Deterministic(DeterministicSpec {
                inside: "100.64.0.0/24".parse().expect("prefix"),
                outside: "198.51.100.0/28".parse().expect("prefix"),
                ports_per_subscriber: None,
                overflow: None,
            }),
            16,
        );
        assert!(matches!(
            ConfiguredAllocator::from_config(&det, two),
            Some(ConfiguredAllocator::Deterministic(_))
        ));
    }

    #[test]
    fn memory_bytes_counts_the_pool_and_each_subscriber() {
        const PORT_MAPS: usize = 3 * 16 * 1024;
        let mut rng = Rng::new(1);
        let req = |n: u32| AllocRequest {
            proto: Protocol::Udp,
            internal: Endpoint::new(Ipv4Addr::from_bits(0x6440_0000 + n), 5000),
            subscriber: SubscriberId::of(Endpoint::new(Ipv4Addr::from_bits(0x6440_0000 + n), 5000)),
            now: Instant::ZERO,
        };
        let blocks = cfg(
            Allocation::PortBlock(PortBlockSpec {
                block_size: 512,
                max_blocks_per_subscriber: 2,
            }),
            4,
        );
        let dynamic = cfg(Allocation::Dynamic, 4);
        for c in [&blocks, &dynamic] {
            let Some(mut a) = ConfiguredAllocator::from_config(c, Share::WHOLE) else {
                panic!("allocator");
            };
            let empty = a.memory_bytes();
            assert!(empty >= 4 * PORT_MAPS, "{empty}: port maps of 4 addresses");
            for n in 0..100 {
                a.allocate(&req(n), &mut rng).expect("room");
            }
            assert!(a.memory_bytes() > empty, "subscribers take room");
        }
        // Deterministic NAT makes an address's port maps with its first subscriber.
        let det = cfg(
            Allocation::Deterministic(DeterministicSpec {
                inside: "100.64.0.0/24".parse().expect("prefix"),
                outside: "198.51.100.0/28".parse().expect("prefix"),
                ports_per_subscriber: None,
                overflow: None,
            }),
            16,
        );
        let Some(mut a) = ConfiguredAllocator::from_config(&det, Share::WHOLE) else {
            panic!("deterministic");
        };
        let empty = a.memory_bytes();
        a.allocate(&req(0), &mut rng).expect("in range");
        let one = a.memory_bytes();
        assert!(one >= empty + PORT_MAPS, "{empty} then {one}");
        a.allocate(&req(1), &mut rng).expect("in range");
        assert!(
            a.memory_bytes() < one + PORT_MAPS,
            "same address: no new port map"
        );
    }
}
