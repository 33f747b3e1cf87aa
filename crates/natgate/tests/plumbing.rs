//! Namespaces, the rtnetlink client, proxy ARP and TUN, each checked against
//! the kernel (and against `ip`, read-only, where that is the easiest oracle).
//!
//! Needs root; skips with a message otherwise. Every name carries the test's
//! pid and a tag, and every namespace is deleted by its guard.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use natgate::dataplane::tun::{Tun, TunConfig};
use natgate::platform::netlink::{Netlink, NetlinkError, RouteV4};
use natgate::platform::netns::{self, Netns, NetnsError};
use natgate::platform::sysctl;

#[allow(clippy::print_stderr)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: needs root (network namespaces, veths, TUN)");
    }
    root
}

fn ns_name(tag: &str) -> String {
    format!("ngt-{}-{tag}", std::process::id())
}

fn ip_in(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .arg("-n")
        .arg(ns.name())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {} {args:?}: {out:?}",
        ns.name()
    );
    String::from_utf8(out.stdout).unwrap()
}

fn netns_inode() -> std::path::PathBuf {
    std::fs::read_link("/proc/thread-self/ns/net").unwrap()
}

#[test]
fn netns_lifecycle() {
    if !is_root() {
        return;
    }
    let name = ns_name("life");
    let ns = Netns::create(&name).unwrap();
    assert_eq!(ns.name(), name);
    assert!(netns::list().unwrap().contains(&name));
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&name));

    // A second create of the same name fails and leaves the first alone.
    assert!(matches!(Netns::create(&name), Err(NetnsError::Exists(_))));
    assert!(ns.path().exists());

    // run_in is in another namespace; the caller's thread is not moved.
    let here = netns_inode();
    let inside = ns.run_in(netns_inode).unwrap();
    assert_ne!(here, inside);
    assert_eq!(netns_inode(), here);

    // open() sees the same namespace and does not delete it on drop.
    let opened = Netns::open(&name).unwrap();
    assert_eq!(opened.run_in(netns_inode).unwrap(), inside);
    drop(opened);
    assert!(ns.path().exists());

    // spawn_in runs a 'static worker there.
    let h = ns.spawn_in(netns_inode).unwrap();
    assert_eq!(h.join().unwrap().unwrap(), inside);

    // A panic inside run_in comes back to the caller.
    let r = std::panic::catch_unwind(|| ns.run_in(|| panic!("inside")));
    assert!(r.is_err());

    drop(ns);
    assert!(!netns::list().unwrap().contains(&name));
    assert!(matches!(Netns::open(&name), Err(NetnsError::NotFound(_))));
}

#[test]
fn netns_rejects_bad_names_and_deletes_explicitly() {
    if !is_root() {
        return;
    }
    for bad in ["", ".", "..", "a/b", &"x".repeat(65)] {
        assert!(
            matches!(Netns::create(bad), Err(NetnsError::InvalidName(_))),
            "{bad:?}"
        );
    }
    let name = ns_name("del");
    Netns::create(&name).unwrap().delete().unwrap();
    assert!(!netns::list().unwrap().contains(&name));
}

#[test]
fn netlink_link_address_route_ops() {
    if !is_root() {
        return;
    }
    let ns = Netns::create(&ns_name("nl")).unwrap();
    let mut nl = Netlink::open_in(&ns).unwrap();
    nl.set_up("lo").unwrap();

    nl.add_veth("va", "vb", None).unwrap();
    assert!(nl.link_exists("va").unwrap() && nl.link_exists("vb").unwrap());
    let dup = nl.add_veth("va", "vc", None);
    assert!(
        matches!(&dup, Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EEXIST)),
        "{dup:?}"
    );
    assert!(matches!(
        nl.link_index("nope0"),
        Err(NetlinkError::NoSuchLink(_))
    ));
    assert!(matches!(
        nl.link_index("way-too-long-name"),
        Err(NetlinkError::InvalidName(_))
    ));

    // A fresh veth offloads; the legacy ethtool ioctls turn that off.
    let before = natgate::platform::ethtool::offloads(&ns, "va").unwrap();
    assert!(before.tx_checksum && before.tso && before.gso, "{before:?}");
    natgate::platform::ethtool::disable_offloads(&ns, "va").unwrap();
    let after = natgate::platform::ethtool::offloads(&ns, "va").unwrap();
    assert!(
        !after.tx_checksum && !after.tso && !after.gso && !after.gro,
        "{after:?}"
    );

    nl.set_mtu("va", 1400).unwrap();
    nl.set_tx_queue_len("va", 2048).unwrap();
    nl.set_up("va").unwrap();
    nl.set_up("vb").unwrap();
    let link = ip_in(&ns, &["link", "show", "va"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    assert!(link.contains("qlen 2048"), "{link}");
    nl.set_down("va").unwrap();
    assert!(!ip_in(&ns, &["link", "show", "va"]).contains(",UP"));
    nl.set_up("va").unwrap();

    let a = Ipv4Addr::new(192, 0, 2, 1);
    nl.add_addr_v4("va", a, 24).unwrap();
    let addrs = ip_in(&ns, &["-4", "addr", "show", "va"]);
    assert!(
        addrs.contains("inet 192.0.2.1/24 brd 192.0.2.255"),
        "{addrs}"
    );

    let r1 = RouteV4::via(
        Ipv4Addr::new(198, 51, 100, 0),
        28,
        Ipv4Addr::new(192, 0, 2, 254),
    );
    let r2 = RouteV4::dev(Ipv4Addr::new(203, 0, 113, 20), 32, "va").with_mtu(1280);
    let r3 = RouteV4::default_via(Ipv4Addr::new(192, 0, 2, 254));
    for r in [&r1, &r2, &r3] {
        nl.add_route_v4(r).unwrap();
    }
    let routes = ip_in(&ns, &["-4", "route", "show"]);
    assert!(
        routes.contains("198.51.100.0/28 via 192.0.2.254 dev va"),
        "{routes}"
    );
    assert!(
        routes.contains("203.0.113.20 dev va") && routes.contains("mtu 1280"),
        "{routes}"
    );
    assert!(
        routes.contains("default via 192.0.2.254 dev va"),
        "{routes}"
    );
    for r in [&r1, &r2, &r3] {
        nl.del_route_v4(r).unwrap();
    }
    let routes = ip_in(&ns, &["-4", "route", "show"]);
    assert!(
        !routes.contains("198.51.100")
            && !routes.contains("203.0.113")
            && !routes.contains("default"),
        "{routes}"
    );

    nl.del_addr_v4("va", a, 24).unwrap();
    assert!(!ip_in(&ns, &["-4", "addr", "show", "va"]).contains("192.0.2.1"));

    nl.add_bridge("br0").unwrap();
    nl.set_master("vb", "br0").unwrap();
    assert!(ip_in(&ns, &["link", "show", "vb"]).contains("master br0"));

    nl.add_proxy_neigh_v4("va", Ipv4Addr::new(198, 51, 100, 3))
        .unwrap();
    let proxies = ip_in(&ns, &["neigh", "show", "proxy"]);
    assert!(proxies.contains("198.51.100.3 dev va"), "{proxies}");
    nl.del_proxy_neigh_v4("va", Ipv4Addr::new(198, 51, 100, 3))
        .unwrap();
    assert!(!ip_in(&ns, &["neigh", "show", "proxy"]).contains("198.51.100.3"));

    // move_to_netns: one end of a veth into another namespace.
    let other = Netns::create(&ns_name("nl2")).unwrap();
    nl.add_veth("vm", "vn", None).unwrap();
    nl.move_to_netns("vn", other.fd()).unwrap();
    assert!(!nl.link_exists("vn").unwrap());
    assert!(Netlink::open_in(&other).unwrap().link_exists("vn").unwrap());

    nl.del_link("va").unwrap();
    assert!(!nl.link_exists("va").unwrap());
    assert!(
        !nl.link_exists("vb").unwrap(),
        "deleting one veth end deletes both"
    );
}

#[test]
fn sysctl_is_per_namespace() {
    if !is_root() {
        return;
    }
    let a = Netns::create(&ns_name("sa")).unwrap();
    let b = Netns::create(&ns_name("sb")).unwrap();
    sysctl::set_ip_forward(&a, true).unwrap();
    assert_eq!(sysctl::get(&a, "net/ipv4/ip_forward").unwrap(), "1");
    assert_eq!(sysctl::get(&b, "net/ipv4/ip_forward").unwrap(), "0");
    sysctl::set_proxy_arp(&b, "lo", true).unwrap();
    assert_eq!(sysctl::get(&b, "net/ipv4/conf/lo/proxy_arp").unwrap(), "1");
    assert_eq!(sysctl::get(&a, "net/ipv4/conf/lo/proxy_arp").unwrap(), "0");
    assert!(matches!(
        sysctl::set(&a, "kernel/hostname", "x"),
        Err(sysctl::SysctlError::InvalidKey(_))
    ));
}

/// IPv4 + UDP packet with valid checksums.
fn udp_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    fn sum(data: &[u8], mut acc: u32) -> u32 {
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    }
    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    let c = fold(sum(&p, 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let c = fold(sum(&udp, sum(&pseudo, 0)));
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

/// The shape of natgate's datapath in miniature: a "gateway" namespace
/// answers ARP for a pool address by proxy, routes the pool into a TUN
/// device, and sends what is written to the TUN back out.
#[test]
fn proxy_arp_into_tun_and_back() {
    if !is_root() {
        return;
    }
    let gw = Netns::create(&ns_name("tgw")).unwrap();
    let host = Netns::create(&ns_name("th")).unwrap();
    let gw_addr = Ipv4Addr::new(192, 0, 2, 1);
    let host_addr = Ipv4Addr::new(192, 0, 2, 2);
    let pool = Ipv4Addr::new(198, 51, 100, 5);

    let mut g = Netlink::open_in(&gw).unwrap();
    let mut h = Netlink::open_in(&host).unwrap();
    g.add_veth("wan0", "eth0", Some(host.fd())).unwrap();
    natgate::platform::ethtool::disable_offloads(&gw, "wan0").unwrap();
    natgate::platform::ethtool::disable_offloads(&host, "eth0").unwrap();
    g.add_addr_v4("wan0", gw_addr, 24).unwrap();
    g.set_up("wan0").unwrap();
    h.add_addr_v4("eth0", host_addr, 24).unwrap();
    h.set_up("eth0").unwrap();
    // The host thinks the pool is on its link, so it ARPs for it.
    h.add_route_v4(&RouteV4::dev(Ipv4Addr::new(198, 51, 100, 0), 28, "eth0"))
        .unwrap();

    // Two queues, nonblocking: both empty for now.
    let tun = gw
        .run_in(|| {
            Tun::open(&TunConfig {
                name: "ngtun0".into(),
                queues: 2,
                nonblocking: true,
            })
        })
        .unwrap()
        .unwrap();
    assert_eq!(tun.name(), "ngtun0");
    assert_eq!(tun.queues().len(), 2);
    let mut buf = [0u8; 2048];
    for q in tun.queues() {
        let e = q.recv(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
    g.set_up("ngtun0").unwrap();
    g.add_route_v4(&RouteV4::dev(Ipv4Addr::new(198, 51, 100, 0), 28, "ngtun0"))
        .unwrap();
    sysctl::set_ip_forward(&gw, true).unwrap();
    g.add_proxy_neigh_v4("wan0", pool).unwrap();
    // Proxy answers to broadcast ARP wait up to proxy_delay (0.8 s) otherwise.
    sysctl::set(&gw, "net/ipv4/neigh/wan0/proxy_delay", "0").unwrap();

    // host -> pool: ARP answered by proxy, packet forwarded into the TUN.
    let sock = host
        .run_in(|| UdpSocket::bind((host_addr, 0)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let host_ep = match sock.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    let pool_ep = SocketAddrV4::new(pool, 3478);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = None;
    // Resend now and then: the first datagram may wait on ARP.
    for i in 0..300 {
        if i % 50 == 0 {
            sock.send_to(b"to-pool", pool_ep).unwrap();
        }
        for q in tun.queues() {
            match q.recv(&mut buf) {
                Ok(n) if n >= 28 && buf[9] == 17 && buf[16..20] == pool.octets() => {
                    got = Some(buf[..n].to_vec())
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("tun read: {e}"),
            }
        }
        if got.is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let pkt = got.expect("no packet for the pool address came out of the TUN");
    assert_eq!(pkt[12..16], host_addr.octets());
    assert_eq!(&pkt[28..], b"to-pool");
    let neigh = ip_in(&host, &["neigh", "show", &pool.to_string()]);
    assert!(
        neigh.contains("lladdr"),
        "ARP for the pool address not answered: {neigh}"
    );

    // pool -> host: a packet written to the TUN is routed out of wan0.
    let reply = udp_packet(pool_ep, host_ep, b"from-pool");
    assert_eq!(tun.queues()[0].send(&reply).unwrap(), reply.len());
    let mut rbuf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut rbuf).unwrap();
    assert_eq!(&rbuf[..n], b"from-pool");
    assert_eq!(from, std::net::SocketAddr::V4(pool_ep));

    // The device goes with its last queue. Not always at once: a test
    // running `ip` in parallel forks, and the child holds a copy of the fd
    // until its exec closes it (O_CLOEXEC), so wait a little, bounded.
    drop(tun);
    let deadline = Instant::now() + Duration::from_secs(3);
    while g.link_exists("ngtun0").unwrap() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!g.link_exists("ngtun0").unwrap());
}
