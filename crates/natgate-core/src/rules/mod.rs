//! Static NAT rules: fixed translations that win over dynamic NAPT.
//!
//! A [`Rule`] matches a packet by direction, protocol, source and destination prefix and optional
//! port ranges, and either rewrites its source and/or destination ([`Action::Translate`]) or
//! exempts it from translation altogether ([`Action::Exempt`], RFC 6888 REQ-6). Every rewrite is
//! a bijection of the matched set onto the target set (prefix to prefix of the same length,
//! keeping the host bits; port range to a port range of the same size, keeping the offset), so
//! a rule can always be run backwards: that is what [`Rule::reverse`] does for `bidirectional`
//! rules.
//!
//! Rules live in a [`RuleChain`] ([`chain`]) in id order; the first matching rule in that order
//! wins. The chain is compiled into [`CompiledRules`] ([`matcher`]) whose lookup cost depends on
//! the number of distinct prefix-length classes, not on the number of rules. The precise
//! semantics are in `docs/static-nat.md`.

pub mod chain;
pub mod matcher;
mod ports;

#[cfg(test)]
mod tests;

pub use crate::endpoint::{Ipv4Prefix, PortRange};
pub use chain::RuleChain;
pub use matcher::{CompiledRules, Rewrite};

use crate::endpoint::{Direction, Endpoint, Protocol};
use core::fmt;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A rule's number in the chain. Lower ids are consulted first; ids are stable (deleting a rule
/// does not renumber the others), only [`RuleChain::insert`] at a taken id shifts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct RuleId(pub u32);

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One static rule, as the config states it (`[[rule]]`) and `natgate ctl` lists it.
///
/// A rule's interface side is the one its direction arrives on ([`Side::arrival_direction`]):
/// the gateway has exactly two sides, so a separate side field could only repeat or contradict
/// `direction`.
///
/// [`Side::arrival_direction`]: crate::Side::arrival_direction
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rule {
    /// Position in the chain; set by [`RuleChain::insert`] and [`RuleChain::append`].
    pub id: RuleId,
    /// The direction of the packets the rule matches (and of the flows it starts).
    pub direction: Direction,
    /// Also match the reverse: replies and reverse-initiated flows are translated back by the
    /// rule [`Rule::reverse`] derives, so a network-to-network mapping is one line, not two.
    #[serde(default, skip_serializing_if = "core::ops::Not::not")]
    pub bidirectional: bool,
    /// The protocol; any translated protocol when absent. For ICMP the "port" is the query
    /// identifier (RFC 5508 section 3.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Protocol>,
    /// Source prefix; `0.0.0.0/0` when absent.
    #[serde(default = "any_prefix")]
    pub src: Ipv4Prefix,
    /// Source ports (`80` or `"1024-2047"`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ports")]
    pub src_ports: Option<PortRange>,
    /// Destination prefix; `0.0.0.0/0` when absent.
    #[serde(default = "any_prefix")]
    pub dst: Ipv4Prefix,
    /// Destination ports; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ports")]
    pub dst_ports: Option<PortRange>,
    /// What to do with a matching packet.
    pub action: Action,
}

fn any_prefix() -> Ipv4Prefix {
    ANY
}

/// `0.0.0.0/0`.
const ANY: Ipv4Prefix = match Ipv4Prefix::new(Ipv4Addr::UNSPECIFIED, 0) {
    Some(p) => p,
    None => unreachable!(),
};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Rewrite the source and/or the destination (both at once is twice-NAT).
    Translate(Translate),
    /// Leave the packet untranslated, and keep dynamic NAPT off it too (RFC 6888 REQ-6: a CGN
    /// must be able to exempt chosen destinations, such as a provider's own services).
    Exempt,
}

/// The rewrites of [`Action::Translate`]; at least one is present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Translate {
    /// The new source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Target>,
    /// The new destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Target>,
}

/// Where one field of the packet goes; at least one part is present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Target {
    /// The new prefix, of the same length as the matched one: the host bits are kept, so an
    /// address is the `/32` case and a network maps 1:1 onto a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Prefix>,
    /// The first port of the new range: the matched port range maps onto the same number of
    /// ports from here, keeping the offset (so one port maps to one port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// Why a rule or a chain change was refused. Messages name the rule ids involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The rule is not well formed.
    #[error("rule {id}: {why}")]
    Invalid {
        /// The rule.
        id: RuleId,
        /// What is wrong.
        why: String,
    },
    /// The rule would make one external endpoint stand for two different internal endpoints.
    #[error("rule {id} conflicts with rule {other}: {why}")]
    Conflict {
        /// The rule being added.
        id: RuleId,
        /// The rule already in the chain.
        other: RuleId,
        /// The overlap.
        why: String,
    },
    /// Two rules with one id in a loaded chain.
    #[error("rule {0}: the id is used twice")]
    DuplicateId(RuleId),
    /// No rule has this id.
    #[error("rule {0}: no such rule")]
    NotFound(RuleId),
    /// Renumbering or appending would push an id past `u32::MAX`.
    #[error("rule {0}: no room to renumber past id {max}", max = u32::MAX)]
    IdsExhausted(RuleId),
}

/// Bits of an address that a `/len` keeps from the original (the host part).
pub(crate) const fn host_mask(len: u8) -> u32 {
    if len >= 32 { 0 } else { u32::MAX >> len }
}

/// The matched set of one field after `target` rewrites it.
fn image(
    prefix: Ipv4Prefix,
    ports: Option<PortRange>,
    target: Option<&Target>,
) -> (Ipv4Prefix, Option<PortRange>) {
    let Some(t) = target else {
        return (prefix, ports);
    };
    let ports = match (t.port, ports) {
        (Some(p), Some(r)) => Some(PortRange {
            first: p,
            last: p.saturating_add(r.last - r.first),
        }),
        _ => ports,
    };
    (t.addr.unwrap_or(prefix), ports)
}

/// The inverse of `target` applied to the field `(prefix, ports)`.
fn inverse(prefix: Ipv4Prefix, ports: Option<PortRange>, target: &Target) -> Target {
    Target {
        addr: target.addr.map(|_| prefix),
        port: target.port.and(ports.map(|r| r.first)),
    }
}

/// `e` rewritten by `target`, for a field that matched `(prefix, ports)`.
fn apply(e: Endpoint, prefix: Ipv4Prefix, ports: Option<PortRange>, target: &Target) -> Endpoint {
    let addr = match target.addr {
        Some(t) => {
            let keep = host_mask(prefix.prefix_len());
            Ipv4Addr::from_bits(t.addr().to_bits() | (e.addr.to_bits() & keep))
        }
        None => e.addr,
    };
    let port = match (target.port, ports) {
        (Some(p), Some(r)) => p.wrapping_add(e.port.wrapping_sub(r.first)),
        _ => e.port,
    };
    Endpoint::new(addr, port)
}

fn ports_match(r: Option<PortRange>, port: u16) -> bool {
    r.is_none_or(|r| r.contains(port))
}

impl Rule {
    /// A one-way rule matching `direction` from `src` to `dst`, any protocol and port.
    pub fn new(direction: Direction, src: Ipv4Prefix, dst: Ipv4Prefix, action: Action) -> Self {
        Rule {
            id: RuleId(0),
            direction,
            bidirectional: false,
            proto: None,
            src,
            src_ports: None,
            dst,
            dst_ports: None,
            action,
        }
    }

    /// Checks that the rule is a well-formed bijection, so that it can be reversed and its
    /// external endpoints stand for one internal endpoint each (static Basic NAT, RFC 2663
    /// section 4.1, is one to one): target prefixes as long as the matched ones (keeping the
    /// host bits needs equal lengths), and port targets only over a matched port range,
    /// ending at or below 65535.
    pub fn check(&self) -> Result<(), RuleError> {
        let invalid = |why: String| Err(RuleError::Invalid { id: self.id, why });
        for (name, r) in [("src-ports", self.src_ports), ("dst-ports", self.dst_ports)] {
            if let Some(r) = r
                && r.first > r.last
            {
                return invalid(format!("{name}: {} is after {}", r.first, r.last));
            }
        }
        let t = match self.action {
            Action::Exempt => return Ok(()),
            Action::Translate(t) => t,
        };
        if t.src.is_none() && t.dst.is_none() {
            return invalid("translate needs src or dst (use action = \"exempt\" for none)".into());
        }
        let fields = [
            ("src", self.src, self.src_ports, t.src),
            ("dst", self.dst, self.dst_ports, t.dst),
        ];
        for (name, prefix, ports, target) in fields {
            let Some(target) = target else { continue };
            if target.addr.is_none() && target.port.is_none() {
                return invalid(format!("translate.{name} needs addr or port"));
            }
            if let Some(a) = target.addr
                && a.prefix_len() != prefix.prefix_len()
            {
                return invalid(format!(
                    "translate.{name}.addr {a} must be as long as {name} {prefix}: prefixes map \
                     1:1 keeping the host bits"
                ));
            }
            if let Some(p) = target.port {
                let Some(r) = ports else {
                    return invalid(format!(
                        "translate.{name}.port needs {name}-ports: ports map 1:1 over the \
                         matched range"
                    ));
                };
                if u32::from(p) + u32::from(r.last - r.first) > u32::from(u16::MAX) {
                    return invalid(format!(
                        "translate.{name}.port {p}: {} ports from there pass 65535",
                        r.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rule that undoes this one, for `bidirectional`: the opposite direction, matching
    /// what this rule's packets look like after translation with source and destination
    /// swapped (a reply), and rewriting each translated field back to the original. A reply
    /// to a translated packet is therefore translated back to exactly the original endpoints.
    /// Only meaningful for a rule that passed [`Rule::check`]; the result is never itself
    /// bidirectional.
    pub fn reverse(&self) -> Rule {
        let (ts, td) = match self.action {
            Action::Translate(t) => (t.src, t.dst),
            Action::Exempt => (None, None),
        };
        let (src2, sp2) = image(self.src, self.src_ports, ts.as_ref());
        let (dst2, dp2) = image(self.dst, self.dst_ports, td.as_ref());
        let action = match self.action {
            Action::Exempt => Action::Exempt,
            Action::Translate(_) => Action::Translate(Translate {
                src: td.map(|t| inverse(self.dst, self.dst_ports, &t)),
                dst: ts.map(|t| inverse(self.src, self.src_ports, &t)),
            }),
        };
        Rule {
            id: self.id,
            direction: match self.direction {
                Direction::Outbound => Direction::Inbound,
                Direction::Inbound => Direction::Outbound,
            },
            bidirectional: false,
            proto: self.proto,
            src: dst2,
            src_ports: dp2,
            dst: src2,
            dst_ports: sp2,
            action,
        }
    }

    /// The one-way rules this rule stands for: itself, and its reverse when bidirectional.
    pub fn one_way(&self) -> impl Iterator<Item = Rule> + use<> {
        let fwd = Rule {
            bidirectional: false,
            ..*self
        };
        let rev = self.bidirectional.then(|| self.reverse());
        core::iter::once(fwd).chain(rev)
    }

    /// Whether this rule, taken one way (ignoring `bidirectional`), matches the packet. This
    /// is the reference semantics that [`CompiledRules::lookup`] implements without a scan.
    pub fn matches(&self, dir: Direction, proto: Protocol, src: Endpoint, dst: Endpoint) -> bool {
        self.direction == dir
            && self.proto.is_none_or(|p| p == proto)
            && self.src.contains(src.addr)
            && self.dst.contains(dst.addr)
            && ports_match(self.src_ports, src.port)
            && ports_match(self.dst_ports, dst.port)
    }

    /// What this rule does to a packet it [`matches`](Rule::matches): the reference for
    /// [`CompiledRules::lookup`]'s rewrite.
    pub fn rewrite(&self, src: Endpoint, dst: Endpoint) -> Rewrite {
        match self.action {
            Action::Exempt => Rewrite::NONE,
            Action::Translate(t) => Rewrite {
                new_src: t.src.map(|t| apply(src, self.src, self.src_ports, &t)),
                new_dst: t.dst.map(|t| apply(dst, self.dst, self.dst_ports, &t)),
            },
        }
    }

    /// The static external binding this rule, taken one way, makes, if any: an outbound source
    /// rewrite or an inbound destination rewrite ties external endpoints to internal ones.
    fn binding(&self) -> Option<Binding> {
        let Action::Translate(t) = self.action else {
            return None;
        };
        let (int, ext) = match (self.direction, t.src, t.dst) {
            (Direction::Outbound, Some(ts), _) => (
                (self.src, self.src_ports),
                image(self.src, self.src_ports, Some(&ts)),
            ),
            (Direction::Inbound, _, Some(td)) => (
                image(self.dst, self.dst_ports, Some(&td)),
                (self.dst, self.dst_ports),
            ),
            _ => return None,
        };
        let full = PortRange {
            first: 0,
            last: u16::MAX,
        };
        Some(Binding {
            proto: self.proto,
            int: (int.0, int.1.unwrap_or(full)),
            ext: (ext.0, ext.1.unwrap_or(full)),
        })
    }
}

/// External endpoints `ext` standing for internal endpoints `int` (offset for offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Binding {
    proto: Option<Protocol>,
    int: (Ipv4Prefix, PortRange),
    ext: (Ipv4Prefix, PortRange),
}

impl Binding {
    /// Whether some external endpoint is in both.
    fn overlaps(&self, o: &Binding) -> bool {
        let proto = match (self.proto, o.proto) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let (pa, ra) = self.ext;
        let (pb, rb) = o.ext;
        proto
            && (pa.contains(pb.addr()) || pb.contains(pa.addr()))
            && ra.first <= rb.last
            && rb.first <= ra.last
    }

    /// Whether both map every external endpoint they share to the same internal endpoint: the
    /// same address and port offsets (host bits are kept, so the offset is the whole map).
    fn same_map(&self, o: &Binding) -> bool {
        let delta = |b: &Binding| {
            (
                b.int
                    .0
                    .addr()
                    .to_bits()
                    .wrapping_sub(b.ext.0.addr().to_bits()),
                b.int.1.first.wrapping_sub(b.ext.1.first),
            )
        };
        delta(self) == delta(o)
    }

    fn describe(&self) -> String {
        let proto = self.proto.map_or("any protocol", Protocol::name);
        format!(
            "{proto} {} ports {} -> {} ports {}",
            self.ext.0, self.ext.1, self.int.0, self.int.1
        )
    }
}
