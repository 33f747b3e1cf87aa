//! Turning NIC offloads off, through the legacy `SIOCETHTOOL` ioctls.
//!
//! TOPOLOGY.md wants checksum offload, TSO, GSO and GRO off on every veth so
//! each frame on the wire carries a real checksum and a real size. We use the
//! per-feature legacy commands (`ETHTOOL_STXCSUM`, `ETHTOOL_STSO`,
//! `ETHTOOL_SGSO`, `ETHTOOL_SGRO`) rather than `ETHTOOL_SFEATURES`, whose
//! feature-bit layout depends on the kernel's string set. The kernel maps
//! each onto `wanted_features`; turning off a feature a device lacks is not
//! an error.
//!
//! The ioctl acts on the namespace of the socket it is issued on, so these
//! functions take the [`Netns`] the interface lives in.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::platform::netns::{Netns, NetnsError};

// From <linux/ethtool.h>.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of the union.
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    // The union is 24 bytes on 64-bit (struct ifmap); pad to its size.
    _pad: [u8; 16],
}

/// Errors from the ethtool ioctls.
#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    /// The interface name is empty or longer than 15 bytes.
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
    /// The ioctl failed; `what` names the command.
    #[error("ethtool {what} on {dev}: {source}")]
    Ioctl {
        /// The command, e.g. `STSO`.
        what: &'static str,
        /// The interface.
        dev: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening the control socket failed.
    #[error("ethtool control socket: {0}")]
    Socket(#[source] io::Error),
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The offload state that matters for the lab, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// Transmit checksum offload.
    pub tx_checksum: bool,
    /// TCP segmentation offload.
    pub tso: bool,
    /// Generic segmentation offload.
    pub gso: bool,
    /// Generic receive offload.
    pub gro: bool,
}

/// Turns off tx checksum offload, TSO, GSO and GRO on `dev` in `ns`.
pub fn disable_offloads(ns: &Netns, dev: &str) -> Result<(), EthtoolError> {
    ns.run_in(|| disable_offloads_here(dev))?
}

/// Reads the offload state of `dev` in `ns`.
pub fn offloads(ns: &Netns, dev: &str) -> Result<Offloads, EthtoolError> {
    ns.run_in(|| offloads_here(dev))?
}

/// Turns generic receive offload on `dev` in `ns` on or off.
pub fn set_gro(ns: &Netns, dev: &str, on: bool) -> Result<(), EthtoolError> {
    ns.run_in(|| {
        let sock = control_socket()?;
        ethtool_value(&sock, dev, ETHTOOL_SGRO, u32::from(on), "SGRO").map(drop)
    })?
}

/// [`disable_offloads`] in the calling thread's namespace (use inside
/// [`Netns::run_in`]).
pub fn disable_offloads_here(dev: &str) -> Result<(), EthtoolError> {
    let sock = control_socket()?;
    // Tx checksum first: the kernel drops TSO with it anyway.
    for (cmd, what) in [
        (ETHTOOL_STXCSUM, "STXCSUM"),
        (ETHTOOL_STSO, "STSO"),
        (ETHTOOL_SGSO, "SGSO"),
        (ETHTOOL_SGRO, "SGRO"),
    ] {
        ethtool_value(&sock, dev, cmd, 0, what)?;
    }
    Ok(())
}

/// [`offloads`] in the calling thread's namespace.
pub fn offloads_here(dev: &str) -> Result<Offloads, EthtoolError> {
    let sock = control_socket()?;
    Ok(Offloads {
        tx_checksum: ethtool_value(&sock, dev, ETHTOOL_GTXCSUM, 0, "GTXCSUM")? != 0,
        tso: ethtool_value(&sock, dev, ETHTOOL_GTSO, 0, "GTSO")? != 0,
        gso: ethtool_value(&sock, dev, ETHTOOL_GGSO, 0, "GGSO")? != 0,
        gro: ethtool_value(&sock, dev, ETHTOOL_GGRO, 0, "GGRO")? != 0,
    })
}

fn control_socket() -> Result<OwnedFd, EthtoolError> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(EthtoolError::Socket)?;
    Ok(s.into())
}

/// Issues one `ETHTOOL_*` command carrying a `struct ethtool_value`; returns
/// the value the kernel left in it (the answer for `G*` commands).
fn ethtool_value(
    sock: &OwnedFd,
    dev: &str,
    cmd: u32,
    data: u32,
    what: &'static str,
) -> Result<u32, EthtoolError> {
    let name = ifname_bytes(dev).ok_or_else(|| EthtoolError::InvalidName(dev.to_owned()))?;
    let mut value = EthtoolValue { cmd, data };
    let mut ifr = IfreqData {
        name,
        data: (&raw mut value).cast(),
        _pad: [0; 16],
    };
    // SAFETY: SIOCETHTOOL reads `ifr` (a valid, NUL-terminated name and a
    // pointer to `value`, both alive for the call) and reads/writes `value`,
    // an `ethtool_value` as every command used here expects.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
    if rc < 0 {
        return Err(EthtoolError::Ioctl {
            what,
            dev: dev.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(value.data)
}

/// `dev` as a NUL-padded `ifr_name`, or `None` if it does not fit.
pub(crate) fn ifname_bytes(dev: &str) -> Option<[libc::c_char; libc::IFNAMSIZ]> {
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ || dev.contains('\0') {
        return None;
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_is_kernel_sized() {
        // struct ifreq is 40 bytes on 64-bit Linux.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(size_of::<IfreqData>(), 40);
    }

    #[test]
    fn names() {
        assert!(ifname_bytes("veth0").is_some());
        assert!(ifname_bytes("abcdefghijklmno").is_some());
        assert!(ifname_bytes("abcdefghijklmnop").is_none());
        assert!(ifname_bytes("").is_none());
    }
}
