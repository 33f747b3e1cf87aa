//! The engine under attack: spoofed sources, floods of refused packets and what they draw in
//! answers, overlapping fragments. Each test drives the engine with packet fixtures and the
//! injected clock, and checks the counters that make every loss visible.

use super::tests::{Pkt, echo, ep, tcp, udp};
use super::*;
use crate::config::{Config, Ipv4Prefix, MappingFailureReply};

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const SPOOFED: Ipv4Addr = Ipv4Addr::new(100, 65, 7, 9);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn engine_with(f: impl FnOnce(&mut Config)) -> Engine {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 64;
    c.limits.max_mappings = 64;
    f(&mut c);
    Engine::new(c.validate().expect("valid test config"), 7)
}

fn subscribers() -> Vec<Ipv4Prefix> {
    vec![Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 24).expect("prefix")]
}

fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn run(e: &mut Engine, now: Instant, side: Side, p: &mut Pkt) -> Verdict {
    let v = e.process(now, side, &mut p.buf, p.len);
    if let Verdict::Reply { len, .. } = v {
        p.len = len;
    }
    v
}

#[test]
fn spoofed_source_outside_the_inside_networks_is_dropped_unanswered() {
    let mut e = engine_with(|c| {
        c.inside_networks = subscribers();
        // Every refusal would be answered, so an answer to the spoofed source would show.
        c.behavior.mapping_failure_reply = MappingFailureReply::HostUnreachable;
    });
    for (i, mut p) in [
        udp(ep(SPOOFED, 1000), ep(WAN, 53), b"x"),
        tcp(ep(SPOOFED, 1001), ep(WAN, 80), "S"),
        echo(SPOOFED, WAN, 7, true),
        // Even to the pool (hairpin) and with a TTL that would expire.
        udp(ep(SPOOFED, 1002), ep(POOL, 4000), b"x"),
    ]
    .into_iter()
    .enumerate()
    {
        let v = run(&mut e, t(0), Side::Inside, &mut p);
        assert_eq!(v, Verdict::Drop(DropReason::SourceNotInside), "packet {i}");
    }
    assert_eq!(e.counters().drops(DropReason::SourceNotInside), 4);
    assert_eq!(
        e.counters().icmp_generated + e.counters().tcp_resets_generated,
        0
    );
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.poll_event(), None, "no state, no event");
    // A real subscriber is translated.
    let mut p = udp(ep(SUB1, 1000), ep(WAN, 53), b"x");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Forward(Side::Outside)
    );
}

#[test]
fn without_inside_networks_every_source_is_translated() {
    let mut e = engine_with(|_| {});
    let mut p = udp(ep(SPOOFED, 1000), ep(WAN, 53), b"x");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Forward(Side::Outside)
    );
}

#[test]
fn spoofed_sources_cannot_fill_the_session_table() {
    let mut e = engine_with(|c| {
        c.inside_networks = subscribers();
        c.limits.max_sessions = 4;
        c.limits.max_mappings = 4;
    });
    for k in 0..1000u16 {
        let src = Ipv4Addr::new(100, 65, (k >> 8) as u8, k as u8);
        let mut p = udp(ep(src, 1000 + k), ep(WAN, 53), b"x");
        run(&mut e, t(0), Side::Inside, &mut p);
    }
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.counters().drops(DropReason::SourceNotInside), 1000);
    let mut p = udp(ep(SUB1, 1000), ep(WAN, 53), b"x");
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut p),
        Verdict::Forward(Side::Outside)
    );
}

/// A subscriber at a full table sends 100 new flows in one second: the first `answer-burst`
/// are answered, the rest dropped and counted, each under its reason, with the left-out
/// answers counted apart. A second subscriber still gets its answer; a second later the
/// refill lets the first have one again.
#[test]
fn answers_to_refused_packets_are_rate_limited_per_subscriber_and_globally() {
    const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    for reply in [
        MappingFailureReply::HostUnreachable,
        MappingFailureReply::AdminProhibited,
        MappingFailureReply::TcpReset,
    ] {
        let mut e = engine_with(|c| {
            c.limits.max_sessions = 1;
            c.limits.max_mappings = 1;
            c.limits.answer_rate = 10;
            c.limits.answer_burst = 5;
            c.limits.global_answer_rate = 1;
            c.limits.global_answer_burst = 7;
            c.behavior.mapping_failure_reply = reply;
        });
        let mut p = udp(ep(SUB1, 999), ep(WAN, 53), b"x");
        run(&mut e, t(0), Side::Inside, &mut p);
        let mut answered = 0;
        for k in 0..100u16 {
            let mut p = tcp(ep(SUB1, 1000 + k), ep(WAN, 80), "S");
            match run(&mut e, t(10 + u64::from(k)), Side::Inside, &mut p) {
                Verdict::Reply { .. } => answered += 1,
                Verdict::Drop(r) => assert_eq!(r, DropReason::MappingTableFull, "{reply:?}"),
                v => panic!("{v:?}"),
            }
        }
        // 5 at once, then one every 100 ms over the 99 ms the flood lasted: none.
        assert_eq!(answered, 5, "{reply:?}");
        let c = e.counters();
        assert_eq!(c.answers_suppressed, 95);
        assert_eq!(c.drops(DropReason::MappingTableFull), 100);
        // Another subscriber has its own bucket (the global one has 2 left).
        for k in 0..3u16 {
            let mut p = tcp(ep(SUB2, 1000 + k), ep(WAN, 80), "S");
            let v = run(&mut e, t(200), Side::Inside, &mut p);
            assert_eq!(
                matches!(v, Verdict::Reply { .. }),
                k < 2,
                "{reply:?} {k}: {v:?}"
            );
        }
        // A second later both buckets have a token again.
        let mut p = tcp(ep(SUB1, 5000), ep(WAN, 80), "S");
        assert!(matches!(
            run(&mut e, t(1200), Side::Inside, &mut p),
            Verdict::Reply { .. }
        ));
    }
}

/// TTL expiry and fragmentation-needed answers (to either side) obey the same limits.
#[test]
fn every_engine_generated_icmp_error_is_rate_limited() {
    let mut e = engine_with(|c| {
        c.limits.answer_rate = 1;
        c.limits.answer_burst = 2;
        c.behavior.ttl = crate::config::TtlHandling::Decrement;
    });
    let mut answered = 0;
    for k in 0..10u16 {
        let mut p = udp(ep(SUB1, 1000 + k), ep(WAN, 53), b"x");
        p.buf[8] = 1; // TTL 1
        p.buf[10] = 0;
        p.buf[11] = 0;
        let sum = crate::wire::checksum::checksum(&p.buf[..20]);
        p.buf[10..12].copy_from_slice(&sum.to_be_bytes());
        match run(&mut e, t(0), Side::Inside, &mut p) {
            Verdict::Reply { .. } => answered += 1,
            v => assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded)),
        }
    }
    assert_eq!(answered, 2);
    assert_eq!(e.counters().answers_suppressed, 8);
    assert_eq!(e.counters().drops(DropReason::TtlExceeded), 10);
}

/// Moves a fragment to byte offset `offset` (a multiple of 8) and fixes its header checksum.
fn move_fragment(p: &mut Pkt, offset: u16) {
    let word = u16::from_be_bytes([p.buf[6], p.buf[7]]);
    let word = (word & 0xE000) | (offset / 8);
    p.buf[6..8].copy_from_slice(&word.to_be_bytes());
    p.buf[10..12].copy_from_slice(&[0, 0]);
    let sum = crate::wire::checksum::checksum(&p.buf[..20]);
    p.buf[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// RFC 1858 section 3.2, RFC 3128: a fragment at offset 8 (FO = 1) after the first would rewrite
/// the transport header the first fragment was translated by. It is dropped and counted, in
/// order and out of order, and the datagram's honest fragments still pass.
#[test]
fn rfc1858_rfc3128_overlapping_fragments_are_dropped_and_counted() {
    let whole = udp(ep(SUB1, 5000), ep(WAN, 9), &[7u8; 40]);
    // 48 bytes of UDP in three fragments: [0, 16), [16, 32), [32, 48).
    let frags = super::tests::fragments(whole.bytes(), 16);
    assert_eq!(frags.len(), 3);

    // In order: the first passes, a copy of the second moved to offset 8 overlaps it.
    let mut e = engine_with(|_| {});
    let mut f0 = frags[0].clone();
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut f0),
        Verdict::Forward(Side::Outside)
    );
    let mut evil = frags[1].clone();
    move_fragment(&mut evil, 8);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut evil),
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    for f in &frags[1..] {
        let mut f = f.clone();
        assert_eq!(
            run(&mut e, t(0), Side::Inside, &mut f),
            Verdict::Forward(Side::Outside)
        );
    }
    // A copy of a fragment already passed overlaps it too.
    let mut again = frags[2].clone();
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut again),
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    assert_eq!(e.counters().drops(DropReason::FragmentOverlap), 2);

    // Out of order: the last is held, a fragment overlapping it is refused, and the first
    // releases only the honest one.
    let mut e = engine_with(|_| {});
    let mut f2 = frags[2].clone();
    assert_eq!(run(&mut e, t(0), Side::Inside, &mut f2), Verdict::Held);
    let mut evil = frags[1].clone();
    move_fragment(&mut evil, 24);
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut evil),
        Verdict::Drop(DropReason::FragmentOverlap)
    );
    let mut f0 = frags[0].clone();
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut f0),
        Verdict::Forward(Side::Outside)
    );
    let mut buf = [0u8; 2048];
    let mut released = 0;
    while e.poll_transmit(&mut buf).is_some() {
        released += 1;
    }
    assert_eq!(released, 1);
    let mut f1 = frags[1].clone();
    assert_eq!(
        run(&mut e, t(0), Side::Inside, &mut f1),
        Verdict::Forward(Side::Outside)
    );
    assert_eq!(e.counters().drops(DropReason::FragmentOverlap), 1);
}
