//! Static NAT never allocates on the packet path once built: a counting global allocator sees
//! no allocation while flows of a network rule and of a virtual server are opened, carried
//! both ways and exempted packets pass, in batches and one at a time.

#![allow(clippy::expect_used)] // a test: a broken fixture should fail loudly

mod counting;

use counting::batched;

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use natgate_core::engine::Engine;
use natgate_core::rules::RuleChain;
use natgate_core::vserver::{Algorithm, RealServerSpec, VirtualServerSpec};
use natgate_core::{Config, Endpoint, Instant, Protocol, Side, Verdict};

const FLOWS: u32 = 1 << 12;

fn udp(src: Endpoint, dst: Endpoint) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64)
        .udp(src.port, dst.port)
        .write(&mut v, &[0; 36])
        .expect("udp packet");
    v
}

fn tcp_syn(src: Endpoint, dst: Endpoint) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64)
        .tcp(src.port, dst.port, 1, 65_535)
        .syn()
        .write(&mut v, &[0; 24])
        .expect("tcp packet");
    v
}

fn ep(bits: u32, port: u16) -> Endpoint {
    Endpoint::new(Ipv4Addr::from_bits(bits), port)
}

#[test]
fn static_nat_does_not_allocate_on_the_packet_path() {
    #[derive(serde::Deserialize)]
    struct File {
        rule: RuleChain,
    }
    let rules = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
dst = "192.168.0.0/16"
action = "exempt"

[[rule]]
id = 2
direction = "outbound"
bidirectional = true
src = "10.0.0.0/16"
action.translate.src = { addr = "192.0.0.0/16" }
"#;
    let pool = (0..4).map(|i| Ipv4Addr::new(198, 18, 0, i + 1)).collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = 1024;
    c.limits.max_mappings = 1024;
    c.limits.max_static_sessions = 8 * FLOWS;
    c.rules = toml::from_str::<File>(rules).expect("rules").rule;
    c.virtual_servers.push(VirtualServerSpec {
        address: Ipv4Addr::new(198, 18, 0, 1),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler: Algorithm::WeightedRoundRobin,
        affinity: None,
        health: None,
        real_servers: (1..=3)
            .map(|i| RealServerSpec {
                address: Ipv4Addr::new(10, 1, 0, i),
                port: Some(8080),
                weight: u32::from(i),
            })
            .collect(),
    });
    let mut e = Engine::new(c.validate().expect("valid config"), 1);
    let remote = ep(0xcb00_7100, 443);
    let vip = ep(0xc612_0001, 80);
    // Inside host i of 10.0.0.0/16 and its external 192.0.x.y, one UDP flow each.
    let host = |i: u32, round: u32| ep(0x0a00_0000 + i, 1024 + round as u16);
    let ext = |i: u32, round: u32| ep(0xc000_0000 + i, 1024 + round as u16);
    // Per round: new rule flows out, their replies in, the same flows out again one packet at
    // a time, exempted packets, new virtual-server connections. Built before counting starts.
    type Round = [Vec<Vec<u8>>; 5];
    let rounds: Vec<Round> = (0..3)
        .map(|round| {
            let out: Vec<Vec<u8>> = (0..FLOWS).map(|i| udp(host(i, round), remote)).collect();
            let inb = (0..FLOWS).map(|i| udp(remote, ext(i, round))).collect();
            let exempt = (0..FLOWS)
                .map(|i| udp(host(i, round), ep(0xc0a8_0000 + i, 53)))
                .collect();
            let vs = (0..FLOWS)
                .map(|i| tcp_syn(ep(0xcb00_7200 + i, 1024 + round as u16), vip))
                .collect();
            [out.clone(), inb, out, exempt, vs]
        })
        .collect();
    let play = |e: &mut Engine, r: &mut Round| {
        let [out, inb, again, exempt, vs] = r;
        let mut n = batched(e, Side::Inside, out);
        n += batched(e, Side::Outside, inb);
        for p in again.iter_mut() {
            let len = p.len();
            n += usize::from(matches!(
                e.process(Instant::from_secs(10), Side::Inside, p, len),
                Verdict::Forward(_)
            ));
        }
        n += batched(e, Side::Inside, exempt);
        n += batched(e, Side::Outside, vs);
        while e.poll_event().is_some() {}
        n
    };
    let mut rounds = rounds.into_iter();
    let mut warm = rounds.next().expect("three rounds");
    assert_eq!(
        play(&mut e, &mut warm),
        5 * FLOWS as usize,
        "warm-up forwarded all"
    );
    let mut counted: Vec<Round> = rounds.collect();

    counting::start();
    drop(std::hint::black_box(vec![0u8; 10]));
    assert_eq!(counting::take(), 1, "the counter works");
    let mut forwarded = 0;
    for r in counted.iter_mut() {
        forwarded += play(&mut e, r);
    }
    counting::stop();

    assert_eq!(forwarded, 2 * 5 * FLOWS as usize, "every packet forwarded");
    assert_eq!(e.static_session_count(), 3 * 2 * FLOWS as usize);
    assert_eq!(e.mapping_count(), 0, "dynamic NAPT saw nothing");
    assert_eq!(e.counters().exempted_packets, 3 * u64::from(FLOWS));
    assert_eq!(
        counting::allocations(),
        0,
        "allocations on the static packet path"
    );
}
