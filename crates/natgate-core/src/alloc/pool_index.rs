//! External address → pool index, in O(1): every inbound packet and every hairpin check asks
//! whether its destination is ours, and every release needs the address's slot.

use std::net::Ipv4Addr;

/// An open-addressed, linear-probing table from pool address to its index, at most half full so
/// probes stay short. Built once; pools may be any size and non-contiguous (RFC 6888 REQ-3).
#[derive(Debug, Clone)]
pub(super) struct PoolIndex {
    /// `address << 32 | (index + 1)`; 0 marks an empty slot (the index part is never 0).
    slots: Box<[u64]>,
    /// log2 of the number of slots, at least 1.
    bits: u32,
    /// The lowest and highest address in the pool (`lo > hi` for an empty one). Most packets
    /// leaving the subscribers go to addresses outside this range, and are answered by two
    /// comparisons instead of a probe: outbound, every packet asks.
    lo: u32,
    hi: u32,
}

impl PoolIndex {
    /// Bytes of the index's slots.
    pub(super) fn memory_bytes(&self) -> usize {
        core::mem::size_of_val(&*self.slots)
    }

    /// An index of `pool`, in order; a repeated address keeps its first index. Returns the
    /// distinct addresses with the index. Addresses past `u32::MAX - 1` are left out (a pool that
    /// large cannot exist: there are only 2^32 addresses).
    pub(super) fn new(pool: &[Ipv4Addr]) -> (Self, Vec<Ipv4Addr>) {
        // At most 2^32 distinct addresses, so at most 2^33 slots.
        let distinct_max = u64::try_from(pool.len()).unwrap_or(u64::MAX).min(1 << 32);
        let bits = (distinct_max * 2)
            .max(2)
            .next_power_of_two()
            .trailing_zeros();
        let mut index = PoolIndex {
            slots: vec![0; 1 << bits].into_boxed_slice(),
            bits,
            lo: u32::MAX,
            hi: 0,
        };
        let mut distinct = Vec::with_capacity(pool.len());
        for &addr in pool {
            let Ok(i) = u32::try_from(distinct.len()) else {
                break;
            };
            if i == u32::MAX || index.get(addr).is_some() {
                continue;
            }
            index.insert(addr, i);
            distinct.push(addr);
        }
        (index, distinct)
    }

    /// The index of `addr`, if it is in the pool.
    #[inline]
    pub(super) fn get(&self, addr: Ipv4Addr) -> Option<usize> {
        if !(self.lo..=self.hi).contains(&addr.to_bits()) {
            return None;
        }
        let key = u64::from(addr.to_bits());
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = *self.slots.get(i)?;
            if slot == 0 {
                return None;
            }
            if slot >> 32 == key {
                return usize::try_from((slot & 0xffff_ffff) - 1).ok();
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, addr: Ipv4Addr, index: u32) {
        self.lo = self.lo.min(addr.to_bits());
        self.hi = self.hi.max(addr.to_bits());
        let key = u64::from(addr.to_bits());
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        // The table is at most half full, so an empty slot is always found.
        while let Some(slot) = self.slots.get_mut(i) {
            if *slot == 0 {
                *slot = (key << 32) | (u64::from(index) + 1);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Fibonacci hashing: the top `bits` bits of the key times 2^64 / φ, so that consecutive
    /// addresses (the usual pool) land far apart.
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6888_req3_any_size_non_contiguous_pool() {
        let pool: Vec<Ipv4Addr> = (0..1000u32)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i * 7))
            .chain([Ipv4Addr::new(203, 0, 113, 9), Ipv4Addr::UNSPECIFIED])
            .collect();
        let (index, distinct) = PoolIndex::new(&pool);
        assert_eq!(distinct, pool);
        for (i, a) in pool.iter().enumerate() {
            assert_eq!(index.get(*a), Some(i));
        }
        assert_eq!(index.get(Ipv4Addr::from_bits(0xC633_6401)), None);
        assert_eq!(index.get(Ipv4Addr::new(203, 0, 113, 10)), None);
    }

    #[test]
    fn the_range_check_keeps_both_bounds_and_the_probe_the_gaps() {
        let lo = Ipv4Addr::new(10, 0, 0, 5);
        let hi = Ipv4Addr::new(10, 0, 0, 9);
        let (index, _) = PoolIndex::new(&[hi, lo]);
        assert_eq!((index.get(lo), index.get(hi)), (Some(1), Some(0)));
        for outside in [4, 7, 10] {
            assert_eq!(index.get(Ipv4Addr::new(10, 0, 0, outside)), None);
        }
    }

    #[test]
    fn duplicates_keep_the_first_index_and_empty_pool_owns_nothing() {
        let a = Ipv4Addr::new(198, 51, 100, 1);
        let b = Ipv4Addr::new(198, 51, 100, 2);
        let (index, distinct) = PoolIndex::new(&[a, b, a]);
        assert_eq!(distinct, vec![a, b]);
        assert_eq!((index.get(a), index.get(b)), (Some(0), Some(1)));
        let (empty, none) = PoolIndex::new(&[]);
        assert!(none.is_empty());
        assert_eq!(empty.get(a), None);
        assert_eq!(empty.get(Ipv4Addr::UNSPECIFIED), None);
    }
}
