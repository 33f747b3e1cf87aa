//! The ordered rule chain: ids, renumbering on insert, conflict checks, reserved ports.

use super::{Binding, CompiledRules, PortRange, Rule, RuleError, RuleId};
use crate::endpoint::{Endpoint, Protocol};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Static rules in id order, every one valid and none conflicting with another.
///
/// It is changed at run time (`natgate ctl`) and written back as config: it (de)serializes as
/// the list of its rules, and loading checks exactly what [`RuleChain::insert`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Rule>", into = "Vec<Rule>")]
pub struct RuleChain {
    /// Sorted by id, ids unique.
    rules: Vec<Rule>,
    /// `rules[i]`'s bindings (forward, reverse), kept so a conflict check does not derive
    /// every rule's reverse again.
    #[serde(skip)]
    bindings: Vec<[Option<Binding>; 2]>,
}

/// The bindings of `rule` and of its reverse (the reverse's only when bidirectional).
fn bindings_of(rule: &Rule) -> [Option<Binding>; 2] {
    let mut one_way = rule.one_way();
    [
        one_way.next().and_then(|r| r.binding()),
        one_way.next().and_then(|r| r.binding()),
    ]
}

impl RuleChain {
    /// An empty chain.
    pub fn new() -> Self {
        RuleChain::default()
    }

    /// A chain of `rules` (any order; ids must be unique), checked as if inserted one by one.
    pub fn from_rules(mut rules: Vec<Rule>) -> Result<Self, RuleError> {
        rules.sort_by_key(|r| r.id);
        for w in rules.windows(2) {
            if w[0].id == w[1].id {
                return Err(RuleError::DuplicateId(w[0].id));
            }
        }
        let mut chain = RuleChain::new();
        for r in rules {
            let b = chain.admit(&r)?;
            chain.rules.push(r);
            chain.bindings.push(b);
        }
        Ok(chain)
    }

    /// Puts `rule` at `id`. If `id` is taken, that rule and every rule after it move up by one,
    /// so an operator inserts between rules without having left gaps. Refused, with the chain
    /// unchanged, if the rule is invalid or conflicts with one in the chain.
    pub fn insert(&mut self, id: RuleId, mut rule: Rule) -> Result<(), RuleError> {
        rule.id = id;
        let b = self.admit(&rule)?;
        let at = self.rules.partition_point(|r| r.id < id);
        if self.rules.get(at).is_some_and(|r| r.id == id) {
            if self.rules.last().is_some_and(|r| r.id.0 == u32::MAX) {
                return Err(RuleError::IdsExhausted(id));
            }
            for r in &mut self.rules[at..] {
                r.id.0 += 1;
            }
        }
        self.rules.insert(at, rule);
        self.bindings.insert(at, b);
        Ok(())
    }

    /// Adds `rule` after the last one (id 1 in an empty chain) and returns its id.
    pub fn append(&mut self, rule: Rule) -> Result<RuleId, RuleError> {
        let id = match self.rules.last() {
            None => RuleId(1),
            Some(r) => RuleId(r.id.0.checked_add(1).ok_or(RuleError::IdsExhausted(r.id))?),
        };
        self.insert(id, rule)?;
        Ok(id)
    }

    /// Removes the rule `id` and returns it; the other ids do not change.
    pub fn delete(&mut self, id: RuleId) -> Result<Rule, RuleError> {
        match self.rules.binary_search_by_key(&id, |r| r.id) {
            Ok(i) => {
                self.bindings.remove(i);
                Ok(self.rules.remove(i))
            }
            Err(_) => Err(RuleError::NotFound(id)),
        }
    }

    /// The rule `id`.
    pub fn get(&self, id: RuleId) -> Option<&Rule> {
        self.rules
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|i| &self.rules[i])
    }

    /// The rules in id order, the order in which they are matched.
    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules: the engine then skips rule lookups entirely.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The external endpoints static rules hold, per address and protocol, so that the dynamic
    /// allocator never hands them out: static rules win over dynamic NAPT. These are
    /// the targets of outbound source rewrites and the matched destinations of inbound
    /// destination rewrites; a rule without ports holds the whole range 0-65535.
    ///
    /// Only the addresses of `among` (the pool: the only addresses an allocator hands out) are
    /// listed, each address of a binding's prefix that is in it, sorted and without
    /// duplicates. Asking per pool address keeps the cost at the pool's size, not the rules'
    /// prefixes: a network rule over a /8 would otherwise list 16 M addresses.
    pub fn reserved_external(&self, among: &[Ipv4Addr]) -> Vec<(Ipv4Addr, Protocol, PortRange)> {
        let mut pool = among.to_vec();
        pool.sort_unstable();
        pool.dedup();
        let mut held = Vec::new();
        for b in self.bindings.iter().flatten().flatten() {
            let protos: &'static [Protocol] = match b.proto {
                Some(Protocol::Icmp) => &[Protocol::Icmp],
                Some(Protocol::Tcp) => &[Protocol::Tcp],
                Some(Protocol::Udp) => &[Protocol::Udp],
                None => &Protocol::ALL,
            };
            let first = b.ext.0.addr().to_bits();
            let last = first | super::host_mask(b.ext.0.prefix_len());
            let start = pool.partition_point(|a| a.to_bits() < first);
            let inside = pool.get(start..).unwrap_or_default();
            for &a in inside.iter().take_while(|a| a.to_bits() <= last) {
                held.extend(protos.iter().map(|&p| (a, p, b.ext.1)));
            }
        }
        held.sort_unstable();
        held.dedup();
        held
    }

    /// The first rule (in id order) with a binding whose external endpoints include `external`
    /// for `proto`: what a virtual server on that endpoint would collide with. Cheaper than
    /// searching [`RuleChain::reserved_external`], which lists every address of a prefix.
    pub fn binding_of_external(&self, proto: Protocol, external: Endpoint) -> Option<RuleId> {
        self.rules
            .iter()
            .zip(&self.bindings)
            .find(|(_, bs)| {
                bs.iter().flatten().any(|b| {
                    b.proto.is_none_or(|p| p == proto)
                        && b.ext.0.contains(external.addr)
                        && b.ext.1.contains(external.port)
                })
            })
            .map(|(r, _)| r.id)
    }

    /// The chain compiled for matching; `seed` keys its hash tables (see
    /// [`FlowHasher`](crate::hash::FlowHasher)). Recompile after every change.
    pub fn compile(&self, seed: u64) -> CompiledRules {
        CompiledRules::new(&self.rules, seed)
    }

    /// Checks `rule` (not yet in the chain) for validity and against every rule in the chain,
    /// including one it would push up by inserting at its id.
    ///
    /// Conflict, precisely: a binding is what an outbound source rewrite or an inbound
    /// destination rewrite (of the rule or of its derived reverse) makes: external endpoints
    /// (protocol, prefix, ports) standing offset for offset for internal ones. Two rules
    /// conflict when they have bindings whose external sets share an endpoint (protocols equal
    /// or either unset, prefixes overlapping, port ranges overlapping) and that map the shared
    /// endpoints differently, i.e. one external endpoint would stand for two internal ones and
    /// replies could not be told apart. Two bindings with the same map (the explicit reverse of
    /// a one-way rule, a host rule inside an equal network rule) do not conflict, nor do two
    /// external endpoints for one internal endpoint.
    /// Returns the rule's bindings.
    fn admit(&self, rule: &Rule) -> Result<[Option<Binding>; 2], RuleError> {
        rule.check()?;
        let mine = bindings_of(rule);
        if mine == [None, None] {
            return Ok(mine);
        }
        for (other, theirs) in self.rules.iter().zip(&self.bindings) {
            for theirs in theirs.iter().flatten() {
                for b in mine.iter().flatten() {
                    if b.overlaps(theirs) && !b.same_map(theirs) {
                        return Err(RuleError::Conflict {
                            id: rule.id,
                            other: other.id,
                            why: format!(
                                "external endpoints overlap with different internal ones: \
                                 rule {} maps {}, rule {} maps {}",
                                rule.id,
                                b.describe(),
                                other.id,
                                theirs.describe()
                            ),
                        });
                    }
                }
            }
        }
        Ok(mine)
    }
}

impl TryFrom<Vec<Rule>> for RuleChain {
    type Error = RuleError;
    fn try_from(rules: Vec<Rule>) -> Result<Self, RuleError> {
        RuleChain::from_rules(rules)
    }
}

impl From<RuleChain> for Vec<Rule> {
    /// The rules in id order, as config writes them.
    fn from(c: RuleChain) -> Vec<Rule> {
        c.rules
    }
}
