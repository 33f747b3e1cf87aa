//! SSDP (UPnP Device Architecture 1.1, section 1): a control point multicasts an M-SEARCH to
//! 239.255.255.250:1900 and each matching device answers it unicast with where its
//! description is. Only searching is handled: the gateway answers searches and sends no
//! NOTIFY, which clients do not need to find it.

use super::Device;
use core::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

/// SSDP's multicast group and port (UDA 1.1 section 1).
pub const MULTICAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// The longest search read; searches are a few hundred bytes.
pub const MAX_MESSAGE: usize = 2048;
/// How long a client may cache the answer, seconds (UDA 1.1 section 1.2.2: at least 1800).
pub const MAX_AGE: u32 = 1800;

/// Why a datagram is not a search this device answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SsdpError {
    /// Not text, no request line, a header without a colon, or no `MAN: "ssdp:discover"` or
    /// `ST`.
    #[error("not an SSDP search")]
    Malformed,
    /// A NOTIFY or an answer: other devices' traffic on the group, never answered.
    #[error("an SSDP advertisement or answer, not a search")]
    NotSearch,
    /// A search for devices or services this gateway does not have.
    #[error("a search for something else")]
    OtherTarget,
}

/// The devices and services this gateway advertises: (type, version, which device's UDN).
const TYPES: &[(&str, u8, u8)] = &[
    ("urn:schemas-upnp-org:device:InternetGatewayDevice:", 2, 0),
    ("urn:schemas-upnp-org:device:WANDevice:", 2, 1),
    ("urn:schemas-upnp-org:device:WANConnectionDevice:", 2, 2),
    (
        "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:",
        1,
        1,
    ),
    ("urn:schemas-upnp-org:service:WANIPConnection:", 2, 2),
];

/// One answer to send: the search target and the unique service name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The ST to answer with.
    pub st: String,
    /// The USN.
    pub usn: String,
}

/// The search target of `datagram`, if it is an M-SEARCH (UDA 1.1 section 1.3.2).
pub fn parse_search(datagram: &[u8]) -> Result<&str, SsdpError> {
    let text = core::str::from_utf8(datagram).map_err(|_| SsdpError::Malformed)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().ok_or(SsdpError::Malformed)?;
    if start.starts_with("NOTIFY ") || start.starts_with("HTTP/") {
        return Err(SsdpError::NotSearch);
    }
    if start != "M-SEARCH * HTTP/1.1" {
        return Err(SsdpError::Malformed);
    }
    let (mut st, mut man) = (None, false);
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(SsdpError::Malformed)?;
        let value = value.trim();
        if name.trim().eq_ignore_ascii_case("ST") {
            st = Some(value);
        } else if name.trim().eq_ignore_ascii_case("MAN") {
            man = value == "\"ssdp:discover\"";
        }
    }
    match st {
        Some(st) if man && !st.is_empty() => Ok(st),
        _ => Err(SsdpError::Malformed),
    }
}

/// What `device` answers a search for `st` with: one answer per matching device or service
/// (UDA 1.1 section 1.3.3). A search for an older version of a type is answered with the
/// version asked for, which the newer one implements.
pub fn matches(st: &str, device: &Device) -> Result<Vec<Match>, SsdpError> {
    let root = device.udn(0);
    let typed = |(ty, _, udn): &(&str, u8, u8), version: u8| Match {
        st: format!("{ty}{version}"),
        usn: format!("{}::{ty}{version}", device.udn(*udn)),
    };
    let rootdevice = || Match {
        st: "upnp:rootdevice".into(),
        usn: format!("{root}::upnp:rootdevice"),
    };
    let uuid = |n: u8| Match {
        st: device.udn(n),
        usn: device.udn(n),
    };
    let found = match st {
        "ssdp:all" => {
            let mut all = vec![rootdevice()];
            all.extend((0..3).map(uuid));
            all.extend(TYPES.iter().map(|t| typed(t, t.1)));
            all
        }
        "upnp:rootdevice" => vec![rootdevice()],
        _ if st.starts_with("uuid:") => (0..3).filter(|n| device.udn(*n) == st).map(uuid).collect(),
        _ => TYPES
            .iter()
            .filter_map(|t| {
                let version: u8 = st.strip_prefix(t.0)?.parse().ok()?;
                (1..=t.1).contains(&version).then(|| typed(t, version))
            })
            .collect(),
    };
    if found.is_empty() {
        return Err(SsdpError::OtherTarget);
    }
    Ok(found)
}

/// The unicast answer to a search (UDA 1.1 section 1.3.3). It has no DATE: the core reads no
/// clock, and the header is only recommended.
pub fn write_answer(m: &Match, device: &Device) -> Vec<u8> {
    let mut s = String::with_capacity(320);
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\n\
         CACHE-CONTROL: max-age={MAX_AGE}\r\n\
         EXT:\r\n\
         LOCATION: {}\r\n\
         SERVER: {}\r\n\
         ST: {}\r\n\
         USN: {}\r\n\
         BOOTID.UPNP.ORG: 1\r\n\
         CONFIGID.UPNP.ORG: 1\r\n\
         Content-Length: 0\r\n\r\n",
        device.location(),
        super::description::SERVER,
        m.st,
        m.usn
    );
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEVICE: Device = Device {
        address: Ipv4Addr::new(100, 64, 0, 1),
        http_port: 5000,
    };

    /// What miniupnpc 2.2 sends (upnpDiscover, one search per type it looks for).
    static UPNPC_SEARCH: &[u8] = b"M-SEARCH * HTTP/1.1\r\n\
HOST: 239.255.255.250:1900\r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
MAN: \"ssdp:discover\"\r\n\
MX: 2\r\n\
\r\n";

    #[test]
    fn reads_a_search_and_answers_it_with_the_version_asked_for() {
        let st = parse_search(UPNPC_SEARCH).expect("a search");
        assert_eq!(st, "urn:schemas-upnp-org:device:InternetGatewayDevice:1");
        let found = matches(st, &DEVICE).expect("found");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].st, st);
        assert_eq!(
            found[0].usn,
            format!("{}::{st}", DEVICE.udn(0)),
            "the root device's name"
        );
        let answer = String::from_utf8(write_answer(&found[0], &DEVICE)).expect("text");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.contains("\r\nLOCATION: http://100.64.0.1:5000/rootDesc.xml\r\n"));
        assert!(answer.contains("\r\nEXT:\r\n"));
        assert!(answer.contains("\r\nCACHE-CONTROL: max-age=1800\r\n"));
        assert!(answer.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_target_it_has() {
        let n = |st: &str| matches(st, &DEVICE).map(|m| m.len());
        assert_eq!(n("ssdp:all"), Ok(9));
        assert_eq!(n("upnp:rootdevice"), Ok(1));
        assert_eq!(n(&DEVICE.udn(2)), Ok(1));
        for st in [
            "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "urn:schemas-upnp-org:service:WANIPConnection:2",
            "urn:schemas-upnp-org:device:WANConnectionDevice:1",
        ] {
            assert_eq!(n(st), Ok(1), "{st}");
        }
        for st in [
            "urn:schemas-upnp-org:device:InternetGatewayDevice:3",
            "urn:schemas-upnp-org:service:WANPPPConnection:1",
            "urn:schemas-upnp-org:device:MediaRenderer:1",
            "uuid:00000000-0000-0000-0000-000000000000",
            "urn:schemas-upnp-org:service:WANIPConnection:x",
        ] {
            assert_eq!(n(st), Err(SsdpError::OtherTarget), "{st}");
        }
    }

    #[test]
    fn other_messages_are_not_searches() {
        let notify = b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nNTS: ssdp:alive\r\n\r\n";
        assert_eq!(parse_search(notify), Err(SsdpError::NotSearch));
        assert_eq!(
            parse_search(b"HTTP/1.1 200 OK\r\n\r\n"),
            Err(SsdpError::NotSearch)
        );
        for bad in [
            &b""[..],
            b"\xff\xfe",
            b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nMAN: \"ssdp:discover\"\r\n\r\n",
            b"M-SEARCH * HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_search(bad), Err(SsdpError::Malformed), "{bad:?}");
        }
    }
}
