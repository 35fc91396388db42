//! The statement a node signs for each request it forwards: who made the
//! request on the node (the workload it matched, the attested process, the
//! instance) and which request it is, bound so that it is good for that one
//! request, once, at one gateway, for a short while.
//!
//! The binding: method, authority (the upstream host), path and query as
//! forwarded, the SHA-256 of the body as forwarded, the gateway's name
//! (`aud`), the time it was signed (`iat`) and a random nonce. The gateway
//! accepts a statement only over a TLS connection authenticated by the key
//! that signed it (`verify` takes the connection's key, never one named by
//! the statement), at most `max_age` old, not from the future beyond the
//! allowed skew, and whose nonce it has not seen (`replay`): a statement
//! copied off the wire is useless without the node's key, and one replayed
//! by the node itself, or sent to another gateway, is refused.
//!
//! Encoding is JWS compact serialization with EdDSA (Ed25519, the host key
//! of `attest::instance::host`), by `jsonwebtoken`; the checks after the
//! signature are ours, typed, against an injectable clock.

use std::collections::BTreeMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::attest::instance::Evidence;

/// The request header that carries the statement from node to gateway.
pub const STATEMENT_HEADER: &str = "warrant-statement";
/// The JWS `typ`: a statement is not a token of any other kind.
const TYP: &str = "warrant-statement+jwt";
/// The version of the claims below.
pub const VERSION: u32 = 1;

/// Which request a statement is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub method: String,
    /// The upstream host, lower case, without a port.
    pub authority: String,
    /// Path and query, exactly as forwarded.
    pub path: String,
    /// SHA-256 of the body as forwarded, hex.
    pub body_sha256: String,
}

impl Binding {
    /// The hash a binding names for `body`.
    pub fn hash_body(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }
}

/// The attested process on the node, as its attestation and workload match
/// established it (`attest`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub exe: String,
    pub exe_sha256: Option<String>,
    pub entrypoint: Option<String>,
    pub entrypoint_sha256: Option<String>,
    /// "host" or "nested:<inode>".
    pub user_namespace: String,
    /// Why the node's rules do not let the program's identity be believed
    /// for its workload (`WorkloadMatcher::program_refusal`); None when
    /// they do. The gateway's exe and hash selectors refuse when set.
    pub program_refusal: Option<String>,
}

/// The node's instance identity when it attested the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceFacts {
    pub provider: Option<String>,
    /// Whether the node verified the claims (a cloud document's signature).
    pub verified: bool,
    pub claims: BTreeMap<String, String>,
    /// The cloud's signed document or token the claims came from, for a
    /// gateway that enrolls nodes by their instance (`gateway::enroll`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// The signed claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub v: u32,
    /// The gateway's name (`[gateway] name`).
    pub aud: String,
    /// Unix seconds when it was signed.
    pub iat: i64,
    /// 16 random bytes, base64url.
    pub nonce: String,
    pub req: Binding,
    /// The node's `[[workload]]` the process matched.
    pub workload: String,
    pub process: ProcessFacts,
    pub instance: InstanceFacts,
}

/// Why a statement was not accepted. Names what failed, never a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatementError {
    #[error("the node statement is not a JWS signed with EdDSA: {0}")]
    Malformed(String),
    #[error("the node statement's signature does not verify with the key of this connection")]
    BadSignature,
    #[error("the node statement is version {0}; this gateway reads version {VERSION}")]
    Version(u32),
    #[error("the node statement is for gateway {got:?}, this is {expected:?}")]
    Audience { got: String, expected: String },
    #[error(
        "the node statement is {age} s old (at most {max} s is accepted): held back or replayed"
    )]
    TooOld { age: i64, max: u64 },
    #[error("the node statement is dated {ahead} s in the future (clock skew allowed: {skew} s)")]
    FromTheFuture { ahead: i64, skew: u64 },
    #[error("the node statement is for {what} {signed:?}, but the request has {got:?}: tampered")]
    Mismatch {
        what: &'static str,
        signed: String,
        got: String,
    },
    #[error("the node statement's nonce is missing or malformed")]
    Nonce,
    #[error(
        "the node statement was signed before this gateway started, and its replay cache (in memory) started empty: sign a new one"
    )]
    BeforeStart,
}

/// A statement, signed by the node (Ed25519 PKCS#8 `key_der`).
pub fn sign(statement: &Statement, key_der: &[u8], key_id: &str) -> Result<String, StatementError> {
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(TYP.to_owned());
    header.kid = Some(key_id.to_owned());
    jsonwebtoken::encode(&header, statement, &EncodingKey::from_ed_der(key_der))
        .map_err(|e| StatementError::Malformed(e.to_string()))
}

/// A fresh statement's nonce: 16 random bytes, base64url.
pub fn new_nonce() -> Result<String, StatementError> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StatementError::Nonce)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the gateway holds a statement to.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// This gateway's name.
    pub audience: &'a str,
    /// The raw Ed25519 public key of the TLS connection the statement came
    /// over: the only key it may be signed with.
    pub connection_key: &'a [u8; 32],
    pub now: i64,
    pub max_age_secs: u64,
    pub skew_secs: u64,
}

/// Verifies `jws` as a statement signed by `expected.connection_key`, for
/// this gateway, fresh, and returns it. The binding to the request is
/// checked by [`check_binding`] (the body hash once the body is read); the
/// nonce by the replay cache.
pub fn verify(jws: &str, expected: &Expected<'_>) -> Result<Statement, StatementError> {
    let header =
        jsonwebtoken::decode_header(jws).map_err(|e| StatementError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(StatementError::Malformed(format!(
            "alg {:?}, expected EdDSA",
            header.alg
        )));
    }
    if header.typ.as_deref() != Some(TYP) {
        return Err(StatementError::Malformed(format!(
            "typ {:?}, expected {TYP:?}",
            header.typ
        )));
    }
    // Time, audience and the rest are checked below, typed, against the
    // gateway's clock: the crate checks only the signature.
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let key = DecodingKey::from_ed_der(expected.connection_key);
    let data =
        jsonwebtoken::decode::<Statement>(jws, &key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => StatementError::BadSignature,
            _ => StatementError::Malformed(e.to_string()),
        })?;
    let statement = data.claims;
    if statement.v != VERSION {
        return Err(StatementError::Version(statement.v));
    }
    if statement.aud != expected.audience {
        return Err(StatementError::Audience {
            got: statement.aud,
            expected: expected.audience.to_owned(),
        });
    }
    let age = expected.now - statement.iat;
    if age > expected.max_age_secs as i64 {
        return Err(StatementError::TooOld {
            age,
            max: expected.max_age_secs,
        });
    }
    if -age > expected.skew_secs as i64 {
        return Err(StatementError::FromTheFuture {
            ahead: -age,
            skew: expected.skew_secs,
        });
    }
    if statement.nonce.len() < 16 || statement.nonce.len() > 64 {
        return Err(StatementError::Nonce);
    }
    Ok(statement)
}

/// Whether the request head is the one the statement binds (the body hash
/// is compared once the body is read: [`check_body`]).
pub fn check_binding(
    statement: &Statement,
    method: &str,
    authority: &str,
    path: &str,
) -> Result<(), StatementError> {
    let req = &statement.req;
    let fields = [
        ("method", &req.method, method),
        ("authority", &req.authority, authority),
        ("path", &req.path, path),
    ];
    for (what, signed, got) in fields {
        if signed != got {
            return Err(StatementError::Mismatch {
                what,
                signed: signed.clone(),
                got: got.to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether `body` is the body the statement binds.
pub fn check_body(statement: &Statement, body: &[u8]) -> Result<(), StatementError> {
    let got = Binding::hash_body(body);
    if got != statement.req.body_sha256 {
        return Err(StatementError::Mismatch {
            what: "body SHA-256",
            signed: statement.req.body_sha256.clone(),
            got,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    fn key() -> (Vec<u8>, [u8; 32]) {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        (der.as_ref().to_vec(), public)
    }

    fn statement(iat: i64) -> Statement {
        Statement {
            v: VERSION,
            aud: "gw.example:8443".into(),
            iat,
            nonce: new_nonce().unwrap(),
            req: Binding {
                method: "POST".into(),
                authority: "api.openai.com".into(),
                path: "/v1/chat/completions".into(),
                body_sha256: Binding::hash_body(b"{}"),
            },
            workload: "agents".into(),
            process: ProcessFacts::default(),
            instance: InstanceFacts::default(),
        }
    }

    fn expected<'a>(key: &'a [u8; 32], now: i64) -> Expected<'a> {
        Expected {
            audience: "gw.example:8443",
            connection_key: key,
            now,
            max_age_secs: 30,
            skew_secs: 5,
        }
    }

    #[test]
    fn a_statement_verifies_with_the_connection_key_only() {
        let (der, public) = key();
        let (_, other) = key();
        let jws = sign(&statement(1000), &der, "k").unwrap();
        let got = verify(&jws, &expected(&public, 1010)).unwrap();
        assert_eq!(got.workload, "agents");
        assert_eq!(
            verify(&jws, &expected(&other, 1010)),
            Err(StatementError::BadSignature)
        );
    }

    #[test]
    fn tampered_claims_break_the_signature() {
        use base64::Engine;
        let (der, public) = key();
        let jws = sign(&statement(1000), &der, "k").unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["workload"] = "admins".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            verify(&forged, &expected(&public, 1010)),
            Err(StatementError::BadSignature)
        );
    }

    #[test]
    fn other_algorithms_and_types_are_refused_before_any_key_is_used() {
        let (_, public) = key();
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &statement(1000),
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert!(matches!(
            verify(&hs, &expected(&public, 1010)),
            Err(StatementError::Malformed(m)) if m.contains("HS256")
        ));
        let none = "eyJhbGciOiJub25lIn0.e30.";
        assert!(matches!(
            verify(none, &expected(&public, 1010)),
            Err(StatementError::Malformed(_))
        ));
    }

    #[test]
    fn old_future_and_foreign_statements_are_refused() {
        let (der, public) = key();
        let jws = sign(&statement(1000), &der, "k").unwrap();
        assert_eq!(
            verify(&jws, &expected(&public, 1031)),
            Err(StatementError::TooOld { age: 31, max: 30 })
        );
        assert_eq!(
            verify(&jws, &expected(&public, 994)),
            Err(StatementError::FromTheFuture { ahead: 6, skew: 5 })
        );
        let mut other = expected(&public, 1000);
        other.audience = "gw.other:8443";
        assert!(matches!(
            verify(&jws, &other),
            Err(StatementError::Audience { .. })
        ));
    }

    #[test]
    fn the_request_must_be_the_one_bound() {
        let s = statement(1000);
        assert!(check_binding(&s, "POST", "api.openai.com", "/v1/chat/completions").is_ok());
        let err = check_binding(&s, "POST", "api.openai.com", "/v1/embeddings").unwrap_err();
        assert!(err.to_string().contains("tampered"), "{err}");
        assert!(check_binding(&s, "GET", "api.openai.com", "/v1/chat/completions").is_err());
        assert!(check_binding(&s, "POST", "evil.example", "/v1/chat/completions").is_err());
        assert!(check_body(&s, b"{}").is_ok());
        assert!(check_body(&s, b"{\"model\":\"o1\"}").is_err());
    }
}
