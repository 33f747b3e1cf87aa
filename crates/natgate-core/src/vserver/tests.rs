//! Unit tests of virtual servers (selection algorithms with the weight split
//! over many connections within a stated tolerance, drain and re-add).

use super::*;
use std::collections::VecDeque;

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);

fn real(last_octet: u8, weight: u32) -> RealServerSpec {
    RealServerSpec {
        address: Ipv4Addr::new(10, 0, 0, last_octet),
        port: None,
        weight,
    }
}

fn spec(scheduler: Algorithm, weights: &[u32]) -> VirtualServerSpec {
    VirtualServerSpec {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
        scheduler,
        affinity: None,
        health: None,
        real_servers: weights
            .iter()
            .enumerate()
            .map(|(i, &w)| real(i as u8 + 1, w))
            .collect(),
    }
}

fn build(scheduler: Algorithm, weights: &[u32]) -> VirtualServer {
    VirtualServer::new(&spec(scheduler, weights), Instant::ZERO).unwrap()
}

fn client(n: u32) -> Endpoint {
    Endpoint::new(Ipv4Addr::from(0xc633_6400 + n), 40000)
}

/// Selects `n` times for distinct clients, opening and at once closing each connection, and
/// returns how often each server id was picked.
fn split(vs: &mut VirtualServer, rng: &mut Rng, n: u32) -> Vec<u32> {
    let mut counts = vec![0u32; vs.next_id as usize];
    for k in 0..n {
        let id = vs.select(client(k), Instant::ZERO, rng).unwrap();
        counts[id.0 as usize] += 1;
    }
    counts
}

#[test]
fn weighted_round_robin_splits_1_to_2_exactly_and_interleaves() {
    let mut vs = build(Algorithm::WeightedRoundRobin, &[1, 2]);
    let mut rng = Rng::new(1);
    let mut picks = Vec::new();
    for k in 0..30_000 {
        picks.push(vs.select(client(k), Instant::ZERO, &mut rng).unwrap().0);
    }
    // Exactly 1/3 (tolerance 0): every run of 3 picks holds one of server 0 and two of server 1.
    assert_eq!(picks.iter().filter(|&&p| p == 0).count(), 10_000);
    for w in picks.chunks(3) {
        assert_eq!(w.iter().filter(|&&p| p == 0).count(), 1, "{w:?}");
    }
    // Smooth, not bursty: server 1 never gets more than two in a row.
    assert!(!picks.windows(3).any(|w| w == [1, 1, 1]));
}

#[test]
fn weighted_round_robin_splits_several_weights_exactly() {
    let mut vs = build(Algorithm::WeightedRoundRobin, &[1, 2, 3, 4]);
    let counts = split(&mut vs, &mut Rng::new(9), 10 * 6000);
    assert_eq!(counts, [6000, 12_000, 18_000, 24_000]);
}

#[test]
fn round_robin_ignores_weights_and_start_depends_on_the_seed() {
    let mut vs = build(Algorithm::RoundRobin, &[1, 5, 1]);
    assert_eq!(split(&mut vs, &mut Rng::new(3), 3000), [1000, 1000, 1000]);
    // Same seed, same choices; the start of the rotation varies with the seed.
    let firsts: std::collections::BTreeSet<u32> = (0..32)
        .map(|seed| {
            let mut vs = build(Algorithm::RoundRobin, &[1, 1, 1]);
            let mut rng = Rng::new(seed);
            vs.select(client(0), Instant::ZERO, &mut rng).unwrap().0
        })
        .collect();
    assert_eq!(firsts.len(), 3);
    let run = |seed| {
        let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 2, 3]);
        split(&mut vs, &mut Rng::new(seed), 100)
    };
    assert_eq!(run(5), run(5));
}

/// Opens one connection per step on the selected server; a connection on server `i` lasts
/// `lifetimes[i]` steps. Returns the picks per server.
fn run_wlc(vs: &mut VirtualServer, lifetimes: &[u32], steps: u32, check_level: bool) -> Vec<u32> {
    let mut rng = Rng::new(11);
    let mut open: VecDeque<(u32, RealServerId)> = VecDeque::new();
    let mut picks = vec![0u32; lifetimes.len()];
    for step in 0..steps {
        while open.front().is_some_and(|&(end, _)| end <= step) {
            let (_, id) = open.pop_front().unwrap();
            vs.on_connection_close(id).unwrap();
        }
        let id = vs.select(client(step), Instant::ZERO, &mut rng).unwrap();
        vs.on_connection_open(id).unwrap();
        picks[id.0 as usize] += 1;
        let end = step + lifetimes[id.0 as usize];
        let at = open.partition_point(|&(e, _)| e <= end);
        open.insert(at, (end, id));
        if check_level {
            // Live connections per unit of weight never differ by more than one connection.
            let c: Vec<u64> = vs.servers().iter().map(|s| s.connections()).collect();
            let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
            assert!(hi - lo <= 1, "step {step}: {c:?}");
        }
    }
    picks
}

#[test]
fn weighted_least_connections_follows_uneven_lifetimes() {
    // Connections to server 0 last 10 steps, to server 1 two: keeping live counts level sends
    // server 1 five times as many new connections (stated tolerance: 4x..6x).
    let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 1]);
    let picks = run_wlc(&mut vs, &[10, 2], 30_000, true);
    let ratio = f64::from(picks[1]) / f64::from(picks[0]);
    assert!((4.0..=6.0).contains(&ratio), "{picks:?}");
}

#[test]
fn weighted_least_connections_honours_weights() {
    // Equal lifetimes, weights 1:3: server 0 gets 1/4 of the connections, ±2%.
    let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 3]);
    let picks = run_wlc(&mut vs, &[8, 8], 30_000, false);
    let share = f64::from(picks[0]) / 30_000.0;
    assert!((share - 0.25).abs() <= 0.02, "{picks:?}");
}

#[test]
fn weighted_least_connections_ties_take_turns() {
    // Connections that close at once leave every server tied at zero: rotation, not server 0.
    let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 1, 1]);
    assert_eq!(split(&mut vs, &mut Rng::new(2), 3000), [1000, 1000, 1000]);
}

#[test]
fn weighted_least_connections_new_server_fills_up_to_level_then_shares() {
    // Live connections are real load, not levelled: a new server takes new connections until
    // its count reaches the others', then its share (docs/virtual-servers.md, "Level start").
    let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 1]);
    let mut rng = Rng::new(3);
    for k in 0..20 {
        let id = vs.select(client(k), Instant::ZERO, &mut rng).unwrap();
        vs.on_connection_open(id).unwrap();
    }
    let late = vs.add(real(9, 1), Instant::ZERO).unwrap();
    for k in 0..10 {
        let id = vs.select(client(k), Instant::ZERO, &mut rng).unwrap();
        assert_eq!(id, late);
        vs.on_connection_open(id).unwrap();
    }
    let picks = split(&mut vs, &mut rng, 30);
    assert_eq!(picks, [10, 10, 10]);
}

#[test]
fn rebase_keeps_the_order_under_unequal_weights() {
    let mut vs = build(Algorithm::ByteCounter, &[1, 3, 2]);
    // Per unit of weight: 2^62 - 3, (2^62 - 9) / 3 ~ 2^62 / 3, (2^62 - 1) / 2 ~ 2^61.
    vs.servers[0].score = select::REBASE_AT - 3;
    vs.servers[1].score = select::REBASE_AT - 9;
    vs.servers[2].score = select::REBASE_AT - 1;
    vs.on_bytes(RealServerId(0), 3).unwrap();
    let s: Vec<u64> = vs.servers().iter().map(|s| s.score).collect();
    assert!(s.iter().all(|&v| v < 1 << 62), "{s:?}");
    assert!(select::ratio_less(s[1], 3, s[2], 2) && select::ratio_less(s[2], 2, s[0], 1));
    assert!(s[1] < 3, "the least loaded drops to (nearly) zero: {s:?}");
    let mut rng = Rng::new(1);
    assert_eq!(
        vs.select(client(0), Instant::ZERO, &mut rng),
        Some(RealServerId(1))
    );
}

/// Runs `n` connections that each carry `bytes` bytes and returns the picks per server id.
fn run_bytes(vs: &mut VirtualServer, rng: &mut Rng, n: u32, bytes: u64) -> Vec<u32> {
    let mut picks = vec![0u32; vs.next_id as usize];
    for k in 0..n {
        let id = vs.select(client(k), Instant::ZERO, rng).unwrap();
        vs.on_bytes(id, bytes).unwrap();
        picks[id.0 as usize] += 1;
    }
    picks
}

#[test]
fn byte_counter_splits_by_weight() {
    let mut vs = build(Algorithm::ByteCounter, &[1, 2]);
    let picks = run_bytes(&mut vs, &mut Rng::new(4), 30_000, 1500);
    let share = f64::from(picks[0]) / 30_000.0;
    assert!((share - 1.0 / 3.0).abs() <= 0.01, "{picks:?}");
}

#[test]
fn byte_counter_late_server_starts_level_and_gets_its_fair_share() {
    let mut vs = build(Algorithm::ByteCounter, &[1, 1, 1]);
    let mut rng = Rng::new(6);
    run_bytes(&mut vs, &mut rng, 3000, 1000);
    let late = vs.add(real(9, 1), Instant::ZERO).unwrap();
    assert_eq!(late, RealServerId(3));
    // A zero start would send it every one of the next 3000 connections. Level, it gets at most
    // its fair share (1/4 of the 4000 after joining, plus one for the tie it starts in).
    let picks = run_bytes(&mut vs, &mut rng, 4000, 1000);
    assert!(picks[3] <= 1001, "{picks:?}");
    assert!(picks[3] >= 900, "{picks:?}");
    // The reported counter is the real traffic, not the levelled score.
    assert_eq!(vs.server(late).unwrap().bytes(), u64::from(picks[3]) * 1000);
}

#[test]
fn byte_counter_server_back_from_drain_starts_level() {
    let mut vs = build(Algorithm::ByteCounter, &[1, 1]);
    let mut rng = Rng::new(8);
    vs.drain(RealServerId(0)).unwrap();
    run_bytes(&mut vs, &mut rng, 1000, 500);
    vs.undrain(RealServerId(0)).unwrap();
    let picks = run_bytes(&mut vs, &mut rng, 1000, 500);
    assert!(picks[0] <= 501, "{picks:?}");
}

#[test]
fn byte_counter_weight_change_keeps_load_per_weight() {
    let mut vs = build(Algorithm::ByteCounter, &[1, 1]);
    let mut rng = Rng::new(10);
    run_bytes(&mut vs, &mut rng, 1000, 1000);
    vs.set_weight(RealServerId(1), 2).unwrap();
    // Without rescaling server 1 would look half loaded and take every connection for a while.
    let picks = run_bytes(&mut vs, &mut rng, 3000, 1000);
    let share = f64::from(picks[1]) / 3000.0;
    assert!((share - 2.0 / 3.0).abs() <= 0.02, "{picks:?}");
}

#[test]
fn counters_near_u64_max_keep_the_right_order() {
    let mut vs = build(Algorithm::ByteCounter, &[1, 1]);
    let mut rng = Rng::new(12);
    // Scores just below the rebase threshold; server 0 crosses it.
    vs.servers[0].score = select::REBASE_AT - 10;
    vs.servers[1].score = select::REBASE_AT - 5;
    vs.on_bytes(RealServerId(0), 20).unwrap();
    assert_eq!(vs.servers[1].score, 0);
    assert_eq!(vs.servers[0].score, 15);
    assert_eq!(
        vs.select(client(0), Instant::ZERO, &mut rng),
        Some(RealServerId(1))
    );
    // A runaway server saturates at u64::MAX instead of wrapping to a small score.
    vs.servers[0].score = u64::MAX - 1;
    vs.servers[0].bytes = u64::MAX - 1;
    vs.on_bytes(RealServerId(0), 1000).unwrap();
    assert_eq!(vs.servers[0].bytes(), u64::MAX);
    for k in 0..10 {
        assert_eq!(
            vs.select(client(k), Instant::ZERO, &mut rng),
            Some(RealServerId(1))
        );
        vs.on_bytes(RealServerId(1), 1 << 40).unwrap();
    }
    // Ratios at the extremes of score and weight compare exactly.
    assert!(select::ratio_less(
        u64::MAX,
        spec::MAX_WEIGHT,
        u64::MAX - 1,
        1
    ));
    // Connections saturate too; least connections still avoids the full server.
    let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 1]);
    vs.servers[0].connections = u64::MAX;
    vs.on_connection_open(RealServerId(0)).unwrap();
    assert_eq!(vs.servers[0].connections(), u64::MAX);
    assert_eq!(
        vs.select(client(0), Instant::ZERO, &mut rng),
        Some(RealServerId(1))
    );
}

fn with_affinity(timeout: u32, max_entries: u32) -> VirtualServer {
    let mut s = spec(Algorithm::RoundRobin, &[1, 1]);
    s.affinity = Some(AffinitySpec {
        timeout,
        max_entries,
    });
    VirtualServer::new(&s, Instant::ZERO).unwrap()
}

#[test]
fn affinity_sticks_until_the_exact_idle_timeout() {
    let mut vs = with_affinity(10, 100);
    let mut rng = Rng::new(1);
    let x = client(1);
    let first = vs.select(x, Instant::ZERO, &mut rng).unwrap();
    // Other ports of the same address stick too; each new connection refreshes the entry.
    let other_port = Endpoint::new(x.addr, 50000);
    assert_eq!(
        vs.select(other_port, Instant::from_millis(9_999), &mut rng),
        Some(first)
    );
    assert_eq!(
        vs.select(x, Instant::from_millis(19_998), &mut rng),
        Some(first)
    );
    // Idle for exactly the timeout: expired, round robin moves on to the other server.
    let after = vs
        .select(x, Instant::from_millis(29_998), &mut rng)
        .unwrap();
    assert_ne!(after, first);
    assert_eq!(vs.affinity_entries(), 1);
}

#[test]
fn affinity_leaves_a_drained_server_and_does_not_return() {
    let mut vs = with_affinity(60, 100);
    let mut rng = Rng::new(1);
    let x = client(1);
    let first = vs.select(x, Instant::ZERO, &mut rng).unwrap();
    vs.drain(first).unwrap();
    let second = vs.select(x, Instant::from_secs(1), &mut rng).unwrap();
    assert_ne!(second, first);
    vs.undrain(first).unwrap();
    assert_eq!(vs.select(x, Instant::from_secs(2), &mut rng), Some(second));
}

#[test]
fn affinity_table_is_bounded() {
    let mut vs = with_affinity(60, 2);
    let mut rng = Rng::new(1);
    for k in 0..10 {
        vs.select(client(k), Instant::from_secs(u64::from(k)), &mut rng);
    }
    assert_eq!(vs.affinity_entries(), 2);
    assert_eq!(vs.affinity_evictions(), 8);
}

#[test]
fn drain_stops_new_connections_and_lets_old_ones_finish() {
    let mut vs = build(Algorithm::WeightedLeastConnections, &[1, 1, 1]);
    let mut rng = Rng::new(1);
    for _ in 0..5 {
        vs.on_connection_open(RealServerId(1)).unwrap();
    }
    vs.drain(RealServerId(1)).unwrap();
    assert_eq!(
        vs.server(RealServerId(1)).unwrap().state(),
        ServerState::Draining
    );
    // Once its connections end it is the least loaded, and it still gets nothing.
    for k in 0..1000 {
        let id = vs.select(client(k), Instant::ZERO, &mut rng).unwrap();
        assert_ne!(id, RealServerId(1));
        vs.on_connection_open(id).unwrap();
        if k < 5 {
            vs.on_connection_close(RealServerId(1)).unwrap();
        }
    }
    assert_eq!(vs.server(RealServerId(1)).unwrap().connections(), 0);
    assert_eq!(
        vs.on_connection_close(RealServerId(1)),
        Err(VirtualServerError::NoOpenConnection(RealServerId(1)))
    );
    let gone = vs.remove(RealServerId(1), false).unwrap();
    assert_eq!(gone.id(), RealServerId(1));
    assert!(vs.server(RealServerId(1)).is_none());
}

#[test]
fn remove_is_refused_while_connections_remain_unless_forced() {
    let mut vs = build(Algorithm::RoundRobin, &[1, 1]);
    vs.on_connection_open(RealServerId(0)).unwrap();
    vs.on_connection_open(RealServerId(0)).unwrap();
    assert_eq!(
        vs.remove(RealServerId(0), false).unwrap_err(),
        VirtualServerError::StillConnected {
            server: RealServerId(0),
            connections: 2
        }
    );
    assert!(vs.server(RealServerId(0)).is_some());
    let gone = vs.remove(RealServerId(0), true).unwrap();
    assert_eq!(gone.connections(), 2);
    // The engine's leftover sessions are told the server is gone.
    assert_eq!(
        vs.on_connection_close(RealServerId(0)),
        Err(VirtualServerError::UnknownServer(RealServerId(0)))
    );
    // Re-adding the same address gives a new id, never the old one.
    let again = vs.add(real(1, 1), Instant::ZERO).unwrap();
    assert_eq!(again, RealServerId(2));
    assert_eq!(vs.find(Ipv4Addr::new(10, 0, 0, 1), 80), Some(again));
    let mut rng = Rng::new(1);
    let counts = split(&mut vs, &mut rng, 100);
    assert_eq!(counts, [0, 50, 50]);
}

#[test]
fn runtime_changes_are_checked() {
    let mut vs = build(Algorithm::WeightedRoundRobin, &[1]);
    assert!(matches!(
        vs.add(real(1, 3), Instant::ZERO),
        Err(VirtualServerError::DuplicateServer { .. })
    ));
    assert!(matches!(
        vs.set_weight(RealServerId(0), 0),
        Err(VirtualServerError::OutOfRange { .. })
    ));
    assert_eq!(
        vs.drain(RealServerId(7)),
        Err(VirtualServerError::UnknownServer(RealServerId(7)))
    );
    // Another port on the same address is another server.
    let mut other = real(1, 1);
    other.port = Some(8888);
    let id = vs.add(other, Instant::ZERO).unwrap();
    assert_eq!(
        vs.server(id).unwrap().target(),
        Endpoint::new(Ipv4Addr::new(10, 0, 0, 1), 8888)
    );
    vs.set_weight(id, 3).unwrap();
    assert_eq!(split(&mut vs, &mut Rng::new(1), 400), [100, 300]);
    // What ctl writes back as config builds the same servers.
    let back = VirtualServer::new(&vs.to_spec(), Instant::ZERO).unwrap();
    assert_eq!(back.servers().len(), 2);
    assert_eq!(back.servers()[1].weight(), 3);
    assert_eq!(back.servers()[1].port(), Some(8888));
}

#[test]
fn config_rules() {
    let ok = spec(Algorithm::RoundRobin, &[1, 2]);
    assert!(ok.validate().is_ok());
    let mut s = ok.clone();
    s.protocol = Protocol::Icmp;
    assert!(s.validate().is_err());
    let mut s = ok.clone();
    s.real_servers[1].weight = spec::MAX_WEIGHT + 1;
    assert!(s.validate().is_err());
    let mut s = ok.clone();
    s.real_servers[1].address = s.real_servers[0].address;
    assert!(matches!(
        s.validate(),
        Err(VirtualServerError::DuplicateServer { .. })
    ));
    let mut s = ok.clone();
    s.health = Some(HealthSpec {
        probe: ProbeSpec::TcpConnect,
        interval: 2,
        timeout: 3,
        rise: 1,
        fall: 1,
    });
    assert!(s.validate().is_err());
    let mut s = ok.clone();
    s.affinity = Some(AffinitySpec {
        timeout: 0,
        max_entries: 1,
    });
    assert!(s.validate().is_err());
    let mut s = ok;
    s.real_servers = vec![real(1, 1); spec::MAX_REAL_SERVERS + 1];
    assert_eq!(s.validate(), Err(VirtualServerError::TooManyServers));
}

fn with_health() -> VirtualServer {
    let mut s = spec(Algorithm::RoundRobin, &[1, 1]);
    s.health = Some(HealthSpec {
        probe: ProbeSpec::Udp {
            payload: "ping".into(),
        },
        interval: 4,
        timeout: 1,
        rise: 2,
        fall: 2,
    });
    VirtualServer::new(&s, Instant::ZERO).unwrap()
}

/// Runs every probe due at `at` seconds, answering server `id` with `ok(id)`.
fn probe_round(
    vs: &mut VirtualServer,
    at: u64,
    ok: impl Fn(RealServerId) -> bool,
) -> Vec<(RealServerId, Option<Health>)> {
    let now = Instant::from_secs(at);
    let mut out = Vec::new();
    while let Some(req) = vs.next_probe(now) {
        let changed = vs.on_probe_result(req.server, ok(req.server), now).unwrap();
        out.push((req.server, changed));
    }
    out
}

#[test]
fn health_checks_take_a_dead_server_out_and_bring_it_back() {
    let mut vs = with_health();
    let mut rng = Rng::new(1);
    let b = RealServerId(1);
    // First probes are spread over the interval: server 0 at 0 s, server 1 at 2 s.
    assert_eq!(vs.next_probe_at(), Some(Instant::ZERO));
    let req = vs.next_probe(Instant::ZERO).unwrap();
    assert_eq!(req.server, RealServerId(0));
    assert_eq!(req.target, Endpoint::new(Ipv4Addr::new(10, 0, 0, 1), 80));
    assert_eq!(
        req.probe,
        Probe::UdpProbe {
            payload: b"ping".to_vec()
        }
    );
    assert_eq!(req.timeout, Duration::from_secs(1));
    assert_eq!(vs.next_probe(Instant::ZERO), None);
    assert_eq!(vs.next_probe_at(), Some(Instant::from_secs(2)));
    vs.on_probe_result(RealServerId(0), true, Instant::ZERO)
        .unwrap();
    assert_eq!(
        vs.on_probe_result(RealServerId(0), true, Instant::ZERO),
        Err(VirtualServerError::NoProbeInFlight(RealServerId(0)))
    );

    let dead = |id| id != b;
    assert_eq!(probe_round(&mut vs, 2, dead), [(b, None)]);
    assert_eq!(
        probe_round(&mut vs, 6, dead),
        [(RealServerId(0), None), (b, Some(Health::Down))]
    );
    assert_eq!(vs.server(b).unwrap().state(), ServerState::Down);
    for k in 0..100 {
        assert_eq!(
            vs.select(client(k), Instant::from_secs(6), &mut rng),
            Some(RealServerId(0))
        );
    }
    // Back after two successes in a row.
    assert_eq!(probe_round(&mut vs, 10, |_| true)[1], (b, None));
    assert_eq!(probe_round(&mut vs, 14, |_| true)[1], (b, Some(Health::Up)));
    assert_eq!(split(&mut vs, &mut rng, 100), [50, 50]);
}

#[test]
fn draining_and_down_together_report_down_and_stay_out() {
    let mut vs = with_health();
    let b = RealServerId(1);
    vs.drain(b).unwrap();
    for t in [2, 6] {
        probe_round(&mut vs, t, |id| id != b);
    }
    let s = vs.server(b).unwrap();
    assert_eq!((s.state(), s.is_draining()), (ServerState::Down, true));
    // Health coming back does not undo the operator's drain.
    for t in [10, 14] {
        probe_round(&mut vs, t, |_| true);
    }
    assert_eq!(vs.server(b).unwrap().state(), ServerState::Draining);
}

#[test]
fn no_active_server_selects_none() {
    let mut vs = build(Algorithm::ByteCounter, &[]);
    let mut rng = Rng::new(1);
    assert_eq!(vs.select(client(0), Instant::ZERO, &mut rng), None);
    let id = vs.add(real(1, 1), Instant::ZERO).unwrap();
    assert_eq!(vs.select(client(0), Instant::ZERO, &mut rng), Some(id));
    vs.drain(id).unwrap();
    assert_eq!(vs.select(client(0), Instant::ZERO, &mut rng), None);
}
