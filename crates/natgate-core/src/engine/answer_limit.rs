//! How many answers the engine sends to packets it refuses: ICMP errors (host unreachable,
//! administratively prohibited, time exceeded, fragmentation needed) and the TCP resets of
//! `mapping-failure-reply = "tcp-reset"`, limited per destination and for the engine as a whole.
//!
//! RFC 1812 section 4.3.2.8 lets a router limit the ICMP errors it sends, and a NAT has to: a
//! subscriber at its quota, or a flood of refused packets, would otherwise draw one answer per
//! packet (a core's worth of work for nothing, and traffic towards whoever the source claims to
//! be). Both limits are token buckets on the injected clock, in thousandths of a token so that
//! a refill is exact to the millisecond. The refused packet is dropped and counted under its
//! reason either way; an answer left out is counted as [`Counters::answers_suppressed`].
//!
//! The per-destination buckets sit in a small fixed direct-mapped table keyed by the address
//! answered. A destination whose slot another took since starts with a full bucket again, so a
//! collision can only let more answers through, never fewer; the global bucket bounds the sum.
//!
//! [`Counters::answers_suppressed`]: crate::Counters::answers_suppressed

use crate::config::AnswerLimits;
use crate::time::Instant;
use std::net::Ipv4Addr;

/// Slots of the per-destination table (a power of two).
const SLOTS: usize = 1024;
/// Thousandths of a token per token.
const MILLI: u64 = 1000;

/// A token bucket: `tokens` thousandths, last refilled at `at_ms`.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    tokens: u64,
    at_ms: u64,
}

impl Bucket {
    /// Refills at `rate` tokens per second up to `burst` tokens, then takes one if there is
    /// one.
    fn take(&mut self, now_ms: u64, rate: u32, burst: u32) -> bool {
        let cap = u64::from(burst) * MILLI;
        let elapsed = now_ms.saturating_sub(self.at_ms);
        // `rate` tokens a second are `rate` thousandths a millisecond.
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(cap);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= MILLI {
            self.tokens -= MILLI;
            true
        } else {
            false
        }
    }
}

/// One destination's bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The address plus one; zero means empty.
    key: u64,
    bucket: Bucket,
}

/// The answer limits of one engine.
#[derive(Debug)]
pub(super) struct AnswerLimiter {
    limits: AnswerLimits,
    /// Present only when a per-destination rate is set.
    slots: Option<Box<[Slot]>>,
    global: Bucket,
}

impl AnswerLimiter {
    pub(super) fn new(limits: AnswerLimits) -> Self {
        AnswerLimiter {
            limits,
            slots: (limits.answer_rate != 0)
                .then(|| vec![Slot::default(); SLOTS].into_boxed_slice()),
            global: Bucket {
                tokens: u64::from(limits.global_answer_burst) * MILLI,
                at_ms: 0,
            },
        }
    }

    /// Takes new limits (a reload), keeping the buckets when their table is still needed.
    pub(super) fn set_limits(&mut self, limits: AnswerLimits) {
        if (limits.answer_rate != 0) != self.slots.is_some() {
            *self = AnswerLimiter::new(limits);
        } else {
            self.limits = limits;
        }
    }

    /// Whether an answer to `to` may be sent at `now`; if so it is charged to both buckets.
    /// The global bucket is only charged when the destination's allows the answer, so one
    /// noisy destination cannot use up the answers of the others.
    pub(super) fn allow(&mut self, now: Instant, to: Ipv4Addr) -> bool {
        let l = self.limits;
        let now_ms = now.as_millis();
        if let Some(slots) = self.slots.as_mut() {
            let key = u64::from(to.to_bits()) + 1;
            let i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % SLOTS;
            if let Some(slot) = slots.get_mut(i) {
                if slot.key != key {
                    *slot = Slot {
                        key,
                        bucket: Bucket {
                            tokens: u64::from(l.answer_burst) * MILLI,
                            at_ms: now_ms,
                        },
                    };
                }
                if !slot.bucket.take(now_ms, l.answer_rate, l.answer_burst) {
                    return false;
                }
            }
        }
        l.global_answer_rate == 0
            || self
                .global
                .take(now_ms, l.global_answer_rate, l.global_answer_burst)
    }

    /// Bytes of the per-destination table.
    pub(super) fn memory_bytes(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(0, |s| s.len() * core::mem::size_of::<Slot>())
    }

    /// Bytes the table takes under `limits` (for the memory model).
    pub(super) fn memory_bytes_of(limits: AnswerLimits) -> usize {
        if limits.answer_rate != 0 {
            SLOTS * core::mem::size_of::<Slot>()
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);

    fn limits(rate: u32, burst: u32, global_rate: u32, global_burst: u32) -> AnswerLimits {
        AnswerLimits {
            answer_rate: rate,
            answer_burst: burst,
            global_answer_rate: global_rate,
            global_answer_burst: global_burst,
        }
    }

    #[test]
    fn per_destination_burst_then_rate_to_the_millisecond() {
        let mut l = AnswerLimiter::new(limits(10, 3, 0, 0));
        let t = Instant::from_millis;
        assert!((0..3).all(|_| l.allow(t(1000), A)), "the burst");
        assert!(!l.allow(t(1000), A));
        assert!(
            l.allow(t(1000), B),
            "another destination has its own bucket"
        );
        // 10 a second: one token every 100 ms.
        assert!(!l.allow(t(1099), A));
        assert!(l.allow(t(1100), A));
        assert!(!l.allow(t(1100), A));
    }

    #[test]
    fn global_limit_bounds_every_destination() {
        let mut l = AnswerLimiter::new(limits(0, 0, 2, 2));
        let t = Instant::from_millis;
        assert!(l.allow(t(0), A));
        assert!(l.allow(t(0), B));
        assert!(!l.allow(t(0), Ipv4Addr::new(100, 64, 0, 12)));
        assert!(l.allow(t(500), A), "2 a second: one after 500 ms");
    }

    #[test]
    fn zero_rates_mean_no_limit() {
        let mut l = AnswerLimiter::new(limits(0, 0, 0, 0));
        assert!((0..10_000).all(|_| l.allow(Instant::ZERO, A)));
        assert_eq!(l.memory_bytes(), 0);
    }
}
