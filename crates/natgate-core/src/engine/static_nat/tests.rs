//! Engine tests for static NAT rules and virtual servers: packets built with
//! `etherparse`, translated by the engine, and checked field by field and checksum by checksum
//! (every forwarded packet goes through `assert_checksums`).

use super::super::tests::{Pkt, assert_checksums, endpoints, ep, tcp, udp};
use super::*;
use crate::config::Config;
use crate::vserver::{Algorithm, RealServerSpec, ServerState, VirtualServerSpec};
use etherparse::{Ipv4Header, PacketBuilder};

const POOL: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn a(o: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(o)
}

/// A rule chain from `[[rule]]` tables, as a config file states it.
fn chain(text: &str) -> RuleChain {
    #[derive(serde::Deserialize)]
    struct File {
        rule: RuleChain,
    }
    toml::from_str::<File>(text).expect("rules parse").rule
}

fn config(rules: &str, f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::new(POOL.to_vec(), INSIDE);
    c.limits.max_sessions = 1024;
    c.limits.max_mappings = 1024;
    c.limits.max_static_sessions = 64;
    if !rules.is_empty() {
        c.rules = chain(rules);
    }
    f(&mut c);
    c
}

fn engine(rules: &str, f: impl FnOnce(&mut Config)) -> Engine {
    Engine::new(config(rules, f).validate().expect("valid config"), 11)
}

fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

/// Processes `p` arriving on `side`; when forwarded, checks every checksum and returns the
/// translated packet's endpoints.
fn send(e: &mut Engine, now: Instant, side: Side, p: &mut Pkt) -> (Verdict, Endpoint, Endpoint) {
    let v = e.process(now, side, &mut p.buf, p.len);
    let (src, dst) = endpoints(p.bytes());
    if let Verdict::Forward(_) = v {
        assert_checksums(p.bytes());
    }
    (v, src, dst)
}

fn fwd(e: &mut Engine, now: Instant, side: Side, mut p: Pkt) -> (Endpoint, Endpoint) {
    let (v, src, dst) = send(e, now, side, &mut p);
    assert_eq!(v, Verdict::Forward(side.opposite()), "forwarded");
    (src, dst)
}

const HOST_NAT: &str = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
src = "10.0.0.7/32"
action.translate.src = { addr = "192.0.2.7/32" }
"#;

#[test]
fn host_nat_1to1_both_directions() {
    let mut e = engine(HOST_NAT, |_| {});
    let host = ep(a([10, 0, 0, 7]), 5000);
    let ext = ep(a([192, 0, 2, 7]), 5000);
    // Outbound: the address changes, the port does not (a 1:1 rule has no port allocation).
    let (src, dst) = fwd(&mut e, t(0), Side::Inside, udp(host, ep(WAN, 53), b"q"));
    assert_eq!((src, dst), (ext, ep(WAN, 53)));
    // The reply comes back to the static address, which is not a pool address.
    let (src, dst) = fwd(&mut e, t(1), Side::Outside, udp(ep(WAN, 53), ext, b"a"));
    assert_eq!((src, dst), (ep(WAN, 53), host));
    // A connection started from outside to the static address reaches the host.
    let ssh = ep(a([192, 0, 2, 7]), 22);
    let (src, dst) = fwd(&mut e, t(2), Side::Outside, tcp(ep(WAN2, 40000), ssh, "S"));
    assert_eq!((src, dst), (ep(WAN2, 40000), ep(a([10, 0, 0, 7]), 22)));
    let (src, _) = fwd(
        &mut e,
        t(2),
        Side::Inside,
        tcp(ep(a([10, 0, 0, 7]), 22), ep(WAN2, 40000), "SA"),
    );
    assert_eq!(src, ssh);
    assert_eq!(e.mapping_count(), 0, "no dynamic mapping");
    assert_eq!(e.static_session_count(), 2);
    assert_eq!(e.counters().static_sessions_created, 2);
    assert!(
        e.sessions()
            .all(|s| s.origin == SessionOrigin::Rule(RuleId(1)))
    );
    // Another address outside the pool is still not ours.
    let (v, _, _) = send(
        &mut e,
        t(3),
        Side::Outside,
        &mut udp(ep(WAN, 53), ep(a([192, 0, 2, 8]), 5000), b"x"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NotPoolAddress));
    // Not even answered when its TTL runs out: the address is nobody's here.
    let mut v = Vec::new();
    PacketBuilder::ipv4(WAN.octets(), [192, 0, 2, 8], 1)
        .udp(53, 5000)
        .write(&mut v, b"x")
        .expect("build udp");
    let (v, _, _) = send(&mut e, t(3), Side::Outside, &mut Pkt::new(&v));
    assert_eq!(v, Verdict::Drop(DropReason::NotPoolAddress));
}

#[test]
fn network_to_network_bidirectional_keeps_host_bits() {
    let rules = r#"
[[rule]]
id = 5
direction = "outbound"
bidirectional = true
src = "10.1.2.0/24"
action.translate.src = { addr = "192.0.2.0/24" }
"#;
    let mut e = engine(rules, |_| {});
    let (src, _) = fwd(
        &mut e,
        t(0),
        Side::Inside,
        udp(ep(a([10, 1, 2, 7]), 4000), ep(WAN, 53), b"q"),
    );
    assert_eq!(src, ep(a([192, 0, 2, 7]), 4000));
    // Started from outside, to another host of the network: the reverse rule.
    let (src, dst) = fwd(
        &mut e,
        t(1),
        Side::Outside,
        udp(ep(WAN2, 7000), ep(a([192, 0, 2, 200]), 53), b"q"),
    );
    assert_eq!((src, dst), (ep(WAN2, 7000), ep(a([10, 1, 2, 200]), 53)));
    // Its reply goes out through the session.
    let (src, dst) = fwd(
        &mut e,
        t(1),
        Side::Inside,
        udp(ep(a([10, 1, 2, 200]), 53), ep(WAN2, 7000), b"a"),
    );
    assert_eq!((src, dst), (ep(a([192, 0, 2, 200]), 53), ep(WAN2, 7000)));
    assert_eq!(e.static_session_count(), 2);
}

const PORT_FORWARD: &str = r#"
[[rule]]
id = 10
direction = "inbound"
bidirectional = true
proto = "tcp"
dst = "198.51.100.10/32"
dst-ports = 80
action.translate.dst = { addr = "10.0.0.5/32", port = 8888 }
"#;

#[test]
fn port_forward_80_to_8888_and_replies_from_80() {
    let mut e = engine(PORT_FORWARD, |_| {});
    let client = ep(WAN, 40000);
    let web = ep(a([198, 51, 100, 10]), 80);
    let server = ep(a([10, 0, 0, 5]), 8888);
    let (src, dst) = fwd(&mut e, t(0), Side::Outside, tcp(client, web, "S"));
    assert_eq!((src, dst), (client, server));
    let (src, dst) = fwd(&mut e, t(0), Side::Inside, tcp(server, client, "SA"));
    assert_eq!((src, dst), (web, client), "the reply leaves from port 80");
    let (_, dst) = fwd(&mut e, t(1), Side::Outside, tcp(client, web, "A"));
    assert_eq!(dst, server);
    let s = e.sessions().next().expect("one session");
    assert_eq!(
        (s.internal, s.external, s.remote, s.tcp),
        (
            server,
            web,
            client,
            Some(crate::tcp_state::TcpPhase::Established)
        )
    );
    // Only a SYN opens a TCP session (RFC 5382); a stray ACK is dropped, not forwarded.
    let (v, _, _) = send(
        &mut e,
        t(2),
        Side::Outside,
        &mut tcp(ep(WAN2, 1234), web, "A"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::TcpNoSession));
    // Other ports of the address are not forwarded.
    let (v, _, _) = send(
        &mut e,
        t(2),
        Side::Outside,
        &mut tcp(client, ep(a([198, 51, 100, 10]), 81), "S"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NotPoolAddress));
}

#[test]
fn twice_nat_translates_both_views_and_the_reply() {
    let rules = r#"
[[rule]]
id = 3
direction = "outbound"
src = "10.0.0.5/32"
dst = "192.0.2.80/32"
action.translate.src = { addr = "198.51.100.20/32" }
action.translate.dst = { addr = "203.0.113.80/32" }
"#;
    let mut e = engine(rules, |_| {});
    let host = ep(a([10, 0, 0, 5]), 1234);
    let seen_inside = ep(a([192, 0, 2, 80]), 80);
    let seen_outside = ep(a([203, 0, 113, 80]), 80);
    let (src, dst) = fwd(&mut e, t(0), Side::Inside, tcp(host, seen_inside, "S"));
    assert_eq!((src, dst), (ep(a([198, 51, 100, 20]), 1234), seen_outside));
    // The one-way rule's reply comes back through the session, both fields restored.
    let (src, dst) = fwd(&mut e, t(0), Side::Outside, tcp(seen_outside, src, "SA"));
    assert_eq!((src, dst), (seen_inside, host));
    let s = e.sessions().next().expect("session");
    assert_eq!(s.origin, SessionOrigin::Rule(RuleId(3)));
    assert_eq!((s.internal, s.remote), (host, seen_outside));
    // Without the rule's reverse, nobody outside can start a flow to the address.
    let (v, _, _) = send(
        &mut e,
        t(1),
        Side::Outside,
        &mut tcp(seen_outside, ep(a([198, 51, 100, 20]), 1235), "S"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NotPoolAddress));
}

#[test]
fn overlapping_networks_reach_each_other_through_virtual_prefixes() {
    // Both sites use 10.0.0.0/24. Here the far site is 172.16.1.0/24, and this site appears
    // there as 172.16.0.0/24.
    let rules = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
src = "10.0.0.0/24"
dst = "172.16.1.0/24"
action.translate.src = { addr = "172.16.0.0/24" }
action.translate.dst = { addr = "10.0.0.0/24" }
"#;
    let mut e = engine(rules, |_| {});
    let here = ep(a([10, 0, 0, 5]), 3000);
    let (src, dst) = fwd(
        &mut e,
        t(0),
        Side::Inside,
        udp(here, ep(a([172, 16, 1, 9]), 53), b"q"),
    );
    assert_eq!(
        (src, dst),
        (ep(a([172, 16, 0, 5]), 3000), ep(a([10, 0, 0, 9]), 53))
    );
    let (src, dst) = fwd(&mut e, t(0), Side::Outside, udp(dst, src, b"a"));
    assert_eq!((src, dst), (ep(a([172, 16, 1, 9]), 53), here));
    // The far site starts a flow to this site's virtual address.
    let (src, dst) = fwd(
        &mut e,
        t(1),
        Side::Outside,
        udp(
            ep(a([10, 0, 0, 9]), 7000),
            ep(a([172, 16, 0, 6]), 161),
            b"get",
        ),
    );
    assert_eq!(
        (src, dst),
        (ep(a([172, 16, 1, 9]), 7000), ep(a([10, 0, 0, 6]), 161))
    );
}

#[test]
fn rfc6888_req6_exemption_passes_untranslated_without_dynamic_mapping() {
    let rules = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
dst = "192.0.2.0/24"
action = "exempt"
"#;
    let mut e = engine(rules, |_| {});
    let sub = ep(SUB, 5000);
    let service = ep(a([192, 0, 2, 53]), 53);
    let (src, dst) = fwd(&mut e, t(0), Side::Inside, udp(sub, service, b"q"));
    assert_eq!((src, dst), (sub, service), "untranslated");
    let (src, dst) = fwd(&mut e, t(0), Side::Outside, udp(service, sub, b"a"));
    assert_eq!((src, dst), (service, sub), "the reverse is exempt too");
    // TCP needs no SYN: an exemption keeps no state.
    fwd(
        &mut e,
        t(0),
        Side::Inside,
        tcp(sub, ep(a([192, 0, 2, 80]), 80), "A"),
    );
    assert_eq!(e.mapping_count(), 0, "dynamic NAPT never saw them");
    assert_eq!(e.session_count(), 0);
    assert_eq!(e.counters().exempted_packets, 3);
    // An ICMP error from the service about a subscriber's packet passes untranslated too.
    let mut err = icmp_error(service.addr, sub.addr, udp(sub, service, b"q").bytes());
    let (v, _, _) = send(&mut e, t(0), Side::Outside, &mut err);
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(e.counters().exempted_packets, 4);
    // Everything else still goes through dynamic NAPT.
    let (src, _) = fwd(&mut e, t(0), Side::Inside, udp(sub, ep(WAN, 53), b"q"));
    assert!(POOL.contains(&src.addr));
    assert_eq!(e.mapping_count(), 1);
}

#[test]
fn static_wins_over_dynamic_and_reserved_ports_are_never_allocated() {
    // Rule 1 holds UDP ports 1024-65535 of pool address .1 for one host; rule 2 forwards TCP
    // 198.51.100.2:8080.
    let rules = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
proto = "udp"
src = "100.64.0.50/32"
src-ports = "1024-65535"
action.translate.src = { addr = "198.51.100.1/32", port = 1024 }

[[rule]]
id = 2
direction = "inbound"
proto = "tcp"
dst = "198.51.100.2/32"
dst-ports = 8080
action.translate.dst = { addr = "100.64.0.60/32", port = 80 }
"#;
    let mut e = engine(rules, |_| {});
    // The host has a dynamic TCP mapping; its new UDP flow still takes the rule.
    let host = a([100, 64, 0, 50]);
    fwd(
        &mut e,
        t(0),
        Side::Inside,
        tcp(ep(host, 6000), ep(WAN, 80), "S"),
    );
    let (src, _) = fwd(
        &mut e,
        t(0),
        Side::Inside,
        udp(ep(host, 6000), ep(WAN, 53), b"q"),
    );
    assert_eq!(src, ep(POOL[0], 6000 - 1024 + 1024));
    assert_eq!(e.counters().static_sessions_created, 1);
    // Many subscribers, many flows: no UDP port of .1 from 1024 up, no TCP 8080 on .2.
    for i in 0..300u32 {
        // Subscribers from 100.64.1.0 on: none of them is the rule's host.
        let sub = Ipv4Addr::from_bits(0x6440_0100 + i);
        let port = 1024 + (i as u16) * 7;
        let (src, _) = fwd(
            &mut e,
            t(1),
            Side::Inside,
            udp(ep(sub, port), ep(WAN, 53), b"q"),
        );
        assert!(
            !(src.addr == POOL[0] && src.port >= 1024),
            "reserved {src} handed out"
        );
        let (src, _) = fwd(
            &mut e,
            t(1),
            Side::Inside,
            tcp(ep(sub, 8080), ep(WAN, 443), "S"),
        );
        assert_ne!(src, ep(POOL[1], 8080), "the forwarded port handed out");
    }
    // The allocator does not count withheld ports as used.
    let usage = e.allocator().usage();
    let udp_on_1: u32 = usage
        .iter()
        .filter(|u| u.addr == POOL[0])
        .map(|u| u.in_use[Protocol::Udp.index()])
        .sum();
    assert!(udp_on_1 < 1024, "{udp_on_1} UDP ports in use on .1");
}

fn web(servers: &[(Ipv4Addr, Option<u16>, u32)], scheduler: Algorithm) -> VirtualServerSpec {
    VirtualServerSpec {
        address: a([198, 51, 100, 80]),
        port: 80,
        protocol: Protocol::Tcp,
        scheduler,
        affinity: None,
        health: None,
        real_servers: servers
            .iter()
            .map(|&(address, port, weight)| RealServerSpec {
                address,
                port,
                weight,
            })
            .collect(),
    }
}

const R1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const R2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const VIP: Endpoint = Endpoint::new(Ipv4Addr::new(198, 51, 100, 80), 80);

fn vs_engine(servers: &[(Ipv4Addr, Option<u16>, u32)], scheduler: Algorithm) -> Engine {
    engine("", |c| {
        c.limits.max_static_sessions = 4096;
        c.virtual_servers.push(web(servers, scheduler));
    })
}

/// Opens a connection from `client` to the virtual server; returns the real server it reached.
fn connect(e: &mut Engine, now: Instant, client: Endpoint) -> Endpoint {
    let (src, dst) = fwd(e, now, Side::Outside, tcp(client, VIP, "S"));
    assert_eq!(src, client);
    dst
}

#[test]
fn virtual_server_splits_new_connections_by_weight() {
    let mut e = vs_engine(
        &[(R1, None, 1), (R2, Some(8080), 2)],
        Algorithm::WeightedLeastConnections,
    );
    let mut counts = [0u32; 2];
    for i in 0..3000u16 {
        let client = ep(WAN, 10000 + i);
        let real = connect(&mut e, t(0), client);
        match real {
            r if r == ep(R1, 80) => counts[0] += 1,
            r if r == ep(R2, 8080) => counts[1] += 1,
            r => panic!("unexpected real server {r}"),
        }
        // The reply leaves as the virtual endpoint.
        let (src, dst) = fwd(&mut e, t(0), Side::Inside, tcp(real, client, "SA"));
        assert_eq!((src, dst), (VIP, client));
    }
    // Weights 1:2 over 3000 connections: 1000 and 2000, within 5 %.
    let share = f64::from(counts[1]) / f64::from(counts[0]);
    assert!((1.9..=2.1).contains(&share), "split {counts:?}");
    let v = &e.virtual_servers()[0];
    assert_eq!(
        v.servers()[0].connections() + v.servers()[1].connections(),
        3000
    );
    assert!(v.servers()[1].bytes() > v.servers()[0].bytes());
    assert_eq!(e.counters().vserver_sessions_created, 3000);
    assert!(e.sessions().all(|s| matches!(
        s.origin,
        SessionOrigin::VirtualServer { address, .. } if address == VIP
    )));
}

#[test]
fn drain_keeps_connections_new_ones_go_elsewhere_then_remove() {
    let mut e = vs_engine(&[(R1, None, 1), (R2, None, 1)], Algorithm::RoundRobin);
    let first = connect(&mut e, t(0), ep(WAN, 1000));
    let second = connect(&mut e, t(0), ep(WAN, 1001));
    assert_ne!(first, second);
    let drained = e.virtual_servers()[0]
        .find(first.addr, first.port)
        .expect("server");
    let v = e.virtual_server_mut(Protocol::Tcp, VIP).expect("vserver");
    v.drain(drained).expect("drain");
    assert_eq!(
        v.server(drained).map(|s| s.state()),
        Some(ServerState::Draining)
    );
    // The open connection keeps its server, both ways.
    let (_, dst) = fwd(&mut e, t(1), Side::Outside, tcp(ep(WAN, 1000), VIP, "A"));
    assert_eq!(dst, first);
    let (src, _) = fwd(&mut e, t(1), Side::Inside, tcp(first, ep(WAN, 1000), "A"));
    assert_eq!(src, VIP);
    // New connections all go to the other server.
    for i in 0..10 {
        assert_eq!(connect(&mut e, t(1), ep(WAN, 2000 + i)), second);
    }
    // Removal waits for the last connection (or force); the connection then carries on.
    let v = e.virtual_server_mut(Protocol::Tcp, VIP).expect("vserver");
    assert!(v.remove(drained, false).is_err(), "still connected");
    v.remove(drained, true).expect("forced");
    let (_, dst) = fwd(&mut e, t(2), Side::Outside, tcp(ep(WAN, 1000), VIP, "A"));
    assert_eq!(dst, first, "the open connection survives removal");
    // It ends (RST, then the linger timer) without disturbing the other server's counts.
    fwd(&mut e, t(3), Side::Inside, tcp(first, ep(WAN, 1000), "R"));
    let before = e.virtual_servers()[0].servers()[0].connections();
    e.handle_timeout(t(100_000));
    assert_eq!(e.static_session_count(), 0);
    assert_eq!(e.virtual_servers()[0].servers().len(), 1);
    assert_eq!(before, 11);
    assert_eq!(e.virtual_servers()[0].servers()[0].connections(), 0);
}

#[test]
fn all_real_servers_down_is_a_counted_drop() {
    // Three servers: one fails its health check, one is drained, one is removed.
    let r3 = Ipv4Addr::new(10, 0, 1, 3);
    let mut e = engine("", |c| {
        let mut spec = web(
            &[(R1, None, 1), (R2, None, 1), (r3, None, 1)],
            Algorithm::RoundRobin,
        );
        spec.health = Some(crate::vserver::HealthSpec {
            probe: crate::vserver::ProbeSpec::TcpConnect,
            interval: 5,
            timeout: 1,
            rise: 1,
            fall: 1,
        });
        c.virtual_servers.push(spec);
    });
    let ids: Vec<_> = e.virtual_servers()[0]
        .servers()
        .iter()
        .map(|s| s.id())
        .collect();
    let v = e.virtual_server_mut(Protocol::Tcp, VIP).expect("vserver");
    // At start the probes are spread over one interval; by then every one is due.
    let mut probes = Vec::new();
    while let Some(req) = v.next_probe(t(5)) {
        probes.push(req.server);
    }
    assert_eq!(probes.len(), 3);
    for id in probes {
        v.on_probe_result(id, id != ids[0], t(5))
            .expect("probe in flight");
    }
    assert_eq!(v.server(ids[0]).map(|s| s.state()), Some(ServerState::Down));
    v.drain(ids[1]).expect("drain");
    v.remove(ids[2], false).expect("remove");
    let (verdict, _, _) = send(&mut e, t(5), Side::Outside, &mut tcp(ep(WAN, 1), VIP, "S"));
    assert_eq!(verdict, Verdict::Drop(DropReason::NoRealServer));
    assert_eq!(e.counters().drops(DropReason::NoRealServer), 1);
    assert_eq!(e.static_session_count(), 0);
    // The server coming back up takes the next connection.
    let v = e.virtual_server_mut(Protocol::Tcp, VIP).expect("vserver");
    let req = v.next_probe(t(10)).expect("the down server's next probe");
    assert_eq!(req.server, ids[0]);
    v.on_probe_result(ids[0], true, t(10)).expect("in flight");
    assert_eq!(connect(&mut e, t(10), ep(WAN, 2)), ep(R1, 80));
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes of `quoted`.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, quoted: &[u8]) -> Pkt {
    let b = PacketBuilder::ipv4(from.octets(), to.octets(), 64).icmpv4_raw(3, 3, [0; 4]);
    let mut v = Vec::new();
    b.write(&mut v, &quoted[..quoted.len().min(28)])
        .expect("build icmp error");
    Pkt::new(&v)
}

/// The quoted packet's source and destination in an ICMP error.
fn quoted(p: &Pkt) -> (Endpoint, Endpoint) {
    let (_, l4) = Ipv4Header::from_slice(p.bytes()).expect("ipv4");
    let (inner, rest) = Ipv4Header::from_slice(&l4[8..]).expect("quoted ipv4");
    assert_eq!(inner.header_checksum, inner.calc_header_checksum());
    let port = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
    (
        ep(inner.source.into(), port(0)),
        ep(inner.destination.into(), port(2)),
    )
}

#[test]
fn icmp_errors_about_a_port_forwarded_flow_are_translated() {
    let mut e = engine(PORT_FORWARD, |_| {});
    let client = ep(WAN, 40000);
    let web = ep(a([198, 51, 100, 10]), 80);
    let server = ep(a([10, 0, 0, 5]), 8888);
    fwd(&mut e, t(0), Side::Outside, tcp(client, web, "S"));
    let mut reply = tcp(server, client, "SA");
    fwd_in_place(&mut e, &mut reply, Side::Inside);
    // A router on the way to the client reports the reply undeliverable.
    let router = a([203, 0, 113, 254]);
    let mut err = icmp_error(router, web.addr, reply.bytes());
    let (v, src, _) = send(&mut e, t(1), Side::Outside, &mut err);
    assert_eq!(v, Verdict::Forward(Side::Inside));
    let (ip, _) = Ipv4Header::from_slice(err.bytes()).expect("ipv4");
    assert_eq!((src.addr, a(ip.destination)), (router, server.addr));
    assert_eq!(
        quoted(&err),
        (server, client),
        "the quoted reply as the server sent it"
    );
    // The server's own error about a client packet goes out in the outside view.
    let mut req = tcp(client, web, "A");
    fwd_in_place(&mut e, &mut req, Side::Outside);
    let mut err = icmp_error(server.addr, client.addr, req.bytes());
    let (v, _, _) = send(&mut e, t(2), Side::Inside, &mut err);
    assert_eq!(v, Verdict::Forward(Side::Outside));
    let (ip, _) = Ipv4Header::from_slice(err.bytes()).expect("ipv4");
    assert_eq!((a(ip.source), a(ip.destination)), (web.addr, client.addr));
    assert_eq!(quoted(&err), (client, web));
}

fn fwd_in_place(e: &mut Engine, p: &mut Pkt, side: Side) {
    let (v, _, _) = send(e, t(0), side, p);
    assert_eq!(v, Verdict::Forward(side.opposite()));
}

#[test]
fn reconfigure_with_a_changed_chain_keeps_sessions() {
    let mut e = engine(PORT_FORWARD, |_| {});
    let client = ep(WAN, 40000);
    let web = ep(a([198, 51, 100, 10]), 80);
    let server = ep(a([10, 0, 0, 5]), 8888);
    fwd(&mut e, t(0), Side::Outside, tcp(client, web, "S"));
    // The forward now goes to another server: new connections follow, the open one stays.
    let moved = PORT_FORWARD.replace("10.0.0.5/32", "10.0.0.6/32");
    e.reconfigure(&config(&moved, |_| {}).validate().expect("valid"))
        .expect("reload");
    let (_, dst) = fwd(&mut e, t(1), Side::Outside, tcp(client, web, "A"));
    assert_eq!(dst, server, "existing session keeps its translation");
    let (_, dst) = fwd(&mut e, t(1), Side::Outside, tcp(ep(WAN, 40001), web, "S"));
    assert_eq!(dst, ep(a([10, 0, 0, 6]), 8888));
    // Without any rule the sessions still run until they end.
    e.reconfigure(&config("", |_| {}).validate().expect("valid"))
        .expect("reload");
    assert!(e.rules().is_empty());
    let (_, dst) = fwd(&mut e, t(2), Side::Outside, tcp(client, web, "A"));
    assert_eq!(dst, server);
    let (v, _, _) = send(
        &mut e,
        t(2),
        Side::Outside,
        &mut tcp(ep(WAN, 40002), web, "S"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::NotPoolAddress));
}

#[test]
fn static_sessions_expire_with_the_dynamic_timers_and_say_so() {
    let mut e = engine(HOST_NAT, |_| {});
    fwd(
        &mut e,
        t(0),
        Side::Inside,
        udp(ep(a([10, 0, 0, 7]), 5000), ep(WAN, 53), b"q"),
    );
    while e.poll_event().is_some() {}
    // RFC 4787 REQ-5: the UDP timer (300 s) applies.
    e.handle_timeout(t(299));
    assert_eq!(e.static_session_count(), 1);
    assert!(e.next_timeout().is_some_and(|n| n <= t(301)));
    e.handle_timeout(t(301));
    assert_eq!(e.static_session_count(), 0);
    assert_eq!(e.counters().static_sessions_deleted, 1);
    assert!(matches!(
        e.poll_event(),
        Some(Event::SessionDeleted { internal, .. }) if internal == ep(a([10, 0, 0, 7]), 5000)
    ));
}

#[test]
fn a_rule_made_session_is_logged_with_its_rule_id() {
    let mut e = engine(HOST_NAT, |_| {});
    let host = ep(a([10, 0, 0, 7]), 5000);
    fwd(&mut e, t(0), Side::Inside, udp(host, ep(WAN, 53), b"q"));
    let created: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
    assert!(
        matches!(
            created.as_slice(),
            [Event::SessionCreated { internal, origin: SessionOrigin::Rule(RuleId(1)), .. }]
                if *internal == host
        ),
        "{created:?}"
    );
    e.handle_timeout(t(301));
    let deleted: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
    assert!(
        matches!(
            deleted.as_slice(),
            [Event::SessionDeleted { internal, origin: SessionOrigin::Rule(RuleId(1)), .. }]
                if *internal == host
        ),
        "{deleted:?}"
    );
}

#[test]
fn a_full_static_table_is_a_counted_drop() {
    let mut e = engine(HOST_NAT, |c| c.limits.max_static_sessions = 2);
    for port in 1..=2 {
        fwd(
            &mut e,
            t(0),
            Side::Inside,
            udp(ep(a([10, 0, 0, 7]), port), ep(WAN, 53), b"q"),
        );
    }
    let (v, _, _) = send(
        &mut e,
        t(0),
        Side::Inside,
        &mut udp(ep(a([10, 0, 0, 7]), 3), ep(WAN, 53), b"q"),
    );
    assert_eq!(v, Verdict::Drop(DropReason::StaticTableFull));
    assert_eq!(e.counters().drops(DropReason::StaticTableFull), 1);
}

#[test]
fn icmp_echo_through_a_host_rule_keeps_its_identifier() {
    let mut e = engine(HOST_NAT, |_| {});
    let mut p = super::super::tests::echo(a([10, 0, 0, 7]), WAN, 77, true);
    let (v, src, dst) = send(&mut e, t(0), Side::Inside, &mut p);
    assert_eq!(v, Verdict::Forward(Side::Outside));
    assert_eq!((src, dst.addr), (ep(a([192, 0, 2, 7]), 77), WAN));
    let mut r = super::super::tests::echo(WAN, a([192, 0, 2, 7]), 77, false);
    let (v, _, dst) = send(&mut e, t(0), Side::Outside, &mut r);
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(dst, ep(a([10, 0, 0, 7]), 77));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A bidirectional rule mapping `src_net/len` onto `172.20.0.0/len` (same length, host
    /// bits kept), and with `twice` also `192.0.2.0/24` onto `203.0.113.0/24` as destination.
    fn rule_text(len: u8, twice: bool) -> String {
        let dst = if twice {
            "dst = \"192.0.2.0/24\"\naction.translate.dst = { addr = \"203.0.113.0/24\" }\n"
        } else {
            ""
        };
        format!(
            "[[rule]]\nid = 1\ndirection = \"outbound\"\nbidirectional = true\n\
             src = \"10.32.0.0/{len}\"\n{dst}action.translate.src = {{ addr = \"172.20.0.0/{len}\" }}\n"
        )
    }

    fn mask(len: u8) -> u32 {
        if len >= 32 { 0 } else { u32::MAX >> len }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Through a random prefix rule (with or without twice-NAT), any TCP, UDP or ICMP echo
        /// flow goes out with the host bits kept and valid checksums, and its reply comes back
        /// to exactly the original endpoints.
        #[test]
        fn a_rule_translated_flow_and_its_reply_round_trip(
            len in 16u8..=32,
            twice in any::<bool>(),
            host in any::<u32>(),
            peer in any::<u8>(),
            sport in 1u16..,
            dport in 1u16..,
            proto in 0u8..3,
        ) {
            let mut e = engine(&rule_text(len, twice), |_| {});
            let inside = Ipv4Addr::from_bits(0x0a20_0000 | (host & mask(len)));
            let outside = Ipv4Addr::from_bits(0xac14_0000 | (host & mask(len)));
            let (peer_in, peer_out) = if twice {
                (a([192, 0, 2, peer]), a([203, 0, 113, peer]))
            } else {
                (a([198, 18, 0, peer]), a([198, 18, 0, peer]))
            };
            let (src, dst) = (ep(inside, sport), ep(peer_in, dport));
            let (request, reply): (Pkt, Box<dyn Fn(Endpoint, Endpoint) -> Pkt>) = match proto {
                0 => (tcp(src, dst, "S"), Box::new(|s, d| tcp(s, d, "SA"))),
                1 => (udp(src, dst, b"q"), Box::new(|s, d| udp(s, d, b"a"))),
                _ => (
                    super::super::super::tests::echo(inside, peer_in, sport, true),
                    Box::new(move |s: Endpoint, d: Endpoint| {
                        super::super::super::tests::echo(s.addr, d.addr, sport, false)
                    }),
                ),
            };
            let (v, out_src, out_dst) = send(&mut e, t(0), Side::Inside, &mut request.clone());
            prop_assert_eq!(v, Verdict::Forward(Side::Outside));
            prop_assert_eq!(out_src.addr, outside, "host bits kept");
            prop_assert_eq!(out_dst.addr, peer_out);
            prop_assert_eq!(out_src.port, src.port, "ports (and identifiers) kept");
            let (v, back_src, back_dst) =
                send(&mut e, t(1), Side::Outside, &mut reply(out_dst, out_src));
            prop_assert_eq!(v, Verdict::Forward(Side::Inside));
            prop_assert_eq!(back_dst, src);
            prop_assert_eq!(back_src.addr, dst.addr);
            if proto != 2 {
                prop_assert_eq!(back_src, dst);
            }
            prop_assert_eq!(e.mapping_count(), 0);
        }
    }
}

#[test]
fn rfc4787_req9_hairpin_to_a_port_forward_on_a_pool_address() {
    // TCP 198.51.100.1:80 (a pool address) forwards to 10.0.0.5:8888.
    let rules = PORT_FORWARD.replace("198.51.100.10/32", "198.51.100.1/32");
    let mut e = engine(&rules, |_| {});
    let client = ep(SUB, 40000);
    let web = ep(POOL[0], 80);
    let server = ep(a([10, 0, 0, 5]), 8888);
    // The subscriber's SYN goes back in, to the server, from the subscriber's external endpoint.
    let (v, src, dst) = send(&mut e, t(0), Side::Inside, &mut tcp(client, web, "S"));
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!(dst, server);
    assert!(
        POOL.contains(&src.addr) && src != web,
        "external source {src}"
    );
    let client_ext = src;
    // The server's answer is hairpinned back to the subscriber, from the forwarded endpoint.
    let (v, src, dst) = send(
        &mut e,
        t(0),
        Side::Inside,
        &mut tcp(server, client_ext, "SA"),
    );
    assert_eq!(v, Verdict::Forward(Side::Inside));
    assert_eq!((src, dst), (web, client));
    let (v, _, dst) = send(&mut e, t(1), Side::Inside, &mut tcp(client, web, "A"));
    assert_eq!((v, dst), (Verdict::Forward(Side::Inside), server));
    assert_eq!(e.counters().hairpinned_packets, 3);
    assert_eq!(e.static_session_count(), 1);
    // The TTL went down by one on each trip, not two.
    let mut p = tcp(client, web, "A");
    send(&mut e, t(1), Side::Inside, &mut p);
    assert_eq!(p.bytes()[8], 63);
}

#[test]
fn a_deleted_rules_sessions_run_on_until_flushed_then_only_they_end() {
    let both = format!("{HOST_NAT}{PORT_FORWARD}");
    let mut e = engine(&both, |_| {});
    let host = a([10, 0, 0, 7]);
    for port in [5000, 5001] {
        fwd(
            &mut e,
            t(0),
            Side::Inside,
            udp(ep(host, port), ep(WAN, 53), b"q"),
        );
    }
    let client = ep(WAN, 40000);
    let web = ep(a([198, 51, 100, 10]), 80);
    fwd(&mut e, t(0), Side::Outside, tcp(client, web, "S"));
    while e.poll_event().is_some() {}
    // `ctl rule delete 1`: new flows stop, the existing ones keep their translation.
    e.reconfigure(&config(PORT_FORWARD, |_| {}).validate().expect("valid"))
        .expect("reload");
    assert_eq!(e.static_session_count(), 3);
    let (src, _) = fwd(
        &mut e,
        t(1),
        Side::Inside,
        udp(ep(host, 5000), ep(WAN, 53), b"q"),
    );
    assert_eq!(src, ep(a([192, 0, 2, 7]), 5000));
    // `--flush`: the deleted rule's sessions end, each with its event; the forward's stays.
    assert_eq!(e.flush_rule_sessions(RuleId(1), t(2)), 2);
    assert_eq!(e.static_session_count(), 1);
    assert_eq!(e.counters().static_sessions_deleted, 2);
    let mut ended = Vec::new();
    while let Some(ev) = e.poll_event() {
        if let Event::SessionDeleted { internal, .. } = ev {
            ended.push(internal);
        }
    }
    ended.sort_by_key(|i| i.port);
    assert_eq!(ended, [ep(host, 5000), ep(host, 5001)]);
    assert_eq!(e.flush_rule_sessions(RuleId(1), t(2)), 0);
    let (_, dst) = fwd(&mut e, t(2), Side::Outside, tcp(client, web, "A"));
    assert_eq!(dst, ep(a([10, 0, 0, 5]), 8888));
    // The host's next packet is no longer the rule's: it leaves by dynamic NAPT.
    let (src, _) = fwd(
        &mut e,
        t(3),
        Side::Inside,
        udp(ep(host, 5000), ep(WAN, 53), b"q"),
    );
    assert!(POOL.contains(&src.addr), "{src:?}");
}

#[test]
fn sessions_follow_their_rule_when_an_insert_renumbers_the_chain() {
    let mut e = engine(HOST_NAT, |_| {});
    let host = a([10, 0, 0, 7]);
    fwd(
        &mut e,
        t(0),
        Side::Inside,
        udp(ep(host, 5000), ep(WAN, 53), b"q"),
    );
    // `ctl rule insert 1 ...`: the host rule moves up to id 2.
    let exempt = chain(
        "[[rule]]\nid = 1\ndirection = \"outbound\"\ndst = \"192.0.2.0/24\"\naction = \"exempt\"\n",
    );
    let mut rules = chain(HOST_NAT);
    let first = *exempt.iter().next().expect("one rule");
    rules.insert(RuleId(1), first).expect("insert");
    let host_rule = *rules.get(RuleId(2)).expect("moved");
    e.reconfigure(&config("", |c| c.rules = rules).validate().expect("valid"))
        .expect("reload");
    assert_eq!(e.rules().get(RuleId(2)), Some(&host_rule));
    assert_eq!(
        e.flush_rule_sessions(RuleId(1), t(1)),
        0,
        "not the new rule's"
    );
    assert_eq!(e.flush_rule_sessions(RuleId(2), t(1)), 1);
    assert_eq!(e.static_session_count(), 0);
}

#[test]
fn renumbering_pairs_rules_in_order_ignoring_ids() {
    let old = chain(&format!("{HOST_NAT}{PORT_FORWARD}"));
    let mut new = old.clone();
    let exempt = chain(
        "[[rule]]\nid = 1\ndirection = \"outbound\"\ndst = \"192.0.2.0/24\"\naction = \"exempt\"\n",
    );
    new.insert(RuleId(1), *exempt.iter().next().expect("one rule"))
        .expect("insert");
    // Ids 1 and 10 become 2 and 11: the forward (id 10) moved too, since it follows.
    assert_eq!(
        renumbering(&old, &new),
        [(RuleId(1), RuleId(2)), (RuleId(10), RuleId(11))]
    );
    // A delete moves nothing; an unchanged chain moves nothing.
    let mut deleted = old.clone();
    deleted.delete(RuleId(1)).expect("delete");
    assert!(renumbering(&old, &deleted).is_empty());
    assert!(renumbering(&old, &old).is_empty());
}
