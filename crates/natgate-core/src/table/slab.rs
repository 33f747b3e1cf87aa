//! A fixed-capacity slab: records live at stable `u32` slot numbers that the indexes point to.

use super::prefetch_read;

/// End of the free list.
const NIL: u32 = u32::MAX;

/// A slot: a record, or when vacant the next vacant slot (or [`NIL`]). The free list lives in
/// the vacant slots themselves, so it costs no memory when a record has room for a `u32`
/// beside its niche (the table records do: `Slot<Session>` is as big as `Session`).
#[derive(Debug, Clone)]
enum Slot<T> {
    Full(T),
    Free(u32),
}

/// Fixed-capacity storage with O(1) insert and remove through an intrusive free list.
///
/// Per-slot overhead is whatever `Slot<T>` adds to `T`: nothing when `T` has a niche and room
/// for a `u32` beside it (the table records do, through their `Protocol` field), else a tag
/// and a `u32`. Freed slots are reused last-in first-out, so a churning table keeps reusing
/// warm cache lines.
#[derive(Debug, Clone)]
pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    free_head: u32,
    len: usize,
}

impl<T> Slab<T> {
    /// A slab for up to `capacity` records, allocated now and never resized.
    ///
    /// # Panics
    /// If `capacity` is `u32::MAX` or more (slot numbers are `u32`, and `u32::MAX` is reserved).
    pub fn new(capacity: usize) -> Self {
        match Self::try_new(capacity) {
            Ok(s) => s,
            Err(e) => panic!("slab of {capacity}: {e}"),
        }
    }

    /// [`Self::new`], with running out of memory an error instead of an abort.
    ///
    /// # Panics
    /// As [`Self::new`], for a capacity of `u32::MAX` or more.
    pub fn try_new(capacity: usize) -> Result<Self, std::collections::TryReserveError> {
        assert!(
            capacity < NIL as usize,
            "slab capacity {capacity} too large"
        );
        let mut slab = Slab {
            slots: super::try_vec(capacity, || Slot::Free(NIL))?,
            free_head: NIL,
            len: 0,
        };
        slab.reset_free_list();
        Ok(slab)
    }

    /// Every slot vacant, the free list in slot order.
    fn reset_free_list(&mut self) {
        let cap = self.slots.len() as u32;
        for (i, slot) in (1..).zip(self.slots.iter_mut()) {
            *slot = Slot::Free(if i < cap { i } else { NIL });
        }
        self.free_head = if cap > 0 { 0 } else { NIL };
        self.len = 0;
    }

    /// Stores `value` and returns its slot, or `None` when the slab is full.
    pub fn insert(&mut self, value: T) -> Option<u32> {
        let slot = self.free_head;
        let entry = self.slots.get_mut(slot as usize)?;
        let Slot::Free(next) = *entry else {
            // The free list only links vacant slots; a full one here would be a slab bug.
            return None;
        };
        *entry = Slot::Full(value);
        self.free_head = next;
        self.len += 1;
        Some(slot)
    }

    /// Takes the record out of `slot`; `None` if the slot is vacant.
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let entry = self.slots.get_mut(slot as usize)?;
        if let Slot::Free(_) = entry {
            return None;
        }
        let Slot::Full(value) = core::mem::replace(entry, Slot::Free(self.free_head)) else {
            return None;
        };
        self.free_head = slot;
        self.len -= 1;
        Some(value)
    }

    /// The record in `slot`, if occupied.
    #[inline(always)]
    pub fn get(&self, slot: u32) -> Option<&T> {
        match self.slots.get(slot as usize)? {
            Slot::Full(v) => Some(v),
            Slot::Free(_) => None,
        }
    }

    /// The record in `slot`, if occupied, for update.
    #[inline(always)]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        match self.slots.get_mut(slot as usize)? {
            Slot::Full(v) => Some(v),
            Slot::Free(_) => None,
        }
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
        (0..).zip(self.slots.iter()).filter_map(|(i, s)| match s {
            Slot::Full(v) => Some((i, v)),
            Slot::Free(_) => None,
        })
    }

    /// Starts loading the cache line of `slot`, ahead of a [`Self::get`].
    #[inline(always)]
    pub fn prefetch(&self, slot: u32) {
        prefetch_read(self.slots.as_ptr().wrapping_add(slot as usize));
    }

    /// Drops every record (O(capacity)).
    pub fn clear(&mut self) {
        self.reset_free_list();
    }

    /// Bytes of the slot array.
    pub fn memory_bytes(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Slot<T>>()
    }

    /// What [`Slab::memory_bytes`] is for a slab of `capacity`, without building it.
    pub fn memory_for(capacity: usize) -> usize {
        capacity * core::mem::size_of::<Slot<T>>()
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
    fn table_records_keep_the_free_list_in_their_niche() {
        use crate::table::{Mapping, Session};
        assert_eq!(core::mem::size_of::<Slot<Session>>(), 32);
        assert_eq!(core::mem::size_of::<Slot<Mapping>>(), 28);
        let s: Slab<Session> = Slab::new(100);
        assert_eq!(s.memory_bytes(), 100 * 32);
    }

    #[test]
    fn overhead_is_four_bytes_for_niche_types() {
        let s: Slab<core::num::NonZeroU32> = Slab::new(100);
        assert_eq!(s.memory_bytes(), 100 * 8);
    }
}
