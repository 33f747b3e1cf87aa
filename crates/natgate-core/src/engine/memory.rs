//! How much memory an engine's state takes: measured on a live engine
//! ([`Engine::memory_usage`]) and estimated from a config before anything is built
//! ([`MemoryModel`]), for `limits.max-memory` (RFC 6888 REQ-4 asks for limits on the state a
//! CGN keeps; memory is the one that bounds all others).
//!
//! Both use the same accounting, the structures' own `memory_bytes`, so the estimate is honest:
//! the session table (which holds the mappings) has its size by formula
//! ([`NatTable::memory_for`], tested equal to the built table's), the address filter and the
//! static session table grow linearly with their capacity, so the model builds each at two
//! small capacities and extrapolates; the parts whose size does
//! not scale with sessions (fragment tracker, subscriber table, queues) are built at their
//! configured size and measured. Tables reserve everything up front, so the figure is what the
//! engine holds from the start, not what it might grow to.

use super::answer_limit::AnswerLimiter;
use super::queues::{EventQueue, SynHold, TransmitQueue};
use super::report_limit::RefusalReports;
use super::softwire::Softwires;
use super::subscriber::SubscriberTable;
use super::{Engine, TRANSMIT_SLOT, fragment_limits, transmit_slots};
use crate::alloc::PortAllocator;
use crate::config::{Config, FilteringBehavior};
use crate::fragment::FragmentTracker;
use crate::table::{AddressFilter, NatTable, PortUsers, StaticSessionTable};
use core::fmt;

/// Bytes of an engine's state, by part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// The session table, which holds the mappings too: session records (a mapping with one
    /// session lives in it), the shared-mapping reserve, both indexes and the timer wheel.
    pub sessions: usize,
    /// The address filter (address-dependent filtering only).
    pub address_filter: usize,
    /// How many mappings share each external endpoint (port overlapping only).
    pub port_users: usize,
    /// Fragment state and held fragments.
    pub fragments: usize,
    /// Per-subscriber limit state (only when a per-subscriber limit is set), and the softwire
    /// table (DS-Lite: softwires are subscribers too).
    pub subscribers: usize,
    /// The event, transmit and held-SYN queues, and the refusal-report table.
    pub queues: usize,
    /// The table of sessions made by static rules and virtual servers (only when the config
    /// has any).
    pub static_sessions: usize,
}

impl MemoryUsage {
    /// All parts together.
    pub fn total(&self) -> u64 {
        [
            self.sessions,
            self.address_filter,
            self.port_users,
            self.fragments,
            self.subscribers,
            self.queues,
            self.static_sessions,
        ]
        .iter()
        .fold(0u64, |sum, &b| sum.saturating_add(b as u64))
    }
}

impl fmt::Display for MemoryUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes: sessions and mappings {}, address filter {}, port users {}, fragments {}, \
             subscribers {}, queues {}, static sessions {}",
            self.total(),
            self.sessions,
            self.address_filter,
            self.port_users,
            self.fragments,
            self.subscribers,
            self.queues,
            self.static_sessions
        )
    }
}

/// Bytes of a table as a function of its capacity `n`, exact when `n` is a multiple of 8 (the
/// hash indexes allocate a bucket per 8 entries) and otherwise rounded up to one: an upper
/// bound within 8 entries.
#[derive(Debug, Clone, Copy)]
struct Linear {
    /// Bytes at capacity 8.
    at_8: usize,
    /// Bytes per 8 more entries.
    per_8: usize,
}

impl Linear {
    /// Measures `bytes_at` (a table built at a capacity, then its `memory_bytes`) at 8 and 16.
    fn measure(bytes_at: impl Fn(usize) -> usize) -> Self {
        let at_8 = bytes_at(8);
        Linear {
            at_8,
            per_8: bytes_at(16).saturating_sub(at_8),
        }
    }

    fn at(&self, n: u32) -> usize {
        let eighths = (n as usize).div_ceil(8).max(1);
        self.at_8
            .saturating_add((eighths - 1).saturating_mul(self.per_8))
    }
}

/// The memory a config's engine takes, as a function of its session and mapping limits (the
/// rest of the config fixed): what `limits.max-memory` is checked against, and what
/// `max-sessions` is derived from when it is left out.
#[derive(Debug, Clone, Copy)]
pub struct MemoryModel {
    /// Present under address-dependent filtering; sized like the session table.
    address_filter: Option<Linear>,
    /// Present under port overlapping; sized like the mapping limit.
    port_users: Option<Linear>,
    fragments: usize,
    subscribers: usize,
    queues: usize,
    static_sessions: usize,
}

impl MemoryModel {
    /// The model for `cfg`. Builds the fragment tracker, the subscriber table and the queues at
    /// their configured sizes to measure them (most of that memory is reserved, not touched),
    /// so call it only when [`MemoryModel::floor`] is within reach.
    pub fn of(cfg: &Config) -> Self {
        let l = &cfg.limits;
        let dependent = cfg.behavior.filtering == FilteringBehavior::AddressDependent;
        MemoryModel {
            address_filter: dependent
                .then(|| Linear::measure(|n| AddressFilter::new(n, 0).memory_bytes())),
            port_users: cfg
                .behavior
                .port_overlapping
                .then(|| Linear::measure(|n| PortUsers::new(n, 0).memory_bytes())),
            fragments: FragmentTracker::new(fragment_limits(l, &cfg.behavior)).memory_bytes(),
            subscribers: SubscriberTable::new(l.subscriber).map_or(0, |s| s.memory_bytes())
                + cfg.ds_lite.as_ref().map_or(0, |d| {
                    Softwires::new(d, crate::time::Instant::ZERO).memory_bytes()
                }),
            queues: EventQueue::new(l.event_queue as usize).memory_bytes()
                + TransmitQueue::new(transmit_slots(l)).memory_bytes()
                + SynHold::new(l.max_held_syns as usize).memory_bytes()
                + RefusalReports::new().memory_bytes()
                + AnswerLimiter::memory_bytes_of(l.answers()),
            static_sessions: if cfg.rules.is_empty()
                && cfg.virtual_servers.is_empty()
                && !cfg.explicit_mappings
            {
                0
            } else {
                Linear::measure(|n| StaticSessionTable::new(n, 0).memory_bytes())
                    .at(l.max_static_sessions)
            },
        }
    }

    /// A lower bound on what `cfg`'s engine takes, from the largest fixed parts alone (held
    /// fragments and transmit slots, one entry per subscriber), computed without building
    /// anything: a config above its memory limit by this much is refused before
    /// [`MemoryModel::of`] would reserve it.
    pub fn floor(cfg: &Config) -> u64 {
        let l = &cfg.limits;
        let slots = u64::from(l.max_held_fragments) + transmit_slots(l) as u64;
        let subscribers = if l.subscriber.any() {
            u64::from(l.subscriber.max_subscribers)
        } else {
            0
        };
        slots
            .saturating_mul(TRANSMIT_SLOT as u64)
            .saturating_add(subscribers.saturating_mul(SubscriberTable::ENTRY_BYTES as u64))
    }

    /// The memory with room for `max_sessions` sessions and `max_mappings` mappings.
    pub fn usage(&self, max_sessions: u32, max_mappings: u32) -> MemoryUsage {
        MemoryUsage {
            sessions: NatTable::memory_for(max_sessions as usize, max_mappings as usize),
            address_filter: self.address_filter.map_or(0, |f| f.at(max_sessions)),
            port_users: self.port_users.map_or(0, |u| u.at(max_mappings)),
            fragments: self.fragments,
            subscribers: self.subscribers,
            queues: self.queues,
            static_sessions: self.static_sessions,
        }
    }
}

impl<A: PortAllocator> Engine<A> {
    /// Bytes held by each part of the engine's state, by the structures' own accounting (the
    /// figures [`MemoryModel`] estimates from a config).
    pub fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage {
            sessions: self.sessions.memory_bytes(),
            address_filter: self.address_filter.as_ref().map_or(0, |f| f.memory_bytes()),
            port_users: self.port_users.as_ref().map_or(0, |u| u.memory_bytes()),
            fragments: self.fragments.memory_bytes(),
            subscribers: self.subscribers.as_ref().map_or(0, |s| s.memory_bytes())
                + self.softwires.as_ref().map_or(0, |s| s.memory_bytes()),
            queues: self.events.memory_bytes()
                + self.transmit.memory_bytes()
                + self.held_syns.memory_bytes()
                + self.refusal_reports.memory_bytes()
                + self.answers.memory_bytes(),
            static_sessions: self.statics.table.as_ref().map_or(0, |t| t.memory_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SubscriberLimits;
    use std::net::Ipv4Addr;

    fn config(sessions: u32, mappings: u32) -> Config {
        let mut c = Config::new(
            vec![Ipv4Addr::new(198, 51, 100, 1)],
            Ipv4Addr::new(100, 64, 0, 1),
        );
        c.limits.max_sessions = sessions;
        c.limits.max_mappings = mappings;
        c
    }

    fn built(c: &Config) -> MemoryUsage {
        Engine::new(c.clone().validate().expect("valid"), 1).memory_usage()
    }

    #[test]
    fn the_estimate_is_the_engines_own_accounting() {
        for (sessions, mappings) in [(8, 8), (4096, 1024), (100_000, 100_000)] {
            let c = config(sessions, mappings);
            let model = MemoryModel::of(&c);
            assert_eq!(model.usage(sessions, mappings), built(&c), "{sessions}");
        }
        // Every part: address-dependent filtering and per-subscriber limits too.
        let mut c = config(40_000, 20_000);
        c.behavior.filtering = FilteringBehavior::AddressDependent;
        c.limits.subscriber = SubscriberLimits {
            max_udp_sessions: 10,
            max_subscribers: 5000,
            ..SubscriberLimits::default()
        };
        let any = crate::rules::Ipv4Prefix::new(Ipv4Addr::UNSPECIFIED, 0).expect("prefix");
        c.rules
            .append(crate::rules::Rule::new(
                crate::Direction::Outbound,
                any,
                any,
                crate::rules::Action::Exempt,
            ))
            .expect("an exemption");
        c.limits.max_static_sessions = 1000;
        let real = built(&c);
        assert!(real.address_filter > 0 && real.subscribers > 0 && real.fragments > 0);
        assert!(
            real.static_sessions > 0,
            "a rule brings the static session table"
        );
        assert_eq!(MemoryModel::of(&c).usage(40_000, 20_000), real);
        assert!(MemoryModel::floor(&c) <= real.total());
    }

    #[test]
    fn explicit_mappings_bring_the_static_table_counted_in_the_estimate() {
        let mut c = config(40_000, 20_000);
        c.limits.max_static_sessions = 1000;
        assert_eq!(built(&c).static_sessions, 0);
        c.explicit_mappings = true;
        let real = built(&c);
        assert!(real.static_sessions > 0, "built at start");
        assert_eq!(MemoryModel::of(&c).usage(40_000, 20_000), real);
    }

    #[test]
    fn off_multiples_of_8_the_estimate_is_still_exact() {
        // The session table's size is a formula, exact for any capacity (the parts that are
        // extrapolated, the address filter and the static table, are absent here).
        for n in [1, 7, 9, 1001, 65_537] {
            let est = MemoryModel::of(&config(n, n)).usage(n, n);
            assert_eq!(est, built(&config(n, n)), "{n}");
        }
    }
}
