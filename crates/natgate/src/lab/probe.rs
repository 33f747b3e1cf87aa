//! Reachability probes for lab tests: ICMP echo, one UDP datagram, a UDP
//! echo, one TCP connection, each between namespaces, each bounded by a timeout.
//!
//! The UDP and TCP probes return the source address the receiver saw, which
//! is what a NAT test wants to look at.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use natgate_core::wire::icmp::IcmpPacket;
use natgate_core::wire::ipv4::Ipv4Packet;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, ipproto, sockopt};

use crate::platform::netns::{Netns, NetnsError};

/// Most datagrams inspected while waiting for one answer.
const MAX_READS: usize = 10_000;

/// Errors from a probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No (matching) answer before the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A socket call failed; `what` says which.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ProbeError {
    move |source| ProbeError::Io { what, source }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends one ICMP echo request from `ns` to `dst` and waits for the matching
/// reply; returns the round-trip time. Uses a raw socket (needs root).
pub fn ping(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> Result<Duration, ProbeError> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(1);
    // Raw ICMP sockets see every echo reply in the namespace; the id (unique
    // in this process) and seq pick out ours.
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16);
    let seq: u16 = 1;
    ns.run_in(|| ping_here(dst, id, seq, timeout))?
}

fn ping_here(dst: Ipv4Addr, id: u16, seq: u16, timeout: Duration) -> Result<Duration, ProbeError> {
    let sock = rustix::net::socket(AddressFamily::INET, SocketType::RAW, Some(ipproto::ICMP))
        .map_err(|e| io_err("raw ICMP socket")(e.into()))?;
    let request = echo_request(id, seq, b"natgate-probe-ping");
    let start = Instant::now();
    let deadline = start + timeout;
    rustix::net::sendto(
        &sock,
        &request,
        SendFlags::empty(),
        &SocketAddrV4::new(dst, 0),
    )
    .map_err(|e| io_err("sending echo request")(e.into()))?;
    let mut buf = [0u8; 2048];
    for _ in 0..MAX_READS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sockopt::set_socket_timeout(&sock, sockopt::Timeout::Recv, Some(left))
            .map_err(|e| io_err("SO_RCVTIMEO")(e.into()))?;
        let n = match rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty()) {
            Ok((_, n)) => n,
            Err(e) => {
                let e: io::Error = e.into();
                if is_timeout(&e) {
                    break;
                }
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err("receiving echo reply")(e));
            }
        };
        if is_echo_reply(&buf[..n.min(buf.len())], dst, id, seq) {
            return Ok(start.elapsed());
        }
    }
    Err(ProbeError::Timeout(timeout))
}

/// An ICMP echo request (RFC 792) with a valid checksum, written with the engine's wire views.
fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    if let Ok(mut icmp) = IcmpPacket::new_checked(&mut p[..]) {
        icmp.fill_checksum();
    }
    p
}

/// Whether `pkt` (IPv4 header + ICMP, as a raw socket delivers it) is the echo reply from
/// `from` with our `id` and `seq`, read with the engine's wire views.
fn is_echo_reply(pkt: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
        return false;
    };
    let Ok(icmp) = IcmpPacket::new_checked(ip.payload()) else {
        return false;
    };
    ip.src_addr() == from
        && icmp.msg_type() == 0
        && icmp.code() == 0
        && icmp.echo_ident() == id
        && icmp.echo_seq() == seq
}

/// Binds a UDP socket to `dst` in `dst_ns`, sends one datagram to it from an
/// ephemeral port in `src_ns`, and returns the source address the receiver
/// saw.
pub fn udp_probe(
    src_ns: &Netns,
    dst_ns: &Netns,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<SocketAddr, ProbeError> {
    let rx = dst_ns
        .run_in(|| UdpSocket::bind(dst))?
        .map_err(io_err("binding the UDP receiver"))?;
    let payload = b"natgate-probe-udp";
    src_ns
        .run_in(|| -> io::Result<()> {
            let tx = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            tx.send_to(payload, dst)?;
            Ok(())
        })?
        .map_err(io_err("sending the UDP datagram"))?;
    let deadline = Instant::now() + timeout;
    recv_matching(&rx, payload, deadline, |_| true)?.ok_or(ProbeError::Timeout(timeout))
}

/// A UDP round trip: a server bound to `dst` in `dst_ns` echoes one datagram
/// sent from an ephemeral port in `src_ns` back to wherever it came from; the
/// sender waits for the echo from `dst`. Returns the source address the
/// server saw. Both directions must work, as through a NAT.
pub fn udp_echo(
    src_ns: &Netns,
    dst_ns: &Netns,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<SocketAddr, ProbeError> {
    let server = dst_ns
        .run_in(|| UdpSocket::bind(dst))?
        .map_err(io_err("binding the UDP server"))?;
    let client = src_ns
        .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?
        .map_err(io_err("binding the UDP client"))?;
    let payload = b"natgate-probe-echo";
    client
        .send_to(payload, dst)
        .map_err(io_err("sending the UDP datagram"))?;
    let deadline = Instant::now() + timeout;
    let seen =
        recv_matching(&server, payload, deadline, |_| true)?.ok_or(ProbeError::Timeout(timeout))?;
    server
        .send_to(payload, seen)
        .map_err(io_err("echoing the UDP datagram"))?;
    recv_matching(&client, payload, deadline, |from| {
        from == SocketAddr::V4(dst)
    })?
    .ok_or(ProbeError::Timeout(timeout))?;
    Ok(seen)
}

/// Receives until a datagram equal to `payload` from a source `accept`s
/// arrives (its source), or `deadline` passes (`None`).
fn recv_matching(
    sock: &UdpSocket,
    payload: &[u8],
    deadline: Instant,
    accept: impl Fn(SocketAddr) -> bool,
) -> Result<Option<SocketAddr>, ProbeError> {
    let mut buf = [0u8; 2048];
    for _ in 0..MAX_READS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))
            .map_err(io_err("SO_RCVTIMEO"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if &buf[..n] == payload && accept(from) => return Ok(Some(from)),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("receiving a UDP datagram")(e)),
        }
    }
    Ok(None)
}

/// Listens on `dst` in `dst_ns`, connects to it from `src_ns`, exchanges a
/// few bytes, and returns the peer address the listener saw.
pub fn tcp_probe(
    src_ns: &Netns,
    dst_ns: &Netns,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Result<SocketAddr, ProbeError> {
    let listener = dst_ns
        .run_in(|| TcpListener::bind(dst))?
        .map_err(io_err("binding the TCP listener"))?;
    let deadline = Instant::now() + timeout;
    // The kernel completes the handshake into the backlog, so connecting
    // before accepting works on one thread.
    let mut client = src_ns
        .run_in(|| TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout))?
        .map_err(|e| match is_timeout(&e) {
            true => ProbeError::Timeout(timeout),
            false => io_err("connecting")(e),
        })?;
    client
        .set_write_timeout(Some(timeout))
        .map_err(io_err("SO_SNDTIMEO"))?;
    client
        .write_all(b"hi")
        .map_err(io_err("writing to the TCP connection"))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("O_NONBLOCK"))?;
    for _ in 0..MAX_READS {
        match listener.accept() {
            Ok((mut conn, peer)) => {
                conn.set_nonblocking(false).map_err(io_err("O_NONBLOCK"))?;
                let left = deadline.saturating_duration_since(Instant::now());
                conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .map_err(io_err("SO_RCVTIMEO"))?;
                let mut got = [0u8; 2];
                conn.read_exact(&mut got)
                    .map_err(io_err("reading from the TCP connection"))?;
                return Ok(peer);
            }
            Err(e) if is_timeout(&e) => {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("accepting")(e)),
        }
    }
    Err(ProbeError::Timeout(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgate_core::wire::checksum::checksum;

    /// Echo request id 0x1234, seq 1, no payload: by hand, the checksum is
    /// !(0x0800 + 0x1234 + 0x0001) = 0xe5ca.
    #[test]
    fn echo_request_checksum() {
        let p = echo_request(0x1234, 1, b"");
        assert_eq!(p, [8, 0, 0xe5, 0xca, 0x12, 0x34, 0x00, 0x01]);
        assert_eq!(checksum(&p), 0);
        let odd = echo_request(7, 9, b"abc");
        assert_eq!(checksum(&odd), 0);
    }

    #[test]
    fn echo_reply_matching() {
        let mut pkt = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 254, 192, 0, 2, 1,
        ];
        pkt.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let from = Ipv4Addr::new(192, 0, 2, 254);
        assert!(is_echo_reply(&pkt, from, 0x1234, 1));
        assert!(!is_echo_reply(&pkt, from, 0x1235, 1));
        assert!(!is_echo_reply(&pkt, Ipv4Addr::new(192, 0, 2, 1), 0x1234, 1));
        assert!(!is_echo_reply(&pkt[..25], from, 0x1234, 1));
        pkt[20] = 8;
        assert!(!is_echo_reply(&pkt, from, 0x1234, 1));
    }
}
