//! Human output of `natgate ctl`: aligned tables and short summaries.

use std::fmt::Write as _;

use natgate_core::rules::{Action, Ipv4Prefix, PortRange, Target};
use natgate_core::{Direction, Protocol};

use super::protocol::{
    FlushQuery, PortSetRowKind, Request, Response, RuleList, ServerStateName, SessionChange,
    StatusInfo, VirtualServerList, WhoisList,
};
use crate::observability::logsink::whois::WhoisSource;

/// A table with a header row; columns are as wide as their widest cell.
struct Table {
    headers: Vec<&'static str>,
    /// Numbers align right, everything else left.
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `cols`: header and whether the column is right-aligned.
    fn new(cols: &[(&'static str, bool)]) -> Self {
        Table {
            headers: cols.iter().map(|c| c.0).collect(),
            right: cols.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = w - cell.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// A two-column table of names and values.
fn key_values(pairs: &[(&'static str, String)], out: &mut String) {
    let w = pairs.iter().map(|p| p.0.len()).max().unwrap_or(0);
    for (k, v) in pairs {
        let _ = writeln!(out, "{k:<w$}  {v}");
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "N things" under a table, and how many were left out by the limit.
fn footer(out: &mut String, shown: usize, count: u64, one: &str, many: &str) {
    let _ = write!(out, "{}", plural(count, one, many));
    if (shown as u64) < count {
        let _ = write!(out, " ({shown} shown)");
    }
    out.push('\n');
}

fn status(s: &StatusInfo, out: &mut String) {
    let pool: Vec<String> = s.pool.iter().map(ToString::to_string).collect();
    key_values(
        &[
            ("version", s.version.clone()),
            ("uptime", duration(s.uptime_secs)),
            (
                "config",
                s.config_path
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |p| p.display().to_string()),
            ),
            ("preset", s.preset.clone().unwrap_or_else(|| "-".to_owned())),
            ("workers", s.workers.to_string()),
            ("pool", pool.join(", ")),
            ("sessions", s.sessions.to_string()),
            ("mappings", s.mappings.to_string()),
        ],
        out,
    );
}

/// `3d 4h 5m 6s`, leaving out leading zero units.
fn duration(secs: u64) -> String {
    let parts = [
        (secs / 86400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts
        .iter()
        .position(|p| p.0 > 0)
        .unwrap_or(parts.len() - 1);
    parts[first..]
        .iter()
        .map(|(n, u)| format!("{n}{u}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a person wants to see for `resp`, the answer to `req`.
pub(crate) fn human(req: &Request, resp: &Response) -> String {
    let mut out = String::new();
    let count_only = matches!(req, Request::Sessions(q) | Request::Mappings(q) if q.count_only);
    match resp {
        Response::Status(s) => status(s, &mut out),
        Response::Sessions(l) if count_only => {
            let _ = writeln!(out, "{}", l.count);
        }
        Response::Mappings(l) if count_only => {
            let _ = writeln!(out, "{}", l.count);
        }
        Response::Sessions(l) => {
            let mut t = Table::new(&[
                ("PROTO", false),
                ("INTERNAL", false),
                ("EXTERNAL", false),
                ("REMOTE", false),
                ("STATE", false),
                ("IDLE", true),
                ("EXPIRES", true),
                ("ORIGIN", false),
            ]);
            for s in &l.sessions {
                t.row(vec![
                    s.proto.to_string(),
                    s.internal.to_string(),
                    s.external.to_string(),
                    s.remote.to_string(),
                    s.tcp_state.map_or("-", |t| t.name()).to_owned(),
                    format!("{}s", s.idle_secs),
                    format!("{}s", s.expires_in_secs),
                    s.origin.clone(),
                ]);
            }
            t.render(&mut out);
            footer(&mut out, l.sessions.len(), l.count, "session", "sessions");
        }
        Response::Mappings(l) => {
            let mut t = Table::new(&[
                ("PROTO", false),
                ("INTERNAL", false),
                ("EXTERNAL", false),
                ("SESSIONS", true),
                ("EXPIRES", true),
                ("ORIGIN", false),
            ]);
            for m in &l.mappings {
                t.row(vec![
                    m.proto.to_string(),
                    m.internal.to_string(),
                    m.external.to_string(),
                    m.sessions.to_string(),
                    m.expires_in_secs
                        .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
                    m.origin.clone().unwrap_or_else(|| "dynamic".to_owned()),
                ]);
            }
            t.render(&mut out);
            footer(&mut out, l.mappings.len(), l.count, "mapping", "mappings");
        }
        Response::Pools(p) => {
            let mut cols = vec![
                ("ADDRESS", false),
                ("TCP", true),
                ("UDP", true),
                ("ICMP", true),
                ("HELD-DOWN", true),
                ("SUBSCRIBERS", true),
                ("UTIL", true),
            ];
            // With port blocks or deterministic NAT the sets, not the ports, are what runs out.
            let sets = p.addresses.iter().any(|r| r.port_sets.is_some());
            if sets {
                cols.extend([
                    ("SETS", false),
                    ("SIZE", true),
                    ("IN-USE", true),
                    ("HELD", true),
                    ("FREE", true),
                ]);
            }
            let mut t = Table::new(&cols);
            for r in &p.addresses {
                let mut row = vec![
                    r.address.to_string(),
                    r.in_use.tcp.to_string(),
                    r.in_use.udp.to_string(),
                    r.in_use.icmp.to_string(),
                    r.held_down.total().to_string(),
                    r.subscribers.to_string(),
                    format!("{:.1}%", r.utilisation_percent),
                ];
                match &r.port_sets {
                    Some(s) => row.extend([
                        match s.kind {
                            PortSetRowKind::Block => "blocks",
                            PortSetRowKind::Deterministic => "ranges",
                        }
                        .to_owned(),
                        s.size.to_string(),
                        s.in_use.to_string(),
                        s.held_down.to_string(),
                        s.free.to_string(),
                    ]),
                    None if sets => row.extend(["-", "-", "-", "-", "-"].map(String::from)),
                    None => {}
                }
                t.row(row);
            }
            t.render(&mut out);
        }
        Response::Stats(s) => {
            let mut t = Table::new(&[("COUNTER", false), ("VALUE", true)]);
            for (k, v) in [
                ("outbound packets", s.outbound.packets),
                ("outbound bytes", s.outbound.bytes),
                ("inbound packets", s.inbound.packets),
                ("inbound bytes", s.inbound.bytes),
                ("hairpinned packets", s.hairpinned_packets),
                ("icmp errors generated", s.icmp_generated),
                ("tcp resets generated", s.tcp_resets_generated),
                ("refusal reports suppressed", s.refusal_reports_suppressed),
                ("answers suppressed", s.answers_suppressed),
                ("held packets", s.held_packets),
                ("dropped packets", s.dropped_packets),
                ("sessions created", s.sessions_created),
                ("sessions deleted", s.sessions_deleted),
                ("mappings created", s.mappings_created),
                ("mappings deleted", s.mappings_deleted),
                ("events lost", s.events_lost),
                ("log events lost", s.log_events_lost),
                ("static sessions created", s.static_sessions_created),
                ("vserver sessions created", s.vserver_sessions_created),
                ("static sessions deleted", s.static_sessions_deleted),
                ("exempted packets", s.exempted_packets),
                ("packets to the host", s.to_host_packets),
            ] {
                t.row(vec![k.to_owned(), v.to_string()]);
            }
            for l in &s.log_sink_losses {
                t.row(vec![
                    format!("log events lost by {} ({})", l.sink, l.reason),
                    l.events.to_string(),
                ]);
            }
            for d in &s.dataplane_drops {
                t.row(vec![
                    format!("data plane drops {}", d.reason),
                    d.packets.to_string(),
                ]);
            }
            if let Some(f) = &s.fast_path {
                for (k, v) in f.program.named() {
                    t.row(vec![
                        format!("fast path {}", k.replace('_', " ")),
                        v.to_string(),
                    ]);
                }
                for (k, v) in [
                    ("fast path table capacity", f.program.capacity),
                    ("fast path flows", f.flows),
                    ("fast path offers skipped", f.offers_skipped),
                    ("fast path changes failed", f.changes_failed),
                ] {
                    t.row(vec![k.to_owned(), v.to_string()]);
                }
            }
            t.render(&mut out);
        }
        Response::Drops(d) => {
            let mut t = Table::new(&[("REASON", false), ("PACKETS", true)]);
            for r in &d.drops {
                t.row(vec![r.reason.clone(), r.packets.to_string()]);
            }
            t.row(vec!["total".to_owned(), d.total.to_string()]);
            t.render(&mut out);
        }
        Response::Flushed(f) => {
            let whose = match req {
                Request::Flush(FlushQuery {
                    subscriber: Some(a),
                }) => format!(" of {a}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "flushed {} and {}{whose}",
                plural(f.sessions, "session", "sessions"),
                plural(f.mappings, "mapping", "mappings")
            );
        }
        Response::SessionChanged(f) => {
            let what = match req {
                Request::Session(SessionChange::Delete {
                    proto,
                    internal,
                    remote,
                }) => format!("{proto} session {internal} -> {remote}"),
                _ => plural(f.sessions, "session", "sessions"),
            };
            let mapping = if f.mappings > 0 {
                " and its mapping"
            } else {
                ""
            };
            let _ = writeln!(out, "deleted {what}{mapping}");
        }
        Response::Unmapped(m) => {
            let _ = writeln!(
                out,
                "deleted {} {} -> {} ({})",
                m.proto,
                m.internal,
                m.external,
                m.origin.as_deref().unwrap_or("explicit")
            );
        }
        Response::Reloaded(r) => {
            let _ = writeln!(out, "reloaded {}", r.config_path.display());
        }
        Response::Saved(s) => {
            let _ = writeln!(
                out,
                "saved {} sessions, {} explicit mappings and {} held ports to {} ({} bytes)",
                s.sessions,
                s.explicit_mappings,
                s.held_ports,
                s.path.display(),
                s.bytes
            );
        }
        Response::LogLevel(l) => {
            let _ = writeln!(out, "log level is now {}", l.level);
        }
        Response::Whois(w) => whois(req, w, &mut out),
        Response::Rules(l) | Response::RuleChanged(l) => rules(l, &mut out),
        Response::VirtualServers(l)
        | Response::VirtualServerChanged(l)
        | Response::VirtualServerCreated(l) => {
            virtual_servers(l, &mut out);
        }
        Response::VirtualServerDeleted(l) => {
            for v in &l.virtual_servers {
                let _ = writeln!(out, "deleted {}/{}", v.address, v.protocol);
            }
        }
    }
    out
}

/// A match field: the prefix, and `:PORTS` when the rule matches ports.
fn matched(prefix: Ipv4Prefix, ports: Option<PortRange>) -> String {
    match ports {
        Some(r) if r.first == r.last => format!("{prefix}:{}", r.first),
        Some(r) => format!("{prefix}:{}-{}", r.first, r.last),
        None => prefix.to_string(),
    }
}

fn target(t: &Target) -> String {
    match (t.addr, t.port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!(":{p}"),
        (None, None) => "-".to_owned(),
    }
}

fn rules(l: &RuleList, out: &mut String) {
    let mut t = Table::new(&[
        ("ID", true),
        ("DIRECTION", false),
        ("BIDIR", false),
        ("PROTO", false),
        ("SRC", false),
        ("DST", false),
        ("ACTION", false),
    ]);
    for r in &l.rules {
        let action = match r.action {
            Action::Exempt => "exempt".to_owned(),
            Action::Translate(tr) => [("src", tr.src), ("dst", tr.dst)]
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} -> {}", target(v))))
                .collect::<Vec<_>>()
                .join(", "),
        };
        t.row(vec![
            r.id.to_string(),
            match r.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            }
            .to_owned(),
            if r.bidirectional { "yes" } else { "no" }.to_owned(),
            r.proto.map_or("any", Protocol::name).to_owned(),
            matched(r.src, r.src_ports),
            matched(r.dst, r.dst_ports),
            action,
        ]);
    }
    t.render(out);
    if let Some(id) = l.changed {
        let _ = writeln!(out, "changed rule {id}");
    }
    if let Some(n) = l.flushed {
        let _ = writeln!(out, "ended {}", plural(n, "session", "sessions"));
    }
    footer(out, l.rules.len(), l.rules.len() as u64, "rule", "rules");
}

fn virtual_servers(l: &VirtualServerList, out: &mut String) {
    for (i, v) in l.virtual_servers.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{}/{}  {}{}",
            v.address,
            v.protocol,
            v.scheduler,
            if v.affinity_entries > 0 {
                format!(
                    "  ({} with affinity)",
                    plural(v.affinity_entries, "client", "clients")
                )
            } else {
                String::new()
            }
        );
        let mut t = Table::new(&[
            ("ID", true),
            ("REAL SERVER", false),
            ("WEIGHT", true),
            ("STATE", false),
            ("HEALTH", false),
            ("CONNECTIONS", true),
            ("BYTES", true),
        ]);
        for r in &v.real_servers {
            let state = if r.draining && r.state != ServerStateName::Draining {
                format!("{} (draining)", r.state.name())
            } else {
                r.state.name().to_owned()
            };
            t.row(vec![
                r.id.to_string(),
                r.target.to_string(),
                r.weight.to_string(),
                state,
                r.health.name().to_owned(),
                r.connections.to_string(),
                r.bytes.to_string(),
            ]);
        }
        t.render(out);
    }
    if l.virtual_servers.is_empty() {
        out.push_str("no virtual servers\n");
    }
}

fn time_ms(ms: u64) -> String {
    crate::observability::eventlog::rfc3339(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
}

fn whois(req: &Request, w: &WhoisList, out: &mut String) {
    if w.answers.is_empty() {
        if let Request::Whois(q) = req {
            let at = q
                .at_ms
                .map_or_else(|| "now".to_owned(), |ms| format!("at {}", time_ms(ms)));
            let _ = writeln!(out, "no subscriber held {} port {} {at}", q.address, q.port);
        }
        return;
    }
    let mut t = Table::new(&[
        ("SUBSCRIBER", false),
        ("EXTERNAL", false),
        ("PORTS", false),
        ("PROTO", false),
        ("SINCE", false),
        ("UNTIL", false),
        ("SOURCE", false),
    ]);
    for a in &w.answers {
        let ports = if a.port_start == a.port_end {
            a.port_start.to_string()
        } else {
            format!("{}-{}", a.port_start, a.port_end)
        };
        let source = match a.source {
            WhoisSource::Live => "live",
            WhoisSource::Deterministic => "deterministic",
            WhoisSource::Log => "log",
        };
        t.row(vec![
            a.subscriber.to_string(),
            a.external.to_string(),
            ports,
            a.proto.map_or_else(|| "any".to_owned(), |p| p.to_string()),
            a.since_ms.map_or_else(|| "-".to_owned(), time_ms),
            a.until_ms.map_or_else(|| "held".to_owned(), time_ms),
            source.to_owned(),
        ]);
    }
    t.render(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{SessionList, SessionRow, TableQuery, TcpStateName};
    use natgate_core::Protocol;

    #[test]
    fn whois_shows_each_holder_or_says_none() {
        use crate::control::protocol::{WhoisQuery, WhoisRow};
        use std::net::Ipv4Addr;
        let q = Request::Whois(WhoisQuery {
            address: Ipv4Addr::new(198, 51, 100, 7),
            port: 40123,
            proto: None,
            at_ms: Some(1_795_364_070_123),
        });
        let none = human(&q, &Response::Whois(WhoisList::default()));
        assert_eq!(
            none,
            "no subscriber held 198.51.100.7 port 40123 at 2026-11-22T16:14:30.123Z\n"
        );
        let row = WhoisRow {
            subscriber: Ipv4Addr::new(100, 64, 0, 10),
            external: Ipv4Addr::new(198, 51, 100, 7),
            port_start: 40000,
            port_end: 40511,
            proto: None,
            since_ms: Some(1_795_364_000_000),
            until_ms: Some(1_795_364_070_123),
            source: WhoisSource::Log,
        };
        let text = human(&q, &Response::Whois(WhoisList { answers: vec![row] }));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("SUBSCRIBER"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "100.64.0.10",
                "198.51.100.7",
                "40000-40511",
                "any",
                "2026-11-22T16:13:20.000Z",
                "2026-11-22T16:14:30.123Z",
                "log"
            ]
        );
    }

    #[test]
    fn pools_table_shows_port_sets_when_an_address_has_them() {
        use crate::control::protocol::{PerProtocol, PoolList, PoolRow};
        use natgate_core::alloc::{AddressUsage, PortSetKind, PortSetUsage};
        use std::net::Ipv4Addr;
        let usage = AddressUsage {
            addr: Ipv4Addr::new(198, 51, 100, 1),
            in_use: [0, 3, 700],
            held_down: [0, 1, 0],
            subscribers: 2,
        };
        let blocks = PoolRow::with_port_sets(
            &usage,
            &PortSetUsage {
                addr: usage.addr,
                kind: PortSetKind::Block,
                size: 512,
                in_use: 3,
                held_down: 1,
                free: 122,
            },
        );
        let text = human(
            &Request::Pools,
            &Response::Pools(PoolList {
                addresses: vec![blocks],
            }),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>()[7..],
            ["SETS", "SIZE", "IN-USE", "HELD", "FREE"],
            "{text}"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>()[6..],
            ["3.2%", "blocks", "512", "3", "1", "122"]
        );
        let plain = PoolRow::new(&usage, PerProtocol::port_capacity(false));
        let text = human(
            &Request::Pools,
            &Response::Pools(PoolList {
                addresses: vec![plain],
            }),
        );
        assert!(!text.contains("SETS"), "dynamic allocation: {text}");
    }

    #[test]
    fn table_columns_align_and_numbers_go_right() {
        let mut t = Table::new(&[("NAME", false), ("N", true)]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "12345".into()]);
        let mut s = String::new();
        t.render(&mut s);
        assert_eq!(s, "NAME        N\na           1\nlonger  12345\n");
    }

    #[test]
    fn sessions_table_says_how_many_were_left_out() {
        let row = SessionRow {
            proto: Protocol::Tcp,
            internal: "100.64.0.10:5000".parse().expect("addr"),
            external: "198.51.100.1:40000".parse().expect("addr"),
            remote: "203.0.113.10:443".parse().expect("addr"),
            tcp_state: Some(TcpStateName::Established),
            idle_secs: 3,
            expires_in_secs: 7437,
            origin: "dynamic".into(),
        };
        let resp = Response::Sessions(SessionList {
            count: 5,
            sessions: vec![row],
        });
        let text = human(&Request::Sessions(TableQuery::default()), &resp);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("PROTO  INTERNAL"));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells[4..], ["established", "3s", "7437s", "dynamic"]);
        // Right-aligned under their headers.
        assert_eq!(
            lines[0].find("IDLE").map(|i| i + 4),
            lines[1].find("3s ").map(|i| i + 2)
        );
        assert_eq!(lines[2], "5 sessions (1 shown)");

        let count = Request::Sessions(TableQuery {
            count_only: true,
            ..TableQuery::default()
        });
        assert_eq!(human(&count, &resp), "5\n");
    }

    #[test]
    fn durations_drop_leading_zero_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(61), "1m 1s");
        assert_eq!(duration(90061), "1d 1h 1m 1s");
    }
}
