//! The engine's view of one packet: parsed once into a small summary, then rewritten in place
//! with incremental checksum updates (RFC 1624), never recomputed from scratch.

use crate::config::TtlHandling;
use crate::counters::DropReason;
use crate::endpoint::{Endpoint, Protocol, Side};
use crate::table::SoftwireTag;
use crate::wire::WireError;
use crate::wire::checksum::{self, Delta};
use crate::wire::icmp::{self, IcmpKind};
use crate::wire::ipv4::Ipv4Packet;
use std::net::Ipv4Addr;

/// Offsets of IPv4 header fields the engine rewrites.
/// The flags and fragment offset word.
const IP_FLAGS: usize = 6;
const IP_TTL: usize = 8;
const IP_CHECKSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;

/// Where a packet sits in its datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A whole datagram.
    None,
    /// Offset 0 with more fragments to come: carries the transport header.
    First,
    /// Any later fragment: no transport header.
    Later,
}

/// What the transport part of the packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// TCP or UDP, or an ICMP query (echo, timestamp) whose identifier plays the port.
    Flow,
    /// An ICMP error; its embedded packet is handled by `icmp_error`.
    IcmpError,
}

/// Everything the policy code needs from a packet, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// IPv4 total length (the packet's real length; buffers may be longer).
    pub len: usize,
    /// Offset of the transport header.
    pub l4: usize,
    /// The transport protocol.
    pub proto: Protocol,
    /// Flow or ICMP error.
    pub kind: Kind,
    /// Source endpoint. For ICMP queries arriving inside the identifier is the source "port";
    /// arriving outside it is the destination "port" (the identifier always names the inside).
    pub src: Endpoint,
    /// Destination endpoint.
    pub dst: Endpoint,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// Fragment position.
    pub frag: Fragment,
    /// Don't-fragment bit.
    pub df: bool,
    /// Time to live on arrival.
    pub ttl: u8,
    /// IPv4 identification (fragment state key).
    pub ident: u16,
    /// Fragment offset in bytes (0 for whole datagrams and first fragments).
    pub frag_offset: u32,
    /// The softwire (DS-Lite) of the packet's subscriber side: the sender's, for a packet a
    /// B4 sent; the receiver's, once translation found a session behind a softwire for a
    /// packet on its way to a subscriber. [`SoftwireTag::NONE`] for a plain IPv4 subscriber.
    pub softwire: SoftwireTag,
}

impl Parsed {
    /// The raw IP protocol number.
    pub fn ip_proto(&self) -> u8 {
        self.proto.ip_number()
    }

    /// The bytes of its datagram this packet carries, `[start, end)` (for fragments).
    pub fn frag_range(&self) -> (u32, u32) {
        let payload = self.len.saturating_sub(self.l4) as u32;
        (self.frag_offset, self.frag_offset + payload)
    }
}

/// IPv4 flags and fragment offset (RFC 791 section 3.1), in the 16-bit word at offset 6.
const DF: u16 = 0x4000;
const MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1FFF;

/// Parses the IPv4 header and as much of the transport header as the engine needs. Checks the
/// IPv4 header checksum (RFC 1812 5.2.2) and, for whole ICMP messages, the ICMP checksum
/// (RFC 5508 REQ-3); transport checksums are left to the end hosts.
#[inline]
pub(crate) fn parse(buf: &[u8], side: Side) -> Result<Parsed, DropReason> {
    let ip = Ipv4Packet::new_checked(buf).map_err(|e| match e {
        WireError::BadVersion => DropReason::NotIpv4,
        _ => DropReason::Ipv4Malformed,
    })?;
    // `new_checked` guarantees at least a 20-byte header inside a total length that fits in
    // `buf`; reading the fixed header from an array spares a bounds check per field.
    let Some(h) = buf.first_chunk::<20>() else {
        return Err(DropReason::Ipv4Malformed);
    };
    let len = usize::from(ip.total_len());
    let l4 = ip.header_len();
    if !header_checksum_ok(&buf[..l4]) {
        return Err(DropReason::Ipv4BadChecksum);
    }
    let proto = Protocol::from_ip_number(h[9]).ok_or(DropReason::UnsupportedProtocol)?;
    let flags = u16::from_be_bytes([h[6], h[7]]);
    let frag = if flags & OFFSET_MASK != 0 {
        Fragment::Later
    } else if flags & MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    let mut p = Parsed {
        len,
        l4,
        proto,
        kind: Kind::Flow,
        src: Endpoint::new(Ipv4Addr::new(h[12], h[13], h[14], h[15]), 0),
        dst: Endpoint::new(Ipv4Addr::new(h[16], h[17], h[18], h[19]), 0),
        tcp_flags: 0,
        frag,
        df: flags & DF != 0,
        ttl: h[8],
        ident: u16::from_be_bytes([h[4], h[5]]),
        frag_offset: u32::from(flags & OFFSET_MASK) * 8,
        softwire: SoftwireTag::NONE,
    };
    if frag == Fragment::Later {
        return Ok(p);
    }
    let l4b = &buf[l4..len];
    match proto {
        Protocol::Tcp | Protocol::Udp => {
            // The first fragment must hold the whole TCP header; RFC 1858 forbids tiny
            // fragments that split it, and we only need the ports and flags.
            let need = if proto == Protocol::Tcp { 14 } else { 8 };
            if l4b.len() < need {
                return Err(DropReason::L4Truncated);
            }
            p.src.port = u16::from_be_bytes([l4b[0], l4b[1]]);
            p.dst.port = u16::from_be_bytes([l4b[2], l4b[3]]);
            if p.src.port == 0 || p.dst.port == 0 {
                return Err(DropReason::ZeroPort);
            }
            if proto == Protocol::Tcp {
                if l4b.len() < 20 {
                    return Err(DropReason::L4Truncated);
                }
                p.tcp_flags = l4b[13];
            }
        }
        Protocol::Icmp => {
            if l4b.len() < 8 {
                return Err(DropReason::L4Truncated);
            }
            // A fragmented ICMP message cannot be checked until reassembly, which a NAT does
            // not do; only whole messages are verified.
            if frag == Fragment::None && checksum::checksum(l4b) != 0 {
                return Err(DropReason::IcmpBadChecksum);
            }
            match icmp::classify(l4b[0]) {
                IcmpKind::QueryRequest | IcmpKind::QueryReply => {
                    let id = u16::from_be_bytes([l4b[4], l4b[5]]);
                    match side {
                        Side::Inside => p.src.port = id,
                        Side::Outside => p.dst.port = id,
                    }
                }
                IcmpKind::Error => {
                    if frag != Fragment::None {
                        return Err(DropReason::IcmpErrorBadInner);
                    }
                    p.kind = Kind::IcmpError;
                }
                IcmpKind::Other => return Err(DropReason::UnsupportedIcmp),
            }
        }
    }
    Ok(p)
}

/// The common case, read straight from a packet's first bytes: a whole TCP or UDP datagram
/// (no fragment) with a plain 20-byte IPv4 header. This is what the batch path's first pass
/// reads of every packet; [`parse`] would accept the same bytes and give the same summary
/// ([`FlowHead::parsed`]), so a packet that is not of this shape simply takes [`parse`].
///
/// Why a second reader: established flows are nearly all of a NAT's packets, and reading them
/// with the general parser (options, ICMP, fragments, a `Result` per field) cost about as much
/// as the rest of their translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowHead {
    /// TCP or UDP.
    pub proto: Protocol,
    /// Source endpoint.
    pub src: Endpoint,
    /// Destination endpoint.
    pub dst: Endpoint,
    /// IPv4 total length.
    pub len: u16,
    /// IPv4 identification.
    pub ident: u16,
    /// Time to live on arrival.
    pub ttl: u8,
    /// Don't-fragment bit.
    pub df: bool,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
}

impl FlowHead {
    /// The [`Parsed`] summary that [`parse`] gives for the same packet.
    #[inline(always)]
    pub(crate) fn parsed(&self) -> Parsed {
        Parsed {
            len: usize::from(self.len),
            l4: 20,
            proto: self.proto,
            kind: Kind::Flow,
            src: self.src,
            dst: self.dst,
            tcp_flags: self.tcp_flags,
            frag: Fragment::None,
            df: self.df,
            ttl: self.ttl,
            ident: self.ident,
            frag_offset: 0,
            softwire: SoftwireTag::NONE,
        }
    }
}

/// Reads `buf` (the datagram, perhaps followed by link padding) as a [`FlowHead`], or `None`
/// when it is anything else or anything [`parse`] would refuse: IPv4 options, a fragment,
/// another protocol, a bad header checksum, a length that does not fit, a truncated transport
/// header, a zero port.
#[inline(always)]
pub(crate) fn flow_head(buf: &[u8]) -> Option<FlowHead> {
    let h = buf.first_chunk::<20>()?;
    let (proto, need) = match h[9] {
        6 => (Protocol::Tcp, 40),
        17 => (Protocol::Udp, 28),
        _ => return None,
    };
    let len = u16::from_be_bytes([h[2], h[3]]);
    let flags = u16::from_be_bytes([h[6], h[7]]);
    if h[0] != 0x45
        || usize::from(len) > buf.len()
        || len < need
        || flags & (MF | OFFSET_MASK) != 0
        || !header_checksum_ok(h)
    {
        return None;
    }
    // `need` bytes lie inside the total length, so inside `buf`: these reads never fail.
    let ports = buf[20..].first_chunk::<4>()?;
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    if sport == 0 || dport == 0 {
        return None;
    }
    let tcp_flags = match proto {
        Protocol::Tcp => *buf.get(33)?,
        _ => 0,
    };
    Some(FlowHead {
        proto,
        src: Endpoint::new(Ipv4Addr::new(h[12], h[13], h[14], h[15]), sport),
        dst: Endpoint::new(Ipv4Addr::new(h[16], h[17], h[18], h[19]), dport),
        len,
        ident: u16::from_be_bytes([h[4], h[5]]),
        ttl: h[8],
        df: flags & DF != 0,
        tcp_flags,
    })
}

/// Whether an IPv4 header (20 to 60 bytes) sums to `0xFFFF` (RFC 1071: its checksum verifies).
/// A plain 20-byte header is summed as five 32-bit words in the machine's byte order: a one's
/// complement sum is byte-order independent (RFC 1071 section 2(B): summing swapped words gives
/// the swapped sum) and `0xFFFF` is its own swap, so no byte needs reordering; the carries are
/// folded back in at the end (section 2(C)). A header with options takes the general sum.
#[inline(always)]
fn header_checksum_ok(header: &[u8]) -> bool {
    let Some(fixed) = header.first_chunk::<20>().filter(|_| header.len() == 20) else {
        return checksum::checksum(header) == 0;
    };
    let word = |i: usize| {
        u64::from(u32::from_ne_bytes([
            fixed[i],
            fixed[i + 1],
            fixed[i + 2],
            fixed[i + 3],
        ]))
    };
    let sum = word(0) + word(4) + word(8) + word(12) + word(16);
    let sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    let sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    checksum::fold(sum as u32) == 0xFFFF
}

/// Which endpoint of a packet a rewrite changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    /// The source.
    Src,
    /// The destination.
    Dst,
}

/// Rewrites the source or destination endpoint of a parsed packet in place, updating the IPv4
/// header checksum and the transport checksum incrementally. For ICMP queries the "port" is the
/// identifier, wherever `which` points. Later fragments have no transport header: only the
/// address changes (the first fragment's transport checksum already accounts for it).
#[inline]
pub(crate) fn rewrite(buf: &mut [u8], p: &mut Parsed, which: Which, new: Endpoint) {
    translate(buf, p, which, new, TtlHandling::Keep);
}

/// [`rewrite`], and the TTL step of `ttl` ([`TtlHandling::apply`]; the caller has checked that
/// the packet does not expire), with one update of the IPv4 header checksum for both: the last
/// step of every translated flow packet. One's complement addition is associative, so one
/// update with both changes gives the same checksum as two updates in a row (RFC 1624 eqn. 3).
#[inline]
pub(crate) fn translate(
    buf: &mut [u8],
    p: &mut Parsed,
    which: Which,
    new: Endpoint,
    ttl: TtlHandling,
) {
    let (addr_off, old) = match which {
        Which::Src => (IP_SRC, p.src),
        Which::Dst => (IP_DST, p.dst),
    };
    let addr_delta = rewrite_ip(&mut buf[..20], addr_off, old.addr, new.addr, ttl);
    // ICMP has no pseudo header: only the TCP and UDP checksums see the address.
    let mut l4_delta = if p.proto == Protocol::Icmp {
        Delta::default()
    } else {
        addr_delta
    };
    if p.frag != Fragment::Later {
        let (check_at, check_end) = match p.proto {
            Protocol::Tcp => (16, 18),
            Protocol::Udp => (6, 8),
            Protocol::Icmp => (2, 8),
        };
        let l4 = &mut buf[p.l4..p.l4 + check_end];
        if old.port != new.port {
            let port_at = match (p.proto, which) {
                (Protocol::Icmp, _) => 4,
                (_, Which::Src) => 0,
                (_, Which::Dst) => 2,
            };
            write16(l4, port_at, new.port);
            l4_delta.add16(old.port, new.port);
        }
        let check = read16(l4, check_at);
        let updated = match p.proto {
            Protocol::Udp => checksum::apply_udp(l4_delta, check),
            _ => l4_delta.apply(check),
        };
        write16(l4, check_at, updated);
    }
    match which {
        Which::Src => p.src = new,
        Which::Dst => p.dst = new,
    }
}

/// The IPv4 header's part of a rewrite: the address at `addr_at` of `header` (the 20-byte fixed
/// header) changes from `old` to `new` and the TTL takes the step of `ttl`, with one update of
/// the header checksum for both. Returns the address's delta, which the TCP and UDP checksums
/// need too (their pseudo header covers the addresses).
#[inline(always)]
fn rewrite_ip(
    header: &mut [u8],
    addr_at: usize,
    old: Ipv4Addr,
    new: Ipv4Addr,
    ttl: TtlHandling,
) -> Delta {
    let mut addr_delta = Delta::default();
    if old != new {
        addr_delta.add_addr(old, new);
        header[addr_at..addr_at + 4].copy_from_slice(&new.octets());
    }
    let mut ip_delta = addr_delta;
    // The TTL shares a 16-bit word with the protocol number.
    let old_word = read16(header, IP_TTL);
    let new_word = ttl_word(old_word, ttl);
    if new_word != old_word {
        write16(header, IP_TTL, new_word);
        ip_delta.add16(old_word, new_word);
    }
    if old != new || new_word != old_word {
        let ip_check = read16(header, IP_CHECKSUM);
        write16(header, IP_CHECKSUM, ip_delta.apply(ip_check));
    }
    addr_delta
}

/// The TTL/protocol word after `ttl`'s step.
#[inline(always)]
fn ttl_word(word: u16, ttl: TtlHandling) -> u16 {
    let [t, proto] = word.to_be_bytes();
    u16::from_be_bytes([ttl.apply(t), proto])
}

/// [`translate`] for a packet that [`flow_head`] read: a whole TCP or UDP datagram behind a
/// 20-byte header, so every offset is a constant and the ICMP and fragment cases cannot arise.
/// It writes the very bytes `translate` writes (property-tested); the batch path's established
/// flows take it, because there the general function's branches and bounds checks were half
/// of a packet's rewriting. `buf` must be the buffer `head` was read from; false (nothing
/// written) if it is shorter than the headers `flow_head` read, so that a caller breaking that
/// rule drops the packet rather than forward it untranslated.
#[inline(always)]
#[must_use]
pub(crate) fn translate_flow(
    buf: &mut [u8],
    head: &FlowHead,
    which: Which,
    new: Endpoint,
    ttl: TtlHandling,
) -> bool {
    match head.proto {
        Protocol::Tcp => rewrite_head::<40, 36>(buf, head, which, new, ttl),
        _ => rewrite_head::<28, 26>(buf, head, which, new, ttl),
    }
}

/// [`translate_flow`] for a transport of `LEN` bytes of headers (IPv4 and the transport's up to
/// its checksum) with its checksum at `CHECK`: 40 and 36 for TCP, 28 and 26 for UDP.
#[inline(always)]
fn rewrite_head<const LEN: usize, const CHECK: usize>(
    buf: &mut [u8],
    head: &FlowHead,
    which: Which,
    new: Endpoint,
    ttl: TtlHandling,
) -> bool {
    // `flow_head` read at least `LEN` bytes of this datagram.
    let Some(b) = buf.first_chunk_mut::<LEN>() else {
        return false;
    };
    let (addr_at, port_at, old) = match which {
        Which::Src => (IP_SRC, 20, head.src),
        Which::Dst => (IP_DST, 22, head.dst),
    };
    let mut l4_delta = rewrite_ip(&mut b[..20], addr_at, old.addr, new.addr, ttl);
    if old.port != new.port {
        write16(b, port_at, new.port);
        l4_delta.add16(old.port, new.port);
    }
    let check = read16(b, CHECK);
    let updated = match head.proto {
        Protocol::Udp => checksum::apply_udp(l4_delta, check),
        _ => l4_delta.apply(check),
    };
    write16(b, CHECK, updated);
    true
}

/// Rewrites only an address (outer header of an ICMP error, later fragments).
pub(crate) fn rewrite_addr(buf: &mut [u8], which: Which, new: Ipv4Addr) {
    let off = match which {
        Which::Src => IP_SRC,
        Which::Dst => IP_DST,
    };
    let old = read_addr(buf, off);
    if old == new {
        return;
    }
    buf[off..off + 4].copy_from_slice(&new.octets());
    let check = read16(buf, IP_CHECKSUM);
    write16(
        buf,
        IP_CHECKSUM,
        checksum::update32(check, u32::from(old), u32::from(new)),
    );
}

/// Takes the TTL step of `ttl` alone (a packet that is not rewritten otherwise, a later
/// fragment), updating the header checksum (the TTL shares a 16-bit word with the protocol
/// number). The caller has checked that the packet does not expire.
#[inline]
pub(crate) fn step_ttl(buf: &mut [u8], ttl: TtlHandling) {
    let header = &mut buf[..20];
    let old = read16(header, IP_TTL);
    let new = ttl_word(old, ttl);
    if new == old {
        return;
    }
    write16(header, IP_TTL, new);
    let check = read16(header, IP_CHECKSUM);
    write16(header, IP_CHECKSUM, checksum::update16(check, old, new));
}

/// Clears DF in the IPv4 header at the start of `buf`, updating the header checksum
/// incrementally (RFC 1624 eqn. 3); a packet without DF is left as it is.
pub(crate) fn clear_df(buf: &mut [u8]) {
    let header = &mut buf[..20];
    let old = read16(header, IP_FLAGS);
    let new = old & !DF;
    if new == old {
        return;
    }
    write16(header, IP_FLAGS, new);
    let check = read16(header, IP_CHECKSUM);
    write16(header, IP_CHECKSUM, checksum::update16(check, old, new));
}

/// Marks the IPv4 packet at the start of `buf` Congestion Experienced (ECN field 11, RFC 3168),
/// updating the header checksum: what a tunnel exit does to an ECN-capable packet whose outer
/// header was marked (RFC 6040 section 4.2).
pub(crate) fn mark_ce(buf: &mut [u8]) {
    let header = &mut buf[..20];
    let old = read16(header, 0);
    let new = old | 0b11;
    if new == old {
        return;
    }
    write16(header, 0, new);
    let check = read16(header, IP_CHECKSUM);
    write16(header, IP_CHECKSUM, checksum::update16(check, old, new));
}

/// Reads a big-endian u16; `off + 2 <= buf.len()` is the caller's invariant (parsed offsets).
#[inline]
pub(crate) fn read16(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([buf[off], buf[off + 1]])
}

/// Writes a big-endian u16.
#[inline]
pub(crate) fn write16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Reads an IPv4 address.
#[inline]
pub(crate) fn read_addr(buf: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(buf[off], buf[off + 1], buf[off + 2], buf[off + 3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast header check agrees with the generic RFC 1071 checksum, with and without
        /// options, on random headers and on the same headers with their checksum made valid.
        #[test]
        fn header_check_matches_generic_checksum(
            mut header in prop::collection::vec(any::<u8>(), 20..=60),
            fix in any::<bool>(),
        ) {
            header.truncate(header.len() / 4 * 4);
            if fix {
                header[10..12].copy_from_slice(&[0, 0]);
                let c = checksum::checksum(&header);
                header[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(
                header_checksum_ok(&header),
                checksum::checksum(&header) == 0
            );
        }
    }

    /// A 60-byte TCP, UDP or ICMP echo packet with random contents and valid checksums.
    fn packet(proto: u8, bytes: &[u8], ttl: u8) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[0] = 0x45;
        b[2..4].copy_from_slice(&60u16.to_be_bytes());
        b[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        b[8] = ttl;
        b[9] = proto;
        b[10..12].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&b[..20]);
        b[10..12].copy_from_slice(&c.to_be_bytes());
        b[20..22].copy_from_slice(&[0x13, 0x88]);
        b[22..24].copy_from_slice(&[0x01, 0xbb]);
        if proto == 1 {
            b[20..24].copy_from_slice(&[8, 0, 0, 0]);
            let c = checksum::checksum(&b[20..]);
            b[22..24].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// Any of the engine's TTL settings.
    fn ttl_handling() -> impl Strategy<Value = TtlHandling> {
        prop::sample::select(vec![
            TtlHandling::Decrement,
            TtlHandling::Keep,
            TtlHandling::RestoreKernelHop,
        ])
    }

    proptest! {
        /// One checksum update for address, port and TTL gives the very bytes that a rewrite
        /// followed by the TTL step gives, whatever the setting; the header stays valid and the
        /// TTL is the setting's (restored up to 255 and never wrapped to 0).
        #[test]
        fn translate_equals_rewrite_then_ttl_step(
            proto in prop::sample::select(vec![1u8, 6, 17]),
            bytes in prop::collection::vec(any::<u8>(), 60),
            ttl in prop_oneof![prop::sample::select(vec![1u8, 2, 63, 64, 254, 255]), any::<u8>()],
            handling in ttl_handling(),
            src in any::<bool>(),
            addr in any::<u32>(),
            port in 1u16..,
        ) {
            prop_assume!(ttl > 0 && !handling.expires(ttl));
            let b = packet(proto, &bytes, ttl);
            let side = if src { Side::Inside } else { Side::Outside };
            let which = if src { Which::Src } else { Which::Dst };
            let new = Endpoint::new(Ipv4Addr::from_bits(addr), port);
            let p = parse(&b, side).unwrap();
            let (mut one, mut two) = (b.clone(), b.clone());
            let (mut p1, mut p2) = (p, p);
            translate(&mut one, &mut p1, which, new, handling);
            rewrite(&mut two, &mut p2, which, new);
            step_ttl(&mut two, handling);
            prop_assert_eq!(&one, &two);
            prop_assert_eq!(one[8], handling.apply(ttl));
            prop_assert!(one[8] != 0);
            prop_assert!(header_checksum_ok(&one[..20]));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The fast reader accepts exactly the packets that `parse` reads as a whole TCP or UDP
        /// datagram with a 20-byte header, and summarises them the same way. Headers are random
        /// but mostly well formed (version 4, a valid checksum), with the fields each check
        /// reads drawn from their edge values (other versions and header lengths, total lengths
        /// short of and past the buffer, every fragment and flag bit, zero and extreme ports).
        #[test]
        fn flow_head_agrees_with_parse(
            mut bytes in prop::collection::vec(any::<u8>(), 0..80),
            proto in prop::sample::select(vec![1u8, 6, 17, 47]),
            version_ihl in prop::sample::select(vec![0x45u8, 0x45, 0x45, 0x46, 0x44, 0x55]),
            total in prop::option::weighted(0.8, 0u16..100),
            fix in prop::bool::weighted(0.9),
            flags in prop::sample::select(vec![0u16, 0, 0x4000, 0x8000, 0x2000, 0x0001, 0xffff]),
            ports in prop::array::uniform2(prop::sample::select(vec![0u16, 1, 0xffff, 4500])),
            side in prop::sample::select(vec![Side::Inside, Side::Outside]),
        ) {
            if bytes.len() >= 20 {
                bytes[0] = version_ihl;
                // A total length past the buffer now and then: `parse` refuses it.
                let total = total.unwrap_or(bytes.len() as u16);
                bytes[2..4].copy_from_slice(&total.to_be_bytes());
                bytes[6..8].copy_from_slice(&flags.to_be_bytes());
                bytes[9] = proto;
                if fix {
                    let hl = (usize::from(version_ihl & 0x0f) * 4).min(bytes.len());
                    bytes[10..12].copy_from_slice(&[0, 0]);
                    let c = checksum::checksum(&bytes[..hl]);
                    bytes[10..12].copy_from_slice(&c.to_be_bytes());
                }
            }
            if bytes.len() >= 24 {
                bytes[20..22].copy_from_slice(&ports[0].to_be_bytes());
                bytes[22..24].copy_from_slice(&ports[1].to_be_bytes());
            }
            let fast = flow_head(&bytes).map(|h| h.parsed());
            let general = parse(&bytes, side).ok().filter(|p| {
                p.kind == Kind::Flow
                    && p.frag == Fragment::None
                    && p.l4 == 20
                    && p.proto != Protocol::Icmp
            });
            prop_assert_eq!(fast, general);
        }
    }

    proptest! {
        /// The lane's rewrite writes the bytes of the general one, for TCP and UDP, either
        /// endpoint, under every TTL setting, changed or unchanged address and port
        /// (a zero UDP checksum included, through the random contents).
        #[test]
        fn translate_flow_equals_translate(
            tcp in any::<bool>(),
            bytes in prop::collection::vec(any::<u8>(), 60),
            ttl in prop_oneof![prop::sample::select(vec![0u8, 1, 2, 254, 255]), any::<u8>()],
            src in any::<bool>(),
            ttl_setting in ttl_handling(),
            addr in prop::option::of(any::<u32>()),
            port in prop::option::of(1u16..),
            zero_udp_check in prop::bool::weighted(0.2),
        ) {
            let mut b = packet(if tcp { 6 } else { 17 }, &bytes, ttl);
            if !tcp && zero_udp_check {
                b[26..28].copy_from_slice(&[0, 0]);
            }
            let head = flow_head(&b).unwrap();
            let which = if src { Which::Src } else { Which::Dst };
            let old = if src { head.src } else { head.dst };
            let new = Endpoint::new(
                addr.map_or(old.addr, Ipv4Addr::from_bits),
                port.unwrap_or(old.port),
            );
            let (mut fast, mut general) = (b.clone(), b.clone());
            prop_assert!(translate_flow(&mut fast, &head, which, new, ttl_setting));
            let mut p = head.parsed();
            translate(&mut general, &mut p, which, new, ttl_setting);
            prop_assert_eq!(fast, general);
        }
    }

    /// 100.64.0.10:5000 -> 203.0.113.10:53, UDP "x", DF set, checksums computed independently.
    static DF_UDP: [u8; 29] = [
        0x45, 0x00, 0x00, 0x1d, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x88, 0x47, 0x64, 0x40, 0x00,
        0x0a, 0xcb, 0x00, 0x71, 0x0a, 0x13, 0x88, 0x00, 0x35, 0x00, 0x09, 0xd3, 0xc9, 0x78,
    ];
    /// The same without DF: flags 0x4000 -> 0x0000, header checksum 0x8847 -> 0xc847.
    static NO_DF_UDP: [u8; 29] = [
        0x45, 0x00, 0x00, 0x1d, 0x12, 0x34, 0x00, 0x00, 0x40, 0x11, 0xc8, 0x47, 0x64, 0x40, 0x00,
        0x0a, 0xcb, 0x00, 0x71, 0x0a, 0x13, 0x88, 0x00, 0x35, 0x00, 0x09, 0xd3, 0xc9, 0x78,
    ];

    #[test]
    fn clear_df_rewrites_the_flag_and_the_header_checksum_only() {
        assert!(header_checksum_ok(&DF_UDP[..20]));
        let mut b = DF_UDP;
        clear_df(&mut b);
        assert_eq!(b, NO_DF_UDP);
        assert!(header_checksum_ok(&b[..20]));
        clear_df(&mut b);
        assert_eq!(b, NO_DF_UDP, "nothing to clear");
    }

    proptest! {
        #[test]
        fn clear_df_keeps_the_header_checksum_valid(
            flags in any::<u16>(),
            ttl in any::<u8>(),
            id in any::<u16>(),
        ) {
            let mut b = DF_UDP;
            b[4..6].copy_from_slice(&id.to_be_bytes());
            b[6..8].copy_from_slice(&flags.to_be_bytes());
            b[8] = ttl;
            b[10..12].fill(0);
            let sum = checksum::checksum(&b[..20]);
            b[10..12].copy_from_slice(&sum.to_be_bytes());
            clear_df(&mut b);
            prop_assert!(header_checksum_ok(&b[..20]));
            prop_assert_eq!(read16(&b, IP_FLAGS), flags & !DF);
        }
    }

    #[test]
    fn all_zero_header_does_not_verify() {
        assert!(!header_checksum_ok(&[0; 20]));
        assert_ne!(checksum::checksum(&[0; 20]), 0);
    }
}
