//! An issuer's public keys (JWKS), from a file read at start or a URL
//! fetched and refreshed.
//!
//! Only public asymmetric keys are kept: a JWKS entry of type "oct" (an
//! HMAC secret) is refused when the set is read, so no token can ever be
//! checked against a shared secret, however its header is written. A
//! token's `kid` only selects among these keys by equality; it never names
//! a file or a URL, and a `kid` the set does not hold matches nothing (a
//! URL set is fetched again, at most once per [`MIN_REFETCH`], in case the
//! issuer rotated).

use std::{
    path::Path,
    sync::RwLock,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

/// A key set fetched from a URL is fetched again no more often than this
/// when a token names a key it does not hold: an attacker's made-up `kid`s
/// must not turn the gateway into a load generator on the issuer.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// JWKS documents larger than this are refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a JWKS document: {0}")]
    Parse(String),
    #[error("the JWKS holds a symmetric (\"oct\") key: tokens are verified with public keys only")]
    Symmetric,
    #[error("the JWKS holds no usable signing key")]
    Empty,
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// One usable key.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    /// The algorithms this key may verify (its JWK `alg`, or those of its
    /// type and curve).
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

/// A parsed key set.
#[derive(Clone)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn parse(bytes: &[u8]) -> Result<KeySet, JwksError> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| JwksError::Parse(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(JwksError::Symmetric);
            }
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let algs = algorithms_of(jwk);
            if algs.is_empty() {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algs,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::Empty);
        }
        Ok(KeySet { keys })
    }

    pub fn load(path: &Path) -> Result<KeySet, JwksError> {
        let bytes = std::fs::read(path).map_err(|source| JwksError::Read {
            path: path.display().to_string(),
            source,
        })?;
        KeySet::parse(&bytes)
    }

    /// The keys that may verify a token signed with `alg` and naming `kid`:
    /// the one with that kid (if it allows `alg`), or, for a token without
    /// a kid, every key that allows `alg`.
    pub fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&DecodingKey> {
        self.keys
            .iter()
            .filter(|k| k.algs.contains(&alg))
            .filter(|k| match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            })
            .map(|k| &k.key)
            .collect()
    }
}

/// The asymmetric algorithms a JWK may verify: its own `alg` if it names
/// one (and it fits the key), else every algorithm of its type and curve.
fn algorithms_of(jwk: &Jwk) -> Vec<Algorithm> {
    let fits: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => Vec::new(),
        },
        AlgorithmParameters::OctetKey(_) => Vec::new(),
    };
    let named = jwk.common.key_algorithm.and_then(|alg| match alg {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::RS384 => Some(Algorithm::RS384),
        KeyAlgorithm::RS512 => Some(Algorithm::RS512),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::PS384 => Some(Algorithm::PS384),
        KeyAlgorithm::PS512 => Some(Algorithm::PS512),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::ES384 => Some(Algorithm::ES384),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    match (jwk.common.key_algorithm, named) {
        (None, _) => fits,
        (Some(_), Some(alg)) if fits.contains(&alg) => vec![alg],
        // An alg that is not a signature this key type makes: unusable.
        (Some(_), _) => Vec::new(),
    }
}

/// Where an issuer's keys come from.
pub enum KeySource {
    /// Read once at start (and at each reload).
    File(KeySet),
    /// Fetched, cached, refreshed every `refresh` and when a token names an
    /// unknown kid (at most every [`MIN_REFETCH`]).
    Url(Box<UrlKeys>),
}

pub struct UrlKeys {
    url: String,
    refresh: Duration,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    state: RwLock<UrlState>,
    /// Serializes fetches, so that a burst of tokens makes one.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct UrlState {
    keys: Option<KeySet>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl UrlKeys {
    pub fn new(url: String, refresh: Duration) -> Result<UrlKeys, JwksError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| JwksError::Fetch {
                url: url.clone(),
                reason: format!("no root certificates: {e}"),
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(UrlKeys {
            url,
            refresh,
            client: Client::builder(TokioExecutor::new()).build(connector),
            state: RwLock::new(UrlState::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The key set, fetched first if there is none yet, it is older than
    /// `refresh`, or `want_kid` is not in it (rate-limited).
    pub async fn current(&self, want_kid: Option<&str>) -> Result<KeySet, JwksError> {
        if let Some(keys) = self.fresh(want_kid) {
            return Ok(keys);
        }
        let _one = self.fetching.lock().await;
        // Another task may have fetched while this one waited.
        if let Some(keys) = self.fresh(want_kid) {
            return Ok(keys);
        }
        let recently = self
            .read_state(|s| s.attempted)
            .flatten()
            .is_some_and(|at| at.elapsed() < MIN_REFETCH);
        let cached = self.read_state(|s| s.keys.clone()).flatten();
        if recently && let Some(keys) = cached {
            return Ok(keys);
        }
        if let Ok(mut state) = self.state.write() {
            state.attempted = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                if let Ok(mut state) = self.state.write() {
                    state.keys = Some(keys.clone());
                    state.fetched = Some(Instant::now());
                }
                Ok(keys)
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "cannot fetch the issuer's JWKS");
                // Keys fetched earlier stay good until the issuer is back.
                cached.ok_or(error)
            }
        }
    }

    fn read_state<T>(&self, f: impl FnOnce(&UrlState) -> T) -> Option<T> {
        self.state.read().ok().map(|s| f(&s))
    }

    fn fresh(&self, want_kid: Option<&str>) -> Option<KeySet> {
        let state = self.state.read().ok()?;
        let keys = state.keys.as_ref()?;
        let young = state.fetched.is_some_and(|at| at.elapsed() < self.refresh);
        let has_kid =
            want_kid.is_none_or(|kid| keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid)));
        (young && has_kid).then(|| keys.clone())
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let fail = |reason: String| JwksError::Fetch {
            url: self.url.clone(),
            reason,
        };
        let request = http::Request::get(&self.url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| fail(crate::error::chain(&e)))?;
            if !response.status().is_success() {
                return Err(fail(format!("status {}", response.status())));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| fail(e.to_string()))
        };
        let body = tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| fail("timed out".to_owned()))??;
        KeySet::parse(&body)
    }
}

impl KeySource {
    pub async fn current(&self, want_kid: Option<&str>) -> Result<KeySet, JwksError> {
        match self {
            KeySource::File(keys) => Ok(keys.clone()),
            KeySource::Url(url) => url.current(want_kid).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn symmetric_keys_are_refused_outright() {
        let jwks = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]}"#;
        assert!(matches!(KeySet::parse(jwks), Err(JwksError::Symmetric)));
    }

    #[test]
    fn a_key_serves_only_its_own_algorithms_and_kid() {
        let jwks = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let set = KeySet::parse(jwks).unwrap();
        assert_eq!(set.candidates(Some("ed"), Algorithm::EdDSA).len(), 1);
        assert_eq!(set.candidates(None, Algorithm::EdDSA).len(), 1);
        assert!(set.candidates(Some("other"), Algorithm::EdDSA).is_empty());
        assert!(set.candidates(Some("ed"), Algorithm::RS256).is_empty());
        assert!(set.candidates(Some("ed"), Algorithm::HS256).is_empty());
    }
}
