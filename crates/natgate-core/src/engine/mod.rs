//! The translation engine: wire format, tables and policy tied together behind a sans-IO API.
//!
//! Call pattern (after quinn-proto):
//! - [`Engine::process`] or [`Engine::process_batch`] for every packet that arrives, with `now`;
//! - [`Engine::handle_timeout`] whenever `now` reaches [`Engine::next_timeout`] (and after any
//!   call that may have changed it: every `process` may start a timer);
//! - [`Engine::poll_transmit`] until it returns `None`, after `process` or `handle_timeout`
//!   returned or released held packets;
//! - [`Engine::poll_event`] at leisure, to feed translation logs.
//!
//! Drivers should hand packets over in batches: [`Engine::process_batch`] overlaps the look-ups'
//! cache misses and sends established TCP and UDP flows down a fast lane (fixed-offset header
//! read, constant-offset rewrite) that gives the same bytes, verdicts and state as `process`
//! (property-tested); BENCHMARKS.md has the figures.

/// A [`Gone`] over `engine`'s parts (field by field, so that its session table stays free to
/// be borrowed beside it): one list of what ending a session touches, for expiry and for the
/// operator alike.
macro_rules! gone {
    ($engine:expr, $now:expr, $reason:expr) => {
        Gone {
            address_filter: &mut $engine.address_filter,
            port_users: &mut $engine.port_users,
            subscribers: &mut $engine.subscribers,
            softwires: &mut $engine.softwires,
            alloc: &mut $engine.alloc,
            events: &mut $engine.events,
            counters: &mut $engine.counters,
            offload: &mut $engine.offload,
            now: $now,
            reason: $reason,
        }
    };
}

mod answer_limit;
mod ds_lite;
mod explicit;
mod host;
mod host_id;
pub(crate) mod icmp_error;
mod memory;
mod offload;
mod operator;
pub(crate) mod packet;
mod queues;
mod reload;
mod report_limit;
mod softwire;
mod static_nat;
mod subscriber;
mod translate;
mod warm_restart;

use crate::alloc::{AllocSettings, DynamicAllocator, PortAllocator};
use crate::config::{Behavior, FilteringBehavior, Ipv4Prefix, ValidConfig};
use crate::counters::{Counters, DropReason};
use crate::endpoint::{Direction, Endpoint, Protocol, Side};
use crate::event::Event;
use crate::fragment::{
    ClaimError, FragmentKey, FragmentLimits, FragmentTracker, FragmentTranslation,
};
use crate::rng::Rng;
use crate::table::{
    AddressFilter, ExplicitTable, FlowKey, Mapping, MappingKeys, NatTable, PortUsers, Session,
    SessionId, SoftwireTag,
};
use crate::tcp_state::{TcpPhase, TcpState};
use crate::time::Instant;
use crate::verdict::Verdict;
use core::time::Duration;
use packet::{FlowHead, Fragment, Kind, Parsed, Which};
use queues::{EventQueue, SynHold, TransmitQueue};
use std::net::Ipv4Addr;
use subscriber::SubscriberTable;

pub use crate::event::{EndReason, SessionOrigin};
pub use explicit::{MapError, MapRequest, Suggestion};
pub use memory::{MemoryModel, MemoryUsage};
pub use offload::{FastPathSeen, FastPathView, NoFastPath, OffloadOp, OffloadStats, OffloadedFlow};
pub use operator::{Ended, NoSuchSession};
pub use queues::TRANSMIT_SLOT;
pub use reload::{ReloadError, check_reload};
pub use softwire::SoftwireInfo;
pub use warm_restart::{RestoreError, Restored};

/// The engine's tables could not be allocated: the machine cannot give the memory the config
/// asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the engine's state needs {need} bytes (by its memory model), and the session table could not be allocated"
)]
pub struct OutOfMemory {
    /// Bytes the engine's state needs, by [`MemoryModel`].
    pub need: u64,
}

/// How many packets [`Engine::process_batch`] looks up together. Large enough to hide memory
/// latency behind prefetches, small enough that the batch's state stays in L1.
pub const BATCH: usize = 32;

/// One packet of a batch: a buffer and the length of the datagram at its start. The buffer may
/// be longer than the datagram; the extra room lets the engine answer with an ICMP error in place.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    /// The bytes; the datagram is at the start.
    pub buf: &'a mut [u8],
    /// Length of the datagram. [`Engine::process_batch`] sets it to the length of the
    /// datagram to send when the translation changed it (the lab's `insert-host-id`).
    pub len: usize,
}

/// A packet the engine built outside `process` (see [`Engine::poll_transmit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub side: Side,
    /// Its length at the start of the caller's buffer.
    pub len: usize,
}

/// A session as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Protocol.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The external endpoint.
    pub external: Endpoint,
    /// The remote endpoint.
    pub remote: Endpoint,
    /// TCP phase (None for UDP and ICMP).
    pub tcp: Option<TcpPhase>,
    /// When the session was last refreshed.
    pub last_seen: Instant,
    /// When it expires if nothing refreshes it.
    pub expires: Instant,
    /// What made it.
    pub origin: SessionOrigin,
    /// The B4 whose softwire the subscriber is behind (DS-Lite); `None` for a plain IPv4
    /// subscriber. `internal` is then private space of that home.
    pub softwire: Option<std::net::Ipv6Addr>,
}

/// A mapping as shown to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingInfo {
    /// Protocol.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint it appears as outside.
    pub external: Endpoint,
    /// Live sessions using it.
    pub sessions: u32,
    /// For an explicit mapping (PCP, NAT-PMP): who asked for it and when it ends; `None` for
    /// a mapping that outbound packets made.
    pub explicit: Option<ExplicitInfo>,
    /// The B4 whose softwire the subscriber is behind (DS-Lite); `None` for a plain IPv4
    /// subscriber.
    pub softwire: Option<std::net::Ipv6Addr>,
}

/// What an explicit mapping adds to a [`MappingInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplicitInfo {
    /// Who asked for it.
    pub origin: crate::table::MappingOrigin,
    /// When its lifetime ends unless renewed.
    pub expires: Instant,
}

/// The NAPT44 engine. One engine is one shard: it owns its tables and is driven by one thread.
pub struct Engine<A: PortAllocator = DynamicAllocator> {
    behavior: Behavior,
    inside_address: Ipv4Addr,
    /// Sessions and their mappings.
    sessions: NatTable,
    /// Present only under address-dependent filtering, the one mode that needs it.
    address_filter: Option<AddressFilter>,
    /// Under port overlapping, how many mappings share each external endpoint.
    port_users: Option<PortUsers>,
    /// Present only when a per-subscriber limit is configured.
    subscribers: Option<SubscriberTable>,
    /// Present only when DS-Lite is configured: the softwires, which are subscribers too.
    softwires: Option<softwire::Softwires>,
    alloc: A,
    rng: Rng,
    fragments: FragmentTracker,
    held_syns: SynHold,
    transmit: TransmitQueue,
    events: EventQueue,
    /// Which refusals become `MappingFailed` events (one per subscriber, reason and second).
    refusal_reports: report_limit::RefusalReports,
    /// How many refused packets are answered.
    answers: answer_limit::AnswerLimiter,
    counters: Counters,
    /// Static NAT rules and virtual servers.
    statics: static_nat::StaticNat,
    /// Mappings subscribers asked for (PCP, NAT-PMP); their flows live in `statics`' table.
    explicit: ExplicitTable,
    /// Present while a fast path carries established flows.
    offload: Option<offload::Offload>,
    /// Sources translated from the inside; empty: all (see `Config::inside_networks`).
    inside_networks: Box<[Ipv4Prefix]>,
    /// The NAT's ports on a pool that is a host's own addresses (`Config::host_ports`).
    host_ports: Option<(u16, u16)>,
}

impl Engine<DynamicAllocator> {
    /// An engine with the dynamic allocator over the config's pool. `seed` drives every random
    /// choice (ports, hash keys): use a fresh OS-random seed in production, a constant in tests.
    pub fn new(config: ValidConfig, seed: u64) -> Self {
        let cfg = config.get();
        let alloc = DynamicAllocator::new(&cfg.pool, AllocSettings::from_config(cfg));
        Engine::with_allocator(config, alloc, seed)
    }
}

impl<A: PortAllocator> Engine<A> {
    /// An engine with a given port allocator (port blocks, deterministic NAT, per-core shares).
    ///
    /// # Panics
    /// If the memory for the session table cannot be allocated; a driver that sizes the
    /// tables from a config file calls [`Self::try_with_allocator`].
    pub fn with_allocator(config: ValidConfig, alloc: A, seed: u64) -> Self {
        match Self::try_with_allocator(config, alloc, seed) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Self::with_allocator`], with running out of memory for the session table (the part
    /// that grows with `max-sessions`) an error instead of an abort; what was allocated is
    /// freed again.
    pub fn try_with_allocator(
        config: ValidConfig,
        alloc: A,
        seed: u64,
    ) -> Result<Self, OutOfMemory> {
        let cfg = config.get();
        let mut rng = Rng::new(seed);
        let limits = cfg.limits;
        let behavior = cfg.behavior;
        let max_sessions = limits.max_sessions as usize;
        // Two seeds, drawn in the order the session and mapping tables always drew them, so
        // that port choices for a given engine seed stay as they were.
        let sessions = NatTable::try_new(
            max_sessions,
            limits.max_mappings as usize,
            MappingKeys {
                mapping: behavior.mapping,
                port_overlapping: behavior.port_overlapping,
            },
            rng.next_u64(),
            rng.next_u64(),
        )
        .map_err(|_| OutOfMemory {
            need: MemoryModel::of(cfg)
                .usage(limits.max_sessions, limits.max_mappings)
                .total(),
        })?;
        let mut engine = Engine {
            behavior,
            inside_address: cfg.inside_address,
            sessions,
            subscribers: SubscriberTable::new(limits.subscriber),
            softwires: cfg
                .ds_lite
                .as_ref()
                .map(|d| softwire::Softwires::new(d, Instant::ZERO)),
            address_filter: (behavior.filtering == FilteringBehavior::AddressDependent)
                .then(|| AddressFilter::new(max_sessions, rng.next_u64())),
            port_users: behavior
                .port_overlapping
                .then(|| PortUsers::new(limits.max_mappings as usize, rng.next_u64())),
            alloc,
            fragments: FragmentTracker::new(fragment_limits(&limits, &behavior)),
            held_syns: SynHold::new(limits.max_held_syns as usize),
            refusal_reports: report_limit::RefusalReports::new(),
            answers: answer_limit::AnswerLimiter::new(limits.answers()),
            transmit: TransmitQueue::new(transmit_slots(&limits)),
            events: EventQueue::new(limits.event_queue as usize),
            counters: Counters::default(),
            statics: static_nat::StaticNat::new(cfg, seed),
            explicit: ExplicitTable::new(),
            offload: None,
            inside_networks: cfg.inside_networks.clone().into_boxed_slice(),
            host_ports: cfg.host_ports,
            rng,
        };
        engine.reserve_static_ports();
        Ok(engine)
    }

    /// Translates one packet in place. `buf[..len]` holds an IPv4 datagram that arrived on
    /// `side`; room after it lets the engine answer in place, and with DS-Lite put an IPv6
    /// header in front of a packet for a subscriber behind a softwire (40 bytes; without them
    /// it is dropped, `no_room_to_encapsulate`). Packets from B4s go to
    /// [`Self::process_softwire`]. See [`Verdict`].
    pub fn process(&mut self, now: Instant, side: Side, buf: &mut [u8], len: usize) -> Verdict {
        let (verdict, len) = self.process_one(now, side, buf, len);
        if self.behavior.clear_df && matches!(verdict, Verdict::Forward(_)) {
            packet::clear_df(buf);
        }
        self.account(side, len, verdict);
        verdict
    }

    /// [`Self::process`] with the lab's rewrites that change a datagram's length: a host
    /// identifier on a subscriber's SYN as it leaves ([`host_id`]); `pkt.len` follows.
    fn process_lab(&mut self, now: Instant, side: Side, pkt: &mut PacketBuf<'_>) -> Verdict {
        let len = pkt.len.min(pkt.buf.len());
        let host = if self.behavior.insert_host_id && side == Side::Inside {
            host_id::syn_source(&pkt.buf[..len])
        } else {
            None
        };
        let verdict = self.process(now, side, pkt.buf, len);
        if let (Some(host), Verdict::Forward(Side::Outside)) = (host, verdict) {
            let out = usize::from(packet::read16(pkt.buf, 2));
            match host_id::insert(pkt.buf, out, host, self.behavior.outside_mtu) {
                Some(grown) => pkt.len = grown,
                // Best effort, like the test tools that do it: the SYN goes as it was.
                None => pkt.len = out,
            }
        }
        verdict
    }

    /// [`Self::process`] without the accounting: the verdict, and the length to count it under.
    fn process_one(
        &mut self,
        now: Instant,
        side: Side,
        buf: &mut [u8],
        len: usize,
    ) -> (Verdict, usize) {
        let len = len.min(buf.len());
        // Forwarded bytes are the datagram's IPv4 total length, not the buffer's (which may
        // carry link-layer padding).
        match packet::parse(&buf[..len], side) {
            Ok(p) => {
                let to_pool = self.alloc.owns(p.dst.addr);
                (self.process_parsed(now, side, buf, p, to_pool, None), p.len)
            }
            Err(reason) if self.host_takes_unparsed(&buf[..len], reason) => (Verdict::ToHost, len),
            Err(reason) => (Verdict::Drop(reason), len),
        }
    }

    /// Translates packets that arrived on one side, `verdicts[i]` for `packets[i]`. Look-ups of
    /// established flows are batched with prefetching, which is where the speed comes from.
    /// `verdicts` must be at least as long as `packets`; extra packets are not processed.
    pub fn process_batch(
        &mut self,
        now: Instant,
        side: Side,
        packets: &mut [PacketBuf<'_>],
        verdicts: &mut [Verdict],
    ) {
        let n = packets.len().min(verdicts.len());
        if self.behavior.clear_df || self.behavior.insert_host_id {
            // Lab settings: the lanes rewrite fixed offsets in place and would do neither.
            for (pkt, v) in packets[..n].iter_mut().zip(&mut verdicts[..n]) {
                *v = self.process_lab(now, side, pkt);
            }
            return;
        }
        for (packets, verdicts) in packets[..n]
            .chunks_mut(BATCH)
            .zip(verdicts[..n].chunks_mut(BATCH))
        {
            self.process_chunk(now, side, packets, verdicts);
        }
    }

    /// Up to [`BATCH`] packets in three passes, so that the cache misses of different packets
    /// overlap. First pass: read each packet's head ([`packet::flow_head`]); a *lane* packet (a
    /// whole TCP or UDP datagram going the lane's way, that passes the TTL and size checks:
    /// see [`Self::lane_head`]) gets its look-up hash and starts loading its index bucket.
    /// Second pass: start loading the session record each bucket points to (kept as the
    /// packet's candidate). Third pass, in order: look each lane packet up (confirming the
    /// candidate against its record, without a second pass over the bucket) and, if its
    /// session is found, refresh it and rewrite the packet on the spot; every other packet
    /// takes the general path, lane packets with their look-up's answer. The look-up is done
    /// just before its packet is translated, so a session made by an earlier packet of the
    /// batch is found by a later one.
    fn process_chunk(
        &mut self,
        now: Instant,
        side: Side,
        packets: &mut [PacketBuf<'_>],
        verdicts: &mut [Verdict],
    ) {
        let inbound = side == Side::Outside;
        let mut lanes: [Option<Lane>; BATCH] = [None; BATCH];
        for (pkt, lane) in packets.iter().zip(&mut lanes) {
            let len = pkt.len.min(pkt.buf.len());
            if let Some(head) = self.lane_head(side, &pkt.buf[..len]) {
                let hash = self.sessions.lookup_hash(inbound, &lane_key(side, &head));
                self.sessions.prefetch(inbound, hash);
                *lane = Some(Lane { head, hash });
            }
        }
        let mut candidates: [Option<SessionId>; BATCH] = [None; BATCH];
        for (lane, candidate) in lanes.iter().zip(&mut candidates) {
            if let Some(l) = lane {
                *candidate = self
                    .sessions
                    .prefetch_next(inbound, l.hash, &lane_key(side, &l.head));
            }
        }
        let (which, dir, out) = match side {
            Side::Inside => (Which::Src, Direction::Outbound, Side::Outside),
            Side::Outside => (Which::Dst, Direction::Inbound, Side::Inside),
        };
        let ttl = self.behavior.ttl;
        let (mut forwarded, mut bytes) = (0, 0);
        for (i, pkt) in packets.iter_mut().enumerate() {
            let (verdict, len) = match lanes[i] {
                Some(Lane { head, hash }) => {
                    let key = lane_key(side, &head);
                    let found = self
                        .sessions
                        .find_hashed(inbound, hash, &key, candidates[i]);
                    // A session behind a softwire leaves encapsulated: not the lane's rewrite.
                    if let Some(sid) = found
                        && !self.sessions.get(sid).softwire.is_some()
                    {
                        // The established-flow fast path: what `process_parsed` does for
                        // this packet, without the checks that cannot apply to it.
                        let s = self.sessions.get(sid);
                        let new = if inbound { s.internal } else { s.external };
                        if packet::translate_flow(pkt.buf, &head, which, new, ttl) {
                            self.touch(sid, now, dir, head.tcp_flags);
                            verdicts[i] = Verdict::Forward(out);
                            forwarded += 1;
                            bytes += u64::from(head.len);
                            continue;
                        }
                        // Unreachable (the buffer is the one the head was read from), but
                        // never forwarded untranslated.
                        (
                            Verdict::Drop(DropReason::Ipv4Malformed),
                            usize::from(head.len),
                        )
                    } else {
                        let p = head.parsed();
                        (
                            self.process_parsed(now, side, pkt.buf, p, inbound, Some(found)),
                            p.len,
                        )
                    }
                }
                None => self.process_one(now, side, pkt.buf, pkt.len),
            };
            self.account(side, len, verdict);
            verdicts[i] = verdict;
        }
        self.counters.count_forwarded(dir, forwarded, bytes);
    }

    /// The head of a packet that may take the batch's fast lane: a whole TCP or UDP datagram
    /// ([`packet::flow_head`]) from inside to a non-pool address or from outside to a pool
    /// address (so neither hairpinned nor a static rule's), whose TTL does not expire here and
    /// that fits the MTU of its way out or may be fragmented (RFC 4787 REQ-13). For such a
    /// packet with a session, every other branch of [`Self::process_parsed`] is moot.
    #[inline(always)]
    fn lane_head(&self, side: Side, datagram: &[u8]) -> Option<FlowHead> {
        let head = packet::flow_head(datagram)?;
        let (inbound, mtu) = match side {
            Side::Inside => (false, self.behavior.outside_mtu),
            Side::Outside => (true, self.behavior.inside_mtu),
        };
        let ttl_expires = self.behavior.ttl.expires(head.ttl);
        let too_big = head.df && head.len > mtu;
        (!ttl_expires && !too_big && self.alloc.owns(head.dst.addr) == inbound).then_some(head)
    }

    fn account(&mut self, side: Side, len: usize, verdict: Verdict) {
        match verdict {
            Verdict::Forward(_) => self.counters.count_forward(side.arrival_direction(), len),
            Verdict::ForwardAt { len, .. } => {
                self.counters.count_forward(side.arrival_direction(), len);
            }
            Verdict::Drop(reason) => self.counters.count_drop(reason),
            // The answer itself (ICMP error or TCP reset) was counted where it was built.
            Verdict::Reply { reason, .. } => self.counters.count_drop(reason),
            Verdict::Held => self.counters.held_packets += 1,
            Verdict::ToHost => self.counters.to_host_packets += 1,
        }
    }

    /// Everything after parsing. `to_pool` says whether the destination is a pool address;
    /// `hint` is a session look-up already done by the batch path. On a pool that is a host's
    /// own addresses, what is the host's goes to it ([`host`]).
    fn process_parsed(
        &mut self,
        now: Instant,
        side: Side,
        buf: &mut [u8],
        p: Parsed,
        to_pool: bool,
        hint: Option<Option<SessionId>>,
    ) -> Verdict {
        if self.host_ports.is_none() {
            return self.translate_parsed(now, side, buf, p, to_pool, hint);
        }
        if self.for_host_port(&p) {
            return Verdict::ToHost;
        }
        match self.translate_parsed(now, side, buf, p, to_pool, hint) {
            Verdict::Drop(reason) if self.host_takes(side, reason, &p) => Verdict::ToHost,
            v => v,
        }
    }

    /// [`Self::process_parsed`] for the NAT's own packets.
    fn translate_parsed(
        &mut self,
        now: Instant,
        side: Side,
        buf: &mut [u8],
        mut p: Parsed,
        to_pool: bool,
        hint: Option<Option<SessionId>>,
    ) -> Verdict {
        // A source outside the subscriber networks is dropped before anything else: no state,
        // no answer (an answer would go to an address that is not there).
        // (A softwire's inner sources were checked against its own prefixes.)
        if side == Side::Inside && !p.softwire.is_some() && !self.source_is_inside(p.src.addr) {
            return Verdict::Drop(DropReason::SourceNotInside);
        }
        // Static rules and virtual servers may own addresses outside the pool.
        if side == Side::Outside && !to_pool && !self.statics.claims_inbound(&p) {
            return Verdict::Drop(DropReason::NotPoolAddress);
        }
        // RFC 5508 REQ-10 / RFC 1812 5.3.1: a packet whose TTL would reach zero is answered
        // with time exceeded, before any state is made for it (when the engine is the hop:
        // otherwise the driver's kernel answered it before it got here).
        if self.behavior.ttl.expires(p.ttl) {
            return self.reply_error(
                now,
                buf,
                &p,
                side,
                ICMP_TIME_EXCEEDED,
                0,
                0,
                DropReason::TtlExceeded,
            );
        }
        let hairpin = side == Side::Inside && to_pool;
        let exit = if side == Side::Outside || hairpin {
            Side::Inside
        } else {
            Side::Outside
        };
        let mtu = match exit {
            Side::Outside => self.behavior.outside_mtu,
            Side::Inside => self.behavior.inside_mtu,
        };
        // RFC 4787 REQ-13: DF=1 and too big gets fragmentation needed with the next-hop MTU.
        // (DF=0 packets are fragmented by the driver's way out, e.g. the kernel behind a TUN.)
        // With `clear-df` (lab only) it leaves without DF, to be fragmented on its way.
        if p.df && !self.behavior.clear_df && p.len > usize::from(mtu) {
            return self.reply_error(
                now,
                buf,
                &p,
                side,
                ICMP_DEST_UNREACHABLE,
                4,
                u32::from(mtu),
                DropReason::TooBig,
            );
        }
        let frag_key = FragmentKey {
            side,
            src: p.src.addr,
            dst: p.dst.addr,
            proto: p.ip_proto(),
            ident: p.ident,
            softwire: p.softwire,
        };
        // RFC 1858 section 3.2, RFC 3128: a fragment overlapping bytes an earlier one carried is
        // dropped, so no fragment can rewrite a transport header already translated.
        let claimed = match p.frag {
            Fragment::None => true,
            Fragment::First | Fragment::Later => {
                let (start, end) = p.frag_range();
                match self.fragments.claim(&frag_key, start, end, now) {
                    Ok(claimed) => claimed,
                    Err(ClaimError::Overlap) => return Verdict::Drop(DropReason::FragmentOverlap),
                    Err(ClaimError::TooManyPieces) => {
                        return Verdict::Drop(DropReason::FragmentLimit);
                    }
                }
            }
        };
        if p.frag == Fragment::Later {
            return self.later_fragment(now, buf, &p, frag_key, claimed);
        }
        let verdict = match (p.kind, side) {
            (Kind::IcmpError, _) if !self.behavior.forward_icmp_errors => {
                Verdict::Drop(DropReason::IcmpErrorsOff)
            }
            (Kind::IcmpError, Side::Inside) => self.icmp_error_outbound(buf, &mut p),
            (Kind::IcmpError, Side::Outside) => self.icmp_error_inbound(buf, &mut p),
            (Kind::Flow, Side::Inside) => self.outbound(now, buf, &mut p, hint, hairpin),
            (Kind::Flow, Side::Outside) => self.inbound(now, buf, &mut p, hint),
        };
        if p.frag == Fragment::First
            && let Verdict::Forward(out_side) = verdict
        {
            let tr = FragmentTranslation {
                new_src: p.src.addr,
                new_dst: p.dst.addr,
                out_side,
                softwire: p.softwire,
            };
            self.fragments.record_first(frag_key, tr, now);
            if !claimed {
                // The datagram's state is new (or the table is full): nothing to overlap.
                let (start, end) = p.frag_range();
                let _ = self.fragments.claim(&frag_key, start, end, now);
            }
            self.release_held_fragments(&frag_key, tr);
        }
        match verdict {
            Verdict::Forward(Side::Inside) if p.softwire.is_some() => self.send_to_b4(buf, &p),
            v => v,
        }
    }

    /// Whether `src` may be translated from the inside: it is in an inside network, or none
    /// is configured.
    #[inline]
    fn source_is_inside(&self, src: Ipv4Addr) -> bool {
        self.inside_networks.is_empty() || self.inside_networks.iter().any(|n| n.contains(src))
    }

    /// A non-first fragment follows its first fragment's translation, or waits for it.
    fn later_fragment(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &Parsed,
        key: FragmentKey,
        claimed: bool,
    ) -> Verdict {
        if let Some(tr) = self.fragments.lookup(&key, now) {
            packet::rewrite_addr(buf, Which::Src, tr.new_src);
            packet::rewrite_addr(buf, Which::Dst, tr.new_dst);
            packet::step_ttl(buf, self.behavior.ttl);
            if tr.out_side == Side::Inside && tr.softwire.is_some() {
                return self.encapsulate_to(buf, p.len, tr.softwire);
            }
            return Verdict::Forward(tr.out_side);
        }
        match self.fragments.hold(key, &buf[..p.len], now) {
            Ok(()) => {
                if !claimed {
                    // The hold made the datagram's state: nothing to overlap.
                    let (start, end) = p.frag_range();
                    let _ = self.fragments.claim(&key, start, end, now);
                }
                Verdict::Held
            }
            Err(_) => Verdict::Drop(DropReason::FragmentLimit),
        }
    }

    fn release_held_fragments(&mut self, key: &FragmentKey, tr: FragmentTranslation) {
        let ttl = self.behavior.ttl;
        let clear_df = self.behavior.clear_df;
        let transmit = &mut self.transmit;
        let counters = &mut self.counters;
        // Fragments for a subscriber behind a softwire leave in an IPv6 header to its B4.
        let outer = match (tr.out_side, self.softwires.as_ref()) {
            (Side::Inside, Some(t)) => t.outer_for(tr.softwire),
            _ => None,
        };
        self.fragments.release_held(key, |frag| {
            if frag.len() < 20 || ttl.expires(frag[8]) {
                counters.count_drop(DropReason::TtlExceeded);
                return;
            }
            packet::rewrite_addr(frag, Which::Src, tr.new_src);
            packet::rewrite_addr(frag, Which::Dst, tr.new_dst);
            packet::step_ttl(frag, ttl);
            if clear_df {
                packet::clear_df(frag);
            }
            let sent = match &outer {
                None => transmit.push(tr.out_side, frag),
                Some(o) => ds_lite::push_encapsulated(transmit, o, frag),
            };
            if !sent {
                counters.count_drop(DropReason::FragmentLimit);
            }
        });
    }

    /// Answers the packet in `buf` with an ICMP error built in place, or drops it when RFC 1812
    /// 4.3.2.7 forbids an answer (to ICMP errors, later fragments, non-unicast sources) or the
    /// answer limits leave it out (RFC 1812 4.3.2.8, see [`answer_limit`]).
    #[allow(clippy::too_many_arguments)]
    fn reply_error(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &Parsed,
        side: Side,
        msg_type: u8,
        code: u8,
        rest: u32,
        reason: DropReason,
    ) -> Verdict {
        let src = p.src.addr;
        if p.kind == Kind::IcmpError
            || p.frag == Fragment::Later
            || src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || src.is_loopback()
        {
            return Verdict::Drop(reason);
        }
        if !self.answers.allow(now, src) {
            self.counters.answers_suppressed += 1;
            return Verdict::Drop(reason);
        }
        let from = match side {
            Side::Inside => self.inside_address,
            Side::Outside => p.dst.addr,
        };
        let len =
            crate::wire::icmp::write_error_in_place(buf, p.len, from, src, msg_type, code, rest);
        if len == 0 {
            return Verdict::Drop(reason);
        }
        self.counters.icmp_generated += 1;
        Verdict::Reply { side, len, reason }
    }

    /// Runs timers: expires sessions (and with their last session, mappings), fragment state and
    /// held SYNs. Call when `now` reaches [`Engine::next_timeout`]; calling more often is harmless.
    /// A driver whose fast path carries flows calls [`Self::handle_timeout_with`] instead.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_with(now, &mut NoFastPath);
    }

    /// [`Self::handle_timeout`], asking `fast_path` when it last carried each offloaded session
    /// that is due, so that a flow whose packets all go through the fast path lives as long as
    /// one whose packets come through the engine.
    pub fn handle_timeout_with(&mut self, now: Instant, fast_path: &mut impl FastPathView) {
        self.expire_explicit(now);
        self.expire_statics(now);
        let now_s = now.as_secs();
        let behavior = self.behavior;
        let mut gone = gone!(self, now, EndReason::Expired);
        self.sessions.expire(
            now_s,
            |s| {
                offload::refresh_from(fast_path, |d| behavior.refresh.refreshes(d), s);
                session_due(&behavior, s)
            },
            |_, s, m| gone.session(&s, m),
        );
        // Hold-downs that ended return port blocks to the pool, with a log record each.
        self.alloc.handle_timeout(now);
        self.drain_alloc_events();
        let lost = self.fragments.expire(now);
        for _ in 0..lost {
            self.counters.count_drop(DropReason::FragmentExpired);
        }
        let hold = Duration::from_secs(u64::from(behavior.timers.tcp_incoming_syn));
        let answer = behavior.unsolicited_syn == crate::config::UnsolicitedSyn::IcmpPortUnreachable;
        let transmit = &mut self.transmit;
        let counters = &mut self.counters;
        self.held_syns.expire(now, hold, |h| {
            counters.count_drop(DropReason::SynHoldExpired);
            if !answer {
                return;
            }
            // RFC 5382 REQ-4: answer with port unreachable, from the endpoint it was sent to.
            if let Some((slot, out)) = transmit.slot_mut() {
                out[..h.len].copy_from_slice(&h.bytes[..h.len]);
                let len = crate::wire::icmp::write_error_in_place(
                    out,
                    h.len,
                    h.external.addr,
                    h.remote.addr,
                    ICMP_DEST_UNREACHABLE,
                    3,
                    0,
                );
                if len > 0 {
                    transmit.commit(slot, Side::Outside, len);
                    counters.icmp_generated += 1;
                }
            }
        });
    }

    /// The next time [`Engine::handle_timeout`] has work to do, if any.
    pub fn next_timeout(&self) -> Option<Instant> {
        let hold = Duration::from_secs(u64::from(self.behavior.timers.tcp_incoming_syn));
        [
            self.sessions
                .next_due()
                .map(|s| Instant::from_secs(u64::from(s))),
            self.static_next_due()
                .map(|s| Instant::from_secs(u64::from(s))),
            self.fragments.next_expiry(),
            self.held_syns.next_expiry(hold),
            self.explicit_next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Copies the next packet the engine built on its own (an ICMP error for an expired held
    /// SYN, a released early fragment) into `buf`. Call until it returns `None`.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.transmit
            .pop(buf)
            .map(|(side, len)| Transmit { side, len })
    }

    /// The next translation event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The behaviour in force.
    pub fn behavior(&self) -> &Behavior {
        &self.behavior
    }

    /// The port allocator (for utilisation reports).
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Live sessions: dynamic ones and those static rules and virtual servers made.
    pub fn session_count(&self) -> usize {
        self.sessions.len() + self.static_session_count()
    }

    /// Live mappings.
    pub fn mapping_count(&self) -> usize {
        self.sessions.mapping_count()
    }

    /// Unsolicited SYNs being held.
    pub fn held_syn_count(&self) -> usize {
        self.held_syns.len()
    }

    /// Every live session, in table order: dynamic ones, then those of rules and virtual
    /// servers.
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        let b = self.behavior;
        let dynamic = self.sessions.iter().map(move |(_, s)| SessionInfo {
            proto: s.proto,
            internal: s.internal,
            external: s.external,
            remote: s.remote,
            tcp: (s.proto == Protocol::Tcp).then(|| TcpState::from_byte(s.tcp).phase()),
            last_seen: Instant::from_secs(u64::from(s.last_seen)),
            expires: Instant::from_secs(u64::from(s.last_seen) + u64::from(idle_timeout(&b, s))),
            origin: SessionOrigin::Dynamic,
            softwire: self.b4_of(s.softwire),
        });
        dynamic.chain(self.static_sessions())
    }

    /// Every live mapping, in table order.
    pub fn mappings(&self) -> impl Iterator<Item = MappingInfo> + '_ {
        self.sessions
            .mappings()
            .map(|(_, m)| MappingInfo {
                proto: m.proto,
                internal: m.internal,
                external: m.external,
                sessions: m.sessions,
                explicit: None,
                softwire: self.b4_of(m.softwire),
            })
            .chain(self.explicit_infos())
    }

    /// Bytes held by the session table (sessions, the mappings folded into them or shared,
    /// both indexes, the expiry wheel) and the address filter: the memory that grows with
    /// `max_sessions`.
    pub fn table_memory_bytes(&self) -> usize {
        self.sessions.memory_bytes()
            + self.statics.table.as_ref().map_or(0, |t| t.memory_bytes())
            + self.address_filter.as_ref().map_or(0, |f| f.memory_bytes())
    }

    fn emit(&mut self, e: Event) {
        if !self.events.push(e) {
            self.counters.events_lost += 1;
        }
    }

    /// Tells management that `subscriber` was refused a mapping or session for `reason`
    /// (RFC 6888 REQ-11c), at most once per subscriber, reason and second (see
    /// [`report_limit`]); the refused packet itself is counted by the caller either way.
    fn report_refusal(
        &mut self,
        now: Instant,
        subscriber: Ipv4Addr,
        reason: DropReason,
        event: Event,
    ) {
        if self
            .refusal_reports
            .should_report(subscriber, reason, now.as_secs())
        {
            self.emit(event);
        } else {
            self.counters.refusal_reports_suppressed += 1;
        }
    }

    /// Moves the allocator's port-block records into the event queue (one record per block,
    /// the low-volume log of RFC 6888 section 4 / RFC 8158).
    fn drain_alloc_events(&mut self) {
        while let Some(e) = self.alloc.poll_event() {
            self.emit(e.into());
        }
    }
}

/// A packet that takes the batch's fast lane: its head, and the hash of its look-up key.
#[derive(Clone, Copy)]
struct Lane {
    head: FlowHead,
    hash: u64,
}

/// The session key of a lane packet: outbound, the internal endpoint is the source; inbound, the
/// external endpoint is the destination.
#[inline(always)]
fn lane_key(side: Side, head: &FlowHead) -> FlowKey {
    match side {
        Side::Inside => FlowKey {
            proto: head.proto,
            softwire: SoftwireTag::NONE,
            local: head.src,
            remote: head.dst,
        },
        Side::Outside => FlowKey {
            proto: head.proto,
            softwire: SoftwireTag::NONE,
            local: head.dst,
            remote: head.src,
        },
    }
}

/// The fragment tracker's bounds under `limits` (shared with [`MemoryModel`], which sizes it).
fn fragment_limits(limits: &crate::config::Limits, behavior: &Behavior) -> FragmentLimits {
    FragmentLimits {
        max_datagrams: limits.max_fragment_datagrams as usize,
        max_held: limits.max_held_fragments as usize,
        max_held_per_source: limits.max_held_fragments_per_source as usize,
        max_fragment_len: TRANSMIT_SLOT,
        timeout: Duration::from_secs(u64::from(behavior.timers.fragment)),
    }
}

/// Slots of the transmit queue: every held fragment may be released at once, and expired held
/// SYNs are answered (at most 1024 at a time).
fn transmit_slots(limits: &crate::config::Limits) -> usize {
    limits.max_held_fragments as usize + limits.max_held_syns.min(1024) as usize
}

const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// A session's idle timeout in seconds, by protocol and TCP phase.
fn idle_timeout(b: &Behavior, s: &Session) -> u32 {
    match s.proto {
        Protocol::Udp => b.timers.udp_for(s.remote.port),
        Protocol::Icmp => b.timers.icmp_query,
        Protocol::Tcp => TcpState::from_byte(s.tcp).timeout(&b.timers),
    }
}

/// When the timer wheel should look at a session again. A session expires one second after its
/// timeout has fully passed since `last_seen` (which is rounded down to the second), so it never
/// lives shorter than the configured timer. A refresh leaves the wheel alone (the session is
/// found alive and re-checked later); a TCP phase change that shortens the timeout reschedules
/// (`touch`).
fn session_due(b: &Behavior, s: &Session) -> u32 {
    s.last_seen
        .saturating_add(idle_timeout(b, s))
        .saturating_add(1)
}

/// What has to happen when a session goes: the mapping loses a user (and goes with its last),
/// the address filter forgets the remote, the port enters hold-down, events are queued. Borrows
/// only the parts of the engine it touches, so it can run inside the session table's expiry.
struct Gone<'a, A: PortAllocator> {
    address_filter: &'a mut Option<AddressFilter>,
    port_users: &'a mut Option<PortUsers>,
    subscribers: &'a mut Option<SubscriberTable>,
    softwires: &'a mut Option<softwire::Softwires>,
    alloc: &'a mut A,
    events: &'a mut EventQueue,
    counters: &'a mut Counters,
    offload: &'a mut Option<offload::Offload>,
    now: Instant,
    /// Why the sessions go.
    reason: EndReason,
}

impl<A: PortAllocator> Gone<'_, A> {
    /// Session `s` is gone, and with it `mapping` if it was the mapping's last session.
    fn session(&mut self, s: &Session, mapping: Option<Mapping>) {
        offload::withdraw(self.offload, s);
        self.counters.sessions_deleted += 1;
        self.event(Event::SessionDeleted {
            at: self.now,
            proto: s.proto,
            internal: s.internal,
            external: s.external,
            remote: s.remote,
            origin: SessionOrigin::Dynamic,
            reason: self.reason,
        });
        if let Some(f) = self.address_filter.as_mut() {
            f.remove(s.proto, s.external, s.remote.addr);
        }
        // Named before the softwire's last session is released, which forgets the softwire.
        let subscriber =
            mapping.map(|m| softwire::subscriber_of(self.softwires, m.softwire, m.internal));
        match (s.softwire.get(), self.softwires.as_mut()) {
            (Some(id), Some(t)) => t.release(id, s.proto),
            (Some(_), None) => {}
            (None, _) => {
                if let Some(subs) = self.subscribers.as_mut() {
                    subs.release(s.internal.addr, s.proto);
                }
            }
        }
        if let (Some(m), Some(subscriber)) = (mapping, subscriber) {
            // Under port overlapping the endpoint goes back with the last mapping sharing it,
            // in the name of the mapping it was allocated for (never a softwire's: the config
            // refuses port overlapping with DS-Lite).
            let owner = match self.port_users.as_mut() {
                Some(u) => u
                    .remove(m.proto, m.external)
                    .map(crate::alloc::SubscriberId::of),
                None => Some(subscriber),
            };
            if let Some(owner) = owner {
                self.alloc.release(m.proto, owner, m.external, self.now);
            }
            self.counters.mappings_deleted += 1;
            self.event(Event::MappingDeleted {
                at: self.now,
                proto: m.proto,
                internal: m.internal,
                external: m.external,
                reason: self.reason,
            });
            while let Some(e) = self.alloc.poll_event() {
                self.event(e.into());
            }
        }
    }

    fn event(&mut self, e: Event) {
        if !self.events.push(e) {
            self.counters.events_lost += 1;
        }
    }
}

#[cfg(test)]
mod abuse_tests;
#[cfg(test)]
mod lab_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod overlap_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
