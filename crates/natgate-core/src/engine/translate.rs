//! The NAT policy for flows (TCP, UDP, ICMP queries): which session a packet belongs to, when a
//! mapping and a session are made, what filtering lets in, and hairpinning.

use super::offload::OFFLOADED;
use super::packet::{self, Fragment, Parsed, Which};
use super::{Engine, ICMP_DEST_UNREACHABLE, SessionOrigin, session_due};
use crate::alloc::{AllocError, AllocRequest, PortAllocator, SubscriberId};
use crate::config::{FailureAnswer, FilteringBehavior, Hairpinning, MappingBehavior};
use crate::counters::DropReason;
use crate::endpoint::{Direction, Endpoint, Protocol, Side};
use crate::event::{EndReason, Event};
use crate::table::{FlowKey, Mapping, MappingId, Session, SessionId, SoftwireTag};
use crate::tcp_state::TcpState;
use crate::time::Instant;
use crate::verdict::Verdict;

pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_RST: u8 = 0x04;
pub(super) const TCP_ACK: u8 = 0x10;

impl<A: PortAllocator> Engine<A> {
    /// A flow packet from the inside: find or make its session, translate the source, and
    /// either send it out or, when addressed to the pool, hairpin it back in.
    pub(super) fn outbound(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        hint: Option<Option<SessionId>>,
        hairpin: bool,
    ) -> Verdict {
        if hairpin {
            if self.behavior.hairpinning == Hairpinning::Off {
                return Verdict::Drop(DropReason::HairpinDisabled);
            }
            // An ICMP query to a pool address is addressed to the NAT itself, not to a mapping
            // (identifiers belong to the inside); there is no subscriber to hairpin it to.
            if p.proto == Protocol::Icmp {
                return Verdict::Drop(DropReason::NoMapping);
            }
        }
        let key = FlowKey {
            proto: p.proto,
            softwire: p.softwire,
            local: p.src,
            remote: p.dst,
        };
        // The batch path looks each packet up just before translating it, so its hint (hit or
        // miss) is current; only `process` leaves the look-up to us.
        let found = match hint {
            Some(h) => h,
            None => self.sessions.find_out(&key),
        };
        let sid = match found {
            Some(sid) => {
                self.touch(sid, now, Direction::Outbound, p.tcp_flags);
                sid
            }
            None => {
                // Static rules win over dynamic NAPT for new flows. They name inside addresses,
                // which behind softwires are private space every home reuses: a softwire's
                // flows are dynamic only.
                if !p.softwire.is_some()
                    && let Some(v) = self.static_outbound(now, buf, p, hairpin)
                {
                    return v;
                }
                match self.new_outbound_session(now, p) {
                    Ok(sid) => sid,
                    Err(reason) => return self.mapping_failed(now, buf, p, reason),
                }
            }
        };
        let internal = p.src;
        let external = self.sessions.get(sid).external;
        if hairpin {
            packet::rewrite(buf, p, Which::Src, external);
            return self.hairpin(now, buf, p, internal);
        }
        packet::translate(buf, p, Which::Src, external, self.behavior.ttl);
        Verdict::Forward(Side::Outside)
    }

    /// A flow packet from the outside: its session, or a new one if filtering allows.
    pub(super) fn inbound(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        hint: Option<Option<SessionId>>,
    ) -> Verdict {
        let key = FlowKey {
            proto: p.proto,
            softwire: SoftwireTag::NONE,
            local: p.dst,
            remote: p.src,
        };
        // As in `outbound`, a batch miss is looked up again.
        let found = match hint {
            Some(h) => h,
            None => self.sessions.find_in(&key),
        };
        let sid = match found {
            Some(sid) => {
                self.touch(sid, now, Direction::Inbound, p.tcp_flags);
                sid
            }
            None => {
                // A rule or virtual server match is an explicit permit, before filtering and
                // the unsolicited-SYN hold; its address need not be in the pool.
                if let Some(v) = self.static_inbound(now, buf, p, false) {
                    return v;
                }
                if !self.alloc.owns(p.dst.addr) {
                    return Verdict::Drop(DropReason::NotPoolAddress);
                }
                match self.new_inbound_session(now, p) {
                    Ok(sid) => sid,
                    Err(Refused::Drop(reason)) => return Verdict::Drop(reason),
                    Err(Refused::UnsolicitedSyn) => return self.hold_syn(now, buf, p),
                }
            }
        };
        let s = self.sessions.get(sid);
        let internal = s.internal;
        p.softwire = s.softwire;
        if p.softwire.is_some()
            && let Some(v) = self.softwire_refuses_too_big(now, buf, p, p.softwire)
        {
            return v;
        }
        packet::translate(buf, p, Which::Dst, internal, self.behavior.ttl);
        Verdict::Forward(Side::Inside)
    }

    /// The second half of a hairpinned packet (RFC 4787 REQ-9, RFC 5382 REQ-8): its source is
    /// already the sender's external endpoint; now it is an inbound packet to the destination's
    /// external endpoint, under the same filtering as any other.
    pub(super) fn hairpin(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &mut Parsed,
        sender_internal: Endpoint,
    ) -> Verdict {
        let key = FlowKey {
            proto: p.proto,
            softwire: SoftwireTag::NONE,
            local: p.dst,
            remote: p.src,
        };
        let sid = match self.sessions.find_in(&key) {
            Some(sid) => {
                self.touch(sid, now, Direction::Inbound, p.tcp_flags);
                sid
            }
            None => {
                // A port forward or virtual server on a pool address, reached from inside.
                if let Some(v) = self.static_inbound(now, buf, p, true) {
                    if let Verdict::Forward(_) = v {
                        self.counters.hairpinned_packets += 1;
                    }
                    return v;
                }
                match self.new_inbound_session(now, p) {
                    Ok(sid) => sid,
                    Err(Refused::Drop(reason)) => return Verdict::Drop(reason),
                    // Holding is for SYNs from the Internet; a subscriber's SYN is refused at
                    // once.
                    Err(Refused::UnsolicitedSyn) => return Verdict::Drop(DropReason::Filtered),
                }
            }
        };
        let s = self.sessions.get(sid);
        let target = s.internal;
        let sender_softwire = p.softwire;
        p.softwire = s.softwire;
        packet::rewrite(buf, p, Which::Dst, target);
        // An internal source is only meaningful where both ends share one private address
        // space; a softwire's private space is its home's alone, so to or from a softwire the
        // source stays external (RFC 4787 REQ-9a).
        if self.behavior.hairpinning == Hairpinning::InternalSource
            && !sender_softwire.is_some()
            && !p.softwire.is_some()
        {
            packet::rewrite(buf, p, Which::Src, sender_internal);
        }
        self.counters.hairpinned_packets += 1;
        self.finish(buf, Side::Inside)
    }

    /// Takes the TTL step (the packet was checked not to expire) and sends the packet on its
    /// way.
    pub(super) fn finish(&mut self, buf: &mut [u8], out: Side) -> Verdict {
        packet::step_ttl(buf, self.behavior.ttl);
        Verdict::Forward(out)
    }

    /// A packet of an existing session: refresh per the refresh behaviour (RFC 4787 REQ-6) and
    /// track TCP. This is all the state the fast path writes. Only a SYN, FIN or RST changes
    /// the TCP state ([`TcpState::on_segment`] ignores other flags), so other segments, like
    /// UDP datagrams, only refresh.
    #[inline(always)]
    pub(super) fn touch(&mut self, sid: SessionId, now: Instant, dir: Direction, tcp_flags: u8) {
        let refresh = self.behavior.refresh.refreshes(dir);
        let s = self.sessions.get_mut(sid);
        if refresh {
            s.last_seen = now.as_secs();
        }
        if tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 && s.proto == Protocol::Tcp {
            let before = TcpState::from_byte(s.tcp);
            let mut st = before;
            st.on_segment(dir, tcp_flags);
            s.tcp = st.to_byte();
            // The phase, and with it the timeout, may have changed. A longer one the wheel
            // finds on its own (it re-checks lazily); a shorter one (closing, reset) must move
            // the session's check forward, or it would linger until the old, later time.
            if st.phase() != before.phase() {
                let due = session_due(&self.behavior, s);
                self.sessions.reschedule(sid, due);
                self.update_offload(sid);
                return;
            }
        }
        // A packet the fast path could have carried came here: it may not carry the flow yet.
        // A softwire's flows leave encapsulated, which a fast path for NAPT44 cannot do.
        if self.offload.is_some() && s.flags & OFFLOADED == 0 && !s.softwire.is_some() {
            self.update_offload(sid);
        }
    }

    /// First packet of an outbound flow: reuse or make the mapping, then make the session.
    fn new_outbound_session(&mut self, now: Instant, p: &Parsed) -> Result<SessionId, DropReason> {
        // RFC 5382: only a SYN opens a TCP mapping; anything else without a session is stray.
        if p.proto == Protocol::Tcp && (p.tcp_flags & TCP_SYN == 0 || p.tcp_flags & TCP_RST != 0) {
            return Err(DropReason::TcpNoSession);
        }
        // Limits first (RFC 6888 REQ-4, REQ-5), so a refused flow costs no port.
        self.admit(p.softwire, p.src.addr, p.proto, now, true)?;
        // The look-up that just missed read this bucket: the mapping probe hits the cache.
        let key = FlowKey {
            proto: p.proto,
            softwire: p.softwire,
            local: p.src,
            remote: p.dst,
        };
        let hash = self.sessions.lookup_hash(false, &key);
        let made = match self.sessions.find_by_internal_hashed(hash, &key) {
            Some(mid) => self.new_session(now, mid, p.dst, Direction::Outbound, p.tcp_flags),
            None => self.new_mapping(now, &key, hash, p.tcp_flags),
        };
        match made {
            Ok(sid) => {
                if p.proto == Protocol::Tcp {
                    // RFC 5382 REQ-4: an outbound SYN claims a held inbound SYN for the same
                    // pair (simultaneous open), which is then dropped silently.
                    let external = self.sessions.get(sid).external;
                    self.held_syns.claim(external, p.dst);
                }
                Ok(sid)
            }
            Err(reason) => {
                self.unadmit(p.softwire, p.src.addr, p.proto);
                Err(reason)
            }
        }
    }

    /// Charges a new `proto` session to its subscriber's limits: those of the softwire its
    /// internal side is behind, else those of the IPv4 subscriber `addr`.
    pub(super) fn admit(
        &mut self,
        softwire: SoftwireTag,
        addr: std::net::Ipv4Addr,
        proto: Protocol,
        now: Instant,
        opened_by_subscriber: bool,
    ) -> Result<(), DropReason> {
        match (softwire.get(), self.softwires.as_mut()) {
            (Some(id), Some(t)) => t.admit(id, proto, now, opened_by_subscriber),
            (Some(_), None) => Err(DropReason::DsLiteOff),
            (None, _) => match self.subscribers.as_mut() {
                Some(subs) => subs.admit(addr, proto, now, opened_by_subscriber),
                None => Ok(()),
            },
        }
    }

    /// Gives back the charge of a session `admit`ted but never made.
    pub(super) fn unadmit(
        &mut self,
        softwire: SoftwireTag,
        addr: std::net::Ipv4Addr,
        proto: Protocol,
    ) {
        match (softwire.get(), self.softwires.as_mut()) {
            (Some(id), Some(t)) => t.release(id, proto),
            (Some(_), None) => {}
            (None, _) => {
                if let Some(subs) = self.subscribers.as_mut() {
                    subs.release(addr, proto);
                }
            }
        }
    }

    /// A new mapping for the out key `key`'s internal endpoint and its first session, with its
    /// remote, opened by an outbound packet with `tcp_flags`; `hash` is the key's look-up hash.
    /// The session carries the mapping (see [`NatTable`](crate::table::NatTable)).
    fn new_mapping(
        &mut self,
        now: Instant,
        key: &FlowKey,
        hash: u64,
        tcp_flags: u8,
    ) -> Result<SessionId, DropReason> {
        let (proto, internal, remote) = (key.proto, key.local, key.remote);
        let subscriber = super::softwire::subscriber_of(&self.softwires, key.softwire, internal);
        let external = match self.overlapping_endpoint(proto, internal, remote) {
            Some(shared) => shared,
            None => self.allocate(proto, internal, subscriber, now)?,
        };
        self.new_mapping_at(now, key, hash, tcp_flags, external)
    }

    /// [`Self::new_mapping`] on `external`, which the allocator has just given the key's
    /// subscriber (or which other mappings share, under port overlapping).
    pub(super) fn new_mapping_at(
        &mut self,
        now: Instant,
        key: &FlowKey,
        hash: u64,
        tcp_flags: u8,
        external: Endpoint,
    ) -> Result<SessionId, DropReason> {
        let (proto, internal, remote) = (key.proto, key.local, key.remote);
        let subscriber = super::softwire::subscriber_of(&self.softwires, key.softwire, internal);
        if let Some(users) = self.port_users.as_mut()
            && users.add(proto, external, internal).is_err()
        {
            self.alloc.release(proto, subscriber, external, now);
            return Err(DropReason::MappingTableFull);
        }
        if self.sessions.mappings_full() {
            self.give_back(proto, subscriber, external, now);
            return Err(DropReason::MappingTableFull);
        }
        self.counters.mappings_created += 1;
        self.emit(Event::MappingCreated {
            at: now,
            proto,
            internal,
            external,
        });
        let mapping = Mapping {
            internal,
            external,
            remote_key: self.sessions.remote_key(remote),
            proto,
            sessions: 0,
            softwire: key.softwire,
        };
        let s = self.session_record(now, &mapping, remote, Direction::Outbound, tcp_flags);
        let due = session_due(&self.behavior, &s);
        match self.sessions.insert_with_new_mapping_hashed(s, hash, due) {
            Ok(sid) => self.session_made(now, sid, &s),
            Err(_) => {
                self.delete_unused_mapping(now, mapping);
                Err(DropReason::SessionTableFull)
            }
        }
    }

    /// A fresh external endpoint from the allocator for a new mapping of `internal`, charged
    /// to `subscriber`.
    fn allocate(
        &mut self,
        proto: Protocol,
        internal: Endpoint,
        subscriber: SubscriberId,
        now: Instant,
    ) -> Result<Endpoint, DropReason> {
        let req = AllocRequest {
            proto,
            internal,
            subscriber,
            now,
        };
        let allocated = self.alloc.allocate(&req, &mut self.rng);
        // The inbound bucket of the allocator's guess at its next endpoint: a miss of the next
        // new mapping's, taken now while this one is being made.
        if let Some((proto, external)) = self.alloc.likely_next() {
            self.sessions.prefetch_external(proto, external);
        }
        self.drain_alloc_events();
        allocated.map_err(drop_reason)
    }

    /// Under port overlapping (RFC 7857 section 3), the endpoint a new mapping of `internal` to
    /// `remote` shares: the internal port on the subscriber's paired external address, when
    /// other mappings hold it and none of them has this mapping's remote key, so that every
    /// (external, remote) pair, and with it every inbound 5-tuple, stays unique. Otherwise
    /// `None`, and the allocator decides (it keeps the port if nobody holds it). A subscriber
    /// without a mapping has no paired address yet (the allocator picks it with the first),
    /// so its first mapping takes a port of its own.
    fn overlapping_endpoint(
        &self,
        proto: Protocol,
        internal: Endpoint,
        remote: Endpoint,
    ) -> Option<Endpoint> {
        let users = self.port_users.as_ref()?;
        let address = self.alloc.paired_address(internal.addr)?;
        let candidate = Endpoint::new(address, internal.port);
        let free_for_remote = users.count(proto, candidate) > 0
            && self
                .sessions
                .find_by_external(proto, candidate, remote)
                .is_none();
        free_for_remote.then_some(candidate)
    }

    /// Gives `external` back for a mapping of `subscriber` that is gone: to the allocator,
    /// unless other mappings still share it (port overlapping; the last gives it back in the
    /// name of the mapping it was allocated for, never a softwire's: the config refuses port
    /// overlapping with DS-Lite).
    fn give_back(
        &mut self,
        proto: Protocol,
        subscriber: SubscriberId,
        external: Endpoint,
        now: Instant,
    ) {
        let owner = match self.port_users.as_mut() {
            Some(u) => u.remove(proto, external).map(SubscriberId::of),
            None => Some(subscriber),
        };
        if let Some(owner) = owner {
            self.alloc.release(proto, owner, external, now);
        }
    }

    /// Removes a mapping made for a session that could not be made after all.
    fn delete_unused_mapping(&mut self, now: Instant, m: Mapping) {
        let subscriber = super::softwire::subscriber_of(&self.softwires, m.softwire, m.internal);
        self.give_back(m.proto, subscriber, m.external, now);
        self.drain_alloc_events();
        // Counted as made and deleted, like its two events, so counters and logs agree.
        self.counters.mappings_deleted += 1;
        self.emit(Event::MappingDeleted {
            at: now,
            proto: m.proto,
            internal: m.internal,
            external: m.external,
            reason: EndReason::Unused,
        });
    }

    /// A session through the existing mapping `mid` with `remote`, opened by a packet going
    /// `dir`.
    pub(super) fn new_session(
        &mut self,
        now: Instant,
        mid: MappingId,
        remote: Endpoint,
        dir: Direction,
        tcp_flags: u8,
    ) -> Result<SessionId, DropReason> {
        let m = self.sessions.mapping(mid);
        let s = self.session_record(now, &m, remote, dir, tcp_flags);
        let due = session_due(&self.behavior, &s);
        let sid = self
            .sessions
            .insert_with_mapping(s, mid, due)
            .map_err(|_| {
                // With room left, only the shared-mapping reserve can have refused it.
                if self.sessions.len() < self.sessions.capacity() {
                    DropReason::SharedMappingReserveFull
                } else {
                    DropReason::SessionTableFull
                }
            })?;
        self.session_made(now, sid, &s)
    }

    /// The record of a new session through mapping `m` with `remote`, opened by a packet going
    /// `dir` (its `mapping` field is set by the table).
    fn session_record(
        &self,
        now: Instant,
        m: &Mapping,
        remote: Endpoint,
        dir: Direction,
        tcp_flags: u8,
    ) -> Session {
        let mut tcp = TcpState::default();
        if m.proto == Protocol::Tcp {
            tcp.on_segment(dir, tcp_flags);
        }
        Session {
            internal: m.internal,
            external: m.external,
            remote,
            proto: m.proto,
            tcp: tcp.to_byte(),
            flags: 0,
            last_seen: now.as_secs(),
            mapping: MappingId(u32::MAX),
            softwire: m.softwire,
        }
    }

    /// The rest of making session `sid`, whose record `s` is (all but its `mapping`): the
    /// address filter learns its remote, the counters and the log learn of it. If the filter
    /// is full the session is taken out again, with its mapping if that was new.
    fn session_made(
        &mut self,
        now: Instant,
        sid: SessionId,
        s: &Session,
    ) -> Result<SessionId, DropReason> {
        if let Some(f) = self.address_filter.as_mut()
            && f.add(s.proto, s.external, s.remote.addr).is_err()
        {
            if let Some((_, Some(m))) = self.sessions.remove(sid) {
                self.delete_unused_mapping(now, m);
            }
            return Err(DropReason::SessionTableFull);
        }
        self.counters.sessions_created += 1;
        self.emit(Event::SessionCreated {
            at: now,
            proto: s.proto,
            internal: s.internal,
            external: s.external,
            remote: s.remote,
            origin: SessionOrigin::Dynamic,
        });
        Ok(sid)
    }

    /// An inbound packet with no session: the filtering behaviour decides (RFC 4787 section 5).
    fn new_inbound_session(&mut self, now: Instant, p: &Parsed) -> Result<SessionId, Refused> {
        let syn =
            p.proto == Protocol::Tcp && p.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
        let mid = self.sessions.find_by_external(p.proto, p.dst, p.src);
        let allowed = mid.is_some_and(|mid| self.filter_allows(mid, p.src));
        let Some(mid) = mid.filter(|_| allowed) else {
            if syn {
                return Err(Refused::UnsolicitedSyn);
            }
            // Under port overlapping, mappings on the port made for other remotes filter it.
            let mapped = mid.is_some()
                || self
                    .port_users
                    .as_ref()
                    .is_some_and(|u| u.count(p.proto, p.dst) > 0);
            let reason = if mapped {
                DropReason::Filtered
            } else {
                DropReason::NoMapping
            };
            return Err(Refused::Drop(reason));
        };
        if p.proto == Protocol::Tcp && !syn {
            return Err(Refused::Drop(DropReason::TcpNoSession));
        }
        // Under a dependent mapping the internal endpoint may already talk to this remote
        // through another of its mappings; a second session for the pair would make its
        // outbound key ambiguous, so the packet is refused.
        if self.behavior.mapping != MappingBehavior::EndpointIndependent {
            let m = self.sessions.mapping(mid);
            let pair = FlowKey {
                proto: p.proto,
                softwire: m.softwire,
                local: m.internal,
                remote: p.src,
            };
            if self.sessions.find_out(&pair).is_some() {
                return Err(Refused::Drop(DropReason::Filtered));
            }
        }
        // Sessions that inbound packets open count against the subscriber's quota too (state
        // memory, RFC 6888 REQ-5), but not against its creation rate.
        let m = self.sessions.mapping(mid);
        let internal = m.internal;
        if let Err(reason) = self.admit(m.softwire, internal.addr, p.proto, now, false) {
            return Err(self.inbound_refused(now, p, internal, reason));
        }
        match self.new_session(now, mid, p.src, Direction::Inbound, p.tcp_flags) {
            Ok(sid) => Ok(sid),
            Err(reason) => {
                self.unadmit(m.softwire, internal.addr, p.proto);
                Err(self.inbound_refused(now, p, internal, reason))
            }
        }
    }

    /// An inbound packet that a limit (the subscriber's quota, the session table) kept from
    /// opening a session through its mapping: management is told as for an outbound one (RFC
    /// 6888 REQ-11), with the mapping's internal endpoint as the subscriber's. Nothing is
    /// answered: the sender is outside, and REQ-11's answer is for the subscriber.
    fn inbound_refused(
        &mut self,
        now: Instant,
        p: &Parsed,
        internal: Endpoint,
        reason: DropReason,
    ) -> Refused {
        self.report_refusal(
            now,
            internal.addr,
            reason,
            Event::MappingFailed {
                at: now,
                proto: p.proto,
                internal,
                remote: p.src,
                reason,
            },
        );
        Refused::Drop(reason)
    }

    /// Whether the filtering behaviour lets `remote` open a session through `mid`. Under
    /// address-and-port-dependent filtering only an existing session does, and the caller has
    /// already looked for one.
    fn filter_allows(&self, mid: MappingId, remote: Endpoint) -> bool {
        match self.behavior.filtering {
            FilteringBehavior::EndpointIndependent => true,
            FilteringBehavior::AddressDependent => {
                let m = self.sessions.mapping(mid);
                self.address_filter
                    .as_ref()
                    .is_some_and(|f| f.contains(m.proto, m.external, remote.addr))
            }
            FilteringBehavior::AddressAndPortDependent => false,
        }
    }

    /// RFC 5382 REQ-4: hold an unsolicited SYN; an outbound SYN for the same pair may claim it.
    fn hold_syn(&mut self, now: Instant, buf: &[u8], p: &Parsed) -> Verdict {
        if self.held_syns.hold(p.dst, p.src, &buf[..p.len], now) {
            Verdict::Held
        } else {
            Verdict::Drop(DropReason::SynHoldFull)
        }
    }

    /// No mapping or session could be made (every limit ends here: pool exhausted, subscriber
    /// port, session or rate limit, subscriber table or session table full): tell management,
    /// answer the sender as configured (RFC 5508 REQ-8, RFC 6888 REQ-11), and never evict
    /// anything to make room. The drop is counted under `reason` by the caller.
    fn mapping_failed(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &Parsed,
        reason: DropReason,
    ) -> Verdict {
        if reason == DropReason::TcpNoSession {
            return Verdict::Drop(reason);
        }
        self.report_refusal(
            now,
            p.src.addr,
            reason,
            Event::MappingFailed {
                at: now,
                proto: p.proto,
                internal: p.src,
                remote: p.dst,
                reason,
            },
        );
        match self.behavior.mapping_failure_reply.answer(p.proto) {
            FailureAnswer::Nothing => Verdict::Drop(reason),
            FailureAnswer::IcmpUnreachable(code) => self.reply_error(
                now,
                buf,
                p,
                Side::Inside,
                ICMP_DEST_UNREACHABLE,
                code,
                0,
                reason,
            ),
            FailureAnswer::TcpReset => self.reply_reset(now, buf, p, reason),
        }
    }

    /// Answers a refused TCP segment from the inside with the reset a closed port would send
    /// (RFC 9293 section 3.10.7.1), built in place, from the remote it was addressed to. As for
    /// ICMP errors (RFC 1812 4.3.2.7), nothing is sent to a source that is not unicast, and a
    /// fragment (whose segment length is unknown) or a reset gets no answer; the answer limits
    /// apply as to ICMP errors.
    fn reply_reset(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &Parsed,
        reason: DropReason,
    ) -> Verdict {
        let src = p.src.addr;
        if p.frag != Fragment::None
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
        let len = crate::wire::tcp::write_tcp_reset_in_place(buf, p.len);
        if len == 0 {
            return Verdict::Drop(reason);
        }
        self.counters.tcp_resets_generated += 1;
        Verdict::Reply {
            side: Side::Inside,
            len,
            reason,
        }
    }
}

/// Why an inbound packet opened no session.
enum Refused {
    /// Dropped for this reason.
    Drop(DropReason),
    /// An unsolicited SYN, to be held (RFC 5382 REQ-4).
    UnsolicitedSyn,
}

/// What a packet refused for lack of an external endpoint is counted under.
pub(super) fn drop_reason(e: AllocError) -> DropReason {
    match e {
        AllocError::Exhausted | AllocError::PairedAddressFull | AllocError::Unavailable => {
            DropReason::MappingFailed
        }
        AllocError::SubscriberPortLimit => DropReason::SubscriberPortLimit,
        AllocError::UnknownSubscriber => DropReason::UnknownSubscriber,
        AllocError::OtherShare => DropReason::WrongShard,
    }
}
