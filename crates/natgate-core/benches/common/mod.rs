//! What every benchmark of the engine shares: the huge-page allocator the tables live in, and
//! the thread-CPU-time measurement criterion runs with. Included by `mod common;` from each
//! bench (a directory, so cargo does not take it for a bench of its own).
//!
//! Times are the benchmark thread's own CPU time ([`CpuTime`]), not wall time: the machine this
//! runs on is shared, and wall time would charge us for other processes' time slices.
//!
//! Tables are backed by transparent huge pages, as a deployment should have them: the global
//! allocator asks for them on every large allocation ([`HugePageAlloc`]) once
//! [`init_huge_pages`] has read `NATGATE_BENCH_HUGEPAGES` (`0` turns them off, and random
//! lookups then pay 4 KiB-page TLB misses).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// The system allocator, plus `madvise(MADV_HUGEPAGE)` on allocations of 4 MiB and more while
/// [`HUGE_PAGES`] is set. Large allocations are fresh mappings whose pages are not touched yet,
/// so the advice takes effect as the engine first writes its tables.
struct HugePageAlloc;

pub static HUGE_PAGES: AtomicBool = AtomicBool::new(false);

const HUGE_PAGE: usize = 2 << 20;

// SAFETY: every call is forwarded to `System` with the caller's arguments; `madvise` only
// advises on whole pages inside the block just allocated.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        advise_huge(p, layout.size());
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        advise_huge(p, layout.size());
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `System` with this layout (through `alloc`/`alloc_zeroed`).
        unsafe { System.dealloc(p, layout) }
    }
}

fn advise_huge(p: *mut u8, size: usize) {
    if p.is_null() || size < 2 * HUGE_PAGE || !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    let start = (p as usize).next_multiple_of(HUGE_PAGE);
    let end = (p as usize + size) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: [start, end) lies inside the block just allocated; MADV_HUGEPAGE changes no
        // contents. A failure (THP disabled) leaves ordinary pages, which is fine for a hint.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[global_allocator]
static ALLOC: HugePageAlloc = HugePageAlloc;

/// Time this thread has spent on a CPU, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A criterion measurement of the benchmark thread's CPU time, formatted like wall time.
pub struct CpuTime;

/// Lends its duration formatter to [`CpuTime`].
static WALL: WallTime = WallTime;

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = Duration;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> Duration {
        Duration::from_nanos(thread_cpu_ns() - start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL.formatter()
    }
}

/// Turns huge pages on unless `NATGATE_BENCH_HUGEPAGES=0`; returns whether they are on.
pub fn init_huge_pages() -> bool {
    let huge = std::env::var("NATGATE_BENCH_HUGEPAGES").map_or(true, |v| v != "0");
    HUGE_PAGES.store(huge, Ordering::Relaxed);
    huge
}

/// Resident set size of this process, from /proc/self/status.
#[allow(dead_code)] // not every bench reports its RSS
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
