//! The UPnP Internet Gateway Device's policy: which searches are answered, and what each
//! WANIPConnection action does to the engine's explicit mappings.
//!
//! The rules are PCP's: only clients the NAT serves, each asking for its own address only
//! (NewInternalClient must be the requester, else 606), within the per-subscriber mapping
//! cap and the request rate of the shared limiter. A client sees and changes only its own
//! mappings: on a shared NAT another subscriber's mappings are none of its business, so
//! they answer as absent (714). A mapping made by PCP or NAT-PMP is listed but not changed
//! by UPnP, whose requests cannot prove to be its owner.

use super::upnp::description::{
    self, CIF_CONTROL_PATH, CIF_SCPD_PATH, IP_CONTROL_PATH, IP_SCPD_PATH, ROOT_PATH, XML,
};
use super::upnp::http::{self, Status};
use super::upnp::soap::{self, Action, Call, MappingKey, NewMapping, Service, UpnpError};
use super::upnp::ssdp::{self, SsdpError};
use super::upnp::{Device, Outcome};
use super::{PortMapDrop, PortMapServer};
use crate::alloc::PortAllocator;
use crate::endpoint::{Endpoint, Ipv4Prefix, Protocol};
use crate::engine::{Engine, MapError, MapRequest, Suggestion};
use crate::table::{Description, ExplicitMapping, MappingOrigin, RemotePeer};
use crate::time::Instant;
use core::time::Duration;
use std::net::Ipv4Addr;

/// Output arguments of an action, in order.
type Out = Vec<(&'static str, String)>;

impl PortMapServer {
    /// Answers the SSDP datagram `datagram` that `from` sent at `now`: the unicast answers
    /// to send back to `from`, one datagram each, or why there are none.
    pub fn handle_ssdp<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &Engine<A>,
        from: Endpoint,
        datagram: &[u8],
        device: &Device,
    ) -> Result<Vec<Vec<u8>>, PortMapDrop> {
        let answer = self.ssdp(now, engine, from.addr, datagram, device);
        match &answer {
            Ok(_) => self.count_upnp(Outcome::SearchAnswered),
            Err(why) => self.count_drop(*why),
        }
        answer
    }

    fn ssdp<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &Engine<A>,
        from: Ipv4Addr,
        datagram: &[u8],
        device: &Device,
    ) -> Result<Vec<Vec<u8>>, PortMapDrop> {
        if !self.cfg.upnp {
            return Err(PortMapDrop::UpnpOff);
        }
        if !engine.serves(from) {
            return Err(PortMapDrop::NotServed);
        }
        let ssdp_drop = |e| match e {
            SsdpError::Malformed => PortMapDrop::SsdpMalformed,
            SsdpError::NotSearch => PortMapDrop::SsdpNotSearch,
            SsdpError::OtherTarget => PortMapDrop::SsdpOtherTarget,
        };
        // Read before the rate limiter: other devices' advertisements on the group are not
        // this client's requests and must not use up its rate.
        let st = ssdp::parse_search(datagram).map_err(ssdp_drop)?;
        let found = ssdp::matches(st, device).map_err(ssdp_drop)?;
        self.admit(now, from)?;
        Ok(found
            .iter()
            .map(|m| ssdp::write_answer(m, device))
            .collect())
    }

    /// Answers the HTTP request `request` (whole, or refused by [`http::parse`]) that
    /// `client` sent to the description and control URLs at `now`: the bytes of the answer,
    /// after which the connection closes, or why there is none (then the connection closes
    /// without one).
    pub fn handle_http<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Ipv4Addr,
        request: &[u8],
        device: &Device,
    ) -> Result<Vec<u8>, PortMapDrop> {
        let refused = if !self.cfg.upnp {
            Err(PortMapDrop::UpnpOff)
        } else if !engine.serves(client) {
            Err(PortMapDrop::NotServed)
        } else {
            self.admit(now, client)
        };
        if let Err(why) = refused {
            self.count_drop(why);
            return Err(why);
        }
        let (outcome, status, body) = self.http(now, engine, client, request, device);
        self.count_upnp(outcome);
        // Descriptions, answers and faults are XML; only the HTTP errors are text.
        let content_type = match outcome {
            Outcome::BadRequest | Outcome::NotFound | Outcome::MethodNotAllowed => "text/plain",
            _ => XML,
        };
        Ok(http::write_response(status, content_type, body.as_bytes()))
    }

    fn count_upnp(&mut self, outcome: Outcome) {
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.counters.upnp_results[i] += 1;
        }
    }

    fn http<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Ipv4Addr,
        request: &[u8],
        device: &Device,
    ) -> (Outcome, Status, String) {
        let Ok(Some(req)) = http::parse(request) else {
            return (
                Outcome::BadRequest,
                Status::BadRequest,
                "bad request\n".into(),
            );
        };
        let path = req.path.split('?').next().unwrap_or(req.path);
        let ok = |body| (Outcome::Description, Status::Ok, body);
        match (req.method, path) {
            ("GET", ROOT_PATH) => ok(description::device_xml(device)),
            ("GET", IP_SCPD_PATH) => ok(description::ip_scpd()),
            ("GET", CIF_SCPD_PATH) => ok(description::cif_scpd()),
            ("POST", IP_CONTROL_PATH | CIF_CONTROL_PATH) => {
                let result =
                    soap::parse(req.soap_action.unwrap_or_default(), req.body).and_then(|call| {
                        let here = match call.service {
                            Service::WanIpConnection(_) => IP_CONTROL_PATH,
                            Service::WanCommonInterfaceConfig => CIF_CONTROL_PATH,
                        };
                        if here != path {
                            return Err(UpnpError::InvalidAction);
                        }
                        let out = self.action(now, engine, client, &call)?;
                        let out: Vec<(&str, &str)> =
                            out.iter().map(|(n, v)| (*n, v.as_str())).collect();
                        Ok(soap::write_reply(&call, &out))
                    });
                match result {
                    Ok(body) => (Outcome::Success, Status::Ok, body),
                    Err(e) => (
                        e.outcome(),
                        Status::InternalServerError,
                        soap::write_fault(e),
                    ),
                }
            }
            (_, ROOT_PATH | IP_SCPD_PATH | CIF_SCPD_PATH | IP_CONTROL_PATH | CIF_CONTROL_PATH) => (
                Outcome::MethodNotAllowed,
                Status::MethodNotAllowed,
                "method not allowed\n".into(),
            ),
            _ => (Outcome::NotFound, Status::NotFound, "not found\n".into()),
        }
    }

    /// Does `call` for `client`: its output arguments, or the UPnP error to answer.
    fn action<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Ipv4Addr,
        call: &Call,
    ) -> Result<Out, UpnpError> {
        match &call.action {
            Action::GetExternalIpAddress => {
                let addr = engine
                    .external_address_for(client)
                    .ok_or(UpnpError::ActionFailed)?;
                Ok(vec![("NewExternalIPAddress", addr.to_string())])
            }
            Action::GetStatusInfo => Ok(vec![
                ("NewConnectionStatus", "Connected".into()),
                ("NewLastConnectionError", "ERROR_NONE".into()),
                ("NewUptime", self.epoch(now).to_string()),
            ]),
            Action::GetConnectionTypeInfo => Ok(vec![
                ("NewConnectionType", "IP_Routed".into()),
                ("NewPossibleConnectionTypes", "IP_Routed".into()),
            ]),
            // The link's rates are not known to the NAT; 0 is the schema's "unknown".
            Action::GetCommonLinkProperties => Ok(vec![
                ("NewWANAccessType", "Ethernet".into()),
                ("NewLayer1UpstreamMaxBitRate", "0".into()),
                ("NewLayer1DownstreamMaxBitRate", "0".into()),
                ("NewPhysicalLinkStatus", "Up".into()),
            ]),
            Action::AddPortMapping(m) => self.add(now, engine, client, m, true).map(|_| vec![]),
            Action::AddAnyPortMapping(m) => {
                let port = self.add(now, engine, client, m, false)?;
                Ok(vec![("NewReservedPort", port.to_string())])
            }
            Action::DeletePortMapping(key) => {
                let m = own(engine, client, key.proto)
                    .find(|m| m.external.port == key.external_port)
                    .ok_or(UpnpError::NoSuchEntry)?;
                if !is_upnp(m) {
                    return Err(UpnpError::NotAuthorized);
                }
                let internal = m.internal;
                engine.unmap_explicit(now, key.proto, internal);
                Ok(vec![])
            }
            Action::DeletePortMappingRange(r) => {
                if r.start > r.end {
                    return Err(UpnpError::InconsistentParameters);
                }
                let gone: Vec<Endpoint> = own(engine, client, r.proto)
                    .filter(|m| is_upnp(m) && (r.start..=r.end).contains(&m.external.port))
                    .map(|m| m.internal)
                    .collect();
                if gone.is_empty() {
                    return Err(UpnpError::PortMappingNotFound);
                }
                for internal in gone {
                    engine.unmap_explicit(now, r.proto, internal);
                }
                Ok(vec![])
            }
            Action::GetSpecificPortMappingEntry(key) => {
                let m = own(engine, client, key.proto)
                    .find(|m| m.external.port == key.external_port)
                    .ok_or(UpnpError::NoSuchEntry)?;
                Ok(entry(m, now))
            }
            Action::GetGenericPortMappingEntry(index) => {
                let m = engine
                    .explicit_mappings()
                    .filter(|m| m.internal.addr == client)
                    .nth(usize::from(*index))
                    .ok_or(UpnpError::ArrayIndexInvalid)?;
                let mut out = vec![
                    ("NewRemoteHost", remote_host(m)),
                    ("NewExternalPort", m.external.port.to_string()),
                    ("NewProtocol", proto_name(m.proto).into()),
                ];
                out.extend(entry(m, now));
                Ok(out)
            }
            Action::GetListOfPortMappings(r, count) => {
                if r.start > r.end {
                    return Err(UpnpError::InconsistentParameters);
                }
                let limit = if *count == 0 {
                    usize::MAX
                } else {
                    usize::from(*count)
                };
                let found: Vec<(&ExplicitMapping, String, String)> = own(engine, client, r.proto)
                    .filter(|m| (r.start..=r.end).contains(&m.external.port))
                    .take(limit)
                    .map(|m| (m, remote_host(m), description_of(m)))
                    .collect();
                if found.is_empty() {
                    return Err(UpnpError::PortMappingNotFound);
                }
                let entries: Vec<soap::PortListingEntry<'_>> = found
                    .iter()
                    .map(|(m, remote, description)| soap::PortListingEntry {
                        remote_host: remote,
                        external_port: m.external.port,
                        proto: proto_name(m.proto),
                        internal_port: m.internal.port,
                        internal_client: m.internal.addr,
                        description,
                        lease: lease_left(m, now),
                    })
                    .collect();
                Ok(vec![("NewPortListing", soap::write_port_listing(&entries))])
            }
        }
    }

    /// AddPortMapping (`exact`: that external port or none) and AddAnyPortMapping (that port
    /// if free, else another): the external port mapped.
    fn add<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Ipv4Addr,
        m: &NewMapping,
        exact: bool,
    ) -> Result<u16, UpnpError> {
        // Like PCP without THIRD_PARTY: a host maps its own ports only.
        if m.internal_client != client {
            return Err(UpnpError::NotAuthorized);
        }
        // A disabled mapping would be a table entry that maps nothing; none are kept.
        if !m.enabled || m.internal_port == 0 {
            return Err(UpnpError::InvalidArgs);
        }
        let MappingKey {
            remote_host,
            external_port,
            proto,
        } = m.key;
        if exact && external_port == 0 {
            return Err(UpnpError::WildcardExternalPort);
        }
        let internal = Endpoint::new(client, m.internal_port);
        if let Some(existing) = engine.explicit_mapping(proto, internal) {
            // One mapping per internal endpoint: another external port for it, or taking
            // over another protocol's mapping, conflicts.
            if !is_upnp(existing) || (exact && existing.external.port != external_port) {
                return Err(UpnpError::Conflict);
            }
        }
        // WANIPConnection:2's AddPortMapping: a lease of 0 asks for the longest there is.
        let lease = if m.lease == 0 {
            self.cfg.max_lifetime
        } else {
            self.clamp(m.lease)
        };
        let peers = match remote_host {
            Some(a) => vec![RemotePeer {
                prefix: Ipv4Prefix::new(a, 32).ok_or(UpnpError::InvalidArgs)?,
                port: None,
            }],
            None => Vec::new(),
        };
        let req = MapRequest {
            proto,
            internal,
            lifetime: Duration::from_secs(u64::from(lease)),
            origin: MappingOrigin::Upnp {
                description: Description::new(&m.description),
            },
            peers,
            suggested: (external_port != 0).then_some(Suggestion {
                addr: None,
                port: external_port,
                required: exact,
            }),
        };
        match engine.map_explicit(now, req, self.cfg.max_mappings_per_subscriber as usize) {
            Ok(m) => Ok(m.external.port),
            Err(MapError::Disabled | MapError::NotInside) => Err(UpnpError::NotAuthorized),
            Err(MapError::UnsupportedProtocol | MapError::ZeroPort) => Err(UpnpError::InvalidArgs),
            Err(MapError::SuggestionUnavailable) => Err(UpnpError::Conflict),
            Err(MapError::MappingLimit | MapError::NoResources(_)) => {
                Err(UpnpError::NoPortMapsAvailable)
            }
        }
    }
}

/// `client`'s own mappings of `proto`.
fn own<A: PortAllocator>(
    engine: &Engine<A>,
    client: Ipv4Addr,
    proto: Protocol,
) -> impl Iterator<Item = &ExplicitMapping> {
    engine
        .explicit_mappings()
        .filter(move |m| m.internal.addr == client && m.proto == proto)
}

fn is_upnp(m: &ExplicitMapping) -> bool {
    matches!(m.origin, MappingOrigin::Upnp { .. })
}

fn proto_name(p: Protocol) -> &'static str {
    if p == Protocol::Tcp { "TCP" } else { "UDP" }
}

/// The one remote host a mapping lets in, or empty for all.
fn remote_host(m: &ExplicitMapping) -> String {
    match m.peers.as_slice() {
        [p] if p.prefix.prefix_len() == 32 && p.port.is_none() => p.prefix.addr().to_string(),
        _ => String::new(),
    }
}

/// A UPnP mapping's own description; the origin for one made by another protocol.
fn description_of(m: &ExplicitMapping) -> String {
    match m.origin {
        MappingOrigin::Upnp { description } => description.as_str().to_owned(),
        other => other.to_string(),
    }
}

fn lease_left(m: &ExplicitMapping, now: Instant) -> u32 {
    m.expires
        .saturating_since(now)
        .as_secs()
        .min(u64::from(u32::MAX)) as u32
}

/// GetSpecificPortMappingEntry's output, the tail of GetGenericPortMappingEntry's.
fn entry(m: &ExplicitMapping, now: Instant) -> Out {
    vec![
        ("NewInternalPort", m.internal.port.to_string()),
        ("NewInternalClient", m.internal.addr.to_string()),
        ("NewEnabled", "1".into()),
        ("NewPortMappingDescription", description_of(m)),
        ("NewLeaseDuration", lease_left(m, now).to_string()),
    ]
}

#[cfg(test)]
mod tests;
