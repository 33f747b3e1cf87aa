//! One subscriber on a running `natgate run`: the operator's commands `ctl flush --subscriber`
//! and `ctl session delete` end exactly what they name, with their translation-log records,
//! and leave everyone else's flows working; the combined session limit refuses at its edge.
//! Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use common::{Gateway, T, config, ctl, ctl_json, recv, topology, udp_socket};
use natgate::lab::topology::{Topology, addr};

/// A gateway that logs every event as JSON lines to a file of its own.
fn gateway_with_log(topo: &Topology, extra: &str) -> (Gateway, PathBuf) {
    let log = std::env::temp_dir().join(format!("natgate-e2e-{}.events", topo.suffix));
    let _ = std::fs::remove_file(&log);
    let text = format!("{extra}\n[log.file]\npath = \"{}\"\n", log.display());
    (Gateway::start(topo, &config(topo, &text)), log)
}

/// The log's JSON lines, read after the gateway stopped (so every record is written), and the
/// file removed.
fn records(mut gw: Gateway, log: &PathBuf) -> Vec<serde_json::Value> {
    assert!(gw.stop().unwrap().success());
    let text = std::fs::read_to_string(log).unwrap();
    let _ = std::fs::remove_file(log);
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Asserts that every delete record says an operator ended it (nothing expires during these
/// tests).
fn all_by_the_operator(records: &[serde_json::Value]) {
    let deletes: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "session-deleted" || r["event"] == "mapping-deleted")
        .collect();
    assert!(!deletes.is_empty());
    for r in deletes {
        assert_eq!(r["reason"], "operator", "{r}");
    }
}

/// How many `event` records name `internal`.
fn count(records: &[serde_json::Value], event: &str, internal: SocketAddr) -> usize {
    records
        .iter()
        .filter(|r| r["event"] == event && r["internal"] == internal.to_string())
        .count()
}

/// A subscriber's UDP socket that has sent one datagram to `server` and the external endpoint
/// the server saw it from.
fn flow(sub: &UdpSocket, server: &UdpSocket) -> SocketAddr {
    sub.send_to(b"hello", server.local_addr().unwrap()).unwrap();
    let (_, ext) = recv(server, T).expect("through the gateway");
    ext
}

/// Whether a datagram from `server` to `ext` reaches `sub`.
fn gets_back(server: &UdpSocket, ext: SocketAddr, sub: &UdpSocket) -> bool {
    server.send_to(b"back", ext).unwrap();
    recv(sub, Duration::from_millis(500)).is_some()
}

fn any(ns: &natgate::platform::netns::Netns) -> UdpSocket {
    udp_socket(ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
}

fn local(s: &UdpSocket, a: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(a, s.local_addr().unwrap().port()))
}

#[test]
fn flush_subscriber_ends_that_subscriber_and_no_one_else() {
    if !common::is_root() {
        return;
    }
    let topo = topology();
    let (gw, log) = gateway_with_log(&topo, "");
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let (a, b) = (any(&topo.sub1), any(&topo.sub1));
    let c = any(&topo.sub2);
    let (ext_a, ext_b, ext_c) = (flow(&a, &server), flow(&b, &server), flow(&c, &server));
    // A flow with traffic both ways (which the fast path, when it runs, carries) and one
    // without.
    assert!(gets_back(&server, ext_a, &a));
    assert!(gets_back(&server, ext_c, &c));

    let (code, out, err) = ctl(&topo, &["flush", "--subscriber", "100.64.0.10"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        "flushed 2 sessions and 2 mappings of 100.64.0.10"
    );
    let left = ctl_json(&topo, &["sessions"]);
    assert_eq!(left["count"], 1, "{left}");
    assert_eq!(
        left["sessions"][0]["internal"],
        local(&c, addr::SUB2).to_string()
    );
    // Nothing of 100.64.0.10 left to flush; asking again ends nothing and is no error.
    let again = ctl_json(&topo, &["flush", "--subscriber", "100.64.0.10"]);
    assert_eq!(
        (&again["sessions"], &again["mappings"]),
        (&0.into(), &0.into())
    );

    // The flushed subscriber's external endpoints take nothing in; the other's flow goes on,
    // both ways, on the same external endpoint.
    assert!(!gets_back(&server, ext_a, &a));
    assert!(!gets_back(&server, ext_b, &b));
    assert!(gets_back(&server, ext_c, &c));
    assert_eq!(flow(&c, &server), ext_c);

    let records = records(gw, &log);
    all_by_the_operator(&records);
    for s in [&a, &b] {
        let internal = local(s, addr::SUB1);
        assert_eq!(
            count(&records, "session-deleted", internal),
            1,
            "{internal}"
        );
        assert_eq!(
            count(&records, "mapping-deleted", internal),
            1,
            "{internal}"
        );
    }
    let internal = local(&c, addr::SUB2);
    assert_eq!(count(&records, "session-deleted", internal), 0);
    assert_eq!(count(&records, "mapping-deleted", internal), 0);
}

#[test]
fn session_delete_ends_exactly_one_session() {
    if !common::is_root() {
        return;
    }
    let topo = topology();
    let (gw, log) = gateway_with_log(&topo, "");
    let one = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let two = udp_socket(&topo.wan2, SocketAddrV4::new(addr::WAN2, 3478));
    let a = any(&topo.sub1);
    let c = any(&topo.sub2);
    let ext = flow(&a, &one);
    assert_eq!(flow(&a, &two), ext, "one mapping, two sessions");
    let ext_c = flow(&c, &one);
    let internal = local(&a, addr::SUB1).to_string();

    // Unknown sessions: an error that names what was asked, and nothing changes.
    for (proto, remote) in [("udp", "203.0.113.10:3479"), ("tcp", "203.0.113.10:3478")] {
        let (code, out, err) = ctl(&topo, &["session", "delete", proto, &internal, remote]);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains(&format!("no {proto} session {internal} -> {remote}")),
            "{err}"
        );
    }
    assert_eq!(ctl_json(&topo, &["sessions"])["count"], 3);

    let (code, out, err) = ctl(
        &topo,
        &["session", "delete", "udp", &internal, "203.0.113.10:3478"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("deleted udp session {internal} -> 203.0.113.10:3478")
    );
    let left = ctl_json(&topo, &["sessions", "--subscriber", "100.64.0.10"]);
    assert_eq!(left["count"], 1, "{left}");
    assert_eq!(left["sessions"][0]["remote"], "203.0.113.20:3478");
    // The mapping lives on with its other session; the other subscriber is untouched.
    assert!(gets_back(&two, ext, &a));
    assert!(gets_back(&one, ext_c, &c));

    // The last session takes its mapping with it.
    let last = ctl_json(
        &topo,
        &["session", "delete", "udp", &internal, "203.0.113.20:3478"],
    );
    assert_eq!(
        (&last["sessions"], &last["mappings"]),
        (&1.into(), &1.into())
    );
    assert!(!gets_back(&two, ext, &a));
    assert_eq!(ctl_json(&topo, &["sessions"])["count"], 1);

    let records = records(gw, &log);
    all_by_the_operator(&records);
    let internal: SocketAddr = internal.parse().unwrap();
    assert_eq!(count(&records, "session-deleted", internal), 2);
    assert_eq!(count(&records, "mapping-deleted", internal), 1);
    let other = local(&c, addr::SUB2);
    assert_eq!(count(&records, "session-deleted", other), 0);
}

#[test]
fn combined_session_limit_at_its_edge() {
    if !common::is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(
        &topo,
        &config(
            &topo,
            "[limits.subscriber]\nmax-sessions = 3\nmax-subscribers = 16\n",
        ),
    );
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let web = SocketAddrV4::new(addr::WAN1, 8080);
    let listener = topo
        .wan1
        .run_in(|| TcpListener::bind(web))
        .unwrap()
        .unwrap();
    // Two protocols under the limit of 3: a TCP connection and a UDP flow, then a second UDP
    // flow that reaches the limit; all three get through.
    let mut tcp = topo
        .sub1
        .run_in(|| TcpStream::connect_timeout(&web.into(), T))
        .unwrap()
        .expect("TCP connection under the limit");
    let (mut accepted, _) = listener.accept().unwrap();
    accepted.set_read_timeout(Some(T)).unwrap();
    let (a, b, over) = (any(&topo.sub1), any(&topo.sub1), any(&topo.sub1));
    flow(&a, &server);
    flow(&b, &server);
    let n = ctl_json(
        &topo,
        &["sessions", "--subscriber", "100.64.0.10", "--count"],
    );
    assert_eq!(n["count"], 3, "{n}");

    // The fourth, of either protocol, is refused and counted under the limit's own reason.
    over.send_to(b"over", server.local_addr().unwrap()).unwrap();
    assert!(
        recv(&server, Duration::from_millis(500)).is_none(),
        "over the limit"
    );
    let refused = topo
        .sub1
        .run_in(|| TcpStream::connect_timeout(&web.into(), Duration::from_secs(1)))
        .unwrap();
    assert!(
        refused.is_err(),
        "a second TCP connection is over the limit too"
    );
    let drops = ctl_json(&topo, &["drops"]);
    let counted = drops["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["reason"] == "subscriber_total_session_limit")
        .map(|d| d["packets"].as_u64().unwrap());
    // The refused SYN may be sent again before connect gives up: at least one each.
    assert!(counted.is_some_and(|n| n >= 2), "{drops}");

    // What is live keeps working, and another subscriber has its own limit.
    let ext = flow(&a, &server);
    assert!(gets_back(&server, ext, &a));
    tcp.write_all(b"still").unwrap();
    let mut got = [0u8; 5];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still");
    let c = any(&topo.sub2);
    flow(&c, &server);
}
