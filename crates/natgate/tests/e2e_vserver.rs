//! A virtual web server end to end: two real HTTP servers of weight 1 and 2 behind
//! one virtual address, real requests split about 1:2, a third server added at run time with
//! `natgate ctl vserver add` taking its weight's share, one server drained and removed while a
//! long-lived connection to it keeps working, and a health check taking a dead server out.
//! Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::http::{HttpClient, HttpServer, get_once};
use common::{Gateway, T, config, ctl, ctl_json, is_root, topology};
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netlink::RouteV4;

const VIP: &str = "198.18.3.80:80/tcp";

const VSERVER: &str = r#"
[[virtual-server]]
address = "198.18.3.80"
port = 80
protocol = "tcp"
scheduler = "weighted-round-robin"

[virtual-server.health]
probe = { kind = "tcp-connect" }
interval = 1
timeout = 1
rise = 1
fall = 2

[[virtual-server.real-servers]]
address = "100.64.0.10"
port = 8080
weight = 1

[[virtual-server.real-servers]]
address = "100.64.0.11"
port = 8080
weight = 2
"#;

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 80), 80)
}

/// Which server answered `n` new connections from wan1: the answers of each of `names`, in
/// order; an answer from any other server fails the test.
fn tally(topo: &Topology, n: usize, names: &[&str]) -> Vec<usize> {
    let mut counts = vec![0; names.len()];
    for i in 0..n {
        let body = get_once(&topo.wan1, vip(), T).unwrap_or_else(|e| panic!("request {i}: {e}"));
        let name = body.split(' ').next();
        match names.iter().position(|&x| Some(x) == name) {
            Some(k) => counts[k] += 1,
            None => panic!("{body}"),
        }
    }
    counts
}

/// Which of "a" and "b" answered `n` new connections from wan1.
fn spread(topo: &Topology, n: usize) -> (usize, usize) {
    let c = tally(topo, n, &["a", "b"]);
    (c[0], c[1])
}

/// The real server rows of the virtual server, by target.
fn servers(topo: &Topology) -> Vec<serde_json::Value> {
    let l = ctl_json(topo, &["vservers"]);
    let v = &l["virtual_servers"][0];
    assert_eq!(v["address"], "198.18.3.80:80", "{l}");
    v["real_servers"].as_array().unwrap().clone()
}

fn server(topo: &Topology, target: &str) -> Option<serde_json::Value> {
    servers(topo).into_iter().find(|r| r["target"] == target)
}

/// The standard topology with the upstream routing 198.18.0.0/16 (the virtual addresses) to
/// the gateway.
fn routed_topology() -> Topology {
    let topo = topology();
    topo.netlink(&topo.upstream)
        .unwrap()
        .add_route_v4(&RouteV4::via(
            Ipv4Addr::new(198, 18, 0, 0),
            16,
            addr::GW_WAN,
        ))
        .unwrap();
    topo
}

#[test]
fn virtual_web_server_splits_drains_removes_and_health_checks() {
    if !is_root() {
        return;
    }
    let topo = routed_topology();
    let a = HttpServer::start(&topo.sub1, SocketAddrV4::new(addr::SUB1, 8080), "a");
    let b = HttpServer::start(&topo.sub2, SocketAddrV4::new(addr::SUB2, 8080), "b");
    let mut gw = Gateway::start(&topo, &config(&topo, VSERVER));
    let target = |name: &str| match name {
        "a" => "100.64.0.10:8080",
        _ => "100.64.0.11:8080",
    };

    // Weights 1:2 over 300 connections: smooth weighted round robin gives exactly 100:200 on
    // one engine; allow 10 either way.
    let (na, nb) = spread(&topo, 300);
    assert_eq!(na + nb, 300);
    assert!((90..=110).contains(&na), "a {na}, b {nb}");
    for (name, weight) in [("a", 1), ("b", 2)] {
        let r = server(&topo, target(name)).unwrap();
        assert_eq!(r["weight"], weight, "{r}");
        assert_eq!(
            (r["state"].as_str(), r["health"].as_str()),
            (Some("active"), Some("up"))
        );
        assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    }
    let (code, table, _) = ctl(&topo, &["vservers"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("100.64.0.11:8080") && table.contains("CONNECTIONS"),
        "{table}"
    );

    // A third real server added at run time, of weight 3, listening beside "a" on another port
    // (a distinct target). The add resets the rotation, so smooth weighted round robin gives
    // exactly 10:20:30 over 60 new connections on one engine; allow 3 either way for each.
    // Every connection it took is still counted: closed TCP sessions stay until their
    // transitory timeout (240 s), far beyond this test.
    const C: &str = "100.64.0.10:8081";
    let c = HttpServer::start(&topo.sub1, SocketAddrV4::new(addr::SUB1, 8081), "c");
    let added = ctl_json(&topo, &["vserver", "add", VIP, C, "--weight", "3"]);
    let row = added["virtual_servers"][0]["real_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == C)
        .cloned();
    assert!(
        row.is_some_and(|r| r["weight"] == 3 && r["state"] == "active" && r["connections"] == 0),
        "{added}"
    );
    let n = tally(&topo, 60, &["a", "b", "c"]);
    assert_eq!(n.iter().sum::<usize>(), 60);
    for (got, want) in n.iter().zip([10, 20, 30]) {
        assert!(got.abs_diff(want) <= 3, "a:b:c = {n:?}, want 10:20:30");
    }
    let r = server(&topo, C).unwrap();
    assert_eq!(
        (
            r["weight"].as_u64(),
            r["state"].as_str(),
            r["health"].as_str()
        ),
        (Some(3), Some("active"), Some("up")),
        "{r}"
    );
    assert_eq!(r["connections"].as_u64(), Some(n[2] as u64), "{r}");
    assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    let (code, table, _) = ctl(&topo, &["vservers"]);
    assert_eq!(code, 0);
    let line = table
        .lines()
        .find(|l| l.contains(C))
        .unwrap_or_else(|| panic!("{table}"));
    // ID, REAL SERVER, WEIGHT, STATE, HEALTH, CONNECTIONS, BYTES.
    let cols: Vec<&str> = line.split_whitespace().collect();
    let conns = n[2].to_string();
    assert_eq!(
        (cols.get(1), cols.get(2), cols.get(5)),
        (Some(&C), Some(&"3"), Some(&conns.as_str())),
        "{table}"
    );
    // Out again, so the rest splits between "a" and "b"; its closed connections still count,
    // so the removal needs --force.
    ctl_json(&topo, &["vserver", "remove", VIP, C, "--force"]);
    assert!(server(&topo, C).is_none());
    drop(c);

    // A long-lived connection; then its server is drained: new connections all go to the
    // other one, the open one keeps being answered.
    let mut long = HttpClient::connect(&topo.wan1, vip(), T).unwrap();
    let first = long.get().unwrap();
    let x = first.split(' ').next().unwrap().to_owned();
    let y = if x == "a" { "b" } else { "a" };
    let s = ctl_json(&topo, &["sessions", "--proto", "tcp"]);
    let rows = s["sessions"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["origin"]
            .as_str()
            .is_some_and(|o| o.starts_with("vserver 198.18.3.80:80 server "))),
        "{s}"
    );
    let drained = ctl_json(&topo, &["vserver", "drain", VIP, target(&x)]);
    let row = &drained["virtual_servers"][0]["real_servers"];
    assert!(
        row.as_array()
            .unwrap()
            .iter()
            .any(|r| r["target"] == target(&x) && r["state"] == "draining"),
        "{drained}"
    );
    let (na, nb) = spread(&topo, 30);
    assert_eq!(
        if y == "a" { na } else { nb },
        30,
        "drained {x} took new connections"
    );
    assert!(long.get().unwrap().starts_with(&x));

    // Removing it while the connection is open needs --force (closed connections may still
    // count until their sessions expire); then it is gone from the list and the open
    // connection still works.
    let open = server(&topo, target(&x)).unwrap()["connections"]
        .as_u64()
        .unwrap();
    assert!(open >= 1, "the long-lived connection counts");
    let (code, out, err) = ctl(&topo, &["vserver", "remove", VIP, target(&x)]);
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("--force"), "{out}{err}");
    ctl_json(&topo, &["vserver", "remove", VIP, target(&x), "--force"]);
    assert!(server(&topo, target(&x)).is_none());
    assert_eq!(servers(&topo).len(), 1);
    for _ in 0..3 {
        assert!(long.get().unwrap().starts_with(&x));
    }
    drop(long);

    // Back it comes (level with the other), then the other's listener dies: its health checks
    // fail twice, it is taken out, and every new connection goes to the live one.
    ctl_json(&topo, &["vserver", "add", VIP, target(&x), "--weight", "1"]);
    let (na, nb) = spread(&topo, 6);
    assert!(na > 0 && nb > 0, "both serve again: a {na}, b {nb}");
    let dead = if y == "a" { &a } else { &b };
    dead.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server(&topo, target(y)).unwrap();
        if r["health"] == "down" {
            assert_eq!(r["state"], "down", "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "{y} never went down: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (na, nb) = spread(&topo, 20);
    assert_eq!(if x == "a" { na } else { nb }, 20, "a {na}, b {nb}");
    assert!(
        gw.wait_for("real server health changed", T).is_some(),
        "the change is logged"
    );
}

#[test]
fn a_virtual_server_created_and_deleted_at_run_time() {
    if !is_root() {
        return;
    }
    let topo = routed_topology();
    let _a = HttpServer::start(&topo.sub1, SocketAddrV4::new(addr::SUB1, 8080), "a");
    let mut gw = Gateway::start(&topo, &config(&topo, ""));
    assert!(
        get_once(&topo.wan1, vip(), Duration::from_secs(1)).is_err(),
        "nothing there yet"
    );

    let spec = r#"address = "198.18.3.80"
port = 80
protocol = "tcp"
scheduler = "round-robin"
real-servers = [{ address = "100.64.0.10", port = 8080 }]"#;
    let created = ctl_json(&topo, &["vserver", "create", spec]);
    assert_eq!(
        created["virtual_servers"][0]["address"], "198.18.3.80:80",
        "{created}"
    );
    let body = get_once(&topo.wan1, vip(), T).expect("served once created");
    assert!(body.starts_with("a "), "{body}");
    // Written back with the rules, ready for the config file.
    let (code, toml, err) = ctl(&topo, &["rules", "--toml"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        toml.contains("[[virtual-server]]") && toml.contains("198.18.3.80"),
        "{toml}"
    );
    // A second one at the same address and port is refused, and changes nothing.
    let (code, _, err) = ctl(&topo, &["vserver", "create", spec]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");

    let (code, out, err) = ctl(&topo, &["vserver", "delete", VIP]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted 198.18.3.80:80/tcp"), "{out}");
    assert!(
        get_once(&topo.wan1, vip(), Duration::from_secs(1)).is_err(),
        "gone"
    );
    assert_eq!(
        ctl_json(&topo, &["vservers"])["virtual_servers"],
        serde_json::json!([])
    );
    let (code, _, err) = ctl(&topo, &["vserver", "delete", VIP]);
    assert_ne!(code, 0);
    assert!(err.contains("no virtual server"), "{err}");
    gw.stop();
}
