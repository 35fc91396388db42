//! The `warrant` command line.

mod audit;
pub mod ca;
mod control;
pub mod docs;
pub(crate) mod status;
pub mod tag;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    config::{Config, DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET},
    control::ControlRequest,
    install,
};

#[derive(Parser)]
#[command(
    name = "warrant",
    version,
    about = "Takes long-lived LLM API keys out of AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon (systemd Type=notify).
    Run {
        /// Default: /etc/warrant/warrant.toml, else the embedded default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Detach the eBPF programs and remove their pins on exit (demos and
        /// tests; a service keeps them so a restart loses no redirection).
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Serve as a gateway for nodes (a `[gateway]` section; no eBPF, no
    /// privileges needed): see the README's gateway mode.
    Gateway {
        /// Default: /etc/warrant/gateway.toml.
        #[arg(long, default_value = crate::service::gateway::DEFAULT_GATEWAY_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file; errors name file:line:column.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration (every key, commented).
    DefaultConfig,
    /// Remove warrant's pinned eBPF programs and maps (stops all redirection).
    /// For uninstalling; a running daemon must be stopped first.
    Detach {
        #[arg(long, default_value = "/etc/warrant/warrant.toml")]
        config: PathBuf,
    },
    /// Live view: workloads and their connections, credentials (expiry, never
    /// values), budgets (limit, used, in flight, when a default request
    /// fits), instance identity, tagging health, quarantines, audit health,
    /// the kernel (features probed at start, hooks attached).
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Quarantine a workload or a process: new requests are refused (403)
    /// and its live connections are closed (gracefully first: a response
    /// under way has 250 ms to reach the agent, then the rest is cut).
    Revoke {
        #[command(flatten)]
        target: TargetArg,
        /// How long, e.g. "1h", "30m" (default: until `warrant restore`).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// Why, for the audit record.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Lift a quarantine.
    Restore {
        #[command(flatten)]
        target: TargetArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Re-read the configuration file and apply it without dropping a
    /// connection (as SIGHUP does). A file with an error is refused and the
    /// running configuration stays; changed sections that are read only at
    /// start ([daemon], [proxy], [audit], [control], [response], [instance],
    /// [attest], the [[upstream]] list, [intercept]
    /// passthrough_deny/passthrough_allow, [metadata]) are named and need a
    /// restart.
    Reload {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// A gateway's enrollment pins: the node key pinned to each AWS or
    /// Azure instance that enrolled by its instance identity (the first
    /// key to do so; another key is refused until the pin is released).
    Pins {
        #[command(flatten)]
        socket: SocketArg,
        /// Print the gateway's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Release a gateway's enrollment pin: the next key to enroll as the
    /// instance is pinned to it (on every gateway sharing the pins); with
    /// --to, that key is pinned now instead, leaving no race for the pin.
    Unpin {
        /// The instance, as `warrant pins` names it, e.g.
        /// aws:123456789012/i-0abc.
        instance: String,
        /// Pin this node key (ed25519:<hex>, as the node's `warrant status`
        /// shows it) instead, for the launch pinned.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// The attestation of a process and which workload it matches.
    Explain {
        #[arg(long)]
        pid: u32,
        /// Also show what policy would decide for this request, e.g.
        /// 'POST https://api.openai.com/v1/chat/completions model=gpt-4o'
        /// (nothing is sent).
        #[arg(long)]
        request: Option<String>,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Make a systemd service a tagged workload: a drop-in places it in
    /// warrant-agents.slice and points its TLS trust at warrant's bundle.
    Tag {
        /// The service (a bare name means NAME.service).
        unit: String,
        #[arg(long, default_value = "/etc/warrant/warrant.toml")]
        config: PathBuf,
        /// Write under this directory instead of / and do not call systemctl
        /// (for building images and for tests).
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
    /// The local CA certificate: print it, or add it to / remove it from the
    /// system trust store (for agents that ignore SSL_CERT_FILE).
    Ca {
        #[command(subcommand)]
        action: CaAction,
        #[arg(long, default_value = "/etc/warrant/warrant.toml", global = true)]
        config: PathBuf,
    },
    /// Remove exactly the drop-in `warrant tag` wrote.
    Untag {
        /// The service (a bare name means NAME.service).
        unit: String,
        #[arg(long, hide = true)]
        root: Option<PathBuf>,
    },
    /// Is this host ready? Checks the kernel features each eBPF program
    /// needs (the probe `warrant run` makes), the cgroup2 and bpffs mounts,
    /// perf_event_paranoid, systemd, the clock, the config (as
    /// check-config), credential files' owner and mode, the CA and the
    /// trust bundle, each tagged unit's slice and TLS trust environment,
    /// the listeners and the daemon's audit health; prints pass, warn or
    /// fail and the fix for each problem. Only reads. Exits 1 when any
    /// check fails. Run as root.
    Doctor {
        #[arg(long, default_value = "/etc/warrant/warrant.toml")]
        config: PathBuf,
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Query the audit trail (rotated files included): who called what,
    /// what was refused and why, and a summary of requests, refusals,
    /// tokens and cost per workload and day.
    Audit(audit::AuditArgs),
    /// Write the man pages and the bash, zsh and fish completions (for
    /// packaging: `cargo xtask package` runs it).
    #[command(hide = true)]
    GenerateDocs {
        /// Where the man pages go (warrant.1, warrant-SUBCOMMAND.1).
        #[arg(long)]
        man: PathBuf,
        /// Where the completion scripts go.
        #[arg(long)]
        completions: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long = "socket", env = "WARRANT_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    pub path: PathBuf,
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct TargetArg {
    /// A workload name from the config.
    #[arg(long)]
    pub workload: Option<String>,
    /// A process id (the quarantine follows that process, whatever its workload).
    #[arg(long)]
    pub pid: Option<u32>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, crate::duration::DurationError> {
    crate::duration::parse(text)
}

#[derive(Subcommand)]
pub enum CaAction {
    /// Print the CA certificate (PEM).
    Export,
    /// Copy it to /usr/local/share/ca-certificates and run
    /// update-ca-certificates.
    Install,
    /// Remove it from there and rebuild the system bundle.
    Uninstall,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Gateway { config } => run_gateway(&config),
        Command::Run {
            config,
            detach_on_exit,
        } => run_daemon(config, detach_on_exit),
        Command::CheckConfig { file } => check_config(&file),
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Tag { unit, config, root } => report(tag_unit(&unit, &config, root)),
        Command::Untag { unit, root } => report(untag_unit(&unit, root)),
        Command::Ca { action, config } => report(ca_command(action, &config)),
        Command::Detach { config } => report(detach(&config)),
        Command::Audit(args) => audit::run(&args),
        Command::Doctor { config, json } => doctor(&config, json),
        Command::GenerateDocs { man, completions } => generate_docs(&man, &completions),
        Command::Status { socket, json } => {
            control::run(&socket.path, &ControlRequest::Status, json)
        }
        Command::Revoke {
            target,
            duration,
            reason,
            socket,
        } => control::run(
            &socket.path,
            &ControlRequest::Revoke {
                workload: target.workload,
                pid: target.pid,
                for_secs: duration.map(|d| d.as_secs().max(1)),
                reason,
            },
            false,
        ),
        Command::Restore { target, socket } => control::run(
            &socket.path,
            &ControlRequest::Restore {
                workload: target.workload,
                pid: target.pid,
            },
            false,
        ),
        Command::Reload { socket } => control::run(&socket.path, &ControlRequest::Reload, false),
        Command::Pins { socket, json } => control::run(&socket.path, &ControlRequest::Pins, json),
        Command::Unpin {
            instance,
            to,
            socket,
        } => control::run(&socket.path, &ControlRequest::Unpin { instance, to }, false),
        Command::Explain {
            pid,
            request,
            socket,
        } => control::run(
            &socket.path,
            &ControlRequest::Explain { pid, request },
            false,
        ),
    }
}

/// `warrant gateway`: the gateway on a multi-threaded runtime.
fn run_gateway(config: &std::path::Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("warrant: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::service::gateway::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("warrant: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `warrant generate-docs`: prints each file written.
fn generate_docs(man: &std::path::Path, completions: &std::path::Path) -> ExitCode {
    report(
        docs::write(man, completions)
            .map(|written| {
                for path in written {
                    println!("{}", path.display());
                }
            })
            .map_err(anyhow::Error::from),
    )
}

/// `warrant run`: the daemon on a multi-threaded runtime.
fn run_daemon(config: Option<PathBuf>, detach_on_exit: bool) -> ExitCode {
    // Before the runtime: this reads and clears the environment, which is
    // only sound while the process has one thread.
    let inherited = match crate::service::activation::take_listeners() {
        Ok(inherited) => inherited,
        Err(err) => {
            eprintln!("warrant: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    // Connections are served on lanes of their own (`proxy::lanes`); this
    // runtime accepts them and runs the rest (control socket, metrics,
    // tagger, reloads, refreshes).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("warrant: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::service::run(crate::service::RunOptions {
        config,
        detach_on_exit,
        inherited,
    })) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("warrant: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `warrant check-config`: every section compiled as `warrant run` would,
/// as a dry run.
fn check_config(file: &std::path::Path) -> ExitCode {
    match crate::service::check(file) {
        Ok(report) => {
            println!(
                "{}: ok ({} workloads, {} upstreams, {} credentials, {} policies)",
                file.display(),
                report.workloads,
                report.upstreams,
                report.credentials,
                report.policies
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// `warrant doctor`: every check, and exit status 1 on any failure.
fn doctor(config: &std::path::Path, json: bool) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "warrant doctor: not root: the kernel probes, credential files and control socket need root, so some checks will fail for that reason alone"
        );
    }
    let report = crate::doctor::run(&crate::doctor::facts::gather(config));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `warrant detach`: removes the pinned programs and maps.
fn detach(config: &std::path::Path) -> anyhow::Result<()> {
    let config = load_or_default(config)?;
    crate::redirect::remove_pins(&config.daemon.bpf_pin_dir)
        .map_err(|err| anyhow::anyhow!("detach: {err}"))?;
    println!("removed {}", config.daemon.bpf_pin_dir.display());
    Ok(())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("warrant: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn tag_unit(unit: &str, config: &std::path::Path, root: Option<PathBuf>) -> anyhow::Result<()> {
    let unit = tag::service_name(unit)?;
    let config = load_or_default(config)?;
    let bundle = config.daemon.state_dir.join(crate::tls::TRUST_BUNDLE_FILE);
    let on_system = root.is_none();
    let root = root.unwrap_or_else(|| PathBuf::from("/"));
    let outcome = tag::tag(&root, &unit, &bundle)?;
    let path = install::dropin_path(&root, &unit);
    match outcome {
        tag::Tagged::Written => println!("wrote {}", path.display()),
        tag::Tagged::AlreadyTagged => println!("{unit} is already tagged ({})", path.display()),
    }
    if !config.workloads.iter().any(|w| {
        w.slice
            .as_ref()
            .is_some_and(|s| s.get_ref() == install::AGENTS_SLICE)
    }) {
        println!(
            "note: no [[workload]] selects slice = \"{}\": add one, or the unit is not redirected",
            install::AGENTS_SLICE
        );
    }
    if on_system {
        after_change(&unit, outcome == tag::Tagged::Written)?;
    }
    Ok(())
}

fn untag_unit(unit: &str, root: Option<PathBuf>) -> anyhow::Result<()> {
    let unit = tag::service_name(unit)?;
    let on_system = root.is_none();
    let root = root.unwrap_or_else(|| PathBuf::from("/"));
    let removed = tag::untag(&root, &unit)?;
    if !removed {
        println!("{unit} was not tagged");
        return Ok(());
    }
    println!("removed {}", install::dropin_path(&root, &unit).display());
    if on_system {
        after_change(&unit, true)?;
    }
    Ok(())
}

fn ca_command(action: CaAction, config: &std::path::Path) -> anyhow::Result<()> {
    let root = std::path::Path::new("/");
    if let CaAction::Uninstall = action {
        if ca::uninstall(root)? {
            ca::update_ca_certificates(true)?;
            println!("removed {}", install::system_ca_path(root).display());
        } else {
            println!("the CA was not in the system trust store");
        }
        return Ok(());
    }
    let config = load_or_default(config)?;
    let pem = crate::tls::ca_pem_in(&config.daemon.state_dir)
        .map_err(|e| anyhow::anyhow!("{e} (the daemon creates the CA when it first starts)"))?;
    match action {
        CaAction::Export => print!("{pem}"),
        CaAction::Install => {
            if ca::install(root, &pem)? {
                ca::update_ca_certificates(false)?;
            }
            println!(
                "{} is in the system trust store (name-constrained to the intercepted hosts)",
                install::system_ca_path(root).display()
            );
        }
        CaAction::Uninstall => {}
    }
    Ok(())
}

/// Reloads systemd after a drop-in changed and says whether the unit must be
/// restarted: a running unit keeps its slice and environment until then.
fn after_change(unit: &str, changed: bool) -> anyhow::Result<()> {
    if changed {
        tag::daemon_reload()?;
    }
    if tag::unit_is_active(unit) {
        if changed {
            println!("{unit} is running: restart it to apply (systemctl restart {unit})");
        }
    } else {
        println!("{unit} is not running: the change applies when it starts");
    }
    Ok(())
}

/// The config the daemon would use for `path` (see `service::load_config`).
pub fn load_or_default(path: &std::path::Path) -> anyhow::Result<Config> {
    crate::service::load_config(Some(path)).map(|(config, _, _)| config)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARRANT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // AWS's signer traces the requests it signs (with the session token
    // redacted, but the access key id and the request in clear): never
    // below warn, whatever WARRANT_LOG asks.
    let filter = match "aws_sigv4=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
