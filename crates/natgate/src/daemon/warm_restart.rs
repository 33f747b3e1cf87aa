//! The snapshot file of a warm restart: written when natgate stops (and on `ctl save`), read,
//! restored into the new engines and removed at start.
//!
//! The engines decide what fits ([`Engine::restore`]); this module moves the file. A snapshot
//! is used once: restored, it is removed; refused (damaged, another format, or state the
//! config could not have made), it is renamed `FILE.refused` for inspection and natgate starts
//! empty, as it does without one. Writing goes to `FILE.tmp`, synced, then renamed over
//! `FILE`, so a crash while saving leaves the previous file whole.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant as WallInstant, SystemTime, UNIX_EPOCH};

use natgate_core::alloc::ConfiguredAllocator;
use natgate_core::engine::{Engine, RestoreError, Restored};
use natgate_core::saved::SavedState;
use natgate_core::saved::codec::{self, DecodeError, Snapshot};
use natgate_core::shard::Steering;

/// Why a snapshot was not restored.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The file could not be read.
    #[error("reading it: {0}")]
    Read(#[source] io::Error),
    /// Not a snapshot this natgate reads.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// State the config could not have made.
    #[error("it does not fit this config: {0}")]
    Misfit(#[from] RestoreError),
}

/// What saving wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Sessions.
    pub sessions: usize,
    /// Explicit mappings.
    pub explicit: usize,
    /// Held ports.
    pub held: usize,
    /// The file's size.
    pub bytes: usize,
    /// How long encoding and writing took.
    pub took: Duration,
}

/// Writes `state` to `path` (see the module's doc), owner-only.
pub fn write(path: &Path, state: SavedState) -> io::Result<Saved> {
    let start = WallInstant::now();
    let saved_at_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (sessions, explicit, held) = (state.sessions.len(), state.explicit.len(), state.held.len());
    let bytes = codec::encode(&Snapshot {
        saved_at_unix_ms,
        state,
    });
    let tmp = with_suffix(path, "tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(Saved {
        sessions,
        explicit,
        held,
        bytes: bytes.len(),
        took: start.elapsed(),
    })
}

/// Restores the snapshot at `path`, if there is one, into `engines` (new, one per worker, each
/// record to the worker `steering` gives its subscriber), at engine time `now`. `Ok(None)`: no
/// snapshot, a cold start. On `Err` the engines hold part of the state: the caller builds new
/// ones. Either way the file is used up.
pub fn restore(
    path: &Path,
    engines: &mut [Engine<ConfiguredAllocator>],
    steering: &Steering,
    now: natgate_core::Instant,
) -> Result<Option<(Restored, Duration)>, Refusal> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refusal::Read(e)),
    };
    let r = restore_bytes(&bytes, engines, steering, now);
    let gone = match &r {
        Ok(_) => fs::remove_file(path),
        Err(_) => fs::rename(path, with_suffix(path, "refused")),
    };
    if let Err(e) = gone {
        tracing::warn!(path = %path.display(), error = %e, "could not move the used snapshot away");
    }
    r.map(Some)
}

fn restore_bytes(
    bytes: &[u8],
    engines: &mut [Engine<ConfiguredAllocator>],
    steering: &Steering,
    now: natgate_core::Instant,
) -> Result<(Restored, Duration), Refusal> {
    let snap = codec::decode(bytes)?;
    let saved_at = UNIX_EPOCH + Duration::from_millis(snap.saved_at_unix_ms);
    // A clock stepped back makes the gap zero, never negative.
    let down = SystemTime::now()
        .duration_since(saved_at)
        .unwrap_or(Duration::ZERO);
    let parts = snap
        .state
        .split(engines.len(), |a| steering.subscriber_worker(a));
    let mut total = Restored::default();
    for (engine, part) in engines.iter_mut().zip(parts) {
        let r = engine.restore(now, &part, down)?;
        total.sessions += r.sessions;
        total.explicit += r.explicit;
        total.held += r.held;
        total.held_skipped += r.held_skipped;
    }
    Ok((total, down))
}

/// `path` with `.suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}
