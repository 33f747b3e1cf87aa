//! Mappings (internal endpoint to external endpoint, RFC 4787 section 4.1) and the
//! address-dependent filtering state (RFC 4787 section 5).

use std::net::Ipv4Addr;

use super::SoftwireTag;
use super::{FlowHasher, HashIndex, Slab, TableFull};
use crate::endpoint::{Endpoint, Protocol};

/// A mapping in the [`NatTable`](super::NatTable). Valid until the mapping is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MappingId(pub u32);

/// One mapping: internal endpoint to external endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint it is translated to; unique per protocol (no port overloading, RFC 4787
    /// REQ-3), so it identifies the mapping from outside; under port overlapping (RFC 7857
    /// section 3) unique per protocol and remote key, which identify it together.
    pub external: Endpoint,
    /// What of the remote side the mapping is specific to (RFC 4787 REQ-1):
    /// [`Endpoint::UNSPECIFIED`] for endpoint-independent mapping, `(remote addr, 0)` for
    /// address-dependent, the full remote endpoint for address-and-port-dependent.
    pub remote_key: Endpoint,
    /// The protocol.
    pub proto: Protocol,
    /// How many live sessions use the mapping; it can go when this reaches zero.
    pub sessions: u32,
    /// The softwire the internal endpoint is behind, if any: part of the internal identity.
    pub softwire: SoftwireTag,
}

/// The two hash words of a (proto, endpoint, second word) key.
#[inline(always)]
fn words(proto: Protocol, endpoint: Endpoint, second: u64) -> (u64, u64) {
    (
        (u64::from(proto.ip_number()) << 48) | endpoint.to_u64(),
        second,
    )
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

/// One (proto, external endpoint), the internal endpoint the allocator gave it to, and how
/// many mappings share it.
#[derive(Debug, Clone, Copy)]
struct UsersEntry {
    external: Endpoint,
    owner: Endpoint,
    proto: Protocol,
    count: u32,
}

/// How many mappings share each external endpoint under port overlapping (RFC 7857 section 3),
/// so that the endpoint goes back to the allocator only with the last of them: the allocator
/// hands an endpoint out once, and the mappings that overlap on it borrow that one allocation,
/// which goes back in the name of the internal endpoint it was made for (the allocator counts
/// its ports per subscriber).
#[derive(Debug, Clone)]
pub struct PortUsers {
    slab: Slab<UsersEntry>,
    index: HashIndex,
    hasher: FlowHasher,
}

impl PortUsers {
    /// Counts for up to `max_endpoints` distinct (proto, external) pairs, allocated now.
    ///
    /// # Panics
    /// If `max_endpoints` does not fit in a `u32`.
    pub fn new(max_endpoints: usize, hasher_seed: u64) -> Self {
        PortUsers {
            slab: Slab::new(max_endpoints),
            index: HashIndex::with_capacity(max_endpoints),
            hasher: FlowHasher::new(hasher_seed),
        }
    }

    fn hash(&self, proto: Protocol, external: Endpoint) -> u64 {
        let (a, b) = words(proto, external, 0);
        self.hasher.hash2(a, b)
    }

    fn find(&self, hash: u64, proto: Protocol, external: Endpoint) -> Option<u32> {
        self.index.find(hash, |v| {
            self.slab
                .get(v)
                .is_some_and(|e| e.external == external && e.proto == proto)
        })
    }

    /// How many mappings use `external`.
    pub fn count(&self, proto: Protocol, external: Endpoint) -> u32 {
        let h = self.hash(proto, external);
        self.find(h, proto, external)
            .and_then(|v| self.slab.get(v))
            .map_or(0, |e| e.count)
    }

    /// Counts one more mapping on `external`; `owner` is the internal endpoint of the first,
    /// which the allocator gave the endpoint to.
    pub fn add(
        &mut self,
        proto: Protocol,
        external: Endpoint,
        owner: Endpoint,
    ) -> Result<(), TableFull> {
        let h = self.hash(proto, external);
        if let Some(e) = self
            .find(h, proto, external)
            .and_then(|v| self.slab.get_mut(v))
        {
            e.count += 1;
            return Ok(());
        }
        let entry = UsersEntry {
            external,
            owner,
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

    /// Counts one mapping fewer on `external`. When that was the last, the endpoint is free
    /// to go back to the allocator, in the name of the owner returned; `None` while others
    /// share it, or if it was never counted.
    pub fn remove(&mut self, proto: Protocol, external: Endpoint) -> Option<Endpoint> {
        let h = self.hash(proto, external);
        let id = self.find(h, proto, external)?;
        let e = self.slab.get_mut(id)?;
        e.count -= 1;
        if e.count > 0 {
            return None;
        }
        let owner = e.owner;
        self.slab.remove(id);
        self.index.remove(h, id);
        Some(owner)
    }

    /// Bytes allocated.
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

    #[test]
    fn port_users_free_the_endpoint_with_the_last_mapping() {
        let mut u = PortUsers::new(2, 5);
        let (x, y) = (ep(1, 40_000), ep(1, 40_001));
        let (first, second) = (
            Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), 40_000),
            Endpoint::new(Ipv4Addr::new(100, 64, 0, 2), 40_000),
        );
        u.add(Protocol::Udp, x, first).unwrap();
        u.add(Protocol::Udp, x, second).unwrap();
        u.add(Protocol::Tcp, x, second).unwrap();
        assert_eq!(u.add(Protocol::Udp, y, first), Err(TableFull));
        assert_eq!(
            (u.count(Protocol::Udp, x), u.count(Protocol::Tcp, x)),
            (2, 1)
        );
        assert_eq!(u.remove(Protocol::Udp, x), None, "one mapping left");
        assert_eq!(
            u.remove(Protocol::Udp, x),
            Some(first),
            "the owner's to release"
        );
        assert_eq!(u.count(Protocol::Udp, x), 0);
        assert_eq!(u.remove(Protocol::Udp, y), None, "never counted");
        u.add(Protocol::Udp, y, first).unwrap();
        assert!(u.memory_bytes() > 0);
    }
}
