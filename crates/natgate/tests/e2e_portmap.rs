//! Port mapping end to end, with clients nobody here wrote: `natpmpc` (libnatpmp, Debian
//! package `natpmpc`) gets the public address and maps UDP and TCP ports, and a WAN host then
//! reaches the subscriber's listening socket through the mapped address and port; after the
//! deletion it no longer does. The `crab_nat` crate's PCP client maps a port the same way, and
//! its request for another host's address is refused; the gateway's PCP ANNOUNCE reaches the
//! subscribers when it starts; with two workers each subscriber's request reaches the worker
//! that owns it. `upnpc` (miniupnpc, Debian package `miniupnpc`) finds the gateway's UPnP IGD
//! by SSDP, reads the external address, maps a TCP port a WAN host then connects through, and
//! deletes it; its request for another host's address is refused; with three workers a
//! subscriber of another worker than the first gets a mapping that works. Real sockets in the
//! standard topology's namespaces; needs root (and `natpmpc` and `upnpc` for their tests),
//! skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::num::NonZeroU16;
use std::process::Command;
use std::time::Duration;

use common::{Gateway, T, config, ctl, ctl_json, in_pool, is_root, recv, topology, udp_socket};
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netns::Netns;

const PORT_MAPPING: &str = "[port-mapping]\npcp = true\nnat-pmp = true\nmin-lifetime = 30\n";

/// Whether `natpmpc` is installed; says SKIP when not.
#[allow(clippy::print_stderr)]
fn have_natpmpc() -> bool {
    let ok = Command::new("natpmpc").arg("-h").output().is_ok();
    if !ok {
        eprintln!("SKIP: natpmpc is not installed (apt-get install natpmpc)");
    }
    ok
}

/// Runs `natpmpc -g <gateway's inside address> ARGS` in `ns`; returns its output.
fn natpmpc(ns: &Netns, args: &[&str]) -> String {
    let gw = addr::GW_LAN.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "natpmpc", "-g", &gw])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "natpmpc {args:?} failed:\n{text}");
    text
}

/// The value after `label` on the first line that has it.
fn field<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.split_once(label).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{text}"))
}

/// The public port of natpmpc's "Mapped public port P protocol X to local port L liftime T".
fn mapped_port(text: &str) -> (u16, u32) {
    let rest = field(text, "Mapped public port");
    let words: Vec<&str> = rest.split_whitespace().collect();
    (
        words[0].parse().unwrap(),
        words[words.len() - 1].parse().unwrap(),
    )
}

/// Whether a datagram from wan1 to `to` reaches `sock` (bound in the subscriber's namespace).
/// When it does, the subscriber's answer must come back from `to`: the mapping serves both
/// directions (with several workers, only if the worker that owns the subscriber has it).
fn udp_reaches(
    topo: &Topology,
    sock: &std::net::UdpSocket,
    to: SocketAddrV4,
    wait: Duration,
) -> bool {
    let sender = udp_socket(&topo.wan1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    sender.send_to(b"inbound", to).unwrap();
    let Some((data, from)) = recv(sock, wait) else {
        return false;
    };
    assert_eq!(data, b"inbound");
    assert_eq!(
        from.ip(),
        IpAddr::V4(addr::WAN1),
        "the remote is not rewritten"
    );
    sock.send_to(b"answer", from).unwrap();
    let (data, back) = recv(&sender, T).unwrap_or_else(|| panic!("no answer through {to}"));
    assert_eq!(data, b"answer");
    assert_eq!(
        back,
        std::net::SocketAddr::V4(to),
        "the answer leaves from the mapping"
    );
    true
}

/// A TCP connection from wan1 to `to`, accepted by `listener` in the subscriber's namespace,
/// carrying a line each way.
fn tcp_reaches(topo: &Topology, listener: &TcpListener, to: SocketAddrV4) {
    let mut client = topo
        .wan1
        .run_in(|| TcpStream::connect_timeout(&to.into(), T))
        .unwrap()
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    client.write_all(b"hello").unwrap();
    let (mut conn, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), IpAddr::V4(addr::WAN1));
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    conn.write_all(b"world").unwrap();
    client.set_read_timeout(Some(T)).unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
}

/// The explicit mappings `ctl mappings` lists, as (proto, internal, external, origin, expires).
fn explicit_rows(topo: &Topology) -> Vec<(String, String, String, String, u64)> {
    ctl_json(topo, &["mappings"])["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.get("origin").is_some())
        .map(|m| {
            (
                m["proto"].as_str().unwrap().to_owned(),
                m["internal"].as_str().unwrap().to_owned(),
                m["external"].as_str().unwrap().to_owned(),
                m["origin"].as_str().unwrap().to_owned(),
                m["expires_in_secs"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A home gateway (the pool is the outside interface's own address), where NAT-PMP belongs:
/// NAT-PMP tells a client one public address for all its mappings.
fn home_config(topo: &Topology) -> String {
    format!(
        "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\n\n[pool]\noutside-address = true\n\
         nat-ports = \"20000-65535\"\n\n[control]\nsocket = \"{}\"\n\n{PORT_MAPPING}\n",
        topo.ifaces.lan0,
        topo.ifaces.wan0,
        common::control_socket(topo).display()
    )
}

#[test]
fn natpmpc_maps_udp_and_tcp_and_a_deleted_mapping_lets_nothing_in() {
    if !is_root() || !have_natpmpc() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &home_config(&topo));

    // The public address request.
    let out = natpmpc(&topo.sub1, &[]);
    let public: Ipv4Addr = field(&out, "Public IP address :").parse().unwrap();
    assert_eq!(public, addr::GW_WAN);

    // UDP: the subscriber listens on 4000 and asks for it.
    let listening = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4000));
    let out = natpmpc(&topo.sub1, &["-a", "4000", "4000", "udp", "60"]);
    let (udp_port, lifetime) = mapped_port(&out);
    assert_eq!(lifetime, 60);
    let udp_ext = SocketAddrV4::new(public, udp_port);
    assert!(
        udp_reaches(&topo, &listening, udp_ext, T),
        "nothing reached {udp_ext}"
    );

    // TCP likewise.
    let listener = topo
        .sub1
        .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 2222)))
        .unwrap()
        .unwrap();
    let out = natpmpc(&topo.sub1, &["-a", "2222", "2222", "tcp", "60"]);
    let (tcp_port, _) = mapped_port(&out);
    tcp_reaches(&topo, &listener, SocketAddrV4::new(public, tcp_port));

    // `ctl mappings` lists both, with their origin and remaining lifetime.
    let rows = explicit_rows(&topo);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (proto, internal, external, origin, expires) in &rows {
        let (port, ext_port) = if proto == "udp" {
            (4000, udp_port)
        } else {
            (2222, tcp_port)
        };
        assert_eq!(internal, &format!("{}:{port}", addr::SUB1));
        assert_eq!(external, &SocketAddrV4::new(public, ext_port).to_string());
        assert_eq!(origin, "nat-pmp");
        assert!((1..=60).contains(expires), "{expires}");
    }

    // Deleted (lifetime 0): the mapped endpoint lets nothing in, not even the remote that
    // used it.
    natpmpc(&topo.sub1, &["-a", "4000", "4000", "udp", "0"]);
    assert!(
        !udp_reaches(&topo, &listening, udp_ext, Duration::from_secs(1)),
        "{udp_ext} still reaches the subscriber after the deletion"
    );
    assert_eq!(explicit_rows(&topo).len(), 1);

    // The operator deletes the TCP mapping: the port lets nothing in; a second delete finds
    // nothing to delete.
    let internal = format!("{}:2222", addr::SUB1);
    let (code, out, err) = ctl(&topo, &["unmap", "tcp", &internal]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nat-pmp"), "{out}");
    assert!(explicit_rows(&topo).is_empty());
    let to = SocketAddrV4::new(public, tcp_port);
    let refused = topo
        .wan1
        .run_in(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)))
        .unwrap();
    assert!(refused.is_err(), "{to} still accepts connections");
    let (code, _, err) = ctl(&topo, &["unmap", "tcp", &internal]);
    assert_ne!(code, 0);
    assert!(err.contains("no explicit tcp mapping"), "{err}");
}

/// Maps `internal_port` with crab_nat's PCP client from `ns`, saying it is `client`.
fn pcp_map(ns: &Netns, client: Ipv4Addr, internal_port: u16) -> Result<(IpAddr, u16), String> {
    ns.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let base = crab_nat::pcp::BaseMapRequest::new(
                addr::GW_LAN.into(),
                IpAddr::V4(client),
                crab_nat::InternetProtocol::Udp,
                NonZeroU16::new(internal_port).unwrap(),
            );
            let options = crab_nat::PortMappingOptions {
                lifetime_seconds: Some(120),
                timeout_config: Some(crab_nat::TimeoutConfig {
                    initial_timeout: Duration::from_millis(500),
                    max_retries: 2,
                    max_retry_timeout: None,
                }),
                ..Default::default()
            };
            crab_nat::pcp::port_mapping(base, None, None, options)
                .await
                .map(|m| {
                    let ip = match m.mapping_type() {
                        crab_nat::PortMappingType::Pcp { external_ip, .. } => external_ip,
                        crab_nat::PortMappingType::NatPmp => panic!("PCP was asked for"),
                    };
                    (ip, m.external_port().get())
                })
                .map_err(|e| format!("{e:?}"))
        })
    })
    .unwrap()
}

#[test]
fn an_independent_pcp_client_maps_a_port_and_cannot_map_another_host() {
    if !is_root() {
        return;
    }
    let topo = topology();
    // PCP clients listen on 5350 for the ANNOUNCE a server multicasts when it starts.
    let announce = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5350));
    let _gw = Gateway::start(&topo, &config(&topo, PORT_MAPPING));
    let (bytes, from) = recv(&announce, T).expect("no PCP ANNOUNCE at start");
    assert_eq!(from.ip(), IpAddr::V4(addr::GW_LAN));
    assert_eq!(bytes.len(), 24);
    assert_eq!(
        &bytes[..8],
        &[2, 0x80, 0, 0, 0, 0, 0, 0],
        "ANNOUNCE response, SUCCESS"
    );
    let listening = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5000));
    let (ip, port) = pcp_map(&topo.sub1, addr::SUB1, 5000).expect("PCP MAP");
    let IpAddr::V4(ip) = ip else {
        panic!("an IPv4 external address, not {ip}");
    };
    assert!(in_pool(ip), "{ip}");
    let ext = SocketAddrV4::new(ip, port);
    assert!(
        udp_reaches(&topo, &listening, ext, T),
        "nothing reached {ext}"
    );
    let rows = explicit_rows(&topo);
    assert_eq!(rows.len(), 1);
    assert!(rows[0].3.starts_with("pcp nonce "), "{rows:?}");

    // sub1 asks for sub2's address: refused (ADDRESS_MISMATCH), and nothing is mapped.
    let refused = pcp_map(&topo.sub1, addr::SUB2, 5001);
    assert!(refused.is_err(), "mapped {refused:?} for another host");
    assert_eq!(explicit_rows(&topo).len(), 1);
}

/// A PCP MAP for UDP `port` from `client`, built by hand (RFC 6887 figures 2 and 9), for
/// `third_party` if given (figure 11), sent from a socket bound to `client` in `ns`; returns
/// the assigned external endpoint.
fn pcp_map_by_hand(
    ns: &Netns,
    client: Ipv4Addr,
    port: u16,
    third_party: Option<Ipv4Addr>,
) -> SocketAddrV4 {
    let mut req = vec![2, 1, 0, 0, 0, 0, 0, 120];
    req.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    req.extend_from_slice(&client.octets());
    req.extend_from_slice(&[9; 12]);
    req.extend_from_slice(&[17, 0, 0, 0]);
    req.extend_from_slice(&port.to_be_bytes());
    req.extend_from_slice(&[0; 18]);
    if let Some(tp) = third_party {
        req.extend_from_slice(&[1, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        req.extend_from_slice(&tp.octets());
    }
    let sock = udp_socket(ns, SocketAddrV4::new(client, 0));
    sock.send_to(&req, SocketAddrV4::new(addr::GW_LAN, 5351))
        .unwrap();
    let (r, _) = recv(&sock, T).expect("no PCP answer");
    assert_eq!(&r[..4], &[2, 0x81, 0, 0], "a MAP SUCCESS");
    SocketAddrV4::new(
        Ipv4Addr::new(r[56], r[57], r[58], r[59]),
        u16::from_be_bytes([r[42], r[43]]),
    )
}

#[test]
fn with_two_workers_each_subscriber_is_served_by_the_worker_that_owns_its_ports() {
    if !is_root() {
        return;
    }
    // sub1 (100.64.0.10) and a second address of sub2 (100.64.0.12) belong to different
    // workers, so each request must reach its own worker for the mapping to work.
    let other = Ipv4Addr::new(100, 64, 0, 12);
    assert_ne!(
        natgate_core::shard::subscriber_owner(addr::SUB1, 2),
        natgate_core::shard::subscriber_owner(other, 2)
    );
    let topo = topology();
    topo.netlink(&topo.sub2)
        .unwrap()
        .add_addr_v4(&topo.ifaces.sub2, other, 16)
        .unwrap();
    // sub1 may map for other hosts (THIRD_PARTY).
    let text = format!(
        "[tun]\nqueues = 2\n\n{PORT_MAPPING}third-party = [\"{}/32\"]\n",
        addr::SUB1
    );
    let _gw = Gateway::start(&topo, &config(&topo, &text));
    let first = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 5000));
    let (ip, port) = pcp_map(&topo.sub1, addr::SUB1, 5000).expect("PCP MAP from sub1");
    let IpAddr::V4(ip) = ip else {
        panic!("{ip}");
    };
    let second = udp_socket(&topo.sub2, SocketAddrV4::new(other, 6000));
    let ext = pcp_map_by_hand(&topo.sub2, other, 6000, None);
    // sub1 (worker 0) maps a port for 100.64.0.12 (worker 1): the mapping must be made where
    // 100.64.0.12's packets go.
    let third = udp_socket(&topo.sub2, SocketAddrV4::new(other, 7000));
    let tp_ext = pcp_map_by_hand(&topo.sub1, addr::SUB1, 7000, Some(other));
    for (sock, to) in [
        (&first, SocketAddrV4::new(ip, port)),
        (&second, ext),
        (&third, tp_ext),
    ] {
        assert!(udp_reaches(&topo, sock, to, T), "nothing reached {to}");
    }
    assert_eq!(explicit_rows(&topo).len(), 3);
}

/// Sends one UDP datagram from `src` to `dst` in `ns` through a raw socket, so `src` can be an
/// address `ns` does not have (the kernel fills in the IP header's length and checksum; the UDP
/// checksum is left out, which IPv4 allows).
fn send_spoofed_udp(ns: &Netns, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) {
    let len = 28 + payload.len();
    let mut pkt = vec![0u8; len];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    pkt[8] = 64;
    pkt[9] = 17;
    pkt[12..16].copy_from_slice(&src.ip().octets());
    pkt[16..20].copy_from_slice(&dst.ip().octets());
    pkt[20..22].copy_from_slice(&src.port().to_be_bytes());
    pkt[22..24].copy_from_slice(&dst.port().to_be_bytes());
    pkt[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    pkt[28..].copy_from_slice(payload);
    ns.run_in(|| {
        // SAFETY: a raw socket of our own, closed below; the address and packet outlive the
        // calls that read them.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as libc::sa_family_t;
            to.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
            let n = libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(n, pkt.len() as isize, "sendto: {err}");
        }
    })
    .unwrap();
}

/// Requests are served only when they arrive on the inside interface: a host on the outside
/// of a CGN (whose inside address the host would deliver locally from any interface) that
/// sends a NAT-PMP mapping request to that address, claiming a subscriber's address as its
/// source, gets no mapping made and no answer sent to the subscriber, while the subscriber's
/// own request from the inside still works.
#[test]
fn a_request_from_outside_claiming_a_subscriber_s_address_maps_nothing() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, PORT_MAPPING));
    // The upstream router can reach the gateway's inside address through its outside one.
    topo.upstream
        .run_in(|| {
            natgate::platform::netlink::Netlink::new()
                .unwrap()
                .add_route_v4(&natgate::platform::netlink::RouteV4::via(
                    addr::GW_LAN,
                    32,
                    addr::GW_WAN,
                ))
        })
        .unwrap()
        .unwrap();
    let victim = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    let victim_at = common::v4(victim.local_addr().unwrap());
    // NAT-PMP: version 0, map UDP, internal port 7000, any external port, 3600 s.
    let mut request = vec![0u8, 1, 0, 0];
    request.extend_from_slice(&7000u16.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&3600u32.to_be_bytes());
    let server = SocketAddrV4::new(addr::GW_LAN, 5351);
    for _ in 0..3 {
        send_spoofed_udp(&topo.upstream, victim_at, server, &request);
    }
    assert!(
        recv(&victim, Duration::from_millis(500)).is_none(),
        "an answer reached the subscriber"
    );
    assert!(
        explicit_rows(&topo).is_empty(),
        "{:?}",
        explicit_rows(&topo)
    );
    // The same request from the subscriber itself, on the inside, is served.
    victim.send_to(&request, server).unwrap();
    let (answer, _) = recv(&victim, T).expect("an answer on the inside");
    assert_eq!(
        &answer[..4],
        &[0, 129, 0, 0],
        "a successful UDP mapping answer"
    );
    assert_eq!(explicit_rows(&topo).len(), 1);
}

/// Whether `upnpc` is installed; says SKIP when not.
#[allow(clippy::print_stderr)]
fn have_upnpc() -> bool {
    // upnpc prints its usage and fails without arguments: found is what matters.
    let ok = Command::new("upnpc").output().is_ok();
    if !ok {
        eprintln!("SKIP: upnpc is not installed (apt-get install miniupnpc)");
    }
    ok
}

/// Runs `upnpc ARGS` in `ns`, killed after 20 seconds; returns its output, stdout and stderr.
fn upnpc(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["20", "ip", "netns", "exec", ns.name(), "upnpc"])
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(124),
        "upnpc {args:?} timed out:\n{text}"
    );
    text
}

#[test]
fn upnpc_finds_the_igd_maps_tcp_and_a_deleted_mapping_lets_nothing_in() {
    if !is_root() || !have_upnpc() {
        return;
    }
    let topo = topology();
    let config = format!(
        "{}upnp = true\nrequests-per-second = 100\nrequest-burst = 200\n",
        home_config(&topo)
    );
    let _gw = Gateway::start(&topo, &config);

    // Discovery by SSDP on the subscriber's interface, then the status and address. `-i`:
    // miniupnpc calls an IGD whose external address is private or reserved "not connected",
    // and the topology's (192.0.2.1, TEST-NET-1) is reserved.
    let out = upnpc(&topo.sub1, &["-i", "-m", &topo.ifaces.sub1, "-s"]);
    assert!(
        out.contains("IGD : http://100.64.0.1:5000/ctl/IPConn"),
        "{out}"
    );
    assert!(
        out.contains(&format!("Local LAN ip address : {}", addr::SUB1)),
        "{out}"
    );
    assert!(out.contains("Connection Type : IP_Routed"), "{out}");
    assert!(out.contains("Status : Connected"), "{out}");
    let public: Ipv4Addr = field(&out, "ExternalIPAddress =").parse().unwrap();
    assert_eq!(public, addr::GW_WAN);

    // The rest straight to the description found. The external port is in the pool's port
    // range (nat-ports), where the allocator can give it.
    let location = "http://100.64.0.1:5000/rootDesc.xml";
    let listener = topo
        .sub1
        .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 6000)))
        .unwrap()
        .unwrap();
    let sub1 = addr::SUB1.to_string();
    let out = upnpc(
        &topo.sub1,
        &[
            "-u", location, "-e", "e2e game", "-a", &sub1, "6000", "26000", "TCP", "60",
        ],
    );
    assert!(
        out.contains(&format!(
            "external {public}:26000 TCP is redirected to internal {sub1}:6000"
        )),
        "{out}"
    );
    tcp_reaches(&topo, &listener, SocketAddrV4::new(public, 26000));
    let rows = explicit_rows(&topo);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].3, "upnp \"e2e game\"");
    assert!((1..=60).contains(&rows[0].4), "{rows:?}");
    let out = upnpc(&topo.sub1, &["-i", "-u", location, "-l"]);
    assert!(out.contains(&format!("TCP 26000->{sub1}:6000")), "{out}");
    assert!(out.contains("'e2e game'"), "{out}");

    // For another host's address: refused, nothing mapped.
    let sub2 = addr::SUB2.to_string();
    let out = upnpc(
        &topo.sub1,
        &[
            "-i", "-u", location, "-a", &sub2, "6001", "26001", "TCP", "60",
        ],
    );
    assert!(out.contains("606"), "{out}");
    assert_eq!(explicit_rows(&topo).len(), 1);

    // Deleted: the port lets nothing in.
    let out = upnpc(&topo.sub1, &["-i", "-u", location, "-d", "26000", "TCP"]);
    assert!(
        out.contains("UPNP_DeletePortMapping() returned : 0"),
        "{out}"
    );
    assert!(explicit_rows(&topo).is_empty());
    let to = SocketAddrV4::new(public, 26000);
    let refused = topo
        .wan1
        .run_in(|| TcpStream::connect_timeout(&to.into(), Duration::from_secs(1)))
        .unwrap();
    assert!(refused.is_err(), "{to} still accepts connections");
}

#[test]
fn with_three_workers_a_upnp_mapping_is_made_by_the_worker_that_owns_the_client() {
    if !is_root() || !have_upnpc() {
        return;
    }
    let topo = topology();
    // A subscriber another worker than the first owns (with two workers, both are the first's):
    // were its requests answered by worker 0, the mapping would be where its packets do not
    // go, and the WAN host's connection would not get through.
    let (ns, client, iface) = [
        (&topo.sub1, addr::SUB1, &topo.ifaces.sub1),
        (&topo.sub2, addr::SUB2, &topo.ifaces.sub2),
    ]
    .into_iter()
    .find(|(_, a, _)| natgate_core::shard::subscriber_owner(*a, 3) != 0)
    .expect("a subscriber of another worker");
    let text = "[tun]\nqueues = 3\n\n[port-mapping]\nupnp = true\n\
                requests-per-second = 100\nrequest-burst = 200\n";
    let _gw = Gateway::start(&topo, &config(&topo, text));
    let listener = ns
        .run_in(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 6000)))
        .unwrap()
        .unwrap();
    let client = client.to_string();
    // Discovery too: the search is answered by the same worker. AddAnyPortMapping (`-n`):
    // each worker's allocator has its own share of the pool's ports, so the port asked for
    // may be another worker's, and then another one is given.
    let out = upnpc(
        ns,
        &[
            "-i", "-m", iface, "-n", &client, "6000", "26000", "TCP", "60",
        ],
    );
    assert!(
        out.contains(&format!("TCP is redirected to internal {client}:6000")),
        "{out}"
    );
    let rows = explicit_rows(&topo);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let external: SocketAddrV4 = rows[0].2.parse().unwrap();
    assert!(out.contains(&format!(":{} TCP", external.port())), "{out}");
    tcp_reaches(&topo, &listener, external);
}
