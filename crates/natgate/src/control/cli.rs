//! `natgate ctl`: ask the running daemon, print tables (or JSON with `--json`).
//!
//! Exit status: [`EXIT_OK`] on success, [`EXIT_ERROR`] when the daemon answers with an error or
//! the exchange fails after connecting, 2 for usage errors (clap's), [`EXIT_NO_DAEMON`] when the
//! socket cannot be reached.

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use natgate_core::Protocol;

use natgate_core::rules::{Rule, RuleId};

use super::protocol::{
    DropsQuery, FlushQuery, LogLevel, LogLevelArgs, RealServerOp, RealServerRef, RuleChange,
    SessionChange, TableQuery, UnmapArgs, VirtualServerChange, VirtualServerRef, WhoisQuery,
};
use super::static_nat::{parse_rule_toml, parse_virtual_server_toml};
use super::{Client, DEFAULT_SOCKET, Request, Response, render};

/// Exit status: the request succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: the daemon answered with an error, or the exchange broke after connecting.
pub const EXIT_ERROR: u8 = 1;
/// Exit status: the command line is wrong (clap's own usage errors exit with 2 too).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the control socket could not be reached.
pub const EXIT_NO_DAEMON: u8 = 3;

/// Arguments of `natgate ctl`.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Print the daemon's raw JSON result instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The `natgate ctl` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, config, pool, table sizes.
    Status,
    /// List sessions (one per internal endpoint and remote endpoint).
    Sessions(TableArgs),
    /// List mappings (one per internal endpoint).
    Mappings(TableArgs),
    /// Use of each external address.
    Pools,
    /// Packet, byte and state counters.
    Stats,
    /// Dropped packets by reason.
    Drops {
        /// Show every reason, also those with no drops.
        #[arg(long)]
        all: bool,
    },
    /// Delete every session and mapping (ports go into hold-down), or one subscriber's.
    Flush {
        /// Only this subscriber's sessions and mappings (internal address).
        #[arg(long, value_name = "ADDR")]
        subscriber: Option<Ipv4Addr>,
    },
    /// Change one session.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Re-read the config file; a bad one is refused and nothing changes.
    Reload,
    /// Write the warm-restart snapshot now (`[state] snapshot`); natgate writes it on stop too.
    Save,
    /// Set the diagnostics level.
    LogLevel {
        /// The new level.
        #[arg(value_enum)]
        level: LogLevel,
    },
    /// Which subscriber held an external address and port (now, or at a time).
    Whois {
        /// The external address.
        address: Ipv4Addr,
        /// The external port (ICMP: query identifier).
        port: u16,
        /// The moment: RFC 3339 in UTC (`2026-11-22T14:02:00Z`, fraction allowed) or seconds
        /// since the Unix epoch; now if absent.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        at: Option<u64>,
        /// Only this protocol: udp, tcp or icmp.
        #[arg(long, value_name = "PROTO", value_parser = parse_protocol)]
        proto: Option<Protocol>,
    },
    /// List the static NAT rules in match order, with their ids.
    Rules {
        /// Print the running chain as `[[rule]]` tables for the config file.
        #[arg(long)]
        toml: bool,
    },
    /// Change the static NAT rules (applied like `reload`: all workers or none).
    #[command(subcommand)]
    Rule(RuleCommand),
    /// List the virtual servers with their real servers' state, health, connections and bytes.
    Vservers,
    /// Change a virtual server's real servers (all workers or none).
    #[command(subcommand)]
    Vserver(VserverCommand),
    /// Delete an explicit mapping (PCP, NAT-PMP) and the flows it let in; its port is held
    /// down like any other.
    Unmap {
        /// Its protocol: udp or tcp.
        #[arg(value_parser = parse_protocol)]
        proto: Protocol,
        /// The subscriber's endpoint it maps, ADDRESS:PORT.
        internal: SocketAddrV4,
    },
}

/// `natgate ctl session ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SessionCommand {
    /// End one session, named as `ctl sessions` shows it, and its mapping if it was the
    /// mapping's last session.
    Delete {
        /// udp, tcp or icmp.
        #[arg(value_parser = parse_protocol)]
        proto: Protocol,
        /// The internal endpoint, ADDR:PORT (ICMP: the query identifier as the port).
        internal: SocketAddrV4,
        /// The remote endpoint, ADDR:PORT (ICMP: port 0).
        remote: SocketAddrV4,
    },
}

/// `natgate ctl rule ...`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RuleCommand {
    /// Insert a rule at ID; the rule there and the ones after it move up by one.
    Insert {
        /// Where the rule goes.
        id: u32,
        /// The rule.
        #[command(flatten)]
        rule: Box<RuleSpec>,
    },
    /// Append a rule after the last one.
    Append {
        /// The rule.
        #[command(flatten)]
        rule: Box<RuleSpec>,
    },
    /// Delete the rule ID (the other ids do not change). New flows stop; the rule's open
    /// sessions run on until their timers end, unless --flush.
    Delete {
        /// The rule to delete.
        id: u32,
        /// Also end every session the rule made, at once.
        #[arg(long)]
        flush: bool,
    },
}

/// A rule: as TOML (`'direction = "inbound", dst = "198.51.100.10/32", ...'`, the keys of a
/// `[[rule]]` table) or as flags, not both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RuleSpec {
    /// The rule as TOML: the keys of a `[[rule]]` table, inline (comma-separated) or one per
    /// line; `id` may be left out.
    #[arg(value_name = "TOML")]
    pub toml: Option<String>,
    /// outbound (inside to outside) or inbound.
    #[arg(long, value_name = "DIR")]
    pub direction: Option<String>,
    /// Also translate replies and flows started from the other side.
    #[arg(long)]
    pub bidirectional: bool,
    /// Only this protocol: udp, tcp or icmp.
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,
    /// Source prefix (default 0.0.0.0/0).
    #[arg(long, value_name = "PREFIX")]
    pub src: Option<String>,
    /// Source port or FIRST-LAST.
    #[arg(long, value_name = "PORTS")]
    pub src_ports: Option<String>,
    /// Destination prefix (default 0.0.0.0/0).
    #[arg(long, value_name = "PREFIX")]
    pub dst: Option<String>,
    /// Destination port or FIRST-LAST.
    #[arg(long, value_name = "PORTS")]
    pub dst_ports: Option<String>,
    /// Rewrite the source to PREFIX, PREFIX:PORT or :PORT.
    #[arg(long, value_name = "TARGET")]
    pub translate_src: Option<String>,
    /// Rewrite the destination to PREFIX, PREFIX:PORT or :PORT.
    #[arg(long, value_name = "TARGET")]
    pub translate_dst: Option<String>,
    /// Translate nothing (by rules or dynamic NAPT).
    #[arg(long)]
    pub exempt: bool,
}

impl RuleSpec {
    /// The rule these arguments describe.
    pub fn rule(&self) -> Result<Rule, String> {
        let flags = self.direction.is_some()
            || self.bidirectional
            || self.proto.is_some()
            || self.src.is_some()
            || self.src_ports.is_some()
            || self.dst.is_some()
            || self.dst_ports.is_some()
            || self.translate_src.is_some()
            || self.translate_dst.is_some()
            || self.exempt;
        match (&self.toml, flags) {
            (Some(_), true) => Err("give the rule as TOML or as flags, not both".into()),
            (Some(t), false) => parse_rule_toml(t),
            (None, false) => Err("no rule: give it as TOML or with --direction ...".into()),
            (None, true) => {
                // The flags become the same table a config file holds, so the core checks
                // them in one place.
                let mut t = toml::Table::new();
                let mut put = |k: &str, v: &Option<String>| {
                    if let Some(v) = v {
                        let value = v
                            .parse::<i64>()
                            .map_or_else(|_| toml::Value::String(v.clone()), toml::Value::Integer);
                        t.insert(k.to_owned(), value);
                    }
                };
                put("direction", &self.direction);
                put("proto", &self.proto);
                put("src", &self.src);
                put("src-ports", &self.src_ports);
                put("dst", &self.dst);
                put("dst-ports", &self.dst_ports);
                if self.bidirectional {
                    t.insert("bidirectional".into(), toml::Value::Boolean(true));
                }
                let action = if self.exempt {
                    if self.translate_src.is_some() || self.translate_dst.is_some() {
                        return Err("--exempt translates nothing: drop --translate-*".into());
                    }
                    toml::Value::String("exempt".into())
                } else {
                    let mut tr = toml::Table::new();
                    for (k, v) in [("src", &self.translate_src), ("dst", &self.translate_dst)] {
                        if let Some(v) = v {
                            tr.insert(k.into(), toml::Value::Table(target_table(v)?));
                        }
                    }
                    let mut a = toml::Table::new();
                    a.insert("translate".into(), toml::Value::Table(tr));
                    toml::Value::Table(a)
                };
                t.insert("action".into(), action);
                parse_rule_toml(&toml::to_string(&t).map_err(|e| e.to_string())?)
            }
        }
    }
}

/// `PREFIX`, `PREFIX:PORT` or `:PORT` as a rule target table.
fn target_table(s: &str) -> Result<toml::Table, String> {
    let mut t = toml::Table::new();
    let (addr, port) = match s.split_once(':') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: {p:?} is not a port"))?,
            ),
        ),
        None => (s, None),
    };
    if !addr.is_empty() {
        t.insert("addr".into(), toml::Value::String(addr.to_owned()));
    }
    if let Some(p) = port {
        t.insert("port".into(), toml::Value::Integer(i64::from(p)));
    }
    Ok(t)
}

/// `natgate ctl vserver ...`: VIRTUAL is `ADDR:PORT/PROTO`, REAL is `ADDR` or `ADDR:PORT`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum VserverCommand {
    /// Add a real server (it starts level with the others).
    Add {
        /// The virtual server, e.g. 203.0.113.80:80/tcp.
        #[arg(value_name = "VIRTUAL")]
        virtual_server: VirtualServerRef,
        /// The real server, e.g. 10.0.0.3 or 10.0.0.3:8888.
        #[arg(value_name = "REAL")]
        real_server: RealServerRef,
        /// Its weight, 1..=1000000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Stop new connections to a real server; existing ones finish.
    Drain {
        /// The virtual server.
        #[arg(value_name = "VIRTUAL")]
        virtual_server: VirtualServerRef,
        /// The real server.
        #[arg(value_name = "REAL")]
        real_server: RealServerRef,
    },
    /// Let a drained real server take new connections again.
    Undrain {
        /// The virtual server.
        #[arg(value_name = "VIRTUAL")]
        virtual_server: VirtualServerRef,
        /// The real server.
        #[arg(value_name = "REAL")]
        real_server: RealServerRef,
    },
    /// Remove a real server; refused while it has connections unless --force.
    Remove {
        /// The virtual server.
        #[arg(value_name = "VIRTUAL")]
        virtual_server: VirtualServerRef,
        /// The real server.
        #[arg(value_name = "REAL")]
        real_server: RealServerRef,
        /// Remove it even with open connections (they keep working until they end).
        #[arg(long)]
        force: bool,
    },
    /// Change a real server's weight.
    Weight {
        /// The virtual server.
        #[arg(value_name = "VIRTUAL")]
        virtual_server: VirtualServerRef,
        /// The real server.
        #[arg(value_name = "REAL")]
        real_server: RealServerRef,
        /// The new weight, 1..=1000000.
        weight: u32,
    },
    /// Create a virtual server (applied like `reload`: all workers or none).
    Create {
        /// One `[[virtual-server]]` table as in the config file, or its keys, e.g.
        /// 'address = "203.0.113.80" port = 80 protocol = "tcp" scheduler = "round-robin"
        /// real-servers = [{ address = "10.0.0.2" }]'.
        #[arg(value_name = "TOML")]
        spec: String,
    },
    /// Delete a virtual server (applied like `reload`).
    Delete {
        /// The virtual server.
        #[arg(value_name = "VIRTUAL")]
        virtual_server: VirtualServerRef,
    },
}

impl TryFrom<&VserverCommand> for Request {
    type Error = String;

    /// Fails only for a virtual server given as TOML that cannot be read.
    fn try_from(c: &VserverCommand) -> Result<Self, String> {
        let change = |virtual_server, real_server, op, weight, force| {
            Request::VirtualServer(VirtualServerChange {
                virtual_server,
                real_server,
                op,
                weight,
                force,
            })
        };
        Ok(match *c {
            VserverCommand::Create { ref spec } => {
                Request::VirtualServerCreate(parse_virtual_server_toml(spec)?)
            }
            VserverCommand::Delete { virtual_server } => {
                Request::VirtualServerDelete(virtual_server)
            }
            VserverCommand::Add {
                virtual_server,
                real_server,
                weight,
            } => change(
                virtual_server,
                real_server,
                RealServerOp::Add,
                Some(weight),
                false,
            ),
            VserverCommand::Drain {
                virtual_server,
                real_server,
            } => change(
                virtual_server,
                real_server,
                RealServerOp::Drain,
                None,
                false,
            ),
            VserverCommand::Undrain {
                virtual_server,
                real_server,
            } => change(
                virtual_server,
                real_server,
                RealServerOp::Undrain,
                None,
                false,
            ),
            VserverCommand::Remove {
                virtual_server,
                real_server,
                force,
            } => change(
                virtual_server,
                real_server,
                RealServerOp::Remove,
                None,
                force,
            ),
            VserverCommand::Weight {
                virtual_server,
                real_server,
                weight,
            } => change(
                virtual_server,
                real_server,
                RealServerOp::Weight,
                Some(weight),
                false,
            ),
        })
    }
}

/// Filters of `sessions` and `mappings`.
#[derive(Debug, Clone, clap::Args)]
pub struct TableArgs {
    /// Only this subscriber (internal address).
    #[arg(long, value_name = "ADDR")]
    pub subscriber: Option<Ipv4Addr>,
    /// Only this protocol: udp, tcp or icmp.
    #[arg(long, value_name = "PROTO", value_parser = parse_protocol)]
    pub proto: Option<Protocol>,
    /// Only this external port (ICMP: query identifier).
    #[arg(long, value_name = "PORT")]
    pub external_port: Option<u16>,
    /// Print only how many match.
    #[arg(long)]
    pub count: bool,
    /// List at most N.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// `--at`: seconds since the Unix epoch, or RFC 3339 UTC `YYYY-MM-DDTHH:MM:SS[.f]Z`; in ms.
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| format!("{s}: too far in the future"));
    }
    let bad = || format!("{s:?}: not Unix seconds nor RFC 3339 UTC (2026-11-22T14:02:00Z)");
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' || !matches!(b[b.len() - 1], b'Z' | b'z') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u64, String> {
        let t = s.get(r).ok_or_else(bad)?;
        if !t.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse().map_err(|_| bad())
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = &s[19..s.len() - 1];
    let ms = match frac.strip_prefix('.') {
        None if frac.is_empty() => 0,
        Some(f) if !f.is_empty() && f.bytes().all(|c| c.is_ascii_digit()) => {
            let padded = format!("{f:0<3}");
            padded[..3].parse::<u64>().map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    if y < 1970
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || sec > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(y, mo, d);
    Ok(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (`year` >= 1970), after Howard
/// Hinnant's `days_from_civil`.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::ALL
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("{s:?} is not one of udp, tcp, icmp"))
}

impl From<&TableArgs> for TableQuery {
    fn from(a: &TableArgs) -> Self {
        TableQuery {
            subscriber: a.subscriber,
            proto: a.proto,
            external_port: a.external_port,
            count_only: a.count,
            limit: a.limit,
        }
    }
}

impl TryFrom<&CtlCommand> for Request {
    type Error = String;

    /// The request for a command line; fails only for a rule that cannot be read.
    fn try_from(c: &CtlCommand) -> Result<Self, String> {
        Ok(match c {
            CtlCommand::Status => Request::Status,
            CtlCommand::Sessions(a) => Request::Sessions(a.into()),
            CtlCommand::Mappings(a) => Request::Mappings(a.into()),
            CtlCommand::Pools => Request::Pools,
            CtlCommand::Stats => Request::Stats,
            CtlCommand::Drops { all } => Request::Drops(DropsQuery { all: *all }),
            CtlCommand::Flush { subscriber } => Request::Flush(FlushQuery {
                subscriber: *subscriber,
            }),
            CtlCommand::Session(SessionCommand::Delete {
                proto,
                internal,
                remote,
            }) => Request::Session(SessionChange::Delete {
                proto: *proto,
                internal: *internal,
                remote: *remote,
            }),
            CtlCommand::Reload => Request::Reload,
            CtlCommand::Save => Request::Save,
            CtlCommand::LogLevel { level } => Request::LogLevel(LogLevelArgs { level: *level }),
            CtlCommand::Whois {
                address,
                port,
                at,
                proto,
            } => Request::Whois(WhoisQuery {
                address: *address,
                port: *port,
                proto: *proto,
                at_ms: *at,
            }),
            CtlCommand::Rules { .. } => Request::Rules,
            CtlCommand::Rule(RuleCommand::Insert { id, rule }) => {
                Request::Rule(RuleChange::Insert {
                    id: RuleId(*id),
                    rule: rule.rule()?,
                })
            }
            CtlCommand::Rule(RuleCommand::Append { rule }) => {
                Request::Rule(RuleChange::Append { rule: rule.rule()? })
            }
            CtlCommand::Rule(RuleCommand::Delete { id, flush }) => {
                Request::Rule(RuleChange::Delete {
                    id: RuleId(*id),
                    flush: *flush,
                })
            }
            CtlCommand::Vservers => Request::VirtualServers,
            CtlCommand::Unmap { proto, internal } => Request::Unmap(UnmapArgs {
                proto: *proto,
                internal: *internal,
            }),
            CtlCommand::Vserver(v) => Request::try_from(v)?,
        })
    }
}

/// Runs `natgate ctl` with the process's stdout and stderr.
pub fn run(args: &CtlArgs) -> anyhow::Result<ExitCode> {
    let code = run_with(args, &mut io::stdout().lock(), &mut io::stderr().lock())?;
    Ok(ExitCode::from(code))
}

/// Runs `natgate ctl`, writing the answer to `out` and messages to `err`; returns the exit
/// status. Fails only if writing to `out` or `err` fails.
pub fn run_with(args: &CtlArgs, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<u8> {
    let req = match Request::try_from(&args.command) {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "natgate ctl: {e}")?;
            return Ok(EXIT_USAGE);
        }
    };
    let answer = Client::connect(&args.socket).and_then(|mut c| c.request(&req));
    match answer {
        Ok(resp) => {
            if let (CtlCommand::Rules { toml: true }, Response::Rules(l)) = (&args.command, &resp) {
                out.write_all(l.to_toml().map_err(io::Error::other)?.as_bytes())?;
            } else if args.json {
                let v = resp.to_value().map_err(io::Error::other)?;
                let text = serde_json::to_string_pretty(&v).map_err(io::Error::other)?;
                writeln!(out, "{text}")?;
            } else {
                out.write_all(render::human(&req, &resp).as_bytes())?;
            }
            out.flush()?;
            Ok(EXIT_OK)
        }
        Err(e) if e.is_connect() => {
            writeln!(err, "natgate ctl: {e}")?;
            Ok(EXIT_NO_DAEMON)
        }
        Err(e) => {
            writeln!(err, "natgate ctl {}: {e}", req.command())?;
            Ok(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The program's shape: `natgate ctl ...` is a subcommand taking [`CtlArgs`].
    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        Ctl(CtlArgs),
    }

    fn req(a: &CtlArgs) -> Request {
        Request::try_from(&a.command).expect("request")
    }

    fn parse(args: &[&str]) -> Result<CtlArgs, clap::Error> {
        let argv = ["natgate", "ctl"].into_iter().chain(args.iter().copied());
        Top::try_parse_from(argv).map(|t| match t.cmd {
            Sub::Ctl(a) => a,
        })
    }

    #[test]
    fn flags_become_the_request() {
        let a = parse(&[
            "sessions",
            "--subscriber",
            "100.64.0.10",
            "--proto",
            "udp",
            "--external-port",
            "40000",
            "--count",
            "--socket",
            "/tmp/x.sock",
        ])
        .expect("parse");
        assert_eq!(a.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(
            req(&a),
            Request::Sessions(TableQuery {
                subscriber: Some(Ipv4Addr::new(100, 64, 0, 10)),
                proto: Some(Protocol::Udp),
                external_port: Some(40000),
                count_only: true,
                limit: None,
            })
        );
        let a = parse(&["--json", "log-level", "debug"]).expect("parse");
        assert!(a.json);
        assert_eq!(a.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            req(&a),
            Request::LogLevel(LogLevelArgs {
                level: LogLevel::Debug
            })
        );
        // --socket and --json go before or after the command.
        let a = parse(&["--socket", "/a", "drops", "--all", "--json"]).expect("parse");
        assert_eq!((a.socket.to_str(), a.json), (Some("/a"), true));
        assert_eq!(req(&a), Request::Drops(DropsQuery { all: true }));
    }

    #[test]
    fn whois_takes_an_address_a_port_and_a_time() {
        let a = parse(&[
            "whois",
            "198.51.100.7",
            "40123",
            "--at",
            "2026-11-22T16:14:30.123Z",
        ])
        .expect("parse");
        assert_eq!(
            req(&a),
            Request::Whois(WhoisQuery {
                address: std::net::Ipv4Addr::new(198, 51, 100, 7),
                port: 40123,
                proto: None,
                at_ms: Some(1_795_364_070_123),
            })
        );
        assert_eq!(parse_time("1795364070"), Ok(1_795_364_070_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2000-02-29T00:00:00.5Z"), Ok(951_782_400_500));
        assert_eq!(parse_time("2100-01-01T00:00:00Z"), Ok(4_102_444_800_000));
        for bad in [
            "2026-11-22 16:14:30Z",
            "2026-11-22T16:14:30+01:00",
            "2026-13-01T00:00:00Z",
            "x",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert!(parse(&["whois", "198.51.100.7"]).is_err());
        assert!(parse(&["whois", "198.51.100.7", "70000"]).is_err());
    }

    #[test]
    fn flush_and_session_delete_name_what_they_end() {
        assert_eq!(
            req(&parse(&["flush"]).expect("parse")),
            Request::Flush(FlushQuery { subscriber: None })
        );
        assert_eq!(
            req(&parse(&["flush", "--subscriber", "100.64.0.10"]).expect("parse")),
            Request::Flush(FlushQuery {
                subscriber: Some(Ipv4Addr::new(100, 64, 0, 10))
            })
        );
        assert_eq!(
            req(&parse(&[
                "session",
                "delete",
                "UDP",
                "100.64.0.10:5000",
                "203.0.113.10:3478"
            ])
            .expect("parse")),
            Request::Session(SessionChange::Delete {
                proto: Protocol::Udp,
                internal: SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 10), 5000),
                remote: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 3478),
            })
        );
        for bad in [
            &["flush", "--subscriber", "100.64.0"][..],
            &[
                "session",
                "delete",
                "sctp",
                "100.64.0.10:5000",
                "203.0.113.10:1",
            ],
            &["session", "delete", "udp", "100.64.0.10", "203.0.113.10:1"],
            &["session", "delete", "udp", "100.64.0.10:5000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_from_toml_or_flags_are_the_same_request() {
        let toml = parse(&[
            "rule",
            "insert",
            "5",
            "direction = \"inbound\", bidirectional = true, proto = \"tcp\", \
             dst = \"198.51.100.10/32\", dst-ports = 80, \
             action.translate.dst = { addr = \"100.64.0.11/32\", port = 8888 }",
        ])
        .expect("toml");
        let flags = parse(&[
            "rule",
            "insert",
            "5",
            "--direction",
            "inbound",
            "--bidirectional",
            "--proto",
            "tcp",
            "--dst",
            "198.51.100.10/32",
            "--dst-ports",
            "80",
            "--translate-dst",
            "100.64.0.11/32:8888",
        ])
        .expect("flags");
        assert_eq!(req(&toml), req(&flags));
        let Request::Rule(RuleChange::Insert { id, rule }) = req(&flags) else {
            panic!("insert")
        };
        assert_eq!(id, RuleId(5));
        assert!(rule.bidirectional);
        let exempt = parse(&[
            "rule",
            "append",
            "--direction",
            "outbound",
            "--dst",
            "192.0.2.0/24",
            "--exempt",
        ])
        .expect("exempt");
        assert!(matches!(
            req(&exempt),
            Request::Rule(RuleChange::Append { .. })
        ));
        // Both forms at once, neither, or a bad value: refused before anything is sent.
        let both = parse(&["rule", "append", "direction = \"inbound\"", "--exempt"]).expect("p");
        assert!(Request::try_from(&both.command).is_err());
        let none = parse(&["rule", "append"]).expect("parse");
        assert!(Request::try_from(&none.command).is_err());
        let bad = parse(&["rule", "append", "--direction", "up", "--exempt"]).expect("parse");
        assert!(Request::try_from(&bad.command).is_err());
        assert_eq!(
            req(&parse(&["rule", "delete", "3"]).expect("parse")),
            Request::Rule(RuleChange::Delete {
                id: RuleId(3),
                flush: false
            })
        );
        assert_eq!(
            req(&parse(&["rule", "delete", "3", "--flush"]).expect("parse")),
            Request::Rule(RuleChange::Delete {
                id: RuleId(3),
                flush: true
            })
        );
        assert!(matches!(
            parse(&["rules", "--toml"]).expect("parse").command,
            CtlCommand::Rules { toml: true }
        ));
    }

    #[test]
    fn vserver_commands_name_the_virtual_and_the_real_server() {
        let a = parse(&[
            "vserver",
            "add",
            "203.0.113.80:80/tcp",
            "10.0.0.3:8888",
            "--weight",
            "3",
        ])
        .expect("add");
        let Request::VirtualServer(c) = req(&a) else {
            panic!("vserver")
        };
        assert_eq!(c.virtual_server.to_string(), "203.0.113.80:80/tcp");
        assert_eq!(c.real_server.port, Some(8888));
        assert_eq!((c.op, c.weight), (RealServerOp::Add, Some(3)));
        let a = parse(&[
            "vserver",
            "remove",
            "203.0.113.80:80/tcp",
            "10.0.0.3",
            "--force",
        ])
        .expect("remove");
        let Request::VirtualServer(c) = req(&a) else {
            panic!("vserver")
        };
        assert_eq!(
            (c.op, c.force, c.real_server.port),
            (RealServerOp::Remove, true, None)
        );
        let a = parse(&["vserver", "weight", "203.0.113.80:80/tcp", "10.0.0.3", "7"]).expect("w");
        let Request::VirtualServer(c) = req(&a) else {
            panic!("vserver")
        };
        assert_eq!((c.op, c.weight), (RealServerOp::Weight, Some(7)));
        assert!(parse(&["vserver", "drain", "203.0.113.80:80", "10.0.0.3"]).is_err());
        assert!(parse(&["vservers"]).is_ok());
    }

    #[test]
    fn usage_errors_are_clap_errors_with_exit_status_2() {
        for bad in [
            &["sessions", "--proto", "sctp"][..],
            &["log-level", "loud"],
            &["sessions", "--subscriber", "not-an-address"],
            &["reboot"],
            &[],
        ] {
            let e = parse(bad).expect_err("must not parse");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn no_daemon_is_exit_3_with_the_socket_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("none.sock");
        let a = parse(&["status", "--socket", sock.to_str().expect("utf-8")]).expect("parse");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run_with(&a, &mut out, &mut err).expect("run"),
            EXIT_NO_DAEMON
        );
        let msg = String::from_utf8(err).expect("utf-8");
        assert!(msg.contains(sock.to_str().expect("utf-8")), "{msg}");
        assert!(msg.contains("no natgate daemon is listening"), "{msg}");
        assert!(out.is_empty());
    }
}
