//! The in-kernel fast path: an eBPF program at the TC ingress hook of the inside and outside
//! interfaces that carries established TCP and UDP flows from a table the engine fills
//! (`bpf/fastpath.bpf.c`, built from source by `build.rs`), and hands the rest to the engine.
//! Where asked ([`Hook::Xdp`]), a second program carries the same flows at the XDP hook, before
//! the kernel builds a socket buffer, and passes the rest to the TC program.
//!
//! Loading and attaching use the `aya` crate: it reads the object's BTF maps, creates them,
//! relocates and loads the program and attaches it through TCX links, all in Rust without
//! libbpf. TCX links belong to the process: when natgate exits, however it exits (SIGKILL
//! included), the kernel detaches the program and frees its maps, so no stale attachment or
//! map can outlive a run and nothing is pinned.
//!
//! Each worker gets a [`FlowTable`]: its own handle on the shared table, through which it
//! applies its engine's [`OffloadOp`]s and answers its engine's [`FastPathView`] questions.
//! Entries are keyed by flow, so workers never touch each other's; the kernel's hash map needs
//! no lock of ours.

pub mod map;
pub mod sys;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpFlags};
use aya::{Ebpf, EbpfLoader};
use natgate_core::Instant;
use natgate_core::engine::{FastPathSeen, FastPathView, OffloadOp, OffloadedFlow};

use map::{FlowAction, FlowKey, Iface, SIDE_INSIDE, SIDE_OUTSIDE, entries};

/// The program object, empty when `build.rs` could not build it. ELF parsing needs its
/// headers 8-byte aligned, which `include_bytes!` alone does not promise.
static OBJECT: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/fastpath.bpf.o")));

#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

/// Why the object is empty, if it is.
const NOT_BUILT: &str = env!("NATGATE_FASTPATH_BUILD");

/// The programs' names in the object.
const PROGRAM: &str = "natgate_tc";
const XDP_PROGRAM: &str = "natgate_xdp";

/// Where established flows are carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// At TC ingress: every interface has it.
    Tc,
    /// At XDP, in the driver (native XDP only: generic XDP costs more than TC), with TC behind
    /// it for what it passes.
    Xdp,
}

/// Load-time flag (the program's `FLAGS`): rewrite but do not route, for [`sys::test_run`].
pub const NO_REDIRECT: u32 = 1;

/// The fast path's counters, in the program's `enum counter` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FastPathCounters {
    /// Packets carried outbound.
    pub forwarded_out: u64,
    /// Packets carried inbound.
    pub forwarded_in: u64,
    /// Bytes carried outbound.
    pub bytes_out: u64,
    /// Bytes carried inbound.
    pub bytes_in: u64,
    /// Punted: not IPv4 over Ethernet.
    pub punt_not_ipv4: u64,
    /// Punted: IPv4 options, a bad header checksum or length, a zero port, a short header.
    pub punt_header: u64,
    /// Punted: a fragment.
    pub punt_fragment: u64,
    /// Punted: neither TCP nor UDP.
    pub punt_protocol: u64,
    /// Punted: SYN, FIN or RST.
    pub punt_tcp_flags: u64,
    /// Punted: a TTL that expires here.
    pub punt_ttl: u64,
    /// Punted: too big for the way out.
    pub punt_too_big: u64,
    /// Punted: no session in the table.
    pub punt_no_session: u64,
    /// Punted: no route, an unresolved neighbour, or another way out.
    pub punt_no_route: u64,
    /// Punted: a frame not addressed to this host's MAC address (broadcast, multicast, another
    /// host's), left to the kernel.
    pub punt_not_ours: u64,
    /// Punted packets handed straight to the engine (into the side's TUN) rather than routed
    /// there by the kernel.
    pub to_engine: u64,
    /// Of the packets carried, those carried at the XDP hook.
    pub carried_at_xdp: u64,
    /// The table's size in entries (two per flow).
    pub capacity: u64,
}

impl FastPathCounters {
    /// The counters with their metric names, in order.
    pub fn named(&self) -> [(&'static str, u64); 16] {
        [
            ("forwarded_out", self.forwarded_out),
            ("forwarded_in", self.forwarded_in),
            ("bytes_out", self.bytes_out),
            ("bytes_in", self.bytes_in),
            ("punt_not_ipv4", self.punt_not_ipv4),
            ("punt_header", self.punt_header),
            ("punt_fragment", self.punt_fragment),
            ("punt_protocol", self.punt_protocol),
            ("punt_tcp_flags", self.punt_tcp_flags),
            ("punt_ttl", self.punt_ttl),
            ("punt_too_big", self.punt_too_big),
            ("punt_no_session", self.punt_no_session),
            ("punt_no_route", self.punt_no_route),
            ("punt_not_ours", self.punt_not_ours),
            ("to_engine", self.to_engine),
            ("carried_at_xdp", self.carried_at_xdp),
        ]
    }

    fn set(&mut self, slot: usize, v: u64) {
        let field = match slot {
            0 => &mut self.forwarded_out,
            1 => &mut self.forwarded_in,
            2 => &mut self.bytes_out,
            3 => &mut self.bytes_in,
            4 => &mut self.punt_not_ipv4,
            5 => &mut self.punt_header,
            6 => &mut self.punt_fragment,
            7 => &mut self.punt_protocol,
            8 => &mut self.punt_tcp_flags,
            9 => &mut self.punt_ttl,
            10 => &mut self.punt_too_big,
            11 => &mut self.punt_no_session,
            12 => &mut self.punt_no_route,
            13 => &mut self.punt_not_ours,
            14 => &mut self.to_engine,
            15 => &mut self.carried_at_xdp,
            _ => return,
        };
        *field = v;
    }
}

/// Number of counters the program keeps.
const COUNTERS: u32 = 16;

/// Why the fast path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// `build.rs` could not build the program.
    #[error("the fast path was not built: {0}")]
    NotBuilt(&'static str),
    /// Loading the object or the program failed (the verifier's log follows, if any).
    #[error("loading the fast path: {0}")]
    Load(String),
    /// Attaching to an interface failed.
    #[error("attaching the fast path to {iface}: {why}")]
    Attach {
        /// The interface.
        iface: String,
        /// What went wrong.
        why: String,
    },
    /// A map operation failed.
    #[error("fast path table: {0}")]
    Map(String),
}

fn load_err(e: impl std::fmt::Display) -> FastPathError {
    FastPathError::Load(e.to_string())
}

fn map_err(e: impl std::fmt::Display) -> FastPathError {
    FastPathError::Map(e.to_string())
}

/// One side of the gateway as the fast path needs it.
#[derive(Debug, Clone)]
pub struct Side {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// The engine's MTU for packets leaving by this interface.
    pub mtu: u16,
    /// The TUN the engine reads this side's packets from (0: none; the kernel's routing takes
    /// them there).
    pub tun_ifindex: u32,
    /// The interface's MAC address.
    pub mac: [u8; 6],
}

/// The loaded program and its maps; attached while it lives.
pub struct FastPath {
    ebpf: Ebpf,
    capacity: u32,
    hook: Hook,
    /// The attached sides, inside then outside.
    sides: Option<[Side; 2]>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl FastPath {
    /// Loads the program with room for `flows` flows and the load-time `flags` (0, or
    /// [`NO_REDIRECT`] for tests), without attaching it.
    pub fn load(flows: u32, flags: u32) -> Result<Self, FastPathError> {
        if OBJECT.0.is_empty() {
            return Err(FastPathError::NotBuilt(NOT_BUILT));
        }
        let capacity = flows.saturating_mul(2).max(2);
        let mut ebpf = EbpfLoader::new()
            .set_max_entries("SESSIONS", capacity)
            .set_global("FLAGS", &flags, true)
            .load(&OBJECT.0)
            .map_err(load_err)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| load_err("no program natgate_tc in the object"))?
            .try_into()
            .map_err(load_err)?;
        prog.load().map_err(load_err)?;
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| load_err("no program natgate_xdp in the object"))?
            .try_into()
            .map_err(load_err)?;
        xdp.load().map_err(load_err)?;
        Ok(FastPath {
            ebpf,
            capacity,
            hook: Hook::Tc,
            sides: None,
        })
    }

    /// Loads the programs and attaches them to both sides: the TC program to their ingress
    /// always (it hands the engine what is not carried), the XDP one in their drivers first if
    /// `hook` asks.
    pub fn attach(
        inside: &Side,
        outside: &Side,
        flows: u32,
        hook: Hook,
    ) -> Result<Self, FastPathError> {
        let mut fp = Self::load(flows, 0)?;
        fp.hook = hook;
        fp.set_iface(inside, outside, SIDE_INSIDE)?;
        fp.set_iface(outside, inside, SIDE_OUTSIDE)?;
        let attach_err = |s: &Side, e: aya::programs::ProgramError| FastPathError::Attach {
            iface: s.name.clone(),
            why: e.to_string(),
        };
        for s in [inside, outside] {
            let prog: &mut SchedClassifier = fp
                .ebpf
                .program_mut(PROGRAM)
                .ok_or_else(|| load_err("program gone"))?
                .try_into()
                .map_err(load_err)?;
            prog.attach(&s.name, TcAttachType::Ingress)
                .map_err(|e| attach_err(s, e))?;
        }
        if hook == Hook::Xdp {
            for s in [inside, outside] {
                let prog: &mut Xdp = fp
                    .ebpf
                    .program_mut(XDP_PROGRAM)
                    .ok_or_else(|| load_err("program gone"))?
                    .try_into()
                    .map_err(load_err)?;
                prog.attach(&s.name, XdpFlags::DRV_MODE)
                    .map_err(|e| attach_err(s, e))?;
            }
        }
        fp.sides = Some([inside.clone(), outside.clone()]);
        Ok(fp)
    }

    /// Where established flows are carried.
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Takes the engine's MTUs after a reload: `outbound` for packets leaving by the outside
    /// interface, `inbound` for those leaving by the inside one.
    pub fn set_mtus(&mut self, outbound: u16, inbound: u16) -> Result<(), FastPathError> {
        let Some([mut inside, mut outside]) = self.sides.clone() else {
            return Ok(());
        };
        inside.mtu = inbound;
        outside.mtu = outbound;
        self.set_iface(&inside, &outside, SIDE_INSIDE)?;
        self.set_iface(&outside, &inside, SIDE_OUTSIDE)?;
        self.sides = Some([inside, outside]);
        Ok(())
    }

    /// Records that packets arriving on `this` are from `side` and leave by `peer`.
    pub fn set_iface(&mut self, this: &Side, peer: &Side, side: u8) -> Result<(), FastPathError> {
        let mut ifaces: HashMap<_, u32, Iface> = HashMap::try_from(
            self.ebpf
                .map_mut("IFACES")
                .ok_or_else(|| map_err("no IFACES"))?,
        )
        .map_err(map_err)?;
        let iface = Iface {
            peer_ifindex: peer.ifindex,
            mtu_out: peer.mtu,
            side,
            pad: 0,
            tun_ifindex: this.tun_ifindex,
            mac: this.mac,
            pad2: 0,
        };
        ifaces.insert(this.ifindex, iface, 0).map_err(map_err)
    }

    /// A worker's handle on the flow table.
    pub fn table(&self) -> Result<FlowTable, FastPathError> {
        let map = self
            .ebpf
            .map("SESSIONS")
            .ok_or_else(|| map_err("no SESSIONS"))?;
        let Map::HashMap(data) = map else {
            return Err(map_err("SESSIONS is not a hash map"));
        };
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(map_err)?;
        let raw = fd.try_clone().map_err(map_err)?;
        let data = MapData::from_fd(fd).map_err(map_err)?;
        let map = HashMap::try_from(Map::HashMap(data)).map_err(map_err)?;
        Ok(FlowTable {
            map,
            raw,
            keys: Vec::with_capacity(CHANGES_PER_CALL),
            values: Vec::with_capacity(CHANGES_PER_CALL),
        })
    }

    /// The program's counters, summed over CPUs, and the table's size. (Its occupancy is the
    /// engines' count of the flows they handed over: counting the kernel's entries would take
    /// a system call per entry.)
    pub fn counters(&self) -> Result<FastPathCounters, FastPathError> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("STATS").ok_or_else(|| map_err("no STATS"))?)
                .map_err(map_err)?;
        let mut c = FastPathCounters {
            capacity: u64::from(self.capacity),
            ..FastPathCounters::default()
        };
        for slot in 0..COUNTERS {
            let per_cpu = stats.get(&slot, 0).map_err(map_err)?;
            c.set(slot as usize, per_cpu.iter().sum());
        }
        Ok(c)
    }

    /// The file descriptor of the program at `hook`, for [`sys::test_run`].
    pub fn program_fd(&self, hook: Hook) -> Result<i32, FastPathError> {
        let prog = self
            .ebpf
            .program(match hook {
                Hook::Tc => PROGRAM,
                Hook::Xdp => XDP_PROGRAM,
            })
            .ok_or_else(|| load_err("program gone"))?;
        let fd = match hook {
            Hook::Tc => <&SchedClassifier>::try_from(prog)
                .map_err(load_err)?
                .fd()
                .map_err(load_err)?,
            Hook::Xdp => <&Xdp>::try_from(prog)
                .map_err(load_err)?
                .fd()
                .map_err(load_err)?,
        };
        Ok(fd.as_fd().as_raw_fd())
    }
}

/// The engine instant at which CLOCK_MONOTONIC (`bpf_ktime_get_ns()`) read `ns`, given the
/// engine's `now`: both clocks run at the same rate, so only the distance back from now counts.
fn instant_of(now: Instant, ns: u64) -> Instant {
    let mono = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let mono_ns = u64::try_from(mono.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(mono.tv_nsec).unwrap_or(0);
    let ago_ms = mono_ns.saturating_sub(ns) / 1_000_000;
    Instant::from_millis(now.as_millis().saturating_sub(ago_ms))
}

/// A worker's handle on the fast path's flow table.
pub struct FlowTable {
    map: HashMap<MapData, FlowKey, FlowAction>,
    /// The same map, for the batch commands.
    raw: OwnedFd,
    /// Changes gathered for one batch call (kept, so that steady state allocates nothing).
    keys: Vec<FlowKey>,
    values: Vec<FlowAction>,
}

/// Most table entries changed by one system call.
const CHANGES_PER_CALL: usize = 1024;

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable").finish_non_exhaustive()
    }
}

impl FlowTable {
    /// Applies the engine's changes as `next` yields them, in order, gathering runs of
    /// inserts or removals into one system call each (up to 1024 entries a call).
    /// Returns how many entries the kernel refused to insert: a refused insert leaves its flow
    /// (or that direction of it) with the slow path (the program punts what it does not find), and a removal of an entry that is
    /// not there (a refused insert) changes nothing.
    pub fn apply_all(&mut self, mut next: impl FnMut() -> Option<OffloadOp>) -> u64 {
        let mut failed = 0;
        let mut inserting = true;
        while let Some(op) = next() {
            let (insert, flow) = match op {
                OffloadOp::Insert(f) => (true, f),
                OffloadOp::Remove(f) => (false, f),
            };
            if insert != inserting || self.keys.len() + 2 > CHANGES_PER_CALL {
                failed += self.flush(inserting);
                inserting = insert;
            }
            for (k, v) in entries(&flow) {
                self.keys.push(k);
                self.values.push(v);
            }
        }
        failed + self.flush(inserting)
    }

    /// Writes (or deletes) the gathered entries; how many inserts the kernel refused.
    fn flush(&mut self, insert: bool) -> u64 {
        let mut failed = 0;
        let mut at = 0;
        while at < self.keys.len() {
            let (done, result) = if insert {
                sys::update_batch(self.raw.as_fd(), &self.keys[at..], &self.values[at..])
            } else {
                sys::delete_batch(self.raw.as_fd(), &self.keys[at..])
            };
            at += done;
            if result.is_err() {
                // The entry the kernel stopped at: an insert it refused (a full table) or a
                // removal of an entry that is not there. Skip it and go on with the rest.
                if insert {
                    failed += 1;
                }
                at += 1;
            }
        }
        self.keys.clear();
        self.values.clear();
        failed
    }

    /// What the program saw of `flow`, with `now` the engine's current instant.
    pub fn seen_at(&self, now: Instant, flow: &OffloadedFlow) -> FastPathSeen {
        let [(out_key, _), (in_key, _)] = entries(flow);
        let at = |k: &FlowKey| {
            self.map
                .get(k, 0)
                .ok()
                .filter(|v| v.last_seen_ns != 0)
                .map(|v| instant_of(now, v.last_seen_ns))
        };
        FastPathSeen {
            outbound: at(&out_key),
            inbound: at(&in_key),
        }
    }

    /// Whether the table holds both entries of `flow`.
    pub fn carries(&self, flow: &OffloadedFlow) -> bool {
        entries(flow)
            .iter()
            .all(|(k, _)| self.map.get(k, 0).is_ok())
    }

    /// A [`FastPathView`] for one timer run at `now`.
    pub fn view(&mut self, now: Instant) -> TableView<'_> {
        TableView { table: self, now }
    }
}

/// [`FlowTable::seen_at`] as the engine asks it, for one timer run.
#[derive(Debug)]
pub struct TableView<'a> {
    table: &'a FlowTable,
    now: Instant,
}

impl FastPathView for TableView<'_> {
    fn seen(&mut self, flow: &OffloadedFlow) -> FastPathSeen {
        self.table.seen_at(self.now, flow)
    }
}
