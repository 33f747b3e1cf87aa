//! IPv4-in-IPv6 tunnelling (RFC 2473) as DS-Lite softwires use it (RFC 6333 section 5.2):
//! what an IPv6 packet from a B4 carries, an IPv6 header put in front of an IPv4 packet for a
//! B4, and the IPv6 fragments of a tunnel packet that does not fit the path (RFC 6333 section
//! 5.3 prefers fragmenting the tunnel packet to dropping the IPv4 one).

use std::net::Ipv6Addr;

use super::WireError;
use super::ipv6::{
    self, FRAGMENT_HEADER_LEN, FragmentHeader, HEADER_LEN, Ipv6Packet, Ipv6Repr, next_header,
};

/// The outer header of a softwire packet: its two ends and what the tunnel entry point copied
/// into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// The B4's address: the source from a B4, the destination to it.
    pub b4: Ipv6Addr,
    /// The AFTR's endpoint address.
    pub aftr: Ipv6Addr,
    /// The outer traffic class.
    pub traffic_class: u8,
    /// The outer hop limit.
    pub hop_limit: u8,
}

/// What an IPv6 packet from the B4 side carries. Ranges are offsets into the buffer the packet
/// was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// An IPv4 packet, whole: `buf[start..start + len]`.
    Ipv4 {
        /// Where it starts.
        start: usize,
        /// Its length (the rest of the IPv6 payload).
        len: usize,
    },
    /// A fragment of a tunnel packet (RFC 8200 section 4.5): reassemble before translating.
    /// `buf[start..start + len]` is this fragment's share of the original payload.
    Fragment {
        /// The fragment header.
        header: FragmentHeader,
        /// The protocol of the original payload (4 for a softwire; meaningful in the first
        /// fragment, and copied into every fragment by RFC 8200).
        protocol: u8,
        /// Where this fragment's data starts.
        start: usize,
        /// How long it is.
        len: usize,
    },
    /// An ICMPv6 message (packet too big, unreachable, echo) at `buf[start..start + len]`.
    Icmpv6 {
        /// Where it starts.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// Something a softwire does not carry: this upper-layer protocol, or a packet whose
    /// routing header still has segments to visit.
    Other(u8),
}

/// Reads the IPv6 header and extension headers of a packet from the B4 side and says what it
/// carries. Never panics; every range it returns is inside `buf`.
pub fn decapsulate(buf: &[u8]) -> Result<(Outer, Carried), WireError> {
    let p = Ipv6Packet::new_checked(buf)?;
    let outer = Outer {
        b4: p.src_addr(),
        aftr: p.dst_addr(),
        traffic_class: p.traffic_class(),
        hop_limit: p.hop_limit(),
    };
    let upper = p.upper_layer()?;
    let start = HEADER_LEN + upper.offset;
    let len = p.total_len() - start;
    if upper.routing_pending {
        return Ok((outer, Carried::Other(next_header::ROUTING)));
    }
    let carried = match (upper.fragment, upper.protocol) {
        (Some(header), protocol) if !header.is_atomic() => Carried::Fragment {
            header,
            protocol,
            start,
            len,
        },
        (_, next_header::IPV4) => Carried::Ipv4 { start, len },
        (_, next_header::ICMPV6) => Carried::Icmpv6 { start, len },
        (_, other) => Carried::Other(other),
    };
    Ok((outer, carried))
}

/// Why an IPv4 packet could not be put into a tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// The buffer has no room for the 40 more bytes of the IPv6 header.
    #[error("no room in the buffer for the IPv6 header")]
    NoRoom,
    /// The IPv4 packet is longer than an IPv6 payload can be without a jumbogram.
    #[error("packet too long for an IPv6 payload")]
    TooLong,
}

/// Puts an IPv6 header in front of the IPv4 packet in `buf[..len]`, moving the packet 40 bytes
/// up, and returns the tunnel packet's length. `outer` names the ends (source: the AFTR,
/// destination: the B4); its traffic class is what the outer header gets (RFC 2473 section
/// 6.5 lets the entry point copy the inner one, see [`outer_traffic_class`]).
pub fn encapsulate_in_place(
    buf: &mut [u8],
    len: usize,
    outer: &Outer,
) -> Result<usize, EncapError> {
    let payload_len = u16::try_from(len).map_err(|_| EncapError::TooLong)?;
    let total = len + HEADER_LEN;
    if total > buf.len() || len > buf.len() {
        return Err(EncapError::NoRoom);
    }
    buf.copy_within(..len, HEADER_LEN);
    ipv6::write_header(
        buf,
        &Ipv6Repr {
            src: outer.aftr,
            dst: outer.b4,
            next_header: next_header::IPV4,
            hop_limit: outer.hop_limit,
            traffic_class: outer.traffic_class,
            payload_len,
        },
    );
    Ok(total)
}

/// The outer traffic class for an inner IPv4 packet's DSCP/ECN byte: the DSCP is copied
/// (RFC 2473 section 6.5), and the ECN field too, the "normal mode" of RFC 6040 section 4.1,
/// so that congestion marks on the IPv6 path reach the inner packet at the far end.
pub const fn outer_traffic_class(inner_tos: u8) -> u8 {
    inner_tos
}

/// What the outer ECN field does to the inner one at decapsulation (RFC 6040 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcnOnExit {
    /// The inner packet leaves as it is.
    Keep,
    /// The outer packet was marked Congestion Experienced and the inner one is ECN-capable:
    /// the inner packet leaves marked CE.
    MarkCe,
    /// The outer packet was marked CE but the inner one is not ECN-capable: RFC 6040 says to
    /// drop it, since the congestion signal cannot be passed on.
    Drop,
}

/// RFC 6040 section 4.2's decapsulation table for the outer traffic class and the inner
/// DSCP/ECN byte.
pub const fn ecn_on_exit(outer_tc: u8, inner_tos: u8) -> EcnOnExit {
    const CE: u8 = 0b11;
    let outer = outer_tc & 0b11;
    let inner = inner_tos & 0b11;
    if outer != CE || inner == CE {
        EcnOnExit::Keep
    } else if inner == 0 {
        EcnOnExit::Drop
    } else {
        EcnOnExit::MarkCe
    }
}

/// Cuts a tunnel packet (a fixed IPv6 header with no extension headers, as
/// [`encapsulate_in_place`] makes) into IPv6 fragments that fit `mtu` (RFC 8200 section 4.5):
/// each is the fixed header, a fragment header and a share of the payload.
///
/// Made with [`Fragmenter::new`], then [`Fragmenter::next_into`] until it returns `None`; it
/// writes into the caller's buffers, so the packet path allocates nothing.
#[derive(Debug, Clone)]
pub struct Fragmenter<'a> {
    packet: &'a [u8],
    /// Payload bytes per fragment (a multiple of 8, except what the last one carries).
    chunk: usize,
    ident: u32,
    /// Payload bytes already written out.
    done: usize,
}

/// Why a packet could not be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// The packet is not a well-formed IPv6 packet.
    #[error("not an IPv6 packet: {0}")]
    Wire(#[from] WireError),
    /// The MTU leaves no room for 8 bytes of payload after the headers. IPv6 links carry at
    /// least 1280 bytes (RFC 8200 section 5), so only a misconfiguration gets here.
    #[error("MTU too small to fragment into")]
    MtuTooSmall,
}

impl<'a> Fragmenter<'a> {
    /// The fragments of `packet` for `mtu`, with identification `ident`. With `equal`, the
    /// payload is spread over the fewest fragments in shares as equal as 8-byte units allow
    /// (so no tiny last fragment follows full-size ones); without, every fragment but the last
    /// is as large as `mtu` allows.
    pub fn new(packet: &'a [u8], mtu: u16, ident: u32, equal: bool) -> Result<Self, FragmentError> {
        let p = Ipv6Packet::new_checked(packet)?;
        let packet = &packet[..p.total_len()];
        let room = usize::from(mtu)
            .checked_sub(HEADER_LEN + FRAGMENT_HEADER_LEN)
            .ok_or(FragmentError::MtuTooSmall)?;
        let max_chunk = room & !7;
        if max_chunk == 0 {
            return Err(FragmentError::MtuTooSmall);
        }
        let payload = packet.len() - HEADER_LEN;
        let chunk = if equal {
            let n = payload.div_ceil(max_chunk).max(1);
            payload.div_ceil(n).next_multiple_of(8).clamp(8, max_chunk)
        } else {
            max_chunk
        };
        Ok(Fragmenter {
            packet,
            chunk,
            ident,
            done: 0,
        })
    }

    /// How many fragments the packet makes.
    pub fn count(&self) -> usize {
        (self.packet.len() - HEADER_LEN).div_ceil(self.chunk).max(1)
    }

    /// Writes the next fragment into `out` and returns its length; `None` when every fragment
    /// was written, or when `out` is too short for the next one (it is then not consumed).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<usize> {
        let payload = &self.packet[HEADER_LEN..];
        if self.done >= payload.len() && !(payload.is_empty() && self.done == 0) {
            return None;
        }
        let take = self.chunk.min(payload.len() - self.done);
        let len = HEADER_LEN + FRAGMENT_HEADER_LEN + take;
        if out.len() < len {
            return None;
        }
        let original = Ipv6Packet::new_unchecked(self.packet);
        out[..HEADER_LEN].copy_from_slice(&self.packet[..HEADER_LEN]);
        let mut h = Ipv6Packet::new_unchecked(&mut out[..HEADER_LEN]);
        // Fits: `take` is at most the original payload length, a u16.
        h.set_payload_len((FRAGMENT_HEADER_LEN + take) as u16);
        h.set_next_header(next_header::FRAGMENT);
        let more = self.done + take < payload.len();
        FragmentHeader {
            // Fits: offsets stay below the original payload length, a u16.
            offset: self.done as u16,
            more,
            ident: self.ident,
        }
        .write(&mut out[HEADER_LEN..], original.next_header());
        out[HEADER_LEN + FRAGMENT_HEADER_LEN..len]
            .copy_from_slice(&payload[self.done..self.done + take]);
        // An empty payload still makes one fragment; step past it.
        self.done += take.max(1);
        Some(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::UDP_BYTES;

    const B4: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    const AFTR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    /// [`UDP_BYTES`] (192.168.1.10:53124 -> 8.8.8.8:53) in a softwire from the B4
    /// 2001:db8:1::2 to the AFTR 2001:db8::1, hop limit 64.
    static SOFTWIRE_UDP_BYTES: [u8; 97] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x39, 0x04, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // IPv4 from here
        0x45, 0x00, 0x00, 0x39, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x4c, 0xac, 0xc0, 0xa8, 0x01,
        0x0a, 0x08, 0x08, 0x08, 0x08, 0xcf, 0x84, 0x00, 0x35, 0x00, 0x25, 0xe2, 0xec, 0xab, 0xcd,
        0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x65, 0x78, 0x61, 0x6d,
        0x70, 0x6c, 0x65, 0x03, 0x63, 0x6f, 0x6d, 0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    fn outer() -> Outer {
        Outer {
            b4: B4,
            aftr: AFTR,
            traffic_class: 0,
            hop_limit: 64,
        }
    }

    #[test]
    fn fixture_is_udp_bytes_in_a_softwire() {
        assert_eq!(&SOFTWIRE_UDP_BYTES[40..], &UDP_BYTES[..]);
        let (h, rest) = etherparse::Ipv6Header::from_slice(&SOFTWIRE_UDP_BYTES).unwrap();
        assert_eq!((h.source, h.destination), (B4.octets(), AFTR.octets()));
        assert_eq!(h.next_header, etherparse::IpNumber::IPV4);
        assert_eq!(rest, &UDP_BYTES[..]);
    }

    #[test]
    fn decapsulates_the_fixture() {
        let (o, c) = decapsulate(&SOFTWIRE_UDP_BYTES).unwrap();
        assert_eq!(o, outer());
        assert_eq!(c, Carried::Ipv4 { start: 40, len: 57 });
    }

    #[test]
    fn encapsulates_into_the_fixture() {
        let mut buf = [0u8; 200];
        buf[..57].copy_from_slice(&UDP_BYTES);
        // Encapsulation toward the B4 swaps the ends; build the reverse and compare headers
        // field by field with the fixture's.
        let len = encapsulate_in_place(&mut buf, 57, &outer()).unwrap();
        assert_eq!(len, 97);
        assert_eq!(&buf[40..97], &UDP_BYTES[..]);
        let p = Ipv6Packet::new_checked(&buf[..len]).unwrap();
        assert_eq!((p.src_addr(), p.dst_addr()), (AFTR, B4));
        assert_eq!(&buf[..8], &SOFTWIRE_UDP_BYTES[..8]);
        assert_eq!(&buf[8..24], &SOFTWIRE_UDP_BYTES[24..40]);
        assert_eq!(&buf[24..40], &SOFTWIRE_UDP_BYTES[8..24]);
    }

    #[test]
    fn encapsulation_needs_room() {
        let mut buf = [0u8; 96];
        buf[..57].copy_from_slice(&UDP_BYTES);
        assert_eq!(
            encapsulate_in_place(&mut buf, 57, &outer()),
            Err(EncapError::NoRoom)
        );
        assert_eq!(buf[..57], UDP_BYTES, "untouched");
        let mut big = vec![0u8; 70_000];
        assert_eq!(
            encapsulate_in_place(&mut big, 65_536, &outer()),
            Err(EncapError::TooLong)
        );
    }

    #[test]
    fn classifies_icmpv6_other_and_routing() {
        let mut b = SOFTWIRE_UDP_BYTES;
        b[6] = next_header::ICMPV6;
        assert_eq!(
            decapsulate(&b).unwrap().1,
            Carried::Icmpv6 { start: 40, len: 57 }
        );
        b[6] = 17;
        assert_eq!(decapsulate(&b).unwrap().1, Carried::Other(17));
        // A routing header with a segment left: not for us yet.
        let mut r = vec![0u8; 48];
        r[..40].copy_from_slice(&SOFTWIRE_UDP_BYTES[..40]);
        r[5] = 8;
        r[6] = next_header::ROUTING;
        r[40] = next_header::IPV4;
        r[43] = 1;
        assert_eq!(
            decapsulate(&r).unwrap().1,
            Carried::Other(next_header::ROUTING)
        );
        assert_eq!(decapsulate(&UDP_BYTES), Err(WireError::NotIpv6));
    }

    /// Fragments of the fixture at the smallest MTU that splits it (40 + 8 + 48 bytes of
    /// payload a piece): put back together they are the fixture.
    #[test]
    fn fragments_and_reassembles() {
        for equal in [false, true] {
            let mut f = Fragmenter::new(&SOFTWIRE_UDP_BYTES, 96, 0x0102_0304, equal).unwrap();
            assert_eq!(f.count(), 2);
            let mut payload = Vec::new();
            let mut out = [0u8; 96];
            let mut sizes = Vec::new();
            while let Some(n) = f.next_into(&mut out) {
                sizes.push(n);
                let (o, c) = decapsulate(&out[..n]).unwrap();
                assert_eq!(o, outer());
                let Carried::Fragment {
                    header,
                    protocol,
                    start,
                    len,
                } = c
                else {
                    panic!("not a fragment: {c:?}");
                };
                assert_eq!(protocol, next_header::IPV4);
                assert_eq!(header.ident, 0x0102_0304);
                assert_eq!(usize::from(header.offset), payload.len());
                assert_eq!(header.more, payload.len() + len < 57);
                payload.extend_from_slice(&out[start..start + len]);
            }
            assert_eq!(payload, UDP_BYTES);
            if equal {
                assert_eq!(sizes, [48 + 32, 48 + 25]);
            } else {
                assert_eq!(sizes, [96, 48 + 9]);
            }
        }
    }

    #[test]
    fn a_packet_that_fits_makes_one_fragment_and_tiny_mtus_are_refused() {
        let mut f = Fragmenter::new(&SOFTWIRE_UDP_BYTES, 1280, 1, false).unwrap();
        let mut out = [0u8; 1280];
        assert_eq!(f.next_into(&mut out), Some(97 + 8));
        assert_eq!(f.next_into(&mut out), None);
        assert_eq!(
            Fragmenter::new(&SOFTWIRE_UDP_BYTES, 55, 1, false).err(),
            Some(FragmentError::MtuTooSmall)
        );
        // A header alone makes one fragment with no data.
        let mut empty = SOFTWIRE_UDP_BYTES;
        empty[4..6].copy_from_slice(&[0, 0]);
        let mut f = Fragmenter::new(&empty, 1280, 1, true).unwrap();
        assert_eq!(f.count(), 1);
        assert_eq!(f.next_into(&mut out), Some(48));
        assert_eq!(f.next_into(&mut out), None);
        // A too-short output buffer consumes nothing.
        let mut f = Fragmenter::new(&SOFTWIRE_UDP_BYTES, 96, 1, false).unwrap();
        assert_eq!(f.next_into(&mut out[..95]), None);
        assert_eq!(f.next_into(&mut out), Some(96));
    }

    #[test]
    fn ecn_on_exit_follows_rfc_6040() {
        // outer CE, inner ECT(0) / ECT(1) / Not-ECT / CE.
        assert_eq!(ecn_on_exit(0b11, 0b10), EcnOnExit::MarkCe);
        assert_eq!(ecn_on_exit(0b11, 0b01), EcnOnExit::MarkCe);
        assert_eq!(ecn_on_exit(0b11, 0b00), EcnOnExit::Drop);
        assert_eq!(ecn_on_exit(0b11, 0b11), EcnOnExit::Keep);
        // outer not CE: the inner packet is left alone.
        assert_eq!(ecn_on_exit(0b10, 0b00), EcnOnExit::Keep);
        assert_eq!(ecn_on_exit(0xb8, 0xb9), EcnOnExit::Keep);
    }

    proptest::proptest! {
        /// Any bytes: decapsulation does not panic and its ranges are in the buffer.
        #[test]
        fn decapsulate_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..160)) {
            if let Ok((_, c)) = decapsulate(&bytes) {
                match c {
                    Carried::Ipv4 { start, len }
                    | Carried::Icmpv6 { start, len }
                    | Carried::Fragment { start, len, .. } => {
                        proptest::prop_assert!(start + len <= bytes.len());
                    }
                    Carried::Other(_) => {}
                }
            }
        }

        /// Any payload and MTU: the fragments put back together are the payload, and each fits.
        #[test]
        fn fragments_reassemble(len in 1600usize..3000, mtu in 1280u16..1600, equal: bool) {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = vec![0u8; len + HEADER_LEN];
            buf[..len].copy_from_slice(&payload);
            let n = encapsulate_in_place(&mut buf, len, &outer()).unwrap();
            let mut f = Fragmenter::new(&buf[..n], mtu, 9, equal).unwrap();
            let count = f.count();
            let mut out = vec![0u8; usize::from(mtu)];
            let mut got = Vec::new();
            let mut pieces = 0;
            while let Some(k) = f.next_into(&mut out) {
                proptest::prop_assert!(k <= usize::from(mtu));
                let (_, Carried::Fragment { start, len, header, .. }) = decapsulate(&out[..k]).unwrap() else {
                    return Err(proptest::test_runner::TestCaseError::fail("not a fragment"));
                };
                proptest::prop_assert_eq!(usize::from(header.offset), got.len());
                got.extend_from_slice(&out[start..start + len]);
                pieces += 1;
            }
            proptest::prop_assert_eq!(pieces, count);
            proptest::prop_assert_eq!(got, payload);
        }
    }
}
