//! ICMP errors through `natgate run` (RFC 5508 REQ-4/5, RFC 4787 REQ-12): an error about a
//! translated packet reaches the subscriber's socket, which the kernel finds only if the
//! embedded header was translated back (addresses and ports). Checked with IP_RECVERR, which
//! reports the error's type and code, its sender (the offender) and the original destination.
//! Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddrV4;

use common::icmp::{IcmpError, recv_error, setsockopt_int, subscriber_socket};
use common::{Gateway, T, config, is_root, topology};
use natgate::lab::topology::addr;

/// RFC 5508 REQ-4 / RFC 4787 REQ-12: port unreachable from a WAN host for a closed port reaches
/// the subscriber with the embedded header translated back.
#[test]
fn rfc5508_req4_port_unreachable_reaches_subscriber() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let s = subscriber_socket(&topo);
    let dst = SocketAddrV4::new(addr::WAN1, 9);
    s.send_to(b"anyone?", dst).unwrap();
    let e = recv_error(&s, T).expect("ICMP port unreachable reached the subscriber");
    assert_eq!(
        e,
        IcmpError {
            icmp_type: 3,
            code: 3,
            offender: addr::WAN1,
            original_dst: dst
        }
    );
}

/// RFC 5508 REQ-4 with a third-party router: TTL 2 expires at the upstream router (the gateway
/// is one hop), whose time exceeded reaches the subscriber translated back.
#[test]
fn rfc5508_req4_ttl_expiry_beyond_gateway_reaches_subscriber() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let s = subscriber_socket(&topo);
    setsockopt_int(&s, libc::SOL_IP, libc::IP_TTL, 2);
    let dst = SocketAddrV4::new(addr::WAN1, 4000);
    s.send_to(b"far away", dst).unwrap();
    let e = recv_error(&s, T).expect("time exceeded reached the subscriber");
    assert_eq!(
        e,
        IcmpError {
            icmp_type: 11,
            code: 0,
            offender: addr::UPSTREAM_DOWN,
            original_dst: dst
        }
    );
}
