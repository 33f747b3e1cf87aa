//! Fragment state: the first fragment decides, later ones follow.
//!
//! Only a datagram's first fragment (offset 0) carries the transport header, so only it can be
//! matched to a session and translated. RFC 4787 REQ-14 asks a NAT to pass fragments both in
//! order and out of order, and RFC 6888 REQ-1 extends that to every protocol forwarded (RFC 5508
//! section 3.1 for ICMP). [`FragmentTracker`] remembers how each first fragment's IP addresses
//! were rewritten so that the later fragments of the same datagram get the same rewrite (their
//! payload needs none: the transport checksum in the first fragment already covers the whole
//! datagram), and keeps copies of fragments that arrive before their first one, to be released
//! when it comes.
//!
//! All memory is reserved in [`FragmentTracker::new`]. A full table or pool refuses new state
//! instead of growing, and never evicts state still within its timeout: a fragment flood costs
//! the flooder its own fragments, not other hosts' datagrams (RFC 4787 REQ-14: floods must not
//! hurt normal traffic; RFC 6888 REQ-5: bounded state per subscriber).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use crate::endpoint::Side;
use crate::time::Instant;

/// A datagram as identified on arrival (RFC 791: src, dst, protocol, identification), plus the
/// arrival side. The side is part of the key because inside and outside address spaces may
/// overlap (RFC 4787 REQ-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// The side the fragments arrive on.
    pub side: Side,
    /// The IPv4 source address, as received.
    pub src: Ipv4Addr,
    /// The IPv4 destination address, as received.
    pub dst: Ipv4Addr,
    /// The IP protocol number.
    pub proto: u8,
    /// The IPv4 identification field.
    pub ident: u16,
    /// The softwire the fragments came through: homes behind two B4s may send datagrams with
    /// the same addresses and identification at once.
    pub softwire: crate::table::SoftwireTag,
}

/// What the first fragment's translation did to the IP addresses; later fragments get the same
/// rewrite and leave on `out_side`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentTranslation {
    /// The source address the fragments leave with.
    pub new_src: Ipv4Addr,
    /// The destination address the fragments leave with.
    pub new_dst: Ipv4Addr,
    /// The side the fragments leave from (the arrival side's opposite, or the same for hairpin).
    pub out_side: Side,
    /// The softwire (DS-Lite) of the subscriber the fragments go to, when they leave on the
    /// inside in an IPv6 header to its B4.
    pub softwire: crate::table::SoftwireTag,
}

/// Bounds on fragment state, all reserved up front by [`FragmentTracker::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentLimits {
    /// Most datagrams with state at once (recorded first fragments and datagrams with held
    /// fragments together).
    pub max_datagrams: usize,
    /// Most early fragments held at once, over all sources.
    pub max_held: usize,
    /// Most early fragments held for one source address on one side, so that one sender cannot
    /// take the whole pool (RFC 4787 REQ-14).
    pub max_held_per_source: usize,
    /// Size of each held-fragment slot in bytes (e.g. 2048); larger early fragments are not held.
    pub max_fragment_len: usize,
    /// How long a datagram's state lives, counted from the first of its fragments to reach the
    /// tracker (the fragment timer, 2 s by default).
    pub timeout: core::time::Duration,
}

/// Why an early fragment was not held. The engine drops it and counts
/// [`DropReason::FragmentLimit`](crate::counters::DropReason::FragmentLimit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    /// The fragment is longer than [`FragmentLimits::max_fragment_len`].
    #[error("fragment longer than a hold slot")]
    TooLarge,
    /// All [`FragmentLimits::max_held`] slots are in use.
    #[error("no free hold slot")]
    GlobalLimit,
    /// The source already holds [`FragmentLimits::max_held_per_source`] fragments.
    #[error("source holds its maximum number of fragments")]
    SourceLimit,
    /// The datagram has no state yet and [`FragmentLimits::max_datagrams`] datagrams have.
    #[error("fragment datagram table full")]
    DatagramLimit,
}

/// Why a fragment's bytes could not be claimed for its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// It overlaps bytes of the datagram that an earlier fragment carried (RFC 1858 section
    /// 3.2, RFC 3128: an overlap can rewrite a transport header a filter already passed). The
    /// engine drops it as [`DropReason::FragmentOverlap`](crate::counters::DropReason).
    #[error("fragment overlaps an earlier one")]
    Overlap,
    /// The datagram already has [`PIECES`] separate pieces and this one touches none of them.
    /// The engine drops it as [`DropReason::FragmentLimit`](crate::counters::DropReason).
    #[error("datagram in too many pieces")]
    TooManyPieces,
}

/// Separate byte ranges tracked per datagram: in-order fragments merge into one, so more are
/// only needed by datagrams arriving out of order.
pub const PIECES: usize = 4;

/// "No slot": the end of a chain of held fragments or of the free list.
const NONE: usize = usize::MAX;

/// One datagram's state.
#[derive(Debug, Clone, Copy)]
struct Datagram {
    key: FragmentKey,
    /// Set once the first fragment is translated.
    translation: Option<FragmentTranslation>,
    /// Creation time plus the timeout; never extended (see [`FragmentTracker`]).
    expires: Instant,
    /// Oldest and newest held fragment (pool slots), [`NONE`] when nothing is held.
    held_head: usize,
    held_tail: usize,
    /// The datagram's bytes seen so far, as disjoint `[start, end)` ranges; `pieces` used.
    covered: [(u32, u32); PIECES],
    pieces: u8,
}

impl Datagram {
    /// Adds `[start, end)` to the bytes seen, merging with the pieces it touches.
    fn claim(&mut self, start: u32, end: u32) -> Result<(), ClaimError> {
        let n = usize::from(self.pieces);
        let pieces = &mut self.covered[..n];
        if pieces.iter().any(|&(s, e)| start < e && s < end) {
            return Err(ClaimError::Overlap);
        }
        let (mut lo, mut hi) = (start, end);
        let mut kept = 0;
        for i in 0..n {
            let (s, e) = pieces[i];
            if e == lo || s == hi {
                lo = lo.min(s);
                hi = hi.max(e);
            } else {
                pieces[kept] = (s, e);
                kept += 1;
            }
        }
        if kept == PIECES {
            return Err(ClaimError::TooManyPieces);
        }
        self.covered[kept] = (lo, hi);
        self.pieces = kept as u8 + 1;
        Ok(())
    }
}

/// One pool slot: a fragment's length and the next slot of its datagram's chain (or of the free
/// list).
#[derive(Debug, Clone, Copy)]
struct Slot {
    len: usize,
    next: usize,
}

/// State for fragmented datagrams: first-fragment translations and early fragments held back.
///
/// A datagram's state is created by [`record_first`](Self::record_first) or by the first
/// [`hold`](Self::hold) of one of its fragments, and lives for [`FragmentLimits::timeout`] from
/// then, like a reassembly timer (RFC 791): later fragments do not extend it, so a sender cannot
/// keep state alive by trickling fragments. Because the timeout is constant, creation order is
/// expiry order; datagrams sit in a FIFO and expiring them costs O(expired).
///
/// When the datagram table is full, `record_first` records nothing rather than evict state still
/// within its timeout (RFC 6888 REQ-11's rule for mappings, applied here): that datagram's later
/// fragments then find no translation, and are held (and time out) or dropped.
///
/// Nothing allocates after [`new`](Self::new): held fragments are copied into a pool of
/// `max_held` slots of `max_fragment_len` bytes, the FIFO has room for `max_datagrams`, and the
/// two hash indexes reserve twice their largest population, which lets the standard hash table
/// reuse deleted buckets in place rather than reallocate.
///
/// Calls that take `now` first forget what has expired by then; fragments dropped that way are
/// reported by the next [`expire`](Self::expire), which [`next_expiry`](Self::next_expiry) then
/// asks for at once.
#[derive(Debug)]
pub struct FragmentTracker {
    limits: FragmentLimits,
    /// Live datagrams in creation (= expiry) order.
    datagrams: VecDeque<Datagram>,
    /// Sequence number of `datagrams[0]`; a datagram's sequence number never changes.
    front_seq: u64,
    /// Key to sequence number, for every datagram in `datagrams`.
    index: HashMap<FragmentKey, u64>,
    /// `max_held` slots of `max_fragment_len` bytes each.
    pool: Box<[u8]>,
    slots: Box<[Slot]>,
    /// First free slot, chained through [`Slot::next`].
    free_head: usize,
    held_count: usize,
    /// Held fragments per (arrival side, source address), for sources holding any.
    per_source: HashMap<(Side, Ipv4Addr), usize>,
    /// Held fragments dropped by expiry inside another call, not yet returned by `expire`.
    unreported: usize,
    /// When the earliest of those expired.
    unreported_since: Option<Instant>,
}

impl FragmentTracker {
    /// A tracker with all its memory reserved: about `max_held × max_fragment_len` bytes of pool
    /// plus a few dozen bytes per datagram and per held fragment.
    ///
    /// # Panics
    ///
    /// Like any allocation, if the pool size overflows `usize` or memory runs out; the limits
    /// come from a validated config.
    pub fn new(limits: FragmentLimits) -> Self {
        let pool_len = limits.max_held.saturating_mul(limits.max_fragment_len);
        let mut tracker = FragmentTracker {
            limits,
            datagrams: VecDeque::with_capacity(limits.max_datagrams),
            front_seq: 0,
            index: HashMap::with_capacity(limits.max_datagrams.saturating_mul(2)),
            pool: vec![0; pool_len].into_boxed_slice(),
            slots: vec![Slot { len: 0, next: NONE }; limits.max_held].into_boxed_slice(),
            free_head: NONE,
            held_count: 0,
            per_source: HashMap::with_capacity(limits.max_held.saturating_mul(2)),
            unreported: 0,
            unreported_since: None,
        };
        tracker.clear();
        tracker
    }

    /// Records how a datagram's first fragment was translated (call when translating an
    /// offset-0 fragment with MF set), then call [`release_held`](Self::release_held) for the
    /// same key. A repeated first fragment replaces the translation but does not extend the
    /// timer. If the datagram table is full, nothing is recorded (see [`FragmentTracker`]).
    pub fn record_first(&mut self, key: FragmentKey, tr: FragmentTranslation, now: Instant) {
        self.sweep(now);
        match self.position(&key) {
            Some(pos) => self.datagrams[pos].translation = Some(tr),
            // A full table refuses: no live state is evicted.
            None => _ = self.insert(key, Some(tr), now),
        }
    }

    /// Claims bytes `[start, end)` of `key`'s datagram for a fragment about to be translated or
    /// held, refusing an overlap with bytes an earlier fragment carried (RFC 1858, RFC 3128).
    /// Returns `Ok(false)` when the datagram has no state yet: claim again once
    /// [`record_first`](Self::record_first) or [`hold`](Self::hold) has made it, so that a
    /// fragment never makes state the hold limits would have refused. On error nothing changed.
    pub fn claim(
        &mut self,
        key: &FragmentKey,
        start: u32,
        end: u32,
        now: Instant,
    ) -> Result<bool, ClaimError> {
        self.sweep(now);
        let Some(pos) = self.position(key) else {
            return Ok(false);
        };
        let d = &mut self.datagrams[pos];
        // A failed claim must leave the pieces as they were.
        let before = (d.covered, d.pieces);
        let r = d.claim(start, end);
        if r.is_err() {
            (d.covered, d.pieces) = before;
        }
        r.map(|()| true)
    }

    /// The translation for a later fragment of a datagram whose first fragment was seen, if its
    /// state has not timed out by `now`. When this is `None`, [`hold`](Self::hold) the fragment.
    pub fn lookup(&self, key: &FragmentKey, now: Instant) -> Option<FragmentTranslation> {
        let d = self.datagrams.get(self.position(key)?)?;
        if now < d.expires { d.translation } else { None }
    }

    /// Keeps a copy of an early fragment until its first fragment arrives or the timer runs out.
    /// On error nothing was kept, and the caller drops the fragment.
    pub fn hold(&mut self, key: FragmentKey, packet: &[u8], now: Instant) -> Result<(), HoldError> {
        self.sweep(now);
        if packet.len() > self.limits.max_fragment_len {
            return Err(HoldError::TooLarge);
        }
        let source = (key.side, key.src);
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_held_per_source {
            return Err(HoldError::SourceLimit);
        }
        let slot = self.free_head;
        if slot == NONE {
            return Err(HoldError::GlobalLimit);
        }
        let pos = match self.position(&key) {
            Some(pos) => pos,
            None => self
                .insert(key, None, now)
                .ok_or(HoldError::DatagramLimit)?,
        };

        self.free_head = self.slots[slot].next;
        self.slots[slot] = Slot {
            len: packet.len(),
            next: NONE,
        };
        let start = slot * self.limits.max_fragment_len;
        self.pool[start..start + packet.len()].copy_from_slice(packet);

        let d = &mut self.datagrams[pos];
        if d.held_tail == NONE {
            d.held_head = slot;
        } else {
            self.slots[d.held_tail].next = slot;
        }
        d.held_tail = slot;
        *self.per_source.entry(source).or_insert(0) += 1;
        self.held_count += 1;
        Ok(())
    }

    /// Hands each held fragment of `key` (oldest first) to `f` as a mutable byte slice (so the
    /// engine can rewrite it in place and copy it out), then frees them. Does nothing if none
    /// are held. The datagram's translation, if recorded, stays for its later fragments.
    pub fn release_held(&mut self, key: &FragmentKey, f: impl FnMut(&mut [u8])) {
        let Some(pos) = self.position(key) else {
            return;
        };
        let d = &mut self.datagrams[pos];
        let head = core::mem::replace(&mut d.held_head, NONE);
        d.held_tail = NONE;
        self.free_chain((key.side, key.src), head, f);
    }

    /// Forgets state that has expired by `now` (a datagram expires exactly `timeout` after its
    /// state was created); returns how many held fragments were dropped unreleased, including
    /// any dropped by earlier calls since the last `expire`. Call at or after
    /// [`next_expiry`](Self::next_expiry).
    pub fn expire(&mut self, now: Instant) -> usize {
        self.sweep(now);
        self.unreported_since = None;
        core::mem::take(&mut self.unreported)
    }

    /// The earliest time anything expires (for `Engine::next_timeout`), or a past time if
    /// fragments dropped by expiry are waiting to be reported by [`expire`](Self::expire).
    pub fn next_expiry(&self) -> Option<Instant> {
        let front = self.datagrams.front().map(|d| d.expires);
        self.unreported_since.into_iter().chain(front).min()
    }

    /// How many early fragments are held.
    pub fn held_count(&self) -> usize {
        self.held_count
    }

    /// How many datagrams have state.
    pub fn datagram_count(&self) -> usize {
        self.datagrams.len()
    }

    /// Forgets all state and held fragments (without reporting them), keeping the memory.
    pub fn clear(&mut self) {
        self.datagrams.clear();
        self.index.clear();
        self.per_source.clear();
        let n = self.slots.len();
        for (i, s) in self.slots.iter_mut().enumerate() {
            *s = Slot {
                len: 0,
                next: if i + 1 < n { i + 1 } else { NONE },
            };
        }
        self.free_head = if n > 0 { 0 } else { NONE };
        self.held_count = 0;
        self.unreported = 0;
        self.unreported_since = None;
    }

    /// Bytes reserved by the tracker, counting each hash-table entry plus its control byte; the
    /// figure does not change after [`new`](Self::new).
    pub fn memory_bytes(&self) -> usize {
        use core::mem::size_of;
        size_of::<Self>()
            + self.pool.len()
            + self.slots.len() * size_of::<Slot>()
            + self.datagrams.capacity() * size_of::<Datagram>()
            + self.index.capacity() * (size_of::<(FragmentKey, u64)>() + 1)
            + self.per_source.capacity() * (size_of::<((Side, Ipv4Addr), usize)>() + 1)
    }

    /// Where `key`'s datagram sits in the FIFO.
    fn position(&self, key: &FragmentKey) -> Option<usize> {
        let seq = *self.index.get(key)?;
        usize::try_from(seq.checked_sub(self.front_seq)?).ok()
    }

    /// Adds a datagram at the back of the FIFO; `None` if the table is full.
    fn insert(
        &mut self,
        key: FragmentKey,
        translation: Option<FragmentTranslation>,
        now: Instant,
    ) -> Option<usize> {
        let pos = self.datagrams.len();
        if pos >= self.limits.max_datagrams {
            return None;
        }
        self.datagrams.push_back(Datagram {
            key,
            translation,
            expires: now + self.limits.timeout,
            held_head: NONE,
            held_tail: NONE,
            covered: [(0, 0); PIECES],
            pieces: 0,
        });
        self.index.insert(key, self.front_seq + pos as u64);
        Some(pos)
    }

    /// Drops every datagram expired by `now`, noting their held fragments as unreported.
    fn sweep(&mut self, now: Instant) {
        while let Some(d) = self.datagrams.front().copied() {
            if d.expires > now {
                break;
            }
            self.datagrams.pop_front();
            self.front_seq += 1;
            self.index.remove(&d.key);
            let dropped = self.free_chain((d.key.side, d.key.src), d.held_head, |_| {});
            if dropped > 0 {
                self.unreported += dropped;
                self.unreported_since.get_or_insert(d.expires);
            }
        }
    }

    /// Hands each fragment of the chain starting at `head` to `f`, returns the slots to the
    /// free list and the source's quota; returns how many there were.
    fn free_chain(
        &mut self,
        source: (Side, Ipv4Addr),
        head: usize,
        mut f: impl FnMut(&mut [u8]),
    ) -> usize {
        let mut n = 0;
        let mut slot = head;
        while slot != NONE {
            let Slot { len, next } = self.slots[slot];
            let start = slot * self.limits.max_fragment_len;
            f(&mut self.pool[start..start + len]);
            self.slots[slot].next = self.free_head;
            self.free_head = slot;
            slot = next;
            n += 1;
        }
        if n > 0 {
            self.held_count -= n;
            if let Some(count) = self.per_source.get_mut(&source) {
                *count = count.saturating_sub(n);
                if *count == 0 {
                    self.per_source.remove(&source);
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;
    use proptest::prelude::*;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn limits() -> FragmentLimits {
        FragmentLimits {
            max_datagrams: 8,
            max_held: 8,
            max_held_per_source: 4,
            max_fragment_len: 64,
            timeout: TIMEOUT,
        }
    }

    fn key(src: u8, ident: u16) -> FragmentKey {
        FragmentKey {
            side: Side::Outside,
            src: Ipv4Addr::new(198, 51, 100, src),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            proto: 17,
            ident,
            softwire: crate::table::SoftwireTag::NONE,
        }
    }

    fn tr() -> FragmentTranslation {
        FragmentTranslation {
            new_src: Ipv4Addr::new(198, 51, 100, 7),
            new_dst: Ipv4Addr::new(10, 0, 0, 2),
            out_side: Side::Inside,
            softwire: crate::table::SoftwireTag::NONE,
        }
    }

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn released(f: &mut FragmentTracker, k: &FragmentKey) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        f.release_held(k, |b| out.push(b.to_vec()));
        out
    }

    #[test]
    fn rfc4787_req14_out_of_order_fragments_held_then_released_in_order() {
        let mut f = FragmentTracker::new(limits());
        let k = key(1, 0x1234);
        assert_eq!(f.lookup(&k, t(0)), None);
        f.hold(k, &[3; 20], t(0)).unwrap();
        f.hold(k, &[2; 30], t(1)).unwrap();
        f.hold(k, &[4; 10], t(2)).unwrap();
        assert_eq!((f.held_count(), f.datagram_count()), (3, 1));

        f.record_first(k, tr(), t(5));
        let mut seen = Vec::new();
        f.release_held(&k, |b| {
            seen.push(b.to_vec());
            b[0] = 0xff; // the engine rewrites in place
        });
        assert_eq!(seen, vec![vec![3; 20], vec![2; 30], vec![4; 10]]);
        assert_eq!(f.held_count(), 0);
        // The translation stays for fragments still to come.
        assert_eq!(f.lookup(&k, t(6)), Some(tr()));
        assert_eq!(f.datagram_count(), 1);
        assert_eq!(f.expire(t(2000)), 0, "released fragments are not expired");
    }

    #[test]
    fn rfc4787_req14_in_order_fragments_follow_the_first() {
        let mut f = FragmentTracker::new(limits());
        let k = key(1, 7);
        f.record_first(k, tr(), t(0));
        assert_eq!(f.lookup(&k, t(1)), Some(tr()));
        // Other datagrams, and the same datagram arriving on the other side, do not match.
        assert_eq!(f.lookup(&key(1, 8), t(1)), None);
        assert_eq!(f.lookup(&key(2, 7), t(1)), None);
        let inside = FragmentKey {
            side: Side::Inside,
            ..k
        };
        assert_eq!(f.lookup(&inside, t(1)), None);
        // A repeated first fragment replaces the translation.
        let tr2 = FragmentTranslation {
            new_dst: Ipv4Addr::new(10, 0, 0, 3),
            ..tr()
        };
        f.record_first(k, tr2, t(2));
        assert_eq!(f.lookup(&k, t(3)), Some(tr2));
        assert_eq!(f.datagram_count(), 1);
    }

    #[test]
    fn rfc4787_req14_state_expires_at_exactly_the_timeout() {
        let mut f = FragmentTracker::new(limits());
        let (a, b) = (key(1, 1), key(2, 2));
        f.record_first(a, tr(), t(1000));
        f.hold(b, &[1; 8], t(1500)).unwrap();
        f.hold(b, &[1; 8], t(2500)).unwrap(); // does not extend b's timer
        assert_eq!(f.next_expiry(), Some(t(3000)));

        assert_eq!(f.lookup(&a, t(2999)), Some(tr()));
        assert_eq!(f.expire(t(2999)), 0);
        assert_eq!(f.datagram_count(), 2);
        assert_eq!(f.lookup(&a, t(3000)), None);
        assert_eq!(f.expire(t(3000)), 0);
        assert_eq!(f.datagram_count(), 1);
        assert_eq!(f.next_expiry(), Some(t(3500)));

        assert_eq!(f.expire(t(3499)), 0);
        assert_eq!(f.held_count(), 2);
        assert_eq!(f.expire(t(3500)), 2);
        assert_eq!((f.held_count(), f.datagram_count()), (0, 0));
        assert_eq!(f.next_expiry(), None);
        // Nothing left to release.
        assert!(released(&mut f, &b).is_empty());
    }

    #[test]
    fn expiry_inside_other_calls_is_reported_by_expire() {
        let mut f = FragmentTracker::new(limits());
        let k = key(1, 1);
        f.hold(k, &[1; 8], t(0)).unwrap();
        // The engine was late to call expire; the first fragment of a datagram reusing the
        // identification arrives after the old state timed out. It must not inherit it.
        f.record_first(k, tr(), t(2100));
        assert!(released(&mut f, &k).is_empty());
        assert_eq!(f.lookup(&k, t(2100)), Some(tr()));
        // The dropped fragment is owed to the counters: next_expiry asks for expire at once.
        assert_eq!(f.next_expiry(), Some(t(2000)));
        assert_eq!(f.expire(t(2100)), 1);
        assert_eq!(f.next_expiry(), Some(t(4100)));
        assert_eq!(f.expire(t(2100)), 0);
    }

    #[test]
    fn rfc4787_req14_per_source_limit_leaves_room_for_other_sources() {
        let mut f = FragmentTracker::new(limits());
        for ident in 0..4 {
            f.hold(key(1, ident), &[0; 8], t(0)).unwrap();
        }
        assert_eq!(
            f.hold(key(1, 99), &[0; 8], t(0)),
            Err(HoldError::SourceLimit)
        );
        assert_eq!(
            f.hold(key(1, 0), &[0; 8], t(0)),
            Err(HoldError::SourceLimit)
        );
        f.hold(key(2, 0), &[0; 8], t(0)).unwrap();
        // The same address on the other side is another source.
        let inside = FragmentKey {
            side: Side::Inside,
            ..key(1, 0)
        };
        f.hold(inside, &[0; 8], t(0)).unwrap();
        assert_eq!(f.held_count(), 6);
        // Releasing gives the source its quota back.
        assert_eq!(released(&mut f, &key(1, 0)).len(), 1);
        f.hold(key(1, 5), &[0; 8], t(0)).unwrap();
    }

    #[test]
    fn global_limit_refuses_when_the_pool_is_full() {
        let mut f = FragmentTracker::new(limits());
        for src in 0..4 {
            f.hold(key(src, 0), &[0; 8], t(0)).unwrap();
            f.hold(key(src, 1), &[0; 8], t(0)).unwrap();
        }
        assert_eq!(f.held_count(), 8);
        assert_eq!(
            f.hold(key(9, 0), &[0; 8], t(0)),
            Err(HoldError::GlobalLimit)
        );
        assert_eq!(f.held_count(), 8);
        // Expiry frees the pool.
        assert_eq!(f.expire(t(2000)), 8);
        f.hold(key(9, 0), &[0; 8], t(2000)).unwrap();
    }

    #[test]
    fn too_large_fragments_are_not_held() {
        let mut f = FragmentTracker::new(limits());
        assert_eq!(f.hold(key(1, 0), &[0; 65], t(0)), Err(HoldError::TooLarge));
        assert_eq!((f.held_count(), f.datagram_count()), (0, 0));
        f.hold(key(1, 0), &[7; 64], t(0)).unwrap();
        assert_eq!(released(&mut f, &key(1, 0)), vec![vec![7; 64]]);
    }

    #[test]
    fn datagram_limit_refuses_without_evicting_live_state() {
        let mut f = FragmentTracker::new(FragmentLimits {
            max_datagrams: 2,
            ..limits()
        });
        f.record_first(key(1, 0), tr(), t(0));
        f.hold(key(2, 0), &[0; 8], t(10)).unwrap();
        assert_eq!(
            f.hold(key(3, 0), &[0; 8], t(20)),
            Err(HoldError::DatagramLimit)
        );
        // A datagram that already has state can still hold more.
        f.hold(key(2, 0), &[0; 8], t(20)).unwrap();
        // record_first does not record, and evicts nothing.
        f.record_first(key(4, 0), tr(), t(30));
        assert_eq!(f.lookup(&key(4, 0), t(30)), None);
        assert_eq!(f.lookup(&key(1, 0), t(30)), Some(tr()));
        assert_eq!((f.datagram_count(), f.held_count()), (2, 2));
        // Room again once the oldest expires.
        f.record_first(key(4, 0), tr(), t(2000));
        assert_eq!(f.lookup(&key(4, 0), t(2000)), Some(tr()));
    }

    #[test]
    fn claims_merge_adjacent_pieces_and_refuse_overlaps() {
        let mut f = FragmentTracker::new(limits());
        let k = key(1, 1);
        assert_eq!(f.claim(&k, 0, 16, t(0)), Ok(false), "no state yet");
        f.record_first(k, tr(), t(0));
        assert_eq!(f.claim(&k, 0, 16, t(0)), Ok(true));
        assert_eq!(f.claim(&k, 0, 16, t(0)), Err(ClaimError::Overlap));
        assert_eq!(f.claim(&k, 8, 24, t(0)), Err(ClaimError::Overlap));
        // Pieces apart, then the gaps filled: they merge back into one.
        for (s, e) in [(32, 40), (48, 56), (64, 72)] {
            assert_eq!(f.claim(&k, s, e, t(0)), Ok(true));
        }
        assert_eq!(f.claim(&k, 80, 88, t(0)), Err(ClaimError::TooManyPieces));
        assert_eq!(f.claim(&k, 36, 37, t(0)), Err(ClaimError::Overlap));
        for (s, e) in [(16, 32), (40, 48), (56, 64), (72, 200)] {
            assert_eq!(f.claim(&k, s, e, t(0)), Ok(true), "{s}..{e}");
        }
        assert_eq!(f.claim(&k, 199, 300, t(0)), Err(ClaimError::Overlap));
        assert_eq!(f.claim(&k, 200, 300, t(0)), Ok(true));
        // Other datagrams are apart.
        f.record_first(key(1, 2), tr(), t(0));
        assert_eq!(f.claim(&key(1, 2), 0, 16, t(0)), Ok(true));
    }

    #[test]
    fn release_of_nothing_is_a_noop() {
        let mut f = FragmentTracker::new(limits());
        let mut calls = 0;
        f.release_held(&key(1, 0), |_| calls += 1);
        f.record_first(key(1, 0), tr(), t(0));
        f.release_held(&key(1, 0), |_| calls += 1);
        assert_eq!(calls, 0);
        assert_eq!((f.held_count(), f.datagram_count()), (0, 1));
        assert_eq!(f.lookup(&key(1, 0), t(0)), Some(tr()));
    }

    #[test]
    fn zero_limits_refuse_everything() {
        let mut f = FragmentTracker::new(FragmentLimits {
            max_datagrams: 0,
            max_held: 0,
            max_held_per_source: 0,
            max_fragment_len: 0,
            timeout: TIMEOUT,
        });
        f.record_first(key(1, 0), tr(), t(0));
        assert_eq!(f.lookup(&key(1, 0), t(0)), None);
        assert_eq!(f.hold(key(1, 0), &[], t(0)), Err(HoldError::SourceLimit));
        assert_eq!(f.next_expiry(), None);
        assert_eq!(f.expire(t(10_000)), 0);
    }

    #[test]
    fn churn_never_grows_memory() {
        let mut f = FragmentTracker::new(limits());
        let bytes = f.memory_bytes();
        let mut now = 0;
        for round in 0..2000u16 {
            now += 300;
            f.record_first(key((round % 5) as u8, round), tr(), t(now));
            let _ = f.hold(
                key((round % 7) as u8, round.wrapping_add(1)),
                &[1; 16],
                t(now),
            );
            assert_eq!(f.memory_bytes(), bytes);
        }
        f.clear();
        assert_eq!((f.held_count(), f.datagram_count()), (0, 0));
        assert_eq!(f.memory_bytes(), bytes);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Record(FragmentKey),
        Lookup(FragmentKey),
        Hold(FragmentKey, usize),
        Release(FragmentKey),
        Expire,
        Clear,
        Advance(u64),
    }

    fn any_key() -> impl Strategy<Value = FragmentKey> {
        (any::<bool>(), 0..3u8, 0..3u16).prop_map(|(inside, src, ident)| FragmentKey {
            side: if inside { Side::Inside } else { Side::Outside },
            ..key(src, ident)
        })
    }

    fn any_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any_key().prop_map(Op::Record),
            any_key().prop_map(Op::Lookup),
            (any_key(), 4..80usize).prop_map(|(k, len)| Op::Hold(k, len)),
            any_key().prop_map(Op::Release),
            Just(Op::Expire),
            Just(Op::Clear),
            (0..1500u64).prop_map(Op::Advance),
        ]
    }

    /// A held fragment's bytes: its id, repeated, cut to `len`.
    fn fragment_bytes(id: u32, len: usize) -> Vec<u8> {
        id.to_le_bytes().iter().copied().cycle().take(len).collect()
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_limits_and_lose_nothing(
            max_datagrams in 0..6usize,
            max_held in 0..8usize,
            max_held_per_source in 0..5usize,
            max_fragment_len in 4..64usize,
            timeout_ms in 0..3000u64,
            ops in proptest::collection::vec(any_op(), 0..120),
        ) {
            let limits = FragmentLimits {
                max_datagrams,
                max_held,
                max_held_per_source,
                max_fragment_len,
                timeout: Duration::from_millis(timeout_ms),
            };
            let mut f = FragmentTracker::new(limits);
            let bytes = f.memory_bytes();
            let mut now = 0;
            let mut next_id = 0u32;
            // Held fragments by id: their key and length.
            let mut model: HashMap<u32, (FragmentKey, usize)> = HashMap::new();
            let (mut accepted, mut released, mut expired, mut cleared) = (0, 0, 0, 0);
            for op in ops {
                match op {
                    Op::Record(k) => f.record_first(k, tr(), t(now)),
                    Op::Lookup(k) => {
                        f.lookup(&k, t(now));
                    }
                    Op::Hold(k, len) => {
                        next_id += 1;
                        if f.hold(k, &fragment_bytes(next_id, len), t(now)).is_ok() {
                            prop_assert!(len <= max_fragment_len);
                            model.insert(next_id, (k, len));
                            accepted += 1;
                        }
                    }
                    Op::Release(k) => {
                        let mut ids = Vec::new();
                        f.release_held(&k, |b| {
                            let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                            ids.push((id, b.to_vec()));
                        });
                        let mut last = 0;
                        for (id, b) in ids {
                            prop_assert!(id > last, "oldest first");
                            last = id;
                            let (held_key, len) = model.remove(&id).unwrap();
                            prop_assert_eq!(held_key, k);
                            prop_assert_eq!(b, fragment_bytes(id, len));
                            released += 1;
                        }
                    }
                    Op::Expire => expired += f.expire(t(now)),
                    Op::Clear => {
                        cleared += f.held_count() + f.unreported;
                        f.clear();
                    }
                    Op::Advance(ms) => now += ms,
                }
                prop_assert!(f.held_count() <= max_held);
                prop_assert!(f.datagram_count() <= max_datagrams);
                prop_assert_eq!(f.memory_bytes(), bytes);
                prop_assert!(f.per_source.values().all(|&n| 0 < n && n <= max_held_per_source));
                prop_assert_eq!(f.per_source.values().sum::<usize>(), f.held_count());
                // Every accepted fragment is held, released, or dropped by expiry (reported or
                // owed) or by clear.
                prop_assert_eq!(
                    accepted,
                    f.held_count() + released + expired + f.unreported + cleared
                );
                if f.unreported > 0 {
                    prop_assert!(f.next_expiry().is_some_and(|e| e <= t(now)));
                }
            }
        }
    }
}
