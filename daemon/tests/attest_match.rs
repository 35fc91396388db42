//! Workload matching: every listed selector must match; each one failing
//! alone is enough to refuse, and the report says which and why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::PathBuf, sync::Arc};

use warrant::{
    attest::{
        Attestation, Entrypoint, FileHash, InstanceState, Interpreter, Target, UserNamespace,
        WorkloadMatcher, explain,
        scope::{CgroupChain, DirFacts, Hierarchy},
    },
    config::Config,
};

const EXE_HASH: &str = "3f5a000000000000000000000000000000000000000000000000000000000001";
const SCRIPT_HASH: &str = "9c1e000000000000000000000000000000000000000000000000000000000002";

fn sha(hex: &str) -> FileHash {
    FileHash::Sha256 {
        sha256: hex.to_owned(),
    }
}

/// Puts the attested process in the cgroup at `path`, made by the system
/// manager (root-owned, not delegated).
fn place(att: &mut Attestation, path: &str) {
    let hierarchy = Hierarchy::system("/sys/fs/cgroup".into());
    att.cgroup = Some(path.to_owned());
    att.unit = hierarchy.unit_of(path).map(str::to_owned);
    att.cgroup_chain = Some(Arc::new(CgroupChain::given(&hierarchy, path, |_| {
        DirFacts::SYSTEM
    })));
}

fn attestation() -> Attestation {
    let mut att = Attestation {
        tgid: 4242,
        pid: 4242,
        uid: 1001,
        gid: 1002,
        cgroup_id: 77,
        cgroup: None,
        unit: None,
        cgroup_chain: None,
        injected_env: Vec::new(),
        exe_writable: None,
        exe: PathBuf::from("/usr/bin/python3.12"),
        exe_hash: sha(EXE_HASH),
        argv0: Some("python3".to_owned()),
        entrypoint: Some(Entrypoint {
            interpreter: Interpreter::Python,
            target: Target::Script("agent.py".to_owned()),
            path: Some(PathBuf::from("/srv/support/agent.py")),
            hash: sha(SCRIPT_HASH),
            refused: None,
        }),
        user_namespace: UserNamespace::Host,
        instance: Arc::new(InstanceState::Pending),
    };
    place(
        &mut att,
        "/warrant.slice/warrant-agents.slice/support-agent.service",
    );
    att
}

const FULL: &str = r#"
[[workload]]
name = "support-agent"
unit = "support-agent.service"
slice = "warrant-agents.slice"
cgroup = "/warrant.slice/*/support-*.service"
exe = "/usr/bin/python3.12"
exe_sha256 = ["3F5A000000000000000000000000000000000000000000000000000000000001"]
entrypoint_sha256 = ["1111111111111111111111111111111111111111111111111111111111111111", "9c1e000000000000000000000000000000000000000000000000000000000002"]
uid = 1001
gid = 1002
"#;

fn matcher(text: &str) -> WorkloadMatcher {
    let config = Config::parse(text, "test").unwrap();
    WorkloadMatcher::compile(&config.workloads, &config.source).unwrap()
}

#[test]
fn every_selector_matching_selects_the_workload() {
    let report = matcher(FULL).evaluate(&attestation());
    assert_eq!(report.matched.as_deref(), Some("support-agent"));
    let verdict = &report.workloads[0];
    let names: Vec<_> = verdict.selectors.iter().map(|s| s.selector).collect();
    assert_eq!(
        names,
        [
            "unit",
            "slice",
            "cgroup",
            "exe",
            "exe_sha256",
            "entrypoint_sha256",
            "uid",
            "gid"
        ]
    );
    assert!(verdict.selectors.iter().all(|s| s.matched));
    assert!(report.why_not().is_empty());
}

#[test]
fn each_selector_failing_alone_refuses_and_is_named() {
    type Spoil = fn(&mut Attestation);
    let cases: [(&str, Spoil); 8] = [
        ("unit", |a| {
            place(a, "/warrant.slice/warrant-agents.slice/other.service")
        }),
        ("slice", |a| place(a, "/system.slice/support-agent.service")),
        ("cgroup", |a| place(a, "/other.slice/support-agent.service")),
        ("exe", |a| a.exe = PathBuf::from("/usr/bin/python3.11")),
        ("exe_sha256", |a| a.exe_hash = sha(SCRIPT_HASH)),
        ("entrypoint_sha256", |a| {
            a.entrypoint.as_mut().unwrap().hash = sha(EXE_HASH)
        }),
        ("uid", |a| a.uid = 0),
        ("gid", |a| a.gid = 0),
    ];
    let matcher = matcher(FULL);
    for (selector, spoil) in cases {
        let mut att = attestation();
        spoil(&mut att);
        let report = matcher.evaluate(&att);
        assert_eq!(report.matched, None, "{selector} alone should refuse");
        let failing: Vec<_> = report.workloads[0]
            .selectors
            .iter()
            .filter(|s| !s.matched)
            .map(|s| s.selector)
            .collect();
        // unit, slice and cgroup are decided together (attest::scope), so
        // they fail together; the others fail alone.
        assert!(failing.contains(&selector), "{selector}: {failing:?}");
        if ["unit", "slice", "cgroup"].contains(&selector) {
            assert_eq!(failing, ["unit", "slice", "cgroup"]);
        } else {
            assert_eq!(failing, [selector]);
        }
        assert!(report.why_not().iter().any(|l| l.contains(selector)));
    }
}

#[test]
fn absent_hashes_fail_closed_with_the_reason() {
    let matcher = matcher(FULL);
    let mut att = attestation();
    att.exe_hash = FileHash::TooLarge {
        size: 600 << 20,
        limit: 512 << 20,
    };
    let report = matcher.evaluate(&att);
    assert_eq!(report.matched, None);
    let exe = &report.workloads[0].selectors[4];
    assert_eq!(exe.selector, "exe_sha256");
    assert!(exe.actual.contains("exceeds the limit"), "{}", exe.actual);

    let mut att = attestation();
    att.entrypoint = None;
    let report = matcher.evaluate(&att);
    assert_eq!(report.matched, None);
    assert!(report.why_not()[0].contains("not a recognised interpreter"));
}

#[test]
fn the_first_matching_workload_wins_and_unknown_cgroups_match_no_slice() {
    let text = r#"
[[workload]]
name = "by-uid"
uid = 1001

[[workload]]
name = "by-unit"
unit = "support-agent.service"
"#;
    let matcher = matcher(text);
    assert_eq!(
        matcher.evaluate(&attestation()).matched.as_deref(),
        Some("by-uid")
    );
    let mut att = attestation();
    att.uid = 7;
    assert_eq!(matcher.evaluate(&att).matched.as_deref(), Some("by-unit"));

    let slice = self::matcher("[[workload]]\nname = \"s\"\nslice = \"warrant-agents.slice\"\n");
    let mut att = attestation();
    att.cgroup = None;
    att.cgroup_chain = None;
    assert_eq!(slice.evaluate(&att).matched, None);
}

#[test]
fn a_workload_without_selectors_matches_nothing() {
    let report = matcher("[[workload]]\nname = \"empty\"\n").evaluate(&attestation());
    assert_eq!(report.matched, None);
    assert_eq!(
        report.workloads[0].unusable.as_deref(),
        Some("lists no selector")
    );
}

#[test]
fn explain_renders_the_attestation_and_each_selector() {
    let att = attestation();
    let mut report = matcher(FULL).evaluate(&att);
    let text = explain::render(&att, &report);
    assert!(text.contains("unit        support-agent.service"), "{text}");
    assert!(text.contains("/srv/support/agent.py"), "{text}");
    assert!(text.contains("workload: support-agent"), "{text}");
    assert!(text.contains("ok   uid"), "{text}");
    report.matched = None;
    report.workloads[0].selectors[6].matched = false;
    let text = explain::render(&att, &report);
    assert!(text.contains("FAIL uid"), "{text}");
    assert!(text.contains("none matches"), "{text}");
}

#[test]
fn the_refusal_says_what_was_attested_and_why_nothing_matched() {
    let mut att = attestation();
    att.uid = 0;
    let report = matcher(FULL).evaluate(&att);
    let body = report.refusal(&att);
    assert_eq!(body["matched"], serde_json::Value::Null);
    assert_eq!(body["attested"]["unit"], "support-agent.service");
    assert_eq!(body["attested"]["entrypoint"]["sha256"], SCRIPT_HASH);
    let reasons = body["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1);
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .contains("uid 1001 expected, attested 0")
    );
}
