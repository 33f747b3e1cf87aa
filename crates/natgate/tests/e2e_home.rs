//! Home gateway: the pool is the outside interface's own address (192.0.2.1). The NAT works,
//! and the gateway stays a host: ping and a TCP connection to its outside address still reach
//! it, its own sockets get ports outside the NAT's range, and stopping restores the `local`
//! rule. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};

use common::{Gateway, T, is_root, topology};
use natgate::netlink::Netlink;
use natgate::probe::{ping, tcp_probe, udp_echo};
use natgate::topology::addr;

fn home_config(topo: &natgate::topology::Topology) -> String {
    format!(
        "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\n\n[pool]\noutside-address = true\n\
         nat-ports = \"20000-65535\"\n\n[control]\nsocket = \"{}\"\n",
        topo.ifaces.lan0,
        topo.ifaces.wan0,
        common::control_socket(topo).display()
    )
}

fn local_rule_at_zero(topo: &natgate::topology::Topology) -> bool {
    let mut nl = Netlink::open_in(&topo.gateway).unwrap();
    nl.rules_v4()
        .unwrap()
        .iter()
        .any(|r| r.priority == 0 && r.table == natgate::netlink::RT_TABLE_LOCAL)
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
    let range = natgate::sysctl::get(&topo.gateway, "net/ipv4/ip_local_port_range").unwrap();
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
