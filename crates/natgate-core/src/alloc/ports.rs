//! The ports of one (external address, protocol): a 65536-bit bitmap with a one-bit-per-word
//! summary, so that finding a free port stays bounded and fast even when the address is almost
//! full (RFC 6888 REQ-13 wants ports used to the last one).

/// 64-bit words in a 65536-bit map.
const WORDS: usize = 1024;

/// Which parity a port must have. Ports are numbered from bit 0 of word 0, and each word starts
/// at a multiple of 64, so one mask per parity serves every word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parity {
    /// Any port.
    Any,
    /// Even ports only.
    Even,
    /// Odd ports only.
    Odd,
}

impl Parity {
    /// The parity of `port` (RFC 4787 REQ-4 keeps it across the mapping).
    pub(super) const fn of(port: u16) -> Parity {
        if port & 1 == 0 {
            Parity::Even
        } else {
            Parity::Odd
        }
    }

    const fn mask(self) -> u64 {
        match self {
            Parity::Any => u64::MAX,
            Parity::Even => 0x5555_5555_5555_5555,
            Parity::Odd => 0xAAAA_AAAA_AAAA_AAAA,
        }
    }
}

/// The state of every port of one (address, protocol).
///
/// A port is in one of three states: free; in use (a live mapping holds it); held down (released,
/// waiting out RFC 6888 REQ-8).
pub(super) struct PortSet {
    words: Box<[Word; WORDS]>,
    /// Bit `w` set when `words[w].used` is all ones, so a search skips 64 full words per summary
    /// word.
    full: [u64; WORDS / 64],
    in_use: u32,
    held_down: u32,
}

/// 64 ports. `used` has the bit of every port that is not free, `held` the bit of every held-down
/// port, so "in use" is `used & !held`. The two sit side by side so that a release or an expiry
/// touches one cache line, not two.
#[derive(Clone, Copy)]
struct Word {
    used: u64,
    held: u64,
}

impl PortSet {
    /// All ports free.
    pub(super) fn new() -> Self {
        PortSet {
            words: Box::new([Word { used: 0, held: 0 }; WORDS]),
            full: [0; WORDS / 64],
            in_use: 0,
            held_down: 0,
        }
    }

    /// Bytes a port set keeps on the heap (its bitmap); the rest is inline in its owner.
    pub(super) const fn heap_bytes(&self) -> usize {
        core::mem::size_of::<[Word; WORDS]>()
    }

    /// Ports held by live mappings.
    pub(super) const fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Ports in hold-down.
    pub(super) const fn held_down(&self) -> u32 {
        self.held_down
    }

    /// Starts loading the bitmap word of `port`, ahead of a [`Self::find_free`] that starts
    /// there: the bitmaps of a big pool do not stay in cache, and this word is the one random
    /// memory access of a random-start search.
    #[inline(always)]
    pub(super) fn prefetch(&self, port: u16) {
        crate::table::prefetch_read(self.words.as_ptr().wrapping_add(split(port).0));
    }

    /// Whether `port` is held by a live mapping (not free, not held down).
    fn is_in_use(&self, port: u16) -> bool {
        let (w, bit) = split(port);
        let word = &self.words[w];
        word.used & !word.held & bit != 0
    }

    /// Whether any port of `range` is held by a live mapping: a word at a time, so that `ctl
    /// pools` can tell a port block in use from one only in hold-down without a per-port scan.
    pub(super) fn any_in_use(&self, range: super::PortRange) -> bool {
        let (first, last) = (usize::from(range.first), usize::from(range.last));
        (first >> 6..=last >> 6).any(|w| {
            let lo = if w == first >> 6 { first & 63 } else { 0 };
            let hi = if w == last >> 6 { last & 63 } else { 63 };
            let mask = (u64::MAX >> (63 - (hi - lo))) << lo;
            let word = &self.words[w];
            word.used & !word.held & mask != 0
        })
    }

    /// Marks a free port in use. Returns false, changing nothing, if it was not free.
    pub(super) fn take(&mut self, port: u16) -> bool {
        let (w, bit) = split(port);
        let used = &mut self.words[w].used;
        if *used & bit != 0 {
            return false;
        }
        *used |= bit;
        if *used == u64::MAX {
            self.full[w >> 6] |= 1 << (w & 63);
        }
        self.in_use += 1;
        true
    }

    /// Moves a port from in use to held down. Returns false, changing nothing, if it was not in
    /// use.
    pub(super) fn hold(&mut self, port: u16) -> bool {
        if !self.is_in_use(port) {
            return false;
        }
        let (w, bit) = split(port);
        self.words[w].held |= bit;
        self.in_use -= 1;
        self.held_down += 1;
        true
    }

    /// Frees a port that is in use. Returns false, changing nothing, if it was not in use.
    pub(super) fn free_in_use(&mut self, port: u16) -> bool {
        if !self.is_in_use(port) {
            return false;
        }
        self.clear(port);
        self.in_use -= 1;
        true
    }

    /// Frees a held-down port. Returns false, changing nothing, if it was not held down.
    pub(super) fn free_held(&mut self, port: u16) -> bool {
        let (w, bit) = split(port);
        let word = &mut self.words[w];
        if word.held & bit == 0 {
            return false;
        }
        word.held &= !bit;
        self.clear(port);
        self.held_down -= 1;
        true
    }

    fn clear(&mut self, port: u16) {
        let (w, bit) = split(port);
        self.words[w].used &= !bit;
        self.full[w >> 6] &= !(1 << (w & 63));
    }

    /// The first free port of the given parity in `lo..=hi`, searching upwards from `start` and
    /// wrapping around once (a start outside the range starts at `lo`): RFC 6056 algorithm 1's
    /// "random start, then the next free one", done a word at a time. At most 1024 words and 16
    /// summary words are read, however full the set is.
    pub(super) fn find_free(&self, start: u16, lo: u16, hi: u16, parity: Parity) -> Option<u16> {
        if lo > hi {
            return None;
        }
        let start = if (lo..=hi).contains(&start) {
            start
        } else {
            lo
        };
        if let Some(port) = self.free_in_start_word(start, hi, parity) {
            return Some(port);
        }
        self.scan(start, hi, parity).or_else(|| {
            if start > lo {
                self.scan(lo, start - 1, parity)
            } else {
                None
            }
        })
    }

    /// The first free port of the given parity from `start` up to `hi` (`start <= hi`) inside
    /// `start`'s own 64-port word, without the summary walk: most searches end there (a pool
    /// is rarely near full), so [`Self::find_free`] tries it first, and the allocator's guess
    /// at its next port reads only this one word.
    #[inline]
    pub(super) fn free_in_start_word(&self, start: u16, hi: u16, parity: Parity) -> Option<u16> {
        let (w, _) = split(start);
        let mut free = !self.words[w].used & parity.mask() & (u64::MAX << (start & 63));
        if w == usize::from(hi >> 6) {
            free &= u64::MAX >> (63 - (hi & 63));
        }
        (free != 0).then(|| (start & !63) | free.trailing_zeros() as u16)
    }

    /// The first free port of the given parity in `from..=to` (`from <= to`).
    fn scan(&self, from: u16, to: u16, parity: Parity) -> Option<u16> {
        let (first, last) = (usize::from(from >> 6), usize::from(to >> 6));
        let mut w = first;
        loop {
            w = self.next_not_full(w, last)?;
            let mut free = !self.words[w].used & parity.mask();
            if w == first {
                free &= u64::MAX << (from & 63);
            }
            if w == last {
                free &= u64::MAX >> (63 - (to & 63));
            }
            if free != 0 {
                // w < 1024 and the bit index < 64, so this fits in u16.
                return u16::try_from((w << 6) | free.trailing_zeros() as usize).ok();
            }
            w += 1;
            if w > last {
                return None;
            }
        }
    }

    /// The first word index in `w..=last` that has a free bit.
    fn next_not_full(&self, w: usize, last: usize) -> Option<usize> {
        let mut s = w >> 6;
        let mut candidates = !*self.full.get(s)? & (u64::MAX << (w & 63));
        loop {
            if candidates != 0 {
                let i = (s << 6) | candidates.trailing_zeros() as usize;
                return (i <= last).then_some(i);
            }
            s += 1;
            if s > last >> 6 {
                return None;
            }
            candidates = !*self.full.get(s)?;
        }
    }
}

/// The word index and bit of a port.
const fn split(port: u16) -> (usize, u64) {
    ((port >> 6) as usize, 1 << (port & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_free_wraps_and_respects_range_and_parity() {
        let mut s = PortSet::new();
        assert_eq!(s.find_free(100, 1, 1023, Parity::Any), Some(100));
        assert_eq!(s.find_free(100, 1, 1023, Parity::Odd), Some(101));
        assert_eq!(s.find_free(0, 1, 1023, Parity::Even), Some(2));
        assert_eq!(s.find_free(2000, 1, 1023, Parity::Any), Some(1));
        for p in 500..=1023 {
            assert!(s.take(p));
        }
        // Nothing free from 500 up: wraps to the bottom of the range.
        assert_eq!(s.find_free(600, 1, 1023, Parity::Any), Some(1));
        assert_eq!(s.find_free(600, 10, 1023, Parity::Odd), Some(11));
        assert_eq!(s.find_free(600, 500, 1023, Parity::Any), None);
        assert_eq!(s.find_free(0, 5, 4, Parity::Any), None);
    }

    #[test]
    fn summary_skips_full_words_and_tracks_frees() {
        let mut s = PortSet::new();
        for p in 0..=u16::MAX {
            assert!(s.take(p));
        }
        assert_eq!(s.in_use(), 65536);
        assert_eq!(s.find_free(0, 0, u16::MAX, Parity::Any), None);
        assert!(s.free_in_use(40_001));
        assert_eq!(s.find_free(50_000, 0, u16::MAX, Parity::Any), Some(40_001));
        assert_eq!(s.find_free(0, 0, u16::MAX, Parity::Even), None);
        assert!(s.take(40_001));
        assert_eq!(s.find_free(0, 0, u16::MAX, Parity::Odd), None);
    }

    #[test]
    fn states_move_only_along_legal_transitions() {
        let mut s = PortSet::new();
        assert!(!s.hold(7), "a free port cannot be held");
        assert!(!s.free_in_use(7));
        assert!(!s.free_held(7));
        assert!(s.take(7));
        assert!(!s.take(7), "no port overloading (RFC 4787 REQ-3)");
        assert!(s.hold(7));
        assert!(!s.hold(7), "released twice");
        assert!(!s.free_in_use(7));
        assert!(!s.is_in_use(7));
        assert_eq!(s.find_free(7, 7, 7, Parity::Any), None, "held is not free");
        assert_eq!((s.in_use(), s.held_down()), (0, 1));
        assert!(s.free_held(7));
        assert_eq!(s.find_free(7, 7, 7, Parity::Any), Some(7));
        assert_eq!((s.in_use(), s.held_down()), (0, 0));
    }

    /// What `find_free` answers, a port at a time.
    fn find_free_naive(s: &PortSet, start: u16, lo: u16, hi: u16, parity: Parity) -> Option<u16> {
        if lo > hi {
            return None;
        }
        let start = if (lo..=hi).contains(&start) {
            start
        } else {
            lo
        };
        (start..=hi).chain(lo..start).find(|&p| {
            s.words[usize::from(p >> 6)].used & (1 << (p & 63)) == 0
                && parity.mask() & (1 << (p & 63)) != 0
        })
    }

    proptest::proptest! {
        #[test]
        fn find_free_matches_a_port_by_port_search(
            taken in proptest::collection::vec(0u16..700, 0..600),
            start in 0u16..800,
            lo in 0u16..800,
            len in 0u16..400,
            parity in proptest::sample::select(vec![Parity::Any, Parity::Even, Parity::Odd]),
        ) {
            let mut s = PortSet::new();
            for p in taken {
                s.take(p);
            }
            let hi = lo.saturating_add(len);
            proptest::prop_assert_eq!(
                s.find_free(start, lo, hi, parity),
                find_free_naive(&s, start, lo, hi, parity)
            );
        }
    }

    #[test]
    fn parity_masks_match_port_numbers() {
        let s = PortSet::new();
        for p in [0u16, 1, 62, 63, 64, 65, 65534, 65535] {
            assert_eq!(s.find_free(p, p, p, Parity::of(p)), Some(p));
            assert_eq!(s.find_free(p, p, p, Parity::Any), Some(p));
            let other = if p % 2 == 0 {
                Parity::Odd
            } else {
                Parity::Even
            };
            assert_eq!(s.find_free(p, p, p, other), None);
        }
    }
}
