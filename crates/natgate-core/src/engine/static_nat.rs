//! Static NAT rules and virtual servers inside the engine.
//!
//! The engine keeps the running [`RuleChain`] with its [`CompiledRules`], and the
//! [`VirtualServer`]s with their per-server state. Both come from the config and change only
//! through [`Engine::reconfigure`], which keeps every session: a session keeps the translation
//! it was made with until it ends.
//!
//! Sessions that a rule or a virtual server makes live in their own [`StaticSessionTable`],
//! which records both views of a flow, so that rules rewriting the remote side (twice-NAT,
//! network-to-network, virtual servers) translate replies exactly. The per-packet order:
//!
//! 1. the dynamic session table, unchanged: established dynamic flows pay nothing new;
//! 2. on a miss, the static table, when it holds any session;
//! 3. for a packet that may start a flow, [`CompiledRules::lookup`] (skipped when no rule
//!    matches that direction): an exemption (`Rewrite::NONE`) goes through untranslated with no
//!    session and is never seen by dynamic NAPT (RFC 6888 REQ-6); a translation makes a session;
//! 4. inbound only, the virtual servers: a new connection to a virtual address and port gets a
//!    real server and a session that rewrites the destination to it (and its replies' source
//!    back to the virtual endpoint);
//! 5. dynamic NAPT as before.
//!
//! A rule or virtual server match is an explicit permit: it comes before inbound filtering and
//! the unsolicited-SYN hold, and its external addresses need not be pool addresses. As for
//! dynamic mappings, only a SYN opens a TCP session (RFC 5382).

use super::Engine;
use super::packet::{self, Fragment, Kind, Parsed, Which};
use super::queues::EventQueue;
use super::translate::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::alloc::{PortAllocator, PortRange};
use crate::config::{Behavior, Config, TtlHandling};
use crate::counters::DropReason;
use crate::endpoint::{Direction, Endpoint, Protocol, Side};
use crate::event::SessionOrigin;
use crate::event::{EndReason, Event};
use crate::rng::Rng;
use crate::rules::{CompiledRules, Rewrite, RuleChain, RuleId};
use crate::table::{
    FlowKey, SoftwireTag, StaticOrigin, StaticSession, StaticSessionId, StaticSessionTable,
};
use crate::tcp_state::TcpState;
use crate::time::Instant;
use crate::verdict::Verdict;
use crate::vserver::{VirtualServer, VirtualServerError};
use std::net::Ipv4Addr;

impl From<StaticOrigin> for SessionOrigin {
    fn from(o: StaticOrigin) -> Self {
        match o {
            StaticOrigin::Rule(id) => SessionOrigin::Rule(id),
            StaticOrigin::VirtualServer { address, server } => {
                SessionOrigin::VirtualServer { address, server }
            }
            StaticOrigin::Explicit(o) => SessionOrigin::Explicit(o),
        }
    }
}

/// The rules and virtual servers the engine runs, and what it needs to rebuild them.
#[derive(Debug)]
pub(super) struct StaticNat {
    /// The chain as configured: what `ctl` lists and writes back.
    pub(super) chain: RuleChain,
    /// `chain` compiled; rebuilt whenever the chain changes.
    pub(super) compiled: CompiledRules,
    /// Keys the compiled chain's hash tables (inbound keys are chosen by strangers).
    seed: u64,
    /// The virtual servers, in config order.
    pub(super) vservers: Vec<VirtualServer>,
    /// The latest time the engine was given, for work that happens outside a call with a
    /// time (a reload adding a virtual server starts its health checks then).
    pub(super) last_now: Instant,
    /// Sessions made by rules and virtual servers; built (at `limits.max_static_sessions`)
    /// once the config has any rule or virtual server, so a plain NAPT spends no memory on it.
    pub(super) table: Option<StaticSessionTable>,
    /// The table's size.
    capacity: usize,
    /// The ports the allocator was last told to withhold.
    reserved: Vec<(Ipv4Addr, Protocol, PortRange)>,
    /// The pool: the addresses whose ports can be reserved (fixed for the engine's life).
    pub(super) pool: Vec<Ipv4Addr>,
}

impl StaticNat {
    /// The rules and virtual servers of a validated config. `seed` is the engine's seed; the
    /// rule tables get a key derived from it without drawing from the engine's random stream,
    /// so configuring rules does not change which ports dynamic NAPT picks.
    pub(super) fn new(cfg: &Config, seed: u64) -> Self {
        let seed = Rng::new(seed ^ RULES_SEED_SALT).next_u64();
        let mut statics = StaticNat {
            compiled: cfg.rules.compile(seed),
            chain: cfg.rules.clone(),
            seed,
            // Config::validate checked every spec with the same `validate` that `new` runs,
            // so none is left out here.
            vservers: cfg
                .virtual_servers
                .iter()
                .filter_map(|s| VirtualServer::new(s, Instant::ZERO).ok())
                .collect(),
            last_now: Instant::ZERO,
            table: None,
            capacity: cfg.limits.max_static_sessions as usize,
            reserved: Vec::new(),
            pool: cfg.pool.clone(),
        };
        statics.ensure_table(cfg);
        statics
    }

    /// Builds the session table if `cfg` has rules or virtual servers or takes explicit
    /// mappings (whose flows live here too) and it is not there yet. Never on the packet path:
    /// at construction and on reload.
    fn ensure_table(&mut self, cfg: &Config) {
        let wanted =
            !cfg.rules.is_empty() || !cfg.virtual_servers.is_empty() || cfg.explicit_mappings;
        if self.table.is_none() && wanted {
            let seed = Rng::new(self.seed ^ TABLE_SEED_SALT).next_u64();
            self.table = Some(StaticSessionTable::new(self.capacity, seed));
        }
    }

    /// The external ports to withhold from dynamic allocation: every external endpoint a rule
    /// binds and every virtual endpoint, on addresses `owns` accepts (the allocator's), sorted.
    fn reserved_ports(
        chain: &RuleChain,
        vservers: &[VirtualServer],
        pool: &[Ipv4Addr],
        owns: impl Fn(Ipv4Addr) -> bool,
    ) -> Vec<(Ipv4Addr, Protocol, PortRange)> {
        let mut list: Vec<_> = chain
            .reserved_external(pool)
            .into_iter()
            .filter(|(a, _, _)| owns(*a))
            .chain(vservers.iter().filter(|v| owns(v.address().addr)).map(|v| {
                let port = v.address().port;
                (
                    v.address().addr,
                    v.protocol(),
                    PortRange {
                        first: port,
                        last: port,
                    },
                )
            }))
            .collect();
        list.sort_unstable();
        list.dedup();
        list
    }

    /// Whether an inbound packet to an address outside the pool is ours after all: a static
    /// session, an inbound rule or a virtual server claims it. Errors and later fragments carry
    /// no ports to decide by and are let through when any of them could (`icmp_error_inbound`
    /// and the fragment tracker decide). Only packets to non-pool addresses pay for this.
    pub(super) fn claims_inbound(&self, p: &Parsed) -> bool {
        let table = self.table.as_ref().filter(|t| !t.is_empty());
        if table.is_none() && self.compiled.is_empty(Direction::Inbound) && self.vservers.is_empty()
        {
            return false;
        }
        if p.kind != Kind::Flow || p.frag == Fragment::Later {
            return true;
        }
        let key = FlowKey {
            proto: p.proto,
            softwire: SoftwireTag::NONE,
            local: p.dst,
            remote: p.src,
        };
        table.is_some_and(|t| t.find_outside(&key).is_some())
            || (!self.compiled.is_empty(Direction::Inbound)
                && self
                    .compiled
                    .lookup(Direction::Inbound, p.proto, p.src, p.dst)
                    .is_some())
            || self.vserver_index(p.proto, p.dst).is_some()
    }

    /// The virtual server for `proto` at `address`.
    pub(super) fn vserver_index(&self, proto: Protocol, address: Endpoint) -> Option<usize> {
        self.vservers
            .iter()
            .position(|v| v.protocol() == proto && v.address() == address)
    }

    /// The virtual servers of `cfg`, built from the running ones: one still configured is
    /// updated in place (keeping its servers' counters, drain and health state), a new one is
    /// built. Nothing changes on error.
    fn reloaded_vservers(&self, cfg: &Config) -> Result<Vec<VirtualServer>, StaticReloadError> {
        cfg.virtual_servers
            .iter()
            .map(|spec| {
                let fail = |error| StaticReloadError {
                    proto: spec.protocol,
                    address: Endpoint::new(spec.address, spec.port),
                    error,
                };
                let address = Endpoint::new(spec.address, spec.port);
                match self.vserver_index(spec.protocol, address) {
                    Some(i) => {
                        let mut v = self.vservers[i].clone();
                        v.update(spec, self.last_now).map_err(fail)?;
                        Ok(v)
                    }
                    None => VirtualServer::new(spec, self.last_now).map_err(fail),
                }
            })
            .collect()
    }
}

/// Mixed into the engine's seed for the rule tables' key.
const RULES_SEED_SALT: u64 = 0x7275_6c65_735f_6b65;
/// Mixed into the engine's seed for the static session table's key.
const TABLE_SEED_SALT: u64 = 0x7374_6174_6963_5f74;

/// A static session's idle timeout in seconds: the same timers, and for TCP the same phases,
/// as dynamic sessions (RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2).
fn idle_timeout(b: &Behavior, s: &StaticSession) -> u32 {
    match s.proto {
        Protocol::Udp => b.timers.udp_for(s.outside_remote.port),
        Protocol::Icmp => b.timers.icmp_query,
        Protocol::Tcp => TcpState::from_byte(s.tcp).timeout(&b.timers),
    }
}

/// When the wheel should look at a static session again (as `session_due` for dynamic ones).
fn static_due(b: &Behavior, s: &StaticSession) -> u32 {
    s.last_seen
        .saturating_add(idle_timeout(b, s))
        .saturating_add(1)
}

/// A TCP segment that may open a session: a SYN without RST (RFC 5382: only a SYN creates
/// state). Inbound it must also be without ACK, as for dynamic sessions.
fn opens(p: &Parsed, dir: Direction) -> bool {
    if p.proto != Protocol::Tcp {
        return true;
    }
    let mask = match dir {
        Direction::Outbound => TCP_SYN | TCP_RST,
        Direction::Inbound => TCP_SYN | TCP_ACK | TCP_RST,
    };
    p.tcp_flags & mask == TCP_SYN
}

/// What a new static session translates, as its two views.
struct Views {
    inside_local: Endpoint,
    inside_remote: Endpoint,
    outside_local: Endpoint,
    outside_remote: Endpoint,
}

impl Views {
    /// An ICMP query's "port" is its identifier, which names the inside host only; the peer's
    /// side has none (port 0 in every key), so a rule's port rewrite of it is not applied.
    fn for_proto(mut self, proto: Protocol) -> Self {
        if proto == Protocol::Icmp {
            self.inside_remote.port = 0;
            self.outside_remote.port = 0;
        }
        self
    }
}

/// A virtual server of a reload that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StaticReloadError {
    pub(super) proto: Protocol,
    pub(super) address: Endpoint,
    pub(super) error: VirtualServerError,
}

impl<A: PortAllocator> Engine<A> {
    /// The running rule chain, as configured.
    pub fn rules(&self) -> &RuleChain {
        &self.statics.chain
    }

    /// The virtual servers, with their real servers' states and counters.
    pub fn virtual_servers(&self) -> &[VirtualServer] {
        &self.statics.vservers
    }

    /// The virtual server for `proto` at `address`, for run-time changes (add, drain, undrain,
    /// remove, set weight) and health checks (`next_probe`, `on_probe_result`) through its own
    /// methods. Changes apply to the next new connection.
    pub fn virtual_server_mut(
        &mut self,
        proto: Protocol,
        address: Endpoint,
    ) -> Option<&mut VirtualServer> {
        let i = self.statics.vserver_index(proto, address)?;
        self.statics.vservers.get_mut(i)
    }

    /// The rules and virtual servers of `cfg`, prepared for [`Self::apply_statics`]; the
    /// engine is not changed, so a reload that fails here changes nothing.
    pub(super) fn prepare_statics(
        &self,
        cfg: &Config,
    ) -> Result<Vec<VirtualServer>, StaticReloadError> {
        self.statics.reloaded_vservers(cfg)
    }

    /// Swaps in the rules of `cfg` (recompiled if they changed) and the prepared virtual
    /// servers. Existing sessions keep the translation they were made with.
    pub(super) fn apply_statics(&mut self, cfg: &Config, vservers: Vec<VirtualServer>) {
        if cfg.rules != self.statics.chain {
            self.renumber_rule_sessions(&cfg.rules);
            self.statics.chain = cfg.rules.clone();
            self.statics.compiled = cfg.rules.compile(self.statics.seed);
        }
        self.statics.vservers = vservers;
        self.statics.ensure_table(cfg);
        self.reserve_static_ports();
    }

    /// Moves the rule id of every live session made by a rule that `new` keeps under another
    /// id (an insert moves the rules after it up by one), so a session always names the rule
    /// that made it, as `ctl` lists it, and [`Self::flush_rule_sessions`] finds it.
    fn renumber_rule_sessions(&mut self, new: &RuleChain) {
        let Some(table) = self.statics.table.as_mut() else {
            return;
        };
        if table.is_empty() {
            return;
        }
        let moves = renumbering(&self.statics.chain, new);
        if moves.is_empty() {
            return;
        }
        let ids: Vec<(StaticSessionId, RuleId)> = table
            .iter()
            .filter_map(|(sid, s)| match s.origin {
                StaticOrigin::Rule(old) => moves
                    .binary_search_by_key(&old, |m| m.0)
                    .ok()
                    .map(|i| (sid, moves[i].1)),
                StaticOrigin::VirtualServer { .. } | StaticOrigin::Explicit(_) => None,
            })
            .collect();
        for (sid, id) in ids {
            if let Some(s) = table.get_mut(sid) {
                s.origin = StaticOrigin::Rule(id);
            }
        }
    }
}

/// The rules of `old` that `new` holds under another id, as `(old id, new id)` sorted by old
/// id. Both chains are in id order and a change keeps the order of the rules it does not touch,
/// so one walk pairs each old rule with the next equal one (ids aside) at most
/// [`RENUMBER_LOOKAHEAD`] rules on: linear in the chain, however many rules a reload rewrites
/// (a rule replaced beyond that reach keeps its session's old id, which names no moved rule).
fn renumbering(old: &RuleChain, new: &RuleChain) -> Vec<(RuleId, RuleId)> {
    let new: Vec<&crate::rules::Rule> = new.iter().collect();
    let mut next = 0;
    let mut moves = Vec::new();
    for r in old.iter() {
        let rest = new.get(next..).unwrap_or_default();
        let same = rest
            .iter()
            .take(RENUMBER_LOOKAHEAD)
            .position(|n| crate::rules::Rule { id: r.id, ..**n } == *r);
        if let Some(k) = same {
            let moved = rest[k].id;
            if moved != r.id {
                moves.push((r.id, moved));
            }
            next += k + 1;
        }
    }
    moves
}

/// How far past its old place [`renumbering`] looks for a rule in the new chain.
const RENUMBER_LOOKAHEAD: usize = 64;

impl<A: PortAllocator> Engine<A> {
    /// An outbound flow packet that missed the dynamic table: a static session's, a rule's,
    /// or (`None`) dynamic NAPT's. `hairpin`: it is addressed to a pool address; translated to
    /// the outside view, it then goes back in as hairpinned traffic (RFC 4787 REQ-9, RFC 5382
    /// REQ-8), and exemptions do not apply to it (it cannot leave untranslated to ourselves).
    pub(super) fn static_outbound(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        hairpin: bool,
    ) -> Option<Verdict> {
        let key = FlowKey {
            proto: p.proto,
            softwire: SoftwireTag::NONE,
            local: p.src,
            remote: p.dst,
        };
        if let Some(id) = self
            .statics
            .table
            .as_ref()
            .and_then(|t| t.find_inside(&key))
        {
            return Some(self.static_out(now, buf, p, id, hairpin));
        }
        // RFC 6887 section 11.1: an explicit mapping is endpoint-independent, so every new
        // flow from its internal endpoint leaves from its external endpoint.
        if !self.explicit.is_empty()
            && let Some(m) = self.explicit.by_internal(p.proto, p.src)
        {
            if !opens(p, Direction::Outbound) {
                return Some(Verdict::Drop(DropReason::TcpNoSession));
            }
            let views = Views {
                inside_local: p.src,
                inside_remote: p.dst,
                outside_local: m.external,
                outside_remote: p.dst,
            };
            let origin = StaticOrigin::Explicit(m.origin);
            return Some(
                match self.new_static_session(now, p, views, origin, Direction::Outbound) {
                    Ok(id) => self.static_out(now, buf, p, id, hairpin),
                    Err(reason) => Verdict::Drop(reason),
                },
            );
        }
        if self.statics.compiled.is_empty(Direction::Outbound) {
            return None;
        }
        let (rule, rw) =
            self.statics
                .compiled
                .lookup(Direction::Outbound, p.proto, p.src, p.dst)?;
        if rw == Rewrite::NONE {
            if hairpin {
                return None;
            }
            return Some(self.exempt(buf, Side::Outside));
        }
        if !opens(p, Direction::Outbound) {
            return Some(Verdict::Drop(DropReason::TcpNoSession));
        }
        let views = Views {
            inside_local: p.src,
            inside_remote: p.dst,
            outside_local: rw.new_src.unwrap_or(p.src),
            outside_remote: rw.new_dst.unwrap_or(p.dst),
        };
        let origin = StaticOrigin::Rule(rule);
        Some(
            match self.new_static_session(now, p, views, origin, Direction::Outbound) {
                Ok(id) => self.static_out(now, buf, p, id, hairpin),
                Err(reason) => Verdict::Drop(reason),
            },
        )
    }

    /// Translates an outbound packet of static session `id` to its outside view and sends it
    /// out, or, hairpinned and still addressed to the pool, back in through the dynamic (or
    /// static) session of its destination, with one TTL step either way.
    fn static_out(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        id: StaticSessionId,
        hairpin: bool,
    ) -> Verdict {
        if !hairpin {
            let ttl = self.behavior.ttl;
            return self.static_forward(now, buf, p, id, Direction::Outbound, ttl);
        }
        let internal = p.src;
        let v = self.static_forward(now, buf, p, id, Direction::Outbound, TtlHandling::Keep);
        if !matches!(v, Verdict::Forward(_)) {
            return v;
        }
        if self.alloc.owns(p.dst.addr) {
            self.hairpin(now, buf, p, internal)
        } else {
            // A twice-NAT rule sent it elsewhere: it leaves after all.
            self.finish(buf, Side::Outside)
        }
    }

    /// An inbound flow packet that missed the dynamic table: a static session's, a rule's, a
    /// virtual server's, or (`None`) dynamic NAPT's. `hairpin`: it is the second half of a
    /// hairpinned packet, to which exemptions do not apply.
    pub(super) fn static_inbound(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        hairpin: bool,
    ) -> Option<Verdict> {
        let key = FlowKey {
            proto: p.proto,
            softwire: SoftwireTag::NONE,
            local: p.dst,
            remote: p.src,
        };
        if let Some(id) = self
            .statics
            .table
            .as_ref()
            .and_then(|t| t.find_outside(&key))
        {
            return Some(self.static_in(now, buf, p, id));
        }
        // An explicit mapping admits every remote, or the FILTER's (RFC 6887 sections 11.1
        // and 13.3), whatever the dynamic filtering behaviour is.
        if !self.explicit.is_empty()
            && let Some(m) = self.explicit.by_external(p.proto, p.dst)
        {
            if !m.admits(p.src) {
                return Some(Verdict::Drop(DropReason::Filtered));
            }
            if !opens(p, Direction::Inbound) {
                return Some(Verdict::Drop(DropReason::TcpNoSession));
            }
            let views = Views {
                inside_local: m.internal,
                inside_remote: p.src,
                outside_local: p.dst,
                outside_remote: p.src,
            };
            let origin = StaticOrigin::Explicit(m.origin);
            return Some(
                match self.new_static_session(now, p, views, origin, Direction::Inbound) {
                    Ok(id) => self.static_in(now, buf, p, id),
                    Err(reason) => Verdict::Drop(reason),
                },
            );
        }
        if !self.statics.compiled.is_empty(Direction::Inbound)
            && let Some((rule, rw)) =
                self.statics
                    .compiled
                    .lookup(Direction::Inbound, p.proto, p.src, p.dst)
        {
            if rw == Rewrite::NONE {
                if hairpin {
                    return None;
                }
                return Some(self.exempt(buf, Side::Inside));
            }
            if !opens(p, Direction::Inbound) {
                return Some(Verdict::Drop(DropReason::TcpNoSession));
            }
            let views = Views {
                inside_local: rw.new_dst.unwrap_or(p.dst),
                inside_remote: rw.new_src.unwrap_or(p.src),
                outside_local: p.dst,
                outside_remote: p.src,
            };
            let origin = StaticOrigin::Rule(rule);
            return Some(
                match self.new_static_session(now, p, views, origin, Direction::Inbound) {
                    Ok(id) => self.static_in(now, buf, p, id),
                    Err(reason) => Verdict::Drop(reason),
                },
            );
        }
        let v = self.statics.vserver_index(p.proto, p.dst)?;
        if !opens(p, Direction::Inbound) {
            return Some(Verdict::Drop(DropReason::TcpNoSession));
        }
        let vs = &mut self.statics.vservers[v];
        let Some(server) = vs.select(p.src, now, &mut self.rng) else {
            return Some(Verdict::Drop(DropReason::NoRealServer));
        };
        let Some(target) = vs.server(server).map(|s| s.target()) else {
            return Some(Verdict::Drop(DropReason::NoRealServer));
        };
        let views = Views {
            inside_local: target,
            inside_remote: p.src,
            outside_local: p.dst,
            outside_remote: p.src,
        };
        let origin = StaticOrigin::VirtualServer {
            address: p.dst,
            server,
        };
        Some(
            match self.new_static_session(now, p, views, origin, Direction::Inbound) {
                Ok(id) => self.static_in(now, buf, p, id),
                Err(reason) => Verdict::Drop(reason),
            },
        )
    }

    /// Whether an exemption covers `p` going `dir`: for ICMP errors about exempted traffic,
    /// which have no session to be found by (the rule's protocol must allow ICMP).
    pub(super) fn exempted(&self, dir: Direction, p: &Parsed) -> bool {
        !self.statics.compiled.is_empty(dir)
            && self
                .statics
                .compiled
                .lookup(dir, p.proto, p.src, p.dst)
                .is_some_and(|(_, rw)| rw == Rewrite::NONE)
    }

    /// An exempted packet (RFC 6888 REQ-6): forwarded untranslated, no state.
    pub(super) fn exempt(&mut self, buf: &mut [u8], out: Side) -> Verdict {
        self.counters.exempted_packets += 1;
        self.finish(buf, out)
    }

    /// Makes a static session opened by `p` going `dir`. Counts it, queues its event and, for a
    /// virtual server, tells it the connection is open.
    fn new_static_session(
        &mut self,
        now: Instant,
        p: &Parsed,
        views: Views,
        origin: StaticOrigin,
        dir: Direction,
    ) -> Result<StaticSessionId, DropReason> {
        let Views {
            inside_local,
            inside_remote,
            outside_local,
            outside_remote,
        } = views.for_proto(p.proto);
        let mut tcp = TcpState::default();
        if p.proto == Protocol::Tcp {
            tcp.on_segment(dir, p.tcp_flags);
        }
        let s = StaticSession {
            inside_local,
            inside_remote,
            outside_local,
            outside_remote,
            proto: p.proto,
            tcp: tcp.to_byte(),
            last_seen: now.as_secs(),
            origin,
        };
        let due = static_due(&self.behavior, &s);
        let table = self
            .statics
            .table
            .as_mut()
            .ok_or(DropReason::StaticTableFull)?;
        // The view this packet did not come by may be a live session's: two virtual servers
        // with a common real server, reached from one client port; a rule onto the endpoint
        // of another flow. One key must name one flow, so the newcomer is refused.
        let clash = match dir {
            Direction::Outbound => table.find_outside(&s.outside_key()),
            Direction::Inbound => table.find_inside(&s.inside_key()),
        };
        if clash.is_some() {
            return Err(DropReason::StaticSessionClash);
        }
        let id = table
            .insert(s, due)
            .map_err(|_| DropReason::StaticTableFull)?;
        self.statics.last_now = now;
        match origin {
            StaticOrigin::Rule(_) | StaticOrigin::Explicit(_) => {
                self.counters.static_sessions_created += 1
            }
            StaticOrigin::VirtualServer { address, server } => {
                self.counters.vserver_sessions_created += 1;
                if let Some(i) = self.statics.vserver_index(p.proto, address) {
                    // The server was just selected, so it is there.
                    let _ = self.statics.vservers[i].on_connection_open(server);
                }
            }
        }
        self.emit(Event::SessionCreated {
            at: now,
            proto: p.proto,
            internal: inside_local,
            external: outside_local,
            remote: outside_remote,
            origin: origin.into(),
        });
        Ok(id)
    }

    /// An inbound packet of static session `id`, to the inside view.
    fn static_in(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        id: StaticSessionId,
    ) -> Verdict {
        let ttl = self.behavior.ttl;
        self.static_forward(now, buf, p, id, Direction::Inbound, ttl)
    }

    /// Refreshes static session `id` with `p` going `dir` and translates `p` to the other
    /// view: both endpoints, then the TTL step of `ttl`, with incremental checksum updates.
    fn static_forward(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        id: StaticSessionId,
        dir: Direction,
        ttl: TtlHandling,
    ) -> Verdict {
        let refresh = self.behavior.refresh.refreshes(dir);
        let behavior = self.behavior;
        let Some(table) = self.statics.table.as_mut() else {
            return Verdict::Drop(DropReason::StaticTableFull);
        };
        let Some(s) = table.get_mut(id) else {
            return Verdict::Drop(DropReason::StaticTableFull);
        };
        if refresh {
            s.last_seen = now.as_secs();
        }
        let mut reschedule = None;
        if s.proto == Protocol::Tcp {
            let before = TcpState::from_byte(s.tcp);
            let mut st = before;
            st.on_segment(dir, p.tcp_flags);
            s.tcp = st.to_byte();
            // As for dynamic sessions: a phase change that shortens the timeout moves the
            // session's check forward.
            if p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 && st.phase() != before.phase() {
                reschedule = Some(static_due(&behavior, s));
            }
        }
        let s = *s;
        if let Some(due) = reschedule {
            table.reschedule(id, due);
        }
        if let StaticOrigin::VirtualServer { address, server } = s.origin
            && let Some(i) = self.statics.vserver_index(s.proto, address)
        {
            // A server removed by force no longer counts; its connections run on.
            let _ = self.statics.vservers[i].on_bytes(server, p.len as u64);
        }
        let (src, dst, out) = match dir {
            Direction::Outbound => (s.outside_local, s.outside_remote, Side::Outside),
            Direction::Inbound => (s.inside_remote, s.inside_local, Side::Inside),
        };
        // ICMP queries: the identifier is the inside host's "port" and sits in one field, so
        // only the local side's rewrite may touch it; the remote side changes its address.
        let (src, dst) = match (s.proto, dir) {
            (Protocol::Icmp, Direction::Outbound) => (src, Endpoint::new(dst.addr, p.dst.port)),
            (Protocol::Icmp, Direction::Inbound) => (Endpoint::new(src.addr, p.src.port), dst),
            _ => (src, dst),
        };
        if src != p.src {
            packet::rewrite(buf, p, Which::Src, src);
        }
        packet::translate(buf, p, Which::Dst, dst, ttl);
        Verdict::Forward(out)
    }

    /// The static session an ICMP error from outside is about: the quoted packet left by
    /// `quoted_src` (our outside view) to `quoted_dst`. Returns the inside view (local,
    /// remote) to translate the quoted packet back to.
    pub(super) fn static_error_inbound(
        &self,
        proto: Protocol,
        quoted_src: Endpoint,
        quoted_dst: Endpoint,
    ) -> Option<(Endpoint, Endpoint)> {
        let key = FlowKey {
            proto,
            softwire: SoftwireTag::NONE,
            local: quoted_src,
            remote: quoted_dst,
        };
        let t = self.statics.table.as_ref()?;
        let s = t.get(t.find_outside(&key)?)?;
        Some((s.inside_local, s.inside_remote))
    }

    /// The static session an ICMP error from inside is about: the quoted packet came in to
    /// `quoted_dst` (the inside host) from `quoted_src`. Returns the outside view (local,
    /// remote).
    pub(super) fn static_error_outbound(
        &self,
        proto: Protocol,
        quoted_src: Endpoint,
        quoted_dst: Endpoint,
    ) -> Option<(Endpoint, Endpoint)> {
        let key = FlowKey {
            proto,
            softwire: SoftwireTag::NONE,
            local: quoted_dst,
            remote: quoted_src,
        };
        let t = self.statics.table.as_ref()?;
        let s = t.get(t.find_inside(&key)?)?;
        Some((s.outside_local, s.outside_remote))
    }

    /// Expires idle static sessions (called from `handle_timeout`).
    pub(super) fn expire_statics(&mut self, now: Instant) {
        self.statics.last_now = now;
        let behavior = self.behavior;
        let StaticNat {
            vservers, table, ..
        } = &mut self.statics;
        let Some(table) = table.as_mut() else {
            return;
        };
        let events = &mut self.events;
        let counters = &mut self.counters;
        table.expire(
            now.as_secs(),
            |s| static_due(&behavior, s),
            |s| static_gone(vservers, events, counters, &s, now, EndReason::Expired),
        );
    }

    /// Deletes every static session (from `flush`), with their events; returns how many.
    pub(super) fn flush_statics(&mut self, now: Instant) -> usize {
        self.flush_static_where(now, |_| true)
    }

    /// Deletes the sessions that the rule `id` made (either direction of a bidirectional rule),
    /// each with its `SessionDeleted` event, and returns how many. Deleting a rule stops new
    /// flows but leaves its sessions to their timers; an operator who wants the translation
    /// gone at once (a host renumbered, a forward withdrawn for security) calls this after
    /// the delete. Sessions follow their rule when an insert renumbers the chain, so `id` is
    /// the rule's id in the running chain (or the id it had when it was deleted).
    pub fn flush_rule_sessions(&mut self, id: RuleId, now: Instant) -> usize {
        self.flush_static_where(now, |s| s.origin == StaticOrigin::Rule(id))
    }

    /// Deletes the static sessions `which` picks, with their events (an operator's doing: a
    /// flush or a rule deleted with its sessions); returns how many.
    pub(super) fn flush_static_where(
        &mut self,
        now: Instant,
        which: impl Fn(&StaticSession) -> bool,
    ) -> usize {
        let Some(table) = self.statics.table.as_mut() else {
            return 0;
        };
        let ids: Vec<StaticSessionId> = table
            .iter()
            .filter(|(_, s)| which(s))
            .map(|(id, _)| id)
            .collect();
        let n = ids.len();
        for id in ids {
            if let Some(s) = table.remove(id) {
                static_gone(
                    &mut self.statics.vservers,
                    &mut self.events,
                    &mut self.counters,
                    &s,
                    now,
                    EndReason::Operator,
                );
            }
        }
        n
    }

    /// When the static table next has expiry work.
    pub(super) fn static_next_due(&self) -> Option<u32> {
        self.statics.table.as_ref()?.next_due()
    }

    /// Live static sessions.
    pub fn static_session_count(&self) -> usize {
        self.statics
            .table
            .as_ref()
            .map_or(0, StaticSessionTable::len)
    }

    /// Every live static session as operators see it: internal is the inside host's endpoint,
    /// external its outside endpoint, remote the peer as the outside sees it.
    pub(super) fn static_sessions(&self) -> impl Iterator<Item = super::SessionInfo> + '_ {
        let b = self.behavior;
        self.statics
            .table
            .iter()
            .flat_map(|t| t.iter())
            .map(move |(_, s)| super::SessionInfo {
                proto: s.proto,
                internal: s.inside_local,
                external: s.outside_local,
                remote: s.outside_remote,
                tcp: (s.proto == Protocol::Tcp).then(|| TcpState::from_byte(s.tcp).phase()),
                last_seen: Instant::from_secs(u64::from(s.last_seen)),
                expires: Instant::from_secs(
                    u64::from(s.last_seen) + u64::from(idle_timeout(&b, s)),
                ),
                origin: s.origin.into(),
                softwire: None,
            })
    }

    /// Withholds the ports the rules and virtual servers hold from the allocator, if they
    /// changed since it was last told.
    pub(super) fn reserve_static_ports(&mut self) {
        let alloc = &self.alloc;
        let list = StaticNat::reserved_ports(
            &self.statics.chain,
            &self.statics.vservers,
            &self.statics.pool,
            |a| alloc.owns(a),
        );
        if list != self.statics.reserved {
            self.alloc.set_reserved(&list, self.statics.last_now);
            self.statics.reserved = list;
        }
    }
}

/// A static session ended: its event, its counter, and its virtual server's connection count.
fn static_gone(
    vservers: &mut [VirtualServer],
    events: &mut EventQueue,
    counters: &mut crate::counters::Counters,
    s: &StaticSession,
    now: Instant,
    reason: EndReason,
) {
    counters.static_sessions_deleted += 1;
    if let StaticOrigin::VirtualServer { address, server } = s.origin
        && let Some(v) = vservers
            .iter_mut()
            .find(|v| v.protocol() == s.proto && v.address() == address)
    {
        // After a forced removal (or a reload without the server) there is nothing to close.
        let _ = v.on_connection_close(server);
    }
    let e = Event::SessionDeleted {
        at: now,
        proto: s.proto,
        internal: s.inside_local,
        external: s.outside_local,
        remote: s.outside_remote,
        origin: s.origin.into(),
        reason,
    };
    if !events.push(e) {
        counters.events_lost += 1;
    }
}

#[cfg(test)]
mod tests;
