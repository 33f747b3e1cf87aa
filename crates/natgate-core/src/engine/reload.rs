//! Reconfiguring a running engine without losing state (`natgate ctl reload`).
//!
//! Only settings that the tables, the allocator and the fragment tracker do not bake in at
//! construction can change: timers that are read when a session comes due, refresh, hairpinning,
//! the answers to unsolicited SYNs and to mapping failures, TTL handling and the MTUs. Anything
//! else (mapping, filtering, pooling, port assignment, the fragment and hold-down timers) needs
//! a restart, and [`check_reload`] says which setting it was.

use super::Engine;
use crate::alloc::PortAllocator;
use crate::config::{Behavior, ValidConfig};

/// Why a new behaviour cannot be applied to a running engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The setting is built into the engine's state; restart natgate to change it.
    #[error("{0} cannot change while running; restart natgate to change it")]
    NeedsRestart(&'static str),
}

/// Whether `new` can replace `old` in a running engine; the first setting that cannot.
pub fn check_reload(old: &Behavior, new: &Behavior) -> Result<(), ReloadError> {
    let fixed: [(&'static str, bool); 7] = [
        ("mapping", old.mapping == new.mapping),
        ("filtering", old.filtering == new.filtering),
        ("pooling", old.pooling == new.pooling),
        (
            "port-assignment",
            old.port_assignment == new.port_assignment,
        ),
        ("port-parity", old.port_parity == new.port_parity),
        (
            "port-range-preservation",
            old.port_range_preservation == new.port_range_preservation,
        ),
        (
            "timers.fragment and timers.port-hold-down",
            old.timers.fragment == new.timers.fragment
                && old.timers.port_hold_down == new.timers.port_hold_down,
        ),
    ];
    match fixed.into_iter().find(|(_, same)| !same) {
        Some((name, _)) => Err(ReloadError::NeedsRestart(name)),
        None => Ok(()),
    }
}

impl<A: PortAllocator> Engine<A> {
    /// Applies `config`'s behaviour, keeping every session, mapping and held packet. New timers
    /// apply to each session when it next comes due. The pool, inside address and limits are not
    /// looked at: the driver keeps those fixed (they size the tables).
    pub fn reconfigure(&mut self, config: &ValidConfig) -> Result<(), ReloadError> {
        let new = config.get().behavior;
        check_reload(&self.behavior, &new)?;
        self.behavior = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, FilteringBehavior};
    use crate::endpoint::{Endpoint, Side};
    use crate::time::Instant;
    use crate::verdict::Verdict;
    use std::net::Ipv4Addr;

    fn cfg(f: impl FnOnce(&mut Config)) -> ValidConfig {
        let mut c = Config::new(
            vec![Ipv4Addr::new(198, 51, 100, 1)],
            Ipv4Addr::new(100, 64, 0, 1),
        );
        c.limits.max_sessions = 64;
        c.limits.max_mappings = 64;
        f(&mut c);
        c.validate().expect("valid")
    }

    #[test]
    fn reload_keeps_sessions_and_applies_timers() {
        let mut e = Engine::new(cfg(|_| {}), 1);
        let pkt = super::super::tests::udp(
            Endpoint::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
            Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 53),
            b"q",
        );
        let mut p = pkt.clone();
        let v = e.process(Instant::ZERO, Side::Inside, &mut p.buf, p.len);
        assert_eq!(v, Verdict::Forward(Side::Outside));
        e.reconfigure(&cfg(|c| c.behavior.timers.udp = 600))
            .expect("timers can change");
        assert_eq!(e.behavior().timers.udp, 600);
        assert_eq!(e.session_count(), 1);
        // Still alive after the old 300 s timer, gone after the new one.
        e.handle_timeout(Instant::from_secs(400));
        assert_eq!(e.session_count(), 1);
        e.handle_timeout(Instant::from_secs(602));
        assert_eq!(e.session_count(), 0);
    }

    #[test]
    fn reload_refuses_what_needs_a_restart() {
        let mut e = Engine::new(cfg(|_| {}), 1);
        let err = e
            .reconfigure(&cfg(|c| {
                c.behavior.filtering = FilteringBehavior::AddressDependent;
            }))
            .expect_err("filtering is baked in");
        assert_eq!(err, ReloadError::NeedsRestart("filtering"));
        assert_eq!(
            e.behavior().filtering,
            FilteringBehavior::EndpointIndependent,
            "nothing changed"
        );
    }
}
