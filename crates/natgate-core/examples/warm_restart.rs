//! Warm restart at scale, in the engine alone: how long saving, encoding, decoding and
//! restoring take for N sessions (ten per mapping, on 1 000 subscribers over 16 external
//! addresses, dynamic allocation), and the snapshot's size.
//!
//! `cargo run --release -p natgate-core --example warm_restart -- [SESSIONS]` (default 1 000 000)
//!
//! The state is made by restoring a generated one (each mapping on its internal port, so any
//! allocator check passes), then saved and restored into a second engine as a restart does.
//! Times are wall-clock on an otherwise idle core; run it under `valgrind --tool=callgrind` for
//! instruction counts.

#![allow(clippy::print_stdout, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant as Wall};

use natgate_core::saved::codec::{self, Snapshot};
use natgate_core::saved::{SavedSession, SavedState};
use natgate_core::{Config, Endpoint, Engine, Instant, Protocol};

const SUBSCRIBERS: u32 = 1000;
const ADDRESSES: u32 = 16;
const REMOTES: u32 = 10;

fn engine(sessions: u32) -> Engine {
    let pool = (0..ADDRESSES as u8)
        .map(|i| Ipv4Addr::new(198, 51, 100, i))
        .collect();
    let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 0, 1));
    c.limits.max_sessions = sessions + sessions / 10;
    c.limits.max_mappings = sessions / REMOTES + 1000;
    Engine::new(c.validate().expect("valid config"), 1)
}

fn generated(sessions: u32) -> SavedState {
    let mappings = sessions / REMOTES;
    let per_subscriber = mappings.div_ceil(SUBSCRIBERS);
    let mut state = SavedState::default();
    for m in 0..mappings {
        let (sub, k) = (m % SUBSCRIBERS, m / SUBSCRIBERS);
        let internal_addr = Ipv4Addr::from(0x6440_0000 + 256 + sub);
        // Subscribers sharing an address (paired pooling) take disjoint port ranges.
        let port = u16::try_from(1024 + (sub / ADDRESSES) * per_subscriber + k).expect("fits");
        let external = Endpoint::new(Ipv4Addr::new(198, 51, 100, (sub % ADDRESSES) as u8), port);
        for r in 0..REMOTES {
            state.sessions.push(SavedSession {
                proto: Protocol::Udp,
                internal: Endpoint::new(internal_addr, port),
                external,
                remote: Endpoint::new(Ipv4Addr::new(203, 0, 113, 10), 1000 + r as u16),
                tcp: 0,
                idle_secs: r,
            });
        }
    }
    state
}

fn per(d: Duration, n: usize) -> String {
    format!(
        "{:>8.1} ms  {:>6.0} ns/session",
        d.as_secs_f64() * 1e3,
        d.as_nanos() as f64 / n as f64
    )
}

fn main() {
    let sessions: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let now = Instant::from_secs(30 * 24 * 3600);
    let mut a = engine(sessions);
    let made = a
        .restore(now, &generated(sessions), Duration::ZERO)
        .expect("the generated state fits");
    let n = made.sessions;

    let t = Wall::now();
    let state = a.save(now);
    let save = t.elapsed();
    let t = Wall::now();
    let bytes = codec::encode(&Snapshot {
        saved_at_unix_ms: 0,
        state,
    });
    let encode = t.elapsed();
    let t = Wall::now();
    let snap = codec::decode(&bytes).expect("decodes");
    let decode = t.elapsed();
    let mut b = engine(sessions);
    let t = Wall::now();
    let restored = b
        .restore(now, &snap.state, Duration::from_millis(500))
        .expect("fits");
    let restore = t.elapsed();
    assert_eq!(restored.sessions, n);

    println!(
        "sessions {n}, snapshot {} bytes ({:.1} per session)",
        bytes.len(),
        bytes.len() as f64 / n as f64
    );
    println!("save     {}", per(save, n));
    println!("encode   {}", per(encode, n));
    println!("decode   {}", per(decode, n));
    println!("restore  {}", per(restore, n));
}
