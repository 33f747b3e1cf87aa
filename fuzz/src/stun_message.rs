//! The body of the `stun_message` target: arbitrary datagrams to the STUN codec and the
//! discovery server (`natgate_core::stun`). Nothing may panic; what parses must write back to
//! bytes that parse the same; every answer must be a STUN response to the request's
//! transaction, sent from one of the server's sockets.

use natgate_core::stun::wire::{Class, Message};
use natgate_core::stun::{ServerAddresses, SocketId, StunServer, Which};
use std::net::{Ipv4Addr, SocketAddr};

/// Runs one input: the first byte picks the socket it arrives on and whether the server has
/// an alternate address; the rest is the datagram.
pub fn run(data: &[u8]) {
    let Some((&first, datagram)) = data.split_first() else {
        return;
    };
    if let Ok(m) = Message::parse(datagram)
        && let Ok(bytes) = m.encode()
    {
        assert_eq!(
            Message::parse(&bytes).as_ref(),
            Ok(&m),
            "written back differently"
        );
    }
    let addresses = ServerAddresses {
        addresses: (
            Ipv4Addr::new(203, 0, 113, 10).into(),
            (first & 4 != 0).then_some(Ipv4Addr::new(203, 0, 113, 11).into()),
        ),
        ports: (3478, 3479),
    };
    let pick = |bit| {
        if first & bit != 0 {
            Which::Alternate
        } else {
            Which::Primary
        }
    };
    let on = SocketId {
        address: if addresses.addresses.1.is_some() {
            pick(1)
        } else {
            Which::Primary
        },
        port: pick(2),
    };
    let server = StunServer::new(addresses, "fuzz");
    let client = SocketAddr::from(([198, 51, 100, 1], 40_000));
    if let Some(reply) = server.handle(on, client, datagram) {
        assert!(
            addresses.address_of(reply.from).is_some(),
            "from a socket it has"
        );
        let answer = Message::parse(&reply.bytes).expect("the answer parses");
        let request = Message::parse(datagram).expect("only requests are answered");
        assert_eq!(answer.transaction, request.transaction);
        assert!(matches!(answer.class, Class::Success | Class::Error));
    }
}
