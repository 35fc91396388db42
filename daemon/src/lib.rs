//! warrant: takes long-lived LLM API keys out of AI agents.
//!
//! The path of one request, module by module: `redirect` (eBPF: tagged
//! cgroups' connections go to the injector, with an `origin::Origin`), then
//! the injector (`tls`, `proxy`, `provider`), which refuses connections without
//! an Origin and splices the real credential into each request.

pub mod attest;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod credentials;
pub mod duration;
pub mod error;
pub mod metrics;
pub mod mounts;
pub mod notify;
pub mod origin;
pub mod policy;
pub mod provider;
pub mod proxy;
pub mod redirect;
pub mod response;
pub mod secret;
pub mod service;
pub mod swap;
pub mod tls;
pub mod usage;
