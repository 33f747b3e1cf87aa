//! Packet captures for end-to-end tests: an AF_PACKET socket in a namespace sees every IPv4
//! packet arriving there, before any reverse-path check or socket look-up could hide it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An AF_PACKET socket in `ns` that sees every IPv4 packet arriving there, before any
/// reverse-path check or socket look-up could hide it.
pub fn capture(ns: &natgate::platform::netns::Netns) -> OwnedFd {
    ns.run_in(|| {
        let proto = i32::from((libc::ETH_P_IP as u16).to_be());
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let size: libc::c_int = 16 << 20;
        // SAFETY: setsockopt with a c_int option of the right length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        fd
    })
    .unwrap()
}

/// The IPv4 packets `fd` captured so far (at most a million), oldest first.
pub fn captured(fd: &OwnedFd) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    for _ in 0..1_000_000 {
        // SAFETY: recv into a buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { break };
        out.push(buf[..n].to_vec());
    }
    out
}
