//! The body of the `portmap_request` target: arbitrary datagrams to the PCP and NAT-PMP server
//! (`natgate_core::portmap`) with an engine behind it. It must never panic; every answer must
//! fit a PCP message and start with a version the server speaks; a request from outside the
//! inside networks must get no answer and change nothing.

use natgate_core::portmap::wire::{natpmp, pcp};
use natgate_core::portmap::{Answer, PortMapConfig, PortMapServer};
use natgate_core::{Endpoint, Instant};
use std::net::Ipv4Addr;

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);

/// Runs one input: a sequence of requests, each a length byte and that many bytes. The first
/// byte picks the settings (which protocols, whether THIRD_PARTY is allowed).
pub fn run(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let (mut engine, inside) = crate::port_mapping_engine(first & 8 == 0);
    let settings = PortMapConfig {
        pcp: first & 1 == 0,
        nat_pmp: first & 2 == 0,
        third_party: if first & 4 != 0 {
            vec![inside]
        } else {
            Vec::new()
        },
        min_lifetime: 1,
        requests_per_second: 1000,
        request_burst: 1000,
        ..PortMapConfig::default()
    };
    let mut server = PortMapServer::new(settings, Instant::ZERO);
    let mut out = [0u8; pcp::MAX_MESSAGE];
    let mut now = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (req, next) = tail.split_at(n);
        rest = next;
        now += 1;
        let _ = natpmp::parse(req);
        let _ = pcp::parse(req);
        let at = Instant::from_secs(now);
        let before = engine.explicit_mappings().count();
        let outsider = Endpoint::new(Ipv4Addr::new(192, 0, 2, len), 5351);
        assert_eq!(
            server.handle(at, &mut engine, outsider, req, &mut out),
            if req.len() < 2 {
                Answer::Drop(natgate_core::portmap::PortMapDrop::Truncated)
            } else if req[1] & 0x80 != 0 {
                Answer::Drop(natgate_core::portmap::PortMapDrop::Response)
            } else {
                Answer::Drop(natgate_core::portmap::PortMapDrop::NotServed)
            }
        );
        assert_eq!(engine.explicit_mappings().count(), before);
        let client = Endpoint::new(CLIENT, 5351);
        if let Answer::Reply(n) = server.handle(at, &mut engine, client, req, &mut out) {
            assert!((8..=pcp::MAX_MESSAGE).contains(&n), "answer of {n} bytes");
            assert!(out[0] == natpmp::VERSION || out[0] == pcp::VERSION);
            assert!(out[1] & 0x80 != 0, "an answer is a response");
        }
        engine.handle_timeout(at);
    }
}
