//! Bounded queues between the engine and its driver, allocated once: events out, packets the
//! engine built later out, and unsolicited SYNs held back (RFC 5382 REQ-4).

use crate::endpoint::{Endpoint, Side};
use crate::event::Event;
use crate::time::Instant;
use std::collections::{HashMap, VecDeque};

/// Events for the driver. When full, new events are dropped and counted, never the packets
/// (translation logs must not slow the packet path).
#[derive(Debug)]
pub(crate) struct EventQueue {
    queue: VecDeque<Event>,
    cap: usize,
}

impl EventQueue {
    pub fn new(cap: usize) -> Self {
        EventQueue {
            queue: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Queues an event; returns false (the event is lost) when the queue is full.
    pub fn push(&mut self, e: Event) -> bool {
        if self.queue.len() >= self.cap {
            return false;
        }
        self.queue.push_back(e);
        true
    }

    pub fn pop(&mut self) -> Option<Event> {
        self.queue.pop_front()
    }

    /// Bytes reserved for queued events.
    pub fn memory_bytes(&self) -> usize {
        self.queue.capacity() * core::mem::size_of::<Event>()
    }
}

/// The largest packet the engine emits later (released fragments, ICMP errors); buffers passed
/// to [`Engine::poll_transmit`](super::Engine::poll_transmit) of this size never cut one.
pub const TRANSMIT_SLOT: usize = 2048;

/// Packets the engine built outside a `process` call, waiting for `poll_transmit`.
#[derive(Debug)]
pub(crate) struct TransmitQueue {
    bytes: Vec<u8>,
    meta: VecDeque<(usize, Side, usize)>,
    free: Vec<usize>,
}

impl TransmitQueue {
    pub fn new(slots: usize) -> Self {
        TransmitQueue {
            bytes: vec![0; slots * TRANSMIT_SLOT],
            meta: VecDeque::with_capacity(slots),
            free: (0..slots).rev().collect(),
        }
    }

    /// Copies a packet in; false when full or too large (the caller counts the drop).
    pub fn push(&mut self, side: Side, packet: &[u8]) -> bool {
        if packet.len() > TRANSMIT_SLOT {
            return false;
        }
        let Some(slot) = self.free.pop() else {
            return false;
        };
        let start = slot * TRANSMIT_SLOT;
        self.bytes[start..start + packet.len()].copy_from_slice(packet);
        self.meta.push_back((slot, side, packet.len()));
        true
    }

    /// Space for a packet built in place: the caller writes into the slot and then commits it.
    pub fn slot_mut(&mut self) -> Option<(usize, &mut [u8])> {
        let slot = *self.free.last()?;
        let start = slot * TRANSMIT_SLOT;
        Some((slot, &mut self.bytes[start..start + TRANSMIT_SLOT]))
    }

    /// Queues the packet written into `slot` by [`TransmitQueue::slot_mut`].
    pub fn commit(&mut self, slot: usize, side: Side, len: usize) {
        if let Some(pos) = self.free.iter().rposition(|s| *s == slot) {
            self.free.swap_remove(pos);
            self.meta.push_back((slot, side, len.min(TRANSMIT_SLOT)));
        }
    }

    /// Copies the oldest packet out; returns its side and length, or None when empty. A packet
    /// longer than `out` is cut to fit (callers pass MTU-sized buffers, larger than any slot).
    pub fn pop(&mut self, out: &mut [u8]) -> Option<(Side, usize)> {
        let (slot, side, len) = self.meta.pop_front()?;
        let n = len.min(out.len());
        let start = slot * TRANSMIT_SLOT;
        out[..n].copy_from_slice(&self.bytes[start..start + n]);
        self.free.push(slot);
        Some((side, n))
    }

    /// Bytes reserved for the slots and their bookkeeping.
    pub fn memory_bytes(&self) -> usize {
        self.bytes.capacity()
            + self.meta.capacity() * core::mem::size_of::<(usize, Side, usize)>()
            + self.free.capacity() * core::mem::size_of::<usize>()
    }
}

/// How many bytes of a held SYN are kept: the IPv4 header (with options) and the TCP header,
/// enough to quote in the ICMP error (RFC 792 needs the IP header plus 8 bytes).
pub(crate) const HELD_SYN_BYTES: usize = 120;

/// An unsolicited inbound SYN, kept for the hold time.
#[derive(Debug, Clone)]
pub(crate) struct HeldSyn {
    pub seq: u64,
    pub at: Instant,
    pub external: Endpoint,
    pub remote: Endpoint,
    pub len: usize,
    pub bytes: [u8; HELD_SYN_BYTES],
}

/// Unsolicited inbound SYNs (RFC 5382 REQ-4): an outbound SYN for the same pair within the hold
/// time claims (silently drops) it; otherwise it expires and may be answered.
#[derive(Debug)]
pub(crate) struct SynHold {
    ring: VecDeque<HeldSyn>,
    index: HashMap<(Endpoint, Endpoint), u64>,
    cap: usize,
    next_seq: u64,
}

impl SynHold {
    /// Bytes reserved for held SYNs and their index, counting each hash-table entry plus its
    /// control byte (as the fragment tracker counts its own).
    pub fn memory_bytes(&self) -> usize {
        self.ring.capacity() * core::mem::size_of::<HeldSyn>()
            + self.index.capacity() * (core::mem::size_of::<((Endpoint, Endpoint), u64)>() + 1)
    }

    pub fn new(cap: usize) -> Self {
        SynHold {
            ring: VecDeque::with_capacity(cap),
            index: HashMap::with_capacity(cap),
            cap,
            next_seq: 0,
        }
    }

    /// Holds a SYN sent by `remote` to `external`. A retransmission of a SYN already held keeps
    /// the first one's deadline. False when full.
    pub fn hold(
        &mut self,
        external: Endpoint,
        remote: Endpoint,
        packet: &[u8],
        now: Instant,
    ) -> bool {
        if self.index.contains_key(&(external, remote)) {
            return true;
        }
        if self.ring.len() >= self.cap {
            return false;
        }
        let len = packet.len().min(HELD_SYN_BYTES);
        let mut bytes = [0; HELD_SYN_BYTES];
        bytes[..len].copy_from_slice(&packet[..len]);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.insert((external, remote), seq);
        self.ring.push_back(HeldSyn {
            seq,
            at: now,
            external,
            remote,
            len,
            bytes,
        });
        true
    }

    /// Claims (forgets) the SYN held for this pair, if any.
    pub fn claim(&mut self, external: Endpoint, remote: Endpoint) -> bool {
        if self.index.is_empty() {
            return false;
        }
        self.index.remove(&(external, remote)).is_some()
    }

    /// Pops held SYNs whose hold time has passed and that were not claimed.
    pub fn expire(
        &mut self,
        now: Instant,
        hold: core::time::Duration,
        mut f: impl FnMut(&HeldSyn),
    ) {
        while let Some(front) = self.ring.front() {
            if front.at + hold > now {
                break;
            }
            if let Some(h) = self.ring.pop_front()
                && self.index.get(&(h.external, h.remote)) == Some(&h.seq)
            {
                self.index.remove(&(h.external, h.remote));
                f(&h);
            }
        }
    }

    /// When the oldest held SYN's hold time passes.
    pub fn next_expiry(&self, hold: core::time::Duration) -> Option<Instant> {
        self.ring.front().map(|h| h.at + hold)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn clear(&mut self) {
        self.ring.clear();
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(10, 0, 0, last), port)
    }

    #[test]
    fn event_queue_is_bounded() {
        let mut q = EventQueue::new(1);
        let e = Event::MappingFailed {
            at: Instant::ZERO,
            proto: crate::Protocol::Udp,
            internal: ep(1, 1),
            remote: ep(2, 2),
            reason: crate::DropReason::MappingFailed,
        };
        assert!(q.push(e));
        assert!(!q.push(e));
        assert_eq!(q.pop(), Some(e));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn transmit_queue_is_fifo_and_bounded() {
        let mut q = TransmitQueue::new(2);
        assert!(q.push(Side::Inside, &[1, 2, 3]));
        assert!(q.push(Side::Outside, &[4]));
        assert!(!q.push(Side::Outside, &[5]));
        assert!(!TransmitQueue::new(1).push(Side::Inside, &[0; TRANSMIT_SLOT + 1]));
        let mut out = [0u8; 16];
        assert_eq!(q.pop(&mut out), Some((Side::Inside, 3)));
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert_eq!(q.pop(&mut out), Some((Side::Outside, 1)));
        assert_eq!(q.pop(&mut out), None);
    }

    #[test]
    fn syn_hold_claims_and_expires() {
        let mut h = SynHold::new(2);
        let t0 = Instant::from_secs(10);
        assert!(h.hold(ep(1, 80), ep(2, 999), &[0x45; 40], t0));
        assert!(h.hold(ep(1, 81), ep(2, 999), &[0x45; 40], t0));
        assert!(!h.hold(ep(1, 82), ep(2, 999), &[0x45; 40], t0), "full");
        assert!(h.claim(ep(1, 80), ep(2, 999)));
        let mut expired = Vec::new();
        let hold = Duration::from_secs(6);
        h.expire(t0 + Duration::from_millis(5999), hold, |s| {
            expired.push(s.external)
        });
        assert!(expired.is_empty());
        h.expire(t0 + hold, hold, |s| expired.push(s.external));
        assert_eq!(expired, vec![ep(1, 81)], "the claimed one is not answered");
        assert_eq!(h.len(), 0);
    }
}
