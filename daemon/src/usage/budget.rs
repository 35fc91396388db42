//! Budgets: admission reserves a request's worst case, the response's
//! metered usage settles it.
//!
//! Per budget key (the workload, or workload/upstream with
//! `[usage] per_upstream`) and per limit of the rule that allowed the
//! request: requests per minute, tokens per hour, cost per day, each a
//! sliding window (`window`). Admission checks and reserves in one atomic
//! step (a mutex for the embedded ledger, a Lua script for Redis): the sum
//! of what is admitted never passes a limit *as reserved*. The overshoot
//! bound is therefore what the reservations under-estimate: for each request
//! in flight, `max(0, actual input - estimated input)` plus, for a request
//! without an output cap, `max(0, actual output - default_max_output_tokens)`
//! (a request with a cap cannot pass it: providers enforce it). With N
//! requests in flight that is at most N times the largest such error; it is
//! zero when every request sets its cap and input estimates hold.
//!
//! Settling: a complete response is charged what its usage said; an error
//! response (non-2xx) is charged the request but no tokens; a response whose
//! usage is unknown, or that never came, is charged as reserved; a stream
//! cut off before its final usage is charged the input seen and at least
//! the reserved output (the provider may have generated up to the cap).
//! Every case but the first is flagged in the usage record.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};

use super::observer::{ResponseObserver, SessionObserver};
use super::session::{SessionMeter, SessionParts};
use super::{
    ledger::{KeyWindows, LocalLedger, OverLimit, Placed},
    meter::{Meter, Outcome, Reading, Usage},
    price::PriceTable,
    redis::RedisLedger,
    request::worst_case,
    window::{self, Amounts, SERIES, Series, limits_of},
};
use crate::{
    clock::Clock,
    config::{RedisUnreachable, UsageConfig},
    policy::RuleLimits,
    provider::{self, Scheme, UsageFormat},
};

/// Why admission refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetRefusal {
    OverBudget {
        key: String,
        over: OverLimit,
    },
    /// The rule has a cost budget and the model has no price.
    Unpriced {
        model: Option<String>,
    },
    /// Redis is unreachable and `redis_unreachable = "fail-closed"`.
    LedgerUnavailable {
        reason: String,
    },
}

impl BudgetRefusal {
    /// The message for the agent: names the budget and the wait.
    pub fn message(&self) -> String {
        match self {
            BudgetRefusal::OverBudget { key, over } => {
                let (used, limit) = match over.series {
                    Series::CostPerDay => (
                        format!("${:.6}", over.used as f64 / 1e6),
                        format!("${:.6}", over.limit as f64 / 1e6),
                    ),
                    _ => (over.used.to_string(), over.limit.to_string()),
                };
                let wait = match over.retry_after {
                    Some(d) => format!("retry after {} s", d.as_secs()),
                    None => {
                        "this request alone is larger than the budget (lower max_tokens)".to_owned()
                    }
                };
                format!(
                    "budget {} of {key:?} exhausted: {used} used of {limit} in the sliding window (reservations of requests in flight included); {wait}",
                    over.series.key()
                )
            }
            BudgetRefusal::Unpriced { model } => format!(
                "this workload has a cost_per_day_usd budget and model {} has no [[price]]; add one",
                model.as_deref().unwrap_or("(none named)")
            ),
            BudgetRefusal::LedgerUnavailable { reason } => {
                format!("the shared budget store is unreachable ({reason}) and budgets fail closed")
            }
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            BudgetRefusal::OverBudget { .. } => StatusCode::TOO_MANY_REQUESTS,
            BudgetRefusal::Unpriced { .. } => StatusCode::FORBIDDEN,
            BudgetRefusal::LedgerUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Retry-After for a 429 (the window length when it never fits).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BudgetRefusal::OverBudget { over, .. } => Some(
                over.retry_after
                    .unwrap_or(Duration::from_secs(over.series.window_secs() as u64)),
            ),
            _ => None,
        }
    }
}

/// What one request was, for the audit log (given to every `UsageSink`).
#[derive(Debug, Clone, Serialize)]
pub struct UsageRecord {
    pub workload: String,
    pub upstream: String,
    pub provider: Scheme,
    pub path: String,
    pub model: Option<String>,
    /// What was charged (what the response said, or the reservation).
    pub usage: Usage,
    pub cost_micro_usd: u64,
    pub reserved: Usage,
    pub outcome: Outcome,
    /// The response did not end normally (agent gone, upstream error).
    pub cut_off: bool,
    /// The model has no price: cost 0.
    pub unpriced: bool,
}

pub trait UsageSink: Send + Sync {
    fn record(&self, record: &UsageRecord);
}

/// Counters for status and metrics.
#[derive(Debug, Default)]
struct Counters {
    responses: AtomicU64,
    counted: AtomicU64,
    unknown: AtomicU64,
    cut_off: AtomicU64,
    error_responses: AtomicU64,
    over_budget: AtomicU64,
    ledger_unavailable: AtomicU64,
}

/// The budgets' state for `warrant status` (every field is documented in
/// the README's status section).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BudgetStatus {
    /// sqlite | memory | redis
    pub ledger: std::borrow::Cow<'static, str>,
    /// With Redis: whether the last call reached it.
    pub redis_reachable: Option<bool>,
    /// With Redis down and `redis_unreachable = "local"`: budgets are per
    /// host right now.
    pub local_fallback_active: bool,
    pub recovered_in_flight: u64,
    pub ledger_write_errors: u64,
    pub responses: u64,
    pub counted: u64,
    pub unknown: u64,
    pub cut_off: u64,
    pub error_responses: u64,
    pub over_budget: u64,
    pub ledger_unavailable: u64,
    /// One line per workload (budget key) and budget of a rule in force.
    #[serde(default)]
    pub lines: Vec<BudgetLine>,
    /// Per key, used in each window (embedded ledger only): requests in the
    /// last minute, tokens in the last hour, micro-USD in the last day.
    /// Kept in the JSON (scripts and tests read it; a field is never
    /// removed); `lines` is what `warrant status` shows.
    #[serde(default)]
    pub windows: Vec<(String, Amounts)>,
}

/// A `[[policy]]` rule with budgets, as status asks about it (from the
/// configuration in force).
#[derive(Debug, Clone)]
pub struct BudgetPlan {
    pub workload: String,
    /// Its index in the file's `[[policy]]` list.
    pub rule: usize,
    /// The rule's upstreams (the keys with `[usage] per_upstream`).
    pub upstreams: Vec<String>,
    pub limits: RuleLimits,
}

/// One budget of one rule for one budget key. Amounts are in the budget's
/// unit: requests, tokens, or micro-USD for `cost_per_day_usd`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BudgetLine {
    pub workload: String,
    /// The ledger's key: the workload, or "workload/upstream" with
    /// `[usage] per_upstream`.
    pub key: String,
    /// The rule's index in the file's `[[policy]]` list.
    pub rule: usize,
    pub budget: Series,
    pub limit: u64,
    /// In the sliding window, reservations of requests in flight included
    /// (None: kept in Redis, not read by status).
    pub used: Option<u64>,
    /// The part of `used` reserved by requests still in flight (their
    /// worst case, settled to what they use when they end).
    pub in_flight: Option<u64>,
    /// What a default request takes from this budget: 1 request;
    /// `[usage] default_max_output_tokens` tokens; for cost 1 micro-USD
    /// (any room: a request's cost depends on its model).
    pub default_request: u64,
    /// When a default request fits.
    pub room: Room,
}

/// When a budget has room for a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "when", rename_all = "snake_case")]
pub enum Room {
    Now,
    /// Once enough of the window's oldest amounts have left it.
    After {
        secs: u64,
    },
    /// A default request alone is larger than the limit.
    Never,
    /// Kept in Redis: not read by status.
    Unknown,
}

struct Shared {
    // Shared by every generation of a reloaded config: the windows, the
    // Redis connection, the counters and the sinks outlive a reload.
    local: Arc<LocalLedger>,
    local_kind: &'static str,
    redis: Option<Arc<RedisLedger>>,
    redis_down: Arc<AtomicBool>,
    counters: Arc<Counters>,
    sinks: Arc<Mutex<Vec<Arc<dyn UsageSink>>>>,
    clock: Arc<dyn Clock>,
    // Replaced by a reload.
    on_unreachable: RedisUnreachable,
    prices: PriceTable,
    settings: UsageConfig,
}

impl Shared {
    fn now_secs(&self) -> i64 {
        self.clock.now().as_second()
    }
}

#[derive(Clone)]
pub struct Budgets {
    shared: Arc<Shared>,
}

/// One request as admission sees it.
#[derive(Debug, Clone, Copy)]
pub struct AdmitRequest<'a> {
    pub workload: &'a str,
    pub upstream: &'a str,
    /// The upstream's API: how its responses report usage.
    pub scheme: Scheme,
    /// The request as the provider parse read it (the same parse policy
    /// decided on).
    pub request: &'a provider::Request,
    pub limits: RuleLimits,
}

impl Budgets {
    /// `local` is the embedded ledger (`LocalLedger::open` on
    /// `<state_dir>/usage.sqlite`, or in memory); `redis`, if configured, is
    /// asked first.
    pub fn new(
        settings: UsageConfig,
        prices: PriceTable,
        local: LocalLedger,
        durable: bool,
        redis: Option<RedisLedger>,
        clock: Arc<dyn Clock>,
    ) -> Budgets {
        Budgets {
            shared: Arc::new(Shared {
                local: Arc::new(local),
                local_kind: if durable { "sqlite" } else { "memory" },
                redis: redis.map(Arc::new),
                on_unreachable: settings.redis_unreachable,
                redis_down: Arc::new(AtomicBool::new(false)),
                clock,
                prices,
                settings,
                counters: Arc::new(Counters::default()),
                sinks: Arc::new(Mutex::new(Vec::new())),
            }),
        }
    }

    /// For a config reload: the same ledgers, windows, counters and sinks
    /// (nothing spent is forgotten, reservations in flight settle into the
    /// same windows), with the new settings and prices. `ledger` and
    /// `redis_url` are not changed by a reload: they need a restart, and a
    /// change is logged.
    pub fn reconfigured(&self, settings: UsageConfig, prices: PriceTable) -> Budgets {
        let s = &self.shared;
        if settings.ledger != s.settings.ledger || settings.redis_url != s.settings.redis_url {
            tracing::warn!(
                "[usage] ledger and redis_url take effect at the next restart, not on reload"
            );
        }
        Budgets {
            shared: Arc::new(Shared {
                local: s.local.clone(),
                local_kind: s.local_kind,
                redis: s.redis.clone(),
                redis_down: s.redis_down.clone(),
                counters: s.counters.clone(),
                sinks: s.sinks.clone(),
                clock: s.clock.clone(),
                on_unreachable: settings.redis_unreachable,
                prices,
                settings: UsageConfig {
                    ledger: s.settings.ledger,
                    redis_url: s.settings.redis_url.clone(),
                    ..settings
                },
            }),
        }
    }

    /// Adds a receiver of every usage record (the audit log, metrics).
    pub fn add_sink(&self, sink: Arc<dyn UsageSink>) {
        self.shared
            .sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(sink);
    }

    pub fn settings(&self) -> &UsageConfig {
        &self.shared.settings
    }

    /// Reserves the request's worst case against its rule's limits and
    /// returns the observer that settles it when the response ends.
    pub async fn admit(&self, req: AdmitRequest<'_>) -> Result<UsageObserver, BudgetRefusal> {
        let s = &self.shared;
        let model = req.request.model.clone();
        // Generation always has a request body; a request without one (GET
        // /v1/models, a DELETE) produces no tokens and reserves none.
        let worst = if req.request.body_len == 0 {
            Usage::default()
        } else {
            worst_case(req.request, &s.settings)
        };
        let limits = limits_of(&req.limits);
        let price = model.as_deref().and_then(|m| s.prices.price(m));
        if limits[Series::CostPerDay.index()].is_some() && price.is_none() {
            return Err(BudgetRefusal::Unpriced { model });
        }
        let want: Amounts = [1, worst.total(), price.map_or(0, |p| p.micro_usd(&worst))];
        let key = self.key(req.workload, req.upstream);
        let placement = if limits.iter().all(Option::is_none) {
            Placement::None
        } else {
            self.reserve(&key, want, limits).await?
        };
        Ok(UsageObserver {
            shared: s.clone(),
            provider: req.scheme,
            format: provider::api(req.scheme).usage(),
            workload: req.workload.to_owned(),
            upstream: req.upstream.to_owned(),
            path: req.request.path.clone(),
            model,
            worst,
            meter: None,
            reservation: Some(Reservation {
                shared: s.clone(),
                key,
                placement,
                reserved: want,
            }),
            limits,
            request_sink: None,
        })
    }

    pub(super) async fn reserve(
        &self,
        key: &str,
        want: Amounts,
        limits: [Option<u64>; 3],
    ) -> Result<Placement, BudgetRefusal> {
        let s = &self.shared;
        let now = s.now_secs();
        let over = |over: OverLimit| {
            s.counters.over_budget.fetch_add(1, Ordering::Relaxed);
            BudgetRefusal::OverBudget {
                key: key.to_owned(),
                over,
            }
        };
        if let Some(redis) = &s.redis {
            match redis.reserve(key, now, want, limits).await {
                Ok(result) => {
                    if s.redis_down.swap(false, Ordering::Relaxed) {
                        tracing::info!("redis reachable again: budgets are fleet-wide again");
                    }
                    return result.map(Placement::Redis).map_err(over);
                }
                Err(error) => {
                    if !s.redis_down.swap(true, Ordering::Relaxed) {
                        tracing::error!(%error, fallback = ?s.on_unreachable, "redis unreachable");
                    }
                    if s.on_unreachable == RedisUnreachable::FailClosed {
                        s.counters
                            .ledger_unavailable
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(BudgetRefusal::LedgerUnavailable {
                            reason: error.to_string(),
                        });
                    }
                }
            }
        }
        s.local
            .reserve(key, now, want, limits)
            .map(Placement::Local)
            .map_err(over)
    }

    /// Gives `record` (a session's, at its end) to every sink and to
    /// `extra`, and counts it.
    pub(super) fn record(&self, record: &UsageRecord, extra: Option<&Arc<dyn UsageSink>>) {
        let c = &self.shared.counters;
        c.responses.fetch_add(1, Ordering::Relaxed);
        match record.outcome {
            Outcome::Counted => c.counted.fetch_add(1, Ordering::Relaxed),
            Outcome::ErrorResponse => c.error_responses.fetch_add(1, Ordering::Relaxed),
            Outcome::Unknown { .. } => c.unknown.fetch_add(1, Ordering::Relaxed),
        };
        let sinks = self
            .shared
            .sinks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for sink in sinks.iter().chain(extra) {
            sink.record(record);
        }
    }

    /// The ledger's key for a workload's request to `upstream`.
    fn key(&self, workload: &str, upstream: &str) -> String {
        if self.shared.settings.per_upstream {
            format!("{workload}/{upstream}")
        } else {
            workload.to_owned()
        }
    }

    /// Counters, without budget lines.
    pub fn status(&self) -> BudgetStatus {
        self.status_of(&[])
    }

    /// Counters and one line per key and budget of each of `plans`.
    pub fn status_of(&self, plans: &[BudgetPlan]) -> BudgetStatus {
        let s = &self.shared;
        let c = &s.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let down = s.redis_down.load(Ordering::Relaxed);
        let now = s.now_secs();
        let keys = s.local.keys();
        BudgetStatus {
            ledger: if s.redis.is_some() {
                "redis".into()
            } else {
                s.local_kind.into()
            },
            redis_reachable: s.redis.as_ref().map(|_| !down),
            local_fallback_active: s.redis.is_some()
                && down
                && s.on_unreachable == RedisUnreachable::Local,
            recovered_in_flight: s.local.recovered_in_flight(),
            ledger_write_errors: s.local.write_errors(),
            responses: load(&c.responses),
            counted: load(&c.counted),
            unknown: load(&c.unknown),
            cut_off: load(&c.cut_off),
            error_responses: load(&c.error_responses),
            over_budget: load(&c.over_budget),
            ledger_unavailable: load(&c.ledger_unavailable),
            lines: plans
                .iter()
                .flat_map(|plan| self.lines(plan, &keys, now))
                .collect(),
            windows: keys
                .iter()
                .map(|k| (k.clone(), s.local.used(k, now)))
                .collect(),
        }
    }

    /// `plan`'s lines: for each of its keys (those the ledger holds, and
    /// those its upstreams name), each budget it sets.
    fn lines(&self, plan: &BudgetPlan, ledger_keys: &[String], now: i64) -> Vec<BudgetLine> {
        let mut keys = vec![];
        if self.shared.settings.per_upstream {
            let prefix = format!("{}/", plan.workload);
            keys.extend(
                ledger_keys
                    .iter()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned(),
            );
            keys.extend(plan.upstreams.iter().map(|u| self.key(&plan.workload, u)));
            keys.sort();
            keys.dedup();
        } else {
            keys.push(plan.workload.clone());
        }
        let limits = limits_of(&plan.limits);
        let mut lines = Vec::new();
        for key in keys {
            let windows = self.shared.local.key_windows(&key, now).unwrap_or_default();
            for series in SERIES {
                let Some(limit) = limits[series.index()] else {
                    continue;
                };
                lines.push(self.line(plan, &key, series, limit, &windows, now));
            }
        }
        lines
    }

    fn line(
        &self,
        plan: &BudgetPlan,
        key: &str,
        series: Series,
        limit: u64,
        windows: &KeyWindows,
        now: i64,
    ) -> BudgetLine {
        let default_request = match series {
            Series::RequestsPerMinute => 1,
            Series::TokensPerHour => self.shared.settings.default_max_output_tokens,
            Series::CostPerDay => 1,
        };
        let i = series.index();
        let buckets = &windows.buckets[i];
        // The Redis ledger's windows are on the server; the local ones are
        // only its fallback.
        let local = self.shared.redis.is_none();
        let room = match window::check(series, buckets, now, default_request, limit) {
            _ if !local => Room::Unknown,
            Ok(()) => Room::Now,
            Err(Some(wait)) => Room::After {
                secs: wait.as_secs(),
            },
            Err(None) => Room::Never,
        };
        BudgetLine {
            workload: plan.workload.clone(),
            key: key.to_owned(),
            rule: plan.rule,
            budget: series,
            limit,
            used: local.then(|| window::used(buckets, series.bucket_at(now))),
            in_flight: local.then_some(windows.in_flight[i]),
            default_request,
            room,
        }
    }

    /// Probes Redis every `every` (None without Redis), so that status shows
    /// an outage and a recovery without waiting for a request.
    pub fn spawn_probe(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        self.shared.redis.as_ref()?;
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                this.probe().await;
            }
        }))
    }

    /// Probes Redis (for status after an outage, without waiting for a
    /// request). No-op without Redis.
    pub async fn probe(&self) {
        if let Some(redis) = &self.shared.redis {
            let up = redis.ping().await;
            self.shared.redis_down.store(!up, Ordering::Relaxed);
        }
    }
}

pub(super) enum Placement {
    /// The rule has no limits: nothing reserved.
    None,
    Local(Placed),
    Redis(Placed),
}

/// A reserved worst case, settled exactly once: by `settle`, or as reserved
/// if dropped.
pub(super) struct Reservation {
    shared: Arc<Shared>,
    key: String,
    placement: Placement,
    reserved: Amounts,
}

impl Reservation {
    /// `reserved`, placed by [`Budgets::reserve`] under `key`.
    pub(super) fn new(
        budgets: &Budgets,
        key: &str,
        placement: Placement,
        reserved: Amounts,
    ) -> Reservation {
        Reservation {
            shared: budgets.shared.clone(),
            key: key.to_owned(),
            placement,
            reserved,
        }
    }

    pub(super) fn settle(mut self, actual: Amounts) {
        let placement = std::mem::replace(&mut self.placement, Placement::None);
        let delta: [i64; 3] = std::array::from_fn(|i| actual[i] as i64 - self.reserved[i] as i64);
        match placement {
            Placement::None => {}
            Placement::Local(placed) => {
                self.shared
                    .local
                    .settle(&self.key, placed, self.reserved, actual)
            }
            Placement::Redis(placed) => {
                if delta == [0; 3] {
                    return;
                }
                // Settling must not wait on the response path (this runs
                // in a body's drop); a failure leaves the reservation
                // charged in full, which errs towards refusing.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                let shared = self.shared.clone();
                let key = self.key.clone();
                runtime.spawn(async move {
                    if let Some(redis) = &shared.redis
                        && let Err(error) = redis.settle(&key, placed, delta).await
                    {
                        tracing::warn!(%error, key, "cannot settle a reservation in redis; it stays charged as reserved");
                    }
                });
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Placement::Local(placed) = std::mem::replace(&mut self.placement, Placement::None) {
            // Settling as reserved only clears the in-flight row.
            self.shared
                .local
                .settle(&self.key, placed, self.reserved, self.reserved);
        }
    }
}

/// Meters one admitted request's response and settles its reservation.
pub struct UsageObserver {
    shared: Arc<Shared>,
    provider: Scheme,
    format: &'static UsageFormat,
    workload: String,
    upstream: String,
    path: String,
    model: Option<String>,
    worst: Usage,
    meter: Option<Meter>,
    reservation: Option<Reservation>,
    /// The rule's limits, for a session's charges.
    limits: [Option<u64>; 3],
    /// Told this request's usage when it ends (its audit line).
    request_sink: Option<Arc<dyn UsageSink>>,
}

impl UsageObserver {
    /// Also reports this request's usage to `sink` when the response ends.
    pub fn with_sink(mut self, sink: Arc<dyn UsageSink>) -> UsageObserver {
        self.request_sink = Some(sink);
        self
    }
}

impl ResponseObserver for UsageObserver {
    fn head(&mut self, status: StatusCode, headers: &HeaderMap) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let mut meter = Meter::new(
            self.format,
            status.as_u16(),
            content_type,
            &self.path,
            self.shared.settings.max_json_bytes,
        );
        if let Some(usage) = self.format.header_usage.and_then(|read| read(headers)) {
            meter.seed(usage);
        }
        self.meter = Some(meter);
    }

    fn data(&mut self, chunk: &bytes::Bytes) {
        if let Some(meter) = &mut self.meter {
            meter.feed(chunk);
        }
    }

    fn into_session(mut self: Box<Self>) -> Option<Box<dyn SessionObserver>> {
        let reservation = self.reservation.take()?;
        let key = reservation.key.clone();
        // The upgrade itself: one request, no tokens (the session's come
        // message by message).
        reservation.settle([1, 0, 0]);
        let budgets = Budgets {
            shared: self.shared.clone(),
        };
        let price = self
            .model
            .as_deref()
            .and_then(|m| self.shared.prices.price(m));
        Some(Box::new(SessionMeter::new(
            budgets,
            SessionParts {
                key,
                limits: self.limits,
                scheme: self.provider,
                price,
                workload: std::mem::take(&mut self.workload),
                upstream: std::mem::take(&mut self.upstream),
                path: std::mem::take(&mut self.path),
                model: self.model.take(),
                sink: self.request_sink.take(),
            },
        )))
    }

    fn release(mut self: Box<Self>) {
        // Nothing reached the upstream: the request is uncounted, as if it
        // had never been admitted (requests per minute included).
        if let Some(reservation) = self.reservation.take() {
            reservation.settle([0, 0, 0]);
        }
        tracing::debug!(workload = %self.workload, upstream = %self.upstream, path = %self.path, "refused before forwarding: reservation released");
    }

    fn end(mut self: Box<Self>, complete: bool) {
        let s = self.shared.clone();
        let c = &s.counters;
        c.responses.fetch_add(1, Ordering::Relaxed);
        let worst = self.worst;
        let (usage, outcome, model) = charge(self.meter.take().map(Meter::finish), worst, complete);
        match outcome {
            Outcome::Counted => c.counted.fetch_add(1, Ordering::Relaxed),
            Outcome::ErrorResponse => c.error_responses.fetch_add(1, Ordering::Relaxed),
            Outcome::Unknown { .. } => c.unknown.fetch_add(1, Ordering::Relaxed),
        };
        if !complete {
            c.cut_off.fetch_add(1, Ordering::Relaxed);
        }
        let model = model.or(self.model.take());
        let price = model.as_deref().and_then(|m| s.prices.price(m));
        let cost = price.map_or(0, |p| p.micro_usd(&usage));
        if let Some(reservation) = self.reservation.take() {
            reservation.settle([1, usage.total(), cost]);
        }
        let record = UsageRecord {
            workload: std::mem::take(&mut self.workload),
            upstream: std::mem::take(&mut self.upstream),
            provider: self.provider,
            path: std::mem::take(&mut self.path),
            model,
            usage,
            cost_micro_usd: cost,
            reserved: worst,
            outcome,
            cut_off: !complete,
            unpriced: price.is_none(),
        };
        log_usage(&record, worst);
        let sinks = s.sinks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for sink in sinks.iter().chain(self.request_sink.as_ref()) {
            sink.record(&record);
        }
    }
}

/// What a response is charged (see the module comment): its usage, the
/// meter's outcome and the model the response named.
fn charge(
    reading: Option<Reading>,
    worst: Usage,
    complete: bool,
) -> (Usage, Outcome, Option<String>) {
    let Some(reading) = reading else {
        let outcome = Outcome::Unknown {
            reason: "no response from the upstream".to_owned(),
        };
        return (worst, outcome, None);
    };
    let usage = match (&reading.outcome, reading.usage) {
        (Outcome::ErrorResponse, _) => Usage::default(),
        (Outcome::Counted, Some(seen)) if complete || reading.output_final => seen,
        // Cut off before the final count: what was seen, and at least the
        // reserved output.
        (Outcome::Counted, Some(seen)) => Usage {
            input_tokens: if seen.input_tokens > 0 {
                seen.input_tokens
            } else {
                worst.input_tokens
            },
            cached_input_tokens: seen.cached_input_tokens,
            output_tokens: seen.output_tokens.max(worst.output_tokens),
        },
        _ => worst,
    };
    (usage, reading.outcome, reading.model)
}

/// The log line of a settled request: a warning when its usage was unknown
/// and something was at stake.
fn log_usage(record: &UsageRecord, worst: Usage) {
    let usage = record.usage;
    let cost = record.cost_micro_usd;
    match &record.outcome {
        // Nothing was at stake (a request without a body): not worth a
        // warning, still counted as unknown in status.
        Outcome::Unknown { reason } if worst.total() == 0 => tracing::debug!(
            workload = %record.workload, upstream = %record.upstream, path = %record.path,
            %reason, "usage unknown (a request without a body)"
        ),
        Outcome::Unknown { reason } => tracing::warn!(
            workload = %record.workload, upstream = %record.upstream, path = %record.path,
            model = ?record.model, %reason, cut_off = record.cut_off,
            "usage unknown: charged as reserved"
        ),
        _ => tracing::debug!(
            workload = %record.workload, upstream = %record.upstream, model = ?record.model,
            input = usage.input_tokens, cached = usage.cached_input_tokens,
            output = usage.output_tokens, cost_micro_usd = cost, cut_off = record.cut_off,
            "usage"
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::ManualClock;

    fn budgets() -> Budgets {
        Budgets::new(
            UsageConfig::default(),
            PriceTable::new(&[], true).unwrap(),
            LocalLedger::in_memory(),
            false,
            None,
            Arc::new(ManualClock::new(
                jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            )),
        )
    }

    /// A request to /v1/models with `body` (the model it names is read).
    fn parsed(body: &[u8]) -> provider::Request {
        let uri: http::Uri = "/v1/models".parse().unwrap();
        let headers = HeaderMap::new();
        let head = provider::RequestHead {
            method: &http::Method::POST,
            uri: &uri,
            headers: &headers,
        };
        provider::api(Scheme::OpenAi).parse(&head, body).unwrap()
    }

    fn request(parsed: &provider::Request, limits: RuleLimits) -> AdmitRequest<'_> {
        AdmitRequest {
            workload: "w",
            upstream: "api.openai.com",
            scheme: Scheme::OpenAi,
            request: parsed,
            limits,
        }
    }

    #[tokio::test]
    async fn a_request_without_a_body_reserves_and_is_charged_no_tokens() {
        let b = budgets();
        let limits = RuleLimits {
            tokens_per_hour: Some(10),
            ..RuleLimits::default()
        };
        let observer = b.admit(request(&parsed(b""), limits)).await.unwrap();
        Box::new(observer).end(true);
        assert_eq!(b.status().windows, vec![("w".to_owned(), [1, 0, 0])]);
        assert_eq!(b.status().unknown, 1);
    }

    #[tokio::test]
    async fn a_reload_keeps_what_was_spent_and_takes_the_new_prices() {
        let b = budgets();
        let limits = RuleLimits {
            requests_per_minute: Some(1),
            ..RuleLimits::default()
        };
        let held = b
            .admit(request(&parsed(br#"{"model":"m"}"#), limits))
            .await
            .unwrap();
        let config = vec![crate::config::PriceConfig {
            model: "m".into(),
            input: 1.0,
            output: 1.0,
            cached_input: None,
        }];
        let reloaded = b.reconfigured(
            UsageConfig::default(),
            PriceTable::new(&config, false).unwrap(),
        );
        assert!(
            reloaded
                .admit(request(&parsed(b"{}"), limits))
                .await
                .is_err()
        );
        assert!(reloaded.shared.prices.price("m").is_some());
        drop(held);
        assert_eq!(reloaded.status().windows, b.status().windows);
    }

    #[tokio::test]
    async fn status_lines_give_limit_used_in_flight_and_when_a_default_request_fits() {
        let b = budgets();
        let limits = RuleLimits {
            requests_per_minute: Some(2),
            tokens_per_hour: Some(9000),
            ..RuleLimits::default()
        };
        let plan = BudgetPlan {
            workload: "w".into(),
            rule: 3,
            upstreams: vec!["api.openai.com".into()],
            limits,
        };
        // Before any request: the rule's budgets with nothing used.
        let fresh = b.status_of(std::slice::from_ref(&plan)).lines;
        assert_eq!(fresh.len(), 2);
        assert!(
            fresh
                .iter()
                .all(|l| l.used == Some(0) && l.room == Room::Now)
        );
        // One settled (4096 + 4 reserved, 0 used: no response), one in flight.
        let body = br#"{"model":"m"}"#;
        let done = b.admit(request(&parsed(body), limits)).await.unwrap();
        Box::new(done).end(true);
        let held = b.admit(request(&parsed(body), limits)).await.unwrap();
        let lines = b.status_of(std::slice::from_ref(&plan)).lines;
        let line = |series| lines.iter().find(|l| l.budget == series).unwrap();
        let requests = line(Series::RequestsPerMinute);
        assert_eq!((requests.key.as_str(), requests.rule), ("w", 3));
        assert_eq!(
            (requests.limit, requests.used, requests.in_flight),
            (2, Some(2), Some(1))
        );
        // The window is full: the first request leaves it after 61 s.
        assert_eq!(requests.room, Room::After { secs: 61 });
        let tokens = line(Series::TokensPerHour);
        // Unknown usage is charged as reserved: 4 input + 4096 output, twice.
        assert_eq!((tokens.used, tokens.in_flight), (Some(8200), Some(4100)));
        assert_eq!(tokens.default_request, 4096);
        assert!(matches!(tokens.room, Room::After { .. }), "{tokens:?}");
        drop(held);
        let lines = b.status_of(std::slice::from_ref(&plan)).lines;
        assert!(lines.iter().all(|l| l.in_flight == Some(0)), "{lines:?}");
        // A limit below one default request never fits.
        let tiny = BudgetPlan {
            limits: RuleLimits {
                tokens_per_hour: Some(10),
                ..RuleLimits::default()
            },
            ..plan
        };
        assert_eq!(b.status_of(&[tiny]).lines[0].room, Room::Never);
    }

    #[tokio::test]
    async fn a_cost_budget_refuses_a_model_without_a_price() {
        let b = budgets();
        let limits = RuleLimits {
            cost_per_day_usd: Some(1.0),
            ..RuleLimits::default()
        };
        let refusal = b
            .admit(request(&parsed(br#"{"model":"llama-3-70b"}"#), limits))
            .await
            .err()
            .unwrap();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        assert!(refusal.message().contains("llama-3-70b"));
    }
}
