//! The lab's verification knobs through `natgate run`: the host identifier a large-scale NAT test
//! tool puts on subscribers' SYNs (RFC 7974). Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{SocketAddrV4, TcpListener, TcpStream};

use common::capture::{capture, captured};
use common::{Gateway, T, config, in_pool, is_root, topology};
use natgate::lab::topology::addr;

/// The SYNs a capture saw: (source address, TCP options).
fn syns(packets: &[Vec<u8>]) -> Vec<([u8; 4], Vec<u8>)> {
    packets
        .iter()
        .filter(|p| p.len() >= 40 && p[9] == 6 && p[33] & 0x12 == 0x02)
        .map(|p| {
            let tcp_header = usize::from(p[32] >> 4) * 4;
            (
                [p[12], p[13], p[14], p[15]],
                p[40..20 + tcp_header].to_vec(),
            )
        })
        .collect()
}

/// With `insert-host-id`, the server's host sees the subscriber's internal address in an
/// RFC 7974 option on the SYN (kind 253, ExID 0x0348), from the external address, and the
/// connection works; without it, no such option.
#[test]
fn a_subscribers_syn_carries_its_host_identifier() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let listen = SocketAddrV4::new(addr::WAN1, 8081);
    let listener = topo
        .wan1
        .run_in(|| TcpListener::bind(listen))
        .unwrap()
        .unwrap();
    for on in [true, false] {
        let cfg = if on {
            // `lab` is a top-level key: before the tables.
            format!(
                "lab = true\n{}",
                config(&topo, "[behavior]\ninsert-host-id = true\n")
            )
        } else {
            config(&topo, "")
        };
        let gw = Gateway::start(&topo, &cfg);
        let cap = capture(&topo.wan1);
        let c = topo
            .sub1
            .run_in(|| TcpStream::connect_timeout(&listen.into(), T))
            .unwrap()
            .expect("the connection works");
        drop(listener.accept().unwrap());
        drop(c);
        let seen = syns(&captured(&cap));
        assert_eq!(seen.len(), 1, "{seen:?}");
        let (src, options) = &seen[0];
        assert!(in_pool((*src).into()), "translated: {src:?}");
        let host_id = [253, 8, 0x03, 0x48, 100, 64, 0, 10];
        let carries = options.windows(8).any(|w| w == host_id);
        assert_eq!(carries, on, "options {options:?}");
        drop(gw);
    }
}
