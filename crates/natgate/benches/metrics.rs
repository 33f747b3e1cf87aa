//! What one Prometheus scrape costs the daemon: rendering the text exposition of a carrier-grade
//! gateway's snapshot (256 external addresses with port blocks, every drop reason counted, the
//! fast path running, three log sinks).
//!
//! `cargo bench -p natgate --bench metrics -- --warm-up-time 1 --measurement-time 5`
//!
//! One iteration renders one snapshot, as the metrics server does for each `GET /metrics`;
//! building the snapshot from the engines is the daemon's and is not timed. The exposition's
//! size is printed once, before the measurement.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use natgate::control::protocol::{DataplaneDrop, FastPathStats, LogSinkLoss, PoolRow};
use natgate::dataplane::fastpath::FastPathCounters;
use natgate::observability::metrics::MetricsSnapshot;
use natgate_core::DropReason;
use natgate_core::alloc::{AddressUsage, PortSetKind, PortSetUsage};

/// External addresses in the pool: a /24 of carrier-grade NAT.
const ADDRESSES: u32 = 256;

/// A gateway that has run for a while: large counters, every series present.
fn snapshot() -> MetricsSnapshot {
    let mut s = MetricsSnapshot::default();
    let big = |i: u64| 1_234_567_890 + i * 7_654_321;
    for (i, d) in s.drops.iter_mut().enumerate() {
        *d = big(i as u64);
    }
    let st = &mut s.stats;
    st.outbound.packets = big(1);
    st.outbound.bytes = big(2) * 1000;
    st.inbound.packets = big(3);
    st.inbound.bytes = big(4) * 1000;
    st.hairpinned_packets = big(5);
    st.icmp_generated = big(6);
    st.sessions_created = big(7);
    st.sessions_deleted = big(8);
    st.mappings_created = big(9);
    st.mappings_deleted = big(10);
    st.fast_path = Some(FastPathStats {
        program: FastPathCounters {
            forwarded_out: big(11),
            forwarded_in: big(12),
            bytes_out: big(13) * 1000,
            bytes_in: big(14) * 1000,
            punt_no_session: big(15),
            punt_tcp_flags: big(16),
            capacity: 1 << 21,
            ..FastPathCounters::default()
        },
        flows: 812_345,
        offers_skipped: 0,
        changes_failed: 0,
    });
    for sink in ["file", "syslog", "ipfix"] {
        for (i, reason) in ["no_space", "refused", "unreachable", "io_error"]
            .into_iter()
            .enumerate()
        {
            st.log_sink_losses.push(LogSinkLoss {
                sink: sink.into(),
                reason: reason.into(),
                events: i as u64,
            });
        }
    }
    for reason in ["tun_tx_dropped", "tun_write_failed", "steer_queue_full"] {
        st.dataplane_drops.push(DataplaneDrop {
            reason: reason.into(),
            packets: 17,
        });
    }
    for (i, n) in s.portmap.pcp_results.iter_mut().enumerate() {
        *n = big(i as u64) / 1000;
    }
    s.sessions.tcp = 612_345;
    s.sessions.udp = 398_765;
    s.sessions.icmp = 1_234;
    s.mappings = 701_234;
    let base = u32::from(Ipv4Addr::new(198, 51, 100, 0));
    s.pools = (0..ADDRESSES)
        .map(|i| {
            let addr = Ipv4Addr::from(base + i);
            let usage = AddressUsage {
                addr,
                in_use: [3 + i, 2400 + i, 1500 + i],
                held_down: [0, 40 + i, 12],
                subscribers: 61 + i % 3,
            };
            let sets = PortSetUsage {
                addr,
                kind: PortSetKind::Block,
                size: 512,
                in_use: 61 + i % 3,
                held_down: 3,
                free: 62 - i % 3,
            };
            PoolRow::with_port_sets(&usage, &sets)
        })
        .collect();
    s
}

#[allow(clippy::print_stderr)] // the exposition's size goes to stderr
fn render(c: &mut Criterion) {
    let snap = snapshot();
    let text = snap.clone().render();
    eprintln!(
        "exposition: {} bytes, {} lines, {} drop reasons, {ADDRESSES} addresses",
        text.len(),
        text.lines().count(),
        DropReason::COUNT,
    );
    c.bench_function("metrics_render_256_addresses", |b| {
        b.iter_batched(
            || snap.clone(),
            |s| black_box(s.render()),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(metrics_benches, render);
criterion_main!(metrics_benches);
