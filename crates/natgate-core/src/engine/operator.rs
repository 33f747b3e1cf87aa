//! What an operator ends by hand: everything, one subscriber's state, or one session. Both end state the
//! way a timeout does (the mapping goes with its last session, its port enters hold-down, the
//! subscriber's quota is given back, the events are queued), so the logs and the allocator
//! cannot tell an operator's delete from an expiry except by its time.

use super::{Engine, Gone};
use crate::alloc::PortAllocator;
use crate::endpoint::{Endpoint, Protocol};
use crate::event::EndReason;
use crate::table::{FlowKey, SessionId, SoftwireTag};
use crate::time::Instant;
use std::net::Ipv4Addr;

/// What an operator's delete ended in one engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    /// Sessions ended (dynamic ones and those of static rules and virtual servers).
    pub sessions: usize,
    /// Mappings ended with their last session.
    pub mappings: usize,
}

impl core::ops::AddAssign for Ended {
    fn add_assign(&mut self, o: Ended) {
        self.sessions += o.sessions;
        self.mappings += o.mappings;
    }
}

/// A session named by [`Engine::delete_session`] that this engine does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no {proto} session {internal} -> {remote}")]
pub struct NoSuchSession {
    /// The protocol asked for.
    pub proto: Protocol,
    /// The internal endpoint asked for.
    pub internal: Endpoint,
    /// The remote endpoint asked for.
    pub remote: Endpoint,
}

impl<A: PortAllocator> Engine<A> {
    /// Deletes every session and mapping (ports enter hold-down as usual), emitting the events.
    pub fn flush(&mut self, now: Instant) -> Ended {
        let ids: Vec<SessionId> = self.sessions.iter().map(|(id, _)| id).collect();
        let mut ended = self.end_sessions(ids, now);
        ended.sessions += self.flush_statics(now);
        self.held_syns.clear();
        self.fragments.clear();
        ended
    }

    /// Ends every session of `subscriber` (the internal address, as `sessions()` shows it),
    /// dynamic and static, and the mappings that go with them. Other subscribers' state is
    /// not touched, nor that of homes behind softwires that use the same private address
    /// (see [`Self::flush_softwire`]).
    pub fn flush_subscriber(&mut self, subscriber: Ipv4Addr, now: Instant) -> Ended {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.internal.addr == subscriber && !s.softwire.is_some())
            .map(|(id, _)| id)
            .collect();
        let mut ended = self.end_sessions(ids, now);
        ended.sessions += self.flush_static_where(now, |s| s.inside_local.addr == subscriber);
        ended
    }

    /// Ends every session of the softwire of B4 `b4` and the mappings that go with them, with
    /// their log records; an automatic softwire goes with them, a configured one stays.
    pub fn flush_softwire(&mut self, b4: std::net::Ipv6Addr, now: Instant) -> Ended {
        let Some(tag) = self.softwire_tag(b4) else {
            return Ended::default();
        };
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.softwire == tag)
            .map(|(id, _)| id)
            .collect();
        self.end_sessions(ids, now)
    }

    /// [`Self::delete_session`] for a session behind the softwire of B4 `b4` (as `sessions()`
    /// shows it, with its `softwire`).
    pub fn delete_softwire_session(
        &mut self,
        b4: std::net::Ipv6Addr,
        proto: Protocol,
        internal: Endpoint,
        remote: Endpoint,
        now: Instant,
    ) -> Result<Ended, NoSuchSession> {
        let missing = NoSuchSession {
            proto,
            internal,
            remote,
        };
        let tag = self.softwire_tag(b4).ok_or(missing)?;
        let key = FlowKey {
            proto,
            softwire: tag,
            local: internal,
            remote,
        };
        let id = self.sessions.find_out(&key).ok_or(missing)?;
        Ok(self.end_sessions([id], now))
    }

    /// Ends the one session that `sessions()` shows as (`proto`, `internal`, `remote`) of a
    /// plain IPv4 subscriber, and its mapping if it was the mapping's last session. Nothing
    /// changes if there is none.
    pub fn delete_session(
        &mut self,
        proto: Protocol,
        internal: Endpoint,
        remote: Endpoint,
        now: Instant,
    ) -> Result<Ended, NoSuchSession> {
        let key = FlowKey {
            proto,
            softwire: SoftwireTag::NONE,
            local: internal,
            remote,
        };
        if let Some(id) = self.sessions.find_out(&key) {
            return Ok(self.end_sessions([id], now));
        }
        // A static session is shown with its outside remote, which under twice-NAT is not the
        // remote of its inside key, so it is found by what the operator saw.
        let n = self.flush_static_where(now, |s| {
            s.proto == proto && s.inside_local == internal && s.outside_remote == remote
        });
        if n == 0 {
            return Err(NoSuchSession {
                proto,
                internal,
                remote,
            });
        }
        Ok(Ended {
            sessions: n,
            mappings: 0,
        })
    }

    /// Ends the dynamic sessions `ids`, as their expiry would.
    fn end_sessions(&mut self, ids: impl IntoIterator<Item = SessionId>, now: Instant) -> Ended {
        let mut gone = gone!(self, now, EndReason::Operator);
        let mut ended = Ended::default();
        for id in ids {
            if let Some((s, m)) = self.sessions.remove(id) {
                ended.sessions += 1;
                ended.mappings += usize::from(m.is_some());
                gone.session(&s, m);
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Pkt, echo, endpoints, ep, tcp, udp};
    use super::*;
    use crate::config::{Config, SubscriberLimits};
    use crate::endpoint::Side;
    use crate::event::{Event, SessionOrigin};
    use crate::rules::RuleId;
    use crate::verdict::Verdict;

    const POOL: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const SUB1: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 10);
    const SUB2: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 11);
    const WAN1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const WAN2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

    fn t(secs: u64) -> Instant {
        Instant::from_secs(secs)
    }

    fn engine(f: impl FnOnce(&mut Config)) -> Engine {
        let mut c = Config::new(vec![POOL], INSIDE);
        c.limits.max_sessions = 64;
        c.limits.max_mappings = 64;
        c.limits.max_static_sessions = 16;
        f(&mut c);
        Engine::new(c.validate().expect("valid test config"), 3)
    }

    fn send(e: &mut Engine, now: Instant, side: Side, mut p: Pkt) -> (Verdict, Pkt) {
        let v = e.process(now, side, &mut p.buf, p.len);
        (v, p)
    }

    /// Sends `p` out and returns the external endpoint it left from.
    fn out(e: &mut Engine, now: Instant, p: Pkt) -> Endpoint {
        let (v, p) = send(e, now, Side::Inside, p);
        assert_eq!(v, Verdict::Forward(Side::Outside));
        endpoints(p.bytes()).0
    }

    /// Whether a reply from `remote` to `external` gets in.
    fn gets_in(e: &mut Engine, now: Instant, remote: Endpoint, external: Endpoint) -> bool {
        let (v, _) = send(e, now, Side::Outside, udp(remote, external, b"r"));
        v == Verdict::Forward(Side::Inside)
    }

    fn drain(e: &mut Engine) -> Vec<Event> {
        core::iter::from_fn(|| e.poll_event()).collect()
    }

    #[test]
    fn flush_subscriber_ends_exactly_that_subscriber() {
        let mut e = engine(|_| {});
        let a1 = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 53), b"x"));
        let a2 = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN2, 53), b"x"));
        let a3 = out(&mut e, t(0), tcp(ep(SUB1, 6000), ep(WAN1, 80), "S"));
        let b1 = out(&mut e, t(0), udp(ep(SUB2, 5000), ep(WAN1, 53), b"x"));
        assert_eq!(a1, a2, "one mapping, two sessions");
        drain(&mut e);

        let ended = e.flush_subscriber(SUB1, t(5));
        assert_eq!(
            ended,
            Ended {
                sessions: 3,
                mappings: 2
            }
        );
        assert_eq!(e.session_count(), 1);
        assert_eq!(e.mapping_count(), 1);
        assert_eq!(e.counters().sessions_deleted, 3);
        assert_eq!(e.counters().mappings_deleted, 2);

        // Every record is SUB1's and says when and why it ended; one per session and mapping.
        let events = drain(&mut e);
        let mut sessions = 0;
        let mut mappings = 0;
        for ev in &events {
            match *ev {
                Event::SessionDeleted {
                    at,
                    internal,
                    reason,
                    ..
                } => {
                    assert_eq!(
                        (at, internal.addr, reason),
                        (t(5), SUB1, EndReason::Operator)
                    );
                    sessions += 1;
                }
                Event::MappingDeleted {
                    at,
                    internal,
                    reason,
                    ..
                } => {
                    assert_eq!(
                        (at, internal.addr, reason),
                        (t(5), SUB1, EndReason::Operator)
                    );
                    mappings += 1;
                }
                _ => panic!("unexpected {ev:?}"),
            }
        }
        assert_eq!((sessions, mappings), (3, 2));

        // SUB1's external endpoints are gone; SUB2's flow still works both ways.
        assert!(!gets_in(&mut e, t(6), ep(WAN1, 53), a1));
        assert!(!gets_in(&mut e, t(6), ep(WAN1, 80), a3));
        assert!(gets_in(&mut e, t(6), ep(WAN1, 53), b1));
        assert_eq!(
            out(&mut e, t(6), udp(ep(SUB2, 5000), ep(WAN1, 53), b"x")),
            b1
        );

        // Its ports went into hold-down rather than straight back to the pool (RFC 6888 REQ-8).
        let usage = e.allocator().usage();
        let held: u32 = usage.iter().map(|u| u.held_down.iter().sum::<u32>()).sum();
        let in_use: u32 = usage.iter().map(|u| u.in_use.iter().sum::<u32>()).sum();
        assert_eq!((held, in_use), (2, 1));

        assert_eq!(
            e.flush_subscriber(Ipv4Addr::new(100, 64, 0, 99), t(8)),
            Ended::default(),
            "a subscriber with nothing ends nothing"
        );
        assert_eq!(e.session_count(), 1);
    }

    #[test]
    fn flush_subscriber_gives_the_quota_back() {
        let mut e = engine(|c| {
            c.limits.subscriber = SubscriberLimits {
                max_udp_sessions: 1,
                max_subscribers: 4,
                ..SubscriberLimits::default()
            };
        });
        out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 53), b"x"));
        let (v, _) = send(
            &mut e,
            t(0),
            Side::Inside,
            udp(ep(SUB1, 5001), ep(WAN1, 53), b"x"),
        );
        assert_eq!(
            v.drop_reason(),
            Some(crate::counters::DropReason::SubscriberSessionLimit)
        );
        e.flush_subscriber(SUB1, t(1));
        out(&mut e, t(2), udp(ep(SUB1, 5001), ep(WAN1, 53), b"x"));
    }

    #[test]
    fn delete_session_ends_one_session_and_its_mapping_with_the_last() {
        let mut e = engine(|_| {});
        let x = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 53), b"x"));
        out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN2, 53), b"x"));
        let other = out(&mut e, t(0), udp(ep(SUB2, 5000), ep(WAN1, 53), b"x"));
        drain(&mut e);

        let one = e.delete_session(Protocol::Udp, ep(SUB1, 5000), ep(WAN1, 53), t(3));
        assert_eq!(
            one,
            Ok(Ended {
                sessions: 1,
                mappings: 0
            }),
            "the mapping still has a session"
        );
        assert_eq!(
            drain(&mut e),
            [Event::SessionDeleted {
                at: t(3),
                proto: Protocol::Udp,
                internal: ep(SUB1, 5000),
                external: x,
                remote: ep(WAN1, 53),
                origin: SessionOrigin::Dynamic,
                reason: EndReason::Operator,
            }]
        );
        let remotes: Vec<Endpoint> = e
            .sessions()
            .filter(|s| s.internal == ep(SUB1, 5000))
            .map(|s| s.remote)
            .collect();
        assert_eq!(
            remotes,
            [ep(WAN2, 53)],
            "that session is gone, its sibling is not"
        );
        assert!(gets_in(&mut e, t(4), ep(WAN2, 53), x));
        assert!(gets_in(&mut e, t(4), ep(WAN1, 53), other));

        let last = e.delete_session(Protocol::Udp, ep(SUB1, 5000), ep(WAN2, 53), t(5));
        assert_eq!(
            last,
            Ok(Ended {
                sessions: 1,
                mappings: 1
            })
        );
        let events = drain(&mut e);
        assert!(
            events.contains(&Event::MappingDeleted {
                at: t(5),
                proto: Protocol::Udp,
                internal: ep(SUB1, 5000),
                external: x,
                reason: EndReason::Operator,
            }),
            "{events:?}"
        );
        assert_eq!(e.session_count(), 1);
    }

    #[test]
    fn an_icmp_session_is_deleted_by_what_sessions_shows() {
        let mut e = engine(|_| {});
        let (v, _) = send(&mut e, t(0), Side::Inside, echo(SUB1, WAN1, 77, true));
        assert_eq!(v, Verdict::Forward(Side::Outside));
        let shown = e.sessions().next().expect("one session");
        // The identifier is the internal port; the remote has none.
        assert_eq!((shown.internal, shown.remote), (ep(SUB1, 77), ep(WAN1, 0)));
        assert_eq!(
            e.delete_session(Protocol::Icmp, shown.internal, shown.remote, t(1)),
            Ok(Ended {
                sessions: 1,
                mappings: 1
            })
        );
        assert_eq!(e.session_count(), 0);
    }

    #[test]
    fn delete_of_an_unknown_session_changes_nothing() {
        let mut e = engine(|_| {});
        out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 53), b"x"));
        drain(&mut e);
        let before = e.counters().clone();
        for (proto, internal, remote) in [
            (Protocol::Tcp, ep(SUB1, 5000), ep(WAN1, 53)),
            (Protocol::Udp, ep(SUB1, 5001), ep(WAN1, 53)),
            (Protocol::Udp, ep(SUB1, 5000), ep(WAN1, 54)),
            (Protocol::Udp, ep(SUB2, 5000), ep(WAN1, 53)),
        ] {
            assert_eq!(
                e.delete_session(proto, internal, remote, t(1)),
                Err(NoSuchSession {
                    proto,
                    internal,
                    remote
                })
            );
        }
        assert_eq!(e.session_count(), 1);
        assert_eq!(e.counters(), &before);
        assert!(drain(&mut e).is_empty());
    }

    #[test]
    fn static_sessions_are_a_subscriber_s_too() {
        let rules = r#"
[[rule]]
id = 1
direction = "outbound"
src = "100.64.0.10/32"
action.translate.src = { addr = "192.0.2.7/32" }
"#;
        #[derive(serde::Deserialize)]
        struct File {
            rule: crate::rules::RuleChain,
        }
        let chain = toml::from_str::<File>(rules).expect("rules parse").rule;
        let mut e = engine(|c| c.rules = chain);
        let s1 = out(&mut e, t(0), udp(ep(SUB1, 5000), ep(WAN1, 53), b"x"));
        out(&mut e, t(0), udp(ep(SUB1, 5001), ep(WAN1, 53), b"x"));
        out(&mut e, t(0), udp(ep(SUB2, 5000), ep(WAN1, 53), b"x"));
        assert_eq!(e.static_session_count(), 2);
        drain(&mut e);

        // One by what `sessions()` shows of it.
        let shown = e.sessions().find(|s| s.external == s1).expect("listed");
        assert_eq!(shown.origin, SessionOrigin::Rule(RuleId(1)));
        assert_eq!(
            e.delete_session(shown.proto, shown.internal, shown.remote, t(1)),
            Ok(Ended {
                sessions: 1,
                mappings: 0
            })
        );
        assert!(!gets_in(&mut e, t(2), ep(WAN1, 53), s1));
        // The rest of the subscriber's.
        assert_eq!(
            e.flush_subscriber(SUB1, t(3)),
            Ended {
                sessions: 1,
                mappings: 0
            }
        );
        assert_eq!(e.static_session_count(), 0);
        assert_eq!(e.counters().static_sessions_deleted, 2);
        let reasons: Vec<EndReason> = drain(&mut e)
            .into_iter()
            .filter_map(|ev| match ev {
                Event::SessionDeleted { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, [EndReason::Operator; 2]);
        assert_eq!(e.session_count(), 1, "SUB2's dynamic session stays");
    }
}
