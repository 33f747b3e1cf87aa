//! A global allocator that puts the engine's tables on transparent huge pages.
//!
//! Session look-ups are random reads over hundreds of megabytes: with 4 KiB pages nearly every
//! one also misses the TLB (measured: the 1 M-session fast path 21% slower batched, 38% one at
//! a time). [`HugePageAlloc`] forwards to the system allocator and `madvise(MADV_HUGEPAGE)`s
//! every allocation of [`HugePageAlloc::THRESHOLD`] bytes or more, which in practice means the
//! tables (allocated once, at their full size, when an engine is built); small allocations are
//! left alone. It needs THP in `madvise` or `always` mode
//! (`/sys/kernel/mm/transparent_hugepage/enabled`); under `never` the advice is ignored and
//! ordinary pages are used. Large allocations are fresh mappings not touched yet, so the advice
//! takes effect as the tables are first written.
//!
//! Not part of the sans-IO engine: behind the `huge-pages` feature, for the daemon and benches
//! (`#[global_allocator] static A: HugePageAlloc = HugePageAlloc::new();`).

use core::sync::atomic::{AtomicBool, Ordering};
use std::alloc::{GlobalAlloc, Layout, System};

const HUGE_PAGE: usize = 2 << 20;

/// The system allocator plus `MADV_HUGEPAGE` on large allocations; see the module docs.
#[derive(Debug)]
pub struct HugePageAlloc {
    enabled: AtomicBool,
}

impl HugePageAlloc {
    /// Allocations of this size or more are advised (two huge pages, so that at least one
    /// whole aligned huge page lies inside).
    pub const THRESHOLD: usize = 2 * HUGE_PAGE;

    /// An allocator that advises huge pages until [`Self::set_enabled`] says otherwise.
    pub const fn new() -> Self {
        HugePageAlloc {
            enabled: AtomicBool::new(true),
        }
    }

    /// Turns the advice on or off for later allocations (to measure what it buys).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether later large allocations are advised.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn advise(&self, p: *mut u8, size: usize) {
        if p.is_null() || size < Self::THRESHOLD || !self.enabled() {
            return;
        }
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + size) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: [start, end) lies inside the block just allocated; MADV_HUGEPAGE changes
            // no contents. A failure (THP disabled) leaves ordinary pages, fine for a hint.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
}

impl Default for HugePageAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded to `System` with the caller's arguments; `madvise` only
// advises on whole pages inside the block just allocated.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        self.advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        self.advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `System` with this layout (through `alloc`/`alloc_zeroed`).
        unsafe { System.dealloc(p, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_frees_and_advises_only_large_blocks() {
        let a = HugePageAlloc::new();
        for size in [
            64,
            HugePageAlloc::THRESHOLD,
            HugePageAlloc::THRESHOLD * 3 + 5,
        ] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: a non-zero size; the block is written within bounds and freed with the
            // layout it was allocated with.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(*p.add(size - 1), 0);
                *p.add(size - 1) = 7;
                a.dealloc(p, layout);
            }
        }
        a.set_enabled(false);
        assert!(!a.enabled());
    }
}
