//! The compiled chain: first-match lookup without a scan over the rules.
//!
//! Semantics: [`CompiledRules::lookup`] returns the lowest-id rule (taken one way, reverses of
//! bidirectional rules included under their rule's id) that [`Rule::matches`] the packet, and
//! that rule's [`Rule::rewrite`]. The tests check this against exactly that linear scan.
//!
//! How: one-way rules are grouped per direction into classes by the shape of their match
//! (source prefix length, destination prefix length, whether the protocol is set, and whether
//! each port match is absent, one port or a range). Within a class a packet's key is its fields
//! masked to that shape, so all rules a packet can match in a class sit under one key of a hash
//! table, sorted by id. A lookup probes each class once and keeps the lowest id; classes are
//! sorted by their lowest id, so it stops at the first class that cannot beat the best so far.
//! The cost is bounded by the number of classes (at most distinct shapes, in practice a handful),
//! plus, for port-range rules sharing one key, those rules; never by the number of rules.

use super::{Action, Rule, RuleId, Target, host_mask};
use crate::endpoint::{Direction, Endpoint, Protocol};
use crate::hash::FlowHasher;
use crate::rules::{Ipv4Prefix, PortRange};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// What to do to a packet a rule matched. `None` leaves that field alone; both `None` means
/// the packet passes untranslated (an exemption), and dynamic NAPT must not touch it either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// The new source endpoint.
    pub new_src: Option<Endpoint>,
    /// The new destination endpoint.
    pub new_dst: Option<Endpoint>,
}

impl Rewrite {
    /// No rewrite: what an exemption returns.
    pub const NONE: Rewrite = Rewrite {
        new_src: None,
        new_dst: None,
    };

    /// The packet's endpoints after the rewrite.
    pub fn apply(&self, src: Endpoint, dst: Endpoint) -> (Endpoint, Endpoint) {
        (self.new_src.unwrap_or(src), self.new_dst.unwrap_or(dst))
    }
}

/// How a class matches a port: not at all, one port (part of the key), or a range (checked per
/// rule under the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum PortKind {
    Any,
    Exact,
    Range,
}

impl PortKind {
    fn of(r: Option<PortRange>) -> PortKind {
        match r {
            None => PortKind::Any,
            Some(r) if r.first == 0 && r.last == u16::MAX => PortKind::Any,
            Some(r) if r.first == r.last => PortKind::Exact,
            Some(_) => PortKind::Range,
        }
    }

    #[inline(always)]
    fn key(self, port: u16) -> u64 {
        match self {
            PortKind::Exact => u64::from(port),
            PortKind::Any | PortKind::Range => 0,
        }
    }
}

/// The shape of a match: rules of one shape share a hash table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Shape {
    src_len: u8,
    dst_len: u8,
    proto_set: bool,
    sport: PortKind,
    dport: PortKind,
}

/// One field's rewrite, precomputed: `addr = net | (addr & keep)`, `port = base + (port - first)`.
#[derive(Debug, Clone, Copy)]
struct FieldRewrite {
    net: u32,
    keep: u32,
    port_base: u16,
    port_first: u16,
    addr: bool,
    port: bool,
}

impl FieldRewrite {
    fn new(prefix: Ipv4Prefix, ports: Option<PortRange>, t: &Target) -> FieldRewrite {
        FieldRewrite {
            net: t.addr.map_or(0, |a| a.addr().to_bits()),
            keep: host_mask(prefix.prefix_len()),
            port_base: t.port.unwrap_or(0),
            port_first: ports.map_or(0, |r| r.first),
            addr: t.addr.is_some(),
            port: t.port.is_some() && ports.is_some(),
        }
    }

    #[inline(always)]
    fn apply(&self, e: Endpoint) -> Endpoint {
        let addr = if self.addr {
            Ipv4Addr::from_bits(self.net | (e.addr.to_bits() & self.keep))
        } else {
            e.addr
        };
        let port = if self.port {
            self.port_base
                .wrapping_add(e.port.wrapping_sub(self.port_first))
        } else {
            e.port
        };
        Endpoint::new(addr, port)
    }
}

/// One one-way rule, flattened for the lookup.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u32,
    /// IP protocol number, 0 for any.
    proto: u8,
    src_net: u32,
    src_mask: u32,
    dst_net: u32,
    dst_mask: u32,
    sport: (u16, u16),
    dport: (u16, u16),
    src_rw: Option<FieldRewrite>,
    dst_rw: Option<FieldRewrite>,
}

impl Entry {
    fn new(r: &Rule) -> Entry {
        let range = |p: Option<PortRange>| p.map_or((0, u16::MAX), |r| (r.first, r.last));
        let (src_rw, dst_rw) = match r.action {
            Action::Exempt => (None, None),
            Action::Translate(t) => (
                t.src.map(|t| FieldRewrite::new(r.src, r.src_ports, &t)),
                t.dst.map(|t| FieldRewrite::new(r.dst, r.dst_ports, &t)),
            ),
        };
        Entry {
            id: r.id.0,
            proto: r.proto.map_or(0, Protocol::ip_number),
            src_net: r.src.addr().to_bits(),
            src_mask: !host_mask(r.src.prefix_len()),
            dst_net: r.dst.addr().to_bits(),
            dst_mask: !host_mask(r.dst.prefix_len()),
            sport: range(r.src_ports),
            dport: range(r.dst_ports),
            src_rw,
            dst_rw,
        }
    }

    #[inline(always)]
    fn matches(&self, proto: u8, src: u32, sport: u16, dst: u32, dport: u16) -> bool {
        (self.proto == 0 || self.proto == proto)
            && src & self.src_mask == self.src_net
            && dst & self.dst_mask == self.dst_net
            && self.sport.0 <= sport
            && sport <= self.sport.1
            && self.dport.0 <= dport
            && dport <= self.dport.1
    }
}

/// Tables have at least `2^MIN_SLOT_BITS` slots: in a tiny table a miss often lands on the
/// one occupied slot and pays a compare and a second probe.
const MIN_SLOT_BITS: u32 = 4;

/// A hash-table slot: a full key and the run of entries under it (`len == 0`: empty).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    a: u64,
    b: u64,
    start: u32,
    len: u32,
}

/// The rules of one shape in one direction.
#[derive(Debug, Clone)]
struct Class {
    /// The lowest id in the class: a class that cannot beat the best match is skipped.
    min_id: u32,
    src_mask: u32,
    dst_mask: u32,
    proto_set: bool,
    /// With `proto_set`, the protocols present (bit `Protocol::index`): a packet of another
    /// protocol skips the class without hashing.
    protos: u8,
    sport: PortKind,
    dport: PortKind,
    /// Open addressing, linear probing, at most half full; the hash's top `bits` pick a slot.
    slots: Vec<Slot>,
    shift: u32,
}

impl Class {
    #[inline(always)]
    fn key(&self, proto: u8, src: Endpoint, dst: Endpoint) -> (u64, u64) {
        let s = u64::from(src.addr.to_bits() & self.src_mask);
        let d = u64::from(dst.addr.to_bits() & self.dst_mask);
        let p = if self.proto_set { u64::from(proto) } else { 0 };
        (
            (s << 32) | d,
            (p << 32) | (self.sport.key(src.port) << 16) | self.dport.key(dst.port),
        )
    }

    #[inline(always)]
    fn find(&self, h: &FlowHasher, (a, b): (u64, u64)) -> Option<(usize, usize)> {
        let mask = self.slots.len() - 1;
        let mut i = (h.hash2(a, b) >> self.shift) as usize;
        loop {
            let s = &self.slots[i & mask];
            if s.len == 0 {
                return None;
            }
            if s.a == a && s.b == b {
                return Some((s.start as usize, s.len as usize));
            }
            i += 1;
        }
    }
}

/// One direction's classes, sorted by lowest id, and their entries.
#[derive(Debug, Clone, Default)]
struct Table {
    classes: Vec<Class>,
    /// Per class, per key, sorted by id.
    entries: Vec<Entry>,
}

/// A [`RuleChain`](super::RuleChain) compiled for first-match lookup; build it with
/// [`RuleChain::compile`](super::RuleChain::compile) and rebuild it after every change (it is
/// immutable, so a driver can swap it in between packet batches).
#[derive(Debug, Clone)]
pub struct CompiledRules {
    hasher: FlowHasher,
    /// Indexed by [`dir_index`].
    tables: [Table; 2],
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

impl CompiledRules {
    /// Compiles `rules` (sorted by id, valid). `seed` keys the hash: inbound keys are chosen by
    /// whoever sends us packets, as in the flow tables.
    pub(super) fn new(rules: &[Rule], seed: u64) -> CompiledRules {
        let hasher = FlowHasher::new(seed);
        let mut per_dir: [BTreeMap<Shape, Vec<Rule>>; 2] = Default::default();
        for r in rules.iter().flat_map(Rule::one_way) {
            let shape = Shape {
                src_len: r.src.prefix_len(),
                dst_len: r.dst.prefix_len(),
                proto_set: r.proto.is_some(),
                sport: PortKind::of(r.src_ports),
                dport: PortKind::of(r.dst_ports),
            };
            per_dir[dir_index(r.direction)]
                .entry(shape)
                .or_default()
                .push(r);
        }
        let tables = per_dir.map(|shapes| {
            let mut t = Table::default();
            for (shape, rules) in shapes {
                t.classes
                    .push(Self::class(&hasher, shape, &rules, &mut t.entries));
            }
            t.classes.sort_by_key(|c| c.min_id);
            t
        });
        CompiledRules { hasher, tables }
    }

    /// Builds one class; its entries go to the end of `entries`.
    fn class(h: &FlowHasher, shape: Shape, rules: &[Rule], entries: &mut Vec<Entry>) -> Class {
        let mut c = Class {
            min_id: u32::MAX,
            src_mask: !host_mask(shape.src_len),
            dst_mask: !host_mask(shape.dst_len),
            proto_set: shape.proto_set,
            protos: rules
                .iter()
                .filter_map(|r| r.proto)
                .fold(0, |m, p| m | 1 << p.index()),
            sport: shape.sport,
            dport: shape.dport,
            slots: Vec::new(),
            shift: 0,
        };
        let mut keyed: Vec<((u64, u64), Entry)> = rules
            .iter()
            .map(|r| {
                let e = Entry::new(r);
                let src = Endpoint::new(r.src.addr(), r.src_ports.map_or(0, |p| p.first));
                let dst = Endpoint::new(r.dst.addr(), r.dst_ports.map_or(0, |p| p.first));
                (c.key(e.proto, src, dst), e)
            })
            .collect();
        keyed.sort_by_key(|(k, e)| (*k, e.id));
        let keys = keyed.windows(2).filter(|w| w[0].0 != w[1].0).count() + 1;
        let bits = (2 * keys)
            .next_power_of_two()
            .trailing_zeros()
            .max(MIN_SLOT_BITS);
        c.slots = vec![Slot::default(); 1 << bits];
        c.shift = 64 - bits;
        c.min_id = keyed.iter().map(|(_, e)| e.id).min().unwrap_or(u32::MAX);
        let mut i = 0;
        while i < keyed.len() {
            let key = keyed[i].0;
            let start = entries.len();
            while i < keyed.len() && keyed[i].0 == key {
                entries.push(keyed[i].1);
                i += 1;
            }
            let mask = c.slots.len() - 1;
            let mut s = (h.hash2(key.0, key.1) >> c.shift) as usize;
            while c.slots[s & mask].len != 0 {
                s += 1;
            }
            c.slots[s & mask] = Slot {
                a: key.0,
                b: key.1,
                start: start as u32,
                len: (entries.len() - start) as u32,
            };
        }
        c
    }

    /// Whether no rule matches in direction `dir`: the engine can skip [`lookup`](Self::lookup).
    pub fn is_empty(&self, dir: Direction) -> bool {
        self.tables[dir_index(dir)].classes.is_empty()
    }

    /// The first rule in chain order (lowest id) matching the packet, and its rewrite. Does not
    /// allocate; costs one hash probe per class at most.
    #[inline]
    pub fn lookup(
        &self,
        dir: Direction,
        proto: Protocol,
        src: Endpoint,
        dst: Endpoint,
    ) -> Option<(RuleId, Rewrite)> {
        let t = &self.tables[dir_index(dir)];
        let p = proto.ip_number();
        let (sa, da) = (src.addr.to_bits(), dst.addr.to_bits());
        let mut best: Option<&Entry> = None;
        for c in &t.classes {
            if best.is_some_and(|b| b.id < c.min_id) {
                break;
            }
            if c.proto_set && c.protos & (1 << proto.index()) == 0 {
                continue;
            }
            let Some((start, len)) = c.find(&self.hasher, c.key(p, src, dst)) else {
                continue;
            };
            let run = t.entries.get(start..start + len).unwrap_or_default();
            if let Some(e) = run
                .iter()
                .take_while(|e| best.is_none_or(|b| e.id < b.id))
                .find(|e| e.matches(p, sa, src.port, da, dst.port))
            {
                best = Some(e);
            }
        }
        best.map(|e| {
            (
                RuleId(e.id),
                Rewrite {
                    new_src: e.src_rw.map(|f| f.apply(src)),
                    new_dst: e.dst_rw.map(|f| f.apply(dst)),
                },
            )
        })
    }
}
