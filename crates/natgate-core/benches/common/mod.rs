//! What every benchmark of the engine shares: the huge-page allocator the tables live in, the
//! thread-CPU-time measurement criterion runs with, and the 64-byte packets they translate. Included by `mod common;` from each
//! bench (a directory, so cargo does not take it for a bench of its own).
//!
//! Times are the benchmark thread's own CPU time ([`CpuTime`]), not wall time: the machine this
//! runs on is shared, and wall time would charge us for other processes' time slices.
//!
//! Tables are backed by transparent huge pages, as a deployment should have them: the global
//! allocator asks for them on every large allocation ([`HugePageAlloc`]) once
//! [`init_huge_pages`] has read `NATGATE_BENCH_HUGEPAGES` (`0` turns them off, and random
//! lookups then pay 4 KiB-page TLB misses).

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use etherparse::PacketBuilder;
use natgate_core::engine::{BATCH, Engine, PacketBuf};
use natgate_core::huge_pages::HugePageAlloc;
use natgate_core::{Endpoint, Instant, Protocol, Side, Verdict};

/// The daemon's allocator: `madvise(MADV_HUGEPAGE)` on large allocations once
/// [`init_huge_pages`] has switched it on.
#[global_allocator]
pub static ALLOC: HugePageAlloc = HugePageAlloc::new();

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
    ALLOC.set_enabled(huge);
    huge
}

/// A size in kB from a `/proc/self` file (`VmRSS:` of `status`, `AnonHugePages:` of
/// `smaps_rollup`), in bytes; 0 if it cannot be read.
#[allow(dead_code)] // not every bench reports memory
pub fn proc_bytes(file: &str, field: &str) -> usize {
    std::fs::read_to_string(format!("/proc/self/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resident set size of this process.
#[allow(dead_code)] // not every bench reports its RSS
pub fn rss_bytes() -> usize {
    proc_bytes("status", "VmRSS:")
}

/// Runs `packets` (each a whole packet of `N` bytes) through `e` at `now` in batches of
/// [`BATCH`] (the rest one at a time), draining events as a driver would; returns how many were
/// forwarded.
#[allow(dead_code)] // not every bench replays packets
pub fn run<const N: usize>(
    e: &mut Engine,
    now: Instant,
    side: Side,
    packets: &mut [[u8; N]],
) -> usize {
    let mut verdicts = [Verdict::Held; BATCH];
    let mut forwarded = 0;
    let mut chunks = packets.chunks_exact_mut(BATCH);
    for chunk in &mut chunks {
        let chunk: &mut [[u8; N]; BATCH] = chunk.try_into().unwrap_or_else(|_| unreachable!());
        let mut bufs = chunk.each_mut().map(|b| PacketBuf { buf: b, len: N });
        e.process_batch(now, side, &mut bufs, &mut verdicts);
        forwarded += verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Forward(_)))
            .count();
        while e.poll_event().is_some() {}
    }
    for b in chunks.into_remainder() {
        forwarded += usize::from(matches!(e.process(now, side, b, N), Verdict::Forward(_)));
    }
    while e.poll_event().is_some() {}
    forwarded
}

/// Every packet of the benches is 64 bytes: IPv4 (20) + UDP (8) + 36 payload, or IPv4 + TCP
/// (20) + 24.
pub const PKT: usize = 64;

/// A packet to copy into a working buffer before each translation (translation is in place).
pub type Template = [u8; PKT];

/// TCP flags for [`packet`].
pub const TCP_SYN: u8 = 0x02;
/// TCP flags for [`packet`].
pub const TCP_ACK: u8 = 0x10;

/// A 64-byte TCP segment (with the SYN and ACK bits of `tcp_flags`) or UDP datagram from `src`
/// to `dst`, with valid checksums.
pub fn packet(proto: Protocol, src: Endpoint, dst: Endpoint, tcp_flags: u8) -> Template {
    let ip = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64);
    let mut v = Vec::with_capacity(PKT);
    let r = match proto {
        Protocol::Tcp => {
            let mut b = ip.tcp(src.port, dst.port, 1, 65_535);
            if tcp_flags & TCP_SYN != 0 {
                b = b.syn();
            }
            if tcp_flags & TCP_ACK != 0 {
                b = b.ack(1);
            }
            b.write(&mut v, &[0x5a; 24])
        }
        _ => ip.udp(src.port, dst.port).write(&mut v, &[0x5a; 36]),
    };
    r.unwrap_or_else(|e| panic!("build packet: {e}"));
    v.try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("packet of {} bytes", v.len()))
}
