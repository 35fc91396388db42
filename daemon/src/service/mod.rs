//! `warrant run`: the daemon, assembled from its parts in the order of the
//! request path, and its life cycle (readiness, signals, shutdown).

pub mod activation;
mod gate;

use std::{
    net::SocketAddr,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{net::TcpListener, signal::unix::SignalKind};

pub use gate::WarrantGate;

use crate::{
    attest::{self, Attestor, InstanceHandle, WorkloadMatcher},
    config::Config,
    credentials::{self, StoreOptions, SystemClock},
    notify::notify,
    policy::{Policy, PostureStore},
    proxy::Injector,
    redirect::{RedirectSettings, Redirector, tagging},
    tls::Pki,
};

pub struct RunOptions {
    /// None: /etc/warrant/warrant.toml if it exists, else the embedded default.
    pub config: Option<PathBuf>,
    /// Detach the eBPF programs and remove their pins on exit (demos, tests).
    /// A daemon that is only restarting keeps them: see `redirect`.
    pub detach_on_exit: bool,
    /// Listeners passed by systemd (warrant.socket); None: bind `listen`.
    /// Taken before the runtime starts (see `activation::take_listeners`).
    pub inherited: Option<activation::Inherited>,
}

/// How long a stopping daemon lets requests in flight finish (idle
/// keep-alive connections also hold it up to this long). Well below
/// systemd's default TimeoutStopSec (90 s) with room to spare; new
/// connections meanwhile wait in warrant.socket's backlog for the next daemon.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub const DEFAULT_CONFIG_PATH: &str = "/etc/warrant/warrant.toml";

/// The configuration `warrant run` uses, and where it came from.
pub fn load_config(path: Option<&Path>) -> Result<(Config, String)> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if path.exists() {
        return Ok((Config::load(&path)?, path.display().to_string()));
    }
    if path != Path::new(DEFAULT_CONFIG_PATH) {
        anyhow::bail!("{}: no such file", path.display());
    }
    Ok((
        Config::embedded_default()?,
        "the embedded default config".to_owned(),
    ))
}

pub async fn run(options: RunOptions) -> Result<()> {
    let (config, origin) = load_config(options.config.as_deref())?;
    tracing::info!(config = %origin, "starting");
    credentials::make_non_dumpable().context("cannot make the process non-dumpable")?;
    raise_open_file_limit();
    let state_dir = &config.daemon.state_dir;
    // 0711: agents (any uid) must be able to open trust-bundle.pem by its
    // path, but not list the directory; the CA key and the host key live in
    // root-only files and directories inside.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    std::fs::set_permissions(
        state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .with_context(|| format!("cannot set the mode of {}", state_dir.display()))?;

    notify("STATUS=loading the local CA");
    let pki = Pki::init(&config)?;
    tracing::info!(bundle = %pki.trust_bundle.display(), "trust bundle written");

    notify("STATUS=fetching credentials and the instance identity");
    let credentials = Arc::new(
        credentials::store_from_config(
            &config.credentials,
            Arc::new(SystemClock),
            &StoreOptions::default(),
        )
        .map_err(anyhow::Error::msg)?,
    );
    credentials.prefetch().await;
    let _credential_refreshers = credentials.spawn_refresher();
    let instance = InstanceHandle::default();
    let provider = attest::instance::Provider::from_config(&config.instance, state_dir)?;
    if let Err(error) = provider.refresh(&instance).await {
        // Conditions that need the identity fail closed until it is fetched.
        tracing::warn!(%error, "instance identity not available yet");
    }
    let _instance_refresher = provider.spawn_refresh(
        instance.clone(),
        Duration::from_secs(config.instance.refresh_secs),
    );
    let posture =
        Arc::new(PostureStore::from_config(&config.postures).map_err(anyhow::Error::msg)?);
    // Read every posture check once before serving: until a check has a
    // result, rules that need it deny.
    posture.refresh_all().await;
    let _posture_refreshers = posture.clone().spawn_refresher();
    let policy = Policy::new(&config.policies, posture).map_err(anyhow::Error::msg)?;

    notify("STATUS=attaching the eBPF programs");
    let (listener4, listener6) = match options.inherited {
        Some(inherited) => adopt(&config, inherited)?,
        None => bind(&config).await?,
    };
    let settings = RedirectSettings::from_config(
        &config,
        listener4.local_addr()?,
        listener6.as_ref().and_then(|l| l.local_addr().ok()),
    )?;
    let redirector = Redirector::start(settings.clone())?;
    let maps = redirector.maps();
    let tagger = tagging::Tagger::new(
        &settings.cgroup_root,
        tagging::selectors(&config),
        maps.clone(),
    )?;
    let (stop_tagger, tagger_stopped) = tokio::sync::oneshot::channel::<()>();
    let tagger_task = tokio::spawn(tagger.watch(async {
        let _ = tagger_stopped.await;
    }));

    let attestor = Arc::new(Attestor::new(&config.attest, maps.clone(), instance));
    let rules_name_models = config.policies.iter().any(|p| !p.models.is_empty());
    let gate = Arc::new(WarrantGate::new(
        attestor,
        WorkloadMatcher::new(&config.workloads),
        policy,
        rules_name_models,
    ));
    let injector = Arc::new(
        Injector::new(&config, pki.leafs, maps, credentials, &pki.system_roots)?.with_gate(gate),
    );
    let mut servers = vec![tokio::spawn(injector.clone().serve(listener4))];
    if let Some(listener6) = listener6 {
        servers.push(tokio::spawn(injector.clone().serve(listener6)));
    }
    let addrs: Vec<SocketAddr> = std::iter::once(SocketAddr::V4(settings.listen4))
        .chain(settings.listen6.map(SocketAddr::V6))
        .collect();
    tracing::info!(listen = ?addrs, "ready");
    notify("READY=1\nSTATUS=serving");
    let _watchdog = crate::notify::spawn_watchdog();

    wait_for_shutdown().await?;
    notify("STOPPING=1\nSTATUS=finishing requests in flight");
    // Stop accepting first: under socket activation the listening socket
    // stays open in systemd, so new connections queue for the next daemon
    // instead of landing on one that is going away.
    for server in servers {
        server.abort();
    }
    if !injector.drain(DRAIN_TIMEOUT).await {
        tracing::warn!(
            timeout = ?DRAIN_TIMEOUT,
            "connections still open at shutdown (idle keep-alive or long streams): closed"
        );
    }
    let _ = stop_tagger.send(());
    let _ = tagger_task.await;
    if options.detach_on_exit {
        redirector.detach()?;
        tracing::info!("eBPF programs detached");
    } else {
        tracing::info!(
            "stopping; the pinned eBPF programs keep tagged connections away from providers"
        );
    }
    Ok(())
}

/// The attestor keeps a pidfd per recently seen process and every proxied
/// connection holds two sockets: lift the soft limit (1024 under systemd) to
/// the hard one.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open file limit"),
    }
}

/// Resolves on SIGTERM or SIGINT. SIGHUP (systemd's ExecReload) must not
/// kill the daemon, which is its default action: until configuration reload
/// exists it is logged and otherwise ignored.
async fn wait_for_shutdown() -> Result<()> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT"); return Ok(()); }
            _ = hup.recv() => tracing::warn!(
                "SIGHUP: configuration reload is not implemented yet; restart the service to apply changes"
            ),
        }
    }
}

type Listeners = (TcpListener, Option<TcpListener>);

/// Binds `[daemon] listen` and the IPv6 listener on the same port.
async fn bind(config: &Config) -> Result<Listeners> {
    let listener4 = TcpListener::bind(config.daemon.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.daemon.listen))?;
    let listener6 = match config.listen6_on(listener4.local_addr()?.port()) {
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%addr, %error, "no IPv6 listener: IPv6 connections go to the IPv4 listener");
                None
            }
        },
        None => None,
    };
    Ok((listener4, listener6))
}

/// Serves on the listeners systemd passed. Their addresses win over
/// `[daemon] listen` (the eBPF programs redirect to where the daemon really
/// listens); a mismatch is logged so the operator can align the two files.
fn adopt(config: &Config, inherited: activation::Inherited) -> Result<Listeners> {
    let Some(v4) = inherited.v4 else {
        anyhow::bail!("socket activation passed no IPv4 listener");
    };
    let listener4 = TcpListener::from_std(v4)?;
    let addr4 = listener4.local_addr()?;
    if addr4 != config.daemon.listen {
        tracing::warn!(socket = %addr4, config = %config.daemon.listen, "warrant.socket listens elsewhere than [daemon] listen; using the socket");
    }
    let listener6 = inherited.v6.map(TcpListener::from_std).transpose()?;
    tracing::info!(ipv4 = %addr4, ipv6 = ?listener6.as_ref().and_then(|l| l.local_addr().ok()), "listening on sockets passed by systemd");
    Ok((listener4, listener6))
}
