//! The TTL through `natgate run`: a packet crossing the gateway loses exactly 1 (the kernel
//! routes it into the TUN and out again, and the engine gives one of those hops back), so
//! traceroute shows the gateway once. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::icmp::{IcmpError, recv_error, recv_with_ttl, setsockopt_int, subscriber_socket};
use common::{Gateway, T, config, is_root, topology, udp_socket};
use natgate::lab::topology::addr;

/// TTL 64 leaves the gateway as 63, both ways: the WAN host, one router further, sees 62, and
/// so does the subscriber for the answer.
#[test]
fn a_crossing_costs_one_hop_each_way() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 7000));
    setsockopt_int(&server, libc::SOL_IP, libc::IP_RECVTTL, 1);
    let sub = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    setsockopt_int(&sub, libc::SOL_IP, libc::IP_TTL, 64);
    setsockopt_int(&sub, libc::SOL_IP, libc::IP_RECVTTL, 1);
    sub.send_to(b"ttl?", SocketAddrV4::new(addr::WAN1, 7000))
        .unwrap();
    // Read the sender's endpoint with a peek: recv_with_ttl does not return it.
    let mut b = [0u8; 16];
    server.set_read_timeout(Some(T)).unwrap();
    let (_, from) = server.peek_from(&mut b).expect("the datagram reached WAN1");
    let (data, ttl) = recv_with_ttl(&server, T).expect("with its TTL");
    assert_eq!(data, b"ttl?");
    assert_eq!(ttl, 62, "64, less the gateway and the upstream router");
    setsockopt_int(&server, libc::SOL_IP, libc::IP_TTL, 64);
    server.send_to(b"back", from).unwrap();
    let (data, ttl) = recv_with_ttl(&sub, T).expect("the answer reached the subscriber");
    assert_eq!(data, b"back");
    assert_eq!(ttl, 62, "64, less the upstream router and the gateway");
}

/// A traceroute: TTL 1 expires at the gateway (the kernel answers before natgate sees it, from
/// the inside address), TTL 2 at the router behind it, whose error is translated back, and TTL
/// 3 reaches the destination, whose closed port answers. The gateway is one hop.
#[test]
fn traceroute_shows_the_gateway_once() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let dst = SocketAddrV4::new(addr::WAN1, 33434);
    let hops = [
        (1, 11, 0, addr::GW_LAN),
        (2, 11, 0, addr::UPSTREAM_DOWN),
        (3, 3, 3, addr::WAN1),
    ];
    for (ttl, icmp_type, code, offender) in hops {
        let s = subscriber_socket(&topo);
        setsockopt_int(&s, libc::SOL_IP, libc::IP_TTL, ttl);
        s.send_to(b"probe", dst).unwrap();
        let e = recv_error(&s, T).unwrap_or_else(|| panic!("no answer to TTL {ttl}"));
        assert_eq!(
            e,
            IcmpError {
                icmp_type,
                code,
                offender,
                original_dst: dst
            },
            "TTL {ttl}"
        );
    }
}
