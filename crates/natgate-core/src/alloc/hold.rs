//! The hold-down queue of RFC 6888 REQ-8: released ports wait here before they are free again.
//!
//! Ports leave lazily, when the allocator next runs, so no timer is needed; a port released past
//! the cap pushes the oldest held port out early (the one whose reuse is least likely to confuse a
//! remote peer; refusing the release instead would leak the port for good).

use crate::endpoint::Protocol;
use crate::time::Instant;
use core::time::Duration;
use std::collections::VecDeque;

/// A released port waiting out its hold-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    /// When the port was released.
    pub(super) released_at: Instant,
    /// The allocator's index of the external address.
    pub(super) address: u32,
    /// The port.
    pub(super) port: u16,
    /// The protocol whose port space it is in.
    pub(super) proto: Protocol,
}

/// Held ports in release order; `released_at` is non-decreasing as long as time is.
#[derive(Debug)]
pub(super) struct HoldQueue {
    queue: VecDeque<Held>,
    hold_down: Duration,
    cap: usize,
}

impl HoldQueue {
    /// A queue holding ports for `hold_down`, at most `cap` at once. Reserves room for
    /// `min(cap, ports)` entries up front so releases do not allocate; a reservation that fails
    /// leaves the queue growing lazily.
    pub(super) fn new(hold_down: Duration, cap: usize, ports: usize) -> Self {
        let mut queue = VecDeque::new();
        let _ = queue.try_reserve(cap.min(ports));
        HoldQueue {
            queue,
            hold_down,
            cap,
        }
    }

    /// Bytes reserved for held ports.
    pub(super) fn memory_bytes(&self) -> usize {
        self.queue.capacity() * core::mem::size_of::<Held>()
    }

    /// Whether released ports are held at all (a zero duration or cap frees them at once).
    pub(super) fn enabled(&self) -> bool {
        !self.hold_down.is_zero() && self.cap > 0
    }

    /// The held ports, oldest release first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Held> {
        self.queue.iter()
    }

    /// Queues a released port; returns the oldest held port if the cap pushed it out.
    pub(super) fn push(&mut self, held: Held) -> Option<Held> {
        self.queue.push_back(held);
        if self.queue.len() > self.cap {
            self.queue.pop_front()
        } else {
            None
        }
    }

    /// The oldest held port whose hold-down has passed at `now`, with the instant it passed.
    pub(super) fn pop_expired(&mut self, now: Instant) -> Option<(Held, Instant)> {
        let h = *self.queue.front()?;
        let until = h.released_at + self.hold_down;
        if now < until {
            return None;
        }
        self.queue.pop_front();
        Some((h, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(secs: u64, port: u16) -> Held {
        Held {
            released_at: Instant::from_secs(secs),
            address: 0,
            port,
            proto: Protocol::Udp,
        }
    }

    #[test]
    fn rfc6888_req8_expires_in_order_exactly_at_the_edge_with_a_cap() {
        let mut q = HoldQueue::new(Duration::from_secs(120), 2, 100);
        assert!(q.enabled());
        assert_eq!(q.push(held(0, 1)), None);
        assert_eq!(q.push(held(5, 2)), None);
        assert_eq!(
            q.push(held(6, 3)),
            Some(held(0, 1)),
            "the cap frees the oldest"
        );
        assert_eq!(q.pop_expired(Instant::from_millis(124_999)), None);
        assert_eq!(
            q.pop_expired(Instant::from_secs(125)),
            Some((held(5, 2), Instant::from_secs(125)))
        );
        assert_eq!(q.pop_expired(Instant::from_secs(125)), None);
        assert!(!HoldQueue::new(Duration::ZERO, 5, 5).enabled());
        assert!(!HoldQueue::new(Duration::from_secs(1), 0, 5).enabled());
    }
}
