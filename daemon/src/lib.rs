//! warrant: takes long-lived LLM API keys out of AI agents.
//!
//! The path of one request, module by module (ARCHITECTURE.md at the
//! repository root walks it): `redirect` (eBPF: tagged cgroups' connections
//! go to the injector, with an `origin::Origin`); `proxy` accepts them
//! (refusing any without an Origin), terminates TLS (`tls`) and runs each
//! request's phases: `attest` and the gate identify the caller, `response`
//! refuses quarantined ones, `provider` reads the request once, `policy`
//! and `usage` (budgets) decide, `credentials` supplies the key, `provider`
//! splices it in, the response is metered (`usage`) and audited (`audit`).
//! In gateway mode (`gateway`) a node forwards instead of injecting, and
//! `warrant gateway` identifies the node's caller from its signed statement.

// Issue 14's measure of a readable request path: no function in daemon/src
// over 80 lines (clippy.toml sets the threshold). Tests are exempt.
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

pub mod attest;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod credentials;
pub mod doctor;
pub mod duration;
pub mod error;
pub mod gateway;
pub mod install;
pub mod metadata;
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
pub mod table;
pub mod tls;
pub mod usage;
