//! Knobs for testing applications against NATs that behave unlike the RFC defaults: those that
//! break a requirement are refused without `lab = true`, and each does what it says.

use super::tests::{config, endpoints, ep, icmp_error, inb, out, run, t, udp};
use super::*;
use crate::config::ConfigError;
use std::net::Ipv4Addr;

const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const WAN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

#[test]
fn rfc4787_req12_icmp_errors_not_forwarded_in_the_lab() {
    let refused = config(|c| c.behavior.forward_icmp_errors = false).validate();
    assert!(matches!(
        refused,
        Err(ConfigError::ForbiddenWithoutLab {
            setting: "forward-icmp-errors",
            ..
        })
    ));
    let c = config(|c| {
        c.behavior.forward_icmp_errors = false;
        c.lab = true;
    });
    let mut e = Engine::new(c.validate().expect("valid in the lab"), 7);
    let mut sent = udp(ep(SUB1, 5000), ep(WAN1, 9), b"hello");
    run(&mut e, t(0), Side::Inside, &mut sent);
    let x = endpoints(sent.bytes()).0;
    // Port unreachable from the remote, about what the NAT sent: dropped, counted.
    let (v, _) = inb(&mut e, t(1), icmp_error(WAN1, x.addr, 3, 3, sent.bytes()));
    assert_eq!(v, Verdict::Drop(DropReason::IcmpErrorsOff));
    // From the subscriber, about what it received: dropped too.
    let (_, delivered) = inb(&mut e, t(1), udp(ep(WAN1, 9), x, b"data"));
    let mut err = icmp_error(SUB1, WAN1, 3, 3, delivered.bytes());
    assert_eq!(
        run(&mut e, t(2), Side::Inside, &mut err),
        Verdict::Drop(DropReason::IcmpErrorsOff)
    );
    assert_eq!(e.counters().drops(DropReason::IcmpErrorsOff), 2);
    // Flows themselves pass as before, and the session is untouched (REQ-12's first part).
    assert_eq!(out(&mut e, t(3), udp(ep(SUB1, 5000), ep(WAN1, 9), b"x")), x);
    assert_eq!(e.session_count(), 1);
}

#[test]
fn rfc4787_req5a_udp_port_timers() {
    use crate::config::PortTimers;
    let timers = PortTimers::new(&[(53, 30), (5000, 30)]).expect("two ports");
    let refused = config(|c| c.behavior.timers.udp_ports = timers).validate();
    assert!(
        matches!(
            refused,
            Err(ConfigError::ForbiddenWithoutLab {
                setting: "timers.udp-ports",
                ..
            })
        ),
        "5000 is not well-known: {refused:?}"
    );
    let dns_only = PortTimers::new(&[(53, 30)]).expect("one port");
    assert!(
        config(|c| c.behavior.timers.udp_ports = dns_only)
            .validate()
            .is_ok()
    );
    let c = config(|c| {
        c.behavior.timers.udp_ports = timers;
        c.lab = true;
    });
    let mut e = Engine::new(c.validate().expect("valid in the lab"), 7);
    let dns = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 53), b"q"));
    out(&mut e, t(0), udp(ep(SUB1, 5001), ep(WAN1, 5000), b"x"));
    out(&mut e, t(0), udp(ep(SUB1, 5002), ep(WAN1, 54), b"x"));
    e.handle_timeout(t(29));
    assert_eq!(e.session_count(), 3);
    e.handle_timeout(t(32));
    assert_eq!(
        e.session_count(),
        1,
        "the two 30 s ports went, port 54 keeps 300 s"
    );
    let (v, _) = inb(&mut e, t(32), udp(ep(WAN1, 53), dns, b"late answer"));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    e.handle_timeout(t(302));
    assert_eq!(e.session_count(), 0);
}
