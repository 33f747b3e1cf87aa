//! Reconfiguring a running engine without losing state (`natgate ctl reload`).
//!
//! Only settings that the tables, the allocator and the fragment tracker do not bake in at
//! construction can change: timers that are read when a session comes due, refresh, hairpinning,
//! the answers to unsolicited SYNs and to mapping failures, TTL handling and the MTUs. Anything
//! else (mapping, filtering, pooling, port assignment, the fragment and hold-down timers) needs
//! a restart, and [`check_reload`] says which setting it was.
//!
//! Static NAT rules and virtual servers change too: the chain is recompiled and virtual servers
//! still configured keep their real servers' counters, drain and health state (see
//! [`Engine::reconfigure`]).

use super::Engine;
use crate::alloc::PortAllocator;
use crate::config::{Behavior, ValidConfig};
use crate::endpoint::{Endpoint, Protocol};
use crate::vserver::VirtualServerError;

/// Why a new behaviour cannot be applied to a running engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The setting is built into the engine's state; restart natgate to change it.
    #[error("{0} cannot change while running; restart natgate to change it")]
    NeedsRestart(&'static str),
    /// A virtual server could not take its new settings (its ids or its room ran out).
    #[error("virtual-server {proto} {address}: {error}")]
    VirtualServer {
        /// Its protocol.
        proto: Protocol,
        /// Its virtual address and port.
        address: Endpoint,
        /// Why.
        error: VirtualServerError,
    },
}

/// Whether `new` can replace `old` in a running engine; the first setting that cannot.
pub fn check_reload(old: &Behavior, new: &Behavior) -> Result<(), ReloadError> {
    let fixed: [(&'static str, bool); 10] = [
        ("mapping", old.mapping == new.mapping),
        (
            "port-overlapping",
            old.port_overlapping == new.port_overlapping,
        ),
        ("filtering", old.filtering == new.filtering),
        ("pooling", old.pooling == new.pooling),
        (
            "port-assignment",
            old.port_assignment == new.port_assignment,
        ),
        (
            "sequential-step",
            old.sequential_step == new.sequential_step,
        ),
        ("port-parity", old.port_parity == new.port_parity),
        (
            "port-range-preservation",
            old.port_range_preservation == new.port_range_preservation,
        ),
        // The batch's lanes and the fast path cannot clear DF: with it set, neither is used.
        ("clear-df", old.clear_df == new.clear_df),
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
    /// Applies `config`'s behaviour, rules and virtual servers, keeping every session, mapping
    /// and held packet; all or nothing. New timers apply to each session when it next comes due.
    /// A changed rule chain is recompiled and applies to new flows (the ports it reserves are
    /// withheld from new allocations); sessions made by a rule keep their translation until
    /// they end. A virtual server still configured keeps the counters, drain and health state
    /// of every real server still listed (same address and port); see
    /// [`VirtualServer::update`](crate::vserver::VirtualServer::update). The inside networks
    /// apply to new packets (an established flow's packets skip the check in the batch's
    /// lane until its session ends). The pool, inside
    /// address and limits are not looked at: the driver keeps those fixed (they size the tables).
    pub fn reconfigure(&mut self, config: &ValidConfig) -> Result<(), ReloadError> {
        let cfg = config.get();
        let new = cfg.behavior;
        check_reload(&self.behavior, &new)?;
        let vservers = self
            .prepare_statics(cfg)
            .map_err(|e| ReloadError::VirtualServer {
                proto: e.proto,
                address: e.address,
                error: e.error,
            })?;
        self.behavior = new;
        self.inside_networks = cfg.inside_networks.clone().into_boxed_slice();
        self.answers.set_limits(cfg.limits.answers());
        self.apply_statics(cfg, vservers);
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

    fn vserver(servers: &[([u8; 4], u32)]) -> crate::vserver::VirtualServerSpec {
        crate::vserver::VirtualServerSpec {
            address: Ipv4Addr::new(198, 51, 100, 1),
            port: 80,
            protocol: crate::endpoint::Protocol::Tcp,
            scheduler: crate::vserver::Algorithm::WeightedRoundRobin,
            affinity: None,
            health: None,
            real_servers: servers
                .iter()
                .map(|&(a, weight)| crate::vserver::RealServerSpec {
                    address: Ipv4Addr::from(a),
                    port: None,
                    weight,
                })
                .collect(),
        }
    }

    #[test]
    fn reload_applies_rules_and_keeps_virtual_server_state() {
        use crate::endpoint::Protocol;
        use crate::vserver::{RealServerId, ServerState};
        let web = Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 80);
        let mut e = Engine::new(
            cfg(|c| {
                c.virtual_servers
                    .push(vserver(&[([10, 0, 0, 1], 1), ([10, 0, 0, 2], 1)]))
            }),
            1,
        );
        assert!(e.rules().is_empty());
        assert_eq!(e.virtual_servers().len(), 1);
        assert!(e.virtual_server_mut(Protocol::Udp, web).is_none());
        let v = e
            .virtual_server_mut(Protocol::Tcp, web)
            .expect("configured");
        v.drain(RealServerId(0)).expect("drain");
        v.on_connection_open(RealServerId(1)).expect("open");
        v.on_bytes(RealServerId(1), 1000).expect("bytes");

        // Server 1 changes weight, server 3 joins, and a rule appears.
        let mut chain = crate::rules::RuleChain::new();
        let prefix = |a: [u8; 4], l| crate::rules::Ipv4Prefix::new(Ipv4Addr::from(a), l);
        chain
            .append(crate::rules::Rule::new(
                crate::endpoint::Direction::Outbound,
                prefix([10, 9, 0, 0], 16).expect("prefix"),
                prefix([0, 0, 0, 0], 0).expect("prefix"),
                crate::rules::Action::Exempt,
            ))
            .expect("rule");
        let next = cfg(|c| {
            c.virtual_servers.push(vserver(&[
                ([10, 0, 0, 1], 1),
                ([10, 0, 0, 2], 5),
                ([10, 0, 0, 3], 1),
            ]));
            c.rules = chain.clone();
        });
        e.reconfigure(&next).expect("reload");
        assert_eq!(e.rules(), &chain);
        let servers = e.virtual_servers()[0].servers();
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[0].state(), ServerState::Draining, "drain kept");
        assert_eq!(
            (
                servers[1].connections(),
                servers[1].bytes(),
                servers[1].weight()
            ),
            (1, 1000, 5),
            "counters kept, weight applied"
        );
        assert_eq!(
            servers[2].id(),
            RealServerId(2),
            "a new server gets a new id"
        );

        // Server 0 leaves the config, and then the whole virtual server does.
        e.reconfigure(&cfg(|c| {
            c.virtual_servers
                .push(vserver(&[([10, 0, 0, 2], 5), ([10, 0, 0, 3], 1)]))
        }))
        .expect("reload");
        let ids: Vec<_> = e.virtual_servers()[0]
            .servers()
            .iter()
            .map(|s| s.id())
            .collect();
        assert_eq!(ids, [RealServerId(1), RealServerId(2)]);
        assert!(e.rules().is_empty(), "the chain is the config's");
        e.reconfigure(&cfg(|_| {})).expect("reload");
        assert!(e.virtual_servers().is_empty());
    }

    #[test]
    fn failed_reload_changes_nothing() {
        let mut e = Engine::new(
            cfg(|c| c.virtual_servers.push(vserver(&[([10, 0, 0, 1], 1)]))),
            1,
        );
        let bad = cfg(|c| {
            c.behavior.filtering = FilteringBehavior::AddressDependent;
            c.virtual_servers.clear();
        });
        assert!(e.reconfigure(&bad).is_err());
        assert_eq!(e.virtual_servers().len(), 1, "virtual servers untouched");
    }
}
