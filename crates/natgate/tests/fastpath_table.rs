//! The fast path's table as a worker changes it: batched inserts and removals in the engine's
//! order, a removal of what is not there, and a full table. Needs root (BPF); SKIP otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::Ipv4Addr;

use natgate::dataplane::fastpath::FastPath;
use natgate_core::engine::{OffloadOp, OffloadedFlow};
use natgate_core::{Endpoint, Protocol};

fn flow(i: u32) -> OffloadedFlow {
    let port = |base: u32| u16::try_from(base + i % 50_000).unwrap();
    OffloadedFlow {
        proto: if i.is_multiple_of(2) {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        internal: Endpoint::new(Ipv4Addr::from_bits(0x6440_0000 + i / 50_000), port(1024)),
        external: Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), port(2048)),
        remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 443),
    }
}

#[test]
fn batched_changes_apply_in_order() {
    if !common::is_root() {
        return;
    }
    let fp = FastPath::load(10_000, 0).unwrap();
    let mut t = fp.table().unwrap();
    // More than one system call's worth, then removals mixed in, in order: flow 5 is removed
    // and put back, flow 6 only removed, and a flow never inserted is removed too.
    let mut ops: Vec<OffloadOp> = (0..3000).map(|i| OffloadOp::Insert(flow(i))).collect();
    ops.extend([
        OffloadOp::Remove(flow(5)),
        OffloadOp::Remove(flow(6)),
        OffloadOp::Remove(flow(9999)),
        OffloadOp::Insert(flow(5)),
    ]);
    let mut it = ops.into_iter();
    assert_eq!(t.apply_all(|| it.next()), 0);
    for i in (0..3000).filter(|&i| i != 6) {
        assert!(t.carries(&flow(i)), "flow {i}");
    }
    assert!(!t.carries(&flow(6)));
    assert!(!t.carries(&flow(9999)));
    let mut it = (0..3000).map(|i| OffloadOp::Remove(flow(i)));
    assert_eq!(t.apply_all(|| it.next()), 0);
    assert!((0..3000).all(|i| !t.carries(&flow(i))));
}

#[test]
fn a_full_table_refuses_what_does_not_fit_and_keeps_the_rest() {
    if !common::is_root() {
        return;
    }
    // Room for 4 flows (8 entries).
    let fp = FastPath::load(4, 0).unwrap();
    let mut t = fp.table().unwrap();
    let mut it = (0..10).map(|i| OffloadOp::Insert(flow(i)));
    let refused = t.apply_all(|| it.next());
    assert_eq!(refused, 12, "six flows, two entries each");
    assert!((0..4).all(|i| t.carries(&flow(i))));
    assert!((4..10).all(|i| !t.carries(&flow(i))));
}
