//! Engine benchmarks: the established-flow fast path (batched and one at a time, both
//! directions) on engines holding 16 K, 1 M and 16 M sessions, and session creation. At 16 K
//! the tables stay in cache, so that case measures the fast path's instructions alone.
//!
//! `cargo bench -p natgate-core --bench engine -- --warm-up-time 1 --measurement-time 5`
//! (add a filter such as `1M` to skip the 16 M engine, which takes about 1.7 GB and some
//! seconds to fill). Results and the memory-per-session figures are in `BENCHMARKS.md`.
//!
//! Translation is in place, so every iteration first copies its 32 packets from templates into
//! the working buffers; `copy_only` measures that copy alone, to be subtracted.
//!
//! Times are the benchmark thread's own CPU time, tables are on huge pages
//! (`NATGATE_BENCH_HUGEPAGES=0` turns them off): see `common/mod.rs`.

mod common;

use std::cell::Cell;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::{ALLOC, CpuTime, PKT, TCP_ACK, TCP_SYN, Template, packet, proc_bytes, rss_bytes};
use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natgate_core::engine::{BATCH, Engine, PacketBuf};
use natgate_core::{Config, Endpoint, Instant, Protocol, Rng, Side, Verdict};

/// External addresses in the pool (paired pooling spreads subscribers over them).
const POOL: u32 = 512;
/// Flows (internal endpoints) per subscriber address.
const PER_SUBSCRIBER: u32 = 64;
/// At most this many flows get packet templates (in random order), so the templates of the
/// 16 M case stay at 128 MB while still touching far more memory than any cache holds.
const MAX_TEMPLATES: usize = 1 << 20;

fn now() -> Instant {
    Instant::from_secs(1_000)
}

/// Flow `i`: odd flows TCP, even flows UDP, each from its own internal endpoint (so each has its
/// own mapping: one mapping per session, the worst case for memory and creation).
fn flow(i: u32) -> (Protocol, Endpoint, Endpoint) {
    let proto = if i & 1 == 1 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let internal = Endpoint::new(
        Ipv4Addr::from_bits(0x6440_0000 + i / PER_SUBSCRIBER),
        10_000 + (i % PER_SUBSCRIBER) as u16,
    );
    let remote = Endpoint::new(
        Ipv4Addr::from_bits(0xcb00_7100 + (i % 251)),
        if proto == Protocol::Tcp { 443 } else { 4500 },
    );
    (proto, internal, remote)
}

/// The flow number of an internal endpoint made by [`flow`].
fn flow_of(internal: Endpoint) -> usize {
    let sub = internal.addr.to_bits() - 0x6440_0000;
    (sub * PER_SUBSCRIBER + u32::from(internal.port - 10_000)) as usize
}

fn engine(max_sessions: u32) -> Engine {
    let pool = (0..POOL)
        .map(|i| Ipv4Addr::from_bits(0xc612_0000 + i))
        .collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = max_sessions;
    c.limits.max_mappings = max_sessions;
    Engine::new(
        c.validate().unwrap_or_else(|e| panic!("config: {e}")),
        0x5eed,
    )
}

/// An engine with `n` established sessions (TCP handshakes done both ways) and packet templates
/// of established traffic for a random sample of them, both directions.
struct Fixture {
    engine: Engine,
    outbound: Vec<Template>,
    inbound: Vec<Template>,
    cursor: Cell<usize>,
}

impl Fixture {
    #[allow(clippy::print_stderr)] // a bench reports its memory figures on stderr
    fn new(n: u32) -> Self {
        let rss0 = rss_bytes();
        let mut e = engine(n);
        let rss_tables = rss_bytes() - rss0;
        let opening: Vec<(u32, Protocol, Endpoint, Endpoint)> = (0..n)
            .map(|i| {
                let (p, int, rem) = flow(i);
                (i, p, int, rem)
            })
            .collect();
        for part in opening.chunks(1 << 16) {
            let mut pkts: Vec<Template> = part
                .iter()
                .map(|&(_, p, int, rem)| packet(p, int, rem, TCP_SYN))
                .collect();
            assert_eq!(
                common::run(&mut e, now(), Side::Inside, &mut pkts),
                part.len()
            );
        }
        assert_eq!(e.session_count(), n as usize);
        let rss_filled = rss_bytes() - rss0;
        let mut external = vec![Endpoint::UNSPECIFIED; n as usize];
        for s in e.sessions() {
            external[flow_of(s.internal)] = s.external;
        }
        // Finish the TCP handshakes: SYN-ACK in, ACK out.
        for part in opening.chunks(1 << 16) {
            let tcp = part.iter().filter(|f| f.1 == Protocol::Tcp);
            let mut syn_acks: Vec<Template> = tcp
                .clone()
                .map(|&(i, p, _, rem)| packet(p, rem, external[i as usize], TCP_SYN | TCP_ACK))
                .collect();
            assert_eq!(
                common::run(&mut e, now(), Side::Outside, &mut syn_acks),
                syn_acks.len()
            );
            let mut acks: Vec<Template> = tcp
                .map(|&(_, p, int, rem)| packet(p, int, rem, TCP_ACK))
                .collect();
            assert_eq!(
                common::run(&mut e, now(), Side::Inside, &mut acks),
                acks.len()
            );
        }
        drop(opening);
        let table = e.table_memory_bytes();
        eprintln!(
            "engine with {n} sessions ({} mappings, huge pages {}): table accounting \
             {:.1} B/session; RSS delta after Engine::new {} B/session, after filling {} B/session; \
             {} MiB of the process on huge pages",
            e.mapping_count(),
            ALLOC.enabled(),
            table as f64 / f64::from(n),
            rss_tables / n as usize,
            rss_filled / n as usize,
            // Huge pages are a hint the kernel may not honour (fragmented memory): this says
            // how far it did, which moves random-access timings by tens of percent.
            proc_bytes("smaps_rollup", "AnonHugePages:") >> 20,
        );
        let mut rng = Rng::new(42);
        let count = (n as usize).min(MAX_TEMPLATES);
        let mut sample: Vec<u32> = if count == n as usize {
            (0..n).collect()
        } else {
            (0..count).map(|_| rng.below(n)).collect()
        };
        for i in (1..sample.len()).rev() {
            sample.swap(i, rng.below(i as u32 + 1) as usize);
        }
        let outbound = sample
            .iter()
            .map(|&i| {
                let (p, int, rem) = flow(i);
                packet(p, int, rem, TCP_ACK)
            })
            .collect();
        let inbound = sample
            .iter()
            .map(|&i| {
                let (p, _, rem) = flow(i);
                packet(p, rem, external[i as usize], TCP_ACK)
            })
            .collect();
        let mut f = Fixture {
            engine: e,
            outbound,
            inbound,
            cursor: Cell::new(0),
        };
        // Sanity: established traffic is forwarded both ways and creates nothing.
        for side in [Side::Inside, Side::Outside] {
            let mut work = [[0u8; PKT]; BATCH];
            let mut verdicts = [Verdict::Held; BATCH];
            f.batch(side, &mut work, &mut verdicts);
            assert!(verdicts.iter().all(|v| matches!(v, Verdict::Forward(_))));
        }
        assert_eq!(f.engine.session_count(), n as usize);
        f
    }

    /// The next 32 templates of `side`'s direction.
    fn next(&self, side: Side) -> &[Template] {
        let t = match side {
            Side::Inside => &self.outbound,
            Side::Outside => &self.inbound,
        };
        let at = self.cursor.get();
        let at = if at + BATCH > t.len() { 0 } else { at };
        self.cursor.set(at + BATCH);
        &t[at..at + BATCH]
    }

    /// Copies the next 32 packets into `work` and translates them as one batch.
    #[inline(always)]
    fn batch(&mut self, side: Side, work: &mut [Template; BATCH], verdicts: &mut [Verdict]) {
        work.copy_from_slice(self.next(side));
        let mut bufs = work.each_mut().map(|b| PacketBuf { buf: b, len: PKT });
        self.engine.process_batch(now(), side, &mut bufs, verdicts);
    }

    /// Copies the next 32 packets into `work` and translates them one at a time.
    #[inline(always)]
    fn one_by_one(&mut self, side: Side, work: &mut [Template; BATCH], verdicts: &mut [Verdict]) {
        work.copy_from_slice(self.next(side));
        for (b, v) in work.iter_mut().zip(verdicts.iter_mut()) {
            *v = self.engine.process(now(), side, b, PKT);
        }
    }
}

fn fast_path(c: &mut Criterion<CpuTime>, label: &str, n: u32) {
    let mut fixture: Option<Fixture> = None;
    let mut group = c.benchmark_group(format!("fast_path_{label}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut work = [[0u8; PKT]; BATCH];
    let mut verdicts = [Verdict::Held; BATCH];
    group.bench_function("copy_only", |b| {
        let f = fixture.get_or_insert_with(|| Fixture::new(n));
        b.iter(|| {
            work.copy_from_slice(f.next(Side::Inside));
            black_box(&mut work);
        });
    });
    for (name, side) in [("out", Side::Inside), ("in", Side::Outside)] {
        group.bench_function(BenchmarkId::new("batch", name), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(n));
            b.iter(|| {
                f.batch(side, &mut work, &mut verdicts);
                black_box(&verdicts);
            });
        });
        group.bench_function(BenchmarkId::new("one_at_a_time", name), |b| {
            let f = fixture.get_or_insert_with(|| Fixture::new(n));
            b.iter(|| {
                f.one_by_one(side, &mut work, &mut verdicts);
                black_box(&verdicts);
            });
        });
    }
    group.finish();
}

/// Session creation: first packets of fresh flows (each a new internal endpoint, so a port is
/// allocated, a mapping made, and the session indexed both ways), in batches, events drained.
/// One iteration is [`CREATE_CHUNK`] sessions made in an engine of 1 M capacity pre-filled to a
/// quarter (so 25% to 50% full); building the engine and the packets is not timed. Criterion
/// plans iterations by wall time, which the untimed building dominates, so an iteration must
/// hold many sessions: with one session per iteration a sample would be one cold creation.
const CREATE_CHUNK: u32 = 1 << 18;

fn creation(c: &mut Criterion<CpuTime>) {
    const CAP: u32 = 1 << 20;
    const PREFILL: u32 = CAP / 4;
    let mut group = c.benchmark_group("create");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(CREATE_CHUNK)));
    // "session": flows in order, so 64 in a row come from one subscriber (one paired address);
    // "shuffled": the same flows in random order, so consecutive ones come from different
    // subscribers and addresses, as a busy gateway sees them.
    for (name, shuffled) in [("session", false), ("shuffled", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut e = engine(CAP);
                    let mut pre: Vec<Template> = (0..PREFILL)
                        .map(|i| {
                            let (p, int, rem) = flow(i);
                            packet(p, int, rem, TCP_SYN)
                        })
                        .collect();
                    common::run(&mut e, now(), Side::Inside, &mut pre);
                    let mut order: Vec<u32> = (PREFILL..PREFILL + CREATE_CHUNK).collect();
                    if shuffled {
                        let mut rng = Rng::new(7);
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.below(i as u32 + 1) as usize);
                        }
                    }
                    let mut fresh: Vec<Template> = order
                        .iter()
                        .map(|&i| {
                            let (p, int, rem) = flow(i);
                            packet(p, int, rem, TCP_SYN)
                        })
                        .collect();
                    let start = CpuTime.start();
                    let made = common::run(&mut e, now(), Side::Inside, &mut fresh);
                    total += CpuTime.end(start);
                    assert_eq!(made, CREATE_CHUNK as usize);
                }
                total
            });
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion<CpuTime>) {
    common::init_huge_pages();
    fast_path(c, "16K", 1 << 14);
    fast_path(c, "1M", 1 << 20);
    creation(c);
    fast_path(c, "16M", 1 << 24);
}

criterion_group! {
    name = engine_benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(engine_benches);
