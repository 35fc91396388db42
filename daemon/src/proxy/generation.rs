//! What the request path decides with, as one generation: the gate and the
//! credentials built from one configuration. A reload builds a new one and
//! swaps it in whole (`swap::Swap`); the proxy reads the current one once
//! per request, so a request never sees a new gate with old credentials.

use std::sync::Arc;

use super::RequestGate;
use crate::{credentials::CredentialSource, swap::Swap};

/// The gate and credentials of one configuration.
pub trait Generation: Send + Sync + 'static {
    fn gate(&self) -> &dyn RequestGate;
    fn credentials(&self) -> &dyn CredentialSource;
}

/// Where the proxy finds the generation in force.
pub trait Generations: Send + Sync + 'static {
    fn current(&self) -> Arc<dyn Generation>;
}

impl<T: Generation> Generations for Swap<T> {
    fn current(&self) -> Arc<dyn Generation> {
        self.get()
    }
}

/// A generation that never changes: for tests, benchmarks and tools.
pub struct FixedGeneration {
    pub gate: Arc<dyn RequestGate>,
    pub credentials: Arc<dyn CredentialSource>,
}

impl FixedGeneration {
    /// Serves `gate` and `credentials` for ever.
    pub fn serve(
        gate: Arc<dyn RequestGate>,
        credentials: Arc<dyn CredentialSource>,
    ) -> Arc<dyn Generations> {
        Arc::new(Swap::new(Arc::new(FixedGeneration { gate, credentials })))
    }
}

impl Generation for FixedGeneration {
    fn gate(&self) -> &dyn RequestGate {
        self.gate.as_ref()
    }

    fn credentials(&self) -> &dyn CredentialSource {
        self.credentials.as_ref()
    }
}
