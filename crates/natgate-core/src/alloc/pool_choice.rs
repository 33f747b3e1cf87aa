//! Which pool address a new subscriber gets, in O(log n) instead of a scan of the pool.
//!
//! RFC 6888 REQ-2 wants subscribers spread evenly over the pool, so a new subscriber goes to the
//! address with the most room (port blocks: the most free blocks) or the least load (dynamic
//! allocation: the fewest subscribers), ties broken by a random start. Scanning every address
//! for that cost O(pool) per new subscriber, which dominated session creation with large
//! pools. A tournament tree over the addresses keeps each subtree's extreme key, so a key
//! changes in O(log n) and the choice is found in O(log n), with exactly the scan's answer.

/// Which key wins the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extreme {
    /// The largest key wins (the roomiest address).
    Most,
    /// The smallest key wins (the least loaded address).
    Fewest,
}

impl Extreme {
    /// The better of two keys.
    fn pick(self, a: u32, b: u32) -> u32 {
        match self {
            Extreme::Most => a.max(b),
            Extreme::Fewest => a.min(b),
        }
    }

    /// The key of a padding leaf: it never beats a real key, so it only changes nothing.
    fn neutral(self) -> u32 {
        match self {
            Extreme::Most => 0,
            Extreme::Fewest => u32::MAX,
        }
    }
}

/// A tournament tree over the pool's addresses, one `u32` key per address (free blocks, or
/// subscribers). Nodes are stored heap-style: node 1 is the root, node `v` has children `2v` and
/// `2v + 1`, and the leaves `size..size + n` are the addresses in pool order; leaves past `n`
/// hold the neutral key. Every node holds the extreme key of its subtree.
///
/// Built once with the pool; `set` and `choose` never allocate and never panic.
#[derive(Debug, Clone)]
pub(super) struct PoolChoice {
    extreme: Extreme,
    /// `2 * size` nodes; node 0 is unused. Empty for an empty pool.
    nodes: Box<[u32]>,
    /// Leaves: `n` rounded up to a power of two.
    size: usize,
    /// Addresses in the pool.
    n: usize,
}

impl PoolChoice {
    /// A tree over one address per key, in pool order. An empty pool, or one too large to round
    /// up to a power of two (more than `usize::MAX / 4` addresses, which cannot exist: there are
    /// 2^32), gets an empty tree, whose choice is always `None`.
    pub(super) fn new(extreme: Extreme, keys: impl ExactSizeIterator<Item = u32>) -> Self {
        let n = keys.len();
        let size = n
            .checked_next_power_of_two()
            .filter(|s| n > 0 && s.checked_mul(2).is_some());
        let Some(size) = size else {
            return PoolChoice {
                extreme,
                nodes: Box::new([]),
                size: 0,
                n: 0,
            };
        };
        let mut nodes = vec![extreme.neutral(); 2 * size].into_boxed_slice();
        for (leaf, key) in nodes.iter_mut().skip(size).zip(keys) {
            *leaf = key;
        }
        for v in (1..size).rev() {
            let (l, r) = (node(&nodes, 2 * v), node(&nodes, 2 * v + 1));
            if let (Some(l), Some(r), Some(slot)) = (l, r, nodes.get_mut(v)) {
                *slot = extreme.pick(l, r);
            }
        }
        PoolChoice {
            extreme,
            nodes,
            size,
            n,
        }
    }

    /// Bytes of the tree's nodes: two `u32` per address, rounded up to a power of two.
    pub(super) fn memory_bytes(&self) -> usize {
        core::mem::size_of_val(&*self.nodes)
    }

    /// The key of address `i`, `None` past the pool.
    #[cfg(test)]
    pub(super) fn get(&self, i: usize) -> Option<u32> {
        if i >= self.n {
            return None;
        }
        node(&self.nodes, self.size + i)
    }

    /// Sets the key of address `i` to `key` in O(log n); an index past the pool is ignored.
    pub(super) fn set(&mut self, i: usize, key: u32) {
        if i >= self.n {
            return;
        }
        let mut v = self.size + i;
        let Some(leaf) = self.nodes.get_mut(v) else {
            return;
        };
        *leaf = key;
        let mut best = key;
        while v > 1 {
            let sibling = node(&self.nodes, v ^ 1).unwrap_or(self.extreme.neutral());
            best = self.extreme.pick(best, sibling);
            v /= 2;
            match self.nodes.get_mut(v) {
                // The parent already holds this: every ancestor above does too.
                Some(parent) if *parent == best => return,
                Some(parent) => *parent = best,
                None => return,
            }
        }
    }

    /// The first address in cyclic order from `start` (`start`, `start + 1`, ..., `n - 1`, `0`,
    /// ..., `start - 1`) whose key is the extreme over the whole pool, with that key: the answer
    /// of a scan that starts at `start` and keeps the first extreme it meets. A `start` past the
    /// pool counts modulo its size. `None` only for an empty pool. O(log n).
    pub(super) fn choose(&self, start: usize) -> Option<(usize, u32)> {
        if self.n == 0 {
            return None;
        }
        let start = start % self.n;
        let best = node(&self.nodes, 1)?;
        let i = self
            .first_from(start, best)
            .or_else(|| self.first_from(0, best))?;
        Some((i, best))
    }

    /// The first address at or after `lo` whose key is `best` (the root's key, so a subtree holds
    /// such an address exactly when its node's key is `best`).
    ///
    /// Walks right from leaf `lo`: a node that does not hold `best` is skipped by moving to the
    /// next subtree on the right (climbing while the node is a right child, then stepping to the
    /// sibling), so at most two nodes per level are visited; the first node that holds `best` is
    /// then descended, always taking the left child when it holds `best`.
    fn first_from(&self, lo: usize, best: u32) -> Option<usize> {
        if lo >= self.n {
            return None;
        }
        let mut v = self.size + lo;
        while node(&self.nodes, v)? != best {
            while v & 1 == 1 {
                v /= 2;
            }
            if v == 0 {
                // Climbed past the root: nothing on the right holds `best`.
                return None;
            }
            v += 1;
        }
        while v < self.size {
            v *= 2;
            if node(&self.nodes, v)? != best {
                v += 1;
            }
        }
        // A padding leaf holds `best` only if no real address after `lo` does, since padding
        // comes last and the descent takes the leftmost leaf holding `best`.
        let i = v - self.size;
        (i < self.n).then_some(i)
    }
}

/// Node `v`'s key, `None` past the tree.
fn node(nodes: &[u32], v: usize) -> Option<u32> {
    nodes.get(v).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Strategy, any, prop_assert_eq, prop_oneof, proptest};

    /// The scan the tree replaces: from `start` in cyclic order, the first extreme key.
    fn scan(extreme: Extreme, keys: &[u32], start: usize) -> Option<(usize, u32)> {
        let n = keys.len();
        if n == 0 {
            return None;
        }
        let mut best: Option<(usize, u32)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let key = keys[i];
            let better = match best {
                None => true,
                Some((_, b)) => extreme.pick(key, b) == key && key != b,
            };
            if better {
                best = Some((i, key));
            }
        }
        best
    }

    fn tree(extreme: Extreme, keys: &[u32]) -> PoolChoice {
        PoolChoice::new(extreme, keys.iter().copied())
    }

    #[test]
    fn rfc6888_req2_ties_go_to_the_first_from_the_start_wrapping_around() {
        let keys = [3, 7, 1, 7, 0, 7, 1];
        let most = tree(Extreme::Most, &keys);
        assert_eq!(most.choose(0), Some((1, 7)));
        assert_eq!(most.choose(2), Some((3, 7)));
        assert_eq!(most.choose(4), Some((5, 7)));
        assert_eq!(most.choose(6), Some((1, 7)));
        let fewest = tree(Extreme::Fewest, &keys);
        assert_eq!(fewest.choose(0), Some((4, 0)));
        assert_eq!(fewest.choose(5), Some((4, 0)));
        // A start past the pool counts modulo its size, as the scan's `(start + k) % n` does.
        assert_eq!(most.choose(7 + 2), Some((3, 7)));
    }

    #[test]
    fn updates_move_the_choice() {
        let mut t = tree(Extreme::Fewest, &[2, 2, 2]);
        assert_eq!(t.choose(1), Some((1, 2)));
        t.set(1, 3);
        assert_eq!(t.choose(1), Some((2, 2)));
        t.set(2, 5);
        assert_eq!(t.choose(1), Some((0, 2)));
        t.set(0, 9);
        assert_eq!(t.choose(0), Some((1, 3)));
        assert_eq!((t.get(0), t.get(1), t.get(2)), (Some(9), Some(3), Some(5)));
        // Past the pool: ignored, nothing there.
        t.set(3, 0);
        assert_eq!(t.get(3), None);
        assert_eq!(t.choose(0), Some((1, 3)));
    }

    #[test]
    fn padding_never_wins_even_when_every_key_is_neutral() {
        // Five addresses round up to eight leaves; the three padding leaves hold the neutral key,
        // equal to every real key here.
        let most = tree(Extreme::Most, &[0; 5]);
        assert_eq!(most.choose(4), Some((4, 0)));
        assert_eq!(most.choose(3), Some((3, 0)));
        let fewest = tree(Extreme::Fewest, &[u32::MAX; 5]);
        assert_eq!(fewest.choose(4), Some((4, u32::MAX)));
    }

    #[test]
    fn empty_and_single_address_pools() {
        let empty = tree(Extreme::Most, &[]);
        assert_eq!(empty.choose(0), None);
        assert_eq!(empty.get(0), None);
        assert_eq!(empty.memory_bytes(), 0);
        let mut one = tree(Extreme::Fewest, &[4]);
        assert_eq!(one.choose(0), Some((0, 4)));
        assert_eq!(one.choose(5), Some((0, 4)));
        one.set(0, 1);
        assert_eq!(one.choose(0), Some((0, 1)));
    }

    #[test]
    fn memory_is_two_keys_per_address_rounded_up() {
        assert_eq!(tree(Extreme::Most, &[1; 512]).memory_bytes(), 2 * 512 * 4);
        assert_eq!(tree(Extreme::Most, &[1; 513]).memory_bytes(), 2 * 1024 * 4);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set { i: usize, key: u32 },
        Choose { start: usize },
    }

    /// Keys from a small range, so that ties (the interesting case) are common.
    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (any::<usize>(), 0u32..6).prop_map(|(i, key)| Op::Set { i, key }),
            1 => (any::<usize>(), any::<u32>()).prop_map(|(i, key)| Op::Set { i, key }),
            3 => any::<usize>().prop_map(|start| Op::Choose { start }),
        ]
    }

    proptest! {
        /// The tree gives the scan's answer for any pool size, keys, updates and start.
        #[test]
        fn choice_equals_the_linear_scan(
            most in any::<bool>(),
            keys in proptest::collection::vec(prop_oneof![0u32..6, any::<u32>()], 0..70),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let extreme = if most { Extreme::Most } else { Extreme::Fewest };
            let mut keys = keys;
            let mut t = tree(extreme, &keys);
            for start in 0..keys.len() {
                prop_assert_eq!(t.choose(start), scan(extreme, &keys, start));
            }
            for op in ops {
                match op {
                    Op::Set { i, key } => {
                        // Mostly inside the pool, sometimes past it (ignored).
                        let i = if keys.is_empty() || i % 8 == 0 { i } else { i % keys.len() };
                        t.set(i, key);
                        if let Some(k) = keys.get_mut(i) {
                            *k = key;
                        }
                    }
                    Op::Choose { start } => {
                        let n = keys.len().max(1);
                        prop_assert_eq!(t.choose(start), scan(extreme, &keys, start % n));
                    }
                }
                for (i, k) in keys.iter().enumerate() {
                    prop_assert_eq!(t.get(i), Some(*k));
                }
            }
        }
    }
}
