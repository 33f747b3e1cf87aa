//! A NAT that shares its external address with a host (a home gateway on its outside
//! interface's own address): which packets are the host's rather than the NAT's.
//!
//! The host keeps the ports outside the NAT's range (`Config::host_ports`): TCP and UDP to those
//! go to it before the NAT makes any state for them (a held SYN must not swallow a connection to
//! the host's ssh), unless a static rule or virtual server claims them (a port forward of 80 on
//! the address). Packets the NAT finds no use for are the host's too: a ping to the address, a
//! protocol the NAT does not translate, an ICMP error about the host's own packet, a TCP or UDP
//! packet from outside for a NAT port with no mapping. From the inside, a TCP or UDP packet to a
//! NAT port stays the NAT's even then: a hairpin that found no mapping was already given its
//! sender's mapping, and is the NAT's to drop.

use super::Engine;
use super::packet::{Fragment, Kind, Parsed};
use crate::alloc::PortAllocator;
use crate::counters::DropReason;
use crate::endpoint::{Protocol, Side};
use std::net::Ipv4Addr;

/// Drops that, for the host's address, mean "not the NAT's".
fn not_the_nats(reason: DropReason) -> bool {
    matches!(
        reason,
        DropReason::NoMapping
            | DropReason::NotPoolAddress
            | DropReason::UnsupportedProtocol
            | DropReason::UnsupportedIcmp
            | DropReason::IcmpErrorNoSession
            | DropReason::TcpNoSession
    )
}

impl<A: PortAllocator> Engine<A> {
    /// Whether `addr` is the host's: one of its addresses (the pool) or a broadcast.
    fn is_host_address(&self, addr: Ipv4Addr) -> bool {
        self.host_ports.is_some() && (addr.is_broadcast() || self.alloc.owns(addr))
    }

    /// TCP or UDP (a whole datagram or its first fragment) to one of the host's addresses on a
    /// port outside the NAT's range that no static rule or virtual server claims.
    pub(super) fn for_host_port(&self, p: &Parsed) -> bool {
        let Some((first, last)) = self.host_ports else {
            return false;
        };
        p.kind == Kind::Flow
            && matches!(p.proto, Protocol::Tcp | Protocol::Udp)
            && p.frag != Fragment::Later
            && self.is_host_address(p.dst.addr)
            && !(first..=last).contains(&p.dst.port)
            && !self.statics.claims_inbound(p)
    }

    /// Whether a packet the NAT refused for `reason` is the host's.
    pub(super) fn host_takes(&self, side: Side, reason: DropReason, p: &Parsed) -> bool {
        let flow = matches!(p.proto, Protocol::Tcp | Protocol::Udp);
        (side == Side::Outside || !flow) && not_the_nats(reason) && self.is_host_address(p.dst.addr)
    }

    /// [`Self::host_takes`] for a packet the engine could not read as one it translates (a
    /// protocol or an ICMP type it does not handle): the host's when addressed to it.
    pub(super) fn host_takes_unparsed(&self, datagram: &[u8], reason: DropReason) -> bool {
        let Some(h) = datagram.first_chunk::<20>() else {
            return false;
        };
        matches!(
            reason,
            DropReason::UnsupportedProtocol | DropReason::UnsupportedIcmp
        ) && self.is_host_address(Ipv4Addr::new(h[16], h[17], h[18], h[19]))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Pkt, echo, ep, tcp, udp};
    use crate::Instant;
    use crate::config::Config;
    use crate::endpoint::Side;
    use crate::engine::Engine;
    use crate::verdict::Verdict;
    use std::net::Ipv4Addr;

    const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    fn home(f: impl FnOnce(&mut Config)) -> Engine {
        let mut c = Config::new(vec![HOST], Ipv4Addr::new(100, 64, 0, 1));
        c.limits.max_sessions = 64;
        c.limits.max_mappings = 64;
        c.host_ports = Some((20_000, 65_535));
        f(&mut c);
        Engine::new(c.validate().expect("valid"), 3)
    }

    fn run(e: &mut Engine, side: Side, mut p: Pkt) -> Verdict {
        e.process(Instant::from_secs(1), side, &mut p.buf, p.len)
    }

    #[test]
    fn the_hosts_ports_go_to_the_host_from_either_side() {
        let mut e = home(|_| {});
        assert_eq!(
            run(&mut e, Side::Outside, tcp(ep(WAN, 5000), ep(HOST, 22), "S")),
            Verdict::ToHost
        );
        assert_eq!(
            run(&mut e, Side::Inside, tcp(ep(SUB, 5000), ep(HOST, 22), "S")),
            Verdict::ToHost
        );
        assert_eq!(
            run(
                &mut e,
                Side::Outside,
                udp(ep(WAN, 67), ep(Ipv4Addr::BROADCAST, 68), b"d")
            ),
            Verdict::ToHost
        );
        // A NAT port with no mapping from outside: the host's (it answers with a reset or a
        // port unreachable); a later fragment has no port and stays the NAT's.
        assert_eq!(
            run(
                &mut e,
                Side::Outside,
                udp(ep(WAN, 5000), ep(HOST, 20_000), b"x")
            ),
            Verdict::ToHost
        );
        let mut frag = udp(ep(WAN, 5000), ep(HOST, 22), b"12345678");
        frag.buf[6] = 0x00;
        frag.buf[7] = 0x01;
        frag.buf[10] = 0;
        frag.buf[11] = 0;
        let sum = crate::wire::checksum::checksum(&frag.buf[..20]);
        frag.buf[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_ne!(run(&mut e, Side::Outside, frag), Verdict::ToHost);
        assert_eq!(e.counters().to_host_packets, 4);
        assert_eq!(e.session_count(), 0, "the host's packets make no NAT state");
    }

    #[test]
    fn what_the_nat_has_no_use_for_is_the_hosts() {
        let mut e = home(|_| {});
        // A ping to the address, from either side.
        assert_eq!(
            run(&mut e, Side::Outside, echo(WAN, HOST, 7, true)),
            Verdict::ToHost
        );
        assert_eq!(
            run(&mut e, Side::Inside, echo(SUB, HOST, 7, true)),
            Verdict::ToHost
        );
        // A protocol the NAT does not translate (GRE).
        let mut gre = udp(ep(WAN, 5000), ep(HOST, 22), b"x");
        gre.buf[9] = 47;
        gre.buf[10] = 0;
        gre.buf[11] = 0;
        let sum = crate::wire::checksum::checksum(&gre.buf[..20]);
        gre.buf[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(run(&mut e, Side::Outside, gre), Verdict::ToHost);
        // From the inside, TCP or UDP to a NAT port with no mapping stays the NAT's.
        assert!(matches!(
            run(
                &mut e,
                Side::Inside,
                udp(ep(SUB, 5000), ep(HOST, 20_000), b"x")
            ),
            Verdict::Drop(_) | Verdict::Reply { .. }
        ));
    }

    #[test]
    fn a_claimed_host_port_is_the_nats_and_a_pool_of_its_own_gives_nothing_away() {
        let mut e = home(|c| {
            let f: crate::rules::RuleChain = toml::from_str::<toml::Table>(
                "[[rule]]\nid = 1\ndirection = \"inbound\"\nproto = \"tcp\"\n\
                 dst = \"192.0.2.1/32\"\ndst-ports = 80\n\
                 action.translate.dst = { addr = \"100.64.0.5/32\", port = 8080 }\n",
            )
            .expect("toml")["rule"]
                .clone()
                .try_into()
                .expect("rules");
            c.rules = f;
        });
        let v = run(&mut e, Side::Outside, tcp(ep(WAN, 5000), ep(HOST, 80), "S"));
        assert_eq!(v, Verdict::Forward(Side::Inside), "the port forward's");
        assert_eq!(
            run(&mut e, Side::Outside, tcp(ep(WAN, 5000), ep(HOST, 81), "S")),
            Verdict::ToHost
        );
        // Without host ports nothing is the host's.
        let mut nat = home(|c| c.host_ports = None);
        assert_ne!(
            run(
                &mut nat,
                Side::Outside,
                tcp(ep(WAN, 5000), ep(HOST, 22), "S")
            ),
            Verdict::ToHost
        );
        assert_eq!(nat.counters().to_host_packets, 0);
    }
}
