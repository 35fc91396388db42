//! Which model a request asks for.
//!
//! OpenAI- and Anthropic-style APIs name it in the JSON body's top-level
//! "model" field; Gemini names it in the path,
//! `/v1beta/models/{model}:generateContent`. The injector may hand over only
//! the first bytes of a large body, so the JSON is read with serde_json's
//! streaming deserializer and the answer is taken as soon as the top-level
//! "model" has been read, even if the document is cut off later.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The model named by a request, if any.
pub fn model_of(upstream_scheme: &str, path: &str, body_prefix: &[u8]) -> Option<String> {
    if upstream_scheme == "gemini"
        && let Some(model) = gemini_model(path)
    {
        return Some(model);
    }
    json_model(body_prefix)
}

fn gemini_model(path: &str) -> Option<String> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let (_, rest) = path.split_once("/models/")?;
    let name = rest.split([':', '/']).next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

fn json_model(body: &[u8]) -> Option<String> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    // A truncated body ends in an error after the model was seen: the error
    // is about the part we do not need, so it is ignored.
    let _ = (&mut de).deserialize_map(TopLevelModel { found: &mut found });
    found
}

struct TopLevelModel<'a> {
    found: &'a mut Option<String>,
}

impl<'de> Visitor<'de> for TopLevelModel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "model" {
                if let Ok(model) = map.next_value::<String>() {
                    *self.found = Some(model);
                }
                // The first "model" wins; the rest of the body is not needed.
                return Err(de::Error::custom("model found"));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_from_openai_body() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"gpt-4o-mini","stream":true}"#;
        assert_eq!(
            model_of("openai", "/v1/chat/completions", body).as_deref(),
            Some("gpt-4o-mini")
        );
    }

    #[test]
    fn model_from_truncated_body() {
        let body = br#"{"model":"claude-sonnet-4","max_tokens":1024,"messages":[{"role":"user","content":"a very long"#;
        assert_eq!(
            model_of("anthropic", "/v1/messages", body).as_deref(),
            Some("claude-sonnet-4")
        );
    }

    #[test]
    fn nested_model_fields_are_not_the_request_model() {
        let body = br#"{"metadata":{"model":"gpt-4o"},"input":"x"}"#;
        assert_eq!(model_of("openai", "/v1/responses", body), None);
    }

    #[test]
    fn no_model_for_non_json_or_non_string() {
        assert_eq!(model_of("openai", "/v1/files", b"--boundary\r\n"), None);
        assert_eq!(model_of("openai", "/v1/x", br#"{"model":42}"#), None);
        assert_eq!(model_of("openai", "/v1/x", b""), None);
    }

    #[test]
    fn model_from_gemini_path() {
        assert_eq!(
            model_of(
                "gemini",
                "/v1beta/models/gemini-2.0-flash:generateContent?alt=sse",
                b"{}"
            )
            .as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            model_of(
                "gemini",
                "/v1beta/models/gemini-1.5-pro:streamGenerateContent",
                b""
            )
            .as_deref(),
            Some("gemini-1.5-pro")
        );
        // Not a model path: fall back to the body.
        assert_eq!(
            model_of("gemini", "/v1beta/files", br#"{"model":"m"}"#).as_deref(),
            Some("m")
        );
    }
}
