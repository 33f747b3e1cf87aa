//! The port-mapping server's policy: what each request gets.
//!
//! One server answers both protocols on the shared port and tells them apart by the version
//! byte (RFC 6887 section 9): 0 is NAT-PMP, 2 is PCP, anything else gets UNSUPP_VERSION.
//! Every request is from a client the NAT serves (the driver listens on the inside only; the
//! engine's inside networks decide) and maps only the client's own address, unless the config
//! lets the client use THIRD_PARTY. A request that is not answered is counted under a
//! [`PortMapDrop`].

use super::PortMapConfig;
use super::upnp;
use super::wire::natpmp::{self, MapProto};
use super::wire::pcp::{self, Body, Payload, Refusal, ResultCode};
use crate::alloc::PortAllocator;
use crate::endpoint::{Endpoint, Ipv4Prefix, Protocol};
use crate::engine::{Engine, MapError, MapRequest, Suggestion};
use crate::table::{ExplicitMapping, MappingOrigin, RemotePeer};
use crate::time::Instant;
use core::time::Duration;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// How long a client is told to wait after a long-lived error (RFC 6887 section 7.4
/// suggests such errors be retried rarely).
const LONG_ERROR_LIFETIME: u32 = 1800;
/// How long after a short-lived error (out of ports, quota).
const SHORT_ERROR_LIFETIME: u32 = 30;

macro_rules! portmap_drops {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// Why a request got no answer. Each is one counter, named by [`PortMapDrop::name`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum PortMapDrop {
            $( $(#[$doc])* $variant, )*
        }

        impl PortMapDrop {
            /// Every reason, in counter order.
            pub const ALL: &'static [PortMapDrop] = &[$(PortMapDrop::$variant,)*];

            /// The snake_case counter name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(PortMapDrop::$variant => $name,)*
                }
            }
        }
    };
}

portmap_drops! {
    /// Shorter than a version and an opcode, or a NAT-PMP mapping request cut short.
    Truncated => "truncated",
    /// A response (PCP R bit, NAT-PMP opcode 128 and up): never answered (RFC 6887
    /// section 8.3, RFC 6886 section 3.2).
    Response => "response",
    /// From an address outside the inside networks: not a client of this NAT.
    NotServed => "not_served",
    /// Over the client's request rate.
    RateLimited => "rate_limited",
    /// A new client while the rate limiter tracks as many as it may.
    ClientTableFull => "client_table_full",
    /// A UPnP request while UPnP is off (a reload turned it off).
    UpnpOff => "upnp_off",
    /// A datagram to the SSDP port that is not an SSDP message.
    SsdpMalformed => "ssdp_malformed",
    /// Another device's SSDP advertisement or answer: only searches are answered.
    SsdpNotSearch => "ssdp_not_search",
    /// An SSDP search for devices or services the gateway does not have (UDA 1.1 section
    /// 1.3.2: those are not answered).
    SsdpOtherTarget => "ssdp_other_target",
}

/// What the server did with the request and what it answered, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMapCounters {
    /// Requests dropped, by [`PortMapDrop`] (in [`PortMapDrop::ALL`] order).
    pub drops: [u64; PortMapDrop::ALL.len()],
    /// PCP answers by result code (in [`pcp::ResultCode::ALL`] order).
    pub pcp_results: [u64; 14],
    /// NAT-PMP answers by result code (in [`natpmp::ResultCode::ALL`] order).
    pub natpmp_results: [u64; 6],
    /// UPnP answers by outcome (in [`upnp::Outcome::ALL`] order).
    pub upnp_results: [u64; upnp::Outcome::ALL.len()],
}

impl PortMapCounters {
    /// Adds another server's counters (one per worker) to these.
    pub fn merge(&mut self, other: &PortMapCounters) {
        let add = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        add(&mut self.drops, &other.drops);
        add(&mut self.pcp_results, &other.pcp_results);
        add(&mut self.natpmp_results, &other.natpmp_results);
        add(&mut self.upnp_results, &other.upnp_results);
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send the first `len` bytes of the output buffer back to the client.
    Reply(usize),
    /// Send nothing; counted under the reason.
    Drop(PortMapDrop),
}

/// A client's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a request.
    tokens: u64,
    refilled: Instant,
}

/// The PCP and NAT-PMP server of one engine.
#[derive(Debug)]
pub struct PortMapServer {
    cfg: PortMapConfig,
    /// When the server's mapping state began: the epoch's zero (RFC 6887 section 8.5, RFC
    /// 6886 section 3.6). A restart starts a new epoch, and clients then renew.
    started: Instant,
    clients: HashMap<Ipv4Addr, Bucket>,
    counters: PortMapCounters,
}

impl PortMapServer {
    /// A server with `cfg` (checked with [`PortMapConfig::check`]) whose state begins `now`.
    pub fn new(cfg: PortMapConfig, now: Instant) -> Self {
        PortMapServer {
            cfg,
            started: now,
            clients: HashMap::new(),
            counters: PortMapCounters::default(),
        }
    }

    /// Takes new settings (a reload); mappings and the epoch stay.
    pub fn reconfigure(&mut self, cfg: PortMapConfig) {
        self.cfg = cfg;
    }

    /// The settings in force.
    pub fn config(&self) -> &PortMapConfig {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> &PortMapCounters {
        &self.counters
    }

    /// Seconds since the epoch began.
    pub fn epoch(&self, now: Instant) -> u32 {
        now.saturating_since(self.started)
            .as_secs()
            .min(u64::from(u32::MAX)) as u32
    }

    /// The unsolicited PCP ANNOUNCE (RFC 6887 section 14.1.3) a server multicasts to
    /// 224.0.0.1:5350 when it starts or lost its state, so that clients renew at once; `epoch`
    /// is [`Self::epoch`] (0 at start).
    pub fn announcement(epoch: u32, out: &mut [u8; pcp::MAX_MESSAGE]) -> usize {
        pcp::write_response(
            out,
            &pcp::Response {
                opcode: pcp::Opcode::Announce as u8,
                result: ResultCode::Success,
                lifetime: 0,
                epoch,
                payload: Payload::None,
            },
        )
    }

    /// Answers the request `req` that `client` sent to the server's port at `now`, writing the
    /// answer into `out`. Mappings are made in, renewed in and deleted from `engine`.
    pub fn handle<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Endpoint,
        req: &[u8],
        out: &mut [u8; pcp::MAX_MESSAGE],
    ) -> Answer {
        let answer = self.answer(now, engine, client, req, out);
        if let Answer::Drop(why) = answer {
            self.count_drop(why);
        }
        answer
    }

    fn count_drop(&mut self, why: PortMapDrop) {
        if let Some(i) = PortMapDrop::ALL.iter().position(|d| *d == why) {
            self.counters.drops[i] += 1;
        }
    }

    fn answer<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Endpoint,
        req: &[u8],
        out: &mut [u8; pcp::MAX_MESSAGE],
    ) -> Answer {
        let [version, op, ..] = *req else {
            return Answer::Drop(PortMapDrop::Truncated);
        };
        if op & pcp::RESPONSE_BIT != 0 {
            return Answer::Drop(PortMapDrop::Response);
        }
        if !engine.serves(client.addr) {
            return Answer::Drop(PortMapDrop::NotServed);
        }
        if let Err(why) = self.admit(now, client.addr) {
            return Answer::Drop(why);
        }
        match version {
            natpmp::VERSION if self.cfg.nat_pmp => self.natpmp(now, engine, client, req, out),
            pcp::VERSION if self.cfg.pcp => self.pcp(now, engine, client, req, out),
            // RFC 6887 section 9: an unsupported version is answered in the newest version
            // the server speaks, which tells the client what to fall back to.
            _ if self.cfg.pcp => {
                self.pcp_reply(out, now, op, ResultCode::UnsuppVersion, 0, Payload::None)
            }
            _ => self.natpmp_reply(out, now, op, natpmp::ResultCode::UnsupportedVersion),
        }
    }

    /// Takes one request from `client`'s bucket.
    fn admit(&mut self, now: Instant, client: Ipv4Addr) -> Result<(), PortMapDrop> {
        const MILLI: u64 = 1000;
        let burst = u64::from(self.cfg.request_burst) * MILLI;
        if !self.clients.contains_key(&client)
            && self.clients.len() >= self.cfg.max_clients as usize
        {
            // Clients whose bucket has refilled carry no state worth keeping.
            let rate = u64::from(self.cfg.requests_per_second);
            self.clients.retain(|_, b| {
                let elapsed = now.as_millis().saturating_sub(b.refilled.as_millis());
                b.tokens.saturating_add(elapsed.saturating_mul(rate)) < burst
            });
            if self.clients.len() >= self.cfg.max_clients as usize {
                return Err(PortMapDrop::ClientTableFull);
            }
        }
        let b = self.clients.entry(client).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        let elapsed = now.as_millis().saturating_sub(b.refilled.as_millis());
        b.tokens = b
            .tokens
            .saturating_add(elapsed.saturating_mul(u64::from(self.cfg.requests_per_second)))
            .min(burst);
        b.refilled = now.max(b.refilled);
        if b.tokens < MILLI {
            return Err(PortMapDrop::RateLimited);
        }
        b.tokens -= MILLI;
        Ok(())
    }

    /// A lifetime the config allows; 0 is left alone (it deletes).
    fn clamp(&self, requested: u32) -> u32 {
        if requested == 0 {
            0
        } else {
            requested.clamp(self.cfg.min_lifetime, self.cfg.max_lifetime)
        }
    }

    fn natpmp_reply(
        &mut self,
        out: &mut [u8; pcp::MAX_MESSAGE],
        now: Instant,
        op: u8,
        result: natpmp::ResultCode,
    ) -> Answer {
        let mut buf = [0u8; natpmp::MAX_RESPONSE];
        let n = natpmp::write_header(&mut buf, op, result, self.epoch(now));
        self.natpmp_answer(out, &buf[..n], result)
    }

    /// Counts a NAT-PMP answer by its result and puts it in `out`.
    fn natpmp_answer(
        &mut self,
        out: &mut [u8; pcp::MAX_MESSAGE],
        answer: &[u8],
        result: natpmp::ResultCode,
    ) -> Answer {
        self.counters.natpmp_results[result as usize] += 1;
        out[..answer.len()].copy_from_slice(answer);
        Answer::Reply(answer.len())
    }

    fn natpmp<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Endpoint,
        req: &[u8],
        out: &mut [u8; pcp::MAX_MESSAGE],
    ) -> Answer {
        let epoch = self.epoch(now);
        let request = match natpmp::parse(req) {
            Ok(r) => r,
            Err(natpmp::ParseError::Truncated) => return Answer::Drop(PortMapDrop::Truncated),
            Err(natpmp::ParseError::Response) => return Answer::Drop(PortMapDrop::Response),
            Err(natpmp::ParseError::Version(_)) => {
                return self.natpmp_reply(out, now, req[1], natpmp::ResultCode::UnsupportedVersion);
            }
            Err(natpmp::ParseError::UnsupportedOpcode(op)) => {
                return self.natpmp_reply(out, now, op, natpmp::ResultCode::UnsupportedOpcode);
            }
        };
        let mut buf = [0u8; natpmp::MAX_RESPONSE];
        let (n, result) = match request {
            natpmp::Request::PublicAddress => match engine.external_address_for(client.addr) {
                Some(addr) => {
                    let r = natpmp::ResultCode::Success;
                    (natpmp::write_public_address(&mut buf, r, epoch, addr), r)
                }
                None => {
                    let r = natpmp::ResultCode::NetworkFailure;
                    let addr = Ipv4Addr::UNSPECIFIED;
                    (natpmp::write_public_address(&mut buf, r, epoch, addr), r)
                }
            },
            natpmp::Request::Map {
                proto,
                internal_port,
                suggested_port,
                lifetime,
            } => {
                let internal = Endpoint::new(client.addr, internal_port);
                let (result, external_port, lifetime) =
                    self.natpmp_map(now, engine, internal, suggested_port, proto, lifetime);
                let n = natpmp::write_map(
                    &mut buf,
                    proto,
                    result,
                    epoch,
                    internal_port,
                    external_port,
                    lifetime,
                );
                (n, result)
            }
        };
        self.natpmp_answer(out, &buf[..n], result)
    }

    /// A NAT-PMP map, renewal or deletion of `internal` (port 0: all of the client's): the
    /// result, the external port and the lifetime to answer with (RFC 6886 sections 3.3, 3.4).
    /// The suggested external port is given when it is free (RFC 6886 section 3.3: "if
    /// possible"), another otherwise.
    fn natpmp_map<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        internal: Endpoint,
        suggested_port: u16,
        proto: MapProto,
        lifetime: u32,
    ) -> (natpmp::ResultCode, u16, u32) {
        use natpmp::ResultCode as R;
        let proto = match proto {
            MapProto::Udp => Protocol::Udp,
            MapProto::Tcp => Protocol::Tcp,
        };
        let (client, internal_port) = (internal.addr, internal.port);
        if lifetime == 0 {
            // RFC 6886 section 3.4: port 0 deletes every mapping of the client for the protocol.
            let ports: Vec<Endpoint> = if internal_port == 0 {
                engine
                    .explicit_mappings()
                    .filter(|m| {
                        m.proto == proto
                            && m.internal.addr == client
                            && m.origin == MappingOrigin::NatPmp
                    })
                    .map(|m| m.internal)
                    .collect()
            } else {
                match engine.explicit_mapping(proto, internal) {
                    Some(m) if m.origin != MappingOrigin::NatPmp => {
                        return (R::NotAuthorized, 0, 0);
                    }
                    Some(m) => vec![m.internal],
                    None => Vec::new(),
                }
            };
            for p in ports {
                engine.unmap_explicit(now, proto, p);
            }
            return (R::Success, 0, 0);
        }
        if internal_port == 0 {
            // A mapping of every port (a DMZ host) is not offered.
            return (R::NotAuthorized, 0, 0);
        }
        if engine
            .explicit_mapping(proto, internal)
            .is_some_and(|m| m.origin != MappingOrigin::NatPmp)
        {
            // Made with PCP: its nonce holder owns it, and NAT-PMP cannot prove to be that.
            return (R::NotAuthorized, 0, 0);
        }
        let granted = self.clamp(lifetime);
        let req = MapRequest {
            proto,
            internal,
            lifetime: Duration::from_secs(u64::from(granted)),
            origin: MappingOrigin::NatPmp,
            peers: Vec::new(),
            suggested: (suggested_port != 0).then_some(Suggestion {
                addr: None,
                port: suggested_port,
                required: false,
            }),
        };
        match engine.map_explicit(now, req, self.cfg.max_mappings_per_subscriber as usize) {
            Ok(m) => (R::Success, m.external.port, granted),
            Err(
                MapError::Disabled
                | MapError::NotInside
                | MapError::UnsupportedProtocol
                | MapError::ZeroPort,
            ) => (R::NotAuthorized, 0, 0),
            Err(
                MapError::MappingLimit | MapError::NoResources(_) | MapError::SuggestionUnavailable,
            ) => (R::OutOfResources, 0, 0),
        }
    }

    fn pcp_reply(
        &mut self,
        out: &mut [u8; pcp::MAX_MESSAGE],
        now: Instant,
        opcode: u8,
        result: ResultCode,
        lifetime: u32,
        payload: Payload<'_>,
    ) -> Answer {
        self.counters.pcp_results[result as usize] += 1;
        let lifetime = match result {
            ResultCode::Success => lifetime,
            r if r.is_long_lived() => LONG_ERROR_LIFETIME,
            _ => SHORT_ERROR_LIFETIME,
        };
        let r = pcp::Response {
            opcode,
            result,
            lifetime,
            epoch: self.epoch(now),
            payload,
        };
        Answer::Reply(pcp::write_response(out, &r))
    }

    fn pcp<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Endpoint,
        req: &[u8],
        out: &mut [u8; pcp::MAX_MESSAGE],
    ) -> Answer {
        let opcode = req[1];
        // An error answer repeats what followed the request's header (RFC 6887 section 8.3).
        let echo = Payload::Echo(req.get(pcp::HEADER..).unwrap_or_default());
        let request = match pcp::parse(req) {
            Ok(r) => r,
            Err(Refusal::Silent) => return Answer::Drop(PortMapDrop::Response),
            Err(Refusal::Answer(code)) => return self.pcp_reply(out, now, opcode, code, 0, echo),
        };
        if request.body == Body::Announce {
            // RFC 6887 section 14.1.2: a client may ask, and is told the epoch.
            return self.pcp_reply(out, now, opcode, ResultCode::Success, 0, Payload::None);
        }
        // RFC 6887 section 8.3: the client's address field must be the packet's source, or a
        // NAT between client and server changed it.
        if pcp::unmapped(&request.client) != Some(client.addr) {
            let code = ResultCode::AddressMismatch;
            return self.pcp_reply(out, now, opcode, code, 0, echo);
        }
        let mapped = self.pcp_map(now, engine, client.addr, &request);
        let mapped = match (mapped, request.options.port_set) {
            (Ok((body, lifetime)), Some(set)) => self
                .pcp_port_set(now, engine, client.addr, &request, body, lifetime, set)
                .map(|(body, granted)| (body, lifetime, Some(granted))),
            (r, _) => r.map(|(body, lifetime)| (body, lifetime, None)),
        };
        match mapped {
            Ok((body, lifetime, granted)) => {
                let mut options = std::borrow::Cow::Borrowed(&request.options);
                if let Some(granted) = granted {
                    options.to_mut().port_set = granted;
                }
                let payload = match request.body {
                    Body::Peer(mut p) => {
                        p.map = body;
                        Payload::Peer(p, &options)
                    }
                    _ => Payload::Map(body, &options),
                };
                self.pcp_reply(out, now, opcode, ResultCode::Success, lifetime, payload)
            }
            Err(code) => self.pcp_reply(out, now, opcode, code, 0, echo),
        }
    }

    /// A MAP with PORT_SET (RFC 7753) after `pcp_map` mapped, renewed or deleted its first
    /// port: the rest of the run, port by port, internal `first + i` on external `first + i`,
    /// each an explicit mapping of its own with the request's nonce, lifetime and peers, so
    /// that renewing, deleting, expiring and listing need nothing new. The run stops at the
    /// first port that cannot be had (in use, outside the subscriber's block or range, past
    /// its mapping cap): fewer ports than asked is an answer RFC 7753 allows, and the
    /// response's PORT_SET says how many. With the P bit the first external port keeps the
    /// first internal port's parity: a new first port that does not is moved one up, or
    /// the request fails. Returns the first port's payload (moved, perhaps) and
    /// the PORT_SET to answer with: `None` when only one port was granted, which is a plain
    /// MAP's answer.
    #[allow(clippy::too_many_arguments)]
    fn pcp_port_set<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Ipv4Addr,
        request: &pcp::Request,
        mut first: pcp::MapBody,
        lifetime: u32,
        set: pcp::PortSet,
    ) -> Result<(pcp::MapBody, Option<pcp::PortSet>), ResultCode> {
        let proto = match first.protocol {
            6 => Protocol::Tcp,
            _ => Protocol::Udp,
        };
        let addr = request
            .options
            .third_party
            .as_ref()
            .and_then(pcp::unmapped)
            .unwrap_or(client);
        let origin = MappingOrigin::Pcp { nonce: first.nonce };
        let ports = u32::from(set.size).min(65_536 - u32::from(first.internal_port));
        let internal = |i: u32| Endpoint::new(addr, (u32::from(first.internal_port) + i) as u16);
        if lifetime == 0 {
            for i in 1..ports {
                let own = engine
                    .explicit_mapping(proto, internal(i))
                    .is_some_and(|m| m.origin == origin);
                if own {
                    engine.unmap_explicit(now, proto, internal(i));
                }
            }
            return Ok((first, Some(set)));
        }
        let request_for = |i: u32, port: u16, peers: Vec<RemotePeer>| MapRequest {
            proto,
            internal: internal(i),
            lifetime: Duration::from_secs(u64::from(lifetime)),
            origin,
            peers,
            suggested: Some(Suggestion {
                addr: pcp::unmapped(&first.external_addr),
                port,
                required: true,
            }),
        };
        let peers = engine
            .explicit_mapping(proto, internal(0))
            .map(|m| m.peers.clone())
            .unwrap_or_default();
        let cap = self.cfg.max_mappings_per_subscriber as usize;
        if set.parity && first.external_port % 2 != first.internal_port % 2 {
            let fresh = (1..ports).all(|i| engine.explicit_mapping(proto, internal(i)).is_none());
            if !fresh {
                return Err(ResultCode::CannotProvideExternal);
            }
            engine.unmap_explicit(now, proto, internal(0));
            // Up, so the run does not meet the port just given back (held down now).
            let moved = first
                .external_port
                .checked_add(1)
                .ok_or(ResultCode::CannotProvideExternal)?;
            let m = engine
                .map_explicit(now, request_for(0, moved, peers.clone()), cap)
                .map_err(|_| ResultCode::CannotProvideExternal)?;
            first.external_port = m.external.port;
        }
        let mut granted = 1;
        for i in 1..ports {
            let Some(port) = first.external_port.checked_add(i as u16) else {
                break;
            };
            let fits = match engine.explicit_mapping(proto, internal(i)) {
                // A member already: renewed if it is this run's.
                Some(m) => m.origin == origin && m.external.port == port,
                None => true,
            };
            if !fits
                || engine
                    .map_explicit(now, request_for(i, port, peers.clone()), cap)
                    .is_err()
            {
                break;
            }
            granted += 1;
        }
        let answer = (granted > 1).then_some(pcp::PortSet {
            size: granted as u16,
            ..set
        });
        Ok((first, answer))
    }

    /// A PCP MAP or PEER: the response's payload (assigned endpoint) and lifetime.
    ///
    /// PEER (RFC 6887 section 12) asks for the mapping a flow to one remote peer uses. Here
    /// that is the internal endpoint's explicit mapping if it has one (answered as it is), or
    /// a new explicit mapping that admits only that peer: the flow then keeps its external
    /// endpoint for the lifetime granted, which is what PEER is for.
    fn pcp_map<A: PortAllocator>(
        &mut self,
        now: Instant,
        engine: &mut Engine<A>,
        client: Ipv4Addr,
        request: &pcp::Request,
    ) -> Result<(pcp::MapBody, u32), ResultCode> {
        let (body, peer) = match request.body {
            Body::Map(m) => (m, None),
            Body::Peer(p) => {
                let addr = pcp::unmapped(&p.remote_addr).ok_or(ResultCode::MalformedRequest)?;
                if p.remote_port == 0 {
                    return Err(ResultCode::MalformedRequest);
                }
                (p.map, Some(Endpoint::new(addr, p.remote_port)))
            }
            Body::Announce => return Err(ResultCode::MalformedRequest),
        };
        let opts = &request.options;
        let internal_addr = match &opts.third_party {
            None => client,
            Some(tp) => {
                // RFC 6887 section 13.1: only for clients the operator trusts to speak for
                // other hosts.
                if !self.cfg.third_party.iter().any(|p| p.contains(client)) {
                    return Err(ResultCode::NotAuthorized);
                }
                pcp::unmapped(tp).ok_or(ResultCode::MalformedOption)?
            }
        };
        if !engine.serves(internal_addr) {
            return Err(ResultCode::NotAuthorized);
        }
        let proto = match body.protocol {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return Err(ResultCode::UnsuppProtocol),
        };
        if body.internal_port == 0 {
            // A mapping of every port (a DMZ host) is not offered.
            return Err(ResultCode::NotAuthorized);
        }
        let mut peers = Vec::with_capacity(opts.filters.len() + 1);
        if opts.filters.len() > pcp::MAX_FILTERS {
            return Err(ResultCode::ExcessiveRemotePeers);
        }
        for f in &opts.filters {
            peers.push(remote_peer(f).ok_or(ResultCode::MalformedOption)?);
        }
        if let Some(remote) = peer {
            peers.push(RemotePeer {
                prefix: Ipv4Prefix::new(remote.addr, 32).ok_or(ResultCode::MalformedRequest)?,
                port: Some(remote.port),
            });
        }
        let internal = Endpoint::new(internal_addr, body.internal_port);
        let origin = MappingOrigin::Pcp { nonce: body.nonce };
        let existing = engine.explicit_mapping(proto, internal).cloned();
        // RFC 6887 section 11.3: only the nonce that made a mapping renews or deletes it.
        if existing.as_ref().is_some_and(|m| m.origin != origin) {
            return Err(ResultCode::NotAuthorized);
        }
        let answer = |m: &ExplicitMapping, lifetime: u32| {
            let body = pcp::MapBody {
                external_port: m.external.port,
                external_addr: pcp::mapped(m.external.addr),
                ..body
            };
            (body, lifetime)
        };
        if request.lifetime == 0 {
            if existing.is_some() {
                engine.unmap_explicit(now, proto, internal);
            }
            return Ok((body, 0));
        }
        if let (Some(m), Some(_)) = (&existing, peer) {
            // PEER on a mapping that exists: its endpoint, unchanged.
            let left = m.expires.saturating_since(now).as_secs();
            return Ok(answer(m, left.min(u64::from(u32::MAX)) as u32));
        }
        let suggested_addr = pcp::unmapped(&body.external_addr).filter(|a| !a.is_unspecified());
        let honoured = |m: &ExplicitMapping| {
            (body.external_port == 0 || body.external_port == m.external.port)
                && suggested_addr.is_none_or(|a| a == m.external.addr)
        };
        if opts.prefer_failure
            && let Some(m) = &existing
            && !honoured(m)
        {
            // RFC 6887 section 13.2: the suggested endpoint or nothing, and a mapping keeps
            // the endpoint it has.
            return Err(ResultCode::CannotProvideExternal);
        }
        let granted = self.clamp(request.lifetime);
        let req = MapRequest {
            proto,
            internal,
            lifetime: Duration::from_secs(u64::from(granted)),
            origin,
            peers,
            // RFC 6887 section 11.3: the suggested endpoint if it can be had; with
            // PREFER_FAILURE (section 13.2) that or nothing.
            suggested: if body.external_port != 0 {
                Some(Suggestion {
                    addr: suggested_addr,
                    port: body.external_port,
                    required: opts.prefer_failure,
                })
            } else if opts.port_set.is_some_and(|s| s.parity) {
                // RFC 7753's P bit: the internal port itself has the parity asked for.
                Some(Suggestion {
                    addr: suggested_addr,
                    port: body.internal_port,
                    required: false,
                })
            } else {
                None
            },
        };
        match engine.map_explicit(now, req, self.cfg.max_mappings_per_subscriber as usize) {
            Ok(m) => Ok(answer(&m, granted)),
            // RFC 6887 section 7.4: NOT_AUTHORIZED is also "the operation is disabled".
            Err(MapError::Disabled | MapError::NotInside) => Err(ResultCode::NotAuthorized),
            Err(MapError::UnsupportedProtocol | MapError::ZeroPort) => {
                Err(ResultCode::UnsuppProtocol)
            }
            Err(MapError::MappingLimit) => Err(ResultCode::UserExQuota),
            Err(MapError::SuggestionUnavailable) => Err(ResultCode::CannotProvideExternal),
            Err(MapError::NoResources(reason)) => Err(match reason {
                crate::DropReason::SubscriberPortLimit
                | crate::DropReason::SubscriberSessionLimit
                | crate::DropReason::SubscriberRateLimit => ResultCode::UserExQuota,
                _ => ResultCode::NoResources,
            }),
        }
    }
}

/// A FILTER option as the peers it admits: IPv4-mapped, with a prefix length of 96 or more.
fn remote_peer(f: &pcp::Filter) -> Option<RemotePeer> {
    let addr = pcp::unmapped(&f.addr)?;
    let len = f.prefix_len.checked_sub(96)?;
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    Some(RemotePeer {
        prefix: Ipv4Prefix::new(Ipv4Addr::from_bits(addr.to_bits() & mask), len)?,
        port: (f.port != 0).then_some(f.port),
    })
}

mod igd;

#[cfg(test)]
mod tests;
