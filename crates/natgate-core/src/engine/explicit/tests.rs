//! Explicit mappings with packet fixtures: what a MAP opens, for whom, and for how long.

use super::super::tests::{Pkt, assert_checksums, endpoints, ep, tcp, udp};
use super::*;
use crate::alloc::{ConfiguredAllocator, Share};
use crate::config::{
    Allocation, Config, DeterministicSpec, FilteringBehavior, MappingBehavior, PortBlockSpec,
    SubscriberLimits,
};
use crate::endpoint::{Ipv4Prefix, Side};
use crate::verdict::Verdict;
use std::net::Ipv4Addr;

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

/// An engine whose dynamic behaviour is the strictest there is (address-and-port-dependent
/// mapping and filtering, allowed in lab mode), so that everything an explicit mapping lets
/// in is its doing.
fn engine_with(f: impl FnOnce(&mut Config)) -> Engine<ConfiguredAllocator> {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 256;
    c.limits.max_mappings = 256;
    c.limits.max_static_sessions = 64;
    c.behavior.mapping = MappingBehavior::AddressAndPortDependent;
    c.behavior.filtering = FilteringBehavior::AddressAndPortDependent;
    c.lab = true;
    c.inside_networks = vec![Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("prefix")];
    c.explicit_mappings = true;
    f(&mut c);
    let cfg = c.validate().expect("valid test config");
    let alloc = ConfiguredAllocator::from_config(&cfg, Share::WHOLE).expect("allocator");
    Engine::with_allocator(cfg, alloc, 3)
}

fn engine() -> Engine<ConfiguredAllocator> {
    engine_with(|_| {})
}

fn request(proto: Protocol, port: u16, secs: u64) -> MapRequest {
    MapRequest {
        proto,
        internal: ep(SUB, port),
        lifetime: Duration::from_secs(secs),
        origin: MappingOrigin::NatPmp,
        peers: Vec::new(),
        suggested: None,
    }
}

/// Sends `p` in from `side`; returns the verdict and, when forwarded, the translated endpoints
/// (checksums checked).
fn send<A: PortAllocator>(
    e: &mut Engine<A>,
    now: Instant,
    side: Side,
    mut p: Pkt,
) -> (Verdict, Endpoint, Endpoint) {
    let v = e.process(now, side, &mut p.buf, p.len);
    if let Verdict::Forward(_) = v {
        assert_checksums(p.bytes());
    }
    let (src, dst) = endpoints(p.bytes());
    (v, src, dst)
}

#[test]
fn inbound_from_any_remote_reaches_the_host_after_a_map_and_not_after_deletion() {
    let mut e = engine();
    let m = e
        .map_explicit(t(0), request(Protocol::Udp, 4000, 60), 8)
        .expect("mapped");
    assert_eq!(m.external.addr, POOL);
    assert!(matches!(
        e.poll_event(),
        Some(Event::ExplicitMappingCreated { internal, external, origin: MappingOrigin::NatPmp, .. })
            if internal == ep(SUB, 4000) && external == m.external
    ));
    for remote in [ep(WAN, 9), ep(WAN2, 1234)] {
        let (v, src, dst) = send(&mut e, t(1), Side::Outside, udp(remote, m.external, b"hi"));
        assert_eq!(v, Verdict::Forward(Side::Inside), "from {remote}");
        assert_eq!((src, dst), (remote, ep(SUB, 4000)));
    }
    // Outbound from the mapped endpoint leaves from the mapped external endpoint, to anyone
    // (endpoint-independent mapping, though the dynamic behaviour is dependent).
    let (v, src, _) = send(
        &mut e,
        t(1),
        Side::Inside,
        udp(ep(SUB, 4000), ep(WAN, 7), b"x"),
    );
    assert_eq!(v, Verdict::Forward(Side::Outside));
    assert_eq!(src, m.external);

    let gone = e
        .unmap_explicit(t(2), Protocol::Udp, ep(SUB, 4000))
        .expect("there");
    assert_eq!(gone.external, m.external);
    // Its flows went with it: not even the remote that already talked gets in.
    let (v, ..) = send(
        &mut e,
        t(3),
        Side::Outside,
        udp(ep(WAN, 9), m.external, b"hi"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NoMapping));
    assert_eq!(e.static_session_count(), 0);
    assert!(
        e.unmap_explicit(t(3), Protocol::Udp, ep(SUB, 4000))
            .is_none()
    );
}

#[test]
fn a_mapping_ends_with_its_lifetime_and_a_renewal_extends_it() {
    let mut e = engine();
    let m = e
        .map_explicit(t(0), request(Protocol::Tcp, 22, 100), 8)
        .expect("mapped");
    assert_eq!(e.next_timeout(), Some(t(100)));
    let again = e
        .map_explicit(t(50), request(Protocol::Tcp, 22, 100), 8)
        .expect("renewed");
    assert_eq!(again.external, m.external, "a renewal keeps the endpoint");
    assert_eq!(e.next_timeout(), Some(t(150)));
    e.handle_timeout(t(120));
    let (v, _, dst) = send(
        &mut e,
        t(120),
        Side::Outside,
        tcp(ep(WAN, 5555), m.external, "S"),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(dst, ep(SUB, 22));
    // A non-SYN opens nothing (RFC 5382).
    let (v, ..) = send(
        &mut e,
        t(120),
        Side::Outside,
        tcp(ep(WAN2, 1), m.external, "A"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::TcpNoSession));
    e.handle_timeout(t(150));
    assert!(e.explicit_mapping(Protocol::Tcp, ep(SUB, 22)).is_none());
    let (v, ..) = send(
        &mut e,
        t(151),
        Side::Outside,
        tcp(ep(WAN, 5556), m.external, "S"),
    );
    assert_ne!(v, Verdict::Forward(Side::Inside));
}

#[test]
fn a_filter_admits_only_its_peers() {
    let mut e = engine();
    let mut req = request(Protocol::Udp, 4000, 60);
    req.peers = vec![RemotePeer {
        prefix: Ipv4Prefix::new(WAN, 32).expect("prefix"),
        port: None,
    }];
    let m = e.map_explicit(t(0), req, 8).expect("mapped");
    let (v, ..) = send(
        &mut e,
        t(1),
        Side::Outside,
        udp(ep(WAN, 9), m.external, b"a"),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    let (v, ..) = send(
        &mut e,
        t(1),
        Side::Outside,
        udp(ep(WAN2, 9), m.external, b"a"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::Filtered));
}

#[test]
fn the_port_is_held_down_after_release() {
    let mut e = engine();
    let first = e
        .map_explicit(t(0), request(Protocol::Udp, 4000, 60), 8)
        .expect("mapped")
        .external;
    e.unmap_explicit(t(1), Protocol::Udp, ep(SUB, 4000));
    // The next mappings, of this or another endpoint, do not get the port back at once.
    for port in 4000..4020 {
        let m = e
            .map_explicit(t(2), request(Protocol::Udp, port, 60), 64)
            .expect("mapped");
        assert_ne!(m.external, first);
    }
}

#[test]
fn an_engine_not_configured_for_explicit_mappings_refuses_them() {
    let mut e = engine_with(|c| c.explicit_mappings = false);
    assert_eq!(
        e.map_explicit(t(0), request(Protocol::Udp, 4000, 60), 8),
        Err(MapError::Disabled)
    );
    assert_eq!(e.explicit_mappings().count(), 0);
}

#[test]
fn requests_are_checked_before_anything_changes() {
    let mut e = engine();
    let mut outside = request(Protocol::Udp, 4000, 60);
    outside.internal = ep(Ipv4Addr::new(192, 168, 1, 2), 4000);
    assert_eq!(e.map_explicit(t(0), outside, 8), Err(MapError::NotInside));
    assert_eq!(
        e.map_explicit(t(0), request(Protocol::Icmp, 1, 60), 8),
        Err(MapError::UnsupportedProtocol)
    );
    assert_eq!(
        e.map_explicit(t(0), request(Protocol::Udp, 0, 60), 8),
        Err(MapError::ZeroPort)
    );
    for port in [1, 2] {
        e.map_explicit(t(0), request(Protocol::Udp, port, 60), 2)
            .expect("under the cap");
    }
    assert_eq!(
        e.map_explicit(t(0), request(Protocol::Tcp, 3, 60), 2),
        Err(MapError::MappingLimit)
    );
    // A renewal is not a new mapping.
    assert!(
        e.map_explicit(t(0), request(Protocol::Udp, 2, 60), 2)
            .is_ok()
    );
    assert_eq!(e.explicit_mappings().count(), 2);
}

#[test]
fn mappings_come_from_the_subscribers_port_block_and_count_against_its_limits() {
    let mut e = engine_with(|c| {
        c.allocation = Allocation::PortBlock(PortBlockSpec {
            block_size: 4,
            max_blocks_per_subscriber: 1,
        });
    });
    let mut block = Vec::new();
    for port in 1..=4 {
        block.push(
            e.map_explicit(t(0), request(Protocol::Udp, port, 60), 64)
                .expect("in the block")
                .external
                .port,
        );
    }
    let first = *block.iter().min().expect("four");
    assert!(block.iter().all(|p| (first..first + 4).contains(p)));
    assert_eq!(
        e.map_explicit(t(0), request(Protocol::Udp, 5, 60), 64),
        Err(MapError::NoResources(DropReason::SubscriberPortLimit))
    );

    let mut q = engine_with(|c| {
        c.limits.subscriber = SubscriberLimits {
            max_udp_sessions: 1,
            max_tcp_sessions: 1,
            max_icmp_sessions: 1,
            max_subscribers: 4,
            ..SubscriberLimits::default()
        };
    });
    q.map_explicit(t(0), request(Protocol::Udp, 1, 60), 64)
        .expect("first");
    assert_eq!(
        q.map_explicit(t(0), request(Protocol::Udp, 2, 60), 64),
        Err(MapError::NoResources(DropReason::SubscriberSessionLimit))
    );
    q.unmap_explicit(t(1), Protocol::Udp, ep(SUB, 1));
    assert!(
        q.map_explicit(t(1), request(Protocol::Udp, 2, 60), 64)
            .is_ok(),
        "the charge went with the mapping"
    );
}

#[test]
fn mappings_survive_a_reload() {
    let mut e = engine();
    let m = e
        .map_explicit(t(0), request(Protocol::Udp, 4000, 60), 8)
        .expect("mapped");
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 256;
    c.limits.max_mappings = 256;
    c.limits.max_static_sessions = 64;
    c.behavior.mapping = MappingBehavior::AddressAndPortDependent;
    c.behavior.filtering = FilteringBehavior::AddressAndPortDependent;
    c.lab = true;
    c.behavior.timers.udp = 600;
    c.explicit_mappings = true;
    e.reconfigure(&c.validate().expect("valid"))
        .expect("reloads");
    let (v, _, dst) = send(
        &mut e,
        t(1),
        Side::Outside,
        udp(ep(WAN, 9), m.external, b"a"),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(dst, ep(SUB, 4000));
}

#[test]
fn the_public_address_is_where_the_subscribers_mappings_are_under_every_allocation() {
    let pool: Vec<Ipv4Addr> = (0..4).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect();
    let prefix = |a, len| Ipv4Prefix::new(a, len).expect("prefix");
    let modes = [
        Allocation::Dynamic,
        Allocation::PortBlock(PortBlockSpec {
            block_size: 64,
            max_blocks_per_subscriber: 2,
        }),
        Allocation::Deterministic(DeterministicSpec {
            inside: prefix(Ipv4Addr::new(100, 64, 0, 0), 24),
            outside: prefix(Ipv4Addr::new(198, 51, 100, 0), 30),
            ports_per_subscriber: None,
            overflow: None,
        }),
    ];
    let mut off_the_first = 0;
    for mode in modes {
        let deterministic = matches!(mode, Allocation::Deterministic(_));
        let mut e = engine_with(|c| {
            c.pool = pool.clone();
            c.allocation = mode;
        });
        // Subscribers that others' pairing pushes off the pool's first address.
        for last in 20..24 {
            let mut r = request(Protocol::Udp, 1, 60);
            r.internal = ep(Ipv4Addr::new(100, 64, 0, last), 1);
            e.map_explicit(t(0), r, 8).expect("mapped");
        }
        let before = e.external_address_for(SUB);
        let m = e
            .map_explicit(t(0), request(Protocol::Udp, 4000, 60), 8)
            .expect("mapped");
        assert_eq!(
            e.external_address_for(SUB),
            Some(m.external.addr),
            "{mode:?}"
        );
        off_the_first += usize::from(m.external.addr != pool[0]);
        if deterministic {
            assert_eq!(before, Some(m.external.addr), "computed before any mapping");
        }
        e.unmap_explicit(t(1), Protocol::Udp, ep(SUB, 4000));
    }
    // Not the pool's first address by luck: the answer followed the mappings.
    assert!(off_the_first >= 2, "{off_the_first}");
}

/// One step of [`explicit_mappings_follow_a_reference_model`].
#[derive(Debug, Clone)]
enum Op {
    /// Map (or renew) UDP port `port` of the subscriber for `secs` seconds.
    Map { port: u16, secs: u64 },
    /// Delete that mapping.
    Unmap { port: u16 },
    /// Let `secs` seconds pass and run the timers.
    Wait { secs: u64 },
    /// A datagram from a remote to the external endpoint of that port's mapping, or to the
    /// last external endpoint it had.
    Inbound { port: u16, remote: u8 },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let port = 1u16..6;
    prop_oneof![
        (port.clone(), 1u64..200).prop_map(|(port, secs)| Op::Map { port, secs }),
        port.clone().prop_map(|port| Op::Unmap { port }),
        (1u64..150).prop_map(|secs| Op::Wait { secs }),
        (port, any::<u8>()).prop_map(|(port, remote)| Op::Inbound { port, remote }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

    /// Maps, renewals, deletions, time and inbound datagrams against a model that is a map of
    /// internal port to (external endpoint, expiry): the engine lists exactly the model's
    /// mappings, a datagram to a live mapping reaches its internal endpoint from any remote,
    /// one to an ended mapping's endpoint reaches nobody, and a renewal keeps the endpoint.
    #[test]
    fn explicit_mappings_follow_a_reference_model(ops in proptest::collection::vec(op(), 1..40)) {
        use std::collections::BTreeMap;
        let mut e = engine();
        let mut model: BTreeMap<u16, (Endpoint, Instant)> = BTreeMap::new();
        let mut last_external: BTreeMap<u16, Endpoint> = BTreeMap::new();
        let mut now = t(0);
        for op in ops {
            match op {
                Op::Map { port, secs } => {
                    let m = e
                        .map_explicit(now, request(Protocol::Udp, port, secs), 64)
                        .expect("room for five");
                    if let Some((external, _)) = model.get(&port) {
                        proptest::prop_assert_eq!(m.external, *external, "a renewal keeps it");
                    }
                    model.insert(port, (m.external, now + Duration::from_secs(secs)));
                    last_external.insert(port, m.external);
                }
                Op::Unmap { port } => {
                    let gone = e.unmap_explicit(now, Protocol::Udp, ep(SUB, port));
                    proptest::prop_assert_eq!(gone.is_some(), model.remove(&port).is_some());
                }
                Op::Wait { secs } => {
                    now = now + Duration::from_secs(secs);
                    e.handle_timeout(now);
                    model.retain(|_, (_, expires)| *expires > now);
                }
                Op::Inbound { port, remote } => {
                    let Some(external) = last_external.get(&port).copied() else {
                        continue;
                    };
                    let reused = model.iter().any(|(p, (x, _))| *p != port && *x == external);
                    if reused {
                        // After its hold-down the port may serve another mapping.
                        continue;
                    }
                    let from = ep(Ipv4Addr::new(203, 0, 113, remote), 1000 + u16::from(remote));
                    let (v, _, dst) = send(&mut e, now, Side::Outside, udp(from, external, b"x"));
                    if model.contains_key(&port) {
                        proptest::prop_assert_eq!(v, Verdict::Forward(Side::Inside));
                        proptest::prop_assert_eq!(dst, ep(SUB, port));
                    } else {
                        proptest::prop_assert_ne!(v, Verdict::Forward(Side::Inside));
                    }
                }
            }
            let listed: BTreeMap<u16, Endpoint> = e
                .explicit_mappings()
                .map(|m| (m.internal.port, m.external))
                .collect();
            let expected: BTreeMap<u16, Endpoint> =
                model.iter().map(|(p, (x, _))| (*p, *x)).collect();
            proptest::prop_assert_eq!(listed, expected);
        }
    }
}
