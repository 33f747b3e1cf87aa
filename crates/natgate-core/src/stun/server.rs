//! A STUN Binding server for NAT behaviour discovery (RFC 5389 section 10, RFC 5780 section
//! 6): which answer a request gets, and from which of the server's sockets it goes. Sans-IO:
//! the driver owns one socket per (address, port) pair and hands each datagram in with the
//! socket it arrived on.

use std::net::{IpAddr, SocketAddr};

use super::wire::{Attribute, BINDING, Class, ErrorCode, Message, attr};

/// Which of the server's two addresses or two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Which {
    /// The first (primary) one.
    Primary,
    /// The second (alternate) one.
    Alternate,
}

impl Which {
    /// The other one.
    pub const fn other(self) -> Which {
        match self {
            Which::Primary => Which::Alternate,
            Which::Alternate => Which::Primary,
        }
    }
}

/// One of the server's sockets: an address and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    /// Its address.
    pub address: Which,
    /// Its port.
    pub port: Which,
}

/// The server's addresses and ports. RFC 5780 discovery needs two of each; with one address
/// the server still answers, and refuses requests to change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAddresses {
    /// The primary and, if any, the alternate address.
    pub addresses: (IpAddr, Option<IpAddr>),
    /// The primary and alternate port.
    pub ports: (u16, u16),
}

impl ServerAddresses {
    /// Every socket the server needs, each with its address.
    pub fn sockets(&self) -> Vec<(SocketId, SocketAddr)> {
        let mut v = Vec::new();
        for address in [Which::Primary, Which::Alternate] {
            for port in [Which::Primary, Which::Alternate] {
                let id = SocketId { address, port };
                if let Some(a) = self.address_of(id) {
                    v.push((id, a));
                }
            }
        }
        v
    }

    /// The transport address of socket `id`, if the server has it.
    pub fn address_of(&self, id: SocketId) -> Option<SocketAddr> {
        let ip = match id.address {
            Which::Primary => Some(self.addresses.0),
            Which::Alternate => self.addresses.1,
        }?;
        let port = match id.port {
            Which::Primary => self.ports.0,
            Which::Alternate => self.ports.1,
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// What to send: `bytes` from socket `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The socket to send from.
    pub from: SocketId,
    /// The destination.
    pub to: SocketAddr,
    /// The message.
    pub bytes: Vec<u8>,
}

/// The server's answers: one per request, nothing for anything else.
#[derive(Debug, Clone)]
pub struct StunServer {
    addresses: ServerAddresses,
    software: String,
}

impl StunServer {
    /// A server on `addresses`, naming itself `software` in its answers.
    pub fn new(addresses: ServerAddresses, software: impl Into<String>) -> Self {
        StunServer {
            addresses,
            software: software.into(),
        }
    }

    /// The answer to `datagram`, which arrived on socket `on` from `client`. A Binding
    /// request gets a success response from the socket CHANGE-REQUEST asks for, sent to
    /// RESPONSE-PORT if it names one (RFC 5780 sections 7.2, 7.5); one the server cannot
    /// honour, or with a comprehension-required attribute it does not know, gets 420 from
    /// `on` (RFC 5389 section 7.3.1, RFC 5780 section 6.1); anything else (not STUN,
    /// indications, responses, other methods) gets nothing.
    pub fn handle(&self, on: SocketId, client: SocketAddr, datagram: &[u8]) -> Option<Reply> {
        let request = Message::parse(datagram).ok()?;
        if request.class != Class::Request || request.method != BINDING {
            return None;
        }
        let mut unknown = Vec::new();
        let mut change = (false, false);
        let mut response_port = None;
        for a in &request.attributes {
            match a {
                Attribute::ChangeRequest { ip, port } => change = (*ip, *port),
                Attribute::ResponsePort(p) => response_port = Some(*p),
                Attribute::Other { kind, .. } if Attribute::comprehension_required(*kind) => {
                    unknown.push(*kind);
                }
                _ => {}
            }
        }
        let from = SocketId {
            address: if change.0 {
                on.address.other()
            } else {
                on.address
            },
            port: if change.1 { on.port.other() } else { on.port },
        };
        let origin = self.addresses.address_of(from);
        if origin.is_none() {
            unknown.push(attr::CHANGE_REQUEST);
        }
        let other = self.addresses.address_of(SocketId {
            address: on.address.other(),
            port: on.port.other(),
        });
        let (class, attributes, from, to) = match origin {
            Some(origin) if unknown.is_empty() => {
                let mut a = vec![
                    Attribute::XorMappedAddress(client),
                    Attribute::MappedAddress(client),
                    Attribute::ResponseOrigin(origin),
                ];
                a.extend(other.map(Attribute::OtherAddress));
                a.push(Attribute::Software(self.software.clone()));
                let to = SocketAddr::new(client.ip(), response_port.unwrap_or(client.port()));
                (Class::Success, a, from, to)
            }
            _ => (
                Class::Error,
                vec![
                    Attribute::ErrorCode(ErrorCode::UNKNOWN_ATTRIBUTE, "Unknown Attribute".into()),
                    Attribute::UnknownAttributes(unknown),
                    Attribute::Software(self.software.clone()),
                ],
                on,
                client,
            ),
        };
        let bytes = Message {
            method: BINDING,
            class,
            transaction: request.transaction,
            attributes,
        }
        .encode()
        .ok()?;
        Some(Reply { from, to, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::TransactionId;
    use super::*;
    use std::net::Ipv4Addr;

    const A1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const A2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
    const PRIMARY: SocketId = SocketId {
        address: Which::Primary,
        port: Which::Primary,
    };

    fn server(alternate: bool) -> StunServer {
        StunServer::new(
            ServerAddresses {
                addresses: (A1.into(), alternate.then_some(A2.into())),
                ports: (3478, 3479),
            },
            "natgate test",
        )
    }

    fn client() -> SocketAddr {
        "198.51.100.1:40000".parse().expect("addr")
    }

    fn ask(s: &StunServer, on: SocketId, attributes: Vec<Attribute>) -> (Reply, Message) {
        let req = Message::binding_request(TransactionId([9; 12]), attributes)
            .encode()
            .expect("encodes");
        let reply = s.handle(on, client(), &req).expect("answered");
        let m = Message::parse(&reply.bytes).expect("parses");
        assert_eq!(m.transaction, TransactionId([9; 12]));
        (reply, m)
    }

    fn origin(m: &Message) -> Option<SocketAddr> {
        m.find(|a| match a {
            Attribute::ResponseOrigin(x) => Some(*x),
            _ => None,
        })
    }

    #[test]
    fn rfc5389_binding_answers_with_the_mapped_address_from_the_socket_asked() {
        let s = server(true);
        let (r, m) = ask(&s, PRIMARY, vec![]);
        assert_eq!((r.from, r.to, m.class), (PRIMARY, client(), Class::Success));
        assert_eq!(m.mapped_address(), Some(client()));
        assert_eq!(origin(&m), Some(SocketAddr::from((A1, 3478))));
        let other = m.find(|a| match a {
            Attribute::OtherAddress(x) => Some(*x),
            _ => None,
        });
        assert_eq!(other, Some(SocketAddr::from((A2, 3479))), "RFC 5780 7.4");
    }

    #[test]
    fn rfc5780_change_request_picks_the_socket() {
        let s = server(true);
        for (ip, port, want) in [
            (true, true, (A2, 3479)),
            (true, false, (A2, 3478)),
            (false, true, (A1, 3479)),
            (false, false, (A1, 3478)),
        ] {
            let (r, m) = ask(&s, PRIMARY, vec![Attribute::ChangeRequest { ip, port }]);
            let want = SocketAddr::from(want);
            assert_eq!(s.addresses.address_of(r.from), Some(want));
            assert_eq!(origin(&m), Some(want), "ip {ip} port {port}");
        }
        // From the alternate socket, "change" goes back to the primary.
        let alt = SocketId {
            address: Which::Alternate,
            port: Which::Alternate,
        };
        let (r, _) = ask(
            &s,
            alt,
            vec![Attribute::ChangeRequest {
                ip: true,
                port: true,
            }],
        );
        assert_eq!(r.from, PRIMARY);
    }

    #[test]
    fn rfc5780_response_port_redirects_the_answer() {
        let (r, m) = ask(&server(true), PRIMARY, vec![Attribute::ResponsePort(5555)]);
        assert_eq!(r.to, SocketAddr::from(([198, 51, 100, 1], 5555)));
        assert_eq!(
            m.mapped_address(),
            Some(client()),
            "still the request's source"
        );
    }

    #[test]
    fn unknown_required_attributes_and_impossible_changes_get_420() {
        let s = server(false);
        let (r, m) = ask(
            &s,
            PRIMARY,
            vec![Attribute::ChangeRequest {
                ip: true,
                port: false,
            }],
        );
        assert_eq!((r.from, m.class), (PRIMARY, Class::Error));
        assert!(
            m.attributes
                .contains(&Attribute::UnknownAttributes(vec![attr::CHANGE_REQUEST]))
        );
        let (_, m) = ask(
            &s,
            PRIMARY,
            vec![
                Attribute::Other {
                    kind: 0x0030,
                    value: vec![],
                },
                Attribute::Other {
                    kind: 0x8030,
                    value: vec![],
                },
            ],
        );
        assert_eq!(m.class, Class::Error);
        assert!(
            m.attributes
                .contains(&Attribute::UnknownAttributes(vec![0x0030]))
        );
        // One address: no OTHER-ADDRESS, but plain requests are answered.
        let (_, m) = ask(&s, PRIMARY, vec![]);
        assert_eq!(m.class, Class::Success);
        assert!(!m.attributes.iter().any(|a| a.kind() == attr::OTHER_ADDRESS));
    }

    #[test]
    fn only_binding_requests_are_answered() {
        let s = server(true);
        let mut m = Message::binding_request(TransactionId([1; 12]), vec![]);
        m.class = Class::Indication;
        assert_eq!(s.handle(PRIMARY, client(), &m.encode().expect("e")), None);
        m.class = Class::Success;
        assert_eq!(s.handle(PRIMARY, client(), &m.encode().expect("e")), None);
        assert_eq!(s.handle(PRIMARY, client(), b"GET / HTTP/1.1\r\n\r\n"), None);
    }
}
