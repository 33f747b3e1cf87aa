//! Mapping, filtering and hairpinning behaviour on the wire, through `natgate run`.
//! Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use common::{Gateway, T, config, in_pool, is_root, recv, topology, udp_socket, v4};
use natgate::lab::topology::addr;

const QUIET: Duration = Duration::from_millis(700);

/// RFC 4787 REQ-1: one subscriber socket sending to wan1's two addresses shows the same
/// external endpoint to both (endpoint-independent mapping).
#[test]
fn rfc4787_req1_eim_same_external_endpoint_for_two_wan_addresses() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let a = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let b = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1_ALT, 3479));
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    client.send_to(b"one", a.local_addr().unwrap()).unwrap();
    client.send_to(b"two", b.local_addr().unwrap()).unwrap();
    let (_, ea) = recv(&a, T).expect("wan1 .10 got it");
    let (_, eb) = recv(&b, T).expect("wan1 .11 got it");
    assert!(in_pool(*v4(ea).ip()), "{ea}");
    assert_eq!(ea, eb, "endpoint-independent mapping");
}

/// Opens a mapping from sub1 to wan1 (203.0.113.10:4000); returns the client socket and its
/// external endpoint.
fn open_mapping(topo: &natgate::lab::topology::Topology) -> (std::net::UdpSocket, SocketAddr) {
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 4000));
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    client
        .send_to(b"hello", server.local_addr().unwrap())
        .unwrap();
    let (_, ext) = recv(&server, T).expect("outbound works");
    // The reply from the contacted endpoint always comes back.
    server.send_to(b"reply", ext).unwrap();
    let (p, _) = recv(&client, T).expect("reply from the contacted endpoint");
    assert_eq!(p, b"reply");
    (client, ext)
}

/// Sends from `ns` at `from` to `ext`; whether `client` got it.
fn unsolicited(
    ns: &natgate::platform::netns::Netns,
    from: SocketAddrV4,
    ext: SocketAddr,
    client: &std::net::UdpSocket,
) -> bool {
    let s = udp_socket(ns, from);
    s.send_to(b"unsolicited", ext).unwrap();
    while let Some((p, src)) = recv(client, QUIET) {
        if p == b"unsolicited" {
            assert_eq!(v4(src), from, "delivered with the sender's real source");
            return true;
        }
    }
    false
}

/// Runs the filtering check under `preset`: (same address other port, third host).
fn filtering(preset: &str) -> (bool, bool) {
    let topo = topology();
    let _gw = Gateway::start(
        &topo,
        &config(&topo, &format!("[behavior]\npreset = \"{preset}\"\n")),
    );
    let (client, ext) = open_mapping(&topo);
    let same_addr = unsolicited(
        &topo.wan1,
        SocketAddrV4::new(addr::WAN1, 5000),
        ext,
        &client,
    );
    let third = unsolicited(
        &topo.wan2,
        SocketAddrV4::new(addr::WAN2, 4000),
        ext,
        &client,
    );
    (same_addr, third)
}

/// RFC 4787 REQ-8: endpoint-independent filtering delivers from a third WAN endpoint.
#[test]
fn rfc4787_req8_eif_delivers_from_third_endpoint() {
    if !is_root() {
        return;
    }
    assert_eq!(filtering("full-cone"), (true, true));
}

/// RFC 4787 REQ-8: address-dependent filtering delivers from the contacted address only
/// (any port), not from a third host.
#[test]
fn rfc4787_req8_adf_delivers_from_contacted_address_only() {
    if !is_root() {
        return;
    }
    assert_eq!(filtering("restricted-cone"), (true, false));
}

/// RFC 4787 REQ-8: address-and-port-dependent filtering delivers from the contacted endpoint
/// only.
#[test]
fn rfc4787_req8_apdf_drops_other_endpoints() {
    if !is_root() {
        return;
    }
    assert_eq!(filtering("port-restricted-cone"), (false, false));
}

/// RFC 4787 REQ-9/9a: sub1 reaches sub2 through sub2's external endpoint and sub2 sees sub1's
/// external address and port.
#[test]
fn rfc4787_req9a_hairpinning_with_external_source() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 4000));
    let s2 = udp_socket(&topo.sub2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let s1 = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    s2.send_to(b"map2", server.local_addr().unwrap()).unwrap();
    let (_, ext2) = recv(&server, T).expect("sub2 mapped");
    s1.send_to(b"map1", server.local_addr().unwrap()).unwrap();
    let (_, ext1) = recv(&server, T).expect("sub1 mapped");
    s1.send_to(b"hairpin", ext2).unwrap();
    let (p, from) = recv(&s2, T).expect("hairpinned datagram reached sub2");
    assert_eq!(p, b"hairpin");
    assert_eq!(from, ext1, "sub2 sees sub1's external endpoint");
    // And back the same way.
    s2.send_to(b"back", from).unwrap();
    let (p, from) = recv(&s1, T).expect("answer reached sub1");
    assert_eq!(p, b"back");
    assert_eq!(from, ext2);
}
