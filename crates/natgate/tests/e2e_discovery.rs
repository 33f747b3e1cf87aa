//! NAT behaviour discovery on the wire: `natgate lab stun` on wan1 (its two addresses),
//! `natgate lab probe` in sub1, natgate on the gateway with each configured behaviour; the
//! probe's verdict must be the configuration. And the `linux-masquerade` preset must look like
//! the kernel's own nftables `masquerade` on the same topology. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, config, is_root, natgate_bin, topology};
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netns::Netns;
use serde_json::Value;

/// Longest a probe may take (its waits are bounded by --timeout-ms and --tries).
const PROBE_LIMIT: Duration = Duration::from_secs(60);

/// A child process started in a namespace, stopped by PID when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions; the PID is our own child, not yet reaped.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_ns(ns: &Netns) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.path().display()));
    c.arg(natgate_bin());
    c
}

/// `natgate lab stun` on wan1's two addresses, for at most ten minutes.
fn stun_server(topo: &Topology) -> Proc {
    let child = in_ns(&topo.wan1)
        .args(["lab", "stun", "--lifetime", "600"])
        .args(["--address", &addr::WAN1.to_string()])
        .args(["--address", &addr::WAN1_ALT.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("natgate lab stun starts");
    // The sockets are bound within milliseconds; a probe before that would retry anyway.
    std::thread::sleep(Duration::from_millis(300));
    Proc(child)
}

/// `natgate lab probe --json` in sub1, with `extra` arguments; its report.
fn probe(topo: &Topology, extra: &[&str]) -> Value {
    let mut child = in_ns(&topo.sub1)
        .args([
            "lab",
            "probe",
            "--json",
            "--timeout-ms",
            "250",
            "--tries",
            "2",
        ])
        .args(["--server", &format!("{}:3478", addr::WAN1)])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("natgate lab probe starts");
    let deadline = Instant::now() + PROBE_LIMIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the probe ran longer than {PROBE_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the probe prints JSON")
}

/// The standard config with `lab = true` (top level, before the sections) and `extra`.
fn lab_config(topo: &Topology, extra: &str) -> String {
    format!("lab = true\n{}", config(topo, extra))
}

/// The verdicts a comparison looks at.
fn verdict(r: &Value) -> [Value; 4] {
    [
        r["mapping"].clone(),
        r["filtering"].clone(),
        r["hairpinning"].clone(),
        r["port_preservation"].clone(),
    ]
}

/// RFC 5780 via natgate: every mapping x filtering combination gives its own verdict, and
/// hairpinning (on, with the external source, and off) is seen where the mapping and
/// filtering let a probe through; one topology for all.
#[test]
fn rfc5780_probe_verdict_is_the_configured_behaviour() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _stun = stun_server(&topo);
    let names = [
        "endpoint-independent",
        "address-dependent",
        "address-and-port-dependent",
    ];
    for (i, mapping) in names.iter().enumerate() {
        for (j, filtering) in names.iter().enumerate() {
            // Hairpinning on and off where the probe can see it: under endpoint-independent
            // mapping or filtering. (Internal-source hairpinning cannot be seen from one host:
            // its kernel drops a packet that arrives with its own address as source.)
            let hairpinning = match (i, j) {
                (0, 1) | (2, 0) => "off",
                _ => "external-source",
            };
            let observable = i == 0 || j == 0;
            let cfg = lab_config(
                &topo,
                &format!(
                    "[behavior]\nmapping = \"{mapping}\"\nfiltering = \"{filtering}\"\n\
                     hairpinning = \"{hairpinning}\"\n"
                ),
            );
            let gw = Gateway::start(&topo, &cfg);
            let r = probe(&topo, &[]);
            drop(gw);
            let what = format!("{mapping} mapping, {filtering} filtering: {r:#}");
            assert_eq!(r["mapping"], *mapping, "{what}");
            assert_eq!(r["filtering"], *filtering, "{what}");
            if observable {
                assert_eq!(r["hairpinning"], hairpinning, "{what}");
            } else {
                assert_eq!(r["hairpinning"], Value::Null, "{what}");
            }
            assert_eq!(r["pooling"], "paired", "{what}");
            // The default preset (rfc6888-cgn) picks random ports.
            assert_ne!(r["port_preservation"], "always", "{what}");
        }
    }
}

/// The mapping lifetime the probe measures is the configured UDP timer, within 2 s.
#[test]
fn rfc5780_probe_measures_the_mapping_lifetime() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _stun = stun_server(&topo);
    let cfg = lab_config(&topo, "[behavior.timers]\nudp = 5\n");
    let _gw = Gateway::start(&topo, &cfg);
    let r = probe(&topo, &["--lifetime-max", "10", "--lifetime-step", "1"]);
    let alive = r["lifetime"]["alive_for"]
        .as_u64()
        .expect("alive for some time");
    let gone = r["lifetime"]["gone_after"]
        .as_u64()
        .expect("gone within 10 s");
    assert!(alive >= 4 && gone <= 7 && alive < gone, "{r:#}");
}

/// Ports as the allocator gives them: preserved ones are seen as preserved, and sequential
/// ones with a step of 7 as a constant port delta of +7.
#[test]
fn probe_sees_port_preservation_and_the_sequential_step() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _stun = stun_server(&topo);
    let cfg = lab_config(
        &topo,
        "[behavior]\nport-assignment = \"sequential\"\nsequential-step = 7\n",
    );
    let gw = Gateway::start(&topo, &cfg);
    let r = probe(&topo, &[]);
    drop(gw);
    assert_eq!(r["port_delta"]["kind"], "constant", "{r:#}");
    assert_eq!(r["port_delta"]["step"], 7, "{r:#}");
    assert_eq!(r["port_preservation"], "never", "{r:#}");
    let cfg = lab_config(&topo, "[behavior]\npreset = \"full-cone\"\n");
    let _gw = Gateway::start(&topo, &cfg);
    let r = probe(&topo, &[]);
    assert_eq!(r["port_preservation"], "always", "{r:#}");
    assert_eq!(r["port_parity"], true, "{r:#}");
}

/// RFC 7857 section 3: natgate's `linux-masquerade` preset (port overlapping) is classified as
/// the kernel's nftables `masquerade` is, on the same topology: endpoint-independent mapping,
/// address-and-port-dependent filtering, no hairpinning, ports preserved.
#[test]
fn rfc7857_linux_masquerade_preset_looks_like_the_kernel_masquerade() {
    if !is_root() {
        return;
    }
    let topo = topology();
    let _stun = stun_server(&topo);
    let cfg = lab_config(&topo, "[behavior]\npreset = \"linux-masquerade\"\n");
    let gw = Gateway::start(&topo, &cfg);
    let ours = probe(&topo, &[]);
    drop(gw);

    // The kernel's: forwarding on and one masquerade rule in the gateway namespace (which
    // goes with the namespace).
    natgate::platform::sysctl::set_ip_forward(&topo.gateway, true).unwrap();
    let rules = format!(
        "table ip natgate_e2e_masq {{\n chain post {{\n  type nat hook postrouting priority 100;\n  \
         oifname \"{}\" masquerade\n }}\n}}\n",
        topo.ifaces.wan0
    );
    let mut nft = Command::new("nsenter")
        .arg(format!("--net={}", topo.gateway.path().display()))
        .args(["nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft runs");
    {
        use std::io::Write;
        nft.stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .unwrap();
    }
    assert!(nft.wait().unwrap().success(), "nft took the ruleset");
    let kernel = probe(&topo, &[]);

    assert_eq!(kernel["mapping"], "endpoint-independent", "{kernel:#}");
    assert_eq!(
        kernel["filtering"], "address-and-port-dependent",
        "{kernel:#}"
    );
    assert_eq!(
        verdict(&ours),
        verdict(&kernel),
        "ours {ours:#}\nkernel {kernel:#}"
    );
}
