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

/// One worker's incoming packets from the other workers, and how to wake it.
#[derive(Debug)]
pub struct Mailbox {
    /// The packets.
    pub queue: ArrayQueue<Steered>,
    wake: OwnedFd,
}

impl Mailbox {
    /// An empty mailbox with its eventfd.
    pub fn new() -> std::io::Result<Self> {
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
        )?;
        Ok(Mailbox {
            queue: ArrayQueue::new(MAILBOX_LEN),
            wake,
        })
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
