//! ICMPv6 (RFC 4443), as far as an AFTR reads it: the checksum over the IPv6 pseudo header,
//! and Packet Too Big, which tells the AFTR the path MTU to a B4 (RFC 6333 section 5.3).

use std::net::Ipv6Addr;

use super::ipv6::{Ipv6Packet, next_header};
use super::{WireError, checksum, get_u32};

/// The Packet Too Big type (RFC 4443 section 3.2).
pub const PACKET_TOO_BIG: u8 = 2;

/// The fixed part of an ICMPv6 message: type, code, checksum and four bytes.
pub const HEADER_LEN: usize = 8;

/// Whether `msg`, an ICMPv6 message from `src` to `dst`, has a valid checksum (RFC 4443
/// section 2.3: over the IPv6 pseudo header of RFC 8200 section 8.1 and the message).
pub fn checksum_ok(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> bool {
    let Ok(len) = u32::try_from(msg.len()) else {
        return false;
    };
    let pseudo = checksum::sum(&src.octets())
        + checksum::sum(&dst.octets())
        + (len >> 16)
        + (len & 0xffff)
        + u32::from(next_header::ICMPV6);
    checksum::fold(pseudo + checksum::sum(msg)) == 0xffff
}

/// What a Packet Too Big says: the MTU of the next link, and the packet that did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketTooBig {
    /// The next-hop MTU.
    pub mtu: u32,
    /// Source of the packet that did not fit.
    pub quoted_src: Ipv6Addr,
    /// Its destination.
    pub quoted_dst: Ipv6Addr,
}

/// Reads a Packet Too Big from ICMPv6 message `msg`; `None` for any other message, or one too
/// short to quote an IPv6 header.
pub fn packet_too_big(msg: &[u8]) -> Result<Option<PacketTooBig>, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    if msg[0] != PACKET_TOO_BIG {
        return Ok(None);
    }
    let quoted = Ipv6Packet::new_checked_quoted(&msg[HEADER_LEN..])?;
    Ok(Some(PacketTooBig {
        mtu: get_u32(msg, 4),
        quoted_src: quoted.src_addr(),
        quoted_dst: quoted.dst_addr(),
    }))
}

/// Writes a Packet Too Big into `buf`, quoting `quoted` (cut to fit the 1280-byte minimum MTU,
/// RFC 4443 section 2.4(c)), with its checksum for `src` to `dst`; returns its length, or 0
/// when `buf` is too short. For tests and for a B4 that answers for its softwire.
pub fn write_packet_too_big(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mtu: u32,
    quoted: &[u8],
) -> usize {
    let take = quoted.len().min(1280 - 40 - HEADER_LEN);
    let len = HEADER_LEN + take;
    let Some(out) = buf.get_mut(..len) else {
        return 0;
    };
    out[0] = PACKET_TOO_BIG;
    out[1] = 0;
    out[2..4].copy_from_slice(&[0, 0]);
    out[4..8].copy_from_slice(&mtu.to_be_bytes());
    out[HEADER_LEN..].copy_from_slice(&quoted[..take]);
    // Fits: at most 1232 bytes.
    let l = len as u32;
    let pseudo = checksum::sum(&src.octets())
        + checksum::sum(&dst.octets())
        + l
        + u32::from(next_header::ICMPV6);
    let c = !checksum::fold(pseudo + checksum::sum(out));
    out[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);
    const AFTR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const B4: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);

    /// A Packet Too Big from 2001:db8:ff::1 to 2001:db8::1, MTU 1400, quoting the first 48
    /// bytes of a tunnel packet from 2001:db8::1 to 2001:db8:1::2. Checksum computed apart.
    static PTB_BYTES: [u8; 56] = [
        0x02, 0x00, 0x4b, 0xab, 0x00, 0x00, 0x05, 0x78, 0x60, 0x00, 0x00, 0x00, 0x05, 0xa0, 0x04,
        0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0x45, 0x00, 0x05, 0xa0, 0x00, 0x00, 0x40, 0x00,
    ];

    #[test]
    fn reads_and_checks_the_fixture() {
        assert!(checksum_ok(ROUTER, AFTR, &PTB_BYTES));
        assert!(!checksum_ok(ROUTER, B4, &PTB_BYTES));
        assert_eq!(
            packet_too_big(&PTB_BYTES),
            Ok(Some(PacketTooBig {
                mtu: 1400,
                quoted_src: AFTR,
                quoted_dst: B4
            }))
        );
        let mut echo = PTB_BYTES;
        echo[0] = 128;
        assert_eq!(packet_too_big(&echo), Ok(None));
        assert_eq!(packet_too_big(&PTB_BYTES[..20]), Err(WireError::Truncated));
    }

    #[test]
    fn writes_the_fixture() {
        let mut buf = [0u8; 100];
        let n = write_packet_too_big(&mut buf, ROUTER, AFTR, 1400, &PTB_BYTES[8..]);
        assert_eq!(&buf[..n], &PTB_BYTES[..]);
        assert_eq!(
            write_packet_too_big(&mut buf[..10], ROUTER, AFTR, 1400, &PTB_BYTES[8..]),
            0
        );
    }

    #[test]
    fn agrees_with_etherparse() {
        let (h, _) = etherparse::Icmpv6Header::from_slice(&PTB_BYTES).unwrap();
        assert_eq!(
            h.icmp_type,
            etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 }
        );
        let want = h
            .icmp_type
            .calc_checksum(ROUTER.octets(), AFTR.octets(), &PTB_BYTES[8..])
            .unwrap();
        assert_eq!(want, 0x4bab);
    }
}
