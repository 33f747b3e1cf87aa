//! The session table: one record per 5-tuple flow, found from either side.
//!
//! A session lives in a [`Slab`]; the outbound index finds it by (proto, internal, remote), the
//! inbound index by (proto, external, remote), and the [`TimerWheel`] finds it when idle. Memory
//! per session at capacity: 32 (record, the free list living in vacant ones) + 8 (wheel links) +
//! 2 x 8 (index entries at load 0.8) = 56 bytes; the test `memory_per_session_at_one_million`
//! checks the total.

use super::{FlowHasher, HashIndex, MappingId, Slab, TimerWheel};
use crate::endpoint::{Endpoint, Protocol};

/// A session's slot in the table. Valid from [`SessionTable::insert`] until it is removed or
/// expired; after that the number may name another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u32);

/// A flow as seen from one side: `local` is the internal endpoint (outbound index) or the
/// external endpoint (inbound index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The protocol.
    pub proto: Protocol,
    /// Our end of the flow on that side: internal (outbound) or external (inbound).
    pub local: Endpoint,
    /// The remote host's endpoint, the same on both sides.
    pub remote: Endpoint,
}

impl FlowKey {
    /// The key as two words for [`FlowHasher::hash2`]: proto and local, then remote.
    #[inline(always)]
    pub fn packed(&self) -> (u64, u64) {
        (
            (u64::from(self.proto.ip_number()) << 48) | self.local.to_u64(),
            self.remote.to_u64(),
        )
    }
}

/// One translated flow. 32 bytes and 32-byte aligned, so a record never straddles cache lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(align(32))]
pub struct Session {
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint the subscriber is translated to.
    pub external: Endpoint,
    /// The remote host's endpoint.
    pub remote: Endpoint,
    /// The protocol.
    pub proto: Protocol,
    /// TCP connection state, owned and interpreted by the engine.
    pub tcp: u8,
    /// Per-session flags, owned and interpreted by the engine.
    pub flags: u8,
    /// When a packet last refreshed the session, in
    /// [`Instant::as_secs`](crate::Instant::as_secs) seconds.
    pub last_seen: u32,
    /// The mapping this session uses.
    pub mapping: MappingId,
}

const _: () = assert!(core::mem::size_of::<Session>() == 32);
const _: () = assert!(core::mem::size_of::<Option<Session>>() == 32);

impl Session {
    /// The outbound index key: (proto, internal, remote).
    #[inline(always)]
    pub fn out_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            local: self.internal,
            remote: self.remote,
        }
    }

    /// The inbound index key: (proto, external, remote).
    #[inline(always)]
    pub fn in_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            local: self.external,
            remote: self.remote,
        }
    }
}

/// Returned when a table already holds its configured maximum of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("table is full")]
pub struct TableFull;

/// Lookups are batched in groups of this many: enough to keep the memory system busy with
/// independent misses, few enough that the prefetched lines are still in L1 when used.
const BATCH: usize = 32;

/// All sessions, indexed from both sides, with lazy idle expiry.
#[derive(Debug, Clone)]
pub struct SessionTable {
    slab: Slab<Session>,
    out_index: HashIndex,
    in_index: HashIndex,
    wheel: TimerWheel,
    hasher: FlowHasher,
}

#[inline(always)]
fn out_matches(s: Option<&Session>, key: &FlowKey) -> bool {
    s.is_some_and(|s| s.internal == key.local && s.remote == key.remote && s.proto == key.proto)
}

#[inline(always)]
fn in_matches(s: Option<&Session>, key: &FlowKey) -> bool {
    s.is_some_and(|s| s.external == key.local && s.remote == key.remote && s.proto == key.proto)
}

/// Panics for an id that names no session: ids come from `insert`/`find*`, so this is a bug in
/// the caller (using an id after removing or expiring its session).
#[cold]
fn vacant(id: u32) -> ! {
    panic!("no session in slot {id}")
}

impl SessionTable {
    /// A table for up to `max_sessions` sessions, everything allocated now. `hasher_seed` keys the
    /// index hash (keep it secret: outside tuples are attacker-chosen).
    ///
    /// # Panics
    /// If `max_sessions` exceeds 2^31.
    pub fn new(max_sessions: usize, hasher_seed: u64) -> Self {
        SessionTable {
            slab: Slab::new(max_sessions),
            out_index: HashIndex::with_capacity(max_sessions),
            in_index: HashIndex::with_capacity(max_sessions),
            wheel: TimerWheel::new(max_sessions),
            hasher: FlowHasher::new(hasher_seed),
        }
    }

    /// The keyed hash of `key`, for the `*_hashed` and `prefetch_*` methods.
    #[inline(always)]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        let (a, b) = key.packed();
        self.hasher.hash2(a, b)
    }

    /// Starts loading the outbound index bucket for `hash`.
    #[inline(always)]
    pub fn prefetch_out(&self, hash: u64) {
        self.out_index.prefetch(hash);
    }

    /// Starts loading the inbound index bucket for `hash`.
    #[inline(always)]
    pub fn prefetch_in(&self, hash: u64) {
        self.in_index.prefetch(hash);
    }

    /// The second stage of a batched lookup, once the index bucket of `hash` is in cache (after
    /// [`Self::prefetch_out`] or [`Self::prefetch_in`]): starts loading the record of the
    /// bucket's first tag match, or the key's alternate bucket when it may live there.
    #[inline(always)]
    pub fn prefetch_record(&self, inbound: bool, hash: u64) {
        let index = if inbound {
            &self.in_index
        } else {
            &self.out_index
        };
        if let Some(v) = index.prefetch_candidate(hash) {
            self.slab.prefetch(v);
        }
    }

    /// The session whose out key (proto, internal, remote) is `key`.
    pub fn find_out(&self, key: &FlowKey) -> Option<SessionId> {
        self.find_out_hashed(self.hash(key), key)
    }

    /// [`Self::find_out`] with the hash already computed by [`Self::hash`].
    #[inline(always)]
    pub fn find_out_hashed(&self, hash: u64, key: &FlowKey) -> Option<SessionId> {
        self.out_index
            .find(hash, |v| out_matches(self.slab.get(v), key))
            .map(SessionId)
    }

    /// The session whose in key (proto, external, remote) is `key`.
    pub fn find_in(&self, key: &FlowKey) -> Option<SessionId> {
        self.find_in_hashed(self.hash(key), key)
    }

    /// [`Self::find_in`] with the hash already computed by [`Self::hash`].
    #[inline(always)]
    pub fn find_in_hashed(&self, hash: u64, key: &FlowKey) -> Option<SessionId> {
        self.in_index
            .find(hash, |v| in_matches(self.slab.get(v), key))
            .map(SessionId)
    }

    /// Batched lookup: `out[i]` is `find_out(&keys[i])`, or `find_in` when `inbound`. Works in
    /// groups of 32 in three passes so that the cache misses of a group overlap: hash every key
    /// and prefetch its bucket; take each bucket's first tag match as the candidate and prefetch
    /// its record; confirm each candidate against its key (falling back to a full probe on the
    /// rare tag collision or displaced entry).
    ///
    /// # Panics
    /// If `out` is shorter than `keys`.
    pub fn find_batch(&self, inbound: bool, keys: &[FlowKey], out: &mut [Option<SessionId>]) {
        assert!(out.len() >= keys.len(), "find_batch output too short");
        let (index, matches): (_, fn(Option<&Session>, &FlowKey) -> bool) = if inbound {
            (&self.in_index, in_matches)
        } else {
            (&self.out_index, out_matches)
        };
        let mut hashes = [0u64; BATCH];
        let mut candidates = [None; BATCH];
        for (keys, out) in keys.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            for (h, key) in hashes.iter_mut().zip(keys) {
                *h = self.hash(key);
                if inbound {
                    self.prefetch_in(*h);
                } else {
                    self.prefetch_out(*h);
                }
            }
            for (c, &h) in candidates.iter_mut().zip(&hashes[..keys.len()]) {
                *c = index.prefetch_candidate(h);
                if let Some(v) = *c {
                    self.slab.prefetch(v);
                }
            }
            for (((o, &h), key), &c) in out.iter_mut().zip(&hashes).zip(keys).zip(&candidates) {
                *o = match c {
                    Some(v) if matches(self.slab.get(v), key) => Some(v),
                    _ => index.find(h, |v| matches(self.slab.get(v), key)),
                }
                .map(SessionId);
            }
        }
    }

    /// Adds a session, indexes it both ways and schedules its first expiry check at `due_secs`.
    /// The caller guarantees that no session with the same out key or in key exists (it looked
    /// both up first; external endpoints are never shared between internal ones).
    pub fn insert(&mut self, s: Session, due_secs: u32) -> Result<SessionId, TableFull> {
        debug_assert!(self.find_out(&s.out_key()).is_none(), "duplicate out key");
        debug_assert!(self.find_in(&s.in_key()).is_none(), "duplicate in key");
        let h_out = self.hash(&s.out_key());
        let h_in = self.hash(&s.in_key());
        // Overlap the two bucket misses instead of taking them one after the other.
        self.out_index.prefetch(h_out);
        self.in_index.prefetch(h_in);
        let id = self.slab.insert(s).ok_or(TableFull)?;
        if self.out_index.insert(h_out, id).is_err() {
            self.slab.remove(id);
            return Err(TableFull);
        }
        if self.in_index.insert(h_in, id).is_err() {
            self.out_index.remove(h_out, id);
            self.slab.remove(id);
            return Err(TableFull);
        }
        self.wheel.schedule(id, due_secs);
        Ok(SessionId(id))
    }

    /// Removes a session from the slab and both indexes without touching the wheel.
    fn unlink(
        slab: &mut Slab<Session>,
        out_index: &mut HashIndex,
        in_index: &mut HashIndex,
        hasher: &FlowHasher,
        id: u32,
    ) -> Option<Session> {
        let s = slab.remove(id)?;
        let (a, b) = s.out_key().packed();
        let h_out = hasher.hash2(a, b);
        let (a, b) = s.in_key().packed();
        let h_in = hasher.hash2(a, b);
        out_index.prefetch(h_out);
        in_index.prefetch(h_in);
        out_index.remove(h_out, id);
        in_index.remove(h_in, id);
        Some(s)
    }

    /// Removes a session, its index entries and its timer (all O(1)); `None` if `id` names no
    /// session. Idle sessions leave through [`Self::expire`] instead.
    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = Self::unlink(
            &mut self.slab,
            &mut self.out_index,
            &mut self.in_index,
            &self.hasher,
            id.0,
        )?;
        self.wheel.unschedule(id.0);
        Some(s)
    }

    /// Moves session `id`'s next expiry check to `due_secs` (O(1)). Refreshes need no call: the
    /// wheel re-checks lazily. This is for a timeout that *shrinks* (say a TCP close, RFC 5382
    /// REQ-5's transitory timer), which the lazy check would otherwise notice only at the
    /// old, later time.
    pub fn reschedule(&mut self, id: SessionId, due_secs: u32) {
        if self.slab.contains(id.0) {
            self.wheel.unschedule(id.0);
            self.wheel.schedule(id.0, due_secs);
        }
    }

    /// The session `id`, or `None` if it was removed.
    #[inline(always)]
    pub fn try_get(&self, id: SessionId) -> Option<&Session> {
        self.slab.get(id.0)
    }

    /// The session `id`.
    ///
    /// # Panics
    /// If `id` names no session (it was removed or expired): a caller bug.
    #[inline(always)]
    pub fn get(&self, id: SessionId) -> &Session {
        self.slab.get(id.0).unwrap_or_else(|| vacant(id.0))
    }

    /// The session `id`, for update (`last_seen`, `tcp`, `flags`; changing key fields would
    /// desynchronize the indexes).
    ///
    /// # Panics
    /// If `id` names no session (it was removed or expired): a caller bug.
    #[inline(always)]
    pub fn get_mut(&mut self, id: SessionId) -> &mut Session {
        self.slab.get_mut(id.0).unwrap_or_else(|| vacant(id.0))
    }

    /// Starts loading session `id`'s record.
    #[inline(always)]
    pub fn prefetch_session(&self, id: SessionId) {
        self.slab.prefetch(id.0);
    }

    /// Runs the expiry wheel up to `now_secs`. For each session whose check came due,
    /// `expiry(&session)` gives its real due time (from `last_seen` and its state's timeout): if
    /// that is at most `now_secs` the session is removed from the table and indexes and handed to
    /// `on_expired`, otherwise its check is re-scheduled for then.
    pub fn expire(
        &mut self,
        now_secs: u32,
        mut expiry: impl FnMut(&Session) -> u32,
        mut on_expired: impl FnMut(SessionId, Session),
    ) {
        let SessionTable {
            slab,
            out_index,
            in_index,
            wheel,
            hasher,
        } = self;
        wheel.advance(now_secs, |id| {
            let due = expiry(slab.get(id)?);
            if due > now_secs {
                return Some(due);
            }
            if let Some(s) = Self::unlink(slab, out_index, in_index, hasher, id) {
                on_expired(SessionId(id), s);
            }
            None
        });
    }

    /// When [`Self::expire`] next has work: never later than the earliest session check.
    pub fn next_due(&self) -> Option<u32> {
        self.wheel.next_due()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The most sessions the table holds.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// All sessions, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.slab.iter().map(|(i, s)| (SessionId(i), s))
    }

    /// Removes every session (O(capacity)).
    pub fn clear(&mut self) {
        self.slab.clear();
        self.out_index.clear();
        self.in_index.clear();
        self.wheel.clear();
    }

    /// Bytes allocated by the table: records, free list, both indexes and the wheel.
    pub fn memory_bytes(&self) -> usize {
        self.slab.memory_bytes()
            + self.out_index.memory_bytes()
            + self.in_index.memory_bytes()
            + self.wheel.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn ep(a: u8, b: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(10, 0, a, b), port)
    }

    fn session(i: u32) -> Session {
        let [_, a, b, c] = i.to_be_bytes();
        Session {
            internal: Endpoint::new(Ipv4Addr::new(192, 168, a, b), 1000 + u16::from(c)),
            external: Endpoint::new(Ipv4Addr::new(203, 0, 113, c), 1024 + (i % 60_000) as u16),
            remote: Endpoint::new(Ipv4Addr::new(8, 8, a, b), 53),
            proto: Protocol::Udp,
            tcp: 0,
            flags: 0,
            last_seen: 0,
            mapping: MappingId(i),
        }
    }

    #[test]
    fn session_is_32_bytes() {
        assert_eq!(core::mem::size_of::<Session>(), 32);
    }

    #[test]
    fn insert_find_both_ways_remove() {
        let mut t = SessionTable::new(100, 1);
        let s = Session {
            internal: ep(0, 1, 5000),
            external: ep(9, 9, 40000),
            remote: ep(7, 7, 443),
            proto: Protocol::Tcp,
            tcp: 3,
            flags: 1,
            last_seen: 10,
            mapping: MappingId(4),
        };
        let id = t.insert(s, 100).unwrap();
        assert_eq!(t.find_out(&s.out_key()), Some(id));
        assert_eq!(t.find_in(&s.in_key()), Some(id));
        assert_eq!(t.find_out(&s.in_key()), None, "directions are separate");
        let udp = FlowKey {
            proto: Protocol::Udp,
            ..s.out_key()
        };
        assert_eq!(t.find_out(&udp), None, "protocol is part of the key");
        assert_eq!(t.get(id), &s);
        t.get_mut(id).last_seen = 50;
        assert_eq!(t.try_get(id).map(|s| s.last_seen), Some(50));
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().count(), 1);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(t.remove(id).map(|s| s.internal), Some(s.internal));
        assert_eq!(t.remove(id), None);
        assert_eq!(t.find_out(&s.out_key()), None);
        assert_eq!(t.find_in(&s.in_key()), None);
        assert_eq!(t.next_due(), None, "remove unschedules");
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_refuses() {
        let mut t = SessionTable::new(10, 1);
        for i in 0..10 {
            t.insert(session(i), 5).unwrap();
        }
        assert_eq!(t.insert(session(10), 5), Err(TableFull));
        assert_eq!(t.len(), 10);
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.find_out(&session(3).out_key()), None);
        t.insert(session(10), 5).unwrap();
    }

    #[test]
    fn batch_matches_single_lookups() {
        let mut t = SessionTable::new(5000, 7);
        for i in 0..5000 {
            t.insert(session(i), 5).unwrap();
        }
        let keys: Vec<FlowKey> = (0..100)
            .map(|i| session(i * 97 % 7000))
            .flat_map(|s| [s.out_key(), s.in_key()])
            .collect();
        for inbound in [false, true] {
            let mut out = vec![None; keys.len()];
            t.find_batch(inbound, &keys, &mut out);
            for (k, o) in keys.iter().zip(&out) {
                let single = if inbound { t.find_in(k) } else { t.find_out(k) };
                assert_eq!(*o, single);
            }
            assert!(out.iter().filter(|o| o.is_some()).count() > 40);
        }
    }

    #[test]
    fn expire_removes_idle_and_keeps_refreshed() {
        let mut t = SessionTable::new(10, 1);
        let a = t.insert(session(1), 30).unwrap();
        let b = t.insert(session(2), 30).unwrap();
        t.get_mut(b).last_seen = 25; // refreshed: now due at 55
        let timeout = |s: &Session| s.last_seen + 30;
        let mut expired = Vec::new();
        t.expire(29, timeout, |id, s| expired.push((id, s.mapping)));
        assert!(expired.is_empty());
        t.expire(30, timeout, |id, s| expired.push((id, s.mapping)));
        assert_eq!(expired, vec![(a, MappingId(1))]);
        assert_eq!(t.find_out(&session(1).out_key()), None);
        assert_eq!(t.find_in(&session(1).in_key()), None);
        assert_eq!(t.next_due(), Some(55));
        t.reschedule(b, 40); // closed: a shorter timeout now
        assert_eq!(t.next_due(), Some(40));
        t.expire(40, |_| 40, |id, s| expired.push((id, s.mapping)));
        assert_eq!(expired, vec![(a, MappingId(1)), (b, MappingId(2))]);
        t.reschedule(b, 50); // gone: ignored
        assert_eq!(t.next_due(), None);
        let c = t.insert(session(3), 60).unwrap();
        t.expire(1000, timeout, |id, s| expired.push((id, s.mapping)));
        assert_eq!(expired.last(), Some(&(c, MappingId(3))));
        assert!(t.is_empty());
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn memory_per_session_at_one_million() {
        let t = SessionTable::new(1 << 20, 1);
        let per_session = t.memory_bytes() / t.capacity();
        eprintln!("{per_session} bytes per session");
        assert!(per_session <= 64, "{per_session} bytes per session");
    }

    proptest! {
        /// Against a map model: inserts (until full), removes and both-way lookups, single and
        /// batched, agree at every step.
        #[test]
        fn matches_map_model(ops in prop::collection::vec((0u8..3, 0u32..64), 1..400)) {
            let mut t = SessionTable::new(40, 11);
            let mut model: HashMap<u32, SessionId> = HashMap::new();
            for (kind, i) in ops {
                match kind {
                    0 if !model.contains_key(&i) => match t.insert(session(i), 100) {
                        Ok(id) => {
                            model.insert(i, id);
                        }
                        Err(TableFull) => prop_assert_eq!(t.len(), 40),
                    },
                    1 => {
                        if let Some(id) = model.remove(&i) {
                            prop_assert_eq!(t.remove(id), Some(session(i)));
                        }
                    }
                    _ => {
                        let s = session(i);
                        prop_assert_eq!(t.find_out(&s.out_key()), model.get(&i).copied());
                        prop_assert_eq!(t.find_in(&s.in_key()), model.get(&i).copied());
                    }
                }
                prop_assert_eq!(t.len(), model.len());
            }
            let keys: Vec<FlowKey> = (0..64).map(|i| session(i).in_key()).collect();
            let mut out = vec![None; 64];
            t.find_batch(true, &keys, &mut out);
            for (i, o) in (0..64).zip(&out) {
                prop_assert_eq!(*o, model.get(&i).copied());
            }
        }
    }
}
