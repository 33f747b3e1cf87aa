//! Data planes: how packets reach the engine and leave it.
//!
//! The slow path is the TUN pair (`tun`, which the daemon's workers drive): every
//! packet the engine must see goes through it. The fast path ([`fastpath`]) is an eBPF program
//! at the interfaces' TC hook that carries the established flows the engine hands it.

pub mod fastpath;
pub mod tun;
