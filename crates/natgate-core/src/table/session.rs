//! A session: one record per 5-tuple flow, its keys, and its slot number. The table that holds
//! sessions and their mappings is [`NatTable`](super::NatTable).

use super::MappingId;
use crate::endpoint::{Endpoint, Protocol};

/// A session's slot in the table. Valid from its insertion until it is removed or
/// expired; after that the number may name another session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u32);

/// A softwire's number in its engine (DS-Lite, RFC 6333): 1 to
/// [`MAX_SOFTWIRES`](crate::config::MAX_SOFTWIRES). Homes behind different B4s use the same
/// private IPv4 addresses, so the softwire is part of a subscriber's internal identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SoftwireId(u32);

impl SoftwireId {
    /// The id `n`, if it is one (1 to `MAX_SOFTWIRES`).
    pub const fn new(n: u32) -> Option<Self> {
        if n == 0 || n > crate::config::MAX_SOFTWIRES {
            None
        } else {
            Some(SoftwireId(n))
        }
    }

    /// Its number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// Which softwire a session's internal side is behind, if any, in the three bytes a session
/// record has to spare (so the record stays 32 bytes). Part of the out key: two sessions with
/// the same internal endpoint behind different softwires are different flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SoftwireTag([u8; 3]);

impl SoftwireTag {
    /// Not behind a softwire: a plain IPv4 subscriber.
    pub const NONE: SoftwireTag = SoftwireTag([0; 3]);

    /// The tag of softwire `id`.
    pub const fn of(id: SoftwireId) -> Self {
        let [_, a, b, c] = id.0.to_be_bytes();
        SoftwireTag([a, b, c])
    }

    /// The softwire, if any.
    pub const fn get(self) -> Option<SoftwireId> {
        SoftwireId::new(self.bits())
    }

    /// Whether the session is behind a softwire.
    pub const fn is_some(self) -> bool {
        self.bits() != 0
    }

    /// The tag as a number (0 for none), for hashing.
    #[inline(always)]
    pub const fn bits(self) -> u32 {
        let [a, b, c] = self.0;
        u32::from_be_bytes([0, a, b, c])
    }
}

/// A flow as seen from one side: `local` is the internal endpoint (outbound index) or the
/// external endpoint (inbound index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The protocol.
    pub proto: Protocol,
    /// Outbound: the softwire the internal endpoint is behind. Inbound: always
    /// [`SoftwireTag::NONE`], since the external endpoint alone names the mapping.
    pub softwire: SoftwireTag,
    /// Our end of the flow on that side: internal (outbound) or external (inbound).
    pub local: Endpoint,
    /// The remote host's endpoint, the same on both sides.
    pub remote: Endpoint,
}

impl FlowKey {
    /// The key as two words for [`FlowHasher::hash2`](super::FlowHasher::hash2): proto,
    /// local and the softwire's low byte, then remote and the softwire's high bytes.
    #[inline(always)]
    pub fn packed(&self) -> (u64, u64) {
        let (lo, hi) = split_tag(self.softwire);
        (
            (lo << 56) | (u64::from(self.proto.ip_number()) << 48) | self.local.to_u64(),
            (hi << 48) | self.remote.to_u64(),
        )
    }
}

/// A softwire tag split into the spare bits of two hash words: its low 8 bits and high 16.
#[inline(always)]
pub(crate) const fn split_tag(t: SoftwireTag) -> (u64, u64) {
    let b = t.bits() as u64;
    (b & 0xff, b >> 8)
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
    /// The softwire the internal side is behind, if any.
    pub softwire: SoftwireTag,
}

const _: () = assert!(core::mem::size_of::<Session>() == 32);
const _: () = assert!(core::mem::size_of::<Option<Session>>() == 32);

impl Session {
    /// The outbound index key: (proto, internal, remote).
    #[inline(always)]
    pub fn out_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            softwire: self.softwire,
            local: self.internal,
            remote: self.remote,
        }
    }

    /// The inbound index key: (proto, external, remote).
    #[inline(always)]
    pub fn in_key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            softwire: SoftwireTag::NONE,
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
    fn softwire_tags_round_trip_in_three_bytes() {
        for n in [1, 2, 0xff, 0x100, 0x1_0000, crate::config::MAX_SOFTWIRES] {
            let id = SoftwireId::new(n).unwrap();
            let t = SoftwireTag::of(id);
            assert_eq!(t.get(), Some(id));
            assert_eq!(t.bits(), n);
            assert!(t.is_some());
        }
        assert_eq!(SoftwireId::new(0), None);
        assert_eq!(SoftwireId::new(crate::config::MAX_SOFTWIRES + 1), None);
        assert_eq!(SoftwireTag::NONE.get(), None);
        assert_eq!(core::mem::size_of::<SoftwireTag>(), 3);
    }

    #[test]
    fn the_softwire_is_part_of_the_out_key_hash_words() {
        let key = |t: u32| FlowKey {
            proto: Protocol::Udp,
            softwire: SoftwireId::new(t).map_or(SoftwireTag::NONE, SoftwireTag::of),
            local: Endpoint::new(std::net::Ipv4Addr::new(192, 168, 1, 10), 5000),
            remote: Endpoint::new(std::net::Ipv4Addr::new(8, 8, 8, 8), 53),
        };
        let words: Vec<_> = [0, 1, 0x100, 0x1_0000].map(|t| key(t).packed()).into();
        for (i, a) in words.iter().enumerate() {
            for b in &words[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn session_is_32_bytes() {
        assert_eq!(core::mem::size_of::<Session>(), 32);
        assert_eq!(core::mem::align_of::<Session>(), 32);
    }
}
