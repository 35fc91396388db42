//! What each fuzz target checks, one function per target: called by the
//! libFuzzer targets (fuzz_targets/, `cargo xtask fuzz`, nightly with
//! AddressSanitizer) and by the corpus replay in the ordinary test build
//! (daemon/tests/fuzz_corpus.rs, run by `cargo xtask test`), so that an
//! input once found keeps being checked without a sanitizer build.
//!
//! Each function takes arbitrary bytes, returns quietly for inputs it
//! cannot use, and panics when a property fails.

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{Role, WebSocketConfig},
    },
};
use warrant::{
    provider::{Body, RequestHead, Scheme, api},
    usage::Meter,
};

/// The provider an input's first byte picks.
fn scheme_of(which: u8) -> Scheme {
    [
        Scheme::OpenAi,
        Scheme::Anthropic,
        Scheme::Gemini,
        Scheme::Generic,
    ][usize::from(which) % 4]
}

/// The ClientHello/SNI peek of every intercepted connection
/// (`proxy::peek_sni`): arbitrary bytes from an agent, as the first flight
/// of a TLS connection. It must end (an SNI, none, or an error), never
/// panic, and record exactly the bytes it consumed so the handshake can be
/// replayed.
pub fn client_hello(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let (mut agent, mut injector) = tokio::io::duplex(64 * 1024);
        // The agent sends its bytes and closes: a hello cut short is an
        // error, not a hang.
        let _ = agent.write_all(data).await;
        drop(agent);
        let mut recorded = Vec::new();
        let peeked = warrant::proxy::peek_sni(&mut injector, &mut recorded).await;
        assert!(
            data.starts_with(&recorded),
            "recorded bytes the agent did not send"
        );
        if let Ok(Some(sni)) = peeked {
            assert_eq!(sni, sni.to_ascii_lowercase());
        }
    });
}

/// The one parse of a request (`provider::Api::parse`): the path and body
/// an agent chooses, for each provider. It must never panic, and what it
/// accepts must be unambiguous: a canonical path has no dot segment, and
/// an accepted complete JSON body reads as serde_json (last key wins) reads
/// it.
pub fn request_parse(data: &[u8]) {
    // First byte: the provider; then the path up to a newline; the rest is
    // the body.
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let scheme = scheme_of(which);
    let (path, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(uri) = path.parse::<http::Uri>() else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if which & 0x80 != 0 {
        headers.insert(http::header::CONTENT_LENGTH, body.len().into());
    }
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &headers,
    };
    let Ok(request) = api(scheme).parse(&head, body) else {
        return;
    };
    assert!(!request.path.split('/').any(|s| s == "." || s == ".."));
    assert!(!request.path.contains('\\'));
    if request.body == (Body::Json { complete: true }) && scheme != Scheme::Gemini {
        let value: serde_json::Value = match serde_json::from_slice(body) {
            Ok(value) => value,
            // A number past f64's range: serde_json's Value refuses it,
            // Python's json reads inf; either way not a field warrant reads
            // (those are typed and refused). No oracle for this body.
            Err(error) if error.to_string().starts_with("number out of range") => return,
            Err(error) => panic!("an accepted body is not JSON: {error}"),
        };
        assert_eq!(request.model.as_deref(), value["model"].as_str());
        assert_eq!(request.stream, value["stream"].as_bool().unwrap_or(false));
    }
}

/// The usage meters (`usage::Meter`): SSE streams, Gemini's JSON-array
/// streams and JSON documents, from an upstream (or anything on the path
/// to it), cut into frames anywhere. They must never panic, keep memory
/// bounded, and read the same usage whatever the frame boundaries.
pub fn usage_meter(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let scheme = scheme_of(which);
    let (content_type, path) = match (which >> 2) % 3 {
        0 => ("text/event-stream", "/v1/chat/completions"),
        1 => ("application/json", "/v1beta/models/m:streamGenerateContent"),
        _ => ("application/json", "/v1/messages"),
    };
    let meter = || Meter::new(api(scheme).usage(), 200, Some(content_type), path, 4096);
    let mut whole = meter();
    whole.feed(body);
    let whole = whole.finish();
    // The same bytes in frames cut at points the input chooses.
    let step = usize::from(which >> 4).max(1);
    let mut framed = meter();
    for chunk in body.chunks(step) {
        framed.feed(chunk);
    }
    let framed = framed.finish();
    // A JSON document is copied whole (or its tail) and parsed at the end:
    // framing changes nothing. Streams (SSE, Gemini's arrays) are searched
    // as they come; with corrupt events in them (which only the upstream
    // can send) the frames may decide which event is read, and a stream
    // whose usage cannot be read is charged as reserved, never as zero:
    // there only the absence of panics, and memory within the RSS limit,
    // is checked.
    if (which >> 2) % 3 == 2 {
        assert_eq!(whole.usage, framed.usage, "frames of {step}");
    }
}

/// The WebSocket session meter: bytes from an upstream after an upgrade,
/// decoded into messages by tungstenite (as `proxy::session` does) and each
/// message read for usage by each provider (`Api::session_usage`,
/// `Api::session_turn_started`). It must never panic, and the usage it
/// reads is never negative or unbounded by the message (counts are u64,
/// summed saturating).
pub fn websocket_meter(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let (mut upstream, injector) = tokio::io::duplex(64 * 1024);
        let _ = upstream.write_all(data).await;
        drop(upstream);
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(1 << 20);
        config.max_frame_size = Some(1 << 20);
        let mut ws = WebSocketStream::from_raw_socket(injector, Role::Client, Some(config)).await;
        while let Some(Ok(message)) = ws.next().await {
            let bytes = match &message {
                Message::Text(text) => text.as_bytes(),
                Message::Binary(data) => data,
                _ => continue,
            };
            for scheme in [Scheme::OpenAi, Scheme::Gemini, Scheme::Anthropic] {
                let _ = api(scheme).session_usage(bytes);
                let _ = api(scheme).session_turn_started(bytes);
            }
        }
    });
}

/// The configuration loader (`Config::parse`): any text an operator (or a
/// tool writing the file) produces. It must never panic: a bad file is a
/// clear error naming where.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = warrant::config::Config::parse(text, "fuzz.toml") {
        assert!(!error.to_string().is_empty());
    }
}
