//! Home gateway: the pool is the outside interface's own address (192.0.2.1). The NAT works,
//! and the gateway stays a host: ping and a TCP connection to its outside address still reach
//! it, its own sockets get ports outside the NAT's range, and stopping restores the `local`
//! rule. Subscribers hairpin through the outside address, the gateway's own ICMP errors about
//! translated packets reach them, and random ports are random over the NAT's range. Needs
//! root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};

use common::icmp::{recv_error, setsockopt_int, subscriber_socket};
use common::{Gateway, T, is_root, topology, udp_socket};
use natgate::lab::probe::{ping, tcp_probe, udp_echo};
use natgate::lab::topology::addr;
use natgate::platform::netlink::Netlink;

fn home_config(topo: &natgate::lab::topology::Topology) -> String {
    home_config_with(topo, "")
}

/// The home config with `extra` appended (e.g. a `[behavior]` section).
fn home_config_with(topo: &natgate::lab::topology::Topology, extra: &str) -> String {
    format!(
        "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\n\n[pool]\noutside-address = true\n\
         nat-ports = \"20000-65535\"\n\n[control]\nsocket = \"{}\"\n\n{extra}\n",
        topo.ifaces.lan0,
        topo.ifaces.wan0,
        common::control_socket(topo).display()
    )
}

fn local_rule_at_zero(topo: &natgate::lab::topology::Topology) -> bool {
    let mut nl = Netlink::open_in(&topo.gateway).unwrap();
    nl.rules_v4()
        .unwrap()
        .iter()
        .any(|r| r.priority == 0 && r.table == natgate::platform::netlink::RT_TABLE_LOCAL)
}

#[test]
fn home_gateway_translates_and_the_host_stays_reachable() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &home_config(&topo));
    // The NAT: subscribers appear as the outside address, on a NAT port.
    for port in [3478, 3479] {
        let seen = udp_echo(
            &topo.sub1,
            &topo.wan1,
            SocketAddrV4::new(addr::WAN1, port),
            T,
        )
        .unwrap();
        assert_eq!(seen.ip(), addr::GW_WAN, "{seen}");
        assert!(seen.port() >= 20000, "{seen}");
    }
    let seen = tcp_probe(
        &topo.sub2,
        &topo.wan2,
        SocketAddrV4::new(addr::WAN2, 8080),
        T,
    )
    .unwrap();
    assert_eq!(seen.ip(), addr::GW_WAN);
    ping(&topo.sub1, addr::WAN1, T).unwrap();
    // The host: ping and TCP to its outside address from the WAN, while the NAT runs.
    ping(&topo.wan1, addr::GW_WAN, T).expect("ping the gateway's outside address");
    let listener = topo
        .gateway
        .run_in(|| TcpListener::bind(SocketAddrV4::new(addr::GW_WAN, 22)))
        .unwrap()
        .unwrap();
    let mut c = topo
        .wan1
        .run_in(|| TcpStream::connect_timeout(&SocketAddrV4::new(addr::GW_WAN, 22).into(), T))
        .unwrap()
        .expect("TCP to the gateway's own port 22");
    c.write_all(b"ssh?").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    for _ in 0..300 {
        match listener.accept() {
            Ok((conn, _)) => {
                accepted = Some(conn);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    let mut conn = accepted.expect("the gateway's own listener accepted the connection");
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 4];
    conn.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ssh?");
    // The host's own sockets: ports below the NAT's range, and they work.
    let own = topo
        .gateway
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .unwrap()
        .unwrap();
    let port = own.local_addr().unwrap().port();
    assert!((1024..20000).contains(&port), "host socket got port {port}");
    let wan_srv = topo
        .wan1
        .run_in(|| UdpSocket::bind(SocketAddrV4::new(addr::WAN1, 5353)))
        .unwrap()
        .unwrap();
    wan_srv.set_read_timeout(Some(T)).unwrap();
    own.set_read_timeout(Some(T)).unwrap();
    own.send_to(b"from the host", SocketAddrV4::new(addr::WAN1, 5353))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = wan_srv.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from the host");
    wan_srv.send_to(b"answer", from).unwrap();
    let (n, _) = own
        .recv_from(&mut buf)
        .expect("reply reaches the host's own socket");
    assert_eq!(&buf[..n], b"answer");
    assert!(
        !local_rule_at_zero(&topo),
        "local rule moved behind natgate's"
    );
    assert!(gw.stop().unwrap().success(), "{}", gw.lines.join("\n"));
    assert!(local_rule_at_zero(&topo), "local rule restored");
    let range =
        natgate::platform::sysctl::get(&topo.gateway, "net/ipv4/ip_local_port_range").unwrap();
    assert_ne!(
        range.split_whitespace().nth(1),
        Some("19999"),
        "range restored: {range}"
    );
}

#[test]
fn home_gateway_sigkill_then_restart_restores_local_rule() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &home_config(&topo));
    gw.kill();
    assert!(!local_rule_at_zero(&topo));
    let mut gw = Gateway::start(&topo, &home_config(&topo));
    let seen = udp_echo(
        &topo.sub1,
        &topo.wan1,
        SocketAddrV4::new(addr::WAN1, 3478),
        T,
    )
    .unwrap();
    assert_eq!(seen.ip(), addr::GW_WAN);
    ping(&topo.wan1, addr::GW_WAN, T).unwrap();
    assert!(gw.stop().unwrap().success());
    assert!(local_rule_at_zero(&topo));
    assert_eq!(common::natgate_rules(&topo), Vec::<String>::new());
}

/// The external endpoint a socket's datagrams leave with, as WAN1 sees it.
fn mapped(topo: &natgate::lab::topology::Topology, sock: &UdpSocket) -> SocketAddrV4 {
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 0));
    let at = common::v4(server.local_addr().unwrap());
    sock.send_to(b"map me", at).unwrap();
    let (_, from) = common::recv(&server, T).expect("reached WAN1");
    common::v4(from)
}

/// RFC 4787 REQ-9 on the outside address: a subscriber reaches another's mapping on it (the
/// kernel's `local` table would otherwise take the packet for the host), seeing the other's
/// external endpoint as the source, and back; the host stays reachable from the LAN on that
/// address (ping, TCP to its own port).
#[test]
fn home_gateway_hairpins_through_the_outside_address() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &home_config(&topo));
    let a = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    let b = udp_socket(&topo.sub2, SocketAddrV4::new(addr::SUB2, 0));
    let xa = mapped(&topo, &a);
    let xb = mapped(&topo, &b);
    assert_eq!(*xb.ip(), addr::GW_WAN);
    a.send_to(b"hairpin", xb).unwrap();
    let (data, from) = common::recv(&b, T).expect("the hairpinned datagram reached sub2");
    assert_eq!(data, b"hairpin");
    assert_eq!(common::v4(from), xa, "external source (REQ-9a)");
    b.send_to(b"and back", xa).unwrap();
    let (data, from) = common::recv(&a, T).expect("the answer reached sub1");
    assert_eq!(data, b"and back");
    assert_eq!(common::v4(from), xb);
    // The host, from the LAN, on its outside address.
    ping(&topo.sub1, addr::GW_WAN, T).expect("ping the outside address from the LAN");
    // The host's own ICMP to that address now passes through natgate, and is handed back.
    ping(&topo.gateway, addr::GW_WAN, T).expect("the host pings its own outside address");
    let listener = topo
        .gateway
        .run_in(|| TcpListener::bind(SocketAddrV4::new(addr::GW_WAN, 2222)))
        .unwrap()
        .unwrap();
    topo.sub1
        .run_in(|| TcpStream::connect_timeout(&SocketAddrV4::new(addr::GW_WAN, 2222).into(), T))
        .unwrap()
        .expect("TCP from the LAN to the host's own port on the outside address");
    drop(listener);
    assert!(gw.stop().unwrap().success(), "{}", gw.lines.join("\n"));
    assert_eq!(common::natgate_rules(&topo), Vec::<String>::new());
}

/// On a home gateway a TTL-2 probe expires at the router behind the gateway, whose error
/// reaches the subscriber translated back.
#[test]
fn home_gateway_ttl_2_expires_at_the_router_behind_it() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &home_config(&topo));
    let s = subscriber_socket(&topo);
    setsockopt_int(&s, libc::SOL_IP, libc::IP_TTL, 2);
    let dst = SocketAddrV4::new(addr::WAN1, 33434);
    s.send_to(b"probe", dst).unwrap();
    let e = recv_error(&s, T).expect("time exceeded reached the subscriber");
    assert_eq!((e.icmp_type, e.code), (11, 0));
    assert_eq!(e.offender, addr::UPSTREAM_DOWN);
    assert_eq!(e.original_dst, dst);
}

/// RFC 5508 REQ-4 for errors the gateway host itself sends about a translated packet: their
/// destination is the translated source, the outside address, which the `local` table would
/// deliver to the host. Here the gateway has an `unreachable` route for one WAN address, so the
/// kernel's routing of the translated packet out of natgate answers it (on every data path:
/// whether or not the kernel also routed the packet in).
#[test]
fn home_gateway_own_icmp_errors_reach_the_subscriber() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &home_config(&topo));
    let nowhere = "203.0.113.99";
    let st = std::process::Command::new("ip")
        .args([
            "-n",
            topo.gateway.name(),
            "route",
            "add",
            "unreachable",
            nowhere,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "ip route add unreachable");
    let s = subscriber_socket(&topo);
    let dst = SocketAddrV4::new(nowhere.parse().unwrap(), 33434);
    s.send_to(b"probe", dst).unwrap();
    let e = recv_error(&s, T).expect("the gateway's unreachable reached the subscriber");
    assert_eq!((e.icmp_type, e.code), (3, 1), "host unreachable");
    assert!(
        [addr::GW_LAN, addr::GW_WAN].contains(&e.offender),
        "from the gateway: {e:?}"
    );
    assert_eq!(e.original_dst, dst, "quoted header translated back");
}

/// The same for fragmentation needed with the engine's default TTL handling: the outside link's
/// MTU (1400) is below the engine's `outside-mtu` (1500), so the kernel, not the engine, finds a
/// translated DF datagram too big, and tells the translated source, the outside address.
#[test]
fn home_gateway_own_fragmentation_needed_reaches_the_subscriber() {
    if !is_root() {
        return;
    }
    let topo = topology();
    Netlink::open_in(&topo.gateway)
        .unwrap()
        .set_mtu(&topo.ifaces.wan0, 1400)
        .unwrap();
    let _gw = Gateway::start(&topo, &home_config(&topo));
    let s = subscriber_socket(&topo);
    setsockopt_int(
        &s,
        libc::SOL_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    );
    let dst = SocketAddrV4::new(addr::WAN1, 33434);
    s.send_to(&[0u8; 1420], dst).unwrap();
    let e = recv_error(&s, T).expect("the gateway's fragmentation needed reached the subscriber");
    assert_eq!((e.icmp_type, e.code), (3, 4));
    assert!(
        [addr::GW_LAN, addr::GW_WAN].contains(&e.offender),
        "from the gateway: {e:?}"
    );
    assert_eq!(e.original_dst, dst, "quoted header translated back");
}

/// RFC 6056 / RFC 4787 REQ-3 with random port assignment on the outside address: ports are
/// spread over the NAT's range, 20000-65535. Sequential or nearly sequential ports (20000,
/// 20001, 20004, ...) cannot pass: of 40 uniform ports, more than 2 in the range's first 100
/// has a chance of about 1e-4, and a spread under 20000 far less.
#[test]
fn home_gateway_random_ports_are_random_over_the_nat_range() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(
        &topo,
        &home_config_with(
            &topo,
            "[behavior]\npreset = \"full-cone\"\nport-assignment = \"random\"\n",
        ),
    );
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let mut ports = Vec::new();
    for _ in 0..40 {
        let c = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
        c.send_to(b"port?", SocketAddrV4::new(addr::WAN1, 3478))
            .unwrap();
        let (_, from) = common::recv(&server, T).expect("reached WAN1");
        assert_eq!(from.ip(), addr::GW_WAN);
        ports.push(from.port());
    }
    assert!(ports.iter().all(|p| *p >= 20_000), "{ports:?}");
    let low = ports.iter().filter(|p| **p < 20_100).count();
    assert!(low <= 2, "{low} of 40 in 20000-20099: {ports:?}");
    let spread = ports.iter().max().unwrap() - ports.iter().min().unwrap();
    assert!(spread >= 20_000, "spread {spread}: {ports:?}");
}
