//! Carrier-grade NAT benchmarks: session creation with port blocks and with
//! deterministic NAT next to dynamic allocation, in one run; and the memory each active
//! subscriber costs the allocator and the per-subscriber limits, printed before the timings.
//!
//! `cargo bench -p natgate-core --bench cgn -- --warm-up-time 1 --measurement-time 5`
//!
//! Creation: 64 Ki subscribers (100.64.0.0/16) each open 4 flows, round-robin (every subscriber's
//! first flow, then every subscriber's second...), so a subscriber's first flow takes a block
//! (port blocks) or makes its outside address's port maps (deterministic, once per address) and
//! its later flows reuse them. Each flow is a new internal endpoint: a port allocated, a mapping
//! and a session made, the session indexed both ways, its events queued. Packets go in batches
//! of 32 and events are drained after each batch, as a driver does. Every engine is fresh
//! (built untimed) and takes at most the 256 Ki flows of the pattern.
//!
//! Times are the benchmark thread's own CPU time, tables are on huge pages
//! (`NATGATE_BENCH_HUGEPAGES=0` turns them off): see `common/mod.rs`. Results are in
//! `BENCHMARKS.md`.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{CpuTime, PKT, TCP_SYN, Template};
use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natgate_core::alloc::{AllocRequest, ConfiguredAllocator, PortAllocator, Share, SubscriberId};
use natgate_core::config::{
    Allocation, DeterministicSpec, PortBlockSpec, SubscriberLimits, ValidConfig,
};
use natgate_core::engine::{BATCH, Engine, PacketBuf};
use natgate_core::{Config, Endpoint, Instant, Protocol, Rng, Side, Verdict};

/// Subscribers: 100.64.0.0/16.
const SUBSCRIBERS: u32 = 1 << 16;
/// Flows each subscriber opens.
const FLOWS_PER_SUBSCRIBER: u32 = 4;
/// Flows through one engine.
const FLOWS: u32 = SUBSCRIBERS * FLOWS_PER_SUBSCRIBER;
/// External addresses: 198.18.0.0/23, 128 subscribers per address.
const POOL: u32 = 512;
const POOL_BASE: u32 = 0xc612_0000;
const SUBSCRIBER_BASE: u32 = 0x6440_0000;
/// Ports per block in the creation runs: 4 flows fit in the first block of 256.
const BLOCK_SIZE: u16 = 256;

/// The allocators compared.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Any free port of the pool, paired pooling.
    Dynamic,
    /// Port blocks of `block_size`, at most `max_blocks` per subscriber (RFC 6888).
    PortBlock { block_size: u16, max_blocks: u16 },
    /// 100.64.0.0/16 onto 198.18.0.0/23 by formula (RFC 7422): 504 ports per subscriber.
    Deterministic,
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::Dynamic => "dynamic".into(),
            Kind::PortBlock {
                block_size,
                max_blocks,
            } => format!("port_block_{block_size}x{max_blocks}"),
            Kind::Deterministic => "deterministic".into(),
        }
    }
}

fn config(kind: Kind, max_sessions: u32, subscriber: SubscriberLimits) -> ValidConfig {
    let pool = (0..POOL)
        .map(|i| Ipv4Addr::from_bits(POOL_BASE + i))
        .collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 127, 255, 254));
    c.limits.max_sessions = max_sessions;
    c.limits.max_mappings = max_sessions;
    c.limits.subscriber = subscriber;
    c.allocation = match kind {
        Kind::Dynamic => Allocation::Dynamic,
        Kind::PortBlock {
            block_size,
            max_blocks,
        } => Allocation::PortBlock(PortBlockSpec {
            block_size,
            max_blocks_per_subscriber: max_blocks,
        }),
        Kind::Deterministic => Allocation::Deterministic(DeterministicSpec {
            inside: "100.64.0.0/16".parse().unwrap_or_else(|e| panic!("{e:?}")),
            outside: "198.18.0.0/23".parse().unwrap_or_else(|e| panic!("{e:?}")),
            ports_per_subscriber: None,
            overflow: None,
        }),
    };
    c.validate().unwrap_or_else(|e| panic!("config: {e}"))
}

fn allocator(cfg: &ValidConfig) -> ConfiguredAllocator {
    ConfiguredAllocator::from_config(cfg, Share::WHOLE)
        .unwrap_or_else(|| panic!("no allocator for the config"))
}

fn engine(kind: Kind) -> Engine<ConfiguredAllocator> {
    let cfg = config(kind, FLOWS.next_power_of_two(), SubscriberLimits::default());
    let alloc = allocator(&cfg);
    Engine::with_allocator(cfg, alloc, 0x5eed)
}

fn now() -> Instant {
    Instant::from_secs(1_000)
}

/// Flow `i`: subscriber `i % SUBSCRIBERS`'s flow number `i / SUBSCRIBERS`, alternately TCP
/// and UDP, from its own internal port.
fn flow(i: u32) -> (Protocol, Endpoint, Endpoint) {
    let (s, k) = (i % SUBSCRIBERS, i / SUBSCRIBERS);
    let proto = if (s ^ k) & 1 == 1 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let internal = Endpoint::new(
        Ipv4Addr::from_bits(SUBSCRIBER_BASE + s),
        10_000 + u16::try_from(k).unwrap_or(0),
    );
    let remote = Endpoint::new(
        Ipv4Addr::from_bits(0xcb00_7100 + (i % 251)),
        if proto == Protocol::Tcp { 443 } else { 4500 },
    );
    (proto, internal, remote)
}

fn packet(i: u32) -> Template {
    let (proto, src, dst) = flow(i);
    common::packet(proto, src, dst, TCP_SYN)
}

/// Runs `packets` through `e` in batches of 32 (the rest one at a time), draining events as a
/// driver would; returns how many were forwarded.
fn run(e: &mut Engine<ConfiguredAllocator>, packets: &mut [Template]) -> usize {
    let mut verdicts = [Verdict::Held; BATCH];
    let mut forwarded = 0;
    let mut chunks = packets.chunks_exact_mut(BATCH);
    for chunk in &mut chunks {
        let chunk: &mut [Template; BATCH] = chunk.try_into().unwrap_or_else(|_| unreachable!());
        let mut bufs = chunk.each_mut().map(|b| PacketBuf { buf: b, len: PKT });
        e.process_batch(now(), Side::Inside, &mut bufs, &mut verdicts);
        forwarded += verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Forward(_)))
            .count();
        while e.poll_event().is_some() {}
    }
    for b in chunks.into_remainder() {
        forwarded += usize::from(matches!(
            e.process(now(), Side::Inside, b, PKT),
            Verdict::Forward(_)
        ));
    }
    while e.poll_event().is_some() {}
    forwarded
}

/// Session creation per allocator, one benchmark each in one group, so the three are measured
/// in the same run under the same load.
fn creation(c: &mut Criterion<CpuTime>) {
    let mut group = c.benchmark_group("cgn_create");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    for kind in [
        Kind::Dynamic,
        Kind::PortBlock {
            block_size: BLOCK_SIZE,
            max_blocks: 4,
        },
        Kind::Deterministic,
    ] {
        group.bench_function(BenchmarkId::new("session", kind.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(u64::from(FLOWS)) as u32;
                    let mut e = engine(kind);
                    let mut fresh: Vec<Template> = (0..chunk).map(packet).collect();
                    let start = CpuTime.start();
                    let made = run(&mut e, &mut fresh);
                    total += CpuTime.end(start);
                    assert_eq!(made, chunk as usize, "{kind:?}: every flow gets a session");
                    left -= u64::from(chunk);
                }
                total
            });
        });
    }
    group.finish();
}

/// Bytes each active subscriber costs: the allocator's state (by its own `memory_bytes`) with
/// every subscriber holding ports, minus the allocator's before any, per subscriber; plus the
/// per-subscriber limit table (reserved at `max-subscribers` entries, here one per subscriber).
/// Allocations go straight to the allocator: the session and mapping tables cost the same per
/// session whatever the allocator (see the engine figures in `BENCHMARKS.md`).
#[allow(clippy::print_stderr)] // a bench reports its memory figures on stderr
fn memory_per_subscriber() {
    let limits = SubscriberLimits {
        max_tcp_sessions: 1000,
        max_udp_sessions: 1000,
        max_icmp_sessions: 100,
        max_subscribers: SUBSCRIBERS,
        ..SubscriberLimits::default()
    };
    // Ports per subscriber: one; for the 4-block case enough to fill three blocks of 64 and
    // open a fourth.
    for (kind, ports) in [
        (Kind::Dynamic, 1),
        (
            Kind::PortBlock {
                block_size: 64,
                max_blocks: 1,
            },
            1,
        ),
        (
            Kind::PortBlock {
                block_size: 64,
                max_blocks: 4,
            },
            3 * 64 + 1,
        ),
        (Kind::Deterministic, 1),
    ] {
        let cfg = config(kind, 1024, limits);
        let limit_state = Engine::with_allocator(cfg.clone(), allocator(&cfg), 1)
            .memory_usage()
            .subscribers;
        let mut a = allocator(&cfg);
        let empty = a.memory_bytes();
        let mut rng = Rng::new(7);
        for s in 0..SUBSCRIBERS {
            for p in 0..ports {
                let req = AllocRequest {
                    proto: Protocol::Udp,
                    internal: Endpoint::new(Ipv4Addr::from_bits(SUBSCRIBER_BASE + s), 1024 + p),
                    subscriber: SubscriberId::of(Endpoint::new(
                        Ipv4Addr::from_bits(SUBSCRIBER_BASE + s),
                        1024 + p,
                    )),
                    now: now(),
                };
                a.allocate(&req, &mut rng)
                    .unwrap_or_else(|e| panic!("{kind:?}: subscriber {s} port {p}: {e}"));
            }
            while a.poll_event().is_some() {}
        }
        let full = a.memory_bytes();
        let n = SUBSCRIBERS as usize;
        eprintln!(
            "memory {:<16} {n} subscribers x {ports:>3} ports: allocator {empty} B empty, \
             {full} B full = {} B/subscriber ({} B/subscriber above empty); limit state {} \
             B/subscriber; total {} B/subscriber",
            kind.name(),
            full / n,
            (full - empty) / n,
            limit_state / n,
            (full + limit_state) / n,
        );
    }
}

fn benches(c: &mut Criterion<CpuTime>) {
    common::init_huge_pages();
    memory_per_subscriber();
    creation(c);
}

criterion_group! {
    name = cgn_benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(cgn_benches);
