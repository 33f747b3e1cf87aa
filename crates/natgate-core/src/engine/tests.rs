//! Behaviour tests of the engine, one or more per requirement of RFC 4787, 5382, 5508, 6888 and
//! 7857, named after it. Packets are built and checked with `etherparse`, an independent
//! implementation, so a checksum the engine gets wrong cannot be "confirmed" by our own code.

use super::*;
use crate::config::{
    Config, FilteringBehavior, Hairpinning, MappingBehavior, MappingFailureReply, Preset, Refresh,
    TtlHandling, UnsolicitedSyn,
};
use etherparse::{Icmpv4Header, IpFragOffset, Ipv4Header, PacketBuilder, TcpHeader, UdpHeader};
use std::net::Ipv4Addr;

const POOL: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
const WAN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN1B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

pub(crate) fn ep(addr: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::new(addr, port)
}

pub(super) fn config(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::new(POOL.to_vec(), INSIDE);
    c.limits.max_sessions = 1024;
    c.limits.max_mappings = 1024;
    f(&mut c);
    c
}

fn engine_with(f: impl FnOnce(&mut Config)) -> Engine {
    Engine::new(config(f).validate().expect("valid test config"), 7)
}

fn engine() -> Engine {
    engine_with(|_| {})
}

fn lab(behavior: Behavior) -> Engine {
    engine_with(|c| {
        c.behavior = behavior;
        c.lab = true;
    })
}

/// A packet in a buffer with room to spare, as a driver would hand it over.
#[derive(Clone)]
pub(crate) struct Pkt {
    pub buf: Vec<u8>,
    pub len: usize,
}

impl Pkt {
    pub fn new(bytes: &[u8]) -> Pkt {
        let mut buf = vec![0u8; 2048.max(bytes.len())];
        buf[..bytes.len()].copy_from_slice(bytes);
        Pkt {
            buf,
            len: bytes.len(),
        }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

pub(crate) fn udp(src: Endpoint, dst: Endpoint, payload: &[u8]) -> Pkt {
    let b = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64).udp(src.port, dst.port);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("build udp");
    Pkt::new(&v)
}

pub(crate) fn tcp(src: Endpoint, dst: Endpoint, flags: &str) -> Pkt {
    let mut b = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64)
        .tcp(src.port, dst.port, 1000, 65535);
    for f in flags.chars() {
        b = match f {
            'S' => b.syn(),
            'A' => b.ack(1),
            'F' => b.fin(),
            'R' => b.rst(),
            _ => b,
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build tcp");
    Pkt::new(&v)
}

pub(crate) fn echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, request: bool) -> Pkt {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64);
    let b = if request {
        b.icmpv4_echo_request(id, 1)
    } else {
        b.icmpv4_echo_reply(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").expect("build echo");
    Pkt::new(&v)
}

/// An ICMP error from `from` to `to` quoting `quoted` (cut to IP header + 8 bytes + 4 more).
pub(super) fn icmp_error(
    from: Ipv4Addr,
    to: Ipv4Addr,
    msg_type: u8,
    code: u8,
    quoted: &[u8],
) -> Pkt {
    let cut = quoted.len().min(40);
    let b = PacketBuilder::ipv4(from.octets(), to.octets(), 64).icmpv4_raw(msg_type, code, [0; 4]);
    let mut v = Vec::new();
    b.write(&mut v, &quoted[..cut]).expect("build icmp error");
    Pkt::new(&v)
}

/// Recomputes the IPv4 header checksum after a test edited the header (with etherparse).
fn fix_ip_checksum(p: &mut Pkt) {
    let (ip, _) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    p.buf[10..12].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
}

pub(super) fn run<A: PortAllocator>(
    e: &mut Engine<A>,
    now: Instant,
    side: Side,
    p: &mut Pkt,
) -> Verdict {
    let v = e.process(now, side, &mut p.buf, p.len);
    if let Verdict::Reply { len, .. } = v {
        p.len = len;
    }
    v
}

pub(super) fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

/// Source and destination endpoints of a UDP/TCP packet (ports, or the echo identifier as both).
pub(crate) fn endpoints(bytes: &[u8]) -> (Endpoint, Endpoint) {
    let (ip, l4) = Ipv4Header::from_slice(bytes).expect("ipv4");
    let (sp, dp) = match ip.protocol.0 {
        1 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
    };
    (ep(ip.source.into(), sp), ep(ip.destination.into(), dp))
}

/// Asserts every checksum of a whole packet is right, recomputed by etherparse.
pub(crate) fn assert_checksums(bytes: &[u8]) {
    let (ip, rest) = Ipv4Header::from_slice(bytes).expect("ipv4 parses");
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let l4 = &rest[..usize::from(ip.total_len) - ip.header_len()];
    if ip.more_fragments || ip.fragment_offset.value() != 0 {
        return;
    }
    match ip.protocol.0 {
        17 => {
            let (h, payload) = UdpHeader::from_slice(l4).expect("udp");
            if h.checksum != 0 {
                assert_eq!(
                    h.checksum,
                    h.calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                        .expect("udp sum"),
                    "UDP checksum"
                );
            }
        }
        6 => {
            let (h, payload) = TcpHeader::from_slice(l4).expect("tcp");
            assert_eq!(
                h.checksum,
                h.calc_checksum_ipv4_raw(ip.source, ip.destination, payload)
                    .expect("tcp sum"),
                "TCP checksum"
            );
        }
        1 => {
            let (h, payload) = Icmpv4Header::from_slice(l4).expect("icmp");
            assert_eq!(
                h.checksum,
                h.icmp_type.calc_checksum(payload),
                "ICMP checksum"
            );
        }
        p => panic!("unexpected protocol {p}"),
    }
}

/// Sends `p` out from the inside and returns the external source endpoint it got.
pub(super) fn out<A: PortAllocator>(e: &mut Engine<A>, now: Instant, mut p: Pkt) -> Endpoint {
    let v = run(e, now, Side::Inside, &mut p);
    assert_eq!(v, Verdict::Forward(Side::Outside), "outbound forwarded");
    assert_checksums(p.bytes());
    endpoints(p.bytes()).0
}

/// Sends `p` in from the outside; returns the verdict and the translated packet.
pub(super) fn inb<A: PortAllocator>(e: &mut Engine<A>, now: Instant, mut p: Pkt) -> (Verdict, Pkt) {
    let v = run(e, now, Side::Outside, &mut p);
    if v == Verdict::Forward(Side::Inside) {
        assert_checksums(p.bytes());
    }
    (v, p)
}

// ---------------------------------------------------------------- mapping (RFC 4787 section 4)

#[test]
fn rfc4787_req1_endpoint_independent_mapping_reuses_external_endpoint() {
    let mut e = engine();
    let a = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    let b = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1B, 3479), b"x"));
    let c = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN2, 53), b"x"));
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert!(POOL.contains(&a.addr));
    assert_eq!(e.mapping_count(), 1);
    assert_eq!(e.session_count(), 3);
}

#[test]
fn rfc5382_req1_tcp_endpoint_independent_mapping() {
    let mut e = engine();
    let a = out(&mut e, t(1), tcp(ep(SUB1, 40000), ep(WAN1, 80), "S"));
    let b = out(&mut e, t(1), tcp(ep(SUB1, 40000), ep(WAN2, 443), "S"));
    assert_eq!(a, b);
}

#[test]
fn address_dependent_mapping_new_endpoint_per_remote_address() {
    let mut e = lab(Behavior {
        mapping: MappingBehavior::AddressDependent,
        ..Behavior::default()
    });
    let a = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 1), b"x"));
    let a2 = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 2), b"x"));
    let b = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1B, 1), b"x"));
    assert_eq!(a, a2, "same remote address, same mapping");
    assert_ne!(a, b);
    assert_eq!(a.addr, b.addr, "paired pooling keeps the address");
}

#[test]
fn address_and_port_dependent_mapping_new_endpoint_per_remote_endpoint() {
    let mut e = lab(Preset::Symmetric.behavior());
    let a = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 1), b"x"));
    let b = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 2), b"x"));
    assert_ne!(a, b);
    assert_eq!(e.mapping_count(), 2);
}

#[test]
fn rfc4787_req2_paired_pooling_one_address_per_subscriber() {
    let mut e = engine();
    let first = out(&mut e, t(1), udp(ep(SUB1, 1000), ep(WAN1, 1), b"x")).addr;
    for port in 1001..1100 {
        assert_eq!(
            out(&mut e, t(1), udp(ep(SUB1, port), ep(WAN1, 1), b"x")).addr,
            first
        );
    }
}

#[test]
fn rfc4787_req3a_port_range_preserved() {
    let mut e = engine();
    let low = out(&mut e, t(1), udp(ep(SUB1, 123), ep(WAN1, 123), b"x"));
    let high = out(&mut e, t(1), udp(ep(SUB1, 40000), ep(WAN1, 123), b"x"));
    assert!(low.port < 1024 && low.port > 0, "{low}");
    assert!(high.port >= 1024, "{high}");
}

#[test]
fn rfc4787_req4_port_parity_preserved_when_configured() {
    let mut e = engine_with(|c| c.behavior.port_parity = true);
    for port in [40000u16, 40001, 5001, 5002] {
        let x = out(&mut e, t(1), udp(ep(SUB2, port), ep(WAN1, 9), b"x"));
        assert_eq!(x.port % 2, port % 2);
    }
}

#[test]
fn rfc7857_port_preserved_when_free() {
    let mut e = engine_with(|c| c.behavior = Preset::FullCone.behavior());
    let a = out(&mut e, t(1), udp(ep(SUB1, 40000), ep(WAN1, 9), b"x"));
    assert_eq!(a.port, 40000);
    // SUB2 wants the same port on the same paired address only if it got the same address;
    // either way, no two mappings share an external endpoint (RFC 4787 REQ-3).
    let b = out(&mut e, t(1), udp(ep(SUB2, 40000), ep(WAN1, 9), b"x"));
    assert_ne!(a, b);
}

// ---------------------------------------------------------------- filtering (section 5)

fn reply_from(remote: Endpoint, external: Endpoint) -> Pkt {
    udp(remote, external, b"reply")
}

#[test]
fn rfc4787_req8_endpoint_independent_filtering_admits_any_remote() {
    let mut e = engine();
    let x = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    let (v, p) = inb(&mut e, t(2), reply_from(ep(WAN2, 9999), x));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(endpoints(p.bytes()).1, ep(SUB1, 5000));
    assert_eq!(
        endpoints(p.bytes()).0,
        ep(WAN2, 9999),
        "remote source untouched"
    );
}

#[test]
fn rfc4787_req8_address_dependent_filtering() {
    let mut e = engine_with(|c| c.behavior.filtering = FilteringBehavior::AddressDependent);
    let x = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    assert_eq!(
        inb(&mut e, t(2), reply_from(ep(WAN1, 1111), x)).0,
        Verdict::Forward(Side::Inside),
        "same address, other port"
    );
    assert_eq!(
        inb(&mut e, t(2), reply_from(ep(WAN1B, 3478), x)).0,
        Verdict::Drop(DropReason::Filtered),
        "other address"
    );
    assert_eq!(e.counters().drops(DropReason::Filtered), 1);
}

#[test]
fn rfc4787_req8_address_and_port_dependent_filtering() {
    let mut e = engine_with(|c| c.behavior.filtering = FilteringBehavior::AddressAndPortDependent);
    let x = out(&mut e, t(1), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    assert_eq!(
        inb(&mut e, t(2), reply_from(ep(WAN1, 3478), x)).0,
        Verdict::Forward(Side::Inside)
    );
    assert_eq!(
        inb(&mut e, t(2), reply_from(ep(WAN1, 3479), x)).0,
        Verdict::Drop(DropReason::Filtered)
    );
    assert_eq!(
        inb(&mut e, t(2), reply_from(ep(WAN2, 3478), x)).0,
        Verdict::Drop(DropReason::Filtered)
    );
}

#[test]
fn inbound_without_mapping_is_dropped() {
    let mut e = engine();
    let (v, _) = inb(&mut e, t(1), udp(ep(WAN1, 1), ep(POOL[0], 4000), b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::NoMapping));
    let (v, _) = inb(&mut e, t(1), udp(ep(WAN1, 1), ep(WAN2, 4000), b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::NotPoolAddress));
}

// ---------------------------------------------------------------- timers and refresh

#[test]
fn rfc4787_req5_udp_mapping_timer_default_300s() {
    let mut e = engine();
    let x = out(&mut e, t(10), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    e.handle_timeout(t(310));
    assert_eq!(e.session_count(), 1, "alive 300 s after the last packet");
    assert_eq!(
        inb(&mut e, t(310), reply_from(ep(WAN1, 3478), x)).0,
        Verdict::Forward(Side::Inside)
    );
    // Inbound does not refresh under the default (outbound) refresh behaviour.
    e.handle_timeout(t(311));
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.mapping_count(), 0);
    assert_eq!(
        inb(&mut e, t(312), reply_from(ep(WAN1, 3478), x)).0,
        Verdict::Drop(DropReason::NoMapping)
    );
}

#[test]
fn rfc4787_req6_outbound_refresh() {
    let mut e = engine();
    out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    out(&mut e, t(200), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    e.handle_timeout(t(450));
    assert_eq!(e.session_count(), 1, "refreshed at 200 s");
    e.handle_timeout(t(501));
    assert_eq!(e.session_count(), 0);
}

#[test]
fn rfc4787_req6_inbound_refresh_when_configured() {
    let mut e = engine_with(|c| c.behavior.refresh = Refresh::Both);
    let x = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    inb(&mut e, t(200), reply_from(ep(WAN1, 3478), x));
    e.handle_timeout(t(450));
    assert_eq!(e.session_count(), 1);
}

#[test]
fn rfc5508_req2_icmp_query_timer_60s() {
    let mut e = engine();
    out(&mut e, t(0), echo(SUB1, WAN1, 77, true));
    e.handle_timeout(t(60));
    assert_eq!(e.session_count(), 1);
    e.handle_timeout(t(61));
    assert_eq!(e.session_count(), 0);
}

#[test]
fn rfc5382_req5_tcp_established_timer_7440s_and_transitory_240s() {
    let mut e = engine();
    let x = out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 80), "S"));
    e.handle_timeout(t(240));
    assert_eq!(e.session_count(), 1, "opening lives 240 s");
    e.handle_timeout(t(241));
    assert_eq!(
        e.session_count(),
        0,
        "unanswered SYN state goes after 240 s"
    );

    let x2 = out(&mut e, t(1000), tcp(ep(SUB1, 40001), ep(WAN1, 80), "S"));
    assert_eq!(
        inb(&mut e, t(1000), tcp(ep(WAN1, 80), x2, "SA")).0,
        Verdict::Forward(Side::Inside)
    );
    out(&mut e, t(1000), tcp(ep(SUB1, 40001), ep(WAN1, 80), "A"));
    for s in (1000..=8440).step_by(100) {
        e.handle_timeout(t(s));
    }
    e.handle_timeout(t(8440));
    assert_eq!(e.session_count(), 1, "established lives 7440 s");
    e.handle_timeout(t(8441));
    assert_eq!(e.session_count(), 0);
    let _ = x;
}

#[test]
fn rfc7857_rst_keeps_session_for_linger_time() {
    let mut e = engine();
    let x = out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 80), "S"));
    inb(&mut e, t(0), tcp(ep(WAN1, 80), x, "SA"));
    out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 80), "A"));
    // The subscriber's last packet refreshes at 20 s (inbound packets do not, by default).
    out(&mut e, t(20), tcp(ep(SUB1, 40000), ep(WAN1, 80), "A"));
    assert_eq!(
        inb(&mut e, t(30), tcp(ep(WAN1, 80), x, "R")).0,
        Verdict::Forward(Side::Inside)
    );
    e.handle_timeout(t(200));
    assert_eq!(e.session_count(), 1, "not deleted at once");
    // A late segment still gets through during the linger.
    assert_eq!(
        inb(&mut e, t(200), tcp(ep(WAN1, 80), x, "A")).0,
        Verdict::Forward(Side::Inside)
    );
    // The linger (240 s) runs from the last refresh, exactly: not the 7440 s of established.
    e.handle_timeout(t(20 + 240));
    assert_eq!(e.session_count(), 1);
    e.handle_timeout(t(20 + 240 + 1));
    assert_eq!(e.session_count(), 0);
}

#[test]
fn tcp_fin_both_ways_uses_closing_timer() {
    let mut e = engine();
    let x = out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 80), "S"));
    inb(&mut e, t(0), tcp(ep(WAN1, 80), x, "SA"));
    out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 80), "FA"));
    e.handle_timeout(t(3000));
    assert_eq!(e.session_count(), 1, "half-closed stays established");
    out(&mut e, t(3000), tcp(ep(SUB1, 40000), ep(WAN1, 80), "A"));
    inb(&mut e, t(3000), tcp(ep(WAN1, 80), x, "FA"));
    e.handle_timeout(t(3000 + 240));
    assert_eq!(e.session_count(), 1);
    e.handle_timeout(t(3000 + 240 + 1));
    assert_eq!(
        e.session_count(),
        0,
        "closed both ways: transitory timer, exactly"
    );
}

// ---------------------------------------------------------------- TCP (RFC 5382)

#[test]
fn rfc5382_req2_simultaneous_open() {
    let mut e = engine_with(|c| c.behavior.filtering = FilteringBehavior::AddressAndPortDependent);
    let x = out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 5000), "S"));
    // The peer's SYN crosses ours (hole punching).
    assert_eq!(
        inb(&mut e, t(0), tcp(ep(WAN1, 5000), x, "S")).0,
        Verdict::Forward(Side::Inside)
    );
    out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 5000), "SA"));
    inb(&mut e, t(0), tcp(ep(WAN1, 5000), x, "SA"));
    let s = e.sessions().next().expect("session");
    assert_eq!(s.tcp, Some(TcpPhase::Established));
}

#[test]
fn rfc5382_req4_unsolicited_syn_held_then_port_unreachable() {
    let mut e = engine_with(|c| c.behavior.filtering = FilteringBehavior::AddressAndPortDependent);
    let x = out(&mut e, t(0), udp(ep(SUB1, 40000), ep(WAN2, 1), b"x"));
    let syn = tcp(ep(WAN1, 5000), ep(x.addr, 40000), "S");
    let original = syn.bytes().to_vec();
    assert_eq!(inb(&mut e, t(1), syn).0, Verdict::Held);
    assert_eq!(e.held_syn_count(), 1);
    assert_eq!(e.next_timeout().map(|n| n <= t(7)), Some(true));
    e.handle_timeout(Instant::from_millis(6999));
    let mut buf = [0u8; 2048];
    assert_eq!(e.poll_transmit(&mut buf), None, "held for the full 6 s");
    e.handle_timeout(t(7));
    let tx = e.poll_transmit(&mut buf).expect("port unreachable sent");
    assert_eq!(tx.side, Side::Outside);
    let icmp = &buf[..tx.len];
    assert_checksums(icmp);
    let (ip, l4) = Ipv4Header::from_slice(icmp).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.source), x.addr);
    assert_eq!(Ipv4Addr::from(ip.destination), WAN1);
    assert_eq!((l4[0], l4[1]), (3, 3));
    assert_eq!(&l4[8..28], &original[..20], "quotes the SYN's IP header");
    assert_eq!(e.counters().drops(DropReason::SynHoldExpired), 1);
}

#[test]
fn rfc5382_req4_held_syn_claimed_by_outbound_syn_is_dropped_silently() {
    let mut e = engine_with(|c| c.behavior.filtering = FilteringBehavior::AddressAndPortDependent);
    // The subscriber's socket already has a TCP mapping (to a rendezvous server).
    let x = out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN2, 443), "S"));
    // The peer, told that endpoint, sends its SYN first: filtered, so held.
    assert_eq!(
        inb(&mut e, t(1), tcp(ep(WAN1, 5000), x, "S")).0,
        Verdict::Held
    );
    // The subscriber's own SYN to the peer within 6 s claims it.
    assert_eq!(
        out(&mut e, t(2), tcp(ep(SUB1, 40000), ep(WAN1, 5000), "S")),
        x
    );
    assert_eq!(e.held_syn_count(), 0);
    e.handle_timeout(t(10));
    assert_eq!(
        e.poll_transmit(&mut [0u8; 2048]),
        None,
        "no ICMP for a claimed SYN"
    );
    assert_eq!(e.counters().drops(DropReason::SynHoldExpired), 0);
}

#[test]
fn rfc5382_req4_syn_drop_policy_sends_nothing() {
    let mut e = engine_with(|c| c.behavior.unsolicited_syn = UnsolicitedSyn::Drop);
    assert_eq!(
        inb(&mut e, t(1), tcp(ep(WAN1, 5000), ep(POOL[0], 40000), "S")).0,
        Verdict::Held
    );
    e.handle_timeout(t(8));
    assert_eq!(e.poll_transmit(&mut [0u8; 2048]), None);
    assert_eq!(e.counters().drops(DropReason::SynHoldExpired), 1);
}

#[test]
fn tcp_non_syn_without_session_is_dropped() {
    let mut e = engine();
    let mut p = tcp(ep(SUB1, 40000), ep(WAN1, 80), "A");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::TcpNoSession)
    );
    assert_eq!(e.mapping_count(), 0);
}

// ---------------------------------------------------------------- hairpinning

#[test]
fn rfc4787_req9_hairpin_udp_with_external_source() {
    let mut e = engine();
    let x1 = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    let x2 = out(&mut e, t(0), udp(ep(SUB2, 6000), ep(WAN1, 3478), b"x"));
    let mut p = udp(ep(SUB1, 5000), x2, b"hello");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Forward(Side::Inside)
    );
    assert_checksums(p.bytes());
    assert_eq!(
        endpoints(p.bytes()),
        (x1, ep(SUB2, 6000)),
        "REQ-9a: external source"
    );
    // And back.
    let mut r = udp(ep(SUB2, 6000), x1, b"back");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut r),
        Verdict::Forward(Side::Inside)
    );
    assert_eq!(endpoints(r.bytes()), (x2, ep(SUB1, 5000)));
    assert_eq!(e.counters().hairpinned_packets, 2);
}

#[test]
fn rfc5382_req8_hairpin_tcp() {
    let mut e = engine();
    let x2 = out(&mut e, t(0), tcp(ep(SUB2, 6000), ep(WAN1, 80), "S"));
    let mut p = tcp(ep(SUB1, 5000), x2, "S");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Forward(Side::Inside)
    );
    assert_checksums(p.bytes());
    assert_eq!(endpoints(p.bytes()).1, ep(SUB2, 6000));
    assert!(POOL.contains(&endpoints(p.bytes()).0.addr));
}

#[test]
fn hairpin_internal_source_and_off_in_lab() {
    let mut e = lab(Behavior {
        hairpinning: Hairpinning::InternalSource,
        ..Behavior::default()
    });
    let x2 = out(&mut e, t(0), udp(ep(SUB2, 6000), ep(WAN1, 3478), b"x"));
    let mut p = udp(ep(SUB1, 5000), x2, b"hello");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Forward(Side::Inside)
    );
    assert_checksums(p.bytes());
    assert_eq!(endpoints(p.bytes()), (ep(SUB1, 5000), ep(SUB2, 6000)));

    let mut e = lab(Behavior {
        hairpinning: Hairpinning::Off,
        ..Behavior::default()
    });
    let x2 = out(&mut e, t(0), udp(ep(SUB2, 6000), ep(WAN1, 3478), b"x"));
    let mut p = udp(ep(SUB1, 5000), x2, b"hello");
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut p),
        Verdict::Drop(DropReason::HairpinDisabled)
    );
    assert_eq!(e.session_count(), 1, "no state made for a refused hairpin");
}

// ---------------------------------------------------------------- ICMP (RFC 5508)

#[test]
fn rfc5508_req1_echo_identifier_mapped_and_reply_translated_back() {
    let mut e = engine();
    let mut p = echo(SUB1, WAN1, 0x1234, true);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Forward(Side::Outside)
    );
    assert_checksums(p.bytes());
    let (src, _) = endpoints(p.bytes());
    assert!(POOL.contains(&src.addr));
    // EIM for identifiers: the same identifier towards another host keeps its mapping.
    let mut p2 = echo(SUB1, WAN2, 0x1234, true);
    run(&mut e, t(0), Side::Inside, &mut p2);
    assert_eq!(endpoints(p2.bytes()).0, src);
    let mut r = echo(WAN1, src.addr, src.port, false);
    assert_eq!(
        run(&mut e, t(0), Side::Outside, &mut r),
        Verdict::Forward(Side::Inside)
    );
    assert_checksums(r.bytes());
    assert_eq!(endpoints(r.bytes()).1, ep(SUB1, 0x1234));
}

#[test]
fn rfc5508_req3_bad_icmp_checksum_dropped() {
    let mut e = engine();
    let mut p = echo(SUB1, WAN1, 1, true);
    p.buf[20 + 2] ^= 0xff;
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::IcmpBadChecksum)
    );
}

#[test]
fn rfc5508_req4_inbound_error_translated_back_to_internal() {
    let mut e = engine();
    let sent = udp(ep(SUB1, 5000), ep(WAN1, 9), b"hello");
    let original = sent.bytes().to_vec();
    let mut translated = sent.clone();
    run(&mut e, t(0), Side::Inside, &mut translated);
    let x = endpoints(translated.bytes()).0;
    // WAN1 answers port unreachable, quoting what it received.
    let (v, p) = inb(
        &mut e,
        t(1),
        icmp_error(WAN1, x.addr, 3, 3, translated.bytes()),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    let (ip, l4) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.destination), SUB1);
    assert_eq!(Ipv4Addr::from(ip.source), WAN1);
    assert_eq!((l4[0], l4[1]), (3, 3), "type and code kept");
    // Addresses, ports and the UDP checksum are restored; the quoted TTL is the one the NAT
    // sent out (one less), and the quoted header checksum matches it.
    assert_eq!(
        &l4[8 + 12..8 + 28],
        &original[12..28],
        "addresses, ports and UDP checksum restored"
    );
    assert_eq!(l4[8 + 8], original[8] - 1);
    let (inner, _) = Ipv4Header::from_slice(&l4[8..]).expect("quoted ipv4");
    assert_eq!(inner.header_checksum, inner.calc_header_checksum());
}

#[test]
fn rfc5508_req4_error_from_third_party_router() {
    let mut e = engine();
    let mut translated = udp(ep(SUB1, 5000), ep(WAN1, 9), b"hello");
    let original = translated.bytes().to_vec();
    run(&mut e, t(0), Side::Inside, &mut translated);
    let x = endpoints(translated.bytes()).0;
    let (v, p) = inb(
        &mut e,
        t(1),
        icmp_error(ROUTER, x.addr, 11, 0, translated.bytes()),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    let (ip, l4) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.source), ROUTER);
    // The quoted TTL was decremented by the NAT on the way out; everything else is original.
    assert_eq!(&l4[8 + 12..8 + 28], &original[12..28]);
}

#[test]
fn rfc5508_req5_outbound_error_translated() {
    let mut e = engine();
    let x = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 9), b"x"));
    let (_, delivered) = inb(&mut e, t(1), udp(ep(WAN1, 9), x, b"data"));
    // The subscriber answers port unreachable about the packet it received.
    let mut err = icmp_error(SUB1, WAN1, 3, 3, delivered.bytes());
    assert_eq!(
        run(&mut e, t(2), Side::Inside, &mut err),
        Verdict::Forward(Side::Outside)
    );
    assert_checksums(err.bytes());
    let (ip, l4) = Ipv4Header::from_slice(err.bytes()).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.source), x.addr);
    let (inner_src, inner_dst) = endpoints(&l4[8..]);
    assert_eq!(inner_src, ep(WAN1, 9));
    assert_eq!(
        inner_dst, x,
        "quoted destination is the external endpoint again"
    );
}

#[test]
fn rfc5508_req6_errors_neither_refresh_nor_delete() {
    let mut e = engine();
    let mut translated = udp(ep(SUB1, 5000), ep(WAN1, 9), b"hello");
    run(&mut e, t(0), Side::Inside, &mut translated);
    let x = endpoints(translated.bytes()).0;
    for code in [0, 1, 3, 13] {
        inb(
            &mut e,
            t(200),
            icmp_error(WAN1, x.addr, 3, code, translated.bytes()),
        );
    }
    assert_eq!(e.session_count(), 1, "REQ-12 / 5382 REQ-10: not deleted");
    e.handle_timeout(t(301));
    assert_eq!(e.session_count(), 0, "not refreshed at 200 s");
}

#[test]
fn rfc5508_error_without_session_dropped() {
    let mut e = engine();
    let stray = udp(ep(POOL[0], 4444), ep(WAN1, 9), b"hello");
    let (v, _) = inb(&mut e, t(0), icmp_error(WAN1, POOL[0], 3, 3, stray.bytes()));
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorNoSession));
}

#[test]
fn rfc5508_req3_error_with_bad_inner_checksum_dropped() {
    let mut e = engine();
    let mut translated = udp(ep(SUB1, 5000), ep(WAN1, 9), b"hello");
    run(&mut e, t(0), Side::Inside, &mut translated);
    let x = endpoints(translated.bytes()).0;
    let mut quoted = translated.bytes().to_vec();
    quoted[10] ^= 0x55;
    let (v, _) = inb(&mut e, t(1), icmp_error(WAN1, x.addr, 3, 3, &quoted));
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorBadInner));
}

#[test]
fn rfc5508_error_about_echo_translated() {
    let mut e = engine();
    let mut ping = echo(SUB1, WAN2, 99, true);
    let original = ping.bytes().to_vec();
    run(&mut e, t(0), Side::Inside, &mut ping);
    let x = endpoints(ping.bytes()).0;
    let (v, p) = inb(&mut e, t(0), icmp_error(ROUTER, x.addr, 3, 1, ping.bytes()));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    let l4 = &p.bytes()[20..];
    assert_eq!(
        &l4[8 + 12..8 + 28],
        &original[12..28],
        "addresses and echo header restored"
    );
}

#[test]
fn rfc5508_req7_hairpinned_error() {
    let mut e = engine();
    let x1 = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 3478), b"x"));
    let x2 = out(&mut e, t(0), udp(ep(SUB2, 6000), ep(WAN1, 3478), b"x"));
    let sent = udp(ep(SUB1, 5000), x2, b"hello");
    let original = sent.bytes().to_vec();
    let mut delivered = sent;
    run(&mut e, t(1), Side::Inside, &mut delivered);
    // SUB2 answers port unreachable to what it saw: from x1.
    let mut err = icmp_error(SUB2, x1.addr, 3, 3, delivered.bytes());
    assert_eq!(
        run(&mut e, t(1), Side::Inside, &mut err),
        Verdict::Forward(Side::Inside)
    );
    assert_checksums(err.bytes());
    let (ip, l4) = Ipv4Header::from_slice(err.bytes()).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.destination), SUB1);
    assert_eq!(Ipv4Addr::from(ip.source), x2.addr);
    let (s, d) = endpoints(&l4[8..]);
    assert_eq!(s, ep(SUB1, 5000));
    assert_eq!(d, x2);
    assert_eq!(&l4[8 + 12..8 + 16], &original[12..16]);
}

#[test]
fn rfc5508_req10_ttl_expiry_answered_with_time_exceeded() {
    let mut e = engine();
    let mut p = udp(ep(SUB1, 5000), ep(WAN1, 9), b"x");
    p.buf[8] = 1;
    fix_ip_checksum(&mut p);
    let original = p.bytes().to_vec();
    let v = run(&mut e, t(0), Side::Inside, &mut p);
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
    assert_checksums(p.bytes());
    let (ip, l4) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    assert_eq!(Ipv4Addr::from(ip.source), INSIDE);
    assert_eq!(Ipv4Addr::from(ip.destination), SUB1);
    assert_eq!((l4[0], l4[1]), (11, 0));
    assert_eq!(&l4[8..8 + 28], &original[..28]);
    assert_eq!(e.session_count(), 0, "no state for an expired packet");
}

#[test]
fn ttl_is_decremented_on_forward() {
    let mut e = engine();
    let mut p = udp(ep(SUB1, 5000), ep(WAN1, 9), b"x");
    run(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(p.buf[8], 63);
    assert_checksums(p.bytes());
}

/// Behind a TUN the kernel routes a packet in (one decrement, and TTL 1 answered there) and
/// out (another): the engine gives one back, so a crossing costs exactly one hop. Flows both
/// ways, the batch's lane, hairpins, translated ICMP errors and fragments all take the step.
#[test]
fn restore_kernel_hop_makes_a_crossing_cost_one() {
    let mut e = engine_with(|c| c.behavior.ttl = TtlHandling::RestoreKernelHop);
    let with_ttl = |mut p: Pkt, ttl: u8| {
        p.buf[8] = ttl;
        fix_ip_checksum(&mut p);
        p
    };
    // Sent with TTL 2, the kernel routed it in with 1: it passes, and the kernel's routing out
    // takes it to 1, so it expires at the next router, not here.
    let mut p = with_ttl(udp(ep(SUB1, 5000), ep(WAN1, 9), b"x"), 1);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Forward(Side::Outside)
    );
    assert_eq!(p.buf[8], 2);
    assert_checksums(p.bytes());
    let x = endpoints(p.bytes()).0;
    // The router's time exceeded comes back through the same give-back.
    let (v, err) = inb(
        &mut e,
        t(1),
        with_ttl(icmp_error(ROUTER, x.addr, 11, 0, p.bytes()), 62),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(err.buf[8], 63);
    assert_checksums(err.bytes());
    // An established flow in a batch (the lane) and one by one agree, both ways; 255 stays.
    for ttl in [63, 255] {
        let mut b = [with_ttl(udp(ep(SUB1, 5000), ep(WAN1, 9), b"y"), ttl)];
        let mut bufs: Vec<PacketBuf<'_>> = b
            .iter_mut()
            .map(|p| PacketBuf {
                buf: &mut p.buf,
                len: p.len,
            })
            .collect();
        let mut verdicts = [Verdict::Held];
        e.process_batch(t(2), Side::Inside, &mut bufs, &mut verdicts);
        assert_eq!(verdicts[0], Verdict::Forward(Side::Outside));
        assert_eq!(b[0].buf[8], ttl.saturating_add(1));
        assert_checksums(b[0].bytes());
    }
    let (v, back) = inb(&mut e, t(2), with_ttl(udp(ep(WAN1, 9), x, b"z"), 50));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(back.buf[8], 51);
    // A hairpin is routed in and out once too: one step, not one per translation.
    let x2 = out(&mut e, t(3), udp(ep(SUB2, 6000), ep(WAN1, 9), b"x"));
    let mut h = with_ttl(udp(ep(SUB1, 5000), x2, b"h"), 40);
    assert_eq!(
        run(&mut e, t(3), Side::Inside, &mut h),
        Verdict::Forward(Side::Inside)
    );
    assert_eq!(h.buf[8], 41);
    assert_checksums(h.bytes());
    // Fragments: the first and the later ones alike.
    let whole = with_ttl(udp(ep(SUB1, 5001), ep(WAN1, 9), &[7u8; 3000]), 30);
    for mut f in fragments(whole.bytes(), 1480) {
        assert_eq!(
            run(&mut e, t(4), Side::Inside, &mut f),
            Verdict::Forward(Side::Outside)
        );
        assert_eq!(f.buf[8], 31);
    }
    assert_eq!(e.counters().drops(DropReason::TtlExceeded), 0);
}

#[test]
fn rfc4787_req13_df_too_big_gets_fragmentation_needed() {
    let mut e = engine_with(|c| c.behavior.outside_mtu = 1400);
    let mut p = udp(ep(SUB1, 5000), ep(WAN1, 9), &[0u8; 1400]);
    p.buf[6] |= 0x40;
    fix_ip_checksum(&mut p);
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert!(
        matches!(
            v,
            Verdict::Reply {
                reason: DropReason::TooBig,
                ..
            }
        ),
        "{v:?}"
    );
    assert_checksums(p.bytes());
    let l4 = &p.bytes()[20..];
    assert_eq!((l4[0], l4[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([l4[6], l4[7]]), 1400, "next-hop MTU");
    assert!(p.len <= 576, "RFC 1812: error at most 576 bytes");
}

// ---------------------------------------------------------------- resources (RFC 6888)

#[test]
fn rfc6888_req11_mapping_failure_answered_and_nothing_evicted() {
    let mut e = engine_with(|c| {
        c.limits.max_sessions = 2;
        c.limits.max_mappings = 2;
    });
    let a = out(&mut e, t(0), udp(ep(SUB1, 1), ep(WAN1, 9), b"x"));
    out(&mut e, t(0), udp(ep(SUB1, 2), ep(WAN1, 9), b"x"));
    let mut p = udp(ep(SUB2, 3), ep(WAN1, 9), b"x");
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert!(
        matches!(
            v,
            Verdict::Reply {
                side: Side::Inside,
                ..
            }
        ),
        "{v:?}"
    );
    assert_eq!(v.drop_reason(), Some(DropReason::MappingTableFull));
    let l4 = &p.bytes()[20..];
    assert_eq!((l4[0], l4[1]), (3, 1), "host unreachable");
    assert_eq!(e.session_count(), 2, "live sessions kept");
    assert_eq!(
        inb(&mut e, t(0), reply_from(ep(WAN1, 9), a)).0,
        Verdict::Forward(Side::Inside)
    );
    let failed = std::iter::from_fn(|| e.poll_event())
        .filter(|ev| matches!(ev, Event::MappingFailed { .. }))
        .count();
    assert_eq!(failed, 1, "management is told");
}

#[test]
fn rfc6888_req11_reply_policy_none() {
    let mut e = engine_with(|c| {
        c.limits.max_sessions = 1;
        c.limits.max_mappings = 1;
        c.behavior.mapping_failure_reply = MappingFailureReply::None;
    });
    out(&mut e, t(0), udp(ep(SUB1, 1), ep(WAN1, 9), b"x"));
    let mut p = udp(ep(SUB1, 2), ep(WAN1, 9), b"x");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::MappingTableFull)
    );
}

#[test]
fn session_table_full_with_existing_mapping() {
    let mut e = engine_with(|c| {
        c.limits.max_sessions = 1;
        c.limits.max_mappings = 1;
    });
    out(&mut e, t(0), udp(ep(SUB1, 1), ep(WAN1, 9), b"x"));
    let mut p = udp(ep(SUB1, 1), ep(WAN2, 9), b"x");
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(v.drop_reason(), Some(DropReason::SessionTableFull));
    assert_eq!(e.mapping_count(), 1, "the existing mapping stays");
}

// ---------------------------------------------------------------- fragments (RFC 4787 REQ-14)

/// Splits a whole datagram into fragments of at most `chunk` payload bytes (multiple of 8).
pub(crate) fn fragments(whole: &[u8], chunk: usize) -> Vec<Pkt> {
    let (ip, rest) = Ipv4Header::from_slice(whole).expect("ipv4");
    let payload = &rest[..usize::from(ip.total_len) - ip.header_len()];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let mut h = ip.clone();
            h.more_fragments = (i + 1) * chunk < payload.len();
            h.fragment_offset = IpFragOffset::try_new(((i * chunk) / 8) as u16).expect("offset");
            h.total_len = (h.header_len() + part.len()) as u16;
            h.header_checksum = h.calc_header_checksum();
            let mut v = h.to_bytes().to_vec();
            v.extend_from_slice(part);
            Pkt::new(&v)
        })
        .collect()
}

fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut parts: Vec<(usize, Vec<u8>)> = frags
        .iter()
        .map(|f| {
            let (ip, rest) = Ipv4Header::from_slice(f).expect("ipv4");
            (
                usize::from(ip.fragment_offset.value()) * 8,
                rest[..usize::from(ip.total_len) - ip.header_len()].to_vec(),
            )
        })
        .collect();
    parts.sort();
    let (ip, _) = Ipv4Header::from_slice(&frags[0]).expect("ipv4");
    let payload: Vec<u8> = parts.into_iter().flat_map(|(_, p)| p).collect();
    let mut h = ip;
    h.more_fragments = false;
    h.fragment_offset = IpFragOffset::ZERO;
    h.total_len = (h.header_len() + payload.len()) as u16;
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(&payload);
    v
}

#[test]
fn rfc4787_req14_in_order_fragments_follow_the_first() {
    let mut e = engine();
    let whole = udp(ep(SUB1, 5000), ep(WAN1, 9), &[7u8; 3000]);
    let mut outs = Vec::new();
    for mut f in fragments(whole.bytes(), 1480) {
        assert_eq!(
            run(&mut e, t(0), Side::Inside, &mut f),
            Verdict::Forward(Side::Outside)
        );
        outs.push(f.bytes().to_vec());
    }
    let r = reassemble(&outs);
    assert_checksums(&r);
    assert!(POOL.contains(&endpoints(&r).0.addr));
}

#[test]
fn rfc4787_req14_out_of_order_fragments_held_then_released() {
    let mut e = engine();
    let whole = udp(ep(SUB1, 5000), ep(WAN1, 9), &[9u8; 3000]);
    let mut frags = fragments(whole.bytes(), 1480);
    let mut outs = Vec::new();
    for f in frags.iter_mut().skip(1) {
        assert_eq!(run(&mut e, t(0), Side::Inside, f), Verdict::Held);
    }
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut frags[0]),
        Verdict::Forward(Side::Outside)
    );
    outs.push(frags[0].bytes().to_vec());
    let mut buf = [0u8; 2048];
    while let Some(tx) = e.poll_transmit(&mut buf) {
        assert_eq!(tx.side, Side::Outside);
        outs.push(buf[..tx.len].to_vec());
    }
    assert_eq!(outs.len(), 3);
    assert_checksums(&reassemble(&outs));
}

#[test]
fn rfc4787_req14_orphan_fragments_expire() {
    let mut e = engine();
    let whole = udp(ep(SUB1, 5000), ep(WAN1, 9), &[9u8; 3000]);
    let mut frags = fragments(whole.bytes(), 1480);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut frags[2]),
        Verdict::Held
    );
    e.handle_timeout(t(3));
    assert_eq!(e.counters().drops(DropReason::FragmentExpired), 1);
}

// ---------------------------------------------------------------- input hygiene and counters

#[test]
fn malformed_packets_counted_by_reason() {
    let mut e = engine();
    let mut p = udp(ep(SUB1, 5000), ep(WAN1, 9), b"x");
    p.buf[10] ^= 1;
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::Ipv4BadChecksum)
    );
    let mut p = Pkt::new(&[0x60; 40]);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::NotIpv4)
    );
    let mut p = Pkt::new(&[0x45, 0, 0]);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::Ipv4Malformed)
    );
    let mut p = udp(ep(SUB1, 5000), ep(WAN1, 9), b"x");
    p.buf[9] = 47;
    fix_ip_checksum(&mut p);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    assert_eq!(e.counters().total_drops(), 4);
    for r in [
        DropReason::Ipv4BadChecksum,
        DropReason::NotIpv4,
        DropReason::Ipv4Malformed,
        DropReason::UnsupportedProtocol,
    ] {
        assert_eq!(e.counters().drops(r), 1, "{r:?}");
    }
}

#[test]
fn rfc4787_req11_same_seed_same_translation() {
    let run_all = || {
        let mut e = engine();
        (0..50u16)
            .map(|i| out(&mut e, t(0), udp(ep(SUB1, 2000 + i), ep(WAN1, 9), b"x")))
            .collect::<Vec<_>>()
    };
    assert_eq!(run_all(), run_all());
}

#[test]
fn events_tell_the_story_of_a_session() {
    let mut e = engine();
    let x = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 9), b"x"));
    e.handle_timeout(t(400));
    let evs: Vec<_> = std::iter::from_fn(|| e.poll_event()).collect();
    assert!(matches!(evs[0], Event::MappingCreated { external, .. } if external == x));
    assert!(matches!(
        evs[1],
        Event::SessionCreated { remote, origin: SessionOrigin::Dynamic, .. } if remote == ep(WAN1, 9)
    ));
    assert!(matches!(
        evs[2],
        Event::SessionDeleted {
            origin: SessionOrigin::Dynamic,
            reason: EndReason::Expired,
            ..
        }
    ));
    assert!(matches!(
        evs[3],
        Event::MappingDeleted {
            reason: EndReason::Expired,
            ..
        }
    ));
    assert_eq!(evs.len(), 4);
}

#[test]
fn a_mapping_whose_session_is_refused_ends_unused() {
    // Room for a mapping but not for its session: the mapping made for it goes again at once,
    // and its record says it never served.
    let mut e = engine_with(|c| {
        c.limits.max_sessions = 2;
        c.limits.max_mappings = 2;
    });
    out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 9), b"x"));
    out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN2, 9), b"x"));
    while e.poll_event().is_some() {}
    let mut p = udp(ep(SUB1, 5001), ep(WAN1, 9), b"x");
    let v = run(&mut e, t(1), Side::Inside, &mut p);
    assert_eq!(v.drop_reason(), Some(DropReason::SessionTableFull));
    let evs: Vec<_> = std::iter::from_fn(|| e.poll_event()).collect();
    assert!(
        evs.iter().any(|ev| matches!(
            ev,
            Event::MappingDeleted {
                reason: EndReason::Unused,
                internal,
                ..
            } if *internal == ep(SUB1, 5001)
        )),
        "{evs:?}"
    );
    assert_eq!(e.mapping_count(), 1);
}

/// Runs `packets` one by one through one engine and as one batch through another; asserts
/// both give the same verdicts, bytes and counters, and returns the batched engine.
fn assert_batch_matches_singles(mut packets: Vec<Pkt>) -> Engine {
    let mut single = engine();
    let mut batched = engine();
    let mut expect = packets.clone();
    let want: Vec<Verdict> = expect
        .iter_mut()
        .map(|p| run(&mut single, t(0), Side::Inside, p))
        .collect();
    let mut bufs: Vec<PacketBuf<'_>> = packets
        .iter_mut()
        .map(|p| PacketBuf {
            len: p.len,
            buf: &mut p.buf,
        })
        .collect();
    let mut got = vec![Verdict::Held; bufs.len()];
    batched.process_batch(t(0), Side::Inside, &mut bufs, &mut got);
    assert_eq!(got, want);
    for (a, b) in packets.iter().zip(&expect) {
        assert_eq!(a.bytes(), b.bytes());
    }
    assert_eq!(single.counters(), batched.counters());
    batched
}

#[test]
fn batch_gives_the_same_verdicts_as_one_by_one() {
    let mut packets: Vec<Pkt> = (0..100u16)
        .map(|i| udp(ep(SUB1, 3000 + i % 40), ep(WAN1, 9 + i % 3), b"payload"))
        .collect();
    packets.push(Pkt::new(&[0x45, 0, 0]));
    assert_batch_matches_singles(packets);
}

#[test]
fn batch_checks_ttl_and_size_of_established_flows() {
    // The batch path translates packets of found sessions directly; it must still answer an
    // expiring TTL (RFC 5508 REQ-10) and a DF packet over the MTU (RFC 4787 REQ-13) first.
    let mut e = engine_with(|c| c.behavior.outside_mtu = 1400);
    let mut first = udp(ep(SUB1, 5000), ep(WAN1, 9), b"x");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut first),
        Verdict::Forward(Side::Outside)
    );
    let mut packets = vec![udp(ep(SUB1, 5000), ep(WAN1, 9), b"x"); 4];
    packets[1].buf[8] = 1;
    packets[2] = udp(ep(SUB1, 5000), ep(WAN1, 9), &[0u8; 1400]);
    packets[2].buf[6] |= 0x40;
    for p in &mut packets {
        fix_ip_checksum(p);
    }
    let mut bufs: Vec<PacketBuf<'_>> = packets
        .iter_mut()
        .map(|p| PacketBuf {
            len: p.len,
            buf: &mut p.buf,
        })
        .collect();
    let mut got = vec![Verdict::Held; bufs.len()];
    e.process_batch(t(1), Side::Inside, &mut bufs, &mut got);
    let reasons: Vec<_> = got.iter().map(Verdict::drop_reason).collect();
    assert_eq!(
        reasons,
        [
            None,
            Some(DropReason::TtlExceeded),
            Some(DropReason::TooBig),
            None
        ]
    );
    assert_eq!(got[0], Verdict::Forward(Side::Outside));
    assert_eq!(got[3], Verdict::Forward(Side::Outside));
    assert_eq!(packets[0].buf[8], 63, "forwarded with its TTL decremented");
    assert_checksums(packets[0].bytes());
}

#[test]
fn batch_with_a_flow_twice_makes_one_session() {
    // The first packet of a flow creates its session; the second, in the same batch, must find
    // it rather than make another (a lookup done for the whole batch up front would miss it).
    let packets = [(5000, 9), (5001, 9), (5000, 9), (5000, 9), (5001, 9)]
        .iter()
        .map(|&(sport, dport)| udp(ep(SUB1, sport), ep(WAN1, dport), b"x"))
        .collect();
    assert_eq!(assert_batch_matches_singles(packets).session_count(), 2);
}

#[test]
fn flush_deletes_everything_and_releases_ports() {
    let mut e = engine();
    for i in 0..10 {
        out(&mut e, t(0), udp(ep(SUB1, 1000 + i), ep(WAN1, 9), b"x"));
    }
    e.flush(t(1));
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.mapping_count(), 0);
    assert_eq!(e.counters().mappings_deleted, 10);
}

// ---------------------------------------------------------------- more RFC rows

#[test]
fn rfc4787_req7_internal_address_overlapping_an_external_one() {
    // A subscriber and a remote host with the same address: sessions are keyed by side, so
    // both directions still translate.
    let mut e = engine();
    let same = Ipv4Addr::new(203, 0, 113, 10);
    let x = out(&mut e, t(0), udp(ep(same, 5000), ep(same, 5000), b"x"));
    let (v, p) = inb(&mut e, t(0), udp(ep(same, 5000), x, b"y"));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(endpoints(p.bytes()), (ep(same, 5000), ep(same, 5000)));
}

#[test]
fn rfc4787_req10_no_alg_payload_untouched() {
    // A SIP-like payload naming the internal endpoint passes unchanged: no ALG rewrites it.
    let mut e = engine();
    let payload = b"INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP 100.64.0.10:5060\r\n";
    let mut p = udp(ep(SUB1, 5060), ep(WAN1, 5060), payload);
    run(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(&p.bytes()[28..], payload);
}

#[test]
fn rfc5382_req3_tcp_endpoint_independent_filtering() {
    let mut e = engine();
    let x = out(&mut e, t(0), tcp(ep(SUB1, 40000), ep(WAN1, 80), "S"));
    // A SYN from another host to the mapped endpoint opens a session under EIF.
    let (v, p) = inb(&mut e, t(1), tcp(ep(WAN2, 6000), x, "S"));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(endpoints(p.bytes()).1, ep(SUB1, 40000));
    // A non-SYN from a host with no session is not let in.
    let (v, _) = inb(&mut e, t(1), tcp(ep(WAN1B, 6000), x, "A"));
    assert_eq!(v, Verdict::Drop(DropReason::TcpNoSession));
}

#[test]
fn rfc5382_req9_req10_icmp_unreachable_for_tcp_translated_and_harmless() {
    let mut e = engine();
    let mut syn = tcp(ep(SUB1, 40000), ep(WAN1, 80), "S");
    let original = syn.bytes().to_vec();
    run(&mut e, t(0), Side::Inside, &mut syn);
    let x = endpoints(syn.bytes()).0;
    let (v, p) = inb(&mut e, t(1), icmp_error(ROUTER, x.addr, 3, 1, syn.bytes()));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    let l4 = &p.bytes()[20..];
    assert_eq!(
        &l4[8 + 12..8 + 28],
        &original[12..28],
        "addresses, ports and sequence restored"
    );
    assert_eq!(
        e.session_count(),
        1,
        "REQ-10: the error does not end the connection"
    );
    let s = e.sessions().next().expect("session");
    assert_eq!(s.tcp, Some(TcpPhase::Opening));
}

#[test]
fn batch_with_two_packets_of_one_new_flow_makes_one_session() {
    // Both look-ups run before either packet is processed, so the second packet's "no session"
    // hint is stale once the first has made the session.
    for side_first in [Side::Inside, Side::Outside] {
        let mut e = engine();
        let x = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN2, 1), b"x"));
        let mut a = match side_first {
            Side::Inside => udp(ep(SUB1, 6000), ep(WAN1, 9), b"a"),
            Side::Outside => udp(ep(WAN1, 9), x, b"a"),
        };
        let mut b = a.clone();
        let mut bufs = [
            PacketBuf {
                len: a.len,
                buf: &mut a.buf,
            },
            PacketBuf {
                len: b.len,
                buf: &mut b.buf,
            },
        ];
        let mut v = [Verdict::Held; 2];
        e.process_batch(t(0), side_first, &mut bufs, &mut v);
        assert_eq!(v[0], v[1]);
        assert_eq!(
            e.session_count(),
            2,
            "{side_first:?}: one new session, not two"
        );
        assert_eq!(a.bytes(), b.bytes());
    }
}

// ---------------------------------------------------------------- port blocks (RFC 6888)

fn block_engine() -> Engine<crate::alloc::BlockAllocator> {
    use crate::alloc::{BlockAllocator, BlockSettings, Share};
    let cfg = config(|_| {}).validate().expect("valid");
    let alloc = BlockAllocator::new(
        &POOL,
        BlockSettings {
            block_size: 4,
            max_blocks_per_subscriber: 2,
            port_parity: false,
            hold_down: core::time::Duration::from_secs(120),
            max_held_down: 1024,
            share: Share::WHOLE,
        },
    );
    Engine::with_allocator(cfg, alloc, 7)
}

#[test]
fn rfc6888_req4_port_block_limit_is_its_own_drop_and_blocks_are_logged_once() {
    let mut e = block_engine();
    for port in 0..8u16 {
        let mut p = udp(ep(SUB1, 1000 + port), ep(WAN1, 9), b"x");
        assert_eq!(
            run(&mut e, t(0), Side::Inside, &mut p),
            Verdict::Forward(Side::Outside)
        );
    }
    let mut p = udp(ep(SUB1, 2000), ep(WAN1, 9), b"x");
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(v.drop_reason(), Some(DropReason::SubscriberPortLimit));
    assert_eq!(e.counters().drops(DropReason::SubscriberPortLimit), 1);
    // Another subscriber is unaffected.
    out(&mut e, t(0), udp(ep(SUB2, 1000), ep(WAN1, 9), b"x"));
    let blocks = std::iter::from_fn(|| e.poll_event())
        .filter(|ev| matches!(ev, Event::PortBlockAllocated { .. }))
        .count();
    assert_eq!(
        blocks, 3,
        "two blocks for SUB1, one for SUB2: one record per block"
    );
    // Everything expires; the blocks come back after the hold-down, each with one record.
    e.handle_timeout(t(301));
    e.handle_timeout(t(301 + 120));
    let released = std::iter::from_fn(|| e.poll_event())
        .filter(|ev| matches!(ev, Event::PortBlockReleased { .. }))
        .count();
    assert_eq!(released, 3);
}

// ---------------------------------------------------------------- per-subscriber limits

#[test]
fn rfc6888_req4_req5_subscriber_quota_refuses_answers_and_spares_others() {
    let mut e = engine_with(|c| {
        c.limits.subscriber = crate::config::SubscriberLimits {
            max_udp_sessions: 3,
            max_subscribers: 16,
            ..Default::default()
        };
    });
    for port in 0..3u16 {
        out(&mut e, t(0), udp(ep(SUB1, 1000 + port), ep(WAN1, 9), b"x"));
    }
    let mut p = udp(ep(SUB1, 2000), ep(WAN1, 9), b"x");
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert!(
        matches!(
            v,
            Verdict::Reply {
                side: Side::Inside,
                reason: DropReason::SubscriberSessionLimit,
                ..
            }
        ),
        "{v:?}"
    );
    assert_eq!(&p.bytes()[20..22], &[3, 1], "host unreachable by default");
    assert_eq!(e.mapping_count(), 3, "no port spent on the refused flow");
    // Another subscriber is unaffected; a new remote for an existing mapping is a new session
    // and is refused as well.
    out(&mut e, t(0), udp(ep(SUB2, 1000), ep(WAN1, 9), b"x"));
    let mut q = udp(ep(SUB1, 1000), ep(WAN2, 9), b"x");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut q).drop_reason(),
        Some(DropReason::SubscriberSessionLimit)
    );
    // When sessions end, the subscriber has room again.
    e.handle_timeout(t(301));
    out(&mut e, t(302), udp(ep(SUB1, 2000), ep(WAN1, 9), b"x"));
    assert_eq!(e.counters().drops(DropReason::SubscriberSessionLimit), 2);
}

#[test]
fn rfc6888_req5_subscriber_rate_limit() {
    let mut e = engine_with(|c| {
        c.limits.subscriber = crate::config::SubscriberLimits {
            session_rate: 2,
            session_burst: 2,
            max_subscribers: 16,
            ..Default::default()
        };
    });
    out(&mut e, t(10), udp(ep(SUB1, 1000), ep(WAN1, 9), b"x"));
    out(&mut e, t(10), udp(ep(SUB1, 1001), ep(WAN1, 9), b"x"));
    let mut p = udp(ep(SUB1, 1002), ep(WAN1, 9), b"x");
    assert_eq!(
        run(&mut e, t(10), Side::Inside, &mut p).drop_reason(),
        Some(DropReason::SubscriberRateLimit)
    );
    // Existing flows are untouched by the rate limit.
    out(&mut e, t(10), udp(ep(SUB1, 1000), ep(WAN1, 9), b"x"));
    // Two per second: one more after 500 ms.
    out(
        &mut e,
        Instant::from_millis(10_500),
        udp(ep(SUB1, 1002), ep(WAN1, 9), b"x"),
    );
}

#[test]
fn a_mapping_undone_for_want_of_a_session_is_counted_like_its_events() {
    let mut e = engine_with(|c| {
        c.limits.max_sessions = 2;
        c.limits.max_mappings = 2;
    });
    out(&mut e, t(0), udp(ep(SUB1, 1), ep(WAN1, 9), b"x"));
    out(&mut e, t(0), udp(ep(SUB1, 1), ep(WAN2, 9), b"x"));
    // A new mapping fits, its session does not: the mapping is made and undone.
    let mut p = udp(ep(SUB1, 2), ep(WAN1, 9), b"x");
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(v.drop_reason(), Some(DropReason::SessionTableFull));
    assert_eq!(e.mapping_count(), 1);
    let evs: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
    let made = evs
        .iter()
        .filter(|ev| matches!(ev, Event::MappingCreated { .. }))
        .count();
    let gone = evs
        .iter()
        .filter(|ev| matches!(ev, Event::MappingDeleted { .. }))
        .count();
    assert_eq!((made, gone), (2, 1));
    assert_eq!(e.counters().mappings_created, made as u64);
    assert_eq!(e.counters().mappings_deleted, gone as u64);
}

/// A mapping with one session lives in its session; a second session makes it shared, and
/// shared mappings come from a reserve of a quarter of the sessions (plus 1024). Past it, a
/// mapping's second session is refused under its own reason, with room left in the table and
/// nothing evicted; new mappings still work.
#[test]
fn past_the_shared_mapping_reserve_a_second_session_is_refused_under_its_own_reason() {
    let mut e = engine_with(|c| {
        c.limits.max_sessions = 8192;
        c.limits.max_mappings = 8192;
    });
    // 8192 / 4 + 1024 = 3072 shared mappings, each with two sessions.
    let sub = |i: u16| ep(Ipv4Addr::new(100, 64, (i >> 8) as u8, i as u8), 5000);
    let (r1, r2) = (ep(WAN1, 1), ep(WAN1, 2));
    for i in 0..3072 {
        for r in [r1, r2] {
            let v = run(&mut e, t(1), Side::Inside, &mut udp(sub(i), r, b"x"));
            assert_eq!(v, Verdict::Forward(Side::Outside), "{i}");
        }
    }
    let v = run(&mut e, t(1), Side::Inside, &mut udp(sub(3072), r1, b"x"));
    assert_eq!(
        v,
        Verdict::Forward(Side::Outside),
        "a new mapping still fits"
    );
    let v = run(&mut e, t(1), Side::Inside, &mut udp(sub(3072), r2, b"x"));
    assert_eq!(v.drop_reason(), Some(DropReason::SharedMappingReserveFull));
    assert_eq!(e.session_count(), 2 * 3072 + 1, "nothing evicted");
    assert_eq!(e.counters().drops(DropReason::SharedMappingReserveFull), 1);
}

// ---------------------------------------------------------------- lab-only knobs

/// `p` with DF set, its header checksum made right again.
fn with_df(mut p: Pkt) -> Pkt {
    p.buf[6] |= 0x40;
    fix_ip_checksum(&mut p);
    p
}

fn df(p: &Pkt) -> bool {
    p.buf[6] & 0x40 != 0
}

#[test]
fn lab_clear_df_forwards_without_df_both_ways_and_never_answers_too_big() {
    let mut e = engine_with(|c| {
        c.lab = true;
        c.behavior.clear_df = true;
        c.behavior.outside_mtu = 576;
    });
    // Larger than the way out, DF set: forwarded without DF (to be fragmented on its way)
    // rather than answered with fragmentation needed.
    let mut p = with_df(udp(ep(SUB1, 5000), ep(WAN1, 9), &[7u8; 1000]));
    let v = run(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(v, Verdict::Forward(Side::Outside));
    assert!(!df(&p));
    assert_checksums(p.bytes());
    let x = endpoints(p.bytes()).0;
    let (v, back) = inb(&mut e, t(1), with_df(udp(ep(WAN1, 9), x, b"back")));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert!(!df(&back));
    assert_eq!(e.counters().drops(DropReason::TooBig), 0);

    // The batch path of an established flow does the same.
    let mut packets = [
        with_df(udp(ep(SUB1, 5000), ep(WAN1, 9), b"again")),
        with_df(udp(ep(SUB1, 5000), ep(WAN1, 9), &[1u8; 800])),
    ];
    let mut bufs: Vec<PacketBuf<'_>> = packets
        .iter_mut()
        .map(|p| PacketBuf {
            len: p.len,
            buf: &mut p.buf,
        })
        .collect();
    let mut verdicts = [Verdict::Held; 2];
    e.process_batch(t(2), Side::Inside, &mut bufs, &mut verdicts);
    assert_eq!(verdicts, [Verdict::Forward(Side::Outside); 2]);
    for p in &packets {
        assert!(!df(p));
        assert_checksums(p.bytes());
    }
    // No flow goes to a fast path, which would forward it with its DF.
    e.enable_offload();
    assert_eq!(e.offload_stats(), None);
}

/// The lab's host identifier: a subscriber's SYN leaves with its internal address in an
/// RFC 7974 option (8 bytes longer, checksums valid); the SYN-ACK and the rest of the
/// connection are translated as always, and without the knob (or outside the lab) nothing
/// changes.
#[test]
fn lab_host_id_rides_on_outbound_syns_only() {
    let mut e = engine_with(|c| {
        c.lab = true;
        c.behavior.insert_host_id = true;
    });
    let send = |e: &mut Engine, side, mut p: Pkt| {
        let mut bufs = [PacketBuf {
            len: p.len,
            buf: &mut p.buf,
        }];
        let mut v = [Verdict::Held];
        e.process_batch(t(0), side, &mut bufs, &mut v);
        let len = bufs[0].len;
        p.len = len;
        (v[0], p)
    };
    let syn = tcp(ep(SUB1, 40000), ep(WAN1, 80), "S");
    let (v, out) = send(&mut e, Side::Inside, syn.clone());
    assert_eq!(v, Verdict::Forward(Side::Outside));
    assert_eq!(out.len, syn.len + 8);
    assert_checksums(out.bytes());
    let b = out.bytes();
    assert_eq!(&b[40..48], &[253, 8, 0x03, 0x48, 100, 64, 0, 10]);
    let x = endpoints(b).0;
    let (v, back) = send(&mut e, Side::Outside, tcp(ep(WAN1, 80), x, "SA"));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(back.len, 40, "nothing added inbound");
    let (_, ack) = send(
        &mut e,
        Side::Inside,
        tcp(ep(SUB1, 40000), ep(WAN1, 80), "A"),
    );
    assert_eq!(ack.len, 40, "only the SYN carries it");

    // Outside the lab it is refused; off, a SYN leaves as it came.
    let c = config(|c| c.behavior.insert_host_id = true);
    assert!(matches!(
        c.validate(),
        Err(crate::config::ConfigError::ForbiddenWithoutLab {
            setting: "insert-host-id",
            ..
        })
    ));
    let mut plain = engine();
    let (_, out) = send(&mut plain, Side::Inside, syn.clone());
    assert_eq!(out.len, syn.len);
}

#[test]
fn without_the_knob_df_is_left_as_sent() {
    let mut e = engine();
    let mut p = with_df(udp(ep(SUB1, 5000), ep(WAN1, 9), b"x"));
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Forward(Side::Outside)
    );
    assert!(df(&p));
}

#[test]
fn clear_df_is_refused_outside_the_lab_and_needs_a_restart() {
    let mut c = config(|c| c.behavior.clear_df = true);
    match c.clone().validate() {
        Err(crate::config::ConfigError::ForbiddenWithoutLab { setting, .. }) => {
            assert_eq!(setting, "clear-df");
        }
        other => panic!("{other:?}"),
    }
    c.lab = true;
    let on = c.validate().expect("valid in the lab").get().behavior;
    let off = Behavior {
        clear_df: false,
        ..on
    };
    assert_eq!(
        check_reload(&off, &on),
        Err(ReloadError::NeedsRestart("clear-df"))
    );
}
