//! SOAP control (UDA 1.1 section 3.2): the action a client asks for, read from its
//! SOAPACTION header and body, typed with its arguments; and the answers, a response or a
//! fault with a UPnP error code. The XML is read with `quick-xml`, whose reader borrows from
//! the body and never builds a tree, so that a hostile body costs no more than its bytes.

use crate::endpoint::Protocol;
use core::fmt::Write;
use quick_xml::Reader;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::Event;
use std::net::Ipv4Addr;

/// Most arguments an action may carry (AddPortMapping has 8).
const MAX_ARGS: usize = 16;
/// Longest argument value read: a description, an address or a number.
const MAX_VALUE: usize = 256;
/// Deepest nesting read.
const MAX_DEPTH: usize = 8;

/// The service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `urn:schemas-upnp-org:service:WANIPConnection:N`, N being 1 or 2: the answer uses the
    /// version asked for.
    WanIpConnection(u8),
    /// `urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1`.
    WanCommonInterfaceConfig,
}

impl Service {
    /// The service type, the namespace of the answer.
    pub fn urn(self) -> String {
        match self {
            Service::WanIpConnection(v) => {
                format!("urn:schemas-upnp-org:service:WANIPConnection:{v}")
            }
            Service::WanCommonInterfaceConfig => {
                "urn:schemas-upnp-org:service:WANCommonInterfaceConfig:1".into()
            }
        }
    }
}

/// A UPnP error (UDA 1.1 section 3.2.2, and WANIPConnection:2's own codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpnpError {
    /// 401: no such action on the service.
    #[error("401 Invalid Action")]
    InvalidAction,
    /// 402: an argument is missing, unknown or of the wrong form.
    #[error("402 Invalid Args")]
    InvalidArgs,
    /// 501: the action could not be done (no external address yet).
    #[error("501 Action Failed")]
    ActionFailed,
    /// 606: the client may not do this (another host's address, another protocol's
    /// mapping).
    #[error("606 Action not authorized")]
    NotAuthorized,
    /// 713: no entry at that index.
    #[error("713 SpecifiedArrayIndexInvalid")]
    ArrayIndexInvalid,
    /// 714: no such mapping.
    #[error("714 NoSuchEntryInArray")]
    NoSuchEntry,
    /// 716: the external port must be given.
    #[error("716 WildCardNotPermittedInExtPort")]
    WildcardExternalPort,
    /// 718: the external port is taken, or the internal endpoint is mapped to another.
    #[error("718 ConflictInMappingEntry")]
    Conflict,
    /// 728: no external port for the client (its cap, or the pool).
    #[error("728 NoPortMapsAvailable")]
    NoPortMapsAvailable,
    /// 730: no mapping in the range.
    #[error("730 PortMappingNotFound")]
    PortMappingNotFound,
    /// 733: the range's start is after its end.
    #[error("733 InconsistentParameters")]
    InconsistentParameters,
}

impl UpnpError {
    /// The error code.
    pub const fn code(self) -> u16 {
        match self {
            UpnpError::InvalidAction => 401,
            UpnpError::InvalidArgs => 402,
            UpnpError::ActionFailed => 501,
            UpnpError::NotAuthorized => 606,
            UpnpError::ArrayIndexInvalid => 713,
            UpnpError::NoSuchEntry => 714,
            UpnpError::WildcardExternalPort => 716,
            UpnpError::Conflict => 718,
            UpnpError::NoPortMapsAvailable => 728,
            UpnpError::PortMappingNotFound => 730,
            UpnpError::InconsistentParameters => 733,
        }
    }

    /// The error's counter.
    pub const fn outcome(self) -> super::Outcome {
        use super::Outcome as O;
        match self {
            UpnpError::InvalidAction => O::InvalidAction,
            UpnpError::InvalidArgs => O::InvalidArgs,
            UpnpError::ActionFailed => O::ActionFailed,
            UpnpError::NotAuthorized => O::NotAuthorized,
            UpnpError::ArrayIndexInvalid => O::ArrayIndexInvalid,
            UpnpError::NoSuchEntry => O::NoSuchEntry,
            UpnpError::WildcardExternalPort => O::WildcardExternalPort,
            UpnpError::Conflict => O::Conflict,
            UpnpError::NoPortMapsAvailable => O::NoPortMapsAvailable,
            UpnpError::PortMappingNotFound => O::PortMappingNotFound,
            UpnpError::InconsistentParameters => O::InconsistentParameters,
        }
    }

    /// The error's description: its name in the specification.
    fn description(self) -> &'static str {
        match self {
            UpnpError::InvalidAction => "Invalid Action",
            UpnpError::InvalidArgs => "Invalid Args",
            UpnpError::ActionFailed => "Action Failed",
            UpnpError::NotAuthorized => "Action not authorized",
            UpnpError::ArrayIndexInvalid => "SpecifiedArrayIndexInvalid",
            UpnpError::NoSuchEntry => "NoSuchEntryInArray",
            UpnpError::WildcardExternalPort => "WildCardNotPermittedInExtPort",
            UpnpError::Conflict => "ConflictInMappingEntry",
            UpnpError::NoPortMapsAvailable => "NoPortMapsAvailable",
            UpnpError::PortMappingNotFound => "PortMappingNotFound",
            UpnpError::InconsistentParameters => "InconsistentParameters",
        }
    }
}

/// A mapping as WANIPConnection names it: remote host, external port, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingKey {
    /// The only remote host let in; `None` (the empty string): any.
    pub remote_host: Option<Ipv4Addr>,
    /// The external port; 0 is the wildcard.
    pub external_port: u16,
    /// TCP or UDP.
    pub proto: Protocol,
}

/// AddPortMapping's and AddAnyPortMapping's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMapping {
    /// The mapping.
    pub key: MappingKey,
    /// The client's port.
    pub internal_port: u16,
    /// The client's address, which must be the requester's own.
    pub internal_client: Ipv4Addr,
    /// Whether the mapping is on; only enabled mappings are kept.
    pub enabled: bool,
    /// The client's description of the mapping.
    pub description: String,
    /// Seconds; 0 asks for the longest the gateway gives.
    pub lease: u32,
}

/// DeletePortMappingRange's and GetListOfPortMappings's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first external port.
    pub start: u16,
    /// The last external port.
    pub end: u16,
    /// TCP or UDP.
    pub proto: Protocol,
}

/// An action with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The external address.
    GetExternalIpAddress,
    /// Connected, and since when.
    GetStatusInfo,
    /// `IP_Routed`.
    GetConnectionTypeInfo,
    /// The link (WANCommonInterfaceConfig).
    GetCommonLinkProperties,
    /// Map exactly the external port given.
    AddPortMapping(NewMapping),
    /// Map the external port given, or another one.
    AddAnyPortMapping(NewMapping),
    /// Delete one mapping.
    DeletePortMapping(MappingKey),
    /// Delete the client's mappings in a range.
    DeletePortMappingRange(PortRange),
    /// One mapping by its key.
    GetSpecificPortMappingEntry(MappingKey),
    /// The n-th mapping.
    GetGenericPortMappingEntry(u16),
    /// The mappings in a range, at most `count` of them (0: all).
    GetListOfPortMappings(PortRange, u16),
}

/// A parsed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The service.
    pub service: Service,
    /// The action's name, for the answer.
    pub name: String,
    /// The action.
    pub action: Action,
}

/// The call a SOAPACTION header and a body make: `InvalidAction` for an unknown service or
/// action (or a body naming another action than the header), `InvalidArgs` for a body that
/// is not a SOAP envelope or arguments missing or of the wrong form.
pub fn parse(soap_action: &str, body: &[u8]) -> Result<Call, UpnpError> {
    let (urn, name) = soap_action
        .split_once('#')
        .ok_or(UpnpError::InvalidAction)?;
    let service = match urn.strip_prefix("urn:schemas-upnp-org:service:") {
        Some("WANIPConnection:1") => Service::WanIpConnection(1),
        Some("WANIPConnection:2") => Service::WanIpConnection(2),
        Some("WANCommonInterfaceConfig:1") => Service::WanCommonInterfaceConfig,
        _ => return Err(UpnpError::InvalidAction),
    };
    let args = arguments(body, name)?;
    let a = Args(&args);
    let action = match (service, name) {
        (Service::WanCommonInterfaceConfig, "GetCommonLinkProperties") => {
            Action::GetCommonLinkProperties
        }
        (Service::WanCommonInterfaceConfig, _) => return Err(UpnpError::InvalidAction),
        (_, "GetExternalIPAddress") => Action::GetExternalIpAddress,
        (_, "GetStatusInfo") => Action::GetStatusInfo,
        (_, "GetConnectionTypeInfo") => Action::GetConnectionTypeInfo,
        (_, "AddPortMapping") => Action::AddPortMapping(a.new_mapping()?),
        (Service::WanIpConnection(2), "AddAnyPortMapping") => {
            Action::AddAnyPortMapping(a.new_mapping()?)
        }
        (_, "DeletePortMapping") => Action::DeletePortMapping(a.key()?),
        (Service::WanIpConnection(2), "DeletePortMappingRange") => {
            Action::DeletePortMappingRange(a.range()?)
        }
        (_, "GetSpecificPortMappingEntry") => Action::GetSpecificPortMappingEntry(a.key()?),
        (_, "GetGenericPortMappingEntry") => {
            Action::GetGenericPortMappingEntry(a.number("NewPortMappingIndex")?)
        }
        (Service::WanIpConnection(2), "GetListOfPortMappings") => {
            Action::GetListOfPortMappings(a.range()?, a.number("NewNumberOfPorts")?)
        }
        _ => return Err(UpnpError::InvalidAction),
    };
    Ok(Call {
        service,
        name: name.to_owned(),
        action,
    })
}

/// The arguments of the action element `name` inside the envelope's Body, as name and text.
fn arguments(body: &[u8], name: &str) -> Result<Vec<(String, String)>, UpnpError> {
    let text = core::str::from_utf8(body).map_err(|_| UpnpError::InvalidArgs)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    // Element local names from the root down.
    let mut path: Vec<String> = Vec::new();
    let mut args: Vec<(String, String)> = Vec::new();
    let mut seen_action = false;
    loop {
        let event = reader.read_event().map_err(|_| UpnpError::InvalidArgs)?;
        match event {
            Event::Start(e) => {
                if path.len() >= MAX_DEPTH {
                    return Err(UpnpError::InvalidArgs);
                }
                let local = e.local_name().into_inner().to_owned();
                element(&path, &local, name, &mut seen_action, &mut args)?;
                path.push(local);
            }
            Event::Empty(e) => {
                let local = e.local_name().into_inner();
                element(&path, local, name, &mut seen_action, &mut args)?;
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) if path.len() == 4 && path[1] == "Body" => {
                append(&mut args, &t.xml10_content())?;
            }
            Event::CData(t) if path.len() == 4 && path[1] == "Body" => {
                append(&mut args, &t)?;
            }
            Event::GeneralRef(r) if path.len() == 4 && path[1] == "Body" => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .ok()
                        .flatten()
                        .ok_or(UpnpError::InvalidArgs)?
                        .to_string()
                } else {
                    resolve_predefined_entity(&r)
                        .ok_or(UpnpError::InvalidArgs)?
                        .to_owned()
                };
                append(&mut args, &c)?;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() {
        return Err(UpnpError::InvalidArgs);
    }
    if !seen_action {
        return Err(UpnpError::InvalidArgs);
    }
    Ok(args)
}

/// An element `local` opening under `path`: the envelope's, the action (which must be the one
/// named in the header, and the only one), or an argument (text only).
fn element(
    path: &[String],
    local: &str,
    action: &str,
    seen_action: &mut bool,
    args: &mut Vec<(String, String)>,
) -> Result<(), UpnpError> {
    let in_body = path.get(1).is_some_and(|p| p == "Body");
    match path.len() {
        0 if local != "Envelope" => Err(UpnpError::InvalidArgs),
        2 if in_body => {
            if *seen_action || local != action {
                return Err(UpnpError::InvalidAction);
            }
            *seen_action = true;
            Ok(())
        }
        3 if in_body => {
            if args.len() >= MAX_ARGS {
                return Err(UpnpError::InvalidArgs);
            }
            args.push((local.to_owned(), String::new()));
            Ok(())
        }
        4.. if in_body => Err(UpnpError::InvalidArgs),
        _ => Ok(()),
    }
}

fn append(args: &mut [(String, String)], text: &str) -> Result<(), UpnpError> {
    let (_, value) = args.last_mut().ok_or(UpnpError::InvalidArgs)?;
    if value.len() + text.len() > MAX_VALUE {
        return Err(UpnpError::InvalidArgs);
    }
    value.push_str(text);
    Ok(())
}

/// Typed access to the arguments.
struct Args<'a>(&'a [(String, String)]);

impl Args<'_> {
    fn get(&self, name: &str) -> Result<&str, UpnpError> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .ok_or(UpnpError::InvalidArgs)
    }

    fn number<T: core::str::FromStr>(&self, name: &str) -> Result<T, UpnpError> {
        self.get(name)?.parse().map_err(|_| UpnpError::InvalidArgs)
    }

    fn proto(&self) -> Result<Protocol, UpnpError> {
        let p = self.get("NewProtocol")?;
        if p.eq_ignore_ascii_case("TCP") {
            Ok(Protocol::Tcp)
        } else if p.eq_ignore_ascii_case("UDP") {
            Ok(Protocol::Udp)
        } else {
            Err(UpnpError::InvalidArgs)
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, UpnpError> {
        match self.get(name)? {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err(UpnpError::InvalidArgs),
        }
    }

    fn key(&self) -> Result<MappingKey, UpnpError> {
        // An absent NewRemoteHost is the wildcard, as its empty string is.
        let remote = self.get("NewRemoteHost").unwrap_or("");
        Ok(MappingKey {
            remote_host: match remote {
                "" | "*" => None,
                a => Some(a.parse().map_err(|_| UpnpError::InvalidArgs)?),
            },
            external_port: self.number("NewExternalPort")?,
            proto: self.proto()?,
        })
    }

    fn new_mapping(&self) -> Result<NewMapping, UpnpError> {
        Ok(NewMapping {
            key: self.key()?,
            internal_port: self.number("NewInternalPort")?,
            internal_client: self
                .get("NewInternalClient")?
                .parse()
                .map_err(|_| UpnpError::InvalidArgs)?,
            enabled: self.boolean("NewEnabled")?,
            description: self.get("NewPortMappingDescription")?.to_owned(),
            lease: self.number("NewLeaseDuration")?,
        })
    }

    fn range(&self) -> Result<PortRange, UpnpError> {
        let r = PortRange {
            start: self.number("NewStartPort")?,
            end: self.number("NewEndPort")?,
            proto: self.proto()?,
        };
        // NewManage asks for other clients' mappings too; a client only ever gets its own,
        // so either value is read the same.
        self.boolean("NewManage")?;
        Ok(r)
    }
}

/// The answer to `call`: its output arguments, in the order of the service description.
pub fn write_reply(call: &Call, out: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body>\
         <u:{}Response xmlns:u=\"{}\">",
        call.name,
        call.service.urn()
    );
    for (name, value) in out {
        let _ = write!(s, "<{name}>{}</{name}>", escape(*value));
    }
    let _ = write!(s, "</u:{}Response></s:Body></s:Envelope>\r\n", call.name);
    s
}

/// A fault with a UPnP error (UDA 1.1 section 3.2.2), sent with HTTP 500.
pub fn write_fault(e: UpnpError) -> String {
    format!(
        "<?xml version=\"1.0\"?>\r\n<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><s:Fault>\
         <faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>\
         <UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{}</errorCode>\
         <errorDescription>{}</errorDescription></UPnPError></detail></s:Fault></s:Body>\
         </s:Envelope>\r\n",
        e.code(),
        e.description()
    )
}

/// The mapping list of GetListOfPortMappings (WANIPConnection:2's PortMappingList): an XML
/// document sent escaped as the NewPortListing string.
pub fn write_port_listing(entries: &[PortListingEntry<'_>]) -> String {
    let mut s = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <p:PortMappingList xmlns:p=\"urn:schemas-upnp-org:gw:WANIPConnection\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:schemaLocation=\"urn:schemas-upnp-org:gw:WANIPConnection \
         http://www.upnp.org/schemas/gw/WANIPConnection-v2.xsd\">",
    );
    for e in entries {
        let _ = write!(
            s,
            "<p:PortMappingEntry><p:NewRemoteHost>{}</p:NewRemoteHost>\
             <p:NewExternalPort>{}</p:NewExternalPort><p:NewProtocol>{}</p:NewProtocol>\
             <p:NewInternalPort>{}</p:NewInternalPort>\
             <p:NewInternalClient>{}</p:NewInternalClient><p:NewEnabled>1</p:NewEnabled>\
             <p:NewDescription>{}</p:NewDescription>\
             <p:NewLeaseTime>{}</p:NewLeaseTime></p:PortMappingEntry>",
            e.remote_host,
            e.external_port,
            e.proto,
            e.internal_port,
            e.internal_client,
            escape(e.description),
            e.lease
        );
    }
    s.push_str("</p:PortMappingList>");
    s
}

/// One entry of a port listing.
#[derive(Debug, Clone, Copy)]
pub struct PortListingEntry<'a> {
    /// The remote host, or empty.
    pub remote_host: &'a str,
    /// The external port.
    pub external_port: u16,
    /// `TCP` or `UDP`.
    pub proto: &'a str,
    /// The client's port.
    pub internal_port: u16,
    /// The client's address.
    pub internal_client: Ipv4Addr,
    /// The description.
    pub description: &'a str,
    /// Seconds left.
    pub lease: u32,
}

#[cfg(test)]
mod tests;
