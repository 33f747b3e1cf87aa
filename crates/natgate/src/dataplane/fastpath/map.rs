//! The fast path's table as the kernel holds it: the key and value layouts of
//! `bpf/fastpath.bpf.c` (`struct flow_key`, `struct flow_action`, `struct iface`), and how an
//! engine [`OffloadedFlow`] becomes its two entries.

use natgate_core::Protocol;
use natgate_core::engine::OffloadedFlow;

/// Which side a packet arrived on, as the program's `enum side`.
pub const SIDE_INSIDE: u8 = 0;
/// See [`SIDE_INSIDE`].
pub const SIDE_OUTSIDE: u8 = 1;

/// `struct flow_key`: a flow as it arrives on one side. Addresses and ports are stored in
/// network order, as the program reads them from the packet.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowKey {
    /// Source address (network order bytes).
    pub src: [u8; 4],
    /// Destination address.
    pub dst: [u8; 4],
    /// Source port (network order bytes).
    pub sport: [u8; 2],
    /// Destination port.
    pub dport: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// [`SIDE_INSIDE`] or [`SIDE_OUTSIDE`].
    pub side: u8,
    /// Zero.
    pub pad: u16,
}

/// `struct flow_action`: the endpoint to write (the new source outbound, the new destination
/// inbound) and what the program saw of the flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowAction {
    /// The new address (network order bytes).
    pub addr: [u8; 4],
    /// The new port.
    pub port: [u8; 2],
    /// Zero.
    pub pad: u16,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet carried; 0: none yet.
    pub last_seen_ns: u64,
    /// Packets carried.
    pub packets: u64,
    /// Bytes carried (IPv4 total lengths).
    pub bytes: u64,
}

/// `struct iface`: one attached interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Iface {
    /// The interface translated packets must leave by.
    pub peer_ifindex: u32,
    /// The engine's MTU for that way out.
    pub mtu_out: u16,
    /// [`SIDE_INSIDE`] or [`SIDE_OUTSIDE`].
    pub side: u8,
    /// Zero.
    pub pad: u8,
    /// The TUN that the engine reads this side's packets from; 0: none (punts go to the
    /// kernel's routing).
    pub tun_ifindex: u32,
    /// The interface's MAC address: the XDP program carries only frames sent to it.
    pub mac: [u8; 6],
    /// Zero.
    pub pad2: u16,
}

// SAFETY: plain `repr(C)` data without padding bytes (checked by the size assertions below),
// valid for every bit pattern.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowAction {}
// SAFETY: as above.
unsafe impl aya::Pod for Iface {}

const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<FlowAction>() == 32);
const _: () = assert!(size_of::<Iface>() == 20);

/// The two entries of a flow: the outbound one (keyed as packets arrive inside) and the
/// inbound one (keyed as they arrive outside), each with the endpoint it writes.
pub fn entries(flow: &OffloadedFlow) -> [(FlowKey, FlowAction); 2] {
    let proto = match flow.proto {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Icmp => 1,
    };
    let key = |src: natgate_core::Endpoint, dst: natgate_core::Endpoint, side| FlowKey {
        src: src.addr.octets(),
        dst: dst.addr.octets(),
        sport: src.port.to_be_bytes(),
        dport: dst.port.to_be_bytes(),
        proto,
        side,
        pad: 0,
    };
    let action = |to: natgate_core::Endpoint| FlowAction {
        addr: to.addr.octets(),
        port: to.port.to_be_bytes(),
        ..FlowAction::default()
    };
    [
        (
            key(flow.internal, flow.remote, SIDE_INSIDE),
            action(flow.external),
        ),
        (
            key(flow.remote, flow.external, SIDE_OUTSIDE),
            action(flow.internal),
        ),
    ]
}
