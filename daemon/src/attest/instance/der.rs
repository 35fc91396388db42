//! Just enough DER to verify a CMS (PKCS#7) SignedData: the Azure attested
//! document. Certificates are handed to x509-parser; this module only walks
//! the SignedData structure (RFC 5652 section 5) and checks the signer's
//! RSA signature.

use super::InstanceError;

/// One tag-length-value. Only single-byte tags and definite lengths (DER).
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
    /// The whole encoding, tag and length included.
    pub raw: &'a [u8],
}

fn bad(what: &str) -> InstanceError {
    InstanceError::BadDocument(format!("PKCS#7: {what}"))
}

pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), InstanceError> {
    let (&tag, rest) = input.split_first().ok_or_else(|| bad("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(bad("multi-byte tags are not used by CMS"));
    }
    let (&first, rest) = rest.split_first().ok_or_else(|| bad("truncated length"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 {
            return Err(bad("indefinite length (BER) is not DER"));
        }
        if count > 4 || rest.len() < count {
            return Err(bad("bad length"));
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err(bad("content runs past the end"));
    }
    let header = input.len() - rest.len();
    Ok((
        Tlv {
            tag,
            content: &rest[..len],
            raw: &input[..header + len],
        },
        &rest[len..],
    ))
}

/// Reads one TLV with the expected tag.
fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(Tlv<'a>, &'a [u8]), InstanceError> {
    let (tlv, rest) = read(input)?;
    if tlv.tag != tag {
        return Err(bad(&format!(
            "expected {what} (tag {tag:#x}), found tag {:#x}",
            tlv.tag
        )));
    }
    Ok((tlv, rest))
}

fn children(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, InstanceError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = read(input)?;
        out.push(tlv);
        input = rest;
    }
    Ok(out)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const CONTEXT_0: u8 = 0xa0;

// DER contents of the object identifiers involved.
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];

/// A parsed SignedData with one signer.
pub struct SignedData<'a> {
    pub content: &'a [u8],
    pub certificates: Vec<&'a [u8]>,
    digest_sha256: bool,
    /// The signed attributes, re-tagged as the SET they are signed as.
    signed_attrs: Option<Vec<u8>>,
    message_digest: Option<&'a [u8]>,
    signature: &'a [u8],
}

pub fn parse_signed_data(der: &[u8]) -> Result<SignedData<'_>, InstanceError> {
    let (info, _) = expect(der, SEQUENCE, "ContentInfo")?;
    let (kind, rest) = expect(info.content, OID, "contentType")?;
    if kind.content != OID_SIGNED_DATA {
        return Err(bad("not a SignedData"));
    }
    let (explicit, _) = expect(rest, CONTEXT_0, "[0] content")?;
    let (signed, _) = expect(explicit.content, SEQUENCE, "SignedData")?;
    let fields = children(signed.content)?;
    // version, digestAlgorithms, encapContentInfo, [0] certs?, [1] crls?, signerInfos
    let encap = fields.get(2).ok_or_else(|| bad("no encapContentInfo"))?;
    let (_type, rest) = expect(encap.content, OID, "eContentType")?;
    let (econtent, _) = expect(
        rest,
        CONTEXT_0,
        "eContent (detached content is not supported)",
    )?;
    let (content, _) = expect(econtent.content, OCTET_STRING, "eContent octets")?;
    let mut certificates = Vec::new();
    let mut signer_infos = None;
    for field in &fields[3..] {
        match field.tag {
            CONTEXT_0 => {
                for cert in children(field.content)? {
                    certificates.push(cert.raw);
                }
            }
            SET => signer_infos = Some(field),
            _ => {}
        }
    }
    let signers = children(signer_infos.ok_or_else(|| bad("no signerInfos"))?.content)?;
    let [signer] = signers.as_slice() else {
        return Err(bad("expected exactly one signer"));
    };
    let parts = children(signer.content)?;
    // version, sid, digestAlgorithm, [0] signedAttrs?, signatureAlgorithm, signature
    let digest_alg = parts.get(2).ok_or_else(|| bad("no digestAlgorithm"))?;
    let (alg_oid, _) = expect(digest_alg.content, OID, "digest algorithm")?;
    let digest_sha256 = match alg_oid.content {
        OID_SHA256 => true,
        OID_SHA1 => false,
        _ => return Err(bad("digest algorithm is neither SHA-256 nor SHA-1")),
    };
    let mut index = 3;
    let mut signed_attrs = None;
    let mut message_digest = None;
    if let Some(attrs) = parts.get(3).filter(|t| t.tag == CONTEXT_0) {
        let mut set = attrs.raw.to_vec();
        set[0] = SET;
        signed_attrs = Some(set);
        for attr in children(attrs.content)? {
            let (oid, rest) = expect(attr.content, OID, "attribute type")?;
            if oid.content == OID_MESSAGE_DIGEST {
                let (values, _) = expect(rest, SET, "attribute values")?;
                let (digest, _) = expect(values.content, OCTET_STRING, "messageDigest")?;
                message_digest = Some(digest.content);
            }
        }
        index = 4;
    }
    let signature = parts.get(index + 1).ok_or_else(|| bad("no signature"))?;
    if signature.tag != OCTET_STRING {
        return Err(bad("signature is not an OCTET STRING"));
    }
    Ok(SignedData {
        content: content.content,
        certificates,
        digest_sha256,
        signed_attrs,
        message_digest,
        signature: signature.content,
    })
}

impl SignedData<'_> {
    /// Whether `cert_der`'s RSA key made the signature (over the signed
    /// attributes, whose messageDigest must be the content's digest, or over
    /// the content when there are none).
    pub fn signed_by(&self, cert_der: &[u8]) -> Result<bool, InstanceError> {
        let (digest_alg, verify_alg): (_, &dyn ring::signature::VerificationAlgorithm) =
            if self.digest_sha256 {
                (
                    &ring::digest::SHA256,
                    &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                )
            } else {
                (
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                )
            };
        let message: &[u8] = match &self.signed_attrs {
            Some(attrs) => {
                let digest = ring::digest::digest(digest_alg, self.content);
                if self.message_digest != Some(digest.as_ref()) {
                    return Err(InstanceError::BadSignature(
                        "messageDigest does not match the content".to_owned(),
                    ));
                }
                attrs
            }
            None => self.content,
        };
        let Some(key) = super::aws::rsa_public_key(cert_der) else {
            return Ok(false);
        };
        Ok(ring::signature::UnparsedPublicKey::new(verify_alg, &key)
            .verify(message, self.signature)
            .is_ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn malformed_der_is_an_error_not_a_panic() {
        assert!(read(&[]).is_err());
        assert!(read(&[0x30]).is_err());
        assert!(read(&[0x30, 0x80, 0x00, 0x00]).is_err()); // BER indefinite
        assert!(read(&[0x30, 0x05, 0x01]).is_err()); // runs past the end
        assert!(read(&[0x30, 0x85, 1, 2, 3, 4, 5]).is_err()); // 5-byte length
        assert!(parse_signed_data(&[0x30, 0x00]).is_err());
        assert!(parse_signed_data(b"not der at all").is_err());
    }

    #[test]
    fn long_form_lengths_are_read() {
        let mut der = vec![0x04, 0x81, 0x80];
        der.extend([7u8; 0x80]);
        der.push(0xff);
        let (tlv, rest) = read(&der).unwrap();
        assert_eq!(tlv.content.len(), 0x80);
        assert_eq!(tlv.raw.len(), 0x83);
        assert_eq!(rest, &[0xff]);
    }
}
