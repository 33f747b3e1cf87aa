//! Saving an engine's state and restoring it into a new engine: a warm restart keeps every
//! subscriber's mappings on the same external endpoints and its connections alive.
//!
//! Restoring re-makes each record through the engine's own paths (admission against the
//! subscriber's limits, [`PortAllocator::allocate_at`] for the exact external endpoint,
//! [`Engine::map_explicit`] with that endpoint required), so a record the new config could not
//! have produced is refused rather than forced in. What was logged when the state was made is
//! not logged again; what ends because the gateway was down (a session idle past its timeout,
//! a mapping whose lifetime ran out) ends at the first timer and is logged then.
//!
//! Not saved: sessions of static rules and virtual servers (their rules re-make them, but an
//! established TCP connection through one is lost), sessions behind a DS-Lite softwire, held
//! SYNs, fragments in reassembly and rate-limit tokens.

use super::{Engine, MapRequest, Suggestion, session_due};
use crate::alloc::{AllocRequest, PortAllocator, SubscriberId};
use crate::endpoint::{Direction, Endpoint, Protocol};
use crate::saved::{SavedExplicit, SavedHold, SavedSession, SavedState};
use crate::table::{FlowKey, SoftwireTag};
use crate::tcp_state::TcpState;
use crate::time::Instant;
use core::time::Duration;
use std::net::Ipv4Addr;

/// What a restore put back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Sessions, with their mappings.
    pub sessions: usize,
    /// Explicit mappings.
    pub explicit: usize,
    /// Ports in hold-down.
    pub held: usize,
    /// Held ports not held again: the new config does not hand them out (so nothing can reuse
    /// them early), or a restored mapping holds them.
    pub held_skipped: usize,
}

/// A saved record that the engine, with its config, cannot take back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{record}: {why}")]
pub struct RestoreError {
    /// The record, as an operator would name it.
    pub record: String,
    /// Why it does not fit.
    pub why: String,
}

impl<A: PortAllocator> Engine<A> {
    /// The engine's state at `now`, as records (see [`crate::saved`]).
    pub fn save(&self, now: Instant) -> SavedState {
        let now_secs = now.as_secs();
        let sessions = self
            .sessions
            .iter()
            .filter(|(_, s)| s.softwire == SoftwireTag::NONE)
            .map(|(_, s)| SavedSession {
                proto: s.proto,
                internal: s.internal,
                external: s.external,
                remote: s.remote,
                tcp: if s.proto == Protocol::Tcp { s.tcp } else { 0 },
                idle_secs: now_secs.saturating_sub(s.last_seen),
            })
            .collect();
        let explicit = self
            .explicit
            .iter()
            .map(|m| SavedExplicit {
                proto: m.proto,
                internal: m.internal,
                external: m.external,
                remaining: m.expires.saturating_since(now),
                origin: m.origin,
                peers: m.peers.clone(),
            })
            .collect();
        let held = self
            .alloc
            .held_down()
            .into_iter()
            .map(|h| SavedHold {
                proto: h.proto,
                external: h.external,
                age: now.saturating_since(h.released_at),
                subscriber: h.subscriber,
            })
            .collect();
        SavedState {
            sessions,
            explicit,
            held,
        }
    }

    /// Puts `state` back into this engine, which must be new (nothing restored twice, no
    /// packet yet): `down` is how long the gateway was down since it was saved, which every
    /// age grows by. On an error the engine holds part of the state and should be dropped for
    /// a new one. Emits no events and leaves the counters as they were.
    pub fn restore(
        &mut self,
        now: Instant,
        state: &SavedState,
        down: Duration,
    ) -> Result<Restored, RestoreError> {
        let counters = self.counters.clone();
        let r = self.restore_all(now, state, down);
        // What restoring made was logged when it was first made.
        while self.events.pop().is_some() {}
        self.counters = counters;
        r
    }

    fn restore_all(
        &mut self,
        now: Instant,
        state: &SavedState,
        down: Duration,
    ) -> Result<Restored, RestoreError> {
        let mut done = Restored::default();
        for r in &state.explicit {
            self.restore_explicit(now, r, down)
                .map_err(|why| refused(r.proto, r.internal, r.external, None, why))?;
            done.explicit += 1;
        }
        let down_secs = u32::try_from(down.as_secs()).unwrap_or(u32::MAX);
        // Loads ahead: restoring a million sessions is mostly waiting for index buckets, and
        // loads started `AHEAD` sessions early overlap instead of coming one after another.
        const AHEAD: usize = 16;
        for (i, r) in state.sessions.iter().enumerate() {
            if let Some(next) = state.sessions.get(i + AHEAD) {
                let (out, inb) = index_keys(next);
                self.sessions.prefetch_session(&out, &inb);
            }
            self.restore_session(now, r, down_secs)
                .map_err(|why| refused(r.proto, r.internal, r.external, Some(r.remote), why))?;
            done.sessions += 1;
        }
        for h in &state.held {
            if self.restore_hold(now, h, down) {
                done.held += 1;
            } else {
                done.held_skipped += 1;
            }
        }
        Ok(done)
    }

    fn restore_session(
        &mut self,
        now: Instant,
        r: &SavedSession,
        down_secs: u32,
    ) -> Result<(), String> {
        if !self.source_is_inside(r.internal.addr) {
            return Err("the internal address is not in the inside networks".into());
        }
        let tcp = TcpState::from_byte(r.tcp);
        if r.proto == Protocol::Tcp && tcp.to_byte() != r.tcp {
            return Err(format!("unknown TCP state {}", r.tcp));
        }
        let key = FlowKey {
            proto: r.proto,
            softwire: SoftwireTag::NONE,
            local: r.internal,
            remote: r.remote,
        };
        if self.sessions.find_out(&key).is_some() {
            return Err("saved twice".into());
        }
        self.admit(SoftwireTag::NONE, r.internal.addr, r.proto, now, false)
            .map_err(|reason| format!("refused by a limit ({})", reason.name()))?;
        let made = self.restore_flow(now, r, &key);
        let sid =
            made.inspect_err(|_| self.unadmit(SoftwireTag::NONE, r.internal.addr, r.proto))?;
        let s = self.sessions.get_mut(sid);
        s.tcp = if r.proto == Protocol::Tcp {
            r.tcp
        } else {
            s.tcp
        };
        s.last_seen = now
            .as_secs()
            .saturating_sub(r.idle_secs.saturating_add(down_secs));
        let due = session_due(&self.behavior, s);
        self.sessions.reschedule(sid, due);
        Ok(())
    }

    /// The session of `r` (charged to its subscriber already), on its mapping, which is made
    /// on `r.external` if this is the mapping's first session.
    fn restore_flow(
        &mut self,
        now: Instant,
        r: &SavedSession,
        key: &FlowKey,
    ) -> Result<crate::table::SessionId, String> {
        let hash = self.sessions.lookup_hash(false, key);
        if let Some(mid) = self.sessions.find_by_internal_hashed(hash, key) {
            let on = self.sessions.mapping(mid).external;
            if on != r.external {
                return Err(format!(
                    "this config's mapping behaviour puts it on the mapping of {on}"
                ));
            }
            return self
                .new_session(now, mid, r.remote, Direction::Outbound, 0)
                .map_err(|reason| format!("no room ({})", reason.name()));
        }
        if self
            .sessions
            .find_by_external(r.proto, r.external, r.remote)
            .is_some()
        {
            return Err("another mapping holds its external endpoint for this remote".into());
        }
        let shared = self
            .port_users
            .as_ref()
            .is_some_and(|u| u.count(r.proto, r.external) > 0);
        if !shared {
            let req = AllocRequest {
                proto: r.proto,
                internal: r.internal,
                subscriber: SubscriberId::of(r.internal),
                now,
            };
            self.alloc
                .allocate_at(&req, r.external)
                .map_err(|e| format!("its external endpoint: {e}"))?;
        }
        self.new_mapping_at(now, key, hash, 0, r.external)
            .map_err(|reason| format!("no room ({})", reason.name()))
    }

    fn restore_explicit(
        &mut self,
        now: Instant,
        r: &SavedExplicit,
        down: Duration,
    ) -> Result<(), String> {
        let req = MapRequest {
            proto: r.proto,
            internal: r.internal,
            // Ran out while the gateway was down: it ends, and is logged, at the first timer.
            lifetime: r.remaining.saturating_sub(down),
            origin: r.origin,
            peers: r.peers.clone(),
            suggested: Some(Suggestion {
                addr: Some(r.external.addr),
                port: r.external.port,
                required: true,
            }),
        };
        self.map_explicit(now, req, usize::MAX)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Holds `h`'s port again from its original release; `false` if the allocator will not
    /// give it out (not its port any more, or in use).
    fn restore_hold(&mut self, now: Instant, h: &SavedHold, down: Duration) -> bool {
        let released_at = now - h.age.saturating_add(down);
        let owner = h.subscriber.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let subscriber = SubscriberId::Ipv4(owner);
        // The port as the internal one too: the range and parity checks then pass for it.
        let req = AllocRequest {
            proto: h.proto,
            internal: Endpoint::new(owner, h.external.port),
            subscriber,
            now: released_at,
        };
        if self.alloc.allocate_at(&req, h.external).is_err() {
            return false;
        }
        self.alloc
            .release(h.proto, subscriber, h.external, released_at);
        self.drain_alloc_events();
        true
    }
}

#[cfg(test)]
mod tests;

/// A saved session's out and in keys.
fn index_keys(r: &SavedSession) -> (FlowKey, FlowKey) {
    let key = |local| FlowKey {
        proto: r.proto,
        softwire: SoftwireTag::NONE,
        local,
        remote: r.remote,
    };
    (key(r.internal), key(r.external))
}

/// The error for a record: `proto internal -> external [remote]: why`.
fn refused(
    proto: Protocol,
    internal: Endpoint,
    external: Endpoint,
    remote: Option<Endpoint>,
    why: String,
) -> RestoreError {
    let remote = remote.map(|r| format!(" to {r}")).unwrap_or_default();
    RestoreError {
        record: format!("{} {internal} -> {external}{remote}", proto.name()),
        why,
    }
}
