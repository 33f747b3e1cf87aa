//! `natgate demo`: the standard topology of `shared/TOPOLOGY.md` in namespaces, the gateway
//! running in it (in this process, on threads inside the gateway namespace), UDP, TCP and ICMP
//! from two subscribers to the WAN hosts, and a report of what happened.
//!
//! Everything it makes is torn down when it returns, on error, on panic (guards), and on Ctrl-C
//! (SIGINT and SIGTERM set a flag the demo checks between steps).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use natgate_core::Preset;

use crate::config::Settings;
use crate::control::protocol::SessionRow;
use crate::daemon::{Daemon, Detail, Snapshot, plumbing};
use crate::lab::probe;
use crate::lab::topology::{Topology, TopologyOptions, addr};
use crate::platform::netns::Netns;

/// How long each exchange may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Not root.
    #[error("the demo creates network namespaces: run it as root (sudo)")]
    NotRoot,
    /// Building the topology failed.
    #[error("building the topology: {0}")]
    Topology(#[from] crate::lab::topology::TopologyError),
    /// The generated config was refused (a bug).
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigFileError),
    /// The gateway did not start.
    #[error("starting the gateway: {0}")]
    Daemon(#[from] crate::daemon::DaemonError),
    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::platform::netns::NetnsError),
    /// Ctrl-C.
    #[error("interrupted; everything was torn down")]
    Interrupted,
    /// Installing the signal handler failed.
    #[error("signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// The config the demo runs the gateway with.
pub fn config_text(suffix: &str, preset: Preset) -> String {
    format!(
        r#"# natgate demo: the standard topology, suffix {suffix}
[interfaces]
inside = "lan0-{suffix}"
outside = "wan0-{suffix}"

[pool]
addresses = ["{pool}/{len}"]

[behavior]
preset = "{preset}"
"#,
        pool = addr::POOL_NET,
        len = addr::POOL_PREFIX,
        preset = preset.name(),
    )
}

/// One exchange and its outcome.
struct Exchange {
    what: String,
    outcome: Result<String, String>,
}

/// Runs the demo, writing its report line by line to `out`. Returns whether every exchange got
/// its reply.
pub fn run(preset: Preset, out: &mut dyn FnMut(&str)) -> Result<bool, DemoError> {
    if !plumbing::has_net_admin() {
        return Err(DemoError::NotRoot);
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(DemoError::Signal)?;
    }
    let check = |stop: &AtomicBool| {
        if stop.load(Ordering::Relaxed) {
            Err(DemoError::Interrupted)
        } else {
            Ok(())
        }
    };
    out("natgate demo: building the standard topology in network namespaces");
    let topo = Topology::build(&TopologyOptions::default())?;
    let sfx = topo.suffix.clone();
    out(&format!(
        "  sub1 {} and sub2 {} -- [lan0 {} | natgate | wan0 {}] -- upstream {} -- wan1 {} + {}, wan2 {}",
        addr::SUB1,
        addr::SUB2,
        addr::GW_LAN,
        addr::GW_WAN,
        addr::UPSTREAM_DOWN,
        addr::WAN1,
        addr::WAN1_ALT,
        addr::WAN2
    ));
    out(&format!(
        "  namespaces ng-*-{sfx}; external pool {}/{} (on no interface)",
        addr::POOL_NET,
        addr::POOL_PREFIX
    ));
    check(&stop)?;
    let settings = Settings::parse(&config_text(&sfx, preset))?;
    let daemon_stop = Arc::new(AtomicBool::new(false));
    let ds = daemon_stop.clone();
    let daemon: Daemon = topo
        .gateway
        .run_in(move || Daemon::start(&settings, ds))??;
    let handle = daemon.handle();
    out(&format!(
        "natgate started in ng-gw-{sfx}: preset {}, {} worker(s), TUNs natgate-in/natgate-out",
        preset.name(),
        handle.workers()
    ));
    out("");
    out("traffic (each exchange waits for its reply):");
    let mut results = Vec::new();
    let subs: [(&str, &Netns, Ipv4Addr); 2] = [
        ("sub1", &topo.sub1, addr::SUB1),
        ("sub2", &topo.sub2, addr::SUB2),
    ];
    let wans: [(&str, &Netns, Ipv4Addr); 2] = [
        ("wan1", &topo.wan1, addr::WAN1),
        ("wan2", &topo.wan2, addr::WAN2),
    ];
    for (i, (sname, sns, saddr)) in subs.iter().enumerate() {
        let (wname, wns, waddr) = wans[i];
        check(&stop)?;
        let ping = probe::ping(sns, waddr, PROBE_TIMEOUT)
            .map(|rtt| format!("echo reply in {:.2} ms", rtt.as_secs_f64() * 1e3))
            .map_err(|e| e.to_string());
        results.push(Exchange {
            what: format!("ICMP echo {sname} {saddr} -> {wname} {waddr}"),
            outcome: ping,
        });
        check(&stop)?;
        let dst = SocketAddrV4::new(waddr, 3478);
        let udp = probe::udp_echo(sns, wns, dst, PROBE_TIMEOUT)
            .map(|seen| format!("reply; {wname} saw {}", show(seen)))
            .map_err(|e| e.to_string());
        results.push(Exchange {
            what: format!("UDP {sname} {saddr} -> {dst}"),
            outcome: udp,
        });
        check(&stop)?;
        let dst = SocketAddrV4::new(waddr, 8080);
        let tcp = probe::tcp_probe(sns, wns, dst, PROBE_TIMEOUT)
            .map(|seen| format!("connected; {wname} saw {}", show(seen)))
            .map_err(|e| e.to_string());
        results.push(Exchange {
            what: format!("TCP {sname} {saddr} -> {dst}"),
            outcome: tcp,
        });
    }
    let w = results.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for r in &results {
        match &r.outcome {
            Ok(s) => out(&format!("  ok    {:w$}  {s}", r.what)),
            Err(e) => out(&format!("  FAIL  {:w$}  {e}", r.what)),
        }
    }
    out("");
    check(&stop)?;
    let snap = handle.snapshot(Detail::Sessions(Default::default()))?;
    report_state(&snap, out);
    let ok = results.iter().all(|r| r.outcome.is_ok());
    drop(handle);
    let mut daemon = daemon;
    daemon.shutdown()?;
    drop(daemon);
    topo.teardown()?;
    out("");
    out(&format!(
        "{} of {} exchanges got their reply; everything torn down in {:.1} s total: {}",
        results.iter().filter(|r| r.outcome.is_ok()).count(),
        results.len(),
        started.elapsed().as_secs_f64(),
        if ok { "OK" } else { "FAILED" }
    ));
    Ok(ok)
}

fn show(a: SocketAddr) -> String {
    let pool = |ip: Ipv4Addr| {
        let mask = u32::MAX << (32 - u32::from(addr::POOL_PREFIX));
        u32::from(ip) & mask == u32::from(addr::POOL_NET)
    };
    match a {
        SocketAddr::V4(v) if pool(*v.ip()) => format!("{v} (translated, from the pool)"),
        other => format!("{other} (NOT translated)"),
    }
}

/// Prints the session table, pools and counters.
pub fn report_state(s: &Snapshot, out: &mut dyn FnMut(&str)) {
    out(&format!(
        "session table ({} sessions, {} mappings):",
        s.session_count, s.mapping_count
    ));
    out(&format!(
        "  {:5} {:21} {:21} {:21} {:12} {}",
        "proto", "internal", "external", "remote", "state", "expires in"
    ));
    let mut sessions = s.sessions.sessions.clone();
    sessions.sort_by_key(SessionRow::sort_key);
    for x in &sessions {
        let state = x
            .tcp_state
            .map_or("-".to_owned(), |p| format!("{p:?}").to_lowercase());
        let left = x.expires_in_secs;
        out(&format!(
            "  {:5} {:21} {:21} {:21} {:12} {left} s",
            x.proto.name(),
            x.internal.to_string(),
            x.external.to_string(),
            x.remote.to_string(),
            state
        ));
    }
    out("pool:");
    for u in s
        .pools
        .iter()
        .filter(|u| u.subscribers > 0 || u.in_use != [0; 3])
    {
        out(&format!(
            "  {:15} tcp {} udp {} icmp {} in use, {} subscriber(s)",
            u.addr.to_string(),
            u.in_use[natgate_core::Protocol::Tcp.index()],
            u.in_use[natgate_core::Protocol::Udp.index()],
            u.in_use[natgate_core::Protocol::Icmp.index()],
            u.subscribers
        ));
    }
    let c = &s.counters;
    out(&format!(
        "counters: {} packets out, {} in ({} hairpinned); {} sessions and {} mappings created; {} ICMP errors generated",
        c.forwarded_packets[0],
        c.forwarded_packets[1],
        c.hairpinned_packets,
        c.sessions_created,
        c.mappings_created,
        c.icmp_generated
    ));
    let drops: Vec<String> = c
        .drops_by_reason()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{} {n}", r.name()))
        .collect();
    out(&format!(
        "drops: {}",
        if drops.is_empty() {
            "none".to_owned()
        } else {
            drops.join(", ")
        }
    ));
    out(&format!(
        "TUN I/O: {} read from inside, {} from outside, {} written, {} write errors",
        s.io.rx_packets[0], s.io.rx_packets[1], s.io.tx_packets, s.io.tx_errors
    ));
    out(&match &s.fast_path {
        Some(f) => {
            let punted: u64 = f
                .named()
                .iter()
                .filter(|(k, _)| k.starts_with("punt_"))
                .map(|(_, n)| n)
                .sum();
            format!(
                "data path: the in-kernel fast path (TC) carried {} packets out and {} in, and \
                 handed {punted} to natgate's slow path (TUN), which translated the counters above",
                f.forwarded_out, f.forwarded_in
            )
        }
        None => "data path: natgate's slow path (TUN) carried every packet".to_owned(),
    });
}
