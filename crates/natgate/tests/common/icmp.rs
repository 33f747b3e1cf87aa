//! ICMP errors as a subscriber's socket sees them (IP_RECVERR: type, code, the offender and the
//! original destination, which the kernel matches only if the quoted header was translated
//! back), and the TTL a datagram arrived with (IP_RECVTTL).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::udp_socket;

#[derive(Debug, PartialEq, Eq)]
pub struct IcmpError {
    pub icmp_type: u8,
    pub code: u8,
    pub offender: Ipv4Addr,
    pub original_dst: SocketAddrV4,
}

pub fn setsockopt_int(sock: &UdpSocket, level: i32, name: i32, v: i32) {
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
pub fn recv_error(sock: &UdpSocket, timeout: Duration) -> Option<IcmpError> {
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

pub fn subscriber_socket(topo: &natgate::lab::topology::Topology) -> UdpSocket {
    let s = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    setsockopt_int(&s, libc::SOL_IP, libc::IP_RECVERR, 1);
    s
}

/// Reads one datagram and the TTL it arrived with (the socket needs IP_RECVTTL), waiting up to
/// `timeout`.
pub fn recv_with_ttl(sock: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, u8)> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut data = [0u8; 2048];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer below points into a live local buffer
    // of the stated length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: msg describes valid buffers (above).
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return None;
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg points at a cmsghdr inside `control`.
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_TTL {
            // SAFETY: an IP_TTL cmsg holds an int.
            let ttl = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>()) };
            return Some((data[..n as usize].to_vec(), ttl as u8));
        }
        // SAFETY: walking the cmsg list the kernel wrote.
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    None
}
