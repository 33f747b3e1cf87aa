//! A small synchronous rtnetlink client: the few link, address, route and
//! neighbour operations the lab topology and the gateway need, no more.
//!
//! A [`Netlink`] talks to the network namespace its socket was opened in,
//! whatever thread later uses it. Open it with [`Netlink::open_in`] to aim at a
//! namespace you made; [`Netlink::new`] uses the calling thread's namespace.
//!
//! Every request carries `NLM_F_ACK` and waits for the kernel's answer with a
//! receive timeout ([`REPLY_TIMEOUT`]) and a bounded number of reads, so a
//! lost reply is an error, not a hang.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, IpProtocol, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::platform::netns::{Netns, NetnsError};

/// How long to wait for each reply datagram from the kernel.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most datagrams read while waiting for one request's answer.
const MAX_READS: usize = 1024;

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Errors from the rtnetlink client.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening, binding or using the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a request; `op` names it.
    #[error("{op}: {source}")]
    Kernel {
        /// What was asked, e.g. `add veth a/b`.
        op: String,
        /// The errno the kernel answered with.
        #[source]
        source: io::Error,
    },
    /// No interface has this name in the socket's namespace.
    #[error("no interface named {0:?}")]
    NoSuchLink(String),
    /// The interface name is empty or longer than 15 bytes.
    #[error("invalid interface name {0:?} (1..=15 bytes)")]
    InvalidName(String),
    /// A reply could not be decoded.
    #[error("malformed netlink reply: {0}")]
    Decode(String),
    /// No answer within [`REPLY_TIMEOUT`] (or too many unrelated datagrams).
    #[error("no answer from the kernel for {0}")]
    Timeout(String),
    /// Entering the namespace to open the socket failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The kernel's `local` routing table (addresses of this host).
pub const RT_TABLE_LOCAL: u32 = 255;

/// An IPv4 route to add or delete (main table unless [`RouteV4::table`] says otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteV4 {
    /// Destination network address.
    pub dst: Ipv4Addr,
    /// Destination prefix length; 0 with `dst` 0.0.0.0 is the default route.
    pub prefix_len: u8,
    /// Next hop, if any; without one the route is on-link.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface, by name; needed for on-link routes.
    pub dev: Option<String>,
    /// Per-route MTU (`ip route ... mtu N`), e.g. for path-MTU tests.
    pub mtu: Option<u32>,
    /// Routing table id; `None` is the main table.
    pub table: Option<u32>,
    /// A blackhole route (`ip route add blackhole ...`): the kernel drops what it matches,
    /// silently.
    pub blackhole: bool,
    /// The route's metric (`metric N`); among routes to the same prefix the lowest wins.
    pub metric: Option<u32>,
}

impl RouteV4 {
    /// A unicast route to `dst/prefix_len` in the main table with nothing else set: what the
    /// constructors below start from.
    fn to(dst: Ipv4Addr, prefix_len: u8) -> Self {
        Self {
            dst,
            prefix_len,
            gateway: None,
            dev: None,
            mtu: None,
            table: None,
            blackhole: false,
            metric: None,
        }
    }

    /// The default route via `gateway`.
    pub fn default_via(gateway: Ipv4Addr) -> Self {
        Self::via(Ipv4Addr::UNSPECIFIED, 0, gateway)
    }

    /// A route to `dst/prefix_len` via `gateway`.
    pub fn via(dst: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> Self {
        Self {
            gateway: Some(gateway),
            ..Self::to(dst, prefix_len)
        }
    }

    /// An on-link route to `dst/prefix_len` out of `dev`.
    pub fn dev(dst: Ipv4Addr, prefix_len: u8, dev: &str) -> Self {
        Self {
            dev: Some(dev.to_owned()),
            ..Self::to(dst, prefix_len)
        }
    }

    /// A blackhole route to `dst/prefix_len` with metric `metric`.
    pub fn blackhole(dst: Ipv4Addr, prefix_len: u8, metric: u32) -> Self {
        Self {
            blackhole: true,
            metric: Some(metric),
            ..Self::to(dst, prefix_len)
        }
    }

    /// Sets the per-route MTU.
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Puts the route in routing table `table`.
    pub fn in_table(mut self, table: u32) -> Self {
        self.table = Some(table);
        self
    }
}

/// An IPv4 policy-routing rule (`ip rule add [iif DEV] [to ADDR/32] [ipproto P] pref PRIORITY
/// lookup TABLE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleV4 {
    /// Priority (`pref`); lower runs first. The kernel's `local` rule is 0.
    pub priority: u32,
    /// Match packets that arrived on this interface only (`lo`: packets of the host itself).
    pub iif: Option<String>,
    /// Match packets to this one address only.
    pub to: Option<Ipv4Addr>,
    /// Match packets of this IP protocol only (kernel 4.17 or later).
    pub ip_proto: Option<u8>,
    /// The table to look up.
    pub table: u32,
}

/// An IPv4 rule as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// Priority.
    pub priority: u32,
    /// The table it looks up (0 if it is not a lookup rule).
    pub table: u32,
    /// Input interface it matches, if any.
    pub iif: Option<String>,
}

/// A synchronous rtnetlink socket bound in one network namespace.
#[derive(Debug)]
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    ///
    /// On the host's own namespace this would change the host: prefer
    /// [`Netlink::open_in`] with a namespace you created.
    pub fn new() -> Result<Self, NetlinkError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        sock.bind_auto().map_err(NetlinkError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        set_rcvtimeo(&sock, REPLY_TIMEOUT).map_err(NetlinkError::Socket)?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Opens a socket in `ns`; it keeps addressing `ns` from any thread.
    pub fn open_in(ns: &Netns) -> Result<Self, NetlinkError> {
        ns.run_in(Self::new)?
    }

    /// The ifindex of interface `name`.
    pub fn link_index(&mut self, name: &str) -> Result<u32, NetlinkError> {
        Ok(self.get_link(name)?.header.index)
    }

    /// The kernel's description of interface `name` (`RTM_GETLINK`).
    fn get_link(&mut self, name: &str) -> Result<LinkMessage, NetlinkError> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        let replies = match self.request(RouteNetlinkMessage::GetLink(msg), 0, "get link") {
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                return Err(NetlinkError::NoSuchLink(name.to_owned()));
            }
            r => r?,
        };
        replies
            .into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
    }

    /// One attribute of interface `name`, as `pick` finds it.
    fn link_attribute<T>(
        &mut self,
        name: &str,
        pick: impl Fn(LinkAttribute) -> Option<T>,
    ) -> Result<T, NetlinkError> {
        self.get_link(name)?
            .attributes
            .into_iter()
            .find_map(pick)
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_owned()))
    }

    /// The hardware (MAC) address of Ethernet interface `name`.
    pub fn link_mac(&mut self, name: &str) -> Result<[u8; 6], NetlinkError> {
        self.link_attribute(name, |a| match a {
            LinkAttribute::Address(a) => <[u8; 6]>::try_from(a.as_slice()).ok(),
            _ => None,
        })
    }

    /// The packets the kernel dropped on their way out of interface `name` (its link
    /// statistics' `tx_dropped`; for a TUN device, packets its queues had no room for).
    pub fn link_tx_dropped(&mut self, name: &str) -> Result<u64, NetlinkError> {
        self.link_attribute(name, |a| match a {
            LinkAttribute::Stats64(s) => Some(s.tx_dropped),
            _ => None,
        })
    }

    /// Whether interface `name` exists in this namespace.
    pub fn link_exists(&mut self, name: &str) -> Result<bool, NetlinkError> {
        match self.link_index(name) {
            Ok(_) => Ok(true),
            Err(NetlinkError::NoSuchLink(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair `name` ↔ `peer`. With `peer_ns` the peer is created
    /// directly in that namespace (by fd); otherwise in this one.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: Option<BorrowedFd<'_>>,
    ) -> Result<(), NetlinkError> {
        check_ifname(name)?;
        check_ifname(peer)?;
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        if let Some(fd) = peer_ns {
            peer_msg
                .attributes
                .push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add veth {name}/{peer}"),
        )
        .map(drop)
    }

    /// Creates a bridge `name` (down; call [`Netlink::set_up`]).
    pub fn add_bridge(&mut self, name: &str) -> Result<(), NetlinkError> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add bridge {name}"),
        )
        .map(drop)
    }

    /// Makes `port` a port of bridge `bridge` (`ip link set PORT master BR`).
    pub fn set_master(&mut self, port: &str, bridge: &str) -> Result<(), NetlinkError> {
        let master = self.link_index(bridge)?;
        self.set_link(
            port,
            vec![LinkAttribute::Controller(master)],
            None,
            &format!("set {port} master {bridge}"),
        )
    }

    /// Sets interface `name` administratively up.
    pub fn set_up(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.set_link(name, vec![], Some(true), &format!("set {name} up"))
    }

    /// Sets interface `name` administratively down.
    pub fn set_down(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.set_link(name, vec![], Some(false), &format!("set {name} down"))
    }

    /// Sets the MTU of interface `name`.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.set_link(
            name,
            vec![LinkAttribute::Mtu(mtu)],
            None,
            &format!("set {name} mtu {mtu}"),
        )
    }

    /// Sets how many packets interface `name` queues for transmission (for a TUN: how many
    /// wait for the reader before the kernel drops more).
    pub fn set_tx_queue_len(&mut self, name: &str, len: u32) -> Result<(), NetlinkError> {
        self.set_link(
            name,
            vec![LinkAttribute::TxQueueLen(len)],
            None,
            &format!("set {name} txqueuelen {len}"),
        )
    }

    /// Moves interface `name` into the namespace `ns` (by fd).
    pub fn move_to_netns(&mut self, name: &str, ns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        self.set_link(
            name,
            vec![LinkAttribute::NetNsFd(ns.as_raw_fd())],
            None,
            &format!("move {name} to another netns"),
        )
    }

    /// Deletes interface `name` (for a veth, both ends go).
    pub fn del_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let index = self.link_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(
            RouteNetlinkMessage::DelLink(msg),
            0,
            &format!("delete link {name}"),
        )
        .map(drop)
    }

    /// Adds `addr/prefix_len` to interface `dev`.
    pub fn add_addr_v4(
        &mut self,
        dev: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let msg = self.addr_msg(dev, addr, prefix_len)?;
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add address {addr}/{prefix_len} to {dev}"),
        )
        .map(drop)
    }

    /// Removes `addr/prefix_len` from interface `dev`.
    pub fn del_addr_v4(
        &mut self,
        dev: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let msg = self.addr_msg(dev, addr, prefix_len)?;
        self.request(
            RouteNetlinkMessage::DelAddress(msg),
            0,
            &format!("delete address {addr}/{prefix_len} from {dev}"),
        )
        .map(drop)
    }

    /// Adds an IPv4 route to the main table.
    pub fn add_route_v4(&mut self, route: &RouteV4) -> Result<(), NetlinkError> {
        let msg = self.route_msg(route)?;
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add route {route:?}"),
        )
        .map(drop)
    }

    /// Deletes an IPv4 route from the main table.
    pub fn del_route_v4(&mut self, route: &RouteV4) -> Result<(), NetlinkError> {
        let mut msg = self.route_msg(route)?;
        // The kernel matches on what is given; scope NOWHERE is the wildcard.
        msg.header.scope = RouteScope::NoWhere;
        msg.header.protocol = RouteProtocol::Unspec;
        self.request(
            RouteNetlinkMessage::DelRoute(msg),
            0,
            &format!("delete route {route:?}"),
        )
        .map(drop)
    }

    /// Adds a proxy-ARP entry for `addr` on `dev` (`ip neigh add proxy ADDR
    /// dev DEV`): the namespace answers ARP for `addr` on `dev`.
    ///
    /// The kernel only answers if forwarding is on and the route to `addr`
    /// leaves by a different interface than `dev`. Answers to broadcast ARP
    /// are delayed by up to `net/ipv4/neigh/DEV/proxy_delay` (default 0.8 s);
    /// set it to 0 for prompt answers.
    pub fn add_proxy_neigh_v4(&mut self, dev: &str, addr: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = self.proxy_msg(dev, addr)?;
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add proxy neighbour {addr} on {dev}"),
        )
        .map(drop)
    }

    /// Removes a proxy-ARP entry added by [`Netlink::add_proxy_neigh_v4`].
    pub fn del_proxy_neigh_v4(&mut self, dev: &str, addr: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = self.proxy_msg(dev, addr)?;
        self.request(
            RouteNetlinkMessage::DelNeighbour(msg),
            0,
            &format!("delete proxy neighbour {addr} on {dev}"),
        )
        .map(drop)
    }

    /// Adds or replaces an IPv4 route (`ip route replace`).
    pub fn replace_route_v4(&mut self, route: &RouteV4) -> Result<(), NetlinkError> {
        let msg = self.route_msg(route)?;
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace route {route:?}"),
        )
        .map(drop)
    }

    /// Adds an IPv4 policy-routing rule.
    pub fn add_rule_v4(&mut self, rule: &RuleV4) -> Result<(), NetlinkError> {
        let mut msg = rule_msg(rule.priority, rule.table);
        if let Some(iif) = &rule.iif {
            check_ifname(iif)?;
            msg.attributes.push(RuleAttribute::Iifname(iif.clone()));
        }
        if let Some(to) = rule.to {
            msg.header.dst_len = 32;
            msg.attributes
                .push(RuleAttribute::Destination(IpAddr::V4(to)));
        }
        if let Some(p) = rule.ip_proto {
            msg.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::from(i32::from(p))));
        }
        self.request(
            RouteNetlinkMessage::NewRule(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add rule {rule:?}"),
        )
        .map(drop)
    }

    /// Deletes one IPv4 rule with this priority that looks up `table` (`ip rule del pref P
    /// table T`). Fails with the kernel's `ENOENT` when there is none.
    pub fn del_rule_v4(&mut self, priority: u32, table: u32) -> Result<(), NetlinkError> {
        let msg = rule_msg(priority, table);
        self.request(
            RouteNetlinkMessage::DelRule(msg),
            0,
            &format!("delete rule pref {priority} table {table}"),
        )
        .map(drop)
    }

    /// Every IPv4 rule, in the kernel's order.
    pub fn rules_v4(&mut self) -> Result<Vec<RuleInfo>, NetlinkError> {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRule(msg), NLM_F_DUMP, "list rules")?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(r),
                _ => None,
            })
            .map(|r| {
                let mut info = RuleInfo {
                    priority: 0,
                    table: u32::from(r.header.table),
                    iif: None,
                };
                for a in r.attributes {
                    match a {
                        RuleAttribute::Priority(p) => info.priority = p,
                        RuleAttribute::Table(t) => info.table = t,
                        RuleAttribute::Iifname(i) => info.iif = Some(i),
                        _ => {}
                    }
                }
                info
            })
            .collect())
    }

    /// The IPv4 addresses (with prefix length) of interface `dev`, or of every interface when
    /// `dev` is `None`, as `(ifindex, address, prefix_len)`.
    pub fn addrs_v4(
        &mut self,
        dev: Option<&str>,
    ) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
        let index = match dev {
            Some(d) => Some(self.link_index(d)?),
            None => None,
        };
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.request(
            RouteNetlinkMessage::GetAddress(msg),
            NLM_F_DUMP,
            "list addresses",
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })
            });
            if let Some(v) = addr {
                out.push((a.header.index, v, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// The MTU of interface `name`.
    pub fn link_mtu(&mut self, name: &str) -> Result<u32, NetlinkError> {
        self.link_attribute(name, |a| match a {
            LinkAttribute::Mtu(m) => Some(m),
            _ => None,
        })
    }

    fn set_link(
        &mut self,
        name: &str,
        attributes: Vec<LinkAttribute>,
        up: Option<bool>,
        op: &str,
    ) -> Result<(), NetlinkError> {
        let index = self.link_index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = up {
            msg.header.change_mask = LinkFlags::Up;
            if up {
                msg.header.flags = LinkFlags::Up;
            }
        }
        msg.attributes = attributes;
        self.request(RouteNetlinkMessage::SetLink(msg), 0, op)
            .map(drop)
    }

    fn addr_msg(
        &mut self,
        dev: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<AddressMessage, NetlinkError> {
        let index = self.link_index(dev)?;
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        if prefix_len < 31 {
            let host_mask = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let brd = Ipv4Addr::from(u32::from(addr) | host_mask);
            msg.attributes.push(AddressAttribute::Broadcast(brd));
        }
        Ok(msg)
    }

    fn route_msg(&mut self, route: &RouteV4) -> Result<RouteMessage, NetlinkError> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.destination_prefix_length = route.prefix_len;
        match route.table {
            None => msg.header.table = RouteHeader::RT_TABLE_MAIN,
            Some(t) => {
                msg.header.table = u8::try_from(t).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
                msg.attributes.push(RouteAttribute::Table(t));
            }
        }
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = if route.blackhole {
            RouteType::BlackHole
        } else {
            RouteType::Unicast
        };
        msg.header.scope = if route.gateway.is_some() || route.blackhole {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if route.prefix_len > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(route.dst)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(dev) = &route.dev {
            let oif = self.link_index(dev)?;
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        if let Some(metric) = route.metric {
            msg.attributes.push(RouteAttribute::Priority(metric));
        }
        if let Some(mtu) = route.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        Ok(msg)
    }

    fn proxy_msg(&mut self, dev: &str, addr: Ipv4Addr) -> Result<NeighbourMessage, NetlinkError> {
        let index = self.link_index(dev)?;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Proxy;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        Ok(msg)
    }

    /// Sends one request with `NLM_F_REQUEST | NLM_F_ACK | extra_flags` and
    /// collects the replies until the kernel's ack (or error) for it.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0).map_err(NetlinkError::Socket)?;

        let mut replies = Vec::new();
        for _ in 0..MAX_READS {
            self.buf.clear();
            self.buf.reserve(64 * 1024);
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NetlinkError::Timeout(op.to_owned()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::Socket(e)),
            }
            let mut off = 0;
            while off < self.buf.len() {
                let bytes = &self.buf[off..];
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode("zero-length message".into()));
                }
                // Messages are 4-byte aligned.
                off += (len + 3) & !3;
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(err) => {
                        return match err.code {
                            None => Ok(replies),
                            Some(_) => Err(NetlinkError::Kernel {
                                op: op.to_owned(),
                                source: err.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
        Err(NetlinkError::Timeout(op.to_owned()))
    }
}

/// A lookup rule's message: priority and table, nothing else.
fn rule_msg(priority: u32, table: u32) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.action = RuleAction::ToTable;
    msg.header.table = u8::try_from(table).unwrap_or(0);
    msg.attributes.push(RuleAttribute::Priority(priority));
    msg.attributes.push(RuleAttribute::Table(table));
    msg
}

fn check_ifname(name: &str) -> Result<(), NetlinkError> {
    if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains(['/', '\0', ' ']) {
        return Err(NetlinkError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn set_rcvtimeo(sock: &Socket, timeout: Duration) -> io::Result<()> {
    rustix::net::sockopt::set_socket_timeout(
        sock,
        rustix::net::sockopt::Timeout::Recv,
        Some(timeout),
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_limits() {
        assert!(check_ifname("lan0").is_ok());
        assert!(check_ifname("abcdefghijklmno").is_ok());
        assert!(check_ifname("abcdefghijklmnop").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
    }

    #[test]
    fn route_builders() {
        let r = RouteV4::via(
            Ipv4Addr::new(198, 51, 100, 0),
            28,
            Ipv4Addr::new(192, 0, 2, 1),
        )
        .with_mtu(1280);
        assert_eq!(r.mtu, Some(1280));
        assert_eq!(r.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(RouteV4::default_via(Ipv4Addr::LOCALHOST).prefix_len, 0);
    }
}
