//! Session table benchmarks: established-flow lookups (batched and prefetched vs one at a time)
//! and session churn, on tables of 1 M and 16 M sessions.
//!
//! `cargo bench -p natgate-core --bench table -- --warm-up-time 1 --measurement-time 3`
//! (add a filter such as `1M` to skip the 16 M table, which takes about 1 GB and a while to fill).

use std::cell::OnceCell;
use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natgate_core::table::{FlowKey, MappingId, Session, SessionId, SessionTable};
use natgate_core::{Endpoint, Protocol, Rng};

/// Keys per batched lookup, as the engine batches packets.
const BATCH: usize = 32;

/// Session number `i`: distinct out and in keys for every `i < 2^32`.
fn session(i: u32) -> Session {
    Session {
        internal: Endpoint::new(Ipv4Addr::from_bits(0x0a00_0000 ^ i), 40_000),
        external: Endpoint::new(Ipv4Addr::from_bits(0xcb00_0000 ^ i), 1024 + (i % 7) as u16),
        remote: Endpoint::new(Ipv4Addr::from_bits(0x0808_0000 + (i % 1000)), 443),
        proto: Protocol::Tcp,
        tcp: 0,
        flags: 0,
        last_seen: 0,
        mapping: MappingId(i),
    }
}

/// A full table of `n` sessions, with due times spread over a wheel turn, and its out keys in
/// random order.
fn filled(n: usize) -> (SessionTable, Vec<FlowKey>) {
    let mut t = SessionTable::new(n, 0x5eed);
    let mut rng = Rng::new(1);
    for i in 0..n as u32 {
        t.insert(session(i), 1 + rng.below(4096))
            .unwrap_or_else(|_| panic!("table full at {i}"));
    }
    let mut keys: Vec<FlowKey> = (0..n as u32).map(|i| session(i).out_key()).collect();
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.below(i as u32 + 1) as usize);
    }
    (t, keys)
}

fn lookups(c: &mut Criterion, label: &str, n: usize) {
    let table = OnceCell::new();
    let mut group = c.benchmark_group(format!("lookup_{label}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut cursor = 0;
    group.bench_function("find_batch_32", |b| {
        let (t, keys) = table.get_or_init(|| filled(n));
        let mut out = [None; BATCH];
        b.iter(|| {
            cursor = (cursor + BATCH) % (keys.len() - BATCH);
            t.find_batch(false, black_box(&keys[cursor..cursor + BATCH]), &mut out);
            black_box(&out);
        });
    });
    group.bench_function("find_one_at_a_time_32", |b| {
        let (t, keys) = table.get_or_init(|| filled(n));
        let mut out: [Option<SessionId>; BATCH] = [None; BATCH];
        b.iter(|| {
            cursor = (cursor + BATCH) % (keys.len() - BATCH);
            for (o, k) in out.iter_mut().zip(black_box(&keys[cursor..cursor + BATCH])) {
                *o = t.find_out(k);
            }
            black_box(&out);
        });
    });
    group.finish();
}

fn churn(c: &mut Criterion, label: &str, n: usize) {
    let mut group = c.benchmark_group(format!("churn_{label}"));
    group.throughput(Throughput::Elements(1));
    // Explicit deletes: remove a random live session, create a new one (table stays full).
    let mut state = None;
    group.bench_function("insert_remove", |b| {
        let (t, ids, rng, next) = state.get_or_insert_with(|| {
            let (t, _) = filled(n);
            let ids: Vec<SessionId> = t.iter().map(|(id, _)| id).collect();
            (t, ids, Rng::new(9), n as u32)
        });
        b.iter(|| {
            let k = rng.below(ids.len() as u32) as usize;
            t.remove(ids[k]);
            let due = 1 + rng.below(4096);
            ids[k] = t
                .insert(session(*next), due)
                .unwrap_or_else(|_| panic!("table full"));
            *next = next.wrapping_add(1);
        });
    });
    // Steady state through the wheel: each simulated second creates `per_sec` sessions with a
    // 1000 s idle timeout and expires the ones created 1000 s earlier; `n` live sessions.
    let per_sec = n as u32 / 1000;
    group.throughput(Throughput::Elements(u64::from(per_sec)));
    let mut state = None;
    group.bench_function("insert_expire_per_second", |b| {
        let (t, now, next) = state.get_or_insert_with(|| {
            let mut t = SessionTable::new(n, 0x5eed);
            let mut next = 0u32;
            for sec in 0..1000 {
                for _ in 0..per_sec {
                    let _ = t.insert(session(next), sec + 1000);
                    next += 1;
                }
            }
            (t, 1000u32, next)
        });
        b.iter(|| {
            t.expire(
                *now,
                |s| s.last_seen + 1000,
                |_, s| {
                    black_box(s);
                },
            );
            for _ in 0..per_sec {
                let mut s = session(*next);
                s.last_seen = *now;
                let _ = t.insert(s, *now + 1000);
                *next = next.wrapping_add(1);
            }
            *now += 1;
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    lookups(c, "1M", 1 << 20);
    churn(c, "1M", 1 << 20);
    lookups(c, "16M", 1 << 24);
}

criterion_group!(table, benches);
criterion_main!(table);
