//! IPv6 headers (RFC 8200): the fixed header, a bounded walk over extension headers to the
//! upper layer, and the fragment header.
//!
//! A DS-Lite AFTR terminates IPv4-in-IPv6 softwires, so it reads the IPv6 header of every
//! packet from a B4 and writes one in front of every packet to a B4; the walk finds the
//! payload behind any extension headers a B4 or the path put there.

use std::net::Ipv6Addr;

use super::{WireError, get_u16, get_u32, set_u16, set_u32};

/// Offsets of the fixed header fields.
mod field {
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: usize = 8;
    pub const DST_ADDR: usize = 24;
}

/// The length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// The length of a fragment header (RFC 8200 section 4.5).
pub const FRAGMENT_HEADER_LEN: usize = 8;

/// The smallest MTU every IPv6 link has (RFC 8200 section 5).
pub const MIN_MTU: u16 = 1280;

/// Next-header numbers the walk and the tunnel code name.
pub mod next_header {
    /// Hop-by-Hop Options (RFC 8200 section 4.3).
    pub const HOP_BY_HOP: u8 = 0;
    /// IPv4 encapsulated in IPv6 (RFC 2473), what a DS-Lite softwire carries.
    pub const IPV4: u8 = 4;
    /// Routing header (RFC 8200 section 4.4).
    pub const ROUTING: u8 = 43;
    /// Fragment header (RFC 8200 section 4.5).
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// No next header (RFC 8200 section 4.7).
    pub const NONE: u8 = 59;
    /// Destination Options (RFC 8200 section 4.6).
    pub const DESTINATION_OPTIONS: u8 = 60;
}

/// The most extension headers the walk steps over. RFC 8200 section 4.1 allows each header
/// once (Destination Options twice), so a legitimate chain has at most six; a longer one is
/// made to cost the parser time, and is refused.
pub const MAX_EXTENSION_HEADERS: usize = 6;

/// A read/write view of an IPv6 packet in a byte buffer.
///
/// The buffer may be longer than the packet (link-layer padding, a receive buffer): bytes after
/// the header and [`Ipv6Packet::payload_len`] bytes of payload are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it. Accessors may panic unless [`Self::check_len`]
    /// would succeed; use for buffers this crate wrote.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps an untrusted buffer holding a complete packet. After success no accessor panics.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Wraps the packet quoted in an ICMPv6 error: RFC 4443 section 2.4(c) quotes as much as
    /// fits in the minimum MTU, so the payload length may exceed the buffer;
    /// [`Self::payload`] then ends at the buffer's end.
    #[inline]
    pub fn new_checked_quoted(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_header()?;
        Ok(p)
    }

    /// Checks that every accessor is in bounds: the fixed header inside the buffer, version 6,
    /// and the payload length inside the buffer. (A jumbogram's payload length of 0, RFC 2675,
    /// reads as an empty payload; no link a softwire runs on carries them.)
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        self.check_header()?;
        if HEADER_LEN + usize::from(self.payload_len()) > self.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Everything [`Self::check_len`] checks except that the payload fits in the buffer.
    #[inline]
    fn check_header(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::NotIpv6);
        }
        Ok(())
    }

    /// Returns the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (6 for every checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TC_FLOW] >> 4
    }

    /// The traffic class: DSCP and ECN, as in IPv4's second byte (RFC 2474, RFC 3168).
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }

    /// The 20-bit flow label (RFC 6437).
    #[inline]
    pub fn flow_label(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::VER_TC_FLOW) & 0x000F_FFFF
    }

    /// The payload length: everything after the fixed header, extension headers included.
    #[inline]
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    /// The length of the packet, header included.
    #[inline]
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }

    /// The type of the header after the fixed one.
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::SRC_ADDR)
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::DST_ADDR)
    }

    /// Everything after the fixed header, up to the payload length (or the buffer's end, for a
    /// quoted packet).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[HEADER_LEN..self.total_len().min(b.len())]
    }

    /// Walks the extension headers to the upper-layer header (see [`UpperLayer`]).
    pub fn upper_layer(&self) -> Result<UpperLayer, WireError> {
        walk(self.next_header(), self.payload())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets version 6, the traffic class and the flow label.
    #[inline]
    pub fn set_version_class_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let word = (6 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000F_FFFF);
        set_u32(self.buffer.as_mut(), field::VER_TC_FLOW, word);
    }

    /// Sets the payload length.
    #[inline]
    pub fn set_payload_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, v);
    }

    /// Sets the next header.
    #[inline]
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = v;
    }

    /// Sets the hop limit.
    #[inline]
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR..field::SRC_ADDR + 16].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR..field::DST_ADDR + 16].copy_from_slice(&a.octets());
    }
}

#[inline]
fn addr_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// The fields of a fixed IPv6 header, for [`write_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The header after the fixed one.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class (DSCP and ECN).
    pub traffic_class: u8,
    /// Bytes after the fixed header.
    pub payload_len: u16,
}

/// Writes a fixed header with `repr`'s fields and flow label 0 into `buf[..40]`, and returns
/// [`HEADER_LEN`]; returns 0 (and writes nothing) when `buf` is shorter than a header.
pub fn write_header(buf: &mut [u8], repr: &Ipv6Repr) -> usize {
    let Some(header) = buf.get_mut(..HEADER_LEN) else {
        return 0;
    };
    let mut p = Ipv6Packet::new_unchecked(header);
    p.set_version_class_flow(repr.traffic_class, 0);
    p.set_payload_len(repr.payload_len);
    p.set_next_header(repr.next_header);
    p.set_hop_limit(repr.hop_limit);
    p.set_src_addr(repr.src);
    p.set_dst_addr(repr.dst);
    HEADER_LEN
}

/// A fragment header's fields (RFC 8200 section 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// The offset of this fragment's data in the original payload, in bytes (a multiple of 8).
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    /// The identification shared by the fragments of one packet.
    pub ident: u32,
}

impl FragmentHeader {
    /// Whether this is the first fragment (offset 0); only the first carries the upper-layer
    /// header.
    pub const fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// RFC 8200 section 4.5 allows a fragment header with offset 0 and M=0 (an "atomic"
    /// fragment, RFC 6946): it is a whole packet, and is processed as one.
    pub const fn is_atomic(&self) -> bool {
        self.offset == 0 && !self.more
    }

    /// Writes the header into `buf[..8]`, with `next` as its next header; returns
    /// [`FRAGMENT_HEADER_LEN`], or 0 when `buf` is too short.
    pub fn write(&self, buf: &mut [u8], next: u8) -> usize {
        let Some(h) = buf.get_mut(..FRAGMENT_HEADER_LEN) else {
            return 0;
        };
        h[0] = next;
        h[1] = 0;
        set_u16(h, 2, (self.offset & !7) | u16::from(self.more));
        set_u32(h, 4, self.ident);
        FRAGMENT_HEADER_LEN
    }
}

/// Where the upper layer of an IPv6 packet starts, after its extension headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (the last next-header value).
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the payload (the end of the fixed
    /// header): 0 without extension headers.
    pub offset: usize,
    /// The fragment header, when the packet is a fragment. For a non-first fragment the bytes
    /// at `offset` are the middle of the original payload, not a header.
    pub fragment: Option<FragmentHeader>,
    /// A routing header with segments left: the packet is not at its final destination yet
    /// (RFC 8200 section 4.4), so the upper layer is not ours to process.
    pub routing_pending: bool,
}

/// Walks the extension-header chain that starts with `first` over `payload` (the bytes after
/// the fixed header). Hop-by-Hop, Routing and Destination Options are skipped by their length
/// fields, the fragment header is read; any other next-header value ends the walk as the
/// upper layer (ESP, AH and unknown headers are upper layers to an AFTR: it only forwards
/// IPv4-in-IPv6 and reads ICMPv6).
///
/// Bounded: at most [`MAX_EXTENSION_HEADERS`] are stepped over, and each step moves at least
/// 8 bytes, so the walk is O(1) on any input.
pub fn walk(first: u8, payload: &[u8]) -> Result<UpperLayer, WireError> {
    let mut next = first;
    let mut at = 0usize;
    let mut fragment = None;
    let mut routing_pending = false;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        match next {
            next_header::HOP_BY_HOP | next_header::ROUTING | next_header::DESTINATION_OPTIONS => {
                // RFC 8200 section 4.3: Hop-by-Hop only ever directly follows the fixed header.
                if next == next_header::HOP_BY_HOP && at != 0 {
                    return Err(WireError::BadExtensionHeader);
                }
                let h = payload.get(at..at + 2).ok_or(WireError::Truncated)?;
                let len = (usize::from(h[1]) + 1) * 8;
                if next == next_header::ROUTING {
                    let segments_left = *payload.get(at + 3).ok_or(WireError::Truncated)?;
                    routing_pending |= segments_left != 0;
                }
                if at + len > payload.len() {
                    return Err(WireError::Truncated);
                }
                next = h[0];
                at += len;
            }
            next_header::FRAGMENT => {
                // A second fragment header would mean fragments of fragments.
                if fragment.is_some() {
                    return Err(WireError::BadExtensionHeader);
                }
                let h = payload
                    .get(at..at + FRAGMENT_HEADER_LEN)
                    .ok_or(WireError::Truncated)?;
                let off_m = get_u16(h, 2);
                fragment = Some(FragmentHeader {
                    offset: off_m & !7,
                    more: off_m & 1 != 0,
                    ident: get_u32(h, 4),
                });
                next = h[0];
                at += FRAGMENT_HEADER_LEN;
                // Behind a non-first fragment header are data, not further headers.
                if fragment.is_some_and(|f| !f.is_first()) {
                    break;
                }
            }
            _ => {
                return Ok(UpperLayer {
                    protocol: next,
                    offset: at,
                    fragment,
                    routing_pending,
                });
            }
        }
    }
    match fragment {
        Some(f) if !f.is_first() => Ok(UpperLayer {
            protocol: next,
            offset: at,
            fragment,
            routing_pending,
        }),
        _ => Err(WireError::TooManyExtensionHeaders),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B4: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    const AFTR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    /// 2001:db8:1::2 -> 2001:db8::1, next header 4 (IPv4), hop limit 64, traffic class 0xb8
    /// (EF), flow label 0x12345, 8 bytes of payload.
    static HEADER_BYTES: [u8; 48] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x08, 0x04, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 1, 2, 3, 4, 5, 6, 7, 8,
    ];

    #[test]
    fn deconstruct() {
        let p = Ipv6Packet::new_checked(&HEADER_BYTES[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), next_header::IPV4);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), B4);
        assert_eq!(p.dst_addr(), AFTR);
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: next_header::IPV4,
                offset: 0,
                fragment: None,
                routing_pending: false
            })
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 48];
        let repr = Ipv6Repr {
            src: B4,
            dst: AFTR,
            next_header: next_header::IPV4,
            hop_limit: 64,
            traffic_class: 0xb8,
            payload_len: 8,
        };
        assert_eq!(write_header(&mut buf, &repr), HEADER_LEN);
        Ipv6Packet::new_unchecked(&mut buf[..]).set_version_class_flow(0xb8, 0x12345);
        buf[40..].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(buf, HEADER_BYTES);
        assert_eq!(write_header(&mut buf[..39], &repr), 0);
    }

    #[test]
    fn agrees_with_etherparse() {
        let (h, rest) = etherparse::Ipv6Header::from_slice(&HEADER_BYTES).unwrap();
        assert_eq!(rest.len(), 8);
        assert_eq!(h.traffic_class, 0xb8);
        assert_eq!(h.flow_label.value(), 0x12345);
        assert_eq!(h.next_header.0, 4);
        assert_eq!(h.source, B4.octets());
        assert_eq!(h.destination, AFTR.octets());
    }

    #[test]
    fn refuses_short_wrong_version_and_truncated() {
        assert_eq!(
            Ipv6Packet::new_checked(&HEADER_BYTES[..39]),
            Err(WireError::Truncated)
        );
        assert_eq!(
            Ipv6Packet::new_checked(&HEADER_BYTES[..47]),
            Err(WireError::Truncated)
        );
        let mut v4 = HEADER_BYTES;
        v4[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&v4[..]), Err(WireError::NotIpv6));
        // A quoted packet may be cut short.
        let q = Ipv6Packet::new_checked_quoted(&HEADER_BYTES[..44]).unwrap();
        assert_eq!(q.payload(), &[1, 2, 3, 4]);
    }

    #[test]
    fn padding_after_the_packet_is_ignored() {
        let mut buf = [0u8; 64];
        buf[..48].copy_from_slice(&HEADER_BYTES);
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.total_len(), 48);
        assert_eq!(p.payload().len(), 8);
    }

    /// Hop-by-Hop (8 bytes: PadN), Destination Options (16 bytes), a first fragment
    /// (ident 0xdeadbeef, M=1), then IPv4.
    static CHAIN: [u8; 40] = [
        next_header::DESTINATION_OPTIONS,
        0,
        1,
        4,
        0,
        0,
        0,
        0,
        next_header::FRAGMENT,
        1,
        1,
        12,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        next_header::IPV4,
        0,
        0x00,
        0x01,
        0xde,
        0xad,
        0xbe,
        0xef,
        0x45,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];

    #[test]
    fn walks_options_and_a_first_fragment() {
        let u = walk(next_header::HOP_BY_HOP, &CHAIN).unwrap();
        assert_eq!(u.protocol, next_header::IPV4);
        assert_eq!(u.offset, 32);
        let f = u.fragment.unwrap();
        assert_eq!(
            f,
            FragmentHeader {
                offset: 0,
                more: true,
                ident: 0xdead_beef
            }
        );
        assert!(f.is_first() && !f.is_atomic());
        assert!(!u.routing_pending);
    }

    #[test]
    fn a_later_fragment_ends_the_walk() {
        let mut h = [0u8; 16];
        let f = FragmentHeader {
            offset: 1448,
            more: false,
            ident: 7,
        };
        assert_eq!(f.write(&mut h, next_header::IPV4), 8);
        // Bytes behind it look like a Hop-by-Hop header, but are data.
        let u = walk(next_header::FRAGMENT, &h).unwrap();
        assert_eq!(u.offset, 8);
        assert_eq!(u.fragment, Some(f));
        assert_eq!(u.protocol, next_header::IPV4);
    }

    #[test]
    fn refuses_bad_chains() {
        // Hop-by-Hop not first.
        let mut b = [0u8; 16];
        b[0] = next_header::HOP_BY_HOP;
        assert_eq!(
            walk(next_header::DESTINATION_OPTIONS, &b),
            Err(WireError::BadExtensionHeader)
        );
        // A header longer than the payload.
        let b = [next_header::IPV4, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            walk(next_header::DESTINATION_OPTIONS, &b),
            Err(WireError::Truncated)
        );
        assert_eq!(
            walk(next_header::DESTINATION_OPTIONS, &[]),
            Err(WireError::Truncated)
        );
        // Two fragment headers.
        let mut b = [0u8; 16];
        b[0] = next_header::FRAGMENT;
        assert_eq!(
            walk(next_header::FRAGMENT, &b),
            Err(WireError::BadExtensionHeader)
        );
        // A chain of Destination Options longer than the bound.
        let b: Vec<u8> = (0..8)
            .flat_map(|_| [next_header::DESTINATION_OPTIONS, 0, 1, 4, 0, 0, 0, 0])
            .collect();
        assert_eq!(
            walk(next_header::DESTINATION_OPTIONS, &b),
            Err(WireError::TooManyExtensionHeaders)
        );
    }

    #[test]
    fn a_routing_header_with_segments_left_is_flagged() {
        let b = [next_header::IPV4, 0, 0, 1, 0, 0, 0, 0];
        let u = walk(next_header::ROUTING, &b).unwrap();
        assert!(u.routing_pending);
        assert_eq!(u.offset, 8);
        let b = [next_header::IPV4, 0, 0, 0, 0, 0, 0, 0];
        assert!(!walk(next_header::ROUTING, &b).unwrap().routing_pending);
    }

    proptest::proptest! {
        /// No input makes the parser or the walk panic, and a walk's offset is inside the
        /// payload.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            if let Ok(p) = Ipv6Packet::new_checked(&bytes[..]) {
                let _ = (p.src_addr(), p.dst_addr(), p.traffic_class(), p.flow_label());
                if let Ok(u) = p.upper_layer() {
                    proptest::prop_assert!(u.offset <= p.payload().len());
                }
            }
        }
    }
}
