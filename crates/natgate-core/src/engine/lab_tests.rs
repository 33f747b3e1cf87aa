//! Lab-only behaviours that break a requirement on purpose, so that applications can be tested
//! against NATs that do: each is refused without `lab = true`, and does what it says with it.

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
