//! The control socket, metrics and event log of a running `natgate run`, and reload under
//! traffic. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Gateway, T, config, ctl, ctl_json, in_pool, is_root, recv, topology, udp_socket, v4};
use natgate::lab::topology::addr;

#[test]
fn ctl_shows_sessions_stats_pools_and_flushes() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _gw = Gateway::start(&topo, &config(&topo, ""));
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    client.send_to(b"x", server.local_addr().unwrap()).unwrap();
    let (_, ext) = recv(&server, T).unwrap();

    let status = ctl_json(&topo, &["status"]);
    assert_eq!(status["workers"], 1);
    assert_eq!(status["sessions"], 1, "{status}");
    let sessions = ctl_json(&topo, &["sessions", "--subscriber", "100.64.0.10"]);
    assert_eq!(sessions["count"], 1, "{sessions}");
    assert_eq!(sessions["sessions"][0]["external"], ext.to_string());
    assert_eq!(sessions["sessions"][0]["remote"], "203.0.113.10:3478");
    let none = ctl_json(&topo, &["sessions", "--subscriber", "100.64.0.11"]);
    assert_eq!(none["count"], 0);
    let stats = ctl_json(&topo, &["stats"]);
    assert_eq!(stats["outbound"]["packets"], 1, "{stats}");
    let pools = ctl_json(&topo, &["pools"]);
    let used: u64 = pools["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["in_use"]["udp"].as_u64().unwrap())
        .sum();
    assert_eq!(used, 1, "{pools}");
    // Human tables too.
    let (code, out, _) = ctl(&topo, &["sessions"]);
    assert_eq!(code, 0);
    assert!(out.contains(&ext.to_string()), "{out}");
    let (code, _, _) = ctl(&topo, &["drops", "--all"]);
    assert_eq!(code, 0);
    let flushed = ctl_json(&topo, &["flush"]);
    assert_eq!(flushed["sessions"], 1);
    assert_eq!(ctl_json(&topo, &["status"])["sessions"], 0);
}

#[test]
fn reload_under_traffic_keeps_sessions_and_a_bad_config_changes_nothing() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let gw = Gateway::start(&topo, &config(&topo, ""));
    let server = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, 3478));
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let dst = server.local_addr().unwrap();
    client.send_to(b"first", dst).unwrap();
    let (_, ext) = recv(&server, T).unwrap();
    // Traffic in the background while we reload: one datagram every 10 ms, at most 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (s2, sent2) = (stop.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        for _ in 0..300 {
            if s2.load(Ordering::Relaxed) {
                break;
            }
            client.send_to(b"more", dst).unwrap();
            sent2.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
        client
    });
    let good = config(&topo, "[behavior.timers]\nudp = 600\n");
    gw.rewrite_config(&good);
    let r = ctl_json(&topo, &["reload"]);
    assert_eq!(r["config_path"], gw.config_path().display().to_string());
    let sessions = ctl_json(&topo, &["sessions"]);
    assert_eq!(sessions["count"], 1, "session kept: {sessions}");
    assert!(
        sessions["sessions"][0]["expires_in_secs"].as_u64().unwrap() > 300,
        "new UDP timer applies: {sessions}"
    );
    // A config the RFCs forbid: refused, with the key and line.
    let bad = config(&topo, "[behavior.timers]\nudp = 30\n");
    gw.rewrite_config(&bad);
    let (code, out, err) = ctl(&topo, &["reload"]);
    assert_ne!(code, 0);
    let msg = format!("{out}{err}");
    assert!(msg.contains("udp") && msg.contains("line 12"), "{msg}");
    // A setting that needs a restart: refused by name.
    let restart = config(&topo, "[behavior]\nfiltering = \"address-dependent\"\n");
    gw.rewrite_config(&restart);
    let (code, out, err) = ctl(&topo, &["reload"]);
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("filtering"), "{out}{err}");
    // The reloads can take less time than a dozen datagrams: let the traffic run on until at
    // least 30 were sent (at most the sender's own 3 s), so the count below means something.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while sent.load(Ordering::Relaxed) < 30 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _client = sender.join().unwrap();
    // Every datagram, before, during and after, came from the same external endpoint.
    let mut n = 0;
    while let Some((_, from)) = recv(&server, Duration::from_millis(200)) {
        assert_eq!(from, ext);
        n += 1;
    }
    assert!(n > 10, "traffic flowed during the reloads ({n} datagrams)");
    let sessions = ctl_json(&topo, &["sessions"]);
    assert_eq!(sessions["count"], 1);
    assert!(sessions["sessions"][0]["expires_in_secs"].as_u64().unwrap() > 300);
}

#[test]
fn metrics_endpoint_and_event_log() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let events = std::env::temp_dir().join(format!("natgate-e2e-{}.events", topo.suffix));
    let _ = std::fs::remove_file(&events);
    let extra = format!(
        "[metrics]\nlisten = \"127.0.0.1:9120\"\n\n[log.file]\npath = \"{}\"\n",
        events.display()
    );
    let mut gw = Gateway::start(&topo, &config(&topo, &extra));
    let seen = natgate::lab::probe::udp_echo(
        &topo.sub1,
        &topo.wan1,
        SocketAddrV4::new(addr::WAN1, 3478),
        T,
    )
    .unwrap();
    assert!(in_pool(*v4(seen).ip()));
    // The endpoint listens inside the gateway namespace.
    let body = topo
        .gateway
        .run_in(|| {
            let mut s = TcpStream::connect("127.0.0.1:9120")?;
            s.set_read_timeout(Some(T))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            Ok::<_, std::io::Error>(b)
        })
        .unwrap()
        .unwrap();
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(
        body.contains("natgate_packets_total{direction=\"outbound\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("natgate_sessions{protocol=\"udp\"} 1"),
        "{body}"
    );
    assert!(gw.stop().unwrap().success());
    let log = std::fs::read_to_string(&events).unwrap();
    let _ = std::fs::remove_file(&events);
    assert!(log.contains("\"mapping-created\""), "{log}");
    assert!(log.contains("\"session-created\""), "{log}");
    assert!(log.contains(&v4(seen).to_string()), "{log}");
}
