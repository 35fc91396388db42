#![allow(clippy::unwrap_used)]
use proptest::prelude::*;

use super::*;

fn head_parse(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Request, AmbiguousRequest> {
    let uri: Uri = path.parse().unwrap();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let head = RequestHead {
        method: &method,
        uri: &uri,
        headers: &map,
    };
    json_request(&head, body)
}

fn parse(path: &str, body: &[u8]) -> Result<Request, AmbiguousRequest> {
    head_parse(Method::POST, path, &[], body)
}

fn ok(path: &str, body: &[u8]) -> Request {
    parse(path, body).unwrap()
}

#[test]
fn the_model_is_the_top_level_one_whatever_comes_before_it() {
    let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"gpt-4o-mini","stream":true}"#;
    let request = ok("/v1/chat/completions", body);
    assert_eq!(request.model.as_deref(), Some("gpt-4o-mini"));
    assert!(request.stream);
    assert_eq!(request.body, Body::Json { complete: true });
    let nested = br#"{"metadata":{"model":"gpt-4o"},"input":"x"}"#;
    assert_eq!(ok("/v1/responses", nested).model, None);
}

#[test]
fn a_key_given_twice_is_refused_whatever_its_spelling() {
    for body in [
        &br#"{"model":"gpt-4o-mini","messages":[],"model":"o1-pro"}"#[..],
        br#"{"model":"a","mod\u0065l":"b"}"#,
        br#"{"messages":[],"x":1,"messages":[]}"#,
        // Gemini's protobuf JSON takes both spellings of one field.
        br#"{"generationConfig":{},"generation_config":{"maxOutputTokens":9}}"#,
        br#"{"generationConfig":{"maxOutputTokens":1,"max_output_tokens":99999}}"#,
        br#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
        br#"{"thinking":{"budget_tokens":1,"budget_tokens":100000}}"#,
    ] {
        let error = parse("/v1/chat/completions", body).unwrap_err();
        assert!(
            matches!(error, AmbiguousRequest::DuplicateField { .. })
                || matches!(&error, AmbiguousRequest::InvalidJson { reason } if reason.contains("duplicate")),
            "{}: {error}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn a_second_key_past_the_read_limit_leaves_the_object_incomplete() {
    // The read limit cut the body before its end: the fields read may be
    // contradicted later, and the parse says so.
    let cut = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"a very long"#;
    let request = head_parse(
        Method::POST,
        "/v1/chat/completions",
        &[("content-length", "100000")],
        cut,
    )
    .unwrap();
    assert_eq!(request.body, Body::Json { complete: false });
    // A number cut by the limit is no more trusted than the rest.
    let cut = br#"{"max_tokens":12"#;
    assert_eq!(ok("/v1/messages", cut).body, Body::Json { complete: false });
    // The whole body, cut short by the client: invalid, not incomplete.
    let error = head_parse(
        Method::POST,
        "/v1/messages",
        &[("content-length", "16")],
        cut,
    )
    .unwrap_err();
    assert!(
        matches!(error, AmbiguousRequest::InvalidJson { .. }),
        "{error}"
    );
}

#[test]
fn wrong_types_and_trailing_data_are_refused_not_skipped() {
    for body in [
        &br#"{"model":42}"#[..],
        br#"{"stream":"true"}"#,
        br#"{"max_tokens":-1}"#,
        br#"{"max_tokens":1.5}"#,
        br#"{"n":"2"}"#,
        br#"{"generationConfig":{"maxOutputTokens":"9"}}"#,
        br#"{"model":"a"} {"model":"b"}"#,
        br#"{"model":"a"}x"#,
        // Invalid UTF-8 in a string warrant skips (found by the fuzzer).
        b"{\"thinking\":{\"type\":\"en\xc6bled\"},\"x\":\"\xff\"}",
        // An object followed by the first byte of a character.
        b"{\"model\":\"a\"}\xde",
    ] {
        assert!(
            matches!(
                parse("/v1/x", body),
                Err(AmbiguousRequest::InvalidJson { .. })
            ),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let error = head_parse(
        Method::POST,
        "/v1/x",
        &[("content-type", "application/json")],
        br#"["model"]"#,
    )
    .unwrap_err();
    assert_eq!(error, AmbiguousRequest::NotAnObject);
    // null is "not given".
    assert_eq!(
        ok("/v1/x", br#"{"model":null,"max_tokens":null}"#).model,
        None
    );
}

#[test]
fn a_non_json_body_is_other_and_names_its_content_type_but_json_is_read_whatever_the_type() {
    let multipart = head_parse(
        Method::POST,
        "/v1/audio/transcriptions",
        &[("content-type", "multipart/form-data; boundary=x")],
        b"--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--x--",
    )
    .unwrap();
    assert_eq!(multipart.model, None);
    assert_eq!(
        multipart.body,
        Body::Other {
            content_type: "multipart/form-data; boundary=x".to_owned()
        }
    );
    // A provider may parse a JSON-looking body whatever its type: so does
    // warrant.
    let plain = head_parse(
        Method::POST,
        "/v1/chat/completions",
        &[("content-type", "text/plain")],
        br#"{"model":"o1-pro","n":128}"#,
    )
    .unwrap();
    assert_eq!(
        (plain.model.as_deref(), plain.choices),
        (Some("o1-pro"), 128)
    );
    assert_eq!(ok("/v1/models", b"").body, Body::None);
}

#[test]
fn caps_choices_and_thinking_of_every_provider_are_read() {
    let openai = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":300,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#;
    let request = ok("/v1/chat/completions", openai);
    assert_eq!(request.max_output_tokens, Some(300));
    assert_eq!(request.choices, 2);
    assert!(request.include_usage);
    let responses =
        br#"{"model":"o3","input":"x","max_output_tokens":50,"reasoning":{"effort":"high"}}"#;
    let request = ok("/v1/responses", responses);
    assert_eq!(request.max_output_tokens, Some(50));
    assert!(request.reasoning);
    let anthropic = br#"{"model":"claude-sonnet-4","max_tokens":1024,"thinking":{"type":"enabled","budget_tokens":16000}}"#;
    assert_eq!(ok("/v1/messages", anthropic).max_output_tokens, Some(16000));
    let gemini = br#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":64,"candidateCount":3,"thinkingConfig":{"thinkingBudget":1000}}}"#;
    let request = ok("/v1beta/models/m:generateContent", gemini);
    assert_eq!(
        (request.max_output_tokens, request.choices),
        (Some(1064), 3)
    );
    let dynamic = br#"{"generation_config":{"thinking_config":{"thinking_budget":-1}}}"#;
    assert!(ok("/v1beta/models/m:generateContent", dynamic).reasoning);
    let legacy = br#"{"model":"gpt-3.5-turbo-instruct","prompt":"x","n":2,"best_of":5}"#;
    assert_eq!(ok("/v1/completions", legacy).choices, 5);
    assert!(ok("/v1/responses", br#"{"background":true}"#).background);
}

#[test]
fn the_body_length_is_content_length_else_what_was_read() {
    assert_eq!(ok("/v1/x", b"{}").body_len, 2);
    let request = head_parse(Method::POST, "/v1/x", &[("content-length", "4001")], b"{}").unwrap();
    assert_eq!(request.body_len, 4001);
}

#[test]
fn ambiguous_paths_are_refused_and_the_rest_decoded() {
    for (path, problem) in [
        ("/v1/chat/../embeddings", PathProblem::DotSegment),
        ("/v1/chat/./completions", PathProblem::DotSegment),
        ("/v1/chat/%2e%2e/embeddings", PathProblem::DotSegment),
        ("/v1/chat/.%2E/embeddings", PathProblem::DotSegment),
        ("/v1/chat/..", PathProblem::DotSegment),
        ("/v1/chat%2Fcompletions", PathProblem::EncodedSeparator),
        ("/v1/chat%2fcompletions", PathProblem::EncodedSeparator),
        ("/v1/chat%5Ccompletions", PathProblem::EncodedSeparator),
        ("/v1/chat\\..\\embeddings", PathProblem::Backslash),
        ("/v1//embeddings", PathProblem::EmptySegment),
        ("//v1/embeddings", PathProblem::EmptySegment),
        ("/v1/chat;x=1/completions", PathProblem::Parameter),
        ("/v1/chat%3B/completions", PathProblem::Parameter),
        ("/v1/chat%zz", PathProblem::BadEscape),
        ("/v1/chat%2", PathProblem::BadEscape),
        ("/v1/chat%00", PathProblem::ControlByte),
        ("/v1/chat%0a", PathProblem::ControlByte),
        ("/v1/chat%7F", PathProblem::ControlByte),
        ("/v1/chat%ff", PathProblem::NotUtf8),
        ("*", PathProblem::NotAbsolute),
    ] {
        assert_eq!(canonical_path(path), Err(problem), "{path}");
    }
    assert_eq!(canonical_path("/v1/ch%61t/x").unwrap(), "/v1/chat/x");
    assert_eq!(canonical_path("/v1/models/").unwrap(), "/v1/models/");
    assert_eq!(canonical_path("/").unwrap(), "/");
    assert_eq!(
        canonical_path("/v1beta/models/gemini-2.0-flash%3AgenerateContent").unwrap(),
        "/v1beta/models/gemini-2.0-flash:generateContent"
    );
    let error = parse("/v1/chat/%2e%2e/embeddings", b"{}").unwrap_err();
    assert!(error.to_string().contains("dot segment"), "{error}");
}

#[test]
fn an_upgrade_is_a_realtime_session_and_background_is_unmetered() {
    let upgrade = head_parse(
        Method::GET,
        "/v1/realtime?model=gpt-realtime",
        &[("connection", "Upgrade"), ("upgrade", "websocket")],
        b"",
    )
    .unwrap();
    assert!(upgrade.upgrade);
    assert_eq!(upgrade.unmetered, Some(Unmetered::WebSocket));
    let connect = head_parse(Method::CONNECT, "/v1/realtime", &[], b"").unwrap();
    assert_eq!(connect.unmetered, Some(Unmetered::WebSocket));
    let background = ok("/v1/responses", br#"{"model":"o3","background":true}"#);
    assert_eq!(background.unmetered, Some(Unmetered::Background));
}

#[test]
fn a_method_override_is_refused_whatever_its_spelling() {
    for header in [
        "x-http-method-override",
        "X-HTTP-Method",
        "x-method-override",
    ] {
        let error = head_parse(
            Method::GET,
            "/v1beta/models/gemini-1.5-flash:generateContent",
            &[(header, "POST")],
            b"",
        )
        .unwrap_err();
        assert!(
            matches!(error, AmbiguousRequest::MethodOverride { .. }),
            "{header}: {error}"
        );
    }
}

#[test]
fn a_compressed_body_that_warrant_reads_is_refused() {
    let body = br#"{"model":"gpt-4o-mini"}"#;
    for encoding in ["gzip", "br", "identity, deflate", "zstd"] {
        let error = head_parse(
            Method::POST,
            "/v1/chat/completions",
            &[("content-encoding", encoding)],
            body,
        )
        .unwrap_err();
        assert!(
            matches!(error, AmbiguousRequest::EncodedBody { .. }),
            "{encoding}: {error}"
        );
    }
    // identity is no encoding; a body warrant does not read is not looked at.
    let plain = head_parse(
        Method::POST,
        "/v1/chat/completions",
        &[("content-encoding", "identity")],
        body,
    )
    .unwrap();
    assert_eq!(plain.model.as_deref(), Some("gpt-4o-mini"));
    head_parse(
        Method::POST,
        "/v1/chat/completions",
        &[("content-encoding", "gzip")],
        b"",
    )
    .unwrap();
}

/// A JSON object of distinct keys (some of those the parse reads, with
/// values of their types) in any order, with any whitespace.
fn object() -> impl Strategy<Value = (Vec<(String, serde_json::Value)>, String)> {
    let value = prop_oneof![
        any::<u32>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        "[a-z0-9 .\\-\"\\\\]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        Just(serde_json::json!([{"role": "user", "content": "hi"}])),
    ];
    let field = prop_oneof![
        (
            "model",
            "[a-z0-9.\\-/]{1,12}".prop_map(serde_json::Value::from)
        ),
        ("stream", any::<bool>().prop_map(serde_json::Value::from)),
        (
            "max_tokens",
            (0u64..1_000_000).prop_map(serde_json::Value::from)
        ),
        (
            "max_completion_tokens",
            (0u64..1_000_000).prop_map(serde_json::Value::from)
        ),
        ("n", (1u64..16).prop_map(serde_json::Value::from)),
        ("[a-z]{1,3}", value),
    ];
    (
        prop::collection::vec(field, 0..8),
        prop::collection::vec(prop_oneof![Just(""), Just(" "), Just("\n\t")], 3),
    )
        .prop_map(|(fields, spaces)| {
            let mut seen = HashSet::new();
            let fields: Vec<(String, serde_json::Value)> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .filter(|(k, _)| seen.insert(fold_key(k)))
                .collect();
            let text = fields
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}{}:{}{}",
                        serde_json::Value::from(k.as_str()),
                        spaces[0],
                        spaces[1],
                        v
                    )
                })
                .collect::<Vec<_>>()
                .join(&format!(",{}", spaces[2]));
            (fields, format!("{{{}{text}{}}}", spaces[2], spaces[0]))
        })
}

proptest! {
    /// For any body the parse accepts, what it read equals serde_json's
    /// (last-key-wins) reading of the same bytes.
    #[test]
    fn an_accepted_body_reads_as_serde_json_reads_it((_, text) in object()) {
        let Ok(request) = parse("/v1/chat/completions", text.as_bytes()) else {
            return Ok(());
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(request.model.as_deref(), value["model"].as_str());
        prop_assert_eq!(request.stream, value["stream"].as_bool().unwrap_or(false));
        let cap = [&value["max_tokens"], &value["max_completion_tokens"]]
            .iter()
            .filter_map(|v| v.as_u64())
            .max();
        prop_assert_eq!(request.max_output_tokens, cap);
        prop_assert_eq!(request.choices, value["n"].as_u64().unwrap_or(1).max(1));
    }

    /// Duplicating any key of an accepted body makes it refused, whatever
    /// the second value.
    #[test]
    fn a_duplicated_key_is_always_refused((fields, _) in object(), pick in any::<prop::sample::Index>()) {
        prop_assume!(!fields.is_empty());
        let (key, value) = &fields[pick.index(fields.len())];
        let body: String = fields
            .iter()
            .chain(std::iter::once(&(key.clone(), value.clone())))
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
            .collect::<Vec<_>>()
            .join(",");
        let text = format!("{{{body}}}");
        prop_assert!(parse("/v1/x", text.as_bytes()).is_err());
    }

    /// The parse never panics, whatever the bytes.
    #[test]
    fn any_bytes_are_parsed_or_refused(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse("/v1/x", &body);
    }

    /// A canonical path is a fixed point, and what it decodes to has no
    /// dot segment or control byte.
    #[test]
    fn a_canonical_path_has_no_dot_segment(path in "/[a-zA-Z0-9%./:;\\\\-]{0,24}") {
        if let Ok(canonical) = canonical_path(&path) {
            prop_assert!(!canonical.split('/').any(|s| s == "." || s == ".."));
            prop_assert!(!canonical.bytes().any(|b| b.is_ascii_control()));
            if !canonical.contains('%') {
                prop_assert_eq!(canonical_path(&canonical), Ok(canonical.clone()));
            }
        }
    }
}
