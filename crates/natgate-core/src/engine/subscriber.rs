//! Per-subscriber limits (RFC 6888 REQ-4, REQ-5): how many sessions one subscriber may hold per
//! protocol and in all, and how fast it may open new ones (a token bucket, like the per-tunnel rates of the
//! ISC AFTR). At a limit the new flow is refused; nothing live is ever evicted (REQ-11), and
//! other subscribers are not affected.

use crate::config::SubscriberLimits;
use crate::counters::DropReason;
use crate::endpoint::Protocol;
use crate::time::Instant;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// One token is this many milli-tokens, so that refill needs no floating point.
const MILLI: u64 = 1000;

/// What one subscriber holds.
#[derive(Debug, Clone, Copy)]
struct Subscriber {
    /// Live sessions, by [`Protocol::index`].
    sessions: [u32; 3],
    /// Creation-rate bucket, in milli-tokens.
    tokens: u64,
    /// When the bucket was last refilled.
    refilled: Instant,
}

/// The per-subscriber state of one engine. Only present when a limit is configured; its table
/// is reserved at `max-subscribers` entries and never grows.
#[derive(Debug)]
pub(crate) struct SubscriberTable {
    limits: SubscriberLimits,
    map: HashMap<Ipv4Addr, Subscriber>,
}

impl SubscriberTable {
    /// The table for `limits`, or `None` when no limit is set (no state, no cost).
    pub fn new(limits: SubscriberLimits) -> Option<Self> {
        limits.any().then(|| SubscriberTable {
            limits,
            map: HashMap::with_capacity(limits.max_subscribers as usize),
        })
    }

    fn quota(&self, proto: Protocol) -> u32 {
        match proto {
            Protocol::Tcp => self.limits.max_tcp_sessions,
            Protocol::Udp => self.limits.max_udp_sessions,
            Protocol::Icmp => self.limits.max_icmp_sessions,
        }
    }

    /// Charges one new `proto` session to `subscriber`, or says which limit refuses it. The
    /// creation rate applies to sessions the subscriber opens (`opened_by_subscriber`); sessions
    /// that inbound packets open count against the quota only.
    pub fn admit(
        &mut self,
        subscriber: Ipv4Addr,
        proto: Protocol,
        now: Instant,
        opened_by_subscriber: bool,
    ) -> Result<(), DropReason> {
        let quota = self.quota(proto);
        let l = self.limits;
        let burst = u64::from(l.session_burst) * MILLI;
        if !self.map.contains_key(&subscriber) && self.map.len() >= l.max_subscribers as usize {
            return Err(DropReason::SubscriberTableFull);
        }
        let s = self.map.entry(subscriber).or_insert(Subscriber {
            sessions: [0; 3],
            tokens: burst,
            refilled: now,
        });
        if quota != 0 && s.sessions[proto.index()] >= quota {
            return Err(DropReason::SubscriberSessionLimit);
        }
        if l.max_sessions != 0 && s.sessions.iter().sum::<u32>() >= l.max_sessions {
            return Err(DropReason::SubscriberTotalSessionLimit);
        }
        if l.session_rate != 0 && opened_by_subscriber {
            // `session_rate` tokens per second is `session_rate` milli-tokens per millisecond.
            let elapsed = now.as_millis().saturating_sub(s.refilled.as_millis());
            s.tokens = s
                .tokens
                .saturating_add(elapsed.saturating_mul(u64::from(l.session_rate)))
                .min(burst);
            s.refilled = now.max(s.refilled);
            if s.tokens < MILLI {
                return Err(DropReason::SubscriberRateLimit);
            }
            s.tokens -= MILLI;
        }
        s.sessions[proto.index()] += 1;
        Ok(())
    }

    /// A session of `subscriber` ended (or was never made after `admit`). The subscriber is
    /// forgotten with its last session, so the table holds only subscribers with state.
    pub fn release(&mut self, subscriber: Ipv4Addr, proto: Protocol) {
        if let Some(s) = self.map.get_mut(&subscriber) {
            let n = &mut s.sessions[proto.index()];
            *n = n.saturating_sub(1);
            if s.sessions == [0; 3] {
                self.map.remove(&subscriber);
            }
        }
    }

    /// Bytes reserved by the table, counting each hash-table entry plus its control byte (as the
    /// fragment tracker counts its own). Fixed at `max-subscribers` entries: it never grows.
    pub fn memory_bytes(&self) -> usize {
        self.map.capacity() * (core::mem::size_of::<(Ipv4Addr, Subscriber)>() + 1)
    }

    /// Bytes one subscriber's entry takes, for a cheap bound before building a table.
    pub const ENTRY_BYTES: usize = core::mem::size_of::<(Ipv4Addr, Subscriber)>() + 1;

    /// Sessions `subscriber` holds, by [`Protocol::index`].
    #[cfg(test)]
    pub fn sessions_of(&self, subscriber: Ipv4Addr) -> [u32; 3] {
        self.map.get(&subscriber).map_or([0; 3], |s| s.sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);

    fn limits() -> SubscriberLimits {
        SubscriberLimits {
            max_tcp_sessions: 2,
            max_udp_sessions: 3,
            max_icmp_sessions: 0,
            max_sessions: 0,
            session_rate: 0,
            session_burst: 0,
            max_subscribers: 2,
        }
    }

    #[test]
    fn no_limits_no_table() {
        assert!(SubscriberTable::new(SubscriberLimits::default()).is_none());
    }

    #[test]
    fn rfc6888_req4_quota_per_protocol_exactly() {
        let mut t = SubscriberTable::new(limits()).expect("table");
        let now = Instant::ZERO;
        for _ in 0..3 {
            assert_eq!(t.admit(SUB, Protocol::Udp, now, true), Ok(()));
        }
        assert_eq!(
            t.admit(SUB, Protocol::Udp, now, true),
            Err(DropReason::SubscriberSessionLimit)
        );
        assert_eq!(
            t.admit(SUB, Protocol::Tcp, now, true),
            Ok(()),
            "quotas are per protocol"
        );
        for _ in 0..100 {
            assert_eq!(
                t.admit(SUB, Protocol::Icmp, now, true),
                Ok(()),
                "0 means no limit"
            );
        }
        t.release(SUB, Protocol::Udp);
        assert_eq!(
            t.admit(SUB, Protocol::Udp, now, false),
            Ok(()),
            "room again after a release"
        );
    }

    #[test]
    fn rfc6888_req4_total_quota_across_protocols_exactly() {
        let mut t = SubscriberTable::new(SubscriberLimits {
            max_sessions: 4,
            ..limits()
        })
        .expect("table");
        let now = Instant::ZERO;
        let other = Ipv4Addr::new(100, 64, 0, 11);
        // One under the total, mixing protocols (ICMP has no quota of its own).
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            assert_eq!(t.admit(SUB, proto, now, true), Ok(()));
        }
        assert_eq!(t.sessions_of(SUB), [1, 1, 1]);
        assert_eq!(t.admit(SUB, Protocol::Icmp, now, true), Ok(()), "the 4th");
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp] {
            assert_eq!(
                t.admit(SUB, proto, now, false),
                Err(DropReason::SubscriberTotalSessionLimit),
                "{proto:?}: at the total, whoever opens it"
            );
        }
        assert_eq!(t.sessions_of(SUB), [2, 1, 1], "a refusal charges nothing");
        assert_eq!(
            t.admit(other, Protocol::Udp, now, true),
            Ok(()),
            "per subscriber"
        );
        t.release(SUB, Protocol::Icmp);
        assert_eq!(t.admit(SUB, Protocol::Udp, now, true), Ok(()), "room again");
        assert_eq!(
            t.admit(SUB, Protocol::Tcp, now, true),
            Err(DropReason::SubscriberTotalSessionLimit)
        );
        t.release(SUB, Protocol::Udp);
        t.release(SUB, Protocol::Udp);
        assert_eq!(t.sessions_of(SUB), [1, 1, 0]);
        // Under the total, the per-protocol quota still answers for its protocol.
        assert_eq!(t.admit(SUB, Protocol::Tcp, now, true), Ok(()));
        assert_eq!(
            t.admit(SUB, Protocol::Tcp, now, true),
            Err(DropReason::SubscriberSessionLimit),
            "2 TCP is the TCP quota, reached before the total"
        );
    }

    #[test]
    fn rfc6888_req5_creation_rate_token_bucket_edges() {
        let mut t = SubscriberTable::new(SubscriberLimits {
            session_rate: 10,
            session_burst: 5,
            ..limits()
        })
        .expect("table");
        let t0 = Instant::from_secs(100);
        for _ in 0..3 {
            assert_eq!(t.admit(SUB, Protocol::Icmp, t0, true), Ok(()));
        }
        for _ in 0..2 {
            assert_eq!(t.admit(SUB, Protocol::Tcp, t0, true), Ok(()));
        }
        assert_eq!(
            t.admit(SUB, Protocol::Icmp, t0, true),
            Err(DropReason::SubscriberRateLimit),
            "burst of 5 spent"
        );
        // 10 per second: one token every 100 ms, not a millisecond earlier.
        let almost = Instant::from_millis(t0.as_millis() + 99);
        assert_eq!(
            t.admit(SUB, Protocol::Icmp, almost, true),
            Err(DropReason::SubscriberRateLimit)
        );
        let refilled = Instant::from_millis(t0.as_millis() + 100);
        assert_eq!(t.admit(SUB, Protocol::Icmp, refilled, true), Ok(()));
        assert_eq!(
            t.admit(SUB, Protocol::Icmp, refilled, true),
            Err(DropReason::SubscriberRateLimit)
        );
        // Sessions opened from outside are not rate-limited, only counted.
        assert_eq!(t.admit(SUB, Protocol::Icmp, refilled, false), Ok(()));
    }

    #[test]
    fn subscriber_table_is_bounded_and_forgets_idle_subscribers() {
        let mut t = SubscriberTable::new(limits()).expect("table");
        let now = Instant::ZERO;
        let a = Ipv4Addr::new(100, 64, 0, 1);
        let b = Ipv4Addr::new(100, 64, 0, 2);
        let c = Ipv4Addr::new(100, 64, 0, 3);
        assert_eq!(t.admit(a, Protocol::Udp, now, true), Ok(()));
        assert_eq!(t.admit(b, Protocol::Udp, now, true), Ok(()));
        assert_eq!(
            t.admit(c, Protocol::Udp, now, true),
            Err(DropReason::SubscriberTableFull)
        );
        t.release(a, Protocol::Udp);
        assert_eq!(t.sessions_of(a), [0; 3]);
        assert_eq!(
            t.admit(c, Protocol::Udp, now, true),
            Ok(()),
            "a's entry was freed"
        );
    }
}
