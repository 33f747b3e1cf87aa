//! The keyed hash for flow tables.
//!
//! Outside tuples are chosen by whoever sends us packets, so an unkeyed hash would let an attacker
//! pile every flow into one bucket. The keys come from the engine's secret seed; the function is
//! the folded 64x64->128 multiply of wyhash/foldhash, which is fast and mixes well enough for
//! bucket selection. It is not a MAC: it only has to make collisions unpredictable off-path.

/// A keyed hash of two 64-bit words (a packed flow key).
#[derive(Debug, Clone)]
pub struct FlowHasher {
    k0: u64,
    k1: u64,
}

/// splitmix64: turns a seed into well-spread keys, so that related seeds give unrelated keys.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The full 128-bit product folded to 64 bits by XOR: every input bit reaches most output bits.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl FlowHasher {
    /// A hasher whose two secret keys are derived from `seed` with splitmix64.
    pub fn new(seed: u64) -> Self {
        let mut s = seed;
        FlowHasher {
            k0: splitmix64(&mut s),
            k1: splitmix64(&mut s),
        }
    }

    /// Hashes the pair `(a, b)`. Two folded multiplies: the first combines both words with the
    /// keys, the second spreads the result so that a one-bit change in the input flips about half
    /// of the output bits (the high bits pick the bucket, the low bits make the tag).
    #[inline(always)]
    pub fn hash2(&self, a: u64, b: u64) -> u64 {
        let h = folded_multiply(a ^ self.k0, b ^ self.k1);
        folded_multiply(h ^ self.k1.rotate_left(32), 0x9fb2_1c65_1e98_df25 ^ self.k0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_deterministic() {
        let a = FlowHasher::new(1);
        let b = FlowHasher::new(1);
        let c = FlowHasher::new(2);
        assert_eq!(a.hash2(10, 20), b.hash2(10, 20));
        assert_ne!(a.hash2(10, 20), c.hash2(10, 20));
        assert_ne!(a.hash2(10, 20), a.hash2(20, 10));
    }

    #[test]
    fn one_bit_flips_about_half_the_output() {
        let h = FlowHasher::new(0x5eed);
        let mut rng = crate::Rng::new(3);
        let mut flipped = 0u64;
        let mut trials = 0u64;
        for _ in 0..200 {
            let (a, b) = (
                rng.next_u64() & 0x00ff_ffff_ffff_ffff,
                rng.next_u64() & 0xffff_ffff_ffff,
            );
            let base = h.hash2(a, b);
            for bit in 0..56 {
                flipped += u64::from((base ^ h.hash2(a ^ (1 << bit), b)).count_ones());
                flipped += u64::from((base ^ h.hash2(a, b ^ (1 << bit))).count_ones());
                trials += 2;
            }
        }
        let mean = flipped as f64 / trials as f64;
        assert!((30.0..34.0).contains(&mean), "mean flipped bits {mean}");
    }
}
