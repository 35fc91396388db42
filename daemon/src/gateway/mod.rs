//! Gateway mode: one warrant (`warrant gateway`) holds the credentials for
//! many hosts; the hosts' daemons (nodes, `[forward]`) hold none.
//!
//! A node redirects, attests and applies its own policy as ever, then
//! forwards each request to the gateway over mTLS with its host key, with a
//! statement signed by that key and bound to the request (`statement`). The
//! gateway authenticates the connection by the key (`peer`), looks the key
//! up among the enrolled nodes (or, for a key it does not know, enrolls the
//! node by the cloud instance evidence in its statement, `enroll`, the
//! verification reused while it is valid, `cache`, and the key pinned to
//! the instance where the evidence does not bind it, `pins`),
//! verifies the statement against that key and
//! the request, refuses a nonce it has seen (`replay`), names the gateway
//! workload the statement selects (`select`) and hands that identity to
//! the same request path as the host daemon's (`proxy`): policy, budgets,
//! credential, splice, forward, meter, audit.
//!
//! Agents without a node come with a short-lived JWT instead (`token`):
//! verified against its issuer's keys (`jwks`), audience and times, it
//! names the gateway workload by issuer, subject, claims or SPIFFE ID
//! (`select`), through the same phases. Or with an X.509-SVID as their
//! client certificate (`svid`), named by its SPIFFE ID.
//!
//! This module decides who a caller is (the node side signs, `node`; the
//! gateway side verifies, [`Verifier`]); it never touches a credential, a
//! socket or the request path, so that both ends are testable alone.

pub mod cache;
pub mod enroll;
pub mod jwks;
pub mod node;
pub mod peer;
pub mod pins;
pub mod replay;
pub mod select;
pub mod statement;
pub mod svid;
pub mod token;

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::StatusCode;

use crate::{attest::instance::Evidence, secret::Secret};
pub use cache::EvidenceCache;
pub use enroll::{EnrollConfigError, EnrollError, EnrolledInstance, Enrollment};
pub use node::{NodeKey, NodeKeyError};
pub use peer::{AnyClientCert, Peer, classify, node_certificate};
pub use pins::{
    FilePins, Held, PINS_FILE, Pin, PinEntry, PinError, PinRefusal, PinStore, RedisPins,
};
pub use replay::{MemoryNonces, NonceStore, RedisNonces, ReplayError};
pub use select::{Caller, RemoteWorkloads};
pub use statement::{
    Binding, InstanceFacts, ProcessFacts, STATEMENT_HEADER, Statement, StatementError,
};
pub use svid::{Svid, SvidConfigError, SvidVerifier};
pub use token::{IssuerError, Issuers, TokenError, VerifiedToken};

use crate::config::{Config, GatewayConfig, parse_node_key};

/// A caller the gateway verified: the enrolled node, its statement and the
/// gateway workload it selects.
#[derive(Debug, Clone)]
pub struct Verified {
    pub node: String,
    pub workload: String,
    pub statement: Statement,
    /// For a node enrolled by its cloud instance identity: the instance
    /// facts the gateway verified itself, which its policy reads instead
    /// of the statement's. None for a node enrolled by key.
    pub instance: Option<InstanceFacts>,
}

impl Verified {
    /// The instance facts the gateway's policy may read: its own
    /// verification's, else what the node asserted.
    pub fn instance(&self) -> &InstanceFacts {
        self.instance.as_ref().unwrap_or(&self.statement.instance)
    }
}

/// An agent the gateway verified by its token (or X.509-SVID, as a token
/// of its trust domain), and the gateway workload it selects.
#[derive(Debug, Clone)]
pub struct TokenCaller {
    pub workload: String,
    pub token: VerifiedToken,
}

/// Who vouched for a gateway caller.
#[derive(Debug, Clone)]
pub enum Remote {
    /// An enrolled node, by its signed statement.
    Node(Box<Verified>),
    /// The agent itself, by a token from a configured issuer.
    Token(TokenCaller),
}

impl Remote {
    /// The gateway workload the caller is.
    pub fn workload(&self) -> &str {
        match self {
            Remote::Node(v) => &v.workload,
            Remote::Token(t) => &t.workload,
        }
    }
}

/// Why the gateway's callers cannot be verified with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error(transparent)]
    Svid(#[from] SvidConfigError),
    #[error(transparent)]
    Enroll(#[from] EnrollConfigError),
}

/// Why the gateway does not believe an agent's token.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no token: send a JWT from a configured issuer in Proxy-Authorization (Bearer, or as the Basic password) or in the {0} header"
    )]
    NoToken(String),
    #[error("this gateway accepts no tokens (no [[gateway.issuer]])")]
    NoIssuers,
    #[error("{0}")]
    Certificate(String),
    #[error("the X.509-SVID {id:?} selects no gateway [[workload]]: {why}")]
    SvidNoWorkload { id: String, why: String },
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token of {issuer:?} subject {subject:?} selects no gateway [[workload]]: {why}")]
    NoWorkload {
        issuer: String,
        subject: String,
        why: String,
    },
}

impl AgentError {
    /// 401 when the agent brought no token (an SDK then says so), 503
    /// when its issuer's keys cannot be had, 403 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            AgentError::NoToken(_) => StatusCode::UNAUTHORIZED,
            AgentError::Token(TokenError::Keys { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// Why the gateway does not believe a caller. Each names what failed,
/// never a key or a credential.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error(
        "this gateway serves enrolled nodes only: the connection presented no client certificate"
    )]
    Anonymous,
    #[error("{0}")]
    Certificate(String),
    #[error(
        "unknown node: its key ed25519:{0} is not enrolled ([[gateway.node]] public_key on the gateway)"
    )]
    UnknownNode(String),
    #[error(
        "unknown node: its key ed25519:{key} is not enrolled, and its cloud instance identity does not enroll it: {source}"
    )]
    NotEnrolled {
        key: String,
        #[source]
        source: EnrollError,
    },
    #[error(transparent)]
    Pinned(#[from] PinRefusal),
    #[error("the request carries no {STATEMENT_HEADER} header (a node signs one for each request)")]
    NoStatement,
    #[error("node {node:?}: {source}")]
    Statement {
        node: String,
        #[source]
        source: StatementError,
    },
    #[error("node {0:?}: the node statement's nonce was already used: a replay")]
    Replayed(String),
    #[error(
        "node {node:?}: the replay cache cannot answer, so a replay cannot be ruled out: {source}"
    )]
    ReplayCache {
        node: String,
        #[source]
        source: ReplayError,
    },
    #[error("node {node:?}: no gateway [[workload]] accepts its statement: {why}")]
    NoWorkload { node: String, why: String },
}

impl CallerError {
    /// The HTTP status the refusal gets: 503 when the gateway cannot
    /// decide (its replay cache is down), 403 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            CallerError::ReplayCache { .. } | CallerError::Pinned(PinRefusal::Store { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// The request a statement must be bound to, as the gateway received it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub statement: Option<&'a str>,
    pub method: &'a str,
    /// The upstream host, lower case, without a port.
    pub authority: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

/// What the gateway remembers across configuration generations: the
/// replay cache and the enrollment pins.
#[derive(Clone)]
pub struct Stores {
    pub nonces: Arc<dyn NonceStore>,
    pub pins: Arc<dyn PinStore>,
    /// Statements signed before this (unix seconds) are refused: a replay
    /// cache in memory starts empty, so what was signed before it started
    /// cannot be checked against it.
    pub not_before: i64,
}

/// The gateway's side: enrolled nodes, the workloads their statements
/// select, the replay cache and the enrollment pins. Built from the
/// configuration; one per generation of it.
pub struct Verifier {
    audience: String,
    issuers: Issuers,
    svid: Option<SvidVerifier>,
    nodes: HashMap<[u8; 32], String>,
    enrollment: Enrollment,
    /// Evidence verified for this generation's enrollment rules.
    evidence: EvidenceCache,
    workloads: RemoteWorkloads,
    nonces: Arc<dyn NonceStore>,
    pins: Arc<dyn PinStore>,
    max_age_secs: u64,
    skew_secs: u64,
    not_before: i64,
}

impl Verifier {
    /// From a gateway's configuration (`config.gateway` must be set; None
    /// otherwise) and its compiled workloads. `stores` outlive reloads: a
    /// reload must not forget the nonces seen nor the pins made.
    pub fn new(
        config: &Config,
        workloads: RemoteWorkloads,
        stores: Stores,
    ) -> Result<Option<Verifier>, VerifierError> {
        let Some(gateway) = config.gateway.as_ref() else {
            return Ok(None);
        };
        let svid = match (&gateway.svid_bundle, &gateway.svid_trust_domain) {
            (Some(bundle), Some(domain)) => {
                Some(SvidVerifier::load(bundle.get_ref(), domain.get_ref())?)
            }
            _ => None,
        };
        Ok(Some(Verifier {
            audience: gateway.name.get_ref().clone(),
            issuers: Issuers::from_config(gateway)?,
            svid,
            nodes: enrolled(gateway),
            enrollment: Enrollment::load(gateway)?,
            evidence: EvidenceCache::default(),
            workloads,
            nonces: stores.nonces,
            pins: stores.pins,
            max_age_secs: gateway.max_statement_age_secs,
            skew_secs: gateway.clock_skew_secs,
            not_before: stores.not_before,
        }))
    }

    /// Who an agent with `token` (None: it sent none) is, at unix time
    /// `now`: a token of a configured issuer, verified, and the first
    /// workload that accepts it.
    pub async fn verify_token(
        &self,
        token: Option<&Secret>,
        token_header: &str,
        now: i64,
    ) -> Result<TokenCaller, AgentError> {
        if self.issuers.is_empty() {
            return Err(AgentError::NoIssuers);
        }
        let token = token.ok_or_else(|| AgentError::NoToken(token_header.to_owned()))?;
        let token = self.issuers.verify(token, now).await?;
        let workload = self
            .workloads
            .select(Caller::Token(&token))
            .map_err(|why| AgentError::NoWorkload {
                issuer: token.issuer.clone(),
                subject: token.subject.clone(),
                why: why.join("; "),
            })?;
        Ok(TokenCaller { workload, token })
    }

    /// The SPIFFE bundle client certificates are verified against, if any.
    pub fn svid(&self) -> Option<&SvidVerifier> {
        self.svid.as_ref()
    }

    /// The workload an agent with a verified X.509-SVID is, as a token of
    /// its trust domain (for the audit line and the tunnel's lifetime).
    /// An SVID is checked at the handshake; one that expired since, on a
    /// connection kept open, is refused at `now`.
    pub fn select_svid(&self, svid: &Svid, now: i64) -> Result<TokenCaller, AgentError> {
        if now > svid.not_after {
            return Err(AgentError::Certificate(format!(
                "the X.509-SVID {} expired {} s ago: connect again with a fresh one",
                svid.id,
                now - svid.not_after
            )));
        }
        let workload = self
            .workloads
            .select(Caller::Svid(&svid.id))
            .map_err(|why| AgentError::SvidNoWorkload {
                id: svid.id.clone(),
                why: why.join("; "),
            })?;
        let token = VerifiedToken {
            issuer: format!("spiffe://{}", svid.trust_domain),
            subject: svid.id.clone(),
            fingerprint: svid.fingerprint.clone(),
            expires_at: svid.not_after,
            spiffe_id: Some(svid.id.clone()),
            claims: serde_json::Map::new(),
        };
        Ok(TokenCaller { workload, token })
    }

    /// The clock skew tokens are allowed (a tunnel's token is checked
    /// again against its expiry on each request).
    pub fn skew_secs(&self) -> u64 {
        self.skew_secs
    }

    /// Who made `request` over a connection whose client certificate is
    /// `peer`, at unix time `now`. The checks, in order: an enrolled key
    /// (or, with `[[gateway.enroll]]`, any key, to be enrolled by its
    /// instance below); the statement signed by it, for this gateway,
    /// fresh; for a key not enrolled, its instance evidence; bound to this
    /// request; its nonce unseen; a workload that accepts it.
    pub async fn verify(
        &self,
        peer: &Peer,
        request: Received<'_>,
        now: i64,
    ) -> Result<Verified, CallerError> {
        let key = node_key(peer)?;
        let enrolled = self.nodes.get(key);
        if enrolled.is_none() && self.enrollment.is_empty() {
            return Err(CallerError::UnknownNode(hex::encode(key)));
        }
        let label = enrolled
            .cloned()
            .unwrap_or_else(|| format!("ed25519:{}", hex::encode(key)));
        let jws = request.statement.ok_or(CallerError::NoStatement)?;
        let failed = |node: &str, source| CallerError::Statement {
            node: node.to_owned(),
            source,
        };
        let statement = statement::verify(
            jws,
            &statement::Expected {
                audience: &self.audience,
                connection_key: key,
                now,
                max_age_secs: self.max_age_secs,
                skew_secs: self.skew_secs,
            },
        )
        .map_err(|e| failed(&label, e))?;
        let (node, instance) = match enrolled {
            Some(node) => (node.clone(), None),
            None => {
                let enrolled = self
                    .enroll(key, statement.instance.evidence.as_ref(), now)
                    .await?;
                (enrolled.name, Some(enrolled.facts))
            }
        };
        if statement.iat < self.not_before {
            return Err(failed(&node, StatementError::BeforeStart));
        }
        statement::check_binding(&statement, request.method, request.authority, request.path)
            .map_err(|e| failed(&node, e))?;
        statement::check_body(&statement, request.body).map_err(|e| failed(&node, e))?;
        self.first_use(&node, &statement).await?;
        let workload = self
            .workloads
            .select(Caller::Node {
                name: &node,
                statement: &statement,
                instance: instance.as_ref(),
            })
            .map_err(|why| CallerError::NoWorkload {
                node: node.clone(),
                why: why.join("; "),
            })?;
        Ok(Verified {
            node,
            workload,
            statement,
            instance,
        })
    }

    /// The node whose key is not enrolled, enrolled by its instance
    /// `evidence` (a verification kept in the cache, else made now and
    /// kept), and its key checked against the instance's pin where the
    /// evidence does not bind the key itself.
    async fn enroll(
        &self,
        key: &[u8; 32],
        evidence: Option<&Evidence>,
        now: i64,
    ) -> Result<EnrolledInstance, CallerError> {
        let cached = evidence.and_then(|e| self.evidence.get(key, e, now));
        let fresh = cached.is_none();
        let enrolled = match cached {
            Some(hit) => hit,
            None => self
                .enrollment
                .verify(evidence, key, now, self.skew_secs)
                .map_err(|source| CallerError::NotEnrolled {
                    key: hex::encode(key),
                    source,
                })?,
        };
        pins::check(self.pins.as_ref(), key, &enrolled, now).await?;
        if let (true, Some(evidence)) = (fresh, evidence) {
            self.evidence.insert(key, evidence, &enrolled, now);
        }
        Ok(enrolled)
    }

    /// The nonce, per node, is accepted once while a statement bearing it
    /// could still be fresh.
    async fn first_use(&self, node: &str, statement: &Statement) -> Result<(), CallerError> {
        let ttl = Duration::from_secs(self.max_age_secs.saturating_add(self.skew_secs * 2));
        let key = format!("{node}:{}", statement.nonce);
        match self.nonces.first_use(&key, ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CallerError::Replayed(node.to_owned())),
            Err(source) => Err(CallerError::ReplayCache {
                node: node.to_owned(),
                source,
            }),
        }
    }
}

/// The host key a node's connection was authenticated by; anything else
/// is refused with why.
fn node_key(peer: &Peer) -> Result<&[u8; 32], CallerError> {
    match peer {
        Peer::Anonymous => Err(CallerError::Anonymous),
        Peer::Unverified(why) => Err(CallerError::Certificate(why.clone())),
        Peer::Svid(svid) => Err(CallerError::Certificate(format!(
            "an X.509-SVID ({}) identifies an agent, not a node: agents use a base URL or HTTP CONNECT",
            svid.id
        ))),
        Peer::Key(key) => Ok(key),
    }
}

/// Enrolled keys by their 32 bytes (config checked them: they parse).
fn enrolled(gateway: &GatewayConfig) -> HashMap<[u8; 32], String> {
    gateway
        .nodes
        .iter()
        .filter_map(|n| {
            Some((
                parse_node_key(n.public_key.get_ref())?,
                n.name.get_ref().clone(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{node::Unsigned, *};

    const NODE: &str = "n";

    fn key() -> NodeKey {
        let rng = ring::rand::SystemRandom::new();
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        NodeKey::from_pkcs8(der.as_ref().to_vec()).unwrap()
    }

    /// The stores with `nonces`, and pins in a fresh file.
    fn stores(nonces: Arc<dyn NonceStore>, not_before: i64) -> Stores {
        let dir = tempfile::tempdir().unwrap().keep();
        Stores {
            nonces,
            pins: Arc::new(FilePins::open(&dir.join(PINS_FILE)).unwrap()),
            not_before,
        }
    }

    fn verifier(key: &NodeKey, nonces: Arc<dyn NonceStore>, not_before: i64) -> Verifier {
        let text = format!(
            "[gateway]\ncertificate = \"/c\"\nkey = \"/k\"\nname = \"gw\"\n\n[[gateway.node]]\nname = \"{NODE}\"\npublic_key = \"{}\"\n\n[[workload]]\nname = \"w\"\nnodes = [\"{NODE}\"]\n",
            key.public_text()
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let workloads = RemoteWorkloads::compile(&config.workloads, &config.source).unwrap();
        Verifier::new(&config, workloads, stores(nonces, not_before))
            .unwrap()
            .unwrap()
    }

    async fn verify(verifier: &Verifier, key: &NodeKey, now: i64) -> Result<Verified, CallerError> {
        verify_with(verifier, key, now, InstanceFacts::default()).await
    }

    /// As `verify`, with the statement's instance facts.
    async fn verify_with(
        verifier: &Verifier,
        key: &NodeKey,
        now: i64,
        instance: InstanceFacts,
    ) -> Result<Verified, CallerError> {
        let binding = Binding {
            method: "POST".into(),
            authority: "api.openai.com".into(),
            path: "/v1/x".into(),
            body_sha256: Binding::hash_body(b"{}"),
        };
        let unsigned = Unsigned {
            audience: "gw".into(),
            binding,
            workload: "w".into(),
            process: ProcessFacts::default(),
            instance,
        };
        let jws = key.sign(unsigned, now).unwrap();
        let peer = Peer::Key(parse_node_key(&key.public_text()).unwrap());
        let received = Received {
            statement: Some(&jws),
            method: "POST",
            authority: "api.openai.com",
            path: "/v1/x",
            body: b"{}",
        };
        verifier.verify(&peer, received, now).await
    }

    #[tokio::test]
    async fn a_replay_cache_that_cannot_answer_refuses_with_503() {
        let key = key();
        // Nothing listens on port 1: the store cannot answer.
        let redis = RedisNonces::new("redis://127.0.0.1:1/", Duration::from_millis(500)).unwrap();
        let verifier = verifier(&key, Arc::new(redis), i64::MIN);
        let error = verify(&verifier, &key, 1_000).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
    }

    #[tokio::test]
    async fn statements_signed_before_a_memory_cache_started_are_refused() {
        let key = key();
        let verifier = verifier(&key, Arc::new(MemoryNonces::default()), 1_000);
        let error = verify(&verifier, &key, 999).await.unwrap_err();
        assert!(
            error.to_string().contains("before this gateway started"),
            "{error}"
        );
        assert_eq!(verify(&verifier, &key, 1_000).await.unwrap().workload, "w");
    }

    /// Google's stand-in: the test fixture's RSA key, and its JWKS.
    fn google() -> (jsonwebtoken::EncodingKey, String) {
        use base64::Engine;
        let pem = include_str!("../../tests/fixtures/cloud/gcp-service-account.pem");
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        let pair = ring::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap();
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1",
            "n": b64(&public.n), "e": b64(&public.e)}]});
        let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        (encoding, jwks.to_string())
    }

    /// A GCE identity token (format=full) for `audience`.
    fn gce_token(encoding: &jsonwebtoken::EncodingKey, audience: &str, iat: i64) -> String {
        let claims = serde_json::json!({
            "aud": audience, "iss": "https://accounts.google.com", "iat": iat,
            "exp": iat + 3600, "sub": "1",
            "google": {"compute_engine": {"project_id": "p", "zone": "europe-west4-b",
                "instance_id": "77", "instance_name": "vm"}}
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, encoding).unwrap()
    }

    #[tokio::test]
    async fn a_key_not_enrolled_is_enrolled_by_a_gce_token_made_for_it_only() {
        let (encoding, jwks) = google();
        let dir = tempfile::tempdir().unwrap();
        let jwks_file = dir.path().join("jwks.json");
        std::fs::write(&jwks_file, jwks).unwrap();
        let text = format!(
            "[gateway]\ncertificate = \"/c\"\nkey = \"/k\"\nname = \"gw\"\n\n[[gateway.enroll]]\nprovider = \"gcp\"\njwks_file = \"{}\"\nprojects = [\"p\"]\n\n[[workload]]\nname = \"w\"\nnodes = [\"gcp:p/*\"]\nnode_instance = {{ region = \"europe-west4\" }}\n",
            jwks_file.display()
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let workloads = RemoteWorkloads::compile(&config.workloads, &config.source).unwrap();
        let nonces = Arc::new(MemoryNonces::default());
        let verifier = Verifier::new(&config, workloads, stores(nonces, i64::MIN))
            .unwrap()
            .unwrap();
        let (node, thief) = (key(), key());
        let now = jiff::Timestamp::now().as_second();
        let evidence = |token: String| InstanceFacts {
            provider: Some("gcp".into()),
            verified: true,
            claims: Default::default(),
            evidence: Some(crate::attest::instance::Evidence::GcpToken { token }),
        };
        let token = gce_token(
            &encoding,
            &crate::attest::instance::node_audience(node.public()),
            now,
        );
        let verified = verify_with(&verifier, &node, now, evidence(token.clone()))
            .await
            .unwrap();
        assert_eq!(verified.node, "gcp:p/77");
        assert_eq!(verified.workload, "w");
        assert_eq!(verified.instance().claims["region"], "europe-west4");
        // The verification is kept, and reused for the next statement.
        assert_eq!(verifier.evidence.len(), 1);
        let again = verify_with(&verifier, &node, now, evidence(token.clone()))
            .await
            .unwrap();
        assert_eq!(again.node, "gcp:p/77");
        assert_eq!(verifier.evidence.len(), 1);
        // The same token with another key; no token at all.
        let error = verify_with(&verifier, &thief, now, evidence(token))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, CallerError::NotEnrolled { .. })
                && error.to_string().contains("unknown node")
                && error.to_string().contains("audience"),
            "{error}"
        );
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        // Refused evidence is never kept.
        assert_eq!(verifier.evidence.len(), 1);
        let error = verify(&verifier, &node, now).await.unwrap_err();
        assert!(
            error.to_string().contains("no instance evidence"),
            "{error}"
        );
    }

    /// AWS's stand-in: the fixture's RSA key in a self-signed certificate
    /// (the trust file), and a document signed with it as IMDS signs.
    fn aws_signed(dir: &std::path::Path, document: &str) -> (std::path::PathBuf, String) {
        use base64::Engine;
        let pem = include_str!("../../tests/fixtures/cloud/gcp-service-account.pem");
        let pair = rcgen::KeyPair::from_pem_and_sign_algo(pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["aws-test".into()])
            .unwrap()
            .self_signed(&pair)
            .unwrap();
        let trust = dir.join("aws.pem");
        std::fs::write(&trust, cert.pem()).unwrap();
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        let rsa = ring::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap();
        let mut signature = vec![0; rsa.public().modulus_len()];
        rsa.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            document.as_bytes(),
            &mut signature,
        )
        .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(signature);
        (trust, b64)
    }

    #[tokio::test]
    async fn an_aws_instance_serves_the_first_key_only_and_unknown_pins_refuse_with_503() {
        let dir = tempfile::tempdir().unwrap();
        let document = r#"{"accountId":"111122223333","instanceId":"i-0abc","region":"eu-west-1","availabilityZone":"eu-west-1a","imageId":"ami-1","pendingTime":"2026-11-30T10:00:00Z"}"#;
        let (trust, signature) = aws_signed(dir.path(), document);
        let text = format!(
            "[gateway]\ncertificate = \"/c\"\nkey = \"/k\"\nname = \"gw\"\n\n[[gateway.enroll]]\nprovider = \"aws\"\ntrust_file = \"{}\"\naccounts = [\"111122223333\"]\n\n[[workload]]\nname = \"w\"\nnodes = [\"aws:111122223333/*\"]\n",
            trust.display()
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let build = |pins: Arc<dyn PinStore>| {
            let workloads = RemoteWorkloads::compile(&config.workloads, &config.source).unwrap();
            let stores = Stores {
                nonces: Arc::new(MemoryNonces::default()),
                pins,
                not_before: i64::MIN,
            };
            Verifier::new(&config, workloads, stores).unwrap().unwrap()
        };
        let verifier = build(Arc::new(
            FilePins::open(&dir.path().join(PINS_FILE)).unwrap(),
        ));
        let evidence = InstanceFacts {
            provider: Some("aws".into()),
            verified: true,
            claims: Default::default(),
            evidence: Some(Evidence::AwsDocument {
                document: document.into(),
                signature,
            }),
        };
        let (node, thief) = (key(), key());
        let now = jiff::Timestamp::now().as_second();
        let verified = verify_with(&verifier, &node, now, evidence.clone())
            .await
            .unwrap();
        assert_eq!(verified.node, "aws:111122223333/i-0abc");
        // Verified once, then reused; the pin is still checked each time.
        assert_eq!(verifier.evidence.len(), 1);
        verify_with(&verifier, &node, now, evidence.clone())
            .await
            .unwrap();
        let error = verify_with(&verifier, &thief, now, evidence.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(error, CallerError::Pinned(PinRefusal::OtherKey { .. })),
            "{error}"
        );
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        assert!(
            error.to_string().contains("pinned to another key")
                && error.to_string().contains(&hex::encode(node.public())),
            "{error}"
        );
        // Pins that cannot answer: no enrollment, and a 503.
        let down = RedisPins::new("redis://127.0.0.1:1/", Duration::from_millis(500)).unwrap();
        let verifier = build(Arc::new(down));
        let error = verify_with(&verifier, &node, now, evidence)
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
        assert!(verifier.evidence.is_empty());
    }

    #[tokio::test]
    async fn without_enrollment_rules_an_unknown_key_is_refused_before_its_statement_is_read() {
        let verifier = verifier(&key(), Arc::new(MemoryNonces::default()), i64::MIN);
        let error = verify(&verifier, &key(), 1_000).await.unwrap_err();
        assert!(matches!(error, CallerError::UnknownNode(_)), "{error}");
    }
}
