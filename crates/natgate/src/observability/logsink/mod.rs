//! Translation logs for a carrier-grade NAT (RFC 6888 REQ-12, REQ-11): the engine's [`Event`]s
//! leave the packet path through a bounded queue ([`pipeline`]) and fan out to any combination
//! of sinks: JSON lines ([`crate::observability::eventlog::EventSink`]), syslog in RFC 5424 form ([`syslog`]),
//! and IPFIX over UDP with the NAT information elements of RFC 8158 ([`ipfix`]). A
//! [`whois::BlockLog`] keeps the external-port -> subscriber history that answers
//! `natgate ctl whois` without a line per connection.
//!
//! Every sink first turns an [`Event`] into a [`Record`] (one `match` with an arm per variant,
//! in [`Record::from_event`]): the fields of the NAT logging information model of RFC 8158, so
//! a new event variant is one new arm there and nowhere else.

pub mod ipfix;
pub mod pipeline;
pub mod syslog;
pub mod whois;

use std::io;
use std::net::Ipv4Addr;

use natgate_core::{DropReason, EndReason, Endpoint, Event, Instant, Protocol, SessionOrigin};

use crate::observability::eventlog::EventSink;

pub use pipeline::{
    LogPipeline, LogPipelineHandle, LogSender, PipelineConfig, PipelineMonitor, PipelineStats,
    SinkLoss,
};

/// Why a sink could not take or write an event.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Writing the file or sending the datagram failed.
    #[error("log I/O: {0}")]
    Io(#[from] io::Error),
    /// A block log file holds something that is not a block log record.
    #[error("block log {path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The logger thread could not be started.
    #[error("cannot start the logger thread: {0}")]
    Spawn(io::Error),
    /// The logger thread panicked; events it held were lost.
    #[error("the logger thread panicked")]
    LoggerPanicked,
    /// A thread panicked while holding a shared sink's lock.
    #[error("a shared log was poisoned by a panic")]
    Poisoned,
}

/// Events a sink took and then could not write or send, and why: the logger counts
/// [`Lost::events`] under the sink's name and [`LossReason::of`] the error.
#[derive(Debug, thiserror::Error)]
#[error("{events} events lost: {source}")]
pub struct Lost {
    /// How many events did not reach the sink's destination.
    pub events: u64,
    /// What went wrong.
    #[source]
    pub source: LogError,
}

impl Lost {
    /// `events` lost to `source`.
    pub fn new(events: u64, source: impl Into<LogError>) -> Self {
        Lost {
            events,
            source: source.into(),
        }
    }
}

/// Why events did not reach a sink: the `reason` label of the per-sink loss counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossReason {
    /// The file system is full (ENOSPC) or the quota used up (EDQUOT).
    NoSpace,
    /// The collector refused the datagrams (ECONNREFUSED: an ICMP port unreachable came back,
    /// or no one listens on the Unix socket).
    Refused,
    /// No way to the collector (ENETUNREACH, EHOSTUNREACH, EDESTADDRREQ, or a missing Unix
    /// socket, ENOENT).
    Unreachable,
    /// Any other error.
    Io,
}

impl LossReason {
    /// Every reason, in counter order.
    pub const ALL: [LossReason; 4] = [
        LossReason::NoSpace,
        LossReason::Refused,
        LossReason::Unreachable,
        LossReason::Io,
    ];

    /// The label value.
    pub const fn name(self) -> &'static str {
        match self {
            LossReason::NoSpace => "no_space",
            LossReason::Refused => "refused",
            LossReason::Unreachable => "unreachable",
            LossReason::Io => "io_error",
        }
    }

    /// The reason behind `e`.
    pub fn of(e: &LogError) -> LossReason {
        let LogError::Io(io) = e else {
            return LossReason::Io;
        };
        match io.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => LossReason::NoSpace,
            Some(libc::ECONNREFUSED) => LossReason::Refused,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EDESTADDRREQ | libc::ENOENT) => {
                LossReason::Unreachable
            }
            _ => LossReason::Io,
        }
    }
}

/// Somewhere events are written. The pipeline's logger thread calls [`Sink::record`] for each
/// event of a batch, then [`Sink::flush`] once; nothing need reach its destination before the
/// flush. A failing call says how many events it lost (the one recorded, or what the batch
/// held); nothing else is lost silently.
pub trait Sink: Send {
    /// The sink's name in the loss counters and log lines (`file`, `stdout`, `syslog`,
    /// `ipfix`, `block-log`).
    fn name(&self) -> &'static str;
    /// Adds one event to the current batch.
    fn record(&mut self, ev: &Event) -> Result<(), Lost>;
    /// Ends the batch: writes (and, if durable, syncs) or sends what it holds.
    fn flush(&mut self) -> Result<(), Lost>;
}

impl Sink for EventSink {
    fn name(&self) -> &'static str {
        if self.rotation().is_some() {
            "file"
        } else {
            "stdout"
        }
    }

    fn record(&mut self, ev: &Event) -> Result<(), Lost> {
        EventSink::record(self, ev).map_err(|e| Lost::new(e.lines, e.source))
    }

    fn flush(&mut self) -> Result<(), Lost> {
        EventSink::flush(self).map_err(|e| Lost::new(e.lines, e.source))
    }
}

/// The `natEvent` values of RFC 8158 section 4.1 (IANA "NAT Event Type") that natgate emits.
/// Values 1 and 2 are historic and not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatEvent {
    /// 3: no external address (or port on any address) could be had for a new mapping.
    AddressesExhausted = 3,
    /// 4: NAT44 session create.
    Nat44SessionCreate = 4,
    /// 5: NAT44 session delete.
    Nat44SessionDelete = 5,
    /// 8: NAT44 BIB (mapping) create.
    Nat44BibCreate = 8,
    /// 9: NAT44 BIB (mapping) delete.
    Nat44BibDelete = 9,
    /// 13: a quota was exceeded; which one is [`QuotaLimit`] (`natQuotaExceededEvent`).
    QuotaExceeded = 13,
    /// 16: port block allocation.
    PortBlockAllocation = 16,
    /// 17: port block de-allocation.
    PortBlockDeallocation = 17,
}

impl NatEvent {
    /// The value on the wire (IPFIX IE 230, syslog `natEvent`).
    pub const fn value(self) -> u8 {
        self as u8
    }

    /// A short upper-case name, the syslog MSGID (RFC 5424 section 6.2.7: at most 32
    /// printable ASCII characters).
    pub const fn msgid(self) -> &'static str {
        match self {
            NatEvent::AddressesExhausted => "ADDR-EXHAUSTED",
            NatEvent::Nat44SessionCreate => "SESSION-CREATE",
            NatEvent::Nat44SessionDelete => "SESSION-DELETE",
            NatEvent::Nat44BibCreate => "MAPPING-CREATE",
            NatEvent::Nat44BibDelete => "MAPPING-DELETE",
            NatEvent::QuotaExceeded => "QUOTA-EXCEEDED",
            NatEvent::PortBlockAllocation => "PORTBLOCK-ALLOC",
            NatEvent::PortBlockDeallocation => "PORTBLOCK-FREE",
        }
    }

    /// The RFC 8158 description, the syslog MSG.
    pub const fn description(self) -> &'static str {
        match self {
            NatEvent::AddressesExhausted => "NAT addresses exhausted",
            NatEvent::Nat44SessionCreate => "NAT44 session create",
            NatEvent::Nat44SessionDelete => "NAT44 session delete",
            NatEvent::Nat44BibCreate => "NAT44 BIB create",
            NatEvent::Nat44BibDelete => "NAT44 BIB delete",
            NatEvent::QuotaExceeded => "Quota exceeded",
            NatEvent::PortBlockAllocation => "Port block allocation",
            NatEvent::PortBlockDeallocation => "Port block de-allocation",
        }
    }

    /// Whether the event reports a failure (syslog severity warning, not informational).
    pub const fn is_failure(self) -> bool {
        matches!(self, NatEvent::AddressesExhausted | NatEvent::QuotaExceeded)
    }
}

/// The `natQuotaExceededEvent` values of RFC 8158 section 4.1.2 (IANA "NAT Quota Exceeded
/// Event Type") that natgate emits with [`NatEvent::QuotaExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaLimit {
    /// 1: the global session table is full.
    MaxSessionEntries = 1,
    /// 2: no room for another mapping (BIB entry) record: the session table's reserve of
    /// shared-mapping records is used up.
    MaxBibEntries = 2,
    /// 3: one subscriber's limit (sessions per protocol, ports, or its session-creation rate,
    /// RFC 6888 REQ-4, REQ-5; RFC 8158 has no value of its own for a rate).
    MaxEntriesPerUser = 3,
    /// 4: the per-subscriber table is full: no room for another active subscriber.
    MaxSubscribers = 4,
}

impl QuotaLimit {
    /// The limit behind a drop, if the drop is a quota (rather than the pool running out).
    pub const fn of(reason: DropReason) -> Option<QuotaLimit> {
        match reason {
            DropReason::SessionTableFull => Some(QuotaLimit::MaxSessionEntries),
            DropReason::SharedMappingReserveFull | DropReason::MappingTableFull => {
                Some(QuotaLimit::MaxBibEntries)
            }
            DropReason::SubscriberSessionLimit
            | DropReason::SubscriberTotalSessionLimit
            | DropReason::SubscriberPortLimit
            | DropReason::SubscriberRateLimit => Some(QuotaLimit::MaxEntriesPerUser),
            DropReason::SubscriberTableFull => Some(QuotaLimit::MaxSubscribers),
            _ => None,
        }
    }

    /// The value on the wire (IPFIX IE 466, syslog `natQuotaExceededEvent`).
    pub const fn value(self) -> u32 {
        self as u32
    }
}

/// A port block's ports (RFC 8158 `portRangeStart`, `portRangeEnd`): the allocator's own type.
pub use natgate_core::alloc::PortRange;

/// One event in the terms of the NAT logging information model (RFC 8158 section 4): what
/// every sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// When (engine time; a [`crate::observability::eventlog::TimeBase`] maps it to wall-clock time).
    pub at: Instant,
    /// The event type.
    pub event: NatEvent,
    /// The protocol, if the event concerns one (`protocolIdentifier`).
    pub proto: Option<Protocol>,
    /// The subscriber's address and port (`sourceIPv4Address`, `sourceTransportPort`); port 0
    /// when the event concerns the whole subscriber.
    pub internal: Endpoint,
    /// The external address and port (`postNATSourceIPv4Address`,
    /// `postNAPTSourceTransportPort`), if one was assigned.
    pub external: Option<Endpoint>,
    /// The remote endpoint (`destinationIPv4Address`, `destinationTransportPort`); sinks drop it
    /// unless destinations are logged (RFC 6888 REQ-12).
    pub remote: Option<Endpoint>,
    /// The port block, for block events.
    pub block: Option<PortRange>,
    /// Which quota, for [`NatEvent::QuotaExceeded`].
    pub quota: Option<QuotaLimit>,
    /// What made the session, for session events, and who asked for an explicit mapping, for
    /// its mapping events. No RFC 8158 information element names a
    /// static rule or a real server, so IPFIX leaves it out; the syslog and JSON sinks carry it.
    pub origin: Option<SessionOrigin>,
    /// Why the session or mapping ended, for delete events: an operator's delete and a timeout
    /// are both natEvent 5 or 9, so only the syslog and JSON sinks can tell them apart.
    pub ended: Option<EndReason>,
}

impl Record {
    /// The record for `ev`. One arm per event variant: a new variant is added here.
    pub fn from_event(ev: &Event) -> Record {
        match *ev {
            Event::MappingCreated {
                at,
                proto,
                internal,
                external,
            } => Record {
                at,
                event: NatEvent::Nat44BibCreate,
                proto: Some(proto),
                internal,
                external: Some(external),
                remote: None,
                block: None,
                quota: None,
                origin: None,
                ended: None,
            },
            Event::MappingDeleted {
                at,
                proto,
                internal,
                external,
                reason,
            } => Record {
                at,
                event: NatEvent::Nat44BibDelete,
                proto: Some(proto),
                internal,
                external: Some(external),
                remote: None,
                block: None,
                quota: None,
                origin: None,
                ended: Some(reason),
            },
            Event::ExplicitMappingCreated {
                at,
                proto,
                internal,
                external,
                origin,
            }
            | Event::ExplicitMappingDeleted {
                at,
                proto,
                internal,
                external,
                origin,
            } => Record {
                at,
                event: if matches!(ev, Event::ExplicitMappingCreated { .. }) {
                    NatEvent::Nat44BibCreate
                } else {
                    NatEvent::Nat44BibDelete
                },
                proto: Some(proto),
                internal,
                external: Some(external),
                remote: None,
                block: None,
                quota: None,
                origin: Some(SessionOrigin::Explicit(origin)),
                // An explicit mapping's end is its own record (the protocol's deletion or its
                // lifetime), not a session's reason.
                ended: None,
            },
            Event::SessionCreated {
                at,
                proto,
                internal,
                external,
                remote,
                origin,
            } => Record {
                at,
                event: NatEvent::Nat44SessionCreate,
                proto: Some(proto),
                internal,
                external: Some(external),
                remote: Some(remote),
                block: None,
                quota: None,
                origin: Some(origin),
                ended: None,
            },
            Event::SessionDeleted {
                at,
                proto,
                internal,
                external,
                remote,
                origin,
                reason,
            } => Record {
                at,
                event: NatEvent::Nat44SessionDelete,
                proto: Some(proto),
                internal,
                external: Some(external),
                remote: Some(remote),
                block: None,
                quota: None,
                origin: Some(origin),
                ended: Some(reason),
            },
            Event::MappingFailed {
                at,
                proto,
                internal,
                remote,
                reason,
            } => {
                let quota = QuotaLimit::of(reason);
                Record {
                    at,
                    event: if quota.is_some() {
                        NatEvent::QuotaExceeded
                    } else {
                        NatEvent::AddressesExhausted
                    },
                    proto: Some(proto),
                    internal,
                    external: None,
                    remote: Some(remote),
                    block: None,
                    quota,
                    origin: None,
                    ended: None,
                }
            }
            Event::PortBlockAllocated {
                at,
                subscriber,
                external,
                ports,
            }
            | Event::PortBlockReleased {
                at,
                subscriber,
                external,
                ports,
            } => Record {
                at,
                event: if matches!(ev, Event::PortBlockAllocated { .. }) {
                    NatEvent::PortBlockAllocation
                } else {
                    NatEvent::PortBlockDeallocation
                },
                // One block serves every protocol (alloc::block), so no protocol is named.
                proto: None,
                internal: match subscriber {
                    natgate_core::alloc::SubscriberId::Ipv4(addr) => Endpoint::new(addr, 0),
                    // A softwire's block has no IPv4 subscriber: a record has no field for the
                    // B4's IPv6 address yet, so it names none rather than a wrong one.
                    natgate_core::alloc::SubscriberId::Softwire { .. } => {
                        Endpoint::new(std::net::Ipv4Addr::UNSPECIFIED, 0)
                    }
                },
                external: Some(Endpoint::new(external, ports.first)),
                remote: None,
                block: Some(ports),
                quota: None,
                origin: None,
                ended: None,
            },
        }
    }

    /// The subscriber (`sourceIPv4Address`).
    pub fn subscriber(&self) -> Ipv4Addr {
        self.internal.addr
    }

    /// The remote endpoint if destinations are logged (RFC 6888 REQ-12), else `None`.
    pub fn remote_if(&self, log_destinations: bool) -> Option<Endpoint> {
        self.remote.filter(|_| log_destinations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_event_values_are_rfc_8158s() {
        let want = [
            (NatEvent::AddressesExhausted, 3),
            (NatEvent::Nat44SessionCreate, 4),
            (NatEvent::Nat44SessionDelete, 5),
            (NatEvent::Nat44BibCreate, 8),
            (NatEvent::Nat44BibDelete, 9),
            (NatEvent::QuotaExceeded, 13),
            (NatEvent::PortBlockAllocation, 16),
            (NatEvent::PortBlockDeallocation, 17),
        ];
        for (e, v) in want {
            assert_eq!(e.value(), v, "{e:?}");
            assert!(e.msgid().len() <= 32 && e.msgid().bytes().all(|b| (33..=126).contains(&b)));
        }
    }

    #[test]
    fn every_event_maps_to_its_record() {
        let i = Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000);
        let x = Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 40000);
        let r = Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 53);
        let at = Instant::from_secs(1);
        let proto = Protocol::Udp;
        let cases = [
            (
                Event::MappingCreated {
                    at,
                    proto,
                    internal: i,
                    external: x,
                },
                NatEvent::Nat44BibCreate,
                Some(x),
                None,
            ),
            (
                Event::MappingDeleted {
                    at,
                    proto,
                    internal: i,
                    external: x,
                    reason: EndReason::Expired,
                },
                NatEvent::Nat44BibDelete,
                Some(x),
                None,
            ),
            (
                Event::SessionCreated {
                    at,
                    proto,
                    internal: i,
                    external: x,
                    remote: r,
                    origin: SessionOrigin::Dynamic,
                },
                NatEvent::Nat44SessionCreate,
                Some(x),
                Some(r),
            ),
            (
                Event::SessionDeleted {
                    at,
                    proto,
                    internal: i,
                    external: x,
                    remote: r,
                    origin: SessionOrigin::Dynamic,
                    reason: EndReason::Operator,
                },
                NatEvent::Nat44SessionDelete,
                Some(x),
                Some(r),
            ),
            (
                Event::MappingFailed {
                    at,
                    proto,
                    internal: i,
                    remote: r,
                    reason: DropReason::MappingFailed,
                },
                NatEvent::AddressesExhausted,
                None,
                Some(r),
            ),
        ];
        for (ev, event, external, remote) in cases {
            let rec = Record::from_event(&ev);
            assert_eq!(
                (rec.event, rec.external, rec.remote, rec.internal, rec.at),
                (event, external, remote, i, at)
            );
            assert_eq!(rec.remote_if(false), None);
            assert_eq!(rec.remote_if(true), remote);
            // Only session records say what made the session.
            let session = matches!(
                ev,
                Event::SessionCreated { .. } | Event::SessionDeleted { .. }
            );
            assert_eq!(rec.origin, session.then_some(SessionOrigin::Dynamic));
            // Only delete records say why it ended.
            let ended = match ev {
                Event::MappingDeleted { .. } => Some(EndReason::Expired),
                Event::SessionDeleted { .. } => Some(EndReason::Operator),
                _ => None,
            };
            assert_eq!(rec.ended, ended);
        }
    }

    #[test]
    fn a_refusal_at_a_quota_is_quota_exceeded_not_exhaustion() {
        let failed = |reason| {
            Record::from_event(&Event::MappingFailed {
                at: Instant::from_secs(1),
                proto: Protocol::Udp,
                internal: Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
                remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 53),
                reason,
            })
        };
        let quota = failed(DropReason::SubscriberSessionLimit);
        assert_eq!(
            (quota.event, quota.quota),
            (NatEvent::QuotaExceeded, Some(QuotaLimit::MaxEntriesPerUser))
        );
        assert_eq!(QuotaLimit::MaxEntriesPerUser.value(), 3);
        let full = failed(DropReason::SubscriberTableFull);
        assert_eq!(full.quota.map(QuotaLimit::value), Some(4));
        let bib = failed(DropReason::SharedMappingReserveFull);
        assert_eq!(
            bib.quota.map(QuotaLimit::value),
            Some(2),
            "maximum BIB entries"
        );
        let pool = failed(DropReason::MappingFailed);
        assert_eq!(
            (pool.event, pool.quota),
            (NatEvent::AddressesExhausted, None)
        );
    }
}
