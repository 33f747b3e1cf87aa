//! Which worker owns a packet, when a gateway runs one engine per core (one *shard* each).
//!
//! Each engine holds its own state, so every packet must reach the engine that holds its
//! state. This is policy, decided here from the packet as the engine reads it
//! ([`Steering::owner`]); a driver only moves the packet to the owner it names.
//!
//! - outbound (arrived inside): the worker `hash(source address) % N`. All of one
//!   subscriber's state (paired pooling, EIM mappings, per-subscriber limits) lives in one engine.
//!   With deterministic NAT (RFC 7422) it is the subscriber's offset in the inside prefix
//!   modulo N instead, the rule the allocator's [`Share`] uses.
//! - inbound (arrived outside): the worker whose allocator gave out the destination port, by
//!   the same formula the allocators use to split the port space ([`Ownership`]): with dynamic
//!   allocation each worker's allocator hands out only the 64-port blocks `b` with
//!   `b % N == worker` ([`block_owner`]), so parity and range preservation still hold within
//!   every block; with port blocks, block `b` of the configured size belongs to worker
//!   `b % N` ([`BlockSettings::worker_of`]); with deterministic NAT, the port's subscriber's
//!   worker ([`DeterministicMap::worker_of_external`]), and overflow blocks by their block. ICMP
//!   query replies go by identifier; ICMP errors by the port (identifier) of the packet they
//!   quote, which is the external endpoint.
//! - inbound non-first fragments carry no port: the worker that steered the first fragment
//!   writes a hint (source, destination, protocol, IP id -> worker) into a small lock-free table
//!   ([`Steering`]); later fragments follow it. A later fragment that arrives before its first
//!   fragment has no hint and is processed where it was read (it then waits in that engine for a
//!   first fragment that went elsewhere, and expires): fragments that overtake their first
//!   fragment across queues are lost with more than one queue.
//! - hairpinning needs the mappings of both subscribers in one engine, so with more than one
//!   queue it works only when both subscribers' ports belong to the same worker.
//! - static NAT rules and virtual servers ([`StaticSteer`]): their flows have no allocated port
//!   and their two directions have different keys (an inbound flow to a port forward goes by a
//!   static port, its replies come from an inside host), so every packet that a rule, a rule's
//!   binding or a virtual server could claim goes to worker [`STATIC_OWNER`], which therefore
//!   holds every static session. An ICMP error goes where the flow it quotes goes: its quoted
//!   packet, turned around, is a packet of that flow arriving on the same side (RFC 5508
//!   REQ-4/5: the error must find the session it is about).
//!
//! A packet the engine's reader refuses (not IPv4, a bad header checksum, a truncated header)
//! has no owner: whoever read it hands it to its own engine, which drops and counts it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::alloc::{BlockSettings, DeterministicMap, Share};
use crate::config::{Allocation, Config};
use crate::endpoint::{Direction, Endpoint, Protocol, Side};
use crate::engine::icmp_error::parse_inner;
use crate::engine::packet::{self, Fragment, Kind, Parsed};
use crate::rules::{Action, CompiledRules, Ipv4Prefix, PortRange, Rule, RuleChain, RuleId, Target};
use crate::vserver::VirtualServer;

/// The worker that holds every static (rule or virtual-server) session.
pub const STATIC_OWNER: usize = 0;

/// Which packets belong to static translations, for steering them to [`STATIC_OWNER`].
///
/// A first-match rule set compiled like the engine's own chain (so the cost does not grow with
/// the number of rules): every one-way rule of the chain as it is (what it matches, not what it
/// does), plus, for each binding, its external endpoints as destinations (replies and inbound
/// flows arrive there, and subscribers' flows hairpinned to it) and, for one-way inbound rules,
/// its internal endpoints as sources (replies to the flows it let in leave from there), plus every
/// virtual address (as a
/// destination either way) and real server target (as an outbound source).
#[derive(Debug, Clone)]
pub struct StaticSteer {
    matcher: Option<CompiledRules>,
}

impl StaticSteer {
    /// Nothing static: every packet goes by the dynamic rules.
    pub fn none() -> Self {
        StaticSteer { matcher: None }
    }

    /// The set for `rules` and `virtual_servers`.
    pub fn new(rules: &RuleChain, virtual_servers: &[VirtualServer], seed: u64) -> Self {
        let mut claims: Vec<Rule> = Vec::new();
        for rule in rules.iter() {
            for one in rule.one_way() {
                // What the rule matches, whatever it does to it.
                claims.push(Rule {
                    action: Action::Exempt,
                    ..one
                });
                let Some((ext, int)) = binding(&one) else {
                    continue;
                };
                claims.push(claim(Direction::Inbound, End::Dst, one.proto, ext));
                // A subscriber reaching the binding's external side is hairpinned to it.
                claims.push(claim(Direction::Outbound, End::Dst, one.proto, ext));
                if one.direction == Direction::Inbound && !rule.bidirectional {
                    // The replies of flows a one-way inbound rule let in match no rule. (Those
                    // of other bindings match the rule or its reverse; claiming a whole inside
                    // side would also pull its hosts' dynamic flows away from the worker that
                    // owns their ports.)
                    claims.push(claim(Direction::Outbound, End::Src, one.proto, int));
                }
            }
        }
        for v in virtual_servers {
            let proto = Some(v.protocol());
            let host = |e: Endpoint| {
                let port = PortRange {
                    first: e.port,
                    last: e.port,
                };
                Ipv4Prefix::new(e.addr, 32).map(|p| (p, Some(port)))
            };
            if let Some(a) = host(v.address()) {
                claims.push(claim(Direction::Inbound, End::Dst, proto, a));
                claims.push(claim(Direction::Outbound, End::Dst, proto, a));
            }
            for s in v.servers() {
                claims.extend(
                    host(s.target()).map(|t| claim(Direction::Outbound, End::Src, proto, t)),
                );
            }
        }
        if claims.is_empty() {
            return StaticSteer::none();
        }
        for (i, r) in claims.iter_mut().enumerate() {
            r.id = RuleId(u32::try_from(i + 1).unwrap_or(u32::MAX));
        }
        // Exemptions bind nothing, so they never conflict; only more than 2^32 entries could
        // fail, and then nothing is claimed.
        match RuleChain::from_rules(claims) {
            Ok(chain) => StaticSteer {
                matcher: Some(chain.compile(seed)),
            },
            Err(_) => StaticSteer::none(),
        }
    }

    /// Whether a packet that arrived on `side` (read as `p`) may belong to a static
    /// translation.
    fn claims(&self, side: Side, pkt: &[u8], p: &Parsed) -> bool {
        let Some(m) = &self.matcher else {
            return false;
        };
        let Some((proto, src, dst)) = endpoints(side, pkt, p) else {
            return false;
        };
        let dir = match side {
            Side::Inside => Direction::Outbound,
            Side::Outside => Direction::Inbound,
        };
        m.lookup(dir, proto, src, dst).is_some()
    }
}

/// A prefix with optional ports: one side of a binding.
pub type Part = (Ipv4Prefix, Option<PortRange>);

/// Which end of a packet a claim matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Src,
    Dst,
}

/// An exemption matching packets in `dir` whose `end` is in `part`.
fn claim(dir: Direction, end: End, proto: Option<Protocol>, (prefix, ports): Part) -> Rule {
    const ANY: Ipv4Prefix = match Ipv4Prefix::new(Ipv4Addr::UNSPECIFIED, 0) {
        Some(p) => p,
        None => unreachable!(),
    };
    let mut r = match end {
        End::Dst => Rule::new(dir, ANY, prefix, Action::Exempt),
        End::Src => Rule::new(dir, prefix, ANY, Action::Exempt),
    };
    r.proto = proto;
    match end {
        End::Dst => r.dst_ports = ports,
        End::Src => r.src_ports = ports,
    }
    r
}

/// The binding of a one-way rule (`docs/static-nat.md`, "Conflicts"): its external and its
/// internal endpoints, if it rewrites the gateway's side (an inbound destination, an outbound
/// source).
pub fn binding(one: &Rule) -> Option<(Part, Part)> {
    let Action::Translate(t) = one.action else {
        return None;
    };
    let image = |prefix: Ipv4Prefix, ports: Option<PortRange>, target: &Target| {
        let ports = match (target.port, ports) {
            (Some(p), Some(r)) => Some(PortRange {
                first: p,
                last: p.saturating_add(r.last - r.first),
            }),
            (_, r) => r,
        };
        (target.addr.unwrap_or(prefix), ports)
    };
    match (one.direction, t.src, t.dst) {
        (Direction::Inbound, _, Some(td)) => {
            Some(((one.dst, one.dst_ports), image(one.dst, one.dst_ports, &td)))
        }
        (Direction::Outbound, Some(ts), _) => {
            Some((image(one.src, one.src_ports, &ts), (one.src, one.src_ports)))
        }
        _ => None,
    }
}

/// Protocol, source and destination endpoints of a whole packet or first fragment; ICMP
/// queries use their identifier as the port on both sides (RFC 5508). An ICMP error stands for
/// the flow it quotes: its quoted packet went the other way, so its endpoints are swapped
/// (an error about an error is not claimed).
fn endpoints(side: Side, pkt: &[u8], p: &Parsed) -> Option<(Protocol, Endpoint, Endpoint)> {
    if p.kind == Kind::IcmpError {
        let inner = parse_inner(pkt, p, side == Side::Outside).ok()?;
        let (src, dst) = query_ports(inner.proto, inner.src, inner.dst);
        return Some((inner.proto, dst, src));
    }
    let (src, dst) = query_ports(p.proto, p.src, p.dst);
    Some((p.proto, src, dst))
}

/// For an ICMP query, its identifier as the port of both ends (the reader puts it on the end
/// that names the inside, and leaves the other 0).
fn query_ports(proto: Protocol, mut src: Endpoint, mut dst: Endpoint) -> (Endpoint, Endpoint) {
    if proto == Protocol::Icmp {
        let id = src.port.max(dst.port);
        src.port = id;
        dst.port = id;
    }
    (src, dst)
}

/// The external port (identifier) an inbound first fragment or whole packet is for: TCP and
/// UDP by destination port, ICMP queries by identifier, ICMP errors by the source port of the
/// packet they quote (one the NAT sent out, from its external endpoint).
fn inbound_port(pkt: &[u8], p: &Parsed) -> Option<u16> {
    match p.kind {
        Kind::Flow => Some(p.dst.port),
        Kind::IcmpError => parse_inner(pkt, p, true).ok().map(|inner| inner.src.port),
    }
}

/// Ports per allocation block; block `b` (ports `64b..64b+63`) belongs to worker `b % N`.
pub const BLOCK: u16 = 64;

/// Entries of the fragment hint table (a power of two).
const HINTS: usize = 4096;

/// The worker that owns external port (or ICMP identifier) `port` among `n`.
pub fn block_owner(port: u16, n: usize) -> usize {
    usize::from(port / BLOCK) % n.max(1)
}

/// The worker that owns subscriber `addr` among `n`.
pub fn subscriber_owner(addr: Ipv4Addr, n: usize) -> usize {
    // Fibonacci hashing: consecutive addresses spread evenly.
    let h = u32::from(addr).wrapping_mul(0x9E37_79B1);
    (h >> 16) as usize % n.max(1)
}

/// Which worker's allocator gave out an external port: the split of the port space the
/// allocators of a multi-worker gateway use, so that the return traffic of a port reaches the
/// engine that holds its mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Dynamic allocation: 64-port blocks round robin ([`block_owner`]); the daemon withholds
    /// the other workers' blocks from each worker's allocator.
    Blocks64,
    /// Port blocks: the allocator's own blocks, `b % N` ([`BlockSettings::worker_of`]).
    PortBlock(BlockSettings),
    /// Deterministic NAT: by subscriber both ways; overflow blocks (on the other pool
    /// addresses) by their block.
    Deterministic {
        /// The RFC 7422 formula.
        map: DeterministicMap,
        /// The overflow blocks' layout, if there is an overflow.
        overflow: Option<BlockSettings>,
    },
}

impl Ownership {
    /// The split a validated engine config's allocators use; `None` if its deterministic
    /// section describes no map (validation refuses that).
    pub fn from_config(cfg: &Config) -> Option<Ownership> {
        Some(match &cfg.allocation {
            Allocation::Dynamic => Ownership::Blocks64,
            Allocation::PortBlock(spec) => {
                Ownership::PortBlock(BlockSettings::from_config(cfg, spec))
            }
            Allocation::Deterministic(spec) => Ownership::Deterministic {
                map: DeterministicMap::from_spec(spec)?,
                overflow: spec.overflow.map(|o| BlockSettings::from_config(cfg, &o)),
            },
        })
    }

    /// The worker that owns outbound traffic of subscriber `src` among `n`.
    fn outbound(&self, src: Ipv4Addr, n: usize) -> usize {
        match self {
            Ownership::Deterministic { map, .. } => map
                .worker_of_internal(src, workers(n))
                .map_or_else(|| subscriber_owner(src, n), usize::from),
            Ownership::Blocks64 | Ownership::PortBlock(_) => subscriber_owner(src, n),
        }
    }

    /// The worker that gave out external `dst:port` among `n`, if any did.
    fn inbound(&self, dst: Ipv4Addr, port: u16, n: usize) -> Option<usize> {
        let n16 = workers(n);
        match self {
            Ownership::Blocks64 => Some(block_owner(port, n)),
            Ownership::PortBlock(b) => b.worker_of(port, n16).map(usize::from),
            Ownership::Deterministic { map, overflow } => map
                .worker_of_external(dst, port, n16)
                .or_else(|| overflow.and_then(|o| o.worker_of(port, n16)))
                .map(usize::from),
        }
    }
}

/// `n` workers as the allocators' [`Share`] count (the config allows at most 64).
fn workers(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The [`Share`] of worker `id` among `n`.
pub fn share(id: usize, n: usize) -> Option<Share> {
    Share::new(u16::try_from(id).ok()?, u16::try_from(n).ok()?)
}

/// Ownership rules and the fragment hints, shared by all workers (the hints are atomics: no
/// lock on the packet path).
#[derive(Debug)]
pub struct Steering {
    n: usize,
    ownership: Ownership,
    hints: Box<[AtomicU64]>,
}

impl Steering {
    /// Rules for `n` workers whose allocators split the ports by `ownership`.
    pub fn new(n: usize, ownership: Ownership) -> Self {
        Steering {
            n: n.max(1),
            ownership,
            hints: (0..HINTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.n
    }

    /// The worker that owns subscriber `addr`'s outbound flows, and so its mappings: where a
    /// port-mapping request from `addr` is served (its explicit mappings' ports come from that
    /// worker's share, so their inbound packets reach the same worker).
    pub fn subscriber_worker(&self, addr: Ipv4Addr) -> usize {
        if self.n == 1 {
            return 0;
        }
        self.ownership.outbound(addr, self.n)
    }

    /// The worker that owns `pkt`, which arrived on `side`; `None` when it cannot be told (a
    /// malformed packet, an unknown protocol): then whoever read it processes it. Packets that
    /// `statics` claims go to [`STATIC_OWNER`].
    pub fn owner(&self, side: Side, pkt: &[u8], statics: &StaticSteer) -> Option<usize> {
        if self.n == 1 {
            return Some(0);
        }
        let p = packet::parse(pkt, side).ok()?;
        let later = p.frag == Fragment::Later;
        if !later && statics.claims(side, pkt, &p) {
            if side == Side::Outside && p.frag == Fragment::First {
                self.set_hint(&p, STATIC_OWNER);
            }
            return Some(STATIC_OWNER);
        }
        match side {
            Side::Inside => Some(self.ownership.outbound(p.src.addr, self.n)),
            Side::Outside => {
                if later {
                    return self.hint(&p);
                }
                let port = inbound_port(pkt, &p)?;
                // ICMP errors are addressed to the external endpoint they quote, so the
                // destination address is the external address in every case.
                let owner = self.ownership.inbound(p.dst.addr, port, self.n)?;
                if p.frag == Fragment::First {
                    self.set_hint(&p, owner);
                }
                Some(owner)
            }
        }
    }

    fn hint_key(p: &Parsed) -> u64 {
        let k = (u64::from(u32::from(p.src.addr)) << 32 | u64::from(u32::from(p.dst.addr)))
            ^ (u64::from(p.ident) << 8 | u64::from(p.ip_proto()))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64 finaliser
        let mut x = k;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn set_hint(&self, p: &Parsed, owner: usize) {
        let k = Self::hint_key(p);
        let slot = &self.hints[(k as usize) & (HINTS - 1)];
        // Tag with the key's top bits so a colliding datagram is not misled; worker + 1 so 0
        // means empty.
        slot.store((k & !0xffff) | (owner as u64 + 1), Ordering::Relaxed);
    }

    fn hint(&self, p: &Parsed) -> Option<usize> {
        let k = Self::hint_key(p);
        let v = self.hints[(k as usize) & (HINTS - 1)].load(Ordering::Relaxed);
        (v != 0 && v & !0xffff == k & !0xffff).then(|| (v & 0xffff) as usize - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::SubscriberId;

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;

    /// An IPv4 packet with a valid header checksum (and ICMP checksum: the engine's reader
    /// checks both).
    fn ip(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let len = u16::try_from(20 + l4.len()).expect("short");
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let sum = crate::wire::checksum::checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut l4 = l4.to_vec();
        if proto == ICMP && frag & 0x3fff == 0 && l4.len() >= 4 {
            l4[2..4].copy_from_slice(&[0, 0]);
            let sum = crate::wire::checksum::checksum(&l4);
            l4[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        p.extend_from_slice(&l4);
        p
    }

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut l4 = vec![0u8; 20];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        ip(TCP, src, dst, 0, &l4)
    }

    #[test]
    fn static_flows_go_to_one_worker_both_ways() {
        #[derive(serde::Deserialize)]
        struct File {
            rule: RuleChain,
            #[serde(rename = "virtual-server")]
            vs: Vec<crate::vserver::VirtualServerSpec>,
        }
        // A one-way port forward, a one-way 1:1 host rule and a virtual server: their replies
        // match no rule, only their bindings.
        let f: File = toml::from_str(
            "[[rule]]\nid = 1\ndirection = \"inbound\"\nproto = \"tcp\"\n\
             dst = \"198.18.2.80/32\"\ndst-ports = 80\n\
             action.translate.dst = { addr = \"100.64.0.11/32\", port = 8888 }\n\
             [[rule]]\nid = 2\ndirection = \"outbound\"\nsrc = \"100.64.0.10/32\"\n\
             action.translate.src = { addr = \"198.18.1.10/32\" }\n\
             [[rule]]\nid = 3\ndirection = \"outbound\"\nbidirectional = true\n\
             src = \"100.64.0.0/24\"\ndst = \"172.16.0.0/24\"\n\
             action.translate.src = { addr = \"192.168.50.0/24\" }\n\
             action.translate.dst = { addr = \"10.0.0.0/24\" }\n\
             [[virtual-server]]\naddress = \"198.18.3.80\"\nport = 80\nprotocol = \"tcp\"\n\
             scheduler = \"round-robin\"\n\
             [[virtual-server.real-servers]]\naddress = \"100.64.0.20\"\nport = 8080\n",
        )
        .expect("config");
        let vs: Vec<VirtualServer> =
            f.vs.iter()
                .map(|v| VirtualServer::new(v, crate::Instant::from_secs(0)).expect("vs"))
                .collect();
        let statics = StaticSteer::new(&f.rule, &vs, 7);
        let none = StaticSteer::none();
        let s = Steering::new(2, Ownership::Blocks64);
        let client = [203, 0, 113, 10];
        let cases = [
            // Inbound to the forwarded port (dynamically: port 80's block, worker 1) and the
            // server's reply.
            (Side::Outside, tcp(client, 40000, [198, 18, 2, 80], 80)),
            (Side::Inside, tcp([100, 64, 0, 11], 8888, client, 40000)),
            // The 1:1 host's flow out and its reply.
            (Side::Inside, tcp([100, 64, 0, 10], 5000, client, 443)),
            (Side::Outside, tcp(client, 443, [198, 18, 1, 10], 5000)),
            // The virtual server and its real server's reply.
            (Side::Outside, tcp(client, 40001, [198, 18, 3, 80], 80)),
            (Side::Inside, tcp([100, 64, 0, 20], 8080, client, 40001)),
            // Twice-NAT: out, in from the far side, and the reply to that.
            (
                Side::Inside,
                tcp([100, 64, 0, 40], 5000, [172, 16, 0, 8], 443),
            ),
            (
                Side::Outside,
                tcp([10, 0, 0, 8], 6000, [192, 168, 50, 40], 22),
            ),
            (
                Side::Inside,
                tcp([100, 64, 0, 40], 22, [172, 16, 0, 8], 6000),
            ),
            // Subscribers hairpinned to the forward and to the virtual server.
            (
                Side::Inside,
                tcp([100, 64, 0, 30], 5000, [198, 18, 2, 80], 80),
            ),
            (
                Side::Inside,
                tcp([100, 64, 0, 30], 5001, [198, 18, 3, 80], 80),
            ),
        ];
        for (side, p) in &cases {
            assert_eq!(
                s.owner(*side, p, &statics),
                Some(STATIC_OWNER),
                "{side:?} {p:?}"
            );
        }
        assert_eq!(s.owner(Side::Outside, &cases[0].1, &none), Some(1));

        // ICMP errors go where the flow they quote goes. From outside they quote what the
        // gateway sent out: the forward's and the virtual server's replies from port 80 (port
        // 80's block is worker 1's) and the 1:1 host's flow from 5100 (worker 1's too).
        let error = |src: [u8; 4], dst: [u8; 4], quoted: Vec<u8>| {
            let mut l4 = vec![3, 3, 0, 0, 0, 0, 0, 0];
            l4.extend_from_slice(&quoted[..28]);
            ip(ICMP, src, dst, 0, &l4)
        };
        let router = [192, 0, 2, 254];
        for quoted in [
            tcp([198, 18, 2, 80], 80, client, 40000),
            tcp([198, 18, 3, 80], 80, client, 40001),
            tcp([198, 18, 1, 10], 5100, client, 443),
        ] {
            let dst = [quoted[12], quoted[13], quoted[14], quoted[15]];
            let e = error(router, dst, quoted);
            assert_eq!(s.owner(Side::Outside, &e, &none), Some(1));
            assert_eq!(s.owner(Side::Outside, &e, &statics), Some(STATIC_OWNER));
        }
        // From inside, the forward's server refuses what the gateway let in to it.
        let e = error(
            [100, 64, 0, 11],
            client,
            tcp(client, 40000, [100, 64, 0, 11], 8888),
        );
        assert_eq!(s.owner(Side::Inside, &e, &statics), Some(STATIC_OWNER));
        // An error about a dynamic flow keeps its owner: the pool port's worker.
        let e = error(
            router,
            [198, 51, 100, 1],
            tcp([198, 51, 100, 1], 64, client, 443),
        );
        assert_eq!(s.owner(Side::Outside, &e, &statics), Some(1));
        // Dynamic flows keep their owners: the pool by port block, subscribers by address, and
        // another port of the forward's inside host.
        let pool = tcp(client, 443, [198, 51, 100, 1], 64);
        assert_eq!(s.owner(Side::Outside, &pool, &statics), Some(1));
        for other in [
            tcp([100, 64, 0, 11], 5000, client, 443),
            // A host of the twice-NAT network going anywhere else is dynamic.
            tcp([100, 64, 0, 40], 5000, client, 443),
        ] {
            assert_eq!(
                s.owner(Side::Inside, &other, &statics),
                s.owner(Side::Inside, &other, &none)
            );
        }
    }

    #[test]
    fn blocks_spread_over_workers() {
        assert_eq!(block_owner(0, 2), 0);
        assert_eq!(block_owner(63, 2), 0);
        assert_eq!(block_owner(64, 2), 1);
        assert_eq!(block_owner(128, 2), 0);
        assert_eq!(block_owner(5000, 1), 0);
        let mut seen = [0usize; 4];
        for a in 0..1024u32 {
            seen[subscriber_owner(Ipv4Addr::from(0x6440_0000 + a), 4)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 200), "{seen:?}");
    }

    #[test]
    fn inbound_goes_to_the_port_owner_and_fragments_follow() {
        let s = Steering::new(2, Ownership::Blocks64);
        let udp = |dport: u16| [0, 53, (dport >> 8) as u8, dport as u8, 0, 8, 0, 0];
        let pool = [198, 51, 100, 1];
        let wan = [203, 0, 113, 10];
        let p = ip(UDP, wan, pool, 0, &udp(64));
        assert_eq!(s.owner(Side::Outside, &p, &StaticSteer::none()), Some(1));
        // First fragment (MF) to a worker-0 port, then a later fragment: same worker.
        let first = ip(UDP, wan, pool, 0x2000, &udp(128));
        assert_eq!(
            s.owner(Side::Outside, &first, &StaticSteer::none()),
            Some(0)
        );
        let later = ip(UDP, wan, pool, 185, &[0; 8]);
        assert_eq!(
            s.owner(Side::Outside, &later, &StaticSteer::none()),
            Some(0)
        );
        let first = ip(UDP, wan, pool, 0x2000, &udp(64));
        assert_eq!(
            s.owner(Side::Outside, &first, &StaticSteer::none()),
            Some(1)
        );
        assert_eq!(
            s.owner(Side::Outside, &later, &StaticSteer::none()),
            Some(1)
        );
        // An unknown datagram's later fragment: no hint.
        let other = ip(UDP, [203, 0, 113, 20], pool, 185, &[0; 8]);
        assert_eq!(s.owner(Side::Outside, &other, &StaticSteer::none()), None);
    }

    #[test]
    fn icmp_replies_and_errors_go_by_identifier_and_quoted_port() {
        let s = Steering::new(2, Ownership::Blocks64);
        let pool = [198, 51, 100, 1];
        let wan = [203, 0, 113, 10];
        let echo_reply = ip(ICMP, wan, pool, 0, &[0, 0, 0, 0, 0, 64, 0, 1]);
        assert_eq!(
            s.owner(Side::Outside, &echo_reply, &StaticSteer::none()),
            Some(1)
        );
        // Port unreachable quoting UDP from pool:65 (worker 1) to wan:53.
        let quoted = ip(UDP, pool, wan, 0, &[0, 65, 0, 53, 0, 8, 0, 0]);
        let mut err = vec![3, 3, 0, 0, 0, 0, 0, 0];
        err.extend_from_slice(&quoted);
        let e = ip(ICMP, [192, 0, 2, 254], pool, 0, &err);
        assert_eq!(s.owner(Side::Outside, &e, &StaticSteer::none()), Some(1));
        // Outbound goes by subscriber, whatever the ports.
        let out = ip(UDP, [100, 64, 0, 10], wan, 0, &[0, 1, 0, 2, 0, 8, 0, 0]);
        let owner = subscriber_owner(Ipv4Addr::new(100, 64, 0, 10), 2);
        assert_eq!(
            s.owner(Side::Inside, &out, &StaticSteer::none()),
            Some(owner)
        );
        assert_eq!(
            s.owner(Side::Inside, &[0x60; 40], &StaticSteer::none()),
            None,
            "not IPv4"
        );
    }

    fn udp_to(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
        let l4 = [0, 53, (dport >> 8) as u8, dport as u8, 0, 8, 0, 0];
        ip(UDP, [203, 0, 113, 10], dst.octets(), 0, &l4)
    }

    fn udp_from(src: Ipv4Addr) -> Vec<u8> {
        ip(
            UDP,
            src.octets(),
            [203, 0, 113, 10],
            0,
            &[0, 1, 0, 2, 0, 8, 0, 0],
        )
    }

    fn config(allocation: Allocation, pool: u32) -> crate::ValidConfig {
        let pool = (0..pool)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i))
            .collect();
        let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 255, 1));
        c.allocation = allocation;
        c.validate().expect("valid")
    }

    /// For every worker, the ports its allocator gives out are steered back to it, and its
    /// subscribers' outbound packets reach it: the allocators and steering agree.
    fn steering_agrees_with_the_allocators(cfg: &crate::ValidConfig, subscribers: u32) {
        use crate::alloc::{AllocRequest, ConfiguredAllocator, PortAllocator};
        use crate::{Endpoint, Instant, Protocol, Rng};
        let n = 3;
        let steering = Steering::new(n, Ownership::from_config(cfg.get()).expect("map"));
        let mut allocs: Vec<ConfiguredAllocator> = (0..n)
            .map(|i| {
                ConfiguredAllocator::from_config(cfg, share(i, n).expect("share")).expect("alloc")
            })
            .collect();
        let mut rng = Rng::new(7);
        let mut checked = 0;
        for s in 0..subscribers {
            let sub = Ipv4Addr::from_bits(0x6440_0000 + s);
            let w = steering
                .owner(Side::Inside, &udp_from(sub), &StaticSteer::none())
                .expect("owner");
            for port in 0..40u16 {
                let req = AllocRequest {
                    proto: Protocol::Udp,
                    internal: Endpoint::new(sub, 5000 + port),
                    subscriber: SubscriberId::of(Endpoint::new(sub, 5000 + port)),
                    now: Instant::ZERO,
                };
                let Ok(ext) = allocs[w].allocate(&req, &mut rng) else {
                    continue;
                };
                assert_eq!(
                    steering.owner(
                        Side::Outside,
                        &udp_to(ext.addr, ext.port),
                        &StaticSteer::none()
                    ),
                    Some(w),
                    "{sub} got {ext} from worker {w}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} ports allocated");
    }

    #[test]
    fn port_block_steering_agrees_with_the_allocators() {
        use crate::config::PortBlockSpec;
        let cfg = config(
            Allocation::PortBlock(PortBlockSpec {
                block_size: 16,
                max_blocks_per_subscriber: 4,
            }),
            2,
        );
        steering_agrees_with_the_allocators(&cfg, 50);
    }

    #[test]
    fn deterministic_steering_agrees_with_the_allocators_and_overflow() {
        use crate::config::{DeterministicSpec, PortBlockSpec};
        let cfg = config(
            Allocation::Deterministic(DeterministicSpec {
                inside: "100.64.0.0/26".parse().expect("prefix"),
                outside: "198.51.100.0/31".parse().expect("prefix"),
                // 40 ports each do not fit in 20: every subscriber overflows.
                ports_per_subscriber: Some(20),
                overflow: Some(PortBlockSpec {
                    block_size: 32,
                    max_blocks_per_subscriber: 2,
                }),
            }),
            3,
        );
        steering_agrees_with_the_allocators(&cfg, 64);
    }
}
