//! SPIFFE IDs, as JWT-SVIDs name them in their `sub`.
//!
//! The rules are those of the SPIFFE ID standard: `spiffe://`, a
//! lower-case trust domain, a path of non-empty segments other than `.`
//! and `..` of letters, digits, `.`, `-` and `_`; no query, no fragment,
//! no port or user info. A token's SPIFFE ID must be in the trust domain
//! configured for its issuer: an issuer cannot vouch for another domain's
//! workloads.

/// Why a SPIFFE ID is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSpiffeId(String);

/// `id` if it is a SPIFFE ID in `trust_domain`, else why not.
pub fn parse_spiffe_id(id: &str, trust_domain: &str) -> Result<String, BadSpiffeId> {
    let bad = |why: String| Err(BadSpiffeId(why));
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return bad(format!("{id:?} does not start with spiffe://"));
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    check_trust_domain(domain)?;
    if domain != trust_domain {
        return bad(format!(
            "{id:?} is in trust domain {domain:?}, not {trust_domain:?}"
        ));
    }
    if path.is_empty() {
        return bad(format!("{id:?} names a trust domain, not a workload"));
    }
    for segment in path.split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            return bad(format!("{id:?} has a bad path segment {segment:?}"));
        }
    }
    Ok(id.to_owned())
}

fn check_trust_domain(domain: &str) -> Result<(), BadSpiffeId> {
    let ok = !domain.is_empty()
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(BadSpiffeId(format!(
            "trust domain {domain:?} must be lower-case letters, digits, '.', '-' or '_' (no port, no user info)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spiffe_ids_follow_the_standard() {
        let ok = |id: &str| parse_spiffe_id(id, "example.org");
        assert!(ok("spiffe://example.org/ns/agents/sa/support").is_ok());
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://other.org/a",
            "https://example.org/a",
        ] {
            assert!(ok(bad).is_err(), "{bad} was accepted");
        }
    }
}
