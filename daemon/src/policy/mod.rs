//! Policy: whether one request may be forwarded. Deny is the default.
//!
//! `[[policy]]` rules bind a workload to what it may do. A request is allowed
//! when some rule for its workload passes on every factor:
//! - request: the upstream host, and if given the path and model globs;
//! - identity: the workload has a rule, and if given, the executable carries
//!   an sshsig signature by one of `exe_signers`;
//! - location: environment labels and region globs (instance identity);
//! - time: days and hours in an IANA time zone;
//! - posture: every named check passes and is fresh;
//! - budget: left to the budget module through `BudgetGate`.
//!
//! Globs are globset's syntax, where `*` also matches `/`: a path glob
//! "/v1beta/models/*" covers every model method below it.
//!
//! Every decision lists each factor with its reason, for the audit record and
//! the 403 body. When no rule allows, the reasons shown are those of the rule
//! that came closest (most factors passing), so the agent's operator sees the
//! one thing to change. Everything is compiled once (globs, time zones, keys)
//! so that `evaluate` does no parsing.

pub mod posture;
pub mod signature;
pub mod time;

use std::{borrow::Cow, collections::HashMap, path::Path, sync::Arc};

use globset::{Glob, GlobSet, GlobSetBuilder};
use jiff::Timestamp;
use serde::Serialize;

use crate::config::{ConfigError, Location, PolicyConfig, PostureConfig};

pub use posture::PostureStore;
pub use signature::ExeSigners;
pub use time::TimeWindow;

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
    pub upstream_host: &'a str,
    pub method: &'a str,
    /// The request path; a query string is ignored for matching.
    pub path: &'a str,
    /// The model the request names (`provider::Request::model`).
    pub model: Option<&'a str>,
    pub now: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Factor {
    Identity,
    Location,
    Time,
    Posture,
    Request,
    Budget,
}

#[derive(Debug, Clone, Serialize)]
pub struct FactorOutcome {
    pub factor: Factor,
    pub passed: bool,
    pub reason: Cow<'static, str>,
}

#[derive(Debug, Clone, Serialize)]
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

/// The budget limits of a rule, for the budget module.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RuleLimits {
    pub tokens_per_hour: Option<u64>,
    pub cost_per_day_usd: Option<f64>,
    pub requests_per_minute: Option<u64>,
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
    ) -> Result<(), String>;
}

/// No budgets: every request is within budget.
pub struct NoBudgets;

impl BudgetGate for NoBudgets {
    fn check(&self, _: &str, _: usize, _: &RuleLimits, _: &PolicyInput<'_>) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Debug)]
struct Rule {
    index: usize,
    upstreams: Vec<String>,
    paths: Option<GlobSet>,
    models: Option<GlobSet>,
    environments: Vec<String>,
    regions: Option<GlobSet>,
    time: Option<TimeWindow>,
    /// Indices into the posture store.
    posture: Vec<usize>,
    signers: Option<ExeSigners>,
    limits: RuleLimits,
}

/// The compiled `[[policy]]` rules.
#[derive(Debug)]
pub struct Policy {
    rules: HashMap<String, Vec<Rule>>,
    posture: Arc<PostureStore>,
}

const PASS: Cow<'static, str> = Cow::Borrowed("ok");

impl Policy {
    /// Compiles the rules. `posture` must hold the checks of the same config
    /// (`PostureStore::from_config`). The config was validated, so an error
    /// here means it was not.
    pub fn new(configs: &[PolicyConfig], posture: Arc<PostureStore>) -> Result<Policy, String> {
        let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
        for (index, config) in configs.iter().enumerate() {
            let rule = compile_rule(index, config, &posture)?;
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
                    reason: format!("no [[policy]] for workload {:?}", input.workload).into(),
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
                    reason: budget.err().map_or(PASS, Cow::Owned),
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
        let outcome = |factor, result: Result<(), String>| FactorOutcome {
            factor,
            passed: result.is_ok(),
            reason: result.err().map_or(PASS, Cow::Owned),
        };
        vec![
            outcome(Factor::Request, request_factor(rule, input)),
            outcome(Factor::Identity, identity_factor(rule, input)),
            outcome(Factor::Location, location_factor(rule, input)),
            outcome(Factor::Time, time_factor(rule, input)),
            outcome(Factor::Posture, self.posture_factor(rule, input)),
        ]
    }

    fn posture_factor(&self, rule: &Rule, input: &PolicyInput<'_>) -> Result<(), String> {
        rule.posture
            .iter()
            .try_for_each(|&index| self.posture.check(index, input.now))
    }
}

fn request_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), String> {
    if !rule
        .upstreams
        .iter()
        .any(|h| h.eq_ignore_ascii_case(input.upstream_host))
    {
        return Err(format!("upstream {:?} is not allowed", input.upstream_host));
    }
    if let Some(paths) = &rule.paths {
        let path = input.path.split('?').next().unwrap_or(input.path);
        if !paths.is_match(path) {
            return Err(format!("path {path:?} is not allowed"));
        }
    }
    if let Some(models) = &rule.models {
        match input.model {
            Some(model) if models.is_match(model) => {}
            Some(model) => return Err(format!("model {model:?} is not allowed")),
            // Deny by default: a rule that limits models allows only
            // requests that name an allowed one.
            None => {
                return Err(
                    "the request names no model; this rule allows only listed models".to_owned(),
                );
            }
        }
    }
    Ok(())
}

fn identity_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), String> {
    let Some(signers) = &rule.signers else {
        return Ok(());
    };
    match (input.exe_path, input.exe_sha256) {
        (Some(path), Some(sha256)) => signers.check(path, sha256, input.now).map(|_| ()),
        _ => Err("executable signature required, but the executable is unknown".to_owned()),
    }
}

fn location_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), String> {
    if !rule.environments.is_empty() {
        match input.environment {
            Some(env) if rule.environments.iter().any(|e| e == env) => {}
            Some(env) => return Err(format!("environment {env:?} is not allowed")),
            None => return Err("the instance has no environment label".to_owned()),
        }
    }
    if let Some(regions) = &rule.regions {
        match input.region {
            Some(region) if regions.is_match(region) => {}
            Some(region) => return Err(format!("region {region:?} is not allowed")),
            None => return Err("the instance region is unknown".to_owned()),
        }
    }
    Ok(())
}

fn time_factor(rule: &Rule, input: &PolicyInput<'_>) -> Result<(), String> {
    match &rule.time {
        Some(window) if !window.contains(input.now) => Err(format!(
            "outside the allowed time window (now {})",
            window.describe_now(input.now)
        )),
        _ => Ok(()),
    }
}

fn glob_set<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Option<GlobSet>, String> {
    let mut builder = GlobSetBuilder::new();
    let mut any = false;
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|e| format!("bad glob {pattern:?}: {e}"))?);
        any = true;
    }
    if !any {
        return Ok(None);
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}

fn time_window(config: &PolicyConfig) -> Result<Option<TimeWindow>, time::TimeError> {
    let Some(time) = &config.time else {
        return Ok(None);
    };
    fn text(v: &Option<toml::Spanned<String>>) -> Option<&str> {
        v.as_ref().map(|s| s.get_ref().as_str())
    }
    TimeWindow::new(text(&time.days), text(&time.hours), text(&time.tz)).map(Some)
}

fn compile_rule(
    index: usize,
    config: &PolicyConfig,
    posture: &PostureStore,
) -> Result<Rule, String> {
    let signers = if config.exe_signers.is_empty() {
        None
    } else {
        let keys: Vec<&str> = config
            .exe_signers
            .iter()
            .map(|k| k.get_ref().as_str())
            .collect();
        Some(ExeSigners::new(
            &keys,
            config.exe_signature_namespace.as_deref(),
        )?)
    };
    Ok(Rule {
        index,
        upstreams: config
            .upstreams
            .iter()
            .map(|h| h.get_ref().clone())
            .collect(),
        paths: glob_set(config.paths.iter().map(|g| g.get_ref().as_str()))?,
        models: glob_set(config.models.iter().map(|g| g.get_ref().as_str()))?,
        environments: config.environments.clone(),
        regions: glob_set(config.regions.iter().map(|g| g.get_ref().as_str()))?,
        time: time_window(config).map_err(|e| e.to_string())?,
        posture: config
            .posture
            .iter()
            .map(|name| {
                posture
                    .index_of(name.get_ref())
                    .ok_or_else(|| format!("unknown posture check {:?}", name.get_ref()))
            })
            .collect::<Result<_, _>>()?,
        signers,
        limits: RuleLimits {
            tokens_per_hour: config.tokens_per_hour,
            cost_per_day_usd: config.cost_per_day_usd,
            requests_per_minute: config.requests_per_minute,
        },
    })
}

/// Validation of `[[policy]]` beyond what `Config::validate` checks (which
/// covers workload and upstream references and glob syntax), called from it.
pub fn validate(
    policies: &[PolicyConfig],
    postures: &[PostureConfig],
    text: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let err = |span: std::ops::Range<usize>, msg: String| {
        ConfigError::new(origin, Some(Location::of(text, span.start)), msg)
    };
    for policy in policies {
        if let Some(time) = &policy.time {
            // Each part is compiled alone so that the error points at it.
            let parts = [
                (&time.days, (Some(0), None, None)),
                (&time.hours, (None, Some(0), None)),
                (&time.tz, (None, None, Some(0))),
            ];
            for (value, (days, hours, tz)) in parts {
                let Some(spanned) = value else { continue };
                let v = Some(spanned.get_ref().as_str());
                let pick = |slot: Option<u8>| slot.and(v);
                if let Err(e) = TimeWindow::new(pick(days), pick(hours), pick(tz)) {
                    return Err(err(spanned.span(), e.to_string()));
                }
            }
        }
        for name in &policy.posture {
            if !postures.iter().any(|p| p.name.get_ref() == name.get_ref()) {
                return Err(err(
                    name.span(),
                    format!(
                        "policy names posture check {:?}, which no [[posture]] defines",
                        name.get_ref()
                    ),
                ));
            }
        }
        for key in &policy.exe_signers {
            signature::parse_signer(key.get_ref()).map_err(|e| err(key.span(), e))?;
        }
        if let Some(limit) = policy.cost_per_day_usd
            && !(limit.is_finite() && limit >= 0.0)
        {
            return Err(err(
                policy.workload.span(),
                "cost_per_day_usd must be a non-negative number".to_owned(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
