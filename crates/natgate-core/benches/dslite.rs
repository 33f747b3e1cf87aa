//! DS-Lite next to NAPT44 in one run: the established path both ways (a packet from a B4
//! decapsulated and translated; a reply translated and encapsulated to its B4) against the same
//! flows of plain IPv4 subscribers, and session creation for both. The target is at most
//! 1.25 times NAPT44's cost per packet.
//!
//! `cargo bench -p natgate-core --bench dslite -- --warm-up-time 1 --measurement-time 5`
//!
//! Engines hold 64 K UDP sessions (1 024 subscribers or B4s, 64 flows each); every iteration
//! copies 32 packets from templates into working buffers and translates them one at a time (the
//! DS-Lite path has no batch lane), so the copy is in both sides of the comparison. Times are
//! the benchmark thread's CPU time, tables on huge pages (see `common/mod.rs`).

mod common;

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use common::{CpuTime, PKT, Template, packet};
use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natgate_core::config::DsLite;
use natgate_core::endpoint::Ipv6Prefix;
use natgate_core::engine::Engine;
use natgate_core::{Config, Endpoint, Instant, Protocol, Side, Verdict};

/// Subscribers (plain) or B4s (DS-Lite).
const HOMES: u32 = 1024;
/// Flows per home.
const FLOWS: u32 = 64;
/// Packets per iteration.
const BURST: usize = 32;
/// A tunnel packet: IPv6 header and a bench packet.
const TPKT: usize = PKT + 40;
/// Working buffers: room for the IPv6 header in front of a reply.
const ROOM: usize = TPKT + 64;
const AFTR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn now() -> Instant {
    Instant::from_secs(1_000)
}

fn b4(home: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 1, (home >> 16) as u16, home as u16, 0, 0, 2)
}

/// Flow `i`'s inside endpoint: a subscriber address of its own for NAPT44, 192.168.1.10 behind
/// every B4 for DS-Lite (the case DS-Lite exists for).
fn internal(i: u32, ds_lite: bool) -> Endpoint {
    let addr = if ds_lite {
        Ipv4Addr::new(192, 168, 1, 10)
    } else {
        Ipv4Addr::from_bits(0x6440_0000 + i / FLOWS)
    };
    Endpoint::new(addr, 10_000 + (i % FLOWS) as u16)
}

fn remote(i: u32) -> Endpoint {
    Endpoint::new(Ipv4Addr::from_bits(0xcb00_7100 + (i % 251)), 4500)
}

fn engine(ds_lite: bool, sessions: u32) -> Engine {
    let pool = (0..64)
        .map(|i| Ipv4Addr::from_bits(0xc612_0000 + i))
        .collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = sessions;
    c.limits.max_mappings = sessions;
    if ds_lite {
        let acl6 = Ipv6Prefix::new(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 48)
            .unwrap_or_else(|| panic!("prefix"));
        let mut d = DsLite::new(AFTR, vec![acl6]);
        // Limits and rates are per softwire; the bench opens flows faster than any home would.
        d.limits.udp_rate = 0;
        d.limits.max_udp_sessions = 0;
        d.max_softwires = HOMES * 2;
        c.ds_lite = Some(d);
    }
    Engine::new(
        c.validate().unwrap_or_else(|e| panic!("config: {e}")),
        0x5eed,
    )
}

/// `p` in a softwire from the B4 of `home`.
fn wrap(home: u32, p: &Template) -> [u8; TPKT] {
    let mut t = [0u8; TPKT];
    t[0] = 0x60;
    t[4..6].copy_from_slice(&(PKT as u16).to_be_bytes());
    t[6] = 4;
    t[7] = 64;
    t[8..24].copy_from_slice(&b4(home).octets());
    t[24..40].copy_from_slice(&AFTR.octets());
    t[40..].copy_from_slice(p);
    t
}

/// Flow `i`'s packet from the inside in a working buffer, and its length.
fn first(ds_lite: bool, i: u32) -> ([u8; ROOM], usize) {
    let p = packet(Protocol::Udp, internal(i, ds_lite), remote(i), 0);
    let mut buf = [0u8; ROOM];
    if ds_lite {
        buf[..TPKT].copy_from_slice(&wrap(i / FLOWS, &p));
        (buf, TPKT)
    } else {
        buf[..PKT].copy_from_slice(&p);
        (buf, PKT)
    }
}

/// Sends a packet from the inside: from a B4 under DS-Lite.
fn send(e: &mut Engine, ds_lite: bool, buf: &mut [u8], len: usize) -> Verdict {
    if ds_lite {
        e.process_softwire(now(), buf, len)
    } else {
        e.process(now(), Side::Inside, buf, len)
    }
}

/// An engine with every flow open, and packet templates of established traffic both ways.
struct Fixture {
    e: Engine,
    /// From the inside: IPv4, or IPv6 from B4s (first `len` bytes of each).
    out: Vec<[u8; TPKT]>,
    len: usize,
    /// From the outside: replies.
    back: Vec<Template>,
    ds_lite: bool,
}

impl Fixture {
    fn new(ds_lite: bool) -> Self {
        let n = HOMES * FLOWS;
        let mut e = engine(ds_lite, n);
        let mut external = vec![Endpoint::UNSPECIFIED; n as usize];
        for i in 0..n {
            let (mut buf, len) = first(ds_lite, i);
            let v = send(&mut e, ds_lite, &mut buf, len);
            let at = if ds_lite { 40 } else { 0 };
            assert!(
                matches!(v, Verdict::Forward(_) | Verdict::ForwardAt { .. }),
                "{v:?}"
            );
            let src = &buf[at + 12..at + 16];
            let port = u16::from_be_bytes([buf[at + 20], buf[at + 21]]);
            external[i as usize] =
                Endpoint::new(Ipv4Addr::new(src[0], src[1], src[2], src[3]), port);
            while e.poll_event().is_some() {}
        }
        let len = if ds_lite { TPKT } else { PKT };
        // Every 7th flow, so consecutive packets are of different homes.
        let sample: Vec<u32> = (0..n).map(|k| (k * 7) % n).collect();
        let out = sample
            .iter()
            .map(|&i| {
                let p = packet(Protocol::Udp, internal(i, ds_lite), remote(i), 0);
                if ds_lite {
                    wrap(i / FLOWS, &p)
                } else {
                    let mut t = [0u8; TPKT];
                    t[..PKT].copy_from_slice(&p);
                    t
                }
            })
            .collect();
        let back = sample
            .iter()
            .map(|&i| packet(Protocol::Udp, remote(i), external[i as usize], 0))
            .collect();
        Fixture {
            e,
            out,
            len,
            back,
            ds_lite,
        }
    }

    /// One burst from the inside, starting at template `at`.
    fn outbound(&mut self, at: usize, bufs: &mut [[u8; ROOM]; BURST]) -> usize {
        let mut ok = 0;
        for (k, b) in bufs.iter_mut().enumerate() {
            let t = &self.out[(at + k) % self.out.len()];
            b[..self.len].copy_from_slice(&t[..self.len]);
            let v = send(&mut self.e, self.ds_lite, b, self.len);
            ok += usize::from(matches!(v, Verdict::Forward(_) | Verdict::ForwardAt { .. }));
        }
        ok
    }

    /// One burst of replies from the outside.
    fn inbound(&mut self, at: usize, bufs: &mut [[u8; ROOM]; BURST]) -> usize {
        let mut ok = 0;
        for (k, b) in bufs.iter_mut().enumerate() {
            b[..PKT].copy_from_slice(&self.back[(at + k) % self.back.len()]);
            let v = self.e.process(now(), Side::Outside, b, PKT);
            ok += usize::from(matches!(v, Verdict::Forward(_) | Verdict::ForwardAt { .. }));
        }
        ok
    }
}

fn established(c: &mut Criterion<CpuTime>) {
    let mut group = c.benchmark_group("established_one_at_a_time");
    group.throughput(Throughput::Elements(BURST as u64));
    for (name, ds_lite) in [("napt44", false), ("ds_lite", true)] {
        let mut f = Fixture::new(ds_lite);
        let mut bufs = [[0u8; ROOM]; BURST];
        let mut at = 0;
        group.bench_function(format!("{name}/outbound"), |b| {
            b.iter(|| {
                at = (at + BURST) % f.out.len();
                let ok = f.outbound(at, &mut bufs);
                assert_eq!(ok, BURST);
                black_box(&bufs);
            });
        });
        group.bench_function(format!("{name}/inbound"), |b| {
            b.iter(|| {
                at = (at + BURST) % f.back.len();
                let ok = f.inbound(at, &mut bufs);
                assert_eq!(ok, BURST);
                black_box(&bufs);
            });
        });
    }
    group.finish();
}

/// New flows: 16 K of them into an empty engine, after its building (not timed).
fn creation(c: &mut Criterion<CpuTime>) {
    const CHUNK: u32 = 1 << 14;
    let mut group = c.benchmark_group("create");
    group.sample_size(10);
    group.throughput(Throughput::Elements(u64::from(CHUNK)));
    for (name, ds_lite) in [("napt44", false), ("ds_lite", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut e = engine(ds_lite, CHUNK);
                    let mut fresh: Vec<_> = (0..CHUNK).map(|i| first(ds_lite, i)).collect();
                    let start = CpuTime.start();
                    for (buf, len) in &mut fresh {
                        let v = send(&mut e, ds_lite, buf, *len);
                        assert!(matches!(v, Verdict::Forward(_) | Verdict::ForwardAt { .. }));
                        while e.poll_event().is_some() {}
                    }
                    total += CpuTime.end(start);
                }
                total
            });
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion<CpuTime>) {
    common::init_huge_pages();
    established(c);
    creation(c);
}

criterion_group! {
    name = dslite_benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = benches
}
criterion_main!(dslite_benches);
