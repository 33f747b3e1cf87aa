//! Virtual servers across workers: every worker's engine holds its own copy of each virtual
//! server, and the copies are kept identical replicas (`docs/virtual-servers.md`, "What the
//! engine and daemon call"): every run-time change and every health-probe result goes to every
//! copy, in the same order, through the workers' command channels, so ids and states agree and
//! only the connection and byte counts are per worker (`ctl vservers` sums them). Steering
//! sends every virtual-server flow to one worker ([`natgate_core::shard::STATIC_OWNER`]), so in practice
//! that copy carries the counts; the others stay ready replicas.
//!
//! A change is all or nothing: the control service checks it against the running specs first
//! (the same checks each copy makes: [`check_change`]), so a change that reaches the workers
//! succeeds on each of them. `remove` checks the summed connection count itself and then
//! removes with `force` on every copy, since connections are per worker and a plain remove
//! could succeed on one copy and be refused on another.

use std::sync::mpsc::{self, SyncSender};

use natgate_core::alloc::PortAllocator;
use natgate_core::engine::Engine;
use natgate_core::vserver::{
    ProbeRequest, RealServerId, RealServerSpec, VirtualServer, VirtualServerError,
    VirtualServerSpec,
};
use natgate_core::{Endpoint, Instant, Protocol};

use super::{Command, DaemonError, DaemonHandle, REQUEST_TIMEOUT};
use crate::control::protocol::{
    RealServerOp, RealServerRow, VirtualServerChange, VirtualServerList, VirtualServerRow,
};

/// A request about the virtual servers, for one worker.
#[derive(Debug)]
pub enum VsCommand {
    /// Report every virtual server with this worker's counts.
    List {
        /// Where to answer.
        reply: SyncSender<VirtualServerList>,
    },
    /// Apply a change already checked with [`check_change`].
    Change {
        /// The change.
        change: VirtualServerChange,
        /// The copy's answer (an error means the copies were out of step).
        reply: SyncSender<Result<(), String>>,
    },
    /// Start every health probe due at `now`, and say when the next one is due.
    Probes {
        /// The prober's clock reading, the same for every worker.
        now: Instant,
        /// Where to answer.
        reply: SyncSender<ProbeRound>,
    },
    /// The results of the probes of the last round.
    ProbeResults {
        /// When the results were in.
        now: Instant,
        /// One per probe.
        results: Vec<ProbeOutcome>,
    },
}

/// The probes one worker's copies started, and when to ask again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeRound {
    /// The probes to perform now.
    pub due: Vec<DueProbe>,
    /// When the next probe is due, if any server has health checks.
    pub next_at: Option<Instant>,
}

/// One probe to perform, and the virtual server whose copy asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueProbe {
    /// The virtual server's protocol.
    pub protocol: Protocol,
    /// The virtual server's address.
    pub address: Endpoint,
    /// What to do.
    pub request: ProbeRequest,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// The virtual server's protocol.
    pub protocol: Protocol,
    /// The virtual server's address.
    pub address: Endpoint,
    /// The real server probed.
    pub server: RealServerId,
    /// Whether it answered within the timeout.
    pub ok: bool,
}

/// This worker's view of one virtual server.
fn row(v: &VirtualServer) -> VirtualServerRow {
    let a = v.address();
    VirtualServerRow {
        protocol: v.protocol(),
        address: std::net::SocketAddrV4::new(a.addr, a.port),
        scheduler: v.algorithm().name().to_owned(),
        affinity_entries: v.affinity_entries() as u64,
        real_servers: v
            .servers()
            .iter()
            .map(|s| RealServerRow {
                id: s.id().0,
                target: std::net::SocketAddrV4::new(s.target().addr, s.target().port),
                weight: s.weight(),
                state: s.state().into(),
                draining: s.is_draining(),
                health: s.health().into(),
                connections: s.connections(),
                bytes: s.bytes(),
            })
            .collect(),
    }
}

/// Serves one request on a worker's engine. `log` is set on one worker only, so a health
/// change is logged once, not once per copy.
pub(super) fn serve<A: PortAllocator>(
    engine: &mut Engine<A>,
    cmd: VsCommand,
    now: Instant,
    log: bool,
) {
    match cmd {
        VsCommand::List { reply } => {
            let list = VirtualServerList {
                virtual_servers: engine.virtual_servers().iter().map(row).collect(),
            };
            // The asker may have given up; nothing to do then.
            let _ = reply.send(list);
        }
        VsCommand::Change { change, reply } => {
            let _ = reply.send(apply(engine, &change, now).map_err(|e| e.to_string()));
        }
        VsCommand::Probes { now, reply } => {
            let mut round = ProbeRound::default();
            let keys: Vec<(Protocol, Endpoint)> = engine
                .virtual_servers()
                .iter()
                .map(|v| (v.protocol(), v.address()))
                .collect();
            for (protocol, address) in keys {
                let Some(v) = engine.virtual_server_mut(protocol, address) else {
                    continue;
                };
                // Bounded: each server has at most one probe in flight, so this ends after at
                // most one request per real server.
                while let Some(request) = v.next_probe(now) {
                    round.due.push(DueProbe {
                        protocol,
                        address,
                        request,
                    });
                }
                round.next_at = match (round.next_at, v.next_probe_at()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let _ = reply.send(round);
        }
        VsCommand::ProbeResults { now, results } => {
            for r in results {
                let Some(v) = engine.virtual_server_mut(r.protocol, r.address) else {
                    // Removed by a reload while the probe ran.
                    continue;
                };
                match v.on_probe_result(r.server, r.ok, now) {
                    Ok(Some(health)) if log => {
                        let target = v.server(r.server).map(|s| s.target());
                        tracing::warn!(
                            virtual_server = %format!("{}/{}", r.address, r.protocol),
                            real_server = %target.map_or_else(|| r.server.to_string(), |t| t.to_string()),
                            health = crate::control::protocol::HealthName::from(health).name(),
                            "real server health changed"
                        );
                    }
                    // A server removed while its probe ran has no probe in flight any more.
                    Ok(_) | Err(_) => {}
                }
            }
        }
    }
}

/// The real server `change` names, on one copy.
fn find(
    v: &VirtualServer,
    change: &VirtualServerChange,
) -> Result<RealServerId, VirtualServerError> {
    let port = change.real_server.port_or(v.address().port);
    v.find(change.real_server.address, port)
        .ok_or_else(|| VirtualServerError::OutOfRange {
            setting: "real-server",
            why: format!(
                "{}:{port} is not a real server of {}",
                change.real_server.address, change.virtual_server
            ),
        })
}

fn apply<A: PortAllocator>(
    engine: &mut Engine<A>,
    change: &VirtualServerChange,
    now: Instant,
) -> Result<(), VirtualServerError> {
    let vs = change.virtual_server;
    let v = engine
        .virtual_server_mut(vs.protocol, vs.endpoint())
        .ok_or_else(|| VirtualServerError::OutOfRange {
            setting: "virtual-server",
            why: format!("no virtual server {vs}"),
        })?;
    match change.op {
        RealServerOp::Add => {
            v.add(
                RealServerSpec {
                    address: change.real_server.address,
                    port: change.real_server.port,
                    weight: change.weight.unwrap_or(1),
                },
                now,
            )?;
        }
        RealServerOp::Drain => v.drain(find(v, change)?)?,
        RealServerOp::Undrain => v.undrain(find(v, change)?)?,
        // The summed count was checked by the control service; see the module doc.
        RealServerOp::Remove => {
            v.remove(find(v, change)?, true)?;
        }
        RealServerOp::Weight => {
            let w = change.weight.ok_or(VirtualServerError::OutOfRange {
                setting: "weight",
                why: "missing".into(),
            })?;
            v.set_weight(find(v, change)?, w)?;
        }
    }
    Ok(())
}

/// Checks `change` against the running specs and returns the specs after it: the checks each
/// engine copy makes (an existing virtual and real server, a valid weight, no duplicate, room
/// for one more), so that a change sent to the workers succeeds on all of them. `connections`
/// is the real server's live connection count summed over workers, for `remove`.
pub fn check_change(
    specs: &[VirtualServerSpec],
    change: &VirtualServerChange,
    connections: u64,
) -> Result<Vec<VirtualServerSpec>, String> {
    let vs = change.virtual_server;
    let mut specs = specs.to_vec();
    let spec = specs
        .iter_mut()
        .find(|s| s.protocol == vs.protocol && Endpoint::new(s.address, s.port) == vs.endpoint())
        .ok_or_else(|| format!("no virtual server {vs}"))?;
    let port = change.real_server.port_or(vs.address.port());
    let at = spec.real_servers.iter().position(|r| {
        r.address == change.real_server.address && r.port.unwrap_or(spec.port) == port
    });
    let real = change.real_server;
    let missing = || format!("{}:{port} is not a real server of {vs}", real.address);
    match change.op {
        RealServerOp::Add => {
            spec.real_servers.push(RealServerSpec {
                address: real.address,
                port: real.port,
                weight: change.weight.unwrap_or(1),
            });
            spec.validate().map_err(|e| format!("{vs}: {e}"))?;
        }
        RealServerOp::Drain | RealServerOp::Undrain => {
            at.ok_or_else(missing)?;
        }
        RealServerOp::Remove => {
            let i = at.ok_or_else(missing)?;
            if connections > 0 && !change.force {
                return Err(format!(
                    "{}:{port} still has {connections} connections: drain it and wait, or \
                     remove with --force (they keep working until they end)",
                    real.address
                ));
            }
            spec.real_servers.remove(i);
        }
        RealServerOp::Weight => {
            let i = at.ok_or_else(missing)?;
            let w = change
                .weight
                .ok_or_else(|| "weight: the new weight is missing".to_owned())?;
            spec.real_servers[i].weight = w;
            spec.validate().map_err(|e| format!("{vs}: {e}"))?;
        }
    }
    Ok(specs)
}

impl DaemonHandle {
    fn vs_request<T>(
        &self,
        make: impl Fn(SyncSender<T>) -> VsCommand,
    ) -> Result<Vec<T>, DaemonError> {
        let mut waiting = Vec::new();
        for w in &self.workers {
            let (reply, rx) = mpsc::sync_channel(1);
            if w.send(Command::VirtualServers(make(reply))).is_ok() {
                waiting.push(rx);
            }
        }
        waiting
            .into_iter()
            .map(|rx| {
                rx.recv_timeout(REQUEST_TIMEOUT)
                    .map_err(|_| DaemonError::Timeout(REQUEST_TIMEOUT))
            })
            .collect()
    }

    /// Every virtual server, counts summed over workers.
    pub fn virtual_servers(&self) -> Result<VirtualServerList, DaemonError> {
        let mut total = VirtualServerList::default();
        for l in self.vs_request(|reply| VsCommand::List { reply })? {
            total.merge(l);
        }
        Ok(total)
    }

    /// Applies a change (checked with [`check_change`]) to every worker's copy.
    pub fn change_virtual_server(&self, change: &VirtualServerChange) -> Result<(), DaemonError> {
        for r in self.vs_request(|reply| VsCommand::Change {
            change: *change,
            reply,
        })? {
            r.map_err(DaemonError::OutOfStep)?;
        }
        Ok(())
    }

    /// Starts the probes due at `now` on every copy; the first copy's list (they are
    /// replicas, so every copy started the same probes).
    pub fn start_probes(&self, now: Instant) -> Result<ProbeRound, DaemonError> {
        let rounds = self.vs_request(|reply| VsCommand::Probes { now, reply })?;
        Ok(rounds.into_iter().next().unwrap_or_default())
    }

    /// Hands probe results to every copy.
    pub fn probe_results(&self, now: Instant, results: &[ProbeOutcome]) {
        for w in &self.workers {
            // A worker that is gone is stopping; nothing to tell it.
            let _ = w.send(Command::VirtualServers(VsCommand::ProbeResults {
                now,
                results: results.to_vec(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Vec<VirtualServerSpec> {
        vec![
            toml::from_str(
                "address = \"203.0.113.80\"\nport = 80\nprotocol = \"tcp\"\n\
                 scheduler = \"weighted-round-robin\"\n\
                 [[real-servers]]\naddress = \"10.0.0.1\"\n\
                 [[real-servers]]\naddress = \"10.0.0.2\"\nport = 8888\nweight = 2\n",
            )
            .expect("spec"),
        ]
    }

    fn change(
        op: RealServerOp,
        real: &str,
        weight: Option<u32>,
        force: bool,
    ) -> VirtualServerChange {
        VirtualServerChange {
            virtual_server: "203.0.113.80:80/tcp".parse().expect("vip"),
            real_server: real.parse().expect("real"),
            op,
            weight,
            force,
        }
    }

    #[test]
    fn changes_are_checked_against_the_specs() {
        let s = spec();
        let added = check_change(
            &s,
            &change(RealServerOp::Add, "10.0.0.3", Some(3), false),
            0,
        )
        .expect("add");
        assert_eq!(added[0].real_servers.len(), 3);
        assert_eq!(added[0].real_servers[2].weight, 3);
        // The same address and port twice; weight 0; an unknown server or virtual server.
        assert!(
            check_change(
                &s,
                &change(RealServerOp::Add, "10.0.0.1:80", None, false),
                0
            )
            .is_err()
        );
        assert!(
            check_change(
                &s,
                &change(RealServerOp::Add, "10.0.0.9", Some(0), false),
                0
            )
            .is_err()
        );
        assert!(
            check_change(&s, &change(RealServerOp::Drain, "10.0.0.2", None, false), 0).is_err()
        );
        assert!(
            check_change(
                &s,
                &change(RealServerOp::Drain, "10.0.0.2:8888", None, false),
                0
            )
            .is_ok()
        );
        let mut other = change(RealServerOp::Drain, "10.0.0.1", None, false);
        other.virtual_server = "203.0.113.80:81/tcp".parse().expect("vip");
        assert!(check_change(&s, &other, 0).is_err());
        // Remove: refused with connections unless forced.
        let e = check_change(
            &s,
            &change(RealServerOp::Remove, "10.0.0.1", None, false),
            2,
        )
        .expect_err("connected");
        assert!(e.contains("2 connections"), "{e}");
        let gone = check_change(&s, &change(RealServerOp::Remove, "10.0.0.1", None, true), 2)
            .expect("forced");
        assert_eq!(gone[0].real_servers.len(), 1);
        let w = check_change(
            &s,
            &change(RealServerOp::Weight, "10.0.0.1", Some(5), false),
            0,
        )
        .expect("weight");
        assert_eq!(w[0].real_servers[0].weight, 5);
        assert!(
            check_change(
                &s,
                &change(RealServerOp::Weight, "10.0.0.1", None, false),
                0
            )
            .is_err()
        );
        assert!(
            check_change(
                &s,
                &change(RealServerOp::Weight, "10.0.0.1", Some(2_000_000), false),
                0
            )
            .is_err()
        );
    }
}
