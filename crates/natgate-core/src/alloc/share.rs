//! Per-core ownership: which part of the port space one worker hands out.
//!
//! A multi-core gateway runs one engine per worker. Inbound packets are steered to a worker by
//! their destination (external address and port) before any table is looked at, so a worker must
//! only give out ports whose return traffic is steered to it. A [`Share`] names the worker's part,
//! and the steering function is a pure formula over the external port (port blocks) or over the
//! subscriber (deterministic NAT), so an RSS/XDP program or a dispatcher thread can compute it
//! without state:
//!
//! - [`BlockAllocator`](super::BlockAllocator): block `b` of every address, ports
//!   `1024 + b * size ..`, belongs to worker `b % count`
//!   ([`BlockSettings::worker_of`](super::BlockSettings::worker_of)). Outbound packets are steered
//!   by subscriber (any stable hash of the internal address), so that one worker holds all of a
//!   subscriber's blocks and the per-subscriber limit is exact.
//! - [`DeterministicAllocator`](super::DeterministicAllocator): subscriber `i` (its offset in the
//!   inside prefix) belongs to worker `i % count`, both ways
//!   ([`DeterministicMap::worker_of_internal`](super::DeterministicMap::worker_of_internal),
//!   [`DeterministicMap::worker_of_external`](super::DeterministicMap::worker_of_external)).

/// Worker `index` of `count`: the part of the port space (or of the subscribers) one worker owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Share {
    index: u16,
    count: u16,
}

impl Share {
    /// Everything: a single worker.
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// Worker `index` of `count`; `None` unless `index < count`.
    pub const fn new(index: u16, count: u16) -> Option<Share> {
        if index < count {
            Some(Share { index, count })
        } else {
            None
        }
    }

    /// This worker's number.
    pub const fn index(self) -> u16 {
        self.index
    }

    /// How many workers share the space.
    pub const fn count(self) -> u16 {
        self.count
    }

    /// The worker that owns item `n` (a block number, a subscriber offset): `n % count`.
    pub const fn worker_of(count: u16, n: u32) -> u16 {
        // count >= 1 for every Share, and the remainder is below count, so it fits in u16.
        (n % if count == 0 { 1 } else { count as u32 }) as u16
    }

    /// Whether this share owns item `n`.
    pub const fn owns(self, n: u32) -> bool {
        Share::worker_of(self.count, n) == self.index
    }

    /// How many of the items `0..n` this share owns.
    pub const fn owned_below(self, n: u64) -> u64 {
        let (index, count) = (
            self.index as u64,
            if self.count == 0 {
                1
            } else {
                self.count as u64
            },
        );
        if n <= index {
            0
        } else {
            (n - index - 1) / count + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_partition_the_items() {
        assert_eq!(Share::new(3, 3), None);
        let shares: Vec<Share> = (0..3).filter_map(|i| Share::new(i, 3)).collect();
        for n in 0..100u32 {
            assert_eq!(shares.iter().filter(|s| s.owns(n)).count(), 1);
            assert!(Share::WHOLE.owns(n));
        }
        assert_eq!(Share::worker_of(3, 7), 1);
        assert_eq!(Share::worker_of(0, 7), 0, "a count of zero acts as one");
    }
}
