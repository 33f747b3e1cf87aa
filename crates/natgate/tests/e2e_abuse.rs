//! natgate under attack and failure, end to end in namespaces: a subscriber sending from spoofed
//! sources while another keeps its flows; natgate killed or stopped under traffic. Needs root;
//! skips otherwise. The topology's namespaces (and with them every address added here and every
//! natgate left behind) go when the test ends, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    Gateway, T, config, ctl_json, has_link, in_pool, is_root, natgate_rules, recv, topology,
    udp_socket, v4,
};
use natgate::lab::probe::ping;
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netlink::Netlink;

/// A source outside the inside interface's subnet (100.64.0.0/16), as a spoofer would use.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(100, 65, 7, 9);

fn drops(topo: &Topology, reason: &str) -> u64 {
    ctl_json(topo, &["drops", "--all"])["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason)
        .map_or(0, |r| r["packets"].as_u64().unwrap())
}

/// With no `inside-networks` in the file, only the inside interface's own subnets are
/// translated: 300 datagrams from a spoofed source reach nobody, take no session, draw no
/// answer and are counted as `source_not_inside`, while the real subscriber's flows and pings
/// go on.
#[test]
fn spoofed_sources_are_dropped_and_the_real_subscriber_keeps_working() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    // sub2 sends from an address it is not given by the inside subnet.
    let dev = topo.ifaces.sub2.clone();
    topo.sub2
        .run_in(|| Netlink::new().unwrap().add_addr_v4(&dev, SPOOFED, 32))
        .unwrap()
        .unwrap();
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 7000));
    let dst = server.local_addr().unwrap();
    let spoofer = udp_socket(&topo.sub2, SocketAddrV4::new(SPOOFED, 0));
    let real = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    for i in 0..300u32 {
        spoofer
            .send_to(format!("spoof {i}").as_bytes(), dst)
            .unwrap();
        if i % 100 == 0 {
            real.send_to(format!("real {i}").as_bytes(), dst).unwrap();
        }
    }
    // Only the real subscriber's datagrams arrive, translated, and are answered.
    let mut real_seen = 0;
    while let Some((p, from)) = recv(&server, Duration::from_millis(500)) {
        assert!(
            p.starts_with(b"real"),
            "{:?} from {from}",
            String::from_utf8_lossy(&p)
        );
        assert!(in_pool(*v4(from).ip()), "{from}");
        server.send_to(&p, from).unwrap();
        real_seen += 1;
        if real_seen == 3 {
            break;
        }
    }
    assert_eq!(real_seen, 3);
    for _ in 0..3 {
        assert!(recv(&real, T).is_some(), "the real subscriber's replies");
    }
    ping(&topo.sub1, addr::WAN2, T).unwrap();
    // Never answered: no ICMP error comes back to the spoofer (it would show as an error on
    // its socket, or a datagram).
    spoofer.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(spoofer.recv_from(&mut buf).is_err());
    assert!(spoofer.take_error().unwrap().is_none(), "no ICMP error");
    assert_eq!(drops(&topo, "source_not_inside"), 300);
    let sessions = ctl_json(&topo, &["sessions", "--count"])["count"]
        .as_u64()
        .unwrap();
    assert!(
        sessions <= 2,
        "only the real subscriber's sessions: {sessions}"
    );
}

/// `max-sessions = max-mappings = 2^30` passes the file's own checks but cannot be held here:
/// `run` says how much it needs and how much there is, exits with an error (not SIGABRT), and
/// leaves no rule and no TUN device behind.
#[test]
fn a_config_the_machine_cannot_hold_is_refused_at_run_and_leaves_nothing() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::spawn(
        &topo,
        &config(
            &topo,
            "[limits]\nmax-sessions = 1073741824\nmax-mappings = 1073741824\n",
        ),
    );
    let st = gw
        .wait_exit(Duration::from_secs(30))
        .expect("natgate exits");
    assert!(!st.success(), "{st:?}");
    assert!(st.code().is_some(), "an error exit, not a signal: {st:?}");
    let line = gw.wait_for("bytes available", Duration::from_secs(5));
    assert!(line.is_some(), "the need and what there is: {:?}", gw.lines);
    assert!(natgate_rules(&topo).is_empty());
    assert!(!has_link(&topo, "natgate-in") && !has_link(&topo, "natgate-out"));
}

/// Reads what `fd` captured: (packets from the pool, packets from an inside address).
fn captured_sources(fd: &OwnedFd) -> (usize, usize) {
    let (mut translated, mut leaked) = (0, 0);
    for buf in common::capture::captured(fd) {
        if buf.len() < 20 {
            continue;
        }
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        if in_pool(src) {
            translated += 1;
        } else if u32::from(src) >> 22 == u32::from(Ipv4Addr::new(100, 64, 0, 0)) >> 22 {
            // 100.64.0.0/10: a subscriber's own address.
            leaked += 1;
        }
    }
    (translated, leaked)
}

/// The routes of natgate's table in the gateway namespace, as `ip route` prints them.
fn natgate_table(topo: &Topology) -> String {
    let table = natgate::config::DEFAULT_TABLE.to_string();
    let out = std::process::Command::new("ip")
        .args(["-n", topo.gateway.name(), "route", "show", "table", &table])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How the gateway stops in a fail-closed test.
#[derive(Clone, Copy)]
enum Stop {
    Kill,
    Term,
}

/// A subscriber sends a datagram every 2 ms to wan1 while natgate translates, while it stops
/// (`how`), and for a second after; a capture on wan1 sees translated packets and not one with
/// a subscriber's source. Returns the gateway's topology for the caller's further checks.
fn nothing_leaks_when_natgate_stops(fast_path: &str, how: Stop) -> Topology {
    let topo = topology();
    let text = config(
        &topo,
        &format!("[dataplane]\nfast-path = \"{fast_path}\"\n"),
    );
    let mut gw = Gateway::start(&topo, &text);
    let to = SocketAddrV4::new(addr::WAN1, 7100);
    let server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    for _ in 0..20 {
        client.send_to(b"warm", to).unwrap();
        let (_, from) = recv(&server, T).expect("translated datagram");
        assert!(in_pool(*v4(from).ip()), "{from}");
    }
    if fast_path == "tc" {
        let p = ctl_json(&topo, &["stats"])["fast_path"]["program"].clone();
        assert!(
            p["forwarded_out"].as_u64().unwrap() >= 15,
            "the flow is carried in the kernel before the stop: {p}"
        );
    }
    let cap = common::capture::capture(&topo.wan1);
    let stop = Arc::new(AtomicBool::new(false));
    let sent_after = Arc::new(AtomicUsize::new(0));
    let stopped = Arc::new(AtomicBool::new(false));
    let sender = {
        let (stop, sent_after, stopped) = (stop.clone(), sent_after.clone(), stopped.clone());
        std::thread::spawn(move || {
            // At most 5000 datagrams (10 s).
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if client.send_to(b"flow", to).is_ok() && stopped.load(Ordering::Relaxed) {
                    sent_after.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    match how {
        Stop::Kill => gw.kill(),
        Stop::Term => {
            let st = gw.stop().expect("natgate exits on SIGTERM");
            assert!(st.success(), "{st:?}");
        }
    }
    stopped.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let (translated, leaked) = captured_sources(&cap);
    assert!(
        translated > 0,
        "the flow ran through natgate before the stop"
    );
    assert!(
        sent_after.load(Ordering::Relaxed) > 100,
        "the subscriber kept sending after the stop"
    );
    assert_eq!(leaked, 0, "untranslated packets reached the WAN");
    drop(server);
    topo
}

/// SIGKILL with a flow carried by the in-kernel fast path: the kernel detaches the program
/// with the process, the flow's packets fall back to the policy routing, and the blackhole
/// left in natgate's table drops them. The next start takes over what was left and a normal
/// stop removes it.
#[test]
fn after_sigkill_of_the_fast_path_nothing_leaves_untranslated() {
    if !is_root() {
        return;
    }
    let topo = nothing_leaks_when_natgate_stops("tc", Stop::Kill);
    assert!(
        !natgate_rules(&topo).is_empty(),
        "the rule stays, fail closed"
    );
    let table = natgate_table(&topo);
    assert!(table.starts_with("blackhole default"), "{table}");
    let mut gw = Gateway::start(&topo, &config(&topo, ""));
    let to = SocketAddrV4::new(addr::WAN1, 7101);
    let server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    client.send_to(b"again", to).unwrap();
    let (_, from) = recv(&server, T).expect("translated after the restart");
    assert!(in_pool(*v4(from).ip()), "{from}");
    assert!(gw.stop().unwrap().success());
    assert!(natgate_rules(&topo).is_empty());
    assert_eq!(natgate_table(&topo), "");
}

/// SIGKILL with the flow on the slow path: the TUN and its route die with the process; the
/// blackhole stays. A restart that fails after taking it over (here: its log file cannot be
/// opened) leaves it too, as forwarding is still on.
#[test]
fn after_sigkill_of_the_slow_path_nothing_leaves_untranslated() {
    if !is_root() {
        return;
    }
    let topo = nothing_leaks_when_natgate_stops("off", Stop::Kill);
    let bad = config(
        &topo,
        "[log.file]\npath = \"/nonexistent-natgate-dir/events.jsonl\"\n",
    );
    let mut gw = Gateway::spawn(&topo, &bad);
    let st = gw.wait_exit(Duration::from_secs(15)).expect("exits");
    assert!(!st.success(), "{st:?}");
    assert!(!natgate_rules(&topo).is_empty(), "the rule stays");
    let table = natgate_table(&topo);
    assert!(table.starts_with("blackhole default"), "{table}");
}

/// A normal stop (SIGTERM) under traffic: forwarding goes back off before the rule goes, so no
/// packet leaks while the teardown runs or after it.
#[test]
fn during_a_normal_stop_nothing_leaves_untranslated() {
    if !is_root() {
        return;
    }
    let topo = nothing_leaks_when_natgate_stops("auto", Stop::Term);
    assert!(natgate_rules(&topo).is_empty());
    assert_eq!(natgate_table(&topo), "", "the blackhole goes last");
}

/// Removes a directory when dropped.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Events of `sink` lost for `reason`, from `ctl stats`.
fn sink_lost(stats: &serde_json::Value, sink: &str, reason: &str) -> u64 {
    stats["log_sink_losses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["sink"] == sink && l["reason"] == reason)
        .map(|l| l["events"].as_u64().unwrap())
        .sum()
}

/// The JSON-lines file on a full disk (a 16 KiB tmpfs in natgate's own mount namespace) and a
/// syslog and an IPFIX collector that are down (closed ports on wan1 and wan2, two hosts, as
/// each rate-limits its port unreachables per destination): what does not reach
/// them is counted per sink and reason in `ctl stats`, natgate warns about each, and the file
/// holds whole records only.
#[test]
fn lost_translation_logs_are_counted_per_sink_and_reason() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let dir = std::env::temp_dir().join(format!("natgate-e2e-full-{}", topo.suffix));
    std::fs::create_dir_all(&dir).unwrap();
    let _rm = RemoveDir(dir.clone());
    let d = dir.display().to_string();
    let text = config(
        &topo,
        &format!(
            "[log.file]\npath = \"{d}/events.jsonl\"\n\n[log.syslog]\nudp = \"{w1}:5514\"\n\n\
             [log.ipfix]\ncollector = \"{w2}:4739\"\n",
            w1 = addr::WAN1,
            w2 = addr::WAN2,
        ),
    );
    // The tmpfs goes with natgate's mount namespace, that is with natgate.
    let script = "mount -t tmpfs -o size=16k tmpfs \"$0\" && exec \"$@\"";
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        &d,
    ];
    let mut gw = Gateway::spawn_under(&topo, &text, &wrapper);
    gw.wait_for("natgate running", Duration::from_secs(15))
        .unwrap_or_else(|| panic!("natgate did not start:\n{}", gw.lines.join("\n")));
    // 400 sessions: 400 records, far more than 16 KiB.
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    for port in 0..400u16 {
        client
            .send_to(b"log me", SocketAddrV4::new(addr::WAN1, 20_000 + port))
            .unwrap();
    }
    let wanted = [
        ("file", "no_space"),
        ("syslog", "refused"),
        ("ipfix", "refused"),
    ];
    let mut stats = serde_json::Value::Null;
    let mut sent = 400u64;
    for round in 0..50u16 {
        stats = ctl_json(&topo, &["stats"]);
        if wanted.iter().all(|(s, r)| sink_lost(&stats, s, r) > 0) {
            break;
        }
        // More events, so more sends: under load a send can fail for want of buffer space
        // before the collector's port unreachable comes back, and that batch counts as an
        // I/O error; a later one meets the refusal.
        for port in 0..10u16 {
            client
                .send_to(
                    b"log me",
                    SocketAddrV4::new(addr::WAN1, 30_000 + round * 10 + port),
                )
                .unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (sink, reason) in wanted {
        assert!(
            sink_lost(&stats, sink, reason) > 0,
            "{sink} {reason}: {stats}\n{}",
            gw.lines.join("\n")
        );
        let line = gw.wait_for(&format!("sink=\"{sink}\""), T);
        assert!(
            line.is_some_and(|l| l.contains("translation log sink failing")),
            "a warning for {sink}: {}",
            gw.lines.join("\n")
        );
    }
    // Read through natgate's own root: the tmpfs is in its mount namespace only.
    let file = format!("/proc/{}/root{d}/events.jsonl", gw.pid());
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.len() > 1000 && written.ends_with('\n'), "{written}");
    for line in written.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("a whole record");
    }
    let recorded = written.lines().count() as u64;
    assert!(recorded + sink_lost(&stats, "file", "no_space") <= sent * 2);
    assert!(gw.stop().unwrap().success());
}

/// Packets of `reason` the data plane lost outside the engines, from `ctl stats`.
fn dataplane_drops(stats: &serde_json::Value, reason: &str) -> Option<u64> {
    stats["dataplane_drops"]
        .as_array()?
        .iter()
        .find(|d| d["reason"] == reason)
        .and_then(|d| d["packets"].as_u64())
}

/// Packets the kernel drops on natgate's TUN queues are counted: natgate is stopped (SIGSTOP)
/// while a subscriber sends 3000 datagrams, more than the queue holds; after SIGCONT
/// `ctl stats` shows them as `tun_tx_dropped`, next to `tun_write_failed` and
/// `steer_queue_full`.
#[test]
fn packets_the_kernel_drops_on_the_tun_are_counted() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let text = config(&topo, "[dataplane]\nfast-path = \"off\"\n");
    let mut gw = Gateway::start(&topo, &text);
    let before = ctl_json(&topo, &["stats"]);
    assert_eq!(
        dataplane_drops(&before, "tun_tx_dropped"),
        Some(0),
        "{before}"
    );
    assert_eq!(dataplane_drops(&before, "tun_write_failed"), Some(0));
    assert_eq!(dataplane_drops(&before, "steer_queue_full"), Some(0));
    let to = SocketAddrV4::new(addr::WAN1, 7300);
    let _server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    gw.signal(libc::SIGSTOP);
    for _ in 0..3000 {
        let _ = client.send_to(b"queued", to);
    }
    gw.signal(libc::SIGCONT);
    let mut dropped = 0;
    for _ in 0..50 {
        let stats = ctl_json(&topo, &["stats"]);
        dropped = dataplane_drops(&stats, "tun_tx_dropped").unwrap();
        if dropped > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dropped > 0 && dropped < 3000, "{dropped}");
    assert!(gw.stop().unwrap().success());
}

/// `VmRSS` of process `pid`, in bytes.
fn resident_bytes(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// `max-memory` holds for the whole process: natgate measures what it holds itself once it is
/// set up, fits the engines into the rest (`max-sessions` derived), and with the session table
/// filled to that limit the daemon's resident memory is still within `max-memory`.
#[test]
fn max_memory_holds_for_the_whole_process_with_the_table_full() {
    if !is_root() {
        return;
    }
    const MAX_MEMORY: u64 = 48 << 20;
    let topo = topology();
    let text = config(&topo, &format!("[limits]\nmax-memory = {MAX_MEMORY}\n"));
    let mut gw = Gateway::start(&topo, &text);
    let line = gw
        .wait_for("natgate itself holds", Duration::from_secs(5))
        .expect("natgate says what it holds itself");
    let max_sessions: u64 = line
        .split("max_sessions=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("the derived max-sessions in {line:?}"));
    // Enough sessions that the table is most of what the limit holds. The derived size moves
    // with what natgate holds itself, which changes from build to build (debug builds: 166 000
    // sessions at 29 MB, 97 000 at 31 MB), so the bar is well below the sizes seen.
    assert!(max_sessions > 50_000, "{line}");
    // Each socket is one mapping with a session per remote endpoint (two addresses, 60 000
    // ports each): enough sockets to fill the table, sent in paced rounds (refreshing what
    // exists) until it is full.
    const PER_CLIENT: u64 = 120_000;
    let clients: Vec<_> = (0..max_sessions.div_ceil(PER_CLIENT))
        .map(|_| udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0)))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut sessions = 0;
    while sessions < max_sessions && std::time::Instant::now() < deadline {
        for c in &clients {
            for i in 0..PER_CLIENT {
                let wan = if i % 2 == 0 { addr::WAN1 } else { addr::WAN2 };
                let port = 1024 + i / 2;
                let _ = c.send_to(b"fill", SocketAddrV4::new(wan, port as u16));
                if i % 256 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        sessions = ctl_json(&topo, &["sessions", "--count"])["count"]
            .as_u64()
            .unwrap();
    }
    assert_eq!(sessions, max_sessions, "the table is full");
    let rss = resident_bytes(gw.pid());
    assert!(
        rss <= MAX_MEMORY,
        "resident {rss} bytes with {sessions} sessions, more than max-memory {MAX_MEMORY} \
         ({line})"
    );
    assert!(gw.stop().unwrap().success());
}
