//! `natgate ctl`: ask the running daemon, print tables (or JSON with `--json`).
//!
//! Exit status: [`EXIT_OK`] on success, [`EXIT_ERROR`] when the daemon answers with an error or
//! the exchange fails after connecting, 2 for usage errors (clap's), [`EXIT_NO_DAEMON`] when the
//! socket cannot be reached.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use natgate_core::Protocol;

use super::protocol::{DropsQuery, LogLevel, LogLevelArgs, TableQuery, WhoisQuery};
use super::{Client, DEFAULT_SOCKET, Request, render};

/// Exit status: the request succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit status: the daemon answered with an error, or the exchange broke after connecting.
pub const EXIT_ERROR: u8 = 1;
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
    /// Delete every session and mapping.
    Flush,
    /// Re-read the config file; a bad one is refused and nothing changes.
    Reload,
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

impl From<&CtlCommand> for Request {
    fn from(c: &CtlCommand) -> Self {
        match c {
            CtlCommand::Status => Request::Status,
            CtlCommand::Sessions(a) => Request::Sessions(a.into()),
            CtlCommand::Mappings(a) => Request::Mappings(a.into()),
            CtlCommand::Pools => Request::Pools,
            CtlCommand::Stats => Request::Stats,
            CtlCommand::Drops { all } => Request::Drops(DropsQuery { all: *all }),
            CtlCommand::Flush => Request::Flush,
            CtlCommand::Reload => Request::Reload,
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
        }
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
    let req = Request::from(&args.command);
    let answer = Client::connect(&args.socket).and_then(|mut c| c.request(&req));
    match answer {
        Ok(resp) => {
            if args.json {
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
            Request::from(&a.command),
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
            Request::from(&a.command),
            Request::LogLevel(LogLevelArgs {
                level: LogLevel::Debug
            })
        );
        // --socket and --json go before or after the command.
        let a = parse(&["--socket", "/a", "drops", "--all", "--json"]).expect("parse");
        assert_eq!((a.socket.to_str(), a.json), (Some("/a"), true));
        assert_eq!(
            Request::from(&a.command),
            Request::Drops(DropsQuery { all: true })
        );
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
            Request::from(&a.command),
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
