//! The rewriting phase and the HTTP plumbing around it: hop-by-hop
//! headers, the URI toward the upstream, the request's host.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri, Version, header};
use http_body_util::{BodyExt, Full};

use super::{ProxyBody, Transport, Upstream};
use crate::{provider::SpliceError, secret::Secret};

/// The request-rewriting phase, the only place a request to a configured
/// upstream is changed: credential splice (every agent-supplied credential
/// out, the real one in), hop-by-hop headers out, Host and URI rebuilt for
/// the upstream, identity encoding asked for (so an echoed credential can be
/// redacted from the response), and, last, for a provider that signs its
/// requests (`whole` is then the whole body), the signature over the final
/// request.
pub(super) fn rewrite<B>(
    mut parts: http::request::Parts,
    body: B,
    upstream: &Upstream,
    credential: &Secret,
    dst: SocketAddr,
    transport: Transport,
    whole: Option<&[u8]>,
) -> Result<Request<B>, SpliceError> {
    let keep_upgrade = is_upgrade(&parts.headers);
    let uri = upstream
        .provider
        .splice(&mut parts.headers, &parts.uri, credential)?;
    strip_hop_by_hop(&mut parts.headers, keep_upgrade);
    // No WebSocket extension is negotiated (permessage-deflate): the
    // session's messages must stay readable to be metered (`session`).
    parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    // The client sets Host (h1) or :authority (h2) from the URI.
    parts.headers.remove(header::HOST);
    // Explicitly identity: without the header a server may pick any coding.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    parts.uri = upstream_uri(&upstream.host, dst, transport, &uri).ok_or(SpliceError::BadUri)?;
    // The pooled client picks h1 or h2 by what the upstream negotiated.
    parts.version = Version::HTTP_11;
    if let Some(whole) = whole {
        // Nothing may change the request after this: the signature covers
        // the method, URI, headers and body as they are now.
        upstream
            .provider
            .sign(&mut parts, whole, credential, std::time::SystemTime::now())?;
    }
    Ok(Request::from_parts(parts, body))
}

/// Whether `host` resolves to `dst`'s address. Plain HTTP has no certificate
/// to authenticate the destination, so the agent's choice of address is
/// checked against the system resolver before a credential goes there.
pub(super) async fn resolves_to(host: &str, dst: SocketAddr) -> bool {
    let want = crate::origin::normalize(dst).ip();
    match tokio::net::lookup_host((host, dst.port())).await {
        Ok(addrs) => addrs
            .map(|a| crate::origin::normalize(a).ip())
            .any(|ip| ip == want),
        Err(error) => {
            tracing::warn!(%host, %error, "cannot resolve an upstream host");
            false
        }
    }
}

/// The request body's declared length, for the audit record.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(super) fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// The request's host, lower case, without a port: the Host header (h1) or
/// the URI authority (h2, absolute-form).
pub(super) fn request_host<B>(req: &Request<B>) -> Option<String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = host.parse().ok()?;
            Some(authority.host().to_owned())
        })?;
    Some(authority.to_ascii_lowercase())
}

/// `https://host[:port]/path?query` toward the upstream. The port is the
/// one the agent dialled, so Host matches what the agent sent.
pub(super) fn upstream_uri(
    host: &str,
    dst: SocketAddr,
    transport: Transport,
    uri: &Uri,
) -> Option<Uri> {
    let (scheme, default_port) = match transport {
        Transport::Tls => ("https", 443),
        Transport::Plain => ("http", 80),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if dst.port() == default_port {
        host.to_owned()
    } else {
        format!("{host}:{}", dst.port())
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), keeping Connection and
/// Upgrade for a protocol upgrade.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && (!keep_upgrade || t != "upgrade"))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrade_stays_only_for_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop, Upgrade"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        let mut upgrade = headers.clone();
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-end-to-end"]);
        strip_hop_by_hop(&mut upgrade, true);
        assert!(upgrade.contains_key(header::UPGRADE) && upgrade.contains_key(header::CONNECTION));
        assert!(!upgrade.contains_key("x-hop"));

        let mut trailers = HeaderMap::new();
        trailers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut trailers, false);
        assert!(trailers.contains_key(header::TE));
    }

    #[test]
    fn the_upstream_uri_keeps_a_non_default_port_and_the_query() {
        let uri: Uri = "/v1/x?a=1".parse().unwrap();
        let at_443: SocketAddr = "1.2.3.4:443".parse().unwrap();
        let at_8443: SocketAddr = "1.2.3.4:8443".parse().unwrap();
        assert_eq!(
            upstream_uri("api.openai.com", at_443, Transport::Tls, &uri)
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/x?a=1"
        );
        assert_eq!(
            upstream_uri("gw", at_8443, Transport::Plain, &uri)
                .unwrap()
                .to_string(),
            "http://gw:8443/v1/x?a=1"
        );
    }

    #[test]
    fn the_request_host_comes_from_the_authority_or_the_host_header_without_port() {
        let h2 = Request::builder()
            .uri("https://API.OpenAI.com/v1")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).as_deref(), Some("api.openai.com"));
        let h1 = Request::builder()
            .uri("/v1")
            .header("host", "Gw.Internal:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h1).as_deref(), Some("gw.internal"));
        let none = Request::builder().uri("/v1").body(()).unwrap();
        assert_eq!(request_host(&none), None);
    }
}
