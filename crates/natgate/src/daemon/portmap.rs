//! The port-mapping service's I/O: one UDP socket on the inside address, port 5351 (PCP and
//! NAT-PMP share it, RFC 6887 section 9). Each datagram goes, as a command, to the worker that
//! owns the subscriber it is about (the sender, or a PCP THIRD_PARTY;
//! [`natgate_core::portmap::subject`] tells), which owns its mappings; that worker's
//! [`PortMapServer`](natgate_core::portmap::PortMapServer) decides the answer against its
//! engine, and this thread sends it back. Nothing here parses a request: the core does.
//!
//! Listening only on the inside address keeps requests from the outside away (a subscriber
//! asks for its own ports; nobody outside may); the engine's inside networks decide which
//! senders are clients.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;

use natgate_core::Endpoint;
use natgate_core::portmap::PortMapServer;
use natgate_core::portmap::wire::pcp;
use natgate_core::shard::Steering;

use super::{Command, DaemonError, REQUEST_TIMEOUT, worker::MAX_WAIT};

/// The server port of PCP and NAT-PMP (RFC 6887 section 19.1, RFC 6886 section 3).
pub const SERVER_PORT: u16 = 5351;
/// Where PCP's unsolicited ANNOUNCE goes: all hosts, the client port (RFC 6887 section 14.1.3).
pub const ANNOUNCE_TO: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 0, 0, 1), 5350);

/// Binds the server socket on `inside`, sends the start-up ANNOUNCE when PCP is on, and
/// serves until `stop` is set.
pub fn spawn(
    inside: Ipv4Addr,
    inside_interface: &str,
    pcp_on: bool,
    workers: Vec<Sender<Command>>,
    steering: Arc<Steering>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, DaemonError> {
    let bind = |e: std::io::Error| DaemonError::PortMap(format!("{inside}:{SERVER_PORT}: {e}"));
    let socket = UdpSocket::bind(SocketAddrV4::new(inside, SERVER_PORT)).map_err(bind)?;
    // The host delivers a datagram for the inside address whichever interface it came in on,
    // and a WAN host could claim a subscriber's source address: only what arrives on the
    // inside interface is served.
    bind_to_device(&socket, inside_interface).map_err(bind)?;
    socket.set_read_timeout(Some(MAX_WAIT)).map_err(bind)?;
    if pcp_on {
        announce(&socket, inside);
    }
    std::thread::Builder::new()
        .name("natgate-portmap".into())
        .spawn(move || serve(&socket, &workers, &steering, &stop))
        .map_err(|e| DaemonError::Thread(e.to_string()))
}

/// RFC 6887 section 14.1.3: a server that starts (a new epoch) tells the inside, so that
/// clients whose mappings it lost renew them at once. A failure is logged, not fatal: clients
/// still renew when their mappings' lifetimes run down.
/// `SO_BINDTODEVICE`: the socket receives only what arrives on interface `name`.
pub(super) fn bind_to_device(
    socket: &impl std::os::fd::AsRawFd,
    name: &str,
) -> std::io::Result<()> {
    // SAFETY: the name's bytes are read for their length only; the fd is the socket's own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn announce(socket: &UdpSocket, inside: Ipv4Addr) {
    let mut out = [0u8; pcp::MAX_MESSAGE];
    let n = PortMapServer::announcement(0, &mut out);
    let sent = rustix::net::sockopt::set_ip_multicast_if(socket, &inside)
        .map_err(std::io::Error::from)
        .and_then(|()| socket.send_to(&out[..n], ANNOUNCE_TO));
    match sent {
        Ok(_) => tracing::info!(to = %ANNOUNCE_TO, "PCP ANNOUNCE sent"),
        Err(e) => tracing::warn!(to = %ANNOUNCE_TO, "PCP ANNOUNCE not sent: {e}"),
    }
}

fn serve(socket: &UdpSocket, workers: &[Sender<Command>], steering: &Steering, stop: &AtomicBool) {
    let mut buf = [0u8; pcp::MAX_MESSAGE + 1];
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                tracing::warn!("port mapping: receive: {e}");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        let client = Endpoint::new(*from.ip(), from.port());
        let subject = natgate_core::portmap::subject(&buf[..len], client.addr);
        let Some(worker) = workers.get(steering.subscriber_worker(subject)) else {
            continue;
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let cmd = Command::PortMap {
            client,
            request: buf[..len].to_vec(),
            reply,
        };
        if worker.send(cmd).is_err() {
            return;
        }
        // No answer in time, or a request the server drops: nothing goes back.
        if let Ok(Some(answer)) = rx.recv_timeout(REQUEST_TIMEOUT)
            && let Err(e) = socket.send_to(&answer, from)
        {
            tracing::warn!(to = %from, "port mapping: send: {e}");
        }
    }
}
