//! Warm restart with packet fixtures: an engine's state saved, encoded, decoded and restored
//! into a new engine with another clock, then checked by the packets that follow.

use super::super::tests::{Pkt, endpoints, ep, tcp, udp};
use super::*;
use crate::alloc::{ConfiguredAllocator, Share};
use crate::config::{Allocation, Config, DeterministicSpec, PortBlockSpec};
use crate::endpoint::{Ipv4Prefix, Side};
use crate::event::Event;
use crate::saved::codec::{self, Snapshot};
use crate::table::MappingOrigin;
use crate::verdict::Verdict;

const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

fn prefix(a: Ipv4Addr, len: u8) -> Ipv4Prefix {
    Ipv4Prefix::new(a, len).expect("prefix")
}

fn engine_with(f: impl FnOnce(&mut Config)) -> Engine<ConfiguredAllocator> {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 256;
    c.limits.max_mappings = 256;
    c.limits.max_static_sessions = 64;
    c.inside_networks = vec![prefix(Ipv4Addr::new(100, 64, 0, 0), 24)];
    c.explicit_mappings = true;
    f(&mut c);
    let cfg = c.validate().expect("valid test config");
    let alloc = ConfiguredAllocator::from_config(&cfg, Share::WHOLE).expect("allocator");
    Engine::with_allocator(cfg, alloc, 3)
}

fn modes() -> [Allocation; 3] {
    [
        Allocation::Dynamic,
        Allocation::PortBlock(PortBlockSpec {
            block_size: 64,
            max_blocks_per_subscriber: 4,
        }),
        Allocation::Deterministic(DeterministicSpec {
            inside: prefix(Ipv4Addr::new(100, 64, 0, 0), 24),
            outside: prefix(POOL, 32),
            ports_per_subscriber: None,
            overflow: None,
        }),
    ]
}

/// Sends `p` in from `side`: the verdict and the translated packet's endpoints.
fn send(
    e: &mut Engine<ConfiguredAllocator>,
    now: Instant,
    side: Side,
    mut p: Pkt,
) -> (Verdict, (Endpoint, Endpoint)) {
    let v = e.process(now, side, &mut p.buf, p.len);
    (v, endpoints(p.bytes()))
}

/// Through the file format, as the daemon does it.
fn through_a_file(state: SavedState) -> SavedState {
    let snap = Snapshot {
        saved_at_unix_ms: 1,
        state,
    };
    codec::decode(&codec::encode(&snap)).expect("decodes").state
}

/// What identifies the saved records, without their ages.
fn identities(s: &SavedState) -> Vec<String> {
    let mut v: Vec<String> = s
        .sessions
        .iter()
        .map(|r| {
            format!(
                "{:?} {} {} {} {}",
                r.proto, r.internal, r.external, r.remote, r.tcp
            )
        })
        .chain(s.explicit.iter().map(|r| {
            format!(
                "{:?} {} {} {:?} {:?}",
                r.proto, r.internal, r.external, r.origin, r.peers
            )
        }))
        .chain(
            s.held
                .iter()
                .map(|h| format!("{:?} {} {:?}", h.proto, h.external, h.subscriber)),
        )
        .collect();
    v.sort();
    v
}

#[test]
fn a_restored_engine_keeps_every_mapping_connection_and_hold() {
    for mode in modes() {
        let mut a = engine_with(|c| c.allocation = mode);
        let (udp_in, tcp_in, gone_in) = (ep(SUB, 5000), ep(SUB, 6000), ep(SUB, 7000));
        let (stun, web) = (ep(WAN, 3478), ep(WAN, 443));
        let (v, (udp_ext, _)) = send(&mut a, t(10), Side::Inside, udp(udp_in, stun, b"x"));
        assert_eq!(v, Verdict::Forward(Side::Outside));
        let (_, (tcp_ext, _)) = send(&mut a, t(10), Side::Inside, tcp(tcp_in, web, "S"));
        send(&mut a, t(10), Side::Outside, tcp(web, tcp_ext, "SA"));
        send(&mut a, t(10), Side::Inside, tcp(tcp_in, web, "A"));
        let (_, (gone_ext, _)) = send(&mut a, t(10), Side::Inside, udp(gone_in, stun, b"x"));
        a.delete_session(Protocol::Udp, gone_in, stun, t(11))
            .expect("deleted");
        let mapped = a
            .map_explicit(
                t(12),
                MapRequest {
                    proto: Protocol::Tcp,
                    internal: ep(SUB, 22),
                    lifetime: Duration::from_secs(600),
                    origin: MappingOrigin::Pcp { nonce: [7; 12] },
                    peers: Vec::new(),
                    suggested: None,
                },
                8,
            )
            .expect("mapped");
        let saved = a.save(t(20));
        assert_eq!(
            (saved.sessions.len(), saved.explicit.len()),
            (2, 1),
            "{mode:?}"
        );
        assert_eq!(saved.held.len(), 1, "{mode:?}: the deleted session's port");
        assert_eq!(saved.held[0].external, gone_ext);

        // Another process: its clock's origin is elsewhere; the gateway was down 3 s.
        let mut b = engine_with(|c| c.allocation = mode);
        let now = t(5000);
        let state = through_a_file(saved.clone());
        let done = b
            .restore(now, &state, Duration::from_secs(3))
            .expect("fits");
        assert_eq!(
            done,
            Restored {
                sessions: 2,
                explicit: 1,
                held: 1,
                held_skipped: 0
            },
            "{mode:?}"
        );
        assert_eq!(b.poll_event(), None, "nothing is logged twice");
        assert_eq!(b.counters().sessions_created, 0);
        assert_eq!(identities(&b.save(now)), identities(&saved), "{mode:?}");

        // The UDP flow keeps its external endpoint; the TCP connection carries on mid-stream
        // (no SYN), both ways.
        let (v, (src, _)) = send(&mut b, now, Side::Inside, udp(udp_in, stun, b"x"));
        assert_eq!(
            (v, src),
            (Verdict::Forward(Side::Outside), udp_ext),
            "{mode:?}"
        );
        let (v, (_, dst)) = send(&mut b, now, Side::Outside, tcp(web, tcp_ext, "A"));
        assert_eq!(
            (v, dst),
            (Verdict::Forward(Side::Inside), tcp_in),
            "{mode:?}"
        );
        let (v, (src, _)) = send(&mut b, now, Side::Inside, tcp(tcp_in, web, "PA"));
        assert_eq!(
            (v, src),
            (Verdict::Forward(Side::Outside), tcp_ext),
            "{mode:?}"
        );
        // The explicit mapping lets a new inbound connection in, on the same endpoint.
        let peer = ep(WAN, 40000);
        let (v, (_, dst)) = send(&mut b, now, Side::Outside, tcp(peer, mapped.external, "S"));
        assert_eq!(
            (v, dst),
            (Verdict::Forward(Side::Inside), ep(SUB, 22)),
            "{mode:?}"
        );
        // The held port is still held: a new flow of the same subscriber does not get it.
        let held: u32 = b
            .allocator()
            .usage()
            .iter()
            .map(|u| u.held_down[Protocol::Udp.index()])
            .sum();
        assert_eq!(held, 1, "{mode:?}");
    }
}

#[test]
fn what_ran_out_while_the_gateway_was_down_ends_at_the_first_timer() {
    let mut a = engine_with(|_| {});
    let flow = (ep(SUB, 5000), ep(WAN, 3478));
    send(&mut a, t(0), Side::Inside, udp(flow.0, flow.1, b"x"));
    // Idle 100 s at saving, down 250 s: past the UDP mapping timer (300 s), by 50 s.
    let saved = a.save(t(100));
    let mut b = engine_with(|_| {});
    let now = t(10_000);
    b.restore(now, &saved, Duration::from_secs(250))
        .expect("fits");
    assert_eq!(b.sessions().count(), 1);
    b.handle_timeout(now);
    assert_eq!(b.sessions().count(), 0);
    let ended = std::iter::from_fn(|| b.poll_event())
        .filter(|e| matches!(e, Event::SessionDeleted { .. }))
        .count();
    assert_eq!(ended, 1, "the end is logged");
}

#[test]
fn a_state_the_new_config_could_not_make_is_refused_by_record() {
    let mut a = engine_with(|_| {});
    send(
        &mut a,
        t(0),
        Side::Inside,
        udp(ep(SUB, 5000), ep(WAN, 3478), b"x"),
    );
    let saved = a.save(t(1));
    // Another pool: the external endpoint is not this allocator's to give.
    let mut b = engine_with(|c| c.pool = vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let e = b
        .restore(t(1), &saved, Duration::ZERO)
        .expect_err("another pool");
    assert!(
        e.record
            .starts_with("udp 100.64.0.10:5000 -> 198.51.100.1:"),
        "{e}"
    );
    assert!(e.why.contains("external endpoint"), "{e}");
    // A subscriber the new config does not serve.
    let mut c = engine_with(|c| c.inside_networks = vec![prefix(Ipv4Addr::new(10, 0, 0, 0), 8)]);
    let e = c
        .restore(t(1), &saved, Duration::ZERO)
        .expect_err("not inside");
    assert!(e.why.contains("inside networks"), "{e}");
    // Saved twice (two workers' files merged by mistake).
    let mut twice = saved.clone();
    twice.sessions.push(saved.sessions[0]);
    let mut d = engine_with(|_| {});
    let e = d.restore(t(1), &twice, Duration::ZERO).expect_err("twice");
    assert!(e.why.contains("twice"), "{e}");
}
