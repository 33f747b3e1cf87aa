//! Property test of virtual servers against a small reference model: under any sequence of
//! selections, connection and byte reports, run-time changes and health results, `select` never
//! returns a down, draining or removed server, returns `Some` whenever an active server exists,
//! and the connection counts and removal refusals match the model.

use super::*;
use crate::rng::Rng;
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Select(u8),
    Open(u8),
    Close(u8),
    Bytes(u8, u64),
    Add(u32),
    Drain(u8),
    Undrain(u8),
    Remove(u8, bool),
    SetWeight(u8, u32),
    /// One second passes and every due probe is answered, server k with `oks[k % len]`.
    ProbeRound(Vec<bool>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u8>().prop_map(Op::Select),
        3 => any::<u8>().prop_map(Op::Open),
        3 => any::<u8>().prop_map(Op::Close),
        2 => (any::<u8>(), prop_oneof![0..10_000u64, Just(u64::MAX), Just(1u64 << 62)])
            .prop_map(|(i, n)| Op::Bytes(i, n)),
        1 => (1..=5u32).prop_map(Op::Add),
        1 => any::<u8>().prop_map(Op::Drain),
        1 => any::<u8>().prop_map(Op::Undrain),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(i, f)| Op::Remove(i, f)),
        1 => (any::<u8>(), 1..=spec::MAX_WEIGHT).prop_map(|(i, w)| Op::SetWeight(i, w)),
        2 => proptest::collection::vec(any::<bool>(), 1..4).prop_map(Op::ProbeRound),
    ]
}

#[derive(Debug, Default)]
struct Model {
    draining: bool,
    up: bool,
    connections: u64,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn select_only_returns_active_servers(
        scheduler in prop_oneof![
            Just(Algorithm::RoundRobin),
            Just(Algorithm::WeightedRoundRobin),
            Just(Algorithm::WeightedLeastConnections),
            Just(Algorithm::ByteCounter),
        ],
        affinity in any::<bool>(),
        health in any::<bool>(),
        weights in proptest::collection::vec(1..=4u32, 0..4),
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let spec = VirtualServerSpec {
            address: Ipv4Addr::new(203, 0, 113, 80),
            port: 443,
            protocol: Protocol::Tcp,
            scheduler,
            affinity: affinity.then_some(AffinitySpec { timeout: 3, max_entries: 4 }),
            health: health.then_some(HealthSpec {
                probe: ProbeSpec::TcpConnect,
                interval: 1,
                timeout: 1,
                rise: 1,
                fall: 1,
            }),
            real_servers: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| RealServerSpec {
                    address: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                    port: None,
                    weight,
                })
                .collect(),
        };
        let mut now = Instant::ZERO;
        let mut vs = VirtualServer::new(&spec, now).unwrap();
        let mut rng = Rng::new(seed);
        // Every id ever given out, removed ones included, so ops also hit unknown ids.
        let mut ids: Vec<RealServerId> = vs.servers().iter().map(RealServer::id).collect();
        let mut model: BTreeMap<RealServerId, Model> = ids
            .iter()
            .map(|&id| (id, Model { up: true, ..Model::default() }))
            .collect();
        let mut added = 0u8;
        let pick = |ids: &[RealServerId], i: u8| -> Option<RealServerId> {
            (!ids.is_empty()).then(|| ids[usize::from(i) % ids.len()])
        };

        for op in ops {
            match op {
                Op::Select(c) => {
                    let client = Endpoint::new(Ipv4Addr::new(198, 51, 100, c % 8), 1000);
                    let got = vs.select(client, now, &mut rng);
                    let any_active = model.values().any(|m| m.up && !m.draining);
                    match got {
                        Some(id) => {
                            let m = model.get(&id);
                            prop_assert!(m.is_some_and(|m| m.up && !m.draining), "{id} {m:?}");
                        }
                        None => prop_assert!(!any_active, "None with an active server"),
                    }
                }
                Op::Open(i) => if let Some(id) = pick(&ids, i) {
                    let r = vs.on_connection_open(id);
                    match model.get_mut(&id) {
                        Some(m) => { prop_assert!(r.is_ok()); m.connections += 1; }
                        None => prop_assert_eq!(r, Err(VirtualServerError::UnknownServer(id))),
                    }
                },
                Op::Close(i) => if let Some(id) = pick(&ids, i) {
                    let r = vs.on_connection_close(id);
                    match model.get_mut(&id) {
                        Some(m) if m.connections > 0 => {
                            prop_assert!(r.is_ok());
                            m.connections -= 1;
                        }
                        Some(_) => prop_assert_eq!(r, Err(VirtualServerError::NoOpenConnection(id))),
                        None => prop_assert_eq!(r, Err(VirtualServerError::UnknownServer(id))),
                    }
                },
                Op::Bytes(i, n) => if let Some(id) = pick(&ids, i) {
                    prop_assert_eq!(vs.on_bytes(id, n).is_ok(), model.contains_key(&id));
                },
                Op::Add(weight) => {
                    added = added.wrapping_add(1);
                    let r = RealServerSpec {
                        address: Ipv4Addr::new(10, 1, 0, added),
                        port: None,
                        weight,
                    };
                    if let Ok(id) = vs.add(r, now) {
                        prop_assert!(!ids.contains(&id), "id {id} reused");
                        ids.push(id);
                        model.insert(id, Model { up: true, ..Model::default() });
                    }
                }
                Op::Drain(i) => if let Some(id) = pick(&ids, i) {
                    prop_assert_eq!(vs.drain(id).is_ok(), model.contains_key(&id));
                    if let Some(m) = model.get_mut(&id) { m.draining = true; }
                },
                Op::Undrain(i) => if let Some(id) = pick(&ids, i) {
                    prop_assert_eq!(vs.undrain(id).is_ok(), model.contains_key(&id));
                    if let Some(m) = model.get_mut(&id) { m.draining = false; }
                },
                Op::Remove(i, force) => if let Some(id) = pick(&ids, i) {
                    let r = vs.remove(id, force);
                    match model.get(&id) {
                        None => prop_assert!(r.is_err()),
                        Some(m) if m.connections > 0 && !force => prop_assert!(r.is_err()),
                        Some(_) => {
                            prop_assert!(r.is_ok());
                            model.remove(&id);
                        }
                    }
                },
                Op::SetWeight(i, w) => if let Some(id) = pick(&ids, i) {
                    prop_assert_eq!(vs.set_weight(id, w).is_ok(), model.contains_key(&id));
                },
                Op::ProbeRound(oks) => {
                    now = now + Duration::from_secs(1);
                    while let Some(req) = vs.next_probe(now) {
                        let ok = oks[req.server.0 as usize % oks.len()];
                        vs.on_probe_result(req.server, ok, now).unwrap();
                        // rise = fall = 1: every result sets the health.
                        if let Some(m) = model.get_mut(&req.server) { m.up = ok; }
                    }
                }
            }
            for s in vs.servers() {
                let m = model.get(&s.id());
                prop_assert!(m.is_some(), "server {} not in the model", s.id());
                if let Some(m) = m {
                    prop_assert_eq!(s.connections(), m.connections);
                    let expect = if !m.up {
                        ServerState::Down
                    } else if m.draining {
                        ServerState::Draining
                    } else {
                        ServerState::Active
                    };
                    prop_assert_eq!(s.state(), expect);
                }
            }
            prop_assert_eq!(vs.servers().len(), model.len());
        }
    }
}
