//! The table of sessions that static NAT rules and virtual servers make.
//!
//! Dynamic sessions (see [`NatTable`](super::NatTable)) translate only the inside
//! host's endpoint and share one remote endpoint between both sides, which keeps them 32 bytes.
//! A rule may also rewrite the remote side (twice-NAT, network-to-network rules, a virtual
//! server's replies), so a static session records both views of the flow in full: the inside
//! view (the inside host's endpoint and the peer as the inside sees it) and the outside view
//! (the inside host as the outside sees it and the peer as the outside sees it). It is found by
//! either view through two keyed indexes (outside keys are chosen by strangers) and expired by a
//! [`TimerWheel`], like dynamic sessions; everything is allocated when the table is built.

use super::MappingOrigin;
use super::SoftwireTag;
use super::{FlowHasher, FlowKey, HashIndex, Slab, TableFull, TimerWheel};
use crate::endpoint::{Endpoint, Protocol};
use crate::rules::RuleId;
use crate::vserver::RealServerId;

/// A static session's slot in its table; valid until the session is removed or expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StaticSessionId(pub u32);

/// What made a static session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaticOrigin {
    /// A rule (or the reverse of a bidirectional rule) with this id.
    Rule(RuleId),
    /// The virtual server at `address` (the session's protocol) and its real server `server`.
    VirtualServer {
        /// The virtual address and port.
        address: Endpoint,
        /// The real server.
        server: RealServerId,
    },
    /// The explicit mapping (PCP, NAT-PMP) of the session's inside endpoint.
    Explicit(MappingOrigin),
}

/// One flow translated by a rule or a virtual server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaticSession {
    /// The inside host's endpoint.
    pub inside_local: Endpoint,
    /// The peer's endpoint as the inside sees it.
    pub inside_remote: Endpoint,
    /// The inside host's endpoint as the outside sees it.
    pub outside_local: Endpoint,
    /// The peer's endpoint as the outside sees it.
    pub outside_remote: Endpoint,
    /// The protocol.
    pub proto: Protocol,
    /// TCP connection state, owned and interpreted by the engine.
    pub tcp: u8,
    /// When a packet last refreshed the session, in whole seconds.
    pub last_seen: u32,
    /// What made it.
    pub origin: StaticOrigin,
}

impl StaticSession {
    /// The key inside packets carry: (proto, inside local, inside remote).
    #[inline]
    pub fn inside_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            softwire: SoftwireTag::NONE,
            local: self.inside_local,
            remote: self.inside_remote,
        }
    }

    /// The key outside packets carry: (proto, outside local, outside remote).
    #[inline]
    pub fn outside_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            softwire: SoftwireTag::NONE,
            local: self.outside_local,
            remote: self.outside_remote,
        }
    }
}

/// Static sessions, indexed by both views, with lazy idle expiry.
#[derive(Debug, Clone)]
pub struct StaticSessionTable {
    slab: Slab<StaticSession>,
    inside: HashIndex,
    outside: HashIndex,
    wheel: TimerWheel,
    hasher: FlowHasher,
}

impl StaticSessionTable {
    /// A table for up to `capacity` sessions, all allocated now; `seed` keys the hash.
    ///
    /// # Panics
    /// If `capacity` exceeds 2^31.
    pub fn new(capacity: usize, seed: u64) -> Self {
        StaticSessionTable {
            slab: Slab::new(capacity),
            inside: HashIndex::with_capacity(capacity),
            outside: HashIndex::with_capacity(capacity),
            wheel: TimerWheel::new(capacity),
            hasher: FlowHasher::new(seed),
        }
    }

    #[inline]
    fn hash(hasher: &FlowHasher, key: &FlowKey) -> u64 {
        let (a, b) = key.packed();
        hasher.hash2(a, b)
    }

    /// The session whose inside key is `key`.
    #[inline]
    pub fn find_inside(&self, key: &FlowKey) -> Option<StaticSessionId> {
        self.inside
            .find(Self::hash(&self.hasher, key), |v| {
                self.slab.get(v).is_some_and(|s| s.inside_key() == *key)
            })
            .map(StaticSessionId)
    }

    /// The session whose outside key is `key`.
    #[inline]
    pub fn find_outside(&self, key: &FlowKey) -> Option<StaticSessionId> {
        self.outside
            .find(Self::hash(&self.hasher, key), |v| {
                self.slab.get(v).is_some_and(|s| s.outside_key() == *key)
            })
            .map(StaticSessionId)
    }

    /// Adds a session, indexed by both keys, first checked for expiry at `due_secs`. The caller
    /// has made sure that neither key is taken.
    pub fn insert(
        &mut self,
        s: StaticSession,
        due_secs: u32,
    ) -> Result<StaticSessionId, TableFull> {
        let h_in = Self::hash(&self.hasher, &s.inside_key());
        let h_out = Self::hash(&self.hasher, &s.outside_key());
        let id = self.slab.insert(s).ok_or(TableFull)?;
        if self.inside.insert(h_in, id).is_err() {
            self.slab.remove(id);
            return Err(TableFull);
        }
        if self.outside.insert(h_out, id).is_err() {
            self.inside.remove(h_in, id);
            self.slab.remove(id);
            return Err(TableFull);
        }
        self.wheel.schedule(id, due_secs);
        Ok(StaticSessionId(id))
    }

    fn unlink(
        slab: &mut Slab<StaticSession>,
        inside: &mut HashIndex,
        outside: &mut HashIndex,
        hasher: &FlowHasher,
        id: u32,
    ) -> Option<StaticSession> {
        let s = slab.remove(id)?;
        inside.remove(Self::hash(hasher, &s.inside_key()), id);
        outside.remove(Self::hash(hasher, &s.outside_key()), id);
        Some(s)
    }

    /// Removes a session and its timer; `None` if `id` names none.
    pub fn remove(&mut self, id: StaticSessionId) -> Option<StaticSession> {
        let s = Self::unlink(
            &mut self.slab,
            &mut self.inside,
            &mut self.outside,
            &self.hasher,
            id.0,
        )?;
        self.wheel.unschedule(id.0);
        Some(s)
    }

    /// Moves session `id`'s next expiry check to `due_secs` (a timeout that shrank).
    pub fn reschedule(&mut self, id: StaticSessionId, due_secs: u32) {
        if self.slab.contains(id.0) {
            self.wheel.unschedule(id.0);
            self.wheel.schedule(id.0, due_secs);
        }
    }

    /// The session `id`, if it is live.
    #[inline]
    pub fn get(&self, id: StaticSessionId) -> Option<&StaticSession> {
        self.slab.get(id.0)
    }

    /// The session `id` for update (`last_seen`, `tcp`; never the endpoints, which the indexes
    /// are keyed on), if it is live.
    #[inline]
    pub fn get_mut(&mut self, id: StaticSessionId) -> Option<&mut StaticSession> {
        self.slab.get_mut(id.0)
    }

    /// Runs the expiry wheel up to `now_secs`: `expiry(&session)` gives a session's real due
    /// time; a session due by now is removed and handed to `on_expired`, any other is checked
    /// again at its due time.
    pub fn expire(
        &mut self,
        now_secs: u32,
        mut expiry: impl FnMut(&StaticSession) -> u32,
        mut on_expired: impl FnMut(StaticSession),
    ) {
        let StaticSessionTable {
            slab,
            inside,
            outside,
            wheel,
            hasher,
        } = self;
        wheel.advance(now_secs, |id| {
            let due = expiry(slab.get(id)?);
            if due > now_secs {
                return Some(due);
            }
            if let Some(s) = Self::unlink(slab, inside, outside, hasher, id) {
                on_expired(s);
            }
            None
        });
    }

    /// When [`Self::expire`] next has work.
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

    /// Every session, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (StaticSessionId, &StaticSession)> {
        self.slab.iter().map(|(i, s)| (StaticSessionId(i), s))
    }

    /// Bytes of the slab, indexes and wheel.
    pub fn memory_bytes(&self) -> usize {
        self.slab.memory_bytes()
            + self.inside.memory_bytes()
            + self.outside.memory_bytes()
            + self.wheel.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(a: [u8; 4], port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::from(a), port)
    }

    fn session(port: u16) -> StaticSession {
        StaticSession {
            inside_local: ep([10, 0, 0, 5], 8888),
            inside_remote: ep([192, 168, 0, 9], port),
            outside_local: ep([198, 51, 100, 10], 80),
            outside_remote: ep([203, 0, 113, 9], port),
            proto: Protocol::Tcp,
            tcp: 0,
            last_seen: 0,
            origin: StaticOrigin::Rule(RuleId(1)),
        }
    }

    #[test]
    fn found_by_both_views_removed_and_full() {
        let mut t = StaticSessionTable::new(2, 9);
        let a = t.insert(session(1000), 10).expect("room");
        let b = t.insert(session(1001), 20).expect("room");
        assert_eq!(t.insert(session(1002), 10), Err(TableFull));
        assert_eq!(t.find_inside(&session(1000).inside_key()), Some(a));
        assert_eq!(t.find_outside(&session(1001).outside_key()), Some(b));
        // The views are not interchangeable.
        assert_eq!(t.find_outside(&session(1000).inside_key()), None);
        assert_eq!(t.remove(a), Some(session(1000)));
        assert_eq!(t.find_inside(&session(1000).inside_key()), None);
        assert_eq!(t.len(), 1);
        let mut gone = Vec::new();
        t.expire(25, |s| s.last_seen + 20, |s| gone.push(s));
        assert_eq!(gone, [session(1001)]);
        assert!(t.is_empty());
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn refreshed_sessions_are_rescheduled_not_expired() {
        let mut t = StaticSessionTable::new(4, 1);
        let a = t.insert(session(7), 10).expect("room");
        t.get_mut(a).expect("live").last_seen = 8;
        let mut gone = 0;
        t.expire(12, |s| s.last_seen + 10, |_| gone += 1);
        assert_eq!((gone, t.len()), (0, 1));
        t.expire(18, |s| s.last_seen + 10, |_| gone += 1);
        assert_eq!((gone, t.len()), (1, 0));
    }
}
