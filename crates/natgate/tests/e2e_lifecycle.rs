//! Start, stop and failure of `natgate run`: a clean stop removes everything; a SIGKILLed run
//! leaves state that the next start finds and removes; bad set-ups fail fast with a message
//! that says what to do. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddrV4;
use std::process::Command;
use std::time::Duration;

use common::{
    Gateway, T, TempFile, config, has_link, is_root, natgate_bin, natgate_rules, topology,
};
use natgate::lab::probe::udp_echo;
use natgate::lab::topology::addr;
use natgate::platform::netlink::Netlink;

fn proxy_entries(topo: &natgate::lab::topology::Topology) -> usize {
    let out = Command::new("ip")
        .args(["-n", topo.gateway.name(), "neigh", "show", "proxy"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn assert_clean(topo: &natgate::lab::topology::Topology) {
    assert_eq!(natgate_rules(topo), Vec::<String>::new(), "rule left");
    assert!(!has_link(topo, "natgate-in"), "TUN left");
    assert!(!has_link(topo, "natgate-out"), "TUN left");
    assert_eq!(proxy_entries(topo), 0, "proxy neighbour entries left");
}

#[test]
fn sigterm_removes_everything() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &config(&topo, ""));
    assert_eq!(natgate_rules(&topo).len(), 1);
    assert_eq!(proxy_entries(&topo), 16);
    udp_echo(
        &topo.sub1,
        &topo.wan1,
        SocketAddrV4::new(addr::WAN1, 3478),
        T,
    )
    .unwrap();
    let st = gw.stop().expect("exits on SIGTERM");
    assert!(st.success(), "{st:?}\n{}", gw.lines.join("\n"));
    assert_clean(&topo);
    let fwd = natgate::platform::sysctl::get(&topo.gateway, "net/ipv4/ip_forward").unwrap();
    assert_eq!(fwd, "0", "ip_forward restored");
}

#[test]
fn sigkill_leaves_state_the_next_start_cleans() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let mut gw = Gateway::start(&topo, &config(&topo, ""));
    gw.kill();
    // What a killed run leaves: its rule and proxy entries (the TUNs die with the process).
    assert_eq!(
        natgate_rules(&topo).len(),
        1,
        "the killed run left its rule"
    );
    assert_eq!(proxy_entries(&topo), 16);
    let mut gw = Gateway::start(&topo, &config(&topo, ""));
    assert!(
        gw.lines.iter().any(|l| l.contains("earlier natgate")),
        "the start reports the clean-up:\n{}",
        gw.lines.join("\n")
    );
    assert_eq!(natgate_rules(&topo).len(), 1, "exactly one rule again");
    udp_echo(
        &topo.sub1,
        &topo.wan1,
        SocketAddrV4::new(addr::WAN1, 3478),
        T,
    )
    .expect("works after the clean-up");
    assert!(gw.stop().unwrap().success());
    assert_clean(&topo);
}

/// Runs `natgate run` to completion; (success, stderr).
fn run_to_exit(
    topo: &natgate::lab::topology::Topology,
    text: &str,
    prefix: &[&str],
) -> (bool, String) {
    let cfg = TempFile::new(&topo.suffix, text);
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(natgate_bin()));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(natgate_bin());
    }
    let out = cmd
        .arg("run")
        .arg("--config")
        .arg(&cfg.0)
        .arg("--netns")
        .arg(topo.gateway.name())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn fails_fast_with_what_to_do() {
    if !is_root() {
        return;
    }
    let topo = topology();
    // A missing interface.
    let text = config(&topo, "").replace(&topo.ifaces.lan0, "nosuch0");
    let (ok, err) = run_to_exit(&topo, &text, &[]);
    assert!(!ok);
    assert!(
        err.contains("\"nosuch0\"") && err.contains("does not exist"),
        "{err}"
    );
    // A pool address that is the outside interface's own address.
    let text = config(&topo, "").replace("198.51.100.0/28", "192.0.2.1");
    let (ok, err) = run_to_exit(&topo, &text, &[]);
    assert!(!ok);
    assert!(err.contains("outside-address = true"), "{err}");
    // An invalid config: the key and the line.
    let text = config(&topo, "[behavior]\nfiltering = \"sometimes\"\n");
    let (ok, err) = run_to_exit(&topo, &text, &[]);
    assert!(!ok);
    assert!(
        err.contains("line 12") && err.contains("sometimes"),
        "{err}"
    );
    // No CAP_NET_ADMIN (dropped with setpriv, when it is installed).
    if std::path::Path::new("/usr/bin/setpriv").exists() {
        let text = config(&topo, "");
        let drop = [
            "/usr/bin/setpriv",
            "--inh-caps=-net_admin",
            "--bounding-set=-net_admin",
        ];
        let (ok, err) = run_to_exit(&topo, &text, &drop);
        assert!(!ok);
        assert!(err.contains("CAP_NET_ADMIN"), "{err}");
    }
    // Nothing of natgate is left by any of these.
    std::thread::sleep(Duration::from_millis(50));
    let mut nl = Netlink::open_in(&topo.gateway).unwrap();
    assert!(!nl.link_exists("natgate-in").unwrap());
    drop(nl);
    assert_clean(&topo);
}
