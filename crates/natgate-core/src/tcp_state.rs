//! TCP connection tracking, just precise enough to pick a session's idle timer.
//!
//! A NAT tracks TCP; it does not enforce it. RFC 5382 REQ-2 requires every valid TCP sequence to
//! pass, simultaneous open included, so nothing here ever refuses a segment: [`TcpState`] only
//! remembers which SYNs, FINs and RSTs have gone by, and [`TcpState::timeout`] turns that into the
//! timer RFC 5382 REQ-5 and RFC 7857 section 2 ask for. There are no sequence-number checks: a
//! tracker that can only lengthen or shorten a timer gains little from them and would have to
//! follow window scaling, SACK and retransmissions to avoid breaking valid connections.

use crate::config::Timers;
use crate::endpoint::Direction;

/// TCP header flag bits, as in the flags byte (RFC 9293 section 3.1).
const FLAG_FIN: u8 = 0x01;
const FLAG_SYN: u8 = 0x02;
const FLAG_RST: u8 = 0x04;

/// State bits.
const SYN_OUT: u8 = 0x01;
const SYN_IN: u8 = 0x02;
const FIN_OUT: u8 = 0x04;
const FIN_IN: u8 = 0x08;
const RST: u8 = 0x10;
const ALL_BITS: u8 = SYN_OUT | SYN_IN | FIN_OUT | FIN_IN | RST;

/// What a session has seen of its TCP connection: a SYN outbound, a SYN inbound, a FIN outbound,
/// a FIN inbound, a RST. Stored as one byte in the session record ([`TcpState::to_byte`]).
///
/// The phase is a pure function of those bits (see [`TcpState::phase`]), so the order in which
/// the two SYNs arrive does not matter: a normal three-way handshake and a simultaneous open
/// (RFC 5382 REQ-2, RFC 9293 section 3.5) both end up [`TcpPhase::Established`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpState(u8);

/// Where a connection is in its life, as far as the NAT's timers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpPhase {
    /// A SYN seen, not yet in both directions (RFC 7857 section 2.1: transitory, opening).
    Opening,
    /// A SYN (or SYN-ACK) seen in both directions. A FIN in one direction only (half-close) stays
    /// here: a half-closed connection may carry data for hours and must not time out early.
    Established,
    /// A FIN seen in both directions (RFC 7857 section 2.1: transitory, closing).
    Closing,
    /// A RST seen in either direction. The session lingers rather than going at once
    /// (RFC 7857 section 2.2), so a stray or forged RST does not cut a live connection off.
    Reset,
}

impl TcpState {
    /// The state stored in a session record by [`TcpState::to_byte`]. Bits that `to_byte` never
    /// sets are ignored, so a corrupted byte still gives a valid state.
    pub const fn from_byte(b: u8) -> Self {
        TcpState(b & ALL_BITS)
    }

    /// The state as one byte, for the session record.
    pub const fn to_byte(self) -> u8 {
        self.0
    }

    /// Records one segment travelling in `dir`. `flags`: the raw TCP flags byte
    /// (FIN=0x01 SYN=0x02 RST=0x04 ACK=0x10); other bits are ignored.
    ///
    /// A SYN after the connection has reset or closed is a new connection on the same port pair
    /// (RFC 9293 allows reuse once TIME-WAIT ends, and a RST skips it): the state starts over
    /// with just that SYN. Call this for every segment the NAT forwards; it never refuses one.
    pub fn on_segment(&mut self, dir: Direction, flags: u8) {
        let (syn, fin) = match dir {
            Direction::Outbound => (SYN_OUT, FIN_OUT),
            Direction::Inbound => (SYN_IN, FIN_IN),
        };
        if flags & FLAG_SYN != 0 {
            if matches!(self.phase(), TcpPhase::Reset | TcpPhase::Closing) {
                self.0 = 0;
            }
            self.0 |= syn;
        }
        if flags & FLAG_FIN != 0 {
            self.0 |= fin;
        }
        if flags & FLAG_RST != 0 {
            self.0 |= RST;
        }
    }

    /// The phase, from the bits alone: [`TcpPhase::Reset`] if a RST was seen, else
    /// [`TcpPhase::Closing`] if FINs were seen both ways, else [`TcpPhase::Established`] if SYNs
    /// were seen both ways, else [`TcpPhase::Opening`].
    pub fn phase(self) -> TcpPhase {
        if self.0 & RST != 0 {
            TcpPhase::Reset
        } else if self.0 & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN {
            TcpPhase::Closing
        } else if self.0 & (SYN_OUT | SYN_IN) == SYN_OUT | SYN_IN {
            TcpPhase::Established
        } else {
            TcpPhase::Opening
        }
    }

    /// The idle timeout for this phase, in seconds: opening and closing get the transitory
    /// timers (RFC 5382 REQ-5, split by RFC 7857 section 2.1), established gets the long one
    /// (RFC 5382 REQ-5: at least 2 h 4 min), reset gets the RST linger (RFC 7857 section 2.2).
    pub fn timeout(self, timers: &Timers) -> u32 {
        match self.phase() {
            TcpPhase::Opening => timers.tcp_transitory_open,
            TcpPhase::Established => timers.tcp_established,
            TcpPhase::Closing => timers.tcp_transitory_close,
            TcpPhase::Reset => timers.tcp_rst_linger,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::{Inbound as In, Outbound as Out};
    use proptest::prelude::*;

    const ACK: u8 = 0x10;
    const SYN: u8 = FLAG_SYN;
    const SYN_ACK: u8 = FLAG_SYN | ACK;
    const FIN_ACK: u8 = FLAG_FIN | ACK;
    const RST_ACK: u8 = FLAG_RST | ACK;

    /// Timers with distinct values, so each phase's timer is told apart.
    fn timers() -> Timers {
        Timers {
            tcp_established: 7440,
            tcp_transitory_open: 241,
            tcp_transitory_close: 242,
            tcp_rst_linger: 243,
            ..Timers::default()
        }
    }

    /// A session created by its first (outbound) segment, as the engine does, then `rest`.
    fn run(first: u8, rest: &[(Direction, u8)]) -> TcpState {
        let mut s = TcpState::default();
        s.on_segment(Out, first);
        for &(dir, flags) in rest {
            s.on_segment(dir, flags);
        }
        s
    }

    #[test]
    fn three_way_handshake_establishes() {
        let mut s = TcpState::default();
        s.on_segment(Out, SYN);
        assert_eq!(s.phase(), TcpPhase::Opening);
        assert_eq!(s.timeout(&timers()), 241);
        s.on_segment(In, SYN_ACK);
        assert_eq!(s.phase(), TcpPhase::Established);
        s.on_segment(Out, ACK);
        assert_eq!(s.phase(), TcpPhase::Established);
        assert_eq!(s.timeout(&timers()), 7440);
    }

    #[test]
    fn rfc5382_req2_simultaneous_open_establishes() {
        // RFC 9293 figure 8: both ends send SYN, both answer SYN-ACK; any interleaving.
        let s = run(SYN, &[(In, SYN), (Out, SYN_ACK), (In, SYN_ACK)]);
        assert_eq!(s.phase(), TcpPhase::Established);
        let s = run(SYN, &[(In, SYN)]);
        assert_eq!(s.phase(), TcpPhase::Established);
        // The inbound SYN first (the engine held it per RFC 5382 REQ-4 and replays it).
        let mut s = TcpState::default();
        s.on_segment(In, SYN);
        assert_eq!(s.phase(), TcpPhase::Opening);
        s.on_segment(Out, SYN);
        assert_eq!(s.phase(), TcpPhase::Established);
    }

    #[test]
    fn rfc5382_req5_half_close_stays_established() {
        let mut s = run(SYN, &[(In, SYN_ACK), (Out, ACK), (Out, FIN_ACK)]);
        assert_eq!(s.phase(), TcpPhase::Established);
        assert_eq!(s.timeout(&timers()), 7440);
        // Data keeps flowing inbound on the half-closed connection.
        s.on_segment(In, ACK);
        assert_eq!(s.phase(), TcpPhase::Established);
        let s = run(SYN, &[(In, SYN_ACK), (In, FIN_ACK)]);
        assert_eq!(s.phase(), TcpPhase::Established);
    }

    #[test]
    fn rfc7857_fin_both_ways_gets_closing_timer() {
        let s = run(
            SYN,
            &[(In, SYN_ACK), (Out, ACK), (Out, FIN_ACK), (In, FIN_ACK)],
        );
        assert_eq!(s.phase(), TcpPhase::Closing);
        assert_eq!(s.timeout(&timers()), 242);
        // The last ACK and retransmitted FINs leave it closing.
        let s = run(
            SYN,
            &[
                (In, SYN_ACK),
                (In, FIN_ACK),
                (Out, FIN_ACK),
                (In, ACK),
                (Out, FIN_ACK),
            ],
        );
        assert_eq!(s.phase(), TcpPhase::Closing);
    }

    #[test]
    fn rfc7857_rst_gets_linger_timer() {
        for dir in [In, Out] {
            let s = run(SYN, &[(In, SYN_ACK), (Out, ACK), (dir, RST_ACK)]);
            assert_eq!(s.phase(), TcpPhase::Reset);
            assert_eq!(s.timeout(&timers()), 243);
        }
        // A RST answering the SYN (connection refused) lingers too.
        let s = run(SYN, &[(In, RST_ACK)]);
        assert_eq!(s.phase(), TcpPhase::Reset);
        // Segments after the RST do not bring it back; only a new SYN does.
        let s = run(
            SYN,
            &[(In, SYN_ACK), (In, FLAG_RST), (Out, ACK), (In, FIN_ACK)],
        );
        assert_eq!(s.phase(), TcpPhase::Reset);
    }

    #[test]
    fn syn_after_rst_reuses_the_session() {
        let mut s = run(SYN, &[(In, SYN_ACK), (Out, FLAG_RST)]);
        s.on_segment(Out, SYN);
        assert_eq!(s, run(SYN, &[]));
        assert_eq!(s.phase(), TcpPhase::Opening);
        assert_eq!(s.timeout(&timers()), 241);
        s.on_segment(In, SYN_ACK);
        assert_eq!(s.phase(), TcpPhase::Established);
    }

    #[test]
    fn syn_after_close_reuses_the_session() {
        let mut s = run(SYN, &[(In, SYN_ACK), (Out, FIN_ACK), (In, FIN_ACK)]);
        s.on_segment(In, SYN);
        assert_eq!(s.phase(), TcpPhase::Opening);
        s.on_segment(Out, SYN_ACK);
        assert_eq!(s.phase(), TcpPhase::Established);
    }

    #[test]
    fn byte_round_trip_and_unknown_bits() {
        let s = run(SYN, &[(In, SYN_ACK), (Out, FIN_ACK)]);
        assert_eq!(TcpState::from_byte(s.to_byte()), s);
        assert_eq!(TcpState::from_byte(0xe0), TcpState::default());
        assert_eq!(TcpState::default().phase(), TcpPhase::Opening);
    }

    /// The documented model, written out separately: five booleans.
    #[derive(Default)]
    struct Model {
        syn: [bool; 2],
        fin: [bool; 2],
        rst: bool,
    }

    impl Model {
        fn step(&mut self, dir: Direction, flags: u8) {
            let i = usize::from(dir == In);
            if flags & FLAG_SYN != 0 {
                let closed = self.fin == [true, true];
                if self.rst || closed {
                    *self = Model::default();
                }
                self.syn[i] = true;
            }
            self.fin[i] |= flags & FLAG_FIN != 0;
            self.rst |= flags & FLAG_RST != 0;
        }

        fn phase(&self) -> TcpPhase {
            match (self.rst, self.fin, self.syn) {
                (true, _, _) => TcpPhase::Reset,
                (false, [true, true], _) => TcpPhase::Closing,
                (false, _, [true, true]) => TcpPhase::Established,
                _ => TcpPhase::Opening,
            }
        }
    }

    proptest! {
        #[test]
        fn any_flag_sequence_follows_the_documented_bits(
            start in any::<u8>(),
            segments in proptest::collection::vec((any::<bool>(), any::<u8>()), 0..40),
        ) {
            let mut s = TcpState::from_byte(start);
            let b = s.to_byte();
            let mut m = Model {
                syn: [b & SYN_OUT != 0, b & SYN_IN != 0],
                fin: [b & FIN_OUT != 0, b & FIN_IN != 0],
                rst: b & RST != 0,
            };
            prop_assert_eq!(s.phase(), m.phase());
            for (inbound, flags) in segments {
                let dir = if inbound { In } else { Out };
                s.on_segment(dir, flags);
                m.step(dir, flags);
                prop_assert_eq!(s.phase(), m.phase());
                prop_assert_eq!(TcpState::from_byte(s.to_byte()), s);
                prop_assert_eq!(s.to_byte() & !ALL_BITS, 0);
                let t = timers();
                let want = match m.phase() {
                    TcpPhase::Opening => t.tcp_transitory_open,
                    TcpPhase::Established => t.tcp_established,
                    TcpPhase::Closing => t.tcp_transitory_close,
                    TcpPhase::Reset => t.tcp_rst_linger,
                };
                prop_assert_eq!(s.timeout(&t), want);
            }
        }
    }
}
