//! Instance identity providers against mock metadata servers on 127.0.0.1
//! serving documents in the providers' published formats, signed with keys
//! generated here (by the openssl command line tool) that the verifiers are
//! configured to trust. Nothing here contacts a real metadata address.
//!
//! The same evidence, fetched by a provider bound to a node's key, is then
//! verified as a gateway enrolling nodes by their instance does
//! (`gateway::Enrollment`): bound to that key, in scope, fresh; and, for
//! evidence that does not bind the key (AWS), the key pinned to the
//! instance as the gateway pins it (`gateway::pins::check`), in a file and
//! in a real redis-server shared by two gateways.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use warrant::{
    attest::instance::{
        Evidence, InstanceError, InstanceHandle, InstanceState, Provider, aws::AwsProvider,
        azure::AzureProvider, gcp, gcp::GcpProvider, host::HostProvider, node_audience, node_nonce,
    },
    config::InstanceConfig,
    gateway::{
        EnrollError, EnrolledInstance, Enrollment, FilePins, PINS_FILE, Pin, PinRefusal, PinStore,
        RedisPins, pins,
    },
};
use warrant_test_support::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_secs(5);

// ---- the mock metadata server ------------------------------------------

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: HashMap<String, String>,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, Vec<u8>) + Send + Sync>;

/// An HTTP/1 server on 127.0.0.1; stops when dropped.
struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    async fn start(handler: Handler) -> Mock {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = Seen {
                            method: req.method().to_string(),
                            path_and_query: req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect(),
                        };
                        log.lock().unwrap().push(seen.clone());
                        let handler = handler.clone();
                        async move {
                            // Signing runs the openssl tool: off the runtime.
                            let (status, body) =
                                tokio::task::spawn_blocking(move || handler(&seen))
                                    .await
                                    .unwrap();
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Mock { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An address where nothing listens: bound, then released.
async fn unreachable_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---- keys and signatures, made with the openssl tool --------------------

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is needed to make test keys");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A self-signed RSA certificate: (key path, cert path).
fn self_signed(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let cert = format!("{name}.pem");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
        ],
        dir,
    );
    (dir.join(key), dir.join(cert))
}

/// A certificate for `cn` issued by the CA `ca`: (key path, cert path).
fn issued(dir: &Path, name: &str, cn: &str, ca: &(PathBuf, PathBuf)) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca.1.to_str().unwrap(),
            "-CAkey",
            ca.0.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
        ],
        dir,
    );
    (dir.join(key), dir.join(cert))
}

/// RSA PKCS#1 v1.5 SHA-256 signature of `data` with `key`.
fn rsa_sha256(dir: &Path, key: &Path, data: &[u8]) -> Vec<u8> {
    let input = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::fs::write(input.path(), data).unwrap();
    openssl(
        &[
            "dgst",
            "-sha256",
            "-sign",
            key.to_str().unwrap(),
            input.path().to_str().unwrap(),
        ],
        dir,
    )
}

fn der_certs(pem: &Path) -> Vec<Vec<u8>> {
    warrant::attest::instance::load_pem_certs(pem).unwrap()
}

// ---- host -------------------------------------------------------------

#[test]
fn host_identity_is_the_machine_id_and_a_root_only_key_made_once() {
    let dir = tempfile::tempdir().unwrap();
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
    let key = dir.path().join("state/host-ed25519.pk8");
    let host = HostProvider::new(
        machine_id.clone(),
        key.clone(),
        Some("eu-west-1".into()),
        Some("production".into()),
    );

    let first = host.fetch().unwrap();
    assert!(first.verified);
    assert_eq!(
        first.claims["machine_id"],
        "0123456789abcdef0123456789abcdef"
    );
    assert_eq!(first.claims["region"], "eu-west-1");
    assert_eq!(first.claims["environment"], "production");
    assert_eq!(first.claims["host_key_ed25519"].len(), 64);
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Later starts reuse the key.
    assert_eq!(host.fetch().unwrap(), first);

    // A key others can read is refused, not used.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(host.fetch(), Err(InstanceError::Host(m)) if m.contains("0600")));
}

#[test]
fn an_empty_machine_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, "\n").unwrap();
    let host = HostProvider::new(machine_id, dir.path().join("k"), None, None);
    assert!(host.fetch().is_err());
}

#[test]
fn the_default_provider_is_host_and_clouds_need_their_trust() {
    let dir = tempfile::tempdir().unwrap();
    let provider = Provider::from_config(&InstanceConfig::default(), dir.path()).unwrap();
    assert_eq!(provider.name(), "host");
    for cloud in ["aws", "azure"] {
        let config = InstanceConfig {
            provider: cloud.into(),
            ..InstanceConfig::default()
        };
        assert!(matches!(
            Provider::from_config(&config, dir.path()),
            Err(InstanceError::Config(m)) if m.contains("trust_file")
        ));
    }
}

// ---- aws ----------------------------------------------------------------

/// The instance identity document in the format AWS documents.
const AWS_DOCUMENT: &str = r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-1234567890abcdef0",
  "instanceType" : "t3.micro",
  "kernelId" : null,
  "pendingTime" : "2026-11-26T12:00:00Z",
  "privateIp" : "10.0.0.12",
  "ramdiskId" : null,
  "region" : "us-east-1",
  "version" : "2017-09-30"
}"#;

const AWS_TOKEN: &str = "AQAEAExampleImdsV2SessionToken==";

async fn aws_mock(signature_b64: String) -> Mock {
    Mock::start(Arc::new(move |req: &Seen| {
        match (req.method.as_str(), req.path_and_query.as_str()) {
            ("PUT", "/latest/api/token") => {
                if !req
                    .headers
                    .contains_key("x-aws-ec2-metadata-token-ttl-seconds")
                {
                    return (400, Vec::new());
                }
                (200, AWS_TOKEN.as_bytes().to_vec())
            }
            ("GET", path) => {
                // IMDSv2: without the session token, 401.
                if req
                    .headers
                    .get("x-aws-ec2-metadata-token")
                    .map(String::as_str)
                    != Some(AWS_TOKEN)
                {
                    return (401, Vec::new());
                }
                match path {
                    "/latest/dynamic/instance-identity/document" => {
                        (200, AWS_DOCUMENT.as_bytes().to_vec())
                    }
                    "/latest/dynamic/instance-identity/signature" => {
                        (200, signature_b64.clone().into_bytes())
                    }
                    _ => (404, Vec::new()),
                }
            }
            _ => (405, Vec::new()),
        }
    }))
    .await
}

/// AWS serves the base64 signature wrapped at 64 columns.
fn wrapped_base64(bytes: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    text.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn aws_identity_document_is_verified_with_imdsv2() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = self_signed(dir.path(), "aws", "aws-test");
    let signature = rsa_sha256(dir.path(), &key, AWS_DOCUMENT.as_bytes());
    let mock = aws_mock(wrapped_base64(&signature)).await;
    let aws = AwsProvider::new(mock.url(), der_certs(&cert), TIMEOUT, Some("prod".into()));

    let identity = aws.fetch().await.unwrap();
    assert!(identity.verified);
    assert_eq!(identity.claims["account"], "123456789012");
    assert_eq!(identity.claims["instance_id"], "i-1234567890abcdef0");
    assert_eq!(identity.claims["region"], "us-east-1");
    assert_eq!(identity.claims["zone"], "us-east-1a");
    assert_eq!(identity.claims["image_id"], "ami-0abcdef1234567890");
    assert_eq!(identity.claims["environment"], "prod");
    let seen = mock.seen.lock().unwrap();
    assert_eq!(seen[0].method, "PUT");
    assert_eq!(seen.len(), 3);
}

#[tokio::test]
async fn aws_document_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, trusted) = self_signed(dir.path(), "aws", "aws-test");
    let (other_key, _) = self_signed(dir.path(), "other", "attacker");
    let signature = rsa_sha256(dir.path(), &other_key, AWS_DOCUMENT.as_bytes());
    let mock = aws_mock(wrapped_base64(&signature)).await;
    let aws = AwsProvider::new(mock.url(), der_certs(&trusted), TIMEOUT, None);

    assert!(matches!(
        aws.fetch().await,
        Err(InstanceError::BadSignature(_))
    ));
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_and_claims_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert) = self_signed(dir.path(), "aws", "aws-test");
    let config = InstanceConfig {
        provider: "aws".into(),
        endpoint: Some(unreachable_endpoint().await),
        trust_file: Some(cert),
        timeout_ms: 2_000,
        ..InstanceConfig::default()
    };
    let provider = Provider::from_config(&config, dir.path()).unwrap();
    let handle = InstanceHandle::default();
    let err = provider.refresh(&handle).await.unwrap_err();
    assert!(matches!(err, InstanceError::Unreachable { .. }), "{err}");
    let state = handle.current();
    assert!(matches!(state.as_ref(), InstanceState::Failed { .. }));
    assert!(
        state
            .claim("region")
            .unwrap_err()
            .to_string()
            .contains("failed")
    );
}

// ---- gcp ----------------------------------------------------------------

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS with the public half of `key` (RSA, e = 65537).
fn jwks_for(dir: &Path, key: &Path, kid: &str) -> gcp::Jwks {
    gcp::Jwks::parse(jwks_text(dir, key, kid).as_bytes()).unwrap()
}

/// The JWKS document of [`jwks_for`].
fn jwks_text(dir: &Path, key: &Path, kid: &str) -> String {
    let out = openssl(
        &["rsa", "-in", key.to_str().unwrap(), "-noout", "-modulus"],
        dir,
    );
    let modulus = String::from_utf8(out).unwrap();
    let n = hex::decode(modulus.trim().trim_start_matches("Modulus=")).unwrap();
    let doc = serde_json::json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": b64url(&n), "e": "AQAB"
    }]});
    doc.to_string()
}

/// An identity token in the format the metadata server issues with
/// format=full.
fn gcp_token(dir: &Path, key: &Path, kid: &str, audience: &str) -> String {
    gcp_token_at(dir, key, kid, audience, now())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// As [`gcp_token`], issued at `now`.
fn gcp_token_at(dir: &Path, key: &Path, kid: &str, audience: &str, now: u64) -> String {
    let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let payload = serde_json::json!({
        "aud": audience,
        "azp": "112233445566778899000",
        "email": "agent@example-project.iam.gserviceaccount.com",
        "email_verified": true,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "112233445566778899000",
        "google": {"compute_engine": {
            "instance_creation_timestamp": 1_764_000_000u64,
            "instance_id": "5566778899001122334",
            "instance_name": "agent-vm-1",
            "project_id": "example-project",
            "project_number": 123456789012u64,
            "zone": "europe-west4-b"
        }}
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes())
    );
    let signature = rsa_sha256(dir, key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&signature))
}

async fn gcp_mock(token: String) -> Mock {
    Mock::start(Arc::new(move |req: &Seen| {
        if req.headers.get("metadata-flavor").map(String::as_str) != Some("Google") {
            return (403, Vec::new());
        }
        if !req
            .path_and_query
            .starts_with("/computeMetadata/v1/instance/service-accounts/default/identity?audience=")
            || !req.path_and_query.ends_with("&format=full")
        {
            return (404, Vec::new());
        }
        (200, token.clone().into_bytes())
    }))
    .await
}

#[tokio::test]
async fn gcp_identity_token_is_verified_against_the_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = self_signed(dir.path(), "google", "google-test");
    let audience = "https://warrant.example/agents";
    let mock = gcp_mock(gcp_token(dir.path(), &key, "k1", audience)).await;
    let jwks = jwks_for(dir.path(), &key, "k1");
    let gcp = GcpProvider::new(mock.url(), audience.into(), Some(jwks), TIMEOUT, None);

    let identity = gcp.fetch().await.unwrap();
    assert!(identity.verified);
    assert_eq!(identity.claims["project"], "example-project");
    assert_eq!(identity.claims["zone"], "europe-west4-b");
    assert_eq!(identity.claims["region"], "europe-west4");
    assert_eq!(identity.claims["instance_id"], "5566778899001122334");
    assert_eq!(identity.claims["project_number"], "123456789012");
    let seen = mock.seen.lock().unwrap();
    assert!(
        seen[0]
            .path_and_query
            .contains("audience=https%3A%2F%2Fwarrant.example%2Fagents"),
        "{:?}",
        seen[0]
    );
}

#[tokio::test]
async fn gcp_token_signed_by_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = self_signed(dir.path(), "google", "google-test");
    let (other, _) = self_signed(dir.path(), "other", "attacker");
    let mock = gcp_mock(gcp_token(dir.path(), &other, "k1", "warrant")).await;
    let gcp = GcpProvider::new(
        mock.url(),
        "warrant".into(),
        Some(jwks_for(dir.path(), &key, "k1")),
        TIMEOUT,
        None,
    );
    assert!(matches!(
        gcp.fetch().await,
        Err(InstanceError::BadSignature(_))
    ));
}

#[tokio::test]
async fn gcp_without_jwks_records_unverified_claims_that_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = self_signed(dir.path(), "google", "google-test");
    let mock = gcp_mock(gcp_token(dir.path(), &key, "k1", "warrant")).await;
    let config = InstanceConfig {
        provider: "gcp".into(),
        endpoint: Some(mock.url()),
        ..InstanceConfig::default()
    };
    let provider = Provider::from_config(&config, dir.path()).unwrap();
    let handle = InstanceHandle::default();
    provider.refresh(&handle).await.unwrap();
    let state = handle.current();
    assert!(matches!(
        state.as_ref(),
        InstanceState::Attested {
            verified: false,
            ..
        }
    ));
    let err = state.claim("region").unwrap_err().to_string();
    assert!(err.contains("unverified"), "{err}");
}

#[tokio::test]
async fn gcp_token_for_another_audience_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = self_signed(dir.path(), "google", "google-test");
    let mock = gcp_mock(gcp_token(dir.path(), &key, "k1", "someone-else")).await;
    let gcp = GcpProvider::new(
        mock.url(),
        "warrant".into(),
        Some(jwks_for(dir.path(), &key, "k1")),
        TIMEOUT,
        None,
    );
    let err = gcp.fetch().await.unwrap_err();
    assert!(err.to_string().contains("audience"), "{err}");
}

#[tokio::test]
async fn gcp_unreachable_endpoint_is_reported() {
    let gcp = GcpProvider::new(
        unreachable_endpoint().await,
        "warrant".into(),
        None,
        TIMEOUT,
        None,
    );
    assert!(matches!(
        gcp.fetch().await,
        Err(InstanceError::Unreachable { .. })
    ));
}

// ---- azure --------------------------------------------------------------

struct AzureKeys {
    ca: (PathBuf, PathBuf),
    leaf: (PathBuf, PathBuf),
    /// The documents' timeStamp.createdOn, as IMDS writes it.
    created_on: String,
}

fn azure_keys(dir: &Path, signer_cn: &str) -> AzureKeys {
    let ca = self_signed(dir, "azure-ca", "Test Azure Root");
    let leaf = issued(dir, "azure-leaf", signer_cn, &ca);
    AzureKeys {
        ca,
        leaf,
        created_on: "11/27/26 00:00:00 -0000".to_owned(),
    }
}

/// The attested data response: PKCS#7 SignedData (DER, content attached,
/// signer certificate included) of the JSON document, base64 in a JSON
/// envelope, as IMDS serves it.
fn azure_attested(dir: &Path, keys: &AzureKeys, nonce: &str, tamper: bool) -> Vec<u8> {
    let content = serde_json::json!({
        "licenseType": "",
        "nonce": nonce,
        "plan": {"name": "", "product": "", "publisher": ""},
        "sku": "22_04-lts-gen2",
        "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
        "timeStamp": {"createdOn": keys.created_on, "expiresOn": "11/27/26 06:00:00 -0000"},
        "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    });
    let input = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::fs::write(input.path(), content.to_string()).unwrap();
    let der = openssl(
        &[
            "smime",
            "-sign",
            "-binary",
            "-nodetach",
            "-md",
            "sha256",
            "-outform",
            "DER",
            "-in",
            input.path().to_str().unwrap(),
            "-signer",
            keys.leaf.1.to_str().unwrap(),
            "-inkey",
            keys.leaf.0.to_str().unwrap(),
        ],
        dir,
    );
    let mut der = der;
    if tamper {
        // Another VM's id, same length, inside the signed content.
        let at = der
            .windows(8)
            .position(|w| w == b"02aab8a4")
            .expect("vmId in the DER");
        der[at..at + 2].copy_from_slice(b"99");
    }
    serde_json::json!({
        "encoding": "pkcs7",
        "signature": base64::engine::general_purpose::STANDARD.encode(der)
    })
    .to_string()
    .into_bytes()
}

/// Serves attested data for the nonce asked, or for `fixed_nonce`.
async fn azure_mock(dir: PathBuf, keys: Arc<AzureKeys>, fixed_nonce: Option<String>) -> Mock {
    azure_mock_with(dir, keys, fixed_nonce, false).await
}

async fn azure_mock_with(
    dir: PathBuf,
    keys: Arc<AzureKeys>,
    fixed_nonce: Option<String>,
    tamper: bool,
) -> Mock {
    Mock::start(Arc::new(move |req: &Seen| {
        if req.headers.get("metadata").map(String::as_str) != Some("true") {
            return (400, Vec::new());
        }
        let Some(query) = req
            .path_and_query
            .strip_prefix("/metadata/attested/document?")
        else {
            return (404, Vec::new());
        };
        let asked = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("nonce="))
            .unwrap_or("")
            .to_owned();
        let nonce = fixed_nonce.clone().unwrap_or(asked);
        (200, azure_attested(&dir, &keys, &nonce, tamper))
    }))
    .await
}

#[tokio::test]
async fn azure_attested_data_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(azure_keys(dir.path(), "metadata.azure.com"));
    let mock = azure_mock(dir.path().to_owned(), keys.clone(), None).await;
    let azure = AzureProvider::new(
        mock.url(),
        der_certs(&keys.ca.1),
        TIMEOUT,
        Some("westeurope".into()),
        None,
    );

    let identity = azure.fetch().await.unwrap();
    assert!(identity.verified);
    assert_eq!(
        identity.claims["vm_id"],
        "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    assert_eq!(
        identity.claims["subscription"],
        "8d10da13-8125-4ba9-a717-bf7490507b3d"
    );
    assert_eq!(identity.claims["region"], "westeurope");
    assert!(
        mock.seen.lock().unwrap()[0]
            .path_and_query
            .contains("api-version=2020-09-01&nonce=")
    );
}

#[tokio::test]
async fn azure_document_altered_after_signing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(azure_keys(dir.path(), "metadata.azure.com"));
    let mock = azure_mock_with(dir.path().to_owned(), keys.clone(), None, true).await;
    let azure = AzureProvider::new(mock.url(), der_certs(&keys.ca.1), TIMEOUT, None, None);
    let err = azure.fetch().await.unwrap_err();
    assert!(matches!(err, InstanceError::BadSignature(_)), "{err}");
}

#[tokio::test]
async fn azure_data_from_an_untrusted_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(azure_keys(dir.path(), "metadata.azure.com"));
    let (_, other_ca) = self_signed(dir.path(), "other-ca", "Other Root");
    let mock = azure_mock(dir.path().to_owned(), keys, None).await;
    let azure = AzureProvider::new(mock.url(), der_certs(&other_ca), TIMEOUT, None, None);
    let err = azure.fetch().await.unwrap_err();
    assert!(
        matches!(err, InstanceError::BadSignature(ref m) if m.contains("chain")),
        "{err}"
    );
}

#[tokio::test]
async fn azure_replayed_document_with_an_old_nonce_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(azure_keys(dir.path(), "metadata.azure.com"));
    let mock = azure_mock(
        dir.path().to_owned(),
        keys.clone(),
        Some("1234567890".into()),
    )
    .await;
    let azure = AzureProvider::new(mock.url(), der_certs(&keys.ca.1), TIMEOUT, None, None);
    let err = azure.fetch().await.unwrap_err();
    assert!(err.to_string().contains("nonce"), "{err}");
}

#[tokio::test]
async fn azure_signer_that_is_not_the_metadata_service_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(azure_keys(dir.path(), "evil.example.com"));
    let mock = azure_mock(dir.path().to_owned(), keys.clone(), None).await;
    let azure = AzureProvider::new(mock.url(), der_certs(&keys.ca.1), TIMEOUT, None, None);
    let err = azure.fetch().await.unwrap_err();
    assert!(
        err.to_string().contains("not the Azure metadata service"),
        "{err}"
    );
}

#[tokio::test]
async fn azure_unreachable_endpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let keys = azure_keys(dir.path(), "metadata.azure.com");
    let azure = AzureProvider::new(
        unreachable_endpoint().await,
        der_certs(&keys.ca.1),
        TIMEOUT,
        None,
        None,
    );
    assert!(matches!(
        azure.fetch().await,
        Err(InstanceError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn the_refresher_fills_the_handle_and_stops_when_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let machine_id = dir.path().join("machine-id");
    std::fs::write(&machine_id, "fedcba9876543210fedcba9876543210\n").unwrap();
    let provider = Provider::Host(HostProvider::new(
        machine_id,
        dir.path().join("host-ed25519.pk8"),
        Some("local".into()),
        None,
    ));
    let handle = InstanceHandle::default();
    let task = provider.spawn_refresh(handle.clone(), Duration::from_secs(3600));
    // The first fetch happens at once; wait for it by yielding, not sleeping.
    tokio::time::timeout(TIMEOUT, async {
        while matches!(handle.current().as_ref(), InstanceState::Pending) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(handle.current().claim("region"), Ok("local"));
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
}

// ---- a gateway enrolling nodes by this evidence -------------------------

const NODE_A: [u8; 32] = [0xa1; 32];
const NODE_B: [u8; 32] = [0xb2; 32];
const SKEW: u64 = 60;

/// A gateway's `[[gateway.enroll]]` rule (`body`), compiled.
fn enrollment(body: &str) -> Enrollment {
    let text = format!(
        "[gateway]\ncertificate = \"/c\"\nkey = \"/k\"\nname = \"gw\"\n\n[[gateway.enroll]]\n{body}"
    );
    let config = warrant::config::Config::parse(&text, "gw.toml").unwrap();
    Enrollment::load(config.gateway.as_ref().unwrap()).unwrap()
}

/// What `provider`, bound to node key `key`, fetched for its gateway.
async fn evidence_of(mut provider: Provider, key: &[u8; 32]) -> Evidence {
    provider.bind_to_node(key);
    provider.fetch().await.unwrap().evidence.unwrap()
}

fn now_i64() -> i64 {
    i64::try_from(now()).unwrap()
}

#[tokio::test]
async fn a_gateway_enrolls_a_gce_node_by_a_token_for_its_key_and_refuses_abuse() {
    let dir = tempfile::tempdir().unwrap();
    let (google, _) = self_signed(dir.path(), "google", "google-test");
    let (other, _) = self_signed(dir.path(), "other", "attacker");
    let jwks = dir.path().join("google-jwks.json");
    std::fs::write(&jwks, jwks_text(dir.path(), &google, "k1")).unwrap();
    let untrusted = dir.path().join("other-jwks.json");
    std::fs::write(&untrusted, jwks_text(dir.path(), &other, "k1")).unwrap();
    // The node asks for a token whose audience names its key.
    let audience = node_audience(&NODE_A);
    assert_eq!(
        audience,
        format!("warrant-node:ed25519:{}", hex::encode(NODE_A))
    );
    let token = gcp_token(dir.path(), &google, "k1", &audience);
    let mock = gcp_mock(token).await;
    let node = GcpProvider::new(mock.url(), "warrant".into(), None, TIMEOUT, None);
    let evidence = evidence_of(Provider::Gcp(node), &NODE_A).await;
    assert!(
        mock.seen.lock().unwrap()[0]
            .path_and_query
            .contains(&format!(
                "audience=warrant-node%3Aed25519%3A{}",
                hex::encode(NODE_A)
            ))
    );
    let rule = |jwks: &Path, projects: &str| {
        enrollment(&format!(
            "provider = \"gcp\"\njwks_file = \"{}\"\nprojects = [{projects}]\n",
            jwks.display()
        ))
    };
    let gateway = rule(&jwks, "\"example-project\"");
    let enrolled = gateway
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap();
    assert_eq!(enrolled.name, "gcp:example-project/5566778899001122334");
    assert_eq!(enrolled.facts.claims["region"], "europe-west4");
    assert!(enrolled.facts.verified);
    // The audience binds the key: nothing to pin. Reused at most until
    // iat + max_age_secs (900).
    assert_eq!(enrolled.launch, None);
    assert!(enrolled.valid_until <= now_i64() + 900);

    // Lifted onto another node's key: the audience names node A.
    let err = gateway
        .verify(Some(&evidence), &NODE_B, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("audience"), "{err}");
    // Another project; keys the gateway does not trust.
    let err = rule(&jwks, "\"prod-project\"")
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::OutOfScope { .. }), "{err}");
    let err = rule(&untrusted, "\"example-project\"")
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(err.to_string().contains("not signed by any key"), "{err}");
    // Held back: older than max_age_secs (900), then expired (an hour).
    let err = gateway
        .verify(Some(&evidence), &NODE_A, now_i64() + 1_000, SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::Stale { .. }), "{err}");
    let err = gateway
        .verify(Some(&evidence), &NODE_A, now_i64() + 4_000, SKEW)
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // Dated ahead of the gateway's clock beyond the skew.
    let ahead = Evidence::GcpToken {
        token: gcp_token_at(dir.path(), &google, "k1", &audience, now() + 600),
    };
    let err = gateway
        .verify(Some(&ahead), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::FromTheFuture { .. }), "{err}");
    // No evidence; evidence of a cloud this gateway does not enroll.
    let err = gateway.verify(None, &NODE_A, now_i64(), SKEW).unwrap_err();
    assert!(matches!(err, EnrollError::NoEvidence), "{err}");
    let aws = Evidence::AwsDocument {
        document: AWS_DOCUMENT.into(),
        signature: String::new(),
    };
    let err = gateway
        .verify(Some(&aws), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::NoRule("aws")), "{err}");
}

#[tokio::test]
async fn a_gateway_enrolls_an_aws_node_by_its_document_which_binds_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = self_signed(dir.path(), "aws", "aws-test");
    let (_, other_cert) = self_signed(dir.path(), "other", "attacker");
    let signature = rsa_sha256(dir.path(), &key, AWS_DOCUMENT.as_bytes());
    let mock = aws_mock(wrapped_base64(&signature)).await;
    let node = AwsProvider::new(mock.url(), der_certs(&cert), TIMEOUT, None);
    let evidence = evidence_of(Provider::Aws(node), &NODE_A).await;
    let rule = |trust: &Path, accounts: &str| {
        enrollment(&format!(
            "provider = \"aws\"\ntrust_file = \"{}\"\naccounts = [{accounts}]\n",
            trust.display()
        ))
    };
    let gateway = rule(&cert, "\"123456789012\"");
    let enrolled = gateway
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap();
    assert_eq!(enrolled.name, "aws:123456789012/i-1234567890abcdef0");
    assert_eq!(enrolled.facts.claims["region"], "us-east-1");
    // The document names no key: it verifies with any key, so what
    // binds it is the pin (the tests below), for its launch.
    let lifted = gateway
        .verify(Some(&evidence), &NODE_B, now_i64(), SKEW)
        .unwrap();
    let launch = jiff::Timestamp::from_second(lifted.launch.unwrap()).unwrap();
    assert_eq!(launch.to_string(), "2026-11-26T12:00:00Z");
    // Reused no longer than max_age_secs (default 900), from now.
    assert!(lifted.valid_until > now_i64() && lifted.valid_until <= now_i64() + 900);
    let err = rule(&cert, "\"210987654321\"")
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::OutOfScope { .. }), "{err}");
    let err = rule(&other_cert, "\"123456789012\"")
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(
        err.to_string().contains("not signed by any certificate"),
        "{err}"
    );
    // A document altered after signing (another account).
    let Evidence::AwsDocument {
        document,
        signature,
    } = &evidence
    else {
        panic!("{evidence:?}");
    };
    let forged = Evidence::AwsDocument {
        document: document.replace("123456789012", "123456789013"),
        signature: signature.clone(),
    };
    let err = rule(&cert, "\"123456789013\"")
        .verify(Some(&forged), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::Refused { .. }), "{err}");
}

#[tokio::test]
async fn a_gateway_enrolls_an_azure_node_by_a_fresh_document_with_its_keys_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = azure_keys(dir.path(), "metadata.azure.com");
    keys.created_on = jiff::Timestamp::now()
        .strftime("%m/%d/%y %H:%M:%S -0000")
        .to_string();
    let keys = Arc::new(keys);
    let trust = keys.ca.1.clone();
    let rule = |subscriptions: &str| {
        enrollment(&format!(
            "provider = \"azure\"\ntrust_file = \"{}\"\nsubscriptions = [{subscriptions}]\n",
            trust.display()
        ))
    };
    // The mock signs whatever nonce it is asked for: the node asks for
    // the one derived from its key.
    let mock = azure_mock(dir.path().to_owned(), keys.clone(), None).await;
    let node = AzureProvider::new(mock.url(), der_certs(&keys.ca.1), TIMEOUT, None, None);
    let evidence = evidence_of(Provider::Azure(node), &NODE_A).await;
    assert!(
        mock.seen.lock().unwrap()[0]
            .path_and_query
            .ends_with(&format!("nonce={}", node_nonce(&NODE_A)))
    );
    let gateway = rule("\"8d10da13-8125-4ba9-a717-bf7490507b3d\"");
    let enrolled = gateway
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap();
    assert_eq!(
        enrolled.name,
        "azure:8d10da13-8125-4ba9-a717-bf7490507b3d/02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    // Its nonce binds 33 bits only: the key is pinned too (no launch time).
    assert_eq!(enrolled.launch, Some(0));
    // Lifted onto another key: its nonce is another.
    let err = gateway
        .verify(Some(&evidence), &NODE_B, now_i64(), SKEW)
        .unwrap_err();
    assert!(err.to_string().contains("nonce"), "{err}");
    let err = rule("\"00000000-0000-0000-0000-000000000000\"")
        .verify(Some(&evidence), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::OutOfScope { .. }), "{err}");
    // A document made days ago, for this very key: stale.
    let old = AzureKeys {
        ca: keys.ca.clone(),
        leaf: keys.leaf.clone(),
        created_on: "11/27/26 00:00:00 -0000".to_owned(),
    };
    let stale = Evidence::AzureAttested {
        document: String::from_utf8(azure_attested(
            dir.path(),
            &old,
            &node_nonce(&NODE_A),
            false,
        ))
        .unwrap(),
    };
    let err = rule("\"8d10da13-8125-4ba9-a717-bf7490507b3d\"")
        .verify(Some(&stale), &NODE_A, now_i64(), SKEW)
        .unwrap_err();
    assert!(matches!(err, EnrollError::Stale { .. }), "{err}");
}

// ---- AWS instances pinned to the first key that enrolls them ------------

/// An AWS `[[gateway.enroll]]` rule trusting `cert`, and a node's evidence
/// for `document` signed with `key` (as the metadata service serves it).
fn aws_gateway(cert: &Path) -> Enrollment {
    enrollment(&format!(
        "provider = \"aws\"\ntrust_file = \"{}\"\naccounts = [\"123456789012\"]\n",
        cert.display()
    ))
}

fn aws_evidence(dir: &Path, key: &Path, document: &str) -> Evidence {
    Evidence::AwsDocument {
        document: document.to_owned(),
        signature: wrapped_base64(&rsa_sha256(dir, key, document.as_bytes())),
    }
}

/// What the gateway does with a key not enrolled by `[[gateway.node]]`:
/// verifies its evidence, then checks (or makes) the instance's pin.
async fn admit(
    gateway: &Enrollment,
    store: &dyn PinStore,
    evidence: &Evidence,
    key: &[u8; 32],
) -> Result<EnrolledInstance, PinRefusal> {
    let enrolled = gateway
        .verify(Some(evidence), key, now_i64(), SKEW)
        .unwrap();
    pins::check(store, key, &enrolled, now_i64()).await?;
    Ok(enrolled)
}

const INSTANCE: &str = "aws:123456789012/i-1234567890abcdef0";

#[tokio::test]
async fn an_aws_instance_is_pinned_to_the_first_key_until_released_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = self_signed(dir.path(), "aws", "aws-test");
    let gateway = aws_gateway(&cert);
    let evidence = aws_evidence(dir.path(), &key, AWS_DOCUMENT);
    let file = dir.path().join(PINS_FILE);
    let store = FilePins::open(&file).unwrap();
    // The first key enrolls, again and again.
    assert_eq!(
        admit(&gateway, &store, &evidence, &NODE_A)
            .await
            .unwrap()
            .name,
        INSTANCE
    );
    admit(&gateway, &store, &evidence, &NODE_A).await.unwrap();
    // A copy of the same document with another key: refused, saying why.
    let err = admit(&gateway, &store, &evidence, &NODE_B)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PinRefusal::OtherKey { .. }), "{text}");
    assert!(
        text.contains(INSTANCE)
            && text.contains("pinned to another key")
            && text.contains(&hex::encode(NODE_A))
            && text.contains("warrant unpin"),
        "{text}"
    );
    // A restart: a new store on the same file still refuses.
    drop(store);
    let store = FilePins::open(&file).unwrap();
    assert!(admit(&gateway, &store, &evidence, &NODE_B).await.is_err());
    admit(&gateway, &store, &evidence, &NODE_A).await.unwrap();
    // Released by the operator: the other key enrolls and is pinned.
    let released = store.release(INSTANCE).await.unwrap().unwrap();
    assert_eq!(released.key, format!("ed25519:{}", hex::encode(NODE_A)));
    admit(&gateway, &store, &evidence, &NODE_B).await.unwrap();
    assert!(admit(&gateway, &store, &evidence, &NODE_A).await.is_err());

    // A later launch (a stop and start: a new pendingTime) pins again; a
    // copy of the earlier launch's document is then refused, whatever key.
    let relaunched = aws_evidence(
        dir.path(),
        &key,
        &AWS_DOCUMENT.replace("2026-11-26T12:00:00Z", "2026-11-28T08:00:00Z"),
    );
    admit(&gateway, &store, &relaunched, &NODE_A).await.unwrap();
    admit(&gateway, &store, &relaunched, &NODE_A).await.unwrap();
    for key in [NODE_A, NODE_B] {
        let err = admit(&gateway, &store, &evidence, &key).await.unwrap_err();
        assert!(matches!(err, PinRefusal::Superseded { .. }), "{err}");
        assert!(err.to_string().contains("earlier launch"), "{err}");
    }
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, INSTANCE);
    assert_eq!(
        listed[0].pin.key,
        format!("ed25519:{}", hex::encode(NODE_A))
    );
}

#[tokio::test]
async fn two_gateways_sharing_one_redis_agree_on_an_aws_instances_pin() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = self_signed(dir.path(), "aws", "aws-test");
    let gateway = aws_gateway(&cert);
    let evidence = aws_evidence(dir.path(), &key, AWS_DOCUMENT);
    let one = RedisPins::new(&redis.url, TIMEOUT).unwrap();
    let two = RedisPins::new(&redis.url, TIMEOUT).unwrap();
    admit(&gateway, &one, &evidence, &NODE_A).await.unwrap();
    // The other gateway refuses another key, and lists the pin.
    let err = admit(&gateway, &two, &evidence, &NODE_B).await.unwrap_err();
    assert!(matches!(err, PinRefusal::OtherKey { .. }), "{err}");
    admit(&gateway, &two, &evidence, &NODE_A).await.unwrap();
    let listed = two.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, INSTANCE);
    // A restarted gateway (a new store on the same Redis) still refuses.
    drop(one);
    let one = RedisPins::new(&redis.url, TIMEOUT).unwrap();
    assert!(admit(&gateway, &one, &evidence, &NODE_B).await.is_err());
    // Released on one gateway: the other key enrolls on the other.
    assert!(two.release(INSTANCE).await.unwrap().is_some());
    assert!(two.release(INSTANCE).await.unwrap().is_none());
    admit(&gateway, &one, &evidence, &NODE_B).await.unwrap();
    assert!(admit(&gateway, &two, &evidence, &NODE_A).await.is_err());
    // The operator pins a key of their choice on one gateway: the other
    // gateway admits that key and refuses the one pinned before.
    let a_key = format!("ed25519:{}", hex::encode(NODE_A));
    let replaced = two.repin(INSTANCE, a_key, now_i64()).await.unwrap();
    assert_eq!(
        replaced.unwrap().key,
        format!("ed25519:{}", hex::encode(NODE_B))
    );
    admit(&gateway, &one, &evidence, &NODE_A).await.unwrap();
    assert!(admit(&gateway, &one, &evidence, &NODE_B).await.is_err());
    // Two gateways racing to pin one instance to two keys: one wins.
    let pin = |key: &[u8; 32]| Pin {
        key: hex::encode(key),
        launch: 1,
        pinned_at: 1,
    };
    let (a, b) = tokio::join!(
        one.claim("aws:1/i-race", pin(&NODE_A)),
        two.claim("aws:1/i-race", pin(&NODE_B))
    );
    assert_eq!(
        [a.unwrap().is_ok(), b.unwrap().is_ok()]
            .iter()
            .filter(|won| **won)
            .count(),
        1
    );
}
