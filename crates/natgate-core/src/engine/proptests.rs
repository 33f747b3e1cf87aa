//! Property tests of the engine: checksums stay valid after every rewrite, a
//! translated packet translated back is the original, the mapping and filtering behaviours match
//! a small reference model, the batch path equals the one-by-one path, and every packet is
//! counted exactly once. Packets are built and checked with `etherparse`, an independent
//! implementation, as in `tests.rs`.

use super::tests::{Pkt, assert_checksums, endpoints, ep};
use super::*;
use crate::config::{Config, FilteringBehavior, MappingBehavior, Preset, Refresh};
use crate::endpoint::Direction;
use crate::tcp_state::TcpPhase;
use etherparse::checksum::Sum16BitWords;
use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpNumber, Ipv4Header, Ipv4Options, PacketBuilder,
    TcpHeader, UdpHeader,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::collections::{HashMap, HashSet};

const POOL: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUBS: [Ipv4Addr; 2] = [Ipv4Addr::new(100, 64, 0, 10), Ipv4Addr::new(100, 64, 0, 11)];
const REMOTES: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 20),
];
/// A router on the path outside, and one inside, that send ICMP errors about others' packets.
const ROUTER_OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const ROUTER_IN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 254);

fn engine_with(f: impl FnOnce(&mut Config)) -> Engine {
    let mut c = Config::new(POOL.to_vec(), INSIDE);
    c.limits.max_sessions = 1024;
    c.limits.max_mappings = 1024;
    f(&mut c);
    Engine::new(c.validate().expect("valid test config"), 7)
}

// ---------------------------------------------------------------- packet builders

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The transport part of a random packet.
#[derive(Debug, Clone)]
enum L4 {
    Udp {
        /// Send with checksum 0 ("no checksum", RFC 768), which must stay 0.
        zero_checksum: bool,
    },
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
        /// Raw option bytes, a multiple of 4 long.
        options: Vec<u8>,
    },
    Echo {
        seq: u16,
    },
}

/// A random packet, before its endpoints are chosen.
#[derive(Debug, Clone)]
struct Spec {
    l4: L4,
    /// Raw IPv4 option bytes, a multiple of 4 long (up to 40).
    ip_options: Vec<u8>,
    ttl: u8,
    df: bool,
    ident: u16,
    payload: Vec<u8>,
}

fn options(max_words: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..=max_words).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4))
}

fn l4(tcp_flags: impl Strategy<Value = u8> + 'static, echo: bool) -> impl Strategy<Value = L4> {
    let udp = any::<bool>().prop_map(|zero_checksum| L4::Udp { zero_checksum });
    let tcp = (
        tcp_flags,
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        options(10),
    )
        .prop_map(|(flags, seq, ack, window, options)| L4::Tcp {
            flags,
            seq,
            ack,
            window,
            options,
        });
    let echo_s = any::<u16>().prop_map(|seq| L4::Echo { seq });
    if echo {
        prop_oneof![udp, tcp, echo_s].boxed()
    } else {
        prop_oneof![udp, tcp].boxed()
    }
}

fn spec_with(l4: impl Strategy<Value = L4>) -> impl Strategy<Value = Spec> {
    (
        l4,
        options(10),
        2u8..=255,
        any::<bool>(),
        any::<u16>(),
        // Up to 639 bytes: some datagrams are larger than a 576-byte MTU.
        proptest::collection::vec(any::<u8>(), 0..640),
    )
        .prop_map(|(l4, ip_options, ttl, df, ident, payload)| Spec {
            l4,
            ip_options,
            ttl,
            df,
            ident,
            payload,
        })
}

/// Any packet that may open a flow from inside: a TCP segment must carry SYN and no RST.
fn outbound_spec() -> impl Strategy<Value = Spec> {
    spec_with(l4(any::<u8>().prop_map(|f| (f | SYN) & !RST), true))
}

/// A packet that may open a session through a hairpin (an inbound new session): TCP must be a
/// bare SYN as far as SYN, ACK and RST go; ICMP queries to the pool are not hairpinned.
fn hairpin_spec() -> impl Strategy<Value = Spec> {
    spec_with(l4(
        any::<u8>().prop_map(|f| (f | SYN) & !(RST | ACK)),
        false,
    ))
}

/// Builds `spec` from `src` to `dst`. For an echo request the identifier is `src.port`.
fn build(spec: &Spec, src: Endpoint, dst: Endpoint) -> Pkt {
    let (s, d) = (src.addr.octets(), dst.addr.octets());
    let mut l4 = Vec::new();
    let proto = match &spec.l4 {
        L4::Udp { zero_checksum } => {
            let mut h = UdpHeader::without_ipv4_checksum(src.port, dst.port, spec.payload.len())
                .expect("udp length");
            if !zero_checksum {
                h.checksum = h
                    .calc_checksum_ipv4_raw(s, d, &spec.payload)
                    .expect("udp sum");
            }
            l4.extend_from_slice(&h.to_bytes());
            IpNumber::UDP
        }
        L4::Tcp {
            flags,
            seq,
            ack,
            window,
            options,
        } => {
            let mut h = TcpHeader::new(src.port, dst.port, *seq, *window);
            h.acknowledgment_number = *ack;
            h.fin = flags & 0x01 != 0;
            h.syn = flags & 0x02 != 0;
            h.rst = flags & 0x04 != 0;
            h.psh = flags & 0x08 != 0;
            h.ack = flags & 0x10 != 0;
            h.urg = flags & 0x20 != 0;
            h.ece = flags & 0x40 != 0;
            h.cwr = flags & 0x80 != 0;
            h.set_options_raw(options).expect("tcp options");
            h.checksum = h
                .calc_checksum_ipv4_raw(s, d, &spec.payload)
                .expect("tcp sum");
            l4.extend_from_slice(&h.to_bytes());
            IpNumber::TCP
        }
        L4::Echo { seq } => {
            let echo = IcmpEchoHeader {
                id: src.port,
                seq: *seq,
            };
            let h = Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo), &spec.payload);
            l4.extend_from_slice(&h.to_bytes());
            IpNumber::ICMP
        }
    };
    l4.extend_from_slice(&spec.payload);
    let mut ip = Ipv4Header::new(l4.len() as u16, spec.ttl, proto, s, d).expect("ipv4");
    ip.options = Ipv4Options::try_from(&spec.ip_options[..]).expect("ip options");
    ip.total_len = (ip.header_len() + l4.len()) as u16;
    ip.dont_fragment = spec.df;
    ip.identification = spec.ident;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = ip.to_bytes().to_vec();
    v.extend_from_slice(&l4);
    Pkt::new(&v)
}

fn ones_complement(bytes: &[u8]) -> u16 {
    Sum16BitWords::new()
        .add_slice(bytes)
        .ones_complement()
        .to_be()
}

/// What the remote end sends back to a packet it received: addresses and ports swapped (which
/// keeps every checksum, the sums being symmetric), an echo request turned into its reply, and
/// a fresh TTL.
fn reply_to(bytes: &[u8]) -> Pkt {
    let mut v = bytes.to_vec();
    let ihl = usize::from(v[0] & 0x0f) * 4;
    let (s, d) = (v[12..16].to_vec(), v[16..20].to_vec());
    v[12..16].copy_from_slice(&d);
    v[16..20].copy_from_slice(&s);
    match v[9] {
        6 | 17 => {
            let (sp, dp) = (v[ihl..ihl + 2].to_vec(), v[ihl + 2..ihl + 4].to_vec());
            v[ihl..ihl + 2].copy_from_slice(&dp);
            v[ihl + 2..ihl + 4].copy_from_slice(&sp);
        }
        _ => {
            assert_eq!(v[ihl], 8, "only echo requests are answered here");
            v[ihl] = 0;
            v[ihl + 2..ihl + 4].fill(0);
            let sum = ones_complement(&v[ihl..]);
            v[ihl + 2..ihl + 4].copy_from_slice(&sum.to_be_bytes());
        }
    }
    v[8] = 64;
    v[10..12].fill(0);
    let sum = ones_complement(&v[..ihl]);
    v[10..12].copy_from_slice(&sum.to_be_bytes());
    let p = Pkt::new(&v);
    assert_checksums(p.bytes());
    p
}

/// An ICMP error from `from` to `to` quoting the first `cut` bytes of `quoted`.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, (t, code): (u8, u8), quoted: &[u8], cut: usize) -> Pkt {
    let b = PacketBuilder::ipv4(from.octets(), to.octets(), 64).icmpv4_raw(t, code, [0; 4]);
    let mut v = Vec::new();
    b.write(&mut v, &quoted[..cut]).expect("build icmp error");
    Pkt::new(&v)
}

/// Error types and codes: destination unreachable (any code), time exceeded, parameter problem.
fn error_kind() -> impl Strategy<Value = (u8, u8)> {
    prop_oneof![
        (0u8..=15).prop_map(|c| (3, c)),
        (0u8..=1).prop_map(|c| (11, c)),
        Just((12, 0)),
    ]
}

/// How much of a packet an error quotes: from the IP header and 8 bytes (RFC 792) to all of it,
/// as a fraction in 0..=1000 of the range.
fn quote_len(bytes: &[u8], fraction: u16) -> usize {
    let min = usize::from(bytes[0] & 0x0f) * 4 + 8;
    min + (bytes.len() - min) * usize::from(fraction) / 1000
}

/// The ICMP error message's quoted bytes.
fn quote_of(error: &[u8]) -> &[u8] {
    let (ip, rest) = Ipv4Header::from_slice(error).expect("ipv4");
    &rest[8..usize::from(ip.total_len) - ip.header_len()]
}

/// RFC 5508 REQ-4/5 round trip: the quote in a translated error is the packet as the receiver
/// of the error sent it, except for the TTL the NAT decremented on the way and the header
/// checksum that covers it. A transport checksum cut in half by the quote cannot be fixed and
/// is not compared. The quoted header checksum must be right for the quoted header.
fn assert_quote_restored(quote: &[u8], original: &[u8]) -> Result<(), TestCaseError> {
    let ihl = usize::from(original[0] & 0x0f) * 4;
    prop_assert!(quote.len() <= original.len());
    let half_checksum = match original[9] {
        17 => ihl + 6,
        6 => ihl + 16,
        _ => ihl + 2,
    };
    for (i, (q, o)) in quote.iter().zip(original).enumerate() {
        if matches!(i, 8 | 10 | 11) || (i == half_checksum && quote.len() == i + 1) {
            continue;
        }
        prop_assert_eq!(q, o, "quoted byte {} of {}", i, quote.len());
    }
    prop_assert_eq!(quote[8], original[8] - 1, "quoted TTL as the NAT sent it");
    let (inner, _) = Ipv4Header::from_slice(quote).expect("quoted ipv4");
    prop_assert_eq!(inner.header_checksum, inner.calc_header_checksum());
    Ok(())
}

/// The bytes after the IPv4 header and `l4_header` transport header bytes.
fn payload_of(bytes: &[u8], l4_header: usize) -> &[u8] {
    let ihl = usize::from(bytes[0] & 0x0f) * 4;
    &bytes[ihl + l4_header..]
}

fn l4_header_len(bytes: &[u8]) -> usize {
    let ihl = usize::from(bytes[0] & 0x0f) * 4;
    match bytes[9] {
        6 => usize::from(bytes[ihl + 12] >> 4) * 4,
        _ => 8,
    }
}

fn run(e: &mut Engine, now: Instant, side: Side, p: &mut Pkt) -> Verdict {
    e.process(now, side, &mut p.buf, p.len)
}

const T0: Instant = Instant::ZERO;
const TO_OUTSIDE: Verdict = Verdict::Forward(Side::Outside);
const TO_INSIDE: Verdict = Verdict::Forward(Side::Inside);

/// Source and destination addresses.
fn addrs(bytes: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let (ip, _) = Ipv4Header::from_slice(bytes).expect("ipv4");
    (ip.source.into(), ip.destination.into())
}

// ---------------------------------------------------------------- checksums and round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Outbound, the reply inbound, an error about the outbound packet coming in, and an error
    /// about the reply going out, under every preset: every checksum right, and each translated
    /// back exactly.
    #[test]
    fn rfc5508_req4_req5_checksums_valid_and_round_trip(
        spec in outbound_spec(),
        sub in 0..SUBS.len(),
        sport in 1u16..,
        remote in 0..REMOTES.len(),
        dport in 1u16..,
        in_kind in error_kind(),
        out_kind in error_kind(),
        in_cut in 0u16..=1000,
        out_cut in 0u16..=1000,
        third_party in any::<bool>(),
        preset in proptest::sample::select(Preset::ALL.to_vec()),
    ) {
        let mut e = engine_with(|c| {
            c.behavior = preset.behavior();
            c.lab = true;
        });
        let internal = ep(SUBS[sub], sport);
        let echo = matches!(spec.l4, L4::Echo { .. });
        let remote = ep(REMOTES[remote], if echo { 0 } else { dport });
        let mut p = build(&spec, internal, remote);
        let original = p.bytes().to_vec();
        prop_assert_eq!(run(&mut e, T0, Side::Inside, &mut p), TO_OUTSIDE);
        assert_checksums(p.bytes());
        let (x, to) = endpoints(p.bytes());
        prop_assert!(POOL.contains(&x.addr));
        prop_assert_eq!(to.addr, remote.addr);
        prop_assert_eq!(p.buf[8], spec.ttl - 1);
        let ihl = usize::from(original[0] & 0x0f) * 4;
        prop_assert_eq!(&p.bytes()[20..ihl], &original[20..ihl], "IP options untouched");
        let hl = l4_header_len(&original);
        prop_assert_eq!(payload_of(p.bytes(), hl), payload_of(&original, hl));
        if matches!(spec.l4, L4::Udp { zero_checksum: true }) {
            prop_assert_eq!(&p.bytes()[ihl + 6..ihl + 8], &[0, 0], "UDP checksum 0 stays 0");
        }
        let translated = p.bytes().to_vec();

        // The reply comes back to exactly the original endpoints.
        let mut r = reply_to(&translated);
        let sent_reply = r.bytes().to_vec();
        prop_assert_eq!(run(&mut e, T0, Side::Outside, &mut r), TO_INSIDE);
        assert_checksums(r.bytes());
        let (rs, rd) = endpoints(r.bytes());
        prop_assert_eq!(rd, internal);
        if !echo {
            prop_assert_eq!(rs, remote);
        }
        let delivered = r.bytes().to_vec();

        // An error about the translated packet, from the remote or a router on the way.
        let from = if third_party { ROUTER_OUT } else { remote.addr };
        let cut = quote_len(&translated, in_cut);
        let mut err = icmp_error(from, x.addr, in_kind, &translated, cut);
        prop_assert_eq!(run(&mut e, T0, Side::Outside, &mut err), TO_INSIDE);
        assert_checksums(err.bytes());
        prop_assert_eq!(addrs(err.bytes()), (from, internal.addr));
        let ihl = usize::from(err.buf[0] & 0x0f) * 4;
        prop_assert_eq!((err.buf[ihl], err.buf[ihl + 1]), in_kind, "type and code kept");
        assert_quote_restored(quote_of(err.bytes()), &original)?;

        // An error about the delivered reply, from the subscriber or a router inside.
        let from = if third_party { ROUTER_IN } else { internal.addr };
        let cut = quote_len(&delivered, out_cut);
        let mut err = icmp_error(from, remote.addr, out_kind, &delivered, cut);
        prop_assert_eq!(run(&mut e, T0, Side::Inside, &mut err), TO_OUTSIDE);
        assert_checksums(err.bytes());
        prop_assert_eq!(addrs(err.bytes()), (x.addr, remote.addr));
        assert_quote_restored(quote_of(err.bytes()), &sent_reply)?;

        // RFC 5508 REQ-6: errors made and deleted nothing.
        prop_assert_eq!(e.session_count(), 1);
        prop_assert_eq!(e.counters().total_drops(), 0);
    }

    /// RFC 4787 REQ-9/9a, RFC 5382 REQ-8, RFC 5508 REQ-7: a hairpinned packet, its answer and an
    /// error about it all keep valid checksums and translate back to the original endpoints.
    #[test]
    fn rfc4787_req9_hairpin_checksums_valid_and_round_trip(
        spec in hairpin_spec(),
        sport in 1u16..,
        dport in 1u16..,
        kind in error_kind(),
        cut in 0u16..=1000,
    ) {
        let mut e = engine_with(|_| {});
        let (a, b) = (ep(SUBS[0], sport), ep(SUBS[1], dport));
        // B has a mapping of the same protocol, made by talking to a server.
        let mut opener = build(&spec, b, ep(REMOTES[0], 3478));
        prop_assert_eq!(run(&mut e, T0, Side::Inside, &mut opener), TO_OUTSIDE);
        let xb = endpoints(opener.bytes()).0;

        let mut p = build(&spec, a, xb);
        let original = p.bytes().to_vec();
        prop_assert_eq!(run(&mut e, T0, Side::Inside, &mut p), TO_INSIDE);
        assert_checksums(p.bytes());
        let (xa, to) = endpoints(p.bytes());
        prop_assert!(POOL.contains(&xa.addr), "REQ-9a: external source");
        prop_assert_eq!(to, b);
        let hairpinned = p.bytes().to_vec();

        let mut r = reply_to(&hairpinned);
        prop_assert_eq!(run(&mut e, T0, Side::Inside, &mut r), TO_INSIDE);
        assert_checksums(r.bytes());
        prop_assert_eq!(endpoints(r.bytes()), (xb, a));

        // B answers the hairpinned packet with an error; A gets it about its own packet.
        let cut = quote_len(&hairpinned, cut);
        let mut err = icmp_error(b.addr, xa.addr, kind, &hairpinned, cut);
        prop_assert_eq!(run(&mut e, T0, Side::Inside, &mut err), TO_INSIDE);
        assert_checksums(err.bytes());
        prop_assert_eq!(addrs(err.bytes()), (xb.addr, a.addr));
        assert_quote_restored(quote_of(err.bytes()), &original)?;
        prop_assert_eq!(e.counters().hairpinned_packets, 3);
    }
}

// ---------------------------------------------------------------- reference model (UDP)

/// A few internal endpoints, two of them on one address (paired pooling shows).
const INTERNALS: [Endpoint; 3] = [
    Endpoint::new(SUBS[0], 5000),
    Endpoint::new(SUBS[0], 5001),
    Endpoint::new(SUBS[1], 5000),
];
/// A few remotes: two ports on one address tell address-dependent from port-dependent.
const REMOTE_EPS: [Endpoint; 3] = [
    Endpoint::new(REMOTES[0], 3478),
    Endpoint::new(REMOTES[0], 3479),
    Endpoint::new(REMOTES[1], 3478),
];
const UDP_TIMER: u32 = 120;
const HOLD_DOWN: u32 = 120;

#[derive(Debug, Clone)]
enum Op {
    /// UDP from `INTERNALS[i]` to `REMOTE_EPS[r]`.
    Out(usize, usize),
    /// UDP from `REMOTE_EPS[r]` to an external endpoint seen before (index modulo their number).
    InSeen(usize, usize),
    /// UDP from `REMOTE_EPS[r]` to a pool address and any port.
    InPool(usize, usize, u16),
    /// UDP from `INTERNALS[i]` to an external endpoint seen before: hairpinned.
    Hairpin(usize, usize),
    /// Time passes by this many milliseconds, then the timers run.
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..INTERNALS.len(), 0..REMOTE_EPS.len()).prop_map(|(i, r)| Op::Out(i, r)),
        4 => (0..REMOTE_EPS.len(), any::<usize>()).prop_map(|(r, k)| Op::InSeen(r, k)),
        1 => (0..REMOTE_EPS.len(), 0..POOL.len(), 1u16..).prop_map(|(r, a, p)| Op::InPool(r, a, p)),
        1 => (0..INTERNALS.len(), any::<usize>()).prop_map(|(i, k)| Op::Hairpin(i, k)),
        2 => (0u64..150_000).prop_map(Op::Wait),
    ]
}

/// What RFC 4787 says the NAT's UDP state is: mappings keyed by internal endpoint and the remote
/// part the mapping behaviour looks at, sessions keyed by internal and remote endpoint.
struct Model {
    mapping: MappingBehavior,
    filtering: FilteringBehavior,
    /// (internal, remote key) -> external endpoint.
    maps: HashMap<(Endpoint, Endpoint), Endpoint>,
    /// (internal, remote) -> (external, last refreshed, in seconds).
    sessions: HashMap<(Endpoint, Endpoint), (Endpoint, u32)>,
    /// External endpoints released, and when (RFC 6888 REQ-8 hold-down).
    released: HashMap<Endpoint, u32>,
}

impl Model {
    fn remote_key(&self, r: Endpoint) -> Endpoint {
        match self.mapping {
            MappingBehavior::EndpointIndependent => Endpoint::UNSPECIFIED,
            MappingBehavior::AddressDependent => Endpoint::new(r.addr, 0),
            MappingBehavior::AddressAndPortDependent => r,
        }
    }

    fn mapping_of(&self, ext: Endpoint) -> Option<Endpoint> {
        self.maps
            .iter()
            .find(|(_, x)| **x == ext)
            .map(|((internal, _), _)| *internal)
    }

    /// An outbound packet: the external endpoint it must leave from, if the model knows it.
    /// `got` is what the engine chose; a new mapping's endpoint is checked against the rules.
    fn outbound(
        &mut self,
        i: Endpoint,
        r: Endpoint,
        now: u32,
        got: Endpoint,
    ) -> Result<(), TestCaseError> {
        if let Some((ext, seen)) = self.sessions.get_mut(&(i, r)) {
            // RFC 4787 REQ-6: outbound packets refresh.
            *seen = now;
            prop_assert_eq!(got, *ext, "existing session keeps its endpoint");
            return Ok(());
        }
        let key = (i, self.remote_key(r));
        let ext = match self.maps.get(&key) {
            // RFC 4787 REQ-1 (EIM), and the ADM/APDM definitions of section 4.1.
            Some(ext) => {
                prop_assert_eq!(got, *ext, "mapping reused for {:?}", key);
                *ext
            }
            None => {
                prop_assert!(POOL.contains(&got.addr));
                // RFC 4787 REQ-3: no two mappings share an external endpoint.
                prop_assert!(
                    !self.maps.values().any(|x| *x == got),
                    "{} reused while live",
                    got
                );
                // RFC 4787 REQ-2: paired pooling.
                for ((other, _), x) in &self.maps {
                    if other.addr == i.addr {
                        prop_assert_eq!(x.addr, got.addr, "paired pooling");
                    }
                }
                // RFC 6888 REQ-8: a released endpoint rests before reuse.
                if let Some(at) = self.released.get(&got) {
                    prop_assert!(
                        now >= at + HOLD_DOWN,
                        "{} reused {} s after release",
                        got,
                        now - at
                    );
                }
                self.maps.insert(key, got);
                got
            }
        };
        self.sessions.insert((i, r), (ext, now));
        Ok(())
    }

    /// An inbound packet from `r` to `ext`: where it goes, or why it is dropped.
    fn inbound(&mut self, r: Endpoint, ext: Endpoint, now: u32) -> Result<Endpoint, DropReason> {
        if let Some(((i, _), _)) = self.sessions.iter().find(|(k, v)| k.1 == r && v.0 == ext) {
            return Ok(*i);
        }
        let i = self.mapping_of(ext).ok_or(DropReason::NoMapping)?;
        let allowed = match self.filtering {
            FilteringBehavior::EndpointIndependent => true,
            FilteringBehavior::AddressDependent => self
                .sessions
                .iter()
                .any(|(k, v)| v.0 == ext && k.1.addr == r.addr),
            FilteringBehavior::AddressAndPortDependent => false,
        };
        // The internal endpoint already talks to `r` through another of its mappings (only
        // under dependent mapping): a second session for the pair would make its outbound
        // key ambiguous, so the packet is refused.
        if !allowed || self.sessions.contains_key(&(i, r)) {
            return Err(DropReason::Filtered);
        }
        self.sessions.insert((i, r), (ext, now));
        Ok(i)
    }

    /// RFC 4787 REQ-5: a session lives `UDP_TIMER` seconds after its last refresh, its mapping
    /// as long as one of its sessions.
    fn expire(&mut self, now: u32) {
        self.sessions
            .retain(|_, (_, seen)| now <= *seen + UDP_TIMER);
        let live: HashSet<Endpoint> = self.sessions.values().map(|v| v.0).collect();
        let released = &mut self.released;
        self.maps.retain(|_, x| {
            let keep = live.contains(x);
            if !keep {
                released.insert(*x, now);
            }
            keep
        });
    }
}

fn check_model(
    mapping: MappingBehavior,
    filtering: FilteringBehavior,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut e = engine_with(|c| {
        c.lab = true;
        c.behavior.mapping = mapping;
        c.behavior.filtering = filtering;
        c.behavior.timers.udp = UDP_TIMER;
        c.behavior.timers.port_hold_down = HOLD_DOWN;
    });
    let mut m = Model {
        mapping,
        filtering,
        maps: HashMap::new(),
        sessions: HashMap::new(),
        released: HashMap::new(),
    };
    let mut now = Instant::from_millis(1_000);
    let mut seen: Vec<Endpoint> = Vec::new();
    for op in ops {
        // The inbound packet of this step, if any: from a remote (or, hairpinned, from an
        // external endpoint) to an external endpoint.
        let inbound = match *op {
            Op::Out(i, r) => {
                let (i, r) = (INTERNALS[i], REMOTE_EPS[r]);
                let mut p = super::tests::udp(i, r, b"out");
                prop_assert_eq!(
                    run(&mut e, now, Side::Inside, &mut p),
                    Verdict::Forward(Side::Outside)
                );
                let (x, to) = endpoints(p.bytes());
                prop_assert_eq!(to, r);
                m.outbound(i, r, now.as_secs(), x)?;
                if !seen.contains(&x) {
                    seen.push(x);
                }
                None
            }
            Op::InSeen(_, _) | Op::Hairpin(_, _) if seen.is_empty() => None,
            Op::InSeen(r, k) => Some((REMOTE_EPS[r], seen[k % seen.len()], None)),
            Op::InPool(r, a, port) => Some((REMOTE_EPS[r], ep(POOL[a], port), None)),
            Op::Hairpin(i, k) => {
                let (i, target) = (INTERNALS[i], seen[k % seen.len()]);
                let mut p = super::tests::udp(i, target, b"hairpin");
                let v = run(&mut e, now, Side::Inside, &mut p);
                // RFC 4787 REQ-9: the outbound half uses or makes a session to the target
                // like any outbound packet, whatever becomes of the inbound half.
                let x = e
                    .sessions()
                    .find(|s| s.internal == i && s.remote == target)
                    .map(|s| s.external);
                let x = x.ok_or_else(|| TestCaseError::fail("no outbound half"))?;
                m.outbound(i, target, now.as_secs(), x)?;
                if !seen.contains(&x) {
                    seen.push(x);
                }
                // REQ-9a: the inbound half comes from the sender's external endpoint.
                Some((x, target, Some((v, p))))
            }
            Op::Wait(ms) => {
                now = now + Duration::from_millis(ms);
                e.handle_timeout(now);
                m.expire(now.as_secs());
                None
            }
        };
        if let Some((remote, ext, hairpinned)) = inbound {
            let (v, p) = match hairpinned {
                Some(done) => done,
                None => {
                    let mut p = super::tests::udp(remote, ext, b"in");
                    (run(&mut e, now, Side::Outside, &mut p), p)
                }
            };
            match m.inbound(remote, ext, now.as_secs()) {
                Ok(i) => {
                    prop_assert_eq!(v, Verdict::Forward(Side::Inside), "{} -> {}", remote, ext);
                    prop_assert_eq!(endpoints(p.bytes()), (remote, i));
                }
                Err(reason) => prop_assert_eq!(v, Verdict::Drop(reason), "{} -> {}", remote, ext),
            }
        }
        // The whole state, after every step.
        let mut want: Vec<(Endpoint, Endpoint, Endpoint)> = m
            .sessions
            .iter()
            .map(|((i, r), (x, _))| (*i, *x, *r))
            .collect();
        let mut got: Vec<(Endpoint, Endpoint, Endpoint)> = e
            .sessions()
            .map(|s| (s.internal, s.external, s.remote))
            .collect();
        want.sort();
        got.sort();
        prop_assert_eq!(got, want, "sessions");
        prop_assert_eq!(e.mapping_count(), m.maps.len(), "mappings");
    }
    Ok(())
}

macro_rules! model_tests {
    ($($name:ident: $mapping:ident, $filtering:ident;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            $(
                #[test]
                fn $name(ops in proptest::collection::vec(op(), 1..60)) {
                    check_model(MappingBehavior::$mapping, FilteringBehavior::$filtering, &ops)?;
                }
            )*
        }
    };
}

model_tests! {
    rfc4787_req1_req8_eim_eif_udp_model: EndpointIndependent, EndpointIndependent;
    rfc4787_req1_req8_eim_adf_udp_model: EndpointIndependent, AddressDependent;
    rfc4787_req1_req8_eim_apdf_udp_model: EndpointIndependent, AddressAndPortDependent;
    rfc4787_adm_eif_udp_model: AddressDependent, EndpointIndependent;
    rfc4787_adm_adf_udp_model: AddressDependent, AddressDependent;
    rfc4787_adm_apdf_udp_model: AddressDependent, AddressAndPortDependent;
    rfc4787_apdm_eif_udp_model: AddressAndPortDependent, EndpointIndependent;
    rfc4787_apdm_adf_udp_model: AddressAndPortDependent, AddressDependent;
    rfc4787_apdm_apdf_udp_model: AddressAndPortDependent, AddressAndPortDependent;
}

/// Found by the model: under a dependent mapping, an inbound packet that filtering lets in
/// through one mapping of an internal endpoint, from a remote the endpoint already talks to
/// through another of its mappings, made a second session for the same (internal, remote) pair
/// (a debug assertion in the session table; in release, an ambiguous outbound key).
#[test]
fn regression_dependent_mapping_duplicate_session_for_pair() {
    for (mapping, filtering, r1, r2) in [
        (
            MappingBehavior::AddressAndPortDependent,
            FilteringBehavior::AddressDependent,
            REMOTE_EPS[0],
            REMOTE_EPS[1],
        ),
        (
            MappingBehavior::AddressDependent,
            FilteringBehavior::EndpointIndependent,
            REMOTE_EPS[0],
            REMOTE_EPS[2],
        ),
    ] {
        let mut e = engine_with(|c| {
            c.lab = true;
            c.behavior.mapping = mapping;
            c.behavior.filtering = filtering;
        });
        let i = INTERNALS[0];
        let mut out = |r: Endpoint| {
            let mut p = super::tests::udp(i, r, b"x");
            assert_eq!(
                run(&mut e, Instant::ZERO, Side::Inside, &mut p),
                Verdict::Forward(Side::Outside)
            );
            endpoints(p.bytes()).0
        };
        let x1 = out(r1);
        let x2 = out(r2);
        assert_ne!(x1, x2);
        let mut p = super::tests::udp(r2, x1, b"x");
        assert_eq!(
            run(&mut e, Instant::ZERO, Side::Outside, &mut p),
            Verdict::Drop(DropReason::Filtered),
            "{mapping:?} {filtering:?}"
        );
        assert_eq!(e.session_count(), 2);
        // The pair's own session still works both ways.
        let mut p = super::tests::udp(r2, x2, b"x");
        assert_eq!(
            run(&mut e, Instant::ZERO, Side::Outside, &mut p),
            Verdict::Forward(Side::Inside)
        );
    }
}

// ---------------------------------------------------------------- packet mixes

/// Ports drawn from a small set, so that flows repeat, also within one batch.
fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(5000u16), Just(5001), Just(40000), 1u16..]
}

/// A packet of a random mix: valid flows both ways over a few endpoints, and broken ones.
#[derive(Debug, Clone)]
enum Gen {
    /// A valid packet from a subscriber to a remote.
    Out(Spec, usize, u16, usize, u16),
    /// A valid packet from a remote to a pool address (an echo answers identifier `port`).
    In(Spec, usize, u16, usize, u16),
    /// A valid packet from a subscriber to a pool address (hairpinning).
    Hairpin(Spec, usize, u16, usize, u16),
    /// A valid packet with one byte changed.
    Flipped(Box<Gen>, usize, u8),
    /// A valid packet cut short.
    Cut(Box<Gen>, usize),
    /// Any bytes.
    Junk(Vec<u8>),
}

fn any_spec() -> impl Strategy<Value = Spec> {
    spec_with(l4(any::<u8>(), true)).prop_map(|mut s| {
        // TTL 1 now and then, to exercise the in-place ICMP answer.
        s.ttl = if s.ident % 16 == 0 { 1 } else { s.ttl };
        s
    })
}

fn mixed() -> impl Strategy<Value = Gen> {
    let out = (any_spec(), 0..SUBS.len(), port(), 0..REMOTES.len(), port())
        .prop_map(|(s, a, p, r, q)| Gen::Out(s, a, p, r, q));
    let inb = (any_spec(), 0..REMOTES.len(), port(), 0..POOL.len(), port())
        .prop_map(|(s, r, q, a, p)| Gen::In(s, r, q, a, p));
    let hairpin = (any_spec(), 0..SUBS.len(), port(), 0..POOL.len(), port())
        .prop_map(|(s, a, p, x, q)| Gen::Hairpin(s, a, p, x, q));
    let valid = prop_oneof![4 => out, 4 => inb, 1 => hairpin];
    prop_oneof![
        6 => valid.clone(),
        1 => (valid.clone(), any::<usize>(), 1u8..)
            .prop_map(|(g, i, x)| Gen::Flipped(Box::new(g), i, x)),
        1 => (valid, any::<usize>()).prop_map(|(g, n)| Gen::Cut(Box::new(g), n)),
        1 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Gen::Junk),
    ]
}

impl Gen {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Gen::Out(s, a, p, r, q) => build(s, ep(SUBS[*a], *p), ep(REMOTES[*r], *q))
                .bytes()
                .to_vec(),
            Gen::Hairpin(s, a, p, x, q) => build(s, ep(SUBS[*a], *p), ep(POOL[*x], *q))
                .bytes()
                .to_vec(),
            Gen::In(s, r, q, a, p) => match s.l4 {
                // An echo reply to identifier `p`: the answer to a request from the pool.
                L4::Echo { .. } => {
                    let request = build(s, ep(POOL[*a], *p), ep(REMOTES[*r], 0));
                    let mut v = reply_to(request.bytes()).bytes().to_vec();
                    v[8] = s.ttl;
                    v[10..12].fill(0);
                    let ihl = usize::from(v[0] & 0x0f) * 4;
                    let sum = ones_complement(&v[..ihl]);
                    v[10..12].copy_from_slice(&sum.to_be_bytes());
                    v
                }
                _ => build(s, ep(REMOTES[*r], *q), ep(POOL[*a], *p))
                    .bytes()
                    .to_vec(),
            },
            Gen::Flipped(g, i, x) => {
                let mut v = g.bytes();
                let n = v.len();
                v[i % n] ^= x;
                v
            }
            Gen::Cut(g, n) => {
                let mut v = g.bytes();
                v.truncate(n % (v.len() + 1));
                v
            }
            Gen::Junk(v) => v.clone(),
        }
    }
}

/// The engines the mixed-traffic properties run: `variant` 0 is a full cone; 1 symmetric
/// (address- and port-dependent mapping and filtering, a lab setting); 2 a full cone that refreshes on
/// outbound packets only, keeps the TTL and has 576-byte MTUs both ways (so DF packets of the
/// generators are sometimes too big); 3 the RFC 6888 CGN defaults; 4 a full cone that gives back
/// the kernel's hop, as behind a TUN (TTLs go up by one, 255 stays).
fn mix_engine(variant: u8) -> Engine {
    engine_with(|c| {
        c.behavior = match variant {
            1 => Preset::Symmetric.behavior(),
            3 => Preset::Rfc6888Cgn.behavior(),
            _ => Preset::FullCone.behavior(),
        };
        // Symmetric NAT is what RFC 4787 REQ-1 forbids: a lab setting.
        c.lab = variant == 1;
        if variant == 2 {
            c.behavior.refresh = Refresh::Outbound;
            c.behavior.ttl = crate::config::TtlHandling::Keep;
            c.behavior.outside_mtu = 576;
            c.behavior.inside_mtu = 576;
        }
        if variant == 4 {
            c.behavior.ttl = crate::config::TtlHandling::RestoreKernelHop;
        }
        c.limits.max_sessions = 64;
        c.limits.max_mappings = 32;
        c.limits.max_held_syns = 4;
    })
}

/// The flows of [`established_flows_batched_equal_one_by_one`]: (TCP, subscriber, its port,
/// remote, its port).
const LANE_FLOWS: [(bool, usize, u16, usize, u16); 4] = [
    (false, 0, 5000, 0, 53),
    (false, 1, 40_000, 1, 443),
    (true, 0, 5001, 1, 443),
    (true, 1, 5000, 0, 80),
];

/// Opens [`LANE_FLOWS`] (a UDP datagram out; SYN out, SYN-ACK in, ACK out) and returns each
/// flow's external endpoint.
fn open_lane_flows(e: &mut Engine) -> Vec<Endpoint> {
    let segment = |flags| Spec {
        l4: L4::Tcp {
            flags,
            seq: 1,
            ack: 1,
            window: 1000,
            options: Vec::new(),
        },
        ip_options: Vec::new(),
        ttl: 64,
        df: true,
        ident: 1,
        payload: Vec::new(),
    };
    let datagram = Spec {
        l4: L4::Udp {
            zero_checksum: false,
        },
        ..segment(0)
    };
    let mut send = |side, spec: &Spec, src, dst| {
        let mut p = build(spec, src, dst);
        let v = e.process(Instant::ZERO, side, &mut p.buf, p.len);
        assert!(matches!(v, Verdict::Forward(_)), "opening: {v:?}");
    };
    for &(tcp, a, p, r, q) in &LANE_FLOWS {
        let (internal, remote) = (ep(SUBS[a], p), ep(REMOTES[r], q));
        if tcp {
            send(Side::Inside, &segment(SYN), internal, remote);
        } else {
            send(Side::Inside, &datagram, internal, remote);
        }
    }
    let external = |e: &Engine, internal, remote| {
        e.sessions()
            .find(|s| s.internal == internal && s.remote == remote)
            .map(|s| s.external)
            .expect("opened flow")
    };
    let externals: Vec<Endpoint> = LANE_FLOWS
        .iter()
        .map(|&(_, a, p, r, q)| external(e, ep(SUBS[a], p), ep(REMOTES[r], q)))
        .collect();
    let mut send = |side, spec: &Spec, src, dst| {
        let mut p = build(spec, src, dst);
        let v = e.process(Instant::ZERO, side, &mut p.buf, p.len);
        assert!(matches!(v, Verdict::Forward(_)), "handshake: {v:?}");
    };
    for (&(tcp, a, p, r, q), &x) in LANE_FLOWS.iter().zip(&externals) {
        if tcp {
            send(Side::Outside, &segment(SYN | ACK), ep(REMOTES[r], q), x);
            send(
                Side::Inside,
                &segment(ACK),
                ep(SUBS[a], p),
                ep(REMOTES[r], q),
            );
        }
    }
    externals
}

/// Everything observable about an engine after a step: counters, events, transmits (with
/// their bytes) and sessions.
type Observed = (
    Counters,
    Vec<Event>,
    Vec<(Transmit, Vec<u8>)>,
    Vec<SessionInfo>,
);

fn observe(e: &mut Engine) -> Observed {
    let events = std::iter::from_fn(|| e.poll_event()).collect();
    let mut buf = [0u8; TRANSMIT_SLOT];
    let tx = std::iter::from_fn(|| {
        e.poll_transmit(&mut buf)
            .map(|t| (t, buf[..t.len].to_vec()))
    })
    .collect();
    let mut sessions: Vec<SessionInfo> = e.sessions().collect();
    sessions.sort_by_key(|s| (s.proto, s.internal, s.remote));
    (e.counters().clone(), events, tx, sessions)
}

/// `packets` through `single` one at a time and through `batched` with one `process_batch`
/// call: the same verdicts, the same bytes, and the same counters, events, transmits and
/// sessions afterwards.
fn batch_matches_one_by_one(
    single: &mut Engine,
    batched: &mut Engine,
    now: Instant,
    side: Side,
    mut one: Vec<Pkt>,
) -> Result<(), TestCaseError> {
    let mut many = one.clone();
    let want: Vec<Verdict> = one
        .iter_mut()
        .map(|p| single.process(now, side, &mut p.buf, p.len))
        .collect();
    let mut bufs: Vec<PacketBuf<'_>> = many
        .iter_mut()
        .map(|p| PacketBuf {
            len: p.len,
            buf: &mut p.buf,
        })
        .collect();
    let mut got = vec![Verdict::Held; bufs.len()];
    batched.process_batch(now, side, &mut bufs, &mut got);
    prop_assert_eq!(&got, &want);
    for (a, b) in one.iter().zip(&many) {
        prop_assert_eq!(&a.buf, &b.buf);
    }
    prop_assert_eq!(observe(batched), observe(single));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `process_batch` is `process` in a loop: same verdicts, same bytes, same counters, events,
    /// transmits and sessions, for mixes with repeated flows, new flows, hairpinned flows, junk,
    /// both sides, and batches longer than `BATCH`, under each of [`mix_engine`]'s behaviours
    /// (the batch's fast lane must decide exactly as the general path would).
    #[test]
    fn batch_equals_one_by_one(
        variant in 0u8..5,
        batches in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(mixed(), 1..48), 0u64..20_000),
            1..5,
        ),
    ) {
        let mut single = mix_engine(variant);
        let mut batched = mix_engine(variant);
        let mut now = Instant::ZERO;
        for (outside, gens, wait) in &batches {
            let side = if *outside { Side::Outside } else { Side::Inside };
            let packets = gens.iter().map(|g| Pkt::new(&g.bytes())).collect();
            batch_matches_one_by_one(&mut single, &mut batched, now, side, packets)?;
            now = now + Duration::from_millis(*wait);
            single.handle_timeout(now);
            batched.handle_timeout(now);
            prop_assert_eq!(observe(&mut batched), observe(&mut single));
        }
    }

    /// The batch's fast lane decides and writes exactly what the general path does on
    /// established flows: packets of a few open UDP and TCP flows, both ways, with any TCP flags
    /// (FIN, RST, SYN again), TTLs down to 1, DF and sizes around a 576-byte MTU, IP options
    /// now and then (which keep a packet off the lane), in batches with time passing between
    /// them, under each of [`mix_engine`]'s behaviours. (The mixed-traffic property above
    /// reaches the lane too, but rarely on an established flow.)
    #[test]
    fn established_flows_batched_equal_one_by_one(
        variant in 0u8..5,
        batches in proptest::collection::vec(
            (
                proptest::collection::vec(
                    (any::<bool>(), 0..LANE_FLOWS.len(), spec_with(l4(any::<u8>(), false))),
                    1..48,
                ),
                0u64..20_000,
            ),
            1..4,
        ),
    ) {
        let mut single = mix_engine(variant);
        let mut batched = mix_engine(variant);
        let externals = open_lane_flows(&mut single);
        prop_assert_eq!(open_lane_flows(&mut batched), externals.clone());
        prop_assert_eq!(observe(&mut batched), observe(&mut single));
        let mut now = Instant::ZERO;
        for (steps, wait) in &batches {
            now = now + Duration::from_millis(*wait);
            single.handle_timeout(now);
            batched.handle_timeout(now);
            for side in [Side::Inside, Side::Outside] {
                let packets: Vec<Pkt> = steps
                    .iter()
                    .filter(|(outside, ..)| *outside == (side == Side::Outside))
                    .map(|(_, f, spec)| {
                        let (tcp, a, p, r, q) = LANE_FLOWS[*f];
                        let mut spec = spec.clone();
                        match (&spec.l4, tcp) {
                            (L4::Udp { .. }, true) => {
                                spec.l4 = L4::Tcp {
                                    flags: ACK,
                                    seq: 1,
                                    ack: 1,
                                    window: 1000,
                                    options: Vec::new(),
                                }
                            }
                            (L4::Tcp { .. }, false) => {
                                spec.l4 = L4::Udp { zero_checksum: false }
                            }
                            _ => {}
                        }
                        // Mostly lane-shaped: no IP options, a TTL of 1 now and then.
                        if spec.ident % 4 != 0 {
                            spec.ip_options.clear();
                        }
                        if spec.ident % 16 == 1 {
                            spec.ttl = 1;
                        }
                        let (internal, remote) = (ep(SUBS[a], p), ep(REMOTES[r], q));
                        match side {
                            Side::Inside => build(&spec, internal, remote),
                            Side::Outside => build(&spec, remote, externals[*f]),
                        }
                    })
                    .collect();
                batch_matches_one_by_one(&mut single, &mut batched, now, side, packets)?;
            }
        }
    }

    /// Any bytes on either side: no panic, and each call is counted exactly once, under the
    /// counter its verdict names. What is forwarded is IPv4 with a valid header checksum; what
    /// is answered is a valid ICMP error.
    #[test]
    fn every_packet_counted_exactly_once(
        steps in proptest::collection::vec((any::<bool>(), mixed()), 1..64),
    ) {
        let mut e = mix_engine(0);
        for (i, (outside, g)) in steps.iter().enumerate() {
            let side = if *outside { Side::Outside } else { Side::Inside };
            let before = e.counters().clone();
            let mut p = Pkt::new(&g.bytes());
            let v = e.process(Instant::from_secs(i as u64), side, &mut p.buf, p.len);
            let after = e.counters();
            let total = |c: &Counters| {
                c.total_drops() + c.forwarded_packets[0] + c.forwarded_packets[1] + c.held_packets
            };
            prop_assert_eq!(total(after), total(&before) + 1, "{:?}", v);
            match v {
                Verdict::Forward(_) => {
                    let dir = match side.arrival_direction() {
                        Direction::Outbound => 0,
                        Direction::Inbound => 1,
                    };
                    let (a, b) = (after.forwarded_packets[dir], before.forwarded_packets[dir]);
                    prop_assert_eq!(a, b + 1);
                    let (ip, _) = Ipv4Header::from_slice(p.bytes()).expect("forwarded is IPv4");
                    prop_assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                }
                Verdict::Drop(r) => prop_assert_eq!(after.drops(r), before.drops(r) + 1),
                Verdict::Reply { len, reason, .. } => {
                    prop_assert_eq!(after.drops(reason), before.drops(reason) + 1);
                    prop_assert_eq!(after.icmp_generated, before.icmp_generated + 1);
                    assert_checksums(&p.buf[..len]);
                }
                Verdict::Held => prop_assert_eq!(after.held_packets, before.held_packets + 1),
                Verdict::ForwardAt { .. } => prop_assert!(false, "no softwires in this engine"),
                Verdict::ToHost => {
                    prop_assert_eq!(after.to_host_packets, before.to_host_packets + 1)
                }
            }
        }
    }
}

// ---------------------------------------------------------------- reference model (TCP phases)

/// Short, distinct TCP timers (lab), so that sequences reach every expiry.
const TCP_OPEN: u32 = 30;
const TCP_ESTABLISHED: u32 = 100;
const TCP_CLOSE: u32 = 40;
const TCP_RST: u32 = 20;

/// What RFC 5382 and RFC 7857 section 2 say a TCP session has seen, and so its phase.
#[derive(Debug, Clone, Copy, Default)]
struct TcpSeen {
    syn_out: bool,
    syn_in: bool,
    fin_out: bool,
    fin_in: bool,
    rst: bool,
}

impl TcpSeen {
    fn phase(&self) -> TcpPhase {
        if self.rst {
            TcpPhase::Reset
        } else if self.fin_out && self.fin_in {
            TcpPhase::Closing
        } else if self.syn_out && self.syn_in {
            TcpPhase::Established
        } else {
            TcpPhase::Opening
        }
    }

    fn segment(&mut self, outbound: bool, flags: u8) {
        if flags & SYN != 0 {
            // A SYN after a reset or close starts a new connection on the same pair.
            if matches!(self.phase(), TcpPhase::Reset | TcpPhase::Closing) {
                *self = TcpSeen::default();
            }
            if outbound {
                self.syn_out = true;
            } else {
                self.syn_in = true;
            }
        }
        if flags & 0x01 != 0 {
            if outbound {
                self.fin_out = true;
            } else {
                self.fin_in = true;
            }
        }
        self.rst |= flags & RST != 0;
    }

    fn timeout(&self) -> u32 {
        match self.phase() {
            TcpPhase::Opening => TCP_OPEN,
            TcpPhase::Established => TCP_ESTABLISHED,
            TcpPhase::Closing => TCP_CLOSE,
            TcpPhase::Reset => TCP_RST,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TcpSession {
    seen: TcpSeen,
    /// Last refresh (outbound packets only, under the default refresh), in seconds.
    last_seen: u32,
    /// When it was made, in seconds.
    created: u32,
}

#[derive(Debug, Clone)]
enum TcpOp {
    Out(usize, u8),
    In(usize, u8),
    Wait(u64),
}

fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(SYN),
        Just(SYN | ACK),
        Just(ACK),
        Just(0x01 | ACK),
        Just(RST),
        Just(RST | ACK),
        Just(0x08 | ACK),
        any::<u8>(),
    ]
}

fn tcp_op() -> impl Strategy<Value = TcpOp> {
    prop_oneof![
        3 => (0..2usize, tcp_flags()).prop_map(|(r, f)| TcpOp::Out(r, f)),
        3 => (0..2usize, tcp_flags()).prop_map(|(r, f)| TcpOp::In(r, f)),
        2 => prop_oneof![0u64..10_000, 0u64..120_000].prop_map(TcpOp::Wait),
    ]
}

fn tcp_segment(src: Endpoint, dst: Endpoint, flags: u8) -> Pkt {
    let spec = Spec {
        l4: L4::Tcp {
            flags,
            seq: 1,
            ack: 1,
            window: 65535,
            options: Vec::new(),
        },
        ip_options: Vec::new(),
        ttl: 64,
        df: true,
        ident: 0,
        payload: Vec::new(),
    };
    build(&spec, src, dst)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RFC 5382 REQ-1/2/4/5 and RFC 7857 section 2 against a model: only a SYN opens a session
    /// from inside; from outside a bare SYN opens one through an existing mapping (EIF) or is
    /// held without one; every segment of a session passes; the phase follows the SYNs, FINs and
    /// RSTs seen; a session never goes before its phase's timer, and goes at the first look of
    /// the timer wheel after it.
    #[test]
    fn rfc5382_tcp_phase_model(ops in proptest::collection::vec(tcp_op(), 1..60)) {
        let mut e = engine_with(|c| {
            c.lab = true;
            let t = &mut c.behavior.timers;
            t.tcp_transitory_open = TCP_OPEN;
            t.tcp_established = TCP_ESTABLISHED;
            t.tcp_transitory_close = TCP_CLOSE;
            t.tcp_rst_linger = TCP_RST;
        });
        let recheck = TCP_CLOSE.min(TCP_RST);
        let internal = INTERNALS[0];
        let mut sessions: [Option<TcpSession>; 2] = [None, None];
        let mut ext: Option<Endpoint> = None;
        let mut last_ext = ep(POOL[0], 40000);
        let mut now = Instant::from_millis(1_000);
        let mut last_wait = 0;
        for op in &ops {
            let s = now.as_secs();
            match *op {
                TcpOp::Out(r, flags) => {
                    let mut p = tcp_segment(internal, REMOTE_EPS[r], flags);
                    let v = run(&mut e, now, Side::Inside, &mut p);
                    match &mut sessions[r] {
                        Some(sess) => {
                            prop_assert_eq!(v, Verdict::Forward(Side::Outside));
                            sess.seen.segment(true, flags);
                            sess.last_seen = s;
                        }
                        None if flags & SYN != 0 && flags & RST == 0 => {
                            prop_assert_eq!(v, Verdict::Forward(Side::Outside));
                            let x = endpoints(p.bytes()).0;
                            if let Some(old) = ext {
                                prop_assert_eq!(x, old, "RFC 5382 REQ-1: EIM");
                            }
                            ext = Some(x);
                            last_ext = x;
                            let mut seen = TcpSeen::default();
                            seen.segment(true, flags);
                            sessions[r] = Some(TcpSession { seen, last_seen: s, created: s });
                        }
                        None => prop_assert_eq!(v, Verdict::Drop(DropReason::TcpNoSession)),
                    }
                }
                TcpOp::In(r, flags) => {
                    let mut p = tcp_segment(REMOTE_EPS[r], ext.unwrap_or(last_ext), flags);
                    let v = run(&mut e, now, Side::Outside, &mut p);
                    let bare_syn = flags & (SYN | ACK | RST) == SYN;
                    match (&mut sessions[r], ext) {
                        (Some(sess), _) => {
                            prop_assert_eq!(v, Verdict::Forward(Side::Inside));
                            prop_assert_eq!(endpoints(p.bytes()).1, internal);
                            sess.seen.segment(false, flags);
                        }
                        (None, Some(_)) if bare_syn => {
                            prop_assert_eq!(v, Verdict::Forward(Side::Inside));
                            let mut seen = TcpSeen::default();
                            seen.segment(false, flags);
                            sessions[r] = Some(TcpSession { seen, last_seen: s, created: s });
                        }
                        (None, Some(_)) => {
                            prop_assert_eq!(v, Verdict::Drop(DropReason::TcpNoSession));
                        }
                        (None, None) if bare_syn => prop_assert_eq!(v, Verdict::Held),
                        (None, None) => prop_assert_eq!(v, Verdict::Drop(DropReason::NoMapping)),
                    }
                }
                TcpOp::Wait(ms) => {
                    now = now + Duration::from_millis(ms);
                    e.handle_timeout(now);
                    let s = now.as_secs();
                    // The timer wheel looks at a TCP session at least every `recheck` seconds
                    // after it last scheduled it (on creation or on a look), so an expired
                    // session is gone once both its deadline and that look have passed.
                    for (r, slot) in sessions.iter_mut().enumerate() {
                        let Some(sess) = *slot else { continue };
                        let deadline = sess.last_seen + sess.seen.timeout();
                        let phase = sess.seen.phase();
                        let alive = e.sessions().any(|x| x.remote == REMOTE_EPS[r]);
                        if s <= deadline {
                            prop_assert!(alive, "REQ-5: gone before its {:?} timer", phase);
                        } else if s > deadline && s >= last_wait.max(sess.created) + recheck {
                            prop_assert!(!alive, "{:?} session outlived its timer", phase);
                        }
                        if !alive {
                            *slot = None;
                        }
                    }
                    if sessions.iter().all(Option::is_none) {
                        ext = None;
                    }
                    last_wait = s;
                }
            }
            for (r, slot) in sessions.iter().enumerate() {
                let got = e.sessions().find(|x| x.remote == REMOTE_EPS[r]).and_then(|x| x.tcp);
                prop_assert_eq!(got, slot.map(|x| x.seen.phase()), "phase of session {}", r);
            }
            prop_assert_eq!(e.session_count(), sessions.iter().flatten().count());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A datagram in a longer buffer (Ethernet pads short frames to 60 bytes): translated as the
    /// datagram its IPv4 total length says, the padding left alone, and counted as IP bytes.
    #[test]
    fn padded_datagram_translated_and_counted_by_ip_length(
        spec in outbound_spec(),
        padding in proptest::collection::vec(any::<u8>(), 1..64),
        batch in any::<bool>(),
    ) {
        let mut e = engine_with(|_| {});
        let p = build(&spec, INTERNALS[0], REMOTE_EPS[0]);
        let datagram = p.len;
        let mut padded = p.bytes().to_vec();
        padded.extend_from_slice(&padding);
        let mut p = Pkt::new(&padded);
        let v = if batch {
            let mut bufs = [PacketBuf { len: p.len, buf: &mut p.buf }];
            let mut verdicts = [Verdict::Held];
            e.process_batch(T0, Side::Inside, &mut bufs, &mut verdicts);
            verdicts[0]
        } else {
            run(&mut e, T0, Side::Inside, &mut p)
        };
        prop_assert_eq!(v, TO_OUTSIDE);
        assert_checksums(&p.buf[..datagram]);
        prop_assert_eq!(&p.buf[datagram..p.len], &padding[..], "padding untouched");
        prop_assert_eq!(e.counters().forwarded_bytes, [datagram as u64, 0]);
    }
}
