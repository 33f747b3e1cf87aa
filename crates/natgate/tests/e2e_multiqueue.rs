//! `tun.queues = 2`: two workers, two engines, packets steered to the engine that owns them.
//! Many flows from both subscribers must all round-trip, each subscriber keeps one external
//! address (paired pooling within its worker), and ICMP errors still reach the subscriber.
//! Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use common::{Gateway, T, config, ctl_json, in_pool, is_root, recv, topology, udp_socket, v4};
use natgate::lab::probe::{ping, tcp_probe};
use natgate::lab::topology::addr;

#[test]
fn two_queues_translate_many_flows_both_ways() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, "[tun]\nqueues = 2\n"));
    assert_eq!(ctl_json(&topo, &["status"])["workers"], 2);
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 7000));
    let dst = server.local_addr().unwrap();
    let mut clients = Vec::new();
    for sub in [&topo.sub1, &topo.sub2] {
        for _ in 0..32 {
            clients.push(udp_socket(sub, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
        }
    }
    for (i, c) in clients.iter().enumerate() {
        c.send_to(format!("flow {i}").as_bytes(), dst).unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..clients.len() {
        let (p, from) = recv(&server, T).expect("every flow arrives");
        assert!(in_pool(*v4(from).ip()), "{from}");
        server.send_to(&p, from).unwrap();
        seen.push(from);
    }
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        clients.len(),
        "one external endpoint per flow"
    );
    let addrs: HashSet<_> = seen.iter().map(|s| s.ip()).collect();
    assert!(
        addrs.len() <= 2,
        "paired pooling: one address per subscriber: {addrs:?}"
    );
    for (i, c) in clients.iter().enumerate() {
        let (p, from) = recv(c, T).unwrap_or_else(|| panic!("reply to flow {i}"));
        assert_eq!(p, format!("flow {i}").as_bytes());
        assert_eq!(from, dst);
    }
    ping(&topo.sub1, addr::WAN2, T).unwrap();
    ping(&topo.sub2, addr::WAN2, T).unwrap();
    for sub in [&topo.sub1, &topo.sub2] {
        let seen = tcp_probe(sub, &topo.wan2, SocketAddrV4::new(addr::WAN2, 8080), T).unwrap();
        assert!(in_pool(*v4(seen).ip()), "{seen}");
    }
    let sessions = ctl_json(&topo, &["sessions", "--count"]);
    assert!(sessions["count"].as_u64().unwrap() >= 64, "{sessions}");
}

/// `max-sessions` is the gateway's, not each worker's: with two workers and a limit of 20,
/// 64 new flows from two subscribers leave at most 20 sessions (10 per worker), the rest refused
/// and counted; before, each worker held 20.
#[test]
fn max_sessions_is_the_gateways_with_two_workers() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(
        &topo,
        &config(
            &topo,
            "[tun]\nqueues = 2\n\n[limits]\nmax-sessions = 20\nmax-mappings = 20\n",
        ),
    );
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 7000));
    let dst = server.local_addr().unwrap();
    let mut clients = Vec::new();
    for sub in [&topo.sub1, &topo.sub2] {
        for _ in 0..32 {
            clients.push(udp_socket(sub, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)));
        }
    }
    for (i, c) in clients.iter().enumerate() {
        c.send_to(format!("flow {i}").as_bytes(), dst).unwrap();
    }
    // Every datagram that got a session arrives; the rest never do.
    let mut arrived = 0;
    while recv(&server, std::time::Duration::from_millis(500)).is_some() && arrived < 64 {
        arrived += 1;
    }
    let count = ctl_json(&topo, &["sessions", "--count"])["count"]
        .as_u64()
        .unwrap();
    assert!(count <= 20, "{count} sessions for a gateway limit of 20");
    assert!(count >= 10, "both workers hold sessions: {count}");
    assert_eq!(
        arrived, count,
        "a flow arrives exactly when it has a session"
    );
    let drops = ctl_json(&topo, &["drops", "--all"]);
    let refused: u64 = drops["drops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["reason"] == "mapping_table_full" || d["reason"] == "session_table_full")
        .map(|d| d["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(refused, 64 - count, "{drops}");
}
