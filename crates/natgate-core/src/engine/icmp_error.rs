//! ICMP error translation (RFC 5508 section 4, RFC 5382 REQ-9, RFC 4787 REQ-12).
//!
//! An ICMP error quotes the packet it is about. The NAT must translate the quoted packet back
//! (addresses, ports or identifier, and their checksums) as well as the outer header, or the
//! host receiving the error cannot match it to its socket. Errors never refresh or delete the
//! session they are about (RFC 5508 REQ-6, RFC 5382 REQ-10).

use super::Engine;
use super::packet::{self, Parsed, Which, read16, write16};
use crate::alloc::PortAllocator;
use crate::config::Hairpinning;
use crate::counters::DropReason;
use crate::endpoint::{Direction, Endpoint, Protocol, Side};
use crate::table::{FlowKey, SoftwireTag};
use crate::verdict::Verdict;
use crate::wire::checksum::{self, Delta};
use crate::wire::icmp::{self, IcmpKind};
use crate::wire::ipv4::Ipv4Packet;

/// The quoted packet inside an ICMP error, as far as it goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inner {
    /// Offset of the quoted IPv4 header in the buffer.
    ip: usize,
    /// Offset of the quoted transport header.
    l4: usize,
    /// Bytes of the transport header that were quoted.
    l4_len: usize,
    pub(crate) proto: Protocol,
    /// The quoted packet's source and destination; for a quoted ICMP query the identifier sits
    /// on the side that names the inside (`inside_is_src`).
    pub(crate) src: Endpoint,
    pub(crate) dst: Endpoint,
}

/// Parses the quoted packet. It is usually cut short (RFC 792 quotes the IP header and 8 bytes),
/// so its total length is not checked against what is there; its header checksum is
/// (RFC 5508 REQ-3), and it must carry the 8 transport bytes with the ports or identifier.
pub(crate) fn parse_inner(
    buf: &[u8],
    outer: &Parsed,
    inside_is_src: bool,
) -> Result<Inner, DropReason> {
    let ip = outer.l4 + 8;
    let quoted = buf
        .get(ip..outer.len)
        .ok_or(DropReason::IcmpErrorBadInner)?;
    // The same view of an IPv4 header as every packet's, in its quoted form (its total length
    // is that of the original datagram, longer than the quote): version, header length, and
    // the header inside the quote.
    let view = Ipv4Packet::new_checked_quoted(quoted).map_err(|_| DropReason::IcmpErrorBadInner)?;
    let ihl = view.header_len();
    if quoted.len() < ihl + 8 || !view.verify_checksum() {
        return Err(DropReason::IcmpErrorBadInner);
    }
    // A quoted non-first fragment has no transport header to translate.
    if view.frag_offset() != 0 {
        return Err(DropReason::IcmpErrorBadInner);
    }
    let proto = Protocol::from_ip_number(view.protocol()).ok_or(DropReason::IcmpErrorBadInner)?;
    let l4 = &quoted[ihl..];
    let mut src = Endpoint::new(view.src_addr(), 0);
    let mut dst = Endpoint::new(view.dst_addr(), 0);
    match proto {
        Protocol::Tcp | Protocol::Udp => {
            src.port = read16(l4, 0);
            dst.port = read16(l4, 2);
        }
        Protocol::Icmp => {
            // Only queries have an identifier to match; errors about errors are never sent.
            if !matches!(
                icmp::classify(l4[0]),
                IcmpKind::QueryRequest | IcmpKind::QueryReply
            ) {
                return Err(DropReason::IcmpErrorBadInner);
            }
            let id = read16(l4, 4);
            if inside_is_src {
                src.port = id;
            } else {
                dst.port = id;
            }
        }
    }
    Ok(Inner {
        ip,
        l4: ip + ihl,
        l4_len: l4.len(),
        proto,
        src,
        dst,
    })
}

/// Rewrites the quoted packet's source or destination endpoint, keeping the quoted IP header
/// checksum, the quoted transport checksum (where quoted) and the outer ICMP checksum right.
/// Every field lies at an even offset from the ICMP header, so one incremental delta over the
/// changed words fixes the ICMP checksum (RFC 1624).
fn rewrite_inner(buf: &mut [u8], outer: &Parsed, inner: &mut Inner, which: Which, new: Endpoint) {
    let mut icmp_delta = Delta::default();
    let mut l4_delta = Delta::default();
    let (addr_off, old) = match which {
        Which::Src => (inner.ip + 12, inner.src),
        Which::Dst => (inner.ip + 16, inner.dst),
    };
    if old.addr != new.addr {
        buf[addr_off..addr_off + 4].copy_from_slice(&new.addr.octets());
        let ip_check_off = inner.ip + 10;
        let old_check = read16(buf, ip_check_off);
        let new_check = checksum::update32(old_check, u32::from(old.addr), u32::from(new.addr));
        write16(buf, ip_check_off, new_check);
        icmp_delta.add_addr(old.addr, new.addr);
        icmp_delta.add16(old_check, new_check);
        if inner.proto != Protocol::Icmp {
            l4_delta.add_addr(old.addr, new.addr);
        }
    }
    if old.port != new.port {
        let port_off = match (inner.proto, which) {
            (Protocol::Icmp, _) => inner.l4 + 4,
            (_, Which::Src) => inner.l4,
            (_, Which::Dst) => inner.l4 + 2,
        };
        write16(buf, port_off, new.port);
        icmp_delta.add16(old.port, new.port);
        l4_delta.add16(old.port, new.port);
    }
    let check_at = match inner.proto {
        Protocol::Tcp => 16,
        Protocol::Udp => 6,
        Protocol::Icmp => 2,
    };
    // RFC 5508 REQ-3: the quoted transport checksum is not required to be there, but when it
    // is, it is kept consistent for the host that checks it.
    if inner.l4_len >= check_at + 2 {
        let off = inner.l4 + check_at;
        let old_check = read16(buf, off);
        let new_check = match inner.proto {
            Protocol::Udp => checksum::apply_udp(l4_delta, old_check),
            _ => l4_delta.apply(old_check),
        };
        write16(buf, off, new_check);
        icmp_delta.add16(old_check, new_check);
    }
    let icmp_check_off = outer.l4 + 2;
    let c = read16(buf, icmp_check_off);
    write16(buf, icmp_check_off, icmp_delta.apply(c));
    match which {
        Which::Src => inner.src = new,
        Which::Dst => inner.dst = new,
    }
}

impl<A: PortAllocator> Engine<A> {
    /// An error from outside about a packet we sent: the quoted packet went out from an
    /// external endpoint, so it names the session by its outside key.
    pub(super) fn icmp_error_inbound(&mut self, buf: &mut [u8], p: &mut Parsed) -> Verdict {
        let mut inner = match parse_inner(buf, p, true) {
            Ok(i) => i,
            Err(r) => return Verdict::Drop(r),
        };
        // The error must be addressed to the quoted packet's sender.
        if inner.src.addr != p.dst.addr {
            return Verdict::Drop(DropReason::IcmpErrorNoSession);
        }
        let remote = Endpoint::new(
            inner.dst.addr,
            if inner.proto == Protocol::Icmp {
                0
            } else {
                inner.dst.port
            },
        );
        let key = FlowKey {
            proto: inner.proto,
            softwire: SoftwireTag::NONE,
            local: inner.src,
            remote,
        };
        let (internal, peer) = match self.sessions.find_in(&key) {
            Some(sid) => {
                // An error about a softwire's flow goes to its B4.
                p.softwire = self.sessions.get(sid).softwire;
                (self.sessions.get(sid).internal, None)
            }
            // A flow of a rule or virtual server: its inside view may name the peer
            // differently too (twice-NAT).
            None => match self.static_error_inbound(inner.proto, inner.src, remote) {
                Some((local, peer)) => (local, Some(peer)),
                // An error about exempted traffic passes untranslated, like that traffic.
                None if self.exempted(Direction::Inbound, p) => {
                    return self.exempt(buf, Side::Inside);
                }
                None if !self.alloc.owns(p.dst.addr) => {
                    return Verdict::Drop(DropReason::NotPoolAddress);
                }
                None => return Verdict::Drop(DropReason::IcmpErrorNoSession),
            },
        };
        rewrite_inner(buf, p, &mut inner, Which::Src, internal);
        if let Some(peer) = peer {
            rewrite_inner(buf, p, &mut inner, Which::Dst, peer);
        }
        packet::rewrite_addr(buf, Which::Dst, internal.addr);
        p.dst.addr = internal.addr;
        self.finish(buf, Side::Inside)
    }

    /// An error from inside about a packet a subscriber received: the quoted packet came in to
    /// the subscriber's internal endpoint, so it names the session by its inside key. The outer
    /// source becomes the mapping's external address, also when a router inside sent it.
    pub(super) fn icmp_error_outbound(&mut self, buf: &mut [u8], p: &mut Parsed) -> Verdict {
        let mut inner = match parse_inner(buf, p, false) {
            Ok(i) => i,
            Err(r) => return Verdict::Drop(r),
        };
        let remote = Endpoint::new(
            inner.src.addr,
            if inner.proto == Protocol::Icmp {
                0
            } else {
                inner.src.port
            },
        );
        let key = FlowKey {
            proto: inner.proto,
            softwire: p.softwire,
            local: inner.dst,
            remote,
        };
        let Some(sid) = self.sessions.find_out(&key) else {
            if p.softwire.is_some() {
                return Verdict::Drop(DropReason::IcmpErrorNoSession);
            }
            return self.static_icmp_error_outbound(buf, p, inner, remote);
        };
        let external = self.sessions.get(sid).external;
        rewrite_inner(buf, p, &mut inner, Which::Dst, external);
        packet::rewrite_addr(buf, Which::Src, external.addr);
        p.src.addr = external.addr;
        if !self.alloc.owns(p.dst.addr) {
            return self.finish(buf, Side::Outside);
        }
        // RFC 5508 REQ-7: an error about a hairpinned packet goes back in, translated again as
        // if it had arrived from outside.
        if self.behavior.hairpinning == Hairpinning::Off {
            return Verdict::Drop(DropReason::HairpinDisabled);
        }
        self.counters.hairpinned_packets += 1;
        self.icmp_error_inbound(buf, p)
    }

    /// An error from inside about a packet of a rule's or virtual server's flow: the quoted
    /// packet (from `remote`, as the inside saw it) is put back in the outside view, and the
    /// error leaves from the inside host's outside address to the peer's outside address.
    fn static_icmp_error_outbound(
        &mut self,
        buf: &mut [u8],
        p: &mut Parsed,
        mut inner: Inner,
        remote: Endpoint,
    ) -> Verdict {
        let Some((local, peer)) = self.static_error_outbound(inner.proto, remote, inner.dst) else {
            if self.exempted(Direction::Outbound, p) {
                return self.exempt(buf, Side::Outside);
            }
            return Verdict::Drop(DropReason::IcmpErrorNoSession);
        };
        rewrite_inner(buf, p, &mut inner, Which::Dst, local);
        rewrite_inner(buf, p, &mut inner, Which::Src, peer);
        packet::rewrite_addr(buf, Which::Src, local.addr);
        p.src.addr = local.addr;
        if p.dst.addr == remote.addr {
            packet::rewrite_addr(buf, Which::Dst, peer.addr);
            p.dst.addr = peer.addr;
        }
        self.finish(buf, Side::Outside)
    }
}
