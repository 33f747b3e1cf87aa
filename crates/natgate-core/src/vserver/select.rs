//! The scheduling algorithms: which active real server takes a new connection.
//!
//! Every algorithm looks only at active servers and is deterministic given the [`Rng`], which is
//! read once, for where the rotation starts: engines that each keep their own copy of a virtual
//! server (one per shard) then do not all send their first connections to the same server.
//!
//! Loads are compared as ratios `load / weight` by cross-multiplying in `u128`
//! (`a * wb < b * wa`), which is exact and cannot overflow for `u64` loads and `u32` weights.

use super::RealServer;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// How a new connection picks its real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Each active server in turn, weights ignored.
    RoundRobin,
    /// Smooth weighted round robin (as nginx does it): over any run of `sum of weights`
    /// selections with no change to the servers, each server is picked exactly `weight` times,
    /// interleaved (weights 1:2 give B A B, B A B...) rather than in bursts.
    WeightedRoundRobin,
    /// The server with the fewest live connections per unit of weight; ties go round in turn.
    WeightedLeastConnections,
    /// The server that has carried the fewest bytes per unit of weight; ties go round in turn.
    /// A server that joins or comes back starts level with the least loaded active server.
    ByteCounter,
}

impl Algorithm {
    /// The name used in config and by `ctl`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::WeightedRoundRobin => "weighted-round-robin",
            Algorithm::WeightedLeastConnections => "weighted-least-connections",
            Algorithm::ByteCounter => "byte-counter",
        }
    }
}

/// Whether `a / wa < b / wb`, exactly.
pub(super) fn ratio_less(a: u64, wa: u32, b: u64, wb: u32) -> bool {
    u128::from(a) * u128::from(wb) < u128::from(b) * u128::from(wa)
}

/// Byte scores above this are rebased (see [`rebase_scores`]); far below `u64::MAX`, so that a
/// rebase always happens long before any score saturates while the servers stay level.
pub(super) const REBASE_AT: u64 = 1 << 62;

/// Subtracts the same amount per unit of weight from every byte score, so the ratios keep their
/// order and the smallest active one drops to (nearly) zero. Inactive servers are re-levelled when
/// they come back, so their scores only need to stay in range.
pub(super) fn rebase_scores(servers: &mut [RealServer]) {
    let Some(min) = min_active_score(servers, None) else {
        return;
    };
    let per_weight = min.0 / u64::from(min.1.max(1));
    for s in servers.iter_mut() {
        let cut = u128::from(per_weight) * u128::from(s.weight);
        let cut = u64::try_from(cut).unwrap_or(u64::MAX);
        s.score = s.score.saturating_sub(cut);
    }
}

/// The smallest `(score, weight)` ratio over active servers other than `except`.
pub(super) fn min_active_score(
    servers: &[RealServer],
    except: Option<usize>,
) -> Option<(u64, u32)> {
    servers
        .iter()
        .enumerate()
        .filter(|&(i, s)| Some(i) != except && s.is_active())
        .map(|(_, s)| (s.score, s.weight))
        .reduce(|m, c| if ratio_less(c.0, c.1, m.0, m.1) { c } else { m })
}

/// `score * to / from`, saturated: the score with the same ratio under a new weight.
pub(super) fn rescale(score: u64, from: u32, to: u32) -> u64 {
    let v = u128::from(score) * u128::from(to) / u128::from(from.max(1));
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The scheduler of one virtual server.
#[derive(Debug, Clone)]
pub(super) struct Scheduler {
    algorithm: Algorithm,
    /// Where the next scan starts; drawn from the rng at the first selection.
    cursor: Option<usize>,
}

impl Scheduler {
    /// A scheduler that has not picked yet.
    pub(super) fn new(algorithm: Algorithm) -> Self {
        Scheduler {
            algorithm,
            cursor: None,
        }
    }

    /// The algorithm.
    pub(super) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The index of the active server that takes the next connection; `None` if none is active.
    pub(super) fn pick(&mut self, servers: &mut [RealServer], rng: &mut Rng) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = *self.cursor.get_or_insert_with(|| {
            // n <= MAX_REAL_SERVERS, so it fits a u32.
            rng.below(u32::try_from(n).unwrap_or(u32::MAX)) as usize
        }) % n;
        let mut order = (0..n).map(|k| (start + k) % n);
        let chosen = match self.algorithm {
            Algorithm::RoundRobin => order.find(|&i| servers[i].is_active()),
            Algorithm::WeightedRoundRobin => smooth_weighted(servers, order),
            Algorithm::WeightedLeastConnections => {
                least_by(servers, order, |s| (s.connections, s.weight))
            }
            Algorithm::ByteCounter => least_by(servers, order, |s| (s.score, s.weight)),
        }?;
        if self.algorithm != Algorithm::WeightedRoundRobin {
            // Rotation: the next scan starts after this pick, so ties take turns. Smooth WRR
            // keeps a fixed scan order; its running sums do the interleaving.
            self.cursor = Some((chosen + 1) % n);
        }
        Some(chosen)
    }
}

/// The first active server in `order` with the smallest `load / weight`.
fn least_by(
    servers: &[RealServer],
    order: impl Iterator<Item = usize>,
    load: impl Fn(&RealServer) -> (u64, u32),
) -> Option<usize> {
    let mut best: Option<(usize, u64, u32)> = None;
    for i in order {
        let s = &servers[i];
        if !s.is_active() {
            continue;
        }
        let (l, w) = load(s);
        if best.is_none_or(|(_, bl, bw)| ratio_less(l, w, bl, bw)) {
            best = Some((i, l, w));
        }
    }
    best.map(|(i, _, _)| i)
}

/// nginx's smooth weighted round robin: every active server's running sum grows by its weight,
/// the largest sum wins and gives back the total. The sums of active servers add up to zero after
/// each pick and stay within `n * total weight` of it, so `i64` cannot overflow (weights are at
/// most `MAX_WEIGHT`, servers at most `MAX_REAL_SERVERS`). Callers reset the sums whenever the
/// active set or a weight changes.
fn smooth_weighted(
    servers: &mut [RealServer],
    order: impl Iterator<Item = usize>,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<(usize, i64)> = None;
    for i in order {
        let s = &mut servers[i];
        if !s.is_active() {
            continue;
        }
        s.current += i64::from(s.weight);
        total += i64::from(s.weight);
        if best.is_none_or(|(_, c)| s.current > c) {
            best = Some((i, s.current));
        }
    }
    let (i, _) = best?;
    servers[i].current -= total;
    Some(i)
}
