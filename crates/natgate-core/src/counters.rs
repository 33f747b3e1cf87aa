//! Counters: every dropped packet is counted under exactly one named reason.

use crate::endpoint::Direction;

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// Why a packet was dropped. Each reason is one counter, named by [`DropReason::name`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $variant, )*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// The number of reasons.
            pub const COUNT: usize = Self::ALL.len();

            /// The snake_case name used in metrics and `ctl drops`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    /// Not an IPv4 packet (version field is not 4).
    NotIpv4 => "not_ipv4",
    /// IPv4 header shorter than its IHL, IHL below 5, or total length inconsistent with the buffer.
    Ipv4Malformed => "ipv4_malformed",
    /// IPv4 header checksum is wrong.
    Ipv4BadChecksum => "ipv4_bad_checksum",
    /// The transport header is cut short, or a TCP data offset points past the packet.
    L4Truncated => "l4_truncated",
    /// TCP or UDP port 0, which no valid flow uses.
    ZeroPort => "zero_port",
    /// An ICMP message whose checksum is wrong (RFC 5508 REQ-3).
    IcmpBadChecksum => "icmp_bad_checksum",
    /// An ICMP error whose embedded packet is malformed or has a bad IP header checksum.
    IcmpErrorBadInner => "icmp_error_bad_inner",
    /// An IP protocol the engine does not translate.
    UnsupportedProtocol => "unsupported_protocol",
    /// An ICMP type the engine does not translate (redirects, router advertisements, ...).
    UnsupportedIcmp => "unsupported_icmp",
    /// From the inside, with a source in none of the configured inside networks (spoofed or
    /// misrouted): dropped before any state is made, and never answered.
    SourceNotInside => "source_not_inside",
    /// Inbound to an address that is not in the external pool.
    NotPoolAddress => "not_pool_address",
    /// Inbound to an external endpoint that has no mapping.
    NoMapping => "no_mapping",
    /// Inbound to a mapped endpoint, refused by the filtering behaviour.
    Filtered => "filtered",
    /// An outbound TCP segment other than a SYN, with no session to belong to.
    TcpNoSession => "tcp_no_session",
    /// An ICMP error that matches no session, in either direction.
    IcmpErrorNoSession => "icmp_error_no_session",
    /// No external endpoint could be allocated: the pool (or the subscriber's paired address)
    /// has no free port.
    MappingFailed => "mapping_failed",
    /// The mapping table (`limits.max-mappings`) is full: a new mapping cannot be kept even
    /// though a port may be free. No live mapping is evicted (RFC 6888 REQ-11).
    MappingTableFull => "mapping_table_full",
    /// The subscriber holds its most port blocks and all are full (RFC 6888 REQ-4).
    SubscriberPortLimit => "subscriber_port_limit",
    /// The sender is not a subscriber the allocator serves (outside the deterministic prefix).
    UnknownSubscriber => "unknown_subscriber",
    /// The packet reached a worker that does not own its subscriber's ports (mis-steered).
    WrongShard => "wrong_shard",
    /// The subscriber holds its most sessions of this protocol (RFC 6888 REQ-4, REQ-5).
    SubscriberSessionLimit => "subscriber_session_limit",
    /// The subscriber holds its most sessions of all protocols together (RFC 6888 REQ-4):
    /// `limits.subscriber.max-sessions`, checked after the per-protocol quota.
    SubscriberTotalSessionLimit => "subscriber_total_session_limit",
    /// The subscriber opens sessions faster than its configured rate (RFC 6888 REQ-5).
    SubscriberRateLimit => "subscriber_rate_limit",
    /// The per-subscriber table is full; a new subscriber cannot be tracked.
    SubscriberTableFull => "subscriber_table_full",
    /// The session table is full; no live session is evicted to make room (RFC 6888 REQ-11).
    SessionTableFull => "session_table_full",
    /// The session table has room, but a mapping's second session needs a shared-mapping
    /// record and the table's reserve of them is used up (`NatTable::shared_reserve`: a quarter
    /// of the sessions, plus 1024). No live session is evicted.
    SharedMappingReserveFull => "shared_mapping_reserve_full",
    /// Hairpinning is switched off and the packet was addressed to the external pool.
    HairpinDisabled => "hairpin_disabled",
    /// An ICMP error, with forwarding of ICMP errors switched off (lab only).
    IcmpErrorsOff => "icmp_errors_off",
    /// TTL would reach zero; answered with ICMP time exceeded (RFC 5508 REQ-10).
    TtlExceeded => "ttl_exceeded",
    /// DF set and larger than the MTU of the way out; answered with fragmentation needed.
    TooBig => "too_big",
    /// An unsolicited inbound SYN was held, and no outbound SYN claimed it in time.
    SynHoldExpired => "syn_hold_expired",
    /// No room to hold another unsolicited SYN.
    SynHoldFull => "syn_hold_full",
    /// A non-first fragment arrived and could not be held (limits, size).
    FragmentLimit => "fragment_limit",
    /// A held fragment's datagram never got its first fragment in time.
    FragmentExpired => "fragment_expired",
    /// A fragment that overlaps bytes of its datagram an earlier fragment carried (RFC 1858
    /// section 3.2, RFC 3128): an overlap can rewrite a transport header already passed.
    FragmentOverlap => "fragment_overlap",
    /// A rule or virtual server would make a session, and the static session table
    /// (`limits.max-static-sessions`) is full; no live session is evicted.
    StaticTableFull => "static_table_full",
    /// A new connection to a virtual server found no real server to take it: every one is
    /// down, draining or removed.
    NoRealServer => "no_real_server",
    /// A rule or virtual server would make a session whose other view already belongs to a
    /// live static session (two virtual servers sharing a real server, reached from one client
    /// port): one key must name one flow.
    StaticSessionClash => "static_session_clash",
    /// From the B4 side, and DS-Lite is not configured.
    DsLiteOff => "ds_lite_off",
    /// From the B4 side, not a well-formed IPv6 packet (or an extension-header chain the
    /// AFTR refuses to walk).
    Ipv6Malformed => "ipv6_malformed",
    /// From the B4 side, to an IPv6 address that is not the AFTR's endpoint.
    NotAftrEndpoint => "not_aftr_endpoint",
    /// From a B4 that may not make a softwire: outside `acl6`, or automatic softwires are
    /// off and it has no configured one.
    SoftwireNotAllowed => "softwire_not_allowed",
    /// A new B4, and the softwire table (`max-softwires`) is full; no softwire is evicted.
    SoftwireTableFull => "softwire_table_full",
    /// A softwire packet that carries something other than IPv4 (or whose routing header
    /// still has segments to visit).
    SoftwireNotIpv4 => "softwire_not_ipv4",
    /// A softwire packet whose inner source is not in the allowed (`private`) prefixes.
    SoftwireSourceNotPrivate => "softwire_source_not_private",
    /// A fragment of a softwire's IPv6 packet: the AFTR does not reassemble tunnel packets,
    /// so B4s must keep theirs within the IPv6 path MTU.
    SoftwireFragment => "softwire_fragment",
    /// The softwire holds its most sessions of this protocol (RFC 6888 REQ-4).
    SoftwireSessionLimit => "softwire_session_limit",
    /// The softwire opens sessions of this protocol faster than its rate (RFC 6888 REQ-5).
    SoftwireRateLimit => "softwire_rate_limit",
    /// The tunnel packet's outer header was marked congestion experienced and the inner
    /// packet is not ECN-capable (RFC 6040 section 4.2).
    SoftwireEcnNotCapable => "softwire_ecn_not_capable",
    /// A packet for a B4, and the buffer has no room for the IPv6 header in front of it (the
    /// driver must leave 40 bytes after the datagram).
    NoRoomToEncapsulate => "no_room_to_encapsulate",
    /// An ICMPv6 message to the AFTR: read (packet too big lowers the softwire's MTU), not
    /// forwarded.
    Icmpv6ToAftr => "icmpv6_to_aftr",
}

/// Plain-value counters of one engine, readable at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    drops: [u64; DropReason::COUNT],
    /// Packets forwarded, by direction `[outbound, inbound]`.
    pub forwarded_packets: [u64; 2],
    /// Bytes forwarded (IP total length), by direction `[outbound, inbound]`.
    pub forwarded_bytes: [u64; 2],
    /// Packets forwarded back inside by hairpinning (also counted as outbound).
    pub hairpinned_packets: u64,
    /// ICMP errors the engine generated.
    pub icmp_generated: u64,
    /// Packets for a B4 sent as IPv6 fragments: larger than their softwire's MTU (RFC 6333
    /// section 5.3).
    pub softwire_fragmented: u64,
    /// ICMPv6 packet too big messages that lowered a softwire's MTU.
    pub softwire_mtu_lowered: u64,
    /// TCP resets the engine generated (the `tcp-reset` answer to a refused SYN).
    pub tcp_resets_generated: u64,
    /// Packets held (early fragments, unsolicited SYNs).
    pub held_packets: u64,
    /// Sessions created.
    pub sessions_created: u64,
    /// Sessions deleted.
    pub sessions_deleted: u64,
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings deleted.
    pub mappings_deleted: u64,
    /// Events lost because the event queue was full.
    pub events_lost: u64,
    /// Sessions static NAT rules created.
    pub static_sessions_created: u64,
    /// Sessions virtual servers created.
    pub vserver_sessions_created: u64,
    /// Sessions of rules and virtual servers deleted.
    pub static_sessions_deleted: u64,
    /// Packets forwarded untranslated because a rule exempts them (RFC 6888 REQ-6).
    pub exempted_packets: u64,
    /// Packets given to the host that shares the external address ([`Verdict::ToHost`]).
    ///
    /// [`Verdict::ToHost`]: crate::Verdict::ToHost
    pub to_host_packets: u64,
    /// Refusals not reported as `MappingFailed` events because the same subscriber was
    /// refused for the same reason earlier in the same second (each is still a counted drop).
    pub refusal_reports_suppressed: u64,
    /// Answers to refused packets (ICMP errors, TCP resets) left out because the destination's
    /// or the engine's answer rate was used up (`limits.answer-rate`, `global-answer-rate`);
    /// each refused packet is still a counted drop.
    pub answers_suppressed: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            drops: [0; DropReason::COUNT],
            forwarded_packets: [0; 2],
            forwarded_bytes: [0; 2],
            hairpinned_packets: 0,
            icmp_generated: 0,
            softwire_fragmented: 0,
            softwire_mtu_lowered: 0,
            tcp_resets_generated: 0,
            held_packets: 0,
            sessions_created: 0,
            sessions_deleted: 0,
            mappings_created: 0,
            mappings_deleted: 0,
            events_lost: 0,
            static_sessions_created: 0,
            vserver_sessions_created: 0,
            static_sessions_deleted: 0,
            exempted_packets: 0,
            to_host_packets: 0,
            refusal_reports_suppressed: 0,
            answers_suppressed: 0,
        }
    }
}

impl Counters {
    /// Counts one dropped packet.
    #[inline]
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Counts one forwarded packet of `bytes` bytes.
    #[inline]
    pub fn count_forward(&mut self, dir: Direction, bytes: usize) {
        self.count_forwarded(dir, 1, bytes as u64);
    }

    /// Counts `packets` forwarded packets of `bytes` bytes in all (a batch's at once).
    #[inline]
    pub fn count_forwarded(&mut self, dir: Direction, packets: u64, bytes: u64) {
        let i = match dir {
            Direction::Outbound => 0,
            Direction::Inbound => 1,
        };
        self.forwarded_packets[i] += packets;
        self.forwarded_bytes[i] += bytes;
    }

    /// Packets dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Every reason with its count, in counter order.
    pub fn drops_by_reason(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops[*r as usize]))
    }

    /// All dropped packets.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds `other`'s counts to these (for drivers that run one engine per core).
    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
        for i in 0..2 {
            self.forwarded_packets[i] += other.forwarded_packets[i];
            self.forwarded_bytes[i] += other.forwarded_bytes[i];
        }
        self.hairpinned_packets += other.hairpinned_packets;
        self.icmp_generated += other.icmp_generated;
        self.softwire_fragmented += other.softwire_fragmented;
        self.softwire_mtu_lowered += other.softwire_mtu_lowered;
        self.tcp_resets_generated += other.tcp_resets_generated;
        self.held_packets += other.held_packets;
        self.sessions_created += other.sessions_created;
        self.sessions_deleted += other.sessions_deleted;
        self.mappings_created += other.mappings_created;
        self.mappings_deleted += other.mappings_deleted;
        self.events_lost += other.events_lost;
        self.static_sessions_created += other.static_sessions_created;
        self.vserver_sessions_created += other.vserver_sessions_created;
        self.static_sessions_deleted += other.static_sessions_deleted;
        self.exempted_packets += other.exempted_packets;
        self.to_host_packets += other.to_host_packets;
        self.refusal_reports_suppressed += other.refusal_reports_suppressed;
        self.answers_suppressed += other.answers_suppressed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names.iter().all(|n| {
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        }));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn merge_adds_every_counter() {
        let mut a = Counters::default();
        a.count_drop(DropReason::NoMapping);
        a.count_forward(Direction::Outbound, 100);
        let mut b = a.clone();
        b.count_drop(DropReason::Filtered);
        b.sessions_created = 3;
        a.merge(&b);
        assert_eq!(a.drops(DropReason::NoMapping), 2);
        assert_eq!(a.drops(DropReason::Filtered), 1);
        assert_eq!(a.forwarded_bytes[0], 200);
        assert_eq!(a.sessions_created, 3);
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        let mut c = Counters::default();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                c.count_drop(*r);
            }
        }
        for (i, (_, n)) in c.drops_by_reason().enumerate() {
            assert_eq!(n, i as u64 + 1);
        }
    }
}
