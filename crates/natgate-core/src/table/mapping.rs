//! Mappings (internal endpoint to external endpoint, RFC 4787 section 4.1) and the
//! address-dependent filtering state (RFC 4787 section 5).

use std::net::Ipv4Addr;

use super::{FlowHasher, HashIndex, Slab, TableFull};
use crate::endpoint::{Endpoint, Protocol};

/// A mapping's slot in the [`MappingTable`]. Valid until the mapping is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MappingId(pub u32);

/// One mapping: internal endpoint to external endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint it is translated to; unique per protocol (no port overloading, RFC 4787
    /// REQ-3), so it identifies the mapping from outside.
    pub external: Endpoint,
    /// What of the remote side the mapping is specific to (RFC 4787 REQ-1):
    /// [`Endpoint::UNSPECIFIED`] for endpoint-independent mapping, `(remote addr, 0)` for
    /// address-dependent, the full remote endpoint for address-and-port-dependent.
    pub remote_key: Endpoint,
    /// The protocol.
    pub proto: Protocol,
    /// How many live sessions use the mapping; it can go when this reaches zero.
    pub sessions: u32,
}

/// Panics for an id that names no mapping: a caller bug (the mapping was removed).
#[cold]
fn vacant(id: u32) -> ! {
    panic!("no mapping in slot {id}")
}

/// The two hash words of a (proto, endpoint, second word) key.
#[inline(always)]
fn words(proto: Protocol, endpoint: Endpoint, second: u64) -> (u64, u64) {
    (
        (u64::from(proto.ip_number()) << 48) | endpoint.to_u64(),
        second,
    )
}

/// All mappings, found by (proto, internal, remote key) for outbound packets and by
/// (proto, external) for inbound ones.
#[derive(Debug, Clone)]
pub struct MappingTable {
    slab: Slab<Mapping>,
    by_internal: HashIndex,
    by_external: HashIndex,
    hasher: FlowHasher,
}

impl MappingTable {
    /// A table for up to `max_mappings` mappings, allocated now. `hasher_seed` keys the hash.
    ///
    /// # Panics
    /// If `max_mappings` does not fit in a `u32`.
    pub fn new(max_mappings: usize, hasher_seed: u64) -> Self {
        MappingTable {
            slab: Slab::new(max_mappings),
            by_internal: HashIndex::with_capacity(max_mappings),
            by_external: HashIndex::with_capacity(max_mappings),
            hasher: FlowHasher::new(hasher_seed),
        }
    }

    fn internal_hash(&self, proto: Protocol, internal: Endpoint, remote_key: Endpoint) -> u64 {
        let (a, b) = words(proto, internal, remote_key.to_u64());
        self.hasher.hash2(a, b)
    }

    fn external_hash(&self, proto: Protocol, external: Endpoint) -> u64 {
        let (a, b) = words(proto, external, 0);
        self.hasher.hash2(a, b)
    }

    /// The mapping of `internal` for `remote_key` (see [`Mapping::remote_key`]).
    pub fn find_by_internal(
        &self,
        proto: Protocol,
        internal: Endpoint,
        remote_key: Endpoint,
    ) -> Option<MappingId> {
        let h = self.internal_hash(proto, internal, remote_key);
        self.by_internal
            .find(h, |v| {
                self.slab.get(v).is_some_and(|m| {
                    m.internal == internal && m.remote_key == remote_key && m.proto == proto
                })
            })
            .map(MappingId)
    }

    /// The mapping that owns the external endpoint.
    pub fn find_by_external(&self, proto: Protocol, external: Endpoint) -> Option<MappingId> {
        let h = self.external_hash(proto, external);
        self.by_external
            .find(h, |v| {
                self.slab
                    .get(v)
                    .is_some_and(|m| m.external == external && m.proto == proto)
            })
            .map(MappingId)
    }

    /// Adds a mapping. The caller guarantees that neither its (proto, internal, remote key) nor
    /// its (proto, external) is already mapped.
    pub fn insert(&mut self, m: Mapping) -> Result<MappingId, TableFull> {
        debug_assert!(
            self.find_by_internal(m.proto, m.internal, m.remote_key)
                .is_none()
        );
        debug_assert!(self.find_by_external(m.proto, m.external).is_none());
        let h_int = self.internal_hash(m.proto, m.internal, m.remote_key);
        let h_ext = self.external_hash(m.proto, m.external);
        let id = self.slab.insert(m).ok_or(TableFull)?;
        if self.by_internal.insert(h_int, id).is_err() {
            self.slab.remove(id);
            return Err(TableFull);
        }
        if self.by_external.insert(h_ext, id).is_err() {
            self.by_internal.remove(h_int, id);
            self.slab.remove(id);
            return Err(TableFull);
        }
        Ok(MappingId(id))
    }

    /// Removes a mapping and its index entries; `None` if `id` names no mapping.
    pub fn remove(&mut self, id: MappingId) -> Option<Mapping> {
        let m = self.slab.remove(id.0)?;
        let h_int = self.internal_hash(m.proto, m.internal, m.remote_key);
        let h_ext = self.external_hash(m.proto, m.external);
        self.by_internal.remove(h_int, id.0);
        self.by_external.remove(h_ext, id.0);
        Some(m)
    }

    /// The mapping `id`.
    ///
    /// # Panics
    /// If `id` names no mapping (it was removed): a caller bug.
    pub fn get(&self, id: MappingId) -> &Mapping {
        self.slab.get(id.0).unwrap_or_else(|| vacant(id.0))
    }

    /// The mapping `id`, for update (`sessions`; changing key fields would desynchronize the
    /// indexes).
    ///
    /// # Panics
    /// If `id` names no mapping (it was removed): a caller bug.
    pub fn get_mut(&mut self, id: MappingId) -> &mut Mapping {
        self.slab.get_mut(id.0).unwrap_or_else(|| vacant(id.0))
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Whether there is no mapping.
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The most mappings the table holds.
    pub fn capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// All mappings, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (MappingId, &Mapping)> {
        self.slab.iter().map(|(i, m)| (MappingId(i), m))
    }

    /// Removes every mapping (O(capacity)).
    pub fn clear(&mut self) {
        self.slab.clear();
        self.by_internal.clear();
        self.by_external.clear();
    }

    /// Bytes allocated by the table.
    pub fn memory_bytes(&self) -> usize {
        self.slab.memory_bytes() + self.by_internal.memory_bytes() + self.by_external.memory_bytes()
    }
}

/// One (proto, external endpoint, remote address) pair and how many sessions share it.
#[derive(Debug, Clone, Copy)]
struct FilterEntry {
    external: Endpoint,
    remote: Ipv4Addr,
    proto: Protocol,
    count: u32,
}

/// Address-dependent filtering state (RFC 4787 REQ-8): which remote addresses each external
/// endpoint has sent to, reference-counted by the sessions that did, so that an inbound packet
/// from a new port of a known address can be admitted without a per-port session.
#[derive(Debug, Clone)]
pub struct AddressFilter {
    slab: Slab<FilterEntry>,
    index: HashIndex,
    hasher: FlowHasher,
}

impl AddressFilter {
    /// A filter for up to `max_entries` distinct (proto, external, remote address) entries,
    /// allocated now. `hasher_seed` keys the hash (remote addresses are attacker-chosen).
    ///
    /// # Panics
    /// If `max_entries` does not fit in a `u32`.
    pub fn new(max_entries: usize, hasher_seed: u64) -> Self {
        AddressFilter {
            slab: Slab::new(max_entries),
            index: HashIndex::with_capacity(max_entries),
            hasher: FlowHasher::new(hasher_seed),
        }
    }

    fn hash(&self, proto: Protocol, external: Endpoint, remote: Ipv4Addr) -> u64 {
        let (a, b) = words(proto, external, u64::from(remote.to_bits()));
        self.hasher.hash2(a, b)
    }

    fn find(
        &self,
        hash: u64,
        proto: Protocol,
        external: Endpoint,
        remote: Ipv4Addr,
    ) -> Option<u32> {
        self.index.find(hash, |v| {
            self.slab
                .get(v)
                .is_some_and(|e| e.external == external && e.remote == remote && e.proto == proto)
        })
    }

    /// Counts one more session from `external` to `remote`.
    pub fn add(
        &mut self,
        proto: Protocol,
        external: Endpoint,
        remote: Ipv4Addr,
    ) -> Result<(), TableFull> {
        let h = self.hash(proto, external, remote);
        if let Some(e) = self
            .find(h, proto, external, remote)
            .and_then(|v| self.slab.get_mut(v))
        {
            e.count += 1;
            return Ok(());
        }
        let entry = FilterEntry {
            external,
            remote,
            proto,
            count: 1,
        };
        let id = self.slab.insert(entry).ok_or(TableFull)?;
        if self.index.insert(h, id).is_err() {
            self.slab.remove(id);
            return Err(TableFull);
        }
        Ok(())
    }

    /// Counts one session fewer; the pair is forgotten when none is left. A pair that was never
    /// added is ignored.
    pub fn remove(&mut self, proto: Protocol, external: Endpoint, remote: Ipv4Addr) {
        let h = self.hash(proto, external, remote);
        let Some(id) = self.find(h, proto, external, remote) else {
            return;
        };
        if let Some(e) = self.slab.get_mut(id) {
            e.count -= 1;
            if e.count == 0 {
                self.slab.remove(id);
                self.index.remove(h, id);
            }
        }
    }

    /// Whether some live session went from `external` to `remote`.
    pub fn contains(&self, proto: Protocol, external: Endpoint, remote: Ipv4Addr) -> bool {
        let h = self.hash(proto, external, remote);
        self.find(h, proto, external, remote).is_some()
    }

    /// Forgets every entry (O(capacity)).
    pub fn clear(&mut self) {
        self.slab.clear();
        self.index.clear();
    }

    /// Bytes allocated by the filter.
    pub fn memory_bytes(&self) -> usize {
        self.slab.memory_bytes() + self.index.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(198, 51, 100, last), port)
    }

    fn mapping(i: u8, remote_key: Endpoint) -> Mapping {
        Mapping {
            internal: Endpoint::new(Ipv4Addr::new(10, 0, 0, i), 5000),
            external: ep(1, 20_000 + u16::from(i)),
            remote_key,
            proto: Protocol::Udp,
            sessions: 0,
        }
    }

    #[test]
    fn mappings_found_both_ways() {
        let mut t = MappingTable::new(4, 3);
        let eim = mapping(1, Endpoint::UNSPECIFIED);
        let adm = mapping(2, Endpoint::new(Ipv4Addr::new(8, 8, 8, 8), 0));
        let a = t.insert(eim).unwrap();
        let b = t.insert(adm).unwrap();
        assert_eq!(
            t.find_by_internal(Protocol::Udp, eim.internal, Endpoint::UNSPECIFIED),
            Some(a)
        );
        assert_eq!(
            t.find_by_internal(Protocol::Tcp, eim.internal, Endpoint::UNSPECIFIED),
            None
        );
        assert_eq!(
            t.find_by_internal(Protocol::Udp, adm.internal, adm.remote_key),
            Some(b)
        );
        assert_eq!(
            t.find_by_internal(Protocol::Udp, adm.internal, Endpoint::UNSPECIFIED),
            None
        );
        assert_eq!(t.find_by_external(Protocol::Udp, adm.external), Some(b));
        assert_eq!(t.find_by_external(Protocol::Icmp, adm.external), None);
        t.get_mut(a).sessions += 1;
        assert_eq!(t.get(a).sessions, 1);
        assert_eq!((t.len(), t.capacity()), (2, 4));
        assert_eq!(t.iter().map(|(id, _)| id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(t.remove(a).map(|m| m.external), Some(eim.external));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.find_by_external(Protocol::Udp, eim.external), None);
        assert!(t.memory_bytes() > 0);
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn mapping_table_full() {
        let mut t = MappingTable::new(2, 3);
        t.insert(mapping(1, Endpoint::UNSPECIFIED)).unwrap();
        t.insert(mapping(2, Endpoint::UNSPECIFIED)).unwrap();
        assert_eq!(t.insert(mapping(3, Endpoint::UNSPECIFIED)), Err(TableFull));
    }

    #[test]
    fn address_filter_counts_references() {
        let mut f = AddressFilter::new(2, 5);
        let ext = ep(1, 40_000);
        let r1 = Ipv4Addr::new(1, 1, 1, 1);
        let r2 = Ipv4Addr::new(2, 2, 2, 2);
        f.add(Protocol::Udp, ext, r1).unwrap();
        f.add(Protocol::Udp, ext, r1).unwrap();
        f.add(Protocol::Udp, ext, r2).unwrap();
        assert_eq!(
            f.add(Protocol::Udp, ext, Ipv4Addr::new(3, 3, 3, 3)),
            Err(TableFull)
        );
        assert!(f.contains(Protocol::Udp, ext, r1));
        assert!(!f.contains(Protocol::Tcp, ext, r1));
        assert!(!f.contains(Protocol::Udp, ep(1, 40_001), r1));
        f.remove(Protocol::Udp, ext, r1);
        assert!(f.contains(Protocol::Udp, ext, r1), "one session left");
        f.remove(Protocol::Udp, ext, r1);
        assert!(!f.contains(Protocol::Udp, ext, r1));
        f.remove(Protocol::Udp, ext, r1); // never-added or gone: ignored
        f.add(Protocol::Udp, ext, Ipv4Addr::new(3, 3, 3, 3))
            .unwrap();
        f.clear();
        assert!(!f.contains(Protocol::Udp, ext, r2));
        assert!(f.memory_bytes() > 0);
    }
}
