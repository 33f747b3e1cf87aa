//! `[port-mapping]`: which protocols are answered, and what one subscriber may ask for.

use crate::endpoint::Ipv4Prefix;
use serde::{Deserialize, Serialize};

/// The port-mapping server's settings. Everything off by default: a NAT that opens inbound
/// ports on request is a policy the operator chooses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PortMapConfig {
    /// Answer PCP (RFC 6887).
    pub pcp: bool,
    /// Answer NAT-PMP (RFC 6886).
    pub nat_pmp: bool,
    /// Answer UPnP IGD (SSDP search on the inside, WANIPConnection over HTTP).
    pub upnp: bool,
    /// The TCP port of the UPnP description and control URLs on the inside address.
    pub upnp_port: u16,
    /// Shortest lifetime granted, seconds: shorter requests get this (RFC 6887 section 15
    /// lets the server raise a lifetime, and a very short one only costs renewals).
    pub min_lifetime: u32,
    /// Longest lifetime granted, seconds: longer requests get this (RFC 6887 section 15).
    pub max_lifetime: u32,
    /// Clients in these prefixes may map for other hosts with PCP's THIRD_PARTY option
    /// (RFC 6887 section 13.1); nobody may when empty.
    pub third_party: Vec<Ipv4Prefix>,
    /// Most explicit mappings one internal address may hold (all protocols).
    pub max_mappings_per_subscriber: u32,
    /// Requests per second one client address may make, sustained; past it requests are
    /// dropped and counted (`rate_limited`).
    pub requests_per_second: u32,
    /// Requests one client may make at once (its bucket's size).
    pub request_burst: u32,
    /// Most client addresses whose request rate is tracked at once: the rate limiter's bound.
    pub max_clients: u32,
}

impl Default for PortMapConfig {
    fn default() -> Self {
        PortMapConfig {
            pcp: false,
            nat_pmp: false,
            upnp: false,
            upnp_port: 5000,
            min_lifetime: 120,
            max_lifetime: 86_400,
            third_party: Vec::new(),
            max_mappings_per_subscriber: 64,
            requests_per_second: 10,
            request_burst: 20,
            max_clients: 65_536,
        }
    }
}

impl PortMapConfig {
    /// Whether any protocol is answered.
    pub const fn enabled(&self) -> bool {
        self.pcp || self.nat_pmp || self.upnp
    }

    /// What is wrong with the settings, as `(setting, why)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.min_lifetime == 0 {
            return Err((
                "port-mapping.min-lifetime",
                "must be at least 1 second".into(),
            ));
        }
        if self.max_lifetime < self.min_lifetime {
            return Err((
                "port-mapping.max-lifetime",
                format!(
                    "{} is below min-lifetime {}",
                    self.max_lifetime, self.min_lifetime
                ),
            ));
        }
        if self.upnp_port == 0 {
            return Err(("port-mapping.upnp-port", "must not be 0".into()));
        }
        if self.max_mappings_per_subscriber == 0 {
            return Err((
                "port-mapping.max-mappings-per-subscriber",
                "must be at least 1".into(),
            ));
        }
        if self.requests_per_second == 0 || self.request_burst == 0 {
            return Err((
                "port-mapping.requests-per-second",
                "the request rate and burst must both be at least 1".into(),
            ));
        }
        if self.max_clients == 0 {
            return Err(("port-mapping.max-clients", "must be at least 1".into()));
        }
        Ok(())
    }
}
