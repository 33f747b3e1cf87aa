//! The server's answers, request bytes in and response bytes out, with the engine behind it:
//! each success is checked by a packet that the mapping now lets in.

use super::*;
use crate::config::Config;
use crate::endpoint::Side;
use crate::portmap::wire::pcp::{mapped, option};
use crate::verdict::Verdict;
use etherparse::PacketBuilder;

pub(super) const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub(super) const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
pub(super) const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
pub(super) const OTHER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 20);
pub(super) const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub(super) const NONCE: [u8; 12] = [7; 12];

pub(super) fn t(secs: u64) -> Instant {
    Instant::from_secs(secs)
}

pub(super) fn ep(a: Ipv4Addr, port: u16) -> Endpoint {
    Endpoint::new(a, port)
}

pub(super) fn engine() -> Engine {
    let mut c = Config::new(vec![POOL], INSIDE);
    c.limits.max_sessions = 256;
    c.limits.max_mappings = 256;
    c.limits.max_static_sessions = 64;
    c.inside_networks = vec![Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("prefix")];
    c.explicit_mappings = true;
    Engine::new(c.validate().expect("valid"), 5)
}

pub(super) fn server(f: impl FnOnce(&mut PortMapConfig)) -> PortMapServer {
    let mut cfg = PortMapConfig {
        pcp: true,
        nat_pmp: true,
        ..PortMapConfig::default()
    };
    f(&mut cfg);
    cfg.check().expect("valid settings");
    PortMapServer::new(cfg, t(1000))
}

/// Sends `req` from `client`; returns the answer's bytes (empty when dropped).
pub(super) fn ask(
    s: &mut PortMapServer,
    e: &mut Engine,
    now: Instant,
    client: Endpoint,
    req: &[u8],
) -> Vec<u8> {
    let mut out = [0u8; pcp::MAX_MESSAGE];
    match s.handle(now, e, client, req, &mut out) {
        Answer::Reply(n) => out[..n].to_vec(),
        Answer::Drop(_) => Vec::new(),
    }
}

/// Whether a UDP or TCP SYN from `from` to `to` gets in, and to whom.
pub(super) fn reaches(
    e: &mut Engine,
    now: Instant,
    tcp: bool,
    from: Endpoint,
    to: Endpoint,
) -> Option<Endpoint> {
    let b = PacketBuilder::ipv4(from.addr.octets(), to.addr.octets(), 64);
    let mut v = Vec::new();
    if tcp {
        b.tcp(from.port, to.port, 1, 1000)
            .syn()
            .write(&mut v, &[])
            .expect("tcp");
    } else {
        b.udp(from.port, to.port)
            .write(&mut v, b"hello")
            .expect("udp");
    }
    let len = v.len();
    v.resize(2048, 0);
    match e.process(now, Side::Outside, &mut v, len) {
        Verdict::Forward(Side::Inside) => {
            let a = Ipv4Addr::new(v[16], v[17], v[18], v[19]);
            Some(Endpoint::new(a, u16::from_be_bytes([v[22], v[23]])))
        }
        _ => None,
    }
}

fn natpmp_map(op: u8, internal: u16, suggested: u16, lifetime: u32) -> Vec<u8> {
    let mut v = vec![0, op, 0, 0];
    v.extend_from_slice(&internal.to_be_bytes());
    v.extend_from_slice(&suggested.to_be_bytes());
    v.extend_from_slice(&lifetime.to_be_bytes());
    v
}

pub(super) fn pcp_map(
    client: Ipv4Addr,
    nonce: [u8; 12],
    protocol: u8,
    port: u16,
    lifetime: u32,
    options: &[u8],
) -> Vec<u8> {
    let mut v = vec![2, 1, 0, 0];
    v.extend_from_slice(&lifetime.to_be_bytes());
    v.extend_from_slice(&mapped(client));
    v.extend_from_slice(&nonce);
    v.extend_from_slice(&[protocol, 0, 0, 0]);
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&[0; 16]);
    v.extend_from_slice(options);
    v
}

fn pcp_option(code: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![code, 0];
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The assigned external endpoint of a PCP MAP response.
fn pcp_external(r: &[u8]) -> Endpoint {
    Endpoint::new(Ipv4Addr::new(r[56], r[57], r[58], r[59]), u16_at(r, 42))
}

#[test]
fn natpmp_public_address_map_and_delete() {
    let (mut s, mut e) = (server(|_| {}), engine());
    let client = ep(SUB, 5351);
    let r = ask(&mut s, &mut e, t(1010), client, &[0, 0]);
    assert_eq!(
        r,
        [0, 128, 0, 0, 0, 0, 0, 10, 198, 51, 100, 1],
        "epoch 10 s, the pool address"
    );

    let r = ask(
        &mut s,
        &mut e,
        t(1010),
        client,
        &natpmp_map(1, 4000, 4000, 60),
    );
    assert_eq!(r.len(), 16);
    assert_eq!(&r[..4], &[0, 129, 0, 0]);
    assert_eq!(u16_at(&r, 8), 4000);
    assert_eq!(u32_at(&r, 12), 120, "raised to min-lifetime");
    let external = ep(POOL, u16_at(&r, 10));
    assert_eq!(
        reaches(&mut e, t(1011), false, ep(WAN, 9), external),
        Some(ep(SUB, 4000))
    );

    // TCP is its own mapping.
    let r = ask(&mut s, &mut e, t(1011), client, &natpmp_map(2, 22, 0, 3600));
    assert_eq!((r[1], u16_at(&r, 2)), (130, 0));
    let tcp_external = ep(POOL, u16_at(&r, 10));
    assert_eq!(
        reaches(&mut e, t(1012), true, ep(WAN, 5), tcp_external),
        Some(ep(SUB, 22))
    );

    // Deletion: lifetime 0; the answer has external port and lifetime 0.
    let r = ask(&mut s, &mut e, t(1012), client, &natpmp_map(1, 4000, 0, 0));
    assert_eq!(r, [0, 129, 0, 0, 0, 0, 0, 12, 0x0f, 0xa0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reaches(&mut e, t(1013), false, ep(WAN, 9), external), None);
    // Port 0 and lifetime 0 delete every TCP mapping of the client.
    ask(&mut s, &mut e, t(1013), client, &natpmp_map(2, 0, 0, 0));
    assert_eq!(e.explicit_mappings().count(), 0);
    assert_eq!(s.counters().natpmp_results[0], 5);
}

#[test]
fn natpmp_refusals() {
    let (mut s, mut e) = (server(|_| {}), engine());
    let client = ep(SUB, 5351);
    let r = ask(&mut s, &mut e, t(1000), client, &[0, 9]);
    assert_eq!(r, [0, 137, 0, 5, 0, 0, 0, 0], "unsupported opcode");
    let r = ask(&mut s, &mut e, t(1000), client, &natpmp_map(1, 0, 0, 60));
    assert_eq!(u16_at(&r, 2), 2, "every port: not authorized");
    assert!(
        ask(&mut s, &mut e, t(1000), client, &[0, 1, 0]).is_empty(),
        "truncated"
    );
    assert!(
        ask(&mut s, &mut e, t(1000), client, &[0, 128, 0, 0]).is_empty(),
        "a response"
    );
    // A mapping PCP made is not NAT-PMP's to renew or delete.
    ask(
        &mut s,
        &mut e,
        t(1000),
        client,
        &pcp_map(SUB, NONCE, 17, 7000, 600, &[]),
    );
    let r = ask(&mut s, &mut e, t(1000), client, &natpmp_map(1, 7000, 0, 60));
    assert_eq!(u16_at(&r, 2), 2);
    let r = ask(&mut s, &mut e, t(1000), client, &natpmp_map(1, 7000, 0, 0));
    assert_eq!(u16_at(&r, 2), 2);
    assert!(e.explicit_mapping(Protocol::Udp, ep(SUB, 7000)).is_some());
    let c = s.counters();
    assert_eq!(c.drops[0], 1, "truncated");
    assert_eq!(c.drops[1], 1, "response");
}

#[test]
fn version_negotiation() {
    let client = ep(SUB, 5351);
    let (mut s, mut e) = (server(|_| {}), engine());
    let r = ask(&mut s, &mut e, t(1000), client, &[1, 1, 0, 0]);
    assert_eq!(r.len(), 24);
    assert_eq!(
        &r[..4],
        &[2, 0x81, 0, 1],
        "PCP UNSUPP_VERSION, in version 2"
    );
    assert_eq!(u32_at(&r, 4), LONG_ERROR_LIFETIME);
    // NAT-PMP off: version 0 gets PCP's UNSUPP_VERSION too.
    let mut s = server(|c| c.nat_pmp = false);
    let r = ask(&mut s, &mut e, t(1000), client, &[0, 0]);
    assert_eq!(&r[..4], &[2, 0x80, 0, 1]);
    // PCP off: a NAT-PMP server answers every other version with its result 1.
    let mut s = server(|c| c.pcp = false);
    let r = ask(
        &mut s,
        &mut e,
        t(1000),
        client,
        &pcp_map(SUB, NONCE, 17, 1, 60, &[]),
    );
    assert_eq!(r, [0, 129, 0, 1, 0, 0, 0, 0]);
}

#[test]
fn pcp_map_renew_and_delete_follow_the_nonce() {
    let (mut s, mut e) = (server(|_| {}), engine());
    let client = ep(SUB, 40001);
    let req = pcp_map(SUB, NONCE, 17, 5000, 3600, &[]);
    let r = ask(&mut s, &mut e, t(1000), client, &req);
    assert_eq!(r.len(), 60);
    assert_eq!(&r[..4], &[2, 0x81, 0, 0]);
    assert_eq!(u32_at(&r, 4), 3600);
    assert_eq!(&r[24..36], &NONCE);
    assert_eq!(r[36], 17);
    assert_eq!(u16_at(&r, 40), 5000);
    let external = pcp_external(&r);
    assert_eq!(external.addr, POOL);
    assert_eq!(&r[44..56], &mapped(POOL)[..12]);
    assert_eq!(
        reaches(&mut e, t(1001), false, ep(WAN, 9), external),
        Some(ep(SUB, 5000))
    );

    // Renewal with the nonce: same endpoint, lifetime capped at max-lifetime.
    let r = ask(
        &mut s,
        &mut e,
        t(1001),
        client,
        &pcp_map(SUB, NONCE, 17, 5000, u32::MAX, &[]),
    );
    assert_eq!((r[3], pcp_external(&r)), (0, external));
    assert_eq!(u32_at(&r, 4), 86_400);
    // Another nonce may neither renew nor delete it.
    for lifetime in [3600, 0] {
        let r = ask(
            &mut s,
            &mut e,
            t(1002),
            client,
            &pcp_map(SUB, [9; 12], 17, 5000, lifetime, &[]),
        );
        assert_eq!(r[3], ResultCode::NotAuthorized as u8);
        assert_eq!(&r[24..36], &[9; 12], "an error echoes the request");
    }
    let r = ask(
        &mut s,
        &mut e,
        t(1003),
        client,
        &pcp_map(SUB, NONCE, 17, 5000, 0, &[]),
    );
    assert_eq!((r[3], u32_at(&r, 4)), (0, 0));
    assert_eq!(reaches(&mut e, t(1004), false, ep(WAN, 9), external), None);
}

#[test]
fn pcp_refuses_other_hosts_and_malformed_requests() {
    let (mut s, mut e) = (server(|_| {}), engine());
    let client = ep(SUB, 40001);
    let code = |s: &mut PortMapServer, e: &mut Engine, req: &[u8]| {
        let r = ask(s, e, t(1000), client, req);
        r[3]
    };
    // The client field says another host: ADDRESS_MISMATCH.
    let req = pcp_map(OTHER, NONCE, 17, 5000, 60, &[]);
    assert_eq!(
        code(&mut s, &mut e, &req),
        ResultCode::AddressMismatch as u8
    );
    // THIRD_PARTY for another host, not allowed for this client.
    let tp = pcp_option(option::THIRD_PARTY, &mapped(OTHER));
    let req = pcp_map(SUB, NONCE, 17, 5000, 60, &tp);
    assert_eq!(code(&mut s, &mut e, &req), ResultCode::NotAuthorized as u8);
    assert_eq!(e.explicit_mappings().count(), 0);
    assert_eq!(
        code(&mut s, &mut e, &pcp_map(SUB, NONCE, 1, 5000, 60, &[])),
        ResultCode::UnsuppProtocol as u8
    );
    assert_eq!(
        code(&mut s, &mut e, &pcp_map(SUB, NONCE, 0, 0, 60, &[])),
        ResultCode::UnsuppProtocol as u8
    );
    assert_eq!(
        code(&mut s, &mut e, &pcp_map(SUB, NONCE, 6, 0, 60, &[])),
        ResultCode::NotAuthorized as u8
    );
    let mut short = pcp_map(SUB, NONCE, 17, 5000, 60, &[]);
    short.truncate(40);
    assert_eq!(
        code(&mut s, &mut e, &short),
        ResultCode::MalformedRequest as u8
    );
    let mut unknown = pcp_map(SUB, NONCE, 17, 5000, 60, &[]);
    unknown[1] = 5;
    assert_eq!(
        code(&mut s, &mut e, &unknown),
        ResultCode::UnsuppOpcode as u8
    );
    let req = pcp_map(SUB, NONCE, 17, 5000, 60, &pcp_option(50, &[]));
    assert_eq!(code(&mut s, &mut e, &req), ResultCode::UnsuppOption as u8);
    // Nine FILTERs: more than a mapping keeps.
    let mut nine = Vec::new();
    for i in 0..9u8 {
        let mut d = vec![0, 128, 0, 0];
        d.extend_from_slice(&mapped(Ipv4Addr::new(203, 0, 113, i)));
        nine.extend(pcp_option(option::FILTER, &d));
    }
    let req = pcp_map(SUB, NONCE, 17, 5000, 60, &nine);
    assert_eq!(
        code(&mut s, &mut e, &req),
        ResultCode::ExcessiveRemotePeers as u8
    );
    // A FILTER that is not IPv4-mapped, or whose prefix is shorter than 96 bits.
    let mut d = vec![0, 64, 0, 0];
    d.extend_from_slice(&mapped(WAN));
    let req = pcp_map(SUB, NONCE, 17, 5000, 60, &pcp_option(option::FILTER, &d));
    assert_eq!(
        code(&mut s, &mut e, &req),
        ResultCode::MalformedOption as u8
    );
    assert_eq!(
        e.explicit_mappings().count(),
        0,
        "no refusal changed anything"
    );
    // Not a client of this NAT, or a response: no answer at all.
    let outsider = ep(Ipv4Addr::new(192, 168, 1, 2), 1);
    let req = pcp_map(outsider.addr, NONCE, 17, 5000, 60, &[]);
    assert!(ask(&mut s, &mut e, t(1000), outsider, &req).is_empty());
    let mut resp = pcp_map(SUB, NONCE, 17, 5000, 60, &[]);
    resp[1] |= 0x80;
    assert!(ask(&mut s, &mut e, t(1000), client, &resp).is_empty());
    assert_eq!(s.counters().drops[2], 1, "not_served");
}

#[test]
fn pcp_third_party_for_configured_prefixes() {
    let allowed = Ipv4Prefix::new(SUB, 32).expect("prefix");
    let (mut s, mut e) = (server(|c| c.third_party = vec![allowed]), engine());
    let tp = pcp_option(option::THIRD_PARTY, &mapped(OTHER));
    let r = ask(
        &mut s,
        &mut e,
        t(1000),
        ep(SUB, 1),
        &pcp_map(SUB, NONCE, 6, 8080, 600, &tp),
    );
    assert_eq!(r[3], 0);
    assert_eq!(
        &r[60..64],
        &[option::THIRD_PARTY, 0, 0, 16],
        "the option is repeated"
    );
    let external = pcp_external(&r);
    assert_eq!(
        reaches(&mut e, t(1001), true, ep(WAN, 9), external),
        Some(ep(OTHER, 8080))
    );
    // THIRD_PARTY for an address outside the inside networks: not authorized.
    let tp = pcp_option(option::THIRD_PARTY, &mapped(Ipv4Addr::new(8, 8, 8, 8)));
    let r = ask(
        &mut s,
        &mut e,
        t(1001),
        ep(SUB, 1),
        &pcp_map(SUB, NONCE, 6, 8080, 600, &tp),
    );
    assert_eq!(r[3], ResultCode::NotAuthorized as u8);
}

#[test]
fn pcp_filter_and_prefer_failure() {
    let (mut s, mut e) = (server(|_| {}), engine());
    let client = ep(SUB, 1);
    let mut d = vec![0, 128, 0, 0];
    d.extend_from_slice(&mapped(WAN));
    let f = pcp_option(option::FILTER, &d);
    let r = ask(
        &mut s,
        &mut e,
        t(1000),
        client,
        &pcp_map(SUB, NONCE, 17, 6000, 600, &f),
    );
    assert_eq!(r[3], 0);
    let external = pcp_external(&r);
    assert_eq!(
        reaches(&mut e, t(1001), false, ep(WAN, 1), external),
        Some(ep(SUB, 6000))
    );
    assert_eq!(
        reaches(
            &mut e,
            t(1001),
            false,
            ep(Ipv4Addr::new(203, 0, 113, 99), 1),
            external
        ),
        None
    );

    // PREFER_FAILURE (RFC 6887 section 13.2): the suggested port when it is free...
    let pf = pcp_option(option::PREFER_FAILURE, &[]);
    let mut req = pcp_map(SUB, NONCE, 17, 6001, 600, &pf);
    req[42..44].copy_from_slice(&7777u16.to_be_bytes());
    let r = ask(&mut s, &mut e, t(1001), client, &req);
    assert_eq!((r[3], pcp_external(&r).port), (0, 7777));
    // ...and nothing when it is not (here: the first mapping's port).
    let mut req = pcp_map(SUB, NONCE, 17, 6002, 600, &pf);
    req[42..44].copy_from_slice(&external.port.to_be_bytes());
    let r = ask(&mut s, &mut e, t(1001), client, &req);
    assert_eq!(r[3], ResultCode::CannotProvideExternal as u8);
    assert_eq!(u32_at(&r, 4), SHORT_ERROR_LIFETIME);
    // Without it, another port (RFC 6887 section 11.3: the suggestion is a hint).
    let mut req = pcp_map(SUB, NONCE, 17, 6002, 600, &[]);
    req[42..44].copy_from_slice(&external.port.to_be_bytes());
    let r = ask(&mut s, &mut e, t(1001), client, &req);
    assert_eq!(r[3], 0);
    assert_ne!(pcp_external(&r).port, external.port);
    // ...but a renewal that suggests the port it has keeps it.
    let mut req = pcp_map(SUB, NONCE, 17, 6000, 600, &[f, pf].concat());
    req[42..44].copy_from_slice(&external.port.to_be_bytes());
    let r = ask(&mut s, &mut e, t(1002), client, &req);
    assert_eq!((r[3], pcp_external(&r)), (0, external));
}

#[test]
fn pcp_peer_and_announce() {
    let (mut s, mut e) = (server(|_| {}), engine());
    let client = ep(SUB, 1);
    let mut req = pcp_map(SUB, NONCE, 17, 6000, 600, &[]);
    req[1] = 2;
    req.extend_from_slice(&[0x1f, 0x90, 0, 0]);
    req.extend_from_slice(&mapped(WAN));
    let r = ask(&mut s, &mut e, t(1000), client, &req);
    assert_eq!(r.len(), 80);
    assert_eq!(&r[..4], &[2, 0x82, 0, 0]);
    assert_eq!(u16_at(&r, 60), 8080, "the remote peer is repeated");
    let external = pcp_external(&r);
    assert_eq!(
        reaches(&mut e, t(1001), false, ep(WAN, 8080), external),
        Some(ep(SUB, 6000))
    );
    assert_eq!(
        reaches(&mut e, t(1001), false, ep(WAN, 8081), external),
        None,
        "only that peer"
    );

    let mut announce = vec![2, 0, 0, 0, 0, 0, 0, 0];
    announce.extend_from_slice(&mapped(SUB));
    let r = ask(&mut s, &mut e, t(1005), client, &announce);
    assert_eq!(&r[..12], &[2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
    let mut out = [0u8; pcp::MAX_MESSAGE];
    let n = PortMapServer::announcement(s.epoch(t(1007)), &mut out);
    assert_eq!(
        &out[..n],
        &[
            2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]
    );
}

#[test]
fn per_subscriber_cap_and_rate_limit() {
    let (mut s, mut e) = (
        server(|c| {
            c.max_mappings_per_subscriber = 2;
            c.requests_per_second = 1;
            c.request_burst = 3;
        }),
        engine(),
    );
    let client = ep(SUB, 1);
    for port in [1, 2] {
        let r = ask(
            &mut s,
            &mut e,
            t(1000),
            client,
            &pcp_map(SUB, NONCE, 17, port, 600, &[]),
        );
        assert_eq!(r[3], 0);
    }
    let r = ask(
        &mut s,
        &mut e,
        t(1000),
        client,
        &pcp_map(SUB, NONCE, 17, 3, 600, &[]),
    );
    assert_eq!(r[3], ResultCode::UserExQuota as u8);
    // The burst of 3 is spent: the next is dropped, until a second has passed.
    assert!(ask(&mut s, &mut e, t(1000), client, &[0, 0]).is_empty());
    assert_eq!(s.counters().drops[3], 1, "rate_limited");
    assert!(!ask(&mut s, &mut e, t(1001), client, &[0, 0]).is_empty());
    // Another subscriber has its own bucket.
    assert!(!ask(&mut s, &mut e, t(1000), ep(OTHER, 1), &[0, 0]).is_empty());
}

#[test]
fn result_codes_are_listed_in_numeric_order_and_counters_merge() {
    for (i, c) in pcp::ResultCode::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i, "{}", c.name());
    }
    for (i, c) in natpmp::ResultCode::ALL.iter().enumerate() {
        assert_eq!(*c as usize, i, "{}", c.name());
    }
    let mut a = PortMapCounters::default();
    let mut b = PortMapCounters::default();
    b.drops[1] = 2;
    b.pcp_results[13] = 3;
    b.natpmp_results[5] = 4;
    a.merge(&b);
    a.merge(&b);
    assert_eq!(
        (a.drops[1], a.pcp_results[13], a.natpmp_results[5]),
        (4, 6, 8)
    );
}

#[test]
fn a_third_party_request_is_about_the_third_party() {
    let tp = pcp_option(option::THIRD_PARTY, &mapped(OTHER));
    let req = pcp_map(SUB, NONCE, 17, 1, 60, &tp);
    assert_eq!(crate::portmap::subject(&req, SUB), OTHER);
    assert_eq!(
        crate::portmap::subject(&pcp_map(SUB, NONCE, 17, 1, 60, &[]), SUB),
        SUB
    );
    assert_eq!(crate::portmap::subject(&natpmp_map(1, 1, 0, 60), SUB), SUB);
    assert_eq!(crate::portmap::subject(&[], SUB), SUB);
}

#[test]
fn drop_reasons_are_named_once() {
    let names: Vec<&str> = PortMapDrop::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names.len(), PortMapCounters::default().drops.len());
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
}

// ------------------------------------------------------------------ PORT_SET (RFC 7753)

/// A PORT_SET option asking for `size` ports from `first`, with the P bit if `parity`.
fn port_set(size: u16, first: u16, parity: bool) -> Vec<u8> {
    let mut v = vec![option::PORT_SET, 0, 0, 5];
    v.extend_from_slice(&size.to_be_bytes());
    v.extend_from_slice(&first.to_be_bytes());
    v.extend_from_slice(&[u8::from(parity), 0, 0, 0]);
    v
}

/// The PORT_SET of a MAP response (size, first internal port, P), if it has one, and the
/// assigned external port.
fn granted_set(answer: &[u8]) -> (Option<(u16, u16, bool)>, u16) {
    let external = u16::from_be_bytes([answer[42], answer[43]]);
    let mut opts = &answer[pcp::HEADER + 36..];
    while let Some(&[code, _, l0, l1]) = opts.first_chunk::<4>() {
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if code == option::PORT_SET {
            let d = &opts[4..4 + len];
            let set = (
                u16::from_be_bytes([d[0], d[1]]),
                u16::from_be_bytes([d[2], d[3]]),
                d[4] & 1 != 0,
            );
            return (Some(set), external);
        }
        opts = &opts[4 + len.div_ceil(4) * 4..];
    }
    (None, external)
}

#[test]
fn rfc7753_a_port_set_maps_consecutive_ports_and_each_lets_a_peer_in() {
    let mut e = engine();
    let mut s = server(|_| {});
    let req = pcp_map(SUB, NONCE, 17, 6000, 600, &port_set(4, 6000, false));
    let answer = ask(&mut s, &mut e, t(1), ep(SUB, 5350), &req);
    assert_eq!(answer[3], ResultCode::Success as u8);
    let (set, first) = granted_set(&answer);
    assert_eq!(set, Some((4, 6000, false)));
    for i in 0..4u16 {
        let to = ep(POOL, first + i);
        assert_eq!(
            reaches(&mut e, t(2), false, ep(WAN, 9000), to),
            Some(ep(SUB, 6000 + i)),
            "port {i} of the run"
        );
    }
    // Renewed as a whole: the same run.
    let again = ask(&mut s, &mut e, t(3), ep(SUB, 5350), &req);
    assert_eq!(granted_set(&again), (Some((4, 6000, false)), first));
    assert_eq!(e.explicit_mappings().count(), 4);
    // Deleted as a whole.
    let delete = pcp_map(SUB, NONCE, 17, 6000, 0, &port_set(4, 6000, false));
    let gone = ask(&mut s, &mut e, t(4), ep(SUB, 5350), &delete);
    assert_eq!(gone[3], ResultCode::Success as u8);
    assert_eq!(e.explicit_mappings().count(), 0);
    assert_eq!(
        reaches(&mut e, t(5), false, ep(WAN, 9000), ep(POOL, first + 1)),
        None
    );
}

#[test]
fn rfc7753_fewer_ports_than_asked_are_granted_and_said() {
    let mut e = engine();
    // The subscriber may hold three explicit mappings: a run of 8 gets 3.
    let mut s = server(|c| c.max_mappings_per_subscriber = 3);
    let req = pcp_map(SUB, NONCE, 6, 7000, 600, &port_set(8, 7000, false));
    let answer = ask(&mut s, &mut e, t(1), ep(SUB, 5350), &req);
    assert_eq!(answer[3], ResultCode::Success as u8);
    assert_eq!(granted_set(&answer).0, Some((3, 7000, false)));
    // Only one port to be had: a plain MAP's answer, without PORT_SET.
    let mut e = engine();
    let mut s = server(|c| c.max_mappings_per_subscriber = 1);
    let answer = ask(&mut s, &mut e, t(1), ep(SUB, 5350), &req);
    assert_eq!(answer[3], ResultCode::Success as u8);
    assert_eq!(granted_set(&answer).0, None);
}

#[test]
fn rfc7753_the_p_bit_keeps_the_first_ports_parity() {
    let mut e = engine();
    let mut s = server(|_| {});
    // Even internal port, odd suggestion: the run starts one port up.
    let mut req = pcp_map(SUB, NONCE, 17, 8000, 600, &port_set(2, 8000, true));
    req[42..44].copy_from_slice(&9001u16.to_be_bytes());
    let answer = ask(&mut s, &mut e, t(1), ep(SUB, 5350), &req);
    assert_eq!(answer[3], ResultCode::Success as u8);
    let (set, first) = granted_set(&answer);
    assert_eq!(set, Some((2, 8000, true)));
    assert_eq!(first, 9002);
}

#[test]
fn rfc7753_malformed_port_sets_are_refused() {
    let mut e = engine();
    let mut s = server(|_| {});
    let prefer_failure = [option::PREFER_FAILURE, 0, 0, 0];
    for (why, options) in [
        ("size 0", port_set(0, 6000, false)),
        ("another first port", port_set(4, 6001, false)),
        (
            "twice",
            [port_set(2, 6000, false), port_set(2, 6000, false)].concat(),
        ),
        (
            "with PREFER_FAILURE",
            [port_set(2, 6000, false), prefer_failure.to_vec()].concat(),
        ),
    ] {
        let req = pcp_map(SUB, NONCE, 17, 6000, 600, &options);
        let answer = ask(&mut s, &mut e, t(1), ep(SUB, 5350), &req);
        assert_eq!(answer[3], ResultCode::MalformedOption as u8, "{why}");
    }
    assert_eq!(e.explicit_mappings().count(), 0);
}
