//! ICMP errors through `natgate run` (RFC 5508 REQ-4/5, RFC 4787 REQ-12): an error about a
//! translated packet reaches the subscriber's socket, which the kernel finds only if the
//! embedded header was translated back (addresses and ports). Checked with IP_RECVERR, which
//! reports the error's type and code, its sender (the offender) and the original destination.
//! Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{Gateway, T, config, is_root, topology, udp_socket};
use natgate::topology::addr;

#[derive(Debug, PartialEq, Eq)]
struct IcmpError {
    icmp_type: u8,
    code: u8,
    offender: Ipv4Addr,
    original_dst: SocketAddrV4,
}

fn setsockopt_int(sock: &UdpSocket, level: i32, name: i32, v: i32) {
    // SAFETY: a valid fd and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const v).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads one error from the socket's error queue, waiting up to `timeout`.
fn recv_error(sock: &UdpSocket, timeout: Duration) -> Option<IcmpError> {
    let deadline = Instant::now() + timeout;
    let mut data = [0u8; 2048];
    let mut control = [0u64; 64];
    loop {
        // SAFETY: zeroed sockaddr_in and msghdr are valid; every pointer below points into
        // a live local buffer of the stated length.
        let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut name).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: msg describes valid buffers (above).
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &raw mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs.
            let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
            while !cmsg.is_null() {
                // SAFETY: cmsg points at a cmsghdr inside `control`.
                let c = unsafe { &*cmsg };
                if c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR {
                    // SAFETY: an IP_RECVERR cmsg holds a sock_extended_err followed by the
                    // offender's sockaddr_in (SO_EE_OFFENDER).
                    let (ee, off) = unsafe {
                        let p = libc::CMSG_DATA(cmsg);
                        let ee = std::ptr::read_unaligned(p.cast::<libc::sock_extended_err>());
                        let off = std::ptr::read_unaligned(
                            p.add(size_of::<libc::sock_extended_err>())
                                .cast::<libc::sockaddr_in>(),
                        );
                        (ee, off)
                    };
                    assert_eq!(ee.ee_origin, libc::SO_EE_ORIGIN_ICMP);
                    return Some(IcmpError {
                        icmp_type: ee.ee_type,
                        code: ee.ee_code,
                        offender: Ipv4Addr::from(u32::from_be(off.sin_addr.s_addr)),
                        original_dst: SocketAddrV4::new(
                            Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
                            u16::from_be(name.sin_port),
                        ),
                    });
                }
                // SAFETY: walking the cmsg list the kernel wrote.
                cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn subscriber_socket(topo: &natgate::topology::Topology) -> UdpSocket {
    let s = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    setsockopt_int(&s, libc::SOL_IP, libc::IP_RECVERR, 1);
    s
}

/// RFC 5508 REQ-4 / RFC 4787 REQ-12: port unreachable from a WAN host for a closed port reaches
/// the subscriber with the embedded header translated back.
#[test]
fn rfc5508_req4_port_unreachable_reaches_subscriber() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let s = subscriber_socket(&topo);
    let dst = SocketAddrV4::new(addr::WAN1, 9);
    s.send_to(b"anyone?", dst).unwrap();
    let e = recv_error(&s, T).expect("ICMP port unreachable reached the subscriber");
    assert_eq!(
        e,
        IcmpError {
            icmp_type: 3,
            code: 3,
            offender: addr::WAN1,
            original_dst: dst
        }
    );
}

/// RFC 5508 REQ-4 with a third-party router: TTL 3 expires at the upstream router (the
/// kernel decrements twice in the gateway, into and out of the TUN), whose time exceeded
/// reaches the subscriber translated back.
#[test]
fn rfc5508_req4_ttl_expiry_beyond_gateway_reaches_subscriber() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let s = subscriber_socket(&topo);
    setsockopt_int(&s, libc::SOL_IP, libc::IP_TTL, 3);
    let dst = SocketAddrV4::new(addr::WAN1, 4000);
    s.send_to(b"far away", dst).unwrap();
    let e = recv_error(&s, T).expect("time exceeded reached the subscriber");
    assert_eq!(
        e,
        IcmpError {
            icmp_type: 11,
            code: 0,
            offender: addr::UPSTREAM_DOWN,
            original_dst: dst
        }
    );
}
