//! Static NAT rules and virtual servers inside the engine (issue 4).
//!
//! The engine keeps the running [`RuleChain`] with its [`CompiledRules`], and the
//! [`VirtualServer`]s with their per-server state. Both come from the config and change only
//! through [`Engine::reconfigure`], which keeps every session: a session keeps the translation
//! it was made with until it ends.

use super::Engine;
use crate::alloc::PortAllocator;
use crate::config::Config;
use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::rules::{CompiledRules, RuleChain, RuleId};
use crate::time::Instant;
use crate::vserver::{RealServerId, VirtualServer, VirtualServerError};

/// What made a session: dynamic NAPT, a static rule, or a virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOrigin {
    /// Dynamic NAPT: a mapping from the allocator.
    Dynamic,
    /// The static rule with this id (one-way rules and the reverse of a bidirectional rule
    /// share their rule's id).
    Rule(RuleId),
    /// The virtual server at `address` sent the connection to its real server `server`.
    VirtualServer {
        /// The virtual address and port.
        address: Endpoint,
        /// The real server chosen.
        server: RealServerId,
    },
}

/// The rules and virtual servers the engine runs, and what it needs to rebuild them.
#[derive(Debug)]
pub(super) struct StaticNat {
    /// The chain as configured: what `ctl` lists and writes back.
    pub(super) chain: RuleChain,
    /// `chain` compiled; rebuilt whenever the chain changes.
    pub(super) compiled: CompiledRules,
    /// Keys the compiled chain's hash tables (inbound keys are chosen by strangers).
    seed: u64,
    /// The virtual servers, in config order.
    pub(super) vservers: Vec<VirtualServer>,
    /// The latest time the engine was given, for work that happens outside a call with a
    /// time (a reload adding a virtual server starts its health checks then).
    pub(super) last_now: Instant,
}

impl StaticNat {
    /// The rules and virtual servers of a validated config. `seed` is the engine's seed; the
    /// rule tables get a key derived from it without drawing from the engine's random stream,
    /// so configuring rules does not change which ports dynamic NAPT picks.
    pub(super) fn new(cfg: &Config, seed: u64) -> Self {
        let seed = Rng::new(seed ^ RULES_SEED_SALT).next_u64();
        StaticNat {
            compiled: cfg.rules.compile(seed),
            chain: cfg.rules.clone(),
            seed,
            // Config::validate checked every spec with the same `validate` that `new` runs,
            // so none is left out here.
            vservers: cfg
                .virtual_servers
                .iter()
                .filter_map(|s| VirtualServer::new(s, Instant::ZERO).ok())
                .collect(),
            last_now: Instant::ZERO,
        }
    }

    /// The virtual server for `proto` at `address`.
    pub(super) fn vserver_index(&self, proto: Protocol, address: Endpoint) -> Option<usize> {
        self.vservers
            .iter()
            .position(|v| v.protocol() == proto && v.address() == address)
    }

    /// The virtual servers of `cfg`, built from the running ones: one still configured is
    /// updated in place (keeping its servers' counters, drain and health state), a new one is
    /// built. Nothing changes on error.
    fn reloaded_vservers(&self, cfg: &Config) -> Result<Vec<VirtualServer>, StaticReloadError> {
        cfg.virtual_servers
            .iter()
            .map(|spec| {
                let fail = |error| StaticReloadError {
                    proto: spec.protocol,
                    address: Endpoint::new(spec.address, spec.port),
                    error,
                };
                let address = Endpoint::new(spec.address, spec.port);
                match self.vserver_index(spec.protocol, address) {
                    Some(i) => {
                        let mut v = self.vservers[i].clone();
                        v.update(spec, self.last_now).map_err(fail)?;
                        Ok(v)
                    }
                    None => VirtualServer::new(spec, self.last_now).map_err(fail),
                }
            })
            .collect()
    }
}

/// Mixed into the engine's seed for the rule tables' key.
const RULES_SEED_SALT: u64 = 0x7275_6c65_735f_6b65;

/// A virtual server of a reload that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StaticReloadError {
    pub(super) proto: Protocol,
    pub(super) address: Endpoint,
    pub(super) error: VirtualServerError,
}

impl<A: PortAllocator> Engine<A> {
    /// The running rule chain, as configured.
    pub fn rules(&self) -> &RuleChain {
        &self.statics.chain
    }

    /// The virtual servers, with their real servers' states and counters.
    pub fn virtual_servers(&self) -> &[VirtualServer] {
        &self.statics.vservers
    }

    /// The virtual server for `proto` at `address`, for run-time changes (add, drain, undrain,
    /// remove, set weight) and health checks (`next_probe`, `on_probe_result`) through its own
    /// methods. Changes apply to the next new connection.
    pub fn virtual_server_mut(
        &mut self,
        proto: Protocol,
        address: Endpoint,
    ) -> Option<&mut VirtualServer> {
        let i = self.statics.vserver_index(proto, address)?;
        self.statics.vservers.get_mut(i)
    }

    /// The rules and virtual servers of `cfg`, prepared for [`Self::apply_statics`]; the
    /// engine is not changed, so a reload that fails here changes nothing.
    pub(super) fn prepare_statics(
        &self,
        cfg: &Config,
    ) -> Result<Vec<VirtualServer>, StaticReloadError> {
        self.statics.reloaded_vservers(cfg)
    }

    /// Swaps in the rules of `cfg` (recompiled if they changed) and the prepared virtual
    /// servers. Existing sessions keep the translation they were made with.
    pub(super) fn apply_statics(&mut self, cfg: &Config, vservers: Vec<VirtualServer>) {
        if cfg.rules != self.statics.chain {
            self.statics.chain = cfg.rules.clone();
            self.statics.compiled = cfg.rules.compile(self.statics.seed);
        }
        self.statics.vservers = vservers;
    }
}
