//! Active health checks, sans-IO: the core says when to probe which server and counts the
//! results; the daemon opens the sockets.
//!
//! One [`HealthChecker`] per real server. It starts up (a configured server is presumed to work)
//! and probes at once, so a dead server is out after `fall` probes. At most one probe per server
//! is in flight; the next starts `interval` after the last one started, or at once if its result
//! came later than that. `rise` consecutive successes bring a down server back, `fall`
//! consecutive failures take an up one out; any other result only resets the opposite streak.

use super::RealServerId;
use crate::endpoint::Endpoint;
use crate::time::Instant;
use core::time::Duration;

/// What the daemon does to probe a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Open a TCP connection to the target and close it; success is an accepted connection
    /// within the timeout, failure a refusal, an error or the timeout.
    TcpConnect,
    /// Send one UDP datagram with this payload to the target; success is any reply within the
    /// timeout, failure an ICMP error or the timeout.
    UdpProbe {
        /// The datagram's payload.
        payload: Vec<u8>,
    },
}

/// A probe the daemon must perform now, then answer with
/// [`VirtualServer::on_probe_result`](super::VirtualServer::on_probe_result), exactly once, within
/// `timeout` (a timeout is reported as a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest {
    /// The server probed.
    pub server: RealServerId,
    /// Where to send the probe: the server's address and real port.
    pub target: Endpoint,
    /// What to send.
    pub probe: Probe,
    /// How long the daemon waits before it reports a failure.
    pub timeout: Duration,
}

/// Whether a server answers its health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// It answers (or has not failed `fall` probes in a row yet).
    Up,
    /// It failed `fall` probes in a row and has not passed `rise` since.
    Down,
}

/// The timing and thresholds of one server's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthParams {
    /// From the start of one probe to the start of the next.
    pub interval: Duration,
    /// Consecutive successes that bring a down server back (at least 1).
    pub rise: u32,
    /// Consecutive failures that take an up server out (at least 1).
    pub fall: u32,
}

/// A result arrived for a server with no probe in flight (late, duplicated or invented).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no health probe in flight")]
pub struct NoProbeInFlight;

/// The health-check state machine of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChecker {
    params: HealthParams,
    health: Health,
    successes: u32,
    failures: u32,
    next_at: Instant,
    in_flight_since: Option<Instant>,
}

impl HealthChecker {
    /// A checker for a server presumed up, whose first probe is due at `first_probe`.
    pub fn new(params: HealthParams, first_probe: Instant) -> Self {
        HealthChecker {
            params,
            health: Health::Up,
            successes: 0,
            failures: 0,
            next_at: first_probe,
            in_flight_since: None,
        }
    }

    /// The server's health as the checks last decided it.
    pub fn health(&self) -> Health {
        self.health
    }

    /// When the next probe is due; `None` while one is in flight (its result schedules the next).
    pub fn due_at(&self) -> Option<Instant> {
        match self.in_flight_since {
            Some(_) => None,
            None => Some(self.next_at),
        }
    }

    /// Starts a probe if one is due at `now`; returns whether it did.
    pub fn start_probe(&mut self, now: Instant) -> bool {
        if self.in_flight_since.is_some() || now < self.next_at {
            return false;
        }
        self.in_flight_since = Some(now);
        true
    }

    /// Takes the result of the probe in flight; returns the new health if it changed.
    pub fn on_result(&mut self, ok: bool, now: Instant) -> Result<Option<Health>, NoProbeInFlight> {
        let sent = self.in_flight_since.take().ok_or(NoProbeInFlight)?;
        // Keep the cadence from the probe's start; a result later than the interval makes the
        // next probe due at once.
        self.next_at = (sent + self.params.interval).max(now);
        let changed = if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.health == Health::Down && self.successes >= self.params.rise)
                .then_some(Health::Up)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.health == Health::Up && self.failures >= self.params.fall).then_some(Health::Down)
        };
        if let Some(h) = changed {
            self.health = h;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: HealthParams = HealthParams {
        interval: Duration::from_secs(5),
        rise: 2,
        fall: 3,
    };

    fn probe(c: &mut HealthChecker, at: u64, ok: bool) -> Option<Health> {
        let now = Instant::from_secs(at);
        assert!(c.start_probe(now), "probe due at {at}s");
        c.on_result(ok, now + Duration::from_secs(1)).unwrap()
    }

    #[test]
    fn fall_takes_fall_consecutive_failures_and_rise_takes_rise_successes() {
        let mut c = HealthChecker::new(PARAMS, Instant::ZERO);
        assert_eq!(c.health(), Health::Up);
        assert_eq!(probe(&mut c, 0, false), None);
        assert_eq!(probe(&mut c, 5, false), None);
        // A success breaks the failure streak: three more failures are needed.
        assert_eq!(probe(&mut c, 10, true), None);
        assert_eq!(probe(&mut c, 15, false), None);
        assert_eq!(probe(&mut c, 20, false), None);
        assert_eq!(probe(&mut c, 25, false), Some(Health::Down));
        assert_eq!(c.health(), Health::Down);
        // Further failures change nothing; one success is not enough to come back.
        assert_eq!(probe(&mut c, 30, false), None);
        assert_eq!(probe(&mut c, 35, true), None);
        assert_eq!(probe(&mut c, 40, false), None);
        assert_eq!(probe(&mut c, 45, true), None);
        assert_eq!(probe(&mut c, 50, true), Some(Health::Up));
        assert_eq!(probe(&mut c, 55, true), None);
    }

    #[test]
    fn one_probe_in_flight_and_the_cadence_follows_the_start() {
        let mut c = HealthChecker::new(PARAMS, Instant::from_secs(3));
        assert_eq!(c.due_at(), Some(Instant::from_secs(3)));
        assert!(!c.start_probe(Instant::from_millis(2999)));
        assert!(c.start_probe(Instant::from_secs(3)));
        assert_eq!(c.due_at(), None);
        assert!(!c.start_probe(Instant::from_secs(100)));
        c.on_result(true, Instant::from_secs(4)).unwrap();
        assert_eq!(c.due_at(), Some(Instant::from_secs(8)));
        // A duplicate result is refused, not counted.
        assert_eq!(
            c.on_result(false, Instant::from_secs(4)),
            Err(NoProbeInFlight)
        );
        // A result later than the interval makes the next probe due at once.
        assert!(c.start_probe(Instant::from_secs(8)));
        c.on_result(true, Instant::from_secs(20)).unwrap();
        assert_eq!(c.due_at(), Some(Instant::from_secs(20)));
        assert!(c.start_probe(Instant::from_secs(20)));
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_result() {
        let p = HealthParams {
            rise: 1,
            fall: 1,
            ..PARAMS
        };
        let mut c = HealthChecker::new(p, Instant::ZERO);
        assert_eq!(probe(&mut c, 0, false), Some(Health::Down));
        assert_eq!(probe(&mut c, 5, true), Some(Health::Up));
        assert_eq!(probe(&mut c, 10, true), None);
    }
}
