//! Every wire view over arbitrary bytes: `new_checked` must either refuse the input or yield a
//! view whose every accessor, setter and checksum routine runs without panicking.
//!
//! Run with `cargo fuzz run wire_parse` from the repository root; seeds are in
//! `fuzz/corpus/wire_parse/`.

#![no_main]

use std::hint::black_box;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use natgate_core::wire::icmp::{self, IcmpKind, IcmpPacket};
use natgate_core::wire::ipv4::Ipv4Packet;
use natgate_core::wire::tcp::{TcpPacket, TcpPrefix};
use natgate_core::wire::udp::UdpPacket;

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fuzz_target!(|data: &[u8]| {
    // The input as an IPv4 packet, as the quote of an ICMP error, and as each bare transport.
    if let Ok(ip) = Ipv4Packet::new_checked(data) {
        ipv4(&ip);
        transport(ip.protocol(), ip.payload(), true);
    }
    if let Ok(ip) = Ipv4Packet::new_checked_quoted(data) {
        ipv4(&ip);
    }
    for proto in [1, 6, 17] {
        transport(proto, data, true);
    }

    // The mutating paths, on a copy.
    let mut buf = data.to_vec();
    if let Ok(mut ip) = Ipv4Packet::new_checked(&mut buf[..]) {
        ip.set_src_addr(A);
        ip.set_ttl(ip.ttl().wrapping_sub(1));
        ip.fill_checksum();
        assert!(ip.verify_checksum());
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
            black_box(tcp.set_mss_option(1400));
            tcp.fill_checksum(src, dst);
            assert!(tcp.verify_checksum(src, dst));
        }
    }
    let mut buf = data.to_vec();
    buf.resize(data.len().max(600), 0);
    let n = icmp::write_error_in_place(&mut buf, data.len(), A, B, 3, 3, 0);
    if n > 0 {
        let ip = Ipv4Packet::new_checked(&buf[..n]).expect("error is a valid IPv4 packet");
        assert!(ip.verify_checksum());
        let msg = IcmpPacket::new_checked(ip.payload()).expect("error has an ICMP header");
        assert!(msg.verify_checksum());
    }
});

fn ipv4<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) {
    black_box((
        p.version(),
        p.header_len(),
        p.dscp_ecn(),
        p.total_len(),
        p.ident(),
    ));
    black_box((
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
    ));
    black_box((p.is_first_fragment(), p.ttl(), p.protocol(), p.checksum()));
    black_box((
        p.src_addr(),
        p.dst_addr(),
        p.header(),
        p.options(),
        p.payload(),
    ));
    black_box(p.verify_checksum());
}

/// Parses `payload` as protocol `proto`; for an ICMP error (when `nested`), also the quoted
/// datagram and its transport prefix, as the engine does.
fn transport(proto: u8, payload: &[u8], nested: bool) {
    match proto {
        1 => {
            let Ok(p) = IcmpPacket::new_checked(payload) else {
                return;
            };
            black_box((p.msg_type(), p.code(), p.checksum(), p.rest_of_header()));
            black_box((p.echo_ident(), p.echo_seq(), p.next_hop_mtu(), p.data()));
            black_box(p.verify_checksum());
            if nested
                && icmp::classify(p.msg_type()) == IcmpKind::Error
                && let Ok(inner) = Ipv4Packet::new_checked_quoted(p.data())
            {
                ipv4(&inner);
                transport(inner.protocol(), inner.payload(), false);
                if let Ok(t) = TcpPrefix::new_checked(inner.payload()) {
                    black_box((t.src_port(), t.dst_port(), t.seq()));
                }
            }
        }
        6 => {
            let Ok(p) = TcpPacket::new_checked(payload) else {
                return;
            };
            black_box((p.src_port(), p.dst_port(), p.seq(), p.ack(), p.header_len()));
            let f = p.flags();
            black_box((
                f.is_syn_only(),
                f.contains(natgate_core::wire::tcp::TcpFlags::ACK),
            ));
            black_box((
                p.window(),
                p.checksum(),
                p.options(),
                p.payload(),
                p.mss_option(),
            ));
            black_box(p.verify_checksum(A, B));
        }
        17 => {
            let Ok(p) = UdpPacket::new_checked(payload) else {
                return;
            };
            black_box((
                p.src_port(),
                p.dst_port(),
                p.len(),
                p.checksum(),
                p.payload(),
            ));
            black_box(p.verify_checksum(A, B));
        }
        _ => {}
    }
}
