//! The gateway process: plumbing, workers, and a handle for the control plane.
//!
//! [`Daemon::start`] checks the machine, sets up the kernel plumbing ([`plumbing`]) and starts
//! one [`worker`] per TUN queue; [`Daemon::wait`] returns when the stop flag is set (SIGINT,
//! SIGTERM, or [`DaemonHandle::stop`]) or a worker fails; dropping the daemon stops the workers
//! and removes the plumbing. [`DaemonHandle`] is what a control socket or a metrics endpoint
//! holds: it asks the workers for [`Snapshot`]s and flushes over channels, so the packet path
//! never takes a lock.
//!
//! Allocation: each worker's engine gets the allocator `[allocation]` chooses
//! ([`ConfiguredAllocator::from_config`]) restricted to the worker's `Share` of the port space,
//! and the core's [`shard::Ownership`] steers inbound packets by the same split (the worker
//! moves each packet to the owner [`shard::Steering`] names). Dynamic allocation keeps the
//! classic allocator with the other workers' 64-port blocks (and, on a home gateway, the host's
//! ports) withheld.
//!
//! Translation events leave the workers through one bounded [`LogPipeline`]: a worker never
//! waits for a sink, and an event that finds the queue full is counted as lost (`ctl stats`,
//! metrics). A logger thread fans the events out to the configured sinks.
//!
//! TTL: the kernel decrements the TTL when it routes a packet into the TUN and again when it
//! routes the translated packet out. The engine gives one back
//! ([`TtlHandling::RestoreKernelHop`](natgate_core::config::TtlHandling), the default unless the
//! file sets `decrement-ttl`), so a packet crossing natgate loses exactly 1 and traceroute shows
//! the gateway once. Expiry is the kernel's first routing's: a packet that arrives with TTL 1 gets
//! time exceeded from the gateway's address on that side, before natgate sees it; one with TTL 2
//! reaches the engine with 1, leaves it with 2 and the gateway with 1, and expires at the next
//! router, whose error natgate translates back. The engine decides this, not the shell: the
//! same setting steps the batch's fast lane, the general path, hairpins (one step for the one
//! crossing), fragments and translated ICMP errors alike. Packets the engine builds itself
//! (ICMP errors, resets) start at 64 and lose the one routing out. With the fast path attached,
//! its program hands packets to the TUNs itself, the kernel routes them once (out), and the
//! engine keeps the TTL ([`Resolved::routed_once`](plumbing::Resolved)).

pub mod control;
pub mod external;
pub mod health;
pub mod machine;
pub mod mailbox;
pub mod plumbing;
pub mod portmap;
pub mod upnp;
pub mod vservers;
pub mod warm_restart;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use std::net::Ipv4Addr;

use natgate_core::alloc::{
    AddressUsage, AllocSettings, ConfiguredAllocator, DynamicAllocator, PortRange, PortSetUsage,
};
use natgate_core::config::Allocation;
use natgate_core::engine::Engine;
use natgate_core::engine::{Ended, MappingInfo, NoSuchSession, OffloadStats};
use natgate_core::saved::SavedState;
use natgate_core::shard;
use natgate_core::{Counters, Endpoint, Event, Protocol};
use std::path::PathBuf;

use crate::config::{FastPathMode, Settings};
use crate::control::protocol::{MappingList, SessionList, TableQuery};
use crate::dataplane::fastpath::{self, FastPath, FastPathCounters};
use crate::observability::eventlog::TimeBase;
use crate::observability::logsink::whois::{BlockLog, BlockLogConfig, SharedBlockLog};
use crate::observability::logsink::{
    LogError, LogPipeline, LogPipelineHandle, LogSender, PipelineConfig, PipelineMonitor,
    PipelineStats, Sink,
};
pub use plumbing::{Plumbing, PlumbingError, Resolved};
pub use worker::{Discard, EventOutput, EventSink, Worker, WorkerError};

/// The engine's clock: milliseconds on a monotonic clock shared by all workers.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

/// The engine instant a [`Clock`] starts at. Not zero: a warm restart puts back sessions last
/// seen, and ports released, before this process started, and their instants must fit before
/// its start (longer back than any timer lets state live).
pub const CLOCK_START: Duration = Duration::from_secs(30 * 24 * 3600);

impl Clock {
    /// A clock that reads [`CLOCK_START`] now.
    pub fn new() -> Self {
        Clock(std::time::Instant::now())
    }

    /// The current engine instant.
    pub fn now(&self) -> natgate_core::Instant {
        natgate_core::Instant::ZERO + CLOCK_START + self.0.elapsed()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Packet I/O of one worker, next to the engine's own counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Packets read from the TUNs, `[inside, outside]`.
    pub rx_packets: [u64; 2],
    /// Packets written to the TUNs.
    pub tx_packets: u64,
    /// Writes the kernel refused.
    pub tx_errors: u64,
    /// Packets handed to the worker that owns them (multi-queue).
    pub steered: u64,
    /// Packets dropped because the owner's mailbox was full.
    pub steer_dropped: u64,
    /// Offload changes the fast path's table refused (the flow stays with the slow path).
    pub offload_failed: u64,
}

impl IoCounters {
    fn merge(&mut self, o: &IoCounters) {
        self.rx_packets[0] += o.rx_packets[0];
        self.rx_packets[1] += o.rx_packets[1];
        self.tx_packets += o.tx_packets;
        self.tx_errors += o.tx_errors;
        self.steered += o.steered;
        self.steer_dropped += o.steer_dropped;
        self.offload_failed += o.offload_failed;
    }
}

/// How much a snapshot reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detail {
    /// Counters, table sizes, pools.
    Summary,
    /// Also sessions per protocol (one pass over the session table).
    Counts,
    /// Also the sessions the query asks for. Each worker filters its own table and sends only
    /// the rows asked for: a listing costs memory for its answer, not for a copy of the table.
    Sessions(TableQuery),
    /// Also the mappings the query asks for, likewise.
    Mappings(TableQuery),
}

/// A request to a worker.
#[derive(Debug)]
pub enum Command {
    /// Report state.
    Snapshot {
        /// How much.
        detail: Detail,
        /// Where to answer.
        reply: SyncSender<WorkerSnapshot>,
    },
    /// Apply a new behaviour, keeping state (checked with `check_reload` beforehand).
    Reload {
        /// The new engine config.
        config: natgate_core::ValidConfig,
        /// The engine's answer.
        reply: SyncSender<Result<(), String>>,
    },
    /// Delete every session and mapping, or only one subscriber's.
    Flush {
        /// Only this subscriber's (internal address); everything if `None`.
        subscriber: Option<Ipv4Addr>,
        /// Answered with what ended.
        reply: SyncSender<Ended>,
    },
    /// End one session (`ctl session delete`).
    DeleteSession {
        /// Its protocol.
        proto: Protocol,
        /// Its internal endpoint.
        internal: Endpoint,
        /// Its remote endpoint.
        remote: Endpoint,
        /// Answered with what ended, or that this worker does not hold it.
        reply: SyncSender<Result<Ended, NoSuchSession>>,
    },
    /// End the sessions one static NAT rule made (`ctl rule delete ID --flush`).
    FlushRule {
        /// The rule.
        id: natgate_core::rules::RuleId,
        /// Answered with how many sessions ended.
        reply: SyncSender<usize>,
    },
    /// List, change or health-check the virtual servers.
    VirtualServers(vservers::VsCommand),
    /// The engine's state, for a snapshot (`ctl save`).
    Save {
        /// Where to answer.
        reply: SyncSender<SavedState>,
    },
    /// A PCP or NAT-PMP request from `client`, for the worker that owns the client.
    PortMap {
        /// The sender.
        client: natgate_core::Endpoint,
        /// The datagram.
        request: Vec<u8>,
        /// The answer to send back; `None` when the request gets none.
        reply: SyncSender<Option<Vec<u8>>>,
    },
    /// A UPnP request from `client` (an SSDP datagram or a whole HTTP request), for the
    /// worker that owns the client.
    Upnp {
        /// The sender.
        client: natgate_core::Endpoint,
        /// Which of the two it is.
        kind: upnp::Kind,
        /// The bytes.
        request: Vec<u8>,
        /// The gateway as UPnP names it.
        device: natgate_core::portmap::upnp::Device,
        /// What to send back: SSDP answers (one datagram each) or one HTTP answer; empty
        /// when the request gets none.
        reply: SyncSender<Vec<Vec<u8>>>,
    },
    /// Delete an explicit mapping (`ctl unmap`).
    Unmap {
        /// Its protocol.
        proto: Protocol,
        /// Its internal endpoint.
        internal: natgate_core::Endpoint,
        /// Answered with the mapping, if this worker had it.
        reply: SyncSender<Option<MappingInfo>>,
    },
    /// Who holds an external port now.
    Whois {
        /// The external address.
        external: Ipv4Addr,
        /// The external port (ICMP: identifier).
        port: u16,
        /// Only this protocol's mappings.
        proto: Option<Protocol>,
        /// Where to answer.
        reply: SyncSender<Vec<LiveHolder>>,
    },
}

/// A subscriber that holds an external port in a worker's live state: a mapping on exactly
/// that port, or (with port blocks) the block the port is in, used or in hold-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveHolder {
    /// The subscriber (internal address).
    pub subscriber: Ipv4Addr,
    /// The mapping's port, or the block's ports.
    pub ports: PortRange,
    /// The mapping's protocol; `None` for a block, which serves every protocol.
    pub proto: Option<Protocol>,
}

/// One worker's state.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    /// Engine counters.
    pub counters: Counters,
    /// Live sessions per protocol, by `Protocol::index` (with `Detail::Counts` or more).
    pub sessions_by_proto: [u64; 3],
    /// The sessions asked for (none unless asked for).
    pub sessions: SessionList,
    /// The mappings asked for (none unless asked for).
    pub mappings: MappingList,
    /// Pool utilisation.
    pub pools: Vec<AddressUsage>,
    /// Port blocks or deterministic ranges per address (empty with dynamic allocation).
    pub port_sets: Vec<PortSetUsage>,
    /// Flows handed to the fast path, when it runs.
    pub offload: Option<OffloadStats>,
    /// Live sessions.
    pub session_count: usize,
    /// Live mappings.
    pub mapping_count: usize,
    /// Held SYNs.
    pub held_syns: usize,
    /// Packet I/O.
    pub io: IoCounters,
    /// The worker's clock when it answered.
    pub now: natgate_core::Instant,
    /// Its port-mapping server's counters (zero when none runs).
    pub portmap: natgate_core::portmap::PortMapCounters,
}

/// The whole gateway's state, summed over workers.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Engine counters.
    pub counters: Counters,
    /// Live sessions per protocol, by `Protocol::index` (with `Detail::Counts` or more).
    pub sessions_by_proto: [u64; 3],
    /// The sessions asked for, from every worker (none unless asked for).
    pub sessions: SessionList,
    /// The mappings asked for, from every worker (none unless asked for).
    pub mappings: MappingList,
    /// Pool utilisation per external address.
    pub pools: Vec<AddressUsage>,
    /// Port blocks or deterministic ranges per external address, summed over the workers'
    /// shares (empty with dynamic allocation).
    pub port_sets: Vec<PortSetUsage>,
    /// Flows handed to the fast path, summed over workers, when it runs.
    pub offload: Option<OffloadStats>,
    /// The fast path's own counters, when it runs.
    pub fast_path: Option<FastPathCounters>,
    /// Live sessions.
    pub session_count: usize,
    /// Live mappings.
    pub mapping_count: usize,
    /// Held SYNs.
    pub held_syns: usize,
    /// Packet I/O.
    pub io: IoCounters,
    /// Engine clock (milliseconds since start).
    pub now: natgate_core::Instant,
    /// The port-mapping servers' counters, summed.
    pub portmap: natgate_core::portmap::PortMapCounters,
    /// Workers that answered.
    pub workers: usize,
}

/// Errors of the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The plumbing could not be set up or removed.
    #[error(transparent)]
    Plumbing(#[from] PlumbingError),
    /// The engine config built from the machine's addresses was refused.
    #[error("config: {0}")]
    Config(#[from] natgate_core::ConfigError),
    /// A worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// The machine cannot hold the config (memory), or its interfaces contradict it.
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    /// An engine's tables could not be allocated.
    #[error(transparent)]
    OutOfMemory(#[from] natgate_core::OutOfMemory),
    /// A worker thread could not be started or panicked.
    #[error("worker thread: {0}")]
    Thread(String),
    /// A worker refused a new config.
    #[error("reload: {0}")]
    Reload(String),
    /// The event log could not be opened.
    #[error("event log {path}: {source}")]
    EventLog {
        /// Where.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker did not answer a request in time.
    #[error("the workers did not answer within {0:?}")]
    Timeout(Duration),
    /// The warm-restart snapshot could not be written.
    #[error("writing the snapshot {}: {source}", path.display())]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A worker's mailbox could not be made.
    #[error("worker mailbox: {0}")]
    Mailbox(#[source] std::io::Error),
    /// A worker refused a virtual-server change that was checked beforehand: the workers'
    /// copies are out of step.
    #[error("a worker refused a checked change (copies out of step): {0}")]
    OutOfStep(String),
    /// A log sink could not be opened, or the logger thread failed.
    #[error("log {what}: {source}")]
    Log {
        /// Which sink or step.
        what: &'static str,
        /// Why.
        #[source]
        source: LogError,
    },
    /// The fast path could not be loaded or attached (with `fast-path = "tc"`).
    #[error(transparent)]
    FastPath(#[from] fastpath::FastPathError),
    /// The allocation settings describe no allocator (validation should have refused them).
    #[error("allocation: {0}")]
    Allocation(String),
    /// The port-mapping server's socket could not be opened.
    #[error("port mapping: {0}")]
    PortMap(String),
}

/// How long a control request waits for the workers.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the control plane holds: cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub struct DaemonHandle {
    workers: Vec<Sender<Command>>,
    stop: Arc<AtomicBool>,
    resolved: Arc<Resolved>,
    started: std::time::Instant,
    /// Routes and proxy entries of the static rules' and virtual servers' addresses; `None`
    /// in a handle made without a data plane (unit tests of the control service).
    external: Arc<Mutex<Option<external::ExternalAddresses>>>,
    logs: Arc<LogView>,
    /// The in-kernel fast path while it is attached (taken, and so detached, at shutdown).
    fast_path: Arc<Mutex<Option<FastPath>>>,
    /// The TUN devices' kernel statistics; `None` without a data plane.
    tuns: Arc<Mutex<Option<TunLinks>>>,
}

/// A netlink socket opened in the gateway's namespace (it keeps addressing it from any
/// thread) and the TUN devices' names, for the drops the kernel counts on them.
#[derive(Debug)]
struct TunLinks {
    nl: crate::platform::netlink::Netlink,
    names: [String; 2],
}

/// What the control plane sees of the translation logs.
#[derive(Default)]
struct LogView {
    monitor: Option<PipelineMonitor>,
    block_log: Option<SharedBlockLog>,
}

impl std::fmt::Debug for LogView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogView")
            .field("monitor", &self.monitor)
            .field("block_log", &self.block_log.is_some())
            .finish()
    }
}

impl DaemonHandle {
    /// Plumbs the external addresses `rules` and `virtual_servers` need that are not plumbed
    /// yet (before the engines start using them; see [`external`] for why none are removed
    /// while running).
    pub fn add_external(
        &self,
        rules: &natgate_core::rules::RuleChain,
        virtual_servers: &[natgate_core::vserver::VirtualServerSpec],
    ) -> Result<(), PlumbingError> {
        match self
            .external
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(e) => e.add(rules, virtual_servers),
            None => Ok(()),
        }
    }

    /// Asks every worker to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// What start found: pool, inside address, stale objects removed.
    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Writes every worker's state to the warm-restart snapshot at `path`, while they go on.
    pub fn save(&self, path: &std::path::Path) -> Result<warm_restart::Saved, DaemonError> {
        let mut waiting = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            if w.send(Command::Save { reply }).is_ok() {
                waiting.push(rx);
            }
        }
        let mut state = SavedState::default();
        for rx in waiting {
            state.merge(
                rx.recv_timeout(REQUEST_TIMEOUT)
                    .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))?,
            );
        }
        warm_restart::write(path, state).map_err(|source| DaemonError::Snapshot {
            path: path.to_owned(),
            source,
        })
    }

    /// The gateway's state, in `detail`.
    pub fn snapshot(&self, detail: Detail) -> Result<Snapshot, DaemonError> {
        let mut waiting: Vec<Receiver<WorkerSnapshot>> = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            let detail = detail.clone();
            if w.send(Command::Snapshot { detail, reply }).is_ok() {
                waiting.push(rx);
            }
        }
        let mut total = Snapshot::default();
        for rx in waiting {
            let s = rx
                .recv_timeout(REQUEST_TIMEOUT)
                .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))?;
            total.counters.merge(&s.counters);
            for p in 0..3 {
                total.sessions_by_proto[p] += s.sessions_by_proto[p];
            }
            total.sessions.merge(s.sessions);
            total.portmap.merge(&s.portmap);
            total.mappings.merge(s.mappings);
            merge_usage(&mut total.pools, s.pools);
            merge_port_sets(&mut total.port_sets, s.port_sets);
            if let Some(o) = s.offload {
                let t = total.offload.get_or_insert_default();
                t.carried += o.carried;
                t.capacity += o.capacity;
                t.skipped += o.skipped;
            }
            total.session_count += s.session_count;
            total.mapping_count += s.mapping_count;
            total.held_syns += s.held_syns;
            total.io.merge(&s.io);
            total.now = total.now.max(s.now);
            total.workers += 1;
        }
        total.fast_path = self.fast_path_counters();
        Ok(total)
    }

    /// Applies a new engine config to every worker (check it with
    /// [`natgate_core::engine::check_reload`] first: a worker that refuses leaves the workers
    /// out of step).
    pub fn reload(&self, config: &natgate_core::ValidConfig) -> Result<(), DaemonError> {
        let mut waiting = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            let cmd = Command::Reload {
                config: config.clone(),
                reply,
            };
            if w.send(cmd).is_ok() {
                waiting.push(rx);
            }
        }
        for rx in waiting {
            rx.recv_timeout(REQUEST_TIMEOUT)
                .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))?
                .map_err(DaemonError::Reload)?;
        }
        // The program checks DF packets against the engine's MTUs, which a reload may change.
        let b = &config.get().behavior;
        if let Some(fp) = self
            .fast_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            fp.set_mtus(b.outside_mtu, b.inside_mtu)?;
        }
        Ok(())
    }

    /// The log pipeline's counters; `None` when no sink is configured.
    pub fn log_stats(&self) -> Option<PipelineStats> {
        self.logs.monitor.as_ref().map(PipelineMonitor::stats)
    }

    /// Packets the kernel dropped on natgate's TUN devices (their `tx_dropped`: a queue had no
    /// room because its worker did not read fast enough); `None` without a data plane or if
    /// the kernel does not answer.
    pub fn tun_tx_dropped(&self) -> Option<u64> {
        let mut tuns = self.tuns.lock().unwrap_or_else(PoisonError::into_inner);
        let t = tuns.as_mut()?;
        let mut sum = 0;
        for name in &t.names {
            sum += t.nl.link_tx_dropped(name).ok()?;
        }
        Some(sum)
    }

    /// The fast path's counters, while it runs.
    pub fn fast_path_counters(&self) -> Option<FastPathCounters> {
        let fp = self
            .fast_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fp.as_ref().and_then(|f| f.counters().ok())
    }

    /// The block log behind `whois`, if one is configured.
    pub fn block_log(&self) -> Option<&SharedBlockLog> {
        self.logs.block_log.as_ref()
    }

    /// Who holds `external:port` now, in any worker (`proto`: only that protocol's mappings).
    pub fn whois_live(
        &self,
        external: Ipv4Addr,
        port: u16,
        proto: Option<Protocol>,
    ) -> Result<Vec<LiveHolder>, DaemonError> {
        let mut waiting = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            let cmd = Command::Whois {
                external,
                port,
                proto,
                reply,
            };
            if w.send(cmd).is_ok() {
                waiting.push(rx);
            }
        }
        let mut all = Vec::new();
        for rx in waiting {
            all.extend(
                rx.recv_timeout(REQUEST_TIMEOUT)
                    .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))?,
            );
        }
        Ok(all)
    }

    /// Deletes every session and mapping, or only `subscriber`'s, in every worker; returns
    /// what ended.
    pub fn flush(&self, subscriber: Option<Ipv4Addr>) -> Result<Ended, DaemonError> {
        let mut ended = Ended::default();
        for e in self.ask_every_worker(|reply| Command::Flush { subscriber, reply })? {
            ended += e;
        }
        Ok(ended)
    }

    /// Ends the session (`proto`, `internal`, `remote`) in whichever worker holds it; `None` if
    /// none does (and then nothing changed).
    pub fn delete_session(
        &self,
        proto: Protocol,
        internal: Endpoint,
        remote: Endpoint,
    ) -> Result<Option<Ended>, DaemonError> {
        let answers = self.ask_every_worker(|reply| Command::DeleteSession {
            proto,
            internal,
            remote,
            reply,
        })?;
        let mut ended: Option<Ended> = None;
        for e in answers.into_iter().flatten() {
            *ended.get_or_insert_default() += e;
        }
        Ok(ended)
    }

    /// Deletes the explicit mapping of `internal` for `proto` from whichever worker has it.
    pub fn unmap(
        &self,
        proto: Protocol,
        internal: natgate_core::Endpoint,
    ) -> Result<Option<MappingInfo>, DaemonError> {
        let mut waiting = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            let cmd = Command::Unmap {
                proto,
                internal,
                reply,
            };
            if w.send(cmd).is_ok() {
                waiting.push(rx);
            }
        }
        let mut found = None;
        for rx in waiting {
            let m = rx
                .recv_timeout(REQUEST_TIMEOUT)
                .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))?;
            found = found.or(m);
        }
        Ok(found)
    }

    /// Ends every session the rule `id` made, in every worker (static sessions live in
    /// [`shard::STATIC_OWNER`], but asking all keeps this right whatever the steering), and
    /// returns how many ended.
    pub fn flush_rule(&self, id: natgate_core::rules::RuleId) -> Result<u64, DaemonError> {
        let ended = self.ask_every_worker(|reply| Command::FlushRule { id, reply })?;
        Ok(ended.into_iter().map(|n| n as u64).sum())
    }

    /// Sends every worker the command `ask` makes around a reply channel and collects the
    /// answers (a worker that has stopped is not asked).
    fn ask_every_worker<T>(
        &self,
        ask: impl Fn(SyncSender<T>) -> Command,
    ) -> Result<Vec<T>, DaemonError> {
        let mut waiting = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            if w.send(ask(reply)).is_ok() {
                waiting.push(rx);
            }
        }
        waiting
            .into_iter()
            .map(|rx| {
                rx.recv_timeout(REQUEST_TIMEOUT)
                    .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))
            })
            .collect()
    }
}

fn merge_usage(total: &mut Vec<AddressUsage>, more: Vec<AddressUsage>) {
    for u in more {
        match total.iter_mut().find(|t| t.addr == u.addr) {
            Some(t) => {
                for p in 0..3 {
                    t.in_use[p] += u.in_use[p];
                    t.held_down[p] += u.held_down[p];
                }
                t.subscribers += u.subscribers;
            }
            None => total.push(u),
        }
    }
}

/// Adds a worker's port sets to the total: workers own disjoint sets of an address, so its
/// counts add up.
fn merge_port_sets(total: &mut Vec<PortSetUsage>, more: Vec<PortSetUsage>) {
    for s in more {
        match total
            .iter_mut()
            .find(|t| t.addr == s.addr && t.kind == s.kind)
        {
            Some(t) => {
                t.in_use += s.in_use;
                t.held_down += s.held_down;
                t.free += s.free;
            }
            None => total.push(s),
        }
    }
}

/// A running gateway.
pub struct Daemon {
    handle: DaemonHandle,
    workers: Vec<JoinHandle<Result<(), WorkerError>>>,
    /// Where the workers' states arrive when they stop, and the file they go to.
    save_on_stop: Option<(PathBuf, Receiver<SavedState>)>,
    plumbing: Option<Plumbing>,
    health: Option<JoinHandle<()>>,
    /// The PCP and NAT-PMP socket's thread, when `[port-mapping]` turns one on.
    portmap: Option<JoinHandle<()>>,
    /// The UPnP SSDP and HTTP threads.
    upnp: Vec<JoinHandle<()>>,
    logs: Option<LogPipelineHandle>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("handle", &self.handle)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// A fresh random seed from the OS.
pub fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    // Never all-zero, even if /dev/urandom failed: mix in the clock and pid.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    u64::from_ne_bytes(b) ^ t ^ u64::from(std::process::id()).rotate_left(32)
}

impl Daemon {
    /// Sets up the plumbing and starts the workers. The calling thread must be in the gateway's
    /// network namespace (the workers inherit it). `sink` makes each worker's event sink.
    pub fn start(settings: &Settings, stop: Arc<AtomicBool>) -> Result<Daemon, DaemonError> {
        // Refused before anything is set up: what the machine cannot hold.
        machine::check_memory(settings, machine::MemInfo::read()?)?;
        let (plumbing, queues, mut resolved) = Plumbing::setup(settings)?;
        // What natgate itself will hold is known only once it is set up, so what depends on
        // the rules, or needs a bound on the sessions (the fast path's table, whose entries
        // are allocated as they are inserted), takes the config before that share is known.
        let bound_cfg = engine_config(settings, &resolved)?;
        let mut external = external::ExternalAddresses::new(
            &settings.outside,
            &settings.inside,
            &plumbing.tun_out,
            &resolved.pool,
        )?;
        external.add(&settings.rules, &settings.virtual_servers)?;
        let ownership = shard::Ownership::from_config(bound_cfg.get()).ok_or_else(|| {
            DaemonError::Allocation("the deterministic prefixes describe no map".into())
        })?;
        // Opened here, in the gateway's namespace, for the TUNs' statistics.
        let tuns = TunLinks {
            nl: crate::platform::netlink::Netlink::new().map_err(PlumbingError::from)?,
            names: [plumbing.tun_in.clone(), plumbing.tun_out.clone()],
        };
        let clock = Clock::new();
        let logs = open_logs(settings, &clock)?;
        let n = queues.len();
        let fast_path = start_fast_path(
            settings,
            bound_cfg.get(),
            [&plumbing.tun_in, &plumbing.tun_out],
        )?;
        // Packets the fast path hands to the engine skip the kernel's first routing pass.
        resolved.routed_once = fast_path.is_some();
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        let steering = Arc::new(shard::Steering::new(n, ownership));
        let mailboxes: Arc<[mailbox::Mailbox]> = (0..n)
            .map(|_| mailbox::Mailbox::new())
            .collect::<Result<Vec<_>, _>>()
            .map_err(DaemonError::Mailbox)?
            .into();
        // `max-memory` is the process's: the engines get what natgate does not already hold
        // (the program, the set-up so far, the mailboxes) or will (the workers' buffers).
        resolved.own_memory = machine::resident_bytes()? + n as u64 * worker::BUFFER_BYTES;
        let engine_cfg = engine_config(settings, &resolved)?;
        if settings.limits.max_memory.is_some() {
            tracing::info!(
                own_memory = resolved.own_memory,
                max_sessions = engine_cfg.get().limits.max_sessions,
                "max-memory: natgate itself holds {} bytes; the engines get the rest",
                resolved.own_memory
            );
        }
        // Every engine before any worker starts: running out of memory is an error, and the
        // plumbing goes with `plumbing` when it is returned.
        let new_engines = || -> Result<Vec<Engine<ConfiguredAllocator>>, DaemonError> {
            let mut engines = Vec::with_capacity(n);
            for id in 0..n {
                let alloc = worker_allocator(&engine_cfg, id, n, resolved.nat_ports)?;
                engines.push(Engine::try_with_allocator(
                    crate::config::worker_config(&engine_cfg, id, n)?,
                    alloc,
                    os_seed(),
                )?);
            }
            Ok(engines)
        };
        let mut engines = new_engines()?;
        if let Some(path) = &settings.snapshot {
            let started = std::time::Instant::now();
            match warm_restart::restore(path, &mut engines, &steering, clock.now()) {
                Ok(None) => tracing::info!(path = %path.display(), "no snapshot: a cold start"),
                Ok(Some((r, down))) => tracing::info!(
                    path = %path.display(),
                    sessions = r.sessions,
                    explicit_mappings = r.explicit,
                    held_ports = r.held,
                    held_ports_not_held = r.held_skipped,
                    down_ms = down.as_millis() as u64,
                    ms = started.elapsed().as_millis() as u64,
                    "warm restart: restored the snapshot"
                ),
                Err(why) => {
                    tracing::warn!(
                        path = %path.display(),
                        "snapshot refused, starting empty: {why}"
                    );
                    engines = new_engines()?;
                }
            }
        }
        let (save_tx, save_rx) = mpsc::channel();
        for (id, ((inside, outside), mut engine)) in queues.into_iter().zip(engines).enumerate() {
            let table = match &fast_path {
                Some(fp) => {
                    engine.enable_offload();
                    Some(fp.table().map_err(DaemonError::FastPath)?)
                }
                None => None,
            };
            let (tx, rx) = mpsc::channel();
            senders.push(tx);
            let events: EventSink = match &logs {
                Some(l) => Box::new(PipelineOutput {
                    tx: l.sender.clone(),
                    per_session: settings.log.per_session,
                }),
                None => Box::new(Discard),
            };
            let w = Worker {
                id,
                save_on_stop: settings.snapshot.is_some().then(|| save_tx.clone()),
                engine,
                inside,
                outside,
                clock,
                events,
                stop: stop.clone(),
                commands: rx,
                io: IoCounters::default(),
                steering: steering.clone(),
                mailboxes: mailboxes.clone(),
                fast_path: table,
                portmap: settings.port_mapping.enabled().then(|| {
                    natgate_core::portmap::PortMapServer::new(
                        settings.port_mapping.clone(),
                        clock.now(),
                    )
                }),
            };
            let h = std::thread::Builder::new()
                .name(format!("natgate-w{id}"))
                .spawn(move || w.run())
                .map_err(|e| DaemonError::Thread(e.to_string()))?;
            workers.push(h);
        }
        let (view, logs) = match logs {
            Some(l) => (
                LogView {
                    monitor: Some(l.handle.monitor()),
                    block_log: l.block_log,
                },
                Some(l.handle),
            ),
            None => (LogView::default(), None),
        };
        let pm = &settings.port_mapping;
        let portmap = if pm.pcp || pm.nat_pmp {
            Some(portmap::spawn(
                resolved.inside_address,
                &settings.inside,
                settings.port_mapping.pcp,
                senders.clone(),
                steering.clone(),
                stop.clone(),
            )?)
        } else {
            None
        };
        let upnp = if pm.upnp {
            let started = upnp::spawn(
                resolved.inside_address,
                &settings.inside,
                pm.upnp_port,
                senders.clone(),
                steering.clone(),
                stop.clone(),
            );
            // A port in use is an operator's error, not a reason to leave the workers and the
            // PCP thread running behind the error.
            if started.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            started?
        } else {
            Vec::new()
        };
        let handle = DaemonHandle {
            workers: senders,
            stop: stop.clone(),
            resolved: Arc::new(resolved),
            started: std::time::Instant::now(),
            logs: Arc::new(view),
            external: Arc::new(Mutex::new(Some(external))),
            fast_path: Arc::new(Mutex::new(fast_path)),
            tuns: Arc::new(Mutex::new(Some(tuns))),
        };
        let mut daemon = Daemon {
            handle: handle.clone(),
            workers,
            save_on_stop: settings.snapshot.clone().map(|p| (p, save_rx)),
            plumbing: Some(plumbing),
            logs,
            health: None,
            portmap,
            upnp,
        };
        // On failure, dropping `daemon` stops the workers and removes the plumbing.
        daemon.health = Some(health::spawn(handle, clock, stop)?);
        if let Some(p) = daemon.plumbing.as_mut() {
            p.running();
        }
        Ok(daemon)
    }

    /// The handle for control and metrics.
    pub fn handle(&self) -> DaemonHandle {
        self.handle.clone()
    }

    /// Waits until a stop is asked for or a worker ends; then stops everything and removes
    /// the plumbing. Returns the first error.
    pub fn wait(mut self) -> Result<(), DaemonError> {
        loop {
            if self.handle.stopping() || self.workers.iter().any(|w| w.is_finished()) {
                break;
            }
            std::thread::sleep(worker::MAX_WAIT);
        }
        self.shutdown()
    }

    /// Stops the workers, then removes the plumbing. Idempotent.
    pub fn shutdown(&mut self) -> Result<(), DaemonError> {
        self.handle.stop();
        let mut first: Result<(), DaemonError> = Ok(());
        if let Some(Err(e)) = self.health.take().map(health::stopped) {
            first = Err(e);
        }
        if let Some(p) = self.portmap.take()
            && p.join().is_err()
            && first.is_ok()
        {
            first = Err(DaemonError::Thread(
                "the port-mapping thread panicked".into(),
            ));
        }
        for u in self.upnp.drain(..) {
            if u.join().is_err() && first.is_ok() {
                first = Err(DaemonError::Thread("a UPnP thread panicked".into()));
            }
        }
        for w in self.workers.drain(..) {
            let r = match w.join() {
                Ok(r) => r.map_err(DaemonError::from),
                Err(_) => Err(DaemonError::Thread("a worker panicked".into())),
            };
            if let (Err(e), true) = (r, first.is_ok()) {
                first = Err(e);
            }
        }
        if let Some((path, states)) = self.save_on_stop.take() {
            let mut state = SavedState::default();
            for s in states.try_iter() {
                state.merge(s);
            }
            match warm_restart::write(&path, state) {
                Ok(s) => tracing::info!(
                    path = %path.display(),
                    sessions = s.sessions,
                    explicit_mappings = s.explicit,
                    held_ports = s.held,
                    bytes = s.bytes,
                    ms = s.took.as_millis() as u64,
                    "saved the snapshot for a warm restart"
                ),
                Err(source) => {
                    if first.is_ok() {
                        first = Err(DaemonError::Snapshot { path, source });
                    }
                }
            }
        }
        // Detach the fast path before the plumbing goes: from here every packet takes the
        // kernel's own path, which the plumbing's removal then closes.
        self.handle
            .fast_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The workers dropped their log senders: write what they queued, then stop the logger.
        if let Some(l) = self.logs.take()
            && let Err(source) = l.shutdown()
            && first.is_ok()
        {
            first = Err(DaemonError::Log {
                what: "pipeline",
                source,
            });
        }
        // The workers dropped their TUN queues, so the devices are gone; now the rest.
        let ext = self
            .handle
            .external
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .map_or(Ok(()), external::ExternalAddresses::teardown);
        if let (Err(e), true) = (ext, first.is_ok()) {
            first = Err(e.into());
        }
        if let Some(mut p) = self.plumbing.take()
            && let Err(e) = p.teardown()
            && first.is_ok()
        {
            first = Err(e.into());
        }
        first
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `shutdown` reports errors; here there is nobody to tell.
        let _ = self.shutdown();
    }
}

/// Loads and attaches the fast path as `[dataplane] fast-path` asks, sized for the gateway's
/// sessions, handing what it does not carry to the TUNs `tuns` (inside, outside). `auto` falls
/// back to the slow path alone, saying why in one log line.
fn start_fast_path(
    settings: &Settings,
    cfg: &natgate_core::Config,
    tuns: [&str; 2],
) -> Result<Option<FastPath>, DaemonError> {
    if settings.fast_path == FastPathMode::Off {
        tracing::info!("data path: slow path (TUN) only, as configured");
        return Ok(None);
    }
    if cfg.behavior.clear_df {
        // The program forwards established flows as they came, DF included.
        tracing::info!("data path: slow path (TUN) only: clear-df (lab) needs every packet");
        return Ok(None);
    }
    let index = |name: &str| -> Result<u32, DaemonError> {
        crate::platform::netlink::Netlink::new()
            .and_then(|mut nl| nl.link_index(name))
            .map_err(|e| {
                DaemonError::FastPath(fastpath::FastPathError::Attach {
                    iface: name.to_owned(),
                    why: e.to_string(),
                })
            })
    };
    // `auto` means TC: on veth, where it can be measured here, XDP costs more (docs/dataplane.md).
    let hook = match settings.fast_path {
        FastPathMode::Xdp => fastpath::Hook::Xdp,
        _ => fastpath::Hook::Tc,
    };
    let side = |name: &str, mtu: u16, tun: &str| -> Result<fastpath::Side, DaemonError> {
        // Only the XDP program reads it (the TC one has the kernel's verdict on the address).
        let mac =
            match crate::platform::netlink::Netlink::new().and_then(|mut nl| nl.link_mac(name)) {
                Ok(mac) => mac,
                Err(_) if hook == fastpath::Hook::Tc => [0; 6],
                Err(e) => {
                    return Err(DaemonError::FastPath(fastpath::FastPathError::Attach {
                        iface: name.to_owned(),
                        why: format!("no Ethernet address for XDP: {e}"),
                    }));
                }
            };
        Ok(fastpath::Side {
            name: name.to_owned(),
            ifindex: index(name)?,
            mtu,
            tun_ifindex: index(tun)?,
            mac,
        })
    };
    // The MTU a side's program checks is that of the way out: the other side's.
    let inside = side(&settings.inside, cfg.behavior.outside_mtu, tuns[0])?;
    let outside = side(&settings.outside, cfg.behavior.inside_mtu, tuns[1])?;
    // `max-sessions` is the gateway's, split across the workers: each session a flow at most.
    let flows = cfg.limits.max_sessions;
    match FastPath::attach(&inside, &outside, flows, hook) {
        Ok(fp) => {
            tracing::info!(
                "data path: in-kernel fast path ({}) on {} and {} for established flows, slow path (TUN) for the rest",
                match hook {
                    fastpath::Hook::Tc => "TC",
                    fastpath::Hook::Xdp => "XDP, TC behind it",
                },
                inside.name,
                outside.name
            );
            Ok(Some(fp))
        }
        Err(e) if settings.fast_path == FastPathMode::Auto => {
            tracing::warn!("data path: slow path (TUN) only: {e}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The engine config for `settings` on this machine (what start found).
pub fn engine_config(
    settings: &Settings,
    resolved: &Resolved,
) -> Result<natgate_core::ValidConfig, natgate_core::ConfigError> {
    let mut cfg = settings.clone();
    if resolved.routed_once && !settings.file.behavior.sets_ttl() {
        // The fast path hands the engine its packets without the kernel's first routing
        // pass, so the kernel's one pass out is the crossing's one hop.
        cfg.behavior.ttl = natgate_core::config::TtlHandling::Keep;
    }
    if resolved.nat_ports.is_some() {
        // Home gateway: internal ports below 1024 cannot keep their range on a shared address
        // whose low ports belong to the host (RFC 4787 REQ-3a is a SHOULD).
        cfg.behavior.port_range_preservation = false;
    }
    if cfg.inside_networks.is_empty() {
        // Default: subscribers are on the inside link.
        cfg.inside_networks = resolved.inside_subnets.clone();
    }
    cfg.engine_config(
        resolved.pool.clone(),
        resolved.inside_address,
        resolved.own_memory,
    )
}

/// The allocator of worker `id` among `n`. Dynamic allocation cannot be split by a formula
/// over the whole pool, so each worker's dynamic allocator withholds the other workers' 64-port
/// blocks ([`shard::block_owner`]) and, on a home gateway, the host's own ports.
fn worker_allocator(
    cfg: &natgate_core::ValidConfig,
    id: usize,
    n: usize,
    nat_ports: Option<(u16, u16)>,
) -> Result<ConfiguredAllocator, DaemonError> {
    if matches!(cfg.get().allocation, Allocation::Dynamic) {
        let mut alloc =
            DynamicAllocator::new(&cfg.get().pool, AllocSettings::from_config(cfg.get()));
        if let Some((first, last)) = nat_ports {
            // On the host's own address, only the NAT's range (ICMP identifiers are not the
            // host's), with random ports drawn over that range, not over 1024-65535.
            alloc.limit_ports(PortRange { first, last });
        }
        if n > 1 {
            // Each worker hands out only its own port blocks.
            alloc.withhold_ports(|_, port| shard::block_owner(port, n) == id);
        }
        return Ok(ConfiguredAllocator::Dynamic(alloc));
    }
    let share = shard::share(id, n)
        .ok_or_else(|| DaemonError::Allocation(format!("worker {id} of {n}")))?;
    ConfiguredAllocator::from_config(cfg, share)
        .ok_or_else(|| DaemonError::Allocation("the deterministic prefixes describe no map".into()))
}

/// The running log pipeline, as `start` hands it out.
struct Logs {
    sender: LogSender,
    handle: LogPipelineHandle,
    block_log: Option<SharedBlockLog>,
}

/// Events the logger thread records before flushing the sinks (one fsync per batch when
/// durable, one IPFIX message per ~30 records).
const LOG_BATCH: usize = 1024;

fn log_error(what: &'static str) -> impl FnOnce(LogError) -> DaemonError {
    move |source| DaemonError::Log { what, source }
}

/// The JSON-lines sink of `[log.file]`, if configured, with its rotation and `[log] durable`.
fn open_json_lines(
    log: &crate::config::LogSettings,
    time: TimeBase,
) -> Result<Option<crate::observability::eventlog::EventSink>, DaemonError> {
    use crate::observability::eventlog::{
        Destination, EventLogOptions, EventSink as JsonLines, Rotation,
    };
    let Some(f) = &log.file else {
        return Ok(None);
    };
    let opts = EventLogOptions {
        log_destinations: log.log_destinations,
        durable: log.durable,
    };
    match f.path.as_str() {
        "stderr" => Ok(JsonLines::with_writer(std::io::stderr(), time, opts)),
        "stdout" => JsonLines::open(&Destination::Stdout, time, opts),
        path => JsonLines::open(
            &Destination::File {
                path: path.into(),
                rotation: Rotation {
                    max_bytes: f.max_bytes,
                    keep: f.keep,
                },
            },
            time,
            opts,
        ),
    }
    .map(Some)
    .map_err(|source| DaemonError::EventLog {
        path: f.path.clone(),
        source,
    })
}

/// The block log of `[log.block-log]`, if configured, with `[log] durable`.
fn block_log_config(settings: &Settings) -> Option<BlockLogConfig> {
    let b = settings.log.block_log.as_ref()?;
    Some(BlockLogConfig {
        path: b.path.clone(),
        max_intervals: b.max_intervals,
        // Without blocks, a mapping's single port is the unit of allocation.
        mappings: matches!(settings.allocation, Allocation::Dynamic),
        durable: settings.log.durable,
    })
}

/// Opens the configured sinks and starts the pipeline; `None` when no sink is configured (events
/// are then only counted by the engines).
fn open_logs(settings: &Settings, clock: &Clock) -> Result<Option<Logs>, DaemonError> {
    use crate::observability::logsink::ipfix::{IpfixConfig, IpfixExporter};
    use crate::observability::logsink::syslog::{SyslogConfig, SyslogSink};
    let log = &settings.log;
    if !log.any_sink() {
        return Ok(None);
    }
    let time = TimeBase::new(clock.now(), std::time::SystemTime::now());
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(out) = open_json_lines(log, time)? {
        sinks.push(Box::new(out));
    }
    if let Some(s) = &log.syslog {
        let config = SyslogConfig {
            target: s.target.clone(),
            facility: s.facility,
            hostname: s.hostname.clone().unwrap_or_else(host_name),
            procid: std::process::id(),
            enterprise: s.enterprise,
            log_destinations: log.log_destinations,
        };
        sinks.push(Box::new(
            SyslogSink::open(config, time).map_err(log_error("syslog"))?,
        ));
    }
    if let Some(x) = &log.ipfix {
        let config = IpfixConfig {
            collector: x.collector,
            observation_domain: x.observation_domain,
            template_refresh: Duration::from_secs(u64::from(x.template_refresh)),
            max_message: x.max_message,
            log_destinations: log.log_destinations,
        };
        sinks.push(Box::new(
            IpfixExporter::open(config, time).map_err(log_error("ipfix"))?,
        ));
    }
    let block_log = match block_log_config(settings) {
        Some(config) => {
            let shared =
                SharedBlockLog::new(BlockLog::open(config, time).map_err(log_error("block-log"))?);
            sinks.push(Box::new(shared.clone()));
            Some(shared)
        }
        None => None,
    };
    let (sender, handle) = LogPipeline::start(PipelineConfig {
        capacity: log.queue,
        max_batch: LOG_BATCH,
        sinks,
    })
    .map_err(log_error("pipeline"))?;
    Ok(Some(Logs {
        sender,
        handle,
        block_log,
    }))
}

/// The machine's host name for syslog's HOSTNAME, or empty (sent as the NILVALUE).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A worker's end of the log pipeline: never blocks; a full queue loses the event and the
/// pipeline counts it.
struct PipelineOutput {
    tx: LogSender,
    /// Whether session and mapping records are wanted; without them only block records and
    /// failures are queued (RFC 6888 REQ-14: one record per block, not per session).
    per_session: bool,
}

impl EventOutput for PipelineOutput {
    fn record(&mut self, e: &Event) {
        let per_session = matches!(
            e,
            Event::MappingCreated { .. }
                | Event::MappingDeleted { .. }
                | Event::SessionCreated { .. }
                | Event::SessionDeleted { .. }
        );
        if self.per_session || !per_session {
            // A refusal is counted by the pipeline (`lost`).
            let _ = self.tx.send(*e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::logsink::Lost;
    use natgate_core::alloc::SubscriberId;
    use natgate_core::{DropReason, Endpoint, Instant};
    use std::sync::Mutex;

    #[test]
    fn session_and_mapping_limits_are_the_gateways_split_across_workers() {
        use crate::config::{worker_config, worker_share};
        for (total, n) in [(3000u32, 2usize), (7, 3), (5, 5), (1 << 20, 64), (65, 64)] {
            let shares: Vec<u32> = (0..n).map(|id| worker_share(total, id, n)).collect();
            assert_eq!(
                shares.iter().map(|s| u64::from(*s)).sum::<u64>(),
                u64::from(total)
            );
            let (lo, hi) = (shares.iter().min(), shares.iter().max());
            assert!(hi.zip(lo).is_some_and(|(h, l)| h - l <= 1), "{shares:?}");
        }
        let text = format!(
            "{}\n[tun]\nqueues = 2\n\n[limits]\nmax-sessions = 3001\nmax-mappings = 3000\n",
            MIN
        );
        let s = Settings::parse(&text).expect("valid");
        let cfg = s.stand_in_engine_config().expect("valid");
        let per: Vec<_> = (0..2)
            .map(|id| worker_config(&cfg, id, 2).expect("valid").get().limits)
            .collect();
        assert_eq!((per[0].max_sessions, per[1].max_sessions), (1501, 1500));
        assert_eq!((per[0].max_mappings, per[1].max_mappings), (1500, 1500));
        // The global answer rate (default 1000 a second, 1000 at once) is the gateway's too.
        assert_eq!(per[0].global_answer_rate + per[1].global_answer_rate, 1000);
        assert_eq!(
            per[0].global_answer_burst + per[1].global_answer_burst,
            1000
        );
        let few = format!(
            "{}\n[tun]\nqueues = 4\n\n[limits]\nmax-sessions = 3\nmax-mappings = 3\n",
            MIN
        );
        let e = Settings::parse(&few)
            .expect_err("fewer than one per worker")
            .to_string();
        assert!(e.contains("max-sessions") && e.contains("line"), "{e}");
    }

    /// Keeps what reaches it.
    struct Keep(Arc<Mutex<Vec<Event>>>);

    impl Sink for Keep {
        fn name(&self) -> &'static str {
            "test"
        }
        fn record(&mut self, ev: &Event) -> Result<(), Lost> {
            self.0.lock().expect("lock").push(*ev);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), Lost> {
            Ok(())
        }
    }

    fn events() -> Vec<Event> {
        let at = Instant::from_secs(1);
        let internal = Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000);
        let external = Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 2000);
        let remote = Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 53);
        let proto = Protocol::Udp;
        vec![
            Event::PortBlockAllocated {
                at,
                subscriber: SubscriberId::Ipv4(internal.addr),
                external: external.addr,
                ports: PortRange {
                    first: 1536,
                    last: 2047,
                },
            },
            Event::MappingCreated {
                at,
                proto,
                internal,
                external,
            },
            Event::SessionCreated {
                at,
                proto,
                internal,
                external,
                remote,
                origin: natgate_core::SessionOrigin::Dynamic,
            },
            Event::MappingFailed {
                at,
                proto,
                internal,
                remote,
                reason: DropReason::SubscriberSessionLimit,
            },
        ]
    }

    fn through(per_session: bool) -> (Vec<Event>, PipelineStats) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (sender, handle) = LogPipeline::start(PipelineConfig {
            capacity: 64,
            max_batch: 16,
            sinks: vec![Box::new(Keep(kept.clone()))],
        })
        .expect("start");
        let mut out = PipelineOutput {
            tx: sender,
            per_session,
        };
        for e in events() {
            out.record(&e);
        }
        drop(out);
        let stats = handle.shutdown().expect("shutdown");
        let got = kept.lock().expect("lock").clone();
        (got, stats)
    }

    #[test]
    fn block_only_logging_keeps_blocks_and_failures_and_drops_per_session_records() {
        let (all, stats) = through(true);
        assert_eq!(all, events());
        assert_eq!(stats.lost, 0);
        let (blocks, stats) = through(false);
        let e = events();
        assert_eq!(
            blocks,
            vec![e[0], e[3]],
            "RFC 6888 REQ-14: one record per block"
        );
        assert_eq!(
            (stats.queued, stats.lost),
            (2, 0),
            "filtered before the queue"
        );
    }

    const MIN: &str = "[interfaces]\ninside = \"lan0\"\noutside = \"wan0\"\n\n\
                       [pool]\naddresses = [\"198.51.100.1\"]\n";

    /// `[log] durable` and `[log.file]`'s rotation reach the JSON-lines sink the daemon opens,
    /// and the file the pipeline writes rotates at the configured size.
    #[test]
    fn json_lines_rotation_and_durable_come_from_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let text = format!(
            "{MIN}\n[log]\ndurable = true\n\n[log.file]\npath = {:?}\nmax-bytes = 400\nkeep = 2\n",
            path.display().to_string()
        );
        let settings = Settings::parse(&text).expect("valid");
        let clock = Clock::new();
        let time = TimeBase::new(clock.now(), std::time::SystemTime::now());
        let sink = open_json_lines(&settings.log, time)
            .expect("opens")
            .expect("configured");
        assert!(sink.options().durable, "durable = true: sync per batch");
        let with_blocks = format!(
            "{text}\n[log.block-log]\npath = {:?}\n",
            dir.path().join("blocks").display().to_string()
        );
        let b =
            block_log_config(&Settings::parse(&with_blocks).expect("valid")).expect("configured");
        assert!(
            b.durable && b.mappings,
            "durable; dynamic allocation logs mappings"
        );
        assert_eq!(
            sink.rotation(),
            Some(crate::observability::eventlog::Rotation {
                max_bytes: 400,
                keep: 2
            })
        );
        drop(sink);

        let logs = open_logs(&settings, &clock)
            .expect("opens")
            .expect("a sink is configured");
        let n = 40;
        for e in events().iter().cycle().take(n) {
            assert!(logs.sender.send(*e));
        }
        let stats = logs.handle.shutdown().expect("shutdown");
        assert_eq!((stats.written, stats.lost), (n as u64, 0));
        let lines = |p: &std::path::Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            assert!(text.len() <= 400, "{}: {} bytes", p.display(), text.len());
            text.lines().count()
        };
        let numbered = |k: u32| dir.path().join(format!("events.jsonl.{k}"));
        assert!(numbered(1).exists() && numbered(2).exists(), "rotated");
        assert!(!numbered(3).exists(), "keep = 2");
        let kept = lines(&path) + lines(&numbered(1)) + lines(&numbered(2));
        assert!(kept > 0 && kept < n, "older files were dropped: {kept}");
    }

    /// Blocks in its first `record` until the test lets it go, so that the queue fills.
    struct Stuck {
        entered: Option<mpsc::Sender<()>>,
        gate: Receiver<()>,
    }

    impl Sink for Stuck {
        fn name(&self) -> &'static str {
            "test"
        }
        fn record(&mut self, _: &Event) -> Result<(), Lost> {
            if let Some(tx) = self.entered.take() {
                let _ = tx.send(());
                let _ = self.gate.recv_timeout(Duration::from_secs(10));
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<(), Lost> {
            Ok(())
        }
    }

    /// A worker's log output never waits for a full queue, and every event it loses is in
    /// `ctl stats` and the metrics, through the same control service the daemon runs.
    #[test]
    fn lost_log_events_reach_ctl_stats_and_metrics_and_the_worker_never_waits() {
        use crate::control::{ControlHandler, Request, Response};
        let (open, gate) = mpsc::channel();
        let (entered_tx, entered) = mpsc::channel();
        let (sender, pipeline) = LogPipeline::start(PipelineConfig {
            capacity: 2,
            max_batch: 16,
            sinks: vec![Box::new(Stuck {
                entered: Some(entered_tx),
                gate,
            })],
        })
        .expect("start");
        let mut out = PipelineOutput {
            tx: sender,
            per_session: true,
        };
        let e = events()[0];
        out.record(&e);
        entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the logger took the first event and is stuck");
        // On another thread, so that a blocking send fails the test instead of hanging it.
        let (done_tx, done) = mpsc::channel();
        let worker = std::thread::spawn(move || {
            for _ in 0..10 {
                out.record(&e);
            }
            let _ = done_tx.send(());
        });
        done.recv_timeout(Duration::from_secs(5))
            .expect("the worker's sends did not wait for the stuck logger");
        worker.join().expect("worker");

        let handle = DaemonHandle {
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            resolved: Arc::new(Resolved {
                pool: vec![Ipv4Addr::new(198, 51, 100, 1)],
                inside_address: Ipv4Addr::new(100, 64, 0, 1),
                nat_ports: None,
                inside_subnets: Vec::new(),
                stale_removed: 0,
                own_memory: 0,
                routed_once: false,
            }),
            started: std::time::Instant::now(),
            logs: Arc::new(LogView {
                monitor: Some(pipeline.monitor()),
                block_log: None,
            }),
            external: Arc::default(),
            fast_path: Arc::default(),
            tuns: Arc::default(),
        };
        let service =
            control::ControlService::new(handle, Settings::parse(MIN).expect("valid"), None, None);
        // 2 queued behind the stuck one, 8 lost.
        let Ok(Response::Stats(stats)) = service.handle(Request::Stats) else {
            panic!("stats");
        };
        assert_eq!(stats.log_events_lost, 8);
        let text = service.metrics().render();
        assert!(
            text.lines().any(|l| l == "natgate_log_events_lost_total 8"),
            "{text}"
        );
        open.send(()).expect("open the gate");
        let end = pipeline.shutdown().expect("shutdown");
        assert_eq!((end.written, end.lost), (3, 8));
    }
}
