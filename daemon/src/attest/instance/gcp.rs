//! The `gcp` provider: the metadata server's identity token for the VM's
//! service account, requested with `format=full` so that it carries the
//! Compute Engine claims (project, zone, instance). The token is a JWT signed
//! RS256 by Google; its signature is checked when `[instance] jwks_file`
//! holds Google's JWKS (https://www.googleapis.com/oauth2/v3/certs, fetched
//! by the operator: the daemon contacts nothing beyond the metadata server).
//! Without it the claims are recorded as unverified, and policy conditions on
//! them fail closed.

use std::{collections::BTreeMap, path::Path, time::Duration};

use base64::Engine;
use serde::Deserialize;

use super::{Identity, InstanceError, add_config_claims, http::MetadataClient, now_unix};

pub const IDENTITY_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/identity";
const ISSUERS: &[&str] = &["https://accounts.google.com", "accounts.google.com"];

/// Google's signing keys, from a JWKS document.
#[derive(Debug, Clone)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    #[serde(default)]
    kid: Option<String>,
    kty: String,
    n: String,
    e: String,
}

impl Jwks {
    pub fn parse(text: &[u8]) -> Result<Jwks, InstanceError> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Jwk>,
        }
        let doc: Doc = serde_json::from_slice(text)
            .map_err(|e| InstanceError::Config(format!("bad JWKS: {e}")))?;
        let keys: Vec<Jwk> = doc.keys.into_iter().filter(|k| k.kty == "RSA").collect();
        if keys.is_empty() {
            return Err(InstanceError::Config("JWKS holds no RSA key".to_owned()));
        }
        Ok(Jwks { keys })
    }

    pub fn load(path: &Path) -> Result<Jwks, InstanceError> {
        let text = std::fs::read(path)
            .map_err(|e| InstanceError::Config(format!("cannot read {}: {e}", path.display())))?;
        Jwks::parse(&text)
    }
}

pub struct GcpProvider {
    endpoint: String,
    audience: String,
    jwks: Option<Jwks>,
    client: MetadataClient,
    environment: Option<String>,
}

impl GcpProvider {
    pub fn new(
        endpoint: String,
        audience: String,
        jwks: Option<Jwks>,
        timeout: Duration,
        environment: Option<String>,
    ) -> GcpProvider {
        GcpProvider {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            audience,
            jwks,
            client: MetadataClient::new(timeout),
            environment,
        }
    }

    /// The audience tokens are asked for (on a node, bound to its key:
    /// `Provider::bind_to_node`).
    pub fn set_audience(&mut self, audience: String) {
        self.audience = audience;
    }

    pub async fn fetch(&self) -> Result<Identity, InstanceError> {
        let url = format!(
            "{}{IDENTITY_PATH}?audience={}&format=full",
            self.endpoint,
            super::http::encode_query(&self.audience)
        );
        let token = self
            .client
            .call(http::Method::GET, &url, &[("Metadata-Flavor", "Google")])
            .await?;
        let token = std::str::from_utf8(&token)
            .map_err(|_| InstanceError::BadDocument("identity token is not text".to_owned()))?
            .trim();
        let mut identity = verify_token(token, &self.audience, self.jwks.as_ref(), now_unix())?;
        add_config_claims(&mut identity.claims, None, self.environment.as_ref());
        identity.evidence = Some(super::Evidence::GcpToken {
            token: token.to_owned(),
        });
        Ok(identity)
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Payload {
    iss: String,
    aud: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    google: Option<Google>,
}

#[derive(Debug, Deserialize)]
struct Google {
    compute_engine: ComputeEngine,
}

#[derive(Debug, Deserialize)]
struct ComputeEngine {
    project_id: String,
    #[serde(default)]
    project_number: Option<serde_json::Value>,
    zone: String,
    instance_id: String,
    instance_name: String,
}

/// Checks a token's audience, issuer, expiry and (with a JWKS) signature,
/// and returns its Compute Engine claims.
pub fn verify_token(
    token: &str,
    audience: &str,
    jwks: Option<&Jwks>,
    now: u64,
) -> Result<Identity, InstanceError> {
    let bad = |what: &str| InstanceError::BadDocument(format!("identity token: {what}"));
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a JWT (three dot-separated parts)"));
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Header =
        serde_json::from_slice(&b64.decode(h).map_err(|_| bad("header not base64url"))?)
            .map_err(|e| bad(&format!("header: {e}")))?;
    let payload: Payload =
        serde_json::from_slice(&b64.decode(p).map_err(|_| bad("payload not base64url"))?)
            .map_err(|e| bad(&format!("payload: {e}")))?;
    let signature = b64.decode(s).map_err(|_| bad("signature not base64url"))?;

    let verified = match jwks {
        Some(jwks) => {
            let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
            check_signature(&header, signed, &signature, jwks)?;
            true
        }
        None => false,
    };
    if payload.aud != audience {
        return Err(bad(&format!(
            "audience {:?}, expected {audience:?}",
            payload.aud
        )));
    }
    if !ISSUERS.contains(&payload.iss.as_str()) {
        return Err(bad(&format!("issuer {:?} is not Google", payload.iss)));
    }
    if payload.exp <= now {
        return Err(bad("expired"));
    }
    let ce = payload
        .google
        .ok_or_else(|| bad("no google.compute_engine claims (was format=full honoured?)"))?
        .compute_engine;
    let claims = claims_of(ce, payload.sub);
    Ok(Identity {
        verified,
        claims,
        evidence: None,
        issued_at: payload.iat,
    })
}

/// Checks that one of the JWKS keys (the one the header names, when it
/// names one) signed `signed` with RS256.
fn check_signature(
    header: &Header,
    signed: &[u8],
    signature: &[u8],
    jwks: &Jwks,
) -> Result<(), InstanceError> {
    if header.alg != "RS256" {
        return Err(InstanceError::BadSignature(format!(
            "alg {:?}; Google signs RS256",
            header.alg
        )));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signed_by = |key: &&Jwk| {
        let (Ok(n), Ok(e)) = (b64.decode(&key.n), b64.decode(&key.e)) else {
            return false;
        };
        ring::signature::RsaPublicKeyComponents { n, e }
            .verify(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                signed,
                signature,
            )
            .is_ok()
    };
    let found = jwks
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        .any(|key| signed_by(&key));
    if !found {
        return Err(InstanceError::BadSignature(
            "the identity token is not signed by any key in jwks_file".to_owned(),
        ));
    }
    Ok(())
}

/// The identity claims of a verified token's Compute Engine section.
fn claims_of(ce: ComputeEngine, service_account: Option<String>) -> BTreeMap<String, String> {
    // Zones are "<region>-<letter>", e.g. us-central1-a.
    let region = ce
        .zone
        .rsplit_once('-')
        .map(|(region, _)| region.to_owned())
        .unwrap_or_else(|| ce.zone.clone());
    let mut claims = BTreeMap::from([
        ("project".to_owned(), ce.project_id),
        ("zone".to_owned(), ce.zone),
        ("region".to_owned(), region),
        ("instance_id".to_owned(), ce.instance_id),
        ("instance_name".to_owned(), ce.instance_name),
    ]);
    if let Some(number) = ce.project_number {
        let number = match number {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        claims.insert("project_number".to_owned(), number);
    }
    if let Some(sub) = service_account {
        claims.insert("service_account".to_owned(), sub);
    }
    claims
}
