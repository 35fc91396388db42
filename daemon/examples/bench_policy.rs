//! Policy decision time and credential cache hit cost, each against a
//! baseline measured in the same run.
//!
//!     AYA_BUILD_SKIP=1 cargo run --release -p warrant --example bench_policy
//!
//! The realistic config has 12 workloads with 2 rules each; the rule that
//! matches checks upstream, path and model globs, environment, region globs,
//! a New York business-hours window and two posture checks. The baseline is
//! a rule that checks only the upstream host.

use std::{hint::black_box, sync::Arc, time::Instant};

use warrant::{
    clock::ManualClock,
    config::Config,
    credentials::{
        CredentialSource, CredentialStore, StaticCredentials,
        provider::{IssueContext, IssueFuture, Issued, Provider},
        store::RefreshSettings,
    },
    policy::{Policy, PolicyInput, PostureStore},
    provider::{RequestHead, Scheme, api},
    secret::Secret,
};

fn realistic_config() -> String {
    let mut text = String::from(
        r#"
[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"
[[upstream]]
host = "api.anthropic.com"
scheme = "anthropic"
credential = "anthropic"
[[upstream]]
host = "generativelanguage.googleapis.com"
scheme = "gemini"
credential = "gemini"
[[credential]]
name = "openai"
source = "systemd"
id = "openai"
[[credential]]
name = "anthropic"
source = "systemd"
id = "anthropic"
[[credential]]
name = "gemini"
source = "systemd"
id = "gemini"
[[posture]]
name = "vuln-scan"
source = "file"
path = "/var/lib/scanner/latest.json"
[[posture]]
name = "edr"
source = "command"
command = ["/usr/bin/edr-status"]
max_age = "15m"
[[workload]]
name = "baseline"
unit = "baseline.service"
[[policy]]
workload = "baseline"
upstreams = ["api.openai.com"]
"#,
    );
    for i in 0..12 {
        text.push_str(&format!(
            r#"
[[workload]]
name = "agent-{i}"
unit = "agent-{i}.service"
[[policy]]
workload = "agent-{i}"
upstreams = ["api.anthropic.com"]
environments = ["staging"]
[[policy]]
workload = "agent-{i}"
upstreams = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"]
paths = ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/messages", "/v1beta/models/*"]
models = ["gpt-4o*", "gpt-4.1*", "o3*", "claude-*", "gemini-*", "text-embedding-3-*"]
environments = ["production", "canary"]
regions = ["us-*", "eu-*", "ca-central-1"]
time = {{ days = "Mon-Fri", hours = "07:00-19:00", tz = "America/New_York" }}
posture = ["vuln-scan", "edr"]
tokens_per_hour = 200000
"#
        ));
    }
    text
}

fn per_op(iterations: u32, mut f: impl FnMut()) -> f64 {
    // Warm up caches and branch predictors first.
    for _ in 0..iterations / 10 {
        f();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}

struct Fixed;
impl Provider for Fixed {
    fn issue<'a>(&'a self, _: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async {
            Ok(Issued {
                value: Secret::new("sk-bench".into()),
                expires_at: None,
            })
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::parse(&realistic_config(), "bench.toml")?;
    let posture = Arc::new(PostureStore::compile(&config.postures, &config.source)?);
    for index in 0..2 {
        posture.record(
            index,
            br#"{"status":"pass","checked_at":"2026-01-14T14:55:00Z"}"#,
        );
    }
    let policy = Policy::compile(&config.policies, posture, &config.source)?;
    let now = "2026-01-14T15:00:00Z".parse()?;
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Summarise the ticket."}],"stream":true}"#;
    let uri: http::Uri = "/v1/chat/completions".parse()?;
    let headers = http::HeaderMap::new();
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &headers,
    };
    let parse = |body: &[u8]| api(Scheme::OpenAi).parse(&head, body);
    let model = parse(body)?.model;
    let realistic = PolicyInput {
        workload: "agent-7",
        environment: Some("production"),
        region: Some("us-east-1"),
        exe_path: None,
        exe_sha256: None,
        program_refusal: None,
        upstream_host: "api.openai.com",
        method: "POST",
        path: "/v1/chat/completions",
        model: model.as_deref(),
        project: None,
        location: None,
        body: None,
        unmetered: None,
        now,
    };
    let baseline = PolicyInput {
        workload: "baseline",
        ..realistic
    };
    let denied = PolicyInput {
        region: Some("ap-south-1"),
        ..realistic
    };
    assert!(policy.evaluate(&realistic).allowed && policy.evaluate(&baseline).allowed);
    assert!(!policy.evaluate(&denied).allowed);

    const N: u32 = 500_000;
    let base_ns = per_op(N, || {
        black_box(policy.evaluate(black_box(&baseline)));
    });
    let real_ns = per_op(N, || {
        black_box(policy.evaluate(black_box(&realistic)));
    });
    let deny_ns = per_op(N, || {
        black_box(policy.evaluate(black_box(&denied)));
    });
    let model_ns = per_op(N, || {
        let _ = black_box(parse(black_box(body)));
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let statics = StaticCredentials::default().with("openai", "sk-bench");
    let store = CredentialStore::new(Arc::new(ManualClock::new(now))).with(
        "openai",
        Box::new(Fixed),
        RefreshSettings {
            refresh_ahead: std::time::Duration::from_secs(300),
            refresh_interval: std::time::Duration::from_secs(3600),
            jitter: 0.1,
            backoff_initial: std::time::Duration::from_secs(1),
            backoff_max: std::time::Duration::from_secs(300),
        },
    );
    let (static_ns, hit_ns) = runtime.block_on(async {
        store.current("openai").await.map(drop)?;
        let mut static_total = 0.0;
        let mut hit_total = 0.0;
        // Interleaved rounds so that both see the same machine load.
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..N / 5 {
                black_box(statics.current(black_box("openai")).await.map(drop)?);
            }
            static_total += start.elapsed().as_nanos() as f64;
            let start = Instant::now();
            for _ in 0..N / 5 {
                black_box(store.current(black_box("openai")).await.map(drop)?);
            }
            hit_total += start.elapsed().as_nanos() as f64;
        }
        Ok::<_, warrant::credentials::CredentialError>((
            static_total / f64::from(N),
            hit_total / f64::from(N),
        ))
    })?;

    println!("policy decision ({N} iterations each)");
    println!("  baseline: upstream-only rule, allow      {base_ns:8.0} ns   1.00x");
    println!(
        "  realistic: 25 rules, 7 factors, allow    {real_ns:8.0} ns   {:.2}x   (target <= 5000 ns)",
        real_ns / base_ns
    );
    println!(
        "  realistic: deny (closest rule reported)  {deny_ns:8.0} ns   {:.2}x",
        deny_ns / base_ns
    );
    println!(
        "  request parse: JSON body prefix           {model_ns:8.0} ns   {:.2}x",
        model_ns / base_ns
    );
    println!("credential lookup");
    println!("  baseline: StaticCredentials (HashMap)    {static_ns:8.0} ns   1.00x");
    println!(
        "  CredentialStore cache hit                {hit_ns:8.0} ns   {:.2}x",
        hit_ns / static_ns
    );
    if real_ns > 5000.0 {
        println!("WARNING: realistic decision above the 5 us target");
    }
    Ok(())
}
