//! Shared by the end-to-end tests: a standard topology with `natgate run` started as a child
//! process in its gateway namespace, stopped by PID (SIGTERM, then SIGKILL) in a guard.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, dead_code)]

pub mod capture;
pub mod http;
pub mod icmp;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use natgate::lab::topology::{Topology, TopologyOptions, addr};
use natgate::platform::netlink::Netlink;
use natgate::platform::netns::Netns;

/// Per-exchange timeout.
pub const T: Duration = Duration::from_secs(3);

/// How long the gateway may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

#[allow(clippy::print_stderr)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIP: needs root (network namespaces, TUN, netlink)");
    }
    root
}

/// The config for the standard topology: pool 198.51.100.0/28, a control socket of its own
/// ([`control_socket`]), `extra` appended verbatim (e.g. a `[behavior]` section).
pub fn config(topo: &Topology, extra: &str) -> String {
    format!(
        "[interfaces]\ninside = \"{}\"\noutside = \"{}\"\n\n[pool]\naddresses = [\"{}/{}\"]\n\n\
         [control]\nsocket = \"{}\"\n\n{extra}\n",
        topo.ifaces.lan0,
        topo.ifaces.wan0,
        addr::POOL_NET,
        addr::POOL_PREFIX,
        control_socket(topo).display()
    )
}

/// The control socket of the gateway of `topo`.
pub fn control_socket(topo: &Topology) -> PathBuf {
    std::env::temp_dir().join(format!("natgate-e2e-{}.sock", topo.suffix))
}

/// A config file that is removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, text: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "natgate-e2e-{tag}-{}-{}.toml",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (text.len() as u128)
        ));
        std::fs::write(&p, text).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A `natgate run` child process; dropping it stops it by PID (SIGTERM, then SIGKILL).
pub struct Gateway {
    pub child: Option<Child>,
    pub log: mpsc::Receiver<String>,
    pub lines: Vec<String>,
    _config: TempFile,
}

/// `config_text` with the data path the suite runs under: `[dataplane] fast-path` from
/// `NATGATE_TEST_FAST_PATH` (`auto`, `tc` or `off`), unless the test chose one itself. CI runs
/// the end-to-end tests once with the default (the fast path) and once with `off`.
pub fn with_data_path(config_text: &str) -> String {
    match std::env::var("NATGATE_TEST_FAST_PATH") {
        Ok(mode) if !config_text.contains("[dataplane]") => {
            format!("{config_text}\n[dataplane]\nfast-path = \"{mode}\"\n")
        }
        _ => config_text.to_owned(),
    }
}

pub fn natgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_natgate")
}

impl Gateway {
    /// Starts natgate in the topology's gateway namespace and waits until it runs.
    pub fn start(topo: &Topology, config_text: &str) -> Self {
        let mut g = Self::spawn(topo, config_text);
        g.wait_for("natgate running", START_TIMEOUT)
            .unwrap_or_else(|| panic!("natgate did not start:\n{}", g.lines.join("\n")));
        g
    }

    /// Starts natgate without waiting.
    pub fn spawn(topo: &Topology, config_text: &str) -> Self {
        Self::spawn_under(topo, config_text, &[])
    }

    /// Starts natgate without waiting, as the last arguments of `wrapper` (a command that
    /// ends by exec'ing them, so the child's PID is natgate's); no wrapper if empty.
    pub fn spawn_under(topo: &Topology, config_text: &str, wrapper: &[&str]) -> Self {
        Self::spawn_with(topo, config_text, wrapper, true)
    }

    /// Starts natgate without waiting, as a service manager would: already inside the gateway
    /// namespace (entered by `nsenter` before `wrapper`) instead of entering it with
    /// `--netns`, which needs CAP_SYS_ADMIN.
    pub fn spawn_inside_under(topo: &Topology, config_text: &str, wrapper: &[&str]) -> Self {
        let net = format!("--net={}", topo.gateway.path().display());
        let mut w = vec!["nsenter", net.as_str()];
        w.extend_from_slice(wrapper);
        Self::spawn_with(topo, config_text, &w, false)
    }

    fn spawn_with(topo: &Topology, config_text: &str, wrapper: &[&str], enter: bool) -> Self {
        let cfg = TempFile::new(&topo.suffix, &with_data_path(config_text));
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(natgate_bin());
                c
            }
            None => Command::new(natgate_bin()),
        };
        cmd.arg("run").arg("--config").arg(&cfg.0);
        if enter {
            cmd.arg("--netns").arg(topo.gateway.name());
        }
        let mut child = cmd
            .env("NATGATE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Gateway {
            child: Some(child),
            log: rx,
            lines: Vec::new(),
            _config: cfg,
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.lines.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.log.recv_timeout(left) {
                Ok(l) => {
                    self.lines.push(l.clone());
                    if l.contains(needle) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The config file it was started with (rewrite it, then `ctl reload`).
    /// Replaces the config file (for `ctl reload`), with the suite's data path as at start.
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.config_path(), with_data_path(text)).unwrap();
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self._config.0
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// Sends `sig` to the child by PID.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill with a PID we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for the child to exit (up to `timeout`); its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait; the exit status. Collects the remaining log.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let st = self.wait_exit(Duration::from_secs(10));
        while let Ok(l) = self.log.recv_timeout(Duration::from_millis(200)) {
            self.lines.push(l);
        }
        st
    }

    /// SIGKILL, reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                self.kill();
            }
        }
    }
}

/// Binds a socket in `ns` with `bind`, waiting out a short `AddrInUse`.
///
/// A test that binds a fixed port twice can find it still taken after closing the first socket:
/// when a test running beside it spawns a process in that moment, the child holds a copy of
/// every descriptor until it execs, and so keeps the closed socket's port bound for a few
/// milliseconds.
pub fn bind_in<S: Send>(ns: &Netns, bind: impl Fn() -> std::io::Result<S> + Sync) -> S {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match ns.run_in(&bind).unwrap() {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.unwrap(),
        }
    }
}

/// A UDP socket bound in `ns` (to `bind`), with a read timeout.
pub fn udp_socket(ns: &Netns, bind: SocketAddrV4) -> UdpSocket {
    let s = bind_in(ns, || UdpSocket::bind(bind));
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Receives one datagram (its payload and source), or `None` after `timeout`.
pub fn recv(sock: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// Whether `a` is an address of the external pool.
pub fn in_pool(a: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - u32::from(addr::POOL_PREFIX));
    u32::from(a) & mask == u32::from(addr::POOL_NET)
}

pub fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(v) => panic!("unexpected IPv6 {v}"),
    }
}

/// A standard topology with default options.
pub fn topology() -> Topology {
    Topology::build(&TopologyOptions::default()).unwrap()
}

/// The gateway namespace's rules at natgate's priorities (the inside rule's and, on a home
/// gateway, the four below it), read over netlink.
pub fn natgate_rules(topo: &Topology) -> Vec<String> {
    let mut nl = Netlink::open_in(&topo.gateway).unwrap();
    let prio = natgate::config::DEFAULT_RULE_PRIORITY;
    nl.rules_v4()
        .unwrap()
        .into_iter()
        .filter(|r| (prio - 4..=prio).contains(&r.priority))
        .map(|r| format!("{r:?}"))
        .collect()
}

/// Whether the gateway namespace has a link named `name`.
pub fn has_link(topo: &Topology, name: &str) -> bool {
    let mut nl = Netlink::open_in(&topo.gateway).unwrap();
    nl.link_exists(name).unwrap()
}

/// Runs `natgate ctl --socket SOCK ARGS...`; (exit code, stdout, stderr).
pub fn ctl(topo: &Topology, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(natgate_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(control_socket(topo))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `natgate ctl --json ARGS...` parsed.
pub fn ctl_json(topo: &Topology, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let (code, out, err) = ctl(topo, &a);
    assert_eq!(code, 0, "ctl {args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?} JSON: {e}: {out}"))
}
