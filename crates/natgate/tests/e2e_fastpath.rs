//! The in-kernel fast path through `natgate run` in namespaces: an established flow moves into
//! it after its first packets, its session lives while traffic flows only through the fast
//! path and still expires on time when idle, FIN and RST end a carried TCP session as before,
//! and `ctl stats` counts what it carried. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Gateway, T, ctl_json, is_root, recv, topology, udp_socket};
use natgate::lab::topology::{Topology, TopologyOptions, addr};
use serde_json::Value;

fn fast_config(topo: &Topology, extra: &str) -> String {
    common::config(topo, &format!("[dataplane]\nfast-path = \"tc\"\n\n{extra}"))
}

/// The fast path's program counters from `ctl stats`.
fn program(topo: &Topology) -> Value {
    ctl_json(topo, &["stats"])["fast_path"]["program"].clone()
}

fn counter(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("{name} in {v}"))
}

/// The live sessions of `proto` from `ctl sessions`.
fn sessions(topo: &Topology, proto: &str) -> Vec<Value> {
    ctl_json(topo, &["sessions"])["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["proto"] == proto)
        .cloned()
        .collect()
}

/// One datagram from `client` to `server` and back; the server sees `client` as the result.
fn exchange(client: &UdpSocket, server: &UdpSocket, to: SocketAddrV4) -> SocketAddrV4 {
    client.send_to(b"ping", to).unwrap();
    let (_, seen) = recv(server, T).expect("server got the datagram");
    server.send_to(b"pong", seen).unwrap();
    recv(client, T).expect("client got the reply");
    common::v4(seen)
}

#[test]
fn an_established_udp_flow_moves_into_the_fast_path() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &fast_config(&topo, ""));
    assert!(
        gw.lines.iter().any(|l| l.contains("in-kernel fast path")),
        "{}",
        gw.lines.join("\n")
    );
    let to = SocketAddrV4::new(addr::WAN1, 4000);
    let server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    let first = exchange(&client, &server, to);
    assert!(common::in_pool(*first.ip()), "{first}");
    for _ in 0..50 {
        assert_eq!(
            exchange(&client, &server, to),
            first,
            "one mapping throughout"
        );
    }
    let p = program(&topo);
    // The first datagram makes the session (slow path); after that both ways are carried.
    assert!(counter(&p, "forwarded_out") >= 49, "{p}");
    assert!(counter(&p, "forwarded_in") >= 50, "{p}");
    // The first datagram each way reached the engine straight from the program, not through
    // the kernel's routing.
    assert!(counter(&p, "to_engine") >= 2, "{p}");
    let stats = ctl_json(&topo, &["stats"]);
    assert!(
        stats["outbound"]["packets"].as_u64().unwrap() <= 2,
        "the engine translated few packets itself: {stats}"
    );
    assert_eq!(stats["fast_path"]["flows"], 1, "{stats}");
    gw.stop();
}

/// `fast-path = "xdp"`: established flows are carried at the XDP hook (native on veth), the rest
/// still reaches the engine through the TC program behind it, and TCP works end to end. The
/// gateway's neighbours take XDP frames ([`TopologyOptions::xdp_peers`]).
#[test]
fn established_flows_are_carried_at_the_xdp_hook() {
    if !is_root() {
        return;
    }
    let topo = Topology::build(&TopologyOptions {
        xdp_peers: true,
        ..TopologyOptions::default()
    })
    .unwrap();
    let mut gw = Gateway::start(
        &topo,
        &common::config(&topo, "[dataplane]\nfast-path = \"xdp\"\n"),
    );
    assert!(
        gw.lines.iter().any(|l| l.contains("fast path (XDP")),
        "{}",
        gw.lines.join("\n")
    );
    let to = SocketAddrV4::new(addr::WAN1, 4002);
    let server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    let first = exchange(&client, &server, to);
    for _ in 0..50 {
        assert_eq!(exchange(&client, &server, to), first);
    }
    let p = program(&topo);
    assert!(counter(&p, "carried_at_xdp") >= 99, "{p}");
    assert!(counter(&p, "to_engine") >= 2, "the first datagrams: {p}");
    // TCP: the handshake through the engine, the data at XDP, the close through the engine.
    let listen = SocketAddrV4::new(addr::WAN1, 8080);
    let listener = topo
        .wan1
        .run_in(|| TcpListener::bind(listen))
        .unwrap()
        .unwrap();
    let peer = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 100_000];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let mut c = topo
        .sub1
        .run_in(|| TcpStream::connect_timeout(&listen.into(), T))
        .unwrap()
        .unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    c.write_all(&data).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back).unwrap();
    assert_eq!(back, data);
    peer.join().unwrap();
    let after = counter(&program(&topo), "carried_at_xdp");
    assert!(
        after > counter(&p, "carried_at_xdp") + 20,
        "TCP data carried at XDP"
    );
    gw.stop();
}

#[test]
fn a_carried_session_lives_while_traffic_flows_and_expires_when_idle() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let extra = "[behavior.timers]\nudp = 4\n";
    let mut gw = Gateway::start(&topo, &format!("lab = true\n{}", fast_config(&topo, extra)));
    let to = SocketAddrV4::new(addr::WAN1, 4001);
    let server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    let first = exchange(&client, &server, to);
    // Outbound only, every second for three timers' worth: all through the fast path.
    let before = counter(&program(&topo), "forwarded_out");
    for _ in 0..12 {
        std::thread::sleep(Duration::from_secs(1));
        client.send_to(b"keepalive", to).unwrap();
        if recv(&server, T).is_none() {
            while let Ok(l) = gw.log.try_recv() {
                gw.lines.push(l);
            }
            panic!(
                "a keepalive was lost: {}\n{:?}\n{}",
                ctl_json(&topo, &["stats"]),
                sessions(&topo, "udp"),
                gw.lines.join("\n")
            );
        }
    }
    assert!(counter(&program(&topo), "forwarded_out") >= before + 12);
    let live = sessions(&topo, "udp");
    assert_eq!(live.len(), 1, "alive after 12 s on a 4 s timer: {live:?}");
    assert!(live[0]["idle_secs"].as_u64().unwrap() <= 2, "{live:?}");
    // The same mapping still answers from outside.
    assert_eq!(exchange(&client, &server, to), first);
    // Idle: gone within the timer and the one-second check.
    std::thread::sleep(Duration::from_secs(7));
    assert!(sessions(&topo, "udp").is_empty(), "expired when idle");
    assert_eq!(ctl_json(&topo, &["stats"])["fast_path"]["flows"], 0);
    gw.stop();
}

#[test]
fn fin_and_rst_end_a_carried_tcp_session() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &fast_config(&topo, ""));
    let to = SocketAddrV4::new(addr::WAN1, 8090);
    let listener = topo.wan1.run_in(|| TcpListener::bind(to)).unwrap().unwrap();
    for (how, state) in [("fin", "closing"), ("rst", "reset")] {
        let mut c = topo
            .sub1
            .run_in(|| TcpStream::connect_timeout(&to.into(), T))
            .unwrap()
            .unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let before = program(&topo);
        let mut buf = [0u8; 4];
        for _ in 0..20 {
            c.write_all(b"data").unwrap();
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"back").unwrap();
            c.read_exact(&mut buf).unwrap();
        }
        let after = program(&topo);
        assert!(
            counter(&after, "forwarded_out") >= counter(&before, "forwarded_out") + 20,
            "{how}: data went through the fast path: {before} -> {after}"
        );
        let live = sessions(&topo, "tcp");
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0]["tcp_state"], "established");
        match how {
            "fin" => {
                drop(c);
                s.read_exact(&mut buf).unwrap_err();
                drop(s);
            }
            _ => {
                // SO_LINGER 0: close sends a RST.
                rustix::net::sockopt::set_socket_linger(&c, Some(Duration::ZERO)).unwrap();
                drop(c);
                drop(s);
            }
        }
        let mut seen = String::new();
        for _ in 0..30 {
            let live = sessions(&topo, "tcp");
            seen = format!("{live:?}");
            if live.iter().all(|l| l["tcp_state"] == state) && !live.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(seen.contains(state), "{how}: the engine saw it end: {seen}");
        ctl_json(&topo, &["flush"]);
    }
    assert!(counter(&program(&topo), "punt_tcp_flags") >= 4);
    gw.stop();
}
