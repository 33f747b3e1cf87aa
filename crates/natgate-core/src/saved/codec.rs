//! The snapshot file: a versioned, checksummed encoding of a [`SavedState`].
//!
//! ```text
//! magic "NGSNAP\r\n"   8   the \r\n catches a file mangled by a text-mode copy
//! version             2   FORMAT_VERSION; another version is refused, never guessed at
//! reserved            2   0
//! saved at            8   milliseconds since the Unix epoch, for the time the gateway was down
//! counts              3x4 sessions, explicit mappings, held ports
//! sessions            24 each: proto, TCP state, internal, external, remote (address, port),
//!                          idle seconds
//! explicit mappings   31 + 8 per peer: proto, origin (0 NAT-PMP, 1 PCP, 2 UPnP), PCP nonce
//!                          (zero for the others), for UPnP only the description (a length
//!                          byte of at most 31 and UTF-8), internal, external, lifetime left (ms), peer count,
//!                          peers (prefix address, length, has port, port)
//! held ports          16 each: proto, external, age (ms), has subscriber, subscriber
//! checksum            4   CRC-32 (IEEE) of everything before it
//! ```
//!
//! All integers are big-endian. Decoding checks every count against the bytes there are before
//! allocating, and every field (protocol numbers, prefixes) before building a record, so a
//! damaged or hostile file is an error, never a panic or a huge allocation.

use super::{SavedExplicit, SavedHold, SavedSession, SavedState};
use crate::endpoint::{Endpoint, Ipv4Prefix, Protocol};
use crate::table::{Description, MappingOrigin, RemotePeer};
use core::time::Duration;
use std::net::Ipv4Addr;

/// The file's first bytes.
pub const MAGIC: [u8; 8] = *b"NGSNAP\r\n";
/// The layout this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

const HEADER: usize = 8 + 2 + 2 + 8 + 3 * 4;
const SESSION: usize = 24;
const EXPLICIT: usize = 31;
const PEER: usize = 8;
const HELD: usize = 16;
const CHECKSUM: usize = 4;

/// A saved state and when it was saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch when it was saved.
    pub saved_at_unix_ms: u64,
    /// The state.
    pub state: SavedState,
}

/// Why bytes are not a snapshot this version can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a natgate snapshot at all.
    #[error("not a natgate snapshot (wrong magic bytes)")]
    NotASnapshot,
    /// A snapshot of another format version.
    #[error("snapshot format version {0}, this natgate reads version {FORMAT_VERSION}")]
    Version(u16),
    /// The checksum does not match: the file was damaged or cut short.
    #[error("the snapshot's checksum does not match (damaged or cut short)")]
    Checksum,
    /// The bytes end before the records they announce.
    #[error("the snapshot ends inside its {0}")]
    Truncated(&'static str),
    /// Bytes after the last record.
    #[error("{0} bytes after the snapshot's last record")]
    Trailing(usize),
    /// A record with a value no natgate writes.
    #[error("{what} record {index} is invalid: {why}")]
    BadRecord {
        /// Which kind of record.
        what: &'static str,
        /// Its position among its kind.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// Encodes `snap`.
pub fn encode(snap: &Snapshot) -> Vec<u8> {
    let s = &snap.state;
    let peers: usize = s.explicit.iter().map(|e| e.peers.len()).sum();
    let mut out = Vec::with_capacity(
        HEADER
            + s.sessions.len() * SESSION
            + s.explicit.len() * EXPLICIT
            + peers * PEER
            + s.held.len() * HELD
            + CHECKSUM,
    );
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&snap.saved_at_unix_ms.to_be_bytes());
    for n in [s.sessions.len(), s.explicit.len(), s.held.len()] {
        out.extend_from_slice(&count(n).to_be_bytes());
    }
    for r in &s.sessions {
        out.push(r.proto.ip_number());
        out.push(r.tcp);
        for e in [r.internal, r.external, r.remote] {
            put_endpoint(&mut out, e);
        }
        out.extend_from_slice(&r.idle_secs.to_be_bytes());
    }
    for r in &s.explicit {
        out.push(r.proto.ip_number());
        match r.origin {
            MappingOrigin::NatPmp => {
                out.push(0);
                out.extend_from_slice(&[0; 12]);
            }
            MappingOrigin::Pcp { nonce } => {
                out.push(1);
                out.extend_from_slice(&nonce);
            }
            MappingOrigin::Upnp { description } => {
                out.push(2);
                out.extend_from_slice(&[0; 12]);
                let text = description.as_str().as_bytes();
                out.push(text.len() as u8);
                out.extend_from_slice(text);
            }
        }
        put_endpoint(&mut out, r.internal);
        put_endpoint(&mut out, r.external);
        out.extend_from_slice(&millis(r.remaining).to_be_bytes());
        // A PCP request carries few FILTER options; the server caps them far below 255.
        let peers = &r.peers[..r.peers.len().min(usize::from(u8::MAX))];
        out.push(peers.len() as u8);
        for p in peers {
            out.extend_from_slice(&p.prefix.addr().octets());
            out.push(p.prefix.prefix_len());
            out.push(u8::from(p.port.is_some()));
            out.extend_from_slice(&p.port.unwrap_or(0).to_be_bytes());
        }
    }
    for r in &s.held {
        out.push(r.proto.ip_number());
        put_endpoint(&mut out, r.external);
        out.extend_from_slice(&millis(r.age).to_be_bytes());
        out.push(u8::from(r.subscriber.is_some()));
        out.extend_from_slice(&r.subscriber.unwrap_or(Ipv4Addr::UNSPECIFIED).octets());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes a snapshot, checking everything it reads.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, DecodeError> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::NotASnapshot);
    }
    let mut r = Reader { bytes, at: 8 };
    let version = r.u16("header")?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    if bytes.len() < HEADER + CHECKSUM {
        return Err(DecodeError::Truncated("header"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if crc32fast::hash(body) != u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]) {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader {
        bytes: body,
        at: 10,
    };
    r.u16("header")?;
    let saved_at_unix_ms = r.u64("header")?;
    let counts = [r.u32("header")?, r.u32("header")?, r.u32("header")?].map(|n| n as usize);
    let mut state = SavedState {
        sessions: Vec::with_capacity(r.capacity(counts[0], SESSION, "sessions")?),
        explicit: Vec::with_capacity(r.capacity(counts[1], EXPLICIT, "explicit mappings")?),
        held: Vec::new(),
    };
    for index in 0..counts[0] {
        let what = "session";
        let proto = r.proto(what, index)?;
        let tcp = r.u8(what)?;
        let (internal, external, remote) =
            (r.endpoint(what)?, r.endpoint(what)?, r.endpoint(what)?);
        let idle_secs = r.u32(what)?;
        state.sessions.push(SavedSession {
            proto,
            internal,
            external,
            remote,
            tcp,
            idle_secs,
        });
    }
    for index in 0..counts[1] {
        let what = "explicit mapping";
        let bad = |why| DecodeError::BadRecord { what, index, why };
        let proto = r.proto(what, index)?;
        let origin = r.u8(what)?;
        let nonce = r.nonce(what)?;
        let origin = match origin {
            0 => MappingOrigin::NatPmp,
            1 => MappingOrigin::Pcp { nonce },
            2 => {
                let len = usize::from(r.u8(what)?);
                if len > Description::MAX {
                    return Err(bad("description too long"));
                }
                let text = core::str::from_utf8(r.bytes(len, what)?)
                    .map_err(|_| bad("description not UTF-8"))?;
                MappingOrigin::Upnp {
                    description: Description::new(text),
                }
            }
            _ => return Err(bad("unknown origin")),
        };
        let (internal, external) = (r.endpoint(what)?, r.endpoint(what)?);
        let remaining = Duration::from_millis(u64::from(r.u32(what)?));
        let n = usize::from(r.u8(what)?);
        let mut peers = Vec::with_capacity(r.capacity(n, PEER, what)?);
        for _ in 0..n {
            let addr = r.addr(what)?;
            let len = r.u8(what)?;
            let prefix = Ipv4Prefix::new(addr, len).ok_or(bad("a peer prefix with host bits"))?;
            let has_port = r.u8(what)?;
            let port = r.u16(what)?;
            peers.push(RemotePeer {
                prefix,
                port: (has_port != 0).then_some(port),
            });
        }
        state.explicit.push(SavedExplicit {
            proto,
            internal,
            external,
            remaining,
            origin,
            peers,
        });
    }
    state.held = Vec::with_capacity(r.capacity(counts[2], HELD, "held ports")?);
    for index in 0..counts[2] {
        let what = "held port";
        let proto = r.proto(what, index)?;
        let external = r.endpoint(what)?;
        let age = Duration::from_millis(u64::from(r.u32(what)?));
        let has_subscriber = r.u8(what)?;
        let subscriber = r.addr(what)?;
        state.held.push(SavedHold {
            proto,
            external,
            age,
            subscriber: (has_subscriber != 0).then_some(subscriber),
        });
    }
    match body.len() - r.at {
        0 => Ok(Snapshot {
            saved_at_unix_ms,
            state,
        }),
        n => Err(DecodeError::Trailing(n)),
    }
}

/// A record count as the file stores it (no gateway holds 2^32 of anything).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Milliseconds, saturated to what the file stores (49 days: longer than any timer).
fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn put_endpoint(out: &mut Vec<u8>, e: Endpoint) {
    out.extend_from_slice(&e.addr.octets());
    out.extend_from_slice(&e.port.to_be_bytes());
}

/// A cursor over the snapshot's body.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self
            .bytes
            .get(self.at..self.at + N)
            .ok_or(DecodeError::Truncated(what))?;
        self.at += N;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// `n` records of at least `size` bytes each, if the bytes left can hold them: what to
    /// reserve for them.
    fn capacity(&self, n: usize, size: usize, what: &'static str) -> Result<usize, DecodeError> {
        let left = self.bytes.len() - self.at;
        if n.checked_mul(size).is_none_or(|need| need > left) {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(what)?))
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&[u8], DecodeError> {
        let b = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or(DecodeError::Truncated(what))?;
        self.at += n;
        Ok(b)
    }

    fn nonce(&mut self, what: &'static str) -> Result<[u8; 12], DecodeError> {
        self.take(what)
    }

    fn addr(&mut self, what: &'static str) -> Result<Ipv4Addr, DecodeError> {
        Ok(Ipv4Addr::from(self.take::<4>(what)?))
    }

    fn endpoint(&mut self, what: &'static str) -> Result<Endpoint, DecodeError> {
        Ok(Endpoint::new(self.addr(what)?, self.u16(what)?))
    }

    fn proto(&mut self, what: &'static str, index: usize) -> Result<Protocol, DecodeError> {
        let n = self.u8(what)?;
        Protocol::from_ip_number(n).ok_or(DecodeError::BadRecord {
            what,
            index,
            why: "unknown protocol",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ep(a: u8, port: u16) -> Endpoint {
        Endpoint::new(Ipv4Addr::new(10, 0, 0, a), port)
    }

    fn sample() -> Snapshot {
        Snapshot {
            saved_at_unix_ms: 1_796_000_000_000,
            state: SavedState {
                sessions: vec![SavedSession {
                    proto: Protocol::Tcp,
                    internal: ep(1, 5000),
                    external: ep(2, 40000),
                    remote: ep(3, 443),
                    tcp: 7,
                    idle_secs: 12,
                }],
                explicit: vec![
                    SavedExplicit {
                        proto: Protocol::Udp,
                        internal: ep(1, 6000),
                        external: ep(2, 6000),
                        remaining: Duration::from_millis(3_599_500),
                        origin: MappingOrigin::Pcp { nonce: [9; 12] },
                        peers: vec![RemotePeer {
                            prefix: Ipv4Prefix::new(Ipv4Addr::new(192, 0, 2, 0), 24).unwrap(),
                            port: Some(53),
                        }],
                    },
                    SavedExplicit {
                        proto: Protocol::Tcp,
                        internal: ep(1, 22),
                        external: ep(2, 2222),
                        remaining: Duration::from_secs(60),
                        origin: MappingOrigin::NatPmp,
                        peers: vec![],
                    },
                    SavedExplicit {
                        proto: Protocol::Tcp,
                        internal: ep(1, 8080),
                        external: ep(2, 8080),
                        remaining: Duration::from_secs(600),
                        origin: MappingOrigin::Upnp {
                            description: Description::new("libminiupnpc"),
                        },
                        peers: vec![],
                    },
                ],
                held: vec![SavedHold {
                    proto: Protocol::Icmp,
                    external: ep(2, 77),
                    age: Duration::from_millis(1500),
                    subscriber: Some(Ipv4Addr::new(100, 64, 0, 1)),
                }],
            },
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let bytes = encode(&s);
        assert_eq!(
            bytes.len(),
            // The UPnP mapping's description: its length and "libminiupnpc".
            HEADER + SESSION + 3 * EXPLICIT + PEER + 1 + 12 + HELD + CHECKSUM
        );
        assert_eq!(decode(&bytes), Ok(s));
        let empty = Snapshot::default();
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let bytes = encode(&sample());
        assert_eq!(decode(b"hello"), Err(DecodeError::NotASnapshot));
        let mut v2 = bytes.clone();
        v2[9] = 2;
        assert_eq!(decode(&v2), Err(DecodeError::Version(2)));
        let mut flipped = bytes.clone();
        flipped[40] ^= 1;
        assert_eq!(decode(&flipped), Err(DecodeError::Checksum));
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Checksum)
        );
    }

    /// A well-checksummed body that lies: the checksum is recomputed over the change.
    fn resealed(mut bytes: Vec<u8>, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        bytes.truncate(bytes.len() - CHECKSUM);
        change(&mut bytes);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn checks_counts_and_fields_behind_a_good_checksum() {
        let bytes = encode(&sample());
        // Four billion sessions announced in a few bytes: refused before allocating.
        let huge = resealed(bytes.clone(), |b| b[20..24].copy_from_slice(&[0xff; 4]));
        assert_eq!(decode(&huge), Err(DecodeError::Truncated("sessions")));
        let proto = resealed(bytes.clone(), |b| b[HEADER] = 99);
        assert!(matches!(
            decode(&proto),
            Err(DecodeError::BadRecord {
                what: "session",
                why: "unknown protocol",
                ..
            })
        ));
        // The UPnP mapping's description: its length byte, then its text.
        let upnp = HEADER + SESSION + EXPLICIT + PEER + EXPLICIT + 14;
        for (change, why) in [
            ((upnp, 32), "description too long"),
            ((upnp + 1, 0xff), "description not UTF-8"),
        ] {
            let bad = resealed(bytes.clone(), |b| b[change.0] = change.1);
            assert!(
                matches!(
                    decode(&bad),
                    Err(DecodeError::BadRecord { what: "explicit mapping", why: w, .. }) if w == why
                ),
                "{why}: {:?}",
                decode(&bad)
            );
        }
        let trailing = resealed(bytes, |b| b.push(0));
        assert_eq!(decode(&trailing), Err(DecodeError::Trailing(1)));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
            bytes.extend_from_slice(&tail);
            let _ = decode(&bytes);
            let sealed = resealed(bytes.clone(), |_| {});
            let _ = decode(&sealed);
        }
    }
}
