//! For the credential tests: a standards-conformant mock OAuth token
//! endpoint on loopback (client authentication by secret, post or
//! private_key_jwt; RFC 8693 and 7523 grants), the refresh settings the
//! store tests share, and private files.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use warrant::credentials::store::RefreshSettings;

/// How the mock authenticates clients.
#[derive(Clone)]
pub enum ExpectAuth {
    /// client_secret_basic with this id and secret.
    Basic(String, String),
    /// client_secret_post with this id and secret.
    Post(String, String),
    /// private_key_jwt: the client id and the public key (PEM) its
    /// assertion must verify with, ES256.
    PrivateKeyJwt(String, String),
    None,
}

#[derive(Clone)]
pub struct MockConfig {
    pub grant_type: &'static str,
    pub auth: ExpectAuth,
    /// The `audience` form parameter the mock requires, if any.
    pub audience: Option<String>,
    /// RFC 8693 / 7523: the subject token (or assertion) it requires.
    pub subject_token: Option<String>,
    pub expires_in: u64,
}

pub struct MockTokenEndpoint {
    pub addr: SocketAddr,
    pub url: String,
    /// Each request's form, in order (for assertions).
    pub requests: Arc<Mutex<Vec<HashMap<String, String>>>>,
    /// When set, the endpoint fails with this status.
    pub fail_with: Arc<Mutex<Option<StatusCode>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn oauth_error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": code }))
}

impl MockTokenEndpoint {
    pub async fn start(config: MockConfig) -> MockTokenEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}/oauth2/token");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fail_with = Arc::new(Mutex::new(None));
        let issued = Arc::new(Mutex::new(0u32));
        let state = (
            config,
            url.clone(),
            Arc::clone(&requests),
            Arc::clone(&fail_with),
            issued,
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(req, &state).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockTokenEndpoint {
            addr,
            url,
            requests,
            fail_with,
            task,
        }
    }

    pub fn calls(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn fail(&self, status: Option<StatusCode>) {
        *self.fail_with.lock().unwrap() = status;
    }
}

type State = (
    MockConfig,
    String,
    Arc<Mutex<Vec<HashMap<String, String>>>>,
    Arc<Mutex<Option<StatusCode>>>,
    Arc<Mutex<u32>>,
);

async fn handle(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let (config, url, requests, fail_with, issued) = state;
    if req.method() != hyper::Method::POST {
        return oauth_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request");
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    requests.lock().unwrap().push(form.clone());
    if let Some(status) = *fail_with.lock().unwrap() {
        return oauth_error(status, "temporarily_unavailable");
    }
    // RFC 6749 §4.4.2 / RFC 8693 §2.1: form-encoded POST.
    if content_type != "application/x-www-form-urlencoded" {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    if form.get("grant_type").map(String::as_str) != Some(config.grant_type) {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    // RFC 6749 §2.3: exactly one client authentication method.
    let authenticated = match &config.auth {
        ExpectAuth::Basic(id, secret) => {
            let expected = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>(),
                form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
            ));
            authorization.as_deref() == Some(&format!("Basic {expected}"))
                && !form.contains_key("client_secret")
        }
        ExpectAuth::Post(id, secret) => {
            authorization.is_none()
                && form.get("client_id") == Some(id)
                && form.get("client_secret") == Some(secret)
        }
        ExpectAuth::PrivateKeyJwt(id, public_pem) => {
            authorization.is_none() && check_assertion(&form, id, public_pem, url).is_ok()
        }
        ExpectAuth::None => authorization.is_none() && !form.contains_key("client_secret"),
    };
    if !authenticated {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if config.audience.is_some() && form.get("audience") != config.audience.as_ref() {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_target");
    }
    if let Some(subject) = &config.subject_token {
        let (field, type_ok) = if config.grant_type.ends_with("token-exchange") {
            (
                "subject_token",
                form.get("subject_token_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:token-type:jwt"),
            )
        } else {
            ("assertion", true)
        };
        if form.get(field) != Some(subject) || !type_ok {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    let n = {
        let mut issued = issued.lock().unwrap();
        *issued += 1;
        *issued
    };
    let mut body = serde_json::json!({
        "access_token": format!("issued-access-token-{n}"),
        "token_type": "Bearer",
        "expires_in": config.expires_in,
    });
    if config.grant_type.ends_with("token-exchange") {
        body["issued_token_type"] = "urn:ietf:params:oauth:token-type:access_token".into();
    }
    json(StatusCode::OK, body)
}

/// RFC 7523 §3 checks on a private_key_jwt client assertion.
fn check_assertion(
    form: &HashMap<String, String>,
    client_id: &str,
    public_pem: &str,
    token_url: &str,
) -> Result<(), String> {
    if form.get("client_assertion_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    {
        return Err("client_assertion_type".into());
    }
    let assertion = form.get("client_assertion").ok_or("no assertion")?;
    let key =
        jsonwebtoken::DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    // The test's clock is not the wall clock: lifetimes are checked below.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[client_id]);
    let data = jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation)
        .map_err(|e| e.to_string())?;
    let claims = data.claims;
    let (iat, exp) = (
        claims["iat"].as_i64().ok_or("iat")?,
        claims["exp"].as_i64().ok_or("exp")?,
    );
    if claims["sub"] != client_id
        || claims["jti"].as_str().is_none_or(str::is_empty)
        || exp <= iat
        || exp - iat > 300
    {
        return Err("claims".into());
    }
    Ok(())
}

/// Writes a root-only-style (0600) file owned by the current user.
pub fn write_private(path: &std::path::Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Refresh ahead of expiry by 5 min, every 10 min, 10% jitter, backoff
/// from 10 s to 60 s: what the store tests assume.
pub fn refresh_settings() -> RefreshSettings {
    RefreshSettings {
        refresh_ahead: Duration::from_secs(300),
        refresh_interval: Duration::from_secs(600),
        jitter: 0.1,
        backoff_initial: Duration::from_secs(10),
        backoff_max: Duration::from_secs(60),
    }
}
