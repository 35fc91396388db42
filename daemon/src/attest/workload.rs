//! Which `[[workload]]` an attestation is: every selector a workload lists
//! must match, and the first workload (in file order) whose selectors all
//! match wins. The report explains each selector of each workload, for
//! `warrant explain` and for the body of a 403; it holds attested facts and
//! configured values, never a secret.
//!
//! The selectors on what program runs (exe, exe_sha256, entrypoint_sha256)
//! refuse a process in a nested user namespace unless the workload sets
//! `allow_user_namespaces`: there /proc/PID/exe and argv can be repointed
//! with prctl(PR_SET_MM_MAP), so they would name whatever the process chose.

use serde::Serialize;

use super::{Attestation, FileHash, UserNamespace};
use crate::config::{CgroupGlob, ConfigError, ConfigErrorKind, Source, WorkloadConfig};

/// A `[[workload]]` selector that cannot be used (its name is `config`'s,
/// its cgroup glob serde's).
#[derive(Debug, thiserror::Error)]
pub enum WorkloadConfigError {
    #[error("{0:?} is not a SHA-256 in hex (64 hex digits)")]
    BadHash(String),
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
            // One line for the selectors refused for the same reason.
            let refused: Vec<&SelectorResult> = verdict
                .selectors
                .iter()
                .filter(|s| s.refused.is_some())
                .collect();
            if let Some(reason) = refused.first().and_then(|s| s.refused.as_ref()) {
                let names: Vec<&str> = refused.iter().map(|s| s.selector).collect();
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
    unit: Option<String>,
    slice: Option<String>,
    cgroup: Option<CgroupGlob>,
    exe: Option<String>,
    /// Lower-case hex, as attestations report hashes.
    exe_sha256: Vec<String>,
    entrypoint_sha256: Vec<String>,
    allow_user_namespaces: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    unusable: Option<String>,
}

pub struct WorkloadMatcher {
    workloads: Vec<Compiled>,
}

impl WorkloadMatcher {
    /// Compiles the `[[workload]]` sections; a malformed hash is an error at
    /// its place in `source`. A workload that lists no selector is kept but
    /// matches nothing, and its verdict says why: with no selector it would
    /// match every process.
    pub fn compile(
        configs: &[WorkloadConfig],
        source: &Source,
    ) -> Result<WorkloadMatcher, ConfigError> {
        let hashes = |list: &[toml::Spanned<String>]| {
            list.iter()
                .map(|hash| {
                    let text = hash.get_ref();
                    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(text.to_ascii_lowercase())
                    } else {
                        Err(source.error_at(
                            &hash.span(),
                            ConfigErrorKind::Invalid,
                            WorkloadConfigError::BadHash(text.clone()),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut workloads = Vec::with_capacity(configs.len());
        for c in configs {
            let compiled = Compiled {
                name: c.name.get_ref().clone(),
                unit: c.unit.as_ref().map(|u| u.get_ref().clone()),
                slice: c.slice.as_ref().map(|s| s.get_ref().clone()),
                cgroup: c.cgroup.as_ref().map(|g| g.get_ref().clone()),
                exe: c.exe.as_ref().map(|e| e.get_ref().clone()),
                exe_sha256: hashes(&c.exe_sha256)?,
                entrypoint_sha256: hashes(&c.entrypoint_sha256)?,
                allow_user_namespaces: c.allow_user_namespaces,
                uid: c.uid,
                gid: c.gid,
                unusable: None,
            };
            let has_selector = compiled.unit.is_some()
                || compiled.slice.is_some()
                || compiled.cgroup.is_some()
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
    let mut selectors = Vec::new();
    let unknown = || "unknown (cgroup not found)".to_owned();
    if let Some(unit) = &w.unit {
        selectors.push(SelectorResult {
            selector: "unit",
            expected: unit.clone(),
            actual: att.unit.clone().unwrap_or_else(|| "none".to_owned()),
            matched: att.unit.as_deref() == Some(unit.as_str()),
            refused: None,
        });
    }
    if let Some(slice) = &w.slice {
        let matched = att
            .cgroup
            .as_deref()
            .is_some_and(|path| path.split('/').any(|c| c == slice));
        selectors.push(SelectorResult {
            selector: "slice",
            expected: slice.clone(),
            actual: att.cgroup.clone().unwrap_or_else(unknown),
            matched,
            refused: None,
        });
    }
    if let Some(glob) = &w.cgroup {
        selectors.push(SelectorResult {
            selector: "cgroup",
            expected: glob.as_str().to_owned(),
            actual: att.cgroup.clone().unwrap_or_else(unknown),
            matched: att.cgroup.as_deref().is_some_and(|p| glob.is_match(p)),
            refused: None,
        });
    }
    let program = program_refusal(w, att.user_namespace);
    let program = |result: SelectorResult| match &program {
        Some(reason) => SelectorResult {
            matched: false,
            refused: Some(reason.clone()),
            ..result
        },
        None => result,
    };
    if let Some(exe) = &w.exe {
        selectors.push(program(SelectorResult {
            selector: "exe",
            expected: exe.clone(),
            actual: att.exe.display().to_string(),
            matched: att.exe.as_os_str() == exe.as_str(),
            refused: None,
        }));
    }
    if !w.exe_sha256.is_empty() {
        selectors.push(program(hash_selector(
            "exe_sha256",
            &w.exe_sha256,
            &att.exe_hash,
        )));
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
        selectors.push(program(result));
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

/// Why the selectors on what program runs cannot be believed for this
/// process, if they cannot.
fn program_refusal(w: &Compiled, userns: UserNamespace) -> Option<String> {
    if w.allow_user_namespaces || !userns.is_nested() {
        return None;
    }
    Some(format!(
        "process runs in a nested user namespace ({userns}), where /proc/PID/exe and argv \
         can be repointed with prctl(PR_SET_MM); set allow_user_namespaces = true on this \
         workload to accept it"
    ))
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
    use crate::attest::{Entrypoint, InstanceState, Interpreter, Target};

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
            cgroup: Some("/warrant.slice/warrant-agents.slice/agent.service".to_owned()),
            unit: Some("agent.service".to_owned()),
            exe: PathBuf::from("/usr/bin/python3"),
            exe_hash: sha(EXE_HASH),
            argv0: Some("python3".to_owned()),
            entrypoint: Some(Entrypoint {
                interpreter: Interpreter::Python,
                target: Target::Script("agent.py".to_owned()),
                path: Some(PathBuf::from("/srv/agent.py")),
                hash: sha(SCRIPT_HASH),
            }),
            user_namespace,
            instance: Arc::new(InstanceState::Pending),
        }
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
}
