#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::Config;

const BASE: &str = r#"
[[workload]]
name = "support-agent"
unit = "support-agent.service"

[[workload]]
name = "batch"
unit = "batch.service"

[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"

[[upstream]]
host = "api.anthropic.com"
scheme = "anthropic"
credential = "anthropic"

[[credential]]
name = "openai"
source = "systemd"
id = "openai"

[[credential]]
name = "anthropic"
source = "systemd"
id = "anthropic"

[[posture]]
name = "vuln-scan"
source = "file"
path = "/nonexistent/vuln-scan.json"
max_age = "1h"
"#;

fn policy(rules: &str) -> Policy {
    let config = Config::parse(&format!("{BASE}\n{rules}"), "t.toml").unwrap();
    let posture = Arc::new(PostureStore::compile(&config.postures, &config.source).unwrap());
    Policy::compile(&config.policies, posture, &config.source).unwrap()
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// Wednesday 2026-01-14 10:00 in New York.
const WEEKDAY_MORNING: &str = "2026-01-14T15:00:00Z";

fn input() -> PolicyInput<'static> {
    PolicyInput {
        workload: "support-agent",
        environment: Some("production"),
        region: Some("us-east-1"),
        exe_path: None,
        exe_sha256: None,
        program_refusal: None,
        upstream_host: "api.openai.com",
        method: "POST",
        path: "/v1/chat/completions",
        model: Some("gpt-4o-mini"),
        project: None,
        location: None,
        body: None,
        unmetered: None,
        now: ts(WEEKDAY_MORNING),
    }
}

fn failing(decision: &Decision) -> Vec<Factor> {
    decision.deny_reasons().map(|f| f.factor).collect()
}

const FULL_RULE: &str = r#"
[[policy]]
workload = "support-agent"
upstreams = ["api.openai.com", "api.anthropic.com"]
paths = ["/v1/chat/*", "/v1/messages"]
models = ["gpt-4o*", "claude-*"]
environments = ["production"]
regions = ["us-*", "eu-*"]
time = { days = "Mon-Fri", hours = "08:00-18:00", tz = "America/New_York" }
"#;

#[test]
fn a_request_passing_every_factor_is_allowed() {
    let d = policy(FULL_RULE).evaluate(&input());
    assert!(d.allowed, "{}", d.summary());
    assert_eq!(d.rule, Some(0));
    assert_eq!(d.summary(), "allowed");
    let factors: Vec<Factor> = d.factors.iter().map(|f| f.factor).collect();
    assert_eq!(
        factors,
        [
            Factor::Request,
            Factor::Identity,
            Factor::Location,
            Factor::Time,
            Factor::Posture,
            Factor::Budget
        ]
    );
}

#[test]
fn deny_by_default_without_a_rule_for_the_workload() {
    let d = policy(FULL_RULE).evaluate(&PolicyInput {
        workload: "batch",
        ..input()
    });
    assert!(!d.allowed);
    assert_eq!(failing(&d), [Factor::Identity]);
    assert!(
        d.summary().contains("no [[policy]] for workload \"batch\""),
        "{}",
        d.summary()
    );
}

#[test]
fn upstream_not_listed_is_denied() {
    let p = policy(FULL_RULE);
    let d = p.evaluate(&PolicyInput {
        upstream_host: "generativelanguage.googleapis.com",
        ..input()
    });
    assert!(!d.allowed);
    assert_eq!(failing(&d), [Factor::Request]);
    // Host names compare case-insensitively.
    assert!(
        p.evaluate(&PolicyInput {
            upstream_host: "API.OpenAI.com",
            ..input()
        })
        .allowed
    );
}

#[test]
fn path_globs_allow_and_deny() {
    let p = policy(FULL_RULE);
    assert!(
        p.evaluate(&PolicyInput {
            path: "/v1/chat/completions?stream=true",
            ..input()
        })
        .allowed
    );
    let d = p.evaluate(&PolicyInput {
        path: "/v1/fine_tuning/jobs",
        ..input()
    });
    assert!(!d.allowed);
    assert!(
        d.summary().contains("path \"/v1/fine_tuning/jobs\""),
        "{}",
        d.summary()
    );
}

#[test]
fn model_globs_allow_and_deny() {
    let p = policy(FULL_RULE);
    assert!(
        p.evaluate(&PolicyInput {
            model: Some("claude-sonnet-4"),
            ..input()
        })
        .allowed
    );
    let d = p.evaluate(&PolicyInput {
        model: Some("o1-pro"),
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Request]);
    assert!(
        d.summary().contains("model \"o1-pro\" is not allowed"),
        "{}",
        d.summary()
    );
    let d = p.evaluate(&PolicyInput {
        model: None,
        ..input()
    });
    assert!(!d.allowed, "a rule with models denies requests naming none");
}

#[test]
fn model_read_from_the_body_feeds_the_decision() {
    let body = br#"{"model":"gpt-4o","messages":[]}"#;
    let uri: http::Uri = "/v1/chat/completions".parse().unwrap();
    let headers = http::HeaderMap::new();
    let head = crate::provider::RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &headers,
    };
    let model = crate::provider::api(crate::provider::Scheme::OpenAi)
        .parse(&head, body)
        .unwrap()
        .model;
    assert!(
        policy(FULL_RULE)
            .evaluate(&PolicyInput {
                model: model.as_deref(),
                ..input()
            })
            .allowed
    );
}

#[test]
fn environment_allows_and_denies() {
    let p = policy(FULL_RULE);
    let d = p.evaluate(&PolicyInput {
        environment: Some("staging"),
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Location]);
    let d = p.evaluate(&PolicyInput {
        environment: None,
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Location]);
}

#[test]
fn region_globs_allow_and_deny() {
    let p = policy(FULL_RULE);
    assert!(
        p.evaluate(&PolicyInput {
            region: Some("eu-west-3"),
            ..input()
        })
        .allowed
    );
    let d = p.evaluate(&PolicyInput {
        region: Some("ap-south-1"),
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Location]);
    assert!(
        d.summary().contains("region \"ap-south-1\""),
        "{}",
        d.summary()
    );
    let d = p.evaluate(&PolicyInput {
        region: None,
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Location]);
}

#[test]
fn time_window_allows_and_denies_with_local_time_in_the_reason() {
    let p = policy(FULL_RULE);
    // Wednesday 19:00 in New York.
    let d = p.evaluate(&PolicyInput {
        now: ts("2026-01-15T00:00:00Z"),
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Time]);
    assert!(
        d.summary().contains("Wed 19:00 America/New_York"),
        "{}",
        d.summary()
    );
    // Saturday 10:00.
    let d = p.evaluate(&PolicyInput {
        now: ts("2026-01-17T15:00:00Z"),
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Time]);
}

#[test]
fn time_window_on_the_dst_days() {
    let p = policy(FULL_RULE.replace("Mon-Fri", "*").as_str());
    // Spring forward, Sunday 2026-03-08: 08:00 EDT = 12:00Z.
    assert!(
        p.evaluate(&PolicyInput {
            now: ts("2026-03-08T12:00:00Z"),
            ..input()
        })
        .allowed
    );
    assert!(
        !p.evaluate(&PolicyInput {
            now: ts("2026-03-08T11:30:00Z"),
            ..input()
        })
        .allowed
    );
    // Fall back, Sunday 2026-11-01: 08:00 EST = 13:00Z; 17:59 EST = 22:59Z.
    assert!(
        !p.evaluate(&PolicyInput {
            now: ts("2026-11-01T12:30:00Z"),
            ..input()
        })
        .allowed
    );
    assert!(
        p.evaluate(&PolicyInput {
            now: ts("2026-11-01T13:00:00Z"),
            ..input()
        })
        .allowed
    );
    assert!(
        p.evaluate(&PolicyInput {
            now: ts("2026-11-01T22:59:00Z"),
            ..input()
        })
        .allowed
    );
    assert!(
        !p.evaluate(&PolicyInput {
            now: ts("2026-11-01T23:00:00Z"),
            ..input()
        })
        .allowed
    );
}

#[test]
fn night_window_crossing_midnight() {
    let p = policy(
        r#"
[[policy]]
workload = "batch"
upstreams = ["api.openai.com"]
time = { days = "Mon-Fri", hours = "22:00-06:00", tz = "Europe/Berlin" }
"#,
    );
    let at = |now| {
        p.evaluate(&PolicyInput {
            workload: "batch",
            now: ts(now),
            ..input()
        })
        .allowed
    };
    assert!(at("2026-01-16T22:00:00Z")); // Fri 23:00 Berlin
    assert!(at("2026-01-17T04:00:00Z")); // Sat 05:00, Friday's night
    assert!(!at("2026-01-17T22:00:00Z")); // Sat 23:00
    assert!(!at("2026-01-12T04:00:00Z")); // Mon 05:00, Sunday's night
    assert!(!at("2026-01-14T12:00:00Z")); // Wed 13:00
}

fn posture_rule() -> Policy {
    policy(
        r#"
[[policy]]
workload = "support-agent"
upstreams = ["api.openai.com"]
posture = ["vuln-scan"]
"#,
    )
}

#[test]
fn posture_missing_result_denies() {
    let d = posture_rule().evaluate(&input());
    assert_eq!(failing(&d), [Factor::Posture]);
    assert!(d.summary().contains("no result yet"), "{}", d.summary());
}

#[test]
fn posture_fresh_pass_allows_and_stale_pass_denies() {
    let p = posture_rule();
    p.posture().record(
        0,
        br#"{"status":"pass","checked_at":"2026-01-14T14:30:00Z"}"#,
    );
    assert!(p.evaluate(&input()).allowed);
    // 1h01m after the check.
    let d = p.evaluate(&PolicyInput {
        now: ts("2026-01-14T15:31:00Z"),
        ..input()
    });
    assert_eq!(failing(&d), [Factor::Posture]);
    assert!(d.summary().contains("stale"), "{}", d.summary());
}

#[test]
fn posture_failing_or_unreadable_denies() {
    let p = posture_rule();
    p.posture().record(
        0,
        br#"{"status":"fail","checked_at":"2026-01-14T14:59:00Z","detail":"CVE-2026-0001"}"#,
    );
    let d = p.evaluate(&input());
    assert_eq!(failing(&d), [Factor::Posture]);
    assert!(d.summary().contains("CVE-2026-0001"), "{}", d.summary());
    p.posture().record(0, b"not json");
    assert!(!p.evaluate(&input()).allowed);
    // A pass replaces the failure.
    p.posture().record(
        0,
        br#"{"status":"pass","checked_at":"2026-01-14T14:59:00Z"}"#,
    );
    assert!(p.evaluate(&input()).allowed);
    p.posture().record_error(
        0,
        posture::SourceError::Read {
            path: "/x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        },
    );
    assert!(!p.evaluate(&input()).allowed);
}

#[test]
fn signature_required_but_executable_unknown_denies() {
    let key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEzZqFN1uBpGFJVwLtJWUxbqbR6PUVmz9DjuYJ8TzLdm test";
    let p = policy(&format!(
        "[[policy]]\nworkload = \"support-agent\"\nupstreams = [\"api.openai.com\"]\nexe_signers = [\"{key}\"]\n"
    ));
    let d = p.evaluate(&input());
    assert_eq!(failing(&d), [Factor::Identity]);
}

#[test]
fn any_allowing_rule_wins_and_denials_show_the_closest_rule() {
    let p = policy(
        r#"
[[policy]]
workload = "support-agent"
upstreams = ["api.anthropic.com"]
environments = ["staging"]

[[policy]]
workload = "support-agent"
upstreams = ["api.openai.com"]
models = ["gpt-4o"]
"#,
    );
    let d = p.evaluate(&PolicyInput {
        model: Some("gpt-4o"),
        ..input()
    });
    assert!(d.allowed);
    assert_eq!(d.rule, Some(1));
    // Rule 0 fails request and location, rule 1 only request: rule 1 shown.
    let d = p.evaluate(&PolicyInput {
        model: Some("o3"),
        ..input()
    });
    assert!(!d.allowed);
    assert_eq!(d.rule, Some(1));
    assert_eq!(failing(&d), [Factor::Request]);
}

struct Exhausted;
impl BudgetGate for Exhausted {
    fn check(
        &self,
        _: &str,
        _: usize,
        limits: &RuleLimits,
        _: &PolicyInput<'_>,
    ) -> Result<(), OverBudget> {
        Err(OverBudget::Tokens(limits.tokens_per_hour.unwrap_or(0)))
    }
}

#[test]
fn budget_gate_is_asked_last_and_can_deny() {
    let p = policy(&format!("{FULL_RULE}tokens_per_hour = 1000\n"));
    assert_eq!(
        p.limits(0),
        Some(RuleLimits {
            tokens_per_hour: Some(1000),
            ..RuleLimits::default()
        })
    );
    let d = p.evaluate_with(&input(), &Exhausted);
    assert!(!d.allowed);
    assert_eq!(failing(&d), [Factor::Budget]);
    assert!(
        d.summary().contains("over 1000 tokens per hour"),
        "{}",
        d.summary()
    );
}

#[test]
fn decision_serializes_factor_by_factor_for_the_403_body() {
    let d = policy(FULL_RULE).evaluate(&PolicyInput {
        region: Some("ap-south-1"),
        ..input()
    });
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["allowed"], false);
    assert_eq!(json["factors"][2]["factor"], "location");
    assert_eq!(json["factors"][2]["passed"], false);
}

#[test]
fn a_compile_error_is_the_policy_type_placed_in_the_file() {
    let config = Config::parse(
        &format!(
            "{BASE}\n[[policy]]\nworkload = \"support-agent\"\nregions = [\"us-*\", \"eu-[\"]\n"
        ),
        "t.toml",
    )
    .unwrap();
    let posture = Arc::new(PostureStore::compile(&config.postures, &config.source).unwrap());
    let Err(err) = Policy::compile(&config.policies, posture, &config.source) else {
        panic!("a bad glob compiled");
    };
    assert_eq!(err.kind, crate::config::ConfigErrorKind::Invalid);
    assert!(matches!(
        err.problem().downcast_ref::<PolicyConfigError>(),
        Some(PolicyConfigError::BadGlob { pattern, .. }) if pattern == "eu-["
    ));
    let line = BASE.lines().count() + 4;
    assert!(
        err.to_string()
            .starts_with(&format!("t.toml:{line}:20: bad glob \"eu-[\"")),
        "{err}"
    );
}

#[test]
fn projects_and_locations_are_allowed_only_when_listed() {
    let p = policy(
        "[[policy]]\nworkload = \"support-agent\"\nupstreams = [\"api.openai.com\"]\nprojects = [\"prod-*\"]\nlocations = [\"europe-*\", \"global\"]\n",
    );
    let at = |project, location| {
        p.evaluate(&PolicyInput {
            project,
            location,
            ..input()
        })
    };
    assert!(at(Some("prod-ml"), Some("europe-west4")).allowed);
    assert!(at(Some("prod-ml"), Some("global")).allowed);
    let d = at(Some("dev-ml"), Some("europe-west4"));
    assert!(
        !d.allowed && d.summary().contains("project \"dev-ml\""),
        "{}",
        d.summary()
    );
    let d = at(Some("prod-ml"), Some("us-central1"));
    assert!(
        d.summary().contains("location \"us-central1\""),
        "{}",
        d.summary()
    );
    // A request that names none (another provider's path) is refused by
    // such a rule, as one naming no model is by a rule on models.
    let d = at(None, None);
    assert!(d.summary().contains("names no project"), "{}", d.summary());
}

#[test]
fn a_star_stops_at_a_slash_and_a_double_star_crosses_it() {
    let p = policy(
        r#"
[[policy]]
workload = "support-agent"
upstreams = ["api.openai.com"]
paths = ["/v1/chat/*", "/v1beta/**"]
models = ["gpt-4o*", "openai/*"]
"#,
    );
    let decide = |path, model| {
        p.evaluate(&PolicyInput {
            path,
            model: Some(model),
            ..input()
        })
        .allowed
    };
    assert!(decide("/v1/chat/completions", "gpt-4o-mini"));
    assert!(!decide("/v1/chat/x/embeddings", "gpt-4o-mini"));
    assert!(decide("/v1beta/models/m:generateContent", "gpt-4o"));
    assert!(decide("/v1beta/a/b/c", "gpt-4o"));
    assert!(decide("/v1/chat/completions", "openai/gpt-4o"));
    assert!(!decide("/v1/chat/completions", "openai/x/gpt-4o"));
    assert!(!decide("/v1/chat/completions", "gpt-4o/../o1-pro"));
}

#[test]
fn a_body_that_is_not_json_is_denied_by_a_rule_naming_models_with_its_content_type() {
    let body = crate::provider::Body::Other {
        content_type: "multipart/form-data; boundary=x".to_owned(),
    };
    let d = policy(FULL_RULE).evaluate(&PolicyInput {
        model: None,
        body: Some(&body),
        ..input()
    });
    assert!(!d.allowed);
    assert!(
        d.summary().contains("multipart/form-data"),
        "{}",
        d.summary()
    );
}

const BUDGET_RULE: &str = r#"
[[policy]]
workload = "support-agent"
upstreams = ["api.openai.com"]
tokens_per_hour = 1000
allow_unmetered = ["batch"]

[[policy]]
workload = "support-agent"
upstreams = ["api.anthropic.com"]
requests_per_minute = 10
"#;

#[test]
fn unmetered_work_is_refused_under_a_token_budget_unless_the_rule_names_it() {
    use crate::provider::Unmetered;
    let p = policy(BUDGET_RULE);
    let decide = |upstream_host, unmetered| {
        p.evaluate(&PolicyInput {
            upstream_host,
            unmetered,
            ..input()
        })
    };
    assert!(decide("api.openai.com", None).allowed);
    assert!(decide("api.openai.com", Some(Unmetered::Batch)).allowed);
    let refused = decide("api.openai.com", Some(Unmetered::Background));
    assert!(!refused.allowed);
    assert!(
        refused.summary().contains("background") && refused.summary().contains("allow_unmetered"),
        "{}",
        refused.summary()
    );
    let ws = decide("api.openai.com", Some(Unmetered::WebSocket));
    assert!(
        !ws.allowed && ws.summary().contains("WebSocket"),
        "{}",
        ws.summary()
    );
    // Without a token or cost budget there is nothing to escape.
    assert!(decide("api.anthropic.com", Some(Unmetered::WebSocket)).allowed);
}

#[test]
fn allow_unmetered_names_known_kinds_and_never_websocket() {
    let bad = |value: &str| {
        let text = format!(
            "{BASE}\n[[policy]]\nworkload = \"support-agent\"\nupstreams = [\"api.openai.com\"]\nallow_unmetered = [{value}]\n"
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let posture = Arc::new(PostureStore::compile(&config.postures, &config.source).unwrap());
        let Err(err) = Policy::compile(&config.policies, posture, &config.source) else {
            panic!("allow_unmetered = [{value}] compiled");
        };
        err.to_string()
    };
    let unknown = bad("\"batches\"");
    assert!(
        unknown.contains("batches") && unknown.contains("fine-tuning"),
        "{unknown}"
    );
    assert!(unknown.contains("t.toml:"), "{unknown}");
    let ws = bad("\"websocket\"");
    assert!(ws.contains("websocket"), "{ws}");
}
