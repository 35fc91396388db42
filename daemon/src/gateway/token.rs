//! Workload identity tokens: JWTs (Kubernetes projected service-account
//! tokens, SPIFFE JWT-SVIDs, CI OIDC tokens such as GitHub Actions') from
//! configured issuers, verified against their JWKS.
//!
//! What is checked, in order, each with its own error:
//! * the header's `alg` is an asymmetric signature (RS*, PS*, ES256/384,
//!   EdDSA). `none`, and HS* (an HMAC, where an RSA public key could be
//!   used as the shared secret), are refused before any key is touched;
//! * `iss` (read unverified only to pick the issuer) is a configured
//!   issuer's, exactly;
//! * a key of that issuer's JWKS with the token's `kid` (or any, without
//!   one) that allows that `alg` verifies the signature (`jwks`; a key's
//!   type must fit the algorithm, so no cross-family confusion);
//! * `aud` contains this gateway's audience for the issuer (a token minted
//!   for another gateway or service is refused);
//! * `exp` is present and not past, `nbf` and `iat` not in the future, each
//!   with the configured clock skew; and `exp - iat` (or `exp - now`) is at
//!   most `max_token_lifetime_secs`: a long-lived token is a static secret;
//! * `sub` is present; for a SPIFFE issuer it is a SPIFFE ID in its trust
//!   domain.
//!
//! The token itself is a bearer secret: it is held in a `Secret`, and only
//! its issuer, subject and fingerprint leave this module.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::{
    jwks::{JwksError, KeySet, KeySource, UrlKeys},
    svid,
};
use crate::{config::GatewayConfig, secret::Secret};

/// The algorithms a token may be signed with.
pub const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was not accepted. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT (three base64url parts)")]
    NotAJwt,
    #[error(
        "the token's header cannot be read or names an algorithm warrant refuses (such as \"none\"): {0}"
    )]
    Header(String),
    #[error(
        "the token is signed with {0:?}; only asymmetric signatures (RS*, PS*, ES256, ES384, EdDSA) from a configured issuer's JWKS are accepted"
    )]
    Algorithm(Algorithm),
    #[error("the token's payload is not a JSON object")]
    Payload,
    #[error("the token's issuer {0:?} is not a configured [[gateway.issuer]]")]
    UnknownIssuer(String),
    #[error("no key of issuer {issuer:?} has kid {kid:?} and allows {alg:?}")]
    NoKey {
        issuer: String,
        /// The token's kid; empty when it names none.
        kid: String,
        alg: Algorithm,
    },
    #[error("the keys of issuer {issuer:?} are not available: {source}")]
    Keys {
        issuer: String,
        #[source]
        source: JwksError,
    },
    #[error("the token's signature does not verify with issuer {0:?}'s keys")]
    BadSignature(String),
    #[error("the token is for audience {got}, not this gateway's {expected:?}")]
    Audience { got: String, expected: String },
    #[error(
        "the token has no exp: tokens must expire (a token that never does is a static secret)"
    )]
    NoExpiry,
    #[error("the token expired {0} s ago")]
    Expired(i64),
    #[error("the token is not valid before {0} s from now (nbf)")]
    NotYetValid(i64),
    #[error("the token was issued {0} s in the future (iat)")]
    IssuedInTheFuture(i64),
    #[error(
        "the token is valid for {lifetime} s; at most {max} s is accepted (a long-lived token is a static secret)"
    )]
    TooLong { lifetime: i64, max: u64 },
    #[error("the token has no sub")]
    NoSubject,
    #[error("the token's sub is not a SPIFFE ID of trust domain {domain:?}: {source}")]
    Spiffe {
        domain: String,
        #[source]
        source: svid::BadSpiffeId,
    },
}

/// An issuer whose keys cannot be loaded (at start or reload).
#[derive(Debug, thiserror::Error)]
#[error("[[gateway.issuer]] {issuer:?}: {source}")]
pub struct IssuerError {
    issuer: String,
    #[source]
    source: JwksError,
}

/// A verified token: what identifies the caller and what the audit line
/// shows (never the token).
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    /// `secret::fingerprint` of the token.
    pub fingerprint: String,
    pub expires_at: i64,
    /// The JWT-SVID's SPIFFE ID (its sub), for a SPIFFE issuer.
    pub spiffe_id: Option<String>,
    pub claims: Map<String, Value>,
}

/// One `[[gateway.issuer]]`, compiled.
pub struct Issuer {
    pub name: String,
    pub audience: String,
    pub keys: KeySource,
    pub spiffe_trust_domain: Option<String>,
}

/// Every configured issuer and the time rules.
pub struct Issuers {
    pub issuers: Vec<Issuer>,
    pub skew_secs: u64,
    pub max_lifetime_secs: u64,
}

impl Issuers {
    /// The issuers of `[gateway]`: JWKS files read now, URLs fetched when
    /// the first token of the issuer comes.
    pub fn from_config(gateway: &GatewayConfig) -> Result<Issuers, IssuerError> {
        let mut issuers = Vec::new();
        for config in &gateway.issuers {
            let name = config.issuer.get_ref().clone();
            let failed = |source| IssuerError {
                issuer: name.clone(),
                source,
            };
            let keys = match (&config.jwks_file, &config.jwks_url) {
                (Some(path), _) => KeySource::File(KeySet::load(path.get_ref()).map_err(failed)?),
                (None, Some(url)) => KeySource::Url(Box::new(
                    UrlKeys::new(
                        url.get_ref().clone(),
                        Duration::from_secs(config.jwks_refresh_secs),
                    )
                    .map_err(failed)?,
                )),
                // Config::parse refuses an issuer without keys.
                (None, None) => return Err(failed(JwksError::Empty)),
            };
            issuers.push(Issuer {
                audience: config
                    .audience
                    .clone()
                    .unwrap_or_else(|| gateway.name.get_ref().clone()),
                name,
                keys,
                spiffe_trust_domain: config.spiffe_trust_domain.clone(),
            });
        }
        Ok(Issuers {
            issuers,
            skew_secs: gateway.clock_skew_secs,
            max_lifetime_secs: gateway.max_token_lifetime_secs,
        })
    }

    /// Whether any issuer is configured (else tokens are not served).
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Verifies `token` at `now` (unix seconds).
    pub async fn verify(&self, token: &Secret, now: i64) -> Result<VerifiedToken, TokenError> {
        let text = token.expose();
        if text.split('.').count() != 3 {
            return Err(TokenError::NotAJwt);
        }
        let header =
            jsonwebtoken::decode_header(text).map_err(|e| TokenError::Header(e.to_string()))?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let claimed_issuer = unverified_issuer(text)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.name == claimed_issuer)
            .ok_or_else(|| TokenError::UnknownIssuer(claimed_issuer.clone()))?;
        let keys = issuer
            .keys
            .current(header.kid.as_deref())
            .await
            .map_err(|source| TokenError::Keys {
                issuer: issuer.name.clone(),
                source,
            })?;
        let candidates = keys.candidates(header.kid.as_deref(), header.alg);
        if candidates.is_empty() {
            return Err(TokenError::NoKey {
                issuer: issuer.name.clone(),
                kid: header.kid.unwrap_or_default(),
                alg: header.alg,
            });
        }
        let claims = verify_signature(text, header.alg, &candidates, &issuer.name)?;
        let verified = self.check_claims(issuer, claims, now)?;
        Ok(VerifiedToken {
            fingerprint: token.fingerprint(),
            ..verified
        })
    }

    fn check_claims(
        &self,
        issuer: &Issuer,
        claims: Map<String, Value>,
        now: i64,
    ) -> Result<VerifiedToken, TokenError> {
        // The signature covered `iss`, which picked this issuer: checked
        // again on the verified claims all the same.
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.name.as_str()) {
            return Err(TokenError::UnknownIssuer(
                claims
                    .get("iss")
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ));
        }
        check_audience(claims.get("aud"), &issuer.audience)?;
        let expires_at = self.check_times(&claims, now)?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::NoSubject)?
            .to_owned();
        let spiffe_id = match &issuer.spiffe_trust_domain {
            Some(domain) => Some(svid::parse_spiffe_id(&subject, domain).map_err(|source| {
                TokenError::Spiffe {
                    domain: domain.clone(),
                    source,
                }
            })?),
            None => None,
        };
        Ok(VerifiedToken {
            issuer: issuer.name.clone(),
            subject,
            fingerprint: String::new(),
            expires_at,
            spiffe_id,
            claims,
        })
    }

    /// exp, nbf, iat and the lifetime; returns exp.
    fn check_times(&self, claims: &Map<String, Value>, now: i64) -> Result<i64, TokenError> {
        let skew = self.skew_secs as i64;
        let number = |name: &str| claims.get(name).and_then(Value::as_i64);
        let exp = number("exp").ok_or(TokenError::NoExpiry)?;
        if now > exp + skew {
            return Err(TokenError::Expired(now - exp));
        }
        if let Some(nbf) = number("nbf")
            && nbf > now + skew
        {
            return Err(TokenError::NotYetValid(nbf - now));
        }
        let iat = number("iat");
        if let Some(iat) = iat
            && iat > now + skew
        {
            return Err(TokenError::IssuedInTheFuture(iat - now));
        }
        let lifetime = exp - iat.unwrap_or(now);
        if lifetime > self.max_lifetime_secs as i64 {
            return Err(TokenError::TooLong {
                lifetime,
                max: self.max_lifetime_secs,
            });
        }
        Ok(exp)
    }
}

/// The `iss` of a token whose signature is not checked yet: only to pick
/// which issuer's keys check it.
fn unverified_issuer(token: &str) -> Result<String, TokenError> {
    use base64::Engine;
    let payload = token.split('.').nth(1).ok_or(TokenError::NotAJwt)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::NotAJwt)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Payload)?;
    claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| TokenError::UnknownIssuer(String::new()))
}

/// The claims, once one of `keys` verifies the signature.
fn verify_signature(
    token: &str,
    alg: Algorithm,
    keys: &[&jsonwebtoken::DecodingKey],
    issuer: &str,
) -> Result<Map<String, Value>, TokenError> {
    // Only the signature: the claims are checked by `check_claims`, typed,
    // against the gateway's clock.
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {}
            Err(e) => {
                tracing::debug!(error = %e, "token refused by a candidate key");
            }
        }
    }
    Err(TokenError::BadSignature(issuer.to_owned()))
}

/// `aud` (a string or an array of strings) must name `expected`.
fn check_audience(aud: Option<&Value>, expected: &str) -> Result<(), TokenError> {
    let ok = match aud {
        Some(Value::String(one)) => one == expected,
        Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(expected)),
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(TokenError::Audience {
        got: aud.map_or_else(|| "none".to_owned(), ToString::to_string),
        expected: expected.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// An ES256 issuer: its JWKS (kid "k1") and its signing key.
    fn issuer() -> (Issuers, EncodingKey) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        // The public point, uncompressed: 0x04 || x || y.
        let point = key.public_key_raw();
        let b64 = |b: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
        let set = KeySet::parse(jwks.to_string().as_bytes()).unwrap();
        let issuers = Issuers {
            issuers: vec![Issuer {
                name: "https://k8s".into(),
                audience: "gw".into(),
                keys: KeySource::File(set),
                spiffe_trust_domain: None,
            }],
            skew_secs: 30,
            max_lifetime_secs: 3600,
        };
        (issuers, encoding)
    }

    fn sign(key: &EncodingKey, kid: Option<&str>, claims: Value) -> Secret {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        Secret::new(jsonwebtoken::encode(&header, &claims, key).unwrap())
    }

    fn claims() -> Value {
        json!({"iss": "https://k8s", "aud": ["gw"], "sub": "system:serviceaccount:a:b",
            "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600})
    }

    fn with(change: &[(&str, Value)]) -> Value {
        let mut c = claims();
        for (k, v) in change {
            c[*k] = v.clone();
        }
        c
    }

    #[tokio::test]
    async fn a_good_token_names_its_issuer_subject_and_fingerprint() {
        let (issuers, key) = issuer();
        let token = sign(&key, Some("k1"), claims());
        let verified = issuers.verify(&token, NOW).await.unwrap();
        assert_eq!(verified.subject, "system:serviceaccount:a:b");
        assert_eq!(verified.fingerprint, token.fingerprint());
        assert!(!verified.fingerprint.contains(token.expose()));
    }

    #[tokio::test]
    async fn each_bad_claim_is_refused_with_its_own_error() {
        let (issuers, key) = issuer();
        let cases = [
            (with(&[("exp", json!(NOW - 31))]), "expired"),
            (with(&[("aud", json!("other"))]), "audience"),
            (with(&[("iss", json!("https://evil"))]), "not a configured"),
            (with(&[("nbf", json!(NOW + 120))]), "not valid before"),
            (with(&[("iat", json!(NOW - 7200))]), "at most 3600"),
            (with(&[("sub", json!(""))]), "no sub"),
        ];
        for (claims, why) in cases {
            let token = sign(&key, Some("k1"), claims);
            let error = issuers.verify(&token, NOW).await.unwrap_err().to_string();
            assert!(error.contains(why), "{why}: {error}");
        }
        // Within the skew: accepted.
        let token = sign(&key, Some("k1"), with(&[("exp", json!(NOW - 29))]));
        assert!(issuers.verify(&token, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn alg_confusion_and_unknown_keys_are_refused() {
        let (issuers, key) = issuer();
        let unknown = sign(&key, Some("k2"), claims());
        let error = issuers.verify(&unknown, NOW).await.unwrap_err();
        assert!(matches!(error, TokenError::NoKey { .. }), "{error}");
        // HS256 whose secret is the public key's bytes: refused before any
        // key is looked at.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"public key bytes"),
        )
        .unwrap();
        let error = issuers.verify(&Secret::new(hs), NOW).await.unwrap_err();
        assert!(
            matches!(error, TokenError::Algorithm(Algorithm::HS256)),
            "{error}"
        );
        // alg "none", unsigned.
        use base64::Engine;
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
        let error = issuers.verify(&Secret::new(none), NOW).await.unwrap_err();
        assert!(matches!(error, TokenError::Header(_)), "{error}");
        // Another key's signature under the right kid.
        let (_, other) = issuer();
        let forged = sign(&other, Some("k1"), claims());
        let error = issuers.verify(&forged, NOW).await.unwrap_err();
        assert!(matches!(error, TokenError::BadSignature(_)), "{error}");
    }
}
