//! An IPFIX exporter (RFC 7011) over UDP with the NAT information elements of RFC 8158.
//!
//! Each flush sends the batch's records as IPFIX messages of at most
//! [`IpfixConfig::max_message`] bytes: the 16-byte message header (version 10, length, export
//! time, sequence number, observation domain), then one data set per template. Over UDP the
//! collector may miss a template, so the template set (set id 2) goes out in the first message
//! and again whenever [`IpfixConfig::template_refresh`] has passed (RFC 7011 section 8.4).
//!
//! One template per record shape (RFC 8158 section 4.2 lists the fields per event):
//!
//! | id  | shape                        | fields (IANA element id)                                 |
//! |-----|------------------------------|----------------------------------------------------------|
//! | 256 | session / mapping            | observationTimeMilliseconds (323), natEvent (230), protocolIdentifier (4), sourceIPv4Address (8), sourceTransportPort (7), postNATSourceIPv4Address (225), postNAPTSourceTransportPort (227) |
//! | 257 | session with destination     | 256's fields, destinationIPv4Address (12), destinationTransportPort (11) |
//! | 258 | addresses exhausted          | observationTimeMilliseconds, natEvent, protocolIdentifier, sourceIPv4Address, sourceTransportPort |
//! | 259 | port block                   | observationTimeMilliseconds, natEvent, sourceIPv4Address, postNATSourceIPv4Address, portRangeStart (361), portRangeEnd (362) |
//! | 260 | quota exceeded               | observationTimeMilliseconds, natEvent (13), natQuotaExceededEvent (466), protocolIdentifier, sourceIPv4Address, sourceTransportPort |
//!
//! Destinations are exported only if configured (RFC 6888 REQ-12).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natgate_core::Event;

use super::{LogError, Lost, Record, Sink};
use crate::observability::eventlog::TimeBase;

/// IPFIX information element ids (IANA "IPFIX Information Elements").
mod ie {
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const POST_NAT_SOURCE_IPV4_ADDRESS: u16 = 225;
    pub const POST_NAPT_SOURCE_TRANSPORT_PORT: u16 = 227;
    pub const NAT_EVENT: u16 = 230;
    pub const OBSERVATION_TIME_MILLISECONDS: u16 = 323;
    pub const PORT_RANGE_START: u16 = 361;
    pub const PORT_RANGE_END: u16 = 362;
    pub const NAT_QUOTA_EXCEEDED_EVENT: u16 = 466;
}

/// A template: its id and its (element id, length) fields, in record order.
struct Template {
    id: u16,
    fields: &'static [(u16, u16)],
}

impl Template {
    fn record_len(&self) -> usize {
        self.fields.iter().map(|&(_, l)| usize::from(l)).sum()
    }
}

const SESSION: Template = Template {
    id: 256,
    fields: &[
        (ie::OBSERVATION_TIME_MILLISECONDS, 8),
        (ie::NAT_EVENT, 1),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::SOURCE_IPV4_ADDRESS, 4),
        (ie::SOURCE_TRANSPORT_PORT, 2),
        (ie::POST_NAT_SOURCE_IPV4_ADDRESS, 4),
        (ie::POST_NAPT_SOURCE_TRANSPORT_PORT, 2),
    ],
};

const SESSION_DEST: Template = Template {
    id: 257,
    fields: &[
        (ie::OBSERVATION_TIME_MILLISECONDS, 8),
        (ie::NAT_EVENT, 1),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::SOURCE_IPV4_ADDRESS, 4),
        (ie::SOURCE_TRANSPORT_PORT, 2),
        (ie::POST_NAT_SOURCE_IPV4_ADDRESS, 4),
        (ie::POST_NAPT_SOURCE_TRANSPORT_PORT, 2),
        (ie::DESTINATION_IPV4_ADDRESS, 4),
        (ie::DESTINATION_TRANSPORT_PORT, 2),
    ],
};

const EXHAUSTED: Template = Template {
    id: 258,
    fields: &[
        (ie::OBSERVATION_TIME_MILLISECONDS, 8),
        (ie::NAT_EVENT, 1),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::SOURCE_IPV4_ADDRESS, 4),
        (ie::SOURCE_TRANSPORT_PORT, 2),
    ],
};

const BLOCK: Template = Template {
    id: 259,
    fields: &[
        (ie::OBSERVATION_TIME_MILLISECONDS, 8),
        (ie::NAT_EVENT, 1),
        (ie::SOURCE_IPV4_ADDRESS, 4),
        (ie::POST_NAT_SOURCE_IPV4_ADDRESS, 4),
        (ie::PORT_RANGE_START, 2),
        (ie::PORT_RANGE_END, 2),
    ],
};

const QUOTA: Template = Template {
    id: 260,
    fields: &[
        (ie::OBSERVATION_TIME_MILLISECONDS, 8),
        (ie::NAT_EVENT, 1),
        (ie::NAT_QUOTA_EXCEEDED_EVENT, 4),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::SOURCE_IPV4_ADDRESS, 4),
        (ie::SOURCE_TRANSPORT_PORT, 2),
    ],
};

/// Every template, in the order of the template set.
const TEMPLATES: [&Template; 5] = [&SESSION, &SESSION_DEST, &EXHAUSTED, &BLOCK, &QUOTA];

/// Message header length (RFC 7011 section 3.1).
const HEADER_LEN: usize = 16;
/// Set header length (RFC 7011 section 3.3.2).
const SET_HEADER_LEN: usize = 4;

/// How the exporter is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpfixConfig {
    /// The collector.
    pub collector: SocketAddr,
    /// The observation domain id in every message header.
    pub observation_domain: u32,
    /// How often the templates are sent again (RFC 7011 section 8.4).
    pub template_refresh: Duration,
    /// Largest message sent, in bytes; keep it under the path MTU (RFC 7011 section 10.3.3).
    /// Clamped to 256..=65 507 (the largest UDP payload over IPv4).
    pub max_message: usize,
    /// Export destinations in session records (RFC 6888 REQ-12: off unless asked).
    pub log_destinations: bool,
}

impl IpfixConfig {
    /// Defaults for `collector`: domain 0, templates every 60 s, 1400-byte messages, no
    /// destinations.
    pub fn new(collector: SocketAddr) -> Self {
        IpfixConfig {
            collector,
            observation_domain: 0,
            template_refresh: Duration::from_secs(60),
            max_message: 1400,
            log_destinations: false,
        }
    }
}

/// Exports records to one collector.
pub struct IpfixExporter {
    socket: UdpSocket,
    config: IpfixConfig,
    time: TimeBase,
    /// Data records sent so far (the header's sequence number, RFC 7011 section 3.1).
    sequence: u32,
    /// When the templates were last sent; `None` before the first message.
    templates_sent: Option<std::time::Instant>,
    /// The batch's records, encoded, per template (index into [`TEMPLATES`]).
    pending: [Vec<u8>; 5],
    /// Records in `pending`, per template.
    counts: [u32; 5],
    /// Messages sent.
    messages: u64,
    /// Whether the socket is connected to the collector.
    connected: bool,
}

impl IpfixExporter {
    /// An exporter sending from an ephemeral UDP port to `config.collector`.
    pub fn open(config: IpfixConfig, time: TimeBase) -> Result<IpfixExporter, LogError> {
        let bind: SocketAddr = match config.collector {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind)?;
        // Connected (once a route lets it) so that the collector's ICMP port unreachable
        // fails the next send: a collector that is down shows in the loss counters.
        let connected = socket.connect(config.collector).is_ok();
        let config = IpfixConfig {
            // The header's length field is 16 bits; a UDP payload is at most 65 507 bytes.
            max_message: config.max_message.clamp(256, 65_507),
            ..config
        };
        Ok(IpfixExporter {
            socket,
            config,
            time,
            sequence: 0,
            templates_sent: None,
            pending: Default::default(),
            counts: [0; 5],
            messages: 0,
            connected,
        })
    }

    /// Messages sent so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Encodes `rec` into the pending data of its template.
    pub fn add(&mut self, rec: &Record) {
        let millis = self
            .time
            .to_system(rec.at)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let proto = rec.proto.map_or(0, |p| p.ip_number());
        let ext = rec.external.unwrap_or(natgate_core::Endpoint::UNSPECIFIED);
        let remote = rec.remote_if(self.config.log_destinations);
        let (slot, fields): (usize, Vec<Field>) = match (rec.block, rec.external, remote) {
            _ if rec.quota.is_some() => (
                4,
                vec![
                    Field::U64(millis),
                    Field::U8(rec.event.value()),
                    Field::U32(rec.quota.map_or(0, |q| q.value())),
                    Field::U8(proto),
                    Field::Addr(rec.internal.addr),
                    Field::U16(rec.internal.port),
                ],
            ),
            (Some(b), _, _) => (
                3,
                vec![
                    Field::U64(millis),
                    Field::U8(rec.event.value()),
                    Field::Addr(rec.internal.addr),
                    Field::Addr(ext.addr),
                    Field::U16(b.first),
                    Field::U16(b.last),
                ],
            ),
            (None, None, _) => (
                2,
                vec![
                    Field::U64(millis),
                    Field::U8(rec.event.value()),
                    Field::U8(proto),
                    Field::Addr(rec.internal.addr),
                    Field::U16(rec.internal.port),
                ],
            ),
            (None, Some(x), r) => {
                let mut f = vec![
                    Field::U64(millis),
                    Field::U8(rec.event.value()),
                    Field::U8(proto),
                    Field::Addr(rec.internal.addr),
                    Field::U16(rec.internal.port),
                    Field::Addr(x.addr),
                    Field::U16(x.port),
                ];
                match r {
                    Some(r) => {
                        f.push(Field::Addr(r.addr));
                        f.push(Field::U16(r.port));
                        (1, f)
                    }
                    None => (0, f),
                }
            }
        };
        let out = &mut self.pending[slot];
        for f in fields {
            f.put(out);
        }
        self.counts[slot] += 1;
    }

    /// Sends every pending record in as few messages as fit `max_message`, the templates first
    /// if they are due. An error counts the records of every message that was not sent.
    pub fn send_pending(&mut self) -> Result<(), Lost> {
        let due = self
            .templates_sent
            .is_none_or(|t| t.elapsed() >= self.config.template_refresh);
        let mut msg = Vec::with_capacity(self.config.max_message);
        self.start_message(&mut msg, due);
        let mut records_in_msg = 0u32;
        let mut result: Result<(), Lost> = Ok(());
        let note = |result: &mut Result<(), Lost>, sent: Result<(), LogError>, records: u32| {
            if let Err(e) = sent {
                match result {
                    Ok(()) => *result = Err(Lost::new(u64::from(records), e)),
                    Err(lost) => lost.events += u64::from(records),
                }
            }
        };
        for (slot, t) in TEMPLATES.iter().enumerate() {
            let len = t.record_len();
            let data = std::mem::take(&mut self.pending[slot]);
            self.counts[slot] = 0;
            // The open data set's start in `msg`, if any.
            let mut set: Option<usize> = None;
            for rec in data.chunks_exact(len) {
                let need = len + if set.is_some() { 0 } else { SET_HEADER_LEN };
                if msg.len() + need > self.config.max_message && msg.len() > HEADER_LEN {
                    if let Some(start) = set.take() {
                        set_length(&mut msg, start);
                    }
                    let sent = self.finish(&mut msg, records_in_msg);
                    note(&mut result, sent, records_in_msg);
                    records_in_msg = 0;
                    self.start_message(&mut msg, false);
                }
                let start = *set.get_or_insert_with(|| {
                    let start = msg.len();
                    msg.extend_from_slice(&t.id.to_be_bytes());
                    msg.extend_from_slice(&[0, 0]);
                    start
                });
                msg.extend_from_slice(rec);
                set_length(&mut msg, start);
                records_in_msg += 1;
            }
        }
        if msg.len() > HEADER_LEN {
            let sent = self.finish(&mut msg, records_in_msg);
            note(&mut result, sent, records_in_msg);
        }
        result
    }

    fn start_message(&mut self, msg: &mut Vec<u8>, with_templates: bool) {
        msg.clear();
        msg.extend_from_slice(&[0u8; HEADER_LEN]);
        if with_templates {
            let set_start = msg.len();
            msg.extend_from_slice(&2u16.to_be_bytes());
            msg.extend_from_slice(&[0, 0]);
            for t in TEMPLATES {
                msg.extend_from_slice(&t.id.to_be_bytes());
                msg.extend_from_slice(&(t.fields.len() as u16).to_be_bytes());
                for &(id, len) in t.fields {
                    msg.extend_from_slice(&id.to_be_bytes());
                    msg.extend_from_slice(&len.to_be_bytes());
                }
            }
            set_length(msg, set_start);
            self.templates_sent = Some(std::time::Instant::now());
        }
    }

    /// Fills in the header and sends the message. The sequence number counts the data records
    /// sent before this message (RFC 7011 section 3.1), even if this send fails.
    fn finish(&mut self, msg: &mut [u8], records: u32) -> Result<(), LogError> {
        let export = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let len = msg.len() as u16;
        msg[0..2].copy_from_slice(&10u16.to_be_bytes());
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        msg[4..8].copy_from_slice(&export.to_be_bytes());
        msg[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        msg[12..16].copy_from_slice(&self.config.observation_domain.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(records);
        self.messages += 1;
        if !self.connected {
            self.socket.connect(self.config.collector)?;
            self.connected = true;
        }
        self.socket.send(msg)?;
        Ok(())
    }
}

/// Writes the set's length (from `start` to the end) into its header.
fn set_length(msg: &mut [u8], start: usize) {
    let len = (msg.len() - start) as u16;
    msg[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

enum Field {
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    Addr(Ipv4Addr),
}

impl Field {
    fn put(self, out: &mut Vec<u8>) {
        match self {
            Field::U8(v) => out.push(v),
            Field::U16(v) => out.extend_from_slice(&v.to_be_bytes()),
            Field::U32(v) => out.extend_from_slice(&v.to_be_bytes()),
            Field::U64(v) => out.extend_from_slice(&v.to_be_bytes()),
            Field::Addr(a) => out.extend_from_slice(&a.octets()),
        }
    }
}

impl Sink for IpfixExporter {
    fn name(&self) -> &'static str {
        "ipfix"
    }

    fn record(&mut self, ev: &Event) -> Result<(), Lost> {
        self.add(&Record::from_event(ev));
        Ok(())
    }

    /// A message the kernel refuses loses its records. A collector that is down answers (at
    /// most) with an ICMP error that fails the next send, so the count is a lower bound.
    fn flush(&mut self) -> Result<(), Lost> {
        if self.counts.iter().any(|&c| c > 0) {
            self.send_pending()
        } else {
            Ok(())
        }
    }
}
