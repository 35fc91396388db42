//! Bedrock, Vertex AI and Azure OpenAI through the real in-process injector,
//! with credentials from the real store fed by loopback stand-ins of the
//! cloud credential services: Bedrock requests re-signed with SigV4 (the
//! mock verifies the signature with the real secret), event streams relayed
//! byte for byte and metered, bodies over the signing limit refused in
//! Bedrock's error shape, and a credential the upstream refuses fetched
//! again and the request sent once more. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, path::Path, sync::Arc};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::{net::TcpSocket, sync::mpsc};
use warrant::{
    audit::{Audit, AuditLog},
    clock::SystemClock,
    config::{AuditConfig, Config, UsageConfig},
    credentials::{self, StoreOptions},
    metrics::Metrics,
    origin::StaticOrigins,
    policy::RuleLimits,
    proxy::{
        FixedGeneration, GateFuture, GateRequest, Identity, Injector, Refusal, RequestGate, Verdict,
    },
    response::Responder,
    tls::{LeafCache, LocalCa},
    usage::{Admission, AdmitRequest, Budgets, LocalLedger, PriceTable, UsageRecord, UsageSink},
};
use warrant_test_support::{
    cloud::{
        AZURE, Accepted, AwsKeys, BEDROCK, CloudApis, CredentialServices, Issuing, Shared, VERTEX,
        run_tag,
    },
    injector::{Sender, origin},
    logs::Logs,
    pki::{roots_from_pem, tls_over},
};

/// Admits every request through budgets (no limits) so that responses are
/// metered; usage records go to the test.
struct Metered {
    budgets: Budgets,
}

impl RequestGate for Metered {
    fn body_prefix_len(&self) -> usize {
        64 * 1024
    }

    fn authorize<'a>(
        &'a self,
        _: &'a Identity,
        r: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        Box::pin(async move {
            let observer = self
                .budgets
                .admit(AdmitRequest {
                    workload: "agent",
                    upstream: r.upstream,
                    scheme: r.scheme,
                    request: r.request,
                    limits: RuleLimits::default(),
                })
                .await
                .map_err(|e| Refusal::policy(e.status(), e.message()))?;
            Ok(Verdict::Admit(Admission::new(Box::new(observer))))
        })
    }
}

struct Records(mpsc::UnboundedSender<UsageRecord>);

impl UsageSink for Records {
    fn record(&self, record: &UsageRecord) {
        let _ = self.0.send(record.clone());
    }
}

struct Stack {
    apis: CloudApis,
    services: CredentialServices,
    accepted: Shared,
    proxy: SocketAddr,
    origins: Arc<StaticOrigins>,
    warrant_ca: String,
    records: mpsc::UnboundedReceiver<UsageRecord>,
    metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
    logs: Logs,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// `aws` is the Bedrock credential's `[[credential]]` body (after its name).
async fn stack(aws: &str) -> Stack {
    let logs = Logs::capture();
    let accepted: Shared = Arc::new(std::sync::Mutex::new(Accepted::default()));
    let tag = run_tag();
    let services = CredentialServices::start(accepted.clone(), Issuing::new(&tag));
    let apis = CloudApis::start(&["127.0.0.1:0".parse().unwrap()], accepted.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("apis-ca.pem"), &apis.ca_pem).unwrap();
    let file_keys = AwsKeys {
        access_key_id: format!("AKIAFILE{}", tag.replace('x', "0")),
        secret_access_key: format!("file-secret-{tag}-REALREALREAL"),
        session_token: None,
    };
    write_private(&d.join("aws.json"), &file_keys.process_json());
    let azure_key = format!("azure-key-{tag}-REALREALREAL0123");
    write_private(&d.join("azure-key"), &azure_key);
    {
        let mut a = accepted.lock().unwrap();
        a.aws.push(file_keys.clone());
        a.azure.push(azure_key.clone());
        a.secrets.extend([file_keys.secret_access_key, azure_key]);
    }
    let text = format!(
        r#"
[daemon]
state_dir = "{d}/state"

[proxy]
max_signed_body_bytes = 65536
header_read_timeout_secs = 2

[[upstream]]
host = "{BEDROCK}"
scheme = "bedrock"
credential = "aws"
ca_file = "{d}/apis-ca.pem"

[[upstream]]
host = "{VERTEX}"
scheme = "vertex"
credential = "gce"
ca_file = "{d}/apis-ca.pem"

[[upstream]]
host = "{AZURE}"
scheme = "azure"
credential = "azure-key"
ca_file = "{d}/apis-ca.pem"

[[credential]]
name = "aws"
{aws}

[[credential]]
name = "gce"
source = "gcp-metadata"
endpoint = "{base}"

[[credential]]
name = "azure-key"
source = "file"
path = "{d}/azure-key"
"#,
        d = d.display(),
        aws = aws
            .replace("{dir}", &d.display().to_string())
            .replace("{base}", &services.base),
        base = services.base,
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let store = credentials::compile(
        &config.credentials,
        &config.source,
        Arc::new(SystemClock),
        &StoreOptions {
            file_owner_uid: nix::unistd::geteuid().as_raw(),
            credentials_directory: None,
        },
    )
    .unwrap();
    let hosts: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| u.host.get_ref().clone())
        .collect();
    std::fs::create_dir_all(d.join("state")).unwrap();
    let ca = Arc::new(LocalCa::load_or_create(&d.join("state"), &hosts).unwrap());
    let warrant_ca = ca.ca_pem().to_owned();
    let metrics = Arc::new(Metrics::new());
    let audit = Audit::new(
        AuditLog::open(&d.join("audit.jsonl"), &AuditConfig::default(), None),
        metrics.clone(),
    );
    let budgets = Budgets::new(
        UsageConfig::default(),
        PriceTable::new(&[], true).unwrap(),
        LocalLedger::in_memory(),
        false,
        None,
        Arc::new(SystemClock),
    );
    let (tx, records) = mpsc::unbounded_channel();
    budgets.add_sink(Arc::new(Records(tx)));
    let origins = Arc::new(StaticOrigins::default());
    let injector = Injector::new(
        &config,
        Arc::new(LeafCache::new(ca)),
        origins.clone(),
        FixedGeneration::serve(Arc::new(Metered { budgets }), Arc::new(store)),
        Responder::without_rules(audit),
        &[],
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(injector).serve(listener));
    Stack {
        apis,
        services,
        accepted,
        proxy,
        origins,
        warrant_ca,
        records,
        metrics,
        dir,
        logs,
    }
}

impl Stack {
    /// An agent connection to `host` (redirected: its Origin registered),
    /// over TLS trusting warrant's CA, speaking h2 or http/1.1.
    async fn agent(&self, host: &str, h2: bool) -> Sender {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        self.origins
            .insert(socket.local_addr().unwrap(), origin(self.apis.addrs[0]));
        let tcp = socket.connect(self.proxy).await.unwrap();
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_over(tcp, roots_from_pem(&self.warrant_ca), host, alpn).await;
        if h2 {
            Sender::h2(tls).await
        } else {
            Sender::h1(tls).await
        }
    }

    /// The audit lines once there are `n` (each is written when its
    /// response ends in the injector, possibly just after the client read
    /// the last byte).
    async fn audit_lines(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..1000 {
            let lines = self.audit();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("fewer than {n} audit lines: {:#?}", self.audit());
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn assert_no_secret_anywhere(&self, bodies: &[Bytes]) {
        let logs = self.logs.text();
        let audit =
            std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default();
        let metrics = self.metrics.render();
        for secret in &self.accepted.lock().unwrap().secrets {
            assert!(!logs.contains(secret), "a real credential is in the logs");
            assert!(
                !audit.contains(secret),
                "a real credential is in the audit log"
            );
            assert!(
                !metrics.contains(secret),
                "a real credential is in the metrics"
            );
            for body in bodies {
                assert!(
                    memchr::memmem::find(body, secret.as_bytes()).is_none(),
                    "a real credential is in a response"
                );
            }
        }
    }
}

/// What an SDK signing with placeholder keys sends.
fn sigv4_placeholder(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(format!("https://{BEDROCK}{path}"))
        .header("host", BEDROCK)
        .header("content-type", "application/json")
        .header("x-amz-date", "20260101T000000Z")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=placeholder/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        )
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

async fn body_of(response: http::Response<hyper::body::Incoming>) -> (StatusCode, Bytes) {
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

const CONVERSE: &str = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":64}}"#;
const MODEL_PATH: &str = "/model/anthropic.claude-3-haiku-20240307-v1%3A0";

#[tokio::test]
async fn bedrock_is_signed_again_with_the_real_keys_and_its_streams_are_metered() {
    let mut s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut bodies = Vec::new();
    for h2 in [true, false] {
        let mut agent = s.agent(BEDROCK, h2).await;
        let (status, body) = body_of(
            agent
                .send(sigv4_placeholder(
                    &format!("{MODEL_PATH}/converse"),
                    CONVERSE,
                ))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        bodies.push(body);
        let record = s.records.recv().await.unwrap();
        assert_eq!(
            record.model.as_deref(),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        assert_eq!(
            (record.usage.input_tokens, record.usage.output_tokens),
            (12, 7)
        );
        assert_eq!(
            record.reserved.output_tokens, 64,
            "Converse's maxTokens is the cap"
        );

        let response = agent
            .send(sigv4_placeholder(
                &format!("{MODEL_PATH}/converse-stream"),
                CONVERSE,
            ))
            .await;
        assert_eq!(
            response.headers()["content-type"],
            "application/vnd.amazon.eventstream"
        );
        let (status, body) = body_of(response).await;
        assert_eq!(status, StatusCode::OK);
        // Relayed byte for byte: the frames (and their CRCs) still decode.
        let mut stream = warrant::usage::eventstream::EventStream::new(1 << 20);
        let mut events = Vec::new();
        stream.feed(&body, &mut events).unwrap();
        assert!(!stream.pending());
        assert_eq!(events.last().unwrap().kind, "metadata");
        bodies.push(body);
        let record = s.records.recv().await.unwrap();
        assert_eq!(
            (record.usage.input_tokens, record.usage.output_tokens),
            (12, 7)
        );
        assert_eq!(record.outcome, warrant::usage::Outcome::Counted);
    }
    let seen = s.apis.seen_by(BEDROCK);
    assert_eq!(seen.len(), 4);
    for request in &seen {
        assert!(request.accepted, "the mock refused the signature");
        let auth = request.header("authorization").unwrap();
        assert!(auth.contains("Credential=AKIAFILE"), "{auth}");
        assert!(!format!("{:?}", request.headers).contains("placeholder"));
    }
    s.assert_no_secret_anywhere(&bodies);
}

#[tokio::test]
async fn bedrock_invoke_streams_are_metered_from_the_models_own_events() {
    let mut s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut agent = s.agent(BEDROCK, true).await;
    let invoke = r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _) = body_of(
        agent
            .send(sigv4_placeholder(
                &format!("{MODEL_PATH}/invoke-with-response-stream"),
                invoke,
            ))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = s.records.recv().await.unwrap();
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (12, 7)
    );
    assert_eq!(
        record.model.as_deref(),
        Some("anthropic.claude-3-haiku-20240307-v1:0")
    );
    let (status, _) = body_of(
        agent
            .send(sigv4_placeholder(&format!("{MODEL_PATH}/invoke"), invoke))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = s.records.recv().await.unwrap();
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (12, 7)
    );
}

#[tokio::test]
async fn a_body_over_the_signing_limit_is_refused_in_bedrocks_shape() {
    let s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut agent = s.agent(BEDROCK, true).await;
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":[{{"text":"{}"}}]}}]}}"#,
        "x".repeat(70_000)
    );
    let (status, body) = body_of(
        agent
            .send(sigv4_placeholder(&format!("{MODEL_PATH}/converse"), &big))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["__type"], "ValidationException");
    assert!(error["message"].as_str().unwrap().contains("65536"));
    assert!(s.apis.seen_by(BEDROCK).is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_real_looking_aws_key_from_the_agent_is_refused() {
    let s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut agent = s.agent(BEDROCK, true).await;
    let mut request = sigv4_placeholder(&format!("{MODEL_PATH}/converse"), CONVERSE);
    request.headers_mut().insert(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIA2OGYBAH6STLRCJ4X/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"
            .parse()
            .unwrap(),
    );
    let (status, body) = body_of(agent.send(request).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["__type"], "AccessDeniedException");
    assert!(s.apis.seen_by(BEDROCK).is_empty());
}

#[tokio::test]
async fn refused_instance_role_keys_are_fetched_again_and_the_request_signed_again() {
    let mut s = stack("source = \"aws-imds\"\nendpoint = \"{base}\"").await;
    let mut agent = s.agent(BEDROCK, true).await;
    let converse = || sigv4_placeholder(&format!("{MODEL_PATH}/converse"), CONVERSE);
    assert_eq!(
        body_of(agent.send(converse()).await).await.0,
        StatusCode::OK
    );
    let _ = s.records.recv().await;
    // The role's keys are revoked (rotated early): Bedrock refuses them.
    s.accepted.lock().unwrap().aws.clear();
    let (status, body) = body_of(agent.send(converse()).await).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(s.services.calls("imds-credentials"), 2);
    let record = s.records.recv().await.unwrap();
    assert_eq!(
        record.usage.output_tokens, 7,
        "the retried response is metered"
    );
    let seen = s.apis.seen_by(BEDROCK);
    assert_eq!(
        seen.iter().map(|r| r.accepted).collect::<Vec<_>>(),
        [true, false, true]
    );
    let lines = s.audit_lines(2).await;
    let last = lines.last().unwrap();
    assert_eq!(last["status"], 200);
    assert_eq!(last["credential_refused"]["status"], 403);
    assert_eq!(last["credential_refused"]["result"], "refreshed");
    assert_eq!(last["credential_refused"]["retried"], true);
    assert_ne!(
        last["credential"]["fingerprint"], lines[0]["credential"]["fingerprint"],
        "the line names the credential that was used last"
    );
    let metrics = s.metrics.render();
    assert!(
        metrics.contains(
            "warrant_credential_refusals_total{credential=\"aws\",result=\"refreshed\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("warrant_upstream_retries_total{upstream=\"bedrock-runtime.us-east-1.amazonaws.com\",reason=\"credential refused\"} 1"),
        "{metrics}"
    );
    // An error body that repeats the session token is redacted.
    let (status, echoed) = body_of(
        agent
            .send(sigv4_placeholder(
                &format!("{MODEL_PATH}/echo-credentials"),
                CONVERSE,
            ))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&echoed);
    assert!(text.contains("cannot use ****"), "{text}");
    // Refused again at once: not fetched again, the refusal stands.
    s.accepted.lock().unwrap().aws.clear();
    let (status, body) = body_of(agent.send(converse()).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("security token"));
    assert_eq!(s.services.calls("imds-credentials"), 2);
    let last = s.audit_lines(4).await.last().unwrap().clone();
    assert_eq!(last["credential_refused"]["result"], "not_refreshed");
    assert_eq!(last["credential_refused"]["retried"], false);
    s.assert_no_secret_anywhere(&[body, echoed]);
}

#[tokio::test]
async fn vertex_gets_the_google_token_and_a_revoked_one_is_replaced() {
    let mut s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut agent = s.agent(VERTEX, true).await;
    let path = "/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let request = || {
        Request::post(format!("https://{VERTEX}{path}"))
            .header("authorization", "Bearer placeholder")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
            )))
            .unwrap()
    };
    let (status, body) = body_of(agent.send(request()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("from the cloud mock"));
    let record = s.records.recv().await.unwrap();
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (12, 7)
    );
    assert_eq!(record.model.as_deref(), Some("gemini-2.5-flash"));
    // Revoked: Vertex answers 401, warrant fetches a new token and the
    // request goes again (its body was kept).
    s.accepted.lock().unwrap().google.clear();
    let (status, _) = body_of(agent.send(request()).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.services.calls("gce-token"), 2);
    let seen = s.apis.seen_by(VERTEX);
    assert_eq!(seen.len(), 3);
    assert!(seen[1].header("authorization") != seen[2].header("authorization"));
    assert!(
        seen.iter()
            .all(|r| r.header("authorization") != Some("Bearer placeholder"))
    );
    s.assert_no_secret_anywhere(&[body]);
}

#[tokio::test]
async fn azure_gets_its_key_in_api_key_and_api_version_passes_through() {
    let mut s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut agent = s.agent(AZURE, false).await;
    let request = Request::post(format!(
        "https://{AZURE}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    ))
    .header("host", AZURE)
    .header("api-key", "placeholder")
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from_static(
        br#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    )))
    .unwrap();
    let (status, body) = body_of(agent.send(request).await).await;
    assert_eq!(status, StatusCode::OK);
    let record = s.records.recv().await.unwrap();
    assert_eq!(record.model.as_deref(), Some("gpt-4o-prod"));
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (12, 7)
    );
    let seen = s.apis.seen_by(AZURE);
    assert_eq!(
        seen[0].target,
        "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    );
    assert!(seen[0].accepted);
    s.assert_no_secret_anywhere(&[body]);
}

/// The strict parse (issue 13) on the cloud platforms: a request that can
/// be read two ways (a duplicate key, which the platform would take the
/// last of; a path a server could normalise into another model or
/// deployment) is refused with a 400 in the platform's own error shape,
/// and never reaches it. A Bedrock ARN, whose `/` the SDKs encode as `%2F`
/// within the model segment, is one model id.
#[tokio::test]
async fn ambiguous_cloud_requests_are_refused_in_each_platforms_shape() {
    let mut s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut bedrock = s.agent(BEDROCK, true).await;
    let arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0";
    let arn_path = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse";
    let (status, body) = body_of(bedrock.send(sigv4_placeholder(arn_path, CONVERSE)).await).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let record = s.records.recv().await.unwrap();
    assert_eq!(record.model.as_deref(), Some(arn));
    let seen = s.apis.seen_by(BEDROCK);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].accepted, "the mock refused the signature");
    assert_eq!(
        seen[0].target, arn_path,
        "the path goes as the agent sent it"
    );

    let duplicate_cap = r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":64},"inferenceConfig":{"maxTokens":100000}}"#;
    let nested_duplicate =
        r#"{"messages":[],"inferenceConfig":{"maxTokens":64,"maxTokens":100000}}"#;
    for (path, body) in [
        (format!("{MODEL_PATH}/converse"), duplicate_cap),
        (format!("{MODEL_PATH}/converse"), nested_duplicate),
        ("/model/allowed%2F..%2Fother/converse".to_owned(), CONVERSE),
        ("/model/%2E%2E/converse".to_owned(), CONVERSE),
        (format!("{MODEL_PATH}/converse;x"), CONVERSE),
    ] {
        let (status, answer) = body_of(bedrock.send(sigv4_placeholder(&path, body)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        let error: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(error["__type"], "ValidationException", "{path}: {error}");
    }
    assert_eq!(
        s.apis.seen_by(BEDROCK).len(),
        1,
        "a refused request was sent"
    );

    let mut vertex = s.agent(VERTEX, true).await;
    let gemini = |path: &str, body: &'static str| {
        Request::post(format!("https://{VERTEX}{path}"))
            .header("authorization", "Bearer placeholder")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let contents = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
    let base = "/v1/projects/p1/locations/us-central1/publishers/google/models";
    for (path, body) in [
        (
            format!("{base}/gemini-2.5-flash:generateContent"),
            r#"{"contents":[],"generationConfig":{"maxOutputTokens":10},"generation_config":{"maxOutputTokens":100000}}"#,
        ),
        (
            format!("{base}/allowed%2F..%2F..%2Fanthropic/models/other:generateContent"),
            contents,
        ),
        (
            "/v1/projects/p1/locations/us-central1/publishers/google/models/./gemini-2.5-flash:generateContent".to_owned(),
            contents,
        ),
        (
            "/v1/projects/p1//locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent".to_owned(),
            contents,
        ),
    ] {
        let (status, answer) = body_of(vertex.send(gemini(&path, body)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        let error: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(error["error"]["status"], "INVALID_ARGUMENT", "{path}: {error}");
    }
    assert!(
        s.apis.seen_by(VERTEX).is_empty(),
        "a refused request was sent"
    );

    let mut azure = s.agent(AZURE, false).await;
    let chat = |path: &str, body: &'static str| {
        Request::post(format!("https://{AZURE}{path}"))
            .header("host", AZURE)
            .header("api-key", "placeholder")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    for (path, body) in [
        (
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
            r#"{"messages":[],"max_tokens":10,"max_tokens":100000}"#,
        ),
        (
            "/openai/deployments/gpt-4o-prod/..%2F..%2Fdeployments/o1-pro/chat/completions?api-version=2024-10-21",
            r#"{"messages":[]}"#,
        ),
        (
            "/openai/deployments/gpt-4o-prod/../o1-pro/chat/completions?api-version=2024-10-21",
            r#"{"messages":[]}"#,
        ),
    ] {
        let (status, answer) = body_of(azure.send(chat(path, body)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        let error: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            error["error"]["type"], "invalid_request_error",
            "{path}: {error}"
        );
    }
    assert!(
        s.apis.seen_by(AZURE).is_empty(),
        "a refused request was sent"
    );
    s.assert_no_secret_anywhere(&[]);
}

#[tokio::test]
async fn tagged_agents_get_placeholders_from_the_metadata_service_and_nothing_else() {
    let s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    // The agent dialled 169.254.169.254:80; the emulator answers, nothing
    // is connected to (the Origin is all the injector knows).
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s.origins.insert(
        socket.local_addr().unwrap(),
        origin("169.254.169.254:80".parse().unwrap()),
    );
    let tcp = socket.connect(s.proxy).await.unwrap();
    let mut agent = Sender::h1(tcp).await;
    let call = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "169.254.169.254");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Full::new(Bytes::new())).unwrap()
    };
    let (status, token) = body_of(
        agent
            .send(call(
                "PUT",
                "/latest/api/token",
                &[("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
            ))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let token = String::from_utf8(token.to_vec()).unwrap();
    let session = [("x-aws-ec2-metadata-token", token.as_str())];
    let (_, role) = body_of(
        agent
            .send(call(
                "GET",
                "/latest/meta-data/iam/security-credentials/",
                &session,
            ))
            .await,
    )
    .await;
    let (status, creds) = body_of(
        agent
            .send(call(
                "GET",
                &format!(
                    "/latest/meta-data/iam/security-credentials/{}",
                    String::from_utf8_lossy(&role)
                ),
                &session,
            ))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let creds: serde_json::Value = serde_json::from_slice(&creds).unwrap();
    assert_eq!(creds["AccessKeyId"], warrant::metadata::AWS_ACCESS_KEY_ID);
    // The instance's user data (or anything not emulated) is refused.
    let (status, body) =
        body_of(agent.send(call("GET", "/latest/user-data", &session)).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&body).contains("warrant"));
    let lines = s.audit_lines(4).await;
    let outcomes: Vec<&str> = lines
        .iter()
        .map(|l| l["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["emulated", "emulated", "emulated", "refused"]);
    assert!(lines.iter().all(|l| l["upstream"] == "metadata"));
    assert_eq!(lines[0]["origin"]["tgid"], 4242);
}

#[tokio::test]
async fn many_large_bodies_to_sign_at_once_wait_for_room_and_then_get_a_503() {
    use http_body_util::{StreamBody, combinators::BoxBody};
    use hyper::body::Frame;
    let s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    s.origins
        .insert(socket.local_addr().unwrap(), origin(s.apis.addrs[0]));
    let tcp = socket.connect(s.proxy).await.unwrap();
    let tls = tls_over(tcp, roots_from_pem(&s.warrant_ca), BEDROCK, &[b"h2"]).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, BoxBody<Bytes, std::convert::Infallible>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
    tokio::spawn(conn);
    // Sixteen bodies of the largest size, each trickling a byte every 300 ms
    // (never idle long enough to time out): they fill the signing budget.
    let mut trickles = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..17 {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let request = Request::post(format!("https://{BEDROCK}{MODEL_PATH}/converse"))
            .header("content-type", "application/json")
            .header("content-length", "65536")
            .body(BodyExt::boxed(body))
            .unwrap();
        send.ready().await.unwrap();
        pending.push(tokio::spawn(send.send_request(request)));
        trickles.push(tokio::spawn(async move {
            loop {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b" "))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
        }));
    }
    // One of the seventeen finds no room within the header timeout.
    let (refused, _, rest) = futures_util::future::select_all(pending).await;
    let response = refused.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, body) = body_of(response).await;
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("too many large request bodies")
    );
    for trickle in trickles {
        trickle.abort();
    }
    drop(rest);
    assert!(s.apis.seen_by(BEDROCK).is_empty());
}

#[tokio::test]
async fn the_first_event_stream_frame_reaches_the_agent_while_bedrock_holds_the_rest() {
    let mut s = stack("source = \"file\"\nformat = \"aws\"\npath = \"{dir}/aws.json\"").await;
    let mut agent = s.agent(BEDROCK, true).await;
    let mut request = sigv4_placeholder(&format!("{MODEL_PATH}/converse-stream"), CONVERSE);
    request
        .headers_mut()
        .insert("x-mock-hold", "1".parse().unwrap());
    let response = agent.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // The mock sends one frame and then waits for the test: if anything on
    // the way held the stream back, this frame would never come.
    let mut stream = warrant::usage::eventstream::EventStream::new(1 << 20);
    // Read until one whole frame has come.
    loop {
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        stream.feed(&data, &mut Vec::new()).unwrap();
        if !stream.pending() {
            break;
        }
    }
    assert!(s.records.try_recv().is_err(), "not metered before its end");
    s.apis.release_held();
    let rest = body.collect().await.unwrap().to_bytes();
    let mut events = Vec::new();
    stream.feed(&rest, &mut events).unwrap();
    assert_eq!(events.last().unwrap().kind, "metadata");
    let record = s.records.recv().await.unwrap();
    assert_eq!(
        (record.usage.input_tokens, record.usage.output_tokens),
        (12, 7)
    );
}
