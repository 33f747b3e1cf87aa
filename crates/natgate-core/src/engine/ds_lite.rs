//! The DS-Lite packet path (RFC 6333): packets from B4s are decapsulated, checked against the
//! softwire policy and translated as NAPT44 with the softwire as the subscriber; packets to a
//! subscriber behind a softwire leave in an IPv6 header from the AFTR's endpoint to its B4,
//! within the softwire's MTU (section 5.3), their TCP MSS clamped.

use super::packet::{self, Fragment, Parsed};
use super::queues::{TRANSMIT_SLOT, TransmitQueue};
use super::softwire::HOP_LIMIT;
use super::{Engine, ICMP_DEST_UNREACHABLE};
use crate::alloc::PortAllocator;
use crate::config::TooBig;
use crate::counters::DropReason;
use crate::endpoint::{Protocol, Side};
use crate::table::{SoftwireId, SoftwireTag};
use crate::time::Instant;
use crate::verdict::Verdict;
use crate::wire::icmpv6;
use crate::wire::ipv6::{self, HEADER_LEN as IPV6_HEADER_LEN, Ipv6Repr, next_header};
use crate::wire::tcp::TcpPacket;
use crate::wire::tunnel::{self, Carried, EcnOnExit, Fragmenter, Outer};

const TCP_SYN: u8 = 0x02;

/// IPv4 and TCP headers without options: what a segment carries besides its MSS.
const TCP_IPV4_OVERHEAD: u16 = 40;

impl<A: PortAllocator> Engine<A> {
    /// Translates one packet that arrived from the B4 side: `buf[..len]` holds an IPv6
    /// packet. A softwire packet is decapsulated and translated; on
    /// [`Verdict::ForwardAt`] the translated IPv4 packet (or, hairpinned to another
    /// softwire, a new IPv6 packet) is at the range it names. An answer to the B4's host
    /// ([`Verdict::Reply`]) is an IPv6 packet to the B4, at the start of the buffer. Leave 40
    /// bytes of room after the packet (see [`Engine::process`]).
    pub fn process_softwire(&mut self, now: Instant, buf: &mut [u8], len: usize) -> Verdict {
        let len = len.min(buf.len());
        let verdict = self.softwire_one(now, buf, len);
        let counted = match verdict {
            Verdict::ForwardAt { len, .. } => len,
            _ => len,
        };
        self.account(Side::Inside, counted, verdict);
        verdict
    }

    fn softwire_one(&mut self, now: Instant, buf: &mut [u8], len: usize) -> Verdict {
        let Some(sw) = self.softwires.as_mut() else {
            return Verdict::Drop(DropReason::DsLiteOff);
        };
        let Ok((outer, carried)) = tunnel::decapsulate(&buf[..len]) else {
            return Verdict::Drop(DropReason::Ipv6Malformed);
        };
        if outer.aftr != sw.endpoint {
            return Verdict::Drop(DropReason::NotAftrEndpoint);
        }
        let (start, inner_len) = match carried {
            Carried::Ipv4 { start, len } => (start, len),
            Carried::Icmpv6 { start, len } => {
                return self.icmpv6_to_aftr(&outer, &buf[start..start + len]);
            }
            Carried::Fragment { .. } => return Verdict::Drop(DropReason::SoftwireFragment),
            Carried::Other(_) => return Verdict::Drop(DropReason::SoftwireNotIpv4),
        };
        let id = match sw.resolve(outer.b4, now) {
            Ok(id) => id,
            Err(reason) => return Verdict::Drop(reason),
        };
        let verdict = self.translate_from_b4(now, buf, start, inner_len, &outer, id);
        if let Some(sw) = self.softwires.as_mut() {
            sw.forget_if_idle(id);
        }
        verdict
    }

    /// The IPv4 packet at `buf[start..start + len]`, from softwire `id`.
    fn translate_from_b4(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        start: usize,
        len: usize,
        outer: &Outer,
        id: SoftwireId,
    ) -> Verdict {
        let inner = &mut buf[start..];
        let mut p = match packet::parse(&inner[..len], Side::Inside) {
            Ok(p) => p,
            Err(reason) => return Verdict::Drop(reason),
        };
        let Some(sw) = self.softwires.as_ref() else {
            return Verdict::Drop(DropReason::DsLiteOff);
        };
        // A home behind a B4 uses private space (the ISC AFTR's `private`); anything else is
        // spoofed or misconfigured, and makes no state.
        if !sw.allows_inner_source(p.src.addr) {
            return Verdict::Drop(DropReason::SoftwireSourceNotPrivate);
        }
        match tunnel::ecn_on_exit(outer.traffic_class, inner[1]) {
            EcnOnExit::Keep => {}
            EcnOnExit::MarkCe => packet::mark_ce(inner),
            EcnOnExit::Drop => return Verdict::Drop(DropReason::SoftwireEcnNotCapable),
        }
        p.softwire = SoftwireTag::of(id);
        if sw.mss
            && let Some((_, mtu)) = sw.endpoint_of(p.softwire)
        {
            clamp_mss(inner, &p, mtu);
        }
        let to_pool = self.alloc.owns(p.dst.addr);
        match self.process_parsed(now, Side::Inside, inner, p, to_pool, None) {
            Verdict::Forward(side) => Verdict::ForwardAt {
                side,
                start,
                len: p.len,
            },
            Verdict::ForwardAt {
                side,
                start: at,
                len,
            } => Verdict::ForwardAt {
                side,
                start: start + at,
                len,
            },
            // The answer to the B4's host goes back through its softwire: the IPv6 header it
            // came in goes in front of it again.
            Verdict::Reply { side, len, reason } => {
                let Some(total) = len.checked_add(IPV6_HEADER_LEN) else {
                    return Verdict::Drop(reason);
                };
                let reply_outer = Outer {
                    b4: outer.b4,
                    aftr: outer.aftr,
                    traffic_class: 0,
                    hop_limit: HOP_LIMIT,
                };
                let head = start - IPV6_HEADER_LEN;
                write_outer(&mut buf[head..start], &reply_outer, len);
                buf.copy_within(head..head + total, 0);
                Verdict::Reply {
                    side,
                    len: total,
                    reason,
                }
            }
            v => v,
        }
    }

    /// An IPv4 packet, translated, for a subscriber behind softwire `p.softwire`, at the start
    /// of `buf`: its MSS clamped, then out in an IPv6 header to the B4, or in IPv6 fragments
    /// when it does not fit the softwire MTU and the `too-big` policy allows (RFC 6333
    /// section 5.3).
    pub(super) fn send_to_b4(&mut self, buf: &mut [u8], p: &Parsed) -> Verdict {
        let Some(sw) = self.softwires.as_ref() else {
            return Verdict::Drop(DropReason::DsLiteOff);
        };
        let Some((_, mtu)) = sw.endpoint_of(p.softwire) else {
            return Verdict::Drop(DropReason::SoftwireNotAllowed);
        };
        if sw.mss {
            clamp_mss(buf, p, mtu);
        }
        if p.len > usize::from(mtu) {
            let policy = sw.too_big;
            return self.too_big_for_softwire(buf, p, mtu, policy);
        }
        self.encapsulate_to(buf, p.len, p.softwire)
    }

    /// The IPv4 packet `buf[..len]` in an IPv6 header to the B4 of softwire `tag`, moved 40
    /// bytes up in `buf`.
    pub(super) fn encapsulate_to(
        &mut self,
        buf: &mut [u8],
        len: usize,
        tag: SoftwireTag,
    ) -> Verdict {
        let Some(mut outer) = self.softwires.as_ref().and_then(|t| t.outer_for(tag)) else {
            return Verdict::Drop(DropReason::SoftwireNotAllowed);
        };
        outer.traffic_class = buf
            .get(1)
            .map_or(0, |&tos| tunnel::outer_traffic_class(tos));
        match tunnel::encapsulate_in_place(buf, len, &outer) {
            Ok(len) => Verdict::ForwardAt {
                side: Side::Inside,
                start: 0,
                len,
            },
            Err(_) => Verdict::Drop(DropReason::NoRoomToEncapsulate),
        }
    }

    /// Before an inbound packet is translated for a subscriber behind softwire `tag`: with DF
    /// set and larger than the softwire MTU, `icmp` and `strict` answer fragmentation needed
    /// with that MTU (RFC 1191), so the sender's path MTU discovery sees the tunnel. The
    /// answer quotes the packet as the sender sent it, which is why this comes first.
    pub(super) fn softwire_refuses_too_big(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        p: &Parsed,
        tag: SoftwireTag,
    ) -> Option<Verdict> {
        let sw = self.softwires.as_ref()?;
        let (_, mtu) = sw.endpoint_of(tag)?;
        let answer = matches!(sw.too_big, TooBig::Icmp | TooBig::Strict);
        if !(answer && p.df && p.len > usize::from(mtu)) {
            return None;
        }
        Some(self.reply_error(
            now,
            buf,
            p,
            Side::Outside,
            ICMP_DEST_UNREACHABLE,
            4,
            u32::from(mtu),
            DropReason::TooBig,
        ))
    }

    /// A translated packet larger than its softwire's MTU that no answer refused (see
    /// [`Self::softwire_refuses_too_big`]): the tunnel packet is fragmented (`fragment-ipv6`,
    /// the RFC's preference, and `icmp` without DF; the B4 reassembles), or dropped
    /// (`strict`).
    fn too_big_for_softwire(
        &mut self,
        buf: &mut [u8],
        p: &Parsed,
        mtu: u16,
        policy: TooBig,
    ) -> Verdict {
        if policy == TooBig::Strict {
            return Verdict::Drop(DropReason::TooBig);
        }
        let equal = self.softwires.as_ref().is_some_and(|t| t.equal_fragments);
        let Verdict::ForwardAt { len, .. } = self.encapsulate_to(buf, p.len, p.softwire) else {
            return Verdict::Drop(DropReason::NoRoomToEncapsulate);
        };
        // Fragments fit the tunnel's path MTU, and the engine's transmit slots.
        let path_mtu = (usize::from(mtu) + IPV6_HEADER_LEN).min(TRANSMIT_SLOT) as u16;
        let ident = self.rng.next_u64() as u32;
        let Ok(mut frags) = Fragmenter::new(&buf[..len], path_mtu, ident, equal) else {
            return Verdict::Drop(DropReason::TooBig);
        };
        let mut sent = 0;
        while let Some((slot, out)) = self.transmit.slot_mut() {
            let Some(n) = frags.next_into(out) else {
                break;
            };
            self.transmit.commit(slot, Side::Inside, n);
            sent += 1;
        }
        if sent < frags.count() {
            // A packet missing a fragment is lost whole: what went is wasted, but bounded by
            // the transmit queue.
            return Verdict::Drop(DropReason::FragmentLimit);
        }
        self.counters.softwire_fragmented += 1;
        Verdict::Held
    }

    /// An ICMPv6 message to the AFTR: a valid packet too big about a packet it sent to a B4
    /// lowers that softwire's MTU (RFC 6333 section 5.3); nothing is forwarded.
    fn icmpv6_to_aftr(&mut self, outer: &Outer, msg: &[u8]) -> Verdict {
        let Some(sw) = self.softwires.as_mut() else {
            return Verdict::Drop(DropReason::DsLiteOff);
        };
        if !icmpv6::checksum_ok(outer.b4, outer.aftr, msg) {
            return Verdict::Drop(DropReason::IcmpBadChecksum);
        }
        if let Ok(Some(ptb)) = icmpv6::packet_too_big(msg)
            && ptb.quoted_src == sw.endpoint
            && sw.lower_mtu(ptb.quoted_dst, ptb.mtu).is_some()
        {
            self.counters.softwire_mtu_lowered += 1;
        }
        Verdict::Drop(DropReason::Icmpv6ToAftr)
    }

    /// The tag the sessions of B4 `b4`'s softwire carry, if it has one now.
    pub(super) fn softwire_tag(&self, b4: std::net::Ipv6Addr) -> Option<SoftwireTag> {
        Some(SoftwireTag::of(self.softwires.as_ref()?.find(b4)?))
    }

    /// The B4 of the softwire a session's tag names.
    pub(super) fn b4_of(&self, tag: SoftwireTag) -> Option<std::net::Ipv6Addr> {
        Some(self.softwires.as_ref()?.endpoint_of(tag)?.0)
    }

    /// Softwires tracked now (configured ones, and automatic ones with sessions).
    pub fn softwire_count(&self) -> usize {
        self.softwires.as_ref().map_or(0, |t| t.len())
    }

    /// The softwires, for operators: each B4 with its MTU and sessions.
    pub fn softwires(&self) -> impl Iterator<Item = super::SoftwireInfo> + '_ {
        self.softwires.iter().flat_map(|t| t.iter())
    }
}

/// Writes the IPv6 header of `outer` (AFTR to B4) for a `payload_len`-byte IPv4 packet into
/// `head`, which is exactly 40 bytes.
fn write_outer(head: &mut [u8], outer: &Outer, payload_len: usize) {
    ipv6::write_header(
        head,
        &Ipv6Repr {
            src: outer.aftr,
            dst: outer.b4,
            next_header: next_header::IPV4,
            hop_limit: outer.hop_limit,
            traffic_class: outer.traffic_class,
            payload_len: u16::try_from(payload_len).unwrap_or(u16::MAX),
        },
    );
}

/// Puts `frag`, an IPv4 fragment for a subscriber behind a softwire, in the transmit queue in
/// an IPv6 header to the B4 of `outer`; false when the queue or its slot has no room.
pub(super) fn push_encapsulated(transmit: &mut TransmitQueue, outer: &Outer, frag: &[u8]) -> bool {
    let len = frag.len() + IPV6_HEADER_LEN;
    let Some((slot, out)) = transmit.slot_mut() else {
        return false;
    };
    if len > out.len() {
        return false;
    }
    let mut o = *outer;
    o.traffic_class = frag
        .get(1)
        .map_or(0, |&tos| tunnel::outer_traffic_class(tos));
    write_outer(&mut out[..IPV6_HEADER_LEN], &o, frag.len());
    out[IPV6_HEADER_LEN..len].copy_from_slice(frag);
    transmit.commit(slot, Side::Inside, len);
    true
}

/// Lowers the MSS option of a TCP SYN (or SYN-ACK) to what a softwire of `mtu` carries whole
/// (the MTU less 40 bytes of IPv4 and TCP headers), so neither end sends segments the tunnel
/// would have to fragment. The TCP checksum is updated incrementally.
fn clamp_mss(buf: &mut [u8], p: &Parsed, mtu: u16) {
    if p.proto != Protocol::Tcp || p.tcp_flags & TCP_SYN == 0 || p.frag != Fragment::None {
        return;
    }
    let Some(segment) = buf.get_mut(p.l4..p.len) else {
        return;
    };
    let Ok(mut tcp) = TcpPacket::new_checked(segment) else {
        return;
    };
    let max = mtu.saturating_sub(TCP_IPV4_OVERHEAD);
    if tcp.mss_option().is_some_and(|mss| mss > max) {
        tcp.set_mss_option(max);
    }
}

#[cfg(test)]
mod tests;
