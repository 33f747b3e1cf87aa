//! The health prober: performs the virtual servers' health probes (`docs/virtual-servers.md`,
//! "Health checks") and hands the results to the engines.
//!
//! The checkers are sans-IO and live in the engines' copies of each virtual server; this
//! thread is their I/O. In rounds: ask every worker to start what is due now (the copies are
//! replicas and start the same probes; the first worker's list is used), perform each probe once,
//! [`MAX_PARALLEL`] at a time on short-lived threads, and deliver every result to every worker.
//! Probing once and telling all copies, rather than letting each worker probe, keeps the copies'
//! health identical and sends one probe per server per interval whatever the number of workers.
//!
//! The thread runs in the gateway's network namespace (it is started from a thread in it), so a
//! probe reaches a real server the way the gateway does, from its inside address, without
//! passing through the NAT. A round lasts at most the longest probe timeout; between rounds the
//! thread sleeps until the next probe is due, at most [`POLL`] (so servers added by `ctl` or a
//! reload are seen promptly), and it stops within [`POLL`] of the stop flag, or after the
//! round it is in ([`stopped`] does not wait for that longer than [`STOP_WAIT`]).

use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use natgate_core::vserver::Probe;

use super::vservers::{DueProbe, ProbeOutcome};
use super::{Clock, DaemonError, DaemonHandle};

/// Longest sleep between two asks for due probes.
pub const POLL: Duration = Duration::from_millis(200);

/// Most probes in flight at once; a round with more runs them in batches.
pub const MAX_PARALLEL: usize = 32;

/// Starts the prober thread. It ends when `stop` is set.
pub fn spawn(
    handle: DaemonHandle,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, DaemonError> {
    std::thread::Builder::new()
        .name("natgate-health".into())
        .spawn(move || run(&handle, clock, &stop))
        .map_err(|e| DaemonError::Thread(e.to_string()))
}

/// Longest wait for the prober to end after the stop flag is set.
pub const STOP_WAIT: Duration = Duration::from_secs(1);

/// Waits for the prober (started with `stop`, now set) to end. A probe cannot be interrupted, so
/// a round with long timeouts may outlast [`STOP_WAIT`]; then the thread is left to finish its
/// round on its own (it only talks to the workers' channels, which are closed by then) rather
/// than hold up the shutdown for a probe timeout.
pub fn stopped(h: JoinHandle<()>) -> Result<(), DaemonError> {
    let deadline = std::time::Instant::now() + STOP_WAIT;
    while !h.is_finished() {
        if std::time::Instant::now() >= deadline {
            tracing::debug!("health prober still probing at shutdown; not waiting for it");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    h.join()
        .map_err(|_| DaemonError::Thread("the health prober panicked".into()))
}

fn run(handle: &DaemonHandle, clock: Clock, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        let round = match handle.start_probes(now) {
            Ok(r) => r,
            // Workers busy or stopping: try again after a pause.
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        if !round.due.is_empty() {
            let results = perform(&round.due);
            handle.probe_results(clock.now(), &results);
            // Ask again at once: results may have made the next probes due.
            continue;
        }
        let wait = match round.next_at {
            Some(t) => t.saturating_since(clock.now()).min(POLL),
            None => POLL,
        };
        std::thread::sleep(wait.max(Duration::from_millis(1)));
    }
}

/// Performs `due`, at most [`MAX_PARALLEL`] at a time; one outcome per probe, in order.
fn perform(due: &[DueProbe]) -> Vec<ProbeOutcome> {
    let mut out = Vec::with_capacity(due.len());
    for batch in due.chunks(MAX_PARALLEL) {
        std::thread::scope(|s| {
            let running: Vec<_> = batch
                .iter()
                .map(|d| {
                    let r = &d.request;
                    std::thread::Builder::new()
                        .name("natgate-probe".into())
                        .spawn_scoped(s, move || probe(&r.probe, r.target, r.timeout))
                })
                .collect();
            for (d, h) in batch.iter().zip(running) {
                out.push(ProbeOutcome {
                    protocol: d.protocol,
                    address: d.address,
                    server: d.request.server,
                    // A probe that could not run, or panicked, did not see the server answer.
                    ok: h.is_ok_and(|h| h.join().unwrap_or(false)),
                });
            }
        });
    }
    out
}

/// Performs one probe: whether `target` answered within `timeout`.
pub fn probe(what: &Probe, target: natgate_core::Endpoint, timeout: Duration) -> bool {
    let to = SocketAddr::V4(SocketAddrV4::new(target.addr, target.port));
    // A zero timeout means "no timeout" to the socket calls; the config forbids it anyway.
    let timeout = timeout.max(Duration::from_millis(1));
    match what {
        Probe::TcpConnect => TcpStream::connect_timeout(&to, timeout).is_ok(),
        Probe::UdpProbe { payload } => udp_probe(to, payload, timeout).unwrap_or(false),
    }
}

fn udp_probe(to: SocketAddr, payload: &[u8], timeout: Duration) -> std::io::Result<bool> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    // Connected, so an ICMP port unreachable comes back as a refused receive.
    s.connect(to)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(payload)?;
    let mut buf = [0u8; 512];
    // Timeout or refusal (an ICMP error): both failures.
    Ok(s.recv(&mut buf).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    fn ep(a: SocketAddr) -> natgate_core::Endpoint {
        match a {
            SocketAddr::V4(v) => natgate_core::Endpoint::new(*v.ip(), v.port()),
            SocketAddr::V6(_) => panic!("v6"),
        }
    }

    #[test]
    fn tcp_and_udp_probes_on_loopback() {
        let t = Duration::from_millis(500);
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
        let up = ep(l.local_addr().expect("addr"));
        assert!(probe(&Probe::TcpConnect, up, t));
        drop(l);
        // Nothing listens there now: refused.
        assert!(!probe(&Probe::TcpConnect, up, t));

        let echo = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
        let at = ep(echo.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            let mut b = [0u8; 64];
            echo.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            if let Ok((n, from)) = echo.recv_from(&mut b) {
                let _ = echo.send_to(&b[..n], from);
            }
        });
        let udp = Probe::UdpProbe {
            payload: b"ping".to_vec(),
        };
        assert!(probe(&udp, at, t));
        server.join().expect("echo");
        // The echo socket is closed: port unreachable, a failure.
        assert!(!probe(&udp, at, t));
    }
}
