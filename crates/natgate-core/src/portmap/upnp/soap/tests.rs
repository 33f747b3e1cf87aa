//! SOAP fixtures as miniupnpc 2.2 writes them (`simpleUPnPcommand`), and what is refused.

use super::*;

const IP2: &str = "urn:schemas-upnp-org:service:WANIPConnection:2";

/// The envelope miniupnpc wraps an action in.
fn envelope(action: &str, service: &str, args: &str) -> Vec<u8> {
    format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{action} xmlns:u=\"{service}\">{args}</u:{action}></s:Body></s:Envelope>\r\n"
    )
    .into_bytes()
}

static ADD: &[u8] = b"<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:AddPortMapping xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\"><NewRemoteHost></NewRemoteHost><NewExternalPort>8080</NewExternalPort><NewProtocol>TCP</NewProtocol><NewInternalPort>80</NewInternalPort><NewInternalClient>100.64.0.10</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>libminiupnpc</NewPortMappingDescription><NewLeaseDuration>0</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>\r\n";

#[test]
fn reads_upnpc_add_port_mapping() {
    let call = parse(
        "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping",
        ADD,
    )
    .expect("valid");
    assert_eq!(call.service, Service::WanIpConnection(1));
    assert_eq!(
        call.action,
        Action::AddPortMapping(NewMapping {
            key: MappingKey {
                remote_host: None,
                external_port: 8080,
                proto: Protocol::Tcp,
            },
            internal_port: 80,
            internal_client: Ipv4Addr::new(100, 64, 0, 10),
            enabled: true,
            description: "libminiupnpc".into(),
            lease: 0,
        })
    );
}

#[test]
fn reads_every_action() {
    let key = "<NewRemoteHost></NewRemoteHost><NewExternalPort>8080</NewExternalPort>\
               <NewProtocol>UDP</NewProtocol>";
    let range = "<NewStartPort>1</NewStartPort><NewEndPort>9</NewEndPort>\
                 <NewProtocol>TCP</NewProtocol><NewManage>0</NewManage>";
    let k = MappingKey {
        remote_host: None,
        external_port: 8080,
        proto: Protocol::Udp,
    };
    let r = PortRange {
        start: 1,
        end: 9,
        proto: Protocol::Tcp,
    };
    let cases: Vec<(&str, String, Action)> = vec![
        (
            "GetExternalIPAddress",
            String::new(),
            Action::GetExternalIpAddress,
        ),
        ("GetStatusInfo", String::new(), Action::GetStatusInfo),
        (
            "GetConnectionTypeInfo",
            String::new(),
            Action::GetConnectionTypeInfo,
        ),
        (
            "DeletePortMapping",
            key.into(),
            Action::DeletePortMapping(k),
        ),
        (
            "GetSpecificPortMappingEntry",
            key.into(),
            Action::GetSpecificPortMappingEntry(k),
        ),
        (
            "GetGenericPortMappingEntry",
            "<NewPortMappingIndex>3</NewPortMappingIndex>".into(),
            Action::GetGenericPortMappingEntry(3),
        ),
        (
            "DeletePortMappingRange",
            range.into(),
            Action::DeletePortMappingRange(r),
        ),
        (
            "GetListOfPortMappings",
            format!("{range}<NewNumberOfPorts>5</NewNumberOfPorts>"),
            Action::GetListOfPortMappings(r, 5),
        ),
    ];
    for (name, args, action) in cases {
        let call = parse(&format!("{IP2}#{name}"), &envelope(name, IP2, &args))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(call.action, action, "{name}");
        assert_eq!(call.name, name);
    }
    let cif = "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1";
    let call = parse(
        &format!("{cif}#GetCommonLinkProperties"),
        &envelope("GetCommonLinkProperties", cif, ""),
    )
    .expect("valid");
    assert_eq!(call.action, Action::GetCommonLinkProperties);
}

#[test]
fn entities_and_remote_hosts_are_read() {
    let args = "<NewRemoteHost>203.0.113.5</NewRemoteHost><NewExternalPort>1</NewExternalPort>\
                <NewProtocol>tcp</NewProtocol><NewInternalPort>2</NewInternalPort>\
                <NewInternalClient>100.64.0.10</NewInternalClient><NewEnabled>true</NewEnabled>\
                <NewPortMappingDescription>a &amp; b &#x41;<![CDATA[<c>]]></NewPortMappingDescription>\
                <NewLeaseDuration>60</NewLeaseDuration>";
    let call = parse(
        &format!("{IP2}#AddAnyPortMapping"),
        &envelope("AddAnyPortMapping", IP2, args),
    )
    .expect("valid");
    let Action::AddAnyPortMapping(m) = call.action else {
        panic!("{:?}", call.action);
    };
    assert_eq!(m.description, "a & b A<c>");
    assert_eq!(m.key.remote_host, Some(Ipv4Addr::new(203, 0, 113, 5)));
    assert_eq!(m.lease, 60);
}

#[test]
fn refuses_unknown_actions_and_bad_arguments() {
    let ip1 = "urn:schemas-upnp-org:service:WANIPConnection:1";
    let cases: Vec<(String, Vec<u8>, UpnpError)> = vec![
        (
            "no hash".into(),
            envelope("X", IP2, ""),
            UpnpError::InvalidAction,
        ),
        (
            "urn:schemas-upnp-org:service:Other:1#GetStatusInfo".into(),
            envelope("GetStatusInfo", IP2, ""),
            UpnpError::InvalidAction,
        ),
        (
            format!("{IP2}#ForceTermination"),
            envelope("ForceTermination", IP2, ""),
            UpnpError::InvalidAction,
        ),
        // Version 2's actions are not in version 1.
        (
            format!("{ip1}#AddAnyPortMapping"),
            envelope("AddAnyPortMapping", ip1, ""),
            UpnpError::InvalidAction,
        ),
        // The body names another action than the header.
        (
            format!("{IP2}#GetStatusInfo"),
            envelope("GetExternalIPAddress", IP2, ""),
            UpnpError::InvalidAction,
        ),
        (
            format!("{IP2}#GetGenericPortMappingEntry"),
            envelope("GetGenericPortMappingEntry", IP2, ""),
            UpnpError::InvalidArgs,
        ),
        (
            format!("{IP2}#GetGenericPortMappingEntry"),
            envelope(
                "GetGenericPortMappingEntry",
                IP2,
                "<NewPortMappingIndex>70000</NewPortMappingIndex>",
            ),
            UpnpError::InvalidArgs,
        ),
        (
            format!("{IP2}#GetGenericPortMappingEntry"),
            envelope(
                "GetGenericPortMappingEntry",
                IP2,
                "<NewPortMappingIndex><x>1</x></NewPortMappingIndex>",
            ),
            UpnpError::InvalidArgs,
        ),
        (
            format!("{IP2}#GetStatusInfo"),
            b"<s:Envelope><s:Body><u:GetStatusInfo></s:Body></s:Envelope>".to_vec(),
            UpnpError::InvalidArgs,
        ),
        (
            format!("{IP2}#GetStatusInfo"),
            b"".to_vec(),
            UpnpError::InvalidArgs,
        ),
        (
            format!("{IP2}#GetStatusInfo"),
            b"\xff".to_vec(),
            UpnpError::InvalidArgs,
        ),
        (
            format!("{IP2}#GetStatusInfo"),
            b"<html><body/></html>".to_vec(),
            UpnpError::InvalidArgs,
        ),
    ];
    for (header, body, want) in cases {
        assert_eq!(
            parse(&header, &body),
            Err(want),
            "{header} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut add = String::from_utf8(ADD.to_vec()).expect("text");
    let header = format!("{ip1}#AddPortMapping");
    for (from, to) in [
        ("<NewProtocol>TCP", "<NewProtocol>SCTP"),
        ("100.64.0.10", "me"),
        ("<NewEnabled>1", "<NewEnabled>maybe"),
        ("<NewLeaseDuration>0", "<NewLeaseDuration>-1"),
        (
            "<NewRemoteHost></NewRemoteHost>",
            "<NewRemoteHost>host</NewRemoteHost>",
        ),
    ] {
        let bad = add.replace(from, to);
        assert_eq!(
            parse(&header, bad.as_bytes()),
            Err(UpnpError::InvalidArgs),
            "{to}"
        );
    }
    add = add.replace("libminiupnpc", &"x".repeat(MAX_VALUE + 1));
    assert_eq!(parse(&header, add.as_bytes()), Err(UpnpError::InvalidArgs));
}

#[test]
fn answers_are_escaped_soap() {
    let call = parse(
        "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping",
        ADD,
    )
    .expect("valid");
    let r = write_reply(&call, &[("NewPortMappingDescription", "<a&b>")]);
    assert!(r.contains(
        "<u:AddPortMappingResponse xmlns:u=\"urn:schemas-upnp-org:service:WANIPConnection:1\">\
         <NewPortMappingDescription>&lt;a&amp;b&gt;</NewPortMappingDescription>\
         </u:AddPortMappingResponse>"
    ));
    let f = write_fault(UpnpError::NotAuthorized);
    assert!(f.contains("<errorCode>606</errorCode>"));
    assert!(f.contains("<errorDescription>Action not authorized</errorDescription>"));
}
