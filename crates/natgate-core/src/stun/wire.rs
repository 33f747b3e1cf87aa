//! STUN messages (RFC 5389) with the attributes of NAT behaviour discovery (RFC 5780): parsed
//! from untrusted bytes without panicking, and written.
//!
//! A message is a 20-byte header (type, length, the magic cookie, a 96-bit transaction id) and
//! attributes, each a type, a length and a value padded to 4 bytes. Only what a Binding server
//! and a discovery client need is decoded; other attributes are kept as raw type and value, so
//! that a server can name the comprehension-required ones it does not know (RFC 5389 section
//! 7.3.1).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie every RFC 5389 message carries (section 6).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Bytes of the header.
pub const HEADER_LEN: usize = 20;
/// The Binding method (RFC 5389 section 18.1).
pub const BINDING: Method = Method(0x001);
/// The most bytes a message may have here: one unfragmented UDP datagram of the lab.
pub const MAX_MESSAGE: usize = 1500;

/// Attribute types (RFC 5389 section 18.2, RFC 5780 section 9).
pub mod attr {
    /// MAPPED-ADDRESS: the client's address, plainly (RFC 3489 clients read it).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST: answer from the other address and/or port (RFC 5780 section 7.2).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES: the comprehension-required attributes not understood.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// XOR-MAPPED-ADDRESS: the client's address, XORed so that ALGs leave it alone.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESPONSE-PORT: send the answer to this port of the client's address (RFC 5780 7.5).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// RESPONSE-ORIGIN: where the answer was sent from (RFC 5780 section 7.3).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS: the server's other address and port (RFC 5780 section 7.4).
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// A STUN method: 12 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(u16);

impl Method {
    /// The method `m`, if it fits in 12 bits.
    pub const fn new(m: u16) -> Option<Method> {
        if m < 0x1000 { Some(Method(m)) } else { None }
    }

    /// Its number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A message's class (RFC 5389 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request: expects a response.
    Request,
    /// An indication: expects nothing.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    const fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// The 96-bit transaction id that pairs a response with its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// An error response's code (RFC 5389 section 15.6): 300 to 699.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(u16);

impl ErrorCode {
    /// 400 Bad Request: malformed.
    pub const BAD_REQUEST: ErrorCode = ErrorCode(400);
    /// 420 Unknown Attribute: a comprehension-required attribute was not understood, or
    /// (RFC 5780 section 6.1) a CHANGE-REQUEST the server cannot honour.
    pub const UNKNOWN_ATTRIBUTE: ErrorCode = ErrorCode(420);

    /// The code `c`, if it is one (300 to 699).
    pub const fn new(c: u16) -> Option<ErrorCode> {
        if c >= 300 && c <= 699 {
            Some(ErrorCode(c))
        } else {
            None
        }
    }

    /// Its number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// One attribute, decoded where this module knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// MAPPED-ADDRESS.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS, un-XORed.
    XorMappedAddress(SocketAddr),
    /// CHANGE-REQUEST.
    ChangeRequest {
        /// Answer from the other address.
        ip: bool,
        /// Answer from the other port.
        port: bool,
    },
    /// RESPONSE-PORT.
    ResponsePort(u16),
    /// RESPONSE-ORIGIN.
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS.
    OtherAddress(SocketAddr),
    /// ERROR-CODE with its reason phrase.
    ErrorCode(ErrorCode, String),
    /// UNKNOWN-ATTRIBUTES.
    UnknownAttributes(Vec<u16>),
    /// SOFTWARE.
    Software(String),
    /// Any other attribute, as it came.
    Other {
        /// Its type.
        kind: u16,
        /// Its value, without padding.
        value: Vec<u8>,
    },
}

impl Attribute {
    /// Its type.
    pub fn kind(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => attr::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => attr::XOR_MAPPED_ADDRESS,
            Attribute::ChangeRequest { .. } => attr::CHANGE_REQUEST,
            Attribute::ResponsePort(_) => attr::RESPONSE_PORT,
            Attribute::ResponseOrigin(_) => attr::RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => attr::OTHER_ADDRESS,
            Attribute::ErrorCode(..) => attr::ERROR_CODE,
            Attribute::UnknownAttributes(_) => attr::UNKNOWN_ATTRIBUTES,
            Attribute::Software(_) => attr::SOFTWARE,
            Attribute::Other { kind, .. } => *kind,
        }
    }

    /// Whether a receiver that does not know it must refuse the message (types below 0x8000,
    /// RFC 5389 section 15).
    pub fn comprehension_required(kind: u16) -> bool {
        kind < 0x8000
    }
}

/// A STUN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its method.
    pub method: Method,
    /// Its class.
    pub class: Class,
    /// Its transaction id.
    pub transaction: TransactionId,
    /// Its attributes, in order.
    pub attributes: Vec<Attribute>,
}

/// Why bytes are not a STUN message (or not one this module can read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than a header, or than the header says.
    #[error("truncated")]
    Truncated,
    /// The first two bits are not zero: not STUN (RFC 5389 section 6).
    #[error("not a STUN message (leading bits)")]
    NotStun,
    /// No magic cookie: an RFC 3489 message or not STUN at all.
    #[error("no magic cookie")]
    NoMagicCookie,
    /// The length is not a multiple of 4, or does not match the datagram.
    #[error("bad message length")]
    BadLength,
    /// An attribute runs past the message's end.
    #[error("attribute {0:#06x} runs past the end")]
    AttributeOverrun(u16),
    /// A known attribute's value is malformed.
    #[error("attribute {0:#06x} is malformed")]
    BadAttribute(u16),
    /// Writing: the message would exceed [`MAX_MESSAGE`].
    #[error("message too long")]
    TooLong,
}

/// Whether `bytes` start like a STUN message (leading bits and magic cookie), for a socket
/// that also gets other traffic.
pub fn looks_like_stun(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN
        && bytes[0] & 0xC0 == 0
        && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == MAGIC_COOKIE
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl Message {
    /// A Binding request with `transaction` and `attributes`.
    pub fn binding_request(transaction: TransactionId, attributes: Vec<Attribute>) -> Message {
        Message {
            method: BINDING,
            class: Class::Request,
            transaction,
            attributes,
        }
    }

    /// Parses one message that fills `bytes` exactly (a UDP datagram). Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let kind = be16(bytes, 0).ok_or(WireError::Truncated)?;
        if kind & 0xC000 != 0 {
            return Err(WireError::NotStun);
        }
        let len = usize::from(be16(bytes, 2).ok_or(WireError::Truncated)?);
        if !looks_like_stun(bytes) {
            return Err(WireError::NoMagicCookie);
        }
        if !len.is_multiple_of(4) || HEADER_LEN + len != bytes.len() {
            return Err(WireError::BadLength);
        }
        // Method bits M11..M0 are split around the class bits C1 (bit 8) and C0 (bit 4).
        let method = (kind & 0x000F) | ((kind & 0x00E0) >> 1) | ((kind & 0x3E00) >> 2);
        let class = match ((kind >> 7) & 0b10) | ((kind >> 4) & 0b01) {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        };
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&bytes[8..HEADER_LEN]);
        let transaction = TransactionId(transaction);
        let mut attributes = Vec::new();
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            let kind = be16(bytes, at).ok_or(WireError::Truncated)?;
            let alen = usize::from(be16(bytes, at + 2).ok_or(WireError::Truncated)?);
            let start = at + 4;
            let value = bytes
                .get(start..start + alen)
                .ok_or(WireError::AttributeOverrun(kind))?;
            let padded = start + alen.div_ceil(4) * 4;
            if padded > bytes.len() {
                return Err(WireError::AttributeOverrun(kind));
            }
            attributes.push(decode_attribute(kind, value, &transaction)?);
            at = padded;
        }
        Ok(Message {
            method: Method(method),
            class,
            transaction,
            attributes,
        })
    }

    /// Writes the message. Fails only when it would exceed [`MAX_MESSAGE`].
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let m = self.method.0;
        let c = self.class.bits();
        let kind = (m & 0x000F)
            | ((m & 0x0070) << 1)
            | ((m & 0x0F80) << 2)
            | ((c & 0b01) << 4)
            | ((c & 0b10) << 7);
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction.0);
        for a in &self.attributes {
            let value = encode_attribute(a, &self.transaction);
            let len = u16::try_from(value.len()).map_err(|_| WireError::TooLong)?;
            out.extend_from_slice(&a.kind().to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&value);
            out.resize(out.len().div_ceil(4) * 4, 0);
            if out.len() > MAX_MESSAGE {
                return Err(WireError::TooLong);
            }
        }
        let body = u16::try_from(out.len() - HEADER_LEN).map_err(|_| WireError::TooLong)?;
        out[2..4].copy_from_slice(&body.to_be_bytes());
        Ok(out)
    }

    /// The first attribute `f` picks out.
    pub fn find<T>(&self, f: impl FnMut(&Attribute) -> Option<T>) -> Option<T> {
        self.attributes.iter().find_map(f)
    }

    /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorMappedAddress(x) => Some(*x),
            _ => None,
        })
        .or_else(|| {
            self.find(|a| match a {
                Attribute::MappedAddress(x) => Some(*x),
                _ => None,
            })
        })
    }
}

/// The XOR mask of an address: the cookie, then for IPv6 the transaction id (RFC 5389 15.2).
fn xor_mask(transaction: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&transaction.0);
    mask
}

/// An address attribute's value: a reserved byte, the family, the port, the address.
fn decode_address(
    kind: u16,
    v: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, WireError> {
    let bad = WireError::BadAttribute(kind);
    let family = *v.get(1).ok_or(bad)?;
    let mut port = be16(v, 2).ok_or(bad)?;
    let mask = xor.map(xor_mask);
    if mask.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let mut addr = [0u8; 16];
    let n = match family {
        0x01 if v.len() == 8 => 4,
        0x02 if v.len() == 20 => 16,
        _ => return Err(bad),
    };
    for (i, b) in addr[..n].iter_mut().enumerate() {
        *b = v[4 + i] ^ mask.map_or(0, |m| m[i]);
    }
    let ip = if n == 4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    };
    Ok(SocketAddr::new(ip, port))
}

fn encode_address(a: SocketAddr, xor: Option<&TransactionId>) -> Vec<u8> {
    let mask = xor.map(xor_mask);
    let port = if mask.is_some() {
        a.port() ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        a.port()
    };
    let (family, octets): (u8, Vec<u8>) = match a.ip() {
        IpAddr::V4(ip) => (0x01, ip.octets().to_vec()),
        IpAddr::V6(ip) => (0x02, ip.octets().to_vec()),
    };
    let mut v = vec![0, family];
    v.extend_from_slice(&port.to_be_bytes());
    v.extend(
        octets
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask.map_or(0, |m| m[i])),
    );
    v
}

fn utf8(kind: u16, v: &[u8]) -> Result<String, WireError> {
    String::from_utf8(v.to_vec()).map_err(|_| WireError::BadAttribute(kind))
}

fn decode_attribute(kind: u16, v: &[u8], t: &TransactionId) -> Result<Attribute, WireError> {
    let bad = WireError::BadAttribute(kind);
    Ok(match kind {
        attr::MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(kind, v, None)?),
        attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_address(kind, v, Some(t))?),
        attr::RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_address(kind, v, None)?),
        attr::OTHER_ADDRESS => Attribute::OtherAddress(decode_address(kind, v, None)?),
        attr::CHANGE_REQUEST => {
            if v.len() != 4 {
                return Err(bad);
            }
            Attribute::ChangeRequest {
                ip: v[3] & 0x04 != 0,
                port: v[3] & 0x02 != 0,
            }
        }
        attr::RESPONSE_PORT => {
            if v.len() != 4 {
                return Err(bad);
            }
            Attribute::ResponsePort(be16(v, 0).ok_or(bad)?)
        }
        attr::ERROR_CODE => {
            if v.len() < 4 {
                return Err(bad);
            }
            let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
            let code = ErrorCode::new(code).filter(|_| v[3] < 100).ok_or(bad)?;
            Attribute::ErrorCode(code, utf8(kind, &v[4..])?)
        }
        attr::UNKNOWN_ATTRIBUTES => {
            if !v.len().is_multiple_of(2) {
                return Err(bad);
            }
            Attribute::UnknownAttributes(
                v.chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        attr::SOFTWARE => Attribute::Software(utf8(kind, v)?),
        _ => Attribute::Other {
            kind,
            value: v.to_vec(),
        },
    })
}

fn encode_attribute(a: &Attribute, t: &TransactionId) -> Vec<u8> {
    match a {
        Attribute::MappedAddress(x) | Attribute::ResponseOrigin(x) | Attribute::OtherAddress(x) => {
            encode_address(*x, None)
        }
        Attribute::XorMappedAddress(x) => encode_address(*x, Some(t)),
        Attribute::ChangeRequest { ip, port } => {
            vec![0, 0, 0, (u8::from(*ip) << 2) | (u8::from(*port) << 1)]
        }
        Attribute::ResponsePort(p) => {
            let mut v = p.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 0]);
            v
        }
        Attribute::ErrorCode(code, reason) => {
            let c = code.get();
            let mut v = vec![0, 0, (c / 100) as u8, (c % 100) as u8];
            v.extend_from_slice(reason.as_bytes());
            v
        }
        Attribute::UnknownAttributes(kinds) => kinds.iter().flat_map(|k| k.to_be_bytes()).collect(),
        Attribute::Software(s) => s.as_bytes().to_vec(),
        Attribute::Other { value, .. } => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 section 2.2: a sample IPv4 Binding response ("test vector" in the RFC's
    /// words), without its MESSAGE-INTEGRITY and FINGERPRINT (this module does not check
    /// them; they parse as other attributes).
    static RESPONSE_BYTES: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    #[test]
    fn rfc5769_sample_response_parses() {
        let m = Message::parse(&RESPONSE_BYTES).expect("parses");
        assert_eq!((m.method, m.class), (BINDING, Class::Success));
        assert_eq!(
            m.transaction.0,
            [
                0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae
            ]
        );
        assert_eq!(m.attributes[0], Attribute::Software("test vector".into()));
        assert_eq!(
            m.mapped_address(),
            Some("192.0.2.1:32853".parse().expect("addr"))
        );
        assert!(matches!(
            m.attributes[2],
            Attribute::Other { kind: 0x0008, .. }
        ));
        assert_eq!(m.attributes.len(), 4);
    }

    #[test]
    fn request_with_change_request_round_trips_byte_for_byte() {
        let t = TransactionId([7; 12]);
        let m = Message::binding_request(
            t,
            vec![Attribute::ChangeRequest {
                ip: true,
                port: false,
            }],
        );
        let bytes = m.encode().expect("encodes");
        assert_eq!(
            &bytes[..],
            &[
                0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
                0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0x04
            ][..]
        );
        assert_eq!(Message::parse(&bytes), Ok(m));
    }

    #[test]
    fn error_class_and_code() {
        let m = Message {
            method: BINDING,
            class: Class::Error,
            transaction: TransactionId([1; 12]),
            attributes: vec![
                Attribute::ErrorCode(ErrorCode::UNKNOWN_ATTRIBUTE, "Unknown Attribute".into()),
                Attribute::UnknownAttributes(vec![0x0003, 0x0027]),
            ],
        };
        let bytes = m.encode().expect("encodes");
        assert_eq!(u16::from_be_bytes([bytes[0], bytes[1]]), 0x0111);
        assert_eq!(Message::parse(&bytes), Ok(m));
    }

    #[test]
    fn refusals() {
        assert_eq!(Message::parse(&[0; 19]), Err(WireError::Truncated));
        let mut b = Message::binding_request(TransactionId([0; 12]), vec![])
            .encode()
            .expect("encodes");
        b[0] = 0x80;
        assert_eq!(Message::parse(&b), Err(WireError::NotStun));
        b[0] = 0;
        b[4] = 0;
        assert_eq!(Message::parse(&b), Err(WireError::NoMagicCookie));
        b[4] = 0x21;
        b[3] = 4;
        assert_eq!(Message::parse(&b), Err(WireError::BadLength));
        // An attribute claiming more than the message holds.
        let mut b = b[..20].to_vec();
        b[3] = 4;
        b.extend_from_slice(&[0x80, 0x22, 0x00, 0x08]);
        assert_eq!(Message::parse(&b), Err(WireError::AttributeOverrun(0x8022)));
        assert!(Method::new(0x1000).is_none() && ErrorCode::new(299).is_none());
    }

    fn address() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::from((a, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(a, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
        ]
    }

    fn attribute() -> impl Strategy<Value = Attribute> {
        prop_oneof![
            address().prop_map(Attribute::MappedAddress),
            address().prop_map(Attribute::XorMappedAddress),
            address().prop_map(Attribute::ResponseOrigin),
            address().prop_map(Attribute::OtherAddress),
            (any::<bool>(), any::<bool>())
                .prop_map(|(ip, port)| Attribute::ChangeRequest { ip, port }),
            any::<u16>().prop_map(Attribute::ResponsePort),
            (300u16..700, "[a-z ]{0,20}")
                .prop_map(|(c, r)| Attribute::ErrorCode(ErrorCode::new(c).expect("in range"), r)),
            prop::collection::vec(any::<u16>(), 0..4).prop_map(Attribute::UnknownAttributes),
            "[a-z0-9 ]{0,30}".prop_map(Attribute::Software),
            (0x8030u16..0xffff, prop::collection::vec(any::<u8>(), 0..9))
                .prop_map(|(kind, value)| Attribute::Other { kind, value }),
        ]
    }

    proptest! {
        #[test]
        fn any_message_round_trips(
            method in 0u16..0x1000,
            class in prop_oneof![Just(Class::Request), Just(Class::Indication), Just(Class::Success), Just(Class::Error)],
            t in any::<[u8; 12]>(),
            attributes in prop::collection::vec(attribute(), 0..6),
        ) {
            let m = Message {
                method: Method::new(method).expect("12 bits"),
                class,
                transaction: TransactionId(t),
                attributes,
            };
            let bytes = m.encode().expect("small enough");
            prop_assert!(looks_like_stun(&bytes));
            prop_assert_eq!(Message::parse(&bytes), Ok(m));
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::parse(&bytes);
        }

        #[test]
        fn damaged_messages_parse_without_panic(
            attributes in prop::collection::vec(attribute(), 0..4),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = Message::binding_request(TransactionId([3; 12]), attributes)
                .encode()
                .expect("encodes");
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            if let Ok(m) = Message::parse(&bytes) {
                // What parses writes back to something that parses the same.
                let again = m.encode().expect("encodes");
                prop_assert_eq!(Message::parse(&again), Ok(m));
            }
        }
    }
}
