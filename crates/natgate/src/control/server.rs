//! The control socket's server: one thread accepts, one thread per connection reads requests.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{self, MAX_REQUEST_LINE};
use super::{ControlError, ControlHandler};

/// Limits of a [`Server`].
///
/// A client cannot hold a connection by trickling bytes: once a request's first byte arrives,
/// the whole line must arrive within `request_timeout`, and a connection waiting for a request
/// is closed after `read_timeout`. And a full server still lets an operator in: a new connection
/// closes the oldest one that is not having a request handled (waiting for a request, or for
/// its client to read a reply); only when every connection's request is being handled is the
/// new one refused.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A connection that sends nothing for this long between requests is closed.
    pub read_timeout: Duration,
    /// A request whose line has not fully arrived this long after its first byte closes the
    /// connection (a slow client cannot hold a slot by sending a byte now and then).
    pub request_timeout: Duration,
    /// A reply the client does not read for this long closes the connection.
    pub write_timeout: Duration,
    /// The longest request line, newline included.
    pub max_line: usize,
    /// Connections served at once; more are answered `unavailable` and closed.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_line: MAX_REQUEST_LINE,
            max_connections: 32,
        }
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon answers on the socket.
    #[error(
        "{0}: another natgate daemon is running and listening here; stop it or use another socket path"
    )]
    AlreadyRunning(PathBuf),
    /// Something other than a socket is in the way; it is left alone.
    #[error("{0}: exists and is not a socket; remove it or use another socket path")]
    NotASocket(PathBuf),
    /// The socket file did not get owner-only permissions.
    #[error("{path}: socket has mode {mode:o}, not 600")]
    Permissions {
        /// The socket.
        path: PathBuf,
        /// The mode it has.
        mode: u32,
    },
    /// A system call failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// A running control socket server. [`Server::shutdown`] (or dropping it) stops it, closes every
/// connection, waits for their threads and removes the socket file.
pub struct Server {
    path: PathBuf,
    /// The socket file we created, to remove only that one (not a successor's).
    file_id: (u64, u64),
    listener: UnixListener,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    next_conn: AtomicU64,
    /// Live connections, to close them on shutdown or to make room, by id (ids grow, so the
    /// smallest is the oldest).
    conns: Mutex<HashMap<u64, Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One live connection.
struct Conn {
    stream: UnixStream,
    /// A request of it is being handled (it is not closed to make room).
    busy: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps stay consistent even if a thread panicked while holding the lock.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Server {
    /// Creates the socket at `path` with owner-only permissions (and its directory, mode 0700,
    /// if missing) and starts serving `handler` with default limits. A stale socket left by a
    /// dead daemon is replaced; a live one is an error.
    pub fn bind<H: ControlHandler>(
        path: impl AsRef<Path>,
        handler: H,
    ) -> Result<Server, ServerError> {
        Server::bind_with(path, handler, ServerOptions::default())
    }

    /// Like [`Server::bind`], with explicit limits.
    pub fn bind_with<H: ControlHandler>(
        path: impl AsRef<Path>,
        handler: H,
        opts: ServerOptions,
    ) -> Result<Server, ServerError> {
        let path = path.as_ref().to_path_buf();
        let io_err = |what| {
            let path = path.clone();
            move |source| ServerError::Io { path, what, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            // e.g. /run/natgate after a reboot; only its owner needs to get in.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating the socket's directory"))?;
        }
        remove_stale(&path)?;
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io_err("socket")(e.into()))?;
        let addr =
            SocketAddrUnix::new(path.as_path()).map_err(|e| io_err("socket path")(e.into()))?;
        rustix::net::bind(&fd, &addr).map_err(|e| io_err("bind")(e.into()))?;
        // Not listening yet, so nobody can connect before the mode is owner-only.
        let started = restrict_then_listen(&path, fd)
            .and_then(|(listener, file_id)| Server::start(listener, file_id, &path, handler, opts));
        if started.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        started
    }

    fn start<H: ControlHandler>(
        listener: UnixListener,
        file_id: (u64, u64),
        path: &Path,
        handler: H,
        opts: ServerOptions,
    ) -> Result<Server, ServerError> {
        let io_err = |what| {
            move |source| ServerError::Io {
                path: path.into(),
                what,
                source,
            }
        };
        let wake = listener.try_clone().map_err(io_err("dup"))?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            next_conn: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let handler = Arc::new(handler);
        let s = shared.clone();
        let accept_thread = thread::Builder::new()
            .name("ctl-accept".into())
            .spawn(move || accept_loop(&listener, &s, &handler, &opts))
            .map_err(io_err("spawn"))?;
        Ok(Server {
            path: path.into(),
            file_id,
            listener: wake,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (a request being handled finishes first),
    /// waits for the threads, and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Linux wakes a blocked accept() with EINVAL when the listening socket is shut down.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        let _ = accept.join();
        for conn in lock(&self.shared.conns).values() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.file_id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a socket file nobody listens on; refuses a live socket or a non-socket.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Io {
                path: path.into(),
                what: "stat",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.into()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::AlreadyRunning(path.into())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ServerError::Io {
                path: path.into(),
                what: "removing stale socket",
                source,
            }),
        Err(source) => Err(ServerError::Io {
            path: path.into(),
            what: "probing existing socket",
            source,
        }),
    }
}

/// Makes the bound socket owner-only, checks that it is, then listens. Returns the listener and
/// the socket file's (device, inode).
fn restrict_then_listen(
    path: &Path,
    fd: std::os::fd::OwnedFd,
) -> Result<(UnixListener, (u64, u64)), ServerError> {
    let io_err = |what| {
        move |source| ServerError::Io {
            path: path.into(),
            what,
            source,
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("chmod"))?;
    let meta = std::fs::symlink_metadata(path).map_err(io_err("stat"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode != 0o600 {
        return Err(ServerError::Permissions {
            path: path.into(),
            mode,
        });
    }
    rustix::net::listen(&fd, 64).map_err(|e| io_err("listen")(e.into()))?;
    Ok((UnixListener::from(fd), (meta.dev(), meta.ino())))
}

fn accept_loop<H: ControlHandler>(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    handler: &Arc<H>,
    opts: &ServerOptions,
) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                // Out of descriptors or memory: back off rather than spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        lock(&shared.threads).retain(|t| !t.is_finished());
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicBool::new(false));
        {
            let mut conns = lock(&shared.conns);
            if conns.len() >= opts.max_connections {
                // Room for the newcomer: the oldest connection waiting for a request goes (its
                // thread sees the shutdown, and removes it). An operator's command always gets
                // through unless every slot is busy handling one.
                let oldest_idle = conns
                    .iter()
                    .filter(|(_, c)| !c.busy.load(Ordering::SeqCst))
                    .map(|(id, _)| *id)
                    .min();
                match oldest_idle.and_then(|old| conns.remove(&old)) {
                    Some(old) => {
                        let _ = old.stream.shutdown(std::net::Shutdown::Both);
                    }
                    None => {
                        drop(conns);
                        refuse_busy(stream, opts);
                        continue;
                    }
                }
            }
            conns.insert(
                id,
                Conn {
                    stream: clone,
                    busy: busy.clone(),
                },
            );
        }
        let (s, h, o) = (shared.clone(), handler.clone(), opts.clone());
        let spawned = thread::Builder::new()
            .name("ctl-conn".into())
            .spawn(move || {
                serve(stream, &*h, &o, &busy);
                lock(&s.conns).remove(&id);
            });
        match spawned {
            Ok(t) => lock(&shared.threads).push(t),
            Err(_) => {
                lock(&shared.conns).remove(&id);
            }
        }
    }
}

fn refuse_busy(mut stream: UnixStream, opts: &ServerOptions) {
    let _ = stream.set_write_timeout(Some(opts.write_timeout));
    let e = ControlError::Unavailable("too many control connections".into());
    let _ = writeln!(stream, "{}", protocol::encode_reply(None, &Err(e)));
}

/// Serves one connection until it closes, idles past the timeout, is too slow sending a
/// request, sends an oversized line, or the server stops (or closes it to make room). `busy`
/// is set while a request is handled (not while its reply is written).
fn serve<H: ControlHandler>(
    stream: UnixStream,
    handler: &H,
    opts: &ServerOptions,
    busy: &AtomicBool,
) {
    if stream.set_write_timeout(Some(opts.write_timeout)).is_err() {
        return;
    }
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_request(&mut reader, &writer, &mut line, opts) {
            Ok(true) => {}
            Ok(false) => {
                // Framing is lost mid-line, so say why and close.
                let e = ControlError::TooLarge(opts.max_line);
                let _ = writeln!(writer, "{}", protocol::encode_reply(None, &Err(e)));
                return;
            }
            // Timed out, reset, shut down, or the client left mid-request: a partial line is
            // never acted on.
            Err(_) => return,
        }
        let body = line.trim_ascii();
        if body.is_empty() {
            continue;
        }
        busy.store(true, Ordering::SeqCst);
        let (id, reply) = match protocol::decode_request(body) {
            Ok((id, req)) => (id, dispatch(handler, req)),
            Err((id, e)) => (id, Err(e)),
        };
        // Handled: from here the connection may be closed to make room (a client that does not
        // read its reply holds no slot).
        busy.store(false, Ordering::SeqCst);
        let out = protocol::encode_reply(id, &reply);
        if writeln!(writer, "{out}")
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

/// Reads one request line (newline included) into `line`: its first byte within
/// `opts.read_timeout`, the whole line within `opts.request_timeout` of its first byte.
/// `Ok(false)` when the line is longer than `opts.max_line`; an error when a deadline passes
/// or the connection ends first. `socket` is the reader's socket, whose timeout is set to what
/// is left before each read.
fn read_request(
    reader: &mut BufReader<UnixStream>,
    socket: &UnixStream,
    line: &mut Vec<u8>,
    opts: &ServerOptions,
) -> io::Result<bool> {
    let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
    let mut deadline = std::time::Instant::now() + opts.read_timeout;
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)?;
        socket.set_read_timeout(Some(left))?;
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        if line.is_empty() {
            // The request has begun: all of it must come soon.
            deadline = deadline.min(std::time::Instant::now() + opts.request_timeout);
        }
        let room = opts.max_line - line.len().min(opts.max_line);
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) if i < room => (i + 1, true),
            _ => (buf.len().min(room), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            return Ok(true);
        }
        if line.len() >= opts.max_line {
            return Ok(false);
        }
    }
}

fn dispatch<H: ControlHandler>(
    handler: &H,
    req: protocol::Request,
) -> Result<protocol::Response, ControlError> {
    let cmd = req.command();
    // A panicking handler must not take the connection's reply with it.
    match panic::catch_unwind(AssertUnwindSafe(|| handler.handle(req))) {
        Ok(Ok(resp)) if resp.command() != cmd => Err(ControlError::Internal(format!(
            "the daemon answered {cmd} with a {} reply",
            resp.command()
        ))),
        Ok(r) => r,
        Err(_) => Err(ControlError::Internal(format!("handling {cmd} panicked"))),
    }
}
