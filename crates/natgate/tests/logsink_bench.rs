//! Events per second the log pipeline sustains without loss, per sink. Ignored by default;
//! run with
//! `cargo test --release -p natgate --test logsink_bench -- --ignored --nocapture --test-threads=1`.
//!
//! The sender keeps at most the queue's capacity in flight, so what is measured is the rate
//! the logger thread drains to the sink with no event lost. Each run is bounded to
//! [`EVENTS`] events and [`DEADLINE`].

#![allow(clippy::expect_used)]

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant as WallInstant, SystemTime};

use natgate::eventlog::{Destination, EventLogOptions, EventSink, Rotation, TimeBase};
use natgate::logsink::ipfix::{IpfixConfig, IpfixExporter};
use natgate::logsink::syslog::{
    DOCUMENTATION_ENTERPRISE, Facility, SyslogConfig, SyslogSink, SyslogTarget,
};
use natgate::logsink::whois::{BlockLog, BlockLogConfig};
use natgate::logsink::{LogPipeline, PipelineConfig, Sink};
use natgate_core::{Endpoint, Event, Instant, Protocol};

const EVENTS: u64 = 300_000;
const CAPACITY: usize = 65_536;
const DEADLINE: Duration = Duration::from_secs(60);

fn event(n: u64) -> Event {
    Event::SessionCreated {
        at: Instant::from_millis(n),
        proto: Protocol::Udp,
        internal: Endpoint::new(Ipv4Addr::from(0x6440_0000 + (n as u32 & 0xffff)), 5000),
        external: Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), (n % 60_000) as u16 + 1024),
        remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 53),
    }
}

/// Counts datagrams arriving on a loopback socket until told to stop (bounded by a timeout).
struct Collector {
    addr: std::net::SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Collector {
    fn start() -> Collector {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let addr = s.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let t0 = WallInstant::now();
            while !st.load(Ordering::Relaxed) && t0.elapsed() < DEADLINE * 2 {
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

    fn finish(self) -> u64 {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.received.load(Ordering::Relaxed)
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
        }
    }
}

fn run(name: &str, sink: Box<dyn Sink>) {
    run_with(name, sink, event);
}

#[allow(clippy::print_stdout)]
fn run_with(name: &str, sink: Box<dyn Sink>, event: fn(u64) -> Event) {
    let (tx, handle) = LogPipeline::start(PipelineConfig {
        capacity: CAPACITY,
        max_batch: 1024,
        sinks: vec![sink],
    })
    .expect("start");
    let t0 = WallInstant::now();
    let mut sent = 0u64;
    while sent < EVENTS && t0.elapsed() < DEADLINE {
        let s = handle.stats();
        if s.queued - s.written < CAPACITY as u64 - 1 {
            assert!(tx.send(event(sent)), "lost an event with room in the queue");
            sent += 1;
        } else {
            std::thread::yield_now();
        }
    }
    let stats = handle.shutdown().expect("shutdown");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(stats.lost, 0);
    assert_eq!(stats.written, sent);
    println!(
        "{name:<28} {sent:>8} events in {secs:>6.3} s = {:>10.0} events/s, {} batches, {} sink errors",
        sent as f64 / secs,
        stats.batches,
        stats.sink_errors
    );
}

fn base() -> TimeBase {
    TimeBase::new(Instant::ZERO, SystemTime::now())
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
#[allow(clippy::print_stdout)]
fn events_per_second_per_sink() {
    let dir = tempfile::tempdir().expect("tempdir");
    for durable in [false, true] {
        let dest = Destination::File {
            path: dir.path().join(format!("events-{durable}.jsonl")),
            rotation: Rotation {
                max_bytes: 64 << 20,
                keep: 2,
            },
        };
        let opts = EventLogOptions {
            log_destinations: false,
            durable,
        };
        let sink = EventSink::open(&dest, base(), opts).expect("open");
        run(&format!("json file (durable={durable})"), Box::new(sink));
    }

    let c = Collector::start();
    let sink = SyslogSink::open(
        SyslogConfig {
            target: SyslogTarget::Udp(c.addr),
            facility: Facility::LOCAL0,
            hostname: "bench".into(),
            procid: std::process::id(),
            enterprise: DOCUMENTATION_ENTERPRISE,
            log_destinations: false,
        },
        base(),
    )
    .expect("open");
    run("syslog udp loopback", Box::new(sink));
    println!("  collector received {} of {EVENTS} datagrams", c.finish());

    let c = Collector::start();
    let sink = IpfixExporter::open(IpfixConfig::new(c.addr), base()).expect("open");
    run("ipfix udp loopback", Box::new(sink));
    println!("  collector received {} IPFIX messages", c.finish());

    let sink = BlockLog::open(
        BlockLogConfig {
            path: dir.path().join("blocks.log"),
            max_intervals: 1 << 20,
            mappings: true,
            durable: false,
        },
        base(),
    )
    .expect("open");
    run_with("block log (mappings)", Box::new(sink), mapping);
}
