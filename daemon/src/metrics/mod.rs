//! Prometheus metrics (OpenMetrics text format, `GET /metrics` on the
//! loopback `[daemon] metrics` address), with prometheus-client.
//!
//! Label values are workload, upstream, model and credential names and
//! fixed reason words: never a credential, a path or a message. The usage
//! module counts tokens and cost with [`Metrics::add_tokens`] and
//! [`Metrics::add_cost`].

use std::{
    convert::Infallible,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub workload: String,
    pub upstream: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub workload: String,
    pub upstream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub workload: String,
    pub model: String,
    /// input | output
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub workload: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CredentialLabels {
    pub credential: String,
    /// ok | error
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub upstream: String,
    /// stream refused | left out by GOAWAY | not sent | credential refused
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// intercepted | passthrough | plain | refused
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    /// revoke | restore
    pub action: String,
    /// operator, or the rule's name
    pub actor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabels {
    pub workload: String,
    /// The ledger's key: the workload, or "workload/upstream" with
    /// `[usage] per_upstream`.
    pub key: String,
    /// The `[[policy]]` rule's index in the file.
    pub rule: String,
    /// requests_per_minute | tokens_per_hour | cost_per_day_usd
    pub budget: String,
}

/// One budget's gauges: its limit, and its use and reservations where they
/// are known locally (budgets kept in Redis have only their limit here).
#[derive(Clone, Debug)]
pub struct BudgetGauge {
    pub labels: BudgetLabels,
    pub limit: u64,
    pub used: Option<u64>,
    pub in_flight: Option<u64>,
}

/// The budgets of the rules in force, read when /metrics is scraped (see
/// [`Metrics::set_budget_source`]). The service supplies it from the
/// ledger: metrics knows no budget, only gauges.
pub type BudgetSource = Box<dyn Fn() -> Vec<BudgetGauge> + Send + Sync>;

/// Each budget's limit, use and reservations, as gauges. Set from the
/// ledger at every scrape rather than on each request: the sliding
/// windows empty with time alone, with no request to update a gauge.
#[derive(Clone, Default)]
pub struct BudgetMetrics {
    pub limit: Family<BudgetLabels, Gauge>,
    pub used: Family<BudgetLabels, Gauge>,
    pub in_flight: Family<BudgetLabels, Gauge>,
}

impl BudgetMetrics {
    /// Replaces every series with `lines` (a rule removed by a reload
    /// leaves no stale series).
    pub fn set(&self, lines: &[BudgetGauge]) {
        self.limit.clear();
        self.used.clear();
        self.in_flight.clear();
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for line in lines {
            let labels = &line.labels;
            self.limit.get_or_create(labels).set(gauge(line.limit));
            if let Some(used) = line.used {
                self.used.get_or_create(labels).set(gauge(used));
            }
            if let Some(in_flight) = line.in_flight {
                self.in_flight.get_or_create(labels).set(gauge(in_flight));
            }
        }
    }
}

/// Registers `metric` under `name` and returns it (the registry keeps a
/// clone sharing the same values).
fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// Registers a new metric of type `M` under `name` and returns it.
fn registered_default<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    registered(registry, name, help, M::default())
}

/// The tagger's health (`redirect::tagging` sets them).
#[derive(Clone, Default)]
pub struct TaggerMetrics {
    pub healthy: Gauge,
    pub errors: Counter,
    pub tagged: Gauge,
}

impl TaggerMetrics {
    fn register(r: &mut Registry) -> Self {
        TaggerMetrics {
            healthy: registered_default(
                r,
                "tagger_healthy",
                "1 while every cgroup the workload selectors name is tagged for redirection; 0 while tagging fails (it is retried)",
            ),
            errors: registered_default(
                r,
                "tagger_errors",
                "Failed tagging passes (a full map, a lost inotify watch)",
            ),
            tagged: registered_default(r, "tagged_cgroups", "Cgroups tagged for redirection"),
        }
    }
}

impl BudgetMetrics {
    fn register(r: &mut Registry) -> Self {
        BudgetMetrics {
            limit: registered_default(
                r,
                "budget_limit",
                "A policy rule's budget per workload (budget key): requests per minute, tokens per hour, or micro-USD per day for cost_per_day_usd",
            ),
            used: registered_default(
                r,
                "budget_used",
                "Used in the budget's sliding window, reservations of requests in flight included (embedded ledger only), in the budget's unit",
            ),
            in_flight: registered_default(
                r,
                "budget_in_flight",
                "The part of budget_used reserved by requests still in flight (their worst case until they end)",
            ),
        }
    }
}

/// Upstream response times from 5 ms to about 80 s (LLM calls are slow).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    pub credential_refreshes: Family<CredentialLabels, Counter>,
    pub credential_refusals: Family<CredentialLabels, Counter>,
    pub upstream_latency: Family<UpstreamLabels, Histogram, fn() -> Histogram>,
    pub upstream_retries: Family<RetryLabels, Counter>,
    pub live_connections: Gauge,
    pub connections: Family<ConnectionLabels, Counter>,
    pub audit_records: Counter,
    pub audit_dropped: Counter,
    pub rule_triggers: Family<RuleLabels, Counter>,
    pub quarantine_actions: Family<QuarantineLabels, Counter>,
    pub quarantines_active: Gauge,
    /// Whether every cgroup the selectors name is tagged, tag failures,
    /// and how many cgroups are tagged (see `redirect::tagging`).
    pub tagger: TaggerMetrics,
    pub budgets: BudgetMetrics,
    budget_source: std::sync::OnceLock<BudgetSource>,
    /// Model names seen as label values: the model comes from the agent's
    /// request body, so the number of distinct values is capped.
    models: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Distinct model label values kept; later new ones count as "other".
pub const MAX_MODELS: usize = 200;
/// Longest model label value kept (longer ones count as "other").
const MAX_MODEL_LEN: usize = 100;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("warrant");
        let r = &mut registry;
        Metrics {
            requests: registered_default(
                r,
                "requests",
                "Requests by workload, upstream and outcome",
            ),
            denials: registered_default(
                r,
                "denials",
                "Refused requests by workload, upstream and reason (policy factor, quarantine, agent_key...)",
            ),
            tokens: registered_default(
                r,
                "tokens",
                "Tokens by workload, model and kind (input, output)",
            ),
            cost: registered_default(
                r,
                "cost_usd",
                "Estimated cost in US dollars by workload and model",
            ),
            credential_refreshes: registered_default(
                r,
                "credential_refreshes",
                "Credential fetches from their providers, by credential and result",
            ),
            credential_refusals: registered_default(
                r,
                "credential_refusals",
                "Credentials an upstream refused (401, 403), by credential and what followed (refreshed, unchanged, not_refreshed, failed)",
            ),
            upstream_latency: registered(
                r,
                "upstream_latency_seconds",
                "Time from forwarding a request to the upstream's response headers",
                Family::<UpstreamLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                    latency_histogram,
                ),
            ),
            upstream_retries: registered_default(
                r,
                "upstream_retries",
                "Requests sent again: on a new connection because the upstream had not processed them, or with a fresh credential after a 401 or 403",
            ),
            live_connections: registered_default(
                r,
                "live_connections",
                "Agent connections open now",
            ),
            connections: registered_default(
                r,
                "connections",
                "Accepted connections by kind: intercepted (TLS terminated), passthrough (spliced untouched), plain (HTTP), refused (no Origin, over the cap)",
            ),
            audit_records: registered_default(r, "audit_records", "Audit records written"),
            audit_dropped: registered_default(
                r,
                "audit_dropped",
                "Audit records that could not be written",
            ),
            rule_triggers: registered_default(
                r,
                "rule_triggers",
                "Automated response rules that quarantined a workload or process",
            ),
            quarantine_actions: registered_default(
                r,
                "quarantine_actions",
                "Quarantines placed (revoke) and lifted (restore), by actor",
            ),
            quarantines_active: registered_default(r, "quarantines_active", "Quarantines in force"),
            tagger: TaggerMetrics::register(r),
            budgets: BudgetMetrics::register(r),
            budget_source: std::sync::OnceLock::new(),
            registry,
            models: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// The label value for `model`: itself while fewer than [`MAX_MODELS`]
    /// distinct models were seen, else "other", so that an agent cannot grow
    /// the exposition without bound by inventing model names.
    pub fn model_label(&self, model: &str) -> String {
        if model.len() > MAX_MODEL_LEN {
            return "other".to_owned();
        }
        let Ok(mut models) = self.models.lock() else {
            return "other".to_owned();
        };
        if models.contains(model) || models.len() < MAX_MODELS {
            models.insert(model.to_owned());
            model.to_owned()
        } else {
            "other".to_owned()
        }
    }

    /// For the usage module: tokens of one response.
    pub fn add_tokens(&self, workload: &str, model: &str, input: u64, output: u64) {
        let model = self.model_label(model);
        for (kind, n) in [("input", input), ("output", output)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        workload: workload.to_owned(),
                        model: model.clone(),
                        kind: kind.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }

    /// For the usage module: the estimated cost of one response.
    pub fn add_cost(&self, workload: &str, model: &str, usd: f64) {
        if usd > 0.0 && usd.is_finite() {
            self.cost
                .get_or_create(&CostLabels {
                    workload: workload.to_owned(),
                    model: self.model_label(model),
                })
                .inc_by(usd);
        }
    }

    /// For the credential store: one provider fetch and whether it worked.
    pub fn credential_refreshed(&self, credential: &str, ok: bool) {
        self.credential_refreshes
            .get_or_create(&CredentialLabels {
                credential: credential.to_owned(),
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// An upstream refused `credential`; `result` says what followed.
    pub fn credential_refused(&self, credential: &str, result: &str) {
        self.credential_refusals
            .get_or_create(&CredentialLabels {
                credential: credential.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn connection(&self, kind: &str) {
        self.connections
            .get_or_create(&ConnectionLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn upstream_responded(&self, upstream: &str, latency: Duration) {
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    pub fn upstream_retried(&self, upstream: &str, reason: &str) {
        self.upstream_retries
            .get_or_create(&RetryLabels {
                upstream: upstream.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Where the budget gauges are read from at each scrape (the daemon
    /// sets it once its ledger and rules exist; later calls are ignored).
    pub fn set_budget_source(&self, source: BudgetSource) {
        let _ = self.budget_source.set(source);
    }

    /// The whole exposition, OpenMetrics text.
    pub fn render(&self) -> String {
        if let Some(source) = self.budget_source.get() {
            self.budgets.set(&source());
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("cannot encode the metrics");
        }
        out
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` (any path, in fact) on `listener` until dropped.
pub async fn serve(metrics: Arc<Metrics>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut response = if req.method() == http::Method::GET {
        let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(CONTENT_TYPE),
        );
        response
    } else {
        let mut response = Response::new(Full::new(Bytes::from_static(b"GET only\n")));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
    };
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_label_values_are_capped() {
        let metrics = Metrics::new();
        for n in 0..MAX_MODELS {
            assert_eq!(metrics.model_label(&format!("m{n}")), format!("m{n}"));
        }
        assert_eq!(
            metrics.model_label("m0"),
            "m0",
            "a known model keeps its name"
        );
        assert_eq!(metrics.model_label("invented-by-an-agent"), "other");
        assert_eq!(metrics.model_label(&"x".repeat(500)), "other");
    }
}
