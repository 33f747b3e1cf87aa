//! Port overlapping (RFC 7857 section 3): mappings whose remotes differ share an external
//! endpoint, and inbound packets find theirs by the whole 5-tuple. Driven with packet fixtures
//! through the engine, under the `linux-masquerade` preset that uses it.

use super::tests::{config, endpoints, ep, inb, out, run, t, udp};
use super::*;
use crate::config::{
    ConfigError, FilteringBehavior, Hairpinning, MappingBehavior, PortAssignment, Preset,
};
use std::net::Ipv4Addr;

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
const WAN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN1B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

/// An engine with one pool address (so every subscriber is paired with it) and `behavior`.
fn masquerade(f: impl FnOnce(&mut Behavior)) -> Engine {
    let mut c = config(|c| {
        c.pool = vec![POOL];
        c.lab = true;
        c.behavior = Preset::LinuxMasquerade.behavior();
    });
    f(&mut c.behavior);
    Engine::new(c.validate().expect("valid"), 7)
}

fn in_use(e: &Engine) -> u32 {
    e.allocator().usage()[0].in_use[Protocol::Udp.index()]
}

#[test]
fn rfc7857_port_overlapping_one_external_endpoint_for_every_remote() {
    let mut e = masquerade(|_| {});
    let remotes = [ep(WAN1, 3478), ep(WAN1B, 3478), ep(WAN1, 3479)];
    for r in remotes {
        let x = out(&mut e, t(1), udp(ep(SUB1, 40_000), r, b"x"));
        assert_eq!(x, ep(POOL, 40_000), "the port is kept for {r}");
    }
    assert_eq!(e.mapping_count(), 3, "still a mapping per remote");
    assert_eq!(in_use(&e), 1, "one port from the allocator");
    for r in remotes {
        let (v, p) = inb(&mut e, t(2), udp(r, ep(POOL, 40_000), b"reply"));
        assert_eq!(v, Verdict::Forward(Side::Inside), "reply from {r}");
        assert_eq!(endpoints(p.bytes()), (r, ep(SUB1, 40_000)));
    }
    // Filtering follows the 5-tuple: a remote no mapping was made for is filtered.
    let (v, _) = inb(&mut e, t(2), udp(ep(WAN2, 3478), ep(POOL, 40_000), b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::Filtered));
    let (v, _) = inb(&mut e, t(2), udp(ep(WAN2, 3478), ep(POOL, 40_001), b"x"));
    assert_eq!(
        v,
        Verdict::Drop(DropReason::NoMapping),
        "nothing on that port"
    );
}

#[test]
fn rfc7857_port_overlapping_between_subscribers_until_the_5_tuple_collides() {
    let mut e = masquerade(|_| {});
    let a = out(&mut e, t(1), udp(ep(SUB1, 40_000), ep(WAN1, 53), b"x"));
    // SUB2's first mapping pairs it with the address, then its port 40000 overlaps SUB1's.
    out(&mut e, t(1), udp(ep(SUB2, 6000), ep(WAN2, 53), b"x"));
    let b = out(&mut e, t(1), udp(ep(SUB2, 40_000), ep(WAN2, 53), b"x"));
    assert_eq!((a, b), (ep(POOL, 40_000), ep(POOL, 40_000)));
    // SUB2 to SUB1's remote would repeat SUB1's inbound 5-tuple: another port.
    let c = out(&mut e, t(1), udp(ep(SUB2, 40_000), ep(WAN1, 53), b"x"));
    assert_eq!(c.addr, POOL);
    assert_ne!(c.port, 40_000);
    assert_eq!(in_use(&e), 3, "40000, 6000 and the one for the collision");
    for (remote, external, internal) in [
        (ep(WAN1, 53), a, ep(SUB1, 40_000)),
        (ep(WAN2, 53), b, ep(SUB2, 40_000)),
        (ep(WAN1, 53), c, ep(SUB2, 40_000)),
    ] {
        let (v, p) = inb(&mut e, t(2), udp(remote, external, b"reply"));
        assert_eq!(v, Verdict::Forward(Side::Inside));
        assert_eq!(
            endpoints(p.bytes()).1,
            internal,
            "from {remote} to {external}"
        );
    }
}

#[test]
fn rfc7857_a_shared_port_goes_back_with_its_last_mapping() {
    let mut e = masquerade(|_| {});
    out(&mut e, t(0), udp(ep(SUB1, 40_000), ep(WAN1, 53), b"x"));
    out(&mut e, t(0), udp(ep(SUB2, 6000), ep(WAN2, 53), b"x"));
    let b = out(&mut e, t(0), udp(ep(SUB2, 40_000), ep(WAN2, 53), b"x"));
    assert_eq!(b, ep(POOL, 40_000));
    // Keep SUB2's overlapping mapping alive while the others expire (UDP timer 30 s).
    out(&mut e, t(20), udp(ep(SUB2, 40_000), ep(WAN2, 53), b"x"));
    e.handle_timeout(t(40));
    assert_eq!(e.mapping_count(), 1);
    assert_eq!(in_use(&e), 1, "SUB2 still holds SUB1's port");
    let (v, _) = inb(&mut e, t(40), udp(ep(WAN2, 53), ep(POOL, 40_000), b"x"));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    // The reply refreshed it (the preset refreshes both ways): gone 30 s after.
    e.handle_timeout(t(80));
    assert_eq!(
        (e.mapping_count(), in_use(&e)),
        (0, 0),
        "released with the last"
    );
    let usage = &e.allocator().usage()[0];
    assert_eq!(
        usage.subscribers, 0,
        "released in SUB1's name, which held it"
    );
}

#[test]
fn rfc7857_hairpinning_under_port_overlapping_filters_by_5_tuple() {
    let mut e = masquerade(|b| b.hairpinning = Hairpinning::ExternalSource);
    let x1 = out(&mut e, t(0), udp(ep(SUB1, 40_000), ep(WAN1, 53), b"x"));
    let x2 = out(&mut e, t(0), udp(ep(SUB2, 5000), ep(WAN1, 53), b"x"));
    // SUB2 to SUB1's external endpoint: SUB1 never sent to SUB2's, so it is filtered.
    let mut p = udp(ep(SUB2, 5000), x1, b"hello");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Drop(DropReason::Filtered)
    );
    // Once SUB1 has sent to SUB2's external endpoint (dropped in turn: SUB2's mapping for
    // SUB1's had not been made), each gets the other's packets, from the external endpoint.
    let mut p = udp(ep(SUB1, 40_000), x2, b"hello");
    run(&mut e, t(1), Side::Inside, &mut p);
    let mut p = udp(ep(SUB2, 5000), x1, b"hello");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Forward(Side::Inside)
    );
    assert_eq!(endpoints(p.bytes()), (x2, ep(SUB1, 40_000)));
}

#[test]
fn linux_masquerade_does_not_hairpin() {
    let mut e = masquerade(|_| {});
    let x1 = out(&mut e, t(0), udp(ep(SUB1, 40_000), ep(WAN1, 53), b"x"));
    let mut p = udp(ep(SUB2, 5000), x1, b"hello");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Drop(DropReason::HairpinDisabled)
    );
}

#[test]
fn without_overlapping_a_symmetric_nat_gives_a_new_port_per_remote() {
    let mut e = masquerade(|b| b.port_overlapping = false);
    let a = out(&mut e, t(1), udp(ep(SUB1, 40_000), ep(WAN1, 1), b"x"));
    let b = out(&mut e, t(1), udp(ep(SUB1, 40_000), ep(WAN1, 2), b"x"));
    assert_eq!(a.port, 40_000);
    assert_ne!(a, b);
}

#[test]
fn port_overlapping_needs_what_keeps_the_5_tuple_unique() {
    let refused = |f: fn(&mut Behavior)| {
        let mut c = config(|c| {
            c.lab = true;
            c.behavior = Preset::LinuxMasquerade.behavior();
        });
        f(&mut c.behavior);
        match c.validate() {
            Err(ConfigError::OutOfRange { setting, .. }) => setting == "port-overlapping",
            _ => false,
        }
    };
    assert!(!refused(|_| {}));
    assert!(refused(|b| b.mapping = MappingBehavior::EndpointIndependent));
    assert!(refused(
        |b| b.filtering = FilteringBehavior::AddressDependent
    ));
    assert!(refused(|b| b.port_assignment = PortAssignment::Random));
    // Address-dependent mapping with address-dependent filtering keeps the pair unique too.
    assert!(!refused(|b| {
        b.mapping = MappingBehavior::AddressDependent;
        b.filtering = FilteringBehavior::AddressDependent;
    }));
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    const SUBS: [Ipv4Addr; 3] = [SUB1, SUB2, Ipv4Addr::new(100, 64, 0, 12)];
    const PORTS: [u16; 2] = [40_000, 40_001];
    const REMOTES: [Endpoint; 4] = [
        Endpoint::new(WAN1, 53),
        Endpoint::new(WAN1, 54),
        Endpoint::new(WAN1B, 53),
        Endpoint::new(WAN2, 53),
    ];

    #[derive(Debug, Clone)]
    enum Op {
        Out(usize, usize, usize),
        In(usize, u16),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..SUBS.len(), 0..PORTS.len(), 0..REMOTES.len()).prop_map(|(s, p, r)| Op::Out(s, p, r)),
            3 => (0..REMOTES.len(), prop_oneof![Just(40_000u16), Just(40_001), 1024u16..]).prop_map(|(r, x)| Op::In(r, x)),
            1 => Just(Op::Expire),
        ]
    }

    proptest! {
        /// Against a model of flows: a flow keeps its external endpoint, no two live flows
        /// share an (external, remote) pair, an inbound packet reaches exactly the flow its
        /// 5-tuple names (or nobody), and the allocator holds exactly the external endpoints
        /// in use, as flows come, overlap and expire.
        #[test]
        fn rfc7857_port_overlapping_keeps_every_5_tuple_unique(ops in prop::collection::vec(op(), 1..80)) {
            let mut e = masquerade(|_| {});
            // (internal, remote) -> external
            let mut flows: HashMap<(Endpoint, Endpoint), Endpoint> = HashMap::new();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Out(s, p, r) => {
                        let (internal, remote) = (ep(SUBS[s], PORTS[p]), REMOTES[r]);
                        let x = out(&mut e, t(now), udp(internal, remote, b"x"));
                        prop_assert_eq!(x.addr, POOL);
                        if let Some(&had) = flows.get(&(internal, remote)) {
                            prop_assert_eq!(x, had, "a flow keeps its endpoint");
                        }
                        let clash = flows
                            .iter()
                            .any(|(&(i, rm), &ext)| rm == remote && ext == x && i != internal);
                        prop_assert!(!clash, "{} shared with another flow to {}", x, remote);
                        flows.insert((internal, remote), x);
                    }
                    Op::In(r, port) => {
                        let remote = REMOTES[r];
                        let x = ep(POOL, port);
                        let (v, p) = inb(&mut e, t(now), udp(remote, x, b"in"));
                        let want = flows
                            .iter()
                            .find(|&(&(_, rm), &ext)| rm == remote && ext == x)
                            .map(|(&(i, _), _)| i);
                        match want {
                            Some(i) => {
                                prop_assert_eq!(v, Verdict::Forward(Side::Inside));
                                prop_assert_eq!(endpoints(p.bytes()), (remote, i));
                            }
                            None => prop_assert!(matches!(v, Verdict::Drop(_)), "{:?}", v),
                        }
                    }
                    Op::Expire => {
                        // Past every timer (UDP 30 s, no hold-down in the preset).
                        now += 100;
                        e.handle_timeout(t(now));
                        flows.clear();
                    }
                }
                let externals: HashSet<Endpoint> = flows.values().copied().collect();
                prop_assert_eq!(in_use(&e) as usize, externals.len());
                prop_assert_eq!(e.mapping_count(), flows.len());
            }
        }
    }
}
