//! How a packet read by a worker that does not own it reaches its owner.
//!
//! Which worker owns a packet is the core's decision (`natgate_core::shard`). A packet read by
//! another worker is copied into the owner's [`Mailbox`] (a bounded lock-free queue; full means
//! dropped and counted) and the owner is woken through its eventfd; the owner translates it and
//! writes it out on its own queue. Nothing on the packet path takes a lock.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crossbeam_queue::ArrayQueue;
use natgate_core::Side;

/// Packets a mailbox holds before further ones are dropped.
pub const MAILBOX_LEN: usize = 4096;

/// A packet handed to its owner.
#[derive(Debug)]
pub struct Steered {
    /// The side it arrived on.
    pub side: Side,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Room of each pooled buffer: an Ethernet-sized datagram. Larger ones (jumbo frames, a
/// reassembled-size TUN packet) get a buffer of their own.
const POOLED: usize = 2048;

/// One worker's incoming packets from the other workers, and how to wake it.
#[derive(Debug)]
pub struct Mailbox {
    /// The packets.
    pub queue: ArrayQueue<Steered>,
    /// Empty buffers, one per queue slot, that senders copy packets into and the owner gives
    /// back: handing a packet over allocates nothing.
    free: ArrayQueue<Vec<u8>>,
    wake: OwnedFd,
}

impl Mailbox {
    /// An empty mailbox with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        )?;
        let free = ArrayQueue::new(MAILBOX_LEN);
        for _ in 0..MAILBOX_LEN {
            let _ = free.push(Vec::with_capacity(POOLED));
        }
        Ok(Mailbox {
            queue: ArrayQueue::new(MAILBOX_LEN),
            free,
            wake,
        })
    }

    /// Puts a copy of `pkt` in the mailbox; false (nothing queued) if it is full.
    pub fn push(&self, side: Side, pkt: &[u8]) -> bool {
        // Every queued packet holds one pooled buffer, so an empty pool means a full queue;
        // a buffer that went to a larger packet once is kept at that size.
        let Some(mut bytes) = self.free.pop() else {
            return false;
        };
        bytes.clear();
        bytes.extend_from_slice(pkt);
        match self.queue.push(Steered { side, bytes }) {
            Ok(()) => true,
            Err(s) => {
                let _ = self.free.push(s.bytes);
                false
            }
        }
    }

    /// Gives a packet's buffer back once its bytes were copied out.
    pub fn recycle(&self, bytes: Vec<u8>) {
        let _ = self.free.push(bytes);
    }

    /// Wakes the owner (after pushing).
    pub fn wake(&self) {
        // A full counter (never in practice) still leaves the fd readable: nothing to do.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Clears the wake-up (before draining).
    pub fn clear(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut b);
    }
}

impl AsFd for Mailbox {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_pass_through_pooled_buffers_and_a_full_mailbox_refuses() {
        let m = Mailbox::new().expect("eventfd");
        for i in 0..MAILBOX_LEN {
            assert!(m.push(Side::Outside, &[i as u8; 60]), "packet {i}");
        }
        assert!(!m.push(Side::Inside, &[0; 60]), "full");
        let p = m.queue.pop().expect("a packet");
        assert_eq!((p.side, p.bytes.len(), p.bytes[0]), (Side::Outside, 60, 0));
        let room = p.bytes.capacity();
        m.recycle(p.bytes);
        // The returned buffer carries the next packet, jumbo or not.
        assert!(m.push(Side::Inside, &[7; 9000]));
        assert!(room >= POOLED);
    }
}
