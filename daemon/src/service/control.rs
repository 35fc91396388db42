//! What the control socket sees of the running daemon: credentials (status,
//! never values), the instance identity, `explain` and `reload`.

use std::sync::Arc;

use serde_json::Value;

use super::reload::Reloader;
use crate::{
    attest::{Attestor, InstanceHandle},
    control::{ControlBackend, RequestError},
};

pub struct DaemonBackend {
    pub reloader: Arc<Reloader>,
    pub instance: InstanceHandle,
    pub attestor: Arc<Attestor>,
    pub tagging: Arc<crate::redirect::tagging::TaggerHealth>,
    /// The kernel's features as probed at start and the hooks attached
    /// (fixed for the daemon's life).
    pub kernel: Value,
}

impl ControlBackend for DaemonBackend {
    fn kernel(&self) -> Value {
        self.kernel.clone()
    }

    fn credentials(&self) -> Value {
        serde_json::to_value(self.reloader.current().credentials.status()).unwrap_or(Value::Null)
    }

    fn tagging(&self) -> Value {
        serde_json::to_value(self.tagging.snapshot()).unwrap_or(Value::Null)
    }

    fn instance(&self) -> Value {
        serde_json::to_value(self.instance.current().as_ref()).unwrap_or(Value::Null)
    }

    fn budgets(&self) -> Value {
        match self.reloader.current().gate.clone().budgets() {
            Some(budgets) => serde_json::to_value(budgets.status()).unwrap_or(Value::Null),
            None => Value::Null,
        }
    }

    fn reload(&self) -> Result<Value, RequestError> {
        // Called off the runtime's workers (see ControlBackend).
        tokio::runtime::Handle::current()
            .block_on(self.reloader.reload())
            .map_err(RequestError::daemon)
    }

    fn explain(&self, pid: u32) -> Result<String, RequestError> {
        let gate = self.reloader.current().gate.clone();
        crate::attest::explain::explain_pid(pid, &self.attestor, gate.workloads())
            .map_err(RequestError::daemon)
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
            "request {} {}{} model={}\n",
            planned.method,
            planned.host,
            planned.path,
            planned.model.as_deref().unwrap_or("(none)")
        ));
        if !config
            .upstreams
            .iter()
            .any(|u| u.host.get_ref().eq_ignore_ascii_case(&planned.host))
        {
            text.push_str(&format!(
                "  {} is not a configured upstream: warrant would pass it through untouched, with no credential\n",
                planned.host
            ));
            return Ok(text);
        }
        let Some(workload) = report.matched.as_deref() else {
            text.push_str("  decision: denied (no workload matches this process)\n");
            return Ok(text);
        };
        // The planned request is read as a real one would be: an
        // ambiguous path is refused here as it would be there.
        let method =
            http::Method::from_bytes(planned.method.as_bytes()).map_err(RequestError::daemon)?;
        let request =
            match crate::provider::Request::described(method, &planned.path, planned.model.clone())
            {
                Ok(request) => request,
                Err(error) => {
                    text.push_str(&format!("  decision: refused (400): {error}\n"));
                    return Ok(text);
                }
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
        let path = uri.path().to_owned();
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
