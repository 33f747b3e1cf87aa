//! The control protocol's messages: requests, replies, and the plain row types they carry.
//!
//! On the wire each message is one line of JSON (see `docs/control-protocol.md`):
//! `{"id": 7, "cmd": "sessions", "args": {...}}` is answered by
//! `{"id": 7, "ok": true, "result": ...}` or
//! `{"id": 7, "ok": false, "error": {"code": "bad_request", "message": "..."}}`.
//!
//! Row types are built from one engine's state and merged across engines: lists concatenate,
//! counts add. The daemon collects from every worker, merges, then calls `finish` with the query.

use core::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use natgate_core::alloc::{AddressUsage, PortSetKind, PortSetUsage};
use natgate_core::engine::{MappingInfo, SessionInfo};
use natgate_core::tcp_state::TcpPhase;
use natgate_core::vserver::VirtualServerSpec;
use natgate_core::{Counters, DropReason, Endpoint, Instant, Protocol};
use serde::{Deserialize, Serialize};

use crate::dataplane::fastpath::FastPathCounters;
use serde_json::Value;

use super::ControlError;
pub use super::static_nat::{
    HealthName, RealServerOp, RealServerRef, RealServerRow, RuleChange, RuleList, ServerStateName,
    VirtualServerChange, VirtualServerList, VirtualServerRef, VirtualServerRow,
};

/// The longest request line the server reads, newline included; longer ones are refused.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// The commands, without their arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `status`.
    Status,
    /// `sessions`.
    Sessions,
    /// `mappings`.
    Mappings,
    /// `pools`.
    Pools,
    /// `stats`.
    Stats,
    /// `drops`.
    Drops,
    /// `flush`.
    Flush,
    /// `session`.
    Session,
    /// `reload`.
    Reload,
    /// `save`.
    Save,
    /// `log-level`.
    LogLevel,
    /// `whois`.
    Whois,
    /// `rules`.
    Rules,
    /// `rule`.
    Rule,
    /// `vservers`.
    VirtualServers,
    /// `vserver`.
    VirtualServer,
    /// `vserver-create`.
    VirtualServerCreate,
    /// `vserver-delete`.
    VirtualServerDelete,
    /// `unmap`.
    Unmap,
}

impl Command {
    /// Every command.
    pub const ALL: [Command; 19] = [
        Command::Status,
        Command::Sessions,
        Command::Mappings,
        Command::Pools,
        Command::Stats,
        Command::Drops,
        Command::Flush,
        Command::Session,
        Command::Reload,
        Command::Save,
        Command::LogLevel,
        Command::Whois,
        Command::Rules,
        Command::Rule,
        Command::VirtualServers,
        Command::VirtualServer,
        Command::VirtualServerCreate,
        Command::VirtualServerDelete,
        Command::Unmap,
    ];

    /// The `cmd` string on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Sessions => "sessions",
            Command::Mappings => "mappings",
            Command::Pools => "pools",
            Command::Stats => "stats",
            Command::Drops => "drops",
            Command::Flush => "flush",
            Command::Session => "session",
            Command::Reload => "reload",
            Command::Save => "save",
            Command::LogLevel => "log-level",
            Command::Whois => "whois",
            Command::Rules => "rules",
            Command::Rule => "rule",
            Command::VirtualServers => "vservers",
            Command::VirtualServer => "vserver",
            Command::VirtualServerCreate => "vserver-create",
            Command::VirtualServerDelete => "vserver-delete",
            Command::Unmap => "unmap",
        }
    }

    /// The command named `name` on the wire.
    pub fn from_name(name: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Version, uptime, config and table sizes.
    Status,
    /// Sessions matching a query.
    Sessions(TableQuery),
    /// Mappings matching a query.
    Mappings(TableQuery),
    /// Use of each external address.
    Pools,
    /// Traffic and state counters.
    Stats,
    /// Dropped packets by reason.
    Drops(DropsQuery),
    /// Delete every session and mapping, or one subscriber's.
    Flush(FlushQuery),
    /// End one session.
    Session(SessionChange),
    /// Re-read the config file; a bad one is refused and nothing changes.
    Reload,
    /// Write the warm-restart snapshot now (`[state] snapshot`), the state staying live.
    Save,
    /// Set the diagnostics level.
    LogLevel(LogLevelArgs),
    /// Who held an external address and port (at a time): from live state, the deterministic
    /// formula, or the block log.
    Whois(WhoisQuery),
    /// The static NAT rule chain.
    Rules,
    /// Insert, append or delete a static NAT rule (applied like `reload`: all workers or none).
    Rule(RuleChange),
    /// The virtual servers with their real servers' states and counts.
    VirtualServers,
    /// Add, drain, undrain, remove or reweigh a real server (all workers or none).
    VirtualServer(VirtualServerChange),
    /// Add a virtual server to the running ones (applied like `reload`: all workers or none).
    VirtualServerCreate(VirtualServerSpec),
    /// Delete a running virtual server; its connections end as the rules' do on a reload.
    VirtualServerDelete(VirtualServerRef),
    /// Delete an explicit mapping (PCP, NAT-PMP) and the flows it let in.
    Unmap(UnmapArgs),
}

/// Arguments of `unmap`: which explicit mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnmapArgs {
    /// Its protocol.
    pub proto: Protocol,
    /// The subscriber's endpoint it maps.
    pub internal: SocketAddrV4,
}

impl Request {
    /// The command, without arguments.
    pub const fn command(&self) -> Command {
        match self {
            Request::Status => Command::Status,
            Request::Sessions(_) => Command::Sessions,
            Request::Mappings(_) => Command::Mappings,
            Request::Pools => Command::Pools,
            Request::Stats => Command::Stats,
            Request::Drops(_) => Command::Drops,
            Request::Flush(_) => Command::Flush,
            Request::Session(_) => Command::Session,
            Request::Reload => Command::Reload,
            Request::Save => Command::Save,
            Request::LogLevel(_) => Command::LogLevel,
            Request::Whois(_) => Command::Whois,
            Request::Rules => Command::Rules,
            Request::Rule(_) => Command::Rule,
            Request::VirtualServers => Command::VirtualServers,
            Request::VirtualServer(_) => Command::VirtualServer,
            Request::VirtualServerCreate(_) => Command::VirtualServerCreate,
            Request::VirtualServerDelete(_) => Command::VirtualServerDelete,
            Request::Unmap(_) => Command::Unmap,
        }
    }
}

/// A filter over sessions or mappings. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TableQuery {
    /// Only this subscriber (internal address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Ipv4Addr>,
    /// Only this protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<Protocol>,
    /// Only this external port (ICMP: identifier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_port: Option<u16>,
    /// Answer with the count and no rows.
    #[serde(skip_serializing_if = "is_false")]
    pub count_only: bool,
    /// At most this many rows (the count still counts every match).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl TableQuery {
    fn matches(&self, proto: Protocol, internal: Endpoint, external: Endpoint) -> bool {
        self.subscriber.is_none_or(|a| a == internal.addr)
            && self.proto.is_none_or(|p| p == proto)
            && self.external_port.is_none_or(|p| p == external.port)
    }

    /// Whether `s` passes the filter.
    pub fn matches_session(&self, s: &SessionInfo) -> bool {
        self.matches(s.proto, s.internal, s.external)
    }

    /// Whether `m` passes the filter.
    pub fn matches_mapping(&self, m: &MappingInfo) -> bool {
        self.matches(m.proto, m.internal, m.external)
    }

    /// The matching sessions of one engine at `now`: every match counted, rows kept up to the
    /// limit (none if `count_only`). Merge several with [`SessionList::merge`].
    pub fn collect_sessions(
        &self,
        sessions: impl IntoIterator<Item = SessionInfo>,
        now: Instant,
    ) -> SessionList {
        let mut list = SessionList::default();
        for s in sessions.into_iter().filter(|s| self.matches_session(s)) {
            list.count += 1;
            if self.wants_row(list.sessions.len()) {
                list.sessions.push(SessionRow::new(&s, now));
            }
        }
        list
    }

    /// The matching mappings of one engine at `now`, like [`TableQuery::collect_sessions`].
    pub fn collect_mappings(
        &self,
        mappings: impl IntoIterator<Item = MappingInfo>,
        now: Instant,
    ) -> MappingList {
        let mut list = MappingList::default();
        for m in mappings.into_iter().filter(|m| self.matches_mapping(m)) {
            list.count += 1;
            if self.wants_row(list.mappings.len()) {
                list.mappings.push(MappingRow::new(&m, now));
            }
        }
        list
    }

    fn wants_row(&self, have: usize) -> bool {
        !self.count_only && self.limit.is_none_or(|l| (have as u64) < l)
    }

    fn limit_rows<T>(&self, rows: &mut Vec<T>) {
        if self.count_only {
            rows.clear();
        } else if let Some(l) = self.limit {
            rows.truncate(usize::try_from(l).unwrap_or(usize::MAX));
        }
    }
}

/// Arguments of `drops`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropsQuery {
    /// Every reason, zero ones included (default: only reasons with drops).
    #[serde(skip_serializing_if = "is_false")]
    pub all: bool,
}

/// Arguments of `flush`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlushQuery {
    /// Only this subscriber's sessions and mappings (internal address); all if absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Ipv4Addr>,
}

/// Arguments of `session`: one change to one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SessionChange {
    /// End the session `sessions` lists with this protocol, internal and remote endpoint (the
    /// three identify it: its external endpoint follows from them), and its mapping if it was
    /// the mapping's last session.
    Delete {
        /// The protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: SocketAddrV4,
        /// The remote endpoint.
        remote: SocketAddrV4,
    },
}

/// Arguments of `log-level`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLevelArgs {
    /// The new level.
    pub level: LogLevel,
}

/// Arguments of `whois`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoisQuery {
    /// The external address.
    pub address: Ipv4Addr,
    /// The external port (ICMP: query identifier).
    pub port: u16,
    /// Only this protocol; every protocol if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Protocol>,
    /// The moment asked about, in ms since the Unix epoch; now if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
}

/// Answer to `whois`: every subscriber that held the port at the time (several only when
/// protocols differ).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoisList {
    /// The holders, oldest allocation first.
    pub answers: Vec<WhoisRow>,
}

/// One holder of an external port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoisRow {
    /// The subscriber (internal address).
    pub subscriber: Ipv4Addr,
    /// The external address.
    pub external: Ipv4Addr,
    /// First port of the block (or the single port) that held it.
    pub port_start: u16,
    /// Last port of that block.
    pub port_end: u16,
    /// The protocol, or `None` for a block of every protocol.
    pub proto: Option<Protocol>,
    /// Held since, ms since the Unix epoch (`None` when the source has no start, e.g. the
    /// deterministic formula).
    pub since_ms: Option<u64>,
    /// Released at, ms since the Unix epoch; `None` while held.
    pub until_ms: Option<u64>,
    /// Where the answer came from.
    pub source: crate::observability::logsink::whois::WhoisSource,
}

impl From<&crate::observability::logsink::whois::WhoisAnswer> for WhoisRow {
    fn from(a: &crate::observability::logsink::whois::WhoisAnswer) -> Self {
        let ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        WhoisRow {
            subscriber: a.subscriber,
            external: a.external,
            port_start: a.ports.first,
            port_end: a.ports.last,
            proto: a.proto,
            since_ms: Some(ms(a.since)),
            until_ms: a.until.map(ms),
            source: a.source,
        }
    }
}

/// A diagnostics level: messages at this level and more severe are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something is wrong but handled.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The lower-case name, as `tracing` filters spell it.
    pub const fn name(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The answer to a request; the variant matches the request's command.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// For `status`.
    Status(StatusInfo),
    /// For `sessions`.
    Sessions(SessionList),
    /// For `mappings`.
    Mappings(MappingList),
    /// For `pools`.
    Pools(PoolList),
    /// For `stats`.
    Stats(Box<StatsInfo>),
    /// For `drops`.
    Drops(DropList),
    /// For `flush`.
    Flushed(FlushResult),
    /// For `session`: what the change ended.
    SessionChanged(FlushResult),
    /// For `reload`.
    Reloaded(ReloadResult),
    /// For `save`.
    Saved(SaveResult),
    /// For `log-level`.
    LogLevel(LogLevelArgs),
    /// For `whois`.
    Whois(WhoisList),
    /// For `rules`.
    Rules(RuleList),
    /// For `rule`: the chain after the change.
    RuleChanged(RuleList),
    /// For `vservers`.
    VirtualServers(VirtualServerList),
    /// For `vserver`: the changed virtual server after the change.
    VirtualServerChanged(VirtualServerList),
    /// For `vserver-create`: the new virtual server.
    VirtualServerCreated(VirtualServerList),
    /// For `vserver-delete`: the virtual server as it was just before.
    VirtualServerDeleted(VirtualServerList),
    /// For `unmap`: the mapping deleted.
    Unmapped(MappingRow),
}

impl Response {
    /// The command this answers.
    pub const fn command(&self) -> Command {
        match self {
            Response::Status(_) => Command::Status,
            Response::Sessions(_) => Command::Sessions,
            Response::Mappings(_) => Command::Mappings,
            Response::Pools(_) => Command::Pools,
            Response::Stats(_) => Command::Stats,
            Response::Drops(_) => Command::Drops,
            Response::Flushed(_) => Command::Flush,
            Response::SessionChanged(_) => Command::Session,
            Response::Reloaded(_) => Command::Reload,
            Response::Saved(_) => Command::Save,
            Response::LogLevel(_) => Command::LogLevel,
            Response::Whois(_) => Command::Whois,
            Response::Rules(_) => Command::Rules,
            Response::RuleChanged(_) => Command::Rule,
            Response::VirtualServers(_) => Command::VirtualServers,
            Response::VirtualServerChanged(_) => Command::VirtualServer,
            Response::VirtualServerCreated(_) => Command::VirtualServerCreate,
            Response::VirtualServerDeleted(_) => Command::VirtualServerDelete,
            Response::Unmapped(_) => Command::Unmap,
        }
    }

    /// The `result` value on the wire.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Response::Status(r) => serde_json::to_value(r),
            Response::Sessions(r) => serde_json::to_value(r),
            Response::Mappings(r) => serde_json::to_value(r),
            Response::Pools(r) => serde_json::to_value(r),
            Response::Stats(r) => serde_json::to_value(r),
            Response::Drops(r) => serde_json::to_value(r),
            Response::Flushed(r) | Response::SessionChanged(r) => serde_json::to_value(r),
            Response::Reloaded(r) => serde_json::to_value(r),
            Response::Saved(r) => serde_json::to_value(r),
            Response::LogLevel(r) => serde_json::to_value(r),
            Response::Whois(r) => serde_json::to_value(r),
            Response::Rules(r) | Response::RuleChanged(r) => serde_json::to_value(r),
            Response::VirtualServers(r)
            | Response::VirtualServerChanged(r)
            | Response::VirtualServerCreated(r)
            | Response::VirtualServerDeleted(r) => serde_json::to_value(r),
            Response::Unmapped(r) => serde_json::to_value(r),
        }
    }

    /// Reads a `result` value as the answer to `cmd`.
    pub fn from_value(cmd: Command, v: Value) -> Result<Response, serde_json::Error> {
        use serde_json::from_value as from;
        Ok(match cmd {
            Command::Status => Response::Status(from(v)?),
            Command::Sessions => Response::Sessions(from(v)?),
            Command::Mappings => Response::Mappings(from(v)?),
            Command::Pools => Response::Pools(from(v)?),
            Command::Stats => Response::Stats(from(v)?),
            Command::Drops => Response::Drops(from(v)?),
            Command::Flush => Response::Flushed(from(v)?),
            Command::Session => Response::SessionChanged(from(v)?),
            Command::Reload => Response::Reloaded(from(v)?),
            Command::Save => Response::Saved(from(v)?),
            Command::LogLevel => Response::LogLevel(from(v)?),
            Command::Whois => Response::Whois(from(v)?),
            Command::Rules => Response::Rules(from(v)?),
            Command::Rule => Response::RuleChanged(from(v)?),
            Command::VirtualServers => Response::VirtualServers(from(v)?),
            Command::VirtualServer => Response::VirtualServerChanged(from(v)?),
            Command::VirtualServerCreate => Response::VirtualServerCreated(from(v)?),
            Command::VirtualServerDelete => Response::VirtualServerDeleted(from(v)?),
            Command::Unmap => Response::Unmapped(from(v)?),
        })
    }
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// natgate's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The config file, if the daemon was started from one.
    pub config_path: Option<PathBuf>,
    /// The behaviour preset, if the config names one.
    pub preset: Option<String>,
    /// Worker threads (engines).
    pub workers: u32,
    /// The external addresses.
    pub pool: Vec<Ipv4Addr>,
    /// Live sessions, over all workers.
    pub sessions: u64,
    /// Live mappings, over all workers.
    pub mappings: u64,
}

/// A session's TCP phase, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpStateName {
    /// SYN seen one way only.
    Opening,
    /// SYN seen both ways.
    Established,
    /// FIN seen both ways.
    Closing,
    /// RST seen.
    Reset,
}

impl From<TcpPhase> for TcpStateName {
    fn from(p: TcpPhase) -> Self {
        match p {
            TcpPhase::Opening => TcpStateName::Opening,
            TcpPhase::Established => TcpStateName::Established,
            TcpPhase::Closing => TcpStateName::Closing,
            TcpPhase::Reset => TcpStateName::Reset,
        }
    }
}

impl TcpStateName {
    /// The lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            TcpStateName::Opening => "opening",
            TcpStateName::Established => "established",
            TcpStateName::Closing => "closing",
            TcpStateName::Reset => "reset",
        }
    }
}

fn sock(e: Endpoint) -> SocketAddrV4 {
    SocketAddrV4::new(e.addr, e.port)
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    /// Protocol.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: SocketAddrV4,
    /// The external endpoint.
    pub external: SocketAddrV4,
    /// The remote endpoint.
    pub remote: SocketAddrV4,
    /// TCP phase; absent for UDP and ICMP.
    pub tcp_state: Option<TcpStateName>,
    /// Seconds since the session was last refreshed.
    pub idle_secs: u64,
    /// Seconds until it expires unless refreshed.
    pub expires_in_secs: u64,
    /// What made it: `dynamic`, `rule ID` or `vserver ADDR:PORT server ID`.
    #[serde(default = "dynamic")]
    pub origin: String,
}

fn dynamic() -> String {
    "dynamic".to_owned()
}

impl SessionRow {
    /// The row for `s` as seen at `now`.
    pub fn new(s: &SessionInfo, now: Instant) -> Self {
        SessionRow {
            proto: s.proto,
            internal: sock(s.internal),
            external: sock(s.external),
            remote: sock(s.remote),
            tcp_state: s.tcp.map(TcpStateName::from),
            idle_secs: now.saturating_since(s.last_seen).as_secs(),
            expires_in_secs: s.expires.saturating_since(now).as_secs(),
            origin: s.origin.to_string(),
        }
    }

    /// The order rows are listed in: by subscriber endpoint, protocol, then remote endpoint.
    pub fn sort_key(&self) -> (Ipv4Addr, u16, Protocol, Ipv4Addr, u16) {
        (
            *self.internal.ip(),
            self.internal.port(),
            self.proto,
            *self.remote.ip(),
            self.remote.port(),
        )
    }
}

/// Answer to `sessions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionList {
    /// Every matching session, including those not listed because of the limit.
    pub count: u64,
    /// The rows.
    pub sessions: Vec<SessionRow>,
}

impl SessionList {
    /// Adds another engine's answer to this one.
    pub fn merge(&mut self, other: SessionList) {
        self.count += other.count;
        self.sessions.extend(other.sessions);
    }

    /// Sorts the rows (by subscriber, protocol, remote) and applies the query's limit again,
    /// after merging.
    pub fn finish(&mut self, q: &TableQuery) {
        self.sessions.sort_by_key(SessionRow::sort_key);
        q.limit_rows(&mut self.sessions);
    }
}

/// One mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRow {
    /// Protocol.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: SocketAddrV4,
    /// The endpoint it appears as outside.
    pub external: SocketAddrV4,
    /// Live sessions using it.
    pub sessions: u32,
    /// An explicit mapping's origin (`pcp nonce HEX`, `nat-pmp`, `upnp "DESCRIPTION"`); absent
    /// for the mappings
    /// outbound packets make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// An explicit mapping's remaining lifetime, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

impl MappingRow {
    /// The row of `m` at `now`.
    pub fn new(m: &MappingInfo, now: Instant) -> Self {
        MappingRow {
            proto: m.proto,
            internal: sock(m.internal),
            external: sock(m.external),
            sessions: m.sessions,
            origin: m.explicit.map(|e| e.origin.to_string()),
            expires_in_secs: m
                .explicit
                .map(|e| e.expires.saturating_since(now).as_secs()),
        }
    }
}

/// Answer to `mappings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingList {
    /// Every matching mapping, including those not listed because of the limit.
    pub count: u64,
    /// The rows.
    pub mappings: Vec<MappingRow>,
}

impl MappingList {
    /// Adds another engine's answer to this one.
    pub fn merge(&mut self, other: MappingList) {
        self.count += other.count;
        self.mappings.extend(other.mappings);
    }

    /// Sorts the rows (by subscriber, protocol) and applies the query's limit again.
    pub fn finish(&mut self, q: &TableQuery) {
        self.mappings
            .sort_by_key(|m| (*m.internal.ip(), m.internal.port(), m.proto));
        q.limit_rows(&mut self.mappings);
    }
}

/// A number per protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerProtocol {
    /// ICMP (query identifiers).
    pub icmp: u64,
    /// TCP.
    pub tcp: u64,
    /// UDP.
    pub udp: u64,
}

impl PerProtocol {
    /// The value for `p`.
    pub const fn get(&self, p: Protocol) -> u64 {
        match p {
            Protocol::Icmp => self.icmp,
            Protocol::Tcp => self.tcp,
            Protocol::Udp => self.udp,
        }
    }

    /// The value for `p`, to change.
    pub fn get_mut(&mut self, p: Protocol) -> &mut u64 {
        match p {
            Protocol::Icmp => &mut self.icmp,
            Protocol::Tcp => &mut self.tcp,
            Protocol::Udp => &mut self.udp,
        }
    }

    /// From an array indexed by [`Protocol::index`].
    pub fn from_indexed(a: [u32; 3]) -> Self {
        let mut v = PerProtocol::default();
        for p in Protocol::ALL {
            *v.get_mut(p) = u64::from(a[p.index()]);
        }
        v
    }

    /// Adds `other` field by field.
    pub fn add(&mut self, other: &PerProtocol) {
        for p in Protocol::ALL {
            *self.get_mut(p) += other.get(p);
        }
    }

    /// The ports (identifiers) one external address can hand out per protocol. TCP and UDP never
    /// use port 0; with port range preservation the low range 1-1023 is usable too, otherwise
    /// only 1024-65535. ICMP identifiers take all 65536 values.
    pub const fn port_capacity(port_range_preservation: bool) -> PerProtocol {
        let tcp_udp = if port_range_preservation {
            65535
        } else {
            65535 - 1023
        };
        PerProtocol {
            icmp: 65536,
            tcp: tcp_udp,
            udp: tcp_udp,
        }
    }

    /// The sum over protocols.
    pub const fn total(&self) -> u64 {
        self.icmp + self.tcp + self.udp
    }
}

/// How one external address is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRow {
    /// The external address.
    pub address: Ipv4Addr,
    /// Ports held by live mappings.
    pub in_use: PerProtocol,
    /// Ports released but not yet reusable (RFC 6888 REQ-8).
    pub held_down: PerProtocol,
    /// Ports the address can hand out at all.
    pub capacity: PerProtocol,
    /// Subscribers with a mapping on this address.
    pub subscribers: u64,
    /// Of the busiest protocol, the share of ports in use or held down, in percent: how close the
    /// address is to refusing new mappings. With port sets, the share of sets in use or held
    /// down instead: how close the address is to refusing a new subscriber a block.
    pub utilisation_percent: f64,
    /// How the address's ports are divided into port blocks or deterministic ranges; absent
    /// with dynamic allocation, which hands out single ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_sets: Option<PortSetRow>,
}

/// What a [`PortSetRow`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortSetRowKind {
    /// Port blocks (`[allocation] mode = "port-block"`, or deterministic overflow blocks).
    Block,
    /// RFC 7422 deterministic ranges, one per subscriber.
    Deterministic,
}

/// The port sets of one external address: the part of its port space subscribers can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSetRow {
    /// Blocks or deterministic ranges.
    pub kind: PortSetRowKind,
    /// Ports in each set (of every protocol).
    pub size: u16,
    /// Sets of a subscriber with a port in use.
    pub in_use: u64,
    /// Blocks waiting out the hold-down of their last ports (RFC 6888 REQ-8); 0 for ranges.
    pub held_down: u64,
    /// Blocks free for any subscriber; for ranges, those of subscribers with no port in use.
    pub free: u64,
}

impl PortSetRow {
    /// The row of one allocator's sets on an address.
    pub fn new(s: &PortSetUsage) -> Self {
        PortSetRow {
            kind: match s.kind {
                PortSetKind::Block => PortSetRowKind::Block,
                PortSetKind::DeterministicRange => PortSetRowKind::Deterministic,
            },
            size: s.size,
            in_use: u64::from(s.in_use),
            held_down: u64::from(s.held_down),
            free: u64::from(s.free),
        }
    }

    /// Every set of the address.
    pub const fn total(&self) -> u64 {
        self.in_use + self.held_down + self.free
    }

    /// Ports per protocol inside the sets: the address's real capacity (a set serves every
    /// protocol).
    pub const fn capacity(&self) -> PerProtocol {
        let ports = self.total() * self.size as u64;
        PerProtocol {
            icmp: ports,
            tcp: ports,
            udp: ports,
        }
    }

    fn add(&mut self, other: &PortSetRow) {
        self.in_use += other.in_use;
        self.held_down += other.held_down;
        self.free += other.free;
    }
}

impl PoolRow {
    /// The row for one engine's use of an address that can hand out `capacity` ports.
    pub fn new(u: &AddressUsage, capacity: PerProtocol) -> Self {
        let mut row = PoolRow {
            address: u.addr,
            in_use: PerProtocol::from_indexed(u.in_use),
            held_down: PerProtocol::from_indexed(u.held_down),
            capacity,
            subscribers: u64::from(u.subscribers),
            utilisation_percent: 0.0,
            port_sets: None,
        };
        row.update_utilisation();
        row
    }

    /// The row for an address whose ports are divided into `sets` (port blocks, deterministic
    /// ranges): its capacity is the ports inside them, not the port numbers.
    pub fn with_port_sets(u: &AddressUsage, sets: &PortSetUsage) -> Self {
        let sets = PortSetRow::new(sets);
        let mut row = PoolRow::new(u, sets.capacity());
        row.port_sets = Some(sets);
        row.update_utilisation();
        row
    }

    fn update_utilisation(&mut self) {
        if let Some(s) = &self.port_sets {
            self.capacity = s.capacity();
            self.utilisation_percent = match s.total() {
                0 => 0.0,
                n => 100.0 * (s.in_use + s.held_down) as f64 / n as f64,
            };
            return;
        }
        self.utilisation_percent = Protocol::ALL
            .into_iter()
            .filter(|p| self.capacity.get(*p) > 0)
            .map(|p| {
                let busy = self.in_use.get(p) + self.held_down.get(p);
                100.0 * busy as f64 / self.capacity.get(p) as f64
            })
            .fold(0.0, f64::max);
    }
}

/// Answer to `pools`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolList {
    /// One row per external address, in address order.
    pub addresses: Vec<PoolRow>,
}

impl PoolList {
    /// Adds another engine's use of the same pool: rows for the same address add up. Engines
    /// that share an address split its ports, so the capacity is not added; with port sets each
    /// engine owns its own sets, which add up, and the capacity follows them.
    pub fn merge(&mut self, other: PoolList) {
        for row in other.addresses {
            match self.addresses.iter_mut().find(|r| r.address == row.address) {
                Some(r) => {
                    r.in_use.add(&row.in_use);
                    r.held_down.add(&row.held_down);
                    r.subscribers += row.subscribers;
                    match (&mut r.port_sets, &row.port_sets) {
                        (Some(mine), Some(theirs)) => mine.add(theirs),
                        (mine @ None, Some(theirs)) => *mine = Some(*theirs),
                        (_, None) => {}
                    }
                    r.update_utilisation();
                }
                None => self.addresses.push(row),
            }
        }
        self.addresses.sort_by_key(|r| r.address);
    }
}

/// Packets and bytes in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (IP total length).
    pub bytes: u64,
}

/// Answer to `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsInfo {
    /// Inside to outside.
    pub outbound: Traffic,
    /// Outside to inside.
    pub inbound: Traffic,
    /// Packets forwarded back inside by hairpinning (also counted as outbound).
    pub hairpinned_packets: u64,
    /// ICMP errors generated.
    pub icmp_generated: u64,
    /// TCP resets generated (the `tcp-reset` answer to a refused mapping).
    #[serde(default)]
    pub tcp_resets_generated: u64,
    /// Refusals not reported as events because the same subscriber was refused for the same
    /// reason earlier in the same second (the drops are counted all the same).
    #[serde(default)]
    pub refusal_reports_suppressed: u64,
    /// Answers to refused packets (ICMP errors, TCP resets) left out by the answer rate limits
    /// (the drops are counted all the same).
    #[serde(default)]
    pub answers_suppressed: u64,
    /// Packets held (early fragments, unsolicited SYNs).
    pub held_packets: u64,
    /// Dropped packets, every reason.
    pub dropped_packets: u64,
    /// Sessions created.
    pub sessions_created: u64,
    /// Sessions deleted.
    pub sessions_deleted: u64,
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings deleted.
    pub mappings_deleted: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
    /// Events lost between the workers and the log sinks: the log pipeline's queue was full
    /// (it never makes a worker wait).
    #[serde(default)]
    pub log_events_lost: u64,
    /// Sessions that static NAT rules created. Static sessions live in their own table, so
    /// they are not in `sessions_created`, which counts dynamic NAPT sessions only.
    #[serde(default)]
    pub static_sessions_created: u64,
    /// Sessions that virtual servers created (their own table, like the rules' sessions).
    #[serde(default)]
    pub vserver_sessions_created: u64,
    /// Sessions of rules and virtual servers deleted.
    #[serde(default)]
    pub static_sessions_deleted: u64,
    /// Packets forwarded untranslated because a rule exempts them (RFC 6888 REQ-6).
    #[serde(default)]
    pub exempted_packets: u64,
    /// Packets given to the host that shares the external address (a home gateway's own
    /// traffic: its ports, a ping to it).
    #[serde(default)]
    pub to_host_packets: u64,
    /// The in-kernel fast path, when it runs. Its packets are not in `outbound` and
    /// `inbound`, which count what the engines translated themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<FastPathStats>,
    /// Events that left the queue but did not reach a sink, for every configured sink and
    /// reason (zeros included): a full disk, a collector that refuses them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_sink_losses: Vec<LogSinkLoss>,
    /// Packets the data plane lost outside the engines, by reason (zeros included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dataplane_drops: Vec<DataplaneDrop>,
}

/// Events one log sink lost for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSinkLoss {
    /// The sink: `file`, `stdout`, `syslog`, `ipfix` or `block-log`.
    pub sink: String,
    /// `no_space`, `refused`, `unreachable` or `io_error`.
    pub reason: String,
    /// Events lost.
    pub events: u64,
}

/// Packets the data plane lost outside the engines for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataplaneDrop {
    /// The reason: `tun_tx_dropped` (the kernel dropped packets queued to natgate's TUN
    /// devices: a worker did not read fast enough), `tun_write_failed` (the kernel refused a
    /// packet natgate wrote back into a TUN) or `steer_queue_full` (a packet read by one worker
    /// and owned by another found the owner's mailbox full).
    pub reason: String,
    /// Packets lost.
    pub packets: u64,
}

/// The fast path in `stats`: the program's own counters and the engines' side of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPathStats {
    /// What the program carried and punted, and its table's occupancy.
    pub program: FastPathCounters,
    /// Flows the engines handed to it (each is two table entries).
    pub flows: u64,
    /// Flows the engines kept because the table or their queue was full.
    pub offers_skipped: u64,
    /// Table changes the kernel refused.
    pub changes_failed: u64,
}

impl StatsInfo {
    /// The sum of every engine's counters.
    pub fn from_counters<'a>(counters: impl IntoIterator<Item = &'a Counters>) -> Self {
        let mut s = StatsInfo::default();
        for c in counters {
            s.add(c);
        }
        s
    }

    /// Adds one engine's counters.
    pub fn add(&mut self, c: &Counters) {
        self.outbound.packets += c.forwarded_packets[0];
        self.outbound.bytes += c.forwarded_bytes[0];
        self.inbound.packets += c.forwarded_packets[1];
        self.inbound.bytes += c.forwarded_bytes[1];
        self.hairpinned_packets += c.hairpinned_packets;
        self.icmp_generated += c.icmp_generated;
        self.tcp_resets_generated += c.tcp_resets_generated;
        self.refusal_reports_suppressed += c.refusal_reports_suppressed;
        self.answers_suppressed += c.answers_suppressed;
        self.held_packets += c.held_packets;
        self.dropped_packets += c.total_drops();
        self.sessions_created += c.sessions_created;
        self.sessions_deleted += c.sessions_deleted;
        self.mappings_created += c.mappings_created;
        self.mappings_deleted += c.mappings_deleted;
        self.events_lost += c.events_lost;
        self.static_sessions_created += c.static_sessions_created;
        self.vserver_sessions_created += c.vserver_sessions_created;
        self.static_sessions_deleted += c.static_sessions_deleted;
        self.exempted_packets += c.exempted_packets;
        self.to_host_packets += c.to_host_packets;
    }
}

/// Drops for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRow {
    /// The reason's name ([`DropReason::name`]).
    pub reason: String,
    /// Packets dropped for it.
    pub packets: u64,
}

/// Answer to `drops`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropList {
    /// Every dropped packet, whichever reasons are listed.
    pub total: u64,
    /// Per reason, in counter order.
    pub drops: Vec<DropRow>,
}

impl DropList {
    /// The sum of every engine's drop counters; reasons with no drops are left out unless
    /// `q.all`.
    pub fn from_counters<'a>(
        counters: impl IntoIterator<Item = &'a Counters>,
        q: &DropsQuery,
    ) -> Self {
        let mut by_reason = [0u64; DropReason::COUNT];
        for c in counters {
            for (r, n) in c.drops_by_reason() {
                by_reason[r as usize] += n;
            }
        }
        DropList {
            total: by_reason.iter().sum(),
            drops: DropReason::ALL
                .iter()
                .map(|r| DropRow {
                    reason: r.name().to_owned(),
                    packets: by_reason[*r as usize],
                })
                .filter(|d| q.all || d.packets > 0)
                .collect(),
        }
    }
}

/// Answer to `flush` and `session`: what was deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushResult {
    /// Sessions deleted.
    pub sessions: u64,
    /// Mappings deleted.
    pub mappings: u64,
}

/// Answer to `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// The config file that was read and is now in force.
    pub config_path: PathBuf,
}

/// Answer to `save`: what the snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaveResult {
    /// The snapshot file.
    pub path: PathBuf,
    /// Sessions saved.
    pub sessions: usize,
    /// Explicit mappings saved.
    pub explicit_mappings: usize,
    /// Ports in hold-down saved.
    pub held_ports: usize,
    /// The file's size.
    pub bytes: usize,
}

/// A request line's envelope.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    #[serde(default)]
    id: Option<u64>,
    cmd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
}

/// A reply line's envelope.
#[derive(Debug, Serialize, Deserialize)]
struct WireReply {
    #[serde(default)]
    id: Option<u64>,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<WireError>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    code: String,
    message: String,
}

/// One request as a line (without the newline).
pub fn encode_request(id: u64, req: &Request) -> Result<String, serde_json::Error> {
    let args = match req {
        Request::Status
        | Request::Pools
        | Request::Stats
        | Request::Reload
        | Request::Save
        | Request::Rules
        | Request::VirtualServers => None,
        Request::Sessions(q) | Request::Mappings(q) => Some(serde_json::to_value(q)?),
        Request::Drops(q) => Some(serde_json::to_value(q)?),
        Request::Flush(q) => Some(serde_json::to_value(q)?),
        Request::Session(c) => Some(serde_json::to_value(c)?),
        Request::LogLevel(a) => Some(serde_json::to_value(a)?),
        Request::Whois(q) => Some(serde_json::to_value(q)?),
        Request::Rule(c) => Some(serde_json::to_value(c)?),
        Request::VirtualServer(c) => Some(serde_json::to_value(c)?),
        Request::VirtualServerCreate(s) => Some(serde_json::to_value(s)?),
        Request::VirtualServerDelete(r) => Some(serde_json::to_value(r)?),
        Request::Unmap(a) => Some(serde_json::to_value(a)?),
    };
    serde_json::to_string(&WireRequest {
        id: Some(id),
        cmd: req.command().name().to_owned(),
        args,
    })
}

/// Reads a request line. On error, the id is returned if the line had a readable one, so that
/// the error reply can carry it.
pub fn decode_request(line: &[u8]) -> Result<(Option<u64>, Request), (Option<u64>, ControlError)> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| (None, ControlError::BadRequest(format!("not JSON: {e}"))))?;
    let id = v.get("id").and_then(Value::as_u64);
    let w: WireRequest =
        serde_json::from_value(v).map_err(|e| (id, ControlError::BadRequest(e.to_string())))?;
    let cmd = Command::from_name(&w.cmd).ok_or((id, ControlError::UnknownCommand(w.cmd)))?;
    let req = request_with_args(cmd, w.args).map_err(|e| (id, e))?;
    Ok((id, req))
}

fn request_with_args(cmd: Command, args: Option<Value>) -> Result<Request, ControlError> {
    // A missing or null `args` means "no arguments"; commands with optional arguments take `{}`.
    let args = match args {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v,
    };
    let bad = |e: serde_json::Error| ControlError::BadRequest(format!("{cmd}: args: {e}"));
    Ok(match cmd {
        Command::Status
        | Command::Pools
        | Command::Stats
        | Command::Reload
        | Command::Save
        | Command::Rules
        | Command::VirtualServers => {
            if args.as_object().is_none_or(|o| !o.is_empty()) {
                return Err(ControlError::BadRequest(format!(
                    "{cmd} takes no arguments"
                )));
            }
            match cmd {
                Command::Status => Request::Status,
                Command::Pools => Request::Pools,
                Command::Stats => Request::Stats,
                Command::Rules => Request::Rules,
                Command::VirtualServers => Request::VirtualServers,
                Command::Save => Request::Save,
                _ => Request::Reload,
            }
        }
        Command::Sessions => Request::Sessions(serde_json::from_value(args).map_err(bad)?),
        Command::Mappings => Request::Mappings(serde_json::from_value(args).map_err(bad)?),
        Command::Drops => Request::Drops(serde_json::from_value(args).map_err(bad)?),
        Command::Flush => Request::Flush(serde_json::from_value(args).map_err(bad)?),
        Command::Session => Request::Session(serde_json::from_value(args).map_err(bad)?),
        Command::LogLevel => Request::LogLevel(serde_json::from_value(args).map_err(bad)?),
        Command::Whois => Request::Whois(serde_json::from_value(args).map_err(bad)?),
        Command::Rule => Request::Rule(serde_json::from_value(args).map_err(bad)?),
        Command::VirtualServer => {
            Request::VirtualServer(serde_json::from_value(args).map_err(bad)?)
        }
        Command::VirtualServerCreate => {
            Request::VirtualServerCreate(serde_json::from_value(args).map_err(bad)?)
        }
        Command::VirtualServerDelete => {
            Request::VirtualServerDelete(serde_json::from_value(args).map_err(bad)?)
        }
        Command::Unmap => Request::Unmap(serde_json::from_value(args).map_err(bad)?),
    })
}

/// One reply as a line (without the newline).
pub fn encode_reply(id: Option<u64>, reply: &Result<Response, ControlError>) -> String {
    let wire = match reply.as_ref().map(Response::to_value) {
        Ok(Ok(result)) => WireReply {
            id,
            ok: true,
            result: Some(result),
            error: None,
        },
        Ok(Err(e)) => error_reply(id, &ControlError::Internal(format!("encoding reply: {e}"))),
        Err(e) => error_reply(id, e),
    };
    // A reply is made of strings, numbers and maps with string keys, which always serialise.
    serde_json::to_string(&wire).unwrap_or_else(|_| {
        r#"{"id":null,"ok":false,"error":{"code":"internal","message":"encoding reply"}}"#
            .to_owned()
    })
}

fn error_reply(id: Option<u64>, e: &ControlError) -> WireReply {
    WireReply {
        id,
        ok: false,
        result: None,
        error: Some(WireError {
            code: e.code().to_owned(),
            message: e.message(),
        }),
    }
}

/// Why a reply line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// Not JSON, or not shaped like a reply.
    #[error("malformed reply: {0}")]
    Malformed(#[from] serde_json::Error),
    /// `ok` is true but there is no `result`, or false and no `error`.
    #[error("malformed reply: {0}")]
    Incomplete(&'static str),
}

/// Reads a reply line to a request for `cmd`: its id and the daemon's answer.
pub fn decode_reply(
    line: &[u8],
    cmd: Command,
) -> Result<(Option<u64>, Result<Response, ControlError>), ReplyError> {
    let w: WireReply = serde_json::from_slice(line)?;
    let answer = if w.ok {
        let v = w
            .result
            .ok_or(ReplyError::Incomplete("ok without result"))?;
        Ok(Response::from_value(cmd, v)?)
    } else {
        let e = w
            .error
            .ok_or(ReplyError::Incomplete("error without error"))?;
        Err(ControlError::from_code(&e.code, e.message))
    };
    Ok((w.id, answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgate_core::Direction;

    fn ep(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::from(a), port)
    }

    fn session(internal: Endpoint, proto: Protocol, ext_port: u16) -> SessionInfo {
        SessionInfo {
            proto,
            internal,
            external: ep([198, 51, 100, 1], ext_port),
            remote: ep([203, 0, 113, 10], 3478),
            tcp: (proto == Protocol::Tcp).then_some(TcpPhase::Established),
            last_seen: Instant::from_secs(100),
            expires: Instant::from_secs(400),
            origin: natgate_core::SessionOrigin::Dynamic,
            softwire: None,
        }
    }

    #[test]
    fn every_request_round_trips() {
        let reqs = [
            Request::Status,
            Request::Sessions(TableQuery {
                subscriber: Some(Ipv4Addr::new(100, 64, 0, 10)),
                proto: Some(Protocol::Udp),
                external_port: Some(40000),
                count_only: true,
                limit: Some(5),
            }),
            Request::Mappings(TableQuery::default()),
            Request::Pools,
            Request::Stats,
            Request::Drops(DropsQuery { all: true }),
            Request::Flush(FlushQuery::default()),
            Request::Flush(FlushQuery {
                subscriber: Some(Ipv4Addr::new(100, 64, 0, 10)),
            }),
            Request::Session(SessionChange::Delete {
                proto: Protocol::Tcp,
                internal: "100.64.0.10:5000".parse().expect("internal"),
                remote: "203.0.113.10:443".parse().expect("remote"),
            }),
            Request::Reload,
            Request::Save,
            Request::LogLevel(LogLevelArgs {
                level: LogLevel::Debug,
            }),
            Request::Whois(WhoisQuery {
                address: Ipv4Addr::new(198, 51, 100, 7),
                port: 40123,
                proto: None,
                at_ms: Some(1_795_364_070_123),
            }),
            Request::Whois(WhoisQuery {
                address: Ipv4Addr::new(198, 51, 100, 7),
                port: 1,
                proto: Some(Protocol::Tcp),
                at_ms: None,
            }),
            Request::Rules,
            Request::Rule(RuleChange::Insert {
                id: natgate_core::rules::RuleId(3),
                rule: super::super::static_nat::parse_rule_toml(
                    "direction = \"outbound\", bidirectional = true, src = \"100.64.0.10/32\", \
                     action.translate.src = { addr = \"198.18.1.10/32\" }",
                )
                .expect("rule"),
            }),
            Request::Rule(RuleChange::Delete {
                id: natgate_core::rules::RuleId(1),
                flush: false,
            }),
            Request::Rule(RuleChange::Delete {
                id: natgate_core::rules::RuleId(2),
                flush: true,
            }),
            Request::VirtualServers,
            Request::VirtualServerCreate(
                super::super::static_nat::parse_virtual_server_toml(
                    "[[virtual-server]]\naddress = \"203.0.113.80\"\nport = 80\n\
                     protocol = \"tcp\"\nscheduler = \"round-robin\"\n\
                     real-servers = [{ address = \"10.0.0.2\", weight = 3 }]",
                )
                .expect("virtual server"),
            ),
            Request::VirtualServerDelete("203.0.113.80:80/tcp".parse().expect("vip")),
            Request::VirtualServer(VirtualServerChange {
                virtual_server: "203.0.113.80:80/tcp".parse().expect("vip"),
                real_server: "100.64.0.10:8080".parse().expect("real"),
                op: RealServerOp::Add,
                weight: Some(2),
                force: false,
            }),
        ];
        for (i, r) in reqs.iter().enumerate() {
            let line = encode_request(i as u64, r).expect("encode");
            assert!(!line.contains('\n'));
            assert_eq!(
                decode_request(line.as_bytes()).expect("decode"),
                (Some(i as u64), r.clone())
            );
        }
    }

    #[test]
    fn documented_request_shapes_parse() {
        let (id, r) = decode_request(
            br#"{"id": 7, "cmd": "sessions", "args": {"subscriber": "100.64.0.10", "proto": "udp", "external_port": 40000, "count_only": true}}"#,
        )
        .expect("decode");
        assert_eq!(id, Some(7));
        let Request::Sessions(q) = r else {
            panic!("{r:?}")
        };
        assert_eq!(q.subscriber, Some(Ipv4Addr::new(100, 64, 0, 10)));
        assert_eq!(q.proto, Some(Protocol::Udp));
        assert!(q.count_only);
        // No args and null args mean none; `{}` is fine for a command without arguments.
        for line in [
            r#"{"cmd":"sessions"}"#,
            r#"{"cmd":"sessions","args":null}"#,
            r#"{"cmd":"status","args":{}}"#,
        ] {
            assert!(decode_request(line.as_bytes()).is_ok(), "{line}");
        }
        let (_, r) =
            decode_request(br#"{"cmd":"log-level","args":{"level":"warn"}}"#).expect("decode");
        assert_eq!(
            r,
            Request::LogLevel(LogLevelArgs {
                level: LogLevel::Warn
            })
        );
    }

    #[test]
    fn documented_flush_and_session_shapes_parse() {
        let (_, r) = decode_request(br#"{"cmd":"flush"}"#).expect("decode");
        assert_eq!(r, Request::Flush(FlushQuery { subscriber: None }));
        let (_, r) = decode_request(br#"{"cmd":"flush","args":{"subscriber":"100.64.0.10"}}"#)
            .expect("decode");
        assert_eq!(
            r,
            Request::Flush(FlushQuery {
                subscriber: Some(Ipv4Addr::new(100, 64, 0, 10))
            })
        );
        let (_, r) = decode_request(
            br#"{"cmd":"session","args":{"op":"delete","proto":"udp","internal":"100.64.0.10:5000","remote":"203.0.113.10:3478"}}"#,
        )
        .expect("decode");
        assert_eq!(
            r,
            Request::Session(SessionChange::Delete {
                proto: Protocol::Udp,
                internal: "100.64.0.10:5000".parse().expect("internal"),
                remote: "203.0.113.10:3478".parse().expect("remote"),
            })
        );
        for bad in [
            r#"{"cmd":"flush","args":{"subscriber":"100.64.0"}}"#,
            r#"{"cmd":"session","args":{"op":"delete","proto":"udp","internal":"100.64.0.10:5000"}}"#,
            r#"{"cmd":"session","args":{"op":"kill","proto":"udp","internal":"100.64.0.10:5000","remote":"203.0.113.10:1"}}"#,
        ] {
            let (_, e) = decode_request(bad.as_bytes()).expect_err(bad);
            assert_eq!(e.code(), "bad_request", "{bad}");
        }
    }

    #[test]
    fn session_origins_are_named() {
        let vs = natgate_core::SessionOrigin::VirtualServer {
            address: ep([203, 0, 113, 80], 80),
            server: natgate_core::vserver::RealServerId(1),
        };
        assert_eq!(vs.to_string(), "vserver 203.0.113.80:80 server 1");
        assert_eq!(
            natgate_core::SessionOrigin::Rule(natgate_core::rules::RuleId(10)).to_string(),
            "rule 10"
        );
        let mut s = session(ep([100, 64, 0, 10], 5000), Protocol::Udp, 40000);
        s.origin = natgate_core::SessionOrigin::Rule(natgate_core::rules::RuleId(3));
        assert_eq!(
            SessionRow::new(&s, Instant::from_secs(100)).origin,
            "rule 3"
        );
        // A reply from an older daemon without the field reads as dynamic.
        let row: SessionRow = serde_json::from_str(
            r#"{"proto":"udp","internal":"100.64.0.10:1","external":"198.51.100.1:2",
               "remote":"203.0.113.10:3","tcp_state":null,"idle_secs":0,"expires_in_secs":1}"#,
        )
        .expect("row");
        assert_eq!(row.origin, "dynamic");
    }

    #[test]
    fn documented_rule_and_vserver_shapes_parse() {
        let (_, r) = decode_request(
            br#"{"cmd":"rule","args":{"op":"append","rule":{"id":0,"direction":"inbound","proto":"tcp","dst":"198.51.100.10/32","dst-ports":80,"action":{"translate":{"dst":{"addr":"100.64.0.11/32","port":8888}}}}}}"#,
        )
        .expect("decode");
        assert!(
            matches!(r, Request::Rule(RuleChange::Append { .. })),
            "{r:?}"
        );
        let (_, r) =
            decode_request(br#"{"cmd":"rule","args":{"op":"delete","id":4}}"#).expect("decode");
        assert_eq!(
            r,
            Request::Rule(RuleChange::Delete {
                id: natgate_core::rules::RuleId(4),
                flush: false
            })
        );
        let (_, r) =
            decode_request(br#"{"cmd":"rule","args":{"op":"delete","id":4,"flush":true}}"#)
                .expect("decode");
        assert_eq!(
            r,
            Request::Rule(RuleChange::Delete {
                id: natgate_core::rules::RuleId(4),
                flush: true
            })
        );
        let (_, r) = decode_request(
            br#"{"cmd":"vserver","args":{"virtual_server":{"protocol":"tcp","address":"203.0.113.80:80"},"real_server":{"address":"100.64.0.10"},"op":"remove","force":true}}"#,
        )
        .expect("decode");
        let Request::VirtualServer(c) = r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (c.op, c.force, c.real_server.port),
            (RealServerOp::Remove, true, None)
        );
        assert!(decode_request(br#"{"cmd":"rule","args":{"op":"move","id":4}}"#).is_err());
        assert!(decode_request(br#"{"cmd":"vservers","args":{"x":1}}"#).is_err());
    }

    #[test]
    fn whois_request_and_reply_shapes() {
        let (_, r) = decode_request(
            br#"{"cmd":"whois","args":{"address":"198.51.100.7","port":40123,"at_ms":1795364070123}}"#,
        )
        .expect("decode");
        assert_eq!(
            r,
            Request::Whois(WhoisQuery {
                address: Ipv4Addr::new(198, 51, 100, 7),
                port: 40123,
                proto: None,
                at_ms: Some(1_795_364_070_123),
            })
        );
        for bad in [
            r#"{"cmd":"whois"}"#,
            r#"{"cmd":"whois","args":{"address":"198.51.100.7"}}"#,
            r#"{"cmd":"whois","args":{"address":"198.51.100.7","port":70000}}"#,
            r#"{"cmd":"whois","args":{"address":"198.51.100.7","port":1,"when":2}}"#,
        ] {
            let (_, e) = decode_request(bad.as_bytes()).expect_err(bad);
            assert_eq!(e.code(), "bad_request", "{bad}");
        }
        let resp = Response::Whois(WhoisList {
            answers: vec![WhoisRow {
                subscriber: Ipv4Addr::new(100, 64, 0, 10),
                external: Ipv4Addr::new(198, 51, 100, 7),
                port_start: 40000,
                port_end: 40511,
                proto: None,
                since_ms: Some(1_795_364_000_000),
                until_ms: None,
                source: crate::observability::logsink::whois::WhoisSource::Log,
            }],
        });
        let line = encode_reply(Some(2), &Ok(resp.clone()));
        assert!(line.contains(r#""source":"log""#), "{line}");
        let (_, back) = decode_reply(line.as_bytes(), Command::Whois).expect("decode");
        assert_eq!(back.expect("ok"), resp);
    }

    #[test]
    fn bad_requests_are_named_and_keep_their_id() {
        let cases: [(&str, Option<u64>, &str); 9] = [
            ("", None, "bad_request"),
            ("{", None, "bad_request"),
            ("[1,2]", None, "bad_request"),
            (r#"{"id":3}"#, Some(3), "bad_request"),
            (r#"{"id":4,"cmd":"reboot"}"#, Some(4), "unknown_command"),
            (
                r#"{"id":5,"cmd":"status","args":{"x":1}}"#,
                Some(5),
                "bad_request",
            ),
            (
                r#"{"id":6,"cmd":"sessions","args":{"proto":"sctp"}}"#,
                Some(6),
                "bad_request",
            ),
            (r#"{"id":7,"cmd":"log-level"}"#, Some(7), "bad_request"),
            (
                r#"{"id":8,"cmd":"stats","extra":true}"#,
                Some(8),
                "bad_request",
            ),
        ];
        for (line, want_id, code) in cases {
            let (id, e) = decode_request(line.as_bytes()).expect_err(line);
            assert_eq!((id, e.code()), (want_id, code), "{line}: {e}");
        }
    }

    #[test]
    fn replies_round_trip_and_errors_keep_code_and_message() {
        let resp = Response::Drops(DropList {
            total: 3,
            drops: vec![DropRow {
                reason: "filtered".into(),
                packets: 3,
            }],
        });
        let line = encode_reply(Some(9), &Ok(resp.clone()));
        let (id, back) = decode_reply(line.as_bytes(), Command::Drops).expect("decode");
        assert_eq!(id, Some(9));
        assert_eq!(back.expect("ok"), resp);

        let line = encode_reply(Some(1), &Err(ControlError::Rejected("pool: empty".into())));
        assert_eq!(
            line,
            r#"{"id":1,"ok":false,"error":{"code":"rejected","message":"pool: empty"}}"#
        );
        let (_, back) = decode_reply(line.as_bytes(), Command::Reload).expect("decode");
        assert_eq!(back, Err(ControlError::Rejected("pool: empty".into())));
        assert!(decode_reply(br#"{"id":1,"ok":true}"#, Command::Stats).is_err());
    }

    #[test]
    fn query_filters_and_limits_then_merge_counts_add() {
        let a = ep([100, 64, 0, 10], 5000);
        let b = ep([100, 64, 0, 11], 5000);
        let sessions = [
            session(a, Protocol::Udp, 40000),
            session(a, Protocol::Tcp, 40001),
            session(b, Protocol::Udp, 40002),
            session(a, Protocol::Udp, 40003),
        ];
        let now = Instant::from_secs(130);
        let q = TableQuery {
            subscriber: Some(a.addr),
            proto: Some(Protocol::Udp),
            ..TableQuery::default()
        };
        let l = q.collect_sessions(sessions, now);
        assert_eq!(l.count, 2);
        assert_eq!(l.sessions[0].idle_secs, 30);
        assert_eq!(l.sessions[0].expires_in_secs, 270);
        assert_eq!(l.sessions[0].tcp_state, None);

        let q = TableQuery {
            external_port: Some(40001),
            ..TableQuery::default()
        };
        let l = q.collect_sessions(sessions, now);
        assert_eq!(l.count, 1);
        assert_eq!(l.sessions[0].tcp_state, Some(TcpStateName::Established));

        let q = TableQuery {
            limit: Some(1),
            ..TableQuery::default()
        };
        let mut merged = q.collect_sessions(sessions, now);
        assert_eq!((merged.count, merged.sessions.len()), (4, 1));
        merged.merge(q.collect_sessions(sessions, now));
        assert_eq!((merged.count, merged.sessions.len()), (8, 2));
        merged.finish(&q);
        assert_eq!((merged.count, merged.sessions.len()), (8, 1));

        let q = TableQuery {
            count_only: true,
            ..TableQuery::default()
        };
        let l = q.collect_sessions(sessions, now);
        assert_eq!((l.count, l.sessions.len()), (4, 0));
    }

    #[test]
    fn pools_merge_by_address_and_utilisation_follows_busiest_protocol() {
        let usage = AddressUsage {
            addr: Ipv4Addr::new(198, 51, 100, 1),
            in_use: [0, 6451, 100],
            held_down: [0, 0, 0],
            subscribers: 2,
        };
        let cap = PerProtocol::port_capacity(false);
        let mut pools = PoolList {
            addresses: vec![PoolRow::new(&usage, cap)],
        };
        assert!((pools.addresses[0].utilisation_percent - 10.0).abs() < 0.01);
        let other = AddressUsage {
            addr: Ipv4Addr::new(198, 51, 100, 0),
            ..usage.clone()
        };
        pools.merge(PoolList {
            addresses: vec![PoolRow::new(&usage, cap), PoolRow::new(&other, cap)],
        });
        assert_eq!(pools.addresses.len(), 2);
        assert_eq!(pools.addresses[0].address, other.addr);
        let merged = &pools.addresses[1];
        assert_eq!(merged.in_use.tcp, 2 * 6451);
        assert_eq!(merged.subscribers, 4);
        assert!((merged.utilisation_percent - 20.0).abs() < 0.01);
    }

    /// With port blocks the capacity is the ports inside the blocks, the utilisation the share
    /// of blocks taken, and two workers' rows (disjoint shares of the blocks) add up.
    #[test]
    fn pools_with_port_blocks_count_blocks_and_their_ports() {
        let usage = AddressUsage {
            addr: Ipv4Addr::new(198, 51, 100, 1),
            in_use: [0, 3, 700],
            held_down: [0, 1, 0],
            subscribers: 2,
        };
        let sets = |in_use, held_down, free| PortSetUsage {
            addr: usage.addr,
            kind: PortSetKind::Block,
            size: 512,
            in_use,
            held_down,
            free,
        };
        let mut pools = PoolList {
            addresses: vec![PoolRow::with_port_sets(&usage, &sets(2, 1, 60))],
        };
        let row = &pools.addresses[0];
        assert_eq!(row.capacity.udp, 63 * 512);
        assert_eq!(row.capacity.icmp, 63 * 512, "a block serves every protocol");
        assert!((row.utilisation_percent - 100.0 * 3.0 / 63.0).abs() < 0.01);
        pools.merge(PoolList {
            addresses: vec![PoolRow::with_port_sets(&usage, &sets(0, 0, 63))],
        });
        let row = &pools.addresses[0];
        let s = row.port_sets.expect("sets");
        assert_eq!(
            (s.kind, s.in_use, s.held_down, s.free, s.total()),
            (PortSetRowKind::Block, 2, 1, 123, 126)
        );
        assert_eq!(row.capacity.tcp, 126 * 512, "64512 / 512 blocks of 512");
        assert!((row.utilisation_percent - 100.0 * 3.0 / 126.0).abs() < 0.01);
        let json = serde_json::to_value(row).expect("json");
        assert_eq!(json["port_sets"]["kind"], "block");
        assert_eq!(json["port_sets"]["free"], 123);
        let plain = PoolRow::new(&usage, PerProtocol::port_capacity(false));
        assert!(
            serde_json::to_value(&plain)
                .expect("json")
                .get("port_sets")
                .is_none(),
            "dynamic allocation has no port sets"
        );
    }

    #[test]
    fn stats_and_drops_sum_engines() {
        let mut c = Counters::default();
        c.count_forward(Direction::Outbound, 100);
        c.count_forward(Direction::Inbound, 60);
        c.count_drop(DropReason::Filtered);
        c.count_drop(DropReason::Filtered);
        c.count_drop(DropReason::NoMapping);
        let s = StatsInfo::from_counters([&c, &c]);
        assert_eq!(
            s.outbound,
            Traffic {
                packets: 2,
                bytes: 200
            }
        );
        assert_eq!(
            s.inbound,
            Traffic {
                packets: 2,
                bytes: 120
            }
        );
        assert_eq!(s.dropped_packets, 6);

        // The static NAT counters are summed too, apart from the dynamic sessions.
        let mut st = Counters::default();
        st.static_sessions_created = 3;
        st.vserver_sessions_created = 2;
        st.static_sessions_deleted = 1;
        st.exempted_packets = 5;
        let s = StatsInfo::from_counters([&st, &st]);
        assert_eq!(
            (
                s.static_sessions_created,
                s.vserver_sessions_created,
                s.static_sessions_deleted,
                s.exempted_packets,
                s.sessions_created
            ),
            (6, 4, 2, 10, 0)
        );

        let d = DropList::from_counters([&c, &c], &DropsQuery::default());
        assert_eq!(d.total, 6);
        let names: Vec<_> = d
            .drops
            .iter()
            .map(|r| (r.reason.as_str(), r.packets))
            .collect();
        assert_eq!(names, [("no_mapping", 2), ("filtered", 4)]);
        let all = DropList::from_counters([&c], &DropsQuery { all: true });
        assert_eq!(all.drops.len(), DropReason::COUNT);
    }
}
