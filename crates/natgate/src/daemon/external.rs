//! Plumbing for the external addresses of static rules and virtual servers: like the pool,
//! each is routed into the outside TUN and answered by proxy ARP on the outside link, so the
//! upstream reaches them without any change on its side.
//!
//! Which addresses ([`external_prefixes`]): the destination prefix of every inbound rule (and of
//! the inbound half of a bidirectional rule), the rewritten source prefix of every outbound
//! rule (replies come back to it), and every virtual address. Prefixes inside the inside
//! interface's subnets are left alone (the kernel already delivers them on the inside, where
//! they belong), and so are `/0` matches: a default route into the TUN would swallow the
//! gateway's own traffic.
//!
//! Addresses are only ever added while natgate runs, also when a `ctl rule delete` or a
//! reload drops the rule that needed them: sessions a deleted rule made keep their translation
//! until they end (`docs/static-nat.md`), and their inbound packets must still reach natgate. An
//! address that no rule or session claims any more is dropped by the engine (and counted),
//! which is also what an upstream that still routes it to us should see. Everything goes at
//! exit: the routes with the TUN device, the proxy entries explicitly.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use natgate_core::Direction;
use natgate_core::rules::{Action, RuleChain};
use natgate_core::vserver::VirtualServerSpec;

use super::plumbing::PlumbingError;
use crate::platform::netlink::{Netlink, NetlinkError, RouteV4};

/// Longest prefix (fewest addresses) that still gets one proxy-ARP entry per address; a
/// shorter one is only routed, and the upstream must route it to the gateway (a /15 of proxy
/// entries would be 131 072 kernel objects).
pub const MAX_PROXY_PREFIX_LEN: u8 = 16;

/// The external prefixes `rules` and `virtual_servers` need routed into natgate, sorted and
/// without duplicates. `inside` lists the inside interface's subnets.
pub fn external_prefixes(
    rules: &RuleChain,
    virtual_servers: &[VirtualServerSpec],
    inside: &[(Ipv4Addr, u8)],
) -> Vec<(Ipv4Addr, u8)> {
    let mut out = BTreeSet::new();
    for rule in rules.iter() {
        for one in rule.one_way() {
            let prefix = match (one.direction, one.action) {
                (Direction::Inbound, _) => Some(one.dst),
                (Direction::Outbound, Action::Translate(t)) => t.src.and_then(|t| t.addr),
                (Direction::Outbound, Action::Exempt) => None,
            };
            if let Some(p) = prefix {
                out.insert((p.addr(), p.prefix_len()));
            }
        }
    }
    for v in virtual_servers {
        out.insert((v.address, 32));
    }
    out.into_iter()
        .filter(|&(a, len)| {
            len > 0
                && !inside
                    .iter()
                    .any(|&(net, l)| l <= len && same_net(a, net, l))
        })
        .collect()
}

/// Whether `a` and `b` share their first `len` bits.
fn same_net(a: Ipv4Addr, b: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    a.to_bits() & mask == b.to_bits() & mask
}

/// The routes and proxy entries of the static external addresses.
#[derive(Debug)]
pub struct ExternalAddresses {
    nl: Netlink,
    outside: String,
    tun_out: String,
    pool: HashSet<Ipv4Addr>,
    inside: Vec<(Ipv4Addr, u8)>,
    routed: BTreeSet<(Ipv4Addr, u8)>,
    proxied: BTreeSet<Ipv4Addr>,
}

fn is_errno(e: &NetlinkError, errno: i32) -> bool {
    matches!(e, NetlinkError::Kernel { source, .. } if source.raw_os_error() == Some(errno))
}

impl ExternalAddresses {
    /// Plumbing on `outside` into `tun_out`, in the calling thread's namespace. The pool's own
    /// addresses already have their proxy entries and are skipped.
    pub fn new(
        outside: &str,
        inside: &str,
        tun_out: &str,
        pool: &[Ipv4Addr],
    ) -> Result<Self, PlumbingError> {
        let mut nl = Netlink::new()?;
        let inside = nl
            .addrs_v4(Some(inside))?
            .into_iter()
            .map(|(_, a, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                (Ipv4Addr::from_bits(a.to_bits() & mask), len)
            })
            .collect();
        Ok(ExternalAddresses {
            nl,
            outside: outside.to_owned(),
            tun_out: tun_out.to_owned(),
            pool: pool.iter().copied().collect(),
            inside,
            routed: BTreeSet::new(),
            proxied: BTreeSet::new(),
        })
    }

    /// Routes and answers ARP for every external prefix of `rules` and `virtual_servers` not
    /// yet plumbed. Stops at the first failure; what was added stays recorded for removal.
    pub fn add(
        &mut self,
        rules: &RuleChain,
        virtual_servers: &[VirtualServerSpec],
    ) -> Result<(), PlumbingError> {
        for (net, len) in external_prefixes(rules, virtual_servers, &self.inside) {
            if self.routed.contains(&(net, len)) || len == 32 && self.pool.contains(&net) {
                // Plumbed already, or a pool address (the home gateway's own too), which is
                // routed and answered with the pool.
                continue;
            }
            self.nl
                .replace_route_v4(&RouteV4::dev(net, len, &self.tun_out))?;
            if len < MAX_PROXY_PREFIX_LEN {
                tracing::warn!(
                    prefix = %format!("{net}/{len}"),
                    "no proxy ARP for a prefix this large: route it to the gateway upstream"
                );
            } else {
                let first = net.to_bits();
                let last = first | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                for a in (first..=last).map(Ipv4Addr::from_bits) {
                    if self.pool.contains(&a) || self.proxied.contains(&a) {
                        continue;
                    }
                    // A run killed with SIGKILL leaves its entries: take one over rather than
                    // fail.
                    match self.nl.add_proxy_neigh_v4(&self.outside, a) {
                        Err(e) if is_errno(&e, libc::EEXIST) => {}
                        r => r?,
                    }
                    self.proxied.insert(a);
                }
            }
            // Recorded once complete, so a failure half-way is retried by the next change.
            self.routed.insert((net, len));
            tracing::info!(prefix = %format!("{net}/{len}"), "static external prefix routed into natgate");
        }
        Ok(())
    }

    /// Removes the proxy entries and routes; returns the first error (all are tried).
    pub fn teardown(&mut self) -> Result<(), PlumbingError> {
        let mut first = Ok(());
        for a in std::mem::take(&mut self.proxied) {
            match self.nl.del_proxy_neigh_v4(&self.outside, a) {
                Err(e) if !is_errno(&e, libc::ENOENT) && first.is_ok() => first = Err(e.into()),
                _ => {}
            }
        }
        for (net, len) in std::mem::take(&mut self.routed) {
            // Gone already when the TUN went first.
            let _ = self.nl.del_route_v4(&RouteV4::dev(net, len, &self.tun_out));
        }
        first
    }
}

impl Drop for ExternalAddresses {
    fn drop(&mut self) {
        // `teardown` reports errors; here there is nobody to tell.
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(rules: &[&str]) -> RuleChain {
        #[derive(serde::Deserialize)]
        struct File {
            rule: RuleChain,
        }
        let text: String = rules.iter().map(|r| format!("[[rule]]\n{r}\n")).collect();
        let f: File = toml::from_str(&text).expect("rules");
        f.rule
    }

    #[test]
    fn inbound_destinations_outbound_sources_and_virtual_addresses() {
        let rules = chain(&[
            // 1:1 host NAT, both ways: its external address.
            "id = 1\ndirection = \"outbound\"\nbidirectional = true\nsrc = \"100.64.0.10/32\"\n\
             action.translate.src = { addr = \"198.18.1.10/32\" }",
            // Port forward: the destination it arrives on.
            "id = 2\ndirection = \"inbound\"\nproto = \"tcp\"\ndst = \"198.18.2.80/32\"\n\
             dst-ports = 80\naction.translate.dst = { addr = \"100.64.0.11/32\", port = 8888 }",
            // Exemption: nothing.
            "id = 3\ndirection = \"outbound\"\ndst = \"192.0.2.0/24\"\naction = \"exempt\"",
            // Inbound exemption towards an inside network: nothing (the kernel delivers it).
            "id = 4\ndirection = \"inbound\"\ndst = \"100.64.1.0/24\"\naction = \"exempt\"",
            // Twice-NAT: our side's virtual prefix; the remote one is the other site's.
            "id = 5\ndirection = \"outbound\"\nbidirectional = true\nsrc = \"100.64.0.0/24\"\n\
             dst = \"172.16.0.0/24\"\naction.translate.src = { addr = \"192.168.50.0/24\" }\n\
             action.translate.dst = { addr = \"10.0.0.0/24\" }",
        ]);
        let vs: VirtualServerSpec = toml::from_str(
            "address = \"198.18.3.80\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round-robin\"",
        )
        .expect("vserver");
        let inside = [(Ipv4Addr::new(100, 64, 0, 0), 16)];
        let got = external_prefixes(&rules, &[vs], &inside);
        let want = [
            (Ipv4Addr::new(192, 168, 50, 0), 24),
            (Ipv4Addr::new(198, 18, 1, 10), 32),
            (Ipv4Addr::new(198, 18, 2, 80), 32),
            (Ipv4Addr::new(198, 18, 3, 80), 32),
        ];
        assert_eq!(got, want);
        // A one-way outbound rule without an address rewrite, and an inbound rule matching
        // every destination: nothing to route.
        let none = chain(&[
            "id = 1\ndirection = \"outbound\"\nproto = \"udp\"\nsrc-ports = 53\n\
             action.translate.src = { port = 5353 }",
            "id = 2\ndirection = \"inbound\"\naction = \"exempt\"",
        ]);
        assert!(external_prefixes(&none, &[], &inside).is_empty());
    }
}
