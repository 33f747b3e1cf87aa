//! The bounded queue between the packet path and the sinks, and the logger thread that drains
//! it.
//!
//! A worker calls [`LogSender::send`] for each event it drains from its engine. The send never
//! blocks: when the queue is full the event is dropped and counted ([`PipelineStats::lost`], for
//! `ctl stats` and metrics), because a translation log must never slow down or stop
//! translation. The logger thread takes up to [`PipelineConfig::max_batch`] events at a time,
//! records them in every sink and flushes each sink once per batch (a durable JSON file is
//! fsynced then). Events a sink takes and then loses (a full disk, a collector that refuses
//! them) are counted per sink and reason ([`PipelineStats::sink_losses`]), and the logger says
//! so in a warning at most once per [`WARN_INTERVAL`] per sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use natgate_core::Event;

use super::{LogError, LossReason, Lost, Sink};

/// How often an idle logger thread looks at the stop flag.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// A failing sink is reported at most once per this interval (the losses in between are
/// summed into the next report).
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// What the pipeline is made of.
pub struct PipelineConfig {
    /// Events the queue holds; a send beyond this is lost (and counted). At least 1.
    pub capacity: usize,
    /// Most events recorded before the sinks are flushed. At least 1.
    pub max_batch: usize,
    /// Where events go, in order.
    pub sinks: Vec<Box<dyn Sink>>,
}

/// Events one sink lost for one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkLoss {
    /// The sink ([`Sink::name`]).
    pub sink: &'static str,
    /// Why.
    pub reason: LossReason,
    /// Events lost.
    pub events: u64,
}

/// Counters, readable while the pipeline runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Events accepted into the queue.
    pub queued: u64,
    /// Events dropped because the queue was full or the logger had stopped.
    pub lost: u64,
    /// Events handed to every sink.
    pub written: u64,
    /// Batches flushed.
    pub batches: u64,
    /// Failed record or flush calls, over all sinks (the event may be missing from that sink).
    pub sink_errors: u64,
    /// Events that did not reach a sink, for every sink and reason (zeros included), in sink
    /// order.
    pub sink_losses: Vec<SinkLoss>,
}

struct SinkCounters {
    name: &'static str,
    /// Per [`LossReason::ALL`].
    lost: [AtomicU64; LossReason::ALL.len()],
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    lost: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    sink_errors: AtomicU64,
    sinks: Vec<SinkCounters>,
    stop: AtomicBool,
}

impl Counters {
    fn snapshot(&self) -> PipelineStats {
        PipelineStats {
            queued: self.queued.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            sink_errors: self.sink_errors.load(Ordering::Relaxed),
            sink_losses: self
                .sinks
                .iter()
                .flat_map(|c| {
                    LossReason::ALL
                        .iter()
                        .zip(&c.lost)
                        .map(|(&reason, n)| SinkLoss {
                            sink: c.name,
                            reason,
                            events: n.load(Ordering::Relaxed),
                        })
                })
                .collect(),
        }
    }
}

/// The packet path's end of the queue; clone one per worker.
#[derive(Clone)]
pub struct LogSender {
    tx: SyncSender<Event>,
    counters: Arc<Counters>,
}

impl LogSender {
    /// Queues `ev` without blocking. Returns false, and counts the event as lost, when the queue
    /// is full or the logger has stopped.
    pub fn send(&self, ev: Event) -> bool {
        match self.tx.try_send(ev) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.lost.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// A read-only view of the counters, for `ctl stats` and metrics while the pipeline runs.
#[derive(Clone)]
pub struct PipelineMonitor(Arc<Counters>);

impl PipelineMonitor {
    /// All counters now.
    pub fn stats(&self) -> PipelineStats {
        self.0.snapshot()
    }
}

impl std::fmt::Debug for PipelineMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PipelineMonitor")
            .field(&self.stats())
            .finish()
    }
}

/// The control end: counters and shutdown.
pub struct LogPipelineHandle {
    counters: Arc<Counters>,
    thread: JoinHandle<()>,
}

impl LogPipelineHandle {
    /// Events lost so far (queue full or logger stopped).
    pub fn lost(&self) -> u64 {
        self.counters.lost.load(Ordering::Relaxed)
    }

    /// All counters.
    pub fn stats(&self) -> PipelineStats {
        self.counters.snapshot()
    }

    /// A view of the counters that outlives this handle's shutdown.
    pub fn monitor(&self) -> PipelineMonitor {
        PipelineMonitor(Arc::clone(&self.counters))
    }

    /// Writes every event already queued, flushes the sinks, stops the logger thread and returns
    /// the final counters. Events sent after this starts may be lost (and are counted).
    pub fn shutdown(self) -> Result<PipelineStats, LogError> {
        self.counters.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| LogError::LoggerPanicked)?;
        Ok(self.counters.snapshot())
    }
}

/// The queue and its logger thread.
pub struct LogPipeline;

impl LogPipeline {
    /// Starts the logger thread (named `natgate-log`).
    pub fn start(config: PipelineConfig) -> Result<(LogSender, LogPipelineHandle), LogError> {
        let (tx, rx) = mpsc::sync_channel(config.capacity.max(1));
        let counters = Arc::new(Counters {
            sinks: config
                .sinks
                .iter()
                .map(|s| SinkCounters {
                    name: s.name(),
                    lost: Default::default(),
                })
                .collect(),
            ..Counters::default()
        });
        let warned = vec![Warned::default(); config.sinks.len()];
        let logger = Logger {
            rx,
            sinks: config.sinks,
            warned,
            max_batch: config.max_batch.max(1),
            counters: Arc::clone(&counters),
        };
        let thread = std::thread::Builder::new()
            .name("natgate-log".into())
            .spawn(move || logger.run())
            .map_err(LogError::Spawn)?;
        Ok((
            LogSender {
                tx,
                counters: Arc::clone(&counters),
            },
            LogPipelineHandle { counters, thread },
        ))
    }
}

/// When a sink's losses were last reported, and what it lost since.
#[derive(Debug, Clone, Copy, Default)]
struct Warned {
    at: Option<std::time::Instant>,
    since: u64,
}

struct Logger {
    rx: Receiver<Event>,
    sinks: Vec<Box<dyn Sink>>,
    /// Per sink.
    warned: Vec<Warned>,
    max_batch: usize,
    counters: Arc<Counters>,
}

impl Logger {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            batch.clear();
            match self.rx.recv_timeout(IDLE_POLL) {
                Ok(ev) => batch.push(ev),
                // Every sender is gone and the queue is empty.
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    // Stop only once the queue is drained.
                    if self.counters.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
            }
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(ev) => batch.push(ev),
                    Err(_) => break,
                }
            }
            self.write(&batch);
        }
    }

    fn write(&mut self, batch: &[Event]) {
        let mut errors = 0;
        for i in 0..self.sinks.len() {
            for ev in batch {
                if let Err(lost) = self.sinks[i].record(ev) {
                    errors += 1;
                    self.lost(i, &lost);
                }
            }
            if let Err(lost) = self.sinks[i].flush() {
                errors += 1;
                self.lost(i, &lost);
            }
        }
        let c = &self.counters;
        c.sink_errors.fetch_add(errors, Ordering::Relaxed);
        c.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what sink `i` lost, and warns if it has not for [`WARN_INTERVAL`].
    fn lost(&mut self, i: usize, lost: &Lost) {
        let reason = LossReason::of(&lost.source);
        if let Some(c) = self.counters.sinks.get(i)
            && let Some(n) = LossReason::ALL
                .iter()
                .position(|&r| r == reason)
                .and_then(|r| c.lost.get(r))
        {
            n.fetch_add(lost.events, Ordering::Relaxed);
        }
        let Some(w) = self.warned.get_mut(i) else {
            return;
        };
        w.since += lost.events;
        if w.at.is_none_or(|t| t.elapsed() >= WARN_INTERVAL) {
            tracing::warn!(
                sink = self.sinks[i].name(),
                reason = reason.name(),
                events_lost = w.since,
                "translation log sink failing, events lost: {}",
                lost.source
            );
            *w = Warned {
                at: Some(std::time::Instant::now()),
                since: 0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgate_core::{Endpoint, Instant, Protocol};
    use std::net::Ipv4Addr;
    use std::sync::Mutex;
    use std::sync::mpsc::Sender;

    fn ev(n: u16) -> Event {
        Event::MappingCreated {
            at: Instant::from_millis(u64::from(n)),
            proto: Protocol::Udp,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), n),
            external: Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), n),
        }
    }

    /// Records what it gets; blocks in `record` until the test opens the gate.
    struct Probe {
        seen: Arc<Mutex<Vec<Event>>>,
        flushes: Arc<AtomicU64>,
        gate: Option<(Receiver<()>, Sender<()>)>,
        fail: bool,
    }

    impl Sink for Probe {
        fn name(&self) -> &'static str {
            "test"
        }
        fn record(&mut self, ev: &Event) -> Result<(), Lost> {
            if let Some((gate, entered)) = self.gate.take() {
                let _ = entered.send(());
                // Bounded: the test opens the gate or drops it.
                let _ = gate.recv_timeout(Duration::from_secs(10));
            }
            if self.fail {
                return Err(Lost::new(1, std::io::Error::other("refused")));
            }
            self.seen.lock().expect("lock").push(*ev);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), Lost> {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn probe(
        gate: Option<(Receiver<()>, Sender<()>)>,
    ) -> (Probe, Arc<Mutex<Vec<Event>>>, Arc<AtomicU64>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let flushes = Arc::new(AtomicU64::new(0));
        let p = Probe {
            seen: Arc::clone(&seen),
            flushes: Arc::clone(&flushes),
            gate,
            fail: false,
        };
        (p, seen, flushes)
    }

    #[test]
    fn a_full_queue_loses_and_counts_without_blocking_and_shutdown_drains() {
        let (open, gate) = mpsc::channel();
        let (entered_tx, entered) = mpsc::channel();
        let (p, seen, flushes) = probe(Some((gate, entered_tx)));
        let (tx, handle) = LogPipeline::start(PipelineConfig {
            capacity: 4,
            max_batch: 100,
            sinks: vec![Box::new(p)],
        })
        .expect("start");
        // The logger takes event 0 and blocks in the sink; the queue is empty again.
        assert!(tx.send(ev(0)));
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("logger took event 0");
        // 4 fit; the other 15 are refused at once (the logger is stuck, so a blocking send
        // would hang here) and counted.
        let accepted: Vec<bool> = (1..20).map(|n| tx.send(ev(n))).collect();
        assert_eq!(accepted.iter().filter(|a| **a).count(), 4);
        assert!(accepted[..4].iter().all(|a| *a));
        assert_eq!(handle.lost(), 15);
        assert_eq!(handle.stats().queued, 5);
        open.send(()).expect("open the gate");
        let stats = handle.shutdown().expect("shutdown");
        assert_eq!((stats.written, stats.queued, stats.lost), (5, 5, 15));
        assert_eq!(
            *seen.lock().expect("lock"),
            (0..5).map(ev).collect::<Vec<_>>()
        );
        assert_eq!(flushes.load(Ordering::Relaxed), stats.batches);
        // After shutdown the sender still never blocks; it counts.
        assert!(!tx.send(ev(99)));
    }

    #[test]
    fn batches_are_bounded_and_order_is_kept() {
        let (p, seen, flushes) = probe(None);
        let (tx, handle) = LogPipeline::start(PipelineConfig {
            capacity: 1000,
            max_batch: 7,
            sinks: vec![Box::new(p)],
        })
        .expect("start");
        for n in 0..100 {
            assert!(tx.send(ev(n)));
        }
        let stats = handle.shutdown().expect("shutdown");
        assert_eq!((stats.written, stats.lost), (100, 0));
        assert!(stats.batches > 100 / 7);
        assert_eq!(flushes.load(Ordering::Relaxed), stats.batches);
        let got: Vec<Event> = seen.lock().expect("lock").clone();
        assert_eq!(got, (0..100).map(ev).collect::<Vec<_>>());
    }

    #[test]
    fn a_failing_sink_is_counted_and_does_not_starve_the_others() {
        let (mut bad, _, _) = probe(None);
        bad.fail = true;
        let (good, seen, _) = probe(None);
        let (tx, handle) = LogPipeline::start(PipelineConfig {
            capacity: 16,
            max_batch: 16,
            sinks: vec![Box::new(bad), Box::new(good)],
        })
        .expect("start");
        for n in 0..5 {
            assert!(tx.send(ev(n)));
        }
        let stats = handle.shutdown().expect("shutdown");
        assert_eq!(stats.sink_errors, 5);
        assert_eq!(seen.lock().expect("lock").len(), 5);
    }

    #[test]
    fn dropping_every_sender_stops_the_logger() {
        let (p, seen, _) = probe(None);
        let (tx, handle) = LogPipeline::start(PipelineConfig {
            capacity: 8,
            max_batch: 8,
            sinks: vec![Box::new(p)],
        })
        .expect("start");
        assert!(tx.send(ev(1)));
        drop(tx);
        let t0 = std::time::Instant::now();
        while !handle.thread.is_finished() {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "logger still running"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen.lock().expect("lock").len(), 1);
        assert_eq!(handle.shutdown().expect("join").written, 1);
    }
}
