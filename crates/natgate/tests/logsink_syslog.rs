//! The syslog sink end to end over loopback: messages received on a UDP socket (RFC 5426) and
//! a Unix datagram socket, each checked against a strict reading of the RFC 5424 grammar.

#![allow(clippy::expect_used)]

mod log_fixtures;
use log_fixtures::events;

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, UNIX_EPOCH};

use natgate::observability::eventlog::TimeBase;
use natgate::observability::logsink::syslog::{
    DOCUMENTATION_ENTERPRISE, Facility, SyslogConfig, SyslogSink, SyslogTarget,
};
use natgate::observability::logsink::{LogPipeline, PipelineConfig, Sink};
use natgate_core::Instant;

/// One message, as RFC 5424 section 6 splits it.
#[derive(Debug)]
struct Message {
    pri: u8,
    timestamp: String,
    hostname: String,
    app: String,
    procid: String,
    msgid: String,
    sd: Vec<(String, Vec<(String, String)>)>,
    msg: Option<String>,
}

/// SD-IDs registered with IANA (RFC 5424 section 7); any other must be `name@number`.
const IANA_SD_IDS: [&str; 3] = ["timeQuality", "origin", "meta"];

fn header_field<'a>(s: &mut &'a str, what: &str, max: usize) -> Result<&'a str, String> {
    let end = s.find(' ').ok_or(format!("{what}: no SP after it"))?;
    let f = &s[..end];
    if f.is_empty() || f.len() > max || !f.bytes().all(|b| (33..=126).contains(&b)) {
        return Err(format!("{what} {f:?}: not 1..{max} PRINTUSASCII"));
    }
    *s = &s[end + 1..];
    Ok(f)
}

/// `YYYY-MM-DDTHH:MM:SS.fracZ`: RFC 3339 as RFC 5424 section 6.2.3 restricts it, and as we
/// require it (a fraction, UTC).
fn check_timestamp(t: &str) -> Result<(), String> {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let ok = b.len() >= 22
        && b.len() <= 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..b.len() - 1)
        && b[b.len() - 1] == b'Z';
    let num = |r: std::ops::Range<usize>| t[r].parse::<u32>().unwrap_or(99);
    if !ok
        || !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return Err(format!("timestamp {t:?}"));
    }
    Ok(())
}

fn sd_name(s: &mut &str, what: &str) -> Result<String, String> {
    let end = s
        .find(|c: char| matches!(c, '=' | ' ' | ']' | '"') || !c.is_ascii_graphic())
        .unwrap_or(s.len());
    let n = &s[..end];
    if n.is_empty() || n.len() > 32 {
        return Err(format!("{what} {n:?}: not 1..32 SD-NAME characters"));
    }
    *s = &s[end..];
    Ok(n.to_owned())
}

/// Parses `line` or says which rule it breaks.
fn parse(line: &str) -> Result<Message, String> {
    let mut s = line;
    let rest = s.strip_prefix('<').ok_or("no '<'")?;
    let close = rest.find('>').ok_or("no '>'")?;
    let prival = &rest[..close];
    if prival.is_empty()
        || prival.len() > 3
        || !prival.bytes().all(|b| b.is_ascii_digit())
        || (prival.len() > 1 && prival.starts_with('0'))
    {
        return Err(format!("PRIVAL {prival:?}"));
    }
    let pri: u8 = prival.parse().map_err(|_| "PRIVAL")?;
    if pri > 191 {
        return Err(format!("PRIVAL {pri} > 191"));
    }
    s = &rest[close + 1..];
    s = s.strip_prefix("1 ").ok_or("VERSION is not 1")?;
    let timestamp = header_field(&mut s, "TIMESTAMP", 32)?.to_owned();
    check_timestamp(&timestamp)?;
    let hostname = header_field(&mut s, "HOSTNAME", 255)?.to_owned();
    let app = header_field(&mut s, "APP-NAME", 48)?.to_owned();
    let procid = header_field(&mut s, "PROCID", 128)?.to_owned();
    let msgid = header_field(&mut s, "MSGID", 32)?.to_owned();
    let mut sd = Vec::new();
    if let Some(r) = s.strip_prefix('-') {
        s = r;
    } else {
        while let Some(r) = s.strip_prefix('[') {
            s = r;
            let id = sd_name(&mut s, "SD-ID")?;
            let valid_id = IANA_SD_IDS.contains(&id.as_str())
                || id.split_once('@').is_some_and(|(name, pen)| {
                    !name.is_empty()
                        && !name.contains('@')
                        && !pen.is_empty()
                        && pen.bytes().all(|b| b.is_ascii_digit())
                });
            if !valid_id {
                return Err(format!(
                    "SD-ID {id:?}: neither IANA-registered nor name@number"
                ));
            }
            let mut params = Vec::new();
            while let Some(r) = s.strip_prefix(' ') {
                s = r;
                let name = sd_name(&mut s, "PARAM-NAME")?;
                s = s.strip_prefix("=\"").ok_or(format!("{name}: no '=\"'"))?;
                let mut value = String::new();
                let mut chars = s.char_indices();
                let end = loop {
                    match chars.next() {
                        None => return Err(format!("{name}: unterminated value")),
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c @ ('"' | '\\' | ']'))) => value.push(c),
                            other => return Err(format!("{name}: bad escape {other:?}")),
                        },
                        Some((_, ']')) => return Err(format!("{name}: unescaped ']'")),
                        Some((_, c)) => value.push(c),
                    }
                };
                s = &s[end + 1..];
                params.push((name, value));
            }
            s = s.strip_prefix(']').ok_or("SD-ELEMENT not closed")?;
            sd.push((id, params));
        }
        if sd.is_empty() {
            return Err("STRUCTURED-DATA is neither '-' nor an element".into());
        }
    }
    let msg = match s {
        "" => None,
        _ => Some(s.strip_prefix(' ').ok_or("no SP before MSG")?.to_owned()),
    };
    Ok(Message {
        pri,
        timestamp,
        hostname,
        app,
        procid,
        msgid,
        sd,
        msg,
    })
}

#[test]
fn the_checker_is_strict() {
    let good = r#"<134>1 2026-11-22T16:14:30.123Z h a 1 M [x@1 p="a\"b\\c\]d"] text"#;
    let m = parse(good).expect("valid");
    assert_eq!(m.sd[0].1[0].1, r#"a"b\c]d"#);
    assert_eq!(m.msg.as_deref(), Some("text"));
    for bad in [
        r#"<192>1 2026-11-22T16:14:30.123Z h a 1 M -"#,
        r#"<013>1 2026-11-22T16:14:30.123Z h a 1 M -"#,
        r#"<13>2 2026-11-22T16:14:30.123Z h a 1 M -"#,
        r#"<13>1 2026-11-22T16:14:30Z h a 1 M -"#,
        r#"<13>1 2026-11-22T16:14:30.123+01:00 h a 1 M -"#,
        r#"<13>1 2026-13-22T16:14:30.123Z h a 1 M -"#,
        r#"<13>1 2026-11-22T16:14:30.123Z h a 1 M [nat p="1"]"#,
        r#"<13>1 2026-11-22T16:14:30.123Z h a 1 M [x@1 p="a]b"]"#,
        r#"<13>1 2026-11-22T16:14:30.123Z h a 1 M [x@1 p="a\nb"]"#,
        r#"<13>1 2026-11-22T16:14:30.123Z h a 1 M [x@1 p="ab]"#,
        r#"<13>1 2026-11-22T16:14:30.123Z h a 1 M [x@1 p="1"]text"#,
        r#"<13>1 2026-11-22T16:14:30.123Z h a 1 ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456 -"#,
    ] {
        assert!(parse(bad).is_err(), "accepted {bad}");
    }
}

fn base() -> TimeBase {
    // Engine time 10 s is 2026-11-22T16:14:30.123Z.
    TimeBase::new(
        Instant::from_secs(10),
        UNIX_EPOCH + Duration::from_millis(1_795_364_070_123),
    )
}

fn config(target: SyslogTarget, log_destinations: bool) -> SyslogConfig {
    SyslogConfig {
        target,
        facility: Facility::new(20).expect("local4"),
        hostname: "gw1.example".into(),
        procid: 4242,
        enterprise: DOCUMENTATION_ENTERPRISE,
        log_destinations,
    }
}

fn params(m: &Message) -> std::collections::BTreeMap<&str, &str> {
    m.sd[0]
        .1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn udp_messages_through_the_pipeline_are_valid_rfc_5424_with_the_nat_fields() {
    let plain = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let with_dest = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for s in [&plain, &with_dest] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(
            SyslogSink::open(
                config(SyslogTarget::Udp(plain.local_addr().expect("addr")), false),
                base(),
            )
            .expect("open"),
        ),
        Box::new(
            SyslogSink::open(
                config(
                    SyslogTarget::Udp(with_dest.local_addr().expect("addr")),
                    true,
                ),
                base(),
            )
            .expect("open"),
        ),
    ];
    let (tx, handle) = LogPipeline::start(PipelineConfig {
        capacity: 64,
        max_batch: 16,
        sinks,
    })
    .expect("start");
    for e in events() {
        assert!(tx.send(e));
    }
    let stats = handle.shutdown().expect("shutdown");
    assert_eq!((stats.written, stats.lost, stats.sink_errors), (5, 0, 0));

    for (sock, dest) in [(&plain, false), (&with_dest, true)] {
        let mut buf = [0u8; 2048];
        let mut msgs = Vec::new();
        for _ in 0..5 {
            let n = sock.recv(&mut buf).expect("a datagram within 5 s");
            let line = std::str::from_utf8(&buf[..n]).expect("UTF-8");
            msgs.push(parse(line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
        let ids: Vec<&str> = msgs.iter().map(|m| m.msgid.as_str()).collect();
        assert_eq!(
            ids,
            [
                "MAPPING-CREATE",
                "SESSION-CREATE",
                "SESSION-DELETE",
                "MAPPING-DELETE",
                "ADDR-EXHAUSTED"
            ]
        );
        for m in &msgs {
            assert_eq!(m.timestamp, "2026-11-22T16:14:30.623Z");
            assert_eq!(
                (m.hostname.as_str(), m.app.as_str(), m.procid.as_str()),
                ("gw1.example", "natgate", "4242")
            );
            assert_eq!(m.sd.len(), 1);
            assert_eq!(m.sd[0].0, "nat@32473");
            let p = params(m);
            assert_eq!(p["sourceIPv4Address"], "100.64.0.10");
            assert_eq!(p["sourceTransportPort"], "5000");
        }
        // local4 (20) * 8 + informational (6); the failure is a warning (4).
        assert_eq!(msgs[0].pri, 166);
        assert_eq!(msgs[4].pri, 164);
        // Deletes say why they ended; nothing else has a reason.
        assert_eq!(params(&msgs[2])["reason"], "operator");
        assert_eq!(params(&msgs[3])["reason"], "operator");
        assert!(!params(&msgs[1]).contains_key("reason"));
        let s = params(&msgs[1]);
        assert_eq!(s["natEvent"], "4");
        assert_eq!(s["protocolIdentifier"], "17");
        assert_eq!(s["postNATSourceIPv4Address"], "198.51.100.1");
        assert_eq!(s["postNAPTSourceTransportPort"], "40000");
        assert_eq!(params(&msgs[2])["natEvent"], "5");
        assert_eq!(params(&msgs[0])["natEvent"], "8");
        assert_eq!(params(&msgs[3])["natEvent"], "9");
        assert_eq!(params(&msgs[4])["natEvent"], "3");
        assert_eq!(params(&msgs[4])["protocolIdentifier"], "6");
        assert!(!params(&msgs[4]).contains_key("postNATSourceIPv4Address"));
        // RFC 6888 REQ-12: destinations only when configured, and never in mapping records.
        for (i, m) in msgs.iter().enumerate() {
            let has = params(m).contains_key("destinationIPv4Address");
            assert_eq!(has, dest && [1, 2, 4].contains(&i), "message {i}");
        }
        if dest {
            assert_eq!(params(&msgs[1])["destinationTransportPort"], "3478");
        }
        assert_eq!(msgs[1].msg.as_deref(), Some("NAT44 session create"));
        // What made the session, on session messages only.
        for (i, m) in msgs.iter().enumerate() {
            let origin = params(m).get("origin").copied();
            let want = [1, 2].contains(&i).then_some("dynamic");
            assert_eq!(origin, want, "message {i}");
        }
    }
}

#[test]
fn unix_datagram_target_like_dev_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    let rx = UnixDatagram::bind(&path).expect("bind");
    rx.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut sink = SyslogSink::open(config(SyslogTarget::Unix(path), false), base()).expect("open");
    for e in &events()[..2] {
        sink.record(e).expect("record");
    }
    sink.flush().expect("flush");
    let mut buf = [0u8; 2048];
    for want in ["MAPPING-CREATE", "SESSION-CREATE"] {
        let n = rx.recv(&mut buf).expect("a datagram within 5 s");
        let m = parse(std::str::from_utf8(&buf[..n]).expect("UTF-8")).expect("RFC 5424");
        assert_eq!(m.msgid, want);
    }
}

/// A UDP port on loopback where nothing listens: the kernel answers port unreachable.
fn closed_port() -> std::net::SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr")
}

/// A collector that is down is counted: the sends the kernel refuses after its ICMP port
/// unreachable are `syslog` losses with reason `refused`, never silent.
#[test]
fn an_unreachable_collector_is_counted_per_sink_and_reason() {
    let sink =
        SyslogSink::open(config(SyslogTarget::Udp(closed_port()), false), base()).expect("open");
    let (tx, handle) = LogPipeline::start(PipelineConfig {
        capacity: 64,
        max_batch: 64,
        sinks: vec![Box::new(sink)],
    })
    .expect("start");
    for _ in 0..4 {
        for e in events() {
            assert!(tx.send(e));
        }
    }
    let stats = handle.shutdown().expect("shutdown");
    let refused: Vec<_> = stats
        .sink_losses
        .iter()
        .filter(|l| l.events > 0)
        .map(|l| (l.sink, l.reason.name()))
        .collect();
    assert_eq!(refused, [("syslog", "refused")], "{stats:?}");
    let lost = stats.sink_losses.iter().map(|l| l.events).sum::<u64>();
    // Each refusal answers an earlier datagram, which is lost uncounted.
    assert!((1..20).contains(&lost), "{stats:?}");
}
