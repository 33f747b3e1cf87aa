//! The standard topology, end to end: build it, check reachability without
//! NAT where routing allows, check offloads and the path-MTU route, and check
//! that teardown leaves nothing behind, even when the test panics.
//!
//! Needs root (namespaces, veths); skips with a message otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use natgate::lab::probe::{ping, tcp_probe, udp_echo, udp_probe};
use natgate::lab::topology::{Topology, TopologyOptions, addr, leftover_namespaces};
use natgate::platform::ethtool;

const T: Duration = Duration::from_secs(3);

#[allow(clippy::print_stderr)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: needs root (network namespaces, veths)");
    }
    root
}

/// `ip netns list` output (read-only), to check iproute2 sees what we see.
fn ip_netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} {args:?}: {:?}", out);
    String::from_utf8(out.stdout).unwrap()
}

fn assert_gone(suffix: &str) {
    assert_eq!(leftover_namespaces(suffix).unwrap(), Vec::<String>::new());
    let listed = ip_netns_list();
    assert!(
        !listed.contains(suffix),
        "ip netns list still shows {suffix}:\n{listed}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(suffix),
        "a netns mount of {suffix} is left"
    );
}

#[test]
fn reachability_without_nat() {
    if !is_root() {
        return;
    }
    let t = Topology::build(&TopologyOptions::default()).unwrap();
    let listed = ip_netns_list();
    for ns in t.namespaces() {
        assert!(
            listed.contains(ns.name()),
            "{} not in ip netns list",
            ns.name()
        );
    }

    // sub1 -> gateway lan0 (UDP): the gateway sees sub1's own address.
    let from = udp_probe(
        &t.sub1,
        &t.gateway,
        SocketAddrV4::new(addr::GW_LAN, 4000),
        T,
    )
    .unwrap();
    assert_eq!(from.ip(), addr::SUB1);

    // sub1 -> sub2 over the bridge, UDP and TCP, and ICMP.
    let from = udp_probe(&t.sub1, &t.sub2, SocketAddrV4::new(addr::SUB2, 4001), T).unwrap();
    assert_eq!(from.ip(), addr::SUB1);
    let peer = tcp_probe(&t.sub1, &t.sub2, SocketAddrV4::new(addr::SUB2, 4002), T).unwrap();
    assert_eq!(peer.ip(), addr::SUB1);
    ping(&t.sub2, addr::SUB1, T).unwrap();
    ping(&t.sub1, addr::GW_LAN, T).unwrap();

    // wan1 -> 192.0.2.254 (upstream, one hop away), by ICMP and UDP.
    ping(&t.wan1, addr::UPSTREAM_DOWN, T).unwrap();
    let from = udp_probe(
        &t.wan1,
        &t.upstream,
        SocketAddrV4::new(addr::UPSTREAM_DOWN, 4003),
        T,
    )
    .unwrap();
    assert_eq!(from.ip(), addr::WAN1);

    // gateway wan0 -> wan hosts through the forwarding upstream, both ways.
    ping(&t.gateway, addr::WAN1, T).unwrap();
    ping(&t.gateway, addr::WAN1_ALT, T).unwrap();
    ping(&t.gateway, addr::WAN2, T).unwrap();
    let seen = udp_echo(
        &t.gateway,
        &t.wan1,
        SocketAddrV4::new(addr::WAN1_ALT, 4005),
        T,
    )
    .unwrap();
    assert_eq!(seen.ip(), addr::GW_WAN);
    let peer = tcp_probe(
        &t.wan2,
        &t.gateway,
        SocketAddrV4::new(addr::GW_WAN, 4004),
        T,
    )
    .unwrap();
    assert_eq!(peer.ip(), addr::WAN2);

    // No NAT and no forwarding on the gateway: subscribers don't get out.
    assert!(ping(&t.sub1, addr::WAN1, Duration::from_millis(300)).is_err());

    // Offloads are off on both ends of a veth.
    for (ns, dev) in [
        (&t.gateway, &t.ifaces.lan0),
        (&t.upstream, &t.ifaces.upstream_down),
    ] {
        let o = ethtool::offloads(ns, dev).unwrap();
        assert!(!o.tx_checksum && !o.tso && !o.gso && !o.gro, "{dev}: {o:?}");
    }

    // Upstream's path-MTU route to wan2 and its route for the pool.
    let r = ip_in(t.upstream.name(), &["route", "get", "203.0.113.20"]);
    assert!(r.contains("mtu 1280"), "{r}");
    let r = ip_in(t.upstream.name(), &["route", "show", "198.51.100.0/28"]);
    assert!(r.contains("via 192.0.2.1"), "{r}");
    assert_eq!(
        natgate::platform::sysctl::get(&t.gateway, "net/ipv4/ip_forward").unwrap(),
        "0"
    );

    let suffix = t.suffix.clone();
    drop(t);
    assert_gone(&suffix);
}

#[test]
fn gateway_forwarding_on_request() {
    if !is_root() {
        return;
    }
    let opts = TopologyOptions {
        gateway_forwarding: true,
        wan2_route_mtu: None,
        ..TopologyOptions::default()
    };
    let t = Topology::build(&opts).unwrap();
    assert_eq!(
        natgate::platform::sysctl::get(&t.gateway, "net/ipv4/ip_forward").unwrap(),
        "1"
    );
    // With forwarding the gateway routes sub1 -> upstream's 192.0.2.254, but
    // without NAT nothing routes 100.64/16 back: the reply is lost.
    assert!(ping(&t.sub1, addr::UPSTREAM_DOWN, Duration::from_millis(300)).is_err());
    let r = ip_in(t.upstream.name(), &["route", "get", "203.0.113.20"]);
    assert!(!r.contains("mtu"), "{r}");
    let suffix = t.suffix.clone();
    t.teardown().unwrap();
    assert_gone(&suffix);
}

#[test]
fn teardown_after_panic_inside() {
    if !is_root() {
        return;
    }
    let suffix = Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let t = Topology::build(&TopologyOptions::default()).unwrap();
        *suffix.lock().unwrap() = t.suffix.clone();
        // A socket opened inside a namespace, still open while unwinding.
        let _sock = t
            .sub1
            .run_in(|| std::net::UdpSocket::bind(SocketAddr::from((addr::SUB1, 0))))
            .unwrap()
            .unwrap();
        panic!("deliberate panic with the topology up");
    });
    assert!(result.is_err());
    let suffix = suffix.into_inner().unwrap();
    assert_eq!(suffix.len(), 5);
    assert_gone(&suffix);
}
