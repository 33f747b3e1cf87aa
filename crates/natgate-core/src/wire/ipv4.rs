//! IPv4 headers (RFC 791).

use std::net::Ipv4Addr;

use super::{WireError, checksum, get_u16, set_u16};

/// Offsets of the fixed header fields.
mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC_ADDR: usize = 12;
    pub const DST_ADDR: usize = 16;
}

/// The length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// The Don't Fragment flag in the flags/offset word.
const DF: u16 = 0x4000;
/// The More Fragments flag in the flags/offset word.
const MF: u16 = 0x2000;
/// The fragment offset, in 8-byte units, in the flags/offset word.
const OFFSET_MASK: u16 = 0x1FFF;

/// A read/write view of an IPv4 packet in a byte buffer.
///
/// The buffer may be longer than the packet (link-layer padding, a receive buffer): bytes after
/// [`Ipv4Packet::total_len`] are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it. Accessors may panic unless [`Self::check_len`]
    /// would succeed; use for buffers this crate wrote.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps an untrusted buffer holding a complete packet. After success no accessor panics.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Wraps the datagram quoted in an ICMP error. RFC 792 only promises its header and first
    /// 8 payload bytes, so its total length (that of the original datagram) may exceed the
    /// buffer; [`Self::payload`] then ends at the buffer's end. Everything else is checked as in
    /// [`Self::new_checked`].
    #[inline]
    pub fn new_checked_quoted(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_header()?;
        Ok(p)
    }

    /// Checks that every accessor is in bounds: version 4, IHL at least 5, the header inside the
    /// buffer, and a total length that covers the header and fits in the buffer.
    #[inline]
    pub fn check_len(&self) -> Result<(), WireError> {
        self.check_header()?;
        if usize::from(self.total_len()) > self.buffer.as_ref().len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Everything [`Self::check_len`] checks except that the total length fits in the buffer.
    #[inline]
    fn check_header(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion);
        }
        let header_len = self.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(WireError::BadHeaderLen);
        }
        if header_len > len {
            return Err(WireError::Truncated);
        }
        if usize::from(self.total_len()) < header_len {
            return Err(WireError::BadTotalLen);
        }
        Ok(())
    }

    /// Returns the buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (4 for every checked packet).
    #[inline]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL * 4), 20..=60.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0F) * 4
    }

    /// The DSCP and ECN bits (RFC 2474, RFC 3168), which a NAT passes through unchanged.
    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The total length of the datagram in bytes, header included.
    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The identification field, which groups the fragments of one datagram.
    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// The Don't Fragment flag; with it set, a too-big datagram is answered with ICMP
    /// fragmentation needed (RFC 1191).
    #[inline]
    pub fn dont_frag(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & DF != 0
    }

    /// The More Fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & MF != 0
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (get_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) * 8
    }

    /// Whether this is a fragment of a larger datagram (MF set or a nonzero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & (MF | OFFSET_MASK) != 0
    }

    /// Whether this packet starts its datagram (offset 0), so it carries the transport header.
    /// True for unfragmented packets too.
    #[inline]
    pub fn is_first_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK == 0
    }

    /// The time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The IP protocol number of the payload (1 ICMP, 6 TCP, 17 UDP).
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        let a = field::SRC_ADDR;
        Ipv4Addr::new(b[a], b[a + 1], b[a + 2], b[a + 3])
    }

    /// The destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        let a = field::DST_ADDR;
        Ipv4Addr::new(b[a], b[a + 1], b[a + 2], b[a + 3])
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The options, empty for a 20-byte header.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to the total length, or to the end of the buffer
    /// for a quoted datagram (see [`Self::new_checked_quoted`]).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len()..usize::from(self.total_len()).min(b.len())]
    }

    /// Whether the header checksum is correct (RFC 1071: the header sums to `0xFFFF`).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.header()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version (4) and the header length in bytes (a multiple of 4, 20..=60).
    #[inline]
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0F);
    }

    /// Sets the DSCP and ECN bits.
    #[inline]
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    /// Sets the total length.
    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the identification field.
    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::IDENT, v);
    }

    /// Sets the flags and the fragment offset in bytes (rounded down to a multiple of 8).
    #[inline]
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset / 8) & OFFSET_MASK;
        if dont_frag {
            v |= DF;
        }
        if more_frags {
            v |= MF;
        }
        set_u16(self.buffer.as_mut(), field::FLG_OFF, v);
    }

    /// Sets the time to live.
    #[inline]
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    /// Sets the protocol number.
    #[inline]
    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    /// Sets the header checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Sets the source address. The checksum is not touched; update it with
    /// [`checksum::Delta`] or [`Self::fill_checksum`].
    #[inline]
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        let at = field::SRC_ADDR;
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&a.octets());
    }

    /// Sets the destination address. The checksum is not touched.
    #[inline]
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        let at = field::DST_ADDR;
        self.buffer.as_mut()[at..at + 4].copy_from_slice(&a.octets());
    }

    /// Recomputes the header checksum from scratch.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.header());
        self.set_checksum(c);
    }

    /// The payload, mutable; bounds as for [`Self::payload`].
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let end = usize::from(self.total_len()).min(self.buffer.as_ref().len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// Writes a 20-byte header (no options, identification 0, DF clear, DSCP/ECN 0) with its
/// checksum at the start of `buf`, for packets the NAT originates (ICMP errors). Returns the
/// header length, or 0 when `buf` is shorter than 20 bytes or the total length would exceed
/// 65535.
pub fn write_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    payload_len: u16,
) -> usize {
    let Some(header) = buf.get_mut(..MIN_HEADER_LEN) else {
        return 0;
    };
    let Some(total_len) = payload_len.checked_add(MIN_HEADER_LEN as u16) else {
        return 0;
    };
    let mut p = Ipv4Packet::new_unchecked(header);
    p.set_version_and_header_len(MIN_HEADER_LEN);
    p.set_dscp_ecn(0);
    p.set_total_len(total_len);
    p.set_ident(0);
    p.set_flags_and_offset(false, false, 0);
    p.set_ttl(ttl);
    p.set_protocol(protocol);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.fill_checksum();
    MIN_HEADER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{TCP_SYN_BYTES, UDP_BYTES};
    use proptest::prelude::*;

    #[test]
    fn deconstruct() {
        let p = Ipv4Packet::new_checked(&UDP_BYTES[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(p.total_len(), 57);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert!(p.is_first_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.checksum(), 0x4cac);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(8, 8, 8, 8));
        assert_eq!(p.header(), &UDP_BYTES[..20]);
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &UDP_BYTES[20..]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 57];
        buf[20..].copy_from_slice(&UDP_BYTES[20..]);
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_dscp_ecn(0);
        p.set_total_len(57);
        p.set_ident(0x1c46);
        p.set_flags_and_offset(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(17);
        p.set_src_addr(Ipv4Addr::new(192, 168, 1, 10));
        p.set_dst_addr(Ipv4Addr::new(8, 8, 8, 8));
        p.fill_checksum();
        assert_eq!(buf, UDP_BYTES);
    }

    #[test]
    fn fragment_fields() {
        let mut buf = UDP_BYTES;
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        p.set_flags_and_offset(false, true, 0);
        assert!(p.is_fragment() && p.is_first_fragment() && !p.dont_frag());
        p.set_flags_and_offset(false, false, 1480);
        assert!(p.is_fragment() && !p.is_first_fragment() && !p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        p.set_flags_and_offset(false, true, 0xFFF8);
        assert_eq!(p.frag_offset(), 0xFFF8);
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut buf = [0xEEu8; 64];
        buf[..57].copy_from_slice(&UDP_BYTES);
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.payload(), &UDP_BYTES[20..]);
    }

    #[test]
    fn options_are_part_of_the_header() {
        // IHL 6 with a 4-byte option (NOP NOP NOP EOL) before the SYN's TCP header.
        let mut buf = [0u8; 64];
        buf[..20].copy_from_slice(&TCP_SYN_BYTES[..20]);
        buf[20..24].copy_from_slice(&[1, 1, 1, 0]);
        buf[24..].copy_from_slice(&TCP_SYN_BYTES[20..]);
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(24);
        p.set_total_len(64);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &TCP_SYN_BYTES[20..]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn rejects_malformed() {
        let check = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = UDP_BYTES.to_vec();
            f(&mut b);
            Ipv4Packet::new_checked(&b[..]).err()
        };
        assert_eq!(check(&|b| b.truncate(19)), Some(WireError::Truncated));
        assert_eq!(check(&|b| b.clear()), Some(WireError::Truncated));
        assert_eq!(check(&|b| b[0] = 0x65), Some(WireError::BadVersion));
        assert_eq!(check(&|b| b[0] = 0x44), Some(WireError::BadHeaderLen));
        assert_eq!(check(&|b| b[0] = 0x40), Some(WireError::BadHeaderLen));
        // IHL 15 = 60 bytes, but only 57 are there.
        assert_eq!(check(&|b| b[0] = 0x4F), Some(WireError::Truncated));
        // Total length 19 < header; total length 58 > buffer.
        assert_eq!(check(&|b| b[3] = 19), Some(WireError::BadTotalLen));
        assert_eq!(check(&|b| b[3] = 58), Some(WireError::Truncated));
        // IHL 6 with total length 21: header fits, total length is shorter than the header.
        assert_eq!(
            check(&|b| {
                b[0] = 0x46;
                b[3] = 21
            }),
            Some(WireError::BadTotalLen)
        );
        assert_eq!(check(&|_| ()), None);
    }

    #[test]
    fn quoted_datagram_may_be_cut_short() {
        let quote = &UDP_BYTES[..28];
        assert_eq!(
            Ipv4Packet::new_checked(quote).err(),
            Some(WireError::Truncated)
        );
        let p = Ipv4Packet::new_checked_quoted(quote).unwrap();
        assert_eq!(p.total_len(), 57);
        assert_eq!(p.payload(), &UDP_BYTES[20..28]);
        assert!(p.verify_checksum());
        assert_eq!(
            Ipv4Packet::new_checked_quoted(&UDP_BYTES[..19]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn write_header_matches_etherparse() {
        let mut buf = [0u8; 40];
        let (src, dst) = (Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(write_header(&mut buf, src, dst, 1, 64, 20), 20);
        let (h, _) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
        assert_eq!(h.source, src.octets());
        assert_eq!(h.destination, dst.octets());
        assert_eq!(h.total_len, 40);
        assert_eq!(h.time_to_live, 64);
        assert!(!h.dont_fragment);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(write_header(&mut buf[..19], src, dst, 1, 64, 0), 0);
        assert_eq!(write_header(&mut buf, src, dst, 1, 64, 65516), 0);
    }

    proptest! {
        #[test]
        fn getters_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..80), fix in any::<bool>()) {
            if fix && data.len() >= 4 {
                // Steer half the cases past the version and length checks.
                data[0] = 0x40 | (data[0] & 0x0F);
                data[2] = 0;
                data[3] = data[3].min(data.len() as u8);
            }
            for quoted in [false, true] {
                let p = if quoted {
                    Ipv4Packet::new_checked_quoted(&mut data[..])
                } else {
                    Ipv4Packet::new_checked(&mut data[..])
                };
                let Ok(mut p) = p else { continue };
                let _ = (p.version(), p.header_len(), p.dscp_ecn(), p.total_len(), p.ident());
                let _ = (p.dont_frag(), p.more_frags(), p.frag_offset(), p.is_fragment());
                let _ = (p.is_first_fragment(), p.ttl(), p.protocol(), p.checksum());
                let _ = (p.src_addr(), p.dst_addr(), p.header(), p.options(), p.payload());
                let _ = p.verify_checksum();
                p.fill_checksum();
                prop_assert!(p.verify_checksum());
                let _ = p.payload_mut();
            }
        }

        #[test]
        fn address_rewrite_keeps_header_checksum_valid(
            src in any::<u32>(), dst in any::<u32>(), new_src in any::<u32>(), new_dst in any::<u32>(),
            ident in any::<u16>(), ttl in 1u8.., proto in any::<u8>(), len in 0u16..1480,
        ) {
            let mut buf = [0u8; 20];
            write_header(&mut buf, src.into(), dst.into(), proto, ttl, len);
            let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
            p.set_ident(ident);
            p.fill_checksum();

            // The NAT's rewrite: both addresses, and TTL (the high byte of the TTL/protocol word).
            let mut d = checksum::Delta::default();
            d.add_addr(src.into(), new_src.into());
            d.add_addr(dst.into(), new_dst.into());
            d.add16(u16::from_be_bytes([ttl, proto]), u16::from_be_bytes([ttl - 1, proto]));
            p.set_src_addr(new_src.into());
            p.set_dst_addr(new_dst.into());
            p.set_ttl(ttl - 1);
            let c = d.apply(p.checksum());
            p.set_checksum(c);

            let (h, _) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
            prop_assert_eq!(c, h.calc_header_checksum());
        }
    }
}
