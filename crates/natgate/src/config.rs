//! The natgate config file: one TOML document, parsed into plain serde structs
//! ([`FileConfig`], unknown keys refused) and validated into [`Settings`].
//!
//! Errors name the key and the line: serde errors carry the TOML span, and a
//! rule broken after parsing (an RFC minimum, a contradiction between keys) is
//! located by searching the document for the key it names.
//!
//! ```toml
//! [interfaces]
//! inside = "lan0"
//! outside = "wan0"
//!
//! [pool]
//! addresses = ["198.51.100.0/28"]
//!
//! [behavior]
//! preset = "rfc6888-cgn"
//! ```
//!
//! Static NAT rules (`[[rule]]`, `docs/static-nat.md`) and virtual servers
//! (`[[virtual-server]]`, `docs/virtual-servers.md`) are the core's own serde types, so the file
//! says exactly what the core checks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use natgate_core::config::{
    Allocation, Behavior, BehaviorSpec, Ipv4Prefix, Limits, SubscriberLimits, TtlHandling,
};
use natgate_core::portmap::PortMapConfig;
use natgate_core::rules::RuleChain;
use natgate_core::vserver::VirtualServerSpec;
use natgate_core::{Config, ConfigError, ValidConfig};
use serde::{Deserialize, Serialize};

/// Default TUN name prefix: the devices are `PREFIX-in` and `PREFIX-out`.
pub const DEFAULT_TUN_NAME: &str = "natgate";
/// Default priority of natgate's policy-routing rule (recognisable, so a stale one is found).
pub const DEFAULT_RULE_PRIORITY: u32 = 10_742;
/// Default routing table id of natgate's inside-to-TUN table.
pub const DEFAULT_TABLE: u32 = 10_742;
/// Most sessions a gateway may hold (the core's table limit, 2^30).
const MAX_SESSIONS: u32 = 1 << 30;
/// Most addresses a pool may list after CIDR expansion.
pub const MAX_POOL_ADDRESSES: usize = 65_536;
/// The socket path the daemon and `natgate ctl` use unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/natgate/control.sock";

/// Default NAT port range when the pool is the outside interface's own address: the kernel's
/// own sockets get 1024-19999 (set as the namespace's `ip_local_port_range`).
pub const DEFAULT_NAT_PORTS: (u16, u16) = (20_000, 65_535);

/// The config file as written. Every section but `interfaces` and `pool` is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// The gateway's interfaces.
    pub interfaces: InterfacesSection,
    /// The external pool.
    pub pool: PoolSection,
    /// The TUN data plane.
    #[serde(default)]
    pub tun: TunSection,
    /// Which data path carries established flows.
    #[serde(default)]
    pub dataplane: DataplaneSection,
    /// Behaviour: a preset plus single overrides.
    #[serde(default)]
    pub behavior: BehaviorSpec,
    /// State bounds; a missing key keeps its default.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Control socket.
    #[serde(default)]
    pub control: ControlSection,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// What is kept across a restart.
    #[serde(default)]
    pub state: StateSection,
    /// How external ports are handed out: `mode = "dynamic"` (default), `"port-block"` or
    /// `"deterministic"`, with the core's parameters in kebab-case.
    #[serde(default)]
    pub allocation: Allocation,
    /// Translation logs: the queue, and any combination of sinks.
    #[serde(default)]
    pub log: LogSection,
    /// Allow values the RFCs forbid (short timers, dependent mapping, ...).
    #[serde(default)]
    pub lab: bool,
    /// Static NAT rules (`[[rule]]`), checked for validity and conflicts as they load.
    #[serde(default, skip_serializing_if = "RuleChain::is_empty")]
    pub rule: RuleChain,
    /// Virtual servers (`[[virtual-server]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_server: Vec<VirtualServerSpec>,
    /// Port-mapping protocols (PCP, NAT-PMP) answered on the inside: the core's own settings
    /// (`docs/port-mapping.md`).
    #[serde(default)]
    pub port_mapping: PortMapConfig,
}

/// `[interfaces]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InterfacesSection {
    /// The subscriber-facing interface.
    pub inside: String,
    /// The upstream-facing interface.
    pub outside: String,
    /// Source of the ICMP errors natgate sends to subscribers; default: the inside
    /// interface's first address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside_address: Option<Ipv4Addr>,
    /// Subscriber networks (CIDR). Only packets from these sources are translated; any other
    /// source arriving on `inside` is dropped (`source_not_inside`) and never answered, so a
    /// spoofed source can take no session and draw no ICMP. Default (key left out): the
    /// inside interface's own subnets, found at start, which is right for subscribers on the
    /// inside link; list every subscriber network (e.g. `100.64.0.0/10`) when they sit behind a
    /// router.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inside_networks: Vec<String>,
}

/// `[pool]`: either `addresses` (assigned to no interface) or `outside-address = true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolSection {
    /// Addresses or CIDR prefixes, e.g. `["198.51.100.0/28", "203.0.113.7"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Use the outside interface's own address (home gateway).
    #[serde(default)]
    pub outside_address: bool,
    /// External ports the NAT may hand out, `"LOW-HIGH"`; only with `outside-address`, where
    /// the rest is left to the gateway's own sockets. Default `"20000-65535"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_ports: Option<String>,
}

/// `[dataplane]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DataplaneSection {
    /// `"auto"` (default): the in-kernel TC fast path where it can be loaded, else the slow
    /// path alone; `"tc"`: the fast path or refuse to start; `"off"`: the slow path alone.
    #[serde(default)]
    pub fast_path: FastPathMode,
}

/// `[dataplane] fast-path`: where established flows are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FastPathMode {
    /// The TC fast path where it can be loaded; the slow path alone otherwise (said in one
    /// log line at start).
    #[default]
    Auto,
    /// The TC fast path, or refuse to start.
    Tc,
    /// Established flows carried at the XDP hook (native XDP in the interfaces' drivers), with
    /// the TC program behind it; refuse to start without native XDP.
    Xdp,
    /// Every packet through the slow path.
    Off,
}

/// `[tun]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TunSection {
    /// Name prefix of the two TUN devices (`NAME-in`, `NAME-out`), at most 11 bytes.
    #[serde(default = "default_tun_name")]
    pub name: String,
    /// Queues per device, one worker thread each.
    #[serde(default = "default_queues")]
    pub queues: usize,
    /// Priority of the `iif INSIDE lookup TABLE` rule.
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    /// Routing table holding `default dev NAME-in` and the fail-closed blackhole under it.
    #[serde(default = "default_table")]
    pub table: u32,
}

impl Default for TunSection {
    fn default() -> Self {
        TunSection {
            name: default_tun_name(),
            queues: default_queues(),
            rule_priority: default_rule_priority(),
            table: default_table(),
        }
    }
}

fn default_tun_name() -> String {
    DEFAULT_TUN_NAME.to_owned()
}
fn default_queues() -> usize {
    1
}
fn default_rule_priority() -> u32 {
    DEFAULT_RULE_PRIORITY
}
fn default_table() -> u32 {
    DEFAULT_TABLE
}

/// `[limits]`: each key overrides the [`Limits`] field of the same name. `max-sessions`,
/// `max-mappings`, `max-memory` and `global-answer-rate` (with its burst) are the gateway's:
/// [`worker_config`] splits them across the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(missing_docs)] // each field overrides the `Limits` field of the same name
pub struct LimitsSpec {
    pub max_sessions: Option<u32>,
    pub max_mappings: Option<u32>,
    pub max_held_syns: Option<u32>,
    pub max_fragment_datagrams: Option<u32>,
    pub max_held_fragments: Option<u32>,
    pub max_held_fragments_per_source: Option<u32>,
    pub event_queue: Option<u32>,
    pub max_ports_in_hold_down: Option<u32>,
    /// Most bytes the engines' state may take, for the gateway as a whole (each worker's
    /// engine gets its share, its fixed parts included); with `max-sessions` left out,
    /// `max-sessions` is derived to fit (see `Config::fit_sessions_to_memory`).
    pub max_memory: Option<u64>,
    pub max_static_sessions: Option<u32>,
    pub answer_rate: Option<u32>,
    pub answer_burst: Option<u32>,
    pub global_answer_rate: Option<u32>,
    pub global_answer_burst: Option<u32>,
    /// `[limits.subscriber]`: per-subscriber quotas and creation rate (RFC 6888 REQ-4, REQ-5);
    /// every field optional, zero meaning no limit.
    pub subscriber: Option<SubscriberLimits>,
}

impl LimitsSpec {
    /// The defaults with the overrides applied.
    pub fn resolve(&self) -> Limits {
        let mut l = Limits::default();
        macro_rules! apply {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { l.$f = v; } )* };
        }
        apply!(
            max_sessions,
            max_mappings,
            max_held_syns,
            max_fragment_datagrams,
            max_held_fragments,
            max_held_fragments_per_source,
            event_queue,
            max_ports_in_hold_down,
            max_static_sessions,
            answer_rate,
            answer_burst,
            global_answer_rate,
            global_answer_burst
        );
        if let Some(sub) = self.subscriber {
            l.subscriber = sub;
        }
        l.max_memory = self.max_memory;
        l
    }
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ControlSection {
    /// Serve the control socket (`natgate ctl`).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Path of the control socket (created owner-only).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection {
            enabled: true,
            socket: default_socket(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// `[metrics]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetricsSection {
    /// Address of the Prometheus text endpoint; none means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `[state]`: warm restart. natgate writes its sessions, mappings and held ports to the
/// snapshot file when it stops (and on `ctl save`), and at start restores them if they fit the
/// config, so that a restart or an upgrade breaks no subscriber's connections
/// (docs/operations.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateSection {
    /// The snapshot file; none means every start is a cold one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
}

/// `[log]`: translation logs (RFC 6888 REQ-12). Events leave the workers through one bounded
/// queue; each configured sink gets every event that passes the record filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogSection {
    /// Events the queue holds; past it events are lost (and counted), never waited for.
    #[serde(default = "default_log_queue")]
    pub queue: usize,
    /// Log every session and mapping. Default: on with dynamic allocation (a mapping is the
    /// unit of allocation there), off with port blocks and deterministic NAT, whose block
    /// records (or formula) already answer "who had this port" (RFC 6888 REQ-14, RFC 7422).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_session: Option<bool>,
    /// Put remote endpoints in session records (RFC 6888 REQ-12: off unless asked for).
    #[serde(default)]
    pub log_destinations: bool,
    /// fsync the files (JSON lines, block log) after every batch.
    #[serde(default)]
    pub durable: bool,
    /// JSON lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<LogFileSection>,
    /// Syslog, RFC 5424.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogSection>,
    /// IPFIX, RFC 7011 with the RFC 8158 elements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipfix: Option<IpfixSection>,
    /// The block log behind `natgate ctl whois`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_log: Option<BlockLogSection>,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            queue: default_log_queue(),
            per_session: None,
            log_destinations: false,
            durable: false,
            file: None,
            syslog: None,
            ipfix: None,
            block_log: None,
        }
    }
}

fn default_log_queue() -> usize {
    65_536
}

/// `[log.file]`: JSON lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogFileSection {
    /// `"stderr"`, `"stdout"` or a file path.
    pub path: String,
    /// Rotate a file when it would pass this size; 0 never rotates.
    #[serde(default)]
    pub max_bytes: u64,
    /// Rotated files to keep (`PATH.1` ...).
    #[serde(default)]
    pub keep: u32,
}

/// `[log.syslog]`: exactly one of `udp` and `unix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SyslogSection {
    /// A collector, `ADDRESS:PORT` (RFC 5426).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<SocketAddr>,
    /// A local datagram socket such as `/dev/log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
    /// `kern`, `user`, ..., `local0`..`local7`, or the code 0-23.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// The HOSTNAME field; default: the machine's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The enterprise number in the SD-ID `nat@N`.
    #[serde(default = "default_enterprise")]
    pub enterprise: u32,
}

fn default_facility() -> String {
    "local0".to_owned()
}
fn default_enterprise() -> u32 {
    crate::observability::logsink::syslog::DOCUMENTATION_ENTERPRISE
}

/// `[log.ipfix]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct IpfixSection {
    /// The collector, `ADDRESS:PORT` (UDP).
    pub collector: SocketAddr,
    /// Seconds between template retransmissions (RFC 7011 section 8.4).
    #[serde(default = "default_template_refresh")]
    pub template_refresh: u32,
    /// Observation domain id.
    #[serde(default)]
    pub observation_domain: u32,
    /// Largest message, bytes (keep it under the path MTU).
    #[serde(default = "default_max_message")]
    pub max_message: usize,
}

fn default_template_refresh() -> u32 {
    60
}
fn default_max_message() -> usize {
    1400
}

/// `[log.block-log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BlockLogSection {
    /// The append-only file.
    pub path: PathBuf,
    /// Released blocks kept in memory for `whois`; older ones are read from the file.
    #[serde(default = "default_max_intervals")]
    pub max_intervals: usize,
}

fn default_max_intervals() -> usize {
    1 << 20
}

/// Syslog facility names (RFC 5424 table 1), by code.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// The validated `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Queue capacity.
    pub queue: usize,
    /// Session and mapping records pass the filter.
    pub per_session: bool,
    /// Remote endpoints in session records.
    pub log_destinations: bool,
    /// fsync per batch.
    pub durable: bool,
    /// JSON lines.
    pub file: Option<LogFileSection>,
    /// Syslog.
    pub syslog: Option<SyslogSettings>,
    /// IPFIX.
    pub ipfix: Option<IpfixSection>,
    /// Block log.
    pub block_log: Option<BlockLogSection>,
}

impl LogSettings {
    /// Whether any sink is configured (without one, events are only counted).
    pub fn any_sink(&self) -> bool {
        self.file.is_some()
            || self.syslog.is_some()
            || self.ipfix.is_some()
            || self.block_log.is_some()
    }
}

/// The validated `[log.syslog]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSettings {
    /// Where messages go.
    pub target: crate::observability::logsink::syslog::SyslogTarget,
    /// Facility.
    pub facility: crate::observability::logsink::syslog::Facility,
    /// HOSTNAME, if configured.
    pub hostname: Option<String>,
    /// SD-ID enterprise number.
    pub enterprise: u32,
}

/// Which addresses the NAT hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    /// These addresses, on no interface: natgate routes them to its TUN and answers ARP.
    Addresses(Vec<Ipv4Addr>),
    /// The outside interface's own address(es), found at start.
    OutsideAddress {
        /// Ports the NAT may use; the kernel's own sockets get the rest.
        nat_ports: (u16, u16),
    },
}

/// A validated config: everything natgate needs that does not depend on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Inside interface name.
    pub inside: String,
    /// Outside interface name.
    pub outside: String,
    /// Explicit inside address, if configured.
    pub inside_address: Option<Ipv4Addr>,
    /// The subscriber networks the file lists; empty: the inside interface's own subnets,
    /// found at start.
    pub inside_networks: Vec<Ipv4Prefix>,
    /// The pool.
    pub pool: PoolSource,
    /// TUN name prefix.
    pub tun_name: String,
    /// Queues (workers).
    pub queues: usize,
    /// Policy rule priority.
    pub rule_priority: u32,
    /// Routing table id.
    pub table: u32,
    /// Resolved behaviour.
    pub behavior: Behavior,
    /// Resolved limits.
    pub limits: Limits,
    /// Lab mode.
    pub lab: bool,
    /// Control socket path, if enabled.
    pub control_socket: Option<PathBuf>,
    /// Metrics listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// The warm-restart snapshot file, if any.
    pub snapshot: Option<PathBuf>,
    /// Where established flows are carried.
    pub fast_path: FastPathMode,
    /// How external ports are handed out.
    pub allocation: Allocation,
    /// Translation logs.
    pub log: LogSettings,
    /// The static NAT rule chain. Starts as the file's; `natgate ctl rule ...` changes the
    /// running copy (and `ctl reload` puts the file's back).
    pub rules: RuleChain,
    /// The virtual servers. Start as the file's; `natgate ctl vserver ...` changes the running
    /// copy's real servers.
    pub virtual_servers: Vec<VirtualServerSpec>,
    /// The port-mapping server's settings.
    pub port_mapping: PortMapConfig,
    /// The file as parsed (for printing the effective config).
    pub file: FileConfig,
}

/// A config that cannot be used; the message names the key and, where known, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// A value that breaks a rule.
    #[error("{}{key}: {why}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Invalid {
        /// The offending key.
        key: String,
        /// Its line (1-based), if found.
        line: Option<usize>,
        /// What is wrong.
        why: String,
    },
}

impl Settings {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a config document.
    pub fn parse(text: &str) -> Result<Self, ConfigFileError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigFileError::Parse(e.to_string()))?;
        let invalid = |key: &str, why: String| ConfigFileError::Invalid {
            key: key.to_owned(),
            line: find_key_line(text, key),
            why,
        };
        let tun = &file.tun;
        if tun.name.is_empty()
            || tun.name.len() > 11
            || !tun
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "name",
                format!(
                    "TUN name {:?} must be 1-11 letters, digits, '-' or '_' (it gets -in/-out)",
                    tun.name
                ),
            ));
        }
        if tun.queues == 0 || tun.queues > 64 {
            return Err(invalid(
                "queues",
                format!("{} is not in 1..=64", tun.queues),
            ));
        }
        if tun.table == 0 || tun.table >= 253 && tun.table <= 255 {
            return Err(invalid(
                "table",
                format!("{} is a reserved table id (0, 253-255)", tun.table),
            ));
        }
        if tun.rule_priority < 5 || tun.rule_priority >= 32_766 {
            return Err(invalid(
                "rule-priority",
                format!(
                    "{} must be between 5 and 32765 (natgate uses it and the four below it)",
                    tun.rule_priority
                ),
            ));
        }
        for (key, name) in [
            ("inside", &file.interfaces.inside),
            ("outside", &file.interfaces.outside),
        ] {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(invalid(key, format!("{name:?} is not an interface name")));
            }
        }
        if file.interfaces.inside == file.interfaces.outside {
            return Err(invalid(
                "outside",
                "inside and outside must be different interfaces".into(),
            ));
        }
        let mut inside_networks = Vec::new();
        for n in &file.interfaces.inside_networks {
            let (net, len) = parse_prefix(n).map_err(|why| invalid("inside-networks", why))?;
            // parse_prefix refused host bits and lengths past 32.
            inside_networks.extend(Ipv4Prefix::new(net, len));
        }
        let pool = match (file.pool.addresses.is_empty(), file.pool.outside_address) {
            (false, true) => {
                return Err(invalid(
                    "outside-address",
                    "give either addresses or outside-address = true, not both".into(),
                ));
            }
            (true, false) => {
                return Err(invalid(
                    "pool",
                    "give addresses = [...] or outside-address = true".into(),
                ));
            }
            (true, true) => {
                let nat_ports = match &file.pool.nat_ports {
                    None => DEFAULT_NAT_PORTS,
                    Some(s) => parse_port_range(s).map_err(|why| invalid("nat-ports", why))?,
                };
                PoolSource::OutsideAddress { nat_ports }
            }
            (false, false) => {
                if file.pool.nat_ports.is_some() {
                    return Err(invalid(
                        "nat-ports",
                        "only meaningful with outside-address = true".into(),
                    ));
                }
                let mut all = Vec::new();
                for a in &file.pool.addresses {
                    let (net, len) = parse_prefix(a).map_err(|why| invalid("addresses", why))?;
                    let count = 1usize << (32 - u32::from(len));
                    if all.len() + count > MAX_POOL_ADDRESSES {
                        return Err(invalid(
                            "addresses",
                            format!("more than {MAX_POOL_ADDRESSES} addresses"),
                        ));
                    }
                    let base = u32::from(net);
                    for i in 0..count {
                        all.push(Ipv4Addr::from(base + i as u32));
                    }
                }
                PoolSource::Addresses(all)
            }
        };
        if !matches!(file.allocation, Allocation::Dynamic) && file.pool.outside_address {
            return Err(invalid(
                "mode",
                "port blocks and deterministic NAT need pool addresses of their own: on the \
                 outside interface's address the host's sockets share the ports"
                    .into(),
            ));
        }
        // The session and mapping limits are the gateway's, split across the workers: each
        // needs at least one.
        let limits = file.limits.resolve();
        for (key, v) in [
            ("max-sessions", limits.max_sessions),
            ("max-mappings", limits.max_mappings),
        ] {
            if (v as usize) < tun.queues {
                return Err(invalid(
                    key,
                    format!(
                        "{v} is fewer than the {} queues: the limit is the gateway's, split \
                         across one worker per queue",
                        tun.queues
                    ),
                ));
            }
        }
        file.port_mapping
            .check()
            .map_err(|(key, why)| invalid(key, why))?;
        let mut behavior = file.behavior.resolve();
        // The kernel decrements the TTL routing into the TUN and again out of it, so the engine
        // gives one back, unless the file asks otherwise (see `TtlHandling`). A fast path that
        // hands packets to the engine itself saves the first pass: the daemon then keeps it.
        if !file.behavior.sets_ttl() {
            behavior.ttl = TtlHandling::RestoreKernelHop;
        }
        let settings = Settings {
            inside: file.interfaces.inside.clone(),
            outside: file.interfaces.outside.clone(),
            inside_address: file.interfaces.inside_address,
            inside_networks,
            pool,
            tun_name: file.tun.name.clone(),
            queues: file.tun.queues,
            rule_priority: file.tun.rule_priority,
            table: file.tun.table,
            behavior,
            limits: file.limits.resolve(),
            lab: file.lab,
            control_socket: file.control.enabled.then(|| file.control.socket.clone()),
            metrics_listen: file.metrics.listen,
            snapshot: file.state.snapshot.clone(),
            fast_path: file.dataplane.fast_path,
            allocation: file.allocation,
            log: log_settings(&file, &invalid)?,
            rules: file.rule.clone(),
            virtual_servers: file.virtual_server.clone(),
            port_mapping: file.port_mapping.clone(),
            file,
        };
        // Check everything the engine checks now, with stand-in addresses where the real ones
        // are only known at start.
        settings.stand_in_engine_config().map_err(|e| {
            let (key, why) = split_engine_error(&e);
            let line = match &e {
                ConfigError::VirtualServer { address, .. }
                | ConfigError::DuplicateVirtualServer { address, .. }
                | ConfigError::VirtualServerBoundByRule { address, .. } => {
                    find_virtual_server_line(text, address.addr)
                }
                _ => find_key_line(text, &key),
            };
            ConfigFileError::Invalid { line, key, why }
        })?;
        Ok(settings)
    }

    /// The engine config with stand-in addresses where the real ones are only known at start
    /// (the outside interface's address, the inside address), and none of `max-memory` taken
    /// by natgate itself (only `run` can measure that): what `check` can validate.
    pub fn stand_in_engine_config(&self) -> Result<ValidConfig, ConfigError> {
        let pool = match &self.pool {
            PoolSource::Addresses(a) => a.clone(),
            PoolSource::OutsideAddress { .. } => vec![Ipv4Addr::new(192, 0, 2, 1)],
        };
        let inside = self.inside_address.unwrap_or(Ipv4Addr::new(100, 64, 0, 1));
        self.engine_config(pool, inside, 0)
    }

    /// The engine config for the pool and inside address found at start. `own_memory` is what
    /// natgate holds besides its engines (measured by `run` once it is set up): `max-memory`
    /// is the whole process's limit, so the engines get what is left of it.
    pub fn engine_config(
        &self,
        pool: Vec<Ipv4Addr>,
        inside_address: Ipv4Addr,
        own_memory: u64,
    ) -> Result<ValidConfig, ConfigError> {
        let mut config = Config {
            allocation: self.allocation,
            pool,
            inside_address,
            behavior: self.behavior,
            limits: self.limits,
            lab: self.lab,
            rules: self.rules.clone(),
            virtual_servers: self.virtual_servers.clone(),
            inside_networks: self.inside_networks.clone(),
            host_ports: match self.pool {
                PoolSource::OutsideAddress { nat_ports } => Some(nat_ports),
                PoolSource::Addresses(_) => None,
            },
            explicit_mappings: self.port_mapping.enabled(),
            // The daemon has no B4-facing IPv6 side yet, so no `[ds-lite]` section.
            ds_lite: None,
        };
        let n = self.queues.max(1);
        if let Some(limit) = config.limits.max_memory {
            let engines = limit
                .checked_sub(own_memory)
                .filter(|&m| m > 0)
                .ok_or_else(|| ConfigError::MemoryLimit {
                    need: own_memory,
                    limit,
                    detail: "natgate itself before its engines: the program, its set-up and \
                             the workers' packet buffers"
                        .into(),
                })?;
            config.limits.max_memory = Some(engines);
        }
        if let Some(total) = config.limits.max_memory
            && self.file.limits.max_sessions.is_none()
        {
            // One worker's engine is fitted into its share of the memory; the gateway holds
            // one such share of sessions per worker.
            let mut one = config.clone();
            one.limits.max_memory = Some(total / n as u64);
            one.limits.max_mappings = config.limits.max_mappings.div_ceil(n as u32);
            let per_worker = one.fit_sessions_to_memory()?;
            let l = &mut config.limits;
            l.max_sessions = per_worker.saturating_mul(n as u32).min(MAX_SESSIONS);
            l.max_mappings = l.max_mappings.min(l.max_sessions);
        }
        let valid = config.validate()?;
        // The core checks one engine; each worker's, with its shares, must be valid too (its
        // share of max-memory holds its share of the sessions and its own fixed parts).
        for id in 0..n {
            worker_config(&valid, id, n)?;
        }
        Ok(valid)
    }

    /// The effective config as TOML: presets expanded, defaults filled in.
    pub fn effective_toml(&self) -> Result<String, toml::ser::Error> {
        let eff = Effective {
            interfaces: &self.file.interfaces,
            pool: &self.file.pool,
            tun: &self.file.tun,
            behavior: &self.behavior,
            limits: &self.limits,
            control: &self.file.control,
            metrics: &self.file.metrics,
            allocation: &self.allocation,
            log: &self.file.log,
            port_mapping: &self.port_mapping,
            lab: self.lab,
            rule: &self.rules,
            virtual_server: &self.virtual_servers,
        };
        toml::to_string(&eff)
    }
}

/// Worker `id`'s share of the gateway-wide limit `total` over `n` workers: an equal part, and
/// one more for each of the first `total % n` workers, so the shares add up to `total`.
pub fn worker_share(total: u32, id: usize, n: usize) -> u32 {
    let n = n.max(1) as u32;
    let id = id as u32;
    total / n + u32::from(id < total % n)
}

/// The engine config of worker `id` among `n`: `max-sessions`, `max-mappings`, `max-memory`
/// and the global answer rate are the gateway's, each worker's engine holding its
/// [`worker_share`] (`check` refuses fewer sessions or mappings than one per worker; a
/// worker's answer rate and burst are at least 1 when the gateway's are set).
pub fn worker_config(cfg: &ValidConfig, id: usize, n: usize) -> Result<ValidConfig, ConfigError> {
    let mut c = cfg.get().clone();
    let l = &mut c.limits;
    l.max_sessions = worker_share(l.max_sessions, id, n);
    l.max_mappings = worker_share(l.max_mappings, id, n);
    l.max_memory = l.max_memory.map(|m| m / n.max(1) as u64);
    if l.global_answer_rate != 0 {
        l.global_answer_rate = worker_share(l.global_answer_rate, id, n).max(1);
        l.global_answer_burst = worker_share(l.global_answer_burst, id, n).max(1);
    }
    c.validate()
}

/// What `natgate check` prints.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Effective<'a> {
    lab: bool,
    interfaces: &'a InterfacesSection,
    pool: &'a PoolSection,
    tun: &'a TunSection,
    behavior: &'a Behavior,
    limits: &'a Limits,
    control: &'a ControlSection,
    metrics: &'a MetricsSection,
    allocation: &'a Allocation,
    log: &'a LogSection,
    port_mapping: &'a PortMapConfig,
    // Arrays of tables last: TOML cannot put plain tables after them.
    #[serde(skip_serializing_if = "RuleChain::is_empty")]
    rule: &'a RuleChain,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    virtual_server: &'a [VirtualServerSpec],
}

/// The 1-based line of the `[[virtual-server]]` table whose `address` is `addr` (the first
/// such table if none says so: the address may be written differently).
fn find_virtual_server_line(text: &str, addr: Ipv4Addr) -> Option<usize> {
    // The line of the `[[virtual-server]]` header we are directly under, if any (not under
    // one of its sub-tables, whose `address` keys are real servers').
    let mut table = None;
    let mut first = None;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with("[[virtual-server]]") {
            table = Some(i + 1);
            first = first.or(table);
        } else if l.starts_with('[') {
            table = None;
        } else if let Some(t) = table
            && let Some((k, v)) = l.split_once('=')
            && k.trim() == "address"
            && v.split('#')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
                == addr.to_string()
        {
            return Some(t);
        }
    }
    first
}

/// Validates `[log]` against the allocation mode.
fn log_settings(
    file: &FileConfig,
    invalid: &dyn Fn(&str, String) -> ConfigFileError,
) -> Result<LogSettings, ConfigFileError> {
    use crate::observability::logsink::syslog::{Facility, SyslogTarget};
    let l = &file.log;
    if l.queue == 0 || l.queue > 1 << 24 {
        return Err(invalid(
            "queue",
            format!("{} is not in 1..=16777216", l.queue),
        ));
    }
    let dynamic = matches!(file.allocation, Allocation::Dynamic);
    let per_session = l.per_session.unwrap_or(dynamic);
    if dynamic && !per_session {
        return Err(invalid(
            "per-session",
            "dynamic allocation has no port blocks: without per-session records nothing would \
             say who held a port"
                .into(),
        ));
    }
    let syslog = match &l.syslog {
        None => None,
        Some(s) => {
            let target = match (s.udp, &s.unix) {
                (Some(a), None) => SyslogTarget::Udp(a),
                (None, Some(p)) => SyslogTarget::Unix(p.clone()),
                _ => {
                    return Err(invalid(
                        "syslog",
                        "give exactly one of udp = \"ADDRESS:PORT\" and unix = \"PATH\"".into(),
                    ));
                }
            };
            let code = match s.facility.parse::<u8>() {
                Ok(n) => Some(n),
                Err(_) => FACILITIES
                    .iter()
                    .position(|f| *f == s.facility)
                    .and_then(|i| u8::try_from(i).ok()),
            };
            let facility = code.and_then(Facility::new).ok_or_else(|| {
                invalid(
                    "facility",
                    format!("{:?} is not a facility name or a code 0-23", s.facility),
                )
            })?;
            Some(SyslogSettings {
                target,
                facility,
                hostname: s.hostname.clone(),
                enterprise: s.enterprise,
            })
        }
    };
    if let Some(x) = &l.ipfix
        && x.template_refresh == 0
    {
        return Err(invalid(
            "template-refresh",
            "must be at least 1 s: over UDP a collector that missed the templates must get \
             them again (RFC 7011 section 8.4)"
                .into(),
        ));
    }
    if let Some(b) = &l.block_log
        && b.max_intervals == 0
    {
        return Err(invalid("max-intervals", "must be at least 1".into()));
    }
    Ok(LogSettings {
        queue: l.queue,
        per_session,
        log_destinations: l.log_destinations,
        durable: l.durable,
        file: l.file.clone(),
        syslog,
        ipfix: l.ipfix.clone(),
        block_log: l.block_log.clone(),
    })
}

/// The key an engine error names, and the rest of its message.
fn split_engine_error(e: &ConfigError) -> (String, String) {
    let msg = e.to_string();
    match msg.split_once(": ") {
        Some((k, rest)) => (k.to_owned(), rest.to_owned()),
        None => ("config".to_owned(), msg),
    }
}

/// The 1-based line where `key = ...` (or a `[key]` table) first appears. A dotted key
/// (`allocation.block-size`) is looked for after its table's header (`[allocation]`), then
/// anywhere.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    if let Some((table, leaf)) = key.rsplit_once('.') {
        // The core names `[limits.subscriber]` keys `subscriber.KEY`: a header ending in the
        // table's name is its header.
        let header = format!("[{table}]");
        let nested = format!(".{table}]");
        let start = text.lines().position(|l| {
            let l = l.trim();
            l == header || (l.starts_with('[') && l.ends_with(&nested))
        });
        if let Some(start) = start {
            let after: String = text.lines().skip(start).collect::<Vec<_>>().join("\n");
            if let Some(n) = find_plain_key_line(&after, leaf) {
                return Some(start + n);
            }
            return Some(start + 1);
        }
        return find_plain_key_line(text, leaf).or_else(|| find_plain_key_line(text, key));
    }
    find_plain_key_line(text, key)
}

fn find_plain_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let bare = l
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='));
            let quoted = l
                .strip_prefix('"')
                .and_then(|r| r.strip_prefix(key))
                .is_some_and(|r| r.starts_with('"'));
            let table = l
                .strip_prefix('[')
                .is_some_and(|r| r.trim_end().trim_end_matches(']').ends_with(key));
            bare || quoted || table
        })
        .map(|i| i + 1)
}

/// Parses `A.B.C.D` or `A.B.C.D/LEN`; the host bits must be zero.
pub fn parse_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (
            a,
            l.parse::<u8>()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        ),
        None => (s, 32),
    };
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address or prefix"))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    if u32::from(addr) & !mask != 0 {
        return Err(format!("{s:?} has host bits set"));
    }
    Ok((addr, len))
}

/// Parses `"LOW-HIGH"`.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port range LOW-HIGH");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo < 1024 || hi < lo || u32::from(hi) - u32::from(lo) < 1023 {
        return Err(format!(
            "{s:?}: need 1024 <= LOW, and at least 1024 ports for the NAT"
        ));
    }
    if lo <= 1025 && hi == u16::MAX {
        return Err(format!(
            "{s:?} leaves no ports for the gateway's own sockets"
        ));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[interfaces]
inside = "lan0"
outside = "wan0"

[pool]
addresses = ["198.51.100.0/28", "203.0.113.7"]
"#;

    #[test]
    fn minimal_config_expands_pool_and_defaults() {
        let s = Settings::parse(MIN).expect("valid");
        let PoolSource::Addresses(a) = &s.pool else {
            panic!("addresses")
        };
        assert_eq!(a.len(), 17);
        assert_eq!(s.queues, 1);
        assert_eq!(s.rule_priority, DEFAULT_RULE_PRIORITY);
        assert_eq!(
            s.behavior.ttl,
            TtlHandling::RestoreKernelHop,
            "the kernel decrements twice around the TUN: the engine gives one back"
        );
        let eff = s.effective_toml().expect("serialises");
        assert!(eff.contains("port-hold-down = 120"), "{eff}");
        assert!(eff.contains("max-sessions"), "{eff}");
        // The effective config is itself a valid config.
        Settings::parse(&eff).expect("effective config re-parses");
    }

    #[test]
    fn subscriber_limits_from_the_file() {
        let text = format!(
            "{MIN}\n[limits.subscriber]\nmax-udp-sessions = 5\nsession-rate = 10\nsession-burst = 20\nmax-subscribers = 100\n"
        );
        let s = Settings::parse(&text).expect("valid");
        let sub = s.limits.subscriber;
        assert_eq!((sub.max_udp_sessions, sub.max_tcp_sessions), (5, 0));
        assert_eq!(
            (sub.session_rate, sub.session_burst, sub.max_subscribers),
            (10, 20, 100)
        );
        let bad = format!("{MIN}\n[limits.subscriber]\nsession-rate = 10\nmax-subscribers = 1\n");
        let e = Settings::parse(&bad)
            .expect_err("rate without burst")
            .to_string();
        assert!(e.contains("session-burst"), "{e}");
        // The line of the rate, whose burst is missing.
        let line = MIN.lines().count() + 3;
        assert!(e.starts_with(&format!("line {line}: ")), "{e}");
    }

    #[test]
    fn clear_df_only_in_the_lab() {
        let text = format!("{MIN}\n[behavior]\nclear-df = true\n");
        let e = Settings::parse(&text)
            .expect_err("not without lab")
            .to_string();
        assert!(e.contains("clear-df") && e.contains("lab = true"), "{e}");
        let line = MIN.lines().count() + 3;
        assert!(e.starts_with(&format!("line {line}: ")), "{e}");
        let lab = format!("lab = true\n{text}");
        assert!(Settings::parse(&lab).expect("lab").behavior.clear_df);
    }

    #[test]
    fn combined_subscriber_limit_from_the_file_and_its_check() {
        let text = format!(
            "{MIN}\n[limits.subscriber]\nmax-udp-sessions = 500\nmax-sessions = 800\nmax-subscribers = 10\n"
        );
        let s = Settings::parse(&text).expect("valid");
        let sub = s.limits.subscriber;
        assert_eq!((sub.max_udp_sessions, sub.max_sessions), (500, 800));
        // A per-protocol quota the total would never let a subscriber reach.
        let bad = format!(
            "{MIN}\n[limits]\nmax-sessions = 100000\n\n[limits.subscriber]\nmax-udp-sessions = 500\nmax-sessions = 400\nmax-subscribers = 10\n"
        );
        let e = Settings::parse(&bad)
            .expect_err("total below a quota")
            .to_string();
        assert!(e.contains("400 is below max-udp-sessions = 500"), "{e}");
        // The line of the subscriber's key, not of `[limits] max-sessions`.
        let line = MIN.lines().count() + 7;
        assert!(e.starts_with(&format!("line {line}: ")), "{e}");
        let equal = format!(
            "{MIN}\n[limits.subscriber]\nmax-udp-sessions = 400\nmax-sessions = 400\nmax-subscribers = 10\n"
        );
        assert!(Settings::parse(&equal).is_ok());
    }

    #[test]
    fn answer_rate_without_burst_names_its_line() {
        let bad = format!("{MIN}\n[limits]\nanswer-burst = 0\nanswer-rate = 5\n");
        let e = Settings::parse(&bad).expect_err("no burst").to_string();
        let line = MIN.lines().count() + 4;
        assert!(e.starts_with(&format!("line {line}: answer-rate")), "{e}");
        assert!(e.contains("answer-burst"), "{e}");
        let off = format!("{MIN}\n[limits]\nanswer-rate = 0\nglobal-answer-rate = 0\n");
        let s = Settings::parse(&off).expect("0 switches the limits off");
        assert_eq!((s.limits.answer_rate, s.limits.global_answer_rate), (0, 0));
    }

    /// `max-memory` is the gateway's: with 1, 2 or 4 workers, the engines together stay within
    /// it (each worker's engine in its share, fixed parts included), and a `max-sessions` that
    /// one engine could hold in it but several cannot is refused.
    #[test]
    fn max_memory_is_the_gateways_across_workers() {
        use natgate_core::engine::MemoryModel;
        const M: u64 = 64 << 20;
        let mut single = 0;
        for q in [1usize, 2, 4] {
            let text = format!("{MIN}\n[tun]\nqueues = {q}\n\n[limits]\nmax-memory = {M}\n");
            let s = Settings::parse(&text).expect("fits");
            let cfg = s.stand_in_engine_config().expect("valid");
            let total: u64 = (0..q)
                .map(|id| {
                    let w = worker_config(&cfg, id, q).expect("valid");
                    let l = w.get().limits;
                    MemoryModel::of(w.get())
                        .usage(l.max_sessions, l.max_mappings)
                        .total()
                })
                .sum();
            assert!(total <= M, "{q} workers: {total} bytes");
            assert!(total > M / 2, "{q} workers use most of it: {total}");
            if q == 1 {
                single = cfg.get().limits.max_sessions;
            }
        }
        let text = format!(
            "{MIN}\n[tun]\nqueues = 2\n\n[limits]\nmax-sessions = {single}\n\
             max-mappings = 1024\nmax-memory = {M}\n"
        );
        let e = Settings::parse(&text).expect_err("two engines' fixed parts do not fit");
        assert!(e.to_string().contains("max-memory"), "{e}");
    }

    #[test]
    fn max_memory_derives_max_sessions_or_refuses_with_the_need() {
        let fit = format!("{MIN}\n[limits]\nmax-memory = 67108864\n");
        let s = Settings::parse(&fit).expect("64 MiB holds some sessions");
        let cfg = s
            .engine_config(
                vec![Ipv4Addr::new(198, 51, 100, 1)],
                Ipv4Addr::new(100, 64, 0, 1),
                0,
            )
            .expect("fits");
        let derived = cfg.get().limits.max_sessions;
        assert!((8..1 << 20).contains(&derived), "{derived}");
        let tight = format!("{MIN}\n[limits]\nmax-sessions = 1048576\nmax-memory = 1048576\n");
        let e = Settings::parse(&tight)
            .expect_err("1 M sessions in 1 MiB")
            .to_string();
        assert!(e.contains("max-memory") || e.contains("memory"), "{e}");
    }

    /// `max-memory` is the process's: what natgate holds itself comes off the engines' part,
    /// so they derive fewer sessions, and a limit natgate alone exceeds is refused.
    #[test]
    fn max_memory_leaves_natgate_its_own_share() {
        const M: u64 = 64 << 20;
        let s = Settings::parse(&format!("{MIN}\n[limits]\nmax-memory = {M}\n")).expect("fits");
        let pool = || vec![Ipv4Addr::new(198, 51, 100, 1)];
        let inside = Ipv4Addr::new(100, 64, 0, 1);
        let sessions = |own| -> u32 {
            s.engine_config(pool(), inside, own)
                .expect("fits")
                .get()
                .limits
                .max_sessions
        };
        let all = sessions(0);
        let less = sessions(16 << 20);
        assert!(less < all, "{less} < {all}");
        // The engines' own accounting of the config built with natgate's share stays within
        // what is left of the limit.
        let cfg = s.engine_config(pool(), inside, 16 << 20).expect("fits");
        let l = cfg.get().limits;
        let need = natgate_core::engine::MemoryModel::of(cfg.get())
            .usage(l.max_sessions, l.max_mappings)
            .total();
        assert!(need <= M - (16 << 20), "{need}");
        let e = s
            .engine_config(pool(), inside, M)
            .expect_err("nothing left for the engines")
            .to_string();
        assert!(e.contains("natgate itself"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = format!("{MIN}\n[behavior]\nfilterin = \"endpoint-independent\"\n");
        let e = Settings::parse(&text).expect_err("unknown key").to_string();
        assert!(e.contains("filterin"), "{e}");
        assert!(e.contains("line 10"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let text = format!("{MIN}\n[behavior]\nfiltering = \"sometimes\"\n");
        let e = Settings::parse(&text).expect_err("bad value").to_string();
        assert!(e.contains("sometimes") && e.contains("line 10"), "{e}");
    }

    #[test]
    fn rfc_minimum_names_key_and_line() {
        let text = format!("{MIN}\n[behavior.timers]\nudp = 30\n");
        let e = Settings::parse(&text).expect_err("udp 30").to_string();
        assert!(e.starts_with("line 10: udp:"), "{e}");
        assert!(e.contains("RFC 4787 REQ-5"), "{e}");
        let lab = format!("lab = true\n{MIN}\n[behavior.timers]\nudp = 30\n");
        assert_eq!(Settings::parse(&lab).expect("lab").behavior.timers.udp, 30);
    }

    #[test]
    fn contradictions_are_refused() {
        let both = MIN.replace("addresses = [", "outside-address = true\naddresses = [");
        let e = Settings::parse(&both).expect_err("both").to_string();
        assert!(e.contains("outside-address"), "{e}");
        let same = MIN.replace("\"wan0\"", "\"lan0\"");
        assert!(Settings::parse(&same).is_err());
        let host_bits = MIN.replace("198.51.100.0/28", "198.51.100.1/28");
        let e = Settings::parse(&host_bits)
            .expect_err("host bits")
            .to_string();
        assert!(e.contains("line 7") && e.contains("host bits"), "{e}");
    }

    #[test]
    fn home_gateway_pool() {
        let text = MIN.replace(
            "addresses = [\"198.51.100.0/28\", \"203.0.113.7\"]",
            "outside-address = true\nnat-ports = \"30000-60999\"",
        );
        let s = Settings::parse(&text).expect("valid");
        assert_eq!(
            s.pool,
            PoolSource::OutsideAddress {
                nat_ports: (30000, 60999)
            }
        );
        let bad = text.replace("30000-60999", "1024-65535");
        assert!(Settings::parse(&bad).is_err());
    }

    #[test]
    fn port_mapping_from_the_file_and_its_errors_with_key_and_line() {
        let home = Settings::parse(include_str!("../../../examples/home-gateway.toml")).unwrap();
        assert!(home.port_mapping.pcp && home.port_mapping.nat_pmp);
        let cgn = Settings::parse(include_str!("../../../examples/cgn.toml")).unwrap();
        assert!(cgn.port_mapping.pcp && !cgn.port_mapping.nat_pmp);
        let base = "[interfaces]\ninside = \"lan0\"\noutside = \"wan0\"\n\
                    [pool]\naddresses = [\"198.51.100.0/30\"]\n";
        assert!(!Settings::parse(base).unwrap().port_mapping.enabled());
        let text =
            format!("{base}[port-mapping]\npcp = true\nmin-lifetime = 600\nmax-lifetime = 60\n");
        let e = Settings::parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("line 9: port-mapping.max-lifetime"), "{e}");
        let text = format!("{base}[port-mapping]\npcp = true\nthird-party = [\"10.0.0.1/8\"]\n");
        let e = Settings::parse(&text).unwrap_err().to_string();
        assert!(e.contains("third-party"), "{e}");
        assert!(home.port_mapping.upnp && !cgn.port_mapping.upnp);
        assert_eq!(home.port_mapping.upnp_port, 5000);
        let text = format!("{base}[port-mapping]\nupnp = true\nupnp-port = 0\n");
        let e = Settings::parse(&text).unwrap_err().to_string();
        assert!(e.contains("port-mapping.upnp-port"), "{e}");
        let text = format!("{base}[port-mapping]\nupnp = \"yes\"\n");
        let e = Settings::parse(&text).unwrap_err().to_string();
        assert!(e.contains("upnp"), "{e}");
    }

    #[test]
    fn shipped_examples_are_valid() {
        for (name, text) in [
            (
                "home-gateway",
                include_str!("../../../examples/home-gateway.toml"),
            ),
            ("cgn", include_str!("../../../examples/cgn.toml")),
            (
                "cgn-deterministic",
                include_str!("../../../examples/cgn-deterministic.toml"),
            ),
            ("lab", include_str!("../../../examples/lab.toml")),
            (
                "static-exempt",
                include_str!("../../../examples/static-exempt.toml"),
            ),
            (
                "static-host-nat",
                include_str!("../../../examples/static-host-nat.toml"),
            ),
            (
                "static-network-nat",
                include_str!("../../../examples/static-network-nat.toml"),
            ),
            (
                "static-port-forward",
                include_str!("../../../examples/static-port-forward.toml"),
            ),
            (
                "static-twice-nat",
                include_str!("../../../examples/static-twice-nat.toml"),
            ),
            (
                "virtual-server",
                include_str!("../../../examples/virtual-server.toml"),
            ),
        ] {
            let s = Settings::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let again = Settings::parse(&s.effective_toml().expect("toml"))
                .unwrap_or_else(|e| panic!("{name} effective: {e}"));
            assert_eq!(
                again.rules, s.rules,
                "{name}: rules survive the effective config"
            );
            assert_eq!(again.virtual_servers, s.virtual_servers, "{name}");
            assert_eq!(again.port_mapping, s.port_mapping, "{name}");
            if name.starts_with("static-") {
                assert!(!s.rules.is_empty(), "{name}");
            }
        }
    }

    const RULE: &str = r#"
[[rule]]
id = 10
direction = "inbound"
proto = "tcp"
dst = "198.51.100.10/32"
dst-ports = 80
action.translate.dst = { addr = "100.64.0.5/32", port = 8888 }
"#;

    const VSERVER: &str = r#"
[[virtual-server]]
address = "203.0.113.80"
port = 80
protocol = "tcp"
scheduler = "round-robin"

[[virtual-server.real-servers]]
address = "100.64.0.20"
weight = 2
"#;

    #[test]
    fn rules_and_virtual_servers_reach_the_engine_config() {
        let s = Settings::parse(&format!("{MIN}{RULE}{VSERVER}")).expect("valid");
        assert_eq!(s.rules.len(), 1);
        assert_eq!(s.virtual_servers.len(), 1);
        assert_eq!(s.virtual_servers[0].real_servers[0].weight, 2);
        let cfg = s
            .engine_config(
                vec![Ipv4Addr::new(198, 51, 100, 1)],
                Ipv4Addr::new(100, 64, 0, 1),
                0,
            )
            .expect("engine config");
        assert_eq!(cfg.get().rules, s.rules);
        assert_eq!(cfg.get().virtual_servers, s.virtual_servers);
    }

    #[test]
    fn conflicting_rules_name_both_and_a_line() {
        let other = RULE
            .replace("id = 10", "id = 11")
            .replace("100.64.0.5/32", "100.64.0.6/32");
        let e = Settings::parse(&format!("{MIN}{RULE}{other}"))
            .expect_err("conflict")
            .to_string();
        assert!(e.contains("rule 11 conflicts with rule 10"), "{e}");
        assert!(e.contains("line "), "{e}");
        let bad = RULE.replace("dst-ports = 80", "dst-prts = 80");
        let e = Settings::parse(&format!("{MIN}{bad}"))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("dst-prts") && e.contains("line 14"), "{e}");
    }

    #[test]
    fn bad_virtual_servers_name_their_table_line() {
        let zero = VSERVER.replace("weight = 2", "weight = 0");
        let e = Settings::parse(&format!("{MIN}{zero}"))
            .expect_err("weight 0")
            .to_string();
        assert!(
            e.starts_with("line 9: virtual-server tcp 203.0.113.80:80"),
            "{e}"
        );
        let twice = format!("{MIN}{VSERVER}{VSERVER}");
        let e = Settings::parse(&twice).expect_err("twice").to_string();
        assert!(e.contains("203.0.113.80:80"), "{e}");
        // A virtual server on an endpoint a rule binds: two meanings for one packet.
        let on_rule = VSERVER.replace("203.0.113.80", "198.51.100.10");
        let e = Settings::parse(&format!("{MIN}{RULE}{on_rule}"))
            .expect_err("bound by a rule")
            .to_string();
        assert!(e.contains("rule 10"), "{e}");
    }

    #[test]
    fn port_blocks_and_every_sink_from_the_file() {
        let text = format!(
            "{MIN}\n[allocation]\nmode = \"port-block\"\nblock-size = 512\n\
             max-blocks-per-subscriber = 4\n\n[log]\nqueue = 1000\nlog-destinations = true\n\
             durable = true\n\n[log.file]\npath = \"/tmp/x.jsonl\"\nmax-bytes = 100\nkeep = 2\n\n\
             [log.syslog]\nunix = \"/dev/log\"\nfacility = \"local3\"\n\n[log.ipfix]\n\
             collector = \"192.0.2.20:4739\"\ntemplate-refresh = 5\n\n[log.block-log]\n\
             path = \"/tmp/blocks\"\n"
        );
        let s = Settings::parse(&text).expect("valid");
        assert_eq!(
            s.allocation,
            Allocation::PortBlock(natgate_core::config::PortBlockSpec {
                block_size: 512,
                max_blocks_per_subscriber: 4
            })
        );
        let l = &s.log;
        assert_eq!(
            (l.queue, l.per_session, l.log_destinations, l.durable),
            (1000, false, true, true)
        );
        let sys = l.syslog.as_ref().expect("syslog");
        assert_eq!(
            sys.target,
            crate::observability::logsink::syslog::SyslogTarget::Unix("/dev/log".into())
        );
        assert_eq!(sys.facility.code(), 19);
        assert_eq!(l.ipfix.as_ref().expect("ipfix").template_refresh, 5);
        assert_eq!(l.file.as_ref().expect("file").keep, 2);
        assert!(l.block_log.is_some() && l.any_sink());
        let eff = s.effective_toml().expect("toml");
        assert_eq!(
            Settings::parse(&eff).expect("effective re-parses").log,
            s.log
        );
        // Dynamic allocation logs sessions unless told otherwise, and cannot be told otherwise.
        let d = Settings::parse(MIN).expect("valid");
        assert!(d.log.per_session && !d.log.any_sink());
        let off = format!("{MIN}\n[log]\nper-session = false\n");
        let e = Settings::parse(&off).expect_err("no blocks").to_string();
        assert!(e.starts_with("line 10: per-session:"), "{e}");
    }

    #[test]
    fn allocation_and_log_errors_name_key_and_line() {
        let small = format!(
            "{MIN}\n[allocation]\nmode = \"port-block\"\nblock-size = 1\nmax-blocks-per-subscriber = 1\n"
        );
        let e = Settings::parse(&small).expect_err("block of 1").to_string();
        assert!(e.starts_with("line 11: allocation.block-size:"), "{e}");
        let typo = format!("{MIN}\n[allocation]\nmode = \"port-blocks\"\n");
        let e = Settings::parse(&typo)
            .expect_err("unknown mode")
            .to_string();
        assert!(e.contains("line 10") && e.contains("port-blocks"), "{e}");
        let det = format!(
            "{MIN}\n[allocation]\nmode = \"deterministic\"\ninside = \"100.64.0.0/24\"\n\
             outside = \"198.51.100.0/27\"\n"
        );
        let e = Settings::parse(&det)
            .expect_err("outside not in pool")
            .to_string();
        assert!(e.starts_with("line 12: allocation.outside:"), "{e}");
        let both = format!("{MIN}\n[log.syslog]\nudp = \"192.0.2.1:514\"\nunix = \"/dev/log\"\n");
        let e = Settings::parse(&both).expect_err("two targets").to_string();
        assert!(e.starts_with("line 9: syslog:"), "{e}");
        let fac = format!("{MIN}\n[log.syslog]\nunix = \"/dev/log\"\nfacility = \"local9\"\n");
        let e = Settings::parse(&fac).expect_err("facility").to_string();
        assert!(e.starts_with("line 11: facility:"), "{e}");
        let home = MIN.replace(
            "addresses = [\"198.51.100.0/28\", \"203.0.113.7\"]",
            "outside-address = true",
        ) + "\n[allocation]\nmode = \"port-block\"\nblock-size = 64\nmax-blocks-per-subscriber = 1\n";
        let e = Settings::parse(&home)
            .expect_err("home gateway")
            .to_string();
        assert!(e.starts_with("line 10: mode:"), "{e}");
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_prefix("10.0.0.0/8"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(
            parse_prefix("10.0.0.1"),
            Ok((Ipv4Addr::new(10, 0, 0, 1), 32))
        );
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("x").is_err());
    }
}
