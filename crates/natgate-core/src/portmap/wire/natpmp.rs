//! NAT-PMP (RFC 6886) messages: requests parsed, responses written. Every field is in network
//! byte order; a request is version 0, an opcode, and for mappings a fixed 12-byte layout.

use std::net::Ipv4Addr;

/// The NAT-PMP version (RFC 6886 section 3).
pub const VERSION: u8 = 0;
/// Responses carry the request's opcode plus 128 (RFC 6886 section 3.2).
pub const RESPONSE_BIT: u8 = 128;

/// NAT-PMP result codes (RFC 6886 section 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ResultCode {
    /// Success.
    Success = 0,
    /// Unsupported version.
    UnsupportedVersion = 1,
    /// Not authorized or refused (the box supports mapping but the user turned it off, or the
    /// request is for another host).
    NotAuthorized = 2,
    /// Network failure (the gateway has no external address).
    NetworkFailure = 3,
    /// Out of resources (no ports left, or the client's limit reached).
    OutOfResources = 4,
    /// Unsupported opcode.
    UnsupportedOpcode = 5,
}

impl ResultCode {
    /// Every code, in numeric order.
    pub const ALL: [ResultCode; 6] = [
        ResultCode::Success,
        ResultCode::UnsupportedVersion,
        ResultCode::NotAuthorized,
        ResultCode::NetworkFailure,
        ResultCode::OutOfResources,
        ResultCode::UnsupportedOpcode,
    ];

    /// A lower-case name: the metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "success",
            ResultCode::UnsupportedVersion => "unsupported_version",
            ResultCode::NotAuthorized => "not_authorized",
            ResultCode::NetworkFailure => "network_failure",
            ResultCode::OutOfResources => "out_of_resources",
            ResultCode::UnsupportedOpcode => "unsupported_opcode",
        }
    }
}

/// A mapping's protocol by its NAT-PMP opcode (RFC 6886 section 3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapProto {
    /// Opcode 1.
    Udp,
    /// Opcode 2.
    Tcp,
}

impl MapProto {
    /// The request opcode.
    pub const fn opcode(self) -> u8 {
        match self {
            MapProto::Udp => 1,
            MapProto::Tcp => 2,
        }
    }
}

/// A well-formed NAT-PMP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Opcode 0: what is the external address (RFC 6886 section 3.2).
    PublicAddress,
    /// Opcode 1 or 2: map, renew, or with lifetime 0 delete (RFC 6886 section 3.3, 3.4).
    Map {
        /// The protocol.
        proto: MapProto,
        /// The client's port; 0 with lifetime 0 deletes all the client's mappings.
        internal_port: u16,
        /// The external port the client would like; a hint.
        suggested_port: u16,
        /// Requested lifetime in seconds; 0 deletes.
        lifetime: u32,
    },
}

/// Why bytes are not a NAT-PMP request the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its opcode's layout (or than the two-byte header).
    #[error("request shorter than its opcode's layout")]
    Truncated,
    /// The version is not 0 (answered with result 1 by the caller).
    #[error("version is not 0")]
    Version(u8),
    /// Opcode 128 or above: a response, never answered (RFC 6886 section 3.2).
    #[error("a response, not a request")]
    Response,
    /// An opcode below 128 that is not 0, 1 or 2 (answered with result 5).
    #[error("unsupported opcode {0}")]
    UnsupportedOpcode(u8),
}

/// Parses a request. Bytes past an opcode's layout are ignored (RFC 6886 leaves them
/// undefined; clients send exactly the layout).
pub fn parse(b: &[u8]) -> Result<Request, ParseError> {
    let [version, opcode, rest @ ..] = b else {
        return Err(ParseError::Truncated);
    };
    if *version != VERSION {
        return Err(ParseError::Version(*version));
    }
    let proto = match *opcode {
        0 => return Ok(Request::PublicAddress),
        1 => MapProto::Udp,
        2 => MapProto::Tcp,
        op if op >= RESPONSE_BIT => return Err(ParseError::Response),
        op => return Err(ParseError::UnsupportedOpcode(op)),
    };
    // Reserved (2), internal port (2), suggested external port (2), lifetime (4).
    let Some(f) = rest.get(..10) else {
        return Err(ParseError::Truncated);
    };
    Ok(Request::Map {
        proto,
        internal_port: u16::from_be_bytes([f[2], f[3]]),
        suggested_port: u16::from_be_bytes([f[4], f[5]]),
        lifetime: u32::from_be_bytes([f[6], f[7], f[8], f[9]]),
    })
}

/// Size of the largest response; callers' buffers need this much.
pub const MAX_RESPONSE: usize = 16;

/// The common start of every response: version, opcode + 128, result, epoch (8 bytes). The
/// whole response when the opcode is unsupported or the version is wrong (RFC 6886 3.5).
pub fn write_header(
    out: &mut [u8; MAX_RESPONSE],
    opcode: u8,
    result: ResultCode,
    epoch: u32,
) -> usize {
    out[0] = VERSION;
    out[1] = opcode | RESPONSE_BIT;
    out[2..4].copy_from_slice(&(result as u16).to_be_bytes());
    out[4..8].copy_from_slice(&epoch.to_be_bytes());
    8
}

/// The public address response (RFC 6886 section 3.2): 12 bytes.
pub fn write_public_address(
    out: &mut [u8; MAX_RESPONSE],
    result: ResultCode,
    epoch: u32,
    addr: Ipv4Addr,
) -> usize {
    write_header(out, 0, result, epoch);
    out[8..12].copy_from_slice(&addr.octets());
    12
}

/// A mapping response (RFC 6886 section 3.3): 16 bytes.
pub fn write_map(
    out: &mut [u8; MAX_RESPONSE],
    proto: MapProto,
    result: ResultCode,
    epoch: u32,
    internal_port: u16,
    external_port: u16,
    lifetime: u32,
) -> usize {
    write_header(out, proto.opcode(), result, epoch);
    out[8..10].copy_from_slice(&internal_port.to_be_bytes());
    out[10..12].copy_from_slice(&external_port.to_be_bytes());
    out[12..16].copy_from_slice(&lifetime.to_be_bytes());
    16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6886 section 3.2: version 0, opcode 0.
    static PUBLIC_ADDRESS_REQUEST: [u8; 2] = [0, 0];
    /// RFC 6886 section 3.3: TCP (opcode 2), internal port 22, suggested 2222, 7200 s.
    static MAP_TCP_REQUEST: [u8; 12] = [0, 2, 0, 0, 0, 22, 0x08, 0xae, 0, 0, 0x1c, 0x20];
    /// RFC 6886 section 3.4: delete all UDP mappings (port 0, lifetime 0).
    static DELETE_ALL_UDP_REQUEST: [u8; 12] = [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    /// RFC 6886 section 3.2: success, epoch 1000, 198.51.100.1.
    static PUBLIC_ADDRESS_RESPONSE: [u8; 12] = [0, 128, 0, 0, 0, 0, 0x03, 0xe8, 198, 51, 100, 1];
    /// RFC 6886 section 3.3: UDP, success, epoch 5, internal 5000 -> external 40000, 3600 s.
    static MAP_UDP_RESPONSE: [u8; 16] = [
        0, 129, 0, 0, 0, 0, 0, 5, 0x13, 0x88, 0x9c, 0x40, 0, 0, 0x0e, 0x10,
    ];

    #[test]
    fn parses_every_opcode() {
        assert_eq!(parse(&PUBLIC_ADDRESS_REQUEST), Ok(Request::PublicAddress));
        assert_eq!(
            parse(&MAP_TCP_REQUEST),
            Ok(Request::Map {
                proto: MapProto::Tcp,
                internal_port: 22,
                suggested_port: 2222,
                lifetime: 7200
            })
        );
        assert_eq!(
            parse(&DELETE_ALL_UDP_REQUEST),
            Ok(Request::Map {
                proto: MapProto::Udp,
                internal_port: 0,
                suggested_port: 0,
                lifetime: 0
            })
        );
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0]), Err(ParseError::Truncated));
        assert_eq!(parse(&MAP_TCP_REQUEST[..11]), Err(ParseError::Truncated));
        assert_eq!(parse(&[1, 0]), Err(ParseError::Version(1)));
        assert_eq!(parse(&[0, 3]), Err(ParseError::UnsupportedOpcode(3)));
        assert_eq!(parse(&[0, 127]), Err(ParseError::UnsupportedOpcode(127)));
        assert_eq!(parse(&PUBLIC_ADDRESS_RESPONSE), Err(ParseError::Response));
    }

    #[test]
    fn writes_every_response() {
        let mut out = [0u8; MAX_RESPONSE];
        let n = write_public_address(
            &mut out,
            ResultCode::Success,
            1000,
            Ipv4Addr::new(198, 51, 100, 1),
        );
        assert_eq!(&out[..n], &PUBLIC_ADDRESS_RESPONSE);
        let n = write_map(
            &mut out,
            MapProto::Udp,
            ResultCode::Success,
            5,
            5000,
            40000,
            3600,
        );
        assert_eq!(&out[..n], &MAP_UDP_RESPONSE);
        let n = write_header(&mut out, 3, ResultCode::UnsupportedOpcode, 5);
        assert_eq!(&out[..n], &[0, 131, 0, 5, 0, 0, 0, 5]);
        for (code, v) in [
            (ResultCode::UnsupportedVersion, 1),
            (ResultCode::NotAuthorized, 2),
            (ResultCode::NetworkFailure, 3),
            (ResultCode::OutOfResources, 4),
        ] {
            write_header(&mut out, 0, code, 0);
            assert_eq!(out[2..4], [0, v]);
        }
    }
}
