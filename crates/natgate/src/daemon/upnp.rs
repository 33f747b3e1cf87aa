//! UPnP IGD's I/O: the SSDP socket (UDP 1900 on the inside interface, in the group
//! 239.255.255.250 there only) and the HTTP server of the description and control URLs (TCP
//! on the inside address). Each request goes, as a command, to the worker that owns the
//! client, whose `PortMapServer` reads it and decides the answer against its engine; these
//! threads only move bytes. Nothing here parses a request beyond finding where an HTTP
//! request ends (the core's `http::parse`).
//!
//! The HTTP server is written here on `std::net` rather than taken from a crate: it reads
//! one small request per connection and writes one answer, which is a few lines, and the
//! small synchronous crates (`tiny_http`) bring their own thread pool and a request type
//! that would be copied into the core's anyway. Like the metrics server it spawns a thread
//! per connection, at most [`MAX_CONNECTIONS`] at once, each bounded by [`READ_DEADLINE`].
//!
//! Both sockets are bound to the inside interface (`SO_BINDTODEVICE`): a WAN host must not
//! reach them even by claiming a subscriber's address.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natgate_core::Endpoint;
use natgate_core::portmap::upnp::{Device, http, ssdp};
use natgate_core::shard::Steering;

use super::portmap::bind_to_device;
use super::{Command, DaemonError, REQUEST_TIMEOUT, worker::MAX_WAIT};

/// Which kind of UPnP request a command carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An SSDP datagram.
    Ssdp,
    /// An HTTP request to the description or control URLs.
    Http,
}

/// Most HTTP connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send its whole request.
pub const READ_DEADLINE: Duration = Duration::from_secs(2);

/// Opens the SSDP socket and the HTTP server on `inside` (the address of interface
/// `inside_interface`), port `http_port`, and serves both until `stop` is set.
pub fn spawn(
    inside: Ipv4Addr,
    inside_interface: &str,
    http_port: u16,
    workers: Vec<Sender<Command>>,
    steering: Arc<Steering>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<JoinHandle<()>>, DaemonError> {
    let device = Device {
        address: inside,
        http_port,
    };
    let ssdp = ssdp_socket(inside, inside_interface)
        .map_err(|e| DaemonError::PortMap(format!("SSDP on {inside_interface}: {e}")))?;
    let listener = TcpListener::bind(SocketAddrV4::new(inside, http_port))
        .and_then(|l| bind_to_device(&l, inside_interface).map(|()| l))
        .map_err(|e| DaemonError::PortMap(format!("UPnP HTTP on {inside}:{http_port}: {e}")))?;
    let thread = |name: &str| std::thread::Builder::new().name(name.into());
    let (w, st, s) = (workers.clone(), steering.clone(), stop.clone());
    let ssdp = thread("natgate-ssdp")
        .spawn(move || serve_ssdp(&ssdp, &device, &w, &st, &s))
        .map_err(|e| DaemonError::Thread(e.to_string()))?;
    let http = thread("natgate-upnp-http")
        .spawn(move || serve_http(&listener, &device, &workers, &steering, &stop))
        .map_err(|e| DaemonError::Thread(e.to_string()))?;
    tracing::info!(location = %device.location(), "UPnP IGD serving");
    Ok(vec![ssdp, http])
}

/// UDP 1900 on every address (multicast arrives for the group, not the inside address), but
/// only from the inside interface, joined to SSDP's group there only. SO_REUSEADDR lets it
/// share the port with another SSDP listener on the host.
fn ssdp_socket(inside: Ipv4Addr, interface: &str) -> std::io::Result<UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
    let fd = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    let socket = UdpSocket::from(fd);
    bind_to_device(&socket, interface)?;
    bind(
        socket.as_fd(),
        &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, ssdp::MULTICAST.port()),
    )?;
    socket.join_multicast_v4(ssdp::MULTICAST.ip(), &inside)?;
    socket.set_read_timeout(Some(MAX_WAIT))?;
    Ok(socket)
}

/// Hands `request` from `client` to the worker that owns the client; its answers, none if
/// the worker is gone or late.
fn ask(
    workers: &[Sender<Command>],
    steering: &Steering,
    device: &Device,
    client: Endpoint,
    kind: Kind,
    request: Vec<u8>,
) -> Option<Vec<Vec<u8>>> {
    let worker = workers.get(steering.subscriber_worker(client.addr))?;
    let (reply, rx) = mpsc::sync_channel(1);
    worker
        .send(Command::Upnp {
            client,
            kind,
            request,
            device: *device,
            reply,
        })
        .ok()?;
    rx.recv_timeout(REQUEST_TIMEOUT).ok()
}

fn serve_ssdp(
    socket: &UdpSocket,
    device: &Device,
    workers: &[Sender<Command>],
    steering: &Steering,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; ssdp::MAX_MESSAGE];
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                tracing::warn!("SSDP: receive: {e}");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        let client = Endpoint::new(*from.ip(), from.port());
        let request = buf[..len].to_vec();
        for answer in
            ask(workers, steering, device, client, Kind::Ssdp, request).unwrap_or_default()
        {
            if let Err(e) = socket.send_to(&answer, from) {
                tracing::warn!(to = %from, "SSDP: send: {e}");
            }
        }
    }
}

fn serve_http(
    listener: &TcpListener,
    device: &Device,
    workers: &[Sender<Command>],
    steering: &Arc<Steering>,
    stop: &AtomicBool,
) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let wait = Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(MAX_WAIT.subsec_nanos()),
    };
    let mut serving: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        serving.retain(|h| !h.is_finished());
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        if !matches!(poll(&mut fds, Some(&wait)), Ok(n) if n > 0) {
            continue;
        }
        if serving.len() >= MAX_CONNECTIONS {
            // Leave it queued until one ends.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let (stream, from) = match listener.accept() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("UPnP HTTP: accept: {e}");
                continue;
            }
        };
        let SocketAddr::V4(from) = from else {
            continue;
        };
        let (w, st, d) = (workers.to_vec(), steering.clone(), *device);
        match std::thread::Builder::new()
            .name("natgate-upnp-conn".into())
            .spawn(move || serve_connection(stream, from, &d, &w, &st))
        {
            Ok(h) => serving.push(h),
            Err(e) => tracing::warn!("UPnP HTTP: no thread for {from}: {e}"),
        }
    }
    // Each ends within its read deadline and the worker's answer time.
    for h in serving {
        let _ = h.join();
    }
}

/// Reads one request (until it is whole, refused by the parser, too long or late), has the
/// worker answer it, writes the answer and closes.
fn serve_connection(
    mut stream: TcpStream,
    from: SocketAddrV4,
    device: &Device,
    workers: &[Sender<Command>],
    steering: &Steering,
) {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut request = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
        // Whole, or never to be: either way the worker answers it (a 400 for the latter).
        if !matches!(http::parse(&request), Ok(None)) || request.len() > http::MAX_REQUEST {
            break;
        }
    }
    if request.is_empty() {
        return;
    }
    let client = Endpoint::new(*from.ip(), from.port());
    if let Some(answer) = ask(workers, steering, device, client, Kind::Http, request)
        .and_then(|a| a.into_iter().next())
    {
        let _ = stream.set_write_timeout(Some(READ_DEADLINE));
        if let Err(e) = stream.write_all(&answer) {
            tracing::debug!(to = %from, "UPnP HTTP: send: {e}");
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}
