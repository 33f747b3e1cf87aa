//! What this machine can hold and what its interfaces say, checked by `natgate check` and again
//! at `natgate run` before anything is set up: a config that passes `check` must not abort `run`.
//!
//! The engines reserve all their state at start (see `natgate_core::engine::MemoryModel`), so
//! their need is known from the config alone and can be compared with `/proc/meminfo`. The
//! outside interface's addresses are only known on the machine that runs natgate: `check`
//! looks at them when the interface exists there, and `run` always does.

use std::net::Ipv4Addr;

use natgate_core::engine::MemoryModel;

use crate::config::{PoolSource, Settings};

/// Memory figures of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available: u64,
}

impl MemInfo {
    /// Reads `/proc/meminfo`.
    pub fn read() -> Result<MemInfo, MachineError> {
        let text = std::fs::read_to_string("/proc/meminfo").map_err(MachineError::MemInfo)?;
        MemInfo::parse(&text).ok_or_else(|| {
            MachineError::MemInfo(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MemTotal or MemAvailable line",
            ))
        })
    }

    /// Parses the text of `/proc/meminfo` (`Key:   N kB` lines).
    pub fn parse(text: &str) -> Option<MemInfo> {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
                kb.checked_mul(1024)
            })
        };
        Some(MemInfo {
            total: field("MemTotal")?,
            available: field("MemAvailable")?,
        })
    }
}

/// The resident memory of this process (`VmRSS` of `/proc/self/status`), in bytes.
pub fn resident_bytes() -> Result<u64, MachineError> {
    let text = std::fs::read_to_string("/proc/self/status").map_err(MachineError::MemInfo)?;
    text.lines()
        .find_map(|l| {
            let kb: u64 = l
                .strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()?;
            kb.checked_mul(1024)
        })
        .ok_or_else(|| {
            MachineError::MemInfo(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no VmRSS line in /proc/self/status",
            ))
        })
}

/// Why the machine cannot run a config.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `/proc/meminfo` could not be read.
    #[error("reading /proc/meminfo: {0}")]
    MemInfo(#[source] std::io::Error),
    /// The engine config was refused (it is checked when the file is loaded, so this is rare).
    #[error("config: {0}")]
    Config(#[from] natgate_core::ConfigError),
    /// The engines need more memory than the machine has available.
    #[error(
        "the engines need {need} bytes (up to {per_worker} for each of {workers} workers, by \
         the engine's memory model: {detail}), and this machine has {available} bytes \
         available (of {total}); lower max-sessions and max-mappings, or set max-memory to \
         derive them"
    )]
    NotEnoughMemory {
        /// Bytes all engines reserve.
        need: u64,
        /// Bytes one engine reserves.
        per_worker: u64,
        /// Workers (queues).
        workers: usize,
        /// Where one engine's bytes go.
        detail: String,
        /// `MemAvailable`.
        available: u64,
        /// `MemTotal`.
        total: u64,
    },
    /// A pool address is an address of the outside interface.
    #[error(
        "pool address {0} is the outside interface's own address: the host's traffic and \
         the NAT's would share its ports; use [pool] outside-address = true instead"
    )]
    PoolHasOutsideAddress(Ipv4Addr),
}

/// Bytes the engines of `settings` reserve at start (one per queue, each with its share of
/// the gateway's `max-sessions` and `max-mappings`), the first (largest) engine's bytes, and
/// where they go.
pub fn engine_need(settings: &Settings) -> Result<(u64, u64, String), MachineError> {
    let cfg = settings.stand_in_engine_config()?;
    let l = cfg.get().limits;
    let model = MemoryModel::of(cfg.get());
    let n = settings.queues;
    let share = |id| {
        model.usage(
            crate::config::worker_share(l.max_sessions, id, n),
            crate::config::worker_share(l.max_mappings, id, n),
        )
    };
    let total = (0..n).map(|id| share(id).total()).sum();
    let first = share(0);
    Ok((total, first.total(), first.to_string()))
}

/// Refuses a config whose engines need more memory than `mem` says is available.
pub fn check_memory(settings: &Settings, mem: MemInfo) -> Result<u64, MachineError> {
    let (need, per_worker, detail) = engine_need(settings)?;
    let workers = settings.queues;
    if need > mem.available {
        return Err(MachineError::NotEnoughMemory {
            need,
            per_worker,
            workers,
            detail,
            available: mem.available,
            total: mem.total,
        });
    }
    Ok(need)
}

/// Refuses a pool that lists an address of the outside interface (`outside` are its addresses).
pub fn check_pool(settings: &Settings, outside: &[Ipv4Addr]) -> Result<(), MachineError> {
    if let PoolSource::Addresses(pool) = &settings.pool
        && let Some(a) = pool.iter().find(|a| outside.contains(a))
    {
        return Err(MachineError::PoolHasOutsideAddress(*a));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[interfaces]\ninside = \"lan0\"\noutside = \"wan0\"\n\n[pool]\n\
                       addresses = [\"198.51.100.0/28\"]\n";

    const MEMINFO: &str = "MemTotal:       24683772 kB\nMemFree:        20000000 kB\n\
                           MemAvailable:   23079620 kB\nSwapTotal:             0 kB\n";

    #[test]
    fn meminfo_parses_in_bytes() {
        let m = MemInfo::parse(MEMINFO).expect("parses");
        assert_eq!(m.total, 24_683_772 * 1024);
        assert_eq!(m.available, 23_079_620 * 1024);
        assert_eq!(MemInfo::parse("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_billion_sessions_are_refused_with_the_need_and_what_there_is() {
        let text = format!(
            "{MIN}\n[tun]\nqueues = 2\n\n[limits]\nmax-sessions = 1073741824\n\
             max-mappings = 1073741824\n"
        );
        let s = Settings::parse(&text).expect("the file itself is valid");
        let mem = MemInfo::parse(MEMINFO).expect("parses");
        let e = check_memory(&s, mem).expect_err("does not fit in 24 GB");
        let MachineError::NotEnoughMemory {
            need,
            per_worker,
            workers,
            available,
            ..
        } = e
        else {
            panic!("{e}");
        };
        assert_eq!(workers, 2);
        // Two workers of 2^29 sessions each: the limit is the gateway's.
        assert_eq!(need, 2 * per_worker);
        assert!(per_worker > 1 << 34, "{per_worker} bytes for 2^29 sessions");
        assert!(per_worker < 1 << 36, "{per_worker} bytes for 2^29 sessions");
        assert_eq!(available, mem.available);
        let msg = e.to_string();
        assert!(msg.contains(&need.to_string()) && msg.contains(&available.to_string()));
        // The defaults fit.
        let s = Settings::parse(MIN).expect("valid");
        let need = check_memory(&s, mem).expect("defaults fit");
        assert!(need < mem.available);
    }

    #[test]
    fn a_pool_holding_the_outside_address_is_refused() {
        let s = Settings::parse(MIN).expect("valid");
        let own = Ipv4Addr::new(198, 51, 100, 3);
        let e = check_pool(&s, &[Ipv4Addr::new(192, 0, 2, 1), own]).expect_err("refused");
        assert!(e.to_string().contains("198.51.100.3"), "{e}");
        check_pool(&s, &[Ipv4Addr::new(192, 0, 2, 1)]).expect("apart");
    }

    /// What `run` meets if the machine's memory shrank after `check`: the engine's session table
    /// cannot be allocated, and that is an error, not an abort. Only where the kernel refuses
    /// an allocation larger than RAM and swap (overcommit mode 0 or 2) and the 32 GiB session
    /// slab of 2^30 sessions is that large; elsewhere the allocation would succeed and touch
    /// the memory, so the test does not run.
    #[test]
    fn an_engine_too_large_to_allocate_is_an_error_not_an_abort() {
        let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|r| r.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .map(|k| k * 1024)
        };
        let (Some(ram), Some(swap)) = (kb("MemTotal"), kb("SwapTotal")) else {
            eprintln!("SKIP: no /proc/meminfo");
            return;
        };
        let slab = (1u64 << 30) * 32;
        if mode.trim() == "1" || slab <= ram + swap {
            eprintln!("SKIP: overcommit mode {mode:?} or {ram} + {swap} bytes hold {slab}");
            return;
        }
        let text =
            format!("{MIN}\n[limits]\nmax-sessions = 1073741824\nmax-mappings = 1073741824\n");
        let s = Settings::parse(&text).expect("the file itself is valid");
        let cfg = s.stand_in_engine_config().expect("valid");
        let e = match natgate_core::Engine::try_with_allocator(
            cfg.clone(),
            natgate_core::alloc::DynamicAllocator::new(
                &cfg.get().pool,
                natgate_core::alloc::AllocSettings::from_config(cfg.get()),
            ),
            1,
        ) {
            Ok(_) => panic!("a 64 GiB engine was allocated"),
            Err(e) => e,
        };
        assert!(e.need > slab, "{e}");
        assert!(e.to_string().contains(&e.need.to_string()), "{e}");
    }
}
