//! Events per second the translation-log pipeline sustains without losing one, per sink: JSON
//! lines file (plain and durable), syslog over UDP to loopback, IPFIX over UDP to loopback, and
//! the block log.
//!
//! `cargo bench -p natgate --bench logsink -- --warm-up-time 1 --measurement-time 5`
//!
//! One iteration is one event through [`LogPipeline`] into the sink. The sender keeps at most
//! the queue's capacity in flight (it yields while the queue is full), so no event is ever lost
//! and the rate measured is what the logger thread drains into the sink; each measurement ends
//! after `shutdown` has flushed the sink, and asserts that every event was written, none lost.
//!
//! Unlike the engine benches this one measures wall time: the work is done by the logger
//! thread (and the kernel), not by the thread criterion runs on, whose CPU time would only
//! count the sending. The UDP sinks send to a collector thread on loopback that counts what
//! arrives; its totals are printed at the end of each sink's benchmark, because a datagram the
//! kernel drops is lost on the wire even though the pipeline lost nothing.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant as WallInstant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use natgate::observability::eventlog::{
    Destination, EventLogOptions, EventSink, Rotation, TimeBase,
};
use natgate::observability::logsink::ipfix::{IpfixConfig, IpfixExporter};
use natgate::observability::logsink::syslog::{
    DOCUMENTATION_ENTERPRISE, Facility, SyslogConfig, SyslogSink, SyslogTarget,
};
use natgate::observability::logsink::whois::{BlockLog, BlockLogConfig};
use natgate::observability::logsink::{LogPipeline, PipelineConfig, Sink};
use natgate_core::{Endpoint, Event, Instant, Protocol};

/// Events the queue holds (the daemon's default order of magnitude).
const CAPACITY: usize = 65_536;
/// Most events the logger records before flushing its sinks.
const MAX_BATCH: usize = 1024;
/// No single measurement may run longer than this, whatever criterion asks for.
const DEADLINE: Duration = Duration::from_secs(120);

/// A session creation, as the engine reports thousands per second.
fn session(n: u64) -> Event {
    Event::SessionCreated {
        at: Instant::from_millis(n),
        proto: Protocol::Udp,
        internal: Endpoint::new(Ipv4Addr::from(0x6440_0000 + (n as u32 & 0xffff)), 5000),
        external: Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), (n % 60_000) as u16 + 1024),
        remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 53),
        origin: natgate_core::SessionOrigin::Dynamic,
    }
}

/// Mapping created then deleted, alternately: what a block log records.
fn mapping(n: u64) -> Event {
    let internal = Endpoint::new(
        Ipv4Addr::from(0x6440_0000 + ((n as u32 / 2) & 0xffff)),
        5000,
    );
    let external = Endpoint::new(
        Ipv4Addr::new(198, 51, 100, 1),
        (n / 2 % 60_000) as u16 + 1024,
    );
    let (at, proto) = (Instant::from_millis(n), Protocol::Udp);
    if n.is_multiple_of(2) {
        Event::MappingCreated {
            at,
            proto,
            internal,
            external,
        }
    } else {
        Event::MappingDeleted {
            at,
            proto,
            internal,
            external,
            reason: natgate_core::EndReason::Expired,
        }
    }
}

/// Counts datagrams arriving on a loopback socket until stopped (or for at most 10 minutes).
struct Collector {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Collector {
    fn start() -> Collector {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap_or_else(|e| panic!("timeout: {e}"));
        let addr = s.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            let t0 = WallInstant::now();
            while !st.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(600) {
                if s.recv(&mut buf).is_ok() {
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Collector {
            addr,
            received,
            stop,
            thread,
        }
    }

    /// Stops the collector; returns how many datagrams it received.
    fn finish(self) -> u64 {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.received.load(Ordering::Relaxed)
    }
}

fn base() -> TimeBase {
    TimeBase::new(Instant::ZERO, SystemTime::now())
}

/// Sends `count` events made by `event` through a fresh pipeline into `sink`, never more than
/// the queue holds in flight; returns the wall time from the first send until the sink is
/// flushed and the logger has stopped. Panics if any event is lost or not written.
fn measure(count: u64, sink: Box<dyn Sink>, event: fn(u64) -> Event) -> Duration {
    let (tx, handle) = LogPipeline::start(PipelineConfig {
        capacity: CAPACITY,
        max_batch: MAX_BATCH,
        sinks: vec![sink],
    })
    .unwrap_or_else(|e| panic!("start: {e}"));
    let t0 = WallInstant::now();
    let mut sent = 0u64;
    while sent < count {
        assert!(t0.elapsed() < DEADLINE, "{sent} of {count} events sent");
        let s = handle.stats();
        if s.queued - s.written < CAPACITY as u64 - 1 {
            assert!(tx.send(event(sent)), "lost an event with room in the queue");
            sent += 1;
        } else {
            std::thread::yield_now();
        }
    }
    drop(tx);
    let stats = handle
        .shutdown()
        .unwrap_or_else(|e| panic!("shutdown: {e}"));
    let elapsed = t0.elapsed();
    assert_eq!(stats.lost, 0, "no event lost");
    assert_eq!(stats.written, count, "every event written");
    elapsed
}

/// One sink's benchmark: `open` makes a fresh sink for each measurement.
fn bench_sink(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    open: &dyn Fn() -> Box<dyn Sink>,
    event: fn(u64) -> Event,
) -> u64 {
    let mut total = 0u64;
    group.bench_function(BenchmarkId::new("events", name), |b| {
        b.iter_custom(|iters| {
            total += iters;
            measure(iters, open(), event)
        });
    });
    total
}

#[allow(clippy::print_stderr)] // the collectors' totals go to stderr
fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut group = c.benchmark_group("log_pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));

    for durable in [false, true] {
        let path = dir.path().join(format!("events-{durable}.jsonl"));
        let open = move || -> Box<dyn Sink> {
            let dest = Destination::File {
                path: path.clone(),
                rotation: Rotation {
                    max_bytes: 64 << 20,
                    keep: 2,
                },
            };
            let opts = EventLogOptions {
                log_destinations: false,
                durable,
            };
            Box::new(EventSink::open(&dest, base(), opts).unwrap_or_else(|e| panic!("open: {e}")))
        };
        let name = if durable {
            "json_file_durable"
        } else {
            "json_file"
        };
        bench_sink(&mut group, name, &open, session);
    }

    let collector = Collector::start();
    let addr = collector.addr;
    let open = move || -> Box<dyn Sink> {
        Box::new(
            SyslogSink::open(
                SyslogConfig {
                    target: SyslogTarget::Udp(addr),
                    facility: Facility::LOCAL0,
                    hostname: "bench".into(),
                    procid: std::process::id(),
                    enterprise: DOCUMENTATION_ENTERPRISE,
                    log_destinations: false,
                },
                base(),
            )
            .unwrap_or_else(|e| panic!("open: {e}")),
        )
    };
    let sent = bench_sink(&mut group, "syslog_udp_loopback", &open, session);
    eprintln!(
        "syslog collector: {} datagrams received for {sent} events sent (one datagram each)",
        collector.finish()
    );

    let collector = Collector::start();
    let addr = collector.addr;
    let open = move || -> Box<dyn Sink> {
        Box::new(
            IpfixExporter::open(IpfixConfig::new(addr), base())
                .unwrap_or_else(|e| panic!("open: {e}")),
        )
    };
    let sent = bench_sink(&mut group, "ipfix_udp_loopback", &open, session);
    eprintln!(
        "ipfix collector: {} messages received for {sent} events sent (many records per message)",
        collector.finish()
    );

    let path = dir.path().join("blocks.log");
    let open = move || -> Box<dyn Sink> {
        // A fresh log each time: the block log keeps its intervals in memory.
        let _ = std::fs::remove_file(&path);
        Box::new(
            BlockLog::open(
                BlockLogConfig {
                    path: path.clone(),
                    max_intervals: 1 << 20,
                    mappings: true,
                    durable: false,
                },
                base(),
            )
            .unwrap_or_else(|e| panic!("open: {e}")),
        )
    };
    bench_sink(&mut group, "block_log_mappings", &open, mapping);
    group.finish();
}

criterion_group!(logsink_benches, pipeline);
criterion_main!(logsink_benches);
