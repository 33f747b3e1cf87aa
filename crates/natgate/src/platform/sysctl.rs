//! Per-namespace network sysctls, by writing `/proc/sys/net/...`.
//!
//! `/proc/sys/net` shows the network namespace of the *thread* that opens the
//! file, so these functions do their I/O inside [`Netns::run_in`]. Only keys
//! under `net/` are accepted: nothing here can change a host-wide setting.

use std::io;

use crate::platform::netns::{Netns, NetnsError};

/// Errors from reading or writing a sysctl.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    /// The key is not a plain path under `net/`.
    #[error("refusing sysctl key {0:?} (must be under net/, no '..')")]
    InvalidKey(String),
    /// Reading or writing the `/proc/sys` file failed.
    #[error("sysctl {key}: {source}")]
    Io {
        /// The key, e.g. `net/ipv4/ip_forward`.
        key: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Writes `value` to `/proc/sys/KEY` inside `ns`; `key` uses `/` separators,
/// e.g. `net/ipv4/ip_forward`.
pub fn set(ns: &Netns, key: &str, value: &str) -> Result<(), SysctlError> {
    let path = path_of(key)?;
    ns.run_in(|| std::fs::write(&path, value))?
        .map_err(|source| SysctlError::Io {
            key: key.to_owned(),
            source,
        })
}

/// Reads `/proc/sys/KEY` inside `ns`, trimmed.
pub fn get(ns: &Netns, key: &str) -> Result<String, SysctlError> {
    let path = path_of(key)?;
    ns.run_in(|| std::fs::read_to_string(&path))?
        .map(|s| s.trim().to_owned())
        .map_err(|source| SysctlError::Io {
            key: key.to_owned(),
            source,
        })
}

/// Turns IPv4 forwarding on or off in `ns` (`net/ipv4/ip_forward`).
pub fn set_ip_forward(ns: &Netns, on: bool) -> Result<(), SysctlError> {
    set(ns, "net/ipv4/ip_forward", if on { "1" } else { "0" })
}

/// Turns proxy ARP on or off for interface `dev` in `ns`
/// (`net/ipv4/conf/DEV/proxy_arp`).
pub fn set_proxy_arp(ns: &Netns, dev: &str, on: bool) -> Result<(), SysctlError> {
    set(
        ns,
        &format!("net/ipv4/conf/{dev}/proxy_arp"),
        if on { "1" } else { "0" },
    )
}

fn path_of(key: &str) -> Result<String, SysctlError> {
    let ok = key.starts_with("net/")
        && !key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        && !key.contains('\0');
    if !ok {
        return Err(SysctlError::InvalidKey(key.to_owned()));
    }
    Ok(format!("/proc/sys/{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_under_net() {
        assert!(path_of("net/ipv4/ip_forward").is_ok());
        assert!(path_of("kernel/hostname").is_err());
        assert!(path_of("net/../kernel/hostname").is_err());
        assert!(path_of("net//x").is_err());
        assert!(path_of("/net/ipv4").is_err());
    }
}
