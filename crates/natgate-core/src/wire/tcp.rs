//! TCP headers (RFC 9293), as far as a NAT reads and rewrites them.

use core::ops::BitOr;
use std::net::Ipv4Addr;

use super::{WireError, checksum, get_u16, get_u32, set_u16};

/// Offsets of the header fields.
mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
}

/// The length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// The bytes of a TCP header an ICMP error is guaranteed to quote (RFC 792): ports and sequence
/// number.
pub const PREFIX_LEN: usize = 8;

/// The IP protocol number of TCP.
pub const PROTOCOL: u8 = 6;

/// Option kinds (RFC 9293 section 3.2).
mod option {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const MSS_LEN: usize = 4;
}

/// The control bits of a segment (RFC 9293 section 3.1; ECE and CWR from RFC 3168).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(
    /// The raw flags byte (header byte 13).
    pub u8,
);

impl TcpFlags {
    /// No more data from the sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers: opens a connection.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// The acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// The urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Whether every flag of `other` is set.
    #[inline]
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether this is a connection-opening SYN: SYN without ACK, RST or FIN. PSH, URG and the
    /// ECN bits (an ECN-setup SYN carries ECE and CWR, RFC 3168 section 6.1.1) do not matter.
    /// The NAT creates TCP sessions only for these (RFC 5382 REQ-2).
    #[inline]
    pub const fn is_syn_only(self) -> bool {
        self.0 & (Self::SYN.0 | Self::ACK.0 | Self::RST.0 | Self::FIN.0) == Self::SYN.0
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;

    #[inline]
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// A read/write view of a complete TCP header (the IPv4 payload of a first fragment).
///
/// For the TCP header quoted inside an ICMP error, of which only 8 bytes are guaranteed, use
/// [`TcpPrefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic unless [`Self::check_len`]
    /// would succeed.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps an untrusted buffer. After success no accessor panics.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds the fixed header, that the data offset is at least 5 words,
    /// and that the header with its options fits in the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if header_len > len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// The acknowledgment number.
    #[inline]
    pub fn ack(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::ACK)
    }

    /// The header length in bytes (data offset * 4), options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The control bits.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// The receive window.
    #[inline]
    pub fn window(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The options, between the fixed header and the data offset.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The segment data, after the options to the end of the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    /// The Maximum Segment Size option (RFC 9293 section 3.7.1), if present and well-formed.
    #[inline]
    pub fn mss_option(&self) -> Option<u16> {
        let at = MIN_HEADER_LEN + find_mss(self.options())?;
        Some(get_u16(self.buffer.as_ref(), at))
    }

    /// Whether the checksum is correct over the pseudo header and the whole buffer, which must
    /// then be exactly the segment.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        checksum::fold(checksum::pseudo_header(src, dst, PROTOCOL, len) + checksum::sum(b))
            == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port. The checksum is not touched; update it with [`checksum::Delta`].
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    /// Sets the destination port. The checksum is not touched.
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Rewrites the MSS option to `mss` and patches the checksum incrementally; returns the old
    /// value, or `None` (and changes nothing) when there is no well-formed MSS option. The
    /// caller decides whether to clamp (only lower it) and on which segments (SYNs).
    ///
    /// Options are not aligned, so the value may start at an odd offset. There it straddles two
    /// 16-bit checksum words, and its contribution to the sum is byte-swapped (RFC 1071
    /// section 2(B)), so the update uses the swapped values.
    #[inline]
    pub fn set_mss_option(&mut self, mss: u16) -> Option<u16> {
        let at = MIN_HEADER_LEN + find_mss(self.options())?;
        let old = get_u16(self.buffer.as_ref(), at);
        set_u16(self.buffer.as_mut(), at, mss);
        let check = if at.is_multiple_of(2) {
            checksum::update16(self.checksum(), old, mss)
        } else {
            checksum::update16(self.checksum(), old.swap_bytes(), mss.swap_bytes())
        };
        self.set_checksum(check);
        Some(old)
    }

    /// Recomputes the checksum over the pseudo header and the whole buffer, which must be exactly
    /// the segment. A buffer longer than 65535 bytes cannot be a segment and is left alone.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        if let Ok(len) = u16::try_from(b.len()) {
            let c = !checksum::fold(
                checksum::pseudo_header(src, dst, PROTOCOL, len) + checksum::sum(b),
            );
            self.set_checksum(c);
        }
    }

    /// The segment data, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

/// The offset in `options` of the MSS value, walking the option list (RFC 9293 section 3.2).
/// Stops at End of Option List, at a malformed length, or at an option running past the end.
#[inline]
fn find_mss(options: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(&kind) = options.get(i) {
        match kind {
            option::END => return None,
            option::NOP => i += 1,
            _ => {
                let len = usize::from(*options.get(i + 1)?);
                if len < 2 || i + len > options.len() {
                    return None;
                }
                if kind == option::MSS && len == option::MSS_LEN {
                    return Some(i + 2);
                }
                i += len;
            }
        }
    }
    None
}

/// A view of the first 8 bytes of a TCP header (ports and sequence number), all that an ICMP
/// error is guaranteed to quote (RFC 792). The NAT reads the ports to find
/// the session and rewrites one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPrefix<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPrefix<T> {
    /// Wraps an untrusted buffer of at least 8 bytes. After success no accessor panics.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < PREFIX_LEN {
            return Err(WireError::Truncated);
        }
        Ok(TcpPrefix { buffer })
    }

    /// Returns the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPrefix<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }
}

/// The length of a reset [`write_tcp_reset_in_place`] builds: a 20-byte IPv4 header and a
/// 20-byte TCP header, no options, no data.
pub const RESET_LEN: usize = super::ipv4::MIN_HEADER_LEN + MIN_HEADER_LEN;

/// The TTL of a reset the NAT originates: a fresh one, as for any packet it sends itself
/// (RFC 1122 section 3.2.1.7 recommends 64).
const RESET_TTL: u8 = 64;

/// Replaces the TCP/IPv4 datagram in `buf[..orig_len]` with the reset a closed port would send
/// back (RFC 9293 section 3.10.7.1, "If the state is CLOSED"): addresses and ports swapped; if
/// the segment had ACK, `<SEQ=SEG.ACK><CTL=RST>`, else `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`
/// where SEG.LEN counts the data and one each for SYN and FIN. The new datagram has a fresh
/// TTL, no IP or TCP options, window 0, both checksums filled. Returns its length
/// ([`RESET_LEN`]), or 0 (and `buf` untouched) when no reset may be sent: the datagram is not a
/// well-formed unfragmented TCP segment, or it is itself a reset (RFC 9293: a RST is never
/// answered).
///
/// It answers a segment the NAT refuses (RFC 6888 REQ-11's TCP reset choice); whether to answer
/// at all (the source is unicast, and so on) is the caller's decision.
pub fn write_tcp_reset_in_place(buf: &mut [u8], orig_len: usize) -> usize {
    use super::ipv4::{self, Ipv4Packet};
    let Some(orig) = buf.get(..orig_len) else {
        return 0;
    };
    let Ok(ip) = Ipv4Packet::new_checked(orig) else {
        return 0;
    };
    if ip.protocol() != PROTOCOL || ip.is_fragment() {
        return 0;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let Ok(seg) = TcpPacket::new_checked(ip.payload()) else {
        return 0;
    };
    let flags = seg.flags();
    if flags.contains(TcpFlags::RST) {
        return 0;
    }
    // The IP total length bounds the segment; anything after it in `buf` is not ours.
    let data_len = u32::try_from(seg.payload().len()).unwrap_or(u32::MAX);
    let seg_len = data_len
        .wrapping_add(u32::from(flags.contains(TcpFlags::SYN)))
        .wrapping_add(u32::from(flags.contains(TcpFlags::FIN)));
    let (seq, ack, reply_flags) = if flags.contains(TcpFlags::ACK) {
        (seg.ack(), 0, TcpFlags::RST)
    } else {
        (
            0,
            seg.seq().wrapping_add(seg_len),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    let (sport, dport) = (seg.src_port(), seg.dst_port());
    // The headers are rebuilt from these values; nothing of the original is read below, so
    // writing over it in place is safe, and a valid original (IPv4 + TCP headers) is at least
    // `RESET_LEN` long.
    let Some(out) = buf.get_mut(..RESET_LEN) else {
        return 0;
    };
    out.fill(0);
    ipv4::write_header(out, dst, src, PROTOCOL, RESET_TTL, MIN_HEADER_LEN as u16);
    let tcp = &mut out[ipv4::MIN_HEADER_LEN..];
    super::set_u16(tcp, field::SRC_PORT, dport);
    super::set_u16(tcp, field::DST_PORT, sport);
    super::set_u32(tcp, field::SEQ, seq);
    super::set_u32(tcp, field::ACK, ack);
    tcp[field::DATA_OFF] = ((MIN_HEADER_LEN / 4) as u8) << 4;
    tcp[field::FLAGS] = reply_flags.0;
    TcpPacket::new_unchecked(tcp).fill_checksum(dst, src);
    RESET_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::Delta;
    use crate::wire::fixtures::TCP_SYN_BYTES;
    use crate::wire::ipv4::{Ipv4Packet, write_header};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(93, 184, 216, 34);

    /// etherparse's checksum of a segment.
    fn etherparse_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
        let (h, payload) = etherparse::TcpHeader::from_slice(segment).unwrap();
        h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), payload)
            .unwrap()
    }

    #[test]
    fn deconstruct() {
        let p = TcpPacket::new_checked(&TCP_SYN_BYTES[20..]).unwrap();
        assert_eq!(p.src_port(), 51000);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq(), 0x3b9a_ca00);
        assert_eq!(p.ack(), 0);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert!(p.flags().is_syn_only());
        assert_eq!(p.window(), 64240);
        assert_eq!(p.checksum(), 0x509b);
        assert_eq!(p.options(), &TCP_SYN_BYTES[40..60]);
        assert!(p.payload().is_empty());
        assert_eq!(p.mss_option(), Some(1460));
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(
            p.checksum(),
            etherparse_checksum(SRC, DST, &TCP_SYN_BYTES[20..])
        );
    }

    #[test]
    fn construct() {
        let mut buf = TCP_SYN_BYTES;
        let mut p = TcpPacket::new_checked(&mut buf[20..]).unwrap();
        p.set_src_port(51000);
        p.set_dst_port(443);
        p.set_checksum(0);
        p.fill_checksum(SRC, DST);
        assert_eq!(buf, TCP_SYN_BYTES);
    }

    #[test]
    fn flags() {
        let synack = TcpFlags::SYN | TcpFlags::ACK;
        assert!(synack.contains(TcpFlags::SYN) && synack.contains(TcpFlags::ACK));
        assert!(!synack.contains(TcpFlags::FIN));
        assert!(!synack.is_syn_only());
        assert!((TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR).is_syn_only());
        assert!(!(TcpFlags::SYN | TcpFlags::RST).is_syn_only());
        assert!(!(TcpFlags::SYN | TcpFlags::FIN).is_syn_only());
        assert!(!TcpFlags::ACK.is_syn_only());
    }

    #[test]
    fn rejects_malformed() {
        let seg = &TCP_SYN_BYTES[20..];
        assert_eq!(
            TcpPacket::new_checked(&seg[..19]).err(),
            Some(WireError::Truncated)
        );
        // Data offset 10 words, but only 39 bytes.
        assert_eq!(
            TcpPacket::new_checked(&seg[..39]).err(),
            Some(WireError::Truncated)
        );
        let mut bad = [0u8; 40];
        bad.copy_from_slice(seg);
        bad[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&bad[..]).err(),
            Some(WireError::BadHeaderLen)
        );
        assert_eq!(
            TcpPrefix::new_checked(&seg[..7]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn prefix_reads_and_rewrites_ports() {
        let mut quote = [0u8; 8];
        quote.copy_from_slice(&TCP_SYN_BYTES[20..28]);
        let mut p = TcpPrefix::new_checked(&mut quote[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.seq()),
            (51000, 443, 0x3b9a_ca00)
        );
        p.set_src_port(40000);
        p.set_dst_port(8443);
        assert_eq!((p.src_port(), p.dst_port()), (40000, 8443));
    }

    /// Options holding `mss` after `pad` NOPs, padded to a multiple of 4 with End.
    fn options_with_mss(pad: usize, mss: u16) -> Vec<u8> {
        let mut o = vec![1u8; pad];
        o.extend_from_slice(&[2, 4]);
        o.extend_from_slice(&mss.to_be_bytes());
        o.resize(o.len().div_ceil(4) * 4, 0);
        o
    }

    #[test]
    fn mss_option_walk() {
        assert_eq!(find_mss(&options_with_mss(0, 1460)), Some(2));
        assert_eq!(find_mss(&options_with_mss(3, 1460)), Some(5));
        // End of list before the MSS; malformed lengths; MSS with the wrong length; cut short.
        assert_eq!(find_mss(&[0, 2, 4, 5, 0xb4]), None);
        assert_eq!(find_mss(&[8, 0, 2, 4, 5, 0xb4]), None);
        assert_eq!(find_mss(&[8, 1, 2, 4, 5, 0xb4]), None);
        assert_eq!(find_mss(&[8, 20, 2, 4, 5, 0xb4]), None);
        assert_eq!(find_mss(&[2, 3, 5, 2, 4, 5, 0xb4]), Some(5));
        assert_eq!(find_mss(&[2, 4, 5]), None);
        assert_eq!(find_mss(&[2]), None);
        assert_eq!(find_mss(&[]), None);
    }

    #[test]
    fn clamp_the_fixture() {
        let mut buf = TCP_SYN_BYTES;
        let mut p = TcpPacket::new_checked(&mut buf[20..]).unwrap();
        assert_eq!(p.set_mss_option(1400), Some(1460));
        assert_eq!(p.mss_option(), Some(1400));
        assert!(p.verify_checksum(SRC, DST));
    }

    /// The reset [`write_tcp_reset_in_place`] must make of [`TCP_SYN_BYTES`], computed apart
    /// (by a short script from RFC 791 / RFC 9293): 93.184.216.34:443 -> 192.168.1.10:51000,
    /// TTL 64, seq 0, ack 0x3b9aca01 (the SYN's sequence number plus one), RST|ACK, window 0.
    static RESET_FOR_SYN_BYTES: [u8; RESET_LEN] = [
        0x45, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x00, 0x40, 0x06, 0x83, 0x43, 0x5d, 0xb8, 0xd8,
        0x22, 0xc0, 0xa8, 0x01, 0x0a, 0x01, 0xbb, 0xc7, 0x38, 0x00, 0x00, 0x00, 0x00, 0x3b, 0x9a,
        0xca, 0x01, 0x50, 0x14, 0x00, 0x00, 0xe9, 0xb3, 0x00, 0x00,
    ];

    /// A TCP/IPv4 datagram built by etherparse: `flags` from "SAFRP", sequence and ack numbers,
    /// `data` as payload.
    fn segment(flags: &str, seq: u32, ack: u32, data: &[u8]) -> Vec<u8> {
        let mut b = etherparse::PacketBuilder::ipv4(SRC.octets(), DST.octets(), 17)
            .tcp(40000, 80, seq, 1000);
        for f in flags.chars() {
            b = match f {
                'S' => b.syn(),
                'A' => b.ack(ack),
                'F' => b.fin(),
                'R' => b.rst(),
                'P' => b.psh(),
                _ => b,
            };
        }
        let mut v = Vec::new();
        b.write(&mut v, data).unwrap();
        v
    }

    /// The reset in `buf`, parsed by etherparse, with both checksums checked.
    fn parsed_reset(buf: &[u8]) -> (etherparse::Ipv4Header, etherparse::TcpHeader) {
        let (ip, rest) = etherparse::Ipv4Header::from_slice(buf).unwrap();
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "IPv4 checksum"
        );
        assert_eq!(usize::from(ip.total_len), RESET_LEN);
        let (tcp, payload) = etherparse::TcpHeader::from_slice(&rest[..MIN_HEADER_LEN]).unwrap();
        assert!(payload.is_empty());
        assert_eq!(
            tcp.checksum,
            tcp.calc_checksum_ipv4(&ip, payload).unwrap(),
            "TCP checksum"
        );
        (ip, tcp)
    }

    #[test]
    fn rfc9293_reset_for_a_syn_fixture() {
        let mut buf = TCP_SYN_BYTES;
        assert_eq!(write_tcp_reset_in_place(&mut buf, 60), RESET_LEN);
        assert_eq!(buf[..RESET_LEN], RESET_FOR_SYN_BYTES);
        let (ip, tcp) = parsed_reset(&buf);
        assert_eq!((ip.source, ip.destination), (DST.octets(), SRC.octets()));
        assert_eq!((tcp.source_port, tcp.destination_port), (443, 51000));
        assert!(tcp.rst && tcp.ack && !tcp.syn && !tcp.fin);
    }

    #[test]
    fn rfc9293_reset_without_ack_acknowledges_syn_fin_and_data() {
        for (flags, data, len) in [
            ("S", &b""[..], 1),
            ("SF", b"", 2),
            ("P", b"hello", 5),
            ("SFP", b"abc", 5),
        ] {
            let mut buf = segment(flags, u32::MAX - 1, 0, data);
            let n = buf.len();
            assert_eq!(write_tcp_reset_in_place(&mut buf, n), RESET_LEN);
            let (ip, tcp) = parsed_reset(&buf);
            assert_eq!(
                ip.time_to_live, RESET_TTL,
                "a fresh TTL, not the original's 17"
            );
            assert_eq!(tcp.sequence_number, 0, "{flags}");
            // Sequence space wraps (RFC 9293 section 3.4).
            assert_eq!(
                tcp.acknowledgment_number,
                (u32::MAX - 1).wrapping_add(len),
                "{flags}"
            );
            assert!(tcp.rst && tcp.ack, "{flags}");
            assert_eq!((tcp.source_port, tcp.destination_port), (80, 40000));
            assert_eq!(tcp.window_size, 0);
        }
    }

    #[test]
    fn rfc9293_reset_for_a_segment_with_ack_takes_its_sequence_from_the_ack() {
        let mut buf = segment("SA", 7, 0xdead_beef, b"");
        let n = buf.len();
        assert_eq!(write_tcp_reset_in_place(&mut buf, n), RESET_LEN);
        let (_, tcp) = parsed_reset(&buf);
        assert_eq!(tcp.sequence_number, 0xdead_beef);
        assert!(tcp.rst && !tcp.ack);
        assert_eq!(tcp.acknowledgment_number, 0);
    }

    #[test]
    fn reset_drops_ip_options_and_ignores_bytes_past_the_datagram() {
        // The fixture with 4 bytes of IP options (NOP NOP NOP EOL) and 6 bytes of padding after.
        let mut buf = Vec::new();
        buf.extend_from_slice(&TCP_SYN_BYTES[..20]);
        buf.extend_from_slice(&[1, 1, 1, 0]);
        buf.extend_from_slice(&TCP_SYN_BYTES[20..]);
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&64u16.to_be_bytes());
        let mut ip = crate::wire::ipv4::Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        ip.fill_checksum();
        buf.extend_from_slice(&[0xee; 6]);
        assert_eq!(write_tcp_reset_in_place(&mut buf, 70), RESET_LEN);
        assert_eq!(buf[..RESET_LEN], RESET_FOR_SYN_BYTES);
    }

    #[test]
    fn no_reset_for_a_reset_a_fragment_or_a_malformed_segment() {
        let rst = segment("R", 1, 0, b"");
        let rst_ack = segment("RA", 1, 5, b"");
        let mut fragment = TCP_SYN_BYTES;
        fragment[6] = 0x20; // MF
        let mut not_tcp = TCP_SYN_BYTES;
        not_tcp[9] = 17;
        let mut bad_offset = TCP_SYN_BYTES;
        bad_offset[32] = 0x40;
        for (name, orig, len) in [
            ("rst", &rst[..], rst.len()),
            ("rst ack", &rst_ack[..], rst_ack.len()),
            ("fragment", &fragment[..], 60),
            ("udp", &not_tcp[..], 60),
            ("data offset 4", &bad_offset[..], 60),
            ("cut short", &TCP_SYN_BYTES[..], 39),
            ("length past the buffer", &TCP_SYN_BYTES[..], 61),
        ] {
            let mut buf = orig.to_vec();
            assert_eq!(write_tcp_reset_in_place(&mut buf, len), 0, "{name}");
            assert_eq!(buf, orig, "{name}: buffer untouched");
        }
    }

    proptest! {
        /// Any unfragmented TCP segment that is not a reset (any flags, IP and TCP options,
        /// data) is answered with a reset etherparse finds valid and RFC 9293 correct.
        #[test]
        fn rfc9293_reset_of_any_segment_checked_by_etherparse(
            src in any::<u32>(), dst in any::<u32>(), sport in any::<u16>(), dport in any::<u16>(),
            seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(), ttl in any::<u8>(),
            ip_opts in 0usize..=10, tcp_opts in 0usize..=10,
            data in proptest::collection::vec(any::<u8>(), 0..100),
            slack in 0usize..16,
        ) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let flags = TcpFlags(flags & !TcpFlags::RST.0);
            let ihl = 20 + ip_opts * 4;
            let thl = MIN_HEADER_LEN + tcp_opts * 4;
            let len = ihl + thl + data.len();
            let mut buf = vec![0u8; len + slack];
            {
                let mut ip = crate::wire::ipv4::Ipv4Packet::new_unchecked(&mut buf[..]);
                ip.set_version_and_header_len(ihl);
                ip.set_total_len(len as u16);
                ip.set_ttl(ttl);
                ip.set_protocol(PROTOCOL);
                ip.set_src_addr(src);
                ip.set_dst_addr(dst);
                ip.fill_checksum();
            }
            buf[20..ihl].fill(1); // NOPs
            {
                let seg = &mut buf[ihl..len];
                crate::wire::set_u16(seg, field::SRC_PORT, sport);
                crate::wire::set_u16(seg, field::DST_PORT, dport);
                crate::wire::set_u32(seg, field::SEQ, seq);
                crate::wire::set_u32(seg, field::ACK, ack);
                seg[field::DATA_OFF] = ((thl / 4) as u8) << 4;
                seg[field::FLAGS] = flags.0;
                seg[MIN_HEADER_LEN..thl].fill(1);
                seg[thl..].copy_from_slice(&data);
                TcpPacket::new_unchecked(seg).fill_checksum(src, dst);
            }
            prop_assert_eq!(write_tcp_reset_in_place(&mut buf, len), RESET_LEN);
            let (ip, tcp) = parsed_reset(&buf);
            prop_assert_eq!(ip.source, dst.octets());
            prop_assert_eq!(ip.destination, src.octets());
            prop_assert_eq!(ip.time_to_live, RESET_TTL);
            prop_assert_eq!(ip.ihl(), 5);
            prop_assert_eq!(tcp.source_port, dport);
            prop_assert_eq!(tcp.destination_port, sport);
            prop_assert_eq!(tcp.header_len(), MIN_HEADER_LEN);
            prop_assert!(tcp.rst && !tcp.syn && !tcp.fin && !tcp.psh && !tcp.urg);
            if flags.contains(TcpFlags::ACK) {
                prop_assert_eq!(tcp.sequence_number, ack);
                prop_assert!(!tcp.ack);
            } else {
                let seg_len = data.len() as u32
                    + u32::from(flags.contains(TcpFlags::SYN))
                    + u32::from(flags.contains(TcpFlags::FIN));
                prop_assert_eq!(tcp.sequence_number, 0);
                prop_assert!(tcp.ack);
                prop_assert_eq!(tcp.acknowledgment_number, seq.wrapping_add(seg_len));
            }
        }
    }

    proptest! {
        #[test]
        fn getters_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..70), fix in any::<bool>()) {
            if fix && data.len() > 12 {
                // Steer half the cases to a data offset that fits.
                data[12] = ((data.len().min(60) / 4) as u8) << 4;
            }
            if let Ok(mut p) = TcpPacket::new_checked(&mut data[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq(), p.ack(), p.header_len(), p.flags());
                let _ = (p.window(), p.checksum(), p.options(), p.payload(), p.mss_option());
                let _ = p.verify_checksum(SRC, DST);
                let _ = p.set_mss_option(536);
                p.fill_checksum(SRC, DST);
                prop_assert!(p.verify_checksum(SRC, DST));
                let _ = p.payload_mut();
            }
            if let Ok(mut p) = TcpPrefix::new_checked(&mut data[..]) {
                let _ = (p.src_port(), p.dst_port(), p.seq());
                p.set_src_port(1);
                p.set_dst_port(2);
            }
        }

        /// A NAPT rewrite plus MSS clamping at any alignment, patched incrementally, equals
        /// etherparse's full recomputation.
        #[test]
        fn rewrite_and_clamp_match_recomputation(
            src in any::<u32>(), dst in any::<u32>(), sport in any::<u16>(), dport in any::<u16>(),
            seq in any::<u32>(), pad in 0usize..8, mss in any::<u16>(), new_mss in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            new_addr in any::<u32>(), new_port in any::<u16>(),
        ) {
            let (src, dst, new_addr) = (Ipv4Addr::from(src), Ipv4Addr::from(dst), Ipv4Addr::from(new_addr));
            let opts = options_with_mss(pad, mss);
            let hlen = MIN_HEADER_LEN + opts.len();
            let seg_len = hlen + payload.len();
            let mut buf = vec![0u8; 20 + seg_len];
            write_header(&mut buf, src, dst, PROTOCOL, 64, seg_len as u16);
            {
                let seg = &mut buf[20..];
                seg[4..8].copy_from_slice(&seq.to_be_bytes());
                seg[12] = ((hlen / 4) as u8) << 4;
                seg[13] = TcpFlags::SYN.0;
                seg[20..hlen].copy_from_slice(&opts);
                seg[hlen..].copy_from_slice(&payload);
                let mut t = TcpPacket::new_checked(seg).unwrap();
                t.set_src_port(sport);
                t.set_dst_port(dport);
                t.fill_checksum(src, dst);
            }

            let mut ip = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            let mut d = Delta::default();
            d.add_addr(src, new_addr);
            ip.set_src_addr(new_addr);
            let c = d.apply(ip.checksum());
            ip.set_checksum(c);
            let mut t = TcpPacket::new_checked(ip.payload_mut()).unwrap();
            d.add16(sport, new_port);
            t.set_src_port(new_port);
            let c = d.apply(t.checksum());
            t.set_checksum(c);
            prop_assert_eq!(t.set_mss_option(new_mss), Some(mss));

            let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(ip.verify_checksum());
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            prop_assert_eq!(t.mss_option(), Some(new_mss));
            prop_assert_eq!(t.checksum(), etherparse_checksum(new_addr, dst, ip.payload()));
        }
    }
}
