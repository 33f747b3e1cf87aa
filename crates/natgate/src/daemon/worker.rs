//! One worker: one engine driven by one pair of TUN queues (inside, outside).
//!
//! The loop: wait for packets with `poll(2)` no longer than the engine's next timer (and
//! [`MAX_WAIT`], so commands and the stop flag are seen promptly); read up to [`BATCH`] packets
//! per side; translate them with [`Engine::process_batch`]; write what is forwarded or answered
//! back into the TUN it came from (the kernel routes it on by its new addresses); then drain
//! `poll_transmit`, run timers and hand events to the sink.

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Duration;

use arrayvec::ArrayVec;
use natgate_core::alloc::{ConfiguredAllocator, PortAllocator, PortRange};
use natgate_core::engine::Engine;
use natgate_core::engine::{BATCH, PacketBuf};
use natgate_core::portmap::wire::pcp;
use natgate_core::portmap::{Answer, PortMapServer};
use natgate_core::saved::SavedState;
use natgate_core::shard::{StaticSteer, Steering};
use natgate_core::{Endpoint, Event, Protocol, Side, Verdict};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::mailbox::{MAILBOX_LEN, Mailbox, Steered};
use super::{Clock, Command, Detail, IoCounters, LiveHolder, WorkerSnapshot};
use crate::control::protocol::{MappingList, SessionList};
use crate::dataplane::fastpath::FlowTable;
use crate::dataplane::tun::TunQueue;

/// Longest wait in `poll`, so commands and the stop flag are seen within this time.
pub const MAX_WAIT: Duration = Duration::from_millis(50);

/// Room per packet: the largest IPv4 datagram a TUN with MTU 65535 passes, plus space for the
/// engine to build an ICMP error in place.
const SLOT: usize = 65_536 + 1024;

/// Bytes of packet buffers a worker allocates when it starts (a batch of slots and one for
/// what the engine builds itself), counted against `max-memory` with natgate's own memory.
pub const BUFFER_BYTES: u64 = (SLOT * (BATCH + 1)) as u64;

/// Most events handed to the sink per loop turn (the rest wait for the next turn).
const EVENTS_PER_TURN: usize = 4096;

/// Most packets from `poll_transmit` written per loop turn.
const TRANSMITS_PER_TURN: usize = 4096;

/// Most commands handled per loop turn.
const COMMANDS_PER_TURN: usize = 16;

/// Longest time between two runs of the engine's timers. `next_timeout` does not cover the
/// allocator's hold-downs (a port block goes back to the pool, with its log record, when the
/// hold-down of its last port ends: RFC 6888 REQ-8), so an idle worker still runs them this
/// often and block releases reach the log within this time.
const TIMER_TICK: Duration = Duration::from_secs(1);

/// Where a worker's translation events go.
pub trait EventOutput: Send {
    /// Takes one event.
    fn record(&mut self, e: &Event);
    /// Called after each batch of events.
    fn flush(&mut self) {}
}

/// A worker's event output.
pub type EventSink = Box<dyn EventOutput>;

/// Drops events (the engine still counts them).
#[derive(Debug, Default)]
pub struct Discard;

impl EventOutput for Discard {
    fn record(&mut self, _: &Event) {}
}

/// Everything one worker owns.
pub struct Worker {
    /// Worker number (for logs).
    pub id: usize,
    /// Where the engine's state goes when the worker stops, for a warm restart.
    pub save_on_stop: Option<Sender<SavedState>>,
    /// The engine, with the allocator `[allocation]` chose for this worker's share.
    pub engine: Engine<ConfiguredAllocator>,
    /// Inside TUN queue.
    pub inside: TunQueue,
    /// Outside TUN queue.
    pub outside: TunQueue,
    /// Shared clock origin.
    pub clock: Clock,
    /// Event sink.
    pub events: EventSink,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
    /// Control commands.
    pub commands: Receiver<Command>,
    /// I/O counters.
    pub io: IoCounters,
    /// Who owns which packet (multi-queue).
    pub steering: Arc<Steering>,
    /// Every worker's mailbox, by worker number.
    pub mailboxes: Arc<[Mailbox]>,
    /// The in-kernel fast path's flow table, when it runs: the engine's offload changes go
    /// there, and its timers ask it what it carried.
    pub fast_path: Option<FlowTable>,
    /// The PCP, NAT-PMP and UPnP server of this worker's subscribers, when `[port-mapping]` turns
    /// one on.
    pub portmap: Option<PortMapServer>,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Reading, writing or polling a TUN queue failed.
    #[error("worker {worker}: {what}: {source}")]
    Io {
        /// Worker number.
        worker: usize,
        /// The step.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Worker {
    /// Runs until the stop flag is set or a queue fails.
    pub fn run(mut self) -> Result<(), WorkerError> {
        let r = self.translate();
        // Stopped, or failed: either way no packet changes the state any more.
        if let Some(tx) = self.save_on_stop.take() {
            let _ = tx.send(self.engine.save(self.clock.now()));
        }
        r
    }

    /// The loop, until the stop flag is set or a queue fails.
    fn translate(&mut self) -> Result<(), WorkerError> {
        let mut bufs = vec![0u8; SLOT * BATCH];
        let mut lens = [0usize; BATCH];
        let mut verdicts = [Verdict::Held; BATCH];
        let mut scratch = vec![0u8; SLOT];
        // Keys the static-claim table: lookup keys are chosen by whoever sends us packets.
        let seed = super::os_seed();
        let mut statics = self.static_steer(seed);
        let mut last_timers = self.clock.now();
        while !self.stop.load(Ordering::Relaxed) {
            if self.commands() {
                statics = self.static_steer(seed);
            }
            let now = self.clock.now();
            let wait = match self.engine.next_timeout() {
                Some(t) if t <= now => Duration::ZERO,
                Some(t) => t.saturating_since(now).min(MAX_WAIT),
                None => MAX_WAIT,
            };
            let (rin, rout, rmail) = self.wait(wait)?;
            if rmail {
                self.mailbox(&mut bufs, &mut lens, &mut verdicts);
            }
            for (ready, side) in [(rin, Side::Inside), (rout, Side::Outside)] {
                if !ready {
                    continue;
                }
                let n = self.read(side, &mut bufs, &mut lens)?;
                let mut local = [0usize; BATCH];
                let k = self.steer(side, &bufs, &lens[..n], &mut local, &statics);
                self.process(side, &mut bufs, &lens, &local[..k], &mut verdicts);
            }
            let now = self.clock.now();
            if self.engine.next_timeout().is_some_and(|t| t <= now)
                || now.saturating_since(last_timers) >= TIMER_TICK
            {
                match self.fast_path.as_mut() {
                    Some(table) => self.engine.handle_timeout_with(now, &mut table.view(now)),
                    None => self.engine.handle_timeout(now),
                }
                last_timers = now;
            }
            self.transmit(&mut scratch);
            self.offload();
            let mut any = false;
            for _ in 0..EVENTS_PER_TURN {
                match self.engine.poll_event() {
                    Some(e) => {
                        self.events.record(&e);
                        any = true;
                    }
                    None => break,
                }
            }
            if any {
                self.events.flush();
            }
        }
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> Result<(bool, bool, bool), WorkerError> {
        let multi = self.steering.workers() > 1;
        let mut fds = [
            PollFd::new(&self.inside, PollFlags::IN),
            PollFd::new(&self.outside, PollFlags::IN),
            PollFd::new(&self.mailboxes[self.id], PollFlags::IN),
        ];
        let nfds = if multi { 3 } else { 2 };
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds[..nfds], Some(&ts)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok((false, false, false)),
            Err(e) => {
                return Err(WorkerError::Io {
                    worker: self.id,
                    what: "poll",
                    source: e.into(),
                });
            }
        }
        let ready = |f: &PollFd<'_>| !f.revents().is_empty();
        Ok((ready(&fds[0]), ready(&fds[1]), multi && ready(&fds[2])))
    }

    /// Reads up to [`BATCH`] packets from `side`'s queue into the slots; how many.
    fn read(
        &mut self,
        side: Side,
        bufs: &mut [u8],
        lens: &mut [usize; BATCH],
    ) -> Result<usize, WorkerError> {
        let queue = match side {
            Side::Inside => &self.inside,
            Side::Outside => &self.outside,
        };
        let mut n = 0;
        for slot in bufs.chunks_mut(SLOT).take(BATCH) {
            match queue.recv(slot) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(source) => {
                    return Err(WorkerError::Io {
                        worker: self.id,
                        what: "reading the TUN",
                        source,
                    });
                }
            }
        }
        self.io.rx_packets[usize::from(side == Side::Outside)] += n as u64;
        Ok(n)
    }

    /// Hands the packets another worker owns to it; puts the indices of the rest in `local`
    /// and returns how many there are.
    fn steer(
        &mut self,
        side: Side,
        bufs: &[u8],
        lens: &[usize],
        local: &mut [usize; BATCH],
        statics: &StaticSteer,
    ) -> usize {
        let mut k = 0;
        let multi = self.steering.workers() > 1;
        let mut woken = 0u64;
        for (i, slot) in bufs.chunks(SLOT).take(lens.len()).enumerate() {
            let pkt = &slot[..lens[i]];
            match self.steering.owner(side, pkt, statics).filter(|_| multi) {
                Some(w) if w != self.id => {
                    if self.mailboxes[w].push(side, pkt) {
                        self.io.steered += 1;
                        woken |= 1 << (w % 64);
                    } else {
                        self.io.steer_dropped += 1;
                    }
                }
                _ => {
                    local[k] = i;
                    k += 1;
                }
            }
        }
        for (w, m) in self.mailboxes.iter().enumerate() {
            if woken & (1 << (w % 64)) != 0 {
                m.wake();
            }
        }
        k
    }

    /// Processes what other workers handed over, a batch per side.
    fn mailbox(
        &mut self,
        bufs: &mut [u8],
        lens: &mut [usize; BATCH],
        verdicts: &mut [Verdict; BATCH],
    ) {
        self.mailboxes[self.id].clear();
        // Bounded: at most the mailbox's length per turn.
        for _ in 0..MAILBOX_LEN / BATCH {
            let mut got: ArrayVec<Steered, BATCH> = ArrayVec::new();
            while got.len() < BATCH {
                match self.mailboxes[self.id].queue.pop() {
                    Some(p) => got.push(p),
                    None => break,
                }
            }
            if got.is_empty() {
                break;
            }
            for side in [Side::Inside, Side::Outside] {
                let mut idx = [0usize; BATCH];
                let mut k = 0;
                for (p, slot) in got
                    .iter()
                    .filter(|p| p.side == side)
                    .zip(bufs.chunks_mut(SLOT))
                {
                    let len = p.bytes.len().min(SLOT);
                    slot[..len].copy_from_slice(&p.bytes[..len]);
                    lens[k] = len;
                    idx[k] = k;
                    k += 1;
                }
                self.process(side, bufs, lens, &idx[..k], verdicts);
            }
            for p in got {
                self.mailboxes[self.id].recycle(p.bytes);
            }
        }
    }

    /// Translates the packets in slots `idx` (that arrived on `side`) and writes the results.
    fn process(
        &mut self,
        side: Side,
        bufs: &mut [u8],
        lens: &[usize; BATCH],
        idx: &[usize],
        verdicts: &mut [Verdict; BATCH],
    ) {
        let n = idx.len();
        if n == 0 {
            return;
        }
        let queue = match side {
            Side::Inside => &self.inside,
            Side::Outside => &self.outside,
        };
        let now = self.clock.now();
        // What to write of each slot: the engine may change a datagram's length (the lab's
        // host identifier).
        let mut out_lens = *lens;
        {
            // On the stack: the packet path allocates nothing.
            let mut packets: ArrayVec<PacketBuf<'_>, BATCH> = ArrayVec::new();
            let mut rest: &mut [u8] = bufs;
            let mut base = 0;
            for &i in idx {
                // idx is increasing: split off slot i from what is left.
                let (_, tail) = rest.split_at_mut((i - base) * SLOT);
                let (slot, tail) = tail.split_at_mut(SLOT);
                rest = tail;
                base = i + 1;
                packets.push(PacketBuf {
                    buf: slot,
                    len: lens[i],
                });
            }
            self.engine
                .process_batch(now, side, &mut packets, &mut verdicts[..n]);
            for (pkt, &i) in packets.iter().zip(idx) {
                out_lens[i] = pkt.len;
            }
        }
        for (j, &i) in idx.iter().enumerate() {
            let slot = &bufs[i * SLOT..(i + 1) * SLOT];
            let out = match verdicts[j] {
                Verdict::Forward(_) => Some(&slot[..out_lens[i].min(SLOT)]),
                Verdict::Reply { len, .. } => Some(&slot[..len]),
                // A packet that entered or left a DS-Lite softwire.
                Verdict::ForwardAt { start, len, .. } => slot.get(start..start + len),
                // The host's own (a home gateway's address): back to the kernel, which
                // delivers it locally.
                Verdict::ToHost => Some(&slot[..lens[i]]),
                Verdict::Drop(_) | Verdict::Held => None,
            };
            if let Some(pkt) = out {
                write(queue, pkt, &mut self.io);
            }
        }
    }

    /// Applies the engine's offload changes to the fast path's table, a batch per system call.
    /// A change the kernel refuses (a full table) leaves the flow with the slow path, which
    /// carries it as well: the program punts what it does not find.
    fn offload(&mut self) {
        let Some(table) = self.fast_path.as_mut() else {
            return;
        };
        let engine = &mut self.engine;
        self.io.offload_failed += table.apply_all(|| engine.poll_offload());
    }

    /// Writes what the engine built on its own (released fragments, answers to held SYNs).
    fn transmit(&mut self, scratch: &mut [u8]) {
        for _ in 0..TRANSMITS_PER_TURN {
            let Some(t) = self.engine.poll_transmit(scratch) else {
                break;
            };
            // Either TUN will do: the kernel routes by address. Use the one facing the side the
            // packet is for, so rp_filter sees it arrive from the right direction.
            let q = match t.side {
                Side::Inside => &self.outside,
                Side::Outside => &self.inside,
            };
            write(q, &scratch[..t.len], &mut self.io);
        }
    }

    /// What static translations claim, for steering: from the engine's running rules and
    /// virtual servers (none with one worker, where nothing is steered).
    fn static_steer(&self, seed: u64) -> StaticSteer {
        if self.steering.workers() == 1 {
            return StaticSteer::none();
        }
        StaticSteer::new(self.engine.rules(), self.engine.virtual_servers(), seed)
    }

    /// Serves pending commands; whether the rules or virtual servers may have changed.
    fn commands(&mut self) -> bool {
        let mut changed = false;
        for _ in 0..COMMANDS_PER_TURN {
            match self.commands.try_recv() {
                Ok(Command::Snapshot { detail, reply }) => {
                    let tables = matches!(detail, Detail::Sessions(_));
                    if tables && let Some(table) = self.fast_path.as_mut() {
                        let now = self.clock.now();
                        self.engine.refresh_offloaded(&mut table.view(now));
                    }
                    let e = &self.engine;
                    let mut by_proto = [0u64; 3];
                    if detail != Detail::Summary {
                        for s in e.sessions() {
                            by_proto[s.proto.index()] += 1;
                        }
                    }
                    let now = self.clock.now();
                    let snap = WorkerSnapshot {
                        counters: e.counters().clone(),
                        sessions_by_proto: by_proto,
                        sessions: match &detail {
                            Detail::Sessions(q) => q.collect_sessions(e.sessions(), now),
                            _ => SessionList::default(),
                        },
                        mappings: match &detail {
                            Detail::Mappings(q) => q.collect_mappings(e.mappings(), now),
                            _ => MappingList::default(),
                        },
                        pools: e.allocator().usage(),
                        port_sets: e.allocator().port_sets(),
                        offload: e.offload_stats(),
                        session_count: e.session_count(),
                        mapping_count: e.mapping_count(),
                        held_syns: e.held_syn_count(),
                        io: self.io,
                        now,
                        portmap: self
                            .portmap
                            .as_ref()
                            .map(|p| p.counters().clone())
                            .unwrap_or_default(),
                    };
                    // The asker may have given up; nothing to do then.
                    let _ = reply.send(snap);
                }
                Ok(Command::Save { reply }) => {
                    let _ = reply.send(self.engine.save(self.clock.now()));
                }
                Ok(Command::Reload { config, reply }) => {
                    let r = self.engine.reconfigure(&config).map_err(|e| e.to_string());
                    if r.is_ok() {
                        changed = true;
                    }
                    let _ = reply.send(r);
                }
                Ok(Command::Flush { subscriber, reply }) => {
                    let now = self.clock.now();
                    let ended = match subscriber {
                        Some(a) => self.engine.flush_subscriber(a, now),
                        None => self.engine.flush(now),
                    };
                    // Out of the fast path too before the operator is told it is done: a
                    // flow left there would still be carried until the next turn.
                    self.offload();
                    let _ = reply.send(ended);
                }
                Ok(Command::DeleteSession {
                    proto,
                    internal,
                    remote,
                    reply,
                }) => {
                    let r = self
                        .engine
                        .delete_session(proto, internal, remote, self.clock.now());
                    self.offload();
                    let _ = reply.send(r);
                }
                Ok(Command::FlushRule { id, reply }) => {
                    let ended = self.engine.flush_rule_sessions(id, self.clock.now());
                    let _ = reply.send(ended);
                }
                Ok(Command::VirtualServers(c)) => {
                    let now = self.clock.now();
                    changed |= matches!(c, super::vservers::VsCommand::Change { .. });
                    super::vservers::serve(&mut self.engine, c, now, self.id == 0);
                }
                Ok(Command::PortMap {
                    client,
                    request,
                    reply,
                }) => {
                    let answer = self.portmap.as_mut().and_then(|server| {
                        let mut out = [0u8; pcp::MAX_MESSAGE];
                        let now = self.clock.now();
                        match server.handle(now, &mut self.engine, client, &request, &mut out) {
                            Answer::Reply(n) => Some(out[..n].to_vec()),
                            Answer::Drop(_) => None,
                        }
                    });
                    let _ = reply.send(answer);
                }
                Ok(Command::Upnp {
                    client,
                    kind,
                    request,
                    device,
                    reply,
                }) => {
                    let now = self.clock.now();
                    let engine = &mut self.engine;
                    let answer = match self.portmap.as_mut() {
                        None => Vec::new(),
                        Some(server) => match kind {
                            super::upnp::Kind::Ssdp => server
                                .handle_ssdp(now, engine, client, &request, &device)
                                .unwrap_or_default(),
                            super::upnp::Kind::Http => server
                                .handle_http(now, engine, client.addr, &request, &device)
                                .map(|a| vec![a])
                                .unwrap_or_default(),
                        },
                    };
                    let _ = reply.send(answer);
                }
                Ok(Command::Unmap {
                    proto,
                    internal,
                    reply,
                }) => {
                    let now = self.clock.now();
                    let found = self.engine.mappings().find(|m| {
                        m.explicit.is_some() && m.proto == proto && m.internal == internal
                    });
                    if found.is_some() {
                        self.engine.unmap_explicit(now, proto, internal);
                    }
                    let _ = reply.send(found);
                }
                Ok(Command::Whois {
                    external,
                    port,
                    proto,
                    reply,
                }) => {
                    let _ = reply.send(live_holders(&self.engine, external, port, proto));
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        changed
    }
}

/// Who holds `external:port` in `engine` now: the mappings on exactly that endpoint, or else the
/// subscriber whose port block (live or in hold-down) contains it. One pass over the mappings:
/// a control-plane question, never asked on the packet path.
fn live_holders(
    engine: &Engine<ConfiguredAllocator>,
    external: Ipv4Addr,
    port: u16,
    proto: Option<Protocol>,
) -> Vec<LiveHolder> {
    let at = Endpoint::new(external, port);
    let single = PortRange {
        first: port,
        last: port,
    };
    let mappings: Vec<LiveHolder> = engine
        .mappings()
        .filter(|m| m.external == at && proto.is_none_or(|p| p == m.proto))
        .map(|m| LiveHolder {
            subscriber: m.internal.addr,
            ports: single,
            proto: Some(m.proto),
        })
        .collect();
    if !mappings.is_empty() {
        return mappings;
    }
    let blocks = match engine.allocator() {
        ConfiguredAllocator::PortBlock(b) => Some(b),
        ConfiguredAllocator::Deterministic(d) => d.overflow(),
        ConfiguredAllocator::Dynamic(_) => None,
    };
    let Some(blocks) = blocks else {
        return Vec::new();
    };
    let Some(owner) = blocks.owner_of(at) else {
        return Vec::new();
    };
    // Port blocks of softwires are named by their B4, which a holder record has no room for
    // until the daemon serves DS-Lite.
    let natgate_core::alloc::SubscriberId::Ipv4(subscriber) = owner else {
        return Vec::new();
    };
    blocks
        .blocks_of(owner)
        .into_iter()
        .filter(|(addr, range)| *addr == external && range.contains(port))
        .map(|(_, ports)| LiveHolder {
            subscriber,
            ports,
            proto: None,
        })
        .collect()
}

fn write(q: &TunQueue, pkt: &[u8], io: &mut IoCounters) {
    match q.send(pkt) {
        Ok(_) => io.tx_packets += 1,
        // The kernel refused the packet (e.g. no route); count it, keep going.
        Err(_) => io.tx_errors += 1,
    }
}
