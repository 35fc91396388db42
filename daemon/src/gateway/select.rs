//! Which `[[workload]]` a node's statement is: the remote counterpart of
//! `attest::workload`, over the same sections.
//!
//! A gateway workload selects node callers: `nodes` (globs over enrolled
//! node names) and `node_workload` (the node's own workload that its
//! statement names; default the workload's name). `unit`, `exe`,
//! `exe_sha256`, `entrypoint_sha256`, `uid` and `gid` then narrow what the
//! statement must say; the exe and hash selectors refuse a program the
//! node's rules could not pin (the statement's `program_refusal`).
//!
//! Every selector a workload sets must match; the first workload in file
//! order whose selectors all match wins. Identity never comes from anything
//! else: not the URL, not the upstream, not a header the node chooses.

use globset::{Glob, GlobBuilder, GlobMatcher};

use super::statement::Statement;
use crate::config::{ConfigError, ConfigErrorKind, Source, WorkloadConfig};

/// Who called, as verified: an enrolled node and its verified statement.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub node: &'a str,
    pub statement: &'a Statement,
}

#[derive(Debug, thiserror::Error)]
#[error("bad glob {text:?}: {source}")]
pub struct BadGlob {
    text: String,
    #[source]
    source: globset::Error,
}

struct Pattern {
    matcher: GlobMatcher,
}

impl Pattern {
    fn compile(text: &toml::Spanned<String>, source: &Source) -> Result<Pattern, ConfigError> {
        let glob: Result<Glob, _> = GlobBuilder::new(text.get_ref())
            .literal_separator(true)
            .build();
        glob.map(|glob| Pattern {
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

struct Selects {
    nodes: Vec<Pattern>,
    node_workload: String,
    narrowing: Narrowing,
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
            let selects = Selects {
                nodes: c.nodes.iter().map(pattern).collect::<Result<_, _>>()?,
                node_workload: c
                    .node_workload
                    .as_ref()
                    .map_or_else(|| c.name.get_ref().clone(), |w| w.get_ref().clone()),
                narrowing: Narrowing {
                    unit: c.unit.as_ref().map(|u| u.get_ref().clone()),
                    exe: c.exe.as_ref().map(|e| e.get_ref().clone()),
                    exe_sha256: lower(&c.exe_sha256),
                    entrypoint_sha256: lower(&c.entrypoint_sha256),
                    uid: c.uid,
                    gid: c.gid,
                },
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

impl Selects {
    fn check(&self, caller: Caller<'_>) -> Result<(), String> {
        let Caller { node, statement } = caller;
        if !self.nodes.iter().any(|p| p.is_match(node)) {
            return Err(format!("node {node:?} is not one of its nodes"));
        }
        if statement.workload != self.node_workload {
            return Err(format!(
                "the node attests workload {:?}, not {:?}",
                statement.workload, self.node_workload
            ));
        }
        self.narrowing.check(statement)
    }
}

impl Narrowing {
    fn check(&self, statement: &Statement) -> Result<(), String> {
        let p = &statement.process;
        let program = |selector: &str| match &p.program_refusal {
            Some(why) => Err(format!("{selector} refused: {why}")),
            None => Ok(()),
        };
        if let Some(unit) = &self.unit
            && p.unit.as_deref() != Some(unit.as_str())
        {
            return Err(format!("unit {unit:?} expected, attested {:?}", p.unit));
        }
        if let Some(exe) = &self.exe {
            program("exe")?;
            if p.exe != *exe {
                return Err(format!("exe {exe:?} expected, attested {:?}", p.exe));
            }
        }
        if !self.exe_sha256.is_empty() {
            program("exe_sha256")?;
            if !p
                .exe_sha256
                .as_ref()
                .is_some_and(|h| self.exe_sha256.contains(h))
            {
                return Err(format!(
                    "exe_sha256 not one allowed (attested {:?})",
                    p.exe_sha256
                ));
            }
        }
        if !self.entrypoint_sha256.is_empty() {
            program("entrypoint_sha256")?;
            let attested = p.entrypoint_sha256.as_ref();
            if !attested.is_some_and(|h| self.entrypoint_sha256.contains(h)) {
                return Err(format!(
                    "entrypoint_sha256 not one allowed (attested {attested:?})"
                ));
            }
        }
        if let Some(uid) = self.uid
            && p.uid != uid
        {
            return Err(format!("uid {uid} expected, attested {}", p.uid));
        }
        if let Some(gid) = self.gid
            && p.gid != gid
        {
            return Err(format!("gid {gid} expected, attested {}", p.gid));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gateway::statement::{Binding, InstanceFacts, ProcessFacts};

    fn config(text: &str) -> (Vec<WorkloadConfig>, Source) {
        #[derive(serde::Deserialize)]
        struct File {
            workload: Vec<WorkloadConfig>,
        }
        let file: File = toml::from_str(text).unwrap();
        (file.workload, Source::new("t.toml", text))
    }

    fn statement(workload: &str, exe: &str, refusal: Option<&str>) -> Statement {
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
        let caller = |node, statement| Caller { node, statement };
        assert_eq!(remote.select(caller("web-1", &good)).unwrap(), "support");
        // Another node, another workload on the node, another program, a
        // program the node could not pin: each refused, saying why.
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
}
