//! Warm restart end to end: natgate stopped with SIGTERM and started again keeps a UDP
//! mapping's external endpoint and an established TCP connection, with the gap in traffic
//! measured; a snapshot that does not fit is refused and natgate starts empty; `ctl save`
//! writes one while it runs.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, T, config, ctl, ctl_json, is_root, recv, topology, udp_socket};
use natgate::lab::topology::{Topology, addr};

fn config_with_snapshot(topo: &Topology, snapshot: &Path, pool: Option<Ipv4Addr>) -> String {
    let text = config(
        topo,
        &format!("[state]\nsnapshot = \"{}\"\n", snapshot.display()),
    );
    match pool {
        Some(a) => text.replace(
            &format!("{}/{}", addr::POOL_NET, addr::POOL_PREFIX),
            &format!("{a}/32"),
        ),
        None => text,
    }
}

/// Where `client`'s datagram arrives from at `server`, with the echo back checked.
fn seen(client: &std::net::UdpSocket, server: &std::net::UdpSocket) -> SocketAddrV4 {
    client
        .send_to(b"ping", SocketAddrV4::new(addr::WAN1, 3478))
        .unwrap();
    let (_, from) = recv(server, T).expect("the datagram went through");
    server.send_to(b"pong", from).unwrap();
    recv(client, T).expect("the answer came back");
    match from {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}

/// A probe that sends a datagram every millisecond from the inside and notes when each answer
/// comes back, until stopped: the longest silence is how long traffic stopped.
struct GapProbe {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Option<Duration>>>,
}

impl GapProbe {
    fn start(topo: &Topology) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let at = SocketAddrV4::new(addr::WAN1, 7007);
        let echo = udp_socket(&topo.wan1, at);
        echo.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let client = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        client
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let s = stop.clone();
        let echoer = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
            None
        });
        let s = stop.clone();
        let prober = std::thread::spawn(move || {
            // Bounded: a minute at most, whatever happens to the test.
            let end = Instant::now() + Duration::from_secs(60);
            let (mut last, mut longest) = (None::<Instant>, Duration::ZERO);
            let mut buf = [0u8; 64];
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                let _ = client.send_to(b"gap", at);
                if client.recv_from(&mut buf).is_ok() {
                    let now = Instant::now();
                    if let Some(l) = last {
                        longest = longest.max(now - l);
                    }
                    last = Some(now);
                }
            }
            last.map(|_| longest)
        });
        GapProbe {
            stop,
            threads: vec![echoer, prober],
        }
    }

    /// The longest time without an answer; `None` if none ever came.
    fn finish(self) -> Option<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .last()
            .flatten()
    }
}

#[test]
fn a_restart_keeps_the_udp_endpoint_and_the_tcp_connection() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("natgate.snapshot");
    let cfg = config_with_snapshot(&topo, &snapshot, None);
    let mut gw = Gateway::start(&topo, &cfg);

    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 40000));
    let before = seen(&client, &server);

    let web = SocketAddrV4::new(addr::WAN1, 8080);
    let listener = topo
        .wan1
        .run_in(|| TcpListener::bind(web))
        .unwrap()
        .unwrap();
    let mut c = topo
        .sub1
        .run_in(|| TcpStream::connect_timeout(&web.into(), T))
        .unwrap()
        .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    for sock in [&c, &s] {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    let mut buf = [0u8; 6];
    c.write_all(b"before").unwrap();
    s.read_exact(&mut buf).unwrap();

    let probe = GapProbe::start(&topo);
    std::thread::sleep(Duration::from_millis(300));
    let restart = Instant::now();
    gw.stop();
    assert!(
        snapshot.exists(),
        "saved on SIGTERM:\n{}",
        gw.lines.join("\n")
    );
    let saved = gw
        .lines
        .iter()
        .find(|l| l.contains("saved the snapshot"))
        .cloned()
        .unwrap_or_default();
    let mut gw = Gateway::start(&topo, &cfg);
    let restarted = restart.elapsed();
    let restored = gw
        .wait_for("warm restart: restored", Duration::from_secs(1))
        .expect("restored");
    assert!(!snapshot.exists(), "a snapshot is used once");
    std::thread::sleep(Duration::from_millis(300));
    let gap = probe.finish().expect("the probe's flow was answered");

    // The same external endpoint for the UDP mapping, and the TCP connection goes on both
    // ways without a new handshake.
    assert_eq!(seen(&client, &server), before);
    c.write_all(b"after!").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after!");
    s.write_all(b"back!!").unwrap();
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"back!!");
    let tcp = ctl_json(&topo, &["sessions", "--proto", "tcp"]);
    assert_eq!(tcp["sessions"][0]["tcp_state"], "established", "{tcp}");
    eprintln!(
        "warm restart: traffic stopped for {} ms (stop to running again: {} ms)\n  {saved}\n  {restored}",
        gap.as_millis(),
        restarted.as_millis()
    );
    gw.stop();
}

#[test]
fn a_snapshot_that_does_not_fit_is_refused_and_natgate_starts_empty() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("natgate.snapshot");
    let refused = dir.path().join("natgate.snapshot.refused");
    let mut gw = Gateway::start(&topo, &config_with_snapshot(&topo, &snapshot, None));
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 40000));
    let used = *seen(&client, &server).ip();
    // `ctl save` while running.
    let (code, out, err) = ctl(&topo, &["save"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("saved 1 sessions"), "{out}");
    assert!(snapshot.exists());
    // The file the state goes to on stop is fixed at start.
    gw.rewrite_config(&config_with_snapshot(
        &topo,
        &dir.path().join("elsewhere"),
        None,
    ));
    let (code, out, err) = ctl(&topo, &["reload"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("state cannot change while running"), "{err}");
    gw.stop();

    // Another pool: the mapping's address is not one natgate may hand out now.
    let other = if used == Ipv4Addr::new(198, 51, 100, 14) {
        Ipv4Addr::new(198, 51, 100, 13)
    } else {
        Ipv4Addr::new(198, 51, 100, 14)
    };
    let mut gw = Gateway::start(&topo, &config_with_snapshot(&topo, &snapshot, Some(other)));
    let why = gw
        .wait_for("snapshot refused", Duration::from_secs(1))
        .expect("refused");
    assert!(why.contains(&used.to_string()), "names the record: {why}");
    assert!(
        refused.exists() && !snapshot.exists(),
        "kept aside for inspection"
    );
    assert_eq!(ctl_json(&topo, &["status"])["sessions"], 0);
    assert_eq!(*seen(&client, &server).ip(), other, "and it translates");
    gw.stop();

    // Not a snapshot at all.
    std::fs::write(&snapshot, b"not a snapshot").unwrap();
    let mut gw = Gateway::start(&topo, &config_with_snapshot(&topo, &snapshot, None));
    let why = gw
        .wait_for("snapshot refused", Duration::from_secs(1))
        .expect("refused");
    assert!(why.contains("not a natgate snapshot"), "{why}");
    gw.stop();
}
