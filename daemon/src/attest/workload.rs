//! Which `[[workload]]` an attestation is: every selector a workload lists
//! must match, and the first workload (in file order) whose selectors all
//! match wins. The report explains each selector of each workload, for
//! `warrant explain` and for the body of a 403; it holds attested facts and
//! configured values, never a secret.

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use super::{Attestation, FileHash};
use crate::config::WorkloadConfig;

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
            for sel in verdict.selectors.iter().filter(|s| !s.matched) {
                lines.push(format!(
                    "workload {:?}: {} {} expected, attested {}",
                    verdict.workload, sel.selector, sel.expected, sel.actual
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
    cgroup: Option<(String, GlobMatcher)>,
    exe: Option<String>,
    exe_sha256: Vec<String>,
    entrypoint_sha256: Vec<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    unusable: Option<String>,
}

pub struct WorkloadMatcher {
    workloads: Vec<Compiled>,
}

impl WorkloadMatcher {
    /// Compiles the `[[workload]]` sections. A workload whose selectors
    /// cannot be used (a bad glob or hash, or no selector at all) is kept but
    /// matches nothing, and its verdict says why: the config loader rejects
    /// these already, this is the fail-closed backstop.
    pub fn new(configs: &[WorkloadConfig]) -> WorkloadMatcher {
        let workloads = configs
            .iter()
            .map(|c| {
                let mut unusable = None;
                let cgroup = c.cgroup.as_ref().and_then(|glob| {
                    let text = glob.get_ref().clone();
                    match Glob::new(&text) {
                        Ok(g) => Some((text, g.compile_matcher())),
                        Err(err) => {
                            unusable = Some(format!("bad cgroup glob {text:?}: {err}"));
                            None
                        }
                    }
                });
                let hashes = |list: &[toml::Spanned<String>]| -> Vec<String> {
                    list.iter()
                        .map(|h| h.get_ref().to_ascii_lowercase())
                        .collect()
                };
                let exe_sha256 = hashes(&c.exe_sha256);
                let entrypoint_sha256 = hashes(&c.entrypoint_sha256);
                if let Some(bad) = exe_sha256
                    .iter()
                    .chain(&entrypoint_sha256)
                    .find(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    unusable = Some(format!("{bad:?} is not a SHA-256 in hex"));
                }
                let compiled = Compiled {
                    name: c.name.get_ref().clone(),
                    unit: c.unit.as_ref().map(|u| u.get_ref().clone()),
                    slice: c.slice.as_ref().map(|s| s.get_ref().clone()),
                    cgroup,
                    exe: c.exe.as_ref().map(|e| e.get_ref().clone()),
                    exe_sha256,
                    entrypoint_sha256,
                    uid: c.uid,
                    gid: c.gid,
                    unusable,
                };
                let has_selector = compiled.unit.is_some()
                    || compiled.slice.is_some()
                    || c.cgroup.is_some()
                    || compiled.exe.is_some()
                    || !compiled.exe_sha256.is_empty()
                    || !compiled.entrypoint_sha256.is_empty()
                    || compiled.uid.is_some()
                    || compiled.gid.is_some();
                Compiled {
                    unusable: compiled
                        .unusable
                        .clone()
                        .or_else(|| (!has_selector).then(|| "lists no selector".to_owned())),
                    ..compiled
                }
            })
            .collect();
        WorkloadMatcher { workloads }
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
        });
    }
    if let Some((text, glob)) = &w.cgroup {
        selectors.push(SelectorResult {
            selector: "cgroup",
            expected: text.clone(),
            actual: att.cgroup.clone().unwrap_or_else(unknown),
            matched: att.cgroup.as_deref().is_some_and(|p| glob.is_match(p)),
        });
    }
    if let Some(exe) = &w.exe {
        selectors.push(SelectorResult {
            selector: "exe",
            expected: exe.clone(),
            actual: att.exe.display().to_string(),
            matched: att.exe.as_os_str() == exe.as_str(),
        });
    }
    if !w.exe_sha256.is_empty() {
        selectors.push(hash_selector("exe_sha256", &w.exe_sha256, &att.exe_hash));
    }
    if !w.entrypoint_sha256.is_empty() {
        let result = match &att.entrypoint {
            Some(ep) => hash_selector("entrypoint_sha256", &w.entrypoint_sha256, &ep.hash),
            None => SelectorResult {
                selector: "entrypoint_sha256",
                expected: one_of(&w.entrypoint_sha256),
                actual: "none: the executable is not a recognised interpreter".to_owned(),
                matched: false,
            },
        };
        selectors.push(result);
    }
    if let Some(uid) = w.uid {
        selectors.push(SelectorResult {
            selector: "uid",
            expected: uid.to_string(),
            actual: att.uid.to_string(),
            matched: att.uid == uid,
        });
    }
    if let Some(gid) = w.gid {
        selectors.push(SelectorResult {
            selector: "gid",
            expected: gid.to_string(),
            actual: att.gid.to_string(),
            matched: att.gid == gid,
        });
    }
    WorkloadVerdict {
        workload: w.name.clone(),
        matched: w.unusable.is_none() && selectors.iter().all(|s| s.matched),
        selectors,
        unusable: w.unusable.clone(),
    }
}

/// Absent hashes (too large, unreadable) match nothing: fail closed.
fn hash_selector(selector: &'static str, allowed: &[String], hash: &FileHash) -> SelectorResult {
    SelectorResult {
        selector,
        expected: one_of(allowed),
        actual: hash.describe(),
        matched: hash.hex().is_some_and(|h| allowed.iter().any(|a| a == h)),
    }
}

fn one_of(list: &[String]) -> String {
    if list.len() == 1 {
        list[0].clone()
    } else {
        format!("one of [{}]", list.join(", "))
    }
}
