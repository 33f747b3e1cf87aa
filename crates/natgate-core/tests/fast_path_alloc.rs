//! The established-flow fast path never allocates once warm: a counting global allocator sees
//! no allocation while a million packets of established flows are translated, in batches and
//! one at a time, both ways.

#![allow(clippy::expect_used)] // a test: a broken fixture should fail loudly

mod counting;

use counting::batched;

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use natgate_core::engine::Engine;
use natgate_core::{Config, Endpoint, Instant, Side, Verdict};

const FLOWS: u32 = 1 << 16;
const PACKETS: usize = 1 << 20;

fn flow(i: u32) -> (bool, Endpoint, Endpoint) {
    let internal = Endpoint::new(
        Ipv4Addr::from_bits(0x6440_0000 + i / 64),
        10_000 + (i % 64) as u16,
    );
    let remote = Endpoint::new(Ipv4Addr::from_bits(0xcb00_7100 + i % 200), 443);
    (i % 2 == 1, internal, remote)
}

fn packet(tcp: bool, src: Endpoint, dst: Endpoint, syn: bool, ack: bool) -> Vec<u8> {
    let ip = PacketBuilder::ipv4(src.addr.octets(), dst.addr.octets(), 64);
    let mut v = Vec::new();
    if tcp {
        let mut b = ip.tcp(src.port, dst.port, 1, 65_535);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(1);
        }
        b.write(&mut v, &[0; 24]).expect("tcp packet");
    } else {
        ip.udp(src.port, dst.port)
            .write(&mut v, &[0; 36])
            .expect("udp packet");
    }
    v
}

#[test]
fn fast_path_does_not_allocate_once_warm() {
    let pool = (0..16).map(|i| Ipv4Addr::new(198, 18, 0, i + 1)).collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = FLOWS;
    c.limits.max_mappings = FLOWS;
    let mut e = Engine::new(c.validate().expect("valid config"), 1);

    // Open every flow (TCP: SYN out, SYN-ACK in) and learn its external endpoint.
    let flows: Vec<_> = (0..FLOWS).map(flow).collect();
    let mut syns: Vec<Vec<u8>> = flows
        .iter()
        .map(|&(tcp, int, rem)| packet(tcp, int, rem, true, false))
        .collect();
    assert_eq!(batched(&mut e, Side::Inside, &mut syns), FLOWS as usize);
    while e.poll_event().is_some() {}
    let mut external = vec![Endpoint::UNSPECIFIED; FLOWS as usize];
    for s in e.sessions() {
        let sub = s.internal.addr.to_bits() - 0x6440_0000;
        external[(sub * 64 + u32::from(s.internal.port - 10_000)) as usize] = s.external;
    }
    let mut syn_acks: Vec<Vec<u8>> = flows
        .iter()
        .zip(&external)
        .filter(|((tcp, _, _), _)| *tcp)
        .map(|(&(tcp, _, rem), &ext)| packet(tcp, rem, ext, true, true))
        .collect();
    assert_eq!(
        batched(&mut e, Side::Outside, &mut syn_acks),
        syn_acks.len()
    );

    // Established traffic both ways; the templates are restored before every pass.
    let out: Vec<Vec<u8>> = flows
        .iter()
        .map(|&(tcp, int, rem)| packet(tcp, int, rem, false, true))
        .collect();
    let inb: Vec<Vec<u8>> = flows
        .iter()
        .zip(&external)
        .map(|(&(tcp, _, rem), &ext)| packet(tcp, rem, ext, false, true))
        .collect();
    let mut work_out = out.clone();
    let mut work_in = inb.clone();
    let mut run = |e: &mut Engine, one_at_a_time: bool| {
        let mut forwarded = 0;
        for (w, t) in work_out.iter_mut().zip(&out) {
            w.copy_from_slice(t);
        }
        for (w, t) in work_in.iter_mut().zip(&inb) {
            w.copy_from_slice(t);
        }
        if one_at_a_time {
            for w in work_out.iter_mut() {
                let len = w.len();
                let v = e.process(Instant::from_secs(11), Side::Inside, w, len);
                forwarded += usize::from(matches!(v, Verdict::Forward(_)));
            }
        } else {
            forwarded += batched(e, Side::Inside, &mut work_out);
            forwarded += batched(e, Side::Outside, &mut work_in);
        }
        forwarded
    };
    run(&mut e, false); // warm

    counting::start();
    // The counter works: one allocation is seen.
    drop(std::hint::black_box(vec![0u8; 10]));
    assert_eq!(counting::take(), 1);
    let mut forwarded = 0;
    let mut packets = 0;
    while packets < PACKETS {
        forwarded += run(&mut e, false);
        forwarded += run(&mut e, true);
        packets += 3 * FLOWS as usize;
    }
    counting::stop();

    assert_eq!(forwarded, packets, "every packet took the established path");
    assert_eq!(e.session_count(), FLOWS as usize, "no session was made");
    assert_eq!(
        counting::allocations(),
        0,
        "allocations while translating {packets} established packets"
    );
}
