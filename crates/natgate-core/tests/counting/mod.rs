//! The counting global allocator of the no-allocation tests (`fast_path_alloc`,
//! `static_path_alloc`), and their batch driver: each test binary includes it with
//! `mod counting;`, which makes it that binary's global allocator. Only threads that called [`start`] are counted, so the test
//! harness's own allocations do not disturb the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use natgate_core::engine::{BATCH, Engine, PacketBuf};
use natgate_core::{Instant, Side, Verdict};

/// Counts allocations made by threads that have switched counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` with the caller's arguments; counting touches
// only an atomic and a const-initialised thread local, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `p` came from `System` with `layout`; the caller's contract is passed on.
        unsafe { System.realloc(p, layout, new_size) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `System` with `layout`.
        unsafe { System.dealloc(p, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Counts this thread's allocations from now on.
pub fn start() {
    COUNTING.with(|c| c.set(true));
}

/// Stops counting this thread's allocations.
pub fn stop() {
    COUNTING.with(|c| c.set(false));
}

/// Allocations counted so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Allocations counted so far, and the count back to zero.
pub fn take() -> u64 {
    ALLOCATIONS.swap(0, Ordering::Relaxed)
}

/// Translates `packets` in place with [`Engine::process_batch`], in batches of [`BATCH`] (the
/// last one shorter); returns how many were forwarded. Not counted: it is the tests' driver.
pub fn batched(e: &mut Engine, side: Side, packets: &mut [Vec<u8>]) -> usize {
    let mut verdicts = [Verdict::Held; BATCH];
    let mut forwarded = 0;
    for chunk in packets.chunks_mut(BATCH) {
        let n = chunk.len();
        let mut bufs = [const { None }; BATCH];
        for (b, p) in bufs.iter_mut().zip(chunk.iter_mut()) {
            let len = p.len();
            *b = Some(PacketBuf { buf: p, len });
        }
        let mut bufs: [PacketBuf<'_>; BATCH] = bufs.map(|b| {
            b.unwrap_or(PacketBuf {
                buf: &mut [],
                len: 0,
            })
        });
        e.process_batch(Instant::from_secs(10), side, &mut bufs[..n], &mut verdicts);
        forwarded += verdicts[..n]
            .iter()
            .filter(|v| matches!(v, Verdict::Forward(_)))
            .count();
    }
    forwarded
}
