//! Named presets: a whole behaviour in one word, to which single settings can be added.

use super::Behavior;
use super::behavior::*;
use super::timers::Timers;
use serde::{Deserialize, Serialize};
use std::num::NonZeroU16;

/// A named set of behaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// RFC 6888 carrier-grade NAT: EIM, EIF, paired pooling, random ports kept in their range,
    /// hairpinning with the external source, RFC timers. The default.
    Rfc6888Cgn,
    /// "Full cone": EIM and EIF, ports preserved where free.
    FullCone,
    /// "Restricted cone": EIM and address-dependent filtering.
    RestrictedCone,
    /// "Port-restricted cone": EIM and address-and-port-dependent filtering.
    PortRestrictedCone,
    /// "Symmetric": a mapping per destination endpoint, APDF (breaks RFC 4787 REQ-1: lab only).
    Symmetric,
    /// What Linux `MASQUERADE` does: a mapping per connection (conntrack) with the source port
    /// kept and shared between connections to different remotes (port overlapping, RFC 7857
    /// section 3: conntrack needs only the 5-tuple to be unique), so that a peer sees one
    /// external endpoint per socket; APDF; no hairpinning (a packet to the gateway's own
    /// address is the gateway's); conntrack's short timers (breaks REQ-1, REQ-5 and REQ-9:
    /// lab only).
    LinuxMasquerade,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 6] = [
        Preset::Rfc6888Cgn,
        Preset::FullCone,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        Preset::Symmetric,
        Preset::LinuxMasquerade,
    ];

    /// The behaviour this preset stands for.
    pub fn behavior(self) -> Behavior {
        let cgn = Behavior {
            mapping: MappingBehavior::EndpointIndependent,
            filtering: FilteringBehavior::EndpointIndependent,
            pooling: Pooling::Paired,
            port_assignment: PortAssignment::Random,
            sequential_step: NonZeroU16::MIN,
            port_parity: false,
            port_range_preservation: true,
            refresh: Refresh::Outbound,
            hairpinning: Hairpinning::ExternalSource,
            port_overlapping: false,
            timers: Timers::default(),
            unsolicited_syn: UnsolicitedSyn::IcmpPortUnreachable,
            mapping_failure_reply: MappingFailureReply::HostUnreachable,
            ttl: TtlHandling::Decrement,
            outside_mtu: 1500,
            inside_mtu: 1500,
            forward_icmp_errors: true,
            clear_df: false,
            insert_host_id: false,
        };
        let cone = |filtering| Behavior {
            filtering,
            port_assignment: PortAssignment::Preserve,
            port_parity: true,
            refresh: Refresh::Both,
            ..cgn
        };
        match self {
            Preset::Rfc6888Cgn => cgn,
            Preset::FullCone => cone(FilteringBehavior::EndpointIndependent),
            Preset::RestrictedCone => cone(FilteringBehavior::AddressDependent),
            Preset::PortRestrictedCone => cone(FilteringBehavior::AddressAndPortDependent),
            Preset::Symmetric => Behavior {
                mapping: MappingBehavior::AddressAndPortDependent,
                filtering: FilteringBehavior::AddressAndPortDependent,
                port_assignment: PortAssignment::Random,
                ..cone(FilteringBehavior::AddressAndPortDependent)
            },
            Preset::LinuxMasquerade => Behavior {
                mapping: MappingBehavior::AddressAndPortDependent,
                filtering: FilteringBehavior::AddressAndPortDependent,
                pooling: Pooling::Paired,
                port_assignment: PortAssignment::Preserve,
                port_overlapping: true,
                port_parity: false,
                refresh: Refresh::Both,
                hairpinning: Hairpinning::Off,
                unsolicited_syn: UnsolicitedSyn::Drop,
                timers: Timers {
                    udp: 30,
                    tcp_established: 432_000,
                    tcp_transitory_open: 120,
                    tcp_transitory_close: 120,
                    tcp_rst_linger: 10,
                    icmp_query: 30,
                    port_hold_down: 0,
                    ..Timers::default()
                },
                ..cgn
            },
        }
    }

    /// The preset's name, as written in config.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::Rfc6888Cgn => "rfc6888-cgn",
            Preset::FullCone => "full-cone",
            Preset::RestrictedCone => "restricted-cone",
            Preset::PortRestrictedCone => "port-restricted-cone",
            Preset::Symmetric => "symmetric",
            Preset::LinuxMasquerade => "linux-masquerade",
        }
    }
}
