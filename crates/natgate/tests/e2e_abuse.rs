//! natgate under attack, end to end in namespaces: a subscriber sending from spoofed sources
//! while another keeps its flows. Needs root; skips otherwise. The topology's namespaces (and
//! with them every address added here) go when the test ends, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{
    Gateway, T, config, ctl_json, has_link, in_pool, is_root, natgate_rules, recv, topology,
    udp_socket, v4,
};
use natgate::lab::probe::ping;
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netlink::Netlink;

/// A source outside the inside interface's subnet (100.64.0.0/16), as a spoofer would use.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(100, 65, 7, 9);

fn drops(topo: &Topology, reason: &str) -> u64 {
    ctl_json(topo, &["drops", "--all"])["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason)
        .map_or(0, |r| r["packets"].as_u64().unwrap())
}

/// With no `inside-networks` in the file, only the inside interface's own subnets are
/// translated: 300 datagrams from a spoofed source reach nobody, take no session, draw no
/// answer and are counted as `source_not_inside`, while the real subscriber's flows and pings
/// go on.
#[test]
fn spoofed_sources_are_dropped_and_the_real_subscriber_keeps_working() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    // sub2 sends from an address it is not given by the inside subnet.
    let dev = topo.ifaces.sub2.clone();
    topo.sub2
        .run_in(|| Netlink::new().unwrap().add_addr_v4(&dev, SPOOFED, 32))
        .unwrap()
        .unwrap();
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 7000));
    let dst = server.local_addr().unwrap();
    let spoofer = udp_socket(&topo.sub2, SocketAddrV4::new(SPOOFED, 0));
    let real = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    for i in 0..300u32 {
        spoofer
            .send_to(format!("spoof {i}").as_bytes(), dst)
            .unwrap();
        if i % 100 == 0 {
            real.send_to(format!("real {i}").as_bytes(), dst).unwrap();
        }
    }
    // Only the real subscriber's datagrams arrive, translated, and are answered.
    let mut real_seen = 0;
    while let Some((p, from)) = recv(&server, Duration::from_millis(500)) {
        assert!(
            p.starts_with(b"real"),
            "{:?} from {from}",
            String::from_utf8_lossy(&p)
        );
        assert!(in_pool(*v4(from).ip()), "{from}");
        server.send_to(&p, from).unwrap();
        real_seen += 1;
        if real_seen == 3 {
            break;
        }
    }
    assert_eq!(real_seen, 3);
    for _ in 0..3 {
        assert!(recv(&real, T).is_some(), "the real subscriber's replies");
    }
    ping(&topo.sub1, addr::WAN2, T).unwrap();
    // Never answered: no ICMP error comes back to the spoofer (it would show as an error on
    // its socket, or a datagram).
    spoofer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(spoofer.recv_from(&mut buf).is_err());
    assert!(spoofer.take_error().unwrap().is_none(), "no ICMP error");
    assert_eq!(drops(&topo, "source_not_inside"), 300);
    let sessions = ctl_json(&topo, &["sessions", "--count"])["count"]
        .as_u64()
        .unwrap();
    assert!(
        sessions <= 2,
        "only the real subscriber's sessions: {sessions}"
    );
}

/// `max-sessions = max-mappings = 2^30` passes the file's own checks but cannot be held here:
/// `run` says how much it needs and how much there is, exits with an error (not SIGABRT), and
/// leaves no rule and no TUN device behind.
#[test]
fn a_config_the_machine_cannot_hold_is_refused_at_run_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::spawn(
        &topo,
        &config(
            &topo,
            "[limits]\nmax-sessions = 1073741824\nmax-mappings = 1073741824\n",
        ),
    );
    let st = gw
        .wait_exit(Duration::from_secs(30))
        .expect("natgate exits");
    assert!(!st.success(), "{st:?}");
    assert!(st.code().is_some(), "an error exit, not a signal: {st:?}");
    let line = gw.wait_for("bytes available", Duration::from_secs(5));
    assert!(line.is_some(), "the need and what there is: {:?}", gw.lines);
    assert!(natgate_rules(&topo).is_empty());
    assert!(!has_link(&topo, "natgate-in") && !has_link(&topo, "natgate-out"));
}
