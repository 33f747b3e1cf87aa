//! The fast path against the engine: random sessions and packets through the Rust engine and
//! through the loaded eBPF programs, TC and XDP (`BPF_PROG_TEST_RUN`, no traffic), which must
//! give the very bytes the engine gives, or punt the packet untouched; and must carry every
//! packet of a carried flow that changes no engine state. Needs root (loading BPF); skips
//! otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use natgate::dataplane::fastpath::map::{SIDE_INSIDE, SIDE_OUTSIDE};
use natgate::dataplane::fastpath::{self, FastPath, FlowTable, Hook, NO_REDIRECT, sys};
use natgate::platform::netlink::Netlink;
use natgate::platform::netns::Netns;
use natgate_core::config::{Config, TtlHandling};
use natgate_core::engine::{Engine, OffloadedFlow};
use natgate_core::{Endpoint, Instant, Side, Verdict};
use proptest::prelude::*;

const MTU: u16 = 1400;
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SUBS: [Ipv4Addr; 2] = [Ipv4Addr::new(100, 64, 0, 10), Ipv4Addr::new(100, 64, 0, 11)];
const WANS: [Ipv4Addr; 2] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 20),
];

/// Two interfaces for the programs to see packets arrive on. The XDP test run needs real ones
/// (the kernel looks the index up in the caller's namespace), so they are a veth pair in a
/// namespace of the test's own, deleted when this is dropped.
struct Interfaces {
    ns: Netns,
    inside: u32,
    outside: u32,
}

fn interfaces(tag: &str) -> Interfaces {
    let ns = Netns::create(&format!("ng-fpd{tag}-{}", std::process::id())).expect("namespace");
    let mut nl = Netlink::open_in(&ns).expect("netlink");
    nl.add_veth("fpin", "fpout", None).expect("veth");
    Interfaces {
        inside: nl.link_index("fpin").unwrap(),
        outside: nl.link_index("fpout").unwrap(),
        ns,
    }
}

struct Rig<'a> {
    fp: FastPath,
    table: FlowTable,
    prog: i32,
    hook: Hook,
    ifs: &'a Interfaces,
}

impl Rig<'_> {
    /// Runs the program on `frame` as if it arrived inside (or outside, `inbound`).
    fn run(&self, frame: &[u8], inbound: bool) -> sys::TestRun {
        let ifindex = if inbound {
            self.ifs.outside
        } else {
            self.ifs.inside
        };
        self.ifs
            .ns
            .run_in(|| sys::test_run(self.prog, self.hook, frame, ifindex))
            .expect("enter the namespace")
            .expect("test run")
    }

    /// The program's return codes for a punt and for a carried packet.
    fn codes(&self) -> (u32, u32) {
        match self.hook {
            Hook::Tc => (TC_ACT_OK, TC_ACT_REDIRECT),
            Hook::Xdp => (XDP_PASS, XDP_REDIRECT),
        }
    }
}

fn rig(hook: Hook, ifs: &Interfaces) -> Rig<'_> {
    let mut fp = FastPath::load(4096, NO_REDIRECT).expect("load the fast path");
    let side = |ifindex| fastpath::Side {
        name: String::new(),
        ifindex,
        mtu: MTU,
        tun_ifindex: 0,
        // What `frame` sends to.
        mac: [0; 6],
    };
    fp.set_iface(&side(ifs.inside), &side(ifs.outside), SIDE_INSIDE)
        .unwrap();
    fp.set_iface(&side(ifs.outside), &side(ifs.inside), SIDE_OUTSIDE)
        .unwrap();
    let table = fp.table().unwrap();
    let prog = fp.program_fd(hook).unwrap();
    Rig {
        fp,
        table,
        prog,
        hook,
        ifs,
    }
}

fn engine() -> Engine {
    let mut c = Config::new(vec![POOL], Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = 4096;
    c.limits.max_mappings = 4096;
    // The fast path is a routing hop: it decrements the TTL once, as the engine must here.
    c.behavior.ttl = TtlHandling::Decrement;
    c.behavior.outside_mtu = MTU;
    c.behavior.inside_mtu = MTU;
    let mut e = Engine::new(c.validate().expect("valid"), 1);
    e.enable_offload();
    e
}

/// One packet to try, before it is built.
#[derive(Debug, Clone)]
struct Shape {
    tcp: bool,
    /// Index of the subscriber and remote of the flow.
    sub: usize,
    wan: usize,
    sport: u16,
    dport: u16,
    inbound: bool,
    /// TCP flags: FIN 1, SYN 2, RST 4, PSH 8, ACK 16.
    flags: u8,
    ttl: u8,
    df: bool,
    payload: usize,
    /// 0: as built; 1: IP options; 2: a fragment; 3: bad header checksum; 4: UDP checksum 0;
    /// 5: a zero port; 6: truncated.
    mangle: u8,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        any::<bool>(),
        0..2usize,
        0..2usize,
        prop::sample::select(vec![1024u16, 5000, 65535]),
        prop::sample::select(vec![53u16, 443]),
        any::<bool>(),
        prop::sample::select(vec![0x10u8, 0x18, 0x02, 0x12, 0x11, 0x04, 0x14, 0x00]),
        prop::sample::select(vec![0u8, 1, 2, 64, 255]),
        any::<bool>(),
        prop::sample::select(vec![0usize, 1, 33, 1372, 1380]),
        prop::sample::select(vec![0u8, 0, 0, 0, 1, 2, 3, 4, 5, 6]),
    )
        .prop_map(
            |(tcp, sub, wan, sport, dport, inbound, flags, ttl, df, payload, mangle)| Shape {
                tcp,
                sub,
                wan,
                sport,
                dport,
                inbound,
                flags,
                ttl,
                df,
                payload,
                mangle,
            },
        )
}

fn build(src: Endpoint, dst: Endpoint, s: &Shape) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), s.ttl);
    let payload = vec![0xA5u8; s.payload];
    let mut v = Vec::new();
    if s.tcp {
        let mut t = b.tcp(src.port, dst.port, 7, 1000);
        if s.flags & 1 != 0 {
            t = t.fin();
        }
        if s.flags & 2 != 0 {
            t = t.syn();
        }
        if s.flags & 4 != 0 {
            t = t.rst();
        }
        if s.flags & 8 != 0 {
            t = t.psh();
        }
        if s.flags & 16 != 0 {
            t = t.ack(9);
        }
        t.write(&mut v, &payload).unwrap();
    } else {
        b.udp(src.port, dst.port).write(&mut v, &payload).unwrap();
    }
    // etherparse sets DF by default.
    if s.df {
        v[6] |= 0x40;
    } else {
        v[6] &= !0x40;
    }
    fix_header(&mut v);
    match s.mangle {
        1 => {
            // One word of options (four NOPs... end of list), header length 6.
            v.splice(20..20, [1u8, 1, 1, 0]);
            v[0] = 0x46;
            let len = v.len() as u16;
            v[2..4].copy_from_slice(&len.to_be_bytes());
            fix_header(&mut v);
        }
        2 => {
            v[6] |= 0x20;
            fix_header(&mut v);
        }
        3 => v[10] ^= 0x55,
        4 if !s.tcp => v[26..28].copy_from_slice(&[0, 0]),
        5 => {
            v[20..22].copy_from_slice(&[0, 0]);
        }
        6 => v.truncate(24),
        _ => {}
    }
    v
}

fn fix_header(v: &mut [u8]) {
    v[10..12].copy_from_slice(&[0, 0]);
    let ihl = usize::from(v[0] & 0x0f) * 4;
    let mut sum = 0u32;
    for w in v[..ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    v[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

fn frame(ip: &[u8]) -> Vec<u8> {
    // Addressed to the test run's device (the namespace's loopback, whose MAC address is all
    // zeros): the program leaves frames for other hosts to the kernel.
    let mut f = vec![0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(ip);
    f
}

/// Runs the engine on one packet and applies what it says to the fast path's table.
fn through_engine(
    e: &mut Engine,
    table: &mut FlowTable,
    now: Instant,
    side: Side,
    ip: &[u8],
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..ip.len()].copy_from_slice(ip);
    let mut pkts = [natgate_core::engine::PacketBuf {
        buf: &mut buf,
        len: ip.len(),
    }];
    let mut v = [Verdict::Held];
    e.process_batch(now, side, &mut pkts, &mut v);
    assert_eq!(
        table.apply_all(|| e.poll_offload()),
        0,
        "every change applied"
    );
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    (v[0], buf[..len.min(ip.len())].to_vec())
}

/// The flow of `s` if the engine has a session for it.
fn session_of(e: &Engine, s: &Shape, proto_tcp: bool) -> Option<OffloadedFlow> {
    e.sessions()
        .find(|i| {
            (i.proto == natgate_core::Protocol::Tcp) == proto_tcp
                && i.internal == Endpoint::new(SUBS[s.sub], s.sport)
                && i.remote == Endpoint::new(WANS[s.wan], s.dport)
        })
        .map(|i| OffloadedFlow {
            proto: i.proto,
            internal: i.internal,
            external: i.external,
            remote: i.remote,
        })
}

fn check(rig: &mut Rig, shapes: &[Shape]) -> Result<(), TestCaseError> {
    let mut e = engine();
    let now = Instant::from_secs(10);
    for s in shapes {
        let internal = Endpoint::new(SUBS[s.sub], s.sport);
        let remote = Endpoint::new(WANS[s.wan], s.dport);
        // Open the flow first (as a client would), so that most packets find a session.
        if session_of(&e, s, s.tcp).is_none() {
            let open = Shape {
                flags: 0x02,
                ttl: 64,
                df: false,
                payload: 0,
                mangle: 0,
                inbound: false,
                ..s.clone()
            };
            // Twice: the engine offers a flow to the fast path on its second packet (a TCP
            // one on its SYN-ACK, below).
            for _ in 0..if s.tcp { 1 } else { 2 } {
                through_engine(
                    &mut e,
                    &mut rig.table,
                    now,
                    Side::Inside,
                    &build(internal, remote, &open),
                );
            }
            if s.tcp
                && let Some(f) = session_of(&e, s, true)
            {
                let synack = Shape {
                    flags: 0x12,
                    ..open
                };
                through_engine(
                    &mut e,
                    &mut rig.table,
                    now,
                    Side::Outside,
                    &build(remote, f.external, &synack),
                );
            }
        }
        let flow = session_of(&e, s, s.tcp);
        let external = flow.map_or(Endpoint::new(POOL, 2000), |f| f.external);
        let (side, ip) = if s.inbound {
            (Side::Outside, build(remote, external, s))
        } else {
            (Side::Inside, build(internal, remote, s))
        };
        let run = rig.run(&frame(&ip), s.inbound);
        let (punt, carry) = rig.codes();
        match run.retval {
            r if r == punt => prop_assert_eq!(&run.frame[14..], &ip[..], "a punt is untouched"),
            r if r == carry => {
                let (verdict, out) = through_engine(&mut e, &mut rig.table, now, side, &ip);
                let exit = if s.inbound {
                    Side::Inside
                } else {
                    Side::Outside
                };
                prop_assert_eq!(verdict, Verdict::Forward(exit), "{:?}", s);
                prop_assert_eq!(&run.frame[14..], &out[..], "{:?}", s);
                continue;
            }
            other => prop_assert!(false, "return code {} for {:?}", other, s),
        }
        // What the fast path must carry: a carried flow's packet that changes no engine state.
        let carried = flow.is_some_and(|f| rig.table.carries(&f))
            && s.mangle == 0
            && s.flags & 0x07 == 0
            && s.ttl > 1
            && !(s.df && ip.len() > usize::from(MTU));
        prop_assert!(!carried, "punted a packet it should carry: {:?}", s);
        through_engine(&mut e, &mut rig.table, now, side, &ip);
    }
    Ok(())
}

/// Runs the random cases through the program at `hook`.
fn differential(hook: Hook, tag: &str) {
    let ifs = interfaces(tag);
    let carried = std::cell::Cell::new(0u64);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(shape(), 1..24), |shapes| {
            // Each case starts from a fresh program and an empty table.
            let mut rig = rig(hook, &ifs);
            let r = check(&mut rig, &shapes);
            let c = rig.fp.counters().expect("counters");
            carried.set(carried.get() + c.forwarded_out + c.forwarded_in);
            r
        })
        .unwrap();
    // Not vacuous: the cases made the fast path carry packets, both ways.
    assert!(
        carried.get() > 100,
        "only {} packets carried",
        carried.get()
    );
}

#[test]
fn the_tc_fast_path_gives_the_engines_bytes_or_punts() {
    if common::is_root() {
        differential(Hook::Tc, "t");
    }
}

#[test]
fn the_xdp_fast_path_gives_the_engines_bytes_or_punts() {
    if common::is_root() {
        differential(Hook::Xdp, "x");
    }
}

/// A frame for another host's MAC address (a switch flooding it here) is the kernel's, which
/// drops it, even when its flow is carried: neither program may forward a copy of it. The TC
/// program counts it (the XDP one passes it to the TC one).
#[test]
fn frames_for_other_hosts_are_left_to_the_kernel() {
    if !common::is_root() {
        return;
    }
    let ifs = interfaces("o");
    for hook in [Hook::Tc, Hook::Xdp] {
        let mut rig = rig(hook, &ifs);
        let (punt, carry) = rig.codes();
        let flow = OffloadedFlow {
            proto: natgate_core::Protocol::Udp,
            internal: Endpoint::new(SUBS[0], 5000),
            external: Endpoint::new(POOL, 5000),
            remote: Endpoint::new(WANS[0], 53),
        };
        let mut ops = vec![natgate_core::engine::OffloadOp::Insert(flow)].into_iter();
        assert_eq!(rig.table.apply_all(|| ops.next()), 0);
        let shape = Shape {
            tcp: false,
            sub: 0,
            wan: 0,
            sport: 5000,
            dport: 53,
            inbound: false,
            flags: 0,
            ttl: 64,
            df: false,
            payload: 8,
            mangle: 0,
        };
        let ip = build(flow.internal, flow.remote, &shape);
        let ours = rig.run(&frame(&ip), false);
        assert_eq!(ours.retval, carry, "{hook:?}: carried when addressed to us");
        let mut other = frame(&ip);
        other[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        let run = rig.run(&other, false);
        assert_eq!(run.retval, punt, "{hook:?}");
        assert_eq!(run.frame, other, "{hook:?}: untouched");
        let c = rig.fp.counters().unwrap();
        let counted = u64::from(hook == Hook::Tc);
        assert_eq!(
            (c.punt_not_ours, c.forwarded_out),
            (counted, 1),
            "{hook:?}: {c:?}"
        );
    }
}
