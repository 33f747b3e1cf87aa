//! A TUN device (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`): whole IP packets in
//! and out, no link-layer header and no packet-info prefix.
//!
//! The device is created in the network namespace of the thread that opens
//! it, so open it inside [`crate::platform::netns::Netns::run_in`]; the fds can then be
//! used from any thread. It goes away when its last queue is closed (by
//! every process: a child forked meanwhile holds a copy until it execs). Bring it
//! up and give it addresses and routes with [`crate::platform::netlink::Netlink`].
//!
//! With more than one queue the device is `IFF_MULTI_QUEUE`: the kernel
//! spreads flows over the queues by hash, one reader per queue.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::platform::ethtool::ifname_bytes;

/// `_IOW('T', 202, int)` from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// Most queues accepted (the kernel's MAX_TAP_QUEUES is 256).
pub const MAX_QUEUES: usize = 256;

/// `struct ifreq` with the `ifr_flags` member of the union.
#[repr(C)]
struct IfreqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Errors opening a TUN device.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// The name is empty or longer than 15 bytes.
    #[error("invalid TUN name {0:?}")]
    InvalidName(String),
    /// `queues` was 0 or above [`MAX_QUEUES`].
    #[error("invalid number of queues {0} (1..=256)")]
    InvalidQueues(usize),
    /// Opening `/dev/net/tun` or `TUNSETIFF` failed.
    #[error("{what}: {source}")]
    Sys {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// How to open a TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (≤ 15 bytes); a `%d` in it lets the kernel pick a number.
    pub name: String,
    /// Number of queues; more than 1 sets `IFF_MULTI_QUEUE`.
    pub queues: usize,
    /// Open the queues `O_NONBLOCK`: reads with nothing pending return
    /// `ErrorKind::WouldBlock`.
    pub nonblocking: bool,
}

impl TunConfig {
    /// One blocking queue named `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            queues: 1,
            nonblocking: false,
        }
    }
}

/// An open TUN device: its name and its queues.
#[derive(Debug)]
pub struct Tun {
    name: String,
    queues: Vec<TunQueue>,
}

/// One queue of a TUN device; each read or write is one whole IP packet.
#[derive(Debug)]
pub struct TunQueue {
    file: File,
}

impl Tun {
    /// Creates (or attaches to) the TUN device described by `config` in the
    /// calling thread's network namespace.
    pub fn open(config: &TunConfig) -> Result<Self, TunError> {
        if config.queues == 0 || config.queues > MAX_QUEUES {
            return Err(TunError::InvalidQueues(config.queues));
        }
        let mut name = config.name.clone();
        let mut flags = IFF_TUN | IFF_NO_PI;
        if config.queues > 1 {
            flags |= IFF_MULTI_QUEUE;
        }
        let mut queues = Vec::with_capacity(config.queues);
        for _ in 0..config.queues {
            let (file, actual) = open_queue(&name, flags, config.nonblocking)?;
            // Later queues attach to the name the kernel picked for the first.
            name = actual;
            queues.push(TunQueue { file });
        }
        Ok(Self { name, queues })
    }

    /// The interface name the kernel gave the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queues, in the order they were opened.
    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    /// Takes the queues, e.g. to move one to each worker thread.
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }
}

impl TunQueue {
    /// Reads one packet into `buf`, returning its length. A packet larger
    /// than `buf` is truncated, so pass at least the MTU.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one whole IP packet.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }

    /// Switches `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.file.as_fd();
        let mut fl = rustix::fs::fcntl_getfl(fd)?;
        fl.set(rustix::fs::OFlags::NONBLOCK, nonblocking);
        rustix::fs::fcntl_setfl(fd, fl)?;
        Ok(())
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn open_queue(
    name: &str,
    flags: libc::c_short,
    nonblocking: bool,
) -> Result<(File, String), TunError> {
    let ifname = ifname_bytes(name).ok_or_else(|| TunError::InvalidName(name.to_owned()))?;
    let mut custom = libc::O_CLOEXEC;
    if nonblocking {
        custom |= libc::O_NONBLOCK;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(custom)
        .open("/dev/net/tun")
        .map_err(|source| TunError::Sys {
            what: "opening /dev/net/tun",
            source,
        })?;
    let mut ifr = IfreqFlags {
        name: ifname,
        flags,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `ifr` has its
    // layout and size and lives across the call; the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut ifr) };
    if rc < 0 {
        return Err(TunError::Sys {
            what: "TUNSETIFF",
            source: io::Error::last_os_error(),
        });
    }
    let actual: Vec<u8> = ifr
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((file, String::from_utf8_lossy(&actual).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_kernel_sized() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(size_of::<IfreqFlags>(), 40);
    }

    #[test]
    fn rejects_bad_config() {
        let mut c = TunConfig::new("tun0");
        c.queues = 0;
        assert!(matches!(Tun::open(&c), Err(TunError::InvalidQueues(0))));
        let c = TunConfig::new("abcdefghijklmnop");
        assert!(matches!(Tun::open(&c), Err(TunError::InvalidName(_))));
    }
}
