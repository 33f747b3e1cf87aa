//! The NAT table: sessions and the mappings they use, behind one pair of indexes.
//!
//! # Folded mappings
//! Most mappings carry exactly one session (a TCP connection from an ephemeral port, a DNS query
//! from a random one). Such a mapping has no record of its own: it is *folded* into its session,
//! whose fields already say everything the mapping does (internal and external endpoint,
//! protocol; the remote key follows from the remote endpoint and the mapping behaviour), and
//! the session is indexed only under the mapping's two keys:
//!
//! - outbound index: (proto, internal, remote key), RFC 4787 section 4.1's mapping key;
//! - inbound index: (proto, external), which is unique per protocol (RFC 4787 REQ-3); under
//!   port overlapping (RFC 7857 section 3) (proto, external, remote key), since an external
//!   endpoint then serves one mapping per remote key.
//!
//! A packet's session is then found by its mapping key: one bucket and one record, as with a
//! per-session index, and the same probe answers "is there a mapping?" for a new flow.
//!
//! When a second session joins a mapping, the mapping is *shared*: it gets a [`Mapping`] record,
//! its two index entries are repointed to that record, and each of its sessions is indexed by
//! its full flow keys, (proto, internal, remote) and (proto, external, remote). A shared mapping
//! stays shared until its last session goes. A session opened inbound always joins a mapping
//! that already has one, so it is never folded: a folded session's remote is always the one
//! its mapping key was made from.
//!
//! Index values are session slots, or [`SHARED`] plus a mapping slot; a [`MappingId`] is the
//! value of its mapping's index entries (the session slot itself for a folded mapping).
//!
//! # Look-ups
//! Outbound: probe the mapping key. A folded session with the packet's remote is the hit.
//! Under endpoint-independent mapping every session of an internal endpoint belongs to its one
//! mapping, so no mapping, or a folded one with another remote, is a definite miss; otherwise
//! (a shared mapping, or a dependent mapping behaviour, where a session opened inbound may sit
//! under another mapping) the full key is probed too. Inbound: probe (proto, external); the
//! mapping that owns the external endpoint owns every session on it, so only a shared mapping
//! needs the second probe. A shared mapping's record is never read on the way: its entry alone
//! says "probe the full key", so a session of a shared mapping costs two buckets and its
//! record (the batch path prefetches the second bucket), a folded one a bucket and its record.
//!
//! # Memory
//! Per session: 32 (record; the slab's free list lives in vacant records) + 8 (wheel links) +
//! one entry in each index (buckets sized for the sessions plus a ninth of the reserve's
//! entries: about 17.8 bytes). Shared mappings take a 28-byte record each from a reserve of
//! [`NatTable::shared_reserve`] records (a quarter of the sessions: 7 bytes per session) and
//! one more entry in each index, which raises the index load from 0.72 to at most 0.9 when the
//! reserve is full. With one mapping per session that is 64.8 bytes per session at capacity
//! (the test `memory_per_session_with_a_mapping_each` checks it is at most 65), against 104
//! with a mapping record and index entries per mapping. A session record keeps its softwire
//! tag in bytes it had spare; a shared mapping's record had one spare byte and needs three,
//! which is the 1 byte per session DS-Lite costs every table.

use super::session::split_tag;
use super::{
    FlowHasher, FlowKey, HashIndex, Mapping, MappingId, Session, SessionId, Slab, SoftwireTag,
    TableFull, TimerWheel,
};
use crate::config::MappingBehavior;
use crate::endpoint::{Endpoint, Protocol};

/// Index values and [`MappingId`]s with this bit name a shared mapping's record; without it, a
/// session slot. Session slots stay below it (the wheel refuses more than 2^31 items).
const SHARED: u32 = 0x8000_0000;

/// Panics for an id that names no session or mapping: ids come from the table's own look-ups
/// and inserts, so this is a caller bug (an id used after its session or mapping went).
#[cold]
fn vacant(what: &str, id: u32) -> ! {
    panic!("no {what} in slot {id:#x}")
}

#[inline(always)]
fn out_matches(s: &Session, key: &FlowKey) -> bool {
    s.internal == key.local
        && s.remote == key.remote
        && s.proto == key.proto
        && s.softwire == key.softwire
}

#[inline(always)]
fn in_matches(s: &Session, key: &FlowKey) -> bool {
    s.external == key.local && s.remote == key.remote && s.proto == key.proto
}

/// All sessions and mappings of an engine, found from either side, with lazy idle expiry.
#[derive(Debug, Clone)]
pub struct NatTable {
    /// Everything but the wheel, so that the wheel's expiry callback can remove sessions.
    t: Tables,
    wheel: TimerWheel,
}

/// The records and indexes of a [`NatTable`]; the look-up and update logic lives here.
#[derive(Debug, Clone)]
struct Tables {
    sessions: Slab<Session>,
    /// Shared mappings only; folded ones live in their session.
    shared: Slab<Mapping>,
    /// Mapping keys (proto, internal, remote key), and full out keys of shared mappings' sessions.
    out_index: HashIndex,
    /// Mapping keys (proto, external), and full in keys of shared mappings' sessions.
    in_index: HashIndex,
    /// Keys the full flow-key hashes.
    flow_hasher: FlowHasher,
    /// Keys the mapping-key hashes (a separate key, so the two kinds never share a hash).
    mapping_hasher: FlowHasher,
    keys: MappingKeys,
    max_mappings: usize,
    mappings: usize,
}

/// What keys a mapping in a [`NatTable`]: the mapping behaviour (the remote key of its internal
/// side) and whether its external endpoint is keyed with the remote key too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingKeys {
    /// The mapping behaviour (RFC 4787 section 4.1).
    pub mapping: MappingBehavior,
    /// Port overlapping (RFC 7857 section 3): mappings with different remote keys may share an
    /// external endpoint, because only (external, remote) has to be unique for inbound packets
    /// to find their session. Meaningful only under a dependent mapping behaviour (under
    /// endpoint-independent mapping the remote key is always unspecified).
    pub port_overlapping: bool,
}

impl From<MappingBehavior> for MappingKeys {
    fn from(mapping: MappingBehavior) -> Self {
        MappingKeys {
            mapping,
            port_overlapping: false,
        }
    }
}

impl NatTable {
    /// How many shared-mapping records a table keeps for `max_sessions` sessions and
    /// `max_mappings` mappings. A shared mapping has at least two sessions, so
    /// `max_sessions / 2` records always suffice; reserving that many would cost about 10 more
    /// bytes per session in every table, so big tables reserve one record per 4 sessions (plus 1024,
    /// which keeps small tables exact). Past the reserve, a session that would make one more
    /// mapping shared is refused (the engine counts it as `shared_mapping_reserve_full`).
    pub fn shared_reserve(max_sessions: usize, max_mappings: usize) -> usize {
        let exact = max_mappings.min(max_sessions / 2);
        exact.min(max_sessions / 4 + 1024)
    }

    /// The shared-mapping reserve, the index entries and the number of entries the indexes'
    /// buckets are sized for.
    fn sizes(max_sessions: usize, max_mappings: usize) -> (usize, usize, usize) {
        let reserve = Self::shared_reserve(max_sessions, max_mappings);
        // Buckets for at least the sessions at load 0.8, and enough that the reserve's entries
        // take them to 0.9 at most.
        let entries = max_sessions + reserve;
        let design = max_sessions.max(entries - entries / 9);
        (reserve, entries, design)
    }

    /// What [`NatTable::memory_bytes`] is for a table of these limits, without building it:
    /// what `limits.max-memory` is checked against.
    pub fn memory_for(max_sessions: usize, max_mappings: usize) -> usize {
        let (reserve, _, design) = Self::sizes(max_sessions, max_mappings);
        Slab::<Session>::memory_for(max_sessions)
            + Slab::<Mapping>::memory_for(reserve)
            + 2 * HashIndex::memory_for(design)
            + TimerWheel::memory_for(max_sessions)
    }

    /// A table for up to `max_sessions` sessions and `max_mappings` mappings keyed by `keys`
    /// (a mapping behaviour alone means no port overlapping), everything allocated now. The seeds key the flow-key and
    /// mapping-key hashes (keep them secret: outside tuples are attacker-chosen).
    ///
    /// # Panics
    /// If `max_sessions` exceeds 2^31.
    pub fn new(
        max_sessions: usize,
        max_mappings: usize,
        keys: impl Into<MappingKeys>,
        flow_seed: u64,
        mapping_seed: u64,
    ) -> Self {
        match Self::try_new(max_sessions, max_mappings, keys, flow_seed, mapping_seed) {
            Ok(t) => t,
            Err(e) => panic!("session table of {max_sessions}: {e}"),
        }
    }

    /// [`Self::new`], with running out of memory an error instead of an abort (what is
    /// allocated before the failure is freed again).
    ///
    /// # Panics
    /// As [`Self::new`].
    pub fn try_new(
        max_sessions: usize,
        max_mappings: usize,
        keys: impl Into<MappingKeys>,
        flow_seed: u64,
        mapping_seed: u64,
    ) -> Result<Self, std::collections::TryReserveError> {
        let (reserve, entries, design) = Self::sizes(max_sessions, max_mappings);
        Ok(NatTable {
            t: Tables {
                sessions: Slab::try_new(max_sessions)?,
                shared: Slab::try_new(reserve)?,
                out_index: HashIndex::try_with_capacity_sized_for(entries, design)?,
                in_index: HashIndex::try_with_capacity_sized_for(entries, design)?,
                flow_hasher: FlowHasher::new(flow_seed),
                mapping_hasher: FlowHasher::new(mapping_seed),
                keys: keys.into(),
                max_mappings,
                mappings: 0,
            },
            wheel: TimerWheel::try_new(max_sessions)?,
        })
    }
}

impl Tables {
    /// The mapping key's remote part under the mapping behaviour (RFC 4787 section 4.1).
    #[inline(always)]
    fn remote_key(&self, remote: Endpoint) -> Endpoint {
        match self.keys.mapping {
            MappingBehavior::EndpointIndependent => Endpoint::UNSPECIFIED,
            MappingBehavior::AddressDependent => Endpoint::new(remote.addr, 0),
            MappingBehavior::AddressAndPortDependent => remote,
        }
    }

    #[inline(always)]
    fn flow_hash(&self, key: &FlowKey) -> u64 {
        let (a, b) = key.packed();
        self.flow_hasher.hash2(a, b)
    }

    #[inline(always)]
    fn internal_hash(
        &self,
        proto: Protocol,
        softwire: SoftwireTag,
        internal: Endpoint,
        remote_key: Endpoint,
    ) -> u64 {
        let (lo, hi) = split_tag(softwire);
        let a = (lo << 56) | (u64::from(proto.ip_number()) << 48) | internal.to_u64();
        self.mapping_hasher
            .hash2(a, (hi << 48) | remote_key.to_u64())
    }

    /// The part of a mapping's remote key that its external key holds: all of it under port
    /// overlapping, none otherwise (the external endpoint alone is unique).
    #[inline(always)]
    fn external_remote(&self, remote_key: Endpoint) -> Endpoint {
        if self.keys.port_overlapping {
            remote_key
        } else {
            Endpoint::UNSPECIFIED
        }
    }

    /// The hash of a mapping's external key, `external_remote` from [`Self::external_remote`].
    #[inline(always)]
    fn external_hash(&self, proto: Protocol, external: Endpoint, external_remote: Endpoint) -> u64 {
        let a = (u64::from(proto.ip_number()) << 48) | external.to_u64();
        self.mapping_hasher.hash2(a, external_remote.to_u64())
    }

    /// The external key's hash of the mapping folded into `s`.
    #[inline(always)]
    fn folded_external_hash(&self, s: &Session) -> u64 {
        let xr = self.external_remote(self.remote_key(s.remote));
        self.external_hash(s.proto, s.external, xr)
    }

    /// Whether the session in slot `v` is folded: its mapping is itself.
    #[inline(always)]
    fn folded(s: &Session, v: u32) -> bool {
        s.mapping.0 == v
    }

    /// Whether index value `v` is the mapping (proto, internal, remote key).
    #[inline(always)]
    fn is_internal_mapping(
        &self,
        v: u32,
        proto: Protocol,
        softwire: SoftwireTag,
        internal: Endpoint,
        rk: Endpoint,
    ) -> bool {
        if v & SHARED != 0 {
            self.shared.get(v & !SHARED).is_some_and(|m| {
                m.internal == internal
                    && m.remote_key == rk
                    && m.proto == proto
                    && m.softwire == softwire
            })
        } else {
            self.sessions.get(v).is_some_and(|s| {
                Self::folded(s, v)
                    && s.internal == internal
                    && s.softwire == softwire
                    && s.proto == proto
                    && self.remote_key(s.remote) == rk
            })
        }
    }

    /// Whether index value `v` is the mapping that owns (proto, external), for remotes whose
    /// [`Self::external_remote`] is `xr`.
    #[inline(always)]
    fn is_external_mapping(
        &self,
        v: u32,
        proto: Protocol,
        external: Endpoint,
        xr: Endpoint,
    ) -> bool {
        if v & SHARED != 0 {
            self.shared.get(v & !SHARED).is_some_and(|m| {
                m.external == external
                    && m.proto == proto
                    && self.external_remote(m.remote_key) == xr
            })
        } else {
            self.sessions.get(v).is_some_and(|s| {
                Self::folded(s, v)
                    && s.external == external
                    && s.proto == proto
                    && self.external_remote(self.remote_key(s.remote)) == xr
            })
        }
    }

    /// The hash a packet's look-up starts with: its mapping key's, outbound (`key.local` the
    /// internal endpoint) or inbound (`key.local` the external endpoint). For the `prefetch_*`
    /// and `find_*_hashed` methods.
    #[inline(always)]
    fn lookup_hash(&self, inbound: bool, key: &FlowKey) -> u64 {
        if inbound {
            let xr = self.external_remote(self.remote_key(key.remote));
            self.external_hash(key.proto, key.local, xr)
        } else {
            self.internal_hash(
                key.proto,
                key.softwire,
                key.local,
                self.remote_key(key.remote),
            )
        }
    }

    /// The first stage of a batched look-up: starts loading the index bucket of `hash`.
    #[inline(always)]
    fn prefetch(&self, inbound: bool, hash: u64) {
        if inbound {
            self.in_index.prefetch(hash);
        } else {
            self.out_index.prefetch(hash);
        }
    }

    /// Starts loading the bucket of `key`'s full flow key, whatever the mapping bucket holds:
    /// for a caller that will insert a session whose mapping may only be made, or shared, just
    /// before.
    #[inline(always)]
    fn prefetch_flow(&self, inbound: bool, key: &FlowKey) {
        let index = if inbound {
            &self.in_index
        } else {
            &self.out_index
        };
        index.prefetch(self.flow_hash(key));
    }

    /// The second stage, once the bucket of `hash` is in cache: starts loading what the look-up
    /// reads next, the candidate session's record, or the bucket of `key`'s full flow key when
    /// the mapping is shared (or may not be the session's, under a dependent mapping). Returns
    /// the candidate session, for [`Self::find_hashed`].
    #[inline(always)]
    fn prefetch_next(&self, inbound: bool, hash: u64, key: &FlowKey) -> Option<SessionId> {
        let (index, other) = if inbound {
            (&self.in_index, false)
        } else {
            (
                &self.out_index,
                self.keys.mapping != MappingBehavior::EndpointIndependent,
            )
        };
        match index.prefetch_candidate(hash) {
            Some(v) if v & SHARED == 0 => {
                self.sessions.prefetch(v);
                return Some(SessionId(v));
            }
            Some(_) => index.prefetch(self.flow_hash(key)),
            None if other => index.prefetch(self.flow_hash(key)),
            None => {}
        }
        None
    }

    /// The third stage: `candidate` (from [`Self::prefetch_next`]) if it is a session whose
    /// out key (or in key, `inbound`) is `key`, without reading the bucket again; otherwise
    /// the full look-up. Keys are unique among live sessions, so a live session with the key is
    /// the answer whichever entry led to it, even if sessions came and went since the second
    /// stage.
    #[inline(always)]
    fn find_hashed(
        &self,
        inbound: bool,
        hash: u64,
        key: &FlowKey,
        candidate: Option<SessionId>,
    ) -> Option<SessionId> {
        if let Some(sid) = candidate
            && self.sessions.get(sid.0).is_some_and(|s| {
                if inbound {
                    in_matches(s, key)
                } else {
                    out_matches(s, key)
                }
            })
        {
            return Some(sid);
        }
        if inbound {
            self.find_keyed::<true>(hash, key)
        } else {
            self.find_keyed::<false>(hash, key)
        }
    }

    /// The session whose out key (proto, internal, remote) is `key`.
    fn find_out(&self, key: &FlowKey) -> Option<SessionId> {
        self.find_keyed::<false>(self.lookup_hash(false, key), key)
    }

    /// The session whose in key (proto, external, remote) is `key`.
    fn find_in(&self, key: &FlowKey) -> Option<SessionId> {
        self.find_keyed::<true>(self.lookup_hash(true, key), key)
    }

    /// The session whose out key (or in key, `INBOUND`) is `key`, from the hash of its mapping
    /// key ([`Self::lookup_hash`]). One pass over the mapping key's tag matches: a session
    /// there with the packet's key is the answer (keys are unique, so no need to check that
    /// it is folded or that the entry is its mapping's); a shared mapping's entry (ours, or a
    /// tag collision) sends the look-up to the full flow key, without reading the record.
    /// Without one the miss is definite: inbound, because the mapping that owns the external
    /// endpoint owns every session on it; outbound under endpoint-independent mapping, because
    /// every session of the internal endpoint belongs to its one mapping. Under a dependent
    /// mapping behaviour a session opened inbound may sit under another mapping, so an
    /// outbound miss always probes the full key.
    #[inline(always)]
    fn find_keyed<const INBOUND: bool>(&self, hash: u64, key: &FlowKey) -> Option<SessionId> {
        let (index, matches): (&HashIndex, fn(&Session, &FlowKey) -> bool) = if INBOUND {
            (&self.in_index, in_matches)
        } else {
            (&self.out_index, out_matches)
        };
        let mut maybe_shared = false;
        let hit = index.find(hash, |v| {
            if v & SHARED != 0 {
                maybe_shared = true;
                return false;
            }
            self.sessions.get(v).is_some_and(|s| matches(s, key))
        });
        let definite = INBOUND || self.keys.mapping == MappingBehavior::EndpointIndependent;
        if hit.is_some() || (definite && !maybe_shared) {
            return hit.map(SessionId);
        }
        index
            .find(self.flow_hash(key), |v| {
                v & SHARED == 0 && self.sessions.get(v).is_some_and(|s| matches(s, key))
            })
            .map(SessionId)
    }

    /// The mapping of `internal` for `remote_key` (see [`Mapping::remote_key`]).
    fn find_by_internal(
        &self,
        proto: Protocol,
        softwire: SoftwireTag,
        internal: Endpoint,
        remote_key: Endpoint,
    ) -> Option<MappingId> {
        let h = self.internal_hash(proto, softwire, internal, remote_key);
        self.find_by_internal_hashed(h, proto, softwire, internal, remote_key)
    }

    /// [`Self::find_by_internal`] with `h`, the mapping key's hash.
    #[inline(always)]
    fn find_by_internal_hashed(
        &self,
        h: u64,
        proto: Protocol,
        softwire: SoftwireTag,
        internal: Endpoint,
        remote_key: Endpoint,
    ) -> Option<MappingId> {
        debug_assert_eq!(h, self.internal_hash(proto, softwire, internal, remote_key));
        self.out_index
            .find(h, |v| {
                self.is_internal_mapping(v, proto, softwire, internal, remote_key)
            })
            .map(MappingId)
    }

    /// The mapping that owns the external endpoint for packets from `remote`.
    fn find_by_external(
        &self,
        proto: Protocol,
        external: Endpoint,
        remote: Endpoint,
    ) -> Option<MappingId> {
        let xr = self.external_remote(self.remote_key(remote));
        let h = self.external_hash(proto, external, xr);
        self.in_index
            .find(h, |v| self.is_external_mapping(v, proto, external, xr))
            .map(MappingId)
    }

    /// The mapping `id`, with its live session count.
    ///
    /// # Panics
    /// If `id` names no mapping (it was removed): a caller bug.
    fn mapping(&self, id: MappingId) -> Mapping {
        if id.0 & SHARED != 0 {
            return *self
                .shared
                .get(id.0 & !SHARED)
                .unwrap_or_else(|| vacant("mapping", id.0));
        }
        match self.sessions.get(id.0) {
            Some(s) if Self::folded(s, id.0) => self.folded_mapping(s, 1),
            _ => vacant("mapping", id.0),
        }
    }

    fn folded_mapping(&self, s: &Session, sessions: u32) -> Mapping {
        Mapping {
            internal: s.internal,
            external: s.external,
            remote_key: self.remote_key(s.remote),
            proto: s.proto,
            sessions,
            softwire: s.softwire,
        }
    }

    /// Whether the table holds its maximum of mappings, so a new one would be refused.
    fn mappings_full(&self) -> bool {
        self.mappings >= self.max_mappings
    }

    /// Adds the first session of a new mapping, folded into it, and schedules its first expiry
    /// check at `due_secs`. `s.mapping` is ignored. The caller guarantees that the mapping's
    /// keys are unused (it looked the internal one up, and the allocator handed out the
    /// external endpoint) and checked [`Self::mappings_full`].
    fn insert_with_new_mapping(
        &mut self,
        mut s: Session,
        h_int: u64,
    ) -> Result<SessionId, TableFull> {
        debug_assert_eq!(
            h_int,
            self.internal_hash(s.proto, s.softwire, s.internal, self.remote_key(s.remote))
        );
        let h_ext = self.folded_external_hash(&s);
        debug_assert!(
            self.find_by_internal(s.proto, s.softwire, s.internal, self.remote_key(s.remote))
                .is_none()
        );
        debug_assert!(
            self.find_by_external(s.proto, s.external, s.remote)
                .is_none()
        );
        if self.mappings_full() {
            return Err(TableFull);
        }
        // Overlap the two bucket misses instead of taking them one after the other.
        self.out_index.prefetch(h_int);
        self.in_index.prefetch(h_ext);
        let id = self.sessions.insert(s).ok_or(TableFull)?;
        s.mapping = MappingId(id);
        if let Some(slot) = self.sessions.get_mut(id) {
            slot.mapping = s.mapping;
        }
        if self.out_index.insert(h_int, id).is_err() {
            self.sessions.remove(id);
            return Err(TableFull);
        }
        if self.in_index.insert(h_ext, id).is_err() {
            self.out_index.remove(h_int, id);
            self.sessions.remove(id);
            return Err(TableFull);
        }
        self.mappings += 1;
        Ok(SessionId(id))
    }

    /// Adds a session through the existing mapping `mid` (its `s.mapping` is set to it; a
    /// folded mapping becomes shared) and schedules its first expiry check at `due_secs`. The
    /// caller guarantees that no session with the same out key or in key exists.
    fn insert_with_mapping(
        &mut self,
        mut s: Session,
        mid: MappingId,
    ) -> Result<SessionId, TableFull> {
        debug_assert!(self.find_out(&s.out_key()).is_none(), "duplicate out key");
        debug_assert!(self.find_in(&s.in_key()).is_none(), "duplicate in key");
        if self.sessions.len() >= self.sessions.capacity() {
            return Err(TableFull);
        }
        let shared = if mid.0 & SHARED == 0 {
            self.share(mid.0)?
        } else {
            mid.0
        };
        let h_out = self.flow_hash(&s.out_key());
        let h_in = self.flow_hash(&s.in_key());
        self.out_index.prefetch(h_out);
        self.in_index.prefetch(h_in);
        s.mapping = MappingId(shared);
        let id = self.sessions.insert(s).ok_or(TableFull)?;
        if self.out_index.insert(h_out, id).is_err() {
            self.sessions.remove(id);
            return Err(TableFull);
        }
        if self.in_index.insert(h_in, id).is_err() {
            self.out_index.remove(h_out, id);
            self.sessions.remove(id);
            return Err(TableFull);
        }
        if let Some(m) = self.shared.get_mut(shared & !SHARED) {
            m.sessions += 1;
        }
        Ok(SessionId(id))
    }

    /// Turns the mapping folded into session `id` into a shared one: a record from the reserve,
    /// the mapping's index entries repointed to it, the session indexed by its flow keys.
    /// Returns the mapping's new id; on failure nothing has changed.
    fn share(&mut self, id: u32) -> Result<u32, TableFull> {
        let s = match self.sessions.get(id) {
            Some(s) if Self::folded(s, id) => *s,
            _ => vacant("mapping", id),
        };
        let slot = self
            .shared
            .insert(self.folded_mapping(&s, 1))
            .ok_or(TableFull)?;
        let shared = SHARED | slot;
        let h_out = self.flow_hash(&s.out_key());
        let h_in = self.flow_hash(&s.in_key());
        if self.out_index.insert(h_out, id).is_err() {
            self.shared.remove(slot);
            return Err(TableFull);
        }
        if self.in_index.insert(h_in, id).is_err() {
            self.out_index.remove(h_out, id);
            self.shared.remove(slot);
            return Err(TableFull);
        }
        let h_int = self.internal_hash(s.proto, s.softwire, s.internal, self.remote_key(s.remote));
        let h_ext = self.folded_external_hash(&s);
        let repointed =
            self.out_index.replace(h_int, id, shared) && self.in_index.replace(h_ext, id, shared);
        debug_assert!(
            repointed,
            "a folded mapping's index entries point at its session"
        );
        if let Some(s) = self.sessions.get_mut(id) {
            s.mapping = MappingId(shared);
        }
        Ok(shared)
    }

    /// Removes session `id` from the slab and the indexes, without touching the wheel. Returns
    /// the session and, if it was its mapping's last, the mapping, which is gone too.
    fn unlink(&mut self, id: u32) -> Option<(Session, Option<Mapping>)> {
        let s = self.sessions.remove(id)?;
        if Self::folded(&s, id) {
            let h_int =
                self.internal_hash(s.proto, s.softwire, s.internal, self.remote_key(s.remote));
            let h_ext = self.folded_external_hash(&s);
            self.out_index.prefetch(h_int);
            self.in_index.prefetch(h_ext);
            self.out_index.remove(h_int, id);
            self.in_index.remove(h_ext, id);
            self.mappings -= 1;
            return Some((s, Some(self.folded_mapping(&s, 0))));
        }
        let h_out = self.flow_hash(&s.out_key());
        let h_in = self.flow_hash(&s.in_key());
        self.out_index.prefetch(h_out);
        self.in_index.prefetch(h_in);
        self.out_index.remove(h_out, id);
        self.in_index.remove(h_in, id);
        let slot = s.mapping.0 & !SHARED;
        let last = self.shared.get_mut(slot).is_some_and(|m| {
            m.sessions = m.sessions.saturating_sub(1);
            m.sessions == 0
        });
        if !last {
            return Some((s, None));
        }
        let m = self.shared.remove(slot)?;
        let h_int = self.internal_hash(m.proto, m.softwire, m.internal, m.remote_key);
        let h_ext = self.external_hash(m.proto, m.external, self.external_remote(m.remote_key));
        self.out_index.remove(h_int, s.mapping.0);
        self.in_index.remove(h_ext, s.mapping.0);
        self.mappings -= 1;
        Some((s, Some(m)))
    }
}

impl NatTable {
    /// The mapping key's remote part under the table's mapping behaviour (RFC 4787 section 4.1).
    #[inline(always)]
    pub fn remote_key(&self, remote: Endpoint) -> Endpoint {
        self.t.remote_key(remote)
    }

    /// The hash a packet's look-up starts with: its mapping key's, outbound (`key.local` the
    /// internal endpoint) or inbound (`key.local` the external endpoint). For
    /// [`Self::prefetch`], [`Self::prefetch_next`] and the `find_*_hashed` methods.
    #[inline(always)]
    pub fn lookup_hash(&self, inbound: bool, key: &FlowKey) -> u64 {
        self.t.lookup_hash(inbound, key)
    }

    /// The first stage of a batched look-up: starts loading the index bucket of `hash`.
    #[inline(always)]
    pub fn prefetch(&self, inbound: bool, hash: u64) {
        self.t.prefetch(inbound, hash);
    }

    /// Starts loading every bucket a session with out key `out` and in key `inb` is found or
    /// indexed in: both mapping keys' and both full flow keys'. For restoring many sessions at
    /// once, where a session's mapping may be made, or become shared, by the one just before.
    #[inline(always)]
    pub fn prefetch_session(&self, out: &FlowKey, inb: &FlowKey) {
        self.t.prefetch(false, self.t.lookup_hash(false, out));
        self.t.prefetch(true, self.t.lookup_hash(true, inb));
        self.t.prefetch_flow(false, out);
        self.t.prefetch_flow(true, inb);
    }

    /// The second stage, once the bucket of `hash` is in cache: starts loading what the look-up
    /// reads next, the candidate session's record, or the bucket of `key`'s full flow key when
    /// the mapping is shared (or may not be the session's, under a dependent mapping).
    /// Returns the candidate session (a tag match, not yet checked), for [`Self::find_hashed`].
    #[inline(always)]
    pub fn prefetch_next(&self, inbound: bool, hash: u64, key: &FlowKey) -> Option<SessionId> {
        self.t.prefetch_next(inbound, hash, key)
    }

    /// The third stage of a batched look-up: the session whose out key (or in key, when
    /// `inbound`) is `key`, confirming the second stage's `candidate` first (no second pass
    /// over the bucket when it is the one), else the full look-up ([`Self::find_out`] or
    /// [`Self::find_in`] with the hash already made). Correct for any `candidate`, even a
    /// stale one.
    #[inline(always)]
    pub fn find_hashed(
        &self,
        inbound: bool,
        hash: u64,
        key: &FlowKey,
        candidate: Option<SessionId>,
    ) -> Option<SessionId> {
        self.t.find_hashed(inbound, hash, key, candidate)
    }

    /// The session whose out key (proto, internal, remote) is `key`.
    pub fn find_out(&self, key: &FlowKey) -> Option<SessionId> {
        self.t.find_out(key)
    }

    /// The session whose in key (proto, external, remote) is `key`.
    pub fn find_in(&self, key: &FlowKey) -> Option<SessionId> {
        self.t.find_in(key)
    }

    /// The mapping of `internal` for `remote_key` (see [`Mapping::remote_key`]).
    pub fn find_by_internal(
        &self,
        proto: Protocol,
        softwire: SoftwireTag,
        internal: Endpoint,
        remote_key: Endpoint,
    ) -> Option<MappingId> {
        self.t
            .find_by_internal(proto, softwire, internal, remote_key)
    }

    /// [`Self::find_by_internal`] for the mapping of a packet's out key `key` (its
    /// `remote_key` under the table's mapping behaviour), with `hash` from
    /// [`Self::lookup_hash`]`(false, key)`: the look-up that found no session for a new flow
    /// has computed it already.
    #[inline(always)]
    pub fn find_by_internal_hashed(&self, hash: u64, key: &FlowKey) -> Option<MappingId> {
        let rk = self.t.remote_key(key.remote);
        self.t
            .find_by_internal_hashed(hash, key.proto, key.softwire, key.local, rk)
    }

    /// The mapping that owns the external endpoint for packets from `remote`: the one mapping
    /// on it, whatever `remote`, without port overlapping; under it, the one whose remote key
    /// `remote` has.
    pub fn find_by_external(
        &self,
        proto: Protocol,
        external: Endpoint,
        remote: Endpoint,
    ) -> Option<MappingId> {
        self.t.find_by_external(proto, external, remote)
    }

    /// The mapping `id`, with its live session count.
    ///
    /// # Panics
    /// If `id` names no mapping (it was removed): a caller bug.
    pub fn mapping(&self, id: MappingId) -> Mapping {
        self.t.mapping(id)
    }

    /// Whether the table holds its maximum of mappings, so a new one would be refused.
    pub fn mappings_full(&self) -> bool {
        self.t.mappings_full()
    }

    /// Starts loading the inbound index bucket that a new mapping on `(proto, external)` will
    /// be inserted into, for a caller that knows the endpoint ahead of the insert (under port
    /// overlapping the bucket depends on the remote too, which the caller does not know: the
    /// hint loads the wrong one, harmlessly).
    #[inline(always)]
    pub fn prefetch_external(&self, proto: Protocol, external: Endpoint) {
        self.t
            .in_index
            .prefetch(self.t.external_hash(proto, external, Endpoint::UNSPECIFIED));
    }

    /// Adds the first session of a new mapping, folded into it, and schedules its first expiry
    /// check at `due_secs`. `s.mapping` is set. The caller guarantees that the mapping's keys
    /// are unused (it looked the internal one up, and the allocator handed out the external
    /// endpoint); a full session table or mapping limit refuses it.
    pub fn insert_with_new_mapping(
        &mut self,
        s: Session,
        due_secs: u32,
    ) -> Result<SessionId, TableFull> {
        let hash = self.t.lookup_hash(false, &s.out_key());
        self.insert_with_new_mapping_hashed(s, hash, due_secs)
    }

    /// [`Self::insert_with_new_mapping`] with `hash`, the new session's
    /// [`Self::lookup_hash`]`(false, &s.out_key())`, which the look-up of its mapping computed
    /// already.
    pub fn insert_with_new_mapping_hashed(
        &mut self,
        s: Session,
        hash: u64,
        due_secs: u32,
    ) -> Result<SessionId, TableFull> {
        let id = self.t.insert_with_new_mapping(s, hash)?;
        self.wheel.schedule(id.0, due_secs);
        Ok(id)
    }

    /// Adds a session through the existing mapping `mid` (`s.mapping` is set to its id, which
    /// changes when a folded mapping becomes shared) and schedules its first expiry check at
    /// `due_secs`. The caller guarantees that no session with the same out key or in key
    /// exists. Refused when the session table is full, or when the mapping would become shared
    /// and [`Self::shared_reserve`] is used up.
    pub fn insert_with_mapping(
        &mut self,
        s: Session,
        mid: MappingId,
        due_secs: u32,
    ) -> Result<SessionId, TableFull> {
        let id = self.t.insert_with_mapping(s, mid)?;
        self.wheel.schedule(id.0, due_secs);
        Ok(id)
    }

    /// Removes a session, its index entries and its timer (all O(1)), and with it its mapping
    /// if it was the mapping's last session (returned too); `None` if `id` names no session.
    /// Idle sessions leave through [`Self::expire`] instead.
    pub fn remove(&mut self, id: SessionId) -> Option<(Session, Option<Mapping>)> {
        let gone = self.t.unlink(id.0)?;
        self.wheel.unschedule(id.0);
        Some(gone)
    }

    /// Moves session `id`'s next expiry check to `due_secs` (O(1)), for a timeout that
    /// *shrinks* (say a TCP close, RFC 5382 REQ-5's transitory timer), which the lazy check
    /// would otherwise notice only at the old, later time.
    pub fn reschedule(&mut self, id: SessionId, due_secs: u32) {
        if self.t.sessions.contains(id.0) {
            self.wheel.unschedule(id.0);
            self.wheel.schedule(id.0, due_secs);
        }
    }

    /// The session `id`, or `None` if it was removed.
    #[inline(always)]
    pub fn try_get(&self, id: SessionId) -> Option<&Session> {
        self.t.sessions.get(id.0)
    }

    /// The session `id`.
    ///
    /// # Panics
    /// If `id` names no session (it was removed or expired): a caller bug.
    #[inline(always)]
    pub fn get(&self, id: SessionId) -> &Session {
        self.t
            .sessions
            .get(id.0)
            .unwrap_or_else(|| vacant("session", id.0))
    }

    /// The session `id`, for update (`last_seen`, `tcp`, `flags`; changing key fields or
    /// `mapping` would desynchronize the indexes).
    ///
    /// # Panics
    /// If `id` names no session (it was removed or expired): a caller bug.
    #[inline(always)]
    pub fn get_mut(&mut self, id: SessionId) -> &mut Session {
        self.t
            .sessions
            .get_mut(id.0)
            .unwrap_or_else(|| vacant("session", id.0))
    }

    /// Runs the expiry wheel up to `now_secs`. For each session whose check came due,
    /// `expiry(&session)` gives its real due time: if that is at most `now_secs` the session
    /// is removed (with its mapping, if it was the last session) and handed to `on_expired`,
    /// otherwise its check is re-scheduled for then.
    pub fn expire(
        &mut self,
        now_secs: u32,
        mut expiry: impl FnMut(&mut Session) -> u32,
        mut on_expired: impl FnMut(SessionId, Session, Option<Mapping>),
    ) {
        let NatTable { t, wheel } = self;
        wheel.advance(now_secs, |id| {
            let due = expiry(t.sessions.get_mut(id)?);
            if due > now_secs {
                return Some(due);
            }
            if let Some((s, m)) = t.unlink(id) {
                on_expired(SessionId(id), s, m);
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
        self.t.sessions.len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.t.sessions.is_empty()
    }

    /// The most sessions the table holds.
    pub fn capacity(&self) -> usize {
        self.t.sessions.capacity()
    }

    /// Number of mappings, folded and shared.
    pub fn mapping_count(&self) -> usize {
        self.t.mappings
    }

    /// All sessions, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.t.sessions.iter().map(|(i, s)| (SessionId(i), s))
    }

    /// All mappings with their session counts: folded ones in session slot order, then shared
    /// ones.
    pub fn mappings(&self) -> impl Iterator<Item = (MappingId, Mapping)> + '_ {
        let t = &self.t;
        let folded = t
            .sessions
            .iter()
            .filter(|&(i, s)| Tables::folded(s, i))
            .map(|(i, s)| (MappingId(i), t.folded_mapping(s, 1)));
        let shared = t.shared.iter().map(|(i, m)| (MappingId(SHARED | i), *m));
        folded.chain(shared)
    }

    /// Bytes allocated by the table: records, free lists, both indexes and the wheel.
    pub fn memory_bytes(&self) -> usize {
        self.t.sessions.memory_bytes()
            + self.t.shared.memory_bytes()
            + self.t.out_index.memory_bytes()
            + self.t.in_index.memory_bytes()
            + self.wheel.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    const EIM: MappingBehavior = MappingBehavior::EndpointIndependent;

    #[test]
    fn memory_for_is_what_the_built_table_holds() {
        for (s, m) in [
            (1, 1),
            (8, 8),
            (1000, 10),
            (4096, 1024),
            (100_000, 100_000),
            (1 << 20, 1 << 20),
        ] {
            let built = NatTable::new(s, m, EIM, 1, 2).memory_bytes();
            assert_eq!(
                NatTable::memory_for(s, m),
                built,
                "{s} sessions, {m} mappings"
            );
        }
    }
    const APDM: MappingBehavior = MappingBehavior::AddressAndPortDependent;

    fn ep(net: u8, host: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(net, 0, 0, host), port)
    }

    /// A session of internal endpoint `i` with remote `r`, external endpoint `x`.
    fn session(i: u8, x: u16, r: u8) -> Session {
        Session {
            internal: ep(10, i, 5000),
            external: ep(198, 1, x),
            remote: ep(8, r, 53),
            proto: Protocol::Udp,
            tcp: 0,
            flags: 0,
            last_seen: 0,
            mapping: MappingId(u32::MAX),
            softwire: SoftwireTag::NONE,
        }
    }

    /// [`session`] behind softwire `n`.
    fn behind(n: u32, s: Session) -> Session {
        Session {
            softwire: SoftwireTag::of(crate::table::SoftwireId::new(n).unwrap()),
            ..s
        }
    }

    /// RFC 6333 section 6.6 (the extended binding table): two homes behind different B4s with the same private endpoint
    /// and remote are two flows, with two mappings; each is found only under its softwire.
    #[test]
    fn the_softwire_separates_equal_internal_endpoints() {
        for behavior in [EIM, APDM] {
            let mut t = NatTable::new(8, 8, behavior, 1, 2);
            let plain = session(1, 40_000, 1);
            let a = behind(1, session(1, 40_001, 1));
            let b = behind(0x1_0001, session(1, 40_002, 1));
            for s in [plain, a, b] {
                assert_eq!(found_both_ways(&t, &s), None);
                let rk = t.remote_key(s.remote);
                assert_eq!(
                    t.find_by_internal(s.proto, s.softwire, s.internal, rk),
                    None
                );
                t.insert_with_new_mapping(s, 0).unwrap();
            }
            assert_eq!(t.mapping_count(), 3);
            for s in [plain, a, b] {
                let id = found_both_ways(&t, &s).unwrap();
                assert_eq!(t.get(id).softwire, s.softwire);
                assert_eq!(t.get(id).external, s.external);
                let m = t.mapping(t.get(id).mapping);
                assert_eq!(m.softwire, s.softwire);
            }
        }
    }

    fn found_both_ways(t: &NatTable, s: &Session) -> Option<SessionId> {
        let out = t.find_out(&s.out_key());
        assert_eq!(out, t.find_in(&s.in_key()), "both ways agree for {s:?}");
        out
    }

    #[test]
    fn find_hashed_confirms_its_candidate_or_looks_up() {
        // The batch path passes the second stage's candidate, which earlier packets of the
        // batch may have made stale: any candidate, right, wrong, freed or absent, must give
        // the look-up's answer.
        let mut t = NatTable::new(16, 16, EIM, 1, 2);
        let a = session(1, 40_000, 1);
        let b = session(2, 40_001, 1);
        let ia = t.insert_with_new_mapping(a, 30).unwrap();
        let ib = t.insert_with_new_mapping(b, 30).unwrap();
        let gone = t
            .insert_with_new_mapping(session(3, 40_002, 1), 30)
            .unwrap();
        assert!(t.remove(gone).is_some());
        for (inbound, key) in [(false, a.out_key()), (true, a.in_key())] {
            let hash = t.lookup_hash(inbound, &key);
            assert_eq!(t.prefetch_next(inbound, hash, &key), Some(ia));
            for candidate in [Some(ia), Some(ib), Some(gone), Some(SessionId(15)), None] {
                assert_eq!(
                    t.find_hashed(inbound, hash, &key, candidate),
                    Some(ia),
                    "inbound {inbound}, candidate {candidate:?}"
                );
            }
        }
        let absent = session(4, 40_003, 1).out_key();
        let hash = t.lookup_hash(false, &absent);
        assert_eq!(t.find_hashed(false, hash, &absent, Some(ia)), None);
    }

    #[test]
    fn a_folded_mapping_lives_and_dies_with_its_session() {
        let mut t = NatTable::new(16, 16, EIM, 1, 2);
        let s = session(1, 40_000, 1);
        let id = t.insert_with_new_mapping(s, 30).unwrap();
        assert_eq!(found_both_ways(&t, &s), Some(id));
        let mid = t.find_by_internal(
            Protocol::Udp,
            SoftwireTag::NONE,
            s.internal,
            Endpoint::UNSPECIFIED,
        );
        assert_eq!(mid, Some(MappingId(id.0)));
        assert_eq!(t.find_by_external(Protocol::Udp, s.external, s.remote), mid);
        assert_eq!(
            t.find_by_external(Protocol::Tcp, s.external, s.remote),
            None
        );
        let m = t.mapping(MappingId(id.0));
        assert_eq!(
            (m.internal, m.external, m.sessions),
            (s.internal, s.external, 1)
        );
        assert_eq!(t.get(id).mapping, MappingId(id.0));
        // Another remote of the same internal endpoint: no session, but the mapping is found.
        assert_eq!(t.find_out(&session(1, 40_000, 2).out_key()), None);
        assert_eq!(t.find_in(&session(1, 40_000, 2).in_key()), None);
        assert_eq!((t.len(), t.mapping_count()), (1, 1));
        let (gone, m) = t.remove(id).unwrap();
        assert_eq!(gone.internal, s.internal);
        assert_eq!(m.map(|m| (m.external, m.sessions)), Some((s.external, 0)));
        assert_eq!(found_both_ways(&t, &s), None);
        assert_eq!(
            t.find_by_external(Protocol::Udp, s.external, s.remote),
            None
        );
        assert_eq!((t.len(), t.mapping_count(), t.next_due()), (0, 0, None));
    }

    #[test]
    fn a_second_session_shares_the_mapping_until_the_last_goes() {
        let mut t = NatTable::new(16, 16, EIM, 1, 2);
        let a = session(1, 40_000, 1);
        let b = session(1, 40_000, 2);
        let ia = t.insert_with_new_mapping(a, 30).unwrap();
        let folded = MappingId(ia.0);
        let ib = t.insert_with_mapping(b, folded, 30).unwrap();
        let shared = t.get(ia).mapping;
        assert_ne!(shared, folded, "the mapping got a record");
        assert_eq!(t.get(ib).mapping, shared);
        assert_eq!(found_both_ways(&t, &a), Some(ia));
        assert_eq!(found_both_ways(&t, &b), Some(ib));
        assert_eq!(found_both_ways(&t, &session(1, 40_000, 3)), None);
        assert_eq!(
            t.find_by_external(Protocol::Udp, a.external, a.remote),
            Some(shared)
        );
        assert_eq!(
            t.find_by_internal(
                Protocol::Udp,
                SoftwireTag::NONE,
                a.internal,
                Endpoint::UNSPECIFIED
            ),
            Some(shared)
        );
        assert_eq!(t.mapping(shared).sessions, 2);
        assert_eq!(t.mapping_count(), 1);
        assert_eq!(
            t.mappings()
                .map(|(id, m)| (id, m.sessions))
                .collect::<Vec<_>>(),
            vec![(shared, 2)]
        );
        assert_eq!(t.remove(ia).map(|(_, m)| m), Some(None), "one session left");
        assert_eq!(found_both_ways(&t, &a), None);
        assert_eq!(found_both_ways(&t, &b), Some(ib));
        let c = session(1, 40_000, 4);
        let ic = t.insert_with_mapping(c, shared, 30).unwrap();
        assert_eq!(found_both_ways(&t, &c), Some(ic));
        assert!(t.remove(ib).unwrap().1.is_none());
        let last = t.remove(ic).unwrap().1.unwrap();
        assert_eq!(
            (last.internal, last.external, last.sessions),
            (a.internal, a.external, 0)
        );
        assert_eq!(
            t.find_by_external(Protocol::Udp, a.external, a.remote),
            None
        );
        assert_eq!((t.len(), t.mapping_count()), (0, 0));
    }

    #[test]
    fn dependent_mappings_find_a_session_opened_inbound_under_another() {
        // APDM: mapping m1 for remote 1, mapping m2 for remote 2; remote 3 opened a session
        // inbound through m2. Its out key maps to a third mapping key, which does not exist.
        let mut t = NatTable::new(16, 16, APDM, 1, 2);
        let s1 = session(1, 40_000, 1);
        let s2 = session(1, 40_001, 2);
        let i1 = t.insert_with_new_mapping(s1, 30).unwrap();
        let i2 = t.insert_with_new_mapping(s2, 30).unwrap();
        let s3 = session(1, 40_001, 3);
        let i3 = t.insert_with_mapping(s3, MappingId(i2.0), 30).unwrap();
        assert_eq!(found_both_ways(&t, &s1), Some(i1));
        assert_eq!(found_both_ways(&t, &s2), Some(i2));
        assert_eq!(found_both_ways(&t, &s3), Some(i3));
        assert_eq!(
            t.find_by_internal(Protocol::Udp, SoftwireTag::NONE, s3.internal, s3.remote),
            None
        );
        assert_eq!(t.mapping_count(), 2);
        // The session from remote 3 expires; m2 stays, shared, with its first session.
        let mut gone = Vec::new();
        t.get_mut(i1).last_seen = 100;
        t.get_mut(i2).last_seen = 100;
        t.expire(
            30,
            |s| s.last_seen.max(30),
            |id, _, m| gone.push((id, m.is_some())),
        );
        assert_eq!(gone, vec![(i3, false)]);
        assert_eq!(found_both_ways(&t, &s2), Some(i2));
        assert_eq!(t.mapping(t.get(i2).mapping).sessions, 1);
        t.expire(
            200,
            |s| s.last_seen,
            |id, _, m| gone.push((id, m.is_some())),
        );
        assert_eq!(gone.len(), 3);
        assert!(
            gone.iter().skip(1).all(|&(_, m)| m),
            "each was its mapping's last"
        );
        assert_eq!((t.len(), t.mapping_count()), (0, 0));
    }

    #[test]
    fn limits_refuse_without_changing_anything() {
        let mut t = NatTable::new(3, 2, EIM, 1, 2);
        let a = t
            .insert_with_new_mapping(session(1, 40_000, 1), 30)
            .unwrap();
        t.insert_with_new_mapping(session(2, 40_001, 1), 30)
            .unwrap();
        assert!(t.mappings_full());
        assert_eq!(
            t.insert_with_new_mapping(session(3, 40_002, 1), 30),
            Err(TableFull)
        );
        t.insert_with_mapping(session(1, 40_000, 2), MappingId(a.0), 30)
            .unwrap();
        let before = t.get(a).mapping;
        assert_eq!(
            t.insert_with_mapping(session(1, 40_000, 3), before, 30),
            Err(TableFull),
            "session table full"
        );
        assert_eq!((t.len(), t.mapping_count()), (3, 2));
        assert_eq!(found_both_ways(&t, &session(3, 40_002, 1)), None);
    }

    #[test]
    fn the_reserve_is_exact_for_small_tables_and_a_quarter_for_big_ones() {
        assert_eq!(NatTable::shared_reserve(1000, 1000), 500);
        assert_eq!(NatTable::shared_reserve(1000, 10), 10);
        assert_eq!(NatTable::shared_reserve(1 << 20, 1 << 20), (1 << 18) + 1024);
    }

    #[test]
    fn past_the_reserve_only_a_mapping_s_second_session_is_refused() {
        let (n, reserve) = (1 << 15, NatTable::shared_reserve(1 << 15, 1 << 15));
        assert!(reserve < n / 2, "a big table's reserve is not exact");
        let mut t = NatTable::new(n, n, EIM, 1, 2);
        let s = |i: u32, r: u8| Session {
            softwire: SoftwireTag::NONE,
            internal: Endpoint::new(Ipv4Addr::from_bits(0x0a00_0000 + i), 5000),
            external: Endpoint::new(Ipv4Addr::new(198, 51, 100, 1), 1024 + i as u16),
            ..session(0, 0, r)
        };
        let mut first = Vec::new();
        for i in 0..=reserve as u32 {
            first.push(t.insert_with_new_mapping(s(i, 1), 30).unwrap());
        }
        for (i, id) in first.iter().enumerate().take(reserve) {
            t.insert_with_mapping(s(i as u32, 2), MappingId(id.0), 30)
                .unwrap();
        }
        let last = *first.last().unwrap();
        assert_eq!(
            t.insert_with_mapping(s(reserve as u32, 2), MappingId(last.0), 30),
            Err(TableFull),
            "no record left to share one more mapping"
        );
        assert_eq!(
            found_both_ways(&t, &s(reserve as u32, 1)),
            Some(last),
            "unchanged"
        );
        let shared = t.get(first[0]).mapping;
        t.insert_with_mapping(s(0, 3), shared, 30).unwrap();
        t.insert_with_new_mapping(s(reserve as u32 + 1, 1), 30)
            .unwrap();
        // A shared mapping that goes gives its record back.
        t.remove(first[1]).unwrap();
        let gone = t.find_out(&s(1, 2).out_key()).unwrap();
        assert!(t.remove(gone).unwrap().1.is_some());
        t.insert_with_mapping(s(reserve as u32, 2), MappingId(last.0), 30)
            .unwrap();
    }

    #[test]
    fn memory_per_session_with_a_mapping_each() {
        let n = 1 << 20;
        let t = NatTable::new(n, n, EIM, 1, 2);
        let per_session = t.memory_bytes() as f64 / n as f64;
        eprintln!("{per_session:.1} bytes per session, mappings included");
        assert!(per_session <= 65.0, "{per_session} bytes per session");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A session from internal endpoint `.0` to remote `.1`, through its mapping or a new one.
        Open(u8, u8),
        /// Session `.0` (by index among the live ones, modulo) goes.
        Close(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6, 0u8..6).prop_map(|(i, r)| Op::Open(i, r)),
            2 => any::<usize>().prop_map(Op::Close),
        ]
    }

    #[test]
    fn rfc7857_port_overlapping_shares_an_external_endpoint_between_remotes() {
        let keys = MappingKeys {
            mapping: APDM,
            port_overlapping: true,
        };
        let mut t = NatTable::new(16, 16, keys, 1, 2);
        // Two internal endpoints on one external endpoint, each with its own remote, and a
        // third mapping of the first internal endpoint to another remote, on the same port too.
        let a = session(1, 40_000, 1);
        let b = session(2, 40_000, 2);
        let c = session(1, 40_000, 3);
        let ids: Vec<_> = [a, b, c]
            .iter()
            .map(|&s| t.insert_with_new_mapping(s, 30).unwrap())
            .collect();
        for (s, id) in [a, b, c].iter().zip(&ids) {
            assert_eq!(found_both_ways(&t, s), Some(*id));
            assert_eq!(
                t.find_by_external(Protocol::Udp, s.external, s.remote),
                Some(MappingId(id.0))
            );
            let hash = t.lookup_hash(true, &s.in_key());
            assert_eq!(t.find_hashed(true, hash, &s.in_key(), None), Some(*id));
        }
        assert_eq!(t.mapping_count(), 3);
        // A remote none of them talks to finds no mapping on the port.
        let stranger = session(1, 40_000, 4);
        assert_eq!(t.find_in(&stranger.in_key()), None);
        assert_eq!(
            t.find_by_external(Protocol::Udp, stranger.external, stranger.remote),
            None
        );
        // One goes; the others keep the port.
        assert!(t.remove(ids[0]).unwrap().1.is_some());
        assert_eq!(found_both_ways(&t, &a), None);
        assert_eq!(found_both_ways(&t, &b), Some(ids[1]));
        assert_eq!(found_both_ways(&t, &c), Some(ids[2]));
    }

    #[test]
    fn without_overlapping_the_external_endpoint_alone_finds_the_mapping() {
        let mut t = NatTable::new(16, 16, APDM, 1, 2);
        let a = session(1, 40_000, 1);
        let id = t.insert_with_new_mapping(a, 30).unwrap();
        // Any remote names the one mapping on the port (filtering then decides).
        let other = session(1, 40_000, 9);
        assert_eq!(
            t.find_by_external(Protocol::Udp, a.external, other.remote),
            Some(MappingId(id.0))
        );
    }

    fn behavior() -> impl Strategy<Value = MappingBehavior> {
        prop_oneof![
            Just(EIM),
            Just(MappingBehavior::AddressDependent),
            Just(APDM)
        ]
    }

    proptest! {
        /// Against a model of mappings and sessions kept in plain maps: every session is found
        /// both ways, every mapping by both keys with its session count, under each mapping
        /// behaviour, as sessions come and go and mappings fold and share.
        #[test]
        fn matches_a_map_model(b in behavior(), ops in prop::collection::vec(op(), 1..200)) {
            let mut t = NatTable::new(20, 12, b, 3, 4);
            // (internal, remote key) -> (external port, live remotes)
            let mut mappings: HashMap<(u8, Endpoint), (u16, Vec<u8>)> = HashMap::new();
            let mut live: Vec<(u8, u8, SessionId)> = Vec::new();
            let mut next_port = 40_000u16;
            for op in ops {
                match op {
                    Op::Open(i, r) => {
                        let rk = t.remote_key(ep(8, r, 53));
                        if live.iter().any(|&(li, lr, _)| (li, lr) == (i, r)) {
                            continue;
                        }
                        let res = match mappings.get(&(i, rk)) {
                            Some(&(x, _)) => {
                                let mid = t.find_by_internal(Protocol::Udp, SoftwireTag::NONE, ep(10, i, 5000), rk);
                                prop_assert!(mid.is_some());
                                t.insert_with_mapping(session(i, x, r), mid.unwrap(), 100)
                                    .map(|id| (id, x))
                            }
                            None => {
                                prop_assert_eq!(t.find_by_internal(Protocol::Udp, SoftwireTag::NONE, ep(10, i, 5000), rk), None);
                                next_port += 1;
                                t.insert_with_new_mapping(session(i, next_port, r), 100)
                                    .map(|id| (id, next_port))
                            }
                        };
                        match res {
                            Ok((id, x)) => {
                                mappings.entry((i, rk)).or_insert((x, Vec::new())).1.push(r);
                                live.push((i, r, id));
                            }
                            Err(TableFull) => prop_assert!(
                                t.len() == 20 || (t.mappings_full() && !mappings.contains_key(&(i, rk)))
                            ),
                        }
                    }
                    Op::Close(k) if !live.is_empty() => {
                        let (i, r, id) = live.swap_remove(k % live.len());
                        let rk = t.remote_key(ep(8, r, 53));
                        let (_, m) = t.remove(id).unwrap();
                        let entry = mappings.get_mut(&(i, rk)).unwrap();
                        entry.1.retain(|&x| x != r);
                        prop_assert_eq!(m.is_some(), entry.1.is_empty());
                        if entry.1.is_empty() {
                            mappings.remove(&(i, rk));
                        }
                    }
                    Op::Close(_) => {}
                }
                prop_assert_eq!(t.len(), live.len());
                prop_assert_eq!(t.mapping_count(), mappings.len());
                for i in 0..6 {
                    for r in 0..6 {
                        let rk = t.remote_key(ep(8, r, 53));
                        let want = live.iter().find(|&&(li, lr, _)| (li, lr) == (i, r)).map(|l| l.2);
                        let x = mappings.get(&(i, rk)).map_or(1, |m| m.0);
                        let s = session(i, x, r);
                        prop_assert_eq!(t.find_out(&s.out_key()), want);
                        if want.is_some() {
                            prop_assert_eq!(t.find_in(&s.in_key()), want);
                        }
                    }
                }
                for (&(i, rk), &(x, ref remotes)) in &mappings {
                    let mid = t.find_by_internal(Protocol::Udp, SoftwireTag::NONE, ep(10, i, 5000), rk);
                    prop_assert!(mid.is_some());
                    prop_assert_eq!(mid, t.find_by_external(Protocol::Udp, ep(198, 1, x), rk));
                    let m = t.mapping(mid.unwrap());
                    prop_assert_eq!(m.sessions as usize, remotes.len());
                }
            }
        }
    }
}
