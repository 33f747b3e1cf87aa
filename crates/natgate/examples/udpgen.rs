//! A UDP load generator for the benchmarks: 64-byte IPv4 packets (20 IP + 8 UDP + 36 payload)
//! from many source endpoints, sent with `sendmmsg` on a raw socket so one process can be a
//! million flows. Run it inside the subscriber's namespace (`ip netns exec`), pinned to a core.
//!
//! ```text
//! udpgen DST_IP DST_PORT FLOWS SECONDS [new] [rate=PPS] [count=N] [from=I] [ports=P] [dports=K]
//! ```
//! Flow `i` goes from source endpoint `e = i / K` to `DST_IP:(DST_PORT + i % K)`; endpoint `e`
//! is address `100.64.1.0 + e / P`, port `10000 + e % P` (defaults P = 50 000, K = 1). So
//! `ports=1000 dports=10` makes a million flows out of 100 000 endpoints on 100 subscriber
//! addresses, each talking to 10 remote ports: a million sessions over 100 000 mappings, which
//! fits a small pool whether the NAT keeps a subscriber on one address or not. Without `new`
//! the generator cycles over FLOWS flows; with `new` every packet opens a flow never seen
//! before in the run (for new-flows-per-second). SECONDS may be fractional. `rate=PPS` paces the packets at PPS per second (in small batches,
//! at most 1 ms worth at a time) instead of as fast as possible; `count=N` stops after N packets
//! (say FLOWS, to open every flow once); `from=I` starts at flow I instead of 0 (so short runs
//! one after another can go on round a large set of flows instead of replaying its start).
//! Bounded: at most 60 s and 2^32 packets. Prints `sent N` at the end.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const LEN: usize = 64;

/// Source endpoint `e`: 100.64.1.0 upwards, one address per `ports` endpoints.
fn source(e: u32, ports: u32) -> (Ipv4Addr, u16) {
    let a = u32::from(Ipv4Addr::new(100, 64, 1, 0)) + e / ports;
    (Ipv4Addr::from(a), (10_000 + e % ports) as u16)
}

fn packet(buf: &mut [u8; LEN], src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) {
    buf.fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(LEN as u16).to_be_bytes());
    buf[8] = 64;
    buf[9] = 17;
    buf[12..16].copy_from_slice(&src.octets());
    buf[16..20].copy_from_slice(&dst.octets());
    // The kernel fills in the IP checksum (IP_HDRINCL); UDP checksum 0 = none (RFC 768).
    buf[20..22].copy_from_slice(&sport.to_be_bytes());
    buf[22..24].copy_from_slice(&dport.to_be_bytes());
    buf[24..26].copy_from_slice(&((LEN - 20) as u16).to_be_bytes());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!(
            "usage: udpgen DST_IP DST_PORT FLOWS SECONDS [new] [rate=PPS] [count=N] [from=I] \
             [ports=P] [dports=K]"
        );
        std::process::exit(2);
    }
    let dst: Ipv4Addr = args[1].parse().unwrap_or(Ipv4Addr::new(203, 0, 113, 10));
    let dport: u16 = args[2].parse().unwrap_or(9);
    let flows: u32 = args[3].parse().unwrap_or(1000).max(1);
    let secs: f64 = args[4].parse::<f64>().unwrap_or(5.0).clamp(0.0, 60.0);
    let opt = |key: &str| {
        args[5..]
            .iter()
            .find_map(|a| a.strip_prefix(key)?.parse::<u64>().ok())
    };
    let new = args[5..].iter().any(|a| a == "new");
    // Packets per second, 0 = as fast as possible.
    let rate = opt("rate=").unwrap_or(0);
    let count = opt("count=")
        .unwrap_or(u64::from(u32::MAX))
        .min(u64::from(u32::MAX));
    let ports = u32::try_from(opt("ports=").unwrap_or(50_000).clamp(1, 50_000)).unwrap_or(1);
    let dports = u32::try_from(opt("dports=").unwrap_or(1).clamp(1, 1000)).unwrap_or(1);

    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        eprintln!("raw socket: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut bufs = [[0u8; LEN]; BATCH];
    // SAFETY: zeroed sockaddr_in is valid.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as u16;
    addr.sin_addr.s_addr = u32::from(dst).to_be();
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    let mut i = u32::try_from(opt("from=").unwrap_or(0) % u64::from(flows)).unwrap_or(0);
    // With a rate, never more than 1 ms worth of packets in one burst.
    let burst = if rate > 0 {
        (rate / 1000).clamp(1, BATCH as u64)
    } else {
        BATCH as u64
    };
    loop {
        let now = Instant::now();
        if now >= deadline || sent >= count {
            break;
        }
        let mut want = burst.min(count - sent);
        if rate > 0 {
            // Packets due by now; one that fell behind catches up at most a burst per call.
            let due = (now.duration_since(start).as_secs_f64() * rate as f64) as u64;
            want = want.min(due.saturating_sub(sent));
            if want == 0 {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
        }
        let want = want as usize;
        iovs.clear();
        msgs.clear();
        for b in bufs.iter_mut().take(want) {
            let flow = if new { i } else { i % flows };
            let (src, sport) = source(flow / dports, ports);
            let dport = dport.wrapping_add((flow % dports) as u16);
            packet(b, src, sport, dst, dport);
            i = i.wrapping_add(1);
            iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: LEN,
            });
        }
        for iov in iovs.iter_mut() {
            // SAFETY: zeroed msghdr is valid; pointers refer to live locals.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&raw mut addr).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            msgs.push(h);
        }
        // SAFETY: msgs holds `want` valid headers pointing at live buffers.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), want as u32, 0) };
        // Unsent packets are sent again next time (so `count=FLOWS` opens every flow).
        let done = usize::try_from(n).unwrap_or(0);
        i = i.wrapping_sub((want - done) as u32);
        if done > 0 {
            sent += done as u64;
        } else {
            // ENOBUFS under overload: back off a little.
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    println!("sent {sent}");
}
