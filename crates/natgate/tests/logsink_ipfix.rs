//! The IPFIX exporter end to end over loopback, decoded by an independent IPFIX parser
//! (`netflow_parser`): header fields (RFC 7011 section 3.1), templates at start and on refresh
//! (section 8.4), the RFC 8158 NAT elements per record shape, and sequence numbers across
//! split messages.

#![allow(clippy::expect_used)]

mod log_fixtures;
use log_fixtures::events;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natgate::observability::eventlog::TimeBase;
use natgate::observability::logsink::ipfix::{IpfixConfig, IpfixExporter};
use natgate::observability::logsink::{
    LogPipeline, NatEvent, PipelineConfig, PortRange, Record, Sink,
};
use natgate_core::{Endpoint, Instant};
use netflow_parser::{NetflowPacket, NetflowParser};
use serde_json::Value;

/// Engine time 10 s is this many ms after the epoch (2026-11-22T16:14:30.123Z).
const T10_MS: u64 = 1_795_364_070_123;

fn base() -> TimeBase {
    TimeBase::new(
        Instant::from_secs(10),
        UNIX_EPOCH + Duration::from_millis(T10_MS),
    )
}

fn collector() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

fn recv(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let n = s.recv(&mut buf).expect("a message within 5 s");
    buf.truncate(n);
    buf
}

/// The header's fields, read straight from the bytes.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    version: u16,
    length: u16,
    export_time: u32,
    sequence: u32,
    domain: u32,
}

fn header(m: &[u8]) -> Header {
    let u16_at = |i: usize| u16::from_be_bytes([m[i], m[i + 1]]);
    let u32_at = |i: usize| u32::from_be_bytes([m[i], m[i + 1], m[i + 2], m[i + 3]]);
    Header {
        version: u16_at(0),
        length: u16_at(2),
        export_time: u32_at(4),
        sequence: u32_at(8),
        domain: u32_at(12),
    }
}

/// A decoded value as text: addresses, numbers, event and protocol names; times in ms.
fn leaf(v: &Value) -> String {
    match v {
        Value::Object(o) if o.contains_key("secs") && o.contains_key("nanos") => {
            let ms = o["secs"].as_u64().unwrap_or(0) * 1000
                + o["nanos"].as_u64().unwrap_or(0) / 1_000_000;
            ms.to_string()
        }
        Value::Object(o) if o.len() == 1 => o.values().next().map(leaf).unwrap_or_default(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What the parser made of one message: whether it held a template set, and each data record
/// as (set id, element name -> value).
struct Decoded {
    has_templates: bool,
    records: Vec<(u64, BTreeMap<String, String>)>,
}

fn decode(parser: &mut NetflowParser, m: &[u8]) -> Decoded {
    let res = parser.parse_bytes(m);
    assert!(res.error.is_none(), "parser error: {:?}", res.error);
    assert_eq!(res.packets.len(), 1);
    assert!(
        matches!(res.packets[0], NetflowPacket::IPFix(_)),
        "not IPFIX"
    );
    let v = serde_json::to_value(&res.packets[0]).expect("JSON");
    let sets = v["IPFix"]["flowsets"].as_array().expect("flowsets").clone();
    let mut out = Decoded {
        has_templates: false,
        records: Vec::new(),
    };
    for set in sets {
        let id = set["header"]["header_id"].as_u64().expect("set id");
        if id == 2 {
            out.has_templates = true;
            continue;
        }
        let data = &set["body"]["Data"]["fields"];
        let recs = data
            .as_array()
            .unwrap_or_else(|| panic!("set {id} not decoded as data: {set}"));
        for rec in recs {
            let mut fields = BTreeMap::new();
            for pair in rec.as_array().expect("record") {
                fields.insert(leaf(&pair[0]), leaf(&pair[1]));
            }
            out.records.push((id, fields));
        }
    }
    out
}

fn field<'a>(r: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    r.get(name)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {name} in {r:?}"))
}

#[test]
fn every_event_decodes_with_its_rfc_8158_elements_through_the_pipeline() {
    for log_destinations in [false, true] {
        let rx = collector();
        let mut config = IpfixConfig::new(rx.local_addr().expect("addr"));
        config.observation_domain = 7;
        config.log_destinations = log_destinations;
        let exporter = IpfixExporter::open(config, base()).expect("open");
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(exporter)];
        let (tx, handle) = LogPipeline::start(PipelineConfig {
            capacity: 64,
            max_batch: 64,
            sinks,
        })
        .expect("start");
        for e in events() {
            assert!(tx.send(e));
        }
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let stats = handle.shutdown().expect("shutdown");
        assert_eq!((stats.written, stats.sink_errors), (5, 0));
        let m = recv(&rx);
        let h = header(&m);
        assert_eq!(
            (h.version, usize::from(h.length), h.sequence, h.domain),
            (10, m.len(), 0, 7)
        );
        assert!(
            u64::from(h.export_time).abs_diff(before) <= 5,
            "export time {}",
            h.export_time
        );
        let mut parser = NetflowParser::default();
        let d = decode(&mut parser, &m);
        assert!(d.has_templates, "the first message carries the templates");
        assert_eq!(d.records.len(), 5);
        let by_event: BTreeMap<&str, &(u64, BTreeMap<String, String>)> = d
            .records
            .iter()
            .map(|r| (field(&r.1, "NatEvent"), r))
            .collect();
        let session = by_event["Nat44SessionCreate"];
        assert_eq!(session.0, if log_destinations { 257 } else { 256 });
        let s = &session.1;
        assert_eq!(
            field(s, "ObservationTimeMilliseconds"),
            (T10_MS + 500).to_string()
        );
        assert_eq!(field(s, "ProtocolIdentifier"), "Udp");
        assert_eq!(field(s, "SourceIpv4address"), "100.64.0.10");
        assert_eq!(field(s, "SourceTransportPort"), "5000");
        assert_eq!(field(s, "PostNatsourceIpv4address"), "198.51.100.1");
        assert_eq!(field(s, "PostNaptsourceTransportPort"), "40000");
        // RFC 6888 REQ-12: destinations only when configured, and only in session records.
        assert_eq!(s.contains_key("DestinationIpv4address"), log_destinations);
        if log_destinations {
            assert_eq!(field(s, "DestinationIpv4address"), "203.0.113.10");
            assert_eq!(field(s, "DestinationTransportPort"), "3478");
        }
        assert!(by_event.contains_key("Nat44SessionDelete"));
        let bib = by_event["Nat44BibCreate"];
        assert_eq!(bib.0, 256);
        assert!(!bib.1.contains_key("DestinationIpv4address"));
        assert!(by_event.contains_key("Nat44BibDelete"));
        let exhausted = by_event["NatAddressesExhausted"];
        assert_eq!(exhausted.0, 258);
        assert_eq!(field(&exhausted.1, "ProtocolIdentifier"), "Tcp");
        assert!(!exhausted.1.contains_key("PostNatsourceIpv4address"));
    }
}

#[test]
fn port_blocks_use_their_own_template() {
    let rx = collector();
    let mut x = IpfixExporter::open(IpfixConfig::new(rx.local_addr().expect("addr")), base())
        .expect("open");
    x.add(&Record {
        at: Instant::from_secs(10),
        event: NatEvent::PortBlockAllocation,
        proto: None,
        internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 0),
        external: Some(Endpoint::new(Ipv4Addr::new(198, 51, 100, 7), 0)),
        remote: None,
        block: Some(PortRange {
            first: 2048,
            last: 2559,
        }),
        quota: None,
        origin: None,
        ended: None,
    });
    x.send_pending().expect("send");
    let d = decode(&mut NetflowParser::default(), &recv(&rx));
    assert_eq!(d.records.len(), 1);
    let (id, r) = &d.records[0];
    assert_eq!(*id, 259);
    assert_eq!(field(r, "NatEvent"), "PortBlockAllocation");
    assert_eq!(field(r, "SourceIpv4address"), "100.64.0.10");
    assert_eq!(field(r, "PostNatsourceIpv4address"), "198.51.100.7");
    assert_eq!(field(r, "PortRangeStart"), "2048");
    assert_eq!(field(r, "PortRangeEnd"), "2559");
}

#[test]
fn quota_records_use_their_own_template_with_rfc_8158_element_466() {
    let rx = collector();
    let mut x = IpfixExporter::open(IpfixConfig::new(rx.local_addr().expect("addr")), base())
        .expect("open");
    x.add(&Record::from_event(&natgate_core::Event::MappingFailed {
        at: Instant::from_secs(10),
        proto: natgate_core::Protocol::Udp,
        internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
        remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 53),
        reason: natgate_core::DropReason::SubscriberTableFull,
    }));
    x.send_pending().expect("send");
    let d = decode(&mut NetflowParser::default(), &recv(&rx));
    assert_eq!(d.records.len(), 1);
    let (id, r) = &d.records[0];
    assert_eq!(*id, 260);
    assert_eq!(field(r, "NatEvent"), "QuotaExceeded");
    assert_eq!(
        field(r, "NatQuotaExceededEvent"),
        "4",
        "maximum active subscribers"
    );
    assert_eq!(field(r, "ProtocolIdentifier"), "Udp");
    assert_eq!(field(r, "SourceIpv4address"), "100.64.0.10");
    assert_eq!(field(r, "SourceTransportPort"), "5000");
    assert!(!r.contains_key("DestinationIpv4address"));
}

#[test]
fn big_batches_split_under_the_size_limit_and_sequence_numbers_count_records() {
    let rx = collector();
    let mut config = IpfixConfig::new(rx.local_addr().expect("addr"));
    config.max_message = 512;
    config.template_refresh = Duration::from_secs(3600);
    let mut x = IpfixExporter::open(config, base()).expect("open");
    let ev = events();
    for n in 0..200 {
        x.record(&ev[n % ev.len()]).expect("record");
    }
    x.flush().expect("flush");
    // Then a second batch: no templates until the refresh is due.
    for e in &ev {
        x.record(e).expect("record");
    }
    x.flush().expect("flush");
    let mut parser = NetflowParser::default();
    let mut expect_seq = 0u32;
    let mut total = 0usize;
    let messages = x.messages();
    assert!(messages >= 10, "{messages} messages");
    for k in 0..messages {
        let m = recv(&rx);
        assert!(m.len() <= 512, "message {k} is {} bytes", m.len());
        let h = header(&m);
        assert_eq!(usize::from(h.length), m.len());
        assert_eq!(h.sequence, expect_seq, "message {k}");
        let d = decode(&mut parser, &m);
        assert_eq!(d.has_templates, k == 0, "message {k}");
        expect_seq += d.records.len() as u32;
        total += d.records.len();
    }
    assert_eq!(total, 205);
}

#[test]
fn templates_are_sent_again_when_the_refresh_is_due() {
    let rx = collector();
    let mut config = IpfixConfig::new(rx.local_addr().expect("addr"));
    config.template_refresh = Duration::ZERO;
    let mut x = IpfixExporter::open(config, base()).expect("open");
    for e in &events()[..2] {
        x.record(e).expect("record");
        x.flush().expect("flush");
    }
    // A collector that missed the first message still decodes the second (RFC 7011 8.4).
    recv(&rx);
    let d = decode(&mut NetflowParser::default(), &recv(&rx));
    assert!(d.has_templates);
    assert_eq!(d.records.len(), 1);
}

/// A pcap file (Ethernet, IPv4, UDP to port 4739) holding `messages`, for tshark.
fn pcap(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    for v in [
        0xa1b2_c3d4u32.to_le_bytes(),
        [2, 0, 4, 0],
        [0; 4],
        [0; 4],
        65535u32.to_le_bytes(),
        1u32.to_le_bytes(),
    ] {
        f.extend_from_slice(&v);
    }
    for m in messages {
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        let total = (20 + 8 + m.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&40000u16.to_be_bytes());
        frame.extend_from_slice(&4739u16.to_be_bytes());
        frame.extend_from_slice(&((8 + m.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(m);
        let len = (frame.len() as u32).to_le_bytes();
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&len);
        f.extend_from_slice(&len);
        f.extend_from_slice(&frame);
    }
    f
}

#[test]
#[allow(clippy::print_stderr)]
fn tshark_dissects_the_stream_when_installed() {
    let Ok(out) = std::process::Command::new("tshark")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: tshark is not installed (Wireshark's IPFIX dissector)");
        return;
    };
    assert!(out.status.success());
    let rx = collector();
    let mut x = IpfixExporter::open(IpfixConfig::new(rx.local_addr().expect("addr")), base())
        .expect("open");
    for e in events() {
        x.record(&e).expect("record");
    }
    x.flush().expect("flush");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ipfix.pcap");
    std::fs::write(&path, pcap(&[recv(&rx)])).expect("write");
    let out = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&path)
        .args(["-d", "udp.port==4739,cflow", "-V"])
        .output()
        .expect("run tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(text.contains("IPFIX"), "{text}");
    assert!(!text.contains("Malformed"), "{text}");
    assert!(
        text.contains("198.51.100.1") && text.contains("100.64.0.10"),
        "{text}"
    );
}

/// A collector that is down is counted: each message the kernel refuses after the collector's
/// ICMP port unreachable loses its records, counted as `ipfix` losses with reason `refused`.
#[test]
fn an_unreachable_collector_is_counted_per_sink_and_reason() {
    let closed = UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let exporter = IpfixExporter::open(IpfixConfig::new(closed), base()).expect("open");
    let (tx, handle) = LogPipeline::start(PipelineConfig {
        capacity: 64,
        max_batch: 64,
        sinks: vec![Box::new(exporter)],
    })
    .expect("start");
    // One batch (about one message) at a time: the message after a refused one fails.
    for _ in 0..6 {
        for e in events() {
            assert!(tx.send(e));
        }
        let written = handle.stats().written;
        for _ in 0..200 {
            if handle.stats().written > written {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = handle.shutdown().expect("shutdown");
    let lost: Vec<_> = stats
        .sink_losses
        .iter()
        .filter(|l| l.events > 0)
        .map(|l| (l.sink, l.reason.name(), l.events))
        .collect();
    assert_eq!(lost.len(), 1, "{stats:?}");
    assert_eq!((lost[0].0, lost[0].1), ("ipfix", "refused"));
    // Each refusal answers an earlier message, so some messages are lost uncounted.
    assert!((1..30).contains(&lost[0].2), "{stats:?}");
}
