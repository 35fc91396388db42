//! What the control socket sees of the running daemon: credentials (status,
//! never values), the instance identity, `explain` and `reload`.

use std::{path::Path, sync::Arc};

use serde_json::{Value, json};

use super::reload::Reloader;
use crate::{
    attest::{Attestor, InstanceHandle, WorkloadMatcher},
    config::Config,
    control::ControlBackend,
};

pub struct DaemonBackend {
    pub reloader: Arc<Reloader>,
    pub instance: InstanceHandle,
    pub attestor: Arc<Attestor>,
}

impl ControlBackend for DaemonBackend {
    fn credentials(&self) -> Value {
        serde_json::to_value(self.reloader.credential_store.get().status()).unwrap_or(Value::Null)
    }

    fn instance(&self) -> Value {
        serde_json::to_value(self.instance.current().as_ref()).unwrap_or(Value::Null)
    }

    fn reload(&self) -> Result<Value, String> {
        // Called off the runtime's workers (see ControlBackend).
        tokio::runtime::Handle::current().block_on(self.reloader.reload())
    }

    fn explain(&self, pid: u32) -> Result<String, String> {
        let workloads = WorkloadMatcher::new(&self.reloader.config().workloads);
        crate::attest::explain::explain_pid(pid, &self.attestor, &workloads)
            .map_err(|e| e.to_string())
    }
}

/// `warrant reload` for now: re-reads and validates the file and reports
/// what it holds. Applying it to the running daemon is not done yet, and the
/// answer says so.
pub fn validate_reload(path: &Path) -> Result<Value, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    tracing::info!(config = %path.display(), "reload requested: configuration is valid");
    Ok(json!({
        "config": path.display().to_string(),
        "valid": true,
        "applied": false,
        "note": "the configuration is valid; applying it needs a restart for now",
        "workloads": config.workloads.len(),
        "upstreams": config.upstreams.len(),
        "credentials": config.credentials.len(),
        "policies": config.policies.len(),
    }))
}
