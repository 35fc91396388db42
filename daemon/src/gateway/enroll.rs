//! Nodes enrolled by their cloud instance identity (`[[gateway.enroll]]`)
//! rather than by their key (`[[gateway.node]]`).
//!
//! A node's statement carries the evidence its `[instance]` provider
//! fetched (`attest::instance::Evidence`): the signed document or token,
//! exactly as the metadata service served it. The gateway verifies it with
//! the very functions the provider uses on its own host (`attest::
//! instance::{gcp, aws, azure}`), against trust configured here, then
//! checks three things the host need not:
//!
//! * **scope**: the project (gcp), account (aws) or subscription (azure)
//!   is one this gateway enrolls; a signature of Google, AWS or Microsoft
//!   alone would admit every instance in that cloud;
//! * **binding to the connection's key**: a gcp token must be for the
//!   audience `warrant-node:ed25519:<key>` and an azure document must carry
//!   the nonce derived from the key (`attest::instance::{node_audience,
//!   node_nonce}`), where the key is the one that authenticated the TLS
//!   connection and signed the statement. Evidence lifted from one node is
//!   refused with any other key. An AWS instance identity document names
//!   neither a key nor a nonce, and an azure nonce has 33 bits: for those
//!   the gateway pins the first key to enroll as the instance (`pins`,
//!   with the launch this returns: the AWS document's `pendingTime`);
//! * **freshness**: a gcp token's `iat` and an azure document's
//!   `createdOn` at most `max_age_secs` old (an AWS document has no time of
//!   signing).
//!
//! A verification says how long it may be reused (`valid_until`, for the
//! gateway's `cache`): `max_age_secs` from when the evidence was made (from
//! now for an AWS document), never past a gcp token's `exp`.
//!
//! The node is then named "<provider>:<scope>/<instance id>", which
//! workloads' `nodes` globs select, and the verified claims replace those
//! the node asserted for the gateway's policy.

use std::collections::BTreeMap;

use super::statement::InstanceFacts;
use crate::{
    attest::instance::{
        Evidence, InstanceError, aws, azure, gcp, load_pem_certs, node_audience, node_nonce,
    },
    config::{EnrollConfig, GatewayConfig},
};

/// Why `[[gateway.enroll]]` cannot be used as configured.
#[derive(Debug, thiserror::Error)]
#[error("[[gateway.enroll]] provider {provider:?}: {source}")]
pub struct EnrollConfigError {
    provider: String,
    #[source]
    source: InstanceError,
}

/// Why a node's instance evidence does not enroll it. Names what failed,
/// never the evidence.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "its statement carries no instance evidence (the node's [instance] provider is not a cloud's, or has not fetched it)"
    )]
    NoEvidence,
    #[error("this gateway enrolls no {0} instances (no [[gateway.enroll]] for it)")]
    NoRule(&'static str),
    #[error("its {provider} instance evidence does not verify: {source}")]
    Refused {
        provider: &'static str,
        #[source]
        source: InstanceError,
    },
    #[error("its {provider} instance is in {what} {got:?}, which this gateway does not enroll")]
    OutOfScope {
        provider: &'static str,
        what: &'static str,
        got: String,
    },
    #[error(
        "its {provider} instance evidence is {age} s old (at most {max} s is accepted): the node's metadata refresh is failing, or the evidence was lifted"
    )]
    Stale {
        provider: &'static str,
        age: i64,
        max: u64,
    },
    #[error("its {provider} instance evidence is dated {ahead} s in the future")]
    FromTheFuture { provider: &'static str, ahead: i64 },
    #[error("its {0} instance evidence does not say when it was made")]
    Undated(&'static str),
    #[error("its {provider} instance evidence names no {claim}")]
    NoClaim {
        provider: &'static str,
        claim: &'static str,
    },
}

/// A node the gateway enrolled by its instance: its name and the facts the
/// gateway verified.
#[derive(Debug, Clone)]
pub struct EnrolledInstance {
    pub name: String,
    pub facts: InstanceFacts,
    /// For evidence that binds the key weakly or not at all (aws, azure):
    /// the launch to pin the key for (`pins`; 0 when the evidence has no
    /// launch time). None: the evidence binds the key itself (gcp).
    pub launch: Option<i64>,
    /// Until when (unix seconds) this verification may be reused
    /// (`cache`): never past the evidence's freshness window or expiry.
    pub valid_until: i64,
}

enum Trust {
    Gcp(gcp::Jwks),
    Aws(Vec<Vec<u8>>),
    Azure(Vec<Vec<u8>>),
}

struct Rule {
    trust: Trust,
    scope: Vec<String>,
    max_age_secs: u64,
}

/// The compiled `[[gateway.enroll]]` rules, with their trust read.
#[derive(Default)]
pub struct Enrollment {
    rules: Vec<Rule>,
}

impl Enrollment {
    /// Reads each rule's trust (Config::parse checked the keys).
    pub fn load(gateway: &GatewayConfig) -> Result<Enrollment, EnrollConfigError> {
        let rules = gateway
            .enroll
            .iter()
            .map(|rule| {
                Rule::load(rule).map_err(|source| EnrollConfigError {
                    provider: rule.provider.get_ref().clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Enrollment { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Enrolls the node whose connection (and statement) is signed by
    /// `key`, by `evidence`, at unix time `now` with `skew` allowed.
    pub fn verify(
        &self,
        evidence: Option<&Evidence>,
        key: &[u8; 32],
        now: i64,
        skew: u64,
    ) -> Result<EnrolledInstance, EnrollError> {
        let evidence = evidence.ok_or(EnrollError::NoEvidence)?;
        let provider = evidence.provider();
        let rule = self
            .rules
            .iter()
            .find(|r| r.provider() == provider)
            .ok_or(EnrollError::NoRule(provider))?;
        let checked = rule.check(evidence, key, now)?;
        rule.check_age(provider, checked.issued_at, now, skew)?;
        let (scope_claim, id_claim) = rule.claims();
        let claims = checked.claims;
        let claim = |claim: &'static str| {
            claims
                .get(claim)
                .cloned()
                .ok_or(EnrollError::NoClaim { provider, claim })
        };
        let (scope, id) = (claim(scope_claim)?, claim(id_claim)?);
        if !rule.scope.contains(&scope) {
            return Err(EnrollError::OutOfScope {
                provider,
                what: scope_claim,
                got: scope,
            });
        }
        Ok(EnrolledInstance {
            name: format!("{provider}:{scope}/{id}"),
            facts: verified_facts(provider, claims),
            launch: checked.launch,
            valid_until: rule.valid_until(checked.issued_at, checked.expires_at, now),
        })
    }
}

/// What a provider's evidence said, once its signature and binding held.
struct Checked {
    claims: BTreeMap<String, String>,
    issued_at: Option<u64>,
    expires_at: Option<i64>,
    launch: Option<i64>,
}

/// The time an AWS document's launch began (`pendingTime`), which its pin
/// records (`pins`).
#[derive(serde::Deserialize)]
struct Launch {
    #[serde(rename = "pendingTime")]
    pending_time: Option<String>,
}

fn aws_launch(document: &str) -> Result<i64, EnrollError> {
    serde_json::from_str::<Launch>(document)
        .ok()
        .and_then(|launch| launch.pending_time)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_second())
        .ok_or(EnrollError::NoClaim {
            provider: "aws",
            claim: "pendingTime",
        })
}

/// The `exp` of a gcp token whose signature `gcp::verify_token` checked.
fn token_expiry(token: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: i64,
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // Checked already, by `gcp::verify_token`: only the claim is read here.
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Exp>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(&[]),
        &validation,
    )
    .ok()
    .map(|t| t.claims.exp)
}

/// The facts the gateway's policy reads for an enrolled instance: only
/// what the signed evidence says (no `environment` from the node's file).
fn verified_facts(provider: &str, claims: BTreeMap<String, String>) -> InstanceFacts {
    InstanceFacts {
        provider: Some(provider.to_owned()),
        verified: true,
        claims,
        evidence: None,
    }
}

impl Rule {
    /// The evidence's signature, and its binding to `key`, against this
    /// rule's trust.
    fn check(&self, evidence: &Evidence, key: &[u8; 32], now: i64) -> Result<Checked, EnrollError> {
        let provider = evidence.provider();
        let refused = |source| EnrollError::Refused { provider, source };
        Ok(match (&self.trust, evidence) {
            (Trust::Gcp(jwks), Evidence::GcpToken { token }) => {
                let unix = u64::try_from(now).unwrap_or(0);
                let identity = gcp::verify_token(token, &node_audience(key), Some(jwks), unix)
                    .map_err(refused)?;
                Checked {
                    claims: identity.claims,
                    issued_at: identity.issued_at,
                    expires_at: token_expiry(token),
                    launch: None,
                }
            }
            (
                Trust::Aws(trust),
                Evidence::AwsDocument {
                    document,
                    signature,
                },
            ) => {
                aws::verify_document(document.as_bytes(), signature.as_bytes(), trust)
                    .map_err(refused)?;
                Checked {
                    claims: aws::claims_of(document.as_bytes()).map_err(refused)?,
                    issued_at: None,
                    expires_at: None,
                    launch: Some(aws_launch(document)?),
                }
            }
            (Trust::Azure(trust), Evidence::AzureAttested { document }) => {
                let attested =
                    azure::verify_attested_document(document.as_bytes(), &node_nonce(key), trust)
                        .map_err(refused)?;
                Checked {
                    claims: attested.claims,
                    issued_at: attested.created_on,
                    expires_at: None,
                    // 33 bits of nonce: pinned too, with no launch time.
                    launch: Some(0),
                }
            }
            _ => return Err(EnrollError::NoRule(provider)),
        })
    }

    /// How long a verification may be reused: `max_age_secs` from when the
    /// evidence was made (or, for an undated AWS document, from now), and
    /// never past its expiry.
    fn valid_until(&self, issued_at: Option<u64>, expires_at: Option<i64>, now: i64) -> i64 {
        let max_age = i64::try_from(self.max_age_secs).unwrap_or(i64::MAX);
        let from = issued_at
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(now)
            .min(now);
        let fresh_until = from.saturating_add(max_age);
        expires_at.map_or(fresh_until, |exp| fresh_until.min(exp))
    }

    fn load(config: &EnrollConfig) -> Result<Rule, InstanceError> {
        let missing = |key: &str| InstanceError::Config(format!("needs {key}"));
        let trust_file = || {
            config
                .trust_file
                .as_ref()
                .map(|p| p.get_ref().clone())
                .ok_or_else(|| missing("trust_file"))
        };
        let (trust, scope) = match config.provider.get_ref().as_str() {
            "gcp" => {
                let jwks = config
                    .jwks_file
                    .as_ref()
                    .ok_or_else(|| missing("jwks_file"))?;
                (
                    Trust::Gcp(gcp::Jwks::load(jwks.get_ref())?),
                    &config.projects,
                )
            }
            "aws" => (
                Trust::Aws(load_pem_certs(&trust_file()?)?),
                &config.accounts,
            ),
            "azure" => (
                Trust::Azure(load_pem_certs(&trust_file()?)?),
                &config.subscriptions,
            ),
            other => {
                return Err(InstanceError::Config(format!("unknown provider {other:?}")));
            }
        };
        Ok(Rule {
            trust,
            scope: scope.clone(),
            max_age_secs: config.max_age_secs,
        })
    }

    fn provider(&self) -> &'static str {
        match self.trust {
            Trust::Gcp(_) => "gcp",
            Trust::Aws(_) => "aws",
            Trust::Azure(_) => "azure",
        }
    }

    /// The claim the scope is checked against, and the instance's id.
    fn claims(&self) -> (&'static str, &'static str) {
        match self.trust {
            Trust::Gcp(_) => ("project", "instance_id"),
            Trust::Aws(_) => ("account", "instance_id"),
            Trust::Azure(_) => ("subscription", "vm_id"),
        }
    }

    /// gcp and azure evidence must be recent; an AWS document has no time
    /// of signing to check.
    fn check_age(
        &self,
        provider: &'static str,
        issued_at: Option<u64>,
        now: i64,
        skew: u64,
    ) -> Result<(), EnrollError> {
        if matches!(self.trust, Trust::Aws(_)) {
            return Ok(());
        }
        let issued_at = issued_at.ok_or(EnrollError::Undated(provider))?;
        let age = now.saturating_sub(i64::try_from(issued_at).unwrap_or(i64::MAX));
        let skew = i64::try_from(skew).unwrap_or(i64::MAX);
        if age < -skew {
            return Err(EnrollError::FromTheFuture {
                provider,
                ahead: -age,
            });
        }
        if age > i64::try_from(self.max_age_secs).unwrap_or(i64::MAX) {
            return Err(EnrollError::Stale {
                provider,
                age,
                max: self.max_age_secs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_gcp_tokens_expiry_is_read_from_its_exp() {
        let pem = include_str!("../../tests/fixtures/cloud/gcp-service-account.pem");
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let claims = serde_json::json!({"iat": 1_000, "exp": 4_600, "aud": "x"});
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert_eq!(token_expiry(&token), Some(4_600));
        assert_eq!(token_expiry("not.a.jwt"), None);
    }

    #[test]
    fn a_verification_is_reused_no_longer_than_max_age_and_never_past_expiry() {
        let rule = Rule {
            trust: Trust::Aws(Vec::new()),
            scope: Vec::new(),
            max_age_secs: 900,
        };
        // max_age_secs from when the evidence was made...
        assert_eq!(rule.valid_until(Some(1_000), None, 1_100), 1_900);
        // ...never past its expiry...
        assert_eq!(rule.valid_until(Some(1_000), Some(1_500), 1_100), 1_500);
        // ...from now when it is undated (AWS) or dated ahead (skew).
        assert_eq!(rule.valid_until(None, None, 1_100), 2_000);
        assert_eq!(rule.valid_until(Some(1_200), None, 1_100), 2_000);
    }

    #[test]
    fn an_aws_documents_launch_is_its_pending_time() {
        let launch = aws_launch(r#"{"pendingTime":"2026-11-26T12:00:00Z"}"#).unwrap();
        assert_eq!(launch, 1_795_694_400);
        let error = aws_launch(r#"{"instanceId":"i-1"}"#).unwrap_err();
        assert!(error.to_string().contains("pendingTime"), "{error}");
    }
}
