//! The device description (UDA 1.1 section 2.3) and the service descriptions (SCPD, section
//! 2.5) the gateway serves: InternetGatewayDevice:2 holding a WANDevice:2 (with
//! WANCommonInterfaceConfig:1, which clients read for the link state) holding a
//! WANConnectionDevice:2 with WANIPConnection:2. No eventing is offered; the event URLs the
//! schema requires answer 404.

use super::Device;
use core::fmt::Write;

/// The device description's path (SSDP's LOCATION).
pub const ROOT_PATH: &str = "/rootDesc.xml";
/// WANIPConnection's SCPD.
pub const IP_SCPD_PATH: &str = "/WANIPCn.xml";
/// WANIPConnection's control URL.
pub const IP_CONTROL_PATH: &str = "/ctl/IPConn";
/// WANCommonInterfaceConfig's SCPD.
pub const CIF_SCPD_PATH: &str = "/WANCfg.xml";
/// WANCommonInterfaceConfig's control URL.
pub const CIF_CONTROL_PATH: &str = "/ctl/CmnIfCfg";
/// SSDP's SERVER and HTTP's Server (UDA 1.1: the OS, UPnP/1.1, the product and its version).
pub const SERVER: &str = concat!("Linux UPnP/1.1 natgate/", env!("CARGO_PKG_VERSION"));
/// The content type of descriptions and SOAP bodies.
pub const XML: &str = "text/xml; charset=\"utf-8\"";

/// The device description of `device`.
pub fn device_xml(device: &Device) -> String {
    let mut s = String::with_capacity(2048);
    let _ = write!(
        s,
        r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1">
<specVersion><major>1</major><minor>1</minor></specVersion>
<device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType>
<friendlyName>natgate</friendlyName>
<manufacturer>natgate</manufacturer>
<modelName>natgate</modelName>
<UDN>{}</UDN>
<deviceList>
<device>
<deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType>
<friendlyName>WAN</friendlyName>
<manufacturer>natgate</manufacturer>
<modelName>natgate</modelName>
<UDN>{}</UDN>
<serviceList>
<service>
<serviceType>urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANCommonIFC1</serviceId>
<SCPDURL>{CIF_SCPD_PATH}</SCPDURL>
<controlURL>{CIF_CONTROL_PATH}</controlURL>
<eventSubURL>/evt/CmnIfCfg</eventSubURL>
</service>
</serviceList>
<deviceList>
<device>
<deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType>
<friendlyName>WAN connection</friendlyName>
<manufacturer>natgate</manufacturer>
<modelName>natgate</modelName>
<UDN>{}</UDN>
<serviceList>
<service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<SCPDURL>{IP_SCPD_PATH}</SCPDURL>
<controlURL>{IP_CONTROL_PATH}</controlURL>
<eventSubURL>/evt/IPConn</eventSubURL>
</service>
</serviceList>
</device>
</deviceList>
</device>
</deviceList>
<presentationURL>http://{}/</presentationURL>
</device>
</root>
"#,
        device.udn(0),
        device.udn(1),
        device.udn(2),
        device.address,
    );
    s
}

/// An argument of an action: name, whether it is an output, its state variable.
type Arg = (&'static str, bool, &'static str);

const KEY: [Arg; 3] = [
    ("NewRemoteHost", false, "RemoteHost"),
    ("NewExternalPort", false, "ExternalPort"),
    ("NewProtocol", false, "PortMappingProtocol"),
];

const ENTRY: [Arg; 5] = [
    ("NewInternalPort", true, "InternalPort"),
    ("NewInternalClient", true, "InternalClient"),
    ("NewEnabled", true, "PortMappingEnabled"),
    ("NewPortMappingDescription", true, "PortMappingDescription"),
    ("NewLeaseDuration", true, "PortMappingLeaseDuration"),
];

const NEW: [Arg; 8] = [
    KEY[0],
    KEY[1],
    KEY[2],
    ("NewInternalPort", false, "InternalPort"),
    ("NewInternalClient", false, "InternalClient"),
    ("NewEnabled", false, "PortMappingEnabled"),
    ("NewPortMappingDescription", false, "PortMappingDescription"),
    ("NewLeaseDuration", false, "PortMappingLeaseDuration"),
];

const RANGE: [Arg; 4] = [
    ("NewStartPort", false, "ExternalPort"),
    ("NewEndPort", false, "ExternalPort"),
    ("NewProtocol", false, "PortMappingProtocol"),
    ("NewManage", false, "A_ARG_TYPE_Manage"),
];

/// WANIPConnection:2's actions that are answered, and their arguments.
const IP_ACTIONS: &[(&str, &[&[Arg]])] = &[
    (
        "GetConnectionTypeInfo",
        &[&[
            ("NewConnectionType", true, "ConnectionType"),
            (
                "NewPossibleConnectionTypes",
                true,
                "PossibleConnectionTypes",
            ),
        ]],
    ),
    (
        "GetStatusInfo",
        &[&[
            ("NewConnectionStatus", true, "ConnectionStatus"),
            ("NewLastConnectionError", true, "LastConnectionError"),
            ("NewUptime", true, "Uptime"),
        ]],
    ),
    (
        "GetExternalIPAddress",
        &[&[("NewExternalIPAddress", true, "ExternalIPAddress")]],
    ),
    (
        "GetGenericPortMappingEntry",
        &[
            &[("NewPortMappingIndex", false, "PortMappingNumberOfEntries")],
            &[
                ("NewRemoteHost", true, "RemoteHost"),
                ("NewExternalPort", true, "ExternalPort"),
                ("NewProtocol", true, "PortMappingProtocol"),
            ],
            &ENTRY,
        ],
    ),
    ("GetSpecificPortMappingEntry", &[&KEY, &ENTRY]),
    ("AddPortMapping", &[&NEW]),
    (
        "AddAnyPortMapping",
        &[&NEW, &[("NewReservedPort", true, "ExternalPort")]],
    ),
    ("DeletePortMapping", &[&KEY]),
    ("DeletePortMappingRange", &[&RANGE]),
    (
        "GetListOfPortMappings",
        &[
            &RANGE,
            &[
                ("NewNumberOfPorts", false, "PortMappingNumberOfEntries"),
                ("NewPortListing", true, "A_ARG_TYPE_PortListing"),
            ],
        ],
    ),
];

const IP_VARIABLES: &[(&str, &str)] = &[
    ("ConnectionType", "string"),
    ("PossibleConnectionTypes", "string"),
    ("ConnectionStatus", "string"),
    ("Uptime", "ui4"),
    ("LastConnectionError", "string"),
    ("ExternalIPAddress", "string"),
    ("PortMappingNumberOfEntries", "ui2"),
    ("PortMappingEnabled", "boolean"),
    ("PortMappingLeaseDuration", "ui4"),
    ("RemoteHost", "string"),
    ("ExternalPort", "ui2"),
    ("InternalPort", "ui2"),
    ("PortMappingProtocol", "string"),
    ("InternalClient", "string"),
    ("PortMappingDescription", "string"),
    ("A_ARG_TYPE_Manage", "boolean"),
    ("A_ARG_TYPE_PortListing", "string"),
];

const CIF_ACTIONS: &[(&str, &[&[Arg]])] = &[(
    "GetCommonLinkProperties",
    &[&[
        ("NewWANAccessType", true, "WANAccessType"),
        (
            "NewLayer1UpstreamMaxBitRate",
            true,
            "Layer1UpstreamMaxBitRate",
        ),
        (
            "NewLayer1DownstreamMaxBitRate",
            true,
            "Layer1DownstreamMaxBitRate",
        ),
        ("NewPhysicalLinkStatus", true, "PhysicalLinkStatus"),
    ]],
)];

const CIF_VARIABLES: &[(&str, &str)] = &[
    ("WANAccessType", "string"),
    ("Layer1UpstreamMaxBitRate", "ui4"),
    ("Layer1DownstreamMaxBitRate", "ui4"),
    ("PhysicalLinkStatus", "string"),
];

/// WANIPConnection:2's SCPD: the actions answered.
pub fn ip_scpd() -> String {
    scpd(IP_ACTIONS, IP_VARIABLES)
}

/// WANCommonInterfaceConfig:1's SCPD.
pub fn cif_scpd() -> String {
    scpd(CIF_ACTIONS, CIF_VARIABLES)
}

fn scpd(actions: &[(&str, &[&[Arg]])], variables: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\"?>\n<scpd xmlns=\"urn:schemas-upnp-org:service-1-0\">\n\
         <specVersion><major>1</major><minor>0</minor></specVersion>\n<actionList>\n",
    );
    for (name, groups) in actions {
        let _ = write!(s, "<action><name>{name}</name><argumentList>");
        for (arg, out, var) in groups.iter().flat_map(|g| g.iter()) {
            let dir = if *out { "out" } else { "in" };
            let _ = write!(
                s,
                "<argument><name>{arg}</name><direction>{dir}</direction>\
                 <relatedStateVariable>{var}</relatedStateVariable></argument>"
            );
        }
        s.push_str("</argumentList></action>\n");
    }
    s.push_str("</actionList>\n<serviceStateTable>\n");
    for (name, ty) in variables {
        let _ = writeln!(
            s,
            "<stateVariable sendEvents=\"no\"><name>{name}</name>\
             <dataType>{ty}</dataType></stateVariable>"
        );
    }
    s.push_str("</serviceStateTable>\n</scpd>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::Reader;
    use quick_xml::events::Event;
    use std::net::Ipv4Addr;

    /// Every element's local name, checking the document is well formed.
    fn elements(xml: &str) -> Vec<String> {
        let mut r = Reader::from_str(xml);
        r.config_mut().check_end_names = true;
        let mut names = Vec::new();
        loop {
            match r.read_event().expect("well formed") {
                Event::Start(e) => {
                    names.push(e.local_name().into_inner().to_owned());
                }
                Event::Eof => return names,
                _ => {}
            }
        }
    }

    #[test]
    fn descriptions_are_well_formed_and_name_their_urls() {
        let d = Device {
            address: Ipv4Addr::new(100, 64, 0, 1),
            http_port: 5000,
        };
        let xml = device_xml(&d);
        assert_eq!(elements(&xml).iter().filter(|n| *n == "device").count(), 3);
        assert!(xml.contains("<controlURL>/ctl/IPConn</controlURL>"));
        assert!(xml.contains("<SCPDURL>/WANIPCn.xml</SCPDURL>"));
        assert!(xml.contains(&format!("<UDN>{}</UDN>", d.udn(2))));
        let ip = elements(&ip_scpd());
        assert_eq!(
            ip.iter().filter(|n| *n == "action").count(),
            IP_ACTIONS.len()
        );
        assert_eq!(
            elements(&cif_scpd())
                .iter()
                .filter(|n| *n == "action")
                .count(),
            1
        );
    }
}
