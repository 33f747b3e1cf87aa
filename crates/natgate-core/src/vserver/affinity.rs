//! Source-address affinity: a bounded table from client address to real server, each entry
//! expiring `timeout` after the client's last new connection.
//!
//! Entries are kept in two structures: a hash map for the lookup and an ordered set by last use,
//! so that expiry and eviction take the oldest entry without a scan and in a deterministic order.
//! When the table is full of live entries, the least recently used one gives way.

use super::RealServerId;
use crate::time::Instant;
use core::time::Duration;
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;

/// The client-to-server table of one virtual server.
#[derive(Debug, Clone)]
pub(super) struct AffinityTable {
    timeout: Duration,
    max_entries: usize,
    by_client: HashMap<Ipv4Addr, (RealServerId, Instant)>,
    by_age: BTreeSet<(Instant, Ipv4Addr)>,
    evictions: u64,
}

impl AffinityTable {
    /// An empty table.
    pub(super) fn new(timeout: Duration, max_entries: usize) -> Self {
        AffinityTable {
            timeout,
            max_entries: max_entries.max(1),
            by_client: HashMap::new(),
            by_age: BTreeSet::new(),
            evictions: 0,
        }
    }

    /// Drops every entry idle for `timeout` or longer at `now`: an entry last used at `t` is live
    /// up to `t + timeout` exclusive.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(used, client)) = self.by_age.first() {
            if now.saturating_since(used) < self.timeout {
                break;
            }
            self.by_age.pop_first();
            self.by_client.remove(&client);
        }
    }

    /// The server a client is bound to, if its entry is live (call [`expire`](Self::expire)
    /// first).
    pub(super) fn lookup(&self, client: Ipv4Addr) -> Option<RealServerId> {
        self.by_client.get(&client).map(|&(server, _)| server)
    }

    /// Binds `client` to `server` as of `now`, replacing its old entry or, in a full table, the
    /// least recently used one.
    pub(super) fn bind(&mut self, client: Ipv4Addr, server: RealServerId, now: Instant) {
        if let Some((_, used)) = self.by_client.remove(&client) {
            self.by_age.remove(&(used, client));
        } else if self.by_client.len() >= self.max_entries
            && let Some((_, oldest)) = self.by_age.pop_first()
        {
            self.by_client.remove(&oldest);
            self.evictions = self.evictions.saturating_add(1);
        }
        self.by_client.insert(client, (server, now));
        self.by_age.insert((now, client));
    }

    /// Live entries (and expired ones not yet dropped).
    pub(super) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Live entries dropped because the table was full.
    pub(super) fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

    #[test]
    fn entry_lives_until_the_exact_timeout() {
        let mut t = AffinityTable::new(Duration::from_secs(10), 8);
        t.bind(A, RealServerId(1), Instant::from_secs(5));
        t.expire(Instant::from_millis(14_999));
        assert_eq!(t.lookup(A), Some(RealServerId(1)));
        t.expire(Instant::from_secs(15));
        assert_eq!(t.lookup(A), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn full_table_evicts_the_least_recently_used() {
        let mut t = AffinityTable::new(Duration::from_secs(100), 2);
        t.bind(A, RealServerId(0), Instant::from_secs(1));
        t.bind(B, RealServerId(1), Instant::from_secs(2));
        // Refreshing A makes B the oldest.
        t.bind(A, RealServerId(0), Instant::from_secs(3));
        t.bind(C, RealServerId(2), Instant::from_secs(4));
        assert_eq!(t.len(), 2);
        assert_eq!(t.lookup(B), None);
        assert_eq!(t.lookup(A), Some(RealServerId(0)));
        assert_eq!(t.lookup(C), Some(RealServerId(2)));
        assert_eq!(t.evictions(), 1);
    }
}
