//! The standard test topology of `shared/TOPOLOGY.md`, built in namespaces
//! this process creates and torn down when [`Topology`] is dropped.
//!
//! ```text
//!  sub1 ─┐        [ switch ]                                      [ switch ]  ┌─ wan1
//!        ├─ lanbr ─────────── lan0 [gateway] wan0 ── down [upstream] wan ── wanbr ─┤
//!  sub2 ─┘                                                                    └─ wan2
//! ```
//!
//! Both bridges live in one extra `switch` namespace, so the gateway's `lan0`
//! and the upstream's WAN side are plain veths (what a TUN/AF_PACKET/XDP
//! datapath expects), and the gateway namespace holds only the gateway.
//!
//! Every namespace and interface name carries the same short suffix
//! ([`Topology::suffix`]), so tests can build topologies in parallel.
//! Interface names: subscribers' and WAN hosts' `eth0-SFX`; gateway
//! `lan0-SFX`, `wan0-SFX`; upstream `down-SFX` (192.0.2.254) and `wan-SFX`
//! (203.0.113.1); switch ports `s1-`, `s2-`, `gl-`, `uw-`, `w1-`, `w2-SFX` on
//! bridges `lbr-SFX` and `wbr-SFX`. Namespaces: `ng-ROLE-SFX`.
//!
//! Every namespace gets `lo` up and `rp_filter` 0 (new namespaces inherit
//! the host's IPv4 defaults otherwise). Offloads are off on both ends of
//! every veth. The upstream forwards; the gateway forwards only if asked.
//! Upstream reaches wan2 (203.0.113.20/32) over a route with MTU
//! [`TopologyOptions::wan2_route_mtu`], for path-MTU tests.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::platform::ethtool::{self, EthtoolError};
use crate::platform::netlink::{Netlink, NetlinkError, RouteV4};
use crate::platform::netns::{self, Netns, NetnsError};
use crate::platform::sysctl::{self, SysctlError};

/// Fixed addresses of the standard topology.
pub mod addr {
    use std::net::Ipv4Addr;

    /// Subscriber network 100.64.0.0/16 (RFC 6598 shared address space).
    pub const LAN_NET: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
    /// Prefix length of [`LAN_NET`].
    pub const LAN_PREFIX: u8 = 16;
    /// Subscriber 1.
    pub const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    /// Subscriber 2.
    pub const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    /// Gateway inside (`lan0`), the subscribers' default route.
    pub const GW_LAN: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    /// Gateway outside (`wan0`).
    pub const GW_WAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    /// Prefix length of the gateway–upstream link 192.0.2.0/24.
    pub const TRANSIT_PREFIX: u8 = 24;
    /// Upstream router on the gateway link.
    pub const UPSTREAM_DOWN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
    /// Upstream router on the WAN link.
    pub const UPSTREAM_WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// Prefix length of the WAN link 203.0.113.0/24.
    pub const WAN_PREFIX: u8 = 24;
    /// WAN host 1, first address.
    pub const WAN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// WAN host 1, second address (RFC 5780 needs two).
    pub const WAN1_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
    /// WAN host 2.
    pub const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
    /// External pool 198.51.100.0/28: on no interface; upstream routes it to
    /// [`GW_WAN`].
    pub const POOL_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
    /// Prefix length of [`POOL_NET`].
    pub const POOL_PREFIX: u8 = 28;
}

/// Errors building the topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Creating or entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// Turning offloads off failed.
    #[error(transparent)]
    Ethtool(#[from] EthtoolError),
    /// Setting a sysctl failed.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
}

/// Choices the caller makes; the rest of the shape is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyOptions {
    /// Set `ip_forward=1` in the gateway namespace (for a kernel-forwarding
    /// baseline); natgate's own datapath does not need it.
    pub gateway_forwarding: bool,
    /// MTU of upstream's route to wan2 (203.0.113.20/32); `None` for none.
    pub wan2_route_mtu: Option<u32>,
    /// The far ends of the gateway's links (the switch port facing `lan0`, upstream's `down`)
    /// take frames redirected at the XDP hook: GRO on, which gives a veth the NAPI receive
    /// path that an XDP redirect into it needs (without it the kernel drops those frames).
    pub xdp_peers: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            gateway_forwarding: false,
            wan2_route_mtu: Some(1280),
            xdp_peers: false,
        }
    }
}

/// Interface names of one topology (all end in the suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    /// sub1's interface (100.64.0.10/16).
    pub sub1: String,
    /// sub2's interface (100.64.0.11/16).
    pub sub2: String,
    /// Gateway inside interface, 100.64.0.1/16.
    pub lan0: String,
    /// Gateway outside interface, 192.0.2.1/24.
    pub wan0: String,
    /// Upstream's interface towards the gateway, 192.0.2.254/24.
    pub upstream_down: String,
    /// Upstream's interface towards the WAN hosts, 203.0.113.1/24.
    pub upstream_wan: String,
    /// wan1's interface (203.0.113.10 and .11/24).
    pub wan1: String,
    /// wan2's interface (203.0.113.20/24).
    pub wan2: String,
    /// LAN bridge, in the switch namespace.
    pub lan_bridge: String,
    /// WAN bridge, in the switch namespace.
    pub wan_bridge: String,
}

/// A built standard topology. Dropping it deletes every namespace it made;
/// the kernel then deletes their veths and bridges.
///
/// Fields are public so tests can reach each namespace; addresses are in
/// [`addr`]. Do not move a [`Netns`] out: the topology owns their lifetime.
#[derive(Debug)]
pub struct Topology {
    /// The suffix on every name of this topology.
    pub suffix: String,
    /// Interface names.
    pub ifaces: Interfaces,
    /// Subscriber 1.
    pub sub1: Netns,
    /// Subscriber 2.
    pub sub2: Netns,
    /// The gateway: `lan0` and `wan0`, default via upstream.
    pub gateway: Netns,
    /// The upstream router (forwards).
    pub upstream: Netns,
    /// WAN host 1 (two addresses).
    pub wan1: Netns,
    /// WAN host 2.
    pub wan2: Netns,
    /// Holds the LAN and WAN bridges; no addresses.
    pub switch: Netns,
}

/// How many suffixes to try if a name is already taken.
const SUFFIX_TRIES: usize = 8;

impl Topology {
    /// Builds the topology with a fresh unique suffix.
    pub fn build(opts: &TopologyOptions) -> Result<Self, TopologyError> {
        let mut last = None;
        for _ in 0..SUFFIX_TRIES {
            match Self::build_with_suffix(&new_suffix(), opts) {
                Err(TopologyError::Netns(NetnsError::Exists(n))) => {
                    last = Some(NetnsError::Exists(n));
                }
                r => return r,
            }
        }
        Err(last
            .unwrap_or_else(|| NetnsError::InvalidName(String::new()))
            .into())
    }

    /// Builds the topology with the given suffix (≤ 6 bytes, so interface
    /// names stay within 15).
    pub fn build_with_suffix(sfx: &str, opts: &TopologyOptions) -> Result<Self, TopologyError> {
        if sfx.is_empty() || sfx.len() > 6 || !sfx.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(NetnsError::InvalidName(sfx.to_owned()).into());
        }
        let ns = |role: &str| Netns::create(&format!("ng-{role}-{sfx}"));
        // Each Netns deletes itself on drop, so a failure below undoes all
        // that was made so far.
        let switch = ns("sw")?;
        let sub1 = ns("sub1")?;
        let sub2 = ns("sub2")?;
        let gateway = ns("gw")?;
        let upstream = ns("up")?;
        let wan1 = ns("wan1")?;
        let wan2 = ns("wan2")?;
        let ifaces = Interfaces {
            sub1: format!("eth0-{sfx}"),
            sub2: format!("eth0-{sfx}"),
            lan0: format!("lan0-{sfx}"),
            wan0: format!("wan0-{sfx}"),
            upstream_down: format!("down-{sfx}"),
            upstream_wan: format!("wan-{sfx}"),
            wan1: format!("eth0-{sfx}"),
            wan2: format!("eth0-{sfx}"),
            lan_bridge: format!("lbr-{sfx}"),
            wan_bridge: format!("wbr-{sfx}"),
        };
        let topo = Self {
            suffix: sfx.to_owned(),
            ifaces,
            sub1,
            sub2,
            gateway,
            upstream,
            wan1,
            wan2,
            switch,
        };
        topo.wire(opts)?;
        Ok(topo)
    }

    /// All namespaces of the topology.
    pub fn namespaces(&self) -> [&Netns; 7] {
        [
            &self.sub1,
            &self.sub2,
            &self.gateway,
            &self.upstream,
            &self.wan1,
            &self.wan2,
            &self.switch,
        ]
    }

    /// Deletes every namespace now, reporting the first error that `Drop`
    /// would swallow (all deletions are attempted).
    pub fn teardown(self) -> Result<(), TopologyError> {
        let mut first = Ok(());
        for ns in [
            self.sub1,
            self.sub2,
            self.gateway,
            self.upstream,
            self.wan1,
            self.wan2,
            self.switch,
        ] {
            if let (Err(e), true) = (ns.delete(), first.is_ok()) {
                first = Err(e.into());
            }
        }
        first
    }

    /// A netlink socket in `ns` (one of this topology's namespaces). Drop it
    /// before the topology: an open socket keeps its namespace alive.
    pub fn netlink(&self, ns: &Netns) -> Result<Netlink, TopologyError> {
        Ok(Netlink::open_in(ns)?)
    }

    fn wire(&self, opts: &TopologyOptions) -> Result<(), TopologyError> {
        let sfx = &self.suffix;
        let i = &self.ifaces;
        let mut sw = Netlink::open_in(&self.switch)?;
        let mut gw = Netlink::open_in(&self.gateway)?;
        let mut up = Netlink::open_in(&self.upstream)?;

        for ns in self.namespaces() {
            let mut nl = Netlink::open_in(ns)?;
            nl.set_up("lo")?;
            sysctl::set(ns, "net/ipv4/conf/all/rp_filter", "0")?;
            sysctl::set(ns, "net/ipv4/conf/default/rp_filter", "0")?;
        }

        // Bridges in the switch namespace.
        for br in [&i.lan_bridge, &i.wan_bridge] {
            sw.add_bridge(br)?;
            sw.set_up(br)?;
        }

        // Switch ports: (switch end, bridge, host namespace, host end).
        let ports: [(String, &String, &Netns, &String); 5] = [
            (format!("s1-{sfx}"), &i.lan_bridge, &self.sub1, &i.sub1),
            (format!("s2-{sfx}"), &i.lan_bridge, &self.sub2, &i.sub2),
            (format!("gl-{sfx}"), &i.lan_bridge, &self.gateway, &i.lan0),
            (
                format!("uw-{sfx}"),
                &i.wan_bridge,
                &self.upstream,
                &i.upstream_wan,
            ),
            (format!("w1-{sfx}"), &i.wan_bridge, &self.wan1, &i.wan1),
        ];
        let w2 = (format!("w2-{sfx}"), &i.wan_bridge, &self.wan2, &i.wan2);
        for (port, br, host_ns, host_if) in ports.iter().chain(std::iter::once(&w2)) {
            sw.add_veth(port, host_if, Some(host_ns.fd()))?;
            sw.set_master(port, br)?;
            ethtool::disable_offloads(&self.switch, port)?;
            ethtool::disable_offloads(host_ns, host_if)?;
            sw.set_up(port)?;
            // ipv6 stays on (DS-Lite later); the ports themselves need none.
        }

        // Gateway wan0 <-> upstream down, a direct veth.
        gw.add_veth(&i.wan0, &i.upstream_down, Some(self.upstream.fd()))?;
        ethtool::disable_offloads(&self.gateway, &i.wan0)?;
        ethtool::disable_offloads(&self.upstream, &i.upstream_down)?;
        if opts.xdp_peers {
            ethtool::set_gro(&self.switch, &format!("gl-{sfx}"), true)?;
            ethtool::set_gro(&self.upstream, &i.upstream_down, true)?;
        }

        // Addresses, links up, routes.
        let host = |ns: &Netns, dev: &str, addrs: &[(Ipv4Addr, u8)], default: Option<Ipv4Addr>| {
            let mut nl = Netlink::open_in(ns)?;
            for (a, p) in addrs {
                nl.add_addr_v4(dev, *a, *p)?;
            }
            nl.set_up(dev)?;
            if let Some(gw) = default {
                nl.add_route_v4(&RouteV4::default_via(gw))?;
            }
            Ok::<(), TopologyError>(())
        };
        host(
            &self.sub1,
            &i.sub1,
            &[(addr::SUB1, addr::LAN_PREFIX)],
            Some(addr::GW_LAN),
        )?;
        host(
            &self.sub2,
            &i.sub2,
            &[(addr::SUB2, addr::LAN_PREFIX)],
            Some(addr::GW_LAN),
        )?;
        host(
            &self.wan1,
            &i.wan1,
            &[
                (addr::WAN1, addr::WAN_PREFIX),
                (addr::WAN1_ALT, addr::WAN_PREFIX),
            ],
            Some(addr::UPSTREAM_WAN),
        )?;
        host(
            &self.wan2,
            &i.wan2,
            &[(addr::WAN2, addr::WAN_PREFIX)],
            Some(addr::UPSTREAM_WAN),
        )?;

        gw.add_addr_v4(&i.lan0, addr::GW_LAN, addr::LAN_PREFIX)?;
        gw.add_addr_v4(&i.wan0, addr::GW_WAN, addr::TRANSIT_PREFIX)?;
        gw.set_up(&i.lan0)?;
        gw.set_up(&i.wan0)?;
        gw.add_route_v4(&RouteV4::default_via(addr::UPSTREAM_DOWN))?;
        sysctl::set_ip_forward(&self.gateway, opts.gateway_forwarding)?;

        up.add_addr_v4(&i.upstream_down, addr::UPSTREAM_DOWN, addr::TRANSIT_PREFIX)?;
        up.add_addr_v4(&i.upstream_wan, addr::UPSTREAM_WAN, addr::WAN_PREFIX)?;
        up.set_up(&i.upstream_down)?;
        up.set_up(&i.upstream_wan)?;
        up.add_route_v4(&RouteV4::via(
            addr::POOL_NET,
            addr::POOL_PREFIX,
            addr::GW_WAN,
        ))?;
        if let Some(mtu) = opts.wan2_route_mtu {
            up.add_route_v4(&RouteV4::dev(addr::WAN2, 32, &i.upstream_wan).with_mtu(mtu))?;
        }
        sysctl::set_ip_forward(&self.upstream, true)?;
        Ok(())
    }
}

/// Names under `/run/netns` that end in `-SUFFIX` (for leak checks).
pub fn leftover_namespaces(suffix: &str) -> Result<Vec<String>, NetnsError> {
    let tail = format!("-{suffix}");
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.ends_with(&tail))
        .collect())
}

/// A 5-character base-36 suffix, unique within this process and very likely
/// across processes (pid, a counter and the clock are mixed in).
fn new_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // splitmix-style mixing of the three inputs.
    let mut x = u64::from(std::process::id()) << 32 ^ u64::from(n) << 20 ^ u64::from(nanos);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..5)
        .map(|k| char::from(DIGITS[((x >> (k * 6)) % 36) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_fit_and_differ() {
        let a = new_suffix();
        let b = new_suffix();
        assert_eq!(a.len(), 5);
        assert_ne!(a, b);
        // Longest interface name: "lan0-" / "down-" / "wan0-" + suffix.
        assert!(format!("lan0-{a}").len() <= 15);
    }

    #[test]
    fn rejects_long_suffix() {
        let r = Topology::build_with_suffix("toolong1", &TopologyOptions::default());
        assert!(matches!(
            r,
            Err(TopologyError::Netns(NetnsError::InvalidName(_)))
        ));
    }
}
