//! What a config file says about a virtual server: plain serde data, checked by
//! [`VirtualServerSpec::validate`] before a [`VirtualServer`](super::VirtualServer) is built from it.

use super::VirtualServerError;
use super::health::Probe;
use super::select::Algorithm;
use crate::endpoint::Protocol;
use core::time::Duration;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Largest weight of a real server. It bounds the smooth weighted round robin's running sums
/// (at most `MAX_REAL_SERVERS * MAX_WEIGHT` each), so they fit an `i64` with room to spare.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Most real servers behind one virtual server.
pub const MAX_REAL_SERVERS: usize = 1024;

/// Most entries of a source-affinity table.
pub const MAX_AFFINITY_ENTRIES: u32 = 1 << 24;

/// One virtual server: a virtual address and port spread over real servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct VirtualServerSpec {
    /// The virtual address clients connect to.
    pub address: Ipv4Addr,
    /// The virtual port clients connect to.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// How a new connection picks its real server.
    pub scheduler: Algorithm,
    /// Keep a client address on the same real server for a while; the scheduler picks for
    /// clients without a live entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinitySpec>,
    /// Active health checks; without them every server counts as up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// The real servers, in the order ids are given out (0, 1, 2...).
    #[serde(default)]
    pub real_servers: Vec<RealServerSpec>,
}

/// One real server as the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RealServerSpec {
    /// Its address.
    pub address: Ipv4Addr,
    /// Its port; the virtual port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Its share of new connections relative to the others, 1..=[`MAX_WEIGHT`]; default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

const fn default_weight() -> u32 {
    1
}

/// Source-address affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AffinitySpec {
    /// Seconds a client address stays bound to its server after its last new connection.
    pub timeout: u32,
    /// Most client addresses remembered; past it the least recently used entry is dropped.
    #[serde(default = "default_affinity_entries")]
    pub max_entries: u32,
}

const fn default_affinity_entries() -> u32 {
    65536
}

/// Active health checks of every real server of a virtual server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthSpec {
    /// What a probe does.
    pub probe: ProbeSpec,
    /// Seconds from one probe of a server to its next.
    pub interval: u32,
    /// Seconds the daemon waits for a probe before it counts as failed; at most `interval`.
    pub timeout: u32,
    /// Consecutive successes that bring a down server back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up server out.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

const fn default_rise() -> u32 {
    2
}

const fn default_fall() -> u32 {
    3
}

/// A probe as the config writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "kebab-case")]
pub enum ProbeSpec {
    /// A TCP connect to the real server's target; success is an accepted connection.
    TcpConnect,
    /// A UDP datagram with this text to the real server's target; success is any reply.
    Udp {
        /// The datagram's payload.
        payload: String,
    },
}

impl ProbeSpec {
    /// The probe the daemon performs.
    pub(super) fn probe(&self) -> Probe {
        match self {
            ProbeSpec::TcpConnect => Probe::TcpConnect,
            ProbeSpec::Udp { payload } => Probe::UdpProbe {
                payload: payload.as_bytes().to_vec(),
            },
        }
    }
}

impl HealthSpec {
    /// The probe interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval))
    }

    /// The probe timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.timeout))
    }
}

fn out_of_range(setting: &'static str, why: impl Into<String>) -> VirtualServerError {
    VirtualServerError::OutOfRange {
        setting,
        why: why.into(),
    }
}

impl RealServerSpec {
    /// Checks the weight and the address.
    pub fn validate(&self) -> Result<(), VirtualServerError> {
        check_weight(self.weight)?;
        let a = self.address;
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            return Err(out_of_range(
                "real-servers.address",
                format!("{a} is not a unicast address"),
            ));
        }
        if self.port == Some(0) {
            return Err(out_of_range(
                "real-servers.port",
                "port 0 cannot be reached",
            ));
        }
        Ok(())
    }
}

/// Checks a weight: zero would mean "never picked", which is what draining is for.
pub(super) fn check_weight(weight: u32) -> Result<(), VirtualServerError> {
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(out_of_range(
            "real-servers.weight",
            format!("{weight} is not in 1..={MAX_WEIGHT} (drain a server to stop new connections)"),
        ));
    }
    Ok(())
}

impl VirtualServerSpec {
    /// Checks every rule; returns the first violation.
    pub fn validate(&self) -> Result<(), VirtualServerError> {
        if self.protocol == Protocol::Icmp {
            return Err(out_of_range(
                "protocol",
                "a virtual server is tcp or udp; icmp has no ports",
            ));
        }
        if self.port == 0 {
            return Err(out_of_range("port", "port 0 cannot be reached"));
        }
        let a = self.address;
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            return Err(out_of_range(
                "address",
                format!("{a} is not a unicast address"),
            ));
        }
        if self.real_servers.len() > MAX_REAL_SERVERS {
            return Err(VirtualServerError::TooManyServers);
        }
        let mut seen = HashSet::new();
        for r in &self.real_servers {
            r.validate()?;
            let target = (r.address, r.port.unwrap_or(self.port));
            if !seen.insert(target) {
                return Err(VirtualServerError::DuplicateServer {
                    addr: target.0,
                    port: target.1,
                });
            }
        }
        if let Some(aff) = &self.affinity {
            if aff.timeout == 0 {
                return Err(out_of_range("affinity.timeout", "must be at least 1 s"));
            }
            if aff.max_entries == 0 || aff.max_entries > MAX_AFFINITY_ENTRIES {
                return Err(out_of_range(
                    "affinity.max-entries",
                    format!("{} is not in 1..={MAX_AFFINITY_ENTRIES}", aff.max_entries),
                ));
            }
        }
        if let Some(h) = &self.health {
            if h.interval == 0 || h.timeout == 0 {
                return Err(out_of_range(
                    "health",
                    "interval and timeout must be at least 1 s",
                ));
            }
            if h.timeout > h.interval {
                // One probe in flight per server: the next cannot start before the last ends.
                return Err(out_of_range(
                    "health.timeout",
                    format!("{} s is longer than the interval", h.timeout),
                ));
            }
            if h.rise == 0 || h.fall == 0 {
                return Err(out_of_range("health", "rise and fall must be at least 1"));
            }
        }
        Ok(())
    }
}
