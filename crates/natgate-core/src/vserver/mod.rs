//! Virtual servers: one virtual address and port spread over real servers.
//!
//! A [`VirtualServer`] is built from a validated [`VirtualServerSpec`] and is sans-IO like the
//! rest of the core: it picks a real server for each new connection ([`VirtualServer::select`]),
//! keeps per-server connection and byte counts that the engine reports to it, takes run-time
//! changes (add, drain, remove, set weight), and runs health checks by telling the daemon which
//! probe to perform ([`VirtualServer::next_probe`]) and taking the results
//! ([`VirtualServer::on_probe_result`]).
//!
//! Server states: a server is *active* (takes new connections), *draining* (an operator stopped
//! new connections; the existing ones finish) or *down* (its health checks failed). Only active
//! servers are ever selected. Ids are given out in order and never reused, so a stale id held by
//! a session of a removed server cannot reach a new one.
//!
//! Counters: live connections and bytes are `u64` and saturate rather than wrap. The byte
//! counter algorithm schedules on a separate score that starts level with the least loaded active
//! server when a server joins or comes back, and is rebased (the same amount per unit of weight
//! taken off every server) once any score passes 2^62, so the order of the servers never changes
//! because of an overflow. See `docs/virtual-servers.md`.

mod affinity;
pub mod health;
pub mod select;
pub mod spec;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use health::{Health, HealthChecker, HealthParams, Probe, ProbeRequest};
pub use select::Algorithm;
pub use spec::{AffinitySpec, HealthSpec, ProbeSpec, RealServerSpec, VirtualServerSpec};

use crate::endpoint::{Endpoint, Protocol};
use crate::rng::Rng;
use crate::time::Instant;
use affinity::AffinityTable;
use core::fmt;
use core::time::Duration;
use select::Scheduler;
use std::net::Ipv4Addr;

/// The id of a real server within its virtual server. Given out in order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealServerId(pub u32);

impl fmt::Display for RealServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether a real server takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerState {
    /// It takes new connections.
    Active,
    /// An operator drained it: its connections finish, new ones go elsewhere.
    Draining,
    /// Its health checks failed (whether or not it is also draining).
    Down,
}

impl ServerState {
    /// Lower-case name, as `ctl` shows it.
    pub const fn name(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Draining => "draining",
            ServerState::Down => "down",
        }
    }
}

/// Why a virtual-server operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtualServerError {
    /// A config value out of its range.
    #[error("{setting}: {why}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong.
        why: String,
    },
    /// More than [`spec::MAX_REAL_SERVERS`] real servers.
    #[error(
        "real-servers: at most {} real servers per virtual server",
        spec::MAX_REAL_SERVERS
    )]
    TooManyServers,
    /// Every id has been given out once (after 2^32 additions).
    #[error("real-servers: no real server ids left; rebuild the virtual server")]
    IdsExhausted,
    /// Two real servers with the same address and port.
    #[error("real-servers: {addr}:{port} is listed twice")]
    DuplicateServer {
        /// The address.
        addr: Ipv4Addr,
        /// The real port.
        port: u16,
    },
    /// No real server has this id (never had, or it was removed).
    #[error("no real server {0}")]
    UnknownServer(RealServerId),
    /// Removal of a server that still has connections, without force.
    #[error("real server {server} still has {connections} connections; drain it or force")]
    StillConnected {
        /// The server.
        server: RealServerId,
        /// Its live connections.
        connections: u64,
    },
    /// A connection closed on a server with none open.
    #[error("real server {0} has no open connection to close")]
    NoOpenConnection(RealServerId),
    /// A probe result for a server with no probe in flight.
    #[error("real server {0} has no health probe in flight")]
    NoProbeInFlight(RealServerId),
}

/// One real server and its counters.
#[derive(Debug, Clone)]
pub struct RealServer {
    id: RealServerId,
    addr: Ipv4Addr,
    port: Option<u16>,
    target: Endpoint,
    weight: u32,
    draining: bool,
    checker: Option<HealthChecker>,
    connections: u64,
    bytes: u64,
    /// Smooth weighted round robin's running sum.
    current: i64,
    /// The byte counter's scheduling score: bytes carried, levelled on (re)activation and rebased.
    score: u64,
}

impl RealServer {
    /// Its id.
    pub fn id(&self) -> RealServerId {
        self.id
    }

    /// Its address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its configured port; `None` means the virtual port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// Where connections to it go: its address and real port.
    pub fn target(&self) -> Endpoint {
        self.target
    }

    /// Its weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether it takes new connections, and if not why.
    pub fn state(&self) -> ServerState {
        if self.health() == Health::Down {
            ServerState::Down
        } else if self.draining {
            ServerState::Draining
        } else {
            ServerState::Active
        }
    }

    /// Whether an operator drained it (a down server may be draining too).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Its health; always up without health checks.
    pub fn health(&self) -> Health {
        self.checker
            .as_ref()
            .map_or(Health::Up, HealthChecker::health)
    }

    /// Its live connections, as the engine reported them.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Bytes carried for it since it was added, as the engine reported them; saturates at
    /// `u64::MAX`.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn is_active(&self) -> bool {
        self.state() == ServerState::Active
    }
}

/// A virtual address and port with its real servers, scheduler, affinity table and health checks.
#[derive(Debug, Clone)]
pub struct VirtualServer {
    address: Endpoint,
    protocol: Protocol,
    scheduler: Scheduler,
    affinity_spec: Option<AffinitySpec>,
    affinity: Option<AffinityTable>,
    health: Option<HealthSpec>,
    servers: Vec<RealServer>,
    next_id: u32,
}

impl VirtualServer {
    /// Validates `spec` and builds the virtual server at `now`. Real servers get ids 0, 1, 2...
    /// in the order listed. With health checks, the first probes are spread over one interval.
    pub fn new(spec: &VirtualServerSpec, now: Instant) -> Result<Self, VirtualServerError> {
        spec.validate()?;
        let mut vs = VirtualServer {
            address: Endpoint::new(spec.address, spec.port),
            protocol: spec.protocol,
            scheduler: Scheduler::new(spec.scheduler),
            affinity_spec: spec.affinity,
            affinity: spec.affinity.map(|a| {
                AffinityTable::new(
                    Duration::from_secs(u64::from(a.timeout)),
                    a.max_entries as usize,
                )
            }),
            health: spec.health.clone(),
            servers: Vec::with_capacity(spec.real_servers.len()),
            next_id: 0,
        };
        let n = spec.real_servers.len().max(1) as u32;
        for (k, r) in spec.real_servers.iter().enumerate() {
            let stagger = spec
                .health
                .as_ref()
                .map_or(Duration::ZERO, |h| h.interval() * k as u32 / n);
            vs.add(*r, now + stagger)?;
        }
        Ok(vs)
    }

    /// The virtual address and port.
    pub fn address(&self) -> Endpoint {
        self.address
    }

    /// The virtual server's protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The scheduling algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.scheduler.algorithm()
    }

    /// The real servers, in id order, with their states and counters (what `ctl` lists).
    pub fn servers(&self) -> &[RealServer] {
        &self.servers
    }

    /// One real server.
    pub fn server(&self, id: RealServerId) -> Option<&RealServer> {
        self.index(id).ok().map(|i| &self.servers[i])
    }

    /// The id of the real server at this address and real port, for `ctl` commands that name a
    /// server by address.
    pub fn find(&self, addr: Ipv4Addr, port: u16) -> Option<RealServerId> {
        let target = Endpoint::new(addr, port);
        self.servers
            .iter()
            .find(|s| s.target == target)
            .map(|s| s.id)
    }

    /// Client address-to-server entries held for affinity (0 without affinity).
    pub fn affinity_entries(&self) -> usize {
        self.affinity.as_ref().map_or(0, AffinityTable::len)
    }

    /// Live affinity entries dropped because the table was full.
    pub fn affinity_evictions(&self) -> u64 {
        self.affinity.as_ref().map_or(0, AffinityTable::evictions)
    }

    /// The current state as config: the servers as they are now, with their current weights
    /// (drain and health are run-time states and are not written).
    pub fn to_spec(&self) -> VirtualServerSpec {
        VirtualServerSpec {
            address: self.address.addr,
            port: self.address.port,
            protocol: self.protocol,
            scheduler: self.algorithm(),
            affinity: self.affinity_spec,
            health: self.health.clone(),
            real_servers: self
                .servers
                .iter()
                .map(|s| RealServerSpec {
                    address: s.addr,
                    port: s.port,
                    weight: s.weight,
                })
                .collect(),
        }
    }

    /// Applies a changed config (a reload) at `now`, keeping what the operator and the traffic
    /// built up: a real server still listed (same address and real port) keeps its id,
    /// counters, drain and health state and takes the new weight; a new one is added (level
    /// with the others, as [`add`](Self::add) does); one no longer listed is removed even with
    /// live connections (their sessions run on; their callbacks get
    /// [`VirtualServerError::UnknownServer`]). A changed algorithm restarts the scheduler, a
    /// changed affinity empties the affinity table, and changed health checks restart every
    /// server's checker (up, first probe at `now`). `spec` must have the same protocol,
    /// address and port (it is the same virtual server); the virtual server is unchanged if
    /// `spec` is invalid.
    pub fn update(
        &mut self,
        spec: &VirtualServerSpec,
        now: Instant,
    ) -> Result<(), VirtualServerError> {
        spec.validate()?;
        let port = self.address.port;
        let wanted = |r: &RealServerSpec| Endpoint::new(r.address, r.port.unwrap_or(port));
        let gone: Vec<RealServerId> = self
            .servers
            .iter()
            .filter(|s| !spec.real_servers.iter().any(|r| wanted(r) == s.target))
            .map(|s| s.id)
            .collect();
        let fresh = spec
            .real_servers
            .iter()
            .filter(|r| self.find(r.address, wanted(r).port).is_none())
            .count();
        if self.servers.len() - gone.len() + fresh > spec::MAX_REAL_SERVERS {
            return Err(VirtualServerError::TooManyServers);
        }
        if u32::try_from(fresh)
            .ok()
            .and_then(|n| self.next_id.checked_add(n))
            .is_none()
        {
            return Err(VirtualServerError::IdsExhausted);
        }
        if spec.scheduler != self.algorithm() {
            self.scheduler = Scheduler::new(spec.scheduler);
        }
        if spec.affinity != self.affinity_spec {
            self.affinity_spec = spec.affinity;
            self.affinity = spec.affinity.map(|a| {
                AffinityTable::new(
                    Duration::from_secs(u64::from(a.timeout)),
                    a.max_entries as usize,
                )
            });
        }
        if spec.health != self.health {
            self.health = spec.health.clone();
            for s in &mut self.servers {
                s.checker = self.health.as_ref().map(|h| {
                    HealthChecker::new(
                        HealthParams {
                            interval: h.interval(),
                            rise: h.rise,
                            fall: h.fall,
                        },
                        now,
                    )
                });
            }
        }
        for id in gone {
            self.remove(id, true)?;
        }
        for r in &spec.real_servers {
            match self.find(r.address, wanted(r).port) {
                Some(id) => {
                    if self.server(id).is_some_and(|s| s.weight != r.weight) {
                        self.set_weight(id, r.weight)?;
                    }
                }
                None => {
                    self.add(*r, now)?;
                }
            }
        }
        self.reset_rotation();
        Ok(())
    }

    /// Picks the real server for a new connection from `client` at `now`; `None` when no server
    /// is active. With affinity, a client whose entry is live (last used less than the timeout
    /// ago) and whose server is still active goes back to it; otherwise the scheduler picks and
    /// the entry is (re)written. Selection does not count a connection: call
    /// [`on_connection_open`](Self::on_connection_open) once the session exists.
    pub fn select(
        &mut self,
        client: Endpoint,
        now: Instant,
        rng: &mut Rng,
    ) -> Option<RealServerId> {
        if let Some(table) = &mut self.affinity {
            table.expire(now);
            if let Some(id) = table.lookup(client.addr)
                && let Ok(i) = self.servers.binary_search_by_key(&id, |s| s.id)
                && self.servers[i].is_active()
            {
                table.bind(client.addr, id, now);
                return Some(id);
            }
        }
        let i = self.scheduler.pick(&mut self.servers, rng)?;
        let id = self.servers[i].id;
        if let Some(table) = &mut self.affinity {
            table.bind(client.addr, id, now);
        }
        Some(id)
    }

    /// A connection to `server` was established (its session created).
    pub fn on_connection_open(&mut self, server: RealServerId) -> Result<(), VirtualServerError> {
        let i = self.index(server)?;
        let s = &mut self.servers[i];
        s.connections = s.connections.saturating_add(1);
        Ok(())
    }

    /// A connection to `server` ended (its session removed). After a forced removal the engine
    /// gets [`VirtualServerError::UnknownServer`] for the sessions left over and may ignore it.
    pub fn on_connection_close(&mut self, server: RealServerId) -> Result<(), VirtualServerError> {
        let i = self.index(server)?;
        let s = &mut self.servers[i];
        s.connections = s
            .connections
            .checked_sub(1)
            .ok_or(VirtualServerError::NoOpenConnection(server))?;
        Ok(())
    }

    /// `n` bytes were carried for a connection of `server` (either direction; the byte counter
    /// only compares servers, so any definition applied to all of them works).
    pub fn on_bytes(&mut self, server: RealServerId, n: u64) -> Result<(), VirtualServerError> {
        let i = self.index(server)?;
        let s = &mut self.servers[i];
        s.bytes = s.bytes.saturating_add(n);
        s.score = s.score.saturating_add(n);
        if s.score >= select::REBASE_AT {
            select::rebase_scores(&mut self.servers);
        }
        Ok(())
    }

    /// Adds a real server at `now`; it is active at once, level with the others, and with health
    /// checks its first probe is due at `now`.
    pub fn add(
        &mut self,
        spec: RealServerSpec,
        now: Instant,
    ) -> Result<RealServerId, VirtualServerError> {
        spec.validate()?;
        if self.servers.len() >= spec::MAX_REAL_SERVERS {
            return Err(VirtualServerError::TooManyServers);
        }
        let target = Endpoint::new(spec.address, spec.port.unwrap_or(self.address.port));
        if self.servers.iter().any(|s| s.target == target) {
            return Err(VirtualServerError::DuplicateServer {
                addr: target.addr,
                port: target.port,
            });
        }
        let id = RealServerId(self.next_id);
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or(VirtualServerError::IdsExhausted)?;
        let checker = self.health.as_ref().map(|h| {
            let params = HealthParams {
                interval: h.interval(),
                rise: h.rise,
                fall: h.fall,
            };
            HealthChecker::new(params, now)
        });
        self.servers.push(RealServer {
            id,
            addr: spec.address,
            port: spec.port,
            target,
            weight: spec.weight,
            draining: false,
            checker,
            connections: 0,
            bytes: 0,
            current: 0,
            score: 0,
        });
        self.activated(self.servers.len() - 1);
        Ok(id)
    }

    /// Stops new connections to `server`; its existing ones go on until they end. Draining a
    /// draining server does nothing.
    pub fn drain(&mut self, server: RealServerId) -> Result<(), VirtualServerError> {
        let i = self.index(server)?;
        if !self.servers[i].draining {
            self.servers[i].draining = true;
            self.reset_rotation();
        }
        Ok(())
    }

    /// Undoes [`drain`](Self::drain): the server takes new connections again (if it is up),
    /// starting level with the others.
    pub fn undrain(&mut self, server: RealServerId) -> Result<(), VirtualServerError> {
        let i = self.index(server)?;
        if self.servers[i].draining {
            self.servers[i].draining = false;
            self.activated(i);
        }
        Ok(())
    }

    /// Removes `server` and returns its last state and counters. Refused while it has live
    /// connections unless `force` is set; after a forced removal the engine's remaining sessions
    /// for it get [`VirtualServerError::UnknownServer`] from the connection callbacks.
    pub fn remove(
        &mut self,
        server: RealServerId,
        force: bool,
    ) -> Result<RealServer, VirtualServerError> {
        let i = self.index(server)?;
        let connections = self.servers[i].connections;
        if connections > 0 && !force {
            return Err(VirtualServerError::StillConnected {
                server,
                connections,
            });
        }
        let removed = self.servers.remove(i);
        self.reset_rotation();
        Ok(removed)
    }

    /// Changes the weight of `server` (1..=[`spec::MAX_WEIGHT`]). Its byte score is rescaled so
    /// that its load per unit of weight stays where it was: a heavier weight does not make a
    /// server look idle.
    pub fn set_weight(
        &mut self,
        server: RealServerId,
        weight: u32,
    ) -> Result<(), VirtualServerError> {
        spec::check_weight(weight)?;
        let i = self.index(server)?;
        let s = &mut self.servers[i];
        s.score = select::rescale(s.score, s.weight, weight);
        s.weight = weight;
        self.reset_rotation();
        Ok(())
    }

    /// When the next health probe is due: call [`next_probe`](Self::next_probe) at or after it.
    /// `None` without health checks or while every server has a probe in flight (then call again
    /// after the next [`on_probe_result`](Self::on_probe_result)).
    pub fn next_probe_at(&self) -> Option<Instant> {
        self.servers
            .iter()
            .filter_map(|s| s.checker.as_ref()?.due_at())
            .min()
    }

    /// A probe due at `now`, now marked in flight; call repeatedly until `None`. The most overdue
    /// server goes first.
    pub fn next_probe(&mut self, now: Instant) -> Option<ProbeRequest> {
        let health = self.health.as_ref()?;
        let (i, _) = self
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.checker.as_ref()?.due_at()?)))
            .filter(|&(_, due)| due <= now)
            .min_by_key(|&(i, due)| (due, i))?;
        let s = &mut self.servers[i];
        let started = s.checker.as_mut().is_some_and(|c| c.start_probe(now));
        started.then(|| ProbeRequest {
            server: s.id,
            target: s.target,
            probe: health.probe.probe(),
            timeout: health.timeout(),
        })
    }

    /// The result of the probe of `server` that [`next_probe`](Self::next_probe) handed out
    /// (`ok = false` for a timeout). Returns the server's new health if it changed; a server
    /// coming back up starts level with the others.
    pub fn on_probe_result(
        &mut self,
        server: RealServerId,
        ok: bool,
        now: Instant,
    ) -> Result<Option<Health>, VirtualServerError> {
        let i = self.index(server)?;
        let changed = self.servers[i]
            .checker
            .as_mut()
            .ok_or(VirtualServerError::NoProbeInFlight(server))?
            .on_result(ok, now)
            .map_err(|_| VirtualServerError::NoProbeInFlight(server))?;
        match changed {
            Some(Health::Up) => self.activated(i),
            Some(Health::Down) => self.reset_rotation(),
            None => {}
        }
        Ok(changed)
    }

    fn index(&self, id: RealServerId) -> Result<usize, VirtualServerError> {
        // Ids are given out in increasing order and removal keeps the order.
        self.servers
            .binary_search_by_key(&id, |s| s.id)
            .map_err(|_| VirtualServerError::UnknownServer(id))
    }

    /// Server `i` may have become active: level its byte score with the least loaded other active
    /// server, so it gets its share of new connections and not all of them.
    fn activated(&mut self, i: usize) {
        if self.servers[i].is_active()
            && let Some((score, weight)) = select::min_active_score(&self.servers, Some(i))
        {
            let s = &mut self.servers[i];
            s.score = select::rescale(score, weight, s.weight);
        }
        self.reset_rotation();
    }

    /// The active set or a weight changed: restart smooth weighted round robin's sums, so they
    /// stay balanced around zero.
    fn reset_rotation(&mut self) {
        for s in &mut self.servers {
            s.current = 0;
        }
    }
}
