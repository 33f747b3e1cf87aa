//! A tiny HTTP/1.1 responder and client for the end-to-end tests of static rules and virtual
//! servers: real TCP connections through natgate, from sockets made in the test's namespaces.
//!
//! The responder answers every request with `NAME PEER` (its name and the client address it
//! saw) and keeps connections open (keep-alive), so one connection can outlive a drain or a
//! removal. [`HttpServer::kill`] closes the listener (new connections are refused, as a dead
//! server's are) while established connections go on; dropping the server ends everything.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natgate::platform::netns::Netns;

/// How often blocked threads look at their stop flag.
const TICK: Duration = Duration::from_millis(20);

/// Most connections one responder serves in its lifetime (bounds the threads it starts).
const MAX_CONNECTIONS: usize = 2000;

/// A responder listening in a namespace.
pub struct HttpServer {
    listening: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `bind` in `ns`; answers `name PEER`.
    pub fn start(ns: &Netns, bind: SocketAddrV4, name: &str) -> Self {
        let listener = super::bind_in(ns, || TcpListener::bind(bind));
        listener.set_nonblocking(true).unwrap();
        let listening = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2, name) = (listening.clone(), stop.clone(), name.to_owned());
        let acceptor = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while l2.load(Ordering::Relaxed) && conns.len() < MAX_CONNECTIONS {
                // Wait for a connection at most a tick, so the flag is seen; accept at once when
                // one comes.
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the listener, which outlives the call.
                unsafe { libc::poll(&mut pfd, 1, TICK.as_millis() as i32) };
                match listener.accept() {
                    Ok((s, peer)) => {
                        let (stop, name) = (s2.clone(), name.clone());
                        conns.push(std::thread::spawn(move || serve(s, peer, &name, &stop)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            // The listener closes here: new connections are refused from now on.
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        HttpServer {
            listening,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Stops listening: the port refuses connections, open ones keep being served.
    pub fn kill(&self) {
        self.listening.store(false, Ordering::Relaxed);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.listening.store(false, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn serve(mut s: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    // Accepted sockets inherit non-blocking from the listener on some systems: be explicit.
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(TICK));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let body = format!("{name} {peer}");
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// A keep-alive client connection made in a namespace.
pub struct HttpClient {
    s: TcpStream,
}

impl HttpClient {
    /// Connects from `ns` to `to`.
    pub fn connect(ns: &Netns, to: SocketAddrV4, timeout: Duration) -> io::Result<Self> {
        let s = ns
            .run_in(|| TcpStream::connect_timeout(&SocketAddr::V4(to), timeout))
            .map_err(io::Error::other)??;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(HttpClient { s })
    }

    /// The endpoint the connection is to, as the client sees it.
    pub fn peer(&self) -> io::Result<SocketAddr> {
        self.s.peer_addr()
    }

    /// One request; the response body.
    pub fn get(&mut self) -> io::Result<String> {
        self.s
            .write_all(b"GET / HTTP/1.1\r\nHost: natgate-test\r\n\r\n")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| io::Error::other(format!("no length: {head}")))?;
                if buf.len() >= end + 4 + len {
                    return Ok(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "response"));
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// One request on a new connection from `ns` to `to`; the body.
pub fn get_once(ns: &Netns, to: SocketAddrV4, timeout: Duration) -> io::Result<String> {
    HttpClient::connect(ns, to, timeout)?.get()
}
