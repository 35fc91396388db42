//! `warrant explain --pid N`: the attestation of a live process and which
//! workload it matches, selector by selector, as readable text.

use std::fmt::Write;

use super::{
    AttestError, Attestation, Attestor, FileHash, InstanceState, Target, process,
    workload::{MatchReport, WorkloadMatcher},
};
use crate::origin::Origin;

/// An Origin for a live process, as if it connected now: what the kernel
/// would record (uid and gid from /proc, its current cgroup, its current exec
/// generation). The destination is unknown and left unspecified.
pub fn origin_for_pid(pid: u32, attestor: &Attestor) -> Result<Origin, AttestError> {
    let read = |what: &'static str| {
        move |source| AttestError::Read {
            tgid: pid,
            what,
            source,
        }
    };
    let (uid, gid) = process::uid_gid(pid).map_err(read("status"))?;
    let cgroup = process::cgroup_v2_path(pid).map_err(read("cgroup"))?;
    let cgroup_id = attestor.cgroups().id_of(&cgroup).unwrap_or(0);
    Ok(Origin {
        original_dst: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        pid,
        tgid: pid,
        uid,
        gid,
        cgroup_id,
        exec_gen: attestor.generations().current(pid).unwrap_or(0),
        connect_boot_ns: process::boot_time_ns(),
    })
}

/// Attests `pid` and renders the attestation and the workload verdicts.
pub fn explain_pid(
    pid: u32,
    attestor: &Attestor,
    matcher: &WorkloadMatcher,
) -> Result<String, AttestError> {
    let origin = origin_for_pid(pid, attestor)?;
    let attestation = attestor.attest_live(&origin)?;
    let report = matcher.evaluate(&attestation);
    Ok(render(&attestation, &report))
}

fn hash_text(hash: &FileHash) -> String {
    hash.describe()
}

/// The text of `warrant explain`.
pub fn render(att: &Attestation, report: &MatchReport) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "process {} (uid {}, gid {})",
        att.tgid, att.uid, att.gid
    );
    let _ = writeln!(
        out,
        "  cgroup      {} (id {})",
        att.cgroup.as_deref().unwrap_or("unknown"),
        att.cgroup_id
    );
    let _ = writeln!(
        out,
        "  unit        {}",
        att.unit.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "  exe         {}", att.exe.display());
    let _ = writeln!(out, "  exe sha256  {}", hash_text(&att.exe_hash));
    let _ = writeln!(out, "  user ns     {}", att.user_namespace);
    render_entrypoint(&mut out, att);
    if !att.injected_env.is_empty() {
        let _ = writeln!(out, "  env         sets {}", att.injected_env.join(", "));
    }
    if let Some(why) = &att.exe_writable {
        let _ = writeln!(out, "  exe writer  {why}");
    }
    render_instance(&mut out, att);
    out.push('\n');
    render_report(&mut out, report);
    out
}

fn render_entrypoint(out: &mut String, att: &Attestation) {
    match &att.entrypoint {
        None => {
            let _ = writeln!(out, "  entrypoint  none (not a recognised interpreter)");
        }
        Some(ep) => {
            let target = match &ep.target {
                Target::Script(path) => format!("script {path}"),
                Target::Module(name) => format!("module {name}"),
                Target::Inline => "inline code".to_owned(),
            };
            let _ = writeln!(out, "  entrypoint  {:?} {target}", ep.interpreter);
            if let Some(path) = &ep.path {
                let _ = writeln!(out, "    file      {}", path.display());
            }
            let _ = writeln!(out, "    sha256    {}", hash_text(&ep.hash));
            if let Some(why) = &ep.refused {
                let _ = writeln!(out, "    pins      nothing: {why}");
            }
        }
    }
}

fn render_instance(out: &mut String, att: &Attestation) {
    match att.instance.as_ref() {
        InstanceState::Pending => {
            let _ = writeln!(out, "  instance    pending");
        }
        InstanceState::Failed {
            provider, reason, ..
        } => {
            let _ = writeln!(out, "  instance    {provider}: FAILED: {reason}");
        }
        InstanceState::Attested {
            provider,
            verified,
            claims,
            ..
        } => {
            let trust = if *verified { "verified" } else { "UNVERIFIED" };
            let _ = writeln!(out, "  instance    {provider} ({trust})");
            for (name, value) in claims {
                let _ = writeln!(out, "    {name:<12}{value}");
            }
        }
    }
}

/// Which workload matches, and each workload's selectors.
fn render_report(out: &mut String, report: &MatchReport) {
    match &report.matched {
        Some(name) => {
            let _ = writeln!(out, "workload: {name}");
        }
        None => {
            let _ = writeln!(out, "workload: none matches (connections would be refused)");
        }
    }
    for verdict in &report.workloads {
        let mark = if verdict.matched { "MATCH" } else { "no match" };
        let _ = writeln!(out, "  [[workload]] {:?}: {mark}", verdict.workload);
        if let Some(reason) = &verdict.unusable {
            let _ = writeln!(out, "    unusable: {reason}");
        }
        for sel in &verdict.selectors {
            let ok = if sel.matched { "ok  " } else { "FAIL" };
            let _ = writeln!(
                out,
                "    {ok} {:<18} expected {}, attested {}",
                sel.selector, sel.expected, sel.actual
            );
            if let Some(reason) = &sel.refused {
                let _ = writeln!(out, "         refused: {reason}");
            }
        }
    }
}
