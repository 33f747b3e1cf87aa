//! The `natgate` program: `run` the gateway, `check` a config, `demo` it in namespaces, `lab`
//! tools.
//!
//! Subcommands live in [`Command`]; each has its own args struct and function, so adding one
//! (e.g. `ctl`) is one variant, one struct and one match arm.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use natgate::config::Settings;
use natgate::control::cli::CtlArgs;
use natgate::control::protocol::LogLevel;
use natgate::daemon::control::{ControlService, LogLevelFn};
use natgate::daemon::{Daemon, machine};
use natgate_core::huge_pages::HugePageAlloc;

/// The engine's tables on transparent huge pages (with THP in `madvise` or `always` mode):
/// random session look-ups over hundreds of megabytes otherwise miss the TLB on most packets.
#[global_allocator]
static ALLOC: HugePageAlloc = HugePageAlloc::new();

/// natgate: a user-space NAT gateway (NAPT44, RFC 4787/5382/5508/6888).
#[derive(Debug, Parser)]
#[command(name = "natgate", version = env!("NATGATE_VERSION"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway: set up the TUN data plane and translate until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a config file and print the effective config (presets expanded).
    Check(CheckArgs),
    /// Build the standard lab topology in namespaces, run the gateway in it, send traffic,
    /// show what happened, tear everything down (needs root).
    Demo(DemoArgs),
    /// Ask the running gateway (status, sessions, mappings, pools, stats, drops, flush,
    /// reload, log-level).
    Ctl(CtlArgs),
    /// The NAT lab's tools: a STUN server for WAN hosts, a NAT behaviour probe.
    Lab(natgate::lab::cli::LabArgs),
    /// Write this program's manual pages, or a shell's completions, generated from the command
    /// line's own definition (for packages).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
struct GenerateArgs {
    #[command(subcommand)]
    what: Generated,
}

#[derive(Debug, Subcommand)]
enum Generated {
    /// The manual pages, natgate(8) and one per subcommand (natgate-run(8), ...), into `dir`.
    Man {
        /// The directory to write them to (it must exist).
        dir: PathBuf,
    },
    /// Completions for `shell`, to stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Enter this named network namespace (`/run/netns/NAME`) first.
    #[arg(long)]
    netns: Option<String>,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The config file (TOML).
    #[arg(long, short)]
    config: PathBuf,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Behaviour preset for the gateway.
    #[arg(long, default_value = "rfc6888-cgn")]
    preset: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_level = init_logging();
    let r = match cli.command {
        Command::Run(a) => run(a, log_level),
        Command::Check(a) => check(a),
        Command::Demo(a) => demo(a),
        Command::Ctl(a) => natgate::control::cli::run(&a),
        Command::Generate(a) => generate(a),
        Command::Lab(a) => natgate::lab::cli::run(&a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            report_error(&e);
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stderr)] // the program's own error report
fn report_error(e: &anyhow::Error) {
    eprintln!("natgate: error: {e:#}");
}

/// Logs to stderr, level from `NATGATE_LOG` (default info); returns the function that changes
/// the level at run time (`natgate ctl log-level`).
fn init_logging() -> LogLevelFn {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NATGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    Box::new(move |level: LogLevel| {
        handle
            .reload(EnvFilter::new(level.name()))
            .map_err(|e| e.to_string())
    })
}

fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    use clap_complete::Generator;
    let mut cmd = <Cli as clap::CommandFactory>::command();
    match a.what {
        Generated::Man { dir } => {
            cmd.build();
            let page = |cmd: clap::Command, name: String| -> anyhow::Result<()> {
                let path = dir.join(format!("{name}.8"));
                let mut out = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                // Section 8: system administration (it runs as root, or with capabilities).
                clap_mangen::Man::new(cmd)
                    .title(name)
                    .section("8")
                    .render(&mut out)
                    .with_context(|| format!("writing {}", path.display()))
            };
            // Not `help`: clap's own, and the main page says what it says.
            for sub in cmd
                .get_subcommands()
                .filter(|c| !c.is_hide_set() && c.get_name() != "help")
            {
                page(sub.clone(), format!("natgate-{}", sub.get_name()))?;
            }
            page(cmd, "natgate".into())?;
        }
        Generated::Completions { shell } => {
            cmd.set_bin_name("natgate");
            cmd.build();
            shell
                .try_generate(&cmd, &mut std::io::stdout().lock())
                .context("writing the completions")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run(a: RunArgs, log_level: LogLevelFn) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&a.config)
        .with_context(|| format!("invalid config {}", a.config.display()))?;
    if let Some(name) = &a.netns {
        // Before any thread exists, so every thread natgate starts is in it.
        let ns = natgate::platform::netns::Netns::open(name)
            .with_context(|| format!("network namespace {name}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("entering network namespace {name}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let daemon = Daemon::start(&settings, stop).context("starting")?;
    let h = daemon.handle();
    let service = Arc::new(ControlService::new(
        h.clone(),
        settings.clone(),
        Some(a.config.clone()),
        Some(log_level),
    ));
    let control = match &settings.control_socket {
        Some(path) => Some(
            natgate::control::Server::bind(path, ArcService(service.clone()))
                .context("control socket")?,
        ),
        None => None,
    };
    let metrics = match settings.metrics_listen {
        Some(addr) => {
            let s = service.clone();
            Some(
                natgate::observability::metrics::MetricsServer::bind(addr, move || s.metrics())
                    .context("metrics endpoint")?,
            )
        }
        None => None,
    };
    let r = h.resolved();
    if r.stale_removed > 0 {
        tracing::warn!(
            removed = r.stale_removed,
            "removed state left by an earlier natgate that did not exit cleanly"
        );
    }
    tracing::info!(
        pool = r.pool.len(),
        inside_address = %r.inside_address,
        workers = h.workers(),
        "natgate running; SIGINT or SIGTERM stops it"
    );
    if let Some(c) = &control {
        tracing::info!(socket = %c.path().display(), "control socket ready");
    }
    if let Some(m) = &metrics {
        tracing::info!(listen = %m.local_addr(), "metrics at http://{}/metrics", m.local_addr());
    }
    let r = daemon.wait();
    if let Some(c) = control {
        c.shutdown();
    }
    if let Some(m) = metrics {
        m.shutdown();
    }
    r.context("running")?;
    tracing::info!("natgate stopped; plumbing removed");
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)] // `check` prints the effective config
fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(&a.config)
        .with_context(|| format!("invalid config {}", a.config.display()))?;
    // What this machine can hold, and its outside interface's addresses if it has that
    // interface (`run` checks them again, where they are always known).
    let mem = machine::MemInfo::read()?;
    let need = machine::check_memory(&settings, mem)
        .with_context(|| format!("config {} does not fit this machine", a.config.display()))?;
    let outside = natgate::platform::netlink::Netlink::new()
        .ok()
        .and_then(|mut nl| nl.addrs_v4(Some(&settings.outside)).ok());
    let outside_note = match &outside {
        Some(addrs) => {
            let addrs: Vec<_> = addrs.iter().map(|(_, a, _)| *a).collect();
            machine::check_pool(&settings, &addrs)
                .with_context(|| format!("invalid config {}", a.config.display()))?;
            format!(
                "outside interface {} found, its addresses checked",
                settings.outside
            )
        }
        None => format!(
            "outside interface {} not found here: its address is checked at run",
            settings.outside
        ),
    };
    let text = settings
        .effective_toml()
        .context("printing the effective config")?;
    let (l, n) = (settings.limits, settings.queues);
    let memory_note = if l.max_memory.is_some() {
        "\n# max-memory is the whole process's: `run` measures what natgate holds itself before \
         its engines and gives them the rest (max-sessions derived at run is lower than here \
         by that share)"
    } else {
        ""
    };
    let sources = if settings.inside_networks.is_empty() {
        format!(
            "the subnets of {} (found at start; set inside-networks for subscribers behind a \
             router)",
            settings.inside
        )
    } else {
        let nets: Vec<String> = settings
            .inside_networks
            .iter()
            .map(|p| format!("{}/{}", p.addr(), p.prefix_len()))
            .collect();
        nets.join(", ")
    };
    println!(
        "# effective config of {}\n# max-sessions {} and max-mappings {} are the gateway's, \
         split across {n} workers ({} and {} for the first)\n# engines reserve {need} bytes; \
         {} bytes available{memory_note}\n# {outside_note}\n# sources translated: {sources}; any other \
         is dropped as source_not_inside\n{text}",
        a.config.display(),
        l.max_sessions,
        l.max_mappings,
        natgate::config::worker_share(l.max_sessions, 0, n),
        natgate::config::worker_share(l.max_mappings, 0, n),
        mem.available
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stdout)] // the demo's report is its output
fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let preset = natgate_core::Preset::ALL
        .into_iter()
        .find(|p| p.name() == a.preset)
        .with_context(|| format!("unknown preset {:?}", a.preset))?;
    let ok = natgate::lab::demo::run(preset, &mut |line| println!("{line}"))?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The control server takes its handler by value; the metrics endpoint shares it.
struct ArcService(Arc<ControlService>);

impl natgate::control::ControlHandler for ArcService {
    fn handle(
        &self,
        req: natgate::control::Request,
    ) -> Result<natgate::control::Response, natgate::control::ControlError> {
        self.0.handle(req)
    }
}
