//! The kernel plumbing around the TUN data plane, set up over rtnetlink and
//! `/proc/sys/net`, undone in reverse order on exit.
//!
//! ```text
//!  inside ──▶ rule PRIO: iif INSIDE lookup TABLE ──▶ default dev NAME-in  ──▶ natgate (side Inside)
//!  outside ─▶ main: POOL dev NAME-out                                   ──▶ natgate (side Outside)
//!  natgate writes translated packets back into the TUN it read them from;
//!  the kernel routes them on by their new addresses (main table).
//! ```
//!
//! With the fast path attached, its program makes the same routing decision at the interfaces'
//! TC hook and puts what leads into a TUN there itself (`docs/dataplane.md`); the rules and
//! routes below stay the one description of where a packet goes, for the host's own packets,
//! and for whenever the program is not attached.
//!
//! - Two TUN devices tell natgate on which side a packet arrived without guessing from its
//!   addresses. Their MTU is 65535 so the kernel never fragments into them: the engine checks
//!   DF against the configured `outside-mtu`, and the kernel fragments DF=0 packets on the way
//!   out of the real interface.
//! - The `local` table (rule 0) still answers the gateway's own addresses, so ping and ssh to
//!   `lan0` keep working; the rule only catches what the kernel would forward.
//! - Pool addresses on no interface are answered on the outside link by proxy neighbour entries
//!   (one per address; forwarding on makes the kernel use them) with `proxy_delay` 0. The
//!   interface-wide `proxy_arp` switch is left alone: it would answer for every routed address.
//! - The TUNs have `rp_filter` 0: a device without addresses fails every reverse-path check,
//!   strict or loose, and translated packets do not come from where their source routes. As the
//!   kernel uses max(all, device), `conf/all/rp_filter` is set to 0 too, and the real interfaces
//!   get the value `all` had (if larger), so they keep their protection. `accept_local` is 1 on
//!   the TUNs: ICMP errors natgate sends to subscribers come from the gateway's inside address.
//! - Home gateway (`outside-address = true`): the pool is the outside interface's address,
//!   which the `local` table would deliver to the host. Rules before `local` send natgate what
//!   is the NAT's on that address, and `local` moves after them (PRIO-1), before the inside
//!   rule:
//!   - PRIO-2: packets that arrive on the outside interface go to table TABLE+1 (`default dev
//!     NAME-out`).
//!   - PRIO-3: packets from the inside interface to the outside address go to TABLE (the
//!     inside TUN), so a subscriber reaches another's mapping on it (hairpinning, RFC 4787
//!     REQ-9); otherwise `local` would take them first.
//!   - PRIO-4: ICMP the host itself sends to the outside address goes to TABLE+1 (`iif lo`
//!     matches the host's own packets). These are the kernel's errors about translated
//!     packets, whose source is that address: a translated packet the kernel cannot forward
//!     (DF and too big for the real link, no route, or a TTL that runs out on its second
//!     routing when the engine keeps the TTL) gets its error sent "to" the outside address,
//!     which `local` would deliver to the host, and the subscriber would never hear of it.
//!
//!   ARP for the outside address is answered by a proxy entry (it routes to the TUN now);
//!   natgate hands back (writes into the TUN it came from, where no rule matches) every packet
//!   for the host's own address that matches no mapping, and TCP and UDP to the host's own
//!   ports from either side, so the kernel delivers them. The namespace's
//!   `ip_local_port_range` is set outside the NAT's ports.
//!
//! Fail closed: while natgate is not translating, nothing from the inside leaves untranslated.
//! TABLE holds a blackhole default route with the worst metric under the TUN's route. When the
//! TUN goes (the workers stop, or the process dies, SIGKILL included) its route goes with it and
//! the inside rule's packets hit the blackhole instead of falling through to the main table. The
//! blackhole and the rule are set up first and removed last, after `ip_forward` has its old
//! value back, so no packet leaks while a normal stop runs; after SIGKILL they stay, and the
//! next start keeps the rule (it never opens a gap) and takes them over, or leaves them if it
//! fails (forwarding is still on, as the killed run left it). The blackhole is
//! silent: an `unreachable` route would answer possibly spoofed sources.
//!
//! Everything is named so a run killed with SIGKILL leaves state the next start recognises and
//! removes: the rule priorities, the table ids, the TUN names and the proxy entries of the pool.

use std::io;
use std::net::Ipv4Addr;

use crate::config::{PoolSource, Settings, parse_prefix};
use crate::dataplane::tun::{Tun, TunConfig, TunError, TunQueue};
use crate::platform::netlink::{Netlink, NetlinkError, RT_TABLE_LOCAL, RouteV4, RuleV4};

/// MTU of the TUN devices: the largest, so the kernel never fragments a packet into them.
pub const TUN_MTU: u32 = 65_535;

/// Packets a TUN queue holds for its worker. The kernel's default (500) is about what one
/// softirq run of receive processing can put in before the worker is scheduled, so bursts of
/// new flows overflowed it while the worker's core still had time to spare; 2048 is 20 ms at
/// 100 000 packets a second, a bound on the delay a full queue adds.
pub const TUN_TX_QUEUE: u32 = 2048;

/// Home-gateway mode: the host's own ICMP to the outside address runs at `rule-priority - 4`,
/// the inside interface's packets to it at `rule-priority - 3`, the outside rule at
/// `rule-priority - 2`, the kernel's `local` rule moves to `rule-priority - 1`, and the inside
/// rule stays at `rule-priority`, after `local`, so the gateway still answers its inside
/// address (ARP included).
const HOST_ICMP_RULE_OFFSET: u32 = 4;
const HAIRPIN_RULE_OFFSET: u32 = 3;
const OUTSIDE_RULE_OFFSET: u32 = 2;
const LOCAL_RULE_OFFSET: u32 = 1;

/// IP protocol number of ICMP.
const IPPROTO_ICMP: u8 = 1;

/// Metric of the fail-closed blackhole in TABLE: worse than the TUN route's (0), so it only
/// matches while the TUN is gone.
pub const FAIL_CLOSED_METRIC: u32 = u32::MAX;

/// Undo entries of the fail-closed state: the blackhole and the inside rule, set up first.
const FAIL_CLOSED_UNDOS: usize = 2;

/// Most stale rules removed at start (bounds the clean-up loop).
const MAX_STALE_RULES: usize = 64;

/// Why the plumbing could not be set up. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlumbingError {
    /// The process lacks CAP_NET_ADMIN.
    #[error(
        "natgate needs CAP_NET_ADMIN to create TUN devices and routes: run it as root \
         (sudo) or grant the capability (setcap cap_net_admin+ep)"
    )]
    NoCapability,
    /// A configured interface does not exist.
    #[error(
        "interface {name:?} ([interfaces] {key}) does not exist in this network namespace: \
         check the name with `ip link`"
    )]
    NoInterface {
        /// The config key.
        key: &'static str,
        /// The name.
        name: String,
    },
    /// The configured addresses contradict the machine's.
    #[error("{0}")]
    Contradiction(String),
    /// Another natgate runs in this namespace.
    #[error(
        "another natgate is running in this network namespace (its TUN {0} exists): stop it \
         first, or give this one other [tun] name, rule-priority and table"
    )]
    AlreadyRunning(String),
    /// Opening the TUN devices failed.
    #[error("TUN: {0} (is the tun module loaded? `modprobe tun`)")]
    Tun(#[from] TunError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A sysctl could not be read or written.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The key under /proc/sys.
        key: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What start found on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The external pool.
    pub pool: Vec<Ipv4Addr>,
    /// Source of ICMP errors to subscribers.
    pub inside_address: Ipv4Addr,
    /// Home-gateway mode: the NAT's port range on the host's own address.
    pub nat_ports: Option<(u16, u16)>,
    /// The inside interface's own subnets: the sources translated when the file lists no
    /// `inside-networks`.
    pub inside_subnets: Vec<natgate_core::config::Ipv4Prefix>,
    /// Stale objects of an earlier run that were removed.
    pub stale_removed: usize,
    /// Bytes natgate holds besides its engines, measured once it is set up: the part of
    /// `max-memory` the engines cannot have.
    pub own_memory: u64,
    /// Whether the kernel routes a packet crossing the engine once (out of it: the fast path
    /// hands packets to the TUNs itself) rather than twice (into the TUN and out). Decides the
    /// engine's TTL step unless the file sets one.
    pub routed_once: bool,
}

/// One thing to undo on exit.
#[derive(Debug)]
enum Undo {
    Rule {
        priority: u32,
        table: u32,
    },
    /// Remove the fail-closed blackhole of this table.
    FailClosed {
        table: u32,
    },
    /// Put the kernel's `local` rule back at priority 0.
    LocalRule,
    ProxyNeigh {
        dev: String,
        addr: Ipv4Addr,
    },
    Sysctl {
        key: String,
        old: String,
    },
    Link {
        name: String,
    },
}

/// The plumbing in place, and what it takes to remove it.
#[derive(Debug)]
pub struct Plumbing {
    nl: Netlink,
    /// The namespace the plumbing lives in: teardown writes sysctls from a thread in it.
    ns: std::fs::File,
    undo: Vec<Undo>,
    /// The inside TUN (packets from subscribers).
    pub tun_in: String,
    /// The outside TUN (packets to the pool).
    pub tun_out: String,
    /// A stale inside rule (of a run killed before its clean-up) was kept, not removed and
    /// added again, so there was no moment without it.
    inside_rule_kept: bool,
    /// Teardown leaves the blackhole and the inside rule: set while a start that found them
    /// left by a killed run has not succeeded, so that a failing restart (which leaves
    /// `ip_forward` on as the killed run left it) does not open the way out.
    keep_fail_closed: bool,
}

/// The TUN queues for the workers, `(inside, outside)` per worker.
pub type QueuePairs = Vec<(TunQueue, TunQueue)>;

/// Whether the process has CAP_NET_ADMIN in its effective set.
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{key}")
}

fn sysctl_get(key: &str) -> Result<String, PlumbingError> {
    std::fs::read_to_string(sysctl_path(key))
        .map(|s| s.trim().to_owned())
        .map_err(|source| PlumbingError::Sysctl {
            key: key.to_owned(),
            source,
        })
}

fn sysctl_put(key: &str, value: &str) -> Result<(), PlumbingError> {
    std::fs::write(sysctl_path(key), value).map_err(|source| PlumbingError::Sysctl {
        key: key.to_owned(),
        source,
    })
}

fn is_errno(e: &NetlinkError, errno: i32) -> bool {
    matches!(e, NetlinkError::Kernel { source, .. } if source.raw_os_error() == Some(errno))
}

impl Plumbing {
    /// Checks the machine against the config, removes a stale set-up, opens the TUN devices and
    /// sets up routing. The calling thread must be in the gateway's network namespace; sysctls
    /// are written through its `/proc/sys/net`.
    pub fn setup(settings: &Settings) -> Result<(Plumbing, QueuePairs, Resolved), PlumbingError> {
        if !has_net_admin() {
            return Err(PlumbingError::NoCapability);
        }
        let mut nl = Netlink::new()?;
        let ns = std::fs::File::open("/proc/thread-self/ns/net").map_err(|source| {
            PlumbingError::Sysctl {
                key: "/proc/thread-self/ns/net".into(),
                source,
            }
        })?;
        for (key, name) in [("inside", &settings.inside), ("outside", &settings.outside)] {
            if !nl.link_exists(name)? {
                return Err(PlumbingError::NoInterface {
                    key,
                    name: name.clone(),
                });
            }
        }
        let tun_in = format!("{}-in", settings.tun_name);
        let tun_out = format!("{}-out", settings.tun_name);
        let mut plumbing = Plumbing {
            nl,
            ns,
            undo: Vec::new(),
            tun_in,
            tun_out,
            inside_rule_kept: false,
            keep_fail_closed: false,
        };
        plumbing.refuse_if_running()?;
        let stale_removed =
            plumbing.remove_stale(settings)? + plumbing.remove_stale_neighbours(settings)?;
        let mut resolved = plumbing.resolve(settings)?;
        resolved.stale_removed = stale_removed;
        // From here on, a failure undoes what was done (Drop runs teardown).
        let queues = plumbing.build(settings, &resolved)?;
        Ok((plumbing, queues, resolved))
    }

    /// Finds the pool and inside address and checks they agree with the interfaces.
    fn resolve(&mut self, s: &Settings) -> Result<Resolved, PlumbingError> {
        let inside_addrs = self.nl.addrs_v4(Some(&s.inside))?;
        let outside_addrs = self.nl.addrs_v4(Some(&s.outside))?;
        let all = self.nl.addrs_v4(None)?;
        let inside_address = match s.inside_address {
            Some(a) => {
                if !inside_addrs.iter().any(|(_, x, _)| *x == a) {
                    return Err(PlumbingError::Contradiction(format!(
                        "inside-address {a} is not an address of {}: remove the key or \
                         add the address",
                        s.inside
                    )));
                }
                a
            }
            None => inside_addrs.first().map(|(_, a, _)| *a).ok_or_else(|| {
                PlumbingError::Contradiction(format!(
                    "the inside interface {} has no IPv4 address; give it one \
                     (the subscribers' gateway)",
                    s.inside
                ))
            })?,
        };
        let in_subnet = |a: Ipv4Addr, net: Ipv4Addr, len: u8| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(net) & mask
        };
        let (pool, nat_ports) = match &s.pool {
            PoolSource::Addresses(pool) => {
                for a in pool {
                    if let Some((_, local, _)) = all.iter().find(|(_, x, _)| x == a) {
                        return Err(PlumbingError::Contradiction(format!(
                            "pool address {local} is assigned to an interface of this \
                             host: remove it from the interface, or use \
                             [pool] outside-address = true if it is the outside address"
                        )));
                    }
                    if let Some((_, net, len)) = inside_addrs
                        .iter()
                        .find(|(_, net, len)| in_subnet(*a, *net, *len))
                    {
                        return Err(PlumbingError::Contradiction(format!(
                            "pool address {a} lies in the inside subnet {net}/{len}: \
                             external addresses must not be subscriber addresses"
                        )));
                    }
                }
                (pool.clone(), None)
            }
            PoolSource::OutsideAddress { nat_ports } => {
                let pool: Vec<Ipv4Addr> = outside_addrs.iter().map(|(_, a, _)| *a).collect();
                if pool.is_empty() {
                    return Err(PlumbingError::Contradiction(format!(
                        "outside-address = true but {} has no IPv4 address",
                        s.outside
                    )));
                }
                (pool, Some(*nat_ports))
            }
        };
        if pool.contains(&inside_address) {
            return Err(PlumbingError::Contradiction(format!(
                "the inside address {inside_address} is also in the pool"
            )));
        }
        let mut inside_subnets: Vec<_> = inside_addrs
            .iter()
            .filter_map(|(_, a, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                natgate_core::config::Ipv4Prefix::new(Ipv4Addr::from(u32::from(*a) & mask), *len)
            })
            .collect();
        inside_subnets.dedup();
        Ok(Resolved {
            pool,
            inside_address,
            nat_ports,
            inside_subnets,
            stale_removed: 0,
            own_memory: 0,
            routed_once: false,
        })
    }

    /// Removes what a run killed before its clean-up left: natgate's rules (by priority), its
    /// TUN devices (by name), the proxy entries of the pool, and a displaced `local` rule.
    fn remove_stale(&mut self, s: &Settings) -> Result<usize, PlumbingError> {
        let mut removed = 0;
        let ours = [
            (s.rule_priority, s.table),
            (s.rule_priority - HOST_ICMP_RULE_OFFSET, s.table + 1),
            (s.rule_priority - HAIRPIN_RULE_OFFSET, s.table),
            (s.rule_priority - OUTSIDE_RULE_OFFSET, s.table + 1),
            (s.rule_priority - LOCAL_RULE_OFFSET, RT_TABLE_LOCAL),
        ];
        let rules = self.nl.rules_v4()?;
        // The inside rule of a killed run points at the blackhole (and stays, so nothing leaks
        // while this start runs) if it is the one this config would add.
        let inside_rules: Vec<_> = rules
            .iter()
            .filter(|r| r.priority == s.rule_priority && r.table == s.table)
            .collect();
        self.inside_rule_kept =
            inside_rules.len() == 1 && inside_rules[0].iif.as_deref() == Some(&s.inside);
        self.keep_fail_closed = self.inside_rule_kept;
        if self.inside_rule_kept {
            self.nl.replace_route_v4(&fail_closed_route(s.table))?;
        }
        let local_at_zero = rules
            .iter()
            .any(|r| r.priority == 0 && r.table == RT_TABLE_LOCAL);
        for (i, (priority, table)) in ours.into_iter().enumerate() {
            if i == 0 && self.inside_rule_kept {
                continue;
            }
            if table == RT_TABLE_LOCAL && !local_at_zero {
                // Put the local rule back first, so the host never loses its own addresses.
                self.nl.add_rule_v4(&RuleV4 {
                    priority: 0,
                    iif: None,
                    table: RT_TABLE_LOCAL,
                    ..RuleV4::default()
                })?;
                removed += 1;
            }
            for _ in 0..MAX_STALE_RULES {
                if !rules
                    .iter()
                    .any(|r| r.priority == priority && r.table == table)
                {
                    break;
                }
                match self.nl.del_rule_v4(priority, table) {
                    Ok(()) => removed += 1,
                    Err(e) if is_errno(&e, libc::ENOENT) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }

    /// A TUN device that is not persistent exists only while a process holds it open: if ours
    /// exists, another natgate runs in this namespace, and its state is not stale.
    fn refuse_if_running(&mut self) -> Result<(), PlumbingError> {
        for name in [&self.tun_in, &self.tun_out] {
            if self.nl.link_exists(name)? {
                return Err(PlumbingError::AlreadyRunning(name.clone()));
            }
        }
        Ok(())
    }

    fn remove_stale_neighbours(&mut self, s: &Settings) -> Result<usize, PlumbingError> {
        let mut removed = 0;
        let pool = match &s.pool {
            PoolSource::Addresses(pool) => pool.clone(),
            PoolSource::OutsideAddress { .. } => self
                .nl
                .addrs_v4(Some(&s.outside))?
                .into_iter()
                .map(|(_, a, _)| a)
                .collect(),
        };
        {
            for a in &pool {
                match self.nl.del_proxy_neigh_v4(&s.outside, *a) {
                    Ok(()) => removed += 1,
                    Err(e) if is_errno(&e, libc::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), PlumbingError> {
        let old = sysctl_get(key)?;
        if old != value {
            sysctl_put(key, value)?;
            self.undo.push(Undo::Sysctl {
                key: key.to_owned(),
                old,
            });
        }
        Ok(())
    }

    fn build(&mut self, s: &Settings, r: &Resolved) -> Result<QueuePairs, PlumbingError> {
        // Fail closed first: the blackhole, then the rule to it. Undone last, in reverse.
        self.nl.replace_route_v4(&fail_closed_route(s.table))?;
        self.undo.push(Undo::FailClosed { table: s.table });
        if !self.inside_rule_kept {
            self.nl.add_rule_v4(&RuleV4 {
                priority: s.rule_priority,
                iif: Some(s.inside.clone()),
                table: s.table,
                ..RuleV4::default()
            })?;
        }
        self.undo.push(Undo::Rule {
            priority: s.rule_priority,
            table: s.table,
        });
        let open = |name: &str| {
            Tun::open(&TunConfig {
                name: name.to_owned(),
                queues: s.queues,
                nonblocking: true,
            })
        };
        let tin = open(&self.tun_in)?;
        self.undo.push(Undo::Link {
            name: self.tun_in.clone(),
        });
        let tout = open(&self.tun_out)?;
        self.undo.push(Undo::Link {
            name: self.tun_out.clone(),
        });
        for name in [self.tun_in.clone(), self.tun_out.clone()] {
            self.nl.set_mtu(&name, TUN_MTU)?;
            self.nl.set_tx_queue_len(&name, TUN_TX_QUEUE)?;
            // No IPv6 on the TUNs: the engine is IPv4 only, and router solicitations would
            // only be dropped by it.
            let _ = sysctl_put(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1");
            sysctl_put(&format!("net/ipv4/conf/{name}/rp_filter"), "0")?;
            sysctl_put(&format!("net/ipv4/conf/{name}/accept_local"), "1")?;
            self.nl.set_up(&name)?;
        }
        self.set_sysctl("net/ipv4/ip_forward", "1")?;
        // The kernel applies max(all, dev) of rp_filter, and a device without addresses fails
        // any reverse-path check: `all` must be 0. The real interfaces keep what they had.
        let all = sysctl_get("net/ipv4/conf/all/rp_filter")?;
        if all != "0" {
            for dev in [&s.inside, &s.outside] {
                let key = format!("net/ipv4/conf/{dev}/rp_filter");
                let own = sysctl_get(&key)?;
                let keep = own.as_str().max(all.as_str()).to_owned();
                self.set_sysctl(&key, &keep)?;
            }
            self.set_sysctl("net/ipv4/conf/all/rp_filter", "0")?;
        }

        // Outbound: what arrives on the inside interface and is not for the host goes to the
        // inside TUN.
        self.nl.replace_route_v4(
            &RouteV4::dev(Ipv4Addr::UNSPECIFIED, 0, &self.tun_in).in_table(s.table),
        )?;

        match &s.pool {
            PoolSource::Addresses(pool) => {
                // Inbound: the pool is routed to the outside TUN; the upstream finds it by
                // proxy ARP on the outside link (or routes it to us).
                for p in &s.file.pool.addresses {
                    let (net, len) = parse_prefix(p).map_err(PlumbingError::Contradiction)?;
                    self.nl
                        .replace_route_v4(&RouteV4::dev(net, len, &self.tun_out))?;
                }
                self.proxy_arp(&s.outside, pool)?;
            }
            PoolSource::OutsideAddress { nat_ports } => {
                // The host keeps the ports below the NAT's range for its own sockets.
                let (lo, hi) = *nat_ports;
                let range = if lo > 1025 {
                    format!("1024\t{}", lo - 1)
                } else {
                    format!("{}\t65535", u32::from(hi) + 1)
                };
                self.set_sysctl("net/ipv4/ip_local_port_range", &range)?;
                let out_table = s.table + 1;
                self.nl.replace_route_v4(
                    &RouteV4::dev(Ipv4Addr::UNSPECIFIED, 0, &self.tun_out).in_table(out_table),
                )?;
                // Move `local` behind our rule: first add it at its new place, then remove it
                // at 0, so there is no moment without it.
                let moved_to = s.rule_priority - LOCAL_RULE_OFFSET;
                self.nl.add_rule_v4(&RuleV4 {
                    priority: moved_to,
                    iif: None,
                    table: RT_TABLE_LOCAL,
                    ..RuleV4::default()
                })?;
                self.undo.push(Undo::Rule {
                    priority: moved_to,
                    table: RT_TABLE_LOCAL,
                });
                self.nl.add_rule_v4(&RuleV4 {
                    priority: s.rule_priority - OUTSIDE_RULE_OFFSET,
                    iif: Some(s.outside.clone()),
                    table: out_table,
                    ..RuleV4::default()
                })?;
                self.undo.push(Undo::Rule {
                    priority: s.rule_priority - OUTSIDE_RULE_OFFSET,
                    table: out_table,
                });
                for &a in &r.pool {
                    // A subscriber to the outside address: the inside TUN (hairpinning).
                    self.nl.add_rule_v4(&RuleV4 {
                        priority: s.rule_priority - HAIRPIN_RULE_OFFSET,
                        iif: Some(s.inside.clone()),
                        to: Some(a),
                        table: s.table,
                        ..RuleV4::default()
                    })?;
                    self.undo.push(Undo::Rule {
                        priority: s.rule_priority - HAIRPIN_RULE_OFFSET,
                        table: s.table,
                    });
                    // The host's own ICMP errors about translated packets: the outside TUN.
                    self.nl.add_rule_v4(&RuleV4 {
                        priority: s.rule_priority - HOST_ICMP_RULE_OFFSET,
                        iif: Some("lo".into()),
                        to: Some(a),
                        ip_proto: Some(IPPROTO_ICMP),
                        table: out_table,
                    })?;
                    self.undo.push(Undo::Rule {
                        priority: s.rule_priority - HOST_ICMP_RULE_OFFSET,
                        table: out_table,
                    });
                }
                self.nl.del_rule_v4(0, RT_TABLE_LOCAL)?;
                self.undo.push(Undo::LocalRule);
                // ARP for the host's own address now routes (iif outside) to the TUN, not to
                // `local`, so the kernel answers it only as a proxy.
                self.proxy_arp(&s.outside, &r.pool)?;
                // Early demux would attach the host's own TCP and UDP sockets to their packets
                // before routing, and the kernel drops a forwarded packet that has a socket: the
                // host's connections would never get past the SYN.
                self.set_sysctl("net/ipv4/tcp_early_demux", "0")?;
                self.set_sysctl("net/ipv4/udp_early_demux", "0")?;
            }
        }
        let qin = tin.into_queues();
        let qout = tout.into_queues();
        Ok(qin.into_iter().zip(qout).collect())
    }

    /// Answers ARP for `pool` on `dev`: a proxy neighbour entry per address, no delay.
    fn proxy_arp(&mut self, dev: &str, pool: &[Ipv4Addr]) -> Result<(), PlumbingError> {
        for a in pool {
            self.nl.add_proxy_neigh_v4(dev, *a)?;
            self.undo.push(Undo::ProxyNeigh {
                dev: dev.to_owned(),
                addr: *a,
            });
        }
        let key = format!("net/ipv4/neigh/{dev}/proxy_delay");
        self.set_sysctl(&key, "0")
    }

    /// Undoes everything, in reverse order; returns the first error (all steps are tried).
    /// Works from any thread: it runs on one that enters the plumbing's namespace.
    pub fn teardown(&mut self) -> Result<(), PlumbingError> {
        if self.undo.is_empty() {
            return Ok(());
        }
        let ns = self
            .ns
            .try_clone()
            .map_err(|source| PlumbingError::Sysctl {
                key: "netns fd".into(),
                source,
            })?;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                crate::platform::netns::enter(std::os::fd::AsFd::as_fd(&ns)).map_err(|e| {
                    PlumbingError::Sysctl {
                        key: "entering the gateway namespace".into(),
                        source: std::io::Error::other(e),
                    }
                })?;
                self.teardown_here()
            });
            h.join().unwrap_or_else(|_| {
                Err(PlumbingError::Contradiction(
                    "teardown thread panicked".into(),
                ))
            })
        })
    }

    /// The start succeeded: from now on teardown removes everything, the fail-closed state
    /// included (after `ip_forward` has its old value back).
    pub fn running(&mut self) {
        self.keep_fail_closed = false;
    }

    fn teardown_here(&mut self) -> Result<(), PlumbingError> {
        let mut first = Ok(());
        // The blackhole and the inside rule are the first two undo entries.
        let keep = if self.keep_fail_closed {
            FAIL_CLOSED_UNDOS
        } else {
            0
        };
        while self.undo.len() > keep
            && let Some(u) = self.undo.pop()
        {
            let r = match u {
                Undo::Rule { priority, table } => match self.nl.del_rule_v4(priority, table) {
                    Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
                    r => r.map_err(PlumbingError::from),
                },
                Undo::FailClosed { table } => {
                    match self.nl.del_route_v4(&fail_closed_route(table)) {
                        Err(e) if is_errno(&e, libc::ESRCH) => Ok(()),
                        r => r.map_err(PlumbingError::from),
                    }
                }
                Undo::LocalRule => self
                    .nl
                    .add_rule_v4(&RuleV4 {
                        priority: 0,
                        iif: None,
                        table: RT_TABLE_LOCAL,
                        ..RuleV4::default()
                    })
                    .map_err(PlumbingError::from),
                Undo::ProxyNeigh { dev, addr } => match self.nl.del_proxy_neigh_v4(&dev, addr) {
                    Err(e) if is_errno(&e, libc::ENOENT) => Ok(()),
                    r => r.map_err(PlumbingError::from),
                },
                Undo::Sysctl { key, old } => sysctl_put(&key, &old),
                // A TUN goes when its last fd is closed; delete it in case one leaked.
                Undo::Link { name } => match self.nl.link_exists(&name) {
                    Ok(true) => match self.nl.del_link(&name) {
                        Err(NetlinkError::NoSuchLink(_)) => Ok(()),
                        r => r.map_err(PlumbingError::from),
                    },
                    Ok(false) => Ok(()),
                    Err(e) => Err(e.into()),
                },
            };
            if let (Err(e), true) = (r, first.is_ok()) {
                first = Err(e);
            }
        }
        if !self.undo.is_empty() {
            tracing::warn!(
                "the start after a killed run failed: its blackhole and inside rule stay, so \
                 nothing from the inside leaves untranslated"
            );
            self.undo.clear();
        }
        first
    }
}

/// The blackhole default route of `table` that catches the inside's packets while the TUN is
/// gone.
fn fail_closed_route(table: u32) -> RouteV4 {
    RouteV4::blackhole(Ipv4Addr::UNSPECIFIED, 0, FAIL_CLOSED_METRIC).in_table(table)
}

impl Drop for Plumbing {
    fn drop(&mut self) {
        // `teardown` reports errors; here there is nobody to tell.
        let _ = self.teardown();
    }
}
