//! What the engine tells the driver to do with a packet.

use crate::counters::DropReason;
use crate::endpoint::Side;

/// The outcome of [`Engine::process`](crate::Engine::process) for one packet.
///
/// The engine works in place: on `Forward` the packet's bytes were rewritten in the caller's
/// buffer (its length does not change); on `Reply` the buffer now holds a packet the engine built
/// (an ICMP error, or a TCP reset) and the original is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the translated packet out on `Side`.
    Forward(Side),
    /// Send `buf[start..start + len]` out on `side`. The packet crossed the end of a DS-Lite
    /// softwire, so it is no longer where or as long as it arrived: an IPv6 packet to a B4 (on
    /// the inside), or the IPv4 packet inside a B4's packet, translated.
    ForwardAt {
        /// Where it goes.
        side: Side,
        /// Where it starts in the buffer.
        start: usize,
        /// Its length.
        len: usize,
    },
    /// The packet was dropped for `reason`, and the first `len` bytes of the buffer now hold an
    /// answer (ICMP error, or TCP reset) to send out on `side`.
    Reply {
        /// Where the answer goes.
        side: Side,
        /// Length of the answer at the start of the buffer.
        len: usize,
        /// Why the original packet was dropped (counted under this reason).
        reason: DropReason,
    },
    /// The packet was dropped and counted under this reason.
    Drop(DropReason),
    /// The engine kept a copy (an early fragment, or an unsolicited SYN held per RFC 5382 REQ-4),
    /// or queued the packet as IPv6 fragments for a B4 (too big for its softwire). It, or an
    /// answer to it, may leave later through
    /// [`Engine::poll_transmit`](crate::Engine::poll_transmit).
    Held,
    /// Not the NAT's: the packet is for the host the NAT shares its external address with (a
    /// home gateway on its outside interface's address, `Config::host_ports`). Give it to the
    /// host's own stack, unchanged.
    ToHost,
}

impl Verdict {
    /// The drop reason, if the packet was dropped (with or without an answer).
    pub fn drop_reason(&self) -> Option<DropReason> {
        match *self {
            Verdict::Drop(r) | Verdict::Reply { reason: r, .. } => Some(r),
            Verdict::Forward(_) | Verdict::ForwardAt { .. } | Verdict::Held | Verdict::ToHost => {
                None
            }
        }
    }
}
