//! Timers, in seconds, with the names of the RFC 8512 YANG model and RFC-compliant defaults.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Every idle timer of the engine, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Timers {
    /// UDP mapping timer (RFC 4787 REQ-5: at least 120 s, 300 s or more recommended).
    pub udp: u32,
    /// UDP timers for sessions with chosen remote ports, instead of `udp` (RFC 4787 REQ-5a
    /// allows shorter ones for well-known ports, DNS say; others below 120 s are lab only).
    pub udp_ports: PortTimers,
    /// Established TCP idle timer (RFC 5382 REQ-5: at least 7440 s).
    pub tcp_established: u32,
    /// TCP opening (SYN seen, not yet established) timer (RFC 7857 section 2.1: at least 240 s).
    pub tcp_transitory_open: u32,
    /// TCP closing (FIN seen both ways) timer (RFC 7857 section 2.1: at least 240 s).
    pub tcp_transitory_close: u32,
    /// How long a session stays after a RST before deletion (RFC 7857 section 2.2: about 4 min).
    pub tcp_rst_linger: u32,
    /// How long an unsolicited inbound SYN is held (RFC 5382 REQ-4: at least 6 s).
    pub tcp_incoming_syn: u32,
    /// ICMP query timer (RFC 5508 REQ-2: at least 60 s).
    pub icmp_query: u32,
    /// How long fragment state and held fragments are kept (RFC 4787 REQ-14).
    pub fragment: u32,
    /// How long a released external port is held back from reuse (RFC 6888 REQ-8: 120 s).
    pub port_hold_down: u32,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            udp: 300,
            udp_ports: PortTimers::default(),
            tcp_established: 7440,
            tcp_transitory_open: 240,
            tcp_transitory_close: 240,
            tcp_rst_linger: 240,
            tcp_incoming_syn: 6,
            icmp_query: 60,
            fragment: 2,
            port_hold_down: 120,
        }
    }
}

impl Timers {
    /// The UDP timer of a session with remote port `remote_port`.
    #[inline]
    pub fn udp_for(&self, remote_port: u16) -> u32 {
        self.udp_ports.get(remote_port).unwrap_or(self.udp)
    }
}

/// Timers for up to [`PortTimers::MAX`] ports, each a port and seconds: a fixed array, so that
/// the behaviour stays a plain value. Written in config as a table of port = seconds
/// (`udp-ports = { 53 = 30 }`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, u32>", into = "BTreeMap<String, u32>")]
pub struct PortTimers {
    entries: [(u16, u32); PortTimers::MAX],
    len: u8,
}

/// Why a table of port timers is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortTimersError {
    /// A key that is not a port number.
    #[error("{0:?} is not a port (1-65535)")]
    NotAPort(String),
    /// More ports than [`PortTimers::MAX`].
    #[error("at most {} ports", PortTimers::MAX)]
    TooMany,
}

impl PortTimers {
    /// The most ports with a timer of their own.
    pub const MAX: usize = 8;

    /// Timers for `list` (port, seconds); a port given twice keeps its last value.
    pub fn new(list: &[(u16, u32)]) -> Result<Self, PortTimersError> {
        let mut t = PortTimers::default();
        for &(port, secs) in list {
            if port == 0 {
                return Err(PortTimersError::NotAPort("0".into()));
            }
            let n = usize::from(t.len);
            if let Some(e) = t.entries[..n].iter_mut().find(|e| e.0 == port) {
                e.1 = secs;
                continue;
            }
            let slot = t.entries.get_mut(n).ok_or(PortTimersError::TooMany)?;
            *slot = (port, secs);
            t.len += 1;
        }
        Ok(t)
    }

    /// The timer of `port`, if it has one.
    #[inline]
    pub fn get(&self, port: u16) -> Option<u32> {
        self.iter().find(|e| e.0 == port).map(|e| e.1)
    }

    /// Every (port, seconds).
    pub fn iter(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.entries[..usize::from(self.len)].iter().copied()
    }
}

impl TryFrom<BTreeMap<String, u32>> for PortTimers {
    type Error = PortTimersError;

    fn try_from(m: BTreeMap<String, u32>) -> Result<Self, Self::Error> {
        let list = m
            .into_iter()
            .map(|(k, v)| match k.parse::<u16>() {
                Ok(p) if p != 0 => Ok((p, v)),
                _ => Err(PortTimersError::NotAPort(k)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        PortTimers::new(&list)
    }
}

impl From<PortTimers> for BTreeMap<String, u32> {
    fn from(t: PortTimers) -> Self {
        t.iter().map(|(p, s)| (p.to_string(), s)).collect()
    }
}

/// One row of [`MINIMUMS`]: the setting's name, how to read it, its minimum, the requirement.
pub(crate) type Minimum = (&'static str, fn(&Timers) -> u32, u32, &'static str);

/// The lowest value each timer may take without a lab override, with the requirement behind it.
pub(crate) const MINIMUMS: &[Minimum] = &[
    ("udp", |t| t.udp, 120, "RFC 4787 REQ-5"),
    (
        "tcp-established",
        |t| t.tcp_established,
        7440,
        "RFC 5382 REQ-5",
    ),
    (
        "tcp-transitory-open",
        |t| t.tcp_transitory_open,
        240,
        "RFC 5382 REQ-5 / RFC 7857",
    ),
    (
        "tcp-transitory-close",
        |t| t.tcp_transitory_close,
        240,
        "RFC 5382 REQ-5 / RFC 7857",
    ),
    (
        "tcp-rst-linger",
        |t| t.tcp_rst_linger,
        1,
        "RFC 7857 section 2.2",
    ),
    (
        "tcp-incoming-syn",
        |t| t.tcp_incoming_syn,
        6,
        "RFC 5382 REQ-4",
    ),
    ("icmp-query", |t| t.icmp_query, 60, "RFC 5508 REQ-2"),
    ("fragment", |t| t.fragment, 1, "RFC 4787 REQ-14"),
    (
        "port-hold-down",
        |t| t.port_hold_down,
        120,
        "RFC 6888 REQ-8",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_port_timers_override_the_udp_timer_for_their_port() {
        #[derive(Deserialize)]
        struct F {
            t: PortTimers,
        }
        let f: F = toml::from_str("t = { 53 = 30, 123 = 60 }").expect("parses");
        let timers = Timers {
            udp_ports: f.t,
            ..Timers::default()
        };
        assert_eq!(
            (timers.udp_for(53), timers.udp_for(123), timers.udp_for(54)),
            (30, 60, 300)
        );
        assert!(toml::from_str::<F>("t = { dns = 30 }").is_err());
        assert!(toml::from_str::<F>("t = { 0 = 30 }").is_err());
        let nine: Vec<(u16, u32)> = (1..=9).map(|p| (p, 10)).collect();
        assert_eq!(PortTimers::new(&nine), Err(PortTimersError::TooMany));
        assert_eq!(
            PortTimers::new(&[(53, 1), (53, 2)]).expect("ok").get(53),
            Some(2)
        );
        let back: BTreeMap<String, u32> = f.t.into();
        assert_eq!(back.get("53"), Some(&30));
    }
}
