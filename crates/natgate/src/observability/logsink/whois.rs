//! Who had an external address and port at a given time: the block log behind
//! `natgate ctl whois <external-address> <port> [--at TIME]`.
//!
//! A carrier must answer "who used 198.51.100.7 port 40123 at 14:02" long after the fact
//! (RFC 6888 section 4, REQ-12 and its logging discussion) without a line per connection. The
//! [`BlockLog`] keeps one fixed-size record per allocation and per release of a port block (or,
//! without blocks, of a mapping's single port) in an append-only file, and an in-memory interval
//! index rebuilt from the file at start. The index holds at most
//! [`BlockLogConfig::max_intervals`] closed intervals (the oldest are dropped from memory, never
//! from the file); a question about a time before what memory holds is answered by reading the
//! file once, in constant memory per matching interval.
//!
//! The daemon answers `whois` from live engine state first ([`WhoisSource::Live`]), then the
//! deterministic formula (RFC 7422, [`WhoisSource::Deterministic`]), then this log
//! ([`WhoisSource::Log`]).
//!
//! File format: an 8-byte magic `NGBLK1\0\0`, then records of [`RECORD_LEN`] bytes, all
//! big-endian: time in ms since the Unix epoch (u64), kind (u8: 1 allocated, 2 released),
//! protocol number (u8, 0 for a block of every protocol), 2 reserved bytes, subscriber address
//! (u32), external address (u32), first port (u16), last port (u16). A torn last record (a
//! crash mid-write) is cut off when the file is opened.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natgate_core::{Event, Protocol};

use super::{LogError, Lost, NatEvent, PortRange, Record, Sink};
use crate::observability::eventlog::{TimeBase, append_whole};

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"NGBLK1\0\0";
/// Bytes per record.
pub const RECORD_LEN: usize = 24;

const KIND_ALLOCATED: u8 = 1;
const KIND_RELEASED: u8 = 2;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhoisSource {
    /// The engines' live mappings or blocks.
    Live,
    /// The deterministic NAT formula (RFC 7422).
    Deterministic,
    /// The block log.
    Log,
}

/// One subscriber that held the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhoisAnswer {
    /// The subscriber (internal address).
    pub subscriber: Ipv4Addr,
    /// The external address asked about.
    pub external: Ipv4Addr,
    /// The block (or single port) that holds the port.
    pub ports: PortRange,
    /// The protocol, or `None` for a block of every protocol.
    pub proto: Option<Protocol>,
    /// Allocated at.
    pub since: SystemTime,
    /// Released at; `None` while still held.
    pub until: Option<SystemTime>,
    /// Where the answer came from.
    pub source: WhoisSource,
}

/// How the block log is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLogConfig {
    /// The append-only file (created owner-only if missing).
    pub path: PathBuf,
    /// Closed intervals kept in memory; older ones are looked up in the file.
    pub max_intervals: usize,
    /// Also log single-port mappings (dynamic NAPT without port blocks). With port blocks this
    /// is off: one record per block is the point.
    pub mappings: bool,
    /// fsync after every batch.
    pub durable: bool,
}

/// The fields of one file record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ms: u64,
    kind: u8,
    proto: u8,
    subscriber: u32,
    external: u32,
    start: u16,
    end: u16,
}

impl Entry {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&self.ms.to_be_bytes());
        b[8] = self.kind;
        b[9] = self.proto;
        b[12..16].copy_from_slice(&self.subscriber.to_be_bytes());
        b[16..20].copy_from_slice(&self.external.to_be_bytes());
        b[20..22].copy_from_slice(&self.start.to_be_bytes());
        b[22..24].copy_from_slice(&self.end.to_be_bytes());
        b
    }

    fn decode(b: &[u8; RECORD_LEN]) -> Option<Entry> {
        let e = Entry {
            ms: u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            kind: b[8],
            proto: b[9],
            subscriber: u32::from_be_bytes([b[12], b[13], b[14], b[15]]),
            external: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            start: u16::from_be_bytes([b[20], b[21]]),
            end: u16::from_be_bytes([b[22], b[23]]),
        };
        let valid = matches!(e.kind, KIND_ALLOCATED | KIND_RELEASED)
            && e.start <= e.end
            && (e.proto == 0 || Protocol::from_ip_number(e.proto).is_some());
        valid.then_some(e)
    }
}

/// What identifies an allocation, so its release can be matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Holding {
    external: u32,
    start: u16,
    end: u16,
    proto: u8,
    subscriber: u32,
}

/// Intervals from allocation to release.
#[derive(Default)]
struct Index {
    /// Held now: since when.
    open: HashMap<Holding, u64>,
    /// Released: (holding, since) -> until.
    closed: BTreeMap<(Holding, u64), u64>,
    /// Closed keys in the order they closed, for eviction.
    order: VecDeque<(Holding, u64)>,
    /// Nothing released before this time (ms) is in memory any more.
    horizon: u64,
    /// Most closed intervals kept; `usize::MAX` when reading the file for one question.
    cap: usize,
}

impl Index {
    fn apply(&mut self, e: &Entry) {
        let h = Holding {
            external: e.external,
            start: e.start,
            end: e.end,
            proto: e.proto,
            subscriber: e.subscriber,
        };
        match e.kind {
            KIND_ALLOCATED => {
                self.open.entry(h).or_insert(e.ms);
            }
            // A release without its allocation (logged before the file began) adds nothing.
            _ => {
                if let Some(since) = self.open.remove(&h) {
                    self.closed.insert((h, since), e.ms);
                    self.order.push_back((h, since));
                    while self.closed.len() > self.cap {
                        let Some(old) = self.order.pop_front() else {
                            break;
                        };
                        if let Some(until) = self.closed.remove(&old) {
                            self.horizon = self.horizon.max(until);
                        }
                    }
                }
            }
        }
    }

    fn answers(&self, addr: u32, port: u16, proto: Option<Protocol>, at: u64) -> Vec<WhoisAnswer> {
        let proto_ok = |p: u8| p == 0 || proto.is_none_or(|q| q.ip_number() == p);
        let covers = |h: &Holding| {
            h.external == addr && h.start <= port && port <= h.end && proto_ok(h.proto)
        };
        let lo = Holding {
            external: addr,
            start: 0,
            end: 0,
            proto: 0,
            subscriber: 0,
        };
        let hi = Holding {
            external: addr,
            start: port,
            end: u16::MAX,
            proto: u8::MAX,
            subscriber: u32::MAX,
        };
        let closed = self
            .closed
            .range((lo, 0)..=(hi, u64::MAX))
            .filter(|((h, since), until)| covers(h) && *since <= at && at < **until)
            .map(|((h, since), until)| answer(h, *since, Some(*until)));
        let open = self
            .open
            .iter()
            .filter(|(h, since)| covers(h) && **since <= at)
            .map(|(h, since)| answer(h, *since, None));
        let mut all: Vec<WhoisAnswer> = closed.chain(open).collect();
        all.sort_by_key(|a| (a.since, a.subscriber));
        all
    }
}

fn answer(h: &Holding, since: u64, until: Option<u64>) -> WhoisAnswer {
    WhoisAnswer {
        subscriber: Ipv4Addr::from(h.subscriber),
        external: Ipv4Addr::from(h.external),
        ports: PortRange {
            first: h.start,
            last: h.end,
        },
        proto: Protocol::from_ip_number(h.proto),
        since: UNIX_EPOCH + Duration::from_millis(since),
        until: until.map(|u| UNIX_EPOCH + Duration::from_millis(u)),
        source: WhoisSource::Log,
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The append-only block log and its index.
pub struct BlockLog {
    file: File,
    config: BlockLogConfig,
    time: TimeBase,
    index: Index,
    pending: Vec<u8>,
}

impl BlockLog {
    /// Opens (or creates) the file and rebuilds the index from it.
    pub fn open(config: BlockLogConfig, time: TimeBase) -> Result<BlockLog, LogError> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&config.path)?;
        let len = file.metadata()?.len();
        if len == 0 {
            file.write_all(MAGIC)?;
        } else {
            let whole = MAGIC.len() as u64
                + len.saturating_sub(MAGIC.len() as u64) / RECORD_LEN as u64 * RECORD_LEN as u64;
            if whole < len {
                // A torn last record: cut it off so the next append starts on a boundary.
                file.set_len(whole)?;
            }
        }
        let mut index = Index {
            cap: config.max_intervals,
            ..Index::default()
        };
        replay(&config.path, &mut index)?;
        Ok(BlockLog {
            file,
            config,
            time,
            index,
            pending: Vec::new(),
        })
    }

    /// Appends an allocation (`allocated`) or a release of `ports` on `external` to the batch.
    pub fn log(
        &mut self,
        at: SystemTime,
        allocated: bool,
        proto: Option<Protocol>,
        subscriber: Ipv4Addr,
        external: Ipv4Addr,
        ports: PortRange,
    ) {
        let e = Entry {
            ms: millis(at),
            kind: if allocated {
                KIND_ALLOCATED
            } else {
                KIND_RELEASED
            },
            proto: proto.map_or(0, |p| p.ip_number()),
            subscriber: u32::from(subscriber),
            external: u32::from(external),
            start: ports.first.min(ports.last),
            end: ports.last.max(ports.first),
        };
        self.pending.extend_from_slice(&e.encode());
        self.index.apply(&e);
    }

    /// Who held `port` of `external` at `at` (every protocol if `proto` is `None`), oldest
    /// allocation first. Usually several answers mean several protocols.
    pub fn whois(
        &self,
        external: Ipv4Addr,
        port: u16,
        proto: Option<Protocol>,
        at: SystemTime,
    ) -> Result<Vec<WhoisAnswer>, LogError> {
        let (addr, at) = (u32::from(external), millis(at));
        if at >= self.index.horizon {
            return Ok(self.index.answers(addr, port, proto, at));
        }
        // Older than memory: read the file for this address only.
        let mut scan = Index {
            cap: usize::MAX,
            ..Index::default()
        };
        replay_filtered(&self.config.path, &mut scan, |e| {
            e.external == addr && e.start <= port && port <= e.end
        })?;
        Ok(scan.answers(addr, port, proto, at))
    }

    /// Closed intervals held in memory.
    pub fn intervals_in_memory(&self) -> usize {
        self.index.closed.len()
    }
}

/// A [`BlockLog`] shared by the logger thread (as a [`Sink`]) and the control thread (for
/// `whois`). The logger holds the lock for one event or one flush at a time.
#[derive(Clone)]
pub struct SharedBlockLog(Arc<Mutex<BlockLog>>);

impl SharedBlockLog {
    /// Shares `log`.
    pub fn new(log: BlockLog) -> Self {
        SharedBlockLog(Arc::new(Mutex::new(log)))
    }

    fn lock(&self) -> Result<MutexGuard<'_, BlockLog>, LogError> {
        self.0.lock().map_err(|_| LogError::Poisoned)
    }

    /// [`BlockLog::whois`] under the lock.
    pub fn whois(
        &self,
        external: Ipv4Addr,
        port: u16,
        proto: Option<Protocol>,
        at: SystemTime,
    ) -> Result<Vec<WhoisAnswer>, LogError> {
        self.lock()?.whois(external, port, proto, at)
    }
}

impl Sink for SharedBlockLog {
    fn name(&self) -> &'static str {
        "block-log"
    }

    fn record(&mut self, ev: &Event) -> Result<(), Lost> {
        self.lock().map_err(|e| Lost::new(1, e))?.record(ev)
    }

    fn flush(&mut self) -> Result<(), Lost> {
        // A poisoned lock loses what the batch held; how much is behind the lock.
        self.lock().map_err(|e| Lost::new(0, e))?.flush()
    }
}

fn replay(path: &Path, index: &mut Index) -> Result<(), LogError> {
    replay_filtered(path, index, |_| true)
}

fn replay_filtered(
    path: &Path,
    index: &mut Index,
    keep: impl Fn(&Entry) -> bool,
) -> Result<(), LogError> {
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let mut r = BufReader::with_capacity(1 << 16, File::open(path)?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(corrupt("not a natgate block log (bad magic)".into()));
    }
    let mut buf = [0u8; RECORD_LEN];
    let mut n = 0u64;
    loop {
        match r.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let e = Entry::decode(&buf).ok_or_else(|| corrupt(format!("record {n} is invalid")))?;
        if keep(&e) {
            index.apply(&e);
        }
        n += 1;
    }
}

impl Sink for BlockLog {
    fn name(&self) -> &'static str {
        "block-log"
    }

    fn record(&mut self, ev: &Event) -> Result<(), Lost> {
        let rec = Record::from_event(ev);
        let at = self.time.to_system(rec.at);
        let Some(x) = rec.external else {
            return Ok(());
        };
        let single = PortRange {
            first: x.port,
            last: x.port,
        };
        match rec.event {
            NatEvent::PortBlockAllocation | NatEvent::PortBlockDeallocation => {
                let ports = rec.block.unwrap_or(single);
                let allocated = rec.event == NatEvent::PortBlockAllocation;
                self.log(at, allocated, rec.proto, rec.subscriber(), x.addr, ports);
            }
            NatEvent::Nat44BibCreate | NatEvent::Nat44BibDelete if self.config.mappings => {
                let allocated = rec.event == NatEvent::Nat44BibCreate;
                self.log(at, allocated, rec.proto, rec.subscriber(), x.addr, single);
            }
            NatEvent::Nat44BibCreate
            | NatEvent::Nat44BibDelete
            | NatEvent::Nat44SessionCreate
            | NatEvent::Nat44SessionDelete
            | NatEvent::AddressesExhausted
            | NatEvent::QuotaExceeded => {}
        }
        Ok(())
    }

    /// Appends the batch's records whole or not at all: a full disk cuts the file back to
    /// the last whole record, so it stays aligned, and the rest are counted lost.
    fn flush(&mut self) -> Result<(), Lost> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let records = (self.pending.len() / RECORD_LEN) as u64;
        let written = append_whole(&mut self.file, &self.pending, |b| {
            b.len() / RECORD_LEN * RECORD_LEN
        });
        self.pending.clear();
        if let Err(s) = written {
            return Err(Lost::new(records - (s.kept / RECORD_LEN) as u64, s.error));
        }
        if self.config.durable {
            self.file.sync_data().map_err(|e| Lost::new(records, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::logsink::LossReason;
    use natgate_core::{Endpoint, Instant};

    const SUB_A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const SUB_B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_000_000 + s)
    }

    fn block(start: u16, end: u16) -> PortRange {
        PortRange {
            first: start,
            last: end,
        }
    }

    fn config(dir: &Path, max_intervals: usize) -> BlockLogConfig {
        BlockLogConfig {
            path: dir.join("blocks.log"),
            max_intervals,
            mappings: true,
            durable: false,
        }
    }

    fn base() -> TimeBase {
        TimeBase::new(Instant::ZERO, t(0))
    }

    fn who(log: &BlockLog, port: u16, at: u64) -> Vec<Ipv4Addr> {
        log.whois(EXT, port, None, t(at))
            .expect("whois")
            .iter()
            .map(|a| a.subscriber)
            .collect()
    }

    #[test]
    fn answers_by_time_and_port_at_the_interval_edges() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = BlockLog::open(config(dir.path(), 100), base()).expect("open");
        // A holds 40000-40511 from 100 s to 200 s; B gets it from 300 s on.
        log.log(t(100), true, None, SUB_A, EXT, block(40000, 40511));
        log.log(t(200), false, None, SUB_A, EXT, block(40000, 40511));
        log.log(t(300), true, None, SUB_B, EXT, block(40000, 40511));
        log.flush().expect("flush");
        assert_eq!(who(&log, 40123, 99), [Ipv4Addr::UNSPECIFIED; 0]);
        assert_eq!(who(&log, 40123, 100), [SUB_A]);
        assert_eq!(who(&log, 40511, 199), [SUB_A]);
        assert_eq!(who(&log, 40512, 150), [Ipv4Addr::UNSPECIFIED; 0]);
        assert_eq!(who(&log, 39999, 150), [Ipv4Addr::UNSPECIFIED; 0]);
        assert_eq!(who(&log, 40123, 200), [Ipv4Addr::UNSPECIFIED; 0]);
        assert_eq!(who(&log, 40000, 300), [SUB_B]);
        let a = log.whois(EXT, 40123, None, t(150)).expect("whois")[0];
        assert_eq!(
            a,
            WhoisAnswer {
                subscriber: SUB_A,
                external: EXT,
                ports: block(40000, 40511),
                proto: None,
                since: t(100),
                until: Some(t(200)),
                source: WhoisSource::Log,
            }
        );
        assert_eq!(
            log.whois(EXT, 40000, None, t(400)).expect("whois")[0].until,
            None
        );
        assert!(
            log.whois(Ipv4Addr::new(198, 51, 100, 8), 40123, None, t(150))
                .expect("whois")
                .is_empty()
        );
    }

    /// A full disk leaves whole records only, so the file stays aligned and readable, and
    /// every record that did not get in is counted.
    #[test]
    fn a_full_disk_leaves_whole_records_and_counts_the_rest() {
        const BLOCKS: u64 = 2000;
        let Some((len, lost, intervals)) = crate::testutil::on_a_small_tmpfs(|dir| {
            let cfg = config(dir, 100);
            let mut log = BlockLog::open(cfg.clone(), base()).expect("open");
            let mut lost = 0;
            for n in 0..BLOCKS {
                let first = 1024 + (n as u16 % 60) * 1000;
                log.log(t(n), true, None, SUB_A, EXT, block(first, first + 999));
                if n % 5 == 4
                    && let Err(e) = Sink::flush(&mut log)
                {
                    assert_eq!(LossReason::of(&e.source), LossReason::NoSpace, "{e}");
                    lost += e.events;
                }
            }
            let len = std::fs::metadata(&cfg.path).expect("stat").len();
            // Reopening reads every record: none is torn.
            let reread = BlockLog::open(cfg, base()).expect("reopen");
            (len, lost, reread.index.open.len())
        }) else {
            return;
        };
        assert!(lost > 0, "the disk filled up");
        let records = (len - MAGIC.len() as u64) / RECORD_LEN as u64;
        assert_eq!(MAGIC.len() as u64 + records * RECORD_LEN as u64, len);
        assert_eq!(records + lost, BLOCKS);
        assert!(intervals > 0);
    }

    #[test]
    fn the_index_is_rebuilt_from_the_file_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), 100);
        {
            let mut log = BlockLog::open(cfg.clone(), base()).expect("open");
            log.log(
                t(10),
                true,
                Some(Protocol::Tcp),
                SUB_A,
                EXT,
                block(5000, 5000),
            );
            log.log(
                t(20),
                false,
                Some(Protocol::Tcp),
                SUB_A,
                EXT,
                block(5000, 5000),
            );
            log.log(
                t(30),
                true,
                Some(Protocol::Udp),
                SUB_B,
                EXT,
                block(5000, 5000),
            );
            log.flush().expect("flush");
        }
        let len = std::fs::metadata(&cfg.path).expect("stat").len();
        assert_eq!(len, 8 + 3 * RECORD_LEN as u64);
        // Half a record, as a crash mid-write would leave.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&cfg.path)
            .expect("open");
        f.write_all(&[1; 10]).expect("write");
        drop(f);
        let mut log = BlockLog::open(cfg.clone(), base()).expect("reopen");
        assert_eq!(std::fs::metadata(&cfg.path).expect("stat").len(), len);
        assert_eq!(who(&log, 5000, 15), [SUB_A]);
        // Per protocol: TCP 5000 was free at 35 s, UDP 5000 was B's.
        let tcp = log
            .whois(EXT, 5000, Some(Protocol::Tcp), t(35))
            .expect("whois");
        assert!(tcp.is_empty());
        let udp = log
            .whois(EXT, 5000, Some(Protocol::Udp), t(35))
            .expect("whois");
        assert_eq!(udp[0].subscriber, SUB_B);
        // Appending after the reopen stays aligned.
        log.log(
            t(40),
            false,
            Some(Protocol::Udp),
            SUB_B,
            EXT,
            block(5000, 5000),
        );
        log.flush().expect("flush");
        let log = BlockLog::open(cfg, base()).expect("reopen");
        assert_eq!(who(&log, 5000, 45), [Ipv4Addr::UNSPECIFIED; 0]);
        assert_eq!(who(&log, 5000, 35), [SUB_B]);
    }

    #[test]
    fn memory_is_bounded_and_old_questions_read_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = BlockLog::open(config(dir.path(), 10), base()).expect("open");
        for n in 0..100u64 {
            let sub = Ipv4Addr::from(u32::from(SUB_A) + n as u32);
            log.log(t(n * 10), true, None, sub, EXT, block(2048, 2559));
            log.log(t(n * 10 + 5), false, None, sub, EXT, block(2048, 2559));
        }
        log.flush().expect("flush");
        assert_eq!(log.intervals_in_memory(), 10);
        // Recent: from memory. Old: from the file. Both right.
        assert_eq!(
            who(&log, 2100, 992),
            [Ipv4Addr::from(u32::from(SUB_A) + 99)]
        );
        assert_eq!(who(&log, 2100, 12), [Ipv4Addr::from(u32::from(SUB_A) + 1)]);
        assert_eq!(who(&log, 2100, 17), [Ipv4Addr::UNSPECIFIED; 0]);
        let log = BlockLog::open(config(dir.path(), 10), base()).expect("reopen");
        assert_eq!(log.intervals_in_memory(), 10);
        assert_eq!(who(&log, 2100, 3), [SUB_A]);
    }

    #[test]
    fn as_a_sink_it_logs_mappings_only_when_asked_and_never_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let i = Endpoint::new(SUB_A, 5000);
        let x = Endpoint::new(EXT, 40000);
        let r = Endpoint::new(Ipv4Addr::new(203, 0, 113, 1), 53);
        let proto = Protocol::Udp;
        let events = [
            Event::MappingCreated {
                at: Instant::from_secs(10),
                proto,
                internal: i,
                external: x,
            },
            Event::SessionCreated {
                at: Instant::from_secs(10),
                proto,
                internal: i,
                external: x,
                remote: r,
                origin: natgate_core::SessionOrigin::Dynamic,
            },
            Event::MappingDeleted {
                at: Instant::from_secs(20),
                proto,
                internal: i,
                external: x,
                reason: natgate_core::EndReason::Expired,
            },
        ];
        for mappings in [true, false] {
            let cfg = BlockLogConfig {
                mappings,
                ..config(dir.path(), 10)
            };
            let _ = std::fs::remove_file(&cfg.path);
            let mut log = BlockLog::open(cfg.clone(), base()).expect("open");
            for e in &events {
                log.record(e).expect("record");
            }
            log.flush().expect("flush");
            let records = (std::fs::metadata(&cfg.path).expect("stat").len() - 8) / 24;
            assert_eq!(records, if mappings { 2 } else { 0 });
            let want: &[Ipv4Addr] = if mappings { &[SUB_A] } else { &[] };
            assert_eq!(who(&log, 40000, 15), want);
        }
    }

    #[test]
    fn shared_through_the_pipeline_and_asked_from_another_thread() {
        use crate::observability::logsink::{LogPipeline, PipelineConfig};
        let dir = tempfile::tempdir().expect("tempdir");
        let shared =
            SharedBlockLog::new(BlockLog::open(config(dir.path(), 10), base()).expect("open"));
        let (tx, handle) = LogPipeline::start(PipelineConfig {
            capacity: 16,
            max_batch: 16,
            sinks: vec![Box::new(shared.clone())],
        })
        .expect("start");
        let (internal, external) = (Endpoint::new(SUB_A, 5000), Endpoint::new(EXT, 40123));
        let proto = Protocol::Udp;
        assert!(tx.send(Event::MappingCreated {
            at: Instant::from_secs(100),
            proto,
            internal,
            external
        }));
        assert!(tx.send(Event::MappingDeleted {
            at: Instant::from_secs(200),
            proto,
            internal,
            external,
            reason: natgate_core::EndReason::Expired,
        }));
        assert_eq!(handle.shutdown().expect("shutdown").sink_errors, 0);
        let asked =
            std::thread::spawn(move || shared.whois(EXT, 40123, Some(Protocol::Udp), t(150)));
        let answers = asked.join().expect("join").expect("whois");
        assert_eq!(answers.len(), 1);
        assert_eq!(
            (answers[0].subscriber, answers[0].since, answers[0].until),
            (SUB_A, t(100), Some(t(200)))
        );
        assert_eq!(answers[0].proto, Some(Protocol::Udp));
    }

    #[test]
    fn a_foreign_or_damaged_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path(), 10);
        std::fs::write(&cfg.path, b"hello world, not a block log").expect("write");
        assert!(matches!(
            BlockLog::open(cfg.clone(), base()),
            Err(LogError::Corrupt { .. })
        ));
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[9u8; RECORD_LEN]);
        std::fs::write(&cfg.path, bytes).expect("write");
        assert!(matches!(
            BlockLog::open(cfg, base()),
            Err(LogError::Corrupt { .. })
        ));
    }
}
