//! A minimal HTTP/1 client for metadata services (plain HTTP on a
//! link-local address, as all three clouds serve it). Each call has a
//! deadline; metadata documents are small, so bodies are capped.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::InstanceError;

/// Metadata documents are a few KiB; anything far larger is not one.
const MAX_BODY: usize = 1024 * 1024;

pub struct MetadataClient {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl MetadataClient {
    pub fn new(timeout: Duration) -> MetadataClient {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        MetadataClient {
            // No pooling: one fetch every few minutes.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
            timeout,
        }
    }

    /// Sends a request and returns the body of a 200 answer.
    pub async fn call(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Bytes, InstanceError> {
        let unreachable = |reason: String| InstanceError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        let mut builder = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| InstanceError::Config(format!("bad metadata URL {url:?}: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(crate::error::chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| unreachable(format!("reading body: {e}")))?
                .to_bytes();
            if status != http::StatusCode::OK {
                return Err(InstanceError::Status {
                    url: url.to_owned(),
                    status: status.as_u16(),
                });
            }
            Ok(body)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
    }
}

/// A query-string value, percent-encoded (audiences are URLs).
pub fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
