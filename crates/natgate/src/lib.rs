//! Linux plumbing for natgate: named network namespaces, a small rtnetlink
//! client, ethtool offload switches, per-namespace sysctls, TUN devices, and
//! the standard lab topology of `shared/TOPOLOGY.md`.
//!
//! Everything that changes network state takes (or must be run inside) a
//! [`netns::Netns`] the caller created, so nothing here touches the host's
//! own interfaces, routes or sysctls by accident.
//!
//! ```no_run
//! use std::net::SocketAddrV4;
//! use std::time::Duration;
//! use natgate::topology::{Topology, TopologyOptions, addr};
//! use natgate::tun::{Tun, TunConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let t = Topology::build(&TopologyOptions::default())?;
//! // A TUN device in the gateway namespace; its fds work from any thread.
//! let tun = t.gateway.run_in(|| Tun::open(&TunConfig::new("ngtun0")))??;
//! let mut nl = t.netlink(&t.gateway)?;
//! nl.set_up(tun.name())?;
//! drop(nl); // an open socket would keep the namespace alive
//! natgate::probe::ping(&t.sub1, addr::GW_LAN, Duration::from_secs(1))?;
//! let seen = natgate::probe::udp_echo(
//!     &t.sub1, &t.wan1, SocketAddrV4::new(addr::WAN1, 3478), Duration::from_secs(1))?;
//! # let _ = seen;
//! drop(tun);
//! t.teardown()?; // or just drop it
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod ethtool;
pub mod eventlog;
pub mod logsink;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod probe;
pub mod sysctl;
#[cfg(test)]
mod testutil;
pub mod topology;
pub mod tun;
