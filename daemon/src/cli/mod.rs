//! The `warrant` command line.

mod control;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{
    config::{Config, DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET},
    control::ControlRequest,
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
    /// Validate a configuration file; errors name file:line:column.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration (every key, commented).
    DefaultConfig,
    /// The local CA that agents must trust.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Remove warrant's pinned eBPF programs and maps (stops all redirection).
    /// For uninstalling; a running daemon must be stopped first.
    Detach {
        #[arg(long, default_value = "/etc/warrant/warrant.toml")]
        config: PathBuf,
    },
    /// Live view: workloads and their connections, credentials (expiry, never
    /// values), budgets, instance identity, quarantines, audit health.
    Status {
        #[command(flatten)]
        socket: SocketArg,
        /// Print the daemon's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Quarantine a workload or a process: new requests are refused (403)
    /// and its live connections are closed at once.
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
    /// Ask the daemon to re-read its configuration (validated and reported;
    /// applying it needs a restart for now).
    Reload {
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

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse(text)
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM). The trust bundle for agents (system
    /// roots plus this CA) is `<state_dir>/trust-bundle.pem`.
    Export {
        #[arg(long, default_value = "/etc/warrant/warrant.toml")]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Run {
            config,
            detach_on_exit,
        } => {
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
            match runtime.block_on(crate::service::run(crate::service::RunOptions {
                config,
                detach_on_exit,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!("{err:#}");
                    eprintln!("warrant: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} workloads, {} upstreams, {} credentials, {} policies)",
                    file.display(),
                    config.workloads.len(),
                    config.upstreams.len(),
                    config.credentials.len(),
                    config.policies.len()
                );
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        },
        Command::Ca {
            command: CaCommand::Export { config },
        } => {
            let config = match load_or_default(&config) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::FAILURE;
                }
            };
            match crate::tls::ca_pem_in(&config.daemon.state_dir) {
                Ok(pem) => {
                    print!("{pem}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("warrant ca export: {err} (has the daemon run once?)");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DefaultConfig => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Command::Detach { config } => {
            let config = match load_or_default(&config) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::FAILURE;
                }
            };
            match crate::redirect::remove_pins(&config.daemon.bpf_pin_dir) {
                Ok(()) => {
                    println!("removed {}", config.daemon.bpf_pin_dir.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("warrant detach: {err}");
                    ExitCode::FAILURE
                }
            }
        }
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

/// The config at `path`, or the embedded default when that file does not exist.
pub fn load_or_default(path: &std::path::Path) -> Result<Config, crate::config::ConfigError> {
    if path.exists() {
        Config::load(path)
    } else {
        Config::embedded_default()
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("WARRANT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
