//! A fixed-capacity slab: records live at stable `u32` slot numbers that the indexes point to.

use super::prefetch_read;

/// End of the free list.
const NIL: u32 = u32::MAX;

/// Fixed-capacity storage with O(1) insert and remove through an intrusive free list.
///
/// Per-slot overhead is the 4-byte free-list link, plus whatever `Option<T>` adds to `T`: nothing
/// when `T` has a niche (the table records do, through their `Protocol` field). Freed slots are
/// reused last-in first-out, so a churning table keeps reusing warm cache lines.
#[derive(Debug, Clone)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    /// For a free slot, the next free slot (or [`NIL`]); unused for an occupied slot.
    next_free: Vec<u32>,
    free_head: u32,
    len: usize,
}

impl<T> Slab<T> {
    /// A slab for up to `capacity` records, allocated now and never resized.
    ///
    /// # Panics
    /// If `capacity` is `u32::MAX` or more (slot numbers are `u32`, and `u32::MAX` is reserved).
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity < NIL as usize,
            "slab capacity {capacity} too large"
        );
        let mut slab = Slab {
            slots: Vec::with_capacity(capacity),
            next_free: Vec::with_capacity(capacity),
            free_head: NIL,
            len: 0,
        };
        slab.slots.resize_with(capacity, || None);
        slab.next_free.resize(capacity, NIL);
        slab.reset_free_list();
        slab
    }

    fn reset_free_list(&mut self) {
        let cap = self.next_free.len() as u32;
        for (i, next) in (1..).zip(self.next_free.iter_mut()) {
            *next = if i < cap { i } else { NIL };
        }
        self.free_head = if cap > 0 { 0 } else { NIL };
        self.len = 0;
    }

    /// Stores `value` and returns its slot, or `None` when the slab is full.
    pub fn insert(&mut self, value: T) -> Option<u32> {
        let slot = self.free_head;
        let i = slot as usize;
        let entry = self.slots.get_mut(i)?;
        *entry = Some(value);
        self.free_head = self.next_free[i];
        self.len += 1;
        Some(slot)
    }

    /// Takes the record out of `slot`; `None` if the slot is vacant.
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let i = slot as usize;
        let value = self.slots.get_mut(i)?.take()?;
        self.next_free[i] = self.free_head;
        self.free_head = slot;
        self.len -= 1;
        Some(value)
    }

    /// The record in `slot`, if occupied.
    #[inline(always)]
    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The record in `slot`, if occupied, for update.
    #[inline(always)]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Whether `slot` is occupied.
    pub fn contains(&self, slot: u32) -> bool {
        self.get(slot).is_some()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slab holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most records the slab holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Occupied slots and their records, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        (0..)
            .zip(self.slots.iter())
            .filter_map(|(i, s)| s.as_ref().map(|v| (i, v)))
    }

    /// Starts loading the cache line of `slot`, ahead of a [`Self::get`].
    #[inline(always)]
    pub fn prefetch(&self, slot: u32) {
        prefetch_read(self.slots.as_ptr().wrapping_add(slot as usize));
    }

    /// Drops every record (O(capacity)).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.reset_free_list();
    }

    /// Bytes of the two slot arrays.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Option<T>>()
            + self.next_free.capacity() * core::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_reuse_and_full() {
        let mut s = Slab::new(3);
        let a = s.insert("a").unwrap();
        let b = s.insert("b").unwrap();
        let c = s.insert("c").unwrap();
        assert_eq!(s.insert("d"), None);
        assert_eq!((s.len(), s.capacity()), (3, 3));
        assert_eq!(s.remove(b), Some("b"));
        assert_eq!(s.remove(b), None);
        assert!(!s.contains(b));
        assert_eq!(s.get(b), None);
        assert_eq!(s.insert("e"), Some(b), "freed slot reused first");
        *s.get_mut(a).unwrap() = "A";
        let all: Vec<_> = s.iter().collect();
        assert_eq!(all, vec![(a, &"A"), (b, &"e"), (c, &"c")]);
        assert_eq!(s.get(99), None);
        assert_eq!(s.remove(99), None);
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.iter().count(), 0);
        assert_eq!(s.insert("f"), Some(0));
    }

    #[test]
    fn zero_capacity_is_always_full() {
        let mut s: Slab<u8> = Slab::new(0);
        assert_eq!(s.insert(1), None);
        assert_eq!(s.memory_bytes(), 0);
    }

    #[test]
    fn overhead_is_four_bytes_for_niche_types() {
        let s: Slab<core::num::NonZeroU32> = Slab::new(100);
        assert_eq!(s.memory_bytes(), 100 * 8);
    }
}
