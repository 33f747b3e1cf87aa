//! The DS-Lite path with packets: softwires as subscribers (RFC 6333 section 6), the softwire
//! policy, per-softwire limits at their edges, MTU handling (section 5.3) and hairpinning.
//! Packets are built with `etherparse` and read back with it.

use super::super::tests::{Pkt, assert_checksums, endpoints, ep, tcp, udp};
use super::*;
use crate::alloc::{ConfiguredAllocator, DynamicAllocator, Share, SubscriberId};
use crate::config::{Allocation, Config, DsLite, PortBlockSpec, SoftwireLimits, SoftwireSpec};
use crate::endpoint::{Endpoint, Ipv4Prefix};
use crate::wire::ipv6::Ipv6Packet;
use etherparse::{Ipv4Header, PacketBuilder, TcpHeader, TcpOptionElement};
use std::net::{Ipv4Addr, Ipv6Addr};

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PLAIN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const HOME: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const AFTR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const B4A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
const B4B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 2);
const STRANGER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

fn engine_with(f: impl FnOnce(&mut DsLite)) -> Engine<DynamicAllocator> {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 4096;
    c.limits.max_mappings = 4096;
    c.inside_networks = vec![Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("prefix")];
    let mut d = DsLite::new(AFTR, vec!["2001:db8:1::/48".parse().expect("prefix")]);
    f(&mut d);
    c.ds_lite = Some(d);
    Engine::new(c.validate().expect("valid test config"), 7)
}

fn engine() -> Engine<DynamicAllocator> {
    engine_with(|_| {})
}

/// `inner` in a softwire packet from `b4` to the AFTR.
fn wrap(b4: Ipv6Addr, inner: &Pkt) -> Pkt {
    let mut buf = vec![0u8; 40];
    ipv6::write_header(
        &mut buf,
        &Ipv6Repr {
            src: b4,
            dst: AFTR,
            next_header: next_header::IPV4,
            hop_limit: 64,
            traffic_class: 0,
            payload_len: inner.len as u16,
        },
    );
    buf.extend_from_slice(inner.bytes());
    Pkt::new(&buf)
}

/// A tunnel packet's ends and its inner IPv4 packet, checked: IPv6 from the AFTR, next header
/// 4, payload length matching, inner checksums valid.
fn unwrap(bytes: &[u8]) -> (Ipv6Addr, &[u8]) {
    let p = Ipv6Packet::new_checked(bytes).expect("IPv6");
    assert_eq!(p.src_addr(), AFTR);
    assert_eq!(p.next_header(), next_header::IPV4);
    assert_eq!(p.total_len(), bytes.len());
    let inner = &bytes[40..];
    assert_checksums(inner);
    (p.dst_addr(), inner)
}

/// Sends `inner` from `b4` through its softwire; returns the verdict and, when forwarded, the
/// translated packet's bytes.
fn from_b4<A: PortAllocator>(
    e: &mut Engine<A>,
    now: Instant,
    b4: Ipv6Addr,
    inner: &Pkt,
) -> (Verdict, Vec<u8>) {
    let mut p = wrap(b4, inner);
    let v = e.process_softwire(now, &mut p.buf, p.len);
    let out = match v {
        Verdict::ForwardAt { start, len, .. } => p.buf[start..start + len].to_vec(),
        Verdict::Reply { len, .. } => p.buf[..len].to_vec(),
        _ => Vec::new(),
    };
    (v, out)
}

/// Sends `p` in from the outside (or from a plain subscriber, `side` inside).
fn plain(
    e: &mut Engine<DynamicAllocator>,
    now: Instant,
    side: Side,
    mut p: Pkt,
) -> (Verdict, Vec<u8>) {
    let v = e.process(now, side, &mut p.buf, p.len);
    let out = match v {
        Verdict::ForwardAt { start, len, .. } => p.buf[start..start + len].to_vec(),
        Verdict::Forward(_) => p.bytes().to_vec(),
        Verdict::Reply { len, .. } => p.buf[..len].to_vec(),
        _ => Vec::new(),
    };
    (v, out)
}

/// UDP out from `HOME:port` behind `b4` to the WAN; returns the external endpoint.
fn open(e: &mut Engine<DynamicAllocator>, b4: Ipv6Addr, port: u16) -> Endpoint {
    let (v, out) = from_b4(e, t(1), b4, &udp(ep(HOME, port), ep(WAN, 53), b"q"));
    assert!(
        matches!(
            v,
            Verdict::ForwardAt {
                side: Side::Outside,
                start: 40,
                ..
            }
        ),
        "{v:?}"
    );
    assert_checksums(&out);
    let (src, dst) = endpoints(&out);
    assert_eq!(dst, ep(WAN, 53));
    assert_eq!(src.addr, POOL);
    src
}

/// RFC 6333 section 6.6 (the extended binding table): two homes behind different B4s, both using 192.168.1.10:5000, get
/// two mappings; each reply returns to its own B4, from the AFTR, with valid checksums.
#[test]
fn rfc6333_two_homes_with_one_private_address_are_two_subscribers() {
    let mut e = engine();
    let xa = open(&mut e, B4A, 5000);
    let xb = open(&mut e, B4B, 5000);
    assert_ne!(xa, xb, "separate mappings");
    assert_eq!(e.mapping_count(), 2);
    // Operators see whose softwire each is behind.
    let mut seen: Vec<_> = e.sessions().map(|s| (s.external, s.softwire)).collect();
    seen.sort();
    let mut want = vec![(xa, Some(B4A)), (xb, Some(B4B))];
    want.sort();
    assert_eq!(seen, want);
    assert!(e.mappings().all(|m| m.softwire.is_some()));
    assert_eq!(e.softwire_count(), 2);
    for (x, b4) in [(xa, B4A), (xb, B4B)] {
        let (v, out) = plain(&mut e, t(2), Side::Outside, udp(ep(WAN, 53), x, b"answer"));
        assert_eq!(
            v,
            Verdict::ForwardAt {
                side: Side::Inside,
                start: 0,
                len: out.len()
            }
        );
        let (to, inner) = unwrap(&out);
        assert_eq!(to, b4);
        assert_eq!(endpoints(inner), (ep(WAN, 53), ep(HOME, 5000)));
    }
    // Established flows are found again under their softwire.
    let again = open(&mut e, B4A, 5000);
    assert_eq!(again, xa);
    assert_eq!(e.counters().forwarded_packets, [3, 2]);
}

/// RFC 6888 REQ-2 and REQ-4 with the softwire as the subscriber: each home gets port blocks
/// of its own, logged under its B4, and its block limit is its own.
#[test]
fn port_blocks_are_per_softwire_and_logged_under_the_b4() {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 256;
    c.limits.max_mappings = 256;
    c.allocation = Allocation::PortBlock(PortBlockSpec {
        block_size: 2,
        max_blocks_per_subscriber: 1,
    });
    c.ds_lite = Some(DsLite::new(
        AFTR,
        vec!["2001:db8:1::/48".parse().expect("prefix")],
    ));
    let cfg = c.validate().expect("valid");
    let alloc = ConfiguredAllocator::from_config(&cfg, Share::WHOLE).expect("allocator");
    let mut e = Engine::with_allocator(cfg, alloc, 7);
    let q = |port| udp(ep(HOME, port), ep(WAN, 53), b"q");
    let mut blocks = Vec::new();
    for b4 in [B4A, B4B] {
        let (v, out) = from_b4(&mut e, t(1), b4, &q(1));
        assert!(matches!(v, Verdict::ForwardAt { .. }), "{v:?}");
        blocks.push(endpoints(&out).0.port / 2);
        let (v, _) = from_b4(&mut e, t(1), b4, &q(2));
        assert!(matches!(v, Verdict::ForwardAt { .. }), "{v:?}");
        // The block holds two ports; the third flow of this home is over its limit.
        let (v, _) = from_b4(&mut e, t(1), b4, &q(3));
        assert_eq!(v.drop_reason(), Some(DropReason::SubscriberPortLimit));
    }
    assert_ne!(blocks[0], blocks[1], "a block each");
    let owners: Vec<_> = std::iter::from_fn(|| e.poll_event())
        .filter_map(|ev| match ev {
            crate::event::Event::PortBlockAllocated { subscriber, .. } => Some(subscriber),
            _ => None,
        })
        .collect();
    assert_eq!(owners.len(), 2);
    for (owner, b4) in owners.iter().zip([B4A, B4B]) {
        assert!(
            matches!(owner, SubscriberId::Softwire { b4: x, .. } if *x == b4),
            "{owner:?}"
        );
        assert_eq!(owner.to_string(), b4.to_string());
    }
}

/// Splits a UDP datagram of `Pkt` after its first 24 payload bytes of IPv4 into two fragments
/// with identification `ident`.
fn split(p: &Pkt, ident: u16) -> (Pkt, Pkt) {
    let (mut ip, rest) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    ip.identification = ident;
    ip.dont_fragment = false;
    let mut piece = |more: bool, offset: u16, data: &[u8]| {
        ip.more_fragments = more;
        ip.fragment_offset = etherparse::IpFragOffset::try_new(offset).expect("offset");
        ip.set_payload_len(data.len()).expect("len");
        ip.header_checksum = ip.calc_header_checksum();
        let mut v = Vec::new();
        ip.write(&mut v).expect("write");
        v.extend_from_slice(data);
        Pkt::new(&v)
    };
    (piece(true, 0, &rest[..24]), piece(false, 3, &rest[24..]))
}

/// Inner IPv4 fragments from two homes with the same addresses and identification are two
/// datagrams: each later fragment follows its own first one out, from its own external
/// address and port's address.
#[test]
fn inner_fragments_of_two_homes_stay_apart() {
    let mut e = engine();
    let q = udp(ep(HOME, 5000), ep(WAN, 53), &[1u8; 40]);
    let mut firsts = Vec::new();
    for b4 in [B4A, B4B] {
        let (first, _) = split(&q, 7);
        let (v, out) = from_b4(&mut e, t(1), b4, &first);
        assert!(
            matches!(
                v,
                Verdict::ForwardAt {
                    side: Side::Outside,
                    ..
                }
            ),
            "{v:?}"
        );
        firsts.push(out);
    }
    for (b4, first) in [B4A, B4B].into_iter().zip(&firsts) {
        let (_, later) = split(&q, 7);
        let (v, out) = from_b4(&mut e, t(1), b4, &later);
        assert!(
            matches!(
                v,
                Verdict::ForwardAt {
                    side: Side::Outside,
                    ..
                }
            ),
            "{v:?}"
        );
        assert_eq!(out[12..16], first[12..16], "the first fragment's source");
    }
    assert_eq!(e.counters().drops(DropReason::FragmentOverlap), 0);
}

/// The batch path's fast lane rewrites in place; a reply to a softwire must leave it and come
/// out encapsulated like one `process` handles.
#[test]
fn batched_replies_to_a_softwire_are_encapsulated() {
    let mut e = engine();
    let xa = open(&mut e, B4A, 5000);
    let mut a = udp(ep(WAN, 53), xa, b"one");
    let mut b = udp(ep(WAN, 53), xa, b"two");
    let mut packets = [
        crate::engine::PacketBuf {
            buf: &mut a.buf,
            len: a.len,
        },
        crate::engine::PacketBuf {
            buf: &mut b.buf,
            len: b.len,
        },
    ];
    let mut verdicts = [Verdict::Held; 2];
    e.process_batch(t(2), Side::Outside, &mut packets, &mut verdicts);
    for (v, p) in verdicts.iter().zip([&a, &b]) {
        let Verdict::ForwardAt { side, start, len } = *v else {
            panic!("{v:?}");
        };
        assert_eq!(side, Side::Inside);
        let (to, inner) = unwrap(&p.buf[start..start + len]);
        assert_eq!(to, B4A);
        assert_eq!(endpoints(inner).1, ep(HOME, 5000));
    }
}

#[test]
fn b4s_outside_acl6_and_wrong_packets_are_refused_and_counted() {
    let mut e = engine();
    let q = udp(ep(HOME, 5000), ep(WAN, 53), b"q");
    let cases: Vec<(Pkt, DropReason)> = vec![
        (wrap(STRANGER, &q), DropReason::SoftwireNotAllowed),
        (
            wrap(
                B4A,
                &udp(ep(Ipv4Addr::new(100, 64, 0, 9), 1), ep(WAN, 53), b"q"),
            ),
            DropReason::SoftwireSourceNotPrivate,
        ),
        (
            Pkt::new(&wrap(B4A, &q).bytes()[..39]),
            DropReason::Ipv6Malformed,
        ),
        (Pkt::new(q.bytes()), DropReason::Ipv6Malformed),
        (
            {
                let mut p = wrap(B4A, &q);
                p.buf[24..40].copy_from_slice(&STRANGER.octets());
                p
            },
            DropReason::NotAftrEndpoint,
        ),
        (
            {
                let mut p = wrap(B4A, &q);
                p.buf[6] = 17;
                p
            },
            DropReason::SoftwireNotIpv4,
        ),
        (
            {
                // A first fragment of a tunnel packet: a fragment header in front of the IPv4
                // packet, M=1.
                let mut v = wrap(B4A, &q).bytes().to_vec();
                v.splice(40..40, [next_header::IPV4, 0, 0, 1, 0, 0, 0, 9]);
                v[6] = next_header::FRAGMENT;
                let pl = (v.len() - 40) as u16;
                v[4..6].copy_from_slice(&pl.to_be_bytes());
                Pkt::new(&v)
            },
            DropReason::SoftwireFragment,
        ),
    ];
    for (mut p, reason) in cases {
        let before = e.counters().drops(reason);
        assert_eq!(
            e.process_softwire(t(1), &mut p.buf, p.len),
            Verdict::Drop(reason)
        );
        assert_eq!(e.counters().drops(reason), before + 1, "{reason:?}");
    }
    assert_eq!(e.session_count(), 0);
    assert_eq!(
        e.softwire_count(),
        0,
        "refused packets leave no softwire behind"
    );
}

/// The softwire table is counted where `limits.max-memory` looks, the same by the model and
/// on the built engine.
#[test]
fn the_softwire_table_is_in_the_memory_model() {
    let e = engine();
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 4096;
    c.limits.max_mappings = 4096;
    let plain = crate::engine::MemoryModel::of(&c).usage(4096, 4096);
    c.ds_lite = Some(DsLite::new(
        AFTR,
        vec!["2001:db8:1::/48".parse().expect("prefix")],
    ));
    let model = crate::engine::MemoryModel::of(&c).usage(4096, 4096);
    assert_eq!(model.subscribers, e.memory_usage().subscribers);
    assert!(
        model.subscribers >= plain.subscribers + 65_536 * 64,
        "{model}"
    );
}

#[test]
fn without_ds_lite_softwire_packets_are_dropped() {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 64;
    c.limits.max_mappings = 64;
    let mut e = Engine::new(c.validate().expect("valid"), 1);
    let mut p = wrap(B4A, &udp(ep(HOME, 5000), ep(WAN, 53), b"q"));
    assert_eq!(
        e.process_softwire(t(1), &mut p.buf, p.len),
        Verdict::Drop(DropReason::DsLiteOff)
    );
}

#[test]
fn configured_softwires_work_with_auto_off() {
    let mut e = engine_with(|d| {
        d.auto = false;
        d.softwires = vec![SoftwireSpec {
            b4: STRANGER,
            mtu: None,
            limits: None,
        }];
    });
    let q = udp(ep(HOME, 5000), ep(WAN, 53), b"q");
    assert_eq!(
        from_b4(&mut e, t(1), B4A, &q).0,
        Verdict::Drop(DropReason::SoftwireNotAllowed)
    );
    assert!(matches!(
        from_b4(&mut e, t(1), STRANGER, &q).0,
        Verdict::ForwardAt {
            side: Side::Outside,
            ..
        }
    ));
}

/// An operator ends one home's sessions, or one session of it, by its B4; the other home with
/// the same private address, and a plain subscriber, keep theirs.
#[test]
fn operators_end_a_softwire_s_sessions_by_its_b4() {
    let mut e = engine();
    open(&mut e, B4A, 5000);
    open(&mut e, B4A, 5001);
    open(&mut e, B4B, 5000);
    let (v, _) = plain(
        &mut e,
        t(1),
        Side::Inside,
        udp(ep(PLAIN, 5000), ep(WAN, 53), b"q"),
    );
    assert!(matches!(v, Verdict::Forward(Side::Outside)));
    assert_eq!(
        e.flush_subscriber(HOME, t(2)).sessions,
        0,
        "a softwire's private address is not a plain subscriber"
    );
    let one = e.delete_softwire_session(B4A, Protocol::Udp, ep(HOME, 5001), ep(WAN, 53), t(2));
    assert_eq!(one.map(|x| x.sessions), Ok(1));
    assert!(
        e.delete_softwire_session(STRANGER, Protocol::Udp, ep(HOME, 5000), ep(WAN, 53), t(2))
            .is_err()
    );
    assert_eq!(e.flush_softwire(B4A, t(2)).sessions, 1);
    assert_eq!(
        e.softwire_count(),
        1,
        "B4A's automatic softwire went with its sessions"
    );
    let left: Vec<_> = e.sessions().map(|s| s.softwire).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&Some(B4B)) && left.contains(&None));
}

/// `q` from B4A is refused for `reason` and answered as RFC 6888 REQ-11 asks (host
/// unreachable by default), through the softwire to the B4's host.
fn refused(e: &mut Engine<DynamicAllocator>, now: Instant, q: &Pkt, reason: DropReason) {
    let (v, out) = from_b4(e, now, B4A, q);
    assert!(
        matches!(v, Verdict::Reply { side: Side::Inside, reason: r, .. } if r == reason),
        "{v:?}"
    );
    let (to, inner) = unwrap(&out);
    assert_eq!(to, B4A);
    let (ip, rest) = Ipv4Header::from_slice(inner).expect("ipv4");
    assert_eq!(ip.destination, HOME.octets());
    let (icmp, _) = etherparse::Icmpv4Header::from_slice(rest).expect("icmp");
    assert_eq!(
        icmp.icmp_type,
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Host
        )
    );
}

/// ISC AFTR's per-tunnel UDP quota is 200 sessions; with it lowered to 3 the fourth flow of
/// one softwire is refused while another softwire opens its own.
#[test]
fn per_softwire_session_limit_at_its_edge() {
    let mut e = engine_with(|d| {
        d.limits = SoftwireLimits {
            max_udp_sessions: 3,
            udp_rate: 0,
            ..SoftwireLimits::default()
        };
    });
    for port in 1..=3 {
        open(&mut e, B4A, port);
    }
    let q = udp(ep(HOME, 4), ep(WAN, 53), b"q");
    refused(&mut e, t(1), &q, DropReason::SoftwireSessionLimit);
    open(&mut e, B4B, 4);
    assert_eq!(e.counters().drops(DropReason::SoftwireSessionLimit), 1);
    // When a session ends, the softwire has room again; its last takes it away.
    e.handle_timeout(t(10_000));
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.softwire_count(), 0);
}

/// ISC AFTR's default UDP creation rate is 20 per second per softwire.
#[test]
fn per_softwire_rate_at_its_edge() {
    let mut e = engine();
    for port in 1..=20 {
        open(&mut e, B4A, port);
    }
    let q = udp(ep(HOME, 21), ep(WAN, 53), b"q");
    refused(&mut e, t(1), &q, DropReason::SoftwireRateLimit);
    open(&mut e, B4B, 21);
    // A second later the bucket is full again.
    let (v, _) = from_b4(&mut e, t(2), B4A, &q);
    assert!(matches!(v, Verdict::ForwardAt { .. }), "{v:?}");
}

/// A SYN with MSS 1460 to or from a softwire of MTU 1400 leaves with MSS 1360 and a valid
/// checksum (RFC 6333 section 5.3).
#[test]
fn mss_is_clamped_to_the_softwire_mtu_both_ways() {
    let mut e = engine_with(|d| d.mtu = 1400);
    let syn = syn_with_mss(ep(HOME, 40000), ep(WAN, 80), false);
    let (v, out) = from_b4(&mut e, t(1), B4A, &syn);
    assert!(matches!(
        v,
        Verdict::ForwardAt {
            side: Side::Outside,
            ..
        }
    ));
    assert_checksums(&out);
    assert_eq!(mss_of(&out), Some(1360));
    let x = endpoints(&out).0;
    let (_, back) = plain(
        &mut e,
        t(1),
        Side::Outside,
        syn_with_mss(ep(WAN, 80), x, true),
    );
    let (_, inner) = unwrap(&back);
    assert_eq!(mss_of(inner), Some(1360));
    // With `mss = false` the option passes untouched.
    let mut e = engine_with(|d| {
        d.mtu = 1400;
        d.mss = false;
    });
    let (_, out) = from_b4(&mut e, t(1), B4A, &syn);
    assert_eq!(mss_of(&out), Some(1460));
}

fn syn_with_mss(src: Endpoint, dst: Endpoint, ack: bool) -> Pkt {
    let mut b = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64)
        .tcp(src.port, dst.port, 1000, 65535)
        .syn();
    if ack {
        b = b.ack(1001);
    }
    let b = b
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
        .expect("options");
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    Pkt::new(&v)
}

fn mss_of(ipv4: &[u8]) -> Option<u16> {
    let (_, rest) = Ipv4Header::from_slice(ipv4).expect("ipv4");
    let (tcp, _) = TcpHeader::from_slice(rest).expect("tcp");
    tcp.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    })
}

/// A 1480-byte datagram to a softwire of MTU 1400 under `fragment-ipv6` leaves as two IPv6
/// fragments to the B4 (through `poll_transmit`) that put back together are the tunnel packet.
#[test]
fn too_big_fragment_ipv6_fragments_the_tunnel_packet() {
    for equal in [false, true] {
        let mut e = engine_with(|d| {
            d.mtu = 1400;
            d.equal_fragments = equal;
        });
        let x = open(&mut e, B4A, 5000);
        let big = udp(ep(WAN, 53), x, &[7u8; 1452]);
        assert_eq!(big.len, 1480);
        assert_eq!(plain(&mut e, t(2), Side::Outside, big).0, Verdict::Held);
        let mut payload = Vec::new();
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while let Some(tx) = e.poll_transmit(&mut buf) {
            assert_eq!(tx.side, Side::Inside);
            assert!(tx.len <= 1440, "fits the IPv6 path MTU of 1440");
            // `decapsulate` reads packets from a B4: its `b4` is the source.
            let (o, c) = tunnel::decapsulate(&buf[..tx.len]).expect("ipv6");
            assert_eq!((o.b4, o.aftr), (AFTR, B4A));
            let Carried::Fragment {
                header, start, len, ..
            } = c
            else {
                panic!("{c:?}");
            };
            assert_eq!(usize::from(header.offset), payload.len());
            payload.extend_from_slice(&buf[start..start + len]);
            n += 1;
        }
        assert_eq!(n, 2);
        assert_eq!(payload.len(), 1480);
        assert_checksums(&payload);
        assert_eq!(endpoints(&payload), (ep(WAN, 53), ep(HOME, 5000)));
        assert_eq!(e.counters().softwire_fragmented, 1);
    }
}

/// Under `icmp` and `strict` a too-big datagram with DF is answered with fragmentation needed
/// carrying the softwire MTU, quoting the packet as its sender sent it; under `strict` one
/// without DF is dropped.
#[test]
fn too_big_icmp_and_strict_answer_fragmentation_needed() {
    for policy in [TooBig::Icmp, TooBig::Strict] {
        let mut e = engine_with(|d| {
            d.mtu = 1400;
            d.too_big = policy;
        });
        let x = open(&mut e, B4A, 5000);
        let big = udp(ep(WAN, 53), x, &[7u8; 1452]);
        let (v, out) = plain(&mut e, t(2), Side::Outside, big);
        assert!(
            matches!(
                v,
                Verdict::Reply {
                    side: Side::Outside,
                    reason: DropReason::TooBig,
                    ..
                }
            ),
            "{policy:?}: {v:?}"
        );
        let (ip, rest) = Ipv4Header::from_slice(&out).expect("ipv4");
        assert_eq!((ip.source, ip.destination), (POOL.octets(), WAN.octets()));
        let (icmp, _) = etherparse::Icmpv4Header::from_slice(rest).expect("icmp");
        assert_eq!(
            icmp.icmp_type,
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400
                }
            )
        );
        let mut no_df = udp(ep(WAN, 53), x, &[7u8; 1452]);
        clear_df(&mut no_df);
        let (v, _) = plain(&mut e, t(2), Side::Outside, no_df);
        match policy {
            TooBig::Strict => assert_eq!(v, Verdict::Drop(DropReason::TooBig)),
            _ => assert_eq!(v, Verdict::Held, "icmp without DF fragments"),
        }
    }
}

fn clear_df(p: &mut Pkt) {
    let (mut ip, _) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = Vec::new();
    ip.write(&mut v).expect("write");
    p.buf[..20].copy_from_slice(&v);
}

/// ICMPv6 packet too big about a packet the AFTR sent to a B4 lowers that softwire's MTU
/// (RFC 6333 section 5.3): the next too-big datagram is cut to the new size.
#[test]
fn packet_too_big_lowers_the_softwire_mtu() {
    let mut e = engine();
    let x = open(&mut e, B4A, 5000);
    let (_, tunnel_pkt) = plain(&mut e, t(2), Side::Outside, udp(ep(WAN, 53), x, b"a"));
    let router = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
    let mut msg = [0u8; 1232];
    let n = icmpv6::write_packet_too_big(&mut msg, router, AFTR, 1300, &tunnel_pkt);
    let mut v = vec![0u8; 40];
    ipv6::write_header(
        &mut v,
        &Ipv6Repr {
            src: router,
            dst: AFTR,
            next_header: next_header::ICMPV6,
            hop_limit: 64,
            traffic_class: 0,
            payload_len: n as u16,
        },
    );
    v.extend_from_slice(&msg[..n]);
    let mut p = Pkt::new(&v);
    assert_eq!(
        e.process_softwire(t(3), &mut p.buf, p.len),
        Verdict::Drop(DropReason::Icmpv6ToAftr)
    );
    assert_eq!(e.counters().softwire_mtu_lowered, 1);
    let sw: Vec<_> = e.softwires().collect();
    assert_eq!((sw[0].b4, sw[0].mtu), (B4A, 1260));
    // A corrupted one is not believed.
    let mut bad = Pkt::new(&v);
    bad.buf[45] ^= 1;
    assert_eq!(
        e.process_softwire(t(3), &mut bad.buf, bad.len),
        Verdict::Drop(DropReason::IcmpBadChecksum)
    );
}

/// RFC 4787 REQ-9 between two softwires: B sees A's external endpoint as the source, in an
/// IPv6 packet to B's B4.
#[test]
fn hairpin_between_two_softwires() {
    let mut e = engine();
    let xa = open(&mut e, B4A, 5000);
    let xb = open(&mut e, B4B, 6000);
    let (v, out) = from_b4(&mut e, t(2), B4A, &udp(ep(HOME, 5000), xb, b"hi"));
    assert!(
        matches!(
            v,
            Verdict::ForwardAt {
                side: Side::Inside,
                ..
            }
        ),
        "{v:?}"
    );
    let (to, inner) = unwrap(&out);
    assert_eq!(to, B4B);
    assert_eq!(endpoints(inner), (xa, ep(HOME, 6000)));
    assert_eq!(e.counters().hairpinned_packets, 1);
}

/// Between a softwire and a plain IPv4 subscriber, both ways, with external sources.
#[test]
fn hairpin_between_a_softwire_and_a_plain_subscriber() {
    let mut e = engine();
    let xa = open(&mut e, B4A, 5000);
    let (_, out) = plain(
        &mut e,
        t(1),
        Side::Inside,
        udp(ep(PLAIN, 7000), ep(WAN, 53), b"q"),
    );
    let xp = endpoints(&out).0;
    // Softwire to plain: IPv4 on the inside.
    let (v, out) = from_b4(&mut e, t(2), B4A, &udp(ep(HOME, 5000), xp, b"hi"));
    assert!(
        matches!(
            v,
            Verdict::ForwardAt {
                side: Side::Inside,
                start: 40,
                ..
            }
        ),
        "{v:?}"
    );
    assert_checksums(&out);
    assert_eq!(endpoints(&out), (xa, ep(PLAIN, 7000)));
    // Plain to softwire: IPv6 to the B4.
    let (v, out) = plain(&mut e, t(2), Side::Inside, udp(ep(PLAIN, 7000), xa, b"yo"));
    assert!(
        matches!(
            v,
            Verdict::ForwardAt {
                side: Side::Inside,
                start: 0,
                ..
            }
        ),
        "{v:?}"
    );
    let (to, inner) = unwrap(&out);
    assert_eq!(to, B4A);
    assert_eq!(endpoints(inner), (xp, ep(HOME, 5000)));
}

/// An ICMP error from the Internet about a softwire's flow reaches the B4's host, in the
/// softwire (RFC 5508 REQ-4 with the softwire as the subscriber).
#[test]
fn icmp_errors_about_a_softwire_flow_go_to_its_b4() {
    let mut e = engine();
    let x = open(&mut e, B4A, 5000);
    // What the WAN host received, quoted back in a port unreachable.
    let sent = udp(x, ep(WAN, 53), b"q");
    let b = PacketBuilder::ipv4(WAN.octets(), POOL.octets(), 64).icmpv4(
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ),
    );
    let mut v = Vec::new();
    b.write(&mut v, sent.bytes()).expect("build");
    let (verdict, out) = plain(&mut e, t(2), Side::Outside, Pkt::new(&v));
    assert!(
        matches!(
            verdict,
            Verdict::ForwardAt {
                side: Side::Inside,
                ..
            }
        ),
        "{verdict:?}"
    );
    let (to, inner) = unwrap(&out);
    assert_eq!(to, B4A);
    let (ip, _) = Ipv4Header::from_slice(inner).expect("ipv4");
    assert_eq!(ip.destination, HOME.octets());
}

/// A packet the B4's host sent that the engine answers (here: TTL expiring at the AFTR) comes
/// back to the B4 in the softwire.
#[test]
fn answers_to_a_softwire_host_go_back_through_the_softwire() {
    let mut e = engine();
    let mut q = udp(ep(HOME, 5000), ep(WAN, 53), b"q");
    let (mut ip, _) = Ipv4Header::from_slice(q.bytes()).expect("ipv4");
    ip.time_to_live = 1;
    ip.header_checksum = ip.calc_header_checksum();
    let mut h = Vec::new();
    ip.write(&mut h).expect("write");
    q.buf[..20].copy_from_slice(&h);
    let (v, out) = from_b4(&mut e, t(1), B4A, &q);
    assert!(
        matches!(
            v,
            Verdict::Reply {
                side: Side::Inside,
                reason: DropReason::TtlExceeded,
                ..
            }
        ),
        "{v:?}"
    );
    let (to, inner) = unwrap(&out);
    assert_eq!(to, B4A);
    let (ip, _) = Ipv4Header::from_slice(inner).expect("ipv4");
    assert_eq!(ip.destination, HOME.octets());
}

proptest::proptest! {
    /// Any B4 of the prefix, inner port and protocol: the reply to a translated softwire
    /// packet goes back to the same B4 and the same inner endpoint, with valid checksums.
    #[test]
    fn a_reply_returns_to_the_b4_that_sent(
        b4s in proptest::collection::vec(proptest::num::u16::ANY, 1..6),
        port in 1u16..,
        tcp_flow: bool,
    ) {
        let mut e = engine_with(|d| d.limits = SoftwireLimits {
            tcp_rate: 0, udp_rate: 0, icmp_rate: 0, ..SoftwireLimits::default()
        });
        let mut seen = Vec::new();
        for (i, last) in b4s.iter().enumerate() {
            let b4 = Ipv6Addr::new(0x2001, 0xdb8, 1, *last, 0, 0, 0, 2);
            let inner = if tcp_flow {
                tcp(ep(HOME, port), ep(WAN, 80), "S")
            } else {
                udp(ep(HOME, port), ep(WAN, 53), b"q")
            };
            let (v, out) = from_b4(&mut e, t(i as u64), b4, &inner);
            if seen.contains(&b4) {
                continue;
            }
            proptest::prop_assert!(matches!(v, Verdict::ForwardAt { side: Side::Outside, .. }), "{:?}", v);
            assert_checksums(&out);
            let (x, remote) = endpoints(&out);
            let answer = if tcp_flow { tcp(remote, x, "SA") } else { udp(remote, x, b"a") };
            let (v, back) = plain(&mut e, t(i as u64), Side::Outside, answer);
            proptest::prop_assert!(matches!(v, Verdict::ForwardAt { side: Side::Inside, .. }), "{:?}", v);
            let (to, inner) = unwrap(&back);
            proptest::prop_assert_eq!(to, b4);
            proptest::prop_assert_eq!(endpoints(inner), (remote, ep(HOME, port)));
            seen.push(b4);
        }
    }
}
