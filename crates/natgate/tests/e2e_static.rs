//! Static NAT rules end to end: 1:1 host NAT both ways and run-time rule changes, a
//! network renumbered by one bidirectional rule, port forwarding of a web server (80 to a real
//! 8888, also on a home gateway's own address, one-way), and two networks that use the same
//! address space joined by twice-NAT. Real sockets
//! in the standard topology's namespaces; needs root, skips otherwise.
//!
//! The static external addresses are taken from 198.18.0.0/16 (RFC 2544 benchmarking space,
//! outside the pool); the upstream routes that /16 to the gateway, as a provider routes the
//! addresses it delegates (natgate answers ARP for them too, but the upstream is a router).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::http::{HttpClient, HttpServer, get_once};
use common::{Gateway, T, config, ctl, ctl_json, in_pool, is_root, recv, topology, udp_socket, v4};
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netlink::{Netlink, RouteV4, RuleV4};
use natgate::platform::netns::Netns;

const ANY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

fn ext(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, c, d)
}

/// The upstream routes `net/len` to the gateway.
fn route_to_gateway(topo: &Topology, net: Ipv4Addr, len: u8) {
    let mut up = topo.netlink(&topo.upstream).unwrap();
    up.add_route_v4(&RouteV4::via(net, len, addr::GW_WAN))
        .unwrap();
}

/// A UDP round trip: a server bound to `bind` in `server_ns`, a client on an ephemeral port
/// in `client_ns` sending to `to`. Returns (the source the server saw, the source the echo
/// came from, the client's own address).
fn echo(
    client_ns: &Netns,
    server_ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddrV4,
) -> (SocketAddrV4, SocketAddrV4, SocketAddrV4) {
    let server = udp_socket(server_ns, bind);
    let client = udp_socket(client_ns, ANY);
    client.send_to(b"ping", to).unwrap();
    let (_, seen) = recv(&server, T).unwrap_or_else(|| panic!("{to}: nothing arrived"));
    server.send_to(b"pong", seen).unwrap();
    let (_, from) = recv(&client, T).unwrap_or_else(|| panic!("{to}: no echo from {seen}"));
    (v4(seen), v4(from), v4(client.local_addr().unwrap()))
}

/// The source a new flow from `ns` shows to wan1.
fn seen_by_wan1(topo: &Topology, ns: &Netns, port: u16) -> SocketAddrV4 {
    let to = SocketAddrV4::new(addr::WAN1, port);
    let (seen, from, _) = echo(ns, &topo.wan1, to, to);
    assert_eq!(from, to);
    seen
}

fn rule_ids(topo: &Topology) -> Vec<u64> {
    ctl_json(topo, &["rules"])["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

const HOST_NAT: &str = r#"
[[rule]]
id = 10
direction = "outbound"
bidirectional = true
src = "100.64.0.10/32"
action.translate.src = { addr = "198.18.1.10/32" }
"#;

#[test]
fn host_nat_both_directions_and_rule_changes_at_run_time() {
    if !is_root() {
        return;
    }
    let topo = topology();
    route_to_gateway(&topo, ext(0, 0), 16);
    let gw = Gateway::start(&topo, &config(&topo, HOST_NAT));

    // sub1 appears as 198.18.1.10, keeping its port; sub2 is still translated dynamically.
    let (seen, from, local) = echo(
        &topo.sub1,
        &topo.wan1,
        SocketAddrV4::new(addr::WAN1, 3478),
        SocketAddrV4::new(addr::WAN1, 3478),
    );
    assert_eq!((*seen.ip(), seen.port()), (ext(1, 10), local.port()));
    assert_eq!(from, SocketAddrV4::new(addr::WAN1, 3478));
    assert!(in_pool(*seen_by_wan1(&topo, &topo.sub2, 3479).ip()));
    // The Internet reaches sub1 at 198.18.1.10 unsolicited, and the reply comes from there.
    let (seen, from, _) = echo(
        &topo.wan1,
        &topo.sub1,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000),
        SocketAddrV4::new(ext(1, 10), 7000),
    );
    assert_eq!(*seen.ip(), addr::WAN1);
    assert_eq!(from, SocketAddrV4::new(ext(1, 10), 7000));
    assert_eq!(rule_ids(&topo), [10]);

    // A rule that would give 198.18.1.10 to sub2 too: refused, naming both; nothing changes.
    let (code, out, err) = ctl(
        &topo,
        &[
            "rule",
            "append",
            "--direction",
            "outbound",
            "--src",
            "100.64.0.11/32",
            "--translate-src",
            "198.18.1.10/32",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("rule 11 conflicts with rule 10"),
        "{out}{err}"
    );
    assert_eq!(rule_ids(&topo), [10]);

    // Insert at 10: the file's rule moves up to 11. sub2's new flows take the new rule, and its
    // new external address is routed into natgate at once (the Internet reaches it).
    let r = ctl_json(
        &topo,
        &[
            "rule",
            "insert",
            "10",
            "direction = \"outbound\", bidirectional = true, src = \"100.64.0.11/32\", \
             action.translate.src = { addr = \"198.18.1.11/32\" }",
        ],
    );
    assert_eq!(r["changed"], 10, "{r}");
    assert_eq!(rule_ids(&topo), [10, 11]);
    assert_eq!(*seen_by_wan1(&topo, &topo.sub2, 3480).ip(), ext(1, 11));
    let (_, from, _) = echo(
        &topo.wan1,
        &topo.sub2,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7001),
        SocketAddrV4::new(ext(1, 11), 7001),
    );
    assert_eq!(from, SocketAddrV4::new(ext(1, 11), 7001));

    // The running chain written back as config parses as the same chain.
    let (code, text, err) = ctl(&topo, &["rules", "--toml"]);
    assert_eq!(code, 0, "{err}");
    #[derive(serde::Deserialize)]
    struct File {
        rule: natgate_core::rules::RuleChain,
    }
    let f: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        f.rule.iter().map(|r| r.id.0).collect::<Vec<_>>(),
        [10, 11],
        "{text}"
    );

    // Delete 10 with --flush: sub2's sessions through it (out to 3480, in from 7001) end at
    // once and its new flows are dynamic again; other ids do not move.
    let r = ctl_json(&topo, &["rule", "delete", "10", "--flush"]);
    assert!(r["flushed"].as_u64().is_some_and(|n| n >= 2), "{r}");
    let stats = ctl_json(&topo, &["stats"]);
    assert!(
        stats["static_sessions_deleted"].as_u64() >= r["flushed"].as_u64()
            && stats["static_sessions_created"]
                .as_u64()
                .is_some_and(|n| n >= 4),
        "{stats}"
    );
    assert_eq!(rule_ids(&topo), [11]);
    assert!(in_pool(*seen_by_wan1(&topo, &topo.sub2, 3481).ip()));
    let (code, _, _) = ctl(&topo, &["rule", "delete", "10"]);
    assert_ne!(code, 0, "no rule 10 any more");

    // A reload puts the file's chain back: the config wins over run-time changes.
    ctl_json(
        &topo,
        &[
            "rule",
            "append",
            "--direction",
            "outbound",
            "--src",
            "100.64.0.11/32",
            "--translate-src",
            "198.18.1.12/32",
        ],
    );
    assert_eq!(rule_ids(&topo), [11, 12]);
    ctl_json(&topo, &["reload"]);
    assert_eq!(rule_ids(&topo), [10]);
    assert_eq!(*seen_by_wan1(&topo, &topo.sub1, 3482).ip(), ext(1, 10));
    drop(gw);
}

#[test]
fn network_rule_translates_both_ways_keeping_host_bits() {
    if !is_root() {
        return;
    }
    let topo = topology();
    route_to_gateway(&topo, ext(0, 0), 16);
    let rule = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
src = "100.64.0.0/24"
action.translate.src = { addr = "198.18.4.0/24" }
"#;
    let _gw = Gateway::start(&topo, &config(&topo, rule));
    // Started inside: each host keeps its host bits (.10 and .11).
    assert_eq!(*seen_by_wan1(&topo, &topo.sub1, 3478).ip(), ext(4, 10));
    assert_eq!(*seen_by_wan1(&topo, &topo.sub2, 3478).ip(), ext(4, 11));
    // Started outside, from two hosts, towards each translated address.
    for (client, client_addr, server, host) in [
        (&topo.wan1, addr::WAN1, &topo.sub2, 11),
        (&topo.wan2, addr::WAN2, &topo.sub1, 10),
    ] {
        let (seen, from, local) = echo(
            client,
            server,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7002),
            SocketAddrV4::new(ext(4, host), 7002),
        );
        // The rule rewrites the inside endpoint only.
        assert_eq!(seen, SocketAddrV4::new(client_addr, local.port()));
        assert_eq!(from, SocketAddrV4::new(ext(4, host), 7002));
    }
}

#[test]
fn port_forward_serves_web_on_80_from_8888() {
    if !is_root() {
        return;
    }
    let topo = topology();
    route_to_gateway(&topo, ext(0, 0), 16);
    let rule = r#"
[[rule]]
id = 1
direction = "inbound"
bidirectional = true
proto = "tcp"
dst = "198.18.2.80/32"
dst-ports = 80
action.translate.dst = { addr = "100.64.0.11/32", port = 8888 }
"#;
    let _gw = Gateway::start(&topo, &config(&topo, rule));
    let _web = HttpServer::start(&topo.sub2, SocketAddrV4::new(addr::SUB2, 8888), "web");
    let vip = SocketAddrV4::new(ext(2, 80), 80);
    // Several connections from two clients; the server sees the real client address.
    for (ns, client) in [(&topo.wan1, addr::WAN1), (&topo.wan2, addr::WAN2)] {
        for _ in 0..3 {
            let body = get_once(ns, vip, T).unwrap();
            assert!(body.starts_with(&format!("web {client}:")), "{body}");
        }
    }
    // One connection, several requests: its replies keep coming from :80.
    let mut c = HttpClient::connect(&topo.wan1, vip, T).unwrap();
    assert_eq!(c.peer().unwrap(), std::net::SocketAddr::V4(vip));
    for _ in 0..5 {
        assert!(c.get().unwrap().starts_with("web "));
    }
    // ctl names the rule that made its session.
    let s = ctl_json(&topo, &["sessions", "--proto", "tcp"]);
    let rows = s["sessions"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["origin"] == "rule 1"), "{s}");
    // Only port 80 is forwarded.
    let other_port = SocketAddrV4::new(ext(2, 80), 8888);
    assert!(get_once(&topo.wan1, other_port, Duration::from_millis(500)).is_err());
}

/// A second site numbered like our subscribers (100.64.0.0/16), behind the upstream router.
fn far_site(topo: &Topology) -> Netns {
    let far = Netns::create(&format!("ng-far-{}", topo.suffix)).unwrap();
    let up_if = format!("fr-{}", topo.suffix);
    let far_if = format!("eth0-{}", topo.suffix);
    let mut up = topo.netlink(&topo.upstream).unwrap();
    up.add_veth(&up_if, &far_if, Some(far.fd())).unwrap();
    natgate::platform::ethtool::disable_offloads(&topo.upstream, &up_if).unwrap();
    natgate::platform::ethtool::disable_offloads(&far, &far_if).unwrap();
    up.add_addr_v4(&up_if, addr::GW_LAN, addr::LAN_PREFIX)
        .unwrap();
    up.set_up(&up_if).unwrap();
    // Our side of the site-to-site mapping, as the far site sees it.
    up.add_route_v4(&RouteV4::via(
        Ipv4Addr::new(192, 168, 50, 0),
        24,
        addr::GW_WAN,
    ))
    .unwrap();
    let mut nl = Netlink::open_in(&far).unwrap();
    nl.set_up("lo").unwrap();
    natgate::platform::sysctl::set(&far, "net/ipv4/conf/all/rp_filter", "0").unwrap();
    nl.add_addr_v4(&far_if, addr::SUB1, addr::LAN_PREFIX)
        .unwrap();
    nl.set_up(&far_if).unwrap();
    nl.add_route_v4(&RouteV4::default_via(addr::GW_LAN))
        .unwrap();
    far
}

#[test]
fn twice_nat_joins_two_networks_with_one_address_space() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let far = far_site(&topo);
    // The gateway reaches the far 100.64.0.0/16 through the upstream, but only for what natgate
    // translated (it arrives from the inside TUN); its own 100.64.0.0/16 stays on lan0.
    let mut gwnl = topo.netlink(&topo.gateway).unwrap();
    gwnl.add_route_v4(
        &RouteV4::via(addr::LAN_NET, addr::LAN_PREFIX, addr::UPSTREAM_DOWN).in_table(200),
    )
    .unwrap();
    gwnl.add_rule_v4(&RuleV4 {
        priority: 100,
        iif: Some("natgate-in".into()),
        table: 200,
        ..RuleV4::default()
    })
    .unwrap();
    drop(gwnl);
    // Ours reach theirs as 172.16.0.0/24; we appear to them as 192.168.50.0/24.
    let rule = r#"
[[rule]]
id = 1
direction = "outbound"
bidirectional = true
src = "100.64.0.0/24"
dst = "172.16.0.0/24"
action.translate.src = { addr = "192.168.50.0/24" }
action.translate.dst = { addr = "100.64.0.0/24" }
"#;
    let _gw = Gateway::start(&topo, &config(&topo, rule));
    // Our 100.64.0.10 reaches their 100.64.0.10 as 172.16.0.10 and is seen as 192.168.50.10.
    let (seen, from, local) = echo(
        &topo.sub1,
        &far,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4000),
        SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 10), 4000),
    );
    assert_eq!(
        seen,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 10), local.port())
    );
    assert_eq!(from, SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 10), 4000));
    // Their 100.64.0.10 starts a flow to our 100.64.0.11 (192.168.50.11 to them).
    let (seen, from, local) = echo(
        &far,
        &topo.sub2,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5000),
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 11), 5000),
    );
    assert_eq!(
        seen,
        SocketAddrV4::new(Ipv4Addr::new(172, 16, 0, 10), local.port())
    );
    assert_eq!(
        from,
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 11), 5000)
    );
    // Flows anywhere else still use dynamic NAPT.
    assert!(in_pool(*seen_by_wan1(&topo, &topo.sub1, 3478).ip()));
}

#[test]
fn port_forward_on_the_home_gateways_own_address() {
    if !is_root() {
        return;
    }
    let topo = topology();
    // The pool is the outside interface's own address; port 80 of it is below the NAT's
    // ports, so without the rule it would be the host's.
    let text = format!(
        "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\n\n[pool]\noutside-address = true\n\n\
         [control]\nsocket = \"{}\"\n\n[[rule]]\nid = 1\ndirection = \"inbound\"\n\
         proto = \"tcp\"\ndst = \"192.0.2.1/32\"\ndst-ports = 80\n\
         action.translate.dst = {{ addr = \"100.64.0.11/32\", port = 8888 }}\n",
        topo.ifaces.lan0,
        topo.ifaces.wan0,
        common::control_socket(&topo).display()
    );
    let _gw = Gateway::start(&topo, &text);
    let _web = HttpServer::start(&topo.sub2, SocketAddrV4::new(addr::SUB2, 8888), "web");
    let body = get_once(&topo.wan1, SocketAddrV4::new(addr::GW_WAN, 80), T).unwrap();
    assert!(body.starts_with(&format!("web {}:", addr::WAN1)), "{body}");
    // The subscribers' own flows still leave as the outside address.
    assert_eq!(*seen_by_wan1(&topo, &topo.sub1, 3478).ip(), addr::GW_WAN);
}

#[test]
fn two_queues_keep_static_flows_in_one_engine() {
    if !is_root() {
        return;
    }
    let topo = topology();
    route_to_gateway(&topo, ext(0, 0), 16);
    // Two workers: the kernel spreads packets over both queues by its own hash, and steering
    // must bring both directions of every static flow to the engine that holds it.
    let extra = format!(
        "[tun]\nqueues = 2\n{HOST_NAT}{}",
        r#"
[[rule]]
id = 20
direction = "inbound"
proto = "tcp"
dst = "198.18.2.80/32"
dst-ports = 80
action.translate.dst = { addr = "100.64.0.11/32", port = 8888 }

[[virtual-server]]
address = "198.18.3.80"
port = 80
protocol = "tcp"
scheduler = "round-robin"

[[virtual-server.real-servers]]
address = "100.64.0.10"
port = 8080

[[virtual-server.real-servers]]
address = "100.64.0.11"
port = 8080
"#
    );
    let _web = HttpServer::start(&topo.sub2, SocketAddrV4::new(addr::SUB2, 8888), "web");
    let _a = HttpServer::start(&topo.sub1, SocketAddrV4::new(addr::SUB1, 8080), "a");
    let _b = HttpServer::start(&topo.sub2, SocketAddrV4::new(addr::SUB2, 8080), "b");
    let _gw = Gateway::start(&topo, &config(&topo, &extra));
    assert_eq!(ctl_json(&topo, &["status"])["workers"], 2);
    for i in 0..16 {
        let seen = seen_by_wan1(&topo, &topo.sub1, 4000 + i);
        assert_eq!(*seen.ip(), ext(1, 10));
        let to = SocketAddrV4::new(ext(1, 10), 7000 + i);
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7000 + i);
        let (_, from, _) = echo(&topo.wan1, &topo.sub1, bind, to);
        assert_eq!(from, to);
    }
    let forward = SocketAddrV4::new(ext(2, 80), 80);
    let vip = SocketAddrV4::new(ext(3, 80), 80);
    let mut names = std::collections::HashSet::new();
    for _ in 0..16 {
        assert!(
            get_once(&topo.wan1, forward, T)
                .unwrap()
                .starts_with("web ")
        );
        let body = get_once(&topo.wan2, vip, T).unwrap();
        names.insert(body.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(names.len(), 2, "both real servers answered: {names:?}");
    // A subscriber reaches the port forward and the virtual server too (hairpinned).
    for _ in 0..8 {
        assert!(
            get_once(&topo.sub1, forward, T)
                .unwrap()
                .starts_with("web ")
        );
        get_once(&topo.sub2, vip, T).unwrap();
    }
    let v = ctl_json(&topo, &["vservers"]);
    let bytes: u64 = v["virtual_servers"][0]["real_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap())
        .sum();
    assert!(bytes > 0, "{v}");
}
