//! natgate under its systemd unit (`packaging/natgate.service`): `systemd-analyze verify`
//! accepts the unit without a warning (where systemd-analyze is installed), and natgate runs
//! with exactly the unit's capabilities inside the gateway namespace, translating through the
//! in-kernel fast path and cleaning up at SIGTERM. The second test needs
//! root (namespaces; setpriv drops to the unit's set); both skip where they cannot run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::Command;

use common::{Gateway, T, ctl_json, is_root, natgate_rules, recv, topology, udp_socket};
use natgate::lab::topology::addr;

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packaging/natgate.service")
}

/// The values of `key=` in the unit, space-separated words, over every line that sets it.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

/// A capability's bit in `/proc/PID/status`'s masks.
fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("add {other}'s bit to this test"),
    }
}

#[test]
fn systemd_analyze_verifies_the_unit_without_a_warning() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    // The unit names the installed binary; verify checks that it is executable, so point it at
    // the one just built.
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("natgate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/sbin/natgate", env!("CARGO_BIN_EXE_natgate")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    // verify exits 0 even for unknown keys and bad values (it ignores them, as systemd would):
    // any message is a mistake in the unit.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.is_empty(), "{said}");
    // systemd's own exposure score (0 best, 10 worst); the hardening above gives 2.3.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn runs_with_only_the_units_capabilities() {
    if !is_root() {
        return;
    }
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let caps = unit_values(&unit, "CapabilityBoundingSet");
    assert!(!caps.is_empty());
    // Root, as the unit runs it: the bounding set is what it gets.
    assert!(unit_values(&unit, "User").is_empty() && unit_values(&unit, "DynamicUser").is_empty());
    // setpriv's names: `net_admin` for CAP_NET_ADMIN.
    let names: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let set = format!("-all,{}", names.join(","));
    let wrapper = [
        "setpriv",
        "--no-new-privs",
        "--inh-caps=-all",
        &format!("--bounding-set={set}"),
    ];
    let topo = topology();
    let text = common::config(&topo, "[dataplane]\nfast-path = \"tc\"\n");
    let mut gw = Gateway::spawn_inside_under(&topo, &text, &wrapper);
    gw.wait_for("natgate running", T * 5)
        .unwrap_or_else(|| panic!("natgate did not start:\n{}", gw.lines.join("\n")));
    assert!(
        gw.lines.iter().any(|l| l.contains("in-kernel fast path")),
        "{}",
        gw.lines.join("\n")
    );

    // The process holds what the unit gives it and nothing else.
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .trim()
            .to_owned()
    };
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    assert_eq!(eff, want, "effective capabilities {eff:#x}");

    // It translates, and the fast path carries the established flow.
    let to = SocketAddrV4::new(addr::WAN1, 4000);
    let server = udp_socket(&topo.wan1, to);
    let client = udp_socket(&topo.sub1, SocketAddrV4::new(addr::SUB1, 0));
    for _ in 0..20 {
        client.send_to(b"ping", to).unwrap();
        let (_, seen) = recv(&server, T).expect("through the gateway");
        assert!(common::in_pool(*common::v4(seen).ip()), "{seen}");
        server.send_to(b"pong", seen).unwrap();
        recv(&client, T).expect("the reply");
    }
    let program = ctl_json(&topo, &["stats"])["fast_path"]["program"].clone();
    assert!(
        program["forwarded_out"].as_u64().unwrap() > 0,
        "the fast path carried nothing: {program}"
    );

    // SIGTERM: it removes its plumbing with the same capabilities.
    assert!(gw.stop().unwrap().success(), "{}", gw.lines.join("\n"));
    assert_eq!(natgate_rules(&topo), Vec::<String>::new());
}
