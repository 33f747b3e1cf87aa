//! Syslog in RFC 5424 form, one datagram per event: UDP to a collector (RFC 5426) or a local
//! Unix datagram socket (`/dev/log`).
//!
//! ```text
//! <134>1 2026-11-22T16:14:30.123Z gw1 natgate 4242 SESSION-CREATE [nat@32473 natEvent="4" protocolIdentifier="17" sourceIPv4Address="100.64.0.10" sourceTransportPort="5000" postNATSourceIPv4Address="198.51.100.1" postNAPTSourceTransportPort="40000" origin="dynamic"] NAT44 session create
//! ```
//!
//! The structured data carries the NAT logging information model (RFC 8158 section 4, the
//! fields draft-ietf-behave-syslog-nat-logging puts in syslog), with the RFC 8158 / IANA IPFIX
//! element names as SD-PARAM names, so a collector that reads both formats sees one vocabulary.
//! No SD-ID for NAT logging is registered with IANA, so the SD-ID is `nat@<enterprise number>`
//! (RFC 5424 section 7.2.2); the default 32473 is the documentation number of RFC 5612.
//! Destinations are left out unless configured (RFC 6888 REQ-12). Session messages also carry
//! `origin` (what made the session: `dynamic`, `rule ID`, `vserver ADDR:PORT server ID`), a
//! parameter of our own since no IPFIX element names a static rule or a real server.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use natgate_core::Event;

use super::{LogError, Lost, Record, Sink};
use crate::observability::eventlog::{TimeBase, rfc3339};

/// The example enterprise number of RFC 5612, the default SD-ID suffix.
pub const DOCUMENTATION_ENTERPRISE: u32 = 32473;

/// Where the messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogTarget {
    /// A collector, one UDP datagram per message (RFC 5426).
    Udp(SocketAddr),
    /// A local Unix datagram socket such as `/dev/log`.
    Unix(PathBuf),
}

/// A syslog facility code, 0..=23 (RFC 5424 section 6.2.1); `local0` is 16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

impl Facility {
    /// `local0`, a common choice for network devices.
    pub const LOCAL0: Facility = Facility(16);

    /// The facility with code `code`, if it is one (0..=23).
    pub const fn new(code: u8) -> Option<Facility> {
        if code <= 23 {
            Some(Facility(code))
        } else {
            None
        }
    }

    /// The code.
    pub const fn code(self) -> u8 {
        self.0
    }
}

/// How the sink is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// Where messages go.
    pub target: SyslogTarget,
    /// The facility of every message.
    pub facility: Facility,
    /// The HOSTNAME field; characters outside printable US-ASCII are replaced by `_`, and an
    /// empty name is sent as the NILVALUE `-`.
    pub hostname: String,
    /// The PROCID field (the daemon's process id).
    pub procid: u32,
    /// The enterprise number in the SD-ID `nat@N`.
    pub enterprise: u32,
    /// Put the remote endpoint in session records (RFC 6888 REQ-12: off unless asked).
    pub log_destinations: bool,
}

/// Severity informational (RFC 5424 table 2) for ordinary events.
const SEVERITY_INFO: u8 = 6;
/// Severity warning for failures (RFC 6888 REQ-11: resource exhaustion is reported).
const SEVERITY_WARNING: u8 = 4;

/// Sends each event as one RFC 5424 message.
pub struct SyslogSink {
    out: Transport,
    config: SyslogConfig,
    hostname: String,
    time: TimeBase,
    msg: String,
}

enum Transport {
    /// Connected once a route lets it (`connect` fails without one), so that the collector's
    /// ICMP port unreachable turns the next send into ECONNREFUSED: a collector that is down
    /// shows in the loss counters.
    Udp {
        socket: UdpSocket,
        to: SocketAddr,
        connected: bool,
    },
    Unix(UnixDatagram, PathBuf),
}

impl SyslogSink {
    /// A sink sending to `config.target`; the socket is opened now, and connected to a UDP
    /// collector if there is a route to it (else at the first send that finds one).
    pub fn open(config: SyslogConfig, time: TimeBase) -> Result<SyslogSink, LogError> {
        let out = match &config.target {
            SyslogTarget::Udp(to) => {
                let bind: SocketAddr = match to {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(bind)?;
                let connected = socket.connect(to).is_ok();
                Transport::Udp {
                    socket,
                    to: *to,
                    connected,
                }
            }
            SyslogTarget::Unix(path) => Transport::Unix(UnixDatagram::unbound()?, path.clone()),
        };
        let hostname = header_field(&config.hostname, 255);
        Ok(SyslogSink {
            out,
            config,
            hostname,
            time,
            msg: String::with_capacity(512),
        })
    }

    /// Formats `rec` as one RFC 5424 message into `out` (cleared first).
    pub fn format(&self, rec: &Record, out: &mut String) {
        out.clear();
        let severity = if rec.event.is_failure() {
            SEVERITY_WARNING
        } else {
            SEVERITY_INFO
        };
        let pri = u16::from(self.config.facility.code()) * 8 + u16::from(severity);
        let ts = rfc3339(self.time.to_system(rec.at));
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "<{pri}>1 {ts} {} natgate {} {} [nat@{}",
            self.hostname,
            self.config.procid,
            rec.event.msgid(),
            self.config.enterprise
        );
        param(out, "natEvent", rec.event.value());
        if let Some(q) = rec.quota {
            param(out, "natQuotaExceededEvent", q.value());
        }
        if let Some(p) = rec.proto {
            param(out, "protocolIdentifier", p.ip_number());
        }
        param(out, "sourceIPv4Address", rec.internal.addr);
        if rec.internal.port != 0 || rec.block.is_none() {
            param(out, "sourceTransportPort", rec.internal.port);
        }
        if let Some(x) = rec.external {
            param(out, "postNATSourceIPv4Address", x.addr);
            if rec.block.is_none() {
                param(out, "postNAPTSourceTransportPort", x.port);
            }
        }
        if let Some(b) = rec.block {
            param(out, "portRangeStart", b.first);
            param(out, "portRangeEnd", b.last);
        }
        if let Some(r) = rec.remote_if(self.config.log_destinations) {
            param(out, "destinationIPv4Address", r.addr);
            param(out, "destinationTransportPort", r.port);
        }
        // Not an IPFIX element: our own SD-PARAM in our SD-ID, named as the JSON-lines field.
        if let Some(o) = &rec.origin {
            param(out, "origin", o);
        }
        if let Some(e) = rec.ended {
            param(out, "reason", e.name());
        }
        out.push_str("] ");
        out.push_str(rec.event.description());
    }

    fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        match &mut self.out {
            Transport::Udp {
                socket,
                to,
                connected,
            } => {
                if !*connected {
                    socket.connect(*to)?;
                    *connected = true;
                }
                socket.send(msg).map(drop)
            }
            Transport::Unix(s, path) => s.send_to(msg, path).map(drop),
        }
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &'static str {
        "syslog"
    }

    /// A refused send loses its event. A UDP collector that is down answers (at most) with an
    /// ICMP error that fails the next send, so the count is a lower bound of what it missed.
    fn record(&mut self, ev: &Event) -> Result<(), Lost> {
        let mut msg = std::mem::take(&mut self.msg);
        self.format(&Record::from_event(ev), &mut msg);
        let sent = self.send(msg.as_bytes());
        self.msg = msg;
        sent.map_err(|e| Lost::new(1, e))
    }

    /// Datagrams are sent as they are made; nothing is held back.
    fn flush(&mut self) -> Result<(), Lost> {
        Ok(())
    }
}

/// Appends ` name="value"` with the value escaped (RFC 5424 section 6.3.3: `"`, `\` and `]`
/// are preceded by a backslash).
fn param(out: &mut String, name: &str, value: impl fmt::Display) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    let start = out.len();
    let _ = write!(out, "{value}");
    if out[start..].contains(['"', '\\', ']']) {
        let raw = out.split_off(start);
        for c in raw.chars() {
            if matches!(c, '"' | '\\' | ']') {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
}

/// A header field (RFC 5424 section 6: PRINTUSASCII, at most `max` characters; NILVALUE if
/// empty).
fn header_field(s: &str, max: usize) -> String {
    let f: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if f.is_empty() { "-".to_owned() } else { f }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::logsink::{NatEvent, PortRange};
    use natgate_core::{Endpoint, Instant, Protocol};
    use std::time::{Duration, UNIX_EPOCH};

    fn base() -> TimeBase {
        TimeBase::new(
            Instant::from_secs(10),
            UNIX_EPOCH + Duration::from_millis(1_795_364_070_123),
        )
    }

    fn sink(log_destinations: bool) -> SyslogSink {
        SyslogSink::open(
            SyslogConfig {
                target: SyslogTarget::Udp("127.0.0.1:9".parse().expect("addr")),
                facility: Facility::LOCAL0,
                hostname: "gw 1".into(),
                procid: 4242,
                enterprise: DOCUMENTATION_ENTERPRISE,
                log_destinations,
            },
            base(),
        )
        .expect("open")
    }

    #[test]
    fn escapes_the_three_characters_rfc_5424_names() {
        let mut s = String::new();
        param(&mut s, "x", r#"a"b\c]d"#);
        assert_eq!(s, r#" x="a\"b\\c\]d""#);
        s.clear();
        param(&mut s, "n", 40000);
        assert_eq!(s, r#" n="40000""#);
    }

    #[test]
    fn facility_codes_are_bounded() {
        assert_eq!(Facility::new(23).map(Facility::code), Some(23));
        assert_eq!(Facility::new(24), None);
    }

    #[test]
    fn session_message_has_the_documented_bytes() {
        let rec = Record::from_event(&Event::SessionCreated {
            at: Instant::from_secs(10),
            proto: Protocol::Udp,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
            external: Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 40000),
            remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 3478),
            origin: natgate_core::SessionOrigin::Rule(natgate_core::rules::RuleId(10)),
        });
        let mut m = String::new();
        sink(false).format(&rec, &mut m);
        assert_eq!(
            m,
            "<134>1 2026-11-22T16:14:30.123Z gw_1 natgate 4242 SESSION-CREATE [nat@32473 \
             natEvent=\"4\" protocolIdentifier=\"17\" sourceIPv4Address=\"100.64.0.10\" \
             sourceTransportPort=\"5000\" postNATSourceIPv4Address=\"198.51.100.1\" \
             postNAPTSourceTransportPort=\"40000\" origin=\"rule 10\"] NAT44 session create"
        );
        sink(true).format(&rec, &mut m);
        assert!(m.ends_with(
            " destinationIPv4Address=\"203.0.113.10\" destinationTransportPort=\"3478\" \
             origin=\"rule 10\"] NAT44 session create"
        ));
    }

    #[test]
    fn block_and_failure_messages() {
        let rec = Record {
            at: Instant::from_secs(10),
            event: NatEvent::PortBlockAllocation,
            proto: None,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 0),
            external: Some(Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 0)),
            remote: None,
            block: Some(PortRange {
                first: 2048,
                last: 2559,
            }),
            quota: None,
            origin: None,
            ended: None,
        };
        let mut m = String::new();
        sink(false).format(&rec, &mut m);
        assert!(m.contains(
            "[nat@32473 natEvent=\"16\" sourceIPv4Address=\"100.64.0.10\" \
             postNATSourceIPv4Address=\"198.51.100.1\" portRangeStart=\"2048\" portRangeEnd=\"2559\"]"
        ), "{m}");
        let fail = Record::from_event(&Event::MappingFailed {
            at: Instant::from_secs(10),
            proto: Protocol::Tcp,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
            remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 80),
            reason: natgate_core::DropReason::MappingFailed,
        });
        sink(false).format(&fail, &mut m);
        // local0 (16) * 8 + warning (4).
        assert!(m.starts_with("<132>1 "), "{m}");
        assert!(!m.contains("destination"));
        let quota = Record::from_event(&Event::MappingFailed {
            at: Instant::from_secs(10),
            proto: Protocol::Udp,
            internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
            remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 80),
            reason: natgate_core::DropReason::SubscriberSessionLimit,
        });
        sink(false).format(&quota, &mut m);
        assert!(m.starts_with("<132>1 "), "{m}");
        assert!(
            m.contains(" QUOTA-EXCEEDED [nat@32473 natEvent=\"13\" natQuotaExceededEvent=\"3\" protocolIdentifier=\"17\""),
            "{m}"
        );
    }
}
