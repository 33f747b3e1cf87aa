//! Timers, in seconds, with the names of the RFC 8512 YANG model and RFC-compliant defaults.

use serde::{Deserialize, Serialize};

/// Every idle timer of the engine, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Timers {
    /// UDP mapping timer (RFC 4787 REQ-5: at least 120 s, 300 s or more recommended).
    pub udp: u32,
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
