//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! A NAT rewrites a handful of 16- and 32-bit fields in every packet. Recomputing the IPv4 header,
//! TCP/UDP and ICMP checksums over the whole packet would touch every payload byte; RFC 1624
//! updates them from the old and new field values alone.
//!
//! # Why equation 3 and not equation 2
//!
//! RFC 1141 proposed `HC' = HC + m + ~m'` (RFC 1624 eqn. 2). In one's complement arithmetic
//! there are two zeros, `+0 = 0x0000` and `-0 = 0xFFFF`, and eqn. 2 can yield `0xFFFF` where a
//! full recomputation yields `0x0000` (RFC 1624 section 3 gives the example). A computed checksum
//! is the complement of a one's complement sum, and such a sum is never `+0` unless every input is
//! zero, so a computed checksum is never `0xFFFF`. Eqn. 3, `HC' = ~(~HC + ~m + m')`, keeps
//! that form: it complements a one's complement sum, and so always agrees with recomputation.
//! Every update in this module is eqn. 3.

use std::net::Ipv4Addr;

/// The one's complement sum of `data` as 16-bit big-endian words (RFC 1071 section 4.1), not yet
/// complemented. An odd trailing byte is padded with a zero on the right.
///
/// The result is at most `0xFFFF`, so partial sums (a pseudo header, a header, a payload) can be
/// added with plain `+` and then [`fold`]ed. Only the last piece of a message may have odd length:
/// an odd piece in the middle would shift the bytes after it.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // RFC 1071 section 2(C), parallel summation: summing 64-bit big-endian words with
    // end-around carry and folding the result gives the same 16-bit sum as summing 16-bit words,
    // at a quarter of the additions.
    let (words, rest) = data.as_chunks::<8>();
    let mut acc: u64 = 0;
    for w in words {
        acc = add_carry(acc, u64::from_be_bytes(*w));
    }
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    acc = add_carry(acc, u64::from_be_bytes(tail));
    let acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    let acc = (acc & 0xFFFF_FFFF) + (acc >> 32);
    u32::from(fold(acc as u32))
}

/// 64-bit one's complement addition: the carry out of bit 63 wraps around into bit 0.
#[inline(always)]
fn add_carry(a: u64, b: u64) -> u64 {
    let (s, carry) = a.overflowing_add(b);
    s + u64::from(carry)
}

/// Folds a sum of 16-bit words into 16 bits with end-around carry (RFC 1071 section 4.1).
#[inline]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xFFFF) + (sum >> 16);
    let s = (s & 0xFFFF) + (s >> 16);
    s as u16
}

/// The Internet checksum of `data`: the complement of its one's complement sum (RFC 1071).
/// Verifying a message that contains its own checksum yields 0.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// The sum of the IPv4 pseudo header that TCP (RFC 9293 section 3.1) and UDP (RFC 768) checksums
/// cover: source, destination, zero byte, protocol and the transport length. Add it to
/// [`sum`] of the segment before [`fold`]ing.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u32 {
    addr_sum(src) + addr_sum(dst) + u32::from(proto) + u32::from(len)
}

/// The two 16-bit words of an address, summed.
#[inline(always)]
fn addr_sum(a: Ipv4Addr) -> u32 {
    let v = a.to_bits();
    (v >> 16) + (v & 0xFFFF)
}

/// The checksum `check` after one 16-bit field changed from `old` to `new` (RFC 1624 eqn. 3).
///
/// The field must start at an even offset of the checksummed data; for a field at an odd offset
/// pass both values byte-swapped.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::default();
    d.add16(old, new);
    d.apply(check)
}

/// The checksum `check` after one 32-bit field (an IPv4 address, as a big-endian `u32`) changed
/// from `old` to `new` (RFC 1624 eqn. 3, once per 16-bit half).
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let mut d = Delta::default();
    d.add32(old, new);
    d.apply(check)
}

/// An accumulated set of field rewrites, to apply to one or more checksums.
///
/// A NAT changes an address and a port together; the IPv4 header checksum sees only the address,
/// the TCP/UDP checksum sees both (the address through the pseudo header). Accumulate once, apply
/// to each checksum that covers the fields: `~m + m'` of every change is summed here, and
/// [`Delta::apply`] adds `~HC` and complements (RFC 1624 eqn. 3).
///
/// The accumulator is 64 bits wide and folded only when applied: a rewrite adds a few fields,
/// and folding after each (as a 32-bit accumulator must) was a fifth of a translation's
/// arithmetic. It cannot overflow (each field adds less than 2^17).
///
/// Not comparable: the same change can be accumulated as different unfolded values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta(u64);

impl Delta {
    /// Records that a 16-bit field changed from `old` to `new`.
    #[inline(always)]
    pub fn add16(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records that a 32-bit field (big-endian value) changed from `old` to `new`.
    #[inline(always)]
    pub fn add32(&mut self, old: u32, new: u32) {
        self.add16((old >> 16) as u16, (new >> 16) as u16);
        self.add16(old as u16, new as u16);
    }

    /// Records that an IPv4 address changed from `old` to `new`.
    #[inline(always)]
    pub fn add_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.add32(old.to_bits(), new.to_bits());
    }

    /// The checksum `check` updated for every recorded change.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        !fold64(u64::from(!check) + self.0)
    }
}

/// [`fold`] for a 64-bit sum: the carries of the high half go around into the low one twice
/// (the first addition can carry once more), then the 32-bit fold.
#[inline(always)]
fn fold64(sum: u64) -> u16 {
    let s = (sum & 0xFFFF_FFFF) + (sum >> 32);
    let s = (s & 0xFFFF_FFFF) + (s >> 32);
    fold(s as u32)
}

/// Applies `delta` to a UDP checksum, keeping RFC 768's special values: a transmitted 0 means
/// "no checksum" and stays 0, and a computed 0 is transmitted as `0xFFFF`.
#[inline(always)]
pub fn apply_udp(delta: Delta, check: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match delta.apply(check) {
        0 => 0xFFFF,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook RFC 1071 loop, as the reference for the fast [`sum`].
    fn sum_reference(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u64::from(*b));
            s += hi | lo;
        }
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_on_the_right() {
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0x12, 0x34, 0xab]), 0x12_34 + 0xab00);
    }

    #[test]
    fn all_zero_data_has_checksum_ffff() {
        assert_eq!(checksum(&[0; 20]), 0xFFFF);
        assert_eq!(checksum(&[]), 0xFFFF);
    }

    #[test]
    fn rfc1624_eqn3_gives_plus_zero() {
        // RFC 1624 section 3: the other header words sum to 0xCD7A, a field changes from 0x5555
        // to 0x3285, so HC = ~(0xCD7A + 0x5555) = 0xDD2F and recomputation gives
        // ~(0xCD7A + 0x3285) = 0x0000. Eqn. 2 would give 0xFFFF.
        assert_eq!(update16(0xDD2F, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn udp_special_values() {
        let mut d = Delta::default();
        d.add16(0x1234, 0x4321);
        assert_eq!(apply_udp(d, 0), 0);
        // A change that makes the computed checksum 0 is sent as 0xFFFF.
        let mut d = Delta::default();
        d.add16(0x0000, 0x0001);
        assert_eq!(d.apply(0x0001), 0x0000);
        assert_eq!(apply_udp(d, 0x0001), 0xFFFF);
    }

    proptest! {
        #[test]
        fn fast_sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(fold(sum(&data)), sum_reference(&data));
        }

        #[test]
        fn sums_of_pieces_add_up(
            a in proptest::collection::vec(any::<u16>(), 0..40),
            b in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let a: Vec<u8> = a.iter().flat_map(|w| w.to_be_bytes()).collect();
            let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(fold(sum(&a) + sum(&b)), fold(sum(&whole)));
        }

        #[test]
        fn incremental_matches_recomputation(
            words in proptest::collection::vec(any::<u16>(), 2..40),
            at in any::<prop::sample::Index>(),
            at32 in any::<prop::sample::Index>(),
            new16 in any::<u16>(),
            new32 in any::<u32>(),
        ) {
            // Word 0 holds the checksum; fields live at the other words.
            let mut w = words;
            w[0] = 0;
            let bytes = |w: &[u16]| -> Vec<u8> { w.iter().flat_map(|x| x.to_be_bytes()).collect() };
            w[0] = checksum(&bytes(&w));

            let i = 1 + at.index(w.len() - 1);
            let old = w[i];
            w[i] = new16;
            let c16 = update16(w[0], old, new16);
            w[0] = 0;
            let full = checksum(&bytes(&w));
            prop_assert_eq!(c16, full);
            w[0] = c16;

            if w.len() >= 3 {
                let j = 1 + at32.index(w.len() - 2);
                let old = (u32::from(w[j]) << 16) | u32::from(w[j + 1]);
                w[j] = (new32 >> 16) as u16;
                w[j + 1] = new32 as u16;
                let c32 = update32(w[0], old, new32);
                w[0] = 0;
                prop_assert_eq!(c32, checksum(&bytes(&w)));
            }
        }

        #[test]
        fn delta_equals_sequential_updates(
            check in any::<u16>(),
            changes in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..20),
        ) {
            let mut d = Delta::default();
            let mut seq = check;
            for (old, new) in &changes {
                d.add16(*old, *new);
                seq = update16(seq, *old, *new);
            }
            prop_assert_eq!(d.apply(check), seq);
        }
    }
}
