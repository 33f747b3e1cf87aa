//! The gateway's UPnP answers, HTTP request bytes in and answer bytes out, with the engine
//! behind it: each mapping made is checked by a packet it lets in.

use super::super::tests::{OTHER, POOL, SUB, WAN, engine, ep, pcp_map, reaches, server, t};
use super::*;
use crate::portmap::PortMapConfig;
use crate::portmap::PortMapCounters;
use crate::portmap::wire::pcp;

const IP1: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
const IP2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";
const DEVICE: Device = Device {
    address: super::super::tests::INSIDE,
    http_port: 5000,
};

fn upnp_server(f: impl FnOnce(&mut PortMapConfig)) -> PortMapServer {
    server(|c| {
        c.upnp = true;
        c.requests_per_second = 1000;
        c.request_burst = 1000;
        f(c);
    })
}

/// The POST miniupnpc 2.2 sends for `action` with `args` (`simpleUPnPcommand`).
fn post(service: &str, action: &str, args: &[(&str, &str)]) -> Vec<u8> {
    let mut body = format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{service}\">"
    );
    for (n, v) in args {
        body.push_str(&format!("<{n}>{}</{n}>", quick_xml::escape::escape(*v)));
    }
    body.push_str(&format!("</u:{action}></s:Body></s:Envelope>\r\n"));
    let path = if service.contains("CommonInterface") {
        CIF_CONTROL_PATH
    } else {
        IP_CONTROL_PATH
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 100.64.0.1:5000\r\n\
         User-Agent: Debian/12 UPnP/1.1 MiniUPnPc/2.2.4\r\nContent-Length: {}\r\n\
         Content-Type: text/xml\r\nSOAPAction: \"{service}#{action}\"\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

/// The answer's status line and body.
fn http(
    s: &mut PortMapServer,
    e: &mut Engine,
    now: Instant,
    client: Ipv4Addr,
    req: &[u8],
) -> (String, String) {
    let answer = s
        .handle_http(now, e, client, req, &DEVICE)
        .expect("answered");
    let text = String::from_utf8(answer).expect("text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// The text of element `name` in `body`.
fn arg(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = body[start..].find(&format!("</{name}>"))? + start;
    Some(body[start..end].to_owned())
}

fn error_code(body: &str) -> Option<u16> {
    arg(body, "errorCode")?.parse().ok()
}

fn add_args<'a>(
    ext: &'a str,
    proto: &'a str,
    int: &'a str,
    client: &'a str,
    lease: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("NewRemoteHost", ""),
        ("NewExternalPort", ext),
        ("NewProtocol", proto),
        ("NewInternalPort", int),
        ("NewInternalClient", client),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", "game <server>"),
        ("NewLeaseDuration", lease),
    ]
}

fn key(ext: &str, proto: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NewRemoteHost", String::new()),
        ("NewExternalPort", ext.to_owned()),
        ("NewProtocol", proto.to_owned()),
    ]
}

fn call(
    s: &mut PortMapServer,
    e: &mut Engine,
    now: Instant,
    client: Ipv4Addr,
    service: &str,
    action: &str,
    args: &[(&str, String)],
) -> (String, String) {
    let args: Vec<(&str, &str)> = args.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http(s, e, now, client, &post(service, action, &args))
}

#[test]
fn ssdp_search_is_answered_for_clients_only() {
    let (mut s, e) = (upnp_server(|_| {}), engine());
    let search = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n\
        ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\n\r\n";
    let answers = s
        .handle_ssdp(t(1000), &e, ep(SUB, 1900), search, &DEVICE)
        .expect("answered");
    assert_eq!(answers.len(), 1);
    assert!(
        String::from_utf8_lossy(&answers[0])
            .contains("LOCATION: http://100.64.0.1:5000/rootDesc.xml")
    );
    assert_eq!(
        s.handle_ssdp(t(1000), &e, ep(WAN, 1900), search, &DEVICE),
        Err(PortMapDrop::NotServed)
    );
    let notify = b"NOTIFY * HTTP/1.1\r\nNT: upnp:rootdevice\r\nNTS: ssdp:alive\r\n\r\n";
    assert_eq!(
        s.handle_ssdp(t(1000), &e, ep(SUB, 1900), notify, &DEVICE),
        Err(PortMapDrop::SsdpNotSearch)
    );
    let other = b"M-SEARCH * HTTP/1.1\r\nST: urn:dial-multiscreen-org:service:dial:1\r\nMAN: \"ssdp:discover\"\r\n\r\n";
    assert_eq!(
        s.handle_ssdp(t(1000), &e, ep(SUB, 1900), other, &DEVICE),
        Err(PortMapDrop::SsdpOtherTarget)
    );
    let drops = |s: &PortMapServer, d: PortMapDrop| {
        let i = PortMapDrop::ALL
            .iter()
            .position(|x| *x == d)
            .expect("listed");
        s.counters().drops[i]
    };
    assert_eq!(drops(&s, PortMapDrop::NotServed), 1);
    assert_eq!(drops(&s, PortMapDrop::SsdpNotSearch), 1);
    assert_eq!(drops(&s, PortMapDrop::SsdpOtherTarget), 1);
    assert_eq!(s.counters().upnp_results[0], 1, "search_answered");
    let mut off = server(|_| {});
    assert_eq!(
        off.handle_ssdp(t(1000), &e, ep(SUB, 1900), search, &DEVICE),
        Err(PortMapDrop::UpnpOff)
    );
}

#[test]
fn descriptions_and_http_errors() {
    let (mut s, mut e) = (upnp_server(|_| {}), engine());
    let (status, body) = http(
        &mut s,
        &mut e,
        t(1000),
        SUB,
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("urn:schemas-upnp-org:service:WANIPConnection:2"));
    let (status, body) = http(
        &mut s,
        &mut e,
        t(1000),
        SUB,
        b"GET /WANIPCn.xml HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("<name>AddPortMapping</name>"));
    let (status, _) = http(
        &mut s,
        &mut e,
        t(1000),
        SUB,
        b"GET /nothing HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = http(
        &mut s,
        &mut e,
        t(1000),
        SUB,
        b"SUBSCRIBE /ctl/IPConn HTTP/1.1\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _) = http(&mut s, &mut e, t(1000), SUB, b"\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    // A SOAP action to the other service's control URL.
    let mut wrong = post(IP2, "GetStatusInfo", &[]);
    let at = wrong
        .windows(11)
        .position(|w| w == b"/ctl/IPConn")
        .expect("path");
    wrong.splice(at..at + 11, b"/ctl/CmnIfCfg".iter().copied());
    let (status, body) = http(&mut s, &mut e, t(1000), SUB, &wrong);
    assert_eq!(status, "HTTP/1.1 500 Internal Server Error");
    assert_eq!(error_code(&body), Some(401));
    assert_eq!(
        s.handle_http(
            t(1000),
            &mut e,
            WAN,
            b"GET /rootDesc.xml HTTP/1.1\r\n\r\n",
            &DEVICE
        ),
        Err(PortMapDrop::NotServed)
    );
}

#[test]
fn add_look_up_list_and_delete_a_mapping() {
    let (mut s, mut e) = (upnp_server(|c| c.max_lifetime = 7200), engine());
    let now = t(1000);
    let (_, body) = call(&mut s, &mut e, now, SUB, IP1, "GetExternalIPAddress", &[]);
    assert_eq!(
        arg(&body, "NewExternalIPAddress").as_deref(),
        Some("198.51.100.1")
    );
    let (_, body) = call(&mut s, &mut e, now, SUB, IP1, "GetStatusInfo", &[]);
    assert_eq!(
        arg(&body, "NewConnectionStatus").as_deref(),
        Some("Connected")
    );
    let cif = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1";
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        cif,
        "GetCommonLinkProperties",
        &[],
    );
    assert_eq!(arg(&body, "NewPhysicalLinkStatus").as_deref(), Some("Up"));

    let sub = SUB.to_string();
    let (status, body) = http(
        &mut s,
        &mut e,
        now,
        SUB,
        &post(
            IP1,
            "AddPortMapping",
            &add_args("8080", "TCP", "5080", &sub, "0"),
        ),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains(
        "<u:AddPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">"
    ));
    assert_eq!(
        reaches(&mut e, now, true, ep(WAN, 5555), ep(POOL, 8080)),
        Some(ep(SUB, 5080))
    );
    // The same request again renews it.
    let (status, _) = http(
        &mut s,
        &mut e,
        now,
        SUB,
        &post(
            IP1,
            "AddPortMapping",
            &add_args("8080", "TCP", "5080", &sub, "0"),
        ),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");

    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP1,
        "GetSpecificPortMappingEntry",
        &key("8080", "TCP"),
    );
    assert_eq!(
        arg(&body, "NewInternalClient").as_deref(),
        Some("100.64.0.10")
    );
    assert_eq!(arg(&body, "NewInternalPort").as_deref(), Some("5080"));
    assert_eq!(
        arg(&body, "NewPortMappingDescription").as_deref(),
        Some("game &lt;server&gt;")
    );
    // A lease of 0 is the longest there is.
    assert_eq!(arg(&body, "NewLeaseDuration").as_deref(), Some("7200"));
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP1,
        "GetSpecificPortMappingEntry",
        &key("8080", "UDP"),
    );
    assert_eq!(error_code(&body), Some(714));

    let index = |i: &str| vec![("NewPortMappingIndex", i.to_owned())];
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP1,
        "GetGenericPortMappingEntry",
        &index("0"),
    );
    assert_eq!(arg(&body, "NewExternalPort").as_deref(), Some("8080"));
    assert_eq!(arg(&body, "NewProtocol").as_deref(), Some("TCP"));
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP1,
        "GetGenericPortMappingEntry",
        &index("1"),
    );
    assert_eq!(error_code(&body), Some(713));
    // Another subscriber sees none of it.
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        OTHER,
        IP1,
        "GetGenericPortMappingEntry",
        &index("0"),
    );
    assert_eq!(error_code(&body), Some(713));
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        OTHER,
        IP1,
        "DeletePortMapping",
        &key("8080", "TCP"),
    );
    assert_eq!(error_code(&body), Some(714));

    let range = vec![
        ("NewStartPort", "8000".to_owned()),
        ("NewEndPort", "9000".to_owned()),
        ("NewProtocol", "TCP".to_owned()),
        ("NewManage", "1".to_owned()),
        ("NewNumberOfPorts", "0".to_owned()),
    ];
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP2,
        "GetListOfPortMappings",
        &range,
    );
    let listing = arg(&body, "NewPortListing").expect("a listing");
    assert!(
        listing.contains("&lt;p:NewExternalPort&gt;8080&lt;/p:NewExternalPort&gt;"),
        "{listing}"
    );

    let (status, _) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP1,
        "DeletePortMapping",
        &key("8080", "TCP"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        reaches(&mut e, now, true, ep(WAN, 5556), ep(POOL, 8080)),
        None
    );
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP1,
        "DeletePortMapping",
        &key("8080", "TCP"),
    );
    assert_eq!(error_code(&body), Some(714));
    let (_, body) = call(
        &mut s,
        &mut e,
        now,
        SUB,
        IP2,
        "GetListOfPortMappings",
        &range,
    );
    assert_eq!(error_code(&body), Some(730));
    let success = Outcome::ALL
        .iter()
        .position(|o| *o == Outcome::Success)
        .expect("listed");
    assert!(s.counters().upnp_results[success] >= 8);
}

#[test]
fn refusals() {
    let (mut s, mut e) = (upnp_server(|c| c.max_mappings_per_subscriber = 2), engine());
    let now = t(1000);
    let (sub, other) = (SUB.to_string(), OTHER.to_string());
    let ask = |s: &mut PortMapServer,
               e: &mut Engine,
               client,
               service,
               action,
               args: Vec<(&str, &str)>| {
        let (_, body) = http(s, e, now, client, &post(service, action, &args));
        error_code(&body)
    };
    // For another host's address.
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP1,
            "AddPortMapping",
            add_args("8080", "TCP", "5080", &other, "60")
        ),
        Some(606)
    );
    assert_eq!(e.explicit_mappings().count(), 0);
    // No external port.
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP1,
            "AddPortMapping",
            add_args("0", "TCP", "5080", &sub, "60")
        ),
        Some(716)
    );
    // Disabled mappings are not kept.
    let mut disabled = add_args("8080", "TCP", "5080", &sub, "60");
    disabled[5].1 = "0";
    assert_eq!(
        ask(&mut s, &mut e, SUB, IP1, "AddPortMapping", disabled),
        Some(402)
    );
    // Taken by another subscriber: AddPortMapping conflicts, AddAnyPortMapping picks another.
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            OTHER,
            IP1,
            "AddPortMapping",
            add_args("8080", "TCP", "5080", &other, "60")
        ),
        None
    );
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP1,
            "AddPortMapping",
            add_args("8080", "TCP", "5080", &sub, "60")
        ),
        Some(718)
    );
    let (status, body) = http(
        &mut s,
        &mut e,
        now,
        SUB,
        &post(
            IP2,
            "AddAnyPortMapping",
            &add_args("8080", "TCP", "5080", &sub, "60"),
        ),
    );
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let port: u16 = arg(&body, "NewReservedPort")
        .and_then(|p| p.parse().ok())
        .expect("a port");
    assert_ne!(port, 8080);
    assert_eq!(
        reaches(&mut e, now, true, ep(WAN, 1), ep(POOL, port)),
        Some(ep(SUB, 5080))
    );
    // The same internal endpoint to another external port conflicts.
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP1,
            "AddPortMapping",
            add_args("9090", "TCP", "5080", &sub, "60")
        ),
        Some(718)
    );
    // The per-subscriber cap.
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP1,
            "AddPortMapping",
            add_args("9091", "UDP", "5081", &sub, "60")
        ),
        None
    );
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP1,
            "AddPortMapping",
            add_args("9092", "UDP", "5082", &sub, "60")
        ),
        Some(728)
    );
    // A mapping made with PCP is listed, but UPnP may not change it.
    let mut pcp_out = [0u8; pcp::MAX_MESSAGE];
    let mut o = upnp_server(|_| {});
    assert!(matches!(
        o.handle(
            now,
            &mut e,
            ep(OTHER, 1),
            &pcp_map(OTHER, [1; 12], 17, 53, 600, &[]),
            &mut pcp_out
        ),
        crate::portmap::Answer::Reply(_)
    ));
    let pcp_port = e
        .explicit_mapping(Protocol::Udp, ep(OTHER, 53))
        .map(|m| m.external.port)
        .expect("mapped");
    let key = vec![
        ("NewRemoteHost", ""),
        ("NewExternalPort", ""),
        ("NewProtocol", "UDP"),
    ];
    let pcp_port = pcp_port.to_string();
    let mut k = key.clone();
    k[1].1 = &pcp_port;
    assert_eq!(
        ask(&mut s, &mut e, OTHER, IP1, "DeletePortMapping", k.clone()),
        Some(606)
    );
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            OTHER,
            IP1,
            "AddPortMapping",
            add_args(&pcp_port, "UDP", "53", &other, "60")
        ),
        Some(718)
    );
    assert!(e.explicit_mapping(Protocol::Udp, ep(OTHER, 53)).is_some());
    // A bad range.
    let range = vec![
        ("NewStartPort", "9"),
        ("NewEndPort", "1"),
        ("NewProtocol", "TCP"),
        ("NewManage", "0"),
    ];
    assert_eq!(
        ask(&mut s, &mut e, SUB, IP2, "DeletePortMappingRange", range),
        Some(733)
    );
    let range = vec![
        ("NewStartPort", "1"),
        ("NewEndPort", "65535"),
        ("NewProtocol", "TCP"),
        ("NewManage", "0"),
    ];
    assert_eq!(
        ask(
            &mut s,
            &mut e,
            SUB,
            IP2,
            "DeletePortMappingRange",
            range.clone()
        ),
        None
    );
    assert_eq!(reaches(&mut e, now, true, ep(WAN, 2), ep(POOL, port)), None);
    assert_eq!(
        ask(&mut s, &mut e, SUB, IP2, "DeletePortMappingRange", range),
        Some(730)
    );
}

#[test]
fn remote_host_filters_and_the_rate_limit_holds() {
    let (mut s, mut e) = (
        upnp_server(|c| {
            c.requests_per_second = 1;
            c.request_burst = 2;
        }),
        engine(),
    );
    let now = t(1000);
    let sub = SUB.to_string();
    let mut args = add_args("7000", "UDP", "5070", &sub, "60");
    args[0].1 = "203.0.113.10";
    let (status, _) = http(
        &mut s,
        &mut e,
        now,
        SUB,
        &post(IP1, "AddPortMapping", &args),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(
        reaches(&mut e, now, false, ep(WAN, 1), ep(POOL, 7000)),
        Some(ep(SUB, 5070))
    );
    assert_eq!(
        reaches(
            &mut e,
            now,
            false,
            ep(Ipv4Addr::new(203, 0, 113, 11), 1),
            ep(POOL, 7000)
        ),
        None
    );
    let (_, body) = http(
        &mut s,
        &mut e,
        now,
        SUB,
        &post(
            IP1,
            "GetSpecificPortMappingEntry",
            &[
                ("NewRemoteHost", ""),
                ("NewExternalPort", "7000"),
                ("NewProtocol", "UDP"),
            ],
        ),
    );
    assert_eq!(arg(&body, "NewInternalPort").as_deref(), Some("5070"));
    // The burst of 2 is spent.
    assert_eq!(
        s.handle_http(
            now,
            &mut e,
            SUB,
            b"GET /rootDesc.xml HTTP/1.1\r\n\r\n",
            &DEVICE
        ),
        Err(PortMapDrop::RateLimited)
    );
    assert!(
        s.handle_http(
            t(1001),
            &mut e,
            SUB,
            b"GET /rootDesc.xml HTTP/1.1\r\n\r\n",
            &DEVICE
        )
        .is_ok()
    );
}

#[test]
fn outcomes_are_named_once() {
    let names: Vec<&str> = Outcome::ALL.iter().map(|d| d.name()).collect();
    assert_eq!(names.len(), PortMapCounters::default().upnp_results.len());
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
}
