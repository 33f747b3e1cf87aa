//! The body of the `upnp_request` target: arbitrary SSDP datagrams and HTTP requests to the
//! UPnP IGD server (`natgate_core::portmap::upnp`, `PortMapServer::handle_ssdp` and
//! `handle_http`) with an engine behind it. It must never panic; every answer must be HTTP;
//! a request from outside the inside networks must get none and change nothing; every
//! mapping made must be the requester's own.

use natgate_core::portmap::upnp::{Device, http, soap, ssdp};
use natgate_core::portmap::{PortMapConfig, PortMapDrop, PortMapServer};
use natgate_core::{Endpoint, Instant};
use std::net::Ipv4Addr;

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const DEVICE: Device = Device {
    address: Ipv4Addr::new(100, 64, 0, 1),
    http_port: 5000,
};

/// Runs one input: a sequence of messages, each a kind byte (even: an SSDP datagram, odd: an
/// HTTP request), a two-byte length and that many bytes. The first byte picks the settings.
pub fn run(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let (mut engine, _) = crate::port_mapping_engine(first & 2 == 0);
    let settings = PortMapConfig {
        upnp: first & 1 == 0,
        min_lifetime: 1,
        max_mappings_per_subscriber: 8,
        requests_per_second: 1000,
        request_burst: 1000,
        ..PortMapConfig::default()
    };
    let mut server = PortMapServer::new(settings, Instant::ZERO);
    let mut now = 0u64;
    while let [kind, hi, lo, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (req, next) = tail.split_at(n);
        rest = next;
        now += 1;
        let at = Instant::from_secs(now);
        // The parsers on their own.
        if let Ok(st) = ssdp::parse_search(req) {
            let _ = ssdp::matches(st, &DEVICE);
        }
        let _ = http::parse(req);
        let split = req.iter().position(|b| *b == b'\n').unwrap_or(req.len());
        let header = String::from_utf8_lossy(&req[..split]);
        let _ = soap::parse(&header, &req[split..]);

        let before = engine.explicit_mappings().count();
        let outsider = Ipv4Addr::new(192, 0, 2, *kind);
        let stranger = if kind % 2 == 0 {
            server
                .handle_ssdp(at, &engine, Endpoint::new(outsider, 1900), req, &DEVICE)
                .map(|_| ())
        } else {
            server
                .handle_http(at, &mut engine, outsider, req, &DEVICE)
                .map(|_| ())
        };
        assert!(
            matches!(
                stranger,
                Err(PortMapDrop::NotServed
                    | PortMapDrop::UpnpOff
                    | PortMapDrop::SsdpMalformed
                    | PortMapDrop::SsdpNotSearch
                    | PortMapDrop::SsdpOtherTarget)
            ),
            "{stranger:?}"
        );
        assert_eq!(engine.explicit_mappings().count(), before);
        if kind % 2 == 0 {
            let client = Endpoint::new(CLIENT, 1900);
            if let Ok(answers) = server.handle_ssdp(at, &engine, client, req, &DEVICE) {
                assert!(!answers.is_empty());
                assert!(
                    answers
                        .iter()
                        .all(|a| a.starts_with(b"HTTP/1.1 200 OK\r\n"))
                );
            }
        } else if let Ok(answer) = server.handle_http(at, &mut engine, CLIENT, req, &DEVICE) {
            assert!(answer.starts_with(b"HTTP/1.1 "));
        }
        assert!(
            engine
                .explicit_mappings()
                .all(|m| m.internal.addr == CLIENT),
            "a mapping for another host"
        );
        engine.handle_timeout(at);
    }
}
