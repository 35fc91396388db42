//! The `azure` provider: IMDS attested data. The document is a PKCS#7
//! SignedData whose content is JSON (vmId, subscriptionId, sku, the nonce we
//! sent...), signed by a certificate for metadata.azure.com that must chain
//! to a CA in `[instance] trust_file`, and must carry our fresh nonce (so an
//! old document cannot be replayed). On a node, the nonce is derived from
//! the node's key instead (`super::node_nonce`), so that its gateway can
//! tell the document was asked for by this node, and the document's
//! `timeStamp.createdOn` says how fresh it is.

use std::{collections::BTreeMap, time::Duration};

use base64::Engine;
use ring::rand::SecureRandom;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Identity, InstanceError, add_config_claims, der, http::MetadataClient};

pub const ATTESTED_PATH: &str = "/metadata/attested/document";
pub const API_VERSION: &str = "2020-09-01";
/// The signer's common name must end with one of these (public cloud and
/// the sovereign clouds).
const SIGNER_NAMES: &[&str] = &[
    "metadata.azure.com",
    "metadata.azure.us",
    "metadata.azure.cn",
    "metadata.microsoftazure.de",
];
/// Intermediates followed from the signer to a trust anchor.
const MAX_CHAIN: usize = 4;

pub struct AzureProvider {
    endpoint: String,
    /// The nonce bound to the node's key; None: a random one per fetch.
    nonce: Option<String>,
    trust: Vec<Vec<u8>>,
    client: MetadataClient,
    region: Option<String>,
    environment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Attested {
    nonce: String,
    vm_id: String,
    subscription_id: String,
    #[serde(default)]
    sku: Option<String>,
    #[serde(default, rename = "timeStamp")]
    time_stamp: Option<TimeStamp>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeStamp {
    /// "11/28/18 00:16:17 -0000".
    created_on: String,
}

/// A verified attested document: its claims and when IMDS made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    pub claims: BTreeMap<String, String>,
    /// Unix seconds; None when the document does not say.
    pub created_on: Option<u64>,
}

impl AzureProvider {
    pub fn new(
        endpoint: String,
        trust: Vec<Vec<u8>>,
        timeout: Duration,
        region: Option<String>,
        environment: Option<String>,
    ) -> AzureProvider {
        AzureProvider {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            nonce: None,
            trust,
            client: MetadataClient::new(timeout),
            region,
            environment,
        }
    }

    /// Asks every document for `nonce` (on a node: bound to its key).
    pub fn set_nonce(&mut self, nonce: String) {
        self.nonce = Some(nonce);
    }

    pub async fn fetch(&self) -> Result<Identity, InstanceError> {
        let nonce = match &self.nonce {
            Some(nonce) => nonce.clone(),
            None => new_nonce()?,
        };
        let url = format!(
            "{}{ATTESTED_PATH}?api-version={API_VERSION}&nonce={nonce}",
            self.endpoint
        );
        let body = self
            .client
            .call(http::Method::GET, &url, &[("Metadata", "true")])
            .await?;
        let Attestation {
            mut claims,
            created_on,
        } = verify_attested_document(&body, &nonce, &self.trust)?;
        // The attested document names no location: region comes from config.
        add_config_claims(&mut claims, self.region.as_ref(), self.environment.as_ref());
        Ok(Identity {
            verified: true,
            claims,
            evidence: Some(super::Evidence::AzureAttested {
                document: String::from_utf8_lossy(&body).into_owned(),
            }),
            issued_at: created_on,
        })
    }
}

/// Ten random digits, the form IMDS documents for the nonce.
fn new_nonce() -> Result<String, InstanceError> {
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| InstanceError::Host("no randomness for the nonce".to_owned()))?;
    Ok(format!(
        "{:010}",
        u64::from_le_bytes(bytes) % 10_000_000_000
    ))
}

/// Verifies an attested-document response (`{"encoding":"pkcs7",
/// "signature":"<base64 DER>"}`) and returns its claims.
pub fn verify_attested(
    body: &[u8],
    nonce: &str,
    trust: &[Vec<u8>],
) -> Result<BTreeMap<String, String>, InstanceError> {
    verify_attested_document(body, nonce, trust).map(|a| a.claims)
}

/// As [`verify_attested`], with the time the document was made.
pub fn verify_attested_document(
    body: &[u8],
    nonce: &str,
    trust: &[Vec<u8>],
) -> Result<Attestation, InstanceError> {
    #[derive(Deserialize)]
    struct Envelope {
        encoding: String,
        signature: String,
    }
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|e| InstanceError::BadDocument(format!("attested document: {e}")))?;
    if envelope.encoding != "pkcs7" {
        return Err(InstanceError::BadDocument(format!(
            "encoding {:?}, expected pkcs7",
            envelope.encoding
        )));
    }
    let compact: String = envelope
        .signature
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let pkcs7 = base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|e| InstanceError::BadDocument(format!("signature is not base64: {e}")))?;
    let signed = der::parse_signed_data(&pkcs7)?;

    let mut signer = None;
    for cert in &signed.certificates {
        if signed.signed_by(cert)? {
            signer = Some(*cert);
            break;
        }
    }
    let signer = signer.ok_or_else(|| {
        InstanceError::BadSignature("no certificate in the document made its signature".to_owned())
    })?;
    let (_, cert) = X509Certificate::from_der(signer)
        .map_err(|e| InstanceError::BadDocument(format!("signer certificate: {e}")))?;
    let name_ok = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| {
            SIGNER_NAMES
                .iter()
                .any(|n| cn == *n || cn.ends_with(&format!(".{n}")))
        });
    if !name_ok {
        return Err(InstanceError::BadSignature(format!(
            "signer {} is not the Azure metadata service",
            cert.subject()
        )));
    }
    if !chains_to_trust(signer, &signed.certificates, trust, MAX_CHAIN) {
        return Err(InstanceError::BadSignature(
            "the signer certificate does not chain to a CA in trust_file".to_owned(),
        ));
    }

    let doc: Attested = serde_json::from_slice(signed.content)
        .map_err(|e| InstanceError::BadDocument(format!("attested content: {e}")))?;
    if doc.nonce != nonce {
        return Err(InstanceError::BadSignature(format!(
            "nonce {:?} is not the one sent ({nonce:?}): a replayed document",
            doc.nonce
        )));
    }
    let created_on = match &doc.time_stamp {
        Some(stamp) => Some(imds_time(&stamp.created_on)?),
        None => None,
    };
    let mut claims = BTreeMap::from([
        ("vm_id".to_owned(), doc.vm_id),
        ("subscription".to_owned(), doc.subscription_id),
    ]);
    if let Some(sku) = doc.sku.filter(|s| !s.is_empty()) {
        claims.insert("sku".to_owned(), sku);
    }
    Ok(Attestation { claims, created_on })
}

/// IMDS's "MM/DD/YY HH:MM:SS -0000", as unix seconds.
fn imds_time(text: &str) -> Result<u64, InstanceError> {
    jiff::fmt::strtime::parse("%m/%d/%y %H:%M:%S %z", text)
        .and_then(|time| time.to_timestamp())
        .ok()
        .and_then(|time| u64::try_from(time.as_second()).ok())
        .ok_or_else(|| {
            InstanceError::BadDocument(format!("attested timeStamp {text:?} is not a time"))
        })
}

/// Whether `cert` is a trust anchor, or is signed (and valid now) by one,
/// possibly through intermediates taken from `bag`.
fn chains_to_trust(cert_der: &[u8], bag: &[&[u8]], trust: &[Vec<u8>], depth: usize) -> bool {
    if trust.iter().any(|t| t.as_slice() == cert_der) {
        return true;
    }
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else {
        return false;
    };
    if !cert.validity().is_valid() {
        return false;
    }
    let issued_by = |issuer_der: &[u8]| {
        X509Certificate::from_der(issuer_der).is_ok_and(|(_, issuer)| {
            issuer.subject() == cert.issuer()
                && cert.verify_signature(Some(issuer.public_key())).is_ok()
        })
    };
    if trust.iter().any(|t| issued_by(t)) {
        return true;
    }
    depth > 0
        && bag.iter().any(|&intermediate| {
            intermediate != cert_der
                && issued_by(intermediate)
                && chains_to_trust(intermediate, bag, trust, depth - 1)
        })
}
