//! A session: one record per 5-tuple flow, its keys, and its slot number. The table that holds
//! sessions and their mappings is [`NatTable`](super::NatTable).

use super::MappingId;
use crate::endpoint::{Endpoint, Protocol};

/// A session's slot in the table. Valid from its insertion until it is removed or
/// expired; after that the number may name another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u32);

/// A flow as seen from one side: `local` is the internal endpoint (outbound index) or the
/// external endpoint (inbound index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The protocol.
    pub proto: Protocol,
    /// Our end of the flow on that side: internal (outbound) or external (inbound).
    pub local: Endpoint,
    /// The remote host's endpoint, the same on both sides.
    pub remote: Endpoint,
}

impl FlowKey {
    /// The key as two words for [`FlowHasher::hash2`](super::FlowHasher::hash2): proto and
    /// local, then remote.
    #[inline(always)]
    pub fn packed(&self) -> (u64, u64) {
        (
            (u64::from(self.proto.ip_number()) << 48) | self.local.to_u64(),
            self.remote.to_u64(),
        )
    }
}

/// One translated flow. 32 bytes and 32-byte aligned, so a record never straddles cache lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(align(32))]
pub struct Session {
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint the subscriber is translated to.
    pub external: Endpoint,
    /// The remote host's endpoint.
    pub remote: Endpoint,
    /// The protocol.
    pub proto: Protocol,
    /// TCP connection state, owned and interpreted by the engine.
    pub tcp: u8,
    /// Per-session flags, owned and interpreted by the engine.
    pub flags: u8,
    /// When a packet last refreshed the session, in
    /// [`Instant::as_secs`](crate::Instant::as_secs) seconds.
    pub last_seen: u32,
    /// The mapping this session uses.
    pub mapping: MappingId,
}

const _: () = assert!(core::mem::size_of::<Session>() == 32);
const _: () = assert!(core::mem::size_of::<Option<Session>>() == 32);

impl Session {
    /// The outbound index key: (proto, internal, remote).
    #[inline(always)]
    pub fn out_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            local: self.internal,
            remote: self.remote,
        }
    }

    /// The inbound index key: (proto, external, remote).
    #[inline(always)]
    pub fn in_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            local: self.external,
            remote: self.remote,
        }
    }
}

/// Returned when a table already holds its configured maximum of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("table is full")]
pub struct TableFull;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_32_bytes() {
        assert_eq!(core::mem::size_of::<Session>(), 32);
        assert_eq!(core::mem::align_of::<Session>(), 32);
    }
}
