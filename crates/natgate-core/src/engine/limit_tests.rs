//! Every limit at its exact edge (RFC 6888 REQ-4, REQ-5, REQ-11): a limit of N lets N flows
//! through and refuses flow N+1 with the configured answer (none, host unreachable,
//! administratively prohibited, TCP reset), counted under its own reason and reported with a
//! `MappingFailed` event; no live session is evicted, and a per-subscriber limit leaves other
//! subscribers alone. Time is the injected clock; answers are checked with `etherparse`.

use super::tests::{Pkt, assert_checksums, echo, endpoints, ep, tcp, udp};
use super::*;
use crate::alloc::{AllocSettings, ConfiguredAllocator, DynamicAllocator, Share};
use crate::config::{Allocation, Config, MappingFailureReply, PortBlockSpec, SubscriberLimits};
use etherparse::{Icmpv4Header, Icmpv4Type, Ipv4Header, TcpHeader};

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

const ANSWERS: [MappingFailureReply; 4] = [
    MappingFailureReply::None,
    MappingFailureReply::HostUnreachable,
    MappingFailureReply::AdminProhibited,
    MappingFailureReply::TcpReset,
];

fn t0() -> Instant {
    Instant::from_secs(100)
}

/// A first packet of `proto` from `internal` to `remote` (a SYN for TCP, an echo request for
/// ICMP, whose identifier is the internal port).
fn first(proto: Protocol, internal: Endpoint, remote: Endpoint) -> Pkt {
    match proto {
        Protocol::Tcp => tcp(internal, remote, "S"),
        Protocol::Udp => udp(internal, remote, b"x"),
        Protocol::Icmp => echo(internal.addr, remote.addr, internal.port, true),
    }
}

/// What comes back from `remote` to `external` on an existing flow.
fn reply(proto: Protocol, remote: Endpoint, external: Endpoint) -> Pkt {
    match proto {
        Protocol::Tcp => tcp(remote, external, "SA"),
        Protocol::Udp => udp(remote, external, b"y"),
        Protocol::Icmp => echo(remote.addr, external.addr, external.port, false),
    }
}

fn run<A: PortAllocator>(e: &mut Engine<A>, now: Instant, side: Side, p: &mut Pkt) -> Verdict {
    let v = e.process(now, side, &mut p.buf, p.len);
    if let Verdict::Reply { len, .. } = v {
        p.len = len;
    }
    v
}

/// One limit, configured so that exactly `n` flows fit.
struct Limit {
    name: &'static str,
    /// The reason a refused flow is counted under.
    reason: DropReason,
    /// How many flows fit.
    n: u16,
    /// Per subscriber (another subscriber can still open flows) or global.
    per_subscriber: bool,
    /// Sets the limit.
    configure: fn(&mut Config),
    /// Flow `k`: its internal and remote endpoints.
    flow: fn(u16) -> (Endpoint, Endpoint),
}

/// Flow `k` of one subscriber: its own internal port, so each needs its own mapping and port.
fn own_port(k: u16) -> (Endpoint, Endpoint) {
    (ep(SUB1, 20_000 + k), ep(WAN, 443))
}

/// Flow `k` of one internal endpoint to its own remote: one mapping, a session per flow.
fn own_remote(k: u16) -> (Endpoint, Endpoint) {
    (
        ep(SUB1, 20_000),
        ep(Ipv4Addr::from_bits(WAN.to_bits() + u32::from(k)), 443),
    )
}

/// Flow `k` from subscriber `k`.
fn own_subscriber(k: u16) -> (Endpoint, Endpoint) {
    (
        ep(
            Ipv4Addr::from_bits(SUB1.to_bits() + 100 + u32::from(k)),
            20_000,
        ),
        ep(WAN, 443),
    )
}

fn limits() -> [Limit; 8] {
    [
        Limit {
            name: "pool exhausted (two ports left per protocol)",
            reason: DropReason::MappingFailed,
            n: 2,
            per_subscriber: false,
            configure: |_| {},
            flow: own_port,
        },
        Limit {
            name: "subscriber port limit (one block of 4)",
            reason: DropReason::SubscriberPortLimit,
            n: 4,
            per_subscriber: true,
            configure: |c| {
                c.allocation = Allocation::PortBlock(PortBlockSpec {
                    block_size: 4,
                    max_blocks_per_subscriber: 1,
                });
            },
            flow: own_port,
        },
        Limit {
            name: "per-protocol session quota of 3",
            reason: DropReason::SubscriberSessionLimit,
            n: 3,
            per_subscriber: true,
            configure: |c| {
                c.limits.subscriber = SubscriberLimits {
                    max_tcp_sessions: 3,
                    max_udp_sessions: 3,
                    max_icmp_sessions: 3,
                    max_subscribers: 16,
                    ..SubscriberLimits::default()
                };
            },
            flow: own_remote,
        },
        Limit {
            name: "creation rate (burst 3)",
            reason: DropReason::SubscriberRateLimit,
            n: 3,
            per_subscriber: true,
            configure: |c| {
                c.limits.subscriber = SubscriberLimits {
                    session_rate: 10,
                    session_burst: 3,
                    max_subscribers: 16,
                    ..SubscriberLimits::default()
                };
            },
            flow: own_port,
        },
        Limit {
            name: "subscriber table of 2",
            reason: DropReason::SubscriberTableFull,
            n: 2,
            per_subscriber: false,
            configure: |c| {
                c.limits.subscriber = SubscriberLimits {
                    max_udp_sessions: 100,
                    max_tcp_sessions: 100,
                    max_icmp_sessions: 100,
                    max_subscribers: 2,
                    ..SubscriberLimits::default()
                };
            },
            flow: own_subscriber,
        },
        Limit {
            name: "global session limit of 3",
            reason: DropReason::SessionTableFull,
            n: 3,
            per_subscriber: false,
            configure: |c| {
                c.limits.max_sessions = 3;
                c.limits.max_mappings = 3;
            },
            flow: own_remote,
        },
        Limit {
            name: "global mapping limit of 3",
            reason: DropReason::MappingTableFull,
            n: 3,
            per_subscriber: false,
            configure: |c| {
                c.limits.max_sessions = 8;
                c.limits.max_mappings = 3;
            },
            flow: own_port,
        },
        Limit {
            name: "combined session quota of 3",
            reason: DropReason::SubscriberTotalSessionLimit,
            n: 3,
            per_subscriber: true,
            configure: |c| {
                c.limits.subscriber = SubscriberLimits {
                    max_sessions: 3,
                    max_subscribers: 16,
                    ..SubscriberLimits::default()
                };
            },
            flow: own_remote,
        },
    ]
}

/// An engine under `limit` answering with `answer`. The pool case takes every port of the one
/// pool address out of use except 5000 and 5001.
fn engine(limit: &Limit, answer: MappingFailureReply) -> Engine<ConfiguredAllocator> {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 64;
    c.limits.max_mappings = 64;
    c.behavior.mapping_failure_reply = answer;
    // Every refusal answered: the answer limits have tests of their own (`abuse_tests`).
    c.limits.answer_rate = 0;
    c.limits.global_answer_rate = 0;
    (limit.configure)(&mut c);
    let cfg = c.validate().expect("valid test config");
    let alloc = if limit.name.starts_with("pool") {
        let mut d = DynamicAllocator::new(&[POOL], AllocSettings::from_config(cfg.get()));
        d.withhold_ports(|_, port| port == 5000 || port == 5001);
        ConfiguredAllocator::Dynamic(d)
    } else {
        ConfiguredAllocator::from_config(&cfg, Share::WHOLE).expect("allocator")
    };
    Engine::with_allocator(cfg, alloc, 7)
}

/// Checks that `v` and the buffer of the refused packet (sent by `internal` to `remote`) are
/// `answer`'s answer for `proto`, with every checksum right.
fn assert_answer(
    what: &str,
    v: Verdict,
    p: &Pkt,
    answer: MappingFailureReply,
    proto: Protocol,
    internal: Endpoint,
    remote: Endpoint,
) {
    use crate::config::FailureAnswer;
    let reason = v.drop_reason();
    let expect = answer.answer(proto);
    if expect == FailureAnswer::Nothing {
        assert!(matches!(v, Verdict::Drop(_)), "{what}: {v:?}");
        return;
    }
    assert!(
        matches!(
            v,
            Verdict::Reply {
                side: Side::Inside,
                ..
            }
        ),
        "{what}: {v:?} (reason {reason:?})"
    );
    assert_checksums(p.bytes());
    let (ip, l4) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.destination), internal.addr, "{what}");
    match expect {
        FailureAnswer::IcmpUnreachable(code) => {
            assert_eq!(Ipv4Addr::from(ip.source), INSIDE, "{what}");
            let (icmp, _) = Icmpv4Header::from_slice(l4).expect("icmp");
            let Icmpv4Type::DestinationUnreachable(u) = icmp.icmp_type else {
                panic!("{what}: {:?}", icmp.icmp_type);
            };
            assert_eq!(u.code_u8(), code, "{what}");
        }
        FailureAnswer::TcpReset => {
            // RFC 9293 3.10.7.1: from the remote the SYN was for, acknowledging the SYN.
            let (seg, _) = TcpHeader::from_slice(l4).expect("tcp");
            assert_eq!(
                endpoints(p.bytes()),
                (remote, internal),
                "{what}: the reset comes from the remote"
            );
            assert!(seg.rst && seg.ack && !seg.syn, "{what}");
            assert_eq!(seg.sequence_number, 0, "{what}");
            assert_eq!(seg.acknowledgment_number, 1001, "{what}: SYN seq 1000 + 1");
        }
        FailureAnswer::Nothing => unreachable!(),
    }
}

#[test]
fn rfc6888_req4_req5_req11_every_limit_at_its_edge_with_every_answer() {
    for limit in limits() {
        for answer in ANSWERS {
            for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
                let what = format!("{} / {answer:?} / {proto:?}", limit.name);
                let mut e = engine(&limit, answer);
                let mut externals = Vec::new();
                for k in 0..limit.n {
                    let (internal, remote) = (limit.flow)(k);
                    let mut p = first(proto, internal, remote);
                    let v = run(&mut e, t0(), Side::Inside, &mut p);
                    assert_eq!(v, Verdict::Forward(Side::Outside), "{what}: flow {k}");
                    externals.push((endpoints(p.bytes()).0, remote));
                }
                while e.poll_event().is_some() {}
                let sessions = e.session_count();
                let before = e.counters().clone();

                let (internal, remote) = (limit.flow)(limit.n);
                let mut p = first(proto, internal, remote);
                let v = run(&mut e, t0(), Side::Inside, &mut p);
                assert_eq!(v.drop_reason(), Some(limit.reason), "{what}");
                assert_answer(&what, v, &p, answer, proto, internal, remote);

                let c = e.counters();
                assert_eq!(
                    c.drops(limit.reason) - before.drops(limit.reason),
                    1,
                    "{what}: counted under its reason"
                );
                assert_eq!(c.total_drops() - before.total_drops(), 1, "{what}");
                let (icmp, resets) = match answer.answer(proto) {
                    crate::config::FailureAnswer::Nothing => (0, 0),
                    crate::config::FailureAnswer::IcmpUnreachable(_) => (1, 0),
                    crate::config::FailureAnswer::TcpReset => (0, 1),
                };
                assert_eq!(c.icmp_generated - before.icmp_generated, icmp, "{what}");
                assert_eq!(
                    c.tcp_resets_generated - before.tcp_resets_generated,
                    resets,
                    "{what}"
                );
                let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
                // An ICMP query's remote has no port.
                let remote_seen = match proto {
                    Protocol::Icmp => ep(remote.addr, 0),
                    _ => remote,
                };
                assert_eq!(
                    events,
                    vec![Event::MappingFailed {
                        at: t0(),
                        proto,
                        internal,
                        remote: remote_seen,
                        reason: limit.reason,
                    }],
                    "{what}: management is told, once, with the reason"
                );

                // Nothing live was evicted: every flow still goes both ways.
                assert_eq!(e.session_count(), sessions, "{what}");
                for (external, remote) in &externals {
                    let mut r = reply(proto, *remote, *external);
                    let v = run(&mut e, t0(), Side::Outside, &mut r);
                    assert_eq!(v, Verdict::Forward(Side::Inside), "{what}: reply kept");
                }
                if limit.per_subscriber {
                    let mut other = first(proto, ep(SUB2, 20_000), ep(WAN, 443));
                    assert_eq!(
                        run(&mut e, t0(), Side::Inside, &mut other),
                        Verdict::Forward(Side::Outside),
                        "{what}: another subscriber is unaffected"
                    );
                }
            }
        }
    }
}

#[test]
fn rfc6888_req5_rate_limit_refills_on_the_injected_clock_to_the_millisecond() {
    let limit = &limits()[3];
    let mut e = engine(limit, MappingFailureReply::TcpReset);
    for k in 0..3 {
        let (i, r) = own_port(k);
        assert_eq!(
            run(&mut e, t0(), Side::Inside, &mut first(Protocol::Tcp, i, r)),
            Verdict::Forward(Side::Outside)
        );
    }
    // 10 per second: the fourth is refused until 100 ms have passed, not one millisecond less.
    let (i, r) = own_port(3);
    let at = |ms| Instant::from_millis(t0().as_millis() + ms);
    let v = run(
        &mut e,
        at(99),
        Side::Inside,
        &mut first(Protocol::Tcp, i, r),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::SubscriberRateLimit));
    let v = run(
        &mut e,
        at(100),
        Side::Inside,
        &mut first(Protocol::Tcp, i, r),
    );
    assert_eq!(v, Verdict::Forward(Side::Outside));
    let (i, r) = own_port(4);
    let v = run(
        &mut e,
        at(100),
        Side::Inside,
        &mut first(Protocol::Tcp, i, r),
    );
    assert_eq!(v.drop_reason(), Some(DropReason::SubscriberRateLimit));
    assert_eq!(e.counters().tcp_resets_generated, 2);
}

#[test]
fn rfc6888_req4_combined_quota_counts_every_protocol() {
    let limit = &limits()[7];
    assert_eq!(limit.reason, DropReason::SubscriberTotalSessionLimit);
    let mut e = engine(limit, MappingFailureReply::HostUnreachable);
    // One under the limit of 3, one flow of each of two protocols: both pass.
    for (k, proto) in [(0, Protocol::Tcp), (1, Protocol::Udp)] {
        let (i, r) = own_port(k);
        assert_eq!(
            run(&mut e, t0(), Side::Inside, &mut first(proto, i, r)),
            Verdict::Forward(Side::Outside),
            "{proto:?}"
        );
    }
    // The third, of a third protocol, reaches the limit; the fourth, whatever its protocol, is
    // refused and counted under the combined limit's own reason.
    let (i, r) = own_port(2);
    assert_eq!(
        run(&mut e, t0(), Side::Inside, &mut first(Protocol::Icmp, i, r)),
        Verdict::Forward(Side::Outside)
    );
    for (k, proto) in [(3, Protocol::Udp), (4, Protocol::Tcp), (5, Protocol::Icmp)] {
        let (i, r) = own_port(k);
        let v = run(&mut e, t0(), Side::Inside, &mut first(proto, i, r));
        assert_eq!(
            v.drop_reason(),
            Some(DropReason::SubscriberTotalSessionLimit),
            "{proto:?}"
        );
    }
    assert_eq!(
        e.counters().drops(DropReason::SubscriberTotalSessionLimit),
        3
    );
    assert_eq!(e.counters().drops(DropReason::SubscriberSessionLimit), 0);
    assert_eq!(e.session_count(), 3);
}

#[test]
fn rfc6888_req4_quota_frees_up_when_a_session_ends() {
    let limit = &limits()[2];
    let mut e = engine(limit, MappingFailureReply::HostUnreachable);
    for k in 0..3 {
        let (i, r) = own_remote(k);
        assert_eq!(
            run(&mut e, t0(), Side::Inside, &mut first(Protocol::Udp, i, r)),
            Verdict::Forward(Side::Outside)
        );
    }
    let (i, r) = own_remote(3);
    let refused = run(&mut e, t0(), Side::Inside, &mut first(Protocol::Udp, i, r));
    assert_eq!(
        refused.drop_reason(),
        Some(DropReason::SubscriberSessionLimit)
    );
    // The UDP timer (300 s) ends the three sessions; the subscriber has room again.
    let later = Instant::from_secs(u64::from(t0().as_secs()) + 301);
    e.handle_timeout(later);
    assert_eq!(e.session_count(), 0);
    assert_eq!(
        run(&mut e, later, Side::Inside, &mut first(Protocol::Udp, i, r)),
        Verdict::Forward(Side::Outside)
    );
}

#[test]
fn tcp_reset_answer_needs_a_unicast_source() {
    let limit = &limits()[5];
    let mut e = engine(limit, MappingFailureReply::TcpReset);
    for k in 0..3 {
        let (i, r) = own_remote(k);
        run(&mut e, t0(), Side::Inside, &mut first(Protocol::Tcp, i, r));
    }
    // A SYN "from" a broadcast source is refused without an answer (RFC 1812 4.3.2.7).
    let mut p = tcp(ep(Ipv4Addr::BROADCAST, 20_000), own_remote(9).1, "S");
    assert_eq!(
        run(&mut e, t0(), Side::Inside, &mut p),
        Verdict::Drop(DropReason::SessionTableFull)
    );
    assert_eq!(e.counters().tcp_resets_generated, 0);
}

/// RFC 6888 REQ-11 for the other direction: under endpoint-independent filtering a remote may
/// open a session through a live mapping, and that session counts against the subscriber's
/// quota and the session table. A remote refused by either is dropped, counted under the
/// limit's reason and reported with a `MappingFailed` event naming the mapping's internal
/// endpoint and the remote; the remote gets no answer, and nothing live is evicted.
#[test]
fn rfc6888_req11_inbound_session_refused_by_a_limit_is_reported() {
    for limit in [&limits()[2], &limits()[5]] {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let what = format!("{} / {proto:?}", limit.name);
            let mut e = engine(limit, MappingFailureReply::HostUnreachable);
            assert_eq!(
                e.behavior().filtering,
                crate::config::FilteringBehavior::EndpointIndependent,
                "{what}"
            );
            let mut external = None;
            for k in 0..limit.n {
                let (internal, remote) = own_remote(k);
                let mut p = first(proto, internal, remote);
                let v = run(&mut e, t0(), Side::Inside, &mut p);
                assert_eq!(v, Verdict::Forward(Side::Outside), "{what}: flow {k}");
                external = Some(endpoints(p.bytes()).0);
            }
            let external = external.expect("flows");
            while e.poll_event().is_some() {}
            let before = e.counters().clone();
            let sessions = e.session_count();

            let (internal, _) = own_remote(0);
            let stranger = own_remote(limit.n).1;
            let mut p = match proto {
                Protocol::Tcp => tcp(stranger, external, "S"),
                _ => udp(stranger, external, b"in"),
            };
            let v = run(&mut e, t0(), Side::Outside, &mut p);
            assert_eq!(v, Verdict::Drop(limit.reason), "{what}: no answer outside");
            let c = e.counters();
            assert_eq!(
                c.drops(limit.reason) - before.drops(limit.reason),
                1,
                "{what}"
            );
            assert_eq!(c.icmp_generated, before.icmp_generated, "{what}");
            assert_eq!(
                c.tcp_resets_generated, before.tcp_resets_generated,
                "{what}"
            );
            let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
            assert_eq!(
                events,
                vec![Event::MappingFailed {
                    at: t0(),
                    proto,
                    internal,
                    remote: stranger,
                    reason: limit.reason,
                }],
                "{what}: management is told, once, with the reason"
            );
            assert_eq!(e.session_count(), sessions, "{what}: nothing evicted");
        }
    }
}

/// A subscriber hammering its quota is refused every time (each refusal counted and answered)
/// but reported once per second, so refusals cannot flood the log and push out block records.
#[test]
fn rfc6888_req11_refusals_are_reported_once_per_subscriber_reason_and_second() {
    let limit = &limits()[2];
    let mut e = engine(limit, MappingFailureReply::HostUnreachable);
    for k in 0..3 {
        let (i, r) = own_remote(k);
        run(&mut e, t0(), Side::Inside, &mut first(Protocol::Udp, i, r));
    }
    let failures = |e: &mut Engine<ConfiguredAllocator>| {
        std::iter::from_fn(|| e.poll_event())
            .filter(|ev| matches!(ev, Event::MappingFailed { .. }))
            .count()
    };
    failures(&mut e);
    let before = e.counters().clone();
    let mut second = Instant::from_millis(t0().as_millis() + 10);
    for round in 0..3u64 {
        for k in 3..103 {
            let (i, r) = own_remote(k);
            let v = run(
                &mut e,
                second,
                Side::Inside,
                &mut first(Protocol::Udp, i, r),
            );
            assert!(matches!(v, Verdict::Reply { .. }), "{round}/{k}: {v:?}");
        }
        assert_eq!(failures(&mut e), 1, "round {round}: one report per second");
        second = Instant::from_millis(second.as_millis() + 1000);
    }
    let c = e.counters();
    let reason = DropReason::SubscriberSessionLimit;
    assert_eq!(
        c.drops(reason) - before.drops(reason),
        300,
        "every refusal counted"
    );
    assert_eq!(
        c.icmp_generated - before.icmp_generated,
        300,
        "every one answered"
    );
    assert_eq!(
        c.refusal_reports_suppressed - before.refusal_reports_suppressed,
        297
    );
}
