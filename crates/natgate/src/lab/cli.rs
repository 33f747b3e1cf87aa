//! `natgate lab`: the lab's tools on the command line. `stun` serves NAT behaviour discovery
//! from a WAN host; `probe` classifies the NAT(s) in front of the host it runs on.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use natgate_core::stun::ServerAddresses;

use super::discovery::{self, LifetimeOptions, ProbeOptions};
use super::stun_server::StunService;

/// Arguments of `natgate lab`.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Which tool.
    #[command(subcommand)]
    pub command: LabCommand,
}

/// The `natgate lab` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LabCommand {
    /// Run a STUN server for NAT behaviour discovery (RFC 5389 Binding, RFC 5780
    /// CHANGE-REQUEST, OTHER-ADDRESS, RESPONSE-ORIGIN, RESPONSE-PORT) in the current network
    /// namespace, until SIGINT or SIGTERM or the end of --lifetime.
    Stun(StunArgs),
    /// Classify the NAT(s) between this host and a STUN server with two addresses (mapping,
    /// filtering, hairpinning, ports, pooling, optionally the mapping lifetime).
    Probe(ProbeArgs),
}

/// Arguments of `natgate lab stun`.
#[derive(Debug, Clone, clap::Args)]
pub struct StunArgs {
    /// The primary address, then the alternate one (discovery needs both).
    #[arg(long = "address", value_name = "ADDR", required = true, num_args = 1)]
    pub addresses: Vec<IpAddr>,
    /// The primary port, then the alternate one.
    #[arg(long = "port", value_name = "PORT", default_values_t = [3478u16, 3479])]
    pub ports: Vec<u16>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub lifetime: Option<u64>,
}

/// Arguments of `natgate lab probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// The STUN server's primary address and port; its other address comes from its answer.
    #[arg(long, value_name = "ADDR:PORT")]
    pub server: SocketAddr,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for each answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub timeout_ms: u64,
    /// How often to send a request before concluding that no answer comes.
    #[arg(long, default_value_t = 3)]
    pub tries: u32,
    /// Measure the mapping lifetime, up to this many seconds idle (the probe then takes that
    /// long).
    #[arg(long, value_name = "SECS")]
    pub lifetime_max: Option<u64>,
    /// The resolution of the lifetime measurement, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub lifetime_step: u64,
}

/// Runs `natgate lab ...`.
pub fn run(a: &LabArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        LabCommand::Stun(s) => stun(s),
        LabCommand::Probe(p) => probe(p),
    }
}

fn stun(a: &StunArgs) -> anyhow::Result<ExitCode> {
    let [p1, p2] = a.ports[..] else {
        anyhow::bail!("give two ports (--port P1 --port P2), or none for 3478 and 3479");
    };
    anyhow::ensure!(p1 != p2, "the two ports must differ");
    let addresses = match a.addresses[..] {
        [one] => (one, None),
        [one, two] if one != two => (one, Some(two)),
        _ => anyhow::bail!("give one or two different addresses (--address A1 --address A2)"),
    };
    let service = StunService::bind(ServerAddresses {
        addresses,
        ports: (p1, p2),
    })
    .context("binding the STUN sockets")?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    tracing::info!(?addresses, ports = ?(p1, p2), "natgate stun serving");
    let deadline = a.lifetime.map(|s| Instant::now() + Duration::from_secs(s));
    let stats = service.serve(deadline, &|| stop.load(Ordering::Relaxed))?;
    tracing::info!(
        received = stats.received,
        answered = stats.answered,
        "natgate stun stopped"
    );
    Ok(ExitCode::SUCCESS)
}

fn probe(a: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let opts = ProbeOptions {
        server: a.server,
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        tries: a.tries.max(1),
        lifetime: a.lifetime_max.map(|max| LifetimeOptions {
            max: Duration::from_secs(max),
            step: Duration::from_secs(a.lifetime_step.max(1)),
        }),
    };
    let report = discovery::discover(&opts)?;
    let text = if a.json {
        serde_json::to_string_pretty(&report)?
    } else {
        report.to_string()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.trim_end())?;
    Ok(ExitCode::SUCCESS)
}
