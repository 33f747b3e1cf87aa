//! PCP (RFC 6887) messages: requests parsed with their options, responses written.
//!
//! Addresses are always 128-bit fields; an IPv4 address is carried IPv4-mapped
//! (`::ffff:a.b.c.d`, RFC 6887 section 5). Lengths are checked before any field is read, so no
//! input makes a parser panic (the fuzz target `portmap_parse` holds it to that).

use std::net::Ipv4Addr;

/// The PCP version this server speaks.
pub const VERSION: u8 = 2;
/// The common request and response header.
pub const HEADER: usize = 24;
/// The largest PCP message (RFC 6887 section 7).
pub const MAX_MESSAGE: usize = 1100;
/// The R bit of the opcode byte: set in responses.
pub const RESPONSE_BIT: u8 = 0x80;
/// The opcode-specific part of MAP (RFC 6887 section 11.1).
pub const MAP_BODY: usize = 36;
/// The opcode-specific part of PEER (RFC 6887 section 12.1).
pub const PEER_BODY: usize = 56;
/// Most FILTER options one mapping keeps; more are refused with EXCESSIVE_REMOTE_PEERS.
pub const MAX_FILTERS: usize = 8;

/// PCP result codes (RFC 6887 section 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ResultCode {
    /// Success.
    Success = 0,
    /// The version is not one this server speaks.
    UnsuppVersion = 1,
    /// Refused by policy (another host's address, a nonce that does not match, disabled).
    NotAuthorized = 2,
    /// The request could not be parsed.
    MalformedRequest = 3,
    /// Unsupported opcode.
    UnsuppOpcode = 4,
    /// A mandatory-to-process option this server does not know.
    UnsuppOption = 5,
    /// An option too long, too short, repeated or not allowed with the opcode.
    MalformedOption = 6,
    /// The server or the device it controls has a network failure.
    NetworkFailure = 7,
    /// No ports or table room left.
    NoResources = 8,
    /// The protocol cannot be mapped.
    UnsuppProtocol = 9,
    /// The subscriber's quota is used up.
    UserExQuota = 10,
    /// The suggested external endpoint cannot be given and PREFER_FAILURE was set.
    CannotProvideExternal = 11,
    /// The client's address field is not the packet's source address.
    AddressMismatch = 12,
    /// More FILTER options than the server keeps.
    ExcessiveRemotePeers = 13,
}

impl ResultCode {
    /// Every code, in numeric order.
    pub const ALL: [ResultCode; 14] = [
        ResultCode::Success,
        ResultCode::UnsuppVersion,
        ResultCode::NotAuthorized,
        ResultCode::MalformedRequest,
        ResultCode::UnsuppOpcode,
        ResultCode::UnsuppOption,
        ResultCode::MalformedOption,
        ResultCode::NetworkFailure,
        ResultCode::NoResources,
        ResultCode::UnsuppProtocol,
        ResultCode::UserExQuota,
        ResultCode::CannotProvideExternal,
        ResultCode::AddressMismatch,
        ResultCode::ExcessiveRemotePeers,
    ];

    /// The RFC's name, lower-case: the metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "success",
            ResultCode::UnsuppVersion => "unsupp_version",
            ResultCode::NotAuthorized => "not_authorized",
            ResultCode::MalformedRequest => "malformed_request",
            ResultCode::UnsuppOpcode => "unsupp_opcode",
            ResultCode::UnsuppOption => "unsupp_option",
            ResultCode::MalformedOption => "malformed_option",
            ResultCode::NetworkFailure => "network_failure",
            ResultCode::NoResources => "no_resources",
            ResultCode::UnsuppProtocol => "unsupp_protocol",
            ResultCode::UserExQuota => "user_ex_quota",
            ResultCode::CannotProvideExternal => "cannot_provide_external",
            ResultCode::AddressMismatch => "address_mismatch",
            ResultCode::ExcessiveRemotePeers => "excessive_remote_peers",
        }
    }

    /// Whether the error is long-lived (RFC 6887 section 7.4): a retry will fail the same way
    /// until something is reconfigured, so the client is told to wait long.
    pub const fn is_long_lived(self) -> bool {
        !matches!(
            self,
            ResultCode::Success
                | ResultCode::NetworkFailure
                | ResultCode::NoResources
                | ResultCode::UserExQuota
                | ResultCode::CannotProvideExternal
                | ResultCode::ExcessiveRemotePeers
        )
    }
}

/// PCP opcodes this server answers (RFC 6887 sections 14.1, 11, 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// ANNOUNCE (0).
    Announce = 0,
    /// MAP (1).
    Map = 1,
    /// PEER (2).
    Peer = 2,
}

/// Option codes (RFC 6887 section 19.4).
pub mod option {
    /// THIRD_PARTY: map for another host's address.
    pub const THIRD_PARTY: u8 = 1;
    /// PREFER_FAILURE: the suggested external endpoint or nothing.
    pub const PREFER_FAILURE: u8 = 2;
    /// FILTER: only these remote peers get in.
    pub const FILTER: u8 = 3;
    /// PORT_SET (RFC 7753): map a run of consecutive ports as one.
    pub const PORT_SET: u8 = 130;
    /// Codes from here on are optional to process: unknown ones are ignored.
    pub const OPTIONAL: u8 = 128;
}

/// An IPv4 address as a PCP address field (`::ffff:a.b.c.d`).
pub fn mapped(a: Ipv4Addr) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[10] = 0xff;
    f[11] = 0xff;
    f[12..].copy_from_slice(&a.octets());
    f
}

/// The IPv4 address an address field carries, if it is IPv4-mapped (all 96 leading bits
/// checked, RFC 6887 section 5); the all-zeros IPv4 address is `::ffff:0.0.0.0`.
pub fn unmapped(f: &[u8; 16]) -> Option<Ipv4Addr> {
    (f[..10] == [0; 10] && f[10] == 0xff && f[11] == 0xff)
        .then(|| Ipv4Addr::new(f[12], f[13], f[14], f[15]))
}

/// The opcode-specific part of a MAP request or response, and the common part of PEER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapBody {
    /// The mapping nonce (RFC 6887 section 11.1).
    pub nonce: [u8; 12],
    /// IANA protocol number; 0 is every protocol.
    pub protocol: u8,
    /// The internal port; 0 is every port.
    pub internal_port: u16,
    /// Request: the external port suggested; response: the one assigned.
    pub external_port: u16,
    /// Request: the external address suggested; response: the one assigned.
    pub external_addr: [u8; 16],
}

impl MapBody {
    fn parse(b: &[u8; MAP_BODY]) -> Self {
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&b[..12]);
        let mut external_addr = [0u8; 16];
        external_addr.copy_from_slice(&b[20..36]);
        MapBody {
            nonce,
            protocol: b[12],
            internal_port: u16::from_be_bytes([b[16], b[17]]),
            external_port: u16::from_be_bytes([b[18], b[19]]),
            external_addr,
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[..12].copy_from_slice(&self.nonce);
        out[12] = self.protocol;
        out[13..16].fill(0);
        out[16..18].copy_from_slice(&self.internal_port.to_be_bytes());
        out[18..20].copy_from_slice(&self.external_port.to_be_bytes());
        out[20..36].copy_from_slice(&self.external_addr);
    }
}

/// The opcode-specific part of a PEER request or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerBody {
    /// Nonce, protocol, internal port and the external endpoint, as in MAP.
    pub map: MapBody,
    /// The remote peer's port.
    pub remote_port: u16,
    /// The remote peer's address.
    pub remote_addr: [u8; 16],
}

/// What a request asks, by opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// ANNOUNCE: no payload.
    Announce,
    /// MAP.
    Map(MapBody),
    /// PEER.
    Peer(PeerBody),
}

impl Body {
    /// The opcode.
    pub const fn opcode(&self) -> Opcode {
        match self {
            Body::Announce => Opcode::Announce,
            Body::Map(_) => Opcode::Map,
            Body::Peer(_) => Opcode::Peer,
        }
    }
}

/// A FILTER option (RFC 6887 section 13.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// The prefix length of `addr` as a 128-bit field (96 + the IPv4 prefix length).
    pub prefix_len: u8,
    /// The remote peer's port; 0 for every port.
    pub port: u16,
    /// The remote peers' address.
    pub addr: [u8; 16],
}

/// A PORT_SET option (RFC 7753 section 4): a run of consecutive ports mapped as one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSet {
    /// How many ports: requested, or (in a response) granted. Never 0.
    pub size: u16,
    /// The run's first internal port, which is the MAP's internal port.
    pub first_internal: u16,
    /// The P bit: the first external port keeps the first internal port's parity.
    pub parity: bool,
}

/// The options of a request that this server processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// THIRD_PARTY's internal address.
    pub third_party: Option<[u8; 16]>,
    /// PREFER_FAILURE was present.
    pub prefer_failure: bool,
    /// The FILTER options, in order.
    pub filters: Vec<Filter>,
    /// PORT_SET, in a MAP.
    pub port_set: Option<PortSet>,
}

/// A well-formed PCP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Requested lifetime in seconds.
    pub lifetime: u32,
    /// The client's address as it put it in the header.
    pub client: [u8; 16],
    /// The opcode and its payload.
    pub body: Body,
    /// The options.
    pub options: Options,
}

/// Why bytes are not a request the server acts on, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not answered: a response (R bit set) or too short to hold a version and opcode.
    Silent,
    /// Answered with this result code and the request's opcode.
    Answer(ResultCode),
}

/// Parses a PCP request (RFC 6887 section 8.3 and the option rules of section 7.3).
pub fn parse(b: &[u8]) -> Result<Request, Refusal> {
    let [version, op, ..] = b else {
        return Err(Refusal::Silent);
    };
    if op & RESPONSE_BIT != 0 {
        return Err(Refusal::Silent);
    }
    if *version != VERSION {
        return Err(Refusal::Answer(ResultCode::UnsuppVersion));
    }
    if b.len() < HEADER || b.len() > MAX_MESSAGE || !b.len().is_multiple_of(4) {
        return Err(Refusal::Answer(ResultCode::MalformedRequest));
    }
    let lifetime = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    let mut client = [0u8; 16];
    client.copy_from_slice(&b[8..24]);
    let rest = &b[HEADER..];
    let (body, used) = match op {
        0 => (Body::Announce, 0),
        1 => {
            let Some(m) = rest.first_chunk::<MAP_BODY>() else {
                return Err(Refusal::Answer(ResultCode::MalformedRequest));
            };
            (Body::Map(MapBody::parse(m)), MAP_BODY)
        }
        2 => {
            let Some(p) = rest.first_chunk::<PEER_BODY>() else {
                return Err(Refusal::Answer(ResultCode::MalformedRequest));
            };
            let Some(m) = p.first_chunk::<MAP_BODY>() else {
                return Err(Refusal::Answer(ResultCode::MalformedRequest));
            };
            let mut remote_addr = [0u8; 16];
            remote_addr.copy_from_slice(&p[40..56]);
            (
                Body::Peer(PeerBody {
                    map: MapBody::parse(m),
                    remote_port: u16::from_be_bytes([p[36], p[37]]),
                    remote_addr,
                }),
                PEER_BODY,
            )
        }
        _ => return Err(Refusal::Answer(ResultCode::UnsuppOpcode)),
    };
    let options = parse_options(body.opcode(), &rest[used..])?;
    if let (Some(set), Body::Map(m)) = (options.port_set, &body) {
        // RFC 7753 section 4: the run starts at the MAP's internal port; and a run cannot
        // be "exactly these ports or nothing" (PREFER_FAILURE) when fewer may be granted.
        if set.first_internal != m.internal_port || options.prefer_failure {
            return Err(Refusal::Answer(ResultCode::MalformedOption));
        }
    }
    Ok(Request {
        lifetime,
        client,
        body,
        options,
    })
}

/// The options after the opcode's payload. Each is code, reserved, length, then the data
/// padded to four bytes (RFC 6887 section 7.3).
fn parse_options(opcode: Opcode, mut b: &[u8]) -> Result<Options, Refusal> {
    let malformed = Refusal::Answer(ResultCode::MalformedOption);
    let mut o = Options::default();
    while !b.is_empty() {
        let Some(&[code, _, l0, l1]) = b.first_chunk::<4>() else {
            return Err(malformed);
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let padded = len.div_ceil(4) * 4;
        let Some(data) = b.get(4..4 + len) else {
            return Err(malformed);
        };
        let next = b.get(4 + padded..).ok_or(malformed)?;
        // Which opcodes each option belongs to (RFC 6887 sections 13.1-13.3).
        let allowed = match code {
            option::THIRD_PARTY => opcode != Opcode::Announce,
            option::PREFER_FAILURE | option::FILTER | option::PORT_SET => opcode == Opcode::Map,
            c if c >= option::OPTIONAL => true,
            _ => return Err(Refusal::Answer(ResultCode::UnsuppOption)),
        };
        if !allowed {
            return Err(malformed);
        }
        match code {
            option::THIRD_PARTY => {
                let addr = <[u8; 16]>::try_from(data).map_err(|_| malformed)?;
                if o.third_party.replace(addr).is_some() {
                    return Err(malformed);
                }
            }
            option::PREFER_FAILURE => {
                if len != 0 || o.prefer_failure {
                    return Err(malformed);
                }
                o.prefer_failure = true;
            }
            option::FILTER => {
                let f = <[u8; 20]>::try_from(data).map_err(|_| malformed)?;
                let prefix_len = f[1];
                if prefix_len > 128 {
                    return Err(malformed);
                }
                let mut addr = [0u8; 16];
                addr.copy_from_slice(&f[4..20]);
                o.filters.push(Filter {
                    prefix_len,
                    port: u16::from_be_bytes([f[2], f[3]]),
                    addr,
                });
            }
            option::PORT_SET => {
                let d = <[u8; 5]>::try_from(data).map_err(|_| malformed)?;
                let size = u16::from_be_bytes([d[0], d[1]]);
                let set = PortSet {
                    size,
                    first_internal: u16::from_be_bytes([d[2], d[3]]),
                    parity: d[4] & 1 != 0,
                };
                if size == 0 || o.port_set.replace(set).is_some() {
                    return Err(malformed);
                }
            }
            // An optional option this server does not process: skipped.
            _ => {}
        }
        b = next;
    }
    Ok(o)
}

/// A response to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    /// The request's opcode (as a byte: an unsupported opcode is echoed too).
    pub opcode: u8,
    /// The result.
    pub result: ResultCode,
    /// Success: the mapping's lifetime; error: how long the client should wait to retry.
    pub lifetime: u32,
    /// Seconds since the server's state began (RFC 6887 section 8.5).
    pub epoch: u32,
    /// What follows the header: the opcode's payload and options.
    pub payload: Payload<'a>,
}

/// What follows a response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// Nothing (ANNOUNCE, and errors before a payload could be read).
    None,
    /// Bytes copied from the request after its header (error responses, RFC 6887 section
    /// 8.3), cut to what fits and to whole 4-byte words.
    Echo(&'a [u8]),
    /// A MAP's assigned values and the options it processed.
    Map(MapBody, &'a Options),
    /// A PEER's assigned values and the options it processed.
    Peer(PeerBody, &'a Options),
}

/// Writes `r` into `out` and returns its length. `out` must hold [`MAX_MESSAGE`] bytes; a
/// shorter buffer gets what fits of a header-only response.
pub fn write_response(out: &mut [u8], r: &Response<'_>) -> usize {
    let Some(h) = out.first_chunk_mut::<HEADER>() else {
        return 0;
    };
    h[0] = VERSION;
    h[1] = (r.opcode & !RESPONSE_BIT) | RESPONSE_BIT;
    h[2] = 0;
    h[3] = r.result as u8;
    h[4..8].copy_from_slice(&r.lifetime.to_be_bytes());
    h[8..12].copy_from_slice(&r.epoch.to_be_bytes());
    h[12..24].fill(0);
    if out.len() < MAX_MESSAGE {
        return HEADER;
    }
    let body = &mut out[HEADER..MAX_MESSAGE];
    let n = match r.payload {
        Payload::None => 0,
        Payload::Echo(bytes) => {
            let n = bytes.len().min(body.len()) / 4 * 4;
            body[..n].copy_from_slice(&bytes[..n]);
            n
        }
        Payload::Map(m, opts) => {
            m.write(body);
            MAP_BODY + write_options(&mut body[MAP_BODY..], opts)
        }
        Payload::Peer(p, opts) => {
            p.map.write(body);
            body[36..38].copy_from_slice(&p.remote_port.to_be_bytes());
            body[38..40].fill(0);
            body[40..56].copy_from_slice(&p.remote_addr);
            PEER_BODY + write_options(&mut body[PEER_BODY..], opts)
        }
    };
    HEADER + n
}

/// Writes the processed options a success response repeats (RFC 6887 section 7.3); returns
/// their length. Options that do not fit are left out.
fn write_options(out: &mut [u8], o: &Options) -> usize {
    let mut n = 0;
    let mut put = |code: u8, data: &[u8]| {
        // The data is padded to a multiple of four bytes; the length says what is data.
        let end = n + 4 + data.len().div_ceil(4) * 4;
        if let Some(dst) = out.get_mut(n..end) {
            dst[0] = code;
            dst[1] = 0;
            dst[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
            dst[4..4 + data.len()].copy_from_slice(data);
            dst[4 + data.len()..].fill(0);
            n = end;
        }
    };
    if let Some(tp) = &o.third_party {
        put(option::THIRD_PARTY, tp);
    }
    if o.prefer_failure {
        put(option::PREFER_FAILURE, &[]);
    }
    for f in &o.filters {
        let mut d = [0u8; 20];
        d[1] = f.prefix_len;
        d[2..4].copy_from_slice(&f.port.to_be_bytes());
        d[4..].copy_from_slice(&f.addr);
        put(option::FILTER, &d);
    }
    if let Some(s) = o.port_set {
        let mut d = [0u8; 5];
        d[..2].copy_from_slice(&s.size.to_be_bytes());
        d[2..4].copy_from_slice(&s.first_internal.to_be_bytes());
        d[4] = u8::from(s.parity);
        put(option::PORT_SET, &d);
    }
    n
}

#[cfg(test)]
mod tests;
