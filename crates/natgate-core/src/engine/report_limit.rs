//! How often a refusal is reported: at most one `MappingFailed` event per subscriber and reason
//! per second.
//!
//! RFC 6888 REQ-11c asks that management be told when a mapping cannot be made. Told once per
//! packet, it could be flooded: a subscriber at its quota that keeps trying, or a host on the
//! Internet sending to that subscriber's mapping, would fill the bounded event queue with
//! refusals and push out the port-block records that `whois` needs years later. Every refused
//! packet is still counted under its drop reason; what is limited is the log, and the number of
//! reports left out is counted too ([`Counters::refusal_reports_suppressed`]).
//!
//! The table is small, fixed and direct-mapped: a report whose slot another (subscriber,
//! reason) took since is sent again. Collisions can only add reports, never hide the first of
//! a second. The key is the subscriber's own address, which an outside sender cannot choose
//! beyond the subscribers it can reach, so an unkeyed hash does.
//!
//! [`Counters::refusal_reports_suppressed`]: crate::Counters::refusal_reports_suppressed

use crate::counters::DropReason;
use std::net::Ipv4Addr;

/// Slots of the table (a power of two): 16 KiB.
const SLOTS: usize = 1024;

/// One (subscriber, reason) and the second it was last reported in.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// `subscriber << 8 | reason`, plus one so that zero means empty.
    key: u64,
    /// The second of the last report.
    secs: u32,
}

/// Which refusals to report.
#[derive(Debug)]
pub(super) struct RefusalReports {
    slots: Box<[Slot]>,
}

impl RefusalReports {
    pub(super) fn new() -> Self {
        RefusalReports {
            slots: vec![Slot::default(); SLOTS].into_boxed_slice(),
        }
    }

    /// Whether a refusal of `subscriber` for `reason` at second `secs` is to be reported; if
    /// so, it is remembered as the last one.
    pub(super) fn should_report(
        &mut self,
        subscriber: Ipv4Addr,
        reason: DropReason,
        secs: u32,
    ) -> bool {
        let key = ((u64::from(subscriber.to_bits()) << 8) | reason as u64) + 1;
        // Fibonacci hashing of the key; the top bits pick the slot.
        let i = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % SLOTS;
        let Some(slot) = self.slots.get_mut(i) else {
            return true;
        };
        if slot.key == key && slot.secs == secs {
            return false;
        }
        *slot = Slot { key, secs };
        true
    }

    /// Bytes of the table.
    pub(super) fn memory_bytes(&self) -> usize {
        self.slots.len() * core::mem::size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const B: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);

    #[test]
    fn one_report_per_subscriber_and_reason_per_second() {
        let mut r = RefusalReports::new();
        let quota = DropReason::SubscriberSessionLimit;
        assert!(r.should_report(A, quota, 7));
        assert!(!r.should_report(A, quota, 7), "same second");
        assert!(
            r.should_report(A, DropReason::MappingFailed, 7),
            "other reason"
        );
        assert!(r.should_report(B, quota, 7), "other subscriber");
        assert!(r.should_report(A, quota, 8), "next second");
        assert!(!r.should_report(A, quota, 8));
    }

    #[test]
    fn many_subscribers_each_get_their_first_report() {
        let mut r = RefusalReports::new();
        for i in 0..100_000u32 {
            let s = Ipv4Addr::from_bits(0x6440_0000 + i);
            assert!(
                r.should_report(s, DropReason::SubscriberRateLimit, 1),
                "{s}"
            );
        }
    }
}
