//! A lazy expiry timer wheel with one-second slots.
//!
//! Sessions are refreshed by every packet, and the fast path must not touch the wheel: it only
//! writes the session's `last_seen`. The wheel therefore holds each item at the time it was *last
//! scheduled for*, and when that slot comes due it asks the owner what the item's real due time is
//! now: a refreshed item is re-scheduled, an idle one is forgotten.
//!
//! Storage is two `u32` links per item plus one head per slot: every slot holds a doubly linked
//! list whose ends link to the slot itself (`END | slot`), so [`TimerWheel::unschedule`] is O(1)
//! without storing due times. A singly linked list would save 4 bytes per item but makes
//! unschedule walk its slot's list: measured 10 us per explicit session delete at 1 M sessions,
//! a cost an attacker who can trigger deletes (RSTs) would be glad to impose.
//!
//! Items due more than one turn ahead are parked in the slot one turn ahead and visited early,
//! once per turn; `on_due` then answers with the same due time again.

/// Slots per turn: 4096 one-second slots, a little over an hour.
const SLOTS: usize = 4096;
const MASK: u64 = SLOTS as u64 - 1;
/// Link values with this bit set end a list; the low bits are the slot number.
const END: u32 = 0x8000_0000;
/// The links of an item that is not scheduled.
const UNSCHEDULED: u32 = u32::MAX;
/// Index of the next-item link in an item's links.
const NEXT: usize = 0;
/// Index of the previous-item link in an item's links.
const PREV: usize = 1;

/// A timer wheel over `u32` items (session slots); see the module docs.
#[derive(Debug, Clone)]
pub struct TimerWheel {
    /// Per item, side by side so that one cache line holds both: `[next, prev]` in its slot's
    /// list, `END | slot` past either end, or both [`UNSCHEDULED`].
    links: Vec<[u32; 2]>,
    /// Per slot: the first item, or `END | slot` when empty.
    heads: Vec<u32>,
    /// Bit per slot, set when the slot is non-empty, so [`TimerWheel::next_due`] scans 64 words.
    occupied: Vec<u64>,
    /// The last second visited by [`TimerWheel::advance`]; slots cover `(now, now + SLOTS]`.
    now: u32,
}

impl TimerWheel {
    /// A wheel for items `0..max_items`, allocated now.
    ///
    /// # Panics
    /// If `max_items` exceeds 2^31 (the top link bit marks list ends).
    pub fn new(max_items: usize) -> Self {
        match Self::try_new(max_items) {
            Ok(w) => w,
            Err(e) => panic!("timer wheel of {max_items}: {e}"),
        }
    }

    /// [`Self::new`], with running out of memory an error instead of an abort.
    ///
    /// # Panics
    /// As [`Self::new`].
    pub fn try_new(max_items: usize) -> Result<Self, std::collections::TryReserveError> {
        assert!(
            max_items <= END as usize,
            "timer wheel for {max_items} items"
        );
        Ok(TimerWheel {
            links: super::try_vec(max_items, || [UNSCHEDULED; 2])?,
            heads: (0..SLOTS as u32).map(|s| END | s).collect(),
            occupied: vec![0; SLOTS / 64],
            now: 0,
        })
    }

    /// Puts `item` in the slot of `due_secs`. A due time already past is visited at the next
    /// advance; one more than a turn ahead is parked one turn ahead (visited early). The item must
    /// not already be scheduled.
    pub fn schedule(&mut self, item: u32, due_secs: u32) {
        debug_assert_eq!(
            self.links[item as usize][NEXT], UNSCHEDULED,
            "item {item} scheduled twice"
        );
        let base = u64::from(self.now);
        let due = u64::from(due_secs).clamp(base + 1, base + SLOTS as u64);
        let slot = (due & MASK) as usize;
        let first = self.heads[slot];
        if first & END == 0 {
            self.links[first as usize][PREV] = item;
        }
        self.links[item as usize] = [first, END | slot as u32];
        self.heads[slot] = item;
        self.occupied[slot / 64] |= 1 << (slot % 64);
    }

    /// Takes `item` out of the wheel in O(1); false if it was not scheduled.
    pub fn unschedule(&mut self, item: u32) -> bool {
        let Some(&[next, prev]) = self.links.get(item as usize) else {
            return false;
        };
        if next == UNSCHEDULED {
            return false;
        }
        if next & END == 0 {
            self.links[next as usize][PREV] = prev;
        }
        if prev & END == 0 {
            self.links[prev as usize][NEXT] = next;
        } else {
            let slot = (prev & !END) as usize;
            self.heads[slot] = next;
            if next & END != 0 {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        }
        self.links[item as usize] = [UNSCHEDULED; 2];
        true
    }

    /// Visits every item whose slot came due in `(last advance, now_secs]`, in slot order.
    /// `on_due(item)` returns `Some(due)` to re-schedule the item (it was refreshed, or it was
    /// parked from beyond a turn) or `None` to forget it (it expired). If `now_secs` jumped more
    /// than a turn, every slot is visited once. Call it at or after [`Self::next_due`].
    pub fn advance(&mut self, now_secs: u32, mut on_due: impl FnMut(u32) -> Option<u32>) {
        if now_secs <= self.now {
            return;
        }
        let first = self.now.max(now_secs.saturating_sub(SLOTS as u32)) + 1;
        for second in first..=now_secs {
            // Re-scheduled items land after `second`, so set the base before calling back.
            self.now = second;
            let slot = (u64::from(second) & MASK) as usize;
            let mut link = self.heads[slot];
            if link & END != 0 {
                continue;
            }
            self.heads[slot] = END | slot as u32;
            self.occupied[slot / 64] &= !(1 << (slot % 64));
            while link & END == 0 {
                let item = link;
                link = self.links[item as usize][NEXT];
                self.links[item as usize] = [UNSCHEDULED; 2];
                if let Some(due) = on_due(item) {
                    self.schedule(item, due);
                }
            }
        }
    }

    /// The second of the earliest non-empty slot, if any: never later than the earliest due
    /// item, and earlier (by up to a turn) only for items parked from beyond a turn.
    pub fn next_due(&self) -> Option<u32> {
        let start = ((u64::from(self.now) + 1) & MASK) as usize;
        let words = self.occupied.len();
        // Scan the bitmap cyclically from `start`: the partial first word, the others, and the
        // low part of the first word last.
        let (w0, b0) = (start / 64, start % 64);
        let mut found = None;
        let head = self.occupied[w0] & (!0u64 << b0);
        if head != 0 {
            found = Some(w0 * 64 + head.trailing_zeros() as usize);
        } else {
            for k in 1..=words {
                let w = (w0 + k) % words;
                let bits = if k == words {
                    self.occupied[w] & !(!0u64 << b0)
                } else {
                    self.occupied[w]
                };
                if bits != 0 {
                    found = Some(w * 64 + bits.trailing_zeros() as usize);
                    break;
                }
            }
        }
        let slot = found?;
        let distance = (slot + SLOTS - start) % SLOTS;
        Some(self.now.saturating_add(1).saturating_add(distance as u32))
    }

    /// Forgets every item (O(items + slots)); the wheel's clock is kept.
    pub fn clear(&mut self) {
        self.links.fill([UNSCHEDULED; 2]);
        for (s, head) in (0..).zip(self.heads.iter_mut()) {
            *head = END | s;
        }
        self.occupied.fill(0);
    }

    /// Bytes of the link, head and bitmap arrays.
    pub fn memory_bytes(&self) -> usize {
        self.links.capacity() * 8 + self.heads.capacity() * 4 + self.occupied.capacity() * 8
    }

    /// What [`TimerWheel::memory_bytes`] is for a wheel of `max_items`, without building it.
    pub fn memory_for(max_items: usize) -> usize {
        max_items * 8 + SLOTS * 4 + SLOTS / 64 * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Advances second by second to `to`, recording (second, item) visits; items whose due
    /// (from `due`) is later are re-scheduled, others are expired.
    fn run(w: &mut TimerWheel, to: u32, due: &[u32]) -> Vec<(u32, u32)> {
        let mut seen = Vec::new();
        for now in w.now + 1..=to {
            w.advance(now, |item| {
                if due[item as usize] > now {
                    Some(due[item as usize])
                } else {
                    seen.push((now, item));
                    None
                }
            });
        }
        seen
    }

    #[test]
    fn expires_at_the_exact_second() {
        let mut w = TimerWheel::new(4);
        w.schedule(0, 5);
        w.schedule(1, 7);
        assert_eq!(w.next_due(), Some(5));
        let due = [5, 7, 0, 0];
        assert_eq!(run(&mut w, 10, &due), vec![(5, 0), (7, 1)]);
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn refreshed_item_is_rescheduled() {
        let mut w = TimerWheel::new(2);
        w.schedule(0, 30);
        // The item was refreshed at 20 and is now due at 50: visited at 30, kept, expired at 50.
        let mut visits = Vec::new();
        for now in 1..=60 {
            w.advance(now, |item| {
                visits.push(now);
                (now < 50).then_some(50).filter(|_| item == 0)
            });
        }
        assert_eq!(visits, vec![30, 50]);
    }

    #[test]
    fn past_due_is_visited_next_second() {
        let mut w = TimerWheel::new(1);
        w.advance(100, |_| None);
        w.schedule(0, 3);
        assert_eq!(w.next_due(), Some(101));
        assert_eq!(run(&mut w, 101, &[3]), vec![(101, 0)]);
    }

    #[test]
    fn far_future_due_times_wait_whole_turns() {
        let mut w = TimerWheel::new(2);
        let due = [7440, 30 * 86_400];
        w.schedule(0, due[0]);
        w.schedule(1, due[1]);
        assert_eq!(w.next_due(), Some(4096), "parked one turn ahead");
        assert_eq!(run(&mut w, 7439, &due), vec![]);
        assert_eq!(run(&mut w, 7440, &due), vec![(7440, 0)]);
        w.advance(30 * 86_400 - 1, |i| Some(due[i as usize]));
        assert_eq!(run(&mut w, 30 * 86_400, &due), vec![(30 * 86_400, 1)]);
    }

    #[test]
    fn now_jumping_ahead_visits_each_slot_once() {
        let mut w = TimerWheel::new(100);
        for i in 0..100 {
            w.schedule(i, 1 + i * 50);
        }
        let mut visits = vec![0; 100];
        w.advance(1_000_000, |i| {
            visits[i as usize] += 1;
            None
        });
        assert!(visits.iter().all(|&v| v == 1));
        assert_eq!(w.next_due(), None);
        // A re-schedule into the past during a jump is visited again within the same jump.
        w.schedule(0, 1_000_010);
        let mut seen = Vec::new();
        w.advance(2_000_000, |i| {
            seen.push(i);
            (seen.len() == 1).then_some(5)
        });
        assert_eq!(seen, vec![0, 0]);
    }

    #[test]
    fn unschedule_anywhere_in_a_list() {
        let mut w = TimerWheel::new(5);
        for i in 0..5 {
            w.schedule(i, 9);
        }
        assert!(w.unschedule(2)); // middle
        assert!(w.unschedule(4)); // head (last pushed)
        assert!(w.unschedule(0)); // tail
        assert!(!w.unschedule(0));
        assert!(!w.unschedule(77));
        assert_eq!(run(&mut w, 9, &[9; 5]), vec![(9, 3), (9, 1)]);
        w.schedule(0, 20);
        assert!(w.unschedule(0));
        assert_eq!(w.next_due(), None, "emptied slot leaves the bitmap");
        w.schedule(0, 30);
        w.clear();
        assert_eq!(w.next_due(), None);
        w.schedule(0, 31);
        assert_eq!(w.next_due(), Some(31));
    }

    #[test]
    fn next_due_wraps_around_the_wheel() {
        let mut w = TimerWheel::new(2);
        w.advance(4000, |_| None);
        w.schedule(0, 4100); // slot 4, after the wrap
        w.schedule(1, 4090);
        assert_eq!(w.next_due(), Some(4090));
        assert!(w.unschedule(1));
        assert_eq!(w.next_due(), Some(4100));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Schedule(u32, u32),
        Unschedule(u32),
        Advance(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..16, 0u32..20_000).prop_map(|(i, d)| Op::Schedule(i, d)),
            1 => (0u32..16).prop_map(Op::Unschedule),
            2 => prop_oneof![0u32..5, 0u32..10_000].prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model of real due times: after `advance(now)` (to a later second) exactly
        /// the items due at or before `now` have expired, each once, whatever the jumps and
        /// far-future due times.
        #[test]
        fn matches_due_time_model(ops in prop::collection::vec(op(), 1..200)) {
            let mut w = TimerWheel::new(16);
            let mut due: HashMap<u32, u32> = HashMap::new();
            let mut now = 0u32;
            for op in ops {
                match op {
                    Op::Schedule(i, d) if !due.contains_key(&i) => {
                        let d = now + d;
                        w.schedule(i, d);
                        due.insert(i, d);
                    }
                    Op::Schedule(..) => {}
                    Op::Unschedule(i) => {
                        prop_assert_eq!(w.unschedule(i), due.remove(&i).is_some());
                    }
                    Op::Advance(delta) => {
                        now += delta;
                        let mut expired = Vec::new();
                        w.advance(now, |i| match due[&i] {
                            d if d > now => Some(d),
                            _ => {
                                expired.push(i);
                                None
                            }
                        });
                        expired.sort_unstable();
                        // The wheel acts on seconds after its last advance: a zero step is idle.
                        let mut expected: Vec<u32> = due
                            .iter()
                            .filter(|&(_, &d)| delta > 0 && d <= now)
                            .map(|(&i, _)| i)
                            .collect();
                        expected.sort_unstable();
                        prop_assert_eq!(&expired, &expected);
                        due.retain(|_, d| delta == 0 || *d > now);
                    }
                }
                if let (Some(next), Some(&earliest)) = (w.next_due(), due.values().min()) {
                    prop_assert!(next <= earliest.max(now + 1), "next_due never late");
                }
                prop_assert_eq!(w.next_due().is_some(), !due.is_empty());
            }
        }
    }
}
