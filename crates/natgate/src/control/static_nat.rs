//! The control messages of static NAT rules and virtual servers (`docs/control-protocol.md`,
//! "Rules" and "Virtual servers"): their arguments and answers, and how `natgate ctl` spells
//! them on its command line.
//!
//! Rules travel as the core's own [`Rule`] (the `[[rule]]` table of the config file, as JSON),
//! so the wire, the file and `ctl rules --toml` say the same thing in the same words.

use core::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use natgate_core::rules::{Rule, RuleId};
use natgate_core::vserver::{Health, ServerState, VirtualServerSpec};
use natgate_core::{Endpoint, Protocol};
use serde::{Deserialize, Serialize};

/// Answer to `rules` and to every rule change: the running chain in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleList {
    /// The rule the change made or removed (absent for `rules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<RuleId>,
    /// The rules, lowest id (first match) first.
    pub rules: Vec<Rule>,
    /// Sessions ended by `rule delete` with `flush` (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flushed: Option<u64>,
    /// The running virtual servers, so that `ctl rules --toml` writes back those made at run
    /// time too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_servers: Vec<VirtualServerSpec>,
}

impl RuleList {
    /// The chain and the virtual servers as config-file text: `[[rule]]` and
    /// `[[virtual-server]]` tables, ready to paste into the file.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct File<'a> {
            rule: &'a [Rule],
            #[serde(skip_serializing_if = "<[VirtualServerSpec]>::is_empty")]
            virtual_server: &'a [VirtualServerSpec],
        }
        toml::to_string(&File {
            rule: &self.rules,
            virtual_server: &self.virtual_servers,
        })
    }
}

/// A virtual server given as config-file text: one `[[virtual-server]]` table (or its body),
/// as `ctl vserver create` takes it.
pub fn parse_virtual_server_toml(text: &str) -> Result<VirtualServerSpec, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct File {
        virtual_server: Vec<VirtualServerSpec>,
    }
    let text = text.trim();
    if text.starts_with("[[") {
        let f: File =
            toml::from_str(text).map_err(|e| format!("not a virtual server: {}", e.message()))?;
        match <[VirtualServerSpec; 1]>::try_from(f.virtual_server) {
            Ok([one]) => Ok(one),
            Err(_) => Err("give exactly one [[virtual-server]] table".into()),
        }
    } else {
        toml::from_str(text).map_err(|e| format!("not a virtual server: {}", e.message()))
    }
}

/// Arguments of `rule`: one change to the running chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RuleChange {
    /// The rule goes in at `id`; a rule already there and every rule after it move up by one.
    Insert {
        /// Where the rule goes.
        id: RuleId,
        /// The rule; its own `id` is ignored.
        rule: Rule,
    },
    /// The rule goes after the last one (id 1 in an empty chain).
    Append {
        /// The rule; its own `id` is ignored.
        rule: Rule,
    },
    /// The rule with this id goes; the other ids do not change. Its sessions run on until
    /// their timers end, as with most NATs, unless `flush`.
    Delete {
        /// The rule to delete.
        id: RuleId,
        /// Also end every session the rule made, at once (sent only when true, so an older
        /// daemon still reads a plain delete).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        flush: bool,
    },
}

/// A virtual server as `ctl` names it: `ADDR:PORT/PROTO`, e.g. `203.0.113.80:80/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerRef {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The virtual address and port.
    pub address: SocketAddrV4,
}

impl VirtualServerRef {
    /// The virtual endpoint.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(*self.address.ip(), self.address.port())
    }
}

impl fmt::Display for VirtualServerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.protocol.name())
    }
}

impl FromStr for VirtualServerRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a virtual server ADDR:PORT/PROTO (203.0.113.80:80/tcp)");
        let (addr, proto) = s.split_once('/').ok_or_else(bad)?;
        let protocol = Protocol::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(proto))
            .ok_or_else(bad)?;
        Ok(VirtualServerRef {
            protocol,
            address: addr.parse().map_err(|_| bad())?,
        })
    }
}

/// A real server as `ctl` names it: `ADDR` or `ADDR:PORT` (without a port: the virtual port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealServerRef {
    /// Its address.
    pub address: Ipv4Addr,
    /// Its port; the virtual port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl RealServerRef {
    /// Its port, given the virtual server's.
    pub fn port_or(&self, virtual_port: u16) -> u16 {
        self.port.unwrap_or(virtual_port)
    }
}

impl fmt::Display for RealServerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.address),
            None => write!(f, "{}", self.address),
        }
    }
}

impl FromStr for RealServerRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a real server ADDR or ADDR:PORT");
        match s.split_once(':') {
            Some((a, p)) => Ok(RealServerRef {
                address: a.parse().map_err(|_| bad())?,
                port: Some(p.parse().map_err(|_| bad())?),
            }),
            None => Ok(RealServerRef {
                address: s.parse().map_err(|_| bad())?,
                port: None,
            }),
        }
    }
}

/// What `vserver` does to one real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RealServerOp {
    /// Add it (active, level with the others) with `weight` (default 1).
    Add,
    /// Stop new connections to it; existing ones finish.
    Drain,
    /// Let it take new connections again.
    Undrain,
    /// Remove it. Refused while it has connections unless `force`; forced, its open connections
    /// keep their translation until they end.
    Remove,
    /// Change its weight to `weight`.
    Weight,
}

impl RealServerOp {
    /// The verb, as the wire and `ctl vserver` spell it.
    pub const fn name(self) -> &'static str {
        match self {
            RealServerOp::Add => "add",
            RealServerOp::Drain => "drain",
            RealServerOp::Undrain => "undrain",
            RealServerOp::Remove => "remove",
            RealServerOp::Weight => "weight",
        }
    }
}

/// Arguments of `vserver`: one change to one real server of one virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerChange {
    /// The virtual server.
    pub virtual_server: VirtualServerRef,
    /// The real server.
    pub real_server: RealServerRef,
    /// What to do.
    pub op: RealServerOp,
    /// `add`: its weight (default 1); `weight`: the new weight (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `remove`: remove even with open connections.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub force: bool,
}

/// Answer to `vservers` (and, with one entry, to `vserver`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualServerList {
    /// The virtual servers, in config order.
    pub virtual_servers: Vec<VirtualServerRow>,
}

/// One virtual server with its real servers; counts summed over workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualServerRow {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The virtual address and port.
    pub address: SocketAddrV4,
    /// The scheduling algorithm's config name.
    pub scheduler: String,
    /// Clients with a live affinity entry (0 without affinity).
    pub affinity_entries: u64,
    /// The real servers, in id order.
    pub real_servers: Vec<RealServerRow>,
}

/// One real server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealServerRow {
    /// Its id within the virtual server (given out in order, never reused).
    pub id: u32,
    /// Where its connections go.
    pub target: SocketAddrV4,
    /// Its weight.
    pub weight: u32,
    /// Whether it takes new connections.
    pub state: ServerStateName,
    /// An operator drained it (also shown when health has it down).
    pub draining: bool,
    /// What its health checks say (`up` without health checks).
    pub health: HealthName,
    /// Live connections.
    pub connections: u64,
    /// Bytes its connections carried, both directions.
    pub bytes: u64,
}

impl RealServerRow {
    /// Adds another worker's counts of the same server.
    pub fn merge(&mut self, other: &RealServerRow) {
        self.connections = self.connections.saturating_add(other.connections);
        self.bytes = self.bytes.saturating_add(other.bytes);
    }
}

impl VirtualServerRow {
    /// Adds another worker's copy of the same virtual server: counts add per real server.
    /// The copies are replicas (same changes, same probe results), so states agree.
    pub fn merge(&mut self, other: &VirtualServerRow) {
        self.affinity_entries = self.affinity_entries.saturating_add(other.affinity_entries);
        for o in &other.real_servers {
            match self.real_servers.iter_mut().find(|r| r.id == o.id) {
                Some(r) => r.merge(o),
                None => self.real_servers.push(o.clone()),
            }
        }
    }
}

impl VirtualServerList {
    /// Adds another worker's list.
    pub fn merge(&mut self, other: VirtualServerList) {
        for o in other.virtual_servers {
            match self
                .virtual_servers
                .iter_mut()
                .find(|v| v.protocol == o.protocol && v.address == o.address)
            {
                Some(v) => v.merge(&o),
                None => self.virtual_servers.push(o),
            }
        }
    }
}

/// A real server's state, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerStateName {
    /// Takes new connections.
    Active,
    /// Drained by an operator.
    Draining,
    /// Taken out by its health checks.
    Down,
}

impl From<ServerState> for ServerStateName {
    fn from(s: ServerState) -> Self {
        match s {
            ServerState::Active => ServerStateName::Active,
            ServerState::Draining => ServerStateName::Draining,
            ServerState::Down => ServerStateName::Down,
        }
    }
}

impl ServerStateName {
    /// The lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            ServerStateName::Active => "active",
            ServerStateName::Draining => "draining",
            ServerStateName::Down => "down",
        }
    }
}

/// A real server's health, as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthName {
    /// Answers (or no health checks).
    Up,
    /// Failed its checks.
    Down,
}

impl From<Health> for HealthName {
    fn from(h: Health) -> Self {
        match h {
            Health::Up => HealthName::Up,
            Health::Down => HealthName::Down,
        }
    }
}

impl HealthName {
    /// The lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            HealthName::Up => "up",
            HealthName::Down => "down",
        }
    }
}

/// Reads a rule written as TOML: either the body of a `[[rule]]` table (`key = value` lines)
/// or its inline form (`direction = "inbound", dst = "198.51.100.10/32", ...`, braces
/// optional). The `id` may be left out: the chain gives it.
pub fn parse_rule_toml(text: &str) -> Result<Rule, String> {
    let text = text.trim();
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let table: toml::Table = match toml::from_str(inner) {
        Ok(t) => t,
        Err(doc_err) => {
            let inline: toml::Table = toml::from_str(&format!("r = {{ {inner} }}"))
                .map_err(|_| format!("not a rule: {doc_err}"))?;
            match inline.get("r") {
                Some(toml::Value::Table(t)) => t.clone(),
                _ => return Err(format!("not a rule: {doc_err}")),
            }
        }
    };
    let mut table = table;
    table.entry("id").or_insert(toml::Value::Integer(0));
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| format!("not a rule: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgate_core::rules::{Action, Target, Translate};

    #[test]
    fn rules_read_from_toml_lines_or_inline() {
        let want = parse_rule_toml(
            "direction = \"inbound\"\nproto = \"tcp\"\ndst = \"198.51.100.10/32\"\n\
             dst-ports = 80\naction.translate.dst = { addr = \"100.64.0.5/32\", port = 8888 }",
        )
        .expect("lines");
        let inline = parse_rule_toml(
            "direction = \"inbound\", proto = \"tcp\", dst = \"198.51.100.10/32\", \
             dst-ports = 80, action.translate.dst = { addr = \"100.64.0.5/32\", port = 8888 }",
        )
        .expect("inline");
        assert_eq!(inline, want);
        let braces = parse_rule_toml(
            "{ direction = \"inbound\", proto = \"tcp\", dst = \"198.51.100.10/32\", \
             dst-ports = 80, action.translate.dst = { addr = \"100.64.0.5/32\", port = 8888 } }",
        )
        .expect("braces");
        assert_eq!(braces, want);
        let Action::Translate(Translate {
            dst: Some(Target { port, .. }),
            ..
        }) = want.action
        else {
            panic!("{want:?}")
        };
        assert_eq!(port, Some(8888));
        let e = parse_rule_toml("direction = \"sideways\", action = \"exempt\"")
            .expect_err("bad direction");
        assert!(e.contains("sideways"), "{e}");
        assert!(parse_rule_toml("direction = \"inbound\", actoin = \"exempt\"").is_err());
    }

    #[test]
    fn references_parse_and_print() {
        let v: VirtualServerRef = "203.0.113.80:80/tcp".parse().expect("vip");
        assert_eq!(v.to_string(), "203.0.113.80:80/tcp");
        assert_eq!(
            v.endpoint(),
            Endpoint::new(Ipv4Addr::new(203, 0, 113, 80), 80)
        );
        assert!("203.0.113.80:80".parse::<VirtualServerRef>().is_err());
        assert!("203.0.113.80/tcp".parse::<VirtualServerRef>().is_err());
        let r: RealServerRef = "10.0.0.2:8888".parse().expect("real");
        assert_eq!(
            (r.port_or(80), r.to_string().as_str()),
            (8888, "10.0.0.2:8888")
        );
        let r: RealServerRef = "10.0.0.1".parse().expect("real");
        assert_eq!(r.port_or(80), 80);
        assert!("10.0.0.1:x".parse::<RealServerRef>().is_err());
    }

    #[test]
    fn worker_lists_merge_by_server() {
        let row = |id, connections| RealServerRow {
            id,
            target: "10.0.0.1:80".parse().expect("addr"),
            weight: 1,
            state: ServerStateName::Active,
            draining: false,
            health: HealthName::Up,
            connections,
            bytes: 100,
        };
        let vs = |rows| VirtualServerList {
            virtual_servers: vec![VirtualServerRow {
                protocol: Protocol::Tcp,
                address: "203.0.113.80:80".parse().expect("addr"),
                scheduler: "round-robin".into(),
                affinity_entries: 1,
                real_servers: rows,
            }],
        };
        let mut a = vs(vec![row(0, 2), row(1, 1)]);
        a.merge(vs(vec![row(0, 3), row(1, u64::MAX)]));
        let v = &a.virtual_servers[0];
        assert_eq!(v.affinity_entries, 2);
        assert_eq!(v.real_servers[0].connections, 5);
        assert_eq!(v.real_servers[0].bytes, 200);
        assert_eq!(v.real_servers[1].connections, u64::MAX, "saturates");
    }
}
