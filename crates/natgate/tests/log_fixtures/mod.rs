//! Fixtures shared by the translation-log tests (syslog, IPFIX).

use natgate_core::{Endpoint, Event, Instant, Protocol};
use std::net::Ipv4Addr;

/// One of each engine event for one subscriber flow, plus a mapping failure, all at 10.5 s.
pub fn events() -> Vec<Event> {
    let i = Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000);
    let x = Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 40000);
    let r = Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 3478);
    let at = Instant::from_millis(10_500);
    let proto = Protocol::Udp;
    vec![
        Event::MappingCreated {
            at,
            proto,
            internal: i,
            external: x,
        },
        Event::SessionCreated {
            at,
            proto,
            internal: i,
            external: x,
            remote: r,
            origin: natgate_core::SessionOrigin::Dynamic,
        },
        Event::SessionDeleted {
            at,
            proto,
            internal: i,
            external: x,
            remote: r,
            origin: natgate_core::SessionOrigin::Dynamic,
            reason: natgate_core::EndReason::Operator,
        },
        Event::MappingDeleted {
            at,
            proto,
            internal: i,
            external: x,
            reason: natgate_core::EndReason::Operator,
        },
        Event::MappingFailed {
            at,
            proto: Protocol::Tcp,
            internal: i,
            remote: r,
            reason: natgate_core::DropReason::MappingFailed,
        },
    ]
}
