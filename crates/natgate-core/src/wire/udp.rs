//! UDP headers (RFC 768).

use std::net::Ipv4Addr;

use super::{WireError, checksum, get_u16, set_u16};

/// Offsets of the header fields.
mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// The length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// The IP protocol number of UDP.
pub const PROTOCOL: u8 = 17;

/// A read/write view of a UDP datagram: the IPv4 payload, or the 8 quoted bytes in an ICMP error.
///
/// The length field is not checked against the buffer: inside an ICMP error only the header is
/// quoted (RFC 792), yet its length field still describes the original datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it. Accessors may panic unless [`Self::check_len`]
    /// would succeed.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
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

    /// The length field: header plus data of the original datagram, whatever the buffer holds.
    #[inline]
    #[expect(
        clippy::len_without_is_empty,
        reason = "a header field named by RFC 768, not the length of a collection"
    )]
    pub fn len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum field; 0 means the sender computed none (RFC 768).
    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The bytes after the header, to the end of the buffer.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the checksum is absent (0) or correct over the pseudo header and the whole buffer,
    /// which must then be exactly the datagram.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        self.checksum() == 0
            || checksum::fold(checksum::pseudo_header(src, dst, PROTOCOL, len) + checksum::sum(b))
                == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port. The checksum is not touched; update it with
    /// [`checksum::apply_udp`].
    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    /// Sets the destination port. The checksum is not touched.
    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Recomputes the checksum over the pseudo header and the whole buffer, which must be exactly
    /// the datagram; a computed 0 is sent as `0xFFFF` (RFC 768). A buffer longer than 65535 bytes
    /// cannot be a UDP datagram and gets checksum 0.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let c = match u16::try_from(b.len()) {
            Ok(len) => {
                match !checksum::fold(
                    checksum::pseudo_header(src, dst, PROTOCOL, len) + checksum::sum(b),
                ) {
                    0 => 0xFFFF,
                    c => c,
                }
            }
            Err(_) => 0,
        };
        self.set_checksum(c);
    }

    /// The bytes after the header, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::{Delta, apply_udp};
    use crate::wire::fixtures::UDP_BYTES;
    use crate::wire::ipv4::Ipv4Packet;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

    #[test]
    fn deconstruct() {
        let p = UdpPacket::new_checked(&UDP_BYTES[20..]).unwrap();
        assert_eq!(p.src_port(), 53124);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 37);
        assert_eq!(p.checksum(), 0xe2ec);
        assert_eq!(p.payload(), &UDP_BYTES[28..]);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, DST));
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 37];
        buf[8..].copy_from_slice(&UDP_BYTES[28..]);
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        p.set_src_port(53124);
        p.set_dst_port(53);
        p.set_len(37);
        p.fill_checksum(SRC, DST);
        assert_eq!(buf, UDP_BYTES[20..]);
    }

    #[test]
    fn header_only_is_enough() {
        // The quote in an ICMP error: the length field says 37, the buffer holds 8.
        let p = UdpPacket::new_checked(&UDP_BYTES[20..28]).unwrap();
        assert_eq!(p.len(), 37);
        assert!(p.payload().is_empty());
        assert_eq!(
            UdpPacket::new_checked(&UDP_BYTES[20..27]).err(),
            Some(WireError::Truncated)
        );
    }

    /// The checksum etherparse computes for a datagram, RFC 768's 0 -> 0xFFFF included.
    fn etherparse_checksum(src: Ipv4Addr, dst: Ipv4Addr, datagram: &[u8]) -> u16 {
        let (h, payload) = etherparse::UdpHeader::from_slice(datagram).unwrap();
        h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), payload)
            .unwrap()
    }

    proptest! {
        #[test]
        fn getters_never_panic(mut data in proptest::collection::vec(any::<u8>(), 0..24)) {
            if let Ok(mut p) = UdpPacket::new_checked(&mut data[..]) {
                let _ = (p.src_port(), p.dst_port(), p.len(), p.checksum(), p.payload());
                let _ = p.verify_checksum(SRC, DST);
                p.fill_checksum(SRC, DST);
                prop_assert!(p.verify_checksum(SRC, DST));
                let _ = p.payload_mut();
            }
        }

        /// A NAPT rewrite of one endpoint (address and port), patched with one [`Delta`] into the
        /// IPv4 and UDP checksums, equals etherparse's full recomputation.
        #[test]
        fn napt_rewrite_matches_recomputation(
            src in any::<u32>(), dst in any::<u32>(), sport in any::<u16>(), dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            new_addr in any::<u32>(), new_port in any::<u16>(), outbound in any::<bool>(),
            no_checksum in any::<bool>(),
        ) {
            let (src, dst, new_addr) = (Ipv4Addr::from(src), Ipv4Addr::from(dst), Ipv4Addr::from(new_addr));
            let mut buf = vec![0u8; 28 + payload.len()];
            crate::wire::ipv4::write_header(&mut buf, src, dst, PROTOCOL, 64, (8 + payload.len()) as u16);
            let mut u = UdpPacket::new_unchecked(&mut buf[20..]);
            u.set_src_port(sport);
            u.set_dst_port(dport);
            u.set_len((8 + payload.len()) as u16);
            u.payload_mut().copy_from_slice(&payload);
            u.fill_checksum(src, dst);
            if no_checksum {
                u.set_checksum(0);
            }

            let mut ip = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
            let mut d = Delta::default();
            if outbound {
                d.add_addr(src, new_addr);
                ip.set_src_addr(new_addr);
            } else {
                d.add_addr(dst, new_addr);
                ip.set_dst_addr(new_addr);
            }
            let ip_check = d.apply(ip.checksum());
            ip.set_checksum(ip_check);
            let mut u = UdpPacket::new_checked(ip.payload_mut()).unwrap();
            if outbound {
                d.add16(sport, new_port);
                u.set_src_port(new_port);
            } else {
                d.add16(dport, new_port);
                u.set_dst_port(new_port);
            }
            let udp_check = apply_udp(d, u.checksum());
            u.set_checksum(udp_check);

            let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(ip.verify_checksum());
            if no_checksum {
                prop_assert_eq!(udp_check, 0);
            } else {
                prop_assert_eq!(udp_check, etherparse_checksum(ip.src_addr(), ip.dst_addr(), ip.payload()));
            }
        }
    }
}
