//! Which `[[workload]]` a caller from the network is: the remote
//! counterpart of `attest::workload`, over the same sections.
//!
//! A workload selects one kind of caller (`Config::parse` refuses a mix):
//! * node callers: `nodes` (globs over enrolled node names) and
//!   `node_workload` (the node's own workload that its statement names;
//!   default the workload's name), and `node_instance` (globs over the
//!   instance claims the gateway verified, for nodes enrolled by their
//!   instance; never the claims a node asserts). `unit`, `exe`, `exe_sha256`,
//!   `entrypoint_sha256`, `uid` and `gid` then narrow what the statement
//!   must say; the exe and hash selectors refuse a program the node's rules
//!   could not pin (the statement's `program_refusal`);
//! * token callers: `issuer` (exact), `subject` (glob) and `claims` (dotted
//!   paths, globs), and `spiffe_id` for a JWT-SVID;
//! * X.509-SVID callers: `spiffe_id` (glob) alone.
//!
//! Every selector a workload sets must match; the first workload in file
//! order whose selectors all match wins. Globs keep `*` within a `/`
//! segment (`**` crosses them), so `spiffe://example.org/agents/*` does not
//! match `spiffe://example.org/agents/a/b`. Identity never comes from
//! anything else: not the URL path, not the upstream, not a header the
//! agent chooses.

use std::collections::BTreeMap;

use globset::{Glob, GlobBuilder, GlobMatcher};
use serde_json::{Map, Value};

use super::{
    statement::{InstanceFacts, Statement},
    token::VerifiedToken,
};
use crate::config::{ConfigError, ConfigErrorKind, Source, WorkloadConfig};

/// Who called, as verified (`gateway::Verifier`).
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    Node {
        name: &'a str,
        statement: &'a Statement,
        /// What the gateway verified of the node's instance (enrolled by
        /// it); None for a node enrolled by key.
        instance: Option<&'a InstanceFacts>,
    },
    Token(&'a VerifiedToken),
    /// An X.509-SVID's SPIFFE ID.
    Svid(&'a str),
}

#[derive(Debug, thiserror::Error)]
#[error("bad glob {text:?}: {source}")]
pub struct BadGlob {
    text: String,
    #[source]
    source: globset::Error,
}

struct Pattern {
    text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    fn compile(text: &toml::Spanned<String>, source: &Source) -> Result<Pattern, ConfigError> {
        let glob: Result<Glob, _> = GlobBuilder::new(text.get_ref())
            .literal_separator(true)
            .build();
        glob.map(|glob| Pattern {
            text: text.get_ref().clone(),
            matcher: glob.compile_matcher(),
        })
        .map_err(|source_error| {
            source.error_at(
                &text.span(),
                ConfigErrorKind::Invalid,
                BadGlob {
                    text: text.get_ref().clone(),
                    source: source_error,
                },
            )
        })
    }

    fn is_match(&self, value: &str) -> bool {
        self.matcher.is_match(value)
    }
}

/// The narrowing selectors of a node workload.
#[derive(Default)]
struct Narrowing {
    unit: Option<String>,
    exe: Option<String>,
    exe_sha256: Vec<String>,
    entrypoint_sha256: Vec<String>,
    uid: Option<u32>,
    gid: Option<u32>,
}

enum Selects {
    Nodes {
        nodes: Vec<Pattern>,
        node_workload: String,
        node_instance: Vec<(String, Pattern)>,
        narrowing: Narrowing,
    },
    Tokens {
        issuer: Option<String>,
        subject: Option<Pattern>,
        claims: Vec<(String, Pattern)>,
        spiffe_id: Option<Pattern>,
    },
}

struct RemoteWorkload {
    name: String,
    selects: Selects,
}

/// The workloads that select callers from the network, compiled.
#[derive(Default)]
pub struct RemoteWorkloads {
    workloads: Vec<RemoteWorkload>,
}

impl RemoteWorkloads {
    /// Compiles the workloads with remote selectors (the others are
    /// `attest::WorkloadMatcher`'s); a bad glob is an error at its place.
    pub fn compile(configs: &[WorkloadConfig], source: &Source) -> Result<Self, ConfigError> {
        let mut workloads = Vec::new();
        for c in configs.iter().filter(|c| c.selects_remote()) {
            let pattern = |text: &toml::Spanned<String>| Pattern::compile(text, source);
            let selects = if c.selects_nodes() {
                Selects::Nodes {
                    nodes: c.nodes.iter().map(pattern).collect::<Result<_, _>>()?,
                    node_workload: c
                        .node_workload
                        .as_ref()
                        .map_or_else(|| c.name.get_ref().clone(), |w| w.get_ref().clone()),
                    node_instance: compile_claims(&c.node_instance, source)?,
                    narrowing: Narrowing {
                        unit: c.unit.as_ref().map(|u| u.get_ref().clone()),
                        exe: c.exe.as_ref().map(|e| e.get_ref().clone()),
                        exe_sha256: lower(&c.exe_sha256),
                        entrypoint_sha256: lower(&c.entrypoint_sha256),
                        uid: c.uid,
                        gid: c.gid,
                    },
                }
            } else {
                Selects::Tokens {
                    issuer: c.issuer.as_ref().map(|i| i.get_ref().clone()),
                    subject: c.subject.as_ref().map(pattern).transpose()?,
                    claims: compile_claims(&c.claims, source)?,
                    spiffe_id: c.spiffe_id.as_ref().map(pattern).transpose()?,
                }
            };
            workloads.push(RemoteWorkload {
                name: c.name.get_ref().clone(),
                selects,
            });
        }
        Ok(RemoteWorkloads { workloads })
    }

    /// The first workload `caller` matches; else, per workload, why not.
    pub fn select(&self, caller: Caller<'_>) -> Result<String, Vec<String>> {
        let mut why_not = Vec::new();
        for w in &self.workloads {
            match w.selects.check(caller) {
                Ok(()) => return Ok(w.name.clone()),
                Err(reason) => why_not.push(format!("workload {:?}: {reason}", w.name)),
            }
        }
        if why_not.is_empty() {
            why_not.push("no [[workload]] selects callers from the network".to_owned());
        }
        Err(why_not)
    }
}

fn lower(list: &[toml::Spanned<String>]) -> Vec<String> {
    list.iter()
        .map(|h| h.get_ref().to_ascii_lowercase())
        .collect()
}

fn compile_claims(
    claims: &BTreeMap<String, toml::Spanned<String>>,
    source: &Source,
) -> Result<Vec<(String, Pattern)>, ConfigError> {
    claims
        .iter()
        .map(|(path, glob)| Ok((path.clone(), Pattern::compile(glob, source)?)))
        .collect()
}

/// Why a workload's selector does not take a caller (said in the refusal
/// and the audit line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(String);

fn mismatch(why: impl Into<String>) -> Result<(), Mismatch> {
    Err(Mismatch(why.into()))
}

impl Selects {
    fn check(&self, caller: Caller<'_>) -> Result<(), Mismatch> {
        match (self, caller) {
            (
                Selects::Nodes {
                    nodes,
                    node_workload,
                    node_instance,
                    narrowing,
                },
                Caller::Node {
                    name,
                    statement,
                    instance,
                },
            ) => {
                if !nodes.iter().any(|p| p.is_match(name)) {
                    return mismatch(format!("node {name:?} is not one of its nodes"));
                }
                if statement.workload != *node_workload {
                    return mismatch(format!(
                        "the node attests workload {:?}, not {node_workload:?}",
                        statement.workload
                    ));
                }
                check_instance(node_instance, instance)?;
                narrowing.check(statement)
            }
            (
                Selects::Tokens {
                    issuer,
                    subject,
                    claims,
                    spiffe_id,
                },
                Caller::Token(token),
            ) => {
                check_token(
                    issuer.as_deref(),
                    subject.as_ref(),
                    spiffe_id.as_ref(),
                    token,
                )?;
                check_claims(claims, &token.claims)
            }
            (
                Selects::Tokens {
                    issuer: None,
                    subject: None,
                    spiffe_id: Some(pattern),
                    claims,
                },
                Caller::Svid(id),
            ) if claims.is_empty() => check_spiffe_id(pattern, id),
            (Selects::Tokens { .. }, Caller::Svid(_)) => {
                mismatch("selects tokens (issuer, subject, claims), not X.509-SVIDs")
            }
            (Selects::Nodes { .. }, _) => mismatch("selects node statements"),
            (Selects::Tokens { .. }, Caller::Node { .. }) => {
                mismatch("selects tokens or SVIDs, not node statements")
            }
        }
    }
}

/// A token's issuer, subject and SPIFFE ID (a JWT-SVID's) against the
/// selector's.
fn check_token(
    issuer: Option<&str>,
    subject: Option<&Pattern>,
    spiffe_id: Option<&Pattern>,
    token: &VerifiedToken,
) -> Result<(), Mismatch> {
    if let Some(issuer) = issuer
        && issuer != token.issuer
    {
        return mismatch(format!("issuer {:?}, not {issuer:?}", token.issuer));
    }
    if let Some(subject) = subject
        && !subject.is_match(&token.subject)
    {
        return mismatch(format!(
            "subject {:?} does not match {:?}",
            token.subject, subject.text
        ));
    }
    match (spiffe_id, &token.spiffe_id) {
        (None, _) => Ok(()),
        (Some(pattern), Some(id)) => check_spiffe_id(pattern, id),
        (Some(_), None) => mismatch("the token is not a JWT-SVID"),
    }
}

/// The instance claims the gateway verified against `node_instance`.
fn check_instance(
    selectors: &[(String, Pattern)],
    instance: Option<&InstanceFacts>,
) -> Result<(), Mismatch> {
    if selectors.is_empty() {
        return Ok(());
    }
    let Some(instance) = instance else {
        return mismatch(
            "node_instance needs a node enrolled by its instance identity ([[gateway.enroll]]); this one is enrolled by key",
        );
    };
    for (claim, pattern) in selectors {
        match instance.claims.get(claim) {
            Some(value) if pattern.is_match(value) => {}
            Some(value) => {
                return mismatch(format!(
                    "instance {claim} {value:?} does not match {:?}",
                    pattern.text
                ));
            }
            None => return mismatch(format!("the instance has no verified {claim}")),
        }
    }
    Ok(())
}

fn check_spiffe_id(pattern: &Pattern, id: &str) -> Result<(), Mismatch> {
    if pattern.is_match(id) {
        return Ok(());
    }
    mismatch(format!(
        "SPIFFE ID {id:?} does not match {:?}",
        pattern.text
    ))
}

impl Narrowing {
    fn check(&self, statement: &Statement) -> Result<(), Mismatch> {
        let p = &statement.process;
        let program = |selector: &str| match &p.program_refusal {
            Some(why) => mismatch(format!("{selector} refused: {why}")),
            None => Ok(()),
        };
        if let Some(unit) = &self.unit
            && p.unit.as_deref() != Some(unit.as_str())
        {
            return mismatch(format!("unit {unit:?} expected, attested {:?}", p.unit));
        }
        if let Some(exe) = &self.exe {
            program("exe")?;
            if p.exe != *exe {
                return mismatch(format!("exe {exe:?} expected, attested {:?}", p.exe));
            }
        }
        if !self.exe_sha256.is_empty() {
            program("exe_sha256")?;
            if !p
                .exe_sha256
                .as_ref()
                .is_some_and(|h| self.exe_sha256.contains(h))
            {
                return mismatch(format!(
                    "exe_sha256 not one allowed (attested {:?})",
                    p.exe_sha256
                ));
            }
        }
        if !self.entrypoint_sha256.is_empty() {
            program("entrypoint_sha256")?;
            let attested = p.entrypoint_sha256.as_ref();
            if !attested.is_some_and(|h| self.entrypoint_sha256.contains(h)) {
                return mismatch(format!(
                    "entrypoint_sha256 not one allowed (attested {attested:?})"
                ));
            }
        }
        if let Some(uid) = self.uid
            && p.uid != uid
        {
            return mismatch(format!("uid {uid} expected, attested {}", p.uid));
        }
        if let Some(gid) = self.gid
            && p.gid != gid
        {
            return mismatch(format!("gid {gid} expected, attested {}", p.gid));
        }
        Ok(())
    }
}

fn check_claims(wanted: &[(String, Pattern)], claims: &Map<String, Value>) -> Result<(), Mismatch> {
    for (path, pattern) in wanted {
        let Some(value) = claim_at(claims, path) else {
            return mismatch(format!("the token has no claim {path:?}"));
        };
        if !value_matches(value, pattern) {
            return mismatch(format!(
                "claim {path:?} is {value}, which does not match {:?}",
                pattern.text
            ));
        }
    }
    Ok(())
}

/// The claim at a dotted path. Claim names may contain dots themselves
/// ("kubernetes.io"), so at each level the longest name that is a prefix
/// of the rest of the path (followed by a dot, or the end) is taken first.
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut names: Vec<&String> = claims
        .keys()
        .filter(|k| path == k.as_str() || path.starts_with(&format!("{k}.")))
        .collect();
    names.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for name in names {
        let value = &claims[name.as_str()];
        if path == name.as_str() {
            return Some(value);
        }
        let rest = &path[name.len() + 1..];
        if let Some(found) = value.as_object().and_then(|inner| claim_at(inner, rest)) {
            return Some(found);
        }
    }
    None
}

fn value_matches(value: &Value, pattern: &Pattern) -> bool {
    match value {
        Value::String(s) => pattern.is_match(s),
        Value::Number(n) => pattern.is_match(&n.to_string()),
        Value::Bool(b) => pattern.is_match(if *b { "true" } else { "false" }),
        Value::Array(items) => items
            .iter()
            .any(|item| !item.is_array() && value_matches(item, pattern)),
        Value::Null | Value::Object(_) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn dotted_paths_find_claims_whose_names_hold_dots() {
        let claims = json!({
            "kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "support"}},
            "kubernetes": {"io": {"namespace": "decoy"}},
            "groups": ["a", "b"]
        });
        let claims = claims.as_object().unwrap();
        assert_eq!(
            claim_at(claims, "kubernetes.io.namespace"),
            Some(&json!("agents"))
        );
        assert_eq!(
            claim_at(claims, "kubernetes.io.serviceaccount.name"),
            Some(&json!("support"))
        );
        assert_eq!(claim_at(claims, "kubernetes.io.pod"), None);
        assert_eq!(claim_at(claims, "groups"), Some(&json!(["a", "b"])));
    }

    fn config(text: &str) -> (Vec<WorkloadConfig>, Source) {
        #[derive(serde::Deserialize)]
        struct File {
            workload: Vec<WorkloadConfig>,
        }
        let file: File = toml::from_str(text).unwrap();
        (file.workload, Source::new("t.toml", text))
    }

    fn token(issuer: &str, subject: &str, claims: Value) -> VerifiedToken {
        VerifiedToken {
            issuer: issuer.into(),
            subject: subject.into(),
            fingerprint: "sha256:0".into(),
            expires_at: 0,
            spiffe_id: None,
            claims: claims.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_token_is_selected_by_issuer_subject_and_claims() {
        let (workloads, source) = config(
            r#"
[[workload]]
name = "support"
issuer = "https://k8s"
subject = "system:serviceaccount:agents:*"
claims = { "kubernetes.io.namespace" = "agents" }

[[workload]]
name = "svid"
spiffe_id = "spiffe://example.org/agents/*"
"#,
        );
        let remote = RemoteWorkloads::compile(&workloads, &source).unwrap();
        let good = token(
            "https://k8s",
            "system:serviceaccount:agents:support",
            json!({"kubernetes.io": {"namespace": "agents"}}),
        );
        assert_eq!(remote.select(Caller::Token(&good)).unwrap(), "support");
        let other_ns = token(
            "https://k8s",
            "system:serviceaccount:agents:support",
            json!({"kubernetes.io": {"namespace": "prod"}}),
        );
        let why = remote.select(Caller::Token(&other_ns)).unwrap_err();
        assert!(why[0].contains("does not match"), "{why:?}");
        let other_issuer = token(
            "https://other",
            "system:serviceaccount:agents:support",
            json!({"kubernetes.io": {"namespace": "agents"}}),
        );
        assert!(remote.select(Caller::Token(&other_issuer)).is_err());
        // A JWT-SVID: its SPIFFE ID, one segment under agents/ only.
        let mut svid = token("https://spire", "spiffe://example.org/agents/a", json!({}));
        svid.spiffe_id = Some(svid.subject.clone());
        assert_eq!(remote.select(Caller::Token(&svid)).unwrap(), "svid");
        svid.spiffe_id = Some("spiffe://example.org/agents/a/b".into());
        assert!(remote.select(Caller::Token(&svid)).is_err());
        // A token never matches a node workload, nor a statement a token one.
        let (nodes, source) = config("[[workload]]\nname = \"n\"\nnodes = [\"*\"]\n");
        let nodes = RemoteWorkloads::compile(&nodes, &source).unwrap();
        assert!(nodes.select(Caller::Token(&good)).is_err());
    }

    fn statement(workload: &str, exe: &str, refusal: Option<&str>) -> Statement {
        use crate::gateway::statement::{Binding, InstanceFacts, ProcessFacts};
        Statement {
            v: 1,
            aud: "gw".into(),
            iat: 0,
            nonce: "n".repeat(22),
            req: Binding {
                method: "POST".into(),
                authority: "api.openai.com".into(),
                path: "/".into(),
                body_sha256: String::new(),
            },
            workload: workload.into(),
            process: ProcessFacts {
                exe: exe.into(),
                program_refusal: refusal.map(str::to_owned),
                ..ProcessFacts::default()
            },
            instance: InstanceFacts::default(),
        }
    }

    #[test]
    fn a_statement_is_selected_by_node_workload_and_narrowing() {
        let (workloads, source) = config(
            r#"
[[workload]]
name = "support"
nodes = ["web-*"]
node_workload = "agents"
exe = "/usr/bin/python3"

[[workload]]
name = "batch"
nodes = ["batch-1"]
"#,
        );
        let remote = RemoteWorkloads::compile(&workloads, &source).unwrap();
        let good = statement("agents", "/usr/bin/python3", None);
        let caller = |name, statement| Caller::Node {
            name,
            statement,
            instance: None,
        };
        assert_eq!(remote.select(caller("web-1", &good)).unwrap(), "support");
        let why = remote.select(caller("db-1", &good)).unwrap_err();
        assert!(why[0].contains("not one of its nodes"), "{why:?}");
        let other = statement("admins", "/usr/bin/python3", None);
        assert!(remote.select(caller("web-1", &other)).is_err());
        let exe = statement("agents", "/usr/bin/perl", None);
        assert!(remote.select(caller("web-1", &exe)).is_err());
        let unpinned = statement("agents", "/usr/bin/python3", Some("writable"));
        let why = remote.select(caller("web-1", &unpinned)).unwrap_err();
        assert!(why[0].contains("refused: writable"), "{why:?}");
        let batch = statement("batch", "/bin/sh", None);
        assert_eq!(remote.select(caller("batch-1", &batch)).unwrap(), "batch");
    }

    #[test]
    fn node_instance_selects_only_claims_the_gateway_verified() {
        use crate::gateway::statement::InstanceFacts;
        let (workloads, source) = config(
            r#"
[[workload]]
name = "eu"
nodes = ["gcp:my-project/*"]
node_workload = "agents"
node_instance = { region = "europe-*", zone = "europe-west4-?" }
"#,
        );
        let remote = RemoteWorkloads::compile(&workloads, &source).unwrap();
        let facts = |region: &str, zone: &str| InstanceFacts {
            provider: Some("gcp".into()),
            verified: true,
            claims: BTreeMap::from([
                ("region".to_owned(), region.to_owned()),
                ("zone".to_owned(), zone.to_owned()),
            ]),
            evidence: None,
        };
        let name = "gcp:my-project/1";
        let verified = facts("europe-west4", "europe-west4-b");
        let good = statement("agents", "/usr/bin/python3", None);
        let caller = |statement, instance| Caller::Node {
            name,
            statement,
            instance,
        };
        assert_eq!(remote.select(caller(&good, Some(&verified))).unwrap(), "eu");
        let us = facts("us-central1", "us-central1-a");
        let why = remote.select(caller(&good, Some(&us))).unwrap_err();
        assert!(why[0].contains("does not match"), "{why:?}");
        // What a node asserts in its statement is not what the gateway
        // verified: a node enrolled by key never matches.
        let mut claimed = statement("agents", "/usr/bin/python3", None);
        claimed.instance = verified.clone();
        let why = remote.select(caller(&claimed, None)).unwrap_err();
        assert!(why[0].contains("enrolled by key"), "{why:?}");
    }
}
