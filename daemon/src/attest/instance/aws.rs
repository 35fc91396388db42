//! The `aws` provider: IMDSv2. A session token is obtained with PUT
//! /latest/api/token, then the instance identity document and its
//! base64-encoded signature (RSA, SHA-256 over the document's exact bytes)
//! are fetched and the signature is checked against the AWS RSA public
//! certificate for the region, which the operator configures in
//! `[instance] trust_file` (AWS publishes one per region; none is bundled).

use std::{collections::BTreeMap, time::Duration};

use base64::Engine;
use serde::Deserialize;

use super::{Identity, InstanceError, add_config_claims, http::MetadataClient};

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";
pub const SIGNATURE_PATH: &str = "/latest/dynamic/instance-identity/signature";
/// Session tokens are asked for 6 hours, the IMDSv2 maximum; one is used
/// right away and dropped.
const TOKEN_TTL_SECS: &str = "21600";

pub struct AwsProvider {
    endpoint: String,
    trust: Vec<Vec<u8>>,
    client: MetadataClient,
    environment: Option<String>,
}

/// The fields of the instance identity document used as claims.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    account_id: String,
    instance_id: String,
    region: String,
    availability_zone: String,
    image_id: String,
    #[serde(default)]
    instance_type: Option<String>,
}

impl AwsProvider {
    /// `trust`: DER certificates, any of which may have signed the document.
    pub fn new(
        endpoint: String,
        trust: Vec<Vec<u8>>,
        timeout: Duration,
        environment: Option<String>,
    ) -> AwsProvider {
        AwsProvider {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            trust,
            client: MetadataClient::new(timeout),
            environment,
        }
    }

    pub async fn fetch(&self) -> Result<Identity, InstanceError> {
        let token = self
            .client
            .call(
                http::Method::PUT,
                &format!("{}{TOKEN_PATH}", self.endpoint),
                &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECS)],
            )
            .await?;
        let token = std::str::from_utf8(&token)
            .map_err(|_| InstanceError::BadDocument("IMDSv2 token is not text".to_owned()))?
            .trim()
            .to_owned();
        let auth = [("X-aws-ec2-metadata-token", token.as_str())];
        let document = self
            .client
            .call(
                http::Method::GET,
                &format!("{}{DOCUMENT_PATH}", self.endpoint),
                &auth,
            )
            .await?;
        let signature = self
            .client
            .call(
                http::Method::GET,
                &format!("{}{SIGNATURE_PATH}", self.endpoint),
                &auth,
            )
            .await?;
        verify_document(&document, &signature, &self.trust)?;
        let mut claims = claims_of(&document)?;
        add_config_claims(&mut claims, None, self.environment.as_ref());
        // Both were checked as UTF-8 JSON and base64 above.
        let evidence = super::Evidence::AwsDocument {
            document: String::from_utf8_lossy(&document).into_owned(),
            signature: String::from_utf8_lossy(&signature).into_owned(),
        };
        Ok(Identity {
            verified: true,
            claims,
            evidence: Some(evidence),
            issued_at: None,
        })
    }
}

/// Checks the base64 signature over the document's bytes (as served: the
/// signature covers them exactly, whitespace included).
pub fn verify_document(
    document: &[u8],
    signature_b64: &[u8],
    trust: &[Vec<u8>],
) -> Result<(), InstanceError> {
    let compact: Vec<u8> = signature_b64
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| InstanceError::BadDocument(format!("signature is not base64: {e}")))?;
    // AWS's per-region RSA certificates include 1024-bit keys.
    let alg = &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY;
    for cert in trust {
        let Some(key) = rsa_public_key(cert) else {
            continue;
        };
        if ring::signature::UnparsedPublicKey::new(alg, &key)
            .verify(document, &signature)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(InstanceError::BadSignature(
        "the instance identity document is not signed by any certificate in trust_file".to_owned(),
    ))
}

/// The RSAPublicKey DER inside a certificate's SubjectPublicKeyInfo.
pub(crate) fn rsa_public_key(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

/// The claims of a document whose signature was verified.
pub fn claims_of(document: &[u8]) -> Result<BTreeMap<String, String>, InstanceError> {
    let doc: Document = serde_json::from_slice(document)
        .map_err(|e| InstanceError::BadDocument(format!("instance identity document: {e}")))?;
    let mut claims = BTreeMap::from([
        ("account".to_owned(), doc.account_id),
        ("instance_id".to_owned(), doc.instance_id),
        ("region".to_owned(), doc.region),
        ("zone".to_owned(), doc.availability_zone),
        ("image_id".to_owned(), doc.image_id),
    ]);
    if let Some(kind) = doc.instance_type {
        claims.insert("instance_type".to_owned(), kind);
    }
    Ok(claims)
}
