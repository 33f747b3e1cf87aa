//! Engine configuration: plain data in, validated immutable config out.
//!
//! [`BehaviorSpec`] is what a config file says (a preset plus single overrides, all optional);
//! [`Config`] is the whole engine's input; [`Config::validate`] turns it into a [`ValidConfig`],
//! the only thing [`Engine::new`](crate::Engine::new) accepts, so an invalid config never reaches
//! the core. A value an RFC forbids is rejected unless `lab` is set, because a NAT lab has to be
//! able to reproduce broken NATs on purpose.

mod allocation;
mod behavior;
mod ds_lite;
mod preset;
mod timers;

pub use allocation::{Allocation, DeterministicSpec, Ipv4Prefix, PortBlockSpec};
pub use behavior::*;
pub use ds_lite::{
    DsLite, MAX_SOFTWIRE_MTU, MAX_SOFTWIRES, MIN_SOFTWIRE_MTU, SoftwireLimits, SoftwireSpec,
    TooBig, default_private,
};
pub use preset::Preset;
pub use timers::{PortTimers, PortTimersError, Timers};

use crate::endpoint::{Endpoint, Protocol};
use crate::rules::{RuleChain, RuleId};
use crate::vserver::{VirtualServerError, VirtualServerSpec};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::num::NonZeroU16;

/// The most sessions (or mappings) a table may hold: ids are u32 slot numbers with the top
/// values reserved.
pub(crate) const MAX_TABLE_ENTRIES: u32 = 1 << 30;

/// Every behaviour setting of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Behavior {
    /// Mapping behaviour.
    pub mapping: MappingBehavior,
    /// Filtering behaviour.
    pub filtering: FilteringBehavior,
    /// Address pooling.
    pub pooling: Pooling,
    /// Port assignment.
    pub port_assignment: PortAssignment,
    /// Under sequential port assignment, how far a new port is from the last one given out
    /// (searching on from there when it is taken): a lab NAT whose port delta between
    /// consecutive mappings is this step. Only with sequential assignment.
    pub sequential_step: NonZeroU16,
    /// Keep the parity of the internal port (RFC 4787 REQ-4).
    pub port_parity: bool,
    /// Keep ports 0-1023 below 1024 and the rest above (RFC 4787 REQ-3a).
    pub port_range_preservation: bool,
    /// Which direction refreshes timers.
    pub refresh: Refresh,
    /// Hairpinning.
    pub hairpinning: Hairpinning,
    /// Port overlapping (RFC 7857 section 3): a new mapping keeps the internal port on the
    /// subscriber's paired external address even when other mappings use that endpoint (a
    /// subscriber's first mapping, made before it has that address, excepted), as long as
    /// none of them has the new mapping's remote key (what Linux conntrack does: only the
    /// 5-tuple must be unique). Needs a dependent mapping, filtering at least as strict, and
    /// port preservation.
    pub port_overlapping: bool,
    /// Idle timers.
    pub timers: Timers,
    /// What to do with an unsolicited inbound SYN once its hold time passes.
    pub unsolicited_syn: UnsolicitedSyn,
    /// The answer when no mapping can be made.
    pub mapping_failure_reply: MappingFailureReply,
    /// What the engine does to the TTL, so that a crossing costs one hop however often the
    /// driver's platform routes a packet (RFC 5508 REQ-10): see [`TtlHandling`].
    pub ttl: TtlHandling,
    /// MTU of the outside link: larger DF packets get ICMP fragmentation needed (RFC 4787 REQ-13).
    pub outside_mtu: u16,
    /// MTU of the inside link, for inbound packets.
    pub inside_mtu: u16,
    /// Translate and forward ICMP errors about sessions, both ways (RFC 4787 REQ-12, RFC 5508
    /// REQ-4, REQ-5). Off drops them all, as some NATs do (lab only): applications then learn
    /// of unreachable peers and path MTUs only by timeouts.
    pub forward_icmp_errors: bool,
    /// Clear DF on every forwarded packet, so that a path with a smaller MTU fragments it
    /// instead of refusing it (lab only: it breaks path MTU discovery, RFC 1191, and RFC 4787
    /// REQ-13's answer to a DF packet too big for the way out).
    pub clear_df: bool,
    /// Put the subscriber's internal address in a host identifier option (RFC 7974) on each
    /// SYN it sends out, so that a server or a test tool can tell apart subscribers who share
    /// an external address (lab only: it discloses internal addresses, and the option is an
    /// experiment's).
    pub insert_host_id: bool,
}

impl Behavior {
    /// The settings port overlapping depends on (RFC 7857 section 3).
    fn check_port_overlapping(&self) -> Result<(), ConfigError> {
        let refuse = |why: &str| {
            Err(ConfigError::OutOfRange {
                setting: "port-overlapping",
                why: why.to_string(),
            })
        };
        if self.mapping == MappingBehavior::EndpointIndependent {
            return refuse(
                "needs a dependent mapping: under endpoint-independent mapping an external \
                 endpoint belongs to one internal endpoint whatever the remote",
            );
        }
        if self.filtering.specificity() < self.mapping.specificity() {
            return refuse(
                "needs filtering at least as strict as the mapping: an inbound packet from a \
                 remote none of the mappings on a shared port was made for could belong to any",
            );
        }
        if self.port_assignment != PortAssignment::Preserve {
            return refuse(
                "shares the preserved internal port, so it needs port-assignment = preserve",
            );
        }
        Ok(())
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Preset::Rfc6888Cgn.behavior()
    }
}

/// A behaviour as a config file states it: a preset (default RFC 6888 CGN) plus any single setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(missing_docs)] // each field overrides the `Behavior` field of the same name
pub struct BehaviorSpec {
    pub preset: Option<Preset>,
    pub mapping: Option<MappingBehavior>,
    pub filtering: Option<FilteringBehavior>,
    pub pooling: Option<Pooling>,
    pub port_assignment: Option<PortAssignment>,
    pub sequential_step: Option<NonZeroU16>,
    pub port_parity: Option<bool>,
    pub port_range_preservation: Option<bool>,
    pub refresh: Option<Refresh>,
    pub hairpinning: Option<Hairpinning>,
    pub port_overlapping: Option<bool>,
    pub timers: Option<TimersSpec>,
    pub unsolicited_syn: Option<UnsolicitedSyn>,
    pub mapping_failure_reply: Option<MappingFailureReply>,
    /// `true` is [`TtlHandling::Decrement`], `false` [`TtlHandling::Keep`]; `ttl` wins.
    pub decrement_ttl: Option<bool>,
    pub ttl: Option<TtlHandling>,
    pub outside_mtu: Option<u16>,
    pub inside_mtu: Option<u16>,
    pub forward_icmp_errors: Option<bool>,
    pub clear_df: Option<bool>,
    pub insert_host_id: Option<bool>,
}

/// Timer overrides, in seconds; a missing one keeps the preset's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(missing_docs)] // each field overrides the `Timers` field of the same name
pub struct TimersSpec {
    pub udp: Option<u32>,
    pub udp_ports: Option<PortTimers>,
    pub tcp_established: Option<u32>,
    pub tcp_transitory_open: Option<u32>,
    pub tcp_transitory_close: Option<u32>,
    pub tcp_rst_linger: Option<u32>,
    pub tcp_incoming_syn: Option<u32>,
    pub icmp_query: Option<u32>,
    pub fragment: Option<u32>,
    pub port_hold_down: Option<u32>,
}

impl BehaviorSpec {
    /// Whether the file chose the TTL step (`ttl` or `decrement-ttl`); otherwise the data path
    /// does, by how often its kernel routes a packet.
    pub fn sets_ttl(&self) -> bool {
        self.decrement_ttl.is_some() || self.ttl.is_some()
    }

    /// The preset with the overrides applied.
    pub fn resolve(&self) -> Behavior {
        let mut b = self.preset.unwrap_or(Preset::Rfc6888Cgn).behavior();
        if let Some(d) = self.decrement_ttl {
            b.ttl = if d {
                TtlHandling::Decrement
            } else {
                TtlHandling::Keep
            };
        }
        macro_rules! apply {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { b.$f = v; } )* };
        }
        apply!(
            mapping,
            filtering,
            pooling,
            port_assignment,
            sequential_step,
            port_parity,
            port_range_preservation,
            refresh,
            hairpinning,
            port_overlapping,
            unsolicited_syn,
            mapping_failure_reply,
            ttl,
            outside_mtu,
            inside_mtu,
            forward_icmp_errors,
            clear_df,
            insert_host_id
        );
        if let Some(t) = self.timers {
            let tm = &mut b.timers;
            macro_rules! apply_t {
                ($($f:ident),*) => { $( if let Some(v) = t.$f { tm.$f = v; } )* };
            }
            apply_t!(
                udp,
                udp_ports,
                tcp_established,
                tcp_transitory_open,
                tcp_transitory_close,
                tcp_rst_linger,
                tcp_incoming_syn,
                icmp_query,
                fragment,
                port_hold_down
            );
        }
        b
    }
}

/// Bounds on the engine's state. Tables are allocated once, at these sizes, so the packet path
/// never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Most sessions at once (each is one internal, external, remote triple).
    pub max_sessions: u32,
    /// Most mappings at once.
    pub max_mappings: u32,
    /// Most unsolicited SYNs held at once (RFC 5382 REQ-4).
    pub max_held_syns: u32,
    /// Most datagrams with fragment state at once.
    pub max_fragment_datagrams: u32,
    /// Most early fragments held at once, over all sources.
    pub max_held_fragments: u32,
    /// Most early fragments held for one source address (so one sender cannot take them all).
    pub max_held_fragments_per_source: u32,
    /// Most events queued for the driver before new ones are counted as lost.
    pub event_queue: u32,
    /// Largest number of ports held in hold-down at once (RFC 6888 REQ-8's cap); past it the
    /// oldest is released early.
    pub max_ports_in_hold_down: u32,
    /// Per-subscriber limits (RFC 6888 REQ-4, REQ-5).
    #[serde(default)]
    pub subscriber: SubscriberLimits,
    /// Most bytes the engine's state may take (sessions, mappings, their indexes, fragments,
    /// subscribers, queues), all reserved up front: validation refuses a config that needs
    /// more, and [`Config::fit_sessions_to_memory`] derives `max-sessions` from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    /// Most sessions that static NAT rules and virtual servers hold at once (their own table,
    /// allocated only when the config has a rule or a virtual server).
    #[serde(default = "default_max_static_sessions")]
    pub max_static_sessions: u32,
    /// Answers (ICMP errors, TCP resets) to refused packets that one destination may get per
    /// second, sustained; 0: no per-destination limit. The rest are left out and counted
    /// (`answers_suppressed`); the refused packets are dropped and counted either way.
    #[serde(default = "default_answer_rate")]
    pub answer_rate: u32,
    /// Answers one destination may get at once (its bucket's size); needed with a rate.
    #[serde(default = "default_answer_burst")]
    pub answer_burst: u32,
    /// Answers per second to all destinations together, sustained; 0: no global limit.
    #[serde(default = "default_global_answer_rate")]
    pub global_answer_rate: u32,
    /// Answers to all destinations together at once; needed with a global rate.
    #[serde(default = "default_global_answer_burst")]
    pub global_answer_burst: u32,
}

const fn default_max_static_sessions() -> u32 {
    65536
}
const fn default_answer_rate() -> u32 {
    10
}
const fn default_answer_burst() -> u32 {
    20
}
const fn default_global_answer_rate() -> u32 {
    1000
}
const fn default_global_answer_burst() -> u32 {
    1000
}

/// The answer limits of [`Limits`], as the engine's limiter takes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerLimits {
    /// [`Limits::answer_rate`].
    pub answer_rate: u32,
    /// [`Limits::answer_burst`].
    pub answer_burst: u32,
    /// [`Limits::global_answer_rate`].
    pub global_answer_rate: u32,
    /// [`Limits::global_answer_burst`].
    pub global_answer_burst: u32,
}

impl Limits {
    /// The answer limits.
    pub const fn answers(&self) -> AnswerLimits {
        AnswerLimits {
            answer_rate: self.answer_rate,
            answer_burst: self.answer_burst,
            global_answer_rate: self.global_answer_rate,
            global_answer_burst: self.global_answer_burst,
        }
    }
}

/// What one subscriber (internal address) may hold and open (RFC 6888 REQ-4, REQ-5). Zero
/// means no limit; with every limit zero the engine keeps no per-subscriber state at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SubscriberLimits {
    /// Most TCP sessions one subscriber may hold at once.
    pub max_tcp_sessions: u32,
    /// Most UDP sessions one subscriber may hold at once.
    pub max_udp_sessions: u32,
    /// Most ICMP query sessions one subscriber may hold at once.
    pub max_icmp_sessions: u32,
    /// Most sessions one subscriber may hold at once, every protocol together: the per-protocol
    /// quotas bound each protocol, this bounds what one subscriber costs the session table.
    pub max_sessions: u32,
    /// New sessions per second a subscriber may open, sustained (token bucket refill rate).
    pub session_rate: u32,
    /// New sessions a subscriber may open at once (token bucket size); needed with a rate.
    pub session_burst: u32,
    /// Most subscribers with state at once: the per-subscriber table's fixed size. A new
    /// subscriber past it is refused (`subscriber_table_full`), never an old one evicted.
    pub max_subscribers: u32,
}

impl SubscriberLimits {
    /// Whether any limit is set.
    pub const fn any(&self) -> bool {
        self.max_tcp_sessions != 0
            || self.max_udp_sessions != 0
            || self.max_icmp_sessions != 0
            || self.max_sessions != 0
            || self.session_rate != 0
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 1 << 20,
            max_mappings: 1 << 20,
            max_held_syns: 4096,
            max_fragment_datagrams: 4096,
            max_held_fragments: 1024,
            max_held_fragments_per_source: 64,
            event_queue: 65536,
            max_ports_in_hold_down: 1 << 20,
            subscriber: SubscriberLimits::default(),
            max_memory: None,
            max_static_sessions: default_max_static_sessions(),
            answer_rate: default_answer_rate(),
            answer_burst: default_answer_burst(),
            global_answer_rate: default_global_answer_rate(),
            global_answer_burst: default_global_answer_burst(),
        }
    }
}

/// Everything the engine needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// External addresses handed out to mappings: any number, not necessarily contiguous
    /// (RFC 6888 REQ-3).
    pub pool: Vec<Ipv4Addr>,
    /// The gateway's own inside address: the source of ICMP errors it sends to subscribers.
    pub inside_address: Ipv4Addr,
    /// Behaviours.
    pub behavior: Behavior,
    /// State bounds.
    pub limits: Limits,
    /// How external ports are handed out; dynamic when absent.
    #[serde(default)]
    pub allocation: Allocation,
    /// Allow values the RFCs forbid (short timers, no hairpinning, dependent mapping...).
    pub lab: bool,
    /// Static NAT rules (`[[rule]]`), checked for validity and conflicts as they load. They win
    /// over dynamic NAPT; see `docs/static-nat.md`.
    #[serde(default, rename = "rule", skip_serializing_if = "RuleChain::is_empty")]
    pub rules: RuleChain,
    /// Virtual servers (`[[virtual-server]]`): a virtual address and port spread over real
    /// servers; see `docs/virtual-servers.md`.
    #[serde(
        default,
        rename = "virtual-server",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub virtual_servers: Vec<VirtualServerSpec>,
    /// The subscriber networks. A packet from the inside whose source is in none of them is
    /// dropped (`source_not_inside`), counted and never answered: a spoofed source would
    /// otherwise take sessions and ports from real subscribers, and the answers to its refused
    /// packets would go to addresses that are not there. Empty means every source is
    /// translated: the core knows no interfaces, so a driver that does should fill it in
    /// (natgate uses the inside interface's own subnets when the file gives none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inside_networks: Vec<Ipv4Prefix>,
    /// The pool's addresses are a host's own (a home gateway on its outside interface's
    /// address), and the NAT may use only these external ports, `(first, last)`: TCP and UDP
    /// to the others, and what the NAT has no use for (a ping to the address, a protocol it
    /// does not translate), is the host's ([`Verdict::ToHost`](crate::Verdict::ToHost)).
    /// `None`: the pool is the NAT's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ports: Option<(u16, u16)>,
    /// A port-mapping server (PCP, NAT-PMP) makes explicit mappings in this engine: their
    /// flows need the static session table, which is then built at start (and counted in the
    /// memory model), never on the control path of a running engine.
    #[serde(default)]
    pub explicit_mappings: bool,
    /// DS-Lite (RFC 6333): the engine is also an AFTR, and IPv4-in-IPv6 softwires from B4s
    /// are its subscribers (`[ds-lite]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ds_lite: Option<DsLite>,
}

/// A config that passed [`Config::validate`]; it cannot be built any other way. Boxed, so
/// that drivers can pass it around in messages (a reload) without a large value in every one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidConfig(Box<Config>);

impl ValidConfig {
    /// Only `Config::validate` makes one, after every check.
    pub(crate) fn checked(config: Config) -> Self {
        ValidConfig(Box::new(config))
    }

    /// The validated config.
    pub fn get(&self) -> &Config {
        &self.0
    }
}

/// Why a config was refused. The message names the setting and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The pool is empty.
    #[error("pool: at least one external address is needed")]
    EmptyPool,
    /// An address that cannot be a unicast source.
    #[error("pool: {0} is not a usable unicast address")]
    BadPoolAddress(Ipv4Addr),
    /// The same address twice.
    #[error("pool: {0} is listed twice")]
    DuplicatePoolAddress(Ipv4Addr),
    /// The inside address is also in the pool.
    #[error("inside-address: {0} is also in the pool")]
    InsideAddressInPool(Ipv4Addr),
    /// A setting an RFC forbids, without `lab = true`.
    #[error("{setting}: {why} ({rfc}); set lab = true to allow it anyway")]
    ForbiddenWithoutLab {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        why: String,
        /// The requirement.
        rfc: &'static str,
    },
    /// A value that makes no sense even in a lab.
    #[error("{setting}: {why}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The engine's state would take more memory than `limits.max-memory` allows.
    #[error(
        "max-memory: the engine needs {need} bytes, more than the {limit} allowed ({detail}); \
         lower max-sessions (or leave it out to derive it), or raise max-memory"
    )]
    MemoryLimit {
        /// Bytes needed (a lower bound when `detail` says so).
        need: u64,
        /// `limits.max-memory`.
        limit: u64,
        /// Where the bytes go.
        detail: String,
    },
    /// A virtual server's own settings are wrong.
    #[error("virtual-server {proto} {address}: {error}")]
    VirtualServer {
        /// Its protocol.
        proto: Protocol,
        /// Its virtual address and port.
        address: Endpoint,
        /// What is wrong.
        error: VirtualServerError,
    },
    /// Two virtual servers with one protocol, address and port: a new connection could not
    /// tell which one it is for.
    #[error("virtual-server {proto} {address}: listed twice")]
    DuplicateVirtualServer {
        /// The protocol.
        proto: Protocol,
        /// The virtual address and port.
        address: Endpoint,
    },
    /// A virtual server's address and port is also an external endpoint a static rule binds,
    /// so an inbound packet to it would have two meanings.
    #[error("virtual-server {proto} {address}: rule {rule} already binds this external endpoint")]
    VirtualServerBoundByRule {
        /// The protocol.
        proto: Protocol,
        /// The virtual address and port.
        address: Endpoint,
        /// The rule that binds it.
        rule: RuleId,
    },
}

impl Config {
    /// A config with the RFC 6888 defaults for the given pool and inside address.
    pub fn new(pool: Vec<Ipv4Addr>, inside_address: Ipv4Addr) -> Self {
        Config {
            pool,
            inside_address,
            behavior: Behavior::default(),
            limits: Limits::default(),
            allocation: Allocation::Dynamic,
            lab: false,
            rules: RuleChain::new(),
            virtual_servers: Vec::new(),
            inside_networks: Vec::new(),
            host_ports: None,
            explicit_mappings: false,
            ds_lite: None,
        }
    }

    /// Each virtual server valid on its own, no two on one protocol, address and port, and
    /// none on an external endpoint that a static rule binds. (The rule chain was checked as
    /// it loaded: a `RuleChain` holds only valid, non-conflicting rules.)
    pub(crate) fn check_virtual_servers(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for v in &self.virtual_servers {
            let (proto, address) = (v.protocol, Endpoint::new(v.address, v.port));
            v.validate().map_err(|error| ConfigError::VirtualServer {
                proto,
                address,
                error,
            })?;
            if !seen.insert((proto, address)) {
                return Err(ConfigError::DuplicateVirtualServer { proto, address });
            }
            if let Some(rule) = self.rules.binding_of_external(proto, address) {
                return Err(ConfigError::VirtualServerBoundByRule {
                    proto,
                    address,
                    rule,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn check_behavior(&self) -> Result<(), ConfigError> {
        let b = &self.behavior;
        let forbid = |setting, why: &str, rfc| {
            if self.lab {
                Ok(())
            } else {
                Err(ConfigError::ForbiddenWithoutLab {
                    setting,
                    why: why.to_string(),
                    rfc,
                })
            }
        };
        if b.mapping != MappingBehavior::EndpointIndependent {
            forbid(
                "mapping",
                "mapping must be endpoint-independent",
                "RFC 4787 REQ-1, RFC 5382 REQ-1",
            )?;
        }
        if b.refresh == Refresh::Inbound {
            forbid(
                "refresh",
                "outbound packets must refresh mappings",
                "RFC 4787 REQ-6",
            )?;
        }
        if !b.forward_icmp_errors {
            forbid(
                "forward-icmp-errors",
                "ICMP errors about sessions must be translated and forwarded",
                "RFC 4787 REQ-12, RFC 5508 REQ-4, REQ-5",
            )?;
        }
        if b.clear_df {
            forbid(
                "clear-df",
                "a NAT must leave DF as the sender set it",
                "RFC 1191, RFC 4787 REQ-13",
            )?;
        }
        if b.insert_host_id {
            forbid(
                "insert-host-id",
                "it tells every server the subscriber's internal address",
                "RFC 6967 section 5, RFC 7974 section 6",
            )?;
        }
        match b.hairpinning {
            Hairpinning::Off => forbid(
                "hairpinning",
                "hairpinning must be supported",
                "RFC 4787 REQ-9",
            )?,
            Hairpinning::InternalSource => forbid(
                "hairpinning",
                "hairpinned packets must carry the external source",
                "RFC 4787 REQ-9a",
            )?,
            Hairpinning::ExternalSource => {}
        }
        for (name, get, min, rfc) in timers::MINIMUMS {
            let v = get(&b.timers);
            if v < *min {
                forbid(name, &format!("{v} s is below the minimum of {min} s"), rfc)?;
            }
        }
        for (name, get, _, _) in timers::MINIMUMS {
            let v = get(&b.timers);
            if *name != "port-hold-down" && v == 0 {
                return Err(ConfigError::OutOfRange {
                    setting: name,
                    why: "must be at least 1 s".into(),
                });
            }
            if v > 30 * 24 * 3600 {
                return Err(ConfigError::OutOfRange {
                    setting: name,
                    why: format!("{v} s is more than 30 days"),
                });
            }
        }
        if b.port_overlapping {
            b.check_port_overlapping()?;
        }
        if b.sequential_step.get() != 1 && b.port_assignment != PortAssignment::Sequential {
            return Err(ConfigError::OutOfRange {
                setting: "sequential-step",
                why: "is the step of port-assignment = \"sequential\", which is not set".into(),
            });
        }
        for (port, secs) in b.timers.udp_ports.iter() {
            if secs == 0 || secs > 30 * 24 * 3600 {
                return Err(ConfigError::OutOfRange {
                    setting: "timers.udp-ports",
                    why: format!("port {port}: {secs} s is not between 1 s and 30 days"),
                });
            }
            // RFC 4787 REQ-5a: well-known ports may have shorter timers.
            if secs < 120 && port >= 1024 {
                forbid(
                    "timers.udp-ports",
                    &format!("port {port}: {secs} s is below 120 s and the port is not well-known"),
                    "RFC 4787 REQ-5, REQ-5a",
                )?;
            }
        }
        for (setting, mtu) in [("outside-mtu", b.outside_mtu), ("inside-mtu", b.inside_mtu)] {
            if mtu < 576 {
                // RFC 791: every host must accept 576-byte datagrams; an ICMP error of that size
                // must always fit.
                return Err(ConfigError::OutOfRange {
                    setting,
                    why: format!("{mtu} is below 576"),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn check_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let s = &l.subscriber;
        if s.session_rate != 0 && s.session_burst == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "subscriber.session-rate",
                why: "a session rate needs session-burst (the bucket's size) of at least 1".into(),
            });
        }
        // Named after the rate, the key that is written when its burst is missing.
        for (setting, rate, burst, why) in [
            (
                "answer-rate",
                l.answer_rate,
                l.answer_burst,
                "an answer rate needs answer-burst of at least 1",
            ),
            (
                "global-answer-rate",
                l.global_answer_rate,
                l.global_answer_burst,
                "an answer rate needs global-answer-burst of at least 1",
            ),
        ] {
            if rate != 0 && burst == 0 {
                return Err(ConfigError::OutOfRange {
                    setting,
                    why: why.into(),
                });
            }
        }
        // A per-protocol quota above the total could never be reached: one of the two is a
        // mistake, and which one only the operator knows.
        if s.max_sessions != 0 {
            for (key, quota) in [
                ("max-tcp-sessions", s.max_tcp_sessions),
                ("max-udp-sessions", s.max_udp_sessions),
                ("max-icmp-sessions", s.max_icmp_sessions),
            ] {
                if quota > s.max_sessions {
                    return Err(ConfigError::OutOfRange {
                        setting: "subscriber.max-sessions",
                        why: format!(
                            "{} is below {key} = {quota}, which could then never be reached",
                            s.max_sessions
                        ),
                    });
                }
            }
        }
        if s.any() && s.max_subscribers == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "subscriber.max-subscribers",
                why: "per-subscriber limits need room for at least 1 subscriber".into(),
            });
        }
        let positive = [
            ("max-sessions", l.max_sessions),
            ("max-mappings", l.max_mappings),
            ("max-held-syns", l.max_held_syns),
            ("max-fragment-datagrams", l.max_fragment_datagrams),
            (
                "max-held-fragments-per-source",
                l.max_held_fragments_per_source,
            ),
            ("event-queue", l.event_queue),
            ("max-static-sessions", l.max_static_sessions),
        ];
        for (setting, v) in positive {
            if v == 0 {
                return Err(ConfigError::OutOfRange {
                    setting,
                    why: "must be at least 1".into(),
                });
            }
        }
        // Session and mapping ids are u32 slot numbers with the top values reserved.
        for (setting, v) in [
            ("max-sessions", l.max_sessions),
            ("max-mappings", l.max_mappings),
            ("max-static-sessions", l.max_static_sessions),
        ] {
            if v > MAX_TABLE_ENTRIES {
                return Err(ConfigError::OutOfRange {
                    setting,
                    why: format!("{v} is more than 2^30"),
                });
            }
        }
        if l.max_mappings > l.max_sessions {
            return Err(ConfigError::OutOfRange {
                setting: "max-mappings",
                why: "every mapping has a session, so it cannot exceed max-sessions".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::new(
            vec![Ipv4Addr::new(198, 51, 100, 1)],
            Ipv4Addr::new(100, 64, 0, 1),
        )
    }

    #[test]
    fn defaults_are_valid_and_rfc6888() {
        let v = cfg().validate().expect("defaults validate");
        let b = v.get().behavior;
        assert_eq!(b.mapping, MappingBehavior::EndpointIndependent);
        assert_eq!(b.filtering, FilteringBehavior::EndpointIndependent);
        assert_eq!(b.pooling, Pooling::Paired);
        assert_eq!(b.hairpinning, Hairpinning::ExternalSource);
        assert_eq!(b.timers.udp, 300);
        assert_eq!(b.timers.tcp_established, 7440);
        assert_eq!(b.timers.port_hold_down, 120);
    }

    #[test]
    fn rfc4787_req5_udp_timer_below_2_min_needs_lab() {
        let mut c = cfg();
        c.behavior.timers.udp = 119;
        let err = c.clone().validate().expect_err("119 s refused");
        assert!(err.to_string().contains("RFC 4787 REQ-5"), "{err}");
        c.lab = true;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn rfc4787_req1_dependent_mapping_needs_lab() {
        for p in [Preset::Symmetric, Preset::LinuxMasquerade] {
            let mut c = cfg();
            c.behavior = p.behavior();
            assert!(matches!(
                c.clone().validate(),
                Err(ConfigError::ForbiddenWithoutLab { .. })
            ));
            c.lab = true;
            assert!(c.validate().is_ok(), "{p:?} valid in lab");
        }
    }

    #[test]
    fn sequential_step_needs_sequential_assignment() {
        let mut c = cfg();
        c.behavior.sequential_step = NonZeroU16::new(7).expect("not 0");
        assert!(matches!(
            c.clone().validate(),
            Err(ConfigError::OutOfRange {
                setting: "sequential-step",
                ..
            })
        ));
        c.behavior.port_assignment = PortAssignment::Sequential;
        assert!(c.validate().is_ok());
        let spec: BehaviorSpec =
            toml::from_str("port-assignment = \"sequential\"\nsequential-step = 7")
                .expect("parses");
        assert_eq!(spec.resolve().sequential_step.get(), 7);
        assert!(toml::from_str::<BehaviorSpec>("sequential-step = 0").is_err());
    }

    #[test]
    fn rfc_presets_are_valid_without_lab() {
        for p in [
            Preset::Rfc6888Cgn,
            Preset::FullCone,
            Preset::RestrictedCone,
            Preset::PortRestrictedCone,
        ] {
            let mut c = cfg();
            c.behavior = p.behavior();
            assert!(c.validate().is_ok(), "{p:?}");
        }
    }

    #[test]
    fn preset_plus_overrides() {
        let spec = BehaviorSpec {
            preset: Some(Preset::FullCone),
            filtering: Some(FilteringBehavior::AddressDependent),
            timers: Some(TimersSpec {
                udp: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let b = spec.resolve();
        assert_eq!(b.filtering, FilteringBehavior::AddressDependent);
        assert_eq!(b.port_assignment, PortAssignment::Preserve);
        assert_eq!(b.timers.udp, 600);
        assert_eq!(b.timers.icmp_query, 60);
    }

    #[test]
    fn bad_pools_and_limits_are_refused() {
        let mut c = cfg();
        c.pool.clear();
        assert_eq!(c.validate(), Err(ConfigError::EmptyPool));
        let mut c = cfg();
        c.pool.push(c.pool[0]);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::DuplicatePoolAddress(_))
        ));
        let mut c = cfg();
        c.pool.push(Ipv4Addr::new(224, 0, 0, 1));
        assert!(matches!(c.validate(), Err(ConfigError::BadPoolAddress(_))));
        let mut c = cfg();
        c.inside_address = c.pool[0];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InsideAddressInPool(_))
        ));
        let mut c = cfg();
        c.limits.max_sessions = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                setting: "max-sessions",
                ..
            })
        ));
        let mut c = cfg();
        c.behavior.outside_mtu = 100;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                setting: "outside-mtu",
                ..
            })
        ));
        let mut c = cfg();
        c.lab = true;
        c.behavior.timers.udp = 0;
        assert!(c.validate().is_err(), "zero timer refused even in lab");
    }

    fn vserver(addr: [u8; 4], port: u16, proto: Protocol) -> VirtualServerSpec {
        VirtualServerSpec {
            address: Ipv4Addr::from(addr),
            port,
            protocol: proto,
            scheduler: crate::vserver::Algorithm::RoundRobin,
            affinity: None,
            health: None,
            real_servers: vec![crate::vserver::RealServerSpec {
                address: Ipv4Addr::new(10, 0, 0, 1),
                port: None,
                weight: 1,
            }],
        }
    }

    /// A config as the file states it: the `[[rule]]` and `[[virtual-server]]` tables load
    /// into the chain and the specs, and write back the same.
    #[test]
    fn rules_and_virtual_servers_load_from_toml() {
        let mut text = toml::to_string(&cfg()).expect("serialize");
        text.push_str(
            r#"
[[rule]]
id = 10
direction = "inbound"
bidirectional = true
proto = "tcp"
dst = "198.51.100.10/32"
dst-ports = 80
action.translate.dst = { addr = "10.0.0.5/32", port = 8888 }

[[virtual-server]]
address = "198.51.100.20"
port = 80
protocol = "tcp"
scheduler = "weighted-round-robin"

[[virtual-server.real-servers]]
address = "10.0.0.1"

[[virtual-server.real-servers]]
address = "10.0.0.2"
weight = 2
"#,
        );
        let c: Config = toml::from_str(&text).expect("parse");
        assert_eq!(c.rules.len(), 1);
        assert_eq!(c.virtual_servers.len(), 1);
        assert_eq!(c.virtual_servers[0].real_servers[1].weight, 2);
        let again: Config =
            toml::from_str(&toml::to_string(&c).expect("serialize")).expect("reparse");
        assert_eq!(again, c);
        assert!(c.validate().is_ok());
        // Without them the config is as before: both are optional and empty by default.
        let plain: Config =
            toml::from_str(&toml::to_string(&cfg()).expect("serialize")).expect("parse");
        assert!(plain.rules.is_empty() && plain.virtual_servers.is_empty());
    }

    #[test]
    fn invalid_virtual_server_is_refused_naming_it() {
        let mut c = cfg();
        let mut v = vserver([198, 51, 100, 20], 80, Protocol::Tcp);
        v.real_servers[0].weight = 0;
        c.virtual_servers.push(v);
        let err = c.validate().expect_err("weight 0 refused");
        assert!(
            matches!(
                err,
                ConfigError::VirtualServer {
                    proto: Protocol::Tcp,
                    ..
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("virtual-server tcp 198.51.100.20:80: "),
            "{msg}"
        );
        assert!(msg.contains("weight"), "{msg}");
    }

    #[test]
    fn duplicate_virtual_server_is_refused() {
        let mut c = cfg();
        c.virtual_servers
            .push(vserver([198, 51, 100, 20], 80, Protocol::Tcp));
        // Another protocol or port on the same address is a different virtual server.
        c.virtual_servers
            .push(vserver([198, 51, 100, 20], 80, Protocol::Udp));
        c.virtual_servers
            .push(vserver([198, 51, 100, 20], 81, Protocol::Tcp));
        assert!(c.clone().validate().is_ok());
        c.virtual_servers
            .push(vserver([198, 51, 100, 20], 80, Protocol::Tcp));
        let err = c
            .validate()
            .expect_err("same proto, address and port twice");
        assert_eq!(
            err,
            ConfigError::DuplicateVirtualServer {
                proto: Protocol::Tcp,
                address: Endpoint::new(Ipv4Addr::new(198, 51, 100, 20), 80),
            }
        );
        assert!(err.to_string().contains("tcp 198.51.100.20:80"), "{err}");
    }

    #[test]
    fn virtual_server_on_an_endpoint_a_rule_binds_is_refused() {
        use crate::endpoint::Direction;
        use crate::rules::{Action, Ipv4Prefix, PortRange, Rule, Target, Translate};
        let prefix = |a: [u8; 4], len| Ipv4Prefix::new(Ipv4Addr::from(a), len).expect("prefix");
        // Port forward tcp 198.51.100.10:80 -> 10.0.0.5:8888.
        let mut forward = Rule::new(
            Direction::Inbound,
            prefix([0, 0, 0, 0], 0),
            prefix([198, 51, 100, 10], 32),
            Action::Translate(Translate {
                src: None,
                dst: Some(Target {
                    addr: Some(prefix([10, 0, 0, 5], 32)),
                    port: Some(8888),
                }),
            }),
        );
        forward.proto = Some(Protocol::Tcp);
        forward.dst_ports = Some(PortRange {
            first: 80,
            last: 80,
        });
        // 1:1 host NAT of a whole address, every protocol and port.
        let mut host = Rule::new(
            Direction::Outbound,
            prefix([10, 0, 0, 7], 32),
            prefix([0, 0, 0, 0], 0),
            Action::Translate(Translate {
                src: Some(Target {
                    addr: Some(prefix([198, 51, 100, 7], 32)),
                    port: None,
                }),
                dst: None,
            }),
        );
        host.bidirectional = true;
        let mut c = cfg();
        c.rules
            .insert(crate::rules::RuleId(3), forward)
            .expect("rule");
        c.rules.insert(crate::rules::RuleId(5), host).expect("rule");
        // Beside the forward: another port, another protocol.
        c.virtual_servers
            .push(vserver([198, 51, 100, 10], 81, Protocol::Tcp));
        c.virtual_servers
            .push(vserver([198, 51, 100, 10], 80, Protocol::Udp));
        assert!(c.clone().validate().is_ok());
        let mut on_forward = c.clone();
        on_forward
            .virtual_servers
            .push(vserver([198, 51, 100, 10], 80, Protocol::Tcp));
        let err = on_forward
            .validate()
            .expect_err("the port forward binds it");
        assert_eq!(
            err,
            ConfigError::VirtualServerBoundByRule {
                proto: Protocol::Tcp,
                address: Endpoint::new(Ipv4Addr::new(198, 51, 100, 10), 80),
                rule: crate::rules::RuleId(3),
            }
        );
        assert!(err.to_string().contains("rule 3"), "{err}");
        c.virtual_servers
            .push(vserver([198, 51, 100, 7], 443, Protocol::Udp));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::VirtualServerBoundByRule {
                rule: crate::rules::RuleId(5),
                ..
            })
        ));
    }
}
