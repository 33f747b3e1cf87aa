//! Static rules, with 0, 1, 4, 50 and 10 000 rules in the chain (a quarter each: network NAT
//! /24, host NAT /32, TCP port forwards, /16 exemptions; all but the exemptions bidirectional):
//!
//! - `rules_N/{miss,hit}`: the compiled lookup alone, the time to find the first matching rule
//!   for a new flow. `miss`: no rule matches (a new dynamic flow, the common case); `hit`:
//!   every packet matches some rule.
//! - `engine_rules_N/batch/{out,in}`: the engine's fast path for established *dynamic* flows
//!   (64 Ki sessions, batches of 32, both directions) with the chain configured: the
//!   proof that the number of rules does not slow established traffic.
//! - `first_packet_N/{rule,dynamic}`: the first packet of a new flow, matched by a rule (a
//!   static session is made) or by none (dynamic NAPT after a rule miss).
//!
//! `cargo bench -p natgate-core --bench rules -- --warm-up-time 1 --measurement-time 3`
//!
//! Like the engine bench, it measures the thread's CPU time, since the machine is shared, and
//! keeps the tables on huge pages (`common/mod.rs`).

#![allow(clippy::expect_used)] // a bench: a broken fixture should fail loudly

mod common;

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::{CpuTime, PKT, TCP_ACK, TCP_SYN, Template, packet};
use criterion::measurement::Measurement;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use natgate_core::engine::{BATCH as ENGINE_BATCH, Engine, PacketBuf};
use natgate_core::rules::{
    Action, CompiledRules, Ipv4Prefix, PortRange, Rule, RuleChain, Target, Translate,
};
use natgate_core::{Config, Direction, Endpoint, Instant, Protocol, Side, Verdict};

/// Lookups per measured iteration.
const BATCH: usize = 256;

fn prefix(bits: u32, len: u8) -> Ipv4Prefix {
    Ipv4Prefix::new(Ipv4Addr::from_bits(bits), len).expect("aligned prefix")
}

fn translate(src: Option<Target>, dst: Option<Target>) -> Action {
    Action::Translate(Translate { src, dst })
}

fn to(bits: u32, len: u8, port: Option<u16>) -> Option<Target> {
    Some(Target {
        addr: Some(prefix(bits, len)),
        port,
    })
}

/// Rule `i` and a packet (direction, protocol, source, destination) that it matches.
fn rule(i: u32) -> (Rule, (Direction, Protocol, Endpoint, Endpoint)) {
    let k = i / 4;
    let any = prefix(0, 0);
    let remote = Endpoint::new(Ipv4Addr::new(8, 8, 8, 8), 443);
    match i % 4 {
        0 => {
            // 10.a.b.0/24 <-> 100.64.a.b/24 (inside 10.0.0.0-10.9.195.255).
            let src = 0x0a00_0000 + (k << 8);
            let r = Rule {
                bidirectional: true,
                ..Rule::new(
                    Direction::Outbound,
                    prefix(src, 24),
                    any,
                    translate(to(0x6440_0000 + (k << 8), 24, None), None),
                )
            };
            let p = Endpoint::new(Ipv4Addr::from_bits(src + 7), 40000);
            (r, (Direction::Outbound, Protocol::Udp, p, remote))
        }
        1 => {
            // 172.16.x.y <-> 198.18.x.y.
            let src = 0xac10_0000 + k;
            let r = Rule {
                bidirectional: true,
                ..Rule::new(
                    Direction::Outbound,
                    prefix(src, 32),
                    any,
                    translate(to(0xc612_0000 + k, 32, None), None),
                )
            };
            let p = Endpoint::new(Ipv4Addr::from_bits(src), 40000);
            (r, (Direction::Outbound, Protocol::Tcp, p, remote))
        }
        2 => {
            // TCP 198.51.100.n:(1000 + k % 1000) -> 10.200.x.y:8080.
            let dst = 0xc633_6400 + k / 1000;
            let port = 1000 + (k % 1000) as u16;
            let r = Rule {
                bidirectional: true,
                proto: Some(Protocol::Tcp),
                dst_ports: Some(PortRange {
                    first: port,
                    last: port,
                }),
                ..Rule::new(
                    Direction::Inbound,
                    any,
                    prefix(dst, 32),
                    translate(None, to(0x0ac8_0000 + k, 32, Some(8080))),
                )
            };
            let d = Endpoint::new(Ipv4Addr::from_bits(dst), port);
            (r, (Direction::Inbound, Protocol::Tcp, remote, d))
        }
        _ => {
            // 10.0.0.0/8 to 20.a.0.0/16 untranslated.
            let dst = 0x1400_0000 + (k << 16);
            let r = Rule::new(
                Direction::Outbound,
                prefix(0x0a00_0000, 8),
                prefix(dst, 16),
                Action::Exempt,
            );
            let s = Endpoint::new(Ipv4Addr::new(10, 250, 0, 1), 40000);
            let d = Endpoint::new(Ipv4Addr::from_bits(dst + 99), 53);
            (r, (Direction::Outbound, Protocol::Udp, s, d))
        }
    }
}

type Packet = (Direction, Protocol, Endpoint, Endpoint);

/// The chain of `n` rules and a packet matching each.
fn build_chain(n: u32) -> (RuleChain, Vec<Packet>) {
    let mut chain = RuleChain::new();
    let mut hits = Vec::new();
    for i in 0..n {
        let (r, p) = rule(i);
        chain.append(r).expect("bench rules do not conflict");
        hits.push(p);
    }
    (chain, hits)
}

/// The compiled chain of `n` rules, packets matching them, and packets matching none.
fn setup(n: u32) -> (CompiledRules, Vec<Packet>, Vec<Packet>) {
    let (chain, hits) = build_chain(n);
    // Spread the hits over the chain in a fixed pseudo-random order.
    let hits: Vec<Packet> = (0..4096u32)
        .filter_map(|j| {
            hits.get((j.wrapping_mul(2_654_435_761) % n.max(1)) as usize)
                .copied()
        })
        .collect();
    let misses = (0..4096u32)
        .map(|j| {
            let inside = Endpoint::new(Ipv4Addr::from_bits(0x0afa_0000 + j), 40000);
            let outside = Endpoint::new(Ipv4Addr::from_bits(0x0808_0000 + j), 443);
            if j % 2 == 0 {
                (Direction::Outbound, Protocol::Tcp, inside, outside)
            } else {
                let pool = Endpoint::new(Ipv4Addr::from_bits(0xcb00_7100 + j % 256), 50000);
                (Direction::Inbound, Protocol::Udp, outside, pool)
            }
        })
        .collect();
    (chain.compile(0x5eed), hits, misses)
}

fn lookups(c: &mut Criterion<CpuTime>) {
    for n in [0u32, 1, 4, 50, 10_000] {
        let (rules, hits, misses) = setup(n);
        let mut group = c.benchmark_group(format!("rules_{n}"));
        group.throughput(Throughput::Elements(BATCH as u64));
        for (mix, packets) in [("miss", &misses), ("hit", &hits)] {
            if packets.is_empty() {
                continue;
            }
            let mut cursor = 0;
            group.bench_function(mix, |b| {
                b.iter(|| {
                    cursor = (cursor + BATCH) % (packets.len() - BATCH);
                    let mut found = 0u32;
                    for &(dir, proto, s, d) in &packets[cursor..cursor + BATCH] {
                        found += u32::from(black_box(&rules).lookup(dir, proto, s, d).is_some());
                    }
                    black_box(found)
                });
            });
        }
        group.finish();
    }
}

/// Established dynamic flows in the fast-path engines.
const FLOWS: u32 = 1 << 16;

fn now() -> Instant {
    Instant::from_secs(1_000)
}

/// Dynamic flow `i`: odd TCP, even UDP, each from its own internal endpoint in 100.100/16 (no
/// rule's match), to 203.0.113.0/24.
fn flow(i: u32) -> (Protocol, Endpoint, Endpoint) {
    let proto = if i & 1 == 1 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let internal = Endpoint::new(
        Ipv4Addr::from_bits(0x6464_0000 + i / 64),
        10_000 + (i % 64) as u16,
    );
    let remote = Endpoint::new(Ipv4Addr::from_bits(0xcb00_7100 + (i % 251)), 443);
    (proto, internal, remote)
}

/// An engine with `chain` configured, over a pool (11.0.0.0-11.0.0.63) that no rule touches.
fn rules_engine(chain: &RuleChain, max_static_sessions: u32) -> Engine {
    let pool = (0..64)
        .map(|i| Ipv4Addr::from_bits(0x0b00_0000 + i))
        .collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = 2 * FLOWS;
    c.limits.max_mappings = 2 * FLOWS;
    c.limits.max_static_sessions = max_static_sessions;
    c.rules = chain.clone();
    Engine::new(c.validate().expect("bench config"), 0x5eed)
}

/// An engine with `chain` and [`FLOWS`] established dynamic sessions, and templates of their
/// established traffic both ways.
fn established(chain: &RuleChain) -> (Engine, Vec<Template>, Vec<Template>) {
    let mut e = rules_engine(chain, 1024);
    let flows: Vec<_> = (0..FLOWS).map(flow).collect();
    let mut syns: Vec<Template> = flows
        .iter()
        .map(|&(p, int, rem)| packet(p, int, rem, TCP_SYN))
        .collect();
    assert_eq!(
        common::run(&mut e, now(), Side::Inside, &mut syns),
        flows.len()
    );
    let external: std::collections::HashMap<Endpoint, Endpoint> =
        e.sessions().map(|s| (s.internal, s.external)).collect();
    let mut syn_acks: Vec<Template> = flows
        .iter()
        .filter(|f| f.0 == Protocol::Tcp)
        .map(|&(p, int, rem)| packet(p, rem, external[&int], TCP_SYN | TCP_ACK))
        .collect();
    assert_eq!(
        common::run(&mut e, now(), Side::Outside, &mut syn_acks),
        syn_acks.len()
    );
    // A fixed pseudo-random order, so consecutive packets hit unrelated sessions.
    let order: Vec<usize> = (0..FLOWS)
        .map(|j| (j.wrapping_mul(2_654_435_761) % FLOWS) as usize)
        .collect();
    let out = order
        .iter()
        .map(|&i| {
            let (p, int, rem) = flows[i];
            packet(p, int, rem, TCP_ACK)
        })
        .collect();
    let inb = order
        .iter()
        .map(|&i| {
            let (p, int, rem) = flows[i];
            packet(p, rem, external[&int], TCP_ACK)
        })
        .collect();
    assert_eq!(e.static_session_count(), 0);
    (e, out, inb)
}

/// `batch/out` and `batch/in` in `group`: the templates of established traffic each way, 32
/// per `process_batch` (the template copy included), every one of them forwarded.
fn bench_established(
    group: &mut BenchmarkGroup<'_, CpuTime>,
    e: &mut Engine,
    out: &[Template],
    inb: &[Template],
) {
    group.throughput(Throughput::Elements(ENGINE_BATCH as u64));
    let mut work = [[0u8; PKT]; ENGINE_BATCH];
    let mut verdicts = [Verdict::Held; ENGINE_BATCH];
    for (name, side, templates) in [("out", Side::Inside, out), ("in", Side::Outside, inb)] {
        let mut cursor = 0;
        // A name filter skips the routine; the verdicts are checked only after a run.
        let mut ran = false;
        group.bench_function(BenchmarkId::new("batch", name), |b| {
            ran = true;
            b.iter(|| {
                cursor = (cursor + ENGINE_BATCH) % (templates.len() - ENGINE_BATCH);
                work.copy_from_slice(&templates[cursor..cursor + ENGINE_BATCH]);
                let mut bufs = work.each_mut().map(|b| PacketBuf { buf: b, len: PKT });
                e.process_batch(now(), side, &mut bufs, &mut verdicts);
                black_box(&verdicts);
            });
        });
        assert!(!ran || verdicts.iter().all(|v| matches!(v, Verdict::Forward(_))));
    }
}

/// Established dynamic traffic, batched, with chains of 0 to 10 000 rules.
fn engine_fast_path(c: &mut Criterion<CpuTime>) {
    for n in [0u32, 1, 4, 50, 10_000] {
        let (chain, _) = build_chain(n);
        let (mut e, out, inb) = established(&chain);
        let mut group = c.benchmark_group(format!("engine_rules_{n}"));
        bench_established(&mut group, &mut e, &out, &inb);
        assert_eq!(e.static_session_count(), 0, "no rule was consulted");
        group.finish();
    }
}

/// Static flows per engine in [`engine_static_fast_path`]: every port 1024-1087 of every
/// host of rule 0's network (10.0.0.0/24).
const STATIC_FLOWS: u32 = 256 * 64;

/// An engine with `chain` (which holds rule 0, network NAT of 10.0.0.0/24) and
/// [`STATIC_FLOWS`] established UDP sessions of rule 0, and templates of their traffic both
/// ways in a fixed pseudo-random order.
fn established_static(chain: &RuleChain) -> (Engine, Vec<Template>, Vec<Template>) {
    let mut e = rules_engine(chain, STATIC_FLOWS);
    let remote = Endpoint::new(Ipv4Addr::new(8, 8, 8, 8), 443);
    let internal = |i: u32| {
        Endpoint::new(
            Ipv4Addr::from_bits(0x0a00_0000 + (i & 0xff)),
            1024 + (i >> 8) as u16,
        )
    };
    let mut first: Vec<Template> = (0..STATIC_FLOWS)
        .map(|i| packet(Protocol::Udp, internal(i), remote, 0))
        .collect();
    assert_eq!(
        common::run(&mut e, now(), Side::Inside, &mut first),
        first.len()
    );
    assert_eq!(e.static_session_count(), STATIC_FLOWS as usize);
    let external: std::collections::HashMap<Endpoint, Endpoint> =
        e.sessions().map(|s| (s.internal, s.external)).collect();
    let order: Vec<u32> = (0..STATIC_FLOWS)
        .map(|j| j.wrapping_mul(2_654_435_761) % STATIC_FLOWS)
        .collect();
    let out = order
        .iter()
        .map(|&i| packet(Protocol::Udp, internal(i), remote, 0))
        .collect();
    let inb = order
        .iter()
        .map(|&i| packet(Protocol::Udp, remote, external[&internal(i)], 0))
        .collect();
    (e, out, inb)
}

/// Established static (rule 0) traffic, batched, with chains of 1 to 10 000 rules: the static
/// session table answers after the dynamic one misses, and the chain is not consulted.
fn engine_static_fast_path(c: &mut Criterion<CpuTime>) {
    for n in [1u32, 4, 50, 10_000] {
        let (chain, _) = build_chain(n);
        let (mut e, out, inb) = established_static(&chain);
        let mut group = c.benchmark_group(format!("engine_static_rules_{n}"));
        bench_established(&mut group, &mut e, &out, &inb);
        assert_eq!(
            e.static_session_count(),
            STATIC_FLOWS as usize,
            "no new session was made"
        );
        group.finish();
    }
}

/// First packets of new flows: matched by rule 0 (network NAT of 10.0.0.0/24; a static
/// session is made) or by no rule (dynamic NAPT after the rule miss). Each engine takes at
/// most 32 Ki new flows; building engines and packets is not timed.
fn first_packets(c: &mut Criterion<CpuTime>) {
    const CHUNK: u32 = 1 << 15;
    for n in [1u32, 10_000] {
        let (chain, _) = build_chain(n);
        let mut group = c.benchmark_group(format!("first_packet_{n}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(1));
        for kind in ["rule", "dynamic"] {
            group.bench_function(kind, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let chunk = left.min(u64::from(CHUNK)) as u32;
                        let mut e = rules_engine(&chain, CHUNK);
                        let mut fresh: Vec<Template> = (0..chunk)
                            .map(|i| {
                                let remote = Endpoint::new(Ipv4Addr::new(8, 8, 8, 8), 443);
                                let src = match kind {
                                    // 10.0.0.0/24, the first rule's network.
                                    "rule" => Endpoint::new(
                                        Ipv4Addr::from_bits(0x0a00_0000 + (i & 0xff)),
                                        1024 + (i >> 8) as u16,
                                    ),
                                    _ => flow(i).1,
                                };
                                packet(Protocol::Udp, src, remote, 0)
                            })
                            .collect();
                        let start = CpuTime.start();
                        let made = common::run(&mut e, now(), Side::Inside, &mut fresh);
                        total += CpuTime.end(start);
                        assert_eq!(made, chunk as usize);
                        let statics = if kind == "rule" { chunk as usize } else { 0 };
                        assert_eq!(e.static_session_count(), statics);
                        left -= u64::from(chunk);
                    }
                    total
                });
            });
        }
        group.finish();
    }
}

/// Lookups first (they need no engine), then the engine runs; one criterion run.
fn all(c: &mut Criterion<CpuTime>) {
    common::init_huge_pages();
    lookups(c);
    engine_fast_path(c);
    engine_static_fast_path(c);
    first_packets(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = all
}
criterion_main!(benches);
