//! The `natgate` program around the sans-IO engine of `natgate-core`, grouped by what each
//! part is:
//!
//! - [`dataplane`]: how packets reach the engine and leave it (the TUN slow path, the in-kernel
//!   fast path);
//! - [`daemon`]: the running gateway (plumbing, one worker per queue, the control handler);
//! - [`control`] and [`config`]: the control socket and `natgate ctl`, the TOML file;
//! - [`observability`]: metrics, translation events and log sinks;
//! - [`platform`]: the Linux underneath (namespaces, rtnetlink, sysctls, ethtool);
//! - [`lab`]: the standard topology of `shared/TOPOLOGY.md`, probes and the demo.
//!
//! Everything that changes network state takes (or must be run inside) a
//! [`platform::netns::Netns`] the caller created, so nothing here touches the host's
//! own interfaces, routes or sysctls by accident.
//!
//! ```no_run
//! use std::net::SocketAddrV4;
//! use std::time::Duration;
//! use natgate::lab::topology::{Topology, TopologyOptions, addr};
//! use natgate::dataplane::tun::{Tun, TunConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let t = Topology::build(&TopologyOptions::default())?;
//! // A TUN device in the gateway namespace; its fds work from any thread.
//! let tun = t.gateway.run_in(|| Tun::open(&TunConfig::new("ngtun0")))??;
//! let mut nl = t.netlink(&t.gateway)?;
//! nl.set_up(tun.name())?;
//! drop(nl); // an open socket would keep the namespace alive
//! natgate::lab::probe::ping(&t.sub1, addr::GW_LAN, Duration::from_secs(1))?;
//! let seen = natgate::lab::probe::udp_echo(
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
pub mod lab;
pub mod observability;
pub mod platform;
#[cfg(test)]
mod testutil;
