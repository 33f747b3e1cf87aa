//! The lab's host identifier: a TCP option (RFC 7974) on the SYNs subscribers send out that
//! carries the subscriber's internal address, so that a server, or a large-scale NAT test tool,
//! can tell apart subscribers who share one external address (RFC 6269 section 5 describes the
//! problem; RFC 6967 the candidate answers). Lab only: it tells every server an address the
//! NAT exists to hide.
//!
//! The option is an experiment's (kind 253, RFC 3692) with the HOST_ID experiment identifier
//! 0x0348 (RFC 6994 shared use), then the IPv4 address: 8 bytes, so the TCP header stays a
//! whole number of 32-bit words and the payload moves by an even amount (its share of the
//! checksum does not change).

use std::net::Ipv4Addr;

use super::packet::{read16, write16};
use crate::wire::checksum;

/// Kind 253: RFC 3692-style experiment 2.
const KIND: u8 = 253;
/// The HOST_ID experiment identifier (RFC 7974, RFC 6994).
const EXID: u16 = 0x0348;
/// The option's length: kind, length, ExID, IPv4 address.
pub(crate) const OPTION_LEN: usize = 8;
/// Most TCP header there can be (data offset 15).
const MAX_TCP_HEADER: usize = 60;

/// The source of `datagram` if it is a TCP SYN (without ACK) a host identifier goes on.
pub(crate) fn syn_source(datagram: &[u8]) -> Option<Ipv4Addr> {
    let ihl = usize::from(*datagram.first()? & 0x0f) * 4;
    let flags = *datagram.get(ihl + 13)?;
    let is_syn = flags & 0x12 == 0x02;
    (datagram.get(9) == Some(&6) && is_syn)
        .then(|| Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]))
}

/// Inserts the host identifier option carrying `host` after the TCP options of the TCP/IPv4
/// datagram `buf[..len]`, moving the payload up, and updates the lengths and both checksums
/// incrementally (RFC 1624). Returns the new length; `None` (nothing changed) when the TCP
/// header has no room for 8 more bytes, `buf` has none after the datagram, or the datagram has
/// DF and would grow past `mtu`.
pub(crate) fn insert(buf: &mut [u8], len: usize, host: Ipv4Addr, mtu: u16) -> Option<usize> {
    let datagram = buf.get(..len)?;
    let ihl = usize::from(*datagram.first()? & 0x0f) * 4;
    let tcp_header = usize::from(*datagram.get(ihl + 12)? >> 4) * 4;
    let at = ihl + tcp_header;
    let new_len = len + OPTION_LEN;
    let df = read16(datagram, 6) & 0x4000 != 0;
    if ihl < 20
        || tcp_header < 20
        || tcp_header + OPTION_LEN > MAX_TCP_HEADER
        || at > len
        || usize::from(read16(datagram, 2)) != len
        || new_len > buf.len()
        || (df && new_len > usize::from(mtu))
    {
        return None;
    }
    let new_total = u16::try_from(new_len).ok()?;
    buf.copy_within(at..len, at + OPTION_LEN);
    let a = host.octets();
    let ex = EXID.to_be_bytes();
    buf[at..at + OPTION_LEN].copy_from_slice(&[
        KIND,
        OPTION_LEN as u8,
        ex[0],
        ex[1],
        a[0],
        a[1],
        a[2],
        a[3],
    ]);

    // IPv4: the total length.
    let old_total = read16(buf, 2);
    write16(buf, 2, new_total);
    write16(
        buf,
        10,
        checksum::update16(read16(buf, 10), old_total, new_total),
    );

    // TCP: the pseudo header's length, the data offset's word, and the option's four words
    // (it starts a 32-bit word of the segment, so they are aligned).
    let tcp = ihl;
    let old_seg = (len - ihl) as u16;
    let old_offset_word = read16(buf, tcp + 12);
    let new_offset_word =
        (old_offset_word & 0x0fff) | (((tcp_header + OPTION_LEN) as u16 / 4) << 12);
    write16(buf, tcp + 12, new_offset_word);
    let mut check = read16(buf, tcp + 16);
    check = checksum::update16(check, old_seg, old_seg + OPTION_LEN as u16);
    check = checksum::update16(check, old_offset_word, new_offset_word);
    for w in 0..OPTION_LEN / 2 {
        check = checksum::update16(check, 0, read16(buf, at + 2 * w));
    }
    write16(buf, tcp + 16, check);
    Some(new_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::TcpPacket;
    use proptest::prelude::*;

    const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const SRV: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    /// A translated SYN (source the external address) with an MSS option and `payload` bytes.
    fn syn(payload: &[u8], df: bool) -> Vec<u8> {
        let mut v = Vec::new();
        etherparse::PacketBuilder::ipv4(EXT.octets(), SRV.octets(), 63)
            .tcp(40000, 80, 7, 1000)
            .syn()
            .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
            .unwrap()
            .write(&mut v, payload)
            .unwrap();
        if !df {
            v[6] &= !0x40;
            let c = read16(&v, 10);
            write16(&mut v, 10, checksum::update16(c, 0x4000, 0));
        }
        v
    }

    fn header_ok(d: &[u8]) -> bool {
        checksum::fold(checksum::sum(&d[..20])) == 0xffff
    }

    #[test]
    fn the_option_goes_after_the_others_with_valid_checksums() {
        let base = syn(b"hello", true);
        let mut buf = base.clone();
        buf.resize(2048, 0);
        let len = insert(&mut buf, base.len(), SUB, 1500).expect("room");
        assert_eq!(len, base.len() + 8);
        let d = &buf[..len];
        assert!(header_ok(d));
        assert_eq!(usize::from(read16(d, 2)), len);
        let tcp = TcpPacket::new_checked(&d[20..]).unwrap();
        assert!(tcp.verify_checksum(EXT, SRV));
        assert_eq!(tcp.mss_option(), Some(1460), "the options before it kept");
        let opts = &d[20 + 20..20 + 32];
        assert_eq!(&opts[4..], &[253, 8, 0x03, 0x48, 100, 64, 0, 10]);
        assert_eq!(&d[len - 5..], b"hello", "the payload moved, unchanged");
    }

    #[test]
    fn no_room_no_change() {
        let base = syn(b"", true);
        // DF and over the MTU.
        let mut buf = base.clone();
        buf.resize(2048, 0);
        assert_eq!(insert(&mut buf, base.len(), SUB, base.len() as u16), None);
        assert_eq!(&buf[..base.len()], &base[..]);
        // No room after the datagram.
        let mut exact = base.clone();
        assert_eq!(insert(&mut exact, base.len(), SUB, 1500), None);
        assert_eq!(exact, base);
        // Without DF the size is the next hop's to fragment.
        let no_df = syn(b"", false);
        let mut buf = no_df.clone();
        buf.resize(2048, 0);
        assert!(insert(&mut buf, no_df.len(), SUB, no_df.len() as u16).is_some());
    }

    #[test]
    fn only_syns_without_ack_carry_one() {
        let s = syn(b"", true);
        assert_eq!(syn_source(&s), Some(EXT));
        let mut synack = s.clone();
        synack[20 + 13] |= 0x10;
        assert_eq!(syn_source(&synack), None);
        assert_eq!(syn_source(&s[..30]), None, "truncated");
    }

    proptest! {
        /// Whatever the options already there and the payload, an inserted option leaves both
        /// checksums valid, or nothing changes.
        #[test]
        fn checksums_stay_valid(nops in 0usize..=10, payload in prop::collection::vec(any::<u8>(), 0..64), host in any::<u32>()) {
            let mut v = Vec::new();
            let opts = vec![etherparse::TcpOptionElement::Noop; nops * 4];
            etherparse::PacketBuilder::ipv4(EXT.octets(), SRV.octets(), 63)
                .tcp(40000, 80, 7, 1000)
                .syn()
                .options(&opts)
                .unwrap()
                .write(&mut v, &payload)
                .unwrap();
            let mut buf = v.clone();
            buf.resize(2048, 0);
            match insert(&mut buf, v.len(), Ipv4Addr::from(host), 1500) {
                Some(len) => {
                    let d = &buf[..len];
                    prop_assert!(header_ok(d));
                    prop_assert!(TcpPacket::new_checked(&d[20..]).unwrap().verify_checksum(EXT, SRV));
                    prop_assert_eq!(&d[len - payload.len()..], &payload[..]);
                }
                None => {
                    prop_assert!(nops * 4 + 8 > 40, "refused with room: {} option bytes", nops * 4);
                    prop_assert_eq!(&buf[..v.len()], &v[..]);
                }
            }
        }
    }
}
