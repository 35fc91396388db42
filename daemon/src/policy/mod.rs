//! Policy: whether one request may be forwarded. Deny is the default.
//!
//! `[[policy]]` rules bind a workload to what it may do. A request is allowed
//! when some rule for its workload passes on every factor:
//! - request: the upstream host, and if given the path, model, project and
//!   location globs (project and location are what a cloud platform's path
//!   names: Vertex's `projects/{project}/locations/{location}`); under a
//!   token or cost budget, no work the budget cannot meter (batches,
//!   background runs, unmetered sessions: `provider::Unmetered`) unless the
//!   rule names it in `allow_unmetered`;
//! - identity: the workload has a rule, and if given, the executable carries
//!   an sshsig signature by one of `exe_signers`;
//! - location: environment labels and region globs (instance identity);
//! - time: days and hours in an IANA time zone;
//! - posture: every named check passes and is fresh;
//! - budget: left to the budget module through `BudgetGate`.
//!
//! Globs are globset's syntax with `*` stopping at `/` and `**` crossing it
//! (as in shells): "/v1/chat/*" matches "/v1/chat/completions" but not
//! "/v1/chat/x/y", "/v1/**" matches everything under "/v1/", and a model
//! glob "openai/*" matches "openai/gpt-4o" but not "openai/x/y". Paths are
//! matched in their canonical, percent-decoded form (`provider::Request`):
//! a path that needs normalising to mean anything was refused before
//! policy was asked.
//!
//! Every decision lists each factor with its reason, for the audit record and
//! the 403 body. When no rule allows, the reasons shown are those of the rule
//! that came closest (most factors passing), so the agent's operator sees the
//! one thing to change. Everything is compiled once, from the config
//! (`Policy::compile`: globs, time zones, keys, with errors at their place
//! in the file), so that `evaluate` does no parsing.

pub mod posture;
pub mod signature;
pub mod time;

use std::{borrow::Cow, collections::HashMap, path::Path, sync::Arc};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::{
    config::{ConfigError, ConfigErrorKind, PolicyConfig, Source},
    provider::{Body, Unmetered},
};

pub use posture::{PostureFailure, PostureStore};
pub use signature::{ExeSigners, SignatureError, SignerError};
pub use time::{TimeError, TimeWindow};

/// What the policy is asked about one request. The caller fills it from the
/// attestation, the instance identity and the parsed request.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    pub workload: &'a str,
    pub environment: Option<&'a str>,
    pub region: Option<&'a str>,
    /// The executable's path (where `<path>.sig` is looked for) and the
    /// SHA-256 attestation computed over it.
    pub exe_path: Option<&'a Path>,
    pub exe_sha256: Option<&'a [u8; 32]>,
    /// Why the attested executable cannot be believed to be what runs (a
    /// nested user namespace the workload does not allow, code injected
    /// through the environment, an executable the agent can rewrite: see
    /// `attest::workload`); `exe_signers` then fails as the exe selectors do.
    pub program_refusal: Option<&'a str>,
    pub upstream_host: &'a str,
    pub method: &'a str,
    /// The canonical request path (`provider::Request::path`); a query
    /// string is ignored for matching.
    pub path: &'a str,
    /// The model the request names (`provider::Request::model`).
    pub model: Option<&'a str>,
    /// The cloud project and location it runs in (`provider::Request`).
    pub project: Option<&'a str>,
    pub location: Option<&'a str>,
    /// What the body was, when it was read (for the reason a rule that
    /// names models gives when there is none).
    pub body: Option<&'a Body>,
    /// Work the request starts that its response does not meter.
    pub unmetered: Option<Unmetered>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Factor {
    Identity,
    Location,
    Time,
    Posture,
    Request,
    Budget,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FactorOutcome {
    pub factor: Factor,
    pub passed: bool,
    pub reason: Cow<'static, str>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub workload: String,
    /// The index in the file's `[[policy]]` list of the rule that allowed, or
    /// that came closest.
    pub rule: Option<usize>,
    pub factors: Vec<FactorOutcome>,
}

impl Decision {
    /// The failing factors' reasons, e.g. for a one-line log.
    pub fn deny_reasons(&self) -> impl Iterator<Item = &FactorOutcome> {
        self.factors.iter().filter(|f| !f.passed)
    }

    /// The reasons as one line: "time: outside ...; posture: ...".
    pub fn summary(&self) -> String {
        let failing: Vec<String> = self
            .deny_reasons()
            .map(|f| format!("{}: {}", factor_name(f.factor), f.reason))
            .collect();
        if failing.is_empty() {
            "allowed".to_owned()
        } else {
            failing.join("; ")
        }
    }
}

fn factor_name(factor: Factor) -> &'static str {
    match factor {
        Factor::Identity => "identity",
        Factor::Location => "location",
        Factor::Time => "time",
        Factor::Posture => "posture",
        Factor::Request => "request",
        Factor::Budget => "budget",
    }
}

/// Why a factor of a rule fails: the reason the audit record, the 403 body
/// and `warrant explain` show.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denial {
    #[error("no [[policy]] for workload {0:?}")]
    NoRule(String),
    #[error("upstream {0:?} is not allowed")]
    Upstream(String),
    #[error("path {0:?} is not allowed")]
    Path(String),
    #[error("model {0:?} is not allowed")]
    Model(String),
    /// Deny by default: a rule that limits models allows only requests
    /// that name an allowed one.
    #[error("the request names no model; this rule allows only listed models")]
    NoModel,
    #[error("project {0:?} is not allowed")]
    Project(String),
    #[error("the request names no project; this rule allows only listed projects")]
    NoProject,
    #[error("location {0:?} is not allowed")]
    Location(String),
    #[error("the request names no location; this rule allows only listed locations")]
    NoLocation,
    /// A body that is not JSON names no model warrant can read.
    #[error(
        "the request body is not JSON (content type {0}), so it names no model warrant can read; this rule allows only listed models"
    )]
    NotJson(String),
    /// Work a token or cost budget cannot meter, not named in
    /// `allow_unmetered`.
    #[error("this request starts {}, which its token or cost budget cannot meter; {}", .0.describe(), unmetered_remedy(*.0))]
    Unmetered(Unmetered),
    #[error("executable signature required, but the executable is unknown")]
    UnknownExecutable,
    /// The attested executable cannot be believed to be what runs (see
    /// `PolicyInput::program_refusal`).
    #[error("executable signature not checked: {0}")]
    UnpinnedProgram(String),
    #[error(transparent)]
    Signature(Arc<SignatureError>),
    #[error("environment {0:?} is not allowed")]
    Environment(String),
    #[error("the instance has no environment label")]
    NoEnvironment,
    #[error("region {0:?} is not allowed")]
    Region(String),
    #[error("the instance region is unknown")]
    NoRegion,
    /// `now` is the local time in the window's zone.
    #[error("outside the allowed time window (now {now})")]
    OutsideTime { now: String },
    #[error(transparent)]
    Posture(#[from] PostureFailure),
    #[error(transparent)]
    Budget(#[from] OverBudget),
}

/// Why a budget refuses: the limit of the rule the request would pass.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverBudget {
    #[error("over {0} requests per minute")]
    Requests(u64),
    #[error("over {0} tokens per hour")]
    Tokens(u64),
    #[error("over {0} USD per day")]
    Cost(f64),
}

/// What a `[[policy]]` rule gets wrong (its names are `config`'s).
#[derive(Debug, thiserror::Error)]
pub enum PolicyConfigError {
    #[error("bad glob {pattern:?}: {source}")]
    BadGlob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error(transparent)]
    Time(#[from] TimeError),
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error("cost_per_day_usd must be a non-negative number")]
    NegativeCost,
    /// `config` checks posture names; this is the backstop.
    #[error("unknown posture check {0:?}")]
    UnknownPosture(String),
    #[error("unknown allow_unmetered kind {name:?}; expected one of {known}")]
    UnknownUnmetered { name: String, known: String },
    #[error(
        "allow_unmetered cannot name \"websocket\": a workload with a token or cost budget opens only the WebSocket sessions warrant meters (Realtime, Gemini Live)"
    )]
    WebSocketUnmetered,
}

/// What a refusal of unmetered work tells the operator to do.
fn unmetered_remedy(kind: Unmetered) -> String {
    if kind == Unmetered::WebSocket {
        "only Realtime and Gemini Live sessions are metered, so a workload with a budget cannot open others".to_owned()
    } else {
        format!(
            "add {:?} to the rule's allow_unmetered to allow it outside the budget",
            kind.name()
        )
    }
}

/// The budget limits of a rule, for the budget module.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RuleLimits {
    pub tokens_per_hour: Option<u64>,
    pub cost_per_day_usd: Option<f64>,
    pub requests_per_minute: Option<u64>,
}

impl RuleLimits {
    /// A token or cost budget, which only metered requests can respect.
    pub fn counts_tokens(&self) -> bool {
        self.tokens_per_hour.is_some() || self.cost_per_day_usd.is_some()
    }
}

/// The seam for budgets: asked only once every other factor of a rule has
/// passed, so a budget is never charged for a request policy denies anyway.
pub trait BudgetGate: Send + Sync {
    fn check(
        &self,
        workload: &str,
        rule: usize,
        limits: &RuleLimits,
        input: &PolicyInput<'_>,
    ) -> Result<(), OverBudget>;
}

/// No budgets: every request is within budget.
pub struct NoBudgets;

impl BudgetGate for NoBudgets {
    fn check(
        &self,
        _: &str,
        _: usize,
        _: &RuleLimits,
        _: &PolicyInput<'_>,
    ) -> Result<(), OverBudget> {
        Ok(())
    }
}

#[derive(Debug)]
struct Rule {
    index: usize,
    upstreams: Vec<String>,
    paths: Option<GlobSet>,
    models: Option<GlobSet>,
    projects: Option<GlobSet>,
    locations: Option<GlobSet>,
    environments: Vec<String>,
    regions: Option<GlobSet>,
    time: Option<TimeWindow>,
    /// Indices into the posture store.
    posture: Vec<usize>,
    signers: Option<ExeSigners>,
    limits: RuleLimits,
    /// Unmetered work this rule allows under its token or cost budget.
    allow_unmetered: Vec<Unmetered>,
}

/// The compiled `[[policy]]` rules.
#[derive(Debug)]
pub struct Policy {
    rules: HashMap<String, Vec<Rule>>,
    posture: Arc<PostureStore>,
}

const PASS: Cow<'static, str> = Cow::Borrowed("ok");

impl Policy {
    /// Compiles the rules, each error at its place in `source`. `posture`
    /// must hold the checks of the same config (`PostureStore::compile`).
    pub fn compile(
        configs: &[PolicyConfig],
        posture: Arc<PostureStore>,
        source: &Source,
    ) -> Result<Policy, ConfigError> {
        let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
        for (index, config) in configs.iter().enumerate() {
            let rule = compile_rule(index, config, &posture, source)?;
            rules
                .entry(config.workload.get_ref().clone())
                .or_default()
                .push(rule);
        }
        Ok(Policy { rules, posture })
    }

    pub fn posture(&self) -> &Arc<PostureStore> {
        &self.posture
    }

    /// The limits of rule `index` (as in `Decision::rule`).
    pub fn limits(&self, index: usize) -> Option<RuleLimits> {
        self.rules
            .values()
            .flatten()
            .find(|r| r.index == index)
            .map(|r| r.limits)
    }

    /// Decides without budgets.
    pub fn evaluate(&self, input: &PolicyInput<'_>) -> Decision {
        self.evaluate_with(input, &NoBudgets)
    }

    pub fn evaluate_with(&self, input: &PolicyInput<'_>, budgets: &dyn BudgetGate) -> Decision {
        let Some(rules) = self.rules.get(input.workload) else {
            return Decision {
                allowed: false,
                workload: input.workload.to_owned(),
                rule: None,
                factors: vec![FactorOutcome {
                    factor: Factor::Identity,
                    passed: false,
                    reason: Denial::NoRule(input.workload.to_owned()).to_string().into(),
                }],
            };
        };
        let mut best: Option<(usize, usize, Vec<FactorOutcome>)> = None;
        for rule in rules {
            let mut factors = self.factors(rule, input);
            if factors.iter().all(|f| f.passed) {
                let budget = budgets.check(input.workload, rule.index, &rule.limits, input);
                let passed = budget.is_ok();
                factors.push(FactorOutcome {
                    factor: Factor::Budget,
                    passed,
                    reason: budget.err().map_or(PASS, |e| Cow::Owned(e.to_string())),
                });
                if passed {
                    return Decision {
                        allowed: true,
                        workload: input.workload.to_owned(),
                        rule: Some(rule.index),
                        factors,
                    };
                }
            }
            let passing = factors.iter().filter(|f| f.passed).count();
            if best.as_ref().is_none_or(|(n, _, _)| passing > *n) {
                best = Some((passing, rule.index, factors));
            }
        }
        let (rule, factors) = best.map_or((None, Vec::new()), |(_, i, f)| (Some(i), f));
        Decision {
            allowed: false,
            workload: input.workload.to_owned(),
            rule,
            factors,
        }
    }

    fn factors(&self, rule: &Rule, input: &PolicyInput<'_>) -> Vec<FactorOutcome> {
        let outcome = |factor, result: Result<(), Denial>| FactorOutcome {
            factor,
            passed: result.is_ok(),
            reason: result.err().map_or(PASS, |e| Cow::Owned(e.to_string())),
        };
        vec![
            outcome(Factor::Request, request_factor(rule, input)),
            outcome(Factor::Identity, identity_factor(rule, input)),
            outcome(Factor::Location, location_factor(rule, input)),
            outcome(Factor::Time, time_factor(rule, input)),
            outcome(Factor::Posture, self.posture_factor(rule, input)),
        ]
    }

    fn posture_factor(&self, rule: &Rule, input: &PolicyInput<'_>) -> Result<(), Denial> {
        rule.posture
            .iter()
            .try_for_each(|&index| self.posture.check(index, input.now))
            .map_err(Denial::from)
    }
}

fn request_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), Denial> {
    if !rule
        .upstreams
        .iter()
        .any(|h| h.eq_ignore_ascii_case(input.upstream_host))
    {
        return Err(Denial::Upstream(input.upstream_host.to_owned()));
    }
    if let Some(paths) = &rule.paths {
        let path = input.path.split('?').next().unwrap_or(input.path);
        if !paths.is_match(path) {
            return Err(Denial::Path(path.to_owned()));
        }
    }
    if let Some(models) = &rule.models {
        match (input.model, input.body) {
            (Some(model), _) if models.is_match(model) => {}
            (Some(model), _) => return Err(Denial::Model(model.to_owned())),
            (None, Some(Body::Other { content_type })) => {
                return Err(Denial::NotJson(content_type.clone()));
            }
            (None, _) => return Err(Denial::NoModel),
        }
    }
    // Deny by default, as for models: a rule that lists projects or
    // locations allows only requests that name a listed one.
    if let Some(projects) = &rule.projects {
        match input.project {
            Some(project) if projects.is_match(project) => {}
            Some(project) => return Err(Denial::Project(project.to_owned())),
            None => return Err(Denial::NoProject),
        }
    }
    if let Some(locations) = &rule.locations {
        match input.location {
            Some(location) if locations.is_match(location) => {}
            Some(location) => return Err(Denial::Location(location.to_owned())),
            None => return Err(Denial::NoLocation),
        }
    }
    if let Some(kind) = input.unmetered
        && rule.limits.counts_tokens()
        && !rule.allow_unmetered.contains(&kind)
    {
        return Err(Denial::Unmetered(kind));
    }
    Ok(())
}

fn identity_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), Denial> {
    let Some(signers) = &rule.signers else {
        return Ok(());
    };
    if let Some(why) = input.program_refusal {
        return Err(Denial::UnpinnedProgram(why.to_owned()));
    }
    match (input.exe_path, input.exe_sha256) {
        (Some(path), Some(sha256)) => signers
            .check(path, sha256, input.now)
            .map(|_| ())
            .map_err(Denial::Signature),
        _ => Err(Denial::UnknownExecutable),
    }
}

fn location_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), Denial> {
    if !rule.environments.is_empty() {
        match input.environment {
            Some(env) if rule.environments.iter().any(|e| e == env) => {}
            Some(env) => return Err(Denial::Environment(env.to_owned())),
            None => return Err(Denial::NoEnvironment),
        }
    }
    if let Some(regions) = &rule.regions {
        match input.region {
            Some(region) if regions.is_match(region) => {}
            Some(region) => return Err(Denial::Region(region.to_owned())),
            None => return Err(Denial::NoRegion),
        }
    }
    Ok(())
}

fn time_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), Denial> {
    match &rule.time {
        Some(window) if !window.contains(input.now) => Err(Denial::OutsideTime {
            now: window.describe_now(input.now),
        }),
        _ => Ok(()),
    }
}

/// A policy glob: `*` stops at `/`, `**` crosses it (see the module
/// comment).
pub fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// The globs of one key, each error at its glob; None when the key lists
/// none (the factor then does not limit).
fn glob_set(patterns: &[Spanned<String>], source: &Source) -> Result<Option<GlobSet>, ConfigError> {
    let Some(first) = patterns.first() else {
        return Ok(None);
    };
    let invalid = |at: &Spanned<String>, source_error| {
        source.error_at(
            &at.span(),
            ConfigErrorKind::Invalid,
            PolicyConfigError::BadGlob {
                pattern: at.get_ref().clone(),
                source: source_error,
            },
        )
    };
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern.get_ref()).map_err(|e| invalid(pattern, e))?);
    }
    // Only a set too large for the regex engine fails here: reported at the
    // key's first glob.
    builder.build().map(Some).map_err(|e| invalid(first, e))
}

/// `time = { days, hours, tz }`, the error at the part that is wrong.
fn time_window(config: &PolicyConfig, source: &Source) -> Result<Option<TimeWindow>, ConfigError> {
    let Some(time) = &config.time else {
        return Ok(None);
    };
    fn text(v: &Option<Spanned<String>>) -> Option<&str> {
        v.as_ref().map(|s| s.get_ref().as_str())
    }
    TimeWindow::new(text(&time.days), text(&time.hours), text(&time.tz))
        .map(Some)
        .map_err(|e| {
            let part = match e {
                TimeError::Days(_) => &time.days,
                TimeError::Hours(_) => &time.hours,
                TimeError::Tz(_) => &time.tz,
            };
            let problem = PolicyConfigError::Time(e);
            match part {
                Some(at) => source.error_at(&at.span(), ConfigErrorKind::Invalid, problem),
                // The default zone (UTC) always exists; kept for the type.
                None => source.error_at(&config.workload.span(), ConfigErrorKind::Invalid, problem),
            }
        })
}

fn compile_rule(
    index: usize,
    config: &PolicyConfig,
    posture: &PostureStore,
    source: &Source,
) -> Result<Rule, ConfigError> {
    let invalid = |span: std::ops::Range<usize>, problem: PolicyConfigError| {
        source.error_at(&span, ConfigErrorKind::Invalid, problem)
    };
    let signers = exe_signers(config, source)?;
    if let Some(limit) = config.cost_per_day_usd
        && !(limit.is_finite() && limit >= 0.0)
    {
        return Err(source.error_at_key(
            &["policy", &index.to_string(), "cost_per_day_usd"],
            ConfigErrorKind::Invalid,
            PolicyConfigError::NegativeCost,
        ));
    }
    let posture = config
        .posture
        .iter()
        .map(|name| {
            posture.index_of(name.get_ref()).ok_or_else(|| {
                invalid(
                    name.span(),
                    PolicyConfigError::UnknownPosture(name.get_ref().clone()),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let allow_unmetered = allow_unmetered(config, source)?;
    Ok(Rule {
        index,
        upstreams: config
            .upstreams
            .iter()
            .map(|h| h.get_ref().clone())
            .collect(),
        paths: glob_set(&config.paths, source)?,
        models: glob_set(&config.models, source)?,
        projects: glob_set(&config.projects, source)?,
        locations: glob_set(&config.locations, source)?,
        environments: config.environments.clone(),
        regions: glob_set(&config.regions, source)?,
        time: time_window(config, source)?,
        posture,
        signers,
        limits: RuleLimits {
            tokens_per_hour: config.tokens_per_hour,
            cost_per_day_usd: config.cost_per_day_usd,
            requests_per_minute: config.requests_per_minute,
        },
        allow_unmetered,
    })
}

/// The rule's `exe_signers`, parsed; None when it names none.
fn exe_signers(config: &PolicyConfig, source: &Source) -> Result<Option<ExeSigners>, ConfigError> {
    if config.exe_signers.is_empty() {
        return Ok(None);
    }
    let keys = config
        .exe_signers
        .iter()
        .map(|key| {
            signature::parse_signer(key.get_ref()).map_err(|e| {
                source.error_at(
                    &key.span(),
                    ConfigErrorKind::Invalid,
                    PolicyConfigError::from(e),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(ExeSigners::from_keys(
        keys,
        config.exe_signature_namespace.as_deref(),
    )))
}

/// The rule's `allow_unmetered` kinds. A WebSocket is always metered, so it
/// cannot be named.
fn allow_unmetered(config: &PolicyConfig, source: &Source) -> Result<Vec<Unmetered>, ConfigError> {
    let invalid = |span: std::ops::Range<usize>, problem: PolicyConfigError| {
        source.error_at(&span, ConfigErrorKind::Invalid, problem)
    };
    config
        .allow_unmetered
        .iter()
        .map(|name| match Unmetered::from_name(name.get_ref()) {
            Some(Unmetered::WebSocket) => {
                Err(invalid(name.span(), PolicyConfigError::WebSocketUnmetered))
            }
            Some(kind) => Ok(kind),
            None => Err(invalid(
                name.span(),
                PolicyConfigError::UnknownUnmetered {
                    name: name.get_ref().clone(),
                    known: Unmetered::ALL
                        .iter()
                        .filter(|k| **k != Unmetered::WebSocket)
                        .map(|k| k.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests;
