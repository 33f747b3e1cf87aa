//! Handing established flows to a fast path that the engine does not run (an eBPF program in
//! the kernel), while the engine stays the one authority over them (Open vSwitch's split).
//!
//! The engine decides which sessions may be carried elsewhere ([`Engine::offloadable`]): dynamic
//! TCP and UDP sessions that are not hairpinned, TCP only while established. It says so as
//! [`OffloadOp`]s that the driver applies to the fast path's table ([`Engine::poll_offload`]):
//! an insert when an offloadable session's second packet comes through (a flow of one packet,
//! like most of a scan or a flood of new flows, never costs a table change), a removal when it
//! stops being offloadable or ends. A
//! fast path carries only packets that change no engine state (no SYN, FIN or RST; no TTL
//! expiry; nothing to fragment or refuse) and punts everything else to the engine, so timers are
//! the only thing it can affect: before a carried session expires, the engine asks the driver
//! when the fast path last saw it in each direction ([`FastPathView`]) and refreshes it by the
//! behaviour's refresh rule (RFC 4787 REQ-6), exactly as if those packets had come through
//! `process`.
//!
//! Removals are never lost: the queue grows for them (only a timer run that ends many carried
//! sessions at once can make it grow, never the packet path). An insert that finds the queue at
//! its bound is skipped and counted; the session stays with the engine, which offers it again
//! when its next packet comes through.

use super::Engine;
use crate::alloc::PortAllocator;
use crate::endpoint::{Direction, Endpoint, Protocol};
use crate::table::{Session, SessionId};
use crate::tcp_state::{TcpPhase, TcpState};
use crate::time::Instant;
use std::collections::VecDeque;

/// The session flag bit that says a session's flow is in the fast path.
pub(super) const OFFLOADED: u8 = 0x01;

/// Inserts that may wait in the queue before more are skipped.
const QUEUED_INSERTS: usize = 4096;

/// A session's flow as a fast path needs it: the outbound packets go `internal -> remote` and
/// leave as `external -> remote`; the inbound ones come `remote -> external` and go on as
/// `remote -> internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffloadedFlow {
    /// TCP or UDP.
    pub proto: Protocol,
    /// The subscriber's endpoint.
    pub internal: Endpoint,
    /// The endpoint the subscriber appears as outside.
    pub external: Endpoint,
    /// The remote endpoint.
    pub remote: Endpoint,
}

impl OffloadedFlow {
    fn of(s: &Session) -> Self {
        OffloadedFlow {
            proto: s.proto,
            internal: s.internal,
            external: s.external,
            remote: s.remote,
        }
    }
}

/// A change the driver makes to the fast path's table, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadOp {
    /// Carry this flow from now on (both directions).
    Insert(OffloadedFlow),
    /// Stop carrying this flow; its packets go to the engine again.
    Remove(OffloadedFlow),
}

/// When a fast path last carried a packet of a flow, per direction (`None`: never, or not
/// since the flow was inserted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FastPathSeen {
    /// The last outbound packet.
    pub outbound: Option<Instant>,
    /// The last inbound packet.
    pub inbound: Option<Instant>,
}

/// What the engine asks of the fast path while its timers run.
pub trait FastPathView {
    /// When the fast path last carried `flow`, per direction.
    fn seen(&mut self, flow: &OffloadedFlow) -> FastPathSeen;
}

/// A view for a driver without a fast path: nothing was ever carried.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFastPath;

impl FastPathView for NoFastPath {
    fn seen(&mut self, _: &OffloadedFlow) -> FastPathSeen {
        FastPathSeen::default()
    }
}

/// The engine's side of offloading: whether it is on, the queue, and counts.
#[derive(Debug)]
pub(super) struct Offload {
    /// Most flows in the fast path at once (the size of its table).
    capacity: usize,
    /// Flows in the fast path, or queued to be.
    carried: usize,
    ops: VecDeque<OffloadOp>,
    /// Inserts skipped because the queue or the fast path's table was full.
    pub skipped: u64,
}

/// Offloading figures for stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Flows in the fast path, or queued to be.
    pub carried: u64,
    /// The most it may hold.
    pub capacity: u64,
    /// Offers skipped because the fast path's table or the queue was full.
    pub skipped: u64,
}

impl Offload {
    fn new(capacity: usize) -> Self {
        Offload {
            capacity,
            carried: 0,
            ops: VecDeque::with_capacity(QUEUED_INSERTS),
            skipped: 0,
        }
    }
}

/// Whether a session may be carried by a fast path, by its own state: TCP only while
/// established (a fast path never sees SYN, FIN or RST, so an opening or closing connection's
/// phase is the engine's to follow), UDP always.
fn offloadable_state(s: &Session) -> bool {
    match s.proto {
        Protocol::Udp => true,
        Protocol::Tcp => TcpState::from_byte(s.tcp).phase() == TcpPhase::Established,
        Protocol::Icmp => false,
    }
}

impl<A: PortAllocator> Engine<A> {
    /// Turns offloading on: from now on the engine offers established flows to a fast path
    /// (see [`Self::poll_offload`]), at most one per session it can hold. Sessions that exist
    /// already are offered when their next packet comes through.
    ///
    /// With `clear-df` (a lab setting) nothing is offered: the fast path would forward the
    /// flows with DF as it came.
    pub fn enable_offload(&mut self) {
        if self.offload.is_none() && !self.behavior.clear_df {
            self.offload = Some(Offload::new(self.sessions.capacity()));
        }
    }

    /// The next change for the fast path's table. Call after every `process_batch`,
    /// `handle_timeout_with`, `flush` or `reload` until it returns `None`, and apply them in
    /// order.
    pub fn poll_offload(&mut self) -> Option<OffloadOp> {
        self.offload.as_mut()?.ops.pop_front()
    }

    /// Offloading figures, if offloading is on.
    pub fn offload_stats(&self) -> Option<OffloadStats> {
        self.offload.as_ref().map(|o| OffloadStats {
            carried: o.carried as u64,
            capacity: o.capacity as u64,
            skipped: o.skipped,
        })
    }

    /// Moves the last-seen time of every carried session forward to what the fast path saw,
    /// so that a listing of sessions ([`Self::sessions`]) shows their real idle times. Costs
    /// one question to `fast_path` per carried session: for listings, not for timers (which
    /// ask only about the sessions that are due).
    pub fn refresh_offloaded(&mut self, fast_path: &mut impl FastPathView) {
        if self.offload.is_none() {
            return;
        }
        let refresh = self.behavior.refresh;
        let carried: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.flags & OFFLOADED != 0)
            .map(|(id, _)| id)
            .collect();
        for id in carried {
            refresh_from(
                fast_path,
                |d| refresh.refreshes(d),
                self.sessions.get_mut(id),
            );
        }
    }

    /// Whether the session may go to the fast path: a dynamic TCP or UDP session in an
    /// offloadable state ([`offloadable_state`]) whose remote is not one of our own external
    /// addresses (a hairpinned flow is translated twice, which only the engine does).
    fn offloadable(&self, s: &Session) -> bool {
        offloadable_state(s) && !self.alloc.owns(s.remote.addr) && !s.softwire.is_some()
    }

    /// Offers session `sid` to the fast path if offloading is on and it qualifies, or takes it
    /// back if it is carried and no longer qualifies. Called when a session's TCP phase changes
    /// and when a packet of a session the fast path does not carry reaches the engine: never
    /// for the packet that made the session, so that a flow of one packet costs the fast path
    /// nothing.
    pub(super) fn update_offload(&mut self, sid: SessionId) {
        if self.offload.is_none() {
            return;
        }
        let s = *self.sessions.get(sid);
        let carried = s.flags & OFFLOADED != 0;
        let wanted = self.offloadable(&s);
        let Some(o) = self.offload.as_mut() else {
            return;
        };
        match (carried, wanted) {
            (false, true) => {
                if o.carried >= o.capacity || o.ops.len() >= QUEUED_INSERTS {
                    o.skipped += 1;
                    return;
                }
                o.carried += 1;
                o.ops.push_back(OffloadOp::Insert(OffloadedFlow::of(&s)));
                self.sessions.get_mut(sid).flags |= OFFLOADED;
            }
            (true, false) => {
                o.carried -= 1;
                o.ops.push_back(OffloadOp::Remove(OffloadedFlow::of(&s)));
                self.sessions.get_mut(sid).flags &= !OFFLOADED;
            }
            _ => {}
        }
    }
}

/// A carried session is going: take it out of the fast path. (A free function over the parts
/// it needs, so the session table's expiry can call it.)
pub(super) fn withdraw(offload: &mut Option<Offload>, s: &Session) {
    if s.flags & OFFLOADED == 0 {
        return;
    }
    if let Some(o) = offload.as_mut() {
        o.carried = o.carried.saturating_sub(1);
        o.ops.push_back(OffloadOp::Remove(OffloadedFlow::of(s)));
    }
}

/// Before a carried session's expiry is decided: moves its `last_seen` forward to the fast
/// path's last packet in a refreshing direction.
pub(super) fn refresh_from(
    view: &mut impl FastPathView,
    refreshes: impl Fn(Direction) -> bool,
    s: &mut Session,
) {
    if s.flags & OFFLOADED == 0 {
        return;
    }
    let seen = view.seen(&OffloadedFlow::of(s));
    let latest = [
        (Direction::Outbound, seen.outbound),
        (Direction::Inbound, seen.inbound),
    ]
    .into_iter()
    .filter_map(|(dir, at)| at.filter(|_| refreshes(dir)))
    .max();
    if let Some(at) = latest {
        s.last_seen = s.last_seen.max(at.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ep, tcp, udp};
    use super::*;
    use crate::config::{Config, Refresh};
    use crate::endpoint::Side;
    use crate::verdict::Verdict;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const SUB: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const WAN: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    fn engine(f: impl FnOnce(&mut Config)) -> Engine {
        let mut c = Config::new(vec![POOL], Ipv4Addr::new(100, 64, 0, 1));
        c.limits.max_sessions = 64;
        c.limits.max_mappings = 64;
        f(&mut c);
        let mut e = Engine::new(c.validate().expect("valid config"), 7);
        e.enable_offload();
        e
    }

    fn ops(e: &mut Engine) -> Vec<OffloadOp> {
        std::iter::from_fn(|| e.poll_offload()).collect()
    }

    fn send(e: &mut Engine, secs: u64, side: Side, mut p: super::super::tests::Pkt) -> Verdict {
        e.process(Instant::from_secs(secs), side, &mut p.buf, p.len)
    }

    /// A fast path that saw each flow at fixed times.
    #[derive(Default)]
    struct Seen(HashMap<OffloadedFlow, FastPathSeen>);

    impl Seen {
        /// A fast path that carried `flow` last at `outbound` and `inbound` seconds.
        fn one(flow: OffloadedFlow, outbound: Option<u64>, inbound: Option<u64>) -> Self {
            let at = |s: Option<u64>| s.map(Instant::from_secs);
            let seen = FastPathSeen {
                outbound: at(outbound),
                inbound: at(inbound),
            };
            Seen(HashMap::from([(flow, seen)]))
        }
    }

    impl FastPathView for Seen {
        fn seen(&mut self, flow: &OffloadedFlow) -> FastPathSeen {
            self.0.get(flow).copied().unwrap_or_default()
        }
    }

    /// Two datagrams of one flow from the subscriber's `port`: the first makes the session, the
    /// second makes the offer.
    fn udp_flow(e: &mut Engine, secs: u64, port: u16) {
        for _ in 0..2 {
            let v = send(e, secs, Side::Inside, udp(ep(SUB, port), ep(WAN, 53), b"q"));
            assert!(matches!(v, Verdict::Forward(Side::Outside)), "{v:?}");
        }
    }

    fn only_insert(e: &mut Engine) -> OffloadedFlow {
        match ops(e).as_slice() {
            [OffloadOp::Insert(f)] => *f,
            other => panic!("expected one insert, got {other:?}"),
        }
    }

    #[test]
    fn a_udp_session_is_offered_on_its_second_packet_and_withdrawn_when_it_expires() {
        let mut e = engine(|_| {});
        let v = send(
            &mut e,
            0,
            Side::Inside,
            udp(ep(SUB, 5000), ep(WAN, 53), b"q"),
        );
        assert!(matches!(v, Verdict::Forward(Side::Outside)));
        assert!(
            ops(&mut e).is_empty(),
            "a flow of one packet costs the fast path nothing"
        );
        udp_flow(&mut e, 0, 5000);
        let flow = only_insert(&mut e);
        assert_eq!(flow.internal, ep(SUB, 5000));
        assert_eq!(flow.remote, ep(WAN, 53));
        assert_eq!(flow.external.addr, POOL);
        assert_eq!(e.offload_stats().map(|s| s.carried), Some(1));
        // Nothing seen in the fast path: the session goes at its timer, and leaves the fast path.
        e.handle_timeout(Instant::from_secs(400));
        assert_eq!(e.session_count(), 0);
        assert_eq!(ops(&mut e), vec![OffloadOp::Remove(flow)]);
        assert_eq!(e.offload_stats().map(|s| s.carried), Some(0));
    }

    #[test]
    fn traffic_only_in_the_fast_path_keeps_a_session_alive() {
        let mut e = engine(|c| c.behavior.timers.udp = 120);
        udp_flow(&mut e, 0, 5000);
        let flow = only_insert(&mut e);
        let mut view = Seen::one(flow, Some(100), None);
        e.handle_timeout_with(Instant::from_secs(200), &mut view);
        assert_eq!(e.session_count(), 1, "seen at 100 s, timer 120 s");
        assert!(ops(&mut e).is_empty());
        e.handle_timeout_with(Instant::from_secs(222), &mut view);
        assert_eq!(e.session_count(), 0, "idle since 100 s");
        assert_eq!(ops(&mut e), vec![OffloadOp::Remove(flow)]);
    }

    #[test]
    fn a_listing_shows_the_fast_paths_last_packet() {
        let mut e = engine(|_| {});
        udp_flow(&mut e, 0, 5000);
        let flow = only_insert(&mut e);
        let mut view = Seen::one(flow, Some(42), None);
        e.refresh_offloaded(&mut view);
        let s = e.sessions().next().expect("session");
        assert_eq!(s.last_seen, Instant::from_secs(42));
    }

    #[test]
    fn inbound_fast_path_traffic_refreshes_only_where_the_behaviour_says_so() {
        for (refresh, alive) in [(Refresh::Outbound, false), (Refresh::Both, true)] {
            let mut e = engine(|c| {
                c.behavior.timers.udp = 120;
                c.behavior.refresh = refresh;
            });
            udp_flow(&mut e, 0, 5000);
            let flow = only_insert(&mut e);
            let mut view = Seen::one(flow, None, Some(100));
            e.handle_timeout_with(Instant::from_secs(200), &mut view);
            assert_eq!(e.session_count() == 1, alive, "{refresh:?}");
        }
    }

    #[test]
    fn tcp_is_carried_only_while_established() {
        let mut e = engine(|_| {});
        let (sub, wan) = (ep(SUB, 40000), ep(WAN, 443));
        send(&mut e, 0, Side::Inside, tcp(sub, wan, "S"));
        assert!(
            ops(&mut e).is_empty(),
            "opening: the engine follows the handshake"
        );
        let ext = e.sessions().next().expect("session").external;
        send(&mut e, 0, Side::Outside, tcp(wan, ext, "SA"));
        let flow = only_insert(&mut e);
        assert_eq!((flow.internal, flow.external, flow.remote), (sub, ext, wan));
        // A FIN each way closes it: the closing phase is the engine's again.
        send(&mut e, 1, Side::Inside, tcp(sub, wan, "FA"));
        assert!(ops(&mut e).is_empty(), "half-closed is still established");
        send(&mut e, 1, Side::Outside, tcp(wan, ext, "FA"));
        assert_eq!(ops(&mut e), vec![OffloadOp::Remove(flow)]);
    }

    #[test]
    fn hairpinned_flows_stay_with_the_engine() {
        let mut e = engine(|_| {});
        udp_flow(&mut e, 0, 5000);
        let first = only_insert(&mut e);
        let other = ep(Ipv4Addr::new(100, 64, 0, 11), 6000);
        // Twice: a second packet would make the offer, were the flow offloadable.
        for _ in 0..2 {
            let v = send(
                &mut e,
                1,
                Side::Inside,
                udp(other, first.external, b"hairpin"),
            );
            assert!(matches!(v, Verdict::Forward(Side::Inside)), "{v:?}");
        }
        assert!(
            ops(&mut e).iter().all(|op| match op {
                OffloadOp::Insert(f) => !e.allocator().owns(f.remote.addr),
                OffloadOp::Remove(_) => false,
            }),
            "no flow with a pool address as its remote is offered"
        );
    }

    #[test]
    fn a_full_fast_path_leaves_flows_with_the_engine_and_offers_them_again() {
        let mut e = engine(|_| {});
        e.offload = Some(Offload::new(1));
        udp_flow(&mut e, 0, 5000);
        udp_flow(&mut e, 0, 5001);
        let first = only_insert(&mut e);
        assert_eq!(first.internal, ep(SUB, 5000));
        assert_eq!(e.offload_stats().map(|s| s.skipped), Some(1));
        // The first flow ends; the room it leaves goes to the next flow offered.
        e.flush(Instant::from_secs(1));
        assert_eq!(ops(&mut e), vec![OffloadOp::Remove(first)]);
        udp_flow(&mut e, 2, 5002);
        assert_eq!(only_insert(&mut e).internal, ep(SUB, 5002));
    }

    #[test]
    fn a_session_left_out_is_offered_when_its_next_packet_comes_through() {
        let mut e = engine(|_| {});
        e.offload = Some(Offload::new(0));
        udp_flow(&mut e, 0, 5000);
        assert!(ops(&mut e).is_empty());
        e.offload = Some(Offload::new(4));
        send(
            &mut e,
            1,
            Side::Inside,
            udp(ep(SUB, 5000), ep(WAN, 53), b"q"),
        );
        assert_eq!(only_insert(&mut e).internal, ep(SUB, 5000));
    }
}
