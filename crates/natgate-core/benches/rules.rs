//! Static rule lookup: the time to find the first matching rule for a new flow, with 0, 1, 4,
//! 50 and 10 000 rules in the chain (a quarter each: network NAT /24, host NAT /32, TCP port
//! forwards, /16 exemptions; all but the exemptions bidirectional).
//!
//! `cargo bench -p natgate-core --bench rules -- --warm-up-time 1 --measurement-time 3`
//!
//! Two packet mixes: `miss` (no rule matches: a new dynamic flow, the common case) and `hit`
//! (every packet matches some rule). Like the engine bench, it measures the thread's CPU time,
//! since the machine is shared.

#![allow(clippy::expect_used)] // a bench: a broken fixture should fail loudly

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natgate_core::rules::{
    Action, CompiledRules, Ipv4Prefix, PortRange, Rule, RuleChain, Target, Translate,
};
use natgate_core::{Direction, Endpoint, Protocol};

/// Lookups per measured iteration.
const BATCH: usize = 256;

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
struct CpuTime;

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

/// The compiled chain of `n` rules, packets matching them, and packets matching none.
fn setup(n: u32) -> (CompiledRules, Vec<Packet>, Vec<Packet>) {
    let mut chain = RuleChain::new();
    let mut hits = Vec::new();
    for i in 0..n {
        let (r, p) = rule(i);
        chain.append(r).expect("bench rules do not conflict");
        hits.push(p);
    }
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

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = lookups
}
criterion_main!(benches);
