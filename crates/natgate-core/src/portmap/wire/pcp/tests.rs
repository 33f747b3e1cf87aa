//! Byte fixtures laid out as RFC 6887's figures draw them: the common header (figure 2), MAP
//! (figure 9), PEER (figure 10), options (figure 4) and THIRD_PARTY, PREFER_FAILURE and FILTER
//! (figures 11-13), and the response header (figure 3).

use super::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
const NONCE: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// Header: version 2, opcode, reserved, lifetime, client address (IPv4-mapped).
fn header(opcode: u8, lifetime: u32) -> Vec<u8> {
    let mut v = vec![VERSION, opcode, 0, 0];
    v.extend_from_slice(&lifetime.to_be_bytes());
    v.extend_from_slice(&mapped(CLIENT));
    v
}

/// MAP payload: nonce, protocol, 3 reserved, internal port, suggested port, suggested address.
fn map_payload(protocol: u8, internal: u16, suggested: u16) -> Vec<u8> {
    let mut v = NONCE.to_vec();
    v.extend_from_slice(&[protocol, 0, 0, 0]);
    v.extend_from_slice(&internal.to_be_bytes());
    v.extend_from_slice(&suggested.to_be_bytes());
    v.extend_from_slice(&[0; 16]);
    v
}

fn opt(code: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![code, 0];
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn filter(prefix_len: u8, port: u16, addr: Ipv4Addr) -> Vec<u8> {
    let mut d = vec![0, prefix_len];
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(&mapped(addr));
    opt(option::FILTER, &d)
}

/// A MAP for UDP port 5000, 3600 s, no options, as a literal: what a client on 100.64.0.10
/// sends.
static MAP_UDP_5000: [u8; 60] = [
    2, 1, 0, 0, 0, 0, 0x0e, 0x10, // version, opcode MAP, reserved, lifetime 3600
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 100, 64, 0, 10, // client ::ffff:100.64.0.10
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, // nonce
    17, 0, 0, 0, // protocol UDP, reserved
    0x13, 0x88, 0, 0, // internal port 5000, suggested external port 0
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // suggested external address ::
];

#[test]
fn parses_a_map_request() {
    let r = parse(&MAP_UDP_5000).expect("valid");
    assert_eq!(r.lifetime, 3600);
    assert_eq!(unmapped(&r.client), Some(CLIENT));
    assert_eq!(
        r.body,
        Body::Map(MapBody {
            nonce: NONCE,
            protocol: 17,
            internal_port: 5000,
            external_port: 0,
            external_addr: [0; 16],
        })
    );
    assert_eq!(r.options, Options::default());
    let mut built = header(1, 3600);
    built.extend(map_payload(17, 5000, 0));
    assert_eq!(built, MAP_UDP_5000);
}

#[test]
fn parses_peer_and_announce() {
    let mut b = header(2, 60);
    b.extend(map_payload(6, 4000, 4000));
    b.extend_from_slice(&[0x1f, 0x90, 0, 0]); // remote port 8080, reserved
    b.extend_from_slice(&mapped(Ipv4Addr::new(203, 0, 113, 10)));
    let r = parse(&b).expect("valid");
    let Body::Peer(p) = r.body else {
        panic!("a PEER");
    };
    assert_eq!(p.map.protocol, 6);
    assert_eq!(p.remote_port, 8080);
    assert_eq!(
        unmapped(&p.remote_addr),
        Some(Ipv4Addr::new(203, 0, 113, 10))
    );
    assert_eq!(parse(&header(0, 0)).map(|r| r.body), Ok(Body::Announce));
}

#[test]
fn parses_every_option() {
    let mut b = header(1, 100);
    b.extend(map_payload(17, 5000, 6000));
    b.extend(opt(
        option::THIRD_PARTY,
        &mapped(Ipv4Addr::new(100, 64, 0, 20)),
    ));
    b.extend(opt(option::PREFER_FAILURE, &[]));
    b.extend(filter(96 + 24, 0, Ipv4Addr::new(203, 0, 113, 0)));
    b.extend(filter(128, 53, Ipv4Addr::new(192, 0, 2, 1)));
    b.extend(opt(200, &[9, 9, 9])); // optional to process: skipped
    let r = parse(&b).expect("valid");
    assert_eq!(
        r.options.third_party.as_ref().and_then(unmapped),
        Some(Ipv4Addr::new(100, 64, 0, 20))
    );
    assert!(r.options.prefer_failure);
    assert_eq!(r.options.filters.len(), 2);
    assert_eq!(r.options.filters[0].prefix_len, 120);
    assert_eq!(r.options.filters[1].port, 53);
}

#[test]
fn refuses_each_malformation_with_its_result_code() {
    let answer = |b: &[u8]| parse(b).err();
    let mut map = header(1, 100);
    map.extend(map_payload(17, 5000, 0));
    // Silent: too short for an opcode, or a response.
    assert_eq!(answer(&[2]), Some(Refusal::Silent));
    let mut response = map.clone();
    response[1] |= RESPONSE_BIT;
    assert_eq!(answer(&response), Some(Refusal::Silent));
    let a = |c| Some(Refusal::Answer(c));
    let mut v1 = map.clone();
    v1[0] = 1;
    assert_eq!(answer(&v1), a(ResultCode::UnsuppVersion));
    assert_eq!(answer(&map[..20]), a(ResultCode::MalformedRequest));
    assert_eq!(
        answer(&map[..58]),
        a(ResultCode::MalformedRequest),
        "not whole words"
    );
    assert_eq!(
        answer(&map[..56]),
        a(ResultCode::MalformedRequest),
        "MAP cut short"
    );
    assert_eq!(
        answer(&vec![2u8; 1104]),
        a(ResultCode::MalformedRequest),
        "too long"
    );
    assert_eq!(answer(&header(3, 0)), a(ResultCode::UnsuppOpcode));
    assert_eq!(answer(&header(0x7f, 0)), a(ResultCode::UnsuppOpcode));
    let with = |o: Vec<u8>| {
        let mut b = map.clone();
        b.extend(o);
        b
    };
    assert_eq!(answer(&with(opt(99, &[]))), a(ResultCode::UnsuppOption));
    let pf = opt(option::PREFER_FAILURE, &[]);
    assert_eq!(
        answer(&with([pf.clone(), pf].concat())),
        a(ResultCode::MalformedOption)
    );
    let tp = opt(option::THIRD_PARTY, &mapped(CLIENT));
    assert_eq!(
        answer(&with([tp.clone(), tp].concat())),
        a(ResultCode::MalformedOption)
    );
    assert_eq!(
        answer(&with(opt(option::THIRD_PARTY, &[0; 4]))),
        a(ResultCode::MalformedOption)
    );
    assert_eq!(
        answer(&with(opt(option::PREFER_FAILURE, &[0; 4]))),
        a(ResultCode::MalformedOption)
    );
    assert_eq!(
        answer(&with(filter(129, 0, CLIENT))),
        a(ResultCode::MalformedOption)
    );
    // An option whose length runs past the message.
    assert_eq!(
        answer(&with(vec![option::FILTER, 0, 0, 40])),
        a(ResultCode::MalformedOption)
    );
    // PREFER_FAILURE and FILTER belong to MAP only; no option to ANNOUNCE but optional ones.
    let mut peer = header(2, 60);
    peer.extend(map_payload(6, 1, 0));
    peer.extend_from_slice(&[0; 20]);
    peer.extend(opt(option::PREFER_FAILURE, &[]));
    assert_eq!(answer(&peer), a(ResultCode::MalformedOption));
    let mut announce = header(0, 0);
    announce.extend(opt(option::THIRD_PARTY, &mapped(CLIENT)));
    assert_eq!(answer(&announce), a(ResultCode::MalformedOption));
}

#[test]
fn writes_the_response_header_and_a_map_response() {
    let mut out = [0u8; MAX_MESSAGE];
    let opts = Options {
        third_party: None,
        prefer_failure: false,
        filters: vec![Filter {
            prefix_len: 128,
            port: 0,
            addr: mapped(Ipv4Addr::new(203, 0, 113, 10)),
        }],
        port_set: Some(PortSet {
            size: 4,
            first_internal: 5000,
            parity: true,
        }),
    };
    let body = MapBody {
        nonce: NONCE,
        protocol: 17,
        internal_port: 5000,
        external_port: 40000,
        external_addr: mapped(Ipv4Addr::new(198, 51, 100, 1)),
    };
    let n = write_response(
        &mut out,
        &Response {
            opcode: 1,
            result: ResultCode::Success,
            lifetime: 3600,
            epoch: 77,
            payload: Payload::Map(body, &opts),
        },
    );
    assert_eq!(n, 24 + 36 + 24 + 12);
    assert_eq!(
        out[..24],
        [
            2, 0x81, 0, 0, 0, 0, 0x0e, 0x10, 0, 0, 0, 77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]
    );
    assert_eq!(out[24..36], NONCE);
    assert_eq!(out[36..40], [17, 0, 0, 0]);
    assert_eq!(out[40..44], [0x13, 0x88, 0x9c, 0x40]);
    assert_eq!(out[44..60], mapped(Ipv4Addr::new(198, 51, 100, 1)));
    assert_eq!(out[60..64], [option::FILTER, 0, 0, 20]);
    assert_eq!(out[65], 128);
    // PORT_SET (RFC 7753 section 4): length 5, padded to 8.
    assert_eq!(out[84..96], [130, 0, 0, 5, 0, 4, 0x13, 0x88, 1, 0, 0, 0]);
    // The response parses back to the same payload (with the R bit cleared).
    let mut back = out[..n].to_vec();
    back[1] = 1;
    let r = parse(&back).expect("round trip");
    assert_eq!(r.body, Body::Map(body));
    assert_eq!(r.options, opts);
}

#[test]
fn every_result_code_has_its_number_and_error_responses_echo_the_request() {
    let codes = [
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
    let mut out = [0u8; MAX_MESSAGE];
    for (i, c) in codes.into_iter().enumerate() {
        let n = write_response(
            &mut out,
            &Response {
                opcode: 1,
                result: c,
                lifetime: 30,
                epoch: 1,
                payload: Payload::Echo(&MAP_UDP_5000[HEADER..]),
            },
        );
        assert_eq!(out[3], i as u8);
        assert_eq!(n, MAP_UDP_5000.len());
        assert_eq!(out[HEADER..n], MAP_UDP_5000[HEADER..]);
    }
    assert!(ResultCode::NotAuthorized.is_long_lived());
    assert!(!ResultCode::NoResources.is_long_lived());
    // An ANNOUNCE response (RFC 6887 section 14.1): header only, lifetime 0.
    let n = write_response(
        &mut out,
        &Response {
            opcode: 0,
            result: ResultCode::Success,
            lifetime: 0,
            epoch: 9,
            payload: Payload::None,
        },
    );
    assert_eq!(
        out[..n],
        [
            2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ]
    );
}
