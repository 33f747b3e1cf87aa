//! What NAT behaviour discovery concludes, from what it saw: the verdicts (pure functions of
//! the observed mappings and answers, so they are tested without a network) and their
//! rendering as a table. The verdict names are the config's, so a verdict can be compared
//! with the `[behavior]` that produced it.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use natgate_core::config::{FilteringBehavior, Hairpinning, MappingBehavior};
use serde::Serialize;

/// One mapping seen: a local socket and the address the STUN server saw it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// The socket's local address.
    pub local: SocketAddr,
    /// Its mapped (external) address.
    pub mapped: SocketAddr,
}

/// Whether the NAT keeps the internal port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preservation {
    /// Every mapping kept its port.
    Always,
    /// Some did.
    Sometimes,
    /// None did.
    Never,
}

/// The difference between the external ports of mappings made one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "step")]
pub enum PortDelta {
    /// Always the same step (a sequential allocator, or preserved ports that happened to
    /// be so).
    Constant(i32),
    /// Not constant: random allocation (or preserved random ports).
    Varies,
}

/// How external addresses were chosen for one host's mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolingVerdict {
    /// Every mapping used the same address: paired pooling (or a NAT with one address).
    Paired,
    /// Mappings used different addresses: arbitrary pooling.
    Arbitrary,
}

/// The measured mapping lifetime: alive after `alive_for` seconds idle, gone after
/// `gone_after` (if it went within the measurement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifetime {
    /// The longest idle time after which a mapping still answered.
    pub alive_for: Option<u64>,
    /// The shortest idle time after which a mapping no longer did, if any did not.
    pub gone_after: Option<u64>,
}

/// Everything discovery found out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The STUN server's primary address.
    pub server: SocketAddr,
    /// Its other address (OTHER-ADDRESS).
    pub other: SocketAddr,
    /// Mapping behaviour (RFC 5780 section 4.3).
    pub mapping: MappingBehavior,
    /// Filtering behaviour (RFC 5780 section 4.4).
    pub filtering: FilteringBehavior,
    /// Hairpinning (RFC 5780 section 4.5), with the source the hairpinned packet carried;
    /// `None` when nothing arrived but the mapping and filtering seen would have stopped a
    /// hairpinned probe anyway (see [`hairpinning`]).
    pub hairpinning: Option<Hairpinning>,
    /// Port preservation.
    pub port_preservation: Preservation,
    /// Whether every mapping kept its port's parity (RFC 4787 REQ-4).
    pub port_parity: bool,
    /// The step between consecutive mappings' external ports.
    pub port_delta: PortDelta,
    /// Address pooling.
    pub pooling: PoolingVerdict,
    /// The mapping lifetime, when measured (RFC 5780 section 4.6).
    pub lifetime: Option<Lifetime>,
    /// The fresh mappings the port verdicts come from, in the order they were made.
    pub samples: Vec<Sample>,
}

/// RFC 5780 section 4.3: the mapped addresses one socket got from the primary address (test
/// I), the alternate address and primary port (test II), and the alternate address and port
/// (test III).
pub fn mapping(test1: SocketAddr, test2: SocketAddr, test3: SocketAddr) -> MappingBehavior {
    if test2 == test1 {
        MappingBehavior::EndpointIndependent
    } else if test3 == test2 {
        MappingBehavior::AddressDependent
    } else {
        MappingBehavior::AddressAndPortDependent
    }
}

/// RFC 5780 section 4.4: whether an answer came from the other address and port (test II),
/// and from the same address but the other port (test III), to a socket that had sent only to
/// the primary.
pub fn filtering(other_address_came: bool, other_port_came: bool) -> FilteringBehavior {
    if other_address_came {
        FilteringBehavior::EndpointIndependent
    } else if other_port_came {
        FilteringBehavior::AddressDependent
    } else {
        FilteringBehavior::AddressAndPortDependent
    }
}

/// Hairpinning from where a packet one socket sent to another's mapped address came from
/// (`None` if none arrived), the sender's internal address, and the mapping and filtering
/// seen. The probe is a packet each way, so it passes any filtering whose state the sender's
/// packet opens; but under a dependent mapping that packet gets a new mapping, whose external
/// endpoint the other side never sent to, so dependent filtering stops it whether the NAT
/// hairpins or not: then a probe that did not arrive tells nothing. Internal-source
/// hairpinning between two sockets of one host looks like none: the host's kernel drops a
/// packet that arrives with its own address as source.
pub fn hairpinning(
    seen_source: Option<SocketAddr>,
    sender_internal: SocketAddr,
    mapping: MappingBehavior,
    filtering: FilteringBehavior,
) -> Option<Hairpinning> {
    match seen_source {
        Some(s) if s == sender_internal => Some(Hairpinning::InternalSource),
        Some(_) => Some(Hairpinning::ExternalSource),
        None if mapping == MappingBehavior::EndpointIndependent
            || filtering == FilteringBehavior::EndpointIndependent =>
        {
            Some(Hairpinning::Off)
        }
        None => None,
    }
}

/// Port preservation over `samples`.
pub fn preservation(samples: &[Sample]) -> Preservation {
    let kept = samples
        .iter()
        .filter(|s| s.local.port() == s.mapped.port())
        .count();
    match kept {
        0 => Preservation::Never,
        n if n == samples.len() => Preservation::Always,
        _ => Preservation::Sometimes,
    }
}

/// Whether every sample kept its port's parity.
pub fn parity(samples: &[Sample]) -> bool {
    samples
        .iter()
        .all(|s| s.local.port() % 2 == s.mapped.port() % 2)
}

/// The step between consecutive external ports (of at least two).
pub fn port_delta(ports: &[u16]) -> PortDelta {
    let steps: Vec<i32> = ports
        .windows(2)
        .map(|w| i32::from(w[1]) - i32::from(w[0]))
        .collect();
    match steps.split_first() {
        Some((first, rest)) if rest.iter().all(|s| s == first) => PortDelta::Constant(*first),
        _ => PortDelta::Varies,
    }
}

/// Address pooling over `samples` (all from one host).
pub fn pooling(samples: &[Sample]) -> PoolingVerdict {
    let first = samples.first().map(|s| s.mapped.ip());
    if samples.iter().all(|s| Some(s.mapped.ip()) == first) {
        PoolingVerdict::Paired
    } else {
        PoolingVerdict::Arbitrary
    }
}

/// The lifetime bracket from checks made after these idle times, each alive or not.
pub fn lifetime(checks: &[(u64, bool)]) -> Lifetime {
    let gone_after = checks.iter().filter(|c| !c.1).map(|c| c.0).min();
    let alive_for = checks
        .iter()
        .filter(|c| c.1 && gone_after.is_none_or(|g| c.0 < g))
        .map(|c| c.0)
        .max();
    Lifetime {
        alive_for,
        gone_after,
    }
}

fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => e.to_string(),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<IpAddr> = self.samples.iter().fold(Vec::new(), |mut v, s| {
            if !v.contains(&s.mapped.ip()) {
                v.push(s.mapped.ip());
            }
            v
        });
        let kept = self
            .samples
            .iter()
            .filter(|s| s.local.port() == s.mapped.port())
            .count();
        let mut rows: Vec<(&str, String)> = vec![
            ("mapping", name(&self.mapping)),
            ("filtering", name(&self.filtering)),
            (
                "hairpinning",
                match &self.hairpinning {
                    Some(h) => name(h),
                    None => {
                        "undetermined (dependent mapping and filtering stop the probe)".to_string()
                    }
                },
            ),
            (
                "port preservation",
                format!(
                    "{} ({kept} of {})",
                    name(&self.port_preservation),
                    self.samples.len()
                ),
            ),
            (
                "port parity",
                if self.port_parity { "kept" } else { "not kept" }.to_string(),
            ),
            (
                "port delta",
                match self.port_delta {
                    PortDelta::Constant(d) => format!("constant {d:+}"),
                    PortDelta::Varies => "varies".to_string(),
                },
            ),
        ];
        let mut pool = name(&self.pooling);
        let _ = write!(
            pool,
            " ({})",
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows.push(("address pooling", pool));
        rows.push((
            "mapping lifetime",
            match self.lifetime {
                None => "not measured".to_string(),
                Some(Lifetime {
                    alive_for,
                    gone_after: Some(g),
                }) => format!("more than {} s, at most {g} s", alive_for.unwrap_or(0)),
                Some(Lifetime {
                    alive_for,
                    gone_after: None,
                }) => format!("more than {} s", alive_for.unwrap_or(0)),
            },
        ));
        writeln!(f, "STUN server {} (other {})", self.server, self.other)?;
        for (k, v) in rows {
            writeln!(f, "{k:<18} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    fn sample(local: u16, mapped: &str) -> Sample {
        Sample {
            local: SocketAddr::from(([100, 64, 0, 10], local)),
            mapped: sa(mapped),
        }
    }

    #[test]
    fn rfc5780_mapping_from_the_three_tests() {
        let (a, b, c) = (sa("1.1.1.1:1"), sa("1.1.1.1:2"), sa("1.1.1.1:3"));
        assert_eq!(mapping(a, a, a), MappingBehavior::EndpointIndependent);
        assert_eq!(mapping(a, b, b), MappingBehavior::AddressDependent);
        assert_eq!(mapping(a, b, c), MappingBehavior::AddressAndPortDependent);
    }

    #[test]
    fn rfc5780_filtering_from_the_two_tests() {
        assert_eq!(
            filtering(true, true),
            FilteringBehavior::EndpointIndependent
        );
        assert_eq!(filtering(false, true), FilteringBehavior::AddressDependent);
        assert_eq!(
            filtering(false, false),
            FilteringBehavior::AddressAndPortDependent
        );
    }

    #[test]
    fn hairpinning_by_source_and_what_could_be_seen() {
        use FilteringBehavior as F;
        use MappingBehavior as M;
        let inside = sa("100.64.0.10:4000");
        let outside = Some(sa("198.51.100.1:4000"));
        let ext = Some(Hairpinning::ExternalSource);
        assert_eq!(
            hairpinning(outside, inside, M::AddressDependent, F::AddressDependent),
            ext
        );
        assert_eq!(
            hairpinning(
                Some(inside),
                inside,
                M::EndpointIndependent,
                F::EndpointIndependent
            ),
            Some(Hairpinning::InternalSource)
        );
        let off = Some(Hairpinning::Off);
        assert_eq!(
            hairpinning(
                None,
                inside,
                M::EndpointIndependent,
                F::AddressAndPortDependent
            ),
            off
        );
        assert_eq!(
            hairpinning(
                None,
                inside,
                M::AddressAndPortDependent,
                F::EndpointIndependent
            ),
            off
        );
        assert_eq!(
            hairpinning(None, inside, M::AddressDependent, F::AddressDependent),
            None
        );
    }

    #[test]
    fn port_verdicts() {
        let kept = [sample(4000, "9.9.9.9:4000"), sample(4001, "9.9.9.9:4001")];
        let moved = [sample(4000, "9.9.9.9:5000"), sample(4001, "9.9.9.8:5002")];
        assert_eq!(preservation(&kept), Preservation::Always);
        assert_eq!(preservation(&moved), Preservation::Never);
        assert_eq!(preservation(&[kept[0], moved[0]]), Preservation::Sometimes);
        assert!(parity(&kept) && parity(&moved[..1]) && !parity(&moved));
        assert_eq!(pooling(&kept), PoolingVerdict::Paired);
        assert_eq!(pooling(&moved), PoolingVerdict::Arbitrary);
        assert_eq!(port_delta(&[10, 12, 14]), PortDelta::Constant(2));
        assert_eq!(port_delta(&[10, 12, 13]), PortDelta::Varies);
        assert_eq!(port_delta(&[10]), PortDelta::Varies, "no step seen");
    }

    #[test]
    fn lifetime_bracket() {
        let l = lifetime(&[(2, true), (4, true), (6, false), (8, false)]);
        assert_eq!((l.alive_for, l.gone_after), (Some(4), Some(6)));
        let l = lifetime(&[(2, true), (4, true)]);
        assert_eq!((l.alive_for, l.gone_after), (Some(4), None));
    }

    #[test]
    fn json_uses_the_config_names() {
        let r = Report {
            server: sa("203.0.113.10:3478"),
            other: sa("203.0.113.11:3479"),
            mapping: MappingBehavior::AddressAndPortDependent,
            filtering: FilteringBehavior::AddressDependent,
            hairpinning: Some(Hairpinning::ExternalSource),
            port_preservation: Preservation::Always,
            port_parity: true,
            port_delta: PortDelta::Constant(1),
            pooling: PoolingVerdict::Paired,
            lifetime: None,
            samples: vec![sample(4000, "9.9.9.9:4000")],
        };
        let j = serde_json::to_value(&r).expect("serializes");
        assert_eq!(j["mapping"], "address-and-port-dependent");
        assert_eq!(j["filtering"], "address-dependent");
        assert_eq!(j["hairpinning"], "external-source");
        assert_eq!(j["port_delta"]["kind"], "constant");
        let table = r.to_string();
        assert!(
            table.contains("mapping            address-and-port-dependent"),
            "{table}"
        );
        assert!(table.contains("(1 of 1)"), "{table}");
    }
}
