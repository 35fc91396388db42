//! What the control socket sees of the running daemon: credentials (status,
//! never values), the instance identity, budgets, `explain` and `reload`.

use std::sync::Arc;

use serde_json::Value;

use super::reload::Reloader;
use crate::{
    attest::{Attestor, InstanceHandle, InstanceState},
    config::{Config, Scheme, UpstreamConfig},
    control::{ControlBackend, RequestError},
    credentials::{CredentialKind, CredentialStatus, CredentialStore},
    gateway::PinStore,
    policy::RuleLimits,
    provider,
    redirect::tagging::{TaggerHealth, TaggerStatus},
    usage::{BudgetPlan, BudgetStatus},
};

pub struct DaemonBackend {
    pub reloader: Arc<Reloader>,
    pub instance: InstanceHandle,
    pub attestor: Arc<Attestor>,
    pub tagging: Arc<TaggerHealth>,
    /// The kernel's features as probed at start and the hooks attached
    /// (fixed for the daemon's life).
    pub kernel: Value,
    /// A gateway's enrollment pins (None in `warrant run`).
    pub pins: Option<Arc<dyn PinStore>>,
}

impl DaemonBackend {
    /// A host daemon's backend (no enrollment pins).
    pub fn new(
        reloader: Arc<Reloader>,
        instance: InstanceHandle,
        attestor: Arc<Attestor>,
        tagging: Arc<TaggerHealth>,
        kernel: Value,
    ) -> DaemonBackend {
        DaemonBackend {
            reloader,
            instance,
            attestor,
            tagging,
            kernel,
            pins: None,
        }
    }
}

impl ControlBackend for DaemonBackend {
    fn pins(&self) -> Option<Arc<dyn PinStore>> {
        self.pins.clone()
    }

    fn kernel(&self) -> Option<Value> {
        (!self.kernel.is_null()).then(|| self.kernel.clone())
    }

    fn credentials(&self) -> Vec<CredentialStatus> {
        self.reloader.current().credentials.status()
    }

    fn tagging(&self) -> Option<TaggerStatus> {
        Some(self.tagging.snapshot())
    }

    fn instance(&self) -> Option<InstanceState> {
        Some(self.instance.current().as_ref().clone())
    }

    fn budgets(&self) -> Option<BudgetStatus> {
        // One generation: the budgets and the rules they are checked against.
        let generation = self.reloader.current();
        let budgets = generation.gate.budgets()?;
        Some(budgets.status_of(&budget_plans(&generation.config)))
    }

    fn reload(&self) -> Result<Value, RequestError> {
        // Called off the runtime's workers (see ControlBackend).
        tokio::runtime::Handle::current()
            .block_on(self.reloader.reload())
            .map_err(RequestError::daemon)
    }

    fn explain(&self, pid: u32) -> Result<String, RequestError> {
        let generation = self.reloader.current();
        let mut text =
            crate::attest::explain::explain_pid(pid, &self.attestor, generation.gate.workloads())
                .map_err(RequestError::daemon)?;
        text.push_str("upstreams\n");
        for upstream in &generation.config.upstreams {
            text.push_str(&format!(
                "  {} ({})\n{}",
                upstream.host.get_ref(),
                upstream.scheme.get_ref(),
                credential_line(upstream, &generation.credentials)
            ));
        }
        Ok(text)
    }

    fn explain_request(&self, pid: u32, request: &str) -> Result<String, RequestError> {
        let planned = PlannedRequest::parse(request).map_err(RequestError::daemon)?;
        // One generation: the gate and the configuration it was built from.
        let generation = self.reloader.current();
        let (gate, config) = (&generation.gate, &generation.config);
        let origin = crate::attest::explain::origin_for_pid(pid, &self.attestor)
            .map_err(RequestError::daemon)?;
        let attestation = self
            .attestor
            .attest_live(&origin)
            .map_err(RequestError::daemon)?;
        let report = gate.workloads().evaluate(&attestation);
        let mut text = crate::attest::explain::render(&attestation, &report);
        text.push_str(&format!(
            "request {} {}{}\n",
            planned.method, planned.host, planned.path,
        ));
        let Some(upstream) = config
            .upstreams
            .iter()
            .find(|u| u.host.get_ref().eq_ignore_ascii_case(&planned.host))
        else {
            text.push_str(&format!(
                "  {} is not a configured upstream: warrant would pass it through untouched, with no credential\n",
                planned.host
            ));
            return Ok(text);
        };
        text.push_str(&credential_line(upstream, &generation.credentials));
        // Read as the upstream's provider reads a request (model, project
        // and location from a cloud platform's path), without a body: an
        // ambiguous path is refused here as it would be there.
        let request = match planned.request(*upstream.scheme.get_ref())? {
            Ok(request) => request,
            Err(error) => {
                text.push_str(&format!("  decision: refused (400): {error}\n"));
                return Ok(text);
            }
        };
        text.push_str(&format!(
            "  model={}",
            request.model.as_deref().unwrap_or("(none)")
        ));
        for (name, value) in [
            ("project", &request.project),
            ("location", &request.location),
        ] {
            if let Some(value) = value {
                text.push_str(&format!(" {name}={value}"));
            }
        }
        text.push('\n');
        let Some(workload) = report.matched.as_deref() else {
            text.push_str("  decision: denied (no workload matches this process)\n");
            return Ok(text);
        };
        let decision = gate.decide_for(workload, &attestation, &planned.host, &request);
        text.push_str(&format!(
            "  decision: {} for workload {workload:?}\n",
            if decision.allowed {
                "allowed"
            } else {
                "denied"
            }
        ));
        for factor in &decision.factors {
            let name = serde_json::to_value(factor.factor)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let verdict = if factor.passed { "pass" } else { "FAIL" };
            text.push_str(&format!("    {name:<9} {verdict}  {}\n", factor.reason));
        }
        Ok(text)
    }
}

/// Which credential `upstream` would use, what it is and its state (never
/// its value): one line of `warrant explain`.
fn credential_line(upstream: &UpstreamConfig, credentials: &CredentialStore) -> String {
    let Some(name) = upstream.credential.as_ref().map(|c| c.get_ref()) else {
        return "  credential: none here (this node forwards to a gateway, which injects it)\n"
            .to_owned();
    };
    let Some(status) = credentials.status().into_iter().find(|c| &c.name == name) else {
        return format!("  credential: {name:?} (not configured)\n");
    };
    let kind = match status.kind {
        CredentialKind::Token => "a token",
        CredentialKind::AwsKeys => "AWS keys, signing with SigV4",
    };
    let state = match (&status.fingerprint, status.expires_at, &status.last_error) {
        (Some(print), Some(expiry), _) => format!("cached {print}, expires {expiry}"),
        (Some(print), None, _) => format!("cached {print}"),
        (None, _, Some(error)) => format!("not fetched: {error}"),
        (None, _, None) => "not fetched yet".to_owned(),
    };
    format!(
        "  credential: {name:?} (source {}, {kind}; {state})\n",
        status.source
    )
}

/// Every `[[policy]]` rule that sets a budget, for status and the budget
/// gauges.
pub fn budget_plans(config: &Config) -> Vec<BudgetPlan> {
    config
        .policies
        .iter()
        .enumerate()
        .filter_map(|(rule, p)| {
            let limits = RuleLimits {
                tokens_per_hour: p.tokens_per_hour,
                cost_per_day_usd: p.cost_per_day_usd,
                requests_per_minute: p.requests_per_minute,
            };
            (limits != RuleLimits::default()).then(|| BudgetPlan {
                workload: p.workload.get_ref().clone(),
                rule,
                upstreams: p.upstreams.iter().map(|u| u.get_ref().clone()).collect(),
                limits,
            })
        })
        .collect()
}

/// `--request` is not "METHOD https://HOST/PATH [model=NAME]".
#[derive(Debug, thiserror::Error)]
enum BadRequestLine {
    #[error("--request {0:?}: expected \"METHOD https://HOST/PATH [model=NAME]\"")]
    Shape(String),
    #[error("--request {text:?}: expected \"METHOD https://HOST/PATH [model=NAME]\": {source}")]
    Url {
        text: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error(
        "--request {text:?}: expected \"METHOD https://HOST/PATH [model=NAME]\": unknown {word:?}"
    )]
    UnknownWord { text: String, word: String },
    #[error("--request: bad method: {0}")]
    Method(String),
}

/// A request described on the command line: "METHOD URL [model=NAME]".
#[derive(Debug, PartialEq, Eq)]
struct PlannedRequest {
    method: String,
    host: String,
    path: String,
    model: Option<String>,
}

impl PlannedRequest {
    /// The request as `scheme`'s provider reads it (without a body); a
    /// `model=` given on the command line stands for the body's model.
    /// The request as the upstream's provider reads it; the inner error
    /// is the provider's refusal of an ambiguous request.
    fn request(
        &self,
        scheme: Scheme,
    ) -> Result<Result<provider::Request, provider::AmbiguousRequest>, RequestError> {
        let method = http::Method::from_bytes(self.method.as_bytes())
            .map_err(|e| RequestError::daemon(BadRequestLine::Method(e.to_string())))?;
        let uri: http::Uri = self.path.parse().map_err(|source| {
            RequestError::daemon(BadRequestLine::Url {
                text: self.path.clone(),
                source,
            })
        })?;
        let headers = http::HeaderMap::new();
        let head = provider::RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        Ok(provider::api(scheme).parse(&head, b"").map(|mut request| {
            if let Some(model) = &self.model {
                request.model = Some(model.clone());
            }
            request
        }))
    }
}

impl PlannedRequest {
    fn parse(text: &str) -> Result<PlannedRequest, BadRequestLine> {
        let shape = || BadRequestLine::Shape(text.to_owned());
        let mut words = text.split_whitespace();
        let method = words.next().ok_or_else(shape)?.to_ascii_uppercase();
        let uri: http::Uri =
            words
                .next()
                .ok_or_else(shape)?
                .parse()
                .map_err(|source| BadRequestLine::Url {
                    text: text.to_owned(),
                    source,
                })?;
        let host = uri.host().ok_or_else(shape)?.to_ascii_lowercase();
        let path = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        let mut model = None;
        for word in words {
            match word.split_once('=') {
                Some(("model", value)) => model = Some(value.to_owned()),
                _ => {
                    return Err(BadRequestLine::UnknownWord {
                        text: text.to_owned(),
                        word: word.to_owned(),
                    });
                }
            }
        }
        Ok(PlannedRequest {
            method,
            host,
            path,
            model,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PlannedRequest;

    #[test]
    fn a_planned_request_is_read_from_the_command_line_form() {
        let planned =
            PlannedRequest::parse("post https://API.openai.com/v1/chat/completions model=gpt-4o")
                .unwrap();
        assert_eq!(
            planned,
            PlannedRequest {
                method: "POST".into(),
                host: "api.openai.com".into(),
                path: "/v1/chat/completions".into(),
                model: Some("gpt-4o".into()),
            }
        );
        assert!(PlannedRequest::parse("GET").is_err());
        assert!(
            PlannedRequest::parse("GET https://x/y colour=blue")
                .unwrap_err()
                .to_string()
                .contains("colour")
        );
    }
}
