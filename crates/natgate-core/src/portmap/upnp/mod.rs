//! UPnP IGD's messages (UPnP Device Architecture 1.1; InternetGatewayDevice:2 with
//! WANIPConnection:2, which answers version 1 clients too): SSDP search and answer
//! ([`ssdp`]), the HTTP requests the description and control URLs get ([`http`]), the device
//! and service descriptions ([`description`]), and SOAP actions and answers ([`soap`]).
//!
//! Wire format only: what a request means for the mappings is the port-mapping server's
//! (`PortMapServer::handle_ssdp`, `PortMapServer::handle_http`).

pub mod description;
pub mod http;
pub mod soap;
pub mod ssdp;

use std::net::Ipv4Addr;

/// The gateway as UPnP clients see it: where its description is, and its devices' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    /// The inside address the HTTP server listens on.
    pub address: Ipv4Addr,
    /// The HTTP server's port.
    pub http_port: u16,
}

impl Device {
    /// The description's URL, SSDP's LOCATION.
    pub fn location(&self) -> String {
        format!(
            "http://{}:{}{}",
            self.address,
            self.http_port,
            description::ROOT_PATH
        )
    }

    /// The unique device name of the root device (0), the WANDevice (1) or the
    /// WANConnectionDevice (2). Made from the inside address, so that it stays the same across
    /// restarts (clients cache devices by it) and differs between gateways.
    pub fn udn(&self, device: u8) -> String {
        let a = self.address.to_bits();
        format!(
            "uuid:6e617467-6174-4500-80{device:02x}-{:04x}{a:08x}",
            self.http_port
        )
    }
}

/// What happened to a UPnP request that got an answer, one counter each.
macro_rules! upnp_outcomes {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// What a UPnP request was answered with. Each is one counter, named by
        /// [`Outcome::name`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Outcome {
            $( $(#[$doc])* $variant, )*
        }

        impl Outcome {
            /// Every outcome, in counter order.
            pub const ALL: &'static [Outcome] = &[$(Outcome::$variant,)*];

            /// The snake_case counter name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Outcome::$variant => $name,)*
                }
            }
        }
    };
}

upnp_outcomes! {
    /// An SSDP search answered.
    SearchAnswered => "search_answered",
    /// A description (device or service) sent.
    Description => "description",
    /// A SOAP action done.
    Success => "success",
    /// HTTP 400: a request that is not HTTP/1.x this server reads.
    BadRequest => "bad_request",
    /// HTTP 404: no such URL.
    NotFound => "not_found",
    /// HTTP 405: a method the URL does not take.
    MethodNotAllowed => "method_not_allowed",
    /// UPnP 401 Invalid Action.
    InvalidAction => "invalid_action",
    /// UPnP 402 Invalid Args.
    InvalidArgs => "invalid_args",
    /// UPnP 501 Action Failed.
    ActionFailed => "action_failed",
    /// UPnP 606 Action not authorized.
    NotAuthorized => "not_authorized",
    /// UPnP 713 SpecifiedArrayIndexInvalid.
    ArrayIndexInvalid => "array_index_invalid",
    /// UPnP 714 NoSuchEntryInArray.
    NoSuchEntry => "no_such_entry",
    /// UPnP 716 WildCardNotPermittedInExtPort.
    WildcardExternalPort => "wildcard_external_port",
    /// UPnP 718 ConflictInMappingEntry.
    Conflict => "conflict",
    /// UPnP 728 NoPortMapsAvailable.
    NoPortMapsAvailable => "no_port_maps_available",
    /// UPnP 730 PortMappingNotFound.
    PortMappingNotFound => "port_mapping_not_found",
    /// UPnP 733 InconsistentParameters.
    InconsistentParameters => "inconsistent_parameters",
}
