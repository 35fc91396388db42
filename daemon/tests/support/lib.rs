//! What warrant's integration tests (and the examples: the mock provider,
//! the benchmarks) share, one module per concern. Everything stays on
//! loopback or in cgroups, pins and processes the test made itself, and is
//! removed on drop (also when a test panics).
//!
//! - [`prereq`]: what a test needs from the host (root, ::1, a group,
//!   redis-server, ...): skipped visibly, or failed when CI requires it;
//! - [`logs`]: the log lines of one test, never another's;
//! - [`wait`]: bounded waits on a condition (no sleep as synchronisation);
//! - [`pki`]: a throwaway public CA, mock server certificates, TLS clients;
//! - [`upstream`]: a scripted in-process mock upstream (SSE, echo, hang,
//!   WebSocket) that records what it received;
//! - [`mock_provider`]: the stand-in for the OpenAI, Anthropic and Gemini
//!   APIs that the end-to-end tests, the demo and the VM tests run;
//! - [`injector`]: the injector in-process with `StaticOrigins`, and
//!   agent-side h1/h2 clients;
//! - [`monitored`]: the injector with its responder, audit log, metrics and
//!   a real credential store holding a canary, behind a scripted gate;
//! - [`daemon`]: the daemon's request path as `warrant run` builds it (the
//!   real gate, budgets, `Reloader` and control backend), minus eBPF;
//! - [`credentials`]: a standards-conformant mock OAuth token endpoint,
//!   refresh settings, private files;
//! - [`config`]: configuration text shared by the config tests;
//! - [`redis`]: a real redis-server on a free loopback port;
//! - [`cgroups`]: cgroups, bpffs pins and processes for privileged tests;
//! - [`binary`]: the real `warrant` binary on a test cgroup treated as the
//!   system manager's root, with a mock provider and agents run as another
//!   uid (the identity tests);
//! - [`netns`]: network namespaces over a veth with a reporting server, and
//!   a cgroup egress filter like systemd's IPAddressDeny;
//! - [`loopback`]: the benchmarks' in-process stack (a mock provider behind
//!   TLS, the injector with `StaticOrigins`, an HTTP/1.1 TLS client);
//! - [`cloud`]: Bedrock, Vertex AI and Azure OpenAI mocks (SigV4 verified
//!   with the real secret) and the cloud credential services (IMDSv2, STS,
//!   GCE metadata, Google token/STS/IAM, Azure managed identity, Entra ID).
// Test code panics rather than returning errors (the failure keeps its
// stack), and its `new()`s make cgroups, pins and keys: not defaults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::new_without_default)]

pub mod binary;
pub mod cgroups;
pub mod cloud;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod injector;
pub mod logs;
pub mod loopback;
pub mod mock_provider;
pub mod monitored;
pub mod netns;
pub mod pki;
pub mod prereq;
pub mod redis;
pub mod upstream;
pub mod wait;
