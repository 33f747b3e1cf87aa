//! End to end through `natgate run`: ping, UDP and TCP request/response from both
//! subscribers, with the translated source the WAN host saw. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{IpAddr, SocketAddrV4};

use common::{Gateway, T, config, in_pool, is_root, topology};
use natgate::lab::probe::{ping, tcp_probe, udp_echo};
use natgate::lab::topology::addr;

#[test]
fn ping_udp_tcp_request_response_translated() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    for (sub, wan, dst) in [
        (&topo.sub1, &topo.wan1, addr::WAN1),
        (&topo.sub2, &topo.wan2, addr::WAN2),
        (&topo.sub1, &topo.wan1, addr::WAN1_ALT),
    ] {
        ping(sub, dst, T).unwrap_or_else(|e| panic!("ping {dst}: {e}"));
        let seen = udp_echo(sub, wan, SocketAddrV4::new(dst, 3478), T).unwrap();
        let IpAddr::V4(ip) = seen.ip() else {
            panic!("{seen}")
        };
        assert!(in_pool(ip), "UDP source {seen} not translated");
        let seen = tcp_probe(sub, wan, SocketAddrV4::new(dst, 8080), T).unwrap();
        let IpAddr::V4(ip) = seen.ip() else {
            panic!("{seen}")
        };
        assert!(in_pool(ip), "TCP source {seen} not translated");
    }
}

/// RFC 6888 REQ-2 (paired pooling): every flow of one subscriber leaves from one address.
#[test]
fn rfc6888_req2_paired_pooling_on_the_wire() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let mut seen = Vec::new();
    for port in [4001, 4002, 4003] {
        seen.push(
            udp_echo(
                &topo.sub1,
                &topo.wan1,
                SocketAddrV4::new(addr::WAN1, port),
                T,
            )
            .unwrap()
            .ip(),
        );
    }
    seen.push(
        tcp_probe(
            &topo.sub1,
            &topo.wan2,
            SocketAddrV4::new(addr::WAN2, 8080),
            T,
        )
        .unwrap()
        .ip(),
    );
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}
