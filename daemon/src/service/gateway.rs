//! `warrant gateway`: the gateway, assembled from the host daemon's parts
//! minus everything about this host's processes.
//!
//! The same configuration compile, audit trail, metrics, control socket,
//! generations (gate, credentials, budgets and their refreshers) and
//! reload as `warrant run`; no eBPF, no cgroups, no local CA, no
//! attestation of local processes, so it runs unprivileged
//! (`systemd/warrant-gateway.service`, DynamicUser=yes). Its one listener
//! is `[gateway] listen`, TLS with `[gateway] certificate`, where enrolled
//! nodes' and agents' requests come in (`proxy::GatewayEntry`); who they
//! are is `gateway::Verifier`'s, rebuilt with every generation. Agents
//! that come through HTTP CONNECT get the upstream's TLS terminated with
//! a certificate of the gateway's own CA (the local CA in its state
//! directory, name-constrained to the upstream hosts, as a host daemon's).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{
    AbortOnDrop, Compiled, DaemonBackend, generation_builder, open_audit, prepare_state_dir,
    raise_open_file_limit, reload, serve_control, serve_metrics, usage_budgets,
};
use crate::{
    attest::{Attestor, InstanceHandle, MemoryExecGenerations},
    clock::SystemClock,
    config::{Config, GatewayConfig, LedgerKind},
    credentials,
    gateway::{
        AnyClientCert, FilePins, MemoryNonces, NonceStore, PINS_FILE, PinStore, RedisNonces,
        RedisPins, RemoteWorkloads, Stores, Verifier,
    },
    notify::notify,
    proxy::{GatewayEntry, Injector},
    redirect::{Intercept, RedirectError, tagging::TaggerHealth},
    response::Responder,
    swap::Swap,
    tls,
};

pub const DEFAULT_GATEWAY_CONFIG: &str = "/etc/warrant/gateway.toml";

/// Runs the gateway until SIGTERM or SIGINT; SIGHUP reloads.
pub async fn serve(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    let Some(section) = config.gateway.clone() else {
        anyhow::bail!(
            "{}: no [gateway] section (`warrant gateway` serves nodes; `warrant run` is the host daemon)",
            path.display()
        );
    };
    let mut compiled = Compiled::new(&config)?;
    tracing::info!(config = %path.display(), "starting the gateway");
    credentials::make_non_dumpable().context("cannot make the process non-dumpable")?;
    raise_open_file_limit();
    prepare_state_dir(&config.daemon.state_dir)?;
    let acceptor = acceptor(&section)?;
    let (audit, metrics) = open_audit(&config, &path.display().to_string());
    let responder = Responder::new(audit, config.response.clone(), Arc::new(SystemClock));
    let _metrics_server = serve_metrics(&config, &metrics).await;
    // No local process is attested here; the gate is built with an
    // attestor that is never asked (callers are identified by statements).
    let instance = InstanceHandle::default();
    let attestor = Arc::new(Attestor::new(
        &config.attest,
        Arc::new(MemoryExecGenerations::default()),
        instance.clone(),
    ));
    let budgets = usage_budgets(&config, &mut compiled.usage)?;
    let _redis_probe = budgets
        .spawn_probe(Duration::from_secs(10))
        .map(AbortOnDrop);
    let stores = stores(&config)?;
    let (verifier, build) = verifier(&config, stores.clone())?;
    let build = build(generation_builder(&metrics, &attestor, &budgets));
    let config = Arc::new(config);
    let (tagging_updates, _tagging_ignored) = tokio::sync::mpsc::unbounded_channel();
    let reloader = Arc::new(
        reload::Reloader::start(
            Some(PathBuf::from(path)),
            config.clone(),
            compiled,
            build,
            Arc::new(NoIntercept),
            tagging_updates,
        )
        .await,
    );
    let injector = Arc::new(Injector::for_gateway(
        &config,
        leafs(&config)?,
        reloader.generation.clone(),
        responder.clone(),
        &tls::system_roots(),
    )?);
    let backend = DaemonBackend {
        reloader: reloader.clone(),
        instance,
        attestor,
        tagging: Arc::new(TaggerHealth::new(None)),
        // No eBPF in a gateway: no kernel features to report.
        kernel: serde_json::Value::Null,
        pins: Some(stores.pins),
    };
    let _control_server = serve_control(&config, &responder, backend)?;
    let entry = Arc::new(GatewayEntry {
        tls: acceptor,
        verifier,
        max_body_bytes: section.max_body_bytes,
        routes: section
            .routes
            .iter()
            .map(|(prefix, host)| (prefix.clone(), host.get_ref().to_ascii_lowercase()))
            .collect(),
        token_header: http::HeaderName::from_bytes(section.token_header.as_bytes())
            .context("[gateway] token_header")?,
    });
    let server = listen(&section, &injector, entry).await?;
    super::wait_for_shutdown(&reloader).await?;
    notify("STOPPING=1\nSTATUS=finishing requests in flight");
    server.abort();
    if !injector.drain(super::DRAIN_TIMEOUT).await {
        tracing::warn!("connections still open at shutdown: closed");
    }
    Ok(())
}

/// The verifier, and how to wrap the generation builder so that every
/// generation rebuilds it.
fn verifier(
    config: &Config,
    stores: Stores,
) -> Result<(
    Arc<Swap<Verifier>>,
    impl FnOnce(reload::Builder) -> reload::Builder,
)> {
    // Compiled once more for the first verifier: `compiled`'s go to the
    // first generation, which the builder below makes from them.
    let workloads = RemoteWorkloads::compile(&config.workloads, &config.source)?;
    let first =
        Verifier::new(config, workloads, stores.clone())?.context("no [gateway] section")?;
    let verifier = Arc::new(Swap::new(Arc::new(first)));
    let swap = verifier.clone();
    Ok((verifier, move |inner| with_verifier(inner, swap, stores)))
}

/// The CA that terminates agents' TLS inside HTTP CONNECT tunnels: the
/// local CA of the state directory (`warrant ca export` prints it),
/// constrained to the upstream hosts.
fn leafs(config: &Config) -> Result<Arc<tls::LeafCache>> {
    let hosts: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| u.host.get_ref().clone())
        .collect();
    let ca = tls::LocalCa::load_or_create(&config.daemon.state_dir, &hosts)
        .context("the gateway's CA for HTTP CONNECT")?;
    Ok(Arc::new(tls::LeafCache::new(Arc::new(ca))))
}

/// Binds `[gateway] listen`, serves it and tells systemd the gateway is
/// ready.
async fn listen(
    section: &GatewayConfig,
    injector: &Arc<Injector>,
    entry: Arc<GatewayEntry>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(section.listen)
        .await
        .with_context(|| format!("cannot listen on {}", section.listen))?;
    let listening = listener.local_addr()?;
    let server = tokio::spawn(injector.clone().serve_gateway(listener, entry));
    tracing::info!(listen = %listening, "gateway ready");
    notify(&format!("READY=1\nSTATUS=gateway serving on {listening}"));
    Ok(server)
}

/// The TLS acceptor: the gateway's certificate, client certificates asked
/// for (and judged after the handshake, `gateway::peer`), ALPN h2 and
/// http/1.1.
fn acceptor(section: &GatewayConfig) -> Result<TlsAcceptor> {
    let cert_path = section.certificate.get_ref();
    let key_path = section.key.get_ref();
    let pem = std::fs::read(cert_path)
        .with_context(|| format!("cannot read [gateway] certificate {}", cert_path.display()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: bad PEM", cert_path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no PEM CERTIFICATE block", cert_path.display());
    }
    let pem = std::fs::read(key_path)
        .with_context(|| format!("cannot read [gateway] key {}", key_path.display()))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{}: bad PEM", key_path.display()))?
        .with_context(|| format!("{}: no private key", key_path.display()))?;
    let mut config = ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(AnyClientCert::new())
        .with_single_cert(chain, key)
        .context("the [gateway] certificate and key do not go together")?;
    config.alpn_protocols = tls::ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Nonces in Redis when the gateways share a Redis ledger (so a statement
/// accepted by one gateway is refused by the others, and a restart forgets
/// none), else in memory; and since when the store remembers (statements
/// signed earlier are refused: an empty memory cannot rule out their
/// replay).
fn nonce_store(config: &Config) -> Result<(Arc<dyn NonceStore>, i64)> {
    match (&config.usage.ledger, &config.usage.redis_url) {
        (LedgerKind::Redis, Some(url)) => {
            let timeout = Duration::from_millis(config.usage.redis_timeout_ms.max(100));
            let store = RedisNonces::new(url, timeout).context("[usage] redis_url")?;
            Ok((Arc::new(store), i64::MIN))
        }
        _ => Ok((
            Arc::new(MemoryNonces::default()),
            jiff::Timestamp::now().as_second(),
        )),
    }
}

/// What the verifiers of every generation share: the replay cache and the
/// enrollment pins.
fn stores(config: &Config) -> Result<Stores> {
    let (nonces, not_before) = nonce_store(config)?;
    Ok(Stores {
        nonces,
        pins: pin_store(config)?,
        not_before,
    })
}

/// Enrollment pins (`gateway::pins`) in Redis when the gateways share a
/// Redis ledger, else in a file of the state directory.
fn pin_store(config: &Config) -> Result<Arc<dyn PinStore>> {
    match (&config.usage.ledger, &config.usage.redis_url) {
        (LedgerKind::Redis, Some(url)) => {
            let timeout = Duration::from_millis(config.usage.redis_timeout_ms.max(100));
            Ok(Arc::new(
                RedisPins::new(url, timeout).context("[usage] redis_url")?,
            ))
        }
        _ => Ok(Arc::new(FilePins::open(
            &config.daemon.state_dir.join(PINS_FILE),
        )?)),
    }
}

/// The generation builder, also rebuilding the verifier (enrolled nodes,
/// gateway workloads) from each configuration it builds.
fn with_verifier(
    inner: reload::Builder,
    verifier: Arc<Swap<Verifier>>,
    stores: Stores,
) -> reload::Builder {
    Box::new(move |config: Arc<Config>, mut compiled: Compiled| {
        let workloads: RemoteWorkloads = std::mem::take(&mut compiled.remote_workloads);
        match Verifier::new(&config, workloads, stores.clone()) {
            Ok(Some(new)) => verifier.set(Arc::new(new)),
            Ok(None) => {}
            // A JWKS file that cannot be read now: the callers verified
            // so far stay as they were rather than none being served.
            Err(error) => {
                tracing::error!(%error, "reload: the gateway's callers stay as they were");
            }
        }
        inner(config, compiled)
    })
}

/// A gateway intercepts nothing: reloads have no ports to apply.
struct NoIntercept;

impl Intercept for NoIntercept {
    fn set_intercept(&self, _ports: &[u16], _block_quic: bool) -> Result<(), RedirectError> {
        Ok(())
    }
}
