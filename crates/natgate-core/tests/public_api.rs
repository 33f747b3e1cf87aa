//! A short, realistic day of a carrier-grade NAT driven through the public API only: two
//! subscribers, an RFC 5780 behaviour-discovery exchange with a two-address STUN server, a TCP
//! connection opened and closed, a ping and a traceroute. Counters and events are asserted
//! exactly; packets are built and checked with `etherparse`, an independent implementation.

#![allow(clippy::expect_used)] // helpers outside #[test] functions build known-good packets

use etherparse::{Icmpv4Header, Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
use natgate_core::config::{FilteringBehavior, MappingBehavior, Preset};
use natgate_core::engine::Engine;
use natgate_core::tcp_state::TcpPhase;
use natgate_core::{
    Config, DropReason, Endpoint, Event, Instant, Protocol, SessionOrigin, Side, Verdict,
};
use std::net::Ipv4Addr;

const POOL: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ALICE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const BOB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
/// The STUN server's primary and alternate addresses (RFC 5780 section 3).
const STUN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const STUN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

fn ep(addr: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::new(addr, port)
}

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

fn engine(behavior: Preset) -> Engine {
    let mut c = Config::new(POOL.to_vec(), INSIDE);
    c.behavior = behavior.behavior();
    c.lab = true;
    c.limits.max_sessions = 256;
    c.limits.max_mappings = 256;
    Engine::new(c.validate().expect("valid config"), 42)
}

fn udp(src: Endpoint, dst: Endpoint, ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), ttl)
        .udp(src.port, dst.port)
        .write(&mut v, b"binding request")
        .expect("udp");
    v
}

fn tcp(src: Endpoint, dst: Endpoint, flags: &str) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64)
        .tcp(src.port, dst.port, 1, 65535);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            _ => b,
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("tcp");
    v
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, request: bool) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").expect("echo");
    v
}

/// Every checksum of a whole packet, recomputed by etherparse.
fn assert_checksums(bytes: &[u8]) {
    let (ip, rest) = Ipv4Header::from_slice(bytes).expect("ipv4");
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let l4 = &rest[..usize::from(ip.total_len) - ip.header_len()];
    match ip.protocol.0 {
        17 => {
            let (h, p) = UdpHeader::from_slice(l4).expect("udp");
            let want = h.calc_checksum_ipv4_raw(ip.source, ip.destination, p);
            assert_eq!(h.checksum, want.expect("udp sum"));
        }
        6 => {
            let (h, p) = TcpHeader::from_slice(l4).expect("tcp");
            let want = h.calc_checksum_ipv4_raw(ip.source, ip.destination, p);
            assert_eq!(h.checksum, want.expect("tcp sum"));
        }
        _ => {
            let (h, p) = Icmpv4Header::from_slice(l4).expect("icmp");
            assert_eq!(h.checksum, h.icmp_type.calc_checksum(p));
        }
    }
}

/// Source and destination of a UDP/TCP packet (for ICMP, the identifier as both ports).
fn endpoints(bytes: &[u8]) -> (Endpoint, Endpoint) {
    let (ip, l4) = Ipv4Header::from_slice(bytes).expect("ipv4");
    let (sp, dp) = if ip.protocol.0 == 1 {
        let id = u16::from_be_bytes([l4[4], l4[5]]);
        (id, id)
    } else {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    };
    (ep(ip.source.into(), sp), ep(ip.destination.into(), dp))
}

/// A driver's view: a buffer with room, the verdict, the packet that leaves.
struct Driver {
    e: Engine,
}

impl Driver {
    fn send(&mut self, now: Instant, side: Side, packet: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; 2048];
        buf[..packet.len()].copy_from_slice(packet);
        let v = self.e.process(now, side, &mut buf, packet.len());
        let len = match v {
            Verdict::Reply { len, .. } => len,
            _ => packet.len(),
        };
        buf.truncate(len);
        if matches!(v, Verdict::Forward(_) | Verdict::Reply { .. }) {
            assert_checksums(&buf);
        }
        (v, buf)
    }

    /// An outbound packet that must leave; returns it as sent.
    fn out(&mut self, now: Instant, packet: &[u8]) -> Vec<u8> {
        let (v, p) = self.send(now, Side::Inside, packet);
        assert_eq!(v, Verdict::Forward(Side::Outside));
        p
    }

    /// An inbound packet; `Some(packet as delivered)` if it got in.
    fn inb(&mut self, now: Instant, packet: &[u8]) -> Option<Vec<u8>> {
        let (v, p) = self.send(now, Side::Outside, packet);
        match v {
            Verdict::Forward(Side::Inside) => Some(p),
            Verdict::Drop(DropReason::Filtered | DropReason::NoMapping) => None,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// RFC 5780 section 4.3 and 4.4, as a client would run them, from one internal endpoint for
/// the mapping tests and a fresh one for the filtering tests. Returns the classification.
fn discover(
    d: &mut Driver,
    now: Instant,
    mapping_port: u16,
    filtering_port: u16,
) -> (&'static str, &'static str) {
    let me = ep(ALICE, mapping_port);
    // Test I: to the primary address; the server answers with the mapped address it saw.
    let x1 = endpoints(&d.out(now, &udp(me, ep(STUN1, 3478), 64))).0;
    assert!(d.inb(now, &udp(ep(STUN1, 3478), x1, 64)).is_some());
    // Test II: to the alternate address, primary port.
    let x2 = endpoints(&d.out(now, &udp(me, ep(STUN2, 3478), 64))).0;
    assert!(d.inb(now, &udp(ep(STUN2, 3478), x2, 64)).is_some());
    // Test III: to the alternate address and port.
    let x3 = endpoints(&d.out(now, &udp(me, ep(STUN2, 3479), 64))).0;
    assert!(d.inb(now, &udp(ep(STUN2, 3479), x3, 64)).is_some());
    let mapping = if x1 == x2 {
        "endpoint-independent"
    } else if x2 == x3 {
        "address-dependent"
    } else {
        "address-and-port-dependent"
    };
    let me = ep(ALICE, filtering_port);
    // Test I again from a fresh endpoint, then the server answers from elsewhere:
    // Test II from the alternate address and port, Test III from the primary address,
    // alternate port.
    let y = endpoints(&d.out(now, &udp(me, ep(STUN1, 3478), 64))).0;
    let filtering = if d.inb(now, &udp(ep(STUN2, 3479), y, 64)).is_some() {
        "endpoint-independent"
    } else if d.inb(now, &udp(ep(STUN1, 3479), y, 64)).is_some() {
        "address-dependent"
    } else {
        "address-and-port-dependent"
    };
    (mapping, filtering)
}

#[test]
fn rfc5780_discovery_sees_the_configured_behaviour() {
    for preset in Preset::ALL {
        let b = preset.behavior();
        let mut d = Driver { e: engine(preset) };
        let (mapping, filtering) = discover(&mut d, t(1), 5000, 5001);
        // Port overlapping (RFC 7857 section 3) gives a connection-keyed mapping the internal
        // port for every remote, so discovery sees one external endpoint: what it sees of
        // Linux's MASQUERADE too.
        let want_mapping = match b.mapping {
            _ if b.port_overlapping => "endpoint-independent",
            MappingBehavior::EndpointIndependent => "endpoint-independent",
            MappingBehavior::AddressDependent => "address-dependent",
            MappingBehavior::AddressAndPortDependent => "address-and-port-dependent",
        };
        let want_filtering = match b.filtering {
            FilteringBehavior::EndpointIndependent => "endpoint-independent",
            FilteringBehavior::AddressDependent => "address-dependent",
            FilteringBehavior::AddressAndPortDependent => "address-and-port-dependent",
        };
        assert_eq!(
            (mapping, filtering),
            (want_mapping, want_filtering),
            "{preset:?}"
        );
    }
}

#[test]
fn a_day_at_the_cgn_counted_and_logged_exactly() {
    let mut d = Driver {
        e: engine(Preset::Rfc6888Cgn),
    };

    // Alice runs behaviour discovery: the default CGN is EIM and EIF (RFC 4787 REQ-1, REQ-8).
    assert_eq!(
        discover(&mut d, t(1), 5000, 5001),
        ("endpoint-independent", "endpoint-independent")
    );
    let x = endpoints(&d.out(t(2), &udp(ep(ALICE, 5000), ep(STUN1, 3478), 64))).0;
    let y = endpoints(&d.out(t(2), &udp(ep(ALICE, 5001), ep(STUN1, 3478), 64))).0;

    // Bob opens and closes a TCP connection.
    let b = ep(BOB, 40000);
    let z = endpoints(&d.out(t(10), &tcp(b, ep(WEB, 80), "S"))).0;
    assert_eq!(
        d.inb(t(10), &tcp(ep(WEB, 80), z, "SA"))
            .map(|p| endpoints(&p).1),
        Some(b)
    );
    d.out(t(10), &tcp(b, ep(WEB, 80), "A"));
    let phase = |d: &Driver| {
        d.e.sessions()
            .find(|s| s.proto == Protocol::Tcp)
            .and_then(|s| s.tcp)
    };
    assert_eq!(phase(&d), Some(TcpPhase::Established));
    d.out(t(11), &tcp(b, ep(WEB, 80), "FA"));
    assert!(d.inb(t(11), &tcp(ep(WEB, 80), z, "FA")).is_some());
    d.out(t(11), &tcp(b, ep(WEB, 80), "A"));
    assert_eq!(phase(&d), Some(TcpPhase::Closing));

    // Alice pings; the reply comes back with her identifier (RFC 5508 REQ-1).
    let w = endpoints(&d.out(t(20), &echo(ALICE, STUN2, 0x1234, true))).0;
    let reply = d
        .inb(t(20), &echo(STUN2, w.addr, w.port, false))
        .expect("echo reply in");
    assert_eq!(endpoints(&reply).1, ep(ALICE, 0x1234));

    // Alice runs traceroute: the first probe expires at the NAT itself (RFC 5508 REQ-10),
    // the second at a router outside, whose error is translated back (RFC 5508 REQ-4).
    let probe = ep(ALICE, 33434);
    let (v, answer) = d.send(t(30), Side::Inside, &udp(probe, ep(WEB, 33434), 1));
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
    let (ip, l4) = Ipv4Header::from_slice(&answer).expect("ipv4");
    assert_eq!(
        (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination)),
        (INSIDE, ALICE)
    );
    assert_eq!((l4[0], l4[1]), (11, 0));
    let sent = d.out(t(30), &udp(probe, ep(WEB, 33434), 2));
    assert_eq!(sent[8], 1, "TTL decremented");
    let v_ext = endpoints(&sent).0;
    let mut err = Vec::new();
    PacketBuilder::ipv4(ROUTER.octets(), v_ext.addr.octets(), 64)
        .icmpv4_raw(11, 0, [0; 4])
        .write(&mut err, &sent[..28])
        .expect("time exceeded");
    let delivered = d.inb(t(30), &err).expect("time exceeded in");
    let (ip, l4) = Ipv4Header::from_slice(&delivered).expect("ipv4");
    assert_eq!(
        (Ipv4Addr::from(ip.source), Ipv4Addr::from(ip.destination)),
        (ROUTER, ALICE)
    );
    assert_eq!(
        endpoints(&l4[8..]).0,
        probe,
        "the quoted probe is Alice's again"
    );

    // RFC 4787 REQ-2: paired pooling puts all of Alice's mappings on one address.
    assert!([y.addr, w.addr, v_ext.addr].iter().all(|a| *a == x.addr));
    assert!(POOL.contains(&x.addr) && POOL.contains(&z.addr));

    // Exact counters: 3 + 1 discovery tests, 2 more binding requests, 3 TCP segments out and 2
    // in, a ping, a probe; 3 + 2 discovery answers (EIF lets the alternate server in), 1 error.
    let c = d.e.counters();
    assert_eq!(
        c.forwarded_packets,
        [3 + 1 + 2 + 4 + 1 + 1, 3 + 1 + 2 + 1 + 1]
    );
    assert_eq!(c.total_drops(), 1);
    assert_eq!(c.drops(DropReason::TtlExceeded), 1);
    assert_eq!(c.icmp_generated, 1);
    assert_eq!(c.hairpinned_packets, 0);
    // Mappings: Alice's two STUN sockets, her ping, her probe, Bob's TCP socket.
    assert_eq!(c.mappings_created, 5);
    // Sessions: the 3 mapping tests, the second socket's Test I and the answer from the
    // alternate server that EIF let in, the TCP connection, the ping and the probe.
    assert_eq!(c.sessions_created, 3 + 2 + 1 + 1 + 1);
    assert_eq!((c.sessions_deleted, c.mappings_deleted), (0, 0));

    // Exact events, in order, before anything expires.
    let events: Vec<Event> = std::iter::from_fn(|| d.e.poll_event()).collect();
    let udp_p = Protocol::Udp;
    let mapped = |at, proto, internal, external| Event::MappingCreated {
        at: t(at),
        proto,
        internal,
        external,
    };
    let session = |at, proto, internal, external, remote| Event::SessionCreated {
        at: t(at),
        proto,
        internal,
        external,
        remote,
        origin: SessionOrigin::Dynamic,
    };
    let a0 = ep(ALICE, 5000);
    let a1 = ep(ALICE, 5001);
    let want = vec![
        mapped(1, udp_p, a0, x),
        session(1, udp_p, a0, x, ep(STUN1, 3478)),
        session(1, udp_p, a0, x, ep(STUN2, 3478)),
        session(1, udp_p, a0, x, ep(STUN2, 3479)),
        mapped(1, udp_p, a1, y),
        session(1, udp_p, a1, y, ep(STUN1, 3478)),
        session(1, udp_p, a1, y, ep(STUN2, 3479)),
        mapped(10, Protocol::Tcp, b, z),
        session(10, Protocol::Tcp, b, z, ep(WEB, 80)),
        mapped(20, Protocol::Icmp, ep(ALICE, 0x1234), w),
        session(20, Protocol::Icmp, ep(ALICE, 0x1234), w, ep(STUN2, 0)),
        mapped(30, udp_p, probe, v_ext),
        session(30, udp_p, probe, v_ext, ep(WEB, 33434)),
    ];
    assert_eq!(events, want);

    // Everything expires in time (UDP 300 s, ICMP 60 s, closed TCP 240 s), each session with
    // its own event and each mapping after its last session.
    let mut now = 30;
    while let Some(next) = d.e.next_timeout() {
        now = next.as_millis() / 1000;
        d.e.handle_timeout(next);
    }
    assert!(now <= 30 + 300 + 1 + 240, "all gone by {now} s");
    assert_eq!((d.e.session_count(), d.e.mapping_count()), (0, 0));
    let c = d.e.counters().clone();
    assert_eq!((c.sessions_deleted, c.mappings_deleted), (8, 5));
    let gone: Vec<Event> = std::iter::from_fn(|| d.e.poll_event()).collect();
    assert_eq!(gone.len(), 8 + 5);
    for (i, ev) in gone.iter().enumerate() {
        if let Event::MappingDeleted {
            internal, external, ..
        } = ev
        {
            let later = gone[i..].iter().any(|e| match e {
                Event::SessionDeleted {
                    internal: si,
                    external: se,
                    ..
                } => si == internal && se == external,
                _ => false,
            });
            assert!(!later, "mapping {external} deleted before its last session");
        }
    }
    assert_eq!(c.events_lost, 0);
}
