//! Fragments through `natgate run` (RFC 4787 REQ-14): a 4000-byte UDP datagram, fragmented by
//! the sender (and again by the upstream router on its 1280-byte route to wan2), arrives
//! intact in both directions. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{Gateway, T, config, in_pool, is_root, recv, topology, udp_socket, v4};
use natgate::lab::topology::addr;

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn rfc4787_req14_large_udp_datagrams_arrive_intact_both_ways() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    for (wan, dst, seed) in [(&topo.wan1, addr::WAN1, 1u8), (&topo.wan2, addr::WAN2, 2u8)] {
        let server = udp_socket(wan, SocketAddrV4::new(dst, 5000));
        let client = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let out = payload(4000, seed);
        client.send_to(&out, server.local_addr().unwrap()).unwrap();
        let (got, ext) = recv(&server, T).unwrap_or_else(|| panic!("4000 bytes to {dst}"));
        assert_eq!(got.len(), out.len());
        assert!(got == out, "outbound payload to {dst} intact");
        assert!(in_pool(*v4(ext).ip()), "{ext}");
        let back = payload(4000, seed + 100);
        server.send_to(&back, ext).unwrap();
        let (got, from) = recv(&client, T).unwrap_or_else(|| panic!("4000 bytes from {dst}"));
        assert_eq!(from, server.local_addr().unwrap());
        assert!(got == back, "inbound payload from {dst} intact");
    }
}
