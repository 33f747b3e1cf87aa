//! The NAT behaviours of RFC 4787, 5382 and 5508, each as a setting.

use serde::{Deserialize, Serialize};

/// How a mapping is keyed (RFC 4787 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingBehavior {
    /// One external endpoint per internal endpoint, whatever the destination (RFC 4787 REQ-1).
    EndpointIndependent,
    /// A new external endpoint per destination address.
    AddressDependent,
    /// A new external endpoint per destination address and port ("symmetric").
    AddressAndPortDependent,
}

impl MappingBehavior {
    /// How much of the remote endpoint keys a mapping: 0 none, 1 the address, 2 address and
    /// port.
    pub const fn specificity(self) -> u8 {
        match self {
            MappingBehavior::EndpointIndependent => 0,
            MappingBehavior::AddressDependent => 1,
            MappingBehavior::AddressAndPortDependent => 2,
        }
    }
}

/// Which inbound packets a mapping lets through (RFC 4787 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FilteringBehavior {
    /// Any remote endpoint may reach a mapped endpoint ("full cone").
    EndpointIndependent,
    /// Only remote addresses the internal endpoint has sent to ("restricted cone").
    AddressDependent,
    /// Only remote address-and-port pairs the internal endpoint has sent to.
    AddressAndPortDependent,
}

impl FilteringBehavior {
    /// How much of a remote endpoint must have been sent to for it to get in: 0 nothing, 1 the
    /// address, 2 address and port (comparable with [`MappingBehavior::specificity`]).
    pub const fn specificity(self) -> u8 {
        match self {
            FilteringBehavior::EndpointIndependent => 0,
            FilteringBehavior::AddressDependent => 1,
            FilteringBehavior::AddressAndPortDependent => 2,
        }
    }
}

/// How an external address is chosen for a subscriber (RFC 4787 section 4.1, REQ-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Every mapping of one internal address uses the same external address; fail if it has no
    /// free port.
    Paired,
    /// Like paired, but fall back to another address when the paired one has no free port.
    SoftPaired,
    /// Any address of the pool, mapping by mapping.
    Arbitrary,
}

/// How an external port (or ICMP identifier) is chosen (RFC 4787 section 4.2, RFC 6056).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAssignment {
    /// Keep the internal port when free; pick at random only on collision (RFC 7857 section 3).
    Preserve,
    /// Always a random port (RFC 6056 algorithm 1): hardest to guess.
    Random,
    /// The next free port after the last one given out: easy to predict, for labs.
    Sequential,
}

/// Which packets refresh a mapping's timer (RFC 4787 section 4.3, REQ-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refresh {
    /// Outbound packets only.
    Outbound,
    /// Inbound packets only (violates REQ-6's MUST: lab only).
    Inbound,
    /// Both directions.
    Both,
}

impl Refresh {
    /// Whether a packet going in `dir` refreshes.
    pub const fn refreshes(self, dir: crate::endpoint::Direction) -> bool {
        use crate::endpoint::Direction;
        matches!(
            (self, dir),
            (Refresh::Both, _)
                | (Refresh::Outbound, Direction::Outbound)
                | (Refresh::Inbound, Direction::Inbound)
        )
    }
}

/// Whether and how one subscriber reaches another through its external endpoint (RFC 4787 REQ-9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hairpinning {
    /// Packets to the external pool from inside are dropped (lab only).
    Off,
    /// Hairpinned packets keep the sender's internal source (violates REQ-9a: lab only).
    InternalSource,
    /// Hairpinned packets carry the sender's external endpoint as source (REQ-9a).
    ExternalSource,
}

/// What happens to an unsolicited inbound SYN after its hold time (RFC 5382 REQ-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsolicitedSyn {
    /// Answer with ICMP port unreachable when the hold time passes unclaimed.
    IcmpPortUnreachable,
    /// Drop silently when the hold time passes unclaimed.
    Drop,
}

/// The answer sent when no mapping or session can be made: pool exhausted, a subscriber's port,
/// session or rate limit, the session table full (RFC 5508 REQ-8, RFC 6888 REQ-11). The refused
/// packet is dropped whatever the answer; nothing live is evicted to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingFailureReply {
    /// Drop without an answer.
    None,
    /// Destination unreachable, code 1 host unreachable (RFC 6888 REQ-11's choice).
    HostUnreachable,
    /// Destination unreachable, code 13 communication administratively prohibited.
    AdminProhibited,
    /// A TCP reset for TCP (RFC 9293 section 3.10.7.1, as a closed port answers), so that the
    /// subscriber's stack gives up at once instead of retrying its SYN; UDP and ICMP, which have
    /// no reset, get host unreachable.
    TcpReset,
}

/// What one refused packet is answered with, by [`MappingFailureReply::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureAnswer {
    /// Nothing.
    Nothing,
    /// ICMP destination unreachable with this code.
    IcmpUnreachable(u8),
    /// A TCP reset.
    TcpReset,
}

impl MappingFailureReply {
    /// The ICMP destination-unreachable code for a packet that gets an ICMP answer, if any: for
    /// [`TcpReset`](Self::TcpReset), the host unreachable that non-TCP packets get.
    pub const fn icmp_code(self) -> Option<u8> {
        match self {
            MappingFailureReply::None => None,
            MappingFailureReply::HostUnreachable | MappingFailureReply::TcpReset => Some(1),
            MappingFailureReply::AdminProhibited => Some(13),
        }
    }

    /// The answer to a refused packet of `proto`.
    pub const fn answer(self, proto: crate::endpoint::Protocol) -> FailureAnswer {
        match (self, proto) {
            (MappingFailureReply::TcpReset, crate::endpoint::Protocol::Tcp) => {
                FailureAnswer::TcpReset
            }
            _ => match self.icmp_code() {
                Some(code) => FailureAnswer::IcmpUnreachable(code),
                None => FailureAnswer::Nothing,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Protocol;

    #[test]
    fn rfc6888_req11_answer_per_choice_and_protocol() {
        use FailureAnswer::*;
        let cases = [
            (MappingFailureReply::None, [Nothing, Nothing, Nothing]),
            (
                MappingFailureReply::HostUnreachable,
                [IcmpUnreachable(1), IcmpUnreachable(1), IcmpUnreachable(1)],
            ),
            (
                MappingFailureReply::AdminProhibited,
                [
                    IcmpUnreachable(13),
                    IcmpUnreachable(13),
                    IcmpUnreachable(13),
                ],
            ),
            (
                MappingFailureReply::TcpReset,
                [TcpReset, IcmpUnreachable(1), IcmpUnreachable(1)],
            ),
        ];
        for (choice, answers) in cases {
            for (proto, want) in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp]
                .into_iter()
                .zip(answers)
            {
                assert_eq!(choice.answer(proto), want, "{choice:?} {proto:?}");
            }
        }
    }

    #[test]
    fn tcp_reset_is_spelled_tcp_reset_in_config_files() {
        #[derive(Deserialize)]
        struct F {
            r: MappingFailureReply,
        }
        let f: F = toml::from_str("r = \"tcp-reset\"").expect("parses");
        assert_eq!(f.r, MappingFailureReply::TcpReset);
    }
}

/// What the engine does to the TTL of a packet it forwards. A packet crossing the NAT must
/// lose exactly one (RFC 1812 5.3.1: a router decrements once; RFC 5508 REQ-10), so the right
/// setting depends on how often the driver's platform routes each packet besides the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtlHandling {
    /// The engine is the hop: it decrements, and answers a packet whose TTL would reach zero
    /// with ICMP time exceeded. For drivers that move frames without routing them.
    Decrement,
    /// The engine leaves the TTL alone: the platform decrements (and answers expiry) exactly
    /// once per crossing. Also what a lab uses to show a NAT that costs the kernel's two hops.
    Keep,
    /// The driver's kernel routes each packet twice, into the engine and out again, each time
    /// decrementing (a TUN: in through one routing, out through another). The engine gives
    /// back one of those hops, so the crossing costs one. The kernel's first routing answers
    /// TTL 1 with time exceeded from the gateway, so what reaches the engine has at least 1
    /// left and leaves it with at least 2: the second routing never expires a packet, and a
    /// packet that arrived with TTL 2 reaches the next router with 1 and expires there. A TTL
    /// of 255 cannot have been routed in, and stays (no wrap to 0). Packets the engine builds
    /// itself (ICMP errors, resets) start at 64 and lose the one routing out, like any packet
    /// the gateway forwards; they are not given a hop back, as they were never routed in.
    RestoreKernelHop,
}

impl TtlHandling {
    /// Whether a packet that reaches the engine with `ttl` expires here (RFC 5508 REQ-10):
    /// only when the engine is the hop, and then the engine answers it.
    #[inline]
    pub fn expires(self, ttl: u8) -> bool {
        self == TtlHandling::Decrement && ttl <= 1
    }

    /// The TTL a forwarded packet leaves the engine with, given the one it arrived with (not
    /// [`Self::expires`]).
    #[inline]
    pub fn apply(self, ttl: u8) -> u8 {
        match self {
            TtlHandling::Decrement => ttl.saturating_sub(1),
            TtlHandling::Keep => ttl,
            TtlHandling::RestoreKernelHop => ttl.saturating_add(1),
        }
    }
}

#[cfg(test)]
mod ttl_tests {
    use super::TtlHandling::*;

    #[test]
    fn each_setting_costs_what_it_says() {
        assert_eq!(Decrement.apply(64), 63);
        assert_eq!(Keep.apply(64), 64);
        // The kernel took 64 to 63 routing into the engine; the engine gives it back, and the
        // routing out takes it to 63: one hop in all.
        assert_eq!(RestoreKernelHop.apply(63), 64);
        assert_eq!(RestoreKernelHop.apply(255), 255, "no wrap to 0");
        assert!(Decrement.expires(1) && Decrement.expires(0) && !Decrement.expires(2));
        // The kernel answered TTL 1 before routing into the engine; what arrives passes.
        assert!(!RestoreKernelHop.expires(1) && !Keep.expires(1));
    }
}
