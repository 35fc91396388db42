//! Which `[[workload]]` an attestation is: every selector a workload lists
//! must match, and the first workload (in file order) whose selectors all
//! match wins. The report explains each selector of each workload, for
//! `warrant explain` and for the body of a 403; it holds attested facts and
//! configured values, never a secret.
//!
//! The unit, slice and cgroup selectors are decided together by
//! `scope::decide`, on the facts of the cgroup's directories the attestor
//! read, the same function the tagger uses: a name-alike in a delegated
//! subtree, or a cgroup not owned by root, never matches.
//!
//! The selectors on what program runs (exe, exe_sha256, entrypoint_sha256,
//! and policy exe_signers through [`WorkloadMatcher::program_refusal`])
//! refuse a process whose program cannot be pinned: one in a nested user
//! namespace unless the workload sets `allow_user_namespaces` (there
//! /proc/PID/exe and argv can be repointed with prctl(PR_SET_MM_MAP)), one
//! with code-injecting variables in its environment that the workload does
//! not allow by name (`allow_env`), one that could have rewritten its
//! executable, and for entrypoint_sha256 an entrypoint that cannot pin the
//! program (`entrypoint::Entrypoint::refused`).

use serde::Serialize;

use super::{
    Attestation, FileHash,
    scope::{Decision, NotNamed, Scope, ScopeError},
};
use crate::config::{ConfigError, ConfigErrorKind, Source, WorkloadConfig};

/// A `[[workload]]` selector that cannot be used (its name is `config`'s).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadConfigError {
    #[error("{0:?} is not a SHA-256 in hex (64 hex digits)")]
    BadHash(String),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("allow_env entry {0:?} is not a variable name")]
    BadEnvName(String),
}

/// One selector's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SelectorResult {
    /// The config key: unit, slice, cgroup, exe, exe_sha256, ...
    pub selector: &'static str,
    /// What the workload asks for.
    pub expected: String,
    /// What was attested (or why it is unknown).
    pub actual: String,
    pub matched: bool,
    /// Why the selector was refused whatever the attested value (a nested
    /// user namespace); absent when `matched` compares the values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadVerdict {
    pub workload: String,
    pub matched: bool,
    pub selectors: Vec<SelectorResult>,
    /// Why the workload cannot match whatever is attested (a workload with no
    /// selector would otherwise match every process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unusable: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchReport {
    /// The workload the connection belongs to, if any.
    pub matched: Option<String>,
    pub workloads: Vec<WorkloadVerdict>,
}

impl MatchReport {
    /// One line per failing selector of each workload, for a 403 body.
    pub fn why_not(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for verdict in &self.workloads {
            if let Some(reason) = &verdict.unusable {
                lines.push(format!("workload {:?}: {reason}", verdict.workload));
            }
            for sel in verdict
                .selectors
                .iter()
                .filter(|s| !s.matched && s.refused.is_none())
            {
                lines.push(format!(
                    "workload {:?}: {} {} expected, attested {}",
                    verdict.workload, sel.selector, sel.expected, sel.actual
                ));
            }
            // One line per reason, naming the selectors refused for it.
            let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
            for sel in &verdict.selectors {
                let Some(reason) = sel.refused.as_deref() else {
                    continue;
                };
                match reasons.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, names)) => names.push(sel.selector),
                    None => reasons.push((reason, vec![sel.selector])),
                }
            }
            for (reason, names) in reasons {
                lines.push(format!(
                    "workload {:?}: {} refused: {reason}",
                    verdict.workload,
                    names.join(", ")
                ));
            }
        }
        lines
    }
}

impl MatchReport {
    /// What a refused connection is told (the 403 body, inside the
    /// provider's error shape) and what the audit line records: the attested
    /// facts and, per workload, the selectors that failed. Argv beyond the
    /// program and script names is never kept, so nothing here is secret.
    pub fn refusal(&self, att: &Attestation) -> serde_json::Value {
        serde_json::json!({
            "attested": {
                "tgid": att.tgid,
                "uid": att.uid,
                "gid": att.gid,
                "cgroup": att.cgroup,
                "unit": att.unit,
                "exe": att.exe.display().to_string(),
                "exe_sha256": att.exe_hash.describe(),
                "user_namespace": att.user_namespace,
                "entrypoint": att.entrypoint.as_ref().map(|ep| serde_json::json!({
                    "interpreter": ep.interpreter,
                    "target": ep.target,
                    "path": ep.path.as_ref().map(|p| p.display().to_string()),
                    "sha256": ep.hash.describe(),
                })),
            },
            "matched": self.matched,
            "reasons": self.why_not(),
        })
    }
}

struct Compiled {
    name: String,
    /// The unit, slice and cgroup selectors as written, for reports.
    places: Vec<(&'static str, String)>,
    scope: Option<Scope>,
    exe: Option<String>,
    exe_sha256: Vec<String>,
    entrypoint_sha256: Vec<String>,
    allow_user_namespaces: bool,
    allow_env: Vec<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    unusable: Option<String>,
}

pub struct WorkloadMatcher {
    workloads: Vec<Compiled>,
}

impl WorkloadMatcher {
    /// Compiles the `[[workload]]` sections; a malformed hash, a unit or
    /// slice name systemd would not make, `delegated` without `unit` or a
    /// bad `allow_env` entry is an error at its place in `source`. A
    /// workload that lists no selector is kept but matches nothing, and its
    /// verdict says why: with no selector it would match every process.
    pub fn compile(
        configs: &[WorkloadConfig],
        source: &Source,
    ) -> Result<WorkloadMatcher, ConfigError> {
        let invalid = |span: std::ops::Range<usize>, problem: WorkloadConfigError| {
            source.error_at(&span, ConfigErrorKind::Invalid, problem)
        };
        let hashes = |list: &[toml::Spanned<String>]| {
            list.iter()
                .map(|hash| {
                    let text = hash.get_ref();
                    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(text.to_ascii_lowercase())
                    } else {
                        Err(invalid(
                            hash.span(),
                            WorkloadConfigError::BadHash(text.clone()),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut workloads = Vec::with_capacity(configs.len());
        for c in configs {
            let scope = Scope::of_workload(c).map_err(|error| {
                // At the selector the error is about, else the name.
                let span = match &error {
                    ScopeError::Unit { .. } => c.unit.as_ref().map(|u| u.span()),
                    ScopeError::Slice { .. } => c.slice.as_ref().map(|s| s.span()),
                    ScopeError::Glob { .. } => c.cgroup.as_ref().map(|g| g.span()),
                    ScopeError::DelegatedWithoutUnit => None,
                };
                invalid(
                    span.unwrap_or_else(|| c.name.span()),
                    WorkloadConfigError::Scope(error),
                )
            })?;
            for name in &c.allow_env {
                if name.get_ref().is_empty() || name.get_ref().contains('=') {
                    return Err(invalid(
                        name.span(),
                        WorkloadConfigError::BadEnvName(name.get_ref().clone()),
                    ));
                }
            }
            let places: Vec<(&'static str, String)> = [
                ("unit", c.unit.as_ref().map(|u| u.get_ref().clone())),
                ("slice", c.slice.as_ref().map(|s| s.get_ref().clone())),
                (
                    "cgroup",
                    c.cgroup.as_ref().map(|g| g.get_ref().as_str().to_owned()),
                ),
            ]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .collect();
            let compiled = Compiled {
                name: c.name.get_ref().clone(),
                places,
                scope,
                exe: c.exe.as_ref().map(|e| e.get_ref().clone()),
                exe_sha256: hashes(&c.exe_sha256)?,
                entrypoint_sha256: hashes(&c.entrypoint_sha256)?,
                allow_user_namespaces: c.allow_user_namespaces,
                allow_env: c.allow_env.iter().map(|e| e.get_ref().clone()).collect(),
                uid: c.uid,
                gid: c.gid,
                unusable: None,
            };
            let has_selector = !compiled.places.is_empty()
                || compiled.exe.is_some()
                || !compiled.exe_sha256.is_empty()
                || !compiled.entrypoint_sha256.is_empty()
                || compiled.uid.is_some()
                || compiled.gid.is_some();
            workloads.push(Compiled {
                unusable: (!has_selector).then(|| "lists no selector".to_owned()),
                ..compiled
            });
        }
        Ok(WorkloadMatcher { workloads })
    }

    /// Why the program identity of `att` cannot be believed for workload
    /// `name` (policy `exe_signers` asks this: a signature pins the
    /// program no better than a hash); None when it can, or when there is
    /// no such workload.
    pub fn program_refusal(&self, name: &str, att: &Attestation) -> Option<String> {
        let workload = self.workloads.iter().find(|w| w.name == name)?;
        program_refusals(workload, att, false).into_iter().next()
    }

    pub fn evaluate(&self, att: &Attestation) -> MatchReport {
        let workloads: Vec<WorkloadVerdict> =
            self.workloads.iter().map(|w| verdict(w, att)).collect();
        MatchReport {
            matched: workloads
                .iter()
                .find(|v| v.matched)
                .map(|v| v.workload.clone()),
            workloads,
        }
    }
}

fn verdict(w: &Compiled, att: &Attestation) -> WorkloadVerdict {
    let mut selectors = match &w.scope {
        Some(scope) => place_selectors(w, scope, att),
        None => Vec::new(),
    };
    let exe_refusal = program_refusals(w, att, false).into_iter().next();
    let entry_refusal = program_refusals(w, att, true).into_iter().next();
    let program = |result: SelectorResult, refusal: &Option<String>| match refusal {
        Some(reason) => SelectorResult {
            matched: false,
            refused: Some(reason.clone()),
            ..result
        },
        None => result,
    };
    if let Some(exe) = &w.exe {
        selectors.push(program(
            SelectorResult {
                selector: "exe",
                expected: exe.clone(),
                actual: att.exe.display().to_string(),
                matched: att.exe.as_os_str() == exe.as_str(),
                refused: None,
            },
            &exe_refusal,
        ));
    }
    if !w.exe_sha256.is_empty() {
        selectors.push(program(
            hash_selector("exe_sha256", &w.exe_sha256, &att.exe_hash),
            &exe_refusal,
        ));
    }
    if !w.entrypoint_sha256.is_empty() {
        let result = match &att.entrypoint {
            Some(ep) => hash_selector("entrypoint_sha256", &w.entrypoint_sha256, &ep.hash),
            None => SelectorResult {
                selector: "entrypoint_sha256",
                expected: one_of(&w.entrypoint_sha256),
                actual: "none: the executable is not a recognised interpreter".to_owned(),
                matched: false,
                refused: None,
            },
        };
        selectors.push(program(result, &entry_refusal));
    }
    if let Some(uid) = w.uid {
        selectors.push(SelectorResult {
            selector: "uid",
            expected: uid.to_string(),
            actual: att.uid.to_string(),
            matched: att.uid == uid,
            refused: None,
        });
    }
    if let Some(gid) = w.gid {
        selectors.push(SelectorResult {
            selector: "gid",
            expected: gid.to_string(),
            actual: att.gid.to_string(),
            matched: att.gid == gid,
            refused: None,
        });
    }
    WorkloadVerdict {
        workload: w.name.clone(),
        matched: w.unusable.is_none() && selectors.iter().all(|s| s.matched),
        selectors,
        unusable: w.unusable.clone(),
    }
}

/// The results of the workload's place selectors (`unit`, `slice`,
/// `cgroup`): one decision of [`scope`], shown against each.
fn place_selectors(w: &Compiled, scope: &Scope, att: &Attestation) -> Vec<SelectorResult> {
    let decision = match &att.cgroup_chain {
        Some(chain) => chain.decide(scope),
        None => Decision::Outside {
            why: NotNamed::NotFound,
        },
    };
    let place = match (&att.cgroup, &att.unit) {
        (Some(path), Some(unit)) => format!("{path} (unit {unit})"),
        (Some(path), None) => path.clone(),
        (None, _) => "unknown (cgroup not found)".to_owned(),
    };
    let (actual, refused) = match &decision {
        Decision::Outside { why } => (format!("{place}: {why}"), None),
        Decision::Refused { why } => (place, Some(why.clone())),
        Decision::Selected | Decision::Within { .. } => (place, None),
    };
    w.places
        .iter()
        .map(|(key, expected)| SelectorResult {
            selector: key,
            expected: expected.clone(),
            actual: actual.clone(),
            matched: decision.matches(),
            refused: refused.clone(),
        })
        .collect()
}

/// Why the selectors on what program runs cannot be believed for this
/// process, in order; `entrypoint` adds the entrypoint's own reasons.
fn program_refusals(w: &Compiled, att: &Attestation, entrypoint: bool) -> Vec<String> {
    let mut reasons = Vec::new();
    if att.user_namespace.is_nested() && !w.allow_user_namespaces {
        reasons.push(format!(
            "process runs in a nested user namespace ({}), where /proc/PID/exe and argv \
             can be repointed with prctl(PR_SET_MM); set allow_user_namespaces = true on this \
             workload to accept it",
            att.user_namespace
        ));
    }
    let injected: Vec<&str> = att
        .injected_env
        .iter()
        .filter(|name| !w.allow_env.contains(name))
        .map(String::as_str)
        .collect();
    if !injected.is_empty() {
        reasons.push(format!(
            "the process's environment sets {}, which make(s) it load other code first; \
             allow them by name with allow_env on this workload if that is intended",
            injected.join(", ")
        ));
    }
    if let Some(why) = &att.exe_writable {
        reasons.push(format!(
            "the agent could have changed its executable: {why}"
        ));
    }
    if entrypoint && let Some(why) = att.entrypoint.as_ref().and_then(|ep| ep.refused.as_ref()) {
        reasons.push(why.clone());
    }
    reasons
}

/// Absent hashes (too large, unreadable) match nothing: fail closed.
fn hash_selector(selector: &'static str, allowed: &[String], hash: &FileHash) -> SelectorResult {
    SelectorResult {
        selector,
        expected: one_of(allowed),
        actual: hash.describe(),
        matched: hash.hex().is_some_and(|h| allowed.iter().any(|a| a == h)),
        refused: None,
    }
}

fn one_of(list: &[String]) -> String {
    if list.len() == 1 {
        list[0].clone()
    } else {
        format!("one of [{}]", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::{path::PathBuf, sync::Arc};

    use super::*;
    use crate::attest::{
        Entrypoint, InstanceState, Interpreter, Target, UserNamespace,
        scope::{CgroupChain, DirFacts, Hierarchy},
    };

    const EXE_HASH: &str = "aa00000000000000000000000000000000000000000000000000000000000001";
    const SCRIPT_HASH: &str = "bb00000000000000000000000000000000000000000000000000000000000002";
    const NESTED: UserNamespace = UserNamespace::Nested { inode: 4026532210 };

    fn sha(hex: &str) -> FileHash {
        FileHash::Sha256 {
            sha256: hex.to_owned(),
        }
    }

    fn attestation(user_namespace: UserNamespace) -> Attestation {
        Attestation {
            tgid: 4242,
            pid: 4242,
            uid: 1001,
            gid: 1002,
            cgroup_id: 77,
            cgroup: Some(AGENT_CGROUP.to_owned()),
            unit: Some("agent.service".to_owned()),
            cgroup_chain: Some(Arc::new(chain(AGENT_CGROUP, &[]))),
            injected_env: Vec::new(),
            exe_writable: None,
            exe: PathBuf::from("/usr/bin/python3"),
            exe_hash: sha(EXE_HASH),
            argv0: Some("python3".to_owned()),
            entrypoint: Some(Entrypoint {
                interpreter: Interpreter::Python,
                target: Target::Script("agent.py".to_owned()),
                path: Some(PathBuf::from("/srv/agent.py")),
                hash: sha(SCRIPT_HASH),
                refused: None,
            }),
            user_namespace,
            instance: Arc::new(InstanceState::Pending),
        }
    }

    const AGENT_CGROUP: &str = "/warrant.slice/warrant-agents.slice/agent.service";

    /// The facts of `path` and its ancestors: the system's own, but for
    /// those listed.
    fn chain(path: &str, special: &[(&str, DirFacts)]) -> CgroupChain {
        CgroupChain::given(&Hierarchy::system("/sys/fs/cgroup".into()), path, |dir| {
            special
                .iter()
                .find(|(p, _)| *p == dir)
                .map_or(DirFacts::SYSTEM, |(_, f)| *f)
        })
    }

    /// A workload on unit and on every selector of what program runs.
    fn program_workload(extra: &str) -> WorkloadMatcher {
        let text = format!(
            "[[workload]]\nname = \"agent\"\nunit = \"agent.service\"\n\
             exe = \"/usr/bin/python3\"\nexe_sha256 = [\"{EXE_HASH}\"]\n\
             entrypoint_sha256 = [\"{SCRIPT_HASH}\"]\n{extra}"
        );
        let config = crate::config::Config::parse(&text, "test").unwrap();
        WorkloadMatcher::compile(&config.workloads, &config.source).unwrap()
    }

    #[test]
    fn a_malformed_hash_is_an_error_at_its_place() {
        let text = "[[workload]]\nname = \"a\"\nexe_sha256 = [\"abc\"]\n";
        let config = crate::config::Config::parse(text, "w.toml").unwrap();
        let Err(err) = WorkloadMatcher::compile(&config.workloads, &config.source) else {
            panic!("a malformed hash compiled");
        };
        assert!(err.to_string().starts_with("w.toml:3:15: "), "{err}");
        assert!(err.message().contains("SHA-256"), "{err}");
    }

    #[test]
    fn a_slice_systemd_would_not_make_is_an_error_at_its_place() {
        let text = "[[workload]]\nname = \"a\"\nslice = \"a--b.slice\"\n";
        let config = crate::config::Config::parse(text, "w.toml").unwrap();
        let Err(err) = WorkloadMatcher::compile(&config.workloads, &config.source) else {
            panic!("a bad slice compiled");
        };
        assert!(err.to_string().starts_with("w.toml:3:9: "), "{err}");
        let text = "[[workload]]\nname = \"a\"\nslice = \"a.slice\"\ndelegated = true\n";
        let config = crate::config::Config::parse(text, "w.toml").unwrap();
        let Err(err) = WorkloadMatcher::compile(&config.workloads, &config.source) else {
            panic!("delegated without unit compiled");
        };
        assert!(err.message().contains("needs a unit"), "{err}");
    }

    #[test]
    fn program_selectors_match_a_process_in_the_host_user_namespace() {
        let report = program_workload("").evaluate(&attestation(UserNamespace::Host));
        assert_eq!(report.matched.as_deref(), Some("agent"));
        assert!(
            report.workloads[0]
                .selectors
                .iter()
                .all(|s| s.refused.is_none())
        );
    }

    #[test]
    fn program_selectors_refuse_a_nested_user_namespace_and_say_why() {
        let report = program_workload("").evaluate(&attestation(NESTED));
        assert_eq!(report.matched, None);
        let verdict = &report.workloads[0];
        let refused: Vec<_> = verdict
            .selectors
            .iter()
            .filter(|s| s.refused.is_some())
            .map(|s| s.selector)
            .collect();
        assert_eq!(refused, ["exe", "exe_sha256", "entrypoint_sha256"]);
        assert!(
            verdict
                .selectors
                .iter()
                .all(|s| s.matched == (s.selector == "unit"))
        );
        // The attested values are still shown, and would have matched.
        assert_eq!(verdict.selectors[1].actual, "/usr/bin/python3");

        let why = report.why_not();
        assert_eq!(why.len(), 1, "{why:?}");
        assert_eq!(
            why[0],
            "workload \"agent\": exe, exe_sha256, entrypoint_sha256 refused: process runs in a \
             nested user namespace (nested:4026532210), where /proc/PID/exe and argv can be \
             repointed with prctl(PR_SET_MM); set allow_user_namespaces = true on this \
             workload to accept it"
        );
    }

    #[test]
    fn allow_user_namespaces_accepts_a_nested_process_but_still_checks_the_hashes() {
        let matcher = program_workload("allow_user_namespaces = true\n");
        let report = matcher.evaluate(&attestation(NESTED));
        assert_eq!(report.matched.as_deref(), Some("agent"));

        let mut att = attestation(NESTED);
        att.exe_hash = sha(SCRIPT_HASH);
        let report = matcher.evaluate(&att);
        assert_eq!(report.matched, None);
        let why = report.why_not();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains(&format!("exe_sha256 {EXE_HASH} expected")),
            "{why:?}"
        );
        assert!(!why[0].contains("user namespace"), "{why:?}");
    }

    #[test]
    fn workloads_without_program_selectors_ignore_the_user_namespace() {
        let text = "[[workload]]\nname = \"cg\"\nunit = \"agent.service\"\n\
                    slice = \"warrant-agents.slice\"\ncgroup = \"/warrant.slice/**\"\n\
                    uid = 1001\ngid = 1002\n";
        let config = crate::config::Config::parse(text, "test").unwrap();
        let report = WorkloadMatcher::compile(&config.workloads, &config.source)
            .unwrap()
            .evaluate(&attestation(NESTED));
        assert_eq!(report.matched.as_deref(), Some("cg"));
        assert!(report.why_not().is_empty());
    }

    #[test]
    fn the_refusal_and_explain_show_the_user_namespace() {
        let att = attestation(NESTED);
        let report = program_workload("").evaluate(&att);
        let body = report.refusal(&att);
        assert_eq!(body["attested"]["user_namespace"], "nested:4026532210");
        let reasons = body["reasons"].as_array().unwrap();
        assert!(
            reasons[0]
                .as_str()
                .unwrap()
                .contains("allow_user_namespaces = true")
        );

        let text = crate::attest::explain::render(&att, &report);
        assert!(text.contains("user ns     nested:4026532210"), "{text}");
        assert!(text.contains("FAIL exe "), "{text}");
        assert!(
            text.contains("refused: process runs in a nested user namespace"),
            "{text}"
        );
    }

    #[test]
    fn a_name_alike_cgroup_is_refused_and_the_report_says_why() {
        let text = "[[workload]]\nname = \"cg\"\nunit = \"agent.service\"\n";
        let config = crate::config::Config::parse(text, "test").unwrap();
        let matcher = WorkloadMatcher::compile(&config.workloads, &config.source).unwrap();
        assert_eq!(
            matcher
                .evaluate(&attestation(UserNamespace::Host))
                .matched
                .as_deref(),
            Some("cg")
        );
        let mut att = attestation(UserNamespace::Host);
        let user = DirFacts {
            uid: 1000,
            ..DirFacts::SYSTEM
        };
        att.cgroup_chain = Some(Arc::new(chain(AGENT_CGROUP, &[("/warrant.slice", user)])));
        let report = matcher.evaluate(&att);
        assert_eq!(report.matched, None);
        let why = report.why_not();
        assert!(
            why[0].contains("unit refused: cgroup /warrant.slice is owned by uid 1000"),
            "{why:?}"
        );
        // Without the facts (cgroup gone), nothing matches.
        att.cgroup_chain = None;
        assert_eq!(matcher.evaluate(&att).matched, None);
    }

    #[test]
    fn injected_environment_refuses_program_selectors_unless_allowed_by_name() {
        let mut att = attestation(UserNamespace::Host);
        att.injected_env = vec!["PYTHONPATH".into(), "LD_PRELOAD".into()];
        let report = program_workload("").evaluate(&att);
        assert_eq!(report.matched, None);
        let why = report.why_not();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("sets PYTHONPATH, LD_PRELOAD"), "{why:?}");
        let partly = program_workload("allow_env = [\"PYTHONPATH\"]\n").evaluate(&att);
        assert!(
            partly.why_not()[0].contains("sets LD_PRELOAD,"),
            "{:?}",
            partly.why_not()
        );
        let allowed =
            program_workload("allow_env = [\"PYTHONPATH\", \"LD_PRELOAD\"]\n").evaluate(&att);
        assert_eq!(allowed.matched.as_deref(), Some("agent"));
    }

    #[test]
    fn a_writable_executable_or_a_refused_entrypoint_pins_nothing() {
        let mut att = attestation(UserNamespace::Host);
        att.exe_writable = Some("the process runs as root, and can change any file".into());
        let report = program_workload("").evaluate(&att);
        assert_eq!(report.matched, None);
        assert!(report.why_not()[0].contains("exe, exe_sha256, entrypoint_sha256 refused"));

        let mut att = attestation(UserNamespace::Host);
        if let Some(ep) = att.entrypoint.as_mut() {
            ep.refused = Some("\"agent.py\" is a relative path".into());
        }
        let report = program_workload("").evaluate(&att);
        assert_eq!(report.matched, None);
        let why = report.why_not();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("entrypoint_sha256 refused: \"agent.py\" is a relative path"),
            "{why:?}"
        );
        // exe_signers asks the same question, without the entrypoint.
        let matcher = program_workload("");
        assert_eq!(matcher.program_refusal("agent", &att), None);
        att.user_namespace = NESTED;
        assert!(
            matcher
                .program_refusal("agent", &att)
                .is_some_and(|why| why.contains("nested user namespace"))
        );
        assert_eq!(matcher.program_refusal("nobody", &att), None);
    }
}
