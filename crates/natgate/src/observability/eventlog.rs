//! Translation logs: the engine's [`Event`]s as JSON lines, to stdout or to a file with
//! size-based rotation.
//!
//! One line per event, e.g.
//! `{"ts":"2026-11-21T16:14:30.123Z","event":"session-created","proto":"udp","internal":"100.64.0.10:5000","external":"198.51.100.1:40000","origin":"dynamic"}`.
//! The remote endpoint is left out unless [`EventLogOptions::log_destinations`] is set: RFC 6888
//! REQ-12 asks a CGN not to log destinations by default, for the subscribers' privacy.
//!
//! The driver calls [`EventSink::record`] for each event it drains from an engine and
//! [`EventSink::flush`] once per batch; nothing is guaranteed to be written before the flush.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natgate_core::{Endpoint, Event, Instant, Protocol};
use serde::Serialize;

/// Maps the engine's relative [`Instant`]s to wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBase {
    origin: Instant,
    at: SystemTime,
}

impl TimeBase {
    /// `engine_now` and `wall_now` are the same moment, read from the daemon's two clocks.
    pub fn new(engine_now: Instant, wall_now: SystemTime) -> Self {
        TimeBase {
            origin: engine_now,
            at: wall_now,
        }
    }

    /// The wall-clock time of `t`.
    pub fn to_system(&self, t: Instant) -> SystemTime {
        if t >= self.origin {
            self.at + t.saturating_since(self.origin)
        } else {
            let back = self.origin.saturating_since(t);
            self.at.checked_sub(back).unwrap_or(UNIX_EPOCH)
        }
    }
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's standard output.
    Stdout,
    /// A file, appended to (created owner-only if missing) and rotated by size.
    File {
        /// The file.
        path: PathBuf,
        /// When to rotate and how many old files to keep.
        rotation: Rotation,
    },
}

/// Size-based rotation: when the next line would take the file past `max_bytes`, it is renamed
/// to `.1` (`.1` to `.2`, and so on, the oldest beyond `keep` deleted) and a new file started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The most a file may grow to; 0 never rotates. A single line longer than this still goes
    /// into a file of its own.
    pub max_bytes: u64,
    /// Old files kept (`path.1` newest ... `path.keep` oldest); 0 keeps none.
    pub keep: u32,
}

/// What goes into each line and how hard to push it to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventLogOptions {
    /// Log remote endpoints too (RFC 6888 REQ-12: off unless the operator asks).
    pub log_destinations: bool,
    /// fsync the file after every batch, so a logged event survives a power cut.
    pub durable: bool,
}

/// Most `write` calls for one append (each writes at least a byte or fails).
const MAX_WRITES: usize = 1 << 16;

/// An append that could not be completed: the file was cut back to `kept` bytes of what was
/// given, all of them whole records.
#[derive(Debug)]
pub struct ShortWrite {
    /// Bytes of the append left in the file: whole records only.
    pub kept: usize,
    /// Why the rest was not written.
    pub error: io::Error,
}

/// Appends `bytes` (whole records) to `file`, opened for appending, and leaves whole records
/// or nothing: on a failed or short write (a full disk) the file is cut back to the end of
/// the last whole record written, `whole(written)` giving the length of the whole records of
/// a written prefix.
pub fn append_whole(
    file: &mut std::fs::File,
    bytes: &[u8],
    whole: impl Fn(&[u8]) -> usize,
) -> Result<(), ShortWrite> {
    let mut done = 0;
    let mut error = None;
    for _ in 0..MAX_WRITES {
        if done == bytes.len() {
            break;
        }
        match file.write(&bytes[done..]) {
            Ok(0) => error = Some(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => error = Some(e),
        }
        if error.is_some() {
            break;
        }
    }
    if done < bytes.len() && error.is_none() {
        error = Some(io::Error::from(io::ErrorKind::WriteZero));
    }
    let Some(error) = error else {
        return Ok(());
    };
    let kept = whole(&bytes[..done]);
    if kept < done {
        let cut = (done - kept) as u64;
        let len = file
            .metadata()
            .map_err(|e| ShortWrite {
                kept: done,
                error: e,
            })?
            .len();
        if let Err(e) = file.set_len(len.saturating_sub(cut)) {
            return Err(ShortWrite {
                kept: done,
                error: e,
            });
        }
    }
    Err(ShortWrite { kept, error })
}

/// Lines that did not reach the output, and why.
#[derive(Debug, thiserror::Error)]
#[error("{lines} log lines lost: {source}")]
pub struct LinesLost {
    /// How many lines (events) were lost.
    pub lines: u64,
    /// The error.
    #[source]
    pub source: io::Error,
}

/// The length of the whole lines at the start of `b`.
fn whole_lines(b: &[u8]) -> usize {
    b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1)
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

/// Writes events as JSON lines.
pub struct EventSink {
    out: Output,
    time: TimeBase,
    opts: EventLogOptions,
    /// Lines of the current batch not yet handed to the output.
    pending: Vec<u8>,
    /// Lines in `pending`.
    pending_lines: u64,
    /// Lines recorded since the last flush (lost if the flush's sync fails).
    batch_lines: u64,
}

/// A batch this large is written out early, so that memory stays bounded.
const PENDING_LIMIT: usize = 1 << 20;

enum Output {
    File(LogFile),
    Writer(Box<dyn Write + Send>),
}

struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes in the current file.
    size: u64,
    rotation: Rotation,
}

impl LogFile {
    fn open(path: &Path, rotation: Rotation) -> io::Result<LogFile> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
        })
    }

    /// Appends whole lines; a full disk leaves whole lines only (no cut-off record).
    fn write(&mut self, bytes: &[u8]) -> Result<(), ShortWrite> {
        let r = append_whole(&mut self.file, bytes, whole_lines);
        self.size += match &r {
            Ok(()) => bytes.len(),
            Err(s) => s.kept,
        } as u64;
        r
    }

    /// Whether adding `line` bytes to the file and its `pending` bytes would pass the limit.
    /// An empty file takes any line, so that an oversized line cannot rotate forever.
    fn full(&self, pending: usize, line: usize) -> bool {
        let used = self.size + pending as u64;
        self.rotation.max_bytes > 0 && used > 0 && used + line as u64 > self.rotation.max_bytes
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// Shifts the old files up by one, moves the current one to `.1`, and starts a new one.
    fn rotate(&mut self, durable: bool) -> io::Result<()> {
        if durable {
            self.file.sync_data()?;
        }
        let keep = self.rotation.keep;
        if keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            ignore_missing(std::fs::remove_file(self.numbered(keep)))?;
            for n in (1..keep).rev() {
                ignore_missing(std::fs::rename(self.numbered(n), self.numbered(n + 1)))?;
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        *self = LogFile::open(&self.path, self.rotation)?;
        Ok(())
    }
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl EventSink {
    /// A sink writing to `dest`; a file is opened (created if missing) now.
    pub fn open(dest: &Destination, time: TimeBase, opts: EventLogOptions) -> io::Result<Self> {
        let out = match dest {
            Destination::Stdout => Output::Writer(Box::new(io::stdout())),
            Destination::File { path, rotation } => Output::File(LogFile::open(path, *rotation)?),
        };
        Ok(EventSink {
            out,
            time,
            opts,
            pending: Vec::new(),
            pending_lines: 0,
            batch_lines: 0,
        })
    }

    /// A sink writing to any writer (a pipe, a buffer); never rotated, `durable` ignored.
    pub fn with_writer(
        w: impl Write + Send + 'static,
        time: TimeBase,
        opts: EventLogOptions,
    ) -> Self {
        EventSink {
            out: Output::Writer(Box::new(w)),
            time,
            opts,
            pending: Vec::new(),
            pending_lines: 0,
            batch_lines: 0,
        }
    }

    /// What goes into each line and whether every flush syncs.
    pub fn options(&self) -> EventLogOptions {
        self.opts
    }

    /// The file's rotation; `None` for standard output or a writer, which are never rotated.
    pub fn rotation(&self) -> Option<Rotation> {
        match &self.out {
            Output::File(f) => Some(f.rotation),
            Output::Writer(_) => None,
        }
    }

    /// Adds one event to the current batch. An error says how many lines were lost.
    pub fn record(&mut self, ev: &Event) -> Result<(), LinesLost> {
        let mut line = serde_json::to_vec(&Line::new(ev, &self.time, self.opts.log_destinations))
            .map_err(|e| LinesLost {
            lines: 1,
            source: io::Error::other(e),
        })?;
        line.push(b'\n');
        let rotate = matches!(&self.out, Output::File(f) if f.full(self.pending.len(), line.len()));
        if rotate {
            self.write_pending()?;
            if let Output::File(f) = &mut self.out {
                f.rotate(self.opts.durable)
                    .map_err(|source| LinesLost { lines: 1, source })?;
            }
        }
        self.pending.extend_from_slice(&line);
        self.pending_lines += 1;
        self.batch_lines += 1;
        if self.pending.len() >= PENDING_LIMIT {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Hands `pending` to the output; the lines that did not get there are lost.
    fn write_pending(&mut self) -> Result<(), LinesLost> {
        let lines = std::mem::take(&mut self.pending_lines);
        let r = match &mut self.out {
            Output::File(f) => f.write(&self.pending).map_err(|s| LinesLost {
                lines: lines - count_lines(&self.pending[..s.kept]),
                source: s.error,
            }),
            Output::Writer(w) => w
                .write_all(&self.pending)
                .map_err(|source| LinesLost { lines, source }),
        };
        self.pending.clear();
        r
    }

    /// Writes the batch out (and fsyncs it if `durable`). Call once per batch of events.
    pub fn flush(&mut self) -> Result<(), LinesLost> {
        let batch = std::mem::take(&mut self.batch_lines);
        self.write_pending()?;
        match &mut self.out {
            Output::File(f) if self.opts.durable => f.file.sync_data(),
            Output::File(f) => f.file.flush(),
            Output::Writer(w) => w.flush(),
        }
        .map_err(|source| LinesLost {
            lines: batch,
            source,
        })
    }
}

/// One log line. Port-block records have no protocol (a block serves all of them); their
/// `internal` is the subscriber and `external` is `ADDRESS:FIRST-LAST`.
#[derive(Serialize)]
struct Line {
    ts: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<Protocol>,
    internal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    external: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<String>,
    /// Why a mapping failed: the drop counter's name (a quota, or the pool running out); why a
    /// session or mapping ended: `expired`, `operator` or `unused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// What made a session (session events only), named as `ctl sessions` names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
}

impl Line {
    fn new(ev: &Event, time: &TimeBase, log_destinations: bool) -> Self {
        let (at, event, proto, internal, external, remote): (
            Instant,
            &'static str,
            Option<Protocol>,
            String,
            Option<String>,
            Option<Endpoint>,
        ) = match *ev {
            Event::MappingCreated {
                at,
                proto,
                internal,
                external,
            } => (
                at,
                "mapping-created",
                Some(proto),
                internal.to_string(),
                Some(external.to_string()),
                None,
            ),
            Event::MappingDeleted {
                at,
                proto,
                internal,
                external,
                reason: _,
            } => (
                at,
                "mapping-deleted",
                Some(proto),
                internal.to_string(),
                Some(external.to_string()),
                None,
            ),
            Event::SessionCreated {
                at,
                proto,
                internal,
                external,
                remote,
                origin: _,
            } => (
                at,
                "session-created",
                Some(proto),
                internal.to_string(),
                Some(external.to_string()),
                Some(remote),
            ),
            Event::SessionDeleted {
                at,
                proto,
                internal,
                external,
                remote,
                origin: _,
                reason: _,
            } => (
                at,
                "session-deleted",
                Some(proto),
                internal.to_string(),
                Some(external.to_string()),
                Some(remote),
            ),
            Event::ExplicitMappingCreated {
                at,
                proto,
                internal,
                external,
                origin: _,
            } => (
                at,
                "explicit-mapping-created",
                Some(proto),
                internal.to_string(),
                Some(external.to_string()),
                None,
            ),
            Event::ExplicitMappingDeleted {
                at,
                proto,
                internal,
                external,
                origin: _,
            } => (
                at,
                "explicit-mapping-deleted",
                Some(proto),
                internal.to_string(),
                Some(external.to_string()),
                None,
            ),
            Event::MappingFailed {
                at,
                proto,
                internal,
                remote,
                reason: _,
            } => (
                at,
                "mapping-failed",
                Some(proto),
                internal.to_string(),
                None,
                Some(remote),
            ),
            Event::PortBlockAllocated {
                at,
                subscriber,
                external,
                ports,
            } => (
                at,
                "port-block-allocated",
                None,
                subscriber.to_string(),
                Some(format!("{external}:{ports}")),
                None,
            ),
            Event::PortBlockReleased {
                at,
                subscriber,
                external,
                ports,
            } => (
                at,
                "port-block-released",
                None,
                subscriber.to_string(),
                Some(format!("{external}:{ports}")),
                None,
            ),
        };
        Line {
            ts: rfc3339(time.to_system(at)),
            event,
            proto,
            internal,
            external,
            remote: remote.filter(|_| log_destinations).map(|e| e.to_string()),
            reason: match *ev {
                Event::MappingFailed { reason, .. } => Some(reason.name()),
                Event::SessionDeleted { reason, .. } | Event::MappingDeleted { reason, .. } => {
                    Some(reason.name())
                }
                _ => None,
            },
            origin: match *ev {
                Event::SessionCreated { origin, .. } | Event::SessionDeleted { origin, .. } => {
                    Some(origin.to_string())
                }
                Event::ExplicitMappingCreated { origin, .. }
                | Event::ExplicitMappingDeleted { origin, .. } => Some(origin.to_string()),
                _ => None,
            },
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC; times before 1970 show as the epoch.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days(secs / 86400);
    let s = secs % 86400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// `civil_from_days` (eras of 400 years, March-based years so leap days come last).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::{Arc, Mutex};

    fn ep(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::from(a), port)
    }

    fn base() -> TimeBase {
        // Engine time 10 s is 2026-11-22T16:14:30.123Z.
        TimeBase::new(
            Instant::from_secs(10),
            UNIX_EPOCH + Duration::from_millis(1_795_364_070_123),
        )
    }

    fn session_created(at_ms: u64) -> Event {
        Event::SessionCreated {
            at: Instant::from_millis(at_ms),
            proto: Protocol::Udp,
            internal: ep([100, 64, 0, 10], 5000),
            external: ep([198, 51, 100, 1], 40000),
            remote: ep([203, 0, 113, 10], 3478),
            origin: natgate_core::SessionOrigin::Dynamic,
        }
    }

    /// A full disk cuts no record: the file holds whole lines only, and every line that did
    /// not get in is counted, by the call that lost it.
    #[test]
    fn a_full_disk_leaves_whole_lines_and_counts_the_rest() {
        const EVENTS: u64 = 2000;
        let Some((kept, lost, text)) = crate::testutil::on_a_small_tmpfs(|dir| {
            let path = dir.join("events.jsonl");
            let dest = Destination::File {
                path: path.clone(),
                rotation: Rotation {
                    max_bytes: 0,
                    keep: 0,
                },
            };
            let mut sink =
                EventSink::open(&dest, base(), EventLogOptions::default()).expect("open");
            let mut lost = 0;
            for n in 0..EVENTS {
                if let Err(e) = sink.record(&session_created(10_000 + n)) {
                    lost += e.lines;
                }
                if n % 7 == 6
                    && let Err(e) = sink.flush()
                {
                    assert_eq!(e.source.raw_os_error(), Some(libc::ENOSPC), "{e}");
                    lost += e.lines;
                }
            }
            if let Err(e) = sink.flush() {
                lost += e.lines;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            (text.lines().count() as u64, lost, text)
        }) else {
            return;
        };
        assert!(lost > 0, "the disk filled up");
        assert_eq!(kept + lost, EVENTS);
        assert!(text.ends_with('\n'));
        for l in text.lines() {
            serde_json::from_str::<serde_json::Value>(l).expect("a whole record");
        }
    }

    /// A writer whose contents the test can read while the sink owns it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    #[test]
    fn port_block_records_have_subscriber_and_range_but_no_protocol() {
        use natgate_core::alloc::{PortRange, SubscriberId};
        let ev = Event::PortBlockAllocated {
            at: Instant::from_secs(10),
            subscriber: SubscriberId::Ipv4(Ipv4Addr::new(100, 64, 0, 10)),
            external: Ipv4Addr::new(198, 51, 100, 1),
            ports: PortRange {
                first: 1536,
                last: 2047,
            },
        };
        let line = serde_json::to_string(&Line::new(&ev, &base(), false)).expect("json");
        assert_eq!(
            line,
            r#"{"ts":"2026-11-22T16:14:30.123Z","event":"port-block-allocated","internal":"100.64.0.10","external":"198.51.100.1:1536-2047"}"#
        );
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_500)),
            "2000-02-29T00:00:00.500Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
            "2100-01-01T00:00:00.000Z"
        );
        let b = base();
        assert_eq!(
            rfc3339(b.to_system(Instant::from_secs(10))),
            "2026-11-22T16:14:30.123Z"
        );
        assert_eq!(
            rfc3339(b.to_system(Instant::from_millis(11_500))),
            "2026-11-22T16:14:31.623Z"
        );
        assert_eq!(
            rfc3339(b.to_system(Instant::ZERO)),
            "2026-11-22T16:14:20.123Z"
        );
    }

    #[test]
    fn lines_match_the_documented_shape_and_hide_destinations_by_default() {
        let buf = Shared::default();
        let mut sink = EventSink::with_writer(buf.clone(), base(), EventLogOptions::default());
        sink.record(&session_created(10_000)).expect("record");
        sink.record(&Event::MappingFailed {
            at: Instant::from_secs(10),
            proto: Protocol::Tcp,
            internal: ep([100, 64, 0, 11], 6000),
            remote: ep([203, 0, 113, 10], 80),
            reason: natgate_core::DropReason::SubscriberSessionLimit,
        })
        .expect("record");
        // Batched: nothing is written before the flush.
        assert_eq!(buf.text(), "");
        sink.flush().expect("flush");
        assert_eq!(
            buf.text(),
            concat!(
                r#"{"ts":"2026-11-22T16:14:30.123Z","event":"session-created","proto":"udp","internal":"100.64.0.10:5000","external":"198.51.100.1:40000","origin":"dynamic"}"#,
                "\n",
                r#"{"ts":"2026-11-22T16:14:30.123Z","event":"mapping-failed","proto":"tcp","internal":"100.64.0.11:6000","reason":"subscriber_session_limit"}"#,
                "\n"
            )
        );
    }

    #[test]
    fn every_event_kind_has_its_name_and_destinations_when_asked() {
        let buf = Shared::default();
        let opts = EventLogOptions {
            log_destinations: true,
            durable: false,
        };
        let mut sink = EventSink::with_writer(buf.clone(), base(), opts);
        let (i, x, r) = (
            ep([100, 64, 0, 10], 1),
            ep([198, 51, 100, 1], 2),
            ep([203, 0, 113, 1], 3),
        );
        let at = Instant::from_secs(10);
        let p = Protocol::Icmp;
        let events = [
            Event::MappingCreated {
                at,
                proto: p,
                internal: i,
                external: x,
            },
            Event::MappingDeleted {
                at,
                proto: p,
                internal: i,
                external: x,
                reason: natgate_core::EndReason::Expired,
            },
            Event::SessionCreated {
                at,
                proto: p,
                internal: i,
                external: x,
                remote: r,
                origin: natgate_core::SessionOrigin::Dynamic,
            },
            Event::SessionDeleted {
                at,
                proto: p,
                internal: i,
                external: x,
                remote: r,
                origin: natgate_core::SessionOrigin::Dynamic,
                reason: natgate_core::EndReason::Operator,
            },
            Event::MappingFailed {
                at,
                proto: p,
                internal: i,
                remote: r,
                reason: natgate_core::DropReason::MappingFailed,
            },
        ];
        for e in &events {
            sink.record(e).expect("record");
        }
        sink.flush().expect("flush");
        let lines: Vec<serde_json::Value> = buf
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        let names: Vec<&str> = lines
            .iter()
            .map(|l| l["event"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "mapping-created",
                "mapping-deleted",
                "session-created",
                "session-deleted",
                "mapping-failed"
            ]
        );
        assert_eq!(lines[2]["remote"], "203.0.113.1:3");
        // Why each ended; nothing for a creation.
        assert_eq!(lines[1]["reason"], "expired");
        assert_eq!(lines[3]["reason"], "operator");
        assert!(lines[2].get("reason").is_none());
        assert_eq!(lines[4]["remote"], "203.0.113.1:3");
        assert!(lines[0].get("remote").is_none());
        assert!(lines[4].get("external").is_none());
        assert!(lines.iter().all(|l| l["proto"] == "icmp"));
    }

    fn read_lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    #[test]
    fn file_rotates_by_size_and_keeps_n_old_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let line_len = {
            let buf = Shared::default();
            let mut s = EventSink::with_writer(buf.clone(), base(), EventLogOptions::default());
            s.record(&session_created(10_000)).expect("record");
            s.flush().expect("flush");
            buf.text().len() as u64
        };
        let rotation = Rotation {
            max_bytes: 3 * line_len,
            keep: 2,
        };
        let dest = Destination::File {
            path: path.clone(),
            rotation,
        };
        let opts = EventLogOptions {
            log_destinations: false,
            durable: true,
        };
        let mut sink = EventSink::open(&dest, base(), opts).expect("open");
        // 10 events, flushed in batches of 4: files of 3 lines; the oldest beyond .2 are gone.
        for n in 0..10u64 {
            sink.record(&session_created(10_000 + n * 1000))
                .expect("record");
            if n % 4 == 3 {
                sink.flush().expect("flush");
            }
        }
        sink.flush().expect("flush");
        let files = [
            path.clone(),
            dir.path().join("events.jsonl.1"),
            dir.path().join("events.jsonl.2"),
        ];
        let sizes: Vec<usize> = files.iter().map(|f| read_lines(f).len()).collect();
        assert_eq!(sizes, [1, 3, 3]);
        assert!(!dir.path().join("events.jsonl.3").exists());
        // The newest 7 events, oldest first, each a whole JSON line.
        let mut all = Vec::new();
        for f in files.iter().rev() {
            assert!(std::fs::metadata(f).expect("stat").len() <= rotation.max_bytes);
            all.extend(read_lines(f));
        }
        let secs: Vec<String> = all
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
                v["ts"].as_str().expect("ts")[17..19].to_owned()
            })
            .collect();
        assert_eq!(secs, ["33", "34", "35", "36", "37", "38", "39"]);

        // Reopening appends and counts what is already there: one more line fits, then rotate.
        drop(sink);
        let mut sink = EventSink::open(&dest, base(), opts).expect("reopen");
        for n in 0..3u64 {
            sink.record(&session_created(20_000 + n * 1000))
                .expect("record");
        }
        sink.flush().expect("flush");
        assert_eq!(read_lines(&path).len(), 1);
        assert_eq!(read_lines(&files[1]).len(), 3);
        assert!(read_lines(&files[1])[0].contains("16:14:39"));
    }

    #[test]
    fn keep_zero_starts_over_and_zero_max_never_rotates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ev.log");
        for (max_bytes, want_lines) in [(1, 1), (0, 5)] {
            let _ = std::fs::remove_file(&path);
            let dest = Destination::File {
                path: path.clone(),
                rotation: Rotation { max_bytes, keep: 0 },
            };
            let mut sink =
                EventSink::open(&dest, base(), EventLogOptions::default()).expect("open");
            for n in 0..5 {
                sink.record(&session_created(10_000 + n)).expect("record");
            }
            sink.flush().expect("flush");
            assert_eq!(read_lines(&path).len(), want_lines, "max_bytes {max_bytes}");
            assert!(!dir.path().join("ev.log.1").exists());
        }
    }
}
