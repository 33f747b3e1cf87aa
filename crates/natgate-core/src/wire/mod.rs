//! Wire formats: zero-copy views of IPv4, IPv6, UDP, TCP and ICMP, checksums, and the
//! IPv4-in-IPv6 tunnel of DS-Lite softwires.
//!
//! Modelled on smoltcp's `wire`: each protocol has a `Packet<T: AsRef<[u8]>>`-style view over a
//! borrowed or owned buffer, with getters, and setters when `T: AsMut<[u8]>`. Nothing here
//! allocates or copies on the forwarding path.
//!
//! The contract of every view: `new_checked` validates the lengths once, after which no getter,
//! setter or slice accessor can panic, whatever the bytes are. `new_unchecked` skips the check and
//! is for buffers this crate built itself. Field values (checksums, flags, ports) are *not*
//! validated here; that is policy, and belongs to the engine.
//!
//! The NAT rewrites addresses and ports, so [`checksum`] offers RFC 1624 incremental updates next
//! to the full RFC 1071 computation.

pub mod checksum;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod tunnel;
pub mod udp;

#[cfg(test)]
mod fixtures;

/// Why a buffer is not a well-formed packet of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the header (or the length a header field announces) does.
    #[error("buffer too short")]
    Truncated,
    /// The IPv4 version field is not 4.
    #[error("IP version is not 4")]
    BadVersion,
    /// The IPv4 IHL is below 5 words (RFC 791), or the TCP data offset below 5 words (RFC 9293).
    #[error("header length field below the minimum header")]
    BadHeaderLen,
    /// The IPv4 total length is smaller than the header it must contain.
    #[error("IPv4 total length shorter than its header")]
    BadTotalLen,
    /// The IPv6 version field is not 6.
    #[error("IP version is not 6")]
    NotIpv6,
    /// An IPv6 extension header where RFC 8200 section 4.1 allows none (Hop-by-Hop after the
    /// first header, a second fragment header).
    #[error("IPv6 extension header out of place")]
    BadExtensionHeader,
    /// More IPv6 extension headers than a legitimate packet has
    /// ([`ipv6::MAX_EXTENSION_HEADERS`]).
    #[error("too many IPv6 extension headers")]
    TooManyExtensionHeaders,
}

/// Reads the big-endian `u16` at `at`. Callers guarantee `at + 2 <= b.len()` through `check_len`.
#[inline(always)]
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads the big-endian `u32` at `at`. Callers guarantee `at + 4 <= b.len()` through `check_len`.
#[inline(always)]
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Writes `v` big-endian at `at`. Callers guarantee `at + 2 <= b.len()` through `check_len`.
#[inline(always)]
fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes `v` big-endian at `at`. Callers guarantee `at + 4 <= b.len()` through `check_len`.
#[inline(always)]
fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
