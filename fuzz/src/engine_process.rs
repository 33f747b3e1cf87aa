//! The whole engine under a stream of operations decoded from fuzz input: packets on either
//! side (raw bytes, or shaped into valid IPv4/UDP/TCP/ICMP so that the input gets past the
//! parsers into the tables), replies to and ICMP errors about packets the engine forwarded,
//! batches, time passing, and drains. Tables are small so that they fill.
//!
//! Invariants checked after every step: no panic (debug assertions included); a forwarded
//! packet is IPv4 of unchanged length with a valid header checksum; an answer is an ICMP error
//! of at most 576 bytes with valid checksums; the verdict's own counter moved by one; tables
//! stay within their limits and every mapping is in use by a session.
//!
//! When the top bit of `preset` is set the engine also runs static NAT rules and a virtual
//! server over the same addresses ([`STATIC_RULES`]), so that packets reach the static session
//! table, exemptions and real-server selection too.
//!
//! When bit 6 of `preset` is set the engine is also a DS-Lite AFTR, and packets from the inside
//! arrive from B4s instead: wrapped in IPv6 from one of [`B4S`] (one outside `acl6`), shaped
//! ones as softwire packets (sometimes behind a Destination Options header), raw ones behind an
//! IPv6 header whose next header they choose, so that the IPv6 parser and its extension-header
//! walk get any bytes. The subscriber addresses behind the B4s are the plain subscribers' own,
//! so softwire and plain flows share private endpoints. Packets to B4s must be IPv6 from the
//! AFTR carrying valid IPv4.

use arbitrary::{Arbitrary, Unstructured};
use natgate_core::config::{Config, Preset};
use natgate_core::engine::{Engine, PacketBuf, TRANSMIT_SLOT};
use natgate_core::wire::checksum;
use natgate_core::{Counters, Direction, Instant, Side, Verdict};
use std::net::{Ipv4Addr, Ipv6Addr};

const POOL: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
const SUBS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(100, 64, 0, 10),
    Ipv4Addr::new(100, 64, 0, 11),
    Ipv4Addr::new(100, 64, 0, 1),
];
const REMOTES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 20),
    Ipv4Addr::new(192, 0, 2, 254),
];
const PORTS: [u16; 4] = [5000, 5001, 40000, 53];
const AFTR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Two B4s in `acl6`, one outside it.
const B4S: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 2),
];
/// Packets the engine forwarded, kept to answer or complain about.
const HISTORY: usize = 16;
const MAX_BATCH: usize = 40;

/// A 1:1 host NAT of the first subscriber (outside the pool), a bidirectional port forward on
/// the second pool address, and an exemption of the third remote; with a virtual server on the
/// second pool address (below) when the input asks for static NAT.
const STATIC_RULES: &str = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
src = "100.64.0.10/32"
action.translate.src = { addr = "192.0.2.10/32" }

[[rule]]
id = 2
direction = "inbound"
bidirectional = true
proto = "udp"
dst = "198.51.100.2/32"
dst-ports = 53
action.translate.dst = { addr = "100.64.0.11/32", port = 5000 }

[[rule]]
id = 3
direction = "outbound"
bidirectional = true
dst = "192.0.2.254/32"
action = "exempt"

[[virtual-server]]
address = "198.51.100.2"
port = 40000
protocol = "tcp"
scheduler = "weighted-round-robin"

[[virtual-server.real-servers]]
address = "100.64.0.10"
port = 5000

[[virtual-server.real-servers]]
address = "100.64.0.11"
port = 5001
weight = 2
"#;
/// Static sessions at most, so that the table fills.
const MAX_STATIC_SESSIONS: u32 = 8;

/// The rules and virtual servers of [`STATIC_RULES`].
#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Statics {
    rule: natgate_core::rules::RuleChain,
    virtual_server: Vec<natgate_core::vserver::VirtualServerSpec>,
}

/// The fuzz input: an engine setting and what happens to it.
#[derive(Debug, Arbitrary)]
pub struct Input {
    preset: u8,
    /// Bit 0: decrement (as the `bool` it once was, so old inputs replay as before); else
    /// bit 1: give back the kernel's hop, or keep.
    ttl: u8,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// One packet.
    Process { outside: bool, packet: Packet },
    /// Packets together through `process_batch`: `packets` over and over, `1 + len % 40` of
    /// them, so that one flow often comes several times in one batch.
    Batch {
        outside: bool,
        packets: [Packet; 3],
        len: u8,
    },
    /// Time passes (milliseconds, times 1000 when `long`), then the timers run.
    Wait { millis: u16, long: bool },
    /// The driver drains transmits and events.
    Drain,
}

#[derive(Debug, Arbitrary)]
enum Packet {
    /// Any bytes, `len % 65` of them.
    Raw { len: u8, bytes: [u8; 64] },
    /// A well-formed packet, possibly damaged afterwards.
    Shaped {
        shape: Shape,
        damage: Option<(u16, u8)>,
    },
    /// What the destination of a forwarded packet sends back (addresses and ports swapped).
    Reply { recent: u8 },
    /// An ICMP error about a forwarded packet, from its destination (or a router) to its source.
    ErrorAbout {
        recent: u8,
        msg_type: ErrorType,
        code: u8,
        router: bool,
        quote: u16,
    },
    /// A well-formed packet followed by `1 + padding % 48` bytes the IPv4 total length does
    /// not cover (as Ethernet pads short frames).
    Padded { shape: Shape, padding: u8 },
}

#[derive(Debug, Arbitrary)]
enum ErrorType {
    Unreachable,
    TimeExceeded,
    ParameterProblem,
}

#[derive(Debug, Arbitrary)]
struct Shape {
    src: Addr,
    dst: Addr,
    ttl: u8,
    df: bool,
    more_frags: bool,
    frag_offset: u16,
    ident: u16,
    ip_option_words: u8,
    transport: Transport,
    /// `payload_len % 1400` bytes counting up from `payload_start`.
    payload_len: u16,
    payload_start: u8,
}

#[derive(Debug, Arbitrary)]
enum Addr {
    Sub(u8),
    Remote(u8),
    Pool(u8),
    Any([u8; 4]),
}

#[derive(Debug, Arbitrary)]
enum Port {
    Known(u8),
    Any(u16),
}

#[derive(Debug, Arbitrary)]
enum Transport {
    Udp {
        sport: Port,
        dport: Port,
        zero_checksum: bool,
    },
    Tcp {
        sport: Port,
        dport: Port,
        flags: u8,
        option_words: u8,
    },
    Icmp {
        msg_type: u8,
        code: u8,
        ident: Port,
    },
}

impl Addr {
    fn get(&self) -> Ipv4Addr {
        match *self {
            Addr::Sub(i) => SUBS[usize::from(i) % SUBS.len()],
            Addr::Remote(i) => REMOTES[usize::from(i) % REMOTES.len()],
            Addr::Pool(i) => POOL[usize::from(i) % POOL.len()],
            Addr::Any(a) => Ipv4Addr::from(a),
        }
    }
}

impl Port {
    fn get(&self) -> u16 {
        match *self {
            Port::Known(i) => PORTS[usize::from(i) % PORTS.len()],
            Port::Any(p) => p,
        }
    }
}

/// What one run reached, for the seed corpus's test.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// Packets forwarded, by direction `[outbound, inbound]`.
    pub forwarded: [u64; 2],
    /// ICMP errors the engine answered with.
    pub replies: u64,
    /// Packets held.
    pub held: u64,
    /// Packets the engine sent on its own (`poll_transmit`).
    pub transmits: u64,
    /// Packets that left in IPv6 to a B4.
    pub to_b4: u64,
}

struct Harness {
    engine: Engine,
    /// Inside packets come from B4s ([`B4S`]).
    ds_lite: bool,
    /// Counts packets from B4s, to vary how they are wrapped.
    wrapped: usize,
    now: Instant,
    recent: Vec<Vec<u8>>,
    reached: Reached,
}

/// Runs one fuzz input. Panics when an invariant breaks.
pub fn run(data: &[u8]) -> Reached {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return Reached::default();
    };
    let preset = Preset::ALL[usize::from(input.preset) % Preset::ALL.len()];
    let mut c = Config::new(POOL.to_vec(), Ipv4Addr::new(100, 64, 0, 1));
    c.lab = true;
    c.behavior = preset.behavior();
    c.behavior.ttl = match (input.ttl & 1, input.ttl & 2) {
        (1, _) => natgate_core::config::TtlHandling::Decrement,
        (_, 0) => natgate_core::config::TtlHandling::Keep,
        _ => natgate_core::config::TtlHandling::RestoreKernelHop,
    };
    c.limits.max_sessions = 16;
    c.limits.max_mappings = 8;
    c.limits.max_held_syns = 4;
    c.limits.max_fragment_datagrams = 4;
    c.limits.max_held_fragments = 8;
    c.limits.max_held_fragments_per_source = 4;
    c.limits.event_queue = 16;
    c.limits.max_ports_in_hold_down = 8;
    c.limits.max_static_sessions = MAX_STATIC_SESSIONS;
    if input.preset & 0x80 != 0 {
        let Ok(statics) = toml::from_str::<Statics>(STATIC_RULES) else {
            panic!("the static rules parse");
        };
        c.rules = statics.rule;
        c.virtual_servers = statics.virtual_server;
    }
    let ds_lite = input.preset & 0x40 != 0;
    if ds_lite {
        // Port overlapping shares ports between inside hosts, which softwires do not allow
        // (the config refuses the two together): the preset's mapping stays, its sharing goes.
        c.behavior.port_overlapping = false;
        let mut d = natgate_core::config::DsLite::new(
            AFTR,
            vec!["2001:db8:1::/48".parse().expect("prefix")],
        );
        d.private.push(
            natgate_core::endpoint::Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10)
                .expect("prefix"),
        );
        d.max_softwires = 2;
        d.mtu = 1300;
        d.limits.max_udp_sessions = 4;
        d.limits.tcp_rate = 3;
        c.ds_lite = Some(d);
    }
    let Ok(config) = c.validate() else {
        panic!("the fuzz config is valid");
    };
    let mut h = Harness {
        engine: Engine::new(config, 1),
        ds_lite,
        wrapped: 0,
        now: Instant::ZERO,
        recent: Vec::new(),
        reached: Reached::default(),
    };
    for op in &input.ops {
        h.step(op);
        h.check_tables();
    }
    h.reached
}

impl Harness {
    fn step(&mut self, op: &Op) {
        match op {
            Op::Process {
                outside: false,
                packet,
            } if self.ds_lite => self.send_from_b4(packet),
            Op::Process { outside, packet } => {
                let side = side(*outside);
                let mut buf = self.bytes(packet);
                let len = buf.len();
                buf.resize(len.max(TRANSMIT_SLOT), 0);
                let before = self.engine.counters().clone();
                let arrived = Arrived::of(&buf[..len]);
                let v = self.engine.process(self.now, side, &mut buf, len);
                check_counted(&before, self.engine.counters(), side, v, arrived.ip_len);
                self.check_verdict(side, v, &buf, len, arrived);
            }
            Op::Batch {
                outside,
                packets,
                len,
            } => {
                let side = side(*outside);
                let mut bufs: Vec<(Vec<u8>, usize, Arrived)> = packets
                    .iter()
                    .cycle()
                    .take(1 + usize::from(*len) % MAX_BATCH)
                    .map(|p| {
                        let mut b = self.bytes(p);
                        let len = b.len();
                        let arrived = Arrived::of(&b);
                        b.resize(len.max(TRANSMIT_SLOT), 0);
                        (b, len, arrived)
                    })
                    .collect();
                let mut packets: Vec<PacketBuf<'_>> = bufs
                    .iter_mut()
                    .map(|(buf, len, _)| PacketBuf { buf, len: *len })
                    .collect();
                let mut verdicts = vec![Verdict::Held; packets.len()];
                self.engine
                    .process_batch(self.now, side, &mut packets, &mut verdicts);
                for ((buf, len, arrived), v) in bufs.iter().zip(verdicts) {
                    self.check_verdict(side, v, buf, *len, *arrived);
                }
            }
            Op::Wait { millis, long } => {
                let ms = u64::from(*millis) * if *long { 1000 } else { 1 };
                self.now = self.now + core::time::Duration::from_millis(ms);
                self.engine.handle_timeout(self.now);
            }
            Op::Drain => {
                let mut buf = [0u8; TRANSMIT_SLOT];
                while let Some(t) = self.engine.poll_transmit(&mut buf) {
                    // IPv6 fragments of a tunnel packet to a B4, or IPv4.
                    if buf[0] >> 4 == 6 {
                        let _ = assert_ipv6_to_b4(&buf[..t.len]);
                    } else {
                        assert_ipv4(&buf[..t.len]);
                    }
                    self.reached.transmits += 1;
                }
                while self.engine.poll_event().is_some() {}
            }
        }
    }

    fn bytes(&self, p: &Packet) -> Vec<u8> {
        match p {
            Packet::Raw { len, bytes } => bytes[..usize::from(*len) % 65].to_vec(),
            Packet::Shaped { shape, damage } => {
                let mut v = shape.build();
                if let Some((at, x)) = damage {
                    let n = v.len();
                    v[usize::from(*at) % n] ^= x;
                }
                v
            }
            Packet::Reply { recent } => match self.pick(*recent) {
                Some(v) => reply_to(v),
                None => Vec::new(),
            },
            Packet::ErrorAbout {
                recent,
                msg_type,
                code,
                router,
                quote,
            } => match self.pick(*recent) {
                Some(v) => error_about(v, msg_type, *code, *router, *quote),
                None => Vec::new(),
            },
            Packet::Padded { shape, padding } => {
                let mut v = shape.build();
                v.resize(v.len() + 1 + usize::from(padding % 48), 0xee);
                v
            }
        }
    }

    /// A packet from a B4: wrapped as its kind says, through `process_softwire`.
    fn send_from_b4(&mut self, packet: &Packet) {
        let inner = self.bytes(packet);
        self.wrapped += 1;
        let b4 = B4S[self.wrapped % B4S.len()];
        let mut buf = match packet {
            // Any bytes behind a fixed header: the next header is the first byte.
            Packet::Raw { .. } => {
                let next = inner.first().copied().unwrap_or(4);
                ipv6(b4, AFTR, next, inner.get(1..).unwrap_or(&[]))
            }
            // Every fourth shaped one behind a Destination Options header (PadN).
            _ if self.wrapped.is_multiple_of(4) => {
                let mut opts = vec![4, 0, 1, 4, 0, 0, 0, 0];
                opts.extend_from_slice(&inner);
                ipv6(b4, AFTR, 60, &opts)
            }
            _ => ipv6(b4, AFTR, 4, &inner),
        };
        let len = buf.len();
        buf.resize(len.max(TRANSMIT_SLOT) + 40, 0);
        let before = self.engine.counters().clone();
        let v = self.engine.process_softwire(self.now, &mut buf, len);
        check_counted(&before, self.engine.counters(), Side::Inside, v, len);
        self.check_verdict(
            Side::Inside,
            v,
            &buf,
            len,
            Arrived {
                ip_len: len,
                l4_ok: None,
            },
        );
    }

    fn pick(&self, i: u8) -> Option<&Vec<u8>> {
        (!self.recent.is_empty()).then(|| &self.recent[usize::from(i) % self.recent.len()])
    }

    fn check_verdict(&mut self, side: Side, v: Verdict, buf: &[u8], len: usize, arrived: Arrived) {
        match v {
            Verdict::Forward(_) => {
                let out = &buf[..len];
                assert_eq!(
                    ip_total_len(out),
                    arrived.ip_len,
                    "a forwarded packet keeps its length"
                );
                let out = &out[..arrived.ip_len];
                assert_ipv4(out);
                // Incremental updates keep a right checksum right (RFC 1624).
                if arrived.l4_ok == Some(true) {
                    assert_eq!(l4_checksum_ok(out), Some(true), "transport checksum");
                }
                let dir = match side.arrival_direction() {
                    Direction::Outbound => 0,
                    Direction::Inbound => 1,
                };
                self.reached.forwarded[dir] += 1;
                if self.recent.len() == HISTORY {
                    self.recent.remove(0);
                }
                self.recent.push(out.to_vec());
            }
            Verdict::Reply { len, .. } => {
                // An answer to a B4's host goes back in its softwire.
                let (buf, len) = if buf[0] >> 4 == 6 {
                    let _ = assert_ipv6_to_b4(&buf[..len]);
                    (&buf[40..], len - 40)
                } else {
                    (buf, len)
                };
                assert!(
                    len <= 576,
                    "RFC 1812 4.3.2.3: an ICMP error is at most 576 bytes"
                );
                let out = &buf[..len];
                assert_ipv4(out);
                let ihl = usize::from(out[0] & 0x0f) * 4;
                assert_eq!(out[9], 1, "an answer is ICMP");
                assert_eq!(checksum::checksum(&out[ihl..]), 0, "ICMP checksum");
                self.reached.replies += 1;
            }
            Verdict::ForwardAt {
                side: out,
                start,
                len,
            } => {
                let out_bytes = &buf[start..start + len];
                match out {
                    // To a B4: IPv6 from the AFTR around valid IPv4.
                    Side::Inside if out_bytes[0] >> 4 == 6 => {
                        let inner = assert_ipv6_to_b4(out_bytes);
                        self.reached.to_b4 += 1;
                        if arrived.l4_ok == Some(true) {
                            assert_eq!(
                                inner.and_then(l4_checksum_ok),
                                Some(true),
                                "inner checksum"
                            );
                        }
                    }
                    // The IPv4 packet a B4 sent, translated (out, or hairpinned to a plain
                    // subscriber): kept to answer.
                    _ => {
                        assert_ipv4(out_bytes);
                        if self.recent.len() == HISTORY {
                            self.recent.remove(0);
                        }
                        self.recent.push(out_bytes.to_vec());
                    }
                }
                let dir = match side.arrival_direction() {
                    Direction::Outbound => 0,
                    Direction::Inbound => 1,
                };
                self.reached.forwarded[dir] += 1;
            }
            Verdict::Held => self.reached.held += 1,
            Verdict::Drop(_) | Verdict::ToHost => {}
        }
    }

    fn check_tables(&self) {
        let e = &self.engine;
        let statics = e.static_session_count();
        let dynamic = e.session_count() - statics;
        assert!(dynamic <= 16 && e.mapping_count() <= 8);
        assert!(statics <= MAX_STATIC_SESSIONS as usize);
        let in_use: u64 = e.mappings().map(|m| u64::from(m.sessions)).sum();
        assert_eq!(in_use, dynamic as u64, "sessions per mapping add up");
        assert!(
            e.mappings().all(|m| m.sessions > 0),
            "no mapping without a session"
        );
        assert!(e.held_syn_count() <= 4);
    }
}

fn side(outside: bool) -> Side {
    if outside { Side::Outside } else { Side::Inside }
}

/// The verdict's own counter moved by one, forwarded bytes by the IPv4 total length. (Other
/// counters may move too: releasing held fragments can drop them when the transmit queue is
/// full.)
fn check_counted(before: &Counters, after: &Counters, side: Side, v: Verdict, ip_len: usize) {
    match v {
        Verdict::Forward(_) => {
            let dir = match side.arrival_direction() {
                Direction::Outbound => 0,
                Direction::Inbound => 1,
            };
            let packets = after.forwarded_packets[dir] - before.forwarded_packets[dir];
            let bytes = after.forwarded_bytes[dir] - before.forwarded_bytes[dir];
            assert_eq!(
                (packets, bytes),
                (1, ip_len as u64),
                "counted as one IP datagram"
            );
        }
        Verdict::Drop(r) | Verdict::Reply { reason: r, .. } => {
            assert_eq!(after.drops(r), before.drops(r) + 1);
        }
        Verdict::ForwardAt { len, .. } => {
            let dir = match side.arrival_direction() {
                Direction::Outbound => 0,
                Direction::Inbound => 1,
            };
            let packets = after.forwarded_packets[dir] - before.forwarded_packets[dir];
            let bytes = after.forwarded_bytes[dir] - before.forwarded_bytes[dir];
            assert_eq!((packets, bytes), (1, len as u64), "counted as what leaves");
        }
        Verdict::Held => assert_eq!(after.held_packets, before.held_packets + 1),
        Verdict::ToHost => assert_eq!(after.to_host_packets, before.to_host_packets + 1),
    }
}

/// An IPv6 packet with a fixed header from `src` to `dst`, next header `next`, and `payload`.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(&[next, 64]);
    v.extend_from_slice(&src.octets());
    v.extend_from_slice(&dst.octets());
    v.extend_from_slice(payload);
    v
}

/// A packet to a B4: IPv6 from the AFTR with a payload length that is the packet's; a whole
/// tunnel packet carries IPv4 with a valid header (returned), a fragment (next header 44) a
/// share of one.
fn assert_ipv6_to_b4(p: &[u8]) -> Option<&[u8]> {
    assert!(p.len() >= 40 && p[0] >> 4 == 6, "IPv6");
    assert_eq!(
        usize::from(u16::from_be_bytes([p[4], p[5]])) + 40,
        p.len(),
        "payload length"
    );
    assert_eq!(p[8..24], AFTR.octets(), "from the AFTR");
    assert!(B4S.iter().any(|b| p[24..40] == b.octets()), "to a B4");
    match p[6] {
        4 => {
            let inner = &p[40..];
            assert_ipv4(inner);
            assert_eq!(
                ip_total_len(inner),
                inner.len(),
                "the tunnel carries the IPv4 packet"
            );
            Some(inner)
        }
        44 => {
            assert!(p.len() > 48, "a fragment carries data");
            None
        }
        n => panic!("a packet to a B4 carries next header {n}"),
    }
}

/// What a packet was on arrival, to compare with what leaves.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    /// IPv4 total length.
    ip_len: usize,
    /// Whether its transport checksum was right (see [`l4_checksum_ok`]).
    l4_ok: Option<bool>,
}

impl Arrived {
    fn of(p: &[u8]) -> Arrived {
        let ip_len = ip_total_len(p);
        Arrived {
            ip_len,
            l4_ok: p.get(..ip_len).and_then(l4_checksum_ok),
        }
    }
}

/// Whether the transport checksum of a whole datagram is right: TCP and UDP over the
/// pseudo-header (UDP checksum 0 means none, RFC 768), ICMP over the message. `None` for
/// fragments and for packets too short to tell.
fn l4_checksum_ok(p: &[u8]) -> Option<bool> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    if p.len() < ihl.max(20) || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    let l4 = &p[ihl..];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let pseudo = || {
        let sum = checksum::pseudo_header(src, dst, p[9], l4.len() as u16) + checksum::sum(l4);
        checksum::fold(sum) == 0xffff
    };
    match p[9] {
        17 if l4.len() >= 8 => Some(l4[6..8] == [0, 0] || pseudo()),
        6 if l4.len() >= 20 => Some(pseudo()),
        1 if l4.len() >= 8 => Some(checksum::checksum(l4) == 0),
        _ => None,
    }
}

/// The IPv4 total length field (0 when the packet is too short to have one).
fn ip_total_len(p: &[u8]) -> usize {
    p.get(2..4)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])))
}

/// Parses as IPv4 with a valid header checksum.
fn assert_ipv4(p: &[u8]) {
    assert!(p.len() >= 20 && p[0] >> 4 == 4, "IPv4");
    let ihl = usize::from(p[0] & 0x0f) * 4;
    assert!(ihl >= 20 && p.len() >= ihl, "IPv4 header length");
    assert_eq!(checksum::checksum(&p[..ihl]), 0, "IPv4 header checksum");
}

fn put16(v: &mut [u8], at: usize, x: u16) {
    v[at..at + 2].copy_from_slice(&x.to_be_bytes());
}

/// Fills the IPv4 header checksum.
fn seal_ip(v: &mut [u8]) {
    let ihl = usize::from(v[0] & 0x0f) * 4;
    put16(v, 10, 0);
    let c = checksum::checksum(&v[..ihl]);
    put16(v, 10, c);
}

/// Fills the transport checksum of a whole packet.
fn seal_l4(v: &mut [u8]) {
    let ihl = usize::from(v[0] & 0x0f) * 4;
    let (proto, l4_len) = (v[9], v.len() - ihl);
    let at = match proto {
        6 => ihl + 16,
        17 => ihl + 6,
        _ => ihl + 2,
    };
    if v.len() < at + 2 {
        return;
    }
    put16(v, at, 0);
    let c = if proto == 1 {
        checksum::checksum(&v[ihl..])
    } else {
        let src = Ipv4Addr::new(v[12], v[13], v[14], v[15]);
        let dst = Ipv4Addr::new(v[16], v[17], v[18], v[19]);
        let sum =
            checksum::pseudo_header(src, dst, proto, l4_len as u16) + checksum::sum(&v[ihl..]);
        let c = !checksum::fold(sum);
        // RFC 768: a computed UDP checksum of 0 is sent as all ones.
        if proto == 17 && c == 0 { 0xffff } else { c }
    };
    put16(v, at, c);
}

impl Shape {
    fn build(&self) -> Vec<u8> {
        let opt = 4 * usize::from(self.ip_option_words % 11);
        let ihl = 20 + opt;
        let n = usize::from(self.payload_len % 1400);
        let (proto, mut l4) = match &self.transport {
            Transport::Udp { sport, dport, .. } => {
                let mut h = vec![0u8; 8];
                put16(&mut h, 0, sport.get());
                put16(&mut h, 2, dport.get());
                put16(&mut h, 4, (8 + n) as u16);
                (17, h)
            }
            Transport::Tcp {
                sport,
                dport,
                flags,
                option_words,
            } => {
                let words = 5 + usize::from(option_words % 11);
                let mut h = vec![0u8; words * 4];
                put16(&mut h, 0, sport.get());
                put16(&mut h, 2, dport.get());
                h[12] = (words as u8) << 4;
                h[13] = *flags;
                put16(&mut h, 14, 65535);
                h[20..].fill(1); // NOP options
                (6, h)
            }
            Transport::Icmp {
                msg_type,
                code,
                ident,
            } => {
                let mut h = vec![0u8; 8];
                h[0] = *msg_type;
                h[1] = *code;
                put16(&mut h, 4, ident.get());
                (1, h)
            }
        };
        l4.extend((0..n).map(|i| self.payload_start.wrapping_add(i as u8)));
        let total = (ihl + l4.len()).min(usize::from(u16::MAX));
        let mut v = vec![0u8; ihl];
        v[0] = 0x40 | (ihl / 4) as u8;
        put16(&mut v, 2, total as u16);
        put16(&mut v, 4, self.ident);
        let frag = (self.frag_offset & 0x1fff)
            | if self.more_frags { 0x2000 } else { 0 }
            | if self.df { 0x4000 } else { 0 };
        put16(&mut v, 6, frag);
        v[8] = self.ttl;
        v[9] = proto;
        v[12..16].copy_from_slice(&self.src.get().octets());
        v[16..20].copy_from_slice(&self.dst.get().octets());
        v[20..].fill(1); // NOP options
        v.extend_from_slice(&l4);
        v.truncate(total);
        let zero = matches!(
            self.transport,
            Transport::Udp {
                zero_checksum: true,
                ..
            }
        );
        if !zero {
            seal_l4(&mut v);
        }
        seal_ip(&mut v);
        v
    }
}

/// What the destination of `p` answers: addresses and ports swapped (checksums stay valid), an
/// echo request turned into a reply, a fresh TTL.
fn reply_to(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    let ihl = usize::from(v[0] & 0x0f) * 4;
    let (s, d) = (v[12..16].to_vec(), v[16..20].to_vec());
    v[12..16].copy_from_slice(&d);
    v[16..20].copy_from_slice(&s);
    if v.len() >= ihl + 4 {
        match v[9] {
            6 | 17 => {
                let (sp, dp) = (v[ihl..ihl + 2].to_vec(), v[ihl + 2..ihl + 4].to_vec());
                v[ihl..ihl + 2].copy_from_slice(&dp);
                v[ihl + 2..ihl + 4].copy_from_slice(&sp);
            }
            1 if v[ihl] == 8 => {
                v[ihl] = 0;
                seal_l4(&mut v);
            }
            _ => {}
        }
    }
    v[8] = 64;
    seal_ip(&mut v);
    v
}

/// An ICMP error about `p` from its destination (or a router) to its source, quoting a prefix.
fn error_about(p: &[u8], t: &ErrorType, code: u8, router: bool, quote: u16) -> Vec<u8> {
    let msg_type = match t {
        ErrorType::Unreachable => 3,
        ErrorType::TimeExceeded => 11,
        ErrorType::ParameterProblem => 12,
    };
    let from: [u8; 4] = if router {
        // A router on the way: outside for a packet that went out, inside otherwise.
        if POOL.iter().any(|a| a.octets() == p[12..16]) {
            REMOTES[2].octets()
        } else {
            [100, 64, 0, 254]
        }
    } else {
        [p[16], p[17], p[18], p[19]]
    };
    let cut = usize::from(quote).min(p.len());
    let mut v = vec![0u8; 28];
    v[0] = 0x45;
    put16(&mut v, 2, (28 + cut) as u16);
    v[8] = 64;
    v[9] = 1;
    v[12..16].copy_from_slice(&from);
    v[16..20].copy_from_slice(&p[12..16]);
    v[20] = msg_type;
    v[21] = code;
    v.extend_from_slice(&p[..cut]);
    seal_l4(&mut v);
    seal_ip(&mut v);
    v
}
