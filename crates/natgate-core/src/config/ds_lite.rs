//! DS-Lite (RFC 6333): natgate as an AFTR. Which B4s may make softwires, which inner IPv4
//! sources they may use, what each softwire may hold, and what happens to a packet that does
//! not fit a softwire.
//!
//! The names and defaults follow the ISC AFTR's configuration (`acl6`, `autotunnel`,
//! `private`, `defmtu`, `defmss`, `deftoobig`, its per-tunnel session quotas and rates), so an
//! operator moving from it finds the same knobs.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{ConfigError, Ipv4Prefix};
use crate::endpoint::{Ipv6Prefix, Protocol};
use crate::wire::ipv6::HEADER_LEN as IPV6_HEADER_LEN;

/// The `[ds-lite]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DsLite {
    /// The AFTR's endpoint address: B4s send their softwire packets to it, and packets to B4s
    /// leave from it (RFC 6333 section 5.2).
    pub endpoint: Ipv6Addr,
    /// B4 addresses that may make softwires on their own (the AFTR's `acl6`). A packet from
    /// any other B4 is dropped and counted, unless the B4 has a configured softwire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acl6: Vec<Ipv6Prefix>,
    /// Whether the first packet from a B4 in `acl6` makes its softwire (the AFTR's
    /// `autotunnel on`); without, only configured softwires carry traffic.
    #[serde(default = "yes")]
    pub auto: bool,
    /// Inner IPv4 sources a softwire may carry (the AFTR's `private`): RFC 1918 space and the
    /// DS-Lite range 192.0.0.0/29 (RFC 6333 section 5.7) by default. Anything else from a B4
    /// is spoofed or misconfigured, and is dropped before it makes any state.
    #[serde(default = "default_private")]
    pub private: Vec<Ipv4Prefix>,
    /// The softwire MTU: the largest IPv4 packet carried whole (RFC 6333 section 5.3); the
    /// tunnel packet is 40 bytes longer. 1500 assumes an IPv6 path MTU of 1540 to the B4s.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Clamp the MSS option of TCP SYNs through a softwire to what its MTU carries (the
    /// AFTR's `defmss on`), so that TCP never sends segments the softwire would fragment.
    #[serde(default = "yes")]
    pub mss: bool,
    /// What happens to an IPv4 packet larger than the softwire MTU.
    #[serde(default)]
    pub too_big: TooBig,
    /// Cut IPv6 fragments of equal size rather than full ones and a small tail.
    #[serde(default)]
    pub equal_fragments: bool,
    /// Per-softwire limits, for every softwire without its own.
    #[serde(default)]
    pub limits: SoftwireLimits,
    /// The most softwires one engine tracks at a time; a B4 beyond it is refused
    /// (`softwire_table_full`) and no live softwire is evicted.
    #[serde(default = "default_max_softwires")]
    pub max_softwires: u32,
    /// Softwires configured one by one (`[[ds-lite.softwire]]`): B4s allowed whatever `acl6`
    /// and `auto` say, with their own MTU and limits if given.
    #[serde(default, rename = "softwire", skip_serializing_if = "Vec::is_empty")]
    pub softwires: Vec<SoftwireSpec>,
}

/// A softwire configured by its B4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SoftwireSpec {
    /// The B4's IPv6 address.
    pub b4: Ipv6Addr,
    /// This softwire's MTU, if not the section's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// This softwire's limits, if not the section's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<SoftwireLimits>,
}

/// What to do with an IPv4 packet that does not fit the softwire MTU (RFC 6333 section 5.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TooBig {
    /// Encapsulate it and fragment the IPv6 packet; the B4 reassembles. The RFC's preference:
    /// IPv4 hosts behind a B4 never see the tunnel's overhead.
    #[default]
    FragmentIpv6,
    /// With DF set, answer ICMPv4 fragmentation needed with the softwire MTU (RFC 1191);
    /// without DF, fragment the IPv6 packet as `fragment-ipv6` does.
    Icmp,
    /// Always answer fragmentation needed when DF is set, and drop without DF: nothing is
    /// fragmented by the AFTR.
    Strict,
}

/// What one softwire may hold and how fast it may open sessions (RFC 6888 REQ-4, REQ-5, with
/// the softwire as the subscriber). The defaults are the ISC AFTR's per-tunnel ones. A limit of
/// 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SoftwireLimits {
    /// Live TCP sessions.
    pub max_tcp_sessions: u32,
    /// Live UDP sessions.
    pub max_udp_sessions: u32,
    /// Live ICMP query sessions.
    pub max_icmp_sessions: u32,
    /// New TCP sessions per second (burst: one second's worth).
    pub tcp_rate: u32,
    /// New UDP sessions per second.
    pub udp_rate: u32,
    /// New ICMP query sessions per second.
    pub icmp_rate: u32,
}

impl Default for SoftwireLimits {
    fn default() -> Self {
        SoftwireLimits {
            max_tcp_sessions: 2000,
            max_udp_sessions: 200,
            max_icmp_sessions: 50,
            tcp_rate: 50,
            udp_rate: 20,
            icmp_rate: 5,
        }
    }
}

impl SoftwireLimits {
    /// The session quota for `proto` (0: none).
    pub const fn sessions(&self, proto: Protocol) -> u32 {
        match proto {
            Protocol::Tcp => self.max_tcp_sessions,
            Protocol::Udp => self.max_udp_sessions,
            Protocol::Icmp => self.max_icmp_sessions,
        }
    }

    /// The creation rate for `proto`, sessions per second (0: none).
    pub const fn rate(&self, proto: Protocol) -> u32 {
        match proto {
            Protocol::Tcp => self.tcp_rate,
            Protocol::Udp => self.udp_rate,
            Protocol::Icmp => self.icmp_rate,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_mtu() -> u16 {
    1500
}

fn default_max_softwires() -> u32 {
    65_536
}

/// RFC 1918 and the DS-Lite well-known range 192.0.0.0/29 (RFC 6333 section 5.7), which a B4
/// may use on its own side of the softwire.
pub fn default_private() -> Vec<Ipv4Prefix> {
    [
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
        (Ipv4Addr::new(192, 0, 0, 0), 29),
    ]
    .into_iter()
    .filter_map(|(a, l)| Ipv4Prefix::new(a, l))
    .collect()
}

/// The smallest softwire MTU: what IPv4 in an IPv6 minimum-MTU link carries (RFC 8200 section
/// 5: 1280, less the 40-byte IPv6 header). Below it the AFTR would fragment every full-size
/// packet a B4 may send.
pub const MIN_SOFTWIRE_MTU: u16 = 1280 - IPV6_HEADER_LEN as u16;

/// The largest softwire MTU: the tunnel packet must fit an IPv6 payload length.
pub const MAX_SOFTWIRE_MTU: u16 = u16::MAX - IPV6_HEADER_LEN as u16;

/// Softwires are tagged in each session record with a 24-bit number; one engine tracks at most
/// this many.
pub const MAX_SOFTWIRES: u32 = (1 << 24) - 1;

impl DsLite {
    /// A section with the defaults for AFTR endpoint `endpoint` and B4 prefixes `acl6`.
    pub fn new(endpoint: Ipv6Addr, acl6: Vec<Ipv6Prefix>) -> Self {
        DsLite {
            endpoint,
            acl6,
            auto: true,
            private: default_private(),
            mtu: default_mtu(),
            mss: true,
            too_big: TooBig::default(),
            equal_fragments: false,
            limits: SoftwireLimits::default(),
            max_softwires: default_max_softwires(),
            softwires: Vec::new(),
        }
    }

    /// Checks every setting; the error names it.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |setting: &'static str, why: String| ConfigError::OutOfRange { setting, why };
        let e = self.endpoint;
        if e.is_unspecified() || e.is_loopback() || e.is_multicast() {
            return Err(bad(
                "ds-lite.endpoint",
                format!("{e} is not a unicast address"),
            ));
        }
        if self.acl6.is_empty() && self.softwires.is_empty() {
            return Err(bad(
                "ds-lite.acl6",
                "no B4 could make a softwire: give acl6 prefixes or [[ds-lite.softwire]] entries"
                    .into(),
            ));
        }
        if !self.auto && self.softwires.is_empty() {
            return Err(bad(
                "ds-lite.auto",
                "off, and no [[ds-lite.softwire]] is configured: no B4 could make a softwire"
                    .into(),
            ));
        }
        if self.private.is_empty() {
            return Err(bad(
                "ds-lite.private",
                "no inner IPv4 source would be allowed".into(),
            ));
        }
        check_mtu("ds-lite.mtu", self.mtu)?;
        if self.max_softwires == 0 || self.max_softwires > MAX_SOFTWIRES {
            return Err(bad(
                "ds-lite.max-softwires",
                format!("must be 1 to {MAX_SOFTWIRES}"),
            ));
        }
        if self.softwires.len() > self.max_softwires as usize {
            return Err(bad(
                "ds-lite.max-softwires",
                format!(
                    "{} softwires are configured, more than the {} allowed",
                    self.softwires.len(),
                    self.max_softwires
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.softwires {
            if !seen.insert(s.b4) {
                return Err(bad(
                    "ds-lite.softwire.b4",
                    format!("{} is listed twice", s.b4),
                ));
            }
            if s.b4.is_unspecified() || s.b4.is_loopback() || s.b4.is_multicast() {
                return Err(bad(
                    "ds-lite.softwire.b4",
                    format!("{} is not a unicast address", s.b4),
                ));
            }
            if s.b4 == self.endpoint {
                return Err(bad(
                    "ds-lite.softwire.b4",
                    format!("{} is the AFTR's own endpoint", s.b4),
                ));
            }
            if let Some(m) = s.mtu {
                check_mtu("ds-lite.softwire.mtu", m)?;
            }
        }
        Ok(())
    }

    /// Whether B4 address `b4` may make a softwire of its own (it is in `acl6` and automatic
    /// softwires are on). Configured softwires are allowed apart from this.
    pub fn allows_auto(&self, b4: Ipv6Addr) -> bool {
        self.auto && self.acl6.iter().any(|p| p.contains(b4))
    }

    /// Whether `src` may be the inner source of a softwire packet.
    pub fn allows_inner_source(&self, src: Ipv4Addr) -> bool {
        self.private.iter().any(|p| p.contains(src))
    }
}

fn check_mtu(setting: &'static str, mtu: u16) -> Result<(), ConfigError> {
    if (MIN_SOFTWIRE_MTU..=MAX_SOFTWIRE_MTU).contains(&mtu) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            setting,
            why: format!("{mtu} is not in {MIN_SOFTWIRE_MTU}..={MAX_SOFTWIRE_MTU}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b4(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last)
    }

    fn section() -> DsLite {
        DsLite::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            vec!["2001:db8:1::/48".parse().unwrap()],
        )
    }

    #[test]
    fn parses_a_section_with_the_isc_aftr_defaults() {
        let d: DsLite = toml::from_str(
            r#"
            endpoint = "2001:db8::1"
            acl6 = ["2001:db8:1::/48"]
            "#,
        )
        .unwrap();
        assert_eq!(d, section());
        assert!(d.check().is_ok());
        let l = d.limits;
        assert_eq!(
            [l.max_tcp_sessions, l.max_udp_sessions, l.max_icmp_sessions],
            [2000, 200, 50]
        );
        assert_eq!([l.tcp_rate, l.udp_rate, l.icmp_rate], [50, 20, 5]);
        assert_eq!(
            (d.mtu, d.mss, d.too_big, d.auto),
            (1500, true, TooBig::FragmentIpv6, true)
        );
        for private in ["10.1.2.3", "172.31.0.1", "192.168.1.10", "192.0.0.2"] {
            assert!(d.allows_inner_source(private.parse().unwrap()), "{private}");
        }
        for public in ["192.0.0.8", "100.64.0.1", "8.8.8.8", "172.32.0.1"] {
            assert!(!d.allows_inner_source(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn parses_softwires_and_overrides() {
        let d: DsLite = toml::from_str(
            r#"
            endpoint = "2001:db8::1"
            auto = false
            too-big = "strict"
            mtu = 1460
            private = ["10.0.0.0/8"]
            limits = { max-udp-sessions = 10, udp-rate = 1 }
            [[softwire]]
            b4 = "2001:db8:2::2"
            mtu = 1400
            limits = { max-tcp-sessions = 5 }
            "#,
        )
        .unwrap();
        assert!(d.check().is_ok());
        assert_eq!(d.too_big, TooBig::Strict);
        assert_eq!(d.limits.max_udp_sessions, 10);
        assert_eq!(
            d.limits.max_tcp_sessions, 2000,
            "defaults fill what is left out"
        );
        let s = d.softwires[0];
        assert_eq!(s.mtu, Some(1400));
        assert_eq!(s.limits.map(|l| l.max_tcp_sessions), Some(5));
        assert!(!d.allows_auto(s.b4), "auto is off");
        assert!(toml::from_str::<DsLite>("endpoint = \"2001:db8::1\"\nbogus = 1").is_err());
    }

    #[test]
    fn acl6_decides_automatic_softwires() {
        let mut d = section();
        assert!(d.allows_auto(b4(2)));
        assert!(!d.allows_auto("2001:db8:2::2".parse().unwrap()));
        d.auto = false;
        assert!(!d.allows_auto(b4(2)));
    }

    fn refused(d: &DsLite) -> &'static str {
        match d.check() {
            Err(ConfigError::OutOfRange { setting, .. }) => setting,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn refuses_what_cannot_work() {
        let mut d = section();
        d.endpoint = Ipv6Addr::UNSPECIFIED;
        assert_eq!(refused(&d), "ds-lite.endpoint");
        let mut d = section();
        d.acl6.clear();
        assert_eq!(refused(&d), "ds-lite.acl6");
        let mut d = section();
        d.auto = false;
        assert_eq!(refused(&d), "ds-lite.auto");
        let mut d = section();
        d.private.clear();
        assert_eq!(refused(&d), "ds-lite.private");
        for mtu in [MIN_SOFTWIRE_MTU - 1, MAX_SOFTWIRE_MTU + 1] {
            let mut d = section();
            d.mtu = mtu;
            assert_eq!(refused(&d), "ds-lite.mtu");
        }
        let mut d = section();
        d.mtu = MIN_SOFTWIRE_MTU;
        assert!(d.check().is_ok());
        let mut d = section();
        d.max_softwires = 0;
        assert_eq!(refused(&d), "ds-lite.max-softwires");
        let spec = SoftwireSpec {
            b4: b4(2),
            mtu: None,
            limits: None,
        };
        let mut d = section();
        d.softwires = vec![spec, spec];
        assert_eq!(refused(&d), "ds-lite.softwire.b4");
        let mut d = section();
        d.softwires = vec![SoftwireSpec {
            mtu: Some(100),
            ..spec
        }];
        assert_eq!(refused(&d), "ds-lite.softwire.mtu");
        let mut d = section();
        d.softwires = vec![SoftwireSpec {
            b4: d.endpoint,
            ..spec
        }];
        assert_eq!(refused(&d), "ds-lite.softwire.b4");
        let mut d = section();
        d.max_softwires = 1;
        d.softwires = vec![spec, SoftwireSpec { b4: b4(3), ..spec }];
        assert_eq!(refused(&d), "ds-lite.max-softwires");
    }
}
