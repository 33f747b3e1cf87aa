//! Named network namespaces, made the way `ip netns add` makes them.
//!
//! A namespace is created by `unshare(CLONE_NEWNET)` on a short-lived thread and
//! kept alive by bind-mounting that thread's `/proc/thread-self/ns/net` onto
//! `/run/netns/NAME`, so `ip netns list` shows it and `ip netns exec NAME ...`
//! works for debugging. Deleting is `umount` + `unlink`.
//!
//! Work inside a namespace happens on a thread that has `setns()`'d into it
//! ([`Netns::run_in`], [`Netns::spawn_in`]); the calling thread never changes
//! namespace, so nothing else in the process is affected.
//!
//! Gotchas:
//! - A namespace lives on after [`Netns`] is dropped for as long as anything
//!   still refers to it: a socket or TUN fd opened inside it, or a thread still
//!   in it. Its interfaces (veths) go only when the last reference goes.
//! - `/proc/net` is `/proc/self/net`, the *process's* namespace; inside
//!   `run_in` read `/proc/thread-self/net/...` instead. `/proc/sys/net` does
//!   follow the calling thread's namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;

use rustix::mount::{MountPropagationFlags, UnmountFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

/// Where iproute2 keeps named network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest namespace name accepted (a file name under [`NETNS_RUN_DIR`]).
pub const MAX_NAME_LEN: usize = 64;

/// Errors from creating, opening or entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is empty, too long, or has a `/` or NUL, or is `.`/`..`.
    #[error("invalid namespace name {0:?}")]
    InvalidName(String),
    /// `/run/netns/NAME` already exists.
    #[error("namespace {0:?} already exists")]
    Exists(String),
    /// `/run/netns/NAME` does not exist.
    #[error("namespace {0:?} does not exist")]
    NotFound(String),
    /// A system call failed; `what` says which step.
    #[error("{what}: {source}")]
    Sys {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The helper thread could not be spawned.
    #[error("spawning a namespace thread: {0}")]
    Spawn(#[source] io::Error),
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> NetnsError {
    move |source| NetnsError::Sys { what, source }
}

fn sys_rustix(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> NetnsError {
    move |e| NetnsError::Sys {
        what,
        source: e.into(),
    }
}

/// A named network namespace under `/run/netns`.
///
/// Made by [`Netns::create`] it is owned: dropping it unmounts and unlinks
/// `/run/netns/NAME`. Made by [`Netns::open`] it is borrowed: dropping it only
/// closes the fd.
#[derive(Debug)]
pub struct Netns {
    name: String,
    fd: OwnedFd,
    owned: bool,
}

impl Netns {
    /// Creates the namespace `name` (like `ip netns add NAME`).
    ///
    /// Fails with [`NetnsError::Exists`] if it is already there; never takes
    /// over a namespace somebody else made.
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        prepare_run_dir()?;
        let path = path_of(name);
        // O_EXCL: the mount point is ours alone, as in iproute2.
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
        {
            Ok(f) => drop(f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists(name.to_owned()));
            }
            Err(e) => return Err(sys("creating the netns mount point")(e)),
        }
        // From here on, undo on failure.
        let mut undo = RemoveOnFail(Some(path.clone()));
        bind_new_netns(&path)?;
        let fd = open_fd(&path)?;
        undo.0 = None;
        Ok(Self {
            name: name.to_owned(),
            fd,
            owned: true,
        })
    }

    /// Opens an existing named namespace without taking ownership of it.
    pub fn open(name: &str) -> Result<Self, NetnsError> {
        check_name(name)?;
        let path = path_of(name);
        if !path.exists() {
            return Err(NetnsError::NotFound(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            fd: open_fd(&path)?,
            owned: false,
        })
    }

    /// The namespace's name (the file name under `/run/netns`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's fd, e.g. for moving a veth peer into it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Path of the bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// Runs `f` on a fresh thread that has entered this namespace, waits for
    /// it and returns its result. Sockets opened in `f` live in the namespace
    /// and stay there when moved out.
    ///
    /// A panic in `f` is resumed on the calling thread.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let fd = self.fd.as_fd();
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(thread_name(&self.name))
                .spawn_scoped(s, move || {
                    enter(fd)?;
                    Ok(f())
                })
                .map_err(NetnsError::Spawn)?;
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a long-lived thread that enters this namespace and then runs
    /// `f`; for workers (a datapath loop, a test server). The thread keeps the
    /// namespace alive until it ends.
    ///
    /// If entering fails the thread returns the error without running `f`.
    pub fn spawn_in<T, F>(
        &self,
        f: F,
    ) -> Result<thread::JoinHandle<Result<T, NetnsError>>, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let fd = self
            .fd
            .try_clone()
            .map_err(sys("duplicating the netns fd"))?;
        thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || {
                enter(fd.as_fd())?;
                drop(fd);
                Ok(f())
            })
            .map_err(NetnsError::Spawn)
    }

    /// Deletes the namespace now (like `ip netns del`), reporting errors that
    /// `Drop` would swallow. Works for opened namespaces too.
    pub fn delete(mut self) -> Result<(), NetnsError> {
        self.owned = false;
        remove(&self.path())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            // Nothing useful to do with an error in drop; `delete` reports it.
            let _ = remove(&self.path());
        }
    }
}

/// Lists the names under `/run/netns` (like `ip netns list`), sorted.
pub fn list() -> Result<Vec<String>, NetnsError> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(sys("reading /run/netns")(e)),
    };
    for entry in entries {
        let entry = entry.map_err(sys("reading /run/netns"))?;
        if let Some(n) = entry.file_name().to_str() {
            names.push(n.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn thread_name(ns: &str) -> String {
    // Linux keeps 15 bytes of a thread name; the prefix makes `ps -T` readable.
    format!("ns:{ns}")
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name.contains(['/', '\0']);
    if bad {
        return Err(NetnsError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

fn open_fd(path: &Path) -> Result<OwnedFd, NetnsError> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(sys("opening the netns file"))?;
    Ok(f.into())
}

/// Moves the calling thread into the network namespace `fd` refers to. A thread already in it
/// is left alone: setns(2) needs CAP_SYS_ADMIN even then, and natgate run as a service, in the
/// namespace it serves, has no other use for that capability.
pub(crate) fn enter(fd: BorrowedFd<'_>) -> Result<(), NetnsError> {
    if is_current(fd) {
        return Ok(());
    }
    rustix::thread::move_into_link_name_space(fd, Some(LinkNameSpaceType::Network))
        .map_err(sys_rustix("setns(CLONE_NEWNET)"))
}

/// Whether `fd` refers to the calling thread's network namespace (the same inode on the nsfs).
fn is_current(fd: BorrowedFd<'_>) -> bool {
    match (
        rustix::fs::fstat(fd),
        rustix::fs::stat("/proc/thread-self/ns/net"),
    ) {
        (Ok(there), Ok(here)) => (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino),
        _ => false,
    }
}

/// Makes `/run/netns` exist and be a shared mount, as iproute2 does, so that
/// mounts under it propagate to other mount namespaces (e.g. `ip netns exec`).
fn prepare_run_dir() -> Result<(), NetnsError> {
    // Serialise within the process so parallel creates don't both bind
    // /run/netns onto itself.
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(NETNS_RUN_DIR).map_err(sys("creating /run/netns"))?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    // Bounded: at most one bind-onto-itself, then one retry.
    for _ in 0..2 {
        match rustix::mount::mount_change(NETNS_RUN_DIR, shared) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet; bind it onto itself and retry.
            Err(rustix::io::Errno::INVAL) => {
                rustix::mount::mount_bind_recursive(NETNS_RUN_DIR, NETNS_RUN_DIR)
                    .map_err(sys_rustix("bind-mounting /run/netns onto itself"))?;
            }
            Err(e) => return Err(sys_rustix("making /run/netns a shared mount")(e)),
        }
    }
    Err(NetnsError::Sys {
        what: "making /run/netns a shared mount",
        source: io::Error::other("still not a mount point after binding it"),
    })
}

/// Unshares a new network namespace on a dedicated thread and bind-mounts it
/// onto `target`. The thread exits afterwards; the mount keeps the namespace.
fn bind_new_netns(target: &Path) -> Result<(), NetnsError> {
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name("netns-create".into())
            .spawn_scoped(s, || -> Result<(), NetnsError> {
                // SAFETY: CLONE_NEWNET only changes this thread's network
                // namespace; it does not unshare the fd table (the hazard
                // `unshare_unsafe` warns about is UnshareFlags::FILES).
                unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
                    .map_err(sys_rustix("unshare(CLONE_NEWNET)"))?;
                rustix::mount::mount_bind("/proc/thread-self/ns/net", target)
                    .map_err(sys_rustix("bind-mounting the new netns"))
            })
            .map_err(NetnsError::Spawn)?;
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn remove(path: &Path) -> Result<(), NetnsError> {
    // MNT_DETACH as iproute2 does: a process still inside keeps the namespace,
    // but the name goes at once.
    let umount = rustix::mount::unmount(path, UnmountFlags::DETACH);
    let unlink = fs::remove_file(path);
    umount.map_err(sys_rustix("unmounting the netns"))?;
    unlink.map_err(sys("removing the netns file"))
}

/// Removes a half-made mount point if creation fails midway.
struct RemoveOnFail(Option<PathBuf>);

impl Drop for RemoveOnFail {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = rustix::mount::unmount(&p, UnmountFlags::DETACH);
            let _ = fs::remove_file(&p);
        }
    }
}
