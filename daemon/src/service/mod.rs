//! `warrant run`: the daemon, assembled from its parts in the order of the
//! request path, and its life cycle (readiness, signals, shutdown).

pub mod activation;
pub mod compile;
mod control;
mod gate;
pub mod gateway;
pub mod reload;

use std::{
    net::SocketAddr,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{net::TcpListener, signal::unix::SignalKind};

pub use compile::{CheckReport, Compiled, check, check_config};
pub use control::DaemonBackend;
pub use gate::WarrantGate;

use crate::{
    attest::{self, Attestor, InstanceHandle},
    audit::{Audit, AuditLog},
    clock::SystemClock,
    config::Config,
    control::ControlServer,
    credentials,
    metrics::Metrics,
    notify::notify,
    proxy::Injector,
    redirect::{RedirectSettings, Redirector, features, tagging},
    response::Responder,
    tls::Pki,
    usage::{Budgets, LocalLedger, UsageSettings},
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

/// The configuration `warrant run` (and every command that reads it) uses:
/// the file at `path`, default /etc/warrant/warrant.toml; the embedded
/// default when that default file does not exist; an error for any other
/// missing file. Also says where it came from, and which file `warrant
/// reload` reads again (None: the embedded default).
pub fn load_config(path: Option<&Path>) -> Result<(Config, String, Option<PathBuf>)> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    if path.exists() {
        return Ok((Config::load(&path)?, path.display().to_string(), Some(path)));
    }
    if path != Path::new(DEFAULT_CONFIG_PATH) {
        anyhow::bail!("{}: no such file", path.display());
    }
    Ok((
        Config::embedded_default()?,
        "the embedded default config".to_owned(),
        None,
    ))
}

pub async fn run(options: RunOptions) -> Result<()> {
    let (config, origin, config_path) = load_config(options.config.as_deref())?;
    // Every section compiled before anything is started or written, so a
    // mistake stops the daemon with its place in the file.
    let mut compiled = Compiled::new(&config)?;
    let instance_provider = attest::instance::Provider::compile(
        &config.instance,
        &config.daemon.state_dir,
        &config.source,
    )?;
    tracing::info!(config = %origin, "starting");
    credentials::make_non_dumpable().context("cannot make the process non-dumpable")?;
    raise_open_file_limit();
    prepare_state_dir(&config.daemon.state_dir)?;

    notify("STATUS=loading the local CA");
    let pki = Pki::init(&config)?;
    tracing::info!(bundle = %pki.trust_bundle.display(), "trust bundle written");

    // The audit trail and metrics first: everything after may produce
    // records and counts.
    let (audit, metrics) = open_audit(&config, &origin);
    let responder = Responder::new(
        audit.clone(),
        config.response.clone(),
        Arc::new(SystemClock),
    );
    let _metrics_server = serve_metrics(&config, &metrics).await;

    notify("STATUS=fetching credentials and the instance identity");
    let (instance, _instance_refresher, node_key) =
        start_instance(&config, instance_provider).await?;
    notify("STATUS=attaching the eBPF programs");
    let (listeners, redirection) =
        start_redirection(&config, &compiled, &metrics, options.inherited).await?;
    let maps = redirection.redirector.maps();
    let attestor = Arc::new(Attestor::new(
        &config.attest,
        maps.clone(),
        instance.clone(),
    ));
    // The ledger is opened once; every generation reconfigures it (prices,
    // settings) but keeps what was spent.
    let budgets = usage_budgets(&config, &mut compiled.usage)?;
    // Keeps the Redis state in status current between requests.
    let _redis_probe = budgets
        .spawn_probe(Duration::from_secs(10))
        .map(AbortOnDrop);
    let config = Arc::new(config);
    let build = generation_builder(&metrics, &attestor, &budgets);
    let reloader = Arc::new(
        reload::Reloader::start(
            config_path,
            config.clone(),
            compiled,
            build,
            maps.clone(),
            redirection.tagging_updates.clone(),
        )
        .await,
    );
    meter_budgets(&metrics, &reloader);
    let injector = Injector::new(
        &config,
        pki.leafs,
        maps,
        reloader.generation.clone(),
        responder.clone(),
        &pki.system_roots,
    )?;
    let injector = on_lanes(match node_forward(&config, node_key, &pki.system_roots)? {
        Some(node) => injector.forwarding_to(node),
        None => injector,
    })?;
    let backend = DaemonBackend::new(
        reloader.clone(),
        instance,
        attestor,
        redirection.tagging.clone(),
        redirection.kernel.clone(),
    );
    let _control_server = serve_control(&config, &responder, backend)?;
    let _exe_check = responder.spawn_exe_check().map(AbortOnDrop);
    let servers = serve(&injector, listeners, &redirection.settings);
    let _watchdog = crate::notify::spawn_watchdog();

    wait_for_shutdown(&reloader).await?;
    let stopped = shutdown(servers, &injector, redirection, options.detach_on_exit).await;
    // The records of the last requests (buffered: audit::FLUSH_INTERVAL).
    audit.flush();
    stopped
}

/// The injector, serving its connections on one lane per CPU
/// (`proxy::lanes`).
fn on_lanes(injector: Injector) -> Result<Arc<Injector>> {
    let lanes = crate::proxy::lanes::Lanes::start(crate::proxy::lanes::Lanes::default_count())?;
    tracing::info!(
        lanes = lanes.len(),
        "connections are served on one runtime per lane"
    );
    Ok(Arc::new(injector.on_lanes(lanes)))
}

/// The control socket (`warrant status`, `reload`, ...), served until the
/// returned guard is dropped.
fn serve_control(
    config: &Config,
    responder: &Arc<Responder>,
    backend: DaemonBackend,
) -> Result<AbortOnDrop> {
    let control = ControlServer::bind(
        &config.control.socket,
        config.control.admin_group.as_deref(),
        responder.clone(),
        Arc::new(backend),
    )?;
    tracing::info!(socket = %control.path().display(), "control socket ready");
    Ok(AbortOnDrop(tokio::spawn(control.serve())))
}

/// On a node (`[forward]`): the host key (made on first start, as the
/// `host` instance provider makes it), the TLS client identity toward the
/// gateway and the signer of statements.
fn node_key(config: &Config) -> Result<Option<Arc<crate::gateway::NodeKey>>> {
    if config.forward.is_none() {
        return Ok(None);
    }
    let path = config
        .daemon
        .state_dir
        .join(attest::instance::host::HOST_KEY_FILE);
    let provider = attest::instance::host::HostProvider::new(
        attest::instance::host::MACHINE_ID_PATH.into(),
        path.clone(),
        None,
        None,
    );
    provider.load_or_create_key()?;
    let der = std::fs::read(&path)
        .with_context(|| format!("cannot read the host key {}", path.display()))?;
    Ok(Some(Arc::new(crate::gateway::NodeKey::from_pkcs8(der)?)))
}

/// On a node: the forwarding to its gateway with the host `key`. Logs the
/// key, for enrollment.
fn node_forward(
    config: &Config,
    key: Option<Arc<crate::gateway::NodeKey>>,
    system_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Option<crate::proxy::NodeForward>> {
    let (Some(forward), Some(key)) = (&config.forward, key) else {
        return Ok(None);
    };
    let tls = key.client_config(system_roots, forward.ca_file.as_deref())?;
    tracing::info!(
        gateway = %forward.gateway.get_ref(),
        node_key = %key.public_text(),
        "forwarding to a gateway; enroll this node there with this key"
    );
    let node = crate::proxy::NodeForward::new(forward, key, tls)
        .context("[forward] gateway: not a URL with a host")?;
    Ok(Some(node))
}

/// The state directory, created with mode 0711: agents (any uid) must be
/// able to open trust-bundle.pem by its path, but not list the directory;
/// the CA key and the host key live in root-only files and directories
/// inside.
fn prepare_state_dir(state_dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    std::fs::set_permissions(
        state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .with_context(|| format!("cannot set the mode of {}", state_dir.display()))
}

/// The audit trail (its first record says the daemon started with
/// `origin`) and the metrics it counts in.
fn open_audit(config: &Config, origin: &str) -> (Arc<Audit>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let log = AuditLog::open(
        &config.daemon.audit_log,
        &config.audit,
        AuditLog::journal_socket(&config.audit).as_deref(),
    );
    if !log.health().writable {
        tracing::error!(
            path = %config.daemon.audit_log.display(),
            fail_closed = log.health().fail_closed,
            "the audit log cannot be written"
        );
    }
    let audit = Audit::new(log, metrics.clone());
    let mut started = crate::audit::AuditRecord::new(crate::audit::RecordKind::Daemon);
    started.message = Some(format!(
        "warrant {} started with {origin}",
        env!("CARGO_PKG_VERSION")
    ));
    audit.record(&started);
    (audit, metrics)
}

/// The budget gauges (`warrant_budget_*`) read the generation in force at
/// each scrape: the same lines `warrant status` shows. Weak: the
/// reloader's generations hold the metrics.
pub fn meter_budgets(metrics: &Metrics, reloader: &Arc<reload::Reloader>) {
    let weak = Arc::downgrade(reloader);
    metrics.set_budget_source(Box::new(move || {
        let Some(reloader) = weak.upgrade() else {
            return Vec::new();
        };
        let generation = reloader.current();
        generation.gate.budgets().map_or_else(Vec::new, |budgets| {
            budgets
                .status_of(&control::budget_plans(&generation.config))
                .lines
                .iter()
                .map(budget_gauge)
                .collect()
        })
    }));
}

/// A budget line of the ledger as the metrics' gauges.
fn budget_gauge(line: &crate::usage::BudgetLine) -> crate::metrics::BudgetGauge {
    crate::metrics::BudgetGauge {
        labels: crate::metrics::BudgetLabels {
            workload: line.workload.clone(),
            key: line.key.clone(),
            rule: line.rule.to_string(),
            budget: line.budget.key().to_owned(),
        },
        limit: line.limit,
        used: line.used,
        in_flight: line.in_flight,
    }
}

/// The metrics endpoint, when configured. Metrics are for operators; a port
/// conflict must not stop agents from being served, so a bind failure is
/// reported and the daemon goes on.
async fn serve_metrics(config: &Config, metrics: &Arc<Metrics>) -> Option<AbortOnDrop> {
    let addr = config.daemon.metrics?;
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            let addr = listener.local_addr().unwrap_or(addr);
            tracing::info!(%addr, "metrics served");
            Some(AbortOnDrop(tokio::spawn(crate::metrics::serve(
                metrics.clone(),
                listener,
            ))))
        }
        Err(error) => {
            tracing::error!(%addr, %error, "cannot serve metrics: continuing without them");
            None
        }
    }
}

/// The host's instance identity from the compiled `provider`, fetched once
/// now and refreshed in the background. Conditions that need it fail closed
/// until it is fetched. On a node, with its host key: the evidence its
/// gateway may enroll it by names that key (gcp audience, azure nonce).
async fn start_instance(
    config: &Config,
    mut provider: attest::instance::Provider,
) -> Result<(
    InstanceHandle,
    tokio::task::JoinHandle<()>,
    Option<Arc<crate::gateway::NodeKey>>,
)> {
    let node_key = node_key(config)?;
    if let Some(key) = &node_key {
        provider.bind_to_node(key.public());
    }
    let instance = InstanceHandle::default();
    if let Err(error) = provider.refresh(&instance).await {
        tracing::warn!(%error, "instance identity not available yet");
    }
    let refresher = provider.spawn_refresh(
        instance.clone(),
        Duration::from_secs(config.instance.refresh_secs),
    );
    Ok((instance, refresher, node_key))
}

/// The listeners, the eBPF programs that redirect to them and the tagger
/// that follows the cgroup tree.
struct Redirection {
    settings: RedirectSettings,
    redirector: Redirector,
    /// New selectors for the tagger (on reload).
    tagging_updates: tokio::sync::mpsc::UnboundedSender<Vec<tagging::CgroupSelector>>,
    stop_tagger: tokio::sync::oneshot::Sender<()>,
    /// The tagger retries what fails and returns only at shutdown.
    tagger: tokio::task::JoinHandle<tagging::Tagger>,
    /// How the tagger is doing, for `warrant status` (its metrics are set
    /// by the tagger itself).
    tagging: Arc<tagging::TaggerHealth>,
    /// The kernel's features and the hooks attached, for `warrant status`.
    kernel: serde_json::Value,
}

async fn start_redirection(
    config: &Config,
    compiled: &Compiled,
    metrics: &Metrics,
    inherited: Option<activation::Inherited>,
) -> Result<(Listeners, Redirection)> {
    let listeners = match inherited {
        Some(inherited) => adopt(config, inherited)?,
        None => bind(config).await?,
    };
    let settings = RedirectSettings::from_config(
        config,
        listeners.0.local_addr()?,
        listeners.1.as_ref().and_then(|l| l.local_addr().ok()),
        crate::metadata::destinations(&config.metadata),
    )?;
    let kernel = check_kernel(&settings)?;
    let redirector = Redirector::start(settings.clone())?;
    // What status reports of the kernel: the probe's findings and the
    // mechanism each hook got.
    let kernel = serde_json::json!({
        "release": kernel.release,
        "features": kernel.findings,
        "hooks": redirector.hooks(),
    });
    let tagging = Arc::new(tagging::TaggerHealth::new(Some(metrics.tagger.clone())));
    let tagger = tagging::Tagger::new(
        &settings.cgroup_root,
        compiled.selectors.clone(),
        redirector.maps(),
    )?
    .with_health(tagging.clone());
    let (stop_tagger, tagger_stopped) = tokio::sync::oneshot::channel::<()>();
    let (tagging_updates, tagging_updated) = tokio::sync::mpsc::unbounded_channel();
    let tagger = tokio::spawn(tagger.watch_with_updates(tagging_updated, async {
        let _ = tagger_stopped.await;
    }));
    Ok((
        listeners,
        Redirection {
            settings,
            redirector,
            tagging_updates,
            stop_tagger,
            tagger,
            tagging,
            kernel,
        },
    ))
}

/// Everything the request path decides with, built the same way at start
/// and on every reload (`reload.rs`).
pub fn generation_builder(
    metrics: &Arc<Metrics>,
    attestor: &Arc<Attestor>,
    budgets: &Budgets,
) -> reload::Builder {
    let (metrics, attestor, budgets) = (metrics.clone(), attestor.clone(), budgets.clone());
    Box::new(move |config: Arc<Config>, compiled: Compiled| {
        let (metrics, attestor, budgets) = (metrics.clone(), attestor.clone(), budgets.clone());
        Box::pin(
            async move { build_generation(config, compiled, &metrics, &attestor, &budgets).await },
        )
    })
}

/// Starts accepting on the listeners and tells systemd the daemon is ready.
fn serve(
    injector: &Arc<Injector>,
    (listener4, listener6): Listeners,
    settings: &RedirectSettings,
) -> Vec<tokio::task::JoinHandle<std::io::Result<()>>> {
    let mut servers = vec![tokio::spawn(injector.clone().serve(listener4))];
    if let Some(listener6) = listener6 {
        servers.push(tokio::spawn(injector.clone().serve(listener6)));
    }
    let addrs: Vec<SocketAddr> = std::iter::once(SocketAddr::V4(settings.listen4))
        .chain(settings.listen6.map(SocketAddr::V6))
        .collect();
    tracing::info!(listen = ?addrs, "ready");
    let listening: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    notify(&format!(
        "READY=1\nSTATUS=serving on {}",
        listening.join(" ")
    ));
    servers
}

/// Stops accepting, lets requests in flight finish (up to DRAIN_TIMEOUT),
/// stops the tagger and, when asked, detaches the eBPF programs.
async fn shutdown(
    servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    injector: &Injector,
    redirection: Redirection,
    detach: bool,
) -> Result<()> {
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
    let _ = redirection.stop_tagger.send(());
    let _ = redirection.tagger.await;
    if detach {
        redirection.redirector.detach()?;
        tracing::info!("eBPF programs detached");
    } else {
        tracing::info!(
            "stopping; the pinned eBPF programs keep tagged connections away from providers"
        );
    }
    Ok(())
}

/// Stops a background task when dropped (the daemon's `run` returns, or a
/// reload replaces the generation the task belongs to).
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Metering and budgets: the embedded ledger in the state directory, and
/// Redis first when configured (taken from `usage`: the ledgers are opened
/// once, and every generation reconfigures the budgets with its settings).
pub fn usage_budgets(config: &Config, usage: &mut UsageSettings) -> Result<Budgets> {
    let path = config.daemon.state_dir.join("usage.sqlite");
    let local = LocalLedger::open(&path, jiff::Timestamp::now().as_second())
        .with_context(|| format!("cannot open the usage ledger {}", path.display()))?;
    Ok(Budgets::new(
        usage.config.clone(),
        usage.prices.clone(),
        local,
        true,
        usage.redis.take(),
        Arc::new(SystemClock),
    ))
}

/// Probes the kernel before anything is attached: the daemon refuses to
/// start, naming what is missing, on a kernel without what fail-closed
/// redirection needs, rather than run half-attached. Lifts RLIMIT_MEMLOCK
/// where the kernel charges the maps to it (before Linux 5.11).
fn check_kernel(settings: &RedirectSettings) -> Result<features::Report> {
    notify("STATUS=probing the kernel's eBPF features");
    let report = features::probe(&features::ProbeOptions {
        pin_dir: settings.pin_dir.clone(),
    });
    for finding in report.concerns() {
        // The optional hooks are reported by the Redirector, from what it
        // could attach.
        if finding.required {
            tracing::warn!(%finding, "kernel feature");
        }
    }
    report.require()?;
    if report
        .get(features::Feature::BpfMemory)
        .is_some_and(|f| f.via.as_deref() == Some(features::MEMORY_VIA_MEMLOCK))
    {
        let limit = features::lift_memlock_limit();
        tracing::info!(
            limit = ?limit,
            "this kernel charges eBPF maps to RLIMIT_MEMLOCK (Linux < 5.11): raised it as far as allowed (None: unlimited)"
        );
    }
    Ok(report)
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

/// Resolves on SIGTERM or SIGINT; reloads the configuration on SIGHUP.
async fn wait_for_shutdown(reloader: &reload::Reloader) -> Result<()> {
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); return Ok(()); }
            _ = int.recv() => { tracing::info!("SIGINT"); return Ok(()); }
            _ = hup.recv() => {
                notify("RELOADING=1");
                match reloader.reload().await {
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "reload refused; the running configuration stays"),
                }
                notify("READY=1");
            }
        }
    }
}

/// Starts one compiled configuration: credentials fetched and posture
/// checks read (so that the first request does not wait on an issuer, and
/// rules that need a check do not deny for want of a result), their
/// refreshers, and the gate.
async fn build_generation(
    config: Arc<Config>,
    compiled: Compiled,
    metrics: &Arc<Metrics>,
    attestor: &Arc<Attestor>,
    budgets: &Budgets,
) -> reload::Built {
    let Compiled {
        workloads,
        posture,
        policy,
        credentials,
        usage,
        rules_name_models,
        rules_have_token_budgets,
        ..
    } = compiled;
    let credentials = Arc::new(credentials);
    {
        let metrics = metrics.clone();
        credentials.observe_refreshes(Arc::new(move |name, ok| {
            metrics.credential_refreshed(name, ok);
        }));
    }
    credentials.prefetch().await;
    let mut tasks: Vec<AbortOnDrop> = credentials
        .spawn_refresher()
        .into_iter()
        .map(AbortOnDrop)
        .collect();
    posture.refresh_all().await;
    tasks.extend(
        posture
            .clone()
            .spawn_refresher()
            .into_iter()
            .map(AbortOnDrop),
    );
    let gate = Arc::new(
        WarrantGate::new(attestor.clone(), workloads, policy, rules_name_models).with_budgets(
            budgets.reconfigured(usage.config, usage.prices),
            rules_have_token_budgets,
        ),
    );
    reload::Built {
        generation: reload::Generation {
            config,
            gate,
            credentials,
        },
        tasks,
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
