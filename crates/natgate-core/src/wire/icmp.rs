//! ICMPv4 messages (RFC 792), and the errors the NAT itself sends.

use std::net::Ipv4Addr;

use super::{WireError, checksum, get_u16, get_u32, ipv4, set_u16, set_u32};

/// Offsets of the header fields.
mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const REST: usize = 4;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
    pub const NEXT_HOP_MTU: usize = 6;
}

/// The length of the ICMP header: type, code, checksum and the 4-byte rest of header.
pub const HEADER_LEN: usize = 8;

/// The IP protocol number of ICMP.
pub const PROTOCOL: u8 = 1;

/// The largest ICMP error a router sends, IP header included (RFC 1812 section 4.3.2.3).
pub const MAX_ERROR_LEN: usize = 576;

/// The TTL of errors the NAT originates (RFC 1700's default, as Linux uses).
const ERROR_TTL: u8 = 64;

/// The IPv4 and ICMP headers in front of the quoted datagram of an error.
const ERROR_HEADERS_LEN: usize = ipv4::MIN_HEADER_LEN + HEADER_LEN;

/// Echo reply (RFC 792): a query reply, identified by its identifier.
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable (RFC 792): an error; codes in [`unreachable`](mod@unreachable).
pub const DEST_UNREACHABLE: u8 = 3;
/// Source quench: deprecated (RFC 6633) and not translated.
pub const SOURCE_QUENCH: u8 = 4;
/// Redirect: meaningful only on the sender's own link, not translated.
pub const REDIRECT: u8 = 5;
/// Echo request (RFC 792): a query request.
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded (RFC 792): an error; codes in [`time_exceeded`].
pub const TIME_EXCEEDED: u8 = 11;
/// Parameter problem (RFC 792): an error.
pub const PARAMETER_PROBLEM: u8 = 12;
/// Timestamp request (RFC 792): a query request.
pub const TIMESTAMP: u8 = 13;
/// Timestamp reply (RFC 792): a query reply.
pub const TIMESTAMP_REPLY: u8 = 14;

/// Codes of [`DEST_UNREACHABLE`].
pub mod unreachable {
    /// Network unreachable.
    pub const NET: u8 = 0;
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Protocol unreachable.
    pub const PROTOCOL: u8 = 2;
    /// Port unreachable.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set; the next-hop MTU is in bytes 6..8 (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
    /// Communication administratively prohibited (RFC 1812 section 5.2.7.1).
    pub const ADMIN_PROHIBITED: u8 = 13;
}

/// Codes of [`TIME_EXCEEDED`].
pub mod time_exceeded {
    /// TTL exceeded in transit, sent when forwarding would take the TTL to zero (RFC 5508 REQ-10).
    pub const TTL: u8 = 0;
}

/// How a NAT treats an ICMP type (RFC 5508 sections 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IcmpKind {
    /// A query request (echo, timestamp): opens or refreshes a mapping keyed by its identifier.
    QueryRequest,
    /// A query reply (echo reply, timestamp reply): translated back through an existing mapping.
    QueryReply,
    /// An error (destination unreachable, time exceeded, parameter problem): translated through
    /// the session of the datagram it quotes.
    Error,
    /// Anything else, including source quench (deprecated, RFC 6633) and redirect: not
    /// translated.
    Other,
}

/// Classifies an ICMP type for translation.
#[inline]
pub const fn classify(msg_type: u8) -> IcmpKind {
    match msg_type {
        ECHO_REQUEST | TIMESTAMP => IcmpKind::QueryRequest,
        ECHO_REPLY | TIMESTAMP_REPLY => IcmpKind::QueryReply,
        DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// A read/write view of an ICMPv4 message: the whole IPv4 payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic unless [`Self::check_len`]
    /// would succeed.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    /// Wraps an untrusted buffer. After success no accessor panics.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the 8-byte header.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The message type.
    #[inline]
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The code, whose meaning depends on the type.
    #[inline]
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Bytes 4..8, whose meaning depends on the type.
    #[inline]
    pub fn rest_of_header(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::REST)
    }

    /// The identifier of an echo or timestamp message: the NAT's "port" for queries (RFC 5508
    /// section 3.1).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// The sequence number of an echo or timestamp message.
    #[inline]
    pub fn echo_seq(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::ECHO_SEQ)
    }

    /// The next-hop MTU of a fragmentation-needed error (RFC 1191 section 4); 0 from routers
    /// that predate it.
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// The bytes after the header: the echoed data of a query, the quoted datagram of an error.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the checksum over the whole message is correct (RFC 792).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    /// Sets the code.
    #[inline]
    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets bytes 4..8.
    #[inline]
    pub fn set_rest_of_header(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::REST, v);
    }

    /// Sets the query identifier. The checksum is not touched; ICMP has no pseudo header, so
    /// [`checksum::update16`] of the identifier alone patches it.
    #[inline]
    pub fn set_echo_ident(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::ECHO_IDENT, v);
    }

    /// Recomputes the checksum over the whole message.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// The bytes after the header, mutable: the NAT rewrites the quoted datagram of an error.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// Turns the offending datagram `buf[..orig_len]` into an ICMP error about it, in place, for
/// when the NAT itself answers (TTL exceeded, fragmentation needed, port unreachable).
///
/// The datagram moves behind a new 20-byte IPv4 header (`src` to `dst`, TTL 64) and an 8-byte
/// ICMP header (`msg_type`, `code`, `rest` as bytes 4..8), quoted as far as the whole error stays
/// within 576 bytes (RFC 1812 section 4.3.2.3) and within `buf`. That always covers the IP header
/// and 8 payload bytes RFC 792 asks for when `buf` has room. Both checksums are filled. Returns
/// the error's length, or 0 when `buf` cannot hold the headers plus a 28-byte quote.
///
/// Whether to answer at all (never about an ICMP error, a broadcast, a non-first fragment; RFC
/// 1812 section 4.3.2.7) is the caller's decision.
pub fn write_error_in_place(
    buf: &mut [u8],
    orig_len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    msg_type: u8,
    code: u8,
    rest: u32,
) -> usize {
    let Some(quote_len) = quote_len(buf.len(), orig_len) else {
        return 0;
    };
    buf.copy_within(..quote_len, ERROR_HEADERS_LEN);
    finish_error(buf, quote_len, src, dst, msg_type, code, rest)
}

/// As [`write_error_in_place`], quoting `original` into the separate buffer `out`.
pub fn write_error(
    out: &mut [u8],
    original: &[u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    msg_type: u8,
    code: u8,
    rest: u32,
) -> usize {
    let Some(quote_len) = quote_len(out.len(), original.len()) else {
        return 0;
    };
    out[ERROR_HEADERS_LEN..ERROR_HEADERS_LEN + quote_len].copy_from_slice(&original[..quote_len]);
    finish_error(out, quote_len, src, dst, msg_type, code, rest)
}

/// How much of an `orig_len`-byte datagram an error in a `buf_len`-byte buffer quotes, or `None`
/// if the buffer cannot hold the headers and an IP header plus 8 bytes.
#[inline]
fn quote_len(buf_len: usize, orig_len: usize) -> Option<usize> {
    let room = buf_len.checked_sub(ERROR_HEADERS_LEN)?;
    if room < ERROR_HEADERS_LEN {
        return None;
    }
    Some(orig_len.min(room).min(MAX_ERROR_LEN - ERROR_HEADERS_LEN))
}

/// Writes the IPv4 and ICMP headers in front of a quote already at `buf[28..28 + quote_len]`.
fn finish_error(
    buf: &mut [u8],
    quote_len: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    msg_type: u8,
    code: u8,
    rest: u32,
) -> usize {
    // quote_len <= 548, so these lengths fit in u16.
    let len = ERROR_HEADERS_LEN + quote_len;
    let icmp_len = (HEADER_LEN + quote_len) as u16;
    ipv4::write_header(buf, src, dst, PROTOCOL, ERROR_TTL, icmp_len);
    let mut icmp = IcmpPacket::new_unchecked(&mut buf[ipv4::MIN_HEADER_LEN..len]);
    icmp.set_msg_type(msg_type);
    icmp.set_code(code);
    icmp.set_rest_of_header(rest);
    icmp.fill_checksum();
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::update16;
    use crate::wire::fixtures::{ECHO_REQUEST_BYTES, PORT_UNREACHABLE_BYTES, UDP_BYTES};
    use crate::wire::ipv4::Ipv4Packet;
    use crate::wire::udp::UdpPacket;
    use proptest::prelude::*;

    /// Checks an ICMP message's checksum with etherparse.
    fn etherparse_valid(msg: &[u8]) -> bool {
        let (h, payload) = etherparse::Icmpv4Header::from_slice(msg).unwrap();
        h.checksum == h.icmp_type.calc_checksum(payload)
    }

    #[test]
    fn deconstruct_echo_request() {
        let p = IcmpPacket::new_checked(&ECHO_REQUEST_BYTES[20..]).unwrap();
        assert_eq!(p.msg_type(), ECHO_REQUEST);
        assert_eq!(classify(p.msg_type()), IcmpKind::QueryRequest);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0x3b27);
        assert_eq!(p.rest_of_header(), 0x1234_0001);
        assert_eq!((p.echo_ident(), p.echo_seq()), (0x1234, 1));
        assert_eq!(p.data(), b"abcdefghijklmnopqrstuvwabcdefghi");
        assert!(p.verify_checksum());
        assert!(etherparse_valid(&ECHO_REQUEST_BYTES[20..]));
    }

    #[test]
    fn construct_echo_request() {
        let mut buf = [0u8; 40];
        buf[8..].copy_from_slice(b"abcdefghijklmnopqrstuvwabcdefghi");
        let mut p = IcmpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_msg_type(ECHO_REQUEST);
        p.set_code(0);
        p.set_rest_of_header(1);
        p.set_echo_ident(0x1234);
        p.fill_checksum();
        assert_eq!(buf, ECHO_REQUEST_BYTES[20..]);
    }

    #[test]
    fn deconstruct_port_unreachable() {
        let ip = Ipv4Packet::new_checked(&PORT_UNREACHABLE_BYTES[..]).unwrap();
        assert!(ip.verify_checksum());
        let p = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (p.msg_type(), p.code()),
            (DEST_UNREACHABLE, unreachable::PORT)
        );
        assert_eq!(classify(p.msg_type()), IcmpKind::Error);
        assert!(p.verify_checksum());
        // The quote is the UDP fixture's IP header and UDP header; its total length says 57.
        let inner = Ipv4Packet::new_checked_quoted(p.data()).unwrap();
        assert_eq!(inner.total_len(), 57);
        assert_eq!(inner.src_addr(), Ipv4Addr::new(192, 168, 1, 10));
        assert!(inner.verify_checksum());
        let udp = UdpPacket::new_checked(inner.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port()), (53124, 53));
    }

    #[test]
    fn rejects_short() {
        assert_eq!(
            IcmpPacket::new_checked(&[8u8, 0, 0, 0, 0, 0, 0][..]).err(),
            Some(WireError::Truncated)
        );
        assert!(IcmpPacket::new_checked(&[8u8, 0, 0, 0, 0, 0, 0, 0][..]).is_ok());
    }

    #[test]
    fn classification() {
        let kinds = [
            (ECHO_REPLY, IcmpKind::QueryReply),
            (DEST_UNREACHABLE, IcmpKind::Error),
            (SOURCE_QUENCH, IcmpKind::Other),
            (REDIRECT, IcmpKind::Other),
            (ECHO_REQUEST, IcmpKind::QueryRequest),
            (9, IcmpKind::Other),
            (TIME_EXCEEDED, IcmpKind::Error),
            (PARAMETER_PROBLEM, IcmpKind::Error),
            (TIMESTAMP, IcmpKind::QueryRequest),
            (TIMESTAMP_REPLY, IcmpKind::QueryReply),
            (255, IcmpKind::Other),
        ];
        for (t, k) in kinds {
            assert_eq!(classify(t), k, "type {t}");
        }
    }

    #[test]
    fn port_unreachable_for_the_udp_fixture() {
        let mut buf = [0u8; 1500];
        buf[..57].copy_from_slice(&UDP_BYTES);
        let (gw, host) = (Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(192, 168, 1, 10));
        let n = write_error_in_place(
            &mut buf,
            57,
            gw,
            host,
            DEST_UNREACHABLE,
            unreachable::PORT,
            0,
        );
        assert_eq!(n, 28 + 57);
        let ip = Ipv4Packet::new_checked(&buf[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.ttl(), ip.protocol()),
            (gw, host, 64, PROTOCOL)
        );
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.data(), &UDP_BYTES[..]);
        let mut out = [0u8; 1500];
        assert_eq!(write_error(&mut out, &UDP_BYTES, gw, host, 3, 3, 0), n);
        assert_eq!(out[..n], buf[..n]);
    }

    #[test]
    fn error_quote_is_capped() {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let orig = [0x45u8; 1500];
        let mut buf = [0u8; 1500];
        assert_eq!(write_error(&mut buf, &orig, a, b, 11, 0, 0), MAX_ERROR_LEN);
        // A buffer of 56 bytes holds the headers and a 28-byte quote; 55 holds nothing useful.
        assert_eq!(write_error(&mut buf[..56], &orig, a, b, 11, 0, 0), 56);
        assert_eq!(write_error(&mut buf[..55], &orig, a, b, 11, 0, 0), 0);
        assert_eq!(write_error_in_place(&mut buf[..55], 55, a, b, 11, 0, 0), 0);
        assert_eq!(write_error_in_place(&mut [], 0, a, b, 11, 0, 0), 0);
    }

    #[test]
    fn frag_needed_carries_the_mtu() {
        let mut buf = [0u8; 1500];
        buf[..57].copy_from_slice(&UDP_BYTES);
        let (gw, host) = (
            Ipv4Addr::new(192, 168, 1, 1),
            Ipv4Addr::new(192, 168, 1, 10),
        );
        let n = write_error_in_place(&mut buf, 57, gw, host, 3, unreachable::FRAG_NEEDED, 1400);
        let icmp = IcmpPacket::new_checked(&buf[20..n]).unwrap();
        assert_eq!(icmp.next_hop_mtu(), 1400);
        assert!(etherparse_valid(&buf[20..n]));
    }

    proptest! {
        #[test]
        fn getters_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..80), error in any::<bool>()) {
            if error && !data.is_empty() {
                data[0] = DEST_UNREACHABLE;
            }
            if let Ok(mut p) = IcmpPacket::new_checked(&mut data[..]) {
                let _ = (p.msg_type(), p.code(), p.checksum(), p.rest_of_header(), classify(p.msg_type()));
                let _ = (p.echo_ident(), p.echo_seq(), p.next_hop_mtu(), p.data(), p.verify_checksum());
                if let Ok(inner) = Ipv4Packet::new_checked_quoted(p.data()) {
                    let _ = (inner.src_addr(), inner.dst_addr(), inner.payload(), inner.verify_checksum());
                }
                p.set_echo_ident(7);
                p.fill_checksum();
                prop_assert!(p.verify_checksum());
                let _ = p.data_mut();
            }
        }

        /// Rewriting the query identifier with RFC 1624 equals etherparse's recomputation.
        #[test]
        fn echo_ident_rewrite_matches_recomputation(
            reply in any::<bool>(), ident in any::<u16>(), seq in any::<u16>(), new_ident in any::<u16>(),
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut buf = vec![0u8; 8 + data.len()];
            let mut p = IcmpPacket::new_checked(&mut buf[..]).unwrap();
            p.set_msg_type(if reply { ECHO_REPLY } else { ECHO_REQUEST });
            p.set_rest_of_header((u32::from(ident) << 16) | u32::from(seq));
            p.data_mut().copy_from_slice(&data);
            p.fill_checksum();
            let c = update16(p.checksum(), ident, new_ident);
            p.set_echo_ident(new_ident);
            p.set_checksum(c);
            prop_assert!(p.verify_checksum());
            prop_assert!(etherparse_valid(&buf));
        }

        /// Any error written is a valid IPv4 packet carrying a valid ICMP error (checked by
        /// etherparse) that quotes as much of the original as the limits allow.
        #[test]
        fn errors_are_valid(
            orig in proptest::collection::vec(any::<u8>(), 0..1600),
            cap in 0usize..1600,
            msg_type in prop::sample::select(vec![DEST_UNREACHABLE, TIME_EXCEEDED, PARAMETER_PROBLEM]),
            code in any::<u8>(), mtu in any::<u16>(), src in any::<u32>(), dst in any::<u32>(),
        ) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            // etherparse reads bytes 4..8 only where RFC 792 and RFC 1191 give them a meaning.
            let rest = if (msg_type, code) == (DEST_UNREACHABLE, unreachable::FRAG_NEEDED) {
                u32::from(mtu)
            } else {
                0
            };
            let mut buf = vec![0u8; cap.max(orig.len())];
            buf[..orig.len()].copy_from_slice(&orig);
            let buf = &mut buf[..cap];
            let n = write_error_in_place(buf, orig.len().min(cap), src, dst, msg_type, code, rest);
            if cap < 56 {
                prop_assert_eq!(n, 0);
                return Ok(());
            }
            let quote = orig.len().min(cap - 28).min(548);
            prop_assert_eq!(n, 28 + quote);
            let ip = etherparse::Ipv4Slice::from_slice(&buf[..n]).unwrap();
            let h = ip.header().to_header();
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
            prop_assert_eq!((h.source, h.destination, h.time_to_live), (src.octets(), dst.octets(), 64));
            let msg = ip.payload().payload;
            prop_assert!(etherparse_valid(msg));
            prop_assert_eq!(&msg[8..], &orig[..quote]);
            let mut out = vec![0u8; cap];
            prop_assert_eq!(write_error(&mut out, &orig, src, dst, msg_type, code, rest), n);
            prop_assert_eq!(&out[..n], &buf[..n]);
        }
    }
}
