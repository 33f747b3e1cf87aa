//! The daemon's side of the control socket: [`ControlService`] answers `natgate ctl` requests
//! from [`DaemonHandle`] snapshots, and the metrics endpoint's snapshot function.
//!
//! `reload` is transactional: the new file is read and validated, the settings that size the
//! tables or the plumbing must be unchanged, and the engines' own check
//! ([`check_reload`]) must pass, all before any worker is touched; a refused reload changes
//! nothing and its error names the key. Rule changes (`ctl rule ...`) take the same path with
//! the running chain changed; virtual-server changes (`ctl vserver ...`) are checked against
//! the running specs and then reach every worker's copy ([`super::vservers`]); creating or
//! deleting a whole virtual server takes the reload path, as rule changes do.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use natgate_core::engine::{Ended, NoSuchSession, check_reload};
use natgate_core::{Endpoint, Protocol};

use natgate_core::rules::RuleId;
use natgate_core::vserver::VirtualServerSpec;

use super::vservers::check_change;
use super::{DaemonHandle, Detail, Snapshot, engine_config};
use crate::config::Settings;
use crate::control::protocol::{
    DataplaneDrop, DropList, FastPathStats, FlushQuery, FlushResult, LogLevel, LogLevelArgs,
    LogSinkLoss, MappingRow, PerProtocol, PoolList, PoolRow, RealServerOp, ReloadResult,
    RuleChange, RuleList, SaveResult, SessionChange, StatsInfo, StatusInfo, VirtualServerChange,
    VirtualServerList, VirtualServerRef, WhoisList, WhoisQuery, WhoisRow,
};
use crate::control::{ControlError, ControlHandler, Request, Response};
use crate::observability::logsink::whois::WhoisSource;
use crate::observability::metrics::MetricsSnapshot;

/// Sets the log level; returns an error message if it cannot.
pub type LogLevelFn = Box<dyn Fn(LogLevel) -> Result<(), String> + Send + Sync>;

/// Answers control requests for a running daemon.
pub struct ControlService {
    handle: DaemonHandle,
    config_path: Option<PathBuf>,
    current: Mutex<Settings>,
    log_level: Option<LogLevelFn>,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ControlError {
    ControlError::Unavailable(e.to_string())
}

impl ControlService {
    /// A service for the daemon behind `handle`, started with `settings` read from
    /// `config_path` (which `reload` reads again).
    pub fn new(
        handle: DaemonHandle,
        settings: Settings,
        config_path: Option<PathBuf>,
        log_level: Option<LogLevelFn>,
    ) -> Self {
        ControlService {
            handle,
            config_path,
            current: Mutex::new(settings),
            log_level,
        }
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self, detail: Detail) -> Result<Snapshot, ControlError> {
        self.handle.snapshot(detail).map_err(unavailable)
    }

    fn pools(&self, snap: &Snapshot) -> PoolList {
        let preserve = self.settings().behavior.port_range_preservation
            && self.handle.resolved().nat_ports.is_none();
        let capacity = match self.handle.resolved().nat_ports {
            Some((lo, hi)) => {
                let ports = u64::from(hi) - u64::from(lo) + 1;
                PerProtocol {
                    icmp: 65536,
                    tcp: ports,
                    udp: ports,
                }
            }
            None => PerProtocol::port_capacity(preserve),
        };
        let mut list = PoolList::default();
        list.merge(PoolList {
            addresses: snap
                .pools
                .iter()
                .map(|u| match snap.port_sets.iter().find(|s| s.addr == u.addr) {
                    // Only ports inside a block or range can be handed out.
                    Some(sets) => PoolRow::with_port_sets(u, sets),
                    None => PoolRow::new(u, capacity),
                })
                .collect(),
        });
        list
    }

    fn reload(&self) -> Result<Response, ControlError> {
        let path = self.config_path.clone().ok_or_else(|| {
            ControlError::Rejected("natgate was started without a config file".into())
        })?;
        let new = Settings::load(&path).map_err(|e| ControlError::Rejected(e.to_string()))?;
        let mut cur = self.settings();
        let fixed: [(&str, bool); 12] = [
            (
                "interfaces",
                new.inside == cur.inside
                    && new.outside == cur.outside
                    && new.inside_address == cur.inside_address,
            ),
            ("pool", new.pool == cur.pool),
            (
                "tun",
                new.tun_name == cur.tun_name
                    && new.rule_priority == cur.rule_priority
                    && new.table == cur.table,
            ),
            ("tun.queues", new.queues == cur.queues),
            ("dataplane.fast-path", new.fast_path == cur.fast_path),
            ("limits", new.limits == cur.limits),
            ("control", new.control_socket == cur.control_socket),
            ("metrics", new.metrics_listen == cur.metrics_listen),
            ("allocation", new.allocation == cur.allocation),
            ("log", new.log == cur.log),
            // The server socket and each worker's server are set up at start; the mappings
            // themselves live in the engines and are kept across a reload.
            ("port-mapping", new.port_mapping == cur.port_mapping),
            // The file the state goes to on stop was fixed at start, with the one it came from.
            ("state", new.snapshot == cur.snapshot),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(ControlError::Rejected(format!(
                "{key} cannot change while running; restart natgate to change it"
            )));
        }
        // The file wins over run-time changes: rules and real servers changed with `ctl` since
        // the last load are replaced by the file's (`ctl rules --toml` writes them out first).
        self.apply(&mut cur, new)?;
        tracing::info!(path = %path.display(), "config reloaded");
        Ok(Response::Reloaded(ReloadResult { config_path: path }))
    }

    /// The one transactional path of `reload` and of rule changes: the new engine config is
    /// built and validated and the engines' own check passes before anything changes; the
    /// external addresses it needs are plumbed; then every worker applies it. A refusal
    /// changes nothing.
    fn apply(&self, cur: &mut Settings, new: Settings) -> Result<(), ControlError> {
        let resolved = self.handle.resolved();
        let old_cfg =
            engine_config(cur, resolved).map_err(|e| ControlError::Internal(e.to_string()))?;
        let new_cfg =
            engine_config(&new, resolved).map_err(|e| ControlError::Rejected(e.to_string()))?;
        check_reload(&old_cfg.get().behavior, &new_cfg.get().behavior)
            .map_err(|e| ControlError::Rejected(e.to_string()))?;
        self.handle
            .add_external(&new.rules, &new.virtual_servers)
            .map_err(unavailable)?;
        self.handle.reload(&new_cfg).map_err(unavailable)?;
        *cur = new;
        Ok(())
    }

    fn rule_list(cur: &Settings, changed: Option<RuleId>) -> RuleList {
        RuleList {
            changed,
            rules: cur.rules.iter().copied().collect(),
            flushed: None,
            virtual_servers: cur.virtual_servers.clone(),
        }
    }

    /// `rule`: the running chain with one change, applied like a reload.
    fn change_rule(&self, change: RuleChange) -> Result<Response, ControlError> {
        let rejected = |e: natgate_core::rules::RuleError| ControlError::Rejected(e.to_string());
        let mut cur = self.settings();
        let mut new = cur.clone();
        let mut flush = false;
        let (op, id) = match change {
            RuleChange::Insert { id, rule } => {
                new.rules.insert(id, rule).map_err(rejected)?;
                ("inserted", id)
            }
            RuleChange::Append { rule } => ("appended", new.rules.append(rule).map_err(rejected)?),
            RuleChange::Delete { id, flush: f } => {
                new.rules.delete(id).map_err(rejected)?;
                flush = f;
                ("deleted", id)
            }
        };
        self.apply(&mut cur, new)?;
        tracing::info!(rule = %id, rules = cur.rules.len(), "static NAT rule {op}");
        let mut list = Self::rule_list(&cur, Some(id));
        if flush {
            // After the delete is applied everywhere, so no new session of the rule can start
            // between the flush and the delete.
            let ended = self.handle.flush_rule(id).map_err(unavailable)?;
            tracing::info!(rule = %id, sessions = ended, "sessions of deleted rule ended");
            list.flushed = Some(ended);
        }
        Ok(Response::RuleChanged(list))
    }

    /// `vserver`: one change to one real server, checked against the running specs, then
    /// applied to every worker's copy.
    fn change_virtual_server(&self, change: VirtualServerChange) -> Result<Response, ControlError> {
        let mut cur = self.settings();
        let vs = change.virtual_server;
        let connections = if change.op == RealServerOp::Remove {
            let target = std::net::SocketAddrV4::new(
                change.real_server.address,
                change.real_server.port_or(vs.address.port()),
            );
            let list = self.virtual_server_row(&vs)?;
            list.virtual_servers
                .iter()
                .flat_map(|v| &v.real_servers)
                .filter(|r| r.target == target)
                .map(|r| r.connections)
                .sum()
        } else {
            0
        };
        let specs = check_change(&cur.virtual_servers, &change, connections)
            .map_err(ControlError::Rejected)?;
        self.handle
            .change_virtual_server(&change)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        cur.virtual_servers = specs;
        tracing::info!(
            virtual_server = %vs,
            real_server = %change.real_server,
            op = change.op.name(),
            "virtual server changed"
        );
        let list = self.virtual_server_row(&vs)?;
        Ok(Response::VirtualServerChanged(list))
    }

    /// `vserver-create`: the running virtual servers and one more, applied like a reload (the
    /// whole config is checked first: a clash with a rule, another virtual server or the
    /// pool's ports is refused and changes nothing).
    fn create_virtual_server(&self, spec: VirtualServerSpec) -> Result<Response, ControlError> {
        let which = VirtualServerRef {
            protocol: spec.protocol,
            address: SocketAddrV4::new(spec.address, spec.port),
        };
        let mut cur = self.settings();
        if cur
            .virtual_servers
            .iter()
            .any(|v| same_virtual_server(v, &which))
        {
            return Err(ControlError::Rejected(format!(
                "virtual server {which} exists"
            )));
        }
        let mut new = cur.clone();
        new.virtual_servers.push(spec);
        self.apply(&mut cur, new)?;
        tracing::info!(virtual_server = %which, "virtual server created");
        Ok(Response::VirtualServerCreated(
            self.virtual_server_row(&which)?,
        ))
    }

    /// `vserver-delete`: the running virtual servers but one, applied like a reload. Its
    /// connections go the way a reload that drops it from the file sends them.
    fn delete_virtual_server(&self, which: VirtualServerRef) -> Result<Response, ControlError> {
        let mut cur = self.settings();
        if !cur
            .virtual_servers
            .iter()
            .any(|v| same_virtual_server(v, &which))
        {
            return Err(ControlError::Rejected(format!("no virtual server {which}")));
        }
        let last = self.virtual_server_row(&which)?;
        let mut new = cur.clone();
        new.virtual_servers
            .retain(|v| !same_virtual_server(v, &which));
        self.apply(&mut cur, new)?;
        tracing::info!(virtual_server = %which, "virtual server deleted");
        Ok(Response::VirtualServerDeleted(last))
    }

    /// The running state of one virtual server, as `vservers` shows it.
    fn virtual_server_row(
        &self,
        which: &VirtualServerRef,
    ) -> Result<VirtualServerList, ControlError> {
        let all = self.handle.virtual_servers().map_err(unavailable)?;
        Ok(VirtualServerList {
            virtual_servers: all
                .virtual_servers
                .into_iter()
                .filter(|v| v.protocol == which.protocol && v.address == which.address)
                .collect(),
        })
    }

    /// `whois`: the engines' live state (only when asked about now), then the deterministic
    /// formula (RFC 7422), then the block log; every row says which of them answered.
    fn whois(&self, q: WhoisQuery) -> Result<Response, ControlError> {
        let row = |subscriber, ports: natgate_core::alloc::PortRange, proto, source| WhoisRow {
            subscriber,
            external: q.address,
            port_start: ports.first,
            port_end: ports.last,
            proto,
            since_ms: None,
            until_ms: None,
            source,
        };
        let mut answers: Vec<WhoisRow> = Vec::new();
        if q.at_ms.is_none() {
            let live = self
                .handle
                .whois_live(q.address, q.port, q.proto)
                .map_err(unavailable)?;
            answers.extend(
                live.into_iter()
                    .map(|h| row(h.subscriber, h.ports, h.proto, WhoisSource::Live)),
            );
        }
        if answers.is_empty()
            && let natgate_core::config::Allocation::Deterministic(spec) =
                self.settings().allocation
            && let Some(map) = natgate_core::alloc::DeterministicMap::from_spec(&spec)
            && let Some(subscriber) = map.reverse(q.address, q.port)
            && let Some((_, range)) = map.forward(subscriber)
        {
            let ports = natgate_core::alloc::PortRange {
                first: *range.start(),
                last: *range.end(),
            };
            answers.push(row(subscriber, ports, None, WhoisSource::Deterministic));
        }
        if answers.is_empty()
            && let Some(log) = self.handle.block_log()
        {
            let at = q.at_ms.map_or_else(std::time::SystemTime::now, |ms| {
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
            });
            let found = log
                .whois(q.address, q.port, q.proto, at)
                .map_err(|e| ControlError::Internal(e.to_string()))?;
            answers.extend(found.iter().map(WhoisRow::from));
        }
        Ok(Response::Whois(WhoisList { answers }))
    }

    /// Fills in what is counted outside the engines: the log pipeline and its sinks, the
    /// fast path, and the data plane's own losses (the kernel's drops on the TUNs, the writes
    /// it refused, and packets a full mailbox kept from the worker that owns them).
    fn outside_the_engines(&self, snap: &Snapshot, stats: &mut StatsInfo) {
        if let Some(log) = self.handle.log_stats() {
            stats.log_events_lost = log.lost;
            stats.log_sink_losses = log
                .sink_losses
                .iter()
                .map(|l| LogSinkLoss {
                    sink: l.sink.to_owned(),
                    reason: l.reason.name().to_owned(),
                    events: l.events,
                })
                .collect();
        }
        stats.fast_path = fast_path_stats(snap);
        let tun = self.handle.tun_tx_dropped();
        stats.dataplane_drops = [
            ("tun_tx_dropped", tun),
            ("tun_write_failed", Some(snap.io.tx_errors)),
            ("steer_queue_full", Some(snap.io.steer_dropped)),
        ]
        .into_iter()
        .filter_map(|(reason, n)| {
            n.map(|packets| DataplaneDrop {
                reason: reason.to_owned(),
                packets,
            })
        })
        .collect();
    }

    /// What the metrics endpoint reports; an empty snapshot if the workers do not answer.
    pub fn metrics(&self) -> MetricsSnapshot {
        let Ok(snap) = self.snapshot(Detail::Counts) else {
            return MetricsSnapshot::default();
        };
        let mut m = MetricsSnapshot::from_counters([&snap.counters]);
        self.outside_the_engines(&snap, &mut m.stats);
        for p in Protocol::ALL {
            *m.sessions.get_mut(p) = snap.sessions_by_proto[p.index()];
        }
        m.mappings = snap.mapping_count as u64;
        m.pools = self.pools(&snap).addresses;
        m.portmap = snap.portmap.clone();
        m
    }
}

impl ControlHandler for ControlService {
    fn handle(&self, req: Request) -> Result<Response, ControlError> {
        match req {
            Request::Status => {
                let snap = self.snapshot(Detail::Summary)?;
                let s = self.settings();
                Ok(Response::Status(StatusInfo {
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    uptime_secs: self.handle.uptime().as_secs(),
                    config_path: self.config_path.clone(),
                    preset: Some(
                        s.file
                            .behavior
                            .preset
                            .unwrap_or(natgate_core::Preset::Rfc6888Cgn)
                            .name()
                            .to_owned(),
                    ),
                    workers: self.handle.workers() as u32,
                    pool: self.handle.resolved().pool.clone(),
                    sessions: snap.session_count as u64,
                    mappings: snap.mapping_count as u64,
                }))
            }
            Request::Sessions(q) => {
                let mut list = self.snapshot(Detail::Sessions(q.clone()))?.sessions;
                list.finish(&q);
                Ok(Response::Sessions(list))
            }
            Request::Mappings(q) => {
                let mut list = self.snapshot(Detail::Mappings(q.clone()))?.mappings;
                list.finish(&q);
                Ok(Response::Mappings(list))
            }
            Request::Pools => {
                let snap = self.snapshot(Detail::Summary)?;
                Ok(Response::Pools(self.pools(&snap)))
            }
            Request::Stats => {
                let snap = self.snapshot(Detail::Summary)?;
                let mut stats = StatsInfo::from_counters([&snap.counters]);
                self.outside_the_engines(&snap, &mut stats);
                Ok(Response::Stats(Box::new(stats)))
            }
            Request::Drops(q) => {
                let snap = self.snapshot(Detail::Summary)?;
                Ok(Response::Drops(DropList::from_counters(
                    [&snap.counters],
                    &q,
                )))
            }
            Request::Flush(FlushQuery { subscriber }) => {
                let ended = self.handle.flush(subscriber).map_err(unavailable)?;
                // Said in the diagnostics too: the translation log records each session's end
                // but not that an operator asked for it.
                tracing::info!(
                    subscriber = subscriber.map(tracing::field::display),
                    sessions = ended.sessions,
                    mappings = ended.mappings,
                    "flushed by the operator"
                );
                Ok(Response::Flushed(ended_result(ended)))
            }
            Request::Session(SessionChange::Delete {
                proto,
                internal,
                remote,
            }) => {
                let ep = |a: std::net::SocketAddrV4| Endpoint::new(*a.ip(), a.port());
                let (internal, remote) = (ep(internal), ep(remote));
                let ended = self
                    .handle
                    .delete_session(proto, internal, remote)
                    .map_err(unavailable)?
                    .ok_or_else(|| {
                        ControlError::Rejected(
                            NoSuchSession {
                                proto,
                                internal,
                                remote,
                            }
                            .to_string(),
                        )
                    })?;
                tracing::info!(
                    %proto, %internal, %remote, mappings = ended.mappings,
                    "session deleted by the operator"
                );
                Ok(Response::SessionChanged(ended_result(ended)))
            }
            Request::Unmap(a) => {
                let internal = natgate_core::Endpoint::new(*a.internal.ip(), a.internal.port());
                let now = self.snapshot(Detail::Summary)?.now;
                match self.handle.unmap(a.proto, internal).map_err(unavailable)? {
                    Some(m) => {
                        tracing::info!(proto = %a.proto, internal = %a.internal, "explicit mapping deleted");
                        Ok(Response::Unmapped(MappingRow::new(&m, now)))
                    }
                    None => Err(ControlError::Rejected(format!(
                        "no explicit {} mapping of {}",
                        a.proto, a.internal
                    ))),
                }
            }
            Request::Reload => self.reload(),
            Request::Save => {
                let path = self.settings().snapshot.clone().ok_or_else(|| {
                    ControlError::Rejected(
                        "the config names no snapshot file ([state] snapshot)".into(),
                    )
                })?;
                let s = self.handle.save(&path).map_err(unavailable)?;
                tracing::info!(path = %path.display(), sessions = s.sessions, "snapshot saved by the operator");
                Ok(Response::Saved(SaveResult {
                    path,
                    sessions: s.sessions,
                    explicit_mappings: s.explicit,
                    held_ports: s.held,
                    bytes: s.bytes,
                }))
            }
            Request::Whois(q) => self.whois(q),
            Request::Rules => Ok(Response::Rules(Self::rule_list(&self.settings(), None))),
            Request::Rule(change) => self.change_rule(change),
            Request::VirtualServers => Ok(Response::VirtualServers(
                self.handle.virtual_servers().map_err(unavailable)?,
            )),
            Request::VirtualServer(change) => self.change_virtual_server(change),
            Request::VirtualServerCreate(spec) => self.create_virtual_server(spec),
            Request::VirtualServerDelete(which) => self.delete_virtual_server(which),
            Request::LogLevel(LogLevelArgs { level }) => {
                let set = self.log_level.as_ref().ok_or_else(|| {
                    ControlError::Unavailable("this daemon cannot change its log level".into())
                })?;
                set(level).map_err(ControlError::Internal)?;
                tracing::info!(%level, "log level changed");
                Ok(Response::LogLevel(LogLevelArgs { level }))
            }
        }
    }
}

/// What the engines ended, as `flush` and `session` answer it.
fn ended_result(e: Ended) -> FlushResult {
    FlushResult {
        sessions: e.sessions as u64,
        mappings: e.mappings as u64,
    }
}

/// The fast path's part of `stats`, if it runs.
fn fast_path_stats(snap: &super::Snapshot) -> Option<FastPathStats> {
    let program = snap.fast_path?;
    let offload = snap.offload.unwrap_or_default();
    Some(FastPathStats {
        program,
        flows: offload.carried,
        offers_skipped: offload.skipped,
        changes_failed: snap.io.offload_failed,
    })
}

/// Whether `spec` is the virtual server `which` names.
fn same_virtual_server(spec: &VirtualServerSpec, which: &VirtualServerRef) -> bool {
    spec.protocol == which.protocol && SocketAddrV4::new(spec.address, spec.port) == which.address
}
