//! Carrier-grade NAT end to end through `natgate run`: port-block allocation with a
//! per-subscriber session quota, the IPFIX stream decoded by an independent parser
//! (`netflow_parser`), the syslog lines parsed, and `ctl whois` answering from live state, from
//! the deterministic formula and from the block log. Needs root; skips otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Gateway, config, ctl, ctl_json, in_pool, is_root, recv, topology, udp_socket};
use natgate::lab::topology::{Topology, addr};
use natgate::platform::netns::Netns;
use netflow_parser::{NetflowPacket, NetflowParser};
use serde_json::Value;

/// Flows the first subscriber opens.
const FLOWS: u64 = 10_000;
/// Its UDP session quota.
const QUOTA: u64 = 1_000;
/// Ports per block.
const BLOCK: u16 = 512;
/// The echo server's port on wan1.
const ECHO: u16 = 7000;

/// A UDP socket on loopback in the gateway's namespace that keeps what it receives on a thread
/// of its own (a burst of log datagrams must not overflow the socket buffer); bounded in count,
/// stopped and joined on drop.
struct Collector {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(ns: &Netns) -> Self {
        let sock = ns
            .run_in(|| UdpSocket::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap();
        let size: libc::c_int = 8 << 20;
        // SAFETY: a valid socket and a c_int option value of the size given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let mut v = g.lock().unwrap();
                    if v.len() < 200_000 {
                        v.push(buf[..n].to_vec());
                    }
                }
            }
        });
        Collector {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn datagrams(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file removed on drop, even when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A UDP server on wan1 that answers every datagram with the text of its source address, so a
/// client learns its external endpoint. Bounded by a stop flag (set on drop) and a count.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(topo: &Topology) -> Self {
        let sock = udp_socket(&topo.wan1, SocketAddrV4::new(addr::WAN1, ECHO));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            for _ in 0..1_000_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok((_, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(from.to_string().as_bytes(), from);
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One exchange with the echo server (one retransmission allowed): the external endpoint the
/// server saw, or `None`.
fn exchange(sock: &UdpSocket) -> Option<SocketAddrV4> {
    let echo = SocketAddrV4::new(addr::WAN1, ECHO);
    for _ in 0..2 {
        sock.send_to(b"hello", echo).unwrap();
        if let Some((p, from)) = recv(sock, Duration::from_secs(1))
            && from == SocketAddr::V4(echo)
        {
            return String::from_utf8(p).ok()?.parse().ok();
        }
    }
    None
}

fn drops(topo: &Topology, reason: &str) -> u64 {
    let d = ctl_json(topo, &["drops", "--all"]);
    d["drops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == reason)
        .map_or(0, |r| r["packets"].as_u64().unwrap())
}

fn whois(topo: &Topology, a: Ipv4Addr, port: u16, at: Option<u64>) -> Vec<Value> {
    let (a, p) = (a.to_string(), port.to_string());
    let mut args = vec!["whois", a.as_str(), p.as_str()];
    let at = at.map(|s| s.to_string());
    if let Some(at) = &at {
        args.extend(["--at", at.as_str()]);
    }
    ctl_json(topo, &args)["answers"].as_array().unwrap().clone()
}

/// The block (of `BLOCK` ports from 1024) that `port` is in.
fn block_of(port: u16) -> (u16, u16) {
    let first = 1024 + (port - 1024) / BLOCK * BLOCK;
    (first, first + BLOCK - 1)
}

/// A decoded value as text (addresses, numbers, enum names), as in tests/logsink_ipfix.rs.
fn leaf(v: &Value) -> String {
    match v {
        Value::Object(o) if o.len() == 1 => o.values().next().map(leaf).unwrap_or_default(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every data record of every message, as (template id, element name -> value).
fn ipfix_records(messages: &[Vec<u8>]) -> Vec<(u64, BTreeMap<String, String>)> {
    let mut parser = NetflowParser::default();
    let mut out = Vec::new();
    for m in messages {
        let res = parser.parse_bytes(m);
        assert!(res.error.is_none(), "parser error: {:?}", res.error);
        for pkt in &res.packets {
            assert!(matches!(pkt, NetflowPacket::IPFix(_)), "not IPFIX");
            let v = serde_json::to_value(pkt).unwrap();
            for set in v["IPFix"]["flowsets"].as_array().unwrap() {
                let id = set["header"]["header_id"].as_u64().unwrap();
                let Some(recs) = set["body"]["Data"]["fields"].as_array() else {
                    continue;
                };
                for rec in recs {
                    let fields = rec
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|pair| (leaf(&pair[0]), leaf(&pair[1])))
                        .collect();
                    out.push((id, fields));
                }
            }
        }
    }
    out
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP PROCID MSGID [SD-ID PARAMS] MSG`.
#[derive(Debug)]
struct Syslog {
    pri: u16,
    procid: String,
    msgid: String,
    params: BTreeMap<String, String>,
}

fn parse_syslog(line: &str) -> Syslog {
    let rest = line.strip_prefix('<').expect("PRI");
    let (pri, rest) = rest.split_once(">1 ").expect("VERSION 1");
    let mut head = rest.splitn(6, ' ');
    let ts = head.next().unwrap();
    // 2026-11-22T16:14:30.123Z
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T",
        "timestamp {ts}"
    );
    let _host = head.next().unwrap();
    assert_eq!(head.next(), Some("natgate"), "{line}");
    let procid = head.next().unwrap().to_owned();
    let msgid = head.next().unwrap().to_owned();
    let sd = head.next().unwrap();
    let sd = sd.strip_prefix("[nat@32473").expect("SD-ID");
    let (params_text, _msg) = sd.split_once("] ").expect("end of SD");
    let mut params = BTreeMap::new();
    for p in params_text.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').expect("PARAM");
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .expect("quoted");
        params.insert(k.to_owned(), v.to_owned());
    }
    Syslog {
        pri: pri.parse().expect("PRI number"),
        procid,
        msgid,
        params,
    }
}

/// Sends one datagram to each of `dsts`, about 10 per millisecond. With `IP_RECVERR` a send
/// may report a queued ICMP error instead of sending; it is then sent again.
fn send_paced(sock: &UdpSocket, dsts: impl Iterator<Item = SocketAddrV4>) {
    for (i, d) in dsts.enumerate() {
        let mut reported = 0;
        loop {
            match sock.send_to(b"flow", d) {
                Ok(_) => break,
                // A queued ICMP error reported by this send; the next one sends.
                Err(e)
                    if reported < 100
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EHOSTUNREACH | libc::ECONNREFUSED)
                        ) =>
                {
                    reported += 1;
                }
                Err(e) => panic!("send to {d}: {e}"),
            }
        }
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Asks the kernel to queue ICMP errors for this unconnected socket (`IP_RECVERR`), with room
/// for thousands of them.
fn queue_icmp_errors(sock: &UdpSocket) {
    let one: libc::c_int = 1;
    let room: libc::c_int = 32 << 20;
    for (level, name, v) in [
        (libc::IPPROTO_IP, libc::IP_RECVERR, &one),
        (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &room),
    ] {
        // SAFETY: a valid socket and a c_int option value of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "setsockopt {name}");
    }
}

/// Drains the socket's error queue: the destinations of datagrams answered with ICMP host
/// unreachable (type 3, code 1).
fn host_unreachables(sock: &UdpSocket) -> Vec<SocketAddrV4> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        // SAFETY: an all-zero sockaddr_in is valid.
        let mut name: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut data = [0u8; 64];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u8; 256];
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len();
        // SAFETY: msg points at buffers of the lengths it gives.
        let n = unsafe {
            libc::recvmsg(
                sock.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            break;
        }
        let dst = SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
            u16::from_be(name.sin_port),
        );
        // SAFETY: the kernel filled `control` with msg_controllen bytes of cmsgs.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: c points at a complete cmsg header inside `control`.
            let h = unsafe { &*c };
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_RECVERR {
                // SAFETY: an IP_RECVERR cmsg carries a sock_extended_err (maybe unaligned).
                let ee: libc::sock_extended_err =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast()) };
                if ee.ee_origin == libc::SO_EE_ORIGIN_ICMP && ee.ee_type == 3 && ee.ee_code == 1 {
                    out.push(dst);
                }
            }
            // SAFETY: msg and c are the header and a cmsg of it.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
    }
    out
}

/// The remote endpoints of `subscriber`'s live sessions.
fn sessions_of(topo: &Topology, subscriber: &str) -> std::collections::HashSet<SocketAddrV4> {
    let s = ctl_json(topo, &["sessions", "--subscriber", subscriber]);
    s["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["remote"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Polls `f` every 100 ms until it returns `Some`, up to `timeout`.
fn poll<R>(timeout: Duration, mut f: impl FnMut() -> Option<R>) -> Option<R> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return Some(r);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn port_blocks_quota_logs_and_whois() {
    if !is_root() {
        return;
    }
    let started = Instant::now();
    let topo = topology();
    let ipfix = Collector::start(&topo.gateway);
    let syslog = Collector::start(&topo.gateway);
    let blocks =
        RemoveOnDrop(std::env::temp_dir().join(format!("natgate-e2e-{}.blocks", topo.suffix)));
    let _ = std::fs::remove_file(&blocks.0);
    let extra = format!(
        "[tun]\nqueues = 2\n\n[behavior.timers]\nudp = 10\nport-hold-down = 1\n\n\
         [limits]\nanswer-rate = 0\nglobal-answer-rate = 0\n\n\
         [limits.subscriber]\nmax-udp-sessions = {QUOTA}\nmax-subscribers = 16\n\n\
         [allocation]\nmode = \"port-block\"\nblock-size = {BLOCK}\nmax-blocks-per-subscriber = 4\n\n\
         [log.syslog]\nudp = \"{}\"\n\n[log.ipfix]\ncollector = \"{}\"\ntemplate-refresh = 1\n\n\
         [log.block-log]\npath = \"{}\"\n",
        syslog.addr,
        ipfix.addr,
        blocks.0.display()
    );
    let gw = Gateway::start(&topo, &format!("lab = true\n{}", config(&topo, &extra)));
    let _echo = Echo::start(&topo);

    // Flow 1 of the first subscriber: learn its external endpoint.
    let sub1 = udp_socket(&topo.sub1, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let ext1 = exchange(&sub1).expect("first subscriber's first flow");
    assert!(in_pool(*ext1.ip()), "{ext1}");
    queue_icmp_errors(&sub1);

    // The second subscriber exchanges datagrams all through the first one's flood.
    let sub2 = udp_socket(&topo.sub2, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let flooding = Arc::new(AtomicBool::new(true));
    let f2 = flooding.clone();
    let second = std::thread::spawn(move || {
        let (mut ok, mut tried, mut ext) = (0, 0, None);
        // At least 20 exchanges, and on until the flood is over; at most 300.
        while tried < 300 && (tried < 20 || f2.load(Ordering::Relaxed)) {
            tried += 1;
            if let Some(e) = exchange(&sub2) {
                ok += 1;
                ext = Some(e);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (ok, tried, ext)
    });

    // Flows 2..=1 000 (distinct destination ports on wan2) fill the quota. A datagram the kernel
    // drops on its way to the gateway (a TUN queue overflows while a worker waits for a CPU) is
    // sent again, so that exactly these flows hold the quota before any other is tried.
    let flow = |i: u64| SocketAddrV4::new(addr::WAN2, 20_000 + i as u16);
    send_paced(&sub1, (1..QUOTA).map(flow));
    for _ in 0..5 {
        let admitted = poll(Duration::from_secs(3), || {
            let s = sessions_of(&topo, "100.64.0.10");
            (s.len() as u64 == QUOTA).then_some(s)
        });
        if admitted.is_some() {
            break;
        }
        let have = sessions_of(&topo, "100.64.0.10");
        send_paced(&sub1, (1..QUOTA).map(flow).filter(|d| !have.contains(d)));
    }
    assert_eq!(sessions_of(&topo, "100.64.0.10").len() as u64, QUOTA);

    // whois, live: the mapping's port, and a port of the same block nobody uses yet.
    let (first, last) = block_of(ext1.port());
    let live = whois(&topo, *ext1.ip(), ext1.port(), None);
    assert!(!live.is_empty(), "live answer for {ext1}");
    for a in &live {
        assert_eq!(a["source"], "live", "{a}");
        assert_eq!(a["subscriber"], "100.64.0.10", "{a}");
        assert_eq!(a["proto"], "udp", "{a}");
    }
    let unused = if ext1.port() == last {
        first
    } else {
        ext1.port() + 1
    };
    let block = whois(&topo, *ext1.ip(), unused, None);
    assert_eq!(block.len(), 1, "{block:?}");
    assert_eq!(block[0]["source"], "live");
    assert_eq!(block[0]["subscriber"], "100.64.0.10");
    assert_eq!(
        (
            block[0]["port_start"].as_u64(),
            block[0]["port_end"].as_u64()
        ),
        (Some(u64::from(first)), Some(u64::from(last)))
    );

    // Flows 1 001..=10 000: each must be refused with the configured answer, ICMP host
    // unreachable from the gateway (RFC 6888 REQ-4, REQ-11), which the subscriber's socket
    // queues with the destination it answers. Flows with no answer yet are sent again.
    let past_quota: Vec<SocketAddrV4> = (QUOTA..FLOWS).map(flow).collect();
    let mut answered = std::collections::HashSet::new();
    let mut resent = 0u64;
    send_paced(&sub1, past_quota.iter().copied());
    for round in 0..5 {
        let _ = poll(Duration::from_secs(3), || {
            answered.extend(host_unreachables(&sub1));
            (answered.len() == past_quota.len()).then_some(())
        });
        let missing: Vec<SocketAddrV4> = past_quota
            .iter()
            .copied()
            .filter(|d| !answered.contains(d))
            .collect();
        if missing.is_empty() || round == 4 {
            break;
        }
        resent += missing.len() as u64;
        send_paced(&sub1, missing.into_iter());
    }
    flooding.store(false, Ordering::Relaxed);
    assert_eq!(
        answered.len(),
        past_quota.len(),
        "every flow past the quota got ICMP host unreachable"
    );
    let refused = drops(&topo, "subscriber_session_limit");
    // Each refusal is one drop; a flow sent again because its answer (not its datagram) was
    // lost is refused twice, so with resends the count may exceed the flows by that many.
    assert!(
        (FLOWS - QUOTA..=FLOWS - QUOTA + resent).contains(&refused),
        "RFC 6888 REQ-4: the flows past the quota are refused: {refused} drops, {resent} resent"
    );
    if resent == 0 {
        assert_eq!(refused, FLOWS - QUOTA);
    }
    assert_eq!(
        sessions_of(&topo, "100.64.0.10").len() as u64,
        QUOTA,
        "exactly the quota, nothing evicted"
    );
    // A whole second at which the block is certainly held (allocated before the flood, released
    // no earlier than 10 s after the last session was refreshed), for the logged whois below.
    let t_live = unix_secs() + 1;
    while SystemTime::now() < UNIX_EPOCH + Duration::from_secs(t_live) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, tried, ext2) = second.join().unwrap();
    assert_eq!(ok, tried, "the second subscriber is unaffected");
    let ext2 = ext2.unwrap();
    assert_ne!(ext2, ext1);

    let other = whois(&topo, *ext2.ip(), ext2.port(), None);
    assert_eq!(other[0]["subscriber"], "100.64.0.11", "{other:?}");

    let stats = ctl_json(&topo, &["stats"]);
    assert_eq!(stats["log_events_lost"], 0, "{stats}");

    // ctl pools counts blocks: the first subscriber's blocks on its address are in use.
    let pools = ctl_json(&topo, &["pools"]);
    let row = pools["addresses"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["address"] == ext1.ip().to_string()))
        .unwrap_or_else(|| panic!("{pools}"));
    assert_eq!(row["port_sets"]["kind"], "block", "{row}");
    assert_eq!(row["port_sets"]["size"], BLOCK, "{row}");
    assert!(row["port_sets"]["in_use"].as_u64() >= Some(1), "{row}");
    assert_eq!(
        row["capacity"]["udp"].as_u64(),
        Some(u64::from(64_512 / BLOCK * BLOCK)),
        "{row}"
    );

    // whois, logged: once the first subscriber's sessions expire (udp = 10 s) and the hold-down
    // (1 s) has passed, its block goes back to the pool; the block log still knows who had it.
    let released = poll(Duration::from_secs(20), || {
        whois(&topo, *ext1.ip(), ext1.port(), None)
            .is_empty()
            .then_some(())
    });
    assert!(released.is_some(), "the block was released");
    let logged = whois(&topo, *ext1.ip(), ext1.port(), Some(t_live));
    assert_eq!(logged.len(), 1, "{logged:?}");
    let l = &logged[0];
    assert_eq!(l["source"], "log", "{l}");
    assert_eq!(l["subscriber"], "100.64.0.10");
    assert_eq!(l["port_start"].as_u64(), Some(u64::from(first)));
    assert_eq!(l["port_end"].as_u64(), Some(u64::from(last)));
    let (since, until) = (
        l["since_ms"].as_u64().unwrap(),
        l["until_ms"].as_u64().unwrap(),
    );
    assert!(since <= t_live * 1000 && t_live * 1000 < until, "{l}");
    // Human form too.
    let t = t_live.to_string();
    let (code, out, err) = ctl(
        &topo,
        &[
            "whois",
            &ext1.ip().to_string(),
            &ext1.port().to_string(),
            "--at",
            &t,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("100.64.0.10") && out.contains("log"), "{out}");

    // IPFIX: block allocations with their ranges, quota records, no per-session records
    // (port blocks log blocks), and the release of the first subscriber's block.
    let records = poll(Duration::from_secs(5), || {
        let r = ipfix_records(&ipfix.datagrams());
        r.iter()
            .any(|(_, f)| f.get("NatEvent").map(String::as_str) == Some("PortBlockDeAllocation"))
            .then_some(r)
    })
    .expect("a port-block de-allocation record");
    let sub1_text = "100.64.0.10".to_owned();
    let alloc: Vec<_> = records
        .iter()
        .filter(|(_, f)| f.get("NatEvent").map(String::as_str) == Some("PortBlockAllocation"))
        .collect();
    let mine = alloc
        .iter()
        .find(|(_, f)| f.get("SourceIpv4address") == Some(&sub1_text))
        .unwrap_or_else(|| panic!("block allocation for sub1 in {alloc:?}"));
    assert_eq!(mine.0, 259);
    assert_eq!(mine.1["PostNatsourceIpv4address"], ext1.ip().to_string());
    assert_eq!(mine.1["PortRangeStart"], first.to_string());
    assert_eq!(mine.1["PortRangeEnd"], last.to_string());
    assert!(
        alloc
            .iter()
            .any(|(_, f)| f.get("SourceIpv4address").map(String::as_str) == Some("100.64.0.11"))
    );
    let quota: Vec<_> = records
        .iter()
        .filter(|(_, f)| f.get("NatEvent").map(String::as_str) == Some("QuotaExceeded"))
        .collect();
    assert!(!quota.is_empty(), "quota-exceeded records");
    assert!(quota.len() as u64 <= FLOWS - QUOTA);
    for (id, f) in &quota {
        assert_eq!(*id, 260);
        assert_eq!(f["NatQuotaExceededEvent"], "3", "maximum entries per user");
        assert_eq!(f["SourceIpv4address"], "100.64.0.10");
        assert_eq!(f["ProtocolIdentifier"], "Udp");
    }
    assert!(
        records.iter().all(|(id, _)| *id != 256 && *id != 257),
        "no per-session records with port blocks"
    );

    // Syslog: RFC 5424 messages with the NAT fields; no destinations (RFC 6888 REQ-12).
    let lines: Vec<Syslog> = syslog
        .datagrams()
        .iter()
        .map(|d| parse_syslog(std::str::from_utf8(d).expect("UTF-8")))
        .collect();
    assert!(lines.iter().all(|l| l.procid == gw.pid().to_string()));
    assert!(
        lines
            .iter()
            .all(|l| !l.params.contains_key("destinationIPv4Address"))
    );
    let alloc = lines
        .iter()
        .find(|l| {
            l.msgid == "PORTBLOCK-ALLOC" && l.params.get("sourceIPv4Address") == Some(&sub1_text)
        })
        .expect("syslog block allocation");
    assert_eq!(alloc.pri, 16 * 8 + 6, "local0.info");
    assert_eq!(alloc.params["natEvent"], "16");
    assert_eq!(
        alloc.params["postNATSourceIPv4Address"],
        ext1.ip().to_string()
    );
    assert_eq!(alloc.params["portRangeStart"], first.to_string());
    assert_eq!(alloc.params["portRangeEnd"], last.to_string());
    let q = lines
        .iter()
        .find(|l| l.msgid == "QUOTA-EXCEEDED")
        .expect("syslog quota record");
    assert_eq!(q.pri, 16 * 8 + 4, "local0.warning");
    assert_eq!(
        (
            q.params["natEvent"].as_str(),
            q.params["natQuotaExceededEvent"].as_str()
        ),
        ("13", "3")
    );
    assert_eq!(q.params["protocolIdentifier"], "17");
    assert!(lines.iter().any(|l| l.msgid == "PORTBLOCK-FREE"));
    assert!(lines.iter().all(|l| l.msgid != "SESSION-CREATE"));

    drop(gw);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn deterministic_whois_by_formula_on_two_workers() {
    if !is_root() {
        return;
    }
    let topo = topology();
    // 100.64.0.0/24 onto the 16 pool addresses: 16 subscribers per address, 4032 ports each.
    // Subscriber 10 (100.64.0.10) is on 198.51.100.0, ports 1024 + 10 * 4032 = 41344..=45375;
    // subscriber 11 on 45376..=49407. Two workers: 10 belongs to worker 0, 11 to worker 1.
    let extra = "[tun]\nqueues = 2\n\n[allocation]\nmode = \"deterministic\"\n\
                 inside = \"100.64.0.0/24\"\noutside = \"198.51.100.0/28\"\n";
    let _gw = Gateway::start(&topo, &config(&topo, extra));
    let _echo = Echo::start(&topo);
    let pool0 = Ipv4Addr::new(198, 51, 100, 0);
    for (ns, sub, first) in [
        (&topo.sub1, "100.64.0.10", 41_344u16),
        (&topo.sub2, "100.64.0.11", 45_376u16),
    ] {
        let s = udp_socket(ns, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let ext = exchange(&s).expect("a round trip through the owning worker");
        assert_eq!(*ext.ip(), pool0);
        assert!(
            (first..=first + 4031).contains(&ext.port()),
            "{ext} in the formula's range"
        );
        let live = whois(&topo, pool0, ext.port(), None);
        assert_eq!(live[0]["source"], "live", "{live:?}");
        assert_eq!(live[0]["subscriber"], sub);
        // A port of the range nobody uses, now and a year ago: the formula answers.
        let unused = if ext.port() == first {
            first + 1
        } else {
            first
        };
        for at in [None, Some(unix_secs() - 365 * 86_400)] {
            let f = whois(&topo, pool0, unused, at);
            assert_eq!(f.len(), 1, "{f:?}");
            assert_eq!(f[0]["source"], "deterministic");
            assert_eq!(f[0]["subscriber"], sub);
            assert_eq!(f[0]["port_start"].as_u64(), Some(u64::from(first)));
            assert_eq!(f[0]["port_end"].as_u64(), Some(u64::from(first) + 4031));
        }
    }
    // Well-known ports belong to nobody (RFC 7422 section 2).
    assert!(whois(&topo, pool0, 80, None).is_empty());

    // ctl pools: the address's 16 ranges of 4032 ports (the two workers' shares added up), two
    // of them in use; its capacity is the ports inside them, not 1024-65535.
    let pools = ctl_json(&topo, &["pools"]);
    let row = pools["addresses"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["address"] == pool0.to_string()))
        .unwrap_or_else(|| panic!("{pools}"));
    let sets = &row["port_sets"];
    assert_eq!(sets["kind"], "deterministic", "{row}");
    assert_eq!(sets["size"], 4032, "{row}");
    assert_eq!(
        (sets["in_use"].as_u64(), sets["free"].as_u64()),
        (Some(2), Some(14)),
        "{row}"
    );
    assert_eq!(row["capacity"]["udp"], 16 * 4032, "{row}");
}
